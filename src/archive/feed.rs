//! `restore -i` of an archive file, with the memory pages fed to CRIU while it restores
//! (docs/checkpoint.md, "Pages fed while CRIU restores").
//!
//! [`unpack`] reads everything but the pages first: an uncompressed archive's tar headers by
//! seeking past the data, a zstd archive's tail (archive::frames::TailMark) by decompressing
//! from where its last bytes point. It checks the manifest's signature and signer, that the
//! archive holds exactly the manifest's entries at their sizes, and verifies and stages every
//! entry but the pages parts. The pages images are then made empty on the stage and gated
//! (archive::gate): CRIU may start, and each of its reads waits until the range it wants has
//! been written and its parts' digests matched. The [`Feed`] does that on every core, in
//! archive order; a part that does not match (or a head that is not exactly the manifest's
//! parts) stops it and refuses CRIU's waiting read, so CRIU fails before anything restored
//! runs, and the restore's pre-resume notification waits for the whole feed
//! ([`Feed::wait`]).
//!
//! A zstd archive's head is walked in place first (archive::zhead, `walk_head`): then
//! its parts are read one by one where they lie, as an uncompressed archive's are, and the
//! copy-in serves both. A head that cannot be walked is decompressed in order instead.

use crate::archive::frames::{TAIL_MARK_LEN, TailMark};
use crate::archive::gate::Gate;
use crate::archive::hashing::Hashers;
use crate::archive::pages::{IndexCursor, Pages, Part, PartRecord};
use crate::archive::reader::{
    Admission, Admitted, Error, Trust, Unpacked, check_digest, check_listing, check_part,
    check_signer, complete, entry_name, part_missing, part_unlisted, read_error, read_manifest,
    signed_parts, signed_records, stage_stream,
};
use crate::archive::sha256x2::{Lane, update_pair};
use crate::archive::stage::Stage;
use crate::archive::uffd::{FeedDone, Item, Plan, Running, Share, Sources};
use crate::archive::zhead::{Place, Unpacker};
use crate::image::layer::Compression;
use crate::progress::Progress;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// How much of a part is read, hashed and written at once.
const CHUNK: u64 = 1 << 20;

/// How [`unpack`] finds its way in an archive file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layout {
    /// Uncompressed: the tar headers are read by seeking past the data.
    Plain,
    /// zstd with a tail mark (archive::frames::TailMark): the tail is decompressed first,
    /// the pages from the start while CRIU restores.
    Zstd(TailMark),
}

impl Layout {
    /// At most how many bytes of pages `archive` (of this layout) holds: what precedes a
    /// zstd archive's tail, or all of an uncompressed one.
    pub fn pages_size(self, archive: &Path) -> Option<u64> {
        match self {
            Layout::Zstd(mark) => Some(mark.tar_offset),
            Layout::Plain => std::fs::metadata(archive).ok().map(|m| m.len()),
        }
    }
}

/// How [`unpack`] can read `path`: a regular file, uncompressed or zstd with a tail mark;
/// None for anything else (a pipe, gzip, zstd from before the mark), which is read whole
/// first.
pub fn layout(path: &Path) -> Option<Layout> {
    let f = File::open(path).ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let sniff = |at: u64| {
        let mut head = [0u8; 4];
        f.read_exact_at(&mut head, at).ok()?;
        Some(Compression::sniff(&head))
    };
    match sniff(0)? {
        // Anything else (an empty file, a text file) is left to the stream reader, which
        // says what it is.
        Compression::None => {
            let mut block = [0u8; 512];
            f.read_exact_at(&mut block, 0).ok()?;
            return crate::archive::reader::starts_a_tar(&block).then_some(Layout::Plain);
        }
        Compression::Gzip => return None,
        Compression::Zstd => {}
    }
    let len = meta.len();
    let mut tail = [0u8; TAIL_MARK_LEN as usize];
    f.read_exact_at(&mut tail, len.checked_sub(TAIL_MARK_LEN)?)
        .ok()?;
    let mark = TailMark::parse(&tail, len)?;
    (sniff(mark.frame_offset)? == Compression::Zstd).then_some(Layout::Zstd(mark))
}

/// A byte range of a file, read from its start (the file's own offset is not used).
struct Region {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for Region {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (buf.len() as u64).min(self.end.saturating_sub(self.pos)) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The parts of one pages image in an uncompressed archive, as the scan of its headers
/// found them: together, each header right after the data before it.
struct Image {
    name: Arc<str>,
    /// Its index among the staged files.
    file: usize,
    /// Where part 0's data starts, and where the last part's (padded) data ends.
    first_at: u64,
    end: u64,
    count: u64,
    /// The bytes of all its parts.
    total: u64,
    /// In a zstd archive read in place: where part 0's header is (archive::zhead).
    head: Option<Place>,
}

/// The parts of one image in order, made from its index as they are wanted, each found
/// where the one before it ends (the scan checked that the headers lie so).
struct Parts {
    image: Arc<str>,
    file: usize,
    records: IndexCursor,
    n: usize,
    walk: Walk,
    offset: u64,
}

/// Where the next part is: its data's offset in an uncompressed archive; in a zstd one,
/// its header's place in the head (found as the walk goes, without decompressing parts).
enum Walk {
    Plain(u64),
    Zstd(Arc<File>, Place),
}

impl Parts {
    fn of(img: &Image, stage: &Path, pages: &Pages) -> Result<Parts, Error> {
        Ok(Parts {
            image: img.name.clone(),
            file: img.file,
            records: signed_records(stage, &img.name)?,
            n: 0,
            walk: match &img.head {
                Some(place) => Walk::Zstd(pages.file.clone(), place.clone()),
                None => Walk::Plain(img.first_at),
            },
            offset: 0,
        })
    }
}

impl Iterator for Parts {
    type Item = Result<Part, Error>;

    fn next(&mut self) -> Option<Result<Part, Error>> {
        let r = match self.records.next()? {
            Ok(r) => r,
            Err(e) => {
                return Some(Err(Error::Corrupt(format!(
                    "reading the index of {}: {e}",
                    self.image
                ))));
            }
        };
        let padded = r.size.div_ceil(512) * 512;
        let (at, skip) = match &mut self.walk {
            Walk::Plain(at) => {
                let here = *at;
                *at += padded + 512;
                (here, 0)
            }
            Walk::Zstd(file, place) => {
                let moved = place.advance(file, 512).map(|()| (place.at, place.skip));
                match moved.and_then(|here| place.advance(file, padded).map(|()| here)) {
                    Ok(here) => here,
                    Err(why) => {
                        return Some(Err(Error::Corrupt(format!(
                            "finding part {} of {}: {why}",
                            self.n, self.image
                        ))));
                    }
                }
            }
        };
        let part = Part {
            image: self.image.clone(),
            file: self.file,
            n: self.n,
            at,
            skip,
            offset: self.offset,
            size: r.size,
            sha256: r.sha256,
        };
        self.n += 1;
        self.offset += r.size;
        Some(Ok(part))
    }
}

/// How far each pages file's parts have matched their digests; the gate opens over each
/// file's prefix of matched parts, since CRIU reads a file from its start. It holds only
/// the parts matched ahead of one still being checked (a few, one per thread).
struct Matched {
    files: Vec<Matching>,
}

struct Matching {
    /// Parts in the file, the first not matched, and where the matched prefix ends.
    count: usize,
    next: usize,
    end: u64,
    /// Parts matched out of order: their ends, by number.
    ahead: BTreeMap<usize, u64>,
}

impl Matched {
    /// For files of these many parts.
    fn new(counts: impl Iterator<Item = usize>) -> Matched {
        Matched {
            files: counts
                .map(|count| Matching {
                    count,
                    next: 0,
                    end: 0,
                    ahead: BTreeMap::new(),
                })
                .collect(),
        }
    }

    /// Part `n` of `file`, which ends at `end` in it, matched.
    fn matched(&mut self, file: usize, n: usize, end: u64, gate: &Gate) {
        let m = &mut self.files[file];
        if n != m.next {
            m.ahead.insert(n, end);
            return;
        }
        (m.next, m.end) = (n + 1, end);
        while let Some(e) = m.ahead.remove(&m.next) {
            (m.next, m.end) = (m.next + 1, e);
        }
        gate.advance(file, m.end);
    }

    /// The first part not matched: (file, n).
    fn first_unmatched(&self) -> Option<(usize, usize)> {
        self.files
            .iter()
            .enumerate()
            .find(|(_, m)| m.next < m.count)
            .map(|(f, m)| (f, m.next))
    }
}

/// The images of `signed` (each with its index staged) are those the scan found, with the
/// same parts: as many, each the size its index says, its header where the one before it
/// ends. Reads each index once and each part's header; holds nothing per part.
fn check_images(
    archive: &Pages,
    images: &[Image],
    signed: &std::collections::BTreeSet<String>,
    stage: &Path,
) -> Result<(), Error> {
    for file in signed {
        let Some(img) = images.iter().find(|i| *i.name == **file) else {
            // An index of no parts vouches for nothing; any other needs its parts.
            if signed_records(stage, file)?.left() > 0 {
                return Err(part_missing(file, 0));
            }
            continue;
        };
        let mut parts = Parts::of(img, stage, archive)?;
        let count = parts.records.left();
        if count < img.count {
            return Err(part_unlisted(file, count as usize));
        }
        if count > img.count {
            return Err(part_missing(file, img.count as usize));
        }
        let mut header = [0u8; 512];
        for p in parts.by_ref() {
            let p = p?;
            archive
                .file
                .read_exact_at(&mut header, p.at - 512)
                .map_err(|e| read_error(e, &p.name()))?;
            let size = tar::Header::from_byte_slice(&header)
                .entry_size()
                .map_err(|e| Error::Corrupt(format!("{}: {e}", p.name())))?;
            if size != p.size {
                return Err(Error::Tampered {
                    entry: p.name(),
                    why: format!("size {size}, its index says {}", p.size),
                });
            }
        }
        if parts.offset != img.total {
            return Err(Error::Corrupt(format!(
                "the parts of {file} add up to {} bytes, their headers to {}",
                parts.offset, img.total
            )));
        }
    }
    if let Some(img) = images.iter().find(|i| !signed.contains(&*i.name)) {
        return Err(part_unlisted(&img.name, 0));
    }
    Ok(())
}

/// A range of the archive to copy out and hash: `size` bytes at `at`, named `name` in
/// errors, each piece handed to `put` with its offset from `at`.
struct Copy<'a> {
    at: u64,
    skip: u64,
    size: u64,
    name: String,
    put: Put<'a>,
}

/// Where [`Copy`] puts each piece: given the piece and its offset in the range.
type Put<'a> = Box<dyn FnMut(&[u8], u64) -> Result<(), Error> + 'a>;

/// Copies one or two ranges of `archive` (see [`Copy`]), a piece of each at a time through
/// `bufs`, hashing them side by side (archive::sha256x2); their sha256s (that of no bytes
/// for a None).
fn copy_hashed(
    archive: &Pages,
    mut copies: [Option<Copy<'_>>; 2],
    bufs: &mut [Vec<u8>; 2],
    un: &mut Option<Unpacker>,
) -> Result<[[u8; 32]; 2], Error> {
    let mut lanes = [Lane::new(), Lane::new()];
    let mut done = [0u64; 2];
    // A zstd archive's part is read whole (archive::zhead bounds its size).
    if archive.head_end.is_some() {
        for (k, c) in copies.iter().enumerate() {
            if let Some(c) = c
                && (bufs[k].len() as u64) < c.size
            {
                bufs[k].resize(c.size as usize, 0);
            }
        }
    }
    loop {
        let mut n = [0usize; 2];
        for (k, c) in copies.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            n[k] = (bufs[k].len() as u64).min(c.size - done[k]) as usize;
            if n[k] == 0 {
                continue;
            }
            let piece = &mut bufs[k][..n[k]];
            archive.read(c.at, c.skip, done[k], piece, un, &|| c.name.clone())?;
            (c.put)(piece, done[k])?;
            done[k] += n[k] as u64;
        }
        if n == [0, 0] {
            break;
        }
        let [a, b] = &mut lanes;
        update_pair(a, &bufs[0][..n[0]], b, &bufs[1][..n[1]]);
    }
    Ok(lanes.map(|l| l.finalize()))
}

/// Two buffers of CHUNK for [`copy_hashed`].
fn copy_buffers() -> [Vec<u8>; 2] {
    [vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]]
}

/// An error writing the staged file `out`.
fn write_error(out: &(PathBuf, File)) -> impl Fn(std::io::Error) -> Error + '_ {
    |source| Error::Write {
        path: out.0.clone(),
        source,
    }
}

/// Reads `archive` (of `layout`, see [`layout`]) into `stage` (fresh, empty, on a filesystem
/// the gate works on) and starts feeding its pages; see the module doc.
/// `progress` is advanced by every byte of the pages as the feed writes them.
pub fn unpack(
    archive: &Path,
    layout: Layout,
    stage: &mut Stage,
    trust: Trust,
    progress: Arc<Progress>,
) -> Result<(Unpacked, Feed), Error> {
    let file = File::open(archive).map_err(|e| Error::Corrupt(format!("open: {e}")))?;
    stage.create_dir("checkpoint")?;
    let (checked, mut feed) = match layout {
        Layout::Plain => unpack_plain(file, stage, trust, progress)?,
        Layout::Zstd(mark) => unpack_zstd(file, mark, stage, trust, progress)?,
    };
    if !feed.fed_while_restoring() {
        // Nothing would hold CRIU's reads: every page in place and verified before it starts.
        feed.finish()?;
    }
    let (manifest, signer, trusted_as) = checked;
    let unpacked = Unpacked {
        dir: stage.dir().to_path_buf(),
        manifest,
        signer,
        trusted_as,
    };
    Ok((unpacked, feed))
}

/// The manifest, its signer and the name it is trusted under (reader::check_signer).
type Checked = (
    crate::archive::manifest::Manifest,
    crate::identity::Fingerprint,
    Option<String>,
);

fn unpack_plain(
    file: File,
    stage: &mut Stage,
    trust: Trust,
    progress: Arc<Progress>,
) -> Result<(Checked, Feed), Error> {
    let mut admission = Admission::default();
    // Whole entries: name, staged file, data offset, size.
    let mut wholes: Vec<(String, String, u64, u64)> = vec![];
    // The pages images, in archive order.
    let mut images: Vec<Image> = vec![];
    let mut signed = None;
    let mut manifest_end = 0;
    let mut tar = tar::Archive::new(&file);
    let entries = tar
        .entries_with_seek()
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(e, "reading the next entry"))?;
        let name = entry_name(&entry)?;
        let (at, size) = (entry.raw_file_position(), entry.size());
        match admission.admit(&name, entry.header().entry_type())? {
            Admitted::Skip => {}
            Admitted::Manifest => {
                signed = Some(read_manifest(&mut entry, size)?);
                manifest_end = at + size.div_ceil(512) * 512;
            }
            Admitted::File { file, part: None } => wholes.push((name, file, at, size)),
            // Admission keeps an image's parts together and in order.
            Admitted::File {
                file,
                part: Some(0),
            } => images.push(Image {
                name: Arc::from(file.as_str()),
                file: images.len(),
                first_at: at,
                end: at + size.div_ceil(512) * 512,
                count: 1,
                total: size,
                head: None,
            }),
            Admitted::File { part: Some(_), .. } => {
                let img = images.last_mut().expect("part 0 came first");
                // Found by its index later, each part must be where the one before ends:
                // one 512-byte header after its data. ferry writes them so.
                if entry.raw_header_position() != img.end || at != img.end + 512 {
                    return Err(Error::BadEntry {
                        entry: name,
                        why: "not right after the part before it, where ferry writes it".into(),
                    });
                }
                img.end = at + size.div_ceil(512) * 512;
                img.count += 1;
                img.total += size;
            }
        }
    }
    let len = file
        .metadata()
        .map_err(|e| Error::Corrupt(e.to_string()))?
        .len();
    let signed = complete(signed, manifest_end, len)?;
    let (manifest, signer, trusted_as) = check_signer(signed, trust)?;
    let sizes: BTreeMap<String, u64> = wholes.iter().map(|w| (w.0.clone(), w.3)).collect();
    let listed = check_listing(&manifest, &sizes)?;
    let mut bufs = copy_buffers();
    let pages = Pages {
        file: Arc::new(file),
        head_end: None,
    };
    for (name, staged, at, size) in &wholes {
        stage.create(staged)?;
        let whole = Copy {
            at: *at,
            skip: 0,
            size: *size,
            name: name.clone(),
            put: Box::new(|b, _| Ok(stage.write(b)?)),
        };
        let [sha, _] = copy_hashed(&pages, [Some(whole), None], &mut bufs, &mut None)?;
        check_digest(name, &sha, &listed[name.as_str()].sha256)?;
    }
    // The indexes are staged and verified by now.
    let names: Vec<String> = images.iter().map(|i| i.name.to_string()).collect();
    let signed = signed_parts(&manifest, stage.dir(), names.iter())?;
    check_images(&pages, &images, &signed, stage.dir())?;
    let feed = feed_in_place(stage, pages, images, progress)?;
    Ok(((manifest, signer, trusted_as), feed))
}

/// Starts feeding the parts of `images`, each read where it is in `pages` (their indexes
/// staged and checked against them): the feed stages those CRIU reads, the copy-in
/// (archive::uffd) copies the others straight into the restored tasks where it can.
fn feed_in_place(
    stage: &mut Stage,
    pages: Pages,
    images: Vec<Image>,
    progress: Arc<Progress>,
) -> Result<Feed, Error> {
    let files: Vec<(String, u64)> = images
        .iter()
        .map(|i| (i.name.to_string(), i.total))
        .collect();
    let (outs, gate, plan) = gated_files(stage, &files, true)?;
    let plan = plan.map(Arc::new);
    let done = Arc::new(FeedDone::default());
    let dir = stage.dir().to_path_buf();
    let copy_in = match &plan {
        Some(plan) => {
            // Each file's parts with lazy bytes, copied straight in (archive::uffd); the
            // feed stages those that have other bytes too.
            let mut items = vec![];
            for img in &images {
                let plan = plan.clone();
                let parts = Parts::of(img, &dir, &pages)?.filter_map(move |p| {
                    let p = match p {
                        Ok(p) => p,
                        Err(e) => return Some(Err(e)),
                    };
                    match plan.classify(p.file, p.offset, p.size) {
                        Share::Read => None,
                        s => Some(Ok(Item {
                            part: p,
                            staged: s == Share::Both,
                        })),
                    }
                });
                items.push((img.file, Box::new(parts) as crate::archive::uffd::Items));
            }
            Some(start_copy_in(
                stage,
                plan.clone(),
                items,
                &pages,
                &outs,
                &progress,
                &done,
            )?)
        }
        None => None,
    };
    let mut feed = Feed::start(gate.clone(), move |stop| {
        let to = Target {
            outs: &outs,
            gate: &gate,
            progress: &progress,
        };
        let r = fill(&pages, &images, &dir, plan.as_deref(), to, stop);
        done.set(r.is_ok());
        r
    });
    feed.copy_in = copy_in;
    Ok(feed)
}

/// Starts the copy-in (archive::uffd) of `items` for `plan`, listening in the stage (CRIU's
/// work directory); it copies a staged item once the feed says `done`.
fn start_copy_in(
    stage: &Stage,
    plan: Arc<Plan>,
    items: Vec<(usize, crate::archive::uffd::Items)>,
    pages: &Pages,
    outs: &Outs,
    progress: &Arc<Progress>,
    done: &Arc<FeedDone>,
) -> Result<Running, Error> {
    let listener = crate::archive::uffd::listen(stage.dir()).map_err(|e| Error::Write {
        path: stage.dir().join(crate::archive::uffd::SOCKET),
        source: e,
    })?;
    let mut sources = Sources {
        pages: Some(pages.clone()),
        punch: true,
        staged: vec![],
        feed: done.clone(),
        progress: progress.clone(),
    };
    for (path, f) in outs {
        let f = f.try_clone().map_err(|e| Error::Write {
            path: path.clone(),
            source: e,
        })?;
        sources.staged.push((path.clone(), f));
    }
    Ok(Running::start(listener, plan, items, sources))
}

/// For an archive verified whole onto `stage` before CRIU starts (a pipe, gzip,
/// `--verify-first`): the restored tasks' lazy memory copied in from the stage
/// (archive::uffd), every part of it verified already, rather than read by CRIU, when the
/// kernel and the images allow it. Each byte copied is punched out of the stage behind it,
/// as CRIU's reads do with `auto_dedup`. None: CRIU reads every page.
pub fn copy_in_staged(stage: &Stage, progress: Arc<Progress>) -> Result<Option<Feed>, Error> {
    copy_in_from(&stage.dir().join("checkpoint"), stage.dir(), true, progress)
}

/// The restored tasks' lazy memory copied in from the pages files of the CRIU images in
/// `images` (archive::uffd), listening in `work` (CRIU's work directory), and punched out
/// of those files behind it if `punch`. None when the kernel or the images do not allow it.
pub fn copy_in_from(
    images: &Path,
    work: &Path,
    punch: bool,
    progress: Arc<Progress>,
) -> Result<Option<Feed>, Error> {
    let paths = crate::archive::criu_images::pages_files(images)
        .map_err(|e| Error::Corrupt(format!("reading {}: {e}", images.display())))?;
    let Some(plan) = Plan::make(images, &paths) else {
        return Ok(None);
    };
    let plan = Arc::new(plan);
    let mut staged = vec![];
    let mut items = vec![];
    for (file, path) in paths.into_iter().enumerate() {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Write {
                path: path.clone(),
                source: e,
            })?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let image: Arc<str> = Arc::from(
            format!(
                "checkpoint/{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            )
            .as_str(),
        );
        let plan = plan.clone();
        // The file in pieces the size of a part: the copy-in reads and copies piece by
        // piece, and a piece CRIU reads all of is left to it.
        let pieces = (0..len.div_ceil(CHUNK)).filter_map(move |k| {
            let (offset, size) = (k * CHUNK, CHUNK.min(len - k * CHUNK));
            (plan.classify(file, offset, size) != Share::Read).then(|| {
                Ok(Item {
                    part: Part {
                        image: image.clone(),
                        file,
                        n: k as usize,
                        at: 0,
                        skip: 0,
                        offset,
                        size,
                        sha256: [0; 32],
                    },
                    staged: true,
                })
            })
        });
        items.push((file, Box::new(pieces) as crate::archive::uffd::Items));
        staged.push((path, f));
    }
    // Only a way to be faster: without its socket, CRIU reads the pages itself.
    let listener = match crate::archive::uffd::listen(work) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(
                "no copy-in: the lazy-pages socket in {}: {e}",
                work.display()
            );
            return Ok(None);
        }
    };
    let done = Arc::new(FeedDone::default());
    done.set(true);
    let sources = Sources {
        pages: None,
        punch,
        staged,
        feed: done,
        progress,
    };
    Ok(Some(Feed {
        stop: Arc::new(AtomicBool::new(false)),
        worker: None,
        outcome: None,
        gate: None,
        started: Instant::now(),
        took: None,
        copy_in: Some(Running::start(listener, plan, items, sources)),
    }))
}

/// Staged files open for writing, with their paths (for errors).
type Outs = Vec<(PathBuf, File)>;

/// Makes the pages files empty on the stage, opened for writing (and reading back, for the
/// copy-in) before the gate marks them (reads and writes through a file opened earlier are
/// never held), and gates them. With `copy_in`, plans which pages are copied straight into
/// the restored tasks (archive::uffd) when the kernel and the images allow it; CRIU then
/// reads only the others, and nothing is prefaulted.
fn gated_files(
    stage: &Stage,
    files: &[(String, u64)],
    copy_in: bool,
) -> Result<(Outs, Arc<Gate>, Option<Plan>), Error> {
    let mut outs = vec![];
    let mut gated = vec![];
    for (staged, size) in files {
        let path = stage.dir().join(staged);
        let out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::Write {
                path: path.clone(),
                source: e,
            })?;
        outs.push((path.clone(), out));
        gated.push((path, *size));
    }
    // The small images are staged and verified by now: the restored tasks' mappings and
    // pagemaps say where each read of the pages will land.
    let paths: Vec<PathBuf> = gated.iter().map(|(p, _)| p.clone()).collect();
    let images = stage.dir().join("checkpoint");
    let plan = if copy_in {
        Plan::make(&images, &paths)
    } else {
        None
    };
    let prefault = match plan {
        Some(_) => None,
        None => crate::archive::prefault::Prefault::plan(&images, &paths).map(Arc::new),
    };
    let gate = Gate::with_prefault(&gated, prefault).map_err(|e| Error::Write {
        path: stage.dir().to_path_buf(),
        source: e,
    })?;
    // Without a gate to hold CRIU's reads everything is in place before CRIU starts, and a
    // copy-in could not begin before CRIU does.
    let plan = plan.filter(|_| gate.holds());
    Ok((outs, Arc::new(gate), plan))
}

/// The pages being verified and written while CRIU restores. Dropping it stops the feed
/// and refuses whatever CRIU still waits for.
pub struct Feed {
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<Result<(), Error>>>,
    outcome: Option<Result<(), Error>>,
    gate: Option<Arc<Gate>>,
    started: Instant,
    took: Option<std::time::Duration>,
    /// The pages copied straight into the restored tasks (archive::uffd), when planned.
    copy_in: Option<Running>,
}

impl Feed {
    /// Runs `fill` (given the stop flag) on a thread of its own; a failure refuses CRIU's
    /// waiting reads.
    fn start(
        gate: Arc<Gate>,
        fill: impl FnOnce(&AtomicBool) -> Result<(), Error> + Send + 'static,
    ) -> Feed {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (stop, gate) = (stop.clone(), gate.clone());
            std::thread::spawn(move || {
                let r = fill(&stop);
                if r.is_err() {
                    gate.fail();
                }
                r
            })
        };
        Feed {
            stop,
            worker: Some(worker),
            outcome: None,
            gate: Some(gate),
            started: Instant::now(),
            took: None,
            copy_in: None,
        }
    }

    /// Bytes of the restored tasks' memory faulted in ahead of CRIU's reads
    /// (archive::prefault).
    pub fn prefaulted(&self) -> u64 {
        self.gate.as_ref().map(|g| g.prefaulted()).unwrap_or(0)
    }

    /// Bytes copied straight into the restored tasks (archive::uffd).
    pub fn copied_in(&self) -> u64 {
        self.copy_in.as_ref().map(|c| c.copied()).unwrap_or(0)
    }

    /// Whether some pages are copied straight into the restored tasks, CRIU restoring with
    /// `lazy_pages` and ferry its lazy-pages server (archive::uffd).
    pub fn copies_in(&self) -> bool {
        self.copy_in.is_some()
    }

    /// Whether the pages are still being fed, CRIU's reads held until they are ready
    /// (false when no gate could hold them, and they were all verified in unpack).
    pub fn fed_while_restoring(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| g.holds())
    }

    /// Waits until every part is verified and written (or copied in); the first part that
    /// failed, as a message (for CRIU's post-restore notification, which then aborts the
    /// restore and kills what it restored).
    pub fn wait(&mut self) -> Result<(), String> {
        if self.outcome.is_none() {
            // No worker: the pages were all verified and staged before CRIU started, and
            // only a copy-in runs ([`copy_in_staged`]).
            let r = match self.worker.take() {
                Some(w) => w
                    .join()
                    .unwrap_or_else(|_| Err(Error::Corrupt("the pages feed panicked".into()))),
                None => Ok(()),
            };
            // The copy-in ends with the feed (it copies staged parts once the feed has
            // written them) or fails on its own.
            let copied = match &mut self.copy_in {
                Some(c) => c.wait_copied(),
                None => Ok(()),
            };
            self.took = Some(self.started.elapsed());
            self.outcome = Some(r.and(copied));
        }
        match &self.outcome {
            Some(Err(e)) => Err(e.to_string()),
            _ => {
                // All verified: nothing to hold back from here on (see Gate::release).
                if let Some(g) = &self.gate {
                    g.release();
                }
                Ok(())
            }
        }
    }

    /// For CRIU's pre-resume notification: [`wait`](Self::wait), then, with a copy-in,
    /// until CRIU has finished handing over and every userfaultfd is closed.
    pub fn ready_to_resume(&mut self) -> Result<(), String> {
        self.wait()?;
        match &mut self.copy_in {
            Some(c) => c.wait(),
            None => Ok(()),
        }
    }

    /// [`wait`](Self::wait), then ungates the files; how long the feed took.
    pub fn finish(&mut self) -> Result<std::time::Duration, Error> {
        // CRIU has ended by now, and a copy-in still waiting for it never will.
        if let Some(c) = &mut self.copy_in {
            c.abandon();
        }
        if let Err(e) = self.ready_to_resume()
            && !matches!(self.outcome, Some(Err(_)))
        {
            self.outcome = Some(Err(Error::Corrupt(e)));
        }
        self.gate = None;
        match self.outcome.take() {
            Some(Err(e)) => Err(e),
            _ => Ok(self.took.unwrap_or_default()),
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Where a feed's parts go: the staged files, their gate, the progress bar.
struct Target<'a> {
    outs: &'a [(PathBuf, File)],
    gate: &'a Gate,
    progress: &'a Progress,
}

/// Copies one or two parts to their staged files and checks their digests.
fn copy_parts(
    archive: &Pages,
    pair: [Option<&Part>; 2],
    outs: &[(PathBuf, File)],
    bufs: &mut [Vec<u8>; 2],
    un: &mut Option<Unpacker>,
) -> Result<(), Error> {
    let copies = pair.map(|q| {
        q.map(|p| {
            let out = &outs[p.file];
            Copy {
                at: p.at,
                skip: p.skip,
                size: p.size,
                name: p.name(),
                put: Box::new(move |b, off| {
                    out.1
                        .write_all_at(b, p.offset + off)
                        .map_err(write_error(out))
                }),
            }
        })
    });
    let shas = copy_hashed(archive, copies, bufs, un)?;
    for (sha256, q) in shas.into_iter().zip(pair) {
        if let Some(p) = q {
            let got = PartRecord {
                size: p.size,
                sha256,
            };
            check_part(&p.image, p.n, &got, &p.record())?;
        }
    }
    Ok(())
}

/// The parts of every image in archive order, made as the feed's threads take them, with
/// how far each file has matched.
struct Queue {
    images: std::vec::IntoIter<Parts>,
    current: Option<Parts>,
    matched: Matched,
}

impl Queue {
    fn next(&mut self) -> Result<Option<Part>, Error> {
        loop {
            if let Some(parts) = &mut self.current
                && let Some(p) = parts.next()
            {
                return p.map(Some);
            }
            match self.images.next() {
                Some(parts) => self.current = Some(parts),
                None => return Ok(None),
            }
        }
    }
}

/// Verifies and writes the parts of `images` (their indexes staged in `dir`) on every
/// core, but those copied straight in (archive::uffd, by `plan`), and opens the gate over
/// each file's prefix of matched parts.
fn fill(
    archive: &Pages,
    images: &[Image],
    dir: &Path,
    plan: Option<&Plan>,
    to: Target,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let failed = AtomicBool::new(false);
    let mut parts = vec![];
    for img in images {
        parts.push(Parts::of(img, dir, archive)?);
    }
    let queue = Mutex::new(Queue {
        images: parts.into_iter(),
        current: None,
        matched: Matched::new(images.iter().map(|i| i.count as usize)),
    });
    // The next two parts the feed writes. A part copied straight in is never read by
    // CRIU: its range of the staged file stays a hole the gate may let CRIU past.
    let take = || -> Result<[Option<Part>; 2], Error> {
        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut pair = [None, None];
        let mut k = 0;
        while k < 2 {
            let Some(p) = q.next()? else { break };
            if plan.is_some_and(|plan| plan.classify(p.file, p.offset, p.size) == Share::Lazy) {
                q.matched.matched(p.file, p.n, p.offset + p.size, to.gate);
                continue;
            }
            pair[k] = Some(p);
            k += 1;
        }
        Ok(pair)
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4);
    let work = || -> Result<(), Error> {
        let mut bufs = copy_buffers();
        let mut un = None;
        let fail = |e: Error| {
            failed.store(true, Ordering::Relaxed);
            to.gate.fail();
            Err(e)
        };
        loop {
            if stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            if let Err(e) = Error::if_interrupted() {
                return fail(e);
            }
            // Two parts at a time: their digests are computed side by side (sha256x2).
            let pair = match take() {
                Ok([None, _]) => return Ok(()),
                Ok(pair) => pair,
                Err(e) => return fail(e),
            };
            let refs = [pair[0].as_ref(), pair[1].as_ref()];
            if let Err(e) = copy_parts(archive, refs, to.outs, &mut bufs, &mut un) {
                return fail(e);
            }
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            for p in pair.iter().flatten() {
                to.progress.inc(p.size);
                q.matched.matched(p.file, p.n, p.offset + p.size, to.gate);
            }
        }
    };
    let results: Vec<Result<(), Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Corrupt("a pages feed thread panicked".into())))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    if stop.load(Ordering::Relaxed) {
        return Err(stopped());
    }
    Ok(())
}

fn unpack_zstd(
    file: File,
    mark: TailMark,
    stage: &mut Stage,
    trust: Trust,
    progress: Arc<Progress>,
) -> Result<(Checked, Feed), Error> {
    let file = Arc::new(file);
    let len = file
        .metadata()
        .map_err(|e| Error::Corrupt(e.to_string()))?
        .len();
    let tail = Region {
        file: file.clone(),
        pos: mark.frame_offset,
        end: len - TAIL_MARK_LEN,
    };
    let tail = zstd::stream::read::Decoder::new(tail).map_err(|e| Error::Corrupt(e.to_string()))?;
    let mut staged = stage_stream(tail, stage, &crate::progress::Progress::hidden(), None)?;
    if let Some(p) = staged.parts.keys().next() {
        return Err(Error::BadEntry {
            entry: crate::archive::pages::part_name(p, 0),
            why: "a pages part after the archive's tail mark (the mark at the end of the \
                  file may be damaged: --verify-first reads the archive in order)"
                .into(),
        });
    }
    let (manifest, signer, trusted_as) = check_signer(staged.take_manifest()?, trust)?;
    // Every entry the tail does not hold must be a pages part, which the feed brings.
    let sizes: BTreeMap<String, u64> = staged
        .entries
        .iter()
        .map(|(k, v)| (k.clone(), v.1))
        .collect();
    let listed = check_listing(&manifest, &sizes)?;
    for (name, (sha, _)) in &staged.entries {
        check_digest(name, sha, &listed[name.as_str()].sha256)?;
    }
    // Each index is staged and verified by now.
    let signed = signed_parts(&manifest, stage.dir(), std::iter::empty())?;
    // Each part read where it is, as in an uncompressed archive, when the head is laid out
    // as ferry writes it.
    match walk_head(&file, mark, &signed, stage.dir()) {
        Ok(images) => {
            let pages = Pages {
                file,
                head_end: Some(mark.frame_offset),
            };
            let feed = feed_in_place(stage, pages, images, progress)?;
            return Ok(((manifest, signer, trusted_as), feed));
        }
        Err(why) => tracing::debug!("reading the archive's pages in order: {why}"),
    }
    // The parts each index lists, read as they come; and the size each file adds up to.
    let mut expected = vec![];
    let mut files = vec![];
    for f in signed {
        let mut total = 0;
        for r in signed_records(stage.dir(), &f)? {
            total += r
                .map_err(|e| Error::Corrupt(format!("reading the index of {f}: {e}")))?
                .size;
        }
        expected.push(Expected {
            image: Arc::from(f.as_str()),
            records: signed_records(stage.dir(), &f)?,
        });
        files.push((f, total));
    }
    // Read in order, every part goes through the stage, and CRIU reads it from there with
    // the prefault: copying the lazy parts in from the stage as the feed verifies them was
    // no faster (docs/benchmarks.md, "Tried").
    let (outs, gate, _) = gated_files(stage, &files, false)?;
    let head = Region {
        file,
        pos: 0,
        end: mark.frame_offset,
    };
    let feed = Feed::start(gate.clone(), move |stop| {
        let head =
            zstd::stream::read::Decoder::new(head).map_err(|e| Error::Corrupt(e.to_string()))?;
        let to = Target {
            outs: &outs,
            gate: &gate,
            progress: &progress,
        };
        // Nothing read from the indexes yet: what is left is every part.
        let matched = Matched::new(expected.iter().map(|e| e.records.left() as usize));
        fill_stream(head, mark.tar_offset, expected, matched, to, stop)
    });
    Ok(((manifest, signer, trusted_as), feed))
}

/// The pages images of a zstd archive's head, found in place (archive::zhead): its tar
/// headers read one by one, each part's frames passed over. The head must hold exactly the
/// parts of the images in `signed` (each index staged in `stage`), together and in order,
/// each the size its index gives, and end where the tail mark says. Anything else, and a
/// head laid out otherwise than ferry writes it, is said in the error: the caller then
/// reads the head in order, which names what is wrong.
fn walk_head(
    file: &File,
    mark: TailMark,
    signed: &std::collections::BTreeSet<String>,
    stage: &Path,
) -> Result<Vec<Image>, crate::archive::zhead::Why> {
    let mut place = Place::start(mark.frame_offset);
    let mut un = Unpacker::new().map_err(|e| e.to_string())?;
    let mut admission = Admission::default();
    let mut images: Vec<Image> = vec![];
    let mut records: Option<IndexCursor> = None;
    let mut tar_pos = 0u64;
    // The entry before this one was a pax header.
    let mut pax = false;
    let ended = |records: &Option<IndexCursor>, images: &[Image]| match (records, images.last()) {
        (Some(r), Some(img)) if r.left() > 0 => Err(format!("{} has parts missing", img.name)),
        _ => Ok(()),
    };
    while tar_pos < mark.tar_offset {
        let header_at = place.clone();
        let mut h = [0u8; 512];
        place.read(file, &mut h, &mut un)?;
        if !crate::archive::reader::starts_a_tar(&h) {
            return Err(format!("no tar header at {tar_pos}"));
        }
        let header = tar::Header::from_byte_slice(&h);
        let name = std::str::from_utf8(&header.path_bytes())
            .map_err(|_| "a name that is not UTF-8".to_string())?
            .to_string();
        let size = header.entry_size().map_err(|e| e.to_string())?;
        if size > crate::archive::zhead::MAX_FRAME {
            return Err(format!("{name} is {size} bytes"));
        }
        let padded = size.div_ceil(512) * 512;
        if header.entry_type() == tar::EntryType::XHeader {
            // The writer's announcement (a pax comment, archive::writer), on the first entry.
            // Records that would change the next entry (its name, its size) are not walked.
            let mut records = vec![0u8; size as usize];
            place.read(file, &mut records, &mut un)?;
            for r in tar::PaxExtensions::new(&records) {
                let r = r.map_err(|e| e.to_string())?;
                if r.key_bytes() != b"comment" {
                    return Err("a pax record other than a comment".into());
                }
            }
            place.advance(file, padded - size)?;
            tar_pos += 512 + padded;
            pax = true;
            continue;
        }
        match admission.admit(&name, header.entry_type()) {
            Ok(Admitted::Skip) if size == 0 => {}
            Ok(Admitted::File {
                file: image,
                part: Some(n),
            }) => {
                // The parts are found later 512 bytes apart: only part 0 may have a pax
                // header before it.
                if n > 0 && pax {
                    return Err(format!("a pax header before {name}"));
                }
                if n == 0 {
                    ended(&records, &images)?;
                    if !signed.contains(&image) {
                        return Err(format!("{image} has no index"));
                    }
                    records = Some(signed_records(stage, &image).map_err(|e| e.to_string())?);
                    images.push(Image {
                        name: Arc::from(image.as_str()),
                        file: images.len(),
                        first_at: 0,
                        end: 0,
                        count: 0,
                        total: 0,
                        head: Some(header_at),
                    });
                }
                let want = match records.as_mut().and_then(|r| r.next()) {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err(format!("{name} is not in its index")),
                };
                if want.size != size {
                    return Err(format!(
                        "{name} is {size} bytes, its index says {}",
                        want.size
                    ));
                }
                let img = images.last_mut().expect("part 0 came first");
                img.count += 1;
                img.total += size;
            }
            Ok(_) => return Err(format!("{name} is not a pages part")),
            Err(e) => return Err(e.to_string()),
        }
        place.advance(file, padded)?;
        tar_pos += 512 + padded;
        pax = false;
    }
    ended(&records, &images)?;
    if tar_pos != mark.tar_offset || !place.at_end() {
        return Err("the pages end elsewhere than the tail mark says".into());
    }
    // Every index with parts has its image.
    for f in signed {
        if !images.iter().any(|i| *i.name == **f)
            && signed_records(stage, f).map_err(|e| e.to_string())?.left() > 0
        {
            return Err(format!("{f} has no parts"));
        }
    }
    Ok(images)
}

/// A pages image's parts as its index lists them, read as they come.
struct Expected {
    image: Arc<str>,
    records: IndexCursor,
}

/// Feeds the parts of a zstd archive's head, decompressed in order on this thread and
/// hashed on others; each file's gate opens over its prefix of matched parts. The head must
/// hold exactly the `expected` parts (each image's, as its index lists them) and end at
/// the tail mark's `tar_len`.
fn fill_stream(
    head: impl Read,
    tar_len: u64,
    mut expected: Vec<Expected>,
    mut matched: Matched,
    to: Target,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let Target {
        outs,
        gate,
        progress,
    } = to;
    let consumed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tar = tar::Archive::new(crate::archive::reader::Counted {
        inner: head,
        n: consumed.clone(),
    });
    let mut admission = Admission::default();
    let mut hashers = Hashers::new(None);
    // Each hashing job not yet done: its part's file, number, record and end in its file.
    type Job = (usize, usize, PartRecord, u64);
    let mut jobs: std::collections::HashMap<usize, Job> = Default::default();
    // Where each file's next part goes in it.
    let mut offsets = vec![0u64; expected.len()];
    let images: Vec<Arc<str>> = expected.iter().map(|e| e.image.clone()).collect();
    let mut settle = |done: Vec<crate::archive::hashing::Done>,
                      jobs: &mut std::collections::HashMap<usize, Job>|
     -> Result<(), Error> {
        for (job, sha256, size) in done {
            let Some((f, n, want, end)) = jobs.remove(&job) else {
                continue;
            };
            check_part(&images[f], n, &PartRecord { size, sha256 }, &want)?;
            matched.matched(f, n, end, gate);
        }
        Ok(())
    };
    let entries = tar.entries().map_err(|e| Error::Corrupt(e.to_string()))?;
    for entry in entries {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        Error::if_interrupted()?;
        let mut entry = entry.map_err(|e| read_error(e, "reading the next entry"))?;
        let name = entry_name(&entry)?;
        let (file, n) = match admission.admit(&name, entry.header().entry_type())? {
            Admitted::Skip => continue,
            Admitted::File {
                file,
                part: Some(n),
            } => (file, n as usize),
            _ => {
                return Err(Error::BadEntry {
                    entry: name,
                    why: "only pages parts come before the archive's tail mark".into(),
                });
            }
        };
        let Some(f) = expected.iter().position(|e| *e.image == *file) else {
            return Err(Error::Tampered {
                entry: name,
                why: "a part of a pages image that has no index".into(),
            });
        };
        // Admission keeps an image's parts in order: part n is its index's next record.
        let want = match expected[f].records.next() {
            Some(r) => {
                r.map_err(|e| Error::Corrupt(format!("reading the index of {file}: {e}")))?
            }
            None => return Err(part_unlisted(&file, n)),
        };
        if entry.size() != want.size {
            return Err(Error::Tampered {
                entry: name,
                why: format!("size {}, its index says {}", entry.size(), want.size),
            });
        }
        let job = hashers.begin();
        jobs.insert(job, (f, n, want, offsets[f] + want.size));
        let out = &outs[f];
        let mut done = 0u64;
        while done < want.size {
            let mut buf = hashers.buffer();
            buf.resize(CHUNK.min(want.size - done) as usize, 0);
            entry
                .read_exact(&mut buf)
                .map_err(|err| read_error(err, &name))?;
            out.1
                .write_all_at(&buf, offsets[f] + done)
                .map_err(write_error(out))?;
            done += buf.len() as u64;
            progress.inc(buf.len() as u64);
            hashers
                .update_owned(buf)
                .map_err(|err| Error::Corrupt(err.to_string()))?;
        }
        offsets[f] += want.size;
        hashers
            .end()
            .map_err(|err| Error::Corrupt(err.to_string()))?;
        settle(hashers.take_done(), &mut jobs)?;
    }
    let rest = hashers
        .close()
        .map_err(|err| Error::Corrupt(err.to_string()))?;
    settle(rest, &mut jobs)?;
    if let Some((f, n)) = matched.first_unmatched() {
        return Err(part_missing(&images[f], n));
    }
    if consumed.load(Ordering::Relaxed) != tar_len {
        return Err(Error::Corrupt(
            "the pages end elsewhere than the archive's tail mark says".into(),
        ));
    }
    Ok(())
}

fn stopped() -> Error {
    Error::Corrupt("the restore stopped before its pages were read".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::frames::tests::random as noise;
    use crate::archive::reader::tests::manifest;
    use crate::archive::writer::{ArchiveWriter, Compression};
    use crate::identity::Identity;

    /// An archive of three pages parts (the last short) and one small image after them.
    fn archive(dir: &Path, c: Compression, id: &Identity) -> (PathBuf, Vec<Vec<u8>>) {
        let parts = vec![noise(1 << 20, 11), noise(1 << 20, 23), noise(300 << 10, 37)];
        let path = dir.join(format!("a-{c:?}.tar"));
        let mut w = ArchiveWriter::new(File::create(&path).unwrap(), c).unwrap();
        for (i, p) in parts.iter().enumerate() {
            w.add_part("checkpoint/pages-1.img", i as u32, vec![p.clone()])
                .unwrap();
        }
        w.mark_tail().unwrap();
        w.add_bytes("checkpoint/inventory.img", b"inventory")
            .unwrap();
        w.finish(manifest(), id).unwrap();
        (path, parts)
    }

    fn hidden() -> Arc<Progress> {
        Arc::new(Progress::hidden())
    }

    /// Reads the whole pages file as CRIU would, from another opener than the feed.
    fn read_pages(stage: &Path, len: usize) -> std::thread::JoinHandle<std::io::Result<Vec<u8>>> {
        let path = stage.join("checkpoint/pages-1.img");
        std::thread::spawn(move || {
            let f = File::open(path)?;
            let mut b = vec![0u8; len];
            f.read_exact_at(&mut b, 0)?;
            Ok(b)
        })
    }

    /// Where the kernel cannot hold reads (tmpfs has no pre-content hook; a host out of
    /// fanotify groups is the same), unpack returns only once every page is in place and
    /// verified, and a bad one is its error.
    #[test]
    fn without_a_gate_the_pages_are_verified_before_unpack_returns() {
        let shm = tempfile::tempdir_in("/dev/shm").expect("a tmpdir in /dev/shm (a tmpfs)");
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(&d.path().join("id")).unwrap();
        let (path, parts) = archive(d.path(), Compression::None, &id);
        let mut stage = Stage::disk(&shm.path().join("good"), "test").unwrap();
        let (u, mut feed) =
            unpack(&path, Layout::Plain, &mut stage, Trust::AnySigner, hidden()).unwrap();
        // Already whole: read as soon as unpack returned, nothing held.
        assert_eq!(
            std::fs::read(u.dir.join("checkpoint/pages-1.img")).unwrap(),
            parts.concat()
        );
        feed.finish().unwrap();

        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(64)
            .position(|w| w == &parts[1][7..71])
            .unwrap();
        bytes[at] ^= 1;
        let bad = d.path().join("bad.tar");
        std::fs::write(&bad, &bytes).unwrap();
        let mut stage = Stage::disk(&shm.path().join("bad"), "test").unwrap();
        let e = unpack(&bad, Layout::Plain, &mut stage, Trust::AnySigner, hidden())
            .err()
            .unwrap();
        assert!(
            matches!(e, Error::Tampered { ref entry, .. } if entry == "checkpoint/pages-1.img.part1"),
            "{e}"
        );
    }

    /// The cases of reader::tests::index_cases, read by seeking (an uncompressed file):
    /// the parts found from their index, each checked against it, every disagreement
    /// refused naming the part, and a format 2 archive still read.
    #[test]
    fn pages_parts_found_and_checked_by_their_index() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(&d.path().join("id")).unwrap();
        let (parts, cases) = crate::archive::reader::tests::index_cases(&id);
        for (i, (what, bytes, want)) in cases.into_iter().enumerate() {
            let path = d.path().join(format!("case{i}.tar"));
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(layout(&path), Some(Layout::Plain));
            let mut stage = Stage::disk(&d.path().join(format!("stage{i}")), "test").unwrap();
            let got = unpack(&path, Layout::Plain, &mut stage, Trust::AnySigner, hidden())
                .and_then(|(u, mut feed)| feed.finish().map(|_| u));
            crate::archive::reader::tests::check_case(what, got, want, &parts);
        }
    }

    /// A zstd archive of format 2 (its parts listed in the manifest, no index), as ferry
    /// wrote them until 2026-11-29: read from its tail mark and fed all the same.
    #[test]
    fn a_format_2_zstd_archive_is_fed_from_its_manifest() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(&d.path().join("id")).unwrap();
        let parts = [noise(1 << 20, 5), noise(70_000, 6)];
        let path = d.path().join("old.tar.zst");
        let mut w = ArchiveWriter::new(File::create(&path).unwrap(), Compression::Zstd).unwrap();
        // Whole entries, listed one by one: what format 2 was.
        for (i, p) in parts.iter().enumerate() {
            w.add_chunks(&format!("checkpoint/pages-1.img.part{i}"), vec![p.clone()])
                .unwrap();
        }
        w.mark_tail().unwrap();
        w.add_bytes("checkpoint/inventory.img", b"inventory")
            .unwrap();
        let mut m = manifest();
        m.format = 2;
        w.finish(m, &id).unwrap();
        let layout = layout(&path).expect("a zstd archive with a tail mark");
        let mut stage = Stage::disk(&d.path().join("stage"), "test").unwrap();
        let (u, mut feed) = unpack(&path, layout, &mut stage, Trust::AnySigner, hidden()).unwrap();
        feed.finish().unwrap();
        assert_eq!(
            std::fs::read(u.dir.join("checkpoint/pages-1.img")).unwrap(),
            parts.concat()
        );
        // The same, signed as format 3: its parts would need an index.
        let mut w = ArchiveWriter::new(File::create(&path).unwrap(), Compression::Zstd).unwrap();
        for (i, p) in parts.iter().enumerate() {
            w.add_chunks(&format!("checkpoint/pages-1.img.part{i}"), vec![p.clone()])
                .unwrap();
        }
        w.mark_tail().unwrap();
        w.finish(manifest(), &id).unwrap();
        let layout3 = super::layout(&path).expect("a zstd archive with a tail mark");
        let mut stage = Stage::disk(&d.path().join("stage3"), "test").unwrap();
        let e = unpack(&path, layout3, &mut stage, Trust::AnySigner, hidden())
            .err()
            .unwrap();
        assert!(e.to_string().contains("only its image's index"), "{e}");
    }

    /// A part whose header is not right after the part before it (here, after a pax
    /// record of its own) is refused by the scan: the feed finds each part from where the
    /// one before it ends.
    #[test]
    fn a_part_out_of_its_place_is_refused() {
        use crate::archive::manifest::SignedManifest;
        use crate::archive::pages::{encode_index, index_name};
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(&d.path().join("id")).unwrap();
        let parts = [noise(3000, 1), noise(3000, 2)];
        let index = encode_index(
            &parts
                .each_ref()
                .map(|p| crate::archive::reader::tests::record(p)),
        );
        let mut b = tar::Builder::new(Vec::new());
        let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            b.append_data(&mut h, name, data).unwrap();
        };
        add(&mut b, "checkpoint/pages-5.img.part0", &parts[0]);
        b.append_pax_extensions([("comment", &b"between"[..])])
            .unwrap();
        add(&mut b, "checkpoint/pages-5.img.part1", &parts[1]);
        let index_entry = format!("checkpoint/{}", index_name("pages-5.img"));
        add(&mut b, &index_entry, &index);
        let mut m = manifest();
        m.entries.push(crate::archive::manifest::Entry {
            name: index_entry,
            sha256: hex::encode(crate::archive::reader::tests::record(&index).sha256),
            size: index.len() as u64,
        });
        let signed = serde_json::to_vec(&SignedManifest::sign(&m, &id)).unwrap();
        add(&mut b, "ferry.manifest", &signed);
        let path = d.path().join("a.tar");
        std::fs::write(&path, b.into_inner().unwrap()).unwrap();
        // Read in order, the same archive is whole.
        let mut stage = Stage::disk(&d.path().join("stream"), "test").unwrap();
        let f = File::open(&path).unwrap();
        crate::archive::reader::unpack_with_progress(
            f,
            &mut stage,
            Trust::AnySigner,
            &Progress::hidden(),
            None,
        )
        .unwrap();
        let mut stage = Stage::disk(&d.path().join("stage"), "test").unwrap();
        let e = unpack(&path, Layout::Plain, &mut stage, Trust::AnySigner, hidden())
            .err()
            .unwrap();
        assert!(
            matches!(e, Error::BadEntry { ref entry, ref why } if entry == "checkpoint/pages-5.img.part1" && why.contains("right after")),
            "{e}"
        );
    }

    /// A zstd archive of [`archive`]'s parts, restored once onto a stage (which then holds
    /// its verified indexes): the archive, its parts, its tail mark and the stage.
    fn zstd_unpacked(dir: &Path) -> (PathBuf, Vec<Vec<u8>>, TailMark, Stage) {
        let id = Identity::load_or_create(&dir.join("id")).unwrap();
        let (path, parts) = archive(dir, Compression::Zstd, &id);
        let Some(Layout::Zstd(mark)) = layout(&path) else {
            panic!("no tail mark")
        };
        let mut stage = Stage::disk(&dir.join("stage"), "test").unwrap();
        let (_, mut feed) = unpack(
            &path,
            Layout::Zstd(mark),
            &mut stage,
            Trust::AnySigner,
            hidden(),
        )
        .unwrap();
        feed.finish().unwrap();
        (path, parts, mark, stage)
    }

    /// A zstd archive's head, as ferry writes it, is walked: each part found where it is
    /// and read there alone; a head that disagrees with the indexes is not.
    #[test]
    fn a_zstd_head_is_found_in_place() {
        let d = tempfile::tempdir().unwrap();
        let (path, parts, mark, stage) = zstd_unpacked(d.path());
        let image = "checkpoint/pages-1.img".to_string();
        let file = File::open(&path).unwrap();
        let signed = std::collections::BTreeSet::from([image.clone()]);
        let images = walk_head(&file, mark, &signed, stage.dir()).unwrap();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        assert_eq!(images.len(), 1);
        assert_eq!((images[0].count, images[0].total), (3, total as u64));
        let pages = Pages {
            file: Arc::new(file),
            head_end: Some(mark.frame_offset),
        };
        let mut un = None;
        let mut n = 0;
        for p in Parts::of(&images[0], stage.dir(), &pages).unwrap() {
            let p = p.unwrap();
            let mut buf = vec![0u8; p.size as usize];
            pages
                .read(p.at, p.skip, 0, &mut buf, &mut un, &|| p.name())
                .unwrap();
            assert!(buf == parts[p.n], "part {}", p.n);
            n += 1;
        }
        assert_eq!(n, 3);
        // Parts of an image without an index, or an index with parts the head lacks.
        let other = std::collections::BTreeSet::from(["checkpoint/pages-2.img".to_string()]);
        let e = walk_head(&pages.file, mark, &other, stage.dir())
            .err()
            .unwrap();
        assert!(e.contains("has no index"), "{e}");
        let short = TailMark {
            tar_offset: mark.tar_offset - 512,
            ..mark
        };
        assert!(walk_head(&pages.file, short, &signed, stage.dir()).is_err());
    }

    /// Bytes flipped anywhere in a zstd archive's head (frames, tar headers, data): the
    /// walk and the in-place reads of every part end in an answer, never a panic, and a
    /// part read whole is the part or is refused by its digest.
    #[test]
    fn flipped_bytes_anywhere_in_a_zstd_head_are_answered() {
        let d = tempfile::tempdir().unwrap();
        let (path, parts, mark, stage) = zstd_unpacked(d.path());
        let good = std::fs::read(&path).unwrap();
        let signed = std::collections::BTreeSet::from(["checkpoint/pages-1.img".to_string()]);
        let starts: Vec<usize> = parts
            .iter()
            .map(|p| good.windows(64).position(|w| w == &p[..64]).unwrap())
            .collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = good.clone();
            // Mostly the framing and headers near each part's start, sometimes anywhere.
            let at = if round % 3 == 0 {
                (x % mark.frame_offset) as usize
            } else {
                let data = starts[(x >> 8) as usize % parts.len()];
                data.saturating_sub(600) + (x >> 16) as usize % 620
            };
            bytes[at] ^= 1 << ((x >> 40) % 8);
            let bad = d.path().join("bad.tar.zst");
            std::fs::write(&bad, &bytes).unwrap();
            let file = File::open(&bad).unwrap();
            let Ok(images) = walk_head(&file, mark, &signed, stage.dir()) else {
                continue;
            };
            let pages = Pages {
                file: Arc::new(file),
                head_end: Some(mark.frame_offset),
            };
            let mut un = None;
            for img in &images {
                for p in Parts::of(img, stage.dir(), &pages).unwrap() {
                    let Ok(p) = p else { break };
                    let mut buf = vec![0u8; p.size as usize];
                    if pages
                        .read(p.at, p.skip, 0, &mut buf, &mut un, &|| p.name())
                        .is_ok()
                    {
                        // Wrong bytes read back must be what the digest refuses.
                        if buf != parts[p.n] {
                            let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&buf).into();
                            assert_ne!(sha, p.sha256, "round {round}, byte {at}");
                        }
                    }
                }
            }
        }
    }

    /// A flipped byte in the zstd framing of a part (its frame's magic, its size, a block
    /// header) rather than in its data: the walk, the in-place read or the in-order read
    /// that follows refuses it; no reader gets the pages.
    #[test]
    fn a_flipped_byte_in_a_parts_framing_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(&d.path().join("id")).unwrap();
        let (path, parts) = archive(d.path(), Compression::Zstd, &id);
        let good = std::fs::read(&path).unwrap();
        // Part 1 is a raw frame of its own: 9 bytes of header, then its first block's.
        let data = good.windows(64).position(|w| w == &parts[1][..64]).unwrap();
        let frame = data - 3 - 9;
        assert_eq!(&good[frame..frame + 4], &0xFD2F_B528u32.to_le_bytes());
        for (what, at, bit) in [
            ("the magic", frame, 1),
            ("the size", frame + 6, 1),
            ("the block's size", data - 3, 0x08),
            ("the block's type", data - 3, 0x04),
            ("the last block flag", data - 3, 0x01),
        ] {
            let mut bytes = good.clone();
            bytes[at] ^= bit;
            let bad = d.path().join("bad.tar.zst");
            std::fs::write(&bad, &bytes).unwrap();
            let mut stage = Stage::disk(&d.path().join(format!("s-{at}-{bit}")), "t").unwrap();
            let refused = match layout(&bad) {
                Some(l) => match unpack(&bad, l, &mut stage, Trust::AnySigner, hidden()) {
                    Ok((_, mut feed)) => {
                        let read = read_pages(stage.dir(), parts.concat().len()).join();
                        let fed = feed.finish();
                        assert!(
                            read.unwrap().is_err() || fed.is_ok(),
                            "{what}: a reader got pages the feed refused"
                        );
                        fed.is_err()
                    }
                    Err(_) => true,
                },
                None => true,
            };
            assert!(refused, "{what}: a damaged frame was restored");
        }
    }

    #[test]
    fn the_pages_come_whole_and_a_flipped_byte_is_refused_to_the_reader() {
        let d = tempfile::tempdir().unwrap();
        // Where the kernel cannot hold reads, unpack verifies everything itself (the test
        // above): the same reads then find every page in place, and a bad one is unpack's
        // error.
        let held = crate::archive::gate::supported(d.path());
        let id = Identity::load_or_create(&d.path().join("id")).unwrap();
        for c in [Compression::None, Compression::Zstd] {
            let (path, parts) = archive(d.path(), c, &id);
            let want = parts.concat();
            let layout = layout(&path).unwrap_or_else(|| panic!("{c:?}: no layout"));
            assert_eq!(layout == Layout::Plain, c == Compression::None);

            let mut stage = Stage::disk(&d.path().join(format!("good-{c:?}")), "test").unwrap();
            let (u, mut feed) =
                unpack(&path, layout, &mut stage, Trust::AnySigner, hidden()).unwrap();
            assert_eq!(
                std::fs::read(u.dir.join("checkpoint/inventory.img")).unwrap(),
                b"inventory"
            );
            let got = read_pages(stage.dir(), want.len()).join().unwrap().unwrap();
            assert!(
                got == want,
                "{c:?}: the pages read differ from the archive's"
            );
            feed.finish().unwrap();

            // A byte of the last part flipped where it is stored (raw: the data is noise).
            let mut bytes = std::fs::read(&path).unwrap();
            let needle = &parts[2][1000..1064];
            let at = bytes.windows(64).position(|w| w == needle).unwrap();
            bytes[at] ^= 1;
            let bad = d.path().join(format!("bad-{c:?}.tar"));
            std::fs::write(&bad, &bytes).unwrap();
            let mut stage = Stage::disk(&d.path().join(format!("bad-{c:?}")), "test").unwrap();
            let unpacked = unpack(&bad, layout, &mut stage, Trust::AnySigner, hidden());
            let e = if held {
                let (_, mut feed) = unpacked.unwrap();
                let read = read_pages(stage.dir(), want.len()).join().unwrap();
                assert_eq!(
                    read.map(|_| ()).unwrap_err().raw_os_error(),
                    Some(libc::EPERM),
                    "{c:?}: the reader should have been refused"
                );
                feed.finish().unwrap_err()
            } else {
                unpacked.err().unwrap()
            };
            assert!(
                matches!(e, Error::Tampered { ref entry, .. } if entry == "checkpoint/pages-1.img.part2"),
                "{c:?}: {e}"
            );
        }
    }
}
