//! Closures of store paths: `nix-store --query --requisites`, the stable way across Nix
//! versions, cached per set of roots (a valid store path's closure never changes).

use crate::spec::{EntryKind, StoreEntry};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    #[error("--env-path {0}: no such file or directory")]
    Missing(PathBuf),
    #[error("--env-path {path}: not inside the Nix store {store}")]
    NotInStore { path: PathBuf, store: PathBuf },
    #[error("cannot run nix-store: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nix-store --query --requisites failed: {0}")]
    Query(String),
    #[error("cannot inspect store path {path}: {source}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The store directory: `$NIX_STORE_DIR` or `/nix/store`.
pub fn store_dir() -> PathBuf {
    std::env::var_os("NIX_STORE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/nix/store"))
}

/// The closure of some roots: every store path the cell may see.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Closure {
    pub roots: Vec<PathBuf>,
    pub paths: Vec<StoreEntry>,
    /// sha256 of the sorted path list, one path a line.
    pub hash: String,
}

/// Resolves a user's `--env-path` (maybe a `result` symlink or a path inside a store
/// path) to the top-level store path it names.
pub fn resolve_root(p: &Path, store: &Path) -> Result<PathBuf, ClosureError> {
    let real = std::fs::canonicalize(p).map_err(|_| ClosureError::Missing(p.to_path_buf()))?;
    let store_real = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_path_buf());
    let rest = real
        .strip_prefix(&store_real)
        .map_err(|_| ClosureError::NotInStore {
            path: p.to_path_buf(),
            store: store.to_path_buf(),
        })?;
    match rest.components().next() {
        Some(Component::Normal(name)) => Ok(store.join(name)),
        _ => Err(ClosureError::NotInStore {
            path: p.to_path_buf(),
            store: store.to_path_buf(),
        }),
    }
}

fn hash_lines<'a>(items: impl Iterator<Item = &'a Path>) -> String {
    let mut h = Sha256::new();
    for p in items {
        h.update(p.as_os_str().as_encoded_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("nixcell").join("closures"))
}

/// The closure of `roots`, from the cache when every root still exists.
pub fn closure(roots: &[PathBuf]) -> Result<Closure, ClosureError> {
    let mut sorted_roots = roots.to_vec();
    sorted_roots.sort();
    sorted_roots.dedup();
    let key = hash_lines(sorted_roots.iter().map(|p| p.as_path()));
    let cache_file = cache_dir().map(|d| d.join(format!("{key}.json")));
    if let Some(c) = cache_file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|b| serde_json::from_slice::<Closure>(&b).ok())
        .filter(|c| c.roots == sorted_roots && c.roots.iter().all(|r| r.symlink_metadata().is_ok()))
    {
        return Ok(c);
    }
    let out = Command::new("nix-store")
        .arg("--query")
        .arg("--requisites")
        .args(&sorted_roots)
        .output()
        .map_err(ClosureError::Spawn)?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let line = msg
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        return Err(ClosureError::Query(line.to_string()));
    }
    let mut paths: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect();
    paths.sort();
    paths.dedup();
    let hash = hash_lines(paths.iter().map(|p| p.as_path()));
    let mut entries = Vec::with_capacity(paths.len());
    for path in paths {
        let meta = path
            .symlink_metadata()
            .map_err(|source| ClosureError::Inspect {
                path: path.clone(),
                source,
            })?;
        let kind = if meta.file_type().is_symlink() {
            let to = std::fs::read_link(&path).map_err(|source| ClosureError::Inspect {
                path: path.clone(),
                source,
            })?;
            EntryKind::Symlink(to)
        } else if meta.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File
        };
        entries.push(StoreEntry { path, kind });
    }
    let c = Closure {
        roots: sorted_roots,
        paths: entries,
        hash,
    };
    if let Some(f) = &cache_file {
        write_atomically(f, &serde_json::to_vec(&c).unwrap_or_default());
    }
    Ok(c)
}

/// Best effort: a cache that cannot be written only costs the next run a query.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_store_are_refused() {
        let dir = std::env::temp_dir();
        let err = resolve_root(&dir, Path::new("/nix/store")).unwrap_err();
        assert!(matches!(err, ClosureError::NotInStore { .. }), "{err}");
    }

    #[test]
    fn missing_paths_are_named() {
        let err = resolve_root(Path::new("/nonexistent/xyz"), Path::new("/nix/store")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/xyz"), "{err}");
    }

    #[test]
    fn a_path_inside_a_store_path_resolves_to_its_top() {
        let store = tempfile::tempdir().unwrap();
        let sp = store.path().join("abc-hello");
        std::fs::create_dir_all(sp.join("bin")).unwrap();
        let got = resolve_root(&sp.join("bin"), store.path()).unwrap();
        assert_eq!(got, store.path().join("abc-hello"));
    }
}
