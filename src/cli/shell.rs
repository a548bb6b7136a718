//! `nixcell shell`: an interactive shell in a new cell, on a pty of its own
//! (`run::pty`), with the same environment flags, layers and limits as `run`.

use super::RunArgs;
use crate::run::pty::{self, ShellError};
use crate::verdict::{ErrorKind, VerdictError};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct ShellArgs {
    #[command(flatten)]
    pub run: RunArgs,
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
