//! `nixcell up`, `exec`, `ps`, `down`: cells that live (see `crate::session`).

use super::{EXIT_SETUP, RunArgs};
use crate::session::{self, SessionError};
use crate::verdict::{ErrorKind, VerdictError};
use clap::Args;
use std::io::{BufRead, Write};

/// Set in the environment of the holder `up --detach` starts: once the cell is up,
/// the holder lets go of its standard descriptors.
const DETACHED_ENV: &str = "NIXCELL_UP_DETACHED";

/// Never run: a session cell's PID 1 runs the commands of `exec`, not this. It stands
/// for them after a project's enterShell prefix.
const PLACEHOLDER: &str = "nixcell-session";

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The cell's name (default: its id): 1 to 32 letters, digits, '-' or '_'.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Return once the cell is up; its holder stays in the background until `down`,
    /// the idle timeout or its death.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Print one JSON verdict on stdout; the command's output is captured into it.
    #[arg(long)]
    pub json: bool,
    /// Wall-clock limit of this exec; at expiry its process group is killed (exit
    /// 124). Default: the profile's.
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// The live cell (its name or id, see `nixcell ps`).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The command and its arguments.
    #[arg(value_name = "COMMAND", trailing_var_arg = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// The live cell to stop.
    #[arg(
        value_name = "NAME",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub name: Option<String>,
    /// Stop every live cell of this user.
    #[arg(long)]
    pub all: bool,
    /// Print what came back of each cell's workdir as JSON.
    #[arg(long)]
    pub json: bool,
}

fn kind(e: &SessionError) -> ErrorKind {
    match e {
        SessionError::Usage(_) | SessionError::NotFound(_) | SessionError::Taken(_) => {
            ErrorKind::Usage
        }
        SessionError::Holder { message, .. } if message.starts_with("refused") => {
            ErrorKind::Refused
        }
        SessionError::Dir(_) => ErrorKind::Environment,
        _ => ErrorKind::Supervisor,
    }
}

fn failure(json: bool, e: &SessionError, whole_verdict: bool) -> i32 {
    crate::verdict::report_refusal(
        json,
        VerdictError::new(kind(e), e.to_string(), None),
        whole_verdict,
    )
}

pub fn up(a: &UpArgs) -> i32 {
    let json = a.run.json;
    if !a.run.command.is_empty() {
        let e = SessionError::Usage(
            "up takes no command: run commands in the cell with 'nixcell exec NAME -- COMMAND'"
                .into(),
        );
        return failure(json, &e, false);
    }
    if let Some(n) = &a.name
        && let Err(e) = session::check_name(n)
    {
        return failure(json, &e, false);
    }
    if a.detach {
        return detach();
    }
    let mut req = match a.run.run_request() {
        Ok(r) => r,
        Err(e) => {
            let err = VerdictError::of_run_error(&crate::run::RunError::Plan(e));
            return crate::verdict::report_refusal(json, err, false);
        }
    };
    req.cell.argv = vec![PLACEHOLDER.to_string()];
    let parts = match crate::run::prepare(req) {
        Ok(p) => p.into_session(),
        Err(e) => {
            return crate::verdict::report_refusal(json, VerdictError::of_run_error(&e), false);
        }
    };
    let idle = parts.hardening.profile.session.idle;
    let detached = std::env::var_os(DETACHED_ENV).is_some();
    let ended = session::holder::hold(parts, a.name.clone(), idle, &mut |info| {
        if json {
            println!("{}", serde_json::to_string(info).unwrap_or_default());
        } else {
            println!("{} {}", info.name, info.id);
        }
        let _ = std::io::stdout().flush();
        if detached
            && let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
        {
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors from one we hold.
                unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
            }
        }
    });
    match ended {
        Ok(end) => {
            if let Some(w) = &end.workdir {
                eprintln!(
                    "nixcell: down ({:?}); workdir: +{} ~{} -{}{}",
                    end.reason,
                    w.counts.added,
                    w.counts.modified,
                    w.counts.deleted,
                    if w.refused.is_empty() {
                        String::new()
                    } else {
                        format!(", {} refused", w.refused.len())
                    }
                );
            }
            0
        }
        Err(e) => failure(json, &e, false),
    }
}

/// `up --detach`: the same command line without it, as a holder in a session of
/// its own; returns once it printed the cell's name (or failed).
fn detach() -> i32 {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args(args)
        .env(DETACHED_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nixcell: up --detach: cannot start the holder: {e}");
            return EXIT_SETUP;
        }
    };
    let mut line = String::new();
    let got = child
        .stdout
        .take()
        .map(|o| std::io::BufReader::new(o).read_line(&mut line));
    if matches!(got, Some(Ok(n)) if n > 0) {
        print!("{line}");
        return 0;
    }
    match child.wait() {
        Ok(st) => st.code().unwrap_or(EXIT_SETUP),
        Err(_) => EXIT_SETUP,
    }
}

pub fn exec(a: &ExecArgs) -> i32 {
    report_exec(
        a.json,
        session::exec(&a.name, a.command.clone(), a.timeout, a.json),
    )
}

/// Prints an exec's verdict (`--json`) or what went wrong; its exit status.
pub(super) fn report_exec(json: bool, r: Result<serde_json::Value, SessionError>) -> i32 {
    match r {
        Ok(v) => {
            if json {
                println!("{v}");
            } else if let Some(m) = v["error"]["message"].as_str() {
                eprintln!("nixcell: {m}");
            } else if v["timed_out"] == true {
                eprintln!("nixcell: timed out; the exec's processes were killed");
            } else if v["oom_killed"] == true {
                eprintln!("nixcell: out of memory; the cell's memory limit was reached");
            }
            v["exit_code"].as_i64().map_or(EXIT_SETUP, |c| c as i32)
        }
        Err(e) => failure(json, &e, true),
    }
}

pub fn ps(json: bool) -> i32 {
    let cells = match session::live() {
        Ok(c) => c,
        Err(e) => return failure(json, &e, false),
    };
    let statuses: Vec<session::CellStatus> = cells
        .iter()
        .filter_map(|c| session::status(&c.name).ok())
        .collect();
    if json {
        println!("{}", serde_json::to_string(&statuses).unwrap_or_default());
        return 0;
    }
    if statuses.is_empty() {
        println!("no live cells (start one with 'nixcell up')");
        return 0;
    }
    for s in &statuses {
        let i = &s.info;
        let services = if i.services.is_empty() {
            "-".to_string()
        } else {
            i.services
                .iter()
                .map(|n| {
                    let state = if s.services_running.contains(n) {
                        ""
                    } else {
                        " (ended)"
                    };
                    format!("{n}{state}")
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let mem = s
            .peak_memory_bytes
            .map_or("-".into(), crate::units::human_size);
        let place = i
            .project
            .as_ref()
            .or(i.workdir.as_ref())
            .map_or("-".into(), |p| p.display().to_string());
        println!(
            "{} {} {} closure {} services {} age {}s execs {}/{} mem {} cpu {}",
            i.name,
            i.id,
            place,
            &i.closure_hash[..12.min(i.closure_hash.len())],
            services,
            s.age_secs,
            s.execs_running,
            s.execs_total,
            mem,
            s.cpu_time_ms.map_or("-".into(), |c| format!("{:.0}ms", c)),
        );
    }
    0
}

pub fn down(a: &DownArgs) -> i32 {
    let names: Vec<String> = match (&a.name, a.all) {
        (Some(n), _) => vec![n.clone()],
        (None, _) => match session::live() {
            Ok(c) => c.into_iter().map(|c| c.name).collect(),
            Err(e) => return failure(a.json, &e, false),
        },
    };
    let mut out = Vec::new();
    let mut code = 0;
    for n in &names {
        match session::down(n) {
            Ok(w) => {
                if !a.json {
                    let c = &w.as_ref().map(|w| w["counts"].clone()).unwrap_or_default();
                    println!(
                        "{n}: down{}",
                        if c.is_null() {
                            String::new()
                        } else {
                            format!(
                                "; workdir: +{} ~{} -{}",
                                c["added"], c["modified"], c["deleted"]
                            )
                        }
                    );
                }
                out.push(serde_json::json!({"name": n, "workdir": w}));
            }
            Err(e) => {
                code = failure(false, &e, false);
            }
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Array(out));
    } else if names.is_empty() {
        println!("no live cells");
    }
    code
}
