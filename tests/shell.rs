//! `nixcell shell`, driven through a pty the test allocates: the test holds the
//! master (the user's side) and hands the slave to nixcell as its controlling
//! terminal, as a terminal emulator would. Root and rootless.

mod common;
use common::*;
use nix::pty::Winsize;
use nix::sys::termios::tcgetattr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);
nix::ioctl_read_bad!(pending_input, libc::FIONREAD, libc::c_int);

/// bash, coreutils (a real `stty`) and python3 (for raw ioctls) in one environment.
fn shell_env() -> PathBuf {
    build_env(
        "shell-env",
        "pkgs.buildEnv { name = \"shell-env\"; paths = [ pkgs.bash pkgs.coreutils pkgs.python3 ]; }",
    )
}

fn flags_of(fd: &OwnedFd) -> i32 {
    // SAFETY: F_GETFL takes no argument.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) }
}

const PROMPT: &str = "READY> ";

fn size(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A `nixcell shell` on the test's terminal.
struct Session {
    master: OwnedFd,
    /// The caller's terminal (nixcell's stdin, stdout, stderr); kept to inspect it.
    slave: OwnedFd,
    child: Child,
    seen: String,
    /// The caller's terminal attributes and file status flags before nixcell started.
    before: (nix::sys::termios::Termios, i32),
}

impl Session {
    fn start(mode: Mode, extra: &[&str]) -> Session {
        let pty = nix::pty::openpty(Some(&size(33, 101)), None).unwrap();
        let mut cmd = nixcell(mode);
        cmd.arg("shell")
            .args(["--env-path", path_str(&shell_env())])
            .args(["--setenv", &format!("PS1={PROMPT}")])
            .args(extra);
        on_terminal(&mut cmd, &pty.slave);
        let before = (tcgetattr(&pty.slave).unwrap(), flags_of(&pty.slave));
        let child = cmd.spawn().unwrap();
        let mut s = Session {
            master: pty.master,
            slave: pty.slave,
            child,
            seen: String::new(),
            before,
        };
        s.expect(PROMPT);
        s
    }

    /// Asserts that the caller's terminal is as it was before nixcell started.
    fn assert_terminal_unchanged(&self, what: &str) {
        assert!(
            tcgetattr(&self.slave).unwrap() == self.before.0,
            "{what}: the caller's terminal attributes changed"
        );
        assert_eq!(
            flags_of(&self.slave),
            self.before.1,
            "{what}: file status flags changed"
        );
    }

    fn send(&self, text: &str) {
        nix::unistd::write(&self.master, text.as_bytes()).unwrap();
    }

    /// Reads the terminal until `needle` appears (after what earlier calls consumed).
    fn expect(&mut self, needle: &str) -> String {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = self.seen.find(needle) {
                let upto = i + needle.len();
                let got: String = self.seen.drain(..upto).collect();
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {needle:?} on the terminal; seen: {:?}",
                self.seen
            );
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&self.master),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut fds, 200u16).unwrap() == 0 {
                continue;
            }
            match nix::unistd::read(&self.master, &mut buf) {
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) => panic!("terminal closed ({e}); seen: {:?}", self.seen),
            }
        }
    }

    /// Waits until a `sleep` below this nixcell is its terminal's foreground job and
    /// running (read from the host's /proc), so that a ^C or ^Z typed next reaches it
    /// rather than the shell still reading its line.
    fn await_foreground_sleep(&self) {
        let root = self.child.id() as i32;
        let start = Instant::now();
        loop {
            let mut parent = std::collections::HashMap::new();
            let mut sleeps = Vec::new();
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                let Some((head, rest)) = stat.rsplit_once(") ") else {
                    continue;
                };
                let f: Vec<&str> = rest.split_whitespace().collect();
                let field = |i: usize| f[i].parse::<i32>().unwrap_or(-1);
                // state ppid pgrp session tty_nr tpgid
                parent.insert(pid, field(1));
                if head.ends_with("(sleep") && f[0] != "T" && field(2) == field(5) {
                    sleeps.push(pid);
                }
            }
            let below = |mut p: i32| {
                while p > 1 {
                    p = *parent.get(&p).unwrap_or(&0);
                    if p == root {
                        return true;
                    }
                }
                false
            };
            if sleeps.into_iter().any(below) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no sleep became the foreground job; seen: {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for nixcell to end; returns (exit status, stdout).
    fn wait(mut self) -> (Option<i32>, String, Session) {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut self.child.stdout.take().unwrap(), &mut out).unwrap();
        let st = self.child.wait().unwrap();
        (st.code(), out, self)
    }
}

#[test]
fn typed_commands_run_and_the_exit_status_comes_back() {
    for mode in MODES {
        let mut s = Session::start(mode, &[]);
        s.send("echo $((6*7))-typed; echo $0\n");
        assert!(s.expect("42-typed").ends_with("42-typed"), "{mode:?}");
        s.expect("bash");
        // The cell changing its own terminal leaves the caller's alone.
        s.send("stty -echo raw -isig; exit 7\n");
        let (code, _, s) = s.wait();
        assert_eq!(code, Some(7), "{mode:?}: the shell's exit status");
        s.assert_terminal_unchanged(&format!("{mode:?}"));
    }
}

#[test]
fn the_window_size_is_forwarded_and_follows_a_resize() {
    for mode in MODES {
        let mut s = Session::start(mode, &[]);
        s.send("stty size | tr ' ' x\n");
        s.expect("33x101");
        // The marker is computed, so that the echo of the typed line (by the pty, if
        // it arrives while `stty` still runs) is not taken for its output: the prompt
        // after the output is the one drawn once the trap is set.
        s.send("trap 'echo WINCH-$(stty size | tr \" \" :)' WINCH; echo trapped-$((2+3))\n");
        s.expect("trapped-5");
        s.expect(PROMPT);
        // The user resizes the terminal window: nixcell (its foreground process)
        // gets SIGWINCH and copies the size to the cell's pty.
        // SAFETY: TIOCSWINSZ reads one struct winsize.
        unsafe { set_winsize(s.master.as_raw_fd(), &size(40, 120)) }.unwrap();
        s.expect("WINCH-40:120");
        s.send("exit\n");
        assert_eq!(s.wait().0, Some(0), "{mode:?}");
    }
}

#[test]
fn job_control_works_in_the_cell() {
    for mode in MODES {
        let mut s = Session::start(mode, &["--timeout", "60s"]);
        // The shell is its session's leader, the pty its controlling terminal.
        s.send("read -r _ _ _ _ _ sid tty _ < /proc/$$/stat; [ $sid = $$ ] && [ $tty != 0 ] && echo leader-$((1+1)); sleep 100 &\n");
        s.expect("leader-2");
        s.expect(PROMPT);
        s.send("jobs\n");
        s.expect("Running");
        // The job's status, not bash's "Terminated" notice: whether the notice is
        // printed depends on whether bash reaped the job before or inside `wait`.
        s.send("kill %1; wait %1; echo killed-$?-$(jobs | wc -l)\n");
        s.expect("killed-143-0");
        // ^C reaches the foreground job (the terminal's, in the cell).
        s.send("sleep 100\n");
        s.await_foreground_sleep();
        s.send("\x03");
        s.send("echo status-$?\n");
        s.expect("status-130");
        // ^Z stops it, fg brings it back.
        s.send("sleep 100\n");
        s.await_foreground_sleep();
        s.send("\x1a");
        s.expect("Stopped");
        s.send("echo stopped-$(jobs -s | wc -l)\n");
        s.expect("stopped-1");
        s.send("fg\n");
        s.expect("sleep 100");
        s.await_foreground_sleep();
        s.send("\x03");
        s.send("echo resumed-$?-$(jobs | wc -l); exit 3\n");
        s.expect("resumed-130-0");
        let (code, _, s) = s.wait();
        assert_eq!(code, Some(3), "{mode:?}: {:?}", s.seen);
    }
}

#[test]
fn tiocsti_in_the_cell_cannot_type_into_the_callers_terminal() {
    let probe = "import fcntl, termios, os\n\
                 for path in ('stdin', '/dev/tty'):\n\
                 \x20   fd = 0 if path == 'stdin' else os.open(path, os.O_RDWR)\n\
                 \x20   try:\n\
                 \x20       for c in b'echo INJECTED\\n':\n\
                 \x20           fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))\n\
                 \x20       print(path, 'TYPED')\n\
                 \x20   except OSError as e:\n\
                 \x20       print(path, 'refused', e.errno)\n";
    for mode in MODES {
        let wd = workdir(mode);
        std::fs::write(wd.path().join("probe.py"), probe).unwrap();
        let mut s = Session::start(mode, &["--workdir", path_str(wd.path())]);
        s.send("python3 probe.py; exit\n");
        s.expect(&format!("stdin refused {}", libc::EPERM));
        s.expect(&format!("/dev/tty refused {}", libc::EPERM));
        let (code, _, s) = s.wait();
        assert_eq!(code, Some(0), "{mode:?}");
        // Nothing waits to be read by whatever reads the caller's terminal next.
        let mut n: libc::c_int = -1;
        // SAFETY: FIONREAD writes one int.
        unsafe { pending_input(s.slave.as_raw_fd(), &mut n) }.unwrap();
        assert_eq!(n, 0, "{mode:?}: input was typed into the caller's terminal");
    }
}

#[test]
fn a_timeout_kills_the_shell_and_the_terminal_is_put_back() {
    for mode in MODES {
        let s = Session::start(mode, &["--timeout", "3s", "--json"]);
        s.send("sleep 100\n");
        let (code, out, s) = s.wait();
        assert_eq!(code, Some(124), "{mode:?}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["timed_out"], true, "{v}");
        s.assert_terminal_unchanged(&format!("{mode:?}: after the timeout"));
    }
}

#[test]
fn the_verdict_comes_at_the_end_with_json() {
    for mode in MODES {
        let mut s = Session::start(mode, &["--json"]);
        s.send("echo on-the-terminal; exit 4\n");
        s.expect("on-the-terminal");
        let (code, out, _) = s.wait();
        assert_eq!(code, Some(4));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["exit_code"], 4, "{mode:?}: {v}");
        assert_eq!(v["command_exit_code"], 4);
        assert!(v["layers"].to_string().contains("seccomp"), "{mode:?}: {v}");
    }
}

#[test]
fn without_a_terminal_nothing_runs() {
    for mode in MODES {
        let o = nixcell(mode)
            .arg("shell")
            .args(["--env-path", path_str(&shell_env())])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = fails(&o, "shell without a terminal");
        assert!(err.contains("stdin is not a terminal"), "{mode:?}: {err}");
    }
}
