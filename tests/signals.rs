//! `ferry kill`: the signal by name (with or without SIG), by number, positionally or with
//! `--signal`, the TERM default, `--all`, and a clear error for a signal that does not exist.

mod common;

use common::*;

/// An init that logs each USR1/TERM it gets to /sig.log and ignores nothing else.
const TRAPPER: &str = r#"
trap 'echo USR1 >> /sig.log' USR1
trap 'echo TERM >> /sig.log; exit 0' TERM
touch /ready
while :; do sleep 0.1; done
"#;

fn trapper(ferry: &Ferry) -> (Bundle, String) {
    let mut bundle = Bundle::new(ferry, &["sh", "/trapper.sh"]);
    bundle.write_file("/trapper.sh", TRAPPER, 0o755);
    let id = ferry.id("sig");
    ferry.start_container(&bundle, &id);
    wait_for("the init to install its traps", WAIT, || {
        bundle.host_path("/ready").exists()
    });
    (bundle, id)
}

fn log_lines(bundle: &Bundle) -> Vec<String> {
    bundle
        .read_file("/sig.log")
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn kill_without_a_signal_sends_term() {
    let ferry = Ferry::new();
    let (bundle, id) = trapper(&ferry);
    ferry.run(&["kill", &id]).ok();
    ferry.wait_status(&id, "stopped");
    assert_eq!(log_lines(&bundle), vec!["TERM"]);
}

#[test]
fn every_spelling_of_a_signal_is_accepted() {
    let ferry = Ferry::new();
    let (bundle, id) = trapper(&ferry);
    let spellings: [&[&str]; 5] = [
        &["kill", &id, "USR1"],
        &["kill", &id, "SIGUSR1"],
        &["kill", &id, "10"],
        &["kill", "--signal", "USR1", &id],
        &["kill", &id, "usr1"],
    ];
    for (n, args) in spellings.iter().enumerate() {
        ferry.run(args).ok();
        // Wait for each delivery: two pending USR1 would merge into one.
        wait_for(&format!("USR1 number {} ({args:?})", n + 1), WAIT, || {
            log_lines(&bundle).len() > n
        });
    }
    assert_eq!(log_lines(&bundle), vec!["USR1"; 5]);
    assert_eq!(ferry.status(&id).as_deref(), Some("running"));
}

#[test]
fn term_by_name_and_number() {
    for sig in ["TERM", "SIGTERM", "15"] {
        let ferry = Ferry::new();
        let (bundle, id) = trapper(&ferry);
        ferry.run(&["kill", &id, sig]).ok();
        ferry.wait_status(&id, "stopped");
        assert_eq!(log_lines(&bundle), vec!["TERM"], "kill {sig}");
    }
}

#[test]
fn kill_stops_an_init_that_ignores_term() {
    for sig in ["KILL", "SIGKILL", "9"] {
        let ferry = Ferry::new();
        let bundle = Bundle::new(
            &ferry,
            &["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
        );
        let id = ferry.id("kill");
        ferry.start_container(&bundle, &id);
        ferry.run(&["kill", &id, sig]).ok();
        ferry.wait_status(&id, "stopped");
    }
}

#[test]
fn kill_all_reaches_every_process_of_the_container() {
    let ferry = Ferry::new();
    let worker = r#"trap 'echo worker >> /usr1.log; exit 0' USR1
touch /ready.$$
while :; do sleep 0.1; done
"#;
    let init = r#"trap 'echo init >> /usr1.log' USR1
sh /worker.sh &
sh /worker.sh &
touch /ready.init
while :; do sleep 0.1; done
"#;
    let mut bundle = Bundle::new(&ferry, &["sh", "/init.sh"]);
    bundle.write_file("/worker.sh", worker, 0o755);
    bundle.write_file("/init.sh", init, 0o755);
    let id = ferry.id("all");
    ferry.start_container(&bundle, &id);
    let readies = || {
        std::fs::read_dir(bundle.rootfs())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("ready."))
            .count()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while readies() != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "init and two workers never all became ready; rootfs holds {:?}",
            std::fs::read_dir(bundle.rootfs())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    ferry.run(&["kill", "--all", &id, "USR1"]).ok();
    let count = |who: &str| {
        bundle
            .read_file("/usr1.log")
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == who)
            .count()
    };
    wait_for("both workers to get USR1", WAIT, || count("worker") == 2);
    wait_for("the init to get USR1", WAIT, || count("init") == 1);

    // --all with KILL leaves no process of the container alive.
    let pids = std::fs::read_to_string(cgroup_dir(ferry.pid(&id), "pids").join("cgroup.procs"))
        .unwrap_or_default();
    ferry.run(&["kill", "--all", &id, "KILL"]).ok();
    ferry.wait_status(&id, "stopped");
    for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        wait_for(&format!("process {pid} to die"), WAIT, || {
            is_zombie_or_gone(pid)
        });
    }
}

#[test]
fn an_invalid_signal_is_refused_and_the_container_keeps_running() {
    let ferry = Ferry::new();
    let (bundle, id) = trapper(&ferry);
    for bad in ["NOPE", "SIGNOPE", "999", "-3"] {
        let out = ferry.run(&["kill", &id, bad]).fails();
        assert!(
            out.stderr.contains(bad.trim_start_matches('-')),
            "the error for signal {bad:?} should name it: {:?}",
            out.stderr
        );
    }
    assert_eq!(ferry.status(&id).as_deref(), Some("running"));
    assert!(
        log_lines(&bundle).is_empty(),
        "a signal was delivered anyway"
    );
}

#[test]
fn kill_of_a_stopped_container_fails() {
    let ferry = Ferry::new();
    let bundle = Bundle::new(&ferry, &["true"]);
    let id = ferry.id("dead");
    ferry.start_container(&bundle, &id);
    ferry.wait_status(&id, "stopped");
    ferry.run(&["kill", &id, "KILL"]).fails();
}
