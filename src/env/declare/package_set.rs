//! The package set (a nixpkgs tree) a declaration is evaluated against, and the pin
//! that identifies its content in cache keys.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A package set that cannot be used: where, and why.
#[derive(Debug, thiserror::Error)]
#[error("package set {0}: {1}")]
pub struct PackageSetError(pub PathBuf, pub String);

/// The package set a project evaluates against, with what identifies its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSet {
    pub path: PathBuf,
    /// A store path is its own pin; a directory elsewhere is pinned by the names, sizes
    /// and modification times of its files.
    pub pin: String,
}

impl PackageSet {
    pub fn at(path: &Path) -> Result<PackageSet, PackageSetError> {
        let real = std::fs::canonicalize(path)
            .map_err(|e| PackageSetError(path.to_path_buf(), e.to_string()))?;
        if !real.join("default.nix").is_file() {
            return Err(PackageSetError(
                path.to_path_buf(),
                "has no default.nix".into(),
            ));
        }
        let store = std::fs::canonicalize(crate::nix::closure::store_dir()).unwrap_or_default();
        if real.starts_with(&store) {
            let pin = format!("store:{}", real.display());
            return Ok(PackageSet { path: real, pin });
        }
        let mut h = Sha256::new();
        fingerprint_dir(&real, &real, &mut h);
        Ok(PackageSet {
            pin: format!("tree:{}", hex::encode(h.finalize())),
            path: real,
        })
    }

    /// `nixpkgs=PATH` of NIX_PATH (or a `nixpkgs` directory under a plain entry).
    pub fn from_nix_path() -> Option<PathBuf> {
        let np = std::env::var("NIX_PATH").ok()?;
        np.split(':').find_map(|entry| match entry.split_once('=') {
            Some(("nixpkgs", p)) => Some(PathBuf::from(p)),
            Some(_) => None,
            None => {
                let p = Path::new(entry).join("nixpkgs");
                p.exists().then_some(p)
            }
        })
    }
}

fn fingerprint_dir(base: &Path, dir: &Path, h: &mut Sha256) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if name == ".git" || name.as_encoded_bytes().starts_with(b"result") {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let rel = path.strip_prefix(base).unwrap_or(&path);
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(
            format!(
                "\0{}\0{}\0{}\n",
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec()
            )
            .as_bytes(),
        );
        if meta.is_dir() {
            fingerprint_dir(base, &path, h);
        }
    }
}
