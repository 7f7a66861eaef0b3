//! Supervising a container from the ferry process that started it (`run`, `exec`): ferry is
//! a child subreaper, so the container's init is re-parented to it and its exit status can be
//! collected; signals sent to ferry are forwarded to the container.

use crate::runtime::error::{Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Signals forwarded to the container: everything a person or a tool sends to stop or poke a
/// process, not the ones that mean ferry itself crashed.
const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGALRM,
    Signal::SIGPIPE,
];

/// Makes this process a subreaper and blocks the forwarded signals and SIGCHLD, so none is
/// lost between fork and the wait loop. Children must call [`unblock_all`] first thing.
pub fn become_supervisor() -> Result<SigSet> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "PR_SET_CHILD_SUBREAPER");
    }
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(*s);
    }
    set.thread_block().ctx(|| "block signals")?;
    Ok(set)
}

pub fn unblock_all() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Waits for `pid` to exit while forwarding signals to it and reaping every other child
/// (orphans re-parented to us). Returns the shell-style exit code: the status, or 128+signal.
pub fn supervise(pid: i32, set: &SigSet) -> Result<i32> {
    let sfd = SignalFd::new(set).ctx(|| "signalfd")?;
    let target = Pid::from_raw(pid);
    loop {
        if let Some(code) = reap(target)? {
            return Ok(code);
        }
        match sfd.read_signal() {
            Ok(Some(info)) => {
                let signo = info.ssi_signo as i32;
                if signo != libc::SIGCHLD {
                    // SAFETY: kill with a signal number the kernel gave us.
                    unsafe { libc::kill(pid, signo) };
                }
            }
            Ok(None) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).ctx(|| "read signalfd"),
        }
    }
}

/// Reaps every exited child without blocking; the exit code of `target` if it was one of them.
fn reap(target: Pid) -> Result<Option<i32>> {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p == target => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == target => {
                return Ok(Some(128 + sig as i32));
            }
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) => continue,
            Err(nix::errno::Errno::ECHILD) => return Ok(Some(255)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).ctx(|| "waitpid"),
        }
    }
}

/// Waits for one direct child (a setup stage) and ignores its status.
pub fn reap_stage(pid: i32) {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    }
}
