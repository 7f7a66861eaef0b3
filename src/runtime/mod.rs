//! The OCI runtime: containers made from `config.json` bundles, one file per lifecycle verb.
//! Everything here is synchronous and may fork; an async caller runs it in a blocking task
//! or spawns the ferry binary.

pub mod bundle;
pub mod capabilities;
pub mod cgroups;
pub mod console;
pub mod container;
pub mod create;
pub mod delete;
pub mod error;
pub mod exec;
pub mod features;
pub mod from_image;
pub mod hooks;
pub mod kill;
pub mod namespaces;
pub mod overlay;
pub mod pause;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod start;
pub mod state;
pub mod unmade;

pub use container::Container;
pub use error::{Error, Result};
pub use state::{OciState, Status};

use std::path::PathBuf;

/// Where the runtime keeps its per-container state (`--root`, default `/run/ferry`).
#[derive(Debug, Clone)]
pub struct Runtime {
    pub root: PathBuf,
    /// `--systemd-cgroup`: accepted for runc compatibility; ferry drives cgroupfs directly.
    pub systemd_cgroup: bool,
    /// The image store and the bundles of image containers (`--storage`, `/var/lib/ferry`).
    pub storage: PathBuf,
}

/// `ferry create` and the create half of `ferry run`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    /// The bundle directory holding `config.json` (made absolute by the runtime).
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// Extra fds after stdio (3, 4, …) handed to the container process.
    pub preserve_fds: u32,
    /// Set when ferry made the bundle from an image: released if create fails, and
    /// remembered so `delete` releases it.
    pub image: Option<from_image::ImageRootfs>,
    /// The id was taken ([`Runtime::take_id`]) by whoever made the bundle, before making it.
    pub id_taken: bool,
}

/// `ferry run`: create + start, then either wait (foreground) or return (detach).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub create: CreateOptions,
    pub detach: bool,
    /// Keep the container's state after it exits (`run --keep`); otherwise it is deleted.
    pub keep: bool,
}

/// `ferry exec`: a process to start inside a running container.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub process: oci_spec::runtime::Process,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Runtime {
            root: root.into(),
            systemd_cgroup: false,
            storage: PathBuf::from("/var/lib/ferry"),
        }
    }
}
