//! `nix-build`: realises an expression, shows nix's progress on stderr while it works,
//! and registers the result as a GC root (`-o LINK`) so it survives garbage collection.

use crate::nix::eval::{nix_config, nix_message, restricted};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// nix's own lines go to our stderr as they come.
    Stderr,
    /// Kept silent; only the error is reported.
    Quiet,
}

/// nix's stderr, line by line as it comes, shown with [`Progress::Stderr`]; all of it
/// is returned (for the error message).
fn pump_stderr(child: &mut std::process::Child, progress: Progress) -> Vec<u8> {
    let mut captured = Vec::new();
    if let Some(err) = child.stderr.take() {
        let mut reader = BufReader::new(err);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            if progress == Progress::Stderr {
                let _ = std::io::stderr().write_all(&line);
            }
            captured.extend_from_slice(&line);
            line.clear();
        }
    }
    captured
}

/// Runs a nix command whose answer is its stdout (JSON, a path): its progress is shown
/// as it comes; a failure is nix's message.
pub fn output_shown(
    mut cmd: Command,
    tool: &'static str,
    progress: Progress,
) -> Result<Vec<u8>, BuildError> {
    use std::io::Read;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| BuildError::Spawn(tool, e))?;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut s) = stdout {
            let _ = s.read_to_end(&mut out);
        }
        out
    });
    let captured = pump_stderr(&mut child, progress);
    let out = reader.join().unwrap_or_default();
    let status = child.wait().map_err(|e| BuildError::Spawn(tool, e))?;
    if !status.success() {
        return Err(BuildError::Nix(nix_message(&captured)));
    }
    Ok(out)
}

fn run_streaming(
    mut cmd: Command,
    tool: &'static str,
    link: &Path,
    progress: Progress,
) -> Result<PathBuf, BuildError> {
    cmd.env("NIX_CONFIG", nix_config())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| BuildError::Spawn(tool, e))?;
    let captured = pump_stderr(&mut child, progress);
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
    let mut cmd = Command::new("nix-build");
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
/// `inputDerivation`), its derivation's environment as the builder would see it, and
/// its stdenv's `initialPath` (the tools `nix develop` puts on PATH after the inputs).
const PROBE: &str = r#"d:
  let
    conv = v: if builtins.isList v then builtins.concatStringsSep " " (map conv v)
      else if builtins.isBool v then (if v then "1" else "")
      else if v == null then ""
      else if builtins.isAttrs v && !(v ? outPath) then ""
      else toString v;
    shell = builtins.isAttrs d && d ? inputDerivation && d ? drvAttrs;
  in {
    inherit shell;
    env = if shell then builtins.mapAttrs (n: conv) d.drvAttrs else { };
    initialPath = if shell then map toString ((d.stdenv or null).initialPath or [ ]) else [ ];
  }"#;

/// The `nix` command with flakes on.
pub fn nix_flakes() -> Command {
    let mut cmd = Command::new("nix");
    cmd.env("NIX_CONFIG", nix_config())
        .args(["--extra-experimental-features", "nix-command flakes"]);
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
    let out = output_shown(probe, "nix eval", progress)?;
    let v: serde_json::Value = serde_json::from_slice(&out)
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
    let tools = v["initialPath"].as_array().cloned().unwrap_or_default();
    for p in tools.iter().filter_map(|t| t.as_str()).map(PathBuf::from) {
        if crate::nix::store::is_store_path(&p, &store) && !paths.contains(&p) {
            paths.push(p);
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
    let out = Command::new("nix-store")
        .env("NIX_CONFIG", nix_config())
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
