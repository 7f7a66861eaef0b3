//! The CRIU driver against the real CRIU: version and feature checks, pre-dump refused on a
//! kernel without soft-dirty, dump and restore of a plain process tree (the counter goes on),
//! stdio pipes handed back through inherit_fd, notify callbacks, and failures that quote
//! CRIU's log. Needs root and CRIU >= 4; fails (never skips) without them.

mod common;

use common::{WAIT, helper, read_counter, require_root, wait_counter_above, wait_for};
use ferry::criu::{
    Criu, DumpRequest, Error, Features, InheritFd, NO_SOFT_DIRTY, NotificationLog, Notify,
    RestoreRequest,
};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The driver, after checking that root and a working CRIU are there.
fn criu() -> Criu {
    require_root();
    let criu = Criu::new();
    match criu.version() {
        Ok(_) => criu,
        Err(e) => panic!(
            "these tests drive the real CRIU and need criu >= 4 on PATH (or FERRY_CRIU): {e}; \
             run scripts/install-deps.sh"
        ),
    }
}

/// The counter helper in a session of its own, writing to `file` every 100 ms, stdio on
/// /dev/null unless `stdout` is given.
fn start_counter(file: &Path, stdout: Option<OwnedFd>) -> Child {
    let mut cmd = Command::new(helper("counter"));
    cmd.arg("0")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(stdout.map(Stdio::from).unwrap_or_else(Stdio::null))
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe. A session leader with no terminal is what CRIU
    // dumps without --shell-job.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start the counter helper");
    wait_counter_above(file, 2);
    child
}

/// A counter running in a temporary directory (kept while it is held), the counter's file,
/// process and pid, and an empty images directory beside it.
fn counting() -> (tempfile::TempDir, PathBuf, Child, i32, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("count");
    let child = start_counter(&file, None);
    let pid = child.id() as i32;
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    (dir, file, child, pid, images)
}

fn alive(pid: i32) -> bool {
    !common::is_zombie_or_gone(pid)
}

/// The state letter of `pid` in /proc (R, S, t, T, Z …).
fn state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, r)| r.trim_start().chars().next())
        .unwrap_or('?')
}

/// A restored process that is our child (rst_sibling): killed and reaped when dropped, so a
/// failing assertion leaves no counter behind.
struct Restored(i32);

impl Drop for Restored {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

fn dump_request(images: &Path, pid: i32) -> DumpRequest {
    DumpRequest {
        images_dir: images.to_path_buf(),
        pid,
        notify_scripts: true,
        ..Default::default()
    }
}

fn soft_dirty_in_kernel() -> bool {
    let out = Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz | grep -q '^CONFIG_MEM_SOFT_DIRTY=y'",
        ])
        .status()
        .expect("sh");
    out.success()
}

#[test]
fn version_is_4_or_later() {
    let v = criu().version().unwrap();
    assert!(v.major >= 4, "criu {v} is too old: ferry needs CRIU >= 4");
    assert!(v.at_least(4, 0));
}

/// `nftables_lock` agrees with `criu check`, keeps its answer per binary and kernel, and
/// asks again when the answer on file is for another binary.
#[test]
fn the_nftables_lock_answer_is_criu_checks_and_is_kept() {
    let criu = criu();
    let dir = tempfile::tempdir().unwrap();
    let direct = Command::new(criu.binary())
        .args(["check", "--feature", "network_lock_nftables"])
        .output()
        .unwrap()
        .status
        .success();
    assert_eq!(criu.nftables_lock(dir.path()), direct);
    let cache = dir.path().join("criu@nftables-lock");
    let text = std::fs::read_to_string(&cache).expect("no answer kept");
    let (key, answer) = text.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(answer, if direct { "yes" } else { "no" });
    // The kept answer is what is used: flipped on file, it is what comes back.
    let flipped = if direct { "no" } else { "yes" };
    std::fs::write(&cache, format!("{key}\n{flipped}\n")).unwrap();
    assert_eq!(criu.nftables_lock(dir.path()), !direct);
    // An answer about another binary (or kernel) is not: criu is asked again.
    std::fs::write(&cache, format!("/elsewhere/criu 1:2 3 4 5.0\n{flipped}\n")).unwrap();
    assert_eq!(criu.nftables_lock(dir.path()), direct);
    // A criu that cannot be found gets no answer, and nothing is kept for it.
    let none = tempfile::tempdir().unwrap();
    assert!(!Criu::with_binary("/nonexistent/criu").nftables_lock(none.path()));
    assert!(!none.path().join("criu@nftables-lock").exists());
}

#[test]
fn a_missing_criu_binary_says_how_to_get_one() {
    let e = Criu::with_binary("/nonexistent/criu")
        .version()
        .unwrap_err();
    assert!(matches!(e, Error::Spawn { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/criu") && msg.contains("FERRY_CRIU"),
        "{msg}"
    );
}

#[test]
fn feature_check_matches_the_kernel_and_pre_dump_refuses_before_freezing() {
    let criu = criu();
    let f = criu
        .check_features(Features {
            mem_track: true,
            lazy_pages: true,
            pidfd_store: true,
        })
        .unwrap();
    let soft_dirty = soft_dirty_in_kernel();
    assert_eq!(f.mem_track, soft_dirty, "{f:?}");
    // Not asked for, not reported.
    let none = criu.check_features(Features::default()).unwrap();
    assert_eq!(none, Features::default());

    let (_dir, file, mut child, pid, images) = counting();
    let mut seen = NotificationLog::default();
    let req = DumpRequest {
        leave_running: true,
        ..dump_request(&images, pid)
    };
    if soft_dirty {
        // A kernel that tracks dirty memory: the pre-dump runs and writes the memory.
        criu.pre_dump(req, &mut seen).unwrap();
        assert!(
            images.join("inventory.img").exists() || images.read_dir().unwrap().next().is_some()
        );
    } else {
        let e = criu.pre_dump(req, &mut seen).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
        assert_eq!(e.to_string(), NO_SOFT_DIRTY);
        // CRIU never got the request: no log, no notification, and the counter never stopped.
        assert!(std::fs::read_dir(&images).unwrap().next().is_none());
        assert!(seen.seen.is_empty());
        assert!(!matches!(state(pid), 't' | 'T'), "state {}", state(pid));
    }
    let now = read_counter(&file).unwrap();
    wait_counter_above(&file, now);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn dump_and_restore_of_a_process_tree_goes_on_counting() {
    let criu = criu();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("count");
    let mut child = start_counter(&file, None);
    let pid = child.id() as i32;
    let images = dir.path().join("images");
    let work = dir.path().join("work");
    std::fs::create_dir(&images).unwrap();
    std::fs::create_dir(&work).unwrap();

    let mut dumped = NotificationLog::default();
    let req = DumpRequest {
        work_dir: Some(work.clone()),
        ..dump_request(&images, pid)
    };
    let report = criu.dump(req, &mut dumped).unwrap();
    assert_eq!(report.log, work.join("dump.log"));
    assert_eq!(
        dumped.scripts(),
        ["pre-dump", "query-ext-files", "post-dump"]
    );
    assert_eq!(
        dumped.pid_of("post-dump"),
        Some(0),
        "CRIU sends no pid with post-dump"
    );
    let stats = report.stats.expect("stats-dump in the work dir");
    assert!(stats.pages_written > 0, "{stats:?}");
    assert!(stats.frozen_time_us > 0, "{stats:?}");

    // Without --leave-running CRIU killed the tree; reap it so its pid is free again.
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the dumped counter should have been killed: {status}"
    );
    assert!(!alive(pid));
    let at_dump = read_counter(&file).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        read_counter(&file),
        Some(at_dump),
        "nothing counts while dumped"
    );

    let mut restored = NotificationLog::default();
    let mut criu_pid = 0;
    let req = RestoreRequest {
        images_dir: images.clone(),
        work_dir: Some(work.clone()),
        rst_sibling: true,
        notify_scripts: true,
        ..Default::default()
    };
    let report = criu
        .restore(req, &mut restored, |p| {
            criu_pid = p;
            Ok(())
        })
        .unwrap();
    let _restored = Restored(report.pid);
    assert!(criu_pid > 0);
    // CRIU restores the tree with its pids.
    assert_eq!(report.pid, pid);
    assert_eq!(
        restored.pid_of("post-restore"),
        Some(pid),
        "{:?}",
        restored.seen
    );
    // A host process has no namespaces of its own to set up: no `setup-namespaces` here.
    assert_eq!(
        restored.scripts(),
        ["pre-restore", "post-restore", "pre-resume", "post-resume"],
    );
    assert!(report.stats.is_some(), "stats-restore in the work dir");
    assert_eq!(report.log, work.join("restore.log"));
    // rst_sibling: the restored counter is our child.
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: i32 = ppid
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, std::process::id() as i32);

    // It goes on from where it was, not from 1.
    let next = wait_counter_above(&file, at_dump);
    assert!(next > at_dump);
}

#[test]
fn restore_hands_a_new_stdout_pipe_through_inherit_fd() {
    let criu = criu();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("count");
    let (old_read, old_write) = nix::unistd::pipe().unwrap();
    let old_ino = std::fs::metadata(format!("/proc/self/fd/{}", old_read.as_raw_fd()))
        .unwrap()
        .ino();
    let mut child = start_counter(&file, Some(old_write));
    let pid = child.id() as i32;
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    criu.dump(dump_request(&images, pid), &mut NotificationLog::default())
        .unwrap();
    child.wait().unwrap();
    drop(old_read);
    let at_dump = read_counter(&file).unwrap();

    // The restored counter's stdout is this new pipe, the way descriptors.json works.
    let (new_read, new_write) = nix::unistd::pipe().unwrap();
    let req = RestoreRequest {
        images_dir: images.clone(),
        rst_sibling: true,
        inherit_fds: vec![InheritFd {
            key: format!("pipe:[{old_ino}]"),
            fd: new_write,
        }],
        ..Default::default()
    };
    let report = criu
        .restore(req, &mut NotificationLog::default(), |_| Ok(()))
        .unwrap();
    let _restored = Restored(report.pid);
    assert_eq!(report.pid, pid);
    let mut out = std::fs::File::from(new_read);
    let mut text = String::new();
    let mut buf = [0u8; 256];
    wait_for(
        "the restored counter to print on the new pipe",
        WAIT,
        || {
            let n = out.read(&mut buf).unwrap();
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            text.lines()
                .filter_map(|l| l.trim().parse::<u64>().ok())
                .any(|v| v > at_dump)
        },
    );
    // Every number it printed continues the count.
    let first: u64 = text.lines().find_map(|l| l.trim().parse().ok()).unwrap();
    assert!(
        first >= at_dump,
        "restarted at {first} after dumping at {at_dump}: {text:?}"
    );
}

/// Fails the notification named `fail_on`, records the rest.
struct FailingNotify {
    fail_on: &'static str,
    seen: Vec<String>,
}

impl Notify for FailingNotify {
    fn notify(
        &mut self,
        script: &str,
        _pid: i32,
        _fds: Vec<OwnedFd>,
    ) -> Result<(), ferry::criu::CallbackError> {
        self.seen.push(script.to_string());
        if script == self.fail_on {
            return Err(format!("test refuses {script}").into());
        }
        Ok(())
    }
}

#[test]
fn a_failing_post_dump_callback_aborts_the_dump_and_leaves_the_tree_running() {
    let criu = criu();
    let (_dir, file, mut child, pid, images) = counting();
    let mut notify = FailingNotify {
        fail_on: "post-dump",
        seen: Vec::new(),
    };
    let e = criu
        .dump(dump_request(&images, pid), &mut notify)
        .unwrap_err();
    let Error::Callback { script, log, .. } = &e else {
        panic!("expected a callback error, got {e:?}");
    };
    assert_eq!(script, "post-dump");
    assert_eq!(log.as_deref(), Some(images.join("dump.log").as_path()));
    assert!(e.to_string().contains("test refuses post-dump"), "{e}");
    // CRIU thawed the tree: it is alive and counting.
    assert!(alive(pid));
    let now = read_counter(&file).unwrap();
    wait_counter_above(&file, now);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_failing_dump_quotes_the_error_lines_of_the_log() {
    let criu = criu();
    let dir = tempfile::tempdir().unwrap();
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = pid_max - 1;
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let e = criu
        .dump(
            dump_request(dir.path(), pid),
            &mut NotificationLog::default(),
        )
        .unwrap_err();
    let Error::Failed { log, excerpt, .. } = &e else {
        panic!("expected criu to fail, got {e:?}");
    };
    let log: PathBuf = log.clone().unwrap();
    assert_eq!(log, dir.path().join("dump.log"));
    assert!(excerpt.contains("Error"), "{excerpt}");
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(msg.starts_with("criu dump failed"), "{msg}");
    assert!(msg.contains(&log.display().to_string()), "{msg}");
    assert!(msg.contains("Dumping FAILED"), "{msg}");
    // The fd-limit Error CRIU logs on every run here is not given as the cause.
    assert!(
        !msg.starts_with("criu dump failed: Error (criu/util.c"),
        "{msg}"
    );
}

#[test]
fn a_failing_before_tasks_hook_stops_criu_before_it_gets_the_request() {
    // Without notify scripts there is nothing to hold criu at, so the hook runs first.
    let criu = criu();
    let dir = tempfile::tempdir().unwrap();
    let mut criu_pid = 0;
    let req = RestoreRequest {
        images_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let e = criu
        .restore(req, &mut NotificationLog::default(), |p| {
            criu_pid = p;
            Err("no cgroup for you".into())
        })
        .unwrap_err();
    assert!(matches!(e, Error::BeforeTasks { .. }), "{e:?}");
    assert!(e.to_string().contains("no cgroup for you"), "{e}");
    assert!(!alive(criu_pid), "criu {criu_pid} should be gone");
    // It never got the request, so it wrote no log.
    assert!(!dir.path().join("restore.log").exists());
}

#[test]
fn a_before_tasks_hook_runs_while_criu_starts_and_its_failure_restores_nothing() {
    let criu = criu();
    let (_dir, file, mut child, pid, images) = counting();
    criu.dump(dump_request(&images, pid), &mut NotificationLog::default())
        .unwrap();
    let _ = child.wait();
    let at_dump = read_counter(&file).unwrap();

    let restore = |hook_fails: bool| {
        let req = RestoreRequest {
            images_dir: images.clone(),
            rst_sibling: true,
            notify_scripts: true,
            ..Default::default()
        };
        let mut seen = NotificationLog::default();
        let mut tree_during_hook = true;
        let r = criu.restore(req, &mut seen, |_| {
            // Long enough that criu, were it not held, would have restored the tree.
            std::thread::sleep(std::time::Duration::from_millis(500));
            tree_during_hook = alive(pid);
            if hook_fails {
                Err("no cgroup for you".into())
            } else {
                Ok(())
            }
        });
        (r, seen, tree_during_hook)
    };

    // A failing hook: criu is refused at pre-restore, before it forks anything.
    let (r, seen, tree_during_hook) = restore(true);
    assert!(!tree_during_hook);
    let e = r.unwrap_err();
    assert!(matches!(e, Error::BeforeTasks { .. }), "{e:?}");
    assert!(e.to_string().contains("no cgroup for you"), "{e}");
    assert!(
        seen.scripts().is_empty(),
        "the callbacks never see a notification once the hook failed: {:?}",
        seen.seen
    );
    assert!(!alive(pid), "nothing was restored");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(read_counter(&file), Some(at_dump), "nothing counts");

    // A hook that succeeds: the tree is restored only after it, and counts on.
    let (r, seen, tree_during_hook) = restore(false);
    let report = r.unwrap();
    let _restored = Restored(report.pid);
    assert!(
        !tree_during_hook,
        "criu made the tree before the hook was done"
    );
    assert_eq!(report.pid, pid);
    assert_eq!(seen.scripts()[0], "pre-restore", "{:?}", seen.seen);
    assert!(wait_counter_above(&file, at_dump) > at_dump);
}

#[test]
fn a_dump_through_ferrys_page_server_restores_like_a_local_one() {
    use ferry::archive::criu_images::decode_pagemap;
    use ferry::criu::page_server::{DirSink, serve};
    let criu = criu();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("count");
    let mut child = start_counter(&file, None);
    let pid = child.id() as i32;
    let local = dir.path().join("local");
    let served = dir.path().join("served");
    std::fs::create_dir(&local).unwrap();
    std::fs::create_dir(&served).unwrap();

    // The reference: CRIU writes the images itself (and leaves the counter running).
    let req = DumpRequest {
        leave_running: true,
        ..dump_request(&local, pid)
    };
    criu.dump(req, &mut NotificationLog::default()).unwrap();

    // The same tree again, its memory sent to ferry's page server.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let sink_dir = served.clone();
    let server = std::thread::spawn(move || {
        let mut s = ours;
        serve(&mut s, &mut DirSink { dir: sink_dir })
    });
    let req = DumpRequest {
        page_sink: Some(std::sync::Arc::new(OwnedFd::from(theirs))),
        ..dump_request(&served, pid)
    };
    let report = criu.dump(req, &mut NotificationLog::default()).unwrap();
    let summary = server.join().unwrap().unwrap();
    let stats = report.stats.unwrap();
    assert_eq!(summary.pages_bytes, stats.pages_written * 4096, "{stats:?}");
    child.wait().unwrap();

    // Same pagemaps (only the pages image ids differ), same amount of page data.
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("pagemap-"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&local), names(&served));
    assert!(!names(&local).is_empty());
    for n in names(&local) {
        let a = decode_pagemap(&std::fs::read(local.join(&n)).unwrap()).unwrap();
        let b = decode_pagemap(&std::fs::read(served.join(&n)).unwrap()).unwrap();
        assert_eq!(a.entries, b.entries, "{n}");
        let size = |d: &Path, id: u32| {
            std::fs::metadata(d.join(format!("pages-{id}.img")))
                .unwrap()
                .len()
        };
        assert_eq!(size(&local, a.pages_id), size(&served, b.pages_id), "{n}");
    }

    // And CRIU restores from what the page server wrote: the counter goes on.
    let at_dump = read_counter(&file).unwrap();
    let req = RestoreRequest {
        images_dir: served.clone(),
        rst_sibling: true,
        ..Default::default()
    };
    let report = criu
        .restore(req, &mut NotificationLog::default(), |_| Ok(()))
        .unwrap();
    let _restored = Restored(report.pid);
    assert_eq!(report.pid, pid);
    assert!(wait_counter_above(&file, at_dump) > at_dump);
}
