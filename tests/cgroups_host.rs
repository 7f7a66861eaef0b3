//! The cgroup code against this host's real hierarchy (v1 on the dev VMs, v2 elsewhere):
//! a `sleep` is moved in, limited, frozen, thawed, killed, and its cgroup removed. Needs root.

use ferry::runtime::cgroups::{self, Cgroup};
use oci_spec::runtime::{LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{SystemTime, UNIX_EPOCH};

/// Kills and reaps the child, and removes the cgroup, even when an assertion fails.
struct Cleanup {
    child: Child,
    cgroup: Box<dyn Cgroup>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.cgroup.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.cgroup.destroy();
    }
}

fn read(dir: &Path, file: &str) -> String {
    let path = dir.join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn dir_of(paths: &[(String, PathBuf)], controller: &str) -> Option<PathBuf> {
    paths
        .iter()
        .find(|(c, _)| c == controller)
        .map(|(_, d)| d.clone())
}

#[test]
fn real_hierarchy_apply_set_freeze_destroy() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test drives the host's cgroups and needs root: run it with sudo (it is not skipped)"
    );
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let id = format!("test-{}-{nanos:x}", std::process::id());
    let rel = format!("/ferry/{id}");
    let cgroup = cgroups::for_container(Some(Path::new(&rel)), &id).expect("open cgroup");
    let child = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id() as i32;
    let guard = Cleanup { child, cgroup };
    let cg = &guard.cgroup;

    cg.apply(pid).expect("apply");
    let paths = cg.paths();
    assert!(!paths.is_empty());
    for (controller, dir) in &paths {
        assert!(
            dir.ends_with(format!("ferry/{id}")),
            "{controller}: {dir:?}"
        );
        assert!(dir.is_dir(), "{controller}: {dir:?} was not created");
    }
    assert_eq!(cg.pids().expect("pids"), vec![pid]);

    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(20i64).build().unwrap())
        .build()
        .unwrap();
    cg.set(&resources).expect("set");

    let v1 = dir_of(&paths, "memory").is_some();
    if v1 {
        let memory = dir_of(&paths, "memory").unwrap();
        let pids = dir_of(&paths, "pids").expect("pids hierarchy");
        let freezer = dir_of(&paths, "freezer").expect("freezer hierarchy");
        assert_eq!(read(&memory, "memory.limit_in_bytes"), "67108864");
        assert_eq!(read(&pids, "pids.max"), "20");
        assert!(
            read(&memory, "cgroup.procs")
                .lines()
                .any(|l| l == pid.to_string())
        );
        cg.freeze().expect("freeze");
        assert_eq!(read(&freezer, "freezer.state"), "FROZEN");
    } else {
        let dir = &paths[0].1;
        assert_eq!(read(dir, "memory.max"), "67108864");
        assert_eq!(read(dir, "pids.max"), "20");
        cg.freeze().expect("freeze");
        assert!(read(dir, "cgroup.events").contains("frozen 1"));
    }
    assert!(cg.is_frozen().unwrap());
    cg.thaw().expect("thaw");
    assert!(!cg.is_frozen().unwrap());

    let mut guard = guard;
    guard.child.kill().expect("kill sleep");
    guard.child.wait().expect("reap sleep");
    let cg = &guard.cgroup;
    cg.destroy().expect("destroy");
    for (controller, dir) in cg.paths() {
        assert!(!dir.exists(), "{controller}: {dir:?} still exists");
        assert!(
            dir.parent().unwrap().is_dir(),
            "{controller}: the shared parent of {dir:?} was removed"
        );
    }
    // Destroying again is fine: missing directories are not an error.
    cg.destroy().expect("second destroy");
}
