//! cgroup v2: one unified directory per container. Controllers reach it only when every
//! ancestor lists them in `cgroup.subtree_control`, so `apply` enables them on the way down.

use super::{
    BlkioEntry, BlkioStats, Cgroup, CgroupStats, FREEZE_TIMEOUT, MemoryEntry, create_levels,
    parse_device, pids_below, pids_max, rdma_lines, read_file, read_keyed, read_optional, read_u64,
    remove_created, remove_trees, unavailable, wait_until, with_cleanup, write_file,
};
use crate::runtime::error::{Error, Result};
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxDeviceCgroup, LinuxMemory, LinuxResources};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The container's cgroup on a v2 host.
#[derive(Debug, Clone)]
pub struct V2 {
    /// The cgroup2 mount, `/sys/fs/cgroup` on a host.
    root: PathBuf,
    /// Relative to `root`, e.g. `ferry/<id>`.
    rel: PathBuf,
    freeze_timeout: Duration,
}

impl V2 {
    /// The cgroup `rel` below the cgroup2 mount `root` (tests pass a temporary tree).
    pub fn at(root: impl Into<PathBuf>, rel: impl Into<PathBuf>) -> Self {
        V2 {
            root: root.into(),
            rel: rel.into(),
            freeze_timeout: FREEZE_TIMEOUT,
        }
    }

    /// The container's directory.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    /// Controllers usable in the container's cgroup (what its parent enabled).
    fn controllers(&self) -> Result<BTreeSet<String>> {
        let file = self.dir().join("cgroup.controllers");
        let text = read_optional(&file)?.ok_or_else(|| {
            Error::Cgroup(format!(
                "{} does not exist: the container's cgroup was not created (apply() first)",
                file.display()
            ))
        })?;
        Ok(words(&text))
    }

    fn apply_to(&self, pid: i32, created: &mut Vec<PathBuf>) -> Result<()> {
        create_levels(
            &self.root,
            &self.rel,
            |parent, _| enable_controllers(parent),
            created,
        )?;
        write_file(&self.dir().join("cgroup.procs"), &pid.to_string())
    }

    fn set_memory(&self, m: &LinuxMemory, w: &mut Writer) -> Result<()> {
        // "Unlimited" (-1) needs no controller to enforce it.
        let has_memory = w.controllers.contains("memory");
        let wanted = |v: &i64| *v != 0 && (*v > 0 || has_memory);
        let limit = m.limit().filter(wanted);
        if let Some(limit) = limit {
            w.write("memory", "memory.max", &limit_or_max(limit))?;
        }
        if let Some(reservation) = m.reservation().filter(wanted) {
            w.write("memory", "memory.low", &limit_or_max(reservation))?;
        }
        if let Some(swap) = swap_max(limit, m.swap().filter(wanted))? {
            w.write("memory", "memory.swap.max", &swap)?;
        }
        #[allow(deprecated)]
        if m.kernel().is_some_and(|k| k != 0) || m.kernel_tcp().is_some_and(|k| k != 0) {
            tracing::warn!(
                "ignoring linux.resources.memory.kernel/kernelTCP: cgroup v2 has no kernel memory limits"
            );
        }
        if m.swappiness().is_some() {
            tracing::warn!(
                "ignoring linux.resources.memory.swappiness: cgroup v2 has no per-cgroup swappiness"
            );
        }
        if m.disable_oom_killer() == Some(true) {
            tracing::warn!(
                "ignoring linux.resources.memory.disableOOMKiller: cgroup v2 cannot disable the OOM killer"
            );
        }
        Ok(())
    }

    fn set_cpu(&self, cpu: &LinuxCpu, w: &mut Writer) -> Result<()> {
        if let Some(weight) = cpu.shares().and_then(weight_from_shares) {
            w.write("cpu", "cpu.weight", &weight.to_string())?;
        }
        if let Some(max) = cpu_max(cpu.quota(), cpu.period()) {
            w.write("cpu", "cpu.max", &max)?;
        }
        if let Some(burst) = cpu.burst() {
            w.write("cpu", "cpu.max.burst", &burst.to_string())?;
        }
        if let Some(idle) = cpu.idle() {
            w.write("cpu", "cpu.idle", &idle.to_string())?;
        }
        let realtime = [
            cpu.realtime_runtime().unwrap_or(0),
            cpu.realtime_period().unwrap_or(0) as i64,
        ];
        if realtime.iter().any(|&v| v != 0) {
            return Err(Error::Cgroup(format!(
                "cannot set cpu.realtimeRuntime/realtimePeriod = {}/{}: cgroup v2 has no \
                 real-time group scheduling; drop them from config.json",
                realtime[0], realtime[1]
            )));
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
            w.write("cpuset", "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
            w.write("cpuset", "cpuset.mems", mems)?;
        }
        Ok(())
    }

    fn set_io(&self, io: &LinuxBlockIo, w: &mut Writer) -> Result<()> {
        // BFQ's io.bfq.weight takes blkio's 10-1000 scale as is; io.weight needs 1-10000.
        let bfq = self.dir().join("io.bfq.weight").exists();
        if let Some(weight) = io.weight().filter(|&v| v != 0) {
            if bfq {
                w.write("io", "io.bfq.weight", &weight.to_string())?;
            } else {
                let value = format!("default {}", io_weight_from_blkio(weight));
                w.write("io", "io.weight", &value)?;
            }
        }
        if io.leaf_weight().is_some_and(|v| v != 0) {
            tracing::warn!(
                "ignoring linux.resources.blockIO.leafWeight: cgroup v2 has no leaf weight"
            );
        }
        for device in io.weight_device().iter().flatten() {
            if let Some(weight) = device.weight() {
                let (file, weight) = if bfq {
                    ("io.bfq.weight", u64::from(weight))
                } else {
                    ("io.weight", io_weight_from_blkio(weight))
                };
                let line = format!("{}:{} {weight}", device.major(), device.minor());
                w.write("io", file, &line)?;
            }
        }
        let throttles = [
            ("rbps", io.throttle_read_bps_device()),
            ("wbps", io.throttle_write_bps_device()),
            ("riops", io.throttle_read_iops_device()),
            ("wiops", io.throttle_write_iops_device()),
        ];
        for (key, devices) in throttles {
            for d in devices.iter().flatten() {
                let line = format!("{}:{} {key}={}", d.major(), d.minor(), d.rate());
                w.write("io", "io.max", &line)?;
            }
        }
        Ok(())
    }
}

/// Usage from the unified directory `dir`; files of a controller that is not enabled
/// there are missing and leave their part zero.
fn read_stats(dir: &Path) -> Result<CgroupStats> {
    let mut stats = CgroupStats::default();
    let get = |map: &std::collections::BTreeMap<String, u64>, key: &str| {
        map.get(key).copied().unwrap_or(0)
    };
    // cpu.stat is in microseconds; runc's stats are nanoseconds.
    let cpu = read_keyed(&dir.join("cpu.stat"))?;
    let usec = |key: &str| get(&cpu, key).saturating_mul(1000);
    stats.cpu.usage.total = usec("usage_usec");
    stats.cpu.usage.user = usec("user_usec");
    stats.cpu.usage.kernel = usec("system_usec");
    stats.cpu.throttling.periods = get(&cpu, "nr_periods");
    stats.cpu.throttling.throttled_periods = get(&cpu, "nr_throttled");
    stats.cpu.throttling.throttled_time = usec("throttled_usec");

    let read = |name: &str| -> Result<Option<u64>> { read_u64(&dir.join(name)) };
    let events = read_keyed(&dir.join("memory.events"))?;
    let memory = &mut stats.memory;
    memory.usage = MemoryEntry {
        usage: read("memory.current")?.unwrap_or(0),
        limit: read("memory.max")?.unwrap_or(0),
        // memory.peak exists since Linux 5.19.
        max: read("memory.peak")?.unwrap_or(0),
        // Times usage was about to pass memory.max: v1's failcnt.
        failcnt: get(&events, "max"),
    };
    // v1's memsw counts memory + swap and go-runc's users expect that, so add the two.
    if let Some(swap) = read("memory.swap.current")? {
        let limit = read("memory.swap.max")?.unwrap_or(u64::MAX);
        memory.swap = MemoryEntry {
            usage: swap.saturating_add(memory.usage.usage),
            limit: limit.saturating_add(memory.usage.limit),
            max: 0,
            failcnt: get(&read_keyed(&dir.join("memory.swap.events"))?, "max"),
        };
    }
    memory.raw = read_keyed(&dir.join("memory.stat"))?;
    memory.cache = get(&memory.raw, "file");
    stats.oom_kills = get(&events, "oom_kill");

    stats.pids.current = read("pids.current")?.unwrap_or(0);
    // "max" is no limit, which runc reports as 0.
    stats.pids.limit = read("pids.max")?.filter(|&v| v != u64::MAX).unwrap_or(0);
    stats.blkio = io_stats(&dir.join("io.stat"))?;
    Ok(stats)
}

/// `io.stat` (`8:0 rbytes=1 wbytes=2 rios=3 wios=4 …`) as v1-style Read/Write entries.
fn io_stats(path: &Path) -> Result<BlkioStats> {
    let mut stats = BlkioStats::default();
    for line in read_optional(path)?.unwrap_or_default().lines() {
        let mut words = line.split_whitespace();
        let Some((major, minor)) = words.next().and_then(parse_device) else {
            continue;
        };
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse() else {
                continue;
            };
            let (list, op) = match key {
                "rbytes" => (&mut stats.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut stats.io_service_bytes_recursive, "Write"),
                "rios" => (&mut stats.io_serviced_recursive, "Read"),
                "wios" => (&mut stats.io_serviced_recursive, "Write"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.to_string(),
                value,
            });
        }
    }
    Ok(stats)
}

/// Writes into the container's directory after checking the controller is enabled there.
struct Writer {
    dir: PathBuf,
    controllers: BTreeSet<String>,
}

impl Writer {
    fn write(&mut self, controller: &str, file: &str, value: &str) -> Result<()> {
        if !self.controllers.contains(controller) {
            return Err(unavailable(controller, file, value));
        }
        write_file(&self.dir.join(file), value)
    }
}

/// Enables in `dir/cgroup.subtree_control` every controller `dir/cgroup.controllers` offers
/// and that is not enabled yet. One write for all of them; when the kernel refuses that
/// (a controller can be busy, e.g. cpu with real-time tasks), one by one, keeping the rest.
fn enable_controllers(dir: &Path) -> Result<()> {
    let available = words(&read_optional(&dir.join("cgroup.controllers"))?.unwrap_or_default());
    let enabled = words(&read_optional(&dir.join("cgroup.subtree_control"))?.unwrap_or_default());
    let wanted: Vec<String> = available
        .difference(&enabled)
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let file = dir.join("cgroup.subtree_control");
    if write_file(&file, &wanted.join(" ")).is_ok() {
        return Ok(());
    }
    for controller in &wanted {
        if let Err(e) = write_file(&file, controller) {
            tracing::warn!(%e, "cannot enable {controller} for the container; limits it governs will fail");
        }
    }
    Ok(())
}

fn words(text: &str) -> BTreeSet<String> {
    text.split_whitespace().map(str::to_string).collect()
}

fn limit_or_max(value: i64) -> String {
    if value < 0 {
        "max".to_string()
    } else {
        value.to_string()
    }
}

/// `cpu.weight` for v1 `cpu.shares` (runc's mapping of 2..262144 onto 1..10000); 0 is unset.
pub fn weight_from_shares(shares: u64) -> Option<u64> {
    if shares == 0 {
        return None;
    }
    let shares = shares.clamp(2, 262_144);
    Some(1 + ((shares - 2) * 9999) / 262_142)
}

/// `io.weight` (1..10000) for a v1 blkio weight (10..1000), as runc maps it.
pub fn io_weight_from_blkio(weight: u16) -> u64 {
    let weight = u64::from(weight.clamp(10, 1000));
    1 + (weight - 10) * 9999 / 990
}

/// The `cpu.max` line: `"$QUOTA $PERIOD"`, `max` for no quota (negative, or only a period
/// given). `None` when neither is set; a quota alone keeps the kernel's current period.
pub fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    let quota = quota.filter(|&q| q != 0);
    let period = period.filter(|&p| p != 0);
    if quota.is_none() && period.is_none() {
        return None;
    }
    let mut line = match quota {
        Some(q) if q > 0 => q.to_string(),
        _ => "max".to_string(),
    };
    if let Some(p) = period {
        line.push_str(&format!(" {p}"));
    }
    Some(line)
}

/// `memory.swap.max` from OCI's `swap`, which counts memory + swap: swap − memory; -1 is
/// "max"; 0 or absent leaves it alone. A swap limit needs a memory limit at or below it.
pub fn swap_max(memory: Option<i64>, swap: Option<i64>) -> Result<Option<String>> {
    let swap = match swap {
        None | Some(0) => return Ok(None),
        Some(-1) => return Ok(Some("max".to_string())),
        Some(s) => s,
    };
    match memory {
        Some(m) if m > 0 && swap >= m => Ok(Some((swap - m).to_string())),
        Some(m) if m > 0 => Err(Error::Cgroup(format!(
            "memory.swap {swap} is below memory.limit {m}; swap counts memory + swap, so it must \
             be at least the memory limit (or -1 for unlimited)"
        ))),
        _ => Err(Error::Cgroup(format!(
            "memory.swap {swap} needs a memory.limit: swap counts memory + swap, so set both \
             or neither"
        ))),
    }
}

/// True when `rules` restrict anything: such rules need the eBPF device program on v2.
fn rules_need_enforcement(rules: &[LinuxDeviceCgroup]) -> bool {
    rules.iter().any(|r| {
        let everything = r.major().is_none()
            && r.minor().is_none()
            && matches!(r.typ(), None | Some(oci_spec::runtime::LinuxDeviceType::A))
            && r.access().as_deref().is_none_or(|a| {
                a.is_empty() || a.len() >= 3 && ["r", "w", "m"].iter().all(|p| a.contains(p))
            });
        !(r.allow() && everything)
    })
}

impl Cgroup for V2 {
    fn apply(&self, pid: i32) -> Result<()> {
        let mut created = Vec::new();
        self.apply_to(pid, &mut created)
            .map_err(|e| with_cleanup(e, || remove_created(&created)))
    }

    fn set(&self, r: &LinuxResources) -> Result<()> {
        let mut w = Writer {
            dir: self.dir(),
            controllers: self.controllers()?,
        };
        if let Some(memory) = r.memory() {
            self.set_memory(memory, &mut w)?;
        }
        if let Some(cpu) = r.cpu() {
            self.set_cpu(cpu, &mut w)?;
        }
        if let Some(pids) = r.pids() {
            match pids_max(pids.limit()) {
                Some(max) if max == "max" && !w.controllers.contains("pids") => {}
                Some(max) => w.write("pids", "pids.max", &max)?,
                None => {}
            }
        }
        if let Some(io) = r.block_io() {
            self.set_io(io, &mut w)?;
        }
        for limit in r.hugepage_limits().iter().flatten() {
            if limit.limit() != 0 {
                let file = format!("hugetlb.{}.max", limit.page_size());
                w.write("hugetlb", &file, &limit.limit().to_string())?;
            }
        }
        if let Some(network) = r.network() {
            let class_id = network.class_id().unwrap_or(0);
            let priorities = network.priorities().as_ref().map_or(0, Vec::len);
            if class_id != 0 || priorities != 0 {
                return Err(Error::Cgroup(format!(
                    "cannot set linux.resources.network (classID {class_id}, {priorities} \
                     priorities): net_cls and net_prio do not exist on cgroup v2; drop them"
                )));
            }
        }
        if let Some(rdma) = r.rdma() {
            for line in rdma_lines(rdma) {
                w.write("rdma", "rdma.max", &line)?;
            }
        }
        if let Some(rules) = r.devices()
            && rules_need_enforcement(rules)
        {
            // A fake tree (unit tests) is plain files: only a real cgroup2 takes a program.
            let real = nix::sys::statfs::statfs(&self.dir())
                .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
                .unwrap_or(false);
            if real {
                super::devices_bpf::apply(&self.dir(), rules)?;
            }
        }
        // Raw key/value pairs go last so they can override what was derived above.
        if let Some(unified) = r.unified() {
            let mut keys: Vec<_> = unified.iter().collect();
            keys.sort();
            for (key, value) in keys {
                if key.contains('/') || key.starts_with('.') || !key.contains('.') {
                    return Err(Error::Cgroup(format!(
                        "linux.resources.unified key {key:?} is not a cgroup file name like memory.high"
                    )));
                }
                let controller = key.split('.').next().unwrap_or_default();
                if controller == "cgroup" {
                    write_file(&w.dir.join(key), value)?;
                } else {
                    w.write(controller, key, value)?;
                }
            }
        }
        Ok(())
    }

    fn freeze(&self) -> Result<()> {
        write_file(&self.dir().join("cgroup.freeze"), "1")?;
        if wait_until(self.freeze_timeout, || self.is_frozen())? {
            return Ok(());
        }
        let error = Error::Cgroup(format!(
            "{} did not report `frozen 1` within {:?}; thawed it again. A task may be stuck in \
             the kernel: check `ps -o pid,stat,wchan` for the container",
            self.dir().join("cgroup.events").display(),
            self.freeze_timeout
        ));
        Err(with_cleanup(error, || self.thaw()))
    }

    fn thaw(&self) -> Result<()> {
        write_file(&self.dir().join("cgroup.freeze"), "0")
    }

    fn is_frozen(&self) -> Result<bool> {
        let events = self.dir().join("cgroup.events");
        let text = read_file(&events)?;
        let frozen = text.lines().find_map(|l| l.strip_prefix("frozen "));
        match frozen {
            Some(v) => Ok(v.trim() == "1"),
            None => Err(Error::Cgroup(format!(
                "{} has no `frozen` line: the cgroup v2 freezer needs Linux 5.2 or newer",
                events.display()
            ))),
        }
    }

    fn pids(&self) -> Result<Vec<i32>> {
        pids_below(&self.dir())
    }

    fn destroy(&self) -> Result<()> {
        remove_trees(&[self.dir()])
    }

    fn paths(&self) -> Vec<(String, PathBuf)> {
        vec![(String::new(), self.dir())]
    }

    fn stats(&self) -> Result<CgroupStats> {
        read_stats(&self.dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cgroups::fake::FakeV2;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxHugepageLimitBuilder,
        LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    use std::collections::HashMap;

    #[test]
    fn shares_to_weight() {
        assert_eq!(weight_from_shares(0), None);
        assert_eq!(weight_from_shares(2), Some(1));
        assert_eq!(weight_from_shares(1024), Some(39));
        assert_eq!(weight_from_shares(262_144), Some(10_000));
        assert_eq!(weight_from_shares(1), Some(1));
        assert_eq!(weight_from_shares(1 << 30), Some(10_000));
    }

    #[test]
    fn blkio_weight_to_io_weight() {
        assert_eq!(io_weight_from_blkio(10), 1);
        assert_eq!(io_weight_from_blkio(500), 4950);
        assert_eq!(io_weight_from_blkio(1000), 10_000);
    }

    #[test]
    fn cpu_max_lines() {
        assert_eq!(cpu_max(None, None), None);
        assert_eq!(cpu_max(Some(0), Some(0)), None);
        assert_eq!(
            cpu_max(Some(50_000), Some(100_000)).unwrap(),
            "50000 100000"
        );
        assert_eq!(cpu_max(Some(-1), Some(100_000)).unwrap(), "max 100000");
        assert_eq!(cpu_max(None, Some(250_000)).unwrap(), "max 250000");
        assert_eq!(cpu_max(Some(20_000), None).unwrap(), "20000");
        assert_eq!(cpu_max(Some(-1), None).unwrap(), "max");
    }

    #[test]
    fn swap_is_memory_plus_swap_minus_memory() {
        assert_eq!(swap_max(Some(100), None).unwrap(), None);
        assert_eq!(swap_max(Some(100), Some(0)).unwrap(), None);
        assert_eq!(swap_max(Some(100), Some(-1)).unwrap().unwrap(), "max");
        assert_eq!(swap_max(None, Some(-1)).unwrap().unwrap(), "max");
        assert_eq!(swap_max(Some(100), Some(300)).unwrap().unwrap(), "200");
        assert_eq!(swap_max(Some(100), Some(100)).unwrap().unwrap(), "0");
        assert!(swap_max(Some(300), Some(100)).is_err());
        assert!(swap_max(None, Some(100)).is_err());
        assert!(swap_max(Some(-1), Some(100)).is_err());
    }

    #[test]
    fn apply_enables_controllers_on_the_way_down() {
        let fake = FakeV2::new(&["cpu", "memory", "pids"]);
        fake.add_level("ferry", &["cpu", "memory", "pids"]);
        fake.write("ferry/cgroup.subtree_control", "memory\n");
        fake.cgroup("ferry/c1").apply(42).unwrap();
        assert_eq!(fake.read("cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(fake.read("ferry/cgroup.subtree_control"), "+cpu +pids");
        assert_eq!(fake.read("ferry/c1/cgroup.procs"), "42");
        assert!(
            !fake.exists("ferry/c1/cgroup.subtree_control"),
            "the leaf holds tasks, no controllers"
        );
    }

    #[test]
    fn full_resources_write_set() {
        let fake = FakeV2::new(&[]);
        fake.add_level(
            "ferry/c1",
            &["cpu", "cpuset", "io", "memory", "pids", "hugetlb"],
        );
        let resources = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .reservation(32i64 << 20)
                    .swap(96i64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0-1")
                    .mems("0")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(-1i64).build().unwrap())
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(500u16)
                    .build()
                    .unwrap(),
            )
            .hugepage_limits(vec![
                LinuxHugepageLimitBuilder::default()
                    .page_size("2MB")
                    .limit(1i64 << 21)
                    .build()
                    .unwrap(),
            ])
            .devices(vec![
                LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .unwrap(),
            ])
            .unified(HashMap::from([(
                "memory.high".to_string(),
                "50000000".to_string(),
            )]))
            .build()
            .unwrap();
        fake.cgroup("ferry/c1").set(&resources).unwrap();
        let expected = [
            ("memory.max", "67108864"),
            ("memory.low", "33554432"),
            ("memory.swap.max", "33554432"),
            ("memory.high", "50000000"),
            ("cpu.weight", "39"),
            ("cpu.max", "50000 100000"),
            ("cpuset.cpus", "0-1"),
            ("cpuset.mems", "0"),
            ("pids.max", "max"),
            ("io.weight", "default 4950"),
            ("hugetlb.2MB.max", "2097152"),
        ];
        for (file, value) in expected {
            assert_eq!(fake.read(&format!("ferry/c1/{file}")), value, "{file}");
        }
        let mut written: Vec<String> = std::fs::read_dir(fake.root().join("ferry/c1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| {
                ![
                    "cgroup.controllers",
                    "cgroup.subtree_control",
                    "cgroup.events",
                ]
                .contains(&f.as_str())
            })
            .collect();
        written.sort();
        let mut expected_files: Vec<&str> = expected.iter().map(|(f, _)| *f).collect();
        expected_files.sort();
        assert_eq!(written, expected_files, "nothing else is written");
    }

    #[test]
    fn bfq_weight_is_used_when_offered() {
        let fake = FakeV2::new(&[]);
        fake.add_level("c1", &["io"]);
        fake.write("c1/io.bfq.weight", "default 100\n");
        let resources = LinuxResourcesBuilder::default()
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(300u16)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        fake.cgroup("c1").set(&resources).unwrap();
        assert_eq!(fake.read("c1/io.bfq.weight"), "300");
    }

    #[test]
    fn missing_controller_names_controller_and_value() {
        let fake = FakeV2::new(&[]);
        fake.add_level("c1", &["pids"]);
        let resources = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(1234i64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let err = fake.cgroup("c1").set(&resources).unwrap_err().to_string();
        assert!(err.contains("`memory`") && err.contains("1234"), "{err}");
        let unset = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(-1i64)
                    .swap(-1i64)
                    .reservation(0i64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        fake.cgroup("c1").set(&unset).unwrap();
    }

    #[test]
    fn device_rules_that_restrict_need_enforcement() {
        let allow_all = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()
            .unwrap();
        let deny_all = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap();
        assert!(!rules_need_enforcement(&[]));
        assert!(!rules_need_enforcement(std::slice::from_ref(&allow_all)));
        assert!(rules_need_enforcement(&[deny_all, allow_all]));
    }

    #[test]
    fn freeze_waits_for_the_kernel_and_thaws_on_timeout() {
        let fake = FakeV2::new(&[]);
        fake.add_level("c1", &[]);
        let mut cg = fake.cgroup("c1");
        cg.freeze_timeout = Duration::from_millis(50);
        let err = cg.freeze().unwrap_err().to_string();
        assert!(err.contains("frozen 1"), "{err}");
        assert_eq!(fake.read("c1/cgroup.freeze"), "0");
        fake.write("c1/cgroup.events", "populated 1\nfrozen 1\n");
        cg.freeze().unwrap();
        assert_eq!(fake.read("c1/cgroup.freeze"), "1");
        assert!(cg.is_frozen().unwrap());
    }

    #[test]
    fn stats_read_what_the_kernel_writes() {
        let fake = FakeV2::new(&[]);
        fake.add_level("ferry/c1", &["cpu", "memory", "pids", "io"]);
        let files = [
            (
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 8\n\
                 nr_throttled 2\nthrottled_usec 300\nnr_bursts 0\nburst_usec 0\n",
            ),
            ("memory.current", "1048576\n"),
            ("memory.max", "max\n"),
            ("memory.peak", "2097152\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
            ),
            ("memory.swap.current", "4096\n"),
            ("memory.swap.max", "max\n"),
            ("memory.stat", "anon 8192\nfile 4096\nkernel 512\n"),
            ("pids.current", "2\n"),
            ("pids.max", "10\n"),
            (
                "io.stat",
                "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
            ),
        ];
        for (file, content) in files {
            fake.write(&format!("ferry/c1/{file}"), content);
        }
        let cg = fake.cgroup("ferry/c1");
        let stats = cg.stats().unwrap();
        // Microseconds become nanoseconds.
        assert_eq!(stats.cpu.usage.total, 1_500_000);
        assert_eq!(stats.cpu.usage.user, 1_000_000);
        assert_eq!(stats.cpu.usage.kernel, 500_000);
        assert!(stats.cpu.usage.percpu.is_empty());
        assert_eq!(stats.cpu.throttling.periods, 8);
        assert_eq!(stats.cpu.throttling.throttled_periods, 2);
        assert_eq!(stats.cpu.throttling.throttled_time, 300_000);
        assert_eq!(
            stats.memory.usage,
            MemoryEntry {
                usage: 1 << 20,
                limit: u64::MAX,
                max: 2 << 20,
                failcnt: 5
            }
        );
        // Swap is reported as memory + swap, like v1's memsw; "max" stays unlimited.
        assert_eq!(stats.memory.swap.usage, (1 << 20) + 4096);
        assert_eq!(stats.memory.swap.limit, u64::MAX);
        assert_eq!(stats.memory.cache, 4096);
        assert_eq!(stats.memory.raw["anon"], 8192);
        assert_eq!(stats.oom_kills, 1);
        assert_eq!(stats.pids.current, 2);
        assert_eq!(stats.pids.limit, 10);
        let bytes = &stats.blkio.io_service_bytes_recursive;
        assert_eq!(
            bytes
                .iter()
                .map(|e| (e.major, e.minor, e.op.as_str(), e.value))
                .collect::<Vec<_>>(),
            [(8, 0, "Read", 4096), (8, 0, "Write", 8192)]
        );
        assert_eq!(stats.blkio.io_serviced_recursive.len(), 2);

        fake.write("ferry/c1/memory.max", "67108864\n");
        fake.write("ferry/c1/memory.swap.max", "0\n");
        fake.write("ferry/c1/pids.max", "max\n");
        let stats = cg.stats().unwrap();
        assert_eq!(stats.memory.usage.limit, 64 << 20);
        assert_eq!(stats.memory.swap.limit, 64 << 20, "no swap: memory's limit");
        assert_eq!(stats.pids.limit, 0, "pids.max \"max\" is no limit");
    }

    #[test]
    fn stats_without_controllers_are_zero() {
        let fake = FakeV2::new(&[]);
        fake.add_level("c1", &[]);
        assert_eq!(fake.cgroup("c1").stats().unwrap(), CgroupStats::default());
        assert_eq!(fake.cgroup("gone").stats().unwrap(), CgroupStats::default());
    }

    #[test]
    fn pids_paths_and_destroy() {
        let fake = FakeV2::new(&[]);
        fake.write("ferry/c1/cgroup.procs", "5\n");
        fake.write("ferry/c1/inner/cgroup.procs", "6\n5\n");
        let cg = fake.cgroup("ferry/c1");
        assert_eq!(cg.pids().unwrap(), vec![5, 6]);
        assert_eq!(
            cg.paths(),
            vec![(String::new(), fake.root().join("ferry/c1"))]
        );
        // Plain files cannot be rmdir'ed; a real cgroup directory holds none that count.
        std::fs::remove_file(fake.root().join("ferry/c1/cgroup.procs")).unwrap();
        std::fs::remove_file(fake.root().join("ferry/c1/inner/cgroup.procs")).unwrap();
        cg.destroy().unwrap();
        assert!(!fake.exists("ferry/c1"));
        assert!(fake.exists("ferry"));
        cg.destroy().unwrap();
    }
}
