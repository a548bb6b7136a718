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
        Errno::EPERM,
    )
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
