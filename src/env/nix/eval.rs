//! `nix-instantiate --eval --strict --json`: evaluation to data, the same on Nix 2.8 and
//! current Nix.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Absolute paths, `:`-separated, that the caller allows every evaluation to read
/// besides the project and the package set: for a package set that reads host files
/// while it is evaluated (the offline test fixture reads dpkg's database). Read from
/// nixcell's own environment only, never from a project.
pub const EVAL_PATHS_VAR: &str = "NIXCELL_EVAL_PATHS";

/// The paths of [`EVAL_PATHS_VAR`] (relative entries ignored).
pub fn caller_allowed_paths() -> Vec<PathBuf> {
    std::env::var_os(EVAL_PATHS_VAR)
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| p.is_absolute())
                .collect()
        })
        .unwrap_or_default()
}

/// Nix arguments of a restricted evaluation: `restrict-eval` (only the search path is
/// readable, `builtins.getEnv` answers `""`, no URL is fetched), no import from a
/// derivation (nothing is built while evaluating), and `allowed` (plus the caller's
/// [`EVAL_PATHS_VAR`]) as named search-path entries, so that they are readable
/// without shadowing `<nixpkgs>`. Paths of `NIX_PATH` stay readable too (Nix allows
/// its search path).
pub fn restricted(allowed: &[PathBuf]) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--option",
        "restrict-eval",
        "true",
        "--option",
        "allow-import-from-derivation",
        "false",
        "--option",
        "allowed-uris",
        "",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    for (i, p) in allowed
        .iter()
        .cloned()
        .chain(caller_allowed_paths())
        .enumerate()
    {
        let mut entry = OsString::from(format!("nixcell-allowed-{i}="));
        entry.push(p.as_os_str());
        args.push("-I".into());
        args.push(entry);
    }
    args
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot run nix-instantiate: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("{0}")]
    Nix(String),
    #[error("nix-instantiate printed no JSON: {0}")]
    Json(#[source] serde_json::Error),
}

/// The message of a failed nix call: from its first `error:` line to the end, trimmed,
/// without the progress lines that precede it.
pub fn nix_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let start = text.find("error:").unwrap_or(0);
    let msg = text[start..].trim();
    if msg.is_empty() {
        "nix failed without a message".to_string()
    } else if msg.contains("cannot connect to socket at")
        || msg.contains("cannot open connection to remote store")
    {
        format!(
            "{msg}\n(the Nix daemon is not running, not reachable there, or ended the connection: start nix-daemon, or check NIX_REMOTE)"
        )
    } else if msg.lines().next() == Some("error: unexpected end-of-file") {
        // What nix says when the daemon's end of the connection closes in the middle.
        let at = std::env::var("NIX_REMOTE").map_or_else(
            |_| "the Nix daemon".to_string(),
            |r| format!("the Nix daemon (NIX_REMOTE={r})"),
        );
        format!(
            "{msg}\n({at} ended the connection in the middle, it stopped or was killed: nothing it was building was kept; start nix-daemon and try again)"
        )
    } else if msg.contains("forbidden in restricted mode") {
        format!(
            "{msg}\n(a declaration may only read files of its project directory and of the package set)"
        )
    } else {
        msg.to_string()
    }
}

/// Evaluates attribute `attr` of the file `expr` called with the string arguments
/// `args`, restricted to reading `allowed` ([`restricted`]).
pub fn eval_json(
    expr: &Path,
    attr: &str,
    args: &[(&str, &str)],
    allowed: &[PathBuf],
) -> Result<serde_json::Value, EvalError> {
    let mut cmd = super::command("nix-instantiate");
    cmd.args(restricted(allowed))
        .args(["--eval", "--strict", "--json"])
        .arg(expr)
        .args(["-A", attr]);
    for (k, v) in args {
        cmd.args(["--argstr", k, v]);
    }
    let out = cmd.output().map_err(EvalError::Spawn)?;
    if !out.status.success() {
        return Err(EvalError::Nix(nix_message(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(EvalError::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_starts_at_the_error() {
        let m = nix_message(b"building '/nix/store/x.drv'...\nerror: attribute 'foo' missing\n\n       at x.nix:1:1\n");
        assert!(m.starts_with("error: attribute 'foo' missing"), "{m}");
    }

    #[test]
    fn a_connection_ended_in_the_middle_names_the_daemon() {
        let m = nix_message(b"building '/nix/store/x.drv'...\nerror: unexpected end-of-file\n");
        assert!(
            m.contains("Nix daemon") && m.contains("ended the connection"),
            "{m}"
        );
    }
}
