//! The kernel-facing layers seen from inside a cell, root and rootless: seccomp (no
//! trusted cache a cell could rewrite, allow lists that admit only what they list,
//! system calls newer than the table), PID 1 under the cell's OOM, /proc masking, the
//! caller's terminal, one cgroup per run.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn python() -> std::path::PathBuf {
    build_env("python3", "pkgs.python3")
}

/// A profile file with `body`, readable by the test user.
fn profile(name: &str, body: &str) -> String {
    let dir = repo().join("target/test-work/profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

/// `nixcell` as `mode` with XDG_CACHE_HOME set to `cache`.
fn nixcell_cache(mode: Mode, cache: &Path) -> Command {
    match mode {
        Mode::Root => {
            let mut c = nixcell(mode);
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

/// Python prelude: `sc(nr, *args)` returns "ok" or the errno name of a raw syscall.
const SYSCALL: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
"#;

/// Runs python3 `code` (after [`SYSCALL`]) in a cell; `extra` go before `--`.
fn py(mode: Mode, extra: &[&str], code: &str) -> Output {
    let mut c = nixcell(mode);
    c.arg("run")
        .arg("--env-path")
        .arg(python())
        .arg("--env-path")
        .arg(busybox())
        .args(extra)
        .args(["--", "python3", "-c", &format!("{SYSCALL}\n{code}")]);
    c.output().expect("run nixcell")
}

fn layer<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == name)
        .unwrap_or_else(|| panic!("no {name} layer in {v}"))
}

#[test]
fn a_poisoned_seccomp_cache_changes_nothing() {
    let bb = busybox();
    for m in MODES {
        let cache = workdir(m);
        let run = |script: &str| {
            nixcell_cache(m, cache.path())
                .args(["run", "--json", "--env-path", path_str(&bb)])
                .args(["--", "sh", "-c", script])
                .output()
                .unwrap()
        };
        ok(&run("true"), "warm-up");
        // Whatever nixcell keeps about seccomp, a cell with that directory as its
        // workdir could rewrite it: no filters at all, or one that allows everything.
        let dir = cache.path().join("nixcell/seccomp");
        std::fs::create_dir_all(&dir).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.push(dir.join("planted.json"));
        for poison in [
            r#"{"kind":"deny-list","filters":[]}"#,
            r#"{"kind":"deny-list","filters":[[[6,0,0,2147418112]]]}"#,
        ] {
            for f in &files {
                let hash = std::fs::read(f)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["policy_hash"].as_str().map(String::from))
                    .unwrap_or_default();
                let mut v: serde_json::Value = serde_json::from_str(poison).unwrap();
                v["policy_hash"] = hash.into();
                std::fs::write(f, v.to_string()).unwrap();
            }
            let o = run("unshare -U true && echo UNSHARED; echo end");
            let v = verdict(&o);
            assert_eq!(v["stdout"]["text"], "end\n", "{m:?}: {v}");
            let s = layer(&v, "seccomp");
            assert_eq!(s["enforced"], true, "{m:?}: {s}");
            assert!(
                s["detail"]
                    .as_str()
                    .unwrap()
                    .contains("(3 filters installed)"),
                "{m:?}: {s}"
            );
        }
    }
}

#[test]
fn an_allow_list_without_socket_refuses_socket() {
    let strict: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo().join("profiles/strict.toml")).unwrap())
            .unwrap();
    let allow: Vec<String> = strict["seccomp"]["allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert!(allow.iter().any(|s| s == "socket"));
    let without: Vec<String> = allow
        .iter()
        .filter(|s| *s != "socket")
        .map(|s| format!("{s:?}"))
        .collect();
    let p = profile(
        "strict-no-socket",
        &format!(
            "extends = \"strict\"\n[seccomp]\nallow = [{}]\n",
            without.join(", ")
        ),
    );
    let code = "import socket\ntry:\n    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n    print('socket ok')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])";
    for m in MODES {
        let o = py(m, &["--profile", &p], code);
        assert_eq!(ok(&o, "no socket").trim(), "EPERM", "{m:?}");
        let o = py(m, &["--profile", "strict"], code);
        assert_eq!(ok(&o, "strict").trim(), "socket ok", "{m:?}");
    }
}

#[test]
fn calls_newer_than_the_table_and_mount_readers_are_refused() {
    let no_seccomp = profile(
        "no-seccomp-only",
        "extends = \"default\"\n[seccomp]\nmode = \"off\"\n",
    );
    // listmount (458) and statmount (457) with null buffers: the kernel answers EFAULT
    // or EINVAL when it sees them; 470..500 lie above every call this build knows.
    let code = "print(sc(458, 0, 0, 0, 0), sc(457, 0, 0, 0, 0), sorted(set(sc(n) for n in range(470, 500))))";
    for m in MODES {
        let o = py(m, &[], code);
        assert_eq!(ok(&o, "seccomp").trim(), "EPERM EPERM ['ENOSYS']", "{m:?}");
        let o = py(m, &["--profile", &no_seccomp], code);
        let out = ok(&o, "no seccomp");
        assert!(!out.contains("EPERM"), "{m:?}: the kernel saw them: {out}");
    }
}

#[test]
fn pid1_outlives_the_cells_oom_and_reports_the_command() {
    let bb = busybox();
    let fill = "dd if=/dev/zero of=/tmp/fill bs=1M count=200";
    for m in MODES {
        let run = |argv: &[&str]| {
            let o = nixcell(m)
                .args(["run", "--json", "--memory", "64M", "--tmp-size", "256M"])
                .arg("--env-path")
                .arg(&bb)
                .arg("--")
                .args(argv)
                .output()
                .unwrap();
            verdict(&o)
        };
        // /tmp (tmpfs, charged to the cell) fills the memory limit: the writer is
        // killed, PID 1 lives on and reports it.
        let v = run(&["dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=200"]);
        assert_eq!(v["error"], serde_json::Value::Null, "{m:?}: {v}");
        assert_eq!(v["oom_killed"], true, "{m:?}: {v}");
        assert_eq!(
            (v["signal"].as_i64(), v["exit_code"].as_i64()),
            (Some(9), Some(137)),
            "{m:?}: {v}"
        );
        let v = run(&["sh", "-c", &format!("{fill}; echo after=$?; exit 3")]);
        assert_eq!(v["error"], serde_json::Value::Null, "{m:?}: {v}");
        assert_eq!(v["oom_killed"], true, "{m:?}: {v}");
        assert_eq!(v["command_exit_code"], 3, "{m:?}: {v}");
        assert!(
            v["stdout"]["text"].as_str().unwrap().contains("after=137"),
            "{m:?}: {v}"
        );
        // The limit is the command's: its memory cgroup is below PID 1's, not PID 1's.
        let v = run(&[
            "sh",
            "-c",
            "grep -E '^(0::|[0-9]+:memory:)' /proc/self/cgroup /proc/1/cgroup | grep -v '^[^:]*:0::/$'",
        ]);
        let out = v["stdout"]["text"].as_str().unwrap();
        let own: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("/proc/self/cgroup:"))
            .collect();
        let pid1: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("/proc/1/cgroup:"))
            .collect();
        assert!(own.iter().any(|l| l.ends_with("/cell")), "{m:?}: {out}");
        assert!(!pid1.iter().any(|l| l.ends_with("/cell")), "{m:?}: {out}");
        // And the OOM killer's first choice, should memory run out elsewhere.
        let v = run(&["cat", "/proc/self/oom_score_adj", "/proc/1/oom_score_adj"]);
        let out = v["stdout"]["text"].as_str().unwrap();
        let scores: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
        assert!(scores[0] == 1000 && scores[1] < 1000, "{m:?}: {out}");
    }
}

#[test]
fn the_callers_terminal_is_restored_after_the_run() {
    use nix::sys::termios::{LocalFlags, tcgetattr};
    use std::io::Write;
    use std::os::fd::{AsFd, AsRawFd};
    let bb = busybox();
    for m in MODES {
        for script in ["stty -echo", "stty -echo; sleep 30"] {
            let pty = nix::pty::openpty(None, None).unwrap();
            let echo = |what: &str| {
                let t = tcgetattr(pty.slave.as_fd()).unwrap();
                assert!(t.local_flags.contains(LocalFlags::ECHO), "{m:?} {what}");
            };
            echo("before");
            let slave = std::fs::File::from(pty.slave.try_clone().unwrap());
            let o = nixcell(m)
                .args(["run", "--timeout", "2s", "--env-path", path_str(&bb)])
                .args(["--", "sh", "-c", script])
                .stdin(slave.try_clone().unwrap())
                .stdout(slave.try_clone().unwrap())
                .stderr(slave)
                .status()
                .unwrap();
            let want = if script.contains("sleep") { 124 } else { 0 };
            assert_eq!(o.code(), Some(want), "{m:?} {script}");
            echo(script);
            drop(pty.master);
        }
        // Exclusive mode (every later open of the terminal would fail), suspended
        // output and the line discipline, which the cell may not change at all.
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave = std::fs::File::from(pty.slave.try_clone().unwrap());
        let code = "import fcntl, termios, struct, sys\n\
                    fcntl.ioctl(0, termios.TIOCEXCL)\n\
                    termios.tcflow(0, termios.TCOOFF)\n\
                    try:\n    fcntl.ioctl(0, termios.TIOCSETD, struct.pack('i', 3))\nexcept PermissionError:\n    sys.exit(7)\n";
        let mut child = nixcell(m)
            .args(["run", "--env-path", path_str(&python())])
            .args(["--", "python3", "-c", code])
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave.try_clone().unwrap())
            .spawn()
            .unwrap();
        // With its output left suspended, anything writing to the terminal blocks:
        // nixcell too, were it not to resume it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{m:?}: nixcell hung on the terminal the cell suspended");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert_eq!(st.code(), Some(7), "{m:?}: TIOCSETD was not refused");
        let mut v: libc::c_int = -1;
        // SAFETY: TIOCGEXCL and TIOCGETD write one int.
        assert_eq!(
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGEXCL, &mut v) },
            0
        );
        assert_eq!(v, 0, "{m:?}: the terminal was left exclusive");
        assert_eq!(
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGETD, &mut v) },
            0
        );
        assert_eq!(v, 0, "{m:?}: line discipline changed");
        (&slave).write_all(b"ping").unwrap();
        let mut fds = [nix::poll::PollFd::new(
            pty.master.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(2000u16)).unwrap();
        assert_eq!(n, 1, "{m:?}: the terminal's output stayed suspended");
    }
}

#[test]
fn proc_shows_nothing_of_the_host() {
    let host_cmdline = std::fs::read_to_string("/proc/cmdline").unwrap();
    let host_boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(!host_cmdline.trim().is_empty() && !host_boot_id.trim().is_empty());
    let files = [
        "/proc/cmdline",
        "/proc/sys/kernel/random/boot_id",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/kcore",
        "/proc/sched_debug",
        "/proc/latency_stats",
        "/proc/timer_stats",
    ];
    let dirs = ["/proc/acpi", "/proc/asound", "/proc/scsi", "/proc/firmware"];
    let ro = [
        "/proc/sys",
        "/proc/sysrq-trigger",
        "/proc/irq",
        "/proc/bus",
        "/proc/fs",
    ];
    // Each file: its size if it exists; each directory: its entries; each writable
    // part: its mount options as mountinfo shows them.
    let script = format!(
        "for f in {}; do test -e $f && echo \"$f=$(cat $f | wc -c)\"; done; \
         for d in {}; do test -d $d && echo \"$d:$(ls -A $d)\"; done; \
         for p in {}; do test -e $p && echo \"$p $(awk -v p=$p '$5 == p {{print substr($6, 1, 2)}}' /proc/self/mountinfo | tail -n 1)\"; done; \
         cat /proc/cmdline /proc/sys/kernel/random/boot_id",
        files.join(" "),
        dirs.join(" "),
        ro.join(" ")
    );
    for m in MODES {
        let out = ok(&sh(m, &[], &script), "proc");
        assert!(!out.contains(host_cmdline.trim()), "{m:?}: {out}");
        assert!(!out.contains(host_boot_id.trim()), "{m:?}: {out}");
        let mut seen = 0;
        for line in out.lines() {
            if let Some((f, n)) = line.split_once('=') {
                assert_eq!(n, "0", "{m:?}: {f} has content");
                seen += 1;
            } else if let Some((d, entries)) = line.split_once(':') {
                assert_eq!(entries, "", "{m:?}: {d} lists the host's");
            } else if let Some((p, opts)) = line.split_once(' ') {
                assert_eq!(opts, "ro", "{m:?}: {p} is writable");
                seen += 1;
            }
        }
        // At least cmdline, boot_id, keys and /proc/sys were checked.
        assert!(seen >= 4, "{m:?}: {out}");
    }
}

#[test]
fn an_oversized_mcp_request_gets_an_error_and_the_server_goes_on() {
    use std::io::{BufRead, Write};
    let bb = busybox();
    let mut server = Command::new(bin())
        .args(["mcp", "--env-path", path_str(&bb)])
        .env("XDG_CACHE_HOME", repo().join("target/test-cache/root"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = server.stdin.take().unwrap();
    let stdout = server.stdout.take().unwrap();
    let writer = std::thread::spawn(move || {
        let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
        writeln!(stdin, "{init}").unwrap();
        writeln!(
            stdin,
            r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
        )
        .unwrap();
        // 17 MiB of files in one tools/call.
        let big = "x".repeat(17 << 20);
        writeln!(
            stdin,
            r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"run","arguments":{{"command":"true","files":{{"big":"{big}"}}}}}}}}"#
        )
        .unwrap();
        writeln!(stdin, r#"{{"jsonrpc":"2.0","id":3,"method":"ping"}}"#).unwrap();
        stdin
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut got = std::collections::HashMap::new();
    while got.len() < 3 {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no answer; so far: {got:?}"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(id) = v["id"].as_i64() {
            got.insert(id, v);
        }
    }
    let err = &got[&2]["error"];
    assert_eq!(err["code"], -32600, "{err}");
    assert!(err["message"].as_str().unwrap().contains("8 MiB"), "{err}");
    assert!(got[&3]["result"].is_object(), "{:?}", got[&3]);
    drop(writer.join().unwrap());
    let st = server.wait().unwrap();
    assert!(st.success(), "{st:?}");
}
