//! How to give a cell its closure: the options measured side by side, each in a fresh
//! mount namespace inside one user namespace, on closures of 10, 100 and 1000 paths.
//!
//!     cargo bench --bench store_view
//!
//! - `binds+setattr`: one bind per store path on a tmpfs, then one recursive
//!   mount_setattr(2) making them all read-only (what nixcell does);
//! - `binds+remount`: one bind per path, each remounted read-only on its own;
//! - `store+landlock`: one read-only bind of the whole store, Landlock allowing only
//!   the closure's paths (the store's other names stay listable and stat-able);
//! - `prepared-clone`: a tree of binds prepared once, cloned per cell with
//!   open_tree(2) OPEN_TREE_CLONE|AT_RECURSIVE and attached with move_mount(2) (needs
//!   something that keeps the prepared tree alive between runs: a daemon).
//!
//! `setup` is the time of the strategy itself, `total` adds the fork and the
//! namespace's teardown when its last process exits (which a cell's caller waits for).

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, path_beneath_rules,
};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork};
use nixcell::sandbox::sys;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 30;

/// A named way of setting up the store in a fresh mount namespace.
type Strategy<'a> = (&'static str, Box<dyn Fn() + 'a>);

fn closure(n: usize) -> Vec<PathBuf> {
    let out = Command::new("scripts/build-fixture-env.sh")
        .arg(format!("synthetic-{n}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let q = Command::new("nix-store")
        .args(["--query", "--requisites", &root])
        .output()
        .unwrap();
    String::from_utf8_lossy(&q.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

fn binds(paths: &[PathBuf], at: &Path) {
    for p in paths {
        let t = at.join(p.file_name().unwrap());
        std::fs::create_dir(&t).unwrap();
        mount(Some(p), &t, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
    }
}

fn tmpfs(at: &Path) {
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .unwrap();
}

/// Runs `f` in a child with a new mount namespace; returns (setup, total).
fn measure(f: &dyn Fn()) -> (Duration, Duration) {
    let (mut rd, wr) = std::io::pipe().unwrap();
    let start = Instant::now();
    // SAFETY: the bench is single-threaded; the child runs `f` and exits.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(rd);
            unshare(CloneFlags::CLONE_NEWNS).unwrap();
            let t = Instant::now();
            f();
            let us = t.elapsed().as_nanos() as u64;
            let mut wr = wr;
            wr.write_all(&us.to_le_bytes()).unwrap();
            // SAFETY: leave at once, like a cell's processes.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut b = [0u8; 8];
            rd.read_exact(&mut b).unwrap();
            waitpid(child, None).unwrap();
            (Duration::from_nanos(u64::from_le_bytes(b)), start.elapsed())
        }
    }
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    let sizes = [10usize, 100, 1000];
    let closures: Vec<Vec<PathBuf>> = sizes.iter().map(|n| closure(*n)).collect();
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).unwrap();
    std::fs::write("/proc/self/setgroups", "deny").unwrap();
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).unwrap();
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).unwrap();
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("target");
    std::fs::create_dir(&target).unwrap();

    println!(
        "{:<16} {:>6} {:>10} {:>10}",
        "strategy", "paths", "setup ms", "total ms"
    );
    for (n, paths) in sizes.iter().zip(&closures) {
        // The prepared view of `prepared-clone`, made once per closure.
        let view = scratch.path().join(format!("view-{n}"));
        std::fs::create_dir(&view).unwrap();
        tmpfs(&view);
        binds(paths, &view);
        sys::mount_setattr(None, &view, true, sys::MOUNT_ATTR_RDONLY, None).unwrap();

        let strategies: Vec<Strategy> = vec![
            (
                "binds+setattr",
                Box::new(|| {
                    tmpfs(&target);
                    binds(paths, &target);
                    sys::mount_setattr(None, &target, true, sys::MOUNT_ATTR_RDONLY, None).unwrap();
                }),
            ),
            (
                "binds+remount",
                Box::new(|| {
                    tmpfs(&target);
                    binds(paths, &target);
                    for p in paths {
                        let t = target.join(p.file_name().unwrap());
                        mount(
                            None::<&str>,
                            &t,
                            None::<&str>,
                            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                            None::<&str>,
                        )
                        .unwrap();
                    }
                }),
            ),
            (
                "store+landlock",
                Box::new(|| {
                    mount(
                        Some("/nix/store"),
                        &target,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .unwrap();
                    sys::mount_setattr(None, &target, false, sys::MOUNT_ATTR_RDONLY, None).unwrap();
                    let read = AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::Execute;
                    Ruleset::default()
                        .handle_access(AccessFs::from_all(ABI::V4))
                        .unwrap()
                        .create()
                        .unwrap()
                        .add_rules(path_beneath_rules(paths, read))
                        .unwrap()
                        .restrict_self()
                        .unwrap();
                }),
            ),
            (
                "prepared-clone",
                Box::new(|| {
                    let fd = sys::open_tree(
                        &view,
                        sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32,
                    )
                    .unwrap();
                    sys::move_mount_fd(fd.as_raw_fd(), &target).unwrap();
                }),
            ),
        ];
        for (name, f) in &strategies {
            let mut setup = Vec::new();
            let mut total = Vec::new();
            for _ in 0..RUNS {
                let (s, t) = measure(f.as_ref());
                setup.push(s);
                total.push(t);
            }
            println!(
                "{:<16} {:>6} {:>10.2} {:>10.2}",
                name,
                paths.len(),
                median(setup),
                median(total)
            );
        }
    }
}
