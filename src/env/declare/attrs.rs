//! Which attribute names a package set really has: a hint names a package only when
//! the set has it.

use super::package_set::PackageSet;
use std::path::PathBuf;

/// The expression of the query (see its header).
pub const ATTRS_NIX: &str = include_str!("attrs.nix");

/// The names of `names` (attribute paths) that are packages of `set`; `None` when the
/// set cannot be asked (nix failed). Names outside the attribute grammar are never
/// asked about.
pub fn existing(set: &PackageSet, names: &[String]) -> Option<Vec<String>> {
    let asked: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 100
                && n.split('.').all(|p| {
                    p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-'".contains(c))
                })
        })
        .collect();
    if asked.is_empty() {
        return Some(Vec::new());
    }
    let dir = crate::dirs::private_dir(crate::dirs::Base::Cache, "eval").ok()?;
    crate::dirs::write_atomic(&dir, "attrs.nix", ATTRS_NIX.as_bytes()).ok()?;
    let file = dir.join("attrs.nix");
    let set_path = set.path.to_string_lossy();
    let joined = asked.join(" ");
    let allowed: Vec<PathBuf> = vec![dir.clone(), set.path.clone()];
    let v = crate::nix::eval::eval_json(
        &file,
        "",
        &[("nixpkgs", &set_path), ("names", &joined)],
        &allowed,
    )
    .ok()?;
    serde_json::from_value(v).ok()
}
