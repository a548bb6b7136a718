//! Where the service logs of runs go, and how many are kept.
//!
//! Each run with services gets `$XDG_STATE_HOME/nixcell/logs/<millis>-<pid>/` (`0700`,
//! created exclusively) with one `NAME.log` per service. Before a new one is made, the
//! old ones are pruned: at most [`Retention::keep`] directories are kept (newest
//! first, by the time in their name) and none older than [`Retention::max_age`].
//!
//! The logs directory is host state a hostile local process (or an older run) may have
//! filled with anything, so pruning removes only what nixcell makes there: a real
//! directory (never a symbolic link, which is neither followed nor removed) named
//! `<digits>-<digits>`, owned by the caller, holding nothing but regular `*.log`
//! files. Everything is reached through descriptors with `RESOLVE_BENEATH` and no
//! symlink resolution ([`crate::fsat`]); anything else is left alone.

use crate::dirs::{self, Base};
use crate::fsat;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default of [`Retention::keep`] (`NIXCELL_LOG_KEEP`).
pub const DEFAULT_KEEP: usize = 50;
/// Default of [`Retention::max_age`] (`NIXCELL_LOG_MAX_AGE`): 14 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(14 * 86_400);

/// How many run log directories are kept, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Run log directories kept besides the new one (`NIXCELL_LOG_KEEP`, default 50).
    pub keep: usize,
    /// Older ones are removed (`NIXCELL_LOG_MAX_AGE`, a duration such as `7d`,
    /// default 14 days).
    pub max_age: Duration,
}

impl Retention {
    /// From `NIXCELL_LOG_KEEP` and `NIXCELL_LOG_MAX_AGE`; a value that does not parse
    /// is an error naming the variable.
    pub fn from_env() -> Result<Self, String> {
        let keep = match std::env::var("NIXCELL_LOG_KEEP") {
            Ok(v) => v.trim().parse::<usize>().map_err(|_| {
                format!("NIXCELL_LOG_KEEP={v}: not a number of run log directories")
            })?,
            Err(_) => DEFAULT_KEEP,
        };
        let max_age = match std::env::var("NIXCELL_LOG_MAX_AGE") {
            Ok(v) => {
                crate::units::parse_duration(&v).map_err(|e| format!("NIXCELL_LOG_MAX_AGE: {e}"))?
            }
            Err(_) => DEFAULT_MAX_AGE,
        };
        Ok(Retention { keep, max_age })
    }
}

/// A fresh directory for this run's service logs, after pruning the old ones.
pub fn new_run_dir() -> Result<PathBuf, String> {
    let retention = Retention::from_env()?;
    let logs = dirs::private_dir(Base::State, "logs").map_err(|e| e.to_string())?;
    let fd = open_dir(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    prune(fd.as_fd(), retention, SystemTime::now());
    let name = format!("{}-{}", millis(SystemTime::now()), std::process::id());
    fsat::mkdir_at(fd.as_fd(), OsStr::new(&name), 0o700)
        .map_err(|e| format!("{}/{name}: {e}", logs.display()))?;
    Ok(logs.join(name))
}

fn millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// The logs directory itself: not a symbolic link, ours (checked on the descriptor).
fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = fsat::openat2(
        libc::AT_FDCWD,
        path,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        0,
    )?;
    let st = fsat::fstat(fd.as_fd())?;
    if st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::other("not owned by the caller"));
    }
    Ok(fd)
}

/// The time in a run log directory's name (`<millis>-<pid>`), if it is one.
fn stamp_of(name: &OsStr) -> Option<u128> {
    let s = std::str::from_utf8(name.as_bytes()).ok()?;
    let (ms, pid) = s.split_once('-')?;
    let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
    (digits(ms) && digits(pid)).then(|| ms.parse().ok())?
}

/// Removes the run log directories beyond `r.keep` (newest kept) and those older than
/// `r.max_age`; returns the names removed. Errors leave an entry as it was.
pub fn prune(logs: BorrowedFd<'_>, r: Retention, now: SystemTime) -> Vec<OsString> {
    let euid = nix::unistd::geteuid().as_raw();
    let Ok(names) = fsat::list_dir(logs) else {
        return Vec::new();
    };
    let mut runs: Vec<(u128, OsString)> = names
        .into_iter()
        .filter_map(|n| {
            let stamp = stamp_of(&n)?;
            let st = fsat::lstat_at(logs, &n).ok()?;
            (fsat::is_dir(&st) && st.st_uid == euid).then_some((stamp, n))
        })
        .collect();
    runs.sort_by(|a, b| b.cmp(a));
    let oldest_kept = millis(now).saturating_sub(r.max_age.as_millis());
    let mut removed = Vec::new();
    for (i, (stamp, name)) in runs.into_iter().enumerate() {
        if (i >= r.keep || stamp < oldest_kept) && remove_run_dir(logs, &name).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Removes one run log directory if it holds only regular `*.log` files.
fn remove_run_dir(logs: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<()> {
    let dir = fsat::open_beneath(logs, Path::new(name), libc::O_RDONLY | libc::O_DIRECTORY)?;
    let st = fsat::fstat(dir.as_fd())?;
    if st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::other("not ours"));
    }
    let entries = fsat::list_dir(dir.as_fd())?;
    for e in &entries {
        let st = fsat::lstat_at(dir.as_fd(), e)?;
        if !fsat::is_reg(&st) || !e.as_bytes().ends_with(b".log") {
            return Err(std::io::Error::other("not a run log directory"));
        }
    }
    for e in &entries {
        fsat::unlink_at(dir.as_fd(), e, false)?;
    }
    fsat::unlink_at(logs, name, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn at(dir: &Path) -> OwnedFd {
        open_dir(dir).unwrap()
    }

    fn run_dir(logs: &Path, stamp: u128) -> PathBuf {
        let d = logs.join(format!("{stamp}-42"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("redis.log"), b"ready\n").unwrap();
        d
    }

    const NOW_MS: u64 = 1_800_000_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(NOW_MS)
    }

    #[test]
    fn keeps_the_newest_and_drops_the_old() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..5u128 {
            run_dir(t.path(), NOW_MS as u128 - i * 1000);
        }
        let old = run_dir(t.path(), NOW_MS as u128 - 30 * 86_400_000);
        let r = Retention {
            keep: 3,
            max_age: DEFAULT_MAX_AGE,
        };
        let removed = prune(at(t.path()).as_fd(), r, now());
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(!old.exists());
        let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 3);
        assert!(t.path().join(format!("{NOW_MS}-42/redis.log")).exists());
        // By age alone: everything older than a second goes, the newest stays.
        let r = Retention {
            keep: 100,
            max_age: Duration::from_millis(1500),
        };
        assert_eq!(prune(at(t.path()).as_fd(), r, now()).len(), 1);
    }

    #[test]
    fn a_hostile_logs_dir_loses_nothing_that_is_not_ours() {
        let t = tempfile::tempdir().unwrap();
        let logs = t.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        // A directory elsewhere, shaped like a run's, reached by a link with a run's name.
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious.log"), b"keep me").unwrap();
        symlink(&victim, logs.join("1-1")).unwrap();
        // A run directory whose log is a link to a file elsewhere.
        let outside = t.path().join("outside.log");
        std::fs::write(&outside, b"keep me too").unwrap();
        let d = logs.join("2-2");
        std::fs::create_dir(&d).unwrap();
        symlink(&outside, d.join("redis.log")).unwrap();
        // A run directory with something that is not a log, and one with a subdirectory.
        let d = logs.join("3-3");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
        std::fs::create_dir_all(logs.join("4-4/deeper")).unwrap();
        // Names that are not a run's, and a plain file with a run's name.
        std::fs::create_dir(logs.join("keep-me")).unwrap();
        std::fs::write(logs.join("5-5"), b"x").unwrap();
        let r = Retention {
            keep: 0,
            max_age: Duration::ZERO,
        };
        let removed = prune(at(&logs).as_fd(), r, now());
        assert!(removed.is_empty(), "{removed:?}");
        assert_eq!(
            std::fs::read(victim.join("precious.log")).unwrap(),
            b"keep me"
        );
        assert!(
            std::fs::symlink_metadata(logs.join("1-1"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep me too");
        for n in [
            "2-2/redis.log",
            "3-3/notes.txt",
            "4-4/deeper",
            "keep-me",
            "5-5",
        ] {
            assert!(
                std::fs::symlink_metadata(logs.join(n)).is_ok(),
                "{n} removed"
            );
        }
        // And a real run directory next to them does go.
        run_dir(&logs, 6);
        assert_eq!(
            prune(at(&logs).as_fd(), r, now()),
            vec![OsString::from("6-42")]
        );
    }

    #[test]
    fn the_logs_dir_itself_may_not_be_a_link() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("real")).unwrap();
        symlink(t.path().join("real"), t.path().join("logs")).unwrap();
        assert!(open_dir(&t.path().join("logs")).is_err());
    }

    #[test]
    fn only_run_names_count() {
        assert!(stamp_of(OsStr::new("1796156546634-14396")).is_some());
        assert!(stamp_of(OsStr::new("1796156546634-")).is_none());
        assert!(stamp_of(OsStr::new("../1-1")).is_none());
    }
}
