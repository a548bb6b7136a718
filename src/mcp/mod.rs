//! `nixcell mcp`: a Model Context Protocol server over stdio (crate rmcp) for one
//! environment, either a project (`--project DIR`: devenv.nix + nixcell.toml) or a set
//! of store paths (`--env-path`).
//!
//! Every tool goes through nixcell's own command line (`run --json`, `context`,
//! `edit --json`), executed as a child process of this server: one code path for the
//! CLI and for agents, the long synchronous builds never block the server, nix's progress
//! lines become MCP progress notifications, and a cancelled call kills its child (the
//! cell dies with it). The server itself never forks a cell. A run's JSON is read back
//! into the shared `verdict::Verdict` type.
//!
//! Each `run` gets a fresh private working directory (`work/` in a new `0700` temporary
//! directory, mounted at /work in the cell, see [`crate::rundir`]) holding a copy of the project's files (without `.git` and
//! `.nixcell`, no symbolic links) and the files of that call; it is removed when the call
//! ends, after the files asked for are read back. The project itself is never written
//! by a run. Concurrent runs therefore share nothing but the read-only closure.

pub mod rundir;

use crate::hints::Hint;
use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
    Implementation, ListPromptsResult, ListResourcesResult, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, Prompt, PromptMessage, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, Role, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{
    ErrorData, Peer, RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("cannot start nixcell ({0}): {1}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("cannot create the run's working directory: {0}")]
    Workdir(#[source] std::io::Error),
    #[error("file {path:?}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Request(String),
    #[error("nixcell {command} failed: {message}")]
    Command { command: String, message: String },
    #[error("the MCP transport failed: {0}")]
    Transport(String),
}

/// Longest wall-clock limit a `run` may ask for.
pub const MAX_TIMEOUT_SECS: u64 = 600;
/// Wall-clock limit of a `run` that asks for none (the project's limit applies if lower).
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
/// Largest capture of each stream a `run` may ask for.
pub const MAX_OUTPUT_BYTES: u64 = 1 << 20;
/// Capture of each stream when a `run` asks for none.
pub const DEFAULT_OUTPUT_BYTES: u64 = 64 << 10;
/// Total size of the files a `run` may place in its working directory (they come in
/// one request, which must stay below [`MAX_REQUEST_BYTES`] with its JSON escaping).
pub const MAX_FILES_BYTES: usize = 4 << 20;
/// Largest JSON-RPC message (one line on stdin) the server reads; a longer one is
/// answered with an Invalid Request error and discarded, and the server goes on.
pub const MAX_REQUEST_BYTES: usize = 8 << 20;
/// Largest file a `run` returns through `collect`.
pub const MAX_COLLECT_BYTES: u64 = 256 << 10;

/// URIs of the context resources.
pub const CONTEXT_URI: &str = "nixcell://context";
pub const CONTEXT_JSON_URI: &str = "nixcell://context.json";

/// Which environment the server serves.
#[derive(Debug, Clone)]
pub enum Target {
    /// A project directory: devenv.nix and nixcell.toml.
    Project(PathBuf),
    /// Store paths whose closure is the cell (no declaration, no edits).
    EnvPaths(Vec<PathBuf>),
}

#[derive(Debug)]
struct Inner {
    target: Target,
    /// The sandbox profile given on the command line (else the project's, else
    /// "default"); requested limits stay within its own.
    profile: Option<String>,
    /// This binary, run for every tool call.
    exe: PathBuf,
}

#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
    tool_router: ToolRouter<Server>,
}

/// Parameters of `run`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunParams {
    /// The program and its arguments, e.g. ["python3", "report.py"], or one shell command
    /// line (run with `sh -c`). Give this or `script`.
    pub command: Option<CommandArg>,
    /// A script, written to the working directory and run by `interpreter`.
    pub script: Option<String>,
    /// The program that runs `script`, e.g. "python3", "bash" (default "sh").
    pub interpreter: Option<String>,
    /// Text given to the command on its standard input (default: none, empty input).
    pub stdin: Option<String>,
    /// Files to place in the working directory (/work) before the run:
    /// relative path → UTF-8 content.
    pub files: Option<BTreeMap<String, String>>,
    /// Start from a private copy of the project's files (default true when serving a
    /// project); changes stay in the run's copy, use `collect` to get files back.
    pub copy_project: Option<bool>,
    /// Files of the working directory to return after the run (relative paths).
    pub collect: Option<Vec<String>>,
    /// Wall-clock limit in seconds (default 120; at most 600 and the profile's limit).
    pub timeout_seconds: Option<u64>,
    /// Bytes kept of stdout and of stderr (default 65536; at most 1048576 and the
    /// profile's limit).
    pub max_output_bytes: Option<u64>,
    /// Memory limit of the whole cell in MiB (at most the profile's).
    pub memory_mib: Option<u64>,
    /// CPU quota in CPUs, e.g. 0.5 (at most the profile's).
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads (at most the profile's).
    pub pids: Option<u64>,
}

/// Checks the limits a run asks for against the profile's; returns the CLI flags.
fn limit_args(p: &RunParams, limits: &crate::profile::Limits) -> Result<Vec<String>, McpError> {
    let refuse = |what: &str, max: String| {
        McpError::Request(format!(
            "{what} exceeds what the sandbox profile allows (at most {max})"
        ))
    };
    let max_timeout = limits
        .timeout
        .map_or(MAX_TIMEOUT_SECS, |t| t.as_secs().min(MAX_TIMEOUT_SECS));
    let timeout = p
        .timeout_seconds
        .unwrap_or(DEFAULT_TIMEOUT_SECS.min(max_timeout));
    if timeout == 0 || timeout > max_timeout {
        return Err(refuse("timeout_seconds", format!("{max_timeout}")));
    }
    let max_output_cap = limits.max_output.min(MAX_OUTPUT_BYTES);
    let max_output = p
        .max_output_bytes
        .unwrap_or(DEFAULT_OUTPUT_BYTES.min(max_output_cap));
    if max_output > max_output_cap {
        return Err(refuse("max_output_bytes", format!("{max_output_cap}")));
    }
    let mut args = vec![
        "--timeout".to_string(),
        format!("{timeout}s"),
        "--max-output".into(),
        max_output.to_string(),
    ];
    if let Some(m) = p.memory_mib {
        let bytes = m.saturating_mul(1 << 20);
        if m == 0 || limits.memory.is_some_and(|l| bytes > l) {
            let max = limits
                .memory
                .map_or("?".into(), |l| format!("{} MiB", l >> 20));
            return Err(refuse("memory_mib", max));
        }
        args.extend(["--memory".into(), format!("{m}M")]);
    }
    if let Some(c) = p.cpus {
        if !(c.is_finite() && c > 0.0) || limits.cpus.is_some_and(|l| c > l) {
            return Err(refuse(
                "cpus",
                limits.cpus.map_or("?".into(), |l| l.to_string()),
            ));
        }
        args.extend(["--cpus".into(), c.to_string()]);
    }
    if let Some(n) = p.pids {
        if n == 0 || limits.pids.is_some_and(|l| n > l) {
            return Err(refuse(
                "pids",
                limits.pids.map_or("?".into(), |l| l.to_string()),
            ));
        }
        args.extend(["--pids".into(), n.to_string()]);
    }
    Ok(args)
}

/// A command as an argument vector or as a shell command line.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CommandArg {
    Argv(Vec<String>),
    Line(String),
}

/// A captured stream.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Stream {
    pub text: String,
    /// Bytes the command wrote in total.
    pub bytes: u64,
    /// Whether `text` holds only the first `max_output_bytes`.
    pub truncated: bool,
}

/// Why nixcell could not run the command as asked.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RunError {
    /// "usage", "setup", "exec" or "supervisor".
    pub kind: String,
    pub message: String,
}

/// A file returned by `collect`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CollectedFile {
    pub path: String,
    /// Size in bytes, or null when the file does not exist.
    pub bytes: Option<u64>,
    /// The content when it is UTF-8 text of at most 256 KiB.
    pub text: Option<String>,
    /// Why `text` is null.
    pub note: Option<String>,
}

/// The verdict of one `run`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunResult {
    /// The command's exit code, or 124 timed out, 125 nixcell failed before the command
    /// ran, 126 not executable, 127 not found, 128+N killed by signal N.
    pub exit_code: i32,
    /// The command's own exit code when it exited normally.
    pub command_exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// The cell's memory limit was reached and the kernel killed a process.
    pub oom_killed: bool,
    pub wall_time_ms: f64,
    /// Peak memory and CPU time, when this kernel reports them.
    pub usage: Option<crate::harden::Usage>,
    pub error: Option<RunError>,
    pub stdout: Stream,
    pub stderr: Stream,
    /// What the cell seems to lack and the edit that would provide it.
    pub hints: Vec<Hint>,
    /// The files asked for with `collect`.
    pub files: Vec<CollectedFile>,
    /// sha256 of the closure's store path list: the exact software the command saw.
    pub closure_hash: Option<String>,
}

/// Edits of the declared environment.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EditOperation {
    AddPackage,
    RemovePackage,
    AddPythonLibrary,
    RemovePythonLibrary,
    EnableService,
    DisableService,
}

impl EditOperation {
    fn cli(self) -> &'static str {
        match self {
            EditOperation::AddPackage => "add-package",
            EditOperation::RemovePackage => "remove-package",
            EditOperation::AddPythonLibrary => "add-python-library",
            EditOperation::RemovePythonLibrary => "remove-python-library",
            EditOperation::EnableService => "enable-service",
            EditOperation::DisableService => "disable-service",
        }
    }
}

/// Parameters of `edit_environment`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct EditParams {
    pub operation: EditOperation,
    /// A package attribute (e.g. "jq"), a Python library (e.g. "pandas") or a service
    /// (e.g. "redis"), as the policy in environment_context lists them.
    pub name: String,
    /// Record a proposal for a human to approve instead of committing.
    pub propose: Option<bool>,
}

/// What an edit changed in the closure.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ClosureDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub added_bytes: u64,
    pub removed_bytes: u64,
    pub size_delta_bytes: i64,
}

/// The result of an accepted edit.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct EditResult {
    pub operation: String,
    pub name: String,
    /// "committed", or "proposed" (waiting for a human: `nixcell approve ID`).
    pub status: String,
    /// The git commit, when committed.
    pub commit: Option<String>,
    /// The proposal's id, when proposed.
    pub proposal: Option<String>,
    /// Unified diff of devenv.nix.
    pub diff: String,
    pub closure_diff: ClosureDiff,
    /// The edited environment's store path.
    pub env: String,
}

/// The human's answer to a proposal, asked through MCP elicitation.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ApprovalAnswer {
    /// Apply this change to the environment (it is built and committed)?
    pub approve: bool,
}
rmcp::elicit_safe!(ApprovalAnswer);

/// What a child nixcell printed.
struct Child {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// Sends nix's progress lines as MCP progress notifications when the client asked.
#[derive(Clone)]
struct Progress {
    peer: Peer<RoleServer>,
    token: Option<ProgressToken>,
}

impl Progress {
    fn of(ctx: &RequestContext<RoleServer>) -> Progress {
        Progress {
            peer: ctx.peer.clone(),
            token: ctx.meta.get_progress_token(),
        }
    }

    async fn report(&self, n: u64, message: String) {
        if let Some(t) = &self.token {
            let mut p = ProgressNotificationParam::new(t.clone(), n as f64);
            p.message = Some(message);
            let _ = self.peer.notify_progress(p).await;
        }
    }
}

impl Inner {
    /// Runs this binary with `args` (cwd: the project, if any), feeding `stdin`, and
    /// forwarding each stderr line to `progress`.
    async fn nixcell(
        &self,
        args: &[String],
        stdin: Option<&[u8]>,
        progress: Option<&Progress>,
    ) -> Result<Child, McpError> {
        let mut cmd = tokio::process::Command::new(&self.exe);
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
                if let Some(p) = progress {
                    p.report(n, l.clone()).await;
                }
                all.push_str(&l);
                all.push('\n');
            }
            all
        };
        let ((), stdout, stderr) = tokio::join!(feed, read_out, read_err);
        let status = child
            .wait()
            .await
            .map_err(|e| McpError::Spawn(self.exe.clone(), e))?;
        Ok(Child {
            code: status.code(),
            stdout,
            stderr,
        })
    }

    /// The most a client's run may ask for: the limits of the profile runs use (the one
    /// given, else the project's, else "default"), tightened by the project's own
    /// (`run::limits::ceiling`).
    fn ceiling(&self) -> Result<crate::profile::Limits, McpError> {
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
        let asked = project.map_or_else(Default::default, |p| crate::run::limits::ProjectLimits {
            timeout: p.limits.timeout,
            max_output: p.limits.max_output_bytes,
        });
        Ok(crate::run::limits::ceiling(&profile.limits, &asked))
    }

    fn project_args(&self) -> Result<Vec<String>, McpError> {
        match &self.target {
            Target::Project(dir) => Ok(vec!["--project".into(), dir.display().to_string()]),
            Target::EnvPaths(_) => Err(McpError::Request(
                "this server serves fixed store paths, not a project: there is no declaration to edit (start it with `nixcell mcp --project DIR`)".into(),
            )),
        }
    }

    /// The context as (JSON, Markdown).
    async fn context(
        &self,
        progress: Option<&Progress>,
    ) -> Result<(serde_json::Value, String), McpError> {
        match &self.target {
            Target::Project(_) => {
                let mut json_args = vec!["context".to_string(), "--format".into(), "json".into()];
                json_args.extend(self.project_args()?);
                let c = self.nixcell(&json_args, None, progress).await?;
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
                let mut md_args = vec!["context".to_string(), "--format".into(), "markdown".into()];
                md_args.extend(self.project_args()?);
                let c = self.nixcell(&md_args, None, None).await?;
                if c.code != Some(0) {
                    return Err(McpError::Command {
                        command: "context".into(),
                        message: c.stderr.trim().to_string(),
                    });
                }
                Ok((json, String::from_utf8_lossy(&c.stdout).into_owned()))
            }
            Target::EnvPaths(paths) => env_paths_context(paths),
        }
    }
}

/// The context of plain store paths: what is on PATH, and that nothing can be edited.
fn env_paths_context(paths: &[PathBuf]) -> Result<(serde_json::Value, String), McpError> {
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
        "network": "loopback only",
        "writable": ["/work (a fresh directory per run)", "/tmp"],
        "edits": "none: this environment is fixed store paths, not a project",
    });
    let md = format!(
        "# Environment\n\nA nixcell cell made of the closure of {} ({} store paths). \
         Nothing else of the host exists inside.\n\n## Executables on PATH\n{}\n\n\
         ## Rules\n- Network: loopback only; no outside host is reachable.\n\
         - Writable: /work (a fresh directory per run, with the files you pass) and /tmp.\n\
         - Edits: none; this environment is fixed store paths.\n",
        roots
            .iter()
            .map(|r| format!("`{}`", r.display()))
            .collect::<Vec<_>>()
            .join(", "),
        closure.paths.len(),
        executables.join(", ")
    );
    Ok((json, md))
}

/// A relative path inside the working directory, or why not.
fn safe_relative(p: &str) -> Result<PathBuf, McpError> {
    let bad = |reason: &str| McpError::File {
        path: p.to_string(),
        reason: reason.to_string(),
    };
    let path = Path::new(p);
    if p.is_empty() || p.contains('\0') {
        return Err(bad("empty or contains NUL"));
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(bad(
                    "must be a relative path inside the working directory, without '..'",
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("names no file"));
    }
    Ok(out)
}

/// Writes `files` under `dir`, refusing anything that leaves it.
fn place_files(dir: &Path, files: &BTreeMap<String, String>) -> Result<(), McpError> {
    let total: usize = files.values().map(String::len).sum();
    if total > MAX_FILES_BYTES {
        return Err(McpError::Request(format!(
            "files: {total} bytes in total, more than the {MAX_FILES_BYTES} allowed"
        )));
    }
    for (name, content) in files {
        let rel = safe_relative(name)?;
        let full = dir.join(&rel);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(McpError::Workdir)?;
        }
        std::fs::write(&full, content).map_err(|e| McpError::File {
            path: name.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Largest project copied into a run's working directory.
pub const MAX_PROJECT_COPY_BYTES: u64 = 64 << 20;

/// Copies the project's files into a run's working directory: regular files and
/// directories, not `.git`, not nixcell's `.nixcell` state, no symbolic links (they could
/// point anywhere on the host); at most [`MAX_PROJECT_COPY_BYTES`].
fn copy_project(src: &Path, dst: &Path, budget: &mut u64) -> Result<(), McpError> {
    let rd = std::fs::read_dir(src).map_err(McpError::Workdir)?;
    for e in rd {
        let e = e.map_err(McpError::Workdir)?;
        let name = e.file_name();
        if name == ".git" || name == ".nixcell" {
            continue;
        }
        let ft = e.file_type().map_err(McpError::Workdir)?;
        let to = dst.join(&name);
        if ft.is_dir() {
            std::fs::create_dir(&to).map_err(McpError::Workdir)?;
            copy_project(&e.path(), &to, budget)?;
        } else if ft.is_file() {
            let len = e.metadata().map_err(McpError::Workdir)?.len();
            *budget = budget.checked_sub(len).ok_or_else(|| {
                McpError::Request(format!(
                    "the project holds more than {MAX_PROJECT_COPY_BYTES} bytes of files; run with copy_project = false and pass the files needed"
                ))
            })?;
            std::fs::copy(e.path(), &to).map_err(McpError::Workdir)?;
        }
    }
    Ok(())
}

/// Reads the files asked for after the run; never follows a link out of `dir`.
fn collect_files(dir: &Path, names: &[String]) -> Vec<CollectedFile> {
    names
        .iter()
        .map(|name| {
            let mut f = CollectedFile {
                path: name.clone(),
                bytes: None,
                text: None,
                note: None,
            };
            let rel = match safe_relative(name) {
                Ok(r) => r,
                Err(e) => {
                    f.note = Some(e.to_string());
                    return f;
                }
            };
            let full = dir.join(rel);
            // The cell wrote these files: a symlink could point anywhere on the host.
            let inside = std::fs::canonicalize(&full)
                .ok()
                .zip(std::fs::canonicalize(dir).ok())
                .is_some_and(|(f, d)| f.starts_with(d));
            let meta = std::fs::symlink_metadata(&full);
            match meta {
                Err(_) => f.note = Some("no such file".into()),
                Ok(m) if m.file_type().is_symlink() || !inside => {
                    f.note = Some("a symbolic link: not followed".into())
                }
                Ok(m) if !m.is_file() => f.note = Some("not a regular file".into()),
                Ok(m) => {
                    f.bytes = Some(m.len());
                    if m.len() > MAX_COLLECT_BYTES {
                        f.note = Some(format!("larger than {MAX_COLLECT_BYTES} bytes"));
                    } else {
                        match std::fs::read(&full).map(String::from_utf8) {
                            Ok(Ok(t)) => f.text = Some(t),
                            Ok(Err(_)) => f.note = Some("binary content (not UTF-8)".into()),
                            Err(e) => f.note = Some(e.to_string()),
                        }
                    }
                }
            }
            f
        })
        .collect()
}

fn script_name(interpreter: &str) -> &'static str {
    match interpreter.rsplit('/').next().unwrap_or("") {
        i if i.starts_with("python") => "script.py",
        "node" => "script.js",
        "perl" => "script.pl",
        "ruby" => "script.rb",
        _ => "script.sh",
    }
}

fn stream_of(c: Option<crate::supervise::Captured>) -> Stream {
    c.map_or(
        Stream {
            text: String::new(),
            bytes: 0,
            truncated: false,
        },
        |c| Stream {
            text: c.text,
            bytes: c.bytes,
            truncated: c.truncated,
        },
    )
}

/// What `nixcell run --json` prints: the run's verdict or, when nothing ran, its exit
/// status and the error.
#[derive(Deserialize)]
#[serde(untagged)]
enum RunReply {
    Ran(Box<crate::verdict::Verdict>),
    Refused {
        exit_code: i32,
        error: crate::verdict::VerdictError,
    },
}

impl From<crate::verdict::VerdictError> for RunError {
    fn from(e: crate::verdict::VerdictError) -> Self {
        RunError {
            kind: e.kind.into_owned(),
            message: e.message,
        }
    }
}

/// The agent-facing summary of a verdict.
fn summarize(r: &RunResult) -> String {
    let mut s = String::new();
    let status = if r.timed_out {
        "timed out; the cell was killed".to_string()
    } else if r.oom_killed {
        "killed: out of memory".to_string()
    } else if let Some(e) = &r.error {
        format!("nixcell error ({}): {}", e.kind, e.message)
    } else if let Some(sig) = r.signal {
        format!("killed by signal {sig}")
    } else {
        format!("exit code {}", r.exit_code)
    };
    s.push_str(&format!("{status} ({:.0} ms)\n", r.wall_time_ms));
    for (name, st) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        if st.bytes > 0 {
            s.push_str(&format!("--- {name} ---\n{}", st.text));
            if !st.text.ends_with('\n') {
                s.push('\n');
            }
            if st.truncated {
                s.push_str(&format!(
                    "[{name} truncated: {} bytes in total]\n",
                    st.bytes
                ));
            }
        }
    }
    for f in &r.files {
        match (&f.text, &f.note) {
            (Some(t), _) => s.push_str(&format!("--- file {} ---\n{t}\n", f.path)),
            (None, Some(n)) => s.push_str(&format!("--- file {}: {n}\n", f.path)),
            _ => {}
        }
    }
    for h in &r.hints {
        s.push_str(&format!("hint: {}", h.message));
        if let Some(e) = &h.edit {
            s.push_str(&format!(
                " (through MCP: edit_environment with operation \"{}\", name \"{}\")",
                e.op.replace('-', "_"),
                e.name
            ));
        }
        s.push('\n');
    }
    s
}

fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

#[tool_router]
impl Server {
    pub fn new(target: Target, profile: Option<String>, exe: PathBuf) -> Server {
        Server {
            inner: Arc::new(Inner {
                target,
                profile,
                exe,
            }),
            tool_router: Self::tool_router(),
        }
    }

    /// Describes the environment as built: packages and versions, executables on PATH,
    /// Python libraries, services, limits, network policy, writable paths, and which
    /// edits may be asked for.
    #[tool(annotations(read_only_hint = true))]
    async fn environment_context(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let progress = Progress::of(&ctx);
        match self.inner.context(Some(&progress)).await {
            Ok((json, md)) => {
                let mut r = CallToolResult::success(vec![ContentBlock::text(md)]);
                r.structured_content = Some(json);
                Ok(r)
            }
            Err(e) => Ok(tool_error(e.to_string())),
        }
    }

    /// Runs a command, or an inline script with its interpreter, in a fresh cell of this
    /// environment: no network, only the environment's software, a private working
    /// directory /work holding the `files` given. Returns the verdict (exit code, signal,
    /// timeout, out-of-memory, usage, captured output) and hints when something seems to
    /// be missing from the environment.
    #[tool(output_schema = schema_for_output::<RunResult>())]
    async fn run(&self, Parameters(p): Parameters<RunParams>) -> Result<CallToolResult, ErrorData> {
        match self.run_cell(p).await {
            Ok(r) => {
                let failed = r.exit_code != 0;
                let value = serde_json::to_value(&r).unwrap_or_default();
                let content = vec![
                    ContentBlock::text(summarize(&r)),
                    ContentBlock::text(value.to_string()),
                ];
                let mut out = if failed {
                    CallToolResult::error(content)
                } else {
                    CallToolResult::success(content)
                };
                out.structured_content = Some(value);
                Ok(out)
            }
            Err(e) => Ok(tool_error(e.to_string())),
        }
    }

    /// Changes the declared environment through the project's whitelist: add or remove
    /// a package or a Python library, enable or disable a service. The change is proven by
    /// a build and committed with git; the result has the closure diff and the commit.
    /// When the policy wants a human's approval (or `propose` is set) it records a
    /// proposal and returns its id instead. Refusals say what the policy allows.
    #[tool(output_schema = schema_for_output::<EditResult>())]
    async fn edit_environment(
        &self,
        Parameters(p): Parameters<EditParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let progress = Progress::of(&ctx);
        let edited = match self.edit(p, &progress).await {
            Ok(r) => self.ask_human(r, &ctx.peer).await,
            Err(e) => Err(e),
        };
        match edited {
            Ok(r) => {
                let text = match (&r.commit, &r.proposal) {
                    (Some(c), _) => format!(
                        "{} {}: committed {c}; {} store paths added, {} removed ({:+} bytes). Later runs use the new environment.\n{}",
                        r.operation,
                        r.name,
                        r.closure_diff.added.len(),
                        r.closure_diff.removed.len(),
                        r.closure_diff.size_delta_bytes,
                        r.diff
                    ),
                    (_, Some(id)) => format!(
                        "{} {}: proposal {id} waits for a human (`nixcell approve {id}`); the environment is unchanged until then.\n{}",
                        r.operation, r.name, r.diff
                    ),
                    _ => format!("{} {}: {}", r.operation, r.name, r.status),
                };
                let value = serde_json::to_value(&r).unwrap_or_default();
                let mut out = CallToolResult::success(vec![
                    ContentBlock::text(text),
                    ContentBlock::text(value.to_string()),
                ]);
                out.structured_content = Some(value);
                Ok(out)
            }
            Err(e) => Ok(tool_error(e.to_string())),
        }
    }
}

impl Server {
    async fn run_cell(&self, p: RunParams) -> Result<RunResult, McpError> {
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
                closure_hash: Some(v.closure.hash),
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
    async fn ask_human(
        &self,
        r: EditResult,
        peer: &Peer<RoleServer>,
    ) -> Result<EditResult, McpError> {
        let Some(id) = r.proposal.clone() else {
            return Ok(r);
        };
        let message = format!(
            "The agent asks to {} `{}` in the environment.\n\n{}\nClosure: {} store paths added, {} removed ({:+} bytes). Approve?",
            r.operation.replace('-', " "),
            r.name,
            r.diff,
            r.closure_diff.added.len(),
            r.closure_diff.removed.len(),
            r.closure_diff.size_delta_bytes
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

    async fn edit(&self, p: EditParams, progress: &Progress) -> Result<EditResult, McpError> {
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

const INSTRUCTIONS: &str = "nixcell runs commands in a sandbox made of exactly one declared \
Nix environment, with no network. Read environment_context first: it lists what is installed \
and which edits you may ask for. Use run for commands or inline scripts (each run has a fresh \
/work holding the files you pass). When something is missing, the run's hints name the \
edit_environment call that provides it.";

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new("nixcell", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(CONTEXT_URI, "environment-context")
                .with_title("Environment context (Markdown)")
                .with_description(
                    "What the cell holds and what may be asked for, for a system prompt",
                )
                .with_mime_type("text/markdown"),
            Resource::new(CONTEXT_JSON_URI, "environment-context-json")
                .with_title("Environment context (JSON)")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.as_str();
        if uri != CONTEXT_URI && uri != CONTEXT_JSON_URI {
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri}"),
                None,
            ));
        }
        let progress = Progress::of(&ctx);
        let (json, md) = self
            .inner
            .context(Some(&progress))
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let contents = if uri == CONTEXT_URI {
            ResourceContents::text(md, uri).with_mime_type("text/markdown")
        } else {
            ResourceContents::text(json.to_string(), uri).with_mime_type("application/json")
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new(
            "nixcell_environment",
            Some("The environment's ground-truth context and how to work in it"),
            None,
        )]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name != "nixcell_environment" {
            return Err(ErrorData::invalid_params(
                format!("no prompt {}", request.name),
                None,
            ));
        }
        let progress = Progress::of(&ctx);
        let (_, md) = self
            .inner
            .context(Some(&progress))
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let text = format!(
            "You work inside a nixcell sandbox. This is its environment, read from the built \
             closure; do not assume anything else is installed.\n\n{md}\n\n{INSTRUCTIONS}\n\n\
             Through these tools: each `run` works in a private copy of the project directory at \
             /work (get files back with `collect`), and edits go through `edit_environment` \
             rather than the `nixcell edit` command line."
        );
        let mut r = GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)]);
        r.description = Some("The nixcell environment".into());
        Ok(r.into())
    }
}

/// Serves MCP on stdin/stdout until the client goes away.
pub async fn serve(target: Target, profile: Option<String>) -> Result<(), McpError> {
    let exe = std::env::current_exe().map_err(|e| McpError::Spawn("/proc/self/exe".into(), e))?;
    let server = Server::new(target, profile, exe);
    // Fail at start, not at the first run, when the profile or the project does not load.
    server.inner.ceiling()?;
    let (input, output, gate) = gate(tokio::io::stdin(), tokio::io::stdout(), MAX_REQUEST_BYTES);
    // The gate enforces the size limit; rmcp's own (which drops a line unanswered)
    // must not come first.
    let transport = rmcp::transport::async_rw::AsyncRwTransport::new_server(input, output)
        .with_max_line_length(usize::MAX);
    let running = server
        .serve(transport)
        .await
        .map_err(|e| McpError::Transport(e.to_string()))?;
    let served = running
        .waiting()
        .await
        .map_err(|e| McpError::Transport(e.to_string()));
    // Everything rmcp wrote reaches stdout before the server exits.
    let _ = gate.await;
    served.map(drop)
}

/// The top-level `"id"` of a JSON-RPC message from its first bytes (the rest may be
/// missing): a number or a string, else `null`. Nested objects and strings are
/// skipped, so an `"id"` inside the params is never taken for the request's.
fn leading_id(prefix: &[u8]) -> serde_json::Value {
    let mut depth = 0usize;
    let mut i = 0;
    // The last string seen at the top level: a key when a ':' follows it.
    let mut last_string: Option<(usize, usize)> = None;
    while i < prefix.len() {
        match prefix[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < prefix.len() && prefix[i] != b'"' {
                    i += if prefix[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 {
                    last_string = Some((start, i.min(prefix.len())));
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' if depth == 1 && last_string.is_some_and(|(a, b)| &prefix[a..b] == b"id") => {
                let mut values = serde_json::Deserializer::from_slice(&prefix[i + 1..]).into_iter();
                return match values.next() {
                    Some(Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::String(_)))) => {
                        v
                    }
                    _ => serde_json::Value::Null,
                };
            }
            b',' if depth == 1 => last_string = None,
            _ => {}
        }
        i += 1;
    }
    serde_json::Value::Null
}

/// Between the client and rmcp: lines from `input` up to `limit` bytes are passed
/// on; a longer one is discarded up to its newline and answered on `output` with an
/// Invalid Request error (the request's id when its first bytes show it), written
/// between two of rmcp's messages, never inside one. Returns rmcp's ends and the task
/// that copies rmcp's messages to `output`.
fn gate<R, W>(
    input: R,
    output: W,
    limit: usize,
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<()>,
)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut to_rmcp, rmcp_in) = tokio::io::duplex(1 << 16);
    let (rmcp_out, from_rmcp) = tokio::io::duplex(1 << 16);
    let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut input = tokio::io::BufReader::new(input);
        let mut line: Vec<u8> = Vec::new();
        // Set while the rest of an oversized message is discarded: its id.
        let mut oversized: Option<serde_json::Value> = None;
        loop {
            let buf = match input.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(b) => b,
            };
            let (chunk, ends) = match buf.iter().position(|b| *b == b'\n') {
                Some(n) => (&buf[..=n], true),
                None => (buf, false),
            };
            let used = chunk.len();
            // The id is looked for in the first 64 KiB of an oversized message.
            const HEAD: usize = 1 << 16;
            match oversized {
                Some(_) => {}
                None if line.len() + used > limit + 1 => {
                    line.truncate(HEAD);
                    let room = HEAD - line.len();
                    line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    oversized = Some(leading_id(&line));
                    line.clear();
                }
                None => line.extend_from_slice(chunk),
            }
            input.consume(used);
            if !ends {
                continue;
            }
            if let Some(id) = oversized.take() {
                let reply = serde_json::json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "error": {
                        "code": -32600,
                        "message": format!(
                            "request larger than the limit of nixcell mcp, {limit} bytes ({} MiB); it was discarded",
                            limit >> 20
                        ),
                    },
                });
                let mut bytes = reply.to_string().into_bytes();
                bytes.push(b'\n');
                let _ = err_tx.send(bytes);
            } else if to_rmcp.write_all(&line).await.is_err() {
                break;
            }
            line.clear();
        }
        // EOF from the client: rmcp sees it too and ends the service.
        let _ = to_rmcp.shutdown().await;
    });
    let copy = tokio::spawn(async move {
        let mut output = output;
        let mut from_rmcp = tokio::io::BufReader::new(from_rmcp);
        let mut line = Vec::new();
        let mut open = true;
        while open || !err_rx.is_empty() {
            tokio::select! {
                biased;
                r = from_rmcp.read_until(b'\n', &mut line), if open => {
                    match r {
                        Ok(0) | Err(_) => open = false,
                        Ok(_) if line.ends_with(b"\n") => {
                            if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                                return;
                            }
                            line.clear();
                        }
                        Ok(_) => {}
                    }
                }
                // Only between two of rmcp's messages (a partial one is in `line`).
                Some(e) = err_rx.recv(), if line.is_empty() => {
                    if output.write_all(&e).await.is_err() || output.flush().await.is_err() {
                        return;
                    }
                }
                else => break,
            }
        }
        if !line.is_empty() {
            let _ = output.write_all(&line).await;
        }
        let _ = output.flush().await;
    });
    (rmcp_in, rmcp_out, copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_reply_is_a_verdict_or_a_refusal() {
        // What `nixcell run --json` prints when nothing ran.
        let refused = r#"{"exit_code":125,"error":{"kind":"usage","message":"no command","stage":null,"syscall":null,"errno":null}}"#;
        match serde_json::from_str::<RunReply>(refused).unwrap() {
            RunReply::Refused { exit_code, error } => {
                assert_eq!(exit_code, 125);
                assert_eq!(error.kind, "usage");
            }
            RunReply::Ran(_) => panic!("a refusal read as a verdict"),
        }
        // Anything else is neither (the server then reports the child's stderr).
        assert!(serde_json::from_str::<RunReply>(r#"{"exit_code":0}"#).is_err());
    }

    #[test]
    fn the_id_of_a_message_is_read_from_its_first_bytes_only_at_the_top() {
        let id = |s: &str| leading_id(s.as_bytes());
        assert_eq!(id(r#"{"jsonrpc":"2.0","id":7,"method":"x","params":{"#), 7);
        assert_eq!(id(r#"{"id" : "a\"b","method":"#), "a\"b");
        assert_eq!(
            id(r#"{"params":{"id":5,"s":"\"id\":6"},"id":9,"#),
            serde_json::json!(9)
        );
        assert_eq!(
            id(r#"{"method":"x","params":{"id":5,"#),
            serde_json::Value::Null
        );
        assert_eq!(id(r#"{"id":{"x":1},"#), serde_json::Value::Null);
        assert_eq!(id("garbage"), serde_json::Value::Null);
    }

    #[tokio::test]
    async fn an_oversized_line_is_answered_between_messages_and_the_rest_goes_on() {
        let (client, server_in) = tokio::io::duplex(1 << 20);
        let (server_out, mut observed) = tokio::io::duplex(1 << 20);
        let (mut rmcp_in, mut rmcp_out, copy) = gate(server_in, server_out, 100);
        let (_, mut client_w) = tokio::io::split(client);
        let big = format!("{{\"id\":3,\"x\":\"{}\"}}\n", "a".repeat(500));
        client_w.write_all(b"{\"id\":1}\n").await.unwrap();
        client_w.write_all(big.as_bytes()).await.unwrap();
        client_w.write_all(b"{\"id\":4}\n").await.unwrap();
        drop(client_w);
        let mut passed = String::new();
        rmcp_in.read_to_string(&mut passed).await.unwrap();
        assert_eq!(passed, "{\"id\":1}\n{\"id\":4}\n");
        rmcp_out
            .write_all(b"{\"id\":1,\"result\":{}}\n")
            .await
            .unwrap();
        drop(rmcp_out);
        copy.await.unwrap();
        let mut out = String::new();
        observed.read_to_string(&mut out).await.unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        let err = lines
            .iter()
            .find(|v| v["id"] == 3)
            .expect("an error for id 3");
        assert_eq!(err["error"]["code"], -32600);
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("100 bytes")
        );
        assert!(
            lines
                .iter()
                .any(|v| v["id"] == 1 && v["result"].is_object())
        );
    }
}
