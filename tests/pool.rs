//! `nixcell serve`: a running server serves `nixcell run` (seen in its log), with the
//! verdict a cold run gets; many served runs leave nothing behind and see nothing of
//! each other; a killed server leaves nothing behind and `run` runs the cell itself.
//! Root and rootless.

mod common;
use common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `program` as `mode`'s user, with nixcell's environment of the tests and its own
/// state directory (where the socket is).
fn cmd_of(mode: Mode, state: &Path, program: &str) -> Command {
    match mode {
        Mode::Root => {
            let mut c = Command::new(program);
            c.env("XDG_CACHE_HOME", repo().join("target/test-cache/root"))
                .env("NIXCELL_EVAL_PATHS", fixture_eval_paths())
                .env("XDG_STATE_HOME", state);
            c
        }
        Mode::Rootless => {
            // `env VAR=VALUE` before the program (setpriv resets the environment).
            let mut c = as_test_user();
            c.arg(format!("XDG_STATE_HOME={}", state.display()))
                .arg(program);
            c
        }
    }
}

/// `nixcell` as `mode`'s user with its own state directory.
fn cmd(mode: Mode, state: &Path) -> Command {
    cmd_of(mode, state, bin())
}

fn state_dir(mode: Mode) -> tempfile::TempDir {
    let d = workdir(mode);
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    d
}

struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(mode: Mode, state: &Path) -> Server {
        let log = state.with_extension("serve.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd(mode, state)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        let s = Server { child, log };
        let t = Instant::now();
        while !s.log().contains("listening on") {
            assert!(t.elapsed() < Duration::from_secs(30), "serve: {}", s.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn log(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.log)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    fn served(&self) -> usize {
        self.log().matches(": served, exit ").count()
    }

    /// Served runs whose init stage had been started ahead (the warm pool).
    fn pooled(&self) -> usize {
        self.log().matches("(an init stage started ahead)").count()
    }

    /// The server's pid (the setpriv/env in front of it exec into it).
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_json(mode: Mode, state: &Path, extra: &[&str], script: &str) -> serde_json::Value {
    let bb = busybox();
    let out = cmd(mode, state)
        .args(["run", "--json", "--env-path"])
        .arg(&bb)
        .args(extra)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    verdict(&out)
}

/// A verdict without what differs between any two runs (times, usage).
fn comparable(mut v: serde_json::Value) -> serde_json::Value {
    let o = v.as_object_mut().unwrap();
    o.remove("wall_time_ms");
    o.remove("usage");
    // Layer reports arrive from two processes (PID 1, the command): in either order.
    if let Some(l) = o.get_mut("layers").and_then(|l| l.as_array_mut()) {
        l.sort_by_key(|x| x["layer"].to_string());
    }
    v
}

const PROBES: &[(&[&str], &str)] = &[
    (&[], "echo out; echo err >&2"),
    (&[], "echo failing; exit 3"),
    (&["--timeout", "1s"], "sleep 30"),
    // Denied by the layers: the store is read-only, no new user namespace.
    (&[], "mkdir /nix/store/x; unshare -U true; echo $?"),
    (
        &[],
        "ls -a /tmp; id; cat /proc/self/status | grep -E 'Cap|NoNewPrivs|Seccomp'",
    ),
];

#[test]
fn a_running_server_serves_run_with_the_verdict_of_a_cold_run() {
    for mode in MODES {
        let state = state_dir(mode);
        let cold: Vec<_> = PROBES
            .iter()
            .map(|(x, s)| comparable(run_json(mode, state.path(), x, s)))
            .collect();
        let server = Server::start(mode, state.path());
        for (i, (x, s)) in PROBES.iter().enumerate() {
            let v = comparable(run_json(mode, state.path(), x, s));
            assert_eq!(server.served(), i + 1, "{mode:?} {s}: {}", server.log());
            assert_eq!(server.pooled(), i + 1, "{mode:?} {s}: {}", server.log());
            assert_eq!(v, cold[i], "{mode:?}: served and cold verdicts of {s}");
        }
        // A run's usage is its own: not the server's children's over all its runs.
        let busy = run_json(
            mode,
            state.path(),
            &[],
            "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done",
        );
        let after = run_json(mode, state.path(), &[], "true");
        let (b, a) = (
            &busy["usage"]["cpu_time_ms"],
            &after["usage"]["cpu_time_ms"],
        );
        assert!(
            a.is_null() || a.as_f64() < b.as_f64(),
            "{mode:?}: usage of `true` after a busy run: {a} vs {b}"
        );
        // Passed through (no --json): the caller's stdout, stderr and exit status.
        let out = cmd(mode, state.path())
            .args(["run", "--env-path"])
            .arg(busybox())
            .args(["--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7), "{mode:?}");
        assert_eq!(text(&out.stdout), "to-out\n", "{mode:?}");
        assert!(text(&out.stderr).contains("to-err"), "{mode:?}");
        assert_eq!(server.served(), PROBES.len() + 3, "{mode:?}");
        // What the cell would inherit from a caller unlike the server (its umask, its
        // limits): declined, the caller runs the cell itself, with its own.
        let bb = busybox();
        for (how, probe, want) in [
            ("umask 077", "umask", "0077\n"),
            ("ulimit -s 4096", "ulimit -s", "4096\n"),
        ] {
            let run = format!(
                "{how}; exec {} run --json --env-path {} -- sh -c '{probe}'",
                bin(),
                bb.display()
            );
            let mut c = cmd_of(mode, state.path(), "sh");
            let v = verdict(&c.args(["-c", &run]).stdin(Stdio::null()).output().unwrap());
            assert_eq!(v["stdout"]["text"], want, "{mode:?} {how}: {v}");
            assert_eq!(
                server.served(),
                PROBES.len() + 3,
                "{mode:?} {how}: {}",
                server.log()
            );
        }
        assert_eq!(
            server.log().matches(": declined: ").count(),
            2,
            "{}",
            server.log()
        );
    }
}

/// Cgroups the server made for its runs (named after its pid).
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let prefix = format!("run-{pid}-");
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    found.push(e.path());
                }
                stack.push(e.path());
            }
        }
    }
    found
}

fn all_children_of(pid: u32) -> Vec<String> {
    let mut all = String::new();
    // A process found a moment ago may have ended since (an init stage exits once its
    // cell's PID 1 runs): it has no children then.
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    for t in tasks.flatten() {
        all += &std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
    }
    all.split_whitespace().map(str::to_string).collect()
}

/// Whether a process below `pid` runs `sleep` (a cell's command).
fn runs_sleep(pid: u32) -> bool {
    all_children_of(pid).into_iter().any(|c| {
        let cmd = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
        cmd.starts_with(b"sleep\0") || c.parse().is_ok_and(runs_sleep)
    })
}

/// The server's child processes that are not init stages waiting in its pool (started
/// ahead: no namespace of their own yet, nothing of a run).
fn children_of(pid: u32) -> Vec<String> {
    let ns = |p: &str, n: &str| std::fs::read_link(format!("/proc/{p}/ns/{n}")).ok();
    all_children_of(pid)
        .into_iter()
        .filter(|c| {
            let cmd = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            let waiting = cmd == b"nixcell-init\0__nixcell-init\0pooled\0"
                && ["user", "mnt", "pid", "net"]
                    .iter()
                    .all(|n| ns(c, n) == ns(&pid.to_string(), n));
            !waiting
        })
        .collect()
}

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Host mounts a cell's could be mistaken for: of the store, of nixcell, under this
/// repository (the test's workdirs); other software's mounts come and go meanwhile.
fn mounts() -> Vec<String> {
    let repo = repo().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains("/nix") || l.contains("nixcell") || l.contains(&repo))
        .map(str::to_string)
        .collect()
}

#[test]
fn many_served_runs_leave_nothing_behind_and_see_nothing_of_each_other() {
    // NIXCELL_POOL_RUNS=1000 for the full count.
    let runs: usize = std::env::var("NIXCELL_POOL_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    for mode in MODES {
        let state = state_dir(mode);
        let work = workdir(mode);
        let server = Server::start(mode, state.path());
        // One run first, so that what the server keeps for good (its runtime, caches)
        // is there before the counts are taken.
        run_json(mode, state.path(), &[], "true");
        let (fds, mounts_before) = (fds_of(server.pid()), mounts());
        let bb = busybox();
        for i in 0..runs {
            // Each run leaves a file in /tmp and in the workdir's copy-on-write layer
            // (the workdir's changes come back: the file is removed in the same run).
            let script = format!(
                "ls -A /tmp; echo {i} > /tmp/mark-{i}; echo {i} > /work/mark; rm /work/mark"
            );
            let out = cmd(mode, state.path())
                .args(["run", "--json", "--env-path"])
                .arg(&bb)
                .arg("--workdir")
                .arg(work.path())
                .args(["--", "sh", "-c", &script])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let v = verdict(&out);
            assert_eq!(v["exit_code"], 0, "{mode:?} run {i}: {v}");
            assert_eq!(
                v["stdout"]["text"], "",
                "{mode:?} run {i} saw another's /tmp"
            );
        }
        assert_eq!(server.served(), runs + 1, "{mode:?}: {}", server.log());
        assert_eq!(server.pooled(), runs + 1, "{mode:?}: {}", server.log());
        assert_empty_dir(work.path(), "the workdir after the runs");
        // The server closes a run's descriptors as soon as its caller has gone.
        let t = Instant::now();
        // (The count taken before may include the first run's, not yet closed.)
        while fds_of(server.pid()) > fds && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let now = fds_of(server.pid());
        assert!(
            now <= fds,
            "{mode:?}: descriptors of the server: {now}, {fds} before"
        );
        assert_eq!(
            children_of(server.pid()),
            Vec::<String>::new(),
            "{mode:?}: processes"
        );
        assert_eq!(cgroups_of(server.pid()), Vec::<PathBuf>::new(), "{mode:?}");
        assert_eq!(mounts(), mounts_before, "{mode:?}: host mounts");
    }
}

#[test]
fn a_killed_server_leaves_nothing_behind_and_run_runs_the_cell_itself() {
    for mode in MODES {
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            let state = state_dir(mode);
            let mut server = Server::start(mode, state.path());
            assert_eq!(run_json(mode, state.path(), &[], "echo a")["exit_code"], 0);
            assert_eq!(server.served(), 1);
            let pid = server.pid();
            let waiting = all_children_of(pid);
            assert!(!waiting.is_empty(), "{mode:?}: init stages started ahead");
            // SAFETY: our own child.
            unsafe { libc::kill(pid as i32, sig) };
            let st = server.child.wait().unwrap();
            // The init stages it had started ahead end with it (their socket closed).
            let t = Instant::now();
            let alive = || {
                waiting.iter().any(|c| {
                    std::fs::read_to_string(format!("/proc/{c}/stat"))
                        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").starts_with(" Z"))
                })
            };
            while alive() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(!alive(), "{mode:?}: init stages of a killed server live on");
            if sig == libc::SIGTERM {
                assert_eq!(st.code(), Some(0), "{mode:?}: {}", server.log());
                assert!(
                    !state.path().join("nixcell/serve/socket").exists(),
                    "{mode:?}: the socket is removed"
                );
            }
            assert_eq!(cgroups_of(pid), Vec::<PathBuf>::new(), "{mode:?}");
            let v = run_json(mode, state.path(), &[], "echo b");
            assert_eq!(
                (v["exit_code"].clone(), v["stdout"]["text"].clone()),
                (0.into(), "b\n".into())
            );
            assert_eq!(server.served(), 1, "{mode:?}: not served after the kill");
            // A new server takes over a stale socket.
            let again = Server::start(mode, state.path());
            run_json(mode, state.path(), &[], "true");
            assert_eq!(again.served(), 1, "{mode:?}: {}", again.log());
        }
    }
}

#[test]
fn a_server_serves_only_its_own_user() {
    // The test user's server: root's run pointed at the same state directory does not
    // use it, and a connection of root's (root may open the socket) is dropped unserved.
    let state = state_dir(Mode::Rootless);
    let server = Server::start(Mode::Rootless, state.path());
    let v = run_json(Mode::Root, state.path(), &[], "id -u");
    assert_eq!(v["exit_code"], 0, "{v}");
    let sock = state.path().join("nixcell/serve/socket");
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
             \
             try:\n s.sendall(b'x'); print(repr(s.recv(100)))\n\
             except (ConnectionResetError, BrokenPipeError): print(repr(b''))",
        )
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "b''\n", "{}", text(&out.stderr));
    assert!(
        server.log().contains("refused a connection of uid 0"),
        "{}",
        server.log()
    );
    assert_eq!(server.served(), 0);
}

#[test]
fn a_served_run_whose_caller_is_killed_is_killed_too() {
    for mode in MODES {
        let state = state_dir(mode);
        let server = Server::start(mode, state.path());
        let mut caller = cmd(mode, state.path())
            .args(["run", "--env-path"])
            .arg(busybox())
            .args(["--", "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        // The command itself runs (a child of the server that is only forking, or a
        // pooled init stage, is no sign that the run got there).
        while !runs_sleep(server.pid()) {
            assert!(t.elapsed() < Duration::from_secs(30), "{}", server.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        // SIGKILL: the caller cannot pass anything on; its end of the socket closes.
        caller.kill().unwrap();
        caller.wait().unwrap();
        let t = Instant::now();
        // The cell is killed (no verdict reaches anyone, as when a `nixcell run` is
        // killed: its cell's PID 1 kills the cell).
        while server.served() == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{mode:?}: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(children_of(server.pid()), Vec::<String>::new(), "{mode:?}");
        assert_eq!(cgroups_of(server.pid()), Vec::<PathBuf>::new(), "{mode:?}");
    }
}

/// A cell's process (here a rootless run's, with the server's directory bound in) has
/// the server's uid on the host, yet is refused: it is in another user namespace. Were
/// it served, it could ask for any bind of the user's files.
#[test]
fn a_process_in_a_cell_is_refused_by_the_server() {
    let state = state_dir(Mode::Rootless);
    let server = Server::start(Mode::Rootless, state.path());
    let py = std::fs::canonicalize(repo().join("target/nix-fixture/python-bare")).unwrap();
    let bind = format!("{}:/s", state.path().join("nixcell/serve").display());
    let client = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
                  try:\n s.sendall(b'x'); print(repr(s.recv(100)))\n\
                  except (ConnectionResetError, BrokenPipeError): print(repr(b''))";
    let out = cmd(Mode::Rootless, state.path())
        .args(["run", "--env-path"])
        .arg(&py)
        .args([
            "--ro-bind",
            &bind,
            "--",
            "python3",
            "-c",
            client,
            "/s/socket",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "b''\n", "{}", text(&out.stderr));
    assert!(
        server
            .log()
            .contains("refused a connection: the caller runs in another user namespace"),
        "{}",
        server.log()
    );
}
