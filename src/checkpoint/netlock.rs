//! Which network lock CRIU uses for a container (`--network-lock`, docs/checkpoint.md).
//!
//! CRIU locks a network namespace it dumps or restores so that no packet reaches a socket
//! while its tasks are frozen or half restored. Its default, iptables, starts
//! iptables-restore (and, to unlock, iptables and iptables-restore again) inside the
//! namespace: about 50 ms on each side of a checkpoint, whatever the container's size. So:
//! - a namespace whose only device is the loopback one, and with no process in it but the
//!   container's, cannot be reached from outside, and every task that could talk to it over
//!   loopback is frozen with the container: there is nothing to lock (unless
//!   `--tcp-established` asks for connections to be carried, where the lock stays, to be
//!   safe);
//! - otherwise nftables, which criu does in-process through libnftables, when this criu and
//!   kernel can (asked once, then cached in the runtime's state directory);
//! - otherwise CRIU's default.
//!
//! A namespace the container joined (a path in the spec, e.g. podman's) is never skipped:
//! it outlives the container and may be reachable. The choice depends only on the host, the
//! spec and the images, so a dump and the restore on the same host agree, as they must when
//! a lock is left in a namespace that outlives the dump.

use crate::archive::criu_images;
use crate::criu::{Criu, NetworkLock};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::path::Path;

/// The lock the user chose, else the one for a container whose network namespace
/// `unreachable` says nothing outside it can reach (see the module docs). `unreachable` is
/// asked only when its answer matters: at dump it reads every process's namespace.
pub fn choose(
    chosen: Option<NetworkLock>,
    unreachable: impl FnOnce() -> bool,
    tcp_established: bool,
    criu: &Criu,
    cache_dir: &Path,
) -> NetworkLock {
    if let Some(m) = chosen {
        return m;
    }
    if !tcp_established && unreachable() {
        NetworkLock::Skip
    } else if criu.nftables_lock(cache_dir) {
        NetworkLock::Nftables
    } else {
        NetworkLock::Iptables
    }
}

/// Whether the spec gives the container a network namespace of its own (not a path to join).
fn owns_netns(spec: &Spec) -> bool {
    crate::runtime::namespaces::list(spec)
        .iter()
        .any(|ns| ns.typ() == LinuxNamespaceType::Network && ns.path().is_none())
}

/// At dump: the running container's own namespace has no device but `lo`
/// (`/proc/<pid>/net/dev` lists the devices of the task's namespace).
fn loopback_only_running(spec: &Spec, pid: i32) -> bool {
    if !owns_netns(spec) {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else {
        return false;
    };
    devices_are_loopback(&text)
}

/// At dump: nothing outside the running container can reach its namespace. The namespace is
/// its own and holds only lo ([`loopback_only_running`]), and no process but `inside` (the
/// container's) is in it ([`netns_shared`]).
pub fn unreachable_running(spec: &Spec, pid: i32, inside: &[i32]) -> bool {
    loopback_only_running(spec, pid) && !inside.is_empty() && !netns_shared(pid, inside)
}

/// Whether a process other than `inside` (the container's) is in the network namespace of
/// `pid`: a pod's other containers, or `ip netns exec`, could then reach the container's
/// sockets over lo while it is frozen. Every process's `/proc/<pid>/ns/net` is compared; a
/// process that cannot be read (it went away) does not count. An error reading /proc
/// counts as shared.
fn netns_shared(pid: i32, inside: &[i32]) -> bool {
    let Ok(ours) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
        return true;
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().any(|e| {
        let Some(other) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            return false;
        };
        !inside.contains(&other)
            && std::fs::read_link(format!("/proc/{other}/ns/net")).is_ok_and(|ns| ns == ours)
    })
}

/// The device names of `/proc/net/dev` (after its two header lines) are all `lo`.
fn devices_are_loopback(net_dev: &str) -> bool {
    let names: Vec<&str> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
        .collect();
    !names.is_empty() && names.iter().all(|n| *n == "lo")
}

/// At restore: CRIU makes the namespace from the images (the spec does not name one to join)
/// and every device the images hold (`netdev-*.img`) is a loopback device.
pub fn loopback_only_images(spec: &Spec, images: &Path) -> bool {
    if !owns_netns(spec) {
        return false;
    }
    let Ok(dir) = std::fs::read_dir(images) else {
        return false;
    };
    let mut seen = false;
    for e in dir.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("netdev-") && name.ends_with(".img")) {
            continue;
        }
        let Ok(bytes) = std::fs::read(e.path()) else {
            return false;
        };
        match criu_images::decode_netdev(&bytes) {
            Ok(devs)
                if !devs.is_empty() && devs.iter().all(|(t, _)| *t == criu_images::ND_LOOPBACK) =>
            {
                seen = true
            }
            _ => return false,
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_dev() {
        let lo = "Inter-|   Receive                            |  Transmit\n \
                  face |bytes    packets errs drop fifo frame compressed multicast|bytes\n    \
                  lo:       0       0    0    0    0     0          0         0        0\n";
        assert!(devices_are_loopback(lo));
        let veth = format!("{lo}  eth0: 1 2 3 4 5 6 7 8 9\n");
        assert!(!devices_are_loopback(&veth));
        assert!(!devices_are_loopback("header\nheader\n"));
    }

    /// A `netdev-*.img` of one device of type `typ` named `name`.
    fn netdev(typ: u8, name: &str) -> Vec<u8> {
        let mut entry = vec![0x08, typ, 0x2a, name.len() as u8];
        entry.extend_from_slice(name.as_bytes());
        let mut img = criu_images::NETDEV_MAGIC.to_le_bytes().to_vec();
        img.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        img.extend_from_slice(&entry);
        img
    }

    #[test]
    fn images_of_only_loopback_in_a_namespace_of_its_own() {
        let spec = Spec::default();
        assert!(
            owns_netns(&spec),
            "the default spec has a network namespace"
        );
        let dir = tempfile::tempdir().unwrap();
        // No netdev image: nothing says the namespace is only lo.
        assert!(!loopback_only_images(&spec, dir.path()));
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/archive/testdata/criu");
        std::fs::copy(real.join("netdev-10.img"), dir.path().join("netdev-10.img")).unwrap();
        assert!(loopback_only_images(&spec, dir.path()));
        // A second namespace with a veth in it.
        std::fs::write(dir.path().join("netdev-11.img"), netdev(2, "eth0")).unwrap();
        assert!(!loopback_only_images(&spec, dir.path()));
        std::fs::write(dir.path().join("netdev-11.img"), netdev(1, "lo")).unwrap();
        assert!(loopback_only_images(&spec, dir.path()));
        // Unreadable as a netdev image: not known to be only lo.
        std::fs::write(dir.path().join("netdev-11.img"), b"garbage").unwrap();
        assert!(!loopback_only_images(&spec, dir.path()));
    }

    #[test]
    fn a_joined_namespace_is_never_only_loopback() {
        use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};
        let ns = LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path("/var/run/netns/x")
            .build()
            .unwrap();
        let spec = SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .namespaces(vec![ns])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert!(!owns_netns(&spec));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("netdev-10.img"), netdev(1, "lo")).unwrap();
        assert!(!loopback_only_images(&spec, dir.path()));
        assert!(!loopback_only_running(&spec, std::process::id() as i32));
    }

    #[test]
    fn our_own_namespace_is_shared_with_the_rest_of_the_host() {
        let me = std::process::id() as i32;
        // The test runs in the host's namespace, with init and everyone else.
        assert!(netns_shared(me, &[me]));
        // A process that does not exist has no namespace to be sure of.
        assert!(netns_shared(i32::MAX, &[]));
    }

    #[test]
    fn explicit_choice_wins() {
        let criu = Criu::with_binary("/nonexistent/criu");
        let dir = std::env::temp_dir();
        assert_eq!(
            choose(Some(NetworkLock::Iptables), || true, false, &criu, &dir),
            NetworkLock::Iptables
        );
        assert_eq!(choose(None, || true, false, &criu, &dir), NetworkLock::Skip);
        // Connections to carry keep the lock; a criu that cannot say gets CRIU's default.
        assert_eq!(
            choose(None, || true, true, &criu, &dir),
            NetworkLock::Iptables
        );
        assert_eq!(
            choose(None, || false, false, &criu, &dir),
            NetworkLock::Iptables
        );
    }
}
