//! `linux.cgroupsPath` and `linux.resources` of `nixcell oci create`, seen on the
//! host's cgroupfs (v1 on this machine): PID 1 at the path in each hierarchy, the
//! limits there (the profile's the ceiling), `delete` removing it and leaving the
//! parents, paths that would leave the hierarchy or a rootless caller's delegated
//! cgroup refused. Root and rootless.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CG: &str = "/sys/fs/cgroup";

struct Bundle {
    mode: Mode,
    dir: tempfile::TempDir,
}

impl Bundle {
    fn new(mode: Mode, linux: serde_json::Value) -> Bundle {
        // SAFETY: prctl with an integer argument (PID 1 is reparented to us).
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        let dir = workdir(mode);
        let b = Bundle { mode, dir };
        let cfg = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh", "-c", "cat /proc/self/cgroup; sleep 30"], "cwd": "/",
                        "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "annotations": {"dev.nixcell.closure": path_str(&busybox())},
            "linux": linux,
        });
        std::fs::create_dir_all(b.dir.path().join("bundle")).unwrap();
        std::fs::write(b.dir.path().join("bundle/config.json"), cfg.to_string()).unwrap();
        if mode == Mode::Rootless {
            chown_to_test_user(b.dir.path());
        }
        b
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = nixcell(self.mode);
        c.arg("oci")
            .arg("--debug")
            .arg("--root")
            .arg(self.dir.path().join("state"))
            .args(args);
        c
    }

    /// `create`: its status and stderr (a file: PID 1 keeps what it inherits open).
    fn create(&self, id: &str) -> (Option<i32>, String) {
        let bundle = self.dir.path().join("bundle");
        let (pid_file, err) = (self.dir.path().join("pid"), self.dir.path().join("err"));
        let f = std::fs::File::create(&err).unwrap();
        let st = self
            .cmd(&["create", "--bundle", path_str(&bundle), "--pid-file"])
            .arg(pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .status()
            .unwrap();
        (st.code(), std::fs::read_to_string(err).unwrap())
    }

    fn pid(&self) -> i32 {
        let p = std::fs::read_to_string(self.dir.path().join("pid")).unwrap();
        p.trim().parse().unwrap()
    }
}

/// Deletes the container (`--force`) when dropped: a failed assertion leaves no held
/// PID 1 and no cgroup.
struct Deleted<'a>(&'a Bundle, &'a str);

impl Drop for Deleted<'_> {
    fn drop(&mut self) {
        let _ = self.0.cmd(&["delete", "--force", self.1]).output();
    }
}

fn uniq(what: &str) -> String {
    format!("nxcg-{what}-{}", std::process::id())
}

/// The cgroup of `pid` in the v1 hierarchy of `ctrl`.
fn cgroup_of(pid: i32, ctrl: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, list, path) = (f.next()?, f.next()?, f.next()?);
            list.split(',').any(|c| c == ctrl).then(|| path.to_string())
        })
        .unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

fn rmdirs(top: &Path) {
    let mut all: Vec<PathBuf> = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        all.push(d);
    }
    for d in all.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

fn wait(pid: i32) {
    let mut st = 0;
    // SAFETY: waitpid on a child (PID 1 was reparented to this subreaper).
    unsafe { libc::waitpid(pid, &mut st, 0) };
}

/// A container at `path` (relative to each hierarchy root `top` of `rel_to`):
/// PID 1 there in memory, cpu and pids, the asked limits written at the path, the
/// stricter of asked and profile (pids 1000 asked, the default profile's 512), and
/// the command below it; `delete` removes the container's cgroup, not its parents.
fn placed_and_removed(
    mode: Mode,
    path: &str,
    under: &dyn Fn(&str) -> PathBuf,
    rel_to: &dyn Fn(&str) -> String,
) {
    let b = Bundle::new(
        mode,
        serde_json::json!({
            "cgroupsPath": path,
            "resources": {
                "memory": {"limit": 50593792, "reservation": 40000000, "swappiness": 10,
                           "disableOOMKiller": true},
                "cpu": {"shares": 2048, "quota": 50000, "period": 200000, "cpus": "0", "mems": "0"},
                "pids": {"limit": 1000},
            },
        }),
    );
    let id = uniq("c");
    let (code, err) = b.create(&id);
    let _guard = Deleted(&b, &id);
    assert_eq!(code, Some(0), "{mode:?}: create: {err}");
    let pid = b.pid();
    let tail = path.trim_start_matches('/');
    for c in ["memory", "cpu", "pids"] {
        let want = format!("{}/{tail}", rel_to(c));
        assert_eq!(
            cgroup_of(pid, c),
            want.replace("//", "/"),
            "{mode:?}: PID 1's {c} cgroup"
        );
        assert!(under(c).is_dir(), "{mode:?}: {}", under(c).display());
    }
    let m = under("memory");
    assert_eq!(read(&m.join("memory.limit_in_bytes")), "50593792");
    assert_eq!(read(&m.join("memory.soft_limit_in_bytes")), "39997440");
    assert_eq!(read(&m.join("memory.swappiness")), "10");
    assert!(read(&m.join("memory.oom_control")).contains("oom_kill_disable 1"));
    let cpu = under("cpu");
    assert_eq!(read(&cpu.join("cpu.shares")), "2048");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "200000");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(&under("pids").join("pids.max")), "512", "{mode:?}");
    // cpus/mems: a cgroup in the cpuset hierarchy at the same path (as root; rootless
    // the cpuset hierarchy is not delegated: a warning).
    let cpusets = mode == Mode::Root;
    if cpusets {
        assert_eq!(cgroup_of(pid, "cpuset"), cgroup_of(pid, "memory"));
        assert_eq!(read(&under("cpuset").join("cpuset.cpus")), "0");
    } else {
        assert!(err.contains("cpus/mems: not written"), "{err}");
    }
    let o = b
        .cmd(&["start", &id])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(o.success(), "{mode:?}: start");
    // The command's memory cgroup is below the container's (nixcell's `cell`).
    let mut cmd_pid = None;
    for _ in 0..200 {
        let kids = std::fs::read_to_string(m.join("cell/cgroup.procs")).unwrap_or_default();
        if let Some(p) = kids.split_whitespace().next() {
            cmd_pid = p.parse::<i32>().ok();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let cmd_pid = cmd_pid.expect("the command in the container's cell cgroup");
    assert_eq!(
        cgroup_of(cmd_pid, "pids"),
        cgroup_of(pid, "pids"),
        "{mode:?}"
    );
    let o = b.cmd(&["delete", "--force", &id]).output().unwrap();
    assert!(o.status.success(), "{mode:?}: delete: {}", text(&o.stderr));
    wait(pid);
    for c in ["memory", "cpu", "pids", "cpuset"] {
        if c == "cpuset" && !cpusets {
            continue;
        }
        assert!(!under(c).exists(), "{mode:?}: {} left", under(c).display());
        assert!(under(c).parent().unwrap().is_dir(), "{mode:?}: parent gone");
    }
}

#[test]
fn root_absolute_and_relative_paths() {
    let top = uniq("abs");
    let abs = format!("/{top}/pod/ctr");
    placed_and_removed(
        Mode::Root,
        &abs,
        &|c: &str| Path::new(CG).join(c).join(&abs[1..]),
        &|_| String::new(),
    );
    for c in ["memory", "cpu", "pids", "cpuset"] {
        rmdirs(&Path::new(CG).join(c).join(&top));
    }
    // Relative: below nixcell's own per-user cgroup.
    let rel = format!("{}/ctr", uniq("rel"));
    let base = |c: &str| Path::new(CG).join(c).join("nixcell/user-0");
    placed_and_removed(Mode::Root, &rel, &|c: &str| base(c).join(&rel), &|_| {
        "/nixcell/user-0".into()
    });
    for c in ["memory", "cpu", "pids", "cpuset"] {
        rmdirs(&base(c).join(rel.split('/').next().unwrap()));
    }
}

#[test]
fn rootless_inside_its_delegated_cgroup() {
    let (uid, _) = test_user_ids();
    let abs = format!("/nixcell/user-{uid}/{}/ctr", uniq("dlg"));
    placed_and_removed(
        Mode::Rootless,
        &abs,
        &|c: &str| Path::new(CG).join(c).join(&abs[1..]),
        &|_| String::new(),
    );
    for c in ["memory", "cpu", "pids"] {
        rmdirs(
            &Path::new(CG)
                .join(c)
                .join(abs[1..].rsplit_once('/').unwrap().0),
        );
    }
}

/// Refused, nothing made: a `..` component (both modes). Rootless, a path outside
/// the delegated cgroup is not honoured (as runc): a warning, nothing made there.
#[test]
fn escaping_paths_are_refused() {
    let (uid, _) = test_user_ids();
    let top = uniq("esc");
    for mode in MODES {
        for path in [
            format!("/nixcell/user-{uid}/{top}/../../x"),
            format!("{top}/../../../x"),
        ] {
            let b = Bundle::new(mode, serde_json::json!({"cgroupsPath": path}));
            let (code, err) = b.create("esc");
            assert_eq!(code, Some(1), "{mode:?} {path}: {err}");
            assert!(
                err.contains("..") && err.contains("linux.cgroupsPath"),
                "{mode:?} {path}: {err}"
            );
            let state = b.dir.path().join("state");
            if state.exists() {
                assert_empty_dir(&state, &path);
            }
            for c in ["memory", "cpu", "pids"] {
                assert!(!Path::new(CG).join(c).join(&top).exists(), "{path}");
                assert!(!Path::new(CG).join(c).join("x").exists(), "{path}");
            }
        }
    }
    let path = format!("/{top}");
    let b = Bundle::new(Mode::Rootless, serde_json::json!({"cgroupsPath": path}));
    let (code, err) = b.create("out");
    let _guard = Deleted(&b, "out");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("not honoured"), "{err}");
    let o = b.cmd(&["delete", "--force", "out"]).output().unwrap();
    assert!(o.status.success(), "delete: {}", text(&o.stderr));
    for c in ["memory", "cpu", "pids"] {
        assert!(!Path::new(CG).join(c).join(&top).exists(), "{path}");
    }
}
