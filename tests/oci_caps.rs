//! An OCI container's capabilities and no_new_privs as its config.json asks, bounded
//! by the profile's `[capabilities]`: the five sets and NoNewPrivs seen in the
//! container's /proc/self/status, refusals by name, what file capabilities and the
//! bounding set give, the host's files still out of reach, Landlock and seccomp
//! still enforced without no_new_privs; a `nixcell run` cell still has none. Root and
//! rootless.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;

const CHOWN: u64 = 1 << 0;
const DAC_OVERRIDE: u64 = 1 << 1;
const KILL: u64 = 1 << 5;
const NET_BIND_SERVICE: u64 = 1 << 10;
const SYS_CHROOT: u64 = 1 << 18;
const SYS_ADMIN: u64 = 1 << 21;
const SETFCAP: u64 = 1 << 31;

fn config(args: &[&str], closure: &Path) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "annotations": {"dev.nixcell.closure": path_str(closure)},
    })
}

/// A busybox container running `sh -c script`.
fn sh_config(script: &str) -> serde_json::Value {
    config(&["sh", "-c", script], &busybox())
}

fn caps(sets: &[(&str, &[&str])]) -> serde_json::Value {
    sets.iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `names` in the bounding, permitted and effective sets.
fn same(names: &[&str]) -> serde_json::Value {
    caps(&[
        ("bounding", names),
        ("permitted", names),
        ("effective", names),
    ])
}

/// A directory the runtime (root or the test user) can read, for bundles and profiles.
fn scratch_dir(mode: Mode) -> tempfile::TempDir {
    let dir = workdir(mode);
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// A profile extending default with `caps_toml` as its `[capabilities]`.
fn profile(mode: Mode, dir: &Path, caps_toml: &str) -> String {
    let f = dir.join("caps.toml");
    std::fs::write(
        &f,
        format!("extends = \"default\"\n[capabilities]\n{caps_toml}\n"),
    )
    .unwrap();
    if mode == Mode::Rootless {
        chown_to_test_user(dir);
    }
    f.display().to_string()
}

fn run(mode: Mode, cfg: &serde_json::Value) -> Result<OciRan, String> {
    oci_run(mode, cfg, false)
}

/// The `Cap*` masks and NoNewPrivs of a /proc/<pid>/status text.
fn status_field(status: &str, key: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} not in {status}"))
        .trim();
    if key == "NoNewPrivs" {
        v.parse().unwrap()
    } else {
        u64::from_str_radix(v, 16).unwrap()
    }
}

fn sets(out: &str) -> [u64; 6] {
    [
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
    ]
    .map(|k| status_field(out, k))
}

#[test]
fn the_asked_sets_are_the_containers() {
    for mode in MODES {
        // Not root in the container: after execve it keeps its ambient set (also its
        // permitted and effective ones), the inheritable and bounding sets as asked.
        let mut cfg = sh_config("cat /proc/self/status");
        cfg["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
        cfg["process"]["capabilities"] = caps(&[
            ("bounding", &["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_KILL"]),
            ("permitted", &["CAP_CHOWN", "CAP_KILL"]),
            ("effective", &["CAP_KILL"]),
            ("inheritable", &["CAP_KILL"]),
            ("ambient", &["CAP_KILL"]),
        ]);
        let r = run(mode, &cfg).unwrap();
        assert_eq!(r.status, 0, "{mode:?}: {}", r.out);
        assert_eq!(
            sets(&r.out),
            [KILL, KILL, KILL, CHOWN | DAC_OVERRIDE | KILL, KILL, 0],
            "{mode:?}: {}",
            r.out
        );
        assert!(
            r.log.contains("layer capabilities: enforced (bounding CHOWN,DAC_OVERRIDE,KILL; effective KILL; permitted CHOWN,KILL; inheritable KILL; ambient KILL; no_new_privs 0"),
            "{mode:?}: {}",
            r.log
        );
        // Root in the container, with no_new_privs.
        let mut cfg = sh_config("cat /proc/self/status");
        let both: &[&str] = &["CAP_CHOWN", "CAP_KILL"];
        cfg["process"]["capabilities"] = same(both);
        cfg["process"]["noNewPrivileges"] = true.into();
        let r = run(mode, &cfg).unwrap();
        assert_eq!(
            sets(&r.out),
            [0, CHOWN | KILL, CHOWN | KILL, CHOWN | KILL, 0, 1],
            "{mode:?}: {}",
            r.out
        );
        // None asked: none, and no_new_privs as config.json says (unset: off, as runc).
        let r = run(mode, &sh_config("cat /proc/self/status")).unwrap();
        assert_eq!(sets(&r.out), [0, 0, 0, 0, 0, 0], "{mode:?}: {}", r.out);
        // Strict: no_new_privs always, whatever config.json says.
        let mut cfg = sh_config("cat /proc/self/status");
        cfg["annotations"]["dev.nixcell.profile"] = "strict".into();
        cfg["process"]["noNewPrivileges"] = false.into();
        let r = run(mode, &cfg).unwrap();
        assert_eq!(sets(&r.out), [0, 0, 0, 0, 0, 1], "{mode:?}: {}", r.out);
        assert!(r.log.contains("set anyway"), "{mode:?}: {}", r.log);
    }
}

#[test]
fn a_capability_beyond_the_profile_is_refused_by_name_or_dropped() {
    for mode in MODES {
        let mut cfg = sh_config("cat /proc/self/status");
        let asked: &[&str] = &["CAP_CHOWN", "CAP_SYS_ADMIN"];
        cfg["process"]["capabilities"] = same(asked);
        let e = run(mode, &cfg).err().expect("CAP_SYS_ADMIN refused");
        for part in [
            "process.capabilities.bounding",
            "CAP_SYS_ADMIN",
            "profile default",
            "oci_allow",
        ] {
            assert!(e.contains(part), "{mode:?}: {part}: {e}");
        }
        // oci_beyond = "drop": the container runs without it, and the log says so.
        let pdir = scratch_dir(mode);
        cfg["annotations"]["dev.nixcell.profile"] =
            profile(mode, pdir.path(), "oci_beyond = \"drop\"").into();
        let r = run(mode, &cfg).unwrap();
        let [_, prm, eff, bnd, ..] = sets(&r.out);
        assert_eq!(
            (prm, eff, bnd),
            (CHOWN, CHOWN, CHOWN),
            "{mode:?}: {}",
            r.out
        );
        assert!(
            r.log.contains("dropped") && r.log.contains("CAP_SYS_ADMIN"),
            "{mode:?}: {}",
            r.log
        );
    }
    // A profile may not even list it.
    let pdir = scratch_dir(Mode::Root);
    let mut cfg = sh_config("true");
    cfg["annotations"]["dev.nixcell.profile"] =
        profile(Mode::Root, pdir.path(), "oci_allow = [\"CAP_SYS_PTRACE\"]").into();
    let e = run(Mode::Root, &cfg).err().expect("profile refused");
    assert!(
        e.contains("caps.toml:3") && e.contains("CAP_SYS_PTRACE"),
        "{e}"
    );
}

fn python() -> PathBuf {
    build_env("python3", "pkgs.python3")
}

/// Python run as root in the container: writes file capabilities (CAP_SYS_ADMIN and
/// CAP_CHOWN, permitted and effective) on a copy of its own binary in a tmpfs that
/// allows them (no nosuid), then execs the copy, which prints its status.
const FILE_CAPS: &str = r#"
import os, shutil, struct, sys
shutil.copy(os.path.realpath(sys.executable), "/x/py")
os.chmod("/x/py", 0o755)
lo = (1 << 21) | (1 << 0)
os.setxattr("/x/py", "security.capability", struct.pack("<IIIII", 0x02000001, lo, 0, 0, 0))
sys.stdout.write("xattr %d\n" % len(os.getxattr("/x/py", "security.capability")))
sys.stdout.flush()
os.execve("/x/py", ["/x/py", "-c", "import sys; sys.stdout.write(open('/proc/self/status').read())"], {"PYTHONHOME": sys.prefix})
"#;

#[test]
fn file_capabilities_gain_nothing_beyond_the_bounding_set() {
    for mode in MODES {
        for nnp in [false, true] {
            let py = python();
            let bin = py.join("bin/python3");
            let mut cfg = config(&[path_str(&bin), "-c", FILE_CAPS], &py);
            cfg["mounts"] = serde_json::json!([
                {"destination": "/x", "type": "tmpfs", "source": "tmpfs", "options": ["rw", "nodev"]},
            ]);
            cfg["process"]["capabilities"] = caps(&[
                (
                    "bounding",
                    &["CAP_CHOWN", "CAP_SETFCAP", "CAP_DAC_OVERRIDE"],
                ),
                ("permitted", &["CAP_SETFCAP"]),
                ("effective", &["CAP_SETFCAP"]),
            ]);
            cfg["process"]["noNewPrivileges"] = nnp.into();
            let r = run(mode, &cfg).unwrap();
            assert_eq!(r.status, 0, "{mode:?} nnp {nnp}: {}", r.out);
            assert!(r.out.starts_with("xattr 2"), "{mode:?}: {}", r.out);
            let [_, prm, eff, bnd, ..] = sets(&r.out);
            assert_eq!(bnd, CHOWN | SETFCAP | DAC_OVERRIDE, "{mode:?}: {}", r.out);
            assert_eq!(prm & SYS_ADMIN, 0, "{mode:?} nnp {nnp}: {}", r.out);
            if nnp {
                // Nothing at all beyond what the process had.
                assert_eq!((prm, eff), (SETFCAP, SETFCAP), "{mode:?}: {}", r.out);
            } else {
                // Root's execve: the bounding set, never more.
                assert_eq!(prm & !bnd, 0, "{mode:?}: {}", r.out);
            }
        }
    }
}

#[test]
fn a_hosts_private_file_stays_unreadable_with_dac_override() {
    for mode in MODES {
        // Root's, mode 0600, in a directory anyone may enter.
        let host = scratch_dir(Mode::Root);
        let secret = host.path().join("secret");
        std::fs::write(&secret, "host secret\n").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let mut cfg = sh_config("cat /s/secret || echo unreadable; grep CapEff /proc/self/status");
        cfg["mounts"] = serde_json::json!([
            {"destination": "/s", "type": "bind", "source": path_str(host.path()), "options": ["rbind", "ro"]},
        ]);
        let all: &[&str] = &["CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_CHOWN"];
        cfg["process"]["capabilities"] = same(all);
        let r = run(mode, &cfg).unwrap();
        let eff = status_field(&r.out, "CapEff");
        assert_eq!(eff & DAC_OVERRIDE, DAC_OVERRIDE, "{mode:?}: {}", r.out);
        assert!(!r.out.contains("host secret"), "{mode:?}: {}", r.out);
        assert!(r.out.contains("unreadable"), "{mode:?}: {}", r.out);
    }
}

#[test]
fn landlock_and_seccomp_hold_without_no_new_privs() {
    for mode in MODES {
        // NET_BIND_SERVICE and SYS_CHROOT granted: Landlock still denies binding a
        // TCP port the profile does not list, seccomp still denies chroot and unshare.
        let mut cfg = sh_config(
            "grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status; \
             nc -l -p 8080 </dev/null 2>&1 | head -1; \
             chroot / true 2>&1 | head -1; unshare -n true 2>&1 | head -1",
        );
        let granted: &[&str] = &["CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"];
        cfg["process"]["capabilities"] = same(granted);
        cfg["process"]["noNewPrivileges"] = false.into();
        let r = run(mode, &cfg).unwrap();
        assert_eq!(status_field(&r.out, "NoNewPrivs"), 0, "{mode:?}: {}", r.out);
        assert_eq!(
            status_field(&r.out, "CapEff"),
            NET_BIND_SERVICE | SYS_CHROOT,
            "{mode:?}: {}",
            r.out
        );
        assert_eq!(status_field(&r.out, "Seccomp"), 2, "{mode:?}: {}", r.out);
        let lines: Vec<&str> = r.out.lines().skip(3).collect();
        assert_eq!(lines.len(), 3, "{mode:?}: {}", r.out);
        for l in &lines {
            assert!(
                l.contains("Permission denied") || l.contains("Operation not permitted"),
                "{mode:?}: {}",
                r.out
            );
        }
        assert!(
            r.log.contains("layer landlock: enforced") && r.log.contains("layer seccomp: enforced"),
            "{mode:?}: {}",
            r.log
        );
    }
}

#[test]
fn a_filter_that_would_stop_the_capability_steps_is_refused_at_create() {
    for mode in MODES {
        let mut cfg = sh_config("true");
        cfg["process"]["capabilities"] = caps(&[("bounding", &["CAP_KILL"])]);
        cfg["linux"] = serde_json::json!({"seccomp": {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["capset"], "action": "SCMP_ACT_ERRNO"}],
        }});
        let e = run(mode, &cfg).err().expect("refused");
        assert!(
            e.contains("config.json linux.seccomp does not allow capset")
                && e.contains("noNewPrivileges"),
            "{mode:?}: {e}"
        );
        // With no_new_privs the sets come before the filters: it runs.
        cfg["process"]["noNewPrivileges"] = true.into();
        let r = run(mode, &cfg).unwrap();
        assert_eq!(r.status, 0, "{mode:?}: {}", r.out);
    }
}

#[test]
fn a_run_cell_still_has_no_capability_and_no_new_privs() {
    for mode in MODES {
        let out = ok(
            &sh(mode, &[], "grep -E '^(Cap|NoNewPrivs)' /proc/self/status"),
            "run",
        );
        assert_eq!(sets(&out), [0, 0, 0, 0, 0, 1], "{mode:?}: {out}");
    }
}

#[test]
fn exec_takes_the_containers_sets_with_cap_or_its_process_json() {
    for mode in MODES {
        // SAFETY: prctl with an integer argument.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        let dir = scratch_dir(mode);
        let d = dir.path();
        let mut cfg = sh_config("sleep 100");
        let kill: &[&str] = &["CAP_KILL"];
        cfg["process"]["capabilities"] = same(kill);
        std::fs::create_dir_all(d.join("bundle/rootfs")).unwrap();
        std::fs::write(d.join("bundle/config.json"), config_json(&cfg)).unwrap();
        std::fs::write(
            d.join("process.json"),
            serde_json::json!({"args": ["cat", "/proc/self/status"], "cwd": "/",
                "user": {"uid": 0, "gid": 0}, "noNewPrivileges": true,
                "capabilities": {"bounding": ["CAP_NET_RAW"], "permitted": ["CAP_NET_RAW"]}})
            .to_string(),
        )
        .unwrap();
        if mode == Mode::Rootless {
            chown_to_test_user(d);
        }
        let o = oci_in(mode, d, &["create", "--bundle"])
            .arg(d.join("bundle"))
            .arg("--pid-file")
            .arg(d.join("pid"))
            .arg("c")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(o.success(), "{mode:?}: create");
        let pid: i32 = std::fs::read_to_string(d.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        ok(&oci_in(mode, d, &["start", "c"]).output().unwrap(), "start");
        let status = |args: &[&str]| {
            let o = oci_in(mode, d, &["exec"]).args(args).output().unwrap();
            (o.status.code(), text(&o.stdout), text(&o.stderr))
        };
        // The container's own sets.
        let (code, out, err) = status(&["c", "cat", "/proc/self/status"]);
        assert_eq!(code, Some(0), "{mode:?}: {err}");
        assert_eq!(sets(&out), [0, KILL, KILL, KILL, 0, 0], "{mode:?}: {out}");
        // --cap adds to every set, within the profile.
        let (_, out, err) = status(&["--cap", "CAP_CHOWN", "c", "cat", "/proc/self/status"]);
        let both = KILL | CHOWN;
        assert_eq!(
            sets(&out),
            [CHOWN, both, both, both, CHOWN, 0],
            "{mode:?}: {out} {err}"
        );
        let (code, _, err) = status(&["--cap", "CAP_SYS_ADMIN", "c", "true"]);
        assert_eq!(code, Some(255), "{mode:?}");
        assert!(
            err.contains("CAP_SYS_ADMIN") && err.contains("oci_allow"),
            "{mode:?}: {err}"
        );
        // --process: that process's sets and no_new_privs.
        let (code, out, err) = status(&["--process", path_str(&d.join("process.json")), "c"]);
        assert_eq!(code, Some(0), "{mode:?}: {err}");
        let raw = 1 << 13;
        assert_eq!(sets(&out), [0, raw, raw, raw, 0, 1], "{mode:?}: {out}");
        ok(
            &oci_in(mode, d, &["delete", "--force", "c"])
                .output()
                .unwrap(),
            "delete",
        );
        let mut st = 0;
        // SAFETY: waitpid on a child of ours.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    }
}

#[test]
fn pid1_keeps_nothing_once_the_command_is_forked() {
    for mode in MODES {
        // The command goes on only once PID 1 has dropped its set.
        let mut cfg = sh_config("cat /proc/1/status");
        cfg["process"]["capabilities"] = same(&["CAP_KILL", "CAP_CHOWN"]);
        let r = run(mode, &cfg).unwrap();
        assert_eq!(sets(&r.out), [0, 0, 0, 0, 0, 1], "{mode:?}: {}", r.out);
    }
}
