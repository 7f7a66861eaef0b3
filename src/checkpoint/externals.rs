//! The mounts CRIU must leave out of the images and get back from us on restore: bind mounts
//! from the host, the per-hierarchy cgroup binds of cgroup v1, /dev/null over masked files,
//! devices bound from the host in a user namespace, and the empty read-only tmpfs over
//! masked directories.

use crate::criu::options::ExtMount;
use crate::runtime::rootfs::parse_options;
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};
use std::path::{Path, PathBuf};

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || parse_options(m.options().as_deref().unwrap_or_default()).bind
}

fn is_cgroup(m: &Mount) -> bool {
    matches!(m.typ().as_deref(), Some("cgroup") | Some("cgroup2"))
}

/// The cgroup v1 hierarchies bound under the container's cgroup mount: (mount point inside
/// the container, host directory of the container's cgroup there).
pub fn cgroup_binds(spec: &Spec, cgroup_dirs: &[(String, PathBuf)]) -> Vec<(String, PathBuf)> {
    let Some(m) = spec
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| is_cgroup(m))
    else {
        return vec![];
    };
    let dest = m.destination();
    if cgroup_dirs.len() == 1 && cgroup_dirs[0].0.is_empty() {
        // v2: a cgroup2 mount is dumped by CRIU itself; nothing external.
        return vec![];
    }
    let mut out: Vec<(String, PathBuf)> = vec![];
    for (_, dir) in cgroup_dirs {
        let Ok(rel) = dir.strip_prefix("/sys/fs/cgroup") else {
            continue;
        };
        let Some(name) = rel.components().next() else {
            continue;
        };
        let point = dest.join(name.as_os_str()).to_string_lossy().into_owned();
        if !out.iter().any(|(p, _)| *p == point) {
            out.push((point, dir.clone()));
        }
    }
    out
}

/// Masked paths that are files: ferry bind-mounts /dev/null over them (directories get a
/// tmpfs, which CRIU dumps itself). /proc and /sys are the kernel's, so the host's view tells;
/// anything else is looked up in the rootfs.
fn masked_files(spec: &Spec, rootfs: &Path) -> Vec<String> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            let path = if p.starts_with("/proc") || p.starts_with("/sys") {
                PathBuf::from(p)
            } else {
                crate::runtime::rootfs::secure_join(rootfs, Path::new(p))
            };
            std::fs::metadata(path)
                .map(|m| !m.is_dir())
                .unwrap_or(false)
        })
        .collect()
}

/// The name a masked directory gets in CRIU's images when it is left out of them:
/// `ferry-masked-dir:<path>`, one tmpfs each, as the container had.
pub fn masked_dir_key(path: &str) -> String {
    format!("ferry-masked-dir:{path}")
}

/// The masked directories of `spec` that are still what ferry made them, in the mount table
/// of the container's `pid`: an empty tmpfs, read-only down to its superblock, with nothing
/// mounted over or under it. CRIU would archive each with a `tar` and a `gzip` process, and
/// restore it with two more (about 10 ms a round trip per directory); declared external,
/// they are left out of the images and restore mounts a fresh empty one
/// ([`mount_masked_dirs`]). Anything the container changed there is dumped by CRIU as before.
pub fn untouched_masked_dirs(spec: &Spec, pid: i32) -> Vec<String> {
    let masked = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default();
    if masked.is_empty() {
        return vec![];
    }
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return vec![];
    };
    let mounts = crate::sys::mountinfo::parse(&text);
    masked
        .into_iter()
        .filter(|p| {
            let under = format!("{}/", p.trim_end_matches('/'));
            let on: Vec<_> = mounts.iter().filter(|m| m.point == *p).collect();
            let [m] = on.as_slice() else {
                return false;
            };
            m.fstype == "tmpfs"
                && m.root == "/"
                && m.super_read_only()
                && !mounts.iter().any(|m| m.point.starts_with(&under))
                && std::fs::read_dir(format!("/proc/{pid}/root{p}"))
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false)
        })
        .collect()
}

/// Tmpfs mounts a restore makes for CRIU to bind in as external mounts, each under
/// `<dir>/<n>`. Dropping this detaches them (the container keeps CRIU's binds of them) and
/// removes `dir`. A key the images do not use (an archive whose mount CRIU dumped itself) is
/// ignored by CRIU.
pub struct ExtTmpfs {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
    pub ext_mounts: Vec<ExtMount>,
}

impl ExtTmpfs {
    pub fn new(dir: &Path) -> ExtTmpfs {
        ExtTmpfs {
            dir: dir.to_path_buf(),
            mounted: vec![],
            ext_mounts: vec![],
        }
    }

    /// Mounts a new tmpfs (`flags`, `options`) for the external mount CRIU knows as `key`;
    /// where it is.
    pub fn add(
        &mut self,
        key: String,
        flags: nix::mount::MsFlags,
        options: Option<&str>,
    ) -> std::io::Result<PathBuf> {
        if self.mounted.is_empty() {
            std::fs::create_dir(&self.dir)?;
        }
        let at = self.dir.join(self.mounted.len().to_string());
        std::fs::create_dir(&at)?;
        if let Err(e) = nix::mount::mount(Some("tmpfs"), &at, Some("tmpfs"), flags, options) {
            let _ = std::fs::remove_dir(&at);
            return Err(std::io::Error::other(format!(
                "mount a tmpfs for {key} at {}: {e}",
                at.display()
            )));
        }
        self.mounted.push(at.clone());
        self.ext_mounts.push(ExtMount {
            key,
            val: at.to_string_lossy().into_owned(),
        });
        Ok(at)
    }
}

impl Drop for ExtTmpfs {
    fn drop(&mut self) {
        for m in &self.mounted {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(m);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The empty read-only tmpfs a restore gives CRIU for each masked directory
/// ([`masked_dir_key`]), one each as the container had, under `dir`.
pub fn mount_masked_dirs(spec: &Spec, rootfs: &Path, dir: &Path) -> std::io::Result<ExtTmpfs> {
    let files = masked_files(spec, rootfs);
    let mut out = ExtTmpfs::new(dir);
    for p in spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !files.contains(p))
    {
        out.add(masked_dir_key(&p), nix::mount::MsFlags::MS_RDONLY, None)?;
    }
    Ok(out)
}

fn userns_devices(spec: &Spec) -> Vec<String> {
    let userns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User);
    if !userns {
        return vec![];
    }
    let mut paths: Vec<String> = crate::runtime::rootfs::default_devices()
        .iter()
        .map(|d| d.path().to_string_lossy().into_owned())
        .collect();
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
    {
        paths.push(d.path().to_string_lossy().into_owned());
    }
    paths
}

/// The name `checkpoint -e` gives the container's /dev/shm in CRIU's images: the mount is
/// left out of them and its files go into `devshm-checkpoint.tar` instead (podman's layout).
pub const DEVSHM_KEY: &str = "devshm";

/// The spec's `/dev/shm` mount when it is a tmpfs of the container's own (not a bind from the
/// host, which is external anyway).
pub fn devshm_tmpfs(spec: &Spec) -> Option<&Mount> {
    spec.mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| m.destination() == Path::new("/dev/shm"))
        .filter(|m| m.typ().as_deref() == Some("tmpfs") && !is_bind(m))
}

/// `ext_mnt` for dump: every external mount named by its own mount point.
pub fn for_dump(spec: &Spec, rootfs: &Path, cgroup_dirs: &[(String, PathBuf)]) -> Vec<ExtMount> {
    let mut out = vec![];
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if is_bind(m) && !is_cgroup(m) {
            let d = m.destination().to_string_lossy().into_owned();
            out.push(ExtMount {
                key: d.clone(),
                val: d,
            });
        }
    }
    for (point, _) in cgroup_binds(spec, cgroup_dirs) {
        out.push(ExtMount {
            key: point.clone(),
            val: point,
        });
    }
    for p in masked_files(spec, rootfs) {
        out.push(ExtMount {
            key: p,
            val: "/dev/null".into(),
        });
    }
    for p in userns_devices(spec) {
        out.push(ExtMount {
            key: p.clone(),
            val: p,
        });
    }
    out
}

/// `ext_mnt` for restore: each name from the dump mapped to what to mount now (on this
/// host, for this container's new cgroup).
pub fn for_restore(spec: &Spec, rootfs: &Path, cgroup_dirs: &[(String, PathBuf)]) -> Vec<ExtMount> {
    let mut out = vec![];
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if is_bind(m) && !is_cgroup(m) {
            let src = m.source().clone().unwrap_or_default();
            out.push(ExtMount {
                key: m.destination().to_string_lossy().into_owned(),
                val: src.to_string_lossy().into_owned(),
            });
        }
    }
    for (point, dir) in cgroup_binds(spec, cgroup_dirs) {
        out.push(ExtMount {
            key: point,
            val: dir.to_string_lossy().into_owned(),
        });
    }
    if !masked_files(spec, rootfs).is_empty() {
        out.push(ExtMount {
            key: "/dev/null".into(),
            val: "/dev/null".into(),
        });
    }
    for p in userns_devices(spec) {
        out.push(ExtMount {
            key: p.clone(),
            val: p,
        });
    }
    out
}
