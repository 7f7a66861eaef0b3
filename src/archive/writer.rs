//! Writes a checkpoint archive in one pass: a tar stream, compressed as it goes, whose every
//! entry is hashed while it is written and listed in the signed `ferry.manifest` that closes
//! the stream. Nothing is staged: the output may be a pipe or a socket.

use crate::archive::hashing::{Done, Hashers};
use crate::archive::manifest::{Entry, MANIFEST_NAME, Manifest, SignedManifest};
use crate::archive::pages::{PartRecord, RecordFile, index_head, index_name, part_name};
use crate::identity::Identity;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc::SyncSender;

/// What [`ArchiveWriter::announce`] names ahead of the entries, in a pax `comment` record
/// on the first one: POSIX has readers ignore `comment`, so GNU tar lists the archive
/// without the warning a keyword of our own would draw. Its value is space-separated
/// fields (none can hold a space: fingerprints, digests, image names, container ids):
/// `ferry.signer=FINGERPRINT`, `ferry.image=NAME@DIGEST`, `ferry.id=ID`, `ferry.terminal`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Announce {
    pub signer: Option<crate::identity::Fingerprint>,
    /// The image the container needs.
    pub image: Option<crate::archive::manifest::ImageRef>,
    pub id: Option<String>,
    /// The container has a terminal: its restore needs a console socket.
    pub terminal: bool,
}

const SIGNER: &str = "ferry.signer=";
const IMAGE: &str = "ferry.image=";
const ID: &str = "ferry.id=";
const TERMINAL: &str = "ferry.terminal";

impl Announce {
    /// The pax comment's value.
    fn comment(&self) -> String {
        let mut fields = vec![];
        if let Some(s) = &self.signer {
            fields.push(format!("{SIGNER}{}", s.0));
        }
        if let Some(i) = &self.image {
            fields.push(format!("{IMAGE}{}@{}", i.name, i.digest));
        }
        if let Some(id) = &self.id {
            fields.push(format!("{ID}{id}"));
        }
        if self.terminal {
            fields.push(TERMINAL.to_string());
        }
        fields.join(" ")
    }

    /// What a pax `comment` value names, or None when it is not one ferry wrote; Err says
    /// which field does not read.
    pub fn parse(comment: &str) -> Option<Result<Announce, &'static str>> {
        if !comment.starts_with("ferry.") {
            return None;
        }
        let mut a = Announce::default();
        for field in comment.split_whitespace() {
            if let Some(fp) = field.strip_prefix(SIGNER) {
                match crate::identity::Fingerprint::parse(fp) {
                    Ok(fp) => a.signer = Some(fp),
                    Err(_) => return Some(Err("not a signer's fingerprint")),
                }
            } else if let Some(image) = field.strip_prefix(IMAGE) {
                let Some((name, digest)) = image.rsplit_once('@') else {
                    return Some(Err("an image not named NAME@DIGEST"));
                };
                a.image = Some(crate::archive::manifest::ImageRef {
                    name: name.to_string(),
                    digest: digest.to_string(),
                });
            } else if let Some(id) = field.strip_prefix(ID) {
                a.id = Some(id.to_string());
            } else if field == TERMINAL {
                a.terminal = true;
            }
        }
        Some(Ok(a))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    Gzip,
    #[default]
    Zstd,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing archive entry {entry}: {source}{}", hint(source))]
    Write {
        entry: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path} for the archive: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// What the writer keeps on disk until the archive's tail (the pages' records, the
    /// pagemaps) could not be kept in `dir`.
    #[error(
        "keeping {what} in {dir} until the archive's end: {source}{}",
        spill_hint(source)
    )]
    Spill {
        what: &'static str,
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

fn spill_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        "; that disk is full (it holds ferry's storage, not the archive): free space there"
    } else {
        ""
    }
}

fn hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        "; the disk is full: free space or write the archive elsewhere"
    } else if e.kind() == std::io::ErrorKind::BrokenPipe {
        "; the reader went away"
    } else {
        ""
    }
}

enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(crate::archive::frames::Frames<W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

impl<W: Write + Send + 'static> Encoder<W> {
    fn new(out: W, c: Compression) -> std::io::Result<Encoder<W>> {
        Ok(match c {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::fast(),
            )),
            Compression::Zstd => {
                let z = crate::archive::frames::Frames::new(out)?;
                Encoder::Zstd(z)
            }
        })
    }
}

impl<W: Write> Encoder<W> {
    /// Writes a buffer someone else reads too; zstd takes it without a copy.
    fn write_shared(&mut self, buf: crate::archive::frames::Shared) -> std::io::Result<()> {
        match self {
            Encoder::Zstd(z) => z.write_shared(buf),
            other => other.write_all((*buf).as_ref()),
        }
    }

    fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

/// Counts the time spent in the writer below it: for the compressor, the time the archive
/// waited on compressing and writing (`--print-stats`' compress and write phases).
struct Timed<W> {
    inner: W,
    spent: std::time::Duration,
    /// Bytes of the (uncompressed) tar stream written so far.
    written: u64,
}

impl<W> Timed<W> {
    fn time<T>(&mut self, f: impl FnOnce(&mut W) -> T) -> T {
        let t = std::time::Instant::now();
        let r = f(&mut self.inner);
        self.spent += t.elapsed();
        r
    }
}

impl<W: Write> Timed<Encoder<W>> {
    fn write_shared(&mut self, buf: crate::archive::frames::Shared) -> std::io::Result<()> {
        let n = (*buf).as_ref().len() as u64;
        self.time(|e| e.write_shared(buf))?;
        self.written += n;
        Ok(())
    }
}

impl<W: Write> Write for Timed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.time(|w| w.write(buf))?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.time(|w| w.flush())
    }
}

/// Reads a file and punches holes behind itself every few MiB.
struct Consuming {
    file: std::fs::File,
    pos: u64,
    released: u64,
}

impl Consuming {
    const STEP: u64 = 16 << 20;

    fn release(&mut self, upto: u64) {
        use std::os::fd::AsRawFd;
        if upto > self.released {
            // SAFETY: fallocate on our own fd; failure (a filesystem without holes) only
            // means the memory is freed later, when the file is deleted.
            unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    self.released as libc::off_t,
                    (upto - self.released) as libc::off_t,
                )
            };
            self.released = upto;
        }
    }
}

impl Read for Consuming {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        if self.pos - self.released >= Self::STEP {
            self.release(self.pos);
        }
        Ok(n)
    }
}

/// Hands what passes through to the hashing threads (for the tar crate's own path).
struct Hashing<'a, R> {
    inner: R,
    hashers: &'a mut Hashers,
    n: u64,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            let mut copy = self.hashers.buffer();
            copy.clear();
            copy.extend_from_slice(&buf[..n]);
            self.hashers.update_owned(copy)?;
            self.n += n as u64;
        }
        Ok(n)
    }
}

pub struct ArchiveWriter<W: Write> {
    tar: tar::Builder<Timed<Encoder<W>>>,
    /// What the manifest lists; each digest is filled in when its hashing job is done.
    entries: Vec<Entry>,
    /// The pages images written in parts ([`add_part`](Self::add_part)), in order.
    pages: Vec<Paged>,
    /// Their parts' records until their indexes are written, on disk (made in `spill_dir`
    /// at the first part): a record per 1 MiB part held in memory would grow with the
    /// container.
    records: Option<RecordFile>,
    spill_dir: std::path::PathBuf,
    /// Parts so far: the next part's slot in `records`.
    slots: u64,
    /// Entries held back for the tail ([`hold`](Self::hold)): each name with its bytes'
    /// place in `held_file`, on disk in `spill_dir`.
    held: Vec<(String, u64, u64)>,
    held_file: Option<std::fs::File>,
    held_end: u64,
    /// Where the digest of each hashing job not yet done goes.
    waiting: HashMap<usize, Dest>,
    /// Hashes every entry, several at once; made at the first entry, so that
    /// [`recycle_into`](Self::recycle_into) can come first.
    hashers: Option<Hashers>,
    /// Where hashed buffers go back to whoever fills them ([`recycle_into`](Self::recycle_into)).
    recycle: Option<SyncSender<Vec<u8>>>,
    /// Uncompressed bytes of entry content written so far.
    pub content_bytes: u64,
    /// Advanced by every byte of entry content (a bar on a terminal, else nothing).
    pub progress: crate::progress::Progress,
    /// The largest signed manifest `finish` writes (lowered by tests).
    max_manifest: u64,
}

/// A pages image written in parts: its name in the archive, the slot of its first part's
/// record and how many parts it has.
struct Paged {
    name: String,
    first: u64,
    count: u64,
    indexed: bool,
}

/// What a hashing job was for.
enum Dest {
    /// The manifest entry at this position.
    Entry(usize),
    /// Part n of the pages image at this position of `pages`.
    Part(usize, usize),
}

impl<W: Write + Send + 'static> ArchiveWriter<W> {
    pub fn new(out: W, compression: Compression) -> Result<ArchiveWriter<W>, Error> {
        let enc = Encoder::new(out, compression).map_err(|source| Error::Write {
            entry: "(compressor)".into(),
            source,
        })?;
        let mut tar = tar::Builder::new(Timed {
            inner: enc,
            spent: std::time::Duration::ZERO,
            written: 0,
        });
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(ArchiveWriter {
            tar,
            entries: vec![],
            pages: vec![],
            records: None,
            spill_dir: std::env::temp_dir(),
            slots: 0,
            held: vec![],
            held_file: None,
            held_end: 0,
            waiting: HashMap::new(),
            hashers: None,
            recycle: None,
            content_bytes: 0,
            progress: crate::progress::Progress::hidden(),
            max_manifest: crate::archive::manifest::MAX_SIGNED_SIZE,
        })
    }
}

impl<W: Write> ArchiveWriter<W> {
    /// Adds `size` bytes read from `data` as the regular file `name`. The header and the
    /// padding are written here rather than by the tar crate, so the data moves in 1 MiB
    /// reads while its digest is computed on other threads.
    pub fn add_reader(&mut self, name: &str, size: u64, mut data: impl Read) -> Result<(), Error> {
        if name.len() >= 100 {
            // Long names need the tar crate's GNU extension records.
            return self.add_reader_long(name, size, data);
        }
        let werr = |source| Error::Write {
            entry: name.to_string(),
            source,
        };
        let mut left = size;
        self.add_entry(name, size, |hashers| {
            if left == 0 {
                return Ok(None);
            }
            let want = (left as usize).min(crate::archive::hashing::CHUNK);
            let mut buf = hashers.buffer();
            // A recycled buffer keeps its length: only a fresh or shorter one is zeroed.
            buf.resize(want, 0);
            let mut got = 0;
            while got < want {
                match data.read(&mut buf[got..]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if got < want {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("expected {size} bytes, got {}", size - left + got as u64),
                ));
            }
            left -= got as u64;
            Ok(Some(buf))
        })
        .map_err(werr)
    }

    fn add_reader_long(&mut self, name: &str, size: u64, data: impl Read) -> Result<(), Error> {
        let werr = |source| Error::Write {
            entry: name.to_string(),
            source,
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        let recycle = self.recycle.clone();
        let hashers = self.hashers.get_or_insert_with(|| Hashers::new(recycle));
        let job = hashers.begin();
        let mut h = Hashing {
            inner: data.take(size),
            hashers,
            n: 0,
        };
        self.tar
            .append_data(&mut header, name, &mut h)
            .map_err(werr)?;
        let n = h.n;
        h.hashers.end().map_err(werr)?;
        if n != size {
            return Err(werr(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("expected {size} bytes, got {n}"),
            )));
        }
        self.content_bytes += size;
        self.push_entry(job, name, size);
        Ok(())
    }

    /// Writes the header of the regular file `name` of `size` bytes, then the buffers
    /// `next` gives until it gives None (they must add up to `size`), each written out and
    /// handed to the hashing threads, then the padding; lists it in the manifest.
    fn add_entry(
        &mut self,
        name: &str,
        size: u64,
        next: impl FnMut(&mut Hashers) -> std::io::Result<Option<Vec<u8>>>,
    ) -> std::io::Result<()> {
        let job = self.write_entry(name, size, next)?;
        self.push_entry(job, name, size);
        Ok(())
    }

    /// [`add_entry`](Self::add_entry) without the listing; the entry's hashing job.
    fn write_entry(
        &mut self,
        name: &str,
        size: u64,
        mut next: impl FnMut(&mut Hashers) -> std::io::Result<Option<Vec<u8>>>,
    ) -> std::io::Result<usize> {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        header.set_path(name)?;
        header.set_cksum();
        let recycle = self.recycle.clone();
        let hashers = self.hashers.get_or_insert_with(|| Hashers::new(recycle));
        let job = hashers.begin();
        let out = self.tar.get_mut();
        out.write_all(header.as_bytes())?;
        while let Some(buf) = next(hashers)? {
            self.progress.inc(buf.len() as u64);
            // Read by the compressor and a hashing thread at once, recycled after both.
            let buf = hashers.share(buf);
            out.write_shared(buf.clone())?;
            hashers.update_shared(buf)?;
        }
        hashers.end()?;
        let pad = (512 - (size % 512) as usize) % 512;
        out.write_all(&[0u8; 512][..pad])?;
        self.content_bytes += size;
        Ok(job)
    }

    /// Lists an entry whose bytes went to the hashers as `job`.
    fn push_entry(&mut self, job: usize, name: &str, size: u64) {
        self.waiting.insert(job, Dest::Entry(self.entries.len()));
        self.entries.push(Entry {
            name: name.to_string(),
            sha256: String::new(),
            size,
        });
    }

    /// Puts the digests the hashers have ready where they belong.
    fn settle_done(&mut self) -> Result<(), Error> {
        let done = match &self.hashers {
            Some(h) => h.take_done(),
            None => return Ok(()),
        };
        for d in done {
            self.settle(d)?;
        }
        Ok(())
    }

    fn settle(&mut self, (job, sha256, size): Done) -> Result<(), Error> {
        match self.waiting.remove(&job) {
            Some(Dest::Entry(i)) => self.entries[i].sha256 = hex::encode(sha256),
            Some(Dest::Part(f, n)) => {
                let records = self.records.as_ref().expect("made at the first part");
                records
                    .put(self.pages[f].first + n as u64, &PartRecord { size, sha256 })
                    .map_err(|e| self.spill_error("the pages' records", e))?;
            }
            None => {}
        }
        Ok(())
    }

    fn spill_error(&self, what: &'static str, source: std::io::Error) -> Error {
        Error::Spill {
            what,
            dir: self.spill_dir.display().to_string(),
            source,
        }
    }

    /// Where the parts' records are kept until the indexes are written (by default the
    /// system's temporary directory): 40 bytes per MiB of pages.
    pub fn spill_in(&mut self, dir: &Path) {
        self.spill_dir = dir.to_path_buf();
    }

    /// Time spent so far handing the tar stream to the compressor and the output below it
    /// (with zstd's worker thread, the time spent waiting for it).
    pub fn encode_time(&self) -> std::time::Duration {
        self.tar.get_ref().spent
    }

    /// Names the key that will sign the manifest, the image the container needs, its id and
    /// whether it has a terminal, ahead of every entry (a pax comment on the first one, see
    /// [`Announce`]), so that the reader of a stream can refuse a signer it does not
    /// trust, an image it lacks, an id in use or a terminal it has no socket for at once:
    /// the writer of a pipe then sees it go and fails, and the container runs on, where a
    /// refusal after the whole stream came would be too late for it. Only the manifest's
    /// signature proves anything; the reader holds the two to the same key. Call before
    /// the first entry.
    pub fn announce(&mut self, what: &Announce) -> Result<(), Error> {
        let comment = what.comment();
        self.tar
            .append_pax_extensions([("comment", comment.as_bytes())])
            .map_err(|source| Error::Write {
                entry: "(signer)".into(),
                source,
            })
    }

    /// A lower limit for the signed manifest than a restore's, so that a test can reach it.
    #[cfg(test)]
    pub(crate) fn limit_manifest(&mut self, max: u64) {
        self.max_manifest = max;
    }

    /// Buffers given to [`add_chunks`](Self::add_chunks) go back through `pool` once they
    /// are written and hashed, to be filled again (fresh memory is slow to touch here).
    pub fn recycle_into(&mut self, pool: SyncSender<Vec<u8>>) {
        self.recycle = Some(pool);
    }

    /// Adds part `n` of the pages image `file` (archive::pages), made of `chunks`, without
    /// copying them. An image's parts come together and in order, all of them before
    /// [`mark_tail`](Self::mark_tail), which writes each image's index.
    pub fn add_part(&mut self, file: &str, n: u32, chunks: Vec<Vec<u8>>) -> Result<(), Error> {
        let name = part_name(file, n);
        let werr = |source| Error::Write {
            entry: name.clone(),
            source,
        };
        let misplaced = |why: &str| werr(std::io::Error::other(why.to_string()));
        let f = match self.pages.iter().position(|p| p.name == file) {
            Some(f) if self.pages[f].indexed => {
                return Err(misplaced("a part after its image's index was written"));
            }
            Some(f) if f + 1 != self.pages.len() => {
                return Err(misplaced("a part after another image's parts"));
            }
            Some(f) => f,
            None => {
                self.pages.push(Paged {
                    name: file.to_string(),
                    first: self.slots,
                    count: 0,
                    indexed: false,
                });
                self.pages.len() - 1
            }
        };
        if u64::from(n) != self.pages[f].count {
            return Err(misplaced("parts out of order"));
        }
        if self.records.is_none() {
            self.records = Some(
                RecordFile::new_in(&self.spill_dir)
                    .map_err(|e| self.spill_error("the pages' records", e))?,
            );
        }
        let size: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let mut chunks = chunks.into_iter();
        let job = self
            .write_entry(&name, size, |_| Ok(chunks.next()))
            .map_err(werr)?;
        self.pages[f].count += 1;
        self.slots += 1;
        self.waiting.insert(job, Dest::Part(f, n as usize));
        self.settle_done()
    }

    /// Appends `bytes` to the entry `name`, written in the tail
    /// ([`mark_tail`](Self::mark_tail), or `finish`) after the indexes; held on disk until
    /// then. An entry's bytes come together: holding another name ends it.
    pub fn hold(&mut self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let what = "the pagemaps";
        if self.held_file.is_none() {
            self.held_file = Some(
                crate::archive::pages::unnamed_file(&self.spill_dir)
                    .map_err(|e| self.spill_error(what, e))?,
            );
        }
        let f = self.held_file.as_ref().expect("made above");
        f.write_all_at(bytes, self.held_end)
            .map_err(|e| self.spill_error(what, e))?;
        match self.held.last_mut() {
            Some((n, _, len)) if n == name => *len += bytes.len() as u64,
            _ => {
                if self.held.iter().any(|(n, _, _)| n == name) {
                    return Err(Error::Write {
                        entry: name.to_string(),
                        source: std::io::Error::other(
                            "its bytes were held apart, another entry's between them",
                        ),
                    });
                }
                self.held
                    .push((name.to_string(), self.held_end, bytes.len() as u64))
            }
        }
        self.held_end += bytes.len() as u64;
        Ok(())
    }

    /// Writes what is held for the tail ([`hold`](Self::hold)).
    fn write_held(&mut self) -> Result<(), Error> {
        let Some(f) = self.held_file.take() else {
            return Ok(());
        };
        for (name, at, len) in std::mem::take(&mut self.held) {
            self.add_reader(&name, len, crate::archive::pages::range(&f, at, len))?;
        }
        self.held_end = 0;
        Ok(())
    }

    /// Writes the index of every pages image that has none yet, once all its parts'
    /// digests are known.
    fn write_indexes(&mut self) -> Result<(), Error> {
        if self.pages.iter().all(|p| p.indexed) {
            return Ok(());
        }
        let herr = |source| Error::Write {
            entry: "(the pages' records)".into(),
            source,
        };
        if let Some(h) = &self.hashers {
            h.flush().map_err(herr)?;
        }
        while self.waiting.values().any(|d| matches!(d, Dest::Part(..))) {
            let h = self.hashers.as_ref().expect("parts were hashed");
            let done = h.next_done().map_err(herr)?;
            self.settle(done)?;
        }
        let records = self.records.take().expect("made at the first part");
        for f in 0..self.pages.len() {
            if self.pages[f].indexed {
                continue;
            }
            self.pages[f].indexed = true;
            let Paged {
                name, first, count, ..
            } = &self.pages[f];
            let (head, size) = index_head(*count);
            let index = index_name(name);
            self.add_reader(&index, size, head.chain(records.raw(*first, *count)))?;
        }
        self.records = Some(records);
        Ok(())
    }

    /// Adds the regular file `name` made of `chunks`, without copying them.
    pub fn add_chunks(&mut self, name: &str, chunks: Vec<Vec<u8>>) -> Result<(), Error> {
        let size: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let mut chunks = chunks.into_iter();
        self.add_entry(name, size, |_| Ok(chunks.next()))
            .map_err(|source| Error::Write {
                entry: name.to_string(),
                source,
            })
    }

    pub fn add_bytes(&mut self, name: &str, data: &[u8]) -> Result<(), Error> {
        self.add_reader(name, data.len() as u64, data)
    }

    pub fn add_file(&mut self, name: &str, path: &Path) -> Result<(), Error> {
        let read_err = |source| Error::Read {
            path: path.display().to_string(),
            source,
        };
        let f = std::fs::File::open(path).map_err(read_err)?;
        let size = f.metadata().map_err(read_err)?.len();
        self.add_reader(name, size, f)
    }

    /// Like [`add_file`], for a file that is thrown away afterwards: its pages are released
    /// (holes punched) as soon as they are in the archive, so the archive's own writes reuse
    /// that memory instead of touching fresh pages (slow on VMs that return free memory).
    pub fn add_file_consuming(&mut self, name: &str, path: &Path) -> Result<(), Error> {
        let read_err = |source| Error::Read {
            path: path.display().to_string(),
            source,
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(read_err)?;
        let size = f.metadata().map_err(read_err)?.len();
        let mut r = Consuming {
            file: f,
            pos: 0,
            released: 0,
        };
        self.add_reader(name, size, &mut r)?;
        r.release(r.pos);
        Ok(())
    }

    /// Every regular file of `dir` (not recursive: CRIU's image dir is flat), sorted, as
    /// `<prefix>/<file name>`; with `consume`, each file's pages are released as they go.
    pub fn add_dir(&mut self, prefix: &str, dir: &Path) -> Result<(), Error> {
        self.add_dir_with(prefix, dir, false)
    }

    pub fn add_dir_consuming(&mut self, prefix: &str, dir: &Path) -> Result<(), Error> {
        self.add_dir_with(prefix, dir, true)
    }

    fn add_dir_with(&mut self, prefix: &str, dir: &Path, consume: bool) -> Result<(), Error> {
        let read_err = |source| Error::Read {
            path: dir.display().to_string(),
            source,
        };
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let name = format!("{prefix}/{}", n.to_string_lossy());
            if consume {
                self.add_file_consuming(&name, &dir.join(&n))?;
            } else {
                self.add_file(&name, &dir.join(&n))?;
            }
        }
        Ok(())
    }

    /// Marks where the archive's tail (what follows the memory pages) begins, for a restore
    /// that reads it first (archive::frames::TailMark; zstd only: an uncompressed archive
    /// is found out by seeking, a gzip one cannot be).
    /// The pages images' indexes are the tail's first entries, then what was held for it.
    pub fn mark_tail(&mut self) -> Result<(), Error> {
        let t = self.tar.get_mut();
        let at = t.written;
        if let Encoder::Zstd(z) = &mut t.inner {
            z.mark_tail(at).map_err(|source| Error::Write {
                entry: "(tail mark)".into(),
                source,
            })?;
        }
        self.write_indexes()?;
        self.write_held()
    }

    /// Closes the archive with the signed manifest of everything written.
    pub fn finish(mut self, mut manifest: Manifest, id: &Identity) -> Result<W, Error> {
        self.write_indexes()?;
        self.write_held()?;
        if let Some(h) = self.hashers.take() {
            let herr = |source| Error::Write {
                entry: "(hashing)".into(),
                source,
            };
            for done in h.close().map_err(herr)? {
                self.settle(done)?;
            }
            if !self.waiting.is_empty() {
                return Err(herr(std::io::Error::other(format!(
                    "{} entries were never hashed",
                    self.waiting.len()
                ))));
            }
        }
        manifest.entries = std::mem::take(&mut self.entries);
        let signed = SignedManifest::sign(&manifest, id);
        let bytes = serde_json::to_vec_pretty(&signed).expect("manifest serialises");
        if bytes.len() as u64 > self.max_manifest {
            return Err(Error::Write {
                entry: MANIFEST_NAME.into(),
                source: std::io::Error::other(format!(
                    "it would be {} MiB for {} entries, more than the {} MiB a restore reads: \
                     the container's memory is too large for one archive. Nothing was \
                     released; a runc-style checkpoint (--image-path DIR) has no manifest",
                    bytes.len() >> 20,
                    manifest.entries.len(),
                    self.max_manifest >> 20
                )),
            });
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        let werr = |source| Error::Write {
            entry: MANIFEST_NAME.into(),
            source,
        };
        self.tar
            .append_data(&mut header, MANIFEST_NAME, bytes.as_slice())
            .map_err(werr)?;
        let timed = self.tar.into_inner().map_err(werr)?;
        let mut out = timed.inner.finish().map_err(werr)?;
        out.flush().map_err(werr)?;
        Ok(out)
    }
}
