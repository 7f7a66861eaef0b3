//! `ferry checkpoint`: dump a running container with CRIU. The flags are runc's plus what
//! podman and containerd send (CONTRACTS.md §1.6, §2.3–2.4); the dump itself arrives with
//! issue #4.

use crate::runtime::{Error, Result, Runtime};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// CRIU flags that `checkpoint` and `restore` share: containerd's shim passes the same
/// option list to both.
#[derive(Args, Debug, Clone, Default)]
pub struct CriuFlags {
    /// Directory of the CRIU image files [default: ./checkpoint]
    #[arg(long, value_name = "DIR")]
    pub image_path: Option<PathBuf>,
    /// Directory for CRIU's work files and logs [default: the image path]
    #[arg(long, value_name = "DIR")]
    pub work_path: Option<PathBuf>,
    /// Images of a previous pre-dump, relative to the image path
    #[arg(long, value_name = "DIR")]
    pub parent_path: Option<PathBuf>,
    /// Checkpoint and restore established TCP connections
    #[arg(long)]
    pub tcp_established: bool,
    /// Close established TCP connections on restore instead of restoring them
    #[arg(long)]
    pub tcp_close: bool,
    /// Allow external unix sockets
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Allow shell jobs (a process attached to a terminal outside the container)
    #[arg(long)]
    pub shell_job: bool,
    /// Checkpoint and restore file locks
    #[arg(long)]
    pub file_locks: bool,
    /// How CRIU handles cgroups
    #[arg(long, value_enum, value_name = "MODE")]
    pub manage_cgroups_mode: Option<ManageCgroupsMode>,
    /// Namespace whose properties are not dumped or restored (repeatable), e.g. network
    #[arg(long, value_name = "NS")]
    pub empty_ns: Vec<String>,
    /// Use userfaultfd to fault memory pages in lazily
    #[arg(long)]
    pub lazy_pages: bool,
    /// File descriptor to write to when the lazy-pages server is ready
    #[arg(long, value_name = "FD", default_value_t = -1, allow_negative_numbers = true)]
    pub status_fd: i32,
    /// Send memory pages to a CRIU page server at ADDR:PORT
    #[arg(long, value_name = "ADDR:PORT")]
    pub page_server: Option<String>,
    /// Deduplicate the images of incremental dumps
    #[arg(long)]
    pub auto_dedup: bool,
    /// Keep temporary files (podman's --keep)
    #[arg(long)]
    pub keep: bool,
    /// Leave the root file system out of the archive (podman's --ignore-rootfs)
    #[arg(long)]
    pub ignore_rootfs: bool,
    /// Print CRIU's timing statistics
    #[arg(long)]
    pub print_stats: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ManageCgroupsMode {
    Soft,
    Full,
    Strict,
    Ignore,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub criu: CriuFlags,
    /// Leave the container running after the dump
    #[arg(long)]
    pub leave_running: bool,
    /// Dump memory only, as a parent for a later dump
    #[arg(long)]
    pub pre_dump: bool,
    /// Checkpoint established TCP connections even with data in flight
    #[arg(long)]
    pub tcp_skip_in_flight: bool,
    /// Allow CRIU to link-remap deleted files that are still open
    #[arg(long)]
    pub link_remap: bool,
    /// Write the checkpoint as an archive to FILE
    #[arg(short, long, value_name = "FILE")]
    pub export: Option<PathBuf>,
    /// Compression of the exported archive
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    pub compress: Option<Compression>,
    /// Container id
    pub id: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl CheckpointArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let _ = runtime;
        Err(Error::Other(
            "checkpoint is not implemented yet (issue #4)".into(),
        ))
    }
}
