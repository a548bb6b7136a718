//! The one JSON object a run reports.

use crate::harden::Usage;
use crate::hints::{DiedService, EditPolicy, End, Hint, Inputs, PackageSetQuery};
use crate::nix::closure::Closure;
use crate::sandbox::proto::LayerReport;
use crate::sandbox::{Identity, RunSpec};
use crate::supervise::{Captured, Outcome, exit_status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::PathBuf;

/// nixcell's exit status when it failed before the command ran (nothing ran).
pub const EXIT_REFUSED: i32 = 125;

/// Serialized by `nixcell run --json`, read back by the MCP server.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Verdict {
    /// nixcell's own exit status (the command's, or 124/125/126/127/128+N).
    pub exit_code: i32,
    /// The command's exit code when it exited normally.
    pub command_exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// The kernel's OOM killer killed a process of the cell (memory limit reached).
    pub oom_killed: bool,
    pub wall_time_ms: f64,
    /// Peak memory and CPU time of the whole cell.
    pub usage: Option<Usage>,
    /// The sandbox profile the run used.
    pub profile: Option<String>,
    pub error: Option<VerdictError>,
    /// The cell's closure; null when nothing ran (the run was refused before planning).
    pub closure: Option<ClosureSummary>,
    pub namespaces: Vec<Cow<'static, str>>,
    /// The cell's identity; null when nothing ran.
    pub identity: Option<Identity>,
    pub layers: Vec<LayerReport>,
    pub stdout: Option<Captured>,
    pub stderr: Option<Captured>,
    /// Services that ran beside the command, with their logs on the host.
    pub services: Vec<ServiceSummary>,
    /// What the cell seems to lack, and the edit that would provide it (see hints.rs).
    pub hints: Vec<Hint>,
    /// How /work was mounted and, copy-on-write, what came back (see changes.rs).
    pub workdir: Option<crate::changes::WorkdirReport>,
    /// The network policy and, through the proxy, what the cell reached and what was
    /// refused; null when nothing ran. An exec of a session cell lists what the cell's
    /// proxy did while the exec ran (its services' and concurrent execs' too).
    #[serde(default)]
    pub network: Option<crate::net::NetworkReport>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ServiceSummary {
    pub name: String,
    pub port: Option<u16>,
    pub log: PathBuf,
    /// The last lines of its log (control characters escaped, at most
    /// [`LOG_TAIL_BYTES`]) when the service died or stayed deaf during set-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// Lines and bytes of a failed service's log the verdict carries.
pub const LOG_TAIL_LINES: usize = 8;
pub const LOG_TAIL_BYTES: usize = 1024;

/// The last lines of a service's log. The cell wrote it: opened without following a
/// link, a regular file only, at most the last 4 KiB read, control characters escaped.
pub fn log_tail(path: &std::path::Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let len = f.metadata().ok().filter(|m| m.is_file())?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut buf = Vec::with_capacity(4096);
    f.take(4096).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(crate::changes::shown)
        .collect();
    let mut tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    if tail.len() > LOG_TAIL_BYTES {
        let mut cut = tail.len() - LOG_TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = format!("...{}", &tail[cut..]);
    }
    (!tail.is_empty()).then_some(tail)
}

/// The service a set-up failure is about (service stages name it as `'NAME'`).
fn failed_service<'a>(o: &Outcome, services: &'a [crate::sandbox::ServiceSpec]) -> Option<&'a str> {
    use crate::sandbox::stage::Stage;
    let f = o.setup_error.as_ref()?;
    if !matches!(
        f.stage,
        Stage::ServiceStart | Stage::ServiceReady | Stage::ServiceStdio
    ) {
        return None;
    }
    services
        .iter()
        .map(|s| s.name.as_str())
        .find(|n| f.detail.contains(&format!("'{n}'")) || f.detail == *n)
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VerdictError {
    /// What failed, one of [`ErrorKind`]'s names: "usage", "declaration", "build",
    /// "environment", "profile", "setup", "exec", "supervisor" or "refused".
    pub kind: Cow<'static, str>,
    pub message: String,
    /// Where the error is: the flag (`--workdir`), the file (`devenv.nix`, with its
    /// line when known) or the set-up stage; null when the message says it all.
    #[serde(default, rename = "where")]
    pub location: Option<String>,
    pub stage: Option<String>,
    pub syscall: Option<String>,
    pub errno: Option<i32>,
}

/// The kinds of [`VerdictError`]: which side is to fix what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A flag or argument of the command line (the caller's to fix).
    Usage,
    /// The project's declaration (`devenv.nix`, `nixcell.toml`): it does not parse,
    /// evaluate or type-check.
    Declaration,
    /// Nix could not build the environment.
    Build,
    /// The environment could not be found or resolved (package set, store, caches).
    Environment,
    /// The sandbox profile.
    Profile,
    /// A set-up stage of the cell failed (it names the stage, the syscall, the errno).
    Setup,
    /// The command could not be executed.
    Exec,
    /// The supervisor failed.
    Supervisor,
    /// An edit the project's policy does not allow.
    Refused,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Usage => "usage",
            ErrorKind::Declaration => "declaration",
            ErrorKind::Build => "build",
            ErrorKind::Environment => "environment",
            ErrorKind::Profile => "profile",
            ErrorKind::Setup => "setup",
            ErrorKind::Exec => "exec",
            ErrorKind::Supervisor => "supervisor",
            ErrorKind::Refused => "refused",
        }
    }
}

impl VerdictError {
    /// An error of `kind` with no stage, syscall or errno.
    pub fn new(kind: ErrorKind, message: String, location: Option<String>) -> Self {
        VerdictError {
            kind: kind.as_str().into(),
            message,
            location,
            stage: None,
            syscall: None,
            errno: None,
        }
    }

    /// The error of a run that could not start, classified by where it came from.
    pub fn of_run_error(e: &crate::run::RunError) -> Self {
        use crate::run::RunError as R;
        let (kind, location) = match e {
            R::Plan(p) => (ErrorKind::Usage, plan_location(p)),
            R::Environment(e) => classify(e),
            R::Profile(_) => (ErrorKind::Profile, Some("--profile".into())),
            R::Harden(_) => (ErrorKind::Setup, None),
            R::Kernel(k) => {
                return VerdictError {
                    kind: ErrorKind::Setup.as_str().into(),
                    message: e.to_string(),
                    location: Some(k.stage.as_str().to_string()),
                    stage: Some(k.stage.as_str().to_string()),
                    syscall: Some(k.syscall.to_string()),
                    errno: Some(k.source as i32),
                };
            }
            R::Runtime(_) | R::Supervise(_) | R::Proxy(_) => (ErrorKind::Supervisor, None),
        };
        VerdictError::new(kind, e.to_string(), location)
    }

    /// The error of a front-end command (`build`, `context`, `edit`, ...), classified.
    pub fn of_error(e: &anyhow::Error) -> Self {
        let (kind, location) = classify(e);
        VerdictError::new(kind, e.to_string(), location)
    }
}

/// How a command reports that it failed before anything ran: `nixcell: MESSAGE` on
/// stderr and, with `--json`, on stdout `run`'s whole verdict ([`refused`]) or, for
/// the other commands, `{"exit_code": 125, "error": {...}}` with the same error
/// object. Returns the exit status, 125.
pub fn report_refusal(json: bool, error: VerdictError, whole_verdict: bool) -> i32 {
    if json && whole_verdict {
        eprintln!("nixcell: {}", error.message);
        println!(
            "{}",
            serde_json::to_string(&refused(error)).unwrap_or_default()
        );
        return EXIT_REFUSED;
    }
    report_failure(json, error, EXIT_REFUSED)
}

/// `nixcell: MESSAGE` on stderr and, with `--json`, `{"exit_code": N, "error": {...}}`
/// on stdout; returns `exit_code`.
pub fn report_failure(json: bool, error: VerdictError, exit_code: i32) -> i32 {
    eprintln!("nixcell: {}", error.message);
    if json {
        let v = serde_json::json!({"exit_code": exit_code, "error": error});
        println!("{v}");
    }
    exit_code
}

fn plan_location(p: &crate::plan::PlanError) -> Option<String> {
    use crate::plan::PlanError as P;
    Some(
        match p {
            P::NoCommand => "COMMAND",
            P::NoEnvironment => "--env-path",
            P::Closure(_) => "--env-path",
            P::Workdir(..) => "--workdir",
            P::Bind { flag, .. } => flag,
            P::SetEnv(_) => "--setenv",
            P::Identity(_) => return None,
            P::Service(..) => "--service",
            P::Logs(_) => return None,
        }
        .to_string(),
    )
}

/// The kind of an error met while resolving the environment or editing it: a
/// declaration that is wrong is the project's to fix, a build that fails is Nix's
/// report, an edit the policy refuses is the agent's; the rest is where the
/// environment comes from.
fn classify(e: &anyhow::Error) -> (ErrorKind, Option<String>) {
    use crate::edit::EditError as E;
    for cause in e.chain() {
        let found = if let Some(x) = cause.downcast_ref::<E>() {
            match x {
                E::Policy(_) | E::Refused(_) => Some((ErrorKind::Refused, None)),
                E::NoProposal(_) | E::Settled { .. } => Some((ErrorKind::Usage, None)),
                E::Proof(_) => Some((ErrorKind::Build, None)),
                E::Cst(_) | E::Encoding { .. } => Some((ErrorKind::Declaration, None)),
                E::Project(p) => project_kind(p),
                _ => None,
            }
        } else if let Some(p) = cause.downcast_ref::<crate::project::ProjectError>() {
            project_kind(p)
        } else if let Some(d) = cause.downcast_ref::<crate::declare::DeclareError>() {
            Some(declare_kind(d))
        } else if cause
            .downcast_ref::<crate::nix::build::BuildError>()
            .is_some()
        {
            Some((ErrorKind::Build, None))
        } else {
            None
        };
        if let Some(k) = found {
            return k;
        }
    }
    (ErrorKind::Environment, None)
}

fn project_kind(p: &crate::project::ProjectError) -> Option<(ErrorKind, Option<String>)> {
    use crate::project::ProjectError as P;
    match p {
        P::Config { file, line, .. } => Some((
            ErrorKind::Declaration,
            Some(format!("{}:{line}", file.display())),
        )),
        P::ConfigValue { file, .. } => {
            Some((ErrorKind::Declaration, Some(file.display().to_string())))
        }
        P::Declare(d) => Some(declare_kind(d)),
        P::NotFound(_) | P::NoPackageSet => Some((ErrorKind::Environment, None)),
        _ => None,
    }
}

fn declare_kind(d: &crate::declare::DeclareError) -> (ErrorKind, Option<String>) {
    use crate::declare::DeclareError as D;
    match d {
        D::Invalid(_) => (
            ErrorKind::Declaration,
            Some(crate::project::DECLARATION.to_string()),
        ),
        D::Eval { file, .. } | D::Shape { file, .. } => {
            (ErrorKind::Declaration, Some(file.display().to_string()))
        }
        D::Build { file, .. } => (ErrorKind::Build, Some(file.display().to_string())),
        D::Evaluator(..) => (ErrorKind::Environment, None),
    }
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ClosureSummary {
    pub roots: Vec<PathBuf>,
    pub paths: usize,
    pub hash: String,
}

pub use crate::sandbox::exec::exec_message;

/// The error a run ended with, if any.
pub fn outcome_error(o: &Outcome) -> Option<VerdictError> {
    if let Some(f) = &o.setup_error {
        return Some(VerdictError {
            kind: ErrorKind::Setup.as_str().into(),
            message: f.to_string(),
            location: Some(f.stage.as_str().to_string()),
            stage: Some(f.stage.as_str().to_string()),
            syscall: Some(f.syscall.clone()),
            errno: Some(f.errno),
        });
    }
    if let Some(m) = &o.supervisor_error {
        return Some(VerdictError::new(ErrorKind::Supervisor, m.clone(), None));
    }
    o.exec_error.as_ref().map(|(p, e)| VerdictError {
        kind: ErrorKind::Exec.as_str().into(),
        message: exec_message(p, *e),
        location: Some(p.clone()),
        stage: None,
        syscall: Some("execve".into()),
        errno: Some(*e),
    })
}

/// What the supervisor knows once the cell is gone, besides the cell's own outcome.
pub struct Finish<'a> {
    /// The profile the run used.
    pub profile: String,
    /// Layers the supervisor enforced (the cgroup), reported before the cell's own.
    pub layers: Vec<LayerReport>,
    pub usage: Usage,
    pub oom_killed: bool,
    /// What came back of a copy-on-write workdir; None: how /work was mounted, live.
    pub workdir: Option<crate::changes::WorkdirReport>,
    /// The project's edit policy: hints suggest only edits it accepts.
    pub policy: Option<&'a dyn EditPolicy>,
    /// The package set of the environment: hints name only packages it has.
    pub package_set: Option<&'a dyn PackageSetQuery>,
    /// The run's limits and what its profile allows (the rest of [`End`] is filled
    /// from the outcome).
    pub end: End,
    /// The network policy and what the proxy saw.
    pub network: crate::net::NetworkReport,
}

/// The verdict of a finished run, complete: built once, nothing is added after.
pub fn build(spec: &RunSpec, closure: &Closure, mut o: Outcome, f: Finish<'_>) -> Verdict {
    o.account_oom(f.oom_killed);
    let not_found = o
        .exec_error
        .as_ref()
        .filter(|(_, e)| *e == libc::ENOENT)
        .map(|(p, _)| p.as_str());
    let mut end = f.end;
    end.oom_killed = f.oom_killed;
    end.peak_memory = f.usage.peak_memory_bytes;
    end.timed_out = o.timed_out;
    end.died = died_services(spec, &o);
    let mut output = String::new();
    for c in [&o.stderr, &o.stdout].into_iter().flatten() {
        output.push_str(&c.text);
        output.push('\n');
    }
    if let Some(t) = &o.stderr_tail {
        output.push_str(t);
    }
    let paths: Vec<PathBuf> = closure.paths.iter().map(|e| e.path.clone()).collect();
    let hints = crate::hints::for_outcome(
        &Inputs {
            output: &output,
            exec_not_found: not_found,
            closure: &paths,
            argv: &spec.argv,
            package_set: f.package_set,
            end: &end,
        },
        f.policy,
    );
    // The end of the log of each service that died (failed to start, or ended early).
    let services: Vec<ServiceSummary> = spec
        .services
        .iter()
        .map(|s| ServiceSummary {
            name: s.name.clone(),
            port: s.ready_port,
            log: s.log.clone(),
            log_tail: end
                .died
                .iter()
                .find(|d| d.name == s.name)
                .map(|d| d.log_tail.clone()),
        })
        .collect();
    let mut error = outcome_error(&o);
    if let (Some(e), Some(tail)) = (
        error.as_mut(),
        services.iter().find_map(|s| s.log_tail.as_deref()),
    ) {
        e.message = format!("{}; its log ends:\n{tail}", e.message);
    }
    let mut layers = f.layers;
    layers.append(&mut o.layers);
    Verdict {
        exit_code: exit_status(&o),
        command_exit_code: o.exit_code,
        signal: o.signal,
        timed_out: o.timed_out,
        oom_killed: f.oom_killed,
        usage: Some(f.usage),
        profile: Some(f.profile),
        wall_time_ms: o.wall.as_secs_f64() * 1000.0,
        error,
        closure: Some(ClosureSummary {
            roots: closure.roots.clone(),
            paths: closure.paths.len(),
            hash: closure.hash.clone(),
        }),
        namespaces: crate::sandbox::ns::namespace_names()
            .into_iter()
            .map(Cow::Borrowed)
            .collect(),
        identity: Some(spec.identity.clone()),
        layers,
        stdout: o.stdout,
        stderr: o.stderr,
        services,
        hints,
        workdir: f
            .workdir
            .or_else(|| spec.workdir_mode().map(crate::changes::WorkdirReport::live)),
        network: Some(f.network),
    }
}

/// The services of the run that ended while the command ran, or failed to start, each
/// with the end of its log.
fn died_services(spec: &RunSpec, o: &Outcome) -> Vec<DiedService> {
    let tail =
        |s: &crate::sandbox::ServiceSpec| log_tail(&s.log).unwrap_or_else(|| "(empty log)".into());
    let mut out: Vec<DiedService> = o
        .services_exited
        .iter()
        .filter_map(|(i, code, signal)| {
            let s = spec.services.get(*i)?;
            let how = match (code, signal) {
                (Some(c), _) => format!("exited with status {c}"),
                (_, Some(sig)) => format!("was killed by signal {sig}"),
                _ => "ended".to_string(),
            };
            Some(DiedService {
                name: s.name.clone(),
                how,
                log_tail: tail(s),
            })
        })
        .collect();
    if let Some(name) = failed_service(o, &spec.services)
        && let Some(s) = spec.services.iter().find(|s| s.name == name)
    {
        out.push(DiedService {
            name: s.name.clone(),
            how: "did not start".into(),
            log_tail: tail(s),
        });
    }
    out
}

/// The verdict of a run refused before anything ran (exit 125): the same shape as any
/// other verdict, with `error` set and nothing measured.
pub fn refused(error: VerdictError) -> Verdict {
    Verdict {
        exit_code: EXIT_REFUSED,
        command_exit_code: None,
        signal: None,
        timed_out: false,
        oom_killed: false,
        wall_time_ms: 0.0,
        usage: None,
        profile: None,
        error: Some(error),
        closure: None,
        namespaces: Vec::new(),
        identity: None,
        layers: Vec::new(),
        stdout: None,
        stderr: None,
        services: Vec::new(),
        hints: Vec::new(),
        workdir: None,
        network: None,
    }
}
