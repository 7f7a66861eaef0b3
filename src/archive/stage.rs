//! Where `restore -i` unpacks an archive before CRIU reads it: a private tmpfs when memory
//! allows, a directory on disk otherwise. The unpacked images are scratch data deleted a
//! second after the restore, so they should never be written back to disk (on disk, the
//! unpack competes with the writeback of everything else and takes 3-4x as long).
//!
//! The tmpfs is sized from MemAvailable minus a margin. When the archive holds more than
//! that, a write fails with ENOSPC; the stage then *spills*: it copies what it holds so far
//! into `<dir>.disk`, unmounts the tmpfs, puts the disk directory in its place and goes on
//! writing the current file at the same offset. The input (possibly a pipe) is never read
//! twice. A full disk after that is a real error, reported as such.
//!
//! The reader only calls [`Stage::create_dir`], [`Stage::create`] and [`Stage::write`];
//! [`Stage::remove`] unmounts and deletes everything, and dropping a stage at least unmounts.

use nix::mount::{MntFlags, MsFlags};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Caps the tmpfs at this many bytes (K, M, G suffixes: binary); `0` stages on disk.
/// A knob for tests (forcing the spill path) and for operators.
pub const TMPFS_BYTES_ENV: &str = "FERRY_STAGE_TMPFS_BYTES";
/// Below this much memory to spare a tmpfs is not worth mounting.
const MIN_TMPFS: u64 = 64 << 20;
/// What is left to everything else: max(256 MiB, 5 % of MemTotal).
const MIN_MARGIN: u64 = 256 << 20;

/// Where the staged files are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// Entirely in the private tmpfs.
    Tmpfs,
    /// On disk from the start.
    #[default]
    Disk,
    /// Began in the tmpfs, moved to disk when it filled.
    Spilled,
}

impl Place {
    pub fn as_str(self) -> &'static str {
        match self {
            Place::Tmpfs => "tmpfs",
            Place::Disk => "disk",
            Place::Spilled => "spilled",
        }
    }
}

/// A write that failed, with the path it was for.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.to_path_buf(),
        source,
    }
}

/// What the stage should be, decided from the knob and /proc/meminfo.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Tmpfs { bytes: u64, why: String },
    Disk { why: String },
}

/// `value` of the knob (if set) and the text of /proc/meminfo → tmpfs of how many bytes, or
/// disk. An unparsable knob is an error, so a typo does not silently change the behaviour.
pub fn decide(knob: Option<&str>, meminfo: &str) -> Result<Decision, String> {
    if let Some(v) = knob {
        let bytes = parse_size(v).ok_or_else(|| {
            format!(
                "{TMPFS_BYTES_ENV}={v:?} is not a size: give bytes, optionally with a K, M or G \
                 suffix (0 stages on disk)"
            )
        })?;
        return Ok(if bytes == 0 {
            Decision::Disk {
                why: format!("{TMPFS_BYTES_ENV}=0"),
            }
        } else {
            Decision::Tmpfs {
                bytes,
                why: format!("{TMPFS_BYTES_ENV}={v}"),
            }
        });
    }
    let field = |name: &str| meminfo_bytes(meminfo, name);
    let (Some(total), Some(available)) = (field("MemTotal"), field("MemAvailable")) else {
        return Ok(Decision::Disk {
            why: "/proc/meminfo has no MemTotal or MemAvailable".into(),
        });
    };
    let margin = MIN_MARGIN.max(total / 20);
    let spare = available.saturating_sub(margin);
    Ok(if spare < MIN_TMPFS {
        Decision::Disk {
            why: format!(
                "only {} MiB of memory to spare (MemAvailable {} MiB less a {} MiB margin)",
                spare >> 20,
                available >> 20,
                margin >> 20
            ),
        }
    } else {
        Decision::Tmpfs {
            bytes: spare,
            why: format!(
                "MemAvailable {} MiB less a {} MiB margin",
                available >> 20,
                margin >> 20
            ),
        }
    })
}

/// A `kB` field of /proc/meminfo's text, in bytes.
fn meminfo_bytes(meminfo: &str, name: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// "1048576", "64K", "1M", "2G" (binary multiples).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1 << shift)
}

struct Current {
    rel: PathBuf,
    file: File,
    offset: u64,
    /// Only the length is kept (a sparse file): see [`Stage::without_page_data`].
    sparse: bool,
}

pub struct Stage {
    dir: PathBuf,
    /// Where a spill copies to before it takes `dir`'s place.
    spill: PathBuf,
    place: Place,
    mounted: bool,
    why: String,
    current: Option<Current>,
    /// Memory page files are staged as sparse files of their length.
    sparse_pages: bool,
}

/// A CRIU memory pages image (`checkpoint/pages-<id>.img`): most of an archive's bytes.
fn is_pages(rel: &str) -> bool {
    rel.strip_prefix("checkpoint/pages-")
        .is_some_and(|r| r.ends_with(".img"))
}

impl Stage {
    /// A directory on disk: `dir` is made (it must not exist); `why` is for the log and stats.
    pub fn disk(dir: &Path, why: impl Into<String>) -> Result<Stage, WriteError> {
        std::fs::create_dir(dir).map_err(werr(dir))?;
        let why = why.into();
        tracing::debug!(dir = %dir.display(), why, "staging the archive on disk");
        Ok(Stage::new(dir, Place::Disk, false, why))
    }

    /// A tmpfs of at most `bytes` mounted on `dir` (made here; it must not exist). When the
    /// mount fails (no privilege, say), the stage is `dir` on disk and the log says why.
    pub fn tmpfs(dir: &Path, bytes: u64, why: impl Into<String>) -> Result<Stage, WriteError> {
        std::fs::create_dir(dir).map_err(werr(dir))?;
        let data = format!("size={bytes},mode=0700");
        if let Err(e) = nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(data.as_str()),
        ) {
            let why = format!("mounting a tmpfs on {} failed: {e}", dir.display());
            tracing::debug!(dir = %dir.display(), why, "staging the archive on disk");
            return Ok(Stage::new(dir, Place::Disk, false, why));
        }
        let why = format!("tmpfs of {} MiB ({})", bytes.div_ceil(1 << 20), why.into());
        tracing::debug!(dir = %dir.display(), why, "staging the archive in memory");
        Ok(Stage::new(dir, Place::Tmpfs, true, why))
    }

    /// For `restore -i`: a tmpfs sized from the knob or /proc/meminfo, else disk. Leftovers
    /// of an earlier process with our pid at `dir` are unmounted and removed first. `keep`
    /// (`--keep`, to look at the files afterwards) stages on disk: a tmpfs left mounted would
    /// hold their memory until someone unmounts it.
    pub fn private(dir: &Path, keep: bool) -> Result<Stage, String> {
        clear(dir, &spill_path(dir));
        if keep {
            return Stage::disk(dir, "--keep keeps the unpacked archive")
                .map_err(|e| format!("create {}: {}", e.path.display(), e.source));
        }
        let knob = std::env::var(TMPFS_BYTES_ENV).ok();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let r = match decide(knob.as_deref(), &meminfo)? {
            Decision::Tmpfs { bytes, why } => Stage::tmpfs(dir, bytes, why),
            Decision::Disk { why } => Stage::disk(dir, why),
        };
        r.map_err(|e| format!("create {}: {}", e.path.display(), e.source))
    }

    /// For `restore -i` feeding CRIU the pages as they are verified (archive::feed): on
    /// disk, leftovers of an earlier process with our pid at `dir` removed first.
    pub fn private_on_disk(dir: &Path, why: &str) -> Result<Stage, String> {
        clear(dir, &spill_path(dir));
        Stage::disk(dir, why).map_err(|e| format!("create {}: {}", e.path.display(), e.source))
    }

    fn new(dir: &Path, place: Place, mounted: bool, why: String) -> Stage {
        Stage {
            dir: dir.to_path_buf(),
            spill: spill_path(dir),
            place,
            mounted,
            why,
            current: None,
            sparse_pages: false,
        }
    }

    /// For `inspect`, which reads the images that describe the memory but never the pages
    /// themselves: each `checkpoint/pages-*.img` is staged as a sparse file of its length
    /// (its bytes are still hashed by whoever reads the archive). Inspecting a 50 GiB
    /// archive needed 50 GiB free under the storage directory before.
    pub fn without_page_data(mut self) -> Stage {
        self.sparse_pages = true;
        self
    }

    /// The directory holding the staged files (the same path before and after a spill).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn place(&self) -> Place {
        self.place
    }

    /// Why the files are where they are (for the log and the stats).
    pub fn why(&self) -> &str {
        &self.why
    }

    /// Makes the directory `rel` (relative to the stage).
    pub fn create_dir(&mut self, rel: &str) -> Result<(), WriteError> {
        let path = self.dir.join(rel);
        match std::fs::create_dir(&path) {
            Err(e) if self.full(&e) => {
                self.spill(format!("the tmpfs ran out of inodes at {rel}"))?;
                std::fs::create_dir(&path).map_err(werr(&path))
            }
            r => r.map_err(werr(&path)),
        }
    }

    /// Starts the file `rel` (which must not exist); [`write`](Self::write) appends to it.
    pub fn create(&mut self, rel: &str) -> Result<(), WriteError> {
        self.current = None;
        let path = self.dir.join(rel);
        let file = match create_new(&path) {
            Err(e) if self.full(&e) => {
                self.spill(format!("the tmpfs ran out of inodes at {rel}"))?;
                create_new(&path).map_err(werr(&path))?
            }
            r => r.map_err(werr(&path))?,
        };
        self.current = Some(Current {
            rel: PathBuf::from(rel),
            file,
            offset: 0,
            sparse: self.sparse_pages && is_pages(rel),
        });
        Ok(())
    }

    /// Makes the existing file `rel` current again, to go on at its end (an entry stored in
    /// parts). Before or after a spill, the file is at the same path.
    pub fn append(&mut self, rel: &str) -> Result<(), WriteError> {
        self.current = None;
        let path = self.dir.join(rel);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(werr(&path))?;
        let offset = file.metadata().map_err(werr(&path))?.len();
        self.current = Some(Current {
            rel: PathBuf::from(rel),
            file,
            offset,
            sparse: self.sparse_pages && is_pages(rel),
        });
        Ok(())
    }

    /// Appends `buf` to the current file, spilling to disk if the tmpfs fills.
    pub fn write(&mut self, mut buf: &[u8]) -> Result<(), WriteError> {
        while !buf.is_empty() {
            let Some(cur) = self.current.as_mut() else {
                return Err(WriteError {
                    path: self.dir.clone(),
                    source: io::Error::other("Stage::write before Stage::create"),
                });
            };
            if cur.sparse {
                cur.offset += buf.len() as u64;
                let path = self.dir.join(&cur.rel);
                return cur.file.set_len(cur.offset).map_err(werr(&path));
            }
            match cur.file.write_at(buf, cur.offset) {
                Ok(0) => {
                    let path = self.dir.join(&cur.rel);
                    return Err(werr(&path)(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => {
                    cur.offset += n as u64;
                    buf = &buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.place == Place::Tmpfs && e.raw_os_error() == Some(libc::ENOSPC) => {
                    let (rel, at) = (cur.rel.display().to_string(), cur.offset);
                    self.spill(format!("the tmpfs filled at {rel}, byte {at}"))?;
                }
                Err(e) => {
                    let path = self.dir.join(&cur.rel);
                    return Err(werr(&path)(e));
                }
            }
        }
        Ok(())
    }

    /// ENOSPC from the tmpfs: time to spill. From disk it is a real error.
    fn full(&self, e: &io::Error) -> bool {
        self.place == Place::Tmpfs && e.raw_os_error() == Some(libc::ENOSPC)
    }

    /// Copies everything staged so far to `<dir>.disk`, unmounts the tmpfs and renames the
    /// copy to `dir`; the current file goes on at the same offset in its copy.
    fn spill(&mut self, why: String) -> Result<(), WriteError> {
        tracing::debug!(dir = %self.dir.display(), why, "the stage spills to disk");
        let _ = std::fs::remove_dir_all(&self.spill);
        std::fs::create_dir(&self.spill).map_err(werr(&self.spill))?;
        copy_tree(&self.dir, &self.spill)?;
        if let Some(cur) = self.current.as_mut() {
            let path = self.spill.join(&cur.rel);
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(werr(&path))?;
            let len = file.metadata().map_err(werr(&path))?.len();
            if len != cur.offset {
                return Err(werr(&path)(io::Error::other(format!(
                    "copied {len} bytes of it to disk, {} were staged",
                    cur.offset
                ))));
            }
            // The tmpfs file (already unlinked by copy_tree) is freed as its fd closes.
            cur.file = file;
        }
        nix::mount::umount2(&self.dir, MntFlags::MNT_DETACH)
            .map_err(|e| werr(&self.dir)(io::Error::from(e)))?;
        self.mounted = false;
        // The mount point is an empty directory again: the copy takes its place, so the
        // stage's path stays the same for whoever reads it.
        std::fs::rename(&self.spill, &self.dir).map_err(werr(&self.dir))?;
        self.place = Place::Spilled;
        self.why = format!("{}; {why}, so the rest went to disk", self.why);
        Ok(())
    }

    /// Unmounts the tmpfs (if any) and removes the staged files, also a half-made spill.
    pub fn remove(mut self) -> io::Result<()> {
        self.current = None;
        self.unmount()?;
        clear(&self.dir, &self.spill);
        match std::fs::symlink_metadata(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            _ => Err(io::Error::other(format!(
                "{} could not be removed",
                self.dir.display()
            ))),
        }
    }

    fn unmount(&mut self) -> io::Result<()> {
        if self.mounted {
            nix::mount::umount2(&self.dir, MntFlags::MNT_DETACH).map_err(|e| {
                io::Error::other(format!("unmount the stage {}: {e}", self.dir.display()))
            })?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for Stage {
    /// Never leave the tmpfs mounted (and holding memory), whatever happened.
    fn drop(&mut self) {
        self.current = None;
        if let Err(e) = self.unmount() {
            tracing::warn!("{e}");
        }
    }
}

/// The pid a work entry belongs to: `restore-<pid>`, `restore-<pid>.disk`, `devshm-<pid>`,
/// `checkpoint-<id>-<pid>`, `inspect-<pid>-<nanos>`.
fn owner_pid(name: &str) -> Option<i32> {
    let name = name.strip_suffix(".disk").unwrap_or(name);
    let (kind, rest) = name.split_once('-')?;
    match kind {
        "restore" | "devshm" | "checkpoint" => rest.rsplit('-').next()?.parse().ok(),
        "inspect" => rest.split('-').next()?.parse().ok(),
        _ => None,
    }
}

/// Whether a process `pid` exists. Any process counts, not only a ferry: a ferry installed
/// under another name is still alive, and an entry kept for a reused pid only waits for the
/// next sweep.
fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what ferry processes that no longer run left in `work` (the storage's `work`
/// dir): their stages (unmounted first: a tmpfs left mounted would hold its memory until
/// reboot), /dev/shm staging mounts, checkpoint and inspect scratch. A ferry killed mid-restore
/// cannot clean up after itself; the next checkpoint or restore does. Entries of running
/// processes are left alone. Returns what was removed.
pub fn sweep_stale(work: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(work) else {
        return vec![];
    };
    let mut removed = vec![];
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == std::process::id() as i32 || alive(pid) {
            continue;
        }
        let path = e.path();
        // The stage's own tmpfs, and what a CRIU killed with its ferry mounted below
        // (its cgroup yard): MNT_DETACH for any still busy.
        let _ = crate::sys::mountinfo::unmount_under(&path);
        if std::fs::remove_dir_all(&path).is_ok() {
            tracing::info!(path = %path.display(), pid, "removed what a ferry that is gone left");
            removed.push(path);
        }
    }
    removed
}

fn spill_path(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".disk");
    PathBuf::from(s)
}

/// Unmounts (if mounted) and removes `dir`, and removes `spill`: errors ignored, as for
/// leftovers that may not exist.
fn clear(dir: &Path, spill: &Path) {
    // EINVAL when nothing is mounted there: the usual case.
    let _ = nix::mount::umount2(dir, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(spill);
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// Copies the regular files and directories under `from` into `to` (which exists),
/// unlinking each source file once copied so the tmpfs gives its memory back as it goes.
fn copy_tree(from: &Path, to: &Path) -> Result<(), WriteError> {
    for entry in std::fs::read_dir(from).map_err(werr(from))? {
        let entry = entry.map_err(werr(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(werr(&src))?;
        if kind.is_dir() {
            std::fs::create_dir(&dst).map_err(werr(&dst))?;
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).map_err(werr(&dst))?;
            std::fs::remove_file(&src).map_err(werr(&src))?;
        } else {
            return Err(werr(&src)(io::Error::other(
                "neither a file nor a directory: the stage holds only those",
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24683520 kB\nMemFree:        20000000 kB\n\
                           MemAvailable:   23000000 kB\nBuffers:           1000 kB\n";

    #[test]
    fn the_tmpfs_is_memavailable_less_a_margin() {
        // 5 % of 23.5 GiB is over 256 MiB, so it is the margin.
        let total = 24683520u64 * 1024;
        let avail = 23000000u64 * 1024;
        match decide(None, MEMINFO).unwrap() {
            Decision::Tmpfs { bytes, .. } => assert_eq!(bytes, avail - total / 20),
            d => panic!("{d:?}"),
        }
        // A small machine: the 256 MiB margin leaves less than 64 MiB, so disk.
        let small = "MemTotal: 1000000 kB\nMemAvailable: 300000 kB\n";
        assert!(matches!(
            decide(None, small).unwrap(),
            Decision::Disk { .. }
        ));
        let medium = "MemTotal: 1000000 kB\nMemAvailable: 400000 kB\n";
        assert_eq!(
            decide(None, medium).unwrap(),
            Decision::Tmpfs {
                bytes: 400000 * 1024 - (256 << 20),
                why: "MemAvailable 390 MiB less a 256 MiB margin".into()
            }
        );
        assert!(matches!(decide(None, "").unwrap(), Decision::Disk { .. }));
    }

    #[test]
    fn the_knob_overrides_and_a_typo_is_an_error() {
        assert!(matches!(
            decide(Some("1M"), MEMINFO).unwrap(),
            Decision::Tmpfs { bytes: 1048576, .. }
        ));
        assert!(matches!(
            decide(Some("4096"), MEMINFO).unwrap(),
            Decision::Tmpfs { bytes: 4096, .. }
        ));
        assert!(matches!(
            decide(Some("2g"), MEMINFO).unwrap(),
            Decision::Tmpfs {
                bytes: 2147483648,
                ..
            }
        ));
        assert!(matches!(
            decide(Some("0"), MEMINFO).unwrap(),
            Decision::Disk { .. }
        ));
        for bad in ["", "1MB", "lots", "-1", "99999999999999999999G"] {
            let e = decide(Some(bad), MEMINFO).unwrap_err();
            assert!(e.contains(TMPFS_BYTES_ENV), "{bad}: {e}");
        }
    }

    fn is_mounted(dir: &Path) -> bool {
        let want = dir.to_str().unwrap();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(want))
    }

    /// A 64 KiB tmpfs, three files written through it in odd-sized pieces: the second
    /// overflows it, the stage spills mid-file and every byte arrives, in order, on disk.
    /// Needs root (it mounts); run as root like the integration tests.
    #[test]
    fn a_full_tmpfs_spills_to_disk_mid_file_and_loses_nothing() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test mounts a tmpfs: run it as root"
        );
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("stage");
        let mut stage = Stage::tmpfs(&dir, 64 << 10, "test").unwrap();
        assert_eq!(stage.place(), Place::Tmpfs, "{}", stage.why());
        assert!(is_mounted(&dir));
        let data = |seed: u8, n: usize| -> Vec<u8> {
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect()
        };
        let files = [
            ("small", data(1, 10_000)),
            ("sub/big", data(2, 300_000)),
            ("sub/after", data(3, 70_000)),
        ];
        stage.create_dir("sub").unwrap();
        for (name, bytes) in &files {
            // Each file in two parts, the second through append (as a multi-part entry).
            let (first, second) = bytes.split_at(bytes.len() / 3);
            stage.create(name).unwrap();
            for piece in first.chunks(7919) {
                stage.write(piece).unwrap();
            }
            stage
                .create_dir(&format!("other-{}", name.replace('/', "-")))
                .unwrap();
            stage.append(name).unwrap();
            for piece in second.chunks(7919) {
                stage.write(piece).unwrap();
            }
            if *name == "small" {
                assert_eq!(stage.place(), Place::Tmpfs);
            }
        }
        assert_eq!(stage.place(), Place::Spilled);
        assert!(
            stage.why().contains("filled at sub/big"),
            "the reason should name where it filled: {}",
            stage.why()
        );
        assert!(
            !is_mounted(&dir),
            "the tmpfs is still mounted after a spill"
        );
        assert!(!spill_path(&dir).exists());
        for (name, bytes) in &files {
            assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
        }
        // create refuses a file that exists (a duplicate entry), with the kind intact.
        let e = stage.create("small").unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::AlreadyExists);
        stage.remove().unwrap();
        assert!(!dir.exists());

        // Removed while still in the tmpfs: unmounted and gone too.
        let mut stage = Stage::tmpfs(&dir, 1 << 20, "test").unwrap();
        stage.create("x").unwrap();
        stage.write(b"x").unwrap();
        stage.remove().unwrap();
        assert!(!is_mounted(&dir) && !dir.exists());

        // Dropped (an error path that forgot remove): at least unmounted.
        let stage = Stage::tmpfs(&dir, 1 << 20, "test").unwrap();
        drop(stage);
        assert!(!is_mounted(&dir));
    }

    /// A new directory `at` with a tmpfs of `size` (`"256k"`) on it: a small disk to fill.
    pub(crate) fn small_disk(at: &Path, size: &str) {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test mounts a tmpfs: run it as root"
        );
        std::fs::create_dir(at).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .unwrap();
    }

    /// Once spilled, ENOSPC is the disk's and an error, not another spill. The "disk" here is
    /// a 256 KiB tmpfs the test mounts under the stage's parent.
    #[test]
    fn a_full_disk_after_the_spill_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk");
        small_disk(&disk, "256k");
        let dir = disk.join("stage");
        let r = (|| {
            let mut stage = Stage::tmpfs(&dir, 64 << 10, "test")?;
            stage.create("pages")?;
            for _ in 0..64 {
                stage.write(&[7u8; 16 << 10])?;
            }
            Ok::<_, WriteError>(stage)
        })();
        let e = r
            .err()
            .expect("1 MiB fitted in 64 KiB of tmpfs and 256 KiB of disk");
        assert_eq!(
            e.source.raw_os_error(),
            Some(libc::ENOSPC),
            "{:?}",
            e.source
        );
        assert!(!is_mounted(&dir), "the stage's tmpfs is still mounted");
        let _ = std::fs::remove_dir_all(&dir);
        nix::mount::umount2(&disk, MntFlags::MNT_DETACH).unwrap();
    }

    #[test]
    fn without_page_data_keeps_the_pages_length_and_no_bytes() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let mut st = Stage::disk(&d.path().join("s"), "test")
            .unwrap()
            .without_page_data();
        st.create_dir("checkpoint").unwrap();
        let mib = vec![0x5au8; 1 << 20];
        st.create("checkpoint/pages-1.img").unwrap();
        st.write(&mib).unwrap();
        st.create("checkpoint/pagemap-1.img").unwrap();
        st.write(b"pagemap").unwrap();
        // A second part of the pages goes on at its end.
        st.append("checkpoint/pages-1.img").unwrap();
        st.write(&mib).unwrap();
        st.write(&mib[..4096]).unwrap();
        let pages = st.dir().join("checkpoint/pages-1.img");
        let meta = std::fs::metadata(&pages).unwrap();
        assert_eq!(meta.len(), (2 << 20) + 4096);
        assert_eq!(meta.blocks(), 0, "the page data was written");
        assert_eq!(
            std::fs::read(st.dir().join("checkpoint/pagemap-1.img")).unwrap(),
            b"pagemap"
        );
        // Without it, the pages are written like anything else.
        let mut full = Stage::disk(&d.path().join("f"), "test").unwrap();
        full.create_dir("checkpoint").unwrap();
        full.create("checkpoint/pages-1.img").unwrap();
        full.write(&mib).unwrap();
        let bytes = std::fs::read(full.dir().join("checkpoint/pages-1.img")).unwrap();
        assert_eq!(bytes, mib);
    }

    #[test]
    fn writing_without_create_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let mut stage = Stage::disk(&d.path().join("s"), "test").unwrap();
        assert!(stage.write(b"x").is_err());
        stage.create("f").unwrap();
        stage.write(b"abc").unwrap();
        assert_eq!(std::fs::read(d.path().join("s/f")).unwrap(), b"abc");
    }

    #[test]
    fn work_entries_name_their_owner() {
        assert_eq!(owner_pid("restore-123"), Some(123));
        assert_eq!(owner_pid("restore-123.disk"), Some(123));
        assert_eq!(owner_pid("devshm-7"), Some(7));
        assert_eq!(owner_pid("checkpoint-my-app-2-99"), Some(99));
        assert_eq!(owner_pid("inspect-42-17a3f"), Some(42));
        assert_eq!(owner_pid("inspect-42-1234"), Some(42));
        for other in ["tmp", "restore", "restore-x", "images-12", "checkpoint-abc"] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn a_stale_mounted_stage_is_swept_and_a_live_one_kept() {
        let d = tempfile::tempdir().unwrap();
        // pid_max is at most 4194304: this pid runs nothing.
        let stale = d.path().join("restore-4194305");
        std::fs::create_dir(&stale).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &stale,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64k"),
        )
        .unwrap();
        std::fs::write(stale.join("pages-1.img"), b"held").unwrap();
        std::fs::create_dir(d.path().join("restore-4194305.disk")).unwrap();
        // Ours (this test process) and an entry that is not ferry's stay.
        let ours = d.path().join(format!("restore-{}", std::process::id()));
        std::fs::create_dir(&ours).unwrap();
        std::fs::create_dir(d.path().join("other")).unwrap();
        let mut removed = sweep_stale(d.path());
        removed.sort();
        assert_eq!(
            removed,
            vec![stale.clone(), d.path().join("restore-4194305.disk")]
        );
        assert!(!stale.exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(stale.to_str().unwrap()), "{mounts}");
        assert!(ours.exists() && d.path().join("other").exists());
    }
}
