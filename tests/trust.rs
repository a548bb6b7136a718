//! Host code facing hostile project content: a repository, a declaration, a project's
//! `.nixcell/` and nixcell's caches are written by an attacker here, and nixcell must
//! neither run, read, follow nor trust what they say.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pkgs_dir() -> PathBuf {
    repo().join("tests/fixtures/pkgs")
}

fn scratch(prefix: &str) -> tempfile::TempDir {
    let base = repo().join("target/test-work");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .unwrap()
}

/// A copy of `tests/fixtures/projects/analysis` in a fresh git repository, one commit.
fn project() -> tempfile::TempDir {
    let d = scratch("trust");
    let src = repo().join("tests/fixtures/projects/analysis");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
    }
    git(d.path(), &["init", "-q"]);
    git(d.path(), &["add", "."]);
    git(d.path(), &["commit", "-q", "-m", "initial"]);
    d
}

/// `nixcell ARGS` in `dir` as root, with the fixture package set as `<nixpkgs>`.
fn cell_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = nixcell(Mode::Root);
    c.current_dir(dir)
        .env("NIX_PATH", format!("nixpkgs={}", pkgs_dir().display()))
        .args(args);
    c
}

fn cell(dir: &Path, args: &[&str]) -> Output {
    cell_cmd(dir, args).output().expect("run nixcell")
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const HOOKS: &[&str] = &[
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "reference-transaction",
    "post-index-change",
    "pre-auto-gc",
];

#[test]
fn nixcell_git_runs_nothing_the_repository_or_the_callers_git_variables_name() {
    let p = project();
    let dir = p.path();
    let markers = scratch("markers");
    let m = markers.path();
    // Attributes that name a filter and a diff driver, committed before the drivers exist.
    std::fs::write(
        dir.join(".gitattributes"),
        "*.nix filter=evil diff=evil\n*.toml filter=evil\n",
    )
    .unwrap();
    git(dir, &["add", ".gitattributes"]);
    git(dir, &["commit", "-q", "-m", "attributes"]);
    for h in HOOKS {
        write_script(
            &dir.join(".git/hooks").join(h),
            &format!("touch {}/hook-{h}", m.display()),
        );
    }
    let tools = scratch("tools");
    let t = tools.path();
    write_script(
        &t.join("fsmonitor"),
        &format!("touch {}/fsmonitor\nexit 1", m.display()),
    );
    write_script(
        &t.join("clean"),
        &format!("touch {}/filter-clean\ncat", m.display()),
    );
    write_script(
        &t.join("smudge"),
        &format!("touch {}/filter-smudge\ncat", m.display()),
    );
    write_script(
        &t.join("textconv"),
        &format!("touch {}/textconv\ncat \"$1\"", m.display()),
    );
    write_script(
        &t.join("gpg"),
        &format!("touch {}/gpg\nexit 1", m.display()),
    );
    let cfg = |k: &str, v: &Path| git(dir, &["config", k, &v.to_string_lossy()]);
    cfg("core.fsmonitor", &t.join("fsmonitor"));
    cfg("filter.evil.clean", &t.join("clean"));
    cfg("filter.evil.smudge", &t.join("smudge"));
    cfg("diff.evil.textconv", &t.join("textconv"));
    cfg("gpg.program", &t.join("gpg"));
    git(dir, &["config", "commit.gpgSign", "true"]);
    git(dir, &["config", "filter.evil.required", "true"]);

    // The caller's environment points git at a decoy repository and adds settings.
    let decoy = scratch("decoy");
    git(decoy.path(), &["init", "-q"]);
    git(
        decoy.path(),
        &["commit", "-q", "--allow-empty", "-m", "decoy"],
    );
    let decoy_head = git(decoy.path(), &["rev-parse", "HEAD"]);
    let hook_dir = scratch("hookdir");
    for h in HOOKS {
        write_script(
            &hook_dir.path().join(h),
            &format!("touch {}/env-hook-{h}", m.display()),
        );
    }
    let hostile = |c: &mut Command| {
        c.env("GIT_DIR", decoy.path().join(".git"))
            .env("GIT_WORK_TREE", decoy.path())
            .env("GIT_INDEX_FILE", decoy.path().join(".git/index"))
            .env(
                "GIT_CONFIG_PARAMETERS",
                format!("'core.hookspath'='{}'", hook_dir.path().display()),
            )
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "core.fsmonitor")
            .env("GIT_CONFIG_VALUE_0", t.join("fsmonitor"))
            .env("GIT_EXEC_PATH", t);
    };

    // 1: hooks in .git/hooks, fsmonitor, filters, textconv, gpg signing.
    let mut c = cell_cmd(dir, &["edit", "add-package", "jq"]);
    hostile(&mut c);
    let o = c.output().unwrap();
    assert_eq!(listing(m), Vec::<String>::new(), "{}", text(&o.stderr));
    ok(&o, "edit in a hostile repository");
    // 2: the same with core.hooksPath in the repository's config.
    let path_hooks = scratch("pathhooks");
    for h in HOOKS {
        write_script(
            &path_hooks.path().join(h),
            &format!("touch {}/hookspath-{h}", m.display()),
        );
    }
    cfg("core.hooksPath", path_hooks.path());
    let mut c = cell_cmd(dir, &["edit", "add-package", "hello"]);
    hostile(&mut c);
    let o = c.output().unwrap();
    assert_eq!(listing(m), Vec::<String>::new(), "{}", text(&o.stderr));
    ok(&o, "edit with core.hooksPath");

    // Both commits landed in the project's repository, the decoy is untouched (the
    // hostile configuration removed first: the checks below use git themselves).
    for h in HOOKS {
        std::fs::remove_file(dir.join(".git/hooks").join(h)).unwrap();
    }
    for k in [
        "core.fsmonitor",
        "core.hooksPath",
        "filter.evil.clean",
        "filter.evil.smudge",
        "filter.evil.required",
        "diff.evil.textconv",
        "commit.gpgSign",
    ] {
        git(dir, &["config", "--unset", k]);
    }
    let log = git(dir, &["log", "--format=%s"]);
    assert!(
        log.starts_with("nixcell edit: add-package hello\nnixcell edit: add-package jq\n"),
        "{log}"
    );
    let committed = git(dir, &["show", "HEAD:devenv.nix"]);
    assert!(
        committed.contains("pkgs.jq") && committed.contains("pkgs.hello"),
        "{committed}"
    );
    assert_eq!(git_status(dir), "");
    assert_eq!(git(decoy.path(), &["rev-parse", "HEAD"]), decoy_head);
    assert_eq!(listing(m), Vec::<String>::new());
}

/// `nixcell` in `mode` with its cache under `cache` (which the mode's user owns).
fn with_cache(mode: Mode, cache: &Path) -> Command {
    match mode {
        Mode::Root => {
            let mut c = nixcell(Mode::Root);
            c.env("XDG_CACHE_HOME", cache);
            c
        }
        Mode::Rootless => {
            let mut c = as_test_user();
            c.arg("env")
                .arg(format!("XDG_CACHE_HOME={}", cache.display()))
                .arg(bin());
            c
        }
    }
}

fn owned_dir(mode: Mode, prefix: &str) -> tempfile::TempDir {
    let d = scratch(prefix);
    if mode == Mode::Rootless {
        let (u, g) = test_user_ids();
        nix::unistd::chown(d.path(), Some(u.into()), Some(g.into())).unwrap();
    }
    d
}

/// Rewrites every closure cache entry under `cache` as a cell that could write it
/// would: `extra` store entries added, the list sorted and its hash recomputed, any
/// line before the JSON kept.
fn poison_closures(cache: &Path, extra: &[(&str, serde_json::Value)]) -> usize {
    use sha2::Digest;
    let dir = cache.join("nixcell/closures");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let start = bytes.iter().position(|&b| b == b'{').unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&bytes[start..]).unwrap();
        let paths = v["paths"].as_array_mut().unwrap();
        for (p, kind) in extra {
            paths.push(serde_json::json!({ "path": p, "kind": kind }));
        }
        paths.sort_by_key(|e| e["path"].as_str().unwrap().to_string());
        let mut h = sha2::Sha256::new();
        for e in paths.iter() {
            h.update(e["path"].as_str().unwrap().as_bytes());
            h.update(b"\n");
        }
        v["hash"] = hex::encode(h.finalize()).into();
        let mut out = bytes[..start].to_vec();
        out.extend_from_slice(&serde_json::to_vec(&v).unwrap());
        std::fs::write(&path, out).unwrap();
        n += 1;
    }
    n
}

const SHOW_ROOT: &str =
    "ls /nix/store; echo ---; ls /nix; echo ---; ls /var >/dev/null 2>&1 || echo no-var";

#[test]
fn a_poisoned_closure_cache_is_not_trusted() {
    let bb = busybox();
    let outside = build_env("jq", "pkgs.jq");
    for mode in MODES {
        let cache = owned_dir(mode, "cache");
        let run = || {
            let o = with_cache(mode, cache.path())
                .arg("run")
                .arg("--env-path")
                .arg(&bb)
                .args(["--", "sh", "-c", SHOW_ROOT])
                .output()
                .unwrap();
            ok(&o, &format!("{mode:?} run"))
        };
        let clean = run();
        assert!(clean.ends_with("---\nstore\n---\nno-var\n"), "{clean}");
        assert!(!clean.contains("-jq-"), "{clean}");
        // A path that climbs out of the store, and a real store path outside the closure.
        let n = poison_closures(
            cache.path(),
            &[
                ("/nix/store/../var", "dir".into()),
                ("/nix/store/../../var", "dir".into()),
                (outside.to_str().unwrap(), "dir".into()),
            ],
        );
        assert_eq!(n, 1, "{mode:?}: one cache entry");
        assert_eq!(run(), clean, "{mode:?}: the poisoned entry was used");
        // The entry was recomputed: a third run sees the same.
        assert_eq!(run(), clean, "{mode:?}");
    }
}

/// A project directory (no repository) with this `devenv.nix`.
fn declared(decl: &str) -> tempfile::TempDir {
    let d = scratch("decl");
    std::fs::write(d.path().join("devenv.nix"), decl).unwrap();
    d
}

#[test]
fn declarations_cannot_read_outside_the_project_and_the_package_set() {
    let outside = scratch("secret");
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "s3cr3t-value").unwrap();
    git(outside.path(), &["init", "-q"]);
    git(outside.path(), &["add", "secret"]);
    git(outside.path(), &["commit", "-q", "-m", "secret"]);
    let other = outside.path().join("other.nix");
    std::fs::write(&other, "{ env.FROM_OUTSIDE = \"s3cr3t-import\"; }").unwrap();
    for (what, decl) in [
        (
            "readFile",
            format!(
                "{{ pkgs, ... }}: {{ packages = [ pkgs.busybox ]; env.LEAK = builtins.readFile \"{}\"; }}",
                secret.display()
            ),
        ),
        (
            "path literal",
            format!(
                "{{ pkgs, ... }}: {{ packages = [ pkgs.busybox ]; env.LEAK = builtins.readFile {}; }}",
                secret.display()
            ),
        ),
        ("import", format!("import {}", other.display())),
        (
            "fetchGit of a local repository",
            format!(
                "{{ pkgs, ... }}: {{ packages = [ pkgs.busybox ]; env.LEAK = builtins.readFile ((builtins.fetchGit {}) + \"/secret\"); }}",
                outside.path().display()
            ),
        ),
        (
            "a link in the project",
            "{ pkgs, ... }: { packages = [ pkgs.busybox ]; env.LEAK = builtins.readFile ./link; }"
                .into(),
        ),
        (
            "a path climbing out of the project",
            format!(
                "{{ pkgs, ... }}: {{ packages = [ pkgs.busybox ]; env.LEAK = builtins.readFile (./. + \"/../{}/secret\"); }}",
                outside.path().file_name().unwrap().to_string_lossy()
            ),
        ),
    ] {
        let p = declared(&decl);
        std::os::unix::fs::symlink(&secret, p.path().join("link")).unwrap();
        let o = cell(p.path(), &["run", "--", "sh", "-c", "echo RAN; echo $LEAK"]);
        let err = fails(&o, what);
        assert!(!text(&o.stdout).contains("RAN"), "{what}: the command ran");
        assert!(
            !text(&o.stdout).contains("s3cr3t") && !err.contains("s3cr3t"),
            "{what}: {err}"
        );
        assert!(
            err.contains("forbidden in restricted mode"),
            "{what}: {err}"
        );
        assert!(err.contains("devenv.nix"), "{what}: {err}");
    }
}

#[test]
fn declarations_see_no_host_environment_variable() {
    let p = declared(
        "{ pkgs, ... }: { packages = [ pkgs.busybox ]; env.GOT = builtins.getEnv \"NIXCELL_TEST_SECRET\"; }",
    );
    let o = cell_cmd(p.path(), &["run", "--", "sh", "-c", "echo \"[$GOT]\""])
        .env("NIXCELL_TEST_SECRET", "s3cr3t-env")
        .output()
        .unwrap();
    assert_eq!(ok(&o, "getEnv").trim(), "[]");
}

/// Every file under `dir` with its content (links shown as `-> target`).
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if m.file_type().is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                ));
            } else if m.is_dir() {
                stack.push(p);
            } else {
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn links_planted_in_the_state_directory_are_not_followed() {
    for mode in MODES {
        links_planted_in_the_state_directory(mode);
    }
}

/// `nixcell ARGS` in the project `dir` as the mode's user (rootless: the project names
/// the fixture package set in its nixcell.toml).
fn in_project(mode: Mode, dir: &Path, args: &[&str]) -> Output {
    match mode {
        Mode::Root => cell(dir, args),
        Mode::Rootless => {
            let mut c = nixcell(Mode::Rootless);
            c.current_dir(dir).args(args);
            c.output().unwrap()
        }
    }
}

fn links_planted_in_the_state_directory(mode: Mode) {
    let p = project();
    let dir = p.path();
    let host = scratch("host");
    let h = host.path();
    std::fs::create_dir(h.join("roots")).unwrap();
    std::fs::write(h.join("roots/keep"), "host file in a directory").unwrap();
    for i in 0..6 {
        std::os::unix::fs::symlink("/nonexistent", h.join(format!("roots/link{i}"))).unwrap();
    }
    std::fs::create_dir(h.join("proposals")).unwrap();
    std::fs::write(h.join("gitignore"), "host gitignore").unwrap();
    std::fs::write(h.join("candidate"), "host candidate").unwrap();
    let state = dir.join(".nixcell");
    std::fs::create_dir(&state).unwrap();
    let link = |target: &str, at: &Path| std::os::unix::fs::symlink(h.join(target), at).unwrap();
    link("roots", &state.join("gcroots"));
    link("proposals", &state.join("proposals"));
    link("gitignore", &state.join(".gitignore"));
    link("lock", &state.join("lock"));
    link("candidate", &dir.join(".devenv.nix.nixcell-candidate.nix"));
    if mode == Mode::Rootless {
        let toml = std::fs::read_to_string(dir.join("nixcell.toml")).unwrap();
        std::fs::write(
            dir.join("nixcell.toml"),
            format!("nixpkgs = \"{}\"\n{toml}", pkgs_dir().display()),
        )
        .unwrap();
        git(dir, &["commit", "-q", "-am", "package set"]);
        git(dir, &["config", "user.name", "agent"]);
        git(dir, &["config", "user.email", "agent@example.org"]);
        let (u, g) = test_user_ids();
        for d in [dir, h] {
            let out = Command::new("chown")
                .args(["-R", "-h", &format!("{u}:{g}")])
                .arg(d)
                .output()
                .unwrap();
            assert!(out.status.success());
        }
    }
    let before = tree(h);

    let runs = [
        in_project(mode, dir, &["build"]),
        in_project(mode, dir, &["edit", "add-package", "jq"]),
        in_project(mode, dir, &["edit", "--propose", "add-package", "hello"]),
    ];
    assert_eq!(
        tree(h),
        before,
        "{mode:?}: a host file outside the project changed"
    );
    for o in &runs {
        ok(o, &format!("{mode:?}: build, edit and proposal"));
    }
    // The links were replaced by nixcell's own files and directories.
    for (name, dir_wanted) in [
        ("gcroots", true),
        ("proposals", true),
        (".gitignore", false),
    ] {
        let m = std::fs::symlink_metadata(state.join(name)).unwrap();
        assert!(
            !m.file_type().is_symlink(),
            "{mode:?}: {name} is still a link"
        );
        assert_eq!(m.is_dir(), dir_wanted, "{mode:?}: {name}");
    }
    assert_eq!(
        std::fs::read_to_string(state.join(".gitignore")).unwrap(),
        "*\n"
    );
    assert!(!dir.join(".devenv.nix.nixcell-candidate.nix").exists());
    assert_eq!(
        std::fs::read_dir(state.join("proposals")).unwrap().count(),
        1
    );
}

#[test]
fn a_state_directory_that_is_a_link_or_someone_elses_is_refused() {
    let p = project();
    let dir = p.path();
    let host = scratch("host");
    std::os::unix::fs::symlink(host.path(), dir.join(".nixcell")).unwrap();
    let err = fails(&cell(dir, &["build"]), "linked .nixcell");
    assert!(
        err.contains(&format!("{}/.nixcell", dir.display())) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 0);
    std::fs::remove_file(dir.join(".nixcell")).unwrap();
    std::fs::create_dir(dir.join(".nixcell")).unwrap();
    let (u, g) = test_user_ids();
    nix::unistd::chown(&dir.join(".nixcell"), Some(u.into()), Some(g.into())).unwrap();
    let err = fails(&cell(dir, &["build"]), "someone else's .nixcell");
    assert!(
        err.contains(".nixcell") && err.contains(&format!("owned by uid {u}")),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.join(".nixcell")).unwrap().count(), 0);
}

/// Rewrites every build cache entry (JSON, any line before it kept) under `dirs`.
fn poison_builds(dirs: &[PathBuf], change: impl Fn(&mut serde_json::Value)) -> usize {
    let mut n = 0;
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let start = bytes.iter().position(|&b| b == b'{').unwrap();
            let mut v: serde_json::Value = serde_json::from_slice(&bytes[start..]).unwrap();
            change(&mut v);
            let mut out = bytes[..start].to_vec();
            out.extend_from_slice(&serde_json::to_vec(&v).unwrap());
            std::fs::write(&path, out).unwrap();
            n += 1;
        }
    }
    n
}

#[test]
fn the_build_cache_is_keyed_by_imported_files_and_not_trusted_when_rewritten() {
    let cache = owned_dir(Mode::Root, "cache");
    let p = declared(
        "{ pkgs, ... }: let extra = import ./extra.nix; in { packages = [ pkgs.busybox ]; env.FROM = extra.value; }",
    );
    let dir = p.path();
    let run = || {
        let o = cell_cmd(dir, &["run", "--", "sh", "-c", "echo \"$FROM [$POISON]\""])
            .env("XDG_CACHE_HOME", cache.path())
            .output()
            .unwrap();
        ok(&o, "run").trim().to_string()
    };
    std::fs::write(dir.join("extra.nix"), "{ value = \"one\"; }").unwrap();
    assert_eq!(run(), "one []");
    // An imported file changed: the cached build is not that declaration's any more.
    std::fs::write(dir.join("extra.nix"), "{ value = \"second\"; }").unwrap();
    assert_eq!(run(), "second []");
    // A rewritten entry (as something that could write the cache would) is not used.
    let n = poison_builds(
        &[
            dir.join(".nixcell/builds"),
            cache.path().join("nixcell/builds"),
        ],
        |v| v["description"]["env"]["POISON"] = "yes".into(),
    );
    assert!(n >= 1, "no build cache entry found");
    assert_eq!(run(), "second []");
}

#[test]
fn a_project_cannot_choose_a_host_directory_as_its_package_set() {
    let outside = scratch("pkgset");
    std::fs::write(
        outside.path().join("default.nix"),
        format!("import {}", pkgs_dir().display()),
    )
    .unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "s3cr3t-value").unwrap();
    let p = declared(&format!(
        "{{ pkgs, ... }}: {{ packages = [ pkgs.busybox ]; env.LEAK = builtins.readFile {}; }}",
        secret.display()
    ));
    std::fs::write(
        p.path().join("nixcell.toml"),
        format!("nixpkgs = \"{}\"\n", outside.path().display()),
    )
    .unwrap();
    let o = cell(p.path(), &["run", "--", "sh", "-c", "echo RAN $LEAK"]);
    let err = fails(&o, "package set outside");
    assert!(!text(&o.stdout).contains("RAN"), "{}", text(&o.stdout));
    assert!(
        err.contains("nixcell.toml") && err.contains("nixpkgs") && !err.contains("s3cr3t"),
        "{err}"
    );
}
