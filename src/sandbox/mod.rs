//! The low-level runner: synchronous code, and the only place that forks.
//!
//! `spawn` is the supervisor's side; `init` is the re-executed binary that builds the
//! cell; `pid1` reaps and forwards signals inside the pid namespace and starts the
//! command through `exec`.
//!
//! This module's root holds the sandbox's whole input, [`RunSpec`]: pure, validated
//! data that describes one run of a cell. The supervisor builds it, the init stage
//! receives it over the control socket and carries it out. Nothing in it touches the
//! system. The sandbox imports nothing of the front-end (profiles, verdicts, projects):
//! what it needs is in here (docs/ARCHITECTURE.md, module map).

pub mod caps;
pub mod cgroup;
pub mod exec;
pub mod forward;
pub mod init;
pub mod landlock;
pub mod layers;
pub mod limits;
pub mod ns;
pub mod ocimount;
pub mod ociproc;
pub mod pid1;
pub mod pidfd;
pub mod proto;
pub mod rootfs;
pub mod seccomp;
pub mod session;
pub mod spawn;
pub mod stage;
pub mod sys;

use nix::errno::Errno;
use proto::SetupFailure;
use serde::{Deserialize, Serialize};
pub use stage::Stage;
use std::path::PathBuf;

/// A failed step of the cell's set-up: the stage, the syscall and the errno.
#[derive(Debug, thiserror::Error)]
#[error("stage '{stage}': {syscall}({detail}): {source}")]
pub struct StageError {
    pub stage: Stage,
    pub syscall: &'static str,
    pub detail: String,
    #[source]
    pub source: Errno,
}

impl StageError {
    pub fn new(stage: Stage, syscall: &'static str, detail: impl Into<String>, e: Errno) -> Self {
        StageError {
            stage,
            syscall,
            detail: detail.into(),
            source: e,
        }
    }

    pub fn failure(&self) -> SetupFailure {
        SetupFailure {
            stage: self.stage,
            syscall: self.syscall.to_string(),
            errno: self.source as i32,
            detail: self.detail.clone(),
        }
    }
}

pub type StageResult<T = ()> = Result<T, StageError>;

/// Attaches the stage, syscall and a detail (usually the path) to a failed call.
pub trait At<T> {
    fn at(
        self,
        stage: Stage,
        syscall: &'static str,
        detail: impl std::fmt::Display,
    ) -> StageResult<T>;
}

impl<T> At<T> for nix::Result<T> {
    fn at(
        self,
        stage: Stage,
        syscall: &'static str,
        detail: impl std::fmt::Display,
    ) -> StageResult<T> {
        self.map_err(|e| StageError::new(stage, syscall, detail.to_string(), e))
    }
}

impl<T> At<T> for std::io::Result<T> {
    fn at(
        self,
        stage: Stage,
        syscall: &'static str,
        detail: impl std::fmt::Display,
    ) -> StageResult<T> {
        self.map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            StageError::new(stage, syscall, detail.to_string(), errno)
        })
    }
}

/// How strictly a layer is applied: `required` (the kernel must support it, else the
/// run fails before anything runs), `best-effort` (the run goes on and the verdict says
/// the layer was not enforced and why) or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerMode {
    Required,
    BestEffort,
    Off,
}
/// Where the cell's working directory is mounted when `--workdir` is given.
pub const WORKDIR_IN_CELL: &str = "/work";

/// One run of a command in a cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// The command and its arguments; `argv[0]` is resolved against `path_dirs`.
    pub argv: Vec<String>,
    /// The complete environment of the command.
    pub env: Vec<(String, String)>,
    /// Directories searched for `argv[0]` (the `bin/` of each root), in order.
    pub path_dirs: Vec<PathBuf>,
    /// The Nix store directory, normally `/nix/store`.
    pub store_dir: PathBuf,
    /// Every store path of the closure: the whole software of the cell.
    pub store_paths: Vec<StoreEntry>,
    /// Host directories or files bound into the cell (the workdir and `--bind`s).
    pub mounts: Vec<BindMount>,
    /// The sources of `mounts`, in the same order, each opened once by the supervisor
    /// at plan time; the init stage finds them on descriptors [`MOUNT_FD_BASE`]`+ i`
    /// and mounts from them, never by name.
    #[serde(skip)]
    pub sources: Vec<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// The copy-on-write layer of the workdir (`mounts[0]`), when its mode is `cow`.
    #[serde(default)]
    pub work: Option<WorkLayer>,
    /// Inode cap of the cell's `/tmp`.
    #[serde(default = "default_tmp_inodes")]
    pub tmp_inodes: u64,
    /// Convenience links in the cell, e.g. `/bin/sh` to the closure's shell.
    pub symlinks: Vec<Symlink>,
    /// The command's working directory inside the cell.
    pub cwd: PathBuf,
    /// Size cap of the cell's `/tmp` in bytes.
    pub tmp_size_bytes: u64,
    /// Host name inside the UTS namespace.
    pub hostname: String,
    pub identity: Identity,
    /// Pid of the supervisor; the init stage refuses to run for another parent.
    pub supervisor_pid: i32,
    /// Services started inside the cell before the command, stopped after it.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Security layers applied right before exec.
    #[serde(default)]
    pub security: layers::SecuritySpec,
    /// A session cell: `argv` is not run; PID 1 keeps the cell and its services alive
    /// and starts the commands its holder sends ([`proto::Request`], `session.rs`).
    #[serde(default)]
    pub session: bool,
    /// The forwarder to the network proxy, when the policy allows names.
    #[serde(default)]
    pub net: Option<forward::NetSpec>,
    /// The command's stdin is a terminal nixcell allocated for the cell (a pty, never
    /// the caller's): the command's new session takes it as its controlling terminal,
    /// so that job control works in an interactive shell.
    #[serde(default)]
    pub terminal: bool,
    /// Set for a container created by `nixcell oci create`: the command waits for
    /// `start`, and the cell outlives its creator.
    #[serde(default)]
    pub oci: Option<OciHold>,
    /// An OCI container's file system view from its config.json (`ocimount.rs`): an
    /// image root, mounts, masked and read-only paths.
    #[serde(default)]
    pub oci_fs: Option<ocimount::OciFs>,
    /// Namespaces joined instead of made (an OCI pod's network, ipc, uts).
    #[serde(default)]
    pub joins: Vec<JoinNs>,
}

/// A namespace kind a cell may join instead of making its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinKind {
    Net,
    Ipc,
    Uts,
}

impl JoinKind {
    pub fn flag(self) -> nix::sched::CloneFlags {
        match self {
            JoinKind::Net => nix::sched::CloneFlags::CLONE_NEWNET,
            JoinKind::Ipc => nix::sched::CloneFlags::CLONE_NEWIPC,
            JoinKind::Uts => nix::sched::CloneFlags::CLONE_NEWUTS,
        }
    }

    /// The name in `ns::CELL_NAMESPACES` (and in config.json).
    pub fn name(self) -> &'static str {
        match self {
            JoinKind::Net => "network",
            JoinKind::Ipc => "ipc",
            JoinKind::Uts => "uts",
        }
    }
}

/// A namespace the init stage joins (setns) before it makes the others: opened and
/// checked to be of its kind by the supervisor, found on descriptor `fd`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinNs {
    pub kind: JoinKind,
    pub fd: i32,
    pub path: PathBuf,
}

/// A cell held between an OCI runtime's `create` and `start`. PID 1 builds the root,
/// reports [`proto::Report::Created`], then waits on the listening unix socket found on
/// descriptor `start_fd`; the first connection (`nixcell oci start`) becomes its report
/// channel and the command is forked. The creator does not stay: PID 1 ignores the end
/// of the control socket and exits with the command's status (128+N for signal N).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OciHold {
    pub start_fd: i32,
    /// The command's stdin is a terminal to make its controlling terminal.
    pub terminal: bool,
}

impl RunSpec {
    /// An OCI container whose root is an image directory (`ocimount.rs`).
    pub fn image_root(&self) -> Option<&ocimount::ImageRoot> {
        self.oci_fs.as_ref()?.image.as_ref()
    }

    /// `mounts[i]` is cloned without its submounts: an image root's layer (an overlay's
    /// lower layer) or a plain `bind` of config.json.
    pub fn flat_source(&self, i: usize) -> bool {
        let Some(fs) = &self.oci_fs else { return false };
        fs.image.as_ref().is_some_and(|img| i < img.layers)
            || fs.mounts.iter().any(|m| {
                m.kind
                    == ocimount::MountKind::Bind {
                        source: i,
                        recursive: false,
                    }
            })
    }

    /// How /work is mounted, when there is a workdir.
    pub fn workdir_mode(&self) -> Option<WorkdirMode> {
        let m = self
            .mounts
            .iter()
            .find(|m| m.dest == std::path::Path::new(WORKDIR_IN_CELL))?;
        Some(if self.work.is_some() {
            WorkdirMode::Cow
        } else if m.writable {
            WorkdirMode::Bind
        } else {
            WorkdirMode::Ro
        })
    }
}

/// A store path of the closure and what kind of file system object it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreEntry {
    pub path: PathBuf,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Dir,
    File,
    Symlink(PathBuf),
}

/// Descriptor of the first mount source in the init stage (3 is the control socket, 4
/// the cell cgroup's `cgroup.procs`).
pub const MOUNT_FD_BASE: i32 = 8;

fn default_tmp_inodes() -> u64 {
    100_000
}

/// How the workdir is mounted at /work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkdirMode {
    /// An overlay over the read-only workdir; changes come back through nixcell.
    Cow,
    /// The workdir itself, read-write (it must belong to the cell's host identity).
    Bind,
    /// The workdir itself, read-only.
    Ro,
}

impl WorkdirMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkdirMode::Cow => "cow",
            WorkdirMode::Bind => "bind",
            WorkdirMode::Ro => "ro",
        }
    }
}

/// The upper layer of a copy-on-write workdir: a tmpfs with these caps, and the
/// entries (relative to the workdir) made read-only inside the cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkLayer {
    pub size_bytes: u64,
    pub inodes: u64,
    pub protect: Vec<PathBuf>,
}

/// A bind mount of a host path into the cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub dest: PathBuf,
    pub writable: bool,
    /// True when the source is a directory (the mount point is a directory too).
    pub is_dir: bool,
    /// Device and inode of the opened source: a rootless init stage finds the source
    /// again in its own mount namespace and proves it is the same object.
    #[serde(default)]
    pub dev: u64,
    #[serde(default)]
    pub ino: u64,
    /// Owner of the source (the idmap of a copy-on-write lower layer maps it).
    #[serde(default)]
    pub owner: (u32, u32),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Symlink {
    pub link: PathBuf,
    pub target: PathBuf,
}

/// Who the command is, inside and outside the cell.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Identity {
    /// uid/gid seen inside the cell.
    pub uid: u32,
    pub gid: u32,
    /// uid/gid the cell's processes have on the host.
    pub host_uid: u32,
    pub host_gid: u32,
    pub user_name: String,
    pub home: PathBuf,
    /// Started as root: whole uid and gid ranges an OCI engine chose for the cell's
    /// user namespace (written by a process that stays host root until the namespace
    /// exists, `ns::spawn_mapper`); they contain uid→host_uid and gid→host_gid. None:
    /// the one id each, written by the cell itself.
    #[serde(default)]
    pub ranges: Option<IdRanges>,
}

/// uid and gid ranges of a user namespace, as `/proc/PID/uid_map` lines take them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IdRanges {
    pub uid: Vec<IdRange>,
    pub gid: Vec<IdRange>,
}

/// `count` ids from `inside` in the namespace are the host's from `host`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IdRange {
    pub inside: u32,
    pub host: u32,
    pub count: u32,
}

impl Identity {
    /// Host files of `owner` (uid, gid) are the cell's own: its host identity's, or
    /// ids an engine's ranges map (files the engine chowned for the container).
    pub fn owns_host(&self, owner: (u32, u32)) -> bool {
        owner.0 == self.host_uid || self.ranges.as_ref().is_some_and(|r| r.maps_host(owner))
    }
}

impl IdRanges {
    /// The host ids `owner` (uid, gid) are both mapped into the namespace.
    pub fn maps_host(&self, owner: (u32, u32)) -> bool {
        self.maps(owner, |m| m.host)
    }

    /// The ids `(uid, gid)` of the namespace are both mapped.
    pub fn maps_inside(&self, ids: (u32, u32)) -> bool {
        self.maps(ids, |m| m.inside)
    }

    /// Both ids fall in a range starting at `start` of it, uid and gid ranges.
    fn maps(&self, ids: (u32, u32), start: fn(&IdRange) -> u32) -> bool {
        let has = |r: &[IdRange], id: u32| {
            r.iter().any(|m| {
                id.checked_sub(start(m))
                    .is_some_and(|off| u64::from(off) < u64::from(m.count))
            })
        };
        has(&self.uid, ids.0) && has(&self.gid, ids.1)
    }
}

/// A long-running process started in the cell before the command (e.g. redis), on
/// loopback only, under the same confinement as the command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub argv: Vec<String>,
    /// The service is ready when a TCP connect to 127.0.0.1:PORT succeeds.
    pub ready_port: Option<u16>,
    /// Host file its stdout and stderr are appended to; kept after the run.
    pub log: PathBuf,
    /// How long to wait for readiness.
    pub ready_timeout_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::{IdRange, IdRanges};

    #[test]
    fn ranges_map_their_ids_and_no_other() {
        let r = IdRanges {
            uid: vec![IdRange {
                inside: 0,
                host: 100_000,
                count: 10,
            }],
            gid: vec![
                IdRange {
                    inside: 0,
                    host: 100_000,
                    count: 10,
                },
                IdRange {
                    inside: 4_294_967_295,
                    host: 7,
                    count: 1,
                },
            ],
        };
        assert!(r.maps_host((100_000, 100_009)) && r.maps_host((100_009, 7)));
        assert!(!r.maps_host((100_010, 100_000)) && !r.maps_host((99_999, 100_000)));
        assert!(!r.maps_host((0, 0)), "host root is not in the ranges");
        assert!(r.maps_inside((9, 4_294_967_295)) && !r.maps_inside((10, 0)));
        assert!(!r.maps_inside((0, 10)));
    }
}
