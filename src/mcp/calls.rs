//! What the tools do: a run in a fresh working directory, an edit of the declaration
//! and the question to a human a proposal raises.

use super::*;

impl Inner {
    /// A child `nixcell` of a `run` call: its stdin the call's, cancelled with it.
    pub(super) async fn run_child(
        &self,
        args: &[String],
        p: &RunParams,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Child, McpError> {
        let stdin = p.stdin.as_deref().unwrap_or("").as_bytes();
        self.nixcell_cancellable(args, Some(stdin), Some(progress), Some(cancel))
            .await
    }

    /// `--profile NAME` when the server was given one (the ceiling of allow_domain).
    pub(super) fn profile_args(&self) -> Vec<String> {
        self.profile
            .iter()
            .flat_map(|name| ["--profile".to_string(), name.clone()])
            .collect()
    }

    /// The flags naming the environment and the profile of every cell of this server.
    pub(super) fn target_args(&self) -> Result<Vec<String>, McpError> {
        let mut args = Vec::new();
        match &self.target {
            Target::Project(_) => args.extend(self.project_args()?),
            Target::EnvPaths(paths) => {
                for p in paths {
                    args.push("--env-path".into());
                    args.push(p.display().to_string());
                }
            }
        }
        args.extend(self.profile_args());
        Ok(args)
    }
}

impl Server {
    pub(super) async fn run_cell(
        &self,
        p: RunParams,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<RunResult, McpError> {
        if p.session.is_some() {
            let _slot = self.inner.slots.acquire(cancel).await?;
            return self.run_in_session(p, progress, cancel).await;
        }
        // The whole request is checked before anything is created or run.
        let CheckedRun { mut limits, files } = check_run(&p, &self.inner.ceiling()?)?;
        limits.extend(port_args(&p, &self.inner.open_ports()?)?);
        // Held until the cell is gone and its files are read back.
        let _slot = self.inner.slots.acquire(cancel).await?;
        let collect = p.collect.as_deref().unwrap_or(&[]);
        progress
            .report(0, "run: preparing the working directory".into())
            .await;
        // Private to the server's user; as root, given to the cell's host identity.
        let owner = crate::sandbox::ns::is_host_root().then(crate::plan::root_fallback_identity);
        let dir = crate::rundir::RunDir::create(owner).map_err(McpError::Workdir)?;
        if let Target::Project(project) = &self.inner.target
            && p.copy_project != Some(false)
        {
            let mut budget = MAX_PROJECT_COPY_BYTES;
            copy_project(project, dir.path(), &mut budget)?;
        }
        if let Some(files) = &files {
            place_files(dir.path(), files)?;
        }
        let argv = match (p.command.as_ref().and_then(command_argv), &p.script) {
            (Some(argv), None) => argv,
            (None, Some(s)) if p.command.is_none() => {
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
        args.extend(self.inner.target_args()?);
        args.extend(["--workdir".into(), dir.path().display().to_string()]);
        args.extend(limits);
        args.push("--".into());
        args.extend(argv);
        // The run's stages (and nix's lines, when it builds) follow as they come.
        let child = self.inner.run_child(&args, &p, progress, cancel).await?;
        let files = collect_files(dir.path(), collect);
        let result = result_of(&child, files)?;
        let done = child.stderr.lines().count() as u64 + 1;
        progress
            .report(
                done,
                format!("run: finished, exit code {}", result.exit_code),
            )
            .await;
        Ok(result)
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
            "The agent asks to {} `{}` in the environment.\n\n{}\nClosure: {}. Approve?",
            r.operation.replace('-', " "),
            r.name,
            r.diff,
            closure_change(&r.closure_diff)
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
        if decision == Some(true) {
            args.extend(self.inner.profile_args());
        }
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
        args.extend(self.inner.profile_args());
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

/// A hint as an MCP client acts on it: the edit is an `edit_environment` call, not a
/// `nixcell edit` command line (which an agent under MCP cannot run).
/// The argv of a `command`: the list as it is, or a line run by `sh -c`; None if empty.
pub(super) fn command_argv(c: &CommandArg) -> Option<Vec<String>> {
    match c {
        CommandArg::Argv(a) if !a.is_empty() => Some(a.clone()),
        CommandArg::Line(l) if !l.trim().is_empty() => {
            Some(vec!["sh".into(), "-c".into(), l.clone()])
        }
        _ => None,
    }
}

/// The result of a tool's `run`: the verdict a child `nixcell run --json` (or `exec
/// --json`) printed, with the `files` collected.
pub(super) fn result_of(child: &Child, files: Vec<CollectedFile>) -> Result<RunResult, McpError> {
    let reply: RunReply = serde_json::from_slice(&child.stdout).map_err(|_| McpError::Command {
        command: "run".into(),
        message: format!(
            "exit {:?}: {}",
            child.code,
            child
                .stderr
                .lines()
                .filter(|l| !l.starts_with(crate::run::PROGRESS_PREFIX))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    })?;
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
            hints: v.hints.into_iter().map(hint_for_mcp).collect(),
            files,
            workdir: workdir_of(v.workdir),
            closure_hash: v.closure.map(|c| c.hash),
            network: v.network,
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
            workdir: None,
            closure_hash: None,
            network: None,
        },
    })
}

fn hint_for_mcp(mut h: crate::hints::Hint) -> crate::hints::Hint {
    h.message = h.message.replace(
        "`nixcell edit add-python-library NAME`",
        "`edit_environment` (operation \"add_python_library\", name NAME)",
    );
    if let Some(e) = &mut h.edit {
        let call = format!(
            "edit_environment {{\"operation\": \"{}\", \"name\": \"{}\"}}",
            e.op.replace('-', "_"),
            e.name
        );
        h.message = h.message.replace(&e.command, &call);
        e.command = call;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allow_domain_hint_names_the_mcp_call() {
        let h = hint_for_mcp(crate::hints::Hint {
            kind: crate::hints::HintKind::NetworkDenied,
            missing: "api.test.example:443".into(),
            message: "refused: ask for it with `nixcell edit allow-domain api.test.example:443`"
                .into(),
            edit: Some(crate::hints::SuggestedEdit {
                op: "allow-domain".into(),
                subject: crate::agent::edit::policy::Subject::Domain,
                name: "api.test.example:443".into(),
                command: "nixcell edit allow-domain api.test.example:443".into(),
            }),
        });
        let call =
            r#"edit_environment {"operation": "allow_domain", "name": "api.test.example:443"}"#;
        assert!(h.message.contains(call), "{}", h.message);
        let op: super::super::schema::EditOperation =
            serde_json::from_str("\"allow_domain\"").unwrap();
        assert_eq!(op.cli(), "allow-domain");
    }

    #[test]
    fn hints_name_the_mcp_tool_not_the_command_line() {
        let hint = crate::hints::Hint {
            kind: crate::hints::HintKind::MissingPythonModule,
            missing: "pandas".into(),
            message: "`pandas` is not importable: ask for it with `nixcell edit add-python-library pandas`".into(),
            edit: Some(crate::hints::SuggestedEdit {
                op: "add-python-library".into(),
                subject: crate::agent::edit::policy::Subject::PythonLibrary,
                name: "pandas".into(),
                command: "nixcell edit add-python-library pandas".into(),
            }),
        };
        let h = hint_for_mcp(hint);
        assert!(!h.message.contains("nixcell edit"), "{}", h.message);
        assert!(
            h.message.contains(
                r#"edit_environment {"operation": "add_python_library", "name": "pandas"}"#
            )
        );
        assert_eq!(
            h.edit.unwrap().command,
            r#"edit_environment {"operation": "add_python_library", "name": "pandas"}"#
        );
    }
}
