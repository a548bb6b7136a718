//! `nixcell mcp` driven by a client nobody here wrote: the official Python MCP SDK
//! (tests/mcp_client.py), plus the remediation hints of the CLI's JSON verdict.
//!
//! The SDK lives in a virtualenv under target/ (scripts/test.sh creates it; so does the
//! first test that needs it, with `pip install mcp`). NIXCELL_TEST_PYTHON points at
//! another interpreter that has the `mcp` package.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn python() -> PathBuf {
    mcp_python()
}

/// Runs one scenario of tests/mcp_client.py against `nixcell mcp SERVER_ARGS`; returns
/// its JSON observations.
fn scenario(name: &str, server_args: &[&str]) -> serde_json::Value {
    scenario_as(Mode::Root, name, server_args)
}

/// The same, with the client (and so the server it starts) run as root or as the
/// unprivileged test user.
fn scenario_as(mode: Mode, name: &str, server_args: &[&str]) -> serde_json::Value {
    scenario_in(mode, name, server_args, None)
}

/// The same, with the server's temporary directory (its run directories) in `tmp`.
fn scenario_in(
    mode: Mode,
    name: &str,
    server_args: &[&str],
    tmp: Option<&std::path::Path>,
) -> serde_json::Value {
    let py = python();
    let mut cmd = match mode {
        Mode::Root => Command::new(&py),
        Mode::Rootless => {
            let mut c = as_test_user();
            c.arg("env");
            if let Some(t) = tmp {
                c.arg(format!("TMPDIR={}", t.display()));
            }
            c.arg(&py);
            c
        }
    };
    if let (Mode::Root, Some(t)) = (mode, tmp) {
        cmd.env("TMPDIR", t);
    }
    if mode == Mode::Root {
        cmd.env("XDG_CACHE_HOME", repo().join("target/test-cache/root"))
            .env("NIXCELL_EVAL_PATHS", fixture_eval_paths());
    }
    let out = cmd
        .env(
            "NIX_PATH",
            format!("nixpkgs={}", repo().join("tests/fixtures/pkgs").display()),
        )
        .arg(repo().join("tests/mcp_client.py"))
        .arg(name)
        .arg(bin())
        .args(server_args)
        .env("NIX_CONFIG", "substituters =\n")
        .output()
        .expect("run the Python MCP client");
    assert!(
        out.status.success(),
        "scenario {name} failed:\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let line = text(&out.stdout);
    serde_json::from_str(line.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!("scenario {name}: no JSON ({e}): {line}");
    })
}

/// A copy of the fixture project `analysis` (no pandas; policy allows pandas and
/// openpyxl, not nmap) in a fresh git repository.
fn analysis_project() -> tempfile::TempDir {
    project_with(None)
}

/// The fixture project, with `approval` in its policy replaced when given.
fn project_with(approval: Option<&str>) -> tempfile::TempDir {
    let base = repo().join("target/test-work");
    std::fs::create_dir_all(&base).unwrap();
    let d = tempfile::Builder::new()
        .prefix("mcp-proj")
        .tempdir_in(&base)
        .unwrap();
    let src = repo().join("tests/fixtures/projects/analysis");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
    }
    if let Some(a) = approval {
        let toml = d.path().join("nixcell.toml");
        let t = std::fs::read_to_string(&toml).unwrap();
        assert!(t.contains("approval = \"auto\""), "{t}");
        std::fs::write(
            &toml,
            t.replace("approval = \"auto\"", &format!("approval = \"{a}\"")),
        )
        .unwrap();
    }
    git(d.path(), &["init", "-q"]);
    git(d.path(), &["add", "."]);
    git(d.path(), &["commit", "-q", "-m", "initial"]);
    d
}

fn busybox_args() -> Vec<String> {
    vec!["--env-path".into(), path_str(&busybox()).to_string()]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn sdk_lists_tools_resources_and_prompts() {
    let a = busybox_args();
    let v = scenario("tools", &args(&a));
    assert_eq!(v["tools"].as_array().unwrap().len(), 3);
}

#[test]
fn sdk_reads_the_context_as_tool_resource_and_prompt() {
    let a = busybox_args();
    let v = scenario("context", &args(&a));
    let md = v["markdown"].as_str().unwrap();
    // The context comes from the closure: busybox's applets are on PATH.
    assert!(md.contains("wget") && md.contains("sh"), "{md}");
    assert_eq!(v["json"]["network"], "loopback only");
}

#[test]
fn sdk_runs_commands_scripts_limits_and_hints() {
    let a = busybox_args();
    scenario("run_basics", &args(&a));
}

#[test]
fn sdk_concurrent_runs_are_isolated() {
    let a = busybox_args();
    for mode in MODES {
        let v = scenario_as(mode, "concurrent", &args(&a));
        assert_eq!(v["runs"].as_array().unwrap().len(), 4, "{mode:?}");
    }
}

#[test]
fn sdk_edit_without_a_project_is_a_tool_error() {
    let a = busybox_args();
    scenario("env_paths_edit", &args(&a));
}

#[test]
fn sdk_pandas_scenario_end_to_end_in_a_project() {
    let p = analysis_project();
    let dir = p.path().to_str().unwrap();
    let v = scenario("pandas_scenario", &["--project", dir]);
    // Two edits, two commits, in the project's history.
    let log = git(p.path(), &["log", "--format=%H %s"]);
    for c in v["commits"].as_array().unwrap() {
        assert!(log.contains(c.as_str().unwrap()), "{log}");
    }
    assert!(log.contains("add-python-library openpyxl"), "{log}");
    assert!(log.contains("add-python-library pandas"), "{log}");
    assert_eq!(git_status(p.path()), "");
}

#[test]
fn sdk_project_context_and_refused_edit() {
    let p = analysis_project();
    let dir = p.path().to_str().unwrap();
    let v = scenario("context", &["--project", dir]);
    let md = v["markdown"].as_str().unwrap();
    assert!(md.contains("python3") && md.contains("pandas"), "{md}");
    // Reading a project's context (which may build it) reports its start and end.
    let progress = v["progress"].as_array().unwrap();
    assert!(
        progress[0]
            .as_str()
            .unwrap()
            .starts_with("context: reading"),
        "{v}"
    );
    assert_eq!(
        progress.last().unwrap(),
        "context: environment ready",
        "{v}"
    );
    let head = git(p.path(), &["rev-parse", "HEAD"]);
    let decl = std::fs::read(p.path().join("devenv.nix")).unwrap();
    let v = scenario("refused_edit", &["--project", dir]);
    assert!(v["message"].as_str().unwrap().contains("[policy]"), "{v}");
    // Nothing changed.
    assert_eq!(git(p.path(), &["rev-parse", "HEAD"]), head);
    assert_eq!(std::fs::read(p.path().join("devenv.nix")).unwrap(), decl);
}

#[test]
fn sdk_proposals_are_decided_by_the_clients_user_through_elicitation() {
    let p = project_with(Some("human"));
    let dir = p.path().to_str().unwrap();
    let v = scenario("proposals_with_elicitation", &["--project", dir]);
    let log = git(p.path(), &["log", "--format=%H %s"]);
    assert!(log.contains(v["commit"].as_str().unwrap()), "{log}");
    assert!(log.contains("pandas") && !log.contains("openpyxl"), "{log}");
    let decl = std::fs::read_to_string(p.path().join("devenv.nix")).unwrap();
    assert!(
        decl.contains("ps.pandas") && !decl.contains("openpyxl"),
        "{decl}"
    );

    // A client without elicitation leaves the proposal to the command line.
    let p = project_with(Some("human"));
    let dir = p.path().to_str().unwrap();
    let head = git(p.path(), &["rev-parse", "HEAD"]);
    let v = scenario("proposals_without_elicitation", &["--project", dir]);
    assert_eq!(git(p.path(), &["rev-parse", "HEAD"]), head);
    let id = v["proposal"].as_str().unwrap();
    let o = nixcell(Mode::Root)
        .current_dir(p.path())
        .env(
            "NIX_PATH",
            format!("nixpkgs={}", repo().join("tests/fixtures/pkgs").display()),
        )
        .args(["proposals", "--json"])
        .output()
        .unwrap();
    assert!(text(&o.stdout).contains(id), "{}", text(&o.stdout));
}

#[test]
fn cli_json_verdict_carries_hints() {
    let env = build_env(
        "python-nopandas",
        "pkgs.buildEnv { name = \"nixcell-python-nopandas\"; paths = [ (pkgs.python3.withPackages (ps: [ ps.openpyxl ])) pkgs.busybox ]; }",
    );
    for mode in MODES {
        let mut c = nixcell(mode);
        c.args(["run", "--json", "--env-path"]).arg(&env).args([
            "--",
            "python3",
            "-c",
            "import openpyxl, pandas",
        ]);
        let v = verdict(&c.output().unwrap());
        assert_eq!(v["command_exit_code"], 1, "{v}");
        let hints = v["hints"].as_array().expect("hints");
        assert_eq!(hints.len(), 1, "{mode:?}: {v}");
        assert_eq!(hints[0]["kind"], "missing_python_module");
        assert_eq!(hints[0]["missing"], "pandas");

        let mut c = nixcell(mode);
        c.args(["run", "--json", "--env-path"])
            .arg(&env)
            .args(["--", "jq", "."]);
        let v = verdict(&c.output().unwrap());
        assert_eq!(v["exit_code"], 127, "{v}");
        assert_eq!(v["hints"][0]["kind"], "missing_command", "{v}");
        assert_eq!(v["hints"][0]["missing"], "jq", "{v}");

        let mut c = nixcell(mode);
        c.args(["run", "--json", "--env-path"]).arg(&env).args([
            "--",
            "python3",
            "-c",
            "import urllib.request; urllib.request.urlopen('http://example.com', timeout=5)",
        ]);
        let v = verdict(&c.output().unwrap());
        assert_eq!(v["command_exit_code"], 1, "{v}");
        assert_eq!(v["hints"][0]["kind"], "network_forbidden", "{v}");
        // A plain failure has none.
        let mut c = nixcell(mode);
        c.args(["run", "--json", "--env-path"])
            .arg(&env)
            .args(["--", "python3", "-c", "1/0"]);
        let v = verdict(&c.output().unwrap());
        assert_eq!(v["hints"], serde_json::json!([]), "{v}");
    }
}

/// The host identity a root-started cell gets for a root-owned working directory.
fn root_cell_identity() -> (u32, u32) {
    let first = |file: &str| {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let mut it = l.split(':');
                    (it.next()? == "nixcell").then(|| it.next()?.parse().ok())?
                })
            })
            .unwrap_or(65534)
    };
    (first("/etc/subuid"), first("/etc/subgid"))
}

#[test]
fn sdk_run_directories_are_private_to_the_server_and_removed() {
    use std::os::unix::fs::MetadataExt;
    let a = busybox_args();
    for mode in MODES {
        // The server's temporary directory: a fresh one the mode's user owns.
        let tmp = workdir(mode);
        let (server_uid, cell_ids) = match mode {
            Mode::Root => (0, root_cell_identity()),
            Mode::Rootless => (test_user_ids().0, test_user_ids()),
        };
        let py = python();
        let mut cmd = match mode {
            Mode::Root => {
                let mut c = Command::new(&py);
                c.env("XDG_CACHE_HOME", repo().join("target/test-cache/root"))
                    .env("TMPDIR", tmp.path());
                c
            }
            Mode::Rootless => {
                let mut c = as_test_user();
                c.arg(format!("TMPDIR={}", tmp.path().display())).arg(&py);
                c
            }
        };
        let child = cmd
            .arg(repo().join("tests/mcp_client.py"))
            .arg("closed_run_directory")
            .arg(bin())
            .args(args(&a))
            .env("NIX_CONFIG", "substituters =\n")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // While the cell sleeps: the directory mounted at /work and what holds it.
        let start = std::time::Instant::now();
        let seen = loop {
            let found = std::fs::read_dir(tmp.path()).unwrap().find_map(|e| {
                let p = e.unwrap().path();
                let work = if p.join("work").exists() {
                    p.join("work")
                } else {
                    p
                };
                // The server places the file before the run (the cell's own changes
                // come back only after it, through the copy-on-write layer).
                work.join("placed.txt").exists().then_some(work)
            });
            if let Some(w) = found {
                break w;
            }
            assert!(
                start.elapsed().as_secs() < 120,
                "{mode:?}: no run directory appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let holder = seen.parent().unwrap().to_path_buf();
        let hm = std::fs::metadata(&holder).unwrap();
        let wm = std::fs::metadata(&seen).unwrap();
        let placed = std::fs::metadata(seen.join("placed.txt")).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{mode:?}: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_ne!(
            holder,
            tmp.path(),
            "{mode:?}: /work lies directly in the shared temporary directory"
        );
        assert_eq!(hm.mode() & 0o777, 0o700, "{mode:?}: {}", holder.display());
        assert_eq!(hm.uid(), server_uid, "{mode:?}");
        assert_eq!((wm.uid(), wm.gid()), cell_ids, "{mode:?}: /work's owner");
        assert_eq!(
            (placed.uid(), placed.gid()),
            cell_ids,
            "{mode:?}: a placed file's owner"
        );
        assert_empty_dir(tmp.path(), &format!("{mode:?}"));
    }
}

/// Files in and out of a run are bytes: a real .xlsx (written by openpyxl on the host)
/// placed with `files` and returned by `collect` is byte for byte the same, and a byte
/// \xff sent in is \xff in the cell.
#[test]
fn sdk_binary_files_round_trip_byte_exact() {
    let a = busybox_args();
    for mode in MODES {
        let v = scenario_as(mode, "binary_files", &args(&a));
        assert!(v["xlsx_bytes"].as_u64().unwrap() > 1000, "{v}");
    }
}

/// Each limit stated in the run tool's schema is enforced with an error result that
/// names it: files, bytes, collect count, collected file size and total, bad base64.
#[test]
fn sdk_over_limit_requests_are_error_results() {
    let a = busybox_args();
    let v = scenario("over_limits", &args(&a));
    assert_eq!(v["messages"].as_object().unwrap().len(), 6, "{v}");
}

/// The bound stated in the README: with the default limits, the result of a run stays
/// under 48 KiB however much plain text the command writes (one copy of the verdict).
const RUN_RESULT_BOUND: u64 = 48 << 10;

#[test]
fn sdk_result_of_a_5_mb_output_is_bounded() {
    let a = busybox_args();
    let v = scenario("big_output", &args(&a));
    let chars = v["result_chars"].as_u64().unwrap();
    eprintln!(
        "result of a 5 MB output: {chars} characters, text {}",
        v["text_chars"]
    );
    assert!(chars < RUN_RESULT_BOUND, "{chars} characters");
}

#[test]
fn sdk_runs_report_progress() {
    let a = busybox_args();
    let v = scenario("run_progress", &args(&a));
    assert!(v["progress"].as_array().unwrap().len() >= 5, "{v}");
}

#[test]
fn sdk_run_progress_says_when_services_are_ready() {
    let p = analysis_project();
    let v = scenario(
        "service_progress",
        &["--project", p.path().to_str().unwrap()],
    );
    assert!(v["progress"].as_array().unwrap().len() >= 3, "{v}");
}

/// A cancelled run kills its whole cell (a process ignoring SIGTERM too) within a
/// bound, its cgroups are removed and its run directory is gone.
#[test]
fn sdk_cancelled_run_kills_the_cell_and_leaves_nothing() {
    let a = busybox_args();
    for mode in MODES {
        let tmp = workdir(mode);
        let v = scenario_in(mode, "cancel_run", &args(&a), Some(tmp.path()));
        let secs = v["gone_after_seconds"].as_f64().unwrap();
        eprintln!("{mode:?}: cell gone {secs:.2} s after the cancellation");
        // The profile's grace time (2 s) between SIGTERM and SIGKILL, and some slack.
        assert!(secs < 6.0, "{mode:?}: {secs} s");
        assert_empty_dir(tmp.path(), &format!("{mode:?}"));
    }
}

/// `nixcell mcp --listen`: Streamable HTTP on loopback and on a unix socket, driven by
/// the Python SDK's HTTP client; requests without the bearer token get 401.
#[test]
fn sdk_streamable_http_with_a_bearer_token() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let bb = busybox();
    let dir = tempfile::tempdir().unwrap();
    let token = "0123456789abcdef0123456789abcdef-token";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sock = dir.path().join("mcp.sock");
    for listen in [
        "127.0.0.1:0".to_string(),
        format!("unix:{}", sock.display()),
    ] {
        let mut server = nixcell(Mode::Root)
            .args(["mcp", "--env-path", path_str(&bb), "--listen", &listen])
            .arg("--token-file")
            .arg(&token_file)
            .env("XDG_CACHE_HOME", repo().join("target/test-cache/root"))
            .env("NIX_CONFIG", "substituters =\n")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(server.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        let (url, uds) =
            if let Some(rest) = line.trim().strip_prefix("nixcell: serving MCP on http://") {
                (format!("http://{rest}"), "-".to_string())
            } else {
                assert!(line.contains("serving MCP on unix:"), "{line}");
                let m = std::fs::metadata(&sock).unwrap();
                assert_eq!(
                    m.permissions().mode() & 0o777,
                    0o600,
                    "the socket is private"
                );
                (
                    "http://localhost/mcp".to_string(),
                    path_str(&sock).to_string(),
                )
            };
        let out = Command::new(python())
            .arg(repo().join("tests/mcp_client.py"))
            .args(["over_http", &url, token, &uds])
            .output()
            .unwrap();
        let _ = server.kill();
        let _ = server.wait();
        assert!(
            out.status.success(),
            "{listen}: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    // No token file, a non-loopback address: refused before serving.
    let o = nixcell(Mode::Root)
        .args(["mcp", "--env-path", path_str(&bb), "--listen", "0.0.0.0:0"])
        .arg("--token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("loopback"), "{}", text(&o.stderr));
    let o = nixcell(Mode::Root)
        .args([
            "mcp",
            "--env-path",
            path_str(&bb),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", text(&o.stderr));
}
