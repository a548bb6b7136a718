//! Sealed cache entries: nixcell's caches hold data later runs act on (which store
//! paths a cell sees, which environment a project is), so an entry is only used when
//! it carries an HMAC-SHA256 made with a per-user key kept apart from the caches, in
//! the state directory (`<state>/nixcell/keys/cache.key`, `0600` in a `0700`
//! directory). Something that can rewrite a cache file but not read that key cannot
//! make nixcell trust what it wrote; an entry that fails the check is ignored and
//! recomputed.

use crate::dirs::{self, Base};
use hmac::{KeyInit, Mac};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const KEY_LEN: usize = 32;

fn key_file() -> Option<PathBuf> {
    Some(
        dirs::private_dir(Base::State, "keys")
            .ok()?
            .join("cache.key"),
    )
}

/// The per-user key, created on first use; `None` when it cannot be had safely (then
/// nothing is cached).
fn key() -> Option<[u8; KEY_LEN]> {
    key_at(&key_file()?)
}

/// The key in `path`, created if missing: written whole to a temporary file, then
/// linked into place (so a reader never sees part of a key, and of two processes
/// creating it at once both use the one that got there first). Read without following
/// a link, and only if it is ours, `0600` or stricter, and of the right length.
fn key_at(path: &Path) -> Option<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    if std::fs::symlink_metadata(path).is_err() {
        let dir = path.parent()?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".key-")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .ok()?;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut key))
            .ok()?;
        tmp.write_all(&key).ok()?;
        tmp.as_file().sync_all().ok()?;
        match std::fs::hard_link(tmp.path(), path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    let ours = m.is_file()
        && m.uid() == nix::unistd::geteuid().as_raw()
        && m.mode() & 0o077 == 0
        && m.len() == KEY_LEN as u64;
    if !ours {
        return None;
    }
    f.read_exact(&mut key).ok()?;
    Some(key)
}

fn mac(key: &[u8; KEY_LEN], purpose: &str, bytes: &[u8]) -> HmacSha256 {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(&(purpose.len() as u64).to_le_bytes());
    m.update(purpose.as_bytes());
    m.update(bytes);
    m
}

/// `bytes` with its seal in front (one hex line), for the cache `purpose`.
pub fn seal(purpose: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    seal_with(&key()?, purpose, bytes)
}

fn seal_with(key: &[u8; KEY_LEN], purpose: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let tag = hex::encode(mac(key, purpose, bytes).finalize().into_bytes());
    let mut out = Vec::with_capacity(tag.len() + 1 + bytes.len());
    out.extend_from_slice(tag.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(bytes);
    Some(out)
}

/// The content of a sealed entry if its seal is good for `purpose`.
pub fn open<'a>(purpose: &str, sealed: &'a [u8]) -> Option<&'a [u8]> {
    open_with(&key()?, purpose, sealed)
}

fn open_with<'a>(key: &[u8; KEY_LEN], purpose: &str, sealed: &'a [u8]) -> Option<&'a [u8]> {
    let nl = sealed.iter().position(|&b| b == b'\n')?;
    let tag = hex::decode(&sealed[..nl]).ok()?;
    let bytes = &sealed[nl + 1..];
    mac(key, purpose, bytes).verify_slice(&tag).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_entry_another_purpose_or_another_key_does_not_open() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("cache.key");
        let key = key_at(&file).unwrap();
        assert_eq!(key_at(&file), Some(key), "the key is kept");
        let mode = std::fs::metadata(&file).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let s = seal_with(&key, "closure", b"{\"paths\":[]}").unwrap();
        assert_eq!(open_with(&key, "closure", &s), Some(&b"{\"paths\":[]}"[..]));
        assert_eq!(open_with(&key, "build", &s), None);
        let mut bad = s.clone();
        *bad.last_mut().unwrap() = b'x';
        assert_eq!(open_with(&key, "closure", &bad), None);
        assert_eq!(open_with(&key, "closure", b"{\"paths\":[]}"), None);
        assert_eq!(open_with(&[7; KEY_LEN], "closure", &s), None);
        // A key file that is a link, or readable by others, is not used.
        let link = d.path().join("link.key");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(key_at(&link), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(key_at(&file), None);
    }
}
