//! Security layers applied by the command's process right before execve(2).
//! The init stage applies them in the order docs/ARCHITECTURE.md gives: no_new_privs, then
//! rlimits, Landlock (after all mounts), then seccomp last. Each sends a
//! [`LayerReport`] to the supervisor, enforced or not and why.

use super::LayerMode;
use super::RunSpec;
use super::Stage;
use super::landlock::{self, LandlockSpec};
use super::limits::{self, RlimitSpec};
use super::proto::{self, LayerReport, Report};
use super::seccomp::{self, CompiledSeccomp};
use super::{StageError, StageResult};
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::os::fd::BorrowedFd;

/// Which layers the cell applies and how strictly; filled from the profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SecuritySpec {
    #[serde(default)]
    pub landlock: LandlockSpec,
    #[serde(default)]
    pub seccomp: SeccompSpec,
    #[serde(default)]
    pub rlimits: RlimitSpec,
    /// The command and services move themselves into the run's command cgroup
    /// through [`super::proto::CELL_CGROUP_FD`] (set when the run has a cgroup).
    #[serde(default)]
    pub join_cell_cgroup: bool,
    /// An OCI container's own rlimits, seccomp filter, umask, oomScoreAdj, sysctls.
    #[serde(default)]
    pub container: super::ociproc::ContainerProcess,
}

/// The seccomp layer: its mode and the BPF the supervisor compiled for this run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeccompSpec {
    pub mode: LayerMode,
    pub compiled: CompiledSeccomp,
}

impl Default for SeccompSpec {
    fn default() -> Self {
        SeccompSpec {
            mode: LayerMode::Off,
            compiled: CompiledSeccomp::default(),
        }
    }
}

fn send(sock: Option<BorrowedFd<'_>>, r: LayerReport) {
    if let Some(sock) = sock {
        let _ = proto::send(sock, &Report::Layer(r));
    }
}

/// Applies rlimits, Landlock and seccomp (in that order) to the calling process.
pub fn apply_all(spec: &RunSpec, sock: Option<BorrowedFd<'_>>) -> StageResult {
    let sec = &spec.security;
    let mut rlimits = limits::apply(&sec.rlimits)?;
    container_rlimits(&sec.container, &mut rlimits)?;
    send(sock, rlimits);
    send(sock, landlock::apply(spec, &sec.landlock)?);
    let mut report = apply_seccomp(&sec.seccomp)?;
    container_seccomp(&sec.container, &mut report)?;
    send(sock, report);
    Ok(())
}

/// The container's rlimits, after the profile's (so at most those).
fn container_rlimits(c: &super::ociproc::ContainerProcess, r: &mut LayerReport) -> StageResult {
    if c.rlimits.is_empty() {
        return Ok(());
    }
    if !r.enforced {
        r.detail.clear();
    }
    r.enforced |= super::ociproc::apply_rlimits(&c.rlimits, &mut r.detail)?;
    Ok(())
}

/// The container's seccomp filters, installed after nixcell's own.
fn container_seccomp(c: &super::ociproc::ContainerProcess, r: &mut LayerReport) -> StageResult {
    let Some(s) = &c.seccomp else { return Ok(()) };
    let n = super::ociproc::install_seccomp(s)?;
    if !r.enforced {
        r.detail.clear();
    }
    r.enforced = true;
    if !r.detail.is_empty() {
        r.detail.push_str("; ");
    }
    r.detail.push_str(&format!(
        "config.json linux.seccomp stacked under it ({n} filters: {})",
        s.detail
    ));
    Ok(())
}

fn apply_seccomp(s: &SeccompSpec) -> StageResult<LayerReport> {
    let report = |enforced, detail| LayerReport {
        layer: "seccomp".into(),
        enforced,
        detail,
    };
    if s.mode == LayerMode::Off {
        return Ok(report(false, "off in the profile".into()));
    }
    if !seccomp::kernel_supports() {
        let why = "the kernel has no seccomp filter support (CONFIG_SECCOMP_FILTER)";
        if s.mode == LayerMode::Required {
            return Err(StageError::new(
                Stage::Seccomp,
                "prctl(PR_GET_SECCOMP)",
                format!("required by the profile: {why}"),
                Errno::EOPNOTSUPP,
            ));
        }
        return Ok(report(false, why.into()));
    }
    match seccomp::install(&s.compiled) {
        // install() refuses an empty set: enforced always means filters are in place.
        Ok(installed) => Ok(report(
            installed > 0,
            format!(
                "{} policy {} ({installed} filters installed); non-x86_64 and x32 calls kill the process; calls above {} and clone3 answer ENOSYS",
                s.compiled.kind,
                &s.compiled.policy_hash[..12.min(s.compiled.policy_hash.len())],
                seccomp::highest_known(),
            ),
        )),
        Err(e) if s.mode == LayerMode::BestEffort => Ok(report(false, e.to_string())),
        Err(e) => Err(e),
    }
}

/// The `capabilities` layer of an OCI container's process: the sets read back from
/// the kernel after they were set (what execve starts from) and no_new_privs.
pub fn report_caps(c: &super::caps::OciCaps, sock: Option<BorrowedFd<'_>>) -> StageResult {
    let now = super::caps::current()?;
    // SAFETY: PR_GET_NO_NEW_PRIVS only reads the calling thread's flag.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    if now != c.sets || (nnp == 1) != c.no_new_privs {
        return Err(StageError::new(
            Stage::DropCaps,
            "capget",
            format!(
                "the sets read back differ from those set: {}; no_new_privs {nnp}",
                super::caps::describe(&now)
            ),
            Errno::EINVAL,
        ));
    }
    send(
        sock,
        LayerReport {
            layer: "capabilities".into(),
            enforced: true,
            detail: format!(
                "{}; no_new_privs {nnp} (before execve, read back from the kernel)",
                super::caps::describe(&now)
            ),
        },
    );
    Ok(())
}

/// Confines PID 1 of the cell once the command is started: the same seccomp filters
/// (PID 1 only polls, reads, waits, signals and writes its reports). Failure is
/// reported, not fatal: the command already runs under its own layers.
pub fn confine_pid1(spec: &RunSpec, sock: BorrowedFd<'_>) {
    let s = &spec.security.seccomp;
    if s.mode == LayerMode::Off {
        return;
    }
    let (enforced, detail) = match seccomp::install(&s.compiled) {
        Ok(installed) => (
            installed > 0,
            "no_new_privs, no capabilities, not dumpable, same seccomp filters as the command"
                .to_string(),
        ),
        Err(e) => (
            false,
            format!("no_new_privs, no capabilities, not dumpable; seccomp not installed: {e}"),
        ),
    };
    send(
        Some(sock),
        LayerReport {
            layer: "pid1".into(),
            enforced,
            detail,
        },
    );
}
