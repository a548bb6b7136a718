//! seccomp: a BPF filter on the command's system calls, installed last, right before
//! execve(2) (seccomp(2), `SECCOMP_SET_MODE_FILTER`).
//!
//! The supervisor compiles the policy of a profile (crate seccompiler) for every run
//! and sends the BPF to the cell over its control socket; the cell only installs what
//! it is sent. There is no cache on disk: compiling takes well under a millisecond,
//! and a file that later runs trust is one more thing a cell could rewrite. Three small
//! filters are stacked; the kernel applies the most restrictive answer of all of them:
//! 1. architecture guard: any architecture but x86_64, and the x32 ABI (syscall
//!    numbers with `__X32_SYSCALL_BIT`), kill the process; a number above the highest
//!    system call this build knows (crate syscalls) answers ENOSYS, so that a call
//!    added by a newer kernel is never let through a deny list unexamined;
//! 2. clone3(2) answers ENOSYS, so that libc falls back to clone(2), whose flags a
//!    classic BPF filter can inspect (clone3 passes them in memory);
//! 3. the policy: a deny list (default) answering EPERM, or an allow list (strict).
//!    Argument rules (clone flags, socket families, ioctls, personality) narrow a call
//!    a deny list lets through, or one an allow list names; they never admit a call
//!    an allow list leaves out.

use super::Stage;
use super::{LayerMode, StageError, StageResult};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;
use syscalls::x86_64::Sysno;

/// Which kind of filter a policy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompKind {
    DenyList,
    AllowList,
}

/// The seccomp part of a profile, the input of [`compile`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeccompPolicy {
    pub mode: LayerMode,
    pub kind: SeccompKind,
    /// Syscall names denied on top of the fixed deny list (deny-list policy).
    pub deny: Vec<String>,
    /// Syscall names allowed (allow-list policy).
    pub allow: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp policy: unknown system call '{0}'")]
    UnknownSyscall(String),
    #[error("seccomp policy cannot be compiled: {0}")]
    Compile(String),
}

/// Denied in every deny-list policy and never allowed by an allow-list one: namespaces,
/// mounts, root changes, tracing and cross-process memory access, kernel modules and
/// images, reboot, swap, accounting, eBPF, perf, userfaultfd, the keyring, io_uring,
/// file handles (open_by_handle_at escapes bind mounts: the "shocker" exploit), clocks,
/// host names, raw I/O ports and the kernel log; the mount API's readers
/// (listmount/statmount show the host's mounts), LSM attributes, secret memory and
/// another process's memory advice.
pub const FIXED_DENY: &[&str] = &[
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "open_tree_attr",
    "listmount",
    "statmount",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "vhangup",
    "syslog",
    "uselib",
    "lsm_get_self_attr",
    "lsm_set_self_attr",
    "lsm_list_modules",
    "memfd_secret",
];

/// Namespace flags of clone(2) (`CLONE_NEW*`).
const CLONE_NEW_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
/// Socket families a cell may create.
const SOCKET_FAMILIES: &[u64] = &[
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
];
/// Terminal ioctls that inject input or talk to the console (CVE-2017-5226 for
/// TIOCSTI), or change the line discipline of a terminal the cell shares with its
/// caller (and load rarely used kernel code: CVE-2017-2636 in n_hdlc); compared on
/// the low 32 bits only, as the kernel truncates the request (CVE-2019-10063: junk in
/// the upper half bypassed 64-bit comparisons).
const DENIED_IOCTLS: &[u64] = &[libc::TIOCSTI, libc::TIOCLINUX, libc::TIOCSETD];
/// personality(2) values that change nothing dangerous: PER_LINUX, the query,
/// UNAME26, PER_LINUX32 (only the uname string) and both combined — the same set as
/// Docker's default profile. READ_IMPLIES_EXEC or ADDR_NO_RANDOMIZE are refused.
const PERSONALITIES: &[u64] = &[0, 0x0008, 0x0020000, 0x0020008, 0xffff_ffff];

/// The x86_64 number of a system call by name (the table of crate syscalls).
pub fn syscall_number(name: &str) -> Option<i64> {
    Sysno::from_str(name).ok().map(|s| i64::from(s.id()))
}

/// The highest x86_64 system call number this build knows; anything above answers
/// ENOSYS.
pub fn highest_known() -> u32 {
    Sysno::last().id() as u32
}

fn nr(name: &str) -> Result<i64, SeccompError> {
    syscall_number(name).ok_or_else(|| SeccompError::UnknownSyscall(name.to_string()))
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // Argument indexes here are all < 6, the only thing new() checks.
    SeccompCondition::new(arg, len, op, value).expect("valid seccomp condition")
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conds).map_err(|e| SeccompError::Compile(e.to_string()))
}

fn compile_filter(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<Filter, SeccompError> {
    let f = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    let prog: BpfProgram = f
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
    Ok(prog.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
}

/// One classic BPF program: (code, jt, jf, k) per instruction.
pub type Filter = Vec<(u16, u8, u8, u32)>;

/// The compiled filters of a policy, in installation order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledSeccomp {
    /// sha256 of the policy the filters were compiled from.
    pub policy_hash: String,
    pub kind: String,
    pub filters: Vec<Filter>,
}

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// The kernel's limit on one classic BPF program (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

/// Filter 1: kill anything but native x86_64 system calls; numbers above the highest
/// known one answer ENOSYS.
fn arch_guard() -> Filter {
    arch_guard_upto(highest_known())
}

fn arch_guard_upto(max: u32) -> Filter {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    // struct seccomp_data { int nr; __u32 arch; ... }: nr at 0, arch at 4.
    vec![
        (LD_W_ABS, 0, 0, 4),
        (JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        (LD_W_ABS, 0, 0, 0),
        (JGE_K, 0, 1, X32_SYSCALL_BIT),
        (RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        (JGT_K, 0, 1, max),
        (RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        (RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Rules shared by both policies, keyed by system call: clone(2) with namespace flags,
/// socket(2) families, terminal-injection ioctls, personality(2) changes. With
/// `deny`, the rules match the forbidden calls; otherwise they match the allowed ones.
fn argument_rules(deny: bool) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    use SeccompCmpArgLen::Dword;
    use SeccompCmpOp::{Eq, MaskedEq, Ne};
    let mut m = BTreeMap::new();
    let all_new: u64 = CLONE_NEW_FLAGS.iter().fold(0, |a, f| a | f);
    // Families and personalities compare on 32 bits: the kernel takes an int.
    if deny {
        m.insert(
            nr("clone")?,
            CLONE_NEW_FLAGS
                .iter()
                .map(|f| rule(vec![cond(0, Dword, MaskedEq(*f), *f)]))
                .collect::<Result<_, _>>()?,
        );
        m.insert(
            nr("socket")?,
            vec![rule(
                SOCKET_FAMILIES
                    .iter()
                    .map(|f| cond(0, Dword, Ne, *f))
                    .collect(),
            )?],
        );
        m.insert(
            nr("ioctl")?,
            DENIED_IOCTLS
                .iter()
                .map(|r| rule(vec![cond(1, Dword, Eq, *r)]))
                .collect::<Result<_, _>>()?,
        );
        m.insert(
            nr("personality")?,
            vec![rule(
                PERSONALITIES
                    .iter()
                    .map(|p| cond(0, Dword, Ne, *p))
                    .collect(),
            )?],
        );
    } else {
        m.insert(
            nr("clone")?,
            vec![rule(vec![cond(0, Dword, MaskedEq(all_new), 0)])?],
        );
        m.insert(
            nr("socket")?,
            SOCKET_FAMILIES
                .iter()
                .map(|f| rule(vec![cond(0, Dword, Eq, *f)]))
                .collect::<Result<_, _>>()?,
        );
        m.insert(
            nr("ioctl")?,
            vec![rule(
                DENIED_IOCTLS
                    .iter()
                    .map(|r| cond(1, Dword, Ne, *r))
                    .collect(),
            )?],
        );
        m.insert(
            nr("personality")?,
            PERSONALITIES
                .iter()
                .map(|p| rule(vec![cond(0, Dword, Eq, *p)]))
                .collect::<Result<_, _>>()?,
        );
    }
    Ok(m)
}

/// An extra filter for cells with a live read-write mount of the host (a `bind`
/// workdir, `--bind`): no file or directory gets a setuid or setgid bit (EPERM), so
/// none appears on the host. openat2(2), whose mode the filter cannot read, answers
/// ENOSYS (callers fall back to openat).
pub fn no_setid_bits() -> Result<Vec<Filter>, SeccompError> {
    use SeccompCmpArgLen::Dword;
    use SeccompCmpOp::MaskedEq;
    let mut rules = BTreeMap::new();
    for (name, arg) in [
        ("chmod", 1),
        ("fchmod", 1),
        ("fchmodat", 2),
        ("fchmodat2", 2),
        ("creat", 1),
        ("open", 2),
        ("openat", 3),
        ("mknod", 1),
        ("mknodat", 2),
    ] {
        let Ok(n) = nr(name) else { continue };
        let bits = [libc::S_ISUID as u64, libc::S_ISGID as u64];
        rules.insert(
            n,
            bits.iter()
                .map(|b| rule(vec![cond(arg, Dword, MaskedEq(*b), *b)]))
                .collect::<Result<_, _>>()?,
        );
    }
    let eperm = compile_filter(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
    )?;
    let mut o2 = BTreeMap::new();
    o2.insert(nr("openat2")?, Vec::new());
    let enosys = compile_filter(
        o2,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    Ok(vec![eperm, enosys])
}

/// Compiles a policy into the filters the cell installs.
pub fn compile(policy: &SeccompPolicy) -> Result<CompiledSeccomp, SeccompError> {
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let main = match policy.kind {
        SeccompKind::DenyList => {
            let mut rules = argument_rules(true)?;
            for name in FIXED_DENY
                .iter()
                .copied()
                .chain(policy.deny.iter().map(String::as_str))
            {
                // An empty chain matches the call whatever its arguments.
                rules.insert(nr(name)?, Vec::new());
            }
            compile_filter(rules, SeccompAction::Allow, eperm)?
        }
        SeccompKind::AllowList => {
            // Argument rules only narrow calls the list names: one it leaves out stays
            // out, whatever its arguments.
            let mut narrowed = argument_rules(false)?;
            let mut rules = BTreeMap::new();
            for name in &policy.allow {
                if FIXED_DENY.contains(&name.as_str()) {
                    return Err(SeccompError::Compile(format!(
                        "'{name}' is on the fixed deny list and cannot be allowed"
                    )));
                }
                let n = nr(name)?;
                let r = narrowed.remove(&n).unwrap_or_default();
                rules.entry(n).or_insert(r);
            }
            // clone3 gets its ENOSYS from filter 2 instead of EPERM here.
            rules.insert(nr("clone3")?, Vec::new());
            compile_filter(rules, eperm, SeccompAction::Allow)?
        }
    };
    let mut c3 = BTreeMap::new();
    c3.insert(nr("clone3")?, Vec::new());
    let enosys = compile_filter(
        c3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    Ok(CompiledSeccomp {
        policy_hash: policy_hash(policy),
        kind: match policy.kind {
            SeccompKind::DenyList => "deny-list".into(),
            SeccompKind::AllowList => "allow-list".into(),
        },
        // The policy goes last: an allow list does not allow seccomp(2) itself.
        filters: vec![arch_guard(), enosys, main],
    })
}

/// sha256 of what determines the BPF: the policy, the fixed list, the syscall table
/// and this format; shown in the verdict to tell policies apart.
pub fn policy_hash(policy: &SeccompPolicy) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"nixcell-seccomp-v3\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(serde_json::to_vec(policy).unwrap_or_default());
    h.update(FIXED_DENY.join(",").as_bytes());
    h.update(highest_known().to_le_bytes());
    hex::encode(h.finalize())
}

/// Checks that `c` is something worth installing: at least the three filters
/// [`compile`] makes, each non-empty, within the kernel's size limit and ending in a
/// return. The cell refuses anything else rather than install less than asked.
pub fn validate(c: &CompiledSeccomp) -> Result<(), String> {
    if c.filters.len() < 3 {
        return Err(format!(
            "{} filters received, at least 3 expected",
            c.filters.len()
        ));
    }
    for (i, f) in c.filters.iter().enumerate() {
        if f.is_empty() || f.len() > MAX_INSNS {
            return Err(format!("filter {i} has {} instructions", f.len()));
        }
        if f.last().map(|i| i.0 & 0x07) != Some(RET_K & 0x07) {
            return Err(format!("filter {i} does not end in a return"));
        }
    }
    Ok(())
}

/// Installs one classic BPF program with seccomp(2) (SECCOMP_SET_MODE_FILTER) and
/// `flags`; sets no no_new_privs of its own (unlike `seccompiler::apply_filter`):
/// the caller has set it, or holds CAP_SYS_ADMIN in its user namespace (an OCI
/// container without noNewPrivileges).
pub fn install_raw(f: &Filter, flags: u32) -> Result<(), nix::errno::Errno> {
    let prog: Vec<libc::sock_filter> = f
        .iter()
        .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
        .collect();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads the program `fprog` points to,
    // which lives until the call returns.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Installs the filters on the calling thread (needs no_new_privs, set before, or
/// CAP_SYS_ADMIN in its user namespace) and returns how many were installed: all of
/// them, or an error.
pub fn install(c: &CompiledSeccomp) -> StageResult<usize> {
    validate(c).map_err(|why| {
        StageError::new(
            Stage::Seccomp,
            "seccomp(SECCOMP_SET_MODE_FILTER)",
            format!("{} filter refused: {why}", c.kind),
            nix::errno::Errno::EINVAL,
        )
    })?;
    let mut installed = 0;
    for f in &c.filters {
        install_raw(f, 0).map_err(|e| {
            StageError::new(
                Stage::Seccomp,
                "seccomp(SECCOMP_SET_MODE_FILTER)",
                format!("{} filter", c.kind),
                e,
            )
        })?;
        installed += 1;
    }
    Ok(installed)
}

/// The return value a classic BPF seccomp program gives for call `nr` with `args`
/// on x86_64 (instruction pointer 0); None for an instruction or a read this
/// evaluator does not know, or a program that runs off its end.
pub fn answer(f: &Filter, nr: u32, args: [u64; 6]) -> Option<u32> {
    let data = |off: u32| -> Option<u32> {
        match off {
            0 => Some(nr),
            4 => Some(AUDIT_ARCH_X86_64),
            8 | 12 => Some(0),
            o if (16..64).contains(&o) && o % 4 == 0 => {
                let v = args[((o - 16) / 8) as usize];
                Some(if (o - 16) % 8 == 0 {
                    v as u32
                } else {
                    (v >> 32) as u32
                })
            }
            _ => None,
        }
    };
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    // Jumps only go forward: every instruction runs at most once.
    while let Some(&(code, jt, jf, k)) = f.get(pc) {
        let code = u32::from(code);
        pc += 1;
        let src = if code & 0x08 != 0 { x } else { k };
        match code & 0x07 {
            // BPF_LD: W|ABS, IMM, MEM, W|LEN (the size of seccomp_data).
            0x00 => {
                a = match code & 0xf8 {
                    0x20 => data(k)?,
                    0x00 => k,
                    0x60 => *mem.get(k as usize)?,
                    0x80 => 64,
                    _ => return None,
                }
            }
            // BPF_LDX: IMM, MEM, W|LEN.
            0x01 => {
                x = match code & 0xf8 {
                    0x00 => k,
                    0x60 => *mem.get(k as usize)?,
                    0x80 => 64,
                    _ => return None,
                }
            }
            0x02 => *mem.get_mut(k as usize)? = a,
            0x03 => *mem.get_mut(k as usize)? = x,
            0x04 => {
                a = match code & 0xf0 {
                    0x00 => a.wrapping_add(src),
                    0x10 => a.wrapping_sub(src),
                    0x20 => a.wrapping_mul(src),
                    0x30 => a.checked_div(src)?,
                    0x40 => a | src,
                    0x50 => a & src,
                    0x60 => a.checked_shl(src).unwrap_or(0),
                    0x70 => a.checked_shr(src).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0x90 => a.checked_rem(src)?,
                    0xa0 => a ^ src,
                    _ => return None,
                }
            }
            0x05 => {
                let taken = match code & 0xf0 {
                    0x00 => {
                        pc += k as usize;
                        continue;
                    }
                    0x10 => a == src,
                    0x20 => a > src,
                    0x30 => a >= src,
                    0x40 => a & src != 0,
                    _ => return None,
                };
                pc += usize::from(if taken { jt } else { jf });
            }
            0x06 => return Some(if code & 0x18 == 0x10 { a } else { k }),
            _ => match code & 0xf8 {
                0x00 => x = a,
                0x80 => a = x,
                _ => return None,
            },
        }
    }
    None
}

/// Whether this kernel accepts seccomp filters (prctl PR_GET_SECCOMP works).
pub fn kernel_supports() -> bool {
    // SAFETY: PR_GET_SECCOMP only reads the calling thread's mode.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's check (kernel/seccomp.c, `seccomp_is_const_allow`) of whether a
    /// filter allows call `nr` whatever its arguments: then the per-syscall action
    /// cache (Linux 5.11+) answers it without running the filter.
    fn const_allow(f: &Filter, nr: u32) -> bool {
        let mut reg = 0u32;
        let mut pc = 0usize;
        while let Some(&(code, jt, jf, k)) = f.get(pc) {
            let code = code as u32;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => match k {
                    0 => reg = nr,
                    4 => reg = AUDIT_ARCH_X86_64,
                    _ => return false,
                },
                c if c == libc::BPF_RET | libc::BPF_K => return k == libc::SECCOMP_RET_ALLOW,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += k as usize,
                c if c & 0x07 == libc::BPF_JMP && c & 0x08 == libc::BPF_K => {
                    let taken = match c & 0xf0 {
                        o if o == libc::BPF_JEQ => reg == k,
                        o if o == libc::BPF_JGE => reg >= k,
                        o if o == libc::BPF_JGT => reg > k,
                        o if o == libc::BPF_JSET => reg & k != 0,
                        _ => return false,
                    };
                    pc += if taken { jt } else { jf } as usize;
                }
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => reg &= k,
                _ => return false,
            }
            pc += 1;
        }
        false
    }

    #[test]
    fn the_action_cache_answers_the_common_calls_of_the_default_policy() {
        let d = compile(&policy(SeccompKind::DenyList)).unwrap();
        for name in [
            "read",
            "write",
            "openat",
            "close",
            "newfstatat",
            "statx",
            "getppid",
            "mmap",
            "futex",
            "lseek",
            "getdents64",
            "fstat",
            "brk",
            "rt_sigaction",
        ] {
            let n = nr(name).unwrap() as u32;
            for (i, f) in d.filters.iter().enumerate() {
                assert!(
                    const_allow(f, n),
                    "{name}: filter {i} is run for every call"
                );
            }
        }
        // Calls with argument rules are not: the filter runs.
        let clone = nr("clone").unwrap() as u32;
        assert!(!const_allow(&d.filters[2], clone));
    }

    fn policy(kind: SeccompKind) -> SeccompPolicy {
        SeccompPolicy {
            mode: LayerMode::Required,
            kind,
            deny: vec![],
            allow: vec!["read".into(), "write".into()],
        }
    }

    #[test]
    fn the_evaluator_answers_as_the_filters_do() {
        let d = compile(&policy(SeccompKind::DenyList)).unwrap();
        let ptrace = nr("ptrace").unwrap() as u32;
        let read = nr("read").unwrap() as u32;
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        for f in &d.filters {
            assert_eq!(answer(f, read, [0; 6]), Some(libc::SECCOMP_RET_ALLOW));
        }
        assert_eq!(answer(&d.filters[2], ptrace, [0; 6]), Some(eperm));
        let a = compile(&policy(SeccompKind::AllowList)).unwrap();
        assert_eq!(answer(&a.filters[2], ptrace, [0; 6]), Some(eperm));
        assert_eq!(
            answer(&a.filters[2], read, [0; 6]),
            Some(libc::SECCOMP_RET_ALLOW)
        );
        // An unknown instruction is no answer.
        assert_eq!(answer(&vec![(0xff, 0, 0, 0)], read, [0; 6]), None);
    }

    #[test]
    fn every_fixed_name_is_a_syscall() {
        for n in FIXED_DENY {
            assert!(syscall_number(n).is_some(), "{n}");
        }
        assert_eq!(syscall_number("clone3"), Some(435));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn policies_compile_and_hash_differs() {
        let d = compile(&policy(SeccompKind::DenyList)).unwrap();
        let a = compile(&policy(SeccompKind::AllowList)).unwrap();
        assert_eq!(d.filters.len(), 3);
        assert_ne!(d.policy_hash, a.policy_hash);
        assert_ne!(d.filters[2], a.filters[2]);
    }

    #[test]
    fn the_table_knows_the_new_calls_and_the_guard_stops_above_it() {
        for (n, nr) in [
            ("statmount", 457),
            ("listmount", 458),
            ("open_tree_attr", 467),
        ] {
            assert_eq!(syscall_number(n), Some(nr), "{n}");
        }
        assert!(highest_known() >= 469);
        let g = arch_guard();
        assert!(g.contains(&(
            (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16,
            0,
            1,
            highest_known()
        )));
    }

    /// Runs `f` in a forked child under the guard with `max` as the highest known
    /// call; returns the child's exit code.
    fn under_guard(max: u32, f: fn() -> i32) -> i32 {
        let prog: Vec<seccompiler::sock_filter> = arch_guard_upto(max)
            .iter()
            .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
            .collect();
        // SAFETY: the child only calls prctl, seccomp, raw syscalls and _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if seccompiler::apply_filter(&prog).is_err() {
                    libc::_exit(99);
                }
                libc::_exit(f())
            },
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, c) => c,
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn numbers_above_the_highest_known_answer_enosys() {
        fn probe() -> i32 {
            // getpid (39) is below the limit, getppid (110) above it.
            // SAFETY: both take no arguments.
            let below = unsafe { libc::syscall(libc::SYS_getpid) };
            let above = unsafe { libc::syscall(libc::SYS_getppid) };
            let err = std::io::Error::last_os_error().raw_os_error();
            match (below > 0, above, err) {
                (true, -1, Some(libc::ENOSYS)) => 0,
                _ => 1,
            }
        }
        assert_eq!(under_guard(100, probe), 0);
        fn sane() -> i32 {
            // SAFETY: takes no arguments.
            (unsafe { libc::syscall(libc::SYS_getppid) } <= 0) as i32
        }
        assert_eq!(under_guard(highest_known(), sane), 0);
    }

    #[test]
    fn argument_rules_never_admit_an_unlisted_call() {
        // 32 rules per allowed call at most; an unlisted socket/clone/ioctl/personality
        // must not show up as a jump target at all.
        let a = compile(&policy(SeccompKind::AllowList)).unwrap();
        let main = &a.filters[2];
        for name in ["socket", "clone", "ioctl", "personality"] {
            let n = syscall_number(name).unwrap() as u32;
            assert!(
                !main.iter().any(|i| i.0 & 0x07 == 0x05 && i.3 == n),
                "{name} is compared in an allow list that does not list it"
            );
        }
        let mut p = policy(SeccompKind::AllowList);
        p.allow.push("socket".into());
        let with = compile(&p).unwrap();
        let n = syscall_number("socket").unwrap() as u32;
        assert!(
            with.filters[2]
                .iter()
                .any(|i| i.0 & 0x07 == 0x05 && i.3 == n)
        );
    }

    #[test]
    fn validate_refuses_empty_truncated_and_unterminated_programs() {
        let good = compile(&policy(SeccompKind::DenyList)).unwrap();
        assert!(validate(&good).is_ok());
        let mut empty = good.clone();
        empty.filters.clear();
        assert!(validate(&empty).is_err());
        let mut hollow = good.clone();
        hollow.filters[2].clear();
        assert!(validate(&hollow).is_err());
        let mut cut = good.clone();
        let len = cut.filters[2].len();
        cut.filters[2].truncate(len / 2);
        // Half of a program ends in a jump or a load, not a return.
        if cut.filters[2].last().map(|i| i.0 & 0x07) != Some(0x06) {
            assert!(validate(&cut).is_err());
        }
        let mut huge = good;
        huge.filters[2] = vec![(RET_K, 0, 0, 0); MAX_INSNS + 1];
        assert!(validate(&huge).is_err());
    }

    #[test]
    fn allow_list_refuses_fixed_denials() {
        let mut p = policy(SeccompKind::AllowList);
        p.allow.push("ptrace".into());
        assert!(compile(&p).is_err());
    }
}
