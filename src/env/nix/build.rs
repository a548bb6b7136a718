//! `nix-build`: realises an expression, shows nix's progress on stderr while it works,
//! and registers the result as a GC root (`-o LINK`) so it survives garbage collection.

use crate::nix::eval::{nix_message, restricted};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot run {0}: {1}")]
    Spawn(&'static str, #[source] std::io::Error),
    #[error("{0}")]
    Nix(String),
    #[error("{tool} reported success but {link} is not a store path")]
    NoResult { tool: &'static str, link: PathBuf },
}

/// How a build shows its progress.
#[derive(Clone)]
pub enum Progress {
    /// nix's own lines go to our stderr as they come (never to stdout, which may be
    /// `--json`).
    Stderr,
    /// Kept silent; only the error is reported.
    Quiet,
    /// Each step nix starts is handed to the callback (for a library caller, e.g. to
    /// send progress notifications); nothing is printed.
    Report(Reporter),
}

/// The callback of [`Progress::Report`].
pub type Reporter = std::sync::Arc<dyn Fn(&Step) + Send + Sync>;

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Progress::Stderr => "Stderr",
            Progress::Quiet => "Quiet",
            Progress::Report(_) => "Report",
        })
    }
}

/// One step of a build, read from nix's progress lines (the same on Nix 2.8 and
/// current Nix, legacy and `nix` commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A derivation is being built: its name (without hash and `.drv`).
    Build(String),
    /// A store path is being fetched from a binary cache (or another store): its name,
    /// and where from.
    Download { name: String, from: String },
}

impl Step {
    /// The step a line of nix's stderr announces: `building '/nix/store/…-NAME.drv'...`
    /// or `copying path '/nix/store/…-NAME' from 'URL'...`; other lines are `None`.
    pub fn parse(line: &str) -> Option<Step> {
        let line = line.trim();
        let quoted = |s: &str| -> Option<(String, String)> {
            let s = s.strip_prefix('\'')?;
            let (q, rest) = s.split_once('\'')?;
            Some((q.to_string(), rest.to_string()))
        };
        let name_of = |path: &str| -> Option<String> {
            crate::nix::store::store_path_name(Path::new(path)).map(str::to_string)
        };
        if let Some(rest) = line.strip_prefix("building ") {
            let (drv, _) = quoted(rest)?;
            let name = name_of(&drv)?;
            return Some(Step::Build(
                name.strip_suffix(".drv").unwrap_or(&name).to_string(),
            ));
        }
        if let Some(rest) = line.strip_prefix("copying path ") {
            let (path, rest) = quoted(rest)?;
            let (from, _) = quoted(rest.trim_start().strip_prefix("from ")?)?;
            return Some(Step::Download {
                name: name_of(&path)?,
                from,
            });
        }
        None
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Build(name) => write!(f, "building {name}"),
            Step::Download { name, from } => write!(f, "downloading {name} from {from}"),
        }
    }
}

fn run_streaming(
    mut cmd: Command,
    tool: &'static str,
    link: &Path,
    progress: Progress,
) -> Result<PathBuf, BuildError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| BuildError::Spawn(tool, e))?;
    let mut captured = Vec::new();
    if let Some(err) = child.stderr.take() {
        let mut reader = BufReader::new(err);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            match &progress {
                Progress::Stderr => {
                    let _ = std::io::stderr().write_all(&line);
                }
                Progress::Report(report) => {
                    if let Some(step) = Step::parse(&String::from_utf8_lossy(&line)) {
                        report(&step);
                    }
                }
                Progress::Quiet => {}
            }
            captured.extend_from_slice(&line);
            line.clear();
        }
    }
    let status = child.wait().map_err(|e| BuildError::Spawn(tool, e))?;
    if !status.success() {
        return Err(BuildError::Nix(nix_message(&captured)));
    }
    // The result is the link's own target, which must be a store path.
    let no_result = || BuildError::NoResult {
        tool,
        link: link.to_path_buf(),
    };
    let target = std::fs::read_link(link).map_err(|_| no_result())?;
    if !crate::nix::store::is_store_path(&target, &crate::nix::closure::store_dir()) {
        return Err(no_result());
    }
    Ok(target)
}

/// Builds attribute `attr` (empty: the whole value) of the file `expr` with string
/// arguments, evaluated restricted to reading `allowed` (see
/// [`crate::nix::eval::restricted`]); `link` becomes an indirect GC root pointing at
/// the result, which is returned.
pub fn build_file(
    expr: &Path,
    attr: &str,
    args: &[(&str, &str)],
    allowed: &[PathBuf],
    link: &Path,
    progress: Progress,
) -> Result<PathBuf, BuildError> {
    let mut cmd = super::command("nix-build");
    cmd.args(restricted(allowed)).arg(expr);
    if !attr.is_empty() {
        cmd.args(["-A", attr]);
    }
    for (k, v) in args {
        cmd.args(["--argstr", k, v]);
    }
    cmd.arg("-o").arg(link);
    run_streaming(cmd, "nix-build", link, progress)
}

/// A flake output as a cell's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlakeEnv {
    /// Store paths whose closures are the cell's software, in PATH order.
    pub paths: Vec<PathBuf>,
    /// Variables the environment sets (a dev shell's).
    pub vars: Vec<(String, String)>,
}

/// Attributes of a shell's derivation that `nix develop` does not hand to the user's
/// shell as its environment, or that only mean something while building.
const BUILD_ONLY: &[&str] = &[
    "args",
    "builder",
    "name",
    "out",
    "outputs",
    "system",
    "stdenv",
    "phases",
    "buildPhase",
    "shellHook",
    "passAsFile",
    "preferLocalBuild",
    "allowSubstitutes",
    "strictDeps",
    "__structuredAttrs",
    "__ignoreNulls",
    "__impure",
    "__contentAddressed",
    "impureEnvVars",
    "outputHash",
    "outputHashAlgo",
    "outputHashMode",
    "doCheck",
    "doInstallCheck",
    "dontAddDisableDepTrack",
    "patches",
    "configureFlags",
    "cmakeFlags",
    "mesonFlags",
    "buildInputs",
    "nativeBuildInputs",
    "propagatedBuildInputs",
    "propagatedNativeBuildInputs",
    "depsBuildBuild",
    "depsBuildBuildPropagated",
    "depsBuildTarget",
    "depsBuildTargetPropagated",
    "depsHostHost",
    "depsHostHostPropagated",
    "depsTargetTarget",
    "depsTargetTargetPropagated",
    "HOME",
    "NIX_BUILD_TOP",
    "NIX_LOG_FD",
    "NIX_REMOTE",
    "NIX_ENFORCE_PURITY",
    "PATH",
    "PWD",
    "OLDPWD",
    "PPID",
    "SHELL",
    "SHELLOPTS",
    "SHLVL",
    "TEMP",
    "TEMPDIR",
    "TERM",
    "TMP",
    "TMPDIR",
    "TZ",
    "UID",
    "BASHOPTS",
];

/// Inputs whose `bin/` are on a dev shell's PATH.
const PATH_INPUTS: &[&str] = &[
    "nativeBuildInputs",
    "buildInputs",
    "propagatedNativeBuildInputs",
    "propagatedBuildInputs",
];

/// What nix says about a flake output: whether it is a dev shell (has an
/// `inputDerivation`), and its derivation's environment as the builder would see it.
const PROBE: &str = r#"d:
  let
    conv = v: if builtins.isList v then builtins.concatStringsSep " " (map conv v)
      else if builtins.isBool v then (if v then "1" else "")
      else if v == null then ""
      else if builtins.isAttrs v && !(v ? outPath) then ""
      else toString v;
    shell = builtins.isAttrs d && d ? inputDerivation && d ? drvAttrs;
  in { inherit shell; env = if shell then builtins.mapAttrs (n: conv) d.drvAttrs else { }; }"#;

/// The `nix` command with flakes on.
pub fn nix_flakes() -> Command {
    let mut cmd = super::command("nix");
    cmd.args(["--extra-experimental-features", "nix-command flakes"]);
    cmd
}

/// The environment of a flake output: a dev shell (`.#devShells.<system>.default`, its
/// `mkShell`) is the closure of its `inputDerivation` (what `nix develop` keeps), its
/// inputs' `bin/` on PATH and its variables set, as `nix develop` does (but for the
/// build-only ones); any other output is built and is the environment. `link` becomes
/// a GC root of what is built.
pub fn flake_env(
    installable: &str,
    impure: bool,
    link: &Path,
    progress: Progress,
) -> Result<FlakeEnv, BuildError> {
    let mut probe = nix_flakes();
    probe.arg("eval").arg("--json");
    if impure {
        probe.arg("--impure");
    }
    probe.arg(installable).args(["--apply", PROBE]);
    let out = probe
        .output()
        .map_err(|e| BuildError::Spawn("nix eval", e))?;
    if !out.status.success() {
        return Err(BuildError::Nix(nix_message(&out.stderr)));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| BuildError::Nix(format!("nix eval printed no JSON: {e}")))?;
    if v["shell"] != serde_json::Value::Bool(true) {
        let env = build_flake(installable, impure, link, progress)?;
        return Ok(FlakeEnv {
            paths: vec![env],
            vars: Vec::new(),
        });
    }
    let closure = build_flake(
        &format!("{installable}.inputDerivation"),
        impure,
        link,
        progress,
    )?;
    let store = crate::nix::closure::store_dir();
    let env = v["env"].as_object().cloned().unwrap_or_default();
    let mut paths: Vec<PathBuf> = Vec::new();
    for k in PATH_INPUTS {
        for p in env
            .get(*k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .split(' ')
        {
            let p = PathBuf::from(p);
            if crate::nix::store::is_store_path(&p, &store) && !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    paths.push(closure);
    let vars = env
        .iter()
        .filter(|(k, _)| !BUILD_ONLY.contains(&k.as_str()) && is_var_name(k))
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    Ok(FlakeEnv { paths, vars })
}

fn is_var_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Builds a flake output (`.#devShells.x86_64-linux.default`, `path:...#pkg`) with the
/// `nix` command; `link` becomes a GC root of the result.
pub fn build_flake(
    installable: &str,
    impure: bool,
    link: &Path,
    progress: Progress,
) -> Result<PathBuf, BuildError> {
    let mut cmd = nix_flakes();
    cmd.arg("build");
    if impure {
        cmd.arg("--impure");
    }
    cmd.arg("--out-link").arg(link).arg(installable);
    run_streaming(cmd, "nix build", link, progress)
}

/// The NAR sizes of store paths (`nix-store --query --size`, stable across versions).
pub fn path_sizes(paths: &[PathBuf]) -> Result<Vec<u64>, BuildError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let out = super::command("nix-store")
        .args(["--query", "--size"])
        .args(paths)
        .output()
        .map_err(|e| BuildError::Spawn("nix-store", e))?;
    if !out.status.success() {
        return Err(BuildError::Nix(nix_message(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_read_from_nix_progress_lines() {
        let h = "0123456789abcdfghijklmnpqrsvwxyz";
        assert_eq!(
            Step::parse(&format!(
                "building '/nix/store/{h}-python3-3.13.5-env.drv'...\n"
            )),
            Some(Step::Build("python3-3.13.5-env".into()))
        );
        let d = Step::parse(&format!(
            "copying path '/nix/store/{h}-numpy-2.2.4' from 'https://cache.nixos.org'..."
        ));
        assert_eq!(
            d,
            Some(Step::Download {
                name: "numpy-2.2.4".into(),
                from: "https://cache.nixos.org".into()
            })
        );
        assert_eq!(
            d.unwrap().to_string(),
            "downloading numpy-2.2.4 from https://cache.nixos.org"
        );
        for other in [
            "these 2 derivations will be built:",
            &format!("  /nix/store/{h}-x.drv"),
            "warning: Git tree '/src' is dirty",
            "building '/etc/passwd'...",
            "building 'unterminated",
            "error: builder failed",
        ] {
            assert_eq!(Step::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_reporter_sees_each_step_and_nothing_is_printed() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let progress = Progress::Report(std::sync::Arc::new(move |st: &Step| {
            s2.lock().unwrap().push(st.to_string())
        }));
        let h = "0123456789abcdfghijklmnpqrsvwxyz";
        let script = format!(
            "echo \"building '/nix/store/{h}-a.drv'...\" >&2; echo \"building '/nix/store/{h}-b.drv'...\" >&2; echo noise >&2; exit 3"
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        let err = run_streaming(cmd, "sh", Path::new("/nonexistent"), progress).unwrap_err();
        assert!(err.to_string().contains("noise"), "{err}");
        assert_eq!(*seen.lock().unwrap(), ["building a", "building b"]);
    }
}
