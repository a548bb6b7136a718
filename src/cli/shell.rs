//! `nixcell shell`: an interactive shell in a new cell, on a pty of its own
//! (`run::pty`), with the same environment flags, layers and limits as `run`; with
//! `--session NAME`, an exec of the live session cell NAME on a pty nixcell allocates.

use super::RunArgs;
use crate::run::pty::{self, ShellError};
use crate::verdict::{ErrorKind, VerdictError};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct ShellArgs {
    /// The live session cell (`nixcell up`) to open the shell in, as an exec of it:
    /// its services, /tmp and /work, its layers and limits; only --json, --timeout and
    /// COMMAND apply.
    #[arg(long, value_name = "NAME", conflicts_with_all = SESSION_CONFLICTS)]
    pub session: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The flags of `run` that make a new cell: a session's cell is made already.
const SESSION_CONFLICTS: [&str; 23] = [
    "env_paths",
    "with",
    "flakes",
    "impure",
    "project",
    "workdir",
    "ro_binds",
    "binds",
    "setenv",
    "uid",
    "gid",
    "host_uid",
    "host_gid",
    "hostname",
    "tmp_size",
    "profile",
    "memory",
    "cpus",
    "pids",
    "allow_ports",
    "allow_hosts",
    "max_output",
    "services",
];

/// The shell as an exec of the live session cell `name`: the pty's master relayed to
/// the caller's terminal until the exec ended and what it wrote was passed on.
fn in_session(name: &str, a: &RunArgs, mut terminal: pty::CallerTerminal) -> i32 {
    let fail = |e: String| {
        let err = VerdictError::new(ErrorKind::Supervisor, format!("shell: {e}"), None);
        crate::verdict::report_refusal(a.json, err, true)
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    // Resizes are caught from before the size is read for the pty, so none is lost.
    let winch = {
        let _in_rt = rt.enter();
        match pty::window_changes() {
            Ok(w) => w,
            Err(e) => return fail(format!("cannot watch window size changes: {e}")),
        }
    };
    let (master, slave) = match pty::open_pty(terminal.size().as_ref()) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let conn = match crate::session::exec_on_terminal(name, a.command.clone(), a.timeout, slave) {
        Ok(c) => c,
        Err(e) => return super::session::report_exec(a.json, Err(e)),
    };
    if let Err(e) = terminal.enter_raw() {
        return fail(e.to_string());
    }
    let owned = name.to_string();
    let verdict = rt.block_on(async {
        let mut ended = tokio::task::spawn_blocking(move || {
            crate::session::terminal_verdict(&owned, &conn)
        });
        let relay = pty::relay(master, &terminal, winch);
        tokio::pin!(relay);
        let v = tokio::select! {
            v = &mut ended => {
                // What the exec wrote last is still passed on; a process it left
                // behind holding the pty is not waited for.
                let _ = tokio::time::timeout(std::time::Duration::from_millis(500), &mut relay).await;
                v
            }
            _ = &mut relay => ended.await,
        };
        v.unwrap_or_else(|e| {
            Err(crate::session::SessionError::Start(format!(
                "waiting for the exec: {e}"
            )))
        })
    });
    drop(terminal);
    super::session::report_exec(a.json, verdict)
}

/// Runs the shell; returns the process exit status: the shell's own, or 125 when
/// nothing ran. With `--json` the verdict is printed on stdout once the terminal is
/// back as it was (the session itself runs on the terminal of stdin).
pub fn main(args: &ShellArgs) -> i32 {
    let a = &args.run;
    let terminal = match pty::CallerTerminal::stdin() {
        Ok(t) => t,
        Err(e) => {
            let err = VerdictError::new(ErrorKind::Usage, format!("shell: {e}"), None);
            return crate::verdict::report_refusal(a.json, err, true);
        }
    };
    if let Some(name) = &args.session {
        return in_session(name, a, terminal);
    }
    let mut req = match a.run_request() {
        Ok(r) => r,
        Err(e) => {
            let err = VerdictError::of_run_error(&crate::run::RunError::Plan(e));
            return crate::verdict::report_refusal(a.json, err, true);
        }
    };
    // No command: the closure's shell, chosen once the environment is known.
    let default = req.cell.argv.is_empty();
    if default {
        req.cell.argv = vec!["sh".to_string()];
    }
    req.capture = false;
    let res = crate::run::prepare(req)
        .map_err(ShellError::from)
        .and_then(|p| pty::shell(p, terminal, default));
    let v = match res {
        Ok(v) => v,
        Err(ShellError::Run(e)) => {
            return crate::verdict::report_refusal(a.json, VerdictError::of_run_error(&e), true);
        }
        Err(ShellError::Terminal(e)) => {
            let err = VerdictError::new(ErrorKind::Supervisor, format!("shell: {e}"), None);
            return crate::verdict::report_refusal(a.json, err, true);
        }
    };
    super::report(a, &v)
}

#[cfg(test)]
mod tests {
    /// Every flag of `run` but --json, --timeout and COMMAND makes a new cell, so it
    /// cannot go with --session (a flag added to `run` later must be listed too).
    #[test]
    fn session_conflicts_with_every_new_cell_flag() {
        let cmd = super::super::command();
        let shell = cmd.find_subcommand("shell").unwrap();
        let unlisted: Vec<&str> = shell
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .filter(|id| !["session", "json", "timeout", "command", "help"].contains(id))
            .filter(|id| !super::SESSION_CONFLICTS.contains(id))
            .collect();
        assert!(
            unlisted.is_empty(),
            "not refused with --session: {unlisted:?}"
        );
    }
}
