//! The git side of an edit: the declaration must be tracked and clean before, and each
//! edit becomes one commit of that file alone, made with plumbing on a temporary index
//! so that the user's index only changes once the commit exists.
//!
//! A repository is attacker-written content (a fresh clone is): its `.git/config`,
//! hooks and `.gitattributes` must not make nixcell run anything. So nixcell's git
//!
//! - runs only plumbing (`rev-parse`, `ls-files`, `hash-object --no-filters`,
//!   `read-tree`, `update-index --cacheinfo`, `write-tree`, `commit-tree`,
//!   `update-ref`): no porcelain, so no `pre-commit`/`commit-msg`/`post-commit` hooks,
//!   no editor, no pager, no automatic gc, no textconv, and git does not read the
//!   declaration through a filter (nixcell hands it the declaration's bytes on stdin);
//! - overrides, on the command line (which wins over every configuration file), each
//!   setting that names a program or a hook directory: `core.hooksPath` (the
//!   `reference-transaction` and `post-index-change` hooks plumbing would run),
//!   `core.fsmonitor`, signing, `core.sshCommand`, `core.askPass`, `credential.helper`,
//!   `core.editor`, `core.pager`, and forbids every transport protocol;
//! - empties the commands of every filter driver any configuration defines
//!   (`filter.<name>.clean`, `.smudge`, `.process`; `.required` false), through
//!   `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_<n>` so that any driver name is taken
//!   literally: writing the index re-reads racily clean files of the work tree, and
//!   that would run the clean filter `.gitattributes` and `.git/info/attributes` name;
//! - runs with an environment scrubbed of every `GIT_*` variable of the caller
//!   (`GIT_DIR`, `GIT_WORK_TREE`, `GIT_INDEX_FILE`, `GIT_CONFIG_PARAMETERS`, ...), then
//!   sets only what it needs. The caller's identity variables (`GIT_AUTHOR_NAME`,
//!   `GIT_AUTHOR_EMAIL`, `GIT_COMMITTER_NAME`, `GIT_COMMITTER_EMAIL`) are kept: they
//!   only name the author.
//!
//! The user's global and system configuration still apply (that is where `user.name`
//! and `user.email` come from, and they are the user's own); the overrides above win
//! over them too.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(#[source] std::io::Error),
    #[error(
        "git is not installed or not on PATH: edits are recorded as git commits; nothing was changed"
    )]
    Missing,
    #[error("{dir} is not in a git repository (edits are recorded as commits)")]
    NoRepo { dir: PathBuf },
    #[error("{file} is not tracked by git: commit it first")]
    Untracked { file: PathBuf },
    #[error("{file} has uncommitted changes: commit or stash them first")]
    Dirty { file: PathBuf },
    #[error("git {op} failed: {message}")]
    Failed { op: &'static str, message: String },
    #[error(
        "the repository is locked by another git process ({lock} exists); nothing was changed: retry when it has finished, or remove the file if no git process runs"
    )]
    Locked { lock: PathBuf },
}

/// Settings that would make git run a program, each overridden on the command line.
const OVERRIDES: &[&str] = &[
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.sshCommand=false",
    "core.askPass=",
    "core.editor=false",
    "core.pager=cat",
    "sequence.editor=false",
    "credential.helper=",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "gpg.program=false",
    "protocol.allow=never",
    "submodule.recurse=false",
    "diff.external=",
    "core.attributesFile=/dev/null",
];

/// Environment variables of the caller that reach git (identity only).
const KEPT_GIT_VARS: &[&str] = &[
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
];

/// A git command in `dir` with the overrides and the scrubbed environment.
fn command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("GIT_") && !KEPT_GIT_VARS.contains(&name.as_ref()) {
            cmd.env_remove(&k);
        }
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_EDITOR", "false")
        .env("GIT_SEQUENCE_EDITOR", "false")
        .env("GIT_PAGER", "cat")
        .env("GIT_ASKPASS", "")
        .env("SSH_ASKPASS", "")
        .env("GIT_ATTR_NOSYSTEM", "1")
        .env("GIT_PROTOCOL_FROM_USER", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("GIT_LITERAL_PATHSPECS", "1");
    cmd.arg("--no-pager").arg("-C").arg(dir);
    for o in OVERRIDES {
        cmd.args(["-c", o]);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> Result<Output, GitError> {
    let mut cmd = command(dir);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().map_err(spawn_error)
}

fn spawn_error(e: std::io::Error) -> GitError {
    if e.kind() == std::io::ErrorKind::NotFound {
        GitError::Missing
    } else {
        GitError::Spawn(e)
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<Output, GitError> {
    run(dir, args, &[])
}

/// The filter drivers some configuration of the repository at `dir` defines.
fn filter_drivers(dir: &Path) -> Result<Vec<String>, GitError> {
    let out = git(
        dir,
        &["config", "-z", "--name-only", "--get-regexp", r"^filter\."],
    )?;
    // Exit 1: no such key.
    if !out.status.success() && out.status.code() != Some(1) {
        return Err(failed("config", &out));
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter_map(|key| {
            let rest = key.strip_prefix("filter.")?;
            let (name, _var) = rest.rsplit_once('.')?;
            Some(name.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// `GIT_CONFIG_COUNT`/`KEY`/`VALUE` entries that empty the commands of `drivers`.
fn neutralized(drivers: &[String]) -> Vec<(String, String)> {
    let mut kv = Vec::new();
    for d in drivers {
        for (var, value) in [
            ("clean", ""),
            ("smudge", ""),
            ("process", ""),
            ("required", "false"),
        ] {
            kv.push((format!("filter.{d}.{var}"), value.to_string()));
        }
    }
    let mut env = vec![("GIT_CONFIG_COUNT".to_string(), kv.len().to_string())];
    for (i, (k, v)) in kv.into_iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), k));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), v));
    }
    env
}

/// stdout of a git call that must succeed, trimmed.
fn checked(op: &'static str, out: Output) -> Result<String, GitError> {
    if !out.status.success() {
        return Err(failed(op, &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn failed(op: &'static str, out: &Output) -> GitError {
    let text = String::from_utf8_lossy(&out.stderr);
    // git's first line says what failed (and names the file); the rest is advice.
    GitError::Failed {
        op,
        message: text.trim().lines().next().unwrap_or("").to_string(),
    }
}

/// Fails when another git process holds the user's index (`index.lock`): HEAD must
/// not move when the index cannot follow it.
fn check_unlocked(at: &Located) -> Result<(), GitError> {
    let lock = checked(
        "rev-parse",
        at.git(&[
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            "index.lock",
        ])?,
    )?;
    let lock = PathBuf::from(lock);
    match std::fs::symlink_metadata(&lock) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(GitError::Locked { lock }),
    }
}

/// Where the declaration is in its repository, and how to run git there.
struct Located {
    /// The work tree's top directory.
    top: PathBuf,
    /// The file's path relative to `top`, with `/` separators.
    path: String,
    /// Configuration entries (as environment) that neutralize the filter drivers.
    config_env: Vec<(String, String)>,
}

impl Located {
    fn run(&self, args: &[&str], env: &[(&str, &OsStr)]) -> Result<Output, GitError> {
        self.command(args, env).output().map_err(spawn_error)
    }

    fn command(&self, args: &[&str], env: &[(&str, &OsStr)]) -> Command {
        let mut cmd = command(&self.top);
        cmd.envs(self.config_env.iter().map(|(k, v)| (k, v)));
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn git(&self, args: &[&str]) -> Result<Output, GitError> {
        self.run(args, &[])
    }
}

fn locate(dir: &Path, file: &Path) -> Result<Located, GitError> {
    let no_repo = || GitError::NoRepo {
        dir: dir.to_path_buf(),
    };
    let out = git(dir, &["rev-parse", "--is-inside-work-tree"])?;
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != "true" {
        return Err(no_repo());
    }
    let top = checked("rev-parse", git(dir, &["rev-parse", "--show-toplevel"])?)?;
    // The work tree must contain the declaration: a `core.worktree` elsewhere is
    // not this project's repository.
    let top = std::fs::canonicalize(&top).map_err(|_| no_repo())?;
    let file_real = std::fs::canonicalize(file.parent().unwrap_or(dir))
        .map(|d| d.join(file.file_name().unwrap_or_default()))
        .map_err(|_| no_repo())?;
    let rel = file_real.strip_prefix(&top).map_err(|_| no_repo())?;
    let path = rel
        .to_str()
        .filter(|p| !p.is_empty() && !p.starts_with('-'))
        .ok_or_else(no_repo)?
        .to_string();
    let config_env = neutralized(&filter_drivers(&top)?);
    Ok(Located {
        top,
        path,
        config_env,
    })
}

/// The `(mode, blob)` of the file in the index, if tracked (blob empty: unmerged).
fn index_entry(at: &Located) -> Result<Option<(String, String)>, GitError> {
    let out = checked(
        "ls-files",
        at.git(&["ls-files", "-z", "--stage", "--full-name", "--", &at.path])?,
    )?;
    for line in out.split('\0') {
        // `<mode> <blob> <stage>\t<path>`
        let Some((meta, p)) = line.split_once('\t') else {
            continue;
        };
        let fields: Vec<&str> = meta.split(' ').collect();
        if p == at.path && fields.len() == 3 {
            if fields[2] != "0" {
                return Ok(Some((fields[0].into(), String::new())));
            }
            return Ok(Some((fields[0].into(), fields[1].into())));
        }
    }
    Ok(None)
}

/// The blob id of `bytes`, as stored (no filter, no conversion); written to the object
/// database when `write`.
fn hash_bytes(at: &Located, bytes: &[u8], write: bool) -> Result<String, GitError> {
    let mut args = vec!["hash-object", "--no-filters", "--stdin"];
    if write {
        args.push("-w");
    }
    let mut cmd = at.command(&args, &[]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(bytes).map_err(GitError::Spawn)?;
    }
    checked(
        "hash-object",
        child.wait_with_output().map_err(GitError::Spawn)?,
    )
}

/// The blob of the file in HEAD, if any.
fn head_blob(at: &Located) -> Result<Option<String>, GitError> {
    let spec = format!("HEAD:{}", at.path);
    let out = at.git(&["rev-parse", "--verify", "--quiet", &spec])?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// HEAD's commit id and its first parent's (None for a root commit).
pub fn head(dir: &Path, file: &Path) -> Result<(String, Option<String>), GitError> {
    let at = locate(dir, file)?;
    let head = checked("rev-parse", at.git(&["rev-parse", "--verify", "HEAD"])?)?;
    let parent = at.git(&["rev-parse", "--verify", "--quiet", "HEAD~1"])?;
    let parent = parent
        .status
        .success()
        .then(|| String::from_utf8_lossy(&parent.stdout).trim().to_string());
    Ok((head, parent))
}

/// `MODE,BLOB,PATH` for `update-index --cacheinfo`: `bytes` written as a blob, the
/// tracked file's mode kept (executable or not).
fn cache_info(at: &Located, file: &Path, bytes: &[u8]) -> Result<String, GitError> {
    let (mode, _) = index_entry(at)?.ok_or_else(|| GitError::Untracked {
        file: file.to_path_buf(),
    })?;
    let mode = if mode == "100755" {
        mode
    } else {
        "100644".into()
    };
    let blob = hash_bytes(at, bytes, true)?;
    Ok(format!("{mode},{blob},{}", at.path))
}

/// Records `bytes` as the content of the tracked `file` in the index (its mode kept).
pub fn stage_bytes(dir: &Path, file: &Path, bytes: &[u8]) -> Result<(), GitError> {
    let at = locate(dir, file)?;
    let info = cache_info(&at, file, bytes)?;
    checked(
        "update-index",
        at.git(&["update-index", "--cacheinfo", &info])?,
    )?;
    Ok(())
}

/// Checks that `file` (in `dir`) is tracked and has no uncommitted changes: its bytes,
/// its index entry and HEAD hold the same blob.
pub fn check_clean(dir: &Path, file: &Path) -> Result<(), GitError> {
    let at = locate(dir, file)?;
    let (_, staged) = index_entry(&at)?.ok_or_else(|| GitError::Untracked {
        file: file.to_path_buf(),
    })?;
    let bytes = crate::project::read_nofollow(file).map_err(GitError::Spawn)?;
    let worktree = hash_bytes(&at, &bytes, false)?;
    let head = head_blob(&at)?;
    if staged.is_empty() || head.as_deref() != Some(staged.as_str()) || worktree != staged {
        return Err(GitError::Dirty {
            file: file.to_path_buf(),
        });
    }
    Ok(())
}

/// Commits `bytes` (the new content of `file`, already written) as that file alone on
/// top of HEAD; returns the new commit's id.
pub fn commit_file(
    dir: &Path,
    file: &Path,
    bytes: &[u8],
    message: &str,
) -> Result<String, GitError> {
    let at = locate(dir, file)?;
    let head = checked("rev-parse", at.git(&["rev-parse", "--verify", "HEAD"])?)?;
    let info = cache_info(&at, file, bytes)?;
    let scratch = tempfile::tempdir().map_err(GitError::Spawn)?;
    let index = scratch.path().join("index");
    let tmp_index = [("GIT_INDEX_FILE", index.as_os_str())];
    checked("read-tree", at.run(&["read-tree", &head], &tmp_index)?)?;
    checked(
        "update-index",
        at.run(&["update-index", "--add", "--cacheinfo", &info], &tmp_index)?,
    )?;
    let tree = checked("write-tree", at.run(&["write-tree"], &tmp_index)?)?;
    let mut identity: Vec<(&str, &OsStr)> = Vec::new();
    // Without a configured identity git refuses to commit; nixcell signs as itself then.
    let configured = at.git(&["config", "user.email"])?.status.success()
        || std::env::var_os("GIT_AUTHOR_EMAIL").is_some();
    if !configured {
        identity.extend([
            ("GIT_AUTHOR_NAME", OsStr::new("nixcell")),
            ("GIT_AUTHOR_EMAIL", OsStr::new("nixcell@localhost")),
            ("GIT_COMMITTER_NAME", OsStr::new("nixcell")),
            ("GIT_COMMITTER_EMAIL", OsStr::new("nixcell@localhost")),
        ]);
    }
    let commit = checked(
        "commit-tree",
        at.run(
            &[
                "commit-tree",
                "--no-gpg-sign",
                &tree,
                "-p",
                &head,
                "-m",
                message,
            ],
            &identity,
        )?,
    )?;
    check_unlocked(&at)?;
    // Compare-and-swap: fails if HEAD moved meanwhile.
    checked(
        "update-ref",
        at.git(&["update-ref", "-m", message, "HEAD", &commit, &head])?,
    )?;
    // The user's index now records the committed blob for this file alone.
    let indexed = at
        .git(&["update-index", "--cacheinfo", &info])
        .and_then(|out| checked("update-index", out));
    if let Err(e) = indexed {
        // The index could not follow (locked since the check): HEAD goes back, by
        // compare-and-swap again, and the caller puts the file back. Should HEAD not
        // go back, the edit stays committed (HEAD and the file agree).
        let undo = at.git(&[
            "update-ref",
            "-m",
            "nixcell edit undone",
            "HEAD",
            &head,
            &commit,
        ]);
        if undo.is_ok_and(|o| o.status.success()) {
            return Err(e);
        }
    }
    Ok(commit)
}
