//! devenv-valid both ways: a `devenv.nix` written in devenv's own style (the header of
//! `devenv init`, `withPackages`, native `libraries`, `scripts`, `enterShell`,
//! `services.postgres`) runs as devenv means it; nixcell's edits write devenv's form;
//! the old string form of `languages.python.libraries` still reads; unknown options are
//! refused with the nearest known one. Root and rootless, from the fixture package set.

mod common;

use common::*;
use std::path::Path;
use std::process::Output;

/// A project in a fresh git repository owned by the mode's user: `devenv.nix` is
/// `decl`, `nixcell.toml` names the fixture package set (and `toml_extra`), `files`
/// are written beside them.
fn project(mode: Mode, decl: &str, toml_extra: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = workdir(Mode::Root);
    let dir = d.path();
    std::fs::write(dir.join("devenv.nix"), decl).unwrap();
    std::fs::write(
        dir.join("nixcell.toml"),
        format!(
            "nixpkgs = \"{}\"\n{toml_extra}",
            repo().join("tests/fixtures/pkgs").display()
        ),
    )
    .unwrap();
    for (name, body) in files {
        std::fs::write(dir.join(name), body).unwrap();
    }
    git(dir, &["init", "-q"]);
    git(dir, &["config", "user.name", "agent"]);
    git(dir, &["config", "user.email", "agent@example.org"]);
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "initial"]);
    if mode == Mode::Rootless {
        chown_to_test_user(dir);
    }
    d
}

fn cell(mode: Mode, dir: &Path, args: &[&str]) -> Output {
    let mut c = nixcell(mode);
    c.current_dir(dir).args(args);
    c.output().expect("run nixcell")
}

/// In devenv's own style, as `devenv init` starts it and its docs continue it.
const DEVENV_STYLE: &str = r#"{ pkgs, lib, config, inputs, ... }:

{
  # https://devenv.sh/basics/
  env.GREET = "devenv";

  # https://devenv.sh/packages/
  packages = [ pkgs.busybox inputs.nixpkgs.legacyPackages.${pkgs.stdenv.system}.jq ];

  # https://devenv.sh/languages/
  languages.python = {
    enable = true;
    package = pkgs.python3.withPackages (ps: [ ps.psycopg2 ]);
    libraries = [ pkgs.file ];
  };

  # https://devenv.sh/scripts/
  scripts.hello.exec = ''
    echo hello from $GREET
  '';

  enterShell = ''
    hello
    export ENTERED=yes
  '';

  # https://devenv.sh/services/
  services.postgres = {
    enable = true;
    port = 5433;
    initialDatabases = [ { name = "shop"; } ];
    initialScript = "CREATE ROLE agent WITH LOGIN;";
  };
}
"#;

const SHOP_PY: &str = r#"import ctypes, os, psycopg2
# languages.python.libraries: the native library is on the interpreter's path.
ctypes.CDLL("libmagic.so.1")
assert "-file-" in os.environ["LD_LIBRARY_PATH"], os.environ["LD_LIBRARY_PATH"]
with psycopg2.connect(dbname="shop") as c, c.cursor() as cur:
    cur.execute("CREATE TABLE fruit (id serial PRIMARY KEY, name text NOT NULL)")
    cur.executemany("INSERT INTO fruit (name) VALUES (%s)", [("apple",), ("pear",)])
    cur.execute("SELECT name FROM fruit ORDER BY id")
    print("rows:", ",".join(r[0] for r in cur.fetchall()))
    cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'agent'")
    print("agent role:", cur.fetchone()[0])
# TCP on the loopback port too.
with psycopg2.connect(host="127.0.0.1", port=5433, dbname="shop") as c, c.cursor() as cur:
    cur.execute("SELECT count(*) FROM fruit")
    print("over tcp:", cur.fetchone()[0])
"#;

#[test]
fn a_devenv_style_file_runs_with_postgres_scripts_and_enter_shell() {
    for mode in MODES {
        let p = project(mode, DEVENV_STYLE, "", &[("shop.py", SHOP_PY)]);
        let o = cell(
            mode,
            p.path(),
            &[
                "run",
                "--json",
                "--",
                "sh",
                "-c",
                "echo entered=$ENTERED host=$PGHOST port=$PGPORT; echo shell-ld=${LD_LIBRARY_PATH:-unset}; \
                 jq -n 1 >/dev/null && echo jq-ok; python3 shop.py && psql -X -A -t -d shop -c 'SELECT count(*) FROM fruit'",
            ],
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(
            v["stdout"]["text"],
            "entered=yes host=/tmp/postgres port=5433\nshell-ld=unset\njq-ok\nrows: apple,pear\nagent role: 1\nover tcp: 2\n2\n",
            "{mode:?}: {v}"
        );
        // enterShell ran first, its output on stderr.
        assert_eq!(v["stderr"]["text"], "hello from devenv\n", "{mode:?}: {v}");
        assert_eq!(v["services"][0]["name"], "postgres");
        assert!(v["services"][0]["log_tail"].is_null(), "{v}");
    }
}

#[test]
fn a_postgres_that_fails_its_set_up_shows_its_log_and_nothing_runs() {
    let decl = "{ pkgs, ... }: {\n  packages = [ pkgs.busybox ];\n  services.postgres.enable = true;\n  services.postgres.initialScript = \"CREATE TABLEX broken;\";\n}\n";
    for mode in MODES {
        let p = project(mode, decl, "", &[]);
        let o = cell(
            mode,
            p.path(),
            &["run", "--json", "--", "sh", "-c", "touch ran"],
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 125, "{mode:?}: {v}");
        let tail = v["services"][0]["log_tail"].as_str().unwrap_or_default();
        assert!(tail.contains("syntax error"), "{mode:?}: {v}");
        assert!(tail.len() <= 1024 + 3, "{tail}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("syntax error"),
            "{v}"
        );
        assert!(!p.path().join("ran").exists());
    }
}

#[test]
fn unknown_options_are_refused_with_the_nearest_known_one() {
    for (decl, want) in [
        (
            "{ pkgs, ... }: { services.postgress.enable = true; }",
            "did you mean `services.postgres`?",
        ),
        (
            "{ pkgs, ... }: { languages.python.libaries = [ ]; }",
            "did you mean `languages.python.libraries`?",
        ),
        (
            "{ pkgs, ... }: { services.postgres.initialDatabases = [ { name = \"a\"; shema = ./s.sql; } ]; }",
            "did you mean `services.postgres.initialDatabases.*.schema`?",
        ),
        // Known, but a value nixcell cannot give the meaning devenv gives it.
        (
            "{ pkgs, ... }: { services.postgres = { enable = true; listen_addresses = \"10.1.2.3\"; }; }",
            "option `services.postgres.listen_addresses` in devenv.nix",
        ),
        (
            "{ pkgs, ... }: { languages.python.libraries = [ \"/usr/lib\" ]; }",
            "is not a package",
        ),
    ] {
        for mode in MODES {
            let p = project(mode, decl, "", &[]);
            let err = fails(
                &cell(mode, p.path(), &["run", "--", "true"]),
                "unknown option",
            );
            assert!(
                err.contains(want) && err.contains("devenv.nix"),
                "{mode:?} {decl}: {err}"
            );
        }
    }
}

#[test]
fn the_old_string_form_still_reads_and_edits_write_devenv_form() {
    let decl = "{ pkgs, ... }:\n{\n  packages = [ pkgs.busybox ];\n  languages.python = {\n    enable = true;\n    libraries = [ \"pandas\" ];\n  };\n}\n";
    let toml = "[policy]\npython_libraries = [\"pandas\", \"psycopg2\"]\n";
    let probe = "import pandas, sys; print('pandas', pandas.__version__.split('.')[0]); \
                 import psycopg2; print('psycopg2')";
    for mode in MODES {
        let p = project(mode, decl, toml, &[]);
        let dir = p.path();
        // Read as before: pandas importable, psycopg2 not.
        let o = cell(mode, dir, &["run", "--", "python3", "-c", probe]);
        assert!(
            text(&o.stdout).starts_with("pandas "),
            "{mode:?}: {}",
            text(&o.stderr)
        );
        let err = text(&o.stderr);
        assert!(err.contains("No module named 'psycopg2'"), "{err}");
        assert!(
            err.contains("warning: devenv.nix: languages.python.libraries = [ \"pandas\" ] is nixcell's old form"),
            "{err}"
        );
        // An edit moves the names into devenv's form; the old one is not written.
        let o = cell(
            mode,
            dir,
            &["edit", "add-python-library", "psycopg2", "--json"],
        );
        let e: serde_json::Value = serde_json::from_str(&ok(&o, "edit")).unwrap();
        assert_eq!(e["status"], "committed", "{e}");
        let now = std::fs::read_to_string(dir.join("devenv.nix")).unwrap();
        assert!(
            now.contains("package = pkgs.python3.withPackages (ps: [ ps.pandas ps.psycopg2 ]);"),
            "{now}"
        );
        assert!(!now.contains("libraries"), "{now}");
        let out = ok(
            &cell(mode, dir, &["run", "--", "python3", "-c", probe]),
            "after the edit",
        );
        assert!(
            out.starts_with("pandas ") && out.ends_with("psycopg2\n"),
            "{out}"
        );
    }
}
