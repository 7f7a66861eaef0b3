//! `kill`: a signal to the init, or with `--all` to every process in the container's cgroup.

use crate::runtime::error::{Context, Result};
use crate::runtime::{Container, Status};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

impl Container {
    pub fn kill(&self, signal: Signal, all: bool) -> Result<()> {
        let status = self.status()?;
        if all {
            for pid in self.cgroup()?.pids()? {
                match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(e) => return Err(e).ctx(|| format!("kill {pid} with {signal}")),
                }
            }
            return Ok(());
        }
        if !status.can_kill() {
            return Err(self.invalid("kill", status, ""));
        }
        nix::sys::signal::kill(Pid::from_raw(self.pid()), signal)
            .ctx(|| format!("send {signal} to the init (pid {})", self.pid()))?;
        if status == Status::Paused && signal == Signal::SIGKILL {
            // A frozen task only dies once thawed.
            self.cgroup()?.thaw()?;
        }
        Ok(())
    }
}
