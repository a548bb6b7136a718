//! Remediation hints: when a run fails, say why in terms an agent can act on: what is
//! missing and which edit of the environment would provide it, which limit ended the
//! run and how far it may be raised, which connection the sandbox denied, which
//! service died.
//!
//! A hint reads the command's output and the exec error, looks in the built closure for
//! the missing program, asks the package set which candidate packages really exist
//! (none is named that it lacks; without a package set none is named at all), and
//! consults the edit policy: it suggests an edit only when the policy would accept it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Which attribute names the package set has (see `declare::attrs`).
pub trait PackageSetQuery {
    /// The names of `names` that are packages of the set; `None`: it cannot be asked.
    fn existing(&self, names: &[String]) -> Option<Vec<String>>;
}

impl PackageSetQuery for crate::project::PackageSet {
    fn existing(&self, names: &[String]) -> Option<Vec<String>> {
        crate::declare::attrs::existing(self, names)
    }
}

/// What kind of failure a hint is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HintKind {
    /// A program the command tried to run is not on the cell's PATH.
    MissingCommand,
    /// A Python module could not be imported.
    MissingPythonModule,
    /// The command tried pip: libraries come from the environment instead.
    PipUnavailable,
    /// The command tried to reach the network; the cell has loopback only.
    NetworkForbidden,
    /// A loopback TCP port the profile's Landlock rules do not open.
    PortDenied,
    /// nixcell's proxy refused a name or address the network policy does not allow.
    NetworkDenied,
    /// Nothing listens on a loopback port a known service uses.
    ServiceNotRunning,
    /// A declared service or process died.
    ServiceDied,
    /// The cell reached its memory limit and the command was OOM-killed.
    OutOfMemory,
    /// The command ran past the wall-clock limit.
    Timeout,
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
    /// The command line (`pip install NAME` names the library wanted).
    pub argv: &'a [String],
    /// The package set the environment comes from; `None`: no package is named.
    pub package_set: Option<&'a dyn PackageSetQuery>,
    /// How the run ended.
    pub end: &'a End,
}

/// How a run ended, as far as its limits and services go.
#[derive(Debug, Clone, Default)]
pub struct End {
    /// The profile the run used.
    pub profile: String,
    pub oom_killed: bool,
    pub peak_memory: Option<u64>,
    /// The run's memory limit, and the most its profile allows.
    pub memory: Option<u64>,
    pub memory_ceiling: Option<u64>,
    pub timed_out: bool,
    /// The run's wall-clock limit, and the most its profile (and project) allow.
    pub timeout: Option<Duration>,
    pub timeout_ceiling: Option<Duration>,
    /// Loopback TCP ports Landlock opens, when its TCP rules are enforced.
    pub tcp_ports: Option<Vec<u16>>,
    /// Declared services and processes that died before the command ended.
    pub died: Vec<DiedService>,
    /// The network allow entries in force (empty: loopback only).
    pub network_allowed: Vec<String>,
    /// What the proxy refused: (host, port, reason, the address refused).
    pub network_denied: Vec<(String, u16, String, Option<String>)>,
    /// The refused `HOST:PORT`s the `allow-domain` edit would accept (the project's
    /// policy and the profile's ceiling: `edit::network::check`).
    pub network_editable: Vec<String>,
}

/// A service or process of the cell that ended before the command did.
#[derive(Debug, Clone)]
pub struct DiedService {
    pub name: String,
    /// How: "exited with status 1", "was killed by signal 9", "did not start: ...".
    pub how: String,
    /// The last lines of its log.
    pub log_tail: String,
}

/// Programs whose package attribute differs from their name (or is worth stating).
const PROGRAM_PACKAGES: &[(&str, &str)] = &[
    ("python", "python3"),
    ("python3", "python3"),
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

/// Hints for a run that ended with `inputs`; empty when nothing points at a cause.
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
    let end = inputs.end;
    // What ended the run first: its limits and services.
    if end.oom_killed {
        push(oom_hint(end));
    }
    if end.timed_out {
        push(timeout_hint(end));
    }
    for d in &end.died {
        push(Hint {
            kind: HintKind::ServiceDied,
            missing: d.name.clone(),
            message: format!(
                "the service `{}` {} while the command ran; the end of its log:\n{}",
                d.name, d.how, d.log_tail
            ),
            edit: None,
        });
    }
    // What is missing: programs, modules, pip.
    let mut programs: Vec<String> = inputs
        .exec_not_found
        .map(|p| program_name(p).to_string())
        .into_iter()
        .collect();
    for p in missing_programs(inputs.output) {
        if !programs.contains(&p) {
            programs.push(p);
        }
    }
    let mut modules = missing_modules(inputs.output);
    let pip = programs.iter().any(|p| is_pip(p)) || modules.iter().any(|m| m == "pip");
    programs.retain(|p| !is_pip(p));
    modules.retain(|m| m != "pip");
    let wanted = if pip {
        pip_installs(inputs.argv)
    } else {
        Vec::new()
    };
    let programs: Vec<(String, Vec<String>)> = programs
        .into_iter()
        .map(|p| {
            let c = program_candidates(&p, inputs.closure);
            (p, c)
        })
        .collect();
    let modules: Vec<(String, String)> = modules
        .into_iter()
        .map(|m| {
            let l = library_of(&m);
            (m, l)
        })
        .collect();
    // One question to the package set for every name a hint might mention.
    let mut ask: Vec<String> = programs.iter().flat_map(|(_, c)| c.clone()).collect();
    ask.extend(modules.iter().map(|(_, l)| python_attr(l)));
    ask.extend(wanted.iter().map(|l| python_attr(l)));
    let known: Option<Vec<String>> = if ask.is_empty() {
        Some(Vec::new())
    } else {
        inputs.package_set.and_then(|s| s.existing(&ask))
    };
    let known = known.as_deref();
    for (p, c) in &programs {
        push(missing_command(p, c, known, policy));
    }
    for (m, l) in &modules {
        push(missing_module(m, l, known, policy));
    }
    if pip {
        push(pip_hint(&wanted, known, policy));
    }
    for h in proxy_refusals(end) {
        push(h);
    }
    if let Some(phrase) = NETWORK_PHRASES.iter().find(|p| inputs.output.contains(*p))
        && !end.network_allowed.is_empty()
    {
        push(Hint {
            kind: HintKind::NetworkForbidden,
            missing: "network".into(),
            message: format!(
                "the command tried to reach the network (\"{phrase}\"); the cell reaches it only through nixcell's proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY: http://127.0.0.1:{}), and there only {}: use a client that honours the proxy variables",
                crate::net::PORT_IN_CELL,
                end.network_allowed.join(", ")
            ),
            edit: None,
        });
    } else if let Some(phrase) = NETWORK_PHRASES.iter().find(|p| inputs.output.contains(*p)) {
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
    if let Some(open) = &end.tcp_ports {
        for h in denied_connections(inputs.output, &inputs.argv.join(" "), open, policy) {
            push(h);
        }
    }
    out
}

/// Hints listed at most for the proxy's refusals (one per name and port).
const MAX_PROXY_HINTS: usize = 5;

/// One hint per name and port the proxy refused. The `allow-domain` edit is named
/// only where it would be accepted; elsewhere only the operator can allow more.
fn proxy_refusals(end: &End) -> Vec<Hint> {
    let mut out: Vec<Hint> = Vec::new();
    for (host, port, reason, address) in &end.network_denied {
        let missing = format!("{host}:{port}");
        if out.iter().any(|h| h.missing == missing) {
            continue;
        }
        if out.len() == MAX_PROXY_HINTS {
            break;
        }
        let edit = end
            .network_editable
            .contains(&missing)
            .then(|| suggest_domain(&missing));
        let what = if let Some(e) = &edit {
            format!(
                "the project's policy lets you add it: ask for it with `{}`, then run again",
                e.command
            )
        } else if reason.contains("deny entry") {
            "a deny entry of the policy refuses it, and a deny entry wins: no flag or edit changes that".to_string()
        } else if let Some(a) = address {
            let a = if a.contains(':') {
                format!("[{a}]")
            } else {
                a.clone()
            };
            format!(
                "that address is reached only when it is listed as such, which only the operator can do (`--allow-host {a}:{port}`), and only if it is meant: a name resolving there may be an attempt to reach the host's own network"
            )
        } else {
            let allowed = if end.network_allowed.is_empty() {
                "nothing".to_string()
            } else {
                end.network_allowed.join(", ")
            };
            format!(
                "the cell may reach {allowed}; only the operator can allow more (`--allow-host {missing}`, or the profile's [network] allow list)"
            )
        };
        out.push(Hint {
            kind: HintKind::NetworkDenied,
            message: format!("nixcell's proxy refused {missing} ({reason}): {what}"),
            missing,
            edit,
        });
    }
    out
}

fn suggest_domain(entry: &str) -> SuggestedEdit {
    let op = Subject::Domain.add_op();
    SuggestedEdit {
        op: op.to_string(),
        subject: Subject::Domain,
        name: entry.to_string(),
        command: format!("nixcell edit {op} {entry}"),
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

fn oom_hint(end: &End) -> Hint {
    let limit = end.memory.map_or("its memory limit".into(), |m| {
        format!("its memory limit of {}", human_bytes(m))
    });
    let peak = end
        .peak_memory
        .map(|p| format!(" (peak {})", human_bytes(p)))
        .unwrap_or_default();
    let raise = match (end.memory, end.memory_ceiling) {
        (Some(m), Some(c)) if m < c => format!(
            "use less memory (work in chunks, stream instead of loading whole files), or ask for up to the profile's {} (`--memory`, MCP `memory_mib` up to {})",
            human_bytes(c),
            c >> 20
        ),
        _ => format!(
            "use less memory (work in chunks, stream instead of loading whole files); the profile `{}` allows no more, only its operator can choose a larger limit (`--memory`, another profile)",
            end.profile
        ),
    };
    Hint {
        kind: HintKind::OutOfMemory,
        missing: "memory".into(),
        message: format!("the cell reached {limit}{peak} and the command was OOM-killed: {raise}"),
        edit: None,
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64().round())
}

fn timeout_hint(end: &End) -> Hint {
    let limit = end.timeout.map_or("its wall-clock limit".into(), |t| {
        format!("its wall-clock limit of {}", secs(t))
    });
    let raise = match (end.timeout, end.timeout_ceiling) {
        (Some(t), Some(c)) if t < c => format!(
            "make it faster or split it, or ask for up to {} (`--timeout`, MCP `timeout_seconds`)",
            secs(c)
        ),
        (_, None) => "make it faster or split it, or ask for a longer `--timeout`".to_string(),
        _ => format!(
            "make it faster or split it into shorter runs; the profile `{}` allows no longer run",
            end.profile
        ),
    };
    Hint {
        kind: HintKind::Timeout,
        missing: "time".into(),
        message: format!("the command ran past {limit} and the cell was killed: {raise}"),
        edit: None,
    }
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

fn is_pip(p: &str) -> bool {
    p == "pip"
        || p == "pip3"
        || (p.starts_with("pip3.") && p[5..].chars().all(|c| c.is_ascii_digit()))
}

/// The libraries a command line asks pip to install: `pip install a b==1 'c[x]'`,
/// `python3 -m pip install -U a`, also inside `sh -c "..."`.
fn pip_installs(argv: &[String]) -> Vec<String> {
    let line = argv.join(" ");
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == '\'' || c == '"')
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < words.len() {
        if is_pip(program_name(words[i])) && words[i + 1] == "install" {
            for w in &words[i + 2..] {
                if [";", "&&", "||", "|", "&"].contains(w) || w.ends_with(';') {
                    break;
                }
                if w.starts_with('-') {
                    continue;
                }
                let name: String = w
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
                    .collect::<String>()
                    .to_ascii_lowercase()
                    .replace('_', "-");
                if !name.is_empty() && !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        i += 1;
    }
    out
}

/// Packages that might provide `program`: those of the closure with `bin/<program>`,
/// then the table's, then the program's own name.
fn program_candidates(program: &str, closure: &[PathBuf]) -> Vec<String> {
    let mut candidates = in_closure(program, closure);
    let from_table = PROGRAM_PACKAGES
        .iter()
        .find(|(p, _)| *p == program)
        .map(|(_, pkg)| pkg.to_string())
        .unwrap_or_else(|| program.to_string());
    if !candidates.contains(&from_table) {
        candidates.push(from_table);
    }
    candidates
}

/// The Python library (distribution) of a module.
fn library_of(module: &str) -> String {
    MODULE_LIBRARIES
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| l.to_string())
        .unwrap_or_else(|| module.to_ascii_lowercase().replace('_', "-"))
}

/// The package set's attribute of a Python library.
fn python_attr(lib: &str) -> String {
    format!("python3Packages.{lib}")
}

fn has(known: Option<&[String]>, attr: &str) -> bool {
    known.is_some_and(|k| k.iter().any(|n| n == attr))
}

fn missing_command(
    program: &str,
    candidates: &[String],
    known: Option<&[String]>,
    policy: Option<&dyn EditPolicy>,
) -> Hint {
    // Only packages the set really has are ever named.
    let real: Vec<&String> = candidates.iter().filter(|c| has(known, c)).collect();
    let edit = real
        .iter()
        .find_map(|c| suggest(Subject::Package, c, policy));
    let message = match (&edit, real.first(), known, policy) {
        (Some(e), _, _, _) => format!(
            "`{program}` is not on the cell's PATH; ask for it with `{}`",
            e.command
        ),
        (None, _, None, _) => format!(
            "`{program}` is not on the cell's PATH (no package set to look it up in); ask a human to add what provides it"
        ),
        (None, None, Some(_), _) => format!(
            "`{program}` is not on the cell's PATH, and the package set has no package named {}; use a command the environment has (see its context)",
            candidates
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        (None, Some(pkg), Some(_), Some(_)) => format!(
            "`{program}` is not on the cell's PATH; the package `{pkg}` would provide it, but the edit policy does not allow it: ask a human to add it"
        ),
        (None, Some(pkg), Some(_), None) => format!(
            "`{program}` is not on the cell's PATH; the package `{pkg}` would provide it (no edit policy here: ask a human to add it)"
        ),
    };
    Hint {
        kind: HintKind::MissingCommand,
        missing: program.to_string(),
        message,
        edit,
    }
}

fn missing_module(
    module: &str,
    lib: &str,
    known: Option<&[String]>,
    policy: Option<&dyn EditPolicy>,
) -> Hint {
    let real = has(known, &python_attr(lib));
    let edit = real
        .then(|| suggest(Subject::PythonLibrary, lib, policy))
        .flatten();
    let message = match (&edit, real, known, policy) {
        (Some(e), _, _, _) => format!(
            "the Python module `{module}` is not installed in the cell; ask for it with `{}`",
            e.command
        ),
        (None, _, None, _) => format!(
            "the Python module `{module}` is not installed in the cell (no package set to look it up in); ask a human to add the library that provides it"
        ),
        (None, false, Some(_), _) => format!(
            "the Python module `{module}` is not installed in the cell, and the package set has no Python library `{lib}`; ask a human which library provides it"
        ),
        (None, true, Some(_), Some(_)) => format!(
            "the Python module `{module}` is not installed in the cell, and the edit policy does not allow the library `{lib}`; ask a human to add it"
        ),
        (None, true, Some(_), None) => format!(
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

/// pip is not how a cell gets libraries: the hint says so and names the edit for the
/// libraries the command line asked pip for.
fn pip_hint(wanted: &[String], known: Option<&[String]>, policy: Option<&dyn EditPolicy>) -> Hint {
    let base = "pip is not how a nixcell gets Python libraries: they come from the environment's declaration, and the cell has no network";
    let mut edit = None;
    let mut notes = Vec::new();
    for lib in wanted {
        if !has(known, &python_attr(lib)) {
            if known.is_some() {
                notes.push(format!("the package set has no Python library `{lib}`"));
            }
            continue;
        }
        match suggest(Subject::PythonLibrary, lib, policy) {
            Some(e) => {
                notes.push(format!("ask for `{lib}` with `{}`", e.command));
                edit.get_or_insert(e);
            }
            None if policy.is_some() => notes.push(format!(
                "the edit policy does not allow `{lib}`: ask a human"
            )),
            None => notes.push(format!("ask a human to add the Python library `{lib}`")),
        }
    }
    if notes.is_empty() {
        notes.push("ask for each library with `nixcell edit add-python-library NAME`".into());
    }
    Hint {
        kind: HintKind::PipUnavailable,
        missing: "pip".into(),
        message: format!("{base}; {}", notes.join("; ")),
        edit,
    }
}

/// Whether a line reports a network operation refused with EACCES (Landlock's answer
/// to connect(2) and bind(2) on a port it does not open).
fn denied_line(line: &str) -> bool {
    let l = line.trim();
    let eacces = l.contains("Permission denied") || l.contains("EACCES") || l.contains("Error 13 ");
    if !eacces {
        return false;
    }
    // Python's socket errors carry no file name; a file's does (`...denied: '/x'`).
    l.ends_with("[Errno 13] Permission denied")
        || l.contains("connect")
        || l.contains("Failed to connect")
        || l.contains("bind")
}

/// Hosts and ports named in `text`: `127.0.0.1:6379`, `localhost:6379`,
/// `('127.0.0.1', 6379)`, `127.0.0.1 port 6379`, `remote host (10.1.2.3)`.
fn addresses(text: &str) -> Vec<(String, Option<u16>)> {
    let mut out: Vec<(String, Option<u16>)> = Vec::new();
    let is_host = |h: &str| {
        h == "localhost"
            || (h.split('.').count() == 4 && h.split('.').all(|p| p.parse::<u8>().is_ok()))
    };
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || "()[],'\"".contains(c))
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        let w = w.trim_end_matches(['.', ';']);
        let (host, port) = match w.rsplit_once(':') {
            Some((h, p)) if is_host(h) => (h, p.parse::<u16>().ok()),
            _ if is_host(w) => {
                let next = words.get(i + 1).copied().unwrap_or("");
                let port = if next == "port" {
                    words
                        .get(i + 2)
                        .and_then(|p| p.trim_end_matches(':').parse().ok())
                } else {
                    next.trim_end_matches(['.', ':']).parse().ok()
                };
                (w, port)
            }
            _ => continue,
        };
        let a = (host.to_string(), port);
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

fn loopback(host: &str) -> bool {
    host == "localhost" || host.starts_with("127.")
}

/// Hints for connections the profile's Landlock TCP rules denied (`open`: the ports
/// they allow); the addresses are those named in the output or on the command line.
fn denied_connections(
    text: &str,
    command_line: &str,
    open: &[u16],
    policy: Option<&dyn EditPolicy>,
) -> Vec<Hint> {
    if !text.lines().any(denied_line) {
        return Vec::new();
    }
    let open_list = if open.is_empty() {
        "none".to_string()
    } else {
        open.iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::new();
    for (host, port) in addresses(&format!("{text}\n{command_line}")) {
        match port {
            Some(p) if loopback(&host) && open.contains(&p) => {}
            Some(p) if loopback(&host) => {
                if let Some((_, svc)) = SERVICE_PORTS.iter().find(|(sp, _)| *sp == p) {
                    out.push(service_hint(p, svc, policy));
                } else {
                    out.push(Hint {
                        kind: HintKind::PortDenied,
                        missing: format!("127.0.0.1:{p}"),
                        message: format!(
                            "TCP to 127.0.0.1:{p} was denied (EACCES, \"Permission denied\"): the profile's Landlock rules open only the declared services' ports (here: {open_list}); a command may not listen or connect elsewhere, only the operator can open a port (`--allow-port {p}`)"
                        ),
                        edit: None,
                    });
                }
            }
            _ if !loopback(&host) => out.push(network_denied(Some(&host))),
            _ => {}
        }
    }
    if out.is_empty() {
        out.push(network_denied(None));
    }
    out
}

fn network_denied(host: Option<&str>) -> Hint {
    let what = host.map_or("a network connection".to_string(), |h| {
        format!("a connection to {h}")
    });
    Hint {
        kind: HintKind::NetworkForbidden,
        missing: host.unwrap_or("network").to_string(),
        message: format!(
            "{what} was denied (EACCES, \"Permission denied\"): the cell has loopback only, and TCP only to its declared services; no edit opens the network: work offline, or ask a human for the data"
        ),
        edit: None,
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

    /// A package set of exact attribute names.
    struct Set(&'static [&'static str]);
    impl PackageSetQuery for Set {
        fn existing(&self, names: &[String]) -> Option<Vec<String>> {
            Some(
                names
                    .iter()
                    .filter(|n| self.0.contains(&n.as_str()))
                    .cloned()
                    .collect(),
            )
        }
    }

    const SET: Set = Set(&[
        "python3",
        "jq",
        "ripgrep",
        "curl",
        "redis",
        "python3Packages.pandas",
        "python3Packages.numpy",
        "python3Packages.openpyxl",
        "python3Packages.pyyaml",
        "python3Packages.requests",
    ]);

    fn landlock_tcp() -> End {
        End {
            tcp_ports: Some(vec![]),
            ..Default::default()
        }
    }

    fn hints(inputs: Inputs<'_>, policy: Option<&dyn EditPolicy>) -> Vec<Hint> {
        for_outcome(&inputs, policy)
    }

    fn run(output: &str, exec: Option<&str>, policy: Option<&dyn EditPolicy>) -> Vec<Hint> {
        hints(
            Inputs {
                output,
                exec_not_found: exec,
                closure: &[],
                argv: &[],
                package_set: Some(&SET),
                end: &landlock_tcp(),
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
        let h = hints(
            Inputs {
                output: "sh: jq-tool: not found",
                exec_not_found: None,
                closure: &[sp],
                argv: &[],
                package_set: Some(&SET),
                end: &End::default(),
            },
            Some(&p),
        );
        assert_eq!(h[0].edit.as_ref().unwrap().name, "jq");
    }

    #[test]
    fn pip_install_lines_name_the_libraries() {
        let argv = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pip_installs(&argv(&[
                "sh",
                "-c",
                "pip install -U Pandas==1.5 'openpyxl[x]'; ls"
            ])),
            ["pandas", "openpyxl"]
        );
        assert_eq!(
            pip_installs(&argv(&[
                "python3",
                "-m",
                "pip",
                "install",
                "python_dateutil"
            ])),
            ["python-dateutil"]
        );
        assert!(pip_installs(&argv(&["pip", "list"])).is_empty());
    }

    #[test]
    fn eacces_on_files_is_not_a_network_hint() {
        for out in [
            "PermissionError: [Errno 13] Permission denied: '/work/.git/config'",
            "sh: can't create /etc/x: Permission denied",
        ] {
            assert!(run(out, None, None).is_empty(), "{out}");
        }
        // Without Landlock's TCP rules an EACCES is not the sandbox's: no hint.
        let h = hints(
            Inputs {
                output: "PermissionError: [Errno 13] Permission denied",
                exec_not_found: None,
                closure: &[],
                argv: &[],
                package_set: None,
                end: &End::default(),
            },
            None,
        );
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn denied_connections_are_told_apart_by_address() {
        let p = Allow(vec![(Subject::Service, "redis")]);
        for (out, kind, missing) in [
            (
                "redis.exceptions.ConnectionError: Error 13 connecting to localhost:6379. Permission denied.",
                HintKind::ServiceNotRunning,
                "127.0.0.1:6379",
            ),
            (
                "curl: (7) Failed to connect to 127.0.0.1 port 8000 after 0 ms: Permission denied",
                HintKind::PortDenied,
                "127.0.0.1:8000",
            ),
            (
                "nc: can't connect to remote host (10.1.2.3): Permission denied",
                HintKind::NetworkForbidden,
                "10.1.2.3",
            ),
        ] {
            let h = run(out, None, Some(&p));
            assert_eq!(h.len(), 1, "{out}: {h:?}");
            assert_eq!((h[0].kind, h[0].missing.as_str()), (kind, missing), "{out}");
        }
    }

    #[test]
    fn without_a_package_set_no_package_is_named() {
        let p = Allow(vec![(Subject::Package, "jq")]);
        let h = hints(
            Inputs {
                output: "sh: jq: not found\nModuleNotFoundError: No module named 'yaml'",
                exec_not_found: None,
                closure: &[],
                argv: &[],
                package_set: None,
                end: &End::default(),
            },
            Some(&p),
        );
        assert_eq!(h.len(), 2);
        for x in &h {
            assert!(x.edit.is_none() && !x.message.contains("pyyaml"), "{x:?}");
            assert!(x.message.contains("no package set"), "{x:?}");
        }
    }
}
