//! Capabilities and rlimits of the container process.
//! The process setup calls [`drop_bounding`] while still uid 0 with CAP_SETPCAP, then
//! changes uid/gid with PR_SET_KEEPCAPS, then [`apply`]; [`set_rlimits`] any time before exec.

use crate::runtime::error::{Error, Result};
use caps::{CapSet, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities, PosixRlimit, PosixRlimitType};
use std::str::FromStr;

/// The `caps` crate's name for an OCI capability, or None when that crate does not know it
/// (a capability newer than the crate).
fn to_caps(cap: &oci_spec::runtime::Capability) -> Option<caps::Capability> {
    // oci-spec displays `SYS_ADMIN`; the caps crate parses `CAP_SYS_ADMIN`.
    caps::Capability::from_str(&format!("CAP_{cap}")).ok()
}

/// Capabilities this kernel knows (`cap_last_cap`), falling back to probing the bounding set
/// when /proc is not there yet.
fn kernel_capabilities() -> CapsHashSet {
    caps::runtime::procfs_all_supported(None)
        .unwrap_or_else(|_| caps::runtime::thread_all_supported())
}

/// One set of the spec as `caps` values. A name the `caps` crate or the kernel does not know
/// is skipped with a warning, as runc does, so a spec written for a newer kernel still runs.
fn resolve(set: &str, wanted: Option<&Capabilities>, known: &CapsHashSet) -> CapsHashSet {
    let mut resolved = CapsHashSet::new();
    for cap in wanted.into_iter().flatten() {
        match to_caps(cap) {
            Some(c) if known.contains(&c) => {
                resolved.insert(c);
            }
            Some(_) => tracing::warn!(
                "capability CAP_{cap} in process.capabilities.{set} is unknown to this kernel; \
                 skipped"
            ),
            None => tracing::warn!(
                "capability CAP_{cap} in process.capabilities.{set} is unknown to ferry; skipped"
            ),
        }
    }
    resolved
}

/// `[CAP_CHOWN, CAP_KILL]`, in capability-number order, for messages.
fn names(set: &CapsHashSet) -> String {
    let mut caps: Vec<_> = set.iter().collect();
    caps.sort_by_key(|c| c.index());
    let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
    format!("[{}]", caps.join(", "))
}

/// Drops from the bounding set every capability not in `caps.bounding`. A missing
/// `bounding` list means an empty one, as in runc: the container gets no capability it was
/// not explicitly given. Needs CAP_SETPCAP, so it runs before the uid change.
pub fn drop_bounding(caps: &LinuxCapabilities) -> Result<()> {
    let known = kernel_capabilities();
    let keep = resolve("bounding", caps.bounding().as_ref(), &known);
    for cap in &known {
        if keep.contains(cap) {
            continue;
        }
        let present = caps::has_cap(None, CapSet::Bounding, *cap)
            .map_err(|e| Error::Other(format!("reading {cap} in the bounding set: {e}")))?;
        if present {
            caps::drop(None, CapSet::Bounding, *cap).map_err(|e| {
                Error::Other(format!(
                    "dropping {cap} from the bounding set: {e}; this needs CAP_SETPCAP, so it \
                     must happen before the process changes its uid"
                ))
            })?;
        }
    }
    Ok(())
}

/// Linux's `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// Linux's `struct __user_cap_data_struct`; version 3 takes two, for capabilities 0-31 and
/// 32-63.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// Sets the effective, permitted and inheritable sets, then the ambient set; the bounding
/// set is left alone (see [`drop_bounding`]). Called after setuid with PR_SET_KEEPCAPS, so
/// the permitted set still holds what is to be kept.
pub fn apply(caps: &LinuxCapabilities) -> Result<()> {
    let known = kernel_capabilities();
    let effective = resolve("effective", caps.effective().as_ref(), &known);
    let permitted = resolve("permitted", caps.permitted().as_ref(), &known);
    let inheritable = resolve("inheritable", caps.inheritable().as_ref(), &known);
    let ambient = resolve("ambient", caps.ambient().as_ref(), &known);

    // One capset for the three sets, as runc does: the kernel checks the new sets against
    // the old ones together. Set one at a time, shrinking permitted first would make an
    // inheritable capability outside the new permitted set fail (and shrinking effective
    // first would drop CAP_SETPCAP needed for that).
    let (e, p, i) = (mask(&effective), mask(&permitted), mask(&inheritable));
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        CapData {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: header and data have the kernel's layout and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::Other(format!(
            "setting capabilities effective={} permitted={} inheritable={}: {err}; the new \
             permitted set must be within the current one (was PR_SET_KEEPCAPS set before \
             setuid?) and effective within permitted",
            names(&effective),
            names(&permitted),
            names(&inheritable)
        )));
    }

    caps::clear(None, CapSet::Ambient)
        .map_err(|e| Error::Other(format!("clearing the ambient capability set: {e}")))?;
    for cap in &ambient {
        // As runc: a capability that cannot be made ambient only leaves the process with
        // fewer privileges, so it is a warning, not a failure.
        if let Err(e) = caps::raise(None, CapSet::Ambient, *cap) {
            tracing::warn!(
                "cannot raise {cap} in the ambient set: {e}; an ambient capability must also \
                 be in the permitted and inheritable sets"
            );
        }
    }
    Ok(())
}

fn resource(typ: PosixRlimitType) -> nix::sys::resource::Resource {
    use PosixRlimitType as T;
    use nix::sys::resource::Resource as R;
    match typ {
        T::RlimitCpu => R::RLIMIT_CPU,
        T::RlimitFsize => R::RLIMIT_FSIZE,
        T::RlimitData => R::RLIMIT_DATA,
        T::RlimitStack => R::RLIMIT_STACK,
        T::RlimitCore => R::RLIMIT_CORE,
        T::RlimitRss => R::RLIMIT_RSS,
        T::RlimitNproc => R::RLIMIT_NPROC,
        T::RlimitNofile => R::RLIMIT_NOFILE,
        T::RlimitMemlock => R::RLIMIT_MEMLOCK,
        T::RlimitAs => R::RLIMIT_AS,
        T::RlimitLocks => R::RLIMIT_LOCKS,
        T::RlimitSigpending => R::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        T::RlimitNice => R::RLIMIT_NICE,
        T::RlimitRtprio => R::RLIMIT_RTPRIO,
        T::RlimitRttime => R::RLIMIT_RTTIME,
    }
}

fn limit(value: u64) -> String {
    if value == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        value.to_string()
    }
}

/// Why setrlimit refused, in terms of what the user can change.
fn rlimit_hint(
    rlimit: &PosixRlimit,
    errno: nix::errno::Errno,
    current: Option<(u64, u64)>,
) -> String {
    let (soft, hard) = (rlimit.soft(), rlimit.hard());
    if errno == nix::errno::Errno::EINVAL && soft > hard {
        return "the soft limit is above the hard limit".into();
    }
    if errno != nix::errno::Errno::EPERM {
        return String::new();
    }
    if rlimit.typ() == PosixRlimitType::RlimitNofile {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let Some(nr_open) = nr_open.filter(|n| hard > *n) {
            return format!(
                "RLIMIT_NOFILE cannot exceed fs.nr_open ({nr_open}) even with CAP_SYS_RESOURCE; \
                 lower it in config.json or raise the sysctl"
            );
        }
    }
    match current {
        Some((_, current_hard)) if hard > current_hard => {
            let held = caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE)
                .unwrap_or(false);
            format!(
                "raising the hard limit above the current {} needs CAP_SYS_RESOURCE, which this \
                 process {}; lower process.rlimits in config.json to at most {}",
                limit(current_hard),
                if held {
                    "holds, yet the kernel refused"
                } else {
                    "does not hold (some hosts and VMs withhold it even from root)"
                },
                limit(current_hard)
            )
        }
        _ => String::new(),
    }
}

/// Sets every rlimit of `process.rlimits` on the calling process.
pub fn set_rlimits(rlimits: &[PosixRlimit]) -> Result<()> {
    for r in rlimits {
        let res = resource(r.typ());
        let current = nix::sys::resource::getrlimit(res).ok();
        let mut result = nix::sys::resource::setrlimit(res, r.soft(), r.hard());
        // Without CAP_SYS_RESOURCE no process on this host can go above its hard limit, and
        // clients ask for more by default (podman: nofile 1048576). Refusing would make the
        // runtime unusable here, so run with the host's ceiling and say so.
        if let (Err(nix::errno::Errno::EPERM), Some((_, cur_hard))) = (result, current)
            && r.hard() > cur_hard
            && r.soft() <= r.hard()
            && !caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE)
                .unwrap_or(false)
        {
            let (soft, hard) = (r.soft().min(cur_hard), cur_hard);
            tracing::warn!(
                "{} soft={} hard={} is above this host's hard limit {} and raising it needs \
                 CAP_SYS_RESOURCE: using soft={} hard={}",
                r.typ(),
                limit(r.soft()),
                limit(r.hard()),
                limit(cur_hard),
                limit(soft),
                limit(hard)
            );
            result = nix::sys::resource::setrlimit(res, soft, hard);
        }
        if let Err(errno) = result {
            let hint = rlimit_hint(r, errno, current);
            let current = current
                .map(|(s, h)| format!(" (currently soft={} hard={})", limit(s), limit(h)))
                .unwrap_or_default();
            return Err(Error::Other(format!(
                "setting {} to soft={} hard={}{current}: {errno}{}{hint}",
                r.typ(),
                limit(r.soft()),
                limit(r.hard()),
                if hint.is_empty() { "" } else { "; " },
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::seccomp::tests::{in_child, require_root};
    use nix::sys::wait::WaitStatus;

    /// Runs `check` in a forked child; its error comes back through a pipe into the panic.
    fn run_in_child(check: impl FnOnce() -> std::result::Result<(), String>) {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let status = in_child(|| match check() {
            Ok(()) => 0,
            Err(msg) => {
                let _ = nix::unistd::write(&writer, msg.as_bytes());
                1
            }
        });
        drop(writer);
        let mut msg = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(reader), &mut msg).unwrap();
        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "child: {status:?}: {msg}"
        );
    }

    fn status_mask(status: &str, field: &str) -> std::result::Result<u64, String> {
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .ok_or_else(|| format!("{field} missing in /proc/self/status"))?;
        u64::from_str_radix(line[field.len()..].trim(), 16).map_err(|e| format!("{line}: {e}"))
    }

    #[test]
    fn oci_names_map_to_caps() {
        let oci: Capabilities = serde_json::from_str(
            r#"["CAP_CHOWN","CAP_NET_BIND_SERVICE","CAP_SYS_ADMIN","CAP_BPF","CAP_PERFMON",
                "CAP_CHECKPOINT_RESTORE","CAP_AUDIT_READ","CAP_SYSLOG","CAP_WAKE_ALARM"]"#,
        )
        .unwrap();
        let all = caps::all();
        let resolved = resolve("effective", Some(&oci), &all);
        assert_eq!(resolved.len(), oci.len());
        assert!(resolved.contains(&caps::Capability::CAP_CHECKPOINT_RESTORE));
        assert!(resolved.contains(&caps::Capability::CAP_NET_BIND_SERVICE));
    }

    #[test]
    fn capabilities_unknown_to_the_kernel_are_skipped() {
        let oci: Capabilities =
            serde_json::from_str(r#"["CAP_CHOWN","CAP_CHECKPOINT_RESTORE"]"#).unwrap();
        // A kernel older than 5.9 has no CAP_CHECKPOINT_RESTORE.
        let mut old_kernel = caps::all();
        old_kernel.remove(&caps::Capability::CAP_CHECKPOINT_RESTORE);
        let resolved = resolve("bounding", Some(&oci), &old_kernel);
        assert_eq!(
            resolved,
            [caps::Capability::CAP_CHOWN]
                .into_iter()
                .collect::<CapsHashSet>()
        );
        assert!(resolve("bounding", None, &old_kernel).is_empty());
    }

    #[test]
    fn every_rlimit_type_has_a_resource() {
        // A compile-time exhaustive match; this checks the names the errors use.
        let r: PosixRlimit =
            serde_json::from_str(r#"{"type":"RLIMIT_NOFILE","soft":1,"hard":2}"#).unwrap();
        assert_eq!(r.typ().to_string(), "RLIMIT_NOFILE");
        assert_eq!(
            resource(PosixRlimitType::RlimitRttime),
            nix::sys::resource::Resource::RLIMIT_RTTIME
        );
    }

    #[test]
    fn kernel_bounding_then_uid_change_then_apply() {
        require_root();
        let spec: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_CHOWN","CAP_KILL","CAP_NET_BIND_SERVICE"],
                "effective":["CAP_CHOWN","CAP_KILL"],
                "permitted":["CAP_CHOWN","CAP_KILL"],
                "inheritable":["CAP_CHOWN"],
                "ambient":["CAP_CHOWN"]}"#,
        )
        .unwrap();
        let (chown, kill, bind) = (1u64 << 0, 1u64 << 5, 1u64 << 10);
        run_in_child(|| {
            drop_bounding(&spec).map_err(|e| e.to_string())?;
            // What the process setup does between the two calls.
            caps::securebits::set_keepcaps(true).map_err(|e| e.to_string())?;
            let nobody = nix::unistd::Gid::from_raw(65534);
            nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
            nix::unistd::setgid(nobody).map_err(|e| format!("setgid: {e}"))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534))
                .map_err(|e| format!("setuid: {e}"))?;
            apply(&spec).map_err(|e| e.to_string())?;

            let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
            for (field, want) in [
                ("CapBnd:", chown | kill | bind),
                ("CapEff:", chown | kill),
                ("CapPrm:", chown | kill),
                ("CapInh:", chown),
                ("CapAmb:", chown),
            ] {
                let got = status_mask(&status, field)?;
                if got != want {
                    return Err(format!("{field} is {got:016x}, expected {want:016x}"));
                }
            }
            Ok(())
        });
    }

    #[test]
    fn kernel_rlimit_nofile_lowered_and_raise_clamped() {
        require_root();
        let lower: Vec<PosixRlimit> =
            serde_json::from_str(r#"[{"type":"RLIMIT_NOFILE","soft":32,"hard":64}]"#).unwrap();
        let raise: Vec<PosixRlimit> =
            serde_json::from_str(r#"[{"type":"RLIMIT_NOFILE","soft":128,"hard":128}]"#).unwrap();
        let inverted: Vec<PosixRlimit> =
            serde_json::from_str(r#"[{"type":"RLIMIT_NOFILE","soft":64,"hard":16}]"#).unwrap();
        run_in_child(|| {
            set_rlimits(&lower).map_err(|e| e.to_string())?;
            let got = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_err(|e| e.to_string())?;
            if got != (32, 64) {
                return Err(format!(
                    "RLIMIT_NOFILE read back as {got:?}, expected (32, 64)"
                ));
            }
            // Same outcome with or without CAP_SYS_RESOURCE on the host.
            caps::drop(None, CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE)
                .map_err(|e| e.to_string())?;
            // Above the hard limit without CAP_SYS_RESOURCE: clamped to the ceiling.
            set_rlimits(&raise).map_err(|e| e.to_string())?;
            let got = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_err(|e| e.to_string())?;
            if got != (64, 64) {
                return Err(format!(
                    "raise above hard limit gave {got:?}, expected (64, 64)"
                ));
            }
            let msg = match set_rlimits(&inverted) {
                Ok(()) => return Err("soft above hard succeeded".into()),
                Err(e) => e.to_string(),
            };
            if !msg.contains("soft limit is above the hard limit") {
                return Err(format!("unhelpful error: {msg}"));
            }
            Ok(())
        });
    }
}
