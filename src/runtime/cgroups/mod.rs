//! Control groups for one container: v1 (one directory per controller) and v2 (one unified
//! directory), behind one trait so the runtime never asks which it has.

use crate::runtime::error::Result;
use oci_spec::runtime::LinuxResources;

/// The cgroup(s) of one container.
pub trait Cgroup: Send + Sync {
    /// Creates the cgroup directories if missing and moves `pid` into them.
    fn apply(&self, pid: i32) -> Result<()>;
    /// Writes the resource limits (memory, cpu, cpuset, pids, devices…) to the cgroup.
    fn set(&self, resources: &LinuxResources) -> Result<()>;
    /// Freezes every process of the cgroup and waits until the kernel says FROZEN.
    fn freeze(&self) -> Result<()>;
    /// Thaws the cgroup.
    fn thaw(&self) -> Result<()>;
    /// True when the cgroup is frozen (the container is paused).
    fn is_frozen(&self) -> Result<bool>;
    /// Every pid in the cgroup (and its children), as the host sees them.
    fn pids(&self) -> Result<Vec<i32>>;
    /// Removes the cgroup directories; kills nothing. Missing directories are not an error.
    fn destroy(&self) -> Result<()>;
    /// Each controller (v1) or "" (v2) with its absolute directory: CRIU's `cg_root` and
    /// `freeze_cgroup` are built from these.
    fn paths(&self) -> Vec<(String, std::path::PathBuf)>;
}

/// The cgroup for `cgroups_path` from config.json (`linux.cgroupsPath`; relative paths are
/// placed under the hierarchy roots, absent means `/ferry/<id>`), on whatever hierarchy this
/// host mounts at `/sys/fs/cgroup`.
pub fn for_container(cgroups_path: Option<&std::path::Path>, id: &str) -> Result<Box<dyn Cgroup>> {
    let _ = (cgroups_path, id);
    todo!("cgroups helper")
}
