//! Debian's podman, pointed at ferry with `--runtime`, runs a container from a local OCI
//! image layout (built here from busybox), execs into it, stops and removes it. podman runs
//! with a private root, runroot and tmpdir so the test touches nothing of the host's podman.

mod common;
#[path = "common/podman.rs"]
mod podman_env;

use common::*;
use podman_env::*;

#[test]
fn podman_runs_a_container_with_ferry_and_gets_its_exit_status() {
    let podman = Podman::new();
    let image = pull(&podman);
    let out = podman.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "sh",
        "-c",
        "echo hello-from-ferry; exit 3",
    ]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stdout.contains("hello-from-ferry"), "{out:?}");
}

#[test]
fn podman_exec_stop_and_rm_through_ferry() {
    let podman = Podman::new();
    let image = pull(&podman);
    let name = unique_id("pod");
    podman
        .run(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            &image,
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 0.1; done",
        ])
        .ok();
    let out = podman
        .run(&["ps", "--format", "{{.Names}} {{.Status}}"])
        .ok();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&name) && l.contains("Up")),
        "{out:?}"
    );
    let out = podman
        .run(&[
            "exec",
            &name,
            "sh",
            "-c",
            "echo exec-ok; cat /proc/1/cmdline",
        ])
        .ok();
    assert!(out.stdout.contains("exec-ok"), "{out:?}");
    assert!(
        out.stdout.contains("while"),
        "exec must see the container's init: {out:?}"
    );
    let out = podman.run(&["exec", &name, "sh", "-c", "exit 4"]);
    assert_eq!(out.code, Some(4), "{out:?}");

    podman.run(&["stop", "--time", "10", &name]).ok();
    let out = podman
        .run(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &name,
        ])
        .ok();
    assert_eq!(
        out.stdout.trim(),
        "exited 0",
        "the TERM trap exits 0: {out:?}"
    );
    podman.run(&["rm", &name]).ok();
    let out = podman.run(&["ps", "-a", "--format", "{{.Names}}"]).ok();
    assert!(!out.stdout.lines().any(|l| l == name), "{out:?}");
}
