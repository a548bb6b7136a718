//! The network policy of a session cell (`nixcell up`), as root and rootless: the
//! holder serves the proxy as long as the cell lives, every exec finds it through the
//! proxy variables, and each exec's verdict lists what the proxy did while it ran.
//!
//! The seed's scenario 2 end to end: a fake "API" on the host's loopback, reachable
//! under an allowed test name (`NIXCELL_TEST_RESOLVE`, read by a debug build's holder
//! from its own environment); a script fetches from it and caches the answer in the
//! session's redis, and the second exec is a cache hit.
//!
//! `nixcell shell --session NAME`, driven through a pty the test allocates (the
//! caller's terminal): typed commands run in the session's cell, on a pty nixcell
//! allocated, and the caller's terminal is left as it was.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The fake API on all of the host's loopback addresses; `hits` counts its requests.
struct Api {
    port: u16,
    hits: Arc<AtomicUsize>,
}

fn api() -> Api {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && c.read(&mut b).is_ok_and(|n| n == 1) {
                    req.push(b[0]);
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nforecast\n",
                );
            });
        }
    });
    Api { port, hits }
}

/// python3, redis and busybox (the same environment as tests/netpol.rs builds).
fn redis_py_env() -> std::path::PathBuf {
    build_env(
        "netpol-redis",
        "pkgs.buildEnv { name = \"netpol-redis\"; paths = [ pkgs.python3 pkgs.redis pkgs.busybox ]; }",
    )
}

/// The redis service of the tests' session cells.
const REDIS: &str =
    "redis:6379=redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no";

/// `nixcell` of the mode's user, its cells in `state`, the test names resolved.
fn nixcell_in(mode: Mode, state: &std::path::Path, resolve: &str) -> Command {
    match mode {
        Mode::Root => {
            let mut c = nixcell(Mode::Root);
            c.env("XDG_STATE_HOME", state)
                .env("NIXCELL_TEST_RESOLVE", resolve);
            c
        }
        Mode::Rootless => {
            let mut c = as_test_user();
            c.arg(format!("XDG_STATE_HOME={}", state.display()))
                .arg(format!("NIXCELL_TEST_RESOLVE={resolve}"))
                .arg(bin());
            c
        }
    }
}

/// The cells of one test: `down --all` when it ends, whatever happened.
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

    /// `up --detach` of the cell `name` in [`redis_py_env`], with `flags`.
    fn up(&self, name: &str, flags: &[&str]) {
        let env = redis_py_env();
        let up = [
            "up",
            "--detach",
            "--name",
            name,
            "--env-path",
            path_str(&env),
        ];
        ok(&self.run(&[&up[..], flags].concat()), "up");
    }

    fn run(&self, args: &[&str]) -> Output {
        nixcell_in(self.mode, self.state.path(), "api.test=127.0.0.1")
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Cells {
    fn drop(&mut self) {
        let _ = self.run(&["down", "--all"]);
    }
}

fn hosts(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|c| format!("{}:{}", c["host"].as_str().unwrap_or(""), c["port"]))
                .collect()
        })
        .unwrap_or_default()
}

/// The paths of the unix sockets the process `pid` listens on whose path has `part`.
fn listening_paths(pid: u64, part: &str) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 8 && inodes.iter().any(|i| i == f[6]) && f[7].contains(part))
                .then(|| f[7].to_string())
        })
        .collect()
}

/// The script: a hit from redis, else a fetch from the API (through the proxy the
/// variables name) cached in redis; then a name the policy does not allow.
const CACHE: &str = r#"
import subprocess, sys, urllib.request
port = sys.argv[1]
def r(*a):
    return subprocess.run(["redis-cli", "-p", "6379", *a], capture_output=True, text=True, check=True).stdout.strip()
v = r("GET", "api:/forecast")
if v:
    print("hit", v)
else:
    body = urllib.request.urlopen("http://api.test:%s/forecast" % port, timeout=10).read().decode().strip()
    r("SET", "api:/forecast", body)
    print("miss", body)
if len(sys.argv) > 2:
    try:
        urllib.request.urlopen("http://%s:%s/" % (sys.argv[2], port), timeout=10)
        print("reached", sys.argv[2])
    except Exception as e:
        print("refused", sys.argv[2])
"#;

#[test]
fn scenario_2_an_api_answer_cached_in_the_sessions_redis_is_a_hit_on_the_next_exec() {
    let api = api();
    let p = api.port.to_string();
    for mode in MODES {
        let cells = Cells::new(mode);
        let allow_name = format!("api.test:{p}");
        let allow_addr = format!("127.0.0.1:{p}");
        cells.up(
            "api",
            &[
                "--allow-host",
                &allow_name,
                "--allow-host",
                &allow_addr,
                "--service",
                REDIS,
            ],
        );
        let exec = |extra: &[&str]| {
            let argv = [
                &["exec", "--json", "api", "--", "python3", "-c", CACHE, &p],
                extra,
            ];
            verdict(&cells.run(&argv.concat()))
        };
        // The proxy serves the cell from a socket with no name left on the host: a
        // holder killed now leaves nothing of it behind.
        let ps: serde_json::Value =
            serde_json::from_str(&ok(&cells.run(&["ps", "--json"]), "ps")).unwrap();
        let holder = ps[0]["holder_pid"].as_u64().unwrap();
        let proxy = listening_paths(holder, ".nixcell-net-");
        assert_eq!(
            proxy.len(),
            1,
            "{mode:?}: the holder's proxy socket: {proxy:?}"
        );
        assert!(
            !std::path::Path::new(&proxy[0]).exists(),
            "{mode:?}: {} is left on the host",
            proxy[0]
        );
        let before = api.hits.load(Ordering::SeqCst);
        let v = exec(&[]);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["stdout"]["text"], "miss forecast\n", "{mode:?}: {v}");
        assert_eq!(v["network"]["mode"], "proxy", "{mode:?}: {v}");
        assert_eq!(
            hosts(&v["network"]["connections"]),
            [format!("api.test:{p}")],
            "{mode:?}: the first exec's connection: {v}"
        );
        assert_eq!(hosts(&v["network"]["denied"]), Vec::<String>::new(), "{v}");
        // The second exec: a hit that reaches nothing; its refusal is its own.
        let v = exec(&["other.test"]);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(
            v["stdout"]["text"], "hit forecast\nrefused other.test\n",
            "{mode:?}: {v}"
        );
        assert_eq!(
            hosts(&v["network"]["connections"]),
            Vec::<String>::new(),
            "{mode:?}: the second exec made no connection: {v}"
        );
        assert_eq!(
            hosts(&v["network"]["denied"]),
            [format!("other.test:{p}")],
            "{mode:?}: {v}"
        );
        assert_eq!(
            api.hits.load(Ordering::SeqCst),
            before + 1,
            "{mode:?}: the API got exactly one request"
        );
        ok(&cells.run(&["down", "api"]), "down");
    }
}

/// A session cell without an allow list has no proxy: loopback only, and nothing of
/// the host's loopback is reached.
#[test]
fn a_session_without_an_allow_list_reaches_nothing() {
    let api = api();
    let p = api.port.to_string();
    for mode in MODES {
        let cells = Cells::new(mode);
        cells.up("closed", &[]);
        let script = format!(
            "import os, urllib.request\nprint(os.environ.get('HTTP_PROXY'))\ntry:\n    \
             urllib.request.urlopen('http://127.0.0.1:{p}/', timeout=5)\n    print('reached')\n\
             except Exception:\n    print('unreachable')\n"
        );
        let v = verdict(&cells.run(&["exec", "--json", "closed", "--", "python3", "-c", &script]));
        assert_eq!(v["stdout"]["text"], "None\nunreachable\n", "{mode:?}: {v}");
        assert_eq!(v["network"]["mode"], "none", "{mode:?}: {v}");
        ok(&cells.run(&["down", "closed"]), "down");
    }
    assert_eq!(api.hits.load(Ordering::SeqCst), 0);
}

/// What the caller's terminal showed, read by a thread from the pty's master.
struct Screen(Arc<Mutex<String>>);

impl Screen {
    fn of(master: std::fs::File) -> Screen {
        let seen = Arc::new(Mutex::new(String::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut master = master;
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Screen(seen)
    }

    fn wait_for(&self, needle: &str) {
        let start = Instant::now();
        while !self.0.lock().unwrap().contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {needle:?} on the terminal: {:?}",
                self.0.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `nixcell shell --session sh --json FLAGS` on a terminal the test allocates: types
/// `typed`, waits for each of `seen`, then for the exit status `code`; checks that the
/// caller's terminal is as it was and has no input waiting. The verdict.
fn session_shell(
    cells: &Cells,
    flags: &[&str],
    typed: &str,
    seen: &[String],
    code: Option<i32>,
) -> serde_json::Value {
    let mode = cells.mode;
    let pty = nix::pty::openpty(None, None).unwrap();
    let before = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    let mut cmd = nixcell_in(mode, cells.state.path(), "");
    cmd.args(["shell", "--session", "sh", "--json"]).args(flags);
    on_terminal(&mut cmd, &pty.slave);
    let mut child = cmd.spawn().unwrap();
    let mut master = std::fs::File::from(pty.master);
    let screen = Screen::of(master.try_clone().unwrap());
    master.write_all(typed.as_bytes()).unwrap();
    for s in seen {
        screen.wait_for(s);
    }
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(child.wait().unwrap().code(), code, "{mode:?}: {out}");
    assert!(
        nix::sys::termios::tcgetattr(&pty.slave).unwrap() == before,
        "{mode:?}: the caller's terminal attributes changed"
    );
    let mut n: libc::c_int = -1;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(
        (r, n),
        (0, 0),
        "{mode:?}: input was typed into the caller's terminal"
    );
    serde_json::from_str(&out).unwrap()
}

const TIOCSTI_PROBE: &str = "import fcntl, termios\ntry:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x')\n    print('typed')\nexcept OSError as e:\n    print('tiocsti-refused', e.errno)\n";

/// A shell into a live session cell: it sees what an exec left in the cell's /tmp and
/// the session's redis, it leads its session on the pty nixcell made, TIOCSTI is
/// refused, its exit status comes back and the caller's terminal is as it was.
#[test]
fn a_shell_in_a_session_sees_its_tmp_and_services_on_a_pty_of_its_own() {
    for mode in MODES {
        let cells = Cells::new(mode);
        cells.up("sh", &["--service", REDIS]);
        let v = verdict(&cells.run(&[
            "exec",
            "--json",
            "sh",
            "--",
            "sh",
            "-c",
            "echo left-by-an-exec > /tmp/mark && printf %s \"$1\" > /tmp/probe.py && \
             redis-cli set k from-redis",
            "sh",
            TIOCSTI_PROBE,
        ]));
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        let typed = "cat /tmp/mark; redis-cli get k | tr a-z A-Z; \
             read -r _ _ _ _ _ sid tty _ < /proc/$$/stat; \
             [ $sid = $$ ] && [ $tty != 0 ] && echo leader-$((1+1)); \
             python3 /tmp/probe.py; exit 5\n";
        let seen = [
            "left-by-an-exec".to_string(),
            "FROM-REDIS".into(),
            "leader-2".into(),
            format!("tiocsti-refused {}", libc::EPERM),
        ];
        let v = session_shell(&cells, &[], typed, &seen, Some(5));
        assert_eq!(v["exit_code"], 5, "{mode:?}: {v}");
        assert!(v["layers"].to_string().contains("seccomp"), "{v}");
        // The exec's timeout ends the shell alone.
        let v = session_shell(&cells, &["--timeout", "2s"], "sleep 100\n", &[], Some(124));
        assert_eq!(v["timed_out"], true, "{mode:?}: {v}");
        // The cell lives on: the shell was one exec of it.
        let v = verdict(&cells.run(&["exec", "--json", "sh", "--", "cat", "/tmp/mark"]));
        assert_eq!(v["stdout"]["text"], "left-by-an-exec\n", "{mode:?}: {v}");
        ok(&cells.run(&["down", "sh"]), "down");
    }
}

/// `--session` takes no flag that makes a new cell.
#[test]
fn a_session_shell_refuses_new_cell_flags() {
    let state = workdir(Mode::Root);
    let o = nixcell_in(Mode::Root, state.path(), "")
        .args(["shell", "--session", "x", "--with", "jq"])
        .output()
        .unwrap();
    let err = fails(&o, "--session with --with");
    assert!(err.contains("--with"), "{err}");
}
