//! The RPC loop over `criu swrk`: one criu process per request, talking protobuf over a
//! SOCK_SEQPACKET socketpair (one message per packet). Notifications are answered through the
//! caller's [`Notify`]; fds CRIU sends along (SCM_RIGHTS) are handed to it.

use super::Error;
use super::log::excerpt;
use super::notify::{CallbackError, Notify};
use super::options::FIRST_EXTRA_FD;
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, Shutdown, SockFlag, SockType, recvmsg, send,
    shutdown, socketpair,
};
use protobuf::Message;
use rust_criu::rust_criu_protobuf::rpc::{Criu_req, Criu_req_type, Criu_resp};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The fd number of the RPC socket in criu (`criu swrk 3`).
const RPC_FD: RawFd = 3;
/// CRIU's messages are small; a restore response or notification is a few hundred bytes.
const RECV_BUF: usize = 64 * 1024;
/// CRIU sends at most one fd per message (the orphan pts master); room for a few more.
const MAX_FDS_PER_MESSAGE: usize = 8;

/// The caller's hook that runs with criu's pid before criu makes any task.
pub(crate) type BeforeTasks<'a> = Box<dyn FnOnce(i32) -> Result<(), CallbackError> + Send + 'a>;

/// One request to one `criu swrk` process.
pub(crate) struct Call<'a> {
    /// The operation's name in errors: "dump", "restore", "version", …
    pub op: &'static str,
    pub req: Criu_req,
    /// Fds criu inherits at FIRST_EXTRA_FD, FIRST_EXTRA_FD + 1, …
    pub extra_fds: Vec<OwnedFd>,
    /// criu's stdin, stdout, stderr; /dev/null, /dev/null and ours when None.
    pub stdio: Option<[OwnedFd; 3]>,
    pub notify: &'a mut dyn Notify,
    /// Runs with criu's pid after it started and before it makes any task. With notify
    /// scripts on, it runs on a thread while criu starts (criu probes the kernel for 30 ms
    /// first, and a process's first cgroup move waits out an RCU grace period of 10-30 ms),
    /// and criu's first notification (a restore's `pre-restore`, sent before it forks
    /// anything) is answered only once the hook is done; without them it runs before criu
    /// gets the request.
    pub before_tasks: Option<BeforeTasks<'a>>,
    /// The log criu writes, quoted on failure.
    pub log: Option<PathBuf>,
    /// A non-zero exit after a successful answer is fine: a PRE_DUMP criu waits for the next
    /// pre-dump request and fails when we hang up instead.
    pub tolerate_exit_status: bool,
}

/// A running `criu swrk` and our end of its socket.
struct Swrk {
    child: Child,
    sock: OwnedFd,
}

impl Swrk {
    fn spawn(
        binary: &Path,
        extra_fds: Vec<OwnedFd>,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<Swrk, Error> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| io_error("socketpair for criu swrk", e.into()))?;

        // The child moves each fd to its number with dup2. Copies above every target number
        // keep one dup2 from overwriting a source that has not been moved yet; they are
        // CLOEXEC, so neither they nor the originals reach criu or any other child.
        let lowest = (FIRST_EXTRA_FD + extra_fds.len() as RawFd).max(10);
        let mut copies = Vec::with_capacity(extra_fds.len() + 1);
        let mut moves: Vec<(RawFd, RawFd)> = Vec::with_capacity(extra_fds.len() + 1);
        for (fd, target) in std::iter::once(&theirs)
            .chain(extra_fds.iter())
            .zip(RPC_FD..)
        {
            let copy = dup_above(fd, lowest)?;
            moves.push((copy.as_raw_fd(), target));
            copies.push(copy);
        }

        let mut cmd = Command::new(binary);
        cmd.arg("swrk").arg(RPC_FD.to_string());
        match stdio {
            Some([i, o, e]) => {
                cmd.stdin(Stdio::from(i))
                    .stdout(Stdio::from(o))
                    .stderr(Stdio::from(e));
            }
            None => {
                cmd.stdin(Stdio::null()).stdout(Stdio::null());
            }
        }
        // SAFETY: between fork and exec the closure only makes async-signal-safe calls
        // (prctl, sigprocmask, dup2) on numbers computed before the fork; it allocates
        // nothing.
        unsafe {
            cmd.pre_exec(move || {
                // criu must not outlive us half-way through a dump (runc sets it too).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Signals ferry blocks for itself (sys::interrupt) are criu's to receive.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for &(from, to) in &moves {
                    // dup2 clears CLOEXEC on the new fd: exactly these fds reach criu.
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
        // Our copy of criu's end must go, or a crashed criu would leave us waiting forever
        // instead of reading EOF.
        drop(theirs);
        drop(copies);
        drop(extra_fds);
        Ok(Swrk { child, sock: ours })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn send(&self, req: &Criu_req) -> Result<(), Error> {
        let bytes = req
            .write_to_bytes()
            .map_err(|e| self.rpc(format!("cannot encode the request: {e}")))?;
        loop {
            match send(self.sock.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => return Err(self.rpc(format!("sent {n} of {} bytes", bytes.len()))),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(self.rpc(format!("send: {e}"))),
            }
        }
    }

    /// The next message and the fds that came with it; None when criu hung up.
    fn recv(&self) -> Result<Option<(Criu_resp, Vec<OwnedFd>)>, Error> {
        let mut buf = vec![0u8; RECV_BUF];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
        let (len, truncated, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    // Take ownership of every fd first, so none leaks whatever follows.
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(raw) = c {
                                // SAFETY: the kernel just installed these fds for us.
                                fds.extend(
                                    raw.into_iter()
                                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                                );
                            }
                        }
                    }
                    let truncated = msg
                        .flags
                        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                    break (msg.bytes, truncated, fds);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(self.rpc(format!("recvmsg: {e}"))),
            }
        };
        if len == 0 {
            return Ok(None);
        }
        if truncated {
            return Err(self.rpc(format!(
                "a message from criu did not fit in {RECV_BUF} bytes and {MAX_FDS_PER_MESSAGE} fds"
            )));
        }
        let resp = Criu_resp::parse_from_bytes(&buf[..len])
            .map_err(|e| self.rpc(format!("cannot decode criu's answer: {e}")))?;
        Ok(Some((resp, fds)))
    }

    fn reply_to_notify(&self, success: bool) -> Result<(), Error> {
        let mut req = Criu_req::new();
        req.set_type(Criu_req_type::NOTIFY);
        req.notify_success = Some(success);
        self.send(&req)
    }

    /// Hangs up and waits for criu to exit.
    fn finish(mut self) -> Result<std::process::ExitStatus, Error> {
        // ENOTCONN if criu already closed its end: nothing to do then.
        let _ = shutdown(self.sock.as_raw_fd(), Shutdown::Write);
        self.child
            .wait()
            .map_err(|e| io_error(&format!("waiting for criu (pid {})", self.child.id()), e))
    }

    /// Ends criu without waiting for an answer; used when we cannot go on.
    fn abandon(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn rpc(&self, what: String) -> Error {
        Error::Rpc {
            pid: self.pid(),
            what,
        }
    }
}

fn io_error(context: &str, source: std::io::Error) -> Error {
    Error::Io {
        context: context.to_string(),
        source,
    }
}

/// A CLOEXEC duplicate of `fd` numbered `lowest` or above.
fn dup_above(fd: &OwnedFd, lowest: RawFd) -> Result<OwnedFd, Error> {
    // SAFETY: fcntl on an fd we own; the result is a new fd we then own.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, lowest) };
    if raw < 0 {
        return Err(io_error(
            "duplicating an fd for criu",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fcntl returned a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The response types that end a request (the rest are notifications).
fn is_final(t: Criu_req_type) -> bool {
    matches!(
        t,
        Criu_req_type::DUMP
            | Criu_req_type::PRE_DUMP
            | Criu_req_type::SINGLE_PRE_DUMP
            | Criu_req_type::RESTORE
            | Criu_req_type::FEATURE_CHECK
            | Criu_req_type::VERSION
            | Criu_req_type::CHECK
    )
}

/// The caller's `before_tasks` while it runs beside criu, and once it is done.
enum Hook<'s> {
    Running(std::thread::ScopedJoinHandle<'s, Result<(), CallbackError>>),
    Done(Result<(), CallbackError>),
}

impl Hook<'_> {
    /// Waits for a running hook; true when it failed.
    fn wait(&mut self) -> bool {
        if let Hook::Running(_) = self
            && let Hook::Running(h) = std::mem::replace(self, Hook::Done(Ok(())))
        {
            *self = Hook::Done(h.join().unwrap_or_else(|_| {
                Err("the hook run before criu makes its tasks panicked".into())
            }));
        }
        matches!(self, Hook::Done(Err(_)))
    }

    fn into_error(mut self, op: &'static str, pid: i32) -> Option<Error> {
        self.wait();
        match self {
            Hook::Done(Err(source)) => Some(Error::BeforeTasks { op, pid, source }),
            _ => None,
        }
    }
}

/// Runs one request through a fresh `criu swrk` and returns CRIU's final answer.
pub(crate) fn call(binary: &Path, c: Call<'_>) -> Result<Criu_resp, Error> {
    let Call {
        op,
        req,
        extra_fds,
        stdio,
        notify,
        before_tasks,
        log,
        tolerate_exit_status,
    } = c;
    let swrk = Swrk::spawn(binary, extra_fds, stdio)?;
    let pid = swrk.pid();
    tracing::debug!(op, pid, "criu swrk started");
    // The scope joins a hook still running when we return early.
    std::thread::scope(|scope| {
        let mut hook = match before_tasks {
            None => Hook::Done(Ok(())),
            Some(h) if req.opts.notify_scripts() => Hook::Running(scope.spawn(move || h(pid))),
            Some(h) => Hook::Done(h(pid)),
        };
        if let Hook::Done(Err(_)) = hook {
            swrk.abandon();
            return Err(hook.into_error(op, pid).expect("the hook failed"));
        }
        if let Err(e) = swrk.send(&req) {
            swrk.abandon();
            return Err(e);
        }

        // The first error wins; we still read on until criu's final answer, so criu can
        // undo what it did (thaw the tasks, kill half-restored ones) before we hang up.
        let mut callback_error: Option<(String, CallbackError)> = None;
        let answer = loop {
            let (resp, fds) = match swrk.recv() {
                Ok(Some(m)) => m,
                Ok(None) => break None,
                Err(e) => {
                    swrk.abandon();
                    return Err(e);
                }
            };
            if resp.type_() == Criu_req_type::NOTIFY && resp.success() {
                let script = resp.notify.script().to_string();
                let npid = resp.notify.pid();
                tracing::debug!(op, script, pid = npid, fds = fds.len(), "criu notification");
                // A failed hook refuses the notification: criu aborts before its tasks.
                let ok = if hook.wait() || callback_error.is_some() {
                    false
                } else {
                    match notify.notify(&script, npid, fds) {
                        Ok(()) => true,
                        Err(e) => {
                            callback_error = Some((script, e));
                            false
                        }
                    }
                };
                if let Err(e) = swrk.reply_to_notify(ok) {
                    swrk.abandon();
                    return Err(e);
                }
                continue;
            }
            if !resp.success() || is_final(resp.type_()) {
                break Some(resp);
            }
            let t = resp.type_();
            swrk.abandon();
            return Err(Error::Rpc {
                pid,
                what: format!("unexpected answer of type {t:?} to a {op} request"),
            });
        };
        let status = swrk.finish()?;
        tracing::debug!(op, pid, %status, "criu swrk exited");
        if let Some(e) = hook.into_error(op, pid) {
            return Err(e);
        }
        finish(
            op,
            status,
            log,
            tolerate_exit_status,
            answer,
            callback_error,
        )
    })
}

/// criu's answer, exit status and log, and a notification callback's error, made one result.
fn finish(
    op: &'static str,
    status: std::process::ExitStatus,
    log: Option<PathBuf>,
    tolerate_exit_status: bool,
    answer: Option<Criu_resp>,
    callback_error: Option<(String, CallbackError)>,
) -> Result<Criu_resp, Error> {
    let quote = |log: &Option<PathBuf>| log.as_deref().map(excerpt).unwrap_or_default();

    if let Some((script, source)) = callback_error {
        return Err(Error::Callback {
            op,
            script,
            log,
            source,
        });
    }
    match answer {
        None => Err(Error::Exited {
            op,
            status,
            excerpt: quote(&log),
            log,
        }),
        Some(resp) if !resp.success() => Err(Error::Failed {
            op,
            errno: resp.cr_errno,
            // CRIU's message is the first Error it logged; a harmless one says nothing.
            errmsg: resp
                .cr_errmsg
                .clone()
                .filter(|m| !m.trim().is_empty() && !super::log::is_harmless(m)),
            excerpt: quote(&log),
            log,
        }),
        Some(_) if !status.success() && !tolerate_exit_status => Err(Error::Exited {
            op,
            status,
            excerpt: quote(&log),
            log,
        }),
        Some(resp) => Ok(resp),
    }
}
