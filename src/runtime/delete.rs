//! `delete`: removes a stopped container (or, with `--force`, kills a running one first),
//! its cgroup and its state, then runs the poststop hooks.

use crate::runtime::container::STATE_FILE;
use crate::runtime::error::{Context, Error, Result};
use crate::runtime::unmade::MAKER_FILE;
use crate::runtime::{Container, Status, hooks};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

impl Container {
    pub fn delete(self, force: bool) -> Result<()> {
        let status = self.status()?;
        match status {
            Status::Stopped => {}
            // runc deletes a created container without --force: it never ran the user's program.
            Status::Created | Status::Creating => self.kill_all_and_wait()?,
            Status::Running | Status::Paused if force => self.kill_all_and_wait()?,
            _ => {
                return Err(self.invalid(
                    "delete",
                    status,
                    "; stop it with `ferry kill` first, or use `ferry delete --force`",
                ));
            }
        }
        let cgroup = self.cgroup()?;
        let mut errors = vec![];
        if let Err(e) = cgroup.destroy() {
            errors.push(e);
        }
        if let Some(img) = &self.record.image
            && let Err(e) = img.release(&self.id)
        {
            errors.push(e);
        }
        let state = self.state_with(Status::Stopped);
        if let Err(e) = hooks::run(
            "poststop",
            &hooks::of(&self.record.spec, "poststop"),
            &state,
        ) {
            // Poststop failures are logged: the container is gone either way (runtime-spec).
            tracing::warn!("{e}");
        }
        // Every delete holds the container (`Runtime::hold`), so its directory is there.
        if let Err(e) = remove_state_dir(&self.dir) {
            errors.push(e);
        }
        match errors.into_iter().reduce(|a, b| Error::WithCleanup {
            error: Box::new(a),
            cleanup: Box::new(b),
        }) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The delete of a foreground `run` or `restore` once the init has exited, or of a `run`
    /// whose start failed: held like `ferry delete`, and nothing to do when another command
    /// got there first (a checkpoint that released the container, an explicit delete),
    /// which used to make the two deletes trip over each other ("remove …: No such file or
    /// directory").
    pub(crate) fn delete_exited(self) -> Result<()> {
        match self.runtime.hold(&self.id, true) {
            Ok((_hold, now)) if now.record.created == self.record.created => now.delete(true),
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// SIGKILL to every process of the container, then wait until the init is gone (a zombie
    /// counts as gone) and the cgroup is empty.
    fn kill_all_and_wait(&self) -> Result<()> {
        let cgroup = self.cgroup()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), Signal::SIGKILL);
        self.kill(Signal::SIGKILL, true)?;
        // What they hold is freed on a thread of ours too, beside their own exits: the wait
        // below is mostly the kernel freeing their memory. That thread must be inside
        // process_mrelease before the thaw: a thawed process detaches its memory at once and
        // frees it alone, and the call then finds nothing to take (ESRCH). Hence the
        // handshake and a head start; a thread that still comes late costs nothing.
        // 1 GiB: 75-91 ms thawed alone, 52-62 ms with the thread, 84-96 ms freed by the
        // thread first and thawed after.
        let pids = cgroup.pids().unwrap_or_default();
        let (started, starting) = std::sync::mpsc::channel();
        let release = std::thread::spawn(move || {
            let _ = started.send(());
            for p in pids {
                crate::sys::proc::release_memory(p);
            }
        });
        if starting.recv().is_ok() {
            std::thread::sleep(Duration::from_micros(200));
        }
        if cgroup.is_frozen().unwrap_or(false) {
            cgroup.thaw()?;
        }
        kill_until_gone(cgroup.as_ref(), &self.id, || !self.is_init_alive())?;
        let _ = release.join();
        Ok(())
    }
}

/// SIGKILL, again, to every live process in the (thawed) `cgroup` of container `id` until
/// none is left and `init_gone` holds; an error after 10 s. Returns how many were alive at
/// first. Also what `delete` uses for a container that was never made (runtime::unmade).
pub(crate) fn kill_until_gone(
    cgroup: &dyn crate::runtime::cgroups::Cgroup,
    id: &str,
    init_gone: impl Fn() -> bool,
) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first = None;
    loop {
        let left = cgroup.pids().unwrap_or_default();
        let alive: Vec<i32> = left
            .into_iter()
            .filter(|p| crate::sys::proc::stat(*p).is_some_and(|(s, _)| s != 'Z'))
            .collect();
        let at_first = *first.get_or_insert(alive.len());
        if init_gone() && alive.is_empty() {
            return Ok(at_first);
        }
        if Instant::now() > deadline {
            return Err(Error::Other(format!(
                "container {id:?}: processes {alive:?} did not die within 10s of SIGKILL"
            )));
        }
        for p in &alive {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), Signal::SIGKILL);
        }
        crate::sys::proc::wait_any_exit(&alive, Duration::from_millis(5));
    }
}

/// Removes a container's state directory with its record last: when something in it cannot
/// be removed (a mount someone made there, a file made immutable), the container is still
/// a stopped container that `ferry state` shows and `ferry delete` can finish once that is
/// dealt with, not a nameless husk.
fn remove_state_dir(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).ctx(|| format!("read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.ctx(|| format!("read {}", dir.display()))?;
        let name = entry.file_name();
        if name == STATE_FILE || name == MAKER_FILE {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        removed.ctx(|| format!("remove {}", path.display()))?;
    }
    // The maker's note, then the record: a directory with a maker's note and no record
    // reads as a killed maker's remains (runtime::unmade); one with a record is a container.
    for name in [MAKER_FILE, STATE_FILE] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).ctx(|| format!("remove {}", path.display()));
            }
            _ => {}
        }
    }
    std::fs::remove_dir(dir).ctx(|| format!("remove {}", dir.display()))
}
