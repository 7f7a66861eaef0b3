//! Containers made from an image in the store, through the CLI (issue 3): `run -d --image`,
//! the container's changes as `ferry diff` reports them (text and JSON), the rootfs as an
//! overlay whose upper dir lives under the storage, `image rm` refused while a container uses
//! the image, `delete` removing the overlay, the bundle and the cgroups, `create --image` +
//! `start` with a command that replaces the image's Cmd, and failures that leave nothing.
//! No CRIU here: the Host is only a private `--root` plus a private `--storage`.

#[path = "common/ckpt.rs"]
mod ckpt;
mod common;

use ckpt::*;
use common::*;
use serde_json::{Value, json};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A busybox rootfs plus a few files the tests change: /etc/motd, /opt/data/gone.txt,
/// /opt/data/kept.txt and a directory /srv of mode 0755.
fn image_dir(host: &Host) -> PathBuf {
    let dir = host.ferry.scratch().join("bb-rootfs");
    make_busybox_rootfs(&dir);
    fs::write(dir.join("etc/motd"), "hello from the image\n").unwrap();
    fs::create_dir_all(dir.join("opt/data")).unwrap();
    fs::write(dir.join("opt/data/gone.txt"), "delete me\n").unwrap();
    fs::write(dir.join("opt/data/kept.txt"), "keep me\n").unwrap();
    fs::create_dir_all(dir.join("srv/www")).unwrap();
    fs::set_permissions(dir.join("srv"), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A Host (no CRIU) with image `bb` imported from `image_dir`.
fn host_with_image() -> Host {
    let host = Host::without_criu();
    let dir = image_dir(&host);
    let digest = host.import_dir("bb", &dir);
    assert!(digest.starts_with("sha256:"), "{digest}");
    host
}

fn bundle_dir(host: &Host, id: &str) -> PathBuf {
    host.storage.join("containers").join(id)
}

/// `(mount point, fs type, super options)` of every mount in the host's table.
fn mountinfo() -> Vec<(String, String, String)> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?.to_string();
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let _source = post.next()?;
            let opts = post.next().unwrap_or("").to_string();
            Some((unescape(&mount_point), fstype, unescape(&opts)))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The super option `key=` of an overlay's options (`upperdir`, `workdir`, `lowerdir`).
fn overlay_option(opts: &str, key: &str) -> Option<String> {
    opts.split(',')
        .find_map(|o| o.strip_prefix(&format!("{key}=")).map(String::from))
}

/// The diff as `(letter, path)` lines, checked to be well formed.
fn diff_lines(host: &Host, id: &str) -> Vec<(String, String)> {
    let out = host.run(&["diff", id]).ok();
    out.stdout
        .lines()
        .map(|l| {
            let (k, p) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("`ferry diff` printed a malformed line {l:?}"));
            assert!(
                matches!(k, "A" | "C" | "D") && p.starts_with('/'),
                "`ferry diff` printed a malformed line {l:?}:\n{}",
                out.stdout
            );
            (k.to_string(), p.to_string())
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array, got {v}"))
        .iter()
        .map(|s| s.as_str().expect("a path string").to_string())
        .collect()
}

#[test]
fn image_container_changes_overlay_image_ref_and_delete() {
    let host = host_with_image();
    let c1 = host.id("c1");
    host.run_image(
        "bb",
        &c1,
        &["/bin/sh", "-c", "echo up > /tmp/up; exec sleep 1000000"],
    );
    let bundle = bundle_dir(&host, &c1);
    let rootfs = host.rootfs(&c1);
    wait_for("the container to write /tmp/up", WAIT, || {
        rootfs.join("tmp/up").exists()
    });
    assert_eq!(host.ferry.status(&c1).as_deref(), Some("running"));

    // The rootfs is an overlay mount whose upper (and work) dir lies under S/containers/c1,
    // over lower dirs in the store.
    let bundle_canon = fs::canonicalize(&bundle).unwrap();
    let rootfs_canon = fs::canonicalize(&rootfs).unwrap();
    let storage_canon = fs::canonicalize(&host.storage).unwrap();
    let mounts = mountinfo();
    let (_, fstype, opts) = mounts
        .iter()
        .rev()
        .find(|(mp, _, _)| Path::new(mp) == rootfs_canon)
        .unwrap_or_else(|| {
            panic!(
                "no mount at {rootfs_canon:?} in /proc/self/mountinfo:\n{}",
                fs::read_to_string("/proc/self/mountinfo").unwrap()
            )
        });
    assert_eq!(fstype, "overlay", "the rootfs of {c1} is not an overlay");
    let upper = overlay_option(opts, "upperdir")
        .unwrap_or_else(|| panic!("the overlay has no upperdir: {opts}"));
    assert!(
        Path::new(&upper).starts_with(&bundle_canon),
        "upperdir {upper} is not under {bundle_canon:?}"
    );
    let work = overlay_option(opts, "workdir")
        .unwrap_or_else(|| panic!("the overlay has no workdir: {opts}"));
    assert!(
        Path::new(&work).starts_with(&bundle_canon),
        "workdir {work} is not under {bundle_canon:?}"
    );
    let lower = overlay_option(opts, "lowerdir")
        .unwrap_or_else(|| panic!("the overlay has no lowerdir: {opts}"));
    for l in lower.split(':') {
        assert!(
            Path::new(l).starts_with(&storage_canon),
            "lowerdir {l} is not in the store {storage_canon:?}"
        );
    }

    // Change files inside: create, modify, chmod a directory, delete an image file, symlink,
    // a new directory with a file in it.
    host.run(&[
        "exec",
        &c1,
        "/bin/sh",
        "-c",
        "set -e; echo new > /root/new.txt; echo more >> /etc/motd; chmod 0700 /srv; \
         rm /opt/data/gone.txt; ln -s /etc/motd /root/motd.link; \
         mkdir /var/newdir; echo x > /var/newdir/f",
    ])
    .ok();
    assert_eq!(
        fs::read_link(Path::new(&upper).join("root/motd.link")).unwrap(),
        Path::new("/etc/motd"),
        "the symlink is not in the upper dir"
    );

    let lines = diff_lines(&host, &c1);
    eprintln!("ferry diff {c1}:\n{lines:?}");
    let has = |k: &str, p: &str| lines.iter().any(|(a, b)| a == k && b == p);
    let expected = [
        ("A", "/root/new.txt"),
        ("C", "/etc/motd"),
        ("C", "/srv"),
        ("D", "/opt/data/gone.txt"),
        ("A", "/root/motd.link"),
        ("A", "/var/newdir"),
        ("A", "/var/newdir/f"),
        ("A", "/tmp/up"),
    ];
    for (k, p) in expected {
        assert!(
            has(k, p),
            "`ferry diff` lacks `{k} {p}`; it printed:\n{lines:?}"
        );
    }
    // Parents whose mode did not change, and untouched image files, are not changes.
    for p in [
        "/root",
        "/etc",
        "/opt/data",
        "/opt/data/kept.txt",
        "/var",
        "/tmp",
        "/srv/www",
        "/bin/busybox",
        "/etc/passwd",
    ] {
        assert!(
            !lines.iter().any(|(_, b)| b == p),
            "`ferry diff` reports {p}, which the container did not change:\n{lines:?}"
        );
    }

    // And nothing else.
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_string()))
        .collect();
    want.sort();
    let mut got = lines.clone();
    got.sort();
    assert_eq!(
        got, want,
        "`ferry diff` reports changes the container did not make"
    );

    let json = host.run(&["diff", &c1, "--format", "json"]).ok().json();
    let (added, changed, deleted) = (
        strings(&json["added"]),
        strings(&json["changed"]),
        strings(&json["deleted"]),
    );
    for (k, p) in expected {
        let list = match k {
            "A" => &added,
            "C" => &changed,
            _ => &deleted,
        };
        assert!(
            list.iter().any(|x| x == p),
            "`ferry diff --format json` lacks {p} under {k}: {json}"
        );
    }
    // Text and JSON tell the same story.
    let mut from_text: Vec<(String, String)> = lines.clone();
    let mut from_json: Vec<(String, String)> = added
        .iter()
        .map(|p| ("A".to_string(), p.clone()))
        .chain(changed.iter().map(|p| ("C".to_string(), p.clone())))
        .chain(deleted.iter().map(|p| ("D".to_string(), p.clone())))
        .collect();
    from_text.sort();
    from_json.sort();
    assert_eq!(from_text, from_json, "text and JSON diffs differ: {json}");

    // The image is in use: `image rm` refuses and names the container.
    let out = host.run(&["image", "rm", "bb"]).fails();
    assert!(
        out.stderr.contains(&c1),
        "`image rm bb` should name the container {c1} that uses it; it said:\n{}",
        out.stderr
    );
    host.run(&["image", "inspect", "bb"]).ok();
    assert_eq!(host.ferry.status(&c1).as_deref(), Some("running"));

    // The cgroups the container is in, in every hierarchy.
    let pid = host.ferry.pid(&c1);
    let cgroups = cgroup_dirs_for(&c1);
    eprintln!("cgroups of {c1}: {cgroups:?}");
    let unified = PathBuf::from("/sys/fs/cgroup/unified/ferry").join(&c1);
    if Path::new("/sys/fs/cgroup/unified").is_dir() {
        assert!(
            cgroups.contains(&unified),
            "{unified:?} was not made; the container's cgroups: {cgroups:?}"
        );
    }
    assert!(
        !cgroups.is_empty(),
        "no cgroup directory named {c1} under /sys/fs/cgroup/*/ferry; /proc/{pid}/cgroup:\n{}",
        fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
    );

    // delete -f: the overlay, the bundle, the cgroups (all hierarchies) and the process go.
    host.run(&["delete", "-f", &c1]).ok();
    assert_deleted(&host, &c1);
    assert!(
        !host.ferry.root().join(&c1).exists(),
        "the state directory of {c1} is still there"
    );
    let left = mounts_under(&bundle_canon);
    assert!(
        left.is_empty(),
        "mounts left after delete:\n{}",
        left.join("\n")
    );
    assert!(!bundle.exists(), "{bundle:?} is still there after delete");
    for dir in cgroups.iter().cloned().chain([unified]) {
        assert!(!dir.exists(), "{dir:?} is still there after delete");
    }

    // Nothing uses the image now.
    host.run(&["image", "rm", "bb"]).ok();
    host.run(&["image", "inspect", "bb"]).fails();
    let ls = host.run(&["image", "ls", "--format", "json"]).ok();
    assert!(
        !ls.stdout.contains("\"bb"),
        "`image ls` still lists bb:\n{}",
        ls.stdout
    );
}

#[test]
fn create_and_start_from_an_image_with_a_command_that_replaces_cmd() {
    let host = host_with_image();

    // Without a command, the image's Cmd (a plain rootfs gets `sh`).
    let c0 = host.id("c0");
    host.run_quiet(&["create", "--image", "bb", "--name", &c0])
        .ok();
    let spec: Value =
        serde_json::from_slice(&fs::read(bundle_dir(&host, &c0).join("config.json")).unwrap())
            .unwrap();
    let image_cmd = spec["process"]["args"].clone();
    assert_eq!(
        image_cmd,
        json!(["sh"]),
        "the image's Cmd should be the args"
    );
    host.run(&["delete", "-f", &c0]).ok();
    assert_deleted(&host, &c0);

    // `-- true` replaces it; create leaves it created, start runs it to the end.
    let c2 = host.id("c2");
    host.run_quiet(&["create", "--image", "bb", "--name", &c2, "--", "true"])
        .ok();
    let spec: Value =
        serde_json::from_slice(&fs::read(bundle_dir(&host, &c2).join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        spec["process"]["args"],
        json!(["true"]),
        "the command after `--` should replace the image's Cmd"
    );
    assert_eq!(host.ferry.status(&c2).as_deref(), Some("created"));
    host.run(&["start", &c2]).ok();
    host.ferry.wait_status(&c2, "stopped");
    host.run(&["delete", &c2]).ok();
    assert_deleted(&host, &c2);
    assert!(!bundle_dir(&host, &c2).exists());

    // A foreground run hands back the command's exit code, and what it wrote was in the
    // container's rootfs while it ran (the image itself is untouched).
    let c3 = host.id("c3");
    let out = host.run(&[
        "run",
        "--image",
        "bb",
        "--name",
        &c3,
        "--",
        "/bin/sh",
        "-c",
        "echo ran > /ran; cat /ran; exit 7",
    ]);
    assert_eq!(
        out.code,
        Some(7),
        "`ferry run` should exit with the command's code 7\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.stdout.trim(), "ran", "stderr: {}", out.stderr);
    // Without --keep the container is gone once it exits, and with it its overlay.
    assert_deleted(&host, &c3);
    assert!(!bundle_dir(&host, &c3).exists());
    assert!(mounts_under(&bundle_dir(&host, &c3)).is_empty());
    host.run(&["image", "rm", "bb"]).ok();
}

/// What a create that failed must not leave: no record, no bundle under the storage, no
/// mount, no cgroup.
fn assert_create_left_nothing(host: &Host, id: &str) {
    assert!(
        !host.ferry.root().join(id).exists(),
        "state directory of {id} is still there"
    );
    assert!(
        !host.ids().contains(&id.to_string()),
        "`ferry list` still shows {id}"
    );
    let bundle = bundle_dir(host, id);
    let mounts = mounts_under(&bundle);
    assert!(
        mounts.is_empty(),
        "mounts left behind:\n{}",
        mounts.join("\n")
    );
    assert!(!bundle.exists(), "{bundle:?} is still there");
    assert_cgroups_gone(id);
}

#[test]
fn a_missing_image_is_named_and_leaves_nothing() {
    let host = host_with_image();
    for verb in ["run", "create"] {
        let id = host.id("noimg");
        let mut args = vec![verb];
        if verb == "run" {
            args.push("-d");
        }
        args.extend_from_slice(&["--image", "nosuchimage", "--name", &id, "--", "true"]);
        let out = host.run(&args).fails();
        assert!(
            out.stderr.contains("nosuchimage"),
            "`ferry {verb} --image nosuchimage` should name the missing image; it said:\n{}",
            out.stderr
        );
        assert_create_left_nothing(&host, &id);
    }
    assert!(host.ids().is_empty(), "containers: {:?}", host.ids());
}

#[test]
fn a_failed_create_from_an_image_leaves_nothing() {
    let host = host_with_image();
    for verb in ["create", "run"] {
        let id = host.id("nocmd");
        let mut args = vec![verb];
        if verb == "run" {
            args.push("-d");
        }
        args.extend_from_slice(&["--image", "bb", "--name", &id, "--", "/bin/no-such-command"]);
        let out = host.run_quiet(&args);
        assert!(
            !out.success(),
            "`ferry {}` should fail: /bin/no-such-command is not in the image",
            args.join(" ")
        );
        assert!(
            out.stderr.contains("no-such-command"),
            "the error should name the missing command; it said:\n{}",
            out.stderr
        );
        assert_create_left_nothing(&host, &id);
    }
    // No reference on the image was left behind either.
    host.run(&["image", "rm", "bb"]).ok();
}

/// Two `run -d --image` under one name at the same moment: one container runs, the other
/// is told the name is taken (not that a directory "was not cleaned up", which would send
/// its user to remove the running container's files), and deleting the one leaves nothing.
#[test]
fn two_runs_racing_for_one_name_give_one_container_and_a_clear_refusal() {
    let host = host_with_image();
    for round in 0..3 {
        let id = host.id(&format!("race{round}"));
        let args = [
            "run", "-d", "--image", "bb", "--name", &id, "--", "sleep", "1000",
        ];
        let outs: Vec<Output> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..2).map(|_| s.spawn(|| host.run_quiet(&args))).collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(
            outs.iter().filter(|o| o.success()).count(),
            1,
            "exactly one run should win: {outs:#?}"
        );
        let lost = outs.iter().find(|o| !o.success()).unwrap();
        assert!(
            lost.stderr.contains("already exists") && !lost.stderr.contains("cleaned up"),
            "the refused run should say the name is taken: {}",
            lost.stderr
        );
        host.ferry.wait_status(&id, "running");
        host.run(&["delete", "--force", &id]).ok();
        assert_create_left_nothing(&host, &id);
    }
}

/// A create killed between taking its id and noting who takes it leaves an empty state
/// directory (a ferry from before the note leaves one too): once it is not a moment old,
/// the id reads as taken by a killed maker, and `ferry delete` frees it again. (What a
/// restore killed later leaves: checkpoint_bad_input.)
#[test]
fn an_id_taken_by_an_interrupted_create_is_freed_by_delete() {
    let host = host_with_image();
    let id = host.id("halfmade");
    let dir = host.ferry.root().join(&id);
    fs::create_dir_all(&dir).unwrap();
    fs::File::open(&dir)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
        .unwrap();
    let out = host
        .run_quiet(&["run", "-d", "--image", "bb", "--name", &id, "--", "true"])
        .fails();
    assert!(
        out.stderr.contains("was killed") && out.stderr.contains(&format!("ferry delete {id}")),
        "{}",
        out.stderr
    );
    host.run(&["delete", &id]).ok();
    assert!(!host.ferry.root().join(&id).exists());
    host.run(&[
        "run", "-d", "--image", "bb", "--name", &id, "--", "sleep", "1000",
    ])
    .ok();
    host.ferry.wait_status(&id, "running");
    host.run(&["delete", "--force", &id]).ok();
    assert_create_left_nothing(&host, &id);
}
