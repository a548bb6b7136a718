//! The one JSON object a run reports.

use crate::harden::Usage;
use crate::hints::{EditPolicy, Hint, Inputs};
use crate::nix::closure::Closure;
use crate::sandbox::proto::LayerReport;
use crate::sandbox::{Identity, RunSpec};
use crate::supervise::{Captured, Outcome, exit_status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::PathBuf;

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
    pub closure: ClosureSummary,
    pub namespaces: Vec<Cow<'static, str>>,
    pub identity: Identity,
    pub layers: Vec<LayerReport>,
    pub stdout: Option<Captured>,
    pub stderr: Option<Captured>,
    /// Services that ran beside the command, with their logs on the host.
    pub services: Vec<ServiceSummary>,
    /// What the cell seems to lack, and the edit that would provide it (see hints.rs).
    pub hints: Vec<Hint>,
    /// How /work was mounted and, copy-on-write, what came back (see changes.rs).
    pub workdir: Option<crate::changes::WorkdirReport>,
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
    /// "usage", "setup", "exec" or "supervisor".
    pub kind: Cow<'static, str>,
    pub message: String,
    pub stage: Option<String>,
    pub syscall: Option<String>,
    pub errno: Option<i32>,
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
            kind: "setup".into(),
            message: f.to_string(),
            stage: Some(f.stage.as_str().to_string()),
            syscall: Some(f.syscall.clone()),
            errno: Some(f.errno),
        });
    }
    if let Some(m) = &o.supervisor_error {
        return Some(VerdictError {
            kind: "supervisor".into(),
            message: m.clone(),
            stage: None,
            syscall: None,
            errno: None,
        });
    }
    o.exec_error.as_ref().map(|(p, e)| VerdictError {
        kind: "exec".into(),
        message: exec_message(p, *e),
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
}

/// The verdict of a finished run, complete: built once, nothing is added after.
pub fn build(spec: &RunSpec, closure: &Closure, mut o: Outcome, f: Finish<'_>) -> Verdict {
    o.account_oom(f.oom_killed);
    let not_found = o
        .exec_error
        .as_ref()
        .filter(|(_, e)| *e == libc::ENOENT)
        .map(|(p, _)| p.as_str());
    let hints = hints_for([&o.stderr, &o.stdout], not_found, closure, f.policy);
    let dead = failed_service(&o, &spec.services);
    let services: Vec<ServiceSummary> = spec
        .services
        .iter()
        .map(|s| ServiceSummary {
            name: s.name.clone(),
            port: s.ready_port,
            log: s.log.clone(),
            log_tail: (dead == Some(s.name.as_str()))
                .then(|| log_tail(&s.log))
                .flatten(),
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
        closure: ClosureSummary {
            roots: closure.roots.clone(),
            paths: closure.paths.len(),
            hash: closure.hash.clone(),
        },
        namespaces: crate::sandbox::ns::namespace_names()
            .into_iter()
            .map(Cow::Borrowed)
            .collect(),
        identity: spec.identity.clone(),
        layers,
        stdout: o.stdout,
        stderr: o.stderr,
        services,
        hints,
        workdir: f
            .workdir
            .or_else(|| spec.workdir_mode().map(crate::changes::WorkdirReport::live)),
    }
}

/// Hints for a finished run: its captured output, its exec error, its closure.
fn hints_for(
    streams: [&Option<Captured>; 2],
    exec_not_found: Option<&str>,
    closure: &Closure,
    policy: Option<&dyn EditPolicy>,
) -> Vec<Hint> {
    let mut output = String::new();
    for c in streams.into_iter().flatten() {
        output.push_str(&c.text);
        output.push('\n');
    }
    let paths: Vec<PathBuf> = closure.paths.iter().map(|e| e.path.clone()).collect();
    crate::hints::for_outcome(
        &Inputs {
            output: &output,
            exec_not_found,
            closure: &paths,
        },
        policy,
    )
}
