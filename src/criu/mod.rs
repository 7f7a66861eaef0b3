//! The CRIU driver: checkpoint and restore of process trees through `criu swrk`, CRIU's RPC
//! over a socketpair. Synchronous (it forks criu): call it from a blocking context, never
//! from inside tokio. Every failure quotes the `Error` lines of CRIU's log and names the log.

pub mod log;
pub mod notify;
pub mod options;
pub mod page_server;
pub mod stats;
mod swrk;

pub use notify::{CallbackError, IgnoreNotifications, NotificationLog, Notify};
pub use options::{
    CgroupMode, CgroupRoot, DumpRequest, ExtMount, FIRST_EXTRA_FD, InheritFd, JoinNs, NetworkLock,
    PageServer, RestoreRequest,
};
pub use stats::{DumpStats, RestoreStats};

use options::DirFds;
use rust_criu::rust_criu_protobuf::rpc::{Criu_features, Criu_req, Criu_req_type};
use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use swrk::Call;

/// What the user sees when pre-copy is asked for on a kernel that cannot track dirty memory.
pub const NO_SOFT_DIRTY: &str = "pre-dump needs soft-dirty memory tracking \
     (CONFIG_MEM_SOFT_DIRTY), which this kernel lacks";

/// The environment variable that names the criu binary to run instead of `criu` from PATH.
pub const CRIU_ENV: &str = "FERRY_CRIU";

pub type Result<T> = std::result::Result<T, Error>;

/// Why a CRIU operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot run {}: {source}; install CRIU >= 4 (scripts/install-deps.sh builds it) or \
         point {CRIU_ENV} at a criu binary", binary.display()
    )]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to criu (pid {pid}) over its RPC socket: {what}")]
    Rpc { pid: i32, what: String },
    /// CRIU answered that the request failed.
    #[error("{}", failed_message(op, *errno, errmsg.as_deref(), log.as_deref(), excerpt))]
    Failed {
        op: &'static str,
        errno: Option<i32>,
        errmsg: Option<String>,
        log: Option<PathBuf>,
        excerpt: String,
    },
    /// criu died without an answer, or exited with an error after one.
    #[error("{}", exited_message(op, status, log.as_deref(), excerpt))]
    Exited {
        op: &'static str,
        status: std::process::ExitStatus,
        log: Option<PathBuf>,
        excerpt: String,
    },
    /// The caller's notification callback failed, so CRIU was told to abort.
    #[error(
        "criu {op} aborted: handling its {script:?} notification failed: {source}{}",
        log.as_ref().map(|l| format!(" (criu's log: {})", l.display())).unwrap_or_default()
    )]
    Callback {
        op: &'static str,
        script: String,
        log: Option<PathBuf>,
        #[source]
        source: CallbackError,
    },
    #[error("preparing criu (pid {pid}) for {op}: {source}")]
    BeforeTasks {
        op: &'static str,
        pid: i32,
        #[source]
        source: CallbackError,
    },
    /// This kernel or this CRIU cannot do what was asked; nothing was touched.
    #[error("{0}")]
    Unsupported(String),
}

fn log_part(log: Option<&Path>, excerpt: &str) -> String {
    let hint = log::hint(excerpt)
        .map(|h| format!("\nhint: {h}"))
        .unwrap_or_default();
    match log {
        Some(log) => format!("; {} says:\n{}{hint}", log.display(), excerpt.trim_end()),
        None => hint,
    }
}

fn failed_message(
    op: &str,
    errno: Option<i32>,
    errmsg: Option<&str>,
    log: Option<&Path>,
    excerpt: &str,
) -> String {
    let mut m = format!("criu {op} failed");
    if let Some(msg) = errmsg {
        m.push_str(&format!(": {}", msg.trim_end()));
    }
    if let Some(errno) = errno.filter(|&e| e != 0) {
        let name = nix::errno::Errno::from_raw(errno);
        m.push_str(&format!(" (errno {errno}: {})", name.desc()));
    }
    m + &log_part(log, excerpt)
}

fn exited_message(
    op: &str,
    status: &std::process::ExitStatus,
    log: Option<&Path>,
    excerpt: &str,
) -> String {
    format!("criu {op}: criu {status}") + &log_part(log, excerpt)
}

/// CRIU's version, from the VERSION request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriuVersion {
    pub major: i32,
    pub minor: i32,
    pub sublevel: i32,
    /// Set for builds from git.
    pub gitid: Option<String>,
}

impl CriuVersion {
    /// Whether this is `major.minor` or later.
    pub fn at_least(&self, major: i32, minor: i32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl CriuVersion {
    /// One line for [`Criu::version_cached`]: `major minor sublevel [gitid]`.
    fn to_cache(&self) -> String {
        let v = format!("{} {} {}", self.major, self.minor, self.sublevel);
        match &self.gitid {
            Some(g) => format!("{v} {g}"),
            None => v,
        }
    }

    fn from_cache(line: &str) -> Option<CriuVersion> {
        let mut w = line.split(' ');
        let mut num = || w.next()?.parse().ok();
        let (major, minor, sublevel) = (num()?, num()?, num()?);
        let gitid = w.next().map(str::to_string);
        Some(CriuVersion {
            major,
            minor,
            sublevel,
            gitid,
        })
    }
}

impl fmt::Display for CriuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.sublevel)?;
        if let Some(g) = &self.gitid {
            write!(f, " ({g})")?;
        }
        Ok(())
    }
}

/// Kernel features CRIU can use, as FEATURE_CHECK reports them. Ask for a feature by
/// setting it; the answer says which of those asked for work here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// Soft-dirty memory tracking: pre-dump and incremental dumps.
    pub mem_track: bool,
    /// Userfaultfd for post-copy (lazy-pages) restore.
    pub lazy_pages: bool,
    /// pidfd_open/pidfd_getfd, for pid reuse detection across pre-dumps.
    pub pidfd_store: bool,
}

/// What a dump or pre-dump reports.
#[derive(Debug, Clone)]
pub struct DumpReport {
    /// CRIU's `stats-dump`; None when it could not be read (the dump itself succeeded).
    pub stats: Option<DumpStats>,
    pub log: PathBuf,
}

/// What a restore reports.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The restored init, in our pid namespace.
    pub pid: i32,
    /// CRIU's `stats-restore`; None when it could not be read.
    pub stats: Option<RestoreStats>,
    pub log: PathBuf,
}

/// The driver: which criu binary to run. Each call starts its own `criu swrk`.
#[derive(Debug, Clone)]
pub struct Criu {
    binary: PathBuf,
}

impl Default for Criu {
    fn default() -> Self {
        Criu::new()
    }
}

impl Criu {
    /// `criu` from PATH, or the binary `FERRY_CRIU` names.
    pub fn new() -> Criu {
        let binary = std::env::var_os(CRIU_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("criu"));
        Criu { binary }
    }

    pub fn with_binary(binary: impl Into<PathBuf>) -> Criu {
        Criu {
            binary: binary.into(),
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Asks criu for its version.
    pub fn version(&self) -> Result<CriuVersion> {
        self.version_kept(None)
    }

    /// [`version`](Self::version), the answer also kept in `cache_dir` for this binary
    /// (a criu process and its start cost 10-15 ms on every checkpoint and restore).
    pub fn version_cached(&self, cache_dir: &Path) -> Result<CriuVersion> {
        self.version_kept(Some(cache_dir))
    }

    fn version_kept(&self, cache_dir: Option<&Path>) -> Result<CriuVersion> {
        // Asked once per process: every question costs a criu process.
        static CACHE: std::sync::Mutex<Vec<(PathBuf, CriuVersion)>> =
            std::sync::Mutex::new(Vec::new());
        if let Some((_, v)) = CACHE
            .lock()
            .ok()
            .and_then(|c| c.iter().find(|(b, _)| *b == self.binary).cloned())
        {
            return Ok(v);
        }
        let v = match cache_dir {
            None => self.ask_version()?,
            Some(dir) => {
                let line =
                    self.cached(dir, "version", || self.ask_version().map(|v| v.to_cache()))?;
                match CriuVersion::from_cache(&line) {
                    Some(v) => v,
                    // Not a line this ferry wrote: ask.
                    None => self.ask_version()?,
                }
            }
        };
        if let Ok(mut c) = CACHE.lock() {
            c.push((self.binary.clone(), v.clone()));
        }
        Ok(v)
    }

    fn ask_version(&self) -> Result<CriuVersion> {
        let mut req = Criu_req::new();
        req.set_type(Criu_req_type::VERSION);
        let resp = self.call(simple_call("version", req, &mut IgnoreNotifications))?;
        let v = resp.version.as_ref().ok_or_else(|| Error::Rpc {
            pid: 0,
            what: "criu's VERSION answer has no version".into(),
        })?;
        Ok(CriuVersion {
            major: v.major_number(),
            minor: v.minor_number(),
            sublevel: v.sublevel(),
            gitid: v.gitid.clone().filter(|g| !g.is_empty()),
        })
    }

    /// Asks criu which of the features in `want` this kernel supports.
    pub fn check_features(&self, want: Features) -> Result<Features> {
        let mut req = Criu_req::new();
        req.set_type(Criu_req_type::FEATURE_CHECK);
        let mut f = Criu_features::new();
        f.mem_track = Some(want.mem_track);
        f.lazy_pages = Some(want.lazy_pages);
        f.pidfd_store = Some(want.pidfd_store);
        req.features = Some(f).into();
        let resp = self.call(simple_call("feature check", req, &mut IgnoreNotifications))?;
        let got = resp.features.as_ref().ok_or_else(|| Error::Rpc {
            pid: 0,
            what: "criu's FEATURE_CHECK answer has no features".into(),
        })?;
        Ok(Features {
            mem_track: want.mem_track && got.mem_track(),
            lazy_pages: want.lazy_pages && got.lazy_pages(),
            pidfd_store: want.pidfd_store && got.pidfd_store(),
        })
    }

    /// Whether this criu can lock a network namespace with nftables (built with libnftables,
    /// on a kernel with nf_tables set concatenations): `criu check --feature
    /// network_lock_nftables`. That costs a criu process and its kernel probe (40 ms), so
    /// the answer is kept in `cache_dir` for this binary and kernel.
    pub fn nftables_lock(&self, cache_dir: &Path) -> bool {
        let answer = self.cached(cache_dir, "nftables-lock", || {
            let yes = std::process::Command::new(&self.binary)
                .args(["check", "--feature", "network_lock_nftables"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            Ok::<_, std::convert::Infallible>(if yes { "yes" } else { "no" }.to_string())
        });
        answer.is_ok_and(|a| a == "yes")
    }

    /// A one-line answer about this criu binary on this kernel, kept in
    /// `cache_dir/criu@NAME` under [`cache_key`](Self::cache_key): read from there when the
    /// key matches, else `ask`ed and written. An error is not kept, and neither is anything
    /// about a binary that cannot be found.
    fn cached<E>(
        &self,
        cache_dir: &Path,
        name: &str,
        ask: impl FnOnce() -> std::result::Result<String, E>,
    ) -> std::result::Result<String, E> {
        let Some(key) = self.cache_key() else {
            return ask();
        };
        // '@' is not allowed in a container id, so this can never be a container's directory.
        let cache = cache_dir.join(format!("criu@{name}"));
        if let Ok(text) = std::fs::read_to_string(&cache)
            && let Some((k, answer)) = text.trim_end().rsplit_once('\n')
            && k == key
        {
            return Ok(answer.to_string());
        }
        let answer = ask()?;
        let tmp = cache_dir.join(format!("criu@{name}.{}", std::process::id()));
        if std::fs::create_dir_all(cache_dir).is_ok()
            && std::fs::write(&tmp, format!("{key}\n{answer}\n")).is_ok()
        {
            let _ = std::fs::rename(&tmp, &cache);
        }
        Ok(answer)
    }

    /// The binary's path, looked up on PATH when it is a bare name.
    fn located(&self) -> Option<PathBuf> {
        if self.binary.components().count() > 1 {
            return Some(self.binary.clone());
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join(&self.binary))
            .find(|p| p.is_file())
    }

    /// The binary as found on PATH, its identity and the running kernel: what a cached
    /// answer about this criu depends on.
    fn cache_key(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let path = self.located()?;
        let m = std::fs::metadata(&path).ok()?;
        let kernel = nix::sys::utsname::uname().ok()?;
        // ctime too: any change to the file sets it, and it cannot be set back.
        Some(format!(
            "{} {}:{} {} {} {} {}",
            path.display(),
            m.dev(),
            m.ino(),
            m.mtime_nsec() + m.mtime() * 1_000_000_000,
            m.ctime_nsec() + m.ctime() * 1_000_000_000,
            m.size(),
            kernel.release().to_string_lossy()
        ))
    }

    /// Checkpoints the tree at `req.pid` into `req.images_dir`. A failed dump leaves the
    /// tasks running (CRIU thaws them).
    pub fn dump(&self, req: DumpRequest, notify: &mut dyn Notify) -> Result<DumpReport> {
        if req.track_mem {
            self.require_mem_track("an incremental dump (--parent-path)")?;
        }
        self.dump_as(Criu_req_type::DUMP, "dump", req, notify)
    }

    /// Copies the memory of the tree at `req.pid` while it keeps running (pre-copy). Fails
    /// before touching the tasks when the kernel cannot track dirty memory.
    pub fn pre_dump(&self, req: DumpRequest, notify: &mut dyn Notify) -> Result<DumpReport> {
        self.require_mem_track("pre-dump")?;
        self.dump_as(Criu_req_type::PRE_DUMP, "pre-dump", req, notify)
    }

    /// Restores the tree imaged in `req.images_dir`. `before_tasks` runs with criu's pid
    /// before criu makes any task: the place to move criu into the container's cgroup, so
    /// the restored tasks are born there. With `notify_scripts` it runs while criu starts
    /// (`swrk::Call::before_tasks`).
    pub fn restore(
        &self,
        mut req: RestoreRequest,
        notify: &mut dyn Notify,
        before_tasks: impl FnOnce(i32) -> std::result::Result<(), CallbackError> + Send,
    ) -> Result<RestoreReport> {
        let dirs = OpenDirs::open(&req.images_dir, req.work_dir.as_deref())?;
        let log = dirs
            .work_path
            .join(req.log_file.as_deref().unwrap_or("restore.log"));
        let mut rpc = Criu_req::new();
        rpc.set_type(Criu_req_type::RESTORE);
        rpc.opts = Some(options::restore_opts(&req, dirs.fds())).into();
        let extra_fds = std::mem::take(&mut req.inherit_fds)
            .into_iter()
            .map(|i| i.fd)
            .collect();
        let resp = self.call(Call {
            op: "restore",
            req: rpc,
            extra_fds,
            stdio: req.stdio.take(),
            notify,
            before_tasks: Some(Box::new(before_tasks)),
            log: Some(log.clone()),
            tolerate_exit_status: false,
        })?;
        let pid = match resp.restore.as_ref() {
            Some(r) if r.pid() > 0 => r.pid(),
            _ => {
                return Err(Error::Rpc {
                    pid: 0,
                    what: "criu's RESTORE answer has no pid".into(),
                });
            }
        };
        let stats = stats::read_restore_stats(&dirs.work_path.join("stats-restore"))
            .inspect_err(|e| tracing::warn!("restore succeeded, but its stats: {e}"))
            .ok();
        Ok(RestoreReport { pid, stats, log })
    }

    fn require_mem_track(&self, what: &str) -> Result<()> {
        let f = self.check_features(Features {
            mem_track: true,
            ..Features::default()
        })?;
        if f.mem_track {
            Ok(())
        } else if what == "pre-dump" {
            Err(Error::Unsupported(NO_SOFT_DIRTY.into()))
        } else {
            Err(Error::Unsupported(format!(
                "{what} needs soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY), which this \
                 kernel lacks"
            )))
        }
    }

    fn dump_as(
        &self,
        kind: Criu_req_type,
        op: &'static str,
        req: DumpRequest,
        notify: &mut dyn Notify,
    ) -> Result<DumpReport> {
        let dirs = OpenDirs::open(&req.images_dir, req.work_dir.as_deref())?;
        let log = dirs
            .work_path
            .join(req.log_file.as_deref().unwrap_or("dump.log"));
        let mut rpc = Criu_req::new();
        rpc.set_type(kind);
        rpc.opts = Some(options::dump_opts(&req, dirs.fds())).into();
        let extra_fds = match &req.page_sink {
            None => Vec::new(),
            Some(fd) => vec![fd.try_clone().map_err(|source| Error::Io {
                context: "duplicating the page server socket".into(),
                source,
            })?],
        };
        self.call(Call {
            op,
            req: rpc,
            extra_fds,
            stdio: None,
            notify,
            before_tasks: None,
            log: Some(log.clone()),
            // criu stays for the next pre-dump and fails when we hang up instead.
            tolerate_exit_status: kind == Criu_req_type::PRE_DUMP,
        })?;
        let stats = stats::read_dump_stats(&dirs.work_path.join("stats-dump"))
            .inspect_err(|e| tracing::warn!("{op} succeeded, but its stats: {e}"))
            .ok();
        Ok(DumpReport { stats, log })
    }

    fn call(&self, c: Call<'_>) -> Result<rust_criu::rust_criu_protobuf::rpc::Criu_resp> {
        swrk::call(&self.binary, c)
    }
}

fn simple_call<'a>(op: &'static str, req: Criu_req, notify: &'a mut dyn Notify) -> Call<'a> {
    Call {
        op,
        req,
        extra_fds: Vec::new(),
        stdio: None,
        notify,
        before_tasks: None,
        log: None,
        tolerate_exit_status: false,
    }
}

/// The images and work dirs, open for as long as criu runs (it reopens them through
/// `/proc/<our pid>/fd/N`).
struct OpenDirs {
    images: File,
    work: Option<File>,
    /// Where the log and stats land: the work dir, else the images dir.
    work_path: PathBuf,
}

impl OpenDirs {
    fn open(images: &Path, work: Option<&Path>) -> Result<OpenDirs> {
        let open = |p: &Path, what: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(p)
                .map_err(|source| Error::Io {
                    context: format!("opening the {what} {}", p.display()),
                    source,
                })
        };
        Ok(OpenDirs {
            images: open(images, "CRIU images dir")?,
            work: work.map(|w| open(w, "CRIU work dir")).transpose()?,
            work_path: work.unwrap_or(images).to_path_buf(),
        })
    }

    fn fds(&self) -> DirFds {
        DirFds {
            images: self.images.as_raw_fd(),
            work: self.work.as_ref().map(|w| w.as_raw_fd()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version kept on file is what `version_cached` answers for the binary it was
    /// kept for; for any other binary criu is asked again, and its answer replaces it.
    #[test]
    fn the_version_is_kept_per_binary() {
        let real = Criu::new()
            .located()
            .expect("criu is installed (make test does it)");
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("criu-one"), dir.path().join("criu-two"));
        std::os::unix::fs::symlink(&real, &one).unwrap();
        std::os::unix::fs::symlink(&real, &two).unwrap();
        let (one, two) = (Criu::with_binary(one), Criu::with_binary(two));
        let kept = dir.path().join("criu@version");
        let key = one.cache_key().unwrap();
        std::fs::write(&kept, format!("{key}\n9 8 7 kept\n")).unwrap();
        let v = one.version_cached(dir.path()).unwrap();
        assert_eq!(
            (v.major, v.minor, v.sublevel, v.gitid.as_deref()),
            (9, 8, 7, Some("kept"))
        );
        let asked = two.version_cached(dir.path()).unwrap();
        assert_eq!(asked, Criu::with_binary(&real).version().unwrap());
        let text = std::fs::read_to_string(&kept).unwrap();
        assert_eq!(
            text,
            format!("{}\n{}\n", two.cache_key().unwrap(), asked.to_cache())
        );
        // A criu that cannot be run is an error, and nothing is kept for it.
        let none = tempfile::tempdir().unwrap();
        assert!(
            Criu::with_binary("/nonexistent/criu")
                .version_cached(none.path())
                .is_err()
        );
        assert!(!none.path().join("criu@version").exists());
    }
}
