//! The git side of an edit: the declaration must be tracked and clean before, and each
//! edit becomes one commit of that file alone (`git commit --only`), which leaves the
//! index untouched when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("{dir} is not in a git repository (edits are recorded as commits)")]
    NoRepo { dir: PathBuf },
    #[error("{file} is not tracked by git: commit it first")]
    Untracked { file: PathBuf },
    #[error("{file} has uncommitted changes: commit or stash them first")]
    Dirty { file: PathBuf },
    #[error("git {op} failed: {message}")]
    Failed { op: &'static str, message: String },
}

fn git(dir: &Path, args: &[&str]) -> Result<Output, GitError> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(GitError::Spawn)
}

fn failed(op: &'static str, out: &Output) -> GitError {
    let text = String::from_utf8_lossy(&out.stderr);
    GitError::Failed {
        op,
        message: text.trim().lines().last().unwrap_or("").to_string(),
    }
}

/// Checks that `file` (in `dir`) is tracked and has no uncommitted changes.
pub fn check_clean(dir: &Path, file: &Path) -> Result<(), GitError> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = git(dir, &["rev-parse", "--is-inside-work-tree"])?;
    if !out.status.success() {
        return Err(GitError::NoRepo {
            dir: dir.to_path_buf(),
        });
    }
    let out = git(dir, &["ls-files", "--error-unmatch", "--", &name])?;
    if !out.status.success() {
        return Err(GitError::Untracked {
            file: file.to_path_buf(),
        });
    }
    let out = git(dir, &["status", "--porcelain", "--", &name])?;
    if !out.status.success() {
        return Err(failed("status", &out));
    }
    if !out.stdout.is_empty() {
        return Err(GitError::Dirty {
            file: file.to_path_buf(),
        });
    }
    Ok(())
}

/// Commits the current content of `file` alone; returns the new commit's id.
pub fn commit_file(dir: &Path, file: &Path, message: &str) -> Result<String, GitError> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut args: Vec<&str> = Vec::new();
    // Without a configured identity git refuses to commit; nixcell signs as itself then.
    let has_identity = git(dir, &["config", "user.email"])?.status.success();
    if !has_identity {
        args.extend([
            "-c",
            "user.name=nixcell",
            "-c",
            "user.email=nixcell@localhost",
        ]);
    }
    args.extend(["commit", "--quiet", "--only", "-m", message, "--", &name]);
    let out = git(dir, &args)?;
    if !out.status.success() {
        return Err(failed("commit", &out));
    }
    let out = git(dir, &["rev-parse", "HEAD"])?;
    if !out.status.success() {
        return Err(failed("rev-parse", &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
