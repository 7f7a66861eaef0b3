//! After delete nothing of a container is left on the host: no state directory, no mounts,
//! no cgroups, no processes, whatever state it was deleted from.

mod common;

use common::*;

#[test]
fn delete_of_a_stopped_container() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sh", "-c", "exit 0"]);
    let id = ferry.id("lo-stop");
    ferry.start_container(&bundle, &id);
    ferry.wait_status(&id, "stopped");
    ferry.run(&["delete", &id]).ok();
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn delete_of_a_created_container() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    let id = ferry.id("lo-created");
    ferry.create(&bundle, &id).ok();
    let pid = ferry.pid(&id);
    ferry.run(&["delete", "--force", &id]).ok();
    wait_for("the created init to die", WAIT, || is_zombie_or_gone(pid));
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn force_delete_of_a_running_container_with_children_and_execs() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(
        &ferry,
        &[
            "sh",
            "-c",
            "sleep 100000 & sleep 100000 & exec sleep 100000",
        ],
    );
    let id = ferry.id("lo-run");
    ferry.start_container(&bundle, &id);
    ferry
        .run(&[
            "exec",
            "-d",
            &id,
            "sh",
            "-c",
            "trap '' TERM; exec sleep 100000",
        ])
        .ok();
    let pid = ferry.pid(&id);
    let procs = std::fs::read_to_string(cgroup_dir(pid, "pids").join("cgroup.procs")).unwrap();
    let pids: Vec<i32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(pids.len() >= 4, "init, two children and the exec: {pids:?}");
    // The leftover check finds processes by their tag: make sure it sees these.
    let tagged = tagged_processes(&ferry.tag);
    assert!(
        pids.iter().all(|p| tagged.contains(p)),
        "container processes {pids:?} not all found by tag ({tagged:?})"
    );
    ferry.run(&["delete", "--force", &id]).ok();
    for p in pids {
        wait_for(&format!("process {p} to die"), WAIT, || {
            is_zombie_or_gone(p)
        });
    }
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn delete_after_run_detached_and_kill() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["/bin/counter", "4", "/count"]);
    bundle.with_helper("counter");
    bundle.save();
    let id = ferry.id("lo-det");
    ferry
        .run(&["run", "-d", "--bundle", bundle.path_str(), &id])
        .ok();
    wait_counter_above(&bundle.host_path("/count"), 1);
    ferry.run(&["kill", &id, "TERM"]).ok();
    ferry.wait_status(&id, "stopped");
    ferry.run(&["delete", &id]).ok();
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn foreground_run_cleans_up_after_itself() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sh", "-c", "echo done"]);
    bundle.mount(serde_json::json!({
        "destination": "/scratch", "type": "tmpfs", "source": "tmpfs"
    }));
    bundle.save();
    let id = ferry.id("lo-fg");
    ferry.run(&["run", "--bundle", bundle.path_str(), &id]).ok();
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn many_containers_in_one_root_leave_nothing() {
    let ferry = Ferry::new();
    let mut made = Vec::new();
    for _ in 0..4 {
        let bundle = Bundle::new(&ferry, &["sleep", "100000"]);
        let id = ferry.id("lo-many");
        ferry.start_container(&bundle, &id);
        made.push((bundle, id));
    }
    for (_, id) in &made {
        ferry.run(&["delete", "--force", id]).ok();
    }
    for (bundle, id) in &made {
        assert_no_leftovers(&ferry, bundle, id);
    }
    let left: Vec<_> = std::fs::read_dir(ferry.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("lo-many"))
        .collect();
    assert!(left.is_empty(), "the root still holds {left:?}");
}

/// `delete --force` of a container that a foreground `run` supervises: the run's own
/// delete after the exit and the explicit one take turns, and neither reports the other's
/// work as an error ("remove …: No such file or directory", as they did side by side).
#[test]
fn delete_of_a_container_a_foreground_run_supervises() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    for round in 0..10 {
        let id = ferry.id(&format!("lo-fg{round}"));
        let running = ferry.spawn(&["run", "--bundle", bundle.path_str(), &id]);
        ferry.wait_status(&id, "running");
        let del = ferry.run(&["delete", "--force", &id]);
        let run = running.finish(WAIT);
        assert!(del.success(), "delete --force failed: {}", del.stderr);
        assert!(
            !run.stderr.contains("No such file") && !del.stderr.contains("No such file"),
            "the two deletes tripped over each other:\nrun: {}\ndelete: {}",
            run.stderr,
            del.stderr
        );
        assert_eq!(
            run.code,
            Some(137),
            "the run should end with its killed init's status"
        );
        assert_no_leftovers(&ferry, &bundle, &id);
    }
}
