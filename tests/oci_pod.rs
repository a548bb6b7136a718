//! `nixcell oci` in a pod: a container joining another's network, ipc and uts
//! namespaces by path, hooks around the lifecycle, and a `create` killed before it has
//! saved the state. Root and rootless where it applies.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A state root and bundles (one per container name) in a scratch directory.
struct Pod {
    mode: Mode,
    dir: tempfile::TempDir,
}

impl Pod {
    fn new(mode: Mode) -> Pod {
        // SAFETY: prctl with an integer argument: PID 1s are reparented to us.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        let dir = workdir(mode);
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Pod { mode, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn bundle(&self, name: &str, config: &serde_json::Value) -> PathBuf {
        let b = self.path(&format!("bundle-{name}"));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("config.json"), config_json(config)).unwrap();
        if self.mode == Mode::Rootless {
            chown_to_test_user(self.dir.path());
        }
        b
    }

    fn oci(&self, args: &[&str]) -> Command {
        let mut c = nixcell(self.mode);
        c.arg("oci")
            .arg("--root")
            .arg(self.path("state"))
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.oci(args).output().unwrap()
    }

    /// `create` of container `id` from `config`, its stdout to the file `<id>.out`:
    /// the status and `create`'s stderr (the container's stderr goes to the same file,
    /// `<id>.err`, which no pipe would see the end of while the container lives).
    fn try_create(
        &self,
        id: &str,
        config: &serde_json::Value,
    ) -> (std::process::ExitStatus, String) {
        let b = self.bundle(id, config);
        let out = std::fs::File::create(self.path(&format!("{id}.out"))).unwrap();
        let err = self.path(&format!("{id}.err"));
        let st = self
            .oci(&["create", "--bundle", path_str(&b), "--pid-file"])
            .arg(self.path(&format!("{id}.pid")))
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        (st, std::fs::read_to_string(&err).unwrap_or_default())
    }

    fn create(&self, id: &str, config: &serde_json::Value) -> i32 {
        let (st, err) = self.try_create(id, config);
        assert!(st.success(), "create {id}: {err}");
        std::fs::read_to_string(self.path(&format!("{id}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn out(&self, id: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{id}.out"))).unwrap_or_default()
    }
}

fn config(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "hostname": "pod",
        "annotations": {"dev.nixcell.closure": path_str(&busybox())},
    })
}

/// Waits up to `secs` for our child `pid`: its exit status (128+N for signal N), or
/// None if it is still there.
fn wait_exit(pid: i32, secs: u64) -> Option<i32> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut st = 0;
        // SAFETY: waitpid on a child of ours (a subreaper), without blocking.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFSIGNALED(st) {
                128 + libc::WTERMSIG(st)
            } else {
                libc::WEXITSTATUS(st)
            });
        }
        assert!(r == 0, "waitpid {pid}: {}", std::io::Error::last_os_error());
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A hook running `script` under /bin/sh, with `NAME=name` in its environment.
fn hook(name: &str, script: &str) -> serde_json::Value {
    serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", script],
        "env": [format!("NAME={name}")], "timeout": 10})
}

/// The pid in a state JSON a hook saved.
fn pid_in(state_file: &Path) -> i32 {
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state_file).unwrap()).unwrap();
    st["pid"].as_i64().unwrap() as i32
}

#[test]
fn a_create_killed_before_it_saved_the_state_leaves_no_held_pid1() {
    for mode in MODES {
        let p = Pod::new(mode);
        let uid = match mode {
            Mode::Root => 0,
            Mode::Rootless => test_user_ids().0,
        };
        // Without a cgroup first: nothing but the end of its creator can end PID 1
        // (a stale run's cgroup is removed, its processes killed, by later runs).
        let no_cgroup = p.path("nocg.toml");
        std::fs::write(
            &no_cgroup,
            "extends = \"default\"\n[cgroup]\nmode = \"off\"\n",
        )
        .unwrap();
        for (id, profile) in [
            ("nocg", no_cgroup.display().to_string()),
            ("killed", "default".into()),
        ] {
            let seen = p.path(&format!("{id}.json"));
            let mut cfg = config(&["sh", "-c", "echo ran"]);
            cfg["annotations"]["dev.nixcell.profile"] = profile.into();
            // The hook runs inside `create` (its parent) before the state is saved.
            cfg["hooks"] = serde_json::json!({"prestart": [hook("p",
                &format!("cat > {}; kill -9 $PPID", seen.display()))]});
            let (st, err) = p.try_create(id, &cfg);
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&st),
                Some(libc::SIGKILL),
                "{mode:?}: {err}"
            );
            let pid1 = pid_in(&seen);
            let end = wait_exit(pid1, 10);
            if id == "nocg" {
                assert_eq!(
                    end,
                    Some(125),
                    "{mode:?}: PID 1 ends once its creator is gone"
                );
            } else {
                // 137: a concurrent run removed its (stale) cgroup first.
                assert!(matches!(end, Some(125 | 137)), "{mode:?}: {end:?}");
                // Its cgroup is a stale run's, which the next run with a cgroup removes.
                ok(&sh(mode, &["--pids", "20"], "true"), "a run with a cgroup");
                let base = PathBuf::from(format!("/sys/fs/cgroup/pids/nixcell/user-{uid}"));
                let left: Vec<String> = std::fs::read_dir(&base)
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("oci-killed-{pid1}-")))
                    .collect();
                assert!(
                    left.is_empty(),
                    "{mode:?}: {left:?} left in {}",
                    base.display()
                );
            }
            assert_eq!(p.out(id), "", "{mode:?}: the command never ran");
            ok(&p.run(&["delete", "--force", id]), "delete --force");
        }
        assert_empty_dir(&p.path("state"), "after delete --force");
    }
}

#[test]
fn hooks_run_in_order_with_the_state_and_a_failing_prestart_fails_create() {
    for mode in MODES {
        let p = Pod::new(mode);
        let log = p.path("hooks.log");
        let rec = format!(
            "printf '%s ' \"$NAME\" >> {0}; cat >> {0}; echo >> {0}",
            log.display()
        );
        // Running long enough for poststart to see it running.
        let mut cfg = config(&["sleep", "2"]);
        cfg["hooks"] = serde_json::json!({
            "prestart": [hook("prestart", &rec)],
            "createRuntime": [hook("createRuntime", &rec)],
            "poststart": [hook("poststart", &rec), hook("failing", "exit 4")],
            "poststop": [hook("poststop", &rec)],
        });
        let pid = p.create("h", &cfg);
        ok(
            &p.run(&["start", "h"]),
            "start (a failing poststart is a warning)",
        );
        assert_eq!(wait_exit(pid, 10), Some(0));
        ok(&p.run(&["delete", "h"]), "delete");
        let lines: Vec<(String, serde_json::Value)> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| {
                let (n, j) = l.split_once(' ').unwrap();
                (n.to_string(), serde_json::from_str(j).unwrap())
            })
            .collect();
        let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["prestart", "createRuntime", "poststart", "poststop"],
            "{mode:?}"
        );
        let status: Vec<&str> = lines
            .iter()
            .map(|(_, s)| s["status"].as_str().unwrap())
            .collect();
        assert_eq!(status, ["creating", "creating", "running", "stopped"]);
        for (n, s) in &lines[..3] {
            assert_eq!(s["pid"], pid, "{n}: {s}");
            assert_eq!(s["id"], "h");
        }

        let seen = p.path("seen.json");
        cfg["hooks"] = serde_json::json!({"prestart": [hook("p",
            &format!("cat > {}; echo no network for you >&2; exit 3", seen.display()))]});
        let (st, err) = p.try_create("bad", &cfg);
        assert_eq!(st.code(), Some(1), "{mode:?}");
        assert!(
            err.contains("hook prestart[0] /bin/sh: exit status 3")
                && err.contains("no network for you"),
            "{err}"
        );
        assert_eq!(
            wait_exit(pid_in(&seen), 5),
            Some(128 + libc::SIGKILL),
            "{mode:?}: the container of a failed create is gone"
        );
        assert_empty_dir(&p.path("state"), "after a failed prestart");
    }
}

/// A profile that allows some network (a joined network namespace needs one).
fn net_profile(p: &Pod) -> String {
    let f = p.path("pod.toml");
    std::fs::write(
        &f,
        "extends = \"default\"\n[network]\nallow = [\"example.com:443\"]\n\
         [landlock]\nallow_ports = [8080]\n",
    )
    .unwrap();
    f.display().to_string()
}

fn joining(args: &[&str], pid: i32, kinds: &[(&str, &str)], profile: &str) -> serde_json::Value {
    let mut c = config(args);
    c["hostname"] = "other".into();
    c["annotations"]["dev.nixcell.profile"] = profile.into();
    let mut ns: Vec<serde_json::Value> = kinds
        .iter()
        .map(|(k, f)| serde_json::json!({"type": k, "path": format!("/proc/{pid}/ns/{f}")}))
        .collect();
    // The kinds not joined are the container's own (listed: a cell shares none).
    for own in ["mount", "pid", "network", "ipc", "uts"] {
        if !kinds.iter().any(|(k, _)| *k == own) {
            ns.push(serde_json::json!({ "type": own }));
        }
    }
    c["linux"] = serde_json::json!({ "namespaces": ns });
    c
}

#[test]
fn a_container_joins_the_pods_network_ipc_and_uts() {
    let p = Pod::new(Mode::Root);
    let profile = net_profile(&p);
    let with_profile = |args: &[&str]| {
        let mut c = config(args);
        c["annotations"]["dev.nixcell.profile"] = profile.clone().into();
        c
    };
    let pause = p.create(
        "pause",
        &with_profile(&["sh", "-c", "while true; do echo pong | nc -l -p 8080; done"]),
    );
    ok(&p.run(&["start", "pause"]), "start pause");
    // A SysV segment in the pod's ipc namespace, made from the host.
    let ipc = Command::new("nsenter")
        .arg(format!("--ipc=/proc/{pause}/ns/ipc"))
        .args(["ipcmk", "-M", "4096"])
        .output()
        .unwrap();
    ok(&ipc, "ipcmk in the pod's ipc namespace");
    let all = [("network", "net"), ("ipc", "ipc"), ("uts", "uts")];
    let script = "hostname; grep -c . /proc/sysvipc/shm; \
                  for i in 1 2 3 4 5 6 7 8 9 10; do nc 127.0.0.1 8080 </dev/null && break; sleep 0.3; done";
    let app = p.create(
        "app",
        &joining(&["sh", "-c", script], pause, &all, &profile),
    );
    ok(&p.run(&["start", "app"]), "start app");
    assert_eq!(wait_exit(app, 20), Some(0));
    let out = p.out("app");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["pod", "2", "pong"],
        "the pod's host name, its SysV segment (heading + 1) and its loopback listener: {out}"
    );
    // The same command in namespaces of its own sees none of the pod's.
    let mut own = with_profile(&["sh", "-c", script]);
    own["hostname"] = "other".into();
    let alone = p.create("alone", &own);
    ok(&p.run(&["start", "alone"]), "start alone");
    assert!(wait_exit(alone, 20).is_some());
    assert_eq!(p.out("alone").lines().collect::<Vec<_>>(), ["other", "1"]);
    // `exec` in a container that joined the pod enters the pod's namespaces too.
    let held = p.create("held", &joining(&["sleep", "100"], pause, &all, &profile));
    ok(&p.run(&["start", "held"]), "start held");
    let o = p.run(&[
        "exec",
        "held",
        "sh",
        "-c",
        "hostname; nc 127.0.0.1 8080 </dev/null",
    ]);
    assert_eq!(ok(&o, "exec").lines().collect::<Vec<_>>(), ["pod", "pong"]);
    ok(&p.run(&["delete", "--force", "held"]), "delete held");
    assert_eq!(wait_exit(held, 10), Some(128 + libc::SIGKILL));
    for id in ["app", "alone"] {
        ok(&p.run(&["delete", id]), "delete");
    }

    // Refused, and nothing left: a network namespace under a profile with no network,
    // a namespace of another kind than named, a file that is no namespace, a pid join.
    for (cfg, word) in [
        (
            joining(&["true"], pause, &all[..1], "default"),
            "allows no network",
        ),
        (
            joining(&["true"], pause, &[("uts", "ipc")], &profile),
            "is not a namespace of type uts",
        ),
        (
            {
                let mut c = joining(&["true"], pause, &[], &profile);
                // [mount, pid, network, ipc, uts]: the ipc one at a file.
                c["linux"]["namespaces"][3]["path"] = "/etc/hostname".into();
                c
            },
            "is not a namespace of type ipc",
        ),
        (
            joining(&["true"], pause, &[("pid", "pid")], &profile),
            "joining the pid namespace",
        ),
    ] {
        let (st, err) = p.try_create("x", &cfg);
        assert_eq!(st.code(), Some(1), "{word}");
        assert!(err.contains(word), "{word}: {err}");
    }
    ok(&p.run(&["delete", "--force", "pause"]), "delete pause");
    assert_eq!(wait_exit(pause, 10), Some(128 + libc::SIGKILL));
    assert_empty_dir(&p.path("state"), "after the pod");
}

/// Rootless, the caller has no CAP_SYS_ADMIN over another cell's namespaces: the join
/// is refused at the set-up stage that tried it, and nothing is left.
#[test]
fn a_rootless_join_without_the_capability_is_refused_clearly() {
    let p = Pod::new(Mode::Rootless);
    let pause = p.create("pause", &config(&["sleep", "100"]));
    ok(&p.run(&["start", "pause"]), "start pause");
    // PID 1 is not dumpable: its child's namespaces (the same ones) are named.
    let child = std::fs::read_to_string(format!("/proc/{pause}/task/{pause}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<i32>()
        .unwrap();
    let (st, err) = p.try_create(
        "app",
        &joining(&["true"], child, &[("uts", "uts")], "default"),
    );
    assert_eq!(st.code(), Some(1));
    assert!(
        err.contains("join-namespaces") && err.contains("CAP_SYS_ADMIN"),
        "{err}"
    );
    ok(&p.run(&["delete", "--force", "pause"]), "delete pause");
    assert_eq!(wait_exit(pause, 10), Some(128 + libc::SIGKILL));
    assert_empty_dir(&p.path("state"), "after the refusal");
}

/// The cgroup directory of `pid` in the v1 hierarchy of `ctrl`, from /proc/PID/cgroup.
fn cgroup_of(pid: i32, ctrl: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|x| x == ctrl))
        })
        .unwrap();
    let rel = line.splitn(3, ':').nth(2).unwrap().trim_start_matches('/');
    Path::new("/sys/fs/cgroup").join(ctrl).join(rel)
}

#[test]
fn linux_cgroups_path_places_the_container_with_its_limits() {
    let unique = format!("nixcell-oci-pod-{}", std::process::id());
    for (mode, path) in [
        (Mode::Root, format!("/{unique}/c1")),
        (Mode::Rootless, format!("{unique}/c1")),
    ] {
        let p = Pod::new(mode);
        let mut cfg = config(&["sleep", "100"]);
        cfg["linux"] = serde_json::json!({"cgroupsPath": path,
            "resources": {"memory": {"limit": 100663296}, "pids": {"limit": 40}}});
        let pid = p.create("cg", &cfg);
        ok(&p.run(&["start", "cg"]), "start");
        let base = match mode {
            Mode::Root => PathBuf::from("/"),
            Mode::Rootless => PathBuf::from(format!("nixcell/user-{}", test_user_ids().0)),
        };
        let want = |ctrl: &str| {
            Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join(base.strip_prefix("/").unwrap_or(&base))
                .join(path.trim_start_matches('/'))
        };
        assert_eq!(
            cgroup_of(pid, "pids"),
            want("pids"),
            "{mode:?}: PID 1's cgroup"
        );
        assert_eq!(
            std::fs::read_to_string(want("pids").join("pids.max"))
                .unwrap()
                .trim(),
            "40"
        );
        assert_eq!(
            std::fs::read_to_string(want("memory").join("cell/memory.limit_in_bytes"))
                .unwrap()
                .trim(),
            "100663296",
            "{mode:?}: the command's memory limit"
        );
        ok(&p.run(&["delete", "--force", "cg"]), "delete");
        assert_eq!(wait_exit(pid, 10), Some(128 + libc::SIGKILL));
        for ctrl in ["cpu", "memory", "pids"] {
            assert!(
                !want(ctrl).exists(),
                "{mode:?}: {} left",
                want(ctrl).display()
            );
            // The parent was made for the test (the runtime leaves parents, as runc).
            let _ = std::fs::remove_dir(want(ctrl).parent().unwrap());
        }
    }
    let p = Pod::new(Mode::Root);
    let mut cfg = config(&["true"]);
    cfg["linux"] = serde_json::json!({"cgroupsPath": "system.slice:nixcell:x"});
    let (st, err) = p.try_create("sd", &cfg);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("systemd form"), "{err}");
    assert!(
        std::fs::read_dir(p.path("state")).map_or(true, |mut d| d.next().is_none()),
        "nothing made"
    );
}

/// Rootless as a rootless engine runs its runtime: root of a user namespace of its
/// own, joining a namespace that user namespace owns (a pod's, made by the engine).
#[test]
fn rootless_in_the_engines_user_namespace_joins_its_namespaces() {
    let p = Pod::new(Mode::Rootless);
    let mut cfg = config(&["hostname"]);
    cfg["hostname"] = "other".into();
    cfg["linux"] = serde_json::json!({"namespaces": [{"type": "uts", "path": "/proc/INNER/ns/uts"},
            {"type": "mount"}, {"type": "pid"}, {"type": "network"}, {"type": "ipc"}]});
    let b = p.bundle("in", &cfg);
    std::fs::rename(b.join("config.json"), b.join("config.in")).unwrap();
    let script = r#"
        bin=$1 root=$2 b=$3
        unshare -u sh -c 'hostname inner; exec sleep 30' &
        inner=$!
        sleep 0.5
        sed "s|INNER|$inner|" "$b/config.in" > "$b/config.json"
        "$bin" oci --root "$root" create --bundle "$b" c > "$b/out" 2> "$b/err" || { cat "$b/err"; exit 3; }
        "$bin" oci --root "$root" start c || exit 4
        i=0; while [ ! -s "$b/out" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        cat "$b/out"
        "$bin" oci --root "$root" delete --force c
        kill $inner
    "#;
    let o = as_test_user()
        .args(["unshare", "-Ur", "sh", "-c", script, "sh", bin()])
        .arg(p.path("state"))
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(
        ok(&o, "create in the engine's user namespace").trim(),
        "inner"
    );
}
