//! `ferry checkpoint`: dump a running container with CRIU. The flags are runc's plus what
//! podman and containerd send (CONTRACTS.md §1.6, §2.3–2.4); the dump itself arrives with
//! issue #4.

use crate::checkpoint::CheckpointOptions;
use crate::checkpoint::export::ExportOptions;
use crate::runtime::{Error, Result, Runtime};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// CRIU flags that `checkpoint` and `restore` share: containerd's shim passes the same
/// option list to both.
#[derive(Args, Debug, Clone, Default)]
pub struct CriuFlags {
    /// Directory of the CRIU image files [default: ./checkpoint]
    #[arg(long, value_name = "DIR")]
    pub image_path: Option<PathBuf>,
    /// Directory for CRIU's work files and logs [default: the image path]
    #[arg(long, value_name = "DIR")]
    pub work_path: Option<PathBuf>,
    /// Images of a previous pre-dump, relative to the image path
    #[arg(long, value_name = "DIR")]
    pub parent_path: Option<PathBuf>,
    /// Checkpoint and restore established TCP connections
    #[arg(long)]
    pub tcp_established: bool,
    /// Close established TCP connections on restore instead of restoring them
    #[arg(long)]
    pub tcp_close: bool,
    /// Allow external unix sockets
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Allow shell jobs (a process attached to a terminal outside the container)
    #[arg(long)]
    pub shell_job: bool,
    /// Checkpoint and restore file locks
    #[arg(long)]
    pub file_locks: bool,
    /// How CRIU handles cgroups
    #[arg(long, value_enum, value_name = "MODE")]
    pub manage_cgroups_mode: Option<ManageCgroupsMode>,
    /// Namespace whose properties are not dumped or restored (repeatable), e.g. network
    #[arg(long, value_name = "NS")]
    pub empty_ns: Vec<String>,
    /// Use userfaultfd to fault memory pages in lazily
    #[arg(long)]
    pub lazy_pages: bool,
    /// File descriptor to write to when the lazy-pages server is ready
    #[arg(long, value_name = "FD", default_value_t = -1, allow_negative_numbers = true)]
    pub status_fd: i32,
    /// Send memory pages to a CRIU page server at ADDR:PORT
    #[arg(long, value_name = "ADDR:PORT")]
    pub page_server: Option<String>,
    /// Deduplicate the images of incremental dumps
    #[arg(long)]
    pub auto_dedup: bool,
    /// How CRIU keeps packets away from the container's network namespace while it is
    /// frozen: iptables, nftables or skip [default: skip for a namespace with only a
    /// loopback device and no --tcp-established, else nftables when criu can, else iptables]
    #[arg(long, value_name = "METHOD", value_parser = network_lock_parser())]
    pub network_lock: Option<crate::criu::NetworkLock>,
    /// Keep temporary files (podman's --keep)
    #[arg(long)]
    pub keep: bool,
    /// Leave the root file system out of the archive (podman's --ignore-rootfs)
    #[arg(long)]
    pub ignore_rootfs: bool,
    /// Print CRIU's statistics and ferry's phases on stderr: a table, or `--print-stats=json`
    #[arg(
        long,
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "table",
        value_name = "FORMAT"
    )]
    pub print_stats: Option<StatsFormat>,
    /// Also write the statistics as JSON to FILE (for scripts and `ferry bench`)
    #[arg(long, value_name = "FILE")]
    pub stats_file: Option<PathBuf>,
}

/// `--network-lock`'s values, as [`crate::criu::NetworkLock::parse`] reads them.
fn network_lock_parser() -> impl clap::builder::TypedValueParser<Value = crate::criu::NetworkLock> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["iptables", "nftables", "skip"])
        .map(|s| crate::criu::NetworkLock::parse(&s).expect("one of the possible values"))
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    Table,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ManageCgroupsMode {
    Soft,
    Full,
    Strict,
    Ignore,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub criu: CriuFlags,
    /// Leave the container running after the dump
    #[arg(long)]
    pub leave_running: bool,
    /// Dump memory only, as a parent for a later dump
    #[arg(long)]
    pub pre_dump: bool,
    /// Checkpoint established TCP connections even with data in flight
    #[arg(long)]
    pub tcp_skip_in_flight: bool,
    /// Allow CRIU to link-remap deleted files that are still open
    #[arg(long)]
    pub link_remap: bool,
    /// Write the checkpoint as an archive to FILE ("-": standard output; a FIFO or device
    /// is written as a stream). A file gets its name only once complete and on disk, mode
    /// 0600; another container's archive at FILE is not replaced
    #[arg(short, long, value_name = "FILE")]
    pub export: Option<PathBuf>,
    /// Compression of the exported archive (with --export) [default: zstd]
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    pub compress: Option<Compression>,
    /// Container id
    pub id: String,
}

/// `ferry guard-frozen` (hidden): started by `checkpoint -e`, never by hand
/// (checkpoint::guard).
#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct GuardFrozenArgs {
    /// Where the checkpoint writes its archive (for the message)
    #[arg(long, value_name = "PATH")]
    pub archive: PathBuf,
    /// Container id
    pub id: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl CheckpointArgs {
    pub fn run(self, runtime: &Runtime) -> Result<i32> {
        if self.export.is_none() && self.compress.is_some() {
            return Err(Error::Other(
                "--compress applies to an archive: add --export FILE, or drop --compress (a \
                 checkpoint into --image-path is CRIU's image files, uncompressed)"
                    .into(),
            ));
        }
        // Held until the checkpoint is done and the source released: a second checkpoint,
        // a pause or a delete meanwhile would thaw, dump or remove what this one froze.
        let (_hold, container) = runtime.hold(&self.id, false)?;
        if let Some(output) = &self.export {
            if self.pre_dump {
                return Err(Error::Other(
                    "--pre-dump writes no archive: drop --export, or drop --pre-dump".into(),
                ));
            }
            for (set, flag) in [
                (self.criu.page_server.is_some(), "--page-server"),
                (self.criu.lazy_pages, "--lazy-pages"),
                (self.criu.parent_path.is_some(), "--parent-path"),
            ] {
                if set {
                    return Err(Error::Other(format!(
                        "{flag} leaves memory pages out of the checkpoint, and an archive \
                         (--export) holds all of them: drop one of the two"
                    )));
                }
            }
            if self.criu.shell_job {
                return Err(Error::Other(
                    "--shell-job leaves the container's terminal (the caller's) out of the \
                     checkpoint, and an archive (--export) must carry all of it to wherever \
                     it is restored: checkpoint a shell job runc-style (--image-path) instead"
                        .into(),
                ));
            }
            // Ctrl-C or a service stop from here on aborts cleanly (sys::interrupt).
            crate::sys::interrupt::guard();
            let opts = ExportOptions {
                checkpoint: self.options()?,
                output: output.clone(),
                compression: match self.compress.unwrap_or(Compression::Zstd) {
                    Compression::None => crate::archive::writer::Compression::None,
                    Compression::Gzip => crate::archive::writer::Compression::Gzip,
                    Compression::Zstd => crate::archive::writer::Compression::Zstd,
                },
                ignore_rootfs: self.criu.ignore_rootfs,
                keep: self.criu.keep,
            };
            let exported = container.export(&opts)?;
            let stats = &exported.stats;
            if !self.leave_running {
                let archive = if output == std::path::Path::new("-") {
                    "was written whole to standard output".to_string()
                } else {
                    format!("is complete in {} and on disk", output.display())
                };
                container
                    .delete(true)
                    .map_err(|e| not_released(runtime, &self.id, &archive, e))?;
            }
            // The source is released: the guard has nothing left to watch.
            drop(exported.guard);
            report_stats(&self.criu, stats, "checkpoint")?;
            return Ok(0);
        }
        let opts = self.options()?;
        let report = container.checkpoint(&opts)?;
        if !opts.leave_running && !opts.pre_dump {
            // runc's rule: a checkpointed container is gone (its record is removed).
            let images = format!("is complete in {}", opts.image_path.display());
            container
                .delete(true)
                .map_err(|e| not_released(runtime, &self.id, &images, e))?;
        }
        report_stats(&self.criu, &report.stats, "dump")?;
        Ok(0)
    }

    pub fn options(&self) -> Result<CheckpointOptions> {
        let c = &self.criu;
        Ok(CheckpointOptions {
            image_path: match &c.image_path {
                Some(p) => p.clone(),
                None => super::bundle_or_cwd(None)?.join("checkpoint"),
            },
            work_path: c.work_path.clone(),
            parent_path: c.parent_path.clone(),
            leave_running: self.leave_running,
            tcp_established: c.tcp_established,
            tcp_skip_in_flight: self.tcp_skip_in_flight,
            link_remap: self.link_remap,
            ext_unix_sk: c.ext_unix_sk,
            shell_job: c.shell_job,
            file_locks: c.file_locks,
            pre_dump: self.pre_dump,
            manage_cgroups_mode: c
                .manage_cgroups_mode
                .map(ManageCgroupsMode::as_str)
                .map(String::from),
            empty_ns: c.empty_ns.clone(),
            page_server: c.page_server.clone(),
            lazy_pages: c.lazy_pages,
            status_fd: (c.status_fd >= 0).then_some(c.status_fd),
            auto_dedup: c.auto_dedup,
            network_lock: c.network_lock,
            netns_unreachable: None,
            page_sink: None,
            external_devshm: false,
        })
    }
}

/// The checkpoint is whole (`archive` says where) but the source could not be released:
/// says so, so that nobody takes the failure for a lost checkpoint and nobody restores it
/// beside a source that is still paused, and says how to finish.
fn not_released(runtime: &Runtime, id: &str, archive: &str, e: Error) -> Error {
    use crate::runtime::Status;
    let status = runtime.load(id).and_then(|c| c.status()).ok();
    let next = match status {
        Some(s @ (Status::Paused | Status::Running)) => format!(
            "it is still here, {s}: `ferry delete --force {id}` finishes the release, then \
             restore the checkpoint; or {} lets it run on here, and then do not restore the \
             checkpoint as well",
            if s == Status::Paused {
                format!("`ferry resume {id}`")
            } else {
                "leaving it".to_string()
            }
        ),
        _ => format!(
            "its processes are gone: `ferry delete --force {id}` removes what is left of it, \
             then restore the checkpoint"
        ),
    };
    Error::Other(format!(
        "the checkpoint of {id:?} {archive}, but releasing the container failed: {e}\n  {next}"
    ))
}

impl ManageCgroupsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ManageCgroupsMode::Soft => "soft",
            ManageCgroupsMode::Full => "full",
            ManageCgroupsMode::Strict => "strict",
            ManageCgroupsMode::Ignore => "ignore",
        }
    }
}

/// `--print-stats` (a table on stderr) and `--stats-file` (JSON, with ferry's own peak RSS).
pub fn report_stats<T: serde::Serialize>(flags: &CriuFlags, stats: &T, what: &str) -> Result<()> {
    match flags.print_stats {
        Some(StatsFormat::Table) => print_stats(&Some(stats), what)?,
        Some(StatsFormat::Json) => {
            let v = serde_json::to_string(stats).map_err(|e| Error::Other(e.to_string()))?;
            eprintln!("{v}");
        }
        None => {}
    }
    if let Some(path) = &flags.stats_file {
        let mut v = serde_json::to_value(stats).map_err(|e| Error::Other(e.to_string()))?;
        if let Some(map) = v.as_object_mut() {
            map.insert("peak_rss_kib".into(), peak_rss_kib().into());
        }
        std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap_or_default()).map_err(
            |source| Error::Io {
                context: format!("write {}", path.display()),
                source,
            },
        )?;
    }
    Ok(())
}

/// This process's peak resident memory (children, like criu, not included).
pub fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage fills a struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss
}

/// CRIU's statistics as aligned `name value` lines on stderr (stdout stays for data).
pub fn print_stats<T: serde::Serialize>(stats: &Option<T>, what: &str) -> Result<()> {
    let Some(stats) = stats else {
        eprintln!("criu wrote no {what} statistics");
        return Ok(());
    };
    let v = serde_json::to_value(stats).map_err(|e| Error::Other(e.to_string()))?;
    let mut rows = vec![];
    flatten("", &v, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        eprintln!("{k:<width$}  {v:>12}");
    }
    Ok(())
}

/// `criu.frozen_time_us` → ("criu frozen time", "261.2 ms"): nested objects become prefixed
/// rows, and the unit in a key's suffix becomes a unit in its value.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix} {k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::Null => {}
        v => {
            let n = v.as_f64();
            let (name, value) = match (prefix, n) {
                (p, Some(n)) if p.ends_with("_us") => {
                    (&p[..p.len() - 3], format!("{:.1} ms", n / 1000.0))
                }
                (p, Some(n)) if p.ends_with("_ms") => (&p[..p.len() - 3], format!("{n:.1} ms")),
                (p, Some(n)) if p.ends_with("_bytes") => {
                    (&p[..p.len() - 6], format!("{:.1} MiB", n / 1048576.0))
                }
                (p, Some(n)) if p.ends_with("_kib") => {
                    (&p[..p.len() - 4], format!("{:.1} MiB", n / 1024.0))
                }
                (p, _) => (p, v.as_str().map_or_else(|| v.to_string(), String::from)),
            };
            let mut name = name.replace('_', " ");
            if value.ends_with(" ms") && !name.ends_with("time") {
                name.push_str(" time");
            } else if value.ends_with(" MiB") {
                name.push_str(" size");
            }
            out.push((name, value));
        }
    }
}
