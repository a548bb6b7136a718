//! Dropping every capability: bounding and ambient sets first (they need
//! CAP_SETPCAP), then inheritable, permitted and effective (capabilities(7)).

use super::Stage;
use super::{StageError, StageResult};
use caps::CapSet;
use nix::errno::Errno;

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
