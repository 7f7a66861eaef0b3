//! Faulting in a restored task's memory before CRIU's restorer reads its pages into it
//! (docs/benchmarks.md, item 22).
//!
//! CRIU's restorer reads each task's pages from `pages-<id>.img` with `preadv`, 128 MiB at a
//! time, into fresh anonymous memory, and most of that time is page faults, on one core.
//! The gate (`archive::gate`) holds each of those reads until its range is verified; just
//! before it lets one through, [`Prefault::run`] writes the read's destination pages in the
//! restored task once (`process_vm_writev` of zeros, on two threads), so the restorer's
//! read only copies. Standalone, 1 GiB read that way took a median of 383 ms against 700 ms;
//! in a restore, where the feed shares the cores, 0.71-0.78 s against 0.78-0.92 s.
//!
//! Only pages the read is about to overwrite are written:
//! - only for a read the gate is letting through for the first time, past everything it let
//!   through before (the same hook holds CRIU's hole punch of a range it has just read,
//!   and writing that range again would wipe what was restored: `archive::gate`);
//! - only into plain private anonymous VMAs of `mm-<pid>.img` (no stack, vDSO, shared or
//!   file-backed memory);
//! - only while every such VMA of the task is mapped private, writable and anonymous at its
//!   exact bounds, which is the restorer's doing: CRIU's earlier reads of the same file
//!   (into premapped areas, before the restorer runs) land elsewhere, while CRIU's own
//!   mappings are in place. Anything else, the restorer faults in itself as before.

use crate::archive::criu_images::{self, VMA_ANON_PRIVATE};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const PAGE: u64 = 4096;
/// CRIU's `VMA_*` status bits (criu/include/image.h): a plain private anonymous mapping is
/// `VMA_AREA_REGULAR | VMA_ANON_PRIVATE` (maybe `VMA_AREA_HEAP`) and none of the others.
const VMA_AREA_REGULAR: u32 = 1 << 0;
const VMA_AREA_HEAP: u32 = 1 << 5;
/// Bits ignored when telling a plain one: none of them changes where or how it is mapped.
const VMA_IGNORED: u32 = (1 << 28) | (1 << 29);

/// Set to 0, restore leaves the faulting to CRIU.
pub const ENV: &str = "FERRY_RESTORE_PREFAULT";

/// A run of a pages file's bytes that lands in a private anonymous VMA: its offset in the
/// file, its address in the task, its length, and the VMA's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    file_off: u64,
    vaddr: u64,
    len: u64,
    vma: (u64, u64),
}

/// One pages file's runs, and every plain private anonymous VMA of its task.
#[derive(Debug, Default, Clone)]
struct Plan {
    runs: Vec<Run>,
    vmas: Vec<(u64, u64)>,
}

/// What may be written ahead of the restorer, per gated pages file.
#[derive(Debug, Default)]
pub struct Prefault {
    files: Vec<Plan>,
    written: AtomicU64,
}

/// A plain private anonymous mapping (heap included), not a stack, vDSO or anything else
/// CRIU places by its own rules.
fn plain_private(status: u32) -> bool {
    let s = status & !VMA_IGNORED;
    s == VMA_AREA_REGULAR | VMA_ANON_PRIVATE
        || s == VMA_AREA_REGULAR | VMA_AREA_HEAP | VMA_ANON_PRIVATE
}

impl Prefault {
    /// Reads every `pagemap-<pid>.img` and `mm-<pid>.img` in `images` (verified already) and
    /// maps them onto `gated`, the pages files in gate order. None when turned off by
    /// [`ENV`] or when nothing can be planned.
    pub fn plan(images: &Path, gated: &[PathBuf]) -> Option<Prefault> {
        if std::env::var(ENV).as_deref() == Ok("0") {
            return None;
        }
        let mut files = vec![Plan::default(); gated.len()];
        for task in criu_images::task_memory(images).ok()?.into_iter().flatten() {
            let Some(i) = task.pagemap.pages_file(gated) else {
                continue;
            };
            let private: Vec<(u64, u64)> = task
                .vmas
                .iter()
                .filter(|v| plain_private(v.status))
                .map(|v| (v.start, v.end))
                .collect();
            files[i] = Plan {
                runs: runs(&task.pagemap.entries, &private),
                vmas: private,
            };
        }
        files.iter().any(|f| !f.runs.is_empty()).then(|| Prefault {
            files,
            written: AtomicU64::new(0),
        })
    }

    /// Bytes written ahead of the restorer so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Before a read of `count` bytes at `offset` of gated file `file` by `pid` is let
    /// through: writes its destination pages once, when they are the restorer's (module
    /// doc); does nothing otherwise.
    pub fn run(&self, pid: i32, file: usize, offset: u64, count: u64) {
        let Some(plan) = self.files.get(file) else {
            return;
        };
        let dest = destinations(&plan.runs, offset, count);
        if dest.is_empty() {
            return;
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        // Every such VMA of the task in place, at its exact bounds: the restorer has mapped
        // them all and not yet read this range (earlier, CRIU's own mappings are there).
        if !plan.vmas.iter().all(|v| restorer_mapping(&maps, *v)) {
            return;
        }
        let total: u64 = dest.iter().map(|d| d.len).sum();
        let t = std::time::Instant::now();
        // Two halves on two threads; each writes zeros from a small buffer that stays in cache.
        let half = split(&dest, total / 2);
        let done = AtomicU64::new(0);
        std::thread::scope(|s| {
            for part in [&half.0, &half.1] {
                let done = &done;
                s.spawn(move || done.fetch_add(write_zeros(pid, part), Ordering::Relaxed));
            }
        });
        self.written
            .fetch_add(done.load(Ordering::Relaxed), Ordering::Relaxed);
        tracing::debug!(
            pid,
            file,
            offset,
            total,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "prefaulted"
        );
    }
}

/// The runs of `entries` (pagemap order) whose pages are in the file, cut to the private
/// anonymous VMAs `private`, with their file offsets.
fn runs(entries: &[criu_images::PagemapEntry], private: &[(u64, u64)]) -> Vec<Run> {
    let mut out = vec![];
    for (file_off, e) in criu_images::in_pages_file(entries) {
        let (start, len) = (e.vaddr, e.bytes());
        for &(vs, ve) in private {
            let (a, b) = (start.max(vs), (start + len).min(ve));
            if a < b {
                out.push(Run {
                    file_off: file_off + (a - start),
                    vaddr: a,
                    len: b - a,
                    vma: (vs, ve),
                });
            }
        }
    }
    out
}

/// The parts of `runs` that file bytes `[offset, offset + count)` land in.
fn destinations(runs: &[Run], offset: u64, count: u64) -> Vec<Run> {
    let end = offset.saturating_add(count);
    runs.iter()
        .filter_map(|r| {
            let (a, b) = (offset.max(r.file_off), end.min(r.file_off + r.len));
            (a < b).then(|| Run {
                file_off: a,
                vaddr: r.vaddr + (a - r.file_off),
                len: b - a,
                vma: r.vma,
            })
        })
        .collect()
}

/// Whether `maps` (a task's /proc/<pid>/maps) has a private, writable, anonymous mapping
/// with exactly the bounds `vma`.
fn restorer_mapping(maps: &str, vma: (u64, u64)) -> bool {
    maps.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return false;
        };
        let path = f.next().unwrap_or("");
        let Some((a, b)) = range.split_once('-') else {
            return false;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            return false;
        };
        (a, b) == vma
            && perms.as_bytes().get(1) == Some(&b'w')
            && perms.as_bytes().get(3) == Some(&b'p')
            && inode == "0"
            && matches!(path, "" | "[heap]" | "[stack]")
    })
}

/// `dest` cut in two at about `at` bytes.
fn split(dest: &[Run], at: u64) -> (Vec<Run>, Vec<Run>) {
    let (mut first, mut second) = (vec![], vec![]);
    let mut seen = 0u64;
    for d in dest {
        if seen >= at {
            second.push(*d);
        } else if seen + d.len <= at {
            first.push(*d);
        } else {
            let cut = (at - seen) / PAGE * PAGE;
            first.push(Run { len: cut, ..*d });
            second.push(Run {
                file_off: d.file_off + cut,
                vaddr: d.vaddr + cut,
                len: d.len - cut,
                vma: d.vma,
            });
        }
        seen += d.len;
    }
    first.retain(|d| d.len > 0);
    (first, second)
}

/// Writes zeros over `dest` in the memory of `pid`; the bytes written.
fn write_zeros(pid: i32, dest: &[Run]) -> u64 {
    static ZEROS: [u8; 256 << 10] = [0; 256 << 10];
    let mut written = 0;
    for d in dest {
        let mut at = 0u64;
        while at < d.len {
            let n = (d.len - at).min(ZEROS.len() as u64) as usize;
            let local = libc::iovec {
                iov_base: ZEROS.as_ptr() as *mut libc::c_void,
                iov_len: n,
            };
            let remote = libc::iovec {
                iov_base: (d.vaddr + at) as *mut libc::c_void,
                iov_len: n,
            };
            // SAFETY: reads our static zeros; writes only the other task's memory.
            let r = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
            if r <= 0 {
                // Gone, or not writable after all: the restorer faults it in itself.
                return written;
            }
            written += r as u64;
            at += r as u64;
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use criu_images::PagemapEntry;

    fn entry(vaddr: u64, pages: u32, present: bool) -> PagemapEntry {
        PagemapEntry {
            vaddr,
            nr_pages: pages,
            in_parent: false,
            flags: Some(if present { 4 } else { 2 }),
        }
    }

    #[test]
    fn runs_follow_the_file_and_keep_to_private_anonymous_vmas() {
        // Pages file: 2 pages at 0x1000 (in a file mapping, not ours), 4 lazy pages (not in
        // the file), then 8 pages at 0x10000 of which the VMA [0x10000, 0x14000) is private
        // anonymous and the rest shared.
        let entries = [
            entry(0x1000, 2, true),
            entry(0x8000, 4, false),
            entry(0x10000, 8, true),
        ];
        let private = [(0x10000, 0x14000)];
        let r = runs(&entries, &private);
        assert_eq!(
            r,
            [Run {
                file_off: 2 * PAGE,
                vaddr: 0x10000,
                len: 4 * PAGE,
                vma: (0x10000, 0x14000),
            }]
        );
        // A read of the file's bytes 3-4 pages: the last page of the first run is not ours,
        // the first page of the private one is... bytes [3p, 5p) = vaddr 0x11000..0x13000.
        let d = destinations(&r, 3 * PAGE, 2 * PAGE);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].vaddr, d[0].len), (0x11000, 2 * PAGE));
        assert!(destinations(&r, 0, 2 * PAGE).is_empty());
        let (a, b) = split(&r, 3 * PAGE);
        assert_eq!((a[0].vaddr, a[0].len), (0x10000, 3 * PAGE));
        assert_eq!((b[0].vaddr, b[0].len), (0x13000, PAGE));
    }

    #[test]
    fn only_plain_private_anonymous_vmas_are_planned() {
        assert!(plain_private(VMA_AREA_REGULAR | VMA_ANON_PRIVATE));
        assert!(plain_private(
            VMA_AREA_REGULAR | VMA_AREA_HEAP | VMA_ANON_PRIVATE
        ));
        assert!(plain_private(
            VMA_AREA_REGULAR | VMA_ANON_PRIVATE | (1 << 29)
        ));
        // Stack, vDSO, shared, file-backed, premapped.
        assert!(!plain_private(
            VMA_AREA_REGULAR | (1 << 1) | VMA_ANON_PRIVATE
        ));
        assert!(!plain_private(
            VMA_AREA_REGULAR | (1 << 3) | VMA_ANON_PRIVATE
        ));
        assert!(!plain_private(VMA_AREA_REGULAR | (1 << 8)));
        assert!(!plain_private(VMA_AREA_REGULAR | (1 << 6)));
        assert!(!plain_private(
            VMA_AREA_REGULAR | VMA_ANON_PRIVATE | (1 << 30)
        ));
    }

    #[test]
    fn only_an_exact_private_writable_anonymous_mapping_counts() {
        let maps = "\
00010000-00014000 rw-p 00000000 00:00 0 \n\
00020000-00024000 rw-s 00000000 00:01 77 /dev/zero (deleted)\n\
00030000-00034000 r--p 00000000 00:00 0 \n\
00040000-00048000 rw-p 00000000 fe:00 1234 /usr/lib/libc.so.6\n\
7ffd0000-7ffd4000 rw-p 00000000 00:00 0 [stack]\n";
        assert!(restorer_mapping(maps, (0x10000, 0x14000)));
        assert!(restorer_mapping(maps, (0x7ffd0000, 0x7ffd4000)));
        // Other bounds (an earlier stage of the restore), shared, read-only, file-backed.
        assert!(!restorer_mapping(maps, (0x10000, 0x12000)));
        assert!(!restorer_mapping(maps, (0x20000, 0x24000)));
        assert!(!restorer_mapping(maps, (0x30000, 0x34000)));
        assert!(!restorer_mapping(maps, (0x40000, 0x48000)));
    }

    #[test]
    fn writes_land_only_where_asked() {
        // Our own memory stands in for the restored task's.
        let mut buf = vec![0xaau8; 4 * PAGE as usize];
        let base = buf.as_mut_ptr() as u64;
        let d = [Run {
            file_off: 0,
            vaddr: base + PAGE,
            len: 2 * PAGE,
            vma: (0, 0),
        }];
        let n = write_zeros(std::process::id() as i32, &d);
        assert_eq!(n, 2 * PAGE);
        let p = PAGE as usize;
        assert!(buf[..p].iter().all(|&b| b == 0xaa));
        assert!(buf[p..3 * p].iter().all(|&b| b == 0));
        assert!(buf[3 * p..].iter().all(|&b| b == 0xaa));
    }
}
