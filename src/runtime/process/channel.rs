//! Messages between the ferry parent and its children, one JSON object per SEQPACKET datagram
//! on a socketpair. A child that dies closes its end, so the parent sees EOF, never a hang.

use crate::runtime::error::{Context, Error, Result};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum Msg {
    /// Parent → child: go on (the child is in its cgroup, its id maps are written, …).
    Continue,
    /// Child → parent: I unshared the user namespace; write my uid/gid maps.
    WriteIdMaps,
    /// Stage-1 → parent: the container process, as the host sees it.
    Pid(i32),
    /// Init → parent: namespaces and mounts are ready; run prestart/createRuntime hooks.
    RunCreateHooks,
    /// Parent → init: create hooks done; the state that createContainer/startContainer get.
    State(crate::runtime::OciState),
    /// Child → parent: the process is ready (init: waiting on the exec fifo; exec: about to exec).
    Ready,
    /// Child → parent: setup failed; the text says what and where.
    Failed(String),
}

pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .ctx(|| "socketpair for the container setup channel")?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    pub fn send(&self, msg: &Msg) -> Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(|e| Error::Other(e.to_string()))?;
        // MSG_NOSIGNAL: a parent that has gone must give EPIPE, not a silent SIGPIPE death.
        nix::sys::socket::send(
            self.fd.as_raw_fd(),
            &bytes,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        )
        .ctx(|| "send on the setup channel")?;
        Ok(())
    }

    /// The next message, or `None` when the other side closed (exited or exec'd).
    pub fn recv(&self) -> Result<Option<Msg>> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = loop {
            match nix::unistd::read(self.fd.as_fd(), &mut buf) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.ctx(|| "receive on the setup channel")?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buf[..n])
            .map(Some)
            .map_err(|e| Error::Other(format!("bad message on the setup channel: {e}")))
    }

    /// Receives a message and fails unless it is the one expected; a `Failed` from the child
    /// becomes the error, EOF means the child died.
    pub fn expect(&self, want: &Msg, what: &str) -> Result<()> {
        match self.recv()? {
            Some(ref m) if m == want => Ok(()),
            Some(Msg::Failed(e)) => Err(Error::Other(e)),
            Some(m) => Err(Error::Other(format!(
                "{what}: unexpected message {m:?} on the setup channel"
            ))),
            None => Err(Error::Other(format!(
                "{what}: the container process exited during setup"
            ))),
        }
    }
}
