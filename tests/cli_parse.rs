//! The argv lines podman, conmon and containerd's shim really send (CONTRACTS.md §2.3–2.5)
//! parse to the values they mean. No root needed: nothing here touches a container.

use ferry::cli::{Cli, Command, LogFormat, ManageCgroupsMode, Rootless, parse};
use std::path::{Path, PathBuf};
use std::process::Command as Process;

fn ok(line: &str) -> Cli {
    let mut args = vec!["ferry"];
    args.extend(line.split_whitespace());
    parse(&args).unwrap_or_else(|e| panic!("`{line}` should parse:\n{e}"))
}

fn p(s: &str) -> Option<PathBuf> {
    Some(PathBuf::from(s))
}

// --- containerd's shim (go-runc) -------------------------------------------------------

const SHIM_GLOBALS: &str =
    "--root /run/containerd/runc/k8s.io --log /b/log.json --log-format json --systemd-cgroup";

#[test]
fn containerd_create() {
    let cli = ok(&format!(
        "{SHIM_GLOBALS} create --bundle /b --pid-file /b/init.pid --console-socket /tmp/pty.sock \
         --pidfd-socket /tmp/pidfd.sock --no-pivot --no-new-keyring --detach --preserve-fds 2 c1"
    ));
    assert_eq!(cli.global.root, p("/run/containerd/runc/k8s.io"));
    assert_eq!(cli.global.log, p("/b/log.json"));
    assert_eq!(cli.global.log_format, LogFormat::Json);
    assert!(cli.global.systemd_cgroup);
    let Some(Command::Create(a)) = cli.command else {
        panic!("not create")
    };
    assert_eq!(a.id.as_deref(), Some("c1"));
    assert_eq!(a.flags.bundle, p("/b"));
    assert_eq!(a.flags.pid_file, p("/b/init.pid"));
    assert_eq!(a.flags.console_socket, p("/tmp/pty.sock"));
    assert_eq!(a.flags.pidfd_socket, p("/tmp/pidfd.sock"));
    assert!(a.flags.no_pivot && a.flags.no_new_keyring && a.detach);
    assert_eq!(a.flags.preserve_fds, 2);
}

#[test]
fn containerd_rootless_flag() {
    let cli = ok("--root /r --rootless=true start c1");
    assert_eq!(cli.global.rootless, Some(Rootless::True));
    assert!(matches!(cli.command, Some(Command::Start(a)) if a.id == "c1"));
}

#[test]
fn containerd_start_state_delete() {
    assert!(matches!(ok(&format!("{SHIM_GLOBALS} start c1")).command,
        Some(Command::Start(a)) if a.id == "c1"));
    assert!(matches!(ok(&format!("{SHIM_GLOBALS} state c1")).command,
        Some(Command::State(a)) if a.id == "c1"));
    assert!(
        matches!(ok(&format!("{SHIM_GLOBALS} delete --force c1")).command,
        Some(Command::Delete(a)) if a.id == "c1" && a.force)
    );
    assert!(matches!(ok("delete c1").command,
        Some(Command::Delete(a)) if !a.force));
    assert!(matches!(ok("delete -f c1").command,
        Some(Command::Delete(a)) if a.force));
}

#[test]
fn containerd_kill() {
    let Some(Command::Kill(a)) = ok(&format!("{SHIM_GLOBALS} kill --all c1 9")).command else {
        panic!("not kill")
    };
    assert!(a.all);
    assert_eq!(a.id, "c1");
    assert_eq!(a.signal().unwrap(), nix::sys::signal::Signal::SIGKILL);

    let Some(Command::Kill(a)) = ok("kill c1").command else {
        panic!("not kill")
    };
    assert_eq!(a.signal().unwrap(), nix::sys::signal::Signal::SIGTERM);

    for line in [
        "kill c1 SIGKILL",
        "kill c1 KILL",
        "kill c1 kill",
        "kill --signal KILL c1",
        "kill -s 9 c1",
    ] {
        let Some(Command::Kill(a)) = ok(line).command else {
            panic!("not kill")
        };
        assert_eq!(
            a.signal().unwrap(),
            nix::sys::signal::Signal::SIGKILL,
            "{line}"
        );
    }
    let Some(Command::Kill(a)) = ok("kill c1 NOPE").command else {
        panic!("not kill")
    };
    assert!(a.signal().is_err());
}

#[test]
fn containerd_list_ps_update() {
    let Some(Command::List(a)) = ok(&format!("{SHIM_GLOBALS} list --format=json")).command else {
        panic!("not list")
    };
    assert_eq!(a.format, ferry::cli::ListFormat::Json);
    assert!(!a.quiet);
    assert!(matches!(ok("ls -q").command, Some(Command::List(a)) if a.quiet));

    let Some(Command::Ps(a)) = ok(&format!("{SHIM_GLOBALS} ps --format json c1")).command else {
        panic!("not ps")
    };
    assert_eq!(a.format, ferry::cli::PsFormat::Json);
    assert_eq!(a.id, "c1");
    assert!(a.ps_args.is_empty());
    let Some(Command::Ps(a)) = ok("ps c1 -ef").command else {
        panic!("not ps")
    };
    assert_eq!(a.ps_args, ["-ef"]);
    let Some(Command::Ps(a)) = ok("ps c1 -o pid,comm").command else {
        panic!("not ps")
    };
    assert_eq!(a.ps_args, ["-o", "pid,comm"]);

    let Some(Command::Update(a)) = ok(&format!("{SHIM_GLOBALS} update --resources=- c1")).command
    else {
        panic!("not update")
    };
    assert_eq!(a.resources, p("-"));
    assert_eq!(a.id, "c1");
}

#[test]
fn containerd_events() {
    // go-runc's Stats() and Events() (interval formatted as `--interval=%ds`).
    let Some(Command::Events(a)) = ok(&format!("{SHIM_GLOBALS} events --stats c1")).command else {
        panic!("not events")
    };
    assert!(a.stats);
    assert_eq!(a.id, "c1");
    assert_eq!(
        a.interval,
        std::time::Duration::from_secs(5),
        "runc's default"
    );
    let Some(Command::Events(a)) = ok(&format!("{SHIM_GLOBALS} events --interval=10s c1")).command
    else {
        panic!("not events")
    };
    assert!(!a.stats);
    assert_eq!(a.interval, std::time::Duration::from_secs(10));
    let Some(Command::Events(a)) = ok("events --interval 500ms -stats c1").command else {
        panic!("not events")
    };
    assert!(a.stats);
    assert_eq!(a.interval, std::time::Duration::from_millis(500));
    for bad in [
        "events --interval 5 c1",
        "events --interval=0s c1",
        "events --stats",
    ] {
        let args: Vec<&str> = std::iter::once("ferry")
            .chain(bad.split_whitespace())
            .collect();
        assert!(parse(&args).is_err(), "`{bad}` should not parse");
    }
}

#[test]
fn containerd_checkpoint() {
    let cli = ok(&format!(
        "{SHIM_GLOBALS} checkpoint --image-path /img --work-path /w/criu-work \
         --parent-path ../parent --tcp-established --ext-unix-sk --shell-job \
         --page-server 10.0.0.2:27 --file-locks --manage-cgroups-mode soft \
         --empty-ns network --empty-ns uts --lazy-pages --status-fd 3 --leave-running --pre-dump c1"
    ));
    let Some(Command::Checkpoint(a)) = cli.command else {
        panic!("not checkpoint")
    };
    assert_eq!(a.id, "c1");
    assert_eq!(a.criu.image_path, p("/img"));
    assert_eq!(a.criu.work_path, p("/w/criu-work"));
    assert_eq!(a.criu.parent_path, p("../parent"));
    assert!(a.criu.tcp_established && a.criu.ext_unix_sk && a.criu.shell_job);
    assert!(a.criu.file_locks && a.criu.lazy_pages);
    assert_eq!(a.criu.page_server.as_deref(), Some("10.0.0.2:27"));
    assert_eq!(a.criu.manage_cgroups_mode, Some(ManageCgroupsMode::Soft));
    assert_eq!(a.criu.empty_ns, ["network", "uts"]);
    assert_eq!(a.criu.status_fd, 3);
    assert!(a.leave_running && a.pre_dump);

    let Some(Command::Checkpoint(a)) = ok("checkpoint c1").command else {
        panic!("not checkpoint")
    };
    assert_eq!(a.criu.status_fd, -1);
}

#[test]
fn containerd_restore_with_single_dash_no_subreaper() {
    let cli = ok(&format!(
        "{SHIM_GLOBALS} restore --image-path /img --work-path /w/criu-work \
         --parent-path ../parent --tcp-established --detach --pid-file /b/init.pid \
         --console-socket /tmp/pty.sock --no-pivot -no-subreaper --bundle /b c1"
    ));
    let Some(Command::Restore(a)) = cli.command else {
        panic!("not restore")
    };
    assert_eq!(a.id.as_deref(), Some("c1"));
    assert!(a.detach && a.no_subreaper && a.no_pivot && a.criu.tcp_established);
    assert_eq!(a.bundle, p("/b"));
    assert_eq!(a.pid_file, p("/b/init.pid"));
    assert_eq!(a.console_socket, p("/tmp/pty.sock"));
    assert_eq!(a.criu.parent_path, p("../parent"));

    // The short form §2.5 quotes.
    let Some(Command::Restore(a)) = ok("restore -d -no-subreaper c1").command else {
        panic!("not restore")
    };
    assert!(a.detach && a.no_subreaper);
}

// --- podman and conmon ----------------------------------------------------------------

const PODMAN_GLOBALS: &str = "--systemd-cgroup --log-format=json --log /run/libpod/c1/oci-log";

#[test]
fn conmon_create() {
    let cli = ok(&format!(
        "{PODMAN_GLOBALS} create --bundle /b --pid-file /run/c1/pidfile --no-pivot \
         --no-new-keyring --preserve-fds 1 --console-socket /tmp/conmon-term.ABC123 c1"
    ));
    assert_eq!(cli.global.log, p("/run/libpod/c1/oci-log"));
    assert_eq!(cli.global.log_format, LogFormat::Json);
    assert!(cli.global.systemd_cgroup);
    assert_eq!(cli.global.root, None, "podman passes no --root");
    let Some(Command::Create(a)) = cli.command else {
        panic!("not create")
    };
    assert_eq!(a.flags.bundle, p("/b"));
    assert_eq!(a.flags.pid_file, p("/run/c1/pidfile"));
    assert_eq!(a.flags.console_socket, p("/tmp/conmon-term.ABC123"));
    assert_eq!(a.flags.preserve_fds, 1);
    assert!(a.flags.no_pivot && a.flags.no_new_keyring);
}

#[test]
fn conmon_exec_with_process_file() {
    let cli = ok(&format!(
        "{PODMAN_GLOBALS} exec --pid-file /run/exec.pid --process /tmp/exec-process-1 \
         --console-socket /tmp/conmon-term.X --detach --preserve-fds 2 c1"
    ));
    let Some(Command::Exec(a)) = cli.command else {
        panic!("not exec")
    };
    assert_eq!(a.id, "c1");
    assert_eq!(a.process, p("/tmp/exec-process-1"));
    assert_eq!(a.pid_file, p("/run/exec.pid"));
    assert_eq!(a.console_socket, p("/tmp/conmon-term.X"));
    assert!(a.detach);
    assert_eq!(a.preserve_fds, 2);
    assert!(a.command.is_empty());
}

#[test]
fn exec_with_a_command() {
    let Some(Command::Exec(a)) = ok(
        "exec -t --cwd /tmp -e A=1 --env B=2 -u 1000:1000 -g 10 --additional-gids 11 \
         --cap CAP_NET_ADMIN -c CAP_SYS_PTRACE --no-new-privs -d c1 sh -c echo -n hi",
    )
    .command
    else {
        panic!("not exec")
    };
    assert!(a.tty && a.detach && a.no_new_privs);
    assert_eq!(a.cwd, p("/tmp"));
    assert_eq!(a.env, ["A=1", "B=2"]);
    assert_eq!(a.user.as_deref(), Some("1000:1000"));
    assert_eq!(a.additional_gids, [10, 11]);
    assert_eq!(a.cap, ["CAP_NET_ADMIN", "CAP_SYS_PTRACE"]);
    assert_eq!(a.id, "c1");
    assert_eq!(a.command, ["sh", "-c", "echo", "-n", "hi"]);

    let Some(Command::Exec(a)) = ok("exec c1 ls -l --color").command else {
        panic!("not exec")
    };
    assert_eq!(a.command, ["ls", "-l", "--color"]);
    assert!(!a.tty);
}

#[test]
fn conmon_direct_calls() {
    let Some(Command::Kill(a)) = ok(&format!("{PODMAN_GLOBALS} kill c1 15")).command else {
        panic!("not kill")
    };
    assert_eq!(a.signal().unwrap(), nix::sys::signal::Signal::SIGTERM);
    assert!(!a.all);
    assert!(
        matches!(ok(&format!("{PODMAN_GLOBALS} kill --all c1 9")).command,
        Some(Command::Kill(a)) if a.all)
    );
    assert!(
        matches!(ok(&format!("{PODMAN_GLOBALS} delete --force c1")).command,
        Some(Command::Delete(a)) if a.force)
    );
    assert!(
        matches!(ok(&format!("{PODMAN_GLOBALS} update --resources=/tmp/res.json c1")).command,
        Some(Command::Update(a)) if a.resources == p("/tmp/res.json"))
    );
    assert!(matches!(ok(&format!("{PODMAN_GLOBALS} pause c1")).command,
        Some(Command::Pause(a)) if a.id == "c1"));
    assert!(matches!(ok(&format!("{PODMAN_GLOBALS} resume c1")).command,
        Some(Command::Resume(a)) if a.id == "c1"));
}

#[test]
fn podman_checkpoint_with_repeated_leave_running() {
    let cli = ok("--log-format=json --log /run/libpod/c1/oci-log checkpoint \
         --image-path /b/checkpoint --work-path /b --leave-running --tcp-established \
         --file-locks --leave-running c1");
    assert_eq!(cli.global.log_format, LogFormat::Json);
    let Some(Command::Checkpoint(a)) = cli.command else {
        panic!("not checkpoint")
    };
    assert!(a.leave_running && a.criu.tcp_established && a.criu.file_locks);
    assert_eq!(a.criu.image_path, p("/b/checkpoint"));
    assert_eq!(a.criu.work_path, p("/b"));

    // §2.5 verbatim.
    assert!(
        matches!(ok("checkpoint --leave-running --leave-running c1").command,
        Some(Command::Checkpoint(a)) if a.leave_running)
    );

    // Pre-checkpoint, then a checkpoint on top of it.
    let Some(Command::Checkpoint(a)) =
        ok("checkpoint --image-path /b/pre-checkpoint --work-path /b --pre-dump c1").command
    else {
        panic!("not checkpoint")
    };
    assert!(a.pre_dump);
    let Some(Command::Checkpoint(a)) = ok(
        "checkpoint --image-path /b/checkpoint --work-path /b --parent-path ../pre-checkpoint c1",
    )
    .command
    else {
        panic!("not checkpoint")
    };
    assert_eq!(a.criu.parent_path, p("../pre-checkpoint"));
}

#[test]
fn checkpoint_extras() {
    let Some(Command::Checkpoint(a)) = ok(
        "checkpoint --tcp-close --tcp-skip-in-flight --link-remap --auto-dedup -e /tmp/c1.tar \
         --compress zstd --keep --ignore-rootfs --print-stats c1",
    )
    .command
    else {
        panic!("not checkpoint")
    };
    assert!(a.criu.tcp_close && a.tcp_skip_in_flight && a.link_remap && a.criu.auto_dedup);
    assert_eq!(a.export, p("/tmp/c1.tar"));
    assert_eq!(a.compress, Some(ferry::cli::Compression::Zstd));
    assert!(a.criu.keep && a.criu.ignore_rootfs && a.criu.print_stats.is_some());
}

#[test]
fn conmon_restore() {
    let cli = ok(
        "--systemd-cgroup --log-format=json --log /run/libpod/c1/oci-log restore --bundle /b \
         --pid-file /run/c1/pidfile --no-pivot --no-new-keyring --detach \
         --image-path /b/checkpoint --work-path /b --tcp-established --tcp-close --file-locks \
         --lsm-mount-context=system_u:object_r:container_file_t:s0:c1,c2 \
         --lsm-profile=selinux:system_u:system_r:container_t:s0:c1,c2 \
         --preserve-fds 2 --console-socket /tmp/conmon-term.XYZ c1",
    );
    assert!(cli.global.systemd_cgroup);
    let Some(Command::Restore(a)) = cli.command else {
        panic!("not restore")
    };
    assert_eq!(a.id.as_deref(), Some("c1"));
    assert_eq!(a.bundle, p("/b"));
    assert_eq!(a.pid_file, p("/run/c1/pidfile"));
    assert!(a.no_pivot && a.no_new_keyring && a.detach);
    assert_eq!(a.criu.image_path, p("/b/checkpoint"));
    assert_eq!(a.criu.work_path, p("/b"));
    assert!(a.criu.tcp_established && a.criu.tcp_close && a.criu.file_locks);
    assert_eq!(
        a.lsm_mount_context.as_deref(),
        Some("system_u:object_r:container_file_t:s0:c1,c2")
    );
    assert_eq!(
        a.lsm_profile.as_deref(),
        Some("selinux:system_u:system_r:container_t:s0:c1,c2")
    );
    assert_eq!(a.preserve_fds, 2);
    assert_eq!(a.console_socket, p("/tmp/conmon-term.XYZ"));
}

#[test]
fn restore_extras() {
    let Some(Command::Restore(a)) =
        ok("restore -i /tmp/c1.tar --name c2 --keep --ignore-rootfs --print-stats -b /b c1")
            .command
    else {
        panic!("not restore")
    };
    assert_eq!(a.import, p("/tmp/c1.tar"));
    assert_eq!(a.name.as_deref(), Some("c2"));
    assert!(a.criu.keep && a.criu.ignore_rootfs && a.criu.print_stats.is_some());
}

// --- global flags and other commands ---------------------------------------------------

#[test]
fn global_flags_work_after_the_subcommand_too() {
    let cli = ok("state --root /r --debug --log-format text c1");
    assert_eq!(cli.global.root, p("/r"));
    assert!(cli.global.debug);
    assert_eq!(cli.global.log_format, LogFormat::Text);
    let cli = ok("--debug=false --criu /usr/local/sbin/criu list");
    assert!(!cli.global.debug);
    assert_eq!(cli.global.criu, p("/usr/local/sbin/criu"));
    let cli = ok("-debug -root /r list");
    assert!(cli.global.debug);
    assert_eq!(cli.global.root, p("/r"));
}

#[test]
fn spec_run_features() {
    let cli = ok("spec --rootless -b /b");
    assert_eq!(cli.global.rootless, Some(Rootless::True));
    assert!(matches!(cli.command, Some(Command::Spec(a)) if a.bundle == p("/b")));
    let cli = ok("--rootless false spec");
    assert_eq!(cli.global.rootless, Some(Rootless::False));
    let Some(Command::Run(a)) = ok("run -d --keep --bundle /b --pid-file /p c1").command else {
        panic!("not run")
    };
    assert!(a.detach && a.keep);
    assert_eq!(a.flags.bundle, p("/b"));
    assert_eq!(a.id.as_deref(), Some("c1"));
    assert!(matches!(ok("features").command, Some(Command::Features(_))));
}

#[test]
fn update_flags() {
    let Some(Command::Update(a)) = ok(
        "update --memory 64m --cpu-quota 50000 --cpu-period 100000 --cpu-shares 512 \
         --cpuset-cpus 0-1 --cpuset-mems 0 --pids-limit 100 c1",
    )
    .command
    else {
        panic!("not update")
    };
    assert_eq!(a.memory, Some(64 << 20));
    assert_eq!(a.cpu_quota, Some(50000));
    assert_eq!(a.cpu_period, Some(100000));
    assert_eq!(a.cpu_shares, Some(512));
    assert_eq!(a.cpuset_cpus.as_deref(), Some("0-1"));
    assert_eq!(a.pids_limit, Some(100));
    assert!(matches!(ok("update --memory -1 --cpu-share 2 c1").command,
        Some(Command::Update(a)) if a.memory == Some(-1) && a.cpu_shares == Some(2)));
}

#[test]
fn usage_errors() {
    assert!(parse(&["ferry", "frobnicate", "c1"]).is_err());
    assert!(parse(&["ferry", "start"]).is_err());
    assert!(parse(&["ferry", "--log-format", "xml", "list"]).is_err());
    let err = parse(&["ferry", "restore", "--lsm-mount-context"]).unwrap_err();
    assert!(ferry::cli::render_clap_error(&err).contains("flag needs an argument"));
}

// --- the binary: probes podman runs ----------------------------------------------------

fn ferry(args: &[&str]) -> std::process::Output {
    Process::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("run the ferry binary")
}

#[test]
fn binary_checkpoint_help_exits_zero() {
    let out = ferry(&["checkpoint", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--leave-running"));
}

#[test]
fn binary_lsm_mount_context_probe() {
    let out = ferry(&["restore", "--lsm-mount-context"]);
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("flag needs an argument"), "{text}");
}

#[test]
fn binary_version() {
    let out = ferry(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!("ferry version {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(lines[1].starts_with("spec: 1."), "{text}");
    assert!(lines[2].starts_with("criu: "), "{text}");
    assert!(ferry(&["-v"]).status.success());
}

#[test]
fn binary_unknown_command_fails_with_usage_code() {
    let out = ferry(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn binary_spec_then_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().to_str().unwrap();
    assert!(ferry(&["spec", "--bundle", bundle]).status.success());
    assert!(Path::new(bundle).join("config.json").exists());
    let out = ferry(&["spec", "--bundle", bundle]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("ferry: ") && err.contains("exists"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn binary_error_goes_to_the_json_log_as_its_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), "{}").unwrap();
    let log = dir.path().join("oci-log");
    let out = ferry(&[
        "--log-format=json",
        "--log",
        log.to_str().unwrap(),
        "spec",
        "-b",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["level"], "error");
    assert!(v["msg"].as_str().unwrap().contains("exists"));
    assert!(last.starts_with("{\"level\":\"error\",\"msg\":"), "{last}");
    assert!(v["time"].as_str().is_some());
}

#[test]
fn binary_features_prints_json() {
    let out = ferry(&["features"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ociVersionMin"], "1.0.0");
}
