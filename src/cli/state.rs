//! `ferry state`: the OCI state JSON on stdout and nothing on stderr (containerd decodes
//! both streams combined).

use crate::runtime::{Error, Result, Runtime};
use clap::Args;

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct StateArgs {
    /// Container id
    pub id: String,
}

impl StateArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let state = runtime.load(&self.id)?.state()?;
        let json = serde_json::to_string_pretty(&state)
            .map_err(|e| Error::Other(format!("serialise the state of {:?}: {e}", self.id)))?;
        println!("{json}");
        Ok(0)
    }
}
