//! `ferry restore -i FILE`: an archive verified, its image found in the store, a new overlay
//! rootfs with the container's changes applied, then CRIU restores into it. Any failure
//! removes everything made; the archive file is never touched.
//!
//! An archive file (uncompressed, or zstd with a tail mark) has its signature, signer and
//! every entry but the memory pages verified before CRIU starts; the pages are then verified
//! and staged while CRIU restores, each of CRIU's reads held until its range is verified,
//! and nothing restored runs before all of them are (archive::feed, archive::gate). A pipe,
//! a gzip archive or `--verify-first` is verified whole before CRIU starts, unpacked into a
//! private tmpfs when memory allows (archive/stage.rs). Either way the images are
//! scratch, read once by CRIU, which punches them out as it restores (`auto_dedup`), so
//! memory holds them once, not twice.

use crate::archive::reader::{self, Trust, Unpacked};
use crate::archive::stage::{Place, Stage};
use crate::checkpoint::RestoreOptions;
use crate::checkpoint::export::ContainerConfig;
use crate::checkpoint::restore::{attach_feed, finish_feed};
use crate::identity::{Identity, TrustStore};
use crate::image::Store;
use crate::runtime::error::{Context, Error, Result};
use crate::runtime::from_image::ImageRootfs;
use crate::runtime::{Runtime, create::with_cleanup};
use oci_spec::runtime::Spec;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Default)]
pub struct ImportOptions {
    /// "-" for stdin.
    pub input: PathBuf,
    pub name: Option<String>,
    pub detach: bool,
    pub keep: bool,
    pub allow_untrusted: bool,
    /// Verify the whole archive before CRIU starts, rather than feeding it the pages as
    /// they are verified (archive::feed).
    pub verify_first: bool,
    /// The runc-style restore flags (tcp, file locks, pid file, console socket, …).
    pub restore: RestoreOptions,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct ImportStats {
    pub verify_ms: f64,
    pub rootfs_ms: f64,
    pub restore_ms: f64,
    pub total_ms: f64,
    /// Where the archive was unpacked: "tmpfs", "disk", or "spilled" (tmpfs, then disk).
    pub stage: Place,
    /// Why there.
    pub stage_reason: String,
    /// Whether CRIU punched out staged pages as it restored them (always, except with
    /// --keep).
    pub dedup: bool,
    /// How CRIU locked the network namespace (checkpoint::netlock).
    pub network_lock: &'static str,
    /// "while restoring" when the pages were verified and fed to CRIU as it restored
    /// (archive::feed), "before restoring" when the whole archive was verified first.
    pub pages_verified: &'static str,
    /// How long verifying and writing the pages took, from when CRIU could start.
    pub feed_ms: f64,
    /// Bytes of the restored memory ferry faulted in ahead of CRIU's reads
    /// (archive::prefault).
    pub prefaulted_bytes: u64,
    /// Bytes of the restored memory ferry copied straight into the tasks, CRIU leaving
    /// them to it as lazy pages (archive::uffd).
    pub copied_in_bytes: u64,
    pub criu: Option<crate::criu::stats::RestoreStats>,
}

impl Runtime {
    /// Returns the exit code (0 when detached) and the phase statistics.
    pub fn import(&self, opts: ImportOptions) -> Result<(i32, ImportStats)> {
        let t0 = Instant::now();
        if opts.input == Path::new("-") && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Err(Error::Other(
                "standard input is a terminal: `-i -` reads the archive from a pipe or a \
                 redirect (`ferry checkpoint ID -e - | ferry restore -i -`, `< FILE`), or give \
                 the archive's file name to -i"
                    .into(),
            ));
        }
        if opts.input.is_dir() {
            return Err(Error::Other(format!(
                "{} is a directory: -i takes the archive file `ferry checkpoint -e` wrote. A \
                 directory of CRIU images (runc's --image-path) is restored with `ferry restore \
                 --image-path DIR --bundle BUNDLE ID`",
                opts.input.display()
            )));
        }
        // A missing or broken criu is said before gigabytes are read and staged for it.
        crate::criu::Criu::new()
            .version_cached(&self.root)
            .map_err(|e| Error::Other(e.to_string()))?;
        let mut stats = ImportStats::default();
        // Not `tmp`: the image store empties that when it opens.
        let tmp = self.storage.join("work");
        std::fs::create_dir_all(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        crate::archive::stage::sweep_stale(&tmp);
        let dir = tmp.join(format!("restore-{}", std::process::id()));
        // The pages go to CRIU as they are verified when the archive can be read out of
        // order (a file, uncompressed or zstd with a tail mark) and the kernel can hold
        // CRIU's reads of the staged pages (a file on disk: tmpfs has no such hook). Not
        // with --keep, which keeps the unpacked archive whole: a fed restore never stages
        // the parts it copies straight into the tasks.
        let layout = match opts.verify_first || opts.keep || opts.input == Path::new("-") {
            true => None,
            false => crate::archive::feed::layout(&opts.input)
                .filter(|_| crate::archive::gate::supported(&tmp))
                .filter(|l| room_for_pages(&tmp, &opts.input, *l)),
        };
        let (input, mut stage) = if let Some(layout) = layout {
            let stage = Stage::private_on_disk(
                &dir,
                "the pages are fed to CRIU as they are verified, which the kernel can gate \
                 on disk but not on tmpfs",
            );
            (
                Source::Fed(opts.input.clone(), layout),
                stage.map_err(Error::Other)?,
            )
        } else {
            let input: Box<dyn Read> = if opts.input == Path::new("-") {
                Box::new(std::io::stdin())
            } else {
                Box::new(
                    std::fs::File::open(&opts.input)
                        .ctx(|| format!("open the archive {}", opts.input.display()))?,
                )
            };
            let stage = Stage::private(&dir, opts.keep).map_err(Error::Other)?;
            (Source::Stream(input), stage)
        };
        let result = self.import_into(opts, input, &mut stage, &mut stats);
        stats.stage = stage.place();
        stats.stage_reason = stage.why().to_string();
        tracing::debug!(
            dir = %dir.display(),
            stage = stage.place().as_str(),
            why = stage.why(),
            "the archive was staged"
        );
        let keep = result.as_ref().map(|(_, k)| *k).unwrap_or(false);
        if !keep && let Err(e) = stage.remove() {
            tracing::warn!("removing the unpacked archive: {e}");
        }
        let (code, _) = result?;
        stats.total_ms = t0.elapsed().as_secs_f64() * 1000.0;
        Ok((code, stats))
    }

    fn import_into(
        &self,
        opts: ImportOptions,
        input: Source,
        stage: &mut Stage,
        stats: &mut ImportStats,
    ) -> Result<(i32, bool)> {
        let t = Instant::now();
        let identity =
            Identity::load_or_create(&self.storage).map_err(|e| Error::Other(e.to_string()))?;
        let trust_store = TrustStore::open(&self.storage);
        let trust = if opts.allow_untrusted {
            Trust::AnySigner
        } else {
            Trust::Store {
                store: &trust_store,
                own: identity.fingerprint(),
            }
        };
        let (unpacked, feed) = match input {
            Source::Fed(path, layout) => {
                // The pages are most of the archive.
                let total = layout.pages_size(&path);
                let progress = Arc::new(crate::progress::Progress::bytes("restoring", total));
                let (u, f) = crate::archive::feed::unpack(&path, layout, stage, trust, progress)
                    .map_err(|e| Error::Other(e.to_string()))?;
                stats.pages_verified = if f.fed_while_restoring() {
                    "while restoring"
                } else {
                    "before restoring"
                };
                (u, Some(Arc::new(Mutex::new(f))))
            }
            Source::Stream(input) => {
                let total = if opts.input == Path::new("-") {
                    None
                } else {
                    std::fs::metadata(&opts.input).ok().map(|m| m.len())
                };
                let progress = crate::progress::Progress::bytes("verifying archive", total);
                // What a stream names at its start (an image this host lacks, an id in use,
                // a terminal without a console socket) is refused there, before the rest of
                // a pipe is read: its writer then keeps the container. All of it is checked
                // again below, from the verified archive.
                let early = |a: &reader::Announce| -> Result<(), reader::Error> {
                    self.refuse_early(a, &opts)
                        .map_err(|e| reader::Error::Refused(e.to_string()))
                };
                // 'static reader for the decompressor.
                let u = reader::unpack_with_progress(
                    ReadBox(input),
                    stage,
                    trust,
                    &progress,
                    Some(&early),
                )
                .map_err(|e| Error::Other(e.to_string()))?;
                progress.finish();
                stats.pages_verified = "before restoring";
                // The lazy memory copied into the tasks from the stage (not with --keep:
                // the copy-in punches what it copied out of the stage).
                let copy_in = match opts.keep {
                    true => None,
                    false => crate::archive::feed::copy_in_staged(
                        stage,
                        Arc::new(crate::progress::Progress::hidden()),
                    )
                    .map_err(|e| Error::Other(e.to_string()))?,
                };
                (u, copy_in.map(|f| Arc::new(Mutex::new(f))))
            }
        };
        stats.verify_ms = t.elapsed().as_secs_f64() * 1000.0;
        interrupted()?;
        let (spec, config) = read_dumps(&unpacked)?;
        check_host(&unpacked)?;

        let id = opts.name.clone().unwrap_or_else(|| config.id.clone());
        self.check_id_free(&id)?;
        let t = Instant::now();
        let image = match &config.image {
            None => {
                return Err(Error::Other(
                    "the archive's container was not made from an image in ferry's store, so \
                     there is no image to rebuild its rootfs on; restore it runc-style with \
                     --image-path and --bundle"
                        .into(),
                ));
            }
            Some(i) => i,
        };
        let store = Store::open(&self.storage).map_err(|e| Error::Other(e.to_string()))?;
        let img = store
            .get(&image.digest)
            .map_err(|_| image_missing(&image.name, &image.digest))?;
        // Taken before its rootfs is made: of two restores of one id at once, the second is
        // told the id exists (the check above only spares a doomed restore the work).
        self.take_id(
            &id,
            &crate::runtime::from_image::bundle_of(&self.storage, &id),
        )?;
        let mut taken = TakenId {
            runtime: self,
            id: &id,
            handed_over: false,
        };
        // The container's /dev/shm, when the archive carries it (an external mount in the
        // images): a tmpfs of its own, as the spec says, filled from the archive, bound into
        // the container by CRIU and detached from here right after (on drop).
        let devshm = match unpacked.dir.join("devshm-checkpoint.tar") {
            p if p.exists() => Some(DevShm::fill(
                &self.storage,
                &spec,
                &p,
                unpacked.trusted_as.is_some(),
            )?),
            _ => None,
        };
        let rootfs = self
            .rootfs_for_restore(&img, &id, &spec, &unpacked, &config, &store)
            .map_err(|e| self.disk_full_hint(e))?;
        stats.rootfs_ms = t.elapsed().as_secs_f64() * 1000.0;
        interrupted()?;

        let mut ro = opts.restore;
        ro.id = id.clone();
        ro.bundle = rootfs.bundle.clone();
        ro.image_path = unpacked.dir.join("checkpoint");
        ro.work_path = Some(unpacked.dir.clone());
        ro.detach = opts.detach;
        ro.image = Some(rootfs);
        ro.id_taken = true;
        // The stage is ours alone and deleted after the restore, so CRIU punches out each
        // page range it has restored: the stage shrinks as the process grows, memory peaks
        // at one copy rather than two, the process takes the pages the stage just gave
        // back (on these VMs a second gigabyte of fresh memory cost CRIU 1-1.5 s more), and
        // nothing is left to free at the end. Never with --keep.
        ro.auto_dedup |= !opts.keep;
        stats.dedup = ro.auto_dedup;
        ro.devshm = devshm.as_ref().map(|d| d.dir.clone());
        if let Some(f) = &feed {
            attach_feed(&mut ro, f);
        }
        let t = Instant::now();
        // From here the restore gives the id back if it fails.
        taken.handed_over = true;
        let restored = self.restore_container(ro);
        drop(devshm);
        if let Some(f) = feed {
            let fed = finish_feed(&f)?;
            stats.prefaulted_bytes = fed.prefaulted;
            stats.copied_in_bytes = fed.copied_in;
            stats.feed_ms = fed.took.as_secs_f64() * 1000.0;
        }
        let restored = restored?;
        stats.restore_ms = t.elapsed().as_secs_f64() * 1000.0;
        stats.criu = restored.report.stats.clone();
        stats.network_lock = restored.network_lock.as_str();
        if opts.detach {
            return Ok((0, opts.keep));
        }
        Ok((restored.container.supervise_then_delete()?, opts.keep))
    }
}

/// A safe point between the restore's phases (sys::interrupt).
fn interrupted() -> Result<()> {
    crate::sys::interrupt::check().map_err(|e| Error::Other(e.to_string()))
}

/// An id taken for a restore (`Runtime::take_id`), given back if the restore is never
/// reached.
struct TakenId<'a> {
    runtime: &'a Runtime,
    id: &'a str,
    handed_over: bool,
}

impl Drop for TakenId<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            self.runtime.give_back_id(self.id);
        }
    }
}

impl Runtime {
    /// A fresh overlay on the image, the archive's changes applied to it, and the dumped spec
    /// as its config.json.
    fn rootfs_for_restore(
        &self,
        img: &crate::image::Image,
        id: &str,
        spec: &Spec,
        unpacked: &Unpacked,
        config: &ContainerConfig,
        store: &Store,
    ) -> Result<ImageRootfs> {
        let made = ImageRootfs::create(&self.storage, img, id)?;
        let bundle = made.bundle.clone();
        let r = (|| -> Result<()> {
            let root = bundle.join("rootfs");
            if config.rootfs_included {
                let deleted: Vec<PathBuf> = match std::fs::read(unpacked.dir.join("deleted.files"))
                {
                    Ok(b) => serde_json::from_slice::<Vec<String>>(&b)
                        .map_err(|e| Error::Other(format!("deleted.files: {e}")))?
                        .into_iter()
                        .map(PathBuf::from)
                        .collect(),
                    Err(_) => vec![],
                };
                let tar = std::fs::File::open(unpacked.dir.join("rootfs-diff.tar"))
                    .ctx(|| "open rootfs-diff.tar")?;
                // Device nodes only from archives a trusted host signed.
                let allow_devices = unpacked.trusted_as.is_some();
                crate::archive::diff::apply_diff(
                    std::io::BufReader::new(tar),
                    &deleted,
                    &root,
                    allow_devices,
                )
                .map_err(|e| match e {
                    // Kept as an io error, so that a full disk is recognised as one.
                    crate::archive::diff::Error::Io { context, source } => Error::Io {
                        context: format!("applying the archive's rootfs changes: {context}"),
                        source,
                    },
                    e => Error::Other(format!("applying the archive's rootfs changes: {e}")),
                })?;
            }
            let mut spec = spec.clone();
            let mut r = spec.root().clone().unwrap_or_default();
            r.set_path(PathBuf::from("rootfs"));
            spec.set_root(Some(r));
            if id != config.id
                && let Some(linux) = spec.linux_mut()
            {
                // A custom cgroup path would collide with the original's if it still runs.
                linux.set_cgroups_path(None);
            }
            let text = serde_json::to_vec_pretty(&spec).map_err(|e| Error::Other(e.to_string()))?;
            std::fs::write(bundle.join("config.json"), text).ctx(|| "write config.json")?;
            store
                .add_ref(img, id)
                .map_err(|e| Error::Other(e.to_string()))
        })();
        match r {
            Ok(()) => Ok(made),
            Err(e) => Err(with_cleanup(e, made.release(id))),
        }
    }
}

impl Runtime {
    /// The unpacked archive is in memory, so a full disk shows up here, building the rootfs:
    /// say so and where, as the unpack would have.
    fn disk_full_hint(&self, e: Error) -> Error {
        fn enospc(e: &Error) -> bool {
            match e {
                Error::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
                Error::Sys { errno, .. } => *errno == nix::errno::Errno::ENOSPC,
                Error::WithCleanup { error, .. } => enospc(error),
                _ => false,
            }
        }
        if !enospc(&e) {
            return e;
        }
        Error::Other(format!(
            "{e}; the disk is full: free space under the storage directory {} (--storage)",
            self.storage.display()
        ))
    }
}

/// A private tmpfs holding the container's /dev/shm files until CRIU has bound it into the
/// restored container; unmounted (detached: the container keeps its bind) and removed on
/// drop.
struct DevShm {
    dir: PathBuf,
}

impl DevShm {
    fn fill(storage: &Path, spec: &Spec, tar: &Path, allow_devices: bool) -> Result<DevShm> {
        use nix::mount::{MsFlags, mount};
        let dir = storage
            .join("work")
            .join(format!("devshm-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).ctx(|| format!("create {}", dir.display()))?;
        let shm = DevShm { dir };
        let opts = crate::checkpoint::externals::devshm_tmpfs(spec)
            .map(|m| {
                crate::runtime::rootfs::parse_options(m.options().as_deref().unwrap_or_default())
            })
            .unwrap_or_else(|| crate::runtime::rootfs::parse_options(&[]));
        let flags = opts.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
        let data = if opts.data.is_empty() {
            "mode=1777".to_string()
        } else {
            opts.data.clone()
        };
        mount(
            Some("shm"),
            &shm.dir,
            Some("tmpfs"),
            flags,
            Some(data.as_str()),
        )
        .map_err(|e| {
            Error::Other(format!(
                "mounting a tmpfs for the container's /dev/shm at {} ({data}): {e}",
                shm.dir.display()
            ))
        })?;
        let file = std::fs::File::open(tar).ctx(|| "open devshm-checkpoint.tar")?;
        crate::archive::diff::apply_diff(
            std::io::BufReader::new(file),
            &[],
            &shm.dir,
            allow_devices,
        )
        .map_err(|e| Error::Other(format!("restoring the container's /dev/shm: {e}")))?;
        Ok(shm)
    }
}

impl Drop for DevShm {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

struct ReadBox(Box<dyn Read>);
impl Read for ReadBox {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        // A safe point of the verify-first path (sys::interrupt).
        crate::sys::interrupt::check()?;
        self.0.read(b)
    }
}

/// Whether the disk stage of a fed restore has room for the archive's pages: the feed may
/// run ahead of CRIU by all of them (CRIU punches each range out once restored). Else the
/// archive is verified first into the tmpfs stage, which spills to disk only when memory
/// is short too.
fn room_for_pages(work: &Path, archive: &Path, layout: crate::archive::feed::Layout) -> bool {
    let Some(size) = layout.pages_size(archive) else {
        return false;
    };
    let room = nix::sys::statvfs::statvfs(work)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        .unwrap_or(0);
    let ok = room >= size.saturating_add(256 << 20);
    if !ok {
        tracing::debug!(
            room,
            archive = size,
            "too little disk under the storage to feed the pages from a disk stage; \
             verifying the archive first"
        );
    }
    ok
}

/// Where `restore -i` reads the archive from.
enum Source {
    /// Stream it through once (a pipe, a compressed archive, --verify-first).
    Stream(Box<dyn Read>),
    /// Read it out of order and feed the pages while CRIU restores (archive::feed).
    Fed(PathBuf, crate::archive::feed::Layout),
}

impl Runtime {
    /// What a stream named at its start that this restore could not take, said before the
    /// rest is read (`reader::unpack_with_progress`); the same checks run again later on
    /// what the archive verifiably holds.
    fn refuse_early(&self, a: &reader::Announce, opts: &ImportOptions) -> Result<()> {
        if let Some(id) = opts.name.as_ref().or(a.id.as_ref()) {
            self.check_id_free(id)?;
        }
        if let Some(i) = &a.image {
            let store = Store::open(&self.storage).map_err(|e| Error::Other(e.to_string()))?;
            store
                .get(&i.digest)
                .map_err(|_| image_missing(&i.name, &i.digest))?;
        }
        crate::checkpoint::restore::check_console_socket(
            a.terminal,
            opts.restore.console_socket.as_deref(),
        )
    }

    /// `id` is a valid container id that no container (or a killed maker's remains) holds.
    fn check_id_free(&self, id: &str) -> Result<()> {
        crate::runtime::container::validate_id(id)?;
        if self.container_dir(id).exists() {
            return Err(self.taken_error(id));
        }
        Ok(())
    }
}

/// The archive's image is not in this host's store.
fn image_missing(name: &str, digest: &str) -> Error {
    Error::Other(format!(
        "the archive needs image {name} ({digest}), which is not in this host's store; import \
         it first: `ferry image import <layout> --name {name}`"
    ))
}

fn read_dumps(u: &Unpacked) -> Result<(Spec, ContainerConfig)> {
    let spec_path = u.dir.join("spec.dump");
    let spec_text = std::fs::read_to_string(&spec_path)
        .map_err(|_| Error::Other("the archive has no spec.dump".into()))?;
    let spec = crate::runtime::bundle::parse_spec(&spec_text).map_err(|msg| Error::Config {
        path: PathBuf::from("spec.dump"),
        msg,
    })?;
    let config: ContainerConfig = serde_json::from_slice(
        &std::fs::read(u.dir.join("config.dump"))
            .map_err(|_| Error::Other("the archive has no config.dump".into()))?,
    )
    .map_err(|e| Error::Other(format!("config.dump: {e}")))?;
    Ok((spec, config))
}

/// The restored process may use CPU features of its source: refuse early and clearly when
/// this host lacks some, rather than let it crash later.
fn check_host(u: &Unpacked) -> Result<()> {
    let here = crate::archive::manifest::SourceHost::this_host(String::new());
    if u.manifest.source.arch != here.arch {
        return Err(Error::Other(format!(
            "the checkpoint was made on {} and this host is {}",
            u.manifest.source.arch, here.arch
        )));
    }
    let missing = u.manifest.source.missing_cpu_flags(&here);
    if !missing.is_empty() {
        return Err(Error::Other(format!(
            "this host's CPU lacks features the source had: {}; restore on a host with the \
             same CPU features",
            missing.join(" ")
        )));
    }
    Ok(())
}
