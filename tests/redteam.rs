//! Attacks on the host side of a run: what a cell leaves in its copy-on-write workdir
//! (sizes, names, links) is hostile input for nixcell applying it back, listing it
//! and undoing it. Root and rootless.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::process::Output;

fn run(mode: Mode, wd: &std::path::Path, script: &str) -> Output {
    sh(mode, &["--json", "--workdir", path_str(wd)], script)
}

/// A sparse file costs the cell nothing in its capped layer, whatever its apparent
/// size; applied back it must cost the host no more (it used to be written out in
/// full: 3 GB of zeros on the host disk from a run that used none).
#[test]
fn sparse_files_made_by_a_cell_stay_sparse_on_the_host() {
    for mode in MODES {
        let wd = workdir(mode);
        let o = run(
            mode,
            wd.path(),
            "for i in 1 2 3; do truncate -s 1000M /work/big$i; done; \
             dd if=/dev/zero of=/work/mix bs=1k count=1 seek=4096 2>/dev/null; echo tail >> /work/mix",
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["workdir"]["counts"]["added"], 4, "{mode:?}: {v}");
        let mut blocks = 0;
        for n in ["big1", "big2", "big3"] {
            let m = std::fs::metadata(wd.path().join(n)).unwrap();
            assert_eq!(
                m.len(),
                1000 << 20,
                "{mode:?}: {n}: the apparent size stays"
            );
            blocks += m.blocks();
        }
        let mix = wd.path().join("mix");
        let m = std::fs::metadata(&mix).unwrap();
        blocks += m.blocks();
        let body = std::fs::read(&mix).unwrap();
        assert_eq!(body.len(), 4097 * 1024 + 5, "{mode:?}");
        assert!(body[..4097 * 1024].iter().all(|&b| b == 0), "{mode:?}");
        assert_eq!(&body[4097 * 1024..], b"tail\n", "{mode:?}");
        // 512-byte blocks: well under 1 MiB for all four files.
        assert!(
            blocks * 512 < 1 << 20,
            "{mode:?}: {} bytes on the host disk",
            blocks * 512
        );
    }
}

/// Started as root on a user's workdir, nixcell writes with root's authority, so it
/// must write only where the workdir's owner could. The owner swaps, during the run, a
/// directory the cell wrote in for a root-owned directory of the workdir (a rename in
/// a directory of theirs); the cell's new file and its deletion must not land in
/// root's directory.
#[test]
fn a_root_started_run_never_writes_into_a_directory_the_owner_could_not() {
    use std::os::unix::fs::PermissionsExt;
    let wd = workdir(Mode::Root);
    let (u, g) = test_user_ids();
    std::fs::create_dir(wd.path().join("sub")).unwrap();
    std::fs::write(wd.path().join("sub/gone"), "user's\n").unwrap();
    std::fs::create_dir(wd.path().join("r")).unwrap();
    std::fs::write(wd.path().join("r/gone"), "root's\n").unwrap();
    std::fs::set_permissions(wd.path().join("r"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for p in [
        wd.path().to_path_buf(),
        wd.path().join("sub"),
        wd.path().join("sub/gone"),
    ] {
        nix::unistd::chown(&p, Some(u.into()), Some(g.into())).unwrap();
    }
    let child = nixcell(Mode::Root)
        .args(["run", "--json", "--env-path"])
        .arg(busybox())
        .args(["--workdir", path_str(wd.path()), "--"])
        .args([
            "sh",
            "-c",
            "echo evil > /work/sub/evil && rm /work/sub/gone && sleep 4",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    // What the owner can do in their own directory (done here as root, same effect).
    std::fs::rename(wd.path().join("sub"), wd.path().join("sub.old")).unwrap();
    std::fs::rename(wd.path().join("r"), wd.path().join("sub")).unwrap();
    let o = child.wait_with_output().unwrap();
    let v = verdict(&o);
    assert_eq!(v["exit_code"], 0, "{v}");
    let r = wd.path().join("sub");
    assert_eq!(std::fs::metadata(&r).unwrap().uid(), 0);
    assert!(
        !r.join("evil").exists(),
        "written into root's directory: {v}"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("gone")).unwrap(),
        "root's\n",
        "deleted from root's directory: {v}"
    );
    let refused = v["workdir"]["refused"].to_string();
    assert!(refused.contains("belongs to uid 0"), "{v}");
}

/// A plain run (no project) on a git repository: the cell's copy of `.git/config`
/// (`core.fsmonitor` runs a command on the host's next `git status`), its hooks and a
/// `.git` file pointing elsewhere never come back; objects and refs do.
#[test]
fn a_repositorys_configuration_and_hooks_never_come_back_from_a_plain_run() {
    for mode in MODES {
        let wd = workdir(mode);
        git(wd.path(), &["init", "-q"]);
        if mode == Mode::Rootless {
            chown_to_test_user_all(wd.path());
        }
        let config = std::fs::read(wd.path().join(".git/config")).unwrap();
        let marker = wd.path().join("pwned");
        let o = run(
            mode,
            wd.path(),
            &format!(
                "printf '[core]\\n\\tfsmonitor = \"touch {m}; false\"\\n' >> /work/.git/config; \
                 mkdir -p /work/.git/hooks /work/sub /work/.git/objects/ab /work/.git/refs/heads; \
                 echo 'touch {m}' > /work/.git/hooks/pre-commit; chmod +x /work/.git/hooks/pre-commit; \
                 echo 'gitdir: /work/.evil' > /work/sub/.git; \
                 echo obj > /work/.git/objects/ab/cd; echo ref > /work/.git/refs/heads/x.lock",
                m = marker.display()
            ),
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(
            std::fs::read(wd.path().join(".git/config")).unwrap(),
            config,
            "{mode:?}: {v}"
        );
        assert!(
            !wd.path().join(".git/hooks/pre-commit").exists(),
            "{mode:?}"
        );
        assert!(!wd.path().join("sub/.git").exists(), "{mode:?}");
        assert!(
            wd.path().join(".git/objects/ab/cd").exists(),
            "{mode:?}: {v}"
        );
        assert!(
            wd.path().join(".git/refs/heads/x.lock").exists(),
            "{mode:?}: {v}"
        );
        let refused = v["workdir"]["refused"].to_string();
        for p in [".git/config", ".git/hooks", "sub/.git"] {
            assert!(refused.contains(&format!("\"{p}\"")), "{mode:?}: {p}: {v}");
        }
        // The owner's next `git status`.
        let mut c = match mode {
            Mode::Root => std::process::Command::new("git"),
            Mode::Rootless => {
                let mut c = as_test_user();
                c.arg("git");
                c
            }
        };
        let st = c
            .args(["status", "--short"])
            .current_dir(wd.path())
            .output()
            .unwrap();
        assert!(st.status.success(), "{mode:?}: {}", text(&st.stderr));
        assert!(
            !marker.exists(),
            "{mode:?}: the host ran the cell's command"
        );
    }
}

fn chown_to_test_user_all(p: &std::path::Path) {
    let (u, g) = test_user_ids();
    let out = std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("{u}:{g}"))
        .arg(p)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// A run replaced a file by a directory; afterwards the owner keeps working in it.
/// `nixcell undo` (without --force) must not delete the owner's new file, unjournaled,
/// with the directory: it names the path and changes nothing.
#[test]
fn undo_never_deletes_what_the_owner_added_after_the_run() {
    for mode in MODES {
        let wd = workdir(mode);
        std::fs::write(wd.path().join("x"), "before\n").unwrap();
        if mode == Mode::Rootless {
            chown_to_test_user_all(wd.path());
        }
        let o = run(
            mode,
            wd.path(),
            "rm /work/x && mkdir /work/x && echo cell > /work/x/a",
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        let id = v["workdir"]["run"].as_str().unwrap().to_string();
        let mine = wd.path().join("x/mine");
        std::fs::write(&mine, "the owner's work\n").unwrap();
        let o = nixcell(mode).args(["undo", &id]).output().unwrap();
        assert_eq!(
            std::fs::read_to_string(&mine).unwrap_or_default(),
            "the owner's work\n",
            "{mode:?}: undo: {}",
            text(&o.stderr)
        );
        assert!(!o.status.success(), "{mode:?}");
        assert!(
            text(&o.stderr).contains("x/mine"),
            "{mode:?}: {}",
            text(&o.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(wd.path().join("x/a")).unwrap(),
            "cell\n"
        );
    }
}

/// Unmounts every mount of `source` (wherever a run may have moved it).
fn umount_all(source: &str) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in info
        .lines()
        .filter(|l| l.contains(&format!(" - tmpfs {source} ")))
    {
        let at = line.split(' ').nth(4).unwrap();
        let _ = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A file system mounted inside the workdir looks empty to the cell, which may delete
/// the directory above it. Deleting that directory used to move it, with the mount,
/// into the run journal (where pruning old journals later removes everything in it):
/// a directory holding a mount point is never deleted or replaced. (Rootless, a
/// workdir holding a mount is refused at set-up: its mounts are locked.)
#[test]
fn a_directory_holding_a_mount_point_is_never_deleted_or_moved() {
    {
        let mode = Mode::Root;
        let wd = workdir(mode);
        std::fs::create_dir_all(wd.path().join("data/mnt")).unwrap();
        std::fs::create_dir_all(wd.path().join("other/mnt")).unwrap();
        let source = format!("nixcell-rt-{}", std::process::id());
        for d in ["data/mnt", "other/mnt"] {
            nix::mount::mount(
                Some(source.as_str()),
                &wd.path().join(d),
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("size=1m,mode=0777"),
            )
            .unwrap();
            std::fs::write(wd.path().join(d).join("precious"), "mounted\n").unwrap();
        }
        let o = run(
            mode,
            wd.path(),
            "rm -rf /work/data; rm -rf /work/other && echo file > /work/other",
        );
        let v = verdict(&o);
        let left = ["data", "other"].map(|d| {
            std::fs::read_to_string(wd.path().join(d).join("mnt/precious")).unwrap_or_default()
        });
        umount_all(&source);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(left, ["mounted\n", "mounted\n"], "{mode:?}: {v}");
        let refused = v["workdir"]["refused"].to_string();
        assert!(
            refused.contains("a file system is mounted at data/mnt"),
            "{mode:?}: {v}"
        );
        assert!(
            refused.contains("a file system is mounted at other/mnt"),
            "{mode:?}: {v}"
        );
    }
}

/// A cell makes a path longer than PATH_MAX (by directory descriptors) next to a
/// deletion; applying walks by descriptors, and undoing must too: the run used to be
/// "changed since the run" for good, its deletion undoable only with --force.
#[test]
fn a_run_with_paths_longer_than_path_max_can_be_undone() {
    let py = build_env("python3", "pkgs.python3");
    for mode in MODES {
        let wd = workdir(mode);
        std::fs::write(wd.path().join("keep"), "precious\n").unwrap();
        if mode == Mode::Rootless {
            chown_to_test_user_all(wd.path());
        }
        let code = "import os\n\
            os.unlink('/work/keep')\n\
            fd = os.open('/work', os.O_RDONLY)\n\
            for i in range(200):\n    \
                os.mkdir('d' * 60, dir_fd=fd)\n    \
                fd = os.open('d' * 60, os.O_RDONLY, dir_fd=fd)\n\
            os.close(os.open('f', os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n";
        let o = nixcell(mode)
            .args(["run", "--json", "--env-path"])
            .arg(&py)
            .args([
                "--workdir",
                path_str(wd.path()),
                "--",
                "python3",
                "-c",
                code,
            ])
            .output()
            .unwrap();
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["workdir"]["counts"]["added"], 201, "{mode:?}: {v}");
        let id = v["workdir"]["run"].as_str().unwrap().to_string();
        let o = nixcell(mode).args(["undo", &id]).output().unwrap();
        let err = text(&o.stderr);
        assert!(
            o.status.success(),
            "{mode:?}: {}",
            &err[..err.len().min(300)]
        );
        assert_eq!(
            std::fs::read_to_string(wd.path().join("keep")).unwrap(),
            "precious\n"
        );
        assert!(!wd.path().join("d".repeat(60)).exists(), "{mode:?}");
    }
}

/// The same swap before `nixcell undo` as root: restoring what the run deleted must
/// not plant the owner's file in root's directory.
#[test]
fn undo_as_root_never_restores_into_a_directory_the_owner_could_not_write() {
    use std::os::unix::fs::PermissionsExt;
    let wd = workdir(Mode::Root);
    std::fs::create_dir(wd.path().join("sub")).unwrap();
    std::fs::write(wd.path().join("sub/gone"), "user's\n").unwrap();
    std::fs::create_dir(wd.path().join("r")).unwrap();
    std::fs::set_permissions(wd.path().join("r"), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_to_test_user_all(wd.path());
    nix::unistd::chown(&wd.path().join("r"), Some(0.into()), Some(0.into())).unwrap();
    let o = run(Mode::Root, wd.path(), "rm /work/sub/gone");
    let v = verdict(&o);
    assert_eq!(v["workdir"]["counts"]["deleted"], 1, "{v}");
    let id = v["workdir"]["run"].as_str().unwrap().to_string();
    // What the owner can do in their own directory (done here as root, same effect).
    std::fs::rename(wd.path().join("sub"), wd.path().join("sub.old")).unwrap();
    std::fs::rename(wd.path().join("r"), wd.path().join("sub")).unwrap();
    let o = nixcell(Mode::Root).args(["undo", &id]).output().unwrap();
    assert!(
        !wd.path().join("sub/gone").exists(),
        "restored into root's directory: {}",
        text(&o.stderr)
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("belongs to uid 0"),
        "{}",
        text(&o.stderr)
    );
}

/// Names are the cell's: printed for a terminal (a refusal after `nixcell run`, a
/// conflict of `nixcell undo`), escape sequences and line breaks come out escaped.
#[test]
fn names_a_cell_chose_reach_the_terminal_escaped() {
    for mode in MODES {
        let wd = workdir(mode);
        let o = sh(
            mode,
            &["--workdir", path_str(wd.path())],
            "n=$(printf 'x\\033]2;owned\\007\\nnixcell: fake'); mkfifo \"/work/p$n\"; echo cell > \"/work/f$n\"",
        );
        let err = text(&o.stderr);
        assert!(err.contains("nixcell: workdir: px"), "{mode:?}: {err}");
        assert!(
            !err.contains('\x1b') && !err.contains("\nnixcell: fake"),
            "{mode:?}: {err:?}"
        );
        let f = std::fs::read_dir(wd.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with('f'))
            .unwrap();
        std::fs::write(&f, "the owner's\n").unwrap();
        let o = nixcell(mode)
            .arg("undo")
            .current_dir(wd.path())
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert!(err.contains("changed since the run"), "{mode:?}: {err}");
        assert!(
            !err.contains('\x1b') && !err.contains("\nnixcell: fake"),
            "{mode:?}: {err:?}"
        );
    }
}

/// `nixcell run` in a project, as root or as the test user.
fn in_project(mode: Mode, dir: &std::path::Path, args: &[&str]) -> Output {
    let pkgs = format!("nixpkgs={}", repo().join("tests/fixtures/pkgs").display());
    let mut c = match mode {
        Mode::Root => {
            let mut c = nixcell(mode);
            c.env("NIX_PATH", &pkgs);
            c
        }
        Mode::Rootless => {
            let mut c = as_test_user();
            c.arg(format!("NIX_PATH={pkgs}")).arg(bin());
            c
        }
    };
    c.current_dir(dir).args(args).output().unwrap()
}

/// A project's declaration is protected, and the Nix files it imports must be too: a
/// cell rewriting an import changed, with no edit and no approval, what the host
/// evaluated and built on the next run (any derivation, fixed-output ones with the
/// network).
#[test]
fn a_nix_file_a_declaration_imports_is_protected_like_the_declaration() {
    for mode in MODES {
        let wd = workdir(mode);
        let dir = wd.path();
        std::fs::write(
            dir.join("devenv.nix"),
            "{ pkgs, ... }: let extra = import ./nix/extra.nix; in { packages = [ pkgs.busybox ]; env.FROM = extra.value; }",
        )
        .unwrap();
        std::fs::create_dir(dir.join("nix")).unwrap();
        std::fs::write(dir.join("nix/extra.nix"), "{ value = \"host\"; }").unwrap();
        if mode == Mode::Rootless {
            chown_to_test_user_all(dir);
        }
        let o = in_project(
            mode,
            dir,
            &[
                "run",
                "--json",
                "--",
                "sh",
                "-c",
                "echo '{ value = \"cell\"; }' > /work/nix/extra.nix; echo x > /work/nix/new.nix; \
                 rm -rf /work/nix2; mkdir /work/sub; echo '{}' > /work/sub/devenv.nix; echo \"$FROM\"",
            ],
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["stdout"]["text"], "host\n", "{mode:?}: {v}");
        assert_eq!(
            std::fs::read_to_string(dir.join("nix/extra.nix")).unwrap(),
            "{ value = \"host\"; }",
            "{mode:?}: {v}"
        );
        assert!(!dir.join("nix/new.nix").exists(), "{mode:?}: {v}");
        assert!(!dir.join("sub/devenv.nix").exists(), "{mode:?}: {v}");
        let refused = v["workdir"]["refused"].to_string();
        assert!(refused.contains("\"nix/extra.nix\""), "{mode:?}: {v}");
        let o = in_project(mode, dir, &["run", "--", "sh", "-c", "echo $FROM"]);
        assert_eq!(ok(&o, "second run").trim(), "host", "{mode:?}");
    }
}

/// The same project given as the workdir of a plain run (`--env-path`, no project
/// run): its declaration, its imports and a new project's files never come back either.
#[test]
fn a_projects_files_are_protected_in_a_plain_run_too() {
    for mode in MODES {
        let wd = workdir(mode);
        let proj = wd.path().join("proj");
        std::fs::create_dir_all(proj.join("nix")).unwrap();
        std::fs::write(proj.join("devenv.nix"), "{ pkgs, ... }: { }").unwrap();
        std::fs::write(proj.join("nix/extra.nix"), "{ }").unwrap();
        if mode == Mode::Rootless {
            chown_to_test_user_all(wd.path());
        }
        let o = run(
            mode,
            wd.path(),
            "echo evil > /work/proj/devenv.nix; echo evil > /work/proj/nix/extra.nix; \
             echo evil > /work/proj/.envrc; mkdir /work/new; echo evil > /work/new/devenv.nix; \
             echo evil > /work/new/nixcell.toml; echo fine > /work/proj/data.txt; echo fine > /work/top.nix",
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        for (p, want) in [
            ("proj/devenv.nix", Some("{ pkgs, ... }: { }")),
            ("proj/nix/extra.nix", Some("{ }")),
            ("proj/.envrc", None),
            ("new/devenv.nix", None),
            ("new/nixcell.toml", None),
            ("proj/data.txt", Some("fine\n")),
            ("top.nix", Some("fine\n")),
        ] {
            assert_eq!(
                std::fs::read_to_string(wd.path().join(p)).ok().as_deref(),
                want,
                "{mode:?}: {p}: {v}"
            );
        }
    }
}

/// A directory with HEAD, objects/ and refs/ is a bare repository to git run inside it,
/// whose `core.pager` runs on the host's next `git branch` on a terminal: its config
/// and hooks never come back, nor a `commondir` sending git to another one.
#[test]
fn a_bare_repository_made_by_a_cell_brings_no_configuration_back() {
    for mode in MODES {
        let wd = workdir(mode);
        let o = run(
            mode,
            wd.path(),
            "mkdir -p /work/b/objects /work/b/refs /work/b/hooks /work/w /work/c/objects /work/c/refs; \
             echo 'ref: refs/heads/main' > /work/b/HEAD; cp /work/b/HEAD /work/w/HEAD; \
             printf '[core]\\n\\tpager = \"touch pwned; cat\"\\n' > /work/b/config; cp /work/b/config /work/c/config; \
             echo 'touch pwned' > /work/b/hooks/post-checkout; echo ../c > /work/w/commondir; \
             echo fine > /work/config",
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert!(!wd.path().join("b/config").exists(), "{mode:?}: {v}");
        assert!(!wd.path().join("b/hooks").exists(), "{mode:?}: {v}");
        assert!(!wd.path().join("w/commondir").exists(), "{mode:?}: {v}");
        assert!(!wd.path().join("b/HEAD").exists(), "{mode:?}: {v}");
        assert!(wd.path().join("w/HEAD").exists(), "{mode:?}: {v}");
        assert!(
            wd.path().join("c/config").exists(),
            "{mode:?}: no HEAD there: {v}"
        );
        assert_eq!(
            std::fs::read_to_string(wd.path().join("config")).unwrap(),
            "fine\n",
            "{mode:?}: a file named config elsewhere comes back"
        );
        // Nor is one assembled over two runs: a HEAD next to c's config stays out.
        let o = run(
            mode,
            wd.path(),
            "echo 'ref: refs/heads/main' > /work/c/HEAD",
        );
        let v = verdict(&o);
        assert!(!wd.path().join("c/HEAD").exists(), "{mode:?}: {v}");
    }
}

/// Started as root, bind sources are cloned in the host's mount namespace; a clone of
/// a shared mount (the root of a systemd host is shared) is its peer, so a mount the
/// cell made below a bind (here nixcell's own: the proxy socket under a bind at /run)
/// used to appear on the host, and stayed there after the cell.
#[test]
fn a_mount_below_a_bind_of_a_shared_mount_never_reaches_the_host() {
    let t = scratch("shared");
    let shared = t.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let mount = |args: &[&str]| {
        let o = std::process::Command::new("mount")
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "mount {args:?}: {o:?}");
    };
    mount(&["-t", "tmpfs", "tmpfs", path_str(&shared)]);
    mount(&["--make-shared", path_str(&shared)]);
    let outer = shared.join("outer");
    std::fs::create_dir_all(outer.join("nixcell")).unwrap();
    for d in [&outer, &outer.join("nixcell")] {
        nix::unistd::chown(d.as_path(), Some(65534.into()), Some(65534.into())).unwrap();
    }
    let bind = format!("--bind={}:/run", outer.display());
    let o = sh(
        Mode::Root,
        &[
            "--json",
            "--host-uid",
            "65534",
            &bind,
            "--allow-host",
            "example.test:443",
        ],
        "test -S /run/nixcell/proxy.sock && echo socket",
    );
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let below: Vec<&str> = host_mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(path_str(&outer)))
        .collect::<Vec<_>>();
    let below = below.join(" ");
    let _ = std::process::Command::new("umount")
        .args(["-R", "-l", path_str(&shared)])
        .status();
    let v = verdict(&o);
    assert_eq!(v["stdout"]["text"], "socket\n", "{v}");
    assert!(
        below.is_empty(),
        "the cell's mounts appeared on the host: {below}"
    );
}
