//! cgroup v1: one hierarchy per controller (or per group of co-mounted controllers such as
//! `cpu,cpuacct`), found in `/proc/self/mountinfo`. The container gets the same relative
//! directory in every hierarchy.

use super::{
    BlkioEntry, BlkioStats, Cgroup, CgroupStats, FREEZE_TIMEOUT, MemoryEntry, create_levels,
    parse_device, pids_below, pids_max, rdma_lines, read_file, read_keyed, read_list,
    read_optional, read_u64, remove_created, remove_trees, unavailable, wait_until, with_cleanup,
    write_file,
};
use crate::runtime::error::{Error, Result};
use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxResources,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The container's cgroup on a v1 host.
#[derive(Debug, Clone)]
pub struct V1 {
    /// Controller name (`cpu`, `memory`, `name=systemd`…) → where its hierarchy is mounted.
    /// Co-mounted controllers share one mount point.
    mounts: BTreeMap<String, PathBuf>,
    /// Relative to each mount point, e.g. `ferry/<id>`.
    rel: PathBuf,
    freeze_timeout: Duration,
}

impl V1 {
    /// The hierarchies mounted in this process's mount namespace.
    pub fn from_host(rel: impl Into<PathBuf>) -> Result<Self> {
        let mountinfo = read_file(Path::new("/proc/self/mountinfo"))?;
        let mounts = parse_mountinfo(&mountinfo);
        if mounts.is_empty() {
            return Err(Error::Cgroup(
                "no cgroup v1 hierarchy is mounted (none in /proc/self/mountinfo) and \
                 /sys/fs/cgroup is not cgroup2; mount cgroupfs first"
                    .into(),
            ));
        }
        Ok(Self::with_mounts(mounts, rel))
    }

    /// A cgroup on the given hierarchies: controller → mount point (tests point these at a
    /// temporary tree).
    pub fn with_mounts(mounts: BTreeMap<String, PathBuf>, rel: impl Into<PathBuf>) -> Self {
        V1 {
            mounts,
            rel: rel.into(),
            freeze_timeout: FREEZE_TIMEOUT,
        }
    }

    /// The container's directory in the hierarchy holding `controller`, if it is mounted.
    pub fn dir(&self, controller: &str) -> Option<PathBuf> {
        self.mounts.get(controller).map(|m| m.join(&self.rel))
    }

    /// Distinct mount points (co-mounted controllers appear once).
    fn hierarchies(&self) -> Vec<&PathBuf> {
        let mut roots: Vec<&PathBuf> = self.mounts.values().collect();
        roots.sort();
        roots.dedup();
        roots
    }

    fn leaf_dirs(&self) -> Vec<PathBuf> {
        self.hierarchies()
            .into_iter()
            .map(|root| root.join(&self.rel))
            .collect()
    }

    fn is_cpuset_root(&self, root: &Path) -> bool {
        self.mounts.get("cpuset").is_some_and(|m| m == root)
    }

    /// The controller's directory, or the "cannot enforce" error naming `setting = value`.
    fn need(
        &self,
        controller: &str,
        setting: &str,
        value: &dyn std::fmt::Display,
    ) -> Result<PathBuf> {
        self.dir(controller)
            .ok_or_else(|| unavailable(controller, setting, value))
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> Result<()> {
        let dir = self.need(controller, file, &value)?;
        write_file(&dir.join(file), value)
    }

    fn apply_to(&self, pid: i32, created: &mut Vec<PathBuf>) -> Result<()> {
        for root in self.hierarchies() {
            let cpuset = self.is_cpuset_root(root);
            create_levels(
                root,
                &self.rel,
                |parent, dir| {
                    if cpuset {
                        copy_cpuset_down(parent, dir)?;
                    }
                    Ok(())
                },
                created,
            )?;
            write_file(&root.join(&self.rel).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn set_memory(&self, m: &LinuxMemory) -> Result<()> {
        // "Unlimited" (-1) needs no controller to enforce it.
        let has_memory = self.dir("memory").is_some();
        let wanted = |v: &i64| *v != 0 && (*v > 0 || has_memory);
        let limit = m.limit().filter(wanted);
        let swap = m.swap().filter(wanted);
        if let Some(limit) = limit {
            let dir = self.need("memory", "memory.limit", &limit)?;
            let limit_file = dir.join("memory.limit_in_bytes");
            let swap_file = dir.join("memory.memsw.limit_in_bytes");
            // An unlimited memory limit also lifts memory+swap, or the old memsw caps it;
            // skipped when the kernel has no swap accounting.
            let swap = swap.or((limit == -1 && swap_file.exists()).then_some(-1));
            match swap {
                None => write_file(&limit_file, &limit.to_string())?,
                Some(swap) => {
                    // memsw must stay >= limit at every step: raise memsw first unless the
                    // current limit is above the new memsw.
                    let current: i64 = read_file(&limit_file)?.trim().parse().unwrap_or(i64::MAX);
                    if swap == -1 || current <= swap {
                        write_file(&swap_file, &swap.to_string())?;
                        write_file(&limit_file, &limit.to_string())?;
                    } else {
                        write_file(&limit_file, &limit.to_string())?;
                        write_file(&swap_file, &swap.to_string())?;
                    }
                }
            }
        } else if let Some(swap) = swap {
            self.write("memory", "memory.memsw.limit_in_bytes", &swap.to_string())?;
        }
        if let Some(reservation) = m.reservation().filter(|&v| v != 0) {
            self.write(
                "memory",
                "memory.soft_limit_in_bytes",
                &reservation.to_string(),
            )?;
        }
        #[allow(deprecated)]
        if m.kernel().is_some_and(|k| k != 0) {
            tracing::warn!(
                "ignoring linux.resources.memory.kernel: kernel memory limits are obsolete since Linux 5.4"
            );
        }
        if let Some(tcp) = m.kernel_tcp().filter(|&v| v != 0) {
            self.write("memory", "memory.kmem.tcp.limit_in_bytes", &tcp.to_string())?;
        }
        if let Some(swappiness) = m.swappiness() {
            if swappiness > 100 {
                return Err(Error::Cgroup(format!(
                    "memory.swappiness {swappiness} is out of range; use 0-100"
                )));
            }
            self.write("memory", "memory.swappiness", &swappiness.to_string())?;
        }
        if m.disable_oom_killer() == Some(true) {
            self.write("memory", "memory.oom_control", "1")?;
        }
        Ok(())
    }

    fn set_cpu(&self, cpu: &LinuxCpu) -> Result<()> {
        if let Some(shares) = cpu.shares().filter(|&v| v != 0) {
            self.write("cpu", "cpu.shares", &shares.to_string())?;
        }
        let quota = cpu.quota().filter(|&v| v != 0).map(|v| v.to_string());
        let period = cpu.period().filter(|&v| v != 0).map(|v| v.to_string());
        self.write_pair(
            "cpu",
            ("cpu.cfs_period_us", period),
            ("cpu.cfs_quota_us", quota),
        )?;
        if let Some(burst) = cpu.burst() {
            self.write("cpu", "cpu.cfs_burst_us", &burst.to_string())?;
        }
        if let Some(idle) = cpu.idle() {
            self.write("cpu", "cpu.idle", &idle.to_string())?;
        }
        let rt_period = cpu
            .realtime_period()
            .filter(|&v| v != 0)
            .map(|v| v.to_string());
        let rt_runtime = cpu
            .realtime_runtime()
            .filter(|&v| v != 0)
            .map(|v| v.to_string());
        self.write_pair(
            "cpu",
            ("cpu.rt_period_us", rt_period),
            ("cpu.rt_runtime_us", rt_runtime),
        )?;
        if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
            self.write("cpuset", "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
            self.write("cpuset", "cpuset.mems", mems)?;
        }
        Ok(())
    }

    /// Writes two dependent values (a period and the runtime within it): first `a`, then `b`;
    /// when the kernel refuses `a` with EINVAL because of the old `b`, the other way round.
    fn write_pair(
        &self,
        controller: &str,
        a: (&str, Option<String>),
        b: (&str, Option<String>),
    ) -> Result<()> {
        match (a, b) {
            ((_, None), (_, None)) => Ok(()),
            ((file, Some(v)), (_, None)) | ((_, None), (file, Some(v))) => {
                self.write(controller, file, &v)
            }
            ((fa, Some(va)), (fb, Some(vb))) => {
                let dir = self.need(controller, fa, &va)?;
                if let Err(first) = write_file(&dir.join(fa), &va) {
                    if !is_einval(&first) {
                        return Err(first);
                    }
                    write_file(&dir.join(fb), &vb)?;
                    return write_file(&dir.join(fa), &va);
                }
                write_file(&dir.join(fb), &vb)
            }
        }
    }

    fn set_block_io(&self, io: &LinuxBlockIo) -> Result<()> {
        if let Some(weight) = io.weight().filter(|&w| w != 0) {
            let dir = self.need("blkio", "blockIO.weight", &weight)?;
            // CFQ's blkio.weight is gone from current kernels; BFQ offers blkio.bfq.weight.
            let file = if dir.join("blkio.weight").exists() {
                "blkio.weight"
            } else {
                "blkio.bfq.weight"
            };
            write_file(&dir.join(file), &weight.to_string())?;
        }
        if let Some(leaf) = io.leaf_weight().filter(|&w| w != 0) {
            self.write("blkio", "blkio.leaf_weight", &leaf.to_string())?;
        }
        for device in io.weight_device().iter().flatten() {
            if let Some(weight) = device.weight() {
                let line = format!("{}:{} {weight}", device.major(), device.minor());
                let dir = self.need("blkio", "blockIO.weightDevice", &line)?;
                let file = if dir.join("blkio.weight_device").exists() {
                    "blkio.weight_device"
                } else {
                    "blkio.bfq.weight_device"
                };
                write_file(&dir.join(file), &line)?;
            }
        }
        let throttles = [
            (
                "blkio.throttle.read_bps_device",
                io.throttle_read_bps_device(),
            ),
            (
                "blkio.throttle.write_bps_device",
                io.throttle_write_bps_device(),
            ),
            (
                "blkio.throttle.read_iops_device",
                io.throttle_read_iops_device(),
            ),
            (
                "blkio.throttle.write_iops_device",
                io.throttle_write_iops_device(),
            ),
        ];
        for (file, devices) in throttles {
            for d in devices.iter().flatten() {
                let line = format!("{}:{} {}", d.major(), d.minor(), d.rate());
                self.write("blkio", file, &line)?;
            }
        }
        Ok(())
    }

    fn set_devices(&self, rules: &[LinuxDeviceCgroup]) -> Result<()> {
        let dir = self.need(
            "devices",
            "linux.resources.devices",
            &format!("{} rules", rules.len()),
        )?;
        // Deny everything, then open what the rules allow, in their order (as runc does).
        write_file(&dir.join("devices.deny"), "a")?;
        for rule in rules {
            let file = if rule.allow() {
                "devices.allow"
            } else {
                "devices.deny"
            };
            for line in device_rule_lines(rule)? {
                write_file(&dir.join(file), &line)?;
            }
        }
        Ok(())
    }

    /// Usage of every mounted controller; an unmounted one leaves its part zero.
    fn read_stats(&self, user_hz: u64) -> Result<CgroupStats> {
        let mut stats = CgroupStats::default();
        if let Some(dir) = self.dir("cpuacct") {
            let usage = &mut stats.cpu.usage;
            usage.total = read_u64(&dir.join("cpuacct.usage"))?.unwrap_or(0);
            usage.percpu = read_list(&dir.join("cpuacct.usage_percpu"))?;
            usage.percpu_kernel = read_list(&dir.join("cpuacct.usage_percpu_sys"))?;
            usage.percpu_user = read_list(&dir.join("cpuacct.usage_percpu_user"))?;
            // cpuacct.stat counts in USER_HZ ticks, not nanoseconds.
            let ticks = read_keyed(&dir.join("cpuacct.stat"))?;
            usage.user = ticks_to_ns(ticks.get("user").copied().unwrap_or(0), user_hz);
            usage.kernel = ticks_to_ns(ticks.get("system").copied().unwrap_or(0), user_hz);
        }
        if let Some(dir) = self.dir("cpu") {
            let cpu = read_keyed(&dir.join("cpu.stat"))?;
            let get = |k: &str| cpu.get(k).copied().unwrap_or(0);
            let throttling = &mut stats.cpu.throttling;
            throttling.periods = get("nr_periods");
            throttling.throttled_periods = get("nr_throttled");
            throttling.throttled_time = get("throttled_time");
        }
        if let Some(dir) = self.dir("memory") {
            let memory = &mut stats.memory;
            memory.usage = memory_entry(&dir, "memory")?;
            memory.swap = memory_entry(&dir, "memory.memsw")?;
            memory.kernel = memory_entry(&dir, "memory.kmem")?;
            memory.kernel_tcp = memory_entry(&dir, "memory.kmem.tcp")?;
            memory.raw = read_keyed(&dir.join("memory.stat"))?;
            memory.cache = memory.raw.get("cache").copied().unwrap_or(0);
            let oom = read_keyed(&dir.join("memory.oom_control"))?;
            stats.oom_kills = oom.get("oom_kill").copied().unwrap_or(0);
        }
        if let Some(dir) = self.dir("pids") {
            stats.pids.current = read_u64(&dir.join("pids.current"))?.unwrap_or(0);
            // "max" is no limit, which runc reports as 0.
            stats.pids.limit = read_u64(&dir.join("pids.max"))?
                .filter(|&v| v != u64::MAX)
                .unwrap_or(0);
        }
        if let Some(dir) = self.dir("blkio") {
            stats.blkio = blkio_stats(&dir)?;
        }
        Ok(stats)
    }
}

/// `<prefix>.usage_in_bytes`, `.max_usage_in_bytes`, `.limit_in_bytes` and `.failcnt`.
fn memory_entry(dir: &Path, prefix: &str) -> Result<MemoryEntry> {
    let read = |name: &str| -> Result<u64> {
        Ok(read_u64(&dir.join(format!("{prefix}.{name}")))?.unwrap_or(0))
    };
    Ok(MemoryEntry {
        usage: read("usage_in_bytes")?,
        max: read("max_usage_in_bytes")?,
        limit: read("limit_in_bytes")?,
        failcnt: read("failcnt")?,
    })
}

/// Block I/O from the first family of files that has entries: CFQ's, BFQ's, then the
/// throttle layer's (which counts every device, whatever its scheduler).
fn blkio_stats(dir: &Path) -> Result<BlkioStats> {
    for prefix in ["blkio", "blkio.bfq", "blkio.throttle"] {
        let stats = BlkioStats {
            io_service_bytes_recursive: blkio_entries(
                &dir.join(format!("{prefix}.io_service_bytes_recursive")),
            )?,
            io_serviced_recursive: blkio_entries(
                &dir.join(format!("{prefix}.io_serviced_recursive")),
            )?,
        };
        if !stats.io_service_bytes_recursive.is_empty() || !stats.io_serviced_recursive.is_empty() {
            return Ok(stats);
        }
    }
    Ok(BlkioStats::default())
}

/// `8:0 Read 4096` lines; the closing `Total N` line (no device) is skipped.
fn blkio_entries(path: &Path) -> Result<Vec<BlkioEntry>> {
    let mut entries = Vec::new();
    for line in read_optional(path)?.unwrap_or_default().lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [device, op, value] = words[..] else {
            continue;
        };
        let (Some((major, minor)), Ok(value)) = (parse_device(device), value.parse()) else {
            continue;
        };
        entries.push(BlkioEntry {
            major,
            minor,
            op: op.to_string(),
            value,
        });
    }
    Ok(entries)
}

/// USER_HZ ticks to nanoseconds.
pub fn ticks_to_ns(ticks: u64, user_hz: u64) -> u64 {
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(user_hz.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The kernel's USER_HZ (`sysconf(_SC_CLK_TCK)`), 100 on every Linux architecture in use.
fn user_hz() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as u64,
        _ => 100,
    }
}

/// The lines a v1 `devices.allow`/`devices.deny` file takes for one OCI rule. A rule for all
/// devices becomes `a`; type `a` with numbers or partial access becomes one `c` and one `b`
/// line (the kernel reads any `a…` line as "everything"); fifos (`p`) are not governed by the
/// device cgroup and give no line.
pub fn device_rule_lines(rule: &LinuxDeviceCgroup) -> Result<Vec<String>> {
    let access = rule
        .access()
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("rwm");
    if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(Error::Cgroup(format!(
            "device rule {rule}: access {access:?} may only contain r, w and m"
        )));
    }
    let number = |n: Option<i64>| match n {
        Some(n) if n >= 0 => n.to_string(),
        _ => "*".to_string(),
    };
    let (major, minor) = (number(rule.major()), number(rule.minor()));
    let line = |kind: &str| format!("{kind} {major}:{minor} {access}");
    Ok(match rule.typ().unwrap_or_default() {
        LinuxDeviceType::A => {
            let everything =
                major == "*" && minor == "*" && ["r", "w", "m"].iter().all(|p| access.contains(p));
            if everything {
                vec!["a".to_string()]
            } else {
                vec![line("c"), line("b")]
            }
        }
        LinuxDeviceType::C | LinuxDeviceType::U => vec![line("c")],
        LinuxDeviceType::B => vec![line("b")],
        LinuxDeviceType::P => Vec::new(),
    })
}

fn is_einval(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EINVAL))
}

/// A new cpuset cgroup starts with empty `cpuset.cpus`/`cpuset.mems`, and moving a task into
/// it fails with ENOSPC; give it the parent's.
fn copy_cpuset_down(parent: &Path, dir: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let current = read_optional(&dir.join(file))?.unwrap_or_default();
        if current.trim().is_empty() {
            let inherited = read_file(&parent.join(file))?;
            write_file(&dir.join(file), inherited.trim())?;
        }
    }
    Ok(())
}

/// Controller → mount point for every cgroup v1 mount; the first mount of a controller wins.
/// Mount options that are not controllers (`rw`, `xattr`, `release_agent=…`) are skipped;
/// named hierarchies keep their `name=` key (`name=systemd`).
pub fn parse_mountinfo(text: &str) -> BTreeMap<String, PathBuf> {
    const NOT_CONTROLLERS: &[&str] = &[
        "rw",
        "ro",
        "noprefix",
        "clone_children",
        "xattr",
        "cpuset_v2_mode",
        "favordynmods",
        "nofavordynmods",
        "all",
        "none",
    ];
    let mut mounts = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount_point), Some(fstype), Some(options)) =
            (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
        else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_octal(mount_point));
        // A hybrid host's cgroup2 hierarchy (`/sys/fs/cgroup/unified`): containers get their
        // own directory there too, as runc gives them. Left in the root, CRIU would record
        // (and restore) the whole unified tree with every other container's directory.
        if *fstype == "cgroup2" {
            mounts.entry("unified".to_string()).or_insert(mount_point);
            continue;
        }
        if *fstype != "cgroup" {
            continue;
        }
        for option in options.split(',') {
            if NOT_CONTROLLERS.contains(&option)
                || (option.contains('=') && !option.starts_with("name="))
            {
                continue;
            }
            mounts
                .entry(option.to_string())
                .or_insert_with(|| mount_point.clone());
        }
    }
    mounts
}

/// mountinfo writes space, tab, newline and backslash as `\040`-style octal escapes.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(digits) = escape {
            out.push(
                digits
                    .iter()
                    .fold(0u8, |acc, d| acc.wrapping_mul(8) + (d - b'0')),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cgroup for V1 {
    fn apply(&self, pid: i32) -> Result<()> {
        let mut created = Vec::new();
        self.apply_to(pid, &mut created)
            .map_err(|e| with_cleanup(e, || remove_created(&created)))
    }

    fn set(&self, r: &LinuxResources) -> Result<()> {
        if let Some(memory) = r.memory() {
            self.set_memory(memory)?;
        }
        if let Some(cpu) = r.cpu() {
            self.set_cpu(cpu)?;
        }
        if let Some(pids) = r.pids() {
            match pids_max(pids.limit()) {
                Some(max) if max == "max" && self.dir("pids").is_none() => {}
                Some(max) => self.write("pids", "pids.max", &max)?,
                None => {}
            }
        }
        if let Some(io) = r.block_io() {
            self.set_block_io(io)?;
        }
        for limit in r.hugepage_limits().iter().flatten() {
            if limit.limit() != 0 {
                let file = format!("hugetlb.{}.limit_in_bytes", limit.page_size());
                self.write("hugetlb", &file, &limit.limit().to_string())?;
            }
        }
        if let Some(network) = r.network() {
            if let Some(class_id) = network.class_id().filter(|&c| c != 0) {
                self.write("net_cls", "net_cls.classid", &class_id.to_string())?;
            }
            for p in network.priorities().iter().flatten() {
                let line = format!("{} {}", p.name(), p.priority());
                self.write("net_prio", "net_prio.ifpriomap", &line)?;
            }
        }
        if let Some(rdma) = r.rdma() {
            for line in rdma_lines(rdma) {
                self.write("rdma", "rdma.max", &line)?;
            }
        }
        if let Some(unified) = r.unified().as_ref().filter(|u| !u.is_empty()) {
            let keys: Vec<&String> = unified.keys().collect();
            return Err(Error::Cgroup(format!(
                "linux.resources.unified {keys:?} needs cgroup v2, but this host uses cgroup v1; \
                 drop those keys or run on a cgroup v2 host"
            )));
        }
        if let Some(rules) = r.devices() {
            self.set_devices(rules)?;
        }
        Ok(())
    }

    fn freeze(&self) -> Result<()> {
        let dir = self.need("freezer", "freezer.state", &"FROZEN")?;
        let state = dir.join("freezer.state");
        // Writing FROZEN again on every poll nudges tasks that raced with the first write.
        let frozen = wait_until(self.freeze_timeout, || {
            write_file(&state, "FROZEN")?;
            Ok(read_file(&state)?.trim() == "FROZEN")
        })?;
        if frozen {
            return Ok(());
        }
        let error = Error::Cgroup(format!(
            "{} did not reach FROZEN within {:?}; thawed it again. A task may be stuck in \
             the kernel (uninterruptible sleep): check `ps -o pid,stat,wchan` for the container",
            state.display(),
            self.freeze_timeout
        ));
        Err(with_cleanup(error, || self.thaw()))
    }

    fn thaw(&self) -> Result<()> {
        self.write("freezer", "freezer.state", "THAWED")
    }

    fn is_frozen(&self) -> Result<bool> {
        let dir = self.need("freezer", "freezer.state", &"(read)")?;
        Ok(read_file(&dir.join("freezer.state"))?.trim() == "FROZEN")
    }

    fn pids(&self) -> Result<Vec<i32>> {
        let dir = ["pids", "memory", "freezer"]
            .iter()
            .find_map(|c| self.dir(c))
            .ok_or_else(|| {
                Error::Cgroup(
                    "cannot list the container's processes: none of the pids, memory or \
                     freezer hierarchies is mounted"
                        .into(),
                )
            })?;
        pids_below(&dir)
    }

    fn destroy(&self) -> Result<()> {
        remove_trees(&self.leaf_dirs())
    }

    fn paths(&self) -> Vec<(String, PathBuf)> {
        self.mounts
            .iter()
            .map(|(controller, root)| (controller.clone(), root.join(&self.rel)))
            .collect()
    }

    fn stats(&self) -> Result<CgroupStats> {
        self.read_stats(user_hz())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cgroups::fake::FakeV1;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
        LinuxResourcesBuilder,
    };

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /mnt/my\\040dir rw,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn mountinfo_gives_each_controller_its_mount() {
        let mounts = parse_mountinfo(MOUNTINFO);
        let get = |c: &str| mounts.get(c).map(|p| p.to_str().unwrap());
        assert_eq!(get("cpu"), Some("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(get("cpuacct"), Some("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(get("cpuset"), Some("/sys/fs/cgroup/cpuset"));
        assert_eq!(get("memory"), Some("/sys/fs/cgroup/memory"));
        assert_eq!(get("name=systemd"), Some("/sys/fs/cgroup/systemd"));
        assert_eq!(get("pids"), Some("/mnt/my dir"));
        assert_eq!(
            get("unified"),
            Some("/sys/fs/cgroup/unified"),
            "a hybrid's cgroup2 tree"
        );
        assert_eq!(mounts.len(), 7, "{mounts:?}");
    }

    #[test]
    fn co_mounted_controllers_share_one_directory() {
        let fake = FakeV1::new(&["cpu,cpuacct", "memory"]);
        let cg = fake.cgroup("ferry/c1");
        assert_eq!(cg.hierarchies().len(), 2);
        let paths = cg.paths();
        assert_eq!(paths.len(), 3);
        assert_eq!(paths[0].0, "cpu");
        assert_eq!(paths[0].1, paths[1].1);
        cg.apply(42).unwrap();
        assert_eq!(fake.read("cpu,cpuacct/ferry/c1/cgroup.procs"), "42");
        assert_eq!(fake.read("memory/ferry/c1/cgroup.procs"), "42");
    }

    #[test]
    fn apply_copies_cpuset_down_into_new_levels() {
        let fake = FakeV1::new(&["cpuset", "pids"]);
        fake.write("cpuset/cpuset.cpus", "0-3\n");
        fake.write("cpuset/cpuset.mems", "0\n");
        // An existing level that was set up narrower keeps its own value.
        fake.write("cpuset/ferry/cpuset.cpus", "1\n");
        fake.write("cpuset/ferry/cpuset.mems", "0\n");
        fake.cgroup("ferry/a/b").apply(7).unwrap();
        assert_eq!(fake.read("cpuset/ferry/cpuset.cpus"), "1");
        assert_eq!(fake.read("cpuset/ferry/a/cpuset.cpus"), "1");
        assert_eq!(fake.read("cpuset/ferry/a/b/cpuset.cpus"), "1");
        assert_eq!(fake.read("cpuset/ferry/a/b/cpuset.mems"), "0");
        assert_eq!(fake.read("cpuset/ferry/a/b/cgroup.procs"), "7");
        assert!(!fake.exists("pids/ferry/a/b/cpuset.cpus"));
    }

    #[test]
    fn failed_apply_removes_the_directories_it_made() {
        // No cpuset.cpus at the root: the copy-down fails.
        let fake = FakeV1::new(&["cpuset"]);
        let err = fake.cgroup("ferry/c1").apply(7).unwrap_err().to_string();
        assert!(err.contains("cpuset.cpus"), "{err}");
        assert!(!fake.exists("cpuset/ferry"));
    }

    #[test]
    fn set_writes_v1_files() {
        let fake = FakeV1::new(&["cpu,cpuacct", "cpuset", "memory", "pids", "devices"]);
        fake.write("cpuset/cpuset.cpus", "0-1");
        fake.write("cpuset/cpuset.mems", "0");
        fake.write(
            "memory/ferry/c1/memory.limit_in_bytes",
            "9223372036854771712",
        );
        fake.write(
            "memory/ferry/c1/memory.memsw.limit_in_bytes",
            "9223372036854771712",
        );
        let resources = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .reservation(32i64 << 20)
                    .swap(128i64 << 20)
                    .swappiness(10u64)
                    .disable_oom_killer(true)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0")
                    .mems("0")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(20i64).build().unwrap())
            .devices(vec![
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::C)
                    .major(1i64)
                    .minor(3i64)
                    .access("rwm")
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        let cg = fake.cgroup("ferry/c1");
        cg.apply(1).unwrap();
        cg.set(&resources).unwrap();
        assert_eq!(
            fake.read("memory/ferry/c1/memory.limit_in_bytes"),
            "67108864"
        );
        assert_eq!(
            fake.read("memory/ferry/c1/memory.memsw.limit_in_bytes"),
            "134217728"
        );
        assert_eq!(
            fake.read("memory/ferry/c1/memory.soft_limit_in_bytes"),
            "33554432"
        );
        assert_eq!(fake.read("memory/ferry/c1/memory.swappiness"), "10");
        assert_eq!(fake.read("memory/ferry/c1/memory.oom_control"), "1");
        assert_eq!(fake.read("cpu,cpuacct/ferry/c1/cpu.shares"), "512");
        assert_eq!(fake.read("cpu,cpuacct/ferry/c1/cpu.cfs_quota_us"), "50000");
        assert_eq!(
            fake.read("cpu,cpuacct/ferry/c1/cpu.cfs_period_us"),
            "100000"
        );
        assert_eq!(fake.read("cpuset/ferry/c1/cpuset.cpus"), "0");
        assert_eq!(fake.read("pids/ferry/c1/pids.max"), "20");
        assert_eq!(fake.read("devices/ferry/c1/devices.deny"), "a");
        assert_eq!(fake.read("devices/ferry/c1/devices.allow"), "c 1:3 rwm");
    }

    #[test]
    fn missing_controller_is_an_error_unless_the_value_is_unset() {
        let fake = FakeV1::new(&["memory"]);
        let cg = fake.cgroup("ferry/c1");
        let limited = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(20i64).build().unwrap())
            .build()
            .unwrap();
        let err = cg.set(&limited).unwrap_err().to_string();
        assert!(err.contains("`pids`") && err.contains("20"), "{err}");
        let unset = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(0i64).build().unwrap())
            .cpu(LinuxCpuBuilder::default().shares(0u64).build().unwrap())
            .build()
            .unwrap();
        cg.set(&unset).unwrap();
    }

    #[test]
    fn device_rule_strings() {
        let rule = |allow: bool,
                    typ: Option<LinuxDeviceType>,
                    major: Option<i64>,
                    minor: Option<i64>,
                    access: &str| {
            let mut b = LinuxDeviceCgroupBuilder::default()
                .allow(allow)
                .access(access);
            if let Some(t) = typ {
                b = b.typ(t);
            }
            if let Some(m) = major {
                b = b.major(m);
            }
            if let Some(m) = minor {
                b = b.minor(m);
            }
            device_rule_lines(&b.build().unwrap()).unwrap()
        };
        assert_eq!(rule(false, None, None, None, "rwm"), ["a"]);
        assert_eq!(rule(false, Some(LinuxDeviceType::A), None, None, ""), ["a"]);
        assert_eq!(
            rule(true, Some(LinuxDeviceType::C), Some(1), Some(3), "rwm"),
            ["c 1:3 rwm"]
        );
        assert_eq!(
            rule(true, Some(LinuxDeviceType::C), Some(136), None, "rw"),
            ["c 136:* rw"]
        );
        assert_eq!(
            rule(true, Some(LinuxDeviceType::B), None, None, "m"),
            ["b *:* m"]
        );
        assert_eq!(
            rule(true, Some(LinuxDeviceType::A), None, None, "m"),
            ["c *:* m", "b *:* m"]
        );
        assert!(rule(true, Some(LinuxDeviceType::P), Some(1), Some(1), "r").is_empty());
        let bad = LinuxDeviceCgroupBuilder::default()
            .access("rx")
            .build()
            .unwrap();
        assert!(device_rule_lines(&bad).is_err());
    }

    #[test]
    fn stats_read_what_the_kernel_writes() {
        let fake = FakeV1::new(&["cpu", "cpuacct", "memory", "pids", "blkio"]);
        let files = [
            ("cpuacct/ferry/c1/cpuacct.usage", "123456789\n"),
            (
                "cpuacct/ferry/c1/cpuacct.usage_percpu",
                "100000 23456789 \n",
            ),
            (
                "cpuacct/ferry/c1/cpuacct.usage_percpu_user",
                "70000 20000000 \n",
            ),
            (
                "cpuacct/ferry/c1/cpuacct.usage_percpu_sys",
                "30000 3456789 \n",
            ),
            ("cpuacct/ferry/c1/cpuacct.stat", "user 150\nsystem 25\n"),
            (
                "cpu/ferry/c1/cpu.stat",
                "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\nnr_bursts 0\nburst_time 0\n",
            ),
            ("memory/ferry/c1/memory.usage_in_bytes", "1048576\n"),
            ("memory/ferry/c1/memory.max_usage_in_bytes", "2097152\n"),
            ("memory/ferry/c1/memory.limit_in_bytes", "67108864\n"),
            ("memory/ferry/c1/memory.failcnt", "3\n"),
            ("memory/ferry/c1/memory.memsw.usage_in_bytes", "1052672\n"),
            (
                "memory/ferry/c1/memory.memsw.max_usage_in_bytes",
                "2101248\n",
            ),
            // Unlimited reads as the kernel's page-rounded LONG_MAX; reported as it is.
            (
                "memory/ferry/c1/memory.memsw.limit_in_bytes",
                "9223372036854771712\n",
            ),
            ("memory/ferry/c1/memory.memsw.failcnt", "0\n"),
            ("memory/ferry/c1/memory.kmem.usage_in_bytes", "65536\n"),
            (
                "memory/ferry/c1/memory.stat",
                "cache 4096\nrss 8192\ntotal_cache 4096\ntotal_rss 8192\n",
            ),
            (
                "memory/ferry/c1/memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
            ("pids/ferry/c1/pids.current", "3\n"),
            ("pids/ferry/c1/pids.max", "max\n"),
            // CFQ's file exists but holds nothing: the throttle layer's numbers are used.
            (
                "blkio/ferry/c1/blkio.io_service_bytes_recursive",
                "Total 0\n",
            ),
            (
                "blkio/ferry/c1/blkio.throttle.io_service_bytes_recursive",
                "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n",
            ),
            (
                "blkio/ferry/c1/blkio.throttle.io_serviced_recursive",
                "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n",
            ),
        ];
        for (path, content) in files {
            fake.write(path, content);
        }
        let cg = fake.cgroup("ferry/c1");
        let stats = cg.read_stats(100).unwrap();
        let usage = &stats.cpu.usage;
        assert_eq!(usage.total, 123_456_789);
        assert_eq!(usage.percpu, [100_000, 23_456_789]);
        assert_eq!(usage.percpu_user, [70_000, 20_000_000]);
        assert_eq!(usage.percpu_kernel, [30_000, 3_456_789]);
        // 150 ticks of 1/100 s = 1.5 s; 25 ticks = 0.25 s.
        assert_eq!(usage.user, 1_500_000_000);
        assert_eq!(usage.kernel, 250_000_000);
        assert_eq!(stats.cpu.throttling.periods, 10);
        assert_eq!(stats.cpu.throttling.throttled_periods, 4);
        assert_eq!(stats.cpu.throttling.throttled_time, 5000);
        let memory = &stats.memory;
        assert_eq!(
            memory.usage,
            MemoryEntry {
                usage: 1 << 20,
                max: 2 << 20,
                limit: 64 << 20,
                failcnt: 3
            }
        );
        assert_eq!(memory.swap.usage, 1_052_672);
        assert_eq!(memory.swap.limit, 9_223_372_036_854_771_712);
        assert_eq!(memory.kernel.usage, 65_536);
        assert_eq!(memory.kernel.limit, 0, "missing file: zero");
        assert_eq!(memory.kernel_tcp, MemoryEntry::default());
        assert_eq!(memory.cache, 4096);
        assert_eq!(memory.raw["rss"], 8192);
        assert_eq!(memory.raw.len(), 4);
        assert_eq!(stats.oom_kills, 2);
        assert_eq!(stats.pids.current, 3);
        assert_eq!(stats.pids.limit, 0, "pids.max \"max\" is no limit");
        let bytes = &stats.blkio.io_service_bytes_recursive;
        assert_eq!(bytes.len(), 3, "{bytes:?}");
        assert_eq!(
            bytes[1],
            BlkioEntry {
                major: 8,
                minor: 0,
                op: "Write".into(),
                value: 8192
            }
        );
        assert_eq!(stats.blkio.io_serviced_recursive[0].value, 1);

        // The trait method uses the host's USER_HZ.
        assert_eq!(cg.stats().unwrap(), cg.read_stats(user_hz()).unwrap());
        // Another tick rate converts accordingly.
        assert_eq!(cg.read_stats(250).unwrap().cpu.usage.user, 600_000_000);
        assert_eq!(ticks_to_ns(u64::MAX, 100), u64::MAX);

        fake.write("pids/ferry/c1/pids.max", "20\n");
        assert_eq!(cg.read_stats(100).unwrap().pids.limit, 20);
    }

    #[test]
    fn stats_of_missing_files_and_controllers_are_zero() {
        let fake = FakeV1::new(&["memory", "freezer"]);
        let cg = fake.cgroup("ferry/never-created");
        assert_eq!(cg.stats().unwrap(), CgroupStats::default());
        fake.write("memory/ferry/c1/memory.usage_in_bytes", "lots\n");
        let err = fake.cgroup("ferry/c1").stats().unwrap_err().to_string();
        assert!(
            err.contains("memory.usage_in_bytes") && err.contains("lots"),
            "{err}"
        );
    }

    #[test]
    fn freeze_and_pids_use_their_hierarchies() {
        let fake = FakeV1::new(&["freezer", "memory"]);
        let cg = fake.cgroup("ferry/c1");
        cg.apply(11).unwrap();
        fake.write("memory/ferry/c1/sub/cgroup.procs", "12\n13\n");
        assert_eq!(cg.pids().unwrap(), vec![11, 12, 13]);
        cg.freeze().unwrap();
        assert!(cg.is_frozen().unwrap());
        cg.thaw().unwrap();
        assert!(!cg.is_frozen().unwrap());
    }
}
