//! Bad input gets one clear line on stderr and a non-zero exit, and a failed create leaves
//! no state, mounts, cgroups or processes behind.

mod common;

use common::*;
use serde_json::json;
use std::fs;

/// The error is a single line (plus nothing else) that mentions every `needles`.
fn one_clear_line(out: &Output, needles: &[&str]) {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{}",
        out.stderr
    );
    for n in needles {
        assert!(
            lines[0].contains(n),
            "the error should mention {n:?}: {}",
            lines[0]
        );
    }
    assert!(
        out.stdout.trim().is_empty(),
        "nothing on stdout expected: {:?}",
        out.stdout
    );
}

#[test]
fn missing_config_json_names_the_file() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["true"]);
    fs::remove_file(bundle.config_path()).unwrap();
    let id = ferry.id("nocfg");
    let out = ferry.create(&bundle, &id).fails();
    one_clear_line(&out, &["config.json"]);
    assert!(
        out.stderr.contains(bundle.path_str()),
        "name the full path: {}",
        out.stderr
    );
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn missing_bundle_directory_is_named() {
    let ferry = Ferry::new();
    let id = ferry.id("nobundle");
    let out = ferry
        .run(&["create", "--bundle", "/nonexistent/ferry-bundle", &id])
        .fails();
    assert!(
        out.stderr.contains("/nonexistent/ferry-bundle"),
        "{}",
        out.stderr
    );
    assert!(!ferry.root().join(&id).exists());
}

#[test]
fn invalid_json_names_the_file_and_the_line() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["true"]);
    fs::write(
        bundle.config_path(),
        "{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": {\n",
    )
    .unwrap();
    let id = ferry.id("badjson");
    let out = ferry.create(&bundle, &id).fails();
    one_clear_line(&out, &["config.json", "line"]);
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn a_field_of_the_wrong_type_is_named() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["true"]);
    bundle.edit(|s| s["process"]["args"] = json!("not-a-list"));
    bundle.save();
    let id = ferry.id("badfield");
    let out = ferry.create(&bundle, &id).fails();
    assert!(out.stderr.contains("config.json"), "{}", out.stderr);
    assert!(
        out.stderr.contains("args") || out.stderr.contains("line"),
        "name the field or its line: {}",
        out.stderr
    );
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn a_missing_process_is_refused() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["true"]);
    bundle.edit(|s| {
        s.as_object_mut().unwrap().remove("process");
    });
    bundle.save();
    let id = ferry.id("noproc");
    let out = ferry.create(&bundle, &id).fails();
    assert!(out.stderr.contains("process"), "{}", out.stderr);
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn unknown_ids_are_named() {
    let ferry = Ferry::new();
    let id = "t-never-created";
    for verb in [
        vec!["state", id],
        vec!["start", id],
        vec!["kill", id, "KILL"],
        vec!["delete", id],
        vec!["pause", id],
        vec!["resume", id],
        vec!["ps", id],
        vec!["exec", id, "true"],
    ] {
        let out = ferry.run(&verb).fails();
        one_clear_line(&out, &[id]);
    }
}

#[test]
fn delete_force_of_an_unknown_id_succeeds_like_runc() {
    // runc's `delete --force` of a missing container exits 0 (clients retry deletes and
    // treat "already gone" as done); without --force it fails (see unknown_ids_are_named).
    let ferry = Ferry::new();
    let out = ferry.run(&["delete", "--force", "t-never-made"]).ok();
    // Silent, as runc is: podman would show a warning to its user after every checkpoint.
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert!(!ferry.root().join("t-never-made").exists());
}

#[test]
fn an_existing_id_is_refused_and_the_first_container_is_untouched() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    let id = ferry.id("dup");
    ferry.create(&bundle, &id).ok();
    let pid = ferry.pid(&id);
    let other = Bundle::new(&ferry, &["sleep", "100000"]);
    let out = ferry.create(&other, &id).fails();
    one_clear_line(&out, &[&id]);
    assert!(out.stderr.contains("exists"), "{}", out.stderr);
    let state = ferry.state(&id);
    assert_eq!(state["pid"].as_i64(), Some(pid as i64));
    assert_eq!(state["bundle"], bundle.path_str());
    assert_eq!(state["status"], "created");
}

#[test]
fn ids_that_are_not_plain_names_are_refused() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["true"]);
    for bad in ["../escape", "a/b", "", ".", ".."] {
        let out = ferry.create(&bundle, bad).fails();
        assert!(!out.stderr.is_empty());
    }
    assert!(!ferry.root().parent().unwrap().join("escape").exists());
    assert!(ferry.list_ids().is_empty());
}

#[test]
fn start_of_a_running_container_fails() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    let id = ferry.id("twice");
    ferry.start_container(&bundle, &id);
    let pid = ferry.pid(&id);
    let out = ferry.run(&["start", &id]).fails();
    one_clear_line(&out, &[&id]);
    assert_eq!(ferry.status(&id).as_deref(), Some("running"));
    assert_eq!(ferry.pid(&id), pid);
}

#[test]
fn start_of_a_stopped_container_fails() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["true"]);
    let id = ferry.id("stopped");
    ferry.start_container(&bundle, &id);
    ferry.wait_status(&id, "stopped");
    ferry.run(&["start", &id]).fails();
}

#[test]
fn delete_of_a_running_container_needs_force() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    let id = ferry.id("delrun");
    ferry.start_container(&bundle, &id);
    let out = ferry.run(&["delete", &id]).fails();
    one_clear_line(&out, &[&id]);
    assert!(
        out.stderr.contains("force"),
        "suggest --force: {}",
        out.stderr
    );
    assert_eq!(ferry.status(&id).as_deref(), Some("running"));
    ferry.run(&["delete", "--force", &id]).ok();
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn an_unknown_command_fails() {
    let ferry = Ferry::new();
    ferry.run(&["frobnicate"]).fails();
}

#[test]
fn failed_create_with_a_missing_binary_leaves_nothing() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["/no/such/binary", "arg"]);
    let id = ferry.id("nobin");
    let out = ferry.create(&bundle, &id).fails();
    assert!(out.stderr.contains("/no/such/binary"), "{}", out.stderr);
    assert_no_leftovers(&ferry, &bundle, &id);
    // The id is free again.
    let fixed = Bundle::new(&ferry, &["sleep", "100000"]);
    ferry.create(&fixed, &id).ok();
}

#[test]
fn failed_run_with_a_missing_binary_leaves_nothing() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["no-such-command-in-path"]);
    let id = ferry.id("runnobin");
    let out = ferry
        .run(&["run", "--bundle", bundle.path_str(), &id])
        .fails();
    assert!(
        out.stderr.contains("no-such-command-in-path"),
        "{}",
        out.stderr
    );
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn failed_create_with_a_bad_mount_leaves_nothing() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    bundle.mount(json!({
        "destination": "/data",
        "type": "bind",
        "source": "/nonexistent/ferry-mount-source",
        "options": ["rbind", "rw"]
    }));
    bundle.save();
    let id = ferry.id("badmount");
    let out = ferry.create(&bundle, &id).fails();
    assert!(
        out.stderr.contains("/nonexistent/ferry-mount-source") || out.stderr.contains("/data"),
        "{}",
        out.stderr
    );
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn failed_create_after_mounts_were_made_leaves_nothing() {
    // A tmpfs and a bind mount succeed, then a later mount fails: the earlier ones and the
    // cgroup (with limits already written) must all go.
    let ferry = Ferry::new();
    let src = ferry.scratch();
    let mut bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    bundle
        .mount(json!({ "destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"] }))
        .mount(json!({ "destination": "/bound", "type": "bind", "source": src, "options": ["rbind"] }))
        .mount(json!({ "destination": "/broken", "type": "no-such-fstype", "source": "none" }))
        .resources(json!({ "pids": { "limit": 50 } }));
    bundle.save();
    let id = ferry.id("latemount");
    ferry.create(&bundle, &id).fails();
    assert_no_leftovers(&ferry, &bundle, &id);
    assert!(mounts_under(&src).is_empty());
}

#[test]
fn a_mount_destination_escaping_the_rootfs_stays_inside() {
    // `../../x` must resolve inside the rootfs (or be refused), never onto the host.
    let ferry = Ferry::new();
    let target_name = format!("ferry-escape-{}", unique_id("e"));
    let mut bundle = Bundle::new(&ferry, &["true"]);
    bundle.mount(json!({
        "destination": format!("/../../../../tmp/{target_name}"),
        "type": "tmpfs",
        "source": "tmpfs"
    }));
    bundle.save();
    let id = ferry.id("escape");
    let _ = ferry.run(&["run", "--bundle", bundle.path_str(), &id]);
    let host = std::path::Path::new("/tmp").join(&target_name);
    assert!(
        !host.exists(),
        "a mount destination escaped the rootfs to {host:?}"
    );
    assert!(mounts_under(&host).is_empty());
}
