//! `ferry exec`: a process joins the running container (its namespaces and rootfs), exit
//! codes pass through, `--env`, `--cwd`, detached with `--pid-file`, and conmon's
//! `--process FILE` form.

mod common;

use common::*;
use serde_json::json;
use std::fs;

fn sleeper(ferry: &Ferry) -> (Bundle, String) {
    let bundle = Bundle::new(ferry, &["sleep", "100000"]);
    let id = ferry.id("exec");
    ferry.start_container(&bundle, &id);
    (bundle, id)
}

#[test]
fn exec_runs_inside_the_container_and_passes_output_and_status() {
    let ferry = Ferry::new();
    let (mut bundle, id) = sleeper(&ferry);
    bundle.write_file("/marker", "inside-rootfs\n", 0o644);

    let out = ferry.run(&["exec", &id, "cat", "/marker"]).ok();
    assert_eq!(out.stdout, "inside-rootfs\n", "{out:?}");

    // Same pid namespace: its pid 1 is the container's init.
    let out = ferry.run(&["exec", &id, "cat", "/proc/1/cmdline"]).ok();
    assert!(
        out.stdout.starts_with("sleep"),
        "pid 1 seen by exec: {:?}",
        out.stdout
    );

    let out = ferry.run(&["exec", &id, "sh", "-c", "echo to-err >&2; exit 5"]);
    assert_eq!(out.code, Some(5), "{out:?}");
    assert!(out.stderr.contains("to-err"), "{out:?}");

    // Options after the command belong to the command, not to ferry.
    let out = ferry.run(&["exec", &id, "echo", "--env", "-x"]).ok();
    assert_eq!(out.stdout, "--env -x\n");
}

#[test]
fn exec_sees_the_container_hostname_and_env() {
    let ferry = Ferry::new();
    let mut bundle = Bundle::new(&ferry, &["sleep", "100000"]);
    bundle.edit(|s| s["hostname"] = json!("exec-host"));
    bundle.namespace("uts", None).env("FROM_CONFIG", "cfg");
    bundle.save();
    let id = ferry.id("host");
    ferry.start_container(&bundle, &id);
    let out = ferry.run(&["exec", &id, "hostname"]).ok();
    assert_eq!(out.stdout.trim(), "exec-host");
    let out = ferry
        .run(&["exec", &id, "sh", "-c", "echo $FROM_CONFIG"])
        .ok();
    assert_eq!(out.stdout.trim(), "cfg", "exec inherits the config's env");
}

#[test]
fn exec_env_and_cwd() {
    let ferry = Ferry::new();
    let (_bundle, id) = sleeper(&ferry);
    let out = ferry
        .run(&[
            "exec",
            "--env",
            "FOO=bar",
            "--env",
            "BAZ=q x",
            &id,
            "sh",
            "-c",
            "echo $FOO:$BAZ",
        ])
        .ok();
    assert_eq!(out.stdout.trim(), "bar:q x");
    let out = ferry.run(&["exec", "--cwd", "/tmp", &id, "pwd"]).ok();
    assert_eq!(out.stdout.trim(), "/tmp");
    let out = ferry
        .run(&["exec", "-e", "A=1", &id, "sh", "-c", "echo $A"])
        .ok();
    assert_eq!(out.stdout.trim(), "1");
}

#[test]
fn exec_detached_writes_the_host_pid_to_the_pid_file() {
    let ferry = Ferry::new();
    let (bundle, id) = sleeper(&ferry);
    let pid_file = ferry.scratch().join("exec.pid");
    ferry
        .run(&[
            "exec",
            "-d",
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
            "sh",
            "-c",
            "echo $$ > /exec-inner-pid; exec sleep 100000",
        ])
        .ok();
    let host_pid: i32 = fs::read_to_string(&pid_file)
        .expect("exec -d --pid-file wrote no pid file")
        .trim()
        .parse()
        .expect("a number in the pid file");
    wait_for("the exec'd process to write its pid", WAIT, || {
        bundle
            .read_file("/exec-inner-pid")
            .is_some_and(|s| s.ends_with('\n'))
    });
    let inner = bundle
        .read_file("/exec-inner-pid")
        .unwrap()
        .trim()
        .to_string();
    // The host pid in the file and the pid the process sees are the same process.
    let status = fs::read_to_string(format!("/proc/{host_pid}/status"))
        .unwrap_or_else(|e| panic!("pid {host_pid} from the pid file is not alive: {e}"));
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(
        nspid.split_whitespace().last(),
        Some(inner.as_str()),
        "{nspid}"
    );
    assert!(!is_zombie_or_gone(host_pid));
    assert_ne!(
        host_pid,
        ferry.pid(&id),
        "exec must not report the init's pid"
    );
}

#[test]
fn exec_with_a_process_file_as_conmon_sends_it() {
    let ferry = Ferry::new();
    let (bundle, id) = sleeper(&ferry);
    let dir = ferry.scratch();
    let process = json!({
        "terminal": false,
        "user": { "uid": 0, "gid": 0 },
        "args": ["sh", "-c", "echo from-process-json $PWD $ONLY_HERE; exit 3"],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "ONLY_HERE=1"],
        "cwd": "/etc",
        "noNewPrivileges": true
    });
    let file = write_json(&dir, "process.json", &process);
    let out = ferry.run(&["exec", "--process", file.to_str().unwrap(), &id]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.stdout.trim(), "from-process-json /etc 1");

    // conmon's form: detached with a pid file and the process file.
    let process = json!({
        "terminal": false,
        "user": { "uid": 0, "gid": 0 },
        "args": ["sh", "-c", "touch /conmon-exec; exec sleep 100000"],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "cwd": "/"
    });
    let file = write_json(&dir, "process2.json", &process);
    let pid_file = dir.join("pid");
    ferry
        .run(&[
            "exec",
            "--process",
            file.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--detach",
            &id,
        ])
        .ok();
    assert!(pid_file.exists(), "no pid file");
    wait_for("the detached exec to run", WAIT, || {
        bundle.host_path("/conmon-exec").exists()
    });
}

#[test]
fn exec_as_another_user() {
    let ferry = Ferry::new();
    let (_bundle, id) = sleeper(&ferry);
    let out = ferry
        .run(&[
            "exec",
            "--user",
            "1000:1001",
            &id,
            "sh",
            "-c",
            "id -u; id -g",
        ])
        .ok();
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        vec!["1000", "1001"]
    );
}

#[test]
fn exec_into_a_stopped_or_unknown_container_fails() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["true"]);
    let id = ferry.id("gone");
    ferry.start_container(&bundle, &id);
    ferry.wait_status(&id, "stopped");
    ferry.run(&["exec", &id, "true"]).fails();
    let out = ferry.run(&["exec", "no-such-ctr", "true"]).fails();
    assert!(out.stderr.contains("no-such-ctr"), "{:?}", out.stderr);
}

#[test]
fn exec_of_a_missing_binary_fails_and_names_it() {
    let ferry = Ferry::new();
    let (_bundle, id) = sleeper(&ferry);
    let out = ferry.run(&["exec", &id, "/no/such/binary"]).fails();
    assert!(out.stderr.contains("/no/such/binary"), "{:?}", out.stderr);
    assert_eq!(ferry.status(&id).as_deref(), Some("running"));
}
