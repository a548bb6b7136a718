//! Reliability under faults nixcell must survive: the supervisor, the init stage or
//! PID 1 SIGKILLed at each named set-up stage, `nixcell edit` SIGKILLed mid-way, and
//! concurrency (many runs through one MCP server, many edits of one project).
//!
//! The pause points come from outside the binary: each run goes under strace, which
//! holds the cell's process at the entry of the system call that begins a stage
//! (`-e inject=SYSCALL:delay_enter=..:when=N`, N-th call of that process); the test
//! sees it stopped there (/proc/PID/stat 't', /proc/PID/syscall) and kills. strace
//! follows every process of the run and exits when the last one is gone, so its exit
//! is the moment no process of the cell survives.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A stage, the system call that begins it, which call of its process that is, and
/// which process makes it (1: the init stage, 2: PID 1, 3: the command's process).
struct Point {
    stage: &'static str,
    syscall: &'static str,
    nr: libc::c_long,
    when: u32,
    by: usize,
    /// Reached only when started as root (leaving host root).
    root_only: bool,
}

const fn point(
    stage: &'static str,
    syscall: &'static str,
    nr: libc::c_long,
    when: u32,
    by: usize,
) -> Point {
    Point {
        stage,
        syscall,
        nr,
        when,
        by,
        root_only: false,
    }
}

/// Every named stage with a system call of its own, in set-up order
/// (src/sandbox/stage.rs; docs/ARCHITECTURE.md gives the order).
const POINTS: &[Point] = &[
    point("check-parent", "getppid", libc::SYS_getppid, 1, 1),
    Point {
        root_only: true,
        ..point("leave-host-root", "setgroups", libc::SYS_setgroups, 1, 1)
    },
    point("unshare", "unshare", libc::SYS_unshare, 1, 1),
    point("hostname", "sethostname", libc::SYS_sethostname, 1, 2),
    point("mount-private", "mount", libc::SYS_mount, 1, 2),
    point("tmpfs-root", "mount", libc::SYS_mount, 2, 2),
    point(
        "detach-oldroot (pivot_root)",
        "pivot_root",
        libc::SYS_pivot_root,
        1,
        2,
    ),
    point("bind-store", "mount", libc::SYS_mount, 3, 2),
    point("proc", "mount", libc::SYS_mount, 5, 2),
    point(
        "detach-oldroot (umount)",
        "umount2",
        libc::SYS_umount2,
        1,
        2,
    ),
    point("pid1 (capabilities)", "capset", libc::SYS_capset, 1, 2),
    point(
        "landlock",
        "landlock_restrict_self",
        libc::SYS_landlock_restrict_self,
        1,
        3,
    ),
    point("seccomp", "seccomp", libc::SYS_seccomp, 1, 3),
];

/// How long strace holds the process at the pause point.
const HOLD: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Victim {
    Supervisor,
    InitStage,
    Pid1,
}

fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn runs_nixcell(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|e| std::fs::canonicalize(bin()).is_ok_and(|b| b == e))
}

/// Whether `pid` is stopped by its tracer at the entry of system call `nr`.
fn held_at(pid: i32, nr: libc::c_long) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    state == Some("t") && call.split_whitespace().next() == Some(nr.to_string().as_str())
}

/// The processes of a run under strace: supervisor, init stage, PID 1, the command's
/// process (each once it exists).
fn chain(strace: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut at = strace;
    // strace -> supervisor -> init stage -> PID 1 -> the command's process.
    for _ in 0..4 {
        let Some(next) = children(at).into_iter().find(|c| runs_nixcell(*c)) else {
            break;
        };
        out.push(next);
        at = next;
    }
    out
}

/// The run's cgroup directories named after supervisor `pid`.
fn cgroups_of(pid: i32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ctrl in ["memory", "cpu", "pids", "unified", ""] {
        let base = Path::new("/sys/fs/cgroup").join(ctrl).join("nixcell");
        let Ok(users) = std::fs::read_dir(&base) else {
            continue;
        };
        for u in users.flatten() {
            for r in std::fs::read_dir(u.path()).into_iter().flatten().flatten() {
                let name = r.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("run-{pid}-")) {
                    out.push(r.path());
                }
            }
        }
    }
    out
}

fn strace_run(mode: Mode, p: &Point, bb: &Path, wd: &Path) -> Child {
    let inject = format!(
        "inject={}:delay_enter={}:when={}",
        p.syscall,
        HOLD.as_micros(),
        p.when
    );
    let trace = format!("trace={}", p.syscall);
    let args = ["-f", "-qq", "-o", "/dev/null", "-e", &trace, "-e", &inject];
    let mut c = match mode {
        Mode::Root => {
            let mut c = Command::new("strace");
            c.env("XDG_CACHE_HOME", repo().join("target/test-cache/root"));
            c.args(args);
            c
        }
        Mode::Rootless => {
            let mut c = as_test_user();
            c.arg("strace").args(args);
            c
        }
    };
    c.arg(bin())
        .args(["run", "--json", "--env-path", path_str(bb), "--workdir"])
        .arg(wd)
        .args(["--", "sh", "-c", "echo ran > /work/ran; sleep 30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace (scripts/setup.sh installs it)")
}

/// Kills `victim` while the run is held at `p`; returns how long after the kill the
/// last process of the run was gone, the supervisor's pid and how many cgroup
/// directories of its run were left then.
fn kill_at(mode: Mode, p: &Point, victim: Victim) -> Option<(Duration, i32, usize)> {
    let bb = busybox();
    let wd = workdir(mode);
    let mut child = strace_run(mode, p, &bb, wd.path());
    let strace = child.id() as i32;
    let start = Instant::now();
    let (procs, held) = loop {
        let procs = chain(strace);
        if let Some(h) = procs.get(p.by).filter(|q| held_at(**q, p.nr)) {
            break (procs.clone(), *h);
        }
        if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "{mode:?}: the run never stopped at {} ({}#{}):\n{}",
                p.stage,
                p.syscall,
                p.when,
                text(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let target = match victim {
        Victim::Supervisor => procs[0],
        Victim::InitStage => procs[1],
        // PID 1 exists once the init stage is past its fork.
        Victim::Pid1 => match procs.get(2).filter(|_| p.by >= 2) {
            Some(p) => *p,
            None => {
                // Not forked yet at this stage: nothing to kill.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(procs[0]),
                    nix::sys::signal::Signal::SIGKILL,
                );
                child.wait_with_output().unwrap();
                return None;
            }
        },
    };
    assert!(procs.contains(&held));
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(target),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // strace exits when the last process it follows is gone.
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if killed.elapsed() > Duration::from_secs(10) {
            let left = chain(strace);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(strace),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!(
                "{mode:?}: {victim:?} killed at {}: processes {left:?} still alive after 10 s",
                p.stage
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let gone = killed.elapsed();
    let left = cgroups_of(procs[0]).len();
    let o = child.wait_with_output().unwrap();
    if victim != Victim::Supervisor {
        // The supervisor lived to tell: one JSON verdict, a failure.
        let v = verdict(&o);
        assert_ne!(v["exit_code"], 0, "{mode:?} {victim:?} at {}: {v}", p.stage);
    }
    // Nothing of the command came back, nor did the cell write into the real workdir.
    assert!(
        !wd.path().join("ran").exists(),
        "{mode:?}: {victim:?} killed at {}: the command's write reached the workdir",
        p.stage
    );
    Some((gone, procs[0], left))
}

fn kill_every_stage(victim: Victim) {
    let mut worst = Duration::ZERO;
    let mut stale = Vec::new();
    let mut left_by_kills = 0;
    for mode in MODES {
        for p in POINTS {
            if p.root_only && mode == Mode::Rootless {
                continue;
            }
            let Some((gone, supervisor, left)) = kill_at(mode, p, victim) else {
                continue;
            };
            eprintln!(
                "{mode:?}: {victim:?} SIGKILLed at {}: all gone {} ms later",
                p.stage,
                gone.as_millis()
            );
            assert!(
                gone <= Duration::from_secs(1),
                "{mode:?}: {victim:?} killed at {}: the cell took {gone:?} to die",
                p.stage
            );
            worst = worst.max(gone);
            left_by_kills += left;
            stale.push((mode, supervisor));
        }
    }
    // A killed supervisor leaves its run's cgroups; the next run of each user removes
    // them.
    if victim == Victim::Supervisor {
        assert!(left_by_kills > 0, "no cgroup of a killed supervisor found");
    }
    for mode in MODES {
        ok(&sh(mode, &[], "true"), "the next run");
    }
    for (mode, pid) in stale {
        let left = cgroups_of(pid);
        assert!(left.is_empty(), "{mode:?}: the next run left {left:?}");
    }
    eprintln!(
        "{victim:?}: slowest death {} ms (the hold included); {left_by_kills} cgroup dirs left by kills, removed by the next run",
        worst.as_millis()
    );
}

#[test]
fn a_supervisor_killed_at_any_stage_takes_its_cell_along() {
    kill_every_stage(Victim::Supervisor);
}

#[test]
fn an_init_stage_killed_at_any_stage_takes_its_cell_along() {
    kill_every_stage(Victim::InitStage);
}

#[test]
fn a_pid1_killed_at_any_stage_takes_its_cell_along() {
    kill_every_stage(Victim::Pid1);
}

// ---------------------------------------------------------------- edits

fn pkgs_dir() -> PathBuf {
    repo().join("tests/fixtures/pkgs")
}

const OPEN_POLICY: &str = "[policy]\npackages = [\"*\"]\npython_libraries = [\"*\"]\nservices = [\"redis\"]\napproval = \"auto\"\n";

/// The fixture project `analysis` with every package allowed, as a git project.
fn edit_project() -> tempfile::TempDir {
    let src = repo().join("tests/fixtures/projects/analysis/devenv.nix");
    git_project(
        "reliab",
        &[
            ("devenv.nix", &std::fs::read_to_string(src).unwrap()),
            ("nixcell.toml", OPEN_POLICY),
        ],
    )
}

fn edit_cmd(dir: &Path, op: &str, name: &str) -> Command {
    let mut c = nixcell(Mode::Root);
    c.current_dir(dir)
        .env("NIX_PATH", format!("nixpkgs={}", pkgs_dir().display()))
        .args(["edit", op, name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// What an edit may change: the declaration, the policy, HEAD, the index's entries.
#[derive(Debug, Clone, PartialEq)]
struct State {
    declaration: Vec<u8>,
    policy: Vec<u8>,
    head: String,
    index: String,
    status: String,
}

fn state(dir: &Path) -> State {
    State {
        declaration: std::fs::read(dir.join("devenv.nix")).unwrap(),
        policy: std::fs::read(dir.join("nixcell.toml")).unwrap(),
        head: git(dir, &["rev-parse", "HEAD"]).trim().to_string(),
        index: git(dir, &["ls-files", "--stage"]),
        status: git_status(dir),
    }
}

/// Waits until no process of process group `pgid` is left (git, nix).
fn wait_group_gone(pgid: i32) {
    let start = Instant::now();
    loop {
        let alive = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(2).map(str::to_string))
                    == Some(pgid.to_string())
            })
        });
        if !alive {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "group {pgid}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `nixcell edit OP jq` (adding jq when it is absent, else removing it) and
/// SIGKILLs it when the `k`-th program it runs (git, nix) starts; false if the edit
/// ended first.
fn edit_killed_at(dir: &Path, k: usize) -> bool {
    use std::os::unix::process::CommandExt;
    let has = String::from_utf8_lossy(&state(dir).declaration).contains("pkgs.jq");
    let op = if has { "remove-package" } else { "add-package" };
    let mut child = edit_cmd(dir, op, "jq").process_group(0).spawn().unwrap();
    let pid = child.id() as i32;
    let mut seen = std::collections::HashSet::new();
    let killed = loop {
        seen.extend(children(pid));
        if seen.len() >= k {
            let _ = child.kill();
            break true;
        }
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    child.wait().unwrap();
    // What it started (git, nix) ends on its own; then the project is looked at.
    wait_group_gone(pid);
    killed
}

#[test]
fn an_edit_killed_mid_way_leaves_the_project_as_it_was_or_committed() {
    let p = edit_project();
    let dir = p.path();
    ok(
        &edit_cmd(dir, "add-package", "jq").output().unwrap(),
        "edit",
    );
    let (mut untouched, mut committed, mut settled) = (0, 0, 0);
    for k in 1.. {
        let before = state(dir);
        let had = String::from_utf8_lossy(&before.declaration).contains("pkgs.jq");
        if !edit_killed_at(dir, k) {
            break;
        }
        let mid = state(dir);
        assert_eq!(mid.policy, before.policy, "kill {k}: the policy changed");
        // The next edit settles what a crash left (this one has nothing to do).
        let o = edit_cmd(dir, "remove-package", "nosuchpackage")
            .output()
            .unwrap();
        fails(&o, "an edit with nothing to do");
        let after = state(dir);
        if mid != after {
            settled += 1;
        }
        if after == before {
            untouched += 1;
            continue;
        }
        // Otherwise: exactly one new commit, holding the declaration as it is now.
        let parent = git(dir, &["rev-parse", "HEAD~1"]).trim().to_string();
        assert_eq!(
            parent,
            before.head,
            "kill {k}: not one commit on top:\nbefore {before:?}\nmid {mid:?}\nafter {after:?}\n{}",
            git(dir, &["log", "--oneline"])
        );
        let committed_decl = git(dir, &["show", "HEAD:devenv.nix"]);
        assert_eq!(
            committed_decl.as_bytes(),
            after.declaration.as_slice(),
            "kill {k}: the declaration is not what was committed"
        );
        assert_eq!(after.status, "", "kill {k}: the work tree is not clean");
        assert_eq!(
            String::from_utf8_lossy(&after.declaration).contains("pkgs.jq"),
            !had,
            "kill {k}: committed, but not the edit"
        );
        committed += 1;
    }
    eprintln!(
        "edit killed as each of its programs started: {untouched} untouched, {committed} committed, {settled} of them settled by the next edit"
    );
    assert!(untouched + committed >= 5, "too few kill points");
    // The lock died with its holder: the next edit goes through.
    let has = String::from_utf8_lossy(&state(dir).declaration).contains("pkgs.jq");
    let op = if has { "remove-package" } else { "add-package" };
    ok(
        &edit_cmd(dir, op, "jq").output().unwrap(),
        "edit after the kills",
    );
    assert_eq!(git_status(dir), "");
}

#[test]
fn sixteen_concurrent_edits_of_one_project_all_land() {
    let p = edit_project();
    let dir = p.path();
    let edits: &[(&str, &str, &str)] = &[
        ("add-package", "jq", "pkgs.jq"),
        ("add-package", "ripgrep", "pkgs.ripgrep"),
        ("add-package", "hello", "pkgs.hello"),
        ("add-package", "bash", "pkgs.bash"),
        ("add-package", "coreutils", "pkgs.coreutils"),
        ("add-package", "gnugrep", "pkgs.gnugrep"),
        ("add-package", "gnused", "pkgs.gnused"),
        ("add-package", "findutils", "pkgs.findutils"),
        ("add-package", "file", "pkgs.file"),
        ("add-package", "tzdata", "pkgs.tzdata"),
        ("add-package", "redis", "pkgs.redis"),
        ("add-package", "postgresql", "pkgs.postgresql"),
        ("add-python-library", "pandas", "ps.pandas"),
        ("add-python-library", "numpy", "ps.numpy"),
        ("add-python-library", "openpyxl", "ps.openpyxl"),
        ("enable-service", "redis", "services.redis.enable = true"),
    ];
    let start = Instant::now();
    let children: Vec<_> = edits
        .iter()
        .map(|(op, name, _)| edit_cmd(dir, op, name).spawn().unwrap())
        .collect();
    for (c, (op, name, _)) in children.into_iter().zip(edits) {
        let o: Output = c.wait_with_output().unwrap();
        ok(&o, &format!("{op} {name}"));
    }
    let took = start.elapsed();
    let decl = std::fs::read_to_string(dir.join("devenv.nix")).unwrap();
    for (_, _, want) in edits {
        assert!(decl.contains(want), "{want} lost:\n{decl}");
    }
    let commits = git(dir, &["rev-list", "--count", "HEAD"]);
    assert_eq!(commits.trim(), "17", "one commit per edit");
    assert_eq!(git_status(dir), "");
    eprintln!("16 concurrent edits: all committed in {took:?}");
}

// ---------------------------------------------------------------- MCP

fn mcp_python() -> PathBuf {
    let py = repo().join("target/mcp-venv/bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import mcp.client.stdio"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} lacks the mcp SDK (scripts/test.sh creates it)",
        py.display()
    );
    py
}

/// `tests/reliability_mcp.py SCENARIO N` on a server of `server_args`, in `mode`: its
/// JSON line.
fn mcp_scenario(mode: Mode, scenario: &str, n: u32, server_args: &[&str]) -> serde_json::Value {
    let py = mcp_python();
    let mut cmd = match mode {
        Mode::Root => {
            let mut c = Command::new(&py);
            c.env("XDG_CACHE_HOME", repo().join("target/test-cache/root"));
            c
        }
        Mode::Rootless => {
            let mut c = as_test_user();
            c.arg(&py);
            c
        }
    };
    let bb = busybox();
    let out = cmd
        .arg(repo().join("tests/reliability_mcp.py"))
        .args([scenario, &n.to_string(), bin(), "--env-path", path_str(&bb)])
        .args(server_args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{mode:?} {scenario}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let v = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    eprintln!("{mode:?} {scenario}: {v}");
    v
}

#[test]
fn sixty_four_runs_in_flight_through_one_mcp_server() {
    for mode in MODES {
        // A server whose bound lets all 64 run at once.
        let v = mcp_scenario(mode, "in_flight", 64, &["--max-runs", "64"]);
        assert_eq!(v["runs"], 64, "{v}");
        // They were in flight together, not one after the other.
        assert!(v["in_flight_together"].as_u64().unwrap() >= 32, "{v}");
        // Each within the default profile's memory limit.
        let limit = nixcell::profile::load("default").unwrap().limits.memory;
        if let (Some(peak), Some(l)) = (v["max_peak_memory_bytes"].as_u64(), limit) {
            assert!(peak <= l, "{v}");
        }
    }
}

/// The server's bound, not luck: 64 runs in flight on a server of 3 slots never have
/// more than 3 cells at once (counted from the host), and every one is answered.
#[test]
fn sixty_four_runs_on_a_server_of_three_slots_never_run_more_than_three_cells() {
    for mode in MODES {
        let v = mcp_scenario(mode, "capped", 64, &["--max-runs", "3"]);
        assert_eq!(v["runs"], 64, "{v}");
        let most = v["most_cells_at_once"].as_u64().unwrap();
        assert!(most <= 3, "{v}");
        // The host did see them: the bound was reached, not merely unobserved.
        assert!(most >= 2, "{v}");
    }
}

/// Beyond the waiting bound a run is refused at once with an MCP error that says the
/// server is busy and names its flags; the freed slot serves the next call.
#[test]
fn a_run_beyond_the_waiting_bound_is_refused_saying_the_server_is_busy() {
    for mode in MODES {
        let v = mcp_scenario(mode, "busy", 3, &["--max-runs", "1", "--max-queued", "0"]);
        assert_eq!(
            (v["ran"].as_u64(), v["refused"].as_u64()),
            (Some(1), Some(2)),
            "{v}"
        );
    }
}

/// Without `--max-runs` the bound comes from the machine and the profile: a server of
/// the default profile (its memory limit) never runs more cells at once than
/// `default_max_runs` allows.
#[test]
fn the_default_bound_follows_the_profiles_memory_limit() {
    let limit = nixcell::profile::load("default").unwrap().limits.memory;
    let bound = nixcell::mcp::default_max_runs(limit) as u64;
    let v = mcp_scenario(Mode::Root, "capped", 2 * bound as u32 + 2, &[]);
    let most = v["most_cells_at_once"].as_u64().unwrap();
    assert!(most <= bound, "{v} (bound {bound})");
}

/// The journal of an interrupted edit settles only the two states that edit left: a
/// declaration the user changed since is theirs, and the next edit refuses instead of
/// putting the journal's text over it (the journal may also come with a cloned
/// repository: `.nixcell/` is the project's).
#[test]
fn an_interrupted_edits_journal_never_replaces_what_the_user_wrote_since() {
    let p = edit_project();
    let dir = p.path();
    let head = git(dir, &["rev-parse", "HEAD"]).trim().to_string();
    let original = std::fs::read_to_string(dir.join("devenv.nix")).unwrap();
    let edited = format!("{original}\n# what the interrupted edit wrote\n");
    std::fs::create_dir_all(dir.join(".nixcell")).unwrap();
    let journal = serde_json::json!({"head": head, "original": original, "edited": edited});
    std::fs::write(dir.join(".nixcell/edit-pending.json"), journal.to_string()).unwrap();
    let mine = format!("{original}\n# the user's own line, not committed yet\n");
    std::fs::write(dir.join("devenv.nix"), &mine).unwrap();
    let o = edit_cmd(dir, "add-package", "jq").output().unwrap();
    let err = fails(&o, "edit over a journal the file has moved past");
    assert!(err.contains("edit-pending.json"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("devenv.nix")).unwrap(),
        mine
    );
    assert_eq!(git(dir, &["rev-parse", "HEAD"]).trim(), head);
}
