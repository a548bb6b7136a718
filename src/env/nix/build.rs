//! `nix-build`: realises an expression, shows nix's progress on stderr while it works,
//! and registers the result as a GC root (`-o LINK`) so it survives garbage collection.

use crate::nix::eval::{nix_message, restricted};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot run {0}: {1}")]
    Spawn(&'static str, #[source] std::io::Error),
    #[error("{0}")]
    Nix(String),
    #[error("{tool} reported success but {link} is not a store path")]
    NoResult { tool: &'static str, link: PathBuf },
}

/// How a build shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// nix's own lines go to our stderr as they come.
    Stderr,
    /// Kept silent; only the error is reported.
    Quiet,
}

fn run_streaming(
    mut cmd: Command,
    tool: &'static str,
    link: &Path,
    progress: Progress,
) -> Result<PathBuf, BuildError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| BuildError::Spawn(tool, e))?;
    let mut captured = Vec::new();
    if let Some(err) = child.stderr.take() {
        let mut reader = BufReader::new(err);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            if progress == Progress::Stderr {
                let _ = std::io::stderr().write_all(&line);
            }
            captured.extend_from_slice(&line);
            line.clear();
        }
    }
    let status = child.wait().map_err(|e| BuildError::Spawn(tool, e))?;
    if !status.success() {
        return Err(BuildError::Nix(nix_message(&captured)));
    }
    // The result is the link's own target, which must be a store path.
    let no_result = || BuildError::NoResult {
        tool,
        link: link.to_path_buf(),
    };
    let target = std::fs::read_link(link).map_err(|_| no_result())?;
    if !crate::nix::store::is_store_path(&target, &crate::nix::closure::store_dir()) {
        return Err(no_result());
    }
    Ok(target)
}

/// Builds attribute `attr` (empty: the whole value) of the file `expr` with string
/// arguments, evaluated restricted to reading `allowed` (see
/// [`crate::nix::eval::restricted`]); `link` becomes an indirect GC root pointing at
/// the result, which is returned.
pub fn build_file(
    expr: &Path,
    attr: &str,
    args: &[(&str, &str)],
    allowed: &[PathBuf],
    link: &Path,
    progress: Progress,
) -> Result<PathBuf, BuildError> {
    let mut cmd = super::command("nix-build");
    cmd.args(restricted(allowed)).arg(expr);
    if !attr.is_empty() {
        cmd.args(["-A", attr]);
    }
    for (k, v) in args {
        cmd.args(["--argstr", k, v]);
    }
    cmd.arg("-o").arg(link);
    run_streaming(cmd, "nix-build", link, progress)
}

/// Builds a flake output (`.#devShells.x86_64-linux.default`, `path:...#pkg`) with the
/// `nix` command; `link` becomes a GC root of the result.
pub fn build_flake(
    installable: &str,
    impure: bool,
    link: &Path,
    progress: Progress,
) -> Result<PathBuf, BuildError> {
    let mut cmd = super::command("nix");
    cmd.args([
        "--extra-experimental-features",
        "nix-command flakes",
        "build",
    ]);
    if impure {
        cmd.arg("--impure");
    }
    cmd.arg("--out-link").arg(link).arg(installable);
    run_streaming(cmd, "nix build", link, progress)
}

/// The NAR sizes of store paths (`nix-store --query --size`, stable across versions).
pub fn path_sizes(paths: &[PathBuf]) -> Result<Vec<u64>, BuildError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let out = super::command("nix-store")
        .args(["--query", "--size"])
        .args(paths)
        .output()
        .map_err(|e| BuildError::Spawn("nix-store", e))?;
    if !out.status.success() {
        return Err(BuildError::Nix(nix_message(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect())
}
