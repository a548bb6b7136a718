//! The tools' parameters and results: their JSON schemas are what clients see. A run's
//! reply is read into the shared `verdict::Verdict` and summarized here.

use super::*;

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
    /// Files to place in the working directory (/work) before the run: relative path →
    /// UTF-8 text, or {"content": BASE64, "encoding": "base64"} for any bytes. At most
    /// 256 files and 4 MiB (4194304 bytes, decoded) in all; more is refused.
    #[schemars(extend("maxProperties" = 256))]
    pub files: Option<BTreeMap<String, FileContent>>,
    /// Start from a private copy of the project's files (default true when serving a
    /// project); changes stay in the run's copy, use `collect` to get files back.
    pub copy_project: Option<bool>,
    /// Files of the working directory to return after the run (relative paths); each
    /// comes back as UTF-8 text or base64 (see its `encoding`). At most 32 files, each
    /// at most 1 MiB (1048576 bytes), 4 MiB in all: a file over these is not returned
    /// and the result is an error saying so.
    #[schemars(length(max = 32))]
    pub collect: Option<Vec<String>>,
    /// Wall-clock limit in seconds (default 120; at most 600 and the profile's limit).
    pub timeout_seconds: Option<u64>,
    /// Bytes kept of the start of stdout and of stderr (default 16384; at most 1048576
    /// and the profile's limit); the last 4096 bytes of a longer stream are kept too.
    pub max_output_bytes: Option<u64>,
    /// Memory limit of the whole cell in MiB (at most the profile's).
    pub memory_mib: Option<u64>,
    /// CPU quota in CPUs, e.g. 0.5 (at most the profile's).
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads (at most the profile's).
    pub pids: Option<u64>,
    /// A session name (1 to 20 letters, digits, '-' or '_'): runs naming the same
    /// session share one cell that lives between calls: its services and their data,
    /// its /tmp, its /work (a copy of the project made when the session starts). The
    /// first run naming it starts it, with that run's memory_mib, cpus, pids and
    /// max_output_bytes; each run is still a fresh, confined process with its own
    /// timeout. The session ends when the server does, or after the profile's idle
    /// time without a run; its /work changes stay in it. `files`, `collect` and
    /// `copy_project` do not go with it (refused).
    pub session: Option<String>,
    /// Loopback TCP ports the command listens on or connects to, besides the declared
    /// services' (which need no asking): each must be one the sandbox profile opens.
    pub ports: Option<Vec<u16>>,
}

/// Checks the ports a run names against those the profile opens; returns the flags.
pub(super) fn port_args(p: &RunParams, open: &[u16]) -> Result<Vec<String>, McpError> {
    let mut args = Vec::new();
    for port in p.ports.iter().flatten() {
        if !open.contains(port) {
            let list: Vec<String> = open.iter().map(u16::to_string).collect();
            return Err(McpError::Request(format!(
                "ports: {port} is not a port the sandbox profile opens ({}); a declared service's port needs no asking, other ports only the operator opens",
                if list.is_empty() {
                    "none".to_string()
                } else {
                    list.join(", ")
                }
            )));
        }
        args.extend(["--allow-port".to_string(), port.to_string()]);
    }
    Ok(args)
}

/// A `run` request as checked before anything is created or run.
#[derive(Debug)]
pub struct CheckedRun {
    /// The limits as `nixcell run` flags.
    pub limits: Vec<String>,
    /// The files to place, decoded (relative paths checked).
    pub files: Option<Vec<(PathBuf, Vec<u8>)>>,
}

/// Checks a `run` request against the profile's limits: its limits, its files and
/// the names it collects.
pub fn check_run(p: &RunParams, limits: &crate::profile::Limits) -> Result<CheckedRun, McpError> {
    let limits = limit_args(p, limits)?;
    let files = p.files.as_ref().map(decode_files).transpose()?;
    check_collect(p.collect.as_deref().unwrap_or(&[]))?;
    Ok(CheckedRun { limits, files })
}

/// Checks the limits a run asks for against the profile's; returns the CLI flags.
pub(super) fn limit_args(
    p: &RunParams,
    limits: &crate::profile::Limits,
) -> Result<Vec<String>, McpError> {
    let refuse = |what: &str, max: String| {
        McpError::Request(format!(
            "{what} exceeds what the sandbox profile allows (at most {max})"
        ))
    };
    let defaults = crate::run::limits::mcp::defaults(limits);
    let max_timeout = crate::run::limits::mcp::max_timeout_secs(limits);
    let timeout = p
        .timeout_seconds
        .unwrap_or_else(|| defaults.timeout.map_or(max_timeout, |t| t.as_secs()));
    if timeout == 0 || timeout > max_timeout {
        return Err(refuse("timeout_seconds", format!("{max_timeout}")));
    }
    let max_output_cap = crate::run::limits::mcp::max_output_cap(limits);
    let max_output = p.max_output_bytes.unwrap_or(defaults.max_output);
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

/// The content of a file placed in the working directory.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FileContent {
    /// UTF-8 text, written as it is.
    Text(#[schemars(length(max = 4194304))] String),
    /// Content in an explicit encoding.
    Encoded(EncodedFile),
}

/// A file's bytes in an explicit encoding.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncodedFile {
    /// The bytes, encoded as `encoding` says (base64: the standard alphabet, padded).
    #[schemars(length(max = 5592408))]
    pub content: String,
    pub encoding: Encoding,
}

/// How a file's bytes are written in a request or a result.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum Encoding {
    /// The content is the file's text as it is (the file is valid UTF-8).
    #[serde(rename = "utf-8")]
    Utf8,
    /// The content is the file's bytes in base64 (standard alphabet, padded).
    #[serde(rename = "base64")]
    Base64,
}

/// A captured stream.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Stream {
    /// The first `max_output_bytes` of the stream.
    pub text: String,
    /// Bytes the command wrote in total.
    pub bytes: u64,
    /// Whether the stream was longer than `text`.
    pub truncated: bool,
    /// When truncated: the stream's last bytes (at most 4096), after the part not kept.
    pub tail: Option<String>,
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
    /// How `content` is written: "utf-8" (the text as it is) or "base64" (other bytes).
    pub encoding: Option<Encoding>,
    /// The file's content, byte for byte in `encoding`; null when it is not returned.
    pub content: Option<String>,
    /// Why `content` is null.
    pub note: Option<String>,
    /// The file is over a size limit of `collect`: not returned, and the result is an
    /// error.
    pub over_limit: bool,
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
    /// What the command changed in /work (the run's private copy, removed after the
    /// call: collect what you need). The lists hold at most 20 entries each; `counts`
    /// are the totals; `run` is null (there is nothing to undo).
    pub workdir: Option<crate::changes::WorkdirReport>,
    /// sha256 of the closure's store path list: the exact software the command saw.
    pub closure_hash: Option<String>,
    /// The network policy and what the proxy allowed and refused.
    pub network: Option<crate::net::NetworkReport>,
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
    AllowDomain,
}

impl EditOperation {
    pub(super) fn cli(self) -> &'static str {
        match self {
            EditOperation::AddPackage => "add-package",
            EditOperation::RemovePackage => "remove-package",
            EditOperation::AddPythonLibrary => "add-python-library",
            EditOperation::RemovePythonLibrary => "remove-python-library",
            EditOperation::EnableService => "enable-service",
            EditOperation::DisableService => "disable-service",
            EditOperation::AllowDomain => "allow-domain",
        }
    }
}

/// Parameters of `edit_environment`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct EditParams {
    pub operation: EditOperation,
    /// A package attribute (e.g. "jq"), a Python library (e.g. "pandas"), a service
    /// (e.g. "redis") or, for allow_domain, a host name and port (e.g.
    /// "api.example.com:443"; 443 when left out), as environment_context lists them.
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

pub(super) fn stream_of(c: Option<crate::supervise::Captured>) -> Stream {
    let c = c.unwrap_or_default();
    Stream {
        text: c.text,
        bytes: c.bytes,
        truncated: c.truncated,
        tail: c.tail,
    }
}

/// Entries of each list of the workdir report an MCP result keeps.
pub const WORKDIR_LIST_CAP: usize = 20;

/// The workdir report, its lists cut to [`WORKDIR_LIST_CAP`] entries (counts stay).
pub(super) fn workdir_of(
    w: Option<crate::changes::WorkdirReport>,
) -> Option<crate::changes::WorkdirReport> {
    w.map(|mut w| {
        for l in [
            &mut w.changes.added,
            &mut w.changes.modified,
            &mut w.changes.deleted,
        ] {
            l.truncate(WORKDIR_LIST_CAP);
        }
        w.refused.truncate(WORKDIR_LIST_CAP);
        // The run's directory is gone after the call: there is nothing to undo.
        w.run = None;
        w
    })
}

/// What `nixcell run --json` prints: the run's verdict or, when nothing ran, its exit
/// status and the error.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RunReply {
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

    /// The limits the schema states are the ones enforced.
    #[test]
    fn the_schema_states_the_enforced_limits() {
        let v = serde_json::to_value(schemars::schema_for!(RunParams)).unwrap();
        let props = &v["properties"];
        assert_eq!(props["files"]["maxProperties"], MAX_FILES);
        assert_eq!(props["collect"]["maxItems"], MAX_COLLECT_FILES);
        let files = props["files"]["description"].as_str().unwrap();
        assert!(files.contains(&format!("{MAX_FILES} files")), "{files}");
        assert!(files.contains(&MAX_FILES_BYTES.to_string()), "{files}");
        let collect = props["collect"]["description"].as_str().unwrap();
        assert!(collect.contains(&format!("{MAX_COLLECT_FILES} files")));
        assert!(
            collect.contains(&MAX_COLLECT_BYTES.to_string()),
            "{collect}"
        );
        let out = props["max_output_bytes"]["description"].as_str().unwrap();
        assert!(
            out.contains(&format!("default {DEFAULT_OUTPUT_BYTES}")),
            "{out}"
        );
        assert!(out.contains(&format!("{} bytes", crate::supervise::TAIL_BYTES)));
        let defs = &v["$defs"];
        assert_eq!(
            defs["FileContent"]["anyOf"][0]["maxLength"],
            MAX_FILES_BYTES as u64
        );
        assert_eq!(
            defs["EncodedFile"]["properties"]["content"]["maxLength"],
            (MAX_FILES_BYTES as u64).div_ceil(3) * 4
        );
    }
}
