//! Dropping every capability: bounding and ambient sets first (they need
//! CAP_SETPCAP), then inheritable, permitted and effective (capabilities(7)).

use super::{StageError, StageResult};
use caps::CapSet;
use nix::errno::Errno;

fn fail(set: &str, e: caps::errors::CapsError) -> StageError {
    StageError::new(
        "drop-caps",
        "capset/prctl",
        format!("{set}: {e}"),
        Errno::EPERM,
    )
}

/// Empties all five capability sets of the calling thread.
pub fn drop_all() -> StageResult {
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| fail("bounding", e))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("ambient", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| fail("inheritable", e))?;
    caps::clear(None, CapSet::Effective).map_err(|e| fail("effective", e))?;
    caps::clear(None, CapSet::Permitted).map_err(|e| fail("permitted", e))?;
    Ok(())
}
