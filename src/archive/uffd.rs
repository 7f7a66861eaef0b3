//! The restored tasks' private anonymous memory copied straight in with userfaultfd
//! (`restore -i` of an archive file, uncompressed or zstd read in place; docs/checkpoint.md,
//! "Pages copied in").
//!
//! CRIU marks every page it could leave to a lazy-pages server `PE_LAZY` in the pagemap
//! (private anonymous memory but the page under the stack pointer), in every dump. Asked to
//! restore with `lazy_pages`, it reads only the other pages from `pages-<id>.img`, and each
//! task's restorer registers the lazy ranges with a userfaultfd it hands to the server on
//! `lazy-pages.socket` in the work directory: the pid (in the images) as an `i32`, then the
//! fd (SCM_RIGHTS, with one byte); a negative pid for a zombie, without an fd; and
//! `LAZY_PAGES_RESTORE_FINISHED` once every task is restored, before the `pre-resume`
//! notification (criu/uffd.c).
//!
//! ferry is that server, for its own restore only. A lazy-only part of the archive is read,
//! its digest matched and only then copied into the task (`UFFDIO_COPY`, on every core); the
//! lazy bytes of a part that also holds pages CRIU reads are copied from the stage once the
//! feed has verified and written that part. Nothing is served after the restore: CRIU's
//! `post-restore` notification (every task restored, none traced yet, and a refusal makes
//! CRIU kill them all) waits until every lazy byte is in ([`Running::wait_copied`]), and
//! `pre-resume` until every userfaultfd is closed ([`Running::wait`]), so the tasks resume
//! with all their memory in place and verified, exactly as with CRIU's own reads. Against
//! those reads this saves the stage's copy of the memory, CRIU's read of it and the page
//! faults of that read (docs/benchmarks.md, item 27).
//!
//! Anything that does not go as planned fails the restore before anything restored runs:
//! a digest that does not match, a range the restorer did not register, a task that sent no
//! userfaultfd, or an event (fork, remap, unmap, remove) that moves the memory being filled.
//! A forked tree that shares its memory copy-on-write is left to CRIU's reads, which keep
//! it shared ([`Plan::make`]).

use crate::archive::criu_images::{self, VMA_ANON_PRIVATE};
use crate::archive::pages::PartRecord;
use crate::archive::reader::{Error, check_part};
use crate::archive::sha256x2::{Lane, update_pair};
use crate::progress::Progress;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Set to 0, restore leaves every page to CRIU's reads of the stage.
pub const ENV: &str = "FERRY_RESTORE_UFFD";
/// The socket CRIU connects to, in its work directory (criu/uffd.c).
pub const SOCKET: &str = "lazy-pages.socket";
/// What CRIU sends once every task is restored (`LAZY_PAGES_RESTORE_FINISHED`).
const FINISHED: u32 = 0x5253_5446;
const PE_LAZY: u32 = 1 << 1;
/// How much of a part is copied at once: a whole part (the checkpoint cuts them at 1 MiB).
const CHUNK: usize = 1 << 20;

/// The userfaultfd ABI (linux/userfaultfd.h).
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
/// The events CRIU asks for on the descriptors it hands over (`NEED_UFFD_API_FEATURES`):
/// fork, remap, remove, unmap.
const NEEDED_FEATURES: u64 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6);
const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// Whether this kernel gives root a userfaultfd with the events CRIU needs for a lazy
/// restore.
pub fn supported() -> bool {
    // SAFETY: plain syscall; the fd is owned right after.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return false;
    }
    // SAFETY: a new fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: NEEDED_FEATURES,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API with a struct of its size.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) };
    r == 0 && api.features & NEEDED_FEATURES == NEEDED_FEATURES
}

/// A run of a pages file's bytes that CRIU leaves to the lazy-pages server: its offset in
/// the file, its address in the task, its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    file_off: u64,
    vaddr: u64,
    len: u64,
}

/// A task with lazy memory: its pid in the images, its pages file (index into the gated
/// files) and its lazy runs, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Task {
    pid: i32,
    file: usize,
    runs: Vec<Run>,
}

impl Task {
    /// The lazy pieces of bytes `[offset, offset + size)` of the task's pages file.
    fn pieces(&self, offset: u64, size: u64) -> Vec<Piece> {
        let end = offset + size;
        let first = self.runs.partition_point(|r| r.file_off + r.len <= offset);
        self.runs[first..]
            .iter()
            .take_while(|r| r.file_off < end)
            .map(|r| {
                let (a, b) = (offset.max(r.file_off), end.min(r.file_off + r.len));
                Piece {
                    vaddr: r.vaddr + (a - r.file_off),
                    at: a - offset,
                    len: b - a,
                }
            })
            .collect()
    }
}

/// Which bytes of which pages files are copied in, and into which task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    tasks: Vec<Task>,
}

/// A piece of a part to copy in: where it goes and where it is in the part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    vaddr: u64,
    at: u64,
    len: u64,
}

/// What [`Plan::classify`] says of a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// CRIU reads all of it: the feed's.
    Read,
    /// All of it is copied in: the feed leaves it alone.
    Lazy,
    /// Both: the feed stages it, and its lazy bytes are copied from the stage.
    Both,
}

impl Plan {
    /// Reads every `pagemap-<pid>.img` in `images` (verified already) and maps its lazy runs
    /// onto `gated`, the pages files in gate order. None when turned off by [`ENV`], when
    /// the kernel cannot, or when no page is lazy (images without flags included).
    pub fn make(images: &Path, gated: &[PathBuf]) -> Option<Plan> {
        if std::env::var(ENV).as_deref() == Ok("0") || !supported() {
            return None;
        }
        if in_user_namespace(images) && !unprivileged_userfaultfd() {
            tracing::debug!(
                "the tasks are in a user namespace, where their restorer cannot make a \
                 userfaultfd (vm.unprivileged_userfaultfd is 0): CRIU reads every page"
            );
            return None;
        }
        let mut tasks: Vec<Task> = vec![];
        // Every task's private anonymous mappings and lazy runs, to tell a forked tree
        // (below).
        let mut mappings: Vec<Mappings> = vec![];
        // A task whose images do not read is not planned for: nothing is.
        for task in criu_images::task_memory(images).ok()? {
            let task = task.ok()?;
            let anon = task
                .vmas
                .iter()
                .filter(|v| v.status & VMA_ANON_PRIVATE != 0)
                .map(|v| (v.start, v.end))
                .collect();
            let mut bounds: Vec<(u64, u64)> = task.vmas.iter().map(|v| (v.start, v.end)).collect();
            bounds.sort_unstable();
            let runs = lazy_runs(&task.pagemap.entries, &bounds);
            mappings.push((anon, runs.clone()));
            match task.pagemap.pages_file(gated) {
                Some(file) if !runs.is_empty() => {
                    // One task per pages file; anything else is not what this plans for.
                    if tasks.iter().any(|t| t.file == file) {
                        return None;
                    }
                    tasks.push(Task {
                        pid: task.pid,
                        file,
                        runs,
                    });
                }
                _ => {}
            }
        }
        if shared_lazy_bytes(&mappings) > SHARED_LIMIT {
            tracing::debug!(
                "the tasks share memory copy-on-write (a forked tree): CRIU reads every page"
            );
            return None;
        }
        (!tasks.is_empty()).then_some(Plan { tasks })
    }

    fn task_of(&self, file: usize) -> Option<&Task> {
        self.tasks.iter().find(|t| t.file == file)
    }

    /// The lazy pieces of bytes `[offset, offset + size)` of pages file `file`.
    fn pieces(&self, file: usize, offset: u64, size: u64) -> Vec<Piece> {
        self.task_of(file)
            .map(|t| t.pieces(offset, size))
            .unwrap_or_default()
    }

    /// Who has the bytes `[offset, offset + size)` of pages file `file`.
    pub fn classify(&self, file: usize, offset: u64, size: u64) -> Share {
        let lazy: u64 = self.pieces(file, offset, size).iter().map(|p| p.len).sum();
        match lazy {
            0 => Share::Read,
            n if n == size => Share::Lazy,
            _ => Share::Both,
        }
    }
}

/// A task's private anonymous mappings (bounds) and its lazy runs.
type Mappings = (std::collections::HashSet<(u64, u64)>, Vec<Run>);

/// At most this much lazy memory in mappings that tasks share is copied in (below).
const SHARED_LIMIT: u64 = 16 << 20;

/// The lazy bytes that lie in a private anonymous mapping another task has at the same
/// bounds: most likely a parent and a child it forked, sharing those pages copy-on-write.
/// CRIU restores such pages shared (it compares the child's with the parent's); copied in,
/// every task gets its own copy, and a pre-forked server of many workers could need many
/// times its memory. Over [`SHARED_LIMIT`], the restore is left to CRIU's reads. (Two
/// processes of one static binary share its bss bounds without sharing pages: a few pages.)
fn shared_lazy_bytes(tasks: &[Mappings]) -> u64 {
    let mut total = 0;
    for (i, (vmas, runs)) in tasks.iter().enumerate() {
        for &(start, end) in vmas {
            let shared = tasks
                .iter()
                .enumerate()
                .any(|(j, (other, _))| j != i && other.contains(&(start, end)));
            if !shared {
                continue;
            }
            total += runs
                .iter()
                .map(|r| {
                    let (a, b) = (r.vaddr.max(start), (r.vaddr + r.len).min(end));
                    b.saturating_sub(a)
                })
                .sum::<u64>();
        }
    }
    total
}

/// The lazy runs of a pagemap (in pagemap order, which is the file's), with their offsets
/// in the pages file, each within one of `vmas` (the task's mappings, sorted): one
/// `UFFDIO_COPY` cannot fill two mappings, and CRIU's entries (and the merged ones of
/// criu_images::decode_pagemap) may run from one mapping into the next.
fn lazy_runs(entries: &[criu_images::PagemapEntry], vmas: &[(u64, u64)]) -> Vec<Run> {
    let mut out = vec![];
    for r in merged_lazy_runs(entries) {
        let (mut vaddr, end) = (r.vaddr, r.vaddr + r.len);
        while vaddr < end {
            // The next mapping boundary after vaddr, if inside the run.
            let i = vmas.partition_point(|v| v.1 <= vaddr);
            let cut = match vmas.get(i) {
                Some(&(s, e)) if s <= vaddr => e.min(end),
                Some(&(s, _)) => s.min(end),
                None => end,
            };
            out.push(Run {
                file_off: r.file_off + (vaddr - r.vaddr),
                vaddr,
                len: cut - vaddr,
            });
            vaddr = cut;
        }
    }
    out
}

fn merged_lazy_runs(entries: &[criu_images::PagemapEntry]) -> Vec<Run> {
    let mut out: Vec<Run> = vec![];
    let lazy = criu_images::in_pages_file(entries)
        .filter(|(_, e)| e.flags.is_some_and(|f| f & PE_LAZY != 0));
    for (file_off, e) in lazy {
        match out.last_mut() {
            Some(r) if r.file_off + r.len == file_off && r.vaddr + r.len == e.vaddr => {
                r.len += e.bytes()
            }
            _ => out.push(Run {
                file_off,
                vaddr: e.vaddr,
                len: e.bytes(),
            }),
        }
    }
    out
}

/// One part with lazy bytes, and whether the feed stages it (`Share::Both`: copied from
/// the stage).
#[derive(Clone)]
pub struct Item {
    pub part: crate::archive::pages::Part,
    pub staged: bool,
}

/// The items of one pages file, in archive order, made as they are wanted: a list of every
/// part held from the start would grow with the container's memory.
pub type Items = Box<dyn Iterator<Item = Result<Item, Error>> + Send>;

/// Whether CRIU dumped a user namespace with the tasks (`userns-<id>.img`).
fn in_user_namespace(images: &Path) -> bool {
    std::fs::read_dir(images).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("userns-"))
    })
}

/// Whether a task without CAP_SYS_PTRACE in the host's user namespace may make a
/// userfaultfd.
fn unprivileged_userfaultfd() -> bool {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").is_ok_and(|v| v.trim() == "1")
}

/// CRIU's lazy-pages socket, bound, and what removes it once the copy-in is done.
pub struct Listening {
    listener: UnixListener,
    held: Held,
}

/// The socket's file and a lock on its directory, held until the socket is removed (on
/// drop): in a caller's work directory nobody else would remove it, and the next restore
/// there would find it in the way.
struct Held {
    path: PathBuf,
    _dir: File,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds [`SOCKET`] in `dir`, CRIU's work directory, before CRIU starts. One restore at a
/// time listens in a directory (two restores of one images directory at once: the second
/// is refused with AddrInUse, and its CRIU reads the pages itself); the lock on the
/// directory tells a socket a killed restore left there, which is replaced, from one in
/// use. It is removed when the [`Running`] copy-in made with it ends, or with the
/// [`Listening`] if none was.
pub fn listen(dir: &Path) -> std::io::Result<Listening> {
    let d = File::open(dir)?;
    // SAFETY: flock on our own descriptor.
    if unsafe { libc::flock(d.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another restore listens there",
        ));
    }
    let path = dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    // A socket's path must fit in 108 bytes, and a caller's work directory (podman's is
    // under its container storage) can be longer. CRIU connects to it relative to its work
    // directory; ferry binds it through its own descriptor of that directory.
    let listener = match path.as_os_str().len() < 100 {
        true => UnixListener::bind(&path)?,
        false => UnixListener::bind(format!("/proc/self/fd/{}/{SOCKET}", d.as_raw_fd()))?,
    };
    Ok(Listening {
        listener,
        held: Held { path, _dir: d },
    })
}

/// Whether the feed has verified and written every part it stages (`Some(true)`), failed
/// or was stopped (`Some(false)`), or still runs: what the copy-in waits for before it
/// copies a staged part's lazy bytes.
#[derive(Default)]
pub struct FeedDone {
    state: Mutex<Option<bool>>,
    changed: Condvar,
}

impl FeedDone {
    pub fn set(&self, ok: bool) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(ok);
        self.changed.notify_all();
    }

    /// Waits for the feed; false when it failed or `stop` is set.
    fn wait(&self, stop: &AtomicBool) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(ok) = *s {
                return ok;
            }
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// What the copy-in reads from: the archive, the staged pages files (open for reading
/// before the gate marked them), the feed's progress.
pub struct Sources {
    /// None when every item is staged (an archive verified whole first).
    pub pages: Option<crate::archive::pages::Pages>,
    /// Whether a staged item's bytes are punched out of its file once copied in (not when
    /// the files are someone else's: a runc-style restore's images).
    pub punch: bool,
    pub staged: Vec<(PathBuf, File)>,
    pub feed: Arc<FeedDone>,
    pub progress: Arc<Progress>,
}

/// The userfaultfds CRIU has handed over, and how the conversation stands.
#[derive(Default)]
struct Conversation {
    uffds: HashMap<i32, OwnedFd>,
    /// `LAZY_PAGES_RESTORE_FINISHED` arrived: every task has sent its descriptor.
    finished: bool,
    /// CRIU hung up (or never connected) before finishing.
    gone: bool,
    /// Every task has sent its descriptor and all of them have been read: CRIU is at its
    /// `post-restore` notification ([`Running::wait_copied`]) and the socket was empty.
    all_sent: bool,
}

struct Shared {
    talk: Mutex<Conversation>,
    changed: Condvar,
    failure: Mutex<Option<Error>>,
    failed: AtomicBool,
    stop: Arc<AtomicBool>,
    copied: AtomicU64,
    /// Set by [`Running::wait_copied`]: CRIU has sent every descriptor.
    sent: AtomicBool,
    /// Every copy thread has ended.
    copying_done: AtomicBool,
    /// A copy thread stopped with pages left unfilled, for a reason reported elsewhere (the
    /// feed's failure, the restore stopping).
    incomplete: AtomicBool,
}

impl Shared {
    fn new(stop: Arc<AtomicBool>) -> Shared {
        Shared {
            talk: Mutex::new(Conversation::default()),
            changed: Condvar::new(),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            stop,
            copied: AtomicU64::new(0),
            sent: AtomicBool::new(false),
            copying_done: AtomicBool::new(false),
            incomplete: AtomicBool::new(false),
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|e| e.to_string())
    }

    fn fail(&self, e: Error) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        self.failed.store(true, Ordering::Relaxed);
        self.changed.notify_all();
    }

    /// CRIU is past its post-restore: every restorer has registered its ranges.
    fn all_sent(&self) -> bool {
        self.talk.lock().unwrap_or_else(|e| e.into_inner()).all_sent
    }

    fn quit(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
            || self.stop.load(Ordering::Relaxed)
            || self.incomplete.load(Ordering::Relaxed)
    }
}

/// The copy-in, running beside CRIU's restore.
pub struct Running {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    outcome: Option<Result<(), String>>,
    /// The socket and the lock on its directory ([`listen`]).
    _held: Held,
}

impl Running {
    /// Starts serving `listener` for `plan`: the `items` of each pages file (by its
    /// index in the staged files) are copied in as their tasks' descriptors arrive.
    pub fn start(
        listening: Listening,
        plan: Arc<Plan>,
        items: Vec<(usize, Items)>,
        sources: Sources,
    ) -> Running {
        let Listening { listener, held } = listening;
        let shared = Arc::new(Shared::new(Arc::new(AtomicBool::new(false))));
        let worker = {
            let shared = shared.clone();
            std::thread::spawn(move || serve(listener, &plan, items, &sources, &shared))
        };
        Running {
            shared,
            worker: Some(worker),
            outcome: None,
            _held: held,
        }
    }

    /// Bytes copied into the restored tasks so far.
    pub fn copied(&self) -> u64 {
        self.shared.copied.load(Ordering::Relaxed)
    }

    /// At CRIU's `post-restore` (every task restored and its ranges registered, none
    /// traced yet, and a refusal makes CRIU kill them all): waits until every lazy byte is
    /// verified and in; the first failure, as a message.
    pub fn wait_copied(&mut self) -> Result<(), Error> {
        self.shared.sent.store(true, Ordering::Relaxed);
        let mut t = self.shared.talk.lock().unwrap_or_else(|e| e.into_inner());
        while !self.shared.copying_done.load(Ordering::Relaxed) && self.worker.is_some() {
            t = self
                .shared
                .changed
                .wait_timeout(t, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if self.worker.as_ref().is_some_and(|w| w.is_finished()) {
                break;
            }
        }
        drop(t);
        let failure = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match failure {
            Some(e) => {
                self.outcome = Some(Err(e.to_string()));
                Err(e)
            }
            None if self.shared.incomplete.load(Ordering::Relaxed) => Err(Error::Corrupt(
                "ferry's copy-in stopped before every page was in".into(),
            )),
            None if self.shared.copying_done.load(Ordering::Relaxed) => Ok(()),
            None if self.shared.stop.load(Ordering::Relaxed) => Ok(()),
            None => Err(Error::Corrupt(
                "ferry's copy-in ended before every page was in".into(),
            )),
        }
    }

    /// At CRIU's `pre-resume`: waits until CRIU has said the restore is finished and every
    /// descriptor it sent is closed, so the tasks resume with nothing registered; the first
    /// failure, as a message.
    pub fn wait(&mut self) -> Result<(), String> {
        if let Some(w) = self.worker.take() {
            let _ = w.join();
            if self.outcome.is_none() {
                self.outcome = Some(self.shared.failure().map_or(Ok(()), Err));
            }
        }
        self.outcome.clone().unwrap_or(Ok(()))
    }
}

impl Running {
    /// Once CRIU has ended: a copy-in still waiting for it never will. It stops without a
    /// verdict of its own (CRIU's error says what went wrong); a part it found altered
    /// before that is still reported.
    pub fn abandon(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
            if self.outcome.is_none() {
                self.outcome = Some(self.shared.failure().map_or(Ok(()), Err));
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// The server: accepts CRIU, takes its descriptors and watches them for events while the
/// copy threads fill the tasks. It closes every descriptor when it ends, failed or not: a
/// restorer waiting on a page never filled then goes on (with zeros) to CRIU's pre-resume,
/// where the failed restore kills the tasks before they resume (checkpoint::restore).
fn serve(
    listener: UnixListener,
    plan: &Plan,
    items: Vec<(usize, Items)>,
    src: &Sources,
    shared: &Shared,
) {
    let Some(conn) = accept(&listener, shared) else {
        if !shared.stop.load(Ordering::Relaxed) {
            shared.fail(Error::Corrupt(
                "CRIU never connected to ferry's lazy-pages socket".into(),
            ));
        }
        shared.copying_done.store(true, Ordering::Relaxed);
        return;
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4);
    let queues = Mutex::new(Queues::new(plan, items));
    let running = AtomicUsize::new(threads);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                copy_items(plan, src, shared, &queues);
                if running.fetch_sub(1, Ordering::Relaxed) == 1 {
                    shared.copying_done.store(true, Ordering::Relaxed);
                }
                shared.changed.notify_all();
            });
        }
        let mut reader = Reader::default();
        loop {
            let done = running.load(Ordering::Relaxed) == 0;
            let talk = shared.talk.lock().unwrap_or_else(|e| e.into_inner());
            let (finished, gone) = (talk.finished, talk.gone);
            let fds: Vec<RawFd> = talk.uffds.values().map(|f| f.as_raw_fd()).collect();
            drop(talk);
            // After a failure CRIU is still heard out to the end: a descriptor left unread
            // in the socket would keep its task's ranges registered with nobody to serve them.
            if done && (finished || gone || shared.stop.load(Ordering::Relaxed)) {
                break;
            }
            if shared.quit() {
                // Wake whoever waits on a page that will never come, so the copy threads'
                // tasks and CRIU get on to fail.
                shared
                    .talk
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .uffds
                    .clear();
            }
            let mut polled: Vec<libc::pollfd> = std::iter::once(conn.as_raw_fd())
                .filter(|_| !finished && !gone)
                .chain(fds)
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let sent = shared.sent.load(Ordering::Relaxed);
            // SAFETY: poll over our own array.
            let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as _, 20) };
            let socket_empty = polled
                .first()
                .is_none_or(|p| p.fd != conn.as_raw_fd() || p.revents == 0);
            if sent && socket_empty {
                // Everything CRIU sent before its post-restore has been read.
                let mut t = shared.talk.lock().unwrap_or_else(|e| e.into_inner());
                if !t.all_sent {
                    t.all_sent = true;
                    shared.changed.notify_all();
                }
            }
            if n <= 0 {
                continue;
            }
            for p in &polled {
                if p.revents == 0 {
                    continue;
                }
                if p.fd == conn.as_raw_fd() {
                    if let Err(e) = reader.read(&conn, shared) {
                        shared.talk.lock().unwrap_or_else(|e| e.into_inner()).gone = true;
                        shared.fail(Error::Corrupt(format!(
                            "CRIU's lazy-pages socket: {e} before every task was restored"
                        )));
                    }
                    shared.changed.notify_all();
                } else {
                    events(p.fd, shared);
                }
            }
        }
    });
    let mut t = shared.talk.lock().unwrap_or_else(|e| e.into_inner());
    if !t.finished && !shared.quit() {
        shared.fail(Error::Corrupt(
            "CRIU hung up its lazy-pages socket before every task was restored".into(),
        ));
    }
    t.uffds.clear();
}

/// Waits for CRIU to connect (or for the restore to be stopped).
fn accept(listener: &UnixListener, shared: &Shared) -> Option<UnixStream> {
    listener.set_nonblocking(true).ok()?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).ok()?;
                return Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if shared.quit() {
                    return None;
                }
                let mut p = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll of one fd of ours.
                unsafe { libc::poll(&mut p, 1, 20) };
            }
            Err(e) => {
                shared.fail(Error::Corrupt(format!("lazy-pages socket: {e}")));
                return None;
            }
        }
    }
}

/// CRIU's byte stream on the socket, with the descriptors that came along.
#[derive(Default)]
struct Reader {
    bytes: Vec<u8>,
    fds: std::collections::VecDeque<OwnedFd>,
}

impl Reader {
    /// Reads what is there and takes every complete message out of it.
    fn read(&mut self, conn: &UnixStream, shared: &Shared) -> std::io::Result<()> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        let mut buf = [0u8; 256];
        let mut space = nix::cmsg_space!([RawFd; 16]);
        let (n, fds) = {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let mut fds = vec![];
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: descriptors just received, ours to own.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            (msg.bytes, fds)
        };
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "CRIU hung up",
            ));
        }
        self.bytes.extend_from_slice(&buf[..n]);
        self.fds.extend(fds);
        loop {
            let Some(head) = self.bytes.get(..4) else {
                return Ok(());
            };
            let word = u32::from_ne_bytes(head.try_into().unwrap_or_default());
            let mut t = shared.talk.lock().unwrap_or_else(|e| e.into_inner());
            if word == FINISHED {
                self.bytes.drain(..4);
                t.finished = true;
                continue;
            }
            let pid = word as i32;
            if pid < 0 {
                // A zombie: no memory, no descriptor.
                self.bytes.drain(..4);
                continue;
            }
            // The pid, then one byte carrying the descriptor.
            if self.bytes.len() < 5 || self.fds.is_empty() {
                return Ok(());
            }
            self.bytes.drain(..5);
            let fd = self.fds.pop_front().expect("checked above");
            tracing::debug!(pid, "criu handed over a task's userfaultfd");
            t.uffds.insert(pid, fd);
        }
    }
}

/// Reads the events waiting on a task's userfaultfd: page faults are left to the copy
/// (whoever faulted waits until its page is in), anything else changes the memory being
/// filled and fails the restore.
fn events(fd: RawFd, shared: &Shared) {
    let mut msg = [0u8; 32];
    loop {
        // SAFETY: read into our own buffer.
        let n = unsafe { libc::read(fd, msg.as_mut_ptr().cast(), msg.len()) };
        if n != msg.len() as isize {
            return;
        }
        match msg[0] {
            EVENT_PAGEFAULT => {}
            event => {
                if event == EVENT_FORK {
                    // The child's new descriptor, installed in our table.
                    let child = u32::from_ne_bytes(msg[8..12].try_into().unwrap_or_default());
                    // SAFETY: the kernel gave us this fd.
                    drop(unsafe { OwnedFd::from_raw_fd(child as RawFd) });
                }
                shared.fail(Error::Corrupt(format!(
                    "a restored task's memory changed while ferry copied it in (userfaultfd \
                     event {event:#x}); restore with {ENV}=0"
                )));
            }
        }
    }
}

/// An item to copy and the first of its pieces not yet in (a pair put back part way).
type Work = (Item, usize);

/// What a copy thread takes next: up to two items of one task, or nothing yet.
enum Next {
    Pair(usize, Box<[Option<Work>; 2]>),
    Wait,
    Done,
}

/// The items not yet copied, per task (in archive order): those put back, then those its
/// source has not made yet; and when each task may be tried again after its ranges were
/// found not yet registered.
struct Queues {
    items: Vec<std::collections::VecDeque<Work>>,
    sources: Vec<Option<Items>>,
    not_before: Vec<Instant>,
    turn: usize,
}

impl Queues {
    fn new(plan: &Plan, items: Vec<(usize, Items)>) -> Queues {
        let mut sources: Vec<Option<Items>> = plan.tasks.iter().map(|_| None).collect();
        for (file, source) in items {
            if let Some(t) = plan.tasks.iter().position(|t| t.file == file) {
                sources[t] = Some(source);
            }
        }
        Queues {
            not_before: vec![Instant::now(); sources.len()],
            items: vec![std::collections::VecDeque::new(); sources.len()],
            sources,
            turn: 0,
        }
    }

    /// Makes task `t`'s next two items, if it has them.
    fn refill(&mut self, t: usize) -> Result<(), Error> {
        while self.items[t].len() < 2 {
            let Some(source) = &mut self.sources[t] else {
                return Ok(());
            };
            match source.next() {
                Some(item) => self.items[t].push_back((item?, 0)),
                None => self.sources[t] = None,
            }
        }
        Ok(())
    }

    /// Up to two items of the next task (in turn) whose descriptor has arrived.
    fn next(&mut self, plan: &Plan, shared: &Shared) -> Result<Next, Error> {
        for t in 0..self.items.len() {
            self.refill(t)?;
        }
        if self.items.iter().all(|q| q.is_empty()) {
            return Ok(Next::Done);
        }
        let talk = shared.talk.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for k in 0..self.items.len() {
            let t = (self.turn + k) % self.items.len();
            if self.items[t].is_empty() || self.not_before[t] > now {
                continue;
            }
            let pid = plan.tasks[t].pid;
            if !talk.uffds.contains_key(&pid) {
                if talk.finished || talk.gone || talk.all_sent {
                    return Err(Error::Corrupt(format!(
                        "CRIU restored task {pid} without handing its memory over to ferry's \
                         copy-in (lazy pages); restore with {ENV}=0"
                    )));
                }
                continue;
            }
            self.turn = t + 1;
            let q = &mut self.items[t];
            return Ok(Next::Pair(t, Box::new([q.pop_front(), q.pop_front()])));
        }
        Ok(Next::Wait)
    }

    /// Puts back what is left of a pair, its task's ranges not all registered yet.
    fn again(&mut self, t: usize, left: Vec<Work>) {
        for w in left.into_iter().rev() {
            self.items[t].push_front(w);
        }
        self.not_before[t] = Instant::now() + Duration::from_micros(200);
    }
}

/// How a pair's copy ended short.
enum Short {
    /// A range is not registered yet: what is left of the pair, to try later.
    NotYet(Vec<Work>),
    /// Stopped, or failed elsewhere.
    Stopped,
    Failed(Error),
}

/// The copy threads: each task's items in archive order, two at a time (two lazy-only parts'
/// digests computed side by side), each verified before a byte of it is copied in. A task
/// whose restorer has not registered all its ranges yet is left for another's: a restorer
/// may fault on a lazy page (the kernel writing its rseq area, say) and wait for it before
/// the others get as far as registering theirs, and a restorer registers its ranges one
/// mapping after another.
fn copy_items(plan: &Plan, src: &Sources, shared: &Shared, queues: &Mutex<Queues>) {
    let mut bufs = [vec![0u8; CHUNK], vec![0u8; CHUNK]];
    let mut un = None;
    loop {
        if shared.quit() {
            return;
        }
        if let Err(e) = Error::if_interrupted() {
            return shared.fail(e);
        }
        let next = queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next(plan, shared);
        let (t, pair) = match next {
            Ok(Next::Pair(t, pair)) => (t, *pair),
            Ok(Next::Wait) => {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            Ok(Next::Done) => return,
            Err(e) => return shared.fail(e),
        };
        match copy_pair(&plan.tasks[t], pair, src, shared, &mut bufs, &mut un) {
            Ok(()) => {}
            Err(Short::NotYet(left)) => queues
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .again(t, left),
            Err(Short::Stopped) => {
                // Pages are left unfilled (the feed failed, or the restore is stopping):
                // whoever waits on one must be let go, and nothing may say all is in.
                shared.incomplete.store(true, Ordering::Relaxed);
                shared.changed.notify_all();
                return;
            }
            Err(Short::Failed(e)) => return shared.fail(e),
        }
    }
}

/// One or two items of `task`, each from its first piece not yet in: read, verified (a
/// staged one was, by the feed) and copied in.
fn copy_pair(
    task: &Task,
    pair: [Option<Work>; 2],
    src: &Sources,
    shared: &Shared,
    bufs: &mut [Vec<u8>; 2],
    un: &mut Option<crate::archive::zhead::Unpacker>,
) -> Result<(), Short> {
    let mut lanes = [Lane::new(), Lane::new()];
    let mut n = [0usize; 2];
    let work = [0, 1].map(|k| pair[k].as_ref().map(|(i, from)| (i, *from)));
    for (k, w) in work.iter().enumerate() {
        let Some((item, _)) = w else { continue };
        let size = item.part.size as usize;
        if size > bufs[k].len() {
            bufs[k].resize(size, 0);
        }
        n[k] = size;
        let piece = &mut bufs[k][..size];
        if item.staged {
            if !src.feed.wait(&shared.stop) {
                // The feed failed or was stopped, and says why itself.
                return Err(Short::Stopped);
            }
            let (path, f) = &src.staged[item.part.file];
            f.read_exact_at(piece, item.part.offset).map_err(|e| {
                Short::Failed(Error::Corrupt(format!(
                    "reading back {}: {e}",
                    path.display()
                )))
            })?;
        } else {
            let p = &item.part;
            let Some(pages) = &src.pages else {
                return Err(Short::Failed(Error::Corrupt(format!(
                    "{}: not staged, and no archive to read it from",
                    p.name()
                ))));
            };
            pages
                .read(p.at, p.skip, 0, piece, un, &|| p.name())
                .map_err(Short::Failed)?;
        }
    }
    let hashed = work.map(|w| w.is_some_and(|(i, _)| !i.staged));
    let empty: &[u8] = &[];
    let [a, b] = &mut lanes;
    update_pair(
        a,
        if hashed[0] { &bufs[0][..n[0]] } else { empty },
        b,
        if hashed[1] { &bufs[1][..n[1]] } else { empty },
    );
    for (k, lane) in lanes.into_iter().enumerate() {
        if let (Some((item, _)), true) = (work[k], hashed[k]) {
            let got = PartRecord {
                size: item.part.size,
                sha256: lane.finalize(),
            };
            check_part(&item.part.image, item.part.n, &got, &item.part.record())
                .map_err(Short::Failed)?;
        }
    }
    let uffd = shared
        .talk
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .uffds
        .get(&task.pid)
        .map(|f| f.as_raw_fd())
        .ok_or(Short::Stopped)?;
    for (k, w) in work.iter().enumerate() {
        let Some((item, from)) = *w else { continue };
        let pieces = task.pieces(item.part.offset, item.part.size);
        for (j, p) in pieces.iter().enumerate().skip(from) {
            let bytes = &bufs[k][p.at as usize..(p.at + p.len) as usize];
            match copy_in(uffd, p.vaddr, bytes, shared) {
                Ok(()) => {}
                // Until CRIU's post-restore a restorer may still be registering its ranges
                // (one mapping after another); after it, a range not registered never
                // will be.
                Err(Copy::NotRegistered) if !shared.all_sent() => {
                    let mut left = vec![(item.clone(), j)];
                    if k == 0
                        && let Some(w) = &pair[1]
                    {
                        left.push(w.clone());
                    }
                    return Err(Short::NotYet(left));
                }
                Err(Copy::NotRegistered) => {
                    return Err(Short::Failed(Error::Corrupt(format!(
                        "task {}: {:#x}-{:#x} is not registered for ferry's copy-in; restore \
                         with {ENV}=0",
                        task.pid,
                        p.vaddr,
                        p.vaddr + p.len
                    ))));
                }
                Err(Copy::Stopped) => return Err(Short::Stopped),
                Err(Copy::Failed(e)) => {
                    return Err(Short::Failed(Error::Corrupt(format!(
                        "task {}: {e}",
                        task.pid
                    ))));
                }
            }
            shared.copied.fetch_add(p.len, Ordering::Relaxed);
        }
        if item.staged && src.punch {
            // Nobody reads those bytes of the stage again: give their memory back to the
            // tasks that now hold them (CRIU punches what it reads the same way).
            let (_, f) = &src.staged[item.part.file];
            for p in &pieces {
                punch(f, item.part.offset + p.at, p.len);
            }
        } else if !item.staged {
            src.progress.inc(item.part.size);
        }
    }
    Ok(())
}

/// Punches `len` bytes at `offset` out of a staged file; a failure only leaves them there
/// until the stage goes.
fn punch(f: &File, offset: u64, len: u64) {
    // SAFETY: fallocate on our own file.
    unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
}

/// How a copy ended short.
enum Copy {
    /// Nothing copied: the range is not registered (yet).
    NotRegistered,
    Stopped,
    Failed(String),
}

/// `UFFDIO_COPY` of `bytes` to `vaddr`. A range not registered at its start is said so at
/// once; one registered in part is waited for until CRIU's post-restore.
fn copy_in(uffd: RawFd, vaddr: u64, bytes: &[u8], shared: &Shared) -> Result<(), Copy> {
    let mut done = 0usize;
    while done < bytes.len() {
        let mut c = UffdioCopy {
            dst: vaddr + done as u64,
            src: bytes[done..].as_ptr() as u64,
            len: (bytes.len() - done) as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY from our own buffer into the task the descriptor belongs to.
        let r = unsafe { libc::ioctl(uffd, UFFDIO_COPY, &mut c) };
        if r == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if c.copy > 0 {
            done += c.copy as usize;
            continue;
        }
        if shared.quit() {
            return Err(Copy::Stopped);
        }
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => {}
            Some(libc::ENOENT) if done == 0 => return Err(Copy::NotRegistered),
            // Into a mapping the restorer has not registered yet, past one it has: it
            // registers them in one loop, without waiting on anything, before post-restore.
            Some(libc::ENOENT) if !shared.all_sent() => {
                std::thread::sleep(Duration::from_micros(100));
            }
            _ => {
                return Err(Copy::Failed(format!(
                    "copying {} bytes in at {:#x}: {err}",
                    bytes.len() - done,
                    vaddr + done as u64
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use criu_images::PagemapEntry;

    fn entry(vaddr: u64, nr_pages: u32, flags: u32) -> PagemapEntry {
        PagemapEntry {
            vaddr,
            nr_pages,
            in_parent: false,
            flags: Some(flags),
        }
    }

    #[test]
    fn lazy_runs_follow_the_file_and_skip_what_criu_reads() {
        let e = [
            entry(0x1000, 1, 4), // file-backed: read by CRIU, file 0..4096
            entry(0x5000, 2, 6), // lazy, file 4096..12288
            entry(0x7000, 1, 6), // lazy and adjacent: merged
            entry(0x9000, 1, 1), // in a parent: not in the file
            entry(0xa000, 2, 6), // lazy, file 16384..24576
            entry(0xf000, 1, 4), // the stack page: read
        ];
        let vmas = [
            (0x1000, 0x2000),
            (0x5000, 0x8000),
            (0xa000, 0xc000),
            (0xf000, 0x10000),
        ];
        assert_eq!(
            lazy_runs(&e, &vmas),
            vec![
                Run {
                    file_off: 4096,
                    vaddr: 0x5000,
                    len: 3 * 4096
                },
                Run {
                    file_off: 16384,
                    vaddr: 0xa000,
                    len: 2 * 4096
                },
            ]
        );
        // A run that goes on into the next mapping is cut where the mapping ends: one
        // UFFDIO_COPY fills one mapping.
        let vmas = [
            (0x1000, 0x2000),
            (0x5000, 0x6000),
            (0x6000, 0x8000),
            (0xa000, 0xc000),
        ];
        assert_eq!(
            lazy_runs(&e, &vmas),
            vec![
                Run {
                    file_off: 4096,
                    vaddr: 0x5000,
                    len: 4096
                },
                Run {
                    file_off: 8192,
                    vaddr: 0x6000,
                    len: 2 * 4096
                },
                Run {
                    file_off: 16384,
                    vaddr: 0xa000,
                    len: 2 * 4096
                },
            ]
        );
    }

    #[test]
    fn memory_shared_by_a_forked_tree_is_counted_and_a_lone_mapping_is_not() {
        let run = |vaddr, len| Run {
            file_off: 0,
            vaddr,
            len,
        };
        let parent = (
            [(0x1000, 0x9000), (0x10000, 0x20000)].into_iter().collect(),
            vec![run(0x1000, 0x2000), run(0x10000, 0x4000)],
        );
        // The child shares the first mapping's bounds (and 0x3000 lazy bytes in it); the
        // second is its own.
        let child = (
            [(0x1000, 0x9000), (0x30000, 0x40000)].into_iter().collect(),
            vec![run(0x2000, 0x3000), run(0x30000, 0x10000)],
        );
        assert_eq!(shared_lazy_bytes(&[parent.clone(), child]), 0x2000 + 0x3000);
        assert_eq!(shared_lazy_bytes(&[parent]), 0);
    }

    #[test]
    fn parts_are_classified_by_who_reads_their_bytes() {
        let plan = Plan {
            tasks: vec![Task {
                pid: 1,
                file: 0,
                runs: vec![
                    Run {
                        file_off: 4096,
                        vaddr: 0x5000,
                        len: 3 * 4096,
                    },
                    Run {
                        file_off: 16384,
                        vaddr: 0xa000,
                        len: 2 * 4096,
                    },
                ],
            }],
        };
        assert_eq!(plan.classify(0, 0, 4096), Share::Read);
        assert_eq!(plan.classify(0, 4096, 3 * 4096), Share::Lazy);
        assert_eq!(plan.classify(0, 0, 8192), Share::Both);
        assert_eq!(plan.classify(0, 16384, 8192), Share::Lazy);
        assert_eq!(plan.classify(0, 12288, 12288), Share::Lazy);
        assert_eq!(plan.classify(0, 12288, 16384), Share::Both);
        assert_eq!(plan.classify(1, 4096, 4096), Share::Read);
        assert_eq!(
            plan.pieces(0, 8192, 12288),
            vec![
                Piece {
                    vaddr: 0x6000,
                    at: 0,
                    len: 8192
                },
                Piece {
                    vaddr: 0xa000,
                    at: 8192,
                    len: 4096
                },
            ]
        );
    }

    /// A userfaultfd over one fresh page of our own memory, registered for missing pages:
    /// a stand-in for a restored task's lazy range.
    fn registered_page() -> (OwnedFd, u64) {
        // SAFETY: plain syscall; owned right after.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
        // SAFETY: a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: ioctls with structs of their sizes; a fresh private mapping of our own.
        unsafe {
            assert_eq!(libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api), 0);
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(page, libc::MAP_FAILED);
            // struct uffdio_register: range (start, len), mode, ioctls.
            let mut reg = [page as u64, 4096, 1, 0];
            assert_eq!(
                libc::ioctl(fd.as_raw_fd(), 0xc020_aa00, reg.as_mut_ptr()),
                0
            );
            (fd, page as u64)
        }
    }

    /// The feed fails while a restorer waits on a lazy page whose part it never verified:
    /// the copy-in lets go of the descriptors, so the waiter goes on (to CRIU's post-restore,
    /// where the restore fails) instead of hanging CRIU and ferry with it (seen with SIGTERM
    /// during a restore), and says not every page is in.
    #[test]
    fn a_failed_feed_lets_a_task_waiting_on_a_page_go() {
        assert!(
            supported(),
            "this kernel gives root no userfaultfd with the events CRIU needs"
        );
        let dir = tempfile::tempdir().unwrap();
        let (uffd, page) = registered_page();
        let plan = Plan {
            tasks: vec![Task {
                pid: 7,
                file: 0,
                runs: vec![Run {
                    file_off: 0,
                    vaddr: page,
                    len: 4096,
                }],
            }],
        };
        let stage = dir.path().join("pages-1.img");
        let items = vec![Item {
            part: crate::archive::pages::Part {
                at: 0,
                skip: 0,
                image: "checkpoint/pages-1.img".into(),
                n: 0,
                file: 0,
                offset: 0,
                size: 4096,
                sha256: [0; 32],
            },
            staged: true,
        }];
        let done = Arc::new(FeedDone::default());
        let sources = Sources {
            pages: Some(crate::archive::pages::Pages {
                file: Arc::new(File::create(dir.path().join("archive")).unwrap()),
                head_end: None,
            }),
            punch: true,
            staged: vec![(stage.clone(), File::create(&stage).unwrap())],
            feed: done.clone(),
            progress: Arc::new(Progress::hidden()),
        };
        let listener = listen(dir.path()).unwrap();
        let items: Items = Box::new(items.into_iter().map(Ok));
        let mut running = Running::start(listener, Arc::new(plan), vec![(0, items)], sources);
        // CRIU's part: the task's pid, then its descriptor.
        let criu = UnixStream::connect(dir.path().join(SOCKET)).unwrap();
        use std::io::Write;
        (&criu).write_all(&7i32.to_ne_bytes()).unwrap();
        crate::runtime::console::send_fd(criu.as_raw_fd(), uffd.as_raw_fd(), b"x").unwrap();
        drop(uffd);
        // SAFETY: reads our own mapping; the read waits until the page is filled or the
        // descriptor is gone.
        let waiter =
            std::thread::spawn(move || unsafe { std::ptr::read_volatile(page as *const u8) });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "the page should be waited for");
        done.set(false);
        let t = Instant::now();
        while !waiter.is_finished() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the waiter was never let go"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(waiter.join().unwrap(), 0);
        let err = running.wait_copied().unwrap_err().to_string();
        assert!(err.contains("before every page was in"), "{err}");
    }

    /// A work directory whose socket path would not fit a sockaddr (podman's does not):
    /// the socket is made there all the same, a stale one is replaced, and it is removed.
    #[test]
    fn the_socket_is_made_in_a_work_directory_of_any_length() {
        use std::os::unix::fs::FileTypeExt;
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        assert!(deep.join(SOCKET).as_os_str().len() > 108);
        // Left behind, as by a killed restore (a socket bound there by anyone).
        let held = File::open(&deep).unwrap();
        drop(UnixListener::bind(format!("/proc/self/fd/{}/{SOCKET}", held.as_raw_fd())).unwrap());
        assert!(deep.join(SOCKET).exists());
        // Replaced.
        let l = listen(&deep).unwrap();
        let kind = std::fs::metadata(deep.join(SOCKET)).unwrap().file_type();
        assert!(kind.is_socket());
        // Another restore listening there is not taken over, nor its socket touched.
        let e = listen(&deep).err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        assert!(deep.join(SOCKET).exists());
        drop(l);
        assert!(!deep.join(SOCKET).exists());
    }

    #[test]
    fn criu_messages_are_taken_apart_however_they_arrive() {
        let (a, b) = UnixStream::pair().unwrap();
        let shared = Shared::new(Arc::new(AtomicBool::new(false)));
        let mut r = Reader::default();
        let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
        use std::io::Write;
        // A zombie, then a task's pid in two pieces, its descriptor, and the end.
        (&a).write_all(&(-7i32).to_ne_bytes()).unwrap();
        (&a).write_all(&42i32.to_ne_bytes()[..2]).unwrap();
        r.read(&b, &shared).unwrap();
        assert!(shared.talk.lock().unwrap().uffds.is_empty());
        (&a).write_all(&42i32.to_ne_bytes()[2..]).unwrap();
        r.read(&b, &shared).unwrap();
        crate::runtime::console::send_fd(a.as_raw_fd(), pipe_r.as_raw_fd(), b"x").unwrap();
        (&a).write_all(&FINISHED.to_ne_bytes()).unwrap();
        while !shared.talk.lock().unwrap().finished {
            r.read(&b, &shared).unwrap();
        }
        let t = shared.talk.lock().unwrap();
        assert_eq!(t.uffds.keys().collect::<Vec<_>>(), vec![&42]);
        drop(t);
        drop(a);
        assert!(r.read(&b, &shared).is_err());
    }
}
