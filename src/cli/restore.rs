//! `ferry restore`: recreate a container from CRIU images. The flags are runc's plus what
//! podman, conmon and containerd send (CONTRACTS.md §1.6, §2.3–2.4); the restore itself
//! arrives with issue #4.

use super::checkpoint::CriuFlags;
use crate::runtime::{Error, Result, Runtime};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub criu: CriuFlags,
    /// Bundle directory holding config.json [default: the current directory]
    #[arg(short, long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Return once the container is restored
    #[arg(short, long)]
    pub detach: bool,
    /// Write the restored init's pid to FILE
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Do not become a subreaper for the restored process
    #[arg(long)]
    pub no_subreaper: bool,
    /// Use MS_MOVE + chroot instead of pivot_root
    #[arg(long)]
    pub no_pivot: bool,
    /// Do not create a new session keyring
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass N extra file descriptors (3, 4, …) to the restored process
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// LSM profile for the restored process, TYPE:NAME (e.g. selinux:label)
    #[arg(long, value_name = "TYPE:NAME")]
    pub lsm_profile: Option<String>,
    /// LSM mount context for the restored container's mounts
    #[arg(long, value_name = "CONTEXT")]
    pub lsm_mount_context: Option<String>,
    /// Restore from the checkpoint archive FILE
    #[arg(short, long, value_name = "FILE")]
    pub import: Option<PathBuf>,
    /// Name of the restored container (podman's --name)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Container id
    pub id: String,
}

impl RestoreArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let _ = runtime;
        Err(Error::Other(
            "restore is not implemented yet (issue #4)".into(),
        ))
    }
}
