//! `ferry inspect FILE`: what a checkpoint archive holds (container, image, source host,
//! signer, process tree, memory, open files, rootfs changes), verified but not restored.

use crate::archive::inspect;
use crate::runtime::{Error, Result};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct InspectArgs {
    /// The checkpoint archive (`ferry checkpoint -e`), or - for stdin
    pub file: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value_t = InspectFormat::Text)]
    pub format: InspectFormat,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum InspectFormat {
    Text,
    Json,
}

impl InspectArgs {
    pub fn run(self, storage: &Path) -> Result<i32> {
        let i = inspect::inspect(&self.file, storage)
            .map_err(|e| Error::Other(format!("{}: {e}", self.file.display())))?;
        match self.format {
            InspectFormat::Json => println!(
                "{}",
                serde_json::to_string_pretty(&i).expect("inspection serialises")
            ),
            InspectFormat::Text => print!("{}", i.render_text()),
        }
        Ok(0)
    }
}
