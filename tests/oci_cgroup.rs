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
        Bundle::running(mode, linux, "cat /proc/self/cgroup; sleep 30")
    }

    /// A bundle whose command is `sh -c script`.
    fn running(mode: Mode, linux: serde_json::Value, script: &str) -> Bundle {
        // SAFETY: prctl with an integer argument (PID 1 is reparented to us).
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        let dir = workdir(mode);
        let b = Bundle { mode, dir };
        let cfg = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh", "-c", script], "cwd": "/",
                        "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "annotations": {"dev.nixcell.closure": path_str(&busybox())},
            "linux": linux,
        });
        std::fs::create_dir_all(b.dir.path().join("bundle")).unwrap();
        std::fs::write(b.dir.path().join("bundle/config.json"), config_json(&cfg)).unwrap();
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

/// The first block device of this host (`major:minor`): the throttles need a real one.
fn a_block_device() -> String {
    let mut all: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .map(|d| d.trim().to_string())
        .collect();
    all.sort();
    all.into_iter()
        .next()
        .expect("a block device in /sys/block")
}

fn mounted(ctrl: &str) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines().any(|l| {
        l.split_once(" - ").is_some_and(|(_, r)| {
            let f: Vec<&str> = r.split_whitespace().collect();
            f.first() == Some(&"cgroup")
                && f.get(2).is_some_and(|o| o.split(',').any(|o| o == ctrl))
        })
    })
}

/// Polls the container's output (its stdout is `create`'s) for `marker`.
fn output_until(b: &Bundle, marker: &str) -> String {
    for _ in 0..500 {
        let out = std::fs::read_to_string(b.dir.path().join("err")).unwrap_or_default();
        if out.contains(marker) {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!(
        "no {marker:?} in the container's output: {}",
        std::fs::read_to_string(b.dir.path().join("err")).unwrap_or_default()
    );
}

/// blockIO and devices reach the blkio and devices hierarchies (root): PID 1 in a
/// cgroup at the container's path there, the weight (under BFQ's name where the
/// kernel has only that) and the throttle read back, the device rules listed in
/// order, and enforced: /dev/zero allowed for reading only cannot be written inside,
/// while it reads and /dev/null works. `delete` removes both.
#[test]
fn root_blkio_and_devices_are_written_and_enforced() {
    let top = uniq("dev");
    let path = format!("/{top}/ctr");
    let dev = a_block_device();
    let (major, minor) = dev.split_once(':').unwrap();
    let (major, minor): (i64, i64) = (major.parse().unwrap(), minor.parse().unwrap());
    let b = Bundle::running(
        Mode::Root,
        serde_json::json!({
            "cgroupsPath": path,
            "resources": {
                "blockIO": {
                    "weight": 500,
                    "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 102400}],
                },
                "devices": [
                    {"allow": false, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
                    {"allow": true, "type": "b", "major": major, "minor": minor, "access": "r"},
                    {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"},
                ],
            },
        }),
        "cat /dev/null && echo read-null; head -c1 /dev/zero >/dev/null && echo read-zero; \
         (echo x > /dev/zero) 2>/dev/null && echo wrote-zero || echo no-write-zero; \
         echo end-marker; sleep 30",
    );
    let id = uniq("d");
    let (code, err) = b.create(&id);
    let _guard = Deleted(&b, &id);
    assert_eq!(code, Some(0), "create: {err}");
    let pid = b.pid();
    let under = |c: &str| Path::new(CG).join(c).join(&path[1..]);
    for c in ["blkio", "devices"] {
        assert_eq!(cgroup_of(pid, c), path, "PID 1's {c} cgroup");
    }
    let blk = under("blkio");
    let weight = ["blkio.weight", "blkio.bfq.weight"]
        .iter()
        .map(|f| blk.join(f))
        .find(|f| f.exists())
        .expect("a blkio weight file");
    assert!(read(&weight).ends_with("500"), "{}", read(&weight));
    assert_eq!(
        read(&blk.join("blkio.throttle.read_bps_device")),
        format!("{dev} 102400")
    );
    let list = read(&under("devices").join("devices.list"));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(
        lines[..3],
        ["c 10:229 rwm", &format!("b {dev} r"), "c 1:5 r"],
        "{list}"
    );
    // The cell's other devices are allowed after the rules; /dev/zero only as asked.
    assert!(
        lines.contains(&"c 1:3 rwm") && lines.contains(&"c 136:* rwm"),
        "{list}"
    );
    assert!(!lines[3..].iter().any(|l| l.contains(" 1:5 ")), "{list}");
    let o = b.cmd(&["start", &id]).status().unwrap();
    assert!(o.success(), "start");
    let out = output_until(&b, "end-marker");
    assert!(out.contains("read-null"), "{out}");
    assert!(out.contains("read-zero"), "{out}");
    assert!(out.contains("no-write-zero"), "{out}");
    let o = b.cmd(&["delete", "--force", &id]).output().unwrap();
    assert!(o.status.success(), "delete: {}", text(&o.stderr));
    wait(pid);
    for c in ["blkio", "devices", "memory"] {
        assert!(!under(c).exists(), "{} left", under(c).display());
    }
    for c in ["memory", "cpu", "pids", "blkio", "devices"] {
        rmdirs(&Path::new(CG).join(c).join(&top));
    }
}

/// Rootless: blkio and devices are not delegated: a warning each, the container runs.
#[test]
fn rootless_blkio_and_devices_warn() {
    let (uid, _) = test_user_ids();
    let path = format!("/nixcell/user-{uid}/{}", uniq("rdev"));
    let b = Bundle::new(
        Mode::Rootless,
        serde_json::json!({
            "cgroupsPath": path,
            "resources": {
                "blockIO": {"weight": 500},
                "devices": [{"allow": false, "access": "rwm"}],
            },
        }),
    );
    let id = uniq("rd");
    let (code, err) = b.create(&id);
    let _guard = Deleted(&b, &id);
    assert_eq!(code, Some(0), "create: {err}");
    for f in ["blockIO: not written", "devices: not written"] {
        assert!(err.contains(f), "{f}: {err}");
    }
    assert_ne!(cgroup_of(b.pid(), "devices"), path);
    let o = b.cmd(&["delete", "--force", &id]).output().unwrap();
    assert!(o.status.success(), "delete: {}", text(&o.stderr));
    wait(b.pid());
}

/// A resource whose hierarchy this host lacks (net_cls, hugetlb or rdma here) fails
/// `create` naming the field and the hierarchy, as runc does; nothing is left: no
/// state, no cgroup at the path, no process. Root and rootless.
#[test]
fn a_missing_hierarchy_fails_create() {
    let cases = [
        (
            "net_cls",
            serde_json::json!({"network": {"classID": 1048577}}),
            "network.classID",
        ),
        (
            "hugetlb",
            serde_json::json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}]}),
            "hugepageLimits",
        ),
        (
            "rdma",
            serde_json::json!({"rdma": {"mlx5_0": {"hcaHandles": 1}}}),
            "rdma",
        ),
    ];
    let missing: Vec<_> = cases.iter().filter(|(c, _, _)| !mounted(c)).collect();
    assert!(
        !missing.is_empty(),
        "this host mounts net_cls, hugetlb and rdma: nothing missing to test"
    );
    let (uid, _) = test_user_ids();
    for mode in MODES {
        for (ctrl, res, field) in &missing {
            let top = uniq(&format!("miss-{ctrl}"));
            let path = match mode {
                Mode::Root => format!("/{top}"),
                Mode::Rootless => format!("/nixcell/user-{uid}/{top}"),
            };
            let b = Bundle::new(
                mode,
                serde_json::json!({"cgroupsPath": path, "resources": res}),
            );
            let (code, err) = b.create("miss");
            assert_eq!(code, Some(1), "{mode:?} {ctrl}: {err}");
            assert!(
                err.contains(&format!("linux.resources.{field}"))
                    && err.contains(&format!(
                        "no cgroup v1 hierarchy with the {ctrl} controller"
                    )),
                "{mode:?} {ctrl}: {err}"
            );
            let state = b.dir.path().join("state");
            if state.exists() {
                assert_empty_dir(&state, ctrl);
            }
            for c in ["memory", "cpu", "pids"] {
                let d = Path::new(CG).join(c).join(&path[1..]);
                assert!(!d.exists(), "{mode:?}: {} left", d.display());
            }
        }
    }
}

/// Every cgroup dir below `top` (any depth) whose name holds `needle`.
fn dirs_named(top: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if e.file_name().to_string_lossy().contains(needle) {
                    found.push(e.path());
                }
                stack.push(e.path());
            }
        }
    }
    found
}

/// A container whose command exits 7 (and one that exits 0), with and without a
/// cgroupsPath: after `delete` no cgroup named for it is left in any hierarchy.
#[test]
fn delete_after_a_failing_command_leaves_no_cgroup() {
    let (uid, _) = test_user_ids();
    for mode in MODES {
        for code in [7, 0] {
            for placed in [false, true] {
                let id = uniq(&format!("x{code}{}", if placed { "p" } else { "" }));
                let base = match mode {
                    Mode::Root => "/nixcell/user-0".to_string(),
                    Mode::Rootless => format!("/nixcell/user-{uid}"),
                };
                let linux = if placed {
                    serde_json::json!({"cgroupsPath": format!("{base}/{id}")})
                } else {
                    serde_json::json!({})
                };
                let b = Bundle::running(mode, linux, &format!("exit {code}"));
                let (c, err) = b.create(&id);
                let _guard = Deleted(&b, &id);
                assert_eq!(c, Some(0), "{mode:?}: create: {err}");
                let pid = b.pid();
                assert!(b.cmd(&["start", &id]).status().unwrap().success());
                let mut stopped = false;
                for _ in 0..500 {
                    let o = b.cmd(&["state", &id]).output().unwrap();
                    if text(&o.stdout).contains("\"stopped\"") {
                        stopped = true;
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                assert!(stopped, "{mode:?} exit {code}: never stopped");
                let o = b.cmd(&["delete", &id]).output().unwrap();
                assert!(o.status.success(), "{mode:?}: delete: {}", text(&o.stderr));
                wait(pid);
                for c in ["memory", "cpu", "pids", "cpuset", "blkio", "devices"] {
                    let left = dirs_named(&Path::new(CG).join(c), &id);
                    assert!(
                        left.is_empty(),
                        "{mode:?} exit {code} placed {placed}: {left:?}"
                    );
                }
            }
        }
    }
}
