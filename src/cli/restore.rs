//! `ferry restore`: recreate a container from CRIU images. The flags are runc's plus what
//! podman, conmon and containerd send (CONTRACTS.md §1.6, §2.3–2.4); the restore itself
//! arrives with issue #4.

use super::checkpoint::CriuFlags;
use crate::checkpoint::RestoreOptions;
use crate::checkpoint::import::ImportOptions;
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
    /// Accepted for runc compatibility: with CRIU's rst_sibling the restored init is
    /// ferry's own child, so no subreaper is involved
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
    /// Restore an archive whose signer this host does not trust (the signature is still
    /// checked)
    #[arg(long)]
    pub insecure_allow_untrusted: bool,
    /// With -i: verify the whole archive before CRIU starts, instead of feeding CRIU the
    /// memory pages as they are verified (slower; nothing unverified is read either way)
    #[arg(long)]
    pub verify_first: bool,
    /// Container id
    pub id: Option<String>,
}

impl RestoreArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        // Ctrl-C, a service stop or timeout(1) meanwhile is an orderly abort: CRIU kills
        // what it restored and ferry removes the rest (sys::interrupt).
        crate::sys::interrupt::guard();
        let from = match &self.import {
            Some(i) if i == std::path::Path::new("-") => {
                "the archive read from standard input was consumed".to_string()
            }
            Some(i) => format!("the archive {} is as it was", i.display()),
            None => "the checkpoint's images are as they were".to_string(),
        };
        self.restore(runtime).map_err(|e| match crate::sys::interrupt::caught() {
            Some(sig) => Error::Other(format!(
                "interrupted by {sig}: nothing was restored and nothing of it is left; {from}\n  \
                 (where it stopped: {e})"
            )),
            None => e,
        })
    }

    fn restore(self, runtime: &Runtime) -> Result<i32> {
        if self.criu.tcp_close {
            tracing::debug!("--tcp-close: established TCP connections are restored closed");
        }
        if self.import.is_none() {
            for (set, flag) in [
                (self.name.is_some(), "--name"),
                (self.verify_first, "--verify-first"),
                (self.insecure_allow_untrusted, "--insecure-allow-untrusted"),
            ] {
                if set {
                    return Err(Error::Other(format!(
                        "{flag} applies to an archive: add --import FILE, or drop {flag} (a \
                         restore from --image-path takes the container's id as its argument \
                         and its images unsigned)"
                    )));
                }
            }
        }
        if let Some(input) = &self.import {
            if self.criu.image_path.is_some() || self.bundle.is_some() {
                return Err(Error::Other(
                    "--import brings its own checkpoint and bundle: drop --image-path/--bundle"
                        .into(),
                ));
            }
            let name = match (&self.name, &self.id) {
                (Some(n), Some(i)) if n != i => {
                    return Err(Error::Other(
                        "give the new name once: --name or the argument".into(),
                    ));
                }
                (n, i) => n.clone().or(i.clone()),
            };
            let opts = ImportOptions {
                input: input.clone(),
                name,
                detach: self.detach,
                keep: self.criu.keep,
                allow_untrusted: self.insecure_allow_untrusted,
                verify_first: self.verify_first,
                restore: self.restore_options(String::new(), PathBuf::new(), PathBuf::new()),
            };
            let (code, stats) = runtime.import(opts)?;
            super::checkpoint::report_stats(&self.criu, &stats, "restore")?;
            return Ok(code);
        }
        let id = self
            .id
            .clone()
            .ok_or_else(|| Error::Other("give the id of the container to restore".into()))?;
        let bundle = super::bundle_or_cwd(self.bundle.clone())?;
        if self.bundle.is_none() && !bundle.join("config.json").exists() {
            return Err(Error::Other(format!(
                "a runc-style restore needs the bundle the container was created from: \
                 --bundle DIR (the current directory, {}, has no config.json). A container \
                 made from an image (`ferry run --image`) moves as an archive instead: `ferry \
                 checkpoint ID -e FILE`, then `ferry restore -i FILE`",
                bundle.display()
            )));
        }
        let image_path = match &self.criu.image_path {
            Some(p) => p.clone(),
            None => super::bundle_or_cwd(None)?.join("checkpoint"),
        };
        runtime.restore(self.restore_options(id, bundle, image_path))
    }

    fn restore_options(&self, id: String, bundle: PathBuf, image_path: PathBuf) -> RestoreOptions {
        let c = &self.criu;
        RestoreOptions {
            id,
            bundle,
            image_path,
            work_path: c.work_path.clone(),
            detach: self.detach,
            pid_file: self.pid_file.clone(),
            console_socket: self.console_socket.clone(),
            tcp_established: c.tcp_established,
            tcp_close: c.tcp_close,
            ext_unix_sk: c.ext_unix_sk,
            shell_job: c.shell_job,
            file_locks: c.file_locks,
            manage_cgroups_mode: c.manage_cgroups_mode.map(|m| m.as_str().to_string()),
            empty_ns: c.empty_ns.clone(),
            auto_dedup: c.auto_dedup,
            network_lock: c.network_lock,
            lazy_pages: c.lazy_pages,
            status_fd: (c.status_fd >= 0).then_some(c.status_fd),
            lsm_profile: self.lsm_profile.clone(),
            lsm_mount_context: self.lsm_mount_context.clone(),
            image: None,
            id_taken: false,
            devshm: None,
            after_restore: None,
            before_resume: None,
        }
    }
}
