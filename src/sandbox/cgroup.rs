//! Per-run control groups: memory (and no swap), CPU quota and pids limits, peak
//! memory and OOM kills, on cgroup v2 or v1 (cgroups(7)).
//!
//! Written against cgroupfs directly rather than with the cgroups-rs crate: a run
//! needs a cgroup below a *delegated* base chosen per user (`nixcell/user-<uid>` on v1,
//! `nixcell.slice/user-<uid>` on v2) that an unprivileged supervisor may only create
//! children in, a handful of files per version, clean-up of runs left by a crashed
//! supervisor, and paths that can point at a plain directory tree in unit tests. That is a few
//! hundred lines that are easier to audit than a dependency built around root-owned
//! hierarchies.
//!
//! The supervisor creates the cgroup before the init stage receives its spec, moves
//! the init stage into it (everything the cell starts inherits it), reads the usage
//! when the run is over and removes it.

use serde::Serialize;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy with the {0} controller is mounted")]
    NoController(String),
    #[error(
        "no cgroup delegated to uid {uid}: {path} is missing or not writable (as root: mkdir -p it and chown it to the user)"
    )]
    NotDelegated { uid: u32, path: PathBuf },
    #[error("cgroup {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { path, op, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// The controllers a run uses.
pub const CONTROLLERS: &[&str] = &["memory", "cpu", "pids"];

/// Where the hierarchies are: the unified mount (v2) or one mount per controller (v1).
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub version: Version,
    /// v2: the unified mount; v1: unused.
    pub unified: PathBuf,
    /// v1: (controller, mount point).
    pub v1: Vec<(String, PathBuf)>,
}

impl Hierarchy {
    /// Reads /proc/self/mountinfo. v2 is used when the unified mount carries the
    /// controllers (cgroup.controllers lists them); otherwise v1 per-controller
    /// mounts.
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io(Path::new("/proc/self/mountinfo"), "read"))?;
        Self::from_mountinfo(&text, |p| std::fs::read_to_string(p).ok())
    }

    /// Parses mountinfo text; `read` reads a file (cgroup.controllers).
    pub fn from_mountinfo(
        text: &str,
        read: impl Fn(&Path) -> Option<String>,
    ) -> Result<Hierarchy, CgroupError> {
        let mut unified = None;
        let mut v1 = Vec::new();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount = left.split_whitespace().nth(4).map(PathBuf::from);
            let mut r = right.split_whitespace();
            let (Some(fstype), _, Some(opts)) = (r.next(), r.next(), r.next()) else {
                continue;
            };
            let Some(mount) = mount else { continue };
            if fstype == "cgroup2" {
                unified.get_or_insert(mount);
            } else if fstype == "cgroup" {
                for o in opts.split(',') {
                    if CONTROLLERS.contains(&o) && !v1.iter().any(|(c, _)| c == o) {
                        v1.push((o.to_string(), mount.clone()));
                    }
                }
            }
        }
        if let Some(u) = &unified {
            let ctrls = read(&u.join("cgroup.controllers")).unwrap_or_default();
            let has_all = CONTROLLERS
                .iter()
                .all(|c| ctrls.split_whitespace().any(|x| x == *c));
            if has_all || v1.is_empty() {
                return Ok(Hierarchy {
                    version: Version::V2,
                    unified: u.clone(),
                    v1: Vec::new(),
                });
            }
        }
        if v1.is_empty() {
            return Err(CgroupError::NoController("memory".into()));
        }
        Ok(Hierarchy {
            version: Version::V1,
            unified: PathBuf::new(),
            v1,
        })
    }

    /// The per-user base directories: (controller, dir); one entry with an empty
    /// controller name on v2.
    pub fn bases(&self, uid: u32) -> Result<Vec<(String, PathBuf)>, CgroupError> {
        let user = format!("user-{uid}");
        match self.version {
            Version::V2 => Ok(vec![(
                String::new(),
                self.unified.join("nixcell.slice").join(user),
            )]),
            Version::V1 => CONTROLLERS
                .iter()
                .map(|c| {
                    self.v1
                        .iter()
                        .find(|(n, _)| n == c)
                        .map(|(_, m)| (c.to_string(), m.join("nixcell").join(&user)))
                        .ok_or_else(|| CgroupError::NoController(c.to_string()))
                })
                .collect(),
        }
    }
}

/// What a run's cgroup limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupLimits {
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

/// Usage read when the run is over.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CgroupUsage {
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time_us: Option<u64>,
    pub oom_kills: u64,
}

/// The sub-cgroup of a run that the command and its services join, and the one
/// (v2 only) PID 1 and the init stage live in. The memory limit is on [`CELL`] alone:
/// when the cell runs out of memory, the OOM killer chooses among the command's
/// processes, never PID 1, which lives to report what happened. v2 allows processes
/// only in leaves, hence [`INIT`]; on v1 they stay in the run's cgroup itself.
pub const CELL: &str = "cell";
pub const INIT: &str = "init";

/// The cgroup of one run.
#[derive(Debug)]
pub struct RunCgroup {
    pub version: Version,
    /// (controller, dir); a single entry on v2.
    pub dirs: Vec<(String, PathBuf)>,
    /// Notes on what could not be limited exactly (e.g. swap accounting off).
    pub notes: Vec<String>,
}

const CPU_PERIOD_US: u64 = 100_000;

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path, "write"))
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// A "key value" line of a flat-keyed file (memory.events, cpu.stat, oom_control).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The start time of a process (field 22 of /proc/PID/stat), to tell a live
/// supervisor from a reused pid. A zombie (dead, not reaped yet) has none.
pub fn start_time(pid: u32) -> Option<u64> {
    let s = read(Path::new(&format!("/proc/{pid}/stat")))?;
    let mut fields = s[s.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// `run-<pid>-<start time>-<n>`: the supervisor's identity (for stale clean-up) and
/// the number of this run among its runs (a library or MCP server runs many).
fn run_name() -> String {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    format!("run-{pid}-{}-{n}", start_time(pid).unwrap_or(0))
}

/// Whether the supervisor that named a run directory is gone.
fn run_is_stale(name: &str) -> bool {
    let mut it = name.strip_prefix("run-").unwrap_or("").split('-');
    let (Some(Ok(pid)), Some(Ok(start))) = (
        it.next().map(str::parse::<u32>),
        it.next().map(str::parse::<u64>),
    ) else {
        return false;
    };
    start_time(pid) != Some(start)
}

/// Whether `name` exists in the cgroup `d` or, as a fresh cgroup has the files its
/// parent has, in one of its two nearest ancestors (the run, the base).
fn exists_up(d: &Path, name: &str) -> bool {
    d.ancestors().take(3).any(|a| a.join(name).exists())
}

/// Whether `d` lies on a cgroup file system (v1 or v2).
fn on_cgroupfs(d: &Path) -> bool {
    use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
    // A directory that cannot be examined is treated as cgroupfs: only rmdir, which
    // never removes files.
    statfs(d).map_or(true, |s| {
        s.filesystem_type() == CGROUP_SUPER_MAGIC || s.filesystem_type() == CGROUP2_SUPER_MAGIC
    })
}

fn can_write(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

impl Hierarchy {
    /// Whether [`Hierarchy::create_run`] can make a run's cgroup for `uid`: root makes
    /// its base, a user needs one delegated to it.
    pub fn usable_by(&self, uid: u32) -> bool {
        uid == 0
            || self
                .bases(uid)
                .is_ok_and(|bases| bases.iter().all(|(_, b)| b.is_dir() && can_write(b)))
    }

    /// Makes the per-user base (as root) or checks it was delegated (as a user), then
    /// creates the run's cgroup with its limits. Stale runs of dead supervisors found
    /// in the base are removed first.
    pub fn create_run(&self, uid: u32, limits: &CgroupLimits) -> Result<RunCgroup, CgroupError> {
        let bases = self.bases(uid)?;
        for (_, b) in &bases {
            if !b.is_dir() && uid == 0 {
                std::fs::create_dir_all(b).map_err(io(b, "mkdir"))?;
            }
            if !b.is_dir() || !can_write(b) {
                return Err(CgroupError::NotDelegated {
                    uid,
                    path: b.clone(),
                });
            }
        }
        self.clean_stale(&bases);
        let mut notes = Vec::new();
        if self.version == Version::V2 {
            self.enable_v2_controllers(&bases[0].1, uid, &mut notes)?;
        }
        let name = run_name();
        let dirs: Vec<(String, PathBuf)> = bases
            .iter()
            .map(|(c, b)| (c.clone(), b.join(&name)))
            .collect();
        self.make(dirs, notes, limits)
    }

    /// The directories of the cgroup an OCI engine names (`linux.cgroupsPath`,
    /// checked to have no `..`): an absolute path under each controller's mount (v1)
    /// or the unified mount (v2), a relative one under `uid`'s base
    /// ([`Hierarchy::bases`]).
    pub fn named_dirs(&self, uid: u32, path: &Path) -> Result<Vec<(String, PathBuf)>, CgroupError> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        if !path.is_absolute() {
            return Ok(self
                .bases(uid)?
                .into_iter()
                .map(|(c, b)| (c, b.join(rel)))
                .collect());
        }
        if self.version == Version::V2 {
            return Ok(vec![(String::new(), self.unified.join(rel))]);
        }
        CONTROLLERS
            .iter()
            .map(|c| {
                self.v1
                    .iter()
                    .find(|(n, _)| n == c)
                    .map(|(_, m)| (c.to_string(), m.join(rel)))
                    .ok_or_else(|| CgroupError::NoController(c.to_string()))
            })
            .collect()
    }

    /// A cgroup at `dirs` (their parents made as needed; each leaf must be new, never
    /// a cgroup shared with another container) with `limits`, as [`Self::create_run`]
    /// makes one under its base. On v2 the controllers are enabled in the
    /// `subtree_control` of every ancestor, from the unified mount (`uid` 0) or from
    /// `uid`'s base (a delegated user's own subtree) down to the parent: a cgroup
    /// gets only the controllers its parent hands down.
    pub fn create_at(
        &self,
        uid: u32,
        dirs: Vec<(String, PathBuf)>,
        limits: &CgroupLimits,
    ) -> Result<RunCgroup, CgroupError> {
        for (_, d) in &dirs {
            let Some(parent) = d.parent() else { continue };
            // v2: checked to be in the subtree `uid` manages before anything is made.
            let chain = match self.version {
                Version::V2 => self.v2_chain(parent, uid)?,
                Version::V1 => Vec::new(),
            };
            std::fs::create_dir_all(parent).map_err(io(parent, "mkdir"))?;
            for d in &chain {
                self.enable_in(d)?;
            }
        }
        self.make(dirs, Vec::new(), limits)
    }

    /// v2: `dir` and its ancestors up to the top `uid` manages (the unified mount for
    /// root, its base otherwise), top first: where the controllers must be handed
    /// down. A directory outside that subtree is an error.
    fn v2_chain(&self, dir: &Path, uid: u32) -> Result<Vec<PathBuf>, CgroupError> {
        let top = if uid == 0 {
            self.unified.clone()
        } else {
            self.bases(uid)?.remove(0).1
        };
        let Ok(below) = dir.strip_prefix(&top) else {
            return Err(CgroupError::Io {
                op: "enable controllers",
                path: dir.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::EACCES),
            });
        };
        let mut chain = vec![top.clone()];
        let mut at = top;
        for c in below.components() {
            at = at.join(c);
            chain.push(at.clone());
        }
        Ok(chain)
    }

    /// Writes `+memory +cpu +pids` (those `dir` does not hand down yet) to its
    /// `cgroup.subtree_control`.
    fn enable_in(&self, dir: &Path) -> Result<(), CgroupError> {
        let have = read(&dir.join("cgroup.subtree_control")).unwrap_or_default();
        let want: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| {
                !have
                    .split_whitespace()
                    .any(|x| x.trim_start_matches('+') == **c)
            })
            .map(|c| format!("+{c}"))
            .collect();
        if want.is_empty() {
            return Ok(());
        }
        write(&dir.join("cgroup.subtree_control"), &want.join(" "))
    }

    fn make(
        &self,
        dirs: Vec<(String, PathBuf)>,
        notes: Vec<String>,
        limits: &CgroupLimits,
    ) -> Result<RunCgroup, CgroupError> {
        let run = RunCgroup {
            version: self.version,
            dirs,
            notes,
        };
        for (i, (_, d)) in run.dirs.iter().enumerate() {
            // A name already taken is an error, never a cgroup shared with another run.
            if let Err(e) = std::fs::create_dir(d) {
                RunCgroup {
                    version: run.version,
                    dirs: run.dirs[..i].to_vec(),
                    notes: Vec::new(),
                }
                .remove();
                return Err(io(d, "mkdir")(e));
            }
        }
        let mut run = run;
        if let Err(e) = run.make_leaves().and_then(|()| run.set_limits(limits)) {
            run.remove();
            return Err(e);
        }
        Ok(run)
    }

    /// v2: the controllers must be enabled in every ancestor's subtree_control.
    /// Root enables them from the top; a delegated user only in its own base.
    fn enable_v2_controllers(
        &self,
        base: &Path,
        uid: u32,
        notes: &mut Vec<String>,
    ) -> Result<(), CgroupError> {
        let mut chain = vec![base.to_path_buf()];
        if uid == 0 {
            let mut p = base.parent();
            while let Some(d) = p {
                chain.push(d.to_path_buf());
                if d == self.unified {
                    break;
                }
                p = d.parent();
            }
        }
        for dir in chain.iter().rev() {
            if let Err(e) = self.enable_in(dir) {
                if dir == base {
                    return Err(e);
                }
                notes.push(format!("{e}"));
            }
        }
        Ok(())
    }

    /// Removes the cgroups of `uid`'s runs whose supervisor is gone (a crashed
    /// session holder's, for one), as creating a run does.
    pub fn clean_stale_runs(&self, uid: u32) {
        if let Ok(bases) = self.bases(uid) {
            self.clean_stale(&bases);
        }
    }

    fn clean_stale(&self, bases: &[(String, PathBuf)]) {
        for (c, b) in bases {
            let Ok(rd) = std::fs::read_dir(b) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("run-") && e.path().is_dir() && run_is_stale(&name) {
                    RunCgroup {
                        version: self.version,
                        dirs: vec![(c.clone(), e.path())],
                        notes: Vec::new(),
                    }
                    .remove();
                }
            }
        }
    }
}

impl RunCgroup {
    fn dir(&self, ctrl: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| self.version == Version::V2 || c == ctrl)
            .map(|(_, d)| d.as_path())
    }

    /// The cgroup the command and its services join ([`CELL`], in the memory
    /// hierarchy on v1).
    pub fn cell_dir(&self) -> Option<PathBuf> {
        self.dir("memory").map(|d| d.join(CELL))
    }

    /// The file of [`CELL`] the command writes "0" to, to move itself in, opened for
    /// writing (never created); the kernel checks the permission against the
    /// credentials and cgroup namespace of the opener, the supervisor. On v2
    /// `cgroup.procs`; on v1 `tasks`, which moves the writing thread alone: every
    /// process that joins is single-threaded (forked by PID 1), so that is the whole
    /// process, and a thread writing its own id ("0") to `tasks` is moved without the
    /// global thread-group lock a `cgroup.procs` write takes, whose first taking waits
    /// for an RCU grace period (about 10 ms, on the path from `oci start` to the
    /// command).
    pub fn open_cell_procs(&self) -> Result<std::os::fd::OwnedFd, CgroupError> {
        let p = self
            .cell_dir()
            .ok_or_else(|| CgroupError::NoController("memory".into()))?
            .join(match self.version {
                Version::V2 => "cgroup.procs",
                Version::V1 => "tasks",
            });
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map(std::os::fd::OwnedFd::from)
            .map_err(io(&p, "open"))
    }

    /// On v1, `tasks` of each of the run's cgroups opened for writing: a new init stage
    /// writes "0" to each before it executes (`spawn::spawn_init`), so that it starts
    /// in them without [`RunCgroup::attach`]'s `cgroup.procs` writes, each of which
    /// takes the global thread-group lock (its first taking waits for an RCU grace
    /// period). Empty on v2, where a thread moves alone only in threaded cgroups.
    pub fn open_join(&self) -> Result<Vec<std::os::fd::OwnedFd>, CgroupError> {
        if self.version == Version::V2 {
            return Ok(Vec::new());
        }
        self.dirs
            .iter()
            .map(|(_, d)| {
                let p = d.join("tasks");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(io(&p, "open"))
            })
            .collect()
    }

    /// Creates [`CELL`] (and [`INIT`] on v2, with the memory controller enabled
    /// below the run's cgroup).
    fn make_leaves(&self) -> Result<(), CgroupError> {
        let run = self
            .dir("memory")
            .ok_or_else(|| CgroupError::NoController("memory".into()))?
            .to_path_buf();
        let mut leaves = vec![run.join(CELL)];
        if self.version == Version::V2 {
            leaves.push(run.join(INIT));
        }
        for d in &leaves {
            std::fs::create_dir(d).map_err(io(d, "mkdir"))?;
        }
        if self.version == Version::V2 {
            write(&run.join("cgroup.subtree_control"), "+memory")?;
        }
        Ok(())
    }

    fn set_limits(&mut self, l: &CgroupLimits) -> Result<(), CgroupError> {
        match self.version {
            Version::V2 => {
                let d = self.dirs[0].1.clone();
                if let Some(m) = l.memory {
                    let cell = d.join(CELL);
                    write(&cell.join("memory.max"), &m.to_string())?;
                    // Swap accounting is on when an ancestor has the file too.
                    let swap = cell.join("memory.swap.max");
                    if exists_up(&cell, "memory.swap.max") {
                        write(&swap, "0")?;
                    } else {
                        self.notes
                            .push("memory.swap.max missing (no swap accounting)".into());
                    }
                }
                if let Some(c) = l.cpus {
                    let quota = ((c * CPU_PERIOD_US as f64) as u64).max(1000);
                    write(&d.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                if let Some(p) = l.pids {
                    write(&d.join("pids.max"), &p.to_string())?;
                }
            }
            Version::V1 => {
                if let (Some(m), Some(d)) = (l.memory, self.cell_dir()) {
                    write(&d.join("memory.limit_in_bytes"), &m.to_string())?;
                    let memsw = d.join("memory.memsw.limit_in_bytes");
                    if exists_up(&d, "memory.memsw.limit_in_bytes") {
                        write(&memsw, &m.to_string())?;
                    } else {
                        write(&d.join("memory.swappiness"), "0")?;
                        self.notes
                            .push("no swap accounting: swappiness 0 instead of memsw".into());
                    }
                }
                if let (Some(c), Some(d)) = (l.cpus, self.dir("cpu").map(Path::to_path_buf)) {
                    let quota = ((c * CPU_PERIOD_US as f64) as u64).max(1000);
                    write(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&d.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                if let (Some(p), Some(d)) = (l.pids, self.dir("pids").map(Path::to_path_buf)) {
                    write(&d.join("pids.max"), &p.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Moves a process (the init stage) into the run's cgroup(s).
    pub fn attach(&self, pid: u32) -> Result<(), CgroupError> {
        for (_, d) in &self.dirs {
            let d = match self.version {
                Version::V2 => d.join(INIT),
                Version::V1 => d.clone(),
            };
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Peak memory of the command's cgroup (what the limit applies to), CPU time of the
    /// whole run (v2; v1 keeps it in cpuacct), OOM kills in it.
    pub fn usage(&self) -> CgroupUsage {
        let mut u = CgroupUsage::default();
        let oom = |d: &Path, file: &str| {
            read(&d.join(file))
                .and_then(|s| keyed(&s, "oom_kill"))
                .unwrap_or(0)
        };
        match self.version {
            Version::V2 => {
                let d = &self.dirs[0].1;
                u.peak_memory_bytes =
                    read(&d.join(CELL).join("memory.peak")).and_then(|s| s.trim().parse().ok());
                // memory.events counts the sub-cgroups' events too.
                u.oom_kills = oom(d, "memory.events").max(oom(&d.join(CELL), "memory.events"));
                u.cpu_time_us = read(&d.join("cpu.stat")).and_then(|s| keyed(&s, "usage_usec"));
            }
            Version::V1 => {
                if let Some(d) = self.dir("memory") {
                    u.peak_memory_bytes = read(&d.join(CELL).join("memory.max_usage_in_bytes"))
                        .and_then(|s| s.trim().parse().ok());
                    u.oom_kills =
                        oom(d, "memory.oom_control") + oom(&d.join(CELL), "memory.oom_control");
                }
            }
        }
        u
    }

    /// Kills whatever is left in the run's cgroups and removes them, sub-cgroups
    /// first; waits up to a second for exiting processes to leave each.
    pub fn remove(&self) {
        for (_, d) in &self.dirs {
            remove_tree(d);
        }
    }
}

fn remove_tree(d: &Path) {
    if !on_cgroupfs(d) {
        // A plain directory tree standing in for cgroupfs (the unit tests' fixtures):
        // its files are real and must go first.
        let _ = std::fs::remove_dir_all(d);
        return;
    }
    // On cgroupfs every subdirectory is a sub-cgroup.
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    for attempt in 0..100 {
        let kill = d.join("cgroup.kill");
        if kill.exists() {
            let _ = std::fs::write(&kill, "1");
        } else {
            // Only processes inside this cgroup are listed here.
            for pid in read(&d.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        match std::fs::remove_dir(d) {
            Ok(()) => break,
            Err(e) if e.kind() == ErrorKind::NotFound => break,
            Err(_) if attempt < 99 => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v2(root: &Path) -> Hierarchy {
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let text = format!(
            "30 1 0:26 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            root.display()
        );
        let h = Hierarchy::from_mountinfo(&text, |p| std::fs::read_to_string(p).ok()).unwrap();
        // What a kernel with swap accounting shows in root's base.
        let base = root.join("nixcell.slice/user-0");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("memory.swap.max"), "max\n").unwrap();
        h
    }

    #[test]
    fn v2_run_limits_attach_usage_and_removal() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v2(t.path());
        assert_eq!(h.version, Version::V2);
        let limits = CgroupLimits {
            memory: Some(256 << 20),
            cpus: Some(1.5),
            pids: Some(64),
        };
        let run = h.create_run(0, &limits).unwrap();
        let d = run.dirs[0].1.clone();
        assert!(d.starts_with(t.path().join("nixcell.slice/user-0")));
        let rd = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        // Memory is limited for the command's sub-cgroup only, CPU and pids for the
        // whole run; PID 1's sub-cgroup has no limit of its own.
        assert_eq!(rd("cell/memory.max"), (256u64 << 20).to_string());
        assert_eq!(rd("cell/memory.swap.max"), "0");
        assert!(!d.join("memory.max").exists() && !d.join("init/memory.max").exists());
        assert_eq!(rd("cgroup.subtree_control"), "+memory");
        assert_eq!(rd("cpu.max"), "150000 100000");
        assert_eq!(rd("pids.max"), "64");
        assert_eq!(run.cell_dir().unwrap(), d.join("cell"));
        drop(run.open_cell_procs().unwrap_err());
        std::fs::write(d.join("cell/cgroup.procs"), "").unwrap();
        drop(run.open_cell_procs().unwrap());
        // Root enables the controllers along the whole path.
        for dir in [
            t.path().to_path_buf(),
            t.path().join("nixcell.slice"),
            t.path().join("nixcell.slice/user-0"),
        ] {
            let s = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap();
            for c in CONTROLLERS {
                // Written as "+controller"; cgroupfs shows the name alone.
                assert!(
                    s.split_whitespace()
                        .any(|x| x.trim_start_matches('+') == *c),
                    "{}: {s}",
                    dir.display()
                );
            }
        }
        run.attach(4242).unwrap();
        assert_eq!(rd("init/cgroup.procs"), "4242");
        std::fs::write(d.join("cell/memory.peak"), "123456\n").unwrap();
        std::fs::write(
            d.join("cell/memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(d.join("cpu.stat"), "usage_usec 7000\nuser_usec 5000\n").unwrap();
        assert_eq!(
            run.usage(),
            CgroupUsage {
                peak_memory_bytes: Some(123456),
                cpu_time_us: Some(7000),
                oom_kills: 1
            }
        );
        run.remove();
        assert!(!d.exists());
    }

    #[test]
    fn every_run_gets_its_own_cgroup_and_a_taken_name_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v2(t.path());
        let l = CgroupLimits {
            pids: Some(5),
            ..Default::default()
        };
        let a = h.create_run(0, &l).unwrap();
        let b = h.create_run(0, &l).unwrap();
        assert_ne!(a.dirs[0].1, b.dirs[0].1);
        assert!(a.dirs[0].1.is_dir() && b.dirs[0].1.is_dir());
        // Removing one leaves the other alone.
        b.remove();
        assert!(a.dirs[0].1.is_dir() && !b.dirs[0].1.exists());
        // Directories already there under the next names (other tests of this
        // process may take some) are not adopted, nor removed.
        let me = std::process::id();
        let n: u64 = run_name().rsplit('-').next().unwrap().parse().unwrap();
        let taken: Vec<PathBuf> = (n + 1..n + 65)
            .map(|k| {
                let d = t.path().join(format!(
                    "nixcell.slice/user-0/run-{me}-{}-{k}",
                    start_time(me).unwrap()
                ));
                std::fs::create_dir(&d).unwrap();
                std::fs::write(d.join("pids.max"), "7").unwrap();
                d
            })
            .collect();
        assert!(h.create_run(0, &l).is_err());
        for d in &taken {
            assert_eq!(std::fs::read_to_string(d.join("pids.max")).unwrap(), "7");
        }
        a.remove();
    }

    #[test]
    fn v2_named_paths_get_the_controllers_handed_down_to_them() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v2(t.path());
        let sc = |d: &Path| std::fs::read_to_string(d.join("cgroup.subtree_control")).unwrap();
        let pids = CgroupLimits {
            pids: Some(7),
            ..Default::default()
        };
        // Root, absolute: below the unified mount, every ancestor hands them down.
        let dirs = h.named_dirs(0, Path::new("/pod/ctr")).unwrap();
        assert_eq!(dirs, vec![(String::new(), t.path().join("pod/ctr"))]);
        let run = h.create_at(0, dirs, &pids).unwrap();
        for d in [t.path().to_path_buf(), t.path().join("pod")] {
            for c in ["+memory", "+cpu", "+pids"] {
                assert!(sc(&d).contains(c), "{}: {}", d.display(), sc(&d));
            }
        }
        assert_eq!(
            std::fs::read_to_string(t.path().join("pod/ctr/pids.max")).unwrap(),
            "7"
        );
        run.remove();
        assert!(!t.path().join("pod/ctr").exists() && t.path().join("pod").is_dir());
        // A delegated user, relative: below its base, from the base down only.
        std::fs::write(t.path().join("cgroup.subtree_control"), "").unwrap();
        let base = t.path().join("nixcell.slice/user-4321");
        std::fs::create_dir_all(&base).unwrap();
        let dirs = h.named_dirs(4321, Path::new("pod2/ctr")).unwrap();
        assert_eq!(dirs[0].1, base.join("pod2/ctr"));
        let run = h.create_at(4321, dirs, &pids).unwrap();
        assert_eq!(sc(t.path()), "");
        assert!(sc(&base).contains("+pids") && sc(&base.join("pod2")).contains("+pids"));
        run.remove();
        // The same user, a path outside its base: refused, nothing made.
        let dirs = h.named_dirs(4321, Path::new("/elsewhere/ctr")).unwrap();
        let e = h.create_at(4321, dirs, &pids).unwrap_err();
        assert!(e.to_string().contains("elsewhere"), "{e}");
        assert!(!t.path().join("elsewhere").exists());
    }

    #[test]
    fn v2_rootless_needs_a_delegated_base() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v2(t.path());
        let e = h.create_run(4321, &CgroupLimits::default()).unwrap_err();
        assert!(
            matches!(e, CgroupError::NotDelegated { uid: 4321, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("nixcell.slice/user-4321"), "{e}");
        // Delegated: only the user's own subtree_control is written.
        let base = t.path().join("nixcell.slice/user-4321");
        std::fs::create_dir_all(&base).unwrap();
        let run = h
            .create_run(
                4321,
                &CgroupLimits {
                    pids: Some(5),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("cgroup.subtree_control")).unwrap(),
            ""
        );
        assert!(
            std::fs::read_to_string(base.join("cgroup.subtree_control"))
                .unwrap()
                .contains("pids")
        );
        run.remove();
    }

    #[test]
    fn stale_runs_of_dead_supervisors_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v2(t.path());
        let base = t.path().join("nixcell.slice/user-0");
        // pid 1's start time is never 1; pid 999999999 does not exist.
        let stale = [base.join("run-999999999-5"), base.join("run-1-1")];
        let me = std::process::id();
        let live = base.join(format!("run-{me}-{}", start_time(me).unwrap()));
        for d in stale.iter().chain([&live]) {
            std::fs::create_dir_all(d).unwrap();
        }
        let other = base.join("not-a-run");
        std::fs::create_dir_all(&other).unwrap();
        let run = h.create_run(0, &CgroupLimits::default()).unwrap();
        for d in &stale {
            assert!(!d.exists(), "{}", d.display());
        }
        assert!(live.exists() && other.exists());
        run.remove();
    }

    #[test]
    fn v1_mountinfo_and_files() {
        let t = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for (i, c) in ["cpu,cpuacct", "memory", "pids"].iter().enumerate() {
            let m = t.path().join(c);
            std::fs::create_dir_all(&m).unwrap();
            text.push_str(&format!(
                "{i} 1 0:{i} / {} rw - cgroup cgroup rw,{c}\n",
                m.display()
            ));
        }
        text.push_str(&format!(
            "9 1 0:9 / {}/unified rw - cgroup2 cgroup2 rw\n",
            t.path().display()
        ));
        let h = Hierarchy::from_mountinfo(&text, |_| Some(String::new())).unwrap();
        let base = t.path().join("memory/nixcell/user-0");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("memory.memsw.limit_in_bytes"), "max\n").unwrap();
        assert_eq!(h.version, Version::V1);
        let run = h
            .create_run(
                0,
                &CgroupLimits {
                    memory: Some(1 << 30),
                    cpus: Some(0.5),
                    pids: Some(9),
                },
            )
            .unwrap();
        let dir = |c: &str| run.dir(c).unwrap().to_path_buf();
        let rd = |c: &str, f: &str| std::fs::read_to_string(dir(c).join(f)).unwrap();
        assert!(dir("cpu").starts_with(t.path().join("cpu,cpuacct/nixcell/user-0")));
        assert_eq!(
            rd("memory", "cell/memory.limit_in_bytes"),
            (1u64 << 30).to_string()
        );
        assert_eq!(
            rd("memory", "cell/memory.memsw.limit_in_bytes"),
            (1u64 << 30).to_string()
        );
        assert!(!dir("memory").join("memory.limit_in_bytes").exists());
        assert!(!dir("cpu").join(CELL).exists());
        run.attach(77).unwrap();
        for c in CONTROLLERS {
            assert_eq!(rd(c, "cgroup.procs"), "77");
        }
        assert_eq!(rd("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(rd("pids", "pids.max"), "9");
        std::fs::write(
            dir("memory").join("cell/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(dir("memory").join("cell/memory.max_usage_in_bytes"), "99\n").unwrap();
        let u = run.usage();
        assert_eq!((u.peak_memory_bytes, u.oom_kills), (Some(99), 2));
        run.remove();
    }
}
