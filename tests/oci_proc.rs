//! The container's process as config.json asks for it, seen from inside: rlimits,
//! a linux.seccomp filter stacked under nixcell's, umask, oomScoreAdj, sysctls of
//! the container's own namespaces; refusals and the runtime log's warnings for what
//! is not granted. Root and rootless.

mod common;
use common::*;

/// A config.json running `sh -c script` in the busybox closure.
fn config(script: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh", "-c", script], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "annotations": {"dev.nixcell.closure": path_str(&busybox())},
    })
}

/// create, start, wait, delete (`common::oci_run`), in an image root of busybox for a
/// config without the closure annotation.
fn run(mode: Mode, cfg: &serde_json::Value) -> Result<OciRan, String> {
    oci_run(mode, cfg, true)
}

fn limits_line<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} not in {out}"))
        .split_whitespace()
        .collect()
}

/// The hard RLIMIT_NOFILE of this process, which the runtime it starts inherits.
fn own_hard_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r.rlim_max
}

#[test]
fn rlimits_are_the_configs_but_core_and_the_strict_profiles() {
    for mode in MODES {
        let mut cfg = config("cat /proc/self/limits");
        // Above the default profile's open_files = 1024 and file_size = 1G: the
        // container's own (`[rlimits] oci = "config"`).
        cfg["process"]["rlimits"] = serde_json::json!([
            {"type": "RLIMIT_NOFILE", "soft": 300, "hard": 1500},
            {"type": "RLIMIT_FSIZE", "soft": 3221225472u64, "hard": 4294967296u64},
            {"type": "RLIMIT_STACK", "soft": 4194304, "hard": 6291456},
            {"type": "RLIMIT_MSGQUEUE", "soft": 4096, "hard": 8192},
        ]);
        let r = run(mode, &cfg).unwrap();
        assert_eq!(r.status, 0, "{mode:?}: {}", r.out);
        for (name, want) in [
            ("Max open files", ["300", "1500"]),
            ("Max file size", ["3221225472", "4294967296"]),
            ("Max stack size", ["4194304", "6291456"]),
            ("Max msgqueue size", ["4096", "8192"]),
        ] {
            let l = limits_line(&r.out, name);
            let at = name.split_whitespace().count();
            assert_eq!(l[at..at + 2], want, "{mode:?} {name}: {}", r.out);
        }
        // podman's default is above the runtime's own hard limit: lowered to it, with a
        // warning; a core dump limit is lowered to the profile's 0.
        let hard = own_hard_nofile().min(1048576);
        cfg["process"]["rlimits"] = serde_json::json!([
            {"type": "RLIMIT_NOFILE", "soft": 1048576, "hard": 1048576},
            {"type": "RLIMIT_CORE", "soft": 1024, "hard": 1024},
        ]);
        let r = run(mode, &cfg).unwrap();
        let h = hard.to_string();
        assert_eq!(
            limits_line(&r.out, "Max open files")[3..5],
            [h.as_str(), h.as_str()],
            "{mode:?}: {}",
            r.out
        );
        assert_eq!(limits_line(&r.out, "Max core file size")[4..6], ["0", "0"]);
        assert!(
            r.log
                .contains("RLIMIT_CORE 1024:1024 lowered to 0:0 (the profile's limit)"),
            "{mode:?}: {}",
            r.log
        );
        if hard < 1048576 {
            assert!(
                r.log.contains(&format!(
                    "RLIMIT_NOFILE 1048576:1048576 lowered to {hard}:{hard} (the runtime's hard limit)"
                )),
                "{mode:?}: {}",
                r.log
            );
        }
        // strict (`[rlimits] oci = "profile"`): lowered to its open_files = 256.
        cfg["annotations"]["dev.nixcell.profile"] = "strict".into();
        cfg["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 300, "hard": 1500}]);
        let r = run(mode, &cfg).unwrap();
        assert_eq!(
            limits_line(&r.out, "Max open files")[3..5],
            ["256", "256"],
            "{mode:?}: {}",
            r.out
        );
        assert!(
            r.log
                .contains("RLIMIT_NOFILE 300:1500 lowered to 256:256 (the profile's limit)"),
            "{mode:?}: {}",
            r.log
        );
        let mut bad = config("true");
        bad["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_TEST", "soft": 1, "hard": 1}]);
        let e = run(mode, &bad).err().expect("an unknown rlimit is refused");
        assert!(e.contains("unknown type \"RLIMIT_TEST\""), "{mode:?}: {e}");
    }
}

#[test]
fn a_config_seccomp_filter_narrows_under_nixcells_own() {
    for mode in MODES {
        let mut cfg = config(
            "grep -E '^Seccomp(_filters)?:' /proc/self/status; \
             mkdir /tmp/x; echo x=$?; \
             kill -0 $$; echo k0=$?; kill -CONT $$; echo kc=$?; \
             touch /tmp/d; chmod 770 /tmp/d; echo c1=$?; chmod 700 /tmp/d; echo c2=$?; \
             sync; echo sync=$?",
        );
        cfg["linux"] = serde_json::json!({"seccomp": {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat", "no_such_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 56, "valueTwo": 56, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 2, "value": 56, "valueTwo": 56, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["sync"], "action": "SCMP_ACT_KILL_PROCESS"}
            ]
        }});
        let r = run(mode, &cfg).unwrap();
        let out = &r.out;
        assert!(
            out.contains("Seccomp:\t2"),
            "{mode:?}: {out} {} {}",
            r.status,
            r.log
        );
        // nixcell's three filters, then one per action of the config (ERRNO(38),
        // ERRNO(EPERM), KILL_PROCESS).
        assert!(out.contains("Seccomp_filters:\t6"), "{mode:?}: {out}");
        assert!(
            out.contains("x=1"),
            "{mode:?}: mkdir answered ENOSYS: {out}"
        );
        assert!(out.contains("Function not implemented"), "{mode:?}: {out}");
        assert!(out.contains("k0=1"), "{mode:?}: kill(_, 0) refused: {out}");
        assert!(out.contains("kc=0"), "{mode:?}: other signals pass: {out}");
        assert!(out.contains("c1=1"), "{mode:?}: group bits refused: {out}");
        assert!(out.contains("Operation not permitted"), "{mode:?}: {out}");
        assert!(out.contains("c2=0"), "{mode:?}: other modes pass: {out}");
        assert!(out.contains("sync=159"), "{mode:?}: SIGSYS kill: {out}");
        assert!(r.log.contains("no_such_call"), "{mode:?}: {}", r.log);

        // A config that allows everything: nixcell's own filters stay, alone.
        let mut all =
            config("grep -E '^Seccomp(_filters)?:' /proc/self/status; hostname x; echo h=$?");
        all["linux"] = serde_json::json!({"seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}});
        let r = run(mode, &all).unwrap();
        assert!(
            r.out.contains("Seccomp:\t2") && r.out.contains("Seccomp_filters:\t3"),
            "{mode:?}: {}",
            r.out
        );
        assert!(r.out.contains("h=1"), "{mode:?}: {}", r.out);

        let mut notify = config("true");
        notify["linux"] = serde_json::json!({"seccomp": {"defaultAction": "SCMP_ACT_NOTIFY"}});
        let e = run(mode, &notify).err().expect("NOTIFY is refused");
        assert!(
            e.contains("SCMP_ACT_NOTIFY is not supported"),
            "{mode:?}: {e}"
        );
    }
}

#[test]
fn umask_oom_score_and_groups() {
    for mode in MODES {
        let mut cfg = config(
            "umask; cat /proc/self/oom_score_adj; grep ^Groups: /proc/self/status; \
             touch /tmp/f; stat -c %a /tmp/f",
        );
        cfg["process"]["user"]["umask"] = serde_json::json!(0o077);
        cfg["process"]["user"]["additionalGids"] = serde_json::json!([5, 6]);
        cfg["process"]["oomScoreAdj"] = serde_json::json!(500);
        let r = run(mode, &cfg).unwrap();
        let lines: Vec<&str> = r.out.lines().collect();
        assert_eq!(lines[0], "0077", "{mode:?}: {}", r.out);
        assert_eq!(lines[1], "500", "{mode:?}: {}", r.out);
        // Rootless, the caller's own groups stay (unmapped: the overflow gid).
        let groups: Vec<&str> = lines[2].split_whitespace().skip(1).collect();
        assert!(
            !groups.contains(&"5") && !groups.contains(&"6"),
            "{mode:?}: {}",
            lines[2]
        );
        assert_eq!(lines[3], "600", "{mode:?}");
        assert!(
            r.log.contains("additionalGids [5, 6]: not granted"),
            "{mode:?}: {}",
            r.log
        );
        // Below the runtime's own (this test's): raised to it, with a warning.
        let own = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
        let mut low = config("cat /proc/self/oom_score_adj");
        low["process"]["oomScoreAdj"] = serde_json::json!(-999);
        let l = run(mode, &low).unwrap();
        assert_eq!(l.out, own, "{mode:?}");
        assert!(
            l.log
                .contains(&format!("oomScoreAdj -999 raised to {}", own.trim())),
            "{mode:?}: {}",
            l.log
        );
    }
}

#[test]
fn sysctls_of_the_containers_own_namespaces() {
    let host_values = || {
        ["net/ipv4/ip_default_ttl", "kernel/shmmni"]
            .map(|k| std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap())
    };
    let host = host_values();
    for mode in MODES {
        let mut cfg = config(
            "cat /proc/sys/net/ipv4/ip_default_ttl /proc/sys/kernel/shmmni /proc/sys/net/ipv4/ip_forward",
        );
        cfg["linux"] = serde_json::json!({"sysctl": {
            "net.ipv4.ip_default_ttl": "42",
            "net.ipv4.ip_forward": "1",
            "kernel.shmmni": "1234"
        }});
        let r = run(mode, &cfg).unwrap();
        assert_eq!(
            r.out.split_whitespace().collect::<Vec<_>>(),
            ["42", "1234", "1"],
            "{mode:?}"
        );
        assert_eq!(host_values(), host, "{mode:?}: the host's own values");
        let mut bad = config("true");
        bad["linux"] = serde_json::json!({"sysctl": {"kernel.core_pattern": "|/tmp/x"}});
        let e = run(mode, &bad).err().expect("a host sysctl is refused");
        assert!(
            e.contains("linux.sysctl kernel.core_pattern: refused"),
            "{mode:?}: {e}"
        );
    }
}

#[test]
fn a_new_file_systems_source_is_the_configs() {
    for mode in MODES {
        let mut cfg = config("grep -E ' /(proc|tmp) ' /proc/self/mountinfo");
        cfg["annotations"] = serde_json::json!({});
        cfg["process"]["env"] = serde_json::json!(["PATH=/bin"]);
        cfg["mounts"] = serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/tmp", "type": "tmpfs", "source": "scratch"},
        ]);
        let r = run(mode, &cfg).unwrap();
        assert!(r.out.contains(" - proc proc "), "{mode:?}: {}", r.out);
        assert!(r.out.contains(" - tmpfs scratch "), "{mode:?}: {}", r.out);
    }
}

#[test]
fn features_list_the_seccomp_it_carries_out() {
    let o = nixcell(Mode::Root)
        .args(["oci", "features"])
        .output()
        .unwrap();
    let f: serde_json::Value = serde_json::from_str(&ok(&o, "features")).unwrap();
    let sc = &f["linux"]["seccomp"];
    assert_eq!(sc["enabled"], true, "{f}");
    for a in ["SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_ALLOW"] {
        assert!(
            sc["actions"].as_array().unwrap().iter().any(|x| x == a),
            "{sc}"
        );
    }
    assert!(!sc["actions"].to_string().contains("NOTIFY"), "{sc}");
    // What the default profile may grant: runc's 14 defaults, CAP_SYS_ADMIN not.
    let caps = f["linux"]["capabilities"].as_array().unwrap();
    assert_eq!(caps.len(), 14, "{f}");
    assert!(caps.iter().any(|c| c == "CAP_CHOWN"), "{f}");
    assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"), "{f}");
    // rdma limits are written (rdma.max), as every other linux.resources field.
    assert_eq!(f["linux"]["cgroup"]["rdma"], true, "{f}");
}
