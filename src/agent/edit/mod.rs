//! Typed, whitelisted edits of a project's `devenv.nix`.
//!
//! An edit is checked (name grammar, then the `[policy]` whitelist), applied to the
//! syntax tree ([`cst`]), proven by building the edited declaration, and then either
//! committed with git (one commit per edit) or recorded as a proposal for a human
//! (`--propose`, or `approval = "human"`). Edits of one project serialize on a lock file;
//! any failure leaves the declaration and the repository as they were.
//! `allow-domain` ([`network`]) edits `nixcell.toml` instead, the same way (no build:
//! the closure does not change).

pub mod cst;
#[cfg(test)]
mod devenv_types;
pub mod git;
pub mod network;
pub mod policy;

use crate::nix::build::{self, Progress};
use crate::nix::closure;
use crate::project::{Approval, Built, Project, ProjectError};
use cst::{CstError, Doc, Item};
use policy::{PolicyError, Subject};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Cst(#[from] CstError),
    #[error(transparent)]
    Git(#[from] git::GitError),
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error("the edited declaration does not build: {0}")]
    Proof(String),
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{file} is not valid UTF-8")]
    Encoding { file: PathBuf },
    #[error("{0}")]
    Refused(String),
    #[error("no proposal {0}")]
    NoProposal(String),
    #[error("proposal {id} is already {status}")]
    Settled { id: String, status: String },
    #[error("the edit was applied but its commit failed, so it was undone: {0}")]
    Commit(#[source] git::GitError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EditError + '_ {
    move |e| EditError::Io(path.to_path_buf(), e)
}

/// The edits nixcell offers (also the CLI's `nixcell edit OP` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    AddPackage,
    RemovePackage,
    AddPythonLibrary,
    RemovePythonLibrary,
    EnableService,
    DisableService,
    AllowDomain,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::AddPackage,
        Op::RemovePackage,
        Op::AddPythonLibrary,
        Op::RemovePythonLibrary,
        Op::EnableService,
        Op::DisableService,
        Op::AllowDomain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::AddPackage => "add-package",
            Op::RemovePackage => "remove-package",
            Op::AddPythonLibrary => "add-python-library",
            Op::RemovePythonLibrary => "remove-python-library",
            Op::EnableService => "enable-service",
            Op::DisableService => "disable-service",
            Op::AllowDomain => "allow-domain",
        }
    }

    pub fn subject(self) -> Subject {
        match self {
            Op::AddPackage | Op::RemovePackage => Subject::Package,
            Op::AddPythonLibrary | Op::RemovePythonLibrary => Subject::PythonLibrary,
            Op::EnableService | Op::DisableService => Subject::Service,
            Op::AllowDomain => Subject::Domain,
        }
    }
}

/// One requested edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditRequest {
    pub op: Op,
    pub name: String,
    /// Record a proposal instead of committing, whatever the policy says.
    #[serde(default)]
    pub propose: bool,
}

/// What an edit changes in the closure of the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosureDiff {
    pub added: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub added_bytes: u64,
    pub removed_bytes: u64,
    /// added_bytes - removed_bytes (NAR sizes).
    pub size_delta_bytes: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Committed,
    Proposed,
}

/// The result of an edit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EditOutcome {
    pub operation: Op,
    pub name: String,
    pub status: Status,
    /// The commit, when committed.
    pub commit: Option<String>,
    /// The proposal id, when proposed.
    pub proposal: Option<String>,
    /// Unified diff of devenv.nix.
    pub diff: String,
    pub closure_diff: ClosureDiff,
    /// The edited environment's store path (built, with a GC root).
    pub env: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProposalStatus {
    Pending,
    Approved,
    Rejected,
}

/// A recorded edit waiting for a human: `.nixcell/proposals/ID.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    pub id: String,
    pub operation: Op,
    pub name: String,
    pub status: ProposalStatus,
    pub created_unix: u64,
    /// sha256 of devenv.nix the diff applies to (approval re-applies the operation to the
    /// declaration as it is then, and proves it again).
    pub base_sha256: String,
    pub diff: String,
    pub closure_diff: ClosureDiff,
    pub commit: Option<String>,
}

/// Holds the project's edit lock (flock on `.nixcell/lock`) while alive.
pub struct EditLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Waits for the project's edit lock.
pub fn lock(project: &Project) -> Result<EditLock, EditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let state = project.state_dir()?;
    let path = state.join("lock");
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
    };
    // A link (or anything else) where the lock file belongs is removed, not followed.
    let file = match open() {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
        _ => {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
            let f = open().map_err(io(&path))?;
            if !f.metadata().is_ok_and(|m| m.is_file()) {
                return Err(EditError::Io(
                    path.clone(),
                    std::io::Error::other("not a regular file"),
                ));
            }
            f
        }
    };
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| EditError::Io(path.clone(), e.into()))?;
    Ok(EditLock { _lock: lock })
}

/// Applies `op NAME` to the declaration's text (no I/O).
pub fn apply_to_text(file: &str, text: &str, op: Op, name: &str) -> Result<String, EditError> {
    let mut doc = Doc::parse(file, text)?;
    match op {
        Op::AddPackage => doc.add_to_list(&["packages"], &Item::Package(name.into()))?,
        Op::RemovePackage => doc.remove_from_list(&["packages"], &Item::Package(name.into()))?,
        Op::AddPythonLibrary | Op::RemovePythonLibrary => {
            python_library(&mut doc, file, op == Op::AddPythonLibrary, name)?
        }
        Op::EnableService => doc.set_value(&["services", name, "enable"], "true")?,
        Op::DisableService => {
            if doc.value_text(&["services", name, "enable"])?.is_none() {
                return Err(CstError::NoChange {
                    file: file.into(),
                    message: format!("service {name} is not enabled"),
                }
                .into());
            }
            doc.set_value(&["services", name, "enable"], "false")?
        }
        Op::AllowDomain => {
            return Err(EditError::Refused(format!(
                "allow-domain edits {}, not {file}",
                crate::project::CONFIG
            )));
        }
    }
    Ok(doc.text().to_string())
}

const PYTHON_PACKAGE: [&str; 3] = ["languages", "python", "package"];
const PYTHON_LIBRARIES: [&str; 3] = ["languages", "python", "libraries"];
const PYTHON_VERSION: [&str; 3] = ["languages", "python", "version"];

/// Adds (or removes) the Python library `name` the way devenv declares one:
/// `languages.python.package = pkgs.python3.withPackages (ps: [ ps.NAME ])`. Names of
/// the old nixcell form (`languages.python.libraries = [ "NAME" ]`, which devenv reads
/// as native library paths) move into that list, so nixcell never writes the old form.
fn python_library(doc: &mut Doc, file: &str, add: bool, name: &str) -> Result<(), EditError> {
    let legacy = doc.string_items(&PYTHON_LIBRARIES)?;
    let mut names: Vec<String> = legacy.clone();
    let member = |param: &str, n: &str| Item::Member(param.to_string(), n.to_string());
    let param = match doc.with_packages_param(&PYTHON_PACKAGE) {
        Ok(p) => p,
        // An interpreter of the package set (`pkgs.python3`, `pkgs.python311`) gets
        // the libraries: it becomes the base of a withPackages.
        Err(e) => {
            let v = doc.value_text(&PYTHON_PACKAGE)?.unwrap_or_default();
            if !is_interpreter_attr(&v) {
                return Err(e.into());
            }
            doc.set_value(&PYTHON_PACKAGE, &format!("{v}.withPackages (ps: [ ])"))?;
            Some("ps".to_string())
        }
    };
    match param {
        Some(param) => {
            if !add {
                match doc.remove_from_list(&PYTHON_PACKAGE, &member(&param, name)) {
                    Err(CstError::NoChange { .. }) if legacy.iter().any(|l| l == name) => {}
                    r => r?,
                }
            }
            names.retain(|n| add || n != name);
            if add {
                names.push(name.to_string());
            }
            let mut changed = false;
            for n in &names {
                match doc.add_to_list(&PYTHON_PACKAGE, &member(&param, n)) {
                    Ok(()) => changed = true,
                    Err(CstError::NoChange { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if add && !changed && legacy.is_empty() {
                return Err(CstError::NoChange {
                    file: file.into(),
                    message: format!("{param}.{name} is already in `languages.python.package`"),
                }
                .into());
            }
        }
        None => {
            if add {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            } else if !names.iter().any(|n| n == name) {
                return Err(CstError::NoChange {
                    file: file.into(),
                    message: format!("the Python library {name} is not declared"),
                }
                .into());
            } else {
                names.retain(|n| n != name);
            }
            let base = python_base(doc, file)?;
            let items: Vec<String> = names.iter().map(|n| format!("ps.{n}")).collect();
            let value = if items.is_empty() {
                format!("{base}.withPackages (ps: [ ])")
            } else {
                format!("{base}.withPackages (ps: [ {} ])", items.join(" "))
            };
            doc.set_value(&PYTHON_PACKAGE, &value)?;
        }
    }
    for l in &legacy {
        doc.remove_from_list(&PYTHON_LIBRARIES, &Item::Str(l.clone()))?;
    }
    if !legacy.is_empty()
        && doc
            .value_text(&PYTHON_LIBRARIES)?
            .is_some_and(|v| is_empty_list(&v))
    {
        doc.remove_binding(&PYTHON_LIBRARIES)?;
    }
    if add {
        match doc.set_value(&["languages", "python", "enable"], "true") {
            Ok(()) | Err(CstError::NoChange { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `pkgs.python3`, `pkgs.python311`, ...
fn is_interpreter_attr(v: &str) -> bool {
    v.strip_prefix("pkgs.python")
        .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
}

fn is_empty_list(value: &str) -> bool {
    value
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim()
        .is_empty()
        && value.starts_with('[')
}

/// The interpreter a new `withPackages` starts from: `pkgs.python3`, or the one
/// `languages.python.version` names (the version binding is replaced by it: devenv
/// takes a version from an input of its own, and the two would conflict).
fn python_base(doc: &mut Doc, file: &str) -> Result<String, EditError> {
    let Some(v) = doc.value_text(&PYTHON_VERSION)? else {
        return Ok("pkgs.python3".into());
    };
    let version = v.trim().trim_matches('"');
    let digits: String = version.split('.').take(2).collect::<Vec<_>>().join("");
    if !v.trim().starts_with('"')
        || digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(EditError::Refused(format!(
            "{file}: languages.python.version is {v}; declare the library in languages.python.package by hand"
        )));
    }
    doc.remove_binding(&PYTHON_VERSION)?;
    Ok(format!("pkgs.python{digits}"))
}

/// A unified diff of the declaration, labelled with its file name.
pub fn unified_diff(file: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{file}"), &format!("b/{file}"))
        .to_string()
}

/// The store paths `new` has and `old` has not, and back, with their sizes.
pub fn closure_diff(old: &Path, new: &Path) -> Result<ClosureDiff, EditError> {
    let set = |root: &Path| -> Result<BTreeSet<PathBuf>, EditError> {
        let c =
            closure::closure(&[root.to_path_buf()]).map_err(|e| EditError::Proof(e.to_string()))?;
        Ok(c.paths.into_iter().map(|e| e.path).collect())
    };
    let (a, b) = (set(old)?, set(new)?);
    let added: Vec<PathBuf> = b.difference(&a).cloned().collect();
    let removed: Vec<PathBuf> = a.difference(&b).cloned().collect();
    let sum = |paths: &[PathBuf]| -> Result<u64, EditError> {
        Ok(build::path_sizes(paths)
            .map_err(|e| EditError::Proof(e.to_string()))?
            .iter()
            .sum())
    };
    let (added_bytes, removed_bytes) = (sum(&added)?, sum(&removed)?);
    Ok(ClosureDiff {
        added,
        removed,
        added_bytes,
        removed_bytes,
        size_delta_bytes: added_bytes as i64 - removed_bytes as i64,
    })
}

/// Writes `bytes` to `path` atomically ([`crate::dirs::write_atomic_mode`]), keeping
/// the file's permissions: readers see the old or the new file whole, and a link at
/// `path` is replaced, not followed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EditError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mode = std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    crate::dirs::write_atomic_mode(dir, &name, bytes, mode).map_err(io(path))
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Removes the candidate declaration when dropped.
struct Candidate(PathBuf);

impl Drop for Candidate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes what is at the candidate's name (made only under the edit lock, so what is
/// there was left by a crash, or by a cell); returns its path.
fn remove_candidate(project: &Project) -> Result<PathBuf, EditError> {
    let path = project.dir.join(crate::project::CANDIDATE);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    Ok(path)
}

/// Builds the edited text from a sibling of the declaration (relative imports resolve
/// the same) and returns the build; errors name devenv.nix, not the sibling. Whatever
/// is at the sibling's name (a link a cell left there) is removed, not followed.
fn prove(project: &Project, text: &str, progress: Progress) -> Result<Built, EditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = crate::project::CANDIDATE;
    let path = remove_candidate(project)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io(&path))?;
    let _guard = Candidate(path.clone());
    f.write_all(text.as_bytes()).map_err(io(&path))?;
    drop(f);
    project.build_file(&path, progress).map_err(|e| {
        EditError::Proof(
            e.to_string()
                .replace(&path.to_string_lossy().into_owned(), "devenv.nix (edited)")
                .replace(name, "devenv.nix (edited)"),
        )
    })
}

/// Checks, applies, proves and commits (or proposes) one edit. `network`: the
/// profile's network policy, the ceiling of `allow-domain`.
pub fn edit(
    project: &Project,
    req: &EditRequest,
    network: &crate::net::NetPolicy,
    progress: Progress,
) -> Result<EditOutcome, EditError> {
    let subject = req.op.subject();
    policy::check_name(subject, &req.name)?;
    let name = canonical_name(req.op, &req.name)?;
    policy::check_allowed(&project.config.policy, subject, &name)?;
    let _lock = lock(project)?;
    let propose = req.propose || project.config.policy.approval == Approval::Human;
    edit_locked(project, req.op, &name, propose, network, progress)
}

/// The name as the edit records it (a domain normalized, its port added).
fn canonical_name(op: Op, name: &str) -> Result<String, EditError> {
    Ok(match op {
        Op::AllowDomain => network::entry_of(name)?.to_string(),
        _ => name.to_string(),
    })
}

/// An edit between writing the declaration and committing it (`.nixcell/edit-pending.json`).
/// Three things change one after the other (the declaration, HEAD, the index), so a
/// crash between them is finished or undone by the next edit of the project, under
/// the same lock: forward if HEAD holds the edit's commit, else back.
#[derive(Serialize, Deserialize)]
struct Pending {
    /// The file edited, when not the declaration (`nixcell.toml`).
    #[serde(default)]
    file: Option<String>,
    head: String,
    original: String,
    edited: String,
}

const PENDING: &str = "edit-pending.json";

fn settle_pending(project: &Project) -> Result<(), EditError> {
    remove_candidate(project)?;
    let dir = project.state_dir()?;
    let path = dir.join(PENDING);
    let bytes = match crate::project::read_nofollow(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(EditError::Io(path, e)),
    };
    let p: Pending = serde_json::from_slice(&bytes)
        .map_err(|e| EditError::Io(path.clone(), std::io::Error::other(e)))?;
    let decl = &match p.file.as_deref() {
        Some(crate::project::CONFIG) => project.dir.join(crate::project::CONFIG),
        _ => project.declaration.clone(),
    };
    let (head, parent) = git::head(&project.dir, decl)?;
    let keep = if head == p.head {
        Some(&p.original)
    } else if parent.as_deref() == Some(p.head.as_str()) {
        Some(&p.edited)
    } else {
        // HEAD moved elsewhere since: the user's history, not nixcell's to settle.
        None
    };
    if let Some(keep) = keep {
        let now = crate::project::read_nofollow(decl).map_err(io(decl))?;
        // Only the two states the edit left are settled: content that is neither was
        // written since (by the user), and is theirs, not the journal's to replace.
        if now != p.original.as_bytes() && now != p.edited.as_bytes() {
            return Err(EditError::Refused(format!(
                "{}: an edit interrupted earlier left {}, and the file has changed since; \
                 nothing was changed: check the file and `git status`, then remove {}",
                decl.display(),
                path.display(),
                path.display()
            )));
        }
        if now != keep.as_bytes() {
            write_atomically(decl, keep.as_bytes())?;
        }
        git::stage_bytes(&project.dir, decl, keep.as_bytes())?;
    }
    std::fs::remove_file(&path).map_err(|e| EditError::Io(path, e))
}

fn edit_locked(
    project: &Project,
    op: Op,
    name: &str,
    propose: bool,
    network: &crate::net::NetPolicy,
    progress: Progress,
) -> Result<EditOutcome, EditError> {
    let (decl, file_name) = if op == Op::AllowDomain {
        (
            project.dir.join(crate::project::CONFIG),
            crate::project::CONFIG,
        )
    } else {
        (project.declaration.clone(), crate::project::DECLARATION)
    };
    let decl = &decl;
    settle_pending(project)?;
    let clean = || match propose {
        false => git::check_clean(&project.dir, decl),
        true => Ok(()),
    };
    if op != Op::AllowDomain {
        clean()?;
    }
    let original = match crate::project::read_nofollow(decl) {
        Err(e) if op == Op::AllowDomain && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        r => r.map_err(io(decl))?,
    };
    let text = String::from_utf8(original.clone())
        .map_err(|_| EditError::Encoding { file: decl.clone() })?;
    let (new_text, after, cdiff) = if op == Op::AllowDomain {
        // Checked again against the file as it is now, under the lock.
        let (config, limits) = crate::project::Config::parse(decl, &text)?;
        let entry = network::check(&config.policy, network, limits.network.as_ref(), name)?;
        let new_text = network::apply_to_toml(file_name, &text, &entry)?;
        let (_, edited) = crate::project::Config::parse(decl, &new_text)?;
        let now = network.narrowed(edited.network.as_ref());
        if !now.allow.iter().any(|a| a.covers(&entry)) {
            return Err(EditError::Refused(format!(
                "{file_name}: the edited [network] does not allow {entry}; nothing was changed"
            )));
        }
        clean()?;
        (new_text, project.build(progress)?, ClosureDiff::default())
    } else {
        let new_text = apply_to_text(file_name, &text, op, name)?;
        let before = project.build(progress.clone())?;
        let after = prove(project, &new_text, progress)?;
        let cdiff = closure_diff(&before.env, &after.env)?;
        (new_text, after, cdiff)
    };
    let diff = unified_diff(file_name, &text, &new_text);
    if propose {
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id_seed = format!(
            "{}{op:?}{name}{created_unix}{}",
            sha256_hex(&original),
            std::process::id()
        );
        let id = sha256_hex(id_seed.as_bytes())[..10].to_string();
        let p = Proposal {
            id: id.clone(),
            operation: op,
            name: name.to_string(),
            status: ProposalStatus::Pending,
            created_unix,
            base_sha256: sha256_hex(&original),
            diff: diff.clone(),
            closure_diff: cdiff.clone(),
            commit: None,
        };
        save_proposal(project, &p)?;
        return Ok(EditOutcome {
            operation: op,
            name: name.to_string(),
            status: Status::Proposed,
            commit: None,
            proposal: Some(id),
            diff,
            closure_diff: cdiff,
            env: after.env,
        });
    }
    let state = project.state_dir()?;
    let pending = Pending {
        file: (op == Op::AllowDomain).then(|| file_name.to_string()),
        head: git::head(&project.dir, decl)?.0,
        original: text.clone(),
        edited: new_text.clone(),
    };
    let journal = serde_json::to_vec(&pending).map_err(std::io::Error::other);
    journal
        .and_then(|j| crate::dirs::write_atomic(&state, PENDING, &j))
        .map_err(|e| EditError::Io(state.join(PENDING), e))?;
    write_atomically(decl, new_text.as_bytes())?;
    let message = format!("nixcell edit: {} {name}", op.as_str());
    let committed = git::commit_file(&project.dir, decl, new_text.as_bytes(), &message);
    if committed.is_err() {
        write_atomically(decl, &original)?;
    }
    std::fs::remove_file(state.join(PENDING)).map_err(|e| EditError::Io(state.join(PENDING), e))?;
    match committed {
        Ok(commit) => Ok(EditOutcome {
            operation: op,
            name: name.to_string(),
            status: Status::Committed,
            commit: Some(commit),
            proposal: None,
            diff,
            closure_diff: cdiff,
            env: after.env,
        }),
        Err(e) => Err(EditError::Commit(e)),
    }
}

fn proposals_dir(project: &Project) -> Result<PathBuf, EditError> {
    Ok(project.state_subdir("proposals")?)
}

fn save_proposal(project: &Project, p: &Proposal) -> Result<(), EditError> {
    let dir = proposals_dir(project)?;
    let name = format!("{}.json", p.id);
    let json = serde_json::to_vec_pretty(p).unwrap_or_default();
    crate::dirs::write_atomic(&dir, &name, &json).map_err(io(&dir.join(&name)))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_hexdigit())
}

/// A proposal by id.
pub fn load_proposal(project: &Project, id: &str) -> Result<Proposal, EditError> {
    if !valid_id(id) {
        return Err(EditError::NoProposal(id.to_string()));
    }
    let path = proposals_dir(project)?.join(format!("{id}.json"));
    let bytes =
        crate::project::read_nofollow(&path).map_err(|_| EditError::NoProposal(id.to_string()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EditError::Refused(format!("{}: {e}", path.display())))
}

/// Every proposal, oldest first.
pub fn list_proposals(project: &Project) -> Result<Vec<Proposal>, EditError> {
    let dir = proposals_dir(project)?;
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".json")
            && let Ok(p) = load_proposal(project, id)
        {
            out.push(p);
        }
    }
    out.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
    Ok(out)
}

fn settle_check(p: &Proposal) -> Result<(), EditError> {
    if p.status != ProposalStatus::Pending {
        let status = serde_json::to_value(p.status)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        return Err(EditError::Settled {
            id: p.id.clone(),
            status,
        });
    }
    Ok(())
}

/// Approves a proposal: the operation is applied to the declaration as it is now,
/// proven by a build and committed.
pub fn approve(
    project: &Project,
    id: &str,
    network: &crate::net::NetPolicy,
    progress: Progress,
) -> Result<EditOutcome, EditError> {
    let _lock = lock(project)?;
    let mut p = load_proposal(project, id)?;
    settle_check(&p)?;
    let subject = p.operation.subject();
    policy::check_name(subject, &p.name)?;
    policy::check_allowed(&project.config.policy, subject, &p.name)?;
    let out = edit_locked(project, p.operation, &p.name, false, network, progress)?;
    p.status = ProposalStatus::Approved;
    p.commit = out.commit.clone();
    save_proposal(project, &p)?;
    Ok(out)
}

/// Rejects a proposal; nothing else changes.
pub fn reject(project: &Project, id: &str) -> Result<Proposal, EditError> {
    let _lock = lock(project)?;
    let mut p = load_proposal(project, id)?;
    settle_check(&p)?;
    p.status = ProposalStatus::Rejected;
    save_proposal(project, &p)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "{ pkgs, ... }: {\n  packages = [ pkgs.busybox ];\n}\n";

    fn edit(src: &str, op: Op, name: &str) -> String {
        apply_to_text("devenv.nix", src, op, name).unwrap()
    }

    #[test]
    fn python_library_edits_write_devenv_form() {
        let t = edit(EMPTY, Op::AddPythonLibrary, "pandas");
        assert_eq!(
            t,
            "{ pkgs, ... }: {\n  packages = [ pkgs.busybox ];\n  languages.python.package = pkgs.python3.withPackages (ps: [ ps.pandas ]);\n  languages.python.enable = true;\n}\n"
        );
        let t = edit(&t, Op::AddPythonLibrary, "openpyxl");
        assert!(t.contains("(ps: [ ps.pandas ps.openpyxl ])"), "{t}");
        let err = apply_to_text("devenv.nix", &t, Op::AddPythonLibrary, "pandas").unwrap_err();
        assert!(err.to_string().contains("already"), "{err}");
        let t = edit(&t, Op::RemovePythonLibrary, "pandas");
        assert!(t.contains("(ps: [ ps.openpyxl ])"), "{t}");
        assert!(!t.contains("libraries"), "{t}");
    }

    #[test]
    fn the_old_string_form_moves_into_with_packages() {
        let src = "{ pkgs, ... }:\n{\n  languages.python = {\n    enable = true;\n    libraries = [ \"pandas\" ];\n  };\n}\n";
        let t = edit(src, Op::AddPythonLibrary, "openpyxl");
        assert_eq!(
            t,
            "{ pkgs, ... }:\n{\n  languages.python = {\n    enable = true;\n    package = pkgs.python3.withPackages (ps: [ ps.pandas ps.openpyxl ]);\n  };\n}\n"
        );
        // Removing an old-form name writes the devenv form too.
        let t = edit(src, Op::RemovePythonLibrary, "pandas");
        assert!(
            t.contains("package = pkgs.python3.withPackages (ps: [ ]);"),
            "{t}"
        );
        assert!(!t.contains("libraries"), "{t}");
        // Native libraries stay where devenv wants them; only the names move.
        let src = "{ pkgs, ... }: { languages.python.libraries = [ pkgs.file \"numpy\" ]; }";
        let t = edit(src, Op::AddPythonLibrary, "pandas");
        assert!(
            t.contains("languages.python.libraries = [ pkgs.file ];"),
            "{t}"
        );
        assert!(t.contains("(ps: [ ps.numpy ps.pandas ])"), "{t}");
    }

    #[test]
    fn with_packages_is_edited_in_place() {
        let src = "{ pkgs, ... }: { languages.python.package = pkgs.python3.withPackages (p: with p; [\n    numpy\n  ]); }";
        let t = edit(src, Op::AddPythonLibrary, "pandas");
        assert!(t.contains("[\n    numpy\n    pandas\n  ]"), "{t}");
        let t = edit(&t, Op::RemovePythonLibrary, "numpy");
        assert!(t.contains("[\n    pandas\n  ]"), "{t}");
        // An interpreter of the package set becomes the base of a withPackages.
        let src = "{ pkgs, ... }: { languages.python.package = pkgs.python311; }";
        let t = edit(src, Op::AddPythonLibrary, "numpy");
        assert!(
            t.contains("package = pkgs.python311.withPackages (ps: [ ps.numpy ]);"),
            "{t}"
        );
        // A version becomes that interpreter (devenv's version needs an input of its own).
        let src = "{ pkgs, ... }: { languages.python.version = \"3.11\"; }";
        let t = edit(src, Op::AddPythonLibrary, "numpy");
        assert!(
            t.contains("package = pkgs.python311.withPackages (ps: [ ps.numpy ]);"),
            "{t}"
        );
        assert!(!t.contains("version"), "{t}");
    }

    #[test]
    fn services_toggle() {
        let src = "{ pkgs, ... }: { }";
        let t = apply_to_text("devenv.nix", src, Op::EnableService, "redis").unwrap();
        assert_eq!(t, "{ pkgs, ... }: { services.redis.enable = true; }");
        let t = apply_to_text("devenv.nix", &t, Op::DisableService, "redis").unwrap();
        assert_eq!(t, "{ pkgs, ... }: { services.redis.enable = false; }");
        assert!(apply_to_text("devenv.nix", src, Op::DisableService, "redis").is_err());
    }

    #[test]
    fn a_python_package_of_another_shape_blocks_library_edits() {
        let src = "{ pkgs, ... }: { languages.python.package = myPython; }";
        let err = apply_to_text("devenv.nix", src, Op::AddPythonLibrary, "numpy").unwrap_err();
        assert!(
            err.to_string().contains("languages.python.package"),
            "{err}"
        );
    }
}
