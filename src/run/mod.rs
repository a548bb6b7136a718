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
    /// Network allow entries the operator adds (`--allow-host`).
    pub allow_hosts: Vec<crate::net::Entry>,
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
    #[error("network proxy: {0}")]
    Proxy(std::io::Error),
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
    /// The run's network policy, and its proxy when the policy allows names.
    network: crate::net::NetPolicy,
    proxy: Option<crate::net::Proxy>,
    /// A caller's own stdio and signals (`nixcell serve`), see [`PreparedRun::for_caller`].
    caller: Option<Caller>,
    /// The slave of the cell's pty (`pty::shell`), three times: the cell's stdio.
    terminal: Option<std::sync::Arc<[std::os::fd::OwnedFd; 3]>>,
}

/// The process a run is for when it is not this one (`nixcell serve`): its stdin,
/// stdout and stderr, and the signals it passes on.
pub struct Caller {
    pub stdio: std::sync::Arc<[std::os::fd::OwnedFd; 3]>,
    pub signals: tokio::sync::watch::Receiver<i32>,
    /// Init stages started ahead, spawned on the runtime the run goes on.
    pub init_source: Option<supervise::InitSource>,
    /// Set when the run's init stage was one of `init_source`'s.
    pub pooled: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
        allow_hosts,
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
    let network = limits::network(&profile.network, project.network.as_ref(), &allow_hosts);
    let mut allow_ports = allow_ports;
    let proxy = if network.allow.is_empty() {
        None
    } else {
        let proxy = crate::net::Proxy::bind(network.clone()).map_err(RunError::Proxy)?;
        add_proxy(&mut spec, &proxy.socket()).map_err(RunError::Proxy)?;
        allow_ports.push(crate::net::PORT_IN_CELL);
        Some(proxy)
    };
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
        network,
        proxy,
        caller: None,
        terminal: None,
    })
}

/// Points the cell at the proxy: its socket bound read-only into the cell (opened
/// here, mounted from the descriptor), the forwarder, the proxy variables.
fn add_proxy(spec: &mut RunSpec, socket: &std::path::Path) -> std::io::Result<()> {
    let opened = plan::open_host_path(socket)?;
    spec.mounts.push(crate::sandbox::BindMount {
        source: opened.real,
        dest: crate::net::SOCKET_IN_CELL.into(),
        writable: false,
        is_dir: false,
        dev: opened.st.st_dev,
        ino: opened.st.st_ino,
        owner: (opened.st.st_uid, opened.st.st_gid),
    });
    spec.sources.push(std::sync::Arc::new(opened.fd));
    spec.net = Some(crate::sandbox::forward::NetSpec {
        port: crate::net::PORT_IN_CELL,
        socket: crate::net::SOCKET_IN_CELL.into(),
    });
    let vars = crate::net::proxy_env();
    spec.env.retain(|(k, _)| !vars.iter().any(|(v, _)| v == k));
    spec.env.extend(vars);
    Ok(())
}

/// Once the command has started, the cell's mounts are made and the proxy's socket
/// needs no name on the host any more (the mount holds it): removed then, so that a
/// supervisor killed later leaves nothing of it in /tmp. `then` is the caller's hook.
fn unlink_proxy_when_started(
    proxy: &crate::net::Proxy,
    then: Option<supervise::OnEvent>,
) -> supervise::OnEvent {
    let socket = proxy.socket();
    std::sync::Arc::new(move |e| {
        if e == supervise::RunEvent::CommandStarted {
            let _ = std::fs::remove_file(&socket);
            if let Some(dir) = socket.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        if let Some(f) = &then {
            f(e)
        }
    })
}

/// Set in the environment of a session cell's services and execs.
pub const SESSION_ENV: &str = "NIXCELL_SESSION";

/// A prepared run taken apart for a session cell (src/session/): its spec marked as a
/// session's, and what the verdicts of its execs are built from.
pub struct SessionParts {
    pub spec: RunSpec,
    pub closure: Closure,
    pub hardening: Hardening,
    pub project: FromProject,
    pub ceiling: crate::profile::Limits,
    pub tcp_ports: Option<Vec<u16>>,
    /// The cell's network policy, and its proxy (not started yet) when the policy
    /// allows names: the session's holder serves it as long as the cell lives.
    pub network: crate::net::NetPolicy,
    pub proxy: Option<crate::net::Proxy>,
}

/// The network part of a verdict's hints: what the policy allows and what the proxy
/// refused.
pub fn network_end(end: &mut hints::End, network: &crate::net::NetworkReport) {
    end.network_allowed = network.allowed.clone();
    end.network_denied = network
        .denied
        .iter()
        .map(|d| (d.host.clone(), d.port, d.reason.clone(), d.address.clone()))
        .collect();
}

impl PreparedRun {
    /// This run as a session cell: PID 1 keeps it, and its services, until it is
    /// stopped; commands come one by one (`nixcell exec`).
    pub fn into_session(self) -> SessionParts {
        let mut spec = self.spec;
        spec.session = true;
        // Services may keep their data where it lasts (src/env/declare/eval.nix).
        spec.env.push((SESSION_ENV.to_string(), "1".to_string()));
        SessionParts {
            spec,
            closure: self.closure,
            hardening: self.hardening,
            project: self.project,
            ceiling: self.ceiling,
            tcp_ports: self.tcp_ports,
            network: self.network,
            proxy: self.proxy,
        }
    }

    /// The limits the run got.
    pub fn limits(&self) -> &crate::profile::Limits {
        &self.hardening.limits
    }

    /// The run is another process's: the cell gets its stdio, and its signals.
    pub fn for_caller(mut self, caller: Caller) -> Self {
        self.caller = Some(caller);
        self
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
            network,
            mut proxy,
            caller,
            terminal,
        } = self;
        if let Some(p) = &mut proxy {
            p.start().map_err(RunError::Proxy)?;
        }
        let mut opts = hardening.run_options(capture);
        let pooled = caller.as_ref().map(|c| c.pooled.clone());
        if let Some(c) = caller {
            // Passed-through stderr is kept for hints unless it is a terminal: the
            // caller's, not ours.
            opts.tee_stderr = !capture && !nix::unistd::isatty(&c.stdio[2]).unwrap_or(false);
            opts.stdio = Some(c.stdio);
            opts.signals = Some(c.signals);
            opts.init_source = c.init_source;
        }
        if let Some(t) = terminal {
            // The pty is the cell's stdin, stdout and stderr; nothing is teed.
            opts.tee_stderr = false;
            opts.stdio = Some(t);
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
        if let Some(p) = &proxy {
            opts.on_event = Some(unlink_proxy_when_started(p, opts.on_event.take()));
        }
        let mut outcome = supervise::run(&spec, &opts).await?;
        let network = match &proxy {
            Some(p) => p.report(),
            None => crate::net::NetworkReport::of(&network),
        };
        drop(proxy);
        if let Some(p) = &pooled {
            p.store(outcome.pooled, std::sync::atomic::Ordering::SeqCst);
        }
        // A cell whose set-up failed never ran: it has no changes to bring back.
        let work_layer = outcome
            .work_layer
            .take()
            .filter(|_| outcome.setup_error.is_none());
        let (usage, oom_killed) = hardening.finish(pooled.is_some());
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
        let network_editable = match &project.policy {
            Some(policy) => network
                .denied
                .iter()
                .map(|d| format!("{}:{}", d.host, d.port))
                .filter(|e| {
                    crate::edit::network::check(
                        policy,
                        &hardening.profile.network,
                        project.network.as_ref(),
                        e,
                    )
                    .is_ok()
                })
                .collect(),
            None => Vec::new(),
        };
        let mut end = hints::End {
            network_editable,
            profile: hardening.profile.name.clone(),
            memory: hardening.limits.memory,
            memory_ceiling: ceiling.memory,
            timeout: hardening.limits.timeout,
            timeout_ceiling: ceiling.timeout,
            tcp_ports,
            ..Default::default()
        };
        network_end(&mut end, &network);
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
                network,
            },
        ))
    }
}
