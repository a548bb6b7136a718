//! Escape and abuse attempts, each run from inside a cell as root and rootless. Every
//! test asserts that the attempt fails as seen from inside; where the layer that stops
//! it can be switched off in a profile, it also shows the attempt working without it.

mod common;
use common::*;
use std::io::Read;
use std::process::Output;

/// A profile file `extends = "default"` plus `body`, readable by the test user.
fn profile(name: &str, body: &str) -> String {
    let dir = repo().join("target/test-work/profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, format!("extends = \"default\"\n{body}")).unwrap();
    p.to_str().unwrap().to_string()
}

fn no_seccomp() -> String {
    profile("no-seccomp", "[seccomp]\nmode = \"off\"\n")
}

fn no_seccomp_no_landlock() -> String {
    profile(
        "no-seccomp-no-landlock",
        "[seccomp]\nmode = \"off\"\n[landlock]\nmode = \"off\"\n",
    )
}

fn no_landlock() -> String {
    profile("no-landlock", "[landlock]\nmode = \"off\"\n")
}

/// `nixcell doctor --json`.
fn doctor() -> serde_json::Value {
    let o = std::process::Command::new(bin())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Whether this kernel has Landlock at all, as the doctor reports it.
fn landlock_in_kernel() -> bool {
    doctor()["landlock"]["available"] == true
}

/// Whether this kernel's Landlock has TCP rules (ABI >= 4), as the doctor reports it.
fn tcp_rules_in_kernel() -> bool {
    doctor()["landlock"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["feature"] == "tcp" && f["available"] == true)
}

/// The landlock layer's detail in a verdict.
fn landlock_detail(v: &serde_json::Value) -> String {
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "landlock")
        .map(|l| l["detail"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn python() -> std::path::PathBuf {
    build_env("python3", "pkgs.python3")
}

/// Runs `python3 -c code` in a cell; `extra` go before `--`.
fn py(mode: Mode, extra: &[&str], code: &str) -> Output {
    let mut c = nixcell(mode);
    c.arg("run")
        .arg("--env-path")
        .arg(python())
        .arg("--env-path")
        .arg(busybox())
        .args(extra)
        .args(["--", "python3", "-c", code]);
    c.output().expect("run nixcell")
}

/// Python prelude: `sc(nr, *args)` returns "ok" or the errno name of a raw syscall.
const SYSCALL: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) if isinstance(a, int) else a for a in args])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
"#;

fn pyout(mode: Mode, extra: &[&str], code: &str) -> String {
    let o = py(mode, extra, &format!("{SYSCALL}\n{code}"));
    ok(&o, code).trim().to_string()
}

#[test]
fn writing_to_the_store_fails() {
    let bb = busybox();
    for m in MODES {
        let o = sh(
            m,
            &[],
            &format!(
                "echo x > {0}/pwned || echo denied; touch {0}/bin/x 2>/dev/null || echo denied2; test ! -e {0}/pwned && echo clean",
                bb.display()
            ),
        );
        assert_eq!(
            ok(&o, "store write").trim(),
            "denied\ndenied2\nclean",
            "{m:?}"
        );
    }
}

#[test]
fn host_files_outside_the_cell_are_unreachable() {
    for m in MODES {
        let o = sh(
            m,
            &[],
            "cat /etc/shadow 2>/dev/null && echo READ; ls /home /root /oldroot 2>/dev/null && echo LISTED; ls /proc/1/root/ 2>/dev/null | grep -q home && echo VIA-PROC; echo done",
        );
        assert_eq!(ok(&o, "outside").trim(), "done", "{m:?}");
    }
}

#[test]
fn symlink_planted_in_the_workdir_does_not_reach_the_host() {
    let secret_dir = repo().join("target/test-work");
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join(format!("secret-{}", std::process::id()));
    std::fs::write(&secret, "host-secret-42\n").unwrap();
    for m in MODES {
        let wd = workdir(m);
        std::os::unix::fs::symlink(&secret, wd.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", wd.path().join("passwd")).unwrap();
        let o = sh(
            m,
            &["--workdir", path_str(wd.path())],
            "cat link 2>&1; cat passwd | grep -c ^root: ; echo end",
        );
        let out = ok(&o, "symlink");
        assert!(!out.contains("host-secret-42"), "{m:?}: {out}");
        // The cell's own /etc/passwd, which has no root entry.
        assert!(
            out.contains("No such file") && out.contains("\n0\n"),
            "{m:?}: {out}"
        );
    }
    let _ = std::fs::remove_file(&secret);
}

#[test]
fn tiocsti_injection_is_denied_even_with_junk_in_the_upper_bits() {
    // A pty of the cell's own: without seccomp, TIOCSTI pushes a byte into its input.
    let code = r#"
import fcntl, termios
m, s = os.openpty()
# The pty becomes the controlling terminal of this session leader (nixcell setsid()s),
# the one case where the kernel lets an unprivileged process use TIOCSTI.
fcntl.ioctl(s, termios.TIOCSCTTY, 0)
ptr = ctypes.c_char_p(b"x")
print(sc(16, s, termios.TIOCSTI, ptr), sc(16, s, termios.TIOCSTI | (1 << 32), ptr), sc(16, s, 0x541C | (7 << 40), ctypes.c_char_p(b"\x00")))
"#;
    for m in MODES {
        assert_eq!(pyout(m, &[], code), "EPERM EPERM EPERM", "{m:?}");
        let without = pyout(m, &["--profile", &no_seccomp()], code);
        assert!(
            without.starts_with("ok ok"),
            "{m:?} without seccomp: {without}"
        );
    }
}

#[test]
fn nested_user_namespace_is_denied() {
    for m in MODES {
        let o = sh(m, &[], "unshare -Ur id -u 2>&1; echo rc=$?");
        let out = ok(&o, "unshare");
        assert!(
            out.contains("rc=1") && !out.starts_with('0'),
            "{m:?}: {out}"
        );
        // Without seccomp, Landlock still stops it (/proc/self/setgroups is read-only);
        // on a kernel without Landlock the verdict says so, and it works.
        let v = verdict(&sh(
            m,
            &["--json", "--profile", &no_seccomp()],
            "unshare -Ur id -u 2>&1",
        ));
        let out = v["stdout"]["text"].as_str().unwrap_or_default();
        if landlock_in_kernel() {
            assert!(out.contains("setgroups"), "{m:?}: {out}");
        } else {
            assert!(
                landlock_detail(&v).starts_with("not enforced: "),
                "{m:?}: {v}"
            );
            assert_eq!(out.trim(), "0", "{m:?}");
        }
        let o = sh(
            m,
            &["--profile", &no_seccomp_no_landlock()],
            "unshare -Ur id -u",
        );
        assert_eq!(
            ok(&o, "unshare without seccomp and landlock").trim(),
            "0",
            "{m:?}"
        );
    }
}

#[test]
fn ptrace_is_denied() {
    // PTRACE_ATTACH to PID 1 and PTRACE_TRACEME (which works without seccomp).
    let code = "print(sc(101, 16, 1, 0, 0), sc(101, 0, 0, 0, 0))";
    for m in MODES {
        assert_eq!(pyout(m, &[], code), "EPERM EPERM", "{m:?}");
        // Without seccomp TRACEME works, but PID 1 still cannot be attached to: it
        // dropped every capability and became non-dumpable before the command existed.
        let without = pyout(m, &["--profile", &no_seccomp()], code);
        assert_eq!(without, "EPERM ok", "{m:?} without seccomp");
    }
}

#[test]
fn mounting_is_denied() {
    let script = "mount -t tmpfs none /tmp 2>/dev/null && echo MOUNTED; unshare -Urm sh -c 'mount -t tmpfs none /tmp && echo NESTED-MOUNT' 2>/dev/null; echo end";
    for m in MODES {
        assert_eq!(ok(&sh(m, &[], script), "mount").trim(), "end", "{m:?}");
        // Without seccomp, Landlock still denies mounts (a Landlock domain may not
        // mount); on a kernel without Landlock the verdict says so, and it mounts.
        let v = verdict(&sh(m, &["--json", "--profile", &no_seccomp()], script));
        let out = v["stdout"]["text"].as_str().unwrap_or_default();
        if landlock_in_kernel() {
            assert_eq!(out.trim(), "end", "{m:?} without seccomp");
        } else {
            assert!(
                landlock_detail(&v).starts_with("not enforced: "),
                "{m:?}: {v}"
            );
            assert!(out.contains("NESTED-MOUNT"), "{m:?}: {out}");
        }
        let o = sh(m, &["--profile", &no_seccomp_no_landlock()], script);
        assert!(
            ok(&o, "mount without seccomp and landlock").contains("NESTED-MOUNT"),
            "{m:?}"
        );
    }
}

#[test]
fn keyctl_bpf_and_io_uring_are_denied() {
    // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1),
    // bpf(BPF_MAP_CREATE, zeroed attr), io_uring_setup(1, zeroed params).
    let code = r#"
attr = ctypes.create_string_buffer(128)
params = ctypes.create_string_buffer(120)
print(sc(250, 0, (1 << 64) - 3, 1), sc(321, 0, attr, 128), sc(425, 1, params))
"#;
    for m in MODES {
        assert_eq!(pyout(m, &[], code), "EPERM EPERM EPERM", "{m:?}");
        let without = pyout(m, &["--profile", &no_seccomp()], code);
        let w: Vec<&str> = without.split(' ').collect();
        // keyctl and io_uring work without the filter (bpf needs privilege anyway).
        assert_eq!(
            (w[0], w[2]),
            ("ok", "ok"),
            "{m:?} without seccomp: {without}"
        );
    }
}

#[test]
fn packet_netlink_and_vsock_sockets_are_denied() {
    let code = r#"
import socket
out = []
for fam, typ in [(17, socket.SOCK_RAW), (16, socket.SOCK_RAW), (40, socket.SOCK_STREAM), (2, socket.SOCK_STREAM)]:
    try:
        socket.socket(fam, typ).close(); out.append("ok")
    except OSError as e:
        out.append(errno.errorcode[e.errno])
print(*out)
"#;
    for m in MODES {
        assert_eq!(pyout(m, &[], code), "EPERM EPERM EPERM ok", "{m:?}");
        let without = pyout(m, &["--profile", &no_seccomp()], code);
        // A netlink socket opens without the filter.
        assert_eq!(without.split(' ').nth(1), Some("ok"), "{m:?}: {without}");
    }
}

#[test]
fn host_loopback_is_unreachable_and_tcp_is_confined() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    for m in MODES {
        let o = sh(
            m,
            &[],
            &format!("echo hi | nc -w 1 127.0.0.1 {port} && echo CONNECTED; echo end"),
        );
        assert_eq!(ok(&o, "host loopback").trim(), "end", "{m:?}");
        // Inside the cell, Landlock denies TCP bind on the cell's own loopback where
        // the kernel has TCP rules (ABI >= 4); elsewhere the verdict says they are not
        // enforced, and the bind works.
        let script = "nc -l -p 4444 -e true 2>&1 & sleep 0.3; nc -w 1 127.0.0.1 4444 </dev/null && echo LOCAL-OK; wait; echo end";
        let v = verdict(&sh(m, &["--json"], script));
        let out = v["stdout"]["text"].as_str().unwrap_or_default().to_string();
        let ll = landlock_detail(&v);
        if tcp_rules_in_kernel() {
            assert!(
                ll.contains("TCP bind/connect denied"),
                "{m:?}: verdict {ll}"
            );
            assert!(
                out.contains("Permission denied") && !out.contains("LOCAL-OK"),
                "{m:?}: {out}"
            );
        } else {
            assert!(
                ll.contains("not enforced: ") && ll.contains("tcp (TCP bind/connect: needs ABI 4"),
                "{m:?}: the verdict must say TCP rules are not enforced: {ll}"
            );
            assert!(out.contains("LOCAL-OK"), "{m:?}: {out}");
        }
        let out = ok(
            &sh(m, &["--profile", &no_landlock()], script),
            "local bind without landlock",
        );
        assert!(out.contains("LOCAL-OK"), "{m:?} without landlock: {out}");
    }
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "a cell reached the host listener"
    );
}

#[test]
fn host_abstract_unix_socket_is_unreachable() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("nixcell-escape-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let code = format!(
        r#"
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("\0{name}"); print("CONNECTED")
except OSError as e:
    print(errno.errorcode[e.errno])
"#
    );
    for m in MODES {
        let out = pyout(m, &[], &code);
        assert_ne!(out, "CONNECTED", "{m:?}");
    }
    l.set_nonblocking(true).unwrap();
    assert!(l.accept().is_err());
}

#[test]
fn host_processes_cannot_be_signalled() {
    let mut victim = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = victim.id();
    for m in MODES {
        let o = sh(
            m,
            &[],
            &format!("kill -9 {pid} 2>&1; kill -9 -1 2>&1; echo end"),
        );
        ok(&o, "kill");
        assert!(
            victim.try_wait().unwrap().is_none(),
            "{m:?}: the host process died"
        );
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
}

#[test]
fn setuid_binaries_give_no_privilege() {
    // A root-owned setuid copy of busybox bound into the cell.
    let dir = repo().join("target/test-work/suid");
    std::fs::create_dir_all(&dir).unwrap();
    let bb = dir.join("busybox");
    std::fs::copy(busybox().join("bin/busybox"), &bb).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o4755)).unwrap();
    for m in MODES {
        let o = sh(
            m,
            &["--ro-bind", &format!("{}:/suid", dir.display())],
            "/suid/busybox id -u; /suid/busybox cat /proc/self/status | grep ^Uid",
        );
        let out = ok(&o, "setuid");
        assert!(out.starts_with("1000\n"), "{m:?}: {out}");
        assert!(out.contains("Uid:\t1000\t1000\t1000\t1000"), "{m:?}: {out}");
    }
}

#[test]
fn sysrq_trigger_is_not_writable() {
    for m in MODES {
        let o = sh(
            m,
            &[],
            "echo h > /proc/sysrq-trigger && echo WROTE; echo end",
        );
        assert_eq!(ok(&o, "sysrq").trim(), "end", "{m:?}");
    }
}

#[test]
fn fork_bomb_hits_the_pids_limit() {
    for m in MODES {
        let o = sh(
            m,
            &["--json", "--pids", "40", "--timeout", "20s"],
            "for i in $(seq 100); do sleep 5 & done; echo all-started",
        );
        let v = verdict(&o);
        let cg = v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["layer"] == "cgroup")
            .unwrap()
            .clone();
        assert_eq!(cg["enforced"], true, "{m:?}: {cg}");
        let err = v["stderr"]["text"].as_str().unwrap().to_string();
        assert!(err.contains("can't fork"), "{m:?}: {v}");
        assert!(
            !v["stdout"]["text"]
                .as_str()
                .unwrap()
                .contains("all-started"),
            "{m:?}: {v}"
        );
        assert_eq!(v["timed_out"], false, "{m:?}");
    }
}

#[test]
fn memory_bomb_is_oom_killed_and_reported() {
    for m in MODES {
        let o = py(
            m,
            &["--json", "--memory", "64M"],
            "b = b'x' * (400 << 20); print(len(b))",
        );
        let v = verdict(&o);
        assert_eq!(v["oom_killed"], true, "{m:?}: {v}");
        assert_eq!(v["exit_code"], 137, "{m:?}: {v}");
        let peak = v["usage"]["peak_memory_bytes"].as_u64().unwrap();
        assert!(peak > 32 << 20 && peak <= 65 << 20, "{m:?}: peak {peak}");
        assert!(v["usage"]["cpu_time_ms"].as_f64().unwrap() > 0.0);
    }
}

/// Pids of host processes whose command line contains `tag`.
fn host_processes_with(tag: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(e.path().join("cmdline")) {
            let _ = f.read_to_string(&mut s);
            if s.replace('\0', " ").contains(tag) {
                found.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    found
}

#[test]
fn cpu_spin_past_the_timeout_is_killed() {
    for m in MODES {
        let t = std::time::Instant::now();
        let o = sh(m, &["--json", "--timeout", "1s"], "while :; do :; done");
        let v = verdict(&o);
        assert_eq!(
            (v["exit_code"].as_i64(), v["timed_out"].as_bool()),
            (Some(124), Some(true)),
            "{m:?}: {v}"
        );
        assert!(t.elapsed().as_secs() < 10);
        // The spin's CPU time is counted (a busy machine may give it less than its
        // second of wall clock).
        assert!(
            v["usage"]["cpu_time_ms"].as_f64().unwrap() > 50.0,
            "{m:?}: {v}"
        );
    }
}

#[test]
fn processes_ignoring_sigterm_and_grandchildren_are_all_killed() {
    for m in MODES {
        let tag = format!("{}{}", 7_000_000 + std::process::id(), m as u8);
        let grace = profile("short-grace", "[limits]\ngrace = \"500ms\"\n");
        let script = format!(
            "trap '' TERM; (trap '' TERM; sh -c 'trap \"\" TERM; sleep {tag}' & sleep {tag}) & sleep {tag}"
        );
        let t = std::time::Instant::now();
        let o = sh(
            m,
            &["--json", "--profile", &grace, "--timeout", "1s"],
            &script,
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 124, "{m:?}: {v}");
        let took = t.elapsed();
        assert!(
            took.as_millis() >= 1400 && took.as_secs() < 8,
            "{m:?}: {took:?}"
        );
        assert!(
            host_processes_with(&format!("sleep {tag}")).is_empty(),
            "{m:?}: survivors"
        );
    }
}

#[test]
fn hundred_mib_of_output_is_capped_without_blocking() {
    for m in MODES {
        let o = sh(
            m,
            &["--json", "--max-output", "1M", "--timeout", "60s"],
            "head -c 104857600 /dev/zero | tr '\\0' a; echo done >&2",
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{m:?}: {}", v["error"]);
        assert_eq!(v["stdout"]["bytes"], 104_857_600u64, "{m:?}");
        assert_eq!(v["stdout"]["truncated"], true);
        assert_eq!(v["stdout"]["text"].as_str().unwrap().len(), 1 << 20);
        assert_eq!(v["stderr"]["text"], "done\n");
        assert_eq!(v["stderr"]["truncated"], false);
    }
}
