//! Shared helpers of the integration tests: the real binary, run as root and as an
//! unprivileged user, on environments built from the offline package set.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

/// The unprivileged user that rootless cases run as (created by scripts/setup.sh).
pub const TEST_USER: &str = "nixcell-test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Root,
    Rootless,
}

pub const MODES: [Mode; 2] = [Mode::Root, Mode::Rootless];

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nixcell")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the integration tests run as root; they run the rootless cases as user {TEST_USER} (see scripts/setup.sh)"
    );
}

pub fn test_user_ids() -> (u32, u32) {
    let u = nix::unistd::User::from_name(TEST_USER)
        .expect("user lookup")
        .unwrap_or_else(|| panic!("user {TEST_USER} is missing: run scripts/setup.sh"));
    (u.uid.as_raw(), u.gid.as_raw())
}

/// `NIXCELL_EVAL_PATHS` of the tests: the offline package set itself (projects name
/// it in their nixcell.toml) and what it reads of the host while it is evaluated,
/// which nixcell's restricted evaluation allows only when its caller says so.
pub fn fixture_eval_paths() -> String {
    format!(
        "{}:/var/lib/dpkg/status:/usr/lib/python3/dist-packages",
        repo().join("tests/fixtures/pkgs").display()
    )
}

/// `setpriv`, ready to run a program (the next argument) as the unprivileged test
/// user with its own groups and a clean environment (but for `NIXCELL_EVAL_PATHS`).
pub fn as_test_user() -> Command {
    test_user_ids();
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        TEST_USER,
        "--regid",
        TEST_USER,
        "--init-groups",
        "--reset-env",
        "--",
        "env",
    ]);
    c.arg(format!("NIXCELL_EVAL_PATHS={}", fixture_eval_paths()));
    c
}

/// `git -C dir ARGS` with a fixed identity; asserts success and returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.org"])
        .args(args)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// `git status --porcelain` of `dir` without the package-set lock nixcell writes next to
/// a declaration when it first resolves its package set (`?? devenv.lock`: the user's
/// to commit).
pub fn git_status(dir: &Path) -> String {
    git(dir, &["status", "--porcelain"])
        .lines()
        .filter(|l| *l != "?? devenv.lock")
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A command that runs `nixcell` with `args`, as root or as the test user.
pub fn nixcell(mode: Mode) -> Command {
    require_root();
    match mode {
        Mode::Root => {
            let mut c = Command::new(bin());
            c.env("XDG_CACHE_HOME", repo().join("target/test-cache/root"))
                .env("NIXCELL_EVAL_PATHS", fixture_eval_paths());
            c
        }
        Mode::Rootless => {
            let mut c = as_test_user();
            c.arg(bin());
            c
        }
    }
}

/// The path of an environment built with nix-build from the offline package set:
/// `expr` is evaluated with `pkgs` in scope, e.g. `pkgs.busybox`. A GC root under
/// target/ keeps it alive.
pub fn build_env(name: &str, expr: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut guard = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(name) {
        return p.clone();
    }
    let roots = repo().join("target/gcroots");
    std::fs::create_dir_all(&roots).unwrap();
    let link = roots.join(name);
    let full = format!(
        "let pkgs = import {}/tests/fixtures/pkgs {{}}; in {expr}",
        repo().display()
    );
    let out = Command::new("nix-build")
        .env("NIX_CONFIG", "substituters =\n")
        .args(["--quiet", "-E", &full, "-o"])
        .arg(&link)
        .output()
        .expect("run nix-build");
    assert!(
        out.status.success(),
        "nix-build of {expr} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = std::fs::canonicalize(&link).unwrap();
    map.insert(name.to_string(), path.clone());
    path
}

/// The busybox toolbox environment used by most runner tests.
pub fn busybox() -> PathBuf {
    build_env("busybox", "pkgs.busybox")
}

/// Makes `dir` and everything in it the test user's (`chown -R`).
pub fn chown_to_test_user(dir: &Path) {
    let (u, g) = test_user_ids();
    let out = Command::new("chown")
        .args(["-R", &format!("{u}:{g}")])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "chown: {}", text(&out.stderr));
}

/// A fresh directory under target/test-work.
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    let base = repo().join("target/test-work");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .unwrap()
}

/// A fresh directory the mode's user owns.
pub fn workdir(mode: Mode) -> tempfile::TempDir {
    let base = repo().join("target/test-work");
    std::fs::create_dir_all(&base).unwrap();
    let d = tempfile::Builder::new()
        .prefix("wd")
        .tempdir_in(&base)
        .unwrap();
    if mode == Mode::Rootless {
        let (u, g) = test_user_ids();
        nix::unistd::chown(d.path(), Some(u.into()), Some(g.into())).unwrap();
    }
    d
}

/// Runs `sh -c script` in a busybox cell, plus extra arguments before `--`.
pub fn sh(mode: Mode, extra: &[&str], script: &str) -> Output {
    let bb = busybox();
    let mut c = nixcell(mode);
    c.arg("run")
        .arg("--env-path")
        .arg(&bb)
        .args(extra)
        .args(["--", "sh", "-c", script]);
    c.output().expect("run nixcell")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts exit 125 (nixcell refused before running anything) and returns stderr.
pub fn fails(o: &Output, what: &str) -> String {
    assert_eq!(
        o.status.code(),
        Some(125),
        "{what}: expected exit 125\nstdout:\n{}\nstderr:\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stderr)
}

/// Asserts success and returns stdout, showing everything on failure.
pub fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Parses the JSON verdict printed by `run --json`.
pub fn verdict(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON verdict ({e}):\nstdout:\n{}\nstderr:\n{}",
            text(&o.stdout),
            text(&o.stderr)
        )
    })
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh directory under target/test-work holding `files` (name, content), committed
/// in a new git repository: a project.
pub fn git_project(prefix: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let base = repo().join("target/test-work");
    std::fs::create_dir_all(&base).unwrap();
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .unwrap();
    for (name, content) in files {
        std::fs::write(d.path().join(name), content).unwrap();
    }
    git(d.path(), &["init", "-q"]);
    git(d.path(), &["add", "."]);
    git(d.path(), &["commit", "-q", "-m", "initial"]);
    d
}

/// A new directory (outside the repository: a flake inside a git tree is that tree's
/// flake) holding a `flake.nix` whose `nixpkgs` input is the offline package set and
/// whose outputs, with `pkgs` in scope, are `outputs` (Nix attribute bindings).
pub fn flake_dir(outputs: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let flake = format!(
        "{{\n  inputs.nixpkgs.url = \"path:{}\";\n  outputs = {{ self, nixpkgs }}:\n    let pkgs = nixpkgs.legacyPackages.x86_64-linux; in {{\n{outputs}\n    }};\n}}\n",
        repo().join("tests/fixtures/pkgs").display()
    );
    std::fs::write(dir.path().join("flake.nix"), flake).unwrap();
    dir
}

/// Asserts that `dir` is empty: nothing of a run was left behind there.
pub fn assert_empty_dir(dir: &Path, what: &str) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "{what}: left behind: {left:?}");
}

/// A Python interpreter with the `mcp` SDK (and openpyxl, to write real spreadsheets).
pub fn mcp_python() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = std::env::var_os("NIXCELL_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo().join("target/mcp-venv");
    let py = venv.join("bin/python");
    let has_sdk = |py: &PathBuf| {
        Command::new(py)
            .args(["-c", "import mcp.client.stdio, openpyxl"])
            .status()
            .is_ok_and(|s| s.success())
    };
    let usable_rootless = || std::fs::canonicalize(&py).is_ok_and(|p| p.starts_with("/usr"));
    if py.exists() && has_sdk(&py) && usable_rootless() {
        return py;
    }
    // The distribution's interpreter, which the unprivileged test user can execute.
    let st = Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv");
    assert!(st.success(), "cannot create {}", venv.display());
    let st = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "mcp", "openpyxl"])
        .status()
        .expect("pip install mcp");
    assert!(st.success(), "pip install mcp failed");
    assert!(has_sdk(&py), "the mcp SDK is not importable");
    py
}

/// `cmd` on the terminal whose slave is given, as a terminal emulator starts a
/// program: its stdin and stderr, its controlling terminal (a session of its own);
/// stdout piped.
pub fn on_terminal(cmd: &mut Command, slave: &std::os::fd::OwnedFd) {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// What one OCI container run left: its exit status, its output, the runtime log.
pub struct OciRan {
    pub status: i32,
    pub out: String,
    pub log: String,
}

/// `nixcell oci` with its state (`dir/state`) and runtime log (`dir/log`) under `dir`.
pub fn oci_in(mode: Mode, dir: &Path, args: &[&str]) -> Command {
    let mut c = nixcell(mode);
    c.arg("oci")
        .arg("--root")
        .arg(dir.join("state"))
        .arg("--log")
        .arg(dir.join("log"))
        .args(args);
    c
}

/// A bundle of `cfg` in a new directory: create (the container's stdout and stderr on
/// a file), start, wait for PID 1 as a shim does (this process becomes a child
/// subreaper), delete. With `image`, `bundle/rootfs` holds Debian's busybox (`sh`,
/// `grep`) for a config without the closure annotation. `Err` with create's output
/// when create failed, which must leave no state.
pub fn oci_run(mode: Mode, cfg: &serde_json::Value, image: bool) -> Result<OciRan, String> {
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let dir = workdir(mode);
    let d = dir.path();
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(d.join("bundle/rootfs")).unwrap();
    std::fs::write(d.join("bundle/config.json"), config_json(cfg)).unwrap();
    if image {
        let bin = d.join("bundle/rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/usr/bin/busybox", bin.join("busybox")).unwrap();
        for a in ["sh", "grep"] {
            std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
        }
    }
    if mode == Mode::Rootless {
        chown_to_test_user(d);
    }
    let out = std::fs::File::create(d.join("out")).unwrap();
    let made = oci_in(mode, d, &["create", "--bundle"])
        .arg(d.join("bundle"))
        .arg("--pid-file")
        .arg(d.join("pid"))
        .arg("c")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap_or_default();
    if !made.success() {
        assert_eq!(made.code(), Some(1), "create: {made:?}");
        let left = std::fs::read_dir(d.join("state")).map_or(0, |r| r.count());
        assert_eq!(left, 0, "a refused create leaves no state");
        return Err(read("out"));
    }
    let pid: i32 = read("pid").trim().parse().unwrap();
    ok(&oci_in(mode, d, &["start", "c"]).output().unwrap(), "start");
    let mut st = 0;
    // SAFETY: waitpid on a child of ours (the container's PID 1 was reparented here).
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    ok(
        &oci_in(mode, d, &["delete", "c"]).output().unwrap(),
        "delete",
    );
    Ok(OciRan {
        status: libc::WEXITSTATUS(st),
        out: read("out"),
        log: read("log"),
    })
}

/// `cfg` as config.json, with the namespaces `runc spec` and the engines list
/// (mount, pid, network, ipc, uts) when it names none: a cell refuses to share one of
/// these with the host.
pub fn config_json(cfg: &serde_json::Value) -> String {
    let mut cfg = cfg.clone();
    if cfg["linux"]["namespaces"].is_null() {
        if cfg["linux"].is_null() {
            cfg["linux"] = serde_json::json!({});
        }
        cfg["linux"]["namespaces"] = ["mount", "pid", "network", "ipc", "uts"]
            .iter()
            .map(|k| serde_json::json!({ "type": k }))
            .collect();
    }
    cfg.to_string()
}
