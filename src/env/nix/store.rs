//! Store-path names: the one parser of `<store>/<hash>-<name>` in nixcell.
//!
//! Everything that says "this is a store path" (a closure read from the cache, a GC
//! root's target, a package name in a hint) goes through [`store_path_name`] or
//! [`is_store_path`], so that `..`, `.`, a `/`, an empty or short hash cannot pass for
//! a store path anywhere.

use std::path::Path;

/// Nix's base-32 alphabet (no `e`, `o`, `u`, `t`).
const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
/// Length of the hash part of a store path's base name.
pub const HASH_LEN: usize = 32;
/// Longest name Nix accepts after the hash and `-`.
const MAX_NAME_LEN: usize = 211;

/// The name after the hash of a store path's last component (`<hash>-<name>`), when
/// that component is a valid store-path base name: 32 nix-base32 characters, `-`, then
/// 1 to 211 characters of `A-Za-z0-9+-._?=`, not starting with `.`. Only the last
/// component is looked at; [`is_store_path`] also checks where the path is.
pub fn store_path_name(path: &Path) -> Option<&str> {
    // `file_name` is None for `..`, `/` and the empty path.
    let base = path.file_name()?.to_str()?;
    let (hash, name) = (base.get(..HASH_LEN)?, base.get(HASH_LEN..)?);
    let name = name.strip_prefix('-')?;
    let hash_ok = hash.bytes().all(|b| NIX_BASE32.contains(&b));
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
    (hash_ok && name_ok).then_some(name)
}

/// `path` is exactly `<store>/<base>` with a valid store-path base name: a direct
/// child of the store directory, spelled without `.`, `..`, doubled or trailing `/`.
pub fn is_store_path(path: &Path, store: &Path) -> bool {
    let Some(base) = path.file_name() else {
        return false;
    };
    store_path_name(path).is_some() && store.join(base).as_os_str() == path.as_os_str()
}

/// Makes `link` an indirect GC root of the valid store path `path` (best effort: a path
/// without a root is only fetched again after a garbage collection).
pub fn add_root(path: &Path, link: &Path) {
    let _ = super::command("nix-store")
        .arg("--add-root")
        .arg(link)
        .args(["--indirect", "--realise"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    #[test]
    fn valid_names() {
        let p = format!("/nix/store/{H}-python3-3.11.2");
        assert_eq!(store_path_name(Path::new(&p)), Some("python3-3.11.2"));
        let p = format!("/nix/store/{H}-a+b_c.d?e=f");
        assert_eq!(store_path_name(Path::new(&p)), Some("a+b_c.d?e=f"));
        assert!(is_store_path(
            Path::new(&format!("/nix/store/{H}-jq-1.7")),
            Path::new("/nix/store")
        ));
    }

    #[test]
    fn edge_cases_are_not_store_paths() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "/",
            ".",
            "..",
            "/nix/store",
            "/nix/store/..",
            "/nix/store/.",
            "/nix/store/../var",
            "/nix/store/var",
            "/nix/store/abc-python3-3.11.2",
            &format!("/nix/store/{}-short", &H[..31]),
            &format!("/nix/store/{H}"),
            &format!("/nix/store/{H}-"),
            &format!("/nix/store/{H}x-name"),
            &format!("/nix/store/{}e-name", &H[..31]),
            &format!("/nix/store/{}A-name", &H[..31]),
            &format!("/nix/store/{H}-.hidden"),
            &format!("/nix/store/{H}-sp ace"),
            &format!("/nix/store/{H}-new\nline"),
            &format!("/nix/store/{H}-ünï"),
            &format!("/nix/store/{H}-{long}"),
        ] {
            assert_eq!(store_path_name(Path::new(bad)), None, "{bad:?}");
            assert!(
                !is_store_path(Path::new(bad), Path::new("/nix/store")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_direct_children_of_the_store_spelled_plainly() {
        let store = Path::new("/nix/store");
        for bad in [
            format!("/nix/store/{H}-x/{H}-y"),
            format!("/nix/store/../store/{H}-x"),
            format!("/nix/store//{H}-x"),
            format!("/nix/store/./{H}-x"),
            format!("/nix/store/{H}-x/"),
            format!("/nix/store/{H}-x/."),
            format!("/var/{H}-x"),
            format!("{H}-x"),
        ] {
            assert!(!is_store_path(Path::new(&bad), store), "{bad:?}");
        }
    }
}
