//! `restore -i` of an uncompressed archive in a file, with the memory pages fed to CRIU while
//! it restores (docs/checkpoint.md, "Pages fed while CRIU restores").
//!
//! [`unpack`] reads the tar headers first (seeking past the data), checks the manifest's
//! signature and signer, checks that the archive lists exactly the manifest's entries at
//! their sizes, and verifies and stages every entry but the pages parts. The pages images
//! are then made empty on the stage and gated (archive::gate): CRIU may start, and each of its
//! reads waits until the range it wants has been written and its parts' digests matched.
//! The [`Feed`] does that on every core, in archive order; a part that does not match stops
//! it and refuses CRIU's waiting read, so CRIU fails before anything restored runs, and the
//! restore's pre-resume notification waits for the whole feed ([`Feed::wait`]).

use crate::archive::gate::Gate;
use crate::archive::reader::{
    Admission, Admitted, Error, Trust, Unpacked, check_digest, check_listing, check_signer,
    end_marker_missing, read_error, read_manifest,
};
use crate::archive::stage::Stage;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// How much of a part is read, hashed and written at once.
const CHUNK: u64 = 1 << 20;

/// Whether `path` is an archive [`unpack`] can read: a regular file, not compressed.
pub fn applies(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = [0u8; 4];
    if f.read_exact_at(&mut head, 0).is_err() {
        return false;
    }
    !head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) && !head.starts_with(&[0x1f, 0x8b])
}

/// One part of a pages image: where its data is in the archive and in the staged file.
struct Part {
    name: String,
    file: usize,
    /// Offset of the data in the archive.
    at: u64,
    /// Offset in the staged file.
    offset: u64,
    size: u64,
    sha256: String,
}

/// Reads `archive` (see [`applies`]) into `stage` (fresh, empty, on a filesystem the gate
/// works on) and starts feeding its pages; see the module doc.
pub fn unpack(archive: &Path, stage: &mut Stage, trust: Trust) -> Result<(Unpacked, Feed), Error> {
    let file = File::open(archive).map_err(|e| Error::Corrupt(format!("open: {e}")))?;
    stage.create_dir("checkpoint")?;
    let mut admission = Admission::default();
    // Whole entries: name, staged file, data offset, size.
    let mut wholes: Vec<(String, String, u64, u64)> = vec![];
    let mut parts: Vec<Part> = vec![];
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
        let name = entry
            .path()
            .map_err(|e| Error::Corrupt(e.to_string()))?
            .to_string_lossy()
            .into_owned();
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
                part: Some(_),
            } => {
                let i = match files.iter().position(|f| f.0 == file) {
                    Some(i) => i,
                    None => {
                        files.push((file, 0));
                        files.len() - 1
                    }
                };
                parts.push(Part {
                    name,
                    file: i,
                    at,
                    offset: files[i].1,
                    size,
                    sha256: String::new(),
                });
                files[i].1 += size;
            }
        }
    }
    let signed = signed.ok_or_else(|| {
        Error::Truncated("it ends without ferry.manifest (its last entry)".into())
    })?;
    let len = file
        .metadata()
        .map_err(|e| Error::Corrupt(e.to_string()))?
        .len();
    if len < manifest_end + 1024 {
        return Err(end_marker_missing());
    }
    let (manifest, signer, trusted_as) = check_signer(signed, trust)?;
    let sizes: BTreeMap<String, u64> = wholes
        .iter()
        .map(|w| (w.0.clone(), w.3))
        .chain(parts.iter().map(|p| (p.name.clone(), p.size)))
        .collect();
    let listed = check_listing(&manifest, &sizes)?;
    for p in &mut parts {
        p.sha256 = listed[p.name.as_str()].sha256.clone();
    }
    for (name, staged, at, size) in &wholes {
        stage.create(staged)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK.min(*size) as usize];
        let mut done = 0;
        while done < *size {
            let n = CHUNK.min(size - done) as usize;
            file.read_exact_at(&mut buf[..n], at + done)
                .map_err(|e| read_error(e, name))?;
            h.update(&buf[..n]);
            stage.write(&buf[..n])?;
            done += n as u64;
        }
        check_digest(
            name,
            &hex::encode(h.finalize()),
            &listed[name.as_str()].sha256,
        )?;
    }
    // The pages files are opened for writing before the gate marks them: reads and writes
    // through a file opened earlier are never held.
    let mut outs = vec![];
    let mut gated = vec![];
    for (staged, size) in &files {
        let path = stage.dir().join(staged);
        let out = std::fs::OpenOptions::new()
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
    let gate = Arc::new(Gate::new(&gated).map_err(|e| Error::Write {
        path: stage.dir().to_path_buf(),
        source: e,
    })?);
    let feed = Feed::start(file, outs, parts, gate);
    let unpacked = Unpacked {
        dir: stage.dir().to_path_buf(),
        manifest,
        signer,
        trusted_as,
    };
    Ok((unpacked, feed))
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
}

impl Feed {
    fn start(archive: File, outs: Vec<(PathBuf, File)>, parts: Vec<Part>, gate: Arc<Gate>) -> Feed {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (stop, gate) = (stop.clone(), gate.clone());
            std::thread::spawn(move || {
                let r = fill(&archive, &outs, &parts, &gate, &stop);
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
        }
    }

    /// Waits until every part is verified and written; the first part that failed, as a
    /// message (for CRIU's pre-resume notification, which then aborts the restore).
    pub fn wait(&mut self) -> Result<(), String> {
        if self.outcome.is_none() {
            let r = match self.worker.take().map(|w| w.join()) {
                Some(Ok(r)) => r,
                Some(Err(_)) => Err(Error::Corrupt("the pages feed panicked".into())),
                None => Ok(()),
            };
            self.took = Some(self.started.elapsed());
            self.outcome = Some(r);
        }
        match &self.outcome {
            Some(Err(e)) => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    /// [`wait`](Self::wait), then ungates the files; how long the feed took.
    pub fn finish(&mut self) -> Result<std::time::Duration, Error> {
        let _ = self.wait();
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

/// Verifies and writes the parts on every core, and opens the gate over each file's prefix
/// of finished parts.
fn fill(
    archive: &File,
    outs: &[(PathBuf, File)],
    parts: &[Part],
    gate: &Gate,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    // Which parts are done, and how many from the first are.
    let done = Mutex::new((vec![false; parts.len()], 0usize));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4);
    let work = || -> Result<(), Error> {
        let mut buf = vec![0u8; CHUNK as usize];
        loop {
            if stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(p) = parts.get(k) else {
                return Ok(());
            };
            let r = feed_part(archive, &outs[p.file], p, &mut buf);
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
                gate.fail();
                return r;
            }
            let mut d = done.lock().unwrap_or_else(|e| e.into_inner());
            d.0[k] = true;
            while d.1 < parts.len() && d.0[d.1] {
                let q = &parts[d.1];
                gate.advance(q.file, q.offset + q.size);
                d.1 += 1;
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
        return Err(Error::Corrupt(
            "the restore stopped before its pages were read".into(),
        ));
    }
    Ok(())
}

fn feed_part(archive: &File, out: &(PathBuf, File), p: &Part, buf: &mut [u8]) -> Result<(), Error> {
    let mut h = Sha256::new();
    let mut done = 0;
    while done < p.size {
        let n = CHUNK.min(p.size - done) as usize;
        archive
            .read_exact_at(&mut buf[..n], p.at + done)
            .map_err(|e| read_error(e, &p.name))?;
        h.update(&buf[..n]);
        out.1
            .write_all_at(&buf[..n], p.offset + done)
            .map_err(|e| Error::Write {
                path: out.0.clone(),
                source: e,
            })?;
        done += n as u64;
    }
    check_digest(&p.name, &hex::encode(h.finalize()), &p.sha256)
}
