//! Small tmpfs mounts carried by ferry instead of CRIU. A container's `/dev` (and cgroup v1's
//! `/sys/fs/cgroup`) is a tmpfs of directories, device nodes, symlinks and empty mount-point
//! files. CRIU archives every tmpfs with a `tar` and a `gzip` process and unpacks it with two
//! more: about 5 ms a mount each way here. Where every entry is of those kinds, the dump
//! reads the tmpfs in-process, records it in the images ([`MARK`]) and declares the mount
//! external ([`key`]); restore mounts a new tmpfs with the same options, makes the same
//! entries with the same owners, modes and times, and gives it to CRIU, which mounts it
//! where it was and everything else over it. A tmpfs holding a file with data, a socket or
//! a hard link, or too many entries, is dumped by CRIU as before.
//!
//! The tmpfs is read through a clone of that one mount without the mounts over it
//! (`open_tree`, from inside the container's mount namespace): CRIU's `tar` also archives
//! what a mount hides.

use crate::checkpoint::externals::ExtTmpfs;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, readlinkat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmodat, fstatat, mkdirat, mknodat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, symlinkat};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The record in the images of the tmpfs mounts left out of them.
pub const MARK: &str = "ferry-tmpfs.json";

/// At most this many entries in one tmpfs; a larger one is CRIU's.
const MAX_ENTRIES: usize = 4096;

/// The name a tmpfs left out of the images gets there: `ferry-tmpfs:<mount point>`.
pub fn key(point: &str) -> String {
    format!("ferry-tmpfs:{point}")
}

/// One tmpfs mount: where, its superblock, its root directory and what is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tmpfs {
    /// The mount point in the container.
    pub point: String,
    /// The superblock's options without `rw`/`ro` (`size=65536k,mode=755`).
    pub options: String,
    pub read_only: bool,
    pub root: Meta,
    /// Parents before their children.
    pub entries: Vec<Entry>,
}

/// What the record keeps of an inode: its type and permission bits (`st_mode`), owner and
/// modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the tmpfs root, components joined by `/`.
    pub path: String,
    pub meta: Meta,
    /// Device nodes: the device number.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    /// Symlinks: the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A failed call as an io::Error that says which.
fn failed(what: impl std::fmt::Display) -> impl FnOnce(Errno) -> io::Error {
    move |e| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

fn meta(st: &FileStat) -> Meta {
    Meta {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: (st.st_mtime, st.st_mtime_nsec),
    }
}

/// The tmpfs mounts of the container whose init is `pid` that can be left out of CRIU's
/// images: a tmpfs of its own (root `/`, alone on its mount point, not the container's
/// root, not propagating), not one of `skip` (mounts external already, or carried another
/// way), whose every entry the record can hold. Read while the container is frozen, or
/// read again once it is. Not for a container in a user namespace: its tmpfs belong to
/// that namespace (the caller leaves those to CRIU).
pub fn readable(pid: i32, skip: &[String]) -> Vec<Tmpfs> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return vec![];
    };
    let mounts = crate::sys::mountinfo::parse(&text);
    let candidates: Vec<_> = mounts
        .iter()
        .filter(|m| {
            m.fstype == "tmpfs"
                && m.root == "/"
                && m.point != "/"
                && !m.propagates
                && !skip.contains(&m.point)
                && mounts.iter().filter(|o| o.point == m.point).count() == 1
        })
        .cloned()
        .collect();
    if candidates.is_empty() {
        return vec![];
    }
    let points: Vec<String> = candidates.iter().map(|m| m.point.clone()).collect();
    let read = crate::runtime::namespaces::on_thread_in(
        pid,
        oci_spec::runtime::LinuxNamespaceType::Mount,
        move || {
            Ok(points
                .iter()
                .map(|p| read_mount(p).ok().flatten())
                .collect::<Vec<_>>())
        },
    );
    let Ok(Ok(trees)) = read else {
        return vec![];
    };
    candidates
        .into_iter()
        .zip(trees)
        .filter_map(|(m, tree)| {
            let (root, entries) = tree?;
            Some(Tmpfs {
                point: m.point.clone(),
                options: m
                    .super_opts
                    .split(',')
                    .filter(|o| *o != "rw" && *o != "ro")
                    .collect::<Vec<_>>()
                    .join(","),
                read_only: m.super_read_only(),
                root,
                entries,
            })
        })
        .collect()
}

/// The root and entries of the mount at `point` (in this thread's mount namespace), seen
/// without the mounts over it; None when an entry does not fit the record.
fn read_mount(point: &str) -> io::Result<Option<(Meta, Vec<Entry>)>> {
    let p = CString::new(point).map_err(io::Error::other)?;
    // SAFETY: plain syscall (nix has no open_tree); the fd returned is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
        )
    } as libc::c_int;
    if fd < 0 {
        return Err(failed("open_tree")(Errno::last()));
    }
    // SAFETY: a fresh fd we own.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    // open_tree gives a path-only fd: open the root directory through it to list it.
    let top = Dir::openat(
        tree.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(failed("open the tmpfs root"))?;
    let root = fstatat(top.as_fd(), ".", AtFlags::AT_SYMLINK_NOFOLLOW).map_err(failed("stat"))?;
    let mut entries = vec![];
    if !walk(top, "", &mut entries)? {
        return Ok(None);
    }
    Ok(Some((meta(&root), entries)))
}

/// Adds the entries under the directory `dir` (at `prefix`) to `out`; false as soon as one
/// does not fit the record.
fn walk(mut dir: Dir, prefix: &str, out: &mut Vec<Entry>) -> io::Result<bool> {
    let mut names = vec![];
    for e in dir.iter() {
        let e = e.map_err(failed(format!("list {prefix:?}")))?;
        let name = e.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names.sort();
    for name in names {
        if out.len() >= MAX_ENTRIES {
            return Ok(false);
        }
        let Ok(n) = name.to_str() else {
            return Ok(false);
        };
        let path = if prefix.is_empty() {
            n.to_string()
        } else {
            format!("{prefix}/{n}")
        };
        let st = fstatat(dir.as_fd(), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(failed(format!("stat {path:?}")))?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFDIR && st.st_nlink != 1 {
            return Ok(false);
        }
        let mut entry = Entry {
            path,
            meta: meta(&st),
            rdev: 0,
            target: None,
        };
        match kind {
            libc::S_IFDIR => {
                let sub = Dir::openat(
                    dir.as_fd(),
                    name.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(failed(format!("open {:?}", entry.path)))?;
                let path = entry.path.clone();
                out.push(entry);
                if !walk(sub, &path, out)? {
                    return Ok(false);
                }
                continue;
            }
            libc::S_IFLNK => {
                let target = readlinkat(dir.as_fd(), name.as_c_str())
                    .map_err(failed(format!("readlink {:?}", entry.path)))?;
                let Ok(t) = target.into_string() else {
                    return Ok(false);
                };
                entry.target = Some(t);
            }
            libc::S_IFCHR | libc::S_IFBLK => entry.rdev = st.st_rdev,
            libc::S_IFIFO => {}
            libc::S_IFREG if st.st_size == 0 => {}
            _ => return Ok(false),
        }
        out.push(entry);
    }
    Ok(true)
}

/// Writes the records into `images` (removing a stale file when there are none).
pub fn record(images: &Path, mounts: &[Tmpfs]) -> io::Result<()> {
    let mark = images.join(MARK);
    if mounts.is_empty() {
        return match std::fs::remove_file(&mark) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    std::fs::write(mark, serde_json::to_vec(mounts)?)
}

/// The records a dump left in `images`; none when it left none.
pub fn recorded(images: &Path) -> Result<Vec<Tmpfs>, String> {
    let mark = images.join(MARK);
    let bytes = match std::fs::read(&mark) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(format!("read {}: {e}", mark.display())),
        Ok(b) => b,
    };
    let mounts: Vec<Tmpfs> = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} does not parse: {e}", mark.display()))?;
    for m in &mounts {
        for e in &m.entries {
            let p = Path::new(&e.path);
            let plain = !e.path.is_empty()
                && p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(format!(
                    "{} names {:?} in {}, which is not a plain relative path; refusing to restore",
                    mark.display(),
                    e.path,
                    m.point
                ));
            }
        }
    }
    Ok(mounts)
}

/// The tmpfs mounts a restore gives CRIU for the recorded ones, under `dir`
/// (`externals::ExtTmpfs`, which detaches them when dropped).
pub fn mount(records: &[Tmpfs], dir: &Path) -> io::Result<ExtTmpfs> {
    let mut out = ExtTmpfs::new(dir);
    for r in records {
        let at = out.add(
            key(&r.point),
            nix::mount::MsFlags::empty(),
            Some(r.options.as_str()),
        )?;
        populate(&at, r)
            .map_err(|e| io::Error::new(e.kind(), format!("rebuild {}: {e}", r.point)))?;
        if r.read_only {
            nix::mount::mount(
                None::<&str>,
                &at,
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
                Some(r.options.as_str()),
            )
            .map_err(|e| io::Error::other(format!("remount {} read-only: {e}", r.point)))?;
        }
    }
    Ok(out)
}

/// Makes `r`'s entries in the empty tmpfs at `at`, then their owners, modes and times
/// (children's before their directory's, whose time the children's creation changes).
fn populate(at: &Path, r: &Tmpfs) -> io::Result<()> {
    let root = std::fs::File::open(at)?;
    let dir = root.as_fd();
    for e in &r.entries {
        let name = e.path.as_str();
        let made = match e.meta.mode & libc::S_IFMT {
            libc::S_IFDIR => mkdirat(dir, name, Mode::from_bits_truncate(0o700)),
            libc::S_IFLNK => symlinkat(e.target.as_deref().unwrap_or_default(), dir, name),
            kind @ (libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFREG) => mknodat(
                dir,
                name,
                SFlag::from_bits_truncate(kind),
                Mode::from_bits_truncate(0o600),
                e.rdev as libc::dev_t,
            ),
            other => {
                return Err(io::Error::other(format!(
                    "{name}: type {other:o} is not one ferry records"
                )));
            }
        };
        made.map_err(failed(name))?;
        // The entry itself, never a symlink's target; chown before chmod, which it would
        // clear set-id bits after.
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(e.meta.uid)),
            Some(Gid::from_raw(e.meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(failed(name))?;
        if e.meta.mode & libc::S_IFMT != libc::S_IFLNK {
            fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(e.meta.mode & 0o7777),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(failed(name))?;
        }
    }
    for e in r.entries.iter().rev() {
        set_times(dir, e.path.as_str(), &e.meta)?;
    }
    fchownat(
        dir,
        ".",
        Some(Uid::from_raw(r.root.uid)),
        Some(Gid::from_raw(r.root.gid)),
        AtFlags::empty(),
    )
    .map_err(failed("the root"))?;
    fchmodat(
        dir,
        ".",
        Mode::from_bits_truncate(r.root.mode & 0o7777),
        FchmodatFlags::FollowSymlink,
    )
    .map_err(failed("the root"))?;
    set_times(dir, ".", &r.root)
}

fn set_times(dir: BorrowedFd<'_>, name: &str, m: &Meta) -> io::Result<()> {
    let t = TimeSpec::new(m.mtime.0, m.mtime.1);
    utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(failed(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sample() -> Tmpfs {
        let m = |mode, uid| Meta {
            mode,
            uid,
            gid: 5,
            mtime: (1_700_000_000, 123_456_789),
        };
        Tmpfs {
            point: "/dev".into(),
            options: "size=65536k,mode=755".into(),
            read_only: false,
            root: m(libc::S_IFDIR | 0o755, 0),
            entries: vec![
                Entry {
                    path: "pts".into(),
                    meta: m(libc::S_IFDIR | 0o755, 0),
                    rdev: 0,
                    target: None,
                },
                Entry {
                    path: "pts/inner".into(),
                    meta: m(libc::S_IFREG | 0o640, 7),
                    rdev: 0,
                    target: None,
                },
                Entry {
                    path: "null".into(),
                    meta: m(libc::S_IFCHR | 0o666, 0),
                    rdev: libc::makedev(1, 3),
                    target: None,
                },
                Entry {
                    path: "fd".into(),
                    meta: m(libc::S_IFLNK | 0o777, 0),
                    rdev: 0,
                    target: Some("/proc/self/fd".into()),
                },
                Entry {
                    path: "fifo".into(),
                    meta: m(libc::S_IFIFO | 0o1620, 3),
                    rdev: 0,
                    target: None,
                },
            ],
        }
    }

    /// Needs root (mount, mknod, chown, a mount namespace of its own).
    #[test]
    fn a_recorded_tmpfs_is_rebuilt_and_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let want = sample();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        record(&images, std::slice::from_ref(&want)).unwrap();
        let got = recorded(&images).unwrap();
        assert_eq!(got, vec![want.clone()]);

        let m = mount(&got, &dir.path().join("mounts")).unwrap();
        assert_eq!(m.ext_mounts.len(), 1);
        assert_eq!(m.ext_mounts[0].key, "ferry-tmpfs:/dev");
        let at = PathBuf::from(&m.ext_mounts[0].val);
        // Read back as a dump would: in a mount namespace (this test's own), the one mount.
        let at_s = at.to_string_lossy().into_owned();
        let back = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).unwrap();
            read_mount(&at_s)
        })
        .join()
        .unwrap()
        .unwrap()
        .expect("a rebuilt tmpfs fits the record");
        assert_eq!(back.0, want.root);
        let mut sorted = want.entries.clone();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        let mut back_sorted = back.1.clone();
        back_sorted.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(back_sorted, sorted);
        drop(m);
        assert!(!dir.path().join("mounts").exists());
    }

    #[test]
    fn what_the_record_cannot_hold_is_left_to_criu() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = sample();
        r.entries.truncate(1);
        let m = mount(&[r], &dir.path().join("mounts")).unwrap();
        let at = PathBuf::from(&m.ext_mounts[0].val);
        let read = |at: &Path| {
            let s = at.to_string_lossy().into_owned();
            std::thread::spawn(move || read_mount(&s))
                .join()
                .unwrap()
                .unwrap()
        };
        assert!(read(&at).is_some());
        // A file with data, then a hard link: neither fits.
        std::fs::write(at.join("data"), b"x").unwrap();
        assert!(read(&at).is_none());
        std::fs::write(at.join("data"), b"").unwrap();
        assert!(read(&at).is_some());
        std::fs::hard_link(at.join("data"), at.join("link")).unwrap();
        assert!(read(&at).is_none());
    }

    #[test]
    fn a_record_that_escapes_its_tmpfs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b", ""] {
            let mut r = sample();
            r.entries[0].path = bad.into();
            record(dir.path(), &[r]).unwrap();
            let e = recorded(dir.path()).unwrap_err();
            assert!(e.contains("not a plain relative path"), "{bad}: {e}");
        }
        record(dir.path(), &[]).unwrap();
        assert_eq!(recorded(dir.path()).unwrap(), vec![]);
    }
}
