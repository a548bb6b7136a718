//! Turns a user's request (CLI flags, later a declaration) into a validated
//! [`RunSpec`]. Every refusal names what is wrong and where; nothing runs before.

use crate::fsat;
use crate::nix::closure::{self, Closure, ClosureError};
use crate::sandbox::{BindMount, Identity, RunSpec, ServiceSpec, Symlink, WORKDIR_IN_CELL};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no command given (usage: nixcell run [OPTIONS] [--] COMMAND [ARGS...])")]
    NoCommand,
    #[error("no environment: give at least one --env-path (or a declaration)")]
    NoEnvironment,
    #[error(transparent)]
    Closure(#[from] ClosureError),
    #[error("--workdir {0}: {1}")]
    Workdir(PathBuf, String),
    #[error("{flag} {spec}: {reason}")]
    Bind {
        flag: &'static str,
        spec: String,
        reason: String,
    },
    #[error("--setenv {0}: expected NAME=VALUE with NAME made of letters, digits and '_'")]
    SetEnv(String),
    #[error("{0}")]
    Identity(String),
    #[error("--service {0}: {1}")]
    Service(String, String),
    #[error("service logs: {0}")]
    Logs(String),
}

/// What a user asks for, independent of where it came from.
#[derive(Debug, Clone, Default)]
pub struct CellRequest {
    pub env_paths: Vec<PathBuf>,
    pub workdir: Option<PathBuf>,
    /// (flag, "SRC[:DST]") in the order given.
    pub binds: Vec<(&'static str, String)>,
    pub setenv: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub host_uid: Option<u32>,
    pub host_gid: Option<u32>,
    pub hostname: String,
    pub tmp_size_bytes: u64,
    pub argv: Vec<String>,
    /// Services to start in the cell before the command.
    pub services: Vec<ServiceRequest>,
    /// Where service logs go (default: a new directory under the state directory).
    pub log_dir: Option<PathBuf>,
    /// Entries of the workdir (relative paths) the cell may not change: a project's
    /// repository and declaration. Read-only in the cell, refused when applying.
    pub protect: Vec<PathBuf>,
    /// The cell's root is not a closure but an image directory its caller mounts (an
    /// OCI bundle's root.path): `env_paths` may be empty.
    pub image_root: bool,
}

/// A host path opened once: the descriptor everything later goes through, the path
/// the kernel resolved it to, and what it is.
pub struct Opened {
    pub fd: OwnedFd,
    pub real: PathBuf,
    pub st: libc::stat,
}

/// Opens a host path once (O_PATH). Rootless, symbolic links are followed as the
/// caller would follow them (like bubblewrap); started as root, no link anywhere on
/// the path is followed, so a link left by a cell cannot point root's mount elsewhere.
pub fn open_host_path(path: &Path) -> std::io::Result<Opened> {
    let resolve = if crate::sandbox::ns::is_host_root() {
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS
    } else {
        libc::RESOLVE_NO_MAGICLINKS
    };
    let fd = fsat::openat2(libc::AT_FDCWD, path, libc::O_PATH, 0, resolve).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            // For the message only: the first link on the way.
            let abs = std::env::current_dir().unwrap_or_default().join(path);
            let mut link = PathBuf::new();
            for c in abs.components() {
                link.push(c);
                if link
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
                {
                    break;
                }
            }
            std::io::Error::other(format!(
                "{} is a symbolic link; started as root, nixcell follows no links in \
                 host paths (name the real path)",
                link.display()
            ))
        } else {
            e
        }
    })?;
    let st = fsat::fstat(fd.as_fd())?;
    let real = fsat::fd_path(fd.as_fd());
    Ok(Opened { fd, real, st })
}

/// A service as declared: a name, its command line, an optional loopback port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRequest {
    pub name: String,
    pub argv: Vec<String>,
    pub port: Option<u16>,
    /// How long it may take to get ready (default 15 s).
    pub ready_timeout_ms: Option<u64>,
}

impl ServiceRequest {
    /// Parses the CLI form `NAME[:PORT]=COMMAND ARGS...` (arguments split on spaces).
    pub fn parse(s: &str) -> Result<Self, PlanError> {
        let err = |why: &str| PlanError::Service(s.to_string(), why.to_string());
        let (head, cmd) = s
            .split_once('=')
            .ok_or_else(|| err("expected NAME[:PORT]=COMMAND"))?;
        let (name, port) = match head.split_once(':') {
            Some((n, p)) => (
                n,
                Some(
                    p.parse::<u16>()
                        .map_err(|_| err("PORT must be a number from 1 to 65535"))?,
                ),
            ),
            None => (head, None),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err("NAME may only hold letters, digits, '-' and '_'"));
        }
        if port == Some(0) {
            return Err(err("PORT must be a number from 1 to 65535"));
        }
        let argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        if argv.is_empty() {
            return Err(err("empty COMMAND"));
        }
        Ok(ServiceRequest {
            name: name.to_string(),
            argv,
            port,
            ready_timeout_ms: None,
        })
    }
}

fn plan_services(req: &CellRequest) -> Result<Vec<ServiceSpec>, PlanError> {
    if req.services.is_empty() {
        return Ok(Vec::new());
    }
    let mut names = std::collections::HashSet::new();
    for s in &req.services {
        if !names.insert(&s.name) {
            return Err(PlanError::Service(s.name.clone(), "declared twice".into()));
        }
    }
    let dir = match &req.log_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| {
                PlanError::Logs(format!(
                    "{}: cannot create the log directory: {e}",
                    d.display()
                ))
            })?;
            d.clone()
        }
        None => crate::run::logs::new_run_dir().map_err(PlanError::Logs)?,
    };
    Ok(req
        .services
        .iter()
        .map(|s| ServiceSpec {
            name: s.name.clone(),
            argv: s.argv.clone(),
            ready_port: s.port,
            log: dir.join(format!("{}.log", s.name)),
            ready_timeout_ms: s.ready_timeout_ms.unwrap_or(15_000),
        })
        .collect())
}

/// Paths a bind may not land on or under: the cell's own structure (a bind onto a
/// file of the cell's /etc would be written through to the host).
const RESERVED: &[&str] = &["/nix", "/proc", "/dev", "/oldroot", "/etc"];

fn normalized_abs(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn bind_err(flag: &'static str, spec: &str, reason: impl Into<String>) -> PlanError {
    PlanError::Bind {
        flag,
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

/// Parses and checks the binds; `taken` holds destinations already used (the workdir).
/// Each source is opened once; the cell mounts it from that descriptor.
fn plan_binds(
    req: &CellRequest,
    mut taken: Vec<PathBuf>,
) -> Result<Vec<(BindMount, Arc<OwnedFd>)>, PlanError> {
    let mut out = Vec::new();
    for (flag, spec) in &req.binds {
        let (src, dst) = match spec.split_once(':') {
            Some((s, d)) => (s, d),
            None => (spec.as_str(), spec.as_str()),
        };
        if src.is_empty() || dst.is_empty() {
            return Err(bind_err(flag, spec, "expected SRC[:DST]"));
        }
        let opened = open_host_path(Path::new(src))
            .map_err(|e| bind_err(flag, spec, format!("source {src}: {e}")))?;
        let source = opened.real.clone();
        let dest = normalized_abs(dst).ok_or_else(|| {
            bind_err(
                flag,
                spec,
                format!("destination {dst} must be an absolute path without '..'"),
            )
        })?;
        if dest == Path::new("/") || dest == Path::new("/tmp") {
            return Err(bind_err(
                flag,
                spec,
                format!(
                    "destination {} is part of the cell's own root",
                    dest.display()
                ),
            ));
        }
        if let Some(r) = RESERVED.iter().find(|r| dest.starts_with(r)) {
            return Err(bind_err(
                flag,
                spec,
                format!(
                    "destination {} is under {r}, which the cell manages",
                    dest.display()
                ),
            ));
        }
        if let Some(t) = taken
            .iter()
            .find(|t| dest.starts_with(t) || t.starts_with(&dest))
        {
            return Err(bind_err(
                flag,
                spec,
                format!(
                    "destination {} conflicts with the mount at {}",
                    dest.display(),
                    t.display()
                ),
            ));
        }
        taken.push(dest.clone());
        out.push((
            BindMount {
                source,
                dest,
                writable: *flag == "--bind",
                is_dir: fsat::is_dir(&opened.st),
                dev: opened.st.st_dev,
                ino: opened.st.st_ino,
                owner: (opened.st.st_uid, opened.st.st_gid),
            },
            Arc::new(opened.fd),
        ));
    }
    Ok(out)
}

fn check_workdir(dir: &Path) -> Result<Opened, PlanError> {
    let werr = |m: String| PlanError::Workdir(dir.to_path_buf(), m);
    let o = open_host_path(dir).map_err(|e| werr(e.to_string()))?;
    if !fsat::is_dir(&o.st) {
        return Err(werr("not a directory".into()));
    }
    // SAFETY: an empty, NUL-terminated path with AT_EMPTY_PATH checks the descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            std::os::fd::AsRawFd::as_raw_fd(&o.fd),
            c"".as_ptr(),
            libc::R_OK | libc::X_OK,
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        let e = nix::errno::Errno::last();
        return Err(werr(format!("not readable: {}", e.desc())));
    }
    Ok(o)
}

/// The first id of `name`'s range in a subordinate id file (/etc/subuid, /etc/subgid).
fn subid_start(file: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split(':');
        (it.next()? == name).then(|| it.next()?.parse().ok())?
    })
}

/// The host identity of a cell started as root whose workdir is root's (or absent):
/// the first ids of `nixcell` in /etc/subuid and /etc/subgid, else 65534.
pub fn root_fallback_identity() -> (u32, u32) {
    (
        subid_start("/etc/subuid", "nixcell").unwrap_or(65534),
        subid_start("/etc/subgid", "nixcell").unwrap_or(65534),
    )
}

fn plan_identity(req: &CellRequest, workdir: Option<&Opened>) -> Result<Identity, PlanError> {
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    let (host_uid, host_gid) = if crate::sandbox::ns::is_host_root() {
        let owner = workdir
            .filter(|w| w.st.st_uid != 0)
            .map(|w| (w.st.st_uid, w.st.st_gid));
        let (du, dg) = owner.unwrap_or_else(root_fallback_identity);
        if req.host_uid == Some(0) || req.host_gid == Some(0) {
            return Err(PlanError::Identity(
                "--host-uid/--host-gid 0: a cell never runs as host root".into(),
            ));
        }
        (
            req.host_uid.unwrap_or(du),
            req.host_gid
                .unwrap_or(req.host_uid.map(|_| dg).unwrap_or(dg)),
        )
    } else {
        if req.host_uid.is_some_and(|u| u != euid) || req.host_gid.is_some_and(|g| g != egid) {
            return Err(PlanError::Identity(format!(
                "--host-uid/--host-gid: a rootless cell runs as its caller ({euid}:{egid}); only root may choose"
            )));
        }
        (euid, egid)
    };
    Ok(Identity {
        uid: req.uid,
        gid: req.gid,
        host_uid,
        host_gid,
        user_name: "cell".into(),
        home: PathBuf::from("/tmp"),
        ranges: None,
    })
}

fn plan_env(
    req: &CellRequest,
    path_dirs: &[PathBuf],
    id: &Identity,
) -> Result<Vec<(String, String)>, PlanError> {
    let path = path_dirs
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let mut env = vec![
        ("PATH".to_string(), path),
        ("HOME".to_string(), id.home.to_string_lossy().into_owned()),
    ];
    for k in ["LANG", "TERM"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.to_string(), v));
        }
    }
    for kv in &req.setenv {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| PlanError::SetEnv(kv.clone()))?;
        let valid = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(PlanError::SetEnv(kv.clone()));
        }
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    Ok(env)
}

/// Builds the spec of one run, with the closure it uses.
pub fn plan(req: &CellRequest) -> Result<(RunSpec, Closure), PlanError> {
    if req.argv.is_empty() {
        return Err(PlanError::NoCommand);
    }
    if req.env_paths.is_empty() && !req.image_root {
        return Err(PlanError::NoEnvironment);
    }
    let store = closure::store_dir();
    let roots = req
        .env_paths
        .iter()
        .map(|p| closure::resolve_root(p, &store))
        .collect::<Result<Vec<_>, _>>()?;
    let workdir = req.workdir.as_deref().map(check_workdir).transpose()?;
    let mut taken = Vec::new();
    let mut mounts = Vec::new();
    let mut sources = Vec::new();
    let mut work = None;
    if let Some(w) = &workdir {
        taken.push(PathBuf::from(WORKDIR_IN_CELL));
        mounts.push(BindMount {
            source: w.real.clone(),
            dest: PathBuf::from(WORKDIR_IN_CELL),
            writable: true,
            is_dir: true,
            dev: w.st.st_dev,
            ino: w.st.st_ino,
            owner: (w.st.st_uid, w.st.st_gid),
        });
        sources
            .push(Arc::new(w.fd.try_clone().map_err(|e| {
                PlanError::Workdir(w.real.clone(), e.to_string())
            })?));
        // nixcell's own directories are protected like a project's declaration when
        // they lie inside the workdir.
        let mut protect = req.protect.clone();
        for r in crate::dirs::trusted_roots() {
            if let Ok(rel) = r.strip_prefix(&w.real)
                && !rel.as_os_str().is_empty()
                && !protect.iter().any(|p| p == rel)
            {
                protect.push(rel.to_path_buf());
            }
        }
        // The profile's caps replace these (crate::harden::prepare).
        work = Some(crate::sandbox::WorkLayer {
            size_bytes: 1 << 30,
            inodes: 100_000,
            protect,
        });
    }
    for (m, fd) in plan_binds(req, taken)? {
        mounts.push(m);
        sources.push(fd);
    }
    let identity = plan_identity(req, workdir.as_ref())?;
    let closure = if roots.is_empty() {
        closure::Closure {
            roots: Vec::new(),
            paths: Vec::new(),
            hash: String::new(),
        }
    } else {
        closure::closure(&roots)?
    };

    // PATH: the bin/ of each root in the order given.
    let mut path_dirs = Vec::new();
    for r in &roots {
        let bin = r.join("bin");
        if bin.is_dir() && !path_dirs.contains(&bin) {
            path_dirs.push(bin);
        }
    }
    let mut symlinks = Vec::new();
    for (link, tool) in [("/bin/sh", "sh"), ("/usr/bin/env", "env")] {
        if let Some(t) = path_dirs.iter().map(|d| d.join(tool)).find(|t| t.exists()) {
            symlinks.push(Symlink {
                link: PathBuf::from(link),
                target: t,
            });
        }
    }
    let env = plan_env(req, &path_dirs, &identity)?;
    let services = plan_services(req)?;
    let spec = RunSpec {
        argv: req.argv.clone(),
        env,
        path_dirs,
        store_dir: store,
        store_paths: closure.paths.clone(),
        mounts,
        sources,
        work,
        tmp_inodes: 100_000,
        symlinks,
        cwd: PathBuf::from(if workdir.is_some() {
            WORKDIR_IN_CELL
        } else {
            "/tmp"
        }),
        tmp_size_bytes: req.tmp_size_bytes,
        hostname: req.hostname.clone(),
        identity,
        supervisor_pid: std::process::id() as i32,
        services,
        security: Default::default(),
        session: false,
        net: None,
        terminal: false,
        oci: None,
        oci_fs: None,
        joins: Vec::new(),
    };
    Ok((spec, closure))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req_with(binds: &[(&'static str, &str)]) -> CellRequest {
        CellRequest {
            binds: binds.iter().map(|(f, s)| (*f, s.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn binds_onto_the_cells_structure_are_refused() {
        for dst in [
            "/",
            "/nix/store/x",
            "/proc/1",
            "/dev/sda",
            "/tmp",
            "/etc",
            "/etc/passwd",
            "/etc/hosts",
        ] {
            let spec = format!("/:{dst}");
            let err = plan_binds(&req_with(&[("--ro-bind", &spec)]), vec![]).unwrap_err();
            assert!(err.to_string().contains(&spec), "{err}");
        }
    }

    #[test]
    fn relative_or_dotted_destinations_are_refused() {
        for dst in ["data", "/a/../etc"] {
            let spec = format!("/:{dst}");
            assert!(plan_binds(&req_with(&[("--bind", &spec)]), vec![]).is_err());
        }
    }

    #[test]
    fn overlapping_destinations_conflict() {
        let err = plan_binds(
            &req_with(&[("--ro-bind", "/:/data"), ("--ro-bind", "/:/data/x")]),
            vec![],
        )
        .unwrap_err();
        assert!(err.to_string().contains("conflicts"), "{err}");
        let err = plan_binds(
            &req_with(&[("--ro-bind", "/:/work/x")]),
            vec![PathBuf::from("/work")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("/work"), "{err}");
    }

    #[test]
    fn missing_bind_source_is_named() {
        let err = plan_binds(&req_with(&[("--bind", "/no/such/dir:/data")]), vec![]).unwrap_err();
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
    }

    #[test]
    fn service_flags_parse_or_name_the_fault() {
        let s = ServiceRequest::parse("redis:6379=redis-server --port 6379").unwrap();
        assert_eq!(s.name, "redis");
        assert_eq!(s.port, Some(6379));
        assert_eq!(s.argv, ["redis-server", "--port", "6379"]);
        assert_eq!(ServiceRequest::parse("web=sh -c x").unwrap().port, None);
        for bad in [
            "redis",
            "redis:99999=x",
            "redis:0=x",
            "re dis=x",
            ":1=x",
            "a=",
        ] {
            let e = ServiceRequest::parse(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn setenv_needs_a_valid_name() {
        let id = Identity {
            uid: 1000,
            gid: 1000,
            host_uid: 1,
            host_gid: 1,
            user_name: "cell".into(),
            home: "/tmp".into(),
            ranges: None,
        };
        for bad in ["NOEQUALS", "=x", "1A=b", "A-B=c"] {
            let req = CellRequest {
                setenv: vec![bad.into()],
                ..Default::default()
            };
            assert!(plan_env(&req, &[], &id).is_err(), "{bad}");
        }
        let req = CellRequest {
            setenv: vec!["A_1=x=y".into(), "HOME=/work".into()],
            ..Default::default()
        };
        let env = plan_env(&req, &[], &id).unwrap();
        assert!(env.contains(&("A_1".into(), "x=y".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
    }
}
