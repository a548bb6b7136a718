//! Hints for the common failures, with the real binary: each case once with `--json`
//! (the verdict's `hints`) and once without (a `nixcell: hint:` line on stderr after
//! the command's own output). No hint names a package the package set lacks.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pkgs_dir() -> PathBuf {
    repo().join("tests/fixtures/pkgs")
}

/// A project of `devenv` under `profile`, in a fresh git repository; its policy
/// allows jq, pandas and redis.
fn project(devenv: &str, profile: &str) -> tempfile::TempDir {
    let toml = format!(
        "profile = \"{profile}\"\nnixpkgs = \"{}\"\n[policy]\npackages = [\"jq\", \"bash\"]\npython_libraries = [\"pandas\", \"openpyxl\"]\nservices = [\"redis\"]\n",
        pkgs_dir().display()
    );
    git_project("hint", &[("devenv.nix", devenv), ("nixcell.toml", &toml)])
}

const PYTHON: &str =
    "{ pkgs, ... }: {\n  packages = [ pkgs.busybox ];\n  languages.python.enable = true;\n}\n";

fn cell(dir: &Path, args: &[&str]) -> Output {
    nixcell(Mode::Root)
        .current_dir(dir)
        .env("NIX_PATH", format!("nixpkgs={}", pkgs_dir().display()))
        .args(args)
        .output()
        .unwrap()
}

/// The run's hints with `--json`, and its stderr without.
fn both(dir: &Path, flags: &[&str], cmd: &[&str]) -> (Vec<Value>, String) {
    let mut args = vec!["run", "--json"];
    args.extend(flags);
    args.push("--");
    args.extend(cmd);
    let v = verdict(&cell(dir, &args));
    let hints = v["hints"].as_array().cloned().unwrap_or_default();
    args.remove(1);
    let plain = text(&cell(dir, &args).stderr);
    (hints, plain)
}

fn of_kind<'a>(hints: &'a [Value], kind: &str) -> &'a Value {
    hints
        .iter()
        .find(|h| h["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} hint: {hints:?}"))
}

/// The same hint on stderr, after the command's own output.
fn printed(stderr: &str, hint: &Value, own: &str) {
    let first = hint["message"].as_str().unwrap().lines().next().unwrap();
    let line = format!("nixcell: hint: {first}");
    let at = stderr
        .find(&line)
        .unwrap_or_else(|| panic!("not printed: {line}\n{stderr}"));
    if !own.is_empty() {
        let o = stderr
            .find(own)
            .unwrap_or_else(|| panic!("{own}: {stderr}"));
        assert!(
            o < at,
            "the hint comes after the command's output: {stderr}"
        );
    }
}

const CONNECT: &str =
    "import socket, sys\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n";

#[test]
fn eacces_on_a_service_port_asks_to_enable_the_service() {
    let p = project(PYTHON, "default");
    std::fs::write(p.path().join("c.py"), CONNECT).unwrap();
    let (h, err) = both(p.path(), &[], &["python3", "c.py", "127.0.0.1", "6379"]);
    assert!(
        err.contains("PermissionError: [Errno 13] Permission denied"),
        "{err}"
    );
    let s = of_kind(&h, "service_not_running");
    assert_eq!(
        s["edit"]["command"], "nixcell edit enable-service redis",
        "{s}"
    );
    printed(&err, s, "PermissionError");
    // A script whose traceback shows the address.
    std::fs::write(
        p.path().join("r.py"),
        "import socket\nsocket.create_connection(('localhost', 6379), timeout=3)\n",
    )
    .unwrap();
    let (h, _) = both(p.path(), &[], &["python3", "r.py"]);
    assert_eq!(
        of_kind(&h, "service_not_running")["missing"],
        "127.0.0.1:6379"
    );
    // And the same with redis-py's wording, seen through a shell.
    let (h, _) = both(
        p.path(),
        &[],
        &[
            "sh",
            "-c",
            "echo 'redis.exceptions.ConnectionError: Error 13 connecting to localhost:6379. Permission denied.' >&2; exit 1",
        ],
    );
    assert_eq!(
        of_kind(&h, "service_not_running")["missing"],
        "127.0.0.1:6379"
    );
}

#[test]
fn eacces_to_an_outside_address_says_the_network_is_closed() {
    let p = project(PYTHON, "default");
    std::fs::write(p.path().join("c.py"), CONNECT).unwrap();
    let (h, err) = both(p.path(), &[], &["python3", "c.py", "10.1.2.3", "443"]);
    let n = of_kind(&h, "network_forbidden");
    assert!(n["message"].as_str().unwrap().contains("10.1.2.3"), "{n}");
    assert!(n["edit"].is_null());
    printed(&err, n, "PermissionError");
    // A loopback port no service uses: only the operator opens it.
    let (h, _) = both(p.path(), &[], &["python3", "c.py", "127.0.0.1", "8080"]);
    let d = of_kind(&h, "port_denied");
    assert!(
        d["message"].as_str().unwrap().contains("--allow-port 8080"),
        "{d}"
    );
}

#[test]
fn oom_names_the_limit_the_peak_and_how_far_it_may_rise() {
    let p = project(PYTHON, "strict");
    let alloc = ["python3", "-c", "b = bytes(1) * (700 << 20)"];
    let (h, err) = both(p.path(), &[], &alloc);
    let o = of_kind(&h, "out_of_memory");
    let m = o["message"].as_str().unwrap();
    assert!(m.contains("512.0 MiB") && m.contains("peak"), "{m}");
    assert!(m.contains("profile `strict` allows no more"), "{m}");
    printed(&err, o, "");
    // Below the profile's limit, the hint says how far it may rise.
    let (h, _) = both(p.path(), &["--memory", "256M"], &alloc);
    let m = of_kind(&h, "out_of_memory")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        m.contains("256.0 MiB") && m.contains("up to the profile's 512.0 MiB"),
        "{m}"
    );
}

#[test]
fn timeout_names_the_limit() {
    let p = project(PYTHON, "default");
    let (h, err) = both(p.path(), &["--timeout", "1s"], &["sleep", "10"]);
    let t = of_kind(&h, "timeout");
    let m = t["message"].as_str().unwrap();
    assert!(m.contains("1 s") && m.contains("up to 600 s"), "{m}");
    printed(&err, t, "");
}

#[test]
fn a_process_that_died_is_named_with_its_log_tail() {
    let devenv = "{ pkgs, ... }: {\n  packages = [ pkgs.busybox ];\n  processes.flaky.exec = \"echo flaky is dying; exit 3\";\n}\n";
    let p = project(devenv, "default");
    let (h, err) = both(p.path(), &[], &["sh", "-c", "sleep 2; echo done"]);
    let d = of_kind(&h, "service_died");
    let m = d["message"].as_str().unwrap();
    assert!(m.contains("`flaky` exited with status 3"), "{m}");
    assert!(m.contains("flaky is dying"), "the log tail: {m}");
    printed(&err, d, "");
}

/// `names` that are packages of the fixture package set, asked of Nix directly.
fn set_has(names: &[String]) -> Vec<String> {
    let expr = format!(
        "let pkgs = import {} {{}}; parts = n: builtins.filter builtins.isString (builtins.split \"[.]\" n); \
         get = s: p: if builtins.isAttrs s && s ? ${{p}} then s.${{p}} else null; \
         has = n: builtins.foldl' (s: p: if s == null then null else get s p) pkgs (parts n) != null; \
         in builtins.filter has [ {} ]",
        pkgs_dir().display(),
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let o = Command::new("nix-instantiate")
        .env("NIX_CONFIG", "substituters =\n")
        .args(["--eval", "--strict", "--json", "-E", &expr])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn no_hint_names_a_package_the_set_lacks() {
    let p = project(PYTHON, "default");
    let dir = p.path();
    let cases: &[&[&str]] = &[
        &["sh", "-c", "rg x; jq .; make; convert; exit 1"],
        &["python3", "-c", "import yaml"],
        &["python3", "-c", "import requests"],
        &["python3", "-c", "import cv2"],
        &["bash", "-c", "true"],
    ];
    let mut named = Vec::new();
    let mut messages = Vec::new();
    for cmd in cases {
        let (h, _) = both(dir, &[], cmd);
        assert!(!h.is_empty(), "{cmd:?}: no hint");
        for x in &h {
            let m = x["message"].as_str().unwrap();
            messages.push(m.to_string());
            // "the package `X`" and "the Python library `X`" are claims about the set.
            for (marker, prefix) in [
                ("the package `", ""),
                ("Python library `", "python3Packages."),
                ("the library `", "python3Packages."),
            ] {
                for part in m.split(marker).skip(1) {
                    let name = part.split('`').next().unwrap();
                    if !m.contains(&format!("has no Python library `{name}`")) {
                        named.push(format!("{prefix}{name}"));
                    }
                }
            }
            if let Some(e) = x["edit"].as_object() {
                let n = e["name"].as_str().unwrap();
                named.push(if e["subject"] == "python_library" {
                    format!("python3Packages.{n}")
                } else {
                    n.to_string()
                });
            }
        }
    }
    named.sort();
    named.dedup();
    let real = set_has(&named);
    assert_eq!(
        real, named,
        "named but missing from the set; hints:\n{messages:#?}"
    );
    // `jq` and `bash` are in the set and allowed: named with their edit.
    let all = messages.join("\n");
    assert!(all.contains("nixcell edit add-package jq"), "{all}");
    // `make` and `convert` would come from gnumake and imagemagick, which the set lacks:
    // said so, never offered.
    assert!(all.contains("no package named `gnumake`"), "{all}");
    assert!(all.contains("no package named `imagemagick`"), "{all}");
    assert!(!all.contains("the package `gnumake`"), "{all}");
    // ripgrep is in the set but not allowed: named, no edit.
    assert!(
        all.contains("the package `ripgrep` would provide it"),
        "{all}"
    );
}

#[test]
fn pip_is_not_how_a_cell_gets_libraries() {
    let p = project(PYTHON, "default");
    let dir = p.path();
    let (h, err) = both(dir, &[], &["sh", "-c", "pip install pandas"]);
    let pip = of_kind(&h, "pip_unavailable");
    let m = pip["message"].as_str().unwrap();
    assert!(
        m.starts_with("pip is not how a nixcell gets Python libraries"),
        "{m}"
    );
    assert_eq!(
        pip["edit"]["command"], "nixcell edit add-python-library pandas",
        "{pip}"
    );
    assert!(!h.iter().any(|x| x["kind"] == "missing_command"), "{h:?}");
    printed(&err, pip, "pip: not found");
    // python3 -m pip, for a library the set does not have: said so, nothing suggested.
    let (h, _) = both(dir, &[], &["python3", "-m", "pip", "install", "requests"]);
    let pip = of_kind(&h, "pip_unavailable");
    let m = pip["message"].as_str().unwrap();
    assert!(
        m.contains("the package set has no Python library `requests`"),
        "{m}"
    );
    assert!(pip["edit"].is_null());
    assert!(
        !h.iter()
            .any(|x| x["missing"] == "pip" && x["kind"] == "missing_python_module")
    );
}
