//! The harness every integration test shares: busybox bundles whose `config.json` starts from
//! `ferry spec`, a `Ferry` runner with a private `--root`, and cleanup that force-deletes
//! whatever a failing test left running. Tests need root and fail (never skip) without it.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// How long one ferry command may take before the test calls it hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test waits for a condition (a status, a file, a counter) before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// Panics unless the test runs as root: containers need it, and a skipped test proves nothing.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this integration test runs real containers and needs root; run `make test` \
             (or `cargo test`) as root"
        );
    }
}

/// An id no other test (or earlier run) uses: cgroup paths are global, roots are not.
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t-{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff)
}

/// Polls `cond` until it holds; panics naming `what` after `timeout`. Tests wait for facts,
/// never assert on how long something took.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a finished ferry command left: exit code (None when killed by a signal), output.
#[derive(Debug, Clone)]
pub struct Output {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// Panics with the command and its stderr unless it exited 0.
    pub fn ok(self) -> Self {
        assert!(
            self.success(),
            "`ferry {}` failed with {:?}\nstdout: {}\nstderr: {}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
    /// Panics unless the command failed (non-zero exit) and said why on stderr.
    pub fn fails(self) -> Self {
        assert!(
            !self.success(),
            "`ferry {}` should have failed but exited 0\nstdout: {}\nstderr: {}",
            self.args.join(" "),
            self.stdout,
            self.stderr
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "`ferry {}` failed ({:?}) without saying why on stderr",
            self.args.join(" "),
            self.code
        );
        self
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`ferry {}` printed no valid JSON ({e}):\n{}\nstderr: {}",
                self.args.join(" "),
                self.stdout,
                self.stderr
            )
        })
    }
}

/// A ferry command started in the background (e.g. `create --console-socket` while the test
/// accepts the terminal, or a foreground `run`).
pub struct Running {
    child: std::process::Child,
    args: Vec<String>,
    out: PathBuf,
    err: PathBuf,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn try_finish(&mut self) -> Option<Output> {
        match self.child.try_wait().expect("waiting for ferry") {
            Some(status) => Some(Output {
                args: self.args.clone(),
                code: status.code(),
                stdout: fs::read_to_string(&self.out).unwrap_or_default(),
                stderr: fs::read_to_string(&self.err).unwrap_or_default(),
            }),
            None => None,
        }
    }
    /// Waits for the command to end; kills it and panics when it hangs past `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(out) = self.try_finish() {
                return out;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`ferry {}` did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                    self.args.join(" "),
                    fs::read_to_string(&self.out).unwrap_or_default(),
                    fs::read_to_string(&self.err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// Stdout so far.
    pub fn stdout_so_far(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the ferry binary with a private `--root`. Every id it hands out is force-deleted when
/// it is dropped, and every process it starts carries `FERRY_TEST_TAG=<tag>` in its
/// environment so leftovers can be found.
pub struct Ferry {
    dir: tempfile::TempDir,
    root: PathBuf,
    pub tag: String,
    ids: Mutex<Vec<String>>,
    seq: AtomicUsize,
}

impl Ferry {
    pub fn new() -> Ferry {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("ferry-test-")
            .tempdir()
            .expect("temp dir for ferry --root");
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        Ferry {
            root,
            tag: unique_id("tag"),
            dir,
            ids: Mutex::new(Vec::new()),
            seq: AtomicUsize::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A scratch directory private to this test (removed at the end).
    pub fn scratch(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let p = self.dir.path().join(format!("scratch-{n}"));
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// A fresh unique id, remembered for cleanup.
    pub fn id(&self, prefix: &str) -> String {
        let id = unique_id(prefix);
        self.ids.lock().unwrap().push(id.clone());
        id
    }

    fn command(&self, args: &[&str]) -> (Command, Vec<String>) {
        let mut cmd = Command::new(FERRY);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd.env("FERRY_TEST_TAG", &self.tag);
        cmd.stdin(Stdio::null());
        (cmd, args.iter().map(|s| s.to_string()).collect())
    }

    /// Starts `ferry --root <root> ARGS` in the background, stdout/stderr into files (a
    /// detached container inherits them, so pipes would never reach EOF).
    pub fn spawn(&self, args: &[&str]) -> Running {
        self.spawn_in(args, None)
    }

    pub fn spawn_in(&self, args: &[&str], cwd: Option<&Path>) -> Running {
        let (mut cmd, args) = self.command(args);
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let out = self.dir.path().join(format!("cmd-{n}.out"));
        let err = self.dir.path().join(format!("cmd-{n}.err"));
        cmd.stdout(fs::File::create(&out).unwrap());
        cmd.stderr(fs::File::create(&err).unwrap());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {FERRY}: {e}"));
        Running {
            child,
            args,
            out,
            err,
        }
    }

    /// Runs `ferry --root <root> ARGS` to the end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.spawn(args).finish(COMMAND_TIMEOUT)
    }

    /// Runs ferry in `cwd` (for `create` without `--bundle`, which means the current directory).
    pub fn run_in(&self, cwd: &Path, args: &[&str]) -> Output {
        self.spawn_in(args, Some(cwd)).finish(COMMAND_TIMEOUT)
    }

    pub fn create(&self, bundle: &Bundle, id: &str) -> Output {
        self.run(&["create", "--bundle", bundle.path_str(), id])
    }

    /// create + start, checked.
    pub fn start_container(&self, bundle: &Bundle, id: &str) {
        self.create(bundle, id).ok();
        self.run(&["start", id]).ok();
    }

    /// The state JSON, checked to be valid.
    pub fn state(&self, id: &str) -> Value {
        self.run(&["state", id]).ok().json()
    }

    /// The status from `ferry state`, or None when state fails (e.g. the container is gone).
    pub fn status(&self, id: &str) -> Option<String> {
        let out = self.run(&["state", id]);
        if !out.success() {
            return None;
        }
        serde_json::from_str::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["status"].as_str().map(String::from))
    }

    pub fn pid(&self, id: &str) -> i32 {
        let v = self.state(id);
        v["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("state of {id} has no pid: {v}")) as i32
    }

    pub fn wait_status(&self, id: &str, want: &str) {
        let mut last = None;
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            last = self.status(id);
            if last.as_deref() == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("container {id} never reached status {want:?}; last seen {last:?}");
    }

    /// Ids listed by `ferry list -q`.
    pub fn list_ids(&self) -> Vec<String> {
        self.run(&["list", "-q"])
            .ok()
            .stdout
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let mut ids = self.ids.lock().unwrap().clone();
        // Containers under the root that were made with ids the test did not ask us for.
        if let Ok(rd) = fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if e.path().is_dir() && !ids.contains(&name) {
                    ids.push(name);
                }
            }
        }
        for id in &ids {
            let mut cmd = Command::new(FERRY);
            cmd.arg("--root")
                .arg(&self.root)
                .args(["delete", "--force", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Ok(mut child) = cmd.spawn() {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() > deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
        // Whatever survived (a broken delete): kill it so the next test run starts clean.
        for pid in tagged_processes(&self.tag) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Live (non-zombie) processes whose environment holds `FERRY_TEST_TAG=<tag>`.
pub fn tagged_processes(tag: &str) -> Vec<i32> {
    let needle = format!("FERRY_TEST_TAG={tag}");
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me || is_zombie_or_gone(pid) {
            continue;
        }
        if let Ok(env) = fs::read(format!("/proc/{pid}/environ"))
            && env.split(|b| *b == 0).any(|var| var == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// True when `pid` is gone or a zombie (PID 1 on these machines reaps late).
pub fn is_zombie_or_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // The state letter follows the ")" that closes the command name.
            let after = stat
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start())
                .unwrap_or("");
            after.starts_with('Z') || after.starts_with('X')
        }
    }
}

/// A bundle directory: `rootfs/` with busybox and its applets, and `config.json` that starts
/// as `ferry spec` wrote it and is edited through the methods below, then `save()`d.
pub struct Bundle {
    dir: Option<tempfile::TempDir>,
    /// The `--root` of the Ferry that made it: containers still running from this bundle
    /// are force-deleted before the directory goes (a Bundle is often dropped first).
    ferry_root: PathBuf,
    pub spec: Value,
    path_string: String,
}

impl Bundle {
    /// A bundle whose process is `args`, terminal off, env carrying the ferry's tag.
    pub fn new(ferry: &Ferry, args: &[&str]) -> Bundle {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("ferry-bundle-")
            .tempdir()
            .expect("temp dir for the bundle");
        make_busybox_rootfs(&dir.path().join("rootfs"));
        let out = Command::new(FERRY)
            .arg("spec")
            .current_dir(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {FERRY} spec: {e}"));
        assert!(
            out.status.success(),
            "`ferry spec` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = fs::read_to_string(dir.path().join("config.json"))
            .expect("`ferry spec` wrote no config.json in the current directory");
        let spec: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("`ferry spec` wrote invalid JSON ({e}):\n{text}"));
        // Canonical, so it compares equal to the absolute bundle path ferry records.
        let path_string = fs::canonicalize(dir.path())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let mut b = Bundle {
            dir: Some(dir),
            ferry_root: ferry.root().to_path_buf(),
            spec,
            path_string,
        };
        b.args(args).terminal(false);
        // Tests write marker files into the rootfs; `ferry spec` makes it read-only like runc.
        b.spec["root"]["readonly"] = json!(false);
        b.env("FERRY_TEST_TAG", &ferry.tag);
        b.save();
        b
    }

    pub fn path(&self) -> &Path {
        Path::new(&self.path_string)
    }
    pub fn path_str(&self) -> &str {
        &self.path_string
    }
    pub fn rootfs(&self) -> PathBuf {
        self.path().join("rootfs")
    }
    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.json")
    }

    /// Writes the edited spec to config.json.
    pub fn save(&self) {
        fs::write(
            self.config_path(),
            serde_json::to_vec_pretty(&self.spec).unwrap(),
        )
        .unwrap();
    }

    /// Any edit that has no method of its own.
    pub fn edit(&mut self, f: impl FnOnce(&mut Value)) -> &mut Self {
        f(&mut self.spec);
        self
    }

    pub fn args(&mut self, args: &[&str]) -> &mut Self {
        self.spec["process"]["args"] = json!(args);
        self
    }

    pub fn terminal(&mut self, on: bool) -> &mut Self {
        self.spec["process"]["terminal"] = json!(on);
        self
    }

    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        let env = self.spec["process"]["env"].as_array_mut();
        let entry = format!("{key}={value}");
        match env {
            Some(list) => {
                list.retain(|e| !e.as_str().unwrap_or("").starts_with(&format!("{key}=")));
                list.push(json!(entry));
            }
            None => self.spec["process"]["env"] = json!([entry]),
        }
        self
    }

    pub fn cwd(&mut self, cwd: &str) -> &mut Self {
        self.spec["process"]["cwd"] = json!(cwd);
        self
    }

    pub fn mount(&mut self, mount: Value) -> &mut Self {
        match self.spec["mounts"].as_array_mut() {
            Some(m) => m.push(mount),
            None => self.spec["mounts"] = json!([mount]),
        }
        self
    }

    /// Adds a namespace of `kind` (replacing one of the same kind).
    pub fn namespace(&mut self, kind: &str, path: Option<&str>) -> &mut Self {
        let mut ns = json!({ "type": kind });
        if let Some(p) = path {
            ns["path"] = json!(p);
        }
        let list = self.spec["linux"]["namespaces"]
            .as_array_mut()
            .expect("`ferry spec` output has no linux.namespaces");
        list.retain(|n| n["type"] != kind);
        list.push(ns);
        self
    }

    pub fn without_namespace(&mut self, kind: &str) -> &mut Self {
        if let Some(list) = self.spec["linux"]["namespaces"].as_array_mut() {
            list.retain(|n| n["type"] != kind);
        }
        self
    }

    pub fn has_namespace(&self, kind: &str) -> bool {
        self.spec["linux"]["namespaces"]
            .as_array()
            .is_some_and(|l| l.iter().any(|n| n["type"] == kind))
    }

    /// Appends a hook to `hooks.<kind>` (prestart, createRuntime, createContainer,
    /// startContainer, poststart, poststop).
    pub fn hook(&mut self, kind: &str, path: &str, args: &[&str]) -> &mut Self {
        if !self.spec["hooks"].is_object() {
            self.spec["hooks"] = json!({});
        }
        let hook = json!({ "path": path, "args": args });
        match self.spec["hooks"][kind].as_array_mut() {
            Some(list) => list.push(hook),
            None => self.spec["hooks"][kind] = json!([hook]),
        }
        self
    }

    /// Sets `linux.resources` (merged key by key into what is there).
    pub fn resources(&mut self, res: Value) -> &mut Self {
        if !self.spec["linux"]["resources"].is_object() {
            self.spec["linux"]["resources"] = json!({});
        }
        for (k, v) in res.as_object().expect("resources must be an object") {
            self.spec["linux"]["resources"][k] = v.clone();
        }
        self
    }

    pub fn seccomp(&mut self, profile: Value) -> &mut Self {
        self.spec["linux"]["seccomp"] = profile;
        self
    }

    /// A user namespace mapping container uid/gid 0.. to `host_id`.. for `size` ids.
    pub fn user_namespace(&mut self, host_id: u32, size: u32) -> &mut Self {
        self.namespace("user", None);
        let map = json!([{ "containerID": 0, "hostID": host_id, "size": size }]);
        self.spec["linux"]["uidMappings"] = map.clone();
        self.spec["linux"]["gidMappings"] = map;
        self
    }

    /// Copies the static helper `name` (tests/helpers/<name>.c) to `/bin/<name>` in the rootfs.
    pub fn with_helper(&mut self, name: &str) -> &mut Self {
        let src = helper(name);
        let dst = self.rootfs().join("bin").join(name);
        fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {src:?} to {dst:?}: {e}"));
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    /// Writes a file into the rootfs (path inside the container), e.g. a script to run.
    pub fn write_file(&mut self, path_inside: &str, content: &str, mode: u32) -> &mut Self {
        let p = self.rootfs().join(path_inside.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// A file of the rootfs as the host sees it.
    pub fn host_path(&self, path_inside: &str) -> PathBuf {
        self.rootfs().join(path_inside.trim_start_matches('/'))
    }

    pub fn read_file(&self, path_inside: &str) -> Option<String> {
        fs::read_to_string(self.host_path(path_inside)).ok()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let ferry = |args: &[&str]| {
            Command::new(FERRY)
                .arg("--root")
                .arg(&self.ferry_root)
                .args(args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()
        };
        if let Some(out) = ferry(&["list", "--format", "json"])
            && let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&out.stdout)
        {
            for c in list
                .iter()
                .filter(|c| c["bundle"] == self.path_string.as_str())
            {
                if let Some(id) = c["id"].as_str() {
                    let _ = ferry(&["delete", "--force", id]);
                }
            }
        }
        // Never delete through a mount a broken runtime left in the host's namespace.
        if !mounts_under(self.path()).is_empty()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("leaving bundle {kept:?} in place: mounts under it remain");
        }
    }
}

/// `/bin/busybox` of Debian's busybox-static plus one symlink per applet, and the few
/// directories and files a container expects.
pub fn make_busybox_rootfs(rootfs: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: install Debian's busybox-static (scripts/install-deps.sh does)"
    );
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc", "root", "run",
        "var",
    ] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .expect("busybox --list-full");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        let link = rootfs.join(applet);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        if link.symlink_metadata().is_err() {
            symlink("/bin/busybox", &link).unwrap();
        }
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    fs::write(rootfs.join("etc/hostname"), "ferry-test\n").unwrap();
}

/// The path of the static helper `name`, compiled once from tests/helpers/<name>.c with
/// `gcc -static -O2` into a cache under target/ (keyed by the source's hash). A file lock
/// keeps parallel tests and test binaries from compiling over each other.
pub fn helper(name: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/helpers")
        .join(format!("{name}.c"));
    let code = fs::read(&src).unwrap_or_else(|e| panic!("helper source {src:?}: {e}"));
    let mut h = DefaultHasher::new();
    code.hash(&mut h);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ferry-helpers");
    fs::create_dir_all(&cache).unwrap();
    let bin = cache.join(format!("{name}-{:016x}", h.finish()));
    if bin.exists() {
        return bin;
    }
    let lock_file = fs::File::create(cache.join(".lock")).unwrap();
    // SAFETY: flock on an fd we own; released when the file is closed.
    let rc = unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {:?}", cache.join(".lock"));
    if !bin.exists() {
        let tmp = cache.join(format!(".{name}.{}", std::process::id()));
        let out = Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run gcc ({e}); install build-essential (scripts/install-deps.sh)")
            });
        assert!(
            out.status.success(),
            "gcc -static {src:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::rename(&tmp, &bin).unwrap();
    }
    drop(lock_file);
    bin
}

/// A unix socket the test listens on as `--console-socket`; ferry sends the pty master.
pub struct ConsoleSocket {
    pub path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new(dir: &Path) -> ConsoleSocket {
        let path = dir.join("console.sock");
        let listener = UnixListener::bind(&path).expect("bind console socket");
        listener.set_nonblocking(true).unwrap();
        ConsoleSocket { path, listener }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Accepts ferry's connection and receives the pty master sent with SCM_RIGHTS.
    pub fn receive_master(&self, timeout: Duration) -> OwnedFd {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "ferry never connected to the console socket {:?}",
                        self.path
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept on console socket: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_secs(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        // A signal to this test process (a child of another test exiting) interrupts the
        // wait: wait again.
        let msg = loop {
            match nix::sys::socket::recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                nix::sys::socket::MsgFlags::empty(),
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.expect("recvmsg on the console socket"),
            }
        };
        for c in msg.cmsgs().expect("control messages") {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c
                && let Some(&fd) = fds.first()
            {
                // SAFETY: the kernel just installed this fd in our table; we own it now.
                return unsafe { OwnedFd::from_raw_fd(fd) };
            }
        }
        panic!("ferry connected to the console socket but sent no fd with SCM_RIGHTS");
    }
}

/// Reads from `fd` (a pty master) until `needle` appears; returns all read. Panics on timeout.
pub fn read_until(fd: &OwnedFd, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut file = fs::File::from(fd.try_clone().unwrap());
    loop {
        if String::from_utf8_lossy(&seen).contains(needle) {
            return String::from_utf8_lossy(&seen).to_string();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!(
                "never read {needle:?} from the terminal; got {:?}",
                String::from_utf8_lossy(&seen)
            );
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if n > 0 {
            let mut buf = [0u8; 4096];
            match file.read(&mut buf) {
                Ok(0) => panic!(
                    "terminal closed before {needle:?} appeared; got {:?}",
                    String::from_utf8_lossy(&seen)
                ),
                Ok(k) => seen.extend_from_slice(&buf[..k]),
                // EIO: the slave side closed.
                Err(e) => panic!(
                    "reading the terminal failed ({e}) before {needle:?} appeared; got {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
    }
}

/// The cgroup directory of `pid` for a v1 `controller` (or the v2 unified one when the host
/// is pure v2), from /proc/PID/cgroup.
pub fn cgroup_dir(pid: i32, controller: &str) -> PathBuf {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/cgroup: {e}"));
    if cgroup_v2_only() {
        let line = text
            .lines()
            .find(|l| l.starts_with("0::"))
            .expect("v2 line");
        return PathBuf::from("/sys/fs/cgroup").join(line[3..].trim_start_matches('/'));
    }
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if ctrls.split(',').any(|c| c == controller) {
            return PathBuf::from("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/'));
        }
    }
    panic!("pid {pid} is in no {controller} cgroup:\n{text}");
}

/// True when /sys/fs/cgroup is a pure cgroup v2 hierarchy.
pub fn cgroup_v2_only() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Cgroup directories named after `id` under the default `/ferry/<id>` parent, in every
/// hierarchy mounted under /sys/fs/cgroup.
pub fn cgroup_dirs_for(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let base = Path::new("/sys/fs/cgroup");
    let mut candidates = vec![base.join("ferry").join(id)];
    if let Ok(rd) = fs::read_dir(base) {
        for e in rd.flatten() {
            candidates.push(e.path().join("ferry").join(id));
        }
    }
    for c in candidates {
        if c.is_dir() {
            found.push(c);
        }
    }
    found
}

/// Mounts in the host's mount table whose source or target lies under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(String::from)
        .collect()
}

/// Everything a container may leave behind, checked after delete or a failed create: no
/// state dir, no mounts of its bundle, no cgroups, no processes of this test's ferry.
pub fn assert_no_leftovers(ferry: &Ferry, bundle: &Bundle, id: &str) {
    let state_dir = ferry.root().join(id);
    assert!(
        !state_dir.exists(),
        "state directory {state_dir:?} is still there"
    );
    assert!(
        !ferry.list_ids().contains(&id.to_string()),
        "`ferry list` still shows {id}"
    );
    let mounts = mounts_under(bundle.path());
    assert!(
        mounts.is_empty(),
        "mounts left behind:\n{}",
        mounts.join("\n")
    );
    wait_for(&format!("the cgroups of {id} to be removed"), WAIT, || {
        cgroup_dirs_for(id).is_empty()
    });
    let procs = tagged_processes(&ferry.tag);
    let describe = |pids: &[i32]| {
        pids.iter()
            .map(|p| {
                let cmd = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // A killed process may take a moment to become a zombie; wait for that, not for time.
    if !procs.is_empty() {
        let first = describe(&procs);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !tagged_processes(&ferry.tag).is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = tagged_processes(&ferry.tag);
        assert!(
            left.is_empty(),
            "processes left behind:\n{}",
            if left.is_empty() {
                first
            } else {
                describe(&left)
            }
        );
    }
}

/// Writes `json` to a file in `dir` and returns its path (for `exec --process`, `update
/// --resources`).
pub fn write_json(dir: &Path, name: &str, json: &Value) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, serde_json::to_vec_pretty(json).unwrap()).unwrap();
    p
}

/// The last counter value the `counter` helper wrote to `path` (host side), if any.
pub fn read_counter(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Waits until the counter file shows a value greater than `above`; returns it.
pub fn wait_counter_above(path: &Path, above: u64) -> u64 {
    let mut v = 0;
    wait_for(
        &format!("the counter in {path:?} to pass {above}"),
        WAIT,
        || {
            v = read_counter(path).unwrap_or(0);
            v > above
        },
    );
    v
}
