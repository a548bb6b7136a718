//! The layers of an engine's overlayfs root. Started as root, an engine gives its
//! snapshotter's overlayfs mount as `root.path` (containerd's overlayfs snapshotter,
//! podman's overlay storage); an overlayfs cannot be idmapped for the cell's
//! unprivileged host uid, so its layers are read from `/proc/self/mountinfo` (the
//! mount whose id `statx(2)` gives for the opened root) and each becomes a read-only,
//! idmapped lower layer of the cell's own overlay: the engine's upper layer first
//! (what the engine already wrote there), then its lowers in order. The engine's
//! layers are never written. Options whose meaning the cell's overlay could not keep
//! (metacopy, redirects, data-only layers, volatile, ...) are refused by name.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;

/// The super options of an overlayfs that change nothing a read-only lower shows.
const HARMLESS: &[&str] = &[
    "rw",
    "ro",
    "index=off",
    "xino=off",
    "xino=auto",
    "nfs_export=off",
    "metacopy=off",
    "redirect_dir=off",
    "redirect_dir=nofollow",
    "userxattr",
    // How the engine's own writes to its upper layer are synced: the container never
    // writes that layer (it is one of its read-only lowers).
    "volatile",
    "fsync=volatile",
    "fsync=auto",
    "fsync=strict",
];

/// The layer directories (topmost first) of the overlayfs whose root `fd` is.
pub fn of_root(fd: BorrowedFd<'_>, what: &str) -> Result<Vec<PathBuf>, String> {
    let (id, is_root) = mount_id(fd).map_err(|e| format!("{what}: statx: {e}"))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("{what}: /proc/self/mountinfo: {e}"))?;
    let line = info
        .lines()
        .find(|l| l.split(' ').next() == Some(id.to_string().as_str()))
        .ok_or_else(|| format!("{what}: mount {id} is not in /proc/self/mountinfo"))?;
    let (mount_root, super_opts) = fields(line)
        .ok_or_else(|| format!("{what}: mount {id}: a mountinfo line nixcell cannot read"))?;
    if mount_root != "/" || !is_root {
        return Err(format!(
            "{what}: a directory inside an overlayfs (not the root of the overlay mount); \
             started as root, nixcell takes an engine's overlayfs root only as a whole: \
             give the overlay's mount point"
        ));
    }
    parse(super_opts).map_err(|e| format!("{what}: overlayfs mount {id}: {e}"))
}

/// `layer` with its symbolic links resolved (podman names its lowers by links under
/// `overlay/l/`), each link owned by root in a directory only root can write, so that
/// what is opened is what the engine mounted; the result has no links left.
pub fn resolve(layer: &std::path::Path, what: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let err = |e: std::io::Error| format!("{what}: overlay layer {}: {e}", layer.display());
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    let mut todo: Vec<std::ffi::OsString> = layer
        .components()
        .rev()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    while let Some(c) = todo.pop() {
        match c.to_str() {
            Some("/" | ".") => continue,
            Some("..") => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let next = cur.join(&c);
        let m = std::fs::symlink_metadata(&next).map_err(err)?;
        if !m.file_type().is_symlink() {
            cur = next;
            continue;
        }
        let parent = std::fs::symlink_metadata(&cur).map_err(err)?;
        links += 1;
        if m.uid() != 0 || parent.uid() != 0 || parent.mode() & 0o022 != 0 || links > 40 {
            return Err(format!(
                "{what}: overlay layer {}: the symbolic link {} is not root's in a directory \
                 only root can write; nixcell follows no other links in host paths",
                layer.display(),
                next.display()
            ));
        }
        let target = std::fs::read_link(&next).map_err(err)?;
        if target.is_absolute() {
            cur = PathBuf::from("/");
        }
        todo.extend(target.components().rev().map(|c| c.as_os_str().to_owned()));
    }
    Ok(cur)
}

/// An engine marks an opaque directory (one its layer removed and made again) and a
/// renamed one with `trusted.overlay.*` xattrs; the container's overlay, mounted in
/// its user namespace, reads only `user.overlay.*`, so it would show the lower
/// layers' files through them. Such a directory in any layer but the lowest is refused
/// by name (whiteouts, 0/0 character devices, are seen as the engine meant).
pub fn refuse_trusted_markers(layers: &[PathBuf], what: &str) -> Result<(), String> {
    let upper = &layers[..layers.len().saturating_sub(1)];
    for layer in upper {
        let mut dirs = vec![layer.clone()];
        while let Some(d) = dirs.pop() {
            for attr in [c"trusted.overlay.opaque", c"trusted.overlay.redirect"] {
                if has_xattr(&d, attr) {
                    return Err(format!(
                        "{what}: overlay layer {}: directory {} has the xattr {} (an \
                         opaque or renamed directory of the engine), which the \
                         container's overlay in its user namespace cannot see; nixcell \
                         refuses the image rather than show files its layers removed",
                        layer.display(),
                        d.strip_prefix(layer).unwrap_or(&d).display(),
                        attr.to_string_lossy()
                    ));
                }
            }
            let entries =
                std::fs::read_dir(&d).map_err(|e| format!("{what}: {}: {e}", d.display()))?;
            for e in entries {
                let e = e.map_err(|e| format!("{what}: {}: {e}", d.display()))?;
                // file_type() does not follow symbolic links.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
    }
    Ok(())
}

/// `p` (not followed if a link) has the extended attribute `name`.
fn has_xattr(p: &std::path::Path, name: &std::ffi::CStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: valid C strings; a size of 0 only asks for the value's length.
    unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// The mount id of `fd` and whether `fd` is the root of that mount.
fn mount_id(fd: BorrowedFd<'_>) -> std::io::Result<(u64, bool)> {
    // SAFETY: statx is plain data; zeroed is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open, the path a valid C string, st a statx to fill in.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if st.stx_mask & libc::STATX_MNT_ID == 0
        || st.stx_attributes_mask & libc::STATX_ATTR_MOUNT_ROOT as u64 == 0
    {
        return Err(std::io::Error::other("the kernel gives no mount id"));
    }
    Ok((
        st.stx_mnt_id,
        st.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0,
    ))
}

/// A mountinfo line's root (field 4, unescaped) and super options (after ` - TYPE SRC`)
/// of an overlay mount.
fn fields(line: &str) -> Option<(String, &str)> {
    let (head, tail) = line.split_once(" - ")?;
    let root = unescape_octal(head.split(' ').nth(3)?)?;
    let mut t = tail.splitn(3, ' ');
    if t.next()? != "overlay" {
        return None;
    }
    t.next()?;
    Some((root, t.next()?))
}

/// `\ooo` escapes of mountinfo undone (the kernel escapes space, tab, newline and
/// backslash so; nothing else may follow a backslash).
fn unescape_octal(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let o = b.get(i + 1..i + 4)?;
            if !o.iter().all(|c| (b'0'..=b'7').contains(c)) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok()?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The layers of an overlayfs's super options: `upperdir` first, then `lowerdir`'s
/// directories (colon-separated, `\` escaping the next character, as given to
/// mount(2)) or each `lowerdir+` in order.
fn parse(opts: &str) -> Result<Vec<PathBuf>, String> {
    let mut upper = None;
    let mut lowers = Vec::new();
    for opt in opts.split(',') {
        let (key, val) = opt.split_once('=').unwrap_or((opt, ""));
        let val = || unescape_octal(val).ok_or_else(|| format!("option {key}: a bad escape"));
        match key {
            "lowerdir" if lowers.is_empty() => lowers = split_lowers(&val()?)?,
            "lowerdir+" => lowers.push(layer_path("lowerdir+", val()?)?),
            "upperdir" if upper.is_none() => upper = Some(layer_path("upperdir", val()?)?),
            "workdir" | "uuid" => {}
            _ if HARMLESS.contains(&opt) => {}
            _ => {
                return Err(format!(
                    "option {opt:?} changes what the layers show, which the container's own \
                     overlay could not keep; nixcell refuses it"
                ));
            }
        }
    }
    if lowers.is_empty() {
        return Err("no lowerdir".into());
    }
    Ok(upper.into_iter().chain(lowers).collect())
}

fn split_lowers(v: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.push(chars.next().ok_or("lowerdir ends in a backslash")?),
            ':' => out.push(layer_path("lowerdir", std::mem::take(&mut cur))?),
            c => cur.push(c),
        }
    }
    out.push(layer_path("lowerdir", cur)?);
    Ok(out)
}

fn layer_path(key: &str, p: String) -> Result<PathBuf, String> {
    if p.is_empty() {
        return Err(format!(
            "{key}: data-only lower layers (\"::\") are not supported"
        ));
    }
    if !p.starts_with('/') {
        return Err(format!("{key}: {p:?} is not an absolute path"));
    }
    Ok(PathBuf::from(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_read_as_the_kernel_shows_them() {
        let p = |s: &str| {
            parse(s).map(|v| {
                v.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            p("rw,lowerdir=/l/a\\134:b:/l\\040c\\134\\054d,upperdir=/u,workdir=/w,uuid=on")
                .unwrap(),
            ["/u", "/l/a:b", "/l c,d"]
        );
        assert_eq!(
            p("rw,lowerdir=/l\\012n,upperdir=/u\\012x,workdir=/w").unwrap(),
            ["/u\nx", "/l\nn"]
        );
        assert_eq!(
            p("ro,lowerdir+=/a,lowerdir+=/b,redirect_dir=nofollow").unwrap(),
            ["/a", "/b"]
        );
        for bad in [
            "rw,lowerdir=/a::/d,upperdir=/u,workdir=/w",
            "rw,lowerdir=/a,metacopy=on",
            "rw,lowerdir=/a,redirect_dir=on",
            "rw,lowerdir=/a,upperdir=/u,workdir=/w,nfs_export=on",
            "rw,lowerdir=/a,datadir+=/d",
            "rw,lowerdir=rel",
            "rw,lowerdir=/a\\9",
            "rw,upperdir=/u",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            fields("5 1 0:40 / /m\\040x rw - overlay overlay rw,lowerdir=/a").unwrap(),
            ("/".to_string(), "rw,lowerdir=/a")
        );
        assert!(fields("5 1 0:40 / /m rw - ext4 /dev/sda rw").is_none());
    }
}
