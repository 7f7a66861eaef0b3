//! `ferry restore`: a container brought back by CRIU from an images directory, under a new
//! state record, with its cgroup made before CRIU restores into it.

use crate::archive::feed::Feed;
use crate::checkpoint::dump::{cgroup_mode, criu_config_file, ns_flag};
use crate::checkpoint::{DESCRIPTORS_FILE, externals};
use crate::criu::notify::{CallbackError, Notify};
use crate::criu::options::{CgroupRoot, InheritFd, RestoreRequest};
use crate::criu::{Criu, RestoreReport};
use crate::runtime::bundle::Bundle;
use crate::runtime::container::{Record, cgroup_of, validate_id};
use crate::runtime::create::{with_cleanup, write_pid_file};
use crate::runtime::error::{Context, Error, Result};
use crate::runtime::from_image::ImageRootfs;
use crate::runtime::{Container, OciState, Runtime, Status, cgroups, console, hooks};
use nix::mount::{MntFlags, MsFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct RestoreOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub tcp_established: bool,
    pub tcp_close: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub manage_cgroups_mode: Option<String>,
    pub empty_ns: Vec<String>,
    pub auto_dedup: bool,
    /// Chosen by [`super::netlock::choose`] when None.
    pub network_lock: Option<crate::criu::NetworkLock>,
    pub lazy_pages: bool,
    pub status_fd: Option<i32>,
    pub lsm_profile: Option<String>,
    pub lsm_mount_context: Option<String>,
    /// Set when ferry made the bundle from an image (`restore -i`): released on failure.
    pub image: Option<ImageRootfs>,
    /// The id was taken ([`Runtime::take_id`]) by whoever made the bundle, before making it.
    pub id_taken: bool,
    /// A host directory holding the container's /dev/shm files (from the archive's
    /// `devshm-checkpoint.tar`), bound at /dev/shm for the external mount
    /// [`externals::DEVSHM_KEY`].
    pub devshm: Option<PathBuf>,
    /// Asked at CRIU's post-restore notification, before anything restored runs or is
    /// traced; an error makes CRIU abort the restore and kill what it restored (restore -i:
    /// every page fed or copied in has been verified).
    pub after_restore: Option<BeforeResume>,
    /// Asked at CRIU's pre-resume notification, just before the tasks resume (restore -i:
    /// the copy-in's userfaultfds are closed). CRIU only logs a refusal here and resumes the
    /// tasks anyway; the restore then fails and removes them.
    pub before_resume: Option<BeforeResume>,
}

/// A check run before the restored tasks resume (see [`RestoreOptions::after_restore`]).
pub struct BeforeResume(pub Box<dyn FnMut() -> std::result::Result<(), String> + Send>);

impl std::fmt::Debug for BeforeResume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeResume")
    }
}

/// Hands a restore's memory pages to `feed` (archive::feed): CRIU restores with
/// `lazy_pages` when the feed copies them straight into the tasks (archive::uffd);
/// post-restore waits until every page is in place and verified, pre-resume until the
/// copy-in has let go of the tasks.
pub(crate) fn attach_feed(ro: &mut RestoreOptions, feed: &Arc<Mutex<Feed>>) {
    ro.lazy_pages |= feed.lock().unwrap_or_else(|e| e.into_inner()).copies_in();
    let f = feed.clone();
    ro.after_restore = Some(BeforeResume(Box::new(move || {
        f.lock().unwrap_or_else(|e| e.into_inner()).wait()
    })));
    let f = feed.clone();
    ro.before_resume = Some(BeforeResume(Box::new(move || {
        f.lock()
            .unwrap_or_else(|e| e.into_inner())
            .ready_to_resume()
    })));
}

/// What a feed did for a restore.
pub(crate) struct Fed {
    pub prefaulted: u64,
    pub copied_in: u64,
    pub took: std::time::Duration,
}

/// Ends `feed` once CRIU is done. post-restore waited for it and failed the restore on a
/// bad part, so a feed that failed means CRIU failed, and the feed says why better.
pub(crate) fn finish_feed(feed: &Arc<Mutex<Feed>>) -> Result<Fed> {
    let mut f = feed.lock().unwrap_or_else(|e| e.into_inner());
    let (prefaulted, copied_in) = (f.prefaulted(), f.copied_in());
    let took = f.finish().map_err(|e| {
        Error::Other(format!(
            "{e} (CRIU was refused those bytes and stopped; nothing restored ran)"
        ))
    })?;
    Ok(Fed {
        prefaulted,
        copied_in,
        took,
    })
}

/// The outcome of a restore: the container, CRIU's report, and the network lock it used.
pub struct Restored {
    pub container: Container,
    pub report: RestoreReport,
    pub network_lock: crate::criu::NetworkLock,
}

impl Runtime {
    /// Restores and, unless detached, waits for the container like `run` does; returns the
    /// exit code `ferry restore` should exit with.
    pub fn restore(&self, mut opts: RestoreOptions) -> Result<i32> {
        let detach = opts.detach;
        // The memory copied into the tasks from the images' pages files, rather than read
        // by CRIU (archive::uffd), unless the caller serves lazy pages itself or the images
        // have a parent (pre-dump) whose pages this does not look into. The files are the
        // caller's: nothing is punched out of them.
        let feed = if opts.lazy_pages || opts.image_path.join("parent").exists() {
            None
        } else {
            let work = opts.work_path.as_ref().unwrap_or(&opts.image_path);
            crate::archive::feed::copy_in_from(
                &opts.image_path,
                work,
                false,
                Arc::new(crate::progress::Progress::hidden()),
            )
            .map_err(|e| Error::Other(e.to_string()))?
            .map(|f| Arc::new(Mutex::new(f)))
        };
        if let Some(f) = &feed {
            attach_feed(&mut opts, f);
        }
        let restored = self.restore_container(opts);
        if let Some(f) = feed {
            // Nothing here is verified, so a copy-in fails only with CRIU, whose error
            // says more.
            let fed = finish_feed(&f);
            if restored.is_ok() {
                let fed = fed?;
                tracing::debug!(
                    copied_in_bytes = fed.copied_in,
                    ms = fed.took.as_millis() as u64,
                    "the memory was copied into the restored tasks"
                );
            }
        }
        let restored = restored?;
        if detach {
            return Ok(0);
        }
        // With rst_sibling the init is our own child, so --no-subreaper changes nothing here.
        restored.container.supervise_then_delete()
    }

    pub fn restore_container(&self, opts: RestoreOptions) -> Result<Restored> {
        let image = opts.image.clone();
        let id = opts.id.clone();
        let taken = opts.id_taken;
        let r = self.restore_checked(opts);
        if r.is_err() && taken {
            self.give_back_id(&id);
        }
        match (&r, image) {
            (Err(_), Some(img)) => r.map_err(|e| with_cleanup(e, img.release(&id))),
            _ => r,
        }
    }

    fn restore_checked(&self, mut opts: RestoreOptions) -> Result<Restored> {
        validate_id(&opts.id)?;
        let bundle = Bundle::load(&opts.bundle)?;
        let spec = &bundle.spec;
        if !opts.image_path.join("inventory.img").exists() {
            return Err(Error::Other(format!(
                "{} holds no checkpoint (no inventory.img); give the --image-path that \
                 `ferry checkpoint` wrote",
                opts.image_path.display()
            )));
        }
        if cgroup_mode(opts.manage_cgroups_mode.as_deref())? == crate::criu::CgroupMode::Strict {
            return Err(Error::Other(
                "--manage-cgroups-mode strict: CRIU then refuses any cgroup that exists, and \
                 ferry (like runc) makes the container's cgroup before CRIU restores into it, \
                 so that its limits hold from the first task; use full to have CRIU restore \
                 the checkpointed cgroup properties into it, or soft"
                    .into(),
            ));
        }
        check_console_socket(
            crate::runtime::bundle::has_terminal(spec),
            opts.console_socket.as_deref(),
        )?;
        // Before the id is taken: a refusal here must leave nothing behind.
        let cgroup = cgroup_of(spec, &opts.id)?;
        cgroups::check_unused(cgroup.as_ref(), &opts.id)?;
        let dir = match opts.id_taken {
            true => self.container_dir(&opts.id),
            false => self.take_id(&opts.id, &bundle.dir)?,
        };
        let criu_root = dir.join("criu-root");
        let result = self.restore_into(&mut opts, &bundle, &dir, &criu_root, cgroup.as_ref());
        // The bind mount for CRIU's root is only needed while it restores.
        let _ = nix::mount::umount2(&criu_root, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&criu_root);
        match result {
            Ok(r) => Ok(r),
            Err((e, pid)) => {
                if let Some(pid) = pid {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    // With rst_sibling it is our child: reap it rather than leave a zombie.
                    let _ = nix::sys::wait::waitpid(pid, None);
                }
                let cleanup = cgroup.destroy();
                let _ = std::fs::remove_dir_all(&dir);
                Err(with_cleanup(e, cleanup))
            }
        }
    }

    fn restore_into(
        &self,
        opts: &mut RestoreOptions,
        bundle: &Bundle,
        dir: &Path,
        criu_root: &Path,
        cgroup: &dyn cgroups::Cgroup,
    ) -> std::result::Result<Restored, (Error, Option<i32>)> {
        let fail = |e: Error| (e, None);
        let spec = &bundle.spec;
        let criu = Criu::new();
        // CRIU needs the root to be a mount point whose parent is not overmounted.
        std::fs::create_dir(criu_root)
            .ctx(|| format!("create {}", criu_root.display()))
            .map_err(fail)?;
        nix::mount::mount(
            Some(&bundle.rootfs),
            criu_root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| format!("bind {} for criu", bundle.rootfs.display()))
        .map_err(fail)?;
        prepare_mountpoints(spec, &bundle.rootfs).map_err(fail)?;
        // Lives until CRIU is done: its binds in the container outlive our mounts.
        let masked = externals::mount_masked_dirs(spec, &bundle.rootfs, &dir.join("criu-masked"))
            .ctx(|| "mount empty read-only tmpfs for the masked directories")
            .map_err(fail)?;
        // CRIU opens images as the container's root once it has made its user namespace.
        let images_search = match super::userns::mapped_root(spec) {
            Some(root) => Some(
                super::userns::ImagesSearch::grant(&opts.image_path, root)
                    .map_err(|e| fail(Error::Other(e)))?,
            ),
            None => None,
        };
        // The tmpfs mounts the dump recorded instead of CRIU (checkpoint::tmpfs), rebuilt.
        let tmpfs = super::tmpfs::recorded(&opts.image_path).map_err(|e| fail(Error::Other(e)))?;
        let tmpfs = super::tmpfs::mount(&tmpfs, &dir.join("criu-tmpfs"))
            .ctx(|| "rebuild the container's recorded tmpfs mounts")
            .map_err(fail)?;

        let cgroup_dirs = cgroup.paths();
        let mut empty_ns = 0;
        for n in &opts.empty_ns {
            empty_ns |= ns_flag(n).map_err(fail)?;
        }
        // A network namespace the dump left out as fresh (checkpoint::freshnet): CRIU makes
        // an empty one and ferry rebuilds the recorded state in it at setup-namespaces.
        let fresh_net = fresh_network(spec, &opts.image_path).map_err(fail)?;
        if fresh_net.is_some() {
            empty_ns |= libc::CLONE_NEWNET as u32;
        }
        let mut inherit_fds = vec![];
        for (key, fd) in stdio_pipes(&opts.image_path).map_err(fail)? {
            inherit_fds.push(InheritFd { key, fd });
        }
        let mut join_ns = vec![];
        for ns in crate::runtime::namespaces::list(spec) {
            let Some(path) = ns.path() else { continue };
            match ns.typ() {
                LinuxNamespaceType::Network | LinuxNamespaceType::Pid => {
                    let key = if ns.typ() == LinuxNamespaceType::Network {
                        "extRootNetNS"
                    } else {
                        "extRootPidNS"
                    };
                    let f = std::fs::File::open(path)
                        .ctx(|| format!("open {}", path.display()))
                        .map_err(fail)?;
                    inherit_fds.push(InheritFd {
                        key: key.into(),
                        fd: f.into(),
                    });
                }
                LinuxNamespaceType::Cgroup => {
                    return Err(fail(Error::Other(
                        "restoring into an existing cgroup namespace (linux.namespaces cgroup \
                         with a path) is not supported"
                            .into(),
                    )));
                }
                t => join_ns.push(crate::criu::options::JoinNs {
                    ns: crate::runtime::namespaces::proc_name(t).into(),
                    path: path.clone(),
                    extra: None,
                }),
            }
        }
        let rel = cgroups::relative_path(
            spec.linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_deref()),
            &opts.id,
        )
        .map_err(fail)?;
        let network_lock = super::netlock::choose(
            opts.network_lock,
            || fresh_net.is_some() || super::netlock::loopback_only_images(spec, &opts.image_path),
            opts.tcp_established,
            &criu,
            &self.root,
        );
        let req = RestoreRequest {
            images_dir: opts.image_path.clone(),
            work_dir: opts.work_path.clone(),
            log_file: Some("restore.log".into()),
            root: Some(criu_root.to_path_buf()),
            rst_sibling: true,
            tcp_established: opts.tcp_established,
            tcp_close: opts.tcp_close,
            ext_unix_sk: opts.ext_unix_sk,
            shell_job: opts.shell_job,
            file_locks: opts.file_locks,
            evasive_devices: true,
            manage_cgroups: true,
            cgroup_mode: cgroup_mode(opts.manage_cgroups_mode.as_deref()).map_err(fail)?,
            empty_ns,
            // A shell job's tasks take the caller's terminal through criu's stdio; CRIU
            // would otherwise hand them a new pty, whose master needs a console socket.
            orphan_pts_master: !opts.shell_job || opts.console_socket.is_some(),
            auto_dedup: opts.auto_dedup,
            lazy_pages: opts.lazy_pages,
            ext_mounts: {
                let mut m = externals::for_restore(spec, &bundle.rootfs, &cgroup_dirs);
                if let Some(d) = &opts.devshm {
                    m.push(crate::criu::ExtMount {
                        key: externals::DEVSHM_KEY.into(),
                        val: d.to_string_lossy().into_owned(),
                    });
                }
                m.extend(masked.ext_mounts.iter().cloned());
                m.extend(tmpfs.ext_mounts.iter().cloned());
                m
            },
            external: vec![],
            join_ns,
            inherit_fds,
            cg_roots: vec![CgroupRoot {
                controller: None,
                path: format!("/{}", rel.display()),
            }],
            notify_scripts: true,
            status_fd: opts.status_fd,
            lsm_profile: opts.lsm_profile.clone(),
            lsm_mount_context: opts.lsm_mount_context.clone(),
            config_file: criu_config_file(spec),
            network_lock: Some(network_lock),
            stdio: if opts.shell_job {
                Some(own_stdio().map_err(fail)?)
            } else {
                None
            },
        };

        let base = Record {
            id: opts.id.clone(),
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            pid: 0,
            pid_start: 0,
            created: chrono::Utc::now(),
            owner: String::new(),
            spec: spec.clone(),
            image: opts.image.clone(),
        };
        let mut notify = RestoreNotify {
            spec: spec.clone(),
            state: Container {
                runtime: self.clone(),
                id: opts.id.clone(),
                dir: dir.to_path_buf(),
                record: base.clone(),
            }
            .state_with(Status::Creating),
            console: match &opts.console_socket {
                Some(p) => Some(console::connect(p).map_err(fail)?),
                None => None,
            },
            pid: None,
            after_restore: opts.after_restore.take(),
            before_resume: opts.before_resume.take(),
            fresh_net,
        };
        let resources = cgroups::container_resources(spec);
        let report = criu
            .restore(req, &mut notify, |criu_pid| {
                cgroup.apply(criu_pid)?;
                cgroup.set(&resources)?;
                Ok(())
            })
            .map_err(|e| (Error::Other(e.to_string()), notify.pid))?;
        drop(masked);
        drop(tmpfs);
        drop(images_search);
        let pid = if report.pid > 0 {
            report.pid
        } else {
            notify.pid.unwrap_or(0)
        };
        let container = Container {
            runtime: self.clone(),
            id: opts.id.clone(),
            dir: dir.to_path_buf(),
            record: Record {
                pid,
                pid_start: crate::sys::proc::start_time(pid).unwrap_or(0),
                ..base
            },
        };
        let finish = || -> Result<()> {
            container.save()?;
            if let Some(p) = &opts.pid_file {
                write_pid_file(p, pid)?;
            }
            Ok(())
        };
        finish().map_err(|e| (e, Some(pid)))?;
        Ok(Restored {
            container,
            report,
            network_lock,
        })
    }
}

/// Copies of our stdin, stdout and stderr, for criu to pass on to a shell job.
fn own_stdio() -> Result<[OwnedFd; 3]> {
    use std::os::fd::AsFd;
    let copy = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .ctx(|| "duplicate our stdio for a shell job's restore")
    };
    Ok([
        copy(std::io::stdin().as_fd())?,
        copy(std::io::stdout().as_fd())?,
        copy(std::io::stderr().as_fd())?,
    ])
}

/// The network state a dump recorded when it left the namespace out of the images
/// (checkpoint::freshnet::MARK), for a spec that gives the container a namespace of its own.
/// A record with a spec that joins a namespace is refused: CRIU would have carried that one.
fn fresh_network(spec: &Spec, images: &Path) -> Result<Option<super::freshnet::NetState>> {
    let mark = images.join(super::freshnet::MARK);
    let bytes = match std::fs::read(&mark) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        r => r.ctx(|| format!("read {}", mark.display()))?,
    };
    if !crate::runtime::namespaces::creates(spec, LinuxNamespaceType::Network) {
        return Err(Error::Other(format!(
            "{} says the network namespace was left out of the images as a new one, but the \
             spec joins an existing namespace: restore with the spec the checkpoint was made \
             with",
            mark.display()
        )));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Other(format!("{} does not parse: {e}", mark.display())))
}

/// CRIU restores mounts onto mount points that must exist in the rootfs. cgroup mounts and
/// anything under a tmpfs are recreated by CRIU itself.
fn prepare_mountpoints(spec: &Spec, rootfs: &Path) -> Result<()> {
    let mounts = spec.mounts().clone().unwrap_or_default();
    let tmpfs: Vec<&Path> = mounts
        .iter()
        .filter(|m| m.typ().as_deref() == Some("tmpfs"))
        .map(|m| m.destination().as_path())
        .collect();
    for m in &mounts {
        let dest = m.destination();
        if matches!(m.typ().as_deref(), Some("cgroup") | Some("cgroup2"))
            || tmpfs.iter().any(|t| dest != *t && dest.starts_with(t))
        {
            continue;
        }
        let is_file = m
            .source()
            .as_ref()
            .and_then(|s| std::fs::metadata(s).ok())
            .is_some_and(|md| !md.is_dir());
        let path = crate::runtime::rootfs::secure_join(rootfs, dest);
        if path.exists() {
            continue;
        }
        if is_file {
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).ctx(|| format!("create {}", p.display()))?;
            }
            std::fs::File::create(&path).ctx(|| format!("create {}", path.display()))?;
        } else {
            std::fs::create_dir_all(&path).ctx(|| format!("create {}", path.display()))?;
        }
    }
    Ok(())
}

/// The pipes among the dumped stdio, each paired with our own fd of the same number, so the
/// restored process writes where we (conmon's pipes, the caller's) write.
fn stdio_pipes(images: &Path) -> Result<Vec<(String, OwnedFd)>> {
    let path = images.join(DESCRIPTORS_FILE);
    let fds: Vec<String> = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Config {
            path: path.clone(),
            msg: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).ctx(|| format!("read {}", path.display())),
    };
    let mut out = vec![];
    for (i, target) in fds.iter().enumerate() {
        if target.contains("pipe:") {
            // SAFETY: dup of our own stdio fd.
            let fd = unsafe { libc::fcntl(i as i32, libc::F_DUPFD_CLOEXEC, 3) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).ctx(|| format!("dup fd {i}"));
            }
            // SAFETY: a new fd we own.
            out.push((target.clone(), unsafe {
                std::os::fd::FromRawFd::from_raw_fd(fd)
            }));
        }
    }
    Ok(out)
}

struct RestoreNotify {
    spec: Spec,
    state: OciState,
    console: Option<OwnedFd>,
    pid: Option<i32>,
    after_restore: Option<BeforeResume>,
    before_resume: Option<BeforeResume>,
    /// The network namespace to rebuild in the empty one CRIU makes.
    fresh_net: Option<super::freshnet::NetState>,
}

impl Notify for RestoreNotify {
    fn notify(&mut self, script: &str, pid: i32, fds: Vec<OwnedFd>) -> Result<(), CallbackError> {
        match script {
            "setup-namespaces" => {
                self.pid = Some(pid);
                self.state.pid = pid;
                if let Some(net) = &self.fresh_net {
                    super::freshnet::rebuild(pid, net)?;
                }
                hooks::run("prestart", &hooks::of(&self.spec, "prestart"), &self.state)?;
                hooks::run(
                    "createRuntime",
                    &hooks::of(&self.spec, "createRuntime"),
                    &self.state,
                )?;
            }
            "post-restore" => {
                self.pid = Some(pid);
                // The last point where a refusal makes CRIU itself kill what it restored
                // (it only logs a refused pre-resume, then resumes the tasks).
                if let Some(check) = &mut self.after_restore {
                    (check.0)()?;
                }
                crate::sys::interrupt::check().map_err(|e| e.to_string())?;
            }
            "pre-resume" => {
                if let Some(check) = &mut self.before_resume {
                    (check.0)()?;
                }
                // The last safe point (sys::interrupt): CRIU then kills what it restored.
                crate::sys::interrupt::check().map_err(|e| e.to_string())?;
            }
            "orphan-pts-master" => {
                let (Some(sock), Some(master)) = (&self.console, fds.first()) else {
                    return Err("criu sent a pty master but there is no console socket".into());
                };
                console::send_fd(sock.as_raw_fd(), master.as_raw_fd(), b"/dev/ptmx")?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A container with a terminal is restored only with a console socket to hand its pty
/// master to.
pub(crate) fn check_console_socket(terminal: bool, socket: Option<&Path>) -> Result<()> {
    if terminal && socket.is_none() {
        return Err(Error::Other(
            "the container has a terminal: give --console-socket to receive its pty master".into(),
        ));
    }
    Ok(())
}
