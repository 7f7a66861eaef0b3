//! One container: its persisted record under `<root>/<id>/` and the verbs that act on it.

use crate::runtime::error::Result;
use crate::runtime::{ExecOptions, OciState, Runtime, Status};
use oci_spec::runtime::{LinuxResources, Spec};

pub struct Container {
    pub runtime: Runtime,
    pub id: String,
}

impl Container {
    pub fn spec(&self) -> Result<Spec> {
        todo!()
    }
    pub fn status(&self) -> Result<Status> {
        todo!()
    }
    pub fn state(&self) -> Result<OciState> {
        todo!()
    }
    pub fn start(&self) -> Result<()> {
        todo!()
    }
    /// Sends `signal` to the init (or every process with `all`).
    pub fn kill(&self, signal: nix::sys::signal::Signal, all: bool) -> Result<()> {
        let _ = (signal, all);
        todo!()
    }
    pub fn delete(self, force: bool) -> Result<()> {
        let _ = force;
        todo!()
    }
    pub fn pause(&self) -> Result<()> {
        todo!()
    }
    pub fn resume(&self) -> Result<()> {
        todo!()
    }
    /// Runs a process inside. Detached: returns 0 once it started (its pid in the pid file);
    /// otherwise waits and returns its exit code (128+signal when killed).
    pub fn exec(&self, opts: &ExecOptions) -> Result<i32> {
        let _ = opts;
        todo!()
    }
    /// Host pids of every process of the container.
    pub fn processes(&self) -> Result<Vec<i32>> {
        todo!()
    }
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        let _ = resources;
        todo!()
    }
}

impl Runtime {
    pub fn load(&self, id: &str) -> Result<Container> {
        let _ = id;
        todo!()
    }
    /// Every container under the root, sorted by id; unreadable entries are skipped with a warning.
    pub fn list(&self) -> Result<Vec<Container>> {
        todo!()
    }
    pub fn create(&self, opts: &crate::runtime::CreateOptions) -> Result<Container> {
        let _ = opts;
        todo!()
    }
    /// Returns the exit code `ferry run` should exit with.
    pub fn run(&self, opts: &crate::runtime::RunOptions) -> Result<i32> {
        let _ = opts;
        todo!()
    }
}
