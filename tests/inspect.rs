//! `ferry inspect` on archives of real containers checkpointed by real CRIU: a busybox image
//! imported into a private store, a container with a child process, an open file, a unix
//! socket, a pipe and rootfs changes, `checkpoint --leave-running -e`, then what inspect
//! shows in text and JSON, from this host and from another one, and how it refuses a
//! damaged archive. Needs root and CRIU; fails (never skips) without them.

mod common;

use common::{FERRY, Ferry, Output, WAIT, make_busybox_rootfs, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn require_criu() {
    let ok = Command::new("criu")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        panic!(
            "these tests checkpoint containers with CRIU, which is not on PATH; install CRIU >= 4.0 \
             (scripts/install-deps.sh builds it)"
        );
    }
}

/// A container made from a busybox image in a private store, running `script` under `sh`.
struct Setup {
    ferry: Ferry,
    storage: PathBuf,
    id: String,
}

impl Setup {
    fn start(script: &str) -> Setup {
        let ferry = Ferry::new();
        require_criu();
        let scratch = ferry.scratch();
        let storage = scratch.join("storage");
        let rootfs = scratch.join("rootfs");
        make_busybox_rootfs(&rootfs);
        ferry
            .run(&[
                "--storage",
                path(&storage),
                "image",
                "import",
                path(&rootfs),
                "--name",
                "inspect-bb",
            ])
            .ok();
        let id = ferry.id("inspect");
        // Stdio must be something CRIU can dump: the host's files behind the harness's
        // redirections are not in the container's mounts.
        let status = Command::new(FERRY)
            .arg("--root")
            .arg(ferry.root())
            .args([
                "--storage",
                path(&storage),
                "run",
                "-d",
                "--image",
                "inspect-bb",
            ])
            .args(["--name", &id, "--", "sh", "-c", script])
            .env("FERRY_TEST_TAG", &ferry.tag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run ferry");
        assert!(
            status.success(),
            "ferry run -d --image inspect-bb failed: {status}"
        );
        Setup { ferry, storage, id }
    }

    fn ferry(&self, args: &[&str]) -> Output {
        let mut all = vec!["--storage", path(&self.storage)];
        all.extend(args);
        self.ferry.run(&all)
    }

    /// Waits until every command in `comms` runs in the container (by name: the shell's own
    /// command line names them all from the start).
    fn wait_for_processes(&self, comms: &[&str]) {
        wait_for(&format!("{comms:?} in the container"), WAIT, || {
            let ps = self.ferry(&["ps", &self.id, "-o", "pid,comm"]);
            let names: Vec<&str> = ps
                .stdout
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .collect();
            ps.success() && comms.iter().all(|c| names.contains(c))
        });
    }

    fn checkpoint(&self, archive: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["checkpoint", "--leave-running"];
        args.extend(extra);
        args.extend([self.id.as_str(), "-e", path(archive)]);
        self.ferry(&args)
    }

    fn inspect_json(&self, archive: &Path) -> Value {
        self.ferry(&["inspect", path(archive), "--format", "json"])
            .ok()
            .json()
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn comm_of(j: &Value, pid: u64) -> &str {
    j["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .and_then(|p| p["comm"].as_str())
        .unwrap_or_else(|| panic!("no process {pid} in {j:#}"))
}

fn files_of<'a>(j: &'a Value, kind: &str) -> Vec<&'a Value> {
    j["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == kind)
        .collect()
}

fn no_scratch_left(storage: &Path) {
    let left: Vec<String> = std::fs::read_dir(storage.join("work"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("inspect-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "inspect left {left:?} under {}/work",
        storage.display()
    );
}

#[test]
fn inspect_shows_the_processes_files_and_changes_of_a_checkpoint() {
    let s = Setup::start(
        "exec 3>>/tmp/held.txt; echo held >&3; echo inspected > /etc/motd; rm /etc/group; \
         echo shared > /dev/shm/segment; \
         syslogd -n -O /tmp/syslog & sleep 1000 | cat & wait",
    );
    s.wait_for_processes(&["syslogd", "sleep", "cat"]);
    wait_for("syslogd's /dev/log", WAIT, || {
        s.ferry(&["exec", &s.id, "test", "-S", "/dev/log"])
            .success()
    });
    let dir = s.ferry.scratch();
    let archive = dir.join("c.tar.zst");
    s.checkpoint(&archive, &[]).ok();

    // Text.
    let text = s.ferry(&["inspect", path(&archive)]).ok().stdout;
    for want in [
        s.id.as_str(),
        "inspect-bb",
        "trusted (this host)",
        "all ",
        " entries verified",
        "sh",
        "├─ syslogd",
        "└─ cat",
        "/tmp/held.txt",
        "UNIXSK",
        "/dev/log",
        "PIPE",
        "/etc/motd",
        "/etc/group",
        "/dev/shm/segment",
    ] {
        assert!(
            text.contains(want),
            "inspect's text lacks {want:?}:\n{text}"
        );
    }
    assert!(!text.contains("warning"), "{text}");

    // JSON: the same facts.
    let j = s.inspect_json(&archive);
    assert_eq!(j["container"], s.id.as_str());
    assert!(
        j["image"]["name"]
            .as_str()
            .unwrap()
            .starts_with("inspect-bb"),
        "{j:#}"
    );
    assert!(
        j["image"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{j:#}"
    );
    assert!(!j["source"]["hostname"].as_str().unwrap().is_empty());
    assert!(!j["source"]["criu_version"].as_str().unwrap().is_empty());
    assert_eq!(j["signer"]["trusted"], true);
    assert_eq!(j["signer"]["trusted_as"], "this host");
    assert_eq!(j["integrity"]["verified"], true);
    assert_eq!(j["integrity"]["compression"], "zstd");
    assert_eq!(
        j["integrity"]["format"],
        ferry::archive::manifest::FORMAT_VERSION
    );
    assert_eq!(j["warnings"].as_array().unwrap().len(), 0, "{j:#}");
    // The tree: sh is the container's pid 1, the others its children.
    assert_eq!(comm_of(&j, 1), "sh");
    let procs = j["processes"].as_array().unwrap();
    let mut comms: Vec<&str> = procs.iter().map(|p| p["comm"].as_str().unwrap()).collect();
    comms.sort();
    assert_eq!(comms, ["cat", "sh", "sleep", "syslogd"], "{j:#}");
    for p in procs.iter().filter(|p| p["pid"] != 1) {
        assert_eq!(p["ppid"], 1, "{p}");
        assert_eq!(p["state"], "alive", "{p}");
    }
    for p in procs {
        assert!(p["memory"]["pages"].as_u64().unwrap() > 0, "{p}");
        assert!(p["memory"]["vmas"].as_u64().unwrap() > 0, "{p}");
    }
    assert!(j["memory"]["pages_bytes"].as_u64().unwrap() > 0);
    // The open file, the socket, both ends of the pipe.
    let held = files_of(&j, "REG")
        .into_iter()
        .find(|f| f["pid"] == 1 && f["fd"] == 3)
        .unwrap_or_else(|| panic!("sh's fd 3 in {j:#}"));
    assert_eq!(held["description"], "/tmp/held.txt");
    let unix = files_of(&j, "UNIXSK");
    assert!(
        unix.iter().any(|f| f["file"]["name"] == "/dev/log"
            && comm_of(&j, f["pid"].as_u64().unwrap()) == "syslogd"),
        "{j:#}"
    );
    let pipes = files_of(&j, "PIPE");
    assert_eq!(pipes.len(), 2, "{j:#}");
    assert_eq!(pipes[0]["description"], pipes[1]["description"]);
    let ends: Vec<&str> = pipes
        .iter()
        .map(|f| comm_of(&j, f["pid"].as_u64().unwrap()))
        .collect();
    assert_eq!(ends, ["sleep", "cat"]);
    // The rootfs changes.
    let changed: Vec<&str> = j["rootfs"]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(changed.contains(&"/etc/motd"), "{changed:?}");
    // The container's /dev/shm, from devshm-checkpoint.tar.
    let shm = j["dev_shm"].as_array().unwrap_or_else(|| panic!("{j:#}"));
    assert!(
        shm.iter()
            .any(|e| e["path"] == "/dev/shm/segment" && e["size"] == 7),
        "{shm:?}"
    );
    assert!(changed.contains(&"/tmp/held.txt"), "{changed:?}");
    assert_eq!(j["rootfs"]["deleted"], serde_json::json!(["/etc/group"]));
    no_scratch_left(&s.storage);

    // Another host: the signature holds, the signer is unknown there until trusted.
    let other = s.ferry.scratch().join("other-storage");
    let o = s
        .ferry
        .run(&["--storage", path(&other), "inspect", path(&archive)])
        .ok();
    assert!(o.stdout.contains("not trusted"), "{}", o.stdout);
    assert!(!o.stdout.contains("trusted ("), "{}", o.stdout);
    let fp = j["signer"]["fingerprint"].as_str().unwrap();
    s.ferry
        .run(&[
            "--storage",
            path(&other),
            "trust",
            "add",
            fp,
            "--name",
            "host-a",
        ])
        .ok();
    let o = s
        .ferry
        .run(&["--storage", path(&other), "inspect", path(&archive)])
        .ok();
    assert!(o.stdout.contains("trusted (host-a)"), "{}", o.stdout);
    no_scratch_left(&other);

    // A flipped byte in an entry, and a truncated archive: exit 1 with the reader's error.
    let plain = dir.join("c.tar");
    s.checkpoint(&plain, &["--compress", "none"]).ok();
    let bytes = std::fs::read(&plain).unwrap();
    let at = entry_offset(&bytes, "config.dump");
    let mut flipped = bytes.clone();
    flipped[at] ^= 0x20;
    let bad = dir.join("flipped.tar");
    std::fs::write(&bad, &flipped).unwrap();
    let e = s.ferry(&["inspect", path(&bad)]).fails();
    assert_eq!(e.code, Some(1));
    assert!(
        e.stderr.contains("config.dump") && e.stderr.contains("does not match the manifest"),
        "{}",
        e.stderr
    );
    assert!(
        e.stdout.is_empty(),
        "nothing shown from a damaged archive: {}",
        e.stdout
    );
    // The page data is hashed, not staged (inspect needs no room for it), and still checked.
    let pages = first_entry_named(&bytes, "checkpoint/pages-");
    let mut flipped = bytes.clone();
    flipped[entry_offset(&bytes, &pages)] ^= 0x20;
    std::fs::write(&bad, &flipped).unwrap();
    let e = s.ferry(&["inspect", path(&bad)]).fails();
    assert_eq!(e.code, Some(1));
    assert!(
        e.stderr.contains(&pages) && e.stderr.contains("does not match the manifest"),
        "{}",
        e.stderr
    );
    assert!(e.stdout.is_empty(), "{}", e.stdout);
    let short = dir.join("short.tar");
    std::fs::write(&short, &bytes[..bytes.len() / 2]).unwrap();
    let e = s.ferry(&["inspect", path(&short)]).fails();
    assert_eq!(e.code, Some(1));
    assert!(e.stderr.contains("truncated"), "{}", e.stderr);
    no_scratch_left(&s.storage);

    // The container was left running through all of it.
    assert_eq!(s.ferry.status(&s.id).as_deref(), Some("running"));
}

/// Where the content of entry `name` starts in an uncompressed tar.
/// The name of the first entry whose name starts with `prefix`.
fn first_entry_named(tar_bytes: &[u8], prefix: &str) -> String {
    let mut a = tar::Archive::new(tar_bytes);
    for e in a.entries().unwrap() {
        let name = e.unwrap().path().unwrap().display().to_string();
        if name.starts_with(prefix) {
            return name;
        }
    }
    panic!("no {prefix}* in the archive");
}

fn entry_offset(tar_bytes: &[u8], name: &str) -> usize {
    let mut a = tar::Archive::new(tar_bytes);
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap() == Path::new(name) {
            assert!(e.size() > 0, "{name} is empty");
            return e.raw_file_position() as usize;
        }
    }
    panic!("no {name} in the archive");
}

#[test]
fn inspect_shows_a_listening_tcp_socket() {
    let s = Setup::start("nc -l -p 8080 & sleep 1000 & wait");
    s.wait_for_processes(&["nc", "sleep"]);
    wait_for("nc listening on 8080", WAIT, || {
        // busybox netstat inside the container's network namespace.
        let o = s.ferry(&["exec", &s.id, "netstat", "-ltn"]);
        o.success() && o.stdout.contains(":8080")
    });
    let archive = s.ferry.scratch().join("tcp.tar.zst");
    let out = s.checkpoint(&archive, &[]);
    if !out.success() && out.stderr.contains("Can't get 1:16 opt") {
        panic!(
            "CRIU cannot dump the container's TCP socket on this kernel: Linux 6.16 made \
             getsockopt(SO_PASSCRED) fail on inet sockets and CRIU {} still asks \
             (checkpoint-restore/criu#2705, fixed in CRIU 4.2); install CRIU 4.2 or later \
             to checkpoint TCP sockets.\n{}",
            criu_version(),
            out.stderr
        );
    }
    out.ok();
    let j = s.inspect_json(&archive);
    let nc = j["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["comm"] == "nc")
        .unwrap_or_else(|| panic!("no nc in {j:#}"));
    let listen = files_of(&j, "INETSK")
        .into_iter()
        .find(|f| f["pid"] == nc["pid"])
        .unwrap_or_else(|| panic!("no socket of nc in {j:#}"));
    assert_eq!(listen["file"]["src_port"], 8080, "{listen}");
    assert_eq!(listen["file"]["state"], 10, "TCP_LISTEN: {listen}");
    let d = listen["description"].as_str().unwrap();
    assert!(
        d.starts_with("tcp") && d.contains("listen") && d.ends_with(":8080"),
        "{d}"
    );
    let text = s.ferry(&["inspect", path(&archive)]).ok().stdout;
    assert!(text.contains("INETSK") && text.contains(d), "{text}");
}

fn criu_version() -> String {
    Command::new("criu")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_string()))
                .unwrap_or_default()
        })
        .unwrap_or_default()
}
