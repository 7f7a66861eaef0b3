//! The store's directory and its rules: blobs and layers by digest, one record per image,
//! one ref file per container using an image. Everything is written under `tmp/` and
//! renamed into place, so readers never see half a file and a crash leaves only `tmp/`.
//!
//! Two locks (flock, released when the process dies): `lock` serialises changes to
//! `images/`, `refs/` and garbage collection; `tmp.lock` is held shared by every import and
//! taken exclusively (without waiting) by `open` to clear what dead imports left in `tmp/`.

use super::digest::sha256_hex;
use super::layer::UnpackLimits;
use super::reference::{digest_prefix, normalise_name};
use super::{Context, Error, Result};
use chrono::{DateTime, Utc};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The image store rooted at `--storage` (default `/var/lib/ferry`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    limits: UnpackLimits,
}

/// An image in the store, as the runtime uses it.
#[derive(Debug, Clone)]
pub struct Image {
    /// `repository:tag`, e.g. `busybox:latest`; empty when a later import took the name.
    pub name: String,
    /// `sha256:…` of the manifest: the image's identity.
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    /// `sha256:…` of each layer's uncompressed tar, bottom first.
    pub diff_ids: Vec<String>,
    /// Unpacked layer directories, bottom first (overlay's lowerdir lists the top first).
    pub layers: Vec<PathBuf>,
    /// Bytes of the uncompressed layers.
    pub size: u64,
    pub imported: DateTime<Utc>,
}

impl Image {
    /// The first 12 hex digits of the manifest digest, as `ferry image ls` shows it.
    pub fn short_digest(&self) -> &str {
        let hex = self.manifest_digest.trim_start_matches("sha256:");
        &hex[..hex.len().min(12)]
    }

    /// The config's `created`, else the time of import.
    pub fn created(&self) -> String {
        self.config.created().clone().unwrap_or_else(|| {
            self.imported
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
    }
}

/// `images/<manifest-hex>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub name: String,
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config_digest: String,
    pub config: ImageConfiguration,
    pub diff_ids: Vec<String>,
    pub size: u64,
    pub imported: DateTime<Utc>,
}

/// `layers/<diffid-hex>.json`, beside the layer directory it describes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub diff_id: String,
    pub size: u64,
    pub entries: u64,
}

/// `refs/<container-id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefRecord {
    image: String,
    name: String,
}

/// An flock held until dropped.
pub(crate) struct FileLock(#[allow(dead_code)] fs::File);

impl FileLock {
    /// Waits for the lock; None only when `wait` is false and someone else holds it.
    fn take(path: &Path, exclusive: bool, wait: bool) -> Result<Option<FileLock>> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .ctx(|| format!("open lock file {}", path.display()))?;
        let mut op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        if !wait {
            op |= libc::LOCK_NB;
        }
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(Some(FileLock(file)));
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if !wait => return Ok(None),
                _ => return Err(err).ctx(|| format!("lock {}", path.display())),
            }
        }
    }
}

/// A private directory under `<root>/tmp/`, removed when dropped (success or not). It holds
/// the shared `tmp.lock` so `open` elsewhere does not clear it mid-import.
pub(crate) struct TmpDir {
    pub path: PathBuf,
    _lock: FileLock,
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {err}", self.path.display());
        }
    }
}

impl Store {
    /// Opens the store at `root`, creating its directories on first use and clearing what
    /// interrupted imports left in `tmp/`.
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store {
            root: root.to_path_buf(),
            limits: UnpackLimits::default(),
        };
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(root)
            .ctx(|| format!("create image store {}", root.display()))?;
        b.mode(0o755);
        for dir in ["blobs/sha256", "layers", "images", "refs"] {
            b.create(root.join(dir))
                .ctx(|| format!("create {}", root.join(dir).display()))?;
        }
        b.mode(0o700);
        b.create(store.tmp_root())
            .ctx(|| format!("create {}", store.tmp_root().display()))?;
        store.clear_stale_tmp()?;
        Ok(store)
    }

    /// The same store with other unpack limits (tests, or a host that expects huge layers).
    pub fn with_limits(mut self, limits: UnpackLimits) -> Store {
        self.limits = limits;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> &UnpackLimits {
        &self.limits
    }

    pub(crate) fn tmp_root(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    /// Where the layer with this diff_id is (or will be) unpacked.
    pub fn layer_path(&self, diff_id: &str) -> Result<PathBuf> {
        let hex = sha256_hex(diff_id).ok_or_else(|| Error::InvalidName {
            what: "layer diff_id",
            value: diff_id.to_string(),
            why: "only sha256 digests are supported",
        })?;
        Ok(self.root.join("layers").join(hex))
    }

    fn record_path(&self, manifest_digest: &str) -> Option<PathBuf> {
        let hex = sha256_hex(manifest_digest)?;
        Some(self.root.join("images").join(format!("{hex}.json")))
    }

    fn clear_stale_tmp(&self) -> Result<()> {
        let Some(_lock) = FileLock::take(&self.root.join("tmp.lock"), true, false)? else {
            return Ok(()); // an import is running; its leftovers wait for the next open
        };
        let tmp = self.tmp_root();
        for entry in fs::read_dir(&tmp).ctx(|| format!("read {}", tmp.display()))? {
            let path = entry.ctx(|| format!("read {}", tmp.display()))?.path();
            tracing::info!("removing {} left by an interrupted import", path.display());
            let res = if path.is_dir() && !path.is_symlink() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            res.ctx(|| format!("remove {}", path.display()))?;
        }
        Ok(())
    }

    /// A fresh private directory for one import.
    pub(crate) fn tmp_dir(&self) -> Result<TmpDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let lock = FileLock::take(&self.root.join("tmp.lock"), false, true)?
            .expect("a waiting lock is always taken");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{}-{}-{nanos:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.tmp_root().join(name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .ctx(|| format!("create {}", path.display()))?;
        Ok(TmpDir { path, _lock: lock })
    }

    pub(crate) fn lock(&self) -> Result<FileLock> {
        Ok(FileLock::take(&self.root.join("lock"), true, true)?
            .expect("a waiting lock is always taken"))
    }

    /// Writes `bytes` to `dest` through a file in `tmp`, so `dest` is whole or absent.
    pub(crate) fn write_atomic(&self, tmp: &TmpDir, dest: &Path, bytes: &[u8]) -> Result<()> {
        static N: AtomicU64 = AtomicU64::new(0);
        let staged = tmp
            .path
            .join(format!("write-{}", N.fetch_add(1, Ordering::Relaxed)));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&staged)
            .ctx(|| format!("create {}", staged.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .ctx(|| format!("write {}", staged.display()))?;
        fs::rename(&staged, dest)
            .ctx(|| format!("rename {} to {}", staged.display(), dest.display()))
    }

    /// Moves an unpacked, verified layer into `layers/`. If another import got there first
    /// the layers are identical (same diff_id), so ours is dropped.
    pub(crate) fn place_layer(
        &self,
        tmp: &TmpDir,
        unpacked: &Path,
        record: &LayerRecord,
    ) -> Result<PathBuf> {
        let dest = self.layer_path(&record.diff_id)?;
        let info = dest.with_extension("json");
        let json = serde_json::to_vec_pretty(record).expect("layer record serialises");
        self.write_atomic(tmp, &info, &json)?;
        match fs::rename(unpacked, &dest) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {
                tracing::debug!("layer {} already in the store", record.diff_id);
            }
            Err(e) => {
                return Err(e)
                    .ctx(|| format!("move layer {} into {}", record.diff_id, dest.display()));
            }
        }
        Ok(dest)
    }

    pub(crate) fn layer_record(&self, diff_id: &str) -> Option<LayerRecord> {
        let path = self.layer_path(diff_id).ok()?.with_extension("json");
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }

    /// Records an image whose blobs and layers are in place; the name moves to it from any
    /// other image that had it.
    pub(crate) fn commit(
        &self,
        tmp: &TmpDir,
        record: ImageRecord,
        blobs: &[(&str, &[u8])],
    ) -> Result<Image> {
        let _lock = self.lock()?;
        for diff_id in &record.diff_ids {
            let layer = self.layer_path(diff_id)?;
            if !layer.is_dir() {
                return Err(Error::Other(format!(
                    "layer {diff_id} vanished from {} while importing (an `image rm` ran at the same time?); import again",
                    layer.display()
                )));
            }
        }
        for (digest, bytes) in blobs {
            let hex =
                sha256_hex(digest).ok_or_else(|| Error::Other(format!("bad digest {digest}")))?;
            let path = self.blob_path(hex);
            if !path.exists() {
                self.write_atomic(tmp, &path, bytes)?;
            }
        }
        if !record.name.is_empty() {
            for mut other in self.records()? {
                if other.name == record.name && other.manifest_digest != record.manifest_digest {
                    tracing::info!(
                        "{} now names {}; {} keeps no name",
                        record.name,
                        record.manifest_digest,
                        other.manifest_digest
                    );
                    other.name.clear();
                    self.write_record(tmp, &other)?;
                }
            }
        }
        self.write_record(tmp, &record)?;
        self.image_from(record)
    }

    fn write_record(&self, tmp: &TmpDir, record: &ImageRecord) -> Result<()> {
        let path = self
            .record_path(&record.manifest_digest)
            .ok_or_else(|| Error::Other(format!("bad digest {}", record.manifest_digest)))?;
        let json = serde_json::to_vec_pretty(record).expect("image record serialises");
        self.write_atomic(tmp, &path, &json)
    }

    fn records(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).ctx(|| format!("read {}", dir.display()))? {
            let path = entry.ctx(|| format!("read {}", dir.display()))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
            let record: ImageRecord =
                serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
                    path: path.clone(),
                    msg: format!("unreadable image record: {e}"),
                })?;
            out.push(record);
        }
        out.sort_by(|a, b| (&a.name, &a.manifest_digest).cmp(&(&b.name, &b.manifest_digest)));
        Ok(out)
    }

    fn image_from(&self, r: ImageRecord) -> Result<Image> {
        let layers = r
            .diff_ids
            .iter()
            .map(|d| self.layer_path(d))
            .collect::<Result<_>>()?;
        Ok(Image {
            name: r.name,
            manifest_digest: r.manifest_digest,
            manifest: r.manifest,
            config: r.config,
            diff_ids: r.diff_ids,
            layers,
            size: r.size,
            imported: r.imported,
        })
    }

    /// Every image, sorted by name.
    pub fn list(&self) -> Result<Vec<Image>> {
        self.records()?
            .into_iter()
            .map(|r| self.image_from(r))
            .collect()
    }

    /// An image by name (`busybox`, `busybox:1.36`) or digest (`sha256:…`, or a unique
    /// prefix of the hex of at least 4 digits).
    pub fn get(&self, name_or_digest: &str) -> Result<Image> {
        let record = self.find(name_or_digest)?;
        self.image_from(record)
    }

    fn find(&self, query: &str) -> Result<ImageRecord> {
        let records = self.records()?;
        if let Ok(name) = normalise_name(query)
            && let Some(r) = records.iter().find(|r| r.name == name)
        {
            return Ok(r.clone());
        }
        if let Some(prefix) = digest_prefix(query) {
            let matches: Vec<&ImageRecord> = records
                .iter()
                .filter(|r| {
                    r.manifest_digest
                        .trim_start_matches("sha256:")
                        .starts_with(prefix)
                })
                .collect();
            match matches.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                many => {
                    return Err(Error::Ambiguous {
                        query: query.to_string(),
                        matches: many
                            .iter()
                            .map(|r| r.manifest_digest.clone())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        }
        Err(Error::NotFound {
            query: query.to_string(),
            root: self.root.clone(),
        })
    }

    fn refs(&self) -> Result<Vec<(String, RefRecord)>> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).ctx(|| format!("read {}", dir.display()))? {
            let entry = entry.ctx(|| format!("read {}", dir.display()))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            let bytes =
                fs::read(entry.path()).ctx(|| format!("read {}", entry.path().display()))?;
            match serde_json::from_slice(&bytes) {
                Ok(r) => out.push((id, r)),
                Err(e) => tracing::warn!("ignoring unreadable ref {}: {e}", entry.path().display()),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The ids of the containers using the image with this manifest digest.
    pub fn users(&self, manifest_digest: &str) -> Result<Vec<String>> {
        Ok(self
            .refs()?
            .into_iter()
            .filter(|(_, r)| r.image == manifest_digest)
            .map(|(id, _)| id)
            .collect())
    }

    /// Removes an image, refusing while a container uses it, then every layer and blob no
    /// other image needs.
    pub fn remove(&self, name_or_digest: &str) -> Result<()> {
        let _lock = self.lock()?;
        let record = self.find(name_or_digest)?;
        let users = self.users(&record.manifest_digest)?;
        if !users.is_empty() {
            let shown = if record.name.is_empty() {
                record.manifest_digest.clone()
            } else {
                format!("{} ({})", record.name, record.manifest_digest)
            };
            return Err(Error::InUse {
                image: shown,
                containers: users.join(", "),
            });
        }
        let path = self
            .record_path(&record.manifest_digest)
            .ok_or_else(|| Error::Other(format!("bad digest {}", record.manifest_digest)))?;
        fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
        self.collect_garbage(&record)
    }

    /// Deletes the layers and blobs of `gone` that no remaining image uses.
    fn collect_garbage(&self, gone: &ImageRecord) -> Result<()> {
        let remaining = self.records()?;
        let used_layer = |d: &String| remaining.iter().any(|r| r.diff_ids.contains(d));
        let used_blob = |d: &str| {
            remaining.iter().any(|r| {
                r.manifest_digest == d
                    || r.config_digest == d
                    || r.manifest.layers().iter().any(|l| l.digest().as_ref() == d)
            })
        };
        for diff_id in gone.diff_ids.iter().filter(|d| !used_layer(d)) {
            let dir = self.layer_path(diff_id)?;
            // Rename first so a half-deleted layer is never found under its digest.
            let doomed = self.tmp_root().join(format!(
                "rm-{}-{}",
                std::process::id(),
                dir.file_name().unwrap_or_default().to_string_lossy()
            ));
            let _ = fs::remove_file(dir.with_extension("json"));
            match fs::rename(&dir, &doomed) {
                Ok(()) => fs::remove_dir_all(&doomed)
                    .ctx(|| format!("remove layer {}", doomed.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx(|| format!("remove layer {}", dir.display())),
            }
        }
        for digest in [&gone.manifest_digest, &gone.config_digest] {
            if !used_blob(digest)
                && let Some(hex) = sha256_hex(digest)
            {
                let _ = fs::remove_file(self.blob_path(hex));
            }
        }
        Ok(())
    }

    /// Records that container `container_id` uses `image`, so `remove` refuses to delete it.
    pub fn add_ref(&self, image: &Image, container_id: &str) -> Result<()> {
        let path = self.ref_path(container_id)?;
        let _lock = self.lock()?;
        let record = self.record_path(&image.manifest_digest);
        if !record.as_deref().is_some_and(Path::exists) {
            return Err(Error::NotFound {
                query: image.manifest_digest.clone(),
                root: self.root.clone(),
            });
        }
        let tmp = self.tmp_dir()?;
        let json = serde_json::to_vec(&RefRecord {
            image: image.manifest_digest.clone(),
            name: image.name.clone(),
        })
        .expect("ref serialises");
        self.write_atomic(&tmp, &path, &json)
    }

    /// Forgets container `container_id`'s use of its image; nothing to do if it had none.
    pub fn remove_ref(&self, container_id: &str) -> Result<()> {
        let path = self.ref_path(container_id)?;
        let _lock = self.lock()?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).ctx(|| format!("remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// The image container `container_id` uses, if it has a ref.
    pub fn image_of(&self, container_id: &str) -> Result<Option<Image>> {
        let path = self.ref_path(container_id)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("read {}", path.display())),
        };
        let r: RefRecord = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        self.get(&r.image).map(Some)
    }

    fn ref_path(&self, container_id: &str) -> Result<PathBuf> {
        if container_id.is_empty()
            || container_id == "."
            || container_id == ".."
            || container_id.contains('/')
            || container_id.contains('\0')
        {
            return Err(Error::InvalidName {
                what: "container id",
                value: container_id.to_string(),
                why: "it must be a single path component",
            });
        }
        Ok(self.root.join("refs").join(container_id))
    }
}
