//! Remediation hints: when a run fails because something is missing from the cell, say
//! what is missing and which edit of the environment would provide it.
//!
//! A hint reads the command's stderr and the exec error, looks in the built closure for
//! the missing program, and consults the edit policy: it suggests an edit only when the
//! policy would accept it. Without a policy it names what is missing and suggests nothing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::edit::policy::Subject;

/// An edit policy: which names of each subject an agent may ask for. The project's
/// `[policy]` implements it; tests use small in-memory policies.
pub trait EditPolicy {
    fn allows(&self, subject: Subject, name: &str) -> bool;
}

/// The project's `[policy]`: a name is allowed when the edit itself would accept it
/// (the strict name grammar, then the whitelist).
impl EditPolicy for crate::project::Policy {
    fn allows(&self, subject: Subject, name: &str) -> bool {
        crate::edit::policy::check_name(subject, name).is_ok()
            && crate::edit::policy::check_allowed(self, subject, name).is_ok()
    }
}

/// What kind of thing is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HintKind {
    /// A program the command tried to run is not on the cell's PATH.
    MissingCommand,
    /// A Python module could not be imported.
    MissingPythonModule,
    /// The command tried to reach the network; the cell has loopback only.
    NetworkForbidden,
    /// Nothing listens on a loopback port a known service uses.
    ServiceNotRunning,
}

/// An edit that would provide what is missing, and that the policy accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SuggestedEdit {
    /// The `nixcell edit` operation, e.g. `add-python-library`.
    pub op: String,
    pub subject: Subject,
    pub name: String,
    /// The same as a command line, e.g. `nixcell edit add-python-library pandas`.
    pub command: String,
}

/// One remediation hint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Hint {
    pub kind: HintKind,
    /// What is missing: a program, a Python module, a host name, a port.
    pub missing: String,
    /// One sentence for the agent.
    pub message: String,
    /// The edit to ask for, when one would help and the policy allows it.
    pub edit: Option<SuggestedEdit>,
}

/// What the hints are computed from.
pub struct Inputs<'a> {
    /// The command's captured stderr (and stdout: some tools report there).
    pub output: &'a str,
    /// The program whose execve failed with ENOENT, if that is how the run ended.
    pub exec_not_found: Option<&'a str>,
    /// The store paths of the built closure.
    pub closure: &'a [PathBuf],
}

/// Programs whose package attribute differs from their name (or is worth stating).
const PROGRAM_PACKAGES: &[(&str, &str)] = &[
    ("python", "python3"),
    ("python3", "python3"),
    ("pip", "python3"),
    ("pip3", "python3"),
    ("rg", "ripgrep"),
    ("fd", "fd"),
    ("node", "nodejs"),
    ("npm", "nodejs"),
    ("npx", "nodejs"),
    ("redis-cli", "redis"),
    ("redis-server", "redis"),
    ("psql", "postgresql"),
    ("sqlite3", "sqlite"),
    ("convert", "imagemagick"),
    ("xxd", "vim"),
    ("dig", "dnsutils"),
    ("cc", "gcc"),
    ("g++", "gcc"),
    ("make", "gnumake"),
    ("awk", "gawk"),
    ("sed", "gnused"),
    ("grep", "gnugrep"),
    ("tar", "gnutar"),
    ("find", "findutils"),
    ("xargs", "findutils"),
    ("ls", "coreutils"),
    ("cat", "coreutils"),
    ("sort", "coreutils"),
    ("bash", "bash"),
];

/// Python modules whose distribution (nixpkgs `python3Packages` attribute) has another
/// name.
const MODULE_LIBRARIES: &[(&str, &str)] = &[
    ("yaml", "pyyaml"),
    ("PIL", "pillow"),
    ("cv2", "opencv4"),
    ("sklearn", "scikit-learn"),
    ("bs4", "beautifulsoup4"),
    ("dateutil", "python-dateutil"),
    ("dotenv", "python-dotenv"),
    ("jwt", "pyjwt"),
    ("serial", "pyserial"),
    ("magic", "python-magic"),
    ("Crypto", "pycryptodome"),
    ("docx", "python-docx"),
    ("pptx", "python-pptx"),
];

/// Loopback ports of the services nixcell can run.
const SERVICE_PORTS: &[(u16, &str)] = &[(6379, "redis"), (5432, "postgres")];

/// Phrases that mean "tried to reach a host outside the cell".
const NETWORK_PHRASES: &[&str] = &[
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Name or service not known",
    "No address associated with hostname",
    "Could not resolve host",
    "could not resolve host",
    "getaddrinfo failed",
    "getaddrinfo ENOTFOUND",
    "getaddrinfo EAI_AGAIN",
    "nodename nor servname provided",
    "No route to host",
    "bad address '",
];

/// Hints for a run that ended with `inputs`; empty when nothing points at a missing piece.
pub fn for_outcome(inputs: &Inputs<'_>, policy: Option<&dyn EditPolicy>) -> Vec<Hint> {
    let mut out: Vec<Hint> = Vec::new();
    let mut push = |h: Hint| {
        if !out
            .iter()
            .any(|o| o.kind == h.kind && o.missing == h.missing)
        {
            out.push(h);
        }
    };
    let mut programs: Vec<String> = inputs
        .exec_not_found
        .map(|p| program_name(p).to_string())
        .into_iter()
        .collect();
    programs.extend(missing_programs(inputs.output));
    for p in programs {
        push(missing_command(&p, inputs.closure, policy));
    }
    for m in missing_modules(inputs.output) {
        push(missing_module(&m, policy));
    }
    if let Some(phrase) = NETWORK_PHRASES.iter().find(|p| inputs.output.contains(*p)) {
        push(Hint {
            kind: HintKind::NetworkForbidden,
            missing: "network".into(),
            message: format!(
                "the command tried to reach the network (\"{phrase}\"); the cell has loopback only and no edit changes that: work offline, or ask a human for the data"
            ),
            edit: None,
        });
    }
    for port in refused_loopback_ports(inputs.output) {
        if let Some((_, svc)) = SERVICE_PORTS.iter().find(|(p, _)| *p == port) {
            push(service_hint(port, svc, policy));
        }
    }
    out
}

fn program_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// A plausible program name: no spaces or quotes, not empty.
fn plausible_program(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-/".contains(c))
}

/// Program names from shells' "not found" messages:
/// `sh: python3: not found`, `bash: line 1: jq: command not found`,
/// `sh: 1: jq: not found`, `/usr/bin/env: 'python3': No such file or directory`,
/// `env: ‘python3’: No such file or directory`.
fn missing_programs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let cand = if let Some(rest) = line
            .strip_suffix(": command not found")
            .or_else(|| line.strip_suffix(": not found"))
        {
            rest.rsplit(": ").next().map(str::to_string)
        } else if let Some(rest) = line.strip_suffix(": No such file or directory")
            && (line.starts_with("env:") || line.starts_with("/usr/bin/env:"))
        {
            rest.rsplit(": ")
                .next()
                .map(|s| s.trim_matches(|c| "'‘’\"".contains(c)).to_string())
        } else {
            None
        };
        if let Some(c) = cand {
            let name = program_name(&c).to_string();
            if plausible_program(&name) && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Top-level module names from `ModuleNotFoundError: No module named 'x.y'`.
fn missing_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(i) = line.find("No module named ") else {
            continue;
        };
        let rest = line[i + "No module named ".len()..].trim();
        let name = rest.trim_matches(|c| c == '\'' || c == '"');
        let top = name.split('.').next().unwrap_or("");
        let ok = !top.is_empty()
            && top
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok && !out.iter().any(|o| o == top) {
            out.push(top.to_string());
        }
    }
    out
}

/// Loopback ports a connection was refused on, as Python and redis-cli report it, and
/// postgres' unix sockets (`/tmp/.s.PGSQL.5432`) that were not there, as libpq does.
fn refused_loopback_ports(text: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.contains("No such file or directory"))
    {
        if let Some(i) = line.find(".s.PGSQL.") {
            let digits: String = line[i + 9..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if let Ok(p) = digits.parse::<u16>()
                && !out.contains(&p)
            {
                out.push(p);
            }
        }
    }
    if !text.contains("Connection refused") {
        return out;
    }
    for line in text.lines().filter(|l| l.contains("Connection refused")) {
        for host in ["127.0.0.1:", "localhost:", "127.0.0.1, ", "'localhost', "] {
            let mut rest = line;
            while let Some(i) = rest.find(host) {
                rest = &rest[i + host.len()..];
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if let Ok(p) = digits.parse::<u16>()
                    && !out.contains(&p)
                {
                    out.push(p);
                }
            }
        }
    }
    // A refusal that names no port: every known service is a candidate only if its port
    // appears somewhere in the output.
    if out.is_empty() {
        for (p, _) in SERVICE_PORTS {
            if text.contains(&p.to_string()) {
                out.push(*p);
            }
        }
    }
    out
}

/// The package name of a store path: `/nix/store/<hash>-python3-3.11.2` → `python3`
/// (the name up to the first `-` followed by a digit).
pub fn package_of_store_path(p: &Path) -> Option<String> {
    let name_ver = crate::nix::store::store_path_name(p)?;
    let mut name = String::new();
    for part in name_ver.split('-') {
        if part.starts_with(|c: char| c.is_ascii_digit()) && !name.is_empty() {
            break;
        }
        if !name.is_empty() {
            name.push('-');
        }
        name.push_str(part);
    }
    (!name.is_empty()).then_some(name)
}

/// Store paths of the closure with `bin/<program>`: the program is there but not on PATH.
fn in_closure(program: &str, closure: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for p in closure {
        if p.join("bin").join(program).exists()
            && let Some(name) = package_of_store_path(p)
            && !out.contains(&name)
        {
            out.push(name);
        }
    }
    out
}

fn suggest(subject: Subject, name: &str, policy: Option<&dyn EditPolicy>) -> Option<SuggestedEdit> {
    let policy = policy?;
    policy.allows(subject, name).then(|| SuggestedEdit {
        op: subject.add_op().to_string(),
        subject,
        name: name.to_string(),
        command: format!("nixcell edit {} {name}", subject.add_op()),
    })
}

fn missing_command(program: &str, closure: &[PathBuf], policy: Option<&dyn EditPolicy>) -> Hint {
    let mut candidates = in_closure(program, closure);
    let from_table = PROGRAM_PACKAGES
        .iter()
        .find(|(p, _)| *p == program)
        .map(|(_, pkg)| pkg.to_string())
        .unwrap_or_else(|| program.to_string());
    if !candidates.contains(&from_table) {
        candidates.push(from_table);
    }
    let edit = candidates
        .iter()
        .find_map(|c| suggest(Subject::Package, c, policy));
    let message = match (&edit, policy) {
        (Some(e), _) => format!(
            "`{program}` is not on the cell's PATH; ask for it with `{}`",
            e.command
        ),
        (None, Some(_)) => format!(
            "`{program}` is not on the cell's PATH, and the edit policy allows no package that provides it (tried: {}); ask a human to add it",
            candidates.join(", ")
        ),
        (None, None) => format!(
            "`{program}` is not on the cell's PATH; it would come from the package `{}` (no edit policy here: ask a human to add it)",
            candidates[0]
        ),
    };
    Hint {
        kind: HintKind::MissingCommand,
        missing: program.to_string(),
        message,
        edit,
    }
}

fn missing_module(module: &str, policy: Option<&dyn EditPolicy>) -> Hint {
    let lib = MODULE_LIBRARIES
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| l.to_string())
        .unwrap_or_else(|| module.to_ascii_lowercase().replace('_', "-"));
    let edit = suggest(Subject::PythonLibrary, &lib, policy);
    let message = match (&edit, policy) {
        (Some(e), _) => format!(
            "the Python module `{module}` is not installed in the cell; ask for it with `{}`",
            e.command
        ),
        (None, Some(_)) => format!(
            "the Python module `{module}` is not installed in the cell, and the edit policy does not allow the library `{lib}`; ask a human to add it"
        ),
        (None, None) => format!(
            "the Python module `{module}` is not installed in the cell; it would come from the Python library `{lib}` (no edit policy here: ask a human to add it)"
        ),
    };
    Hint {
        kind: HintKind::MissingPythonModule,
        missing: module.to_string(),
        message,
        edit,
    }
}

fn service_hint(port: u16, service: &str, policy: Option<&dyn EditPolicy>) -> Hint {
    let edit = suggest(Subject::Service, service, policy);
    let message = match (&edit, policy) {
        (Some(e), _) => format!(
            "nothing listens on 127.0.0.1:{port} in the cell; if you meant {service}, enable it with `{}`",
            e.command
        ),
        (None, Some(_)) => format!(
            "nothing listens on 127.0.0.1:{port} in the cell; the edit policy does not allow the service `{service}`"
        ),
        (None, None) => format!(
            "nothing listens on 127.0.0.1:{port} in the cell; the service `{service}` is not running (no edit policy here: ask a human to enable it)"
        ),
    };
    Hint {
        kind: HintKind::ServiceNotRunning,
        missing: format!("127.0.0.1:{port}"),
        message,
        edit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whitelist of exact names per subject.
    struct Allow(Vec<(Subject, &'static str)>);
    impl EditPolicy for Allow {
        fn allows(&self, s: Subject, n: &str) -> bool {
            self.0.iter().any(|(a, b)| *a == s && *b == n)
        }
    }

    fn run(output: &str, exec: Option<&str>, policy: Option<&dyn EditPolicy>) -> Vec<Hint> {
        for_outcome(
            &Inputs {
                output,
                exec_not_found: exec,
                closure: &[],
            },
            policy,
        )
    }

    #[test]
    fn missing_module_suggests_the_library_the_policy_allows() {
        let p = Allow(vec![(Subject::PythonLibrary, "pandas")]);
        let err = "Traceback (most recent call last):\n  File \"/work/r.py\", line 1, in <module>\n    import pandas as pd\nModuleNotFoundError: No module named 'pandas'\n";
        let h = run(err, None, Some(&p));
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].kind, HintKind::MissingPythonModule);
        let e = h[0].edit.as_ref().expect("an edit");
        assert_eq!(e.command, "nixcell edit add-python-library pandas");
    }

    #[test]
    fn submodules_and_renamed_distributions() {
        let p = Allow(vec![(Subject::PythonLibrary, "pyyaml")]);
        let h = run(
            "ModuleNotFoundError: No module named 'yaml.loader'",
            None,
            Some(&p),
        );
        assert_eq!(h[0].missing, "yaml");
        assert_eq!(h[0].edit.as_ref().unwrap().name, "pyyaml");
    }

    #[test]
    fn exec_not_found_and_shell_messages_name_the_package() {
        let p = Allow(vec![
            (Subject::Package, "python3"),
            (Subject::Package, "jq"),
        ]);
        let h = run("", Some("python3"), Some(&p));
        assert_eq!(
            h[0].edit.as_ref().unwrap().command,
            "nixcell edit add-package python3"
        );
        for line in [
            "sh: jq: not found",
            "bash: line 1: jq: command not found",
            "sh: 1: jq: not found",
            "/usr/bin/env: 'jq': No such file or directory",
        ] {
            let h = run(line, None, Some(&p));
            assert_eq!(h.len(), 1, "{line}: {h:?}");
            assert_eq!(h[0].missing, "jq", "{line}");
            assert_eq!(h[0].edit.as_ref().unwrap().name, "jq", "{line}");
        }
        let p = Allow(vec![(Subject::Package, "ripgrep")]);
        let h = run("sh: rg: not found", None, Some(&p));
        assert_eq!(h[0].edit.as_ref().unwrap().name, "ripgrep");
    }

    #[test]
    fn a_hint_never_suggests_an_edit_the_policy_refuses() {
        // The policy allows other things, not what is missing.
        let p = Allow(vec![
            (Subject::Package, "jq"),
            (Subject::PythonLibrary, "numpy"),
            (Subject::Service, "postgres"),
        ]);
        let out = "sh: python3: not found\nModuleNotFoundError: No module named 'pandas'\nredis.exceptions.ConnectionError: Error 111 connecting to localhost:6379. Connection refused.\n";
        let h = run(out, Some("curl"), Some(&p));
        assert_eq!(h.len(), 4, "{h:?}");
        for hint in &h {
            assert!(hint.edit.is_none(), "suggested a refused edit: {hint:?}");
            assert!(
                hint.message.contains("ask a human") || hint.message.contains("does not allow"),
                "{hint:?}"
            );
        }
        // And every suggested edit is one the policy accepts.
        let p = Allow(vec![
            (Subject::Service, "redis"),
            (Subject::Package, "curl"),
        ]);
        for hint in run(out, Some("curl"), Some(&p)) {
            if let Some(e) = hint.edit {
                assert!(p.allows(e.subject, &e.name), "{e:?}");
            }
        }
    }

    #[test]
    fn without_a_policy_hints_name_what_is_missing_and_suggest_nothing() {
        let h = run(
            "ModuleNotFoundError: No module named 'openpyxl'",
            Some("jq"),
            None,
        );
        assert_eq!(h.len(), 2);
        assert!(h.iter().all(|x| x.edit.is_none()));
        assert!(h[1].message.contains("openpyxl"), "{h:?}");
    }

    #[test]
    fn the_projects_policy_decides_with_the_edits_own_checks() {
        let policy = crate::project::Policy {
            packages: vec!["jq".into(), "python3*".into(), "*".into()],
            python_libraries: vec!["pandas".into(), "num*".into()],
            services: vec![],
            ..Default::default()
        };
        let out = "ModuleNotFoundError: No module named 'pandas'\n\
                   ModuleNotFoundError: No module named 'numpy'\n\
                   ModuleNotFoundError: No module named 'openpyxl'\n\
                   sh: import: not found\n\
                   Connection refused 127.0.0.1:6379\n";
        let h = run(out, None, Some(&policy));
        let edit = |m: &str| {
            h.iter()
                .find(|x| x.missing == m)
                .unwrap_or_else(|| panic!("{m}: {h:?}"))
                .edit
                .clone()
        };
        assert_eq!(edit("pandas").unwrap().name, "pandas");
        assert_eq!(edit("numpy").unwrap().name, "numpy");
        assert!(edit("openpyxl").is_none());
        // `*` allows every package, but `import` is a Nix keyword the edit refuses.
        assert!(edit("import").is_none());
        assert!(edit("127.0.0.1:6379").is_none());
        for x in &h {
            if let Some(e) = &x.edit {
                let s = e.subject;
                assert!(crate::edit::policy::check_name(s, &e.name).is_ok());
                assert!(crate::edit::policy::check_allowed(&policy, s, &e.name).is_ok());
            }
        }
    }

    #[test]
    fn network_attempts_say_the_profile_forbids_it() {
        for out in [
            "urllib.error.URLError: <urlopen error [Errno -3] Temporary failure in name resolution>",
            "OSError: [Errno 101] Network is unreachable",
            "curl: (6) Could not resolve host: example.com",
            "wget: bad address 'example.com'",
        ] {
            let h = run(out, None, None);
            assert_eq!(h.len(), 1, "{out}");
            assert_eq!(h[0].kind, HintKind::NetworkForbidden);
            assert!(h[0].edit.is_none());
        }
    }

    #[test]
    fn refused_redis_port_suggests_the_service() {
        let p = Allow(vec![(Subject::Service, "redis")]);
        let h = run(
            "ConnectionRefusedError: [Errno 111] Connection refused (127.0.0.1:6379)",
            None,
            Some(&p),
        );
        assert_eq!(h[0].kind, HintKind::ServiceNotRunning);
        assert_eq!(
            h[0].edit.as_ref().unwrap().command,
            "nixcell edit enable-service redis"
        );
    }

    #[test]
    fn postgres_unreachable_suggests_the_service() {
        let p = Allow(vec![(Subject::Service, "postgres")]);
        for out in [
            "psycopg2.OperationalError: connection to server on socket \"/tmp/.s.PGSQL.5432\" failed: No such file or directory",
            "psycopg2.OperationalError: connection to server at \"127.0.0.1\", port 5432 failed: Connection refused",
        ] {
            let h = run(out, None, Some(&p));
            assert_eq!(h[0].kind, HintKind::ServiceNotRunning, "{out}");
            assert_eq!(
                h[0].edit.as_ref().unwrap().command,
                "nixcell edit enable-service postgres"
            );
        }
    }

    #[test]
    fn plain_failures_give_no_hints() {
        assert!(
            run(
                "Traceback...\nZeroDivisionError: division by zero\n",
                None,
                None
            )
            .is_empty()
        );
        assert!(run("", None, None).is_empty());
        // Refused on a port no service uses.
        assert!(run("Connection refused 127.0.0.1:9", None, None).is_empty());
    }

    #[test]
    fn store_path_package_names() {
        for (p, n) in [
            (
                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-python3-3.11.2",
                "python3",
            ),
            (
                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-redis-7.0.15",
                "redis",
            ),
            (
                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-gnu-tar-1.35",
                "gnu-tar",
            ),
            (
                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-demo-env",
                "demo-env",
            ),
        ] {
            assert_eq!(package_of_store_path(Path::new(p)).as_deref(), Some(n));
        }
    }

    #[test]
    fn programs_found_in_the_closure_name_their_package() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join("0123456789abcdfghijklmnpqrsvwxyz-jq-1.7");
        std::fs::create_dir_all(sp.join("bin")).unwrap();
        std::fs::write(sp.join("bin/jq-tool"), "").unwrap();
        let p = Allow(vec![(Subject::Package, "jq")]);
        let h = for_outcome(
            &Inputs {
                output: "sh: jq-tool: not found",
                exec_not_found: None,
                closure: &[sp],
            },
            Some(&p),
        );
        assert_eq!(h[0].edit.as_ref().unwrap().name, "jq");
    }
}
