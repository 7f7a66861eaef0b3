//! The container's own changes, read from its overlay upper dir: listed for `ferry diff`,
//! written as podman's `rootfs-diff.tar` + `deleted.files` for a checkpoint archive, and
//! applied on another host on top of the same image. docs/rootfs-diff.md tells the rules.

use super::safe_path::{self, Root, Unsafe, WalkError};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags, fstatat, mkdirat, mknodat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("archive entry `{entry}` {why}; refusing to apply the rootfs diff")]
    UnsafeEntry { entry: String, why: String },
    #[error("deleted.files entry `{entry}` {why}; refusing to apply the rootfs diff")]
    UnsafeDeletion { entry: String, why: String },
    #[error(
        "archive entry `{entry}` is a {kind} device; device nodes are created only from a \
         trusted archive"
    )]
    DeviceNotAllowed { entry: String, kind: &'static str },
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_ctx<T>(r: io::Result<T>, context: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|source| Error::Io {
        context: context(),
        source,
    })
}

fn sys_ctx<T>(r: nix::Result<T>, context: impl FnOnce() -> String) -> Result<T> {
    io_ctx(r.map_err(io::Error::from), context)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    /// The letter `podman diff` prints.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Modified => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Change {
    /// Absolute in the container: `/etc/hosts`.
    pub path: PathBuf,
    pub kind: ChangeKind,
}

/// What `write_diff` wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffSummary {
    /// Paths to remove before the tar is unpacked (podman's `deleted.files`), absolute in the
    /// container, in tree order. A deleted directory is one entry.
    pub deleted: Vec<PathBuf>,
    /// Tar entries written (files, dirs, links, …; extension headers not counted).
    pub entries: u64,
    /// Bytes written to `out`, the tar's full size.
    pub bytes: u64,
}

/// Changes from the upper dir, whiteouts and opaque dirs interpreted; `lowers` (top first)
/// tell Added from Modified and which entries an opaque dir hides. Sorted by path.
///
/// A directory present in the lowers too is Modified only when its own mode, owner or
/// xattrs differ, or it was replaced (opaque); its mtime moves with every entry added or
/// removed inside, so it is not a change on its own (podman reports such parents as `C`).
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    Overlay { upper, lowers }.walk(&mut |item| {
        match item {
            Item::Deleted { rel, .. } => out.push(change(&rel, ChangeKind::Deleted)),
            Item::Entry {
                rel,
                kind: Some(kind),
                ..
            } => out.push(change(rel, kind)),
            Item::Entry { kind: None, .. } => {}
        }
        Ok(())
    })?;
    out.sort();
    Ok(out)
}

fn change(rel: &Path, kind: ChangeKind) -> Change {
    Change {
        path: Path::new("/").join(rel),
        kind,
    }
}

/// Writes the rootfs diff tar (podman's `rootfs-diff.tar`: every added or modified path,
/// including directories whose mode, owner or xattrs changed) to `out` in one streaming pass,
/// and returns the deleted paths (podman's `deleted.files`). A replaced (opaque) directory is
/// written as a deletion of the directory followed by its full new content, so
/// [`apply_diff`] must delete before it unpacks.
pub fn write_diff(upper: &Path, lowers: &[PathBuf], out: impl Write) -> Result<DiffSummary> {
    diff_tar(upper, lowers, out, Contents::Read)
}

/// How many bytes [`write_diff`] would write, without reading any file's data: an archive
/// entry needs its size before its bytes, and reading every changed file twice while the
/// container is frozen doubled the diff's share of the downtime. The tree must not change
/// in between (the container is frozen; the caller compares the two).
pub fn diff_tar_size(upper: &Path, lowers: &[PathBuf]) -> Result<u64> {
    Ok(diff_tar(upper, lowers, io::sink(), Contents::Sized)?.bytes)
}

/// Whether a regular file's data is read into the tar or only its size counted.
#[derive(Clone, Copy)]
enum Contents {
    Read,
    Sized,
}

/// `n` bytes that are never filled in: the sizing pass's file data, written only to a sink.
struct Unread(u64);

impl Read for Unread {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.0) as usize;
        self.0 -= n as u64;
        Ok(n)
    }
}

fn diff_tar(
    upper: &Path,
    lowers: &[PathBuf],
    out: impl Write,
    contents: Contents,
) -> Result<DiffSummary> {
    let mut tar = tar::Builder::new(CountingWriter {
        inner: out,
        count: 0,
    });
    let mut deleted = Vec::new();
    let mut entries = 0u64;
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    Overlay { upper, lowers }.walk(&mut |item| {
        match item {
            Item::Deleted {
                rel,
                whiteout: true,
            } => deleted.push(Path::new("/").join(rel)),
            Item::Deleted {
                whiteout: false, ..
            } => {}
            Item::Entry {
                rel,
                meta,
                kind,
                replaces_lower_dir,
                in_replaced,
            } => {
                if replaces_lower_dir && !in_replaced {
                    deleted.push(Path::new("/").join(rel));
                }
                if (kind.is_some() || in_replaced)
                    && append_entry(&mut tar, upper, rel, meta, &mut links, contents)?
                {
                    entries += 1;
                }
            }
        }
        Ok(())
    })?;
    let counted = io_ctx(tar.into_inner(), || "finish the rootfs diff tar".into())?;
    Ok(DiffSummary {
        deleted,
        entries,
        bytes: counted.count,
    })
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One step of the walk over the upper dir.
enum Item<'a> {
    /// A lower path gone from the merged tree: by a whiteout (it goes to `deleted.files`) or
    /// because an opaque dir above hides it (the opaque dir itself is the deletion).
    Deleted { rel: PathBuf, whiteout: bool },
    /// An upper entry. `kind` is None for a directory that is only there because overlayfs
    /// copied it up on the way to a change below it.
    Entry {
        rel: &'a Path,
        meta: &'a Metadata,
        kind: Option<ChangeKind>,
        /// An opaque dir over a lower dir: the lower content is gone, this is a replacement.
        replaces_lower_dir: bool,
        /// Below a replacement: written whatever its kind, as the target deletes the lot.
        in_replaced: bool,
    },
}

struct Overlay<'a> {
    upper: &'a Path,
    lowers: &'a [PathBuf],
}

/// A lower layer's answer for one path.
enum Probe {
    Found(Metadata),
    /// Whited out, or below a whiteout, an opaque dir or a non-directory in this layer:
    /// layers further down do not count.
    Hidden,
    Absent,
}

impl Overlay<'_> {
    fn walk(&self, visit: &mut dyn FnMut(Item<'_>) -> Result<()>) -> Result<()> {
        let root_meta = lstat(self.upper)?;
        if !root_meta.is_dir() {
            return Err(Error::Unsupported(format!(
                "overlay upper dir {} is not a directory",
                self.upper.display()
            )));
        }
        let root = Path::new("");
        if let Some(lower) = self.lookup(root)?
            && self.dir_differs(root, &root_meta, &lower)?
        {
            visit(Item::Entry {
                rel: root,
                meta: &root_meta,
                kind: Some(ChangeKind::Modified),
                replaces_lower_dir: false,
                in_replaced: false,
            })?;
        }
        self.walk_dir(root, false, visit)
    }

    /// `hidden`: this dir or one above it is opaque over a lower dir, so nothing of the
    /// lowers shows through here.
    fn walk_dir(
        &self,
        dir: &Path,
        hidden: bool,
        visit: &mut dyn FnMut(Item<'_>) -> Result<()>,
    ) -> Result<()> {
        let host_dir = self.upper.join(dir);
        let mut names: Vec<OsString> = io_ctx(fs::read_dir(&host_dir), || {
            format!("read {}", host_dir.display())
        })?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(|source| Error::Io {
            context: format!("read {}", host_dir.display()),
            source,
        })?;
        names.sort();

        if hidden {
            // The lower entries an opaque dir hides are deletions as the container sees them.
            let upper_names: BTreeSet<&OsStr> = names.iter().map(OsString::as_os_str).collect();
            for name in self.lower_children(dir)? {
                if !upper_names.contains(name.as_os_str()) {
                    visit(Item::Deleted {
                        rel: dir.join(name),
                        whiteout: false,
                    })?;
                }
            }
        }

        for name in names {
            let rel = dir.join(&name);
            let path = self.upper.join(&rel);
            let meta = lstat(&path)?;
            if is_whiteout(&meta) {
                // Inside a replaced dir nothing below shows through, so a whiteout there hides
                // nothing (overlayfs does not make them, but a copied upper dir could hold one).
                if !hidden && self.lookup(&rel)?.is_some() {
                    visit(Item::Deleted {
                        rel,
                        whiteout: true,
                    })?;
                }
                continue;
            }
            refuse_redirects(&path, &meta)?;
            let lower = self.lookup(&rel)?;
            let opaque = meta.is_dir() && is_opaque(&path)?;
            let replaces_lower_dir = opaque && lower.as_ref().is_some_and(Metadata::is_dir);
            let kind = match &lower {
                None => Some(ChangeKind::Added),
                Some(l) if meta.is_dir() && l.is_dir() => (replaces_lower_dir
                    || self.dir_differs(&rel, &meta, l)?)
                .then_some(ChangeKind::Modified),
                Some(_) => Some(ChangeKind::Modified),
            };
            visit(Item::Entry {
                rel: &rel,
                meta: &meta,
                kind,
                replaces_lower_dir,
                in_replaced: hidden,
            })?;
            if meta.is_dir() {
                self.walk_dir(&rel, hidden || replaces_lower_dir, visit)?;
            }
        }
        Ok(())
    }

    /// The path as the lowers alone show it (top layer first), or None.
    fn lookup(&self, rel: &Path) -> Result<Option<Metadata>> {
        for layer in self.lowers {
            match probe(layer, rel)? {
                Probe::Found(m) => return Ok(Some(m)),
                Probe::Hidden => return Ok(None),
                Probe::Absent => {}
            }
        }
        Ok(None)
    }

    /// Names in the lowers' merged view of directory `rel`.
    fn lower_children(&self, rel: &Path) -> Result<BTreeSet<OsString>> {
        let mut names = BTreeSet::new();
        let mut masked = BTreeSet::new();
        for layer in self.lowers {
            match probe(layer, rel)? {
                Probe::Found(m) if m.is_dir() => {}
                Probe::Absent => continue,
                _ => break,
            }
            let dir = layer.join(rel);
            for e in io_ctx(fs::read_dir(&dir), || format!("read {}", dir.display()))? {
                let e = io_ctx(e, || format!("read {}", dir.display()))?;
                let name = e.file_name();
                if names.contains(&name) || masked.contains(&name) {
                    continue;
                }
                if is_whiteout(&lstat(&e.path())?) {
                    masked.insert(name);
                } else {
                    names.insert(name);
                }
            }
            if is_opaque(&dir)? {
                break;
            }
        }
        Ok(names)
    }

    fn dir_differs(&self, rel: &Path, upper: &Metadata, lower: &Metadata) -> Result<bool> {
        if upper.mode() != lower.mode() || upper.uid() != lower.uid() || upper.gid() != lower.gid()
        {
            return Ok(true);
        }
        let lower_path = self
            .lowers
            .iter()
            .map(|l| l.join(rel))
            .find(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()));
        let lower_xattrs = match lower_path {
            Some(p) => read_xattrs(&p)?,
            None => Vec::new(),
        };
        Ok(read_xattrs(&self.upper.join(rel))? != lower_xattrs)
    }
}

fn probe(layer: &Path, rel: &Path) -> Result<Probe> {
    let mut cur = layer.to_path_buf();
    let mut opaque_above = false;
    let count = rel.components().count();
    if count == 0 {
        return Ok(match fs::symlink_metadata(layer) {
            Ok(m) => Probe::Found(m),
            Err(_) => Probe::Absent,
        });
    }
    for (i, c) in rel.components().enumerate() {
        cur.push(c);
        let meta = match fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(if opaque_above {
                    Probe::Hidden
                } else {
                    Probe::Absent
                });
            }
            Err(source) => {
                return Err(Error::Io {
                    context: format!("stat lower {}", cur.display()),
                    source,
                });
            }
        };
        if is_whiteout(&meta) {
            return Ok(Probe::Hidden);
        }
        if i + 1 == count {
            return Ok(Probe::Found(meta));
        }
        if !meta.is_dir() {
            return Ok(Probe::Hidden);
        }
        opaque_above |= is_opaque(&cur)?;
    }
    unreachable!("the loop returns at the last component")
}

fn lstat(path: &Path) -> Result<Metadata> {
    io_ctx(fs::symlink_metadata(path), || {
        format!("stat {}", path.display())
    })
}

/// overlayfs marks a deletion with a 0:0 character device of the deleted name.
fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

fn is_opaque(dir: &Path) -> Result<bool> {
    for name in OPAQUE_XATTRS {
        match xattr::get(dir, name) {
            Ok(Some(v)) if v == b"y" => return Ok(true),
            Ok(_) => {}
            Err(e) if is_no_xattr_support(&e) => {}
            Err(source) => {
                return Err(Error::Io {
                    context: format!("read xattr {name} of {}", dir.display()),
                    source,
                });
            }
        }
    }
    Ok(false)
}

/// With `redirect_dir` or `metacopy`, part of an upper entry's content lives in a lower
/// under another name; the tar would then be missing data, so such an upper dir is refused
/// rather than half-copied.
fn refuse_redirects(path: &Path, meta: &Metadata) -> Result<()> {
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    for (xattr, option) in [
        ("trusted.overlay.redirect", "redirect_dir"),
        ("user.overlay.redirect", "redirect_dir"),
        ("trusted.overlay.metacopy", "metacopy"),
        ("user.overlay.metacopy", "metacopy"),
    ] {
        if let Ok(Some(_)) = xattr::get(path, xattr) {
            return Err(Error::Unsupported(format!(
                "{} carries {xattr}: the overlay was mounted with {option}=on, so its upper dir \
                 does not hold the whole change; mount container overlays with {option}=off",
                path.display()
            )));
        }
    }
    Ok(())
}

/// overlayfs keeps its own bookkeeping in these namespaces; it is not the container's data.
fn is_overlay_private(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
}

fn is_no_xattr_support(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
}

/// The container-visible xattrs of `path` (no symlink followed), sorted by name.
fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if is_no_xattr_support(&e) => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                context: format!("list xattrs of {}", path.display()),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for name in names {
        let Some(name) = name.to_str().map(str::to_owned) else {
            return Err(Error::Unsupported(format!(
                "{} has an xattr whose name is not UTF-8 ({:?}); a tar PAX record cannot carry it",
                path.display(),
                name
            )));
        };
        if is_overlay_private(&name) {
            continue;
        }
        match xattr::get(path, &name) {
            Ok(Some(v)) => out.push((name, v)),
            Ok(None) => {}
            Err(e) if is_no_xattr_support(&e) => {}
            Err(source) => {
                return Err(Error::Io {
                    context: format!("read xattr {name} of {}", path.display()),
                    source,
                });
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Appends one upper entry; false when it has no tar form (a unix socket).
fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    upper: &Path,
    rel: &Path,
    meta: &Metadata,
    links: &mut HashMap<(u64, u64), PathBuf>,
    contents: Contents,
) -> Result<bool> {
    let path = upper.join(rel);
    let name: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let ft = meta.file_type();
    if ft.is_socket() {
        tracing::warn!(path = %path.display(), "unix socket left out of the rootfs diff: tar has no socket entries");
        return Ok(false);
    }
    let ctx = || format!("write {} to the rootfs diff tar", path.display());

    let mut h = tar::Header::new_gnu();
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(meta.uid().into());
    h.set_gid(meta.gid().into());
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);

    // Two upper paths of one inode: the first is the file, the later ones link to it.
    if !ft.is_dir() && meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            h.set_entry_type(tar::EntryType::Link);
            io_ctx(tar.append_link(&mut h, name, first), ctx)?;
            return Ok(true);
        }
        links.insert((meta.dev(), meta.ino()), rel.to_path_buf());
    }

    let mut pax: Vec<(String, Vec<u8>)> = read_xattrs(&path)?
        .into_iter()
        .map(|(k, v)| (format!("SCHILYXATTR.{k}"), v))
        .collect();
    if meta.mtime_nsec() != 0 {
        pax.push((
            "mtime".into(),
            format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()).into_bytes(),
        ));
    }
    if !pax.is_empty() {
        io_ctx(
            tar.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()))),
            ctx,
        )?;
    }

    if ft.is_file() {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(meta.size());
        if let Contents::Sized = contents {
            io_ctx(tar.append_data(&mut h, name, Unread(meta.size())), ctx)?;
            return Ok(true);
        }
        let file = io_ctx(
            File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path),
            || format!("open {}", path.display()),
        )?;
        let data = ExactReader {
            inner: file.take(meta.size()),
            left: meta.size(),
            path: &path,
        };
        io_ctx(tar.append_data(&mut h, name, data), ctx)?;
    } else if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        io_ctx(tar.append_data(&mut h, name, io::empty()), ctx)?;
    } else if ft.is_symlink() {
        let target = io_ctx(fs::read_link(&path), || {
            format!("read link {}", path.display())
        })?;
        h.set_entry_type(tar::EntryType::Symlink);
        // The literal bytes, so `./x` or `dir/` come back as they were.
        let bytes = target.as_os_str().as_bytes();
        if bytes.len() <= 100 {
            io_ctx(h.set_link_name_literal(bytes), ctx)?;
            io_ctx(tar.append_data(&mut h, name, io::empty()), ctx)?;
        } else {
            io_ctx(tar.append_link(&mut h, name, &target), ctx)?;
        }
    } else if ft.is_fifo() {
        h.set_entry_type(tar::EntryType::Fifo);
        io_ctx(tar.append_data(&mut h, name, io::empty()), ctx)?;
    } else if ft.is_char_device() || ft.is_block_device() {
        h.set_entry_type(if ft.is_char_device() {
            tar::EntryType::Char
        } else {
            tar::EntryType::Block
        });
        let rdev = meta.rdev();
        io_ctx(h.set_device_major(libc::major(rdev)), ctx)?;
        io_ctx(h.set_device_minor(libc::minor(rdev)), ctx)?;
        io_ctx(tar.append_data(&mut h, name, io::empty()), ctx)?;
    }
    Ok(true)
}

/// Reads exactly `left` bytes: a file that shrank while being read must not produce a tar
/// whose header promises more than follows.
struct ExactReader<'p, R> {
    inner: R,
    left: u64,
    path: &'p Path,
}

impl<R: Read> Read for ExactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being read", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Applies a diff on top of `root` (the target's fresh container rootfs, e.g. its overlay
/// mount).
///
/// Order: every path is checked first, then `deleted` is removed, then the tar is unpacked.
/// The tar holds the final state, so deleting first is what makes a path that was deleted
/// and then re-created (a file replaced by a directory, an opaque dir) come back; podman
/// unpacks first and deletes after, which removes such a path again.
///
/// Nothing is written outside `root`: entry names with `..` or absolute names, hard links
/// to such names, relative symlinks that climb above the root, and any entry whose parent
/// is a symlink are refused with an error naming the entry. Device nodes are created only
/// with `allow_devices` (a trusted archive). On error, what was applied so far stays: the
/// caller discards the target rootfs.
pub fn apply_diff(
    tar: impl Read,
    deleted: &[PathBuf],
    root: &Path,
    allow_devices: bool,
) -> Result<()> {
    let deletions = deleted
        .iter()
        .map(|p| {
            safe_path::container_path(p).map_err(|why| Error::UnsafeDeletion {
                entry: p.display().to_string(),
                why: why.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let root_dir = sys_ctx(Root::open(root), || {
        format!("open target rootfs {}", root.display())
    })?;
    for (rel, shown) in deletions.iter().zip(deleted) {
        remove(&root_dir, rel, &shown.display().to_string())?;
    }

    let mut archive = tar::Archive::new(tar);
    let mut dir_times = Vec::new();
    let entries = io_ctx(archive.entries(), || "read the rootfs diff tar".into())?;
    for entry in entries {
        let mut entry = io_ctx(entry, || "read the rootfs diff tar".into())?;
        apply_entry(&root_dir, &mut entry, allow_devices, &mut dir_times)?;
    }
    // Unpacking into a directory moves its mtime, so directories get theirs last, deepest first.
    for (rel, mtime) in dir_times.iter().rev() {
        if let Ok(fd) = root_dir.dir(rel) {
            let p = safe_path::proc_path(fd.as_fd(), None);
            sys_ctx(
                utimensat(AT_FDCWD, &p, mtime, mtime, UtimensatFlags::FollowSymlink),
                || format!("set the mtime of /{}", rel.display()),
            )?;
        }
    }
    Ok(())
}

fn remove(root: &Root, rel: &Path, shown: &str) -> Result<()> {
    let (parent, name) = match root.parent(rel, false) {
        Ok(p) => p,
        // Gone with a directory deleted before it, or never in this image: nothing to do.
        Err(WalkError::Missing) => return Ok(()),
        Err(WalkError::Unsafe(why)) => {
            return Err(Error::UnsafeDeletion {
                entry: shown.into(),
                why: why.to_string(),
            });
        }
        Err(WalkError::Sys(e)) => return sys_ctx(Err(e), || format!("delete {shown}")),
    };
    sys_ctx(clear(parent.as_fd(), &name, false), || {
        format!("delete {shown}")
    })?;
    Ok(())
}

/// Removes whatever is at `name` (a whole tree for a directory, never following a symlink);
/// keeps a directory when `keep_dir`. Returns whether a directory was kept.
fn clear(parent: BorrowedFd<'_>, name: &Path, keep_dir: bool) -> nix::Result<bool> {
    let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    if is_dir(&st) {
        if keep_dir {
            return Ok(true);
        }
        remove_tree(parent, name)?;
    } else {
        unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(false)
}

fn remove_tree(parent: BorrowedFd<'_>, name: &Path) -> nix::Result<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = nix::dir::Dir::openat(parent, name, flags, Mode::empty())?;
    let children: Vec<OsString> = dir
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    let fd = openat(parent, name, flags, Mode::empty())?;
    for child in children {
        clear(fd.as_fd(), Path::new(&child), false)?;
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Metadata an entry carries, from its header and PAX records.
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<EntryMeta> {
    let bad = |what: &str| Error::UnsafeEntry {
        entry: shown.into(),
        why: format!("has an unreadable {what}"),
    };
    let h = entry.header();
    let mode = h.mode().map_err(|_| bad("mode"))? & 0o7777;
    let mut uid = h.uid().map_err(|_| bad("uid"))?;
    let mut gid = h.gid().map_err(|_| bad("gid"))?;
    let mut mtime = TimeSpec::new(h.mtime().map_err(|_| bad("mtime"))? as i64, 0);
    let mut xattrs = Vec::new();
    if let Some(pax) = io_ctx(entry.pax_extensions(), || {
        format!("read PAX records of {shown}")
    })? {
        for ext in pax {
            let ext = io_ctx(ext, || format!("read PAX records of {shown}"))?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILYXATTR.") {
                if !is_overlay_private(name) {
                    xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            } else if key == "mtime" {
                mtime = parse_pax_time(ext.value().map_err(|_| bad("mtime"))?)
                    .ok_or_else(|| bad("mtime"))?;
            } else if key == "uid" {
                uid = ext
                    .value()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad("uid"))?;
            } else if key == "gid" {
                gid = ext
                    .value()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad("gid"))?;
            }
        }
    }
    let id = |v: u64, what| u32::try_from(v).map_err(|_| bad(what));
    Ok(EntryMeta {
        mode,
        uid: id(uid, "uid")?,
        gid: id(gid, "gid")?,
        mtime,
        xattrs,
    })
}

/// A PAX time, `1700000000.123456789` (the fraction may be shorter or absent).
fn parse_pax_time(v: &str) -> Option<TimeSpec> {
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i64 = digits.parse().ok()?;
    Some(TimeSpec::new(secs, if secs < 0 { -nanos } else { nanos }))
}

fn apply_entry<R: Read>(
    root: &Root,
    entry: &mut tar::Entry<'_, R>,
    allow_devices: bool,
    dir_times: &mut Vec<(PathBuf, TimeSpec)>,
) -> Result<()> {
    let raw = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw).into_owned();
    let refuse = |why: Unsafe| Error::UnsafeEntry {
        entry: shown.clone(),
        why: why.to_string(),
    };
    let rel = safe_path::archive_name(&raw).map_err(refuse)?;
    let kind = entry.header().entry_type();
    if kind == tar::EntryType::XGlobalHeader {
        return Ok(());
    }
    let meta = entry_meta(entry, &shown)?;
    let ctx = || format!("apply archive entry `{shown}`");

    if rel.as_os_str().is_empty() {
        if !kind.is_dir() {
            return Err(refuse(Unsafe::Empty));
        }
        let fd = sys_ctx(root.dir(&rel).map_err(walk_errno), ctx)?;
        set_meta(fd.as_fd(), &meta, &shown)?;
        dir_times.push((rel, meta.mtime));
        return Ok(());
    }

    let (parent, name) = match root.parent(&rel, true) {
        Ok(p) => p,
        Err(WalkError::Unsafe(why)) => return Err(refuse(why)),
        Err(e) => return sys_ctx(Err(walk_errno(e)), ctx),
    };
    let parent = parent.as_fd();
    let obj_flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;

    match kind {
        tar::EntryType::Directory => {
            if !sys_ctx(clear(parent, &name, true), ctx)? {
                sys_ctx(mkdirat(parent, &name, Mode::from_bits_truncate(0o700)), ctx)?;
            }
            let fd = sys_ctx(
                openat(parent, &name, obj_flags | OFlag::O_DIRECTORY, Mode::empty()),
                ctx,
            )?;
            set_meta(fd.as_fd(), &meta, &shown)?;
            dir_times.push((rel, meta.mtime));
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            sys_ctx(clear(parent, &name, false), ctx)?;
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            let fd = sys_ctx(
                openat(parent, &name, flags, Mode::from_bits_truncate(0o600)),
                ctx,
            )?;
            let mut file = File::from(fd);
            io_ctx(io::copy(entry, &mut file), ctx)?;
            set_meta(file.as_fd(), &meta, &shown)?;
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .map(|t| PathBuf::from(OsStr::from_bytes(&t)))
                .filter(|t| !t.as_os_str().is_empty())
                .ok_or_else(|| Error::UnsafeEntry {
                    entry: shown.clone(),
                    why: "is a symlink without a target".into(),
                })?;
            if safe_path::symlink_escapes(&rel, &target) {
                return Err(refuse(Unsafe::LinkEscapes(target)));
            }
            sys_ctx(clear(parent, &name, false), ctx)?;
            sys_ctx(symlinkat(&target, parent, &name), ctx)?;
            set_symlink_meta(parent, &name, &meta, &shown)?;
        }
        tar::EntryType::Link => {
            let raw_target = entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let shown_target = String::from_utf8_lossy(&raw_target).into_owned();
            let refuse_link = |why: String| Error::UnsafeEntry {
                entry: shown.clone(),
                why: format!("is a hard link to `{shown_target}`, which {why}"),
            };
            let target =
                safe_path::archive_name(&raw_target).map_err(|w| refuse_link(w.to_string()))?;
            if target.as_os_str().is_empty() || target == rel {
                return Err(refuse_link("is not a file".into()));
            }
            let (tparent, tname) = match root.parent(&target, false) {
                Ok(p) => p,
                Err(WalkError::Missing) => return Err(refuse_link("does not exist".into())),
                Err(WalkError::Unsafe(why)) => return Err(refuse_link(why.to_string())),
                Err(e) => return sys_ctx(Err(walk_errno(e)), ctx),
            };
            match fstatat(tparent.as_fd(), &tname, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if is_dir(&st) => return Err(refuse_link("is a directory".into())),
                Ok(_) => {}
                Err(Errno::ENOENT) => return Err(refuse_link("does not exist".into())),
                Err(e) => return sys_ctx(Err(e), ctx),
            }
            sys_ctx(clear(parent, &name, false), ctx)?;
            sys_ctx(
                linkat(tparent.as_fd(), &tname, parent, &name, AtFlags::empty()),
                ctx,
            )?;
        }
        tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
            let (sflag, dev) = match kind {
                tar::EntryType::Fifo => (SFlag::S_IFIFO, 0),
                _ => {
                    let label = if kind == tar::EntryType::Char {
                        "character"
                    } else {
                        "block"
                    };
                    if !allow_devices {
                        return Err(Error::DeviceNotAllowed {
                            entry: shown.clone(),
                            kind: label,
                        });
                    }
                    let h = entry.header();
                    let major = h.device_major().ok().flatten().unwrap_or(0);
                    let minor = h.device_minor().ok().flatten().unwrap_or(0);
                    let sflag = if kind == tar::EntryType::Char {
                        SFlag::S_IFCHR
                    } else {
                        SFlag::S_IFBLK
                    };
                    (sflag, libc::makedev(major, minor))
                }
            };
            sys_ctx(clear(parent, &name, false), ctx)?;
            sys_ctx(
                mknodat(parent, &name, sflag, Mode::from_bits_truncate(0o600), dev),
                ctx,
            )?;
            let fd = sys_ctx(openat(parent, &name, obj_flags, Mode::empty()), ctx)?;
            set_meta(fd.as_fd(), &meta, &shown)?;
        }
        other => {
            return Err(Error::UnsafeEntry {
                entry: shown.clone(),
                why: format!("has tar entry type {other:?}, which a rootfs diff never holds"),
            });
        }
    }
    Ok(())
}

fn walk_errno(e: WalkError) -> Errno {
    match e {
        WalkError::Sys(e) => e,
        WalkError::Missing => Errno::ENOENT,
        WalkError::Unsafe(_) => Errno::EPERM,
    }
}

/// Owner, xattrs, mode, then times, on an object opened without following symlinks. Owner
/// goes first: chown clears setuid bits and file capabilities, which come back after it.
fn set_meta(fd: BorrowedFd<'_>, meta: &EntryMeta, shown: &str) -> Result<()> {
    let p = safe_path::proc_path(fd, None);
    let ctx = |what: &str| format!("set the {what} of archive entry `{shown}`");
    io_ctx(
        std::os::unix::fs::chown(&p, Some(meta.uid), Some(meta.gid)),
        || ctx("owner"),
    )?;
    for (name, value) in &meta.xattrs {
        io_ctx(xattr::set_deref(&p, name, value), || {
            ctx(&format!("xattr {name}"))
        })?;
    }
    io_ctx(
        fs::set_permissions(&p, fs::Permissions::from_mode(meta.mode)),
        || ctx("mode"),
    )?;
    sys_ctx(
        utimensat(
            AT_FDCWD,
            &p,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::FollowSymlink,
        ),
        || ctx("mtime"),
    )
}

fn set_symlink_meta(
    parent: BorrowedFd<'_>,
    name: &Path,
    meta: &EntryMeta,
    shown: &str,
) -> Result<()> {
    let ctx = |what: &str| format!("set the {what} of archive entry `{shown}`");
    sys_ctx(
        fchownat(
            parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ),
        || ctx("owner"),
    )?;
    let p = safe_path::proc_path(parent, Some(name));
    for (xname, value) in &meta.xattrs {
        io_ctx(xattr::set(&p, xname, value), || {
            ctx(&format!("xattr {xname}"))
        })?;
    }
    sys_ctx(
        utimensat(
            parent,
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        ),
        || ctx("mtime"),
    )
}

/// `ferry diff`: `A /path` lines as `podman diff` prints them, or with `json` one object
/// `{"added": […], "changed": […], "deleted": […]}`, the keys podman's `--format json` uses.
pub fn print_changes(changes: &[Change], json: bool) {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    // A closed pipe (`ferry diff | head`) is not an error worth reporting.
    let _ = write_changes(&mut out, changes, json);
}

fn write_changes(out: &mut dyn Write, changes: &[Change], json: bool) -> io::Result<()> {
    if json {
        #[derive(Serialize)]
        struct Grouped<'a> {
            added: Vec<&'a Path>,
            changed: Vec<&'a Path>,
            deleted: Vec<&'a Path>,
        }
        let pick = |k| {
            changes
                .iter()
                .filter(|c| c.kind == k)
                .map(|c| c.path.as_path())
                .collect()
        };
        let grouped = Grouped {
            added: pick(ChangeKind::Added),
            changed: pick(ChangeKind::Modified),
            deleted: pick(ChangeKind::Deleted),
        };
        serde_json::to_writer_pretty(&mut *out, &grouped)?;
        writeln!(out)
    } else {
        for c in changes {
            writeln!(out, "{} {}", c.kind.letter(), c.path.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn whiteout(path: &Path) {
        mknodat(AT_FDCWD, path, SFlag::S_IFCHR, Mode::empty(), 0)
            .expect("mknod whiteout (needs root)");
    }

    #[test]
    fn pax_times_keep_their_fraction() {
        assert_eq!(parse_pax_time("12.5"), Some(TimeSpec::new(12, 500_000_000)));
        assert_eq!(parse_pax_time("12.000000001"), Some(TimeSpec::new(12, 1)));
        assert_eq!(parse_pax_time("12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(parse_pax_time("x.1"), None);
        assert_eq!(parse_pax_time("1.-1"), None);
    }

    #[test]
    fn changes_print_as_podman_does() {
        let changes = vec![
            change(Path::new("etc/a"), ChangeKind::Added),
            change(Path::new("etc/b"), ChangeKind::Modified),
            change(Path::new("tmp"), ChangeKind::Deleted),
        ];
        let mut text = Vec::new();
        write_changes(&mut text, &changes, false).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "A /etc/a\nC /etc/b\nD /tmp\n"
        );
        let mut json = Vec::new();
        write_changes(&mut json, &changes, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["added"][0], "/etc/a");
        assert_eq!(v["changed"][0], "/etc/b");
        assert_eq!(v["deleted"][0], "/tmp");
    }

    /// Hand-made layers (no mount): whiteouts, an opaque dir, a dir whose mode changed, a
    /// dir copied up unchanged. Needs root for the whiteout device and trusted.* xattrs.
    #[test]
    fn upper_dir_is_read_as_overlayfs_would() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test makes whiteout devices and trusted.* xattrs and needs root");
        }
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("lower");
        let upper = tmp.path().join("upper");
        for d in ["etc", "gone/deep", "opaque/old", "moded", "copied"] {
            fs::create_dir_all(lower.join(d)).unwrap();
        }
        fs::write(lower.join("etc/keep"), b"1").unwrap();
        fs::write(lower.join("etc/rm"), b"1").unwrap();
        fs::write(lower.join("opaque/kept-name"), b"old").unwrap();
        fs::write(lower.join("copied/x"), b"old").unwrap();

        for d in ["etc", "opaque", "moded", "copied"] {
            fs::create_dir_all(upper.join(d)).unwrap();
        }
        whiteout(&upper.join("etc/rm"));
        whiteout(&upper.join("gone"));
        whiteout(&upper.join("never-existed"));
        fs::write(upper.join("etc/new"), b"n").unwrap();
        xattr::set(upper.join("opaque"), "trusted.overlay.opaque", b"y").unwrap();
        fs::write(upper.join("opaque/kept-name"), b"new").unwrap();
        fs::write(upper.join("opaque/fresh"), b"new").unwrap();
        fs::set_permissions(upper.join("moded"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(upper.join("copied/x"), b"new").unwrap();
        symlink("etc/new", upper.join("link")).unwrap();
        // Copied-up dirs carry overlay bookkeeping that must not count as a change.
        xattr::set(upper.join("copied"), "trusted.overlay.origin", b"abc").unwrap();
        for d in ["", "etc", "opaque", "copied"] {
            let m = fs::metadata(lower.join(d)).unwrap();
            fs::set_permissions(upper.join(d), m.permissions()).unwrap();
        }

        let lowers = vec![lower.clone()];
        let got: Vec<String> = changes(&upper, &lowers)
            .unwrap()
            .iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.path.display()))
            .collect();
        assert_eq!(
            got,
            [
                "C /copied/x",
                "A /etc/new",
                "D /etc/rm",
                "D /gone",
                "A /link",
                "C /moded",
                "C /opaque",
                "A /opaque/fresh",
                "C /opaque/kept-name",
                "D /opaque/old",
            ]
        );

        let mut tar = Vec::new();
        let summary = write_diff(&upper, &lowers, &mut tar).unwrap();
        assert_eq!(summary.bytes, tar.len() as u64);
        assert_eq!(diff_tar_size(&upper, &lowers).unwrap(), summary.bytes);
        assert_eq!(
            summary.deleted,
            ["/etc/rm", "/gone", "/opaque"].map(PathBuf::from).to_vec()
        );
        let mut names = Vec::new();
        for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(
            names,
            [
                "copied/x",
                "etc/new",
                "link",
                "moded",
                "opaque",
                "opaque/fresh",
                "opaque/kept-name"
            ]
        );
        assert_eq!(summary.entries, 7);
        assert_eq!(summary.bytes, tar.len() as u64);
    }
}
