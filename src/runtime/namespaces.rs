//! Namespaces from the spec: which to create, which to join by path, and the loopback
//! interface a new network namespace needs.

use crate::runtime::error::{Context, Error, Result};
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The name under `/proc/<pid>/ns/`.
pub fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Runs `f` on a thread of its own that joined `pid`'s namespace of type `t`, and waits for
/// it: `setns` acts on the calling thread only (a mount namespace also needs the thread's
/// own filesystem context, which it gets first).
pub fn on_thread_in<T: Send + 'static>(
    pid: i32,
    t: LinuxNamespaceType,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<std::io::Result<T>> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/{}", proc_name(t)))?;
    std::thread::spawn(move || {
        if t == LinuxNamespaceType::Mount {
            nix::sched::unshare(CloneFlags::CLONE_FS)?;
        }
        nix::sched::setns(&ns, flag(t))?;
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other(format!("work in a {} namespace panicked", proc_name(t))))
}

pub fn list(spec: &Spec) -> Vec<LinuxNamespace> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
}

pub fn has(spec: &Spec, t: LinuxNamespaceType) -> bool {
    list(spec).iter().any(|n| n.typ() == t)
}

/// True when the spec asks for a new (not joined) namespace of type `t`.
pub fn creates(spec: &Spec, t: LinuxNamespaceType) -> bool {
    list(spec)
        .iter()
        .any(|n| n.typ() == t && n.path().is_none())
}

pub fn join(ns: &LinuxNamespace) -> Result<()> {
    let path = ns.path().as_ref().expect("join needs a path");
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open namespace {}", path.display()))?;
    nix::sched::setns(fd, flag(ns.typ()))
        .ctx(|| format!("join {} namespace {}", proc_name(ns.typ()), path.display()))
}

/// Every spec namespace must be one this kernel has.
pub fn check(spec: &Spec) -> Result<()> {
    for ns in list(spec) {
        let name = proc_name(ns.typ());
        if !std::path::Path::new(&format!("/proc/self/ns/{name}")).exists() {
            return Err(Error::Other(format!(
                "this kernel has no {name} namespace, which linux.namespaces asks for"
            )));
        }
    }
    if !has(spec, LinuxNamespaceType::Mount) {
        return Err(Error::Other(
            "linux.namespaces has no mount namespace: ferry needs one to build the rootfs".into(),
        ));
    }
    Ok(())
}

/// A new network namespace starts with `lo` down; runc brings it up, and programs expect it.
pub fn loopback_up() -> Result<()> {
    // SAFETY: plain ioctls on a socket we own, with a zeroed ifreq naming "lo".
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "socket for loopback");
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut r = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(sock, libc::SIOCSIFFLAGS, &ifr);
        }
        let err = std::io::Error::last_os_error();
        libc::close(sock);
        if r != 0 {
            return Err(err).ctx(|| "bring up lo");
        }
    }
    Ok(())
}
