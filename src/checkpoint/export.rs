//! `ferry checkpoint ID -e FILE`: the container frozen, dumped, and written with its rootfs
//! changes as one signed archive. The container stays frozen from the dump until the archive
//! is complete, so the archive is one consistent moment; a failure thaws it and leaves it
//! running as it was.

use crate::archive::manifest::{FORMAT_VERSION, ImageRef, Manifest, SourceHost};
use crate::archive::pages;
use crate::archive::writer::{Announce, ArchiveWriter, Compression};
use crate::checkpoint::CheckpointOptions;
use crate::checkpoint::guard::FreezeGuard;
use crate::checkpoint::output::Output;
use crate::criu::page_server;
use crate::identity::Identity;
use crate::runtime::error::{Context, Error, Result};
use crate::runtime::{Container, Status};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `config.dump`: ferry's own record of the container, what restore needs besides the spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub image: Option<ImageRef>,
    pub created: chrono::DateTime<chrono::Utc>,
    /// False when the rootfs diff was left out (`--ignore-rootfs`).
    pub rootfs_included: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    pub checkpoint: CheckpointOptions,
    /// "-" for stdout.
    pub output: PathBuf,
    pub compression: Compression,
    pub ignore_rootfs: bool,
    /// Keep the temporary CRIU image and work directory (for debugging).
    pub keep: bool,
}

/// What `export` returns: its statistics, and the thaw guard of a container left frozen
/// for the caller to release (drop it once released).
pub struct Exported {
    pub stats: ExportStats,
    pub guard: Option<FreezeGuard>,
}

/// Phase timings and sizes, for `--print-stats` and the benchmark.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportStats {
    pub criu: Option<crate::criu::stats::DumpStats>,
    pub freeze_ms: f64,
    pub dump_ms: f64,
    pub rootfs_diff_ms: f64,
    pub archive_ms: f64,
    /// Of the dump and archive phases: time the archive waited on its compressor, and on
    /// writing the compressed bytes out (including the final fdatasync).
    pub compress_ms: f64,
    pub write_ms: f64,
    /// Of `write_ms`: the final flush, which for a file is its fdatasync (what is left to
    /// reach the disk once everything is written) and the durable rename that names it.
    pub sync_ms: f64,
    pub total_ms: f64,
    /// From the freeze until the archive was complete and, with `--leave-running`, the
    /// container thawed again: the pause its clients saw. (CRIU's own `frozen_time` counts
    /// only CRIU's part of it.)
    pub frozen_ms: f64,
    /// How CRIU locked the network namespace (checkpoint::netlock).
    pub network_lock: &'static str,
    pub images_bytes: u64,
    pub rootfs_diff_bytes: u64,
    pub archive_bytes: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Counts what is written (the archive's size on a pipe) and the time writing it took.
struct Counting<W> {
    inner: W,
    n: u64,
    spent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Of `spent`: the time in `flush`.
    flushing: Duration,
}

impl<W> Counting<W> {
    fn time<T>(&mut self, f: impl FnOnce(&mut W) -> T) -> (T, Duration) {
        let t = Instant::now();
        let r = f(&mut self.inner);
        let took = t.elapsed();
        self.spent
            .fetch_add(took.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        (r, took)
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // An interrupt stops the archive here; CRIU's dump then fails the ordinary way.
        crate::sys::interrupt::check()?;
        let n = self.time(|w| w.write(b)).0?;
        self.n += n as u64;
        Ok(n)
    }
    fn write_vectored(&mut self, b: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        crate::sys::interrupt::check()?;
        let n = self.time(|w| w.write_vectored(b)).0?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let (r, took) = self.time(|w| w.flush());
        self.flushing += took;
        r
    }
}

/// What `checkpoint -e` makes ready before it freezes the container, so that the frozen
/// time is the dump's and the archive's only: nothing here depends on the frozen state.
struct Prepared<'a> {
    /// The archive, open and announced (`ArchiveWriter::announce`); `written` counts the
    /// time spent in its writes.
    w: ArchiveWriter<Counting<Output>>,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The output is a stream (whole for its reader once its tail is out), not a file.
    stream: bool,
    /// The output as errors name it.
    target: String,
    work: &'a std::path::Path,
    /// The overlay's upper dir and lower layers, unless --ignore-rootfs.
    layers: Option<(PathBuf, Vec<PathBuf>)>,
    identity: &'a Identity,
    /// What the manifest says of this host.
    source: SourceHost,
    /// `spec.dump` and `config.dump`, and the image the manifest names.
    spec: Vec<u8>,
    config: Vec<u8>,
    image: Option<ImageRef>,
}

/// The archive on `out`, its writes timed into `written`, with its announcement (what a
/// reader can refuse at once) written: all before the container is frozen.
fn open_archive(
    mut out: Output,
    opts: &ExportOptions,
    announce: &Announce,
    written: &std::sync::Arc<std::sync::atomic::AtomicU64>,
    target: &str,
) -> Result<ArchiveWriter<Counting<Output>>> {
    let werr = |e: crate::archive::writer::Error| Error::Other(format!("{target}: {e}"));
    // --leave-running: the container is thawed before the last sync (`export`).
    if opts.checkpoint.leave_running {
        out.defer_sync();
    }
    let mut w = ArchiveWriter::new(
        Counting {
            inner: out,
            n: 0,
            spent: written.clone(),
            flushing: Duration::ZERO,
        },
        opts.compression,
    )
    .map_err(werr)?;
    w.announce(announce).map_err(werr)?;
    w.progress = crate::progress::Progress::bytes("checkpoint", None);
    Ok(w)
}

/// A directory tree (`upper` over `lowers`, see archive::diff) as the tar entry `name`. A tar
/// entry needs its size before its bytes, so the tree is walked twice: once for the size
/// (metadata only, no file read), once for real through a pipe from a thread. The container
/// is frozen, so the two passes must agree.
fn add_tree<W: Write>(
    w: &mut ArchiveWriter<W>,
    name: &str,
    upper: &std::path::Path,
    lowers: &[PathBuf],
) -> Result<crate::archive::DiffSummary> {
    let size = crate::archive::diff::diff_tar_size(upper, lowers)
        .map_err(|e| Error::Other(e.to_string()))?;
    let (reader, mut writer) = std::io::pipe().ctx(|| "pipe")?;
    let (upper2, lowers2) = (upper.to_path_buf(), lowers.to_vec());
    let producer = std::thread::spawn(move || {
        crate::archive::diff::write_diff(&upper2, &lowers2, &mut writer)
    });
    let added = w.add_reader(name, size, reader);
    let summary = producer
        .join()
        .map_err(|_| Error::Other(format!("the {name} writer panicked")))?
        .map_err(|e| Error::Other(e.to_string()))?;
    added.map_err(|e| Error::Other(e.to_string()))?;
    if summary.bytes != size {
        return Err(Error::Other(format!(
            "the container's files changed while frozen ({size} then {} bytes of {name})",
            summary.bytes
        )));
    }
    Ok(summary)
}

impl Container {
    /// The CRIU dump, its memory going straight into the archive `w` while CRIU dumps: CRIU
    /// sends it to our page server (one thread), whose buffers the archive thread writes out
    /// as they come. Returns the writer for the rest of the archive.
    fn dump_into<W: Write + Send + 'static>(
        &self,
        mut ck: crate::checkpoint::CheckpointOptions,
        mut w: ArchiveWriter<W>,
        target: &str,
    ) -> Result<(crate::criu::DumpReport, ArchiveWriter<W>)> {
        let werr = |e: crate::archive::writer::Error| Error::Other(format!("{target}: {e}"));
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().ctx(|| "socketpair for criu's pages")?;
        for s in [ours.as_fd(), theirs.as_fd()] {
            // 64 MiB in flight, not the default 200 KiB: CRIU alternates between draining
            // pages from the tasks and sending them, and a deep socket lets it drain the
            // next batch while we still archive the last (1 GiB: 1.12 s -> 1.0 s, 4 MiB ->
            // 64 MiB; more gained nothing). The socket holds references to the spliced
            // pages, not copies.
            use nix::sys::socket::{setsockopt, sockopt};
            let _ = setsockopt(&s, sockopt::SndBufForce, &(64 << 20));
            let _ = setsockopt(&s, sockopt::RcvBufForce, &(64 << 20));
        }
        let (events_tx, events) = std::sync::mpsc::sync_channel(4);
        let (pool_tx, pool) = std::sync::mpsc::sync_channel(32);
        w.recycle_into(pool_tx);
        let archiver = std::thread::spawn(move || {
            let r = pages::write_events(&mut w, "checkpoint", events);
            (w, r)
        });
        let server = std::thread::spawn(move || {
            let mut sock = ours;
            let mut sink = pages::ChannelSink {
                tx: events_tx,
                pool,
            };
            page_server::serve(&mut sock, &mut sink)
        });
        ck.page_sink = Some(std::sync::Arc::new(std::os::fd::OwnedFd::from(theirs)));
        let dumped = self.dump(&ck);
        // Our copy of CRIU's end closed: if CRIU never connected, the server sees the end.
        drop(ck);
        let served = server
            .join()
            .map_err(|_| Error::Other("the page server thread panicked".into()))?;
        let (w, archived) = archiver
            .join()
            .map_err(|_| Error::Other("the archive thread panicked".into()))?;
        // The first cause wins: an archive that could not be written (a full disk) makes
        // the page server hang up, which makes the dump fail.
        archived.map_err(werr)?;
        match (dumped, served) {
            (Err(e), Err(page_server::Error::Sink(s))) => {
                Err(Error::Other(format!("{target}: {s} (and so: {e})")))
            }
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(Error::Other(e.to_string())),
            (Ok(r), Ok(_)) => Ok((r, w)),
        }
    }

    /// Refuses `path` (what `written` names) when it is inside what the container's release
    /// removes: its state directory and, for a container made from an image, its bundle in
    /// ferry's storage (config.json, the rootfs mount, the overlay's upper and work
    /// directories). An archive there would be deleted with the source it replaces (and in
    /// the upper directory it would change the rootfs diff being taken). A path that does
    /// not exist yet is judged by its nearest ancestor that does.
    pub(crate) fn check_outlives(&self, path: &Path, written: &str) -> Result<()> {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        // A path that cannot be resolved at all is for whoever opens it to report.
        let Some(resolved) = absolute
            .ancestors()
            .find_map(|a| std::fs::canonicalize(a).ok())
        else {
            return Ok(());
        };
        let mut owned = vec![("state directory", self.dir.clone())];
        if let Some(img) = &self.record.image {
            owned.push(("bundle and root filesystem", img.bundle.clone()));
        }
        for (what, dir) in owned {
            if let Ok(dir) = std::fs::canonicalize(&dir)
                && resolved.starts_with(&dir)
            {
                return Err(Error::Other(format!(
                    "{} is inside the container's own {what} ({}), which goes with the \
                     container once it is checkpointed: {written} would be deleted with it. \
                     Write it somewhere else",
                    path.display(),
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// The checkpoint, its archive complete (durable, for a file). Unless
    /// `--leave-running`, the container is left frozen for the caller to release (`delete`),
    /// with its thaw guard still watching until the caller drops it.
    pub fn export(&self, opts: &ExportOptions) -> Result<Exported> {
        let t0 = Instant::now();
        let status = self.check_checkpointable(false)?;
        if self.record.image.is_none() && !opts.checkpoint.leave_running {
            return Err(Error::Other(format!(
                "container {:?} was not made from an image in ferry's store, and `ferry \
                 restore -i` rebuilds a container's rootfs from one: nothing could restore this \
                 archive after its source is gone. Checkpoint it runc-style (`ferry checkpoint \
                 --image-path DIR {}`, restored with `ferry restore --image-path DIR --bundle \
                 BUNDLE {}`), or add --leave-running to keep it running",
                self.id, self.id, self.id
            )));
        }
        if opts.output != Path::new("-") {
            self.check_outlives(&opts.output, "the archive")?;
        }
        let layers = if opts.ignore_rootfs {
            None
        } else {
            Some(self.rootfs_layers().map_err(|e| {
                Error::Other(format!(
                    "{e}; or give --ignore-rootfs to leave its files out"
                ))
            })?)
        };
        // criu must answer before anything is frozen (a missing or broken criu is an error
        // here, not a frozen container); the answer is kept for the dump. What the manifest
        // says of this host is read now too, not while the container is frozen.
        let v = crate::criu::Criu::new()
            .version_cached(&self.runtime.root)
            .map_err(|e| Error::Other(e.to_string()))?;
        let source = SourceHost::this_host(format!("{}.{}.{}", v.major, v.minor, v.sublevel));
        let spec = serde_json::to_vec_pretty(&self.record.spec)
            .map_err(|e| Error::Other(e.to_string()))?;
        let image = self.record.image.as_ref().map(|i| ImageRef {
            name: i.image.clone(),
            digest: i.digest.clone(),
        });
        let config = serde_json::to_vec_pretty(&ContainerConfig {
            id: self.id.clone(),
            image: image.clone(),
            created: self.record.created,
            rootfs_included: layers.is_some(),
        })
        .unwrap_or_default();
        let storage = &self.runtime.storage;
        let identity =
            Identity::load_or_create(storage).map_err(|e| Error::Other(e.to_string()))?;
        let announce = Announce {
            signer: Some(identity.fingerprint()),
            image: image.clone(),
            id: Some(self.id.clone()),
            terminal: crate::runtime::bundle::has_terminal(&self.record.spec),
        };
        crate::archive::stage::sweep_stale(&storage.join("work"));
        let work =
            storage
                .join("work")
                .join(format!("checkpoint-{}-{}", self.id, std::process::id()));
        std::fs::create_dir_all(&work).ctx(|| format!("create {}", work.display()))?;
        let was_paused = status == Status::Paused;
        // Started now, so that it is ready by the freeze (checkpoint::guard).
        let mut guard = if was_paused {
            None
        } else {
            FreezeGuard::start(&self.runtime, &self.id, &opts.output)
        };
        let cgroup = self.cgroup()?;
        let mut stats = ExportStats::default();
        // The output opens before anything is frozen: a path that cannot be written is an
        // error with the container untouched.
        let target = if opts.output == Path::new("-") {
            "standard output".to_string()
        } else {
            opts.output.display().to_string()
        };
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let opened =
            Output::open(&opts.output, &self.id, !opts.checkpoint.leave_running).and_then(|out| {
                let stream = matches!(out, Output::Stream(_));
                open_archive(out, opts, &announce, &written, &target).map(|w| (w, stream))
            });
        let (mut w, stream) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&work);
                return Err(e);
            }
        };
        // The pages' records wait for their indexes beside CRIU's images, not in /tmp.
        w.spill_in(&work);

        // Decided before the freeze: the first answer about criu's nftables costs a criu run.
        let mut opts = opts.clone();
        // Asked before the freeze (it scans every process's namespace), and only where the
        // lock or the fresh-namespace check can use it: not with --tcp-established.
        let unreachable = !opts.checkpoint.tcp_established && self.netns_unreachable();
        opts.checkpoint.netns_unreachable = Some(unreachable);
        let lock = self.network_lock(&opts.checkpoint, || unreachable);
        opts.checkpoint.network_lock = Some(lock);
        stats.network_lock = lock.as_str();
        let opts = &opts;

        // Freeze first: CRIU leaves a frozen cgroup frozen after a dump that leaves the tasks
        // running, so nothing changes between the dump and the rootfs diff.
        let t = Instant::now();
        if !was_paused {
            cgroup.freeze()?;
        }
        stats.freeze_ms = ms(t.elapsed());
        let ready = Prepared {
            w,
            written,
            stream,
            target,
            work: &work,
            layers,
            identity: &identity,
            source,
            spec,
            config,
            image,
        };
        // With --leave-running the container is thawed in the end anyway: killed at any
        // point, the guard thaws it. Otherwise, once the archive may be whole, it must not.
        let committing = if opts.checkpoint.leave_running {
            None
        } else {
            guard.as_mut()
        };
        // Back to the state it was in: a container paused by its owner stays paused.
        let unfreeze = || if was_paused { Ok(()) } else { cgroup.thaw() };
        let mut thawed = None;
        let result = match self.export_frozen(opts, ready, &mut stats, committing) {
            // The archive is complete; the caller releases the source (`delete`), still frozen.
            Ok(None) => Ok(()),
            // --leave-running: the container runs on before the archive's last sync and its
            // name, which its pause need not include.
            Ok(Some(out)) => unfreeze().and_then(|()| {
                thawed = Some(Instant::now());
                commit(out, &opts.output, &mut stats)
            }),
            Err(e) => Err(e),
        };
        stats.frozen_ms = ms(thawed.unwrap_or_else(Instant::now).duration_since(t));
        let outcome = match result {
            Ok(()) => Ok(()),
            // An archive not committed is gone by itself (checkpoint::output). A commit
            // that failed after the thaw (--leave-running) has nothing left to thaw.
            Err(e) => {
                match thawed.map_or_else(unfreeze, |_| Ok(())) {
                    // Only said when true: a `ferry kill` is not held off by the checkpoint.
                    Ok(()) if matches!(self.status(), Ok(Status::Running | Status::Paused)) => {
                        Err(Error::Other(format!(
                            "{e}\nno checkpoint was made; container {:?} runs on as before",
                            self.id
                        )))
                    }
                    Ok(()) => Err(Error::Other(format!(
                        "{e}\nno checkpoint was made, and container {:?} no longer runs: it \
                         was stopped while it was being checkpointed",
                        self.id
                    ))),
                    Err(thaw) => Err(crate::runtime::create::with_cleanup(e, Err(thaw))),
                }
            }
        };
        if !opts.keep {
            let _ = std::fs::remove_dir_all(&work);
        }
        outcome?;
        stats.total_ms = ms(t0.elapsed());
        Ok(Exported {
            stats,
            // Done with, once the container is thawed again.
            guard: guard.filter(|_| !opts.checkpoint.leave_running),
        })
    }

    fn export_frozen(
        &self,
        opts: &ExportOptions,
        ready: Prepared,
        stats: &mut ExportStats,
        mut committing: Option<&mut FreezeGuard>,
    ) -> Result<Option<Output>> {
        let Prepared {
            w,
            written,
            stream,
            target,
            work,
            layers,
            identity,
            source,
            spec,
            config,
            image,
        } = ready;
        let werr = |e: crate::archive::writer::Error| Error::Other(format!("{target}: {e}"));

        let t = Instant::now();
        let images = work.join("checkpoint");
        let mut ck = opts.checkpoint.clone();
        ck.image_path = images.clone();
        ck.work_path = Some(work.join("criu-work"));
        ck.leave_running = true;
        let devshm = crate::checkpoint::externals::devshm_tmpfs(&self.record.spec).is_some();
        ck.external_devshm = devshm;
        let (report, mut w) = self.dump_into(ck, w, &target)?;
        crate::sys::interrupt::check().map_err(|e| Error::Other(e.to_string()))?;
        stats.dump_ms = ms(t.elapsed());
        stats.criu = report.stats.clone();

        let t = Instant::now();
        if opts.keep {
            w.add_dir("checkpoint", &images).map_err(werr)?;
        } else {
            w.add_dir_consuming("checkpoint", &images).map_err(werr)?;
        }
        stats.images_bytes = w.content_bytes;
        w.add_bytes("spec.dump", &spec).map_err(werr)?;
        w.add_bytes("config.dump", &config).map_err(werr)?;
        if let Some((upper, lowers)) = &layers {
            let td = Instant::now();
            let summary = add_tree(&mut w, "rootfs-diff.tar", upper, lowers)?;
            let deleted: Vec<String> = summary
                .deleted
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            w.add_bytes(
                "deleted.files",
                &serde_json::to_vec(&deleted).unwrap_or_default(),
            )
            .map_err(werr)?;
            stats.rootfs_diff_bytes = summary.bytes;
            stats.rootfs_diff_ms = ms(td.elapsed());
        }
        if devshm {
            // Left out of CRIU's images (an external mount): its files, as podman keeps them.
            let shm = PathBuf::from(format!("/proc/{}/root/dev/shm", self.pid()));
            add_tree(&mut w, "devshm-checkpoint.tar", &shm, &[])
                .map_err(|e| Error::Other(format!("the container's /dev/shm: {e}")))?;
        }
        let stats_file = work.join("criu-work").join("stats-dump");
        if stats_file.exists() {
            w.add_file("stats-dump", &stats_file).map_err(werr)?;
        }
        let manifest = Manifest {
            format: FORMAT_VERSION,
            created: chrono::Utc::now(),
            container: self.id.clone(),
            image,
            source,
            entries: vec![],
            annotations: self
                .record
                .spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        let spent_writing =
            || Duration::from_nanos(written.load(std::sync::atomic::Ordering::Relaxed));
        // The compressor's share: time in it less the time it spent writing out.
        stats.compress_ms = ms(w.encode_time().saturating_sub(spent_writing()));
        // A stream is whole for its reader once its signed tail is out; a file once named.
        if stream && let Some(g) = committing.as_mut() {
            g.committing();
        }
        let counted = w.finish(manifest, identity).map_err(werr)?;
        stats.write_ms = ms(spent_writing());
        stats.sync_ms = ms(counted.flushing);
        stats.archive_bytes = counted.n;
        if opts.checkpoint.leave_running {
            stats.archive_ms = ms(t.elapsed());
            return Ok(Some(counted.inner));
        }
        // Durable and named: only now may the caller release the source.
        if !stream && let Some(g) = committing.as_mut() {
            g.committing();
        }
        commit(counted.inner, &opts.output, stats)?;
        stats.archive_ms = ms(t.elapsed());
        Ok(None)
    }
}

/// Makes the archive durable and names it (checkpoint::output), counting the time as the
/// archive's writing and sync.
fn commit(out: Output, path: &std::path::Path, stats: &mut ExportStats) -> Result<()> {
    let t = Instant::now();
    let r = out.commit().ctx(|| format!("write {}", path.display()));
    let spent = ms(t.elapsed());
    stats.write_ms += spent;
    stats.sync_ms += spent;
    r
}
