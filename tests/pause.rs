//! pause/resume through the freezer: the counter stops while paused and goes on after
//! resume; a paused container can still be killed and deleted.

mod common;

use common::*;
use std::fs;

fn counting(ferry: &Ferry) -> (Bundle, String) {
    let mut bundle = Bundle::new(ferry, &["/bin/counter", "1", "/count"]);
    bundle.with_helper("counter");
    bundle.save();
    let id = ferry.id("pause");
    ferry.start_container(&bundle, &id);
    wait_counter_above(&bundle.host_path("/count"), 2);
    (bundle, id)
}

fn freezer_state(pid: i32) -> String {
    let dir = cgroup_dir(pid, "freezer");
    if cgroup_v2_only() {
        let v = fs::read_to_string(dir.join("cgroup.freeze")).unwrap_or_default();
        return if v.trim() == "1" {
            "FROZEN".into()
        } else {
            "THAWED".into()
        };
    }
    fs::read_to_string(dir.join("freezer.state"))
        .unwrap_or_else(|e| panic!("freezer.state of pid {pid} in {dir:?}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn pause_stops_the_counter_and_resume_continues_it() {
    let ferry = Ferry::new();
    let (bundle, id) = counting(&ferry);
    let pid = ferry.pid(&id);
    let count = bundle.host_path("/count");

    ferry.run(&["pause", &id]).ok();
    assert_eq!(ferry.status(&id).as_deref(), Some("paused"));
    // The kernel says the cgroup is frozen: that, not a sleep, proves the pause.
    assert_eq!(freezer_state(pid), "FROZEN");
    let frozen_at = read_counter(&count).expect("counter value");
    // While frozen the value cannot move (a frozen task runs no code at all).
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(
            read_counter(&count),
            Some(frozen_at),
            "counter moved while paused"
        );
    }

    ferry.run(&["resume", &id]).ok();
    assert_eq!(ferry.status(&id).as_deref(), Some("running"));
    assert_eq!(freezer_state(pid), "THAWED");
    // It continues from where it was: the same process, not a restart from 1.
    let after = wait_counter_above(&count, frozen_at);
    assert!(after > frozen_at);
    assert_eq!(ferry.pid(&id), pid);
}

#[test]
fn pause_and_resume_in_the_wrong_state_fail() {
    let ferry = Ferry::new();
    let (_bundle, id) = counting(&ferry);
    ferry.run(&["resume", &id]).fails();
    ferry.run(&["pause", &id]).ok();
    ferry.run(&["pause", &id]).fails();
    assert_eq!(ferry.status(&id).as_deref(), Some("paused"));
    ferry.run(&["resume", &id]).ok();
    assert_eq!(ferry.status(&id).as_deref(), Some("running"));
}

#[test]
fn a_paused_container_can_be_killed_and_force_deleted() {
    let ferry = Ferry::new();
    let (bundle, id) = counting(&ferry);
    ferry.run(&["pause", &id]).ok();
    ferry.run(&["delete", &id]).fails();
    ferry.run(&["delete", "--force", &id]).ok();
    assert_no_leftovers(&ferry, &bundle, &id);

    let (bundle, id) = counting(&ferry);
    ferry.run(&["pause", &id]).ok();
    ferry.run(&["kill", &id, "KILL"]).ok();
    ferry.wait_status(&id, "stopped");
    ferry.run(&["delete", &id]).ok();
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn pause_of_an_unknown_container_fails() {
    let ferry = Ferry::new();
    let out = ferry.run(&["pause", "no-such-container"]).fails();
    assert!(out.stderr.contains("no-such-container"), "{:?}", out.stderr);
}
