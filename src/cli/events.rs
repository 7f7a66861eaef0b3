//! `ferry events`: the container's cgroup usage as JSON lines in runc's shape, once
//! (`--stats`, what containerd's shim reads through go-runc) or every `--interval` until the
//! container stops, with an `oom` line whenever the kernel OOM-killed a process of it.

use crate::runtime::cgroups::CgroupStats;
use crate::runtime::{Container, Error, Result, Runtime, Status};
use clap::Args;
use serde::Serialize;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct EventsArgs {
    /// Print the container's stats once, then exit
    #[arg(long)]
    pub stats: bool,
    /// How often to print stats: a Go duration such as 500ms, 5s or 1m
    #[arg(long, default_value = "5s", value_parser = parse_go_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Container id
    pub id: String,
}

/// How often the stream checks that the container still runs, so it ends soon after the
/// container does even with a long interval.
const LIVENESS_POLL: Duration = Duration::from_millis(100);

/// One line of output: runc's `types.Event`.
#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a CgroupStats>,
}

impl EventsArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        let container = runtime.load(&self.id)?;
        if container.status()? == Status::Stopped {
            return Err(Error::Other(format!(
                "container {:?} is not running: it has stopped, so there is no cgroup usage to \
                 report",
                self.id
            )));
        }
        let cgroup = container.cgroup()?;
        let mut out = Output::new();
        if self.stats {
            out.stats(&self.id, &cgroup.stats()?)?;
            return Ok(0);
        }
        stream(&container, cgroup.as_ref(), self.interval, &mut out)?;
        Ok(0)
    }
}

/// Prints stats at once and then every `interval` until the container stops. A stats read
/// that fails (the cgroup going away as the container exits) is logged and skipped, as
/// runc does. After the container stops, one last look catches the OOM kill that ended it.
fn stream(
    container: &Container,
    cgroup: &dyn crate::runtime::cgroups::Cgroup,
    interval: Duration,
    out: &mut Output,
) -> Result<()> {
    let mut oom_kills = None;
    let mut report = |out: &mut Output, with_stats: bool| -> Result<()> {
        let stats = match cgroup.stats() {
            Ok(stats) => stats,
            Err(e) => {
                tracing::warn!("cannot read the stats of {:?}: {e}", container.id);
                return Ok(());
            }
        };
        if oom_kills.is_some_and(|seen| stats.oom_kills > seen) {
            out.oom(&container.id)?;
        }
        oom_kills = Some(stats.oom_kills);
        if with_stats {
            out.stats(&container.id, &stats)?;
        }
        Ok(())
    };
    report(out, true)?;
    let mut next = Instant::now() + interval;
    loop {
        if out.closed {
            return Ok(());
        }
        std::thread::sleep(LIVENESS_POLL.min(next.saturating_duration_since(Instant::now())));
        if !container.is_init_alive() {
            return report(out, false);
        }
        if Instant::now() >= next {
            report(out, true)?;
            next += interval;
        }
    }
}

/// Stdout, one JSON object per line, flushed per line so a reader sees each event as it
/// happens. A reader that went away (EPIPE) ends the stream quietly.
struct Output {
    stdout: std::io::Stdout,
    closed: bool,
}

impl Output {
    fn new() -> Self {
        Output {
            stdout: std::io::stdout(),
            closed: false,
        }
    }

    fn stats(&mut self, id: &str, stats: &CgroupStats) -> Result<()> {
        self.write(&Event {
            kind: "stats",
            id,
            data: Some(stats),
        })
    }

    fn oom(&mut self, id: &str) -> Result<()> {
        self.write(&Event {
            kind: "oom",
            id,
            data: None,
        })
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let line = serde_json::to_string(event)
            .map_err(|e| Error::Other(format!("encode a {} event: {e}", event.kind)))?;
        let mut stdout = self.stdout.lock();
        match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(source) => Err(Error::Io {
                context: "write an event to stdout".into(),
                source,
            }),
        }
    }
}

/// A duration as Go's `time.ParseDuration` reads it (what runc's `--interval` takes):
/// numbers with a unit each, summed — `5s`, `500ms`, `1m30s`, `1.5h`; units ns, us (µs),
/// ms, s, m, h. Must be above zero.
pub fn parse_go_duration(text: &str) -> std::result::Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {text:?}: {why}; use e.g. 500ms, 5s or 1m");
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(bad("it is negative"));
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number
            .parse()
            .map_err(|_| bad(&format!("{number:?} is not a number")))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(bad(&format!("{number} has no unit"))),
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        nanos += value * scale;
        rest = after;
    }
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(bad("it is too long"));
    }
    let duration = Duration::from_nanos(nanos.round() as u64);
    if duration.is_zero() {
        return Err(bad("the interval must be greater than 0"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("250µs"), Duration::from_micros(250));
        assert_eq!(ok("10ns"), Duration::from_nanos(10));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        for bad in ["", "5", "5x", "-5s", "0s", "0", "s", "1..5s", "5 s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn events_have_runcs_shape() {
        let mut stats = CgroupStats::default();
        stats.cpu.usage.total = 7;
        stats.cpu.throttling.throttled_periods = 2;
        stats.memory.usage.limit = u64::MAX;
        stats.oom_kills = 3;
        let line = serde_json::to_value(Event {
            kind: "stats",
            id: "c1",
            data: Some(&stats),
        })
        .unwrap();
        assert_eq!(line["type"], "stats");
        assert_eq!(line["id"], "c1");
        let data = &line["data"];
        assert_eq!(data["cpu"]["usage"]["total"], 7);
        assert_eq!(data["cpu"]["throttling"]["throttledPeriods"], 2);
        assert_eq!(data["memory"]["usage"]["limit"], u64::MAX);
        assert!(data["memory"]["kernelTCP"].is_object());
        assert!(data["blkio"]["ioServiceBytesRecursive"].is_array());
        assert!(
            data.get("oom_kills").is_none(),
            "not part of runc's document"
        );
        let oom = serde_json::to_string(&Event {
            kind: "oom",
            id: "c1",
            data: None,
        })
        .unwrap();
        assert_eq!(oom, r#"{"type":"oom","id":"c1"}"#);
    }
}
