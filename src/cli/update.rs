//! `ferry update`: change a container's resource limits, from an OCI `LinuxResources` JSON
//! (`--resources FILE`, `-` for stdin: what conmon and containerd send) and/or single flags,
//! which win over the file.

use crate::runtime::{Error, Result, Runtime};
use clap::Args;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};
use std::io::Read;
use std::path::PathBuf;

#[derive(Args, Debug, Default)]
#[command(args_override_self = true)]
pub struct UpdateArgs {
    /// OCI LinuxResources JSON file, or - for stdin
    #[arg(short, long, value_name = "FILE|-")]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes (suffixes k, m, g, t; -1 for unlimited)
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub memory: Option<i64>,
    /// Memory soft limit in bytes
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub memory_reservation: Option<i64>,
    /// Memory plus swap limit in bytes (-1 for unlimited swap)
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub memory_swap: Option<i64>,
    /// CPU CFS quota in microseconds per period (-1 for no limit)
    #[arg(long, value_name = "USEC", allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds
    #[arg(long, value_name = "USEC")]
    pub cpu_period: Option<u64>,
    /// CPU shares (relative weight)
    #[arg(long, visible_alias = "cpu-share", value_name = "SHARES")]
    pub cpu_shares: Option<u64>,
    /// CPU realtime period in microseconds
    #[arg(long, value_name = "USEC")]
    pub cpu_rt_period: Option<u64>,
    /// CPU realtime runtime in microseconds
    #[arg(long, value_name = "USEC")]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs the container may use, e.g. 0-2,4
    #[arg(long, value_name = "LIST")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use
    #[arg(long, value_name = "LIST")]
    pub cpuset_mems: Option<String>,
    /// Maximum number of processes (-1 or 0 for no limit)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Block IO weight (10-1000)
    #[arg(long, value_name = "WEIGHT")]
    pub blkio_weight: Option<u16>,
    /// Container id
    pub id: String,
}

impl UpdateArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let base = match &self.resources {
            None => LinuxResources::default(),
            Some(path) if path.as_os_str() == "-" => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|source| Error::Io {
                        context: "read resources JSON from stdin".into(),
                        source,
                    })?;
                serde_json::from_str(&text).map_err(|e| Error::Config {
                    path: "<stdin>".into(),
                    msg: e.to_string(),
                })?
            }
            Some(path) => super::read_json(path)?,
        };
        let resources = self.apply_flags(base);
        runtime.load(&self.id)?.update(&resources)?;
        Ok(0)
    }

    /// `base` with every given flag written over it.
    pub fn apply_flags(&self, mut r: LinuxResources) -> LinuxResources {
        if self.memory.is_some() || self.memory_reservation.is_some() || self.memory_swap.is_some()
        {
            let mut m: LinuxMemory = r.memory().unwrap_or_default();
            if let Some(v) = self.memory {
                m.set_limit(Some(v));
            }
            if let Some(v) = self.memory_reservation {
                m.set_reservation(Some(v));
            }
            if let Some(v) = self.memory_swap {
                m.set_swap(Some(v));
            }
            r.set_memory(Some(m));
        }
        let cpu_given = self.cpu_quota.is_some()
            || self.cpu_period.is_some()
            || self.cpu_shares.is_some()
            || self.cpu_rt_period.is_some()
            || self.cpu_rt_runtime.is_some()
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some();
        if cpu_given {
            let mut c: LinuxCpu = r.cpu().clone().unwrap_or_default();
            if let Some(v) = self.cpu_quota {
                c.set_quota(Some(v));
            }
            if let Some(v) = self.cpu_period {
                c.set_period(Some(v));
            }
            if let Some(v) = self.cpu_shares {
                c.set_shares(Some(v));
            }
            if let Some(v) = self.cpu_rt_period {
                c.set_realtime_period(Some(v));
            }
            if let Some(v) = self.cpu_rt_runtime {
                c.set_realtime_runtime(Some(v));
            }
            if let Some(v) = &self.cpuset_cpus {
                c.set_cpus(Some(v.clone()));
            }
            if let Some(v) = &self.cpuset_mems {
                c.set_mems(Some(v.clone()));
            }
            r.set_cpu(Some(c));
        }
        if let Some(v) = self.pids_limit {
            let mut p = LinuxPids::default();
            p.set_limit(v);
            r.set_pids(Some(p));
        }
        if let Some(v) = self.blkio_weight {
            let mut b: LinuxBlockIo = r.block_io().clone().unwrap_or_default();
            b.set_weight(Some(v));
            r.set_block_io(Some(b));
        }
        r
    }
}

/// Bytes as docker and runc write them: `1048576`, `512k`, `64m`, `1g`, `1GiB`; `-1` means
/// unlimited. Suffixes are binary (k = 1024).
pub fn parse_bytes(s: &str) -> std::result::Result<i64, String> {
    let t = s.trim();
    if t == "-1" {
        return Ok(-1);
    }
    let lower = t.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let multiplier: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "invalid size {s:?}: use bytes or a k, m, g, t suffix"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use bytes or a k, m, g, t suffix"))?;
    Ok((value * multiplier) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1048576"), Ok(1048576));
        assert_eq!(parse_bytes("512k"), Ok(512 * 1024));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5m"), Ok(3 << 19));
        assert_eq!(parse_bytes("-1"), Ok(-1));
        assert!(parse_bytes("12q").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn flags_win_over_the_file() {
        let base: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":1000,"reservation":500},"cpu":{"shares":10},"pids":{"limit":5}}"#,
        )
        .unwrap();
        let args = UpdateArgs {
            memory: Some(2000),
            cpu_quota: Some(50000),
            pids_limit: Some(100),
            id: "c1".into(),
            ..Default::default()
        };
        let r = args.apply_flags(base);
        let m = r.memory().unwrap();
        assert_eq!(m.limit(), Some(2000));
        assert_eq!(m.reservation(), Some(500));
        let c = r.cpu().as_ref().unwrap();
        assert_eq!(c.shares(), Some(10));
        assert_eq!(c.quota(), Some(50000));
        assert_eq!(r.pids().unwrap().limit(), 100);
    }
}
