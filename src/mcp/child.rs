//! Tools run through nixcell's own command line, as child processes of the server
//! (see the module doc of `mcp`): spawning them, their progress lines, their output.

use super::*;

impl Inner {
    /// Runs this binary with `args` (cwd: the project, if any), feeding `stdin`, and
    /// forwarding each stderr line to `progress`.
    pub(super) async fn nixcell(
        &self,
        args: &[String],
        stdin: Option<&[u8]>,
        progress: Option<&Progress>,
    ) -> Result<Child, McpError> {
        self.nixcell_cancellable(args, stdin, progress, None).await
    }

    /// [`Inner::nixcell`], ended early when `cancel` fires: the child gets SIGTERM (a
    /// `nixcell run` then kills its cell after the profile's grace time, removes its
    /// cgroup and prints its verdict), and SIGKILL after [`CANCEL_KILL_AFTER`] if it
    /// is still there; its output is read to the end either way.
    pub(super) async fn nixcell_cancellable(
        &self,
        args: &[String],
        stdin: Option<&[u8]>,
        progress: Option<&Progress>,
        cancel: Option<&CancellationToken>,
    ) -> Result<Child, McpError> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        if progress.is_some_and(|p| p.token.is_some()) {
            cmd.env(crate::run::PROGRESS_ENV, "1");
        }
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Target::Project(dir) = &self.target {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| McpError::Spawn(self.exe.clone(), e))?;
        let feed = child.stdin.take().zip(stdin.map(<[u8]>::to_vec));
        let feed = async move {
            if let Some((mut w, data)) = feed {
                // A command that does not read its input closes the pipe early.
                let _ = w.write_all(&data).await;
            }
        };
        let mut out = child.stdout.take().expect("piped stdout");
        let read_out = async move {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v).await;
            v
        };
        let err = child.stderr.take().expect("piped stderr");
        let read_err = async move {
            let mut lines = tokio::io::BufReader::new(err).lines();
            let mut all = String::new();
            let mut n = 0u64;
            while let Ok(Some(l)) = lines.next_line().await {
                n += 1;
                // nixcell's own progress lines, and nix's build and download steps
                // in short (`building NAME`, `downloading NAME from URL`).
                let shown = match l.strip_prefix(crate::run::PROGRESS_PREFIX) {
                    Some(s) => Some(s.to_string()),
                    None => crate::nix::build::Step::parse(&l).map(|s| s.to_string()),
                };
                if let (Some(p), Some(shown)) = (progress, shown) {
                    p.report(n, shown).await;
                }
                all.push_str(&l);
                all.push('\n');
            }
            all
        };
        let io = async { tokio::join!(feed, read_out, read_err) };
        tokio::pin!(io);
        let never = CancellationToken::new();
        let cancel = cancel.unwrap_or(&never);
        let mut cancelled = false;
        let ((), stdout, stderr) = tokio::select! {
            r = &mut io => r,
            _ = cancel.cancelled() => {
                cancelled = true;
                if let Some(pid) = child.id() {
                    // Our own child, not reaped yet: the pid is still its.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                tokio::select! {
                    r = &mut io => r,
                    _ = tokio::time::sleep(CANCEL_KILL_AFTER) => {
                        let _ = child.start_kill();
                        io.await
                    }
                }
            }
        };
        let status = child
            .wait()
            .await
            .map_err(|e| McpError::Spawn(self.exe.clone(), e))?;
        if cancelled {
            return Err(McpError::Cancelled);
        }
        Ok(Child {
            code: status.code(),
            stdout,
            stderr,
        })
    }

    /// The profile runs use (the one given, else the project's, else "default") and
    /// the project.
    fn profile_and_project(
        &self,
    ) -> Result<(crate::profile::Profile, Option<crate::project::Project>), McpError> {
        let project = match &self.target {
            Target::Project(dir) => Some(
                crate::project::Project::discover(dir)
                    .map_err(|e| McpError::Request(e.to_string()))?,
            ),
            Target::EnvPaths(_) => None,
        };
        let name = self
            .profile
            .clone()
            .or_else(|| project.as_ref().and_then(|p| p.config.profile.clone()))
            .unwrap_or_else(|| "default".into());
        let profile = crate::profile::load(&name)
            .map_err(|e| McpError::Request(format!("profile {name}: {e}")))?;
        Ok((profile, project))
    }

    /// The most a client's run may ask for: the limits of the profile runs use,
    /// tightened by the project's own (`run::limits::ceiling`).
    pub(super) fn ceiling(&self) -> Result<crate::profile::Limits, McpError> {
        let (profile, project) = self.profile_and_project()?;
        let asked = project.map_or_else(Default::default, |p| crate::run::limits::ProjectLimits {
            timeout: p.limits.timeout,
            max_output: p.limits.max_output_bytes,
        });
        Ok(crate::run::limits::ceiling(&profile.limits, &asked))
    }

    /// The loopback TCP ports the profile opens: those a client's run may name.
    pub(super) fn open_ports(&self) -> Result<Vec<u16>, McpError> {
        Ok(self.profile_and_project()?.0.landlock.allow_ports)
    }

    pub(super) fn project_args(&self) -> Result<Vec<String>, McpError> {
        match &self.target {
            Target::Project(dir) => Ok(vec!["--project".into(), dir.display().to_string()]),
            Target::EnvPaths(_) => Err(McpError::Request(
                "this server serves fixed store paths, not a project: there is no declaration to edit (start it with `nixcell mcp --project DIR`)".into(),
            )),
        }
    }

    /// `nixcell context` describing this server's runs: its project and profile, MCP.
    fn context_args(&self) -> Result<Vec<String>, McpError> {
        let mut args = self.project_args()?;
        args.push("--mcp".into());
        if let Some(p) = &self.profile {
            args.extend(["--profile".into(), p.clone()]);
        }
        Ok(args)
    }

    /// The context as (JSON, Markdown).
    pub(super) async fn context(
        &self,
        progress: Option<&Progress>,
    ) -> Result<(serde_json::Value, String), McpError> {
        match &self.target {
            Target::Project(_) => {
                let mut json_args = vec!["context".to_string(), "--json".into()];
                json_args.extend(self.context_args()?);
                if let Some(p) = progress {
                    p.report(
                        0,
                        "context: reading the environment (building it when its declaration changed)"
                            .into(),
                    )
                    .await;
                }
                let c = self.nixcell(&json_args, None, progress).await?;
                if let Some(p) = progress {
                    let n = c.stderr.lines().count() as u64 + 1;
                    p.report(n, "context: environment ready".into()).await;
                }
                let json: serde_json::Value = if c.code == Some(0) {
                    serde_json::from_slice(&c.stdout).map_err(|e| McpError::Command {
                        command: "context".into(),
                        message: format!("no JSON on stdout: {e}"),
                    })?
                } else {
                    return Err(McpError::Command {
                        command: "context".into(),
                        message: c.stderr.trim().to_string(),
                    });
                };
                let mut md_args = vec!["context".to_string()];
                md_args.extend(self.context_args()?);
                let c = self.nixcell(&md_args, None, None).await?;
                if c.code != Some(0) {
                    return Err(McpError::Command {
                        command: "context".into(),
                        message: c.stderr.trim().to_string(),
                    });
                }
                Ok((json, String::from_utf8_lossy(&c.stdout).into_owned()))
            }
            Target::EnvPaths(paths) => env_paths_context(paths, self.profile.as_deref()),
        }
    }
}

/// The context of plain store paths under `profile`: what is on PATH, what a run may
/// write, its limits, and that nothing can be edited.
pub(super) fn env_paths_context(
    paths: &[PathBuf],
    profile: Option<&str>,
) -> Result<(serde_json::Value, String), McpError> {
    let name = profile.unwrap_or("default");
    let profile = crate::profile::load(name)
        .map_err(|e| McpError::Request(format!("profile {name}: {e}")))?;
    let limits = crate::run::limits::mcp::defaults(&profile.limits);
    let work_ro = profile.filesystem.workdir == crate::sandbox::WorkdirMode::Ro;
    let (writable, work_line) = if work_ro {
        (
            vec!["/tmp"],
            "- Writable: /tmp only; /work (a fresh directory per run, with the files you pass) is read-only under this profile (EROFS).",
        )
    } else {
        (
            vec!["/work (a fresh directory per run)", "/tmp"],
            "- Writable: /work (a fresh directory per run, with the files you pass) and /tmp.",
        )
    };
    let mut limit_parts = Vec::new();
    if let Some(m) = limits.memory {
        limit_parts.push(format!("memory {} MiB (then OOM-killed)", m >> 20));
    }
    if let Some(t) = limits.timeout {
        limit_parts.push(format!("timeout {} s", t.as_secs()));
    }
    if let Some(p) = limits.pids {
        limit_parts.push(format!("{p} processes+threads"));
    }
    limit_parts.push(format!(
        "output {} bytes kept per stream",
        limits.max_output
    ));
    // Landlock's open ports: the profile's, and the proxy's when it allows names.
    let mut open_ports = profile.landlock.allow_ports.clone();
    if !profile.network.allow.is_empty() {
        open_ports.push(crate::net::PORT_IN_CELL);
    }
    let tcp_ports = crate::harden::tcp_rules_enforced(&profile).then_some(open_ports);
    let tcp = if let Some(open) = &tcp_ports {
        if open.is_empty() {
            "; TCP connect/bind denied (EACCES) on every port".to_string()
        } else {
            format!(
                "; TCP connect/bind only on 127.0.0.1 ports {}",
                open.iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    } else {
        String::new()
    };
    let allowed: Vec<String> = profile
        .network
        .allow
        .iter()
        .map(|e| e.to_string())
        .collect();
    let (network, net_line) = if allowed.is_empty() {
        (
            "loopback only".to_string(),
            format!("loopback only{tcp}; no outside host is reachable"),
        )
    } else {
        let through = format!(
            "through nixcell's proxy at http://127.0.0.1:{} (HTTP_PROXY, HTTPS_PROXY and ALL_PROXY point to it) only {}",
            crate::net::PORT_IN_CELL,
            allowed.join(", ")
        );
        (
            format!("loopback and, {through}"),
            format!("loopback{tcp}, and {through}; everything else is refused"),
        )
    };
    let store = crate::nix::closure::store_dir();
    let roots = paths
        .iter()
        .map(|p| crate::nix::closure::resolve_root(p, &store))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| McpError::Request(e.to_string()))?;
    let closure =
        crate::nix::closure::closure(&roots).map_err(|e| McpError::Request(e.to_string()))?;
    let mut executables = Vec::new();
    for r in &roots {
        if let Ok(rd) = std::fs::read_dir(r.join("bin")) {
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                if !executables.contains(&n) {
                    executables.push(n);
                }
            }
        }
    }
    let json = serde_json::json!({
        "roots": roots,
        "closure": { "paths": closure.paths.len(), "hash": closure.hash },
        "executables": executables,
        "network": network,
        "network_allowed": allowed,
        "tcp_ports": tcp_ports,
        "writable": writable,
        "profile": profile.name,
        "limits": {
            "timeout_secs": limits.timeout.map(|t| t.as_secs()),
            "memory_bytes": limits.memory,
            "pids": limits.pids,
            "max_output_bytes": limits.max_output,
        },
        "edits": "none: this environment is fixed store paths, not a project",
    });
    let md = format!(
        "# Environment\n\nA nixcell cell made of the closure of {} ({} store paths). \
         Nothing else of the host exists inside.\n\n## Executables on PATH\n{}\n\n\
         ## Rules\n- Network: {net_line}.\n\
         {work_line}\n\
         - Limits (profile `{}`): {}.\n\
         - Edits: none; this environment is fixed store paths.\n",
        roots
            .iter()
            .map(|r| format!("`{}`", r.display()))
            .collect::<Vec<_>>()
            .join(", "),
        closure.paths.len(),
        executables.join(", "),
        profile.name,
        limit_parts.join(", ")
    );
    Ok((json, md))
}
