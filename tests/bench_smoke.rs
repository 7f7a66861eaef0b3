//! `ferry bench checkpoint` runs end to end and reports what it measured. Only that it
//! works is tested here: speed and memory targets are the bench's business, never a test's.

mod common;

use common::{FERRY, require_root, unique_id};
use std::process::Command;

#[test]
fn the_checkpoint_bench_runs_and_reports_a_row_per_size_and_compression() {
    require_root();
    let dir = std::env::temp_dir().join(unique_id("bench"));
    // An archive file has its pages fed to CRIU as they are verified, on a disk stage,
    // where the kernel can hold CRIU's reads (archive::gate); where the kernel cannot, the
    // archive is verified whole first and staged in a tmpfs.
    let fed = ferry::archive::gate::supported(&std::env::temp_dir());
    let (rows, stdout) = bench_rows(&dir, &["--repeat", "2"]);
    assert_eq!(rows.len(), 2, "{stdout}");
    for (row, compress) in rows.iter().zip(["none", "zstd"]) {
        assert_eq!(row["compress"], compress);
        assert_eq!(row["size_mib"], 8);
        assert_eq!(row["memory"], "random");
        assert_eq!(row["runs"], 2);
        for k in [
            "floor_ms",
            "floor_sync_ms",
            "ferry_ms",
            "ratio",
            "checkpoint_ms",
            "restore_ms",
        ] {
            assert!(row[k].as_f64().unwrap_or(0.0) > 0.0, "{k} in {row}");
        }
        // The archive holds the 8 MiB the workload keeps in memory.
        assert!(
            row["archive_bytes"].as_u64().unwrap_or(0) > 8 << 20,
            "{row}"
        );
        assert!(row["peak_rss_kib"].as_i64().unwrap_or(0) > 0, "{row}");
        // Each side's own, the restore's no longer hidden behind the checkpoint's.
        let (ck, rst) = (
            row["checkpoint_rss_kib"].as_i64().unwrap_or(0),
            row["restore_rss_kib"].as_i64().unwrap_or(0),
        );
        assert!(ck > 0 && rst > 0, "{row}");
        assert_eq!(row["peak_rss_kib"].as_i64(), Some(ck.max(rst)), "{row}");
        let phases = &row["restore_phases"];
        if fed {
            assert_eq!(phases["pages_verified"], "while restoring", "{row}");
            assert_eq!(phases["stage"], "disk", "{row}");
        } else {
            assert_eq!(phases["pages_verified"], "before restoring", "{row}");
            assert_eq!(phases["stage"], "tmpfs", "{row}");
        }
    }
    assert!(!dir.exists(), "the bench left {}", dir.display());

    // Half-compressible memory: the rows say so, and zstd's archive is the smaller by far.
    let (rows, stdout) = bench_rows(&dir, &["--memory", "mixed", "--repeat", "1"]);
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows.iter().all(|r| r["memory"] == "mixed"), "{stdout}");
    let size = |r: &serde_json::Value| r["archive_bytes"].as_u64().unwrap_or(0);
    assert!(size(&rows[1]) < size(&rows[0]) * 3 / 4, "{stdout}");
    assert!(!dir.exists(), "the bench left {}", dir.display());

    // The table carries the same row, ending with the checkpoint's time in its writes and,
    // of that, in its final fdatasync.
    let out = Command::new(FERRY)
        .args(["bench", "checkpoint", "--size", "8M", "--compress", "none"])
        .args(["--repeat", "1", "--dir"])
        .arg(&dir)
        .output()
        .expect("run ferry bench");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ferry bench (table) failed:\n{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].ends_with("criu sync ck writes   ck sync"),
        "{table}"
    );
    let ms: Vec<f64> = lines[1]
        .split_whitespace()
        .rev()
        .take(2)
        .filter_map(|v| v.strip_suffix("ms")?.parse::<f64>().ok())
        .collect();
    assert!(
        matches!(ms[..], [sync, writes] if sync >= 0.0 && sync <= writes),
        "no write and sync times in {table}"
    );
    assert!(!dir.exists(), "the bench left {}", dir.display());
}

/// `ferry bench checkpoint --size 8M --compress none,zstd --json` with `more`, in `dir`:
/// its rows, and its output for messages.
fn bench_rows(dir: &std::path::Path, more: &[&str]) -> (Vec<serde_json::Value>, String) {
    let out = Command::new(FERRY)
        .args([
            "bench",
            "checkpoint",
            "--size",
            "8M",
            "--compress",
            "none,zstd",
        ])
        .args(more)
        .args(["--json", "--dir"])
        .arg(dir)
        .output()
        .expect("run ferry bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ferry bench {more:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (rows, stdout)
}
