//! Where `checkpoint -e` writes its archive, so that a checkpoint that does not finish
//! loses nothing: not the archive an earlier checkpoint left at the same path, not the FIFO
//! or device it was told to write into.
//!
//! - A regular file (or a path that does not exist yet) is written under no name at all
//!   (`O_TMPFILE`, or a hidden temporary name beside it where the filesystem has no
//!   `O_TMPFILE`), made durable, and only then given the path's name, replacing what was
//!   there in one rename. A checkpoint that fails, or a ferry that is killed, leaves the
//!   path as it was. A new archive is 0600: it holds the container's memory. One that
//!   replaces an earlier archive keeps that file's mode and owner.
//! - `-`, a FIFO or a character device is a stream: written as it comes, never synced,
//!   never removed. A terminal as standard output is refused, and so is an output that
//!   keeps nothing (`/dev/null`, `/dev/zero`) when the container is to be released.

use crate::runtime::error::{Context, Error, Result};
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// `/dev/null` or `/dev/zero`: takes what is written and keeps none of it.
fn discards(m: &std::fs::Metadata) -> bool {
    let (major, minor) = (libc::major(m.rdev()), libc::minor(m.rdev()));
    m.file_type().is_char_device() && major == 1 && (minor == 3 || minor == 5)
}

fn discarded(what: &str) -> Error {
    Error::Other(format!(
        "{what} discards what is written to it: the archive would be thrown away and the \
         container it replaces with it. Give a file or a pipe, or add --leave-running (to \
         time a checkpoint, say)"
    ))
}

/// The archive's destination, opened before the container is frozen.
pub enum Output {
    Stream(std::io::BufWriter<Box<dyn Write + Send>>),
    File(Pending),
}

impl Output {
    /// Opens `path` ("-" is standard output) for an archive of `container`, or says why it
    /// cannot be. `releases`: the container is released once the archive is written, so
    /// an output that keeps nothing of it (`/dev/null`) would lose the container.
    pub fn open(path: &Path, container: &str, releases: bool) -> Result<Output> {
        if path == Path::new("-") {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                return Err(Error::Other(
                    "standard output is a terminal: `-e -` writes the archive there as \
                     binary, where it would be lost. Redirect it to a file or pipe it to \
                     `ferry restore -i -`, or give a file name to -e"
                        .into(),
                ));
            }
            if releases && std::fs::metadata("/proc/self/fd/1").is_ok_and(|m| discards(&m)) {
                return Err(discarded("standard output"));
            }
            return Ok(Output::Stream(std::io::BufWriter::with_capacity(
                1 << 20,
                Box::new(std::io::stdout()),
            )));
        }
        let shown = path.display();
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Err(Error::Other(format!(
                "{shown} is a directory; give the archive's file name (or `-` for standard \
                 output)"
            ))),
            Ok(m) if releases && discards(&m) => Err(discarded(&shown.to_string())),
            Ok(m) if m.file_type().is_fifo() || m.file_type().is_char_device() => {
                // Opened as a shell's `>` would, without truncating or creating anything;
                // a FIFO's open waits for its reader, still before anything is frozen.
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .ctx(|| format!("open {shown}"))?;
                Ok(Output::Stream(std::io::BufWriter::with_capacity(
                    1 << 20,
                    Box::new(f),
                )))
            }
            Ok(m) if m.is_file() => {
                // Through any symlink: the archive replaces the file it points to.
                let real = std::fs::canonicalize(path).ctx(|| format!("resolve {shown}"))?;
                if let Some(other) = tag(&real).filter(|other| other != container) {
                    return Err(Error::Other(format!(
                        "{shown} holds the checkpoint of container {other:?}, which this one \
                         would replace (and that checkpoint may be all that is left of \
                         {other:?}); give another path, or remove {shown} first if that \
                         archive is no longer needed"
                    )));
                }
                Pending::new(&real, Some(&m), container).map(Output::File)
            }
            Ok(_) => Err(Error::Other(format!(
                "{shown} is neither a file, a FIFO nor a character device; give the \
                 archive's file name (or `-` for standard output)"
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(path).is_ok() {
                    return Err(Error::Other(format!(
                        "{shown} is a symbolic link to nothing; give the archive's own path"
                    )));
                }
                Pending::new(path, None, container).map(Output::File)
            }
            Err(e) => Err(Error::Io {
                context: format!("stat {shown}"),
                source: e,
            }),
        }
    }

    /// Leaves a file's fdatasync to `commit`: `flush` then only writes out what is buffered.
    /// For `--leave-running`, whose container is thawed before the archive is named.
    pub fn defer_sync(&mut self) {
        if let Output::File(p) = self {
            p.file.defer_sync = true;
        }
    }

    /// Makes the archive durable and gives it its name: after this, and not before, the
    /// container may be released. A stream is flushed.
    pub fn commit(self) -> std::io::Result<()> {
        match self {
            Output::Stream(mut s) => s.flush(),
            Output::File(p) => p.commit(),
        }
    }
}

impl Write for Output {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Stream(s) => s.write(b),
            Output::File(p) => p.file.write(b),
        }
    }
    fn write_vectored(&mut self, b: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Output::Stream(s) => s.write_vectored(b),
            Output::File(p) => p.file.write_vectored(b),
        }
    }
    /// For a file, fdatasync: once everything is written, the time this takes is what was
    /// left to reach the disk (the stats' `sync_ms`).
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stream(s) => s.flush(),
            Output::File(p) => p.file.flush(),
        }
    }
}

/// A regular file's archive on its way: written without its name, named by `commit`.
pub struct Pending {
    file: Durable,
    /// The target's directory and name in it.
    dir: OwnedFd,
    name: OsString,
    /// Where the filesystem has no `O_TMPFILE`: the temporary name, removed unless committed.
    temp: Option<CString>,
    /// Whether an archive was at the path when this one began (it is then replaced).
    replaces: bool,
}

impl Pending {
    fn new(path: &Path, existing: Option<&std::fs::Metadata>, container: &str) -> Result<Pending> {
        Self::create(path, existing, true, container)
    }

    /// `unnamed`: try `O_TMPFILE` first (false only to test the fallback).
    fn create(
        path: &Path,
        existing: Option<&std::fs::Metadata>,
        unnamed: bool,
        container: &str,
    ) -> Result<Pending> {
        let shown = path.display();
        let name = path
            .file_name()
            .ok_or_else(|| Error::Other(format!("{shown}: give the archive's file name")))?
            .to_os_string();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir: OwnedFd = File::open(&parent)
            .ctx(|| format!("open the directory {} for {shown}", parent.display()))?
            .into();
        let tried = if unnamed {
            open_unnamed(&dir)
        } else {
            Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        };
        let (file, temp) = match tried {
            Ok(f) => (f, None),
            // EOPNOTSUPP where the filesystem lacks it, EISDIR on kernels before it (open(2)).
            // EINVAL and ENOSYS too, defensively: not documented for this, but a failure
            // here should only cost the hidden name, not the checkpoint.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOSYS)
                ) =>
            {
                let (f, t) =
                    open_temp(&dir, &name).ctx(|| format!("create a file beside {shown}"))?;
                (f, Some(t))
            }
            Err(e) => {
                return Err(Error::Io {
                    context: format!("create {shown}"),
                    source: e,
                });
            }
        };
        // Tag, mode and owner now, before anything is frozen, not at commit.
        let _ = set_tag(&file, container);
        if let Some(m) = existing {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))
                .ctx(|| format!("give the new {shown} the mode of the one it replaces"))?;
            // Best effort: only root may give a file away.
            let _ = std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()));
        }
        Ok(Pending {
            file: Durable::new(file),
            dir,
            name,
            temp,
            replaces: existing.is_some(),
        })
    }

    fn commit(mut self) -> std::io::Result<()> {
        self.file.defer_sync = false;
        self.file.flush()?;
        let file = &self.file.file;
        let name = CString::new(self.name.as_bytes()).map_err(std::io::Error::other)?;
        let unnamed = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        let dir = self.dir.as_raw_fd();
        let linked = |from_dir: i32, from: &CString, to: &CString, flags: i32| {
            // SAFETY: valid C strings and directory fds.
            os(unsafe { libc::linkat(from_dir, from.as_ptr(), dir, to.as_ptr(), flags) })
        };
        let renamed = |from: &CString| {
            // SAFETY: valid C strings and a directory fd.
            os(unsafe { libc::renameat(dir, from.as_ptr(), dir, name.as_ptr()) })
        };
        let follow = libc::AT_SYMLINK_FOLLOW;
        let r = match (self.replaces, self.temp.take()) {
            // Nothing was at the path when the checkpoint began: a link, which fails where a
            // rename would replace, should another checkpoint have given the path to its
            // archive meanwhile (two at once to one new path: the second fails, rather
            // than replace the first, whose container may be gone).
            (false, None) => linked(libc::AT_FDCWD, &unnamed, &name, follow),
            (false, Some(t)) => {
                let r = linked(dir, &t, &name, 0);
                let _ = unlinkat(&self.dir, &t);
                r
            }
            // Replacing the archive that was there: under a temporary name, then renamed
            // over it (linkat cannot replace).
            (true, None) => {
                let t = temp_name(&self.name);
                let _ = unlinkat(&self.dir, &t);
                linked(libc::AT_FDCWD, &unnamed, &t, follow).and_then(|()| {
                    renamed(&t).inspect_err(|_| {
                        let _ = unlinkat(&self.dir, &t);
                    })
                })
            }
            (true, Some(t)) => renamed(&t).inspect_err(|_| {
                let _ = unlinkat(&self.dir, &t);
            }),
        };
        r.map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} was made by someone else while this checkpoint was written (another \
                     checkpoint to the same path?); this archive is not kept: give another path",
                    self.name.to_string_lossy()
                ),
            ),
            _ => e,
        })?;
        // The name is durable too: a host that crashes now still finds the archive.
        nix::unistd::fsync(self.dir.as_fd()).map_err(std::io::Error::from)
    }
}

/// The extended attribute naming the container whose checkpoint an archive file holds: a
/// checkpoint of another container to the same path is refused before it freezes anything
/// (in a drain, a script that gives two containers one path would otherwise keep only the
/// last, the others already released). Best effort: a filesystem without user xattrs, or a
/// copy that dropped them, just goes without.
const TAG: &std::ffi::CStr = c"user.ferry.container";

fn set_tag(file: &File, container: &str) -> std::io::Result<()> {
    // SAFETY: a valid fd, C string and buffer.
    os(unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            TAG.as_ptr(),
            container.as_ptr().cast(),
            container.len(),
            0,
        )
    })
}

/// The container an archive file was written for (see [`TAG`]).
fn tag(path: &Path) -> Option<String> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            TAG.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(t) = &self.temp {
            let _ = unlinkat(&self.dir, t);
        }
    }
}

/// A hidden name beside `name`, unique to this process and call (an agent may write several
/// archives at once).
fn temp_name(name: &std::ffi::OsStr) -> CString {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut t = b".".to_vec();
    t.extend_from_slice(name.as_bytes());
    t.extend_from_slice(format!(".ferry-partial-{}-{n}", std::process::id()).as_bytes());
    CString::new(t).expect("a file name has no NUL")
}

fn unlinkat(dir: &OwnedFd, name: &CString) -> std::io::Result<()> {
    // SAFETY: a valid C string and a directory fd.
    os(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })
}

/// A libc call's 0 or -1 as a Result.
fn os(r: libc::c_int) -> std::io::Result<()> {
    match r {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// A file without a name in `dir`: gone by itself if ferry dies before `commit`.
fn open_unnamed(dir: &OwnedFd) -> std::io::Result<File> {
    // SAFETY: a valid C string and a directory fd; the result is checked.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c".".as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is ours.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A new hidden file beside the archive's name, where `O_TMPFILE` is not supported.
fn open_temp(dir: &OwnedFd, name: &std::ffi::OsStr) -> std::io::Result<(File, CString)> {
    let t = temp_name(name);
    let _ = unlinkat(dir, &t);
    // SAFETY: a valid C string and a directory fd; the result is checked.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            t.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is ours.
    Ok((unsafe { File::from_raw_fd(fd) }, t))
}

/// The archive file, on disk before the source is released: `flush` is fdatasync, so a
/// host that crashes right after `checkpoint -e` still has the container in the archive.
/// Writeback is started every few MiB as the archive is written, so that final sync (and
/// the one the kernel does when the source's overlay is unmounted) finds little left.
///
/// It buffers small writes (tar headers, small entries) itself, and writes a large one
/// (a page part, a raw zstd frame given as slices) with what is buffered in one writev:
/// std's BufWriter would copy every slice of a vectored write into its buffer first.
struct Durable {
    file: std::fs::File,
    pending: Vec<u8>,
    pos: u64,
    started: u64,
    /// Nothing written since the last fdatasync.
    synced: bool,
    /// `flush` leaves the fdatasync to the commit (`Output::defer_sync`).
    defer_sync: bool,
}

impl Durable {
    const STEP: u64 = 32 << 20;
    const BUFFER: usize = 256 << 10;

    fn new(file: std::fs::File) -> Durable {
        Durable {
            file,
            pending: Vec::with_capacity(Self::BUFFER),
            pos: 0,
            started: 0,
            synced: false,
            defer_sync: false,
        }
    }

    /// Writes what is buffered followed by `more`, all of it.
    fn write_through(&mut self, more: &[std::io::IoSlice<'_>]) -> std::io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let mut slices = Vec::with_capacity(more.len() + 1);
        slices.push(std::io::IoSlice::new(&pending));
        slices.extend(more.iter().map(|s| std::io::IoSlice::new(s)));
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let r = crate::archive::frames::write_all_vectored(&mut self.file, &mut slices);
        self.pending = pending;
        self.pending.clear();
        r?;
        self.wrote(total);
        Ok(())
    }

    /// Counts `n` bytes written and starts writeback of every full step behind them.
    fn wrote(&mut self, n: usize) {
        self.pos += n as u64;
        self.synced = false;
        if self.pos - self.started >= Self::STEP {
            // SAFETY: a writeback request on our own fd; failure only means later.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.started as libc::off64_t,
                    (self.pos - self.started) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            self.started = self.pos;
        }
    }
}

impl Write for Durable {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.write_vectored(&[std::io::IoSlice::new(b)])
    }

    fn write_vectored(&mut self, b: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let total: usize = b.iter().map(|s| s.len()).sum();
        if self.pending.len() + total <= Self::BUFFER {
            for s in b {
                self.pending.extend_from_slice(s);
            }
        } else {
            self.write_through(b)?;
        }
        Ok(total)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.write_through(&[])?;
        }
        if !self.synced && !self.defer_sync {
            self.file.sync_data()?;
            self.synced = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_file_appears_whole_on_commit_and_not_at_all_without_it() {
        for unnamed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.tar");
            std::fs::write(&path, b"earlier").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            let earlier = std::fs::metadata(&path).unwrap();

            let mut p = Pending::create(&path, Some(&earlier), unnamed, "c").unwrap();
            p.file.write_all(b"dropped").unwrap();
            drop(p);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                b"earlier",
                "unnamed={unnamed}"
            );
            assert_eq!(names(dir.path()), ["a.tar"], "unnamed={unnamed}");

            let mut p = Pending::create(&path, Some(&earlier), unnamed, "c").unwrap();
            p.file.write_all(&vec![7u8; 300 << 10]).unwrap();
            assert_eq!(
                std::fs::read(&path).unwrap(),
                b"earlier",
                "named before commit"
            );
            p.commit().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 300 << 10]);
            let m = std::fs::metadata(&path).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o640, "unnamed={unnamed}");
            assert_eq!(names(dir.path()), ["a.tar"], "unnamed={unnamed}");

            let fresh = dir.path().join("b.tar");
            let mut p = Pending::create(&fresh, None, unnamed, "c").unwrap();
            p.file.write_all(b"new").unwrap();
            p.commit().unwrap();
            let m = std::fs::metadata(&fresh).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o600, "unnamed={unnamed}");
        }
    }

    #[test]
    fn of_two_archives_begun_for_one_new_path_the_second_is_refused_not_swapped_in() {
        for unnamed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.tar");
            let mut first = Pending::create(&path, None, unnamed, "one").unwrap();
            let mut second = Pending::create(&path, None, unnamed, "two").unwrap();
            first.file.write_all(b"first").unwrap();
            second.file.write_all(b"second").unwrap();
            first.commit().unwrap();
            let e = second.commit().unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
            assert!(e.to_string().contains("give another path"), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), b"first", "unnamed={unnamed}");
            assert_eq!(names(dir.path()), ["a.tar"], "unnamed={unnamed}");
        }
    }

    #[test]
    fn an_archive_of_another_container_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let mut p = Pending::create(&path, None, true, "one").unwrap();
        p.file.write_all(b"one's memory").unwrap();
        p.commit().unwrap();
        assert!(
            Output::open(&path, "one", true).is_ok(),
            "its own container's archive"
        );
        match tag(&path) {
            Some(t) => {
                assert_eq!(t, "one");
                let e = Output::open(&path, "two", true)
                    .err()
                    .expect("replaced another's archive");
                assert!(
                    e.to_string()
                        .contains("holds the checkpoint of container \"one\""),
                    "{e}"
                );
            }
            // A filesystem without user xattrs: nothing to go by, replaced as before.
            None => assert!(Output::open(&path, "two", true).is_ok()),
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"one's memory");
    }

    #[test]
    fn what_cannot_hold_an_archive_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let err = |p: &Path| match Output::open(p, "c", true) {
            Ok(_) => panic!("{} was accepted", p.display()),
            Err(e) => e.to_string(),
        };
        assert!(err(dir.path()).contains("is a directory"));
        let link = dir.path().join("dangling");
        std::os::unix::fs::symlink("nowhere", &link).unwrap();
        assert!(err(&link).contains("symbolic link to nothing"));
        assert!(err(&dir.path().join("no/such/dir/a.tar")).contains("No such file"));
        assert_eq!(names(dir.path()), ["dangling"]);
    }
}
