//! `ferry run`: create and start, then wait (foreground) or return (`-d`).

use super::create::{CreateFlags, ImageFlags};
use crate::runtime::{Result, RunOptions, Runtime};
use clap::Args;

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct RunArgs {
    #[command(flatten)]
    pub flags: CreateFlags,
    /// Return once the container started instead of waiting for it
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container's state after it exits
    #[arg(long)]
    pub keep: bool,
    /// Accepted for compatibility with runc
    #[arg(long)]
    pub no_subreaper: bool,
    /// Container id
    pub id: Option<String>,
    // After `id`: its trailing command must be the last positional for `--` to reach it.
    #[command(flatten)]
    pub image: ImageFlags,
}

impl RunArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let opts = RunOptions {
            create: self.image.options(self.flags, self.id, runtime)?,
            detach: self.detach,
            keep: self.keep,
        };
        runtime.run(&opts)
    }
}
