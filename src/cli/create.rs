//! `ferry create`: make a container from a bundle; its process waits for `start`.

use crate::runtime::from_image::ImageRequest;
use crate::runtime::{CreateOptions, Error, Result, Runtime};
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
            image: None,
            id_taken: false,
        })
    }
}

/// `--image NAME [--name ID] [-t] [-- CMD ARGS…]`: ferry makes the bundle from an image in
/// its store instead of reading one from `--bundle`.
#[derive(Args, Debug, Clone, Default)]
pub struct ImageFlags {
    /// Make the container from this image in ferry's store (`ferry image ls`)
    #[arg(long, value_name = "NAME", conflicts_with = "bundle")]
    pub image: Option<String>,
    /// Container id for an --image container [default: a random one]
    #[arg(long, value_name = "ID", requires = "image")]
    pub name: Option<String>,
    /// Give the --image container a terminal
    #[arg(short, long, requires = "image")]
    pub tty: bool,
    /// The command, replacing the image's Cmd (after `--`)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl ImageFlags {
    /// The create options: from an image (making its bundle now) or from the bundle flags.
    pub fn options(
        self,
        flags: CreateFlags,
        id: Option<String>,
        runtime: &Runtime,
    ) -> Result<CreateOptions> {
        let Some(image) = self.image else {
            if !self.command.is_empty() {
                return Err(Error::Other(
                    "a command after `--` needs --image; a bundle's command is in its config.json"
                        .into(),
                ));
            }
            let id = id.ok_or_else(|| {
                Error::Other("give a container id (or --image NAME to run an image)".into())
            })?;
            return flags.options(id);
        };
        if id.is_some() && self.name.is_some() && id != self.name {
            return Err(Error::Other(
                "give the id once: as --name or as the argument".into(),
            ));
        }
        let req = ImageRequest {
            image,
            id: self.name.or(id),
            command: self.command,
            tty: self.tty,
        };
        let (id, made) = runtime.prepare_image_bundle(&req)?;
        let mut opts = CreateFlags {
            bundle: Some(made.bundle.clone()),
            ..flags
        }
        .options(id.clone());
        if let Ok(o) = &mut opts {
            o.image = Some(made);
            o.id_taken = true;
            return opts;
        }
        let e = opts.unwrap_err();
        runtime.give_back_id(&id);
        Err(crate::runtime::create::with_cleanup(e, made.release(&id)))
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
    pub id: Option<String>,
    // After `id`: its trailing command must be the last positional for `--` to reach it.
    #[command(flatten)]
    pub image: ImageFlags,
}

impl CreateArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let from_image = self.image.image.is_some();
        let opts = self.image.options(self.flags, self.id, runtime)?;
        let c = runtime.create(&opts)?;
        if from_image {
            println!("{}", c.id);
        }
        Ok(0)
    }
}
