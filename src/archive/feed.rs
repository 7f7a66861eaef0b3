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

use crate::archive::frames::{TAIL_MARK_LEN, TailMark};
use crate::archive::gate::Gate;
use crate::archive::hashing::Hashers;
use crate::archive::reader::{
    Admission, Admitted, Error, Trust, Unpacked, check_digest, check_listing, check_signer,
    complete, entry_name, read_error, read_manifest, stage_stream,
};
use crate::archive::sha256x2::{Lane, update_pair};
use crate::archive::stage::Stage;
use crate::archive::uffd::{FeedDone, Item, Plan, Running, Share, Sources};
use crate::image::layer::Compression;
use crate::progress::Progress;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// One part of a pages image: where it goes in its staged file, and the digest the
/// manifest gives it.
struct Part {
    name: String,
    /// The pages file (index into the staged files) and the part's number in it.
    file: usize,
    n: usize,
    /// Offset in the staged file.
    offset: u64,
    size: u64,
    sha256: String,
}

/// Which parts of each pages file have matched their digests; the gate opens over each
/// file's prefix of matched parts, since CRIU reads a file from its start.
struct Matched {
    parts: Vec<Vec<bool>>,
    prefix: Vec<usize>,
    /// Where each part ends in its file.
    ends: Vec<Vec<u64>>,
}

impl Matched {
    fn new<'a>(files: usize, parts: impl Iterator<Item = &'a Part>) -> Matched {
        let mut ends: Vec<Vec<u64>> = vec![vec![]; files];
        for p in parts {
            let e = &mut ends[p.file];
            if e.len() <= p.n {
                e.resize(p.n + 1, 0);
            }
            e[p.n] = p.offset + p.size;
        }
        Matched {
            parts: ends.iter().map(|e| vec![false; e.len()]).collect(),
            prefix: vec![0; files],
            ends,
        }
    }

    fn matched(&mut self, p: &Part, gate: &Gate) {
        let done = &mut self.parts[p.file];
        done[p.n] = true;
        let prefix = &mut self.prefix[p.file];
        while *prefix < done.len() && done[*prefix] {
            *prefix += 1;
        }
        if *prefix > 0 {
            gate.advance(p.file, self.ends[p.file][*prefix - 1]);
        }
    }

    fn is_matched(&self, p: &Part) -> bool {
        self.parts[p.file][p.n]
    }
}

/// A range of the archive to copy out and hash: `size` bytes at `at`, named `name` in
/// errors, each piece handed to `put` with its offset from `at`.
struct Copy<'a> {
    at: u64,
    size: u64,
    name: &'a str,
    put: Put<'a>,
}

/// Where [`Copy`] puts each piece: given the piece and its offset in the range.
type Put<'a> = Box<dyn FnMut(&[u8], u64) -> Result<(), Error> + 'a>;

/// Copies one or two ranges of `archive` (see [`Copy`]), a piece of each at a time through
/// `bufs`, hashing them side by side (archive::sha256x2); their sha256s (hex, that of no
/// bytes for a None).
fn copy_hashed(
    archive: &File,
    mut copies: [Option<Copy<'_>>; 2],
    bufs: &mut [Vec<u8>; 2],
) -> Result<[String; 2], Error> {
    let mut lanes = [Lane::new(), Lane::new()];
    let mut done = [0u64; 2];
    loop {
        let mut n = [0usize; 2];
        for (k, c) in copies.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            n[k] = (bufs[k].len() as u64).min(c.size - done[k]) as usize;
            let piece = &mut bufs[k][..n[k]];
            archive
                .read_exact_at(piece, c.at + done[k])
                .map_err(|e| read_error(e, c.name))?;
            (c.put)(piece, done[k])?;
            done[k] += n[k] as u64;
        }
        if n == [0, 0] {
            break;
        }
        let [a, b] = &mut lanes;
        update_pair(a, &bufs[0][..n[0]], b, &bufs[1][..n[1]]);
    }
    Ok(lanes.map(|l| hex::encode(l.finalize())))
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
    // Pages parts, each with the offset of its data in the archive.
    let mut parts: Vec<(u64, Part)> = vec![];
    // Staged pages files and the bytes their parts add up to.
    let mut files: Vec<(String, u64)> = vec![];
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
            Admitted::File {
                file,
                part: Some(n),
            } => {
                let i = match files.iter().position(|f| f.0 == file) {
                    Some(i) => i,
                    None => {
                        files.push((file, 0));
                        files.len() - 1
                    }
                };
                let part = Part {
                    name,
                    file: i,
                    n: n as usize,
                    offset: files[i].1,
                    size,
                    sha256: String::new(),
                };
                parts.push((at, part));
                files[i].1 += size;
            }
        }
    }
    let len = file
        .metadata()
        .map_err(|e| Error::Corrupt(e.to_string()))?
        .len();
    let signed = complete(signed, manifest_end, len)?;
    let (manifest, signer, trusted_as) = check_signer(signed, trust)?;
    let sizes: BTreeMap<String, u64> = wholes
        .iter()
        .map(|w| (w.0.clone(), w.3))
        .chain(parts.iter().map(|(_, p)| (p.name.clone(), p.size)))
        .collect();
    let listed = check_listing(&manifest, &sizes)?;
    for (_, p) in &mut parts {
        p.sha256 = listed[p.name.as_str()].sha256.clone();
    }
    let mut bufs = copy_buffers();
    for (name, staged, at, size) in &wholes {
        stage.create(staged)?;
        let whole = Copy {
            at: *at,
            size: *size,
            name,
            put: Box::new(|b, _| Ok(stage.write(b)?)),
        };
        let [sha, _] = copy_hashed(&file, [Some(whole), None], &mut bufs)?;
        check_digest(name, &sha, &listed[name.as_str()].sha256)?;
    }
    let (outs, gate, plan) = gated_files(stage, &files, true)?;
    let file = Arc::new(file);
    // The parts copied straight in (archive::uffd), and those with lazy bytes the feed
    // stages too.
    let mut lazy = vec![];
    let done = Arc::new(FeedDone::default());
    let copy_in = match plan {
        Some(plan) => {
            let shares: Vec<Share> = parts
                .iter()
                .map(|(_, p)| plan.classify(p.file, p.offset, p.size))
                .collect();
            lazy = shares.iter().map(|s| *s == Share::Lazy).collect();
            let items = parts
                .iter()
                .zip(&shares)
                .filter(|(_, s)| **s != Share::Read)
                .map(|((at, p), s)| Item {
                    at: *at,
                    name: p.name.clone(),
                    file: p.file,
                    offset: p.offset,
                    size: p.size,
                    sha256: p.sha256.clone(),
                    staged: *s == Share::Both,
                })
                .collect();
            Some(start_copy_in(
                stage, plan, items, &file, &outs, &progress, &done,
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
        let r = fill(&file, &parts, &lazy, files.len(), to, stop);
        done.set(r.is_ok());
        r
    });
    feed.copy_in = copy_in;
    Ok(((manifest, signer, trusted_as), feed))
}

/// Starts the copy-in (archive::uffd) of `items` for `plan`, listening in the stage (CRIU's
/// work directory); it copies a staged item once the feed says `done`.
fn start_copy_in(
    stage: &Stage,
    plan: Plan,
    items: Vec<Item>,
    archive: &Arc<File>,
    outs: &Outs,
    progress: &Arc<Progress>,
    done: &Arc<FeedDone>,
) -> Result<Running, Error> {
    let listener = crate::archive::uffd::listen(stage.dir()).map_err(|e| Error::Write {
        path: stage.dir().join(crate::archive::uffd::SOCKET),
        source: e,
    })?;
    let mut sources = Sources {
        archive: archive.clone(),
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
        if let Some(w) = self.worker.take() {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(Error::Corrupt("the pages feed panicked".into())));
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

/// Copies one or two parts (each with the offset of its data in `archive`) to their staged
/// files and checks their digests.
fn copy_parts(
    archive: &File,
    pair: [Option<&(u64, Part)>; 2],
    outs: &[(PathBuf, File)],
    bufs: &mut [Vec<u8>; 2],
) -> Result<(), Error> {
    let copies = pair.map(|q| {
        q.map(|(at, p)| {
            let out = &outs[p.file];
            Copy {
                at: *at,
                size: p.size,
                name: &p.name,
                put: Box::new(move |b, off| {
                    out.1
                        .write_all_at(b, p.offset + off)
                        .map_err(write_error(out))
                }),
            }
        })
    });
    let shas = copy_hashed(archive, copies, bufs)?;
    for (sha, q) in shas.into_iter().zip(pair) {
        if let Some((_, p)) = q {
            check_digest(&p.name, &sha, &p.sha256)?;
        }
    }
    Ok(())
}

/// Verifies and writes the parts (each with the offset of its data in `archive`) on every
/// core, but those `copied_in` (archive::uffd), and opens the gate over each file's prefix
/// of matched parts.
fn fill(
    archive: &File,
    all: &[(u64, Part)],
    copied_in: &[bool],
    files: usize,
    to: Target,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let mut matched = Matched::new(files, all.iter().map(|(_, p)| p));
    // A part copied straight in is never read by CRIU: its range of the staged file stays
    // a hole the gate may let CRIU past.
    let mut parts = vec![];
    for (i, part) in all.iter().enumerate() {
        if copied_in.get(i).copied().unwrap_or(false) {
            matched.matched(&part.1, to.gate);
        } else {
            parts.push(part);
        }
    }
    let matched = Mutex::new(matched);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4);
    let work = || -> Result<(), Error> {
        let mut bufs = copy_buffers();
        loop {
            if stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            if let Err(e) = Error::if_interrupted() {
                failed.store(true, Ordering::Relaxed);
                to.gate.fail();
                return Err(e);
            }
            // Two parts at a time: their digests are computed side by side (sha256x2).
            let i = next.fetch_add(2, Ordering::Relaxed);
            let Some(first) = parts.get(i) else {
                return Ok(());
            };
            let pair = [Some(*first), parts.get(i + 1).copied()];
            if let Err(e) = copy_parts(archive, pair, to.outs, &mut bufs) {
                failed.store(true, Ordering::Relaxed);
                to.gate.fail();
                return Err(e);
            }
            let mut m = matched.lock().unwrap_or_else(|e| e.into_inner());
            for (_, p) in pair.into_iter().flatten() {
                to.progress.inc(p.size);
                m.matched(p, to.gate);
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
    if let Some(p) = staged.entries.keys().find(|n| part_of(n).is_some()) {
        return Err(Error::BadEntry {
            entry: p.clone(),
            why: "a pages part after the archive's tail mark (the mark at the end of the \
                  file may be damaged: --verify-first reads the archive in order)"
                .into(),
        });
    }
    let (manifest, signer, trusted_as) = check_signer(staged.take_manifest()?, trust)?;
    // Every entry the tail does not hold must be a pages part, which the feed brings.
    let mut sizes: BTreeMap<String, u64> = staged
        .entries
        .iter()
        .map(|(k, v)| (k.clone(), v.1))
        .collect();
    let mut by_file: BTreeMap<String, Vec<(u32, &crate::archive::manifest::Entry)>> =
        BTreeMap::new();
    for e in &manifest.entries {
        if sizes.contains_key(&e.name) {
            continue;
        }
        if let Some((f, n)) = part_of(&e.name) {
            by_file.entry(f).or_default().push((n, e));
            sizes.insert(e.name.clone(), e.size);
        }
    }
    let listed = check_listing(&manifest, &sizes)?;
    for (name, (sha, _)) in &staged.entries {
        check_digest(name, sha, &listed[name.as_str()].sha256)?;
    }
    let mut files = vec![];
    let mut expected = BTreeMap::new();
    for (f, mut parts) in by_file {
        parts.sort_by_key(|p| p.0);
        let mut offset = 0;
        for (i, (n, e)) in parts.iter().enumerate() {
            if *n as usize != i {
                return Err(Error::Tampered {
                    entry: format!("{f}.part{i}"),
                    why: "listed in the manifest but missing from the archive".into(),
                });
            }
            let part = Part {
                name: e.name.clone(),
                file: files.len(),
                n: i,
                offset,
                size: e.size,
                sha256: e.sha256.clone(),
            };
            expected.insert(e.name.clone(), part);
            offset += e.size;
        }
        files.push((f, offset));
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
        let matched = Matched::new(files.len(), expected.values());
        fill_stream(head, mark.tar_offset, &expected, matched, to, stop)
    });
    Ok(((manifest, signer, trusted_as), feed))
}

/// `checkpoint/<file>.part<N>` → (`checkpoint/<file>`, N).
fn part_of(name: &str) -> Option<(String, u32)> {
    let (f, n) = name
        .strip_prefix("checkpoint/")
        .and_then(crate::archive::pages::split_part)?;
    Some((format!("checkpoint/{f}"), n))
}

/// Feeds the parts of a zstd archive's head, decompressed in order on this thread and
/// hashed on others; each file's gate opens over its prefix of matched parts. The head must
/// hold exactly the `expected` parts (by name) and end at the tail mark's `tar_len`.
fn fill_stream(
    head: impl Read,
    tar_len: u64,
    expected: &BTreeMap<String, Part>,
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
    // Each hashing job's part.
    let mut jobs: Vec<&Part> = vec![];
    let mut settle = |done: Vec<(usize, String, u64)>, jobs: &[&Part]| -> Result<(), Error> {
        for (job, sha, _) in done {
            let p = jobs[job];
            check_digest(&p.name, &sha, &p.sha256)?;
            matched.matched(p, gate);
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
        match admission.admit(&name, entry.header().entry_type())? {
            Admitted::Skip => continue,
            Admitted::File { part: Some(_), .. } => {}
            _ => {
                return Err(Error::BadEntry {
                    entry: name,
                    why: "only pages parts come before the archive's tail mark".into(),
                });
            }
        }
        let e = expected.get(&name).ok_or_else(|| Error::Tampered {
            entry: name.clone(),
            why: "present in the archive but not in the manifest".into(),
        })?;
        if entry.size() != e.size {
            return Err(Error::Tampered {
                entry: name,
                why: format!("size {}, the manifest says {}", entry.size(), e.size),
            });
        }
        hashers.begin();
        jobs.push(e);
        let mut done = 0u64;
        while done < e.size {
            let mut buf = hashers.buffer();
            buf.resize(CHUNK.min(e.size - done) as usize, 0);
            entry
                .read_exact(&mut buf)
                .map_err(|err| read_error(err, &name))?;
            let out = &outs[e.file];
            out.1
                .write_all_at(&buf, e.offset + done)
                .map_err(write_error(out))?;
            done += buf.len() as u64;
            progress.inc(buf.len() as u64);
            hashers
                .update_owned(buf)
                .map_err(|err| Error::Corrupt(err.to_string()))?;
        }
        hashers
            .end()
            .map_err(|err| Error::Corrupt(err.to_string()))?;
        settle(hashers.take_done(), &jobs)?;
    }
    let rest = hashers
        .close()
        .map_err(|err| Error::Corrupt(err.to_string()))?;
    settle(rest, &jobs)?;
    if let Some(p) = expected.values().find(|p| !matched.is_matched(p)) {
        return Err(Error::Tampered {
            entry: p.name.clone(),
            why: "listed in the manifest but missing from the archive".into(),
        });
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
            w.add_chunks(&format!("checkpoint/pages-1.img.part{i}"), vec![p.clone()])
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
