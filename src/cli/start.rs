//! `ferry start`: let a created container's process exec its command.

use crate::runtime::{Result, Runtime};
use clap::Args;

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct StartArgs {
    /// Container id
    pub id: String,
}

impl StartArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        runtime.load(&self.id)?.start()?;
        Ok(0)
    }
}
