//! `ferry create`: make a container from a bundle; its process waits for `start`.

use crate::runtime::{CreateOptions, Result, Runtime};
use clap::Args;
use std::path::PathBuf;

/// The flags `create` and `run` share (what conmon and containerd's shim pass).
#[derive(Args, Debug, Clone, Default)]
pub struct CreateFlags {
    /// Bundle directory holding config.json [default: the current directory]
    #[arg(short, long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Write the container's init pid to FILE
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to when the spec asks for a terminal
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Accepted for compatibility with runc; ferry does not send pidfds, and says so
    #[arg(long, value_name = "PATH")]
    pub pidfd_socket: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root (for ramdisk roots)
    #[arg(long)]
    pub no_pivot: bool,
    /// Do not create a new session keyring for the container
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass N extra file descriptors (3, 4, …) to the container process
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
}

impl CreateFlags {
    pub fn options(self, id: String) -> Result<CreateOptions> {
        if let Some(socket) = &self.pidfd_socket {
            tracing::warn!(
                "--pidfd-socket {} is not supported by ferry; no pidfd will be sent",
                socket.display()
            );
        }
        Ok(CreateOptions {
            id,
            bundle: super::bundle_or_cwd(self.bundle)?,
            pid_file: self.pid_file,
            console_socket: self.console_socket,
            no_pivot: self.no_pivot,
            no_new_keyring: self.no_new_keyring,
            preserve_fds: self.preserve_fds,
        })
    }
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct CreateArgs {
    #[command(flatten)]
    pub flags: CreateFlags,
    /// Accepted for compatibility (go-runc passes it); create always returns once the
    /// container is created
    #[arg(short, long)]
    pub detach: bool,
    /// Container id
    pub id: String,
}

impl CreateArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let opts = self.flags.options(self.id)?;
        runtime.create(&opts)?;
        Ok(0)
    }
}
