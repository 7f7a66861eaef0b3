//! Device rules on cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program assembled from the OCI
//! rules and attached to the container's cgroup. v2 has no devices.allow/deny files; the
//! kernel asks this program for every open and mknod of a device node.
//!
//! Semantics are v1's: rules apply in order, the last one that matches decides, and what no
//! rule matches is denied. The program checks the rules last to first and returns at the
//! first match.

use crate::runtime::error::{Error, Result};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

// From linux/bpf.h.
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One eBPF instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// r<dst> = *(u32 *)(r1 + off): a field of struct bpf_cgroup_dev_ctx.
const fn ctx_field(dst: u8, off: i16) -> Insn {
    insn(0x61, dst, 1, off, 0)
}
const fn and32(dst: u8, imm: i32) -> Insn {
    insn(0x54, dst, 0, 0, imm)
}
const fn rsh32(dst: u8, imm: i32) -> Insn {
    insn(0x74, dst, 0, 0, imm)
}
const fn mov32_reg(dst: u8, src: u8) -> Insn {
    insn(0xbc, dst, src, 0, 0)
}
/// if (u32)r<dst> != imm skip `off` instructions.
const fn jne32(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x56, dst, 0, off, imm)
}
const fn jeq32(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x16, dst, 0, off, imm)
}
const fn ret(value: i32) -> [Insn; 2] {
    [insn(0xb7, 0, 0, 0, value), insn(0x95, 0, 0, 0, 0)]
}

fn access_bits(access: Option<&str>) -> Result<i32> {
    let a = access.filter(|a| !a.is_empty()).unwrap_or("rwm");
    let mut bits = 0;
    for c in a.chars() {
        bits |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => {
                return Err(Error::Cgroup(format!(
                    "device rule access {a:?} may only contain r, w and m"
                )));
            }
        };
    }
    Ok(bits)
}

/// The program for `rules`. Registers: r2 device type, r3 requested access, r4 major,
/// r5 minor, r6 scratch.
pub fn program(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>> {
    let mut prog = vec![
        ctx_field(2, 0),
        and32(2, 0xffff),
        ctx_field(3, 0),
        rsh32(3, 16),
        ctx_field(4, 4),
        ctx_field(5, 8),
    ];
    for rule in rules.iter().rev() {
        let typ = match rule.typ().unwrap_or_default() {
            LinuxDeviceType::A => None,
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
            LinuxDeviceType::B => Some(DEV_BLOCK),
            // fifos are not governed by the device cgroup.
            LinuxDeviceType::P => continue,
        };
        let access = access_bits(rule.access().as_deref())?;
        // Conditions, each "if it does not hold, skip to the next rule".
        let mut conds: Vec<Vec<Insn>> = vec![];
        if let Some(t) = typ {
            conds.push(vec![jne32(2, t, 0)]);
        }
        if let Some(m) = rule.major().filter(|m| *m >= 0) {
            conds.push(vec![jne32(4, m as i32, 0)]);
        }
        if let Some(m) = rule.minor().filter(|m| *m >= 0) {
            conds.push(vec![jne32(5, m as i32, 0)]);
        }
        if rule.allow() {
            // Allowed only if every requested bit is allowed by the rule.
            if access != 7 {
                conds.push(vec![mov32_reg(6, 3), and32(6, !access & 7), jne32(6, 0, 0)]);
            }
        } else if access != 7 {
            // Denied if any requested bit is one the rule denies.
            conds.push(vec![mov32_reg(6, 3), and32(6, access), jeq32(6, 0, 0)]);
        }
        let body = ret(if rule.allow() { 1 } else { 0 });
        let unconditional = conds.is_empty();
        let mut block: Vec<Insn> = conds.into_iter().flatten().collect();
        let len = block.len() + body.len();
        // Each jump skips what is left of this rule's block.
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == 0x56 || ins.code == 0x16 {
                ins.off = (len - i - 1) as i16;
            }
        }
        block.extend_from_slice(&body);
        prog.extend(block);
        if unconditional {
            // It matches everything: the earlier rules can never decide (and the verifier
            // refuses unreachable instructions).
            return Ok(prog);
        }
    }
    prog.extend_from_slice(&ret(0));
    Ok(prog)
}

fn bpf(cmd: libc::c_int, attr: &mut [u8]) -> std::io::Result<i64> {
    // SAFETY: the bpf syscall reads (and for some commands writes) `attr`, which we own.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn load(prog: &[Insn]) -> Result<OwnedFd> {
    let license = b"Apache-2.0\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE);
    put_u32(&mut attr, 4, prog.len() as u32);
    put_u64(&mut attr, 8, prog.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 24, 1); // log_level
    put_u32(&mut attr, 28, log.len() as u32);
    put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: the kernel returned a new fd.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            Err(Error::Cgroup(format!(
                "load the device program ({} instructions): {e}{}",
                prog.len(),
                if text.is_empty() {
                    String::new()
                } else {
                    format!("; verifier: {text}")
                }
            )))
        }
    }
}

/// Ids of the device programs attached to the cgroup open at `cg`.
fn attached(cg: &OwnedFd) -> Vec<u32> {
    let mut ids = vec![0u32; 64];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, cg.as_raw_fd() as u32); // target_fd
    put_u32(&mut attr, 4, BPF_CGROUP_DEVICE); // attach_type
    put_u64(&mut attr, 16, ids.as_mut_ptr() as u64); // prog_ids
    put_u32(&mut attr, 24, ids.len() as u32); // prog_cnt
    if bpf(BPF_PROG_QUERY, &mut attr).is_err() {
        return vec![];
    }
    let n = u32::from_ne_bytes(attr[24..28].try_into().unwrap()) as usize;
    ids.truncate(n.min(ids.len()));
    ids
}

/// Replaces the device program of the cgroup at `dir` with one for `rules`: the new one is
/// attached before the old ones are detached, so there is no moment without rules.
pub fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let prog = load(&program(rules)?)?;
    let cg: OwnedFd = std::fs::File::open(dir)
        .map_err(|e| Error::Cgroup(format!("open {}: {e}", dir.display())))?
        .into();
    let old = attached(&cg);
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, cg.as_raw_fd() as u32);
    put_u32(&mut attr, 4, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 8, BPF_CGROUP_DEVICE);
    put_u32(&mut attr, 12, BPF_F_ALLOW_MULTI);
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| {
        Error::Cgroup(format!(
            "attach the device program to {}: {e}",
            dir.display()
        ))
    })?;
    for id in old {
        let mut a = [0u8; 128];
        put_u32(&mut a, 0, id);
        let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut a) else {
            continue;
        };
        // SAFETY: the kernel returned a new fd.
        let old_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut d = [0u8; 128];
        put_u32(&mut d, 0, cg.as_raw_fd() as u32);
        put_u32(&mut d, 4, old_fd.as_raw_fd() as u32);
        put_u32(&mut d, 8, BPF_CGROUP_DEVICE);
        let _ = bpf(BPF_PROG_DETACH, &mut d);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Vec<LinuxDeviceCgroup> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn jumps_land_on_the_next_rule() {
        let p = program(&rules(
            r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":3,"access":"rw"}]"#,
        ))
        .unwrap();
        // 6 loads; the last rule first: 3 compares + 3 access insns + 2 return; then the deny-all
        // rule (no conditions): 2 return, after which nothing can run.
        assert_eq!(p.len(), 6 + 8 + 2);
        // Every jump of the first block lands just past its return.
        for (i, ins) in p[6..14].iter().enumerate() {
            if ins.code == 0x56 {
                assert_eq!(i as i16 + 1 + ins.off, 8, "jump at {i}");
            }
        }
        assert_eq!(p[12], insn(0xb7, 0, 0, 0, 1));
    }

    #[test]
    fn bad_access_is_refused() {
        assert!(program(&rules(r#"[{"allow":true,"access":"rx"}]"#)).is_err());
    }

    /// The program on the real kernel: a child in a fresh cgroup2 directory with only
    /// /dev/null allowed can open /dev/null but not /dev/zero.
    #[test]
    fn kernel_enforces_the_rules() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "needs root to load BPF programs and make cgroups: run the tests as root"
        );
        let base = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| {
                nix::sys::statfs::statfs(*p)
                    .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
                    .unwrap_or(false)
            })
            .expect("no cgroup2 hierarchy mounted");
        let dir = base.join(format!("ferry-devtest-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let rules = rules(
            r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":3,"access":"rw"}]"#,
        );
        apply(&dir, &rules).unwrap();
        // Applying again replaces the program rather than stacking a second one.
        apply(&dir, &rules).unwrap();
        let cg: OwnedFd = std::fs::File::open(&dir).unwrap().into();
        assert_eq!(attached(&cg).len(), 1);
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only moves itself, opens two files and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let me = std::process::id().to_string();
                let ok = std::fs::write(dir.join("cgroup.procs"), me).is_ok()
                    && std::fs::File::open("/dev/null").is_ok()
                    && std::fs::File::open("/dev/zero")
                        .err()
                        .is_some_and(|e| e.raw_os_error() == Some(libc::EPERM));
                let _ = nix::unistd::write(&w, if ok { b"1" } else { b"0" });
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                let mut b = [0u8; 1];
                let _ = nix::unistd::read(&r, &mut b);
                let _ = nix::sys::wait::waitpid(child, None);
                let _ = std::fs::remove_dir(&dir);
                assert_eq!(&b, b"1", "/dev/null should open and /dev/zero be refused");
            }
        }
    }
}
