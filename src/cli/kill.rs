//! `ferry kill`: send a signal to the container's init, or to all its processes.

use crate::runtime::{Error, Result, Runtime};
use clap::Args;

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct KillArgs {
    /// Send the signal to every process of the container, not only its init
    #[arg(short, long)]
    pub all: bool,
    /// The signal, as a flag (runtime-spec's form) [default: TERM]
    #[arg(short, long = "signal", value_name = "SIGNAL")]
    pub signal_flag: Option<String>,
    /// Container id
    pub id: String,
    /// The signal: a name with or without SIG (TERM, SIGKILL) or a number [default: TERM]
    pub signal: Option<String>,
}

impl KillArgs {
    /// The signal named either way; naming two different ones is an error, not a guess.
    pub fn signal(&self) -> Result<nix::sys::signal::Signal> {
        let name = match (&self.signal_flag, &self.signal) {
            (Some(flag), Some(pos)) if flag != pos => {
                return Err(Error::Other(format!(
                    "two signals given ({flag} with --signal and {pos} as argument); give one"
                )));
            }
            (Some(s), _) | (None, Some(s)) => s.as_str(),
            (None, None) => "TERM",
        };
        crate::sys::signal::parse(name)
    }

    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let signal = self.signal()?;
        runtime.load(&self.id)?.kill(signal, self.all)?;
        Ok(0)
    }
}
