//! The container's terminal: a pty made inside the container's devpts, whose master goes to
//! the caller over `--console-socket` with SCM_RIGHTS (as runc and conmon expect).

use crate::runtime::error::{Context, Error, Result};
use nix::fcntl::OFlag;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects to the caller's console socket; the connected fd is inherited by the container.
pub fn connect(path: &Path) -> Result<OwnedFd> {
    let s = UnixStream::connect(path)
        .ctx(|| format!("connect to console socket {}", path.display()))?;
    Ok(s.into())
}

/// The two ends for a process's terminal: the fd the child sends its pty master to (the
/// caller's `--console-socket`), and, when there is no socket but a terminal is wanted in the
/// foreground, ferry's own end, which [`attach`] proxies to ferry's terminal.
pub fn ends(socket: Option<&Path>, terminal: bool) -> Result<(Option<OwnedFd>, Option<OwnedFd>)> {
    Ok(match (socket, terminal) {
        (Some(p), _) => (Some(connect(p)?), None),
        (None, true) => {
            let (a, b) = UnixStream::pair().ctx(|| "socketpair for the terminal")?;
            (Some(OwnedFd::from(a)), Some(OwnedFd::from(b)))
        }
        (None, false) => (None, None),
    })
}

/// Receives the pty master on ferry's own end and copies it to and from ferry's terminal.
pub fn attach(ours: Option<OwnedFd>) -> Result<()> {
    if let Some(sock) = ours {
        let master = recv_fd(sock.as_raw_fd())?;
        std::thread::spawn(move || proxy(master));
    }
    Ok(())
}

/// In the container, after pivot_root: opens a new pty from /dev/ptmx, sends the master over
/// `socket`, binds the slave on /dev/console and makes it the controlling terminal and stdio.
pub fn setup_pty(socket: &OwnedFd, size: Option<(u16, u16)>) -> Result<()> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "open /dev/ptmx in the container")?;
    nix::pty::grantpt(&master).ctx(|| "grantpt")?;
    nix::pty::unlockpt(&master).ctx(|| "unlockpt")?;
    let slave_name = nix::pty::ptsname_r(&master).ctx(|| "ptsname")?;
    if let Some((rows, cols)) = size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize we own.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    send_fd(
        socket.as_raw_fd(),
        master.as_raw_fd(),
        slave_name.as_bytes(),
    )?;
    drop(master);

    let slave = nix::fcntl::open(
        slave_name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open {slave_name}"))?;
    let console = Path::new("/dev/console");
    if !console.exists() {
        let _ = std::fs::File::create(console);
    }
    if console.exists() {
        nix::mount::mount(
            Some(slave_name.as_str()),
            console,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .ctx(|| "bind the pty on /dev/console")?;
    }
    for fd in 0..3 {
        // SAFETY: dup2 onto the stdio numbers; the slave stays open.
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "dup2 pty onto stdio");
        }
    }
    // SAFETY: TIOCSCTTY on our own session leader's new terminal.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(std::io::Error::last_os_error())
            .ctx(|| "make the pty the controlling terminal");
    }
    Ok(())
}

pub fn send_fd(socket: RawFd, fd: RawFd, payload: &[u8]) -> Result<()> {
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(payload)];
    sendmsg::<()>(socket, &iov, &cmsg, MsgFlags::empty(), None)
        .ctx(|| "send the pty master over the console socket")?;
    Ok(())
}

/// The receiving side: one fd from an SCM_RIGHTS message (ferry's own `run` with a terminal,
/// and tests acting as conmon).
pub fn recv_fd(socket: RawFd) -> Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ctx(|| "receive the pty master")?;
    for c in msg.cmsgs().ctx(|| "read control messages")? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(Error::Other("console socket message carried no fd".into()))
}

/// Copies between our terminal and the container's pty master until the master closes:
/// for `ferry run`/`exec` with a terminal and no `--console-socket`.
pub fn proxy(master: OwnedFd) {
    let master_fd = master.into_raw_fd();
    let raw = RawTerminal::enter(0);
    let input = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: plain read/write on fds that stay open for the life of the process.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            if unsafe { libc::write(master_fd, buf.as_ptr().cast(), n as usize) } <= 0 {
                break;
            }
        }
    });
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: as above.
        let n = unsafe { libc::read(master_fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        if unsafe { libc::write(1, buf.as_ptr().cast(), n as usize) } <= 0 {
            break;
        }
    }
    drop(raw);
    drop(input); // the reader thread ends with the process
}

/// Puts a terminal in raw mode for the life of the value.
struct RawTerminal {
    fd: RawFd,
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    fn enter(fd: RawFd) -> RawTerminal {
        // SAFETY: fd 0 stays open while we run.
        let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let saved = nix::sys::termios::tcgetattr(bfd).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            nix::sys::termios::cfmakeraw(&mut raw);
            let _ = nix::sys::termios::tcsetattr(bfd, nix::sys::termios::SetArg::TCSANOW, &raw);
        }
        RawTerminal { fd, saved }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // SAFETY: as in enter.
            let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
            let _ = nix::sys::termios::tcsetattr(bfd, nix::sys::termios::SetArg::TCSANOW, t);
        }
    }
}
