//! Dropping every capability: bounding and ambient sets first (they need
//! CAP_SETPCAP), then inheritable, permitted and effective (capabilities(7)); and an
//! OCI container's five sets, set as its config.json asks within the profile's
//! `[capabilities] oci_allow` (runc's order: bounding, capset, ambient).

use super::Stage;
use super::{StageError, StageResult};
use caps::{CapSet, Capability};
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// The most a profile may let an OCI container keep: the default set of runc and the
/// runtime spec. Nothing else (CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_NET_ADMIN, ...) is
/// ever grantable.
pub const OCI_GRANTABLE: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The five capability sets of a process, one bit per capability number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// What an OCI container's process gets: its sets and whether no_new_privs is set,
/// with the profile's policy that bounded them (for `exec --process`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciCaps {
    pub sets: CapSets,
    pub no_new_privs: bool,
    pub policy: OciCapsPolicy,
}

/// The profile's `[capabilities]`: what may be granted, what happens to the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciCapsPolicy {
    /// `CAP_*` names, each of [`OCI_GRANTABLE`].
    pub allow: Vec<String>,
    /// A capability asked beyond `allow` is dropped with a warning (else refused).
    pub drop_beyond: bool,
    /// no_new_privs whatever config.json says.
    pub nnp_always: bool,
}

/// `CAP_CHOWN` (or `chown`, `CHOWN`) as the canonical `CAP_CHOWN`, if the kernel
/// interface knows it.
pub fn canonical(name: &str) -> Option<String> {
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    Capability::from_str(&full).ok().map(|c| c.to_string())
}

/// The bit of a capability name (checked by [`canonical`] before).
pub fn bit(name: &str) -> u64 {
    Capability::from_str(name).map_or(0, |c| 1u64 << c.index())
}

/// The names of the bits of `mask`, in capability-number order.
pub fn names(mask: u64) -> Vec<String> {
    let mut v: Vec<Capability> = caps::all()
        .into_iter()
        .filter(|c| mask & (1u64 << c.index()) != 0)
        .collect();
    v.sort_by_key(|c| c.index());
    v.into_iter().map(|c| c.to_string()).collect()
}

/// Sets the calling thread's capabilities to `s`, as the last step before execve:
/// the bounding set narrowed, then effective, permitted and inheritable in one
/// capset(2), then the ambient set cleared and raised. Needs CAP_SETPCAP, which the
/// command's process still holds in the cell's user namespace until this runs.
pub fn apply(s: &CapSets) -> StageResult {
    let bounding = caps::read(None, CapSet::Bounding).map_err(|e| fail("bounding", e))?;
    for cap in bounding {
        if s.bounding & (1u64 << cap.index()) == 0 {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| fail("bounding", e))?;
        }
    }
    capset(s.effective, s.permitted, s.inheritable).map_err(|e| sfail("capset", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("ambient", e))?;
    for name in names(s.ambient) {
        let cap = Capability::from_str(&name).map_err(|e| fail("ambient", e))?;
        caps::raise(None, CapSet::Ambient, cap).map_err(|e| fail("ambient", e))?;
    }
    Ok(())
}

/// The effective set made the permitted one: a process that changed its uid with
/// PR_SET_KEEPCAPS (`oci exec`) keeps its permitted set but loses the effective one.
pub fn effective_from_permitted() -> StageResult {
    let (_, permitted, inheritable) = capget().map_err(|e| sfail("capget", e))?;
    capset(permitted, permitted, inheritable).map_err(|e| sfail("capset (effective)", e))
}

/// The calling thread's five sets, read back from the kernel (capget, prctl).
pub fn current() -> StageResult<CapSets> {
    let (effective, permitted, inheritable) = capget().map_err(|e| sfail("capget", e))?;
    let mask = |set| -> StageResult<u64> {
        let read = caps::read(None, set).map_err(|e| fail("read", e))?;
        Ok(read.into_iter().fold(0, |a, c| a | 1u64 << c.index()))
    };
    Ok(CapSets {
        bounding: mask(CapSet::Bounding)?,
        effective,
        permitted,
        inheritable,
        ambient: mask(CapSet::Ambient)?,
    })
}

/// The five sets as the layer report gives them.
pub fn describe(s: &CapSets) -> String {
    let set = |m: u64| {
        if m == 0 {
            "none".to_string()
        } else {
            names(m)
                .iter()
                .map(|n| n.trim_start_matches("CAP_").to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    format!(
        "bounding {}; effective {}; permitted {}; inheritable {}; ambient {}",
        set(s.bounding),
        set(s.effective),
        set(s.permitted),
        set(s.inheritable),
        set(s.ambient)
    )
}

/// The five sets of a process as its `/proc/<pid>/status` shows them (`CapBnd` ...).
pub fn read_status(status: &str) -> Option<CapSets> {
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some(CapSets {
        bounding: field("CapBnd:")?,
        effective: field("CapEff:")?,
        permitted: field("CapPrm:")?,
        inheritable: field("CapInh:")?,
        ambient: field("CapAmb:")?,
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

fn capget() -> Result<(u64, u64, u64), Errno> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: capget(2) writes two CapData (version 3) for the calling thread.
    if unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut CapHeader, d.as_mut_ptr()) } != 0 {
        return Err(Errno::last());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
    Ok((
        join(d[0].effective, d[1].effective),
        join(d[0].permitted, d[1].permitted),
        join(d[0].inheritable, d[1].inheritable),
    ))
}

fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let part = |v: u64, i: u32| (v >> (32 * i)) as u32;
    let d: [CapData; 2] = std::array::from_fn(|i| CapData {
        effective: part(effective, i as u32),
        permitted: part(permitted, i as u32),
        inheritable: part(inheritable, i as u32),
    });
    // SAFETY: capset(2) reads the header and two CapData (version 3).
    if unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) } != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

fn sfail(what: &str, e: Errno) -> StageError {
    StageError::new(Stage::DropCaps, "capset", what.to_string(), e)
}

fn fail(set: &str, e: caps::errors::CapsError) -> StageError {
    StageError::new(
        Stage::DropCaps,
        "capset/prctl",
        format!("{set}: {e}"),
        errno_of(&e),
    )
}

/// The errno of a failed capget/capset/prctl. The crate keeps only the message, which
/// ends in the call's `std::io::Error` ("... (os error N)"); an error the crate raises
/// itself (no system call failed) is EINVAL.
fn errno_of(e: &caps::errors::CapsError) -> Errno {
    let msg = e.to_string();
    msg.strip_suffix(')')
        .and_then(|m| m.rsplit_once("(os error "))
        .and_then(|(_, n)| n.parse().ok())
        .map_or(Errno::EINVAL, Errno::from_raw)
}

/// Empties all five capability sets of the calling thread.
pub fn drop_all() -> StageResult {
    // Dropping from the bounding set needs CAP_SETPCAP even for a capability that is
    // already gone, so only what is still there is dropped (PID 1 drops everything
    // before it forks the command, which then finds the sets empty).
    let bounding = caps::read(None, CapSet::Bounding).map_err(|e| fail("bounding", e))?;
    for cap in bounding {
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| fail("bounding", e))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("ambient", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| fail("inheritable", e))?;
    caps::clear(None, CapSet::Effective).map_err(|e| fail("effective", e))?;
    caps::clear(None, CapSet::Permitted).map_err(|e| fail("permitted", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::errno_of;
    use caps::errors::CapsError;
    use nix::errno::Errno;

    #[test]
    fn the_errno_of_the_failed_call_is_kept() {
        for errno in [libc::EPERM, libc::EINVAL, libc::ESRCH, libc::EFAULT] {
            // The crate's own wording: the call's name, then its io::Error.
            let e = CapsError::from(format!(
                "capset failure: {}",
                std::io::Error::from_raw_os_error(errno)
            ));
            assert_eq!(errno_of(&e), Errno::from_raw(errno), "{e}");
        }
    }

    #[test]
    fn an_error_of_the_crate_itself_is_einval() {
        assert_eq!(errno_of(&CapsError::from("not a base set")), Errno::EINVAL);
    }

    #[test]
    fn a_real_failure_keeps_its_errno() {
        // pid 0x7fff_fff0 names no thread: capget fails with ESRCH.
        let e = caps::read(Some(0x7fff_fff0), caps::CapSet::Effective).unwrap_err();
        assert_eq!(errno_of(&e), Errno::ESRCH, "{e}");
    }
}
