//! User namespaces: with uid/gid maps the process is root inside and the mapped id outside.

mod common;

use common::*;
use std::fs;

const HOST_ID: u32 = 200000;

fn userns_bundle(ferry: &Ferry, args: &[&str]) -> Bundle {
    let mut b = Bundle::new(ferry, args);
    b.user_namespace(HOST_ID, 65536);
    // A cgroup mount needs privileges the mapped root does not have on the host's v1
    // hierarchies; runc's rootless spec drops it too.
    b.edit(|s| {
        if let Some(m) = s["mounts"].as_array_mut() {
            m.retain(|m| m["type"] != "cgroup");
        }
    });
    b.save();
    b
}

#[test]
fn root_inside_is_the_mapped_id_outside() {
    let ferry = Ferry::new();
    let bundle = userns_bundle(
        &ferry,
        &["sh", "-c", "id -u; id -g; cat /proc/self/uid_map"],
    );
    let id = ferry.id("uid");
    let out = ferry.run(&["run", "--bundle", bundle.path_str(), &id]).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"0"), "{out:?}");
    assert_eq!(lines.get(1), Some(&"0"), "{out:?}");
    let map: Vec<&str> = lines.get(2).unwrap_or(&"").split_whitespace().collect();
    assert_eq!(map, vec!["0", &HOST_ID.to_string(), "65536"], "{out:?}");
}

#[test]
fn the_host_sees_the_mapped_ids() {
    let ferry = Ferry::new();
    let bundle = userns_bundle(&ferry, &["sleep", "100000"]);
    let id = ferry.id("hostview");
    ferry.start_container(&bundle, &id);
    let pid = ferry.pid(&id);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing"))
            .split_whitespace()
            .skip(1)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let want = vec![HOST_ID.to_string(); 4];
    assert_eq!(field("Uid:"), want, "host view of the container's uids");
    assert_eq!(field("Gid:"), want, "host view of the container's gids");
    let gid_map = fs::read_to_string(format!("/proc/{pid}/gid_map")).unwrap();
    assert_eq!(
        gid_map.split_whitespace().collect::<Vec<_>>(),
        vec!["0", &HOST_ID.to_string(), "65536"]
    );
    // The container's user namespace is not the host's.
    let own = fs::read_link("/proc/self/ns/user").unwrap();
    let theirs = fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    assert_ne!(own, theirs);
    // exec joins that user namespace too.
    let out = ferry.run(&["exec", &id, "id", "-u"]).ok();
    assert_eq!(out.stdout.trim(), "0");
    let out = ferry.run(&["exec", &id, "cat", "/proc/self/uid_map"]).ok();
    assert!(out.stdout.contains(&HOST_ID.to_string()), "{out:?}");
}

#[test]
fn mapped_root_cannot_write_host_root_files() {
    // The rootfs belongs to host root, which is unmapped inside: writes must fail, proving
    // the process really runs as HOST_ID and not as host root.
    let ferry = Ferry::new();
    let bundle = userns_bundle(&ferry, &["sh", "-c", "touch /etc/forbidden; echo rc=$?"]);
    let id = ferry.id("nowrite");
    let out = ferry.run(&["run", "--bundle", bundle.path_str(), &id]).ok();
    assert!(out.stdout.contains("rc=1"), "{out:?}");
    assert!(!bundle.host_path("/etc/forbidden").exists());
}

/// This process's hard RLIMIT_NOFILE, and whether it may raise it (CAP_SYS_RESOURCE, bit
/// 24 of CapEff; some VMs withhold it even from root).
fn nofile_hard_and_may_raise() -> (u64, bool) {
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .expect("Max open files in /proc/self/limits");
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    (hard, eff & (1 << 24) != 0)
}

/// Rlimits are set before the user namespace is entered: inside it no process can raise
/// a hard limit (that takes CAP_SYS_RESOURCE in the host's namespace), and podman asks
/// every container for nofile 1048576. Where the host lets root raise it the container
/// gets it; where it does not, ferry runs it with the host's ceiling, as outside a user
/// namespace. Lowering always works.
#[test]
fn rlimits_are_set_before_the_user_namespace_so_they_can_be_raised() {
    let ferry = Ferry::new();
    let (hard, may_raise) = nofile_hard_and_may_raise();
    let want = if may_raise {
        1048576
    } else {
        hard.min(1048576)
    };
    for (soft_hard, expect) in [
        ((1048576, 1048576), (want, want)),
        ((512, 1024), (512, 1024)),
    ] {
        let mut bundle = userns_bundle(&ferry, &["sh", "-c", "ulimit -n; ulimit -Hn"]);
        bundle.edit(|s| {
            s["process"]["rlimits"] = serde_json::json!([{
                "type": "RLIMIT_NOFILE", "soft": soft_hard.0, "hard": soft_hard.1
            }]);
        });
        bundle.save();
        let id = ferry.id("rlimit");
        let out = ferry.run(&["run", "--bundle", bundle.path_str(), &id]).ok();
        let got: Vec<u64> = out
            .stdout
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(
            got,
            vec![expect.0, expect.1],
            "asked for {soft_hard:?}: {out:?}"
        );
    }
}
