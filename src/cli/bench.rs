//! `ferry bench checkpoint --size 16M,256M,1G`: speed and memory targets live here, never in
//! tests (README has the latest numbers and this command).

use crate::runtime::{Error, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// checkpoint -e + restore -i of a container holding N MiB, against plain criu
    Checkpoint {
        /// Memory sizes, comma separated (16M, 256M, 1G)
        #[arg(long, default_value = "16M,256M,1G", value_delimiter = ',')]
        size: Vec<String>,
        /// Compressions to run, comma separated (none, zstd, gzip)
        #[arg(long, default_value = "none,zstd", value_delimiter = ',')]
        compress: Vec<String>,
        /// Scratch directory (removed afterwards)
        #[arg(long, default_value = "/var/tmp/ferry-bench")]
        dir: PathBuf,
        /// Print JSON rows instead of a table
        #[arg(long)]
        json: bool,
        /// Runs of each size and compression, floor and ferry alternating and the
        /// compressions taking turns; the fastest of each side counts (noise only ever adds
        /// time)
        #[arg(long, default_value_t = 3)]
        repeat: u32,
        /// The workload's memory: random (incompressible, the default) or mixed (every
        /// other MiB compresses)
        #[arg(long, default_value = "random", value_parser = ["random", "mixed"])]
        memory: String,
    },
}

impl BenchArgs {
    pub fn run(self) -> Result<i32> {
        let BenchCommand::Checkpoint {
            size,
            compress,
            dir,
            json,
            repeat,
            memory,
        } = self.what;
        let sizes = size
            .iter()
            .map(|s| crate::bench::parse_size(s))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::Other)?;
        let opts = crate::bench::Options {
            sizes_mib: sizes,
            compressions: compress,
            dir,
            ferry: std::env::current_exe().map_err(|e| Error::Other(e.to_string()))?,
            repeat,
            memory,
        };
        if !json {
            if opts.memory != "random" {
                println!("memory: {}", opts.memory);
            }
            println!(
                "{:>6} {:>8} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>6} | {:>10} {:>7} {:>7} | {:>9} {:>9} {:>9}",
                "size",
                "compress",
                "criu dump",
                "criu rst",
                "floor",
                "ferry ck",
                "ferry rst",
                "ferry",
                "ratio",
                "archive",
                "ck RSS",
                "rst RSS",
                "criu sync",
                "ck writes",
                "ck sync"
            );
        }
        crate::bench::checkpoint(&opts, |r| {
            if json {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            } else {
                println!(
                    "{:>5}M {:>8} | {:>7.0}ms {:>7.0}ms {:>7.0}ms | {:>7.0}ms {:>7.0}ms {:>7.0}ms | {:>5.2}x | {:>8.1}MB {:>4}MiB {:>4}MiB | {:>7.0}ms {:>7.0}ms {:>7.0}ms",
                    r.size_mib, r.compress, r.floor_dump_ms, r.floor_restore_ms, r.floor_ms,
                    r.checkpoint_ms, r.restore_ms, r.ferry_ms, r.ratio,
                    r.archive_bytes as f64 / 1e6, r.checkpoint_rss_kib / 1024,
                    r.restore_rss_kib / 1024, r.floor_sync_ms,
                    r.checkpoint_phases["write_ms"].as_f64().unwrap_or(f64::NAN),
                    r.checkpoint_phases["sync_ms"].as_f64().unwrap_or(f64::NAN)
                );
            }
        })
        .map_err(Error::Other)?;
        Ok(0)
    }
}
