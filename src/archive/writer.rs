//! Writes a checkpoint archive in one pass: a tar stream, compressed as it goes, whose every
//! entry is hashed while it is written and listed in the signed `ferry.manifest` that closes
//! the stream. Nothing is staged: the output may be a pipe or a socket.

use crate::archive::manifest::{Entry, MANIFEST_NAME, Manifest, SignedManifest};
use crate::identity::Identity;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

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
    Zstd(zstd::stream::write::Encoder<'static, W>),
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

impl<W: Write> Encoder<W> {
    fn new(out: W, c: Compression) -> std::io::Result<Encoder<W>> {
        Ok(match c {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => {
                Encoder::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::fast()))
            }
            Compression::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(out, 3)?;
                // Compress on worker threads so the writer (and CRIU) keep the other core.
                let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                z.multithread(workers.max(1))?;
                Encoder::Zstd(z)
            }
        })
    }

    fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

/// Hashes and counts what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

pub struct ArchiveWriter<W: Write> {
    tar: tar::Builder<Encoder<W>>,
    entries: Vec<Entry>,
    /// Uncompressed bytes of entry content written so far.
    pub content_bytes: u64,
}

impl<W: Write> ArchiveWriter<W> {
    pub fn new(out: W, compression: Compression) -> Result<ArchiveWriter<W>, Error> {
        let enc = Encoder::new(out, compression).map_err(|source| Error::Write {
            entry: "(compressor)".into(),
            source,
        })?;
        let mut tar = tar::Builder::new(enc);
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(ArchiveWriter {
            tar,
            entries: vec![],
            content_bytes: 0,
        })
    }

    /// Adds `size` bytes read from `data` as the regular file `name`.
    pub fn add_reader(&mut self, name: &str, size: u64, data: impl Read) -> Result<(), Error> {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        let mut h = Hashing {
            inner: data.take(size),
            hasher: Sha256::new(),
            n: 0,
        };
        self.tar
            .append_data(&mut header, name, &mut h)
            .map_err(|source| Error::Write {
                entry: name.to_string(),
                source,
            })?;
        if h.n != size {
            return Err(Error::Write {
                entry: name.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("expected {size} bytes, got {}", h.n),
                ),
            });
        }
        self.content_bytes += size;
        self.entries.push(Entry {
            name: name.to_string(),
            sha256: hex::encode(h.hasher.finalize()),
            size,
        });
        Ok(())
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
        self.add_reader(name, size, std::io::BufReader::with_capacity(1 << 20, f))
    }

    /// Every regular file of `dir` (not recursive: CRIU's image dir is flat), sorted, as
    /// `<prefix>/<file name>`.
    pub fn add_dir(&mut self, prefix: &str, dir: &Path) -> Result<(), Error> {
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
            self.add_file(&name, &dir.join(&n))?;
        }
        Ok(())
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Closes the archive with the signed manifest of everything written.
    pub fn finish(mut self, mut manifest: Manifest, id: &Identity) -> Result<W, Error> {
        manifest.entries = std::mem::take(&mut self.entries);
        let signed = SignedManifest::sign(&manifest, id);
        let bytes = serde_json::to_vec_pretty(&signed).expect("manifest serialises");
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
        let enc = self.tar.into_inner().map_err(werr)?;
        let mut out = enc.finish().map_err(werr)?;
        out.flush().map_err(werr)?;
        Ok(out)
    }
}
