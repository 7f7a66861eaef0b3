//! `start`: releases the init, which waits on the exec fifo, to exec the user's program.

use crate::runtime::container::EXEC_FIFO;
use crate::runtime::error::{Context, Error, Result};
use crate::runtime::{Container, Status, hooks};
use std::time::Duration;

impl Container {
    pub fn start(&self) -> Result<()> {
        let status = self.status()?;
        if !status.can_start() {
            let hint = match status {
                Status::Stopped => "; create it again to run it",
                _ => "; it has been started already",
            };
            return Err(self.invalid("start", status, hint));
        }
        let fifo = self.dir.join(EXEC_FIFO);
        // Non-blocking, so a dead init cannot leave us waiting for a writer forever.
        let f = nix::fcntl::open(
            &fifo,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ctx(|| format!("open {}", fifo.display()))?;
        let mut buf = [0u8; 1];
        loop {
            match nix::unistd::read(&f, &mut buf) {
                Ok(1) => break,
                Ok(_) | Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                    if !self.is_init_alive() {
                        let _ = std::fs::remove_file(&fifo);
                        return Err(Error::Other(format!(
                            "container {:?} exited before it could start",
                            self.id
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e).ctx(|| format!("read {}", fifo.display())),
            }
        }
        std::fs::remove_file(&fifo).ctx(|| format!("remove {}", fifo.display()))?;
        let state = self.state_with(Status::Running);
        if let Err(e) = hooks::run(
            "poststart",
            &hooks::of(&self.record.spec, "poststart"),
            &state,
        ) {
            // The program already runs: a failing poststart hook is reported, not fatal.
            tracing::warn!("{e}");
        }
        Ok(())
    }
}
