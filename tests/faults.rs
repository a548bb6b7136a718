//! Faults in what nixcell depends on: git missing or the repository locked, the Nix
//! daemon unreachable or killed during a build, the cache directory full or read-only,
//! the cgroup hierarchy read-only or missing a controller, the binary replaced
//! while a cell runs. Each gives a clear error naming what is wrong, exit 125 (or the
//! command's own status when it already ran), and nothing half-written.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn env_vars(c: &mut Command) -> &mut Command {
    c.env(
        "NIX_PATH",
        format!("nixpkgs={}", repo().join("tests/fixtures/pkgs").display()),
    )
}

/// A copy of the `analysis` fixture project in a fresh repository with one commit.
fn project() -> tempfile::TempDir {
    let src = repo().join("tests/fixtures/projects/analysis");
    let files: Vec<(String, String)> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    git_project("faults", &refs)
}

/// What an edit could change: the declaration, HEAD, the index.
fn snapshot(dir: &Path) -> (Vec<u8>, String, Vec<u8>) {
    (
        std::fs::read(dir.join("devenv.nix")).unwrap(),
        git(dir, &["rev-parse", "HEAD"]),
        std::fs::read(dir.join(".git/index")).unwrap(),
    )
}

fn edit(dir: &Path, path_env: Option<&str>) -> Output {
    let mut c = nixcell(Mode::Root);
    env_vars(&mut c)
        .current_dir(dir)
        .args(["edit", "add-package", "jq"]);
    if let Some(p) = path_env {
        c.env("PATH", p);
    }
    c.output().unwrap()
}

#[test]
fn an_edit_without_git_on_path_changes_nothing() {
    let p = project();
    let before = snapshot(p.path());
    // nix's tools, but no git.
    let bin = scratch("nogit");
    for e in std::fs::read_dir("/usr/bin").unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("nix") {
            std::os::unix::fs::symlink(e.path(), bin.path().join(e.file_name())).unwrap();
        }
    }
    let o = edit(p.path(), Some(path_str(bin.path())));
    let err = fails(&o, "edit without git");
    assert!(err.contains("git is not installed or not on PATH"), "{err}");
    assert_eq!(snapshot(p.path()), before);
}

#[test]
fn an_edit_in_a_repository_locked_by_another_git_process_changes_nothing() {
    let p = project();
    let lock = p.path().join(".git/index.lock");
    std::fs::write(&lock, "").unwrap();
    let before = snapshot(p.path());
    let o = edit(p.path(), None);
    let err = fails(&o, "edit in a locked repository");
    assert!(
        err.contains("locked by another git process") && err.contains(&lock.display().to_string()),
        "{err}"
    );
    assert_eq!(
        snapshot(p.path()),
        before,
        "HEAD, index or declaration moved"
    );
    // Once the other process is done, the same edit goes through.
    std::fs::remove_file(&lock).unwrap();
    let o = edit(p.path(), None);
    ok(&o, "edit after the lock is gone");
    assert_ne!(snapshot(p.path()).1, before.1);
    assert_eq!(git_status(p.path()), "");
}

#[test]
fn an_unreachable_nix_daemon_is_named() {
    let cache = scratch("nodaemon");
    let mut c = nixcell(Mode::Root);
    let o = env_vars(&mut c)
        .env("XDG_CACHE_HOME", cache.path())
        .env("NIX_REMOTE", "unix:///nonexistent/nix-daemon.socket")
        .args(["run", "--with", "jq", "--", "jq", "--version"])
        .output()
        .unwrap();
    let err = fails(&o, "no daemon");
    assert!(
        err.contains("/nonexistent/nix-daemon.socket") && err.contains("Nix daemon"),
        "{err}"
    );
}

#[test]
fn a_nix_daemon_that_dies_on_the_connection_is_named() {
    let dir = scratch("dyingdaemon");
    let sock = dir.path().join("daemon.socket");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // A daemon that accepts, reads the client's greeting and dies.
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            let mut buf = [0u8; 64];
            let _ = std::io::Read::read(&mut &c, &mut buf);
            drop(c);
        }
    });
    let cache = scratch("dyingcache");
    let mut c = nixcell(Mode::Root);
    let o = env_vars(&mut c)
        .env("XDG_CACHE_HOME", cache.path())
        .env("NIX_REMOTE", format!("unix://{}", sock.display()))
        .args(["run", "--with", "jq", "--", "jq", "--version"])
        .output()
        .unwrap();
    let err = fails(&o, "dying daemon");
    assert!(
        err.contains(&sock.display().to_string()) && err.contains("ended the connection"),
        "{err}"
    );
    assert_eq!(text(&o.stdout), "", "nothing ran");
}

/// `nixcell run --with jq` with its cache (and state) directory on `mount` (a tmpfs
/// in a private mount namespace), then the files left there.
fn run_with_cache_on(mount: &str, prepare: &str) -> (Output, String) {
    let dir = scratch("cachefs");
    let d = dir.path().display().to_string();
    let prepare = prepare.replace("DIR", &d);
    let script = format!(
        "mount -t tmpfs -o {mount} tmpfs {d} && {prepare} \
         XDG_CACHE_HOME={d}/cache XDG_STATE_HOME={d}/state {bin} run --with jq -- jq --version; \
         rc=$?; find {d} -name '.tmp*' | sed 's/^/LEFT /' >&2; exit $rc",
        bin = bin()
    );
    let mut c = Command::new("unshare");
    let o = env_vars(&mut c)
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = text(&o.stderr);
    (o, err)
}

#[test]
fn a_full_cache_directory_is_named_and_nothing_is_left_half_written() {
    let (o, err) = run_with_cache_on(
        "size=64k",
        "dd if=/dev/zero of=DIR/fill bs=4k count=100 2>/dev/null;",
    );
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("/cache/nixcell"), "names the directory: {err}");
    assert!(!err.contains("LEFT "), "temporary files left: {err}");
}

#[test]
fn a_read_only_cache_directory_is_named() {
    let (o, err) = run_with_cache_on("ro", "");
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.contains("Read-only file system") && err.contains("/cache"),
        "{err}"
    );
}

#[test]
fn replacing_the_binary_while_a_cell_runs_does_not_disturb_it() {
    for mode in MODES {
        let dir = scratch("exe");
        let copy = dir.path().join("nixcell");
        std::fs::copy(bin(), &copy).unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut c = match mode {
            Mode::Root => {
                let mut c = Command::new(&copy);
                c.env("XDG_CACHE_HOME", repo().join("target/test-cache/root"));
                c
            }
            Mode::Rootless => {
                let mut c = as_test_user();
                c.arg(&copy);
                c
            }
        };
        let mut child = c
            .args(["run", "--env-path", path_str(&busybox()), "--"])
            .args([
                "sh",
                "-c",
                "echo started; sleep 1.5; echo still-here; exit 3",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The cell's command runs (so every re-exec of the binary is behind it).
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line, "started\n", "{mode:?}");
        // An upgrade: a new file renamed over the old name.
        let next = dir.path().join("nixcell.new");
        std::fs::write(&next, b"#!/bin/sh\nexit 99\n").unwrap();
        std::fs::set_permissions(&next, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::rename(&next, &copy).unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(3), "{mode:?}");
        assert_eq!(rest, "still-here\n", "{mode:?}");
    }
}

#[test]
fn a_read_only_cgroup_hierarchy_is_named_and_fails_closed_where_required() {
    let bb = busybox();
    let script = format!(
        "mount -o remount,bind,ro /sys/fs/cgroup/memory || exit 90; \
         {b} run --json --memory 100M --env-path {bb} -- echo ran; echo rc=$?; \
         {b} run --profile strict --env-path {bb} -- echo ran; echo rc=$?",
        b = bin(),
        bb = bb.display()
    );
    let (out, err) = in_private_mounts(&script);
    let mut parts = out.split("rc=");
    // Best effort (the default profile): the run goes on and says what is not enforced.
    let v: serde_json::Value = serde_json::from_str(parts.next().unwrap()).unwrap();
    let cgroup = cgroup_layer(&v);
    assert_eq!(cgroup["enforced"], false, "{v}");
    assert!(
        cgroup["detail"]
            .as_str()
            .unwrap()
            .contains("/sys/fs/cgroup/memory/"),
        "{cgroup}"
    );
    // Required (strict): nothing runs, the error names the hierarchy.
    assert!(
        out.ends_with("rc=125\n") && !out.contains("ran\nrc=125"),
        "{out}"
    );
    assert!(
        err.contains("cgroup layer is required") && err.contains("/sys/fs/cgroup/memory/"),
        "{err}"
    );
}

/// A name no other test run uses (letters, digits and `x`: a Nix attribute name too).
fn unique_name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}{}x{nanos}", std::process::id())
}

/// A store path only this test uses (a unique file), with a GC root under
/// target/ that the test removes to collect it.
fn test_only_path(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let unique = unique_name(tag);
    let roots = repo().join("target/gcroots");
    std::fs::create_dir_all(&roots).unwrap();
    let link = roots.join(&unique);
    let out = Command::new("nix-build")
        .env("NIX_CONFIG", "substituters =\n")
        .args(["--quiet", "-E"])
        .arg(format!(
            "derivation {{ name = \"{unique}\"; system = builtins.currentSystem; \
             builder = \"/bin/sh\"; args = [ \"-c\" \"echo {unique} > $out\" ]; }}"
        ))
        .arg("-o")
        .arg(&link)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    (std::fs::canonicalize(&link).unwrap(), link)
}

fn collect(path: &Path, root: &Path) {
    std::fs::remove_file(root).unwrap();
    let out = Command::new("nix-store")
        .arg("--delete")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!path.exists());
}

#[test]
fn a_cached_closure_whose_store_path_was_collected_is_named() {
    for mode in MODES {
        let (path, root) = test_only_path("collected");
        let wd = workdir(mode);
        let run = || {
            nixcell(mode)
                .args(["run", "--workdir", path_str(wd.path())])
                .args(["--env-path", path_str(&busybox())])
                .args(["--env-path", path_str(&path)])
                .args(["--", "sh", "-c", "echo ran > /work/ran"])
                .output()
                .unwrap()
        };
        ok(&run(), "first run");
        std::fs::remove_file(wd.path().join("ran")).unwrap();
        // The closure is cached now; the path goes.
        collect(&path, &root);
        let o = run();
        let err = fails(&o, "collected path");
        assert!(
            err.contains(path_str(&path)) && err.contains("no such file"),
            "{mode:?}: {err}"
        );
        assert!(!wd.path().join("ran").exists(), "{mode:?}: the command ran");
    }
}

#[test]
fn a_projects_cached_build_that_was_collected_is_built_again() {
    let p = project();
    let dir = p.path();
    // A script of its own makes the environment a store path no other project has.
    let unique = unique_name("u");
    let decl = std::fs::read_to_string(dir.join("devenv.nix"))
        .unwrap()
        .replace("quarterly", &unique)
        .replace(
            "  env.REPORT_NAME",
            &format!("  scripts.{unique}.exec = \"echo hi\";\n  env.REPORT_NAME"),
        );
    std::fs::write(dir.join("devenv.nix"), decl).unwrap();
    git(dir, &["commit", "-qam", "unique"]);
    let in_project = |args: &[&str]| {
        let mut c = nixcell(Mode::Root);
        env_vars(&mut c)
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap()
    };
    let v: serde_json::Value =
        serde_json::from_str(&ok(&in_project(&["build", "--json"]), "build")).unwrap();
    let env = std::path::PathBuf::from(v["env"].as_str().unwrap());
    let root = std::fs::read_dir(dir.join(".nixcell/gcroots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|r| std::fs::read_link(r).is_ok_and(|t| t == env))
        .expect("the build's GC root");
    collect(&env, &root);
    let o = in_project(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo ran $REPORT_NAME; $REPORT_NAME",
    ]);
    assert_eq!(
        ok(&o, "run after collection"),
        format!("ran {unique}\nhi\n")
    );
    assert!(env.exists(), "built again");
}

/// A nix-daemon of this test's own, on a socket of its own: the test may kill it (and
/// only it, never the machine's). Dropped: killed with every process it started.
struct OwnDaemon {
    daemon: std::process::Child,
    socket: std::path::PathBuf,
}

impl OwnDaemon {
    fn start(dir: &Path, name: &str) -> OwnDaemon {
        let socket = dir.join(name);
        let daemon = Command::new("nix-daemon")
            .env("NIX_DAEMON_SOCKET_PATH", &socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        while !socket.exists() {
            assert!(t.elapsed().as_secs() < 30, "nix-daemon did not listen");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        OwnDaemon { daemon, socket }
    }

    fn remote(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// SIGKILL to the daemon and all its descendants (its per-connection workers and
    /// their builders, which run in sessions of their own), found before any dies.
    fn kill(&mut self) {
        let mut tree = vec![self.daemon.id() as i32];
        let mut i = 0;
        while i < tree.len() {
            tree.extend(children_of(tree[i]));
            i += 1;
        }
        for pid in tree {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.daemon.wait();
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split(' ').nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// The daemon killed while it builds the project's environment (a derivation that
/// waits for the test): a clear error naming the daemon, exit 125, the command not
/// run, no GC root or cache entry of a half-built environment; with a daemon again,
/// the same run builds and runs.
#[test]
fn a_nix_daemon_killed_during_a_build_is_named_and_nothing_is_cached_half() {
    let dir = scratch("killeddaemon");
    let d = dir.path();
    // The builder runs as a build user: the directory is its to write.
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let unique = unique_name("slow");
    let decl = format!(
        "{{ pkgs, ... }}:\n{{\n  packages = [ pkgs.busybox (pkgs.runCommand \"{unique}\" {{}} \
         \"touch {d}/started; while [ ! -e {d}/go ]; do sleep 0.1; done; mkdir -p $out/bin\") ];\n}}\n",
        d = d.display()
    );
    let p = git_project("killeddaemon", &[("devenv.nix", &decl)]);
    let cache = scratch("killedcache");
    let run = |daemon: &OwnDaemon| {
        let mut c = nixcell(Mode::Root);
        env_vars(&mut c)
            .current_dir(p.path())
            .env("XDG_CACHE_HOME", cache.path())
            .env("NIX_REMOTE", daemon.remote())
            .args(["run", "--", "echo", "ran"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut daemon = OwnDaemon::start(d, "first.socket");
    let mut child = run(&daemon);
    let t = std::time::Instant::now();
    while !d.join("started").exists() {
        if child.try_wait().unwrap().is_some() {
            let o = child.wait_with_output().unwrap();
            panic!("ended before the build started: {}", text(&o.stderr));
        }
        assert!(t.elapsed().as_secs() < 300, "the build did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    daemon.kill();
    let o = child.wait_with_output().unwrap();
    let err = fails(&o, "daemon killed during the build");
    assert!(
        err.contains("ended the connection in the middle") && err.contains(&daemon.remote()),
        "{err}"
    );
    assert_eq!(text(&o.stdout), "", "nothing ran");
    // No environment recorded: the project's GC roots hold its package set alone, the
    // build cache nothing.
    let roots: Vec<String> = std::fs::read_dir(p.path().join(".nixcell/gcroots"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(roots.iter().all(|r| r.ends_with("-nixpkgs")), "{roots:?}");
    let builds = cache.path().join("nixcell/builds");
    let cached = std::fs::read_dir(&builds).map_or(0, |r| r.count());
    assert_eq!(cached, 0, "{}", builds.display());
    // A daemon again: the same run builds and runs. The first builder's marker goes
    // (the next build may run as another build user, who could not touch it).
    std::fs::remove_file(d.join("started")).unwrap();
    std::fs::write(d.join("go"), "").unwrap();
    let again = OwnDaemon::start(d, "second.socket");
    let o = run(&again).wait_with_output().unwrap();
    assert_eq!(ok(&o, "run with a daemon again"), "ran\n");
}

/// `sh -c script` as root in a private mount namespace (what it mounts stays there):
/// stdout, stderr.
fn in_private_mounts(script: &str) -> (String, String) {
    let o = Command::new("unshare")
        .env("XDG_CACHE_HOME", repo().join("target/test-cache/root"))
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .output()
        .unwrap();
    (text(&o.stdout).to_string(), text(&o.stderr).to_string())
}

/// The cgroup layer's report in a verdict.
fn cgroup_layer(v: &serde_json::Value) -> &serde_json::Value {
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "cgroup")
        .unwrap()
}

/// Runs `script` in a private mount namespace where the v1 hierarchy of `ctrl` is
/// unmounted (the machine's own stays): `NIXCELL` is nixcell, `BUSYBOX` busybox.
/// stdout, stderr.
fn without_controller(ctrl: &str, script: &str) -> (String, String) {
    let script = format!(
        "umount -l /sys/fs/cgroup/{ctrl} || exit 90; {}",
        script
            .replace("BUSYBOX", path_str(&busybox()))
            .replace("NIXCELL", bin())
    );
    in_private_mounts(&script)
}

/// A hierarchy without the controller a limit needs: a profile that requires the
/// cgroup layer refuses to run (exit 125, the controller named); best effort falls
/// back to rlimits and says the layer is not enforced. Never a limit left out while
/// the layer claims to be on.
#[test]
fn a_cgroup_hierarchy_missing_a_controller_is_named_and_fails_closed_where_required() {
    for ctrl in ["memory", "pids"] {
        let (out, err) = without_controller(
            ctrl,
            "NIXCELL run --profile strict --env-path BUSYBOX -- echo ran; echo rc=$?",
        );
        assert_eq!(out, "rc=125\n", "{ctrl}: {out}\n{err}");
        assert!(
            err.contains("cgroup layer is required")
                && err.contains(&format!("with the {ctrl} controller")),
            "{ctrl}: {err}"
        );
    }
    // Best effort: a pids limit on a machine without the pids hierarchy.
    let (out, err) = without_controller(
        "pids",
        "NIXCELL run --json --pids 32 --env-path BUSYBOX -- echo ran",
    );
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(v["exit_code"], 0, "{v}");
    let cgroup = cgroup_layer(&v);
    assert_eq!(cgroup["enforced"], false, "{v}");
    let detail = cgroup["detail"].as_str().unwrap();
    assert!(
        detail.contains("pids controller") && detail.contains("nproc=32"),
        "{cgroup}"
    );
}

/// A run whose workdir changes land (a file replaced, one added) with its state
/// directory on `mount` (a tmpfs in a private mount namespace, `prepare` run first,
/// `DIR` its directory): stdout (the command's status, then the workdir's files),
/// stderr.
fn run_with_state_on(mount: &str, prepare: &str) -> (String, String) {
    let dir = scratch("statefs");
    let d = dir.path().display().to_string();
    let script = format!(
        "mkdir {d}/state {d}/wd && echo orig > {d}/wd/g && \
         mount -t tmpfs -o {mount} tmpfs {d}/state && {prepare} \
         XDG_STATE_HOME={d}/state {bin} run --workdir {d}/wd --env-path {bb} \
         -- sh -c 'echo new > /work/g; echo added > /work/h'; echo rc=$?; \
         cat {d}/wd/g {d}/wd/h; find {d}/state -name '.tmp*' | sed 's/^/LEFT /'",
        prepare = prepare.replace("DIR", &format!("{d}/state")),
        bin = bin(),
        bb = path_str(&busybox()),
    );
    in_private_mounts(&script)
}

/// The state directory full or read-only: the command ran, so its own status; a file
/// it replaced keeps its previous version (there is nowhere to keep the old one for
/// `undo`), the refusal names the state directory, and nothing is half-written there.
#[test]
fn a_full_or_read_only_state_directory_keeps_the_users_files_and_is_named() {
    for (mount, prepare, reason) in [
        ("ro", "", "Read-only file system"),
        (
            "size=64k",
            "dd if=/dev/zero of=DIR/fill bs=4k count=100 2>/dev/null;",
            "No space left on device",
        ),
    ] {
        let (out, err) = run_with_state_on(mount, prepare);
        assert_eq!(out, "rc=0\norig\nadded\n", "{mount}: {out}\n{err}");
        assert!(
            err.contains("nixcell: workdir: g: cannot keep the previous version")
                && err.contains("/state/nixcell")
                && err.contains(reason),
            "{mount}: {err}"
        );
        assert!(
            err.contains("nixcell: workdir: the run journal could not be written"),
            "{mount}: {err}"
        );
    }
}
