//! Containers' state under the runtime's `--root`: one `0700` directory per container
//! id holding `state.json` (what `create` recorded) and, until `start`, the start
//! socket. On disk, so that it survives the caller's restart; PID 1 is named by its pid
//! and start time, so a reused pid is never taken for the container.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The OCI runtime-spec version this runtime implements.
pub const OCI_VERSION: &str = "1.0.2";
/// File name of the start socket in a container's directory.
pub const START_SOCKET: &str = "start.sock";
const STATE_FILE: &str = "state.json";
const MAX_STATE: u64 = 1 << 20;

/// What `create` recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    pub pid: i32,
    /// Start time of `pid` (field 22 of /proc/PID/stat).
    pub start_time: u64,
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 time of creation.
    pub created: String,
    /// `start` connected to the container.
    #[serde(default)]
    pub started: bool,
    /// The container's cgroups (controller, dir), removed by `delete`.
    #[serde(default)]
    pub cgroups: Vec<(String, PathBuf)>,
}

/// The runtime-spec state (`state.md`), as `state` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State<'a> {
    pub oci_version: &'static str,
    pub id: &'a str,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: &'a Path,
    pub annotations: &'a BTreeMap<String, String>,
    pub created: &'a str,
}

/// A container id as runc accepts them: letters, digits, `_+-.`, not `.` or `..`.
pub fn check_id(id: &str) -> Result<&str, String> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok {
        Ok(id)
    } else {
        Err(format!(
            "invalid container id {id:?}: letters, digits and _+-. only"
        ))
    }
}

/// The default `--root`: /run/nixcell-runc as host root, else under $XDG_RUNTIME_DIR (or
/// nixcell's state directory).
pub fn default_root() -> Result<PathBuf, String> {
    // Root of a user namespace (rootless podman runs its runtime in one) is not host
    // root: its state goes where the caller's does.
    if crate::sandbox::ns::is_host_root() {
        return Ok(PathBuf::from("/run/nixcell-runc"));
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() => Ok(Path::new(&d).join("nixcell-runc")),
        _ => crate::dirs::root(crate::dirs::Base::State)
            .map(|d| d.join("oci"))
            .map_err(|e| e.to_string()),
    }
}

/// `--root`, created `0700` when missing, and checked to be the caller's own.
pub fn open_root(root: &Path) -> Result<PathBuf, String> {
    crate::dirs::ensure_private(root).map_err(|e| format!("--root: {e}"))?;
    Ok(root.to_path_buf())
}

/// The directory of container `id` (which must exist).
pub fn dir_of(root: &Path, id: &str) -> Result<PathBuf, String> {
    let d = root.join(check_id(id)?);
    match crate::dirs::check_private(&d) {
        Ok(()) => Ok(d),
        Err(crate::dirs::DirError::Io(_, e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("container {id} does not exist"))
        }
        Err(e) => Err(e.to_string()),
    }
}

impl Record {
    pub fn load(dir: &Path) -> Result<Record, String> {
        let p = dir.join(STATE_FILE);
        let bytes = crate::dirs::read_nofollow_capped(&p, MAX_STATE)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", p.display()))
    }

    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        crate::dirs::write_atomic_volatile(dir, STATE_FILE, &bytes, 0o600)
            .map_err(|e| format!("{}: {e}", dir.join(STATE_FILE).display()))
    }

    /// PID 1 is the recorded process (same pid, same start time) and not a zombie.
    pub fn alive(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut f = after.split_whitespace();
        let state = f.next();
        let start = f.nth(18).and_then(|s| s.parse::<u64>().ok());
        state != Some("Z") && state != Some("X") && start == Some(self.start_time)
    }

    pub fn status(&self) -> &'static str {
        match (self.alive(), self.started) {
            (false, _) => "stopped",
            (true, false) => "created",
            (true, true) => "running",
        }
    }

    pub fn state(&self) -> State<'_> {
        let status = self.status();
        State {
            oci_version: OCI_VERSION,
            id: &self.id,
            status,
            pid: (status != "stopped").then_some(self.pid),
            bundle: &self.bundle,
            annotations: &self.annotations,
            created: &self.created,
        }
    }
}

/// The parent of a process (field 4 of /proc/PID/stat, readable without ptrace access).
pub fn parent_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Now as RFC 3339 (UTC, seconds and nanoseconds).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "../x"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
