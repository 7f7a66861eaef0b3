//! Reads a checkpoint archive into a directory and proves it whole before anyone uses it:
//! every entry hashed as it is written out, the manifest's signature checked, its signer
//! trusted, and the entries matched one to one. The files go through a [`Stage`] (a
//! private tmpfs for `restore -i`, see stage.rs). On any failure the caller removes the
//! stage; the archive itself is never modified.

use crate::archive::hashing::Hashers;
use crate::archive::manifest::{self, MANIFEST_NAME, Manifest, SignedManifest};
use crate::archive::pages::{
    IndexCursor, PartRecord, RecordFile, encode_index, index_len, index_name, index_of, part_name,
    split_part,
};
use crate::archive::stage::{self, Stage};
pub use crate::archive::writer::Announce;
use crate::identity::{Fingerprint, TrustStore};
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// The entries a ferry archive may hold, besides `checkpoint/<file>`.
pub const TOP_LEVEL: &[&str] = &[
    "spec.dump",
    "config.dump",
    "rootfs-diff.tar",
    "deleted.files",
    "devshm-checkpoint.tar",
    "stats-dump",
    "dump.log",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the archive is not a ferry checkpoint or is damaged: {0}")]
    Corrupt(String),
    #[error("the archive is truncated: {0}")]
    Truncated(String),
    /// Not a tar stream at all, said in full.
    #[error("{0}")]
    NotAnArchive(String),
    /// What the caller's early check (`unpack_with_progress`) refused, said in full.
    #[error("{0}")]
    Refused(String),
    #[error("archive entry {entry:?}: {why}; refusing to restore")]
    BadEntry { entry: String, why: String },
    #[error(
        "archive entry {entry:?} does not match the manifest ({why}): the archive was altered \
         or damaged after it was signed; refusing to restore"
    )]
    Tampered { entry: String, why: String },
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    #[error(
        "the archive is signed by {signer}, which this host does not trust; if that host is \
         yours, run `ferry trust add {signer}` (its `ferry identity` prints it), or restore \
         with --insecure-allow-untrusted"
    )]
    Untrusted { signer: Fingerprint },
    #[error("writing {path}: {source}{}", if source.raw_os_error() == Some(libc::ENOSPC) {
        "; the disk is full: free space under the storage directory (--storage)" } else { "" })]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trust store: {0}")]
    Trust(#[from] crate::identity::Error),
    /// SIGINT, SIGTERM or SIGHUP under sys::interrupt's guard.
    #[error("{0}")]
    Interrupted(String),
}

impl Error {
    /// [`Error::Interrupted`] once a signal has been caught (sys::interrupt): checked at the
    /// safe points of reading, staging and feeding an archive.
    pub fn if_interrupted() -> Result<(), Error> {
        crate::sys::interrupt::check().map_err(|e| Error::Interrupted(e.to_string()))
    }
}

impl From<stage::WriteError> for Error {
    fn from(e: stage::WriteError) -> Error {
        Error::Write {
            path: e.path,
            source: e.source,
        }
    }
}

/// Who may have signed an archive for it to be restored.
pub enum Trust<'a> {
    /// This host's own key, or a signer in the store.
    Store {
        store: &'a TrustStore,
        own: Fingerprint,
    },
    /// `--insecure-allow-untrusted`: any valid signature (it is still checked).
    AnySigner,
}

pub struct Unpacked {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub signer: Fingerprint,
    /// The trusted signer's name ("this host" for our own key), None when allowed untrusted.
    pub trusted_as: Option<String>,
}

impl Unpacked {
    /// How many entries the archive holds and their bytes: those the manifest lists and,
    /// since format 3, the pages parts their indexes list.
    pub fn totals(&self) -> (usize, u64) {
        let (mut n, mut bytes) = (0, 0);
        for e in &self.manifest.entries {
            n += 1;
            bytes += e.size;
            if let Some(f) = e.name.strip_prefix("checkpoint/").and_then(index_of)
                && let Ok(records) = signed_records(&self.dir, &format!("checkpoint/{f}"))
            {
                for r in records.flatten() {
                    n += 1;
                    bytes += r.size;
                }
            }
        }
        (n, bytes)
    }
}

fn is_allowed(name: &str) -> Result<(), String> {
    if TOP_LEVEL.contains(&name) {
        return Ok(());
    }
    if let Some(file) = name.strip_prefix("checkpoint/")
        && !file.is_empty()
        && !file.contains('/')
        && file != "."
        && file != ".."
    {
        return Ok(());
    }
    Err("not an entry a ferry archive holds".into())
}

/// Opens the (possibly compressed) tar stream, recognising zstd and gzip by their magic,
/// and refuses what does not start a tar stream (an empty file, a text file, a compressed
/// file that holds no tar) before any of it is read as entries: the tar reader's own error
/// for such input quotes the bytes it choked on.
///
/// An uncompressed stream keeps a small buffer: tar reads the 512-byte headers through it,
/// and a megabyte of entry data read past an empty buffer goes from the file straight into
/// the caller's, where a buffer as large as that would have every byte copied once more.
pub fn decompressed(input: impl Read + 'static) -> Result<Box<dyn Read>, Error> {
    use crate::image::layer::Compression;
    let mut input = input;
    let head = read_head(&mut input)?;
    let (decoded, kind): (Box<dyn Read>, _) = match Compression::sniff(&head) {
        Compression::None => {
            check_tar_start(&head, None)?;
            let rest = BufReader::with_capacity(16 << 10, input);
            return Ok(Box::new(std::io::Cursor::new(head).chain(rest)));
        }
        Compression::Zstd => {
            let all = BufReader::with_capacity(1 << 20, std::io::Cursor::new(head).chain(input));
            let d = zstd::stream::read::Decoder::with_buffer(all)
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            (Box::new(d), "zstd")
        }
        Compression::Gzip => {
            let all = BufReader::with_capacity(1 << 20, std::io::Cursor::new(head).chain(input));
            (Box::new(flate2::bufread::GzDecoder::new(all)), "gzip")
        }
    };
    let mut decoded = decoded;
    let tar_head = read_head(&mut decoded)?;
    check_tar_start(&tar_head, Some(kind))?;
    Ok(Box::new(std::io::Cursor::new(tar_head).chain(decoded)))
}

const BLOCK: usize = 512;

/// Up to the first tar block of `r` (less only at its end: a pipe may hand it over in
/// pieces).
fn read_head(r: &mut impl Read) -> Result<Vec<u8>, Error> {
    let mut head = Vec::with_capacity(BLOCK);
    r.take(BLOCK as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    Ok(head)
}

/// Whether `head`, the first bytes of a stream (after decompression), can start a tar
/// archive: a header whose checksum matches, or the zero block of an empty archive.
pub(crate) fn starts_a_tar(head: &[u8]) -> bool {
    let Some(block) = head.get(..BLOCK) else {
        return false;
    };
    if block.iter().all(|&b| b == 0) {
        return true;
    }
    // POSIX: the sum of the header's bytes with its own checksum field read as spaces.
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { b' ' } else { b } as u32)
        .sum();
    tar::Header::from_byte_slice(block)
        .cksum()
        .is_ok_and(|c| c == sum)
}

/// [`starts_a_tar`] as the error a user reads; `compressed` names the compression the
/// stream was found in.
fn check_tar_start(head: &[u8], compressed: Option<&str>) -> Result<(), Error> {
    if starts_a_tar(head) {
        return Ok(());
    }
    let inside = compressed.map_or(String::new(), |c| format!(" (inside its {c} compression)"));
    Err(match head.len() {
        0 if compressed.is_none() => Error::NotAnArchive(
            "the archive is empty: not one byte was read from it. `ferry checkpoint -e` names \
             a file only once it is complete, so an empty one was made by something else, or \
             the command writing the pipe failed before it began"
                .into(),
        ),
        n if n < BLOCK => Error::Truncated(format!(
            "it holds only {n} bytes{inside}, less than one tar header (512 bytes); it is not \
             a whole ferry checkpoint archive"
        )),
        _ => Error::NotAnArchive(format!(
            "this is not a ferry checkpoint archive: its first 512 bytes{inside} are not a \
             tar header{}. `ferry checkpoint -e` writes a tar stream, plain or compressed with \
             zstd or gzip",
            match compressed {
                None => ", nor the start of zstd or gzip data",
                Some(_) => "",
            }
        )),
    })
}

/// Unpacks into `dest` on disk (which must not exist) and verifies. `dest` holds the entries
/// under their archive names on success; on error it may hold a part, for the caller to
/// remove.
pub fn unpack(input: impl Read + 'static, dest: &Path, trust: Trust) -> Result<Unpacked, Error> {
    unpack_quietly(input, Stage::disk(dest, "unpacked for reading")?, trust)
}

/// [`unpack`] for `inspect`: verified all the same, but the memory pages are staged as
/// sparse files of their length (`Stage::without_page_data`), so that it needs no disk
/// space for them.
pub fn unpack_without_page_data(
    input: impl Read + 'static,
    dest: &Path,
    trust: Trust,
) -> Result<Unpacked, Error> {
    let stage = Stage::disk(dest, "unpacked for inspect, without the page data")?;
    unpack_quietly(input, stage.without_page_data(), trust)
}

/// [`unpack_with_progress`] into `stage` with no progress shown and no early check.
fn unpack_quietly(
    input: impl Read + 'static,
    mut stage: Stage,
    trust: Trust,
) -> Result<Unpacked, Error> {
    let hidden = crate::progress::Progress::hidden();
    unpack_with_progress(input, &mut stage, trust, &hidden, None)
}

/// [`unpack`] into `stage` (fresh and empty), advancing `progress` by every byte of entry
/// content. `early` is given what the stream names at its start (after the signer was held
/// to `trust`): an error from it stops the reading there.
pub fn unpack_with_progress(
    input: impl Read + 'static,
    stage: &mut Stage,
    trust: Trust,
    progress: &crate::progress::Progress,
    early: Option<&EarlyCheck<'_>>,
) -> Result<Unpacked, Error> {
    stage.create_dir("checkpoint")?;
    let stream = decompressed(input)?;
    let at_start = |a: &Announce| -> Result<(), Error> {
        if let Some(signer) = &a.signer {
            trusted_as(signer, &trust)?;
        }
        early.map_or(Ok(()), |check| check(a))
    };
    let mut staged = stage_stream(stream, stage, progress, Some(&at_start))?;
    let (manifest, signer, trusted_as) = check_signer(staged.take_manifest()?, trust)?;
    check_announced(staged.announced.signer.as_ref(), &signer)?;
    let sizes = staged
        .entries
        .iter()
        .map(|(k, v)| (k.clone(), v.1))
        .collect();
    let listed = check_listing(&manifest, &sizes)?;
    for (name, (sha, _)) in &staged.entries {
        check_digest(name, sha, &listed[name.as_str()].sha256)?;
    }
    for file in signed_parts(&manifest, stage.dir(), staged.parts.keys())? {
        let (first, count) = staged.parts.get(&file).copied().unwrap_or((0, 0));
        let want = signed_records(stage.dir(), &file)?;
        match &staged.records {
            Some(r) => compare_parts(&file, r.records(first, count), want)?,
            None => compare_parts(&file, std::iter::empty(), want)?,
        }
    }
    Ok(Unpacked {
        dir: stage.dir().to_path_buf(),
        manifest,
        signer,
        trusted_as,
    })
}

/// What one pass over a tar stream staged: each entry's sha256 (hex) and size, the signed
/// manifest if it came, where its data (padded to a block) ended, and how many bytes of
/// the stream there were (a complete stream has the two zero blocks of the end-of-archive
/// marker after the manifest). Nothing is checked against the manifest yet.
pub(crate) struct Streamed {
    /// Every entry but the pages parts: its sha256 and size.
    pub entries: BTreeMap<String, ([u8; 32], u64)>,
    /// The pages parts, by their image's name (`checkpoint/pages-<id>.img`): the slot of
    /// the first one's record in `records`, and how many there are.
    pub parts: BTreeMap<String, (u64, u64)>,
    /// Every part's size and sha256, kept on disk (in the stage) rather than in memory.
    pub records: Option<RecordFile>,
    pub signed: Option<SignedManifest>,
    pub manifest_end: u64,
    pub consumed: u64,
    /// What the stream named on its first entry (`writer::Announce`).
    pub announced: Announce,
}

impl Streamed {
    /// The signed manifest, once the stream is known to have been complete: the manifest
    /// came, and the end-of-archive marker after it.
    pub(crate) fn take_manifest(&mut self) -> Result<SignedManifest, Error> {
        complete(self.signed.take(), self.manifest_end, self.consumed)
    }
}

/// The signed manifest of a tar stream of `len` bytes whose manifest's data (padded to a
/// block) ended at `manifest_end`, once the stream is known to be complete: the manifest
/// came, and the two zero blocks of the end-of-archive marker after it.
pub(crate) fn complete(
    signed: Option<SignedManifest>,
    manifest_end: u64,
    len: u64,
) -> Result<SignedManifest, Error> {
    let signed = signed.ok_or_else(|| {
        Error::Truncated("it ends without ferry.manifest (its last entry)".into())
    })?;
    if len < manifest_end + 1024 {
        return Err(Error::Truncated(
            "the end-of-archive marker after ferry.manifest is missing".into(),
        ));
    }
    Ok(signed)
}

/// Given what a stream names at its start, there and then ([`stage_stream`]).
pub type EarlyCheck<'a> = dyn Fn(&Announce) -> Result<(), Error> + 'a;

/// Stages every entry of `stream` (entries admitted as [`Admission`] says), hashing each
/// on other threads as it is written. `early` is given what the stream names on its first
/// entry, there and then (the manifest still decides, at the end): an archive from a host
/// this one does not trust, or needing an image it lacks, is refused before the rest of a
/// pipe is read, so that its writer fails and keeps its container.
pub(crate) fn stage_stream(
    stream: impl Read,
    stage: &mut Stage,
    progress: &crate::progress::Progress,
    early: Option<&EarlyCheck<'_>>,
) -> Result<Streamed, Error> {
    let consumed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tar = tar::Archive::new(Counted {
        inner: stream,
        n: consumed.clone(),
    });
    // Where the manifest's data (padded to a block) ends: a complete stream has the two
    // zero blocks of the end-of-archive marker after it.
    let mut manifest_end = 0u64;
    // Every entry but the parts, with its digest and size; the parts by image (the slot of
    // the first one's record, and how many), their records kept on the stage.
    let mut wholes: BTreeMap<String, ([u8; 32], u64)> = BTreeMap::new();
    let mut parts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut records: Option<RecordFile> = None;
    let mut slots = 0u64;
    // Where the digest of each hashing job not yet done goes: an entry (its name and size)
    // or a part's record (its slot).
    enum Dest {
        Whole(String, u64),
        Part(u64),
    }
    let mut waiting: std::collections::HashMap<usize, Dest> = Default::default();
    // The records are kept on the stage: a full one is the stage's disk, said as such.
    let stage_dir = stage.dir().to_path_buf();
    let settle = |done: Vec<crate::archive::hashing::Done>,
                  waiting: &mut std::collections::HashMap<usize, Dest>,
                  records: &Option<RecordFile>,
                  wholes: &mut BTreeMap<String, ([u8; 32], u64)>|
     -> Result<(), Error> {
        for (job, sha256, size) in done {
            match waiting.remove(&job) {
                Some(Dest::Part(slot)) => records
                    .as_ref()
                    .expect("made at the first part")
                    .put(slot, &PartRecord { size, sha256 })
                    .map_err(|source| Error::Write {
                        path: stage_dir.clone(),
                        source,
                    })?,
                Some(Dest::Whole(name, n)) => {
                    wholes.insert(name, (sha256, n));
                }
                None => {}
            }
        }
        Ok(())
    };
    let mut hashers = Hashers::new(None);
    let mut admission = Admission::default();
    let mut signed: Option<SignedManifest> = None;
    let mut announced = Announce::default();
    let mut first = true;
    let entries = tar.entries().map_err(|e| Error::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(e, "reading the next entry"))?;
        if std::mem::take(&mut first) {
            announced = announced_on(&mut entry)?;
            if let Some(early) = early {
                early(&announced)?;
            }
        }
        let name = entry_name(&entry)?;
        let (file, part) = match admission.admit(&name, entry.header().entry_type())? {
            Admitted::Skip => continue,
            Admitted::Manifest => {
                let size = entry.size();
                signed = Some(read_manifest(&mut entry, size)?);
                manifest_end = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
                continue;
            }
            Admitted::File { file, part } => (file, part),
        };
        let append = part.is_some_and(|n| n > 0);
        let opened = if append {
            stage.append(&file)
        } else {
            stage.create(&file)
        };
        match opened {
            Err(e) if e.source.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::BadEntry {
                    entry: name,
                    why: format!("{file} appears twice"),
                });
            }
            r => r?,
        }
        let job = hashers.begin();
        let mut n = 0u64;
        // Read exactly the entry's size: a buffer taken for nothing would be dropped, and a
        // fresh one allocated (and its pages touched) for every entry.
        while n < entry.size() {
            let mut buf = hashers.buffer();
            let want = (entry.size() - n).min(crate::archive::hashing::CHUNK as u64) as usize;
            // A recycled buffer keeps its length: only a fresh or shorter one is zeroed.
            buf.resize(want, 0);
            let mut k = 0;
            while k < buf.len() {
                match entry
                    .read(&mut buf[k..])
                    .map_err(|e| read_error(e, &name))?
                {
                    0 => break,
                    r => k += r,
                }
            }
            if k == 0 {
                break;
            }
            buf.truncate(k);
            stage.write(&buf)?;
            progress.inc(k as u64);
            hashers
                .update_owned(buf)
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            n += k as u64;
        }
        if n != entry.size() {
            return Err(Error::Truncated(format!(
                "{name} ends after {n} of {} bytes",
                entry.size()
            )));
        }
        hashers.end().map_err(|e| Error::Corrupt(e.to_string()))?;
        match part {
            Some(_) => {
                if records.is_none() {
                    records = Some(RecordFile::new_in(stage.dir()).map_err(|e| Error::Write {
                        path: stage.dir().to_path_buf(),
                        source: e,
                    })?);
                }
                // Admission keeps an image's parts together and in order.
                let (_, count) = parts.entry(file).or_insert((slots, 0));
                *count += 1;
                waiting.insert(job, Dest::Part(slots));
                slots += 1;
            }
            None => {
                waiting.insert(job, Dest::Whole(name, n));
            }
        }
        settle(hashers.take_done(), &mut waiting, &records, &mut wholes)?;
    }
    let rest = hashers.close().map_err(|e| Error::Corrupt(e.to_string()))?;
    settle(rest, &mut waiting, &records, &mut wholes)?;
    if !waiting.is_empty() {
        return Err(Error::Corrupt(format!(
            "{} entries were never hashed",
            waiting.len()
        )));
    }
    // What follows the end-of-archive marker must read to its end too: a zstd stream cut
    // short there (its tail mark, archive::frames) is a truncated archive.
    entries_done(tar).map_err(|e| read_error(e, "after the end-of-archive marker"))?;
    Ok(Streamed {
        entries: wholes,
        parts,
        records,
        signed,
        manifest_end,
        consumed: consumed.load(std::sync::atomic::Ordering::Relaxed),
        announced,
    })
}

/// An entry's path as a string.
pub(crate) fn entry_name<R: Read>(entry: &tar::Entry<R>) -> Result<String, Error> {
    Ok(entry
        .path()
        .map_err(|e| Error::Corrupt(e.to_string()))?
        .to_string_lossy()
        .into_owned())
}

/// What an entry is, judged by its header.
pub(crate) enum Admitted {
    /// The `checkpoint/` directory itself: nothing to write.
    Skip,
    Manifest,
    /// A file to stage: whole, or part `n` of it (archive::pages).
    File {
        file: String,
        part: Option<u32>,
    },
}

/// The checks every entry of an archive passes, in order, before anything is written for
/// it: only regular files under the names a ferry archive holds, each once, the parts of a
/// file strictly in order and before its index, and nothing after the manifest. It holds
/// a name per file, not per part.
#[derive(Default)]
pub(crate) struct Admission {
    names: std::collections::BTreeSet<String>,
    files: std::collections::BTreeSet<String>,
    parts: BTreeMap<String, u32>,
    /// The image of the last part: an image's parts come together.
    last_parts: Option<String>,
    manifest: bool,
}

/// Entries that only other tools' checkpoint archives hold (CONTRACTS.md §3.1): podman
/// (`network.status`, `volumes/`, `ctr.log`, `artifacts/`, `pre-checkpoint/`, pods),
/// CRI-O (`bind.mounts`) and containerd's CRI (`status.dump`, `container.log`).
const FOREIGN: &[(&str, &str)] = &[
    ("network.status", "podman"),
    ("volumes", "podman"),
    ("ctr.log", "podman"),
    ("artifacts", "podman"),
    ("pre-checkpoint", "podman"),
    ("pod.options", "podman"),
    ("pod.dump", "podman"),
    ("bind.mounts", "CRI-O"),
    ("status.dump", "containerd"),
    ("container.log", "containerd"),
];

/// Which tool's checkpoint archive an entry named `name` (or anything under it) belongs to.
fn foreign(name: &str) -> Option<&'static str> {
    let top = name.trim_start_matches("./").split('/').next()?;
    FOREIGN
        .iter()
        .find(|(n, _)| *n == top)
        .map(|(_, tool)| *tool)
}

impl Admission {
    /// What `name` is, or why it is refused. An entry only another tool's archive holds
    /// (none is one ferry admits) is said to be that tool's.
    pub(crate) fn admit(&mut self, name: &str, kind: tar::EntryType) -> Result<Admitted, Error> {
        self.judge(name, kind).map_err(|e| match foreign(name) {
            Some(tool) => Error::NotAnArchive(format!(
                "this is a checkpoint archive made by {tool} (it holds {name:?}), not by \
                 ferry: it has no signed manifest for ferry to verify. Restore it with {tool}; \
                 `ferry restore -i` takes archives of `ferry checkpoint -e`"
            )),
            None => e,
        })
    }

    fn judge(&mut self, name: &str, kind: tar::EntryType) -> Result<Admitted, Error> {
        let bad = |why: String| Error::BadEntry {
            entry: name.to_string(),
            why,
        };
        if self.manifest {
            return Err(bad(
                "it follows ferry.manifest, which must be the last entry".into(),
            ));
        }
        if kind.is_dir() && name.trim_end_matches('/') == "checkpoint" {
            return Ok(Admitted::Skip);
        }
        if !kind.is_file() {
            return Err(bad(format!(
                "a {kind:?} entry; a ferry archive holds only regular files"
            )));
        }
        if name == MANIFEST_NAME {
            self.manifest = true;
            return Ok(Admitted::Manifest);
        }
        is_allowed(name).map_err(&bad)?;
        // Parts of one file (see archive::pages) are joined back, strictly in order (which
        // also keeps each part to once), and all of them before the file's index.
        let (file, part) = match name.strip_prefix("checkpoint/").and_then(split_part) {
            Some((file, n)) => {
                let expected = self.parts.get(file).copied().unwrap_or(0);
                if n != expected {
                    return Err(bad(format!(
                        "out of order: part {expected} of {file} comes first"
                    )));
                }
                if self
                    .names
                    .contains(&format!("checkpoint/{}", index_name(file)))
                {
                    return Err(bad(format!("it follows the index of {file}")));
                }
                if n > 0 && self.last_parts.as_deref() != Some(file) {
                    return Err(bad(format!(
                        "the parts of {file} are not together: another entry comes between"
                    )));
                }
                self.last_parts = Some(file.to_string());
                self.parts.insert(file.to_string(), n + 1);
                (format!("checkpoint/{file}"), Some(n))
            }
            None => {
                if !self.names.insert(name.to_string()) {
                    return Err(bad("it appears twice".into()));
                }
                // Whatever image had parts before this entry has them all.
                self.last_parts = None;
                (name.to_string(), None)
            }
        };
        if part.unwrap_or(0) == 0 && !self.files.insert(file.clone()) {
            return Err(bad(format!("{file} appears twice")));
        }
        Ok(Admitted::File { file, part })
    }
}

/// The manifest entry's signed text.
pub(crate) fn read_manifest(entry: &mut impl Read, size: u64) -> Result<SignedManifest, Error> {
    if size > manifest::MAX_SIGNED_SIZE {
        return Err(Error::BadEntry {
            entry: MANIFEST_NAME.into(),
            why: format!(
                "{size} bytes, larger than any manifest ferry writes ({} MiB at most)",
                manifest::MAX_SIGNED_SIZE >> 20
            ),
        });
    }
    let mut text = Vec::new();
    entry
        .take(size)
        .read_to_end(&mut text)
        .map_err(|e| read_error(e, MANIFEST_NAME))?;
    if text.len() as u64 != size {
        return Err(Error::Truncated(format!(
            "{MANIFEST_NAME} ends after {} of {size} bytes",
            text.len()
        )));
    }
    Ok(serde_json::from_slice(&text).map_err(|e| manifest::Error::Malformed(e.to_string()))?)
}

/// The manifest, once its signature holds and its signer is one `trust` accepts; with the
/// signer and the name it is trusted under.
pub(crate) fn check_signer(
    signed: SignedManifest,
    trust: Trust,
) -> Result<(Manifest, Fingerprint, Option<String>), Error> {
    let (manifest, signer) = signed.verify()?;
    let trusted_as = trusted_as(&signer, &trust)?;
    Ok((manifest, signer, trusted_as))
}

/// Whether `trust` accepts `signer`: its name ("this host" for our own key), None for any
/// signer allowed, or [`Error::Untrusted`].
fn trusted_as(signer: &Fingerprint, trust: &Trust) -> Result<Option<String>, Error> {
    Ok(match trust {
        Trust::AnySigner => None,
        Trust::Store { store, own } => {
            if signer == own {
                Some("this host".into())
            } else {
                match store.is_trusted(signer)? {
                    Some(s) => Some(if s.name.is_empty() {
                        signer.short().to_string()
                    } else {
                        s.name
                    }),
                    None => {
                        return Err(Error::Untrusted {
                            signer: signer.clone(),
                        });
                    }
                }
            }
        }
    })
}

/// What an archive names on its first entry (`writer::Announce`); nothing in an archive
/// from before ferry did.
fn announced_on<R: Read>(entry: &mut tar::Entry<R>) -> Result<Announce, Error> {
    let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| Error::Corrupt(e.to_string()))?
    else {
        return Ok(Announce::default());
    };
    for ext in pax {
        let ext = ext.map_err(|e| Error::Corrupt(e.to_string()))?;
        let value = std::str::from_utf8(ext.value_bytes()).unwrap_or_default();
        if ext.key_bytes() == b"comment"
            && let Some(parsed) = Announce::parse(value)
        {
            return parsed.map_err(|why| Error::BadEntry {
                entry: "(what the archive names at its start)".into(),
                why: why.into(),
            });
        }
    }
    Ok(Announce::default())
}

/// The signer a stream named at its start must be the one whose signature closes it.
pub(crate) fn check_announced(
    announced: Option<&Fingerprint>,
    signer: &Fingerprint,
) -> Result<(), Error> {
    match announced {
        Some(a) if a != signer => Err(Error::Tampered {
            entry: MANIFEST_NAME.into(),
            why: format!(
                "the archive named {a} as its signer at its start, but its manifest is \
                 signed by {signer}"
            ),
        }),
        _ => Ok(()),
    }
}

/// Whether an entry's name is a pages part's (`checkpoint/pages-<id>.img.part<N>`).
pub(crate) fn is_part(name: &str) -> bool {
    name.strip_prefix("checkpoint/")
        .and_then(split_part)
        .is_some()
}

/// The archive holds exactly the entries the manifest lists, each of the listed size, but
/// the pages parts ([`signed_parts`]); the manifest's entries by name. `sizes` has every
/// entry but the parts.
pub(crate) fn check_listing<'m>(
    manifest: &'m Manifest,
    sizes: &BTreeMap<String, u64>,
) -> Result<BTreeMap<&'m str, &'m manifest::Entry>, Error> {
    let mut listed = BTreeMap::new();
    for e in manifest.entries.iter().filter(|e| !is_part(&e.name)) {
        match sizes.get(&e.name) {
            None => {
                return Err(Error::Tampered {
                    entry: e.name.clone(),
                    why: "listed in the manifest but missing from the archive".into(),
                });
            }
            Some(&size) if size != e.size => {
                return Err(Error::Tampered {
                    entry: e.name.clone(),
                    why: format!("size {size}, the manifest says {}", e.size),
                });
            }
            Some(_) => {}
        }
        listed.insert(e.name.as_str(), e);
    }
    if let Some(extra) = sizes.keys().find(|k| !listed.contains_key(k.as_str())) {
        return Err(Error::Tampered {
            entry: extra.clone(),
            why: "present in the archive but not in the manifest".into(),
        });
    }
    Ok(listed)
}

/// The entry `name`'s sha256 is the one (hex) the manifest lists.
pub(crate) fn check_digest(name: &str, sha: &[u8; 32], want: &str) -> Result<(), Error> {
    let sha = hex::encode(sha);
    if sha == want {
        return Ok(());
    }
    Err(Error::Tampered {
        entry: name.to_string(),
        why: format!(
            "sha256 {}…, the manifest says sha256 {}…",
            &sha[..12],
            &want[..12.min(want.len())]
        ),
    })
}

/// The pages images whose parts the signer listed, by name (`checkpoint/pages-<id>.img`),
/// each with its index staged in `dir` beside it (`<image>.index`) and found to be one: for
/// format 3 the index from the archive, already verified against the manifest; for format
/// 2 one written here from the manifest, which lists every part. `with_parts` names the
/// images the archive holds parts of: each needs its index. Read each with
/// [`signed_records`].
pub(crate) fn signed_parts<'a>(
    manifest: &Manifest,
    dir: &Path,
    with_parts: impl Iterator<Item = &'a String>,
) -> Result<std::collections::BTreeSet<String>, Error> {
    let mut files: std::collections::BTreeSet<String> = with_parts.cloned().collect();
    if manifest.format < manifest::INDEXED_PARTS {
        let mut listed: BTreeMap<String, Vec<PartRecord>> = BTreeMap::new();
        for e in &manifest.entries {
            if let Some(f) = e.name.strip_prefix("checkpoint/").and_then(index_of) {
                return Err(Error::Tampered {
                    entry: e.name.clone(),
                    why: format!("an index of {f} in a format {} archive", manifest.format),
                });
            }
            let Some((f, n)) = e.name.strip_prefix("checkpoint/").and_then(split_part) else {
                continue;
            };
            let image = format!("checkpoint/{f}");
            let records = listed.entry(image.clone()).or_default();
            if n as usize != records.len() {
                return Err(part_missing(&image, records.len()));
            }
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&e.sha256, &mut sha256).map_err(|_| {
                manifest::Error::Malformed(format!("{}: sha256 {:?}", e.name, e.sha256))
            })?;
            records.push(PartRecord {
                size: e.size,
                sha256,
            });
        }
        files.extend(listed.keys().cloned());
        for file in &files {
            let path = dir.join(index_name(file));
            let records = listed.get(file).map(Vec::as_slice).unwrap_or(&[]);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &encode_index(records)))
                .map_err(|source| Error::Write { path, source })?;
        }
        return Ok(files);
    }
    if let Some(e) = manifest.entries.iter().find(|e| is_part(&e.name)) {
        return Err(Error::Tampered {
            entry: e.name.clone(),
            why: format!(
                "listed in a format {} manifest, where only its image's index is",
                manifest.format
            ),
        });
    }
    files.extend(manifest.entries.iter().filter_map(|e| {
        let f = e.name.strip_prefix("checkpoint/").and_then(index_of)?;
        Some(format!("checkpoint/{f}"))
    }));
    for file in &files {
        if !dir.join(index_name(file)).exists() {
            return Err(Error::Tampered {
                entry: part_name(file, 0),
                why: "its image has no index, which lists the parts".into(),
            });
        }
        signed_records(dir, file)?;
    }
    Ok(files)
}

/// The records of `file`'s index, staged in `dir` ([`signed_parts`]), read a batch at a
/// time, once the index is found to be one.
pub(crate) fn signed_records(dir: &Path, file: &str) -> Result<IndexCursor, Error> {
    let index = index_name(file);
    let path = dir.join(&index);
    match index_len(&path) {
        Ok(Ok(count)) => Ok(IndexCursor::new(path, count)),
        Ok(Err(why)) => Err(Error::BadEntry { entry: index, why }),
        Err(e) => Err(Error::Corrupt(format!("reading {index}: {e}"))),
    }
}

/// The parts of `file` the archive holds (`got`, in order) are those its index lists
/// (`want`): each of the same size and sha256, none missing, none more.
pub(crate) fn compare_parts(
    file: &str,
    got: impl Iterator<Item = std::io::Result<PartRecord>>,
    mut want: impl Iterator<Item = std::io::Result<PartRecord>>,
) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Corrupt(format!("reading the records of {file}: {e}"));
    let mut n = 0;
    for g in got {
        let g = g.map_err(io)?;
        let Some(w) = want.next() else {
            return Err(part_unlisted(file, n));
        };
        check_part(file, n, &g, &w.map_err(io)?)?;
        n += 1;
    }
    if want.next().is_some() {
        return Err(part_missing(file, n));
    }
    Ok(())
}

/// Part `n` of `file` is the one its index (or a format 2 manifest) gives.
pub(crate) fn check_part(
    file: &str,
    n: usize,
    got: &PartRecord,
    want: &PartRecord,
) -> Result<(), Error> {
    let why = if got.size != want.size {
        format!("size {}, its index says {}", got.size, want.size)
    } else if got.sha256 != want.sha256 {
        format!(
            "sha256 {}…, its index says sha256 {}…",
            &hex::encode(got.sha256)[..12],
            &hex::encode(want.sha256)[..12]
        )
    } else {
        return Ok(());
    };
    Err(Error::Tampered {
        entry: part_name(file, n as u32),
        why,
    })
}

/// Part `n` of `file`, which its index lists, is not in the archive.
pub(crate) fn part_missing(file: &str, n: usize) -> Error {
    Error::Tampered {
        entry: part_name(file, n as u32),
        why: "listed by its image's index but missing from the archive".into(),
    }
}

/// Part `n` of `file` is in the archive but not in its index.
pub(crate) fn part_unlisted(file: &str, n: usize) -> Error {
    Error::Tampered {
        entry: part_name(file, n as u32),
        why: "present in the archive but not in its image's index".into(),
    }
}

/// Reads what is left of the stream, so the count covers the end-of-archive blocks.
fn entries_done<R: Read>(tar: tar::Archive<R>) -> std::io::Result<u64> {
    std::io::copy(&mut tar.into_inner(), &mut std::io::sink())
}

/// Counts the bytes read through it.
pub(crate) struct Counted<R> {
    pub inner: R,
    pub n: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n
            .fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(k)
    }
}

pub(crate) fn read_error(e: std::io::Error, what: &str) -> Error {
    // The tar crate says "failed to read entire block" when the stream stops inside a block.
    if e.kind() == std::io::ErrorKind::UnexpectedEof || e.to_string().contains("entire block") {
        Error::Truncated(format!("{what}: {e}"))
    } else {
        Error::Corrupt(format!("{what}: {e}"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::archive::manifest::{FORMAT_VERSION, SourceHost};
    use crate::archive::writer::{ArchiveWriter, Compression};
    use crate::identity::Identity;

    /// An empty manifest for archives made in tests.
    pub(crate) fn manifest() -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            created: chrono::Utc::now(),
            container: "c1".into(),
            image: None,
            source: SourceHost::this_host(String::new()),
            entries: vec![],
            annotations: Default::default(),
        }
    }

    fn archive(id: &Identity, c: Compression) -> Vec<u8> {
        let mut w = ArchiveWriter::new(Vec::new(), c).unwrap();
        w.add_bytes("checkpoint/inventory.img", b"inventory")
            .unwrap();
        w.add_bytes("spec.dump", b"{}").unwrap();
        w.add_bytes("deleted.files", b"[]").unwrap();
        w.finish(manifest(), id).unwrap()
    }

    fn unpack_bytes(bytes: Vec<u8>, id: &Identity, dir: &Path) -> Result<Unpacked, Error> {
        let store = TrustStore::open(dir);
        unpack(
            std::io::Cursor::new(bytes),
            &dir.join("out"),
            Trust::Store {
                store: &store,
                own: id.fingerprint(),
            },
        )
    }

    /// An uncompressed archive of `entries` (in order) and a manifest of format `format`
    /// listing those `listed` says, signed by `id`: whatever a hostile or older writer
    /// could make.
    pub(crate) fn crafted(
        id: &Identity,
        entries: &[(String, Vec<u8>)],
        format: u32,
        listed: impl Fn(&str) -> bool,
    ) -> Vec<u8> {
        use sha2::Digest;
        let mut m = manifest();
        m.format = format;
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            b.append_data(&mut h, name, data.as_slice()).unwrap();
            if listed(name) {
                m.entries.push(manifest::Entry {
                    name: name.clone(),
                    sha256: hex::encode(sha2::Sha256::digest(data)),
                    size: data.len() as u64,
                });
            }
        }
        let signed = serde_json::to_vec(&SignedManifest::sign(&m, id)).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(signed.len() as u64);
        h.set_mode(0o600);
        b.append_data(&mut h, MANIFEST_NAME, signed.as_slice())
            .unwrap();
        b.into_inner().unwrap()
    }

    /// The record an index gives `data`.
    pub(crate) fn record(data: &[u8]) -> PartRecord {
        use sha2::Digest;
        PartRecord {
            size: data.len() as u64,
            sha256: sha2::Sha256::digest(data).into(),
        }
    }

    /// Three parts of `checkpoint/pages-5.img` and an image, then each case's index of the
    /// parts (or none), with what a restore must say of it: `Ok(())` for the good one.
    /// Every case but the last is format 3 (the parts listed by their index); the last is
    /// format 2, every part listed in the manifest, as ferry wrote until 2026-11-29.
    #[allow(clippy::type_complexity)]
    pub(crate) fn index_cases(
        id: &Identity,
    ) -> (
        Vec<Vec<u8>>,
        Vec<(
            &'static str,
            Vec<u8>,
            Result<(), (&'static str, &'static str)>,
        )>,
    ) {
        let parts: Vec<Vec<u8>> = (0..3u64)
            .map(|i| crate::archive::frames::tests::random(5000 + 700 * i as usize, i + 3))
            .collect();
        let records: Vec<PartRecord> = parts.iter().map(|p| record(p)).collect();
        let index = "checkpoint/pages-5.img.index";
        let with = |index_bytes: Option<Vec<u8>>, format: u32, list_parts: bool| {
            let mut entries: Vec<(String, Vec<u8>)> = parts
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("checkpoint/pages-5.img.part{i}"), p.clone()))
                .collect();
            // An empty index of an image with no parts, read first (its name sorts first):
            // it must not end the checks of the others.
            if format >= 3 {
                entries.push(("checkpoint/pages-1.img.index".into(), encode_index(&[])));
            }
            if let Some(b) = index_bytes {
                entries.push((index.to_string(), b));
            }
            entries.push(("checkpoint/inventory.img".into(), b"inv".to_vec()));
            crafted(id, &entries, format, |n| list_parts || !is_part(n))
        };
        let mut flipped = records.clone();
        flipped[1].sha256[3] ^= 1;
        let mut resized = records.clone();
        resized[2].size += 1;
        let p0 = "checkpoint/pages-5.img.part0";
        let p1 = "checkpoint/pages-5.img.part1";
        let p2 = "checkpoint/pages-5.img.part2";
        let p3 = "checkpoint/pages-5.img.part3";
        let cases = vec![
            ("good", with(Some(encode_index(&records)), 3, false), Ok(())),
            (
                "a part's digest differs from its record",
                with(Some(encode_index(&flipped)), 3, false),
                Err((p1, "its index says sha256")),
            ),
            (
                "a part's size differs from its record",
                with(Some(encode_index(&resized)), 3, false),
                Err((p2, "its index says")),
            ),
            (
                "the index lists fewer parts",
                with(Some(encode_index(&records[..2])), 3, false),
                Err((p2, "not in its image's index")),
            ),
            (
                "the index lists more parts",
                with(
                    Some(encode_index(&[records.clone(), vec![records[0]]].concat())),
                    3,
                    false,
                ),
                Err((p3, "missing from the archive")),
            ),
            ("no index", with(None, 3, false), Err((p0, "has no index"))),
            (
                "not an index",
                with(Some(b"not an index at all".to_vec()), 3, false),
                Err((index, "does not start as a ferry pages index")),
            ),
            (
                "parts listed in a format 3 manifest",
                with(Some(encode_index(&records)), 3, true),
                Err((p0, "only its image's index")),
            ),
            ("format 2", with(None, 2, true), Ok(())),
        ];
        (parts, cases)
    }

    /// The parts of a pages image are checked against its index (format 3), or against the
    /// manifest (format 2, which still reads), and every way they can disagree is refused
    /// naming the part.
    #[test]
    fn pages_parts_are_held_to_their_index() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(&d.path().join("id")).unwrap();
        let (parts, cases) = index_cases(&id);
        for (i, (what, bytes, want)) in cases.into_iter().enumerate() {
            let dir = d.path().join(format!("case{i}"));
            std::fs::create_dir(&dir).unwrap();
            check_case(what, unpack_bytes(bytes, &id, &dir), want, &parts);
        }
    }

    /// One of [`index_cases`] read: the good ones whole, the others refused as they say.
    pub(crate) fn check_case(
        what: &str,
        got: Result<Unpacked, Error>,
        want: Result<(), (&str, &str)>,
        parts: &[Vec<u8>],
    ) {
        match (got, want) {
            (Ok(u), Ok(())) => assert_eq!(
                std::fs::read(u.dir.join("checkpoint/pages-5.img")).unwrap(),
                parts.concat(),
                "{what}"
            ),
            (Err(e), Err((entry, says))) => {
                let text = e.to_string();
                assert!(
                    text.contains(entry) && text.contains(says),
                    "{what}: {text}"
                );
            }
            (Ok(_), Err(w)) => panic!("{what}: restored, but should say {w:?}"),
            (Err(e), Ok(())) => panic!("{what}: {e}"),
        }
    }

    /// The pages' records kept on a full disk: the error says where and that the storage's
    /// disk, not the archive's, needs space. The "disk" is a 4 KiB tmpfs (102 records).
    #[test]
    fn records_on_a_full_disk_say_which_disk() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk");
        crate::archive::stage::tests::small_disk(&disk, "4k");
        let id = Identity::load_or_create(&d.path().join("id")).unwrap();
        let r = (|| {
            let mut w = ArchiveWriter::new(Vec::new(), Compression::None)?;
            w.spill_in(&disk);
            for n in 0..300 {
                w.add_part("checkpoint/pages-1.img", n, vec![vec![n as u8]])?;
            }
            w.mark_tail()?;
            w.finish(manifest(), &id)
        })();
        let _ = nix::mount::umount2(&disk, nix::mount::MntFlags::MNT_DETACH);
        let e = r.expect_err("300 records fitted in 4 KiB").to_string();
        for says in [
            "the pages' records",
            disk.to_str().unwrap(),
            "ferry's storage, not the archive",
        ] {
            assert!(e.contains(says), "{says:?} not in: {e}");
        }
    }

    /// Every entry's bytes count, a long name's (written through the tar crate) too.
    #[test]
    fn content_bytes_count_every_entry() {
        let mut w = ArchiveWriter::new(Vec::new(), Compression::None).unwrap();
        w.add_bytes("spec.dump", b"12345").unwrap();
        let long = format!("checkpoint/{}.img", "x".repeat(120));
        w.add_bytes(&long, b"123").unwrap();
        w.add_part("checkpoint/pages-1.img", 0, vec![b"1234567".to_vec()])
            .unwrap();
        assert_eq!(w.content_bytes, 15);
    }

    /// What is held for the tail (the pagemaps, handed on in pieces while the pages stream)
    /// comes after the indexes, each entry whole; an entry held apart is refused.
    #[test]
    fn held_entries_come_in_the_tail_after_the_indexes() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(&d.path().join("id")).unwrap();
        let mut w = ArchiveWriter::new(Vec::new(), Compression::None).unwrap();
        w.spill_in(d.path());
        w.hold("checkpoint/pagemap-1.img", b"ab").unwrap();
        w.add_part("checkpoint/pages-9.img", 0, vec![b"pages".to_vec()])
            .unwrap();
        w.hold("checkpoint/pagemap-1.img", b"cd").unwrap();
        w.hold("checkpoint/pagemap-2.img", b"ef").unwrap();
        let e = w
            .hold("checkpoint/pagemap-1.img", b"gh")
            .unwrap_err()
            .to_string();
        assert!(e.contains("held apart"), "{e}");
        w.mark_tail().unwrap();
        let bytes = w.finish(manifest(), &id).unwrap();
        let names: Vec<String> = tar::Archive::new(bytes.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "checkpoint/pages-9.img.part0",
                "checkpoint/pages-9.img.index",
                "checkpoint/pagemap-1.img",
                "checkpoint/pagemap-2.img",
                "ferry.manifest"
            ]
        );
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let u = unpack_bytes(bytes, &id, &out).unwrap();
        let read = |f: &str| std::fs::read(u.dir.join(f)).unwrap();
        assert_eq!(read("checkpoint/pagemap-1.img"), b"abcd");
        assert_eq!(read("checkpoint/pagemap-2.img"), b"ef");
        assert_eq!(read("checkpoint/pages-9.img"), b"pages");
    }

    /// A reader that hands over one byte per read, as a pipe may in pieces.
    struct Trickle(std::io::Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    /// Another tool's checkpoint archive is named as such (and how to restore it), not
    /// called damaged or truncated.
    #[test]
    fn another_tools_checkpoint_archive_is_named_for_what_it_is() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(d.path()).unwrap();
        let tar_of = |entries: &[(&str, bool)]| {
            let mut b = tar::Builder::new(Vec::new());
            for (name, dir) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(if *dir { 0 } else { 4 });
                h.set_entry_type(if *dir {
                    tar::EntryType::Directory
                } else {
                    tar::EntryType::Regular
                });
                let data: &[u8] = if *dir { b"" } else { b"data" };
                b.append_data(&mut h, name, data).unwrap();
            }
            b.into_inner().unwrap()
        };
        let podman = tar_of(&[
            ("checkpoint", true),
            ("checkpoint/inventory.img", false),
            ("config.dump", false),
            ("spec.dump", false),
            ("network.status", false),
            ("rootfs-diff.tar", false),
        ]);
        let podman_artifacts = tar_of(&[("artifacts", true), ("checkpoint", true)]);
        let containerd = tar_of(&[("config.dump", false), ("status.dump", false)]);
        for (i, (bytes, tool, entry)) in [
            (podman, "podman", "network.status"),
            (podman_artifacts, "podman", "artifacts"),
            (containerd, "containerd", "status.dump"),
        ]
        .into_iter()
        .enumerate()
        {
            let out = d.path().join(format!("o{i}"));
            std::fs::create_dir(&out).unwrap();
            let Err(e) = unpack_bytes(bytes, &id, &out) else {
                panic!("{tool}'s archive was unpacked");
            };
            let e = e.to_string();
            assert!(
                e.contains(&format!("made by {tool}")) && e.contains(entry),
                "{tool}: {e}"
            );
        }
    }

    #[test]
    fn what_does_not_start_a_tar_stream_is_named_and_not_quoted() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(d.path()).unwrap();
        let text = "# secret-looking text, not an archive\n"
            .repeat(60)
            .into_bytes();
        let zstd_text = zstd::encode_all(&text[..], 1).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &text).unwrap();
        let gzip_text = gz.finish().unwrap();
        let cases: [(&str, Vec<u8>, &str); 6] = [
            ("empty", vec![], "the archive is empty"),
            ("text", text.clone(), "nor the start of zstd or gzip"),
            ("zstd text", zstd_text, "inside its zstd compression"),
            ("gzip text", gzip_text, "inside its gzip compression"),
            ("short", text[..100].to_vec(), "only 100 bytes"),
            // An empty tar: two zero blocks, a tar but no manifest.
            ("empty tar", vec![0; 1024], "ends without ferry.manifest"),
        ];
        for (i, (what, bytes, says)) in cases.into_iter().enumerate() {
            let out = d.path().join(format!("o{i}"));
            std::fs::create_dir(&out).unwrap();
            let Err(e) = unpack_bytes(bytes, &id, &out) else {
                panic!("{what} was unpacked");
            };
            let e = e.to_string();
            assert!(e.contains(says), "{what}: {e}");
            assert!(!e.contains("secret-looking"), "{what} is quoted: {e}");
        }
        // A whole archive handed over a byte at a time is still recognised, compressed or not.
        for (i, c) in [Compression::None, Compression::Zstd, Compression::Gzip]
            .into_iter()
            .enumerate()
        {
            let out = d.path().join(format!("t{i}"));
            std::fs::create_dir(&out).unwrap();
            let store = TrustStore::open(&out);
            let trust = Trust::Store {
                store: &store,
                own: id.fingerprint(),
            };
            let input = Trickle(std::io::Cursor::new(archive(&id, c)));
            unpack(input, &out.join("out"), trust).unwrap();
        }
    }

    /// The signer an archive names at its start is checked there (an untrusted one is
    /// refused before the rest is read: here the rest is missing, and the refusal is still
    /// about trust), and must be the one that signed the manifest.
    #[test]
    fn the_signer_named_at_the_start_is_checked_early_and_held_to_the_manifest() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(&d.path().join("a")).unwrap();
        let other = Identity::load_or_create(&d.path().join("b")).unwrap();
        let store = TrustStore::open(&d.path().join("trust"));
        let trust = || Trust::Store {
            store: &store,
            own: other.fingerprint(),
        };
        let mut w = ArchiveWriter::new(Vec::new(), Compression::None).unwrap();
        w.announce(&Announce {
            signer: Some(id.fingerprint()),
            ..Default::default()
        })
        .unwrap();
        w.add_bytes("checkpoint/pages-1.img.part0", &[7u8; 8192])
            .unwrap();
        w.add_bytes("spec.dump", b"{}").unwrap();
        let bytes = w.finish(manifest(), &id).unwrap();
        let half = bytes[..bytes.len() / 2].to_vec();
        let e = unpack(std::io::Cursor::new(half), &d.path().join("o1"), trust())
            .err()
            .expect("an untrusted half archive unpacked");
        assert!(matches!(e, Error::Untrusted { .. }), "{e}");

        // Named as one signer, signed by another: refused even where any signer may do.
        let mut w = ArchiveWriter::new(Vec::new(), Compression::Zstd).unwrap();
        w.announce(&Announce {
            signer: Some(other.fingerprint()),
            ..Default::default()
        })
        .unwrap();
        w.add_bytes("spec.dump", b"{}").unwrap();
        let bytes = w.finish(manifest(), &id).unwrap();
        let e = unpack(
            std::io::Cursor::new(bytes),
            &d.path().join("o2"),
            Trust::AnySigner,
        )
        .err()
        .expect("a mismatched signer unpacked");
        assert!(e.to_string().contains("as its signer at its start"), "{e}");
    }

    /// A manifest larger than a restore reads is never written: the checkpoint fails
    /// (before anything is released) instead of leaving an archive no restore takes.
    #[test]
    fn a_manifest_too_large_to_restore_fails_the_archive_not_the_restore() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(d.path()).unwrap();
        let mut w = ArchiveWriter::new(Vec::new(), Compression::None).unwrap();
        for n in 0..64 {
            w.add_bytes(&format!("checkpoint/pages-1.img.part{n}"), b"page")
                .unwrap();
        }
        w.limit_manifest(4096);
        let e = w.finish(manifest(), &id).expect_err("finished").to_string();
        for says in ["ferry.manifest", "64 entries", "too large", "--image-path"] {
            assert!(e.contains(says), "{says:?} missing: {e}");
        }

        // A header that claims more is refused before a byte of it is read.
        let mut h = tar::Header::new_gnu();
        h.set_path(MANIFEST_NAME).unwrap();
        h.set_size(manifest::MAX_SIGNED_SIZE + 1);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4096]);
        let out = d.path().join("big");
        std::fs::create_dir(&out).unwrap();
        let e = unpack_bytes(bytes, &id, &out)
            .err()
            .expect("unpacked")
            .to_string();
        assert!(e.contains("larger than any manifest ferry writes"), "{e}");
    }

    #[test]
    fn round_trip_every_compression() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(d.path()).unwrap();
        for (i, c) in [Compression::None, Compression::Gzip, Compression::Zstd]
            .into_iter()
            .enumerate()
        {
            let out = d.path().join(format!("o{i}"));
            std::fs::create_dir(&out).unwrap();
            let u = unpack_bytes(archive(&id, c), &id, &out).unwrap();
            assert_eq!(u.trusted_as.as_deref(), Some("this host"));
            assert_eq!(u.manifest.entries.len(), 3);
            assert_eq!(
                std::fs::read(u.dir.join("checkpoint/inventory.img")).unwrap(),
                b"inventory"
            );
        }
    }

    #[test]
    fn a_flipped_byte_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(d.path()).unwrap();
        let mut bytes = archive(&id, Compression::None);
        // The first entry's data starts after its 512-byte header.
        assert_eq!(&bytes[512..521], b"inventory");
        bytes[512] ^= 1;
        let e = unpack_bytes(bytes, &id, d.path()).err().unwrap();
        assert!(
            matches!(e, Error::Tampered { ref entry, .. } if entry == "checkpoint/inventory.img"),
            "{e}"
        );
    }

    #[test]
    fn truncation_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(d.path()).unwrap();
        let bytes = archive(&id, Compression::None);
        for cut in [2048, bytes.len() - 1, bytes.len() - 600] {
            let out = d.path().join(format!("cut{cut}"));
            std::fs::create_dir(&out).unwrap();
            let e = unpack_bytes(bytes[..cut].to_vec(), &id, &out)
                .err()
                .unwrap();
            assert!(matches!(e, Error::Truncated(_)), "cut at {cut}: {e}");
        }
    }

    #[test]
    fn an_unknown_signer_is_refused_unless_allowed() {
        let d = tempfile::tempdir().unwrap();
        let ours = Identity::load_or_create(&d.path().join("a")).unwrap();
        let theirs = Identity::load_or_create(&d.path().join("b")).unwrap();
        let bytes = archive(&theirs, Compression::Zstd);
        let e = unpack_bytes(bytes.clone(), &ours, d.path()).err().unwrap();
        assert!(matches!(e, Error::Untrusted { .. }), "{e}");
        let u = unpack(
            std::io::Cursor::new(bytes),
            &d.path().join("any"),
            Trust::AnySigner,
        )
        .unwrap();
        assert_eq!(u.signer, theirs.fingerprint());
    }

    #[test]
    fn parts_are_joined_in_order_and_only_in_order() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(d.path()).unwrap();
        // The writer keeps parts in order (add_part): the bad archives are written with
        // every entry whole, as a careless or hostile writer could.
        let build = |names: &[(&str, &[u8])], as_parts: bool| {
            let mut w = ArchiveWriter::new(Vec::new(), Compression::None).unwrap();
            for (n, data) in names {
                match split_part(n).filter(|_| as_parts) {
                    Some((file, k)) => w.add_part(file, k, vec![data.to_vec()]).unwrap(),
                    None => w.add_chunks(n, vec![data.to_vec()]).unwrap(),
                }
            }
            w.finish(manifest(), &id).unwrap()
        };
        let good = build(
            &[
                ("checkpoint/pages-9.img.part0", b"abc"),
                ("checkpoint/pages-9.img.part1", b"def"),
                ("checkpoint/pages-8.img.part0", b"gh"),
                ("checkpoint/inventory.img", b"i"),
            ],
            true,
        );
        let out = d.path().join("good");
        std::fs::create_dir(&out).unwrap();
        let u = unpack_bytes(good, &id, &out).unwrap();
        assert_eq!(
            std::fs::read(u.dir.join("checkpoint/pages-9.img")).unwrap(),
            b"abcdef"
        );
        for (i, bad) in [
            vec![
                ("checkpoint/pages-9.img.part1", &b"def"[..]),
                ("checkpoint/pages-9.img.part0", b"abc"),
            ],
            vec![
                ("checkpoint/pages-9.img.part0", &b"abc"[..]),
                ("checkpoint/pages-9.img.part2", b"def"),
            ],
            vec![
                ("checkpoint/pages-9.img", &b"abc"[..]),
                ("checkpoint/pages-9.img.part0", b"def"),
            ],
            // An image's parts come together: nothing between them.
            vec![
                ("checkpoint/pages-9.img.part0", &b"abc"[..]),
                ("checkpoint/inventory.img", b"i"),
                ("checkpoint/pages-9.img.part1", b"def"),
            ],
            vec![
                ("checkpoint/pages-9.img.part0", &b"abc"[..]),
                ("checkpoint/pages-8.img.part0", b"gh"),
                ("checkpoint/pages-9.img.part1", b"def"),
            ],
            // And all before their index.
            vec![
                ("checkpoint/pages-9.img.part0", &b"abc"[..]),
                ("checkpoint/pages-9.img.index", b"x"),
                ("checkpoint/pages-9.img.part1", b"def"),
            ],
        ]
        .into_iter()
        .enumerate()
        {
            let out = d.path().join(format!("bad{i}"));
            std::fs::create_dir(&out).unwrap();
            let e = unpack_bytes(build(&bad, false), &id, &out).err().unwrap();
            assert!(matches!(e, Error::BadEntry { .. }), "case {i}: {e}");
        }
    }

    #[test]
    fn entry_names_are_checked() {
        assert!(is_allowed("checkpoint/pages-1.img").is_ok());
        assert!(is_allowed("spec.dump").is_ok());
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "checkpoint/../x",
            "checkpoint/a/b",
            "other",
        ] {
            assert!(is_allowed(bad).is_err(), "{bad}");
        }
    }
}
