//! The container's root filesystem, built inside its new mount namespace: the mounts of the
//! spec, /dev, pivot_root, then readonly and masked paths. Runs in the container's init.

use crate::runtime::error::{Context, Error, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

const NONE: Option<&str> = None;

/// Options of one OCI mount, split into what mount(2) takes.
#[derive(Debug, PartialEq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Propagation changes, applied one by one after the mount (private, rslave, …).
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific options passed as mount(2) data (`mode=755`, `size=64k`).
    pub data: String,
    pub bind: bool,
}

pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: vec![],
        data: String::new(),
        bind: false,
    };
    let mut data = vec![];
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" | "rdonly" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                o.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let mut p = match opt.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                if opt.starts_with('r') {
                    p |= MsFlags::MS_REC;
                }
                o.propagation.push(p);
                continue;
            }
            // podman/crun-only options that have no meaning for a plain mount(2).
            "tmpcopyup" | "notmpcopyup" | "copy-symlink" | "z" | "Z" | "U" => {
                tracing::debug!("mount option {opt} ignored");
                continue;
            }
            _ => {
                data.push(opt.clone());
                continue;
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    o.data = data.join(",");
    o
}

/// Joins `path` under `root`, resolving symlinks as if `root` were `/`, so a symlink in the
/// image can never point a mount outside the container's root.
pub fn secure_join(root: &Path, path: &Path) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = path
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.components().next() {
            None | Some(Component::RootDir) | Some(Component::CurDir) => continue,
            Some(Component::ParentDir) => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() && links < 255 => {
                links += 1;
                let target = std::fs::read_link(&full).unwrap_or_default();
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    pending.push(PathBuf::from(c.as_os_str()));
                }
            }
            _ => resolved = candidate,
        }
    }
    root.join(resolved)
}

/// Mounts everything the spec asks for under `rootfs` (still at its host path).
/// `cgroup_dirs` are the container's own cgroup directories, bound at /sys/fs/cgroup on v1.
pub fn prepare(
    spec: &Spec,
    rootfs: &Path,
    cgroup_dirs: &[(String, PathBuf)],
    in_userns: bool,
) -> Result<()> {
    let linux = spec.linux().as_ref();
    // Keep our mounts from propagating back to the host, and the host's into us as asked.
    let propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some("shared") | Some("rshared") => MsFlags::MS_SHARED,
        Some("private") | Some("rprivate") => MsFlags::MS_PRIVATE,
        Some("unbindable") | Some("runbindable") => MsFlags::MS_UNBINDABLE,
        _ => MsFlags::MS_SLAVE,
    };
    mount(NONE, "/", NONE, MsFlags::MS_REC | propagation, NONE)
        .ctx(|| "make / a slave mount in the container's mount namespace")?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(rootfs),
        rootfs,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .ctx(|| format!("bind-mount rootfs {}", rootfs.display()))?;

    let mut dev_is_tmpfs = false;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        mount_one(m, rootfs, cgroup_dirs, in_userns).map_err(|e| {
            Error::Other(format!(
                "mount {} on {}: {e}",
                m.source()
                    .as_ref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_else(|| m.typ().clone().unwrap_or_default()),
                m.destination().display()
            ))
        })?;
    }

    let devices = linux.and_then(|l| l.devices().clone()).unwrap_or_default();
    if dev_is_tmpfs {
        for d in default_devices() {
            if !devices.iter().any(|x| x.path() == d.path()) {
                create_device(rootfs, &d, in_userns)?;
            }
        }
        dev_symlinks(rootfs)?;
    }
    for d in &devices {
        create_device(rootfs, d, in_userns)?;
    }
    Ok(())
}

fn mount_one(
    m: &Mount,
    rootfs: &Path,
    cgroup_dirs: &[(String, PathBuf)],
    in_userns: bool,
) -> Result<()> {
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().clone().unwrap_or_default();
    let dest = secure_join(rootfs, m.destination());
    let bind = opts.bind || typ == "bind";
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));

    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(&dest, &opts, cgroup_dirs);
    }
    if bind {
        let meta = std::fs::metadata(&source)
            .ctx(|| format!("bind source {} (does it exist?)", source.display()))?;
        make_mountpoint(&dest, meta.is_dir())?;
        let rec = opts.flags & MsFlags::MS_REC;
        mount(Some(&source), &dest, NONE, MsFlags::MS_BIND | rec, NONE).ctx(|| "bind")?;
        // Flags on a bind mount only take effect through a remount.
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            remount_bind(&dest, extra)?;
        }
    } else {
        make_mountpoint(&dest, true)?;
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        let r = mount(Some(&source), &dest, Some(typ.as_str()), opts.flags, data);
        match r {
            // Without its own network namespace a user namespace may not mount sysfs:
            // fall back to the host's, read-only, as runc does.
            Err(nix::errno::Errno::EPERM) if typ == "sysfs" && in_userns => {
                mount(
                    Some("/sys"),
                    &dest,
                    NONE,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    NONE,
                )
                .ctx(|| "bind /sys")?;
            }
            r => r.ctx(|| format!("mount type {typ}"))?,
        }
    }
    for p in &opts.propagation {
        mount(NONE, &dest, NONE, *p, NONE).ctx(|| "set propagation")?;
    }
    Ok(())
}

/// Remounts a bind mount with `flags`, keeping the flags the kernel has locked on it (a user
/// namespace may not clear nosuid/nodev/noexec/atime flags it inherited).
fn remount_bind(dest: &Path, flags: MsFlags) -> Result<()> {
    let locked = nix::sys::statvfs::statvfs(dest)
        .map(|s| {
            use nix::sys::statvfs::FsFlags;
            let f = s.flags();
            let mut m = MsFlags::empty();
            for (a, b) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if f.contains(a) {
                    m |= b;
                }
            }
            m
        })
        .unwrap_or_else(|_| MsFlags::empty());
    mount(
        NONE,
        dest,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked,
        NONE,
    )
    .ctx(|| format!("remount {} with {flags:?}", dest.display()))
}

/// cgroup v2: a cgroup2 mount (the container has its own cgroup namespace) or the host's
/// tree. v1: a tmpfs with each hierarchy's container directory bound read-only into it, so
/// the container sees its own limits at the usual paths.
fn mount_cgroup(dest: &Path, opts: &MountOptions, cgroup_dirs: &[(String, PathBuf)]) -> Result<()> {
    make_mountpoint(dest, true)?;
    let ro = opts.flags & MsFlags::MS_RDONLY;
    let v2 = cgroup_dirs.len() == 1 && cgroup_dirs[0].0.is_empty();
    if v2 {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | ro;
        if mount(Some("cgroup2"), dest, Some("cgroup2"), flags, NONE).is_err() {
            mount(Some(&cgroup_dirs[0].1), dest, NONE, MsFlags::MS_BIND, NONE)
                .ctx(|| "bind the container's cgroup")?;
        }
        return Ok(());
    }
    mount(
        Some("tmpfs"),
        dest,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .ctx(|| "tmpfs for /sys/fs/cgroup")?;
    let mut done = std::collections::HashSet::new();
    for (_, dir) in cgroup_dirs {
        // The hierarchy's mount name (`memory`, `cpu,cpuacct`) is the first component under
        // /sys/fs/cgroup of the container's directory.
        let Ok(rel) = dir.strip_prefix("/sys/fs/cgroup") else {
            continue;
        };
        let Some(name) = rel.components().next() else {
            continue;
        };
        let name = name.as_os_str().to_owned();
        if !done.insert(name.clone()) {
            continue;
        }
        let target = dest.join(&name);
        std::fs::create_dir_all(&target).ctx(|| format!("mkdir {}", target.display()))?;
        mount(Some(dir), &target, NONE, MsFlags::MS_BIND, NONE)
            .ctx(|| format!("bind {}", dir.display()))?;
        remount_bind(
            &target,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    if ro.contains(MsFlags::MS_RDONLY) {
        remount_bind(dest, MsFlags::MS_RDONLY).or_else(|_| {
            mount(
                NONE,
                dest,
                NONE,
                MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                NONE,
            )
            .ctx(|| "remount /sys/fs/cgroup read-only")
        })?;
    }
    Ok(())
}

fn make_mountpoint(dest: &Path, dir: bool) -> Result<()> {
    if dest.exists() {
        return Ok(());
    }
    if dir {
        std::fs::create_dir_all(dest).ctx(|| format!("mkdir {}", dest.display()))
    } else {
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).ctx(|| format!("mkdir {}", p.display()))?;
        }
        std::fs::File::create(dest)
            .map(|_| ())
            .ctx(|| format!("create {}", dest.display()))
    }
}

/// The devices every container gets (runtime-spec `config-linux.md` "Default Devices").
pub fn default_devices() -> Vec<LinuxDevice> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(path, major, minor)| {
        oci_spec::runtime::LinuxDeviceBuilder::default()
            .path(path)
            .typ(LinuxDeviceType::C)
            .major(major)
            .minor(minor)
            .file_mode(0o666u32)
            .uid(0u32)
            .gid(0u32)
            .build()
            .expect("static device")
    })
    .collect()
}

/// mknod in the rootfs; inside a user namespace mknod is not allowed, so the host's device
/// node is bound onto an empty file instead, as runc does.
fn create_device(rootfs: &Path, d: &LinuxDevice, in_userns: bool) -> Result<()> {
    let dest = secure_join(rootfs, d.path());
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p).ctx(|| format!("mkdir {}", p.display()))?;
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(Error::Other(format!(
                "device {}: type 'a' is only valid in cgroup rules",
                d.path().display()
            )));
        }
    };
    let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
    let _ = std::fs::remove_file(&dest);
    let made = if in_userns {
        Err(nix::errno::Errno::EPERM)
    } else {
        mknod(
            &dest,
            kind,
            mode,
            makedev(d.major() as u64, d.minor() as u64),
        )
    };
    match made {
        Ok(()) => {
            // mknod applies the umask; set the mode the spec asked for exactly.
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                &dest,
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .ctx(|| format!("chmod {}", dest.display()))?;
            nix::unistd::chown(
                &dest,
                d.uid().map(nix::unistd::Uid::from_raw),
                d.gid().map(nix::unistd::Gid::from_raw),
            )
            .ctx(|| format!("chown {}", dest.display()))
        }
        Err(nix::errno::Errno::EPERM) => {
            std::fs::File::create(&dest).ctx(|| format!("create {}", dest.display()))?;
            mount(Some(d.path()), &dest, NONE, MsFlags::MS_BIND, NONE)
                .ctx(|| format!("bind host device {}", d.path().display()))
        }
        Err(e) => Err(e).ctx(|| format!("mknod {}", dest.display())),
    }
}

fn dev_symlinks(rootfs: &Path) -> Result<()> {
    let links = [
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
        ("pts/ptmx", "dev/ptmx"),
    ];
    for (target, link) in links {
        let path = rootfs.join(link);
        let _ = std::fs::remove_file(&path);
        symlink(target, &path).ctx(|| format!("symlink {}", path.display()))?;
    }
    if Path::new("/proc/kcore").exists() {
        let path = rootfs.join("dev/core");
        let _ = std::fs::remove_file(&path);
        symlink("/proc/kcore", &path).ctx(|| "symlink /dev/core")?;
    }
    Ok(())
}

/// Makes `rootfs` the root: pivot_root with the old root stacked under the new one and
/// detached (no directory for it needed), or, with `--no-pivot`, a move mount and chroot.
pub fn enter(rootfs: &Path, no_pivot: bool) -> Result<()> {
    if no_pivot {
        nix::unistd::chdir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
        mount(Some(rootfs), "/", NONE, MsFlags::MS_MOVE, NONE).ctx(|| "move rootfs to /")?;
        nix::unistd::chroot(".").ctx(|| "chroot")?;
    } else {
        let old = nix::fcntl::open(
            "/",
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY,
            Mode::empty(),
        )
        .ctx(|| "open /")?;
        let new = nix::fcntl::open(
            rootfs,
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY,
            Mode::empty(),
        )
        .ctx(|| format!("open {}", rootfs.display()))?;
        nix::unistd::fchdir(&new).ctx(|| "fchdir rootfs")?;
        nix::unistd::pivot_root(".", ".")
            .ctx(|| format!("pivot_root into {}", rootfs.display()))?;
        // The old root is now mounted on top of the new one: detach it, without letting the
        // unmount propagate to the host.
        nix::unistd::fchdir(&old).ctx(|| "fchdir old root")?;
        mount(NONE, ".", NONE, MsFlags::MS_SLAVE | MsFlags::MS_REC, NONE)
            .ctx(|| "make the old root a slave")?;
        umount2(".", MntFlags::MNT_DETACH).ctx(|| "detach the old root")?;
        nix::unistd::fchdir(&new).ctx(|| "fchdir new root")?;
    }
    nix::unistd::chdir("/").ctx(|| "chdir /")
}

/// After pivot: readonly and masked paths, then the root itself read-only if asked.
pub fn finalize(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.readonly_paths().clone())
        .unwrap_or_default()
    {
        let path = Path::new(&p);
        if !path.exists() {
            continue;
        }
        mount(
            Some(path),
            path,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .ctx(|| format!("bind readonly path {p}"))?;
        remount_bind(path, MsFlags::MS_RDONLY | MsFlags::MS_REC)?;
    }
    for p in linux
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default()
    {
        let path = Path::new(&p);
        match std::fs::metadata(path) {
            Err(_) => continue,
            Ok(m) if m.is_dir() => {
                mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, NONE)
                    .ctx(|| format!("mask directory {p}"))?
            }
            Ok(_) => mount(Some("/dev/null"), path, NONE, MsFlags::MS_BIND, NONE)
                .ctx(|| format!("mask file {p}"))?,
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> MountOptions {
        parse_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let o = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind);
    }

    #[test]
    fn rbind_and_propagation() {
        let o = opts(&["rbind", "ro", "rprivate"]);
        assert!(o.bind);
        assert!(
            o.flags
                .contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY)
        );
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
    }

    #[test]
    fn later_option_wins() {
        assert!(!opts(&["ro", "rw"]).flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn secure_join_keeps_symlinks_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/etc", root.join("a/abs")).unwrap();
        symlink("../../../../..", root.join("a/up")).unwrap();
        assert_eq!(secure_join(root, Path::new("/a/b")), root.join("a/b"));
        assert_eq!(secure_join(root, Path::new("/a/abs/x")), root.join("etc/x"));
        assert_eq!(secure_join(root, Path::new("/a/up/etc")), root.join("etc"));
        assert_eq!(secure_join(root, Path::new("../../x")), root.join("x"));
    }
}
