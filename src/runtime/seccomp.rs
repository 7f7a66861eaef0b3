//! The OCI seccomp profile (`linux.seccomp`) compiled to BPF with `seccompiler`.
//! Compiling happens while the runtime can still log and allocate freely; [`install`] is a
//! handful of `seccomp(2)` calls made in the container's process just before exec.
//!
//! # How one OCI profile becomes several filters
//!
//! A `seccompiler::SeccompFilter` has one action for "a rule matched" and one for "nothing
//! matched", while an OCI profile gives every rule its own action. We therefore build:
//!
//! * a *default filter* (only when the default action is not ALLOW): mismatch = the
//!   profile's default action, match = ALLOW, holding every rule whose action differs from
//!   the default (with its argument conditions);
//! * one *action filter* per distinct action X other than ALLOW and the default:
//!   mismatch = ALLOW, match = X, holding the rules whose action is X.
//!
//! The kernel runs every installed filter and keeps the most restrictive result (KILL_PROCESS >
//! KILL_THREAD > TRAP > ERRNO > TRACE > LOG > ALLOW; for equal precedence, the data of the
//! most recently installed filter). For a given call:
//! * it matches no rule: the default filter says "default", every action filter ALLOW, so the
//!   default action wins;
//! * it matches a rule with action ALLOW: every filter says ALLOW;
//! * it matches a rule with action X: the default filter says ALLOW (the rule is in it), the
//!   X filter says X and no other filter holds that call, so X wins.
//!
//! That is the OCI profile's "the rule that matches decides" semantics, as long as a call
//! matches rules of only one action. The corner it does not cover: a syscall listed several
//! times with *different* actions and argument conditions that can match the same call
//! (say `clone` → ERRNO for some flags and → LOG for others, overlapping). The kernel then
//! picks the most restrictive of those actions rather than the first listed. [`compile`]
//! logs a warning for every syscall where it cannot prove the conditions disjoint. Among
//! actions of equal precedence (ERRNO with two errno values) the action filters are
//! installed so that the one listed first in the profile is installed last and wins.
//!
//! Two more gaps, both inherited from seccompiler's fixed architecture check:
//! * a call made through another ABI of the machine (i386 `int 0x80` on x86_64) kills the
//!   process, whatever `architectures` says;
//! * on x86_64 the x32 ABI (syscall numbers with bit 30 set) is not checked separately: its
//!   calls match no rule, so they get the default action and skip ERRNO/KILL rules. Kernels
//!   built without `CONFIG_X86_X32_ABI` (this one, Ubuntu's) are not affected; [`compile`]
//!   warns when the running kernel does accept x32 calls.

use crate::runtime::error::{Error, Result};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};
use std::collections::BTreeMap;
use std::str::FromStr;

/// Compiled filters, installed in order by [`install`]. Compiling happens before the
/// container's process drops privileges, installing as the very last step before exec.
pub struct SeccompProgram {
    pub filters: Vec<seccompiler::BpfProgram>,
    /// `seccomp(2)` flags (`SECCOMP_FILTER_FLAG_*`) every filter is installed with.
    pub flags: libc::c_ulong,
}

/// errno returned by ERRNO (and the data passed by TRACE) when the profile gives none, as
/// runc and crun do.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

/// One argument condition as the profile states it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ArgCondition {
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
}

/// One rule for one syscall: matches when every condition holds (no conditions: always).
#[derive(Clone, Debug)]
struct Rule {
    action: SeccompAction,
    conditions: Vec<ArgCondition>,
}

/// Maps an OCI action to seccompiler's. `errno_ret` is `errnoRet` of the rule (or
/// `defaultErrnoRet` for the default action).
fn action(action: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<SeccompAction> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno_ret.unwrap_or(DEFAULT_ERRNO))
        }
        // libseccomp's SCMP_ACT_KILL has always meant "kill the thread".
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => {
            SeccompAction::Trace(errno_ret.unwrap_or(DEFAULT_ERRNO))
        }
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Seccomp(
                "SCMP_ACT_NOTIFY is not supported by ferry (it needs a seccomp agent listening \
                 on `listenerPath`); remove those rules or use runc/crun for this container"
                    .into(),
            ));
        }
    })
}

/// The action as a profile writes it, for messages.
fn action_name(action: &SeccompAction) -> String {
    match action {
        SeccompAction::Allow => "SCMP_ACT_ALLOW".into(),
        SeccompAction::Errno(e) => format!("SCMP_ACT_ERRNO({e})"),
        SeccompAction::KillThread => "SCMP_ACT_KILL_THREAD".into(),
        SeccompAction::KillProcess => "SCMP_ACT_KILL_PROCESS".into(),
        SeccompAction::Log => "SCMP_ACT_LOG".into(),
        SeccompAction::Trace(d) => format!("SCMP_ACT_TRACE({d})"),
        SeccompAction::Trap => "SCMP_ACT_TRAP".into(),
    }
}

fn native_arch() -> Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|_| {
        Error::Seccomp(format!(
            "seccomp filters are not supported on {}: seccompiler builds them only for \
             x86_64, aarch64 and riscv64",
            std::env::consts::ARCH
        ))
    })
}

/// The `architectures` entry that names the machine ferry runs on.
fn is_native(arch: Arch) -> bool {
    match std::env::consts::ARCH {
        "x86_64" => arch == Arch::ScmpArchX86_64,
        "aarch64" => arch == Arch::ScmpArchAarch64,
        "riscv64" => arch == Arch::ScmpArchRiscv64,
        _ => false,
    }
}

fn flag_bits(flags: &[LinuxSeccompFilterFlag]) -> libc::c_ulong {
    let mut bits = 0;
    for flag in flags {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {
                bits |= libc::SECCOMP_FILTER_FLAG_TSYNC
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => bits |= libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                bits |= libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // Only meaningful together with a notify listener, which ferry does not support.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                tracing::debug!("seccomp: flag {flag} ignored (no SCMP_ACT_NOTIFY support)")
            }
        }
    }
    bits
}

/// The rules one `syscalls[]` entry gives each of its syscalls. Several conditions on the
/// same argument cannot all hold at once as an AND of equalities, so, like runc, such an
/// entry means "any of them": one rule per condition.
fn entry_rules(action: SeccompAction, args: &[oci_spec::runtime::LinuxSeccompArg]) -> Vec<Rule> {
    let conditions: Vec<ArgCondition> = args
        .iter()
        .map(|a| ArgCondition {
            index: a.index(),
            op: a.op(),
            value: a.value(),
            value_two: a.value_two().unwrap_or(0),
        })
        .collect();
    let repeats_an_index = conditions
        .iter()
        .enumerate()
        .any(|(i, c)| conditions[..i].iter().any(|d| d.index == c.index));
    if repeats_an_index {
        conditions
            .into_iter()
            .map(|c| Rule {
                action: action.clone(),
                conditions: vec![c],
            })
            .collect()
    } else {
        vec![Rule { action, conditions }]
    }
}

fn seccompiler_condition(syscall: &str, c: &ArgCondition) -> Result<SeccompCondition> {
    // Every argument is compared as the full 64-bit register, as libseccomp does.
    let (op, value) = match c.op {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, c.value),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, c.value),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, c.value),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, c.value),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, c.value),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, c.value),
        // OCI: `value` is the mask, `valueTwo` what the masked argument must equal.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (SeccompCmpOp::MaskedEq(c.value), c.value_two),
    };
    let index = u8::try_from(c.index).unwrap_or(u8::MAX);
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|e| {
        Error::Seccomp(format!(
            "rule for `{syscall}`: argument index {} is invalid ({e}); syscalls have \
             arguments 0 to 5",
            c.index
        ))
    })
}

/// A seccompiler rule chain for one syscall in one filter: `Vec::new()` matches any call.
fn rule_chain(syscall: &str, rules: &[&Rule]) -> Result<Vec<SeccompRule>> {
    if rules.iter().any(|r| r.conditions.is_empty()) {
        return Ok(Vec::new());
    }
    rules
        .iter()
        .map(|r| {
            let conditions = r
                .conditions
                .iter()
                .map(|c| seccompiler_condition(syscall, c))
                .collect::<Result<Vec<_>>>()?;
            SeccompRule::new(conditions)
                .map_err(|e| Error::Seccomp(format!("rule for `{syscall}`: {e}")))
        })
        .collect()
}

/// True when no call can satisfy both rules; false when we cannot tell.
fn disjoint(a: &Rule, b: &Rule) -> bool {
    use LinuxSeccompOperator::{ScmpCmpEq as Eq, ScmpCmpMaskedEq as Masked, ScmpCmpNe as Ne};
    a.conditions.iter().any(|x| {
        b.conditions.iter().any(|y| {
            if x.index != y.index {
                return false;
            }
            match (x.op, y.op) {
                (Eq, Eq) => x.value != y.value,
                (Eq, Ne) | (Ne, Eq) => x.value == y.value,
                (Masked, Masked) => {
                    x.value == y.value && x.value_two & x.value != y.value_two & y.value
                }
                (Eq, Masked) => x.value & y.value != y.value_two & y.value,
                (Masked, Eq) => y.value & x.value != x.value_two & x.value,
                _ => false,
            }
        })
    })
}

/// Pairs of actions of one syscall's rules that the filter composition may not order as the
/// profile does (see the module comment).
fn overlapping_actions(rules: &[Rule]) -> Vec<(SeccompAction, SeccompAction)> {
    let mut found: Vec<(SeccompAction, SeccompAction)> = Vec::new();
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[i + 1..] {
            if a.action != b.action && !disjoint(a, b) {
                let pair = (a.action.clone(), b.action.clone());
                if !found.contains(&pair) {
                    found.push(pair);
                }
            }
        }
    }
    found
}

/// Whether x32 system calls (x86_64 numbers with bit 30 set) reach the kernel's syscall
/// table. Asking costs one harmless `getpid`.
fn x32_abi_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
        // SAFETY: getpid takes no arguments and has no side effects.
        let rc = unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) };
        rc >= 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn to_bpf(filter: SeccompFilter, what: &str) -> Result<seccompiler::BpfProgram> {
    filter
        .try_into()
        .map_err(|e| Error::Seccomp(format!("compiling the {what}: {e}")))
}

/// Compiles the profile for the native architecture into the filters described in the module
/// comment. Rules for syscalls this architecture lacks are skipped; SCMP_ACT_NOTIFY is an
/// error. An empty program (default ALLOW and nothing else) is valid and installs nothing.
pub fn compile(profile: &LinuxSeccomp) -> Result<SeccompProgram> {
    let arch = native_arch()?;
    for a in profile.architectures().iter().flatten() {
        if !is_native(*a) {
            tracing::debug!(
                "seccomp: architecture {a} ignored: ferry filters only the native ABI ({}); \
                 calls through other ABIs kill the process",
                std::env::consts::ARCH
            );
        }
    }
    let flags = flag_bits(profile.flags().as_deref().unwrap_or_default());
    if profile.listener_path().is_some() {
        tracing::debug!("seccomp: listenerPath ignored (no SCMP_ACT_NOTIFY support)");
    }

    let default = action(profile.default_action(), profile.default_errno_ret())
        .map_err(|e| Error::Seccomp(format!("defaultAction: {e}")))?;

    // Per syscall number: its name (for messages) and its rules in profile order.
    let mut by_syscall: BTreeMap<i64, (String, Vec<Rule>)> = BTreeMap::new();
    // Every action used by a rule, in order of first appearance.
    let mut actions: Vec<SeccompAction> = Vec::new();
    for entry in profile.syscalls().iter().flatten() {
        let act = action(entry.action(), entry.errno_ret())
            .map_err(|e| Error::Seccomp(format!("rule for {}: {e}", entry.names().join(", "))))?;
        let rules = entry_rules(act.clone(), entry.args().as_deref().unwrap_or_default());
        if !actions.contains(&act) {
            actions.push(act);
        }
        for name in entry.names() {
            let Ok(sysno) = syscalls::Sysno::from_str(name) else {
                // Profiles list the syscalls of every architecture (socketcall, ...); as
                // libseccomp does, a name this one lacks is no error.
                tracing::debug!(
                    "seccomp: syscall `{name}` does not exist on {}; rule skipped",
                    std::env::consts::ARCH
                );
                continue;
            };
            let slot = by_syscall
                .entry(i64::from(sysno.id()))
                .or_insert_with(|| (name.clone(), Vec::new()));
            slot.1.extend(rules.iter().cloned());
        }
    }

    let mut any_restriction = default != SeccompAction::Allow;
    for (name, rules) in by_syscall.values() {
        let pairs = overlapping_actions(rules);
        if !pairs.is_empty() {
            let pairs: Vec<String> = pairs
                .iter()
                .map(|(a, b)| format!("{} and {}", action_name(a), action_name(b)))
                .collect();
            // podman's default profile has this for `setns`; a warning on every container
            // would be noise, so it is logged at info (shown with --debug).
            tracing::info!(
                "seccomp: syscall `{name}` has rules with different actions ({}) whose argument \
                 conditions may match the same call; for such a call the kernel applies the \
                 most restrictive action, not the first rule listed",
                pairs.join("; ")
            );
        }
        any_restriction |= rules.iter().any(|r| r.action != SeccompAction::Allow);
    }
    if any_restriction && default == SeccompAction::Allow && x32_abi_enabled() {
        tracing::warn!(
            "seccomp: this kernel accepts x32 system calls, which the filters do not match \
             by number: a process using the x32 ABI gets the default action (ALLOW) and \
             escapes this profile's restrictions; boot with syscall.x32=n to close this"
        );
    }

    // (filter, may it refuse seccomp(2) itself?) in installation order.
    let mut filters: Vec<(seccompiler::BpfProgram, bool)> = Vec::new();
    let seccomp_nr = i64::from(syscalls::Sysno::seccomp.id());

    // Reversed: for equal precedence the last installed filter wins, and it should be the
    // action the profile lists first.
    for act in actions.iter().rev() {
        if *act == SeccompAction::Allow || *act == default {
            continue;
        }
        let mut chains = BTreeMap::new();
        for (nr, (name, rules)) in &by_syscall {
            let mine: Vec<&Rule> = rules.iter().filter(|r| r.action == *act).collect();
            if !mine.is_empty() {
                chains.insert(*nr, rule_chain(name, &mine)?);
            }
        }
        if chains.is_empty() {
            continue; // every syscall of those entries is unknown here
        }
        let blocks_seccomp = chains.contains_key(&seccomp_nr);
        let what = format!("filter for {}", action_name(act));
        let filter = SeccompFilter::new(chains, SeccompAction::Allow, act.clone(), arch)
            .map_err(|e| Error::Seccomp(format!("building the {what}: {e}")))?;
        filters.push((to_bpf(filter, &what)?, blocks_seccomp));
    }

    if default != SeccompAction::Allow {
        let mut chains = BTreeMap::new();
        for (nr, (name, rules)) in &by_syscall {
            let others: Vec<&Rule> = rules.iter().filter(|r| r.action != default).collect();
            if !others.is_empty() {
                chains.insert(*nr, rule_chain(name, &others)?);
            }
        }
        let blocks_seccomp = chains.get(&seccomp_nr).is_none_or(|c| !c.is_empty());
        let what = format!("default filter ({})", action_name(&default));
        let filter = SeccompFilter::new(chains, default.clone(), SeccompAction::Allow, arch)
            .map_err(|e| Error::Seccomp(format!("building the {what}: {e}")))?;
        filters.push((to_bpf(filter, &what)?, blocks_seccomp));
    }

    // A filter that may refuse seccomp(2) would stop the ones after it from being installed,
    // so those go last. Which filter comes last matters otherwise only in the overlap corner.
    filters.sort_by_key(|(_, blocks)| *blocks);
    if filters.iter().filter(|(_, blocks)| *blocks).count() > 1 {
        tracing::warn!(
            "seccomp: several filters of this profile refuse seccomp(2) itself; installing \
             them will fail unless the profile allows `seccomp`"
        );
    }
    Ok(SeccompProgram {
        filters: filters.into_iter().map(|(f, _)| f).collect(),
        flags,
    })
}

/// Installs the filters in order with `seccomp(SECCOMP_SET_MODE_FILTER)`. It does not set
/// no_new_privs (seccompiler's own `apply_filter` would, breaking setuid binaries in
/// containers that did not ask for it): the caller has set it or holds CAP_SYS_ADMIN.
/// Nothing here allocates unless an error is returned.
pub fn install(program: &SeccompProgram) -> Result<()> {
    let count = program.filters.len();
    for (i, filter) in program.filters.iter().enumerate() {
        let prog = libc::sock_fprog {
            len: u16::try_from(filter.len()).map_err(|_| {
                Error::Seccomp(format!(
                    "filter {} of {count} has {} instructions, more than BPF allows",
                    i + 1,
                    filter.len()
                ))
            })?,
            // seccompiler's sock_filter is #[repr(C)] with the kernel's layout; the kernel
            // only reads through this pointer.
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `filter`, which lives across the call; the kernel copies it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                program.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc == 0 {
            continue;
        }
        let err = std::io::Error::last_os_error();
        let hint = if rc > 0 {
            format!("thread {rc} could not be synchronised (SECCOMP_FILTER_FLAG_TSYNC)")
        } else {
            match err.raw_os_error() {
                Some(libc::EACCES) => format!(
                    "{err}: installing a filter needs no_new_privs or CAP_SYS_ADMIN; set \
                     process.noNewPrivileges or keep CAP_SYS_ADMIN until seccomp is installed"
                ),
                Some(libc::EINVAL) if program.flags != 0 => format!(
                    "{err}: the kernel rejected the filter or its flags {:#x}; drop \
                     linux.seccomp.flags this kernel does not know",
                    program.flags
                ),
                Some(_) if i > 0 => format!(
                    "{err}: the filters installed before it refuse seccomp(2); allow \
                     `seccomp` in the profile"
                ),
                _ => err.to_string(),
            }
        };
        return Err(Error::Seccomp(format!(
            "installing filter {} of {count}: {hint}",
            i + 1
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("test profile is valid OCI JSON")
    }

    /// Fails (never skips) when the test cannot do what it is about.
    pub(crate) fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test installs seccomp filters / changes capabilities in a forked child and \
             must run as root (e.g. `sudo -E cargo test --lib`)"
        );
    }

    /// Runs `child` in a forked process and returns how it ended. `child` returns the exit
    /// code; it must keep to raw syscalls (the test harness has other threads).
    pub(crate) fn in_child(child: impl FnOnce() -> i32) -> WaitStatus {
        // SAFETY: the child only makes syscalls and leaves with _exit.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = child();
                // SAFETY: _exit is always safe; it skips the harness's atexit handlers.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Exit code 0 = all checks passed; otherwise the number of the failed check.
    fn expect_exit_ok(status: WaitStatus) {
        match status {
            WaitStatus::Exited(_, 0) => {}
            WaitStatus::Exited(_, code) => panic!("child failed check #{code}"),
            other => panic!("child ended unexpectedly: {other:?}"),
        }
    }

    #[test]
    fn action_mapping() {
        use LinuxSeccompAction::*;
        let eperm = libc::EPERM as u32;
        assert_eq!(action(ScmpActAllow, None).unwrap(), SeccompAction::Allow);
        assert_eq!(
            action(ScmpActErrno, None).unwrap(),
            SeccompAction::Errno(eperm)
        );
        assert_eq!(
            action(ScmpActErrno, Some(38)).unwrap(),
            SeccompAction::Errno(38)
        );
        assert_eq!(
            action(ScmpActKill, None).unwrap(),
            SeccompAction::KillThread
        );
        assert_eq!(
            action(ScmpActKillThread, None).unwrap(),
            SeccompAction::KillThread
        );
        assert_eq!(
            action(ScmpActKillProcess, None).unwrap(),
            SeccompAction::KillProcess
        );
        assert_eq!(action(ScmpActTrap, None).unwrap(), SeccompAction::Trap);
        assert_eq!(
            action(ScmpActTrace, None).unwrap(),
            SeccompAction::Trace(eperm)
        );
        assert_eq!(
            action(ScmpActTrace, Some(7)).unwrap(),
            SeccompAction::Trace(7)
        );
        assert_eq!(action(ScmpActLog, None).unwrap(), SeccompAction::Log);
    }

    #[test]
    fn notify_is_refused_with_a_reason() {
        let rule = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/agent.sock",
                "syscalls":[{"names":["mount"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        let msg = compile(&rule).err().expect("NOTIFY must fail").to_string();
        assert!(msg.contains("SCMP_ACT_NOTIFY is not supported"), "{msg}");
        assert!(msg.contains("mount"), "{msg}");

        let default = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        let msg = compile(&default)
            .err()
            .expect("NOTIFY must fail")
            .to_string();
        assert!(msg.contains("defaultAction"), "{msg}");
    }

    #[test]
    fn names_unknown_to_this_arch_are_skipped() {
        // socketcall and ipc exist on i386/s390 only; the last name exists nowhere.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["socketcall","ipc","no_such_syscall"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        assert!(compile(&p).unwrap().filters.is_empty());

        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["socketcall","mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(compile(&p).unwrap().filters.len(), 1);
    }

    #[test]
    fn filter_count_follows_the_actions() {
        // Default ALLOW with only ALLOW rules restricts nothing.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        assert!(compile(&p).unwrap().filters.is_empty());

        // Default filter + ERRNO(38) + KILL_PROCESS; rules equal to the default add nothing.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read"],"action":"SCMP_ACT_ALLOW"},
                {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                {"names":["kexec_load"],"action":"SCMP_ACT_KILL_PROCESS"},
                {"names":["mount"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(compile(&p).unwrap().filters.len(), 3);
    }

    #[test]
    fn bad_argument_index_is_an_error() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["ioctl"],
                "action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        let msg = compile(&p).err().expect("index 6 must fail").to_string();
        assert!(msg.contains("ioctl") && msg.contains("index 6"), "{msg}");
    }

    #[test]
    fn flags_are_mapped() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_TSYNC",
                "SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#,
        );
        assert_eq!(
            compile(&p).unwrap().flags,
            libc::SECCOMP_FILTER_FLAG_TSYNC | libc::SECCOMP_FILTER_FLAG_LOG
        );
    }

    #[test]
    fn overlap_detection() {
        let cond = |index, op, value| ArgCondition {
            index,
            op,
            value,
            value_two: 0,
        };
        let rule = |action, conditions| Rule { action, conditions };
        use LinuxSeccompOperator::*;
        let errno = SeccompAction::Errno(1);
        let log = SeccompAction::Log;

        // Same arg, different EQ values: disjoint.
        let rules = [
            rule(errno.clone(), vec![cond(0, ScmpCmpEq, 1)]),
            rule(log.clone(), vec![cond(0, ScmpCmpEq, 2)]),
        ];
        assert!(overlapping_actions(&rules).is_empty());
        // EQ v vs NE v: disjoint.
        let rules = [
            rule(errno.clone(), vec![cond(0, ScmpCmpEq, 40)]),
            rule(log.clone(), vec![cond(0, ScmpCmpNe, 40)]),
        ];
        assert!(overlapping_actions(&rules).is_empty());
        // Unconditional vs conditional: overlap.
        let rules = [
            rule(errno.clone(), vec![]),
            rule(log.clone(), vec![cond(0, ScmpCmpEq, 2)]),
        ];
        assert_eq!(
            overlapping_actions(&rules),
            vec![(errno.clone(), log.clone())]
        );
        // Different args: overlap possible.
        let rules = [
            rule(errno.clone(), vec![cond(0, ScmpCmpEq, 1)]),
            rule(log.clone(), vec![cond(1, ScmpCmpEq, 1)]),
        ];
        assert_eq!(overlapping_actions(&rules).len(), 1);
        // Same action: never a problem.
        let rules = [rule(log.clone(), vec![]), rule(log, vec![])];
        assert!(overlapping_actions(&rules).is_empty());
    }

    #[test]
    fn same_index_conditions_mean_any_of_them() {
        let args: Vec<oci_spec::runtime::LinuxSeccompArg> = serde_json::from_str(
            r#"[{"index":0,"value":0,"op":"SCMP_CMP_EQ"},{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]"#,
        )
        .unwrap();
        let rules = entry_rules(SeccompAction::Allow, &args);
        assert_eq!(rules.len(), 2);
        let args: Vec<oci_spec::runtime::LinuxSeccompArg> = serde_json::from_str(
            r#"[{"index":0,"value":0,"op":"SCMP_CMP_EQ"},{"index":1,"value":8,"op":"SCMP_CMP_EQ"}]"#,
        )
        .unwrap();
        let rules = entry_rules(SeccompAction::Allow, &args);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].conditions.len(), 2);
    }

    /// The shape of moby's / containers-common's default profile, trimmed.
    const DOCKER_LIKE: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["accept", "accept4", "access", "arch_prctl", "bind", "brk", "capget",
                       "capset", "chdir", "close", "connect", "dup", "dup2", "dup3",
                       "epoll_wait", "execve", "exit", "exit_group", "fcntl", "fstat", "futex",
                       "getpid", "mmap", "openat", "read", "rt_sigaction", "socketcall",
                       "write"],
             "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]},
            {"names": ["sync_file_range2", "arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["kexec_load", "reboot"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["ptrace"], "action": "SCMP_ACT_LOG"},
            {"names": ["uselib"], "action": "SCMP_ACT_KILL"},
            {"names": ["acct"], "action": "SCMP_ACT_TRAP"},
            {"names": ["mlock"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 1, "value": 4096, "op": "SCMP_CMP_LE"}]},
            {"names": ["prlimit64"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 2, "value": 0, "op": "SCMP_CMP_EQ"}]}
        ]
    }"#;

    #[test]
    fn docker_like_profile_compiles() {
        let program = compile(&profile(DOCKER_LIKE)).expect("compiles");
        // Default ERRNO(1); ERRNO(38), KILL_PROCESS, LOG, KILL_THREAD, TRAP.
        assert_eq!(program.filters.len(), 6);
        assert_eq!(program.flags, 0);
    }

    #[test]
    fn kernel_errno_rule_with_default_allow() {
        require_root();
        let program = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        ))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let blocked = std::ffi::CString::new(dir.path().join("blocked").to_str().unwrap()).unwrap();
        let allowed = std::ffi::CString::new(dir.path().join("allowed").to_str().unwrap()).unwrap();

        let status = in_child(|| {
            // SAFETY: prctl and the syscalls below take valid pointers or plain integers.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return 10;
                }
                if install(&program).is_err() {
                    return 11;
                }
                if libc::syscall(libc::SYS_mkdir, blocked.as_ptr(), 0o755) != -1 {
                    return 1;
                }
                if errno() != libc::EPERM {
                    return 2;
                }
                if libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, allowed.as_ptr(), 0o755) != 0 {
                    return 3;
                }
                if libc::getpid() <= 0 {
                    return 4;
                }
            }
            0
        });
        expect_exit_ok(status);
        assert!(!dir.path().join("blocked").exists());
        assert!(dir.path().join("allowed").is_dir());
    }

    #[test]
    fn kernel_default_errno_with_allow_list_and_mixed_actions() {
        require_root();
        // getuid: own errno; getgid: ERRNO without errnoRet (EPERM); getppid: not listed, so
        // defaultErrnoRet (EACCES). exit_group must be allowed for the child to leave.
        let program = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":13,"syscalls":[
                {"names":["getpid","exit_group","exit"],"action":"SCMP_ACT_ALLOW"},
                {"names":["getuid"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                {"names":["getgid"],"action":"SCMP_ACT_ERRNO"}]}"#,
        ))
        .unwrap();
        assert_eq!(program.filters.len(), 3);
        let status = in_child(|| {
            // SAFETY: plain syscalls without pointers.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return 10;
                }
                if install(&program).is_err() {
                    return 11;
                }
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    return 1;
                }
                if libc::syscall(libc::SYS_getuid) != -1 || errno() != libc::ENOSYS {
                    return 2;
                }
                if libc::syscall(libc::SYS_getgid) != -1 || errno() != libc::EPERM {
                    return 3;
                }
                if libc::syscall(libc::SYS_getppid) != -1 || errno() != libc::EACCES {
                    return 4;
                }
            }
            0
        });
        expect_exit_ok(status);
    }

    #[test]
    fn kernel_equal_precedence_overlap_first_listed_wins() {
        require_root();
        // Both rules match every getuid call (the corner the module comment describes); for
        // actions of equal precedence the one listed first must decide.
        let program = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["getuid"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                {"names":["getuid"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        ))
        .unwrap();
        let status = in_child(|| {
            // SAFETY: plain syscalls without pointers.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return 10;
                }
                if install(&program).is_err() {
                    return 11;
                }
                if libc::syscall(libc::SYS_getuid) != -1 || errno() != libc::ENOSYS {
                    return 1;
                }
            }
            0
        });
        expect_exit_ok(status);
    }

    #[test]
    fn kernel_argument_condition() {
        require_root();
        // personality is allowed only to query (0xffffffff), as in Docker's profile.
        let program = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["exit_group","exit"],"action":"SCMP_ACT_ALLOW"},
                {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                 "args":[{"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .unwrap();
        let status = in_child(|| {
            // SAFETY: plain syscalls without pointers.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return 10;
                }
                if install(&program).is_err() {
                    return 11;
                }
                if libc::syscall(libc::SYS_personality, 0xffff_ffff_u64) == -1 {
                    return 1;
                }
                if libc::syscall(libc::SYS_personality, 0_u64) != -1 || errno() != libc::EPERM {
                    return 2;
                }
            }
            0
        });
        expect_exit_ok(status);
    }

    #[test]
    fn kernel_kill_process() {
        require_root();
        let program = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["getppid"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        ))
        .unwrap();
        let status = in_child(|| {
            // SAFETY: plain syscalls without pointers.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return 10;
                }
                if install(&program).is_err() {
                    return 11;
                }
                libc::syscall(libc::SYS_getppid);
            }
            1
        });
        assert!(
            matches!(
                status,
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
            ),
            "child should die of SIGSYS, got {status:?}"
        );
    }

    #[test]
    fn install_without_no_new_privs_explains() {
        require_root();
        let program = compile(&profile(r#"{"defaultAction":"SCMP_ACT_LOG"}"#)).unwrap();
        // Drop CAP_SYS_ADMIN without no_new_privs: the kernel must refuse, and we must say why.
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let status = in_child(|| {
            if caps::drop(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_SYS_ADMIN,
            )
            .is_err()
            {
                return 10;
            }
            let msg = match install(&program) {
                Ok(()) => return 1,
                Err(e) => e.to_string(),
            };
            let _ = nix::unistd::write(&writer, msg.as_bytes());
            0
        });
        drop(writer);
        expect_exit_ok(status);
        let mut msg = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(reader), &mut msg).unwrap();
        assert!(msg.contains("no_new_privs or CAP_SYS_ADMIN"), "{msg}");
    }
}
