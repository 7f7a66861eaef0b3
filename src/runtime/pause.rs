//! `pause` and `resume`: the cgroup freezer.

use crate::runtime::Container;
use crate::runtime::error::Result;

impl Container {
    pub fn pause(&self) -> Result<()> {
        let status = self.status()?;
        if !status.can_pause() {
            return Err(self.invalid("pause", status, ""));
        }
        self.cgroup()?.freeze()
    }

    pub fn resume(&self) -> Result<()> {
        let status = self.status()?;
        if !status.can_resume() {
            return Err(self.invalid("resume", status, "; only a paused container can be resumed"));
        }
        self.cgroup()?.thaw()
    }
}
