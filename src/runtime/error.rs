//! The runtime's error type: what failed, on which object, and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "container {id:?} does not exist (looked in {root}); `ferry list` shows the containers that do"
    )]
    NotFound { id: String, root: PathBuf },
    #[error("container {id:?} already exists; pick another id or `ferry delete {id}` first")]
    Exists { id: String },
    #[error(
        "container {id:?} is busy: {by} is making, checkpointing, pausing, resuming or \
         deleting it, or starting a process in it; try again once that has finished"
    )]
    Busy { id: String, by: String },
    #[error("invalid container id {id:?}: {why}")]
    InvalidId { id: String, why: &'static str },
    #[error("cannot {op} container {id:?}: it is {status}{hint}")]
    InvalidState {
        id: String,
        op: &'static str,
        status: String,
        hint: &'static str,
    },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {errno}")]
    Sys { context: String, errno: nix::Error },
    #[error("invalid signal {0:?}: use a name (TERM, SIGKILL) or a number (1-64)")]
    InvalidSignal(String),
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("hook {kind}[{index}] {path}: {msg}")]
    Hook {
        kind: &'static str,
        index: usize,
        path: String,
        msg: String,
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

/// Adds a context line to io and nix errors: `.ctx(|| format!("open {path}"))`.
pub trait Context<T> {
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

impl<T> Context<T> for std::result::Result<T, nix::Error> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|errno| Error::Sys {
            context: f().into(),
            errno,
        })
    }
}
