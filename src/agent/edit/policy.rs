//! What an agent may ask for: a strict grammar of names, and the whitelist of
//! `[policy]` in nixcell.toml (exact names and globs).

use crate::project::Policy;
use serde::Serialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("invalid {kind} name {name:?}: {reason}")]
    BadName {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error(
        "refused: {kind} `{name}` is not allowed by [policy] {key} in nixcell.toml ({allowed})"
    )]
    NotAllowed {
        kind: &'static str,
        name: String,
        key: &'static str,
        allowed: String,
    },
}

/// What an edit is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    Package,
    PythonLibrary,
    Service,
    /// A host name (or address) the cell may reach through the proxy.
    Domain,
}

impl Subject {
    /// The `nixcell edit` operation that adds one of these.
    pub fn add_op(self) -> &'static str {
        match self {
            Subject::Package => "add-package",
            Subject::PythonLibrary => "add-python-library",
            Subject::Service => "enable-service",
            Subject::Domain => "allow-domain",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Subject::Package => "package",
            Subject::PythonLibrary => "Python library",
            Subject::Service => "service",
            Subject::Domain => "domain",
        }
    }

    pub fn policy_key(self) -> &'static str {
        match self {
            Subject::Package => "packages",
            Subject::PythonLibrary => "python_libraries",
            Subject::Service => "services",
            Subject::Domain => "domains",
        }
    }

    pub fn allowed(self, p: &Policy) -> &[String] {
        match self {
            Subject::Package => &p.packages,
            Subject::PythonLibrary => &p.python_libraries,
            Subject::Service => &p.services,
            Subject::Domain => &p.domains,
        }
    }

    /// Attribute path segments a name of this subject may have.
    fn max_segments(self) -> usize {
        match self {
            Subject::Package => 3,
            Subject::PythonLibrary | Subject::Service | Subject::Domain => 1,
        }
    }
}

/// Services nixcell knows how to run.
pub const KNOWN_SERVICES: &[&str] = &["redis", "postgres"];

const MAX_LEN: usize = 100;

/// Nix keywords and names that reach outside the package set.
const FORBIDDEN: &[&str] = &[
    "if",
    "then",
    "else",
    "assert",
    "with",
    "let",
    "in",
    "rec",
    "inherit",
    "or",
    "true",
    "false",
    "null",
    "builtins",
    "import",
    "pkgs",
    "lib",
    "config",
    "derivation",
    "abort",
    "throw",
    "fetchurl",
    "fetchTarball",
    "fetchGit",
    "fetchTree",
    "scopedImport",
];

/// Checks that `name` is a plain attribute path: segments of ASCII letters, digits,
/// `_` and `-`, starting with a letter or `_`, joined by single dots. Nothing that could
/// carry Nix code, a path, a URL, a string, an interpolation or a builtin.
/// A domain is checked by the network policy's grammar instead ([`entry_of`]).
pub fn check_name(subject: Subject, name: &str) -> Result<(), PolicyError> {
    if subject == Subject::Domain {
        return entry_of(name).map(|_| ());
    }
    let bad = |reason: String| PolicyError::BadName {
        kind: subject.noun(),
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty".into()));
    }
    if name.len() > MAX_LEN {
        return Err(bad(format!("longer than {MAX_LEN} characters")));
    }
    let segments: Vec<&str> = name.split('.').collect();
    if segments.len() > subject.max_segments() {
        return Err(bad(format!(
            "at most {} attribute name(s) joined by '.'",
            subject.max_segments()
        )));
    }
    for s in &segments {
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !first_ok || !rest_ok {
            return Err(bad(
                "only letters, digits, '_' and '-' (starting with a letter or '_'), joined by '.'"
                    .into(),
            ));
        }
        if s.starts_with("__") {
            return Err(bad(format!("`{s}` is reserved")));
        }
        if FORBIDDEN.contains(s) {
            return Err(bad(format!("`{s}` is not a package attribute")));
        }
    }
    if subject == Subject::Service && !KNOWN_SERVICES.contains(&name) {
        return Err(bad(format!(
            "unknown service (known: {})",
            KNOWN_SERVICES.join(", ")
        )));
    }
    Ok(())
}

/// The port of a name given without one.
pub const DEFAULT_PORT: u16 = 443;

/// The entry `NAME[:PORT]` asks for, normalized (lowercase, port added).
pub fn entry_of(name: &str) -> Result<crate::net::Entry, PolicyError> {
    let bad = |reason: String| PolicyError::BadName {
        kind: Subject::Domain.noun(),
        name: name.to_string(),
        reason,
    };
    let has_port = if name.starts_with('[') {
        !name.ends_with(']')
    } else {
        name.contains(':')
    };
    let text = if has_port {
        name.to_string()
    } else {
        format!("{name}:{DEFAULT_PORT}")
    };
    let entry = crate::net::Entry::parse(&text).map_err(bad)?;
    if entry.is_wildcard() {
        return Err(bad(
            "one host name, not a wildcard (a wildcard is the profile's to give)".into(),
        ));
    }
    Ok(entry)
}

/// Checks `name` against the whitelist; the refusal says what the policy allows.
pub fn check_allowed(policy: &Policy, subject: Subject, name: &str) -> Result<(), PolicyError> {
    let allowed = subject.allowed(policy);
    let ok = allowed.iter().any(|g| {
        g == name
            || glob::Pattern::new(g).is_ok_and(|p| {
                p.matches_with(
                    name,
                    glob::MatchOptions {
                        case_sensitive: true,
                        require_literal_separator: false,
                        require_literal_leading_dot: false,
                    },
                )
            })
    });
    if ok {
        return Ok(());
    }
    Err(PolicyError::NotAllowed {
        kind: subject.noun(),
        name: name.to_string(),
        key: subject.policy_key(),
        allowed: if allowed.is_empty() {
            "it allows none".into()
        } else {
            format!("allowed: {}", allowed.join(", "))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_attribute_paths_pass() {
        for n in [
            "jq",
            "ripgrep",
            "python3Packages.numpy",
            "gnu-tar",
            "_7zz",
            "python311",
        ] {
            check_name(Subject::Package, n).unwrap();
        }
        check_name(Subject::PythonLibrary, "python-dateutil").unwrap();
        check_name(Subject::Service, "redis").unwrap();
    }

    #[test]
    fn anything_that_could_carry_code_is_refused() {
        for n in [
            "",
            "jq ++ [ x ]",
            "jq;",
            "${builtins.readFile /etc/shadow}",
            "builtins.readFile",
            "import",
            "./foo",
            "/etc/passwd",
            "https://example.org/x.tar.gz",
            "\"jq\"",
            "jq.",
            ".jq",
            "a..b",
            "pkgs.jq",
            "jq\n",
            "a.b.c.d",
            "x.__functor",
            "let",
            "j'q",
            "1jq",
        ] {
            assert!(check_name(Subject::Package, n).is_err(), "{n:?}");
        }
        assert!(check_name(Subject::PythonLibrary, "ps.pandas").is_err());
        assert!(check_name(Subject::Service, "mysql").is_err());
    }

    #[test]
    fn whitelist_takes_names_and_globs() {
        let p = Policy {
            packages: vec!["jq".into(), "python3Packages.*".into()],
            ..Default::default()
        };
        check_allowed(&p, Subject::Package, "jq").unwrap();
        check_allowed(&p, Subject::Package, "python3Packages.numpy").unwrap();
        let err = check_allowed(&p, Subject::Package, "curl").unwrap_err();
        assert!(
            err.to_string().contains("allowed: jq, python3Packages.*"),
            "{err}"
        );
        let err = check_allowed(&p, Subject::Service, "redis").unwrap_err();
        assert!(err.to_string().contains("allows none"), "{err}");
    }
}
