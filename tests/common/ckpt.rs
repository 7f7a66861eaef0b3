//! What the checkpoint tests share on top of the harness: a `Host` (a private `--root` plus a
//! private `--storage`, so its own identity, trust store and image store: two Hosts are two
//! machines), a busybox image holding the static helpers, detached containers whose stdio is
//! /dev/null (CRIU cannot dump a host file), and readers for the `memhold` helper's files.
//! Included with `#[path]` by the `checkpoint_*` tests only.

#![allow(dead_code)]

use super::common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const CRIU: &str = "/usr/local/sbin/criu";

/// Panics unless CRIU is installed: a checkpoint test that skips proves nothing.
pub fn require_criu() {
    require_root();
    let ok = Command::new(CRIU)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "CRIU is missing or broken at {CRIU}: install CRIU 4.x (scripts/install-deps.sh does)"
    );
}

pub struct Host {
    pub ferry: Ferry,
    pub storage: PathBuf,
    seq: AtomicUsize,
    ids: std::sync::Mutex<Vec<String>>,
}

impl Drop for Host {
    /// After the harness's checks have had their say: delete this test's containers and
    /// remove cgroup directories a broken restore left under their ids (depth first; CRIU
    /// may have made a tree there), so one failure does not leak into the next run.
    fn drop(&mut self) {
        let ids = self.ids.lock().unwrap().clone();
        for id in &ids {
            let _ = self
                .command(&["delete", "--force", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for id in &ids {
            for dir in cgroup_dirs_for(id) {
                remove_cgroup_tree(&dir);
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Host {
    pub fn new() -> Host {
        require_criu();
        Host::without_criu()
    }

    /// A Host for tests of the image store and image containers that never run CRIU.
    pub fn without_criu() -> Host {
        let ferry = Ferry::new();
        let storage = ferry.scratch().join("storage");
        fs::create_dir_all(&storage).unwrap();
        Host::on(ferry, storage)
    }

    /// A Host whose `--storage` is `storage` (e.g. a small tmpfs the test mounted; mount it
    /// before the Host is made so that its identity and images live there).
    pub fn on_storage(storage: PathBuf) -> Host {
        require_criu();
        Host::on(Ferry::new(), storage)
    }

    fn on(ferry: Ferry, storage: PathBuf) -> Host {
        Host {
            ferry,
            storage,
            seq: AtomicUsize::new(0),
            ids: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A fresh container id, deleted (and its cgroups removed) when the Host goes.
    pub fn id(&self, prefix: &str) -> String {
        let id = self.ferry.id(prefix);
        self.ids.lock().unwrap().push(id.clone());
        id
    }

    pub fn storage_str(&self) -> &str {
        self.storage.to_str().unwrap()
    }

    fn with_storage<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--storage", self.storage_str()];
        v.extend_from_slice(args);
        v
    }

    /// `ferry --root R --storage S ARGS`, to the end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.ferry.run(&self.with_storage(args))
    }

    pub fn spawn(&self, args: &[&str]) -> Running {
        self.ferry.spawn(&self.with_storage(args))
    }

    /// Runs ferry with stdin, stdout and stderr on /dev/null, for commands that leave a
    /// container running (`run -d`, `restore -d`, `create`): the container inherits them,
    /// and CRIU can dump /dev/null but not a file of the host. What ferry has to say goes
    /// to `--log`, which the returned Output carries as its stderr.
    pub fn run_quiet(&self, args: &[&str]) -> Output {
        self.run_quiet_env(&[], args)
    }

    /// `ferry --root R --storage S ARGS` as a Command, tagged like every ferry of the test,
    /// for a test that wires its stdio or its lifetime itself.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(FERRY);
        cmd.arg("--root")
            .arg(self.ferry.root())
            .arg("--storage")
            .arg(&self.storage)
            .args(args)
            .env("FERRY_TEST_TAG", &self.ferry.tag);
        cmd
    }

    /// [`run_quiet`](Self::run_quiet) with extra environment variables for ferry.
    pub fn run_quiet_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let log = self.ferry.scratch().join(format!("quiet-{n}.log"));
        let log_str = log.to_str().unwrap();
        let mut cmd = self.command(&[&["--log", log_str], args].concat());
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {FERRY}: {e}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`ferry {}` hung past {COMMAND_TIMEOUT:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: status.code(),
            stdout: String::new(),
            stderr: fs::read_to_string(&log).unwrap_or_default(),
        }
    }

    /// Imports a busybox rootfs holding the static helpers as image `name`; returns its
    /// digest.
    pub fn import_image(&self, name: &str) -> String {
        let dir = self.ferry.scratch().join("image-rootfs");
        image_rootfs(&dir);
        self.import_dir(name, &dir)
    }

    /// Imports the rootfs directory `dir` as image `name` (two Hosts importing the same
    /// directory hold the same image digest); returns the digest.
    pub fn import_dir(&self, name: &str, dir: &Path) -> String {
        let out = self
            .run(&["image", "import", dir.to_str().unwrap(), "--name", name])
            .ok();
        out.stdout
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("`image import` printed no digest: {:?}", out.stdout))
            .to_string()
    }

    /// `run -d --image IMAGE --name ID -- CMD…`, stdio on /dev/null. The command runs under
    /// `busybox env FERRY_TEST_TAG=…` so a process left behind is found and killed.
    pub fn run_image(&self, image: &str, id: &str, cmd: &[&str]) {
        let tag = format!("FERRY_TEST_TAG={}", self.ferry.tag);
        let mut args = vec![
            "run",
            "-d",
            "--image",
            image,
            "--name",
            id,
            "--",
            "/bin/busybox",
            "env",
            &tag,
        ];
        args.extend_from_slice(cmd);
        self.run_quiet(&args).ok();
    }

    /// The merged rootfs of a container made from an image, as the host sees it.
    pub fn rootfs(&self, id: &str) -> PathBuf {
        self.storage.join("containers").join(id).join("rootfs")
    }

    /// This host's signing key fingerprint (`ferry identity`).
    pub fn fingerprint(&self) -> String {
        self.run(&["identity"]).ok().stdout.trim().to_string()
    }

    /// Ids that `ferry list` shows.
    pub fn ids(&self) -> Vec<String> {
        self.ferry.list_ids()
    }
}

/// A busybox rootfs with the static helpers in /bin, to import as an image.
pub fn image_rootfs(dir: &Path) {
    make_busybox_rootfs(dir);
    for h in ["memhold", "tcppair", "counter", "shmhold"] {
        let dst = dir.join("bin").join(h);
        fs::copy(helper(h), &dst).unwrap();
        fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
}

/// The files `memhold` writes in its DIR (seen from the host).
pub struct MemHold {
    pub dir: PathBuf,
}

impl MemHold {
    pub fn at(dir: PathBuf) -> MemHold {
        MemHold { dir }
    }
    pub fn checksum(&self) -> Option<String> {
        Some(
            fs::read_to_string(self.dir.join("checksum"))
                .ok()?
                .trim()
                .to_string(),
        )
    }
    /// (run id, count).
    pub fn count(&self) -> Option<(u64, u64)> {
        let t = fs::read_to_string(self.dir.join("count")).ok()?;
        let mut it = t.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }
    /// (how many rehashes, checksum of the last).
    pub fn rehash(&self) -> Option<(u64, String)> {
        let t = fs::read_to_string(self.dir.join("rehash")).ok()?;
        let mut it = t.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.to_string()))
    }
    /// Waits until the count passes `above`; returns (run id, count).
    pub fn wait_count_above(&self, above: u64) -> (u64, u64) {
        let mut last = None;
        wait_for(
            &format!("memhold's count in {:?} to pass {above}", self.dir),
            WAIT,
            || {
                last = self.count();
                last.is_some_and(|(_, c)| c > above)
            },
        );
        last.unwrap()
    }
    /// Waits for the `n`th rehash and returns its checksum.
    pub fn wait_rehash(&self, n: u64) -> String {
        let mut last = None;
        wait_for(
            &format!("memhold's rehash #{n} in {:?}", self.dir),
            WAIT,
            || {
                last = self.rehash();
                last.as_ref().is_some_and(|(k, _)| *k >= n)
            },
        );
        let (k, sum) = last.unwrap();
        assert_eq!(
            k, n,
            "memhold in {:?} rehashed {k} times, expected {n}",
            self.dir
        );
        sum
    }
}

/// sha256 of a file, to prove a failed restore did not touch the archive.
pub fn file_digest(path: &Path) -> String {
    use sha2::Digest;
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    hex::encode(sha2::Sha256::digest(&bytes))
}

/// Live processes carrying this test's tag, with their command lines (for messages).
pub fn tagged(ferry: &Ferry) -> Vec<String> {
    tagged_processes(&ferry.tag)
        .into_iter()
        .map(|p| {
            let cmd = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

/// Waits until no process of this test runs (after a delete, or a failed restore).
pub fn wait_no_tagged(ferry: &Ferry) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if tagged(ferry).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("processes left behind:\n{}", tagged(ferry).join("\n"));
}

/// What a restore that failed must not leave: the container record, its bundle under the
/// storage, mounts of it, its cgroups, its processes, CRIU's work directory and the tmpfs
/// the archive was unpacked into.
/// `procs_before`: this test's processes before the restore (a source container may run).
pub fn assert_restore_left_nothing(host: &Host, id: &str, procs_before: &[i32]) {
    assert!(
        !host.ferry.root().join(id).exists(),
        "state directory of {id} is still there"
    );
    assert!(
        !host.ids().contains(&id.to_string()),
        "`ferry list` still shows {id}"
    );
    let bundle = host.storage.join("containers").join(id);
    assert!(!bundle.exists(), "{bundle:?} is still there");
    let mounts = mounts_under(&bundle);
    assert!(
        mounts.is_empty(),
        "mounts left behind:\n{}",
        mounts.join("\n")
    );
    assert_cgroups_gone(id);
    let new_procs = || -> Vec<i32> {
        tagged_processes(&host.ferry.tag)
            .into_iter()
            .filter(|p| !procs_before.contains(p))
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    while !new_procs().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = new_procs();
    assert!(
        left.is_empty(),
        "the failed restore left processes: {:?}",
        tagged(&host.ferry)
    );
    assert_work_clean(host);
}

/// Nothing under the storage's work directory: no files, and no mount (the tmpfs stage of
/// `restore -i`), after a restore that succeeded or failed.
pub fn assert_work_clean(host: &Host) {
    let work = host.storage.join("work");
    let mounts = mounts_under(&work);
    assert!(
        mounts.is_empty(),
        "the restore left mounts under {work:?}:\n{}",
        mounts.join("\n")
    );
    if let Ok(rd) = fs::read_dir(&work) {
        let left: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "restore left work files: {left:?}");
    }
}

/// The JSON `--stats-file` wrote.
pub fn read_stats(path: &Path) -> serde_json::Value {
    let text = fs::read(path).unwrap_or_else(|e| panic!("read the stats file {path:?}: {e}"));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("stats file {path:?}: {e}"))
}

/// Waits until no cgroup directory named `id` remains in any hierarchy; the panic lists them.
pub fn assert_cgroups_gone(id: &str) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cgroup_dirs_for(id).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "cgroup directories of {id} remain after delete: {:?}",
        cgroup_dirs_for(id)
    );
}

/// A deleted container left nothing: no record, no process, no cgroup.
pub fn assert_deleted(host: &Host, id: &str) {
    assert!(
        !host.ids().contains(&id.to_string()),
        "`ferry list` still shows {id}"
    );
    wait_no_tagged(&host.ferry);
    assert_cgroups_gone(id);
}

/// The size of the file without a name (`O_TMPFILE`) that process `pid` is writing in
/// `dir`, as `checkpoint -e` writes an archive until it is complete; 0 if there is none.
pub fn unnamed_output_len(pid: u32, dir: &Path) -> u64 {
    let prefix = format!("{}/#", dir.display());
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            fs::read_link(fd.path()).is_ok_and(|t| {
                let t = t.to_string_lossy();
                t.starts_with(&prefix) && t.ends_with(" (deleted)")
            })
        })
        .filter_map(|fd| fs::metadata(fd.path()).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// The entries of an uncompressed ferry archive, in order, with the manifest parsed.
pub fn read_entries(
    archive: &Path,
) -> (Vec<(String, Vec<u8>)>, ferry::archive::manifest::Manifest) {
    let mut ar = tar::Archive::new(fs::File::open(archive).unwrap());
    let mut entries = vec![];
    let mut manifest = None;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = vec![];
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if name == ferry::archive::manifest::MANIFEST_NAME {
            let signed: ferry::archive::manifest::SignedManifest =
                serde_json::from_slice(&data).unwrap();
            manifest = Some(signed.verify().unwrap().0);
        } else if e.header().entry_type().is_file() {
            entries.push((name, data));
        }
    }
    (entries, manifest.expect("no ferry.manifest"))
}
