//! The runner, seen from inside the cell (`nixcell run`). Every test runs as
//! root and rootless (as the unprivileged test user).

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn closure_of(p: &std::path::Path) -> Vec<String> {
    let out = Command::new("nix-store")
        .arg("-qR")
        .arg(p)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut v: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn the_store_holds_exactly_the_closure() {
    let py = build_env("python3", "pkgs.python3");
    let bb = busybox();
    let mut expected = closure_of(&bb);
    expected.extend(closure_of(&py));
    expected.sort();
    expected.dedup();
    for mode in MODES {
        let o = nixcell(mode)
            .arg("run")
            .args(["--env-path", path_str(&bb), "--env-path", path_str(&py)])
            .args(["--", "ls", "-1", "/nix/store"])
            .output()
            .unwrap();
        let listed: Vec<String> = ok(&o, "ls /nix/store").lines().map(String::from).collect();
        assert_eq!(listed, expected, "{mode:?}");
    }
}

#[test]
fn a_store_path_outside_the_closure_cannot_be_reached() {
    let outside = build_env("redis", "pkgs.redis");
    let server = outside.join("bin/redis-server");
    assert!(server.exists(), "the path exists on the host");
    for mode in MODES {
        let script = format!(
            "cat {s} >/dev/null 2>&1 && echo READ; {s} --version >/dev/null 2>&1 && echo RAN; ls {o} >/dev/null 2>&1 && echo LISTED; echo done",
            s = server.display(),
            o = outside.display()
        );
        let out = ok(&sh(mode, &[], &script), "probe outside path");
        assert_eq!(out.trim(), "done", "{mode:?}: {out}");
        // The same probe with the path in the closure succeeds: the test can fail.
        let o = nixcell(mode)
            .arg("run")
            .args([
                "--env-path",
                path_str(&busybox()),
                "--env-path",
                path_str(&outside),
            ])
            .args(["--", "sh", "-c", &script])
            .output()
            .unwrap();
        assert!(ok(&o, "probe inside path").contains("RAN"), "{mode:?}");
    }
}

#[test]
fn everything_but_tmp_and_workdir_is_read_only() {
    let bb = busybox();
    for mode in MODES {
        let wd = workdir(mode);
        let script = format!(
            "for p in {bb}/newfile {bb}/bin/sh /nix/store/newentry /newdir /etc/passwd /bin/x /usr/x; do \
               if touch $p 2>/dev/null || mkdir $p 2>/dev/null; then echo WROTE $p; fi; done; \
             echo t > /tmp/t && echo tmp-ok; echo w > /work/w && echo work-ok",
            bb = bb.display()
        );
        let out = ok(
            &sh(mode, &["--workdir", path_str(wd.path())], &script),
            "writes",
        );
        assert_eq!(out.trim(), "tmp-ok\nwork-ok", "{mode:?}");
        assert_eq!(std::fs::read_to_string(wd.path().join("w")).unwrap(), "w\n");
    }
}

#[test]
fn no_host_directories_are_visible() {
    let marker = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    for mode in MODES {
        let script = format!(
            "ls -A /; echo --; ls -A /etc; echo --; find /usr /bin; echo --; \
             for p in /home /root /var /sys /run /lib /lib64 /sbin {m}; do [ -e $p ] && echo PRESENT $p; done; true",
            m = marker.path().display()
        );
        let out = ok(&sh(mode, &[], &script), "listing");
        let parts: Vec<&str> = out.split("--\n").collect();
        assert_eq!(
            parts[0].split_whitespace().collect::<Vec<_>>(),
            ["bin", "dev", "etc", "nix", "proc", "tmp", "usr"],
            "{mode:?}"
        );
        assert_eq!(
            parts[1].split_whitespace().collect::<Vec<_>>(),
            ["group", "hostname", "hosts", "passwd"],
            "{mode:?}"
        );
        assert_eq!(
            parts[2].split_whitespace().collect::<Vec<_>>(),
            ["/usr", "/usr/bin", "/usr/bin/env", "/bin", "/bin/sh"],
            "{mode:?}"
        );
        assert!(!parts[3].contains("PRESENT"), "{mode:?}: {}", parts[3]);
    }
}

#[test]
fn etc_names_the_mapped_user_and_localhost_only() {
    for mode in MODES {
        let out = ok(
            &sh(
                mode,
                &[],
                "id; cat /etc/passwd /etc/hosts; [ -e /etc/resolv.conf ] && echo RESOLV; true",
            ),
            "etc",
        );
        assert!(
            out.starts_with("uid=1000(cell) gid=1000(cell)"),
            "{mode:?}: {out}"
        );
        assert!(out.contains("cell:x:1000:1000:"), "{out}");
        assert!(out.contains("127.0.0.1\tlocalhost"), "{out}");
        assert!(!out.contains("RESOLV"));
        let out = ok(
            &sh(mode, &["--uid", "4242", "--gid", "77"], "id -u; id -g"),
            "custom ids",
        );
        assert_eq!(out.trim(), "4242\n77", "{mode:?}");
    }
}

#[test]
fn proc_shows_only_the_cells_processes_with_nixcell_init_as_pid_1() {
    for mode in MODES {
        let out = ok(
            &sh(
                mode,
                &[],
                "tr '\\0' ' ' < /proc/1/cmdline; echo; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '",
            ),
            "proc",
        );
        let mut lines = out.lines();
        assert!(
            lines.next().unwrap().contains("__nixcell-init"),
            "{mode:?}: {out}"
        );
        let pids: Vec<u32> = lines
            .next()
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        // PID 1, the shell, and the short-lived ls/grep/sort/tr of the pipeline.
        assert_eq!(pids[0], 1, "{out}");
        assert!(
            pids.len() <= 6 && pids.iter().all(|p| *p < 50),
            "{mode:?}: {pids:?}"
        );
    }
}

#[test]
fn pid_1_reaps_orphans() {
    for mode in MODES {
        // The subshell exits at once and leaves `sleep` to PID 1; when sleep ends, a
        // PID 1 that does not reap would leave a zombie (state Z).
        let out = ok(
            &sh(
                mode,
                &[],
                "(sleep 0.2 &); sleep 1; ps -o pid,stat,comm | grep -c ' Z ' || true",
            ),
            "zombies",
        );
        assert_eq!(out.trim(), "0", "{mode:?}");
    }
}

#[test]
fn sigterm_to_nixcell_reaches_the_command() {
    let bb = busybox();
    for mode in MODES {
        let mut child = nixcell(mode)
            .arg("run")
            .args(["--env-path", path_str(&bb)])
            .args([
                "--",
                "sh",
                "-c",
                "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.05; done",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        let target = nixcell_pid(&child, mode);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(target),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "got-term\n", "{mode:?}");
        assert_eq!(status.code(), Some(7), "{mode:?}");
    }
}

/// The pid of the nixcell process itself (setpriv execs it in place).
fn nixcell_pid(child: &std::process::Child, _mode: Mode) -> i32 {
    child.id() as i32
}

#[test]
fn dev_is_minimal() {
    for mode in MODES {
        let out = ok(
            &sh(
                mode,
                &[],
                "ls -A /dev; ls /dev/pts; echo x > /dev/null && head -c 4 /dev/urandom | wc -c",
            ),
            "dev",
        );
        let names: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(
            names,
            [
                "fd", "full", "null", "ptmx", "pts", "random", "stderr", "stdin", "stdout", "tty",
                "urandom", "zero", "ptmx", "4"
            ],
            "{mode:?}"
        );
    }
}

#[test]
fn tmp_is_a_fresh_capped_tmpfs() {
    let host_marker = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    let name = host_marker
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for mode in MODES {
        let script = format!(
            "ls -A /tmp | grep -c {name}; grep ' /tmp ' /proc/mounts | cut -d' ' -f3; \
             dd if=/dev/zero of=/tmp/big bs=1024 count=3072 2>/dev/null && echo FILLED || echo full"
        );
        let out = ok(&sh(mode, &["--tmp-size", "2M"], &script), "tmp");
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["0", "tmpfs", "full"],
            "{mode:?}"
        );
    }
}

#[test]
fn workdir_is_bound_read_write_at_work_and_is_the_cwd() {
    for mode in MODES {
        let wd = workdir(mode);
        std::fs::write(wd.path().join("in.txt"), "from host\n").unwrap();
        if mode == Mode::Rootless {
            let (u, g) = test_user_ids();
            nix::unistd::chown(&wd.path().join("in.txt"), Some(u.into()), Some(g.into())).unwrap();
        }
        let out = ok(
            &sh(
                mode,
                &["--workdir", path_str(wd.path())],
                "pwd; cat in.txt; echo from cell > out.txt; ls -n out.txt | awk '{print $3}'",
            ),
            "workdir",
        );
        assert_eq!(
            out.split('\n').take(3).collect::<Vec<_>>(),
            ["/work", "from host", "1000"],
            "{mode:?}: {out}"
        );
        assert_eq!(
            std::fs::read_to_string(wd.path().join("out.txt")).unwrap(),
            "from cell\n"
        );
        // On the host the file belongs to whoever owns the workdir.
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(wd.path()).unwrap().uid();
        assert_eq!(
            std::fs::metadata(wd.path().join("out.txt")).unwrap().uid(),
            owner,
            "{mode:?}"
        );
    }
}

#[test]
fn extra_binds_are_read_only_or_read_write_as_asked() {
    for mode in MODES {
        let ro = workdir(mode);
        let rw = workdir(mode);
        std::fs::write(ro.path().join("data"), "ro data\n").unwrap();
        let ro_arg = format!("{}:/data/ro", ro.path().display());
        let rw_arg = format!("{}:/data/rw", rw.path().display());
        // A live read-write bind must belong to the cell's host identity: started as
        // root, the cell runs as the test user here, which owns the directory.
        let (u, g) = test_user_ids();
        nix::unistd::chown(rw.path(), Some(u.into()), Some(g.into())).unwrap();
        let (us, gs) = (u.to_string(), g.to_string());
        let mut args = vec!["--ro-bind", &ro_arg, "--bind", &rw_arg];
        if mode == Mode::Root {
            args.extend(["--host-uid", &us, "--host-gid", &gs]);
        }
        let out = ok(
            &sh(
                mode,
                &args,
                "cat /data/ro/data; touch /data/ro/x 2>/dev/null && echo RO-WRITTEN; echo y > /data/rw/y && echo rw-ok",
            ),
            "binds",
        );
        assert_eq!(out, "ro data\nrw-ok\n", "{mode:?}");
        assert!(rw.path().join("y").exists());
        assert!(!ro.path().join("x").exists());
    }
}

fn ns_inode(pid: &str, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_namespace_is_new() {
    let kinds = ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"];
    for mode in MODES {
        let script = kinds
            .iter()
            .map(|k| format!("readlink /proc/self/ns/{k};"))
            .collect::<String>();
        let out = ok(&sh(mode, &[], &script), "ns");
        for (k, inside) in kinds.iter().zip(out.lines()) {
            assert_ne!(
                inside,
                ns_inode("self", k),
                "{mode:?}: {k} namespace shared with the host"
            );
        }
        let out = ok(
            &sh(
                mode,
                &[],
                "hostname; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '",
            ),
            "uts/net",
        );
        assert_eq!(out, "nixcell\nlo\n", "{mode:?}");
    }
}

#[test]
fn loopback_is_up_and_nothing_else_is_reachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    for mode in MODES {
        let script = format!(
            "sleep 2 | nc -l -p 5555 127.0.0.1 >/tmp/got & listener=$!; \
             i=0; until echo hi | nc 127.0.0.1 5555 2>/dev/null; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.05; done; \
             wait $listener; cat /tmp/got; \
             nc -w 3 10.1.2.3 80 </dev/null 2>&1 | head -1; \
             nc -w 3 127.0.0.1 {port} </dev/null && echo HOST-REACHED; echo end"
        );
        // The ports are opened in Landlock's TCP rules, so that what stops them is the
        // network namespace.
        let p = port.to_string();
        let allow = [
            "--allow-port",
            "5555",
            "--allow-port",
            "80",
            "--allow-port",
            &p,
        ];
        let out = ok(&sh(mode, &allow, &script), "network");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "hi", "{mode:?}: loopback inside works: {out}");
        // ENETUNREACH comes back from connect(2) itself: no route, no waiting.
        assert!(
            lines[1].contains("Network is unreachable"),
            "{mode:?}: {out}"
        );
        assert!(!out.contains("HOST-REACHED"), "{mode:?}");
        assert_eq!(lines.last(), Some(&"end"));
        assert!(
            listener.accept().is_err(),
            "the host listener saw a connection"
        );
    }
}

#[test]
fn all_capabilities_are_dropped_and_no_new_privs_is_set() {
    for mode in MODES {
        let out = ok(
            &sh(mode, &[], "grep -E '^(Cap|NoNewPrivs)' /proc/self/status"),
            "caps",
        );
        for line in out.lines() {
            let (k, v) = line.split_once(':').unwrap();
            let want = if k == "NoNewPrivs" {
                "1"
            } else {
                "0000000000000000"
            };
            assert_eq!(v.trim(), want, "{mode:?}: {line}");
        }
        assert_eq!(out.lines().count(), 6);
    }
}

#[test]
fn the_command_leads_a_new_session() {
    for mode in MODES {
        // Field 6 of /proc/PID/stat is the session id.
        let out = ok(
            &sh(mode, &[], "echo $$ $(cut -d' ' -f6 /proc/$$/stat)"),
            "session",
        );
        let v: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(v[0], v[1], "{mode:?}: the shell is its session's leader");
    }
}

#[test]
fn the_environment_is_cleared_but_for_the_allowed_names() {
    let bb = busybox();
    for mode in MODES {
        let o = nixcell(mode)
            .env("SECRET_TOKEN", "leak")
            .arg("run")
            .args(["--env-path", path_str(&bb), "--setenv", "GREETING=hi there"])
            .args(["--", "env"])
            .output()
            .unwrap();
        let out = ok(&o, "env");
        let mut names: Vec<&str> = out.lines().map(|l| l.split('=').next().unwrap()).collect();
        names.sort();
        names.retain(|n| !["LANG", "TERM"].contains(n));
        assert_eq!(names, ["GREETING", "HOME", "PATH"], "{mode:?}: {out}");
        assert!(out.contains("GREETING=hi there"));
        assert!(out.contains(&format!("PATH={}/bin", bb.display())));
    }
}

/// Pids of the processes below `pid` (via /proc/PID/task/*/children).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                for k in c.split_whitespace().filter_map(|x| x.parse().ok()) {
                    out.push(k);
                    todo.push(k);
                }
            }
        }
    }
    out
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn started_as_root_the_cell_runs_as_an_unprivileged_host_user() {
    let bb = busybox();
    let wd = workdir(Mode::Root);
    let mut child = nixcell(Mode::Root)
        .arg("run")
        .args([
            "--env-path",
            path_str(&bb),
            "--workdir",
            path_str(wd.path()),
        ])
        .args(["--", "sh", "-c", "echo x > /work/by-cell; sleep 30"])
        .spawn()
        .unwrap();
    let pids = wait_for("cell processes", || {
        let d = descendants(child.id());
        (d.len() >= 3).then_some(d)
    });
    for p in &pids {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or("")
            .to_string();
        assert!(!uid_line.is_empty(), "pid {p}");
        assert!(
            uid_line.split_whitespace().skip(1).all(|u| u != "0"),
            "pid {p}: {uid_line}"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn killing_nixcell_kills_the_whole_cell() {
    let bb = busybox();
    for mode in MODES {
        let mut child = nixcell(mode)
            .arg("run")
            .args(["--env-path", path_str(&bb)])
            .args(["--", "sh", "-c", "sleep 300 & sleep 300 & wait"])
            .spawn()
            .unwrap();
        let pids = wait_for("cell processes", || {
            let d = descendants(child.id());
            (d.len() >= 5).then_some(d)
        });
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        wait_for("the cell to die", || {
            pids.iter()
                .all(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/stat"))
                        .map(|s| s.contains(") Z "))
                        .unwrap_or(true)
                })
                .then_some(())
        });
    }
}

#[test]
fn processes_left_behind_are_killed_when_the_command_exits() {
    for mode in MODES {
        let wd = workdir(mode);
        let o = sh(
            mode,
            &["--json", "--workdir", path_str(wd.path())],
            "(sleep 2; echo alive > /work/marker) & echo started",
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{v}");
        assert_eq!(v["stdout"]["text"], "started\n");
        // Had nixcell waited for the orphan, the marker would exist by now.
        assert!(
            !wd.path().join("marker").exists(),
            "{mode:?}: nixcell waited for the orphan"
        );
        // And the orphan never gets to write it.
        std::thread::sleep(Duration::from_millis(2500));
        assert!(
            !wd.path().join("marker").exists(),
            "{mode:?}: the background process survived"
        );
    }
}

#[test]
fn exit_statuses_follow_the_conventions() {
    let bb = busybox();
    for mode in MODES {
        let code = |args: &[&str]| {
            nixcell(mode)
                .arg("run")
                .args(["--env-path", path_str(&bb), "--"])
                .args(args)
                .output()
                .unwrap()
        };
        assert_eq!(code(&["sh", "-c", "exit 3"]).status.code(), Some(3));
        assert_eq!(code(&["sh", "-c", "kill -9 $$"]).status.code(), Some(137));
        let o = code(&["no-such-command"]);
        assert_eq!(o.status.code(), Some(127));
        assert!(
            text(&o.stderr).contains("no-such-command: command not found"),
            "{}",
            text(&o.stderr)
        );
        let o = code(&["/etc/passwd"]);
        assert_eq!(o.status.code(), Some(126), "{mode:?}");
        assert!(text(&o.stderr).contains("/etc/passwd: cannot execute"));
        let wd = workdir(mode);
        let script = wd.path().join("s.py");
        std::fs::write(&script, "#!/usr/bin/python3\nprint(1)\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let o = nixcell(mode)
            .arg("run")
            .args([
                "--env-path",
                path_str(&bb),
                "--workdir",
                path_str(wd.path()),
                "--",
                "./s.py",
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(126), "{mode:?}");
        assert!(
            text(&o.stderr).contains("./s.py: bad interpreter /usr/bin/python3 (not in the cell)"),
            "{}",
            text(&o.stderr)
        );
    }
}

#[test]
fn set_up_errors_name_the_stage_the_syscall_and_the_errno() {
    for mode in MODES {
        let wd = workdir(mode);
        let long = "h".repeat(100);
        let o = sh(
            mode,
            &[
                "--json",
                "--hostname",
                &long,
                "--workdir",
                path_str(wd.path()),
            ],
            "touch /work/ran",
        );
        assert_eq!(o.status.code(), Some(125));
        let v = verdict(&o);
        assert_eq!(v["error"]["kind"], "setup", "{v}");
        assert_eq!(v["error"]["stage"], "hostname");
        assert_eq!(v["error"]["syscall"], "sethostname");
        assert_eq!(v["error"]["errno"], libc::EINVAL);
        assert!(!wd.path().join("ran").exists(), "the command ran");
    }
}

#[test]
fn bad_input_is_refused_with_125_and_nothing_runs() {
    let bb = busybox();
    for mode in MODES {
        let wd = workdir(mode);
        let ran = format!("touch {}/ran", wd.path().display());
        let cases: Vec<(Vec<String>, &str)> = vec![
            (
                vec![
                    "--env-path".into(),
                    "/nix/store/00000000000000000000000000000000-missing".into(),
                ],
                "no such file",
            ),
            (
                vec!["--env-path".into(), "/etc".into()],
                "not inside the Nix store",
            ),
            (
                vec![
                    "--env-path".into(),
                    path_str(&bb).into(),
                    "--workdir".into(),
                    "/nonexistent/dir".into(),
                ],
                "--workdir /nonexistent/dir",
            ),
            (
                vec![
                    "--env-path".into(),
                    path_str(&bb).into(),
                    "--ro-bind".into(),
                    "/etc:/proc/x".into(),
                ],
                "/proc",
            ),
            (
                vec![
                    "--env-path".into(),
                    path_str(&bb).into(),
                    "--ro-bind".into(),
                    "/etc:/data".into(),
                    "--bind".into(),
                    format!("{}:/data", wd.path().display()),
                ],
                "conflicts",
            ),
            (
                vec![
                    "--env-path".into(),
                    path_str(&bb).into(),
                    "--setenv".into(),
                    "1BAD=x".into(),
                ],
                "--setenv 1BAD=x",
            ),
        ];
        for (args, needle) in cases {
            let o = nixcell(mode)
                .arg("run")
                .args(&args)
                .args(["--", "sh", "-c", &ran])
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(125), "{mode:?} {args:?}");
            let err = text(&o.stderr);
            assert!(err.contains(needle), "{mode:?} {args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(!wd.path().join("ran").exists());
        }
    }
}

#[test]
fn an_unreadable_workdir_is_refused() {
    let wd = workdir(Mode::Root);
    std::fs::set_permissions(
        wd.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let o = sh(Mode::Rootless, &["--workdir", path_str(wd.path())], "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains(&format!("--workdir {}", wd.path().display())),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn without_user_namespaces_the_error_says_so() {
    // A user namespace whose own limit of nested user namespaces is 0.
    let bb = busybox();
    let fresh_cache = tempfile::tempdir().unwrap();
    // Whatever a fresh machine has cached: what the kernel cannot do is found before
    // any Nix work (and the namespace's uid 0, not the host's root, would reach the
    // store through nix-daemon: tests/nixcurrent.rs).
    let o = Command::new("unshare")
        .env_remove("NIX_REMOTE")
        .env("XDG_CACHE_HOME", fresh_cache.path())
        .args(["-U", "--map-root-user", "sh", "-c"])
        .arg(format!(
            "echo 0 > /proc/sys/user/max_user_namespaces && exec {} run --env-path {} -- true",
            bin(),
            bb.display()
        ))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    let err = text(&o.stderr);
    assert!(
        err.contains("stage 'unshare'") && err.contains("namespaces"),
        "{err}"
    );
}

#[test]
fn the_json_verdict_describes_the_run() {
    let bb = busybox();
    for mode in MODES {
        let o = nixcell(mode)
            .arg("run")
            .args([
                "--json",
                "--env-path",
                path_str(&bb),
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 4",
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(4));
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 4);
        assert_eq!(v["command_exit_code"], 4);
        assert_eq!(v["signal"], serde_json::Value::Null);
        assert_eq!(v["stdout"]["text"], "out\n");
        assert_eq!(v["stderr"]["text"], "err\n");
        assert_eq!(v["closure"]["paths"], closure_of(&bb).len());
        assert_eq!(v["closure"]["roots"][0], path_str(&bb));
        assert_eq!(v["closure"]["hash"].as_str().unwrap().len(), 64);
        assert_eq!(v["namespaces"].as_array().unwrap().len(), 7);
        assert_eq!(v["identity"]["uid"], 1000);
        assert!(v["wall_time_ms"].as_f64().unwrap() > 0.0);
    }
}
