//! Profiles from the command line: validation errors stop the run before anything
//! runs, the built-in profiles differ where they say they do, CLI flags override.

mod common;
use common::*;

fn write_profile(name: &str, text: &str) -> String {
    let dir = repo().join("target/test-work/profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// The Landlock features strict requires that this kernel lacks (doctor's view).
fn landlock_missing() -> Vec<String> {
    let o = std::process::Command::new(bin())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    if d["landlock"]["available"] != true {
        return vec!["landlock".into()];
    }
    d["landlock"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["available"] != true)
        .map(|f| f["feature"].as_str().unwrap().to_string())
        .filter(|f| ["refer", "truncate", "tcp"].contains(&f.as_str()))
        .collect()
}

#[test]
fn landlock_features_are_set_per_feature_and_checked() {
    // A feature switched off is named so in the verdict, and its rules are gone: the
    // cell binds a loopback port (on a kernel with TCP rules it is denied otherwise).
    let off = write_profile(
        "tcp-off.toml",
        "extends = \"default\"\n[landlock]\ntcp = \"off\"\n",
    );
    let script = "nc -l -p 4444 -e true 2>&1 & sleep 0.3; nc -w 1 127.0.0.1 4444 </dev/null && echo LOCAL-OK; wait; echo end";
    let bad = write_profile(
        "tcp-bad.toml",
        "extends = \"default\"\n[landlock]\ntcp = \"sometimes\"\n",
    );
    for m in MODES {
        let v = verdict(&sh(m, &["--json", "--profile", &off], script));
        let ll = v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["layer"] == "landlock")
            .unwrap()
            .clone();
        let detail = ll["detail"].as_str().unwrap();
        if ll["enforced"] == true {
            assert!(
                detail.contains("off in the profile: tcp")
                    && !detail.contains("TCP bind/connect denied"),
                "{m:?}: {detail}"
            );
        }
        assert!(
            v["stdout"]["text"].as_str().unwrap().contains("LOCAL-OK"),
            "{m:?}: {v}"
        );
        let o = sh(m, &["--profile", &bad], "echo RAN");
        assert_eq!(o.status.code(), Some(125), "{m:?}");
        assert!(!text(&o.stdout).contains("RAN"));
        let err = text(&o.stderr);
        assert!(
            err.contains("tcp-bad.toml:3:") && err.contains("tcp"),
            "{m:?}: {err}"
        );
    }
}

#[test]
fn a_bad_profile_names_file_line_and_key_and_runs_nothing() {
    let bad = write_profile(
        "bad.toml",
        "extends = \"default\"\n[limits]\nmemroy = \"1G\"\n",
    );
    let worse = write_profile(
        "worse.toml",
        "[seccomp]\ndeny = [\"keyctl\", \"kexec_loadd\"]\n",
    );
    for m in MODES {
        let wd = workdir(m);
        for (p, needle) in [(&bad, "bad.toml:3:1: memroy"), (&worse, "worse.toml:2:")] {
            let o = sh(
                m,
                &["--workdir", path_str(wd.path()), "--profile", p],
                "touch /work/ran",
            );
            assert_eq!(o.status.code(), Some(125), "{m:?}");
            let err = text(&o.stderr);
            assert!(err.contains(needle), "{m:?}: {err}");
            assert!(!wd.path().join("ran").exists(), "{m:?}: the command ran");
        }
        let o = sh(m, &["--profile", "paranoid"], "true");
        assert_eq!(o.status.code(), Some(125));
        assert!(text(&o.stderr).contains("unknown profile 'paranoid'"));
    }
}

#[test]
fn strict_is_an_allow_list_and_keeps_the_workdir_read_only() {
    for m in MODES {
        let wd = workdir(m);
        let script = "mkfifo /tmp/f && echo FIFO; echo x > /work/x && echo WROTE; echo end";
        let args = |p: &'static str| {
            vec![
                "--workdir".to_string(),
                path_str(wd.path()).to_string(),
                "--profile".into(),
                p.into(),
            ]
        };
        let a = args("strict");
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let missing = landlock_missing();
        if missing.is_empty() {
            // mknodat is not on strict's allow list; the workdir is mounted read-only.
            assert_eq!(ok(&sh(m, &a, script), "strict").trim(), "end", "{m:?}");
        } else {
            // strict requires Landlock with TCP rules (ABI 4): a kernel without them
            // refuses, naming what is missing, and runs nothing.
            let o = sh(m, &a, "touch /tmp/x; echo RAN");
            assert_eq!(o.status.code(), Some(125), "{m:?}");
            assert!(!text(&o.stdout).contains("RAN"));
            let err = text(&o.stderr);
            assert!(
                err.contains("set-up stage 'landlock' failed") && err.contains("required"),
                "{m:?}: {err}"
            );
        }
        let a = args("default");
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        assert_eq!(
            ok(&sh(m, &a, script), "default").trim(),
            "FIFO\nWROTE\nend",
            "{m:?}"
        );
    }
}

#[test]
fn cli_flags_override_the_profile_and_every_layer_is_reported() {
    for m in MODES {
        let o = sh(
            m,
            &[
                "--json",
                "--profile",
                "ci",
                "--pids",
                "33",
                "--memory",
                "300M",
                "--cpus",
                "0.5",
            ],
            "true",
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{m:?}: {v}");
        assert_eq!(v["profile"], "ci");
        let layers = v["layers"].as_array().unwrap();
        for name in ["cgroup", "rlimits", "landlock", "seccomp", "pid1"] {
            let l = layers
                .iter()
                .find(|l| l["layer"] == name)
                .unwrap_or_else(|| panic!("{name} missing: {v}"));
            if name == "landlock" && landlock_missing().contains(&"landlock".to_string()) {
                // A kernel without Landlock: the default profile runs and says so.
                assert_eq!(l["enforced"], false, "{m:?}: {l}");
                assert!(
                    l["detail"].as_str().unwrap().starts_with("not enforced: "),
                    "{m:?}: {l}"
                );
            } else {
                assert_eq!(l["enforced"], true, "{m:?}: {l}");
            }
        }
        let cg = layers.iter().find(|l| l["layer"] == "cgroup").unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            cg.contains("memory 300 MiB") && cg.contains("pids 33") && cg.contains("0.5 CPUs"),
            "{cg}"
        );
        // The pids limit holds inside the cell: 40 processes cannot start.
        let o = sh(
            m,
            &["--json", "--profile", "ci", "--pids", "10"],
            "for i in $(seq 20); do sleep 1 & done; echo all",
        );
        let v = verdict(&o);
        assert!(
            v["stderr"]["text"].as_str().unwrap().contains("can't fork"),
            "{m:?}: {v}"
        );
    }
}

#[test]
fn an_off_layer_is_reported_as_not_enforced() {
    let p = write_profile(
        "all-off.toml",
        "[landlock]\nmode = \"off\"\n[seccomp]\nmode = \"off\"\n[cgroup]\nmode = \"off\"\n[rlimits]\nmode = \"off\"\n",
    );
    for m in MODES {
        let v = verdict(&sh(m, &["--json", "--profile", &p], "true"));
        for l in v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["layer"] != "pid1")
        {
            assert_eq!(l["enforced"], false, "{m:?}: {l}");
            assert!(l["detail"].as_str().unwrap().contains("off"), "{l}");
        }
    }
}

/// An unprivileged uid with no passwd entry and no delegated cgroup, in `nix-users`
/// (to reach nix-daemon), with a private HOME.
fn undelegated_user() -> (std::process::Command, tempfile::TempDir) {
    let uid = 4321u32;
    let home = tempfile::Builder::new()
        .prefix("home")
        .tempdir_in(repo().join("target/test-work"))
        .unwrap();
    nix::unistd::chown(home.path(), Some(uid.into()), Some(uid.into())).unwrap();
    let nix_users = nix::unistd::Group::from_name("nix-users")
        .unwrap()
        .expect("group nix-users (scripts/setup.sh)")
        .gid;
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string()])
        .args(["--groups", &nix_users.to_string(), "--", "env", "-i"])
        .arg("PATH=/usr/bin:/bin")
        .arg(format!("HOME={}", home.path().display()))
        .arg(bin());
    (c, home)
}

#[test]
fn without_a_delegated_cgroup_best_effort_falls_back_and_required_fails_closed() {
    let bb = busybox();
    let wd = tempfile::Builder::new()
        .prefix("wd")
        .tempdir_in(repo().join("target/test-work"))
        .unwrap();
    nix::unistd::chown(wd.path(), Some(4321.into()), Some(4321.into())).unwrap();
    // default: cgroup best-effort → the run goes on, rlimits stand in, and it says so.
    let (mut c, _home) = undelegated_user();
    let o = c
        .args([
            "run",
            "--json",
            "--env-path",
            path_str(&bb),
            "--",
            "sh",
            "-c",
            "ulimit -u",
        ])
        .output()
        .unwrap();
    let v = verdict(&o);
    assert_eq!(v["exit_code"], 0, "{v}");
    let layer = |name: &str| {
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["layer"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} layer: {v}"))
    };
    assert_eq!(layer("cgroup")["enforced"], false);
    assert!(
        layer("cgroup")["detail"]
            .as_str()
            .unwrap()
            .contains("no cgroup delegated")
    );
    assert!(
        layer("rlimits")["detail"]
            .as_str()
            .unwrap()
            .contains("nproc=512")
    );
    assert_eq!(
        v["stdout"]["text"], "512\n",
        "the pids fallback is in force inside"
    );
    assert_eq!(v["usage"]["source"], "rusage");
    // strict: cgroup required → exit 125 naming what is missing, nothing run.
    let (mut c, _home) = undelegated_user();
    let ran = wd.path().join("ran");
    let bind = format!("{}:/data", wd.path().display());
    let o = c
        .args(["run", "--profile", "strict", "--env-path", path_str(&bb)])
        .args(["--bind", &bind, "--", "touch", "/data/ran"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    let err = text(&o.stderr);
    assert!(
        err.contains("cgroup layer is required") && err.contains("user-4321"),
        "{err}"
    );
    assert!(!ran.exists());
}

#[test]
fn doctor_reports_each_layer_and_landlock_feature() {
    for m in MODES {
        let mut c = nixcell(m);
        let o = c.args(["doctor", "--json"]).output().unwrap();
        assert!(o.status.success(), "{m:?}");
        let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let layers: Vec<&str> = d["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["layer"].as_str().unwrap())
            .collect();
        assert_eq!(
            layers,
            ["namespaces", "landlock", "seccomp", "cgroup", "rlimits"],
            "{m:?}"
        );
        let features: Vec<(&str, i64)> = d["landlock"]["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["feature"].as_str().unwrap(), f["abi"].as_i64().unwrap()))
            .collect();
        assert_eq!(
            features,
            [
                ("refer", 2),
                ("truncate", 3),
                ("tcp", 4),
                ("ioctl_dev", 5),
                ("scopes", 6)
            ]
        );
        // Each feature is available exactly when the kernel's ABI has it.
        let abi = d["landlock"]["abi"].as_i64().unwrap_or(0);
        for f in d["landlock"]["features"].as_array().unwrap() {
            assert_eq!(
                f["available"] == true,
                abi >= f["abi"].as_i64().unwrap(),
                "{f}"
            );
        }
        // A layer that is not fully enforceable names its fix.
        for l in d["layers"].as_array().unwrap() {
            if l["enforceable"] != "yes" {
                assert!(l["fix"].is_string(), "{m:?}: {l}");
            }
        }
    }
}
