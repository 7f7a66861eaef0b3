//! ferry: an OCI runtime that checkpoints running containers and moves them between hosts.
//!
//! `runtime` is the synchronous OCI runtime (never runs under tokio); `cli` turns argv into
//! calls on it; `sys` holds the small wrappers over kernel interfaces the runtime shares.

pub mod archive;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod criu;
pub mod identity;
pub mod image;
pub mod logging;
pub mod progress;
pub mod runtime;
pub mod sys;
