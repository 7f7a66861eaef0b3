//! The thaw guard of `checkpoint -e`. ferry freezes the container before CRIU starts and
//! keeps it frozen until the archive is complete; a ferry killed outright in that time
//! (SIGKILL, the OOM killer, `timeout -s KILL`) runs no cleanup, and the container stayed
//! frozen: a service that answered nothing, listed as `paused`, until someone noticed.
//!
//! So before the freeze `checkpoint -e` starts a small ferry process of its own
//! (`ferry guard-frozen`, hidden), in a session of its own so that a terminal's Ctrl-C or
//! timeout(1)'s signal to ferry's process group does not reach it, and holds the write end
//! of its stdin. The guard waits for that pipe:
//! - `d` (done): ferry thawed, released or kept the container as it meant to; nothing to do.
//! - `c` (committing): the archive may now be whole (it is being named, or a stream's signed
//!   tail is being written). Thawing then could leave the source running beside a complete
//!   archive, and a restore of it would make a second copy; the guard leaves the container
//!   paused and says how to finish either way.
//! - end of file with neither: ferry died before its archive was whole. The guard takes
//!   the container's hold (free once ferry is dead), waits for CRIU to have let go of the
//!   tasks (it dies with ferry: `PR_SET_PDEATHSIG`), thaws the container and says so.
//!
//! A container paused before the checkpoint gets no guard: ferry never thaws it either.

use crate::runtime::error::{Context, Error, Result};
use crate::runtime::{Runtime, Status};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const COMMITTING: u8 = b'c';
const DONE: u8 = b'd';

/// The running guard of one checkpoint; dropping it tells the guard all went as meant
/// (unless the thread is panicking: then the guard thaws the container).
pub struct FreezeGuard {
    pipe: Option<std::process::ChildStdin>,
    child: Child,
}

impl FreezeGuard {
    /// Starts the guard of container `id`, whose archive goes to `archive`. `None` (logged)
    /// when it cannot start: the checkpoint goes on without it, as before there was one.
    pub fn start(runtime: &Runtime, id: &str, archive: &Path) -> Option<FreezeGuard> {
        match Self::spawn(runtime, id, archive) {
            Ok(guard) => Some(guard),
            Err(e) => {
                tracing::warn!(
                    "no thaw guard for the checkpoint of {id:?} ({e}): if ferry is killed \
                     while the container is frozen, `ferry resume {id}` thaws it"
                );
                None
            }
        }
    }

    fn spawn(runtime: &Runtime, id: &str, archive: &Path) -> Result<FreezeGuard> {
        // This very binary, even if an upgrade has replaced the file since ferry started.
        let exe = Path::new("/proc/self/exe");
        let mut cmd = Command::new(exe);
        cmd.arg("--root")
            .arg(&runtime.root)
            .arg("--storage")
            .arg(&runtime.storage)
            .arg("guard-frozen")
            .arg("--archive")
            .arg(archive)
            .arg(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        // SAFETY: setsid is async-signal-safe and touches no memory.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().ctx(|| "start ferry guard-frozen")?;
        let pipe = child.stdin.take();
        Ok(FreezeGuard { pipe, child })
    }

    /// From here on the archive may be whole: a ferry killed now leaves the container
    /// paused instead of thawed.
    pub fn committing(&mut self) {
        self.say(COMMITTING);
    }

    fn say(&mut self, what: u8) {
        if let Some(pipe) = self.pipe.as_mut()
            && let Err(e) = pipe.write_all(&[what])
        {
            tracing::debug!("thaw guard: {e}");
        }
    }
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Unwinding past a frozen container: the guard thaws it once this process has
            // let go of the container's hold.
            drop(self.pipe.take());
            return;
        }
        self.say(DONE);
        drop(self.pipe.take());
        let _ = self.child.wait();
    }
}

/// `ferry guard-frozen --archive PATH ID`: what the guard process does (module docs).
pub fn watch(runtime: &Runtime, id: &str, archive: &Path) -> Result<i32> {
    // Only ferry's death or its word ends the wait; SIGKILL still can.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: setting a signal to SIG_IGN.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let ferry = nix::unistd::getppid();
    let mut last = None;
    let mut buf = [0u8; 16];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => last = Some(buf[n - 1]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let (it, check) = if archive == Path::new("-") {
        (
            "the archive on its standard output".to_string(),
            "what its reader received".to_string(),
        )
    } else {
        let archive = archive.display();
        (format!("its archive {archive}"), archive.to_string())
    };
    match last {
        Some(DONE) => return Ok(0),
        Some(COMMITTING) => {
            eprintln!(
                "ferry: the ferry checkpointing {id:?} (pid {ferry}) was killed while it \
                 finished {it}; the container is left paused. If `ferry inspect` finds \
                 {check} whole, `ferry delete --force {id}` and restore it; otherwise `ferry \
                 resume {id}` lets it run on"
            );
            return Ok(0);
        }
        _ => {}
    }
    // ferry died before its archive was whole: its hold went with it.
    let (_hold, container) = match runtime.hold(id, true) {
        Ok(held) => held,
        Err(Error::NotFound { .. }) => return Ok(0),
        Err(e) => return Err(e),
    };
    // CRIU dies with ferry; the kernel detaches it from the tasks as it goes.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30)
        && traced(&container.processes().unwrap_or_default())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let now = match container.status()? {
        Status::Paused => {
            container.cgroup()?.thaw()?;
            "the container, frozen for it, is thawed and runs on as before".to_string()
        }
        Status::Running => "the container runs on as before".to_string(),
        other => format!("the container no longer runs (it is {other})"),
    };
    eprintln!(
        "ferry: the ferry checkpointing {id:?} (pid {ferry}) was killed before {it} was \
         complete: no checkpoint was made, and {now}"
    );
    Ok(0)
}

/// True when a process of `pids` is still traced (CRIU seizes every task it dumps).
fn traced(pids: &[i32]) -> bool {
    pids.iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .is_some_and(|v| v.trim() != "0")
        })
    })
}
