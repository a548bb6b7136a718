//! The network policy of a session cell (`nixcell up`), as root and rootless: the
//! holder serves the proxy as long as the cell lives, every exec finds it through the
//! proxy variables, and each exec's verdict lists what the proxy did while it ran.
//!
//! The seed's scenario 2 end to end: a fake "API" on the host's loopback, reachable
//! under an allowed test name (`NIXCELL_TEST_RESOLVE`, read by a debug build's holder
//! from its own environment); a script fetches from it and caches the answer in the
//! session's redis, and the second exec is a cache hit.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    let env = build_env(
        "netpol-redis",
        "pkgs.buildEnv { name = \"netpol-redis\"; paths = [ pkgs.python3 pkgs.redis pkgs.busybox ]; }",
    );
    let api = api();
    let p = api.port.to_string();
    for mode in MODES {
        let cells = Cells {
            mode,
            state: workdir(mode),
        };
        let allow_name = format!("api.test:{p}");
        let allow_addr = format!("127.0.0.1:{p}");
        let o = cells.run(&[
            "up",
            "--detach",
            "--name",
            "api",
            "--env-path",
            path_str(&env),
            "--allow-host",
            &allow_name,
            "--allow-host",
            &allow_addr,
            "--service",
            "redis:6379=redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no",
        ]);
        ok(&o, "up");
        let exec = |extra: &[&str]| {
            let argv = [
                &["exec", "--json", "api", "--", "python3", "-c", CACHE, &p],
                extra,
            ];
            verdict(&cells.run(&argv.concat()))
        };
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
    let env = build_env(
        "netpol-redis",
        "pkgs.buildEnv { name = \"netpol-redis\"; paths = [ pkgs.python3 pkgs.redis pkgs.busybox ]; }",
    );
    let api = api();
    let p = api.port.to_string();
    for mode in MODES {
        let cells = Cells {
            mode,
            state: workdir(mode),
        };
        let o = cells.run(&[
            "up",
            "--detach",
            "--name",
            "closed",
            "--env-path",
            path_str(&env),
        ]);
        ok(&o, "up");
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
