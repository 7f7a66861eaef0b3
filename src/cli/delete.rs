//! `ferry delete`: remove a stopped container, or any container with `--force`.

use crate::runtime::unmade::Unmade;
use crate::runtime::{Error, Result, Runtime};
use clap::Args;

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct DeleteArgs {
    /// Kill the container first if it still runs; a container that does not exist is not
    /// an error (as with runc, so cleanup after a failed create can always call this)
    #[arg(short, long)]
    pub force: bool,
    /// Container id
    pub id: String,
}

impl DeleteArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        match runtime.hold(&self.id, true) {
            Ok((_hold, container)) => container.delete(self.force)?,
            Err(e @ Error::NotFound { .. }) => match runtime.unmade_id(&self.id) {
                // Taken but never made into a container: a create, run or restore killed
                // before it wrote the state (runtime::unmade). What it left goes; the id is
                // free again.
                Some(Unmade::Remains { bundle, pid }) => {
                    let removed = runtime.clear_remains(&self.id, bundle.as_deref())?;
                    tracing::warn!(
                        "container {:?} was never made: the ferry making it{} was killed; \
                         removed what it left ({removed}); the id is free again",
                        self.id,
                        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                    );
                }
                Some(Unmade::Making { by }) => {
                    return Err(Error::Busy {
                        id: self.id.clone(),
                        by,
                    });
                }
                // runc returns success here, silently: containerd and podman call `delete
                // --force` as cleanup that must not fail on a container already gone, and
                // podman shows the runtime's warnings to its user (after every `podman
                // container checkpoint`, whose checkpoint has already released the
                // container).
                None if self.force => {
                    tracing::debug!("container {:?} does not exist; nothing to delete", self.id);
                }
                None => return Err(e),
            },
            Err(err) => return Err(err),
        }
        Ok(0)
    }
}
