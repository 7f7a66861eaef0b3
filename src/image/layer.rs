//! Unpacks one layer tar into a fresh directory that overlayfs can use as a lower dir: OCI
//! whiteouts become overlay whiteouts (`.wh.NAME` → a 0:0 character device, `.wh..wh..opq` →
//! `trusted.overlay.opaque=y`). This is a security boundary: a layer is untrusted input, so
//! no entry may write outside the directory, go through a symlink, or make a device node.
//!
//! The destination is a private temporary directory of the store that nothing else writes,
//! so checking each parent with `lstat` before creating a child is not racy.

use super::digest::{DigestReader, StreamDigest};
use super::{Context, Error, Result};
use std::cell::{Cell, RefCell};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// Guards against decompression bombs and absurd layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most uncompressed bytes one layer's tar stream may hold.
    pub max_bytes: u64,
    /// Most entries one layer may hold.
    pub max_entries: u64,
    /// Largest uncompressed:compressed ratio accepted once `ratio_after` bytes are out.
    pub max_ratio: u64,
    pub ratio_after: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 64 << 30,
            max_entries: 4_000_000,
            // gzip cannot exceed ~1030:1; only zstd (or a crafted stream) goes past this, and
            // only a bomb does so for a whole gigabyte.
            max_ratio: 2000,
            ratio_after: 1 << 30,
        }
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From a layer media type, OCI or Docker name; None for a type that is not a layer.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// From the first bytes of a file (for tarballs given without a media type).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// Reads the first bytes of `path` to tell its compression.
    pub fn sniff_file(path: &Path) -> Result<Compression> {
        let mut head = [0u8; 4];
        let mut f = fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
        let mut n = 0;
        while n < head.len() {
            match f
                .read(&mut head[n..])
                .ctx(|| format!("read {}", path.display()))?
            {
                0 => break,
                k => n += k,
            }
        }
        Ok(Compression::sniff(&head[..n]))
    }
}

/// What unpacking a layer found out about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedLayer {
    /// `sha256:` of the blob as given (compressed).
    pub digest: String,
    /// `sha256:` of the uncompressed tar stream (the config's diff_id).
    pub diff_id: String,
    /// Bytes of the blob as given.
    pub blob_size: u64,
    /// Bytes of the uncompressed tar stream.
    pub size: u64,
    pub entries: u64,
}

/// A tar stream after decompression, with the limits enforced and the diff_id computed.
/// A limit hit is recorded in `tripped` because tar hands back only an io::Error.
pub struct GuardedStream<R> {
    inner: R,
    digest: StreamDigest,
    compressed: Rc<Cell<u64>>,
    limits: UnpackLimits,
    tripped: Rc<RefCell<Option<String>>>,
}

impl<R: Read> GuardedStream<R> {
    pub fn new(inner: R, compressed: Rc<Cell<u64>>, limits: UnpackLimits) -> Self {
        GuardedStream {
            inner,
            digest: StreamDigest::default(),
            compressed,
            limits,
            tripped: Rc::new(RefCell::new(None)),
        }
    }

    /// Set once a limit is hit: the io::Error tar hands back carries no type.
    pub fn tripped(&self) -> Rc<RefCell<Option<String>>> {
        self.tripped.clone()
    }

    /// Drains the rest of the stream through the limits; returns (diff_id, size).
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.digest.finish())
    }

    fn trip(&self, what: String) -> io::Error {
        *self.tripped.borrow_mut() = Some(what.clone());
        io::Error::other(what)
    }
}

impl<R: Read> Read for GuardedStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.update(&buf[..n]);
        let total = self.digest.bytes();
        if total > self.limits.max_bytes {
            return Err(self.trip(format!(
                "uncompressed size passed the limit of {} bytes",
                self.limits.max_bytes
            )));
        }
        let compressed = self.compressed.get().max(1);
        if total > self.limits.ratio_after && total / compressed > self.limits.max_ratio {
            return Err(self.trip(format!(
                "compression ratio passed {}:1 ({total} bytes out of {compressed})",
                self.limits.max_ratio
            )));
        }
        Ok(n)
    }
}

/// Opens the decompressor for `compression` over `reader`.
pub fn decompressor<'a, R: Read + 'a>(
    reader: R,
    compression: Compression,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
    })
}

/// Unpacks the layer blob read from `blob` into `dest` (an empty directory). The caller
/// compares the returned digests with what the manifest and config promise before trusting
/// `dest`; when unpacking fails and the blob is not the `expected` one, the digest mismatch
/// is reported instead, being the cause. On error `dest` holds a partial tree that the
/// caller removes. `label` names the layer in errors ("layer 2 (sha256:…)").
pub fn unpack_layer(
    blob: impl Read,
    compression: Compression,
    dest: &Path,
    limits: &UnpackLimits,
    label: &str,
    expected: Option<&str>,
) -> Result<UnpackedLayer> {
    let mut blob = DigestReader::new(blob);
    let compressed = blob.counter();
    let (diff_id, size, entries) = {
        let decoder = decompressor(&mut blob, compression)
            .ctx(|| format!("{label}: start {compression:?} decompression"))?;
        let mut stream = GuardedStream::new(decoder, compressed, *limits);
        let tripped = stream.tripped.clone();
        let mut unpacker = Unpacker::new(dest, label, limits);
        let result = match unpacker.unpack(&mut stream) {
            Ok(()) => stream
                .finish()
                .map_err(|e| unpacker.stream_error(e, "(end of archive)")),
            Err(err) => {
                drop(stream); // gives `blob` back, to hash the rest of it
                Err(err)
            }
        };
        match result {
            Ok((diff_id, size)) => (diff_id, size, unpacker.entries),
            Err(err) => {
                let err = match tripped.borrow_mut().take() {
                    Some(what) => Error::Limit {
                        layer: label.to_string(),
                        entry: unpacker.current.clone(),
                        what,
                    },
                    None => err,
                };
                if let (Some(expected), Ok((actual, _))) = (expected, blob.finish())
                    && actual != expected
                {
                    return Err(Error::DigestMismatch {
                        blob: label.to_string(),
                        expected: expected.to_string(),
                        actual,
                    });
                }
                return Err(err);
            }
        }
    };
    let (digest, blob_size) = blob
        .finish()
        .ctx(|| format!("{label}: read the rest of the blob"))?;
    Ok(UnpackedLayer {
        digest,
        diff_id,
        blob_size,
        size,
        entries,
    })
}

/// Ownership, mode, time and xattrs of one entry, from its header and PAX records.
#[derive(Debug, Clone, Default)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker<'a> {
    dest: &'a Path,
    label: &'a str,
    limits: &'a UnpackLimits,
    entries: u64,
    /// The entry being unpacked, for errors.
    current: String,
    /// Directories get their metadata last: creating children changes their mtime.
    dirs: Vec<(PathBuf, Meta)>,
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

impl<'a> Unpacker<'a> {
    fn new(dest: &'a Path, label: &'a str, limits: &'a UnpackLimits) -> Self {
        Unpacker {
            dest,
            label,
            limits,
            entries: 0,
            current: "(start of archive)".into(),
            dirs: Vec::new(),
        }
    }

    fn unsafe_entry(&self, entry: &str, why: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            layer: self.label.to_string(),
            entry: entry.to_string(),
            why: why.into(),
        }
    }

    fn stream_error(&self, err: io::Error, entry: &str) -> Error {
        Error::Io {
            context: format!("{}: read the tar stream at entry `{entry}`", self.label),
            source: err,
        }
    }

    fn unpack(&mut self, stream: &mut dyn Read) -> Result<()> {
        let mut archive = tar::Archive::new(stream);
        let entries = archive
            .entries()
            .map_err(|e| self.stream_error(e, "(start of archive)"))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                let after = format!("after {}", self.current);
                self.stream_error(e, &after)
            })?;
            self.entries += 1;
            self.current = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if self.entries > self.limits.max_entries {
                return Err(Error::Limit {
                    layer: self.label.to_string(),
                    entry: self.current.clone(),
                    what: format!("more than {} entries", self.limits.max_entries),
                });
            }
            self.unpack_entry(&mut entry)?;
        }
        self.finish_dirs()
    }

    fn unpack_entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<()> {
        let name = self.current.clone();
        let rel = normalise_entry_path(&entry.path_bytes())
            .map_err(|why| self.unsafe_entry(&name, why))?;
        let meta = read_meta(entry).map_err(|e| self.stream_error(e, &name))?;
        let kind = entry.header().entry_type();

        let Some(file_name) = rel.file_name() else {
            // `./`: the layer's root directory itself.
            if kind.is_dir() {
                self.dirs.push((self.dest.to_path_buf(), meta));
                return Ok(());
            }
            return Err(self.unsafe_entry(&name, "names the layer root but is not a directory"));
        };
        let parent = self.make_parents(&rel, &name)?;
        let file_name = file_name.as_bytes();

        if file_name == OPAQUE_WHITEOUT.as_bytes() {
            return set_xattr(&parent, b"trusted.overlay.opaque", b"y")
                .ctx(|| format!("{}: mark {} opaque", self.label, parent.display()));
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // aufs bookkeeping (`.wh..wh.plnk`, …): meaningless to overlayfs.
                tracing::debug!("{}: skipping aufs metadata entry {name}", self.label);
                return Ok(());
            }
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(self.unsafe_entry(&name, "is a whiteout of no file"));
            }
            let target = parent.join(OsStr::from_bytes(hidden));
            self.clear_path(&target, false, &name)?;
            return mknod(&target, libc::S_IFCHR, 0, 0)
                .ctx(|| format!("{}: make whiteout for `{name}`", self.label));
        }

        let path = parent.join(OsStr::from_bytes(file_name));
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                self.clear_path(&path, true, &name)?;
                if fs::symlink_metadata(&path).is_err() {
                    fs::create_dir(&path).ctx(|| format!("{}: create `{name}`", self.label))?;
                }
                self.dirs.push((path, meta));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.clear_path(&path, false, &name)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&path)
                    .ctx(|| format!("{}: create `{name}`", self.label))?;
                io::copy(entry, &mut file).map_err(|e| self.stream_error(e, &name))?;
                drop(file);
                self.apply_meta(&path, &meta, &name)?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&name, "is a symlink without a target"))?;
                self.clear_path(&path, false, &name)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .ctx(|| format!("{}: create symlink `{name}`", self.label))?;
                lchown(&path, meta.uid, meta.gid)
                    .ctx(|| format!("{}: chown symlink `{name}`", self.label))?;
                set_mtime(&path, meta.mtime)
                    .ctx(|| format!("{}: set the time of `{name}`", self.label))?;
            }
            T::Link => {
                let raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&name, "is a hard link without a target"))?;
                let shown = String::from_utf8_lossy(&raw).into_owned();
                let target_rel = normalise_entry_path(&raw).map_err(|why| {
                    self.unsafe_entry(&name, format!("is a hard link to `{shown}`, which {why}"))
                })?;
                let target = self.resolve_existing(&target_rel).map_err(|why| {
                    self.unsafe_entry(&name, format!("is a hard link to `{shown}`, {why}"))
                })?;
                self.clear_path(&path, false, &name)?;
                // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
                fs::hard_link(&target, &path)
                    .ctx(|| format!("{}: hard link `{name}` to `{shown}`", self.label))?;
            }
            T::Fifo => {
                self.clear_path(&path, false, &name)?;
                mknod(&path, libc::S_IFIFO, 0o600, 0)
                    .ctx(|| format!("{}: create fifo `{name}`", self.label))?;
                self.apply_meta(&path, &meta, &name)?;
            }
            T::Char | T::Block => {
                return Err(self.unsafe_entry(
                    &name,
                    "is a device node; images may not carry devices (the runtime creates them)",
                ));
            }
            other => {
                return Err(self.unsafe_entry(
                    &name,
                    format!(
                        "has unsupported tar entry type {:?}",
                        other.as_byte() as char
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Creates the missing parents of `rel` (mode 0755, root) and returns the parent's path.
    /// A parent that exists must be a real directory: following a symlink here is how a
    /// layer would write outside the store.
    fn make_parents(&self, rel: &Path, name: &str) -> Result<PathBuf> {
        let mut dir = self.dest.to_path_buf();
        let parents: Vec<Component> = rel.components().collect();
        for (i, c) in parents[..parents.len() - 1].iter().enumerate() {
            dir.push(c);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    let via: PathBuf = parents[..=i].iter().collect();
                    return Err(self.unsafe_entry(
                        name,
                        format!(
                            "goes through the symlink `{}`; entries are never written through symlinks",
                            via.display()
                        ),
                    ));
                }
                Ok(_) => {
                    let via: PathBuf = parents[..=i].iter().collect();
                    return Err(self.unsafe_entry(
                        name,
                        format!(
                            "has `{}` as a parent, which is not a directory",
                            via.display()
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&dir)
                        .ctx(|| format!("{}: create parent of `{name}`", self.label))?;
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                        .ctx(|| format!("{}: chmod parent of `{name}`", self.label))?;
                }
                Err(e) => {
                    return Err(Error::Io {
                        context: format!("{}: inspect parent of `{name}`", self.label),
                        source: e,
                    });
                }
            }
        }
        Ok(dir)
    }

    /// The path of an entry unpacked earlier in this layer (a hard link's target), or why
    /// it cannot be linked to.
    fn resolve_existing(&self, rel: &Path) -> std::result::Result<PathBuf, String> {
        if rel.as_os_str().is_empty() {
            return Err("the layer root".into());
        }
        let mut path = self.dest.to_path_buf();
        let parts: Vec<Component> = rel.components().collect();
        for (i, c) in parts.iter().enumerate() {
            path.push(c);
            let m = fs::symlink_metadata(&path)
                .map_err(|_| "which is not an earlier entry of this layer".to_string())?;
            let last = i + 1 == parts.len();
            if !last && !m.is_dir() {
                return Err(if m.file_type().is_symlink() {
                    "which goes through a symlink".to_string()
                } else {
                    "which is not an earlier entry of this layer".to_string()
                });
            }
            if last && m.is_dir() {
                return Err("a directory".into());
            }
        }
        Ok(path)
    }

    /// Makes room for a new entry at `path`: a later entry replaces an earlier one, except
    /// that a directory entry over an existing directory only updates its metadata.
    fn clear_path(&self, path: &Path, want_dir: bool, name: &str) -> Result<()> {
        let Ok(m) = fs::symlink_metadata(path) else {
            return Ok(());
        };
        let res = if m.is_dir() {
            if want_dir {
                return Ok(());
            }
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        res.ctx(|| format!("{}: replace earlier `{name}`", self.label))
    }

    fn apply_meta(&self, path: &Path, meta: &Meta, name: &str) -> Result<()> {
        let ctx = |what: &str| format!("{}: {what} `{name}`", self.label);
        // chown first: it clears set-id bits and file capabilities.
        lchown(path, meta.uid, meta.gid).ctx(|| ctx("chown"))?;
        for (key, value) in &meta.xattrs {
            set_xattr(path, key, value).ctx(|| {
                ctx(&format!(
                    "set xattr {} on",
                    String::from_utf8_lossy(key).escape_default()
                ))
            })?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode & 0o7777))
            .ctx(|| ctx("chmod"))?;
        set_mtime(path, meta.mtime).ctx(|| ctx("set the time of"))
    }

    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, meta) in dirs.iter().rev() {
            let name = path
                .strip_prefix(self.dest)
                .unwrap_or(path)
                .display()
                .to_string();
            self.apply_meta(path, meta, if name.is_empty() { "./" } else { &name })?;
        }
        Ok(())
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Meta> {
    let h = entry.header();
    let mut meta = Meta {
        mode: h.mode()?,
        uid: h.uid()? as u32,
        gid: h.gid()? as u32,
        mtime: h.mtime()? as i64,
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.split('.').next())
                    .and_then(|v| v.parse::<i64>().ok())
            };
            match key {
                b"uid" => meta.uid = number().unwrap_or(meta.uid as i64) as u32,
                b"gid" => meta.gid = number().unwrap_or(meta.gid as i64) as u32,
                b"mtime" => meta.mtime = number().unwrap_or(meta.mtime),
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        meta.xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

/// The entry's path relative to the layer root, with `.` and empty components dropped; an
/// absolute path or a `..` component is refused (the error says which), never rewritten.
pub fn normalise_entry_path(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    if raw.starts_with(b"/") {
        return Err("is an absolute path");
    }
    let mut out = PathBuf::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("has a `..` component (it would escape the layer)"),
            p => out.push(OsStr::from_bytes(p)),
        }
    }
    Ok(out)
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

fn errno<T: PartialEq + From<i8>>(rc: T) -> io::Result<()> {
    if rc == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let p = cstr(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid slice.
    errno(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is NUL-terminated and outlives the call.
    errno(unsafe { libc::lchown(p.as_ptr(), uid, gid) })
}

fn mknod(path: &Path, kind: libc::mode_t, perm: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is NUL-terminated and outlives the call.
    errno(unsafe { libc::mknod(p.as_ptr(), kind | perm, dev) })
}

/// Sets atime and mtime of `path` (not following a symlink) to `mtime`.
fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let p = cstr(path)?;
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: p is NUL-terminated; times points to two timespecs.
    errno(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_normalised_or_refused() {
        let ok = |s: &str| normalise_entry_path(s.as_bytes()).unwrap();
        assert_eq!(ok("./bin/sh"), PathBuf::from("bin/sh"));
        assert_eq!(ok("bin//busybox"), PathBuf::from("bin/busybox"));
        assert_eq!(ok("etc/./passwd/"), PathBuf::from("etc/passwd"));
        assert_eq!(ok("./"), PathBuf::new());
        assert_eq!(ok("a/.wh..wh..opq"), PathBuf::from("a/.wh..wh..opq"));
        assert_eq!(ok("..."), PathBuf::from("..."));
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "a/..",
            "..",
            "/etc/passwd",
            "//x",
        ] {
            assert!(normalise_entry_path(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(
            normalise_entry_path(b"/etc/passwd"),
            Err("is an absolute path")
        );
    }

    #[test]
    fn media_types_and_magic_give_the_compression() {
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.config.v1+json"),
            None
        );
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"bin/"), Compression::None);
    }
}
