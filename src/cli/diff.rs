//! `ferry diff ID`: the container's own changes to its image, as `podman diff` prints them
//! (`A /path`, `C /path`, `D /path`), or `--format json`.

use crate::archive::diff::{changes, print_changes};
use crate::runtime::{Error, Result, Runtime};
use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct DiffArgs {
    /// Container id
    pub id: String,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = DiffFormat::Text)]
    pub format: DiffFormat,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    Text,
    Json,
}

impl DiffArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let (upper, lowers) = runtime.load(&self.id)?.rootfs_layers()?;
        let changes = changes(&upper, &lowers).map_err(|e| {
            Error::Other(format!("read the changes of container {:?}: {e}", self.id))
        })?;
        print_changes(&changes, self.format == DiffFormat::Json);
        Ok(0)
    }
}
