//! Calls to the Nix CLI and what we learn from the store.
//!
//! Every nix call starts from [`command`]: in the caller's own Nix configuration.
//! nixcell never sets nix.conf settings (`substituters`, `sandbox`, ...) of its own:
//! how the user's Nix fetches and builds is the user's. The one thing it decides is how
//! to reach the store when uid 0 is not the host's root ([`store_needs_daemon`]).

pub mod build;
pub mod closure;
pub mod eval;
pub mod store;

use std::process::Command;

/// A command running the Nix tool `tool` (`nix`, `nix-build`, `nix-store`, ...) in
/// the caller's environment, through the daemon when [`store_needs_daemon`] (unless
/// the caller chose a store with `NIX_REMOTE`).
pub fn command(tool: &str) -> Command {
    let mut c = Command::new(tool);
    if std::env::var_os("NIX_REMOTE").is_none() && store_needs_daemon() {
        c.env("NIX_REMOTE", "daemon");
    }
    // A `flake:` entry of the caller's NIX_PATH (as NixOS sets it) needs flakes on for
    // every tool of current Nix, which reads its search path at start.
    if std::env::var("NIX_PATH").is_ok_and(|p| names_a_flake(&p)) {
        with_flakes(&mut c);
    }
    c
}

/// A search path with a `flake:` entry (`nixpkgs=flake:nixpkgs`, or a bare one); its
/// entries are `:`-separated, but a flake reference has `:`s of its own.
fn names_a_flake(nix_path: &str) -> bool {
    nix_path.starts_with("flake:") || nix_path.contains("=flake:") || nix_path.contains(":flake:")
}

/// The experimental features that flake commands need.
pub const FLAKE_FEATURES: &str = "nix-command flakes";

/// Adds [`FLAKE_FEATURES`] to the `NIX_CONFIG` of `cmd`: after the caller's own lines,
/// which stay as they are (current Nix applies the caller's flake settings, such as
/// `flake-registry`, only when flakes are on in the same configuration).
pub fn with_flakes(cmd: &mut Command) {
    let mut cfg = std::env::var_os("NIX_CONFIG").unwrap_or_default();
    cfg.push(format!(
        "\nextra-experimental-features = {FLAKE_FEATURES}\n"
    ));
    cmd.env("NIX_CONFIG", cfg);
}

/// uid 0 that is not the host's root: inside a user namespace (a rootless container,
/// a CI runner), nix as "root" would open the store directly and fail to change its
/// ownership; the daemon owns the store there.
pub fn store_needs_daemon() -> bool {
    nix::unistd::geteuid().is_root()
        && std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| !is_identity_map(&m))
}

/// The uid map of the initial user namespace: all 2^32 - 1 ids onto themselves.
fn is_identity_map(map: &str) -> bool {
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| !f.is_empty())
        .collect();
    lines == [vec!["0", "0", "4294967295"]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flake_entries_of_a_search_path_are_seen() {
        for p in [
            "nixpkgs=flake:nixpkgs",
            "flake:nixpkgs",
            "/a:nixpkgs=flake:github:NixOS/nixpkgs/nixos-24.11",
            "/a:flake:x",
        ] {
            assert!(names_a_flake(p), "{p}");
        }
        for p in [
            "nixpkgs=/src/nixpkgs",
            "/nix/var/nix/profiles/per-user/root/channels",
            "/flakes:x=/flake",
        ] {
            assert!(!names_a_flake(p), "{p}");
        }
    }

    #[test]
    fn only_the_initial_namespace_map_is_the_identity() {
        assert!(is_identity_map("         0          0 4294967295\n"));
        for m in [
            "0 1000 1\n",
            "0 0 1\n",
            "0 0 4294967295\n1 1 1\n",
            "0 100000 65536\n",
            "",
        ] {
            assert!(!is_identity_map(m), "{m:?}");
        }
    }
}
