//! The context is true for the runs it describes: for each built-in profile, and for
//! runs through the MCP server, every claim of `nixcell context --format json` (limits,
//! writable and read-only paths, libraries, executables, network) is checked by a probe
//! inside a cell of the same project. The Markdown is short, ranked and has no empty
//! headers.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn pkgs_dir() -> PathBuf {
    repo().join("tests/fixtures/pkgs")
}

/// What runs inside the cell: every claim of the context (given as a file), probed.
const PROBE: &str = r#"
import errno, importlib, json, os, resource, shutil, socket, sys, threading
c = json.load(open(sys.argv[1]))
part = sys.argv[2]
out = {}
def err(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def write(p):
    with open(p, "w") as f:
        f.write("x")
out["writable"] = {w["path"]: err(lambda: write(w["path"] + "/probe-" + str(os.getpid()))) for w in c["writable_paths"]}
ro = [r["path"] for r in c["read_only_paths"]]
if "/" in ro:
    ro += ["/etc", "/nix/store", "/bin"]
out["read_only"] = {p: err(lambda: write(p.rstrip("/") + "/probe")) for p in ro}
# /tmp: its byte cap (1 MiB files until it is full) and its inode cap.
l = c["limits"]
n = 0
def fill():
    global n
    while n < 4096:
        with open("/tmp/fill-%d" % n, "wb") as f:
            f.write(b"\1" * (1 << 20))
        n += 1
out["tmp_fill"] = err(fill)
out["tmp_mib"] = n
for i in range(n):
    os.unlink("/tmp/fill-%d" % i)
k = 0
def inodes():
    global k
    os.mkdir("/tmp/i")
    while k < 10000000:
        os.mkdir("/tmp/i/%d" % k)
        k += 1
if part == "inodes":
    out["tmp_inodes_err"] = err(inodes)
    out["tmp_inodes"] = k
    print(json.dumps(out))
    sys.exit(0)
# rlimits the profile sets: what the kernel holds for this process.
def soft(r):
    v = resource.getrlimit(r)[0]
    return None if v == resource.RLIM_INFINITY else v
out["rlimits"] = {"open_files": soft(resource.RLIMIT_NOFILE), "file_size_bytes": soft(resource.RLIMIT_FSIZE), "cpu_seconds": soft(resource.RLIMIT_CPU)}
# pids: threads until the kernel refuses one.
threading.stack_size(256 << 10)
stop = threading.Event()
started = []
try:
    while len(started) < 100000:
        t = threading.Thread(target=stop.wait)
        t.start()
        started.append(t)
except RuntimeError:
    pass
stop.set()
for t in started:
    t.join()
out["threads"] = len(started)
# libraries: each importable.
names = {"et-xmlfile": "et_xmlfile", "python-dateutil": "dateutil", "pyyaml": "yaml"}
libs = (c.get("python") or {}).get("libraries", [])
def imp(n):
    try:
        importlib.import_module(names.get(n, n.lower().replace("-", "_")))
        return "ok"
    except Exception as e:
        return repr(e)
out["imports"] = {x["name"]: imp(x["name"]) for x in libs}
# executables: each on PATH.
out["missing"] = [e for e in c["executables"] if shutil.which(e) is None]
# network: an outside address and a loopback port no service uses.
def connect(addr):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(addr)
    finally:
        s.close()
out["connect"] = {"outside": err(lambda: connect(("10.1.2.3", 80))), "loopback": err(lambda: connect(("127.0.0.1", 9)))}
print(json.dumps(out))
"#;

/// A project with Python and two libraries (and what they bring), busybox and redis,
/// whose nixcell.toml names `profile`, a 15 s timeout and a 16 MiB /tmp.
fn project(profile: &str) -> tempfile::TempDir {
    let toml = format!(
        "profile = \"{profile}\"\nnixpkgs = \"{}\"\n[limits]\ntimeout = \"15s\"\ntmp_size = \"16M\"\n[policy]\npackages = [\"jq\"]\npython_libraries = [\"numpy\"]\n",
        pkgs_dir().display()
    );
    git_project(
        "ctx",
        &[
            (
                "devenv.nix",
                "{ pkgs, ... }: {\n  packages = [ pkgs.busybox ];\n  languages.python = { enable = true; libraries = [ \"pandas\" \"openpyxl\" ]; };\n  services.redis.enable = true;\n}\n",
            ),
            ("nixcell.toml", &toml),
            ("probe.py", PROBE),
        ],
    )
}

fn cell_cmd(mode: Mode, dir: &Path, args: &[&str]) -> Command {
    let mut c = nixcell(mode);
    c.current_dir(dir).args(args);
    if mode == Mode::Root {
        c.env("NIX_PATH", format!("nixpkgs={}", pkgs_dir().display()));
    }
    c
}

fn cell(mode: Mode, dir: &Path, args: &[&str]) -> Output {
    cell_cmd(mode, dir, args).output().unwrap()
}

fn json_of(o: &Output, what: &str) -> Value {
    serde_json::from_str(&ok(o, what)).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The probe's findings checked against the context's claims.
fn check_probe(what: &str, c: &Value, p: &Value) {
    for (path, r) in p["writable"].as_object().unwrap() {
        assert_eq!(r, "ok", "{what}: claimed writable, {path}: {r}\n{p}");
    }
    for (path, r) in p["read_only"].as_object().unwrap() {
        assert!(
            r == "EROFS" || r == "EACCES",
            "{what}: claimed read-only, {path}: {r}\n{p}"
        );
    }
    let l = &c["limits"];
    let tmp_mib = l["tmp_size_bytes"].as_u64().unwrap() >> 20;
    assert_eq!(p["tmp_fill"], "ENOSPC", "{what}: {p}");
    assert!(
        p["tmp_mib"].as_u64().unwrap() <= tmp_mib && p["tmp_mib"].as_u64().unwrap() + 1 >= tmp_mib,
        "{what}: /tmp claimed {tmp_mib} MiB, held {} MiB",
        p["tmp_mib"]
    );
    for k in ["open_files", "file_size_bytes", "cpu_seconds"] {
        assert_eq!(p["rlimits"][k], l[k], "{what}: {k}: {p}");
    }
    let pids = l["pids"].as_u64().unwrap();
    let threads = p["threads"].as_u64().unwrap();
    assert!(
        threads < pids && threads + 16 >= pids,
        "{what}: pids claimed {pids}, {threads} threads started"
    );
    let libs = c["python"]["libraries"].as_array().unwrap();
    assert!(libs.len() >= 3, "{what}: {libs:?}");
    for (lib, r) in p["imports"].as_object().unwrap() {
        assert_eq!(r, "ok", "{what}: {lib} listed, import: {r}");
    }
    assert_eq!(p["missing"], json!([]), "{what}: listed but not on PATH");
    let denied = if c["network"]["tcp_ports"].is_array() {
        "EACCES"
    } else {
        "ENETUNREACH"
    };
    assert_eq!(p["connect"]["outside"], denied, "{what}: {p}");
    if denied == "EACCES" {
        assert_eq!(p["connect"]["loopback"], "EACCES", "{what}: {p}");
    }
}

/// The probe's count of inodes /tmp held against the claim.
fn check_inodes(what: &str, c: &Value, p: &Value) {
    let inodes = c["limits"]["tmp_inodes"].as_u64().unwrap();
    assert_eq!(p["tmp_inodes_err"], "ENOSPC", "{what}: {p}");
    let made = p["tmp_inodes"].as_u64().unwrap();
    assert!(
        made < inodes && made + 16 >= inodes,
        "{what}: /tmp inodes claimed {inodes}, made {made}"
    );
}

/// A verdict-shaped value of a run: exit code, OOM kill, timeout, stdout.
struct Ran {
    exit_code: i64,
    oom_killed: bool,
    timed_out: bool,
    stdout: Value,
}

fn ran(v: &Value) -> Ran {
    Ran {
        exit_code: v["exit_code"].as_i64().unwrap_or(-1),
        oom_killed: v["oom_killed"] == true,
        timed_out: v["timed_out"] == true,
        stdout: v["stdout"].clone(),
    }
}

/// The limits that end a run: memory (above and below the claim), the timeout, the
/// output cap; `run` runs a shell command line in a cell as the context describes (with
/// `true`, given more time: writing gigabytes takes long on a busy host).
fn check_ending_limits(what: &str, c: &Value, run: &mut dyn FnMut(&str, bool) -> Value) {
    let l = &c["limits"];
    let mem = l["memory_bytes"].as_u64().unwrap();
    let alloc = |n: u64| format!("python3 -c 'b = bytes(1) * {n}; print(len(b))'");
    let v = ran(&run(&alloc(mem + (128 << 20)), true));
    if l["enforced_by"] == "cgroup" {
        assert!(
            v.oom_killed,
            "{what}: {mem} bytes claimed, more was not OOM-killed"
        );
    } else {
        // The rlimit fallback the context then states: the allocation fails.
        assert_eq!(l["enforced_by"], "rlimit", "{what}");
        assert!(
            v.exit_code != 0 && !v.oom_killed,
            "{what}: more than {mem} bytes"
        );
    }
    if mem <= 2 << 30 {
        let v = ran(&run(&alloc(mem - (256 << 20)), true));
        assert_eq!(
            v.exit_code, 0,
            "{what}: less than the {mem} bytes claimed failed"
        );
    }
    let t = l["timeout_secs"].as_u64().unwrap();
    assert_eq!(t, 15, "{what}: the project's timeout");
    let start = std::time::Instant::now();
    let v = ran(&run("sleep 30", false));
    assert!(v.timed_out && v.exit_code == 124, "{what}: not timed out");
    let took = start.elapsed().as_secs_f64();
    assert!(
        (15.0..22.0).contains(&took),
        "{what}: timed out after {took} s"
    );
    let cap = l["max_output_bytes"].as_u64().unwrap();
    let v = ran(&run(
        &format!("head -c {} /dev/zero | tr '\\0' x", cap + 4096),
        false,
    ));
    assert_eq!(v.stdout["truncated"], true, "{what}");
    assert_eq!(v.stdout["bytes"], cap + 4096, "{what}");
    let kept = v.stdout["text"].as_str().unwrap().len() as u64;
    assert!(
        kept <= cap && kept > 0,
        "{what}: kept {kept} of a {cap} cap"
    );
}

#[test]
fn the_context_is_true_under_every_profile() {
    for profile in ["default", "strict", "ci"] {
        let p = project(profile);
        let dir = p.path();
        ok(&cell(Mode::Root, dir, &["build"]), "build");
        let c = json_of(&cell(Mode::Root, dir, &["context", "--json"]), "context");
        assert_eq!(c["profile"], profile);
        // The same project named by --profile describes the same runs.
        let named = json_of(
            &cell(
                Mode::Root,
                dir,
                &["context", "--json", "--profile", profile],
            ),
            "context --profile",
        );
        assert_eq!(named["limits"], c["limits"]);
        std::fs::write(dir.join("ctx.json"), c.to_string()).unwrap();
        for mode in MODES {
            // Root first; then the project becomes the test user's, as its owner runs it.
            if mode == Mode::Rootless {
                chown_to_test_user(dir);
            }
            let what = format!("{profile} {mode:?}");
            let probe = |part: &str| -> Value {
                let o = cell(
                    mode,
                    dir,
                    &["run", "--", "python3", "probe.py", "ctx.json", part],
                );
                serde_json::from_str(&ok(&o, &what)).unwrap()
            };
            check_probe(&what, &c, &probe("claims"));
            check_inodes(&what, &c, &probe("inodes"));
            let mut run = |line: &str, long: bool| {
                let mut args = vec!["run", "--json"];
                if long {
                    args.extend(["--timeout", "300s"]);
                }
                args.extend(["--", "sh", "-c", line]);
                verdict(&cell(mode, dir, &args))
            };
            check_ending_limits(&what, &c, &mut run);
        }
        // Writability follows the profile: strict's /work is read-only.
        let work_writable = c["writable_paths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["path"] == "/work");
        assert_eq!(work_writable, profile != "strict", "{profile}: {c}");
    }
}

/// A line-delimited JSON-RPC client of `nixcell mcp` on stdio.
struct Mcp {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    id: u64,
}

impl Mcp {
    fn start(dir: &Path) -> Mcp {
        let mut child = cell_cmd(Mode::Root, dir, &["mcp", "--project", path_str(dir)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut m = Mcp { child, out, id: 0 };
        m.call(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "context-test", "version": "1"}}),
        );
        m.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        m
    }

    fn send(&mut self, v: Value) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        let id = self.id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            assert!(self.out.read_line(&mut line).unwrap() > 0, "server gone");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn tool(&mut self, name: &str, args: Value) -> Value {
        self.call("tools/call", json!({"name": name, "arguments": args}))
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_context_is_true_for_runs_through_mcp() {
    for profile in ["default", "strict"] {
        let p = project(profile);
        let dir = p.path();
        ok(&cell(Mode::Root, dir, &["build"]), "build");
        let mut mcp = Mcp::start(dir);
        let r = mcp.tool("environment_context", json!({}));
        let c = r["structuredContent"].clone();
        assert_eq!(c["mcp"], true, "{r}");
        let md = r["content"][0]["text"].as_str().unwrap().to_string();
        // What MCP does, not what the command line does.
        assert!(md.contains("private copy of the project"), "{md}");
        assert!(md.contains("edit_environment"), "{md}");
        assert!(!md.contains("nixcell edit"), "{md}");
        for cmd in c["edits"]["commands"].as_array().unwrap() {
            assert!(
                cmd.as_str().unwrap().starts_with("edit_environment"),
                "{cmd}"
            );
        }
        // MCP's own default limits: 16 KiB of output (head; the tail is kept too), at most the project's 15 s.
        assert_eq!(c["limits"]["max_output_bytes"], 16 << 10);
        assert_eq!(c["limits"]["timeout_secs"], 15);
        let what = format!("mcp {profile}");
        let mut probe = |part: &str| -> Value {
            let r = mcp.tool(
                "run",
                json!({"command": ["python3", "probe.py", "ctx.json", part],
                       "files": {"ctx.json": c.to_string()}}),
            );
            let v = &r["structuredContent"];
            assert_eq!(v["exit_code"], 0, "{what}: {r}");
            serde_json::from_str(v["stdout"]["text"].as_str().unwrap()).unwrap()
        };
        check_probe(&what, &c, &probe("claims"));
        check_inodes(&what, &c, &probe("inodes"));
        let mut run = |line: &str, _long: bool| {
            mcp.tool("run", json!({"command": line}))["structuredContent"].clone()
        };
        check_ending_limits(&what, &c, &mut run);
        // A run's writes stay in its copy: the project is unchanged.
        assert!(
            !std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("probe-")),
            "{what}: a run through MCP changed the project"
        );
    }
}

#[test]
fn the_markdown_is_ranked_summarised_and_has_no_empty_headers() {
    let p = project("default");
    let dir = p.path();
    let md = ok(&cell(Mode::Root, dir, &["context"]), "context");
    // busybox's applets are one line, not hundreds of names.
    let bb = md
        .lines()
        .find(|l| l.starts_with("- busybox: "))
        .unwrap_or_else(|| panic!("no busybox summary:\n{md}"));
    assert!(
        bb.contains("commands incl. sh, ls, cat, grep, sed, awk"),
        "{bb}"
    );
    assert!(!md.contains(" acpid "), "{md}");
    let full = ok(&cell(Mode::Root, dir, &["context", "--full"]), "full");
    assert!(full.contains("acpid"), "--full lists every command");
    // Every header is followed by content.
    for text in [&md, &full] {
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.starts_with('#') {
                let next = lines.get(i + 1).copied().unwrap_or("");
                assert!(!next.trim().is_empty() && !next.starts_with('#'), "{l}");
            }
            if l.ends_with("(only these):") {
                let next = lines.get(i + 1).copied().unwrap_or("");
                assert!(next.starts_with("- "), "an empty list: {l}");
            }
        }
    }
    // Under a small budget: what agents need most stays, the rest is named.
    for budget in [200, 300, 600] {
        let short = ok(
            &cell(
                Mode::Root,
                dir,
                &["context", "--max-tokens", &budget.to_string()],
            ),
            "short",
        );
        assert!(short.contains("## Asking for changes"), "{budget}: {short}");
        assert!(short.contains("## Python"), "{budget}: {short}");
        for lib in ["pandas", "openpyxl", "numpy"] {
            assert!(short.contains(lib), "{budget}: {lib} dropped: {short}");
        }
        assert!(short.contains("nixcell context --full"), "{short}");
        assert!(short.len() < md.len(), "{budget}");
        if budget >= 300 {
            assert!(short.len() <= budget * 4, "{budget}: {} bytes", short.len());
        }
    }
}
