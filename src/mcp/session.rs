//! `run` with a `session`: the agent's successive runs share one cell of `nixcell up`
//! (its services, /tmp and /work), each run a fresh process through `nixcell exec`.
//! The server starts the cell on the first run naming the session and takes it down
//! when it ends (its `Inner` is dropped); the profile's idle timeout bounds it too.

use super::*;

/// Longest session name an agent may give (the cell's name adds the server's prefix).
const MAX_NAME: usize = 20;

/// The session cells this server started: cell name -> its working directory.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    cells: std::sync::Mutex<BTreeMap<String, crate::rundir::RunDir>>,
    /// One session starts at a time (two first runs of one session start one cell).
    starting: tokio::sync::Mutex<()>,
}

impl Inner {
    /// The cell of session `name`: this server's own (its pid in the name).
    fn cell_name(name: &str) -> Result<String, McpError> {
        let ok = name.len() <= MAX_NAME && crate::session::check_name(name).is_ok();
        if !ok {
            return Err(McpError::Request(format!(
                "session '{}': a session's name is 1 to {MAX_NAME} letters, digits, '-' or '_', starting with a letter or digit",
                crate::changes::shown(name)
            )));
        }
        Ok(format!("mcp{}-{name}", std::process::id()))
    }

    /// Starts the session's cell unless it is up: `nixcell up --detach` on a fresh
    /// working directory (a copy of the project), with the first run's limits.
    async fn ensure_session(&self, cell: &str, limits: &[String]) -> Result<(), McpError> {
        let _one = self.sessions.starting.lock().await;
        let up = crate::session::live()
            .map_err(|e| McpError::Request(e.to_string()))?
            .iter()
            .any(|c| c.name == cell);
        if up {
            return Ok(());
        }
        // A session of ours that is gone (idle timeout) starts afresh.
        self.sessions.cells.lock().unwrap().remove(cell);
        let owner = crate::sandbox::ns::is_host_root().then(crate::plan::root_fallback_identity);
        let dir = crate::rundir::RunDir::create(owner).map_err(McpError::Workdir)?;
        if let Target::Project(project) = &self.target {
            let mut budget = MAX_PROJECT_COPY_BYTES;
            copy_project(project, dir.path(), &mut budget)?;
        }
        dir.hand_over().map_err(McpError::Workdir)?;
        let mut args: Vec<String> =
            vec!["up".into(), "--detach".into(), "--name".into(), cell.into()];
        args.extend(self.target_args()?);
        args.extend(["--workdir".into(), dir.path().display().to_string()]);
        args.extend(limits.iter().cloned());
        let child = self.nixcell(&args, None, None).await?;
        if child.code != Some(0) {
            return Err(McpError::Command {
                command: "session".into(),
                message: child
                    .stderr
                    .lines()
                    .filter(|l| !l.starts_with(crate::run::PROGRESS_PREFIX))
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
        self.sessions
            .cells
            .lock()
            .unwrap()
            .insert(cell.to_string(), dir);
        Ok(())
    }
}

impl Drop for Inner {
    /// The server's sessions end with it: services stopped, cells torn down.
    fn drop(&mut self) {
        let cells = std::mem::take(&mut *self.sessions.cells.lock().unwrap());
        for name in cells.keys() {
            let _ = std::process::Command::new(&self.exe)
                .args(["down", name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Server {
    pub(super) async fn run_in_session(
        &self,
        p: RunParams,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<RunResult, McpError> {
        let name = p.session.as_deref().unwrap_or_default();
        let cell = Inner::cell_name(name)?;
        if p.files.is_some() || p.collect.is_some() || p.copy_project.is_some() {
            return Err(McpError::Request(
                "`files`, `collect` and `copy_project` do not go with `session`: a session's \
                 /work is a copy of the project made when it starts and lives with it; write \
                 and read files with the session's commands"
                    .into(),
            ));
        }
        let argv = match (
            p.command.as_ref().and_then(super::calls::command_argv),
            &p.script,
        ) {
            (Some(argv), None) => argv,
            (None, Some(s)) if p.command.is_none() => {
                let interp = p.interpreter.clone().unwrap_or_else(|| "sh".into());
                vec![interp, "-c".into(), s.clone()]
            }
            _ => {
                return Err(McpError::Request(
                    "give either `command` (a non-empty list) or `script`".into(),
                ));
            }
        };
        let limits = limit_args(&p, &self.inner.ceiling()?)?;
        progress
            .report(
                0,
                format!("run: session {name}: starting its cell unless it is up"),
            )
            .await;
        self.inner.ensure_session(&cell, &limits).await?;
        let timeout = limits
            .iter()
            .position(|a| a == "--timeout")
            .and_then(|i| limits.get(i + 1))
            .cloned()
            .unwrap_or_else(|| "120s".into());
        let mut args: Vec<String> =
            vec!["exec".into(), "--json".into(), "--timeout".into(), timeout];
        args.push(cell);
        args.push("--".into());
        args.extend(argv);
        let child = self.inner.run_child(&args, &p, progress, cancel).await?;
        let result = super::calls::result_of(&child, Vec::new())?;
        progress
            .report(1, format!("run: finished, exit code {}", result.exit_code))
            .await;
        Ok(result)
    }
}
