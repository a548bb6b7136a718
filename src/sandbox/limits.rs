//! Resource limits of the command's process (setrlimit(2)), set right before exec and
//! inherited by everything it starts: no core dumps, open files, file size, CPU
//! seconds. When no cgroup can be used, `nproc` (counted per user namespace since
//! Linux 5.14, so only the cell's processes count) and `address_space` stand in for
//! the pids and memory limits.

use super::LayerMode;
use super::Stage;
use super::{At, StageResult};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RlimitSpec {
    pub mode: LayerMode,
    pub open_files: Option<u64>,
    pub file_size: Option<u64>,
    pub cpu_seconds: Option<u64>,
    /// Fallback for the pids limit when the cgroup layer is not enforced.
    pub nproc: Option<u64>,
    /// Fallback for the memory limit when the cgroup layer is not enforced.
    pub address_space: Option<u64>,
}

impl Default for RlimitSpec {
    fn default() -> Self {
        RlimitSpec {
            mode: LayerMode::Off,
            open_files: None,
            file_size: None,
            cpu_seconds: None,
            nproc: None,
            address_space: None,
        }
    }
}

/// The limits to set: (resource, name, value).
fn wanted(s: &RlimitSpec) -> Vec<(Resource, &'static str, u64)> {
    let mut v = vec![(Resource::RLIMIT_CORE, "core", 0)];
    let opt = [
        (Resource::RLIMIT_NOFILE, "nofile", s.open_files),
        (Resource::RLIMIT_FSIZE, "fsize", s.file_size),
        (Resource::RLIMIT_CPU, "cpu", s.cpu_seconds),
        (Resource::RLIMIT_NPROC, "nproc", s.nproc),
        (Resource::RLIMIT_AS, "as", s.address_space),
    ];
    v.extend(opt.into_iter().filter_map(|(r, n, x)| x.map(|x| (r, n, x))));
    v
}

/// What [`apply`] sets `res` to for `value`: at most the current hard limit, which the
/// cell inherits.
pub fn in_force(res: Resource, value: u64) -> u64 {
    getrlimit(res).map_or(value, |(_, hard)| value.min(hard))
}

/// Sets the limits; a limit above the current hard limit is lowered to it (only
/// root could raise it) and the report says so.
pub fn apply(s: &RlimitSpec) -> StageResult<super::proto::LayerReport> {
    let mut set = Vec::new();
    if s.mode != LayerMode::Off {
        for (res, name, value) in wanted(s) {
            let (_, hard) = getrlimit(res).at(Stage::Rlimits, "getrlimit", name)?;
            let v = value.min(hard);
            match setrlimit(res, v, v) {
                Ok(()) => set.push(if v < value {
                    format!("{name}={v} (hard limit below the requested {value})")
                } else {
                    format!("{name}={v}")
                }),
                Err(e) if s.mode == LayerMode::BestEffort => {
                    set.push(format!("{name} not set: {}", e.desc()))
                }
                Err(e) => return Err(e).at(Stage::Rlimits, "setrlimit", name),
            }
        }
    }
    Ok(super::proto::LayerReport {
        layer: "rlimits".into(),
        enforced: s.mode != LayerMode::Off,
        detail: if s.mode == LayerMode::Off {
            "off in the profile".into()
        } else {
            set.join(", ")
        },
    })
}
