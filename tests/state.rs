//! The state JSON: every field clients decode (containerd's go-runc and the runtime spec),
//! nothing on stderr, and `stopped` once the init has exited even while it is a zombie.

mod common;

use chrono::{DateTime, Utc};
use common::*;

#[test]
fn state_has_every_field_with_the_right_value() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    let id = ferry.id("st");
    let before = Utc::now() - chrono::Duration::seconds(2);
    ferry.create(&bundle, &id).ok();
    let after = Utc::now() + chrono::Duration::seconds(2);

    let out = ferry.run(&["state", &id]).ok();
    // containerd decodes stdout and stderr combined: stderr must stay empty.
    assert!(
        out.stderr.is_empty(),
        "state wrote to stderr: {:?}",
        out.stderr
    );
    let v = out.json();
    let version = v["ociVersion"].as_str().expect("ociVersion is a string");
    assert!(version.starts_with("1."), "ociVersion {version}");
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["status"], "created");
    assert!(v["pid"].as_i64().unwrap_or(0) > 0, "pid: {v}");
    assert_eq!(
        v["bundle"],
        bundle.path_str(),
        "bundle must be the absolute bundle path"
    );
    let rootfs = v["rootfs"].as_str().expect("rootfs is a string");
    assert_eq!(
        rootfs,
        bundle.rootfs().to_str().unwrap(),
        "rootfs must be absolute"
    );
    let created = v["created"].as_str().expect("created is a string");
    let created: DateTime<Utc> = DateTime::parse_from_rfc3339(created)
        .unwrap_or_else(|e| panic!("created {created:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc);
    assert!(
        created >= before && created <= after,
        "created {created} is not when the container was created ({before}..{after})"
    );
    assert!(v["owner"].is_string(), "owner: {v}");

    ferry.run(&["start", &id]).ok();
    let out = ferry.run(&["state", &id]).ok();
    assert!(
        out.stderr.is_empty(),
        "state wrote to stderr: {:?}",
        out.stderr
    );
    let v2 = out.json();
    assert_eq!(v2["status"], "running");
    assert_eq!(v2["pid"], v["pid"]);
    assert_eq!(
        v2["created"], v["created"],
        "created must not change at start"
    );
}

#[test]
fn bundle_defaults_to_the_current_directory_and_is_absolute() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    let id = ferry.id("cwd");
    ferry.run_in(bundle.path(), &["create", &id]).ok();
    let v = ferry.state(&id);
    assert_eq!(v["bundle"], bundle.path_str(), "{v}");
    // A relative --bundle is made absolute too.
    let id2 = ferry.id("rel");
    let parent = bundle.path().parent().unwrap();
    let name = bundle.path().file_name().unwrap().to_str().unwrap();
    ferry
        .run_in(parent, &["create", "--bundle", name, &id2])
        .ok();
    assert_eq!(ferry.state(&id2)["bundle"], bundle.path_str());
}

#[test]
fn annotations_from_the_config_appear_in_the_state() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    bundle.edit(|s| s["annotations"] = serde_json::json!({"org.ferry.test": "yes"}));
    bundle.save();
    let id = ferry.id("ann");
    ferry.create(&bundle, &id).ok();
    assert_eq!(ferry.state(&id)["annotations"]["org.ferry.test"], "yes");
}

#[test]
fn status_is_stopped_once_the_init_exits() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sh", "-c", "exit 3"]);
    let id = ferry.id("exit");
    ferry.start_container(&bundle, &id);
    // The init may linger as a zombie (PID 1 reaps late on these machines): still stopped.
    ferry.wait_status(&id, "stopped");
    let out = ferry.run(&["state", &id]).ok();
    assert!(out.stderr.is_empty(), "{:?}", out.stderr);
    // A stopped container can be deleted without --force and is then gone.
    ferry.run(&["delete", &id]).ok();
    ferry.run(&["state", &id]).fails();
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn status_is_stopped_when_the_init_is_killed_from_outside() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    let id = ferry.id("ext");
    ferry.start_container(&bundle, &id);
    let pid = ferry.pid(&id);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    ferry.wait_status(&id, "stopped");
}
