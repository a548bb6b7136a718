//! `nixcell oci …` and the same command line under the name `nixcell-runc` (argv[0]'s
//! file name, e.g. through a symlink that containerd's `BinaryName` or podman's
//! `--runtime` names): runc's flags and subcommands as its callers use them. Errors
//! exit 1, as runc's do (the engines read the message from `--log`).

use crate::oci::{self, CreateArgs, Globals};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// The name under which the binary answers as an OCI runtime.
pub const RUNC_NAME: &str = "nixcell-runc";

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = false)]
pub struct OciArgs {
    /// Directory of the containers' state (default /run/nixcell-runc as root, else
    /// $XDG_RUNTIME_DIR/nixcell-runc).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// File the runtime's log lines are appended to.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of the log: text or json (one object per line: level, msg, time).
    #[arg(long = "log-format", global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Log informational lines on stderr as well.
    #[arg(long, global = true)]
    debug: bool,
    /// Cgroups through systemd: refused (nixcell manages cgroupfs itself).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Print the runtime's version and the runtime-spec version.
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    cmd: Option<OciCmd>,
}

#[derive(Subcommand, Debug)]
enum OciCmd {
    /// Create a container from a bundle; its command waits for `start`.
    Create {
        /// The bundle directory (holding config.json); default the current directory.
        #[arg(long, short = 'b')]
        bundle: Option<PathBuf>,
        /// File to write the container's PID 1 (as seen by the host) to.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Unix socket that receives the terminal's master (process.terminal).
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Accepted: nixcell always pivots into its own root.
        #[arg(long = "no-pivot")]
        no_pivot: bool,
        /// Accepted: a cell never joins the caller's session keyring.
        #[arg(long = "no-new-keyring")]
        no_new_keyring: bool,
        /// Extra descriptors to pass to the container: only 0 is supported.
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        /// The container's id.
        id: String,
    },
    /// Run the command of a created container.
    Start {
        /// The container's id.
        id: String,
    },
    /// Print the container's state (runtime-spec state JSON).
    State {
        /// The container's id.
        id: String,
    },
    /// Send a signal (default SIGTERM) to the container's PID 1.
    Kill {
        /// Accepted: the signal reaches PID 1, which passes it on to the command.
        #[arg(long, short = 'a')]
        all: bool,
        /// The container's id.
        id: String,
        /// The signal: a name (TERM, SIGTERM) or a number.
        signal: Option<String>,
    },
    /// Remove a stopped container (a running one with --force, killed first).
    Delete {
        /// Kill the container first if it is running.
        #[arg(long, short = 'f')]
        force: bool,
        /// The container's id.
        id: String,
    },
    /// List the host pids of the container's processes.
    Ps {
        /// table or json.
        #[arg(long, short = 'f', default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// The container's id.
        id: String,
    },
    /// Run another process in a running container, under the same layers.
    Exec {
        /// A runtime-spec process JSON file (args, env, cwd, user, terminal).
        #[arg(long, short = 'p')]
        process: Option<PathBuf>,
        /// Return once the process runs (the caller waits for the pid).
        #[arg(long, short = 'd')]
        detach: bool,
        /// File to write the process's pid (as seen by the host) to.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Give the process a terminal (its master goes to --console-socket).
        #[arg(long, short = 't')]
        tty: bool,
        /// Unix socket that receives the terminal's master.
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<String>,
        /// NAME=VALUE added to the environment; repeatable.
        #[arg(long, short = 'e')]
        env: Vec<String>,
        /// UID[:GID]: only the container's own identity.
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// A capability added to the container's sets (within the profile's oci_allow).
        #[arg(long = "cap", short = 'c')]
        cap: Vec<String>,
        /// Set no_new_privs for the process.
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        /// The container's id.
        id: String,
        /// The command and its arguments (without --process).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print what this runtime supports (runtime-spec features JSON).
    Features,
}

/// The command line when the binary is called `nixcell-runc`.
#[derive(Parser, Debug)]
#[command(name = RUNC_NAME, about = "nixcell as an OCI runtime (runc's command line)")]
struct RuncCli {
    #[command(flatten)]
    args: OciArgs,
}

/// Whether argv[0] names the runtime (`…/nixcell-runc`).
pub fn called_as_runc() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == RUNC_NAME))
        .unwrap_or(false)
}

/// Entry when called as `nixcell-runc`.
pub fn main_runc() -> i32 {
    match RuncCli::try_parse() {
        Ok(c) => main(&c.args),
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() { 1 } else { 0 }
        }
    }
}

/// `nixcell oci …`.
pub fn main(a: &OciArgs) -> i32 {
    let g = Globals {
        root: a.root.clone(),
        log: a.log.clone(),
        log_json: a.log_format.as_deref() == Some("json"),
        debug: a.debug,
    };
    if a.version {
        println!(
            "{RUNC_NAME} version {}\nspec: {}",
            env!("CARGO_PKG_VERSION"),
            oci::state::OCI_VERSION
        );
        return 0;
    }
    if let Some(OciCmd::Exec { .. }) = &a.cmd
        && !a.systemd_cgroup
    {
        return match exec(&g, a.cmd.as_ref()) {
            Ok(code) => code,
            Err(e) => {
                g.log("error", &e);
                // runc exec's status when the process did not start.
                255
            }
        };
    }
    let r = if a.systemd_cgroup {
        Err(
            "--systemd-cgroup: not supported, nixcell manages its cgroups on cgroupfs \
             (podman: --cgroup-manager cgroupfs; containerd: SystemdCgroup = false)"
                .to_string(),
        )
    } else {
        run(&g, a.cmd.as_ref())
    };
    match r {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            0
        }
        Err(e) => {
            g.log("error", &e);
            1
        }
    }
}

fn exec(g: &Globals, cmd: Option<&OciCmd>) -> Result<i32, String> {
    let Some(OciCmd::Exec {
        process,
        detach,
        pid_file,
        tty,
        console_socket,
        cwd,
        env,
        user,
        cap,
        no_new_privs,
        id,
        args,
    }) = cmd
    else {
        return Err("exec: no arguments".into());
    };
    oci::exec::exec(
        g,
        &oci::exec::ExecArgs {
            id: id.clone(),
            process: process.clone(),
            args: args.clone(),
            env: env.clone(),
            cwd: cwd.clone(),
            user: user.clone(),
            caps: cap.clone(),
            no_new_privs: *no_new_privs,
            tty: *tty,
            detach: *detach,
            pid_file: pid_file.clone(),
            console_socket: console_socket.clone(),
        },
    )
}

fn run(g: &Globals, cmd: Option<&OciCmd>) -> Result<String, String> {
    let Some(cmd) = cmd else {
        return Err(
            "a subcommand is needed (create, start, state, kill, delete, exec, ps, features)"
                .into(),
        );
    };
    match cmd {
        OciCmd::Create {
            bundle,
            pid_file,
            console_socket,
            preserve_fds,
            id,
            ..
        } => {
            if *preserve_fds != 0 {
                return Err(format!(
                    "--preserve-fds {preserve_fds}: a cell gets no descriptors but its stdio"
                ));
            }
            oci::create(
                g,
                &CreateArgs {
                    id: id.clone(),
                    bundle: bundle.clone(),
                    pid_file: pid_file.clone(),
                    console_socket: console_socket.clone(),
                },
            )
            .map(|()| String::new())
        }
        OciCmd::Start { id } => oci::start(g, id).map(|()| String::new()),
        OciCmd::State { id } => oci::state_json(g, id),
        OciCmd::Kill { id, signal, .. } => {
            oci::kill(g, id, signal.as_deref().unwrap_or("TERM")).map(|()| String::new())
        }
        OciCmd::Delete { force, id } => oci::delete(g, id, *force).map(|()| String::new()),
        OciCmd::Ps { format, id } => oci::ps(g, id, format == "json"),
        OciCmd::Features => Ok(oci::features()),
        OciCmd::Exec { .. } => exec(g, Some(cmd)).map(|_| String::new()),
    }
}
