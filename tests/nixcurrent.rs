//! nixcell and the user's Nix: it never changes the user's Nix settings, it reaches the
//! store through the daemon where uid 0 is not the host's root, and it checks what the
//! kernel can do before any Nix work. (scripts/nix-current.sh runs the front-end and
//! runner suites under current Nix as well.)

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn pkgs_dir() -> PathBuf {
    repo().join("tests/fixtures/pkgs")
}

/// A fresh project of the mode's user, in a git repository, whose declaration no
/// earlier run built (a nonce in a process script makes it a new derivation).
fn fresh_project(mode: Mode) -> (tempfile::TempDir, String) {
    let d = workdir(Mode::Root);
    let nonce = format!(
        "{:x}{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        std::process::id()
    );
    std::fs::write(
        d.path().join("devenv.nix"),
        format!(
            "{{ pkgs, ... }}: {{ packages = [ pkgs.busybox ]; env.NONCE = \"{nonce}\"; processes.p{nonce}.exec = \"exec sleep 60\"; }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.path().join("nixcell.toml"),
        format!("nixpkgs = \"{}\"\n", pkgs_dir().display()),
    )
    .unwrap();
    git(d.path(), &["init", "-q"]);
    git(d.path(), &["add", "."]);
    git(d.path(), &["commit", "-q", "-m", "initial"]);
    if mode == Mode::Rootless {
        let (u, g) = test_user_ids();
        let o = Command::new("chown")
            .arg("-R")
            .arg(format!("{u}:{g}"))
            .arg(d.path())
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    (d, nonce)
}

#[test]
fn uid_0_in_a_user_namespace_builds_through_the_daemon() {
    // nixcell inside a rootless container or a CI runner's user namespace: uid 0 there
    // is not the host's root, and nix must not open the store as if it were.
    for mode in MODES {
        let (p, _nonce) = fresh_project(mode);
        let mut c = match mode {
            Mode::Root => {
                let mut c = Command::new("unshare");
                c.env("XDG_CACHE_HOME", repo().join("target/test-cache/root"))
                    .env("NIXCELL_EVAL_PATHS", fixture_eval_paths())
                    .env_remove("NIX_REMOTE");
                c
            }
            Mode::Rootless => {
                let mut c = as_test_user();
                c.arg("unshare");
                c
            }
        };
        c.current_dir(p.path())
            .args(["-U", "--map-root-user", "--"])
            .arg(bin())
            .args(["build", "--json"]);
        let o = c.output().unwrap();
        let out = ok(&o, &format!("{mode:?}: build as uid 0 of a user namespace"));
        let b: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(b["cached"], false, "{mode:?}: a real build: {out}");
        let env = b["env"].as_str().unwrap();
        assert!(
            Path::new(env).join("bin/sh").exists(),
            "{mode:?}: built {env}"
        );
    }
}

#[test]
fn kernel_support_is_checked_before_any_nix_work() {
    // No user namespaces (a namespace whose own limit of nested ones is 0) and no Nix
    // on PATH: the run fails on what the kernel cannot do, not on a build.
    let o = Command::new("unshare")
        .args(["-U", "--map-root-user", "sh", "-c"])
        .arg(format!(
            "echo 0 > /proc/sys/user/max_user_namespaces && PATH=/nonexistent NIX_PATH=nixpkgs={} exec {} run --with jq -- true",
            pkgs_dir().display(),
            bin()
        ))
        .output()
        .unwrap();
    let err = fails(&o, "without user namespaces");
    assert!(
        err.contains("stage 'unshare'") && err.contains("max_user_namespaces=0"),
        "{err}"
    );
    assert!(!err.contains("nix-build"), "no Nix was run: {err}");
    // The verdict names the stage, as when the stage itself fails.
    let o = Command::new("unshare")
        .args(["-U", "--map-root-user", "sh", "-c"])
        .arg(format!(
            "echo 0 > /proc/sys/user/max_user_namespaces && PATH=/nonexistent exec {} run --json --env-path {} -- true",
            bin(),
            busybox().display()
        ))
        .output()
        .unwrap();
    let v = verdict(&o);
    assert_eq!(v["exit_code"], 125, "{v}");
    assert_eq!(v["error"]["kind"], "setup", "{v}");
    assert_eq!(v["error"]["stage"], "unshare", "{v}");
    assert_eq!(v["error"]["syscall"], "unshare", "{v}");
}

/// A directory of stand-ins for the Nix tools that record their environment's
/// `NIX_CONFIG` (on one line, each newline as `|`) and their arguments in `log`, then
/// fail.
fn recording_nix(dir: &Path, log: &Path) {
    for tool in ["nix", "nix-build", "nix-instantiate", "nix-store"] {
        let f = dir.join(tool);
        std::fs::write(
            &f,
            format!(
                "#!/bin/sh\n{{ echo \"tool {tool}\"; echo \"NIX_CONFIG=$(printf %s \"${{NIX_CONFIG-<unset>}}\" | tr '\\n' '|')\"; printf 'arg %s\\n' \"$@\"; }} >> {}\nexit 1\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn nixcell_never_sets_the_users_nix_settings() {
    let tools = tempfile::tempdir().unwrap();
    let log = tools.path().join("calls.log");
    recording_nix(tools.path(), &log);
    let (p, _) = fresh_project(Mode::Root);
    let path = format!("{}:/usr/bin:/bin", tools.path().display());
    for (args, caller_config) in [
        (vec!["run", "--with", "jq", "--", "true"], None),
        (vec!["build"], None),
        (vec!["build"], Some("cores = 1")),
    ] {
        let mut c = nixcell(Mode::Root);
        c.current_dir(p.path()).env("PATH", &path).args(&args);
        match caller_config {
            Some(v) => c.env("NIX_CONFIG", v),
            None => c.env_remove("NIX_CONFIG"),
        };
        fails(
            &c.output().unwrap(),
            &format!("{args:?} with failing nix tools"),
        );
    }
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains("tool nix"),
        "no nix tool was called:\n{calls}"
    );
    // The caller's NIX_CONFIG passes with its lines unchanged (flake commands add the
    // features their command line enables, so that current Nix applies the caller's
    // flake settings); unset, it stays unset.
    for line in calls.lines().filter(|l| l.starts_with("NIX_CONFIG=")) {
        assert!(
            line == "NIX_CONFIG=<unset>"
                || line == "NIX_CONFIG=cores = 1"
                || line == "NIX_CONFIG=cores = 1|extra-experimental-features = nix-command flakes|",
            "nixcell changed NIX_CONFIG: {line}\n{calls}"
        );
    }
    assert!(calls.contains("NIX_CONFIG=cores = 1"), "{calls}");
    // No setting of the user's nix.conf is overridden on the command line.
    for setting in ["substituters", "sandbox", "trusted-public-keys", "builders"] {
        assert!(
            !calls.lines().any(|l| l.contains(setting)),
            "nixcell passed {setting}: {calls}"
        );
    }
}

#[test]
fn build_progress_goes_to_stderr_and_json_stays_clean() {
    for mode in MODES {
        let (p, nonce) = fresh_project(mode);
        let o = nixcell(mode)
            .current_dir(p.path())
            .args(["run", "--json", "--", "sh", "-c", "echo $NONCE"])
            .output()
            .unwrap();
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["stdout"]["text"].as_str().unwrap().trim(), nonce);
        // A cold build: nix's own progress lines, on stderr only.
        let err = text(&o.stderr);
        assert!(
            err.lines()
                .any(|l| l.starts_with("building '/nix/store/") && l.contains("-nixcell-env.drv'")),
            "{mode:?}: {err}"
        );
    }
}

#[test]
fn a_flake_in_a_dirty_git_tree_runs_and_warnings_stay_on_stderr() {
    // Current Nix warns about uncommitted changes ("Git tree ... is dirty") on stderr;
    // the `--json` verdict on stdout is all there is there.
    let dir = flake_dir(
        "      devShells.x86_64-linux.default = pkgs.mkShell { packages = [ pkgs.busybox pkgs.jq ]; };",
    );
    std::fs::write(dir.path().join("notes.txt"), "one\n").unwrap();
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "initial"]);
    std::fs::write(dir.path().join("notes.txt"), "two\n").unwrap();
    let o = nixcell(Mode::Root)
        .current_dir(dir.path())
        .args([
            "run",
            "--json",
            "--env",
            ".#devShells.x86_64-linux.default",
            "--impure",
            "--",
            "jq",
            "--version",
        ])
        .output()
        .unwrap();
    let v = verdict(&o);
    assert_eq!(v["exit_code"], 0, "{v}\n{}", text(&o.stderr));
    assert!(
        v["stdout"]["text"].as_str().unwrap().starts_with("jq-"),
        "{v}"
    );
}
