//! The argv lines podman sends a runtime for checkpoint and restore (CONTRACTS.md §2.4), run
//! against ferry directly; then Debian's podman itself with `--runtime <ferry>` checkpointing
//! a running busybox container into an archive (`podman container checkpoint -e`) and
//! bringing it back (`podman container restore -i`). podman runs with a private root,
//! runroot and tmpdir, vfs storage and cgroupfs, as in tests/podman.rs.

#[path = "common/ckpt.rs"]
mod ckpt;
mod common;
#[path = "common/podman.rs"]
mod podman_env;

use ckpt::*;
use common::*;
use podman_env::*;
use std::fs;
use std::path::Path;

const SEED: &str = "0x90d";

/// A shell counting in /tmp/count every 100 ms. Each value is written beside and renamed
/// over, so a reader never sees the file truncated and empty (`echo > file` truncates
/// first: a `podman exec cat` once read nothing in between).
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; \
     sleep 0.1; done";

#[test]
fn podman_checkpoint_and_restore_argv_lines_against_ferry() {
    let host = Host::new();
    let mut bundle = Bundle::new(&host.ferry, &["/bin/memhold", "4", SEED, "/tmp"]);
    bundle.with_helper("memhold");
    bundle.save();
    let b = bundle.path_str().to_string();
    let id = host.id("podargv");
    // conmon's create line.
    let pid_file = format!("{b}/pidfile");
    host.run_quiet(&["create", "--bundle", &b, "--pid-file", &pid_file, &id])
        .ok();
    host.run(&["start", &id]).ok();
    let mem = MemHold::at(bundle.host_path("/tmp"));
    let (runid, _) = mem.wait_count_above(2);
    let oci_log = format!("{b}/oci-log");
    let images = format!("{b}/checkpoint");

    // podman container checkpoint --keep-running: --leave-running twice.
    host.run(&[
        "--log-format=json",
        "--log",
        &oci_log,
        "checkpoint",
        "--image-path",
        &images,
        "--work-path",
        &b,
        "--leave-running",
        "--file-locks",
        "--leave-running",
        &id,
    ])
    .ok();
    assert!(
        Path::new(&format!("{b}/dump.log")).exists(),
        "no dump.log in the work path"
    );
    assert!(
        Path::new(&format!("{b}/stats-dump")).exists(),
        "no stats-dump in the work path"
    );
    assert!(Path::new(&format!("{images}/inventory.img")).exists());
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    let (_, c) = mem.count().unwrap();
    mem.wait_count_above(c + 1);

    // podman container checkpoint: the container is gone afterwards.
    fs::remove_dir_all(&images).unwrap();
    host.run(&[
        "--log-format=json",
        "--log",
        &oci_log,
        "checkpoint",
        "--image-path",
        &images,
        "--work-path",
        &b,
        &id,
    ])
    .ok();
    assert!(
        !host.ids().contains(&id),
        "runc's rule: a checkpointed container is removed"
    );
    wait_no_tagged(&host.ferry);
    let (_, before) = mem.count().unwrap();

    // conmon's restore line (podman creates restore.log beforehand).
    fs::write(format!("{b}/restore.log"), "").unwrap();
    let _ = fs::remove_file(&pid_file);
    let out = host.run_quiet(&[
        "--log-format=json",
        "--log",
        &oci_log,
        "restore",
        "--bundle",
        &b,
        "--pid-file",
        &pid_file,
        "--no-new-keyring",
        "--detach",
        "--image-path",
        &images,
        "--work-path",
        &b,
        "--file-locks",
        "--tcp-close",
        &id,
    ]);
    assert!(
        out.success(),
        "podman's restore line failed: {}\n{}",
        out.stderr,
        fs::read_to_string(format!("{b}/restore.log")).unwrap_or_default()
    );
    let pid: i32 = fs::read_to_string(&pid_file)
        .expect("conmon reads --pid-file: a missing one counts as failure")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, host.ferry.pid(&id));
    assert!(
        fs::metadata(format!("{b}/restore.log")).unwrap().len() > 0,
        "CRIU's restore.log is not in the work path"
    );
    assert!(
        Path::new(&format!("{b}/stats-restore")).exists(),
        "no stats-restore in the work path"
    );
    let (runid2, _) = mem.wait_count_above(before);
    assert_eq!(runid2, runid, "restarted rather than restored");
    // Every line of the oci-log is one JSON object (podman parses it that way).
    for line in fs::read_to_string(&oci_log).unwrap_or_default().lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("oci-log line is not JSON ({e}): {line}"));
    }
    host.run(&["kill", &id, "TERM"]).ok();
    host.ferry.wait_status(&id, "stopped");
    host.run(&["delete", &id]).ok();
    assert_no_leftovers(&host.ferry, &bundle, &id);
}

#[test]
fn podman_container_checkpoint_export_and_restore_import_with_ferry() {
    podman_export_import_round_trip("podck", &[]);
}

/// The same with the container in a user namespace of its own (`--uidmap`/`--gidmap`):
/// ferry's restore lets the mapped root search podman's images directory.
#[test]
fn podman_checkpoint_export_and_restore_import_of_a_user_namespaced_container() {
    podman_export_import_round_trip(
        "podckuns",
        &["--uidmap", "0:400000:65536", "--gidmap", "0:400000:65536"],
    );
}

/// `podman run -d --name NAME --network none EXTRA IMAGE` running [`COUNTER`].
fn run_counter(podman: &Podman, image: &str, name: &str, extra: &[&str]) {
    let head = ["run", "-d", "--name", name, "--network", "none"];
    podman
        .run(&[&head[..], extra, &[image, "sh", "-c", COUNTER]].concat())
        .ok();
}

/// Where container `name`'s counter is (0 when it cannot be read).
fn count_of(podman: &Podman, name: &str) -> u64 {
    let out = podman.run(&["exec", name, "cat", "/tmp/count"]);
    out.stdout.trim().parse().unwrap_or(0)
}

/// `podman run -d EXTRA` a counting busybox, `podman container checkpoint -e`, remove it,
/// `podman container restore -i`: it runs again and counts on.
fn podman_export_import_round_trip(prefix: &str, extra: &[&str]) {
    require_criu();
    let podman = Podman::new();
    let image = pull(&podman);
    let name = unique_id(prefix);
    run_counter(&podman, &image, &name, extra);
    let count = |podman: &Podman| count_of(podman, &name);
    let mut before = 0;
    wait_for("the podman container to count", WAIT, || {
        before = count(&podman);
        before > 5
    });
    let archive = podman.dir.join("ck.tar.gz");
    let out = podman.run(&[
        "container",
        "checkpoint",
        "-e",
        archive.to_str().unwrap(),
        &name,
    ]);
    assert!(
        out.success(),
        "podman container checkpoint -e failed: {out:?}"
    );
    // podman shows the runtime's stderr: nothing from ferry is for its user here.
    assert!(!out.stderr.contains("level=warning"), "{out:?}");
    assert!(archive.exists(), "podman wrote no archive");
    // Given to ferry, podman's archive is named for what it is, and left as it was.
    let host = Host::new();
    let before_bytes = fs::read(&archive).unwrap();
    let refused = host.run_quiet(&[
        "restore",
        "-i",
        archive.to_str().unwrap(),
        "--name",
        &host.id("podman-archive"),
    ]);
    assert!(
        !refused.success() && refused.stderr.contains("made by podman"),
        "ferry restore -i of podman's archive: {refused:?}"
    );
    assert_eq!(fs::read(&archive).unwrap(), before_bytes);
    podman.run(&["rm", "--force", &name]).ok();
    let out = podman.run(&["container", "restore", "-i", archive.to_str().unwrap()]);
    assert!(out.success(), "podman container restore -i failed: {out:?}");
    let out = podman
        .run(&["ps", "--format", "{{.Names}} {{.Status}}"])
        .ok();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&name) && l.contains("Up")),
        "{out:?}"
    );
    // The shell's own variable goes on: restored, not restarted.
    let after = count(&podman);
    assert!(
        after >= before,
        "the count restarted: {after} after {before}"
    );
    wait_for("the restored container to count on", WAIT, || {
        count(&podman) > after
    });
    podman.rm_force(&[&name]);
}

/// podman's other migration-like use: `checkpoint -e --leave-running`, then `restore -i
/// --name COPY` beside the original, both running through ferry and each counting on its
/// own from where the checkpoint left them.
#[test]
fn podman_restores_a_copy_under_a_new_name_beside_the_running_original() {
    require_criu();
    let podman = Podman::new();
    let image = pull(&podman);
    let name = unique_id("podorig");
    let copy = unique_id("podcopy");
    run_counter(&podman, &image, &name, &[]);
    let count = |c: &str| count_of(&podman, c);
    wait_for("the podman container to count", WAIT, || count(&name) > 5);
    let archive = podman.dir.join("ck.tar.gz");
    let a = archive.to_str().unwrap();
    let out = podman.run(&["container", "checkpoint", "--leave-running", "-e", a, &name]);
    assert!(
        out.success(),
        "checkpoint -e --leave-running failed: {out:?}"
    );
    let at_checkpoint = count(&name);
    let out = podman.run(&["container", "restore", "-i", a, "--name", &copy]);
    assert!(out.success(), "restore -i --name failed: {out:?}");
    let ps = podman
        .run(&["ps", "--format", "{{.Names}} {{.Status}}"])
        .ok();
    for c in [&name, &copy] {
        assert!(
            ps.stdout
                .lines()
                .any(|l| l.starts_with(c.as_str()) && l.contains("Up")),
            "{c} is not up: {ps:?}"
        );
    }
    // The copy goes on from the checkpoint, not from 0, and so stays behind the original,
    // which never stopped (read in that order: the original's count only grows).
    let from = count(&copy);
    let original = count(&name);
    assert!(
        from > 5 && from <= original,
        "copy at {from}, original at {original}, checkpoint ended at {at_checkpoint}"
    );
    wait_for("the copy to count on", WAIT, || count(&copy) > from);
    wait_for("the original to count on", WAIT, || {
        count(&name) > at_checkpoint
    });
    podman.rm_force(&[&name, &copy]);
}
