//! An OCI container's file system view as config.json says: an image root (no closure
//! annotation), the mounts of every kind, masked and read-only paths, the default
//! devices, and destinations that a hostile image's symbolic links cannot move out of
//! the root. What the container sees is checked from inside. Root and rootless.

mod common;
use common::*;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Stdio;

const APPLETS: &[&str] = &[
    "sh", "cat", "ls", "echo", "id", "stat", "touch", "mkdir", "grep", "readlink", "head", "test",
    "wc", "rm", "sleep", "awk",
];

/// A bundle whose rootfs is a directory with a static busybox (owned by host root in
/// root mode, as an engine's image is; by the test user rootless).
struct Bundle {
    mode: Mode,
    dir: tempfile::TempDir,
}

impl Bundle {
    fn new(mode: Mode) -> Bundle {
        // SAFETY: prctl with an integer argument: PID 1 becomes our child when its
        // init stage leaves, as it becomes an engine shim's.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        let dir = workdir(mode);
        let b = Bundle { mode, dir };
        let r = b.rootfs();
        for d in ["bin", "etc/ro", "tmp", "dev", "proc", "sys", "mnt"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::copy("/usr/bin/busybox", r.join("bin/busybox")).unwrap();
        for a in APPLETS {
            symlink("busybox", r.join("bin").join(a)).unwrap();
        }
        std::fs::write(r.join("etc/image-file"), "from the image\n").unwrap();
        std::fs::write(r.join("etc/secret"), "secret\n").unwrap();
        std::fs::write(r.join("etc/ro/file"), "ro\n").unwrap();
        b
    }

    /// A host directory with a file `f` ("host data"), for binds.
    fn host_data(&self) -> PathBuf {
        let host = self.dir.path().join("data");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("f"), "host data\n").unwrap();
        host
    }

    /// Runs `cfg`, which must exit 0, and checks that its output has each of `want`.
    fn expect(&self, cfg: &serde_json::Value, want: &[&str]) -> String {
        let (code, out) = self.run(cfg);
        assert_eq!(code, 0, "{:?}: {out}", self.mode);
        for w in want {
            assert_has(&out, w);
        }
        out
    }

    /// The runtime log of the last `run`.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runtime.log")).unwrap_or_default()
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("bundle/rootfs")
    }

    /// Runs `script` in a container of `cfg` (create, start, PID 1 waited for): its
    /// exit status and output.
    fn run(&self, cfg: &serde_json::Value) -> (i32, String) {
        let bundle = self.dir.path().join("bundle");
        std::fs::write(bundle.join("config.json"), config_json(cfg)).unwrap();
        if self.mode == Mode::Rootless {
            chown_to_test_user(self.dir.path());
        }
        let out_path = self.dir.path().join("out");
        let out = std::fs::File::create(&out_path).unwrap();
        let pid_file = self.dir.path().join("c.pid");
        let state = self.dir.path().join("state");
        let mut create = nixcell(self.mode);
        let log = self.dir.path().join("runtime.log");
        let _ = std::fs::remove_file(&log);
        create
            .arg("oci")
            .arg("--root")
            .arg(&state)
            .arg("--log")
            .arg(&log)
            .args(["create", "--bundle", path_str(&bundle), "--pid-file"])
            .arg(&pid_file);
        // process.terminal: the pty's master comes over the console socket, as to an engine.
        let console = (cfg["process"]["terminal"] == true).then(|| {
            let sock = self.dir.path().join("console.sock");
            let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
            if self.mode == Mode::Rootless {
                chown_to_test_user(&sock);
            }
            create.arg("--console-socket").arg(&sock);
            std::thread::spawn(move || receive_fd(&l.accept().unwrap().0))
        });
        let st = create
            .arg("c")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .unwrap();
        let read = || std::fs::read_to_string(&out_path).unwrap_or_default();
        let drain = |mut out: String| {
            if let Some(t) = console {
                // Until every slave is closed (EIO).
                let mut master = std::fs::File::from(t.join().unwrap());
                let _ = std::io::Read::read_to_string(&mut master, &mut out);
            }
            out
        };
        if !st.success() {
            return (-1, drain(read()));
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let oci = |args: &[&str]| {
            nixcell(self.mode)
                .arg("oci")
                .arg("--root")
                .arg(&state)
                .args(args)
                .output()
                .unwrap()
        };
        ok(&oci(&["start", "c"]), "start");
        let mut status = 0;
        // SAFETY: waitpid on our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        ok(&oci(&["delete", "c"]), "delete");
        let out = drain(read());
        (libc::WEXITSTATUS(status), out)
    }
}

/// The descriptor sent with one message (SCM_RIGHTS) on `s`.
fn receive_fd(s: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: a descriptor the kernel just gave us.
            return unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no descriptor on the console socket")
}

/// config.json as `runc spec` writes it (the usual mounts, masked and read-only paths),
/// running `sh -c script`, without the closure annotation.
fn config(script: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh", "-c", script], "cwd": "/",
                    "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "img",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/etc/secret"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/etc/ro"]
        }
    })
}

fn assert_has(out: &str, want: &str) {
    assert!(out.contains(want), "want {want:?} in:\n{out}");
}

#[test]
fn an_image_root_is_read_and_written_and_the_image_stays_as_it_was() {
    for mode in MODES {
        let b = Bundle::new(mode);
        let (code, out) = b.run(&config(
            "cat /etc/image-file; id -u; stat -c 'owner %u:%g' /bin/busybox; \
             echo new > /etc/image-file && cat /etc/image-file; \
             mkdir /made && echo made-ok; touch /bin/x && echo touch-ok",
        ));
        assert_eq!(code, 0, "{mode:?}: {out}");
        assert_has(&out, "from the image\n0\nowner 0:0\nnew\nmade-ok\ntouch-ok");
        // Writes went to the copy-on-write layer, never to the image.
        let r = b.rootfs();
        assert_eq!(
            std::fs::read_to_string(r.join("etc/image-file")).unwrap(),
            "from the image\n"
        );
        assert!(!r.join("made").exists() && !r.join("bin/x").exists());
        for d in ["dev", "proc", "sys"] {
            assert_empty_dir(&r.join(d), d);
        }
        // Said in the runtime log, the spec's runtimes writing root.path itself.
        let said = "root.path: writable: the container's writes go to a layer of its own";
        assert_has(&b.log(), said);
        let mut ro = config("touch /x; echo more > /etc/image-file; cat /etc/image-file");
        ro["root"]["readonly"] = true.into();
        let (code, out) = b.run(&ro);
        assert_eq!(code, 0, "{mode:?}: {out}");
        assert_has(&out, "Read-only file system");
        assert_has(&out, "from the image");
        assert!(!b.log().contains(said), "{mode:?}: {}", b.log());
    }
}

#[test]
fn each_mount_kind_is_what_config_json_says() {
    for mode in MODES {
        let b = Bundle::new(mode);
        let host = b.host_data();
        let mut cfg = config(
            "grep -E ' /(proc|dev|dev/pts|dev/shm|dev/mqueue|sys|data|scratch) ' /proc/mounts \
             | while read src at fs opts rest; do echo \"$at $fs ${opts%%,*}\"; done; \
             cat /data/f; touch /data/g || echo data-ro; \
             touch /sys/x 2>/dev/null || echo sys-ro; \
             echo s > /dev/shm/s && echo shm-rw; echo t > /scratch/t && echo scratch-rw; \
             ls -d /sys/fs/cgroup/* 2>/dev/null | wc -l; \
             touch /rw/made 2>/dev/null && echo rw-written || echo rw-read-only",
        );
        let mounts = cfg["mounts"].as_array_mut().unwrap();
        // sysfs is read-only also when "ro" is not asked.
        mounts[5]["options"] = serde_json::json!(["nosuid", "noexec", "nodev"]);
        mounts.push(serde_json::json!({"destination": "/data", "type": "bind",
            "source": path_str(&host), "options": ["rbind", "ro", "rprivate"]}));
        mounts.push(
            serde_json::json!({"destination": "/scratch", "type": "tmpfs",
            "source": "tmpfs", "options": ["size=1m", "mode=1777"]}),
        );
        // A writable bind: the cell's own directory rootless; root's when started as
        // root, so read-only (a live writable mount is only ever the cell's).
        let rw = b.dir.path().join("rw");
        std::fs::create_dir(&rw).unwrap();
        mounts.push(serde_json::json!({"destination": "/rw", "type": "bind",
            "source": path_str(&rw), "options": ["rbind", "rw"]}));
        let out = b.expect(
            &cfg,
            &[
                "/proc proc rw",
                "/dev tmpfs rw",
                "/dev/pts devpts rw",
                "/dev/shm tmpfs rw",
                "/dev/mqueue mqueue rw",
                "/sys sysfs ro",
                "/data ",
                "/scratch tmpfs rw",
                "host data",
                "data-ro",
                "sys-ro",
                "shm-rw",
                "scratch-rw",
            ],
        );
        assert!(!host.join("g").exists());
        let want = if mode == Mode::Rootless {
            "rw-written"
        } else {
            "rw-read-only"
        };
        assert_has(&out, want);
        assert_eq!(rw.join("made").exists(), mode == Mode::Rootless);
    }
}

#[test]
fn masked_and_read_only_paths_and_the_default_devices() {
    for mode in MODES {
        let b = Bundle::new(mode);
        let cfg = config(
            "echo \"secret[$(cat /etc/secret)]\"; echo \"keys[$(head -c 4 /proc/keys)]\"; \
             ls /proc/acpi | wc -l; touch /etc/ro/x || echo etc-ro; cat /etc/ro/file; \
             echo 1 > /proc/sys/kernel/hostname || echo sys-ro; \
             echo x > /dev/null && echo null-ok; head -c 3 /dev/zero | wc -c; \
             for d in full random urandom tty; do test -c /dev/$d && echo dev-$d; done; \
             for l in fd stdin ptmx; do readlink /dev/$l; done; \
             exec 3<>/dev/ptmx && ls /dev/pts",
        );
        b.expect(
            &cfg,
            &[
                "secret[]",
                "keys[]",
                "0\n",
                "etc-ro",
                "ro\n",
                "sys-ro",
                "null-ok",
                "3\n",
                "dev-full\ndev-random\ndev-urandom\ndev-tty",
                "/proc/self/fd\n/proc/self/fd/0\npts/ptmx",
                "0\nptmx",
            ],
        );
    }
}

#[test]
fn refused_devices_and_options_are_clear_and_leave_nothing() {
    let b = Bundle::new(Mode::Root);
    for (edit, word) in [
        (
            serde_json::json!({"linux": {"devices": [
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]}}),
            "/dev/fuse",
        ),
        (
            serde_json::json!({"mounts": [{"destination": "/m", "type": "bind",
                "source": "/tmp", "options": ["rbind", "remount"]}]}),
            "remount",
        ),
        (
            serde_json::json!({"mounts": [{"destination": "/m", "type": "ext4",
                "source": "/dev/sda"}]}),
            "ext4",
        ),
        (
            serde_json::json!({"mounts": [{"destination": "/a/../m", "type": "tmpfs"}]}),
            "/a/../m",
        ),
        (serde_json::json!({"root": {"path": "nope"}}), "root.path"),
    ] {
        let mut cfg = config("true");
        for (k, v) in edit.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let (code, out) = b.run(&cfg);
        assert_eq!(code, -1, "{word}: {out}");
        assert_has(&out, word);
        assert_empty_dir(&b.dir.path().join("state"), word);
    }
}

/// Symbolic links of the image pointing at a host directory, through the staging
/// root nixcell builds in and through `..`: destinations below them are made inside the
/// container's root, the host directory gets nothing.
#[test]
fn a_hostile_image_link_never_places_a_mount_outside_the_root() {
    for mode in MODES {
        let b = Bundle::new(mode);
        let outside = b.dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::set_permissions(
            &outside,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let r = b.rootfs();
        let abs = outside.strip_prefix("/").unwrap();
        symlink(Path::new("/oldroot").join(abs), r.join("via-oldroot")).unwrap();
        symlink(
            Path::new("../../../../../../../../../..").join(abs),
            r.join("via-dotdot"),
        )
        .unwrap();
        symlink(&outside, r.join("etc/direct")).unwrap();
        // Inside, the mounts are where the links lead within the root.
        let mut cfg = config(&format!(
            "grep -c ' [^ ]*{}/' /proc/mounts",
            outside.display()
        ));
        let mounts = cfg["mounts"].as_array_mut().unwrap();
        for d in ["/via-oldroot/m1", "/via-dotdot/m2", "/etc/direct/m3"] {
            mounts.push(serde_json::json!({"destination": d, "type": "tmpfs", "source": "t"}));
        }
        mounts.push(
            serde_json::json!({"destination": "/via-dotdot/f", "type": "bind",
            "source": "/etc/hostname", "options": ["bind", "ro"]}),
        );
        let (code, out) = b.run(&cfg);
        assert_eq!(code, 0, "{mode:?}: {out}");
        assert_empty_dir(&outside, &format!("{mode:?}: the host directory"));
        assert_has(&out, "4\n");
    }
}

/// A closure root keeps nixcell's own /proc, /dev and /tmp (an engine's mounts there
/// are not made) and gets config.json's other mounts, masks and read-only paths.
#[test]
fn a_closure_root_gets_the_other_mounts_of_config_json() {
    for mode in MODES {
        let b = Bundle::new(mode);
        let host = b.host_data();
        let mut cfg = config(
            "cat /data/f /data/hidden; ls /nix/store | wc -l; \
             grep -E ' /(data|scratch|proc|dev) ' /proc/mounts | while read s at fs o r; do \
             echo \"$at $fs\"; done; touch /scratch/x && echo scratch-rw; \
             echo \"staged[$(ls -a / | grep -c nixcell)]\"",
        );
        cfg["annotations"] = serde_json::json!({"dev.nixcell.closure": path_str(&busybox())});
        cfg["process"]["env"] = serde_json::json!([]);
        std::fs::write(host.join("hidden"), "hidden\n").unwrap();
        cfg["linux"]["maskedPaths"] = serde_json::json!(["/data/hidden"]);
        let mounts = cfg["mounts"].as_array_mut().unwrap();
        mounts.push(serde_json::json!({"destination": "/data", "type": "bind",
            "source": path_str(&host), "options": ["rbind", "ro"]}));
        mounts.push(
            serde_json::json!({"destination": "/scratch", "type": "tmpfs",
            "source": "tmpfs", "options": ["size=1m"]}),
        );
        // A writable host directory where nixcell writes /etc and links /bin/sh: it
        // gets nothing of those writes.
        let etc = b.dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        if mode == Mode::Rootless {
            chown_to_test_user(&etc);
        }
        for d in ["/etc", "/bin"] {
            mounts.push(serde_json::json!({"destination": d, "type": "bind",
                "source": path_str(&etc), "options": ["rbind", "rw"]}));
        }
        let out = b.expect(
            &cfg,
            &[
                "host data\n",
                "/data ",
                "/scratch tmpfs",
                "/proc proc",
                "/dev tmpfs",
                "scratch-rw",
                "staged[0]",
            ],
        );
        assert!(!out.contains("hidden"), "{mode:?}: {out}");
        assert_empty_dir(&etc, "a bind over /etc and /bin");
    }
}

/// process.terminal: the command's terminal is the pty sent to the console socket, and
/// /dev/console is it (the spec's default devices); the container's own devpts makes
/// new terminals.
#[test]
fn a_terminal_is_the_console_and_dev_pts_makes_new_ones() {
    for mode in MODES {
        let b = Bundle::new(mode);
        let mut cfg = config(
            "test -t 0 && test -t 1 && echo isatty; test -c /dev/console && echo console; \
             exec 3<>/dev/ptmx && ls /dev/pts",
        );
        cfg["process"]["terminal"] = true.into();
        b.expect(&cfg, &["isatty", "console", "0", "ptmx"]);
    }
}

/// A bind of a shared host mount is made private first: a mount below it in the
/// container does not appear on the host (root: a tree cloned from the host's
/// namespace is a peer of its source until then), also when config.json asks for
/// shared propagation (a peer group inside the container).
#[test]
fn mounts_below_a_bind_of_a_shared_host_mount_stay_in_the_container() {
    let b = Bundle::new(Mode::Root);
    let share = b.dir.path().join("share");
    std::fs::create_dir_all(share.join("x")).unwrap();
    let mount = |args: &[&str]| {
        let o = std::process::Command::new("mount")
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "mount {args:?}: {}", text(&o.stderr));
    };
    mount(&["--bind", path_str(&share), path_str(&share)]);
    mount(&["--make-shared", path_str(&share)]);
    let mut cfg = config("grep -c ' /data/x ' /proc/mounts");
    let mounts = cfg["mounts"].as_array_mut().unwrap();
    mounts.push(serde_json::json!({"destination": "/data", "type": "bind",
        "source": path_str(&share), "options": ["rbind", "ro", "rshared"]}));
    mounts.push(
        serde_json::json!({"destination": "/data/x", "type": "tmpfs",
        "source": "nixcell-propagation-test", "options": ["shared"]}),
    );
    let (code, out) = b.run(&cfg);
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let leaked = host.contains("nixcell-propagation-test");
    if leaked {
        let _ = std::process::Command::new("umount")
            .arg(share.join("x"))
            .status();
    }
    let _ = std::process::Command::new("umount").arg(&share).status();
    assert_eq!(code, 0, "{out}");
    assert_has(&out, "1\n");
    assert!(!leaked, "the container's tmpfs appeared on the host");
}

/// An overlayfs mounted at a bundle's rootfs (as an engine's snapshotter mounts one),
/// unmounted when dropped.
struct EngineOverlay {
    mnt: PathBuf,
    layers: PathBuf,
}

impl EngineOverlay {
    /// The bundle's image becomes the lower layer `lower` (a name with a colon and a
    /// newline, as mountinfo escapes them), named by a link `l/lower`; an upper layer
    /// holds a file and a whiteout of `/etc/gone`.
    fn mount(b: &Bundle, lower: &str) -> EngineOverlay {
        let layers = b.dir.path().join("layers");
        let (l, u, w) = (
            layers.join(lower),
            layers.join("upper"),
            layers.join("work"),
        );
        for d in [&u, &w] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mnt = b.rootfs();
        std::fs::write(mnt.join("etc/gone"), "deleted by the upper layer\n").unwrap();
        std::fs::rename(&mnt, &l).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        std::fs::create_dir(u.join("etc")).unwrap();
        std::fs::write(u.join("etc/upper-file"), "from the engine's upper\n").unwrap();
        let gone = std::ffi::CString::new(path_str(&u.join("etc/gone"))).unwrap();
        // SAFETY: a valid path; a 0/0 character device is overlayfs's whiteout.
        assert_eq!(unsafe { libc::mknod(gone.as_ptr(), libc::S_IFCHR, 0) }, 0);
        // Named by a link under `l/`, as podman names its lowers.
        let link = layers.join("l").join(lower);
        std::fs::create_dir(layers.join("l")).unwrap();
        symlink(Path::new("..").join(lower), &link).unwrap();
        let esc = path_str(&link).replace(':', "\\:");
        let data = format!(
            "lowerdir={esc},upperdir={},workdir={}",
            path_str(&u),
            path_str(&w)
        );
        nix::mount::mount(
            Some("overlay"),
            &mnt,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap();
        EngineOverlay { mnt, layers }
    }
}

impl Drop for EngineOverlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Started as root over an engine's overlayfs root (which cannot be idmapped), the
/// container sees the overlay's layers merged (the upper's file and whiteout), owns its
/// root, and its writes reach none of the layers.
#[test]
fn an_engines_overlayfs_root_is_seen_merged_and_never_written() {
    let b = Bundle::new(Mode::Root);
    let ov = EngineOverlay::mount(&b, "low:er\nlayer");
    let out = b.expect(
        &config(
            "cat /etc/image-file /etc/upper-file; test -e /etc/gone || echo gone-ok; \
             id -u; stat -c 'root %u:%g' /; stat -c 'busybox %u:%g' /bin/busybox; \
             echo new > /etc/upper-file && cat /etc/upper-file; echo w > /etc/image-file; \
             mkdir /made && echo made-ok; grep -c ' / overlay ' /proc/mounts",
        ),
        &[
            "from the image\nfrom the engine's upper\ngone-ok\n0\nroot 0:0\nbusybox 0:0\nnew\n\
             made-ok\n1",
        ],
    );
    assert!(!out.contains("denied"), "{out}");
    for (f, want) in [
        ("upper/etc/upper-file", "from the engine's upper\n"),
        ("low:er\nlayer/etc/image-file", "from the image\n"),
    ] {
        assert_eq!(std::fs::read_to_string(ov.layers.join(f)).unwrap(), want);
    }
    for p in [
        ov.layers.join("upper/made"),
        ov.layers.join("upper/etc/image-file"),
        ov.mnt.join("made"),
    ] {
        assert!(!p.exists(), "{}", p.display());
    }
    assert_eq!(
        std::fs::read_to_string(ov.mnt.join("etc/upper-file")).unwrap(),
        "from the engine's upper\n"
    );
}

/// A root.path inside an engine's overlayfs (not its mount root), directly or as a bind
/// of one of its directories, is refused by name, and nothing is left.
#[test]
fn a_directory_inside_an_overlayfs_root_is_refused() {
    let b = Bundle::new(Mode::Root);
    let ov = EngineOverlay::mount(&b, "lower");
    let sub = b.dir.path().join("bundle/sub");
    std::fs::create_dir(&sub).unwrap();
    nix::mount::mount(
        Some(&ov.mnt.join("etc")),
        &sub,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    for root in ["rootfs/etc", "sub"] {
        let mut cfg = config("true");
        cfg["root"]["path"] = root.into();
        let (code, out) = b.run(&cfg);
        assert_eq!(code, -1, "{root}: {out}");
        assert_has(&out, "a directory inside an overlayfs");
        assert_empty_dir(&b.dir.path().join("state"), root);
    }
    nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH).unwrap();
}

/// A directory an engine marked opaque (a trusted xattr the container's overlay, in its
/// user namespace, does not read) is refused by name rather than shown merged with the
/// files its layer removed; nothing is left.
#[test]
fn an_opaque_directory_of_an_engines_layer_is_refused_by_name() {
    let b = Bundle::new(Mode::Root);
    let ov = EngineOverlay::mount(&b, "lower");
    let dir = ov.layers.join("upper/etc");
    let c = std::ffi::CString::new(path_str(&dir)).unwrap();
    // SAFETY: valid C strings and a one-byte value.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            c"y".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let (code, out) = b.run(&config("cat /etc/image-file"));
    assert_eq!(code, -1, "{out}");
    assert_has(&out, "directory etc has the xattr trusted.overlay.opaque");
    assert_empty_dir(&b.dir.path().join("state"), "state");
}

/// A layer named by a link in a directory others may write (where anyone could have
/// swapped the link) is refused by name; nothing is left.
#[test]
fn a_layer_link_in_a_directory_others_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let b = Bundle::new(Mode::Root);
    let ov = EngineOverlay::mount(&b, "lower");
    let l = ov.layers.join("l");
    std::fs::set_permissions(&l, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (code, out) = b.run(&config("cat /etc/image-file"));
    assert_eq!(code, -1, "{out}");
    assert_has(
        &out,
        &format!("the symbolic link {}/lower is not root's", l.display()),
    );
    assert_empty_dir(&b.dir.path().join("state"), "state");
}

/// A pod's sandbox (pause) container, marked so by the CRI plugin, keeps its image root
/// though the pod's closure annotation reaches it too.
#[test]
fn a_cri_sandbox_keeps_its_image_root_under_a_pod_closure_annotation() {
    for mode in MODES {
        let b = Bundle::new(mode);
        let mut cfg = config("cat /etc/image-file");
        cfg["annotations"] = serde_json::json!({
            "dev.nixcell.closure": "/nix/store/00000000000000000000000000000000-none",
            "io.kubernetes.cri.container-type": "sandbox"
        });
        b.expect(&cfg, &["from the image"]);
    }
}

/// A config.json without a /proc mount (runc runs it: its /proc is the image's empty
/// directory): the container runs, and sees no process file system.
#[test]
fn a_container_without_a_proc_mount_runs_and_sees_no_proc() {
    for mode in MODES {
        let b = Bundle::new(mode);
        let mut cfg = config("ls /proc | wc -l; echo ran-$((6*7))");
        let mounts = cfg["mounts"].as_array_mut().unwrap();
        mounts.retain(|m| m["type"] != "proc");
        cfg["linux"]["maskedPaths"] = serde_json::json!(["/etc/secret"]);
        cfg["linux"]["readonlyPaths"] = serde_json::json!(["/etc/ro"]);
        cfg["process"]["oomScoreAdj"] = serde_json::json!(500);
        let out = b.expect(&cfg, &["ran-42"]);
        assert!(out.starts_with("0\n"), "{mode:?}: {out}");
    }
}

/// A pod as containerd makes one: a first container has its own ipc and network
/// namespaces, a second joins them by path; both mount /dev/mqueue and /sys (the usual
/// mounts), and a message queue made in one is seen in the other, while a container
/// of its own namespaces sees none. The joined namespaces belong to the first
/// container's user namespace, not the second's. Rootless as a rootless engine runs
/// its runtime: root of a user namespace of its own.
#[test]
fn a_container_joining_a_pods_namespaces_mounts_their_mqueue_and_sysfs() {
    for mode in MODES {
        let b = Bundle::new(mode);
        let d = b.dir.path();
        // A joined network namespace is the pod's: allowed under a profile with network.
        let profile = d.join("pod.toml");
        std::fs::write(
            &profile,
            "extends = \"default\"\n[network]\nallow = [\"example.com:443\"]\n",
        )
        .unwrap();
        let with = |name: &str, script: &str, join: bool| {
            let mut cfg = config(script);
            cfg["root"]["path"] = path_str(&b.rootfs()).into();
            if join {
                cfg["linux"]["namespaces"][1]["path"] = "/proc/PID/ns/net".into();
                cfg["linux"]["namespaces"][2]["path"] = "/proc/PID/ns/ipc".into();
                cfg["annotations"] = serde_json::json!({"dev.nixcell.profile": path_str(&profile)});
                // Asked writable: the pod's sysfs stays read-only (a warning).
                cfg["mounts"][5]["options"] =
                    serde_json::json!(["nosuid", "noexec", "nodev", "rw"]);
            }
            std::fs::create_dir_all(d.join(name)).unwrap();
            std::fs::write(d.join(name).join("config.in"), cfg.to_string()).unwrap();
        };
        with(
            "a",
            "touch /dev/mqueue/from-a && echo made; exec sleep 60",
            false,
        );
        let list = "grep ' /dev/mqueue mqueue ' /proc/mounts | wc -l; \
                    grep ' /sys sysfs ro,' /proc/mounts | wc -l; ls /dev/mqueue; \
                    touch /dev/mqueue/from-$HOSTNAME; echo done";
        with("b", &list.replace("$HOSTNAME", "b"), true);
        with("c", &list.replace("$HOSTNAME", "c"), false);
        if mode == Mode::Rootless {
            chown_to_test_user(d);
        }
        // The command of container a (PID 1's child: PID 1 is not dumpable) names
        // the pod's ipc namespace.
        let script = r#"
            bin=$1 root=$2 d=$3
            oci() { "$bin" oci --root "$root" --log "$d/runtime.log" "$@"; }
            wait_for() { i=0; while ! grep -q "$1" "$2" && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done; }
            cp "$d/a/config.in" "$d/a/config.json"
            oci create --bundle "$d/a" --pid-file "$d/a.pid" a > "$d/a.out" 2>&1 || { cat "$d/a.out"; exit 3; }
            oci start a || exit 4
            wait_for made "$d/a.out"
            pid=$(cat "$d/a.pid")
            child=$(cut -d' ' -f1 "/proc/$pid/task/$pid/children")
            for c in b c; do
                sed "s|/proc/PID/|/proc/$child/|g" "$d/$c/config.in" > "$d/$c/config.json"
                oci create --bundle "$d/$c" --pid-file "$d/$c.pid" $c > "$d/$c.out" 2>&1 || { cat "$d/$c.out"; exit 5; }
                oci start $c || exit 6
                wait_for done "$d/$c.out"
                echo "== $c"; cat "$d/$c.out"
            done
            echo "== exec a"; oci exec a ls /dev/mqueue; echo "== end"
            for c in a b c; do oci delete --force $c; echo "pid $(cat "$d/$c.pid")"; done
        "#;
        let mut cmd = match mode {
            Mode::Root => std::process::Command::new("sh"),
            Mode::Rootless => {
                let mut c = as_test_user();
                c.args(["unshare", "-Ur", "sh"]);
                c
            }
        };
        let o = cmd
            .args(["-c", script, "sh", bin()])
            .arg(d.join("state"))
            .arg(d)
            .output()
            .unwrap();
        let out = ok(&o, &format!("{mode:?}: the pod"));
        for l in out.lines() {
            if let Some(pid) = l.strip_prefix("pid ") {
                // SAFETY: waitpid on a PID 1 reparented to us (a subreaper), killed.
                unsafe { libc::waitpid(pid.parse().unwrap(), std::ptr::null_mut(), 0) };
            }
        }
        let section = |name: &str| {
            out.split(&format!("== {name}\n"))
                .nth(1)
                .and_then(|s| s.split("==").next())
                .unwrap_or_default()
                .lines()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            section("b"),
            ["1", "1", "from-a", "done"],
            "{mode:?}: the joining container mounts the pod's mqueue and sysfs: {out}"
        );
        assert_eq!(
            section("c"),
            ["1", "1", "done"],
            "{mode:?}: a container of its own ipc namespace sees none: {out}"
        );
        assert_eq!(
            section("exec a"),
            ["from-a", "from-b"],
            "{mode:?}: the queue made by the joining container: {out}"
        );
        let log = std::fs::read_to_string(d.join("runtime.log")).unwrap();
        assert_has(
            &log,
            "mount at /sys: rw: a sysfs of the joined network namespace is read-only",
        );
    }
}

/// linux.rootfsPropagation on the container's `/` (r-forms on the mounts below it too),
/// as mountinfo shows it inside; a value of no propagation type is refused by name.
#[test]
fn rootfs_propagation_is_set_on_the_containers_root() {
    let script = "awk '$5 == \"/\" || $5 == \"/proc\" { o = $5; \
                  for (i = 7; $i != \"-\"; i++) { sub(/:[0-9]+$/, \"\", $i); o = o \" \" $i }; print o }' \
                  /proc/self/mountinfo";
    for mode in MODES {
        let b = Bundle::new(mode);
        for (value, root, proc) in [
            ("shared", "/ shared", "/proc"),
            ("rshared", "/ shared", "/proc shared"),
            ("unbindable", "/ unbindable", "/proc"),
            ("runbindable", "/ unbindable", "/proc unbindable"),
            ("private", "/", "/proc"),
            ("rprivate", "/", "/proc"),
            // No master is left once the host's root is detached: nothing comes in.
            ("slave", "/", "/proc"),
            ("rslave", "/", "/proc"),
        ] {
            let mut cfg = config(script);
            cfg["linux"]["rootfsPropagation"] = value.into();
            let out = b.expect(&cfg, &[]);
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines, [root, proc], "{mode:?}: {value}: {out}");
        }
        let mut cfg = config("true");
        cfg["linux"]["rootfsPropagation"] = "rshared,rslave".into();
        let (code, out) = b.run(&cfg);
        assert_eq!(code, -1, "{mode:?}: refused");
        assert_has(
            &out,
            "linux.rootfsPropagation \"rshared,rslave\": not one of shared, slave, private",
        );
    }
}
