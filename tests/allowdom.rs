//! `nixcell edit allow-domain NAME[:PORT]`, as root and rootless: an accepted edit
//! changes only the project's `[network] allow` list, in one commit, and the next run
//! reaches the name; everything the profile's ceiling, a deny entry, the whitelist or
//! the grammar refuses exits 125 with nothing changed; a refused connection's hint
//! names the edit only where the edit would be accepted.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A profile whose ceiling is every name under test.example on 443, but one.
fn ceiling_profile() -> PathBuf {
    profile_file(
        "ceiling.toml",
        "[network]\nallow = [\"*.test.example:443\"]\ndeny = [\"bad.test.example:443\"]\n",
    )
}

fn profile_file(name: &str, text: &str) -> PathBuf {
    let dir = repo().join("target/test-work/allowdom-profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    for d in [&dir, &p] {
        let mut perm = std::fs::metadata(d).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(d, perm).unwrap();
    }
    p
}

const DECL: &str = "{ pkgs, ... }: {\n  packages = [ pkgs.python3 pkgs.busybox ];\n}\n";

/// nixcell.toml of a project narrowed to one name, whose whitelist is wide enough
/// that the ceiling decides.
fn config() -> String {
    format!(
        "# the project's settings\nnixpkgs = \"{}\"\n\n[network]  # narrowed\nallow = [\n  \"one.test.example:443\",   # the API\n]\ndeny = [\"no.test.example:443\"]\n\n[policy]\ndomains = [\"*.test.example:443\", \"evil.org:443\", \"127.0.0.1:443\", \"*.test.example:80\"]\n",
        repo().join("tests/fixtures/pkgs").display()
    )
}

fn project(mode: Mode, toml: &str) -> tempfile::TempDir {
    let p = git_project("allowdom", &[("devenv.nix", DECL), ("nixcell.toml", toml)]);
    if mode == Mode::Rootless {
        chown_to_test_user(p.path());
    }
    p
}

fn cell(mode: Mode, dir: &Path, args: &[&str]) -> Output {
    let mut c = nixcell(mode);
    c.current_dir(dir).args(args);
    c.output().expect("run nixcell")
}

/// `git` as root in a project the test user may own.
fn g(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["-c", "safe.directory=*"];
    all.extend(args);
    git(dir, &all)
}

/// `git status --porcelain`, without the package-set lock a first run writes.
fn status(dir: &Path) -> String {
    g(dir, &["status", "--porcelain"])
        .lines()
        .filter(|l| *l != "?? devenv.lock")
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `nixcell edit allow-domain NAME --profile PROFILE EXTRA...` in the project `dir`.
fn allow_domain(mode: Mode, dir: &Path, name: &str, profile: &str, extra: &[&str]) -> Output {
    let mut args = vec!["edit", "allow-domain", name, "--profile", profile];
    args.extend(extra);
    cell(mode, dir, &args)
}

fn head(dir: &Path) -> String {
    g(dir, &["rev-parse", "HEAD"])
}

fn read(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("nixcell.toml")).unwrap()
}

#[test]
fn an_accepted_edit_changes_only_the_allow_list_in_one_commit_and_the_next_run_reaches_it() {
    let prof = ceiling_profile();
    let prof = path_str(&prof);
    for mode in MODES {
        let p = project(mode, &config());
        let dir = p.path();
        let before = head(dir);
        let o = allow_domain(mode, dir, "Two.Test.Example", prof, &["--json"]);
        let e: serde_json::Value = serde_json::from_str(&ok(&o, "allow-domain")).unwrap();
        assert_eq!(e["status"], "committed", "{mode:?}: {e}");
        assert_eq!(e["name"], "two.test.example:443");
        assert_eq!(
            read(dir),
            config().replace("# the API\n]", "# the API\n  \"two.test.example:443\",\n]"),
            "{mode:?}: only the binding changes"
        );
        // One commit on top, of nixcell.toml alone; nothing left uncommitted.
        let commit = head(dir);
        assert_ne!(commit, before);
        assert_eq!(g(dir, &["rev-parse", "HEAD~1"]), before);
        assert_eq!(
            g(dir, &["diff", "--name-only", "HEAD~1", "HEAD"]),
            "nixcell.toml\n"
        );
        assert!(
            g(dir, &["log", "-1", "--format=%s"]).contains("allow-domain two.test.example:443")
        );
        assert_eq!(status(dir), "", "{mode:?}");
        // The next run's policy has it.
        let v = verdict(&cell(
            mode,
            dir,
            &["run", "--json", "--profile", prof, "--", "true"],
        ));
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(
            v["network"]["allowed"],
            serde_json::json!(["one.test.example:443", "two.test.example:443"]),
            "{mode:?}: {v}"
        );
        // Asking again changes nothing.
        let err = fails(
            &allow_domain(mode, dir, "two.test.example:443", prof, &[]),
            "again",
        );
        assert!(err.contains("reachable already"), "{err}");
        assert_eq!(head(dir), commit);
    }
}

#[test]
fn refused_edits_exit_125_and_change_nothing() {
    let prof = ceiling_profile();
    let prof = path_str(&prof);
    let cases: &[(&str, Option<&str>, &str)] = &[
        (
            "evil.org",
            Some(prof),
            "outside the profile's network allow list",
        ),
        (
            "two.test.example:80",
            Some(prof),
            "outside the profile's network allow list",
        ),
        ("bad.test.example", Some(prof), "profile's deny entry"),
        (
            "no.test.example",
            Some(prof),
            "deny entry no.test.example:443 of nixcell.toml",
        ),
        ("127.0.0.1:443", Some(prof), "literal address"),
        ("*.test.example", Some(prof), "wildcard"),
        ("exa mple.test.example", Some(prof), "not a host name"),
        ("two.test.example:99999", Some(prof), "port"),
        ("two.other:443", Some(prof), "[policy] domains"),
        // The default profile allows no names at all.
        ("two.test.example", None, "it allows nothing"),
    ];
    for mode in MODES {
        let p = project(mode, &config());
        let dir = p.path();
        let before = head(dir);
        for (name, profile, why) in cases {
            let mut args = vec!["edit", "allow-domain", name];
            if let Some(pr) = profile {
                args.extend(["--profile", pr]);
            }
            let err = fails(&cell(mode, dir, &args), name);
            assert!(err.contains(why), "{mode:?} {name}: {err}");
            assert_eq!(read(dir), config(), "{mode:?} {name}: file changed");
            assert_eq!(head(dir), before, "{mode:?} {name}: a commit was made");
            assert_eq!(status(dir), "", "{mode:?} {name}");
        }
    }
}

#[test]
fn a_project_without_network_keeps_the_profiles_list_and_is_not_narrowed() {
    // Without [network] the profile's list applies as is: a first entry would narrow
    // it to that entry, so the edit is refused as reachable already.
    let prof = ceiling_profile();
    let prof = path_str(&prof);
    let toml = format!(
        "nixpkgs = \"{}\"\n[policy]\ndomains = [\"*\"]\n",
        repo().join("tests/fixtures/pkgs").display()
    );
    for mode in MODES {
        let p = project(mode, &toml);
        let dir = p.path();
        let before = head(dir);
        let err = fails(
            &allow_domain(mode, dir, "two.test.example", prof, &[]),
            "no [network]",
        );
        assert!(err.contains("reachable already"), "{mode:?}: {err}");
        assert_eq!(read(dir), toml);
        assert_eq!(head(dir), before);
        let v = verdict(&cell(
            mode,
            dir,
            &["run", "--json", "--profile", prof, "--", "true"],
        ));
        assert_eq!(
            v["network"]["allowed"],
            serde_json::json!(["*.test.example:443"]),
            "{mode:?}: {v}"
        );
    }
}

/// A command that asks nixcell's proxy for `http://HOST:443/`.
fn fetch(host: &str) -> String {
    format!(
        "import urllib.request\ntry:\n    urllib.request.urlopen('http://{host}:443/', timeout=10)\nexcept Exception as e:\n    print('ERR', e)\n"
    )
}

fn hints_of(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["hints"].as_array().cloned().unwrap_or_default()
}

fn edit_hints(v: &serde_json::Value) -> Vec<serde_json::Value> {
    hints_of(v)
        .into_iter()
        .filter(|h| {
            h["message"].as_str().unwrap_or("").contains("allow-domain") || !h["edit"].is_null()
        })
        .collect()
}

#[test]
fn the_hint_names_the_edit_only_where_it_would_be_accepted() {
    let wide = ceiling_profile();
    // A ceiling of the one name the project has: nothing more may be added.
    let narrow = profile_file(
        "narrow.toml",
        "[network]\nallow = [\"one.test.example:443\"]\n",
    );
    for mode in MODES {
        let p = project(mode, &config());
        let dir = p.path();
        let run = |profile: Option<&Path>, host: &str| {
            let script = fetch(host);
            let mut args = vec!["run", "--json"];
            if let Some(pr) = profile {
                args.extend(["--profile", path_str(pr)]);
            }
            args.extend(["--", "python3", "-c", &script]);
            verdict(&cell(mode, dir, &args))
        };
        // Accepted: the hint names the edit.
        let v = run(Some(&wide), "two.test.example");
        let denied = v["network"]["denied"].as_array().unwrap();
        assert!(
            denied
                .iter()
                .any(|d| d["host"] == "two.test.example" && d["port"] == 443),
            "{mode:?}: {v}"
        );
        let h = hints_of(&v)
            .into_iter()
            .find(|h| h["kind"] == "network_denied")
            .unwrap_or_else(|| panic!("{mode:?}: no network_denied hint: {v}"));
        assert!(
            h["message"]
                .as_str()
                .unwrap()
                .contains("`nixcell edit allow-domain two.test.example:443`"),
            "{mode:?}: {h}"
        );
        assert_eq!(h["edit"]["op"], "allow-domain", "{h}");
        assert_eq!(h["edit"]["name"], "two.test.example:443", "{h}");
        // Outside the ceiling, denied, or outside the whitelist: the operator's text.
        for (profile, host) in [
            (Some(narrow.as_path()), "two.test.example"),
            (Some(wide.as_path()), "evil.org"),
            (Some(wide.as_path()), "bad.test.example"),
            (Some(wide.as_path()), "two.other"),
            (None, "two.test.example"),
        ] {
            let v = run(profile, host);
            assert_eq!(
                edit_hints(&v),
                Vec::<serde_json::Value>::new(),
                "{mode:?} {host} {profile:?}: {v}"
            );
        }
    }
}

#[test]
fn the_context_offers_the_edit_only_when_the_ceiling_has_names_to_add() {
    let wide = ceiling_profile();
    let narrow = profile_file(
        "narrow-ctx.toml",
        "[network]\nallow = [\"one.test.example:443\"]\n",
    );
    let mode = Mode::Rootless;
    let p = project(mode, &config());
    let dir = p.path();
    let md = |profile: Option<&Path>| {
        let mut args = vec!["context"];
        if let Some(pr) = profile {
            args.extend(["--profile", path_str(pr)]);
        }
        ok(&cell(mode, dir, &args), "context")
    };
    let offered = md(Some(&wide));
    assert!(
        offered.contains("`nixcell edit allow-domain NAME`"),
        "{offered}"
    );
    assert!(
        offered.contains(
            "Domains: one name (NAME[:PORT], port 443 if left out) under *.test.example:443"
        ),
        "{offered}"
    );
    for profile in [Some(narrow.as_path()), None] {
        let text = md(profile);
        assert!(!text.contains("allow-domain"), "{profile:?}: {text}");
    }
}

#[test]
fn a_proposal_waits_and_its_approval_commits_the_entry() {
    let prof = ceiling_profile();
    let prof = path_str(&prof);
    for mode in MODES {
        let p = project(mode, &config());
        let dir = p.path();
        let before = head(dir);
        let o = allow_domain(
            mode,
            dir,
            "two.test.example",
            prof,
            &["--propose", "--json"],
        );
        let e: serde_json::Value = serde_json::from_str(&ok(&o, "propose")).unwrap();
        assert_eq!(e["status"], "proposed", "{mode:?}: {e}");
        assert!(
            e["diff"]
                .as_str()
                .unwrap()
                .contains("+  \"two.test.example:443\","),
            "{e}"
        );
        assert_eq!(read(dir), config());
        assert_eq!(head(dir), before);
        let id = e["proposal"].as_str().unwrap();
        // Approved under the default profile, the ceiling refuses it.
        fails(
            &cell(mode, dir, &["approve", id]),
            "approve, default profile",
        );
        assert_eq!(read(dir), config());
        ok(
            &cell(mode, dir, &["approve", id, "--profile", prof]),
            "approve",
        );
        assert!(read(dir).contains("\"two.test.example:443\","), "{mode:?}");
        assert_eq!(g(dir, &["rev-parse", "HEAD~1"]), before);
    }
}

/// `edit_environment` calls of an MCP client on stdio (`nixcell mcp --project DIR
/// --profile PROFILE`): the results of the `tools/call`s, in order.
fn mcp_calls(
    mode: Mode,
    dir: &Path,
    profile: &str,
    calls: &[serde_json::Value],
) -> Vec<serde_json::Value> {
    use std::io::{BufRead, BufReader, Write};
    let mut c = nixcell(mode);
    c.args(["mcp", "--project", path_str(dir), "--profile", profile])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = |v: serde_json::Value| writeln!(input, "{v}").unwrap();
    let mut answer = |id: u64| loop {
        let v: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if v["id"] == id {
            break v;
        }
    };
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
    );
    answer(0);
    send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let mut out = Vec::new();
    for (i, args) in calls.iter().enumerate() {
        let id = i as u64 + 1;
        send(
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "edit_environment", "arguments": args}}),
        );
        out.push(answer(id)["result"].clone());
    }
    drop(input);
    let _ = child.wait();
    out
}

#[test]
fn mcp_edit_environment_allows_a_domain_inside_the_servers_profile() {
    let prof = ceiling_profile();
    let prof = path_str(&prof);
    for mode in MODES {
        let p = project(mode, &config());
        let dir = p.path();
        let before = head(dir);
        let r = mcp_calls(
            mode,
            dir,
            prof,
            &[
                serde_json::json!({"operation": "allow_domain", "name": "evil.org"}),
                serde_json::json!({"operation": "allow_domain", "name": "two.test.example"}),
            ],
        );
        assert_eq!(r[0]["isError"], true, "{mode:?}: {}", r[0]);
        assert!(r[0].to_string().contains("outside the profile"), "{}", r[0]);
        assert_eq!(
            r[1]["structuredContent"]["status"], "committed",
            "{mode:?}: {}",
            r[1]
        );
        assert!(read(dir).contains("\"two.test.example:443\","), "{mode:?}");
        assert_eq!(g(dir, &["rev-parse", "HEAD~1"]), before);
    }
}
