//! CRIU's action-script notifications, handed to the caller while a dump or restore runs.
//! With `notify_scripts` set, CRIU stops at each point (`post-dump`, `setup-namespaces`,
//! `post-restore`, `orphan-pts-master`, `network-lock`, …) until the caller answers.

use std::os::fd::OwnedFd;

/// An error a caller's callback returns; CRIU is told the script failed and aborts.
pub type CallbackError = Box<dyn std::error::Error + Send + Sync>;

/// The caller's side of CRIU's notifications.
pub trait Notify {
    /// Called for each notification. `pid` is the restored init's pid for `setup-namespaces`
    /// and `post-restore` and 0 otherwise; `fds` holds the fds CRIU sent along (the pty master
    /// of `orphan-pts-master`). An error makes CRIU abort the dump or restore: a dump then
    /// leaves the tasks running, a restore kills what it had created.
    fn notify(&mut self, script: &str, pid: i32, fds: Vec<OwnedFd>) -> Result<(), CallbackError>;
}

/// Answers every notification with success.
#[derive(Debug, Default, Clone, Copy)]
pub struct IgnoreNotifications;

impl Notify for IgnoreNotifications {
    fn notify(&mut self, _: &str, _: i32, _: Vec<OwnedFd>) -> Result<(), CallbackError> {
        Ok(())
    }
}

/// Records every notification (script, pid, number of fds) and answers with success: for
/// tests and for callers that only need to know what happened.
#[derive(Debug, Default, Clone)]
pub struct NotificationLog {
    pub seen: Vec<(String, i32, usize)>,
}

impl NotificationLog {
    /// The pid of the first notification named `script`.
    pub fn pid_of(&self, script: &str) -> Option<i32> {
        self.seen.iter().find(|s| s.0 == script).map(|s| s.1)
    }

    pub fn scripts(&self) -> Vec<&str> {
        self.seen.iter().map(|s| s.0.as_str()).collect()
    }
}

impl Notify for NotificationLog {
    fn notify(&mut self, script: &str, pid: i32, fds: Vec<OwnedFd>) -> Result<(), CallbackError> {
        self.seen.push((script.to_string(), pid, fds.len()));
        Ok(())
    }
}
