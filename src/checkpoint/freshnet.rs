//! A container's network namespace that holds nothing a fresh one would not
//! (docs/checkpoint.md, "A network namespace as fresh as a new one").
//!
//! CRIU saves a network namespace with `ip addr/route/rule save`, `iptables-save` and their
//! kin, and restores it with as many processes again: about 46 ms a round trip here, even
//! for a namespace holding nothing but `lo`. When everything CRIU would save of the
//! container's namespace (its devices, addresses, routes, rules, nsids, nftables and legacy
//! xtables tables, and the `net.*` sysctls CRIU keeps) is exactly what a namespace made just
//! now with `lo` up holds, the dump asks CRIU to leave it out (`--empty-ns net`) and records
//! that state in the images ([`MARK`]). Restore then lets CRIU make an empty namespace, brings
//! `lo` up in it, writes back any recorded sysctl that this host's new namespaces start with
//! differently, and checks that the result is the recorded state; if it is not, the restore
//! fails and says what differs. Anything short of an exact match at dump leaves the namespace
//! to CRIU, as before.
//!
//! Everything is read in-process, on a thread that joins the namespace (`setns` and
//! `unshare` act on the calling thread only), over rtnetlink, nfnetlink and
//! `/proc/sys/net`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Set to 1, the dump always leaves the network namespace to CRIU (for a checkpoint that
/// must restore on a host whose new namespaces differ).
pub const CRIU_CARRIES_ENV: &str = "FERRY_CRIU_NETNS";

/// The file in CRIU's images directory that says the namespace was left out, and what it
/// held.
pub const MARK: &str = "ferry-netns.json";

/// What CRIU would save of a network namespace, read in-process. Netlink messages are kept
/// whole (as hex) but for their counters and timestamps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub links: Vec<String>,
    pub addrs: Vec<String>,
    pub routes: Vec<String>,
    pub rules: Vec<String>,
    pub nsids: Vec<String>,
    /// nftables tables, or the error the kernel gave for the dump.
    pub nft_tables: Vec<String>,
    /// `/proc/net/{ip,ip6,arp}_tables_names` of the namespace (None: absent).
    pub xtables: BTreeMap<String, Option<String>>,
    /// `net.*` sysctls under the paths CRIU keeps (None: unreadable, like an unset
    /// `stable_secret`).
    pub sysctls: BTreeMap<String, Option<String>>,
}

impl NetState {
    /// The first few differences, for a message: `mine` and `theirs` name the two sides.
    pub fn differences(&self, other: &NetState, mine: &str, theirs: &str) -> Vec<String> {
        let mut out = vec![];
        let lists = [
            ("devices", &self.links, &other.links),
            ("addresses", &self.addrs, &other.addrs),
            ("routes", &self.routes, &other.routes),
            ("routing rules", &self.rules, &other.rules),
            ("nsids", &self.nsids, &other.nsids),
            ("nftables tables", &self.nft_tables, &other.nft_tables),
        ];
        for (what, a, b) in lists {
            if a != b {
                out.push(format!("{what} ({} {mine}, {} {theirs})", a.len(), b.len()));
            }
        }
        if self.xtables != other.xtables {
            out.push("legacy iptables tables".into());
        }
        for (k, v) in &self.sysctls {
            if other.sysctls.get(k) != Some(v) {
                out.push(format!(
                    "{k} ({} {mine}, {} {theirs})",
                    show(v.as_deref()),
                    show(other.sysctls.get(k).and_then(|v| v.as_deref()))
                ));
            }
        }
        for k in other.sysctls.keys() {
            if !self.sysctls.contains_key(k) {
                out.push(format!("{k} (absent {mine})"));
            }
        }
        out.truncate(8);
        out
    }
}

fn show(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("{:?}", v.trim()),
        None => "unreadable".into(),
    }
}

/// The state of the network namespace of `pid`, and that of a namespace made now with `lo`
/// up; equal when the container's namespace is as fresh as a new one. The two are read at
/// the same time: `checkpoint -e` asks while the container is frozen.
pub fn compare(pid: i32) -> io::Result<(NetState, NetState)> {
    let fresh = std::thread::spawn(fresh_state);
    let theirs = in_netns_of(pid, read_state);
    let fresh = fresh
        .join()
        .map_err(|_| io::Error::other("reading a fresh namespace panicked"))?;
    Ok((theirs??, fresh?))
}

/// The state of the network namespace of `pid`.
pub fn state_of(pid: i32) -> io::Result<NetState> {
    in_netns_of(pid, read_state)?
}

/// `f` in the network namespace of `pid`, on a thread of its own.
fn in_netns_of<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<io::Result<T>> {
    crate::runtime::namespaces::on_thread_in(pid, oci_spec::runtime::LinuxNamespaceType::Network, f)
}

/// The state of a network namespace made now, with `lo` up.
fn fresh_state() -> io::Result<NetState> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
    crate::runtime::namespaces::loopback_up().map_err(|e| io::Error::other(e.to_string()))?;
    read_state()
}

/// In the network namespace of `pid` (a restored task's, which CRIU made empty): brings `lo`
/// up, writes back the recorded sysctls that differ, and checks the result is `want`.
pub fn rebuild(pid: i32, want: &NetState) -> Result<(), String> {
    // The record comes from the images: only sysctls this module reads are ever written.
    if let Some(k) = want.sysctls.keys().find(|k| !kept_sysctl(k)) {
        return Err(format!(
            "{MARK} names {k:?}, which is not a network namespace setting ferry keeps; \
             refusing to restore"
        ));
    }
    let sysctls = want.sysctls.clone();
    let now = in_netns_of(pid, move || {
        crate::runtime::namespaces::loopback_up().map_err(|e| io::Error::other(e.to_string()))?;
        let found = read_sysctls();
        for (k, v) in &sysctls {
            if let Some(v) = v
                && found.get(k) != Some(&Some(v.clone()))
            {
                std::fs::write(Path::new("/proc/sys").join(k), v.trim()).map_err(|e| {
                    io::Error::other(format!("set net sysctl {k} to {:?}: {e}", v.trim()))
                })?;
            }
        }
        read_state()
    })
    .and_then(|r| r)
    .map_err(|e| format!("rebuilding the restored network namespace: {e}"))?;
    if now != *want {
        return Err(format!(
            "the checkpoint left the container's network namespace out of CRIU's images \
             because it held only what a new one holds, but a new one on this host differs: \
             {}. Restore on a host whose kernel makes the same new namespaces, or checkpoint \
             the container again with {CRIU_CARRIES_ENV}=1 so that CRIU carries the namespace",
            now.differences(want, "here", "in the checkpoint")
                .join("; ")
        ));
    }
    Ok(())
}

/// Reads the state of the calling thread's network namespace.
fn read_state() -> io::Result<NetState> {
    const IFLA_STATS: u16 = 7;
    const IFLA_STATS64: u16 = 23;
    const IFLA_AF_SPEC: u16 = 26;
    const IFLA_CARRIER_CHANGES: u16 = 35;
    const IFLA_CARRIER_UP_COUNT: u16 = 47;
    const IFLA_CARRIER_DOWN_COUNT: u16 = 48;
    const IFA_CACHEINFO: u16 = 6;
    const RTA_CACHEINFO: u16 = 12;
    const RTA_EXPIRES: u16 = 23;
    const RTM_GETNSID: u16 = 90;
    // ifinfomsg, ifaddrmsg, rtmsg (also fib_rule_hdr), rtgenmsg: fixed headers before attrs.
    let route = Netlink::open(libc::NETLINK_ROUTE)?;
    let links = route.dump(
        libc::RTM_GETLINK,
        &[0u8; 16],
        &[
            IFLA_STATS,
            IFLA_STATS64,
            IFLA_AF_SPEC,
            IFLA_CARRIER_CHANGES,
            IFLA_CARRIER_UP_COUNT,
            IFLA_CARRIER_DOWN_COUNT,
        ],
    )?;
    let addrs = route.dump(libc::RTM_GETADDR, &[0u8; 8], &[IFA_CACHEINFO])?;
    let routes = route.dump(
        libc::RTM_GETROUTE,
        &[0u8; 12],
        &[RTA_CACHEINFO, RTA_EXPIRES],
    )?;
    let rules = route.dump(libc::RTM_GETRULE, &[0u8; 12], &[])?;
    let nsids = route.dump(RTM_GETNSID, &[0u8; 4], &[])?;
    drop(route);
    let nft_tables = match Netlink::open(libc::NETLINK_NETFILTER) {
        // NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE; nfgenmsg (family, version, res_id).
        Ok(nf) => match nf.dump((10 << 8) | 1, &[0u8; 4], &[]) {
            Ok(t) => t,
            Err(e) => vec![format!("error {}", e.raw_os_error().unwrap_or(0))],
        },
        Err(e) => vec![format!("error {}", e.raw_os_error().unwrap_or(0))],
    };
    let mut xtables = BTreeMap::new();
    for t in ["ip_tables_names", "ip6_tables_names", "arp_tables_names"] {
        xtables.insert(
            t.to_string(),
            std::fs::read_to_string(format!("/proc/thread-self/net/{t}")).ok(),
        );
    }
    Ok(NetState {
        links,
        addrs,
        routes,
        rules,
        nsids,
        nft_tables,
        xtables,
        sysctls: read_sysctls(),
    })
}

/// Whether `key` (relative to /proc/sys) is one [`read_sysctls`] reads.
fn kept_sysctl(key: &str) -> bool {
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return false;
    }
    if SINGLE_SYSCTLS.contains(&key) {
        return true;
    }
    let parts: Vec<&str> = key.split('/').collect();
    matches!(
        parts.as_slice(),
        ["net", "ipv4" | "ipv6", "conf", "all" | "default" | "lo", _]
    )
}

const SINGLE_SYSCTLS: &[&str] = &["net/ipv4/ping_group_range", "net/unix/max_dgram_qlen"];

/// The sysctls CRIU keeps of a namespace: ipv4 and ipv6 `conf/{all,default,lo}/*` (it keeps
/// a subset; all of them are compared), `ipv4/ping_group_range`, `unix/max_dgram_qlen`.
fn read_sysctls() -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for fam in ["ipv4", "ipv6"] {
        for dev in ["all", "default", "lo"] {
            let dir = format!("net/{fam}/conf/{dev}");
            let Ok(entries) = std::fs::read_dir(Path::new("/proc/sys").join(&dir)) else {
                continue;
            };
            for e in entries.flatten() {
                let key = format!("{dir}/{}", e.file_name().to_string_lossy());
                out.insert(key, std::fs::read_to_string(e.path()).ok());
            }
        }
    }
    for &key in SINGLE_SYSCTLS {
        out.insert(
            key.to_string(),
            std::fs::read_to_string(Path::new("/proc/sys").join(key)).ok(),
        );
    }
    out
}

/// A netlink socket of the calling thread's network namespace.
struct Netlink(OwnedFd);

impl Netlink {
    fn open(protocol: i32) -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the fd returned is ours.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd.
        Ok(Netlink(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Dumps `msg_type` with the fixed header `header` (as long as each answer's), and
    /// returns each answer as hex, its attributes sorted by type and `drop` left out.
    fn dump(&self, msg_type: u16, header: &[u8], drop: &[u16]) -> io::Result<Vec<String>> {
        let len = 16 + header.len();
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&msg_type.to_ne_bytes());
        req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
        req.extend_from_slice(&1u32.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(header);
        // SAFETY: send of our buffer on our socket (the kernel is the default peer).
        if unsafe { libc::send(self.0.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = vec![];
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: recv into our buffer.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let mlen = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
                let mtype = u16::from_ne_bytes(b[4..6].try_into().unwrap());
                if mlen < 16 || mlen > b.len() {
                    return Err(io::Error::other("a netlink answer that does not parse"));
                }
                let body = &b[16..mlen];
                match mtype as i32 {
                    libc::NLMSG_DONE => {
                        out.sort();
                        return Ok(out);
                    }
                    libc::NLMSG_ERROR => {
                        let errno = body
                            .get(0..4)
                            .map(|e| i32::from_ne_bytes(e.try_into().unwrap()))
                            .unwrap_or(0);
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                    }
                    _ => out.push(normalize(body, header.len(), drop)),
                }
                b = &b[((mlen + 3) & !3).min(b.len())..];
            }
        }
    }
}

/// A message body as hex: its fixed header, then its attributes sorted by type without the
/// types in `drop`.
fn normalize(body: &[u8], header_len: usize, drop: &[u16]) -> String {
    let header_len = header_len.min(body.len());
    let mut attrs: Vec<(u16, &[u8])> = vec![];
    let mut a = &body[header_len..];
    while a.len() >= 4 {
        let alen = u16::from_ne_bytes(a[0..2].try_into().unwrap()) as usize;
        let atype = u16::from_ne_bytes(a[2..4].try_into().unwrap()) & 0x3fff;
        if alen < 4 || alen > a.len() {
            break;
        }
        if !drop.contains(&atype) {
            attrs.push((atype, &a[..alen]));
        }
        a = &a[((alen + 3) & !3).min(a.len())..];
    }
    attrs.sort();
    let mut s = hex::encode(&body[..header_len]);
    for (_, a) in attrs {
        s.push(':');
        s.push_str(&hex::encode(a));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_sorted_and_the_dropped_ones_left_out() {
        // A 4-byte header, then attrs of type 3 (len 5, padded to 8), 1 and 2 (len 4).
        let mut body = vec![9, 9, 9, 9];
        body.extend_from_slice(&[5, 0, 3, 0, 0xaa, 0, 0, 0]);
        body.extend_from_slice(&[4, 0, 1, 0]);
        body.extend_from_slice(&[4, 0, 2, 0]);
        assert_eq!(normalize(&body, 4, &[2]), "09090909:04000100:05000300aa");
    }

    #[test]
    fn only_the_sysctls_it_reads_are_kept_and_a_record_naming_others_is_refused() {
        assert!(kept_sysctl("net/ipv4/conf/lo/forwarding"));
        assert!(kept_sysctl("net/ipv6/conf/default/disable_ipv6"));
        assert!(kept_sysctl("net/unix/max_dgram_qlen"));
        for bad in [
            "kernel/core_pattern",
            "net/ipv4/conf/eth0/forwarding",
            "net/ipv4/conf/lo/../../../kernel/core_pattern",
            "net/ipv4/tcp_fastopen_key",
            "/net/unix/max_dgram_qlen",
        ] {
            assert!(!kept_sysctl(bad), "{bad}");
        }
        let mut want = NetState {
            links: vec![],
            addrs: vec![],
            routes: vec![],
            rules: vec![],
            nsids: vec![],
            nft_tables: vec![],
            xtables: BTreeMap::new(),
            sysctls: BTreeMap::new(),
        };
        want.sysctls
            .insert("kernel/core_pattern".into(), Some("|/evil".into()));
        let e = rebuild(std::process::id() as i32, &want).unwrap_err();
        assert!(
            e.contains("kernel/core_pattern") && e.contains("refusing"),
            "{e}"
        );
    }

    #[test]
    fn a_new_namespace_is_as_fresh_as_another() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test makes network namespaces: run it as root"
        );
        let a = std::thread::spawn(fresh_state).join().unwrap().unwrap();
        let b = std::thread::spawn(fresh_state).join().unwrap().unwrap();
        assert_eq!(a.differences(&b, "a", "b"), Vec::<String>::new());
        assert_eq!(a, b);
        assert!(
            a.links.len() == 1,
            "a new namespace has lo only: {:?}",
            a.links
        );
        assert!(!a.sysctls.is_empty());
    }
}
