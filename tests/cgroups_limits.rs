//! Resources from config.json land in the container's cgroups, are visible from inside
//! through the /sys/fs/cgroup mount, are enforced, follow `update --resources`, and the
//! cgroups go away on delete. The host here is cgroup v1 (hybrid); v2 paths are covered too.

mod common;

use common::*;
use serde_json::json;
use std::fs;
use std::path::PathBuf;

const MIB: u64 = 1024 * 1024;

/// (controller, v1 file, v2 file) as the host sees it for the container's init.
fn host_file(pid: i32, controller: &str, v1: &str, v2: &str) -> PathBuf {
    cgroup_dir(pid, controller).join(if cgroup_v2_only() { v2 } else { v1 })
}

fn host_read(pid: i32, controller: &str, v1: &str, v2: &str) -> String {
    let p = host_file(pid, controller, v1, v2);
    fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{p:?}: {e}"))
        .trim()
        .to_string()
}

/// The same file read from inside the container.
fn inside_read(ferry: &Ferry, id: &str, controller: &str, v1: &str, v2: &str) -> String {
    let path = if cgroup_v2_only() {
        format!("/sys/fs/cgroup/{v2}")
    } else {
        format!("/sys/fs/cgroup/{controller}/{v1}")
    };
    ferry
        .run(&["exec", id, "cat", &path])
        .ok()
        .stdout
        .trim()
        .to_string()
}

fn limited(ferry: &Ferry, resources: serde_json::Value) -> (Bundle, String) {
    let mut bundle = Bundle::new(ferry, &["sleep", "100000"]);
    bundle.resources(resources);
    if !bundle.has_namespace("cgroup") {
        bundle.namespace("cgroup", None);
    }
    bundle.save();
    let id = ferry.id("cg");
    ferry.start_container(&bundle, &id);
    (bundle, id)
}

#[test]
fn memory_limit_is_set_and_visible_inside() {
    let ferry = Ferry::new();
    let (_b, id) = limited(&ferry, json!({ "memory": { "limit": 64 * MIB } }));
    let pid = ferry.pid(&id);
    let want = (64 * MIB).to_string();
    assert_eq!(
        host_read(pid, "memory", "memory.limit_in_bytes", "memory.max"),
        want
    );
    assert_eq!(
        inside_read(&ferry, &id, "memory", "memory.limit_in_bytes", "memory.max"),
        want
    );
}

#[test]
fn memory_limit_is_enforced() {
    // counter fills 128 MiB under a 32 MiB limit (no swap here): the kernel kills it.
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["/bin/counter", "128"]);
    bundle
        .with_helper("counter")
        .resources(json!({ "memory": { "limit": 32 * MIB } }));
    bundle.save();
    let id = ferry.id("oom");
    let out = ferry.run(&["run", "--bundle", bundle.path_str(), &id]);
    assert_eq!(out.code, Some(137), "expected an OOM kill: {out:?}");
    assert!(
        !out.stdout.contains("checksum"),
        "it allocated past the limit: {out:?}"
    );
}

#[test]
fn pids_limit_is_set_visible_and_enforced() {
    let ferry = Ferry::new();
    let (_b, id) = limited(&ferry, json!({ "pids": { "limit": 10 } }));
    let pid = ferry.pid(&id);
    assert_eq!(host_read(pid, "pids", "pids.max", "pids.max"), "10");
    assert_eq!(
        inside_read(&ferry, &id, "pids", "pids.max", "pids.max"),
        "10"
    );
    let out = ferry.run(&[
        "exec",
        &id,
        "sh",
        "-c",
        "i=0; while [ $i -lt 30 ]; do sleep 1000 & i=$((i+1)); done; echo spawned",
    ]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("Resource temporarily unavailable") || all.contains("can't fork"),
        "30 forks under pids.max 10 should fail: {out:?}"
    );
    let current: u64 = host_read(pid, "pids", "pids.current", "pids.current")
        .parse()
        .unwrap();
    assert!(current <= 10, "pids.current {current} above the limit");
}

#[test]
fn cpu_quota_period_and_shares_are_set() {
    let ferry = Ferry::new();
    let (_b, id) = limited(
        &ferry,
        json!({ "cpu": { "quota": 50000, "period": 100000, "shares": 512 } }),
    );
    let pid = ferry.pid(&id);
    if cgroup_v2_only() {
        assert_eq!(host_read(pid, "cpu", "", "cpu.max"), "50000 100000");
        // runc's conversion of shares 512 to cpu.weight.
        assert_eq!(host_read(pid, "cpu", "", "cpu.weight"), "20");
        return;
    }
    assert_eq!(host_read(pid, "cpu", "cpu.cfs_quota_us", ""), "50000");
    assert_eq!(host_read(pid, "cpu", "cpu.cfs_period_us", ""), "100000");
    assert_eq!(host_read(pid, "cpu", "cpu.shares", ""), "512");
    assert_eq!(
        inside_read(&ferry, &id, "cpu", "cpu.cfs_quota_us", ""),
        "50000"
    );
    assert_eq!(inside_read(&ferry, &id, "cpu", "cpu.shares", ""), "512");
}

#[test]
fn cpuset_pins_the_process() {
    let ferry = Ferry::new();
    let (_b, id) = limited(&ferry, json!({ "cpu": { "cpus": "0", "mems": "0" } }));
    let pid = ferry.pid(&id);
    assert_eq!(host_read(pid, "cpuset", "cpuset.cpus", "cpuset.cpus"), "0");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let allowed = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap();
    assert_eq!(allowed.split_whitespace().last(), Some("0"), "{allowed}");
}

#[test]
fn update_resources_changes_the_limits() {
    let ferry = Ferry::new();
    let (_b, id) = limited(&ferry, json!({ "pids": { "limit": 50 } }));
    let pid = ferry.pid(&id);
    let file = write_json(
        &ferry.scratch(),
        "res.json",
        &json!({ "pids": { "limit": 33 }, "memory": { "limit": 96 * MIB } }),
    );
    ferry
        .run(&["update", "--resources", file.to_str().unwrap(), &id])
        .ok();
    assert_eq!(host_read(pid, "pids", "pids.max", "pids.max"), "33");
    assert_eq!(
        host_read(pid, "memory", "memory.limit_in_bytes", "memory.max"),
        (96 * MIB).to_string()
    );
}

#[test]
fn cgroups_are_removed_on_delete() {
    let ferry = Ferry::new();
    let (bundle, id) = limited(
        &ferry,
        json!({ "memory": { "limit": 64 * MIB }, "pids": { "limit": 50 } }),
    );
    let pid = ferry.pid(&id);
    let controllers = [
        "memory", "pids", "cpu", "cpuset", "freezer", "devices", "blkio",
    ];
    let dirs: Vec<PathBuf> = controllers
        .iter()
        .map(|c| cgroup_dir(pid, c))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for d in &dirs {
        assert!(d.is_dir(), "{d:?}");
        assert_ne!(
            d,
            &PathBuf::from("/sys/fs/cgroup").join(d.file_name().unwrap()),
            "the container must get its own cgroup, not the root"
        );
    }
    ferry.run(&["delete", "--force", &id]).ok();
    for d in &dirs {
        wait_for(&format!("{d:?} to be removed"), WAIT, || !d.exists());
    }
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn cgroups_path_from_the_config_is_used() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    let id = ferry.id("cgpath");
    // Under ferry/ so the test leaves no new top-level cgroup behind.
    let path = format!("/ferry/custom-{id}");
    bundle.edit(|s| s["linux"]["cgroupsPath"] = json!(path));
    bundle.save();
    ferry.start_container(&bundle, &id);
    let pid = ferry.pid(&id);
    let dir = cgroup_dir(pid, "memory");
    assert!(dir.ends_with(path.trim_start_matches('/')), "{dir:?}");
    ferry.run(&["delete", "--force", &id]).ok();
    wait_for("the configured cgroup to be removed", WAIT, || {
        !dir.exists()
    });
}
