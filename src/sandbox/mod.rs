//! The low-level runner: synchronous code, and the only place that forks.
//!
//! `spawn` is the supervisor's side; `init` is the re-executed binary that builds the
//! cell; `pid1` reaps and forwards signals inside the pid namespace and starts the
//! command through `exec`.

pub mod caps;
pub mod cgroup;
pub mod exec;
pub mod init;
pub mod landlock;
pub mod layers;
pub mod limits;
pub mod ns;
pub mod pid1;
pub mod proto;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
pub mod sys;

use nix::errno::Errno;
use proto::SetupFailure;

/// A failed step of the cell's set-up: the stage, the syscall and the errno.
#[derive(Debug, thiserror::Error)]
#[error("stage '{stage}': {syscall}({detail}): {source}")]
pub struct StageError {
    pub stage: &'static str,
    pub syscall: &'static str,
    pub detail: String,
    #[source]
    pub source: Errno,
}

impl StageError {
    pub fn new(
        stage: &'static str,
        syscall: &'static str,
        detail: impl Into<String>,
        e: Errno,
    ) -> Self {
        StageError {
            stage,
            syscall,
            detail: detail.into(),
            source: e,
        }
    }

    pub fn failure(&self) -> SetupFailure {
        SetupFailure {
            stage: self.stage.to_string(),
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
        stage: &'static str,
        syscall: &'static str,
        detail: impl std::fmt::Display,
    ) -> StageResult<T>;
}

impl<T> At<T> for nix::Result<T> {
    fn at(
        self,
        stage: &'static str,
        syscall: &'static str,
        detail: impl std::fmt::Display,
    ) -> StageResult<T> {
        self.map_err(|e| StageError::new(stage, syscall, detail.to_string(), e))
    }
}

impl<T> At<T> for std::io::Result<T> {
    fn at(
        self,
        stage: &'static str,
        syscall: &'static str,
        detail: impl std::fmt::Display,
    ) -> StageResult<T> {
        self.map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            StageError::new(stage, syscall, detail.to_string(), errno)
        })
    }
}
