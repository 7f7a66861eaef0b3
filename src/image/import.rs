//! `ferry image import`: reads an OCI image layout (a directory or a tarball of one,
//! optionally gzip or zstd compressed) or a plain root filesystem (directory or tarball),
//! verifies every blob against its digest while reading it, and hands verified layers and
//! records to the store.

use super::digest::{sha256_hex, sha256_of};
use super::layer::{self, Compression, GuardedStream, decompressor, normalise_entry_path};
use super::reference::{name_from_annotations, name_from_path, normalise_name, split_tag};
use super::store::{ImageRecord, LayerRecord, TmpDir};
use super::{Context, Error, Image, Result, Store};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde_json::json;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// JSON blobs (index, manifest, config) bigger than this are refused before reading.
const MAX_JSON_BLOB: u64 = 16 << 20;

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `import` was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    LayoutDir,
    LayoutTar,
    RootfsDir,
    RootfsTar,
}

impl Source {
    /// Tells the kind of `path` from what it holds.
    pub fn detect(path: &Path) -> Result<Source> {
        let meta = fs::metadata(path).ctx(|| format!("import {}", path.display()))?;
        if meta.is_dir() {
            return Ok(
                if path.join("oci-layout").exists() || path.join("index.json").exists() {
                    Source::LayoutDir
                } else {
                    Source::RootfsDir
                },
            );
        }
        tarball_kind(path)
    }
}

/// Tells a tarball of an OCI layout from one of a root filesystem, in one pass over its
/// start. A file that is not a tar archive (plain, gzip or zstd) is refused before it is
/// read as one: the tar reader's own error quotes the bytes it choked on.
fn tarball_kind(path: &Path) -> Result<Source> {
    let compression = Compression::sniff_file(path)?;
    let file = fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
    let mut head = Vec::with_capacity(512);
    let Ok(mut stream) = decompressor(file, compression) else {
        return Err(not_a_tarball(path, compression, true));
    };
    let read = stream.by_ref().take(512).read_to_end(&mut head);
    if read.is_err() || !crate::archive::reader::starts_a_tar(&head) {
        return Err(not_a_tarball(path, compression, head.is_empty()));
    }
    Ok(if holds_layout(io::Cursor::new(head).chain(stream)) {
        Source::LayoutTar
    } else {
        Source::RootfsTar
    })
}

fn not_a_tarball(path: &Path, compression: Compression, empty: bool) -> Error {
    let what = match compression {
        _ if empty => "it is empty".to_string(),
        Compression::None => "its first bytes are not a tar header".into(),
        Compression::Gzip => {
            "its first bytes (inside its gzip compression) are not a tar header".into()
        }
        Compression::Zstd => {
            "its first bytes (inside its zstd compression) are not a tar header".into()
        }
    };
    Error::Other(format!(
        "{} is not an image: it is not a directory (a root filesystem or an OCI layout), and \
         {what}; give a directory, or a tar archive (plain, gzip or zstd) of one",
        path.display()
    ))
}

/// Whether a tar stream holds an OCI layout: its entries are only `oci-layout`,
/// `index.json` and `blobs/…`, and `oci-layout` is among them. Stops at the first other
/// entry.
fn holds_layout(stream: impl Read) -> bool {
    let mut archive = tar::Archive::new(stream);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let Ok(rel) = normalise_entry_path(&entry.path_bytes()) else {
            return false;
        };
        match rel.components().next().map(|c| c.as_os_str().to_owned()) {
            None => continue,
            Some(first) if first == "oci-layout" => return true,
            Some(first) if first == "index.json" || first == "blobs" => continue,
            Some(_) => return false,
        }
    }
    false
}

impl Store {
    /// Imports the image at `path` (see [`Source`]) under `name` (default: the layout's
    /// annotation, else the file or directory name). Importing an image already in the
    /// store only updates its name.
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Image> {
        let name = name.map(normalise_name).transpose()?;
        let source = Source::detect(path)?;
        tracing::debug!("importing {} as {source:?}", path.display());
        let tmp = self.tmp_dir()?;
        match source {
            Source::LayoutDir => self.import_layout(&tmp, path, path, name),
            Source::LayoutTar => {
                let layout = tmp.path.join("layout");
                self.extract_layout_tar(path, &layout)?;
                self.import_layout(&tmp, &layout, path, name)
            }
            Source::RootfsTar => self.import_rootfs_tar(&tmp, path, path, name),
            Source::RootfsDir => {
                let tarball = tmp.path.join("rootfs.tar");
                tar_directory(path, &tarball)?;
                self.import_rootfs_tar(&tmp, &tarball, path, name)
            }
        }
    }

    fn import_layout(
        &self,
        tmp: &TmpDir,
        layout: &Path,
        origin: &Path,
        name: Option<String>,
    ) -> Result<Image> {
        check_layout_header(layout)?;
        let index_path = layout.join("index.json");
        let index: ImageIndex = parse_json(&read_capped(&index_path)?, &index_path)?;
        let chosen = choose_manifest(index.manifests(), name.as_deref(), &index_path)?;
        let name = match name {
            Some(n) => n,
            None => name_from_annotations(chosen.annotations().as_ref(), origin)
                .unwrap_or_else(|| name_from_path(origin)),
        };

        let mut manifest_desc = chosen.clone();
        if is_index(&manifest_desc) {
            let bytes = read_blob(layout, &manifest_desc, "image index")?;
            let nested: ImageIndex = parse_json(&bytes, &blob_file(layout, &manifest_desc)?)?;
            manifest_desc = choose_platform(nested.manifests(), &index_path)?.clone();
        }
        let manifest_bytes = read_blob(layout, &manifest_desc, "manifest")?;
        let manifest_digest = manifest_desc.digest().to_string();
        let manifest: ImageManifest =
            parse_json(&manifest_bytes, &blob_file(layout, &manifest_desc)?)?;
        let config_bytes = read_blob(layout, manifest.config(), "config")?;
        let config_digest = manifest.config().digest().to_string();
        let config: ImageConfiguration =
            parse_json(&config_bytes, &blob_file(layout, manifest.config())?)?;

        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers().len() {
            return Err(Error::Invalid {
                path: blob_file(layout, &manifest_desc)?,
                msg: format!(
                    "the manifest lists {} layers but the config has {} diff_ids",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            });
        }

        let total = diff_ids.len();
        let mut size = 0;
        for (i, (desc, diff_id)) in manifest.layers().iter().zip(&diff_ids).enumerate() {
            let label = format!("layer {}/{total} ({})", i + 1, desc.digest());
            size += self.import_layer(tmp, layout, desc, diff_id, &label, i)?;
        }

        let record = ImageRecord {
            name,
            manifest_digest: manifest_digest.clone(),
            manifest,
            config_digest: config_digest.clone(),
            config,
            diff_ids,
            size,
            imported: chrono::Utc::now(),
        };
        self.commit(
            tmp,
            record,
            &[
                (&manifest_digest, &manifest_bytes),
                (&config_digest, &config_bytes),
            ],
        )
    }

    /// Unpacks one layer blob unless the store has it already; returns its size.
    fn import_layer(
        &self,
        tmp: &TmpDir,
        layout: &Path,
        desc: &Descriptor,
        diff_id: &str,
        label: &str,
        index: usize,
    ) -> Result<u64> {
        let media_type = desc.media_type().to_string();
        let compression = Compression::from_media_type(&media_type).ok_or_else(|| Error::Invalid {
            path: layout.to_path_buf(),
            msg: format!("{label} has media type {media_type}, which is not a tar layer (plain, gzip or zstd)"),
        })?;
        let blob = blob_file(layout, desc)?;
        let file = fs::File::open(&blob).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::MissingBlob {
                blob: label.to_string(),
                path: blob.clone(),
            },
            _ => Error::Io {
                context: format!("open {}", blob.display()),
                source: e,
            },
        })?;
        let dest = self.layer_path(diff_id)?;
        if dest.is_dir()
            && let Some(record) = self.layer_record(diff_id)
        {
            tracing::debug!("{label}: already unpacked as {}", dest.display());
            return Ok(record.size);
        }

        let staging = tmp.path.join(format!("layer-{index}"));
        fs::create_dir(&staging).ctx(|| format!("create {}", staging.display()))?;
        let expected = desc.digest().to_string();
        let unpacked = layer::unpack_layer(
            file,
            compression,
            &staging,
            self.limits(),
            label,
            Some(&expected),
        )?;
        if unpacked.digest != desc.digest().as_ref() {
            return Err(Error::DigestMismatch {
                blob: format!("{label} at {}", blob.display()),
                expected: desc.digest().to_string(),
                actual: unpacked.digest,
            });
        }
        if unpacked.blob_size != desc.size() {
            return Err(Error::SizeMismatch {
                blob: format!("{label} at {}", blob.display()),
                expected: desc.size(),
                actual: unpacked.blob_size,
            });
        }
        if unpacked.diff_id != diff_id {
            return Err(Error::DigestMismatch {
                blob: format!("the uncompressed tar of {label} (its diff_id in the config)"),
                expected: diff_id.to_string(),
                actual: unpacked.diff_id,
            });
        }
        let record = LayerRecord {
            diff_id: unpacked.diff_id,
            size: unpacked.size,
            entries: unpacked.entries,
        };
        self.place_layer(tmp, &staging, &record)?;
        Ok(record.size)
    }

    /// A plain root filesystem tarball becomes a one-layer image with a minimal config.
    fn import_rootfs_tar(
        &self,
        tmp: &TmpDir,
        tarball: &Path,
        origin: &Path,
        name: Option<String>,
    ) -> Result<Image> {
        let name = name.unwrap_or_else(|| name_from_path(origin));
        let compression = Compression::sniff_file(tarball)?;
        let file = fs::File::open(tarball).ctx(|| format!("open {}", tarball.display()))?;
        let staging = tmp.path.join("layer-0");
        fs::create_dir(&staging).ctx(|| format!("create {}", staging.display()))?;
        let label = format!("root filesystem {}", origin.display());
        let unpacked =
            layer::unpack_layer(file, compression, &staging, self.limits(), &label, None)?;
        let record = LayerRecord {
            diff_id: unpacked.diff_id.clone(),
            size: unpacked.size,
            entries: unpacked.entries,
        };
        self.place_layer(tmp, &staging, &record)?;

        // No `created`: the same root filesystem imports as the same image.
        let config_json = json!({
            "architecture": go_arch(),
            "os": "linux",
            "config": { "Env": [PATH_ENV], "Cmd": ["sh"] },
            "rootfs": { "type": "layers", "diff_ids": [unpacked.diff_id] },
        });
        let config_bytes = serde_json::to_vec(&config_json).expect("config serialises");
        let config_digest = sha256_of(&config_bytes);
        let layer_type = match compression {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        };
        let manifest_json = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": [{
                "mediaType": layer_type,
                "digest": unpacked.digest,
                "size": unpacked.blob_size,
            }],
        });
        let manifest_bytes = serde_json::to_vec(&manifest_json).expect("manifest serialises");
        let manifest_digest = sha256_of(&manifest_bytes);
        let bad = |e: serde_json::Error| Error::Other(format!("build the image config: {e}"));
        let record = ImageRecord {
            name,
            manifest_digest: manifest_digest.clone(),
            manifest: serde_json::from_value(manifest_json).map_err(bad)?,
            config_digest: config_digest.clone(),
            config: serde_json::from_value(config_json).map_err(bad)?,
            diff_ids: vec![record.diff_id],
            size: record.size,
            imported: chrono::Utc::now(),
        };
        self.commit(
            tmp,
            record,
            &[
                (&manifest_digest, &manifest_bytes),
                (&config_digest, &config_bytes),
            ],
        )
    }

    /// Unpacks an OCI layout tarball into `dest`: only directories and regular files, under
    /// the same path rules and limits as a layer.
    fn extract_layout_tar(&self, tarball: &Path, dest: &Path) -> Result<()> {
        let label = format!("image archive {}", tarball.display());
        let compression = Compression::sniff_file(tarball)?;
        let file = fs::File::open(tarball).ctx(|| format!("open {}", tarball.display()))?;
        let compressed = std::rc::Rc::new(std::cell::Cell::new(0));
        let counting = CountingReader {
            inner: file,
            count: compressed.clone(),
        };
        let decoder = decompressor(counting, compression).ctx(|| format!("read {label}"))?;
        let mut stream = GuardedStream::new(decoder, compressed, *self.limits());
        let tripped = stream.tripped();
        fs::create_dir(dest).ctx(|| format!("create {}", dest.display()))?;
        let mut current = String::from("(start of archive)");
        let result = extract_plain(&mut stream, dest, &label, &mut current);
        result.map_err(|err| match tripped.borrow_mut().take() {
            Some(what) => Error::Limit {
                layer: label.clone(),
                entry: current.clone(),
                what,
            },
            None => err,
        })
    }
}

fn extract_plain(
    stream: &mut dyn Read,
    dest: &Path,
    label: &str,
    current: &mut String,
) -> Result<()> {
    let io_err = |e: io::Error, entry: &str| Error::Io {
        context: format!("{label}: read the tar stream at entry `{entry}`"),
        source: e,
    };
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().map_err(|e| io_err(e, "(start)"))? {
        let mut entry = entry.map_err(|e| io_err(e, current))?;
        *current = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsafe_entry = |why: &str| Error::UnsafeEntry {
            layer: label.to_string(),
            entry: current.clone(),
            why: why.to_string(),
        };
        let rel = normalise_entry_path(&entry.path_bytes()).map_err(unsafe_entry)?;
        let path = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir_all(&path).ctx(|| format!("{label}: create `{current}`"))?
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).ctx(|| format!("{label}: create `{current}`"))?;
                }
                let _ = fs::remove_file(&path);
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .ctx(|| format!("{label}: create `{current}`"))?;
                io::copy(&mut entry, &mut f).map_err(|e| io_err(e, current))?;
            }
            _ => {
                return Err(unsafe_entry(
                    "is neither a file nor a directory, which an image layout never holds",
                ));
            }
        }
    }
    Ok(())
}

struct CountingReader<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Writes `dir` as an uncompressed tar (symlinks kept as symlinks) to `tarball`.
fn tar_directory(dir: &Path, tarball: &Path) -> Result<()> {
    let file = fs::File::create(tarball).ctx(|| format!("create {}", tarball.display()))?;
    let mut builder = tar::Builder::new(io::BufWriter::new(file));
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .and_then(|()| builder.into_inner())
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all())
        .ctx(|| format!("archive root filesystem {}", dir.display()))
}

fn check_layout_header(layout: &Path) -> Result<()> {
    let path = layout.join("oci-layout");
    let bytes = fs::read(&path).map_err(|e| Error::Invalid {
        path: path.clone(),
        msg: format!("cannot read the OCI layout header ({e}); is this an OCI image layout?"),
    })?;
    let header: serde_json::Value = parse_json(&bytes, &path)?;
    match header.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(v) if v.starts_with("1.") => Ok(()),
        other => Err(Error::Invalid {
            path,
            msg: format!("unsupported imageLayoutVersion {other:?}, expected 1.x"),
        }),
    }
}

fn is_index(d: &Descriptor) -> bool {
    matches!(
        d.media_type().to_string().as_str(),
        "application/vnd.oci.image.index.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
    )
}

/// The manifest `index.json` points at: the one whose `ref.name` is the wanted tag (or
/// name), else the only one.
fn choose_manifest<'a>(
    manifests: &'a [Descriptor],
    wanted: Option<&str>,
    index_path: &Path,
) -> Result<&'a Descriptor> {
    let ref_name = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(oci_spec::image::ANNOTATION_REF_NAME).cloned())
    };
    if let Some(wanted) = wanted {
        let tag = split_tag(wanted).1.unwrap_or_default();
        if let Some(d) = manifests.iter().find(|d| {
            ref_name(d)
                .is_some_and(|r| r == tag || normalise_name(&r).ok().as_deref() == Some(wanted))
        }) {
            return Ok(d);
        }
    }
    match manifests {
        [one] => Ok(one),
        [] => Err(Error::Invalid {
            path: index_path.to_path_buf(),
            msg: "the index lists no manifests".into(),
        }),
        many => Err(Error::Invalid {
            path: index_path.to_path_buf(),
            msg: format!(
                "the index lists {} images ({}); pick one with --name NAME:TAG",
                many.len(),
                many.iter()
                    .map(|d| ref_name(d).unwrap_or_else(|| d.digest().to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// From a multi-platform index, the manifest for this host (linux and its architecture).
fn choose_platform<'a>(manifests: &'a [Descriptor], index_path: &Path) -> Result<&'a Descriptor> {
    let arch = go_arch();
    let fits = |d: &&Descriptor| {
        d.platform()
            .as_ref()
            .is_none_or(|p| p.os().to_string() == "linux" && p.architecture().to_string() == arch)
    };
    manifests
        .iter()
        .filter(|d| !is_index(d))
        .find(fits)
        .ok_or_else(|| Error::Invalid {
            path: index_path.to_path_buf(),
            msg: format!("no manifest in the image index is for linux/{arch}"),
        })
}

/// This host's architecture in Go's names, as image configs and indexes use them.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

fn blob_file(layout: &Path, desc: &Descriptor) -> Result<PathBuf> {
    let digest = desc.digest().to_string();
    let hex = sha256_hex(&digest).ok_or_else(|| Error::Invalid {
        path: layout.to_path_buf(),
        msg: format!("blob digest {digest} is not a sha256 digest; only sha256 is supported"),
    })?;
    Ok(layout.join("blobs/sha256").join(hex))
}

/// A JSON blob, checked against its descriptor's size and digest.
fn read_blob(layout: &Path, desc: &Descriptor, what: &str) -> Result<Vec<u8>> {
    let path = blob_file(layout, desc)?;
    let label = format!("{what} {}", desc.digest());
    if desc.size() > MAX_JSON_BLOB {
        return Err(Error::Invalid {
            path,
            msg: format!(
                "{label} claims {} bytes; refusing JSON over {MAX_JSON_BLOB}",
                desc.size()
            ),
        });
    }
    let bytes = match read_capped(&path) {
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(Error::MissingBlob { blob: label, path });
        }
        other => other?,
    };
    if bytes.len() as u64 != desc.size() {
        return Err(Error::SizeMismatch {
            blob: format!("{label} at {}", path.display()),
            expected: desc.size(),
            actual: bytes.len() as u64,
        });
    }
    let actual = sha256_of(&bytes);
    if actual != desc.digest().as_ref() {
        return Err(Error::DigestMismatch {
            blob: format!("{label} at {}", path.display()),
            expected: desc.digest().to_string(),
            actual,
        });
    }
    Ok(bytes)
}

fn read_capped(path: &Path) -> Result<Vec<u8>> {
    let file = fs::File::open(path).ctx(|| format!("read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BLOB + 1)
        .read_to_end(&mut bytes)
        .ctx(|| format!("read {}", path.display()))?;
    if bytes.len() as u64 > MAX_JSON_BLOB {
        return Err(Error::Invalid {
            path: path.to_path_buf(),
            msg: format!("larger than {MAX_JSON_BLOB} bytes; not an image JSON document"),
        });
    }
    Ok(bytes)
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Invalid {
        path: path.to_path_buf(),
        msg: format!("not valid JSON for this document: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(ref_name: Option<&str>, n: u8) -> Descriptor {
        let mut d = Descriptor::new(
            oci_spec::image::MediaType::ImageManifest,
            1,
            oci_spec::image::Digest::try_from(format!("sha256:{}", hex::encode([n; 32]))).unwrap(),
        );
        if let Some(r) = ref_name {
            d.set_annotations(Some(
                [(
                    oci_spec::image::ANNOTATION_REF_NAME.to_string(),
                    r.to_string(),
                )]
                .into(),
            ));
        }
        d
    }

    #[test]
    fn the_manifest_is_chosen_by_tag_or_is_the_only_one() {
        let p = Path::new("/l/index.json");
        let one = [desc(None, 1)];
        assert_eq!(choose_manifest(&one, None, p).unwrap(), &one[0]);
        let two = [desc(Some("1.0"), 1), desc(Some("latest"), 2)];
        assert_eq!(
            choose_manifest(&two, Some("busybox:latest"), p).unwrap(),
            &two[1]
        );
        let err = choose_manifest(&two, None, p).unwrap_err().to_string();
        assert!(
            err.contains("1.0, latest") && err.contains("--name"),
            "{err}"
        );
        assert!(choose_manifest(&[], None, p).is_err());
    }
}
