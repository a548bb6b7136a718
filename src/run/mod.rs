//! The one way to run a cell: [`prepare`] a [`RunRequest`], then [`PreparedRun::run`].
//!
//! The pipeline (docs/ARCHITECTURE.md, data flow): the environment is resolved (I/O:
//! builds, the project, found once), the request is planned into a `RunSpec`, the
//! limits are decided by one rule ([`limits`]), the security layers and the cgroup are
//! prepared (`harden`), the supervisor runs the cell, copy-on-write changes come back,
//! and the verdict is built once, complete. Used by the command line; the MCP server
//! runs `nixcell run` as a child process (see `mcp`).

pub mod harden;
pub mod hints;
pub mod limits;
pub mod logs;
pub mod plan;
pub mod pty;
pub mod supervise;
pub mod verdict;

use crate::front::{EnvSources, FromProject};
use crate::nix::closure::Closure;
use crate::sandbox::RunSpec;
use harden::Hardening;
use limits::{Overrides, ProjectLimits};
use plan::CellRequest;
use verdict::Verdict;

/// Everything a run is made of, as its caller (the operator) gave it.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The cell: command, store paths, workdir, binds, identity.
    pub cell: CellRequest,
    /// Where the environment comes from when `cell.env_paths` is empty: `--with`,
    /// `--env` or the project.
    pub sources: EnvSources,
    /// The profile named by the operator; else the project's, else "default".
    pub profile: Option<String>,
    /// Limits the operator gave explicitly: each replaces the decided value.
    pub limits: Overrides,
    /// `--tmp-size` given explicitly (else the project's `limits.tmp_size`).
    pub tmp_size: Option<u64>,
    /// Loopback TCP ports added to the profile's Landlock allow list.
    pub allow_ports: Vec<u16>,
    /// Capture the command's output into the verdict instead of passing it through.
    pub capture: bool,
}

/// Set (to anything) in the environment of `nixcell run`, it reports the run's stages on
/// stderr as `nixcell: progress: ...` lines: the MCP server turns them into progress
/// notifications.
pub const PROGRESS_ENV: &str = "NIXCELL_PROGRESS";

/// The line that starts each progress report on stderr.
pub const PROGRESS_PREFIX: &str = "nixcell: progress: ";

fn progress_wanted() -> bool {
    std::env::var_os(PROGRESS_ENV).is_some()
}

fn progress(message: &str) {
    if progress_wanted() {
        eprintln!("{PROGRESS_PREFIX}{message}");
    }
}

/// Why a run could not start; nothing ran (exit 125).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Plan(#[from] plan::PlanError),
    #[error("set-up {0} (this kernel or user may not create namespaces; see 'nixcell doctor')")]
    Kernel(#[from] crate::sandbox::StageError),
    #[error("{0}")]
    Environment(anyhow::Error),
    #[error("--profile: {0}")]
    Profile(#[from] crate::profile::ProfileError),
    #[error("{0}")]
    Harden(#[from] harden::HardenError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Supervise(#[from] supervise::SuperviseError),
}

/// A run ready to start: planned, its limits decided, its cgroup created.
pub struct PreparedRun {
    spec: RunSpec,
    closure: Closure,
    hardening: Hardening,
    capture: bool,
    project: FromProject,
    /// What the run may get at most (the profile's, tightened by the project's).
    ceiling: crate::profile::Limits,
    /// Landlock's open TCP ports, when its TCP rules are enforced.
    tcp_ports: Option<Vec<u16>>,
    /// The slave of the cell's pty (`pty::shell`): the cell's stdio.
    terminal: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// Resolves the environment, plans the cell, decides its limits and prepares its
/// security layers. Nothing of the command runs yet.
pub fn prepare(req: RunRequest) -> Result<PreparedRun, RunError> {
    let RunRequest {
        mut cell,
        sources,
        profile,
        limits: flags,
        tmp_size,
        allow_ports,
        capture,
    } = req;
    if cell.argv.is_empty() {
        return Err(plan::PlanError::NoCommand.into());
    }
    // What the kernel cannot do fails the run before any Nix work (a build can take
    // minutes).
    crate::sandbox::ns::check_userns_possible()?;
    progress("resolving the environment (building it when its declaration changed)");
    let project = crate::front::resolve_env(&mut cell, &sources).map_err(RunError::Environment)?;
    progress("environment ready");
    if let (None, Some(t)) = (tmp_size, project.tmp_size_bytes) {
        cell.tmp_size_bytes = t;
    }
    let (mut spec, closure) = plan::plan(&cell)?;
    let name = profile
        .or_else(|| project.profile.clone())
        .unwrap_or_else(|| "default".to_string());
    let profile = crate::profile::load(&name)?;
    let asked = ProjectLimits {
        timeout: project.timeout,
        max_output: project.max_output_bytes,
    };
    let decided = limits::decide(&profile.limits, &asked, &flags);
    let ceiling = limits::ceiling(&profile.limits, &asked);
    let hardening = harden::prepare(&profile, decided, &allow_ports, &mut spec)?;
    let tcp_ports =
        harden::tcp_rules_enforced(&profile).then(|| spec.security.landlock.allow_ports.clone());
    Ok(PreparedRun {
        spec,
        closure,
        hardening,
        capture,
        project,
        ceiling,
        tcp_ports,
        terminal: None,
    })
}

impl PreparedRun {
    /// The limits the run got.
    pub fn limits(&self) -> &crate::profile::Limits {
        &self.hardening.limits
    }

    /// Runs the cell to its end (on a runtime of its own) and returns its verdict.
    pub fn run(self) -> Result<Verdict, RunError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RunError::Runtime)?;
        rt.block_on(self.run_async())
    }

    /// [`PreparedRun::run`] on the caller's runtime.
    pub async fn run_async(self) -> Result<Verdict, RunError> {
        let PreparedRun {
            spec,
            closure,
            hardening,
            capture,
            project,
            ceiling,
            tcp_ports,
            terminal,
        } = self;
        let mut opts = hardening.run_options(capture);
        if terminal.is_some() {
            opts.tee_stderr = false;
            opts.terminal = terminal;
        }
        if progress_wanted() {
            let services: Vec<String> = spec.services.iter().map(|s| s.name.clone()).collect();
            opts.on_event = Some(std::sync::Arc::new(move |e| {
                progress(&match e {
                    supervise::RunEvent::CellStarted => "cell started".to_string(),
                    supervise::RunEvent::CommandStarted if services.is_empty() => {
                        "command started".to_string()
                    }
                    supervise::RunEvent::CommandStarted => {
                        format!("services ready ({}); command started", services.join(", "))
                    }
                    supervise::RunEvent::CommandEnded => "command ended".to_string(),
                })
            }));
        }
        let mut outcome = supervise::run(&spec, &opts).await?;
        // A cell whose set-up failed never ran: it has no changes to bring back.
        let work_layer = outcome
            .work_layer
            .take()
            .filter(|_| outcome.setup_error.is_none());
        let (usage, oom_killed) = hardening.finish();
        // The cell is gone (its PID 1 and init stage have exited): its changes come back.
        let workdir = match (&work_layer, &spec.work, spec.sources.first()) {
            (Some(layer), Some(work), Some(dir)) => {
                let target = crate::changes::Target {
                    dir: dir.clone(),
                    path: spec.mounts[0].source.clone(),
                    owner: spec.mounts[0].owner,
                    chown: crate::sandbox::ns::is_host_root(),
                    protect: work.protect.clone(),
                };
                Some(crate::changes::apply(layer, &target))
            }
            _ => None,
        };
        drop(work_layer);
        // Hints suggest only edits the project's policy accepts (none without a project).
        let policy = project.policy.as_ref().map(|p| p as &dyn hints::EditPolicy);
        let package_set = project
            .package_set
            .as_ref()
            .map(|p| p as &dyn hints::PackageSetQuery);
        let end = hints::End {
            profile: hardening.profile.name.clone(),
            memory: hardening.limits.memory,
            memory_ceiling: ceiling.memory,
            timeout: hardening.limits.timeout,
            timeout_ceiling: ceiling.timeout,
            tcp_ports,
            ..Default::default()
        };
        Ok(verdict::build(
            &spec,
            &closure,
            outcome,
            verdict::Finish {
                profile: hardening.profile.name.clone(),
                layers: hardening.layers.clone(),
                usage,
                oom_killed,
                workdir,
                policy,
                package_set,
                end,
            },
        ))
    }
}
