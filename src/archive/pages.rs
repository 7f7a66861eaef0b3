//! Memory pages from CRIU's page stream into the archive while CRIU dumps. The page server
//! thread ([`crate::criu::page_server::serve`] with a [`ChannelSink`]) reads the socket into
//! 1 MiB buffers; the archive thread ([`write_events`]) writes them out as they come. A
//! pages image's size is known only when it ends, and a tar entry needs its size before its
//! bytes, so each pages image goes in as parts of at most [`PART`] bytes named
//! `checkpoint/pages-<id>.img.part<N>`; restore joins them back into `pages-<id>.img`.
//!
//! The parts are not listed in the manifest one by one (format 3): each pages image has an
//! index, `checkpoint/pages-<id>.img.index`, written in the archive's tail after all the
//! pages, which gives every part's size and sha256 ([`PartRecord`], 40 bytes a part), and the
//! manifest lists the index. A manifest of one record per 1 MiB part had every reader and
//! the writer hold a record per part, growing with the container's memory
//! (docs/checkpoint.md, "Pages indexes"). Format 2 archives list every part instead, and
//! still read.

use crate::archive::hashing::CHUNK;
use crate::archive::writer::{ArchiveWriter, Error};
use crate::criu::page_server::PageSink;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender};

/// The largest part of a pages image: what the archive thread holds before writing it.
pub const PART: usize = 1 << 20;

/// `<file>.part<N>`: the name of the N-th part of `file`.
pub fn part_name(file: &str, n: u32) -> String {
    format!("{file}.part{n}")
}

/// The file and index of a part's name (`pages-65537.img.part3` -> (`pages-65537.img`, 3)).
pub fn split_part(name: &str) -> Option<(&str, u32)> {
    let (file, n) = name.rsplit_once(".part")?;
    if file.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // No leading zeros: one spelling per part.
    if n.len() > 1 && n.starts_with('0') {
        return None;
    }
    Some((file, n.parse().ok()?))
}

/// `<file>.index`: the index of `file`'s parts.
pub fn index_name(file: &str) -> String {
    format!("{file}{INDEX_SUFFIX}")
}

const INDEX_SUFFIX: &str = ".index";

/// The pages file an index's name is for (`pages-65537.img.index` -> `pages-65537.img`).
pub fn index_of(name: &str) -> Option<&str> {
    name.strip_suffix(INDEX_SUFFIX).filter(|f| !f.is_empty())
}

/// A part as its index gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartRecord {
    pub size: u64,
    pub sha256: [u8; 32],
}

impl PartRecord {
    /// As an index holds it: the size (u64, little-endian), then the sha256.
    fn to_bytes(self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..].copy_from_slice(&self.sha256);
        b
    }

    fn from_bytes(b: &[u8]) -> PartRecord {
        PartRecord {
            size: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            sha256: b[8..RECORD_LEN].try_into().expect("32 bytes"),
        }
    }
}

/// One part of a pages image as a restore of an archive file finds it: where its data is
/// in the archive, where it goes in its staged file, and the record its index gives it.
#[derive(Clone)]
pub struct Part {
    /// The pages image's name in the archive (`checkpoint/pages-<id>.img`).
    pub image: std::sync::Arc<str>,
    /// The pages file (index into the staged files) and the part's number in it.
    pub file: usize,
    pub n: usize,
    /// Offset of its data in the archive; in a zstd archive, of the frame its data starts
    /// in, `skip` bytes into what that frame decompresses to (archive::zhead).
    pub at: u64,
    pub skip: u64,
    /// Offset in the staged file.
    pub offset: u64,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl Part {
    /// The part's name in the archive, for errors.
    pub fn name(&self) -> String {
        part_name(&self.image, self.n as u32)
    }

    pub fn record(&self) -> PartRecord {
        PartRecord {
            size: self.size,
            sha256: self.sha256,
        }
    }
}

/// Where parts are read from: an archive file, uncompressed, or zstd with its head (of
/// `head_end` bytes) read in place (archive::zhead).
#[derive(Clone)]
pub struct Pages {
    pub file: std::sync::Arc<std::fs::File>,
    pub head_end: Option<u64>,
}

impl Pages {
    /// Reads `buf.len()` bytes of the entry `name` (for errors) whose data is at `at` (and
    /// `skip`, see [`Part::at`]), `from` bytes into it. In a zstd archive a part is read
    /// whole: `from` is 0 and `buf` its size. `un` is the caller's, kept between reads.
    pub fn read(
        &self,
        at: u64,
        skip: u64,
        from: u64,
        buf: &mut [u8],
        un: &mut Option<crate::archive::zhead::Unpacker>,
        name: &dyn Fn() -> String,
    ) -> Result<(), crate::archive::reader::Error> {
        use crate::archive::reader::Error;
        use std::os::unix::fs::FileExt;
        let Some(end) = self.head_end else {
            return self
                .file
                .read_exact_at(buf, at + from)
                .map_err(|e| crate::archive::reader::read_error(e, &name()));
        };
        debug_assert_eq!(from, 0, "a zstd part is read whole");
        let un = match un {
            Some(u) => u,
            None => un.insert(
                crate::archive::zhead::Unpacker::new()
                    .map_err(|e| Error::Corrupt(format!("zstd: {e}")))?,
            ),
        };
        un.read_part(&self.file, at, skip, end, buf)
            .map_err(|why| Error::Tampered {
                entry: name(),
                why: format!("its zstd frame does not read back: {why}"),
            })
    }
}

/// What an index starts with: its kind and version.
const INDEX_MAGIC: &[u8; 8] = b"FERRYPX1";
/// Bytes a part takes in an index: its size (u64, little-endian), then its sha256.
pub const RECORD_LEN: usize = 40;

/// An index of `records`, in part order.
pub fn encode_index(records: &[PartRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_MAGIC.len() + RECORD_LEN * records.len());
    out.extend_from_slice(INDEX_MAGIC);
    for r in records {
        out.extend_from_slice(&r.to_bytes());
    }
    out
}

/// Parts' records kept on disk while an archive is written or read, each at its slot
/// (the writer's or reader's running count of parts), so that neither holds a record per
/// part in memory. An unnamed file: nothing to remove.
pub struct RecordFile {
    file: File,
}

impl RecordFile {
    pub fn new_in(dir: &Path) -> io::Result<RecordFile> {
        Ok(RecordFile {
            file: unnamed_file(dir)?,
        })
    }

    pub fn put(&self, slot: u64, r: &PartRecord) -> io::Result<()> {
        self.file
            .write_all_at(&r.to_bytes(), slot * RECORD_LEN as u64)
    }

    /// The raw records of slots `first..first + count`, as an index holds them.
    pub fn raw(&self, first: u64, count: u64) -> impl Read + '_ {
        range(
            &self.file,
            first * RECORD_LEN as u64,
            count * RECORD_LEN as u64,
        )
    }

    /// The records of slots `first..first + count`, in order.
    pub fn records(&self, first: u64, count: u64) -> Records<impl Read + '_> {
        Records::new(self.raw(first, count), count)
    }
}

/// A file with no name in `dir`, for the reader and the writer to keep on disk what would
/// otherwise grow in memory with the container; it goes when it is closed.
pub fn unnamed_file(dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |path: &Path, flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
    };
    match open(dir, libc::O_TMPFILE) {
        Ok(f) => Ok(f),
        // A filesystem without O_TMPFILE: a name, removed at once.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let path = dir.join(format!(".ferry-spill-{}-{nanos}", std::process::id()));
            let f = open(&path, libc::O_CREAT | libc::O_EXCL)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
        Err(e) => Err(e),
    }
}

/// `len` bytes of `file` from `at`, read with pread.
pub fn range(file: &File, at: u64, len: u64) -> impl Read + '_ {
    At {
        file,
        pos: at,
        end: at + len,
    }
}

/// A byte range of a file, read with pread.
struct At<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.end.saturating_sub(self.pos)) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The records of a range of a [`RecordFile`] in order, a buffer's worth at a time (an
/// index is read with an [`IndexCursor`]).
pub struct Records<R> {
    r: BufReader<R>,
    left: u64,
}

impl<R: Read> Records<R> {
    fn new(r: R, count: u64) -> Records<R> {
        Records {
            r: BufReader::with_capacity(16 << 10, r),
            left: count,
        }
    }
}

impl<R: Read> Iterator for Records<R> {
    type Item = io::Result<PartRecord>;

    fn next(&mut self) -> Option<io::Result<PartRecord>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut b = [0u8; RECORD_LEN];
        Some(
            self.r
                .read_exact(&mut b)
                .map(|()| PartRecord::from_bytes(&b)),
        )
    }
}

/// An index's records in order, read a batch at a time, the file opened for each batch: a
/// restore has a cursor per pages image live at once (the copy-in one per task), and none
/// holds a descriptor or more than a batch (a container of many processes would otherwise
/// hold a buffer and a descriptor for each).
pub struct IndexCursor {
    path: std::path::PathBuf,
    /// The next record to read into the batch, and how many are left to read.
    next: u64,
    left: u64,
    batch: std::collections::VecDeque<PartRecord>,
}

impl IndexCursor {
    const BATCH: u64 = 64;

    /// The `count` records of the index at `path` (checked to be one: [`index_len`]).
    pub fn new(path: std::path::PathBuf, count: u64) -> IndexCursor {
        IndexCursor {
            path,
            next: 0,
            left: count,
            batch: Default::default(),
        }
    }

    /// How many records are still to come.
    pub fn left(&self) -> u64 {
        self.left + self.batch.len() as u64
    }

    fn fill(&mut self) -> io::Result<()> {
        let n = self.left.min(Self::BATCH);
        let mut buf = vec![0u8; n as usize * RECORD_LEN];
        let at = INDEX_MAGIC.len() as u64 + self.next * RECORD_LEN as u64;
        File::open(&self.path)?.read_exact_at(&mut buf, at)?;
        self.batch
            .extend(buf.chunks_exact(RECORD_LEN).map(PartRecord::from_bytes));
        self.next += n;
        self.left -= n;
        Ok(())
    }
}

impl Iterator for IndexCursor {
    type Item = io::Result<PartRecord>;

    fn next(&mut self) -> Option<io::Result<PartRecord>> {
        if self.batch.is_empty()
            && self.left > 0
            && let Err(e) = self.fill()
        {
            self.left = 0;
            return Some(Err(e));
        }
        self.batch.pop_front().map(Ok)
    }
}

/// How many records the index file at `path` (staged) holds, once its start and length
/// are those of an index; Err says what is wrong with it. Read it with [`IndexCursor`].
pub fn index_len(path: &Path) -> io::Result<Result<u64, String>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut magic = [0u8; 8];
    if len < magic.len() as u64 {
        return Ok(Err("it does not start as a ferry pages index".into()));
    }
    f.read_exact(&mut magic)?;
    if &magic != INDEX_MAGIC {
        return Ok(Err("it does not start as a ferry pages index".into()));
    }
    let body = len - magic.len() as u64;
    if !body.is_multiple_of(RECORD_LEN as u64) {
        return Ok(Err(format!(
            "{body} bytes of records, not a whole number of {RECORD_LEN}-byte records"
        )));
    }
    Ok(Ok(body / RECORD_LEN as u64))
}

/// What an index of `count` records starts with, and its size.
pub fn index_head(count: u64) -> (&'static [u8], u64) {
    (
        INDEX_MAGIC,
        INDEX_MAGIC.len() as u64 + count * RECORD_LEN as u64,
    )
}

pub enum Event {
    Data { file: String, buf: Vec<u8> },
    Done { file: String },
    Image { file: String, bytes: Vec<u8> },
}

/// The page server's sink: page data into buffers taken from `pool`, sent to the archive
/// thread.
pub struct ChannelSink {
    pub tx: SyncSender<Event>,
    pub pool: Receiver<Vec<u8>>,
}

fn gone() -> io::Error {
    io::Error::other("the archive writer stopped")
}

impl PageSink for ChannelSink {
    fn pages(&mut self, file: &str, src: &mut dyn Read, len: u64) -> io::Result<()> {
        let mut left = len;
        while left > 0 {
            let mut buf = self
                .pool
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
            let want = (left as usize).min(CHUNK);
            // A recycled buffer keeps its length: only a fresh or shorter one is zeroed.
            buf.resize(want, 0);
            src.read_exact(&mut buf)?;
            left -= want as u64;
            self.tx
                .send(Event::Data {
                    file: file.to_string(),
                    buf,
                })
                .map_err(|_| gone())?;
        }
        Ok(())
    }

    fn pages_done(&mut self, file: &str) -> io::Result<()> {
        self.tx
            .send(Event::Done {
                file: file.to_string(),
            })
            .map_err(|_| gone())
    }

    fn image(&mut self, file: &str, bytes: Vec<u8>) -> io::Result<()> {
        self.tx
            .send(Event::Image {
                file: file.to_string(),
                bytes,
            })
            .map_err(|_| gone())
    }
}

/// Writes what the page server sends as `<prefix>/<file>` entries until the sender is gone.
/// The page server ends each pages image (`Done`) before it starts the next.
pub fn write_events<W: Write>(
    w: &mut ArchiveWriter<W>,
    prefix: &str,
    events: Receiver<Event>,
) -> Result<(), Error> {
    // The pages image being written, the number of its next part, and that part's buffers.
    let mut file = String::new();
    let mut next = 0u32;
    let mut part: Vec<Vec<u8>> = vec![];
    let flush = |w: &mut ArchiveWriter<W>, file: &str, next: &mut u32, part: &mut Vec<_>| {
        *next += 1;
        w.add_part(&format!("{prefix}/{file}"), *next - 1, std::mem::take(part))
    };
    for ev in events {
        match ev {
            Event::Data { file: f, buf } => {
                if f != file {
                    if !part.is_empty() {
                        flush(w, &file, &mut next, &mut part)?;
                    }
                    (file, next) = (f, 0);
                }
                part.push(buf);
                if part.iter().map(Vec::len).sum::<usize>() >= PART {
                    flush(w, &file, &mut next, &mut part)?;
                }
            }
            Event::Done { file: f } => {
                if f != file {
                    (file, next) = (f, 0);
                }
                // Also an image with no data gets its (empty) first part: CRIU opens it.
                if !part.is_empty() || next == 0 {
                    flush(w, &file, &mut next, &mut part)?;
                }
                file.clear();
            }
            // After the pages: a restore reads everything but them first (archive::feed).
            Event::Image { file, bytes } => w.hold(&format!("{prefix}/{file}"), &bytes)?,
        }
    }
    // The indexes of the pages images come first in the tail, then the pagemaps.
    w.mark_tail()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_round_trips_and_refuses_what_is_not_one() {
        let records = vec![
            PartRecord {
                size: 1 << 20,
                sha256: [7; 32],
            },
            PartRecord {
                size: 0,
                sha256: [0xa5; 32],
            },
        ];
        let d = tempfile::tempdir().unwrap();
        let read = |bytes: &[u8]| {
            let path = d.path().join("index");
            std::fs::write(&path, bytes).unwrap();
            index_len(&path).unwrap().map(|n| {
                IndexCursor::new(path.clone(), n)
                    .map(Result::unwrap)
                    .collect::<Vec<_>>()
            })
        };
        let bytes = encode_index(&records);
        assert_eq!(bytes.len(), 8 + 2 * RECORD_LEN);
        assert_eq!(read(&bytes).unwrap(), records);
        assert_eq!(read(&encode_index(&[])).unwrap(), vec![]);
        let e = read(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(e.contains("not a whole number"), "{e}");
        let e = read(b"something else").unwrap_err();
        assert!(e.contains("does not start as a ferry pages index"), "{e}");
        let e = read(b"FERRY").unwrap_err();
        assert!(e.contains("does not start as a ferry pages index"), "{e}");
        // A cursor reads them a batch at a time, with no descriptor held between batches.
        let many: Vec<PartRecord> = (0..150u64)
            .map(|i| PartRecord {
                size: i,
                sha256: [i as u8; 32],
            })
            .collect();
        let path = d.path().join("many");
        std::fs::write(&path, encode_index(&many)).unwrap();
        let mut cursor = IndexCursor::new(path.clone(), 150);
        assert_eq!(cursor.next().unwrap().unwrap(), many[0]);
        assert_eq!(cursor.left(), 149);
        let rest: Vec<_> = cursor.map(Result::unwrap).collect();
        assert_eq!(rest, many[1..]);
        std::fs::remove_file(&path).unwrap();
        // Records kept on disk come back in order, whatever order they were put in.
        let kept = RecordFile::new_in(d.path()).unwrap();
        kept.put(1, &records[1]).unwrap();
        kept.put(0, &records[0]).unwrap();
        let back: Vec<_> = kept.records(0, 2).map(Result::unwrap).collect();
        assert_eq!(back, records);
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "the records' file has no name"
        );
        assert_eq!(index_of(&index_name("pages-3.img")), Some("pages-3.img"));
        assert_eq!(index_of(".index"), None);
        assert_eq!(index_of("pages-3.img"), None);
    }

    #[test]
    fn part_names_round_trip() {
        assert_eq!(part_name("pages-65537.img", 3), "pages-65537.img.part3");
        assert_eq!(
            split_part("pages-65537.img.part3"),
            Some(("pages-65537.img", 3))
        );
        assert_eq!(split_part("pages-1.img.part0"), Some(("pages-1.img", 0)));
        for bad in [
            "pages-1.img",
            "x.part",
            ".part1",
            "x.part01",
            "x.partz",
            "x.part-1",
        ] {
            assert_eq!(split_part(bad), None, "{bad}");
        }
    }
}
