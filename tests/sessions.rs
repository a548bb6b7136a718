//! Cells that live: `nixcell up`, `exec`, `ps`, `down`, as root and rootless. Each
//! test keeps its cells in a state directory of its own (XDG_STATE_HOME).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn redis_env() -> PathBuf {
    build_env(
        "redis-env",
        "pkgs.buildEnv { name = \"redis-env\"; paths = [ pkgs.redis pkgs.busybox ]; }",
    )
}

/// The user's cells: a state directory of the mode's user, and commands using it.
struct Cells {
    mode: Mode,
    state: tempfile::TempDir,
}

impl Cells {
    fn new(mode: Mode) -> Cells {
        Cells {
            mode,
            state: workdir(mode),
        }
    }

    fn cmd(&self) -> Command {
        let state = format!("XDG_STATE_HOME={}", self.state.path().display());
        match self.mode {
            Mode::Root => {
                let mut c = nixcell(Mode::Root);
                c.env("XDG_STATE_HOME", self.state.path());
                c
            }
            Mode::Rootless => {
                let mut c = as_test_user();
                c.arg(state).arg(bin());
                c
            }
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run nixcell")
    }

    /// `up --detach` with these flags; the cell's name.
    fn up(&self, name: &str, args: &[&str]) -> String {
        let o = self.run(&[&["up", "--detach", "--name", name], args].concat());
        let out = ok(&o, "up");
        assert!(out.starts_with(&format!("{name} ")), "{out}");
        name.to_string()
    }

    fn exec(&self, name: &str, argv: &[&str]) -> serde_json::Value {
        let o = self.run(&[&["exec", "--json", name, "--"], argv].concat());
        verdict(&o)
    }

    fn sh(&self, name: &str, script: &str) -> serde_json::Value {
        self.exec(name, &["sh", "-c", script])
    }

    fn ps(&self) -> Vec<serde_json::Value> {
        let o = self.run(&["ps", "--json"]);
        serde_json::from_str::<serde_json::Value>(&ok(&o, "ps --json"))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn sessions(&self) -> PathBuf {
        self.state.path().join("nixcell/sessions")
    }
}

impl Drop for Cells {
    fn drop(&mut self) {
        let _ = self.run(&["down", "--all"]);
    }
}

fn stdout(v: &serde_json::Value) -> &str {
    v["stdout"]["text"].as_str().unwrap_or("")
}

fn assert_exit(v: &serde_json::Value, code: i64, what: &str) {
    assert_eq!(v["exit_code"], code, "{what}: {v}");
}

const CACHE: &str = "v=$(redis-cli get answer); if [ -n \"$v\" ]; then echo \"hit $v\"; \
                     else echo 'miss; caching'; redis-cli set answer 42 >/dev/null; fi";

/// The seed's scenario 2 as a session: redis runs across execs, its dump lands in the
/// workdir at `down`, and the next `up` finds it.
#[test]
fn scenario_2_redis_keeps_its_cache_across_execs_and_down_up() {
    let env = redis_env();
    for mode in MODES {
        let cells = Cells::new(mode);
        let wd = workdir(mode);
        let service =
            "redis:6379=redis-server --port 6379 --bind 127.0.0.1 --save 3600 1 --dir /work";
        let flags = [
            "--env-path",
            path_str(&env),
            "--workdir",
            path_str(wd.path()),
            "--service",
            service,
        ];
        let name = cells.up("cache", &flags);
        let v = cells.sh(&name, CACHE);
        assert_exit(&v, 0, "first exec");
        assert_eq!(stdout(&v), "miss; caching\n", "{mode:?}");
        let v = cells.sh(&name, CACHE);
        assert_eq!(stdout(&v), "hit 42\n", "{mode:?}: {v}");
        let ps = cells.ps();
        assert_eq!(ps.len(), 1, "{ps:?}");
        assert_eq!(ps[0]["services_running"][0], "redis", "{ps:?}");
        assert_eq!(ps[0]["execs_total"], 2, "{ps:?}");
        let o = cells.run(&["down", &name]);
        assert!(
            ok(&o, "down").contains("workdir: +1"),
            "{}",
            text(&o.stdout)
        );
        assert!(
            wd.path().join("dump.rdb").is_file(),
            "{mode:?}: no dump landed"
        );
        cells.up(&name, &flags);
        let v = cells.sh(&name, CACHE);
        assert_eq!(stdout(&v), "hit 42\n", "{mode:?} after down + up: {v}");
        ok(&cells.run(&["down", &name]), "down");
        assert!(cells.ps().is_empty());
    }
}

/// Every exec is confined like a run's command: no capabilities, no_new_privs,
/// seccomp, Landlock (its own domain: PID 1 and other execs are out of signal reach).
#[test]
fn an_exec_is_confined_like_a_run() {
    let bb = busybox();
    for mode in MODES {
        let cells = Cells::new(mode);
        let name = cells.up("conf", &["--env-path", path_str(&bb)]);
        let v = cells.sh(
            &name,
            "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
             kill -9 1 2>/dev/null && echo killed-pid1; \
             unshare -U true 2>/dev/null && echo unshared; \
             echo x > /nix/store/probe 2>/dev/null && echo wrote-store; echo end",
        );
        assert_exit(&v, 0, "probes");
        let out = stdout(&v);
        for want in [
            "CapEff:\t0000000000000000",
            "CapPrm:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
        ] {
            assert!(out.contains(want), "{mode:?}: {want} missing in {out}");
        }
        for bad in ["killed-pid1", "unshared", "wrote-store"] {
            assert!(!out.contains(bad), "{mode:?}: {bad}: {out}");
        }
        for layer in ["landlock", "seccomp", "rlimits", "pid1"] {
            let l = v["layers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["layer"] == layer)
                .unwrap_or_else(|| panic!("{mode:?}: no {layer} layer: {v}"));
            assert_eq!(l["enforced"], true, "{mode:?}: {l}");
        }
        // The cell is still there and its exit status passed back.
        let v = cells.sh(&name, "exit 7");
        assert_exit(&v, 7, "exit status");
        assert_eq!(v["command_exit_code"], 7);
    }
}

/// An exec cannot signal another exec's processes nor a service (Landlock's signal
/// scope: each exec is a domain of its own); both keep running.
#[test]
fn an_exec_cannot_signal_another_exec_or_a_service() {
    let bb = busybox();
    for mode in MODES {
        let cells = Cells::new(mode);
        let name = cells.up(
            "sig",
            &["--env-path", path_str(&bb), "--service", "nap=sleep 4321"],
        );
        let mut other = cells
            .cmd()
            .args(["exec", &name, "--", "sleep", "1234"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let probe = "for i in $(seq 50); do ps | grep -q 'sleep 123[4]' && break; sleep 0.1; done; \
                     for p in $(ps | grep -E 'sleep (1234|4321)' | grep -v grep | awk '{print $1}'); do \
                       kill -TERM $p 2>/dev/null && echo signalled-$p; kill -9 $p 2>/dev/null && echo killed-$p; \
                       cat /proc/$p/environ >/dev/null 2>&1 && echo read-$p; \
                     done; ps | grep -E 'sleep (1234|4321)' | grep -v grep | wc -l";
        let v = cells.sh(&name, probe);
        assert_exit(&v, 0, "probe");
        let out = stdout(&v);
        assert!(
            !out.contains("signalled") && !out.contains("killed"),
            "{mode:?}: {out}"
        );
        assert_eq!(
            out.lines().last(),
            Some("2"),
            "{mode:?}: both still run: {out}"
        );
        assert!(
            other.try_wait().unwrap().is_none(),
            "{mode:?}: the other exec ended"
        );
        // Its own children it may signal.
        let v = cells.sh(&name, "sleep 100 & kill $! && wait $!; echo $?");
        assert_eq!(stdout(&v), "143\n", "{mode:?}: {v}");
        let _ = other.kill();
        let _ = other.wait();
    }
}

/// A client of a holder's socket: asks for its status, prints the answer's type and
/// message.
const STATUS_CLIENT: &str = "import json,socket,struct,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
b=json.dumps({'type':'status'}).encode()
try: s.sendall(struct.pack('<I',len(b))+b)
except BrokenPipeError: pass
h=s.recv(4); n=struct.unpack('<I',h)[0]; d=b''
while len(d)<n: d+=s.recv(n-len(d))
print(json.loads(d)['type'], json.loads(d).get('message',''))
";

/// Only the uid that started the cell may talk to its holder (SO_PEERCRED): root,
/// reaching a user's socket, is refused, and never runs as root in it either way.
#[test]
fn another_uid_is_refused_by_the_holder() {
    let bb = busybox();
    let cells = Cells::new(Mode::Rootless);
    let name = cells.up("peer", &["--env-path", path_str(&bb)]);
    let sock = cells.sessions().join(format!("{name}.sock"));
    let ask = |as_user: bool| -> String {
        let mut c = if as_user {
            let mut c = as_test_user();
            c.arg("python3");
            c
        } else {
            Command::new("python3")
        };
        let o = c.args(["-c", STATUS_CLIENT]).arg(&sock).output().unwrap();
        ok(&o, "python client")
    };
    // The owner is served; the same request from root is refused.
    assert!(ask(true).starts_with("status"), "owner refused");
    let root = ask(false);
    assert!(
        root.starts_with("error refused: the cell belongs to uid"),
        "root was served: {root}"
    );
    // `nixcell exec` as root with the user's state directory does not run either.
    let o = nixcell(Mode::Root)
        .env("XDG_STATE_HOME", cells.state.path())
        .args(["exec", &name, "--", "id"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", text(&o.stdout));
}

fn descendants(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let after = &stat[stat.rfind(')').unwrap() + 1..];
            let ppid: u32 = after.split_whitespace().nth(1).unwrap().parse().unwrap();
            if ppid == p && !all.contains(&pid) {
                all.push(pid);
            }
        }
        i += 1;
    }
    all
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').unwrap() + 1..].trim_start().starts_with('Z'))
}

fn cgroups_named(prefix: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, depth: usize, prefix: &str, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(prefix) {
                out.push(e.path());
            } else if depth > 0 {
                walk(&e.path(), depth - 1, prefix, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 5, prefix, &mut out);
    out
}

/// SIGKILL of the holder: within about a second no process of the cell is left, and
/// the next `ps` removes its socket, state file and cgroup.
#[test]
fn sigkill_of_the_holder_leaves_nothing_behind() {
    let bb = busybox();
    for mode in MODES {
        let cells = Cells::new(mode);
        let name = cells.up(
            "kill",
            &["--env-path", path_str(&bb), "--service", "nap=sleep 4321"],
        );
        let mut exec = cells
            .cmd()
            .args(["exec", &name, "--", "sleep", "1234"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let holder = cells.ps()[0]["holder_pid"].as_u64().unwrap() as u32;
        let deadline = Instant::now() + Duration::from_secs(5);
        let cell = loop {
            let d = descendants(holder);
            // holder, init stage, PID 1, the service and the exec.
            if d.len() >= 5 || Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(cell.len() >= 5, "{mode:?}: the cell's processes: {cell:?}");
        assert!(!cgroups_named(&format!("run-{holder}-")).is_empty() || mode == Mode::Rootless);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(holder as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let t = Instant::now();
        while cell.iter().any(|p| running(*p)) && t.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left: Vec<_> = cell.iter().filter(|p| running(**p)).collect();
        assert!(
            left.is_empty(),
            "{mode:?}: still running after {:?}: {left:?}",
            t.elapsed()
        );
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{mode:?}: {:?}",
            t.elapsed()
        );
        // The client of the exec learns that its cell is gone.
        let st = exec.wait().unwrap();
        assert!(!st.success());
        // The next command cleans what the holder left.
        assert!(cells.ps().is_empty());
        assert_empty_dir(&cells.sessions(), "sessions directory");
        assert_eq!(
            cgroups_named(&format!("run-{holder}-")),
            Vec::<PathBuf>::new()
        );
    }
}

/// Per exec: a timeout kills its processes (124), the cell lives on; output caps.
#[test]
fn an_exec_has_its_own_timeout_and_the_cell_lives_on() {
    let bb = busybox();
    let cells = Cells::new(Mode::Rootless);
    let name = cells.up("time", &["--env-path", path_str(&bb), "--max-output", "10"]);
    let t = Instant::now();
    let o = cells.run(&[
        "exec",
        "--json",
        "--timeout",
        "1s",
        &name,
        "--",
        "sleep",
        "30",
    ]);
    let v = verdict(&o);
    assert_eq!(o.status.code(), Some(124), "{v}");
    assert_eq!(v["timed_out"], true);
    assert!(t.elapsed() < Duration::from_secs(10));
    let v = cells.sh(&name, "echo 0123456789abcdef");
    assert_eq!(v["stdout"]["truncated"], true, "{v}");
    assert_eq!(stdout(&v), "0123456789");
}

/// The idle timeout of the profile (`[session] idle`) takes a cell down.
#[test]
fn an_idle_cell_is_taken_down() {
    let bb = busybox();
    let cells = Cells::new(Mode::Rootless);
    let profile = cells.state.path().join("idle.toml");
    std::fs::write(
        &profile,
        "extends = \"default\"\n[session]\nidle = \"1s\"\n",
    )
    .unwrap();
    chown_to_test_user(&profile);
    let name = cells.up(
        "idle",
        &["--env-path", path_str(&bb), "--profile", path_str(&profile)],
    );
    assert_eq!(cells.ps().len(), 1);
    let deadline = Instant::now() + Duration::from_secs(6);
    while !cells.ps().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cells.ps().is_empty(), "{name} still up");
    assert_empty_dir(&cells.sessions(), "sessions directory");
}

/// `ps` and `down` output, and bad input: exit 125 naming what is wrong.
#[test]
fn ps_down_and_bad_input() {
    let bb = busybox();
    let cells = Cells::new(Mode::Root);
    let o = cells.run(&["ps"]);
    assert!(ok(&o, "ps").contains("no live cells"));
    let name = cells.up("list", &["--env-path", path_str(&bb)]);
    let o = cells.run(&["ps"]);
    let line = ok(&o, "ps");
    assert!(
        line.starts_with("list ") && line.contains("closure "),
        "{line}"
    );
    let ps = cells.ps();
    assert_eq!(ps[0]["name"], "list");
    assert_eq!(ps[0]["closure_hash"].as_str().unwrap().len(), 64);
    assert_eq!(ps[0]["profile"], "default");
    let err = fails(
        &cells.run(&[
            "up",
            "--detach",
            "--name",
            "list",
            "--env-path",
            path_str(&bb),
        ]),
        "taken",
    );
    assert!(err.contains("already up"), "{err}");
    let err = fails(
        &cells.run(&["up", "--name", "../x", "--env-path", path_str(&bb)]),
        "name",
    );
    assert!(err.contains("--name"), "{err}");
    let err = fails(
        &cells.run(&["up", "--env-path", path_str(&bb), "--", "true"]),
        "cmd",
    );
    assert!(err.contains("exec"), "{err}");
    let err = fails(&cells.run(&["exec", "nope", "--", "true"]), "unknown");
    assert!(err.contains("no live cell named 'nope'"), "{err}");
    let v = verdict(&cells.run(&["exec", "--json", "nope", "--", "true"]));
    assert_eq!(v["error"]["kind"], "usage");
    let v = cells.exec(&name, &["no-such-program"]);
    assert_exit(&v, 127, "not found");
    let o = cells.run(&["down", &name]);
    assert!(ok(&o, "down").contains("list: down"));
    assert!(cells.ps().is_empty());
    let err = fails(&cells.run(&["down", "list"]), "down twice");
    assert!(err.contains("no live cell"), "{err}");
}

/// The seed's scenario 2 with the project's declared redis: in a session its data
/// lives in the project's `.devenv/state/redis` (as devenv keeps it) and survives
/// `down` + `up`; a one-shot run still starts it empty.
#[test]
fn scenario_2_the_projects_redis_keeps_its_data_in_devenv_state() {
    let p = git_project(
        "sess",
        &[(
            "devenv.nix",
            "{ pkgs, ... }: {\n  packages = [ pkgs.busybox ];\n  services.redis.enable = true;\n}\n",
        )],
    );
    let cells = Cells::new(Mode::Root);
    let in_project = |args: &[&str]| {
        cells
            .cmd()
            .current_dir(p.path())
            .env(
                "NIX_PATH",
                format!("nixpkgs={}", repo().join("tests/fixtures/pkgs").display()),
            )
            .args(args)
            .output()
            .unwrap()
    };
    ok(&in_project(&["up", "--detach", "--name", "proj"]), "up");
    assert_eq!(stdout(&cells.sh("proj", CACHE)), "miss; caching\n");
    assert_eq!(stdout(&cells.sh("proj", CACHE)), "hit 42\n");
    ok(&cells.run(&["down", "proj"]), "down");
    let dump = p.path().join(".devenv/state/redis/dump.rdb");
    assert!(dump.is_file(), "no dump in the project's state directory");
    ok(
        &in_project(&["up", "--detach", "--name", "proj"]),
        "up again",
    );
    let ps = cells.ps();
    assert_eq!(
        ps[0]["project"],
        path_str(&std::fs::canonicalize(p.path()).unwrap())
    );
    assert_eq!(stdout(&cells.sh("proj", CACHE)), "hit 42\n");
    ok(&cells.run(&["down", "proj"]), "down");
    let o = in_project(&["run", "--json", "--", "sh", "-c", CACHE]);
    assert_eq!(stdout(&verdict(&o)), "miss; caching\n");
}

/// MCP: runs with a `session` share one cell (through the Python SDK client), and the
/// server takes its sessions down when it ends.
#[test]
fn mcp_runs_of_one_session_share_a_cell() {
    let py = mcp_python();
    let p = git_project(
        "mcps",
        &[(
            "devenv.nix",
            "{ pkgs, ... }: {\n  packages = [ pkgs.busybox pkgs.python3 ];\n  services.redis.enable = true;\n}\n",
        )],
    );
    let cells = Cells::new(Mode::Root);
    let out = Command::new(&py)
        .env("XDG_CACHE_HOME", repo().join("target/test-cache/root"))
        .env("XDG_STATE_HOME", cells.state.path())
        .env("NIXCELL_EVAL_PATHS", fixture_eval_paths())
        .env(
            "NIX_PATH",
            format!("nixpkgs={}", repo().join("tests/fixtures/pkgs").display()),
        )
        .env("NIX_CONFIG", "substituters =\n")
        .arg(repo().join("tests/mcp_client.py"))
        .args(["sessions", bin(), "--project"])
        .arg(p.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(cells.ps().is_empty(), "the server's sessions are still up");
    assert_empty_dir(&cells.sessions(), "sessions directory");
}

/// A cell's process that reaches a holder's socket (here through a bind of the state
/// directory) has the caller's uid on the host, yet is refused: it is in another user
/// namespace.
#[test]
fn a_process_in_a_cell_is_refused_by_the_holder() {
    let bb = busybox();
    let py = std::fs::canonicalize(repo().join("target/nix-fixture/python-bare")).unwrap();
    let cells = Cells::new(Mode::Rootless);
    let name = cells.up("inner", &["--env-path", path_str(&bb)]);
    let bind = format!("{}:/s", cells.sessions().display());
    let o = cells.run(&[
        "run",
        "--env-path",
        path_str(&py),
        "--ro-bind",
        &bind,
        "--",
        "python3",
        "-c",
        STATUS_CLIENT,
        &format!("/s/{name}.sock"),
    ]);
    let out = ok(&o, "client in a cell");
    assert!(
        out.starts_with("error refused: the caller runs in another user namespace"),
        "a cell reached the holder: {out}"
    );
}

/// An exec whose client is killed is killed too; the cell lives on.
#[test]
fn an_exec_ends_with_its_client() {
    let bb = busybox();
    let cells = Cells::new(Mode::Rootless);
    let name = cells.up("client", &["--env-path", path_str(&bb)]);
    let mut client = cells
        .cmd()
        .args(["exec", &name, "--", "sleep", "1234"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let count = "ps | grep 'sleep 123[4]' | wc -l";
    let deadline = Instant::now() + Duration::from_secs(5);
    while stdout(&cells.sh(&name, count)).trim() != "1" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        stdout(&cells.sh(&name, count)).trim(),
        "1",
        "the exec never ran"
    );
    // setpriv execs the client: its pid is nixcell's.
    client.kill().unwrap();
    client.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while stdout(&cells.sh(&name, count)).trim() != "0" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        stdout(&cells.sh(&name, count)).trim(),
        "0",
        "the exec outlived its client"
    );
}
