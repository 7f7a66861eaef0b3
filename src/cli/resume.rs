//! `ferry resume`: thaw a paused container.

use crate::runtime::{Result, Runtime};
use clap::Args;

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct ResumeArgs {
    /// Container id
    pub id: String,
}

impl ResumeArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        runtime.hold(&self.id, true)?.1.resume()?;
        Ok(0)
    }
}
