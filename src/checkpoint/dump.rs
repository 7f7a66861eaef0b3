//! `ferry checkpoint`: the container's process tree dumped by CRIU into an images directory
//! (runc's `checkpoint`, which podman and containerd call).

use crate::checkpoint::{DESCRIPTORS_FILE, externals};
use crate::criu::options::{CgroupMode, DumpRequest, PageServer};
use crate::criu::{Criu, DumpReport, notify::IgnoreNotifications};
use crate::runtime::error::{Context, Error, Result};
use crate::runtime::{Container, Status, namespaces};
use oci_spec::runtime::LinuxNamespaceType;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub parent_path: Option<PathBuf>,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub tcp_skip_in_flight: bool,
    pub link_remap: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub pre_dump: bool,
    pub manage_cgroups_mode: Option<String>,
    pub empty_ns: Vec<String>,
    pub page_server: Option<String>,
    pub lazy_pages: bool,
    pub status_fd: Option<i32>,
    pub auto_dedup: bool,
    /// Chosen by [`super::netlock::choose`] when None.
    pub network_lock: Option<crate::criu::NetworkLock>,
    /// [`Container::netns_unreachable`] when already asked (`checkpoint -e` asks before it
    /// freezes the container); asked during the dump when None.
    pub netns_unreachable: Option<bool>,
    /// CRIU sends the memory through this socket (criu::page_server) instead of writing it
    /// into the image path: `checkpoint -e` archives it while CRIU dumps.
    pub page_sink: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Leave the container's own /dev/shm tmpfs out of the images (as the external mount
    /// [`externals::DEVSHM_KEY`]): `checkpoint -e` archives its files itself.
    pub external_devshm: bool,
}

/// CRIU's clone flag for a namespace name as `--empty-ns` takes it.
pub fn ns_flag(name: &str) -> Result<u32> {
    Ok(match name {
        "network" | "net" => libc::CLONE_NEWNET as u32,
        "ipc" => libc::CLONE_NEWIPC as u32,
        "uts" => libc::CLONE_NEWUTS as u32,
        "mount" | "mnt" => libc::CLONE_NEWNS as u32,
        "pid" => libc::CLONE_NEWPID as u32,
        "user" => libc::CLONE_NEWUSER as u32,
        "cgroup" => libc::CLONE_NEWCGROUP as u32,
        other => {
            return Err(Error::Other(format!(
                "--empty-ns {other:?}: use network, ipc, uts, mount, pid, user or cgroup"
            )));
        }
    })
}

pub(crate) fn cgroup_mode(s: Option<&str>) -> Result<CgroupMode> {
    let s = s.unwrap_or("");
    CgroupMode::parse(s).ok_or_else(|| {
        Error::Other(format!(
            "--manage-cgroups-mode {s:?}: use soft, full, strict or ignore"
        ))
    })
}

fn criu_error(e: crate::criu::Error) -> Error {
    Error::Other(e.to_string())
}

/// What a dump read of a container that still ran, to leave out of CRIU's images: a network
/// namespace as fresh as a new one, masked directories still as ferry made them, and tmpfs
/// mounts small enough to record (checkpoint::tmpfs; `skip` are the mounts never recorded).
#[derive(Default)]
struct ReadRunning {
    net: Option<super::freshnet::NetState>,
    masked: Vec<String>,
    tmpfs: Vec<super::tmpfs::Tmpfs>,
    skip: Vec<String>,
}

/// CRIU's notifications during a dump. At `query-ext-files`, which CRIU sends once it has
/// frozen and seized the tasks and before it collects their namespaces and mounts, what was
/// read while the container still ran is read again, and the dump refused if it changed in
/// between.
struct DumpNotify<'a> {
    recheck: Option<(&'a Container, ReadRunning)>,
    changed: bool,
}

impl crate::criu::Notify for DumpNotify<'_> {
    fn notify(
        &mut self,
        script: &str,
        _pid: i32,
        _fds: Vec<std::os::fd::OwnedFd>,
    ) -> std::result::Result<(), crate::criu::notify::CallbackError> {
        if script != "query-ext-files" {
            return Ok(());
        }
        let Some((c, read)) = &self.recheck else {
            return Ok(());
        };
        let net_same = read.net.as_ref().is_none_or(|recorded| {
            super::freshnet::state_of(c.pid()).is_ok_and(|now| now == *recorded)
        });
        // Only what was left out is read again.
        let masked_same = read.masked.is_empty() || {
            let untouched = externals::untouched_masked_dirs(&c.record.spec, c.pid());
            read.masked.iter().all(|m| untouched.contains(m))
        };
        let tmpfs_same = read.tmpfs.is_empty() || {
            let now = super::tmpfs::readable(c.pid(), &read.skip);
            read.tmpfs.iter().all(|t| now.contains(t))
        };
        if net_same && masked_same && tmpfs_same {
            return Ok(());
        }
        self.changed = true;
        Err(
            "the container changed its network namespace, a masked directory or a tmpfs while \
             it was being frozen"
                .into(),
        )
    }
}

impl Container {
    /// The network lock for a dump of this container with `opts` (checkpoint::netlock).
    /// `unreachable` is [`Self::netns_unreachable`], asked only when the answer matters.
    pub(crate) fn network_lock(
        &self,
        opts: &CheckpointOptions,
        unreachable: impl FnOnce() -> bool,
    ) -> crate::criu::NetworkLock {
        super::netlock::choose(
            opts.network_lock,
            unreachable,
            opts.tcp_established,
            &Criu::new(),
            &self.runtime.root,
        )
    }

    /// Whether CRIU can leave the container's network namespace out of the images because
    /// it holds exactly what a new one with `lo` up holds (checkpoint::freshnet): the state
    /// it recorded in the images when so (removing a stale record when not). Only for a
    /// namespace of the container's own that nothing outside it shares, and not when
    /// established TCP connections are carried (CRIU's namespace lock and repair stay as
    /// they are). A container that is not frozen yet (a runc-style checkpoint) is read
    /// again once CRIU has frozen it ([`DumpNotify`]).
    fn fresh_network(
        &self,
        opts: &CheckpointOptions,
        empty_ns: u32,
        unreachable: impl FnOnce() -> bool,
    ) -> Result<Option<super::freshnet::NetState>> {
        let mark = opts.image_path.join(super::freshnet::MARK);
        let _ = std::fs::remove_file(&mark);
        if opts.tcp_established
            || empty_ns & libc::CLONE_NEWNET as u32 != 0
            || std::env::var(super::freshnet::CRIU_CARRIES_ENV).as_deref() == Ok("1")
            || !unreachable()
        {
            return Ok(None);
        }
        let (theirs, fresh) = match super::freshnet::compare(self.pid()) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("reading the network namespace: {e}; CRIU carries it");
                return Ok(None);
            }
        };
        if theirs != fresh {
            tracing::debug!(
                differences = ?theirs.differences(&fresh, "in the container", "in a new one"),
                "the network namespace is not as a new one; CRIU carries it"
            );
            return Ok(None);
        }
        let json = serde_json::to_vec(&theirs).map_err(|e| Error::Other(e.to_string()))?;
        std::fs::write(&mark, json).ctx(|| format!("write {}", mark.display()))?;
        Ok(Some(theirs))
    }

    /// The container's network namespace is its own, holds only `lo` and is shared with no
    /// process outside the container (checkpoint::netlock).
    pub(crate) fn netns_unreachable(&self) -> bool {
        let inside = self.processes().unwrap_or_default();
        super::netlock::unreachable_running(&self.record.spec, self.pid(), &inside)
    }

    pub fn checkpoint(&self, opts: &CheckpointOptions) -> Result<DumpReport> {
        self.check_checkpointable(opts.shell_job)?;
        // The container ends with this checkpoint: what it leaves must be enough.
        if !opts.leave_running && !opts.pre_dump {
            self.check_runc_style_keeps_the_rootfs()?;
            self.check_outlives(&opts.image_path, "the checkpoint's images")?;
        }
        self.dump(opts)
    }

    /// A container made from an image keeps its rootfs changes (the overlay's upper
    /// directory) and its bundle in ferry's storage, and both go with the container. A
    /// runc-style checkpoint carries neither and ends the container: the images would be
    /// all that is left, with nothing to restore them into. Refused before anything is
    /// frozen (the caller asks only when the container does not stay).
    fn check_runc_style_keeps_the_rootfs(&self) -> Result<()> {
        let Some(img) = &self.record.image else {
            return Ok(());
        };
        Err(Error::Other(format!(
            "container {:?} was made from the image {}: its root filesystem changes and its \
             bundle live in ferry's storage and go with the container, and a runc-style \
             checkpoint (--image-path) carries neither, so nothing could restore it. Use \
             `ferry checkpoint {} -e FILE` (the archive carries them; `ferry restore -i FILE` \
             brings it back), or add --leave-running to keep it running",
            self.id, img.image, self.id
        )))
    }

    /// What must hold before anything is frozen: the container runs (or is paused) and its
    /// stdio is something CRIU can checkpoint. Returns the status it found.
    /// `shell_job`: a terminal outside the container is the caller's to vouch for, as
    /// CRIU's `--shell-job` says (it dumps such a terminal as external).
    pub(crate) fn check_checkpointable(&self, shell_job: bool) -> Result<Status> {
        let status = self.status()?;
        if !matches!(status, Status::Running | Status::Paused) {
            return Err(self.invalid(
                "checkpoint",
                status,
                "; only a running container can be checkpointed",
            ));
        }
        self.check_stdio(shell_job)?;
        self.check_all_under_init()?;
        Ok(status)
    }

    /// Every process in the container's cgroup descends from its init. CRIU dumps the
    /// tree below the init, and a process that joined from outside (a `ferry exec`'s, whose
    /// parent is the waiting `ferry exec`, or whoever reaped a detached one) would be left
    /// out of the checkpoint without a word: the restored copy would simply lack it. podman
    /// refuses a checkpoint while exec sessions run for the same reason. (No exec can
    /// start meanwhile: it waits for the checkpoint's hold.)
    fn check_all_under_init(&self) -> Result<()> {
        let init = self.pid();
        let pids = self.cgroup()?.pids()?;
        let inside: std::collections::HashSet<i32> = pids.iter().copied().collect();
        let outside: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|&pid| {
                let mut at = pid;
                // Bounded: a pid reused into a loop cannot hang the walk.
                for _ in 0..pids.len() + 1 {
                    if at == init {
                        return false;
                    }
                    match crate::sys::proc::parent(at) {
                        // Gone meanwhile: nothing to leave out.
                        None => return false,
                        Some(up) if inside.contains(&up) => at = up,
                        Some(_) => return true,
                    }
                }
                true
            })
            .collect();
        if outside.is_empty() {
            return Ok(());
        }
        let named: Vec<String> = outside
            .iter()
            .take(5)
            .map(|pid| format!("{pid} ({})", crate::sys::proc::cmdline(&pid.to_string())))
            .collect();
        Err(Error::Other(format!(
            "container {:?}: process {} runs in it but not under its init (an exec, or a \
             process that joined it from outside), and CRIU would leave it out of the \
             checkpoint; let it end or kill it, then checkpoint again",
            self.id,
            named.join(", ")
        )))
    }

    /// The CRIU dump itself, for a container already checked by [`check_checkpointable`]
    /// (`export` checks before it freezes, so nothing is checked twice while frozen).
    pub(crate) fn dump(&self, opts: &CheckpointOptions) -> Result<DumpReport> {
        let criu = Criu::new();
        let version = criu
            .version_cached(&self.runtime.root)
            .map_err(criu_error)?;
        if !version.at_least(3, 0) {
            return Err(Error::Other(format!(
                "criu {version:?} is too old: ferry needs 3.0 or later"
            )));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&opts.image_path)
            .ctx(|| format!("create the image directory {}", opts.image_path.display()))?;
        if let Some(w) = &opts.work_path {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(w)
                .ctx(|| format!("create the work directory {}", w.display()))?;
        }
        let parent_img = match &opts.parent_path {
            None => None,
            Some(p) if p.is_absolute() => {
                return Err(Error::Other(format!(
                    "--parent-path {} must be relative to the image path",
                    p.display()
                )));
            }
            Some(p) => {
                let full = opts.image_path.join(p);
                if !full.is_dir() {
                    return Err(Error::Other(format!(
                        "--parent-path {}: {} is not a directory",
                        p.display(),
                        full.display()
                    )));
                }
                Some(p.clone())
            }
        };
        let spec = &self.record.spec;
        let cgroup = self.cgroup()?;
        let cgroup_dirs = cgroup.paths();
        let freeze_cgroup = cgroup_dirs
            .iter()
            .find(|(c, _)| c == "freezer" || c.is_empty())
            .map(|(_, d)| d.clone());
        let mut empty_ns = 0;
        for n in &opts.empty_ns {
            empty_ns |= ns_flag(n)?;
        }
        let mut external = vec![];
        for ns in namespaces::list(spec) {
            let key = match ns.typ() {
                LinuxNamespaceType::Network => "extRootNetNS",
                LinuxNamespaceType::Pid => "extRootPidNS",
                _ => continue,
            };
            if let Some(path) = ns.path() {
                let ino = std::os::unix::fs::MetadataExt::ino(
                    &std::fs::metadata(path).ctx(|| format!("stat {}", path.display()))?,
                );
                external.push(format!("{}[{ino}]:{key}", namespaces::proc_name(ns.typ())));
            }
        }
        let page_server = match &opts.page_server {
            None => None,
            Some(s) => {
                let (addr, port) = s.rsplit_once(':').ok_or_else(|| {
                    Error::Other(format!("--page-server {s:?}: give ADDRESS:PORT"))
                })?;
                let port = port
                    .parse()
                    .map_err(|_| Error::Other(format!("--page-server {s:?}: bad port")))?;
                Some(PageServer {
                    address: addr.to_string(),
                    port,
                })
            }
        };
        if !opts.pre_dump {
            self.write_descriptors(&opts.image_path)?;
        }
        // Asked once (a scan of every process's namespace), and by `checkpoint -e` before it
        // froze the container.
        let unreachable = std::cell::OnceCell::new();
        let unreachable = || {
            *unreachable.get_or_init(|| {
                opts.netns_unreachable
                    .unwrap_or_else(|| self.netns_unreachable())
            })
        };
        // What is left out of CRIU's images because it is as ferry (or the kernel) made it.
        // A container still running is read again once CRIU froze it, and dumped again if it
        // changed; a page stream into ferry's archive is used up by the first try, so that
        // needs the container frozen already (`checkpoint -e` freezes it first).
        let frozen = cgroup.is_frozen().unwrap_or(false);
        let leave_out = !opts.pre_dump && (frozen || opts.page_sink.is_none());
        let mut ext_mounts = vec![];
        if !opts.pre_dump {
            ext_mounts = externals::for_dump(spec, &self.record.rootfs, &cgroup_dirs);
            if opts.external_devshm && externals::devshm_tmpfs(spec).is_some() {
                ext_mounts.push(crate::criu::ExtMount {
                    key: "/dev/shm".into(),
                    val: externals::DEVSHM_KEY.into(),
                });
            }
        }
        let read = if leave_out {
            let masked = externals::untouched_masked_dirs(spec, self.pid());
            // Never recorded: mounts external already, and the masked directories (all of
            // them: one the container changed is CRIU's).
            let mut skip: Vec<String> = ext_mounts.iter().map(|m| m.key.clone()).collect();
            skip.extend(
                spec.linux()
                    .as_ref()
                    .and_then(|l| l.masked_paths().clone())
                    .unwrap_or_default(),
            );
            ReadRunning {
                net: self.fresh_network(opts, empty_ns, unreachable)?,
                masked,
                // In a user namespace the container's tmpfs belong to it (its root may
                // remount them); one ferry mounted would belong to the host's.
                tmpfs: if namespaces::has(spec, LinuxNamespaceType::User) {
                    vec![]
                } else {
                    super::tmpfs::readable(self.pid(), &skip)
                },
                skip,
            }
        } else {
            ReadRunning::default()
        };
        if !opts.pre_dump {
            super::tmpfs::record(&opts.image_path, &read.tmpfs)
                .ctx(|| format!("write {}", super::tmpfs::MARK))?;
        }
        let full_empty_ns = empty_ns;
        if read.net.is_some() {
            empty_ns |= libc::CLONE_NEWNET as u32;
        }
        let carried_mounts = ext_mounts.clone();
        for p in &read.masked {
            ext_mounts.push(crate::criu::ExtMount {
                key: p.clone(),
                val: externals::masked_dir_key(p),
            });
        }
        for t in &read.tmpfs {
            ext_mounts.push(crate::criu::ExtMount {
                key: t.point.clone(),
                val: super::tmpfs::key(&t.point),
            });
        }
        let req = DumpRequest {
            images_dir: opts.image_path.clone(),
            work_dir: opts.work_path.clone(),
            log_file: Some(
                if opts.pre_dump {
                    "pre-dump.log"
                } else {
                    "dump.log"
                }
                .into(),
            ),
            root: Some(self.record.rootfs.clone()),
            pid: self.pid(),
            leave_running: opts.leave_running,
            tcp_established: opts.tcp_established,
            tcp_skip_in_flight: opts.tcp_skip_in_flight,
            ext_unix_sk: opts.ext_unix_sk,
            shell_job: opts.shell_job,
            file_locks: opts.file_locks,
            link_remap: opts.link_remap,
            manage_cgroups: true,
            cgroup_mode: cgroup_mode(opts.manage_cgroups_mode.as_deref())?,
            freeze_cgroup,
            empty_ns,
            orphan_pts_master: true,
            auto_dedup: opts.auto_dedup,
            lazy_pages: opts.lazy_pages,
            track_mem: parent_img.is_some(),
            parent_img,
            page_server,
            page_sink: opts.page_sink.clone(),
            ext_mounts,
            external,
            notify_scripts: true,
            status_fd: opts.status_fd,
            config_file: criu_config_file(spec),
            network_lock: Some(self.network_lock(opts, unreachable)),
            ..Default::default()
        };
        if opts.pre_dump {
            return criu
                .pre_dump(req, &mut IgnoreNotifications)
                .map_err(criu_error);
        }
        // Read while the container ran: read again once CRIU has frozen it.
        let retry = (!frozen).then(|| DumpRequest {
            empty_ns: full_empty_ns,
            ext_mounts: carried_mounts,
            ..req.clone()
        });
        let mut notify = DumpNotify {
            recheck: (!frozen).then_some((self, read)),
            changed: false,
        };
        match criu.dump(req, &mut notify) {
            Err(_) if notify.changed => {
                // Changed between the two reads: CRIU failed cleanly (the container runs on)
                // and carries everything itself this time.
                tracing::debug!("the container changed before the freeze; CRIU carries it all");
                let _ = std::fs::remove_file(opts.image_path.join(super::freshnet::MARK));
                let _ = std::fs::remove_file(opts.image_path.join(super::tmpfs::MARK));
                let retry = retry.expect("only a running container is read again");
                criu.dump(retry, &mut IgnoreNotifications)
                    .map_err(criu_error)
            }
            r => r.map_err(criu_error),
        }
    }

    /// CRIU cannot checkpoint an fd on a file outside the container's mounts, and the usual
    /// one is stdio left pointing at a host file by whoever started the container. Say so
    /// before anything is frozen.
    pub(crate) fn check_stdio(&self, shell_job: bool) -> Result<()> {
        let pid = self.pid();
        let mounts: std::collections::HashSet<u64> =
            std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split(' ').next()?.parse().ok())
                .collect();
        for (fd, name) in [(0, "stdin"), (1, "stdout"), (2, "stderr")] {
            let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) else {
                continue;
            };
            // Pipes and sockets live on kernel-internal mounts and are fine; files and device
            // nodes (a terminal) must be on one of the container's own mounts.
            use std::os::unix::fs::FileTypeExt;
            let kind = meta.file_type();
            if !(kind.is_file() || kind.is_char_device() || kind.is_block_device()) {
                continue;
            }
            if let Some(mnt) = crate::sys::proc::fd_mount_id(&pid.to_string(), fd)
                && !mounts.contains(&mnt)
            {
                let target = crate::sys::proc::fd_target(pid, fd).unwrap_or_default();
                let terminal = target.starts_with("/dev/pts/") || target.starts_with("/dev/tty");
                if terminal && kind.is_char_device() {
                    if shell_job {
                        continue;
                    }
                    return Err(Error::Other(format!(
                        "container {:?}: its {name} is {target}, a terminal outside the \
                         container, which CRIU checkpoints only as a shell job: pass \
                         --shell-job (to restore too), or give the container a terminal of \
                         its own (process.terminal)",
                        self.id
                    )));
                }
                let what = if kind.is_file() { "a file" } else { "a device" };
                return Err(Error::Other(format!(
                    "container {:?}: its {name} is {target}, {what} outside the container, \
                     which CRIU cannot checkpoint; start detached containers with stdio on \
                     pipes (as conmon does) or on /dev/null, which ferry moves to the \
                     container's own",
                    self.id
                )));
            }
        }
        Ok(())
    }

    /// descriptors.json: where the init's stdio pointed, so restore can replace pipes.
    fn write_descriptors(&self, dir: &std::path::Path) -> Result<()> {
        let fds: Vec<String> = (0..3)
            .map(|fd| {
                crate::sys::proc::fd_target(self.pid(), fd).unwrap_or_else(|| "/dev/null".into())
            })
            .collect();
        let path = dir.join(DESCRIPTORS_FILE);
        std::fs::write(&path, serde_json::to_vec(&fds).unwrap_or_default())
            .ctx(|| format!("write {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .ctx(|| format!("chmod {}", path.display()))
    }
}

/// runc's rule: the `org.criu.config` annotation names a CRIU config file (empty: none),
/// else /etc/criu/runc.conf if it exists. ferry reads /etc/criu/ferry.conf instead.
pub(crate) fn criu_config_file(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get("org.criu.config"))
    {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => {
            let p = PathBuf::from("/etc/criu/ferry.conf");
            p.exists().then_some(p)
        }
    }
}
