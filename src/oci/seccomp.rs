//! `linux.seccomp` of a config.json (runtime-spec config-linux.md, "Seccomp") compiled
//! into classic BPF (crate seccompiler) by the supervisor; the cell installs it after
//! nixcell's own filters (`sandbox::ociproc`). The kernel runs every installed filter
//! and takes the strictest answer, so the config can only narrow what nixcell allows.
//!
//! A libseccomp filter gives each rule its own action; a seccompiler filter has one
//! action for its matches and one for the rest. The config becomes a stack:
//! - for each action other than the default and `SCMP_ACT_ALLOW`: a filter answering
//!   that action for the rules that have it, ALLOW otherwise;
//! - unless the default is ALLOW: a filter answering ALLOW for every rule and the
//!   default action otherwise.
//!
//! The strictest answer of the stack is the action of a matching rule (the strictest
//! of several), or the default when none matches, as libseccomp gives it. Syscall
//! names this build does not know are skipped (as libseccomp skips names the kernel's
//! architecture lacks); only x86_64 is compiled (nixcell's own filter kills calls of
//! any other architecture).

use crate::sandbox::ociproc::ContainerSeccomp;
use crate::sandbox::seccomp::{Filter, syscall_number};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Seccomp {
    default_action: String,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    flags: Vec<String>,
    listener_path: Option<String>,
    #[serde(default)]
    syscalls: Vec<Syscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Syscall {
    names: Vec<String>,
    action: String,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Arg>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// Architectures libseccomp names (runtime-spec), accepted; only x86_64 is compiled.
const ARCHES: &[&str] = &[
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
];

/// Actions this runtime carries out (features.md `linux.seccomp.actions`).
pub const ACTIONS: &[&str] = &[
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
];
/// Argument operators (features.md `linux.seccomp.operators`).
pub const OPERATORS: &[&str] = &[
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];
/// Filter flags accepted: TSYNC (the command is single-threaded when the filter is
/// installed, so there is nothing to synchronise) and LOG.
pub const FLAGS: &[&str] = &["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"];
/// Flags recognised: the supported ones and SPEC_ALLOW, refused.
pub const KNOWN_FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
];

fn err(msg: impl std::fmt::Display) -> String {
    format!("config.json: linux.seccomp: {msg}")
}

fn action(name: &str, errno: Option<u32>) -> Result<SeccompAction, String> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match name {
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno),
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno),
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err(err(
                "SCMP_ACT_NOTIFY is not supported (no seccomp agent may decide for a cell)",
            ));
        }
        other => return Err(err(format!("unknown action {other:?}"))),
    })
}

fn op(a: &Arg) -> Result<SeccompCondition, String> {
    let (o, value) = match a.op.as_str() {
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, a.value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, a.value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, a.value),
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, a.value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, a.value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, a.value),
        // libseccomp: (arg & value) == valueTwo.
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
        other => return Err(err(format!("unknown operator {other:?}"))),
    };
    SeccompCondition::new(a.index, SeccompCmpArgLen::Qword, o, value)
        .map_err(|e| err(format!("argument {}: {e}", a.index)))
}

/// The rules of one syscall entry: its args in one rule (all must hold), or, when an
/// argument index repeats, one rule per arg (any may hold), as runc builds them.
/// Empty: the call matches whatever its arguments.
fn rules_of(s: &Syscall) -> Result<Vec<SeccompRule>, String> {
    if s.args.is_empty() {
        return Ok(Vec::new());
    }
    let mut idx: Vec<u8> = s.args.iter().map(|a| a.index).collect();
    idx.sort_unstable();
    idx.dedup();
    let conds = s.args.iter().map(op).collect::<Result<Vec<_>, _>>()?;
    let rules = if idx.len() == s.args.len() {
        vec![SeccompRule::new(conds)]
    } else {
        conds
            .into_iter()
            .map(|c| SeccompRule::new(vec![c]))
            .collect()
    };
    rules
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))
}

/// Rules per syscall number; a call named without arguments matches unconditionally.
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add(m: &mut Rules, nr: i64, rules: Vec<SeccompRule>) {
    let slot = m.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (slot.as_mut(), rules.is_empty()) {
        (_, true) => *slot = None,
        (Some(v), false) => v.extend(rules),
        (None, false) => {}
    }
}

fn filter(
    rules: &Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<Filter, String> {
    let rules = rules
        .iter()
        .map(|(n, r)| (*n, r.clone().unwrap_or_default()))
        .collect();
    let f = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| err(e.to_string()))?;
    let prog: BpfProgram = f
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(e.to_string()))?;
    if prog.len() > 4096 {
        return Err(err(format!(
            "{} BPF instructions, above the kernel's 4096",
            prog.len()
        )));
    }
    Ok(prog.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
}

/// The action's strictness as the kernel ranks filter results (seccomp(2)).
fn rank(a: &SeccompAction) -> u8 {
    match a {
        SeccompAction::KillProcess => 0,
        SeccompAction::KillThread => 1,
        SeccompAction::Trap => 2,
        SeccompAction::Errno(_) => 3,
        SeccompAction::Trace(_) => 4,
        SeccompAction::Log => 5,
        SeccompAction::Allow => 6,
    }
}

/// Compiles `linux.seccomp`; `allows_seccomp` says whether nixcell's own policy lets
/// seccomp(2) through (the config's filters are installed after nixcell's).
pub fn compile(v: &serde_json::Value, allows_seccomp: bool) -> Result<ContainerSeccomp, String> {
    let s: Seccomp = serde_json::from_value(v.clone()).map_err(err)?;
    if let Some(p) = &s.listener_path {
        return Err(err(format!(
            "listenerPath {p}: seccomp user notification is not supported"
        )));
    }
    for a in &s.architectures {
        if !ARCHES.contains(&a.as_str()) {
            return Err(err(format!("unknown architecture {a:?}")));
        }
    }
    let mut flags = 0;
    for f in &s.flags {
        flags |= match f.as_str() {
            "SECCOMP_FILTER_FLAG_TSYNC" => 0,
            "SECCOMP_FILTER_FLAG_LOG" => libc::SECCOMP_FILTER_FLAG_LOG as u32,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => {
                return Err(err(
                    "SECCOMP_FILTER_FLAG_SPEC_ALLOW is refused: it turns off the \
                     speculative store bypass mitigation",
                ));
            }
            other => return Err(err(format!("unknown flag {other:?}"))),
        };
    }
    if !allows_seccomp {
        return Err(err(
            "the profile's seccomp allow list does not allow seccomp(2), so no filter can \
             be stacked under it; use a deny-list profile",
        ));
    }
    let default = action(&s.default_action, s.default_errno_ret)?;
    let (mut by_action, mut all): (Vec<(SeccompAction, Rules)>, Rules) = Default::default();
    let (mut named, mut unknown) = (0usize, Vec::new());
    for (i, sc) in s.syscalls.iter().enumerate() {
        let act = action(&sc.action, sc.errno_ret).map_err(|e| format!("{e} (syscalls[{i}])"))?;
        let rules = rules_of(sc).map_err(|e| format!("{e} (syscalls[{i}])"))?;
        for name in &sc.names {
            let Some(nr) = syscall_number(name) else {
                unknown.push(name.clone());
                continue;
            };
            named += 1;
            if name == "seccomp" && rank(&act) < rank(&SeccompAction::Log) && act != default {
                return Err(err(format!(
                    "syscalls[{i}]: {} for seccomp(2) would stop nixcell installing its \
                     own filter after it",
                    sc.action
                )));
            }
            if act == default {
                continue;
            }
            add(&mut all, nr, rules.clone());
            if act != SeccompAction::Allow {
                match by_action.iter_mut().find(|(a, _)| *a == act) {
                    Some((_, m)) => add(m, nr, rules.clone()),
                    None => {
                        let mut m = Rules::new();
                        add(&mut m, nr, rules.clone());
                        by_action.push((act.clone(), m));
                    }
                }
            }
        }
    }
    // The stack's order does not change the answer (the strictest wins); for equal
    // rank the kernel takes the newest filter's data, so the strictest goes last.
    by_action.sort_by_key(|(a, _)| std::cmp::Reverse(rank(a)));
    let mut filters = Vec::new();
    for (act, rules) in &by_action {
        filters.push(filter(rules, SeccompAction::Allow, act.clone())?);
    }
    if default != SeccompAction::Allow {
        filters.push(filter(&all, default.clone(), SeccompAction::Allow)?);
    }
    let mut detail = format!(
        "default {}, {named} syscall names in {} rules",
        s.default_action,
        s.syscalls.len()
    );
    if !unknown.is_empty() {
        unknown.sort();
        unknown.dedup();
        detail.push_str(&format!(
            ", {} names unknown to this build skipped ({})",
            unknown.len(),
            unknown.join(" ")
        ));
    }
    if filters.is_empty() {
        detail.push_str(": allows everything, nothing to install");
    }
    Ok(ContainerSeccomp {
        filters,
        flags,
        detail,
    })
}

/// Without no_new_privs a container's process installs its seccomp filters while it
/// still holds CAP_SYS_ADMIN in the cell's user namespace (seccomp(2) needs one of
/// the two) and sets its capability sets after them: every installed filter (the
/// profile's and config.json's) must then allow the calls that takes, else the
/// container is refused here rather than fail at `start`.
pub fn check_caps_after_filters(sec: &crate::sandbox::layers::SecuritySpec) -> Result<(), String> {
    let Some(c) = &sec.container.caps else {
        return Ok(());
    };
    if c.no_new_privs {
        return Ok(());
    }
    let nr = |n: &str| syscall_number(n).map_or(u32::MAX, |v| v as u32);
    let mut calls: Vec<(String, u32, [u64; 6])> = vec![
        ("capget".into(), nr("capget"), [0; 6]),
        ("capset".into(), nr("capset"), [0; 6]),
        ("execve".into(), nr("execve"), [0; 6]),
        (
            "prctl(PR_GET_NO_NEW_PRIVS)".into(),
            nr("prctl"),
            [libc::PR_GET_NO_NEW_PRIVS as u64, 0, 0, 0, 0, 0],
        ),
        (
            "prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)".into(),
            nr("prctl"),
            [
                libc::PR_CAP_AMBIENT as u64,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
                0,
                0,
                0,
                0,
            ],
        ),
    ];
    for cap in 0..=u64::from(
        caps::runtime::thread_all_supported()
            .iter()
            .map(|c| c.index())
            .max()
            .unwrap_or(40),
    ) {
        for (name, op, sub) in [
            ("PR_CAPBSET_READ", libc::PR_CAPBSET_READ, None),
            ("PR_CAPBSET_DROP", libc::PR_CAPBSET_DROP, None),
            (
                "PR_CAP_AMBIENT_RAISE",
                libc::PR_CAP_AMBIENT,
                Some(libc::PR_CAP_AMBIENT_RAISE),
            ),
            (
                "PR_CAP_AMBIENT_IS_SET",
                libc::PR_CAP_AMBIENT,
                Some(libc::PR_CAP_AMBIENT_IS_SET),
            ),
        ] {
            let args = match sub {
                None => [op as u64, cap, 0, 0, 0, 0],
                Some(s) => [op as u64, s as u64, cap, 0, 0, 0],
            };
            calls.push((format!("prctl({name}, {cap})"), nr("prctl"), args));
        }
    }
    let mut filters: Vec<(&str, &Filter)> = Vec::new();
    if sec.seccomp.mode != crate::sandbox::LayerMode::Off {
        filters.extend(
            sec.seccomp
                .compiled
                .filters
                .iter()
                .map(|f| ("the profile's seccomp policy", f)),
        );
    }
    if let Some(s) = &sec.container.seccomp {
        filters.extend(s.filters.iter().map(|f| ("config.json linux.seccomp", f)));
    }
    for (whose, f) in filters {
        for (call, n, args) in &calls {
            let ret = crate::sandbox::seccomp::answer(f, *n, *args);
            let action = ret.map(|r| r & libc::SECCOMP_RET_ACTION_FULL);
            if !matches!(
                action,
                Some(libc::SECCOMP_RET_ALLOW | libc::SECCOMP_RET_LOG)
            ) {
                return Err(format!(
                    "{whose} does not allow {call} (it answers {}), which a container \
                     without noNewPrivileges makes after its filters are installed, to set \
                     its capabilities: allow it, or set process.noNewPrivileges true",
                    ret.map_or("nothing this runtime can read".into(), |r| format!(
                        "{r:#x}"
                    ))
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(j: &str) -> Result<ContainerSeccomp, String> {
        compile(&serde_json::from_str(j).unwrap(), true)
    }

    #[test]
    fn one_filter_per_action_and_one_for_the_default() {
        let s = c(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["read","write","nosuchcall"],"action":"SCMP_ACT_ALLOW"},
            {"names":["getcwd"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
            {"names":["mkdir"],"action":"SCMP_ACT_KILL_PROCESS",
             "args":[{"index":1,"value":448,"op":"SCMP_CMP_EQ"}]}]}"#)
        .unwrap();
        // ERRNO(38), KILL_PROCESS, and the default ERRNO(EPERM) one.
        assert_eq!(s.filters.len(), 3, "{s:?}");
        assert!(s.detail.contains("nosuchcall"), "{}", s.detail);
        let allow_all = c(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
        assert!(allow_all.filters.is_empty());
    }

    #[test]
    fn what_cannot_be_carried_out_is_refused() {
        for (j, what) in [
            (r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#, "NOTIFY"),
            (r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#, "BOGUS"),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_Z80"]}"#,
                "Z80",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#,
                "SPEC_ALLOW",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["seccomp"],"action":"SCMP_ACT_ERRNO"}]}"#,
                "seccomp(2)",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
                "argument 7",
            ),
        ] {
            let e = c(j).unwrap_err();
            assert!(e.contains(what), "{j}: {e}");
        }
        let strict = compile(
            &serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}),
            false,
        );
        assert!(strict.unwrap_err().contains("allow list"));
    }
}
