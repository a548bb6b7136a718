//! Namespaces and identities: leaving host root, unshare, id maps, UTS, loopback.

use super::Stage;
use super::{At, StageResult, sys};
use super::{Identity, MOUNT_FD_BASE, RunSpec};
use nix::errno::Errno;
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{ForkResult, Gid, Uid, fork, setgroups, setresgid, setresuid};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// The namespaces every cell gets.
pub const CELL_NAMESPACES: &[(&str, CloneFlags)] = &[
    ("user", CloneFlags::CLONE_NEWUSER),
    ("mount", CloneFlags::CLONE_NEWNS),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("network", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
];

/// Names of the namespaces, for the verdict.
pub fn namespace_names() -> Vec<&'static str> {
    CELL_NAMESPACES.iter().map(|(n, _)| *n).collect()
}

/// True when this process is root of the initial user namespace (the identity map
/// covers every id): only then can it open mount trees and map other ids. Root inside
/// some other user namespace (`unshare -r`) is treated like any unprivileged user.
pub fn is_host_root() -> bool {
    nix::unistd::geteuid().is_root()
        && std::fs::read_to_string("/proc/self/uid_map")
            .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
            .unwrap_or(false)
}

/// Mounts made before the cell's user namespace exists: the trees of the bind sources
/// (`spec.mounts` order), cloned while still host root (root mode only), and the
/// file systems of joined namespaces (`ocimount::joined_fs`: mqueue, sysfs).
#[derive(Default)]
pub struct PreparedMounts {
    pub trees: Vec<OwnedFd>,
    pub joined_fs: Vec<OwnedFd>,
}

/// Started as root: clone the mount sources (opened once by the supervisor, found on
/// `MOUNT_FD_BASE + i`) as detached trees, clear the supplementary groups, then become
/// the unprivileged host identity. From here on the set-up runs exactly as it does
/// rootless. The one id mapping: a copy-on-write workdir's lower layer owned by someone
/// else is idmapped so that its owner reads as the cell (copy-up needs a mapped
/// owner); that layer is read-only and never written, the cell writes only its upper.
pub fn leave_host_root(id: &Identity, spec: &RunSpec) -> StageResult<PreparedMounts> {
    const STAGE: Stage = Stage::LeaveHostRoot;
    setgroups(&[]).at(STAGE, "setgroups", "[]")?;
    let mut fds = Vec::with_capacity(spec.mounts.len());
    for (i, m) in spec.mounts.iter().enumerate() {
        // An image root's layers are an overlay's lower layers as a copy-on-write
        // workdir is.
        let cow =
            (i == 0 && spec.work.is_some()) || spec.image_root().is_some_and(|img| i < img.layers);
        let mut flags = sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC;
        if !cow && !spec.flat_source(i) {
            flags |= libc::AT_RECURSIVE as u32;
        }
        let fd = sys::open_tree_fd(MOUNT_FD_BASE + i as i32, flags).at(
            STAGE,
            "open_tree",
            m.source.display(),
        )?;
        // A clone of a shared mount is its peer: a mount the cell made below it (a
        // later bind, nixcell's own) would appear on the host and outlive the cell.
        sys::set_tree_propagation(fd.as_raw_fd(), libc::MS_PRIVATE).at(
            STAGE,
            "mount_setattr(MS_PRIVATE)",
            m.source.display(),
        )?;
        // A layer the engine chowned into the cell's ranges is seen as it is.
        let in_ranges = id.ranges.as_ref().is_some_and(|r| r.maps_host(m.owner));
        if cow && m.owner != (id.host_uid, id.host_gid) && !in_ranges {
            let userns = idmap_userns(m.owner.0, m.owner.1, id.host_uid, id.host_gid)?;
            sys::mount_setattr(
                Some(fd.as_raw_fd()),
                Path::new(""),
                false,
                sys::MOUNT_ATTR_IDMAP | sys::MOUNT_ATTR_RDONLY,
                Some(userns.as_raw_fd()),
            )
            .at(STAGE, "mount_setattr(MOUNT_ATTR_IDMAP)", m.source.display())?;
        }
        fds.push(fd);
    }
    setresgid(
        Gid::from_raw(id.host_gid),
        Gid::from_raw(id.host_gid),
        Gid::from_raw(id.host_gid),
    )
    .at(STAGE, "setresgid", id.host_gid)?;
    setresuid(
        Uid::from_raw(id.host_uid),
        Uid::from_raw(id.host_uid),
        Uid::from_raw(id.host_uid),
    )
    .at(STAGE, "setresuid", id.host_uid)?;
    // A uid change makes the process non-dumpable, which would make its own
    // /proc/self/{uid_map,gid_map,setgroups} root-owned and unwritable for it.
    nix::sys::prctl::set_dumpable(true).at(STAGE, "prctl", "PR_SET_DUMPABLE")?;
    Ok(PreparedMounts {
        trees: fds,
        joined_fs: Vec::new(),
    })
}

/// A user namespace whose maps send `owner` (the on-disk ids of a bind source) to the
/// cell's host ids; used as the idmap of a mount (mount_setattr(2), MOUNT_ATTR_IDMAP).
fn idmap_userns(
    owner_uid: u32,
    owner_gid: u32,
    host_uid: u32,
    host_gid: u32,
) -> StageResult<OwnedFd> {
    const STAGE: Stage = Stage::IdmapWorkdir;
    // Two pipes: the child says when its namespace exists, the parent says when the
    // maps are written and the namespace is open (then the child may exit).
    let (ready_rd, ready_wr) = nix::unistd::pipe().at(STAGE, "pipe", "")?;
    let (done_rd, done_wr) = nix::unistd::pipe().at(STAGE, "pipe", "")?;
    // SAFETY: the init stage is single-threaded (a fresh exec), so fork is safe; the
    // child only calls unshare, write and read before _exit.
    match unsafe { fork() }.at(STAGE, "fork", "")? {
        ForkResult::Child => {
            drop(ready_rd);
            drop(done_wr);
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = nix::unistd::write(&ready_wr, if ok { b"1" } else { b"0" });
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(&done_rd, &mut b);
            // SAFETY: _exit is async-signal-safe and ends the child at once.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(ready_wr);
            drop(done_rd);
            let res = (|| {
                let mut b = [0u8; 1];
                nix::unistd::read(&ready_rd, &mut b).at(STAGE, "read", "idmap child")?;
                if b[0] != b'1' {
                    return Err(super::StageError::new(
                        STAGE,
                        "unshare",
                        "CLONE_NEWUSER for the idmap",
                        Errno::EPERM,
                    ));
                }
                std::fs::write(
                    format!("/proc/{child}/uid_map"),
                    format!("{owner_uid} {host_uid} 1\n"),
                )
                .at(STAGE, "write", "uid_map")?;
                std::fs::write(
                    format!("/proc/{child}/gid_map"),
                    format!("{owner_gid} {host_gid} 1\n"),
                )
                .at(STAGE, "write", "gid_map")?;
                let ns_path = format!("/proc/{child}/ns/user");
                let f = std::fs::File::open(&ns_path).at(STAGE, "open", &ns_path)?;
                Ok(OwnedFd::from(f))
            })();
            drop(done_wr);
            let _ = nix::sys::wait::waitpid(child, None);
            res
        }
    }
}

/// Host settings under which the cell's user namespace cannot be created at all, read
/// from sysctls (nothing is tried): checked before any expensive work of a run (a Nix
/// build), with the error the `unshare` stage would end with. Settings that depend on
/// the program (AppArmor) are left to the stage itself.
pub fn check_userns_possible() -> StageResult {
    let errno = if read_sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        Errno::ENOSPC
    } else if read_sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        // The init stage leaves host root before unshare: this applies to root too.
        Errno::EPERM
    } else {
        return Ok(());
    };
    Err(super::StageError::new(
        Stage::Unshare,
        "unshare",
        format!(
            "user|mount|pid|net|ipc|uts|cgroup, checked before building: {}",
            userns_blockers().join("; ")
        ),
        errno,
    ))
}

/// unshare(2) of every cell namespace at once; the user namespace is created first
/// and owns the others.
pub fn unshare_all() -> StageResult {
    unshare_all_but(CloneFlags::empty())
}

/// setns(2) into each namespace to join (`RunSpec::joins`), before anything else
/// changes: started as root, while still host root (a pod's namespaces are owned by
/// the host's user namespace); rootless, the caller needs CAP_SYS_ADMIN in the user
/// namespace owning them (root of the user namespace a rootless engine made). The
/// descriptors are closed once joined. Returns the flags of the kinds joined.
pub fn join_all(joins: &[super::JoinNs]) -> StageResult<CloneFlags> {
    let mut joined = CloneFlags::empty();
    for j in joins {
        // SAFETY: the supervisor placed the namespace descriptor there for us.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(j.fd) };
        nix::sched::setns(fd, j.kind.flag()).at(
            Stage::JoinNamespaces,
            "setns",
            format!(
                "{} namespace {} (joining needs CAP_SYS_ADMIN in the user namespace owning it)",
                j.kind.name(),
                j.path.display()
            ),
        )?;
        // SAFETY: nothing else uses the descriptor.
        unsafe { libc::close(j.fd) };
        joined |= j.kind.flag();
    }
    Ok(joined)
}

/// The type of the namespace open on `fd` (ioctl NS_GET_NSTYPE, ioctl_ns(2)): a
/// `CLONE_NEW*` flag, or an error when `fd` is no namespace.
pub fn ns_type(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<libc::c_int> {
    // _IO(0xb7, 0x3)
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an argument-less ioctl on a descriptor we hold.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

/// unshare(2) of every cell namespace but those in `skip` (joined instead).
pub fn unshare_all_but(skip: CloneFlags) -> StageResult {
    let flags = CELL_NAMESPACES
        .iter()
        .fold(CloneFlags::empty(), |acc, (_, f)| acc | *f)
        - skip;
    unshare(flags).map_err(|e| {
        // Name the host setting that forbids user namespaces, and its fix.
        let mut detail = String::from("user|mount|pid|net|ipc|uts|cgroup");
        let blockers = userns_blockers();
        if !blockers.is_empty() {
            detail.push_str(": ");
            detail.push_str(&blockers.join("; "));
        }
        super::StageError::new(Stage::Unshare, "unshare", detail, e)
    })
}

/// The process that writes an engine's whole id ranges (`Identity::ranges`) into the
/// cell's user namespace: forked while still host root (only a process with
/// CAP_SETUID/CAP_SETGID over the parent namespace may map more than its own id),
/// it waits on a socket for the cell to have unshared, writes `/proc/PPID/{setgroups,
/// gid_map,uid_map}` and answers, then exits. It reads nothing but the spec's ranges.
pub struct Mapper {
    child: nix::unistd::Pid,
    sock: std::os::unix::net::UnixStream,
}

/// Forks the `Mapper` (host root, single-threaded init stage).
/// `setgroups`: the namespace allows setgroups(2) (the container's supplementary
/// groups are set), else it is denied as in every other cell.
pub fn spawn_mapper(ranges: &super::IdRanges, setgroups: bool) -> StageResult<Mapper> {
    use std::io::{Read, Write};
    const STAGE: Stage = Stage::IdMaps;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().at(STAGE, "socketpair", "")?;
    let lines = |r: &[super::IdRange]| {
        r.iter()
            .map(|m| format!("{} {} {}\n", m.inside, m.host, m.count))
            .collect::<String>()
    };
    let (uid_map, gid_map) = (lines(&ranges.uid), lines(&ranges.gid));
    let parent = nix::unistd::getpid();
    // SAFETY: the init stage is single-threaded (a fresh exec), so fork is safe; the
    // child reads, writes three /proc files and answers before _exit.
    match unsafe { fork() }.at(STAGE, "fork", "mapper")? {
        ForkResult::Child => {
            drop(ours);
            let mut theirs = theirs;
            let mut go = [0u8; 1];
            let answer = match theirs.read(&mut go) {
                Ok(1) => (|| -> std::io::Result<()> {
                    let at = |f: &str| format!("/proc/{parent}/{f}");
                    std::fs::write(at("setgroups"), if setgroups { "allow" } else { "deny" })?;
                    std::fs::write(at("gid_map"), &gid_map)?;
                    std::fs::write(at("uid_map"), &uid_map)
                })()
                .map_or_else(|e| e.to_string(), |()| "ok".into()),
                _ => "no request".into(),
            };
            let _ = theirs.write_all(answer.as_bytes());
            // SAFETY: _exit ends the child at once.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            Ok(Mapper { child, sock: ours })
        }
    }
}

impl Mapper {
    /// Asks for the ranges to be written into this process's (new) user namespace and
    /// waits for them.
    pub fn map(mut self) -> StageResult {
        use std::io::{Read, Write};
        const STAGE: Stage = Stage::IdMaps;
        let res = self
            .sock
            .write_all(b"1")
            .and_then(|()| self.sock.shutdown(std::net::Shutdown::Write))
            .and_then(|()| {
                let mut answer = String::new();
                self.sock.read_to_string(&mut answer).map(|_| answer)
            })
            .at(STAGE, "mapper", "linux.uidMappings/gidMappings");
        let _ = nix::sys::wait::waitpid(self.child, None);
        let answer = res?;
        if answer != "ok" {
            return Err(super::StageError::new(
                STAGE,
                "write",
                format!("uid_map/gid_map of the engine's ranges: {answer}"),
                Errno::EINVAL,
            ));
        }
        Ok(())
    }
}

/// Maps the cell identity onto the process's own host ids: the one mapping an
/// unprivileged process may write for itself (user_namespaces(7)); setgroups must be
/// denied before gid_map.
/// `host` are the process's ids read before unshare (afterwards they read as the
/// overflow id until the maps exist).
pub fn write_id_maps(id: &Identity, host: (u32, u32)) -> StageResult {
    const STAGE: Stage = Stage::IdMaps;
    let (host_uid, host_gid) = host;
    std::fs::write("/proc/self/setgroups", "deny").at(STAGE, "write", "/proc/self/setgroups")?;
    std::fs::write("/proc/self/gid_map", format!("{} {} 1\n", id.gid, host_gid)).at(
        STAGE,
        "write",
        "/proc/self/gid_map",
    )?;
    std::fs::write("/proc/self/uid_map", format!("{} {} 1\n", id.uid, host_uid)).at(
        STAGE,
        "write",
        "/proc/self/uid_map",
    )?;
    Ok(())
}

/// Sets the UTS host name.
pub fn set_hostname(name: &str) -> StageResult {
    nix::unistd::sethostname(name).at(Stage::Hostname, "sethostname", name)
}

/// Brings `lo` up in the fresh network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS,
/// netdevice(7)); the namespace has no other interface, so nothing but loopback works.
pub fn loopback_up() -> StageResult {
    const STAGE: Stage = Stage::Loopback;
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(super::StageError::new(
            STAGE,
            "socket",
            "AF_INET",
            Errno::last(),
        ));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into req, which is a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(super::StageError::new(
            STAGE,
            "ioctl",
            "SIOCGIFFLAGS lo",
            Errno::last(),
        ));
    }
    // SAFETY: the union member ifru_flags is the one SIOCGIFFLAGS filled in.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads req, which is a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(super::StageError::new(
            STAGE,
            "ioctl",
            "SIOCSIFFLAGS lo up",
            Errno::last(),
        ));
    }
    Ok(())
}

/// The AppArmor profile of the sources that lets nixcell create user namespaces where
/// `kernel.apparmor_restrict_unprivileged_userns=1`.
pub const APPARMOR_PROFILE: &str = "contrib/apparmor/nixcell";

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The host settings that forbid the user namespaces nixcell needs (every run
/// creates one as an unprivileged identity, also when started as root), each with
/// its fix.
pub fn userns_blockers() -> Vec<String> {
    let mut fixes = Vec::new();
    if read_sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        fixes.push(
            "user.max_user_namespaces=0 forbids user namespaces: sysctl -w user.max_user_namespaces=15000 (persist it in /etc/sysctl.d/)".to_string(),
        );
    }
    if read_sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        fixes.push(
            "kernel.unprivileged_userns_clone=0 forbids unprivileged user namespaces: sysctl -w kernel.unprivileged_userns_clone=1 (persist it in /etc/sysctl.d/)".to_string(),
        );
    }
    if read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    {
        fixes.push(format!(
            "kernel.apparmor_restrict_unprivileged_userns=1 (AppArmor) denies user namespaces to unconfined programs: install the AppArmor profile {APPARMOR_PROFILE} of the nixcell sources (adjust the binary path in it; then cp it to /etc/apparmor.d/nixcell and run apparmor_parser -r /etc/apparmor.d/nixcell), or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
        ));
    }
    fixes
}
