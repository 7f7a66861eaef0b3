//! `ferry pause`: freeze every process of a container.

use crate::runtime::{Result, Runtime};
use clap::Args;

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct PauseArgs {
    /// Container id
    pub id: String,
}

impl PauseArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        runtime.hold(&self.id, true)?.1.pause()?;
        Ok(0)
    }
}
