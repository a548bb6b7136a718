//! The command line's conventions, with the real binary: help (golden files under
//! tests/golden/, rewritten with `UPDATE_GOLDEN=1`), `--version`, completions and the
//! man page, `--json` errors in the verdict's shape, `run` without `--`, listings that
//! say when they are empty, help text on every flag, and the pruning of run logs.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run_nixcell(args: &[&str]) -> Output {
    nixcell(Mode::Root)
        .args(args)
        .output()
        .expect("run nixcell")
}

/// Compares `actual` with tests/golden/NAME (or writes it with UPDATE_GOLDEN=1).
fn golden(name: &str, actual: &str) {
    let path = repo().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        actual, want,
        "{name} changed; if on purpose, rerun with UPDATE_GOLDEN=1"
    );
}

#[test]
fn help_matches_the_golden_files() {
    golden("help.txt", &ok(&run_nixcell(&["--help"]), "--help"));
    golden(
        "help-run.txt",
        &ok(&run_nixcell(&["run", "--help"]), "run --help"),
    );
    // The short form is the same text (clap prints the long help for both here).
    let short = ok(&run_nixcell(&["help", "run"]), "help run");
    assert!(short.contains("[COMMAND]..."), "{short}");
}

#[test]
fn version_names_the_crate_version() {
    let out = ok(&run_nixcell(&["--version"]), "--version");
    assert_eq!(out, format!("nixcell {}\n", env!("CARGO_PKG_VERSION")));
}

/// Every argument of every command (options and positionals) has help text, and every
/// command says what it does.
#[test]
fn every_flag_has_help() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        if cmd.get_about().is_none() && !path.is_empty() {
            missing.push(format!("command `{path}`"));
        }
        for a in cmd.get_arguments() {
            if a.get_help().is_none() && !a.is_hide_set() {
                missing.push(format!("`{path}` argument `{}`", a.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name()).trim().to_string();
            walk(sub, &p, missing);
        }
    }
    let mut cmd = nixcell::cli::command();
    cmd.build();
    let mut missing = Vec::new();
    walk(&cmd, "", &mut missing);
    assert!(missing.is_empty(), "no help text: {missing:#?}");
}

#[test]
fn completions_are_valid_shell_scripts() {
    for (shell, check) in [
        ("bash", ["bash", "-n"]),
        ("zsh", ["zsh", "-n"]),
        ("fish", ["fish", "--no-execute"]),
    ] {
        let script = ok(&run_nixcell(&["completions", shell]), shell);
        assert!(script.contains("run"), "{shell}: {script}");
        assert!(script.contains("env-path"), "{shell}: no run options");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &script).unwrap();
        let o = Command::new(check[0])
            .arg(check[1])
            .arg(f.path())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh installs it)", check[0]));
        ok(&o, &format!("{shell} parses its completion script"));
    }
    let o = run_nixcell(&["completions", "tcsh"]);
    fails(&o, "an unknown shell");
}

#[test]
fn man_pages_are_generated_from_the_definitions() {
    let page = ok(&run_nixcell(&["man"]), "man");
    assert!(
        page.starts_with(".ie") || page.contains(".TH nixcell 1"),
        "{page}"
    );
    assert!(page.contains("completions"), "{page}");
    let d = tempfile::tempdir().unwrap();
    ok(
        &run_nixcell(&["man", "--dir", d.path().to_str().unwrap()]),
        "man --dir",
    );
    let run = std::fs::read_to_string(d.path().join("nixcell-run.1")).unwrap();
    assert!(run.contains("env\\-path"), "{run}");
    // groff renders it without a warning.
    let o = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(d.path().join("nixcell-run.1"))
        .output()
        .expect("groff");
    assert!(o.stderr.is_empty(), "groff: {}", text(&o.stderr));
}

/// A refused run's JSON is a whole verdict (it parses as the verdict type) with
/// `error` set, for bad flags clap rejects and for bad values nixcell rejects.
#[test]
fn json_errors_are_verdicts() {
    let bb = busybox();
    let bb = path_str(&bb);
    let cases: [(&[&str], &str); 4] = [
        (
            &["run", "--json", "--memory", "lots", "--", "true"],
            "--memory",
        ),
        (
            &["run", "--json", "--no-such-flag", "--", "true"],
            "--no-such-flag",
        ),
        (
            &["run", "--json", "--env-path", "/nonexistent", "--", "true"],
            "--env-path",
        ),
        (
            &[
                "run",
                "--json",
                "--env-path",
                bb,
                "--setenv",
                "A B",
                "--",
                "true",
            ],
            "--setenv",
        ),
    ];
    for (args, flag) in cases {
        let o = run_nixcell(args);
        fails(&o, &format!("{args:?}"));
        let v: nixcell::verdict::Verdict = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not a verdict ({e}): {}", text(&o.stdout)));
        assert_eq!(v.exit_code, 125);
        let e = v.error.expect("error set");
        assert_eq!(e.kind, "usage", "{args:?}");
        assert_eq!(e.location.as_deref(), Some(flag), "{args:?}: {}", e.message);
        assert!(v.closure.is_none() && v.identity.is_none());
        // The same object on the wire has the field names a parser expects.
        let raw = verdict(&o);
        assert_eq!(raw["error"]["where"], flag);
        assert_eq!(raw["hints"], serde_json::json!([]));
    }
    // Other commands print the same error object.
    let empty = tempfile::tempdir().unwrap();
    let o = nixcell(Mode::Root)
        .current_dir(empty.path())
        .args(["context", "--json"])
        .output()
        .unwrap();
    fails(&o, "context outside a project");
    let raw = verdict(&o);
    assert_eq!(raw["exit_code"], 125);
    assert_eq!(raw["error"]["kind"], "environment");
    assert!(
        raw["error"]["message"]
            .as_str()
            .unwrap()
            .contains("devenv.nix")
    );
    serde_json::from_value::<nixcell::verdict::VerdictError>(raw["error"].clone()).unwrap();
    // `undo` with nothing to undo: its own exit status, the same error object.
    let state = tempfile::tempdir().unwrap();
    let o = nixcell(Mode::Root)
        .current_dir(empty.path())
        .env("XDG_STATE_HOME", state.path())
        .args(["undo", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let raw = verdict(&o);
    assert_eq!(raw["exit_code"], 1);
    assert_eq!(raw["error"]["kind"], "usage", "{raw}");
}

/// A copy of tests/fixtures/projects/NAME in a fresh git repository.
fn fixture_project(name: &str) -> tempfile::TempDir {
    let d = workdir(Mode::Root);
    for e in std::fs::read_dir(repo().join("tests/fixtures/projects").join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
    }
    git(d.path(), &["init", "-q"]);
    git(d.path(), &["add", "."]);
    git(d.path(), &["commit", "-q", "-m", "initial"]);
    d
}

fn in_project(dir: &Path, args: &[&str]) -> Output {
    nixcell(Mode::Root)
        .current_dir(dir)
        .env(
            "NIX_PATH",
            format!("nixpkgs={}", repo().join("tests/fixtures/pkgs").display()),
        )
        .args(args)
        .output()
        .expect("run nixcell")
}

#[test]
fn a_declaration_error_has_kind_declaration() {
    let p = fixture_project("invalid");
    let o = in_project(p.path(), &["run", "--json", "--", "true"]);
    fails(&o, "invalid declaration");
    let v: nixcell::verdict::Verdict = serde_json::from_slice(&o.stdout).unwrap();
    let e = v.error.unwrap();
    assert_eq!(e.kind, "declaration", "{}", e.message);
    assert!(e.message.contains("languages.rust"), "{}", e.message);
    assert_eq!(e.location.as_deref(), Some("devenv.nix"));
    // `build --json` reports the same error object.
    let o = in_project(p.path(), &["build", "--json"]);
    fails(&o, "build of an invalid declaration");
    assert_eq!(verdict(&o)["error"]["kind"], "declaration");
}

#[test]
fn run_takes_the_command_without_double_dash() {
    let bb = busybox();
    let bb = path_str(&bb);
    // Options first; the first other word starts the command, whose own options
    // (even ones nixcell has, like --json) are its own.
    let o = run_nixcell(&[
        "run",
        "--env-path",
        bb,
        "--json",
        "sh",
        "-c",
        "echo \"$@\"",
        "x",
        "--json",
        "-y",
    ]);
    let v = verdict(&o);
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["stdout"]["text"], "--json -y\n");
    // `--` still works, and is how a command starting with a dash is given.
    let o = run_nixcell(&["run", "--env-path", bb, "--", "echo", "--json"]);
    assert_eq!(ok(&o, "run --"), "--json\n");
    // No command at all is a usage error naming the form.
    let err = fails(&run_nixcell(&["run", "--env-path", bb]), "no command");
    assert!(err.contains("[--] COMMAND"), "{err}");
}

#[test]
fn empty_listings_say_so() {
    let p = fixture_project("analysis");
    let out = ok(&in_project(p.path(), &["proposals"]), "proposals");
    assert!(out.starts_with("no pending proposals"), "{out:?}");
    let out = ok(
        &in_project(p.path(), &["proposals", "--all"]),
        "proposals --all",
    );
    assert_eq!(out, "no proposals\n");
    let js = ok(&in_project(p.path(), &["proposals", "--json"]), "json");
    assert_eq!(js.trim(), "[]");
    let state = tempfile::tempdir().unwrap();
    let o = nixcell(Mode::Root)
        .env("XDG_STATE_HOME", state.path())
        .arg("runs")
        .output()
        .unwrap();
    assert!(ok(&o, "runs").starts_with("no runs"), "{}", text(&o.stdout));
}

#[test]
fn context_json_has_one_spelling_and_keeps_the_old_one() {
    let p = fixture_project("analysis");
    let new = ok(&in_project(p.path(), &["context", "--json"]), "--json");
    let old = ok(
        &in_project(p.path(), &["context", "--format", "json"]),
        "--format json",
    );
    let new: serde_json::Value = serde_json::from_str(&new).unwrap();
    assert_eq!(
        new,
        serde_json::from_str::<serde_json::Value>(&old).unwrap()
    );
    assert!(new.is_object());
    let help = ok(&in_project(p.path(), &["context", "--help"]), "help");
    assert!(
        help.contains("--json") && !help.contains("--format"),
        "{help}"
    );
}

/// A state directory (XDG_STATE_HOME) for `mode`'s user, with an empty logs directory.
fn state_with_logs(mode: Mode) -> (tempfile::TempDir, PathBuf) {
    let state = workdir(mode);
    let logs = state.path().join("nixcell/logs");
    std::fs::create_dir_all(&logs).unwrap();
    give(mode, &state.path().join("nixcell"));
    give(mode, &logs);
    (state, logs)
}

/// Makes `path` (not following a link) the mode's user's.
fn give(mode: Mode, path: &Path) {
    if mode == Mode::Rootless {
        let (u, g) = test_user_ids();
        std::os::unix::fs::lchown(path, Some(u), Some(g)).unwrap();
    }
}

fn run_with_service(mode: Mode, state: &Path, env: &[(&str, &str)]) -> Output {
    let bb = busybox();
    let mut c = match mode {
        Mode::Root => {
            let mut c = nixcell(mode);
            c.env("XDG_STATE_HOME", state).envs(env.iter().copied());
            c
        }
        Mode::Rootless => {
            // setpriv resets the environment: the variables go on env's command line.
            let mut c = as_test_user();
            c.arg(format!("XDG_STATE_HOME={}", state.display()));
            c.args(env.iter().map(|(k, v)| format!("{k}={v}")));
            c.arg(bin());
            c
        }
    };
    c.args(["run", "--env-path", path_str(&bb), "--json"])
        .args(["--service", "idle=sleep 30", "--", "true"]);
    c.output().expect("run nixcell")
}

/// Old run log directories are pruned to the count given; a symbolic link planted in
/// the logs directory under a run's name is neither followed nor removed, nor is a
/// run directory of another user.
#[test]
fn run_logs_are_pruned_and_a_planted_link_is_not_followed() {
    for mode in MODES {
        let (state, logs) = state_with_logs(mode);
        let victim = state.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious.log"), b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, logs.join("1-1")).unwrap();
        give(mode, &logs.join("1-1"));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let mut want = vec!["1-1".to_string()];
        for i in 0..5u128 {
            let name = format!("{}-7", now_ms - 1000 - i);
            let d = logs.join(&name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("redis.log"), b"old").unwrap();
            if i < 2 {
                want.push(name.clone());
            }
            if i < 4 {
                give(mode, &d.join("redis.log"));
                give(mode, &d);
            } else if mode == Mode::Rootless {
                // Root's, in the user's logs directory: not the user's to remove.
                want.push(name);
            }
        }
        let o = run_with_service(mode, state.path(), &[("NIXCELL_LOG_KEEP", "2")]);
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        let log = PathBuf::from(v["services"][0]["log"].as_str().unwrap());
        assert!(log.starts_with(&logs), "{}", log.display());
        let mut left: Vec<String> = std::fs::read_dir(&logs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        want.push(
            log.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
        want.sort();
        assert_eq!(left, want, "{mode:?}");
        assert_eq!(std::fs::read(victim.join("precious.log")).unwrap(), b"keep");
        // The run's own log directory is private.
        use std::os::unix::fs::PermissionsExt;
        let mode_bits = std::fs::metadata(log.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode_bits & 0o777, 0o700, "{mode:?}");
    }
}

#[test]
fn a_bad_log_retention_is_refused_naming_it() {
    let (state, _logs) = state_with_logs(Mode::Root);
    let o = run_with_service(
        Mode::Root,
        state.path(),
        &[("NIXCELL_LOG_MAX_AGE", "forever")],
    );
    fails(&o, "bad NIXCELL_LOG_MAX_AGE");
    let v = verdict(&o);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("NIXCELL_LOG_MAX_AGE"), "{msg}");
}
