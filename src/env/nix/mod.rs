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
    c
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
