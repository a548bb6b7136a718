//! The named steps of the cell's set-up. A failed step travels to the supervisor as its
//! kebab-case name (the verdict's `error.stage`), so the names below are part of the
//! verdict's format: a variant may be added, a name never changed.

use serde::{Deserialize, Serialize};

macro_rules! stages {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// One step of the cell's set-up (docs/ARCHITECTURE.md gives their order).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Stage {
            $($(#[doc = $doc])* #[serde(rename = $name)] $variant,)*
        }

        impl Stage {
            /// Every stage, in declaration order.
            pub const ALL: &'static [Stage] = &[$(Stage::$variant),*];

            /// The name the verdict gives the stage.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Stage::$variant => $name,)*
                }
            }
        }
    };
}

stages! {
    /// The init stage checks that its parent is the supervisor that started it.
    CheckParent = "check-parent",
    /// unshare(2) of the cell's namespaces.
    Unshare = "unshare",
    /// setns(2) into the namespaces an OCI container joins (a pod's).
    JoinNamespaces = "join-namespaces",
    /// Mount sources idmapped for a rootless cell's workdir.
    IdmapWorkdir = "idmap-workdir",
    /// Root (in a rootful run) becomes the unprivileged host user.
    LeaveHostRoot = "leave-host-root",
    /// uid_map, gid_map and setgroups of the user namespace.
    IdMaps = "id-maps",
    /// The cell's hostname.
    Hostname = "hostname",
    /// The loopback interface of the network namespace.
    Loopback = "loopback",
    /// Mount propagation made private.
    MountPrivate = "mount-private",
    /// The tmpfs that becomes the cell's root.
    TmpfsRoot = "tmpfs-root",
    /// The closure's store paths bound read-only.
    BindStore = "bind-store",
    /// The user's binds (workdir, --bind, --ro-bind).
    BindUser = "bind-user",
    /// The copy-on-write layer over /work.
    WorkdirOverlay = "workdir-overlay",
    /// The workdir's protected paths (.git and the like) made read-only.
    WorkdirProtect = "workdir-protect",
    /// The cell's /proc.
    Proc = "proc",
    /// The cell's /dev.
    Dev = "dev",
    /// The cell's /tmp.
    Tmp = "tmp",
    /// The cell's /etc.
    Etc = "etc",
    /// The symlinks of the cell's root (/bin/sh and the like).
    Symlinks = "symlinks",
    /// pivot_root(2) and the old root detached.
    DetachOldroot = "detach-oldroot",
    /// The root made read-only.
    SealRoot = "seal-root",
    /// The services' log files opened.
    ServiceLogs = "service-logs",
    /// The fork of PID 1.
    ForkPid1 = "fork-pid1",
    /// The init stage waits for PID 1; a failure here is not reported as set-up.
    WaitPid1 = "wait-pid1",
    /// PID 1's own set-up.
    Pid1 = "pid1",
    /// Signal masks and handlers (PID 1's signalfd, the command's defaults).
    Signals = "signals",
    /// The services forked by PID 1.
    ServiceStart = "service-start",
    /// A service's readiness port.
    ServiceReady = "service-ready",
    /// A service's stdin, stdout and stderr.
    ServiceStdio = "service-stdio",
    /// The fork of the command.
    ForkCommand = "fork-command",
    /// The forwarder of the network proxy: its loopback listener and its fork.
    Forwarder = "forwarder",
    /// The command joins its own cgroup.
    CgroupJoin = "cgroup-join",
    /// setsid(2) of the command.
    Setsid = "setsid",
    /// The command's terminal (a pty of nixcell's) made its controlling terminal.
    ControllingTerminal = "controlling-terminal",
    /// chdir(2) to the command's working directory.
    Chdir = "chdir",
    /// Descriptors above stderr marked close-on-exec.
    CloseFds = "close-fds",
    /// PR_SET_NO_NEW_PRIVS.
    NoNewPrivs = "no-new-privs",
    /// Resource limits (setrlimit(2)).
    Rlimits = "rlimits",
    /// Every capability set emptied.
    DropCaps = "drop-caps",
    /// The Landlock ruleset.
    Landlock = "landlock",
    /// The seccomp filter.
    Seccomp = "seccomp",
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Stage;
    use crate::sandbox::proto::SetupFailure;

    #[test]
    fn every_stage_round_trips_through_its_name() {
        let mut seen = std::collections::HashSet::new();
        for &s in Stage::ALL {
            let name = s.as_str();
            assert!(seen.insert(name), "two stages named {name}");
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name} is not kebab-case"
            );
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Stage>(&json).unwrap(), s);
            assert_eq!(s.to_string(), name);
        }
    }

    #[test]
    fn every_stage_round_trips_through_a_setup_failure() {
        for &s in Stage::ALL {
            let f = SetupFailure {
                stage: s,
                syscall: "mount".into(),
                errno: libc::EPERM,
                detail: "/x".into(),
            };
            let json = serde_json::to_value(&f).unwrap();
            assert_eq!(json["stage"], s.as_str());
            let back: SetupFailure = serde_json::from_value(json).unwrap();
            assert_eq!(back, f);
        }
    }

    #[test]
    fn names_the_verdict_documents_are_kept() {
        for (s, name) in [
            (Stage::Unshare, "unshare"),
            (Stage::WaitPid1, "wait-pid1"),
            (Stage::Pid1, "pid1"),
            (Stage::ForkPid1, "fork-pid1"),
            (Stage::IdMaps, "id-maps"),
            (Stage::DropCaps, "drop-caps"),
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), name);
        }
        assert!(serde_json::from_str::<Stage>("\"no-such-stage\"").is_err());
    }
}
