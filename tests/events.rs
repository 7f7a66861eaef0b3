//! `ferry events` on real containers: `--stats` gives the one JSON line containerd's shim
//! decodes (go-runc's `Stats`), with numbers the kernel really accounted; the stream prints
//! stats until the container dies, an `oom` line when the kernel OOM-kills in it, and a
//! stopped container is refused.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
const LIMIT: u64 = 64 * MIB;

/// A running container holding 16 MiB (memhold) under a 64 MiB memory limit.
fn holding_memory(ferry: &Ferry) -> (Bundle, String) {
    let mut bundle = Bundle::new(ferry, &["/bin/memhold", "16", "7", "/tmp"]);
    bundle
        .with_helper("memhold")
        .resources(json!({ "memory": { "limit": LIMIT } }));
    bundle.save();
    let id = ferry.id("events");
    ferry.start_container(&bundle, &id);
    // memhold writes its checksum once the memory is filled.
    let checksum = bundle.host_path("/tmp/checksum");
    wait_for("memhold to fill its memory", WAIT, || checksum.exists());
    (bundle, id)
}

/// Each stdout line parsed as JSON, every one an event of `id`.
fn events(stdout: &str, id: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
            assert_eq!(event["id"], id, "{line}");
            event
        })
        .collect()
}

fn number(v: &Value, path: &str) -> u64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

#[test]
fn stats_prints_one_line_with_what_the_kernel_accounted() {
    let ferry = Ferry::new();
    let (_bundle, id) = holding_memory(&ferry);
    let out = ferry.run(&["events", "--stats", &id]).ok();
    let lines = events(&out.stdout, &id);
    assert_eq!(lines.len(), 1, "one event: {}", out.stdout);
    let event = &lines[0];
    assert_eq!(event["type"], "stats");
    let data = &event["data"];
    let usage = number(data, "memory.usage.usage");
    assert!(
        (16 * MIB..=LIMIT).contains(&usage),
        "memory usage {usage} should hold memhold's 16 MiB and stay within the {LIMIT} limit"
    );
    assert_eq!(number(data, "memory.usage.limit"), LIMIT);
    assert!(number(data, "memory.usage.max") >= usage);
    assert!(data["memory"]["raw"].is_object());
    assert!(number(data, "pids.current") >= 1);
    assert!(number(data, "cpu.usage.total") > 0);
    // go-runc's field names, not the kernel's.
    assert!(data["cpu"]["throttling"].is_object());
    assert!(data["memory"]["swap"].is_object());
    assert!(data["blkio"].is_object());
}

#[test]
fn the_stream_prints_stats_until_the_container_is_killed() {
    let ferry = Ferry::new();
    let (_bundle, id) = holding_memory(&ferry);
    let stream = ferry.spawn(&["events", "--interval", "200ms", &id]);
    wait_for("three stats lines", WAIT, || {
        stream.stdout_so_far().lines().count() >= 3
    });
    ferry.run(&["kill", &id, "KILL"]).ok();
    let out = stream.finish(WAIT);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines = events(&out.stdout, &id);
    assert!(lines.len() >= 3, "{}", out.stdout);
    for event in &lines {
        assert_eq!(event["type"], "stats", "{event}");
        assert!(number(&event["data"], "memory.usage.limit") == LIMIT);
    }
    // The go-runc form of the flag works too.
    let (_bundle, id) = holding_memory(&ferry);
    let stream = ferry.spawn(&["events", "--interval=1s", &id]);
    wait_for("a stats line", WAIT, || !stream.stdout_so_far().is_empty());
    ferry.run(&["kill", &id, "KILL"]).ok();
    assert_eq!(stream.finish(WAIT).code, Some(0));
}

#[test]
fn an_oom_kill_in_the_container_is_an_oom_event() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    bundle
        .with_helper("counter")
        .resources(json!({ "memory": { "limit": 32 * MIB } }));
    bundle.save();
    let id = ferry.id("events-oom");
    ferry.start_container(&bundle, &id);
    let stream = ferry.spawn(&["events", "--interval", "200ms", &id]);
    wait_for("the first stats line", WAIT, || {
        !stream.stdout_so_far().is_empty()
    });
    // counter fills 128 MiB under the 32 MiB limit: the kernel kills it, the init lives on.
    let exec = ferry.run(&["exec", &id, "/bin/counter", "128"]);
    assert_eq!(exec.code, Some(137), "expected an OOM kill: {exec:?}");
    wait_for("an oom event", WAIT, || {
        stream.stdout_so_far().contains(r#""type":"oom""#)
    });
    ferry.run(&["kill", &id, "KILL"]).ok();
    let out = stream.finish(WAIT);
    assert_eq!(out.code, Some(0), "{out:?}");
    let oom: Vec<Value> = events(&out.stdout, &id)
        .into_iter()
        .filter(|e| e["type"] == "oom")
        .collect();
    assert_eq!(oom.len(), 1, "{}", out.stdout);
    assert!(oom[0].get("data").is_none(), "{}", oom[0]);
}

#[test]
fn a_stopped_container_is_refused() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["true"]);
    let id = ferry.id("events-stopped");
    ferry.start_container(&bundle, &id);
    ferry.wait_status(&id, "stopped");
    for args in [
        vec!["events", "--stats", id.as_str()],
        vec!["events", "--interval", "100ms", id.as_str()],
    ] {
        let out = ferry.spawn(&args).finish(Duration::from_secs(10)).fails();
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(
            out.stderr
                .contains(&format!("container \"{id}\" is not running")),
            "{:?}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    }
    let out = ferry
        .run(&["events", "--stats", "no-such-container"])
        .fails();
    assert!(out.stderr.contains("no-such-container"), "{:?}", out.stderr);
    let out = ferry.run(&["events", "--interval", "0s", &id]);
    assert_eq!(
        out.code,
        Some(2),
        "a bad interval is a usage error: {out:?}"
    );
}
