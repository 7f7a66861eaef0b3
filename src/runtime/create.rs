//! `create` and `run`: the parent side of building a container. Every step that changes the
//! host is undone if a later one fails, so a failed create leaves nothing behind.

use crate::runtime::bundle::Bundle;
use crate::runtime::cgroups::Cgroup;
use crate::runtime::container::{self, EXEC_FIFO, EXIT_FILE, Record, cgroup_of};
use crate::runtime::error::{Context, Error, Result};
use crate::runtime::process::channel::{Channel, Msg};
use crate::runtime::process::init::{self, Kind, Setup};
use crate::runtime::process::wait;
use crate::runtime::{Container, CreateOptions, RunOptions, Runtime, console, hooks, namespaces};
use crate::runtime::{OciState, Status};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

impl Runtime {
    pub fn create(&self, opts: &CreateOptions) -> Result<Container> {
        let console = match &opts.console_socket {
            Some(p) => Some(self.unmade(opts, console::connect(p))?),
            None => None,
        };
        self.create_with_console(opts, console)
    }

    /// Returns the exit code `ferry run` should exit with.
    pub fn run(&self, opts: &RunOptions) -> Result<i32> {
        if opts.detach {
            return self.run_detached(opts);
        }
        let prepared = (|| {
            let signals = wait::become_supervisor()?;
            let terminal =
                crate::runtime::bundle::has_terminal(&Bundle::load(&opts.create.bundle)?.spec);
            // With a terminal and nobody to take it, ferry takes the pty master itself.
            let (console, ours) = console::ends(opts.create.console_socket.as_deref(), terminal)?;
            Ok((signals, console, ours))
        })();
        let (signals, console, ours) = self.unmade(&opts.create, prepared)?;
        let c = self.create_with_console(&opts.create, console)?;
        if let Err(e) = c.start() {
            return Err(with_cleanup(e, c.delete_exited()));
        }
        console::attach(ours)?;
        let code = c.supervise(&signals)?;
        if !opts.keep {
            c.delete_exited()?;
        }
        Ok(code)
    }

    /// `run -d`: a supervisor process stays behind as the container's parent to record its
    /// exit status; this process returns once the container runs.
    fn run_detached(&self, opts: &RunOptions) -> Result<i32> {
        let pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "pipe");
        let (r, w) = self.unmade(&opts.create, pipe)?;
        // SAFETY: ferry is single-threaded here; the child continues with our own code only.
        let forked = unsafe { nix::unistd::fork() }.ctx(|| "fork the supervisor");
        match self.unmade(&opts.create, forked)? {
            ForkResult::Parent { .. } => {
                drop(w);
                let mut msg = String::new();
                let mut f = std::fs::File::from(r);
                std::io::Read::read_to_string(&mut f, &mut msg)
                    .ctx(|| "read from the supervisor")?;
                if msg == "ok" {
                    Ok(0)
                } else if msg.is_empty() {
                    Err(Error::Other(
                        "the supervisor process died during create".into(),
                    ))
                } else {
                    Err(Error::Other(msg))
                }
            }
            ForkResult::Child => {
                drop(r);
                let _ = nix::unistd::setsid();
                let code = match self.supervise_detached(opts, w) {
                    Ok(()) => 0,
                    Err(_) => 1,
                };
                std::process::exit(code)
            }
        }
    }

    fn supervise_detached(&self, opts: &RunOptions, report: OwnedFd) -> Result<()> {
        let started: Result<_> = (|| {
            let signals = self.unmade(&opts.create, wait::become_supervisor())?;
            let c = self.create(&opts.create)?;
            if let Err(e) = c.start() {
                return Err(with_cleanup(e, c.delete_exited()));
            }
            Ok((c, signals))
        })();
        let (c, signals) = match started {
            Ok(x) => x,
            Err(e) => {
                let _ = nix::unistd::write(&report, e.to_string().as_bytes());
                return Err(e);
            }
        };
        // Our stdio belongs to the caller: let go of it so pipes it reads reach EOF when the
        // container closes them.
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            use std::os::fd::AsRawFd;
            for fd in 0..3 {
                // SAFETY: dup2 onto our own stdio numbers.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        let _ = nix::unistd::write(&report, b"ok");
        drop(report);
        // `run -d` keeps the stopped container until `ferry delete`, as runc does.
        c.supervise(&signals)?;
        Ok(())
    }

    /// For a step before `create`: on error, what was made for the container beforehand
    /// (an image's rootfs, the id taken for it) goes again.
    fn unmade<T>(&self, opts: &CreateOptions, r: Result<T>) -> Result<T> {
        r.map_err(|e| {
            if opts.id_taken {
                self.give_back_id(&opts.id);
            }
            match &opts.image {
                Some(img) => with_cleanup(e, img.release(&opts.id)),
                None => e,
            }
        })
    }

    fn create_with_console(
        &self,
        opts: &CreateOptions,
        console: Option<OwnedFd>,
    ) -> Result<Container> {
        let r = self.create_checked(opts, console);
        self.unmade(opts, r)
    }

    fn create_checked(&self, opts: &CreateOptions, console: Option<OwnedFd>) -> Result<Container> {
        container::validate_id(&opts.id)?;
        let bundle = Bundle::load(&opts.bundle)?;
        let spec = &bundle.spec;
        let process = spec.process().clone().expect("checked by Bundle::load");
        let terminal = process.terminal().unwrap_or(false);
        if terminal && console.is_none() {
            return Err(Error::Other(
                "process.terminal is true: give --console-socket to receive the pty master, \
                 or set terminal to false in config.json"
                    .into(),
            ));
        }
        if !terminal && opts.console_socket.is_some() {
            return Err(Error::Other(
                "--console-socket was given but process.terminal is false in config.json".into(),
            ));
        }
        namespaces::check(spec)?;

        let dir = match opts.id_taken {
            true => self.container_dir(&opts.id),
            false => self.take_id(&opts.id, &bundle.dir)?,
        };
        let mut undo = Undo {
            dir: dir.clone(),
            cgroup: None,
            pids: vec![],
        };
        match self.build(opts, &bundle, &dir, console, &mut undo) {
            Ok(c) => Ok(c),
            Err(e) => match undo.run() {
                Ok(()) => Err(e),
                Err(cleanup) => Err(Error::WithCleanup {
                    error: Box::new(e),
                    cleanup: Box::new(cleanup),
                }),
            },
        }
    }

    fn build(
        &self,
        opts: &CreateOptions,
        bundle: &Bundle,
        dir: &Path,
        console: Option<OwnedFd>,
        undo: &mut Undo,
    ) -> Result<Container> {
        let spec = &bundle.spec;
        let fifo = dir.join(EXEC_FIFO);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .ctx(|| format!("mkfifo {}", fifo.display()))?;
        // The umask would strip the write bit for others, which the init needs when it runs
        // as an unmapped uid in a user namespace.
        std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
            .ctx(|| format!("chmod {}", fifo.display()))?;
        let cgroup = cgroup_of(spec, &opts.id)?;
        // Before anything is forked or made there: a cgroup in use is someone else's.
        crate::runtime::cgroups::check_unused(cgroup.as_ref(), &opts.id)?;
        let cgroup_dirs = cgroup.paths();

        let process = spec.process().clone().expect("checked by Bundle::load");
        let (parent, child) = Channel::pair()?;
        // SAFETY: ferry is single-threaded here; the child runs only our setup code and exits.
        let stage1 = match unsafe { nix::unistd::fork() }.ctx(|| "fork")? {
            ForkResult::Child => {
                drop(parent);
                init::stage1(
                    Setup {
                        spec,
                        process: &process,
                        kind: Kind::Init {
                            rootfs: &bundle.rootfs,
                            fifo: &fifo,
                            no_pivot: opts.no_pivot,
                            no_new_keyring: opts.no_new_keyring,
                        },
                        console,
                        cgroup_dirs,
                        preserve_fds: opts.preserve_fds,
                    },
                    child,
                )
            }
            ForkResult::Parent { child: pid } => pid.as_raw(),
        };
        drop(child);
        drop(console);
        undo.pids.push(stage1);
        let r = self.drive_init(opts, bundle, dir, cgroup.as_ref(), &parent, stage1, undo);
        if r.is_err() {
            // It may be waiting for a word from us that will not come (a failure before
            // `Continue`): it would never exit, and the reap below would wait for ever.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(stage1),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        wait::reap_stage(stage1);
        if r.is_err() {
            undo.cgroup = Some(cgroup);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn drive_init(
        &self,
        opts: &CreateOptions,
        bundle: &Bundle,
        dir: &Path,
        cgroup: &dyn Cgroup,
        chan: &Channel,
        stage1: i32,
        undo: &mut Undo,
    ) -> Result<Container> {
        let spec = &bundle.spec;
        cgroup.apply(stage1)?;
        cgroup.set(&crate::runtime::cgroups::container_resources(spec))?;
        chan.send(&Msg::Continue)?;
        if namespaces::creates(spec, LinuxNamespaceType::User) {
            chan.expect(&Msg::WriteIdMaps, "creating the user namespace")?;
            let linux = spec.linux().as_ref().unwrap();
            write_id_map(stage1, "uid_map", linux.uid_mappings().as_deref())?;
            write_id_map(stage1, "gid_map", linux.gid_mappings().as_deref())?;
            chan.send(&Msg::Continue)?;
        }
        let pid = match chan.recv()? {
            Some(Msg::Pid(p)) => p,
            Some(Msg::Failed(e)) => return Err(Error::Other(e)),
            m => {
                return Err(Error::Other(format!(
                    "container setup: expected its pid, got {m:?}"
                )));
            }
        };
        undo.pids.push(pid);
        let record = Record {
            id: opts.id.clone(),
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            pid,
            pid_start: crate::sys::proc::start_time(pid).unwrap_or(0),
            created: chrono::Utc::now(),
            owner: String::new(),
            spec: spec.clone(),
            image: opts.image.clone(),
        };
        let c = Container {
            runtime: self.clone(),
            id: opts.id.clone(),
            dir: dir.to_path_buf(),
            record,
        };
        chan.expect(&Msg::RunCreateHooks, "preparing the root filesystem")?;
        let mut state = c.state_with(Status::Creating);
        hooks::run("prestart", &hooks::of(spec, "prestart"), &state)?;
        hooks::run("createRuntime", &hooks::of(spec, "createRuntime"), &state)?;
        state.status = Status::Created;
        chan.send(&Msg::State(state))?;
        chan.expect(&Msg::Ready, "setting up the container process")?;
        c.save()?;
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        undo.dir = PathBuf::new(); // created: from now on `delete` cleans up
        undo.cgroup = None;
        undo.pids.clear();
        Ok(c)
    }
}

impl Container {
    /// Waits for the init as its supervisor (signals to us are forwarded to it), records its
    /// exit status for `state` and returns it.
    pub(crate) fn supervise(&self, signals: &nix::sys::signal::SigSet) -> Result<i32> {
        let code = wait::supervise(self.pid(), signals)?;
        // Recorded under the container's hold, like every other change to its directory:
        // a delete or a checkpoint's release that is removing it goes first, and then there
        // is nothing left to record in.
        if let Ok((_hold, now)) = self.runtime.hold(&self.id, true)
            && now.record.created == self.record.created
        {
            let _ = std::fs::write(now.dir.join(EXIT_FILE), code.to_string());
        }
        Ok(code)
    }

    /// A foreground restore: supervise the restored init, then remove the container, as a
    /// foreground `run` does. Signals are blocked only now: criu inherits our signal mask
    /// and needs SIGCHLD while it restores.
    pub(crate) fn supervise_then_delete(self) -> Result<i32> {
        let signals = wait::become_supervisor()?;
        let code = self.supervise(&signals)?;
        self.delete_exited()?;
        Ok(code)
    }

    /// The OCI state with a status given rather than derived (during create).
    pub(crate) fn state_with(&self, status: Status) -> OciState {
        OciState {
            oci_version: self.record.spec.version().clone(),
            id: self.id.clone(),
            pid: self.record.pid,
            status,
            bundle: self.record.bundle.clone(),
            rootfs: self.record.rootfs.clone(),
            created: self.record.created,
            annotations: self.record.spec.annotations().clone().unwrap_or_default(),
            owner: self.record.owner.clone(),
        }
    }
}

/// `error`, plus the error of the cleanup that followed it, if that failed too.
pub(crate) fn with_cleanup(error: Error, cleanup: Result<()>) -> Error {
    match cleanup {
        Ok(()) => error,
        Err(c) => Error::WithCleanup {
            error: Box::new(error),
            cleanup: Box::new(c),
        },
    }
}

fn write_id_map(pid: i32, file: &str, maps: Option<&[LinuxIdMapping]>) -> Result<()> {
    let maps = maps.unwrap_or_default();
    if maps.is_empty() {
        return Err(Error::Other(format!(
            "a new user namespace needs linux.{} in config.json",
            if file == "uid_map" {
                "uidMappings"
            } else {
                "gidMappings"
            }
        )));
    }
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect();
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, text.as_bytes()).ctx(|| format!("write {path} ({})", text.trim()))
}

/// Written atomically (temp file + rename): conmon and containerd read it as soon as we exit.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let path = std::path::absolute(path).ctx(|| format!("pid file {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&tmp, pid.to_string()).ctx(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).ctx(|| format!("write pid file {}", path.display()))
}

/// What a half-made container holds on the host, removed in reverse order on failure.
struct Undo {
    dir: PathBuf,
    cgroup: Option<Box<dyn Cgroup>>,
    pids: Vec<i32>,
}

impl Undo {
    fn run(self) -> Result<()> {
        for pid in self.pids.iter().rev() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        for pid in &self.pids {
            // Our own children are reaped; the init may be a grandchild re-parented elsewhere.
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(*pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        let mut first_err = None;
        if let Some(cg) = self.cgroup {
            // The killed processes take a moment to leave the cgroup; destroy() retries.
            if let Err(e) = cg.destroy() {
                first_err.get_or_insert(e);
            }
        }
        if !self.dir.as_os_str().is_empty()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            first_err.get_or_insert(Error::Io {
                context: format!("remove {}", self.dir.display()),
                source: e,
            });
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
