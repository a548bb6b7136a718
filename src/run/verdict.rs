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
    /// The package set of the environment: hints name only packages it has.
    pub package_set: Option<&'a dyn PackageSetQuery>,
    /// The run's limits and what its profile allows (the rest of [`End`] is filled
    /// from the outcome).
    pub end: End,
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
        error: outcome_error(&o),
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
        services: spec
            .services
            .iter()
            .map(|s| ServiceSummary {
                name: s.name.clone(),
                port: s.ready_port,
                log: s.log.clone(),
            })
            .collect(),
        hints,
        workdir: f
            .workdir
            .or_else(|| spec.workdir_mode().map(crate::changes::WorkdirReport::live)),
    }
}

/// The services of the run that ended while the command ran, or failed to start, each
/// with the end of its log.
fn died_services(spec: &RunSpec, o: &Outcome) -> Vec<DiedService> {
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
                log_tail: log_tail(&s.log),
            })
        })
        .collect();
    if let Some(f) = &o.setup_error
        && matches!(
            f.stage,
            crate::sandbox::Stage::ServiceStart | crate::sandbox::Stage::ServiceReady
        )
        && let Some(s) = spec
            .services
            .iter()
            .find(|s| f.detail.contains(&format!("'{}'", s.name)))
    {
        out.push(DiedService {
            name: s.name.clone(),
            how: format!("did not start ({})", f.detail),
            log_tail: log_tail(&s.log),
        });
    }
    out
}

/// The last lines of a service's log (a file nixcell created; what is in it is the
/// cell's): at most 10 lines of its last 2 KiB, control characters replaced.
fn log_tail(path: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    const TAIL: u64 = 2048;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return "(no log)".into();
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return "(no log)".into();
    }
    let len = f.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
    let mut buf = Vec::new();
    let _ = f.take(TAIL).read_to_end(&mut buf);
    let text: String = String::from_utf8_lossy(&buf)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect();
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let tail = lines[lines.len().saturating_sub(10)..].join("\n");
    if tail.is_empty() {
        "(empty log)".into()
    } else {
        tail
    }
}
