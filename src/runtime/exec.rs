//! `exec`: a new process in the namespaces and cgroup of a running container.

use crate::runtime::container::Hold;
use crate::runtime::error::{Context, Error, Result};
use crate::runtime::process::channel::{Channel, Msg};
use crate::runtime::process::init::{self, Kind, Setup};
use crate::runtime::process::wait;
use crate::runtime::{Container, ExecOptions, console, create::write_pid_file};
use nix::unistd::ForkResult;

impl Container {
    /// Runs a process inside. Detached: returns 0 once it started (its pid in the pid file);
    /// otherwise waits and returns its exit code (128+signal when killed). `hold`
    /// ([`Runtime::hold`](crate::runtime::Runtime::hold)) is let go once the process runs:
    /// a checkpoint may then take the container, but none freezes it while a process joins.
    pub fn exec(&self, opts: &ExecOptions, hold: Hold) -> Result<i32> {
        let status = self.status()?;
        if !status.can_exec() {
            return Err(self.invalid("exec in", status, ""));
        }
        let args = opts.process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(Error::Other(
                "exec needs a command (process.args is empty)".into(),
            ));
        }
        let terminal = opts.process.terminal().unwrap_or(false);
        match (&opts.console_socket, terminal) {
            (Some(_), false) => {
                return Err(Error::Other("--console-socket needs --tty".into()));
            }
            (None, true) if opts.detach => {
                return Err(Error::Other(
                    "a detached exec with --tty needs --console-socket to hand the pty to".into(),
                ));
            }
            _ => {}
        }
        let (console, ours) = console::ends(opts.console_socket.as_deref(), terminal)?;
        let signals = if opts.detach {
            None
        } else {
            Some(wait::become_supervisor()?)
        };
        let cgroup = self.cgroup()?;
        let (parent, child) = Channel::pair()?;
        // SAFETY: single-threaded; the child runs only our setup code.
        let stage1 = match unsafe { nix::unistd::fork() }.ctx(|| "fork")? {
            ForkResult::Child => {
                drop(parent);
                init::stage1(
                    Setup {
                        spec: &self.record.spec,
                        process: &opts.process,
                        kind: Kind::Exec {
                            init_pid: self.pid(),
                        },
                        console,
                        cgroup_dirs: vec![],
                        preserve_fds: opts.preserve_fds,
                    },
                    child,
                )
            }
            ForkResult::Parent { child: p } => p.as_raw(),
        };
        drop(child);
        drop(console);
        let started = (|| {
            cgroup.apply(stage1)?;
            parent.send(&Msg::Continue)?;
            let pid = match parent.recv()? {
                Some(Msg::Pid(p)) => p,
                Some(Msg::Failed(e)) => return Err(Error::Other(e)),
                m => return Err(Error::Other(format!("exec: expected a pid, got {m:?}"))),
            };
            parent.expect(&Msg::Ready, "setting up the exec process")?;
            // The channel is close-on-exec: EOF means the program is running.
            match parent.recv()? {
                None => Ok(pid),
                Some(Msg::Failed(e)) => Err(Error::Other(e)),
                Some(m) => Err(Error::Other(format!("exec: unexpected {m:?}"))),
            }
        })();
        wait::reap_stage(stage1);
        let pid = started?;
        drop(hold);
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        let Some(signals) = signals else {
            return Ok(0);
        };
        console::attach(ours)?;
        wait::supervise(pid, &signals)
    }
}
