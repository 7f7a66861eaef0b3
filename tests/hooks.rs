//! OCI hooks: each kind runs at its point of the lifecycle, in spec order, with the state
//! JSON on stdin. Every hook appends to one log file inside the rootfs, the host hooks
//! through its host path, startContainer through its path inside the container.

mod common;

use common::*;
use serde_json::Value;

/// A hook command that appends "<name> <state JSON from stdin>" to `log`.
fn log_hook(name: &str, log: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("echo \"{name} $(cat)\" >> {log}"),
    ]
}

fn entries(bundle: &Bundle) -> Vec<(String, Value)> {
    bundle
        .read_file("/hooks.log")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (name, json) = l.split_once(' ').unwrap_or((l, ""));
            let v = serde_json::from_str(json).unwrap_or_else(|e| {
                panic!("hook {name} got no state JSON on stdin ({e}): {json:?}")
            });
            (name.to_string(), v)
        })
        .collect()
}

fn names(bundle: &Bundle) -> Vec<String> {
    entries(bundle).into_iter().map(|(n, _)| n).collect()
}

#[test]
fn hooks_run_in_spec_order_with_the_state_on_stdin() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(
        &ferry,
        &[
            "sh",
            "-c",
            "echo 'process {}' >> /hooks.log; exec sleep 100000",
        ],
    );
    let host_log = bundle.host_path("/hooks.log");
    let host_log = host_log.to_str().unwrap().to_string();
    // createContainer runs in the container's mount namespace before pivot_root (as in
    // runc), where the host's paths still resolve; startContainer runs after pivot_root,
    // where the log is /hooks.log.
    for kind in [
        "prestart",
        "createRuntime",
        "createContainer",
        "poststart",
        "poststop",
    ] {
        let args = log_hook(kind, &host_log);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bundle.hook(kind, "/bin/sh", &args);
    }
    let args = log_hook("startContainer", "/hooks.log");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    bundle.hook("startContainer", "/bin/sh", &args);
    bundle.save();
    let id = ferry.id("hooks");

    ferry.create(&bundle, &id).ok();
    let pid = ferry.pid(&id) as i64;
    assert_eq!(
        names(&bundle),
        vec!["prestart", "createRuntime", "createContainer"],
        "after create"
    );

    ferry.run(&["start", &id]).ok();
    // poststart must have run before start returned.
    let after_start = names(&bundle);
    assert!(
        after_start.contains(&"poststart".to_string()),
        "{after_start:?}"
    );
    wait_for("the process to start", WAIT, || {
        names(&bundle).contains(&"process".to_string())
    });
    let n = names(&bundle);
    let pos = |x: &str| {
        n.iter()
            .position(|y| y == x)
            .unwrap_or_else(|| panic!("{x} missing: {n:?}"))
    };
    assert_eq!(&n[..3], ["prestart", "createRuntime", "createContainer"]);
    assert!(
        pos("startContainer") < pos("process"),
        "startContainer must run before the process: {n:?}"
    );
    assert!(pos("createContainer") < pos("poststart"), "{n:?}");
    assert!(
        !n.contains(&"poststop".to_string()),
        "poststop before delete: {n:?}"
    );

    ferry.run(&["kill", &id, "KILL"]).ok();
    ferry.wait_status(&id, "stopped");
    ferry.run(&["delete", &id]).ok();
    let all = entries(&bundle);
    assert_eq!(
        all.last().map(|(n, _)| n.as_str()),
        Some("poststop"),
        "{all:?}"
    );
    assert_eq!(all.iter().filter(|(n, _)| n == "poststop").count(), 1);

    for (name, state) in &all {
        if name == "process" {
            continue;
        }
        assert_eq!(state["id"], id.as_str(), "{name}: {state}");
        assert_eq!(state["bundle"], bundle.path_str(), "{name}: {state}");
        assert!(state["ociVersion"].is_string(), "{name}: {state}");
        let status = state["status"].as_str().unwrap_or("");
        match name.as_str() {
            "prestart" | "createRuntime" | "createContainer" | "startContainer" => {
                assert!(matches!(status, "creating" | "created"), "{name}: {state}");
                assert_eq!(state["pid"].as_i64(), Some(pid), "{name}: {state}");
            }
            "poststart" => {
                assert_eq!(status, "running", "{name}: {state}");
                assert_eq!(state["pid"].as_i64(), Some(pid), "{name}: {state}");
            }
            "poststop" => assert_eq!(status, "stopped", "{name}: {state}"),
            other => panic!("unexpected log line {other}"),
        }
    }
}

#[test]
fn hook_args_env_and_several_hooks_of_one_kind() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    let log = bundle.host_path("/h.log").to_str().unwrap().to_string();
    let first = format!("echo first $0 $1 $HOOK_ENV >> {log}");
    let second = format!("echo second >> {log}");
    bundle.hook(
        "createRuntime",
        "/bin/sh",
        &["sh", "-c", &first, "arg0", "arg1"],
    );
    bundle.hook("createRuntime", "/bin/sh", &["sh", "-c", &second]);
    bundle
        .edit(|s| s["hooks"]["createRuntime"][0]["env"] = serde_json::json!(["HOOK_ENV=from-env"]));
    bundle.save();
    let id = ferry.id("hargs");
    ferry.create(&bundle, &id).ok();
    assert_eq!(
        bundle.read_file("/h.log").unwrap_or_default(),
        "first arg0 arg1 from-env\nsecond\n"
    );
}

#[test]
fn a_failing_create_runtime_hook_fails_create_and_cleans_up() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    bundle.hook(
        "createRuntime",
        "/bin/sh",
        &["sh", "-c", "echo hook-says-no >&2; exit 3"],
    );
    bundle.save();
    let id = ferry.id("hfail");
    let out = ferry.create(&bundle, &id).fails();
    assert!(
        out.stderr.contains("createRuntime") || out.stderr.contains("hook"),
        "the error should say a hook failed: {:?}",
        out.stderr
    );
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn a_hook_that_hangs_past_its_timeout_fails_create() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    bundle.hook("prestart", "/bin/sleep", &["sleep", "1000"]);
    bundle.edit(|s| s["hooks"]["prestart"][0]["timeout"] = serde_json::json!(1));
    bundle.save();
    let id = ferry.id("htime");
    ferry.create(&bundle, &id).fails();
    assert_no_leftovers(&ferry, &bundle, &id);
}
