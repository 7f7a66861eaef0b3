//! Checkpoint and restore with real CRIU: a process holding memory with a known checksum and
//! counting every 100 ms comes back with the same memory and goes on counting (same run id,
//! a higher count), through an archive (`-e`/`-i`) and runc-style (`--image-path`). Also
//! `--leave-running` with a second copy under a new name, rootfs and /dev/shm changes, a tty
//! container, and a TCP connection inside the container with `--tcp-established`.

#[path = "common/ckpt.rs"]
mod ckpt;
mod common;

use ckpt::*;
use common::*;
use serde_json::json;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const SEED: &str = "0x5eed1234abcd";

/// Starts memhold (MIB MiB) in a container made from `image`, waits until it counts, checks
/// a rehash agrees with its checksum; returns the checksum.
fn start_memhold(host: &Host, image: &str, id: &str, mib: &str) -> (MemHold, String) {
    start_memhold_seeded(host, image, id, mib, SEED)
}

/// [`start_memhold`] with its memory filled from `seed`.
fn start_memhold_seeded(
    host: &Host,
    image: &str,
    id: &str,
    mib: &str,
    seed: &str,
) -> (MemHold, String) {
    host.run_image(image, id, &["/bin/memhold", mib, seed, "/tmp"]);
    let mem = MemHold::at(host.rootfs(id).join("tmp"));
    mem.wait_count_above(2);
    let sum = mem.checksum().expect("memhold wrote no checksum");
    host.run(&["kill", id, "USR1"]).ok();
    assert_eq!(
        mem.wait_rehash(1),
        sum,
        "memhold's own rehash disagrees before any checkpoint"
    );
    (mem, sum)
}

/// A Host with image `bb` and a memhold of `mib` MiB in container `<prefix>…`, counting:
/// the host, the id, where it had counted to and its memory's checksum.
fn counting_memhold(prefix: &str, mib: &str) -> (Host, String, (u64, u64), String) {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id(prefix);
    let (mem, sum) = start_memhold(&host, "bb", &id, mib);
    let at = mem.wait_count_above(3);
    (host, id, at, sum)
}

/// Runs `checkpoint ID -e <scratch>/a.tar FLAGS` on another thread and `then` as soon as
/// it is seen holding `id` frozen (the test fails if it never is); returns the archive's
/// path, the checkpoint's output and what `then` returned.
fn while_checkpointing<T>(
    host: &Host,
    id: &str,
    flags: &[&str],
    then: impl FnOnce() -> T,
) -> (PathBuf, Output, T) {
    let archive = host.ferry.scratch().join("a.tar");
    let a = archive.to_str().unwrap();
    let (ck, t) = std::thread::scope(|s| {
        let ck = s.spawn(|| {
            let mut args = vec!["checkpoint", id, "-e", a];
            args.extend_from_slice(flags);
            host.run_quiet(&args)
        });
        let deadline = std::time::Instant::now() + WAIT;
        while host.ferry.status(id).as_deref() != Some("paused") {
            assert!(
                std::time::Instant::now() < deadline,
                "the checkpoint was never seen holding {id} frozen"
            );
        }
        let t = then();
        (ck.join().unwrap(), t)
    });
    (archive, ck, t)
}

/// The restored `id` (a memhold that had counted to `at.1` in run `at.0`, its memory
/// hashing to `sum`) runs, counts on rather than restarting, and rehashes its memory to
/// `sum` (its second rehash: start_memhold asked for the first); then it is deleted and
/// leaves nothing. `via` says what the memory came through.
fn goes_on_with_its_memory_then_delete(
    host: &Host,
    id: &str,
    at: (u64, u64),
    sum: &str,
    via: &str,
) {
    goes_on_with_its_memory(host, id, at, sum, via);
    host.run(&["delete", "--force", id]).ok();
    assert_deleted(host, id);
    assert_cgroups_gone(id);
}

/// The first half of [`goes_on_with_its_memory_then_delete`]: `id` runs, counts on and
/// rehashes its memory to `sum`.
fn goes_on_with_its_memory(host: &Host, id: &str, at: (u64, u64), sum: &str, via: &str) {
    host.ferry.wait_status(id, "running");
    let mem = MemHold::at(host.rootfs(id).join("tmp"));
    let (runid, after) = mem.wait_count_above(at.1);
    assert_eq!(runid, at.0, "restarted rather than restored");
    assert!(after > at.1);
    host.run(&["kill", id, "USR1"]).ok();
    assert_eq!(
        mem.wait_rehash(2),
        sum,
        "the memory restored through {via} differs from the dumped one"
    );
}

#[test]
fn archive_round_trip_keeps_memory_and_the_counter_goes_on() {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id("rt");
    let (mem, sum) = start_memhold(&host, "bb", &id, "48");
    let (runid, before) = mem.wait_count_above(5);

    let archive = host.ferry.scratch().join("rt.tar.zst");
    let a = archive.to_str().unwrap();
    let ck_stats = host.ferry.scratch().join("rt-checkpoint.json");
    host.run(&[
        "checkpoint",
        &id,
        "-e",
        a,
        "--stats-file",
        ck_stats.to_str().unwrap(),
    ])
    .ok();
    // ferry's phases and CRIU's figures, as measured (not their values: no timing asserts).
    let st = read_stats(&ck_stats);
    for k in ["dump_ms", "archive_ms", "write_ms", "sync_ms", "total_ms"] {
        assert!(st[k].as_f64().unwrap_or(0.0) > 0.0, "{k} in {st}");
    }
    // The final fdatasync is a part of the time spent writing; the container was frozen
    // through the dump and the archive, and for no longer than the whole checkpoint.
    assert!(st["sync_ms"].as_f64() <= st["write_ms"].as_f64(), "{st}");
    let frozen = st["frozen_ms"].as_f64().unwrap_or(0.0);
    assert!(
        frozen >= st["dump_ms"].as_f64().unwrap() && frozen <= st["total_ms"].as_f64().unwrap(),
        "{st}"
    );
    assert!(st["compress_ms"].as_f64().is_some(), "{st}");
    // Its own network namespace holds only lo: nothing outside can reach it, so CRIU is not
    // asked to lock it (checkpoint::netlock).
    assert_eq!(st["network_lock"], "skip", "{st}");
    assert!(
        st["criu"]["pages_written"].as_u64().unwrap_or(0) >= 48 << 20 >> 12,
        "{st}"
    );
    assert!(st["images_bytes"].as_u64().unwrap_or(0) > 48 << 20, "{st}");
    assert_eq!(
        st["archive_bytes"].as_u64(),
        Some(fs::metadata(&archive).unwrap().len()),
        "{st}"
    );
    // Without --leave-running the source is gone: no record, no process.
    assert!(
        !host.ids().contains(&id),
        "the checkpointed container is still listed"
    );
    wait_no_tagged(&host.ferry);
    assert!(
        fs::metadata(&archive).unwrap().len() > 48 << 20 >> 4,
        "the archive is tiny"
    );

    let stats = host.ferry.scratch().join("rt-restore.json");
    host.run_quiet(&[
        "restore",
        "-i",
        a,
        "-d",
        "--stats-file",
        stats.to_str().unwrap(),
    ])
    .ok();
    host.ferry.wait_status(&id, "running");
    // Its pages fed to CRIU while it restored, through a disk stage the kernel can gate
    // (archive::feed); else verified first, in memory (this machine has plenty). Nothing
    // of it left either way.
    let st = read_stats(&stats);
    if ferry::archive::gate::supported(&host.storage) {
        assert_eq!(st["pages_verified"], "while restoring", "{st}");
        assert_eq!(st["stage"], "disk", "{st}");
    } else {
        assert_eq!(st["stage"], "tmpfs", "{st}");
    }
    assert_eq!(st["dedup"], true, "{st}");
    assert_eq!(st["network_lock"], "skip", "{st}");
    assert_work_clean(&host);
    let mem = MemHold::at(host.rootfs(&id).join("tmp"));
    let (runid2, after) = mem.wait_count_above(before);
    assert_eq!(
        runid2, runid,
        "the restored process has a new run id: it was started again, not restored"
    );
    assert!(after > before);
    assert_eq!(mem.checksum().as_deref(), Some(sum.as_str()));
    host.run(&["kill", &id, "USR1"]).ok();
    // Rehash #2: the restored process remembers it already rehashed once.
    assert_eq!(
        mem.wait_rehash(2),
        sum,
        "the restored memory differs from the dumped one"
    );

    host.run(&["delete", "--force", &id]).ok();
    assert_deleted(&host, &id);
    assert_cgroups_gone(&id);
}

/// Emptying a host: several containers checkpointed into archives at once, then restored
/// at once, each comes back with its own memory (every one filled from its own seed, so a
/// mix-up between them shows) and its counter going on; nothing of any is left.
#[test]
fn containers_checkpointed_and_restored_at_the_same_time_each_get_their_own_memory_back() {
    let host = Host::new();
    host.import_image("bb");
    let started: Vec<(String, (u64, u64), String, String)> = (0..4)
        .map(|i| {
            let id = host.id(&format!("many{i}"));
            let seed = format!("0x{:x}", 0x5eed_0000 + 0x100 * i);
            let (mem, sum) = start_memhold_seeded(&host, "bb", &id, "24", &seed);
            let at = mem.wait_count_above(3);
            let compress = if i % 2 == 0 { "none" } else { "zstd" };
            (id, at, sum, compress.to_string())
        })
        .collect();
    let sums: std::collections::HashSet<&String> = started.iter().map(|s| &s.2).collect();
    assert_eq!(sums.len(), started.len(), "the seeds gave equal memory");
    let dir = host.ferry.scratch();
    let archive = |id: &str| dir.join(format!("{id}.tar"));
    std::thread::scope(|s| {
        for (id, _, _, compress) in &started {
            let (host, a) = (&host, archive(id));
            s.spawn(move || {
                let a = a.to_str().unwrap();
                host.run(&["checkpoint", id, "-e", a, "--compress", compress])
                    .ok()
            });
        }
    });
    wait_no_tagged(&host.ferry);
    for (id, ..) in &started {
        assert!(!host.ids().contains(id), "{id} is still listed after -e");
    }
    std::thread::scope(|s| {
        for (id, ..) in &started {
            let (host, a) = (&host, archive(id));
            s.spawn(move || host.run(&["restore", "-d", "-i", a.to_str().unwrap()]).ok());
        }
    });
    for (id, at, sum, compress) in &started {
        goes_on_with_its_memory(&host, id, *at, sum, &format!("{compress}, in parallel"));
    }
    for (id, ..) in &started {
        host.run(&["delete", "--force", id]).ok();
    }
    for (id, ..) in &started {
        assert_deleted(&host, id);
    }
    assert_work_clean(&host);
}

/// Two restores of one archive under the same id at the same moment (a drain retried by a
/// script): one wins and runs with the memory, the other is refused because the id is in
/// use, and it leaves nothing of its own nor touches the winner or the archive.
#[test]
fn two_restores_racing_for_one_id_give_one_container_and_a_clear_refusal() {
    let (host, id, at, sum) = counting_memhold("race", "24");
    let archive = host.ferry.scratch().join("race.tar");
    let a = archive.to_str().unwrap();
    host.run(&["checkpoint", &id, "-e", a, "--compress", "none"])
        .ok();
    wait_no_tagged(&host.ferry);
    let digest = file_digest(&archive);
    let outs: Vec<Output> = std::thread::scope(|s| {
        let racers: Vec<_> = (0..2)
            .map(|_| s.spawn(|| host.run_quiet(&["restore", "-d", "-i", a])))
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let won: Vec<&Output> = outs.iter().filter(|o| o.success()).collect();
    assert_eq!(won.len(), 1, "exactly one restore should win: {outs:#?}");
    let lost = outs.iter().find(|o| !o.success()).unwrap();
    // Not that a directory "was not cleaned up": that sent its user to remove the files
    // of the container that won.
    assert!(
        lost.stderr.contains("already exists") && !lost.stderr.contains("cleaned up"),
        "the refused restore should say the id is taken: {}",
        lost.stderr
    );
    assert_eq!(file_digest(&archive), digest, "the archive was changed");
    assert_eq!(host.ids(), vec![id.clone()], "one container, under its id");
    assert_work_clean(&host);
    goes_on_with_its_memory_then_delete(&host, &id, at, &sum, "the winning restore");
}

/// Two `checkpoint -e` of one container at the same moment (a drain started twice): one
/// archive is made and restores with the memory; the other command fails and says why, and
/// at no point is the container lost (frozen for good, or killed with no archive).
#[test]
fn two_checkpoints_racing_for_one_container_make_one_archive() {
    let (host, id, at, sum) = counting_memhold("ckrace", "24");
    let dir = host.ferry.scratch();
    let archives = [dir.join("a.tar"), dir.join("b.tar")];
    let outs: Vec<Output> = std::thread::scope(|s| {
        let racers: Vec<_> = archives
            .iter()
            .map(|a| {
                let (host, id) = (&host, &id);
                s.spawn(move || host.run_quiet(&["checkpoint", id, "-e", a.to_str().unwrap()]))
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let won: Vec<usize> = (0..2).filter(|&i| outs[i].success()).collect();
    assert_eq!(
        won.len(),
        1,
        "exactly one checkpoint should succeed: {outs:#?}"
    );
    let (w, l) = (won[0], 1 - won[0]);
    // Either the other one held the container (busy) or had already released it.
    let why = &outs[l].stderr;
    assert!(
        why.contains("is busy") || why.contains("does not exist"),
        "the failed checkpoint should say the container was taken: {why}"
    );
    assert!(!why.contains("runs on"), "it did not run on: {why}");
    if why.contains("is busy") {
        // Named, so that an operator can find the other command.
        assert!(
            why.contains("ferry (pid ") && why.contains("checkpoint"),
            "{why}"
        );
    }
    assert!(
        !archives[l].exists(),
        "the failed checkpoint left {:?}",
        archives[l]
    );
    wait_no_tagged(&host.ferry);
    assert!(
        host.ids().is_empty(),
        "the source is still listed: {:?}",
        host.ids()
    );
    host.run(&["restore", "-d", "-i", archives[w].to_str().unwrap()])
        .ok();
    goes_on_with_its_memory_then_delete(&host, &id, at, &sum, "the winning checkpoint");
}

/// `delete --force` while `checkpoint -e` runs (an operator giving up on a drain) waits
/// for the checkpoint instead of killing the container under CRIU: the archive is made and
/// restores with the memory, and the delete then finds nothing left to delete.
#[test]
fn a_delete_during_a_checkpoint_waits_for_it_and_nothing_is_lost() {
    let (host, id, at, sum) = counting_memhold("ckdel", "256");
    // --debug: the "nothing to delete" of a delete --force is silent otherwise, as runc's.
    let (archive, ck, del) = while_checkpointing(&host, &id, &["--compress", "none"], || {
        host.run_quiet(&["--debug", "delete", "--force", &id])
    });
    let a = archive.to_str().unwrap();
    assert!(ck.success(), "the checkpoint failed: {}", ck.stderr);
    assert!(del.success(), "delete --force failed: {}", del.stderr);
    assert!(
        del.stderr.contains("does not exist"),
        "the delete should have found the container gone: {}",
        del.stderr
    );
    wait_no_tagged(&host.ferry);
    host.run(&["restore", "-d", "-i", a]).ok();
    goes_on_with_its_memory_then_delete(&host, &id, at, &sum, "a checkpoint a delete waited for");
}

/// A `kill` is not held off by a checkpoint (it is how a container is stopped, whatever it
/// is doing). Killed while `checkpoint -e` dumps it, the checkpoint fails without claiming
/// that the container runs on, and leaves no archive and nothing else behind.
#[test]
fn a_container_killed_during_its_checkpoint_is_not_said_to_run_on() {
    let (host, id, ..) = counting_memhold("ckkill", "256");
    let (archive, ck, _) = while_checkpointing(&host, &id, &["--compress", "none"], || {
        host.run_quiet(&["kill", &id, "KILL"])
    });
    let a = archive.to_str().unwrap();
    if ck.success() {
        // The kill came after the archive was complete: then it restores.
        host.run(&["restore", "-d", "-i", a]).ok();
        host.ferry.wait_status(&id, "running");
    } else {
        assert!(
            ck.stderr.contains("no longer runs") && !ck.stderr.contains("runs on as before"),
            "{}",
            ck.stderr
        );
        assert!(!archive.exists(), "a failed checkpoint left its archive");
    }
    host.run(&["delete", "--force", &id]).ok();
    assert_deleted(&host, &id);
    assert_work_clean(&host);
}

/// `exec` into a container while `checkpoint -e --leave-running` has it frozen (a health
/// probe during a drain) waits for the checkpoint: the checkpoint is not disturbed by a
/// process joining halfway, and the exec then runs in the thawed container.
#[test]
fn an_exec_during_a_checkpoint_waits_for_it() {
    let (host, id, at, sum) = counting_memhold("ckexec", "256");
    let (archive, ck, exec) = while_checkpointing(&host, &id, &["--leave-running"], || {
        host.run(&["exec", &id, "/bin/busybox", "echo", "probe"])
    });
    let a = archive.to_str().unwrap();
    assert!(ck.success(), "the checkpoint failed: {}", ck.stderr);
    assert!(exec.success(), "the exec failed: {}", exec.stderr);
    assert_eq!(exec.stdout.trim(), "probe");
    // The source runs on, and the archive brings back a second copy with the memory.
    host.ferry.wait_status(&id, "running");
    let copy = host.id("ckexec-copy");
    host.run(&["restore", "-d", "-i", a, "--name", &copy]).ok();
    goes_on_with_its_memory(&host, &copy, at, &sum, "a checkpoint an exec waited for");
}

/// A process an exec started, still running, is not under the container's init, and CRIU
/// would leave it out without a word (the copy silently lacking it, as it did): the
/// checkpoint is refused and names it, the container runs on; once the process has ended
/// the checkpoint goes through.
#[test]
fn a_running_exec_process_is_named_and_the_checkpoint_refused() {
    let (host, id, at, sum) = counting_memhold("ckexecrun", "24");
    let mut exec = host
        .command(&["exec", &id, "/bin/busybox", "sleep", "2"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the exec's process to run", WAIT, || {
        host.run(&["ps", &id]).stdout.contains("sleep 2")
    });
    let archive = host.ferry.scratch().join("a.tar");
    let a = archive.to_str().unwrap();
    let refused = host.run_quiet(&["checkpoint", &id, "-e", a]).fails();
    assert!(
        refused.stderr.contains("not under its init") && refused.stderr.contains("sleep 2"),
        "{}",
        refused.stderr
    );
    assert!(!archive.exists(), "a refused checkpoint left {archive:?}");
    host.ferry.wait_status(&id, "running");
    assert!(
        exec.wait().unwrap().success(),
        "the exec should have finished normally"
    );
    host.run(&["checkpoint", &id, "-e", a]).ok();
    host.run(&["restore", "-d", "-i", a]).ok();
    goes_on_with_its_memory_then_delete(&host, &id, at, &sum, "a checkpoint after an exec");
}

/// `pause` while `checkpoint -e --leave-running` has the container frozen waits for the
/// checkpoint, so the checkpoint's thaw does not undo it: the container ends up paused, as
/// asked, and `resume` lets it go on.
#[test]
fn a_pause_during_a_checkpoint_is_not_undone_by_its_thaw() {
    let (host, id, at, _) = counting_memhold("ckpause", "256");
    let (_, ck, pause) = while_checkpointing(&host, &id, &["--leave-running"], || {
        host.run_quiet(&["pause", &id])
    });
    assert!(ck.success(), "the checkpoint failed: {}", ck.stderr);
    assert!(pause.success(), "the pause failed: {}", pause.stderr);
    assert_eq!(host.ferry.status(&id).as_deref(), Some("paused"));
    host.run(&["resume", &id]).ok();
    let mem = MemHold::at(host.rootfs(&id).join("tmp"));
    mem.wait_count_above(at.1);
    host.run(&["delete", "--force", &id]).ok();
    assert_deleted(&host, &id);
}

/// What [`none_round_trip`] leaves to check.
struct RoundTrip {
    host: Host,
    id: String,
    /// The run id and count before the checkpoint.
    at: (u64, u64),
    sum: String,
    stats: serde_json::Value,
    out: Output,
}

/// `restore -i archive -d` with `--debug`, `extra` arguments and `env`; its output and its
/// statistics (kept under `tag`).
fn restore_archive(
    host: &Host,
    archive: &str,
    tag: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> (Output, serde_json::Value) {
    let stats = host.ferry.scratch().join(format!("{tag}-restore.json"));
    let mut args = vec!["--debug", "restore", "-i", archive, "-d", "--stats-file"];
    args.push(stats.to_str().unwrap());
    args.extend_from_slice(extra);
    let out = host.run_quiet_env(env, &args).ok();
    (out, read_stats(&stats))
}

/// A memhold of `mib` MiB checkpointed into an uncompressed archive (the source released),
/// then restored under its id, detached, with `restore_args` and `env`, `--debug` and its
/// statistics kept.
fn none_round_trip(
    prefix: &str,
    mib: &str,
    env: &[(&str, &str)],
    restore_args: &[&str],
) -> RoundTrip {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id(prefix);
    let (mem, sum) = start_memhold(&host, "bb", &id, mib);
    let at = mem.wait_count_above(3);
    let archive = host.ferry.scratch().join(format!("{prefix}.tar"));
    let a = archive.to_str().unwrap();
    host.run(&["checkpoint", &id, "-e", a, "--compress", "none"])
        .ok();
    wait_no_tagged(&host.ferry);
    let (out, stats) = restore_archive(&host, a, prefix, env, restore_args);
    RoundTrip {
        host,
        id,
        at,
        sum,
        stats,
        out,
    }
}

/// `restore -i --keep` keeps the unpacked archive, and keeps it whole: every pages file
/// is there at its size with every byte written (no part left to a copy-in, none punched
/// out behind CRIU's reads), and the restored memory is the same.
#[test]
fn a_kept_restore_keeps_every_page_of_the_unpacked_archive() {
    let rt = none_round_trip("kept", "16", &[], &["--keep"]);
    let work = rt.host.storage.join("work");
    let kept: Vec<PathBuf> = fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("restore-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "one kept restore directory: {kept:?}");
    let images = kept[0].join("checkpoint");
    let mut pages = 0;
    for e in fs::read_dir(&images).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("pages-") && name.ends_with(".img")) {
            continue;
        }
        let m = e.metadata().unwrap();
        assert!(
            m.blocks() * 512 >= m.len(),
            "{name}: {} bytes, {} of them written",
            m.len(),
            m.blocks() * 512
        );
        pages += m.len();
    }
    assert!(pages >= 16 << 20, "the kept pages hold the 16 MiB: {pages}");
    assert_eq!(rt.stats["copied_in_bytes"], 0, "{}", rt.stats);
    goes_on_with_its_memory_then_delete(&rt.host, &rt.id, rt.at, &rt.sum, "the kept restore");
    fs::remove_dir_all(&kept[0]).unwrap();
}

/// An archive bigger than the tmpfs it is unpacked into (capped at 1 MiB by the knob): the
/// stage spills to disk mid-entry and the restore goes on from there, with every byte.
#[test]
fn a_stage_too_small_for_the_archive_spills_to_disk_and_the_restore_succeeds() {
    // Verified whole first: the path through the tmpfs stage (an uncompressed file would
    // otherwise be fed to CRIU through a disk stage, archive::feed).
    let rt = none_round_trip(
        "spill",
        "16",
        &[("FERRY_STAGE_TMPFS_BYTES", "1M")],
        &["--verify-first"],
    );
    let st = &rt.stats;
    assert_eq!(
        st["stage"], "spilled",
        "a 16 MiB archive cannot fit a 1 MiB tmpfs: {st}"
    );
    let why = st["stage_reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("FERRY_STAGE_TMPFS_BYTES=1M") && why.contains("filled at checkpoint/"),
        "the reason should say the cap and where it filled: {why}"
    );
    assert!(
        rt.out.stderr.contains("spills to disk"),
        "the debug log should say the stage spilled:\n{}",
        rt.out.stderr
    );
    assert_work_clean(&rt.host);
    goes_on_with_its_memory_then_delete(&rt.host, &rt.id, rt.at, &rt.sum, "the spilled stage");
}

/// An uncompressed archive file: CRIU starts once everything but the memory pages is
/// verified, and reads each page only after it is (archive::feed). The memory arrives
/// whole and the counter goes on.
#[test]
fn an_uncompressed_archive_feeds_its_pages_while_criu_restores() {
    let rt = none_round_trip("fed", "64", &[], &[]);
    let st = &rt.stats;
    if ferry::archive::gate::supported(&rt.host.storage) {
        assert_eq!(st["pages_verified"], "while restoring", "{st}");
        assert_eq!(st["stage"], "disk", "{st}");
        assert!(st["feed_ms"].as_f64().unwrap_or(0.0) > 0.0, "{st}");
        // Most of the 64 MiB was copied straight into the task (archive::uffd) or, where
        // the kernel cannot, faulted in ahead of CRIU's reads (archive::prefault); the
        // memory still hashes the same (below).
        let (copied, pre) = (
            st["copied_in_bytes"].as_u64().unwrap_or(0),
            st["prefaulted_bytes"].as_u64().unwrap_or(0),
        );
        if ferry::archive::uffd::supported() {
            assert!(copied >= 48 << 20 && pre == 0, "{st}");
        } else {
            assert!(pre >= 48 << 20 && copied == 0, "{st}");
        }
    } else {
        assert_eq!(st["pages_verified"], "before restoring", "{st}");
    }
    assert_eq!(st["dedup"], true, "{st}");
    assert_work_clean(&rt.host);
    goes_on_with_its_memory_then_delete(&rt.host, &rt.id, rt.at, &rt.sum, "the feed");
}

/// Thirteen tasks, each with a pages image and an index of its own, copied in side by side
/// (the copy-in takes the tasks in turn, each image's parts made from its index as they
/// are wanted): every task comes back counting, with its own memory.
#[test]
fn thirteen_tasks_each_get_their_own_memory_back() {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id("manytasks");
    let n = 13;
    let mut script = String::from("/bin/busybox mkdir -p");
    for i in 0..n {
        script += &format!(" /tmp/m{i}");
    }
    script += ";";
    for i in 1..n {
        script += &format!(" /bin/memhold 3 {SEED} /tmp/m{i} &");
    }
    script += &format!(" exec /bin/memhold 3 {SEED} /tmp/m0");
    host.run_image("bb", &id, &["/bin/sh", "-c", &script]);
    let root = host.rootfs(&id);
    let mems: Vec<MemHold> = (0..n)
        .map(|i| MemHold::at(root.join(format!("tmp/m{i}"))))
        .collect();
    let at: Vec<(u64, u64)> = mems.iter().map(|m| m.wait_count_above(2)).collect();
    let sums: Vec<String> = mems.iter().map(|m| m.checksum().unwrap()).collect();
    let archive = host.ferry.scratch().join("many.tar");
    let ar = archive.to_str().unwrap();
    host.run(&["checkpoint", &id, "-e", ar, "--compress", "none"])
        .ok();
    wait_no_tagged(&host.ferry);
    let images = tar::Archive::new(fs::File::open(&archive).unwrap())
        .entries()
        .unwrap()
        .filter(|e| {
            let e = e.as_ref().unwrap();
            e.path().unwrap().to_string_lossy().ends_with(".img.index")
        })
        .count();
    assert!(images >= n, "{images} pages indexes for {n} tasks");
    let (_, st) = restore_archive(&host, ar, "many", &[], &[]);
    host.ferry.wait_status(&id, "running");
    if ferry::archive::gate::supported(&host.storage) && ferry::archive::uffd::supported() {
        let copied = st["copied_in_bytes"].as_u64().unwrap_or(0);
        assert!(
            copied >= n as u64 * (3 << 20),
            "every task's memory copied in: {st}"
        );
    }
    let root = host.rootfs(&id);
    let mems: Vec<MemHold> = (0..n)
        .map(|i| MemHold::at(root.join(format!("tmp/m{i}"))))
        .collect();
    for (i, m) in mems.iter().enumerate() {
        assert_eq!(m.wait_count_above(at[i].1).0, at[i].0, "task {i} restarted");
    }
    host.run(&["kill", "--all", &id, "USR1"]).ok();
    for (i, m) in mems.iter().enumerate() {
        assert_eq!(
            m.wait_rehash(1),
            sums[i],
            "task {i}'s memory differs after the restore"
        );
    }
    host.run(&["delete", "--force", &id]).ok();
    assert_deleted(&host, &id);
    assert_cgroups_gone(&id);
}

/// Two memholds in one container (two tasks, two pagemaps, two pages files), `a` started
/// with seed `a_seed`, checkpointed with `checkpoint_args` into `archive` and restored
/// (`check` sees the archive, the restore's output and its stats): each comes back
/// counting, with its own memory.
fn two_memholds_round_trip(
    tag: &str,
    a_seed: &str,
    archive: &str,
    checkpoint_args: &[&str],
    check: impl FnOnce(&Host, &Path, &Output, &serde_json::Value),
) {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id(tag);
    let script = format!(
        "/bin/busybox mkdir -p /tmp/a /tmp/b; /bin/memhold 24 {a_seed} /tmp/a & \
         exec /bin/memhold 24 {SEED} /tmp/b"
    );
    host.run_image("bb", &id, &["/bin/sh", "-c", &script]);
    let root = host.rootfs(&id);
    let (a, b) = (
        MemHold::at(root.join("tmp/a")),
        MemHold::at(root.join("tmp/b")),
    );
    let at_a = a.wait_count_above(2);
    let at_b = b.wait_count_above(2);
    let (sum_a, sum_b) = (a.checksum().unwrap(), b.checksum().unwrap());
    let archive = host.ferry.scratch().join(archive);
    let ar = archive.to_str().unwrap();
    let mut args = vec!["checkpoint", &id, "-e", ar];
    args.extend_from_slice(checkpoint_args);
    host.run(&args).ok();
    wait_no_tagged(&host.ferry);
    let (out, st) = restore_archive(&host, ar, tag, &[], &[]);
    host.ferry.wait_status(&id, "running");
    check(&host, &archive, &out, &st);
    let root = host.rootfs(&id);
    let (a, b) = (
        MemHold::at(root.join("tmp/a")),
        MemHold::at(root.join("tmp/b")),
    );
    assert_eq!(a.wait_count_above(at_a.1).0, at_a.0, "a restarted");
    assert_eq!(b.wait_count_above(at_b.1).0, at_b.0, "b restarted");
    host.run(&["kill", "--all", &id, "USR1"]).ok();
    assert_eq!(
        a.wait_rehash(1),
        sum_a,
        "a's memory differs after the restore"
    );
    assert_eq!(
        b.wait_rehash(1),
        sum_b,
        "b's memory differs after the restore"
    );
    host.run(&["delete", "--force", &id]).ok();
    assert_deleted(&host, &id);
}

#[test]
fn two_tasks_each_get_their_own_memory_back_through_the_fed_restore() {
    // Each task's memory is copied into it (or each read of each file prefaulted in its own
    // task). The kernel writes the forked task's rseq area, in its heap, while its restorer
    // runs: a copy-in that served the tasks strictly in turn would hang there.
    let seed = SEED.to_string();
    two_memholds_round_trip(
        "twotasks",
        &seed,
        "two.tar",
        &["--compress", "none"],
        |host, _, _, st| {
            if ferry::archive::gate::supported(&host.storage) {
                assert_eq!(st["pages_verified"], "while restoring", "{st}");
                let filled = if ferry::archive::uffd::supported() {
                    st["copied_in_bytes"].as_u64().unwrap_or(0)
                } else {
                    st["prefaulted_bytes"].as_u64().unwrap_or(0)
                };
                assert!(filled >= 32 << 20, "both tasks' memory filled: {st}");
            } else {
                // No gate on this kernel: everything verified first, nothing to prefault ahead of.
                assert_eq!(st["pages_verified"], "before restoring", "{st}");
                assert_eq!(st["prefaulted_bytes"], 0, "{st}");
            }
        },
    );
}

/// A zstd archive file (the default): each part is read where it lies in the archive, on
/// its own, and copied straight into its task (archive::zhead, archive::uffd), whether
/// its frame is raw (noise) or compressed (half of one task's memory compresses).
#[test]
fn a_zstd_archive_is_copied_in_part_by_part_from_where_it_lies() {
    let seed = format!("z{SEED}");
    two_memholds_round_trip(
        "zstdparts",
        &seed,
        "parts.tar.zst",
        &[],
        |host, archive, out, st| {
            let size = fs::metadata(archive).unwrap().len();
            assert!(
                size < 42 << 20,
                "half of a's 24 MiB should have compressed: {size} bytes"
            );
            if ferry::archive::gate::supported(&host.storage) && ferry::archive::uffd::supported() {
                assert!(
                    !out.stderr.contains("pages in order"),
                    "the head should have been walked:\n{}",
                    out.stderr
                );
                let copied = st["copied_in_bytes"].as_u64().unwrap_or(0);
                assert!(copied >= 40 << 20, "both tasks' memory copied in: {st}");
            }
        },
    );
}

/// A shell that forked two subshells after filling its heap: the three share those pages
/// copy-on-write. ferry leaves such a tree to CRIU's reads, which restore the pages shared
/// again, rather than copying each task its own (archive::uffd); and it restores.
#[test]
fn a_forked_tree_gets_its_copy_on_write_memory_back_shared() {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id("cowtree");
    let script = "a=$(/bin/busybox dd if=/dev/urandom bs=1k count=3000 2>/dev/null \
                  | /bin/busybox od -x | /bin/busybox head -c 8000000); \
                  (while :; do /bin/busybox sleep 1; done) & \
                  (while :; do /bin/busybox sleep 1; done) & \
                  /bin/busybox touch /filled; while :; do /bin/busybox sleep 1; done";
    host.run_image("bb", &id, &["/bin/sh", "-c", script]);
    let root = host.rootfs(&id);
    let t = std::time::Instant::now();
    while !root.join("filled").exists() {
        assert!(
            t.elapsed().as_secs() < 30,
            "the shell never filled its heap"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let archive = host.ferry.scratch().join("cow.tar");
    let ar = archive.to_str().unwrap();
    host.run(&["checkpoint", &id, "-e", ar, "--compress", "none"])
        .ok();
    wait_no_tagged(&host.ferry);
    let (_, st) = restore_archive(&host, ar, "cow", &[], &[]);
    host.ferry.wait_status(&id, "running");
    assert_eq!(st["copied_in_bytes"], 0, "{st}");
    let cow = st["criu"]["pages_skipped_cow"].as_u64().unwrap_or(0);
    assert!(cow > 2048, "the heap restored shared: {st}");
    host.run(&["delete", "--force", &id]).ok();
    assert_deleted(&host, &id);
}

/// The ways the fed restore falls back to: CRIU reading every page from the stage, with
/// each read faulted in ahead (archive::prefault) and without; the memory comes back the same.
#[test]
fn with_criu_reading_every_page_the_fed_restore_is_the_same() {
    let rt = none_round_trip("nouffd", "32", &[("FERRY_RESTORE_UFFD", "0")], &[]);
    assert_eq!(rt.stats["copied_in_bytes"], 0, "{}", rt.stats);
    if ferry::archive::gate::supported(&rt.host.storage) {
        let pre = rt.stats["prefaulted_bytes"].as_u64().unwrap_or(0);
        assert!(pre >= 24 << 20, "{}", rt.stats);
    }
    goes_on_with_its_memory_then_delete(&rt.host, &rt.id, rt.at, &rt.sum, "CRIU's reads");

    let neither = [("FERRY_RESTORE_UFFD", "0"), ("FERRY_RESTORE_PREFAULT", "0")];
    let rt = none_round_trip("noprefault", "32", &neither, &[]);
    assert_eq!(rt.stats["prefaulted_bytes"], 0, "{}", rt.stats);
    assert_eq!(rt.stats["copied_in_bytes"], 0, "{}", rt.stats);
    goes_on_with_its_memory_then_delete(&rt.host, &rt.id, rt.at, &rt.sum, "the feed");
}

/// Where `-e` writes: a new file is 0600 (it holds the container's memory); a checkpoint
/// to an earlier archive's path replaces it whole and keeps its mode and owner, unless that
/// archive is another container's; a character
/// device (`/dev/null`'s kind, made in the test's own directory) and a FIFO are written as
/// streams, and neither is synced nor removed. The archive that went through the FIFO
/// restores with the memory.
#[test]
fn an_archive_replaces_a_file_keeping_its_mode_or_goes_into_a_device_or_a_fifo() {
    let (host, id, at, sum) = counting_memhold("out", "16");
    let dir = host.ferry.scratch();
    let checkpoint = |to: &Path, extra: &[&str]| {
        let mut args = vec!["checkpoint", &id, "-e", to.to_str().unwrap()];
        args.extend_from_slice(&["--compress", "none"]);
        args.extend_from_slice(extra);
        host.run(&args).ok();
    };

    let file = dir.join("a.tar");
    checkpoint(&file, &["--leave-running"]);
    let first = fs::metadata(&file).unwrap();
    assert_eq!(first.mode() & 0o7777, 0o600, "a new archive's mode");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&file, Some(4321), Some(4322)).unwrap();
    checkpoint(&file, &["--leave-running"]);
    let second = fs::metadata(&file).unwrap();
    assert_ne!(
        second.ino(),
        first.ino(),
        "the archive was rewritten in place"
    );
    assert_eq!(
        (second.mode() & 0o7777, second.uid(), second.gid()),
        (0o640, 4321, 4322),
        "the replaced archive's mode and owner"
    );
    host.run(&["inspect", file.to_str().unwrap()]).ok();
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        1,
        "files left beside the archive"
    );
    // Another container's checkpoint to that path (a drain script giving two containers
    // one name) is refused before it freezes anything: the archive may be all that is left
    // of the first.
    let other = host.id("out-other");
    start_memhold(&host, "bb", &other, "8");
    let refused = host
        .run_quiet(&["checkpoint", &other, "-e", file.to_str().unwrap()])
        .fails();
    assert!(
        refused.stderr.contains("holds the checkpoint of container")
            && refused.stderr.contains(&id),
        "{}",
        refused.stderr
    );
    assert_eq!(host.ferry.status(&other).as_deref(), Some("running"));
    assert_eq!(
        fs::metadata(&file).unwrap().ino(),
        second.ino(),
        "the archive was replaced"
    );
    host.run(&["delete", "--force", &other]).ok();

    let device = dir.join("null");
    nix::sys::stat::mknod(
        &device,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    checkpoint(&device, &["--leave-running"]);
    assert!(
        fs::metadata(&device).unwrap().file_type().is_char_device(),
        "the device was replaced or removed"
    );

    let fifo = dir.join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let copy = dir.join("from-the-fifo.tar");
    let reader = {
        let (fifo, copy) = (fifo.clone(), copy.clone());
        std::thread::spawn(move || {
            std::io::copy(
                &mut fs::File::open(fifo).unwrap(),
                &mut fs::File::create(copy).unwrap(),
            )
            .unwrap()
        })
    };
    checkpoint(&fifo, &[]);
    let copied = reader.join().unwrap();
    assert!(copied > 16 << 20, "{copied} bytes came through the FIFO");
    assert!(
        fs::metadata(&fifo).unwrap().file_type().is_fifo(),
        "the FIFO was replaced or removed"
    );
    wait_no_tagged(&host.ferry);
    restore_archive(&host, copy.to_str().unwrap(), "out", &[], &[]);
    goes_on_with_its_memory_then_delete(&host, &id, at, &sum, "a FIFO");
}

#[test]
fn leave_running_then_a_second_copy_under_a_new_name() {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id("lr");
    let (mem, sum) = start_memhold(&host, "bb", &id, "16");
    let (runid, _) = mem.wait_count_above(3);

    let archive = host.ferry.scratch().join("lr.tar");
    let a = archive.to_str().unwrap();
    host.run(&["checkpoint", &id, "-e", a, "--leave-running"])
        .ok();
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    let (_, at_dump) = mem.count().unwrap();
    // The original is thawed and keeps counting.
    mem.wait_count_above(at_dump + 3);

    let copy = host.id("lr-copy");
    // CRIU punches the restored pages out of the stage (--auto-dedup, which restore -i
    // does anyway); the copy must still have all of its memory.
    host.run_quiet(&["restore", "-i", a, "--name", &copy, "-d", "--auto-dedup"])
        .ok();
    host.ferry.wait_status(&copy, "running");
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    let mem2 = MemHold::at(host.rootfs(&copy).join("tmp"));
    let (runid2, c2) = mem2.wait_count_above(at_dump);
    assert_eq!(
        runid2, runid,
        "the copy was started afresh rather than restored"
    );

    // Two independent counters: each advances in its own rootfs, and stopping one leaves
    // the other going.
    let (_, c1) = mem.count().unwrap();
    mem.wait_count_above(c1 + 2);
    mem2.wait_count_above(c2 + 2);
    host.run(&["kill", &copy, "USR1"]).ok();
    assert_eq!(mem2.wait_rehash(2), sum);
    host.run(&["delete", "--force", &id]).ok();
    let (_, c2) = mem2.count().unwrap();
    mem2.wait_count_above(c2 + 2);
    assert_eq!(host.ferry.status(&copy).as_deref(), Some("running"));
    host.run(&["delete", "--force", &copy]).ok();
    assert_deleted(&host, &copy);
    assert_deleted(&host, &id);
    assert_cgroups_gone(&id);
    assert_cgroups_gone(&copy);
}

#[test]
fn rootfs_changes_and_dev_shm_are_preserved() {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id("fs");
    let (mem, _) = start_memhold(&host, "bb", &id, "1");
    let script = "set -e
        echo created > /etc/created.txt
        echo modified > /etc/hostname
        rm /etc/group
        chmod 0600 /etc/passwd
        mkdir -p /var/newdir/sub && echo deep > /var/newdir/sub/file
        echo in-shm > /dev/shm/blob
        ln -s /etc/created.txt /root/link";
    host.run(&["exec", &id, "/bin/sh", "-c", script]).ok();
    let (runid, before) = mem.wait_count_above(2);

    let archive = host.ferry.scratch().join("fs.tar");
    let a = archive.to_str().unwrap();
    host.run(&["checkpoint", &id, "-e", a]).ok();
    let new = host.id("fs-new");
    host.run_quiet(&["restore", "-i", a, "--name", &new, "-d"])
        .ok();
    host.ferry.wait_status(&new, "running");
    let root = host.rootfs(&new);
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("etc/created.txt"), "created\n");
    assert_eq!(read("etc/hostname"), "modified\n");
    assert!(
        !root.join("etc/group").exists(),
        "/etc/group was deleted before the checkpoint"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(root.join("etc/passwd"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o600, "the chmod of /etc/passwd was lost");
    assert_eq!(read("var/newdir/sub/file"), "deep\n");
    assert_eq!(
        fs::read_link(root.join("root/link")).unwrap().to_str(),
        Some("/etc/created.txt")
    );
    // /dev/shm is the container's own tmpfs: look from inside.
    let out = host.run(&["exec", &new, "/bin/cat", "/dev/shm/blob"]).ok();
    assert_eq!(out.stdout, "in-shm\n");
    // It travelled as podman keeps it, devshm-checkpoint.tar, not inside CRIU's images, and
    // comes back a tmpfs with the spec's options.
    let mut tar = tar::Archive::new(zstd::Decoder::new(fs::File::open(&archive).unwrap()).unwrap());
    let mut shm_files = vec![];
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("devshm-checkpoint.tar") {
            let mut inner = vec![];
            std::io::Read::read_to_end(&mut e, &mut inner).unwrap();
            for f in tar::Archive::new(inner.as_slice()).entries().unwrap() {
                shm_files.push(f.unwrap().path().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        shm_files
            .iter()
            .any(|f| f.trim_start_matches("./") == "blob"),
        "devshm-checkpoint.tar holds {shm_files:?}"
    );
    let mounts = host.run(&["exec", &new, "/bin/cat", "/proc/mounts"]).ok();
    let shm = mounts
        .stdout
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/dev/shm"))
        .unwrap_or_else(|| panic!("no /dev/shm in\n{}", mounts.stdout));
    assert!(
        shm.starts_with("shm /dev/shm tmpfs ") && shm.contains("nosuid") && shm.contains("noexec"),
        "{shm}"
    );
    // Nothing of it left on the host side (in this test's storage: other tests restore
    // their own /dev/shm at the same time).
    let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let storage = host.storage.to_string_lossy().into_owned();
    assert!(
        !host_mounts
            .lines()
            .any(|l| l.contains(&storage) && l.contains("devshm-")),
        "the host still has the staging mount of /dev/shm:\n{host_mounts}"
    );
    let mem = MemHold::at(root.join("tmp"));
    let (runid2, _) = mem.wait_count_above(before);
    assert_eq!(runid2, runid);
    host.run(&["delete", "--force", &new]).ok();
    assert_deleted(&host, &new);
    assert_cgroups_gone(&new);
}

#[test]
fn runc_style_image_path_round_trip_of_a_plain_bundle() {
    let host = Host::new();
    let bundle = memhold_bundle(&host, "8");
    bundle.save();
    let id = host.id("runc");
    host.run_quiet(&["create", "--bundle", bundle.path_str(), &id])
        .ok();
    host.run(&["start", &id]).ok();
    let mem = MemHold::at(bundle.host_path("/tmp"));
    let (runid, before) = mem.wait_count_above(3);
    let sum = mem.checksum().unwrap();

    let images = host.ferry.scratch().join("images");
    let work = host.ferry.scratch().join("work");
    // CRIU's own default lock, asked for by name (ferry's default here would be skip): the
    // iptables path stays exercised, and dump and restore must agree on it.
    host.run(&[
        "checkpoint",
        "--image-path",
        images.to_str().unwrap(),
        "--work-path",
        work.to_str().unwrap(),
        "--network-lock",
        "iptables",
        &id,
    ])
    .ok();
    assert!(
        images.join("inventory.img").exists(),
        "no inventory.img in {images:?}"
    );
    assert!(
        work.join("dump.log").exists(),
        "no dump.log in the work path {work:?}"
    );
    assert!(
        !host.ids().contains(&id),
        "runc removes a checkpointed container"
    );
    wait_no_tagged(&host.ferry);
    // The images are the caller's: the copy-in reads their pages and leaves them whole.
    let pages_of = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("pages-"))
            .map(|n| (n.clone(), fs::read(dir.join(&n)).unwrap()))
            .collect();
        v.sort();
        v
    };
    let pages_before = pages_of(&images);

    let pid_file = host.ferry.scratch().join("pid");
    let restored = host
        .run_quiet(&[
            "--debug",
            "restore",
            "--bundle",
            bundle.path_str(),
            "--image-path",
            images.to_str().unwrap(),
            "--work-path",
            work.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--network-lock",
            "iptables",
            "-d",
            &id,
        ])
        .ok();
    host.ferry.wait_status(&id, "running");
    if ferry::archive::uffd::supported() {
        // Most of the 8 MiB copied in by ferry rather than read by CRIU.
        let copied: u64 = restored
            .stderr
            .lines()
            .find(|l| l.contains("copied into the restored tasks"))
            .and_then(|l| l.split("copied_in_bytes=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            copied >= 6 << 20,
            "copied in: {copied}\n{}",
            restored.stderr
        );
    }
    assert!(
        pages_of(&images) == pages_before,
        "the restore changed the caller's pages files"
    );
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, host.ferry.pid(&id), "--pid-file and state disagree");
    assert!(
        work.join("restore.log").exists(),
        "no restore.log in the work path"
    );
    let (runid2, _) = mem.wait_count_above(before);
    assert_eq!(runid2, runid, "restarted rather than restored");
    host.run(&["kill", &id, "USR1"]).ok();
    assert_eq!(mem.wait_rehash(1), sum);
    host.run(&["kill", &id, "TERM"]).ok();
    host.ferry.wait_status(&id, "stopped");
    host.run(&["delete", &id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &id);
}

#[test]
fn tty_container_is_restored_with_a_console_socket() {
    let host = Host::new();
    let mut bundle = Bundle::new(&host.ferry, &["/bin/sh"]);
    bundle.terminal(true);
    bundle.save();
    let id = host.id("tty");
    let sock = ConsoleSocket::new(&host.ferry.scratch());
    let create = host.spawn(&[
        "create",
        "--bundle",
        bundle.path_str(),
        "--console-socket",
        sock.path_str(),
        &id,
    ]);
    let master = sock.receive_master(WAIT);
    create.finish(COMMAND_TIMEOUT).ok();
    host.run(&["start", &id]).ok();
    let mut tty = fs::File::from(master.try_clone().unwrap());
    tty.write_all(b"X=before-$((6*7))\necho $X\n").unwrap();
    read_until(&master, "before-42", WAIT);

    let images = host.ferry.scratch().join("images");
    let out = host.run(&["checkpoint", "--image-path", images.to_str().unwrap(), &id]);
    assert!(
        out.success(),
        "checkpoint of a tty container failed: {}\n{}",
        out.stderr,
        fs::read_to_string(images.join("dump.log")).unwrap_or_default()
    );
    drop(tty);
    drop(master);

    let sock2 = ConsoleSocket::new(&host.ferry.scratch());
    let restore = host.spawn(&[
        "restore",
        "--bundle",
        bundle.path_str(),
        "--image-path",
        images.to_str().unwrap(),
        "--console-socket",
        sock2.path_str(),
        "-d",
        &id,
    ]);
    let master = sock2.receive_master(WAIT);
    let out = restore.finish(COMMAND_TIMEOUT);
    assert!(
        out.success(),
        "restore of a tty container failed: {}\n{}",
        out.stderr,
        fs::read_to_string(images.join("restore.log")).unwrap_or_default()
    );
    host.ferry.wait_status(&id, "running");
    // The same shell, with its variable, on the new master.
    let mut tty = fs::File::from(master.try_clone().unwrap());
    tty.write_all(b"echo after-$X-$((1+1))\n").unwrap();
    read_until(&master, "after-before-42-2", WAIT);
    tty.write_all(b"exit 3\n").unwrap();
    host.ferry.wait_status(&id, "stopped");
    host.run(&["delete", &id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &id);
}

#[test]
fn tcp_connection_inside_the_container_survives_with_tcp_established() {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id("tcp");
    host.run_image("bb", &id, &["/bin/tcppair", "7070", "/tmp"]);
    let dir = host.rootfs(&id).join("tmp");
    let recv = |dir: &std::path::Path| read_counter(&dir.join("recv"));
    let error = |dir: &std::path::Path| fs::read_to_string(dir.join("error")).ok();
    let mut before = 0;
    wait_for("the server to receive numbers", WAIT, || {
        before = recv(&dir).unwrap_or(0);
        before > 3
    });
    assert_eq!(error(&dir), None);

    let archive = host.ferry.scratch().join("tcp.tar");
    let a = archive.to_str().unwrap();
    let ck_stats = host.ferry.scratch().join("tcp-checkpoint.json");
    let out = host.run(&[
        "checkpoint",
        &id,
        "-e",
        a,
        "--tcp-established",
        "--stats-file",
        ck_stats.to_str().unwrap(),
    ]);
    if !out.success() {
        // Still running, still talking: a failed checkpoint leaves it as it was.
        let now = recv(&dir).unwrap_or(0);
        wait_counter_above(&dir.join("recv"), now);
        panic!("checkpoint with --tcp-established failed: {}", out.stderr);
    }
    let rst_stats = host.ferry.scratch().join("tcp-restore.json");
    host.run_quiet(&[
        "restore",
        "-i",
        a,
        "-d",
        "--tcp-established",
        "--stats-file",
        rst_stats.to_str().unwrap(),
    ])
    .ok();
    host.ferry.wait_status(&id, "running");
    // Connections to carry keep the lock, even in a namespace of only lo: nftables when
    // this criu has it (the one install-deps.sh builds does), inside criu. Had the restore
    // left its lock in place, the numbers below would stop.
    let expect = if criu_has_nftables_lock() {
        "nftables"
    } else {
        "iptables"
    };
    assert_eq!(read_stats(&ck_stats)["network_lock"], expect);
    assert_eq!(read_stats(&rst_stats)["network_lock"], expect);
    let dir = host.rootfs(&id).join("tmp");
    let after = wait_counter_above(&dir.join("recv"), before);
    assert!(after > before);
    // The same connection: the numbers go on and the server saw no error.
    assert_eq!(error(&dir), None, "the connection broke");
    host.run(&["delete", "--force", &id]).ok();
    assert_deleted(&host, &id);
    assert_cgroups_gone(&id);
}

/// Shared anonymous memory (MAP_SHARED, held by two processes) goes through CRIU's shared
/// memory path (`pagemap-shmem-*.img` through ferry's page server) and comes back whole.
#[test]
fn shared_memory_round_trips_through_the_archive() {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id("shm");
    host.run_image("bb", &id, &["/bin/shmhold", "8", "/tmp"]);
    let sums = |id: &str| -> Option<(u64, u64)> {
        let t = fs::read_to_string(host.rootfs(id).join("tmp/shmsum")).ok()?;
        let mut it = t.split_whitespace().map(|v| v.parse::<u64>().ok());
        Some((it.next()??, it.next()??))
    };
    // Counted long enough that a restart (from 1) cannot pass for going on.
    wait_for("shmhold to count to 10", WAIT, || {
        sums(&id).is_some_and(|(c, _)| c >= 10)
    });
    let (count, sum) = sums(&id).unwrap();
    let archive = host.ferry.scratch().join("shm.tar");
    let a = archive.to_str().unwrap();
    host.run(&["checkpoint", &id, "-e", a]).ok();
    let names = {
        let mut tar =
            tar::Archive::new(zstd::Decoder::new(fs::File::open(&archive).unwrap()).unwrap());
        tar.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("checkpoint/pagemap-shmem-")),
        "no shared memory pagemap in {names:?}"
    );
    let new = host.id("shm-new");
    host.run_quiet(&["restore", "-i", a, "--name", &new, "-d"])
        .ok();
    host.ferry.wait_status(&new, "running");
    // The restored rootfs holds the sum file of the checkpoint's moment: wait for a newer one.
    let at_restore = sums(&new).map(|(c, _)| c).unwrap_or(0);
    assert!(
        at_restore >= count,
        "the restored count {at_restore} < {count}"
    );
    // Going on, not starting again: no count below the checkpoint's is ever seen.
    let mut lowest = at_restore;
    wait_for("the restored shmhold to go on counting", WAIT, || {
        let now = sums(&new).map(|(c, _)| c).unwrap_or(at_restore);
        lowest = lowest.min(now);
        now > at_restore + 2
    });
    assert_eq!(
        lowest, at_restore,
        "the restored shmhold counted from the start again"
    );
    assert_eq!(sums(&new).unwrap().1, sum, "the shared memory changed");
    host.run(&["delete", "--force", &new]).ok();
    assert_deleted(&host, &new);
}

/// What `criu check` says of nftables locking, asked directly (not through ferry).
fn criu_has_nftables_lock() -> bool {
    std::process::Command::new("criu")
        .args(["check", "--feature", "network_lock_nftables"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A process of someone else's in the container's network namespace (a pod's other
/// container, `ip netns exec`) could reach it over lo while it is frozen: the lock stays,
/// although the namespace holds nothing but lo. Alone in it, the container is not locked.
#[test]
fn a_shared_network_namespace_is_locked_even_with_only_lo() {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id("netshare");
    host.run_image("bb", &id, &["/bin/sh", "-c", "while :; do sleep 1; done"]);
    let pid = host.ferry.pid(&id);
    let lock_of = |name: &str| {
        let archive = host.ferry.scratch().join(format!("{name}.tar"));
        let stats = host.ferry.scratch().join(format!("{name}.json"));
        host.run(&[
            "checkpoint",
            &id,
            "-e",
            archive.to_str().unwrap(),
            "--leave-running",
            "--stats-file",
            stats.to_str().unwrap(),
        ])
        .ok();
        read_stats(&stats)["network_lock"].clone()
    };
    assert_eq!(lock_of("alone"), "skip");
    let mut guest = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["sleep", "60"])
        .spawn()
        .expect("nsenter (util-linux)");
    let ns = |p: u32| fs::read_link(format!("/proc/{p}/ns/net")).ok();
    wait_for("the guest to enter the namespace", WAIT, || {
        ns(guest.id()) == ns(pid as u32)
    });
    let shared = lock_of("shared");
    let _ = guest.kill();
    let _ = guest.wait();
    assert_ne!(
        shared, "skip",
        "a namespace with a guest in it was left unlocked"
    );
    host.run(&["delete", "--force", &id]).ok();
    assert_deleted(&host, &id);
}

/// A bundle running memhold with `mib` MiB, not saved yet (callers edit it, then save).
fn memhold_bundle(host: &Host, mib: &str) -> Bundle {
    let mut bundle = Bundle::new(&host.ferry, &["/bin/memhold", mib, SEED, "/tmp"]);
    bundle.with_helper("memhold");
    bundle
}

/// Creates and starts a container from `bundle` (running memhold), waits until it counts;
/// its id, its memhold and the (run id, count) it had reached.
fn start_bundle(host: &Host, bundle: &Bundle, prefix: &str) -> (String, MemHold, (u64, u64)) {
    let id = host.id(prefix);
    host.run_quiet(&["create", "--bundle", bundle.path_str(), &id])
        .ok();
    host.run(&["start", &id]).ok();
    let mem = MemHold::at(bundle.host_path("/tmp"));
    let at = mem.wait_count_above(2);
    (id, mem, at)
}

/// runc-style checkpoint of `id` into `images` (and `work`, where dump.log goes).
fn checkpoint_to(host: &Host, id: &str, images: &Path, work: &Path) {
    checkpoint_with(host, id, images, work, &[]).ok();
}

/// runc-style `checkpoint FLAGS` of `id` into `images` and `work`; the caller says ok() or
/// fails() (the output carries ferry's stderr).
fn checkpoint_with(host: &Host, id: &str, images: &Path, work: &Path, flags: &[&str]) -> Output {
    let (i, w) = (images.to_str().unwrap(), work.to_str().unwrap());
    let args = [
        &["checkpoint"],
        flags,
        &["--image-path", i, "--work-path", w, id],
    ]
    .concat();
    host.run(&args)
}

/// runc-style restore of `id` from `images` with `bundle`; the caller says ok() or fails().
fn restore_from(host: &Host, bundle: &Bundle, id: &str, images: &Path, work: &Path) -> Output {
    restore_with(host, bundle, id, images, work, &[])
}

/// runc-style `restore FLAGS -d` of `id` from `images` with `bundle`, quiet (the restored
/// container may keep what it is given as stdio); the caller says ok() or fails().
fn restore_with(
    host: &Host,
    bundle: &Bundle,
    id: &str,
    images: &Path,
    work: &Path,
    flags: &[&str],
) -> Output {
    let (i, w) = (images.to_str().unwrap(), work.to_str().unwrap());
    let b = bundle.path_str();
    let args = [
        &["restore"],
        flags,
        &["--bundle", b, "--image-path", i, "--work-path", w, "-d", id],
    ]
    .concat();
    host.run_quiet(&args)
}

/// A restored bundle container `id` (memhold, at `at` when checkpointed, its memory
/// hashing to `sum`) counts on and rehashes to `sum` (`via`: what the memory came
/// through); then it is deleted and leaves nothing.
fn bundle_goes_on_then_delete(
    host: &Host,
    bundle: &Bundle,
    id: &str,
    (mem, at, sum): (&MemHold, (u64, u64), &str),
    via: &str,
) {
    counts_on(host, id, mem, at);
    host.run(&["kill", id, "USR1"]).ok();
    assert_eq!(mem.wait_rehash(1), sum, "memory restored {via} differs");
    host.run(&["delete", "--force", id]).ok();
    assert_no_leftovers(&host.ferry, bundle, id);
}

/// A restored `id` runs and counts on from `at` (same run id), rather than restarting.
fn counts_on(host: &Host, id: &str, mem: &MemHold, at: (u64, u64)) {
    host.ferry.wait_status(id, "running");
    let (runid, _) = mem.wait_count_above(at.1);
    assert_eq!(runid, at.0, "restarted rather than restored");
}

/// Nothing of the restore's own `what` mounts is left mounted on the host.
fn no_host_mount(host: &Host, what: &str) {
    let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts
            .lines()
            .any(|l| l.contains(host.ferry.root().to_str().unwrap()) && l.contains(what)),
        "{host_mounts}"
    );
}

/// What `cmd` (a shell command) prints inside `id`.
fn inside(host: &Host, id: &str, cmd: &str) -> String {
    host.run(&["exec", id, "/bin/sh", "-c", cmd]).ok().stdout
}

#[test]
fn masked_directories_come_back_read_only_and_empty_unless_the_container_changed_them() {
    let host = Host::new();
    // /srv/left stays the empty read-only tmpfs ferry masks it with; /srv/changed is
    // remounted read-write and written by the container (it has CAP_SYS_ADMIN for that).
    let script = format!(
        "set -e; mount -o remount,rw /srv/changed; echo kept > /srv/changed/f; \
         exec /bin/memhold 8 {SEED} /tmp"
    );
    let mut bundle = Bundle::new(&host.ferry, &["/bin/sh", "-c", &script]);
    bundle
        .with_helper("memhold")
        .write_file("/srv/left/hidden", "under the mask\n", 0o644)
        .write_file("/srv/changed/hidden", "under the mask\n", 0o644)
        .edit(|s| {
            let masked = s["linux"]["maskedPaths"].as_array_mut().unwrap();
            masked.push(json!("/srv/left"));
            masked.push(json!("/srv/changed"));
            add_capability(s, "CAP_SYS_ADMIN");
        });
    bundle.save();
    let (id, mem, at) = start_bundle(&host, &bundle, "masked");
    let images = host.ferry.scratch().join("images");
    let work = host.ferry.scratch().join("work");
    checkpoint_to(&host, &id, &images, &work);
    // The untouched one was left out of CRIU's images; the changed one CRIU archived.
    let log = fs::read_to_string(work.join("dump.log")).unwrap();
    assert!(
        log.contains("ferry-masked-dir:/srv/left"),
        "/srv/left was not declared external"
    );
    assert!(
        !log.contains("ferry-masked-dir:/srv/changed"),
        "/srv/changed was declared external though the container wrote to it"
    );
    restore_from(&host, &bundle, &id, &images, &work).ok();
    counts_on(&host, &id, &mem, at);

    assert_eq!(inside(&host, &id, "cat /srv/changed/f"), "kept\n");
    assert_eq!(
        inside(&host, &id, "ls -A /srv/left"),
        "",
        "/srv/left is not empty"
    );
    let mountinfo = inside(&host, &id, "cat /proc/self/mountinfo");
    let mount_at = |point: &str| {
        mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(point))
            .unwrap_or_else(|| panic!("no mount at {point}:\n{mountinfo}"))
    };
    let left = mount_at("/srv/left");
    let (mine, fs) = left.split_once(" - ").unwrap();
    assert!(mine.split(' ').nth(5).unwrap().starts_with("ro,"), "{left}");
    assert!(fs.starts_with("tmpfs tmpfs ro"), "{left}");
    // Each masked directory has a tmpfs of its own, as it had before.
    let changed = mount_at("/srv/changed");
    assert_ne!(left.split(' ').nth(2), changed.split(' ').nth(2));
    no_host_mount(&host, "criu-masked");
    host.run(&["delete", "--force", &id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &id);
}

fn add_capability(spec: &mut serde_json::Value, cap: &str) {
    for set in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!(cap));
    }
}

/// A bundle running memhold after `setup` (a shell script), with CAP_NET_ADMIN and a
/// writable /proc/sys so the script can change its network namespace.
fn net_bundle(host: &Host, setup: &str) -> Bundle {
    let script = format!("set -e; {setup}; exec /bin/memhold 8 {SEED} /tmp");
    let mut bundle = Bundle::new(&host.ferry, &["/bin/sh", "-c", &script]);
    bundle.with_helper("memhold").edit(|s| {
        s["linux"]["readonlyPaths"] = json!([]);
        add_capability(s, "CAP_NET_ADMIN");
    });
    bundle.save();
    bundle
}

/// A container from `bundle`, paused first if `pause` (a running one has its namespace read
/// again once CRIU froze it; a paused one, like `checkpoint -e`'s, is read once), and
/// checkpointed runc-style into fresh (images, work) dirs, with `env` for the checkpoint;
/// the container's id, memhold, count reached, and the two dirs.
struct Checkpointed {
    id: String,
    mem: MemHold,
    at: (u64, u64),
    images: PathBuf,
    work: PathBuf,
}

fn checkpointed(
    host: &Host,
    bundle: &Bundle,
    prefix: &str,
    pause: bool,
    env: &[(&str, &str)],
) -> Checkpointed {
    let (id, mem, at) = start_bundle(host, bundle, prefix);
    let images = host.ferry.scratch().join(format!("images-{id}"));
    let work = host.ferry.scratch().join(format!("work-{id}"));
    if pause {
        host.run(&["pause", &id]).ok();
    }
    let (i, w) = (images.to_str().unwrap(), work.to_str().unwrap());
    host.run_quiet_env(
        env,
        &["checkpoint", "--image-path", i, "--work-path", w, &id],
    )
    .ok();
    Checkpointed {
        id,
        mem,
        at,
        images,
        work,
    }
}

#[test]
fn a_fresh_network_namespace_is_left_to_ferry_and_a_changed_one_to_criu() {
    let host = Host::new();

    // Untouched: the dump records it instead of CRIU, the restore rebuilds it.
    let bundle = net_bundle(&host, "true");
    // Running: read before the request, and again once CRIU froze it.
    let c = checkpointed(&host, &bundle, "freshnet", false, &[]);
    assert!(
        c.images.join("ferry-netns.json").exists(),
        "a fresh namespace was left to CRIU"
    );
    let log = fs::read_to_string(c.work.join("dump.log")).unwrap();
    assert!(
        !log.contains("Running ip addr save"),
        "CRIU still saved the fresh namespace"
    );
    restore_from(&host, &bundle, &c.id, &c.images, &c.work).ok();
    counts_on(&host, &c.id, &c.mem, c.at);
    let addrs = inside(&host, &c.id, "ip addr show dev lo");
    assert!(
        addrs.contains("127.0.0.1/8") && addrs.contains("::1/128") && addrs.contains(",UP"),
        "{addrs}"
    );
    host.run(&["delete", "--force", &c.id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &c.id);

    // Untouched, but the operator asks CRIU to carry it (for a host whose new namespaces
    // differ).
    let bundle = net_bundle(&host, "true");
    let c = checkpointed(
        &host,
        &bundle,
        "forcednet",
        true,
        &[("FERRY_CRIU_NETNS", "1")],
    );
    assert!(!c.images.join("ferry-netns.json").exists());
    assert!(
        fs::read_to_string(c.work.join("dump.log"))
            .unwrap()
            .contains("Running ip addr save")
    );
    wait_no_tagged(&host.ferry);

    // Changed (an address on lo, a sysctl): CRIU carries it, and both come back.
    let bundle = net_bundle(
        &host,
        "ip addr add 10.9.8.7/32 dev lo; echo 0 > /proc/sys/net/ipv4/conf/lo/accept_redirects",
    );
    let c = checkpointed(&host, &bundle, "usednet", false, &[]);
    assert!(
        !c.images.join("ferry-netns.json").exists(),
        "a changed namespace was not left to CRIU"
    );
    let log = fs::read_to_string(c.work.join("dump.log")).unwrap();
    assert!(log.contains("Running ip addr save"), "CRIU did not save it");
    restore_from(&host, &bundle, &c.id, &c.images, &c.work).ok();
    counts_on(&host, &c.id, &c.mem, c.at);
    assert!(inside(&host, &c.id, "ip addr show dev lo").contains("10.9.8.7/32"));
    assert_eq!(
        inside(
            &host,
            &c.id,
            "cat /proc/sys/net/ipv4/conf/lo/accept_redirects"
        ),
        "0\n"
    );
    host.run(&["delete", "--force", &c.id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &c.id);
}

#[test]
fn a_recorded_fresh_namespace_is_rebuilt_as_recorded_or_the_restore_fails_cleanly() {
    let host = Host::new();
    let bundle = net_bundle(&host, "true");
    let c = checkpointed(&host, &bundle, "netrec", true, &[]);
    let mark = c.images.join("ferry-netns.json");
    let recorded: serde_json::Value = serde_json::from_slice(&fs::read(&mark).unwrap()).unwrap();

    // A device this host's new namespaces do not have: refused, and nothing is left.
    let mut bad = recorded.clone();
    bad["links"]
        .as_array_mut()
        .unwrap()
        .push(json!("00000000ffff0000"));
    fs::write(&mark, serde_json::to_vec(&bad).unwrap()).unwrap();
    let out = restore_from(&host, &bundle, &c.id, &c.images, &c.work).fails();
    assert!(
        out.stderr.contains("network namespace") && out.stderr.contains("devices"),
        "{}",
        out.stderr
    );
    assert!(
        !host.ids().contains(&c.id),
        "a failed restore left the container"
    );
    assert_cgroups_gone(&c.id);

    // A sysctl the source's new namespaces started with differently (another host's
    // defaults): written back into the restored namespace.
    let key = "net/ipv4/conf/lo/accept_source_route";
    let mut other = recorded.clone();
    let was = other["sysctls"][key].as_str().unwrap().trim().to_string();
    let want = if was == "1" { "0" } else { "1" };
    other["sysctls"][key] = json!(format!("{want}\n"));
    fs::write(&mark, serde_json::to_vec(&other).unwrap()).unwrap();
    restore_from(&host, &bundle, &c.id, &c.images, &c.work).ok();
    counts_on(&host, &c.id, &c.mem, c.at);
    assert_eq!(
        inside(&host, &c.id, &format!("cat /proc/sys/{key}")).trim(),
        want
    );
    host.run(&["delete", "--force", &c.id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &c.id);
}

/// The namespace's conntrack count, read from the host through `pid`'s namespace.
fn conntracks(pid: i32) -> u64 {
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n"])
        .args(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The conntrack images CRIU wrote (it drops empty images).
fn conntrack_images(images: &Path) -> Vec<String> {
    fs::read_dir(images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("netns-ct-"))
        .collect()
}

/// The CRIU that install-deps.sh builds skips its walks of the host's conntrack table for
/// a namespace whose conntrack count is 0. One that tracks a connection still has it
/// dumped and restored.
#[test]
fn conntrack_entries_of_a_namespace_are_carried_and_none_is_not_walked_for() {
    let host = Host::new();
    // Untouched: nothing to dump, and nothing was.
    let bundle = net_bundle(&host, "true");
    let c = checkpointed(&host, &bundle, "noct", true, &[("FERRY_CRIU_NETNS", "1")]);
    assert!(conntrack_images(&c.images).is_empty());
    wait_no_tagged(&host.ferry);

    // A rule that asks for connection tracking, then a connection over lo: its closed
    // connection stays tracked (TIME_WAIT) for two minutes, with no traffic after it.
    let bundle = net_bundle(&host, "true");
    let (id, mem, at) = start_bundle(&host, &bundle, "ct");
    let pid = host.ferry.pid(&id);
    let rule = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "iptables", "-A", "OUTPUT"])
        .args([
            "-m",
            "conntrack",
            "--ctstate",
            "NEW,ESTABLISHED",
            "-j",
            "ACCEPT",
        ])
        .status()
        .unwrap();
    assert!(rule.success());
    inside(
        &host,
        &id,
        "nc -l -p 5555 >/dev/null & sleep 0.2; echo hi | nc 127.0.0.1 5555; wait",
    );
    assert!(conntracks(pid) >= 1, "the connection is not tracked");
    let images = host.ferry.scratch().join(format!("images-{id}"));
    let work = host.ferry.scratch().join(format!("work-{id}"));
    checkpoint_to(&host, &id, &images, &work);
    assert!(
        !conntrack_images(&images).is_empty(),
        "the tracked connection was not dumped"
    );
    restore_from(&host, &bundle, &id, &images, &work).ok();
    counts_on(&host, &id, &mem, at);
    assert!(
        conntracks(host.ferry.pid(&id)) >= 1,
        "the tracked connection was not restored"
    );
    host.run(&["delete", "--force", &id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &id);
}

/// Tmpfs mounts of only directories, device nodes, symlinks, fifos and empty files (/dev,
/// and here /run) are recorded by ferry and rebuilt, with their owners, modes and times;
/// one with file data (/data) is archived by CRIU as before.
#[test]
fn small_tmpfs_mounts_are_recorded_and_rebuilt_and_others_left_to_criu() {
    let host = Host::new();
    let script = format!(
        "set -e; mkdir -m 1777 /run/sticky; mkfifo -m 620 /run/fifo; : > /run/empty; \
         touch -d '2001-02-03 04:05:06' /run/empty; chown 7:9 /run/empty; \
         ln -s ../target /run/sticky/link; echo kept > /data/file; \
         exec /bin/memhold 8 {SEED} /tmp"
    );
    let mut bundle = Bundle::new(&host.ferry, &["/bin/sh", "-c", &script]);
    bundle.with_helper("memhold").edit(|s| {
        let mounts = s["mounts"].as_array_mut().unwrap();
        for (point, opts) in [("/run", "mode=755,size=1m"), ("/data", "mode=700")] {
            mounts.push(json!({
                "destination": point,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", opts],
            }));
        }
        add_capability(s, "CAP_CHOWN");
    });
    bundle.save();
    let (id, mem, at) = start_bundle(&host, &bundle, "tmpfs");
    // (/dev/pts and /dev/mqueue are other filesystems mounted anew, with new times.)
    let listing = "ls -lnR --full-time /run; ls -ln --full-time /dev | grep -v -e ' pts$' \
                   -e ' mqueue$'; stat -c '%a %u %g %F' /run /data";
    let before = inside(&host, &id, listing);
    let images = host.ferry.scratch().join("images");
    let work = host.ferry.scratch().join("work");
    checkpoint_to(&host, &id, &images, &work);

    let recorded: serde_json::Value =
        serde_json::from_slice(&fs::read(images.join("ferry-tmpfs.json")).unwrap()).unwrap();
    let points: Vec<&str> = recorded
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["point"].as_str().unwrap())
        .collect();
    assert!(
        points.contains(&"/dev") && points.contains(&"/run"),
        "{points:?}"
    );
    assert!(!points.contains(&"/data"), "a tmpfs with data was recorded");
    let log = fs::read_to_string(work.join("dump.log")).unwrap();
    assert!(
        log.contains("ferry-tmpfs:/run"),
        "/run was not declared external"
    );
    assert!(!log.contains("ferry-tmpfs:/data"));

    restore_from(&host, &bundle, &id, &images, &work).ok();
    counts_on(&host, &id, &mem, at);
    assert_eq!(inside(&host, &id, listing), before);
    assert_eq!(inside(&host, &id, "cat /data/file"), "kept\n");
    let mountinfo = inside(&host, &id, "cat /proc/self/mountinfo");
    let run = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/run"))
        .unwrap();
    assert!(
        run.contains("nosuid,nodev") && run.contains("size=1024k"),
        "{run}"
    );
    no_host_mount(&host, "criu-tmpfs");
    host.run(&["delete", "--force", &id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &id);
}

/// In a user namespace the container's tmpfs belong to that namespace: CRIU carries them,
/// to mount them there again. CRIU restores as the container's root once it has made the
/// namespace, so ferry lets that root's group search the images directory (0700 root's,
/// as the checkpoint made it) while CRIU restores, and gives the directory back as it was.
#[test]
fn a_user_namespace_container_round_trips_with_its_tmpfs_carried_by_criu() {
    let host = Host::new();
    let mut bundle = memhold_bundle(&host, "8");
    bundle.user_namespace(300000, 65536);
    bundle.edit(|s| {
        if let Some(m) = s["mounts"].as_array_mut() {
            m.retain(|m| m["type"] != "cgroup");
        }
    });
    bundle.save();
    // Its stdio on the host's /dev/null, which the container's init swaps for its own (in
    // a user namespace a bind of the host's: the same device on the same filesystem).
    let (id, mem, at) = start_bundle(&host, &bundle, "usertmpfs");
    let sum = mem.checksum().expect("memhold wrote no checksum");
    let images = host.ferry.scratch().join("images");
    let work = host.ferry.scratch().join("work");
    checkpoint_to(&host, &id, &images, &work);
    assert!(!images.join("ferry-tmpfs.json").exists());
    let carried = fs::read_dir(&images)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().starts_with("tmpfs-dev-")
        })
        .count();
    assert!(carried >= 1, "CRIU did not carry the container's tmpfs");
    let dir_before = fs::metadata(&images).unwrap();
    assert_eq!(
        dir_before.mode() & 0o777,
        0o700,
        "the test wants a private images dir"
    );
    let given_back = |dir: &Path| {
        let now = fs::metadata(dir).unwrap();
        assert_eq!(
            (now.gid(), now.mode()),
            (dir_before.gid(), dir_before.mode()),
            "the images directory was not given back as it was"
        );
    };

    // A restore CRIU fails (a truncated image) also gives the directory back.
    let broken = host.ferry.scratch().join("broken");
    fs::create_dir(&broken).unwrap();
    fs::set_permissions(&broken, fs::Permissions::from_mode(0o700)).unwrap();
    for e in fs::read_dir(&images).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), broken.join(e.file_name())).unwrap();
    }
    fs::write(broken.join("core-1.img"), b"").unwrap();
    restore_from(&host, &bundle, &id, &broken, &work).fails();
    given_back(&broken);
    assert_deleted(&host, &id);

    restore_from(&host, &bundle, &id, &images, &work).ok();
    counts_on(&host, &id, &mem, at);
    host.run(&["kill", &id, "USR1"]).ok();
    assert_eq!(mem.wait_rehash(1), sum, "restored memory differs");
    let pid = host.ferry.state(&id)["pid"].as_i64().unwrap();
    let map = fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "300000", "65536"],
        "the restored process is not in the container's user namespace"
    );
    let dev = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(
        dev.lines()
            .any(|l| l.split(' ').nth(4) == Some("/dev") && l.contains(" - tmpfs ")),
        "no tmpfs on /dev after the restore: {dev}"
    );
    given_back(&images);
    host.run(&["delete", "--force", &id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &id);
}

/// A CRIU daemon the test started, killed if the test fails before it ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}

/// runc-style `checkpoint --page-server`: the memory goes to a `criu page-server` over TCP
/// (here into the same images directory, as on a host that receives the dump), the rest
/// to the images directory; restoring from it brings the same memory back.
#[test]
fn page_server_receives_the_memory_and_the_restore_uses_it() {
    let host = Host::new();
    let bundle = memhold_bundle(&host, "16");
    bundle.save();
    let (id, mem, at) = start_bundle(&host, &bundle, "pgsrv");
    let sum = mem.checksum().expect("memhold wrote no checksum");
    let images = host.ferry.scratch().join("images");
    let work = host.ferry.scratch().join("work");
    let server_work = host.ferry.scratch().join("server-work");
    fs::create_dir_all(&images).unwrap();
    fs::create_dir_all(&server_work).unwrap();
    let port = free_port();
    let mut server = Daemon(
        std::process::Command::new(CRIU)
            .args([
                "page-server",
                "--address",
                "127.0.0.1",
                "--port",
                &port,
                "-D",
            ])
            .arg(&images)
            .arg("-W")
            .arg(&server_work)
            .args(["-v4", "-o", "page-server.log"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // CRIU runs its status-ready step once it listens (it logs "Starting" before).
    wait_for("criu page-server to listen", WAIT, || {
        fs::read_to_string(server_work.join("page-server.log"))
            .is_ok_and(|l| l.contains("Running status-ready scripts"))
    });
    let page_server = format!("127.0.0.1:{port}");
    checkpoint_with(&host, &id, &images, &work, &["--page-server", &page_server]).ok();
    assert!(
        server.0.wait().unwrap().success(),
        "criu page-server failed"
    );
    let dump = fs::read_to_string(work.join("dump.log")).unwrap();
    assert!(
        dump.contains(&format!("Connecting to server 127.0.0.1:{port}")),
        "the dump did not send its pages to the page server"
    );
    assert!(
        fs::read_dir(&images).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("pages-")),
        "the page server wrote no pages"
    );
    restore_from(&host, &bundle, &id, &images, &work).ok();
    bundle_goes_on_then_delete(&host, &bundle, &id, (&mem, at, &sum), "from a page server");
}

/// runc's lazy migration (its checkpoint.bats does the same): `checkpoint --lazy-pages
/// --page-server` dumps everything but the memory and says on `--status-fd` when its page
/// server is up; CRIU's lazy-pages daemon fetches the pages from it as the restored
/// container (`restore --lazy-pages`, a new id beside the frozen source) touches them. The
/// source is gone once every page has moved; the copy counts on with the same memory.
#[test]
fn lazy_pages_move_the_memory_after_the_restore_through_criu_page_server() {
    use std::io::Read;
    use std::os::fd::{AsRawFd, OwnedFd};
    let host = Host::new();
    let lazy_ok = std::process::Command::new(CRIU)
        .args(["check", "--feature", "uffd-noncoop"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        lazy_ok,
        "this kernel or CRIU lacks uffd-noncoop (userfaultfd)"
    );
    let bundle = memhold_bundle(&host, "16");
    bundle.save();
    let (id, mem, at) = start_bundle(&host, &bundle, "lazy");
    let sum = mem.checksum().expect("memhold wrote no checksum");
    let images = host.ferry.scratch().join("images");
    let work = host.ferry.scratch().join("work");
    let lazy_work = host.ferry.scratch().join("lazy-work");
    fs::create_dir_all(&lazy_work).unwrap();
    let port = free_port();
    let page_server = format!("127.0.0.1:{port}");

    let (status_r, status_w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    let mut ck = host.command(&[
        "checkpoint",
        "--lazy-pages",
        "--page-server",
        &page_server,
        "--status-fd",
        "3",
        "--image-path",
        images.to_str().unwrap(),
        "--work-path",
        work.to_str().unwrap(),
        &id,
    ]);
    let w = status_w.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; the pipe's write end becomes the child's fd 3.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut ck, move || {
            if libc::dup2(w, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let ck = ck
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(status_w);
    let mut ready = [1u8; 1];
    let n = fs::File::from(status_r).read(&mut ready).unwrap();
    assert_eq!((n, ready[0]), (1, 0), "no ready byte on --status-fd");
    assert!(images.join("inventory.img").exists());
    assert_eq!(
        host.ferry.status(&id).as_deref(),
        Some("running"),
        "the source must wait, frozen, for its pages to move"
    );

    let mut daemon = Daemon(
        std::process::Command::new(CRIU)
            .args(["lazy-pages", "--page-server", "--address", "127.0.0.1"])
            .args(["--port", &port, "-D"])
            .arg(&images)
            .arg("-W")
            .arg(&lazy_work)
            .args(["-v4", "-o", "lazy-pages.log"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the lazy-pages daemon's socket", WAIT, || {
        lazy_work.join("lazy-pages.socket").exists()
    });
    let copy = host.id("lazycopy");
    // Its work dir is the daemon's: restore finds lazy-pages.socket there.
    restore_with(
        &host,
        &bundle,
        &copy,
        &images,
        &lazy_work,
        &["--lazy-pages"],
    )
    .ok();
    let ck = ck.wait_with_output().unwrap();
    assert!(
        ck.status.success(),
        "checkpoint --lazy-pages failed: {}",
        String::from_utf8_lossy(&ck.stderr)
    );
    assert!(daemon.0.wait().unwrap().success(), "criu lazy-pages failed");
    assert!(!host.ids().contains(&id), "the source outlived its pages");
    bundle_goes_on_then_delete(&host, &bundle, &copy, (&mem, at, &sum), "lazily");
}

/// A named network namespace (`ip netns add`), removed when dropped.
struct NetNs(String);

impl NetNs {
    fn add(name: &str) -> NetNs {
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} (iproute2)");
        NetNs(name.to_string())
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// A container that joins a network namespace by path (podman's with netavark, a CNI
/// plugin's): the namespace is not the container's to carry. The dump declares it
/// external (`extRootNetNS`, as runc does) and the restore puts the container back into
/// the same namespace, still holding its address; runc's checkpoint.bats has the same.
#[test]
fn a_joined_network_namespace_stays_outside_the_images_and_is_joined_again() {
    let host = Host::new();
    let netns = NetNs::add(&host.id("extnet"));
    let ip = |args: &str| {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ip netns exec {} ip {args}", netns.0))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {args} in {}", netns.0);
    };
    ip("link set lo up");
    ip("addr add 192.0.2.7/32 dev lo");
    let mut bundle = memhold_bundle(&host, "8");
    bundle.namespace("network", Some(&netns.path()));
    bundle.save();
    let (id, mem, at) = start_bundle(&host, &bundle, "extnet");
    let inode = |p: &str| fs::metadata(p).map(|m| m.ino()).unwrap();
    let ns_inode = inode(&netns.path());
    let of_container = |id: &str| inode(&format!("/proc/{}/ns/net", host.ferry.pid(id)));
    assert_eq!(of_container(&id), ns_inode);
    let images = host.ferry.scratch().join("images");
    let work = host.ferry.scratch().join("work");
    checkpoint_to(&host, &id, &images, &work);
    let dump = fs::read_to_string(work.join("dump.log")).unwrap();
    assert!(
        dump.contains(&format!("net[{ns_inode}] netns is external")),
        "the joined namespace net[{ns_inode}] was not declared external"
    );
    assert!(
        !fs::read_dir(&images).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("ifaddr-")),
        "CRIU carried the joined namespace's addresses"
    );
    restore_from(&host, &bundle, &id, &images, &work).ok();
    counts_on(&host, &id, &mem, at);
    assert_eq!(
        of_container(&id),
        ns_inode,
        "restored into another namespace"
    );
    assert!(
        inside(&host, &id, "ip -o addr show dev lo").contains("192.0.2.7"),
        "the namespace's address is gone"
    );
    host.run(&["delete", "--force", &id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &id);
}

/// `ferry ARGS` with its stdin, stdout and stderr on the terminal `tty` (a pty slave).
fn on_terminal(host: &Host, tty: &std::os::fd::OwnedFd, args: &[&str]) -> std::process::Output {
    let io = || std::process::Stdio::from(tty.try_clone().unwrap());
    host.command(args)
        .stdin(io())
        .stdout(io())
        .stderr(io())
        .output()
        .unwrap()
}

/// A container started from a shell, its stdio on the caller's terminal rather than one
/// of its own (`process.terminal` false): runc's `--shell-job`. Without it ferry says what
/// to do before freezing anything; with it CRIU keeps the terminal out of the images, and
/// the restore (with `--shell-job` too) puts the container on the restoring shell's
/// terminal, counting on with its memory.
#[test]
fn a_shell_job_is_restored_onto_the_terminal_of_its_restore() {
    let host = Host::new();
    let bundle = memhold_bundle(&host, "8");
    bundle.save();
    let first = nix::pty::openpty(None, None).unwrap();
    let id = host.id("shelljob");
    let created = on_terminal(
        &host,
        &first.slave,
        &["create", "--bundle", bundle.path_str(), &id],
    );
    assert!(
        created.status.success(),
        "ferry create on a terminal failed"
    );
    host.run(&["start", &id]).ok();
    let mem = MemHold::at(bundle.host_path("/tmp"));
    let at = mem.wait_count_above(2);
    let sum = mem.checksum().expect("memhold wrote no checksum");
    let images = host.ferry.scratch().join("images");
    let (i, w) = (images.to_str().unwrap(), images.to_str().unwrap());
    let refused = checkpoint_with(&host, &id, &images, &images, &[]).fails();
    assert!(
        refused.stderr.contains("a terminal outside the container")
            && refused.stderr.contains("--shell-job"),
        "{}",
        refused.stderr
    );
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    checkpoint_with(&host, &id, &images, &images, &["--shell-job"]).ok();
    drop(first);

    // Restored without a terminal to give it, it fails, says why, and leaves nothing.
    let b = bundle.path_str();
    let rest = [
        "--bundle",
        b,
        "--image-path",
        i,
        "--work-path",
        w,
        "-d",
        &id,
    ];
    let out = host
        .run(&[&["restore", "--shell-job"], &rest[..]].concat())
        .fails();
    assert!(out.stderr.contains("from a terminal"), "{}", out.stderr);
    assert_deleted(&host, &id);

    let second = nix::pty::openpty(None, None).unwrap();
    let restored = on_terminal(
        &host,
        &second.slave,
        &[&["restore", "--shell-job"], &rest[..]].concat(),
    );
    assert!(
        restored.status.success(),
        "restore --shell-job failed: {}",
        fs::read_to_string(images.join("restore.log")).unwrap_or_default()
    );
    host.ferry.wait_status(&id, "running");
    let tty = nix::unistd::ttyname(&second.slave).unwrap();
    let pid = host.ferry.pid(&id);
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        tty,
        "the shell job is not on its restore's terminal"
    );
    bundle_goes_on_then_delete(&host, &bundle, &id, (&mem, at, &sum), "as a shell job");
}

/// runc's `--manage-cgroups-mode` on both sides: soft, full and ignore each bring the
/// container back into its own cgroup with its limit; strict, which makes CRIU refuse any
/// cgroup that exists, is refused before anything is made (ferry, like runc, makes the
/// container's cgroup before CRIU restores into it), and says what to use instead.
#[test]
fn every_cgroup_mode_restores_into_the_containers_cgroup_and_strict_is_refused_first() {
    let host = Host::new();
    let pids_max = |pid: i32| {
        fs::read_to_string(cgroup_dir(pid, "pids").join("pids.max"))
            .unwrap()
            .trim()
            .to_string()
    };
    for mode in ["soft", "full", "ignore", "strict"] {
        // A bundle each: memhold's files from the last round would pass for the new one's.
        let mut bundle = memhold_bundle(&host, "8");
        bundle.resources(json!({ "pids": { "limit": 77 } }));
        bundle.save();
        let (id, mem, at) = start_bundle(&host, &bundle, mode);
        let cgroup = cgroup_dir(host.ferry.pid(&id), "pids");
        let images = host.ferry.scratch().join(format!("images-{mode}"));
        let work = host.ferry.scratch().join(format!("work-{mode}"));
        let flag = ["--manage-cgroups-mode", mode];
        checkpoint_with(&host, &id, &images, &work, &flag).ok();
        if mode == "strict" {
            let (i, w) = (images.to_str().unwrap(), work.to_str().unwrap());
            let b = bundle.path_str();
            let rest = [
                "--bundle",
                b,
                "--image-path",
                i,
                "--work-path",
                w,
                "-d",
                &id,
            ];
            let out = host
                .run(&[&["restore"], &flag[..], &rest[..]].concat())
                .fails();
            assert!(
                out.stderr.contains("strict") && out.stderr.contains("use full"),
                "{}",
                out.stderr
            );
            assert_deleted(&host, &id);
            assert!(cgroup_dirs_for(&id).is_empty(), "strict left a cgroup");
            continue;
        }
        restore_with(&host, &bundle, &id, &images, &work, &flag).ok();
        counts_on(&host, &id, &mem, at);
        let pid = host.ferry.pid(&id);
        assert_eq!(cgroup_dir(pid, "pids"), cgroup, "{mode}: another cgroup");
        assert_eq!(pids_max(pid), "77", "{mode}: the limit is gone");
        host.run(&["delete", "--force", &id]).ok();
        assert_no_leftovers(&host.ferry, &bundle, &id);
    }
}

/// The next "tick N" `sock` receives from dgramlog, as N; None when none comes (within
/// the socket's timeout, or at once on a non-blocking socket).
fn tick(sock: &std::os::unix::net::UnixDatagram) -> Option<u64> {
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).ok()?;
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    let n = msg.strip_prefix("tick ").and_then(|v| v.parse().ok());
    Some(n.unwrap_or_else(|| panic!("not a tick: {msg:?}")))
}

/// A container that logs to a syslog-style datagram socket of the host, bound into it at
/// the same path (as /dev/log or journald's socket are): its connected socket's peer is
/// outside the container. Without `--ext-unix-sk` CRIU refuses, ferry says which flag,
/// and the container runs on; with it on both sides the restored process is connected to
/// the same listener again (CRIU connects by the peer's name) and counts on where it was.
/// The container is on the host's network (podman --network host): CRIU looks for a unix
/// socket's peer only in the dumped network namespace.
#[test]
fn ext_unix_sk_carries_a_socket_connected_to_a_listener_outside() {
    let host = Host::new();
    let logdir = host.ferry.scratch().join("log");
    fs::create_dir_all(&logdir).unwrap();
    let listener = std::os::unix::net::UnixDatagram::bind(logdir.join("sock")).unwrap();
    let next_tick = |l: &std::os::unix::net::UnixDatagram| tick(l).expect("no tick in 10 s");
    listener
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let sock = logdir.join("sock");
    let mut bundle = Bundle::new(&host.ferry, &["/bin/dgramlog", sock.to_str().unwrap()]);
    bundle.with_helper("dgramlog").edit(|s| {
        let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": logdir.to_str().unwrap(),
            "type": "bind",
            "source": logdir.to_str().unwrap(),
            "options": ["rbind", "rw"],
        }));
    });
    bundle.save();
    let id = host.id("extunix");
    host.run_quiet(&["create", "--bundle", bundle.path_str(), &id])
        .ok();
    host.run(&["start", &id]).ok();
    next_tick(&listener);
    let images = host.ferry.scratch().join("images");
    let refused = checkpoint_with(&host, &id, &images, &images, &[]).fails();
    assert!(refused.stderr.contains("ext-unix-sk"), "{}", refused.stderr);
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    let before = next_tick(&listener);
    assert!(before > 1);
    fs::remove_dir_all(&images).unwrap();
    let flag = ["--ext-unix-sk"];
    checkpoint_with(&host, &id, &images, &images, &flag).ok();
    // Drain what was sent before the freeze.
    listener.set_nonblocking(true).unwrap();
    let mut last = before;
    while let Some(n) = tick(&listener) {
        last = n;
    }
    listener.set_nonblocking(false).unwrap();
    restore_with(&host, &bundle, &id, &images, &images, &flag).ok();
    let after = next_tick(&listener);
    assert_eq!(
        after,
        last + 1,
        "restarted or lost its place: {last} then {after}"
    );
    host.run(&["delete", "--force", &id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &id);
}

/// Whether someone else holds a flock on `path` (a non-blocking try fails).
fn flocked(path: &Path) -> bool {
    let f = fs::OpenOptions::new().read(true).open(path).unwrap();
    // SAFETY: flock on an fd we own.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    rc != 0
}

/// The pid holding a POSIX write lock on `path`, as F_GETLK reports it (in our pid
/// namespace), if any.
fn posix_lock_holder(path: &Path) -> Option<i32> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: a zeroed flock is a valid argument; F_GETLK fills it in.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = libc::F_WRLCK as i16;
    l.l_whence = libc::SEEK_SET as i16;
    // SAFETY: F_GETLK on an fd we own with a pointer to our struct.
    let rc = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_GETLK, &mut l) };
    assert_eq!(rc, 0, "F_GETLK: {}", std::io::Error::last_os_error());
    (l.l_type != libc::F_UNLCK as i16).then_some(l.l_pid)
}

/// podman passes `--file-locks` on every checkpoint and restore: a container holding an
/// flock and a POSIX record lock is refused without it (and runs on), and with it comes
/// back holding both locks, counting on with its memory.
#[test]
fn file_locks_are_held_again_by_the_restored_container() {
    let host = Host::new();
    let mut bundle = Bundle::new(
        &host.ferry,
        &[
            "/bin/lockhold",
            "/tmp/flock",
            "/tmp/posix",
            "/bin/memhold",
            "8",
            SEED,
            "/tmp",
        ],
    );
    bundle.with_helper("lockhold").with_helper("memhold").save();
    let (id, mem, at) = start_bundle(&host, &bundle, "locks");
    let sum = mem.checksum().expect("memhold wrote no checksum");
    let (flock_file, posix_file) = (
        bundle.host_path("/tmp/flock"),
        bundle.host_path("/tmp/posix"),
    );
    assert!(flocked(&flock_file));
    assert_eq!(posix_lock_holder(&posix_file), Some(host.ferry.pid(&id)));
    let images = host.ferry.scratch().join("images");
    let refused = checkpoint_with(&host, &id, &images, &images, &[]).fails();
    assert!(refused.stderr.contains("file-locks"), "{}", refused.stderr);
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    fs::remove_dir_all(&images).unwrap();
    let flag = ["--file-locks"];
    checkpoint_with(&host, &id, &images, &images, &flag).ok();
    assert!(
        !flocked(&flock_file),
        "the dumped container still holds its flock"
    );
    restore_with(&host, &bundle, &id, &images, &images, &flag).ok();
    host.ferry.wait_status(&id, "running");
    assert!(flocked(&flock_file), "the flock was not restored");
    assert_eq!(
        posix_lock_holder(&posix_file),
        Some(host.ferry.pid(&id)),
        "the POSIX lock is not held by the restored container"
    );
    bundle_goes_on_then_delete(&host, &bundle, &id, (&mem, at, &sum), "with its locks");
}

/// runc's `--empty-ns network`: the network namespace is dumped as a bare one (whoever
/// set it up, such as a CNI plugin, sets it up again after the restore), so an address the
/// container had is not carried, and nothing is refused or left over for it.
#[test]
fn empty_ns_network_restores_a_bare_network_namespace() {
    let host = Host::new();
    let script = format!(
        "ip link set lo up && ip addr add 192.0.2.9/32 dev lo && \
         exec /bin/memhold 8 {SEED} /tmp"
    );
    let mut bundle = Bundle::new(&host.ferry, &["/bin/sh", "-c", &script]);
    bundle
        .with_helper("memhold")
        .edit(|s| add_capability(s, "CAP_NET_ADMIN"));
    bundle.save();
    let (id, mem, at) = start_bundle(&host, &bundle, "emptyns");
    assert!(inside(&host, &id, "ip -o addr show dev lo").contains("192.0.2.9"));
    let images = host.ferry.scratch().join("images");
    checkpoint_with(&host, &id, &images, &images, &["--empty-ns", "network"]).ok();
    restore_from(&host, &bundle, &id, &images, &images).ok();
    counts_on(&host, &id, &mem, at);
    let addrs = inside(&host, &id, "ip -o addr show");
    assert!(
        !addrs.contains("192.0.2.9"),
        "the address was carried: {addrs}"
    );
    let pid = host.ferry.pid(&id);
    assert_ne!(
        fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        fs::read_link("/proc/self/ns/net").unwrap(),
        "the restored container is on the host's network"
    );
    host.run(&["delete", "--force", &id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &id);
}

/// `archive` rewritten as ferry wrote archives until 2026-11-29 (format 2): no pages
/// index, every part listed in the manifest; signed again with `host`'s own key.
fn as_format_2(host: &Host, archive: &Path) -> PathBuf {
    use ferry::archive::manifest::{Entry, MANIFEST_NAME, SignedManifest};
    use sha2::Digest;
    let (mut entries, mut m) = read_entries(archive);
    entries.retain(|(name, _)| !name.ends_with(".img.index"));
    assert_eq!(m.format, 3, "ferry writes format 3");
    assert!(
        entries.iter().any(|(n, _)| n.contains(".img.part")),
        "no pages parts in {}",
        archive.display()
    );
    m.format = 2;
    m.entries = entries
        .iter()
        .map(|(name, data)| Entry {
            name: name.clone(),
            sha256: hex::encode(sha2::Sha256::digest(data)),
            size: data.len() as u64,
        })
        .collect();
    let id = ferry::identity::Identity::load_or_create(&host.storage).unwrap();
    let signed = serde_json::to_vec(&SignedManifest::sign(&m, &id)).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries.iter().chain([&(MANIFEST_NAME.to_string(), signed)]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    let out = archive.with_extension("format2.tar");
    fs::write(&out, b.into_inner().unwrap()).unwrap();
    out
}

/// An archive of format 2 (pages parts listed one by one, as ferry wrote them until
/// 2026-11-29) still restores, from a file (its pages found by seeking and copied in) and
/// through a pipe, with its memory whole.
#[test]
fn an_archive_of_format_2_still_restores() {
    let (host, id, at, sum) = counting_memhold("fmt2", "16");
    let archive = host.ferry.scratch().join("a.tar");
    host.run(&[
        "checkpoint",
        &id,
        "-e",
        archive.to_str().unwrap(),
        "--compress",
        "none",
    ])
    .ok();
    let old = as_format_2(&host, &archive);
    let from_file = host.id("fmt2-file");
    host.run_quiet(&[
        "restore",
        "-i",
        old.to_str().unwrap(),
        "--name",
        &from_file,
        "-d",
    ])
    .ok();
    goes_on_with_its_memory_then_delete(&host, &from_file, at, &sum, "a format 2 file");

    let piped = host.id("fmt2-pipe");
    let out = host
        .command(&["restore", "-i", "-", "--name", &piped, "-d"])
        .stdin(fs::File::open(&old).unwrap())
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore -i - of a format 2 archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    goes_on_with_its_memory_then_delete(&host, &piped, at, &sum, "a format 2 pipe");
}
