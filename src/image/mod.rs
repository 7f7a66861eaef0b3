//! The content-addressed image store: OCI image layouts (or plain root filesystems) are
//! imported once, their blobs verified against their digests, their layers unpacked safely
//! into overlayfs-ready lower directories shared by every container that uses them.
//!
//! `store` owns the on-disk layout and its locking, `import` reads the sources, `layer`
//! unpacks one layer tar (the security boundary), `reference` parses names and digests.

pub mod digest;
pub mod import;
pub mod layer;
pub mod reference;
pub mod store;

pub use layer::{Compression, UnpackLimits, UnpackedLayer};
pub use store::{Image, Store};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{blob} has digest {actual}, expected {expected}; the image is corrupt or was altered, refusing to import it"
    )]
    DigestMismatch {
        blob: String,
        expected: String,
        actual: String,
    },
    #[error("{blob} is {actual} bytes, its descriptor says {expected}; refusing to import it")]
    SizeMismatch {
        blob: String,
        expected: u64,
        actual: u64,
    },
    #[error("{blob} is missing from the image layout (looked for {path})")]
    MissingBlob { blob: String, path: PathBuf },
    #[error("{layer}: entry `{entry}` {why}; refusing to import")]
    UnsafeEntry {
        layer: String,
        entry: String,
        why: String,
    },
    #[error(
        "{layer}: {what} while unpacking entry `{entry}`; refusing to import (a decompression bomb?)"
    )]
    Limit {
        layer: String,
        entry: String,
        what: String,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("image {query:?} not found in {root}; `ferry image ls` shows the images there")]
    NotFound { query: String, root: PathBuf },
    #[error("{query:?} matches several images ({matches}); give more of the digest or a name")]
    Ambiguous { query: String, matches: String },
    #[error(
        "image {image} is used by container(s) {containers}; delete them first (`ferry delete ID`)"
    )]
    InUse { image: String, containers: String },
    #[error("invalid {what} {value:?}: {why}")]
    InvalidName {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{0}")]
    Other(String),
    /// An error and the error its cleanup hit afterwards: both are reported.
    #[error("{error}\n  and then, while cleaning up: {cleanup}")]
    WithCleanup {
        error: Box<Error>,
        cleanup: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds what was being done to an io error: `.ctx(|| format!("read {path}"))`.
pub(crate) trait Context<T> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: f().into(),
            source,
        })
    }
}

/// The runtime reports image errors as its own (`ferry run --image`, `ferry image …`).
impl From<Error> for crate::runtime::Error {
    fn from(err: Error) -> Self {
        crate::runtime::Error::Other(err.to_string())
    }
}
