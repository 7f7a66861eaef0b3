//! Paths that come from an archive, checked before they touch the disk, and a root directory
//! that is walked one component at a time without ever following a symlink, so an entry can
//! neither name nor be written through anything outside the root it is applied to.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why a path from an archive is refused: the text completes "archive entry `x` …".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsafe {
    Absolute,
    ParentDir,
    Empty,
    Nul,
    /// A component on the way is a symlink: writing there would follow it.
    ThroughSymlink(PathBuf),
    /// A component on the way is not a directory.
    ThroughNonDir(PathBuf),
    /// A relative symlink target climbs above the root.
    LinkEscapes(PathBuf),
}

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsafe::Absolute => write!(f, "is an absolute path"),
            Unsafe::ParentDir => write!(f, "has a `..` component"),
            Unsafe::Empty => write!(f, "names the root itself"),
            Unsafe::Nul => write!(f, "holds a NUL byte"),
            Unsafe::ThroughSymlink(p) => write!(
                f,
                "would be written through the symlink `/{}`, which may lead outside the rootfs",
                p.display()
            ),
            Unsafe::ThroughNonDir(p) => {
                write!(f, "lies under `/{}`, which is not a directory", p.display())
            }
            Unsafe::LinkEscapes(t) => {
                write!(f, "links to `{}`, which escapes the rootfs", t.display())
            }
        }
    }
}

/// An entry name from a tar (`etc/passwd`, `./etc/`, `.`) as a path relative to the root.
/// The empty path is the root itself. Absolute names and any `..` are refused: a diff made
/// by ferry never holds them, so their presence means a crafted archive.
pub fn archive_name(raw: &[u8]) -> Result<PathBuf, Unsafe> {
    if raw.contains(&0) {
        return Err(Unsafe::Nul);
    }
    if raw.first() == Some(&b'/') {
        return Err(Unsafe::Absolute);
    }
    relative(Path::new(OsStr::from_bytes(raw)))
}

/// A `deleted.files` entry (a path in the container, `/etc/x`) as a path relative to the
/// root. Unlike tar names these are absolute by format; `..` and the root itself are refused.
pub fn container_path(path: &Path) -> Result<PathBuf, Unsafe> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(Unsafe::Nul);
    }
    let rel = relative(path.strip_prefix("/").unwrap_or(path))?;
    if rel.as_os_str().is_empty() {
        return Err(Unsafe::Empty);
    }
    Ok(rel)
}

fn relative(path: &Path) -> Result<PathBuf, Unsafe> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(Unsafe::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(Unsafe::Absolute),
        }
    }
    Ok(out)
}

/// Whether a symlink at `entry` (relative to the root) with a relative `target` climbs above
/// the root. Absolute targets resolve inside the container's root at run time, so they do
/// not escape; nothing here follows a symlink anyway, this only refuses crafted archives.
pub fn symlink_escapes(entry: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = entry.components().count().saturating_sub(1);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            _ => {}
        }
    }
    false
}

/// A directory opened once; every path under it is reached by `openat` with `O_NOFOLLOW`.
pub struct Root {
    fd: OwnedFd,
}

/// Why a walk under the root stopped.
#[derive(Debug)]
pub enum WalkError {
    Unsafe(Unsafe),
    /// A parent directory does not exist (and was not to be created).
    Missing,
    Sys(Errno),
}

impl From<Errno> for WalkError {
    fn from(e: Errno) -> Self {
        WalkError::Sys(e)
    }
}

impl Root {
    pub fn open(path: &Path) -> nix::Result<Root> {
        let fd = openat(
            nix::fcntl::AT_FDCWD,
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the directory that holds `rel` (an already checked relative path) and returns it
    /// with the final name. Missing directories on the way are made (0755, as tar does) when
    /// `create` is set. A symlink or non-directory on the way is an error naming it.
    pub fn parent(&self, rel: &Path, create: bool) -> Result<(OwnedFd, PathBuf), WalkError> {
        let mut comps: Vec<&OsStr> = rel.iter().collect();
        let name = comps.pop().ok_or(WalkError::Unsafe(Unsafe::Empty))?;
        let mut dir = self
            .fd
            .try_clone()
            .map_err(|e| WalkError::Sys(errno_of(&e)))?;
        let mut walked = PathBuf::new();
        for comp in comps {
            walked.push(comp);
            dir = open_dir_step(dir.as_fd(), comp, &walked, create)?;
        }
        Ok((dir, PathBuf::from(name)))
    }

    /// Opens `rel` itself as a directory (the root for an empty path), never following a symlink.
    pub fn dir(&self, rel: &Path) -> Result<OwnedFd, WalkError> {
        if rel.as_os_str().is_empty() {
            return self
                .fd
                .try_clone()
                .map_err(|e| WalkError::Sys(errno_of(&e)));
        }
        let (parent, name) = self.parent(rel, false)?;
        open_dir_step(parent.as_fd(), name.as_os_str(), rel, false)
    }
}

fn open_dir_step(
    dir: BorrowedFd<'_>,
    comp: &OsStr,
    walked: &Path,
    create: bool,
) -> Result<OwnedFd, WalkError> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(dir, comp, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOENT) if create => {
            match mkdirat(dir, comp, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            openat(dir, comp, flags, Mode::empty()).map_err(|e| classify(dir, comp, walked, e))
        }
        Err(Errno::ENOENT) => Err(WalkError::Missing),
        Err(e) => Err(classify(dir, comp, walked, e)),
    }
}

fn classify(dir: BorrowedFd<'_>, comp: &OsStr, walked: &Path, e: Errno) -> WalkError {
    if !matches!(e, Errno::ENOTDIR | Errno::ELOOP) {
        return WalkError::Sys(e);
    }
    match fstatat(dir, comp, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
            WalkError::Unsafe(Unsafe::ThroughSymlink(walked.to_path_buf()))
        }
        _ => WalkError::Unsafe(Unsafe::ThroughNonDir(walked.to_path_buf())),
    }
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// `/proc/self/fd/N[/name]`: how the path-only calls (xattrs, chmod through an `O_PATH` fd)
/// reach an object already opened without following symlinks.
pub fn proc_path(fd: BorrowedFd<'_>, name: Option<&Path>) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if let Some(n) = name {
        p.push(n);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_are_relative_and_normalised() {
        assert_eq!(
            archive_name(b"etc/passwd").unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(archive_name(b"./etc/").unwrap(), PathBuf::from("etc"));
        assert_eq!(archive_name(b"a//b/./c").unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(archive_name(b".").unwrap(), PathBuf::new());
        assert_eq!(archive_name(b"./").unwrap(), PathBuf::new());
    }

    #[test]
    fn archive_names_that_could_escape_are_refused() {
        assert_eq!(archive_name(b"../x"), Err(Unsafe::ParentDir));
        assert_eq!(archive_name(b"a/../../x"), Err(Unsafe::ParentDir));
        // Even a `..` that stays inside is refused: ferry never writes one.
        assert_eq!(archive_name(b"a/../b"), Err(Unsafe::ParentDir));
        assert_eq!(archive_name(b"/etc/passwd"), Err(Unsafe::Absolute));
        assert_eq!(archive_name(b"//etc"), Err(Unsafe::Absolute));
        assert_eq!(archive_name(b"a\0b"), Err(Unsafe::Nul));
    }

    #[test]
    fn deleted_paths_are_container_absolute() {
        assert_eq!(
            container_path(Path::new("/etc/x")).unwrap(),
            PathBuf::from("etc/x")
        );
        assert_eq!(
            container_path(Path::new("etc/x")).unwrap(),
            PathBuf::from("etc/x")
        );
        assert_eq!(
            container_path(Path::new("/a/./b/")).unwrap(),
            PathBuf::from("a/b")
        );
        assert_eq!(container_path(Path::new("/../etc")), Err(Unsafe::ParentDir));
        assert_eq!(
            container_path(Path::new("/a/../../etc")),
            Err(Unsafe::ParentDir)
        );
        assert_eq!(container_path(Path::new("/")), Err(Unsafe::Empty));
        assert_eq!(container_path(Path::new("/.")), Err(Unsafe::Empty));
    }

    #[test]
    fn relative_symlinks_may_not_climb_above_the_root() {
        let e = Path::new;
        assert!(!symlink_escapes(e("bin/sh"), e("busybox")));
        assert!(!symlink_escapes(e("bin/sh"), e("../usr/bin/busybox")));
        assert!(!symlink_escapes(e("a/b/c"), e("../../x")));
        assert!(symlink_escapes(e("a/b/c"), e("../../../x")));
        assert!(symlink_escapes(e("top"), e("../etc/passwd")));
        assert!(symlink_escapes(e("a/l"), e("x/../../../etc")));
        // Absolute targets resolve in the container's own root.
        assert!(!symlink_escapes(
            e("etc/localtime"),
            e("/usr/share/zoneinfo/UTC")
        ));
        assert!(!symlink_escapes(e("l"), e("/")));
    }

    #[test]
    fn walking_never_follows_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("d/out")).unwrap();
        std::fs::write(tmp.path().join("file"), b"x").unwrap();
        let root = Root::open(tmp.path()).unwrap();

        let (_, name) = root.parent(Path::new("d/new"), false).unwrap();
        assert_eq!(name, PathBuf::from("new"));
        match root.parent(Path::new("d/out/x"), true) {
            Err(WalkError::Unsafe(Unsafe::ThroughSymlink(p))) => {
                assert_eq!(p, PathBuf::from("d/out"))
            }
            other => panic!("expected a symlink refusal, got {other:?}"),
        }
        match root.parent(Path::new("file/x"), true) {
            Err(WalkError::Unsafe(Unsafe::ThroughNonDir(p))) => {
                assert_eq!(p, PathBuf::from("file"))
            }
            other => panic!("expected a non-directory refusal, got {other:?}"),
        }
        assert!(matches!(
            root.parent(Path::new("no/such/x"), false),
            Err(WalkError::Missing)
        ));
        root.parent(Path::new("made/on/the/way/x"), true).unwrap();
        assert!(tmp.path().join("made/on/the/way").is_dir());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
