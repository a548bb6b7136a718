//! The files of a run's private working directory: the files a request places there, the
//! copy of the project it may start from, and the files it collects after the run.

use super::*;

/// A relative path inside the working directory, or why not.
pub(super) fn safe_relative(p: &str) -> Result<PathBuf, McpError> {
    let bad = |reason: &str| McpError::File {
        path: p.to_string(),
        reason: reason.to_string(),
    };
    let path = Path::new(p);
    if p.is_empty() || p.contains('\0') {
        return Err(bad("empty or contains NUL"));
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(bad(
                    "must be a relative path inside the working directory, without '..'",
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("names no file"));
    }
    Ok(out)
}

/// Writes `files` under `dir`, refusing anything that leaves it.
pub(super) fn place_files(dir: &Path, files: &BTreeMap<String, String>) -> Result<(), McpError> {
    let total: usize = files.values().map(String::len).sum();
    if total > MAX_FILES_BYTES {
        return Err(McpError::Request(format!(
            "files: {total} bytes in total, more than the {MAX_FILES_BYTES} allowed"
        )));
    }
    for (name, content) in files {
        let rel = safe_relative(name)?;
        let full = dir.join(&rel);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(McpError::Workdir)?;
        }
        std::fs::write(&full, content).map_err(|e| McpError::File {
            path: name.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Largest project copied into a run's working directory.
pub const MAX_PROJECT_COPY_BYTES: u64 = 64 << 20;

/// Copies the project's files into a run's working directory: regular files and
/// directories, not `.git`, not nixcell's `.nixcell` state, no symbolic links (they could
/// point anywhere on the host); at most [`MAX_PROJECT_COPY_BYTES`].
pub(super) fn copy_project(src: &Path, dst: &Path, budget: &mut u64) -> Result<(), McpError> {
    let rd = std::fs::read_dir(src).map_err(McpError::Workdir)?;
    for e in rd {
        let e = e.map_err(McpError::Workdir)?;
        let name = e.file_name();
        if name == ".git" || name == ".nixcell" {
            continue;
        }
        let ft = e.file_type().map_err(McpError::Workdir)?;
        let to = dst.join(&name);
        if ft.is_dir() {
            std::fs::create_dir(&to).map_err(McpError::Workdir)?;
            copy_project(&e.path(), &to, budget)?;
        } else if ft.is_file() {
            let len = e.metadata().map_err(McpError::Workdir)?.len();
            *budget = budget.checked_sub(len).ok_or_else(|| {
                McpError::Request(format!(
                    "the project holds more than {MAX_PROJECT_COPY_BYTES} bytes of files; run with copy_project = false and pass the files needed"
                ))
            })?;
            std::fs::copy(e.path(), &to).map_err(McpError::Workdir)?;
        }
    }
    Ok(())
}

/// Reads the files asked for after the run; never follows a link out of `dir`.
pub(super) fn collect_files(dir: &Path, names: &[String]) -> Vec<CollectedFile> {
    names
        .iter()
        .map(|name| {
            let mut f = CollectedFile {
                path: name.clone(),
                bytes: None,
                text: None,
                note: None,
            };
            let rel = match safe_relative(name) {
                Ok(r) => r,
                Err(e) => {
                    f.note = Some(e.to_string());
                    return f;
                }
            };
            let full = dir.join(rel);
            // The cell wrote these files: a symlink could point anywhere on the host.
            let inside = std::fs::canonicalize(&full)
                .ok()
                .zip(std::fs::canonicalize(dir).ok())
                .is_some_and(|(f, d)| f.starts_with(d));
            let meta = std::fs::symlink_metadata(&full);
            match meta {
                Err(_) => f.note = Some("no such file".into()),
                Ok(m) if m.file_type().is_symlink() || !inside => {
                    f.note = Some("a symbolic link: not followed".into())
                }
                Ok(m) if !m.is_file() => f.note = Some("not a regular file".into()),
                Ok(m) => {
                    f.bytes = Some(m.len());
                    if m.len() > MAX_COLLECT_BYTES {
                        f.note = Some(format!("larger than {MAX_COLLECT_BYTES} bytes"));
                    } else {
                        match std::fs::read(&full).map(String::from_utf8) {
                            Ok(Ok(t)) => f.text = Some(t),
                            Ok(Err(_)) => f.note = Some("binary content (not UTF-8)".into()),
                            Err(e) => f.note = Some(e.to_string()),
                        }
                    }
                }
            }
            f
        })
        .collect()
}

pub(super) fn script_name(interpreter: &str) -> &'static str {
    match interpreter.rsplit('/').next().unwrap_or("") {
        i if i.starts_with("python") => "script.py",
        "node" => "script.js",
        "perl" => "script.pl",
        "ruby" => "script.rb",
        _ => "script.sh",
    }
}
