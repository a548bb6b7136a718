//! The limits of a run, and the one rule that decides them.
//!
//! Three parties name limits, from least to most authoritative:
//! 1. the sandbox profile (`profiles/*.toml`): the ceiling;
//! 2. the project's `nixcell.toml` (`[limits]`): written by whoever can write the project,
//!    which may be a cell (its workdir is the project). It may only tighten the profile:
//!    for each limit the smaller of the two wins;
//! 3. explicit command-line flags: the operator who starts nixcell, who may also choose the
//!    profile, so a flag replaces the value.
//!
//! The MCP server's clients are not the operator: the server checks what they ask for
//! against [`ceiling`] (1 and 2) and refuses more, so an MCP request stays inside them.

use crate::profile::{Filesystem, Limits};
use std::time::Duration;

/// What an MCP `run` gets when its client names no limit, and the most it may ask for
/// (always within [`ceiling`]).
pub mod mcp {
    use crate::profile::Limits;
    use std::time::Duration;

    /// Longest wall-clock limit a `run` may ask for.
    pub const MAX_TIMEOUT_SECS: u64 = 600;
    /// Wall-clock limit of a `run` that asks for none (the project's limit applies if lower).
    pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
    /// Largest capture of each stream a `run` may ask for.
    pub const MAX_OUTPUT_BYTES: u64 = 1 << 20;
    /// Capture of the start of each stream when a `run` asks for none (the end of a
    /// longer stream is kept too, see `supervise::TAIL_BYTES`).
    pub const DEFAULT_OUTPUT_BYTES: u64 = 16 << 10;

    /// The longest timeout a client may ask for under `ceiling`, in seconds.
    pub fn max_timeout_secs(ceiling: &Limits) -> u64 {
        ceiling
            .timeout
            .map_or(MAX_TIMEOUT_SECS, |t| t.as_secs().min(MAX_TIMEOUT_SECS))
    }

    /// The largest capture a client may ask for under `ceiling`.
    pub fn max_output_cap(ceiling: &Limits) -> u64 {
        ceiling.max_output.min(MAX_OUTPUT_BYTES)
    }

    /// The limits of an MCP run whose client names none.
    pub fn defaults(ceiling: &Limits) -> Limits {
        let mut l = ceiling.clone();
        l.timeout = Some(Duration::from_secs(
            DEFAULT_TIMEOUT_SECS.min(max_timeout_secs(ceiling)),
        ));
        l.max_output = DEFAULT_OUTPUT_BYTES.min(max_output_cap(ceiling));
        l
    }
}

/// The size cap of a copy-on-write workdir: its tmpfs pages count against the cell's
/// memory limit, so the cap is at most that limit.
pub fn work_size(fs: &Filesystem, limits: &Limits) -> u64 {
    limits.memory.map_or(fs.work_size, |m| fs.work_size.min(m))
}

/// Limits given explicitly on the command line; each replaces the decided value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub timeout: Option<Duration>,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub max_output: Option<u64>,
}

/// The limits a project's `nixcell.toml` asks for (None: not written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectLimits {
    pub timeout: Option<Duration>,
    pub max_output: Option<u64>,
}

/// The smaller of two limits; `None` is no limit.
fn tighter<T: PartialOrd + Copy>(ceiling: Option<T>, asked: Option<T>) -> Option<T> {
    match (ceiling, asked) {
        (Some(c), Some(a)) => Some(if a < c { a } else { c }),
        (c, a) => c.or(a),
    }
}

/// The profile's limits tightened by the project's; what a run gets without flags.
pub fn ceiling(profile: &Limits, project: &ProjectLimits) -> Limits {
    let mut l = profile.clone();
    l.timeout = tighter(l.timeout, project.timeout);
    l.max_output = project
        .max_output
        .map_or(l.max_output, |m| m.min(l.max_output));
    l
}

/// The limits of a run: [`ceiling`], then each explicit flag replaces its value.
pub fn decide(profile: &Limits, project: &ProjectLimits, flags: &Overrides) -> Limits {
    let mut l = ceiling(profile, project);
    l.timeout = flags.timeout.or(l.timeout);
    l.memory = flags.memory.or(l.memory);
    l.cpus = flags.cpus.or(l.cpus);
    l.pids = flags.pids.or(l.pids);
    l.max_output = flags.max_output.unwrap_or(l.max_output);
    l
}

/// The network policy of a run, by the same rule: the profile's allow list is the
/// ceiling; a project's `[network]` keeps only the entries inside it (and adds its deny
/// entries); the operator's `--allow-host` entries are added as given. A project without
/// `[network]` gets the profile's list as is (so `allow-domain`, which never narrows,
/// refuses to write a first entry there: `edit::network`).
pub fn network(
    profile: &crate::net::NetPolicy,
    project: Option<&crate::net::NetPolicy>,
    flags: &[crate::net::Entry],
) -> crate::net::NetPolicy {
    let mut p = profile.narrowed(project);
    for e in flags {
        if !p.allow.contains(e) {
            p.allow.push(e.clone());
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> Limits {
        crate::profile::load(name).unwrap().limits
    }

    #[test]
    fn a_project_without_max_output_keeps_the_profiles() {
        // strict's 256K stays 256K in a project that does not name max_output.
        let strict = profile("strict");
        assert_eq!(strict.max_output, 256 << 10);
        let l = decide(&strict, &ProjectLimits::default(), &Overrides::default());
        assert_eq!(l.max_output, 256 << 10);
        // A project may lower it, never raise it.
        let lower = ProjectLimits {
            max_output: Some(4096),
            ..Default::default()
        };
        assert_eq!(
            decide(&strict, &lower, &Overrides::default()).max_output,
            4096
        );
        let higher = ProjectLimits {
            max_output: Some(1 << 20),
            ..Default::default()
        };
        assert_eq!(
            decide(&strict, &higher, &Overrides::default()).max_output,
            256 << 10
        );
    }

    #[test]
    fn a_project_timeout_only_tightens_the_profiles() {
        let strict = profile("strict");
        let two_min = Duration::from_secs(120);
        assert_eq!(strict.timeout, Some(two_min));
        let longer = ProjectLimits {
            timeout: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        assert_eq!(
            decide(&strict, &longer, &Overrides::default()).timeout,
            Some(two_min)
        );
        let shorter = ProjectLimits {
            timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        assert_eq!(
            decide(&strict, &shorter, &Overrides::default()).timeout,
            Some(Duration::from_secs(5))
        );
        // A profile without a timeout takes the project's.
        let mut none = strict.clone();
        none.timeout = None;
        assert_eq!(
            decide(&none, &longer, &Overrides::default()).timeout,
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn explicit_flags_replace_the_decided_value() {
        let strict = profile("strict");
        let project = ProjectLimits {
            timeout: Some(Duration::from_secs(5)),
            max_output: Some(4096),
        };
        let flags = Overrides {
            timeout: Some(Duration::from_secs(600)),
            max_output: Some(1 << 20),
            memory: Some(1 << 30),
            ..Default::default()
        };
        let l = decide(&strict, &project, &flags);
        assert_eq!(l.timeout, Some(Duration::from_secs(600)));
        assert_eq!(l.max_output, 1 << 20);
        assert_eq!(l.memory, Some(1 << 30));
        assert_eq!(l.pids, strict.pids);
    }
}
