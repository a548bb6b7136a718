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
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

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
    let path = key_file()?;
    let nofollow = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mut key = [0u8; KEY_LEN];
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nofollow)
        .open(&path)
    {
        Ok(mut f) => {
            std::fs::File::open("/dev/urandom")
                .and_then(|mut r| r.read_exact(&mut key))
                .ok()?;
            f.write_all(&key).ok()?;
            f.sync_all().ok()?;
            return Some(key);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow)
        .open(&path)
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
    let key = key()?;
    let tag = hex::encode(mac(&key, purpose, bytes).finalize().into_bytes());
    let mut out = Vec::with_capacity(tag.len() + 1 + bytes.len());
    out.extend_from_slice(tag.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(bytes);
    Some(out)
}

/// The content of a sealed entry if its seal is good for `purpose`.
pub fn open<'a>(purpose: &str, sealed: &'a [u8]) -> Option<&'a [u8]> {
    let nl = sealed.iter().position(|&b| b == b'\n')?;
    let tag = hex::decode(&sealed[..nl]).ok()?;
    let bytes = &sealed[nl + 1..];
    let key = key()?;
    mac(&key, purpose, bytes).verify_slice(&tag).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_entry_or_another_purpose_does_not_open() {
        let state = tempfile::tempdir().unwrap();
        // SAFETY: unit tests of this module are the only users of XDG_STATE_HOME here.
        unsafe { std::env::set_var("XDG_STATE_HOME", state.path()) };
        let s = seal("closure", b"{\"paths\":[]}").unwrap();
        assert_eq!(open("closure", &s), Some(&b"{\"paths\":[]}"[..]));
        assert_eq!(open("build", &s), None);
        let mut bad = s.clone();
        *bad.last_mut().unwrap() = b'x';
        assert_eq!(open("closure", &bad), None);
        assert_eq!(open("closure", b"{\"paths\":[]}"), None);
        let key = state.path().join("nixcell/keys/cache.key");
        let mode = std::fs::metadata(&key).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
