//! The child side of create and exec. Stage 1 enters or creates the namespaces (a new pid
//! namespace only applies to children), then forks the container process, which builds the
//! root filesystem (init only), drops to the process's user and execs the program.

use crate::runtime::error::{Context, Error, Result};
use crate::runtime::process::channel::{Channel, Msg};
use crate::runtime::process::wait;
use crate::runtime::{capabilities, console, hooks, namespaces, rootfs, seccomp};
use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub enum Kind<'a> {
    /// The container's init: new namespaces, rootfs, then wait on the exec fifo.
    Init {
        rootfs: &'a Path,
        fifo: &'a Path,
        no_pivot: bool,
        no_new_keyring: bool,
    },
    /// A process joining the namespaces of the running init `pid`.
    Exec { init_pid: i32 },
}

pub struct Setup<'a> {
    pub spec: &'a Spec,
    pub process: &'a Process,
    pub kind: Kind<'a>,
    pub console: Option<OwnedFd>,
    pub cgroup_dirs: Vec<(String, PathBuf)>,
    pub preserve_fds: u32,
}

/// Runs in the forked stage-1 child; never returns.
pub fn stage1(setup: Setup, chan: Channel) -> ! {
    wait::unblock_all();
    let code = match stage1_inner(setup, &chan) {
        Ok(()) => 0,
        Err(e) => {
            let _ = chan.send(&Msg::Failed(e.to_string()));
            1
        }
    };
    // SAFETY: leaving a forked child without running the parent's atexit handlers.
    unsafe { libc::_exit(code) }
}

fn stage1_inner(setup: Setup, chan: &Channel) -> Result<()> {
    chan.expect(&Msg::Continue, "waiting to be placed in the cgroup")?;
    // Before any namespace: raising a hard limit needs CAP_SYS_RESOURCE in the host's user
    // namespace, which a process in a user namespace of its own never has (runc does the
    // same). The container process inherits them across the fork below.
    if let Some(r) = setup.process.rlimits() {
        capabilities::set_rlimits(r)?;
    }
    match setup.kind {
        Kind::Init { .. } => enter_new_namespaces(setup.spec, chan)?,
        Kind::Exec { init_pid } => join_namespaces_of(init_pid)?,
    }
    // The parent must hear the container process's pid before anything the process itself
    // says on the shared channel: the process waits until this end of a pipe closes, which
    // happens once the pid is sent. (Without it the process's first message could overtake
    // the pid under load, and the parent gave up on an "unexpected" RunCreateHooks.)
    let (gate_r, gate_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "pipe for the setup order")?;
    // SAFETY: single-threaded child; the grandchild only runs our own setup code.
    match unsafe { nix::unistd::fork() }.ctx(|| "fork the container process")? {
        ForkResult::Child => {
            drop(gate_w);
            let mut b = [0u8; 1];
            while let Err(nix::errno::Errno::EINTR) = nix::unistd::read(gate_r.as_fd(), &mut b) {}
            drop(gate_r);
            let r = match setup.kind {
                Kind::Init { .. } => init_main(&setup, chan),
                Kind::Exec { .. } => exec_main(&setup, chan),
            };
            let e = r
                .err()
                .unwrap_or_else(|| Error::Other("setup ended without exec".into()));
            // After `Ready` nobody listens any more: the container's stderr is all we have.
            if chan.send(&Msg::Failed(e.to_string())).is_err() {
                eprintln!("ferry: {e}");
            }
            // SAFETY: as in stage1.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => {
            drop(gate_r);
            let sent = chan.send(&Msg::Pid(child.as_raw()));
            drop(gate_w);
            sent
        }
    }
}

fn enter_new_namespaces(spec: &Spec, chan: &Channel) -> Result<()> {
    let all = namespaces::list(spec);
    if let Some(user) = all.iter().find(|n| n.typ() == LinuxNamespaceType::User) {
        if user.path().is_some() {
            namespaces::join(user)?;
        } else {
            nix::sched::unshare(CloneFlags::CLONE_NEWUSER).ctx(|| "unshare the user namespace")?;
            chan.send(&Msg::WriteIdMaps)?;
            chan.expect(&Msg::Continue, "waiting for uid/gid maps")?;
        }
        // Become root of the new namespace (uid 0 there is mapped by now).
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .ctx(|| "setresgid 0 in the user namespace (is gid 0 mapped?)")?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .ctx(|| "setresuid 0 in the user namespace (is uid 0 mapped?)")?;
    }
    let mut new = CloneFlags::empty();
    for ns in all.iter().filter(|n| n.typ() != LinuxNamespaceType::User) {
        if ns.path().is_some() {
            namespaces::join(ns)?;
        } else {
            new |= namespaces::flag(ns.typ());
        }
    }
    nix::sched::unshare(new).ctx(|| format!("unshare namespaces {new:?}"))
}

/// Joins every namespace of the running init that differs from ours, user first (it grants
/// the capabilities the other joins need).
fn join_namespaces_of(pid: i32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let kinds = [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    // Open them all first: once in the container's mount namespace /proc may differ.
    let mut fds = vec![];
    for (name, flag) in kinds {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let (Ok(a), Ok(b)) = (
            std::fs::metadata(&theirs),
            std::fs::metadata(format!("/proc/self/ns/{name}")),
        ) else {
            continue;
        };
        if a.ino() == b.ino() && a.dev() == b.dev() {
            continue;
        }
        let fd = std::fs::File::open(&theirs).ctx(|| format!("open {theirs}"))?;
        fds.push((name, flag, fd));
    }
    for (name, flag, fd) in fds {
        nix::sched::setns(&fd, flag).ctx(|| format!("join the container's {name} namespace"))?;
    }
    Ok(())
}

fn init_main(setup: &Setup, chan: &Channel) -> Result<()> {
    let Kind::Init {
        rootfs: root,
        fifo,
        no_pivot,
        no_new_keyring,
    } = setup.kind
    else {
        unreachable!()
    };
    let spec = setup.spec;
    nix::unistd::setsid().ctx(|| "setsid")?;
    let in_userns = namespaces::has(spec, LinuxNamespaceType::User);
    rootfs::prepare(spec, root, &setup.cgroup_dirs, in_userns)?;
    if namespaces::creates(spec, LinuxNamespaceType::Network) {
        namespaces::loopback_up()?;
    }
    chan.send(&Msg::RunCreateHooks)?;
    let state = match chan.recv()? {
        Some(Msg::State(s)) => s,
        Some(Msg::Failed(e)) => return Err(Error::Other(e)),
        _ => return Err(Error::Other("parent went away during create hooks".into())),
    };
    hooks::run(
        "createContainer",
        &hooks::of(spec, "createContainer"),
        &state,
    )?;
    // Keep a handle on the fifo: after pivot_root its host path is out of reach.
    let fifo_fd = nix::fcntl::open(
        fifo,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open {}", fifo.display()))?;
    rootfs::enter(root, no_pivot)?;
    reopen_null_stdio()?;

    setup_terminal(setup)?;
    if let Some(h) = spec.hostname() {
        nix::unistd::sethostname(h).ctx(|| format!("sethostname {h}"))?;
    }
    if let Some(d) = spec.domainname() {
        // SAFETY: setdomainname reads len bytes from a live string.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| format!("setdomainname {d}"));
        }
    }
    for (k, v) in spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default()
    {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&path, v.as_bytes()).ctx(|| format!("sysctl {k}={v}"))?;
    }
    rootfs::finalize(spec)?;
    if let Some(adj) = setup.process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .ctx(|| format!("oom_score_adj {adj}"))?;
    }
    if !no_new_keyring {
        join_session_keyring();
    }
    let exec = prepare_exec(setup)?;
    chan.send(&Msg::Ready)?;

    // Block until `ferry start` opens the fifo for reading.
    let w = nix::fcntl::open(
        format!("/proc/self/fd/{}", fifo_fd.as_raw_fd()).as_str(),
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| "open the exec fifo")?;
    nix::unistd::write(&w, b"0").ctx(|| "write the exec fifo")?;
    drop(w);
    drop(fifo_fd);
    hooks::run("startContainer", &hooks::of(spec, "startContainer"), &state)?;
    exec.run()
}

fn exec_main(setup: &Setup, chan: &Channel) -> Result<()> {
    nix::unistd::setsid().ctx(|| "setsid")?;
    reopen_null_stdio()?;
    setup_terminal(setup)?;
    let exec = prepare_exec(setup)?;
    chan.send(&Msg::Ready)?;
    exec.run()
}

/// stdio that is the host's /dev/null becomes the container's own /dev/null: the same
/// device, but on a mount inside the container, so CRIU can checkpoint it (the host's /dev
/// is not among the container's mounts; CRIU fails with "Can't lookup mount"). Mounts are
/// told apart by id, not by filesystem: in a user namespace the container's /dev/null is
/// a bind of the host's, on the same devtmpfs.
fn reopen_null_stdio() -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return Ok(());
    };
    let ours = null.metadata().ctx(|| "stat the container's /dev/null")?;
    if !ours.file_type().is_char_device() {
        return Ok(());
    }
    let fd_mount = |fd| crate::sys::proc::fd_mount_id("self", fd);
    let our_mount = fd_mount(std::os::fd::AsRawFd::as_raw_fd(&null));
    for fd in 0..3 {
        let Ok(m) = std::fs::metadata(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        // Without /proc in the container, by filesystem as before.
        let elsewhere = match (fd_mount(fd), our_mount) {
            (Some(a), Some(b)) => a != b,
            _ => m.dev() != ours.dev(),
        };
        if m.file_type().is_char_device() && m.rdev() == ours.rdev() && elsewhere {
            // SAFETY: dup2 onto one of our stdio numbers.
            if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) } < 0 {
                return Err(std::io::Error::last_os_error()).ctx(|| "dup2 /dev/null");
            }
        }
    }
    Ok(())
}

/// With `process.terminal`, a new pty whose master goes to the console socket.
fn setup_terminal(setup: &Setup) -> Result<()> {
    if !setup.process.terminal().unwrap_or(false) {
        return Ok(());
    }
    let sock = setup.console.as_ref().ok_or_else(|| {
        Error::Other("process.terminal is true but there is no console socket".into())
    })?;
    console::setup_pty(sock, console_size(setup.process))
}

fn console_size(p: &Process) -> Option<(u16, u16)> {
    p.console_size()
        .as_ref()
        .map(|b| (b.height() as u16, b.width() as u16))
}

/// Everything decided before the last step, so the last step can be exec and little else.
struct Exec {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    late_seccomp: Option<seccomp::SeccompProgram>,
    no_new_privs: bool,
}

impl Exec {
    fn run(self) -> Result<()> {
        if self.no_new_privs {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(std::io::Error::last_os_error()).ctx(|| "PR_SET_NO_NEW_PRIVS");
            }
        }
        if let Some(p) = &self.late_seccomp {
            seccomp::install(p)?;
        }
        let e = nix::unistd::execve(&self.path, &self.args, &self.env).unwrap_err();
        Err(Error::Sys {
            context: format!("exec {:?}", self.path),
            errno: e,
        })
    }
}

fn prepare_exec(setup: &Setup) -> Result<Exec> {
    let p = setup.process;
    let nnp = p.no_new_privileges().unwrap_or(false);
    let profile = setup
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().clone());
    let program = profile.as_ref().map(seccomp::compile).transpose()?;
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it before dropping
    // privileges. With it, as late as possible, so fewer of our own syscalls must be allowed.
    let late_seccomp = match program {
        Some(prog) if !nnp => {
            seccomp::install(&prog)?;
            None
        }
        other => other,
    };
    switch_user(p)?;
    nix::unistd::chdir(p.cwd()).ctx(|| format!("chdir to process.cwd {}", p.cwd().display()))?;

    let env: Vec<String> = p.env().clone().unwrap_or_default();
    let args = p.args().clone().unwrap_or_default();
    let path = find_program(&args[0], &env)?;
    keep_only_preserved_fds(setup.preserve_fds)?;
    let cs = |s: &str| CString::new(s).map_err(|_| Error::Other(format!("NUL byte in {s:?}")));
    Ok(Exec {
        path: cs(&path.to_string_lossy())?,
        args: args.iter().map(|a| cs(a)).collect::<Result<_>>()?,
        env: env.iter().map(|a| cs(a)).collect::<Result<_>>()?,
        late_seccomp,
        no_new_privs: nnp,
    })
}

fn switch_user(p: &Process) -> Result<()> {
    let user = p.user();
    if let Some(caps) = p.capabilities() {
        capabilities::drop_bounding(caps)?;
    }
    // Keep the permitted set across the uid change; `apply` then sets exactly what the spec says.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let gids: Vec<Gid> = user
        .additional_gids()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    // setgroups is refused in a user namespace whose setgroups file says deny; only an
    // explicit list of groups makes that an error.
    if let Err(e) = nix::unistd::setgroups(&gids)
        && !gids.is_empty()
    {
        return Err(e).ctx(|| format!("setgroups {gids:?}"));
    }
    let gid = Gid::from_raw(user.gid());
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("setgid {gid}"))?;
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("setuid {uid}"))?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    if let Some(caps) = p.capabilities() {
        capabilities::apply(caps)?;
    }
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}

/// Resolves the program as execvp would, with the process's own PATH, so a missing program
/// fails `create` with a clear message instead of the container dying at `start`.
pub fn find_program(name: &str, env: &[String]) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if is_exec(&p) {
            Ok(p)
        } else {
            Err(Error::Other(format!(
                "exec: {name:?}: no such executable file in the container"
            )))
        };
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| is_exec(p))
        .ok_or_else(|| {
            Error::Other(format!(
                "exec: {name:?}: executable file not found in $PATH ({path})"
            ))
        })
}

/// fds 3..3+n stay open across exec (`--preserve-fds`); every other fd above 2 is closed.
fn keep_only_preserved_fds(n: u32) -> Result<()> {
    let keep_below = 3 + n as i32;
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .ctx(|| "list /proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd < 3 {
            continue;
        }
        // SAFETY: fcntl on fd numbers of our own process; a closed one just fails.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 {
                continue;
            }
            let flags = if fd < keep_below {
                flags & !libc::FD_CLOEXEC
            } else {
                flags | libc::FD_CLOEXEC
            };
            libc::fcntl(fd, libc::F_SETFD, flags);
        }
    }
    Ok(())
}

/// A fresh session keyring, so containers do not share the host's keys (runc does the same).
fn join_session_keyring() {
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL) creates an anonymous keyring.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, 1, std::ptr::null::<libc::c_char>()) };
    if r < 0 {
        tracing::debug!("no session keyring: {}", std::io::Error::last_os_error());
    }
}
