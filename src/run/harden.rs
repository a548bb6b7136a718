//! The supervisor's side of the hardening layers: turns a profile (and the limits
//! decided for the run) into the spec's security layers, compiles the seccomp BPF, creates the
//! run's cgroup and attaches the cell to it, and reads usage and OOM kills after.

use crate::profile::{LayerMode, Limits, Profile};
use crate::sandbox::cgroup::{CgroupError, CgroupLimits, Hierarchy, RunCgroup};
use crate::sandbox::landlock::LandlockSpec;
use crate::sandbox::layers::{SeccompSpec, SecuritySpec};
use crate::sandbox::limits::RlimitSpec;
use crate::sandbox::proto::LayerReport;
use crate::sandbox::seccomp::{self, SeccompError};
use crate::sandbox::{RunSpec, WORKDIR_IN_CELL, WorkdirMode};
use crate::supervise::{BeforeSpec, RunOptions};
use crate::units::human_size;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    #[error("cgroup layer is required by the profile: {0}")]
    CgroupRequired(#[source] CgroupError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("{0}")]
    Mount(String),
}

/// Resource usage of a run.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Usage {
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time_ms: Option<f64>,
    /// "cgroup", or "rusage" (peak memory is then the largest single process).
    pub source: std::borrow::Cow<'static, str>,
}

/// The hardening of one run, prepared before it starts.
pub struct Hardening {
    pub profile: Profile,
    pub limits: Limits,
    cgroup: Option<Arc<RunCgroup>>,
    /// `cgroup.procs` of the command's sub-cgroup, opened by us (see cgroup::CELL).
    cell_procs: Option<Arc<std::os::fd::OwnedFd>>,
    /// The run's cgroups a new init stage joins itself (v1; `RunCgroup::open_join`).
    init_join: Arc<Vec<std::os::fd::OwnedFd>>,
    /// Layers the supervisor enforces (cgroup), reported with the cell's own.
    pub layers: Vec<LayerReport>,
}

/// Whether Landlock's TCP rules apply to runs of `profile` on this kernel.
pub fn tcp_rules_enforced(profile: &Profile) -> bool {
    profile.landlock.mode != LayerMode::Off
        && profile.landlock.features.tcp != LayerMode::Off
        && crate::doctor::landlock_abi().is_some_and(|abi| abi >= 4)
}

/// Fills `spec.security` from the profile and the run's `limits` (decided by
/// `run::limits`), and creates the run's cgroup. `extra_ports` are loopback TCP ports
/// added to the profile's Landlock allow list.
pub fn prepare(
    profile: &Profile,
    limits: Limits,
    extra_ports: &[u16],
    spec: &mut RunSpec,
) -> Result<Hardening, HardenError> {
    let fs = &profile.filesystem;
    let host = (spec.identity.host_uid, spec.identity.host_gid);
    for m in &mut spec.mounts {
        if m.dest == std::path::Path::new(WORKDIR_IN_CELL) {
            match fs.workdir {
                WorkdirMode::Cow => {
                    if let Some(w) = &mut spec.work {
                        // tmpfs pages are charged to the cell's memory cgroup.
                        w.size_bytes = crate::run::limits::work_size(fs, &limits);
                        w.inodes = fs.work_inodes;
                    }
                }
                WorkdirMode::Bind | WorkdirMode::Ro => {
                    let protect = spec.work.take().map(|w| w.protect).unwrap_or_default();
                    if fs.workdir == WorkdirMode::Bind && !protect.is_empty() {
                        return Err(HardenError::Mount(format!(
                            "workdir = \"bind\": {} holds {} that a cell may not change; \
                             a project's workdir is copy-on-write or read-only",
                            m.source.display(),
                            protect
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                    m.writable = fs.workdir == WorkdirMode::Bind;
                }
            }
        }
        // A live writable mount is only ever the cell's own: no id mapping makes
        // another owner's inodes (root's above all) writable by the cell.
        let live_rw =
            m.writable && !(m.dest == std::path::Path::new(WORKDIR_IN_CELL) && spec.work.is_some());
        if live_rw
            && let Some(r) = crate::dirs::trusted_roots()
                .into_iter()
                .find(|r| r.starts_with(&m.source))
        {
            return Err(HardenError::Mount(format!(
                "{}: holds nixcell's own {} and would be writable by the cell; use the \
                 copy-on-write workdir or a directory that does not contain it",
                m.source.display(),
                r.display()
            )));
        }
        if live_rw && !spec.identity.owns_host(m.owner) {
            let what = if m.dest == std::path::Path::new(WORKDIR_IN_CELL) {
                "the workdir (profile workdir = \"bind\")".to_string()
            } else {
                format!("--bind {}", m.source.display())
            };
            return Err(HardenError::Mount(format!(
                "{what}: {} belongs to uid {}, not to the cell's host identity {}; a live \
                 read-write mount must belong to the cell (use the copy-on-write workdir, \
                 or --host-uid when started as root)",
                m.source.display(),
                m.owner.0,
                host.0
            )));
        }
    }
    spec.tmp_inodes = fs.tmp_inodes;
    let mut rl = RlimitSpec {
        mode: profile.rlimits,
        open_files: limits.open_files,
        file_size: limits.file_size,
        cpu_seconds: limits.cpu_seconds,
        nproc: None,
        address_space: None,
    };
    let live_rw = spec.mounts.iter().any(|m| {
        m.writable && !(m.dest == std::path::Path::new(WORKDIR_IN_CELL) && spec.work.is_some())
    });
    let mut seccomp_spec = if profile.seccomp.mode == LayerMode::Off {
        SeccompSpec::default()
    } else {
        SeccompSpec {
            mode: profile.seccomp.mode,
            compiled: seccomp::compile(&profile.seccomp)?,
        }
    };
    // With a live read-write mount of the host, no setuid/setgid bit may be made.
    if live_rw && seccomp_spec.mode != LayerMode::Off {
        let mut filters = seccomp_spec.compiled.filters.clone();
        filters.splice(0..0, seccomp::no_setid_bits()?);
        seccomp_spec.compiled.filters = filters;
    }

    let mut layers = Vec::new();
    let mut cgroup = None;
    let mut cell_procs = None;
    let mut init_join = Arc::default();
    let wanted = CgroupLimits {
        memory: limits.memory,
        cpus: limits.cpus,
        pids: limits.pids,
    };
    let any = wanted != CgroupLimits::default();
    let fallback = |rl: &mut RlimitSpec, layers: &mut Vec<LayerReport>, why: String| {
        rl.nproc = limits.pids;
        rl.address_space = limits.memory;
        if rl.mode == LayerMode::Off {
            rl.mode = LayerMode::BestEffort;
        }
        layers.push(LayerReport {
            layer: "cgroup".into(),
            enforced: false,
            detail: format!(
                "{why}; fallback: rlimits nproc={} (per user namespace) and address space={} (virtual memory, not resident); no CPU quota, no OOM report",
                limits.pids.map_or("none".into(), |p| p.to_string()),
                limits.memory.map_or("none".into(), human_size),
            ),
        });
    };
    match profile.cgroup {
        LayerMode::Off => layers.push(LayerReport {
            layer: "cgroup".into(),
            enforced: false,
            detail: "off in the profile".into(),
        }),
        _ if !any => layers.push(LayerReport {
            layer: "cgroup".into(),
            enforced: false,
            detail: "no memory, cpu or pids limit asked for".into(),
        }),
        mode => {
            let uid = nix::unistd::geteuid().as_raw();
            let made = Hierarchy::detect()
                .and_then(|h| h.create_run(uid, &wanted))
                .and_then(|run| match open_joins(&run) {
                    Ok(fds) => Ok((run, fds)),
                    Err(e) => {
                        run.remove();
                        Err(e)
                    }
                });
            match made {
                Ok((run, (fd, join))) => {
                    let mut d = format!("cgroup {:?}:", run.version).to_lowercase();
                    if let Some(m) = limits.memory {
                        d.push_str(&format!(" memory {} (no swap)", human_size(m)));
                    }
                    if let Some(c) = limits.cpus {
                        d.push_str(&format!(", cpu {c} CPUs"));
                    }
                    if let Some(p) = limits.pids {
                        d.push_str(&format!(", pids {p}"));
                    }
                    for n in &run.notes {
                        d.push_str(&format!("; {n}"));
                    }
                    if limits.memory.is_some() {
                        d.push_str("; the memory limit is the command's, PID 1 lives outside it");
                    }
                    layers.push(LayerReport {
                        layer: "cgroup".into(),
                        enforced: true,
                        detail: d,
                    });
                    cgroup = Some(Arc::new(run));
                    cell_procs = Some(Arc::new(fd));
                    init_join = Arc::new(join);
                }
                Err(e) if mode == LayerMode::Required => {
                    return Err(HardenError::CgroupRequired(e));
                }
                Err(e) => fallback(&mut rl, &mut layers, e.to_string()),
            }
        }
    }
    // The cell's own services listen on loopback ports the command must reach.
    let mut allow_ports = profile.landlock.allow_ports.clone();
    allow_ports.extend(spec.services.iter().filter_map(|s| s.ready_port));
    allow_ports.extend(extra_ports);
    allow_ports.sort_unstable();
    allow_ports.dedup();
    spec.security = SecuritySpec {
        landlock: LandlockSpec {
            mode: profile.landlock.mode,
            features: profile.landlock.features,
            allow_ports,
        },
        seccomp: seccomp_spec,
        rlimits: rl,
        join_cell_cgroup: cell_procs.is_some(),
        ..Default::default()
    };
    Ok(Hardening {
        profile: profile.clone(),
        limits,
        cgroup,
        cell_procs,
        init_join,
        layers,
    })
}

/// The command's cell `cgroup.procs` (or `tasks`) and the files a new init stage
/// joins the run's cgroups through.
fn open_joins(
    run: &RunCgroup,
) -> Result<(std::os::fd::OwnedFd, Vec<std::os::fd::OwnedFd>), CgroupError> {
    Ok((run.open_cell_procs()?, run.open_join()?))
}

impl Hardening {
    /// The supervisor's options: timeout, grace, output cap and the cgroup attach.
    pub fn run_options(&self, capture: bool) -> RunOptions {
        let before_spec: Option<BeforeSpec> = self.cgroup.clone().map(|cg| {
            let hook: BeforeSpec = Arc::new(move |pid: u32| {
                cg.attach(pid)
                    .map_err(|e| format!("cannot attach the cell to its cgroup: {e}"))
            });
            hook
        });
        RunOptions {
            capture,
            // Passed-through stderr is kept for hints unless it is a terminal.
            tee_stderr: !capture && !std::io::IsTerminal::is_terminal(&std::io::stderr()),
            max_output: self.limits.max_output as usize,
            timeout: self.limits.timeout,
            grace: self.limits.grace,
            before_spec,
            cell_cgroup: self.cell_procs.clone(),
            init_join: self.init_join.clone(),
            on_event: None,
            stdio: None,
            signals: None,
            init_source: None,
        }
    }

    /// Usage of the cell so far, while it runs (a session's): None without a cgroup.
    pub fn usage_now(&self) -> Option<crate::sandbox::cgroup::CgroupUsage> {
        self.cgroup.as_ref().map(|cg| cg.usage())
    }

    /// Moves the run's cgroup to `path` (an OCI container's `linux.cgroupsPath`):
    /// made there with the same limits, the one `prepare` made removed. Before the
    /// cell starts only. `Ok(Some(why))` when it is not moved (no cgroup layer), Err when the cgroup cannot be made there.
    pub fn place_cgroup(&mut self, path: &std::path::Path) -> Result<Option<String>, String> {
        if self.cgroup.is_none() {
            return Ok(Some("the cell has no cgroup (see the cgroup layer)".into()));
        }
        let wanted = CgroupLimits {
            memory: self.limits.memory,
            cpus: self.limits.cpus,
            pids: self.limits.pids,
        };
        let h = Hierarchy::detect().map_err(|e| e.to_string())?;
        let uid = nix::unistd::geteuid().as_raw();
        let dirs = h.named_dirs(uid, path).map_err(|e| e.to_string())?;
        let run = h.create_at(uid, dirs, &wanted).map_err(|e| e.to_string())?;
        let (fd, join) = match open_joins(&run) {
            Ok(fds) => fds,
            Err(e) => {
                run.remove();
                return Err(e.to_string());
            }
        };
        if let Some(l) = self.layers.iter_mut().find(|l| l.layer == "cgroup") {
            l.detail.push_str(&format!(
                "; at {}",
                run.dirs
                    .iter()
                    .map(|(_, d)| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(old) = self.cgroup.replace(Arc::new(run)) {
            old.remove();
        }
        self.cell_procs = Some(Arc::new(fd));
        self.init_join = Arc::new(join);
        Ok(None)
    }

    /// The run's cgroup: its version and (controller, dir) pairs, None without one.
    pub fn cgroup_dirs(
        &self,
    ) -> Option<(
        crate::sandbox::cgroup::Version,
        Vec<(String, std::path::PathBuf)>,
    )> {
        self.cgroup.as_ref().map(|c| (c.version, c.dirs.clone()))
    }

    /// Adds a made cgroup of one more v1 hierarchy (cpuset) to the run's: the cell is
    /// attached to it and it is removed with the rest. Before the cell starts only.
    pub fn add_cgroup_dir(&mut self, ctrl: &str, dir: std::path::PathBuf) -> Result<(), String> {
        let run = self
            .cgroup
            .as_mut()
            .and_then(Arc::get_mut)
            .ok_or("the run's cgroup is shared already")?;
        if run.version == crate::sandbox::cgroup::Version::V1 {
            let p = dir.join("tasks");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            Arc::get_mut(&mut self.init_join)
                .ok_or("the run's cgroup is shared already")?
                .push(f.into());
        }
        run.dirs.push((ctrl.to_string(), dir));
        Ok(())
    }

    /// Keeps the run's cgroup past this value (an OCI container outlives its creator):
    /// its (controller, dir) pairs, for whoever removes it later.
    pub fn keep_cgroup(&mut self) -> Option<Vec<(String, std::path::PathBuf)>> {
        self.cgroup.take().map(|c| c.dirs.clone())
    }

    /// Reads usage and OOM kills and removes the cgroup: (usage, oom_killed). With
    /// `shared` (a process that runs many cells: `nixcell serve`), this process's
    /// children are not the run's alone: their rusage is not taken for it.
    pub fn finish(&self, shared: bool) -> (Usage, bool) {
        let ru = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
            .ok()
            .filter(|_| !shared);
        let ru_cpu = ru.map(|r| {
            let t = |tv: nix::sys::time::TimeVal| {
                tv.tv_sec() as f64 * 1000.0 + tv.tv_usec() as f64 / 1000.0
            };
            t(r.user_time()) + t(r.system_time())
        });
        let ru_peak = ru.map(|r| r.max_rss() as u64 * 1024);
        match &self.cgroup {
            Some(cg) => {
                let u = cg.usage();
                cg.remove();
                (
                    Usage {
                        peak_memory_bytes: u.peak_memory_bytes.or(ru_peak),
                        cpu_time_ms: u.cpu_time_us.map(|us| us as f64 / 1000.0).or(ru_cpu),
                        source: "cgroup".into(),
                    },
                    u.oom_kills > 0,
                )
            }
            None => (
                Usage {
                    peak_memory_bytes: ru_peak,
                    cpu_time_ms: ru_cpu,
                    source: "rusage".into(),
                },
                false,
            ),
        }
    }
}

impl Drop for Hardening {
    fn drop(&mut self) {
        if let Some(cg) = &self.cgroup {
            cg.remove();
        }
    }
}
