//! Holds back CRIU's reads of a staged file until the bytes they ask for have been verified
//! (docs/checkpoint.md, "Pages fed while CRIU restores").
//!
//! The kernel's fanotify pre-content hook (`FAN_PRE_ACCESS`, Linux 6.14; ext4, xfs, btrfs)
//! stops every read of a marked file before it touches the page cache and tells us the range
//! it wants. A read is let through once the range has been written and its digest matched,
//! and refused (EPERM) once the archive is known to be bad. Reads through a file opened
//! before the mark (ours, filling it) are not held. Nothing else reads the stage.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// `FAN_PRE_ACCESS` and the range record of its events (uapi fanotify.h, Linux 6.14);
/// Debian 12's headers and the libc crate predate them.
const FAN_PRE_ACCESS: u64 = 0x0010_0000;
const FAN_EVENT_INFO_TYPE_RANGE: u8 = 6;

/// Whether files in `dir` can be gated: the directory itself takes the mark (in a group
/// closed right away). False on kernels before 6.14, on filesystems without the hook
/// (tmpfs, overlayfs) and without CAP_SYS_ADMIN.
pub fn supported(dir: &Path) -> bool {
    let Ok(g) = group() else {
        return false;
    };
    let ok = mark(&g, dir).is_ok();
    // Closing a group that held a mark waits for the kernel's fsnotify readers (an SRCU
    // grace period, 4-5 ms here): not on the restore's way.
    std::thread::spawn(move || drop(g));
    ok
}

fn group() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd returned is ours.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_PRE_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mark(group: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid fd and NUL-terminated path.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_ADD,
            FAN_PRE_ACCESS,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

struct State {
    /// Per gated file: how many bytes from its start may be read.
    ready: Vec<u64>,
    size: Vec<u64>,
    failed: bool,
    stop: bool,
}

struct Inner {
    /// None when the kernel would not hold the files' reads.
    group: Option<OwnedFd>,
    wake: OwnedFd,
    /// (st_dev, st_ino) of each gated file → its index.
    files: HashMap<(u64, u64), usize>,
    state: Mutex<State>,
    /// Runs just before a held read of a gated file is let through (archive::prefault).
    prefault: Option<Arc<crate::archive::prefault::Prefault>>,
}

/// Gates a set of files (made and opened for writing before this is called).
pub struct Gate {
    inner: Arc<Inner>,
    listener: Option<JoinHandle<()>>,
}

impl Gate {
    /// Marks `files` (path and final size each); from now on other openers' reads wait.
    ///
    /// When the kernel will not hold them after all (say `supported` passed, but this user
    /// has used up its fanotify groups: `fs.fanotify.max_user_groups`, 128 by default, which
    /// a host restoring many containers at once can reach), the gate holds nothing:
    /// [`holds`](Self::holds) says so, and the caller must have every byte in place before
    /// anyone reads.
    pub fn new(files: &[(PathBuf, u64)]) -> io::Result<Gate> {
        Gate::with_prefault(files, None)
    }

    /// [`new`](Self::new), with `prefault` run before each held read of a gated file is let
    /// through.
    pub fn with_prefault(
        files: &[(PathBuf, u64)],
        prefault: Option<Arc<crate::archive::prefault::Prefault>>,
    ) -> io::Result<Gate> {
        let mut ids = HashMap::new();
        for (i, (path, _)) in files.iter().enumerate() {
            let m = std::fs::metadata(path)?;
            ids.insert(
                (
                    std::os::unix::fs::MetadataExt::dev(&m),
                    std::os::unix::fs::MetadataExt::ino(&m),
                ),
                i,
            );
        }
        let group = group().and_then(|g| {
            for (path, _) in files {
                mark(&g, path)?;
            }
            Ok(g)
        });
        let group = match group {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::debug!("fanotify cannot gate the pages ({e}): they are verified first");
                None
            }
        };
        // SAFETY: plain syscall; the fd returned is ours.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        let inner = Arc::new(Inner {
            group,
            // SAFETY: a fresh fd we own.
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
            files: ids,
            state: Mutex::new(State {
                ready: vec![0; files.len()],
                size: files.iter().map(|f| f.1).collect(),
                failed: false,
                stop: false,
            }),
            prefault,
        });
        let listener = match inner.group {
            Some(_) => {
                let i = inner.clone();
                Some(
                    std::thread::Builder::new()
                        .name("ferry-gate".into())
                        .spawn(move || listen(&i))?,
                )
            }
            None => None,
        };
        Ok(Gate { inner, listener })
    }

    /// Bytes written ahead of held reads by the prefault hook.
    pub fn prefaulted(&self) -> u64 {
        self.inner
            .prefault
            .as_ref()
            .map(|p| p.written())
            .unwrap_or(0)
    }

    /// Whether reads of the files are held until ready (see [`new`](Self::new)).
    pub fn holds(&self) -> bool {
        self.listener.is_some()
    }

    /// File `file` may now be read up to `ready` bytes from its start.
    pub fn advance(&self, file: usize, ready: u64) {
        self.update(|s| s.ready[file] = s.ready[file].max(ready));
    }

    /// The archive is bad: reads of what is not ready yet are refused from now on.
    pub fn fail(&self) {
        self.update(|s| s.failed = true);
    }

    /// Every byte of every file is in place and verified, so no read needs holding any
    /// more: the files are unmarked now. The kernel tears marks down after an SRCU grace
    /// period (10-16 ms here); started now, that runs beside the rest of the restore rather
    /// than inside the group's close at the end. Reads already waiting are still answered.
    pub fn release(&self) {
        if let Some(g) = &self.inner.group {
            // SAFETY: plain syscall on our own group; FLUSH takes no path.
            unsafe {
                libc::fanotify_mark(
                    g.as_raw_fd(),
                    libc::FAN_MARK_FLUSH,
                    0,
                    libc::AT_FDCWD,
                    std::ptr::null(),
                )
            };
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.inner.state.lock().unwrap_or_else(|e| e.into_inner()));
        wake(&self.inner.wake);
    }
}

impl Drop for Gate {
    /// Answers whatever still waits (a read of what is ready passes, anything else is
    /// refused) and unmarks the files. Drop it only once no one reads the files any more
    /// (CRIU has exited): the kernel lets through a read that comes after the listener has
    /// stopped, when the group closes.
    fn drop(&mut self) {
        self.update(|s| s.stop = true);
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
    }
}

fn wake(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: an 8-byte write to our eventfd.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
}

/// A read waiting for an answer: the event's fd, the file, the reader and the range.
struct Waiting {
    fd: OwnedFd,
    file: Option<usize>,
    pid: i32,
    offset: u64,
    end: u64,
}

fn listen(inner: &Inner) {
    let Some(group) = &inner.group else {
        return;
    };
    let mut waiting: Vec<Waiting> = vec![];
    // Per file: the end of the furthest range let through so far.
    let mut passed = vec![0u64; inner.files.len()];
    // u64s: event records are 8-byte aligned.
    let mut buf = vec![0u64; 1024];
    loop {
        let mut allowed = vec![];
        let stop = {
            let s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut keep = vec![];
            for w in waiting.drain(..) {
                match decide(&s, &w) {
                    Some(true) => allowed.push(w),
                    Some(false) => respond(group, w.fd.as_raw_fd(), false),
                    None => keep.push(w),
                }
            }
            waiting = keep;
            s.stop
        };
        // Outside the lock: the feed goes on advancing the gate meanwhile.
        for w in allowed {
            if let (Some(p), Some(file)) = (&inner.prefault, w.file) {
                // The hook also holds writes and hole punches, with the same mask: CRIU
                // punches each range right after reading it, and writing it again then
                // would wipe what was just restored. So only a range past everything let
                // through before is prefaulted: the restorer's next read, never a repeat.
                if !stop && w.offset >= passed[file] {
                    p.run(w.pid, file, w.offset, w.end.saturating_sub(w.offset));
                }
                passed[file] = passed[file].max(w.end);
            }
            respond(group, w.fd.as_raw_fd(), true);
        }
        if stop {
            for w in waiting.drain(..) {
                respond(group, w.fd.as_raw_fd(), false);
            }
            return;
        }
        let mut fds = [
            libc::pollfd {
                fd: group.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: inner.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0
            && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted
        {
            // Cannot wait on the group any more. Never leave a read waiting (the kernel lets
            // through whatever waits when the group closes): refuse what is not ready, and
            // look for events every millisecond from now on.
            inner.state.lock().unwrap_or_else(|e| e.into_inner()).failed = true;
            std::thread::sleep(std::time::Duration::from_millis(1));
            fds[0].revents = libc::POLLIN;
        }
        if fds[1].revents != 0 {
            let mut n = [0u8; 8];
            // SAFETY: an 8-byte read from our eventfd.
            unsafe { libc::read(inner.wake.as_raw_fd(), n.as_mut_ptr().cast(), 8) };
        }
        if fds[0].revents != 0 {
            // SAFETY: reading into our buffer, of its size in bytes.
            let n =
                unsafe { libc::read(group.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len() * 8) };
            if n > 0 {
                // SAFETY: the u64 buffer viewed as the n bytes the kernel wrote.
                let bytes =
                    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
                parse(inner, bytes, &mut waiting);
            }
        }
    }
}

/// Some(true) to let the read through, Some(false) to refuse it, None to keep it waiting.
fn decide(s: &State, w: &Waiting) -> Option<bool> {
    let Some(f) = w.file else {
        // Not one of ours, or an open rather than a read: nothing to hold back.
        return Some(true);
    };
    if w.end.min(s.size[f]) <= s.ready[f] {
        Some(true)
    } else if s.failed || s.stop {
        Some(false)
    } else {
        None
    }
}

fn respond(group: &OwnedFd, fd: RawFd, allow: bool) {
    let r = libc::fanotify_response {
        fd,
        response: if allow {
            libc::FAN_ALLOW
        } else {
            libc::FAN_DENY
        },
    };
    // SAFETY: writing one response record to our group.
    unsafe {
        libc::write(
            group.as_raw_fd(),
            (&r as *const libc::fanotify_response).cast(),
            std::mem::size_of::<libc::fanotify_response>(),
        )
    };
}

/// Splits a read of the group into events, each kept waiting with its range.
fn parse(inner: &Inner, mut bytes: &[u8], waiting: &mut Vec<Waiting>) {
    let meta = std::mem::size_of::<libc::fanotify_event_metadata>();
    while bytes.len() >= meta {
        // SAFETY: at least one metadata record's bytes; read unaligned.
        let m: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let len = (m.event_len as usize).clamp(meta, bytes.len());
        let (event, rest) = bytes.split_at(len);
        bytes = rest;
        if m.fd < 0 {
            continue;
        }
        // SAFETY: the kernel opened this fd for us with the event.
        let fd = unsafe { OwnedFd::from_raw_fd(m.fd) };
        let mut end = None;
        let mut start = 0;
        let mut info = &event[(m.metadata_len as usize).min(event.len())..];
        while info.len() >= 4 {
            let kind = info[0];
            let ilen = (u16::from_ne_bytes([info[2], info[3]]) as usize).clamp(4, info.len());
            if kind == FAN_EVENT_INFO_TYPE_RANGE && ilen >= 24 {
                let offset = u64::from_ne_bytes(info[8..16].try_into().unwrap_or_default());
                let count = u64::from_ne_bytes(info[16..24].try_into().unwrap_or_default());
                end = Some(offset.saturating_add(count));
                start = offset;
            }
            info = &info[ilen..];
        }
        let file = end.and_then(|_| {
            let st = nix::sys::stat::fstat(&fd).ok()?;
            inner.files.get(&(st.st_dev, st.st_ino)).copied()
        });
        waiting.push(Waiting {
            fd,
            file,
            pid: m.pid,
            offset: start,
            end: end.unwrap_or(0),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A 3 MiB file to gate (its dir, path and our writer, opened before the mark), and its
    /// gate. Needs root and a filesystem with the hook (the test's temp dir on ext4 here).
    /// None where the kernel cannot gate at all, once the gate has shown it holds nothing:
    /// before Linux 6.14 or on a filesystem without the hook, so that the feed verifies
    /// every page before CRIU starts.
    fn gated() -> Option<(tempfile::TempDir, PathBuf, std::fs::File, Gate)> {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("pages.img");
        let w = std::fs::File::create(&path).unwrap();
        let gate = Gate::new(&[(path.clone(), 3 << 20)]).unwrap();
        if !supported(d.path()) {
            assert!(!gate.holds());
            return None;
        }
        Some((d, path, w, gate))
    }

    #[test]
    fn reads_wait_for_the_range_and_are_refused_after_a_failure() {
        let Some((_d, path, w, gate)) = gated() else {
            return;
        };
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || {
                let f = std::fs::File::open(&path).unwrap();
                let mut b = vec![0u8; 1 << 20];
                f.read_exact_at(&mut b, 1 << 20).unwrap();
                let second = b[0];
                let refused = f.read_exact_at(&mut b, 2 << 20).unwrap_err();
                (second, refused.raw_os_error())
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !reader.is_finished(),
            "a read of unwritten bytes went through"
        );
        w.write_all_at(&vec![1u8; 1 << 20], 0).unwrap();
        gate.advance(0, 1 << 20);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !reader.is_finished(),
            "a read went through before its range was ready"
        );
        w.write_all_at(&vec![2u8; 1 << 20], 1 << 20).unwrap();
        gate.advance(0, 2 << 20);
        std::thread::sleep(std::time::Duration::from_millis(100));
        gate.fail();
        let (second, refused) = reader.join().unwrap();
        assert_eq!(second, 2);
        assert_eq!(refused, Some(libc::EPERM));
    }

    #[test]
    fn released_files_are_unmarked() {
        let Some((_d, path, w, gate)) = gated() else {
            return;
        };
        w.write_all_at(&vec![3u8; 2 << 20], 0).unwrap();
        gate.advance(0, 2 << 20);
        gate.release();
        gate.fail();
        // A gated read past what is ready would now be refused (EPERM); unmarked, it reads
        // what is there: the end of the file.
        let f = std::fs::File::open(&path).unwrap();
        let mut b = vec![0u8; 1 << 20];
        assert_eq!(f.read_at(&mut b, 2 << 20).unwrap(), 0);
        f.read_exact_at(&mut b, 1 << 20).unwrap();
        assert_eq!(b[0], 3);
        drop(gate);
    }
}
