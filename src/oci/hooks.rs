//! OCI hooks (runtime-spec config.md, "POSIX-platform Hooks"; runtime.md, lifecycle):
//! programs of the engine's, run on the host as the caller of the runtime, each given
//! the container's state JSON on stdin. `prestart` and `createRuntime` run in `create`
//! once the container's namespaces exist and its PID 1 is held (nixcell has built the
//! root by then: it is the closure, nothing for a hook to prepare in it); one failing
//! fails `create`, which ends the container. `poststart` runs in `start` once the
//! command has exec'd, `poststop` in `delete` once the container is gone; one of
//! these failing is a warning. `createContainer` and `startContainer` would run inside
//! the container, whose root is the closure: refused by [`Hooks::check`].

use super::Res;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// File of a container's directory holding its hooks (for `start` and `delete`).
const HOOKS_FILE: &str = "hooks.json";
const MAX_HOOKS: u64 = 4 << 20;
/// Output of a hook kept for the error message.
const KEEP_OUTPUT: usize = 4096;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    #[serde(default)]
    pub prestart: Vec<Hook>,
    #[serde(default)]
    pub create_runtime: Vec<Hook>,
    #[serde(default)]
    pub create_container: Vec<Hook>,
    #[serde(default)]
    pub start_container: Vec<Hook>,
    #[serde(default)]
    pub poststart: Vec<Hook>,
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hook {
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds; the hook is killed after them (and counts as failed).
    pub timeout: Option<i64>,
}

impl Hooks {
    /// Refuses what cannot be run as the spec says.
    pub fn check(&self) -> Res {
        for (name, list) in [
            ("createContainer", &self.create_container),
            ("startContainer", &self.start_container),
        ] {
            if let Some(h) = list.first() {
                return Err(format!(
                    "config.json: hooks.{name} ({}): not supported (such a hook runs inside the \
                     container, whose root is exactly its Nix closure; use prestart/createRuntime \
                     or poststart, which run on the host)",
                    h.path
                ));
            }
        }
        for (name, h) in self.all() {
            if !Path::new(&h.path).is_absolute() {
                return Err(format!(
                    "config.json: hooks.{name}: path {:?} is not absolute",
                    h.path
                ));
            }
            if h.timeout.is_some_and(|t| t <= 0) {
                return Err(format!(
                    "config.json: hooks.{name} ({}): timeout {} is not positive",
                    h.path,
                    h.timeout.unwrap_or_default()
                ));
            }
            if let Some(kv) = h.env.iter().find(|kv| !kv.contains('=')) {
                return Err(format!(
                    "config.json: hooks.{name} ({}): env {kv:?} is not NAME=VALUE",
                    h.path
                ));
            }
        }
        Ok(())
    }

    fn all(&self) -> impl Iterator<Item = (&'static str, &Hook)> {
        [
            ("prestart", &self.prestart),
            ("createRuntime", &self.create_runtime),
            ("createContainer", &self.create_container),
            ("startContainer", &self.start_container),
            ("poststart", &self.poststart),
            ("poststop", &self.poststop),
        ]
        .into_iter()
        .flat_map(|(n, l)| l.iter().map(move |h| (n, h)))
    }

    /// No hook at all.
    pub fn is_empty(&self) -> bool {
        self.all().next().is_none()
    }

    pub fn save(&self, dir: &Path) -> Res {
        let bytes = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        crate::dirs::write_atomic_volatile(dir, HOOKS_FILE, &bytes, 0o600)
            .map_err(|e| format!("{}: {e}", dir.join(HOOKS_FILE).display()))
    }

    /// The hooks `create` saved; none when it saved none.
    pub fn load(dir: &Path) -> Res<Hooks> {
        let p = dir.join(HOOKS_FILE);
        match crate::dirs::read_nofollow_capped(&p, MAX_HOOKS) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Hooks::default()),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }
}

/// Runs `hooks` (named `name` in messages) in order, each with `state` on stdin; the
/// first that fails (exit status not 0, killed, timed out, not startable) is the error.
pub fn run(name: &str, hooks: &[Hook], state: &serde_json::Value, cwd: &Path) -> Res {
    let input = state.to_string();
    for (i, h) in hooks.iter().enumerate() {
        run_one(h, input.as_bytes(), cwd)
            .map_err(|e| format!("hook {name}[{i}] {}: {e}", h.path))?;
    }
    Ok(())
}

/// Runs `hooks` as [`run`] does, each failure a warning (poststart, poststop).
pub fn run_warn(
    g: &super::Globals,
    name: &str,
    hooks: &[Hook],
    state: &serde_json::Value,
    cwd: &Path,
) {
    let input = state.to_string();
    for (i, h) in hooks.iter().enumerate() {
        if let Err(e) = run_one(h, input.as_bytes(), cwd) {
            g.log("warning", &format!("hook {name}[{i}] {}: {e}", h.path));
        }
    }
}

fn run_one(h: &Hook, input: &[u8], cwd: &Path) -> Res {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&h.path);
    if let Some((first, rest)) = h.args.split_first() {
        cmd.arg0(first).args(rest);
    }
    cmd.env_clear()
        .envs(h.env.iter().filter_map(|kv| kv.split_once('=')))
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is no failure.
        let _ = stdin.write_all(input);
    }
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut r) = r {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let room = KEEP_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            kept
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = h
        .timeout
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) => {}
            Err(e) => break Err(format!("wait: {e}")),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            break Err(format!(
                "timed out after {} s (killed)",
                h.timeout.unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A descendant of the hook may keep its pipes open: their output is not waited for
    // past the hook's own end.
    let until = Instant::now() + Duration::from_millis(200);
    let text = |t: std::thread::JoinHandle<Vec<u8>>| {
        while !t.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        if t.is_finished() {
            String::from_utf8_lossy(&t.join().unwrap_or_default())
                .trim()
                .to_string()
        } else {
            String::new()
        }
    };
    let (out, err) = (text(out), text(err));
    let status = status?;
    if status.success() {
        return Ok(());
    }
    let mut msg = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    };
    for (what, t) in [("stderr", err), ("stdout", out)] {
        if !t.is_empty() {
            msg.push_str(&format!("; {what}: {t}"));
        }
    }
    Err(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(j: &str) -> Hooks {
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn in_container_hooks_and_relative_paths_are_refused() {
        let e = hook(r#"{"createContainer":[{"path":"/bin/x"}]}"#)
            .check()
            .unwrap_err();
        assert!(e.contains("createContainer"), "{e}");
        let e = hook(r#"{"prestart":[{"path":"x"}]}"#).check().unwrap_err();
        assert!(e.contains("not absolute"), "{e}");
        let e = hook(r#"{"poststop":[{"path":"/x","timeout":0}]}"#)
            .check()
            .unwrap_err();
        assert!(e.contains("timeout"), "{e}");
        assert!(
            hook(r#"{"prestart":[{"path":"/x","timeout":3}]}"#)
                .check()
                .is_ok()
        );
    }

    #[test]
    fn a_hook_gets_the_state_and_its_failure_names_it() {
        let state = serde_json::json!({"id": "c1", "status": "creating"});
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seen");
        let ok = Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), format!("cat > {}", out.display())],
            env: vec![],
            timeout: Some(5),
        };
        run("prestart", &[ok], &state, dir.path()).unwrap();
        let seen: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(seen, state);
        let bad = Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), "echo no >&2; exit 3".into()],
            env: vec![],
            timeout: None,
        };
        let e = run("createRuntime", &[bad], &state, dir.path()).unwrap_err();
        assert!(
            e.contains("createRuntime[0]") && e.contains("exit status 3") && e.contains("no"),
            "{e}"
        );
        let slow = Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), "exec sleep 30".into()],
            env: vec![],
            timeout: Some(1),
        };
        let t = Instant::now();
        let e = run("prestart", &[slow], &state, dir.path()).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
