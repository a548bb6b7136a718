//! `nixcell oci` (and the binary as `nixcell-runc`) driven directly as an OCI engine
//! drives it: bundles made here, the container's PID 1 waited for as a shim waits for
//! it (this test process is a child subreaper). Root and rootless.

mod common;
use common::*;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// One container's world: a state root, a bundle, a file the container's stdout and
/// stderr go to.
struct Oci {
    mode: Mode,
    dir: tempfile::TempDir,
}

fn subreaper() {
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
}

impl Oci {
    fn new(mode: Mode, config: serde_json::Value) -> Oci {
        subreaper();
        let dir = workdir(mode);
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let o = Oci { mode, dir };
        o.write_config(config);
        o
    }

    fn write_config(&self, config: serde_json::Value) {
        let bundle = self.bundle();
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), config_json(&config)).unwrap();
        if self.mode == Mode::Rootless {
            chown_to_test_user(self.dir.path());
        }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn out(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out")).unwrap_or_default()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = nixcell(self.mode);
        c.arg("oci").arg("--root").arg(self.root()).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// `create` with stdout and stderr of the container on the `out` file; PID 1.
    fn create(&self, id: &str) -> i32 {
        self.create_with(&[], id)
    }

    /// `create` after the global options `globals` (e.g. `--log FILE`).
    fn create_with(&self, globals: &[&str], id: &str) -> i32 {
        let out = std::fs::File::create(self.dir.path().join("out")).unwrap();
        let pid_file = self.dir.path().join(format!("{id}.pid"));
        let o = self
            .cmd(globals)
            .args(["create", "--bundle", path_str(&self.bundle()), "--pid-file"])
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .unwrap();
        assert!(o.success(), "create {id}: {o:?} {}", self.out());
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// `create` of `config` fails (exit 1) naming `word`, and leaves nothing in the state.
    fn assert_refused(&self, config: serde_json::Value, word: &str) {
        self.write_config(config);
        let o = self.run(&["create", "--bundle", path_str(&self.bundle()), "x"]);
        assert_eq!(o.status.code(), Some(1), "{word}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains(word),
            "{word}: {}",
            text(&o.stderr)
        );
        assert_empty_dir(&self.root(), word);
    }

    fn state(&self, id: &str) -> serde_json::Value {
        let o = self.run(&["state", id]);
        serde_json::from_str(&ok(&o, "state")).unwrap()
    }
}

/// A config.json running `args` in the busybox closure (root.path is not used).
fn config(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": args, "cwd": "/", "env": ["FOO=bar"], "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "hostname": "box",
        "annotations": {"dev.nixcell.closure": path_str(&busybox())},
    })
}

/// Waits for PID 1 (our child since the init stage left) and returns its exit status
/// (128+N when it was killed by signal N, as a shim reports it).
fn wait_exit(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid on a child of ours.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid {pid}: {}", std::io::Error::last_os_error());
    if libc::WIFSIGNALED(status) {
        return 128 + libc::WTERMSIG(status);
    }
    libc::WEXITSTATUS(status)
}

#[test]
fn lifecycle_state_and_exit_status() {
    for mode in MODES {
        let c = Oci::new(
            mode,
            config(&["sh", "-c", "echo out=$FOO:$(hostname):$(id -u); exit 7"]),
        );
        let pid = c.create("life");
        let st = c.state("life");
        assert_eq!(st["status"], "created", "{mode:?}: {st}");
        assert_eq!(st["pid"], pid);
        assert_eq!(st["ociVersion"], "1.0.2");
        assert_eq!(st["bundle"], path_str(&c.bundle()));
        assert_eq!(
            st["annotations"]["dev.nixcell.closure"],
            path_str(&busybox())
        );
        // Nothing of the command has run before start.
        assert_eq!(c.out(), "", "{mode:?}");
        ok(&c.run(&["start", "life"]), "start");
        assert_eq!(
            wait_exit(pid),
            7,
            "{mode:?}: the command's status is PID 1's"
        );
        assert_eq!(c.out().trim(), "out=bar:box:0", "{mode:?}");
        let st = c.state("life");
        assert_eq!(st["status"], "stopped", "{mode:?}: {st}");
        assert!(st.get("pid").is_none(), "{st}");
        let again = c.run(&["start", "life"]);
        assert_eq!(again.status.code(), Some(1), "{mode:?}: a second start");
        ok(&c.run(&["delete", "life"]), "delete");
        assert_empty_dir(&c.root(), "state root after delete");
        let gone = c.run(&["state", "life"]);
        assert!(
            text(&gone.stderr).contains("does not exist"),
            "{}",
            text(&gone.stderr)
        );
    }
}

#[test]
fn kill_reaches_the_command_and_delete_force_cleans_up() {
    for mode in MODES {
        let c = Oci::new(mode, config(&["sleep", "100"]));
        let pid = c.create("k");
        ok(&c.run(&["start", "k"]), "start");
        assert_eq!(c.state("k")["status"], "running");
        let ps = ok(&c.run(&["ps", "--format", "json", "k"]), "ps");
        let pids: Vec<i32> = serde_json::from_str(&ps).unwrap();
        assert!(
            pids.contains(&pid) && pids.len() == 2,
            "{mode:?}: ps {pids:?}"
        );
        let refused = c.run(&["delete", "k"]);
        assert_eq!(
            refused.status.code(),
            Some(1),
            "delete of a running container"
        );
        ok(&c.run(&["kill", "k", "TERM"]), "kill");
        assert_eq!(wait_exit(pid), 128 + libc::SIGTERM, "{mode:?}");
        assert_eq!(c.state("k")["status"], "stopped");
        let dead = c.run(&["kill", "k", "KILL"]);
        assert_eq!(dead.status.code(), Some(1), "kill of a stopped container");
        ok(&c.run(&["delete", "k"]), "delete");

        // --force: a running container is killed, its state and cgroup removed.
        let pid = c.create("f");
        ok(&c.run(&["start", "f"]), "start");
        ok(&c.run(&["delete", "--force", "f"]), "delete --force");
        assert_eq!(wait_exit(pid), 128 + libc::SIGKILL);
        assert_empty_dir(&c.root(), "state root after delete --force");
    }
}

#[test]
fn a_created_container_can_be_deleted_and_killed_before_start() {
    let c = Oci::new(Mode::Root, config(&["sh", "-c", "echo ran"]));
    let pid = c.create("held");
    ok(&c.run(&["delete", "held"]), "delete of a created container");
    assert_eq!(wait_exit(pid), 128 + libc::SIGKILL);
    let pid = c.create("held2");
    ok(&c.run(&["kill", "held2", "SIGTERM"]), "kill");
    assert_eq!(wait_exit(pid), 128 + libc::SIGTERM);
    assert_eq!(c.out(), "", "the command never ran");
    ok(&c.run(&["delete", "held2"]), "delete");
}

/// The run cgroup a container lives in is named after `create`, which exits: a later
/// `nixcell run` must not take it for a stale run's and kill the container with it.
#[test]
fn a_later_run_does_not_reap_the_containers_cgroup() {
    let mut cfg = config(&["sh", "-c", "sleep 2; echo survived"]);
    cfg["linux"] = serde_json::json!({"resources": {"pids": {"limit": 50}}});
    let c = Oci::new(Mode::Root, cfg);
    let pid = c.create("cg");
    ok(&c.run(&["start", "cg"]), "start");
    ok(
        &sh(Mode::Root, &["--pids", "20"], "true"),
        "a run with a cgroup",
    );
    assert_eq!(wait_exit(pid), 0);
    assert_eq!(c.out().trim(), "survived");
    ok(&c.run(&["delete", "cg"]), "delete");
}

#[test]
fn resources_and_layers_apply_inside() {
    for mode in MODES {
        let mut cfg = config(&[
            "sh",
            "-c",
            "grep CapEff /proc/self/status; ls /nix/store | wc -l; \
             cat /etc/shadow 2>/dev/null || echo no-shadow; \
             for i in $(seq 40); do sleep 3 & done 2>&1 | grep -c -i fork; wait",
        ]);
        cfg["linux"] = serde_json::json!({"resources": {"pids": {"limit": 16}}});
        let c = Oci::new(mode, cfg);
        let pid = c.create("lim");
        ok(&c.run(&["start", "lim"]), "start");
        wait_exit(pid);
        let out = c.out();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().nth(1),
            Some("0000000000000000"),
            "{mode:?}: {out}"
        );
        let closure = Command::new("nix-store")
            .arg("-qR")
            .arg(busybox())
            .output()
            .unwrap();
        assert_eq!(
            lines[1].trim(),
            text(&closure.stdout).lines().count().to_string(),
            "{mode:?}: the store is exactly the closure"
        );
        assert_eq!(lines[2], "no-shadow", "{mode:?}");
        let failed: u32 = lines[3].trim().parse().unwrap();
        assert!(
            failed > 0,
            "{mode:?}: pids.limit 16 let 40 processes fork: {out}"
        );
        ok(&c.run(&["delete", "lim"]), "delete");
    }
}

#[test]
fn refusals_are_clear_and_leave_nothing() {
    let c = Oci::new(Mode::Root, config(&["true"]));
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            {
                let mut v = config(&["true"]);
                v["annotations"] = serde_json::json!({});
                v
            },
            "root.path",
        ),
        (
            {
                let mut v = config(&["true"]);
                v["linux"] =
                    serde_json::json!({"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]});
                v
            },
            "/proc/1/ns/pid",
        ),
        (
            {
                let mut v = config(&["true"]);
                v["linux"] =
                    serde_json::json!({"namespaces": [{"type": "mount"}, {"type": "pid"}]});
                v
            },
            "linux.namespaces: no network, ipc, uts namespace",
        ),
        (
            {
                let mut v = config(&["true"]);
                v["mounts"] = serde_json::json!([{"destination": "/host", "type": "bind", "source": "/", "options": ["remount"]}]);
                v
            },
            "/host",
        ),
        (
            {
                let mut v = config(&["true"]);
                v["hooks"] = serde_json::json!({"createContainer": [{"path": "/bin/true"}]});
                v
            },
            "hooks.createContainer",
        ),
        (
            {
                let mut v = config(&["true"]);
                v["annotations"]["dev.nixcell.profile"] = "no-such-profile".into();
                v
            },
            "no-such-profile",
        ),
    ];
    for (cfg, word) in cases {
        c.assert_refused(cfg, word);
    }
    c.write_config(config(&["true"]));
    for (args, word) in [
        (vec!["create", "../x"], "invalid container id"),
        (vec!["--systemd-cgroup", "state", "x"], "--systemd-cgroup"),
        (vec!["state", "nope"], "does not exist"),
    ] {
        let o = c.run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            text(&o.stderr).contains(word),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
    // What a killed `create` leaves (a directory, no state): gone with --force.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(c.root().join("half"))
        .unwrap();
    assert_eq!(c.run(&["delete", "half"]).status.code(), Some(1));
    ok(
        &c.run(&["delete", "--force", "half"]),
        "delete --force of a half-made container",
    );
    assert_empty_dir(&c.root(), "after delete --force");
    let pid = c.create("dup");
    let o = c.run(&["create", "--bundle", path_str(&c.bundle()), "dup"]);
    assert!(
        text(&o.stderr).contains("exists already"),
        "{}",
        text(&o.stderr)
    );
    ok(&c.run(&["delete", "--force", "dup"]), "delete");
    wait_exit(pid);
}

#[test]
fn answers_as_nixcell_runc_with_a_json_log() {
    let c = Oci::new(Mode::Root, config(&["true"]));
    let link = c.dir.path().join("nixcell-runc");
    std::os::unix::fs::symlink(bin(), &link).unwrap();
    let v = Command::new(&link).arg("--version").output().unwrap();
    assert!(ok(&v, "--version").starts_with("nixcell-runc version "));
    let f = Command::new(&link).arg("features").output().unwrap();
    let feat: serde_json::Value = serde_json::from_str(&ok(&f, "features")).unwrap();
    assert_eq!(feat["ociVersionMax"], "1.0.2");
    let log = c.dir.path().join("log.json");
    let o = Command::new(&link)
        .args(["--root", path_str(&c.root()), "--log", path_str(&log)])
        .args(["--log-format", "json", "start", "missing"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let line = std::fs::read_to_string(&log).unwrap();
    let entry: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(entry["level"], "error");
    assert!(
        entry["msg"].as_str().unwrap().contains("missing"),
        "{entry}"
    );
    assert!(entry["time"].is_string());
}

/// A user or cgroup namespace linux.namespaces leaves out is the container's own, not
/// the runtime's (other kinds are refused): a
/// warning in the runtime log names them. A slave root propagation (of a closure
/// root here) has no master to receive from: said in the log too.
#[test]
fn namespaces_left_out_are_the_cells_own_and_named_in_the_log() {
    let kinds = ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"];
    let script = format!(
        "for k in {}; do readlink /proc/self/ns/$k; done",
        kinds.join(" ")
    );
    for mode in MODES {
        let mut cfg = config(&["sh", "-c", &script]);
        cfg["linux"] = serde_json::json!({"namespaces": [{"type": "mount"}, {"type": "pid"},
            {"type": "network"}, {"type": "ipc"}, {"type": "uts"}],
            "rootfsPropagation": "rslave"});
        let c = Oci::new(mode, cfg);
        let log = c.dir.path().join("runtime.log");
        let pid = c.create_with(&["--log", path_str(&log)], "c");
        ok(&c.run(&["start", "c"]), "start");
        assert_eq!(wait_exit(pid), 0, "{mode:?}: {}", c.out());
        ok(&c.run(&["delete", "c"]), "delete");
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(
            logged.contains("warning config.json: linux.namespaces leaves out user, cgroup: not shared with the runtime, the cell has its own"),
            "{mode:?}: {logged}"
        );
        assert!(
            logged.contains("linux.rootfsPropagation rslave: the root has no master"),
            "{mode:?}: {logged}"
        );
        let inside: Vec<String> = c.out().lines().map(String::from).collect();
        assert_eq!(inside.len(), kinds.len(), "{mode:?}: {inside:?}");
        for (k, seen) in kinds.iter().zip(&inside) {
            let host = std::fs::read_link(format!("/proc/self/ns/{k}")).unwrap();
            assert_ne!(
                host.to_str().unwrap(),
                seen,
                "{mode:?}: the container's {k} namespace is the runtime's"
            );
        }
    }
}

/// Started as root, the engine's uid/gid mappings are the cell's user namespace:
/// process.user 1000:1000 under a range from host 300000 runs as host 301000:301000
/// (what a bind mount the engine chowned for it sees) and another id of the range
/// is seen as itself; `exec --user` takes another user of the ranges. A range reaching host root, one list without the
/// other and a user outside the ranges are refused, nothing left.
#[test]
fn uid_mappings_choose_the_host_identity_and_never_host_root() {
    let maps = |host: u32| serde_json::json!([{"containerID": 0, "hostID": host, "size": 65536}]);
    let mut cfg = config(&[
        "sh",
        "-c",
        "id -u; id -G; touch /w/made; cat /proc/self/uid_map /proc/self/gid_map; \
         stat -c '%u:%g' /w/other",
    ]);
    cfg["process"]["user"] =
        serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 70000]});
    let c = Oci::new(Mode::Root, serde_json::Value::Null);
    let w = c.dir.path().join("w");
    std::fs::create_dir(&w).unwrap();
    std::os::unix::fs::chown(&w, Some(301000), Some(301000)).unwrap();
    // Sticky and open to all: another user of the ranges writes there too (exec below).
    std::fs::set_permissions(&w, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    // Another id of the ranges (a service user of the image, say) is seen as itself.
    std::fs::write(w.join("other"), "").unwrap();
    std::os::unix::fs::chown(w.join("other"), Some(300033), Some(300034)).unwrap();
    cfg["mounts"] = serde_json::json!([{"destination": "/w", "type": "bind",
        "source": path_str(&w), "options": ["rbind", "rw"]}]);
    let with = |uid: serde_json::Value, gid: serde_json::Value| {
        let mut v = cfg.clone();
        v["linux"] = serde_json::json!({"uidMappings": uid, "gidMappings": gid,
            "namespaces": [{"type": "user"}, {"type": "mount"}, {"type": "pid"},
                {"type": "network"}, {"type": "ipc"}, {"type": "uts"}]});
        v
    };
    let gids = serde_json::json!([{"containerID": 0, "hostID": 300000, "size": 65536},
        {"containerID": 70000, "hostID": 400000, "size": 1}]);
    c.write_config(with(maps(300000), gids));
    let log = c.dir.path().join("runtime.log");
    let pid = c.create_with(&["--log", path_str(&log)], "m");
    ok(&c.run(&["start", "m"]), "start");
    assert_eq!(wait_exit(pid), 0, "{}", c.out());
    ok(&c.run(&["delete", "m"]), "delete");
    let out: Vec<String> = c
        .out()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        out,
        [
            "1000",
            "1000 5 70000",
            "0 300000 65536",
            "0 300000 65536",
            "70000 400000 1",
            "33:34"
        ],
        "{}",
        c.out()
    );
    let made = std::fs::metadata(w.join("made")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((made.uid(), made.gid()), (301000, 301000));
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("process.user 1000:1000 is host 301000:301000")
    );
    // exec as another user of the ranges; one outside them is refused.
    let mut long = with(maps(300000), maps(300000));
    long["process"]["args"] = serde_json::json!(["sleep", "30"]);
    long["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    c.write_config(long);
    let pid = c.create("l");
    ok(&c.run(&["start", "l"]), "start");
    let as_other = ok(
        &c.run(&[
            "exec",
            "--user",
            "1001:1002",
            "l",
            "sh",
            "-c",
            "id -u; id -G; touch /w/by-1001",
        ]),
        "exec --user 1001:1002",
    );
    assert_eq!(
        as_other.split_whitespace().collect::<Vec<_>>(),
        ["1001", "1002"]
    );
    let made = std::fs::metadata(w.join("by-1001")).unwrap();
    assert_eq!((made.uid(), made.gid()), (301001, 301002));
    let outside = c.run(&["exec", "--user", "70000:0", "l", "true"]);
    assert!(
        text(&outside.stderr).contains("exec: user 70000:0: not mapped"),
        "{}",
        text(&outside.stderr)
    );
    ok(&c.run(&["delete", "--force", "l"]), "delete");
    assert_eq!(wait_exit(pid), 128 + libc::SIGKILL);
    for (v, word) in [
        (
            with(
                serde_json::json!([{"containerID": 0, "hostID": 0, "size": 65536}]),
                maps(300000),
            ),
            "uidMappings[0]: maps host id 0 (root)",
        ),
        (
            with(
                maps(300000),
                serde_json::json!([{"containerID": 1, "hostID": 0, "size": 1}]),
            ),
            "gidMappings[0]: maps host id 0 (root)",
        ),
        (with(maps(300000), serde_json::json!([])), "needs both"),
        (
            with(
                serde_json::json!([{"containerID": 0, "hostID": 300000, "size": 1000}]),
                maps(300000),
            ),
            "process.user.uid 1000 is not in linux.uidMappings",
        ),
        (
            with(maps(300000), maps(300000)),
            "process.user.additionalGids entry 70000 is not in linux.gidMappings",
        ),
        (
            with(
                serde_json::json!([{"containerID": 0, "hostID": 4294967295u32, "size": 2}]),
                maps(300000),
            ),
            "overflowing range",
        ),
    ] {
        c.assert_refused(v, word);
    }
}

#[test]
fn exec_runs_inside_under_the_same_layers() {
    for mode in MODES {
        let mut cfg = config(&["sleep", "100"]);
        cfg["linux"] = serde_json::json!({"resources": {"pids": {"limit": 30}}});
        cfg["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 300, "hard": 400}]);
        let c = Oci::new(mode, cfg);
        let pid = c.create("ex");
        let early = c.run(&["exec", "ex", "true"]);
        assert_eq!(
            early.status.code(),
            Some(255),
            "{mode:?}: exec before start"
        );
        ok(&c.run(&["start", "ex"]), "start");
        // Same hostname, same pid namespace (PID 1 is the cell's), no capability,
        // the host's files out of reach.
        let o = c.run(&[
            "exec",
            "ex",
            "sh",
            "-c",
            "echo $(hostname) $FOO; grep CapEff /proc/self/status; \
             cat /proc/1/cmdline | tr '\\0' ' '; echo; \
             ls /root /etc/shadow 2>&1 | grep -c 'No such'; exit 6",
        ]);
        assert_eq!(o.status.code(), Some(6), "{mode:?}: {}", text(&o.stderr));
        let out = text(&o.stdout);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "box bar", "{mode:?}: {out}");
        assert!(lines[1].ends_with("0000000000000000"), "{mode:?}: {out}");
        assert!(
            lines[2].starts_with("nixcell-init"),
            "{mode:?}: PID 1 is the cell's: {out}"
        );
        assert_eq!(lines[3], "2", "{mode:?}: {out}");
        // A --process file's rlimits are its own, as create's are: above the default
        // profile's nofile 1024 (config.json named RLIMIT_NOFILE), never a core dump;
        // without any, the container's stay.
        let limits = "echo $(ulimit -Sn) $(ulimit -Hn) $(ulimit -Sc) $(ulimit -Hc)";
        let o = c.run(&["exec", "ex", "sh", "-c", limits]);
        assert_eq!(ok(&o, "exec").trim(), "300 400 0 0", "{mode:?}");
        let proc_json = c.dir.path().join("process.json");
        for (rl, want) in [
            (
                serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 200, "hard": 500}]),
                "200 500 0 0",
            ),
            (
                serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 1100, "hard": 1500},
                    {"type": "RLIMIT_CORE", "soft": 100, "hard": 100}]),
                "1100 1500 0 0",
            ),
        ] {
            std::fs::write(
                &proc_json,
                serde_json::json!({"args": ["sh", "-c", limits], "cwd": "/",
                    "user": {"uid": 0, "gid": 0}, "rlimits": rl})
                .to_string(),
            )
            .unwrap();
            let o = c.run(&["exec", "--process", path_str(&proc_json), "ex"]);
            assert_eq!(ok(&o, "exec --process").trim(), want, "{mode:?}: {rl}");
        }
        std::fs::write(
            &proc_json,
            serde_json::json!({"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "rlimits": [{"type": "RLIMIT_NOPE", "soft": 1, "hard": 1}]})
            .to_string(),
        )
        .unwrap();
        let o = c.run(&["exec", "--process", path_str(&proc_json), "ex"]);
        assert!(
            !o.status.success()
                && text(&o.stderr)
                    .contains("process.json: process.rlimits: unknown type \"RLIMIT_NOPE\""),
            "{mode:?}: {}",
            text(&o.stderr)
        );
        // --process, --detach, --pid-file: the process runs on, in the container.
        std::fs::write(
            &proc_json,
            serde_json::json!({"args": ["sleep", "50"], "cwd": "/tmp", "env": ["X=1"],
                "user": {"uid": 0, "gid": 0}})
            .to_string(),
        )
        .unwrap();
        let pid_file = c.dir.path().join("exec.pid");
        let mut cmd = c.cmd(&["exec", "--detach", "--process", path_str(&proc_json)]);
        cmd.arg("--pid-file").arg(&pid_file).arg("ex");
        // Its stdio is ours: not a pipe that would stay open as long as it runs.
        let st = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "{mode:?}: exec --detach: {st:?}");
        let epid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let ps = ok(&c.run(&["ps", "--format", "json", "ex"]), "ps");
        let pids: Vec<i32> = serde_json::from_str(&ps).unwrap();
        assert!(pids.contains(&epid), "{mode:?}: ps {pids:?} lacks {epid}");
        let missing = c.run(&["exec", "ex", "no-such-command"]);
        assert_eq!(missing.status.code(), Some(255));
        assert!(
            text(&missing.stderr).contains("not found"),
            "{}",
            text(&missing.stderr)
        );
        let other = c.run(&["exec", "--user", "1000", "ex", "true"]);
        assert!(
            text(&other.stderr).contains("not mapped: the container's identities are 0:0 only"),
            "{}",
            text(&other.stderr)
        );
        // The exec'd process dies with the container. It is our child (a subreaper's):
        // reaped first, as a pid namespace's PID 1 ends only once all of it is reaped.
        ok(&c.run(&["delete", "--force", "ex"]), "delete");
        assert_eq!(
            wait_exit(epid),
            128 + libc::SIGKILL,
            "{mode:?}: the exec'd process"
        );
        assert_eq!(wait_exit(pid), 128 + libc::SIGKILL);
    }
}
