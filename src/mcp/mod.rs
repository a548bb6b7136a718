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
//! `.nixcell`, no symbolic links, copied through descriptors so a link swapped in meanwhile is never
//! followed) and the files of that call; it is removed when the call
//! ends, after the files asked for are read back. The project itself is never written
//! by a run. Concurrent runs therefore share nothing but the read-only closure.

mod calls;
mod child;
mod files;
mod gate;
pub mod http;
pub mod rundir;
mod schema;
mod session;
mod slots;
mod summary;

use files::*;
use gate::*;
pub use schema::*;
pub use slots::{Concurrency, DEFAULT_MAX_QUEUED, RUNS_PER_CPU, default_max_runs};
use summary::*;

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
use tokio_util::sync::CancellationToken;

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
    #[error("cancelled by the client: the cell was killed, nothing of the run was kept")]
    Cancelled,
    #[error(
        "the server is busy: {running} runs are in flight and {queued} more wait (its bound, `nixcell mcp --max-runs/--max-queued`); nothing was run, try again when a run ends"
    )]
    Busy { running: usize, queued: usize },
}

/// How long a cancelled call's child may take to end after SIGTERM before SIGKILL.
pub const CANCEL_KILL_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// The limits of a `run` (shared with the context, which states them). The default
/// capture keeps the start of each stream; the last `supervise::TAIL_BYTES` of a
/// longer stream are kept too.
pub use crate::run::limits::mcp::{
    DEFAULT_OUTPUT_BYTES, DEFAULT_TIMEOUT_SECS, MAX_OUTPUT_BYTES, MAX_TIMEOUT_SECS,
};
/// Total size of the files a `run` may place in its working directory, decoded (they
/// come in one request, which must stay below [`MAX_REQUEST_BYTES`] with its base64
/// or JSON escaping).
pub const MAX_FILES_BYTES: usize = 4 << 20;
/// Files a `run` may place in its working directory.
pub const MAX_FILES: usize = 256;
/// Files a `run` may collect.
pub const MAX_COLLECT_FILES: usize = 32;
/// Total size of the files a `run` returns through `collect`.
pub const MAX_COLLECT_TOTAL_BYTES: u64 = 4 << 20;
/// Largest JSON-RPC message (one line on stdin) the server reads; a longer one is
/// answered with an Invalid Request error and discarded, and the server goes on.
pub const MAX_REQUEST_BYTES: usize = 8 << 20;
/// Largest file a `run` returns through `collect`.
pub const MAX_COLLECT_BYTES: u64 = 1 << 20;

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
    /// The session cells of this server (src/mcp/session.rs).
    sessions: session::Sessions,
    /// The bound on cells at once (src/mcp/slots.rs).
    slots: slots::Slots,
}

#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
    tool_router: ToolRouter<Server>,
}

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

fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

#[tool_router]
impl Server {
    /// A server of this binary, its profile and project checked now (a server fails
    /// at start, not at the first run, when they do not load), its bound on cells at
    /// once decided.
    pub fn start(
        target: Target,
        profile: Option<String>,
        concurrency: Concurrency,
    ) -> Result<Server, McpError> {
        let exe =
            std::env::current_exe().map_err(|e| McpError::Spawn("/proc/self/exe".into(), e))?;
        let mut inner = Inner {
            target,
            profile,
            exe,
            sessions: Default::default(),
            slots: slots::Slots::new(1, 0),
        };
        let memory = inner.ceiling()?.memory;
        let max_runs = concurrency
            .max_runs
            .unwrap_or_else(|| default_max_runs(memory));
        let max_queued = concurrency.max_queued.unwrap_or(DEFAULT_MAX_QUEUED);
        inner.slots = slots::Slots::new(max_runs, max_queued);
        Ok(Server {
            inner: Arc::new(inner),
            tool_router: Self::tool_router(),
        })
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
    /// directory /work holding the `files` given. Returns the verdict once, in
    /// structuredContent (exit code, signal, timeout, out-of-memory, usage, captured
    /// output, collected files, what changed in /work, hints when something seems to be
    /// missing), with a short text: the status, the hints and the first and last KiB of
    /// each stream. Sends progress notifications when asked (a progressToken); a
    /// cancelled call kills the cell. With `session`, successive runs share one live
    /// cell (its services, /tmp and /work), each still a fresh confined process.
    #[tool(output_schema = schema_for_output::<RunResult>())]
    async fn run(
        &self,
        Parameters(p): Parameters<RunParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let progress = Progress::of(&ctx);
        match self.run_cell(p, &progress, &ctx.ct).await {
            Ok(r) => {
                let failed = r.exit_code != 0 || r.files.iter().any(|f| f.over_limit);
                let value = serde_json::to_value(&r).unwrap_or_default();
                let content = vec![ContentBlock::text(summarize(&r))];
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
    /// a package or a Python library (written as devenv declares one:
    /// `languages.python.package = pkgs.python3.withPackages (ps: [ ps.NAME ])`), enable or
    /// disable a service (redis, postgres), or allow a domain (`allow_domain`, NAME[:PORT],
    /// added to nixcell.toml's [network] allow list inside the profile's). The change is proven by
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
                        "{} {}: committed {c}; {}. Later runs use the new environment.\n{}",
                        r.operation,
                        r.name,
                        closure_change(&r.closure_diff),
                        r.diff
                    ),
                    (_, Some(id)) => format!(
                        "{} {}: proposal {id} waits for a human (`nixcell approve {id}`); the environment is unchanged until then.\n{}",
                        r.operation, r.name, r.diff
                    ),
                    _ => format!("{} {}: {}", r.operation, r.name, r.status),
                };
                let value = serde_json::to_value(&r).unwrap_or_default();
                let mut out = CallToolResult::success(vec![ContentBlock::text(text)]);
                out.structured_content = Some(value);
                Ok(out)
            }
            Err(e) => Ok(tool_error(e.to_string())),
        }
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
pub async fn serve(
    target: Target,
    profile: Option<String>,
    concurrency: Concurrency,
) -> Result<(), McpError> {
    let server = Server::start(target, profile, concurrency)?;
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
