//! The network policy, seen from inside the cell and from fake upstreams on the host's
//! loopback: allowed names reach them through nixcell's proxy (HTTP, HTTPS through
//! CONNECT, any TCP through CONNECT, bytes counted), everything else is refused and
//! listed in the verdict, and nothing reaches the host around the proxy.
//!
//! No real DNS: the test names resolve through the proxy's test-only override
//! (`NIXCELL_TEST_RESOLVE`, read by a debug build's supervisor from its own
//! environment). Loopback upstreams are special addresses, so the policies below list
//! them explicitly as such.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn py_env() -> std::path::PathBuf {
    build_env(
        "netpol-py",
        "pkgs.buildEnv { name = \"netpol-py\"; paths = [ pkgs.python3 pkgs.busybox ]; }",
    )
}

/// A fake upstream on all of the host's loopback addresses (127.0.0.0/8): `serve`
/// answers each connection; `hits` counts them.
struct Upstream {
    port: u16,
    hits: Arc<AtomicUsize>,
}

fn upstream(serve: fn(TcpStream)) -> Upstream {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || serve(c));
        }
    });
    Upstream { port, hits }
}

/// The HTTP upstream's whole answer.
const HTTP_ANSWER: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello, cell\n";

fn serve_http(mut c: TcpStream) {
    let mut req = Vec::new();
    let mut b = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") && c.read(&mut b).is_ok_and(|n| n == 1) {
        req.push(b[0]);
    }
    let _ = c.write_all(HTTP_ANSWER.as_bytes());
}

/// Bytes the raw upstream reads, then writes.
const RAW_IN: usize = 1000;
const RAW_OUT: usize = 300_000;

fn serve_raw(mut c: TcpStream) {
    let mut got = vec![0u8; RAW_IN];
    if c.read_exact(&mut got).is_ok() {
        let _ = c.write_all(&vec![b'x'; RAW_OUT]);
    }
}

/// `openssl s_server` with a fresh self-signed certificate, on 127.0.0.1.
struct Tls {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_upstream() -> Tls {
    let dir = scratch("tls");
    let d = dir.path();
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=secure.test", "-keyout"])
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("cert.pem"))
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(out.status.success(), "openssl req: {}", text(&out.stderr));
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(d.join("cert.pem"))
        .arg("-key")
        .arg(d.join("key.pem"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Tls {
        port,
        child,
        _dir: dir,
    }
}

/// `nixcell` as root or as the test user, with the supervisor's test names.
fn resolving(mode: Mode, resolve: &str) -> Command {
    match mode {
        Mode::Root => {
            let mut c = nixcell(mode);
            c.env("NIXCELL_TEST_RESOLVE", resolve);
            c
        }
        // as_test_user's `env` takes the assignment before nixcell's path.
        Mode::Rootless => {
            let mut c = as_test_user();
            c.arg(format!("NIXCELL_TEST_RESOLVE={resolve}")).arg(bin());
            c
        }
    }
}

/// `nixcell run --json` of a Python script in a cell, the test names resolved by the
/// supervisor's override.
fn run_py(mode: Mode, resolve: &str, flags: &[String], script: &str) -> Output {
    let env = py_env();
    let mut c = resolving(mode, resolve);
    c.args(["run", "--json", "--env-path", path_str(&env)])
        .args(flags)
        .args(["--", "python3", "-c", script])
        .output()
        .unwrap()
}

fn allow(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .flat_map(|e| ["--allow-host".to_string(), e.clone()])
        .collect()
}

const CLIENT: &str = r#"
import os, socket, ssl, sys, urllib.request
def get(url):
    try:
        ctx = ssl._create_unverified_context()
        r = urllib.request.urlopen(url, timeout=10, context=ctx)
        return "%d %s" % (r.status, r.read().decode(errors="replace").splitlines()[0])
    except Exception as e:
        return "ERR %s" % e
def tunnel(host, port, send):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    if b" 200" not in head.split(b"\r\n")[0]:
        return "ERR " + head.split(b"\r\n")[0].decode()
    s.sendall(b"y" * send)
    got = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += len(b)
    return "got %d" % got
for line in sys.argv[1:] if len(sys.argv) > 1 else os.environ["PROBES"].split():
    kind, arg = line.split("=", 1)
    if kind == "get":
        print(arg, get(arg))
    else:
        host, port = arg.rsplit(":", 1)
        print(arg, tunnel(host, int(port), int(kind[len("tunnel"):])))
"#;

fn probes(list: &[String]) -> String {
    format!("PROBES={}", list.join(" "))
}

fn connections(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["network"]["connections"].as_array().unwrap().clone()
}

#[test]
fn allowed_names_are_reached_over_http_https_and_connect_with_bytes_counted() {
    let http = upstream(serve_http);
    let raw = upstream(serve_raw);
    let tls = tls_upstream();
    let resolve = "api.test=127.0.0.1,secure.test=127.0.0.1,raw.test=127.0.0.1";
    let entries = [
        format!("api.test:{}", http.port),
        format!("secure.test:{}", tls.port),
        format!("raw.test:{}", raw.port),
        format!("127.0.0.1:{}", http.port),
        format!("127.0.0.1:{}", tls.port),
        format!("127.0.0.1:{}", raw.port),
    ];
    for mode in MODES {
        let before = (
            http.hits.load(Ordering::SeqCst),
            raw.hits.load(Ordering::SeqCst),
        );
        let mut flags = allow(&entries);
        flags.extend([
            "--setenv".to_string(),
            probes(&[
                format!("get=http://api.test:{}/hello", http.port),
                format!("get=https://secure.test:{}/", tls.port),
                format!("tunnel{RAW_IN}=raw.test:{}", raw.port),
            ]),
        ]);
        let o = run_py(mode, resolve, &flags, CLIENT);
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        let out = v["stdout"]["text"].as_str().unwrap();
        assert!(out.contains("/hello 200 hello, cell"), "{mode:?}: {out}");
        assert!(
            out.contains(&format!("secure.test:{}/ 200", tls.port)),
            "{mode:?}: HTTPS through CONNECT: {out}"
        );
        assert!(out.contains(&format!("got {RAW_OUT}")), "{mode:?}: {out}");
        assert_eq!(v["network"]["mode"], "proxy");
        assert_eq!(v["network"]["denied"], serde_json::json!([]), "{v}");
        let conns = connections(&v);
        let of = |port: u16| {
            conns
                .iter()
                .find(|c| c["port"] == port)
                .unwrap_or_else(|| panic!("{mode:?}: no connection to {port}: {v}"))
        };
        let c = of(raw.port);
        assert_eq!(c["host"], "raw.test");
        assert_eq!(c["address"], format!("127.0.0.1:{}", raw.port));
        assert_eq!(c["bytes_out"], RAW_IN as u64, "{c}");
        assert_eq!(c["bytes_in"], RAW_OUT as u64, "{c}");
        let c = of(http.port);
        assert_eq!(c["bytes_in"], HTTP_ANSWER.len() as u64, "{c}");
        assert!(c["bytes_out"].as_u64().unwrap() > 20, "{c}");
        assert!(of(tls.port)["bytes_in"].as_u64().unwrap() > 500);
        assert_eq!(http.hits.load(Ordering::SeqCst), before.0 + 1);
        assert_eq!(raw.hits.load(Ordering::SeqCst), before.1 + 1);
    }
}

#[test]
fn refused_names_and_addresses_are_listed_and_never_reached() {
    let http = upstream(serve_http);
    let p = http.port;
    // rebind.test is allowed by name but resolves to a loopback address not listed;
    // the literal 127.0.0.3 and the private 10.1.2.3 are not listed either; a deny
    // entry wins over the wildcard.
    let resolve = "api.test=127.0.0.1,rebind.test=127.0.0.2,blocked.test=127.0.0.1";
    let dir = scratch("netprofile");
    let profile = dir.path().join("net.toml");
    std::fs::write(
        &profile,
        format!(
            "extends = \"default\"\n[network]\nallow = [\"*.test:{p}\", \"127.0.0.1:{p}\"]\ndeny = [\"blocked.test:{p}\"]\n"
        ),
    )
    .unwrap();
    chmod_readable(dir.path());
    for mode in MODES {
        let before = http.hits.load(Ordering::SeqCst);
        let flags = vec![
            "--profile".to_string(),
            profile.display().to_string(),
            "--setenv".to_string(),
            probes(&[
                format!("get=http://api.test:{p}/"),
                format!("get=http://other.example:{p}/"),
                format!("get=http://rebind.test:{p}/"),
                format!("get=http://blocked.test:{p}/"),
                format!("get=http://127.0.0.3:{p}/"),
                format!("get=http://10.1.2.3:{p}/"),
                format!("get=http://api.test:{}/", p.wrapping_add(1).max(1)),
                format!("tunnel10=rebind.test:{p}"),
            ]),
        ];
        let o = run_py(mode, resolve, &flags, CLIENT);
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        let out = v["stdout"]["text"].as_str().unwrap();
        assert_eq!(out.matches(" 200 ").count(), 1, "{mode:?}: {out}");
        assert_eq!(
            out.matches("ERR HTTP Error 403").count(),
            6,
            "{mode:?}: {out}"
        );
        assert!(out.contains("ERR HTTP/1.1 403"), "{mode:?}: {out}");
        assert_eq!(
            http.hits.load(Ordering::SeqCst),
            before + 1,
            "{mode:?}: only the allowed request reached the upstream"
        );
        let denied = v["network"]["denied"].as_array().unwrap();
        let reason = |host: &str| -> String {
            denied
                .iter()
                .find(|d| d["host"] == host)
                .unwrap_or_else(|| panic!("{mode:?}: {host} not in denied: {v}"))["reason"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(reason("other.example").contains("not on the allow list"));
        assert!(reason("rebind.test").contains("127.0.0.2, a loopback address"));
        assert_eq!(
            denied.iter().find(|d| d["host"] == "rebind.test").unwrap()["address"],
            "127.0.0.2"
        );
        assert!(reason("blocked.test").contains("deny entry"));
        assert!(reason("127.0.0.3").contains("literal address"));
        assert!(reason("10.1.2.3").contains("literal address"));
        assert_eq!(denied.len(), 7, "{v}");
        // Each refusal is a hint: what the operator could allow, or that a deny
        // entry wins; no edit is suggested (a project cannot widen the profile).
        let hints = v["hints"].as_array().unwrap();
        let hint = |missing: String| {
            hints
                .iter()
                .find(|h| h["kind"] == "network_denied" && h["missing"] == missing.as_str())
                .unwrap_or_else(|| panic!("{mode:?}: no hint for {missing}: {v}"))
                .clone()
        };
        let h = hint(format!("other.example:{p}"));
        assert!(
            h["message"]
                .as_str()
                .unwrap()
                .contains(&format!("--allow-host other.example:{p}")),
            "{h}"
        );
        assert_eq!(h["edit"], serde_json::Value::Null);
        let h = hint(format!("rebind.test:{p}"));
        assert!(
            h["message"]
                .as_str()
                .unwrap()
                .contains(&format!("--allow-host 127.0.0.2:{p}")),
            "{h}"
        );
        let h = hint(format!("blocked.test:{p}"));
        assert!(
            h["message"].as_str().unwrap().contains("deny entry wins"),
            "{h}"
        );
        assert_eq!(connections(&v).len(), 1, "{v}");
        assert_eq!(
            v["network"]["allowed"],
            serde_json::json!([format!("*.test:{p}"), format!("127.0.0.1:{p}")])
        );
    }
}

fn chmod_readable(d: &std::path::Path) {
    let out = Command::new("chmod")
        .args(["-R", "o+rX"])
        .arg(d)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn connections_around_the_proxy_reach_nothing() {
    let http = upstream(serve_http);
    let p = http.port;
    // The host's address on another interface than loopback, if it has one.
    let host_ip = nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|i| i.address?.as_sockaddr_in().map(|s| s.ip()))
        .find(|ip| !ip.is_loopback());
    let mut targets = vec![format!("127.0.0.1:{p}"), format!("10.1.2.3:{p}")];
    if let Some(ip) = host_ip {
        targets.push(format!("{ip}:{p}"));
    }
    let script = format!(
        r#"
import socket
for t in {targets:?}:
    h, p = t.rsplit(":", 1)
    try:
        socket.create_connection((h, int(p)), timeout=3)
        print(t, "CONNECTED")
    except OSError as e:
        print(t, "refused", e.errno)
try:
    socket.getaddrinfo("api.test", 80)
    print("dns answered")
except OSError:
    print("no dns")
"#
    );
    for mode in MODES {
        let flags = allow(&[format!("api.test:{p}"), format!("127.0.0.1:{p}")]);
        let o = run_py(mode, "api.test=127.0.0.1", &flags, &script);
        let v = verdict(&o);
        let out = v["stdout"]["text"].as_str().unwrap_or_default();
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert!(!out.contains("CONNECTED"), "{mode:?}: {out}");
        assert_eq!(out.matches("refused").count(), targets.len(), "{out}");
        assert!(out.contains("no dns"), "{out}");
        assert_eq!(http.hits.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn without_an_allow_list_there_is_no_proxy() {
    let script = r#"
import os, socket
print(sorted(k for k in os.environ if "proxy" in k.lower()))
try:
    socket.create_connection(("127.0.0.1", 3128), timeout=3)
    print("CONNECTED")
except OSError as e:
    print("refused")
print(os.path.exists("/run/nixcell/proxy.sock"))
"#;
    for mode in MODES {
        let o = run_py(mode, "", &[], script);
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["stdout"]["text"], "[]\nrefused\nFalse\n", "{mode:?}");
        assert_eq!(
            v["network"],
            serde_json::json!({"mode": "none", "allowed": [], "connections": [], "denied": [], "truncated": 0})
        );
    }
}

#[test]
fn bad_entries_are_refused_before_anything_runs() {
    let o = sh(Mode::Root, &["--allow-host", "*x.test:80"], "echo ran");
    let err = fails(&o, "a bad --allow-host");
    assert!(
        err.contains("--allow-host") && err.contains("wildcard"),
        "{err}"
    );
    assert!(!text(&o.stdout).contains("ran"));
    let dir = scratch("netprofile");
    let profile = dir.path().join("bad.toml");
    std::fs::write(
        &profile,
        "[network]\nallow = [\"api.test:443\"]\ndeny = [\"api.test\"]\n",
    )
    .unwrap();
    chmod_readable(dir.path());
    let o = sh(
        Mode::Rootless,
        &["--profile", path_str(&profile)],
        "echo ran",
    );
    let err = fails(&o, "bad network entry in a profile");
    assert!(
        err.contains("bad.toml:3:") && err.contains("deny") && err.contains("HOST:PORT"),
        "{err}"
    );
}

/// A project whose nixcell.toml asks for more than the operator's profile allows:
/// it gets only what is inside the profile, and its context says exactly that.
#[test]
fn a_project_only_narrows_the_profile_and_its_context_says_so() {
    let http = upstream(serve_http);
    let p = http.port;
    let pkgs = repo().join("tests/fixtures/pkgs");
    let dir = scratch("netprofile");
    let profile = dir.path().join("ceiling.toml");
    std::fs::write(
        &profile,
        format!("[network]\nallow = [\"*.test:{p}\", \"127.0.0.1:{p}\"]\n"),
    )
    .unwrap();
    chmod_readable(dir.path());
    let toml = format!(
        "nixpkgs = \"{}\"\n[network]\nallow = [\"api.test:{p}\", \"127.0.0.1:{p}\", \"api.example.org:{p}\"]\ndeny = [\"no.test:{p}\"]\n",
        pkgs.display()
    );
    let proj = git_project(
        "netproj",
        &[
            (
                "devenv.nix",
                "{ pkgs, ... }: {\n  packages = [ pkgs.python3 pkgs.busybox ];\n}\n",
            ),
            ("nixcell.toml", &toml),
            ("client.py", CLIENT),
        ],
    );
    for mode in MODES {
        if mode == Mode::Rootless {
            chown_to_test_user(proj.path());
        }
        let run = |args: &[&str]| -> Output {
            let mut c = resolving(mode, "api.test=127.0.0.1,wide.test=127.0.0.1");
            if mode == Mode::Root {
                c.env("NIX_PATH", format!("nixpkgs={}", pkgs.display()));
            }
            c.current_dir(proj.path()).args(args).output().unwrap()
        };
        let prof = path_str(&profile);
        let ctx: serde_json::Value = serde_json::from_str(&ok(
            &run(&["context", "--format", "json", "--profile", prof]),
            "context",
        ))
        .unwrap();
        let n = &ctx["network"];
        assert_eq!(n["policy"], "proxy", "{mode:?}: {n}");
        assert_eq!(
            n["allowed"],
            serde_json::json!([format!("api.test:{p}"), format!("127.0.0.1:{p}")]),
            "{mode:?}: api.example.org is outside the profile's list: {n}"
        );
        assert_eq!(n["proxy"], "http://127.0.0.1:3128");
        let md = ok(&run(&["context", "--profile", prof]), "context");
        assert!(
            md.contains(&format!("only api.test:{p}, 127.0.0.1:{p}")),
            "{md}"
        );
        // The claims hold in a cell of the project.
        let o = run(&[
            "run",
            "--json",
            "--profile",
            prof,
            "--setenv",
            &probes(&[
                format!("get=http://api.test:{p}/"),
                format!("get=http://api.example.org:{p}/"),
                format!("get=http://wide.test:{p}/"),
            ]),
            "--",
            "python3",
            "/work/client.py",
        ]);
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        let out = v["stdout"]["text"].as_str().unwrap();
        assert_eq!(out.matches(" 200 ").count(), 1, "{mode:?}: {out}");
        assert_eq!(v["network"]["allowed"], n["allowed"]);
        assert_eq!(
            v["network"]["deny"],
            serde_json::json!([format!("no.test:{p}")])
        );
        let denied: Vec<&str> = v["network"]["denied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["host"].as_str().unwrap())
            .collect();
        assert_eq!(denied, ["api.example.org", "wide.test"], "{v}");
    }
}

/// devenv's `processes.<name>.ports.<port>.allocate`: Landlock opens the port without
/// `--allow-port`, the command starts once the process listens, and a process that
/// cannot bind its port fails the run with its own error.
#[test]
fn a_process_declares_its_port_and_failing_to_bind_fails_the_run() {
    let pkgs = repo().join("tests/fixtures/pkgs");
    let declaration = |bind: &str| {
        format!(
            "{{ pkgs, config, ... }}: {{\n  packages = [ pkgs.python3 pkgs.busybox ];\n  processes.server = {{\n    ports.http.allocate = 8000;\n    exec = \"cd /tmp && echo served > index.html && exec python3 -m http.server {bind} --bind 127.0.0.1\";\n  }};\n}}\n"
        )
    };
    let toml = format!("nixpkgs = \"{}\"\n", pkgs.display());
    let good = git_project(
        "netport",
        &[
            (
                "devenv.nix",
                &declaration("${toString config.processes.server.ports.http.value}"),
            ),
            ("nixcell.toml", &toml),
        ],
    );
    let bad = git_project(
        "netport",
        &[
            ("devenv.nix", &declaration("8001")),
            ("nixcell.toml", &toml),
        ],
    );
    for mode in MODES {
        let run = |dir: &std::path::Path, script: &str| -> Output {
            if mode == Mode::Rootless {
                chown_to_test_user(dir);
            }
            let mut c = nixcell(mode);
            if mode == Mode::Root {
                c.env("NIX_PATH", format!("nixpkgs={}", pkgs.display()));
            }
            c.current_dir(dir)
                .args(["run", "--json", "--", "python3", "-c", script])
                .output()
                .unwrap()
        };
        let o = run(
            good.path(),
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/', timeout=5).read().decode(), end='')",
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["stdout"]["text"], "served\n");
        let o = run(bad.path(), "print('ran')");
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 125, "{mode:?}: {v}");
        assert!(
            !v["stdout"]["text"].to_string().contains("ran"),
            "{mode:?}: {v}"
        );
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("server") && msg.contains("PermissionError"),
            "{mode:?}: the process's own error: {msg}"
        );
    }
}

/// The seed's scenario 2 in two runs: a script fetches from the allowed "API" through
/// the proxy and caches the answer in redis (saved in the workdir, which comes back);
/// the second run is a cache hit that reaches nothing.
#[test]
fn an_api_answer_cached_in_redis_is_a_hit_on_the_second_run() {
    let http = upstream(serve_http);
    let p = http.port;
    let env = build_env(
        "netpol-redis",
        "pkgs.buildEnv { name = \"netpol-redis\"; paths = [ pkgs.python3 pkgs.redis pkgs.busybox ]; }",
    );
    let script = format!(
        r#"
import subprocess, urllib.request
def r(*a):
    return subprocess.run(["redis-cli", "-p", "6379", *a], capture_output=True, text=True, check=True).stdout.strip()
v = r("GET", "api:/data")
if v:
    print("hit", v)
else:
    body = urllib.request.urlopen("http://api.test:{p}/data", timeout=10).read().decode().strip()
    r("SET", "api:/data", body)
    r("SAVE")
    print("miss", body)
"#
    );
    for mode in MODES {
        let wd = workdir(mode);
        let run = || {
            let mut c = resolving(mode, "api.test=127.0.0.1");
            c.args(["run", "--json", "--env-path", path_str(&env), "--workdir"])
                .arg(wd.path())
                .args(["--allow-host", &format!("api.test:{p}")])
                .args(["--allow-host", &format!("127.0.0.1:{p}")])
                .args([
                    "--service",
                    "redis:6379=redis-server --port 6379 --bind 127.0.0.1 --dir /work --dbfilename cache.rdb --save '' --appendonly no",
                    "--",
                    "python3",
                    "-c",
                    &script,
                ])
                .output()
                .unwrap()
        };
        let before = http.hits.load(Ordering::SeqCst);
        let v = verdict(&run());
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["stdout"]["text"], "miss hello, cell\n", "{mode:?}: {v}");
        assert_eq!(connections(&v).len(), 1);
        assert!(
            wd.path().join("cache.rdb").is_file(),
            "{mode:?}: the cache came back"
        );
        let v = verdict(&run());
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["stdout"]["text"], "hit hello, cell\n", "{mode:?}: {v}");
        assert_eq!(connections(&v).len(), 0, "{v}");
        assert_eq!(http.hits.load(Ordering::SeqCst), before + 1);
    }
}

/// One `tools/call` of `run` on `nixcell mcp ARGS` over stdio (newline-delimited
/// JSON-RPC); returns the tool's result.
fn mcp_run(
    mode: Mode,
    resolve: &str,
    server: &[String],
    run: serde_json::Value,
) -> serde_json::Value {
    mcp_call(mode, resolve, server, "run", run)
}

/// One `tools/call` of `tool` on `nixcell mcp ARGS`.
fn mcp_call(
    mode: Mode,
    resolve: &str,
    server: &[String],
    tool: &str,
    arguments: serde_json::Value,
) -> serde_json::Value {
    use std::io::BufRead;
    let mut c = resolving(mode, resolve);
    let mut child = c
        .arg("mcp")
        .args(server)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = |v: serde_json::Value| writeln!(stdin, "{v}").unwrap();
    let mut answer = |id: u64| loop {
        let line = lines.next().expect("an answer").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["id"] == id {
            return v;
        }
    };
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "netpol-test", "version": "0"}}}),
    );
    answer(1);
    send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}}),
    );
    let v = answer(2);
    let _ = child.kill();
    let _ = child.wait();
    v["result"].clone()
}

/// Through MCP: the server's profile decides what a run reaches, the result carries
/// `network`, and a run may name only ports the profile opens.
#[test]
fn mcp_runs_get_the_profiles_network_and_only_its_ports() {
    let http = upstream(serve_http);
    let p = http.port;
    let env = py_env();
    let dir = scratch("netprofile");
    let profile = dir.path().join("mcp.toml");
    std::fs::write(
        &profile,
        format!("[landlock]\nallow_ports = [8000]\n[network]\nallow = [\"api.test:{p}\", \"127.0.0.1:{p}\"]\n"),
    )
    .unwrap();
    chmod_readable(dir.path());
    let server = vec![
        "--env-path".to_string(),
        path_str(&env).to_string(),
        "--profile".to_string(),
        profile.display().to_string(),
    ];
    for mode in MODES {
        let ctx = mcp_call(
            mode,
            "",
            &server,
            "environment_context",
            serde_json::json!({}),
        );
        let c = &ctx["structuredContent"];
        assert_eq!(
            c["network_allowed"],
            serde_json::json!([format!("api.test:{p}"), format!("127.0.0.1:{p}")]),
            "{mode:?}: {ctx}"
        );
        assert_eq!(c["tcp_ports"], serde_json::json!([8000, 3128]), "{ctx}");
        assert!(
            ctx["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("through nixcell's proxy at http://127.0.0.1:3128"),
            "{ctx}"
        );
        let before = http.hits.load(Ordering::SeqCst);
        let r = mcp_run(
            mode,
            "api.test=127.0.0.1",
            &server,
            serde_json::json!({"command": ["python3", "-c",
                "import socket; s = socket.socket(); s.bind(('127.0.0.1', 8000)); s.listen(); print('bound')"],
                "ports": [8000]}),
        );
        let s = &r["structuredContent"];
        assert_eq!(s["exit_code"], 0, "{mode:?}: {r}");
        assert_eq!(s["stdout"]["text"], "bound\n", "{r}");
        assert_eq!(s["network"]["mode"], "proxy", "{r}");
        assert_eq!(http.hits.load(Ordering::SeqCst), before);
        let r = mcp_run(
            mode,
            "api.test=127.0.0.1",
            &server,
            serde_json::json!({"command": ["python3", "-c",
                format!("import urllib.request; print(urllib.request.urlopen('http://api.test:{p}/').read().decode(), end='')")]}),
        );
        let s = &r["structuredContent"];
        assert_eq!(s["exit_code"], 0, "{mode:?}: {r}");
        assert_eq!(s["stdout"]["text"], "hello, cell\n", "{r}");
        assert_eq!(s["network"]["connections"][0]["host"], "api.test", "{r}");
        let r = mcp_run(
            mode,
            "",
            &server,
            serde_json::json!({"command": ["true"], "ports": [8001]}),
        );
        let text = r.to_string();
        assert!(
            r["isError"] == true
                && text.contains("8001 is not a port the sandbox profile opens (8000)"),
            "{mode:?}: {r}"
        );
    }
}

/// A cell opening connections in a loop gets at most the forwarder's cap relayed at
/// once (it runs outside the command's cgroup): the rest are closed at once.
#[test]
fn the_forwarder_relays_a_bounded_number_of_connections() {
    let script = r#"
import socket, time
socks = [socket.create_connection(("127.0.0.1", 3128)) for _ in range(200)]
time.sleep(1)
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
print(closed)
"#;
    for mode in MODES {
        let o = run_py(mode, "", &allow(&["api.test:80".to_string()]), script);
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["stdout"]["text"], "72\n", "{mode:?}: 128 of 200 relayed");
    }
}

fn serve_host_echo(mut c: TcpStream) {
    let mut req = Vec::new();
    let mut b = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") && c.read(&mut b).is_ok_and(|n| n == 1) {
        req.push(b[0]);
    }
    let text = String::from_utf8_lossy(&req).to_string();
    let host = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let _ = write!(
        c,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{host}",
        host.len()
    );
}

/// Plain HTTP: the upstream sees the Host that was checked, never one the cell wrote
/// to reach another site at the same address.
#[test]
fn a_plain_http_request_carries_the_checked_host() {
    let up = upstream(serve_host_echo);
    let p = up.port;
    let script = format!(
        "import urllib.request\nr = urllib.request.Request('http://api.test:{p}/', headers={{'Host': 'other.example'}})\nprint(urllib.request.urlopen(r, timeout=10).read().decode())\n"
    );
    for mode in MODES {
        let flags = allow(&[format!("api.test:{p}"), format!("127.0.0.1:{p}")]);
        let v = verdict(&run_py(mode, "api.test=127.0.0.1", &flags, &script));
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(
            v["stdout"]["text"],
            format!("api.test:{p}\n"),
            "{mode:?}: {v}"
        );
    }
}

/// Paths of the listening unix sockets of process `pid` (from /proc/net/unix: the
/// bound name, whether or not it still exists on the host).
fn bound_unix_paths(pid: u32) -> Vec<std::path::PathBuf> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && inodes.iter().any(|i| i == f[6])).then(|| f[7].into())
        })
        .collect()
}

#[test]
fn a_killed_run_leaves_no_proxy_socket_on_the_host() {
    use std::io::BufRead;
    let env = py_env();
    let http = upstream(serve_http);
    let p = http.port;
    let script = format!(
        r#"
import time, urllib.request
print("started", flush=True)
time.sleep(1)
print(urllib.request.urlopen("http://api.test:{p}/", timeout=10).read().decode().strip(), flush=True)
time.sleep(60)
"#
    );
    for mode in MODES {
        let mut c = resolving(mode, "api.test=127.0.0.1");
        let mut child = c
            .args(["run", "--env-path", path_str(&env)])
            .args(["--allow-host", &format!("api.test:{p}")])
            .args(["--allow-host", &format!("127.0.0.1:{p}")])
            .args(["--", "python3", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "started", "{mode:?}");
        let socket = bound_unix_paths(pid)
            .into_iter()
            .find(|s| s.to_string_lossy().contains(".nixcell-net-"))
            .expect("the supervisor serves the proxy");
        // The proxy keeps serving the cell through its mount once the name is gone.
        assert_eq!(lines.next().unwrap().unwrap(), "hello, cell", "{mode:?}");
        assert!(
            !socket.exists() && !socket.parent().unwrap().exists(),
            "{mode:?}: {} is still on the host while the command runs",
            socket.display()
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!socket.parent().unwrap().exists(), "{mode:?}");
    }
}
