//! The checkpoint archive's pieces. `diff` reads a container's own changes from its overlay
//! upper dir and applies them elsewhere; `safe_path` keeps everything an archive names inside
//! the root it is unpacked into.

pub mod criu_images;
pub mod diff;
pub mod feed;
pub mod frames;
pub mod gate;
pub mod hashing;
pub mod inspect;
pub mod manifest;
pub mod pages;
pub mod prefault;
pub mod reader;
pub mod safe_path;
pub mod sha256x2;
pub mod stage;
pub mod uffd;
pub mod writer;
pub mod zhead;

pub use diff::{Change, ChangeKind, DiffSummary, apply_diff, changes, print_changes, write_diff};
