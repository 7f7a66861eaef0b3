//! "Nothing is lost" (issue 4): a full disk gives a clear error and loses nothing.
//! A checkpoint whose archive does not fit on its disk fails saying the disk is full, leaves
//! no partial archive and leaves the container running and counting. A restore onto a full
//! storage fails saying the disk is full, leaves no container, mount, cgroup, process or work
//! file, and leaves the archive as it was (a restore with room then succeeds from the same
//! file). The archive is unpacked into memory, so "full" means the container's rootfs cannot
//! be written; with the in-memory stage capped, the stage's spill to disk fills it instead.
//! The small disks are tmpfs mounts made by the test (tmpfs cannot gate a fed restore's
//! pages, so those restores verify first). A small ext4 shows that a storage too small to
//! stage fed pages falls back to verifying first, in memory.

#[path = "common/ckpt.rs"]
mod ckpt;
mod common;

use ckpt::*;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SEED: &str = "0xf011";
/// MiB of patterned (incompressible) memory the container holds: more than the small disks.
const MEM_MIB: &str = "32";
const MIB: u64 = 1 << 20;

/// A tmpfs of a given size mounted on a temp dir; unmounted (then removed) when dropped.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("ferry-small-disk-")
            .tempdir()
            .unwrap();
        let path = dir.path().to_path_buf();
        mount_cmd(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
            path.to_str().unwrap(),
        ]);
        Tmpfs {
            dir: Some(dir),
            path,
        }
    }

    /// A small ext4 (a sparse image file, loop-mounted) instead: a filesystem on which the
    /// kernel can gate a fed restore's pages (archive::gate), unlike tmpfs.
    fn ext4(mib: u64) -> Tmpfs {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("ferry-small-ext4-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("fs.img");
        fs::File::create(&image)
            .unwrap()
            .set_len(mib * MIB)
            .unwrap();
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .output()
            .expect("run mkfs.ext4 (e2fsprogs)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.path().join("mnt");
        fs::create_dir(&path).unwrap();
        mount_cmd(&[
            "-o",
            "loop",
            image.to_str().unwrap(),
            path.to_str().unwrap(),
        ]);
        Tmpfs {
            dir: Some(dir),
            path,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Resizes the tmpfs to `bytes` (rounded up to whole pages by the kernel).
    fn resize(&self, bytes: u64) {
        mount_cmd(&[
            "-o",
            &format!("remount,size={bytes}"),
            self.path.to_str().unwrap(),
        ]);
    }

    /// (bytes used, bytes free) as statvfs reports them.
    fn usage(&self) -> (u64, u64) {
        let c = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string and a zeroed out-parameter.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs {:?}", self.path);
        let bs = st.f_frsize as u64;
        (
            (st.f_blocks as u64 - st.f_bfree as u64) * bs,
            st.f_bavail as u64 * bs,
        )
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = self.path.to_str().unwrap();
        let ok = Command::new("umount")
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a broken runtime left a mount on it): detach it from the tree.
            let lazy = Command::new("umount")
                .args(["-l", p])
                .status()
                .is_ok_and(|s| s.success());
            if !lazy {
                // Never let TempDir remove files through a mount that is still there.
                if let Some(d) = self.dir.take() {
                    eprintln!("leaving {:?}: it could not be unmounted", d.keep());
                }
            }
        }
    }
}

fn mount_cmd(args: &[&str]) {
    let out = Command::new("mount")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run mount ({e}); install util-linux"));
    assert!(
        out.status.success(),
        "`mount {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {dir:?}: {e}"))
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// A host with image `bb` (from `image_dir`) and a memhold container holding MEM_MIB MiB.
fn counting_container(host: &Host, image_dir: &Path, prefix: &str) -> (String, MemHold) {
    host.import_dir("bb", image_dir);
    let id = host.id(prefix);
    host.run_image("bb", &id, &["/bin/memhold", MEM_MIB, SEED, "/tmp"]);
    let mem = MemHold::at(host.rootfs(&id).join("tmp"));
    mem.wait_count_above(2);
    (id, mem)
}

#[test]
fn a_checkpoint_to_a_full_disk_says_so_and_the_container_runs_on() {
    let host = Host::new();
    let image = host.ferry.scratch().join("image-rootfs");
    image_rootfs(&image);
    let (id, mem) = counting_container(&host, &image, "fullck");
    let (run_id, _) = mem.count().unwrap();
    let checksum = mem.checksum().unwrap();

    let small = Tmpfs::mount("8m");
    let archive = small.path().join("x.tar");
    let out = host.run(&[
        "checkpoint",
        &id,
        "-e",
        archive.to_str().unwrap(),
        "--compress",
        "none",
    ]);
    eprintln!(
        "checkpoint onto an 8 MiB disk: exit {:?}\nstderr: {}",
        out.code, out.stderr
    );
    let out = out.fails();
    assert!(
        out.stderr.contains("the disk is full"),
        "the error should say the disk is full; it said:\n{}",
        out.stderr
    );
    // Nothing partial left on the small disk, and the disk has its room back.
    let left = entries(small.path());
    assert!(left.is_empty(), "the failed checkpoint left {left:?}");
    // CRIU's images in the storage's work dir are gone too.
    let work = host.storage.join("work");
    if work.exists() {
        let left = entries(&work);
        assert!(
            left.is_empty(),
            "the failed checkpoint left work files {left:?}"
        );
    }

    // The container runs on, thawed, the same process (same run id, same memory), counting.
    assert_eq!(
        host.ferry.status(&id).as_deref(),
        Some("running"),
        "the container should still be running after the failed checkpoint"
    );
    let (_, c) = mem.count().unwrap();
    let (run_after, _) = mem.wait_count_above(c + 3);
    assert_eq!(
        run_after, run_id,
        "the container restarted instead of running on"
    );
    assert_eq!(mem.checksum().unwrap(), checksum);
    assert!(host.ids().contains(&id));
}

/// Every regular file and symlink under `dir` with its size: what a failed restore must
/// leave exactly as it was (empty directories are checked by assert_restore_left_nothing).
fn files(dir: &Path) -> std::collections::BTreeMap<PathBuf, u64> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in entries(&d) {
            let m = fs::symlink_metadata(&e).unwrap();
            if m.is_dir() {
                todo.push(e);
            } else {
                out.insert(e, m.len());
            }
        }
    }
    out
}

#[test]
fn a_restore_onto_a_full_disk_says_so_and_leaves_nothing() {
    // Source host: a counting container checkpointed into an archive on the ordinary disk.
    let a = Host::new();
    let image = a.ferry.scratch().join("image-rootfs");
    image_rootfs(&image);
    let (src, _mem) = counting_container(&a, &image, "fullsrc");
    let archive = a.ferry.scratch().join("full.tar");
    a.run(&[
        "checkpoint",
        &src,
        "-e",
        archive.to_str().unwrap(),
        "--compress",
        "none",
    ])
    .ok();
    let archive_size = fs::metadata(&archive).unwrap().len();

    // Target host: its storage is a small tmpfs (made before the Host, dropped after it, so
    // the Host's cleanup runs while the storage is still mounted).
    let small = Tmpfs::mount("128m");
    let storage = small.path().join("storage");
    fs::create_dir(&storage).unwrap();
    let b = Host::on_storage(storage.clone());
    b.import_dir("bb", &image);
    b.run(&["trust", "add", &a.fingerprint()]).ok();
    b.fingerprint();
    let (used, _) = small.usage();
    let before = file_digest(&archive);
    let files_before = files(&storage);

    // Two ways the storage is too full. (1) Completely full, the archive unpacked into
    // memory as usual: the container's rootfs (its overlay upper dir, the archive's changes
    // applied to it, its config.json) cannot be written. (2) 8 MiB free and the in-memory
    // stage capped at 1 MiB: the stage spills to the storage, which cannot hold the
    // archive's images. Either way: the disk is full, and nothing is left.
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, u64, Env, &str); 2] = [
        ("rootfs", 0, &[], "staging the archive in memory"),
        (
            "spill",
            8 * MIB,
            &[("FERRY_STAGE_TMPFS_BYTES", "1M")],
            "spills to disk",
        ),
    ];
    for (case, room, env, logged) in cases {
        small.resize(used + room);
        let (_, free) = small.usage();
        assert!(
            free <= room && free < archive_size,
            "{case}: the archive ({archive_size} bytes) should not fit in the {free} bytes free"
        );
        eprintln!("{case}: archive {archive_size} bytes; storage tmpfs: {used} used, {free} free");
        let procs = tagged_processes(&b.ferry.tag);
        let name = b.id(&format!("full{case}"));
        let out = b.run_quiet_env(
            env,
            &[
                "--debug",
                "restore",
                "-i",
                archive.to_str().unwrap(),
                "--name",
                &name,
                "-d",
            ],
        );
        eprintln!(
            "{case}: restore onto a full storage: exit {:?}\nlog/stderr: {}",
            out.code, out.stderr
        );
        assert!(
            !out.success(),
            "{case}: the restore should fail: the storage is full"
        );
        assert!(
            out.stderr.contains("the disk is full"),
            "{case}: the error should say the disk is full; it said:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(logged),
            "{case}: the log should say {logged:?}; it said:\n{}",
            out.stderr
        );
        assert_restore_left_nothing(&b, &name, &procs);
        assert_eq!(
            file_digest(&archive),
            before,
            "{case}: the failed restore changed the archive"
        );
        assert_eq!(
            files(&storage),
            files_before,
            "{case}: the failed restore changed the files in the storage"
        );
        let (used_after, _) = small.usage();
        assert!(
            used_after <= used,
            "{case}: the failed restore left {} bytes on the storage",
            used_after.saturating_sub(used)
        );
    }

    // With room, the same archive restores: it was not consumed, and the error was the disk.
    small.resize(used + archive_size * 3 + 64 * MIB);
    let name2 = b.id("fullok");
    b.run_quiet(&[
        "restore",
        "-i",
        archive.to_str().unwrap(),
        "--name",
        &name2,
        "-d",
    ])
    .ok();
    let mem2 = MemHold::at(b.rootfs(&name2).join("tmp"));
    let (_, c) = mem2.count().expect("the restored container's count");
    mem2.wait_count_above(c + 2);
    b.run(&["delete", "-f", &name2]).ok();
    assert_deleted(&b, &name2);
}

/// A fed restore (archive::feed) stages the pages on disk, and may run ahead of CRIU by all
/// of them. On a storage too small for that it verifies the archive first, in memory, as
/// it did before, and the restore succeeds.
#[test]
fn a_storage_too_small_for_fed_pages_verifies_first_in_memory_and_restores() {
    let a = Host::new();
    let image = a.ferry.scratch().join("image-rootfs");
    image_rootfs(&image);
    let (src, mem) = counting_container(&a, &image, "smallfed");
    let (runid, before) = mem.wait_count_above(2);
    let archive = a.ferry.scratch().join("smallfed.tar");
    let ar = archive.to_str().unwrap();
    a.run(&["checkpoint", &src, "-e", ar, "--compress", "none"])
        .ok();

    let small = Tmpfs::ext4(128);
    let storage = small.path().join("storage");
    fs::create_dir(&storage).unwrap();
    // Before Linux 6.14 no restore feeds its pages: then it is verified first for that
    // reason, and the log has no word about the disk.
    let gated = ferry::archive::gate::supported(&storage);
    let b = Host::on_storage(storage.clone());
    b.import_dir("bb", &image);
    b.run(&["trust", "add", &a.fingerprint()]).ok();
    let stats = b.ferry.scratch().join("smallfed.json");
    let out = b
        .run_quiet(&[
            "--debug",
            "restore",
            "-i",
            ar,
            "-d",
            "--stats-file",
            stats.to_str().unwrap(),
        ])
        .ok();
    assert!(
        !gated || out.stderr.contains("too little disk"),
        "the log should say why the pages were not fed:\n{}",
        out.stderr
    );
    let st = read_stats(&stats);
    assert_eq!(st["pages_verified"], "before restoring", "{st}");
    assert_eq!(st["stage"], "tmpfs", "{st}");
    b.ferry.wait_status(&src, "running");
    let mem = MemHold::at(b.rootfs(&src).join("tmp"));
    let (runid2, _) = mem.wait_count_above(before);
    assert_eq!(runid2, runid, "restarted rather than restored");
    b.run(&["delete", "--force", &src]).ok();
    assert_deleted(&b, &src);
}
