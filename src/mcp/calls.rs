//! What the tools do: a run in a fresh working directory, an edit of the declaration
//! and the question to a human a proposal raises.

use super::*;

impl Server {
    pub(super) async fn run_cell(&self, p: RunParams) -> Result<RunResult, McpError> {
        let limits = limit_args(&p, &self.inner.ceiling()?)?;
        // Private to the server's user; as root, given to the cell's host identity.
        let owner = crate::sandbox::ns::is_host_root().then(crate::plan::root_fallback_identity);
        let dir = crate::rundir::RunDir::create(owner).map_err(McpError::Workdir)?;
        if let Target::Project(project) = &self.inner.target
            && p.copy_project != Some(false)
        {
            let mut budget = MAX_PROJECT_COPY_BYTES;
            copy_project(project, dir.path(), &mut budget)?;
        }
        if let Some(files) = &p.files {
            place_files(dir.path(), files)?;
        }
        let argv = match (&p.command, &p.script) {
            (Some(CommandArg::Argv(c)), None) if !c.is_empty() => c.clone(),
            (Some(CommandArg::Line(l)), None) if !l.trim().is_empty() => {
                vec!["sh".into(), "-c".into(), l.clone()]
            }
            (None, Some(s)) => {
                let interp = p.interpreter.clone().unwrap_or_else(|| "sh".into());
                let name = script_name(&interp);
                if dir.path().join(name).exists() {
                    return Err(McpError::Request(format!(
                        "{name} is where the script goes, and the working directory already has one; rename that file"
                    )));
                }
                std::fs::write(dir.path().join(name), s).map_err(McpError::Workdir)?;
                vec![interp, name.to_string()]
            }
            _ => {
                return Err(McpError::Request(
                    "give either `command` (a non-empty list) or `script`".into(),
                ));
            }
        };
        dir.hand_over().map_err(McpError::Workdir)?;
        let mut args: Vec<String> = vec!["run".into(), "--json".into()];
        match &self.inner.target {
            Target::Project(_) => args.extend(self.inner.project_args()?),
            Target::EnvPaths(paths) => {
                for p in paths {
                    args.push("--env-path".into());
                    args.push(p.display().to_string());
                }
            }
        }
        if let Some(name) = &self.inner.profile {
            args.extend(["--profile".into(), name.clone()]);
        }
        args.extend(["--workdir".into(), dir.path().display().to_string()]);
        args.extend(limits);
        args.push("--".into());
        args.extend(argv);
        let child = self
            .inner
            .nixcell(
                &args,
                Some(p.stdin.as_deref().unwrap_or("").as_bytes()),
                None,
            )
            .await?;
        let reply: RunReply =
            serde_json::from_slice(&child.stdout).map_err(|_| McpError::Command {
                command: "run".into(),
                message: format!("exit {:?}: {}", child.code, child.stderr.trim()),
            })?;
        let files = collect_files(dir.path(), p.collect.as_deref().unwrap_or(&[]));
        Ok(match reply {
            RunReply::Ran(v) => RunResult {
                exit_code: v.exit_code,
                command_exit_code: v.command_exit_code,
                signal: v.signal,
                timed_out: v.timed_out,
                oom_killed: v.oom_killed,
                wall_time_ms: v.wall_time_ms,
                usage: v.usage,
                error: v.error.map(RunError::from),
                stdout: stream_of(v.stdout),
                stderr: stream_of(v.stderr),
                hints: v.hints,
                files,
                closure_hash: v.closure.map(|c| c.hash),
            },
            RunReply::Refused { exit_code, error } => RunResult {
                exit_code,
                command_exit_code: None,
                signal: None,
                timed_out: false,
                oom_killed: false,
                wall_time_ms: 0.0,
                usage: None,
                error: Some(error.into()),
                stdout: stream_of(None),
                stderr: stream_of(None),
                hints: Vec::new(),
                files,
                closure_hash: None,
            },
        })
    }

    /// A proposal waits for a human. When the client can ask its user (MCP elicitation),
    /// ask now: an approval applies it like `nixcell approve`, a refusal rejects it like
    /// `nixcell reject`; without an answer it stays pending for the command line.
    pub(super) async fn ask_human(
        &self,
        r: EditResult,
        peer: &Peer<RoleServer>,
    ) -> Result<EditResult, McpError> {
        let Some(id) = r.proposal.clone() else {
            return Ok(r);
        };
        let message = format!(
            "The agent asks to {} `{}` in the environment.\n\n{}\nClosure: {} store paths added, {} removed ({}). Approve?",
            r.operation.replace('-', " "),
            r.name,
            r.diff,
            r.closure_diff.added.len(),
            r.closure_diff.removed.len(),
            crate::units::human_delta(r.closure_diff.size_delta_bytes)
        );
        let decision = match peer.elicit::<ApprovalAnswer>(message).await {
            Ok(Some(a)) => Some(a.approve),
            Err(rmcp::service::ElicitationError::UserDeclined) => Some(false),
            _ => None,
        };
        let mut args = match decision {
            Some(true) => vec!["approve".to_string(), id.clone(), "--json".into()],
            Some(false) => vec!["reject".to_string(), id.clone(), "--json".into()],
            None => return Ok(r),
        };
        args.extend(self.inner.project_args()?);
        let c = self.inner.nixcell(&args, None, None).await?;
        if c.code != Some(0) {
            return Err(McpError::Command {
                command: args[0].clone(),
                message: c.stderr.trim().to_string(),
            });
        }
        if decision == Some(false) {
            return Err(McpError::Request(format!(
                "the user rejected proposal {id} ({} {}); the environment is unchanged",
                r.operation, r.name
            )));
        }
        serde_json::from_slice(&c.stdout).map_err(|e| McpError::Command {
            command: "approve".into(),
            message: format!("unexpected output ({e})"),
        })
    }

    pub(super) async fn edit(
        &self,
        p: EditParams,
        progress: &Progress,
    ) -> Result<EditResult, McpError> {
        let mut args = vec![
            "edit".to_string(),
            p.operation.cli().into(),
            p.name.clone(),
            "--json".into(),
        ];
        if p.propose == Some(true) {
            args.push("--propose".into());
        }
        args.extend(self.inner.project_args()?);
        progress
            .report(
                0,
                format!(
                    "{} {}: checking the policy, building the edited environment",
                    p.operation.cli(),
                    p.name
                ),
            )
            .await;
        // nix's own progress lines follow as they come (numbered from 1).
        let c = self.inner.nixcell(&args, None, Some(progress)).await?;
        let done = c.stderr.lines().count() as u64 + 1;
        progress
            .report(
                done,
                format!(
                    "{} {}: {}",
                    p.operation.cli(),
                    p.name,
                    if c.code == Some(0) { "done" } else { "failed" }
                ),
            )
            .await;
        if c.code != Some(0) {
            // nix's progress went out as notifications; the reason is the last lines.
            let msg: Vec<&str> = c
                .stderr
                .lines()
                .filter(|l| l.starts_with("nixcell:") || l.contains("error"))
                .collect();
            let message = if msg.is_empty() {
                c.stderr.trim().to_string()
            } else {
                msg.join("\n")
            };
            return Err(McpError::Command {
                command: format!("edit {} {}", p.operation.cli(), p.name),
                message,
            });
        }
        serde_json::from_slice(&c.stdout).map_err(|e| McpError::Command {
            command: "edit".into(),
            message: format!(
                "unexpected output ({e}): {}",
                String::from_utf8_lossy(&c.stdout)
            ),
        })
    }
}
