//! `allow-domain NAME[:PORT]`: one entry added to the `[network] allow` list of the
//! project's `nixcell.toml`.
//!
//! The entry must pass, in this order: the network grammar (one host name, or an
//! address written as such; no wildcard; port 443 when none is given), the
//! `[policy] domains` whitelist, every deny entry (the profile's and the project's: a
//! deny entry wins), and the profile's allow list, the ceiling a project may only
//! narrow (an address only through an address entry of the ceiling).
//!
//! A project whose `nixcell.toml` has no `[network]` gets the profile's list as is
//! (see `run::limits::network`): everything the ceiling lets through is reachable
//! already, and writing a first entry would narrow the list to that entry. So the
//! edit is refused there ("already reachable"), as it is when the project's own list
//! already covers the entry. It never narrows what a run may reach.

use super::EditError;
use super::policy::{self, Subject};
pub use super::policy::{DEFAULT_PORT, entry_of};
use crate::net::{Entry, NetPolicy};
use crate::project::Policy;

fn listed(entries: &[Entry]) -> String {
    if entries.is_empty() {
        "it allows nothing: loopback only".into()
    } else {
        entries
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether the edit would add `name`: the entry to write, or why not.
/// `project`: the project's `[network]` as written (None: it has none).
pub fn check(
    policy: &Policy,
    ceiling: &NetPolicy,
    project: Option<&NetPolicy>,
    name: &str,
) -> Result<Entry, EditError> {
    let entry = entry_of(name)?;
    policy::check_allowed(policy, Subject::Domain, &entry.to_string())?;
    let denied = |list: &[Entry]| {
        list.iter()
            .find(|d| d.covers(&entry) || entry.covers(d))
            .cloned()
    };
    if let Some(d) = denied(&ceiling.deny) {
        return Err(EditError::Refused(format!(
            "refused: {entry} is denied by the profile's deny entry {d}, and a deny entry wins"
        )));
    }
    if let Some(d) = project.and_then(|p| denied(&p.deny)) {
        return Err(EditError::Refused(format!(
            "refused: {entry} is denied by the deny entry {d} of nixcell.toml [network], and a deny entry wins"
        )));
    }
    if !ceiling.allow.iter().any(|c| c.covers(&entry)) {
        let what = if entry.is_name() {
            "a project may only narrow the profile's network allow list"
        } else {
            "a literal address is allowed only where the profile lists it as such"
        };
        return Err(EditError::Refused(format!(
            "refused: {entry} is outside the profile's network allow list ({}): {what}; only the operator can allow more (`--allow-host {entry}`)",
            listed(&ceiling.allow)
        )));
    }
    let Some(project) = project else {
        return Err(EditError::Refused(format!(
            "{entry} is reachable already: nixcell.toml has no [network] table, so the profile's allow list ({}) applies as is; nothing was changed",
            listed(&ceiling.allow)
        )));
    };
    let effective = ceiling.narrowed(Some(project));
    if let Some(a) = effective.allow.iter().find(|a| a.covers(&entry)) {
        return Err(EditError::Refused(format!(
            "{entry} is reachable already (nixcell.toml [network] allow entry {a}); nothing was changed"
        )));
    }
    Ok(entry)
}

/// Whether some name of the ceiling could still be added by the edit (the
/// whitelist names domains, the project has its own list and it leaves some of the
/// ceiling's names out).
pub fn addable(policy: &Policy, ceiling: &NetPolicy, project: Option<&NetPolicy>) -> bool {
    let Some(project) = project else {
        return false;
    };
    let effective = ceiling.narrowed(Some(project));
    !policy.domains.is_empty()
        && ceiling
            .allow
            .iter()
            .any(|c| c.is_name() && !effective.allow.iter().any(|a| a.covers(c)))
}

/// `text` (nixcell.toml) with `entry` appended to `[network] allow`; the rest of the
/// file, comments and layout included, stays byte for byte. `network = "none"`
/// becomes `network = { allow = [ENTRY] }`; a table without `allow` gets the key.
pub fn apply_to_toml(file: &str, text: &str, entry: &Entry) -> Result<String, EditError> {
    use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, Value};
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Refused(format!("{file}: {e}")))?;
    let new = || Value::from(entry.to_string());
    let one = || {
        let mut a = Array::new();
        a.push(entry.to_string());
        a
    };
    let shape = || EditError::Refused(format!("{file}: `network` is neither \"none\" nor a table"));
    match doc.get_mut("network") {
        None => {
            let mut t = Table::new();
            t.insert("allow", Item::Value(Value::Array(one())));
            doc.insert("network", Item::Table(t));
        }
        Some(item) => {
            if item.as_str() == Some("none") {
                let mut t = InlineTable::new();
                t.insert("allow", Value::Array(one()));
                let decor = item.as_value().map(|v| v.decor().clone());
                let mut v = Value::InlineTable(t);
                if let Some(d) = decor {
                    *v.decor_mut() = d;
                }
                *item = Item::Value(v);
            } else {
                let table = item.as_table_like_mut().ok_or_else(shape)?;
                match table.get_mut("allow") {
                    None => {
                        table.insert("allow", Item::Value(Value::Array(one())));
                    }
                    Some(allow) => {
                        let list = allow.as_array_mut().ok_or_else(shape)?;
                        let mut v = new();
                        // The new entry is laid out like the last one (one per line
                        // in a list written one per line).
                        if let Some(last) = list.iter().last() {
                            *v.decor_mut() = last.decor().clone();
                            // A comment after the last comma stays on its line.
                            let prefix = last.decor().prefix().and_then(|p| p.as_str());
                            let trailing = list.trailing().as_str().map(String::from);
                            if let (Some(prefix), Some(t)) = (prefix, trailing)
                                && list.trailing_comma()
                                && prefix.starts_with('\n')
                                && let Some((line, rest)) = t.rsplit_once('\n')
                            {
                                v.decor_mut().set_prefix(format!("{line}{prefix}"));
                                list.set_trailing(format!("\n{rest}"));
                            } else if prefix.is_some_and(str::is_empty) {
                                v.decor_mut().set_prefix(" ");
                            }
                        }
                        list.push_formatted(v);
                    }
                }
            }
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceiling() -> NetPolicy {
        NetPolicy::parse(
            &["*.test.example:443", "10.0.0.0/8:5432"],
            &["bad.test.example:443"],
        )
        .unwrap()
    }

    fn policy() -> Policy {
        Policy {
            domains: vec!["*".into()],
            ..Default::default()
        }
    }

    fn project(allow: &[&str], deny: &[&str]) -> NetPolicy {
        NetPolicy::parse(allow, deny).unwrap()
    }

    #[test]
    fn names_inside_the_ceiling_pass_and_the_rest_say_why() {
        let p = project(&["one.test.example:443"], &["no.test.example:443"]);
        let ok = |n: &str| check(&policy(), &ceiling(), Some(&p), n).map(|e| e.to_string());
        assert_eq!(ok("API.test.example").unwrap(), "api.test.example:443");
        assert_eq!(ok("10.1.2.3:5432").unwrap(), "10.1.2.3:5432");
        for (name, why) in [
            ("evil.org", "outside the profile"),
            ("api.test.example:80", "outside the profile"),
            ("test.example", "outside the profile"),
            ("bad.test.example", "profile's deny entry"),
            (
                "no.test.example",
                "deny entry no.test.example:443 of nixcell.toml",
            ),
            ("one.test.example", "reachable already"),
            ("10.1.2.3:443", "literal address"),
            ("127.0.0.1:443", "literal address"),
            ("*.test.example", "wildcard"),
            ("exa mple.test.example", "not a host name"),
            ("a.test.example:0", "port"),
            ("", "not a host name"),
        ] {
            let err = ok(name).unwrap_err().to_string();
            assert!(err.contains(why), "{name:?}: {err}");
        }
        let none = check(&Policy::default(), &ceiling(), Some(&p), "api.test.example");
        assert!(none.unwrap_err().to_string().contains("[policy] domains"));
        // Without [network] the profile's list applies as is: nothing to add.
        let err = check(&policy(), &ceiling(), None, "api.test.example").unwrap_err();
        assert!(err.to_string().contains("no [network] table"), "{err}");
        // The default profile allows no names.
        let err = check(
            &policy(),
            &NetPolicy::default(),
            Some(&p),
            "api.test.example",
        );
        assert!(err.unwrap_err().to_string().contains("allows nothing"));
    }

    #[test]
    fn only_the_allow_list_changes() {
        let e = entry_of("two.test.example").unwrap();
        let src = "# top\nprofile = \"default\"\n\n[network]   # mine\nallow = [\n  \"one.test.example:443\", # first\n]\ndeny = [\"x.test.example:443\"]\n\n[policy]\ndomains = [\"*\"]\n";
        let out = apply_to_toml("nixcell.toml", src, &e).unwrap();
        assert_eq!(
            out,
            src.replace("# first\n]", "# first\n  \"two.test.example:443\",\n]")
        );
        let src = "[network]\nallow = [\"one.test.example:443\"]\n";
        let out = apply_to_toml("nixcell.toml", src, &e).unwrap();
        assert_eq!(
            out,
            "[network]\nallow = [\"one.test.example:443\", \"two.test.example:443\"]\n"
        );
        let src = "# c\nnetwork = \"none\" # closed\n[policy]\n";
        let out = apply_to_toml("nixcell.toml", src, &e).unwrap();
        assert_eq!(
            out,
            "# c\nnetwork = { allow = [\"two.test.example:443\"] } # closed\n[policy]\n"
        );
        let src = "[network]\ndeny = [\"x.test.example:443\"]\n";
        let out = apply_to_toml("nixcell.toml", src, &e).unwrap();
        assert_eq!(
            out,
            "[network]\ndeny = [\"x.test.example:443\"]\nallow = [\"two.test.example:443\"]\n"
        );
    }
}
