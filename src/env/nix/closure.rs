//! Closures of store paths: `nix-store --query --requisites`, the stable way across Nix
//! versions, cached per set of roots (a valid store path's closure never changes).

use crate::sandbox::{EntryKind, StoreEntry};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Component, Path, PathBuf};

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
        Some(Component::Normal(name)) if super::store::is_store_path(&store.join(name), store) => {
            Ok(store.join(name))
        }
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

/// Version of the cache entries' format and of what they are keyed by.
const CACHE_FORMAT: &str = "closure-v2";

/// The cache entry of `roots` in `store`: a file name keyed by everything the closure
/// depends on (format, store directory, the sorted roots).
fn cache_file(store: &Path, roots: &[PathBuf]) -> Option<PathBuf> {
    let dir = crate::dirs::private_dir(crate::dirs::Base::Cache, "closures").ok()?;
    let mut h = Sha256::new();
    for part in std::iter::once(Path::new(CACHE_FORMAT))
        .chain(std::iter::once(store))
        .chain(roots.iter().map(|p| p.as_path()))
    {
        let b = part.as_os_str().as_encoded_bytes();
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    }
    Some(dir.join(format!("{}.json", hex::encode(h.finalize()))))
}

/// What a store path is on the file system now (`symlink_metadata`, never followed).
fn entry_kind(path: &Path) -> Result<EntryKind, ClosureError> {
    let inspect = |source| ClosureError::Inspect {
        path: path.to_path_buf(),
        source,
    };
    let meta = path.symlink_metadata().map_err(inspect)?;
    Ok(if meta.file_type().is_symlink() {
        EntryKind::Symlink(std::fs::read_link(path).map_err(inspect)?)
    } else if meta.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::File
    })
}

/// A cached closure, if it is sealed by us and says what a closure of `roots` in
/// `store` must: the same roots, each of them among its paths, every path a store
/// path directly in `store`, sorted without duplicates, the hash of that list, and
/// every kind still what the file system shows.
fn load_cached(file: &Path, store: &Path, roots: &[PathBuf]) -> Option<Closure> {
    let sealed = std::fs::read(file).ok()?;
    let bytes = crate::seal::open(CACHE_FORMAT, &sealed)?;
    let c: Closure = serde_json::from_slice(bytes).ok()?;
    let paths: Vec<&Path> = c.paths.iter().map(|e| e.path.as_path()).collect();
    let valid = c.roots == roots
        && paths.iter().all(|p| super::store::is_store_path(p, store))
        && paths.windows(2).all(|w| w[0] < w[1])
        && roots
            .iter()
            .all(|r| paths.binary_search(&r.as_path()).is_ok())
        && hash_lines(paths.iter().copied()) == c.hash
        && c.paths
            .iter()
            .all(|e| entry_kind(&e.path).is_ok_and(|k| k == e.kind));
    valid.then_some(c)
}

/// The closure of `roots` (store paths), from the cache when a valid entry is there.
pub fn closure(roots: &[PathBuf]) -> Result<Closure, ClosureError> {
    let store = store_dir();
    let mut sorted_roots = roots.to_vec();
    sorted_roots.sort();
    sorted_roots.dedup();
    for r in &sorted_roots {
        if !super::store::is_store_path(r, &store) {
            return Err(ClosureError::NotInStore {
                path: r.clone(),
                store: store.clone(),
            });
        }
    }
    let cache_file = cache_file(&store, &sorted_roots);
    if let Some(c) = cache_file
        .as_deref()
        .and_then(|f| load_cached(f, &store, &sorted_roots))
    {
        return Ok(c);
    }
    let out = super::command("nix-store")
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
    if let Some(bad) = paths
        .iter()
        .find(|p| !super::store::is_store_path(p, &store))
    {
        return Err(ClosureError::Query(format!(
            "not a store path of {}: {}",
            store.display(),
            bad.display()
        )));
    }
    let hash = hash_lines(paths.iter().map(|p| p.as_path()));
    let mut entries = Vec::with_capacity(paths.len());
    for path in paths {
        let kind = entry_kind(&path)?;
        entries.push(StoreEntry { path, kind });
    }
    let c = Closure {
        roots: sorted_roots,
        paths: entries,
        hash,
    };
    // Best effort: a cache that cannot be written only costs the next run a query.
    if let Some(f) = &cache_file
        && let (Some(dir), Some(name)) = (f.parent(), f.file_name())
        && let Some(sealed) =
            crate::seal::seal(CACHE_FORMAT, &serde_json::to_vec(&c).unwrap_or_default())
    {
        let _ = crate::dirs::write_atomic(dir, &name.to_string_lossy(), &sealed);
    }
    Ok(c)
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
        let sp = store.path().join("0123456789abcdfghijklmnpqrsvwxyz-hello");
        std::fs::create_dir_all(sp.join("bin")).unwrap();
        let got = resolve_root(&sp.join("bin"), store.path()).unwrap();
        assert_eq!(got, sp);
    }
}
