//! The front-end end to end, with the real binary: declarations, builds and their cache,
//! context, whitelisted edits committed with git, proposals, and the seed's scenarios.
//! Everything builds offline from the fixture package set (`tests/fixtures/pkgs`).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn pkgs_dir() -> PathBuf {
    repo().join("tests/fixtures/pkgs")
}

/// A copy of `tests/fixtures/projects/NAME` in a fresh git repository with one commit;
/// `toml` replaces its nixcell.toml when given.
fn project(name: &str, toml: Option<&str>) -> tempfile::TempDir {
    let base = repo().join("target/test-work");
    std::fs::create_dir_all(&base).unwrap();
    let d = tempfile::Builder::new()
        .prefix("proj")
        .tempdir_in(&base)
        .unwrap();
    let src = repo().join("tests/fixtures/projects").join(name);
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
    }
    if let Some(t) = toml {
        std::fs::write(d.path().join("nixcell.toml"), t).unwrap();
    }
    git(d.path(), &["init", "-q"]);
    git(d.path(), &["add", "."]);
    git(d.path(), &["commit", "-q", "-m", "initial"]);
    d
}

/// `nixcell ARGS` in `dir`, as root, with the fixture package set as `<nixpkgs>`.
fn cell(dir: &Path, args: &[&str]) -> Output {
    cell_cmd(dir, args).output().expect("run nixcell")
}

fn cell_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = nixcell(Mode::Root);
    c.current_dir(dir)
        .env("NIX_PATH", format!("nixpkgs={}", pkgs_dir().display()))
        .args(args);
    c
}

/// Everything an edit could touch: the declaration, the configuration, HEAD, the
/// index and the work tree's status (nixcell's own git-ignored `.nixcell/` state, its
/// build cache and GC roots, aside).
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    declaration: String,
    config: String,
    head: String,
    index_sha256: String,
    status: String,
    files: Vec<String>,
}

fn snapshot(dir: &Path) -> Snapshot {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // The lock is written when the package set is first resolved, not by an edit.
        .filter(|n| n != ".nixcell" && n != "devenv.lock")
        .collect();
    files.sort();
    Snapshot {
        declaration: std::fs::read_to_string(dir.join("devenv.nix")).unwrap(),
        config: std::fs::read_to_string(dir.join("nixcell.toml")).unwrap_or_default(),
        head: git(dir, &["rev-parse", "HEAD"]),
        index_sha256: {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(
                std::fs::read(dir.join(".git/index")).unwrap(),
            ))
        },
        status: git_status(dir),
        files,
    }
}

fn commits(dir: &Path) -> Vec<String> {
    git(dir, &["log", "--format=%s"])
        .lines()
        .map(String::from)
        .collect()
}

fn json(o: &Output, what: &str) -> serde_json::Value {
    let out = ok(o, what);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {out}"))
}

#[test]
fn scenario_1_pandas_and_openpyxl_through_edits() {
    let p = project("analysis", None);
    let dir = p.path();
    // Without pandas the report fails inside the cell.
    let o = cell(dir, &["run", "--", "python3", "report.py"]);
    assert!(!o.status.success(), "pandas importable before the edit");
    assert!(text(&o.stderr).contains("pandas"), "{}", text(&o.stderr));

    for lib in ["pandas", "openpyxl"] {
        let o = cell(dir, &["edit", "add-python-library", lib, "--json"]);
        let v = json(&o, lib);
        assert_eq!(v["status"], "committed", "{v}");
        assert!(
            v["closure_diff"]["added"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p.as_str().unwrap().contains(lib))
        );
        assert!(
            v["closure_diff"]["size_delta_bytes"].as_i64().unwrap() > 0,
            "{v}"
        );
    }
    let log = commits(dir);
    assert_eq!(
        log,
        [
            "nixcell edit: add-python-library openpyxl",
            "nixcell edit: add-python-library pandas",
            "initial"
        ]
    );
    let decl = std::fs::read_to_string(dir.join("devenv.nix")).unwrap();
    assert!(
        decl.contains("pkgs.busybox # sh, ls, cat"),
        "comments kept:\n{decl}"
    );
    assert!(
        decl.contains("package = pkgs.python3.withPackages (ps: [ ps.pandas ps.openpyxl ]);"),
        "{decl}"
    );

    // The cell has no network: only loopback exists.
    let o = cell(dir, &["run", "--", "python3", "report.py"]);
    let out = ok(&o, "report.py");
    assert!(out.contains("report rows: 2 total: 200"), "{out}");
    let o = cell(
        dir,
        &[
            "run",
            "--",
            "python3",
            "-c",
            "import socket; s = socket.socket(); s.settimeout(3)\n\
             try:\n    s.connect(('1.1.1.1', 80)); print('connected')\n\
             except OSError as e: print('no network', e.errno)",
        ],
    );
    let out = ok(&o, "network probe");
    assert!(out.starts_with("no network"), "{out}");
    assert_eq!(git_status(dir), "");
}

#[test]
fn scenario_3_refused_edit_changes_nothing() {
    let p = project("analysis", None);
    let dir = p.path();
    let before = snapshot(dir);
    let o = cell(dir, &["edit", "add-package", "curl"]);
    let err = fails(&o, "refused edit");
    assert!(
        err.contains("curl") && err.contains("[policy] packages") && err.contains("jq, ripgrep"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(snapshot(dir), before);
}

#[test]
fn names_that_could_carry_code_are_refused_before_the_policy() {
    let p = project(
        "analysis",
        Some("[policy]\npackages = [\"*\"]\npython_libraries = [\"*\"]\n"),
    );
    let dir = p.path();
    let before = snapshot(dir);
    for (op, name) in [
        (
            "add-package",
            "jq ]; x = builtins.readFile /etc/shadow; y = [",
        ),
        ("add-package", "${builtins.currentTime}"),
        ("add-package", "/etc/passwd"),
        ("add-package", "https://example.org/evil.tar.gz"),
        ("add-package", "builtins.fetchurl"),
        ("add-python-library", "pandas\" ]; z = [ \""),
        ("enable-service", "mysql"),
    ] {
        let o = cell(dir, &["edit", op, name]);
        let err = fails(&o, name);
        assert!(err.contains("invalid"), "{name}: {err}");
    }
    assert_eq!(snapshot(dir), before);
}

#[test]
fn an_edit_that_does_not_build_changes_nothing() {
    let p = project("analysis", Some("[policy]\npackages = [\"*\"]\n"));
    let dir = p.path();
    let before = snapshot(dir);
    let o = cell(dir, &["edit", "add-package", "nosuchpackage"]);
    let err = fails(&o, "unbuildable edit");
    assert!(
        err.contains("does not build") && err.contains("nosuchpackage"),
        "{err}"
    );
    assert_eq!(snapshot(dir), before);
    // Removing what is not there is refused too.
    let o = cell(dir, &["edit", "remove-package", "jq"]);
    let err = fails(&o, "remove absent");
    assert!(err.contains("not in `packages`"), "{err}");
    assert_eq!(snapshot(dir), before);
}

#[test]
fn an_uncommitted_declaration_is_not_edited() {
    let p = project("analysis", None);
    let dir = p.path();
    let decl = dir.join("devenv.nix");
    let mut text = std::fs::read_to_string(&decl).unwrap();
    text.push_str("# local change\n");
    std::fs::write(&decl, &text).unwrap();
    let before = snapshot(dir);
    let o = cell(dir, &["edit", "add-package", "jq"]);
    let err = fails(&o, "dirty declaration");
    assert!(err.contains("uncommitted changes"), "{err}");
    assert_eq!(snapshot(dir), before);
}

#[test]
fn concurrent_edits_serialize_and_neither_is_lost() {
    let p = project("analysis", None);
    let dir = p.path();
    let children: Vec<_> = [
        ("add-python-library", "pandas"),
        ("add-package", "jq"),
        ("add-python-library", "numpy"),
    ]
    .iter()
    .map(|(op, name)| {
        cell_cmd(dir, &["edit", op, name])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    })
    .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        ok(&o, "concurrent edit");
    }
    let decl = std::fs::read_to_string(dir.join("devenv.nix")).unwrap();
    for want in ["ps.pandas", "ps.numpy", "pkgs.jq"] {
        assert!(decl.contains(want), "{want} lost:\n{decl}");
    }
    assert_eq!(commits(dir).len(), 4, "{:?}", commits(dir));
    assert_eq!(git_status(dir), "");
    let o = cell(
        dir,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "jq --version && python3 -c 'import numpy, pandas'",
        ],
    );
    ok(&o, "edited environment");
}

#[test]
fn proposals_wait_for_a_human() {
    let toml = "[policy]\npackages = [\"jq\", \"hello\"]\napproval = \"human\"\n";
    let p = project("analysis", Some(toml));
    let dir = p.path();
    let before = snapshot(dir);
    let v = json(
        &cell(dir, &["edit", "add-package", "jq", "--json"]),
        "propose jq",
    );
    assert_eq!(v["status"], "proposed", "{v}");
    let jq = v["proposal"].as_str().unwrap().to_string();
    assert!(v["diff"].as_str().unwrap().contains("+    pkgs.jq"), "{v}");
    let v = json(
        &cell(dir, &["edit", "add-package", "hello", "--json"]),
        "propose hello",
    );
    let hello = v["proposal"].as_str().unwrap().to_string();
    assert_eq!(snapshot(dir), before, "a proposal changes nothing");
    assert!(dir.join(format!(".nixcell/proposals/{jq}.json")).is_file());

    let list = json(&cell(dir, &["proposals", "--json"]), "proposals");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&jq.as_str()) && ids.contains(&hello.as_str()));

    let v = json(&cell(dir, &["approve", &jq, "--json"]), "approve");
    assert_eq!(v["status"], "committed", "{v}");
    ok(&cell(dir, &["reject", &hello]), "reject");
    assert_eq!(commits(dir)[0], "nixcell edit: add-package jq");
    let decl = std::fs::read_to_string(dir.join("devenv.nix")).unwrap();
    assert!(
        decl.contains("pkgs.jq") && !decl.contains("pkgs.hello"),
        "{decl}"
    );
    let list = json(&cell(dir, &["proposals", "--json"]), "proposals");
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    let err = fails(&cell(dir, &["approve", &hello]), "approve rejected");
    assert!(err.contains("already rejected"), "{err}");
    let err = fails(&cell(dir, &["approve", "../../etc"]), "bad id");
    assert!(err.contains("no proposal"), "{err}");
}

#[test]
fn context_describes_the_built_closure() {
    let p = project("analysis", None);
    let dir = p.path();
    ok(
        &cell(dir, &["edit", "add-python-library", "pandas"]),
        "edit",
    );
    let c = json(&cell(dir, &["context", "--format", "json"]), "context");
    assert_eq!(c["schema"], "nixcell.context/1");
    let env = c["env"].as_str().unwrap();
    assert!(env.starts_with("/nix/store/"), "{env}");
    let py = &c["python"];
    assert!(py["version"].as_str().unwrap().starts_with("3."), "{py}");
    let libs = py["libraries"].as_array().unwrap();
    let pandas = libs
        .iter()
        .find(|l| l["name"] == "pandas")
        .expect("pandas listed");
    assert!(
        pandas["version"].as_str().unwrap().contains('.'),
        "{pandas}"
    );
    // Dependencies are importable and listed; what is not in the closure is not.
    assert!(libs.iter().any(|l| l["name"] == "numpy"), "{py}");
    assert!(!libs.iter().any(|l| l["name"] == "openpyxl"), "{py}");
    let exes: Vec<&str> = c["executables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        exes.contains(&"python3") && exes.contains(&"sh"),
        "{exes:?}"
    );
    let busybox = c["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "busybox")
        .unwrap();
    assert_eq!(busybox["declared"], true);
    assert!(busybox["version"].is_string());
    assert_eq!(c["env_vars"]["REPORT_NAME"], "quarterly");
    assert_eq!(c["limits"]["timeout_secs"], 120);
    assert_eq!(c["limits"]["tmp_size_bytes"], 128 << 20);
    assert_eq!(c["network"]["policy"], "loopback-only");
    assert!(
        c["edits"]["commands"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "nixcell edit add-package NAME")
    );
    assert!(
        c["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "landlock")
    );

    let md = ok(&cell(dir, &["context"]), "markdown");
    assert_eq!(
        md,
        ok(&cell(dir, &["context"]), "markdown again"),
        "deterministic"
    );
    assert!(
        md.lines().any(|l| l
            .strip_prefix("- pandas ")
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())))
            && md.contains("Allowed Python libraries"),
        "{md}"
    );
    let short = ok(&cell(dir, &["context", "--max-tokens", "300"]), "short");
    assert!(short.len() <= 300 * 4, "{} bytes", short.len());
    assert!(
        short.contains("Within 300 tokens") && short.contains("## Asking for changes"),
        "{short}"
    );
}

#[test]
fn unsupported_options_are_named_not_ignored() {
    let p = project("invalid", None);
    let err = fails(&cell(p.path(), &["build"]), "unsupported option");
    assert!(
        err.contains("languages.rust") && err.contains("devenv.nix"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn unknown_config_keys_name_file_line_and_key() {
    let p = project(
        "analysis",
        Some("profile = \"default\"\n\n[policy]\npakages = [\"jq\"]\n"),
    );
    let err = fails(&cell(p.path(), &["build"]), "unknown key");
    assert!(
        err.contains("nixcell.toml:4:") && err.contains("pakages"),
        "{err}"
    );
    let err = fails(
        &cell(p.path(), &["run", "--", "true"]),
        "unknown key on run",
    );
    assert!(err.contains("pakages"), "{err}");
}

#[test]
fn build_failures_show_nix_messages() {
    let p = project("analysis", None);
    let dir = p.path();
    std::fs::write(
        dir.join("devenv.nix"),
        "{ pkgs, ... }: { packages = [ pkgs.busybox pkgs.doesNotExist ]; }\n",
    )
    .unwrap();
    let err = fails(&cell(dir, &["build"]), "missing attribute");
    assert!(err.contains("doesNotExist"), "{err}");
    std::fs::write(
        dir.join("devenv.nix"),
        "{ pkgs, ... }: { packages = [ pkgs.busybox ; }\n",
    )
    .unwrap();
    let err = fails(&cell(dir, &["build"]), "syntax error");
    assert!(err.contains("error:"), "{err}");
}

#[test]
fn cached_runs_do_not_call_nix_and_cold_builds_are_timed() {
    let p = project("analysis", None);
    let dir = p.path();
    // A declaration no earlier run built: a process script of its own makes the
    // environment a new derivation, so the first run evaluates and really builds.
    let nonce = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let decl = format!(
        "{{ pkgs, ... }}: {{ packages = [ pkgs.busybox ]; env.NONCE = \"{nonce}\"; processes.p{nonce}.exec = \"exec sleep 60\"; }}\n"
    );
    std::fs::write(dir.join("devenv.nix"), decl).unwrap();
    let t = Instant::now();
    let o = cell(dir, &["run", "--", "sh", "-c", "echo $NONCE"]);
    let cold_run = t.elapsed();
    assert_eq!(ok(&o, "cold run").trim(), nonce);

    let b = json(&cell(dir, &["build", "--json"]), "cached build");
    assert_eq!(b["cached"], true);
    let svc = &b["services"][0];
    assert_eq!(svc["ready"], "none");
    assert!(
        svc["command"][0]
            .as_str()
            .unwrap()
            .starts_with("/nix/store/"),
        "{svc}"
    );
    // The GC root keeps the environment.
    let root = b["root"].as_str().unwrap();
    assert_eq!(
        std::fs::canonicalize(root).unwrap().to_str().unwrap(),
        b["env"].as_str().unwrap()
    );

    // The same run again: nix is unreachable (empty PATH), and it works.
    let empty = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let o = cell_cmd(dir, &["run", "--", "sh", "-c", "echo $NONCE"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let cached_run = t.elapsed();
    assert_eq!(ok(&o, "cached run without nix").trim(), nonce);
    eprintln!(
        "timing: cold run (evaluate + build + closure query + run) {cold_run:?}, cached run {cached_run:?}"
    );
}

#[test]
fn with_builds_an_environment_of_named_packages() {
    let dir = workdir(Mode::Root);
    let o = cell(
        dir.path(),
        &[
            "run",
            "--with",
            "busybox",
            "--with",
            "jq",
            "--",
            "sh",
            "-c",
            "echo '{\"a\":1}' | jq .a",
        ],
    );
    assert_eq!(ok(&o, "--with").trim(), "1");
    let err = fails(
        &cell(dir.path(), &["run", "--with", "jq;rm", "--", "true"]),
        "bad --with",
    );
    assert!(err.contains("--with"), "{err}");
    let err = fails(
        &cell(dir.path(), &["run", "--with", "noSuchThing", "--", "true"]),
        "missing --with",
    );
    assert!(err.contains("noSuchThing"), "{err}");
}

#[test]
fn scenario_2_redis_service() {
    let p = project("analysis", None);
    let dir = p.path();
    let v = json(
        &cell(dir, &["edit", "enable-service", "redis", "--json"]),
        "enable redis",
    );
    assert_eq!(v["status"], "committed", "{v}");
    assert_eq!(commits(dir)[0], "nixcell edit: enable-service redis");
    let o = cell(dir, &["run", "--", "python3", "redis_check.py"]);
    assert!(ok(&o, "redis_check.py").contains("redis ok"));
}

#[test]
fn a_flake_output_is_an_environment() {
    let dir = flake_dir(
        "      devShells.x86_64-linux.default = pkgs.mkShell { packages = [ pkgs.busybox pkgs.jq ]; };",
    );
    // The fixture package set reads the host's package versions: impure evaluation.
    let o = cell(
        dir.path(),
        &[
            "run",
            "--env",
            ".#devShells.x86_64-linux.default",
            "--impure",
            "--",
            "jq",
            "--version",
        ],
    );
    assert!(ok(&o, "flake env").starts_with("jq-"));
    let err = fails(
        &cell(
            dir.path(),
            &[
                "run",
                "--env",
                ".#devShells.x86_64-linux.nope",
                "--impure",
                "--",
                "true",
            ],
        ),
        "missing flake output",
    );
    assert!(
        err.contains("--env .#devShells.x86_64-linux.nope") && err.contains("nope"),
        "{err}"
    );
}

#[test]
fn declared_processes_run_beside_the_command() {
    let p = project("analysis", None);
    let dir = p.path();
    std::fs::write(
        dir.join("devenv.nix"),
        "{ pkgs, ... }: {\n  packages = [ pkgs.busybox ];\n  processes.ticker.exec = \"echo $GREETING > /tmp/ticker.txt; sleep 30\";\n  env.GREETING = \"from the process\";\n}\n",
    )
    .unwrap();
    let b = json(&cell(dir, &["build", "--json"]), "build");
    assert_eq!(b["services"][0]["name"], "ticker");
    assert_eq!(b["services"][0]["port"], serde_json::Value::Null);
    let o = cell(
        dir,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "for i in $(seq 100); do [ -s /tmp/ticker.txt ] && exec cat /tmp/ticker.txt; sleep 0.1; done; exit 1",
        ],
    );
    assert_eq!(ok(&o, "process output").trim(), "from the process");
}

#[test]
fn a_package_is_not_a_declaration() {
    let p = project("analysis", None);
    std::fs::write(
        p.path().join("devenv.nix"),
        "{ pkgs, ... }: pkgs.mkShell { }\n",
    )
    .unwrap();
    let err = fails(&cell(p.path(), &["build"]), "package as declaration");
    assert!(err.contains("evaluates to a package"), "{err}");
}

#[test]
fn a_project_built_once_runs_rootless_from_the_cache() {
    let toml = format!(
        "nixpkgs = \"{}\"\n[limits]\ntmp_size = \"64M\"\n",
        pkgs_dir().display()
    );
    let p = project("analysis", Some(&toml));
    let dir = p.path();
    // Root builds (single-user Nix); the unprivileged owner of the project runs.
    ok(&cell(dir, &["build"]), "build as root");
    chown_to_test_user(dir);
    let mut c = nixcell(Mode::Rootless);
    c.current_dir(dir).args([
        "run",
        "--",
        "sh",
        "-c",
        "echo $REPORT_NAME; python3 -c 'import sys; print(sys.version_info[0])'; df -k /tmp | tail -1",
    ]);
    let out = ok(&c.output().unwrap(), "rootless project run");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["quarterly", "3"], "{out}");
    assert!(lines[2].contains("65536"), "the project's tmp_size: {out}");
}

#[test]
fn scenario_1_rootless_edits_build_through_the_daemon() {
    let toml = format!(
        "nixpkgs = \"{}\"\n[policy]\npython_libraries = [\"pandas\", \"openpyxl\"]\n",
        pkgs_dir().display()
    );
    let p = project("analysis", Some(&toml));
    let dir = p.path();
    git(dir, &["config", "user.name", "agent"]);
    git(dir, &["config", "user.email", "agent@example.org"]);
    chown_to_test_user(dir);
    // The project's owner, unprivileged, edits (each edit built through nix-daemon and
    // committed) and runs the report in a rootless cell.
    let as_user = |args: &[&str]| {
        let mut c = nixcell(Mode::Rootless);
        c.current_dir(dir).args(args);
        c.output().unwrap()
    };
    for lib in ["pandas", "openpyxl"] {
        let v = json(
            &as_user(&["edit", "add-python-library", lib, "--json"]),
            lib,
        );
        assert_eq!(v["status"], "committed", "{v}");
    }
    let out = ok(
        &as_user(&["run", "--", "python3", "report.py"]),
        "report.py",
    );
    assert!(out.contains("report rows: 2 total: 200"), "{out}");
    let log = as_test_user()
        .args(["git", "-C"])
        .arg(dir)
        .args(["log", "--format=%s"])
        .output()
        .unwrap();
    assert_eq!(
        text(&log.stdout).lines().collect::<Vec<_>>(),
        [
            "nixcell edit: add-python-library openpyxl",
            "nixcell edit: add-python-library pandas",
            "initial"
        ]
    );
}

/// A project's nixcell.toml may only tighten its profile. Without `max_output` the strict
/// profile keeps its 256K per stream (it used to become the project default of 1M); a
/// `timeout` longer than strict's two minutes is cut to them; an explicit flag (the
/// operator) still decides.
#[test]
fn a_project_only_tightens_its_profile() {
    let toml =
        "profile = \"strict\"\n[limits]\ntimeout = \"1h\"\n[policy]\npackages = [\"hello\"]\n";
    let p = project("analysis", Some(toml));
    let dir = p.path();
    let loud = ["sh", "-c", "yes | head -c 400000"];
    let run = |flags: &[&str]| {
        let mut args = vec!["run", "--json"];
        args.extend(flags);
        args.push("--");
        args.extend(loud);
        json(&cell(dir, &args), "run")
    };
    let v = run(&[]);
    assert_eq!(v["profile"], "strict", "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["stdout"]["bytes"], 400000, "{v}");
    assert_eq!(v["stdout"]["truncated"], true, "{v}");
    assert_eq!(v["stdout"]["text"].as_str().unwrap().len(), 256 << 10);
    let v = run(&["--max-output", "1M"]);
    assert_eq!(v["stdout"]["truncated"], false, "{v}");
    let c = json(&cell(dir, &["context", "--format", "json"]), "context");
    assert_eq!(c["limits"]["timeout_secs"], 120, "{c}");
    assert_eq!(c["limits"]["max_output_bytes"], 256 << 10, "{c}");
}
