//! `nix-instantiate --eval --strict --json`: evaluation to data, the same on Nix 2.8 and
//! current Nix.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot run nix-instantiate: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("{0}")]
    Nix(String),
    #[error("nix-instantiate printed no JSON: {0}")]
    Json(#[source] serde_json::Error),
}

/// The `NIX_CONFIG` nixcell adds to each nix call: no binary cache is assumed to be
/// reachable unless the caller configured one.
pub fn nix_config() -> OsString {
    let mut cfg = OsString::new();
    if let Some(existing) = std::env::var_os("NIX_CONFIG") {
        cfg.push(existing);
        cfg.push("\n");
    } else {
        cfg.push("substituters =\n");
    }
    cfg
}

/// The message of a failed nix call: from its first `error:` line to the end, trimmed,
/// without the progress lines that precede it.
pub fn nix_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let start = text.find("error:").unwrap_or(0);
    let msg = text[start..].trim();
    if msg.is_empty() {
        "nix failed without a message".to_string()
    } else {
        msg.to_string()
    }
}

/// Evaluates attribute `attr` of the file `expr` called with the string arguments `args`.
pub fn eval_json(
    expr: &Path,
    attr: &str,
    args: &[(&str, &str)],
) -> Result<serde_json::Value, EvalError> {
    let mut cmd = Command::new("nix-instantiate");
    cmd.env("NIX_CONFIG", nix_config())
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
}
