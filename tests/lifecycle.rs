//! The lifecycle verbs end to end: create → start → kill → delete, `run` in the foreground
//! and detached, the pid file, and `list` in its three forms.

mod common;

use common::*;
use std::fs;
use std::path::Path;

const SLEEPER: &[&str] = &["sh", "-c", "touch /started; exec sleep 100000"];

#[test]
fn create_start_kill_delete() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, SLEEPER);
    let id = ferry.id("life");

    ferry.create(&bundle, &id).ok();
    let state = ferry.state(&id);
    assert_eq!(state["status"], "created", "{state}");
    let pid = state["pid"].as_i64().expect("created container has a pid") as i32;
    assert!(pid > 0, "pid {pid}");
    assert!(
        !is_zombie_or_gone(pid),
        "the init of a created container must be alive (pid {pid})"
    );
    assert!(
        !bundle.host_path("/started").exists(),
        "create ran the user's process: it must wait for start"
    );

    ferry.run(&["start", &id]).ok();
    wait_for("the container's process to run", WAIT, || {
        bundle.host_path("/started").exists()
    });
    let state = ferry.state(&id);
    assert_eq!(state["status"], "running", "{state}");
    assert_eq!(
        state["pid"].as_i64(),
        Some(pid as i64),
        "pid changed at start"
    );

    ferry.run(&["kill", &id, "KILL"]).ok();
    ferry.wait_status(&id, "stopped");
    assert!(is_zombie_or_gone(pid) || !Path::new(&format!("/proc/{pid}")).exists());

    ferry.run(&["delete", &id]).ok();
    ferry.run(&["state", &id]).fails();
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn run_foreground_exits_with_the_container_status() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(
        &ferry,
        &["sh", "-c", "echo out-line; echo err-line >&2; exit 7"],
    );
    let id = ferry.id("fg");
    let out = ferry.run(&["run", "--bundle", bundle.path_str(), &id]);
    assert_eq!(
        out.code,
        Some(7),
        "run must exit with the container's status: {out:?}"
    );
    assert!(
        out.stdout.contains("out-line"),
        "container stdout not passed through: {out:?}"
    );
    assert!(
        out.stderr.contains("err-line"),
        "container stderr not passed through: {out:?}"
    );
    // Without --keep, run removes the container when it exits, as runc does.
    assert!(!ferry.list_ids().contains(&id), "run left {id} behind");
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn run_foreground_reports_death_by_signal_as_128_plus_signal() {
    // The init is pid 1 of its namespace and cannot kill itself; the host kills it.
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sh", "-c", "touch /ready; exec sleep 100000"]);
    let id = ferry.id("fgsig");
    let running = ferry.spawn(&["run", "--bundle", bundle.path_str(), &id]);
    wait_for("the container to run", WAIT, || {
        bundle.host_path("/ready").exists()
    });
    ferry.run(&["kill", &id, "KILL"]).ok();
    let out = running.finish(COMMAND_TIMEOUT);
    assert_eq!(out.code, Some(137), "{out:?}");
}

#[test]
fn run_foreground_forwards_sigterm() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(
        &ferry,
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; touch /ready; while :; do sleep 0.1; done",
        ],
    );
    let id = ferry.id("fwd");
    let running = ferry.spawn(&["run", "--bundle", bundle.path_str(), &id]);
    wait_for("the container to install its trap", WAIT, || {
        bundle.host_path("/ready").exists()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = running.finish(COMMAND_TIMEOUT);
    assert_eq!(
        out.code,
        Some(42),
        "ferry run must forward SIGTERM: {out:?}"
    );
    assert!(out.stdout.contains("got-term"), "{out:?}");
}

#[test]
fn run_detached_returns_with_the_container_running() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, SLEEPER);
    let id = ferry.id("det");
    let pid_file = ferry.scratch().join("pid");
    ferry
        .run(&[
            "run",
            "-d",
            "--bundle",
            bundle.path_str(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ])
        .ok();
    let state = ferry.state(&id);
    assert_eq!(state["status"], "running", "{state}");
    let from_file: i64 = fs::read_to_string(&pid_file)
        .expect("run -d --pid-file wrote no pid file")
        .trim()
        .parse()
        .expect("pid file holds a number");
    assert_eq!(Some(from_file), state["pid"].as_i64());
    wait_for("the detached process to run", WAIT, || {
        bundle.host_path("/started").exists()
    });
    ferry.run(&["delete", "--force", &id]).ok();
    assert_no_leftovers(&ferry, &bundle, &id);
}

#[test]
fn pid_file_holds_the_init_pid() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, SLEEPER);
    let id = ferry.id("pidf");
    // A relative pid file is relative to ferry's working directory, as with runc.
    let dir = ferry.scratch();
    ferry
        .run_in(
            &dir,
            &[
                "create",
                "--bundle",
                bundle.path_str(),
                "--pid-file",
                "init.pid",
                &id,
            ],
        )
        .ok();
    let text = fs::read_to_string(dir.join("init.pid")).expect("no pid file written");
    let pid: i32 = text
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("pid file holds {text:?}"));
    assert_eq!(pid, ferry.pid(&id));
    // That pid is the container's init: it runs in a new pid namespace as pid 1.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid line");
    assert!(
        nspid.split_whitespace().last() == Some("1"),
        "pid {pid} is not pid 1 of a new pid namespace: {nspid}"
    );
}

#[test]
fn list_shows_every_container_in_table_json_and_quiet_forms() {
    let ferry = Ferry::new();
    let b1 = Bundle::new(&ferry, SLEEPER);
    let b2 = Bundle::new(&ferry, SLEEPER);
    let created = ferry.id("lista");
    let running = ferry.id("listb");
    ferry.create(&b1, &created).ok();
    ferry.start_container(&b2, &running);

    let mut ids = ferry.list_ids();
    ids.sort();
    let mut want = vec![created.clone(), running.clone()];
    want.sort();
    assert_eq!(ids, want, "list -q");

    let table = ferry.run(&["list"]).ok().stdout;
    let mut lines = table.lines();
    let header = lines.next().expect("list prints a header");
    for col in ["ID", "PID", "STATUS", "BUNDLE"] {
        assert!(header.contains(col), "header lacks {col}: {header}");
    }
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row for {id} in:\n{table}"))
            .to_string()
    };
    assert!(row(&created).contains("created"), "{table}");
    assert!(row(&running).contains("running"), "{table}");
    assert!(row(&running).contains(b2.path_str()), "{table}");

    let json = ferry.run(&["list", "--format", "json"]).ok().json();
    let arr = json.as_array().expect("list --format json prints an array");
    assert_eq!(arr.len(), 2, "{json}");
    let entry = arr
        .iter()
        .find(|e| e["id"] == running.as_str())
        .expect("entry");
    assert_eq!(entry["status"], "running");
    assert_eq!(entry["pid"].as_i64(), Some(ferry.pid(&running) as i64));
    assert_eq!(entry["bundle"], b2.path_str());
    let entry = arr
        .iter()
        .find(|e| e["id"] == created.as_str())
        .expect("entry");
    assert_eq!(entry["status"], "created");
}

#[test]
fn list_of_an_empty_root_is_empty() {
    let ferry = Ferry::new();
    assert!(ferry.list_ids().is_empty());
    let json = ferry.run(&["list", "--format", "json"]).ok().json();
    // runc prints `null` for no containers; an empty array is as good.
    assert!(
        json.is_null() || json.as_array().is_some_and(|a| a.is_empty()),
        "{json}"
    );
}

#[test]
fn ps_lists_the_processes_of_the_container() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["sh", "-c", "sleep 100000 & exec sleep 100001"]);
    let id = ferry.id("ps");
    ferry.start_container(&bundle, &id);
    let init = ferry.pid(&id);
    // containerd's form: a JSON array of host pids.
    let mut pids = Vec::new();
    wait_for("init and its child in ps", WAIT, || {
        let v = ferry.run(&["ps", "--format", "json", &id]).ok().json();
        pids = v
            .as_array()
            .expect("ps --format json prints an array of pids")
            .iter()
            .filter_map(|p| p.as_i64())
            .collect();
        pids.len() == 2
    });
    assert!(
        pids.contains(&(init as i64)),
        "{pids:?} lacks the init {init}"
    );
    // The table form shows the commands.
    let table = ferry.run(&["ps", &id]).ok().stdout;
    assert!(table.contains("sleep 100001"), "{table}");
    assert!(table.contains("sleep 100000"), "{table}");
}

#[test]
fn version_and_features_describe_the_runtime() {
    let ferry = Ferry::new();
    let out = ferry.run(&["--version"]).ok();
    assert!(out.stdout.contains("ferry"), "{out:?}");
    assert!(out.stdout.contains("spec"), "the OCI spec version: {out:?}");
    let v = ferry.run(&["features"]).ok().json();
    assert!(
        v["ociVersionMax"]
            .as_str()
            .is_some_and(|s| s.starts_with("1.")),
        "{v}"
    );
    let hooks: Vec<&str> = v["hooks"]
        .as_array()
        .expect("features lists hooks")
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    for h in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ] {
        assert!(hooks.contains(&h), "features lacks hook {h}: {hooks:?}");
    }
}

/// One id under two `--root`s (two "hosts" on one machine) maps to one default cgroup,
/// `ferry/<id>`. The second create used to join the first container's cgroup, so that its
/// `delete --force` killed the first one's processes too; it is refused, and the first
/// container is left as it was.
#[test]
fn an_id_whose_cgroup_another_root_uses_is_refused() {
    let a = Ferry::new();
    let b = Ferry::new();
    let bundle_a = Bundle::new(&a, SLEEPER);
    let bundle_b = Bundle::new(&b, SLEEPER);
    let id = a.id("shared");
    a.start_container(&bundle_a, &id);
    a.wait_status(&id, "running");
    let pid = a.pid(&id);

    let out = b.create(&bundle_b, &id);
    assert!(!out.success(), "a second container joined a cgroup in use");
    assert!(
        out.stderr.contains("already holds") && out.stderr.contains("another --root"),
        "{}",
        out.stderr
    );
    assert!(
        b.status(&id).is_none(),
        "the refused create left a container"
    );
    assert_eq!(a.status(&id).as_deref(), Some("running"));
    assert!(
        !is_zombie_or_gone(pid),
        "the first container's init is gone"
    );

    a.run(&["delete", "--force", &id]).ok();
    assert_no_leftovers(&a, &bundle_a, &id);
}
