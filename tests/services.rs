//! Services inside the cell: started before the command on loopback, ready before it
//! runs, stopped after it, logs kept on the host.

mod common;
use common::*;

fn redis_env() -> std::path::PathBuf {
    build_env(
        "redis-env",
        "pkgs.buildEnv { name = \"redis-env\"; paths = [ pkgs.redis pkgs.busybox ]; }",
    )
}

const REDIS: &str =
    "redis:6379=redis-server --port 6379 --bind 127.0.0.1 --appendonly no --dir /tmp";

#[test]
fn a_script_reaches_redis_on_localhost_and_redis_stops_after() {
    let env = redis_env();
    for mode in MODES {
        let o = nixcell(mode)
            .arg("run")
            .args(["--json", "--env-path", path_str(&env), "--service", REDIS])
            .args([
                "--",
                "sh",
                "-c",
                "redis-cli -p 6379 set greeting hello && redis-cli -p 6379 get greeting",
            ])
            .output()
            .unwrap();
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["stdout"]["text"], "OK\nhello\n");
        let log = v["services"][0]["log"].as_str().unwrap();
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.contains("Ready to accept connections"), "{text}");
        assert!(
            text.contains("ready to exit"),
            "redis was stopped, not killed: {text}"
        );
    }
}

#[test]
fn the_service_is_not_reachable_from_the_host() {
    let env = redis_env();
    let mut o = nixcell(Mode::Rootless)
        .arg("run")
        .args(["--env-path", path_str(&env), "--service", REDIS])
        .args([
            "--",
            "sh",
            "-c",
            "redis-cli -p 6379 ping >/dev/null && echo cell-ok && sleep 1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(o.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "cell-ok\n");
    // While the cell's redis serves the cell, the host's loopback has no such listener.
    assert!(
        std::net::TcpStream::connect("127.0.0.1:6379").is_err(),
        "a connection to the host's 127.0.0.1:6379 succeeded while the cell ran"
    );
    assert!(o.wait().unwrap().success());
}

#[test]
fn a_service_that_dies_fails_the_set_up_and_the_command_never_runs() {
    let env = redis_env();
    for mode in MODES {
        let wd = workdir(mode);
        let o = nixcell(mode)
            .arg("run")
            .args([
                "--json",
                "--env-path",
                path_str(&env),
                "--workdir",
                path_str(wd.path()),
            ])
            .args(["--service", "broken:7000=sh -c exit 3"])
            .args(["--", "touch", "/work/ran"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(125));
        let v = verdict(&o);
        assert_eq!(v["error"]["stage"], "service-ready", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("service 'broken' exited before it was ready")
        );
        assert!(!wd.path().join("ran").exists());
    }
}

#[test]
fn a_missing_service_program_is_in_its_log() {
    let env = redis_env();
    let o = nixcell(Mode::Root)
        .arg("run")
        .args([
            "--json",
            "--env-path",
            path_str(&env),
            "--service",
            "ghost:7001=no-such-daemon",
        ])
        .args(["--", "true"])
        .output()
        .unwrap();
    let v = verdict(&o);
    assert_eq!(o.status.code(), Some(125), "{v}");
    let log = v["services"][0]["log"].as_str().unwrap();
    assert!(
        std::fs::read_to_string(log)
            .unwrap()
            .contains("no-such-daemon: command not found")
    );
}

#[test]
fn bad_service_flags_are_refused() {
    let env = redis_env();
    let o = nixcell(Mode::Root)
        .arg("run")
        .args([
            "--env-path",
            path_str(&env),
            "--service",
            "redis:http=redis-server",
        ])
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stderr).contains("--service redis:http=redis-server: PORT must be"));
}
