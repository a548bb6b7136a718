//! The container's file system view from config.json: `root` (an image directory when
//! the bundle names no closure), `mounts` with their options, `linux.maskedPaths`,
//! `linux.readonlyPaths` and `linux.devices`, checked and turned into the sandbox's
//! [`OciFs`] (carried out by `src/sandbox/ocimount.rs`). Bind sources are opened here,
//! by the supervisor, like every mount source of a cell.

use super::config::{Config, Mount};
use crate::sandbox::ocimount::{ImageRoot, MountKind, OciFs, OciMount};
use crate::sandbox::{BindMount, RunSpec};
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Cap of the copy-on-write layer over an image root (the cell's writes to its root).
const IMAGE_LAYER_BYTES: u64 = 1 << 30;
const IMAGE_LAYER_INODES: u64 = 100_000;

/// Devices every container gets (runtime-spec config-linux.md, default devices).
const DEFAULT_DEVICES: &[&str] = crate::sandbox::rootfs::DEVICES;

/// The image root of a bundle without a closure: `root.path` (relative to the bundle),
/// opened once; it becomes `spec.mounts[0]` (started as root over an engine's
/// overlayfs: its layers, topmost first, `spec.mounts[..layers]`).
pub fn image_root(cfg: &Config, bundle: &Path, spec: &mut RunSpec) -> Result<(), String> {
    let root = cfg.root.as_ref().ok_or(
        "config.json: root is missing (and no dev.nixcell.closure annotation names a closure)",
    )?;
    let path = bundle.join(&root.path);
    let what = format!("config.json: root.path {}", path.display());
    let o = open_dir(&path, &what)?;
    // Started as root, the cell runs as an unprivileged host uid: the image's files
    // are the cell's through idmapped lower layers. An overlayfs (an engine's own
    // image store) cannot be idmapped: its layers are, one by one (`layers.rs`).
    let layers = if crate::sandbox::ns::is_host_root()
        && !spec.identity.owns_host((o.st.st_uid, o.st.st_gid))
        && on_overlayfs(&o.fd)?
    {
        let mut opened = Vec::new();
        let layers = super::layers::of_root(o.fd.as_fd(), &what)?
            .iter()
            .map(|l| super::layers::resolve(l, &what))
            .collect::<Result<Vec<_>, _>>()?;
        super::layers::refuse_trusted_markers(&layers, &what)?;
        for l in layers {
            opened.push(open_dir(
                &l,
                &format!("{what}: overlay layer {}", l.display()),
            )?);
        }
        opened
    } else {
        vec![o]
    };
    let n = layers.len();
    for (i, o) in layers.into_iter().enumerate() {
        spec.mounts.insert(
            i,
            BindMount {
                source: o.real.clone(),
                dest: PathBuf::from("/"),
                // The image itself is never written: the cell writes its overlay's upper layer.
                writable: false,
                is_dir: true,
                dev: o.st.st_dev,
                ino: o.st.st_ino,
                owner: (o.st.st_uid, o.st.st_gid),
            },
        );
        spec.sources.insert(i, Arc::new(o.fd));
    }
    spec.oci_fs.get_or_insert_with(OciFs::default).image = Some(ImageRoot {
        readonly: root.readonly,
        size_bytes: IMAGE_LAYER_BYTES,
        inodes: IMAGE_LAYER_INODES,
        layers: n,
    });
    Ok(())
}

/// The host directory `path` opened as every mount source is; errors start with `what`.
fn open_dir(path: &Path, what: &str) -> Result<crate::plan::Opened, String> {
    let o = crate::plan::open_host_path(path).map_err(|e| format!("{what}: {e}"))?;
    if !crate::fsat::is_dir(&o.st) {
        return Err(format!("{what}: not a directory"));
    }
    Ok(o)
}

/// The file system of `fd` is an overlayfs (statfs(2) f_type).
fn on_overlayfs(fd: &std::os::fd::OwnedFd) -> Result<bool, String> {
    use std::os::fd::AsRawFd;
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    // SAFETY: statfs is plain data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open descriptor; st is a valid statfs to fill in.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(format!(
            "root.path: fstatfs: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(st.f_type == OVERLAYFS_SUPER_MAGIC)
}

/// config.json's mounts, masked and read-only paths and devices into `spec.oci_fs`
/// (bind sources appended to `spec.mounts`); the warnings for the runtime log.
pub fn plan(cfg: &Config, spec: &mut RunSpec) -> Result<Vec<String>, String> {
    let image = spec.oci_fs.as_ref().is_some_and(|f| f.image.is_some());
    let mut warn = Vec::new();
    if let Some(i) = spec.oci_fs.as_ref().and_then(|f| f.image.as_ref())
        && !i.readonly
    {
        // Not the spec's (runc writes root.path itself), so said: a root-started cell
        // writing through the image's idmapped layers would leave files of its making,
        // owned by the image's owner (setuid ones too), in the engine's store.
        warn.push(format!(
            "root.path: writable: the container's writes go to a layer of its own (a \
             tmpfs of {} MiB, {IMAGE_LAYER_INODES} inodes), never to the image; they are \
             gone with the container",
            IMAGE_LAYER_BYTES >> 20
        ));
    }
    let mut mounts = Vec::new();
    let ids = (spec.identity.uid, spec.identity.gid);
    for m in &cfg.mounts {
        let dest = check_dest("mounts", &m.destination)?;
        if !image
            && super::config::OWN_MOUNTS
                .iter()
                .any(|o| dest == Path::new(o))
        {
            continue;
        }
        if !image && dest.starts_with(&spec.store_dir) {
            return Err(format!(
                "config.json: mount at {}: the store of a closure root is the closure",
                m.destination
            ));
        }
        let Some(mut om) = mount(m, dest, ids, &mut warn)? else {
            continue;
        };
        if let MountKind::Bind { source, .. } = &mut om.kind {
            *source = spec.mounts.len();
            let src = m.source.as_deref().unwrap_or_default();
            let o = crate::plan::open_host_path(Path::new(src))
                .map_err(|e| format!("config.json: mount of {src} at {}: {e}", m.destination))?;
            // A live writable mount is only ever the cell's own (as for `run --bind`):
            // another owner's (an engine's /etc/hosts, root's) is bound read-only.
            if !om.readonly && !spec.identity.owns_host((o.st.st_uid, o.st.st_gid)) {
                warn.push(format!(
                    "mount of {src} at {}: read-only (it belongs to uid {}, not to the \
                     cell's host identity {})",
                    m.destination, o.st.st_uid, spec.identity.host_uid
                ));
                om.readonly = true;
            }
            spec.mounts.push(BindMount {
                source: o.real.clone(),
                dest: om.dest.clone(),
                writable: !om.readonly,
                is_dir: crate::fsat::is_dir(&o.st),
                dev: o.st.st_dev,
                ino: o.st.st_ino,
                owner: (o.st.st_uid, o.st.st_gid),
            });
            spec.sources.push(Arc::new(o.fd));
        }
        mounts.push(om);
    }
    let linux = cfg.linux.as_ref();
    let paths = |what: &str, v: Option<&Vec<String>>| -> Result<Vec<PathBuf>, String> {
        v.into_iter()
            .flatten()
            .map(|p| check_dest(what, p))
            .collect()
    };
    let masked = paths("linux.maskedPaths", linux.map(|l| &l.masked_paths))?;
    let readonly = paths("linux.readonlyPaths", linux.map(|l| &l.readonly_paths))?;
    for d in linux.map(|l| l.devices.as_slice()).unwrap_or_default() {
        match check_device(d) {
            Ok(()) => {}
            // A closure root's /dev is nixcell's as a whole (as its /dev mount is).
            Err(e) if !image => warn.push(format!(
                "{}: not given",
                e.trim_start_matches("config.json: ")
            )),
            Err(e) => return Err(e),
        }
    }
    let propagation = cfg
        .linux
        .as_ref()
        .and_then(|l| l.rootfs_propagation.clone())
        .filter(|p| !p.is_empty());
    if let Some(p) = &propagation
        && crate::sandbox::ocimount::propagation_flags(p).is_none()
    {
        return Err(format!(
            "config.json: linux.rootfsPropagation {p:?}: not one of shared, slave, private, \
             unbindable, rshared, rslave, rprivate, runbindable"
        ));
    }
    let joins_net = cfg
        .joins()?
        .iter()
        .any(|(k, _)| *k == super::config::JoinKind::Net);
    for m in mounts
        .iter()
        .filter(|m| joins_net && m.kind == MountKind::Sysfs && !m.readonly)
    {
        warn.push(format!(
            "mount at {}: rw: a sysfs of the joined network namespace is read-only",
            m.dest.display()
        ));
    }
    if let Some(p @ ("slave" | "rslave")) = propagation.as_deref() {
        warn.push(format!(
            "linux.rootfsPropagation {p}: the root has no master (nothing of the host is \
             below it): it receives no mounts, as a private one"
        ));
    }
    let fs = spec.oci_fs.get_or_insert_with(OciFs::default);
    fs.root_propagation = propagation;
    fs.mounts = mounts;
    fs.masked = masked;
    fs.readonly = readonly;
    Ok(warn)
}

/// An absolute destination without `.` or `..`, not on nixcell's own staging paths.
fn check_dest(what: &str, d: &str) -> Result<PathBuf, String> {
    let p = Path::new(d);
    let bad = |why: &str| Err(format!("config.json: {what}: destination {d:?} {why}"));
    if !p.is_absolute() {
        return bad("is not absolute");
    }
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => {
                let n = n.to_string_lossy();
                if n == "oldroot" || n.starts_with(".nixcell-") {
                    return bad("names a path nixcell uses while building the root");
                }
            }
            _ => return bad("has . or .. in it"),
        }
    }
    if p == Path::new("/") {
        return bad("is the root itself (root.path is the root)");
    }
    Ok(p.components().collect())
}

/// The flag options of a config.json mount that nixcell honours (`features`'
/// `mountOptions`); every one is a case of [`mount`]'s option match (a unit test holds
/// the two together). Options with values are per type ([`allowed_data`]).
pub const FLAG_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "dev",
    "diratime",
    "exec",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "ro",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "unbindable",
];

/// File system options each type takes (`key` or `key=value`).
fn allowed_data(kind: &MountKind) -> &'static [&'static str] {
    match kind {
        MountKind::Tmpfs => &["size", "mode", "nr_inodes", "nr_blocks", "uid", "gid"],
        MountKind::Devpts => &["newinstance", "ptmxmode", "mode", "gid", "uid", "max"],
        MountKind::Proc => &["hidepid", "subset"],
        _ => &[],
    }
}

/// One mount of config.json as the cell makes it, or None (skipped, with a warning).
fn mount(
    m: &Mount,
    dest: PathBuf,
    ids: (u32, u32),
    warn: &mut Vec<String>,
) -> Result<Option<OciMount>, String> {
    let at = || format!("config.json: mount at {}", m.destination);
    let opts = &m.options;
    let bind = opts.iter().any(|o| o == "bind" || o == "rbind");
    let kind = match (m.kind.as_deref(), bind) {
        (_, true) | (Some("bind"), _) => MountKind::Bind {
            source: 0,
            recursive: opts.iter().any(|o| o == "rbind"),
        },
        (Some("tmpfs"), _) => MountKind::Tmpfs,
        (Some("proc"), _) => MountKind::Proc,
        (Some("sysfs"), _) => MountKind::Sysfs,
        (Some("devpts"), _) => MountKind::Devpts,
        (Some("mqueue"), _) => MountKind::Mqueue,
        (Some("cgroup" | "cgroup2"), _) => {
            warn.push(format!(
                "mount of a cgroup file system at {}: not made (a cell sees no cgroup file \
                 system; its limits are nixcell's cgroup layer)",
                m.destination
            ));
            return Ok(None);
        }
        (t, _) => {
            return Err(format!(
                "{}: type {:?} is not supported (bind, rbind, tmpfs, proc, sysfs, devpts, mqueue)",
                at(),
                t.unwrap_or("")
            ));
        }
    };
    if matches!(kind, MountKind::Bind { .. }) {
        match m.source.as_deref() {
            Some(s) if Path::new(s).is_absolute() => {}
            s => return Err(format!("{}: bind source {s:?} is not absolute", at())),
        }
    }
    let mut om = OciMount {
        dest,
        readonly: false,
        nosuid: true,
        nodev: true,
        noexec: false,
        data: Vec::new(),
        shared: false,
        source: match kind {
            MountKind::Bind { .. } => String::new(),
            _ => m.source.clone().unwrap_or_default(),
        },
        kind,
    };
    let mut rw_asked = false;
    for o in opts {
        match o.as_str() {
            "ro" => om.readonly = true,
            "rw" => {
                om.readonly = false;
                rw_asked = true;
            }
            "noexec" => om.noexec = true,
            "exec" => om.noexec = false,
            // Always nosuid, and nodev but on a devpts: devices are the default ones,
            // bound by nixcell.
            "nosuid" | "suid" | "nodev" | "dev" | "bind" | "rbind" => {}
            "relatime" | "norelatime" | "noatime" | "atime" | "strictatime" | "nostrictatime"
            | "nodiratime" | "diratime" | "sync" | "async" => {}
            // Nothing of a cell propagates to or from the host: every tree is private
            // first; shared makes a peer group inside the cell only.
            "private" | "rprivate" | "slave" | "rslave" | "unbindable" | "runbindable" => {}
            "shared" | "rshared" => om.shared = true,
            "tmpcopyup" => warn.push(format!(
                "mount at {}: tmpcopyup: the tmpfs starts empty",
                m.destination
            )),
            kv => {
                let key = kv.split_once('=').map_or(kv, |(k, _)| k);
                // A bind has no file system options (mount(2) ignores them, as runc's).
                if matches!(om.kind, MountKind::Bind { .. }) && kv.contains('=') {
                    warn.push(format!(
                        "mount at {}: option {kv}: a bind takes none, ignored",
                        m.destination
                    ));
                    continue;
                }
                if !allowed_data(&om.kind).contains(&key) {
                    return Err(format!("{}: option {kv:?} is not supported", at()));
                }
                let own = match key {
                    "uid" => Some(ids.0),
                    "gid" => Some(ids.1),
                    _ => None,
                };
                if let Some(id) = own
                    && kv.split_once('=').map(|(_, v)| v.parse::<u32>().ok()) != Some(Some(id))
                {
                    warn.push(format!(
                        "mount at {}: option {kv}: a cell maps one uid and gid only ({}:{}): left out",
                        m.destination, ids.0, ids.1
                    ));
                    continue;
                }
                om.data.push(kv.to_string());
            }
        }
    }
    // sysfs shows the host's devices and kernel settings: read-only unless asked.
    if om.kind == MountKind::Sysfs && !rw_asked {
        om.readonly = true;
    }
    // A devpts holds the terminals (its own instance): its nodes must open.
    if om.kind == MountKind::Devpts {
        om.nodev = false;
    }
    if om.kind == MountKind::Proc || om.kind == MountKind::Sysfs {
        om.noexec = true;
    }
    Ok(Some(om))
}

/// linux.devices: only the default devices, as the host has them (a cell cannot make
/// device nodes; nixcell binds those few from the host).
fn check_device(d: &super::config::Device) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "config.json: linux.devices: {} ({} {}:{}): {why}; a cell has only /dev/{{{}}}",
            d.path,
            d.kind,
            d.major,
            d.minor,
            DEFAULT_DEVICES.join(",")
        ))
    };
    let Some(name) = d.path.strip_prefix("/dev/") else {
        return refuse("not a default device");
    };
    if !DEFAULT_DEVICES.contains(&name) || d.kind != "c" {
        return refuse("not a default device");
    }
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(&d.path)
        .map_err(|e| format!("config.json: linux.devices: {}: {e}", d.path))?
        .rdev();
    let (major, minor) = (libc::major(rdev) as i64, libc::minor(rdev) as i64);
    if (major, minor) != (d.major, d.minor) {
        return refuse(&format!("the host's is {major}:{minor}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(j: serde_json::Value) -> Result<Option<OciMount>, String> {
        let m: Mount = serde_json::from_value(j).unwrap();
        let dest = check_dest("mounts", &m.destination)?;
        mount(&m, dest, (0, 0), &mut Vec::new())
    }

    #[test]
    fn options_become_flags_and_checked_data() {
        let m = one(
            serde_json::json!({"destination": "/dev/pts", "type": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "gid=5"]}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.kind, MountKind::Devpts);
        assert!(m.nosuid && m.noexec && !m.nodev && !m.readonly);
        // gid 5 is not mapped in a cell: left out.
        assert_eq!(m.data, ["newinstance", "ptmxmode=0666"]);
        let s = one(serde_json::json!({"destination": "/sys", "type": "sysfs"}))
            .unwrap()
            .unwrap();
        assert!(s.readonly && s.noexec, "sysfs is read-only unless asked");
        let b = one(
            serde_json::json!({"destination": "/d", "type": "none", "source": "/srv",
            "options": ["bind", "ro"]}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            b.kind,
            MountKind::Bind {
                source: 0,
                recursive: false
            }
        );
        assert!(
            one(serde_json::json!({"destination": "/sys/fs/cgroup", "type": "cgroup"}))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn every_flag_option_features_names_is_taken_without_a_warning() {
        for o in FLAG_OPTIONS {
            // bind and rbind make any mount a bind (which needs a source).
            let tmpfs = serde_json::json!({"destination": "/t", "type": "tmpfs", "options": [o]});
            let bind = serde_json::json!({"destination": "/b", "type": "none", "source": "/srv",
                "options": ["rbind", o]});
            let cases = if o.ends_with("bind") {
                vec![bind]
            } else {
                vec![tmpfs, bind]
            };
            for j in cases {
                let m: Mount = serde_json::from_value(j).unwrap();
                let dest = check_dest("mounts", &m.destination).unwrap();
                let mut warn = Vec::new();
                let r = mount(&m, dest, (0, 0), &mut warn);
                assert!(
                    r.is_ok_and(|m| m.is_some()) && warn.is_empty(),
                    "{o}: {warn:?}"
                );
            }
        }
        let m: Mount = serde_json::from_value(
            serde_json::json!({"destination": "/t", "type": "tmpfs", "options": ["nosymfollow"]}),
        )
        .unwrap();
        let dest = check_dest("mounts", &m.destination).unwrap();
        assert!(
            mount(&m, dest, (0, 0), &mut Vec::new()).is_err(),
            "an unknown option"
        );
    }

    #[test]
    fn bad_mounts_are_refused_by_name() {
        for (j, word) in [
            (
                serde_json::json!({"destination": "x", "type": "tmpfs"}),
                "not absolute",
            ),
            (
                serde_json::json!({"destination": "/a/../b", "type": "tmpfs"}),
                "..",
            ),
            (
                serde_json::json!({"destination": "/oldroot/x", "type": "tmpfs"}),
                "nixcell uses",
            ),
            (
                serde_json::json!({"destination": "/", "type": "tmpfs"}),
                "root itself",
            ),
            (
                serde_json::json!({"destination": "/t", "type": "tmpfs",
                "options": ["huge=always"]}),
                "huge=always",
            ),
            (
                serde_json::json!({"destination": "/t", "type": "bind", "source": "rel"}),
                "rel",
            ),
            (
                serde_json::json!({"destination": "/t", "type": "bind", "source": "/s",
                "options": ["rbind", "remount"]}),
                "remount",
            ),
            (
                serde_json::json!({"destination": "/t", "type": "nfs"}),
                "nfs",
            ),
        ] {
            let e = one(j).unwrap_err();
            assert!(e.contains(word), "{word}: {e}");
        }
    }
}
