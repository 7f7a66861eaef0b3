//! Checkpoint and restore of one container through CRIU, the way runc does it (CONTRACTS.md
//! §1.4–1.5): `dump` freezes a container into an images directory, `restore` brings one back
//! from it under a new state record. Archives (`-e`/`-i`) are built on top in `archive/`.

pub mod dump;
pub mod export;
pub mod externals;
pub mod freshnet;
pub mod guard;
pub mod import;
pub mod netlock;
pub mod output;
pub mod restore;
pub mod tmpfs;
pub mod userns;

pub use dump::CheckpointOptions;
pub use restore::RestoreOptions;

/// The container's stdio at dump time (readlinks of the init's fds 0–2), so restore can hand
/// new pipes to the restored process in place of the old ones (`inherit_fd`).
pub const DESCRIPTORS_FILE: &str = "descriptors.json";
