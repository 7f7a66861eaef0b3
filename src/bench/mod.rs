//! `ferry bench checkpoint`: ferry's archive round trip (`checkpoint -e` + `restore -i`)
//! against plain `criu dump` + `criu restore` of the same workload into the same kind of
//! directory, the floor for anything built on CRIU. Both run side by side in one process, so
//! the ratio means something on hosts whose speed drifts between runs.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WORKLOAD: &str = include_str!("memhold.c");

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub size_mib: u64,
    /// The workload's memory: `random` (incompressible) or `mixed` (half compresses).
    pub memory: String,
    pub compress: String,
    pub floor_dump_ms: f64,
    pub floor_restore_ms: f64,
    pub floor_ms: f64,
    /// The floor's images written to disk right after its dump (`sync`, timed on its own and
    /// not in `floor_ms`): what durability, which ferry's checkpoint includes, costs plain
    /// CRIU in the same run.
    pub floor_sync_ms: f64,
    pub checkpoint_ms: f64,
    pub restore_ms: f64,
    pub ferry_ms: f64,
    pub ratio: f64,
    pub archive_bytes: u64,
    pub images_bytes: u64,
    /// ferry's peak RSS: the larger of its checkpoint's and its restore's, each the worst
    /// of the row's runs.
    pub peak_rss_kib: i64,
    pub checkpoint_rss_kib: i64,
    pub restore_rss_kib: i64,
    /// Pairs of (floor, ferry) runs this row is the best of.
    pub runs: u32,
    /// ferry's own phases, from its --stats-file output.
    pub checkpoint_phases: serde_json::Value,
    pub restore_phases: serde_json::Value,
}

pub struct Options {
    pub sizes_mib: Vec<u64>,
    pub compressions: Vec<String>,
    /// Where the bench keeps its store, images and archives (removed afterwards).
    pub dir: PathBuf,
    pub ferry: PathBuf,
    /// Runs of each (size, compression); the best of each side is reported.
    pub repeat: u32,
    /// The workload's memory: `random` or `mixed` (see memhold.c).
    pub memory: String,
}

type Result<T> = std::result::Result<T, String>;

fn run(cmd: &mut Command, what: &str) -> Result<Duration> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(took)
}

fn wait_for(path: &Path, what: &str, limit: Duration) -> Result<()> {
    let t = Instant::now();
    while !path.exists() {
        if t.elapsed() > limit {
            return Err(format!("timed out waiting for {what} ({})", path.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Writes back what earlier steps left dirty, untimed, so every timed step (the floor's and
/// ferry's alike) starts on a quiet machine: otherwise the kernel's writeback of the
/// previous step's gigabyte lands in whichever step comes next, and the ratios swing 2x from
/// run to run.
fn quiesce() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10000.0).round() / 10.0
}

/// Builds the workload with gcc -static and an image holding it and busybox.
fn prepare(o: &Options) -> Result<()> {
    let rootfs = o.dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(rootfs.join("tmp")).map_err(|e| e.to_string())?;
    let src = o.dir.join("memhold.c");
    std::fs::write(&src, WORKLOAD).map_err(|e| e.to_string())?;
    run(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(rootfs.join("bin/memhold"))
            .arg(&src),
        "gcc -static memhold.c (install build-essential)",
    )?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .map_err(|e| format!("copy /bin/busybox (install busybox-static): {e}"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).map_err(|e| e.to_string())?;
    run(
        ferry(o)
            .args(["image", "import"])
            .arg(&rootfs)
            .args(["--name", "ferry-bench"]),
        "ferry image import",
    )?;
    Ok(())
}

fn ferry(o: &Options) -> Command {
    let mut c = Command::new(&o.ferry);
    c.arg("--root")
        .arg(o.dir.join("run"))
        .arg("--storage")
        .arg(o.dir.join("storage"));
    c
}

/// Plain CRIU on the same workload run as a host process: its dump, the `sync` of its images
/// after it, and its restore.
fn floor(o: &Options, mib: u64) -> Result<(Duration, Duration, Duration)> {
    let dir = o.dir.join(format!("floor-{mib}"));
    let images = dir.join("images");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&images).map_err(|e| e.to_string())?;
    let mut child = unsafe {
        use std::os::unix::process::CommandExt;
        Command::new(o.dir.join("rootfs/bin/memhold"))
            .arg(mib.to_string())
            .arg(&dir)
            .arg(&o.memory)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .pre_exec(|| {
                libc::setsid();
                Ok(())
            })
            .spawn()
            .map_err(|e| format!("start the workload: {e}"))?
    };
    wait_for(
        &dir.join("ready"),
        "the workload to fill its memory",
        Duration::from_secs(120),
    )?;
    quiesce();
    let dump = run(
        Command::new("criu")
            .args(["dump", "-t", &child.id().to_string(), "-D"])
            .arg(&images)
            .args(["-o", "dump.log", "-v4"]),
        "criu dump",
    );
    let _ = child.kill();
    let _ = child.wait();
    let dump = dump?;
    // Timed on its own; it is also the sync before the restore, as for every timed step.
    let t = Instant::now();
    quiesce();
    let sync = t.elapsed();
    let pidfile = dir.join("restored.pid");
    let restore = run(
        Command::new("criu")
            .args(["restore", "-d", "-D"])
            .arg(&images)
            .args(["-o", "restore.log", "-v4", "--pidfile"])
            .arg(&pidfile),
        "criu restore",
    )?;
    if let Ok(pid) = std::fs::read_to_string(&pidfile)
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        // SAFETY: kill of the process criu just restored for us.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((dump, sync, restore))
}

fn ferry_round(o: &Options, mib: u64, compress: &str) -> Result<Row> {
    let id = format!("bench-{mib}");
    let ckdir = o.dir.join(format!("ck-{mib}-{compress}"));
    let _ = std::fs::remove_dir_all(&ckdir);
    std::fs::create_dir_all(&ckdir).map_err(|e| e.to_string())?;
    // Not run(): the detached container keeps whatever stdio it is given, so a captured
    // stderr pipe would never reach EOF.
    let status = ferry(o)
        .args(["run", "-d", "--image", "ferry-bench", "--name", &id, "--"])
        .args(["/bin/memhold", &mib.to_string(), "/tmp", &o.memory])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("ferry run: {e}"))?;
    if !status.success() {
        return Err(format!("ferry run -d of the workload failed ({status})"));
    }
    let upper_tmp = o
        .dir
        .join("storage/containers")
        .join(&id)
        .join("rootfs/tmp");
    let cleanup = |o: &Options| {
        let _ = ferry(o)
            .args(["delete", "--force", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    let result = (|| {
        wait_for(
            &upper_tmp.join("ready"),
            "the container to fill its memory",
            Duration::from_secs(120),
        )?;
        let archive = ckdir.join("archive");
        let st1 = ckdir.join("checkpoint.json");
        quiesce();
        let checkpoint = run(
            ferry(o)
                .args(["checkpoint", &id, "-e"])
                .arg(&archive)
                .args(["--compress", compress, "--stats-file"])
                .arg(&st1),
            "ferry checkpoint -e",
        )?;
        let archive_bytes = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        let st2 = ckdir.join("restore.json");
        quiesce();
        let restore = run(
            ferry(o)
                .args(["restore", "-d", "-i"])
                .arg(&archive)
                .args(["--name", &id, "--stats-file"])
                .arg(&st2),
            "ferry restore -i",
        )?;
        // The restored workload goes on counting.
        let before = std::fs::read_to_string(upper_tmp.join("count")).unwrap_or_default();
        let t = Instant::now();
        loop {
            let now = std::fs::read_to_string(upper_tmp.join("count")).unwrap_or_default();
            if now != before {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err("the restored workload does not count on".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let read = |p: &Path| -> serde_json::Value {
            std::fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        };
        let (p1, p2) = (read(&st1), read(&st2));
        let (ck_rss, rst_rss) = (
            p1["peak_rss_kib"].as_i64().unwrap_or(0),
            p2["peak_rss_kib"].as_i64().unwrap_or(0),
        );
        Ok(Row {
            size_mib: mib,
            memory: o.memory.clone(),
            compress: compress.to_string(),
            floor_dump_ms: 0.0,
            floor_restore_ms: 0.0,
            floor_ms: 0.0,
            floor_sync_ms: 0.0,
            checkpoint_ms: ms(checkpoint),
            restore_ms: ms(restore),
            ferry_ms: ms(checkpoint + restore),
            ratio: 0.0,
            archive_bytes,
            images_bytes: p1["images_bytes"].as_u64().unwrap_or(0),
            peak_rss_kib: ck_rss.max(rst_rss),
            checkpoint_rss_kib: ck_rss,
            restore_rss_kib: rst_rss,
            runs: 1,
            checkpoint_phases: p1,
            restore_phases: p2,
        })
    })();
    cleanup(o);
    let _ = std::fs::remove_dir_all(&ckdir);
    result
}

pub fn checkpoint(o: &Options, mut report: impl FnMut(&Row)) -> Result<Vec<Row>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("ferry bench needs root (it runs containers and CRIU)".into());
    }
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("create {}: {e}", o.dir.display()))?;
    let r = (|| {
        prepare(o)?;
        let mut rows = vec![];
        for &mib in &o.sizes_mib {
            // A floor right before each ferry round, so both see the same host state; the
            // compressions take turns within each repeat, so none of them gets all its runs
            // in a slow stretch of the VM (single runs drift up to 2x over minutes). Of the
            // `repeat` pairs of each, the best of each side counts (noise on these VMs only
            // ever adds time), and the worst peak RSS of each of ferry's two sides.
            struct Best {
                floor: Option<(Duration, Duration, Duration)>,
                ferry: Option<Row>,
                rss: (i64, i64),
            }
            let mut best: Vec<Best> = o
                .compressions
                .iter()
                .map(|_| Best {
                    floor: None,
                    ferry: None,
                    rss: (0, 0),
                })
                .collect();
            for _ in 0..o.repeat.max(1) {
                for (c, b) in o.compressions.iter().zip(best.iter_mut()) {
                    let (d, sync, r) = floor(o, mib)?;
                    if b.floor.is_none_or(|(bd, _, br)| d + r < bd + br) {
                        b.floor = Some((d, sync, r));
                    }
                    let row = ferry_round(o, mib, c)?;
                    b.rss = (
                        b.rss.0.max(row.checkpoint_rss_kib),
                        b.rss.1.max(row.restore_rss_kib),
                    );
                    if b.ferry.as_ref().is_none_or(|f| row.ferry_ms < f.ferry_ms) {
                        b.ferry = Some(row);
                    }
                }
            }
            for b in best {
                let (Some(mut row), Some((d, sync, r))) = (b.ferry, b.floor) else {
                    continue;
                };
                row.runs = o.repeat.max(1);
                (row.checkpoint_rss_kib, row.restore_rss_kib) = b.rss;
                row.peak_rss_kib = b.rss.0.max(b.rss.1);
                row.floor_dump_ms = ms(d);
                row.floor_restore_ms = ms(r);
                row.floor_ms = ms(d + r);
                row.floor_sync_ms = ms(sync);
                row.ratio = (row.ferry_ms / row.floor_ms * 100.0).round() / 100.0;
                report(&row);
                rows.push(row);
            }
        }
        Ok(rows)
    })();
    let _ = Command::new("umount")
        .arg("-R")
        .arg(o.dir.join("storage/containers"))
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&o.dir);
    r
}

/// "16M", "256M", "1G" → MiB.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('G') | Some('g') => (&s[..s.len() - 1], 1024),
        Some('M') | Some('m') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mul)
        .map_err(|_| format!("size {s:?}: use MiB or a suffix, like 16M or 1G"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("16M").unwrap(), 16);
        assert_eq!(super::parse_size("1G").unwrap(), 1024);
        assert_eq!(super::parse_size("64").unwrap(), 64);
        assert!(super::parse_size("x").is_err());
    }
}
