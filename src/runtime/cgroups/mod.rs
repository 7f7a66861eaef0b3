//! Control groups for one container: v1 (one directory per controller) and v2 (one unified
//! directory), behind one trait so the runtime never asks which it has.
//!
//! ferry writes cgroupfs directly, also when the caller speaks systemd's `slice:prefix:name`
//! form; it never asks systemd to create a scope (see [`relative_path`]).

mod v1;
mod v2;

#[cfg(test)]
mod fake;

pub use v1::{V1, device_rule_lines};
pub use v2::{V2, cpu_max, io_weight_from_blkio, swap_max, weight_from_shares};

pub mod devices_bpf;
use crate::runtime::error::{Context, Error, Result};
use oci_spec::runtime::{LinuxRdma, LinuxResources};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// What the kernel accounts for the cgroup now (cpu, memory, pids, block I/O, OOM
    /// kills). A file this kernel does not offer counts as zero rather than an error.
    fn stats(&self) -> Result<CgroupStats>;
}

/// A cgroup's usage in the shape of runc's `types.Stats`, which `ferry events` prints and
/// containerd's shim decodes with go-runc: the serde names are that JSON's field names.
/// Times are nanoseconds, sizes bytes; an unlimited limit is `u64::MAX` as in runc.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CgroupStats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub blkio: BlkioStats,
    /// OOM kills in the cgroup since it was created: `events` turns growth into `oom`
    /// events. Not part of runc's stats document.
    #[serde(skip)]
    pub oom_kills: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    pub usage: CpuUsage,
    pub throttling: CpuThrottling,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuUsage {
    pub total: u64,
    /// Per CPU (v1 only; cgroup v2 does not split usage by CPU).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

/// CFS bandwidth control: periods that ran, periods cut short by the quota, time waited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuThrottling {
    pub periods: u64,
    #[serde(rename = "throttledPeriods")]
    pub throttled_periods: u64,
    #[serde(rename = "throttledTime")]
    pub throttled_time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    /// Page cache: `cache` (v1) or `file` (v2) of memory.stat.
    pub cache: u64,
    pub usage: MemoryEntry,
    /// Memory + swap, as v1's memsw counts it (v2's swap-only numbers are added to memory's).
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// memory.stat as the kernel wrote it.
    pub raw: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEntry {
    pub limit: u64,
    pub usage: u64,
    /// The highest usage seen.
    pub max: u64,
    /// How often usage hit the limit.
    pub failcnt: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PidsStats {
    pub current: u64,
    /// 0 when there is no limit (`pids.max` is "max"), as runc reports it.
    pub limit: u64,
}

/// Bytes and operations per device; lists stay empty when the kernel keeps none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlkioStats {
    #[serde(rename = "ioServiceBytesRecursive")]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    #[serde(rename = "ioServicedRecursive")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    /// `Read`, `Write`, `Sync`, `Async`, `Discard`, `Total` (v1's names; v2's are mapped).
    pub op: String,
    pub value: u64,
}

/// Where the kernel's cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long `freeze()` waits for the kernel to report the cgroup frozen.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `destroy()` retries `rmdir` on EBUSY: killed tasks take a moment to leave.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(1);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Which cgroup layout the host mounts at [`CGROUP_ROOT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy {
    /// One hierarchy per controller (also "hybrid" hosts with an empty cgroup2 beside them).
    V1,
    /// The unified cgroup2 hierarchy.
    V2,
}

/// Tells v1 from v2 by the filesystem type of `root` (cgroup2 magic → v2).
pub fn detect(root: &Path) -> Result<Hierarchy> {
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
    let fs = statfs(root).ctx(|| format!("statfs {} (is cgroupfs mounted?)", root.display()))?;
    Ok(if fs.filesystem_type() == CGROUP2_SUPER_MAGIC {
        Hierarchy::V2
    } else {
        Hierarchy::V1
    })
}

/// The cgroup for `cgroups_path` from config.json (`linux.cgroupsPath`; relative paths are
/// placed under the hierarchy roots, absent means `/ferry/<id>`), on whatever hierarchy this
/// host mounts at `/sys/fs/cgroup`.
pub fn for_container(cgroups_path: Option<&std::path::Path>, id: &str) -> Result<Box<dyn Cgroup>> {
    let rel = relative_path(cgroups_path, id)?;
    Ok(match detect(Path::new(CGROUP_ROOT))? {
        Hierarchy::V2 => Box::new(V2::at(CGROUP_ROOT, rel)),
        Hierarchy::V1 => Box::new(V1::from_host(rel)?),
    })
}

/// Refuses a cgroup that already holds processes before a container is made or restored
/// into it: they would be frozen, listed, checkpointed and killed as the new container's.
/// It happens when two containers share a cgroup path: the default `ferry/<id>` does not
/// depend on `--root`, so one id under two roots (two "hosts" on one machine) meets here,
/// as it would under runc, which refuses the same way.
pub fn check_unused(cgroup: &dyn Cgroup, id: &str) -> Result<()> {
    let pids = cgroup.pids()?;
    if pids.is_empty() {
        return Ok(());
    }
    let dir = cgroup
        .paths()
        .first()
        .map(|(_, p)| p.display().to_string())
        .unwrap_or_default();
    Err(Error::Cgroup(format!(
        "the cgroup for container {id:?} ({dir}) already holds {} process(es) ({}): another \
         container uses it, most likely one with the same id under another --root. Give \
         this one another id, or a linux.cgroupsPath of its own",
        pids.len(),
        pids.iter()
            .take(5)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The container's cgroup path relative to each hierarchy root (no leading `/`).
///
/// - absent or empty: `ferry/<id>`;
/// - `/a/b` and `a/b`: `a/b` (both are placed under the root; `..` is refused);
/// - systemd's `slice:prefix:name` (what podman sends with `--cgroup-manager=systemd`):
///   ferry does not talk to systemd, it creates the directory systemd would have made for
///   that scope, `<slice path>/<prefix>-<name>.scope`. A nested slice such as
///   `machine-libpod.slice` expands to `machine.slice/machine-libpod.slice` as in systemd; an
///   empty slice means `system.slice`, and an empty prefix gives `<name>.scope`.
pub fn relative_path(cgroups_path: Option<&Path>, id: &str) -> Result<PathBuf> {
    let Some(path) = cgroups_path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(Path::new("ferry").join(id));
    };
    let text = path.to_str().ok_or_else(|| {
        Error::Cgroup(format!(
            "linux.cgroupsPath {path:?} is not UTF-8; use a plain path like /ferry/{id}"
        ))
    })?;
    if !text.starts_with('/') && text.matches(':').count() == 2 {
        return systemd_path(text);
    }
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => rel.push(c),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Cgroup(format!(
                    "linux.cgroupsPath {text:?} leaves the cgroup root through `..`; \
                     use a path below it like /ferry/{id}"
                )));
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(Error::Cgroup(format!(
            "linux.cgroupsPath {text:?} is the hierarchy root itself; the container needs a \
             cgroup of its own, e.g. /ferry/{id}"
        )));
    }
    Ok(rel)
}

fn systemd_path(text: &str) -> Result<PathBuf> {
    let bad = |why: &str| {
        Error::Cgroup(format!(
            "linux.cgroupsPath {text:?} in systemd form slice:prefix:name {why}"
        ))
    };
    let mut parts = text.splitn(3, ':');
    let (slice, prefix, name) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if [slice, prefix, name].iter().any(|p| p.contains('/')) {
        return Err(bad("must not contain `/`"));
    }
    if name.is_empty() {
        return Err(bad("has an empty name"));
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(bad("needs a slice ending in `.slice`, e.g. machine.slice"));
    };
    let mut rel = PathBuf::new();
    // systemd nests `a-b.slice` inside `a.slice`; `-.slice` is the root slice.
    if stem != "-" {
        let mut prefix_so_far = String::new();
        for word in stem.split('-') {
            if word.is_empty() || word == "." || word == ".." {
                return Err(bad("has an invalid slice name"));
            }
            if !prefix_so_far.is_empty() {
                prefix_so_far.push('-');
            }
            prefix_so_far.push_str(word);
            rel.push(format!("{prefix_so_far}.slice"));
        }
    }
    let unit = if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}-{name}")
    };
    if unit == "." || unit == ".." {
        return Err(bad("has an invalid name"));
    }
    if unit.ends_with(".slice") || unit.ends_with(".scope") {
        rel.push(unit);
    } else {
        rel.push(format!("{unit}.scope"));
    }
    Ok(rel)
}

/// The error for a limit the host cannot enforce because a controller is missing.
fn unavailable(controller: &str, setting: &str, value: impl std::fmt::Display) -> Error {
    Error::Cgroup(format!(
        "cannot set {setting} = {value}: the `{controller}` controller is not available on \
         this host; enable it or drop that limit from config.json"
    ))
}

/// Writes `value` to a cgroup file. A missing file gets its own message: on cgroupfs it means
/// the kernel does not offer that knob (controller off, feature not built in).
fn write_file(path: &Path, value: &str) -> Result<()> {
    tracing::debug!(path = %path.display(), value, "cgroup write");
    match std::fs::write(path, value) {
        Ok(()) => Ok(()),
        Err(e) if path.parent().is_some_and(|dir| !dir.exists()) => Err(Error::Cgroup(format!(
            "cannot write {value:?} to {}: the cgroup directory does not exist ({e}); it is \
             created when the container's process is moved into it",
            path.display()
        ))),
        Err(e) if !path.exists() || e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::Cgroup(format!(
                "cannot write {value:?} to {}: the file does not exist, so this kernel does not \
                 offer that setting ({e}); drop it from config.json or enable the feature",
                path.display()
            )))
        }
        Err(e) => Err(e).ctx(|| format!("write {value:?} to {}", path.display())),
    }
}

fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).ctx(|| format!("read {}", path.display()))
}

/// Reads a file that may be absent (a fresh directory of the fake tree, an optional knob).
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx(|| format!("read {}", path.display())),
    }
}

/// A number in a one-value cgroup file; `max` (no limit) is `u64::MAX`. `None` when the
/// file does not exist on this kernel or in this cgroup.
fn read_u64(path: &Path) -> Result<Option<u64>> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    parse_u64(text.trim(), path).map(Some)
}

fn parse_u64(word: &str, path: &Path) -> Result<u64> {
    if word == "max" {
        return Ok(u64::MAX);
    }
    word.parse()
        .map_err(|_| Error::Cgroup(format!("{}: {word:?} is not a number", path.display())))
}

/// A flat-keyed file (`key value` per line: memory.stat, cpu.stat, memory.events…); empty
/// when the file does not exist.
fn read_keyed(path: &Path) -> Result<BTreeMap<String, u64>> {
    let mut map = BTreeMap::new();
    for line in read_optional(path)?.unwrap_or_default().lines() {
        let mut words = line.split_whitespace();
        if let (Some(key), Some(value), None) = (words.next(), words.next(), words.next()) {
            map.insert(key.to_string(), parse_u64(value, path)?);
        }
    }
    Ok(map)
}

/// Space-separated numbers on one line (cpuacct.usage_percpu); empty when absent.
fn read_list(path: &Path) -> Result<Vec<u64>> {
    read_optional(path)?
        .unwrap_or_default()
        .split_whitespace()
        .map(|w| parse_u64(w, path))
        .collect()
}

/// `major:minor` of a block device line.
fn parse_device(word: &str) -> Option<(u64, u64)> {
    let (major, minor) = word.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Creates `root/rel` one level at a time. `on_level(parent, dir)` runs for every level
/// below `root` once it exists. Returns the directories this call created, deepest
/// last, so a failed apply can remove exactly those.
fn create_levels(
    root: &Path,
    rel: &Path,
    mut on_level: impl FnMut(&Path, &Path) -> Result<()>,
    created: &mut Vec<PathBuf>,
) -> Result<()> {
    let mut dir = root.to_path_buf();
    for component in rel.components() {
        let parent = dir.clone();
        dir.push(component);
        match std::fs::create_dir(&dir) {
            Ok(()) => created.push(dir.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).ctx(|| format!("create cgroup directory {}", dir.display()));
            }
        }
        on_level(&parent, &dir)?;
    }
    Ok(())
}

/// Runs `cleanup` after `error` and reports both when cleanup fails too.
fn with_cleanup(error: Error, cleanup: impl FnOnce() -> Result<()>) -> Error {
    match cleanup() {
        Ok(()) => error,
        Err(cleanup) => Error::WithCleanup {
            error: Box::new(error),
            cleanup: Box::new(cleanup),
        },
    }
}

/// Removes directories a failed `apply` created, deepest first. A directory that already
/// holds the process stays (EBUSY): the caller kills the process and calls `destroy()`.
fn remove_created(created: &[PathBuf]) -> Result<()> {
    let mut failures = Vec::new();
    for dir in created.iter().rev() {
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => failures.push(format!("rmdir {}: {e}", dir.display())),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Cgroup(failures.join("; ")))
    }
}

/// Every pid in `cgroup.procs` of `dir` and of its descendants; nothing if `dir` is gone.
fn pids_below(dir: &Path) -> Result<Vec<i32>> {
    let mut pids = Vec::new();
    collect_pids(dir, &mut pids)?;
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn collect_pids(dir: &Path, pids: &mut Vec<i32>) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let Some(text) = read_optional(&procs)? else {
        return Ok(());
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let pid = line
            .parse()
            .map_err(|_| Error::Cgroup(format!("{}: {line:?} is not a pid", procs.display())))?;
        pids.push(pid);
    }
    for child in subdirs(dir)? {
        collect_pids(&child, pids)?;
    }
    Ok(())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("list {}", dir.display())),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        let kind = entry
            .file_type()
            .ctx(|| format!("stat {}", entry.path().display()))?;
        if kind.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Removes `dir` and the cgroups below it, children first, retrying EBUSY until `deadline`.
fn remove_tree(dir: &Path, deadline: Instant) -> Result<()> {
    for child in subdirs(dir)? {
        remove_tree(&child, deadline)?;
    }
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(POLL_INTERVAL);
            }
            Err(e) => {
                return Err(e).ctx(|| {
                    format!(
                        "rmdir {} (if processes are still in it, kill the container first)",
                        dir.display()
                    )
                });
            }
        }
    }
}

/// Removes each directory tree; tries them all and reports every failure.
fn remove_trees(dirs: &[PathBuf]) -> Result<()> {
    let deadline = Instant::now() + DESTROY_TIMEOUT;
    let failures: Vec<String> = dirs
        .iter()
        .filter_map(|dir| remove_tree(dir, deadline).err())
        .map(|e| e.to_string())
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Cgroup(failures.join("; ")))
    }
}

/// `rdma.max` lines (same format in v1 and v2): `mlx5_0 hca_handle=2 hca_object=2000`.
fn rdma_lines(rdma: &HashMap<String, LinuxRdma>) -> Vec<String> {
    let mut devices: Vec<_> = rdma.iter().collect();
    devices.sort_by(|a, b| a.0.cmp(b.0));
    devices
        .into_iter()
        .filter_map(|(device, limits)| {
            let mut line = device.clone();
            if let Some(h) = limits.hca_handles() {
                line.push_str(&format!(" hca_handle={h}"));
            }
            if let Some(o) = limits.hca_objects() {
                line.push_str(&format!(" hca_object={o}"));
            }
            (line.len() > device.len()).then_some(line)
        })
        .collect()
}

/// `pids.max` value: positive is the limit, negative is "max", 0 leaves it alone.
fn pids_max(limit: i64) -> Option<String> {
    match limit {
        0 => None,
        l if l < 0 => Some("max".to_string()),
        l => Some(l.to_string()),
    }
}

/// Polls `check` until it is true or `timeout` passes.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(path: Option<&str>) -> Result<PathBuf> {
        relative_path(path.map(Path::new), "c1")
    }

    #[test]
    fn absent_path_goes_under_ferry() {
        assert_eq!(rel(None).unwrap(), Path::new("ferry/c1"));
        assert_eq!(rel(Some("")).unwrap(), Path::new("ferry/c1"));
    }

    #[test]
    fn absolute_and_relative_paths_sit_under_the_root() {
        assert_eq!(rel(Some("/a/b")).unwrap(), Path::new("a/b"));
        assert_eq!(rel(Some("a/b")).unwrap(), Path::new("a/b"));
        assert_eq!(rel(Some("/a/./b/")).unwrap(), Path::new("a/b"));
    }

    #[test]
    fn escaping_and_root_paths_are_refused() {
        let err = rel(Some("/a/../../etc")).unwrap_err().to_string();
        assert!(err.contains(".."), "{err}");
        let err = rel(Some("/")).unwrap_err().to_string();
        assert!(err.contains("root"), "{err}");
    }

    #[test]
    fn systemd_form_maps_to_a_scope() {
        assert_eq!(
            rel(Some("machine.slice:libpod:abc")).unwrap(),
            Path::new("machine.slice/libpod-abc.scope")
        );
        assert_eq!(
            rel(Some("machine-libpod.slice:crio:x")).unwrap(),
            Path::new("machine.slice/machine-libpod.slice/crio-x.scope")
        );
        assert_eq!(
            rel(Some(":ferry:x")).unwrap(),
            Path::new("system.slice/ferry-x.scope")
        );
        assert_eq!(rel(Some("-.slice::x")).unwrap(), Path::new("x.scope"));
        assert!(rel(Some("machine:libpod:x")).is_err());
        assert!(rel(Some("machine.slice:libpod:")).is_err());
        assert!(rel(Some("machine.slice:a/b:x")).is_err());
    }

    #[test]
    fn pids_max_values() {
        assert_eq!(pids_max(0), None);
        assert_eq!(pids_max(-1).as_deref(), Some("max"));
        assert_eq!(pids_max(20).as_deref(), Some("20"));
    }

    #[test]
    fn destroy_removes_children_first_and_tolerates_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = tmp.path().join("ferry/c1");
        std::fs::create_dir_all(leaf.join("sub/deeper")).unwrap();
        remove_trees(&[leaf.clone(), tmp.path().join("missing")]).unwrap();
        assert!(!leaf.exists());
        assert!(tmp.path().join("ferry").exists(), "the shared parent stays");
    }
}

/// The resources a new container's cgroup gets: the spec's, with device rules completed the
/// way runc completes them, since clients rely on it (podman sends only "deny all"): allow
/// every device in `linux.devices`, then the devices every container needs (null, zero,
/// full, random, urandom, tty, console, ptmx, pts, tun, and mknod of any device).
pub fn container_resources(spec: &oci_spec::runtime::Spec) -> LinuxResources {
    use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
    let linux = spec.linux().as_ref();
    let mut resources = linux
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    let rule = |typ, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true)
            .set_typ(Some(typ))
            .set_major(major)
            .set_minor(minor)
            .set_access(Some(access.to_string()));
        r
    };
    let mut rules = resources.devices().clone().unwrap_or_default();
    for d in linux.and_then(|l| l.devices().clone()).unwrap_or_default() {
        rules.push(rule(d.typ(), Some(d.major()), Some(d.minor()), "rwm"));
    }
    use LinuxDeviceType::{B, C};
    for (typ, major, minor, access) in [
        (C, None, None, "m"),
        (B, None, None, "m"),
        (C, Some(1), Some(3), "rwm"),
        (C, Some(1), Some(5), "rwm"),
        (C, Some(1), Some(7), "rwm"),
        (C, Some(1), Some(8), "rwm"),
        (C, Some(1), Some(9), "rwm"),
        (C, Some(5), Some(0), "rwm"),
        (C, Some(5), Some(1), "rwm"),
        (C, Some(5), Some(2), "rwm"),
        (C, Some(136), None, "rwm"),
        (C, Some(10), Some(200), "rwm"),
    ] {
        rules.push(rule(typ, major, minor, access));
    }
    resources.set_devices(Some(rules));
    resources
}

#[cfg(test)]
mod default_device_tests {
    use super::*;

    #[test]
    fn deny_all_gets_the_defaults_after_it() {
        let spec: oci_spec::runtime::Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"resources":{"devices":[{"allow":false,"access":"rwm"}]},
                "devices":[{"path":"/dev/fuse","type":"c","major":10,"minor":229}]}}"#,
        )
        .unwrap();
        let r = container_resources(&spec);
        let rules = r.devices().clone().unwrap();
        assert!(!rules[0].allow(), "the spec's own rules come first");
        assert!(
            rules
                .iter()
                .any(|d| d.allow() && d.major() == Some(10) && d.minor() == Some(229))
        );
        assert!(
            rules
                .iter()
                .any(|d| d.allow() && d.major() == Some(5) && d.minor() == Some(2))
        );
        assert!(
            rules
                .iter()
                .any(|d| d.allow() && d.major() == Some(136) && d.minor().is_none())
        );
    }
}
