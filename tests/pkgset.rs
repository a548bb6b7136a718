//! Package sets as users name them (a path, a flake reference, a registry name, NIX_PATH,
//! devenv.yaml), the lock that pins them (devenv.lock), and flake dev shells made with
//! a nixpkgs-like `mkShell`. Everything is offline: the package sets are copies of the
//! fixture (`tests/fixtures/pkgs`).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    repo().join("tests/fixtures/pkgs")
}

/// A copy of the fixture package set at `dst` whose `hello` prints `greeting`.
fn package_set(dst: &Path, greeting: &str) {
    let out = Command::new("cp")
        .arg("-r")
        .arg(fixture())
        .arg(dst)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let f = dst.join("default.nix");
    let s = std::fs::read_to_string(&f).unwrap();
    assert!(s.contains("Hello, world!"));
    std::fs::write(&f, s.replace("Hello, world!", greeting)).unwrap();
}

/// A project (busybox and hello) in a fresh git repository; `toml` is its nixcell.toml.
fn project(toml: Option<&str>) -> tempfile::TempDir {
    let d = scratch("pkgset");
    std::fs::write(
        d.path().join("devenv.nix"),
        "{ pkgs, ... }: { packages = [ pkgs.busybox pkgs.hello ]; }\n",
    )
    .unwrap();
    if let Some(t) = toml {
        std::fs::write(d.path().join("nixcell.toml"), t).unwrap();
    }
    git(d.path(), &["init", "-q"]);
    git(d.path(), &["add", "."]);
    git(d.path(), &["commit", "-q", "-m", "initial"]);
    d
}

/// `nixcell ARGS` in `dir` as root, with no NIX_PATH unless `nix_path`, and the
/// caller's allowed paths plus `allowed`.
fn cell(dir: &Path, nix_path: Option<&Path>, allowed: &[&Path], args: &[&str]) -> Output {
    cmd(dir, nix_path, allowed, args).output().unwrap()
}

fn cmd(dir: &Path, nix_path: Option<&Path>, allowed: &[&Path], args: &[&str]) -> Command {
    let mut c = nixcell(Mode::Root);
    c.current_dir(dir).env_remove("NIX_PATH").args(args);
    if let Some(p) = nix_path {
        c.env("NIX_PATH", format!("nixpkgs={}", p.display()));
    }
    let mut eval = fixture_eval_paths();
    for a in allowed {
        eval.push(':');
        eval.push_str(&a.to_string_lossy());
    }
    c.env("NIXCELL_EVAL_PATHS", eval);
    c
}

fn hello(dir: &Path, nix_path: Option<&Path>, allowed: &[&Path]) -> String {
    ok(
        &cell(dir, nix_path, allowed, &["run", "--", "hello"]),
        "hello",
    )
    .trim()
    .to_string()
}

fn lock(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("devenv.lock")).expect("devenv.lock")).unwrap()
}

fn nixpkgs_node(dir: &Path) -> serde_json::Value {
    let l = lock(dir);
    let name = l["nodes"]["root"]["inputs"]["nixpkgs"].as_str().unwrap();
    l["nodes"][name].clone()
}

/// The locked attributes nix gives `reference` (this also puts it into the store).
fn nix_locked(reference: &str) -> serde_json::Value {
    let out = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command flakes",
            "flake",
            "metadata",
            "--json",
            reference,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["locked"].clone()
}

#[test]
fn a_path_in_the_project_is_pinned_until_the_lock_is_updated() {
    let p = project(Some("nixpkgs = \"path:./pkgs\"\n"));
    let dir = p.path();
    package_set(&dir.join("pkgs"), "Hello from the pin!");
    assert_eq!(hello(dir, None, &[]), "Hello from the pin!");
    let node = nixpkgs_node(dir);
    assert_eq!(node["original"]["type"], "path");
    assert_eq!(node["locked"]["type"], "path");
    assert!(
        node["locked"]["narHash"]
            .as_str()
            .unwrap()
            .starts_with("sha256-"),
        "{node}"
    );
    let l = lock(dir);
    assert_eq!(l["version"], 7);
    assert_eq!(l["root"], "root");

    // The tree changes: the lock still pins what it pinned.
    let f = dir.join("pkgs/default.nix");
    let s = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, s.replace("Hello from the pin!", "Hello, moved!")).unwrap();
    assert_eq!(hello(dir, None, &[]), "Hello from the pin!");
    // Only the explicit command moves it; the next run uses the new pin.
    let v: serde_json::Value = serde_json::from_str(&ok(
        &cell(dir, None, &[], &["lock", "--update", "--json"]),
        "lock --update",
    ))
    .unwrap();
    assert_ne!(v["nar_hash"], node["locked"]["narHash"]);
    assert_eq!(v["nar_hash"], nixpkgs_node(dir)["locked"]["narHash"]);
    assert_eq!(hello(dir, None, &[]), "Hello, moved!");
    // The context names the pin.
    let ctx = ok(&cell(dir, None, &[], &["context"]), "context");
    assert!(
        ctx.contains(&v["nar_hash"].as_str().unwrap()[..19]) && ctx.contains("devenv.lock"),
        "{ctx}"
    );
}

#[test]
fn a_lock_edited_by_hand_is_used_and_a_bad_one_refused_naming_it() {
    let p = project(Some("nixpkgs = \"path:./pkgs\"\n"));
    let dir = p.path();
    package_set(&dir.join("pkgs"), "Hello from A!");
    let other = scratch("setb");
    package_set(&other.path().join("b"), "Hello from B!");
    assert_eq!(hello(dir, None, &[]), "Hello from A!");
    let lock_file = dir.join("devenv.lock");
    let good = std::fs::read_to_string(&lock_file).unwrap();

    // Pinned by hand to another content (already in the store): the cached build is
    // not used, the new pin is.
    let b = nix_locked(&format!("path:{}", other.path().join("b").display()));
    let edited = good.replace(
        nixpkgs_node(dir)["locked"]["narHash"].as_str().unwrap(),
        b["narHash"].as_str().unwrap(),
    );
    assert_ne!(edited, good);
    std::fs::write(&lock_file, &edited).unwrap();
    assert_eq!(hello(dir, None, &[]), "Hello from B!");

    let name = lock_file.to_string_lossy().into_owned();
    let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
    // A content nowhere: nix checks the hash and nothing runs.
    let mut tampered = doc.clone();
    tampered["nodes"]["nixpkgs"]["locked"]["narHash"] =
        "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
    // Another directory than the one the project names.
    let mut elsewhere = doc.clone();
    elsewhere["nodes"]["nixpkgs"]["locked"]["path"] = "/root".into();
    // Another input than the one named.
    let mut other_input = doc.clone();
    other_input["nodes"]["nixpkgs"]["original"]["path"] = "/etc".into();
    doc["nodes"]["nixpkgs"]["locked"]["narHash"] = "sha256-short".into();
    for (what, content, says) in [
        ("tampered", tampered.to_string(), "hash mismatch"),
        (
            "another directory",
            elsewhere.to_string(),
            "not the named one",
        ),
        (
            "another input",
            other_input.to_string(),
            "nixcell lock --update",
        ),
        ("bad hash", doc.to_string(), "narHash"),
        ("malformed", "{ \"nodes\": ".to_string(), "not JSON"),
        ("no version", "{}".to_string(), "flake.lock-format"),
    ] {
        std::fs::write(&lock_file, &content).unwrap();
        let out = cell(dir, None, &[], &["run", "--", "sh", "-c", "echo ran"]);
        let err = fails(&out, what);
        assert!(!text(&out.stdout).contains("ran"), "{what}");
        assert!(err.contains(&name) && err.contains(says), "{what}: {err}");
        assert_eq!(
            std::fs::read_to_string(&lock_file).unwrap(),
            content,
            "{what}: a bad lock is never rewritten"
        );
    }
    // A lock that is a symbolic link is not followed.
    std::fs::remove_file(&lock_file).unwrap();
    let target = other.path().join("lock.json");
    std::fs::write(&target, &good).unwrap();
    std::os::unix::fs::symlink(&target, &lock_file).unwrap();
    let err = fails(&cell(dir, None, &[], &["run", "--", "true"]), "linked lock");
    assert!(err.contains(&name), "{err}");
}

#[test]
fn a_project_may_not_name_a_host_directory_as_its_package_set() {
    let outside = scratch("outside");
    let nonce = format!(
        "Hello, outside {}!",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    package_set(&outside.path().join("p"), &nonce);
    let p_dir = std::fs::canonicalize(outside.path().join("p")).unwrap();
    // A lock naming it, with a hash nix would have to fetch for.
    let lock = serde_json::json!({
        "nodes": {
            "nixpkgs": {
                "locked": { "type": "path", "path": p_dir,
                            "narHash": "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" },
                "original": { "type": "path", "path": p_dir },
            },
            "root": { "inputs": { "nixpkgs": "nixpkgs" } },
        },
        "root": "root",
        "version": 7,
    });
    for (file, content) in [
        (
            "nixcell.toml",
            format!(
                "nixpkgs = \"path:{}\"\n",
                outside.path().join("p").display()
            ),
        ),
        (
            "devenv.yaml",
            format!(
                "inputs:\n  nixpkgs:\n    url: git+file://{}\n",
                outside.path().join("p").display()
            ),
        ),
        ("devenv.lock", lock.to_string()),
    ] {
        let p = project(None);
        std::fs::write(p.path().join(file), &content).unwrap();
        let err = fails(
            &cell(p.path(), None, &[], &["run", "--", "true"]),
            "outside",
        );
        assert!(
            err.contains(file) && err.contains("outside the project"),
            "{file}: {err}"
        );
        if file != "devenv.lock" {
            assert!(!p.path().join("devenv.lock").exists());
        }
    }
    // Nothing of it was copied into the (world-readable) store.
    let nix = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let p_str = p_dir.to_string_lossy();
    let hash = nix(&[
        "nix",
        "--extra-experimental-features",
        "nix-command",
        "hash",
        "path",
        &p_str,
    ]);
    let copy = nix(&[
        "nix-store",
        "--print-fixed-path",
        "--recursive",
        "sha256",
        &hash,
        "source",
    ]);
    assert!(
        std::fs::symlink_metadata(&copy).is_err(),
        "{copy} is in the store"
    );
}

#[test]
fn nix_path_names_the_package_set_and_the_lock_pins_it() {
    let sets = scratch("nixpath");
    let set = sets.path().join("pkgs");
    package_set(&set, "Hello, NIX_PATH!");
    let p = project(None);
    let dir = p.path();
    assert_eq!(hello(dir, Some(&set), &[]), "Hello, NIX_PATH!");
    let node = nixpkgs_node(dir);
    assert_eq!(
        node["original"]["path"].as_str(),
        Some(std::fs::canonicalize(&set).unwrap().to_str().unwrap())
    );
    // The lock names the package set now: another NIX_PATH, or none, does not move it.
    let other = sets.path().join("other");
    package_set(&other, "Hello, other!");
    assert_eq!(hello(dir, Some(&other), &[]), "Hello, NIX_PATH!");
    assert_eq!(hello(dir, None, &[]), "Hello, NIX_PATH!");
    // `<nixpkgs>` in nixcell.toml names NIX_PATH's explicitly: another one is not
    // silently used, it is pinned on request.
    std::fs::write(dir.join("nixcell.toml"), "nixpkgs = \"<nixpkgs>\"\n").unwrap();
    assert_eq!(hello(dir, Some(&set), &[]), "Hello, NIX_PATH!");
    let err = fails(
        &cell(dir, Some(&other), &[], &["run", "--", "hello"]),
        "another NIX_PATH",
    );
    assert!(
        err.contains("devenv.lock") && err.contains("nixcell lock --update"),
        "{err}"
    );
    ok(
        &cell(dir, Some(&other), &[], &["lock", "--update"]),
        "lock --update",
    );
    assert_eq!(hello(dir, Some(&other), &[]), "Hello, other!");
}

#[test]
fn a_flake_reference_to_a_local_flake_is_locked_at_its_revision() {
    let p = project(None);
    let dir = p.path();
    let repo_dir = dir.join("nixpkgs");
    package_set(&repo_dir, "Hello, git!");
    git(&repo_dir, &["init", "-q"]);
    git(&repo_dir, &["add", "."]);
    git(&repo_dir, &["commit", "-q", "-m", "set"]);
    let rev = git(&repo_dir, &["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(
        dir.join("nixcell.toml"),
        format!("nixpkgs = \"git+file:{}\"\n", repo_dir.display()),
    )
    .unwrap();
    assert_eq!(hello(dir, None, &[]), "Hello, git!");
    let node = nixpkgs_node(dir);
    assert_eq!(node["locked"]["type"], "git");
    assert_eq!(node["locked"]["rev"].as_str(), Some(rev.as_str()), "{node}");
}

#[test]
fn devenv_yaml_names_the_package_set() {
    let p = project(None);
    let dir = p.path();
    package_set(&dir.join("pkgs"), "Hello, devenv!");
    std::fs::write(
        dir.join("devenv.yaml"),
        "# as devenv init writes it, with a local input\ninputs:\n  nixpkgs:\n    url: path:./pkgs\nallowUnfree: false\n",
    )
    .unwrap();
    assert_eq!(hello(dir, None, &[]), "Hello, devenv!");
    assert_eq!(nixpkgs_node(dir)["original"]["type"], "path");
    // nixcell.toml naming another set than devenv.yaml would mean another environment
    // for devenv: refused, naming both.
    std::fs::write(
        dir.join("nixcell.toml"),
        "nixpkgs = \"github:NixOS/nixpkgs/nixos-24.11\"\n",
    )
    .unwrap();
    let err = fails(&cell(dir, None, &[], &["run", "--", "true"]), "conflict");
    assert!(
        err.contains("nixcell.toml") && err.contains("devenv.yaml"),
        "{err}"
    );
    std::fs::remove_file(dir.join("nixcell.toml")).unwrap();
    // What would make devenv use another package set than nixcell is refused.
    for (yaml, says) in [
        ("inputs: [unclosed\n", "devenv.yaml:"),
        (
            "inputs:\n  nixpkgs:\n    url: path:./pkgs\n    overlays: [ default ]\n",
            "devenv.yaml:4: inputs.nixpkgs.overlays",
        ),
        (
            "inputs:\n  nixpkgs:\n    url: path:./pkgs\nallowUnfree: true\n",
            "devenv.yaml:4: `allowUnfree`",
        ),
        ("imports:\n  - ./other\n", "devenv.yaml:1: `imports`"),
        ("flavour: 1\n", "unsupported key `flavour`"),
    ] {
        std::fs::write(dir.join("devenv.yaml"), yaml).unwrap();
        let err = fails(&cell(dir, None, &[], &["run", "--", "true"]), yaml);
        assert!(err.contains(says), "{yaml}: {err}");
    }
}

#[test]
fn a_registry_name_is_resolved_by_the_callers_registry() {
    let sets = scratch("registry");
    let set = sets.path().join("pkgs");
    package_set(&set, "Hello, registry!");
    let registry = serde_json::json!({
        "version": 2,
        "flakes": [{
            "from": { "type": "indirect", "id": "fixturepkgs" },
            "to": { "type": "path", "path": set },
        }],
    });
    let file = sets.path().join("registry.json");
    std::fs::write(&file, registry.to_string()).unwrap();
    let p = project(Some("nixpkgs = \"fixturepkgs\"\n"));
    let dir = p.path();
    let out = cmd(dir, None, &[], &["run", "--", "hello"])
        // The caller's registry (the test machine is offline: none to download).
        .env(
            "NIX_CONFIG",
            format!("substituters =\nflake-registry = {}\n", file.display()),
        )
        .output()
        .unwrap();
    assert_eq!(ok(&out, "registry name").trim(), "Hello, registry!");
    let node = nixpkgs_node(dir);
    assert_eq!(node["original"]["type"], "indirect");
    assert_eq!(node["original"]["id"], "fixturepkgs");
    assert_eq!(node["locked"]["type"], "path");
    // Outside a project, NIX_PATH may name it the way NixOS does (`flake:…`).
    let wd = scratch("with");
    let out = cmd(
        wd.path(),
        None,
        &[],
        &["run", "--with", "hello", "--", "hello"],
    )
    .env("NIX_PATH", "nixpkgs=flake:fixturepkgs")
    .env(
        "NIX_CONFIG",
        format!("substituters =\nflake-registry = {}\n", file.display()),
    )
    .output()
    .unwrap();
    assert_eq!(ok(&out, "--with from flake:").trim(), "Hello, registry!");
}

#[test]
fn a_dev_shell_of_a_nixpkgs_like_mkshell_runs_with_its_variables() {
    let dir = flake_dir(
        r#"      devShells.x86_64-linux.default = pkgs.mkShell {
        packages = [ pkgs.busybox pkgs.jq ];
        GREETING = "hello from the shell";
      };
      devShells.x86_64-linux.bare = pkgs.mkShell { packages = [ pkgs.jq ]; };"#,
    );
    // Like nixpkgs' mkShell, the shell itself does not build.
    let out = Command::new("nix")
        .current_dir(dir.path())
        .args([
            "--extra-experimental-features",
            "nix-command flakes",
            "build",
            "--impure",
            "--no-link",
            ".#devShells.x86_64-linux.default",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the shell built");
    let shell = |name: &str, script: &str| {
        let env = format!(".#devShells.x86_64-linux.{name}");
        let args = [
            "run", "--env", &env, "--impure", "--setenv", "EXTRA=1", "--", "bash", "-c", script,
        ];
        ok(&cell(dir.path(), None, &[], &args), name)
    };
    let out = shell(
        "default",
        "jq --version; echo \"$GREETING\"; echo \"${builder-none} ${buildPhase-none} $EXTRA\"",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("jq-"), "{out}");
    assert_eq!(lines[1], "hello from the shell");
    assert_eq!(lines[2], "none none 1", "build-only variables are not set");
    // After the shell's inputs, its stdenv's tools are on PATH, as in `nix develop`.
    let out = shell("bare", "jq --version; ls --version | head -1");
    assert!(out.starts_with("jq-") && out.contains("coreutils"), "{out}");
}

/// Started as root in another user's project, nixcell writes the lock as that user's.
#[test]
fn a_lock_root_writes_in_a_users_project_is_the_users() {
    let p = project(Some("nixpkgs = \"path:./pkgs\"\n"));
    let dir = p.path();
    package_set(&dir.join("pkgs"), "Hello, owner!");
    chown_to_test_user(dir);
    let out = nixcell(Mode::Root)
        .current_dir(dir)
        .arg("lock")
        .output()
        .unwrap();
    ok(&out, "nixcell lock as root");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir.join("devenv.lock")).unwrap();
    assert_eq!((m.uid(), m.gid()), test_user_ids(), "the lock's owner");
    assert_eq!(m.mode() & 0o7777, 0o644);
}

#[test]
fn rootless_the_owner_of_a_project_locks_its_package_set_and_runs() {
    let p = project(Some("nixpkgs = \"path:./pkgs\"\n"));
    let dir = p.path();
    package_set(&dir.join("pkgs"), "Hello, rootless!");
    chown_to_test_user(dir);
    let run = |args: &[&str]| {
        let mut c = nixcell(Mode::Rootless);
        c.current_dir(dir).args(args);
        c.output().unwrap()
    };
    assert_eq!(
        ok(&run(&["run", "--", "hello"]), "rootless run").trim(),
        "Hello, rootless!"
    );
    let lock_file = dir.join("devenv.lock");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&lock_file).unwrap().uid(),
        test_user_ids().0
    );
    assert_eq!(nixpkgs_node(dir)["locked"]["type"], "path");
    let good = std::fs::read_to_string(&lock_file).unwrap();
    let tampered = good.replace(
        nixpkgs_node(dir)["locked"]["narHash"].as_str().unwrap(),
        "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    std::fs::write(&lock_file, tampered).unwrap();
    let err = fails(&run(&["run", "--", "hello"]), "rootless tampered lock");
    assert!(
        err.contains("devenv.lock") && err.contains("hash mismatch"),
        "{err}"
    );
}
