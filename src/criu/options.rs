//! The requests ferry makes of CRIU, as plain structs with the options runc sets, and their
//! translation into CRIU's RPC `criu_opts`. Translation is pure, so it is unit-tested here.

use rust_criu::rust_criu_protobuf::rpc::{
    Cgroup_root, Criu_cg_mode, Criu_network_lock_method, Criu_opts, Criu_page_server_info,
    Ext_mount_map, Inherit_fd, Join_namespace,
};
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

/// The fd number at which criu finds the first fd the caller hands it ([`InheritFd`]): 0–2 are
/// criu's stdio and 3 is its RPC socket.
pub const FIRST_EXTRA_FD: RawFd = 4;

/// CRIU's log level that runc uses: everything, so the log explains a failure.
const LOG_LEVEL: i32 = 4;

/// How CRIU treats the cgroups of the tasks (`--manage-cgroups-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupMode {
    /// CRIU's own default (soft).
    #[default]
    Default,
    Soft,
    Full,
    Strict,
    Ignore,
}

impl CgroupMode {
    /// Parses runc's spelling: "" (default), soft, full, strict, ignore.
    pub fn parse(s: &str) -> Option<CgroupMode> {
        Some(match s {
            "" | "default" => CgroupMode::Default,
            "soft" => CgroupMode::Soft,
            "full" => CgroupMode::Full,
            "strict" => CgroupMode::Strict,
            "ignore" => CgroupMode::Ignore,
            _ => return None,
        })
    }

    fn rpc(self) -> Criu_cg_mode {
        match self {
            CgroupMode::Default => Criu_cg_mode::DEFAULT,
            CgroupMode::Soft => Criu_cg_mode::SOFT,
            CgroupMode::Full => Criu_cg_mode::FULL,
            CgroupMode::Strict => Criu_cg_mode::STRICT,
            CgroupMode::Ignore => Criu_cg_mode::IGNORE,
        }
    }
}

/// How CRIU keeps packets away from a network namespace while its tasks are dumped or
/// restored (`--network-lock`). The dump and the restore of one netns must agree: a lock
/// left by one method is not lifted by the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkLock {
    /// iptables rules, through iptables-restore processes (CRIU's default).
    Iptables,
    /// An nftables table, through libnftables inside criu: no processes to start.
    Nftables,
    /// No lock: for a namespace nothing can reach, or one locked by someone else.
    Skip,
}

impl NetworkLock {
    pub fn parse(s: &str) -> Option<NetworkLock> {
        Some(match s {
            "iptables" => NetworkLock::Iptables,
            "nftables" => NetworkLock::Nftables,
            "skip" => NetworkLock::Skip,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkLock::Iptables => "iptables",
            NetworkLock::Nftables => "nftables",
            NetworkLock::Skip => "skip",
        }
    }

    fn rpc(self) -> Criu_network_lock_method {
        match self {
            NetworkLock::Iptables => Criu_network_lock_method::IPTABLES,
            NetworkLock::Nftables => Criu_network_lock_method::NFTABLES,
            NetworkLock::Skip => Criu_network_lock_method::SKIP,
        }
    }
}

/// A page server CRIU sends memory pages to instead of writing them (`--page-server`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageServer {
    pub address: String,
    pub port: u16,
}

/// A mount CRIU leaves out of the images (`--ext-mount-map KEY:VAL`): on dump the key is
/// the mount point inside the root and the value the name in the image; on restore the key
/// is that name and the value what to mount there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtMount {
    pub key: String,
    pub val: String,
}

/// A namespace the restored tasks join instead of getting a new one (`--join-ns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinNs {
    /// CRIU's name: net, uts, ipc, pid, user, mnt, time, cgroup.
    pub ns: String,
    pub path: PathBuf,
    pub extra: Option<String>,
}

/// An fd of ours that criu inherits and uses for the external resource `key` on restore
/// (`--inherit-fd fd[N]:KEY`): a new stdio pipe for `pipe:[1234]`, an opened namespace file
/// for `extRootNetNS`. The n-th one lands at fd [`FIRST_EXTRA_FD`] + n in criu.
#[derive(Debug)]
pub struct InheritFd {
    pub key: String,
    pub fd: OwnedFd,
}

/// A cgroup CRIU treats as the root of the tasks' cgroups (`--cgroup-root [CTRL:]PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    /// None for every controller.
    pub controller: Option<String>,
    pub path: String,
}

/// What to checkpoint and how: the options runc sets for `runc checkpoint`
/// (CONTRACTS.md §1.4 step 3). `Default` gives a dump of nothing useful: set `images_dir`
/// and `pid`.
#[derive(Debug, Clone, Default)]
pub struct DumpRequest {
    /// Where CRIU writes the images. Must exist; handed to CRIU as an fd of ours.
    pub images_dir: PathBuf,
    /// Where CRIU writes its log and stats; the images dir when None.
    pub work_dir: Option<PathBuf>,
    /// The log's file name inside the work dir; "dump.log" when None.
    pub log_file: Option<String>,
    /// The root of the tasks' mount namespace, as CRIU sees it (the container's rootfs).
    pub root: Option<PathBuf>,
    /// The root of the process tree to dump.
    pub pid: i32,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub tcp_skip_in_flight: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub link_remap: bool,
    pub manage_cgroups: bool,
    pub cgroup_mode: CgroupMode,
    /// The freezer cgroup of the tasks; without it CRIU stops them one by one with ptrace.
    pub freeze_cgroup: Option<PathBuf>,
    /// CLONE_NEW* flags of namespaces CRIU leaves empty instead of dumping their contents.
    pub empty_ns: u32,
    pub orphan_pts_master: bool,
    pub auto_dedup: bool,
    pub lazy_pages: bool,
    /// Dump only what changed since the images in `parent_img` (relative to `images_dir`).
    pub track_mem: bool,
    pub parent_img: Option<PathBuf>,
    pub page_server: Option<PageServer>,
    /// CRIU's end of a socketpair: the dump sends the pages through it instead of writing
    /// pagemap and pages images; whoever holds the other end serves it with
    /// [`super::page_server::serve`]. criu gets it at [`FIRST_EXTRA_FD`].
    pub page_sink: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    pub ext_mounts: Vec<ExtMount>,
    /// `--external` strings, e.g. `net[4026531992]:extRootNetNS`.
    pub external: Vec<String>,
    pub cg_roots: Vec<CgroupRoot>,
    /// Send NOTIFY for every action script (`post-dump`, `network-lock`, …).
    pub notify_scripts: bool,
    /// An fd of this process (kept open until the call returns) CRIU writes `\0` to when the
    /// lazy-pages server is ready.
    pub status_fd: Option<RawFd>,
    /// A CRIU configuration file (runc: `org.criu.config` or `/etc/criu/runc.conf`).
    pub config_file: Option<PathBuf>,
    /// CRIU's default (iptables) when None.
    pub network_lock: Option<NetworkLock>,
}

/// What to restore and how: the options runc sets for `runc restore`
/// (CONTRACTS.md §1.5 step 3).
#[derive(Debug, Default)]
pub struct RestoreRequest {
    pub images_dir: PathBuf,
    /// Where CRIU writes its log and stats; the images dir when None.
    pub work_dir: Option<PathBuf>,
    /// The log's file name inside the work dir; "restore.log" when None.
    pub log_file: Option<String>,
    /// A mount point (not overmounted) holding the rootfs the tasks are restored into.
    pub root: Option<PathBuf>,
    /// Make the restored tree a child of ours rather than of criu (runc always does).
    pub rst_sibling: bool,
    pub tcp_established: bool,
    pub tcp_close: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub evasive_devices: bool,
    pub manage_cgroups: bool,
    pub cgroup_mode: CgroupMode,
    pub empty_ns: u32,
    pub orphan_pts_master: bool,
    pub auto_dedup: bool,
    pub lazy_pages: bool,
    pub ext_mounts: Vec<ExtMount>,
    pub external: Vec<String>,
    pub join_ns: Vec<JoinNs>,
    /// Fds criu inherits: the n-th lands at [`FIRST_EXTRA_FD`] + n.
    pub inherit_fds: Vec<InheritFd>,
    /// Where the tasks' cgroups go: the container's cgroup, which criu itself joins first
    /// (see `before_tasks` of [`super::Criu::restore`]).
    pub cg_roots: Vec<CgroupRoot>,
    pub notify_scripts: bool,
    pub status_fd: Option<RawFd>,
    /// `TYPE:NAME`, e.g. `apparmor:ferry-default`.
    pub lsm_profile: Option<String>,
    pub lsm_mount_context: Option<String>,
    pub config_file: Option<PathBuf>,
    /// CRIU's default (iptables) when None.
    pub network_lock: Option<NetworkLock>,
    /// criu's stdin, stdout and stderr (runc gives it the container's stdio; a shell job's
    /// restored tasks take theirs from criu). /dev/null, /dev/null and ours when None.
    pub stdio: Option<[OwnedFd; 3]>,
}

/// The fds of ours that carry the images and work dir to criu (it opens
/// `/proc/<our pid>/fd/N`, so they may be CLOEXEC).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirFds {
    pub images: RawFd,
    pub work: Option<RawFd>,
}

fn path_string(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

fn set_common(o: &mut Criu_opts, dirs: DirFds, log_file: String) {
    o.images_dir_fd = Some(dirs.images);
    o.work_dir_fd = dirs.work;
    o.log_level = Some(LOG_LEVEL);
    o.log_file = Some(log_file);
}

fn cg_roots(roots: &[CgroupRoot]) -> Vec<Cgroup_root> {
    roots
        .iter()
        .map(|r| {
            let mut c = Cgroup_root::new();
            c.ctrl = r.controller.clone();
            c.path = Some(r.path.clone());
            c
        })
        .collect()
}

fn ext_mounts(mounts: &[ExtMount]) -> Vec<Ext_mount_map> {
    mounts
        .iter()
        .map(|m| {
            let mut e = Ext_mount_map::new();
            e.key = Some(m.key.clone());
            e.val = Some(m.val.clone());
            e
        })
        .collect()
}

/// Only set a flag CRIU should see; an unset optional keeps CRIU's default, and a request
/// reads the same in CRIU's log as runc's.
fn flag(b: bool) -> Option<bool> {
    b.then_some(true)
}

pub(crate) fn dump_opts(req: &DumpRequest, dirs: DirFds) -> Criu_opts {
    let mut o = Criu_opts::new();
    set_common(
        &mut o,
        dirs,
        req.log_file.clone().unwrap_or_else(|| "dump.log".into()),
    );
    o.pid = Some(req.pid);
    o.root = req.root.as_deref().map(path_string);
    o.leave_running = flag(req.leave_running);
    o.tcp_established = flag(req.tcp_established);
    o.tcp_skip_in_flight = flag(req.tcp_skip_in_flight);
    o.ext_unix_sk = flag(req.ext_unix_sk);
    o.shell_job = flag(req.shell_job);
    o.file_locks = flag(req.file_locks);
    o.link_remap = flag(req.link_remap);
    if req.manage_cgroups {
        o.manage_cgroups = Some(true);
        o.set_manage_cgroups_mode(req.cgroup_mode.rpc());
    }
    o.freeze_cgroup = req.freeze_cgroup.as_deref().map(path_string);
    o.empty_ns = (req.empty_ns != 0).then_some(req.empty_ns);
    o.orphan_pts_master = flag(req.orphan_pts_master);
    o.auto_dedup = flag(req.auto_dedup);
    o.lazy_pages = flag(req.lazy_pages);
    o.track_mem = flag(req.track_mem);
    o.parent_img = req.parent_img.as_deref().map(path_string);
    if let Some(ps) = &req.page_server {
        let mut p = Criu_page_server_info::new();
        p.address = Some(ps.address.clone());
        p.port = Some(i32::from(ps.port));
        o.ps = Some(p).into();
    }
    if req.page_sink.is_some() {
        let mut p = Criu_page_server_info::new();
        p.fd = Some(FIRST_EXTRA_FD);
        o.ps = Some(p).into();
    }
    o.ext_mnt = ext_mounts(&req.ext_mounts);
    o.external = req.external.clone();
    o.cg_root = cg_roots(&req.cg_roots);
    o.notify_scripts = flag(req.notify_scripts);
    o.status_fd = req.status_fd;
    if let Some(m) = req.network_lock {
        o.set_network_lock(m.rpc());
    }
    o.config_file = req.config_file.as_deref().map(path_string);
    o
}

/// The restore options. `inherit_fds` becomes `inherit_fd {key, FIRST_EXTRA_FD + n}`; the
/// caller must place the fds at those numbers in criu (`swrk::spawn` does).
pub(crate) fn restore_opts(req: &RestoreRequest, dirs: DirFds) -> Criu_opts {
    let mut o = Criu_opts::new();
    set_common(
        &mut o,
        dirs,
        req.log_file.clone().unwrap_or_else(|| "restore.log".into()),
    );
    o.root = req.root.as_deref().map(path_string);
    o.rst_sibling = flag(req.rst_sibling);
    o.tcp_established = flag(req.tcp_established);
    o.tcp_close = flag(req.tcp_close);
    o.ext_unix_sk = flag(req.ext_unix_sk);
    o.shell_job = flag(req.shell_job);
    o.file_locks = flag(req.file_locks);
    o.evasive_devices = flag(req.evasive_devices);
    if req.manage_cgroups {
        o.manage_cgroups = Some(true);
        o.set_manage_cgroups_mode(req.cgroup_mode.rpc());
    }
    o.empty_ns = (req.empty_ns != 0).then_some(req.empty_ns);
    o.orphan_pts_master = flag(req.orphan_pts_master);
    o.auto_dedup = flag(req.auto_dedup);
    o.lazy_pages = flag(req.lazy_pages);
    o.ext_mnt = ext_mounts(&req.ext_mounts);
    o.external = req.external.clone();
    o.join_ns = req
        .join_ns
        .iter()
        .map(|j| {
            let mut n = Join_namespace::new();
            n.ns = Some(j.ns.clone());
            n.ns_file = Some(path_string(&j.path));
            n.extra_opt = j.extra.clone();
            n
        })
        .collect();
    o.inherit_fd = req
        .inherit_fds
        .iter()
        .zip(FIRST_EXTRA_FD..)
        .map(|(i, fd)| {
            let mut f = Inherit_fd::new();
            f.key = Some(i.key.clone());
            f.fd = Some(fd);
            f
        })
        .collect();
    o.cg_root = cg_roots(&req.cg_roots);
    o.notify_scripts = flag(req.notify_scripts);
    o.status_fd = req.status_fd;
    o.lsm_profile = req.lsm_profile.clone();
    o.lsm_mount_context = req.lsm_mount_context.clone();
    if let Some(m) = req.network_lock {
        o.set_network_lock(m.rpc());
    }
    o.config_file = req.config_file.as_deref().map(path_string);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    const DIRS: DirFds = DirFds {
        images: 7,
        work: Some(8),
    };

    #[test]
    fn a_runc_style_dump_sets_what_runc_sets() {
        let req = DumpRequest {
            images_dir: "/img".into(),
            root: Some("/run/ferry/c1/rootfs".into()),
            pid: 4242,
            tcp_established: true,
            ext_unix_sk: true,
            manage_cgroups: true,
            cgroup_mode: CgroupMode::Soft,
            empty_ns: libc::CLONE_NEWNET as u32,
            orphan_pts_master: true,
            notify_scripts: true,
            freeze_cgroup: Some("/sys/fs/cgroup/freezer/ferry/c1".into()),
            ext_mounts: vec![ExtMount {
                key: "/etc/hosts".into(),
                val: "/etc/hosts".into(),
            }],
            external: vec!["net[4026531992]:extRootNetNS".into()],
            ..Default::default()
        };
        let o = dump_opts(&req, DIRS);
        assert_eq!(o.images_dir_fd, Some(7));
        assert_eq!(o.work_dir_fd, Some(8));
        assert_eq!(o.log_level, Some(4));
        assert_eq!(o.log_file.as_deref(), Some("dump.log"));
        assert_eq!(o.pid, Some(4242));
        assert_eq!(o.root.as_deref(), Some("/run/ferry/c1/rootfs"));
        assert_eq!(o.tcp_established, Some(true));
        assert_eq!(o.ext_unix_sk, Some(true));
        assert_eq!(o.leave_running, None, "unset flags stay unset");
        assert_eq!(o.manage_cgroups, Some(true));
        assert_eq!(o.manage_cgroups_mode(), Criu_cg_mode::SOFT);
        assert_eq!(o.empty_ns, Some(0x4000_0000));
        assert_eq!(o.orphan_pts_master, Some(true));
        assert_eq!(o.notify_scripts, Some(true));
        assert_eq!(
            o.freeze_cgroup.as_deref(),
            Some("/sys/fs/cgroup/freezer/ferry/c1")
        );
        assert_eq!(o.ext_mnt.len(), 1);
        assert_eq!(o.ext_mnt[0].key(), "/etc/hosts");
        assert_eq!(o.external, vec!["net[4026531992]:extRootNetNS"]);
        // The message is complete: every `required` field is set.
        assert!(o.is_initialized());
        o.write_to_bytes().unwrap();
    }

    #[test]
    fn pre_copy_options_track_memory_against_the_parent() {
        let req = DumpRequest {
            images_dir: "/img/2".into(),
            pid: 1,
            track_mem: true,
            parent_img: Some("../1".into()),
            page_server: Some(PageServer {
                address: "10.0.0.2".into(),
                port: 27000,
            }),
            leave_running: true,
            log_file: Some("pre-dump.log".into()),
            ..Default::default()
        };
        let o = dump_opts(
            &req,
            DirFds {
                images: 3,
                work: None,
            },
        );
        assert_eq!(o.track_mem, Some(true));
        assert_eq!(o.parent_img.as_deref(), Some("../1"));
        assert_eq!(o.ps.address(), "10.0.0.2");
        assert_eq!(o.ps.port(), 27000);
        assert_eq!(o.work_dir_fd, None);
        assert_eq!(o.log_file.as_deref(), Some("pre-dump.log"));
        assert_eq!(o.manage_cgroups, None);
    }

    #[test]
    fn restore_numbers_inherited_fds_from_four_in_order() {
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let req = RestoreRequest {
            images_dir: "/img".into(),
            root: Some("/run/ferry/c1/criu-root".into()),
            rst_sibling: true,
            evasive_devices: true,
            tcp_close: true,
            inherit_fds: vec![
                InheritFd {
                    key: "extRootNetNS".into(),
                    fd: null(),
                },
                InheritFd {
                    key: "pipe:[1234]".into(),
                    fd: null(),
                },
            ],
            join_ns: vec![JoinNs {
                ns: "uts".into(),
                path: "/proc/1/ns/uts".into(),
                extra: None,
            }],
            cg_roots: vec![CgroupRoot {
                controller: Some("memory".into()),
                path: "/ferry/c1".into(),
            }],
            lsm_profile: Some("apparmor:ferry".into()),
            manage_cgroups: true,
            cgroup_mode: CgroupMode::Strict,
            ..Default::default()
        };
        let o = restore_opts(&req, DIRS);
        assert_eq!(o.log_file.as_deref(), Some("restore.log"));
        assert_eq!(o.rst_sibling, Some(true));
        assert_eq!(o.evasive_devices, Some(true));
        assert_eq!(o.tcp_close, Some(true));
        assert_eq!(o.pid, None);
        let fds: Vec<(&str, i32)> = o.inherit_fd.iter().map(|f| (f.key(), f.fd())).collect();
        assert_eq!(fds, vec![("extRootNetNS", 4), ("pipe:[1234]", 5)]);
        assert_eq!(o.join_ns[0].ns(), "uts");
        assert_eq!(o.join_ns[0].ns_file(), "/proc/1/ns/uts");
        assert_eq!(o.cg_root[0].ctrl(), "memory");
        assert_eq!(o.cg_root[0].path(), "/ferry/c1");
        assert_eq!(o.lsm_profile.as_deref(), Some("apparmor:ferry"));
        assert_eq!(o.manage_cgroups_mode(), Criu_cg_mode::STRICT);
        assert!(o.is_initialized());
    }

    #[test]
    fn cgroup_modes_parse_like_runc() {
        assert_eq!(CgroupMode::parse(""), Some(CgroupMode::Default));
        assert_eq!(CgroupMode::parse("soft"), Some(CgroupMode::Soft));
        assert_eq!(CgroupMode::parse("full"), Some(CgroupMode::Full));
        assert_eq!(CgroupMode::parse("strict"), Some(CgroupMode::Strict));
        assert_eq!(CgroupMode::parse("ignore"), Some(CgroupMode::Ignore));
        assert_eq!(CgroupMode::parse("props"), None);
    }
}
