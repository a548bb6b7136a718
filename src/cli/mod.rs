//! The command line: `nixcell run`, `nixcell doctor`, and the front-end commands of
//! [`crate::front`] (`build`, `context`, `edit`, `proposals`, `approve`, `reject`).
//!
//! Conventions every command keeps: `--json` is the one spelling of machine output,
//! and with it a failure is printed as JSON too (the error object of the verdict, see
//! [`crate::verdict::report_refusal`]); every flag has help text (a test walks the
//! tree); sizes are shown by [`crate::units::human_size`]; a listing with nothing in
//! it says so.

pub mod oci;
pub mod serve;
pub mod shell;

use crate::plan::{self, CellRequest};

pub mod session;

use crate::units::{parse_duration, parse_size};
use crate::verdict::{ErrorKind, VerdictError};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

/// Exit status when nixcell itself failed before the command ran.
pub const EXIT_SETUP: i32 = crate::verdict::EXIT_REFUSED;

#[derive(Parser, Debug)]
#[command(
    name = "nixcell",
    version,
    about = "Run untrusted commands inside exactly a Nix closure",
    after_help = "Exit status of `run`: the command's; 124 timeout; 125 nixcell failed before \
                  the command ran; 126 not executable; 127 not found; 128+N killed by signal N."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a command in a cell made of exactly the closure of its environment: store
    /// paths, packages, a flake output, or the project's devenv.nix.
    #[command(override_usage = "nixcell run [OPTIONS] [--] COMMAND [ARGS]...")]
    Run(Box<RunArgs>),
    /// An interactive shell (the closure's bash, else sh) in a new cell, on a pty of its
    /// own; the flags of `run`, and COMMAND to run another program; `--session NAME`:
    /// in the live session cell NAME instead.
    #[command(
        override_usage = "nixcell shell [OPTIONS] [-- COMMAND [ARGS]...]\n       nixcell shell --session NAME [--json] [--timeout D] [-- COMMAND [ARGS]...]"
    )]
    Shell(Box<shell::ShellArgs>),
    /// Report what this kernel and host can enforce.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate and build the project's devenv.nix (cached; keeps a GC root).
    Build(crate::front::BuildArgs),
    /// Pin the package set in devenv.lock (written on first use; `--update` moves it).
    Lock(crate::front::LockArgs),
    /// Describe the built environment: packages, Python libraries, services, limits, edits.
    Context(crate::front::ContextArgs),
    /// Change devenv.nix within the policy of nixcell.toml; proven by a build, committed.
    Edit(crate::front::EditArgs),
    /// List the proposals waiting for a human.
    Proposals(crate::front::ProposalsArgs),
    /// Apply a proposal (built again and committed).
    Approve(crate::front::DecideArgs),
    /// Reject a proposal.
    Reject(crate::front::DecideArgs),
    /// Serve the Model Context Protocol on stdin/stdout for agents.
    Mcp(McpArgs),
    /// Run this user's `nixcell run` cells from a long-lived process (used by `run`
    /// whenever it is listening; until SIGINT/SIGTERM/SIGHUP).
    Serve(serve::ServeArgs),
    /// List recent runs whose workdir changes were applied (newest first).
    Runs {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a workdir to what it was before a run's changes were applied.
    Undo {
        /// The run (an id from `nixcell runs`); default: the latest one for the current
        /// directory (its workdir or project).
        run: Option<String>,
        /// Undo also paths that changed since the run.
        #[arg(long)]
        force: bool,
        /// Print what was restored as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a cell that lives, its services running; prints its name and id.
    ///
    /// The environment is the project's, or --env-path/--with, as for `run`. Stays in
    /// the foreground until Ctrl-C or `down` unless --detach.
    Up(Box<session::UpArgs>),
    /// Run a command in a live cell: a fresh process, confined like a run.
    #[command(override_usage = "nixcell exec [OPTIONS] NAME [--] COMMAND [ARGS]...")]
    Exec(session::ExecArgs),
    /// List the live cells: name, id, project, closure, services, age, usage.
    Ps {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a live cell's services, tear it down and land its workdir changes.
    Down(session::DownArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout, or write one page per command into DIR.
    Man {
        /// Write nixcell.1, nixcell-run.1, ... into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The OCI runtime (runc's command line; also the binary called `nixcell-runc`).
    Oci(oci::OciArgs),
}

#[derive(Args, Debug, Clone)]
pub struct McpArgs {
    /// The project (devenv.nix, nixcell.toml) whose environment the server offers.
    #[arg(long, value_name = "DIR", conflicts_with = "env_paths")]
    pub project: Option<PathBuf>,
    /// Serve fixed store paths instead of a project (no edits); repeatable.
    #[arg(long = "env-path", value_name = "PATH")]
    pub env_paths: Vec<PathBuf>,
    /// Sandbox profile of every run (a built-in name or a TOML file; default: the
    /// project's, else "default"); limits an agent asks for stay within the profile's.
    #[arg(long, value_name = "NAME|PATH")]
    pub profile: Option<String>,
    /// Serve Streamable HTTP instead of stdio, on a loopback address (127.0.0.1:PORT,
    /// [::1]:PORT; port 0 picks one) or a unix socket (unix:PATH); needs --token-file.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    pub listen: Option<String>,
    /// File (mode 600) holding the bearer token HTTP clients must send
    /// (`Authorization: Bearer TOKEN`, at least 32 characters).
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub token_file: Option<PathBuf>,
    /// Cells at once; runs beyond wait their turn (default: as many as the machine's
    /// memory holds at the profile's per-run memory limit, at most 4 per CPU).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_runs: Option<u32>,
    /// Runs that may wait for a cell; one more is refused with an MCP error saying
    /// the server is busy (default: 256).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=65536))]
    pub max_queued: Option<u32>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A store path (or a link to one) whose closure is part of the cell; repeatable.
    /// The bin/ of each forms PATH, in order.
    #[arg(long = "env-path", value_name = "PATH")]
    pub env_paths: Vec<PathBuf>,
    /// A package of the package set (attribute path) in the cell; repeatable.
    #[arg(long = "with", value_name = "NAME")]
    pub with: Vec<String>,
    /// A flake output to use as the environment, e.g. `.#devShells.x86_64-linux.default`.
    #[arg(long = "env", value_name = "INSTALLABLE")]
    pub flakes: Vec<String>,
    /// Evaluate flakes impurely (`nix build --impure`).
    #[arg(long)]
    pub impure: bool,
    /// The project whose devenv.nix is the environment when no --env-path, --with or
    /// --env is given (default: found from the current directory).
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// A host directory mounted at /work, the command's working directory; copy-on-write
    /// by default: the cell's changes are checked and applied after the run.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Bind a host path read-only into the cell (DST defaults to SRC); repeatable.
    #[arg(long = "ro-bind", value_name = "SRC[:DST]")]
    pub ro_binds: Vec<String>,
    /// Bind a host path read-write into the cell; repeatable.
    #[arg(long = "bind", value_name = "SRC[:DST]")]
    pub binds: Vec<String>,
    /// Set an environment variable in the cell; repeatable.
    #[arg(long = "setenv", value_name = "NAME=VALUE")]
    pub setenv: Vec<String>,
    /// Print one JSON verdict on stdout; the command's output is captured into it.
    #[arg(long)]
    pub json: bool,
    /// uid inside the cell.
    #[arg(long, default_value_t = 1000)]
    pub uid: u32,
    /// gid inside the cell.
    #[arg(long, default_value_t = 1000)]
    pub gid: u32,
    /// Host uid of the cell when started as root (default: the workdir's owner if not
    /// root, else the first id of "nixcell" in /etc/subuid, else 65534).
    #[arg(long, value_name = "UID")]
    pub host_uid: Option<u32>,
    /// Host gid of the cell when started as root.
    #[arg(long, value_name = "GID")]
    pub host_gid: Option<u32>,
    /// Host name inside the cell.
    #[arg(long, default_value = "nixcell")]
    pub hostname: String,
    /// Size cap of the cell's /tmp [default: the project's limit, else 256M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub tmp_size: Option<u64>,
    /// Sandbox profile: a built-in name (default, strict, ci) or a TOML file
    /// [default: the project's, else "default"].
    #[arg(long, value_name = "NAME|PATH")]
    pub profile: Option<String>,
    /// Wall-clock limit; at expiry the whole cell is killed (exit 124). Default: the profile's.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Memory limit of the whole cell (no swap). Default: the profile's.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// CPU quota of the whole cell, in CPUs (e.g. 1.5). Default: the profile's.
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads in the cell. Default: the profile's.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pids: Option<u64>,
    /// A loopback TCP port the cell may bind and connect to despite the profile's
    /// Landlock network rules; repeatable.
    #[arg(long = "allow-port", value_name = "PORT")]
    pub allow_ports: Vec<u16>,
    /// A name (or an address written as such) the cell may reach through nixcell's
    /// proxy, as HOST:PORT or *.SUFFIX:PORT, added to the profile's and project's
    /// [network] allow list; repeatable.
    #[arg(long = "allow-host", value_name = "HOST:PORT", value_parser = crate::net::Entry::parse)]
    pub allow_hosts: Vec<crate::net::Entry>,
    /// Bytes kept of each captured stream (--json). Default: the project's, else the profile's.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_output: Option<u64>,
    /// Start a service in the cell before the command and stop it after:
    /// NAME[:PORT]=COMMAND ARGS (split on spaces). With a PORT the command waits until
    /// 127.0.0.1:PORT accepts connections. Repeatable.
    #[arg(long = "service", value_name = "NAME[:PORT]=COMMAND")]
    pub services: Vec<String>,
    /// The command and its arguments: the first word that is not an option starts it
    /// (`nixcell run --with jq jq --version`); after `--` any word does.
    #[arg(value_name = "COMMAND", trailing_var_arg = true, num_args = 0..)]
    pub command: Vec<String>,
}

impl RunArgs {
    pub fn request(&self) -> Result<CellRequest, plan::PlanError> {
        let mut binds: Vec<(&'static str, String)> = Vec::new();
        binds.extend(self.ro_binds.iter().map(|b| ("--ro-bind", b.clone())));
        binds.extend(self.binds.iter().map(|b| ("--bind", b.clone())));
        let services = self
            .services
            .iter()
            .map(|s| plan::ServiceRequest::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CellRequest {
            env_paths: self.env_paths.clone(),
            workdir: self.workdir.clone(),
            binds,
            setenv: self.setenv.clone(),
            uid: self.uid,
            gid: self.gid,
            host_uid: self.host_uid,
            host_gid: self.host_gid,
            hostname: self.hostname.clone(),
            tmp_size_bytes: self.tmp_size.unwrap_or(256 << 20),
            argv: self.command.clone(),
            services,
            log_dir: None,
            protect: Vec::new(),
            image_root: false,
        })
    }
}

fn parse_cpus(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(c) if c.is_finite() && c > 0.0 => Ok(c),
        _ => Err(format!("'{s}' is not a number of CPUs (examples: 1, 1.5)")),
    }
}

/// The clap definition of the whole command line (completions, man page, tests).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs the CLI; returns the process exit status.
pub fn main() -> i32 {
    if oci::called_as_runc() {
        return oci::main_runc();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return parse_error(&e),
    };
    match cli.command {
        Command::Run(args) => run(&args),
        Command::Shell(args) => shell::main(&args),
        Command::Doctor { json } => crate::doctor::main(json),
        Command::Build(a) => crate::front::build(&a),
        Command::Lock(a) => crate::front::lock(&a),
        Command::Context(a) => crate::front::context(&a),
        Command::Edit(a) => crate::front::edit(&a),
        Command::Proposals(a) => crate::front::proposals(&a),
        Command::Approve(a) => crate::front::approve(&a),
        Command::Reject(a) => crate::front::reject(&a),
        Command::Mcp(args) => mcp(&args),
        Command::Serve(a) => serve::main(&a),
        Command::Runs { json } => runs(json),
        Command::Undo { run, force, json } => undo(run.as_deref(), force, json),
        Command::Up(a) => session::up(&a),
        Command::Exec(a) => session::exec(&a),
        Command::Ps { json } => session::ps(json),
        Command::Down(a) => session::down(&a),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "nixcell", &mut std::io::stdout());
            0
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Oci(a) => oci::main(&a),
    }
}

/// A command line clap refused. `--help` and `--version` print and succeed; anything
/// else is a usage error (exit 125), in JSON too when `--json` is among the options
/// (before any `--`): `run`'s verdict shape, or the error object for other commands.
fn parse_error(e: &clap::Error) -> i32 {
    if !e.use_stderr() {
        let _ = e.print();
        return 0;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = args.iter().take_while(|a| *a != "--");
    let json = options.clone().any(|a| a == "--json");
    if !json {
        let _ = e.print();
        return EXIT_SETUP;
    }
    let is_run = args.first().is_some_and(|a| a == "run");
    let location = match e.get(clap::error::ContextKind::InvalidArg) {
        Some(clap::error::ContextValue::String(s)) => s.split_whitespace().next().map(String::from),
        _ => None,
    };
    // clap's own rendering up to its usage line, without the "error: " prefix: the
    // message and clap's tip, if any, on one line.
    let text = e.render().to_string();
    let message = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join("; ");
    let message = message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_string();
    crate::verdict::report_refusal(
        true,
        VerdictError::new(ErrorKind::Usage, message, location),
        is_run,
    )
}

fn man(dir: Option<&std::path::Path>) -> i32 {
    let res = match dir {
        Some(d) => clap_mangen::generate_to(command(), d),
        None => clap_mangen::Man::new(command()).render(&mut std::io::stdout()),
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("nixcell: man: {e}");
            1
        }
    }
}

fn runs(json: bool) -> i32 {
    let list = crate::changes::list_runs();
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|j| {
                serde_json::json!({"id": j.id, "time": j.time, "workdir": j.workdir,
                    "counts": j.counts, "undone": j.undone})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return 0;
    }
    if list.is_empty() {
        println!(
            "no runs: none of the kept runs changed a workdir (copy-on-write changes are \
             journaled when they are applied)"
        );
    }
    for j in &list {
        println!(
            "{} {} {} +{} ~{} -{}{}",
            j.id,
            j.time,
            j.workdir.display(),
            j.counts.added,
            j.counts.modified,
            j.counts.deleted,
            if j.undone { " (undone)" } else { "" }
        );
    }
    0
}

fn undo(run: Option<&str>, force: bool, json: bool) -> i32 {
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|d| std::fs::canonicalize(d).ok())
        .unwrap_or_default();
    let res = crate::changes::find_run(run, &cwd).and_then(|j| crate::changes::undo(&j, force));
    match res {
        Ok(u) if json => {
            println!("{}", serde_json::to_string(&u).unwrap_or_default());
            0
        }
        Ok(u) => {
            println!(
                "undid run {} in {}: {} restored, {} removed",
                u.run,
                u.workdir.display(),
                u.restored.len(),
                u.removed.len()
            );
            0
        }
        Err(e) => {
            use crate::changes::UndoError as U;
            let (kind, location) = match &e {
                U::Conflict { .. } => (ErrorKind::Refused, None),
                U::Workdir { path, .. } => (ErrorKind::Usage, Some(path.display().to_string())),
                U::Io(_) => (ErrorKind::Environment, None),
                _ => (ErrorKind::Usage, None),
            };
            let err = VerdictError::new(kind, format!("undo: {e}"), location);
            crate::verdict::report_failure(json, err, 1)
        }
    }
}

fn mcp(args: &McpArgs) -> i32 {
    let target = if !args.env_paths.is_empty() {
        crate::mcp::Target::EnvPaths(args.env_paths.clone())
    } else {
        let dir = args.project.clone().unwrap_or_else(|| PathBuf::from("."));
        match std::fs::canonicalize(&dir) {
            Ok(d) => crate::mcp::Target::Project(d),
            Err(e) => {
                eprintln!("nixcell: --project {}: {e}", dir.display());
                return EXIT_SETUP;
            }
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nixcell: cannot start the runtime: {e}");
            return EXIT_SETUP;
        }
    };
    let concurrency = crate::mcp::Concurrency {
        max_runs: args.max_runs.map(|n| n as usize),
        max_queued: args.max_queued.map(|n| n as usize),
    };
    let served = match (&args.listen, &args.token_file) {
        (Some(l), Some(t)) => {
            let http = crate::mcp::http::parse_listen(l)
                .and_then(|l| Ok((l, crate::mcp::http::read_token(t)?)));
            match http {
                Ok((l, token)) => rt.block_on(crate::mcp::http::serve_http(
                    target,
                    args.profile.clone(),
                    l,
                    token,
                    concurrency,
                )),
                Err(e) => {
                    eprintln!("nixcell: {e}");
                    return EXIT_SETUP;
                }
            }
        }
        _ => rt.block_on(crate::mcp::serve(target, args.profile.clone(), concurrency)),
    };
    match served {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("nixcell: {e}");
            1
        }
    }
}

impl RunArgs {
    /// The run these flags ask for.
    pub fn run_request(&self) -> Result<crate::run::RunRequest, plan::PlanError> {
        Ok(crate::run::RunRequest {
            cell: self.request()?,
            sources: crate::front::EnvSources {
                with: self.with.clone(),
                flakes: self.flakes.clone(),
                impure: self.impure,
                project: self.project.clone(),
            },
            profile: self.profile.clone(),
            limits: crate::run::limits::Overrides {
                timeout: self.timeout,
                memory: self.memory,
                cpus: self.cpus,
                pids: self.pids,
                max_output: self.max_output,
            },
            tmp_size: self.tmp_size,
            allow_ports: self.allow_ports.clone(),
            allow_hosts: self.allow_hosts.clone(),
            capture: self.json,
        })
    }
}

/// The `RunRequest` of a `run` command line, or the verdict error that refuses it.
fn run_request(args: &RunArgs) -> Result<crate::run::RunRequest, Box<VerdictError>> {
    args.run_request()
        .map_err(|e| Box::new(VerdictError::of_run_error(&crate::run::RunError::Plan(e))))
}

fn run(args: &RunArgs) -> i32 {
    if let Some(code) = serve::served(args) {
        return code;
    }
    let req = match run_request(args) {
        Ok(r) => r,
        Err(e) => return crate::verdict::report_refusal(args.json, *e, true),
    };
    match crate::run::prepare(req).and_then(|p| p.run()) {
        Ok(v) => report(args, &v),
        Err(e) => crate::verdict::report_refusal(args.json, VerdictError::of_run_error(&e), true),
    }
}

/// Prints a run's verdict (`--json`) or what the user is to know of it; its exit status.
fn report(args: &RunArgs, v: &crate::verdict::Verdict) -> i32 {
    if args.json {
        println!("{}", serde_json::to_string(v).unwrap_or_default());
    } else if let Some(err) = &v.error {
        eprintln!("nixcell: {}", err.message);
    } else if v.timed_out {
        eprintln!("nixcell: timed out; the cell was killed");
    } else if v.oom_killed {
        eprintln!("nixcell: out of memory; the cell's memory limit was reached");
    }
    if let Some(w) = v.workdir.as_ref().filter(|_| !args.json) {
        if w.cap_hit {
            eprintln!("nixcell: the workdir's copy-on-write cap was hit; no change was applied");
        }
        for r in &w.refused {
            // A refusal of no path is the whole apply's (its journal, its layer).
            let path = match crate::changes::shown(&r.path) {
                p if p.is_empty() => String::new(),
                p => format!(" {p}:"),
            };
            eprintln!(
                "nixcell: workdir:{path} {}",
                crate::changes::shown(&r.reason)
            );
        }
    }
    if !args.json {
        for h in &v.hints {
            eprintln!("nixcell: hint: {}", h.message);
        }
    }
    v.exit_code
}
