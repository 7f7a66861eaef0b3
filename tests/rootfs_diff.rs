//! The rootfs diff on real overlayfs: a container's changes made through an overlay mount are
//! listed, written as `rootfs-diff.tar` + `deleted.files`, applied onto a second overlay of the
//! same image, and the two merged trees compared entry by entry. Then crafted archives that try
//! to write outside the root. Needs root (mounts, chown, mknod, trusted.* xattrs).

use ferry::archive::{ChangeKind, apply_diff, changes, write_diff};
use nix::mount::{MntFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, chown, mkfifo};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "rootfs diff tests mount overlayfs, chown and mknod: run them as root (`make test`)"
        );
    }
}

/// An overlay mount that is taken down when the test ends, pass or fail.
struct Overlay {
    merged: PathBuf,
    upper: PathBuf,
    lowers: Vec<PathBuf>,
}

impl Overlay {
    fn mount(base: &Path, lowers: Vec<PathBuf>) -> Overlay {
        let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).unwrap();
        }
        // The merged root takes the upper root's attributes: make them the image's.
        let root_meta = fs::metadata(&lowers[lowers.len() - 1]).unwrap();
        fs::set_permissions(&upper, root_meta.permissions()).unwrap();
        let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .unwrap_or_else(|e| panic!("mount overlay on {} ({opts}): {e}", merged.display()));
        Overlay {
            merged,
            upper,
            lowers,
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.merged.join(rel)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = umount2(&self.merged, MntFlags::MNT_DETACH);
    }
}

fn write(path: &Path, data: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, data).unwrap();
}

fn mode(path: &Path, m: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(m)).unwrap();
}

/// Two image layers, top first: a busybox base with files, dirs of several modes, owners and
/// xattrs, a symlink and hard links; and a small layer on top of it.
fn build_image(dir: &Path) -> Vec<PathBuf> {
    let base = dir.join("layer0");
    let top = dir.join("layer1");
    fs::create_dir_all(base.join("bin")).unwrap();
    fs::copy("/bin/busybox", base.join("bin/busybox")).expect("busybox-static must be installed");
    for applet in ["sh", "ls", "cat"] {
        symlink("busybox", base.join("bin").join(applet)).unwrap();
    }
    write(&base.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    write(&base.join("etc/motd"), "welcome\n");
    write(&base.join("etc/rm-me"), "bye\n");
    write(&base.join("etc/recreated"), "first life\n");
    write(&base.join("etc/was-file"), "a file, later a dir\n");
    write(&base.join("etc/owned"), "chown me\n");
    write(&base.join("opt/tree/a/b/c"), "deep\n");
    write(&base.join("opt/tree/d"), "d\n");
    write(&base.join("var/lib/app/old"), "old state\n");
    write(&base.join("var/lib/app/sub/older"), "older\n");
    write(&base.join("srv/was-dir/inner"), "inner\n");
    write(&base.join("usr/bin/tool"), "#!/bin/sh\necho tool\n");
    mode(&base.join("usr/bin/tool"), 0o755);
    write(&base.join("hl/one"), "linked\n");
    fs::hard_link(base.join("hl/one"), base.join("hl/two")).unwrap();
    fs::create_dir_all(base.join("srv/data")).unwrap();
    fs::create_dir_all(base.join("srv/owned")).unwrap();
    fs::create_dir_all(base.join("srv/xattr-dir")).unwrap();
    fs::create_dir_all(base.join("tmp")).unwrap();
    fs::create_dir_all(base.join("run")).unwrap();
    fs::create_dir_all(base.join("dev")).unwrap();
    fs::create_dir_all(base.join("secret")).unwrap();
    mode(&base.join("secret"), 0o700);
    chown(
        &base.join("secret"),
        Some(Uid::from_raw(1000)),
        Some(Gid::from_raw(1000)),
    )
    .unwrap();
    xattr::set(base.join("srv/xattr-dir"), "user.layer", b"base").unwrap();
    xattr::set(base.join("etc/motd"), "user.note", b"from the image").unwrap();
    symlink("/etc/motd", base.join("etc/motd-link")).unwrap();

    write(&top.join("etc/motd"), "welcome, from layer 1\n");
    write(&top.join("etc/layer1"), "only in layer 1\n");
    [base.clone(), top.clone()]
        .iter()
        .for_each(|l| mode(l, 0o755));
    vec![top, base]
}

/// Everything a container might do to its rootfs, done through the merged mount.
fn make_changes(o: &Overlay) {
    write(&o.p("etc/new.txt"), "created\n");
    write(&o.p("etc/motd"), "modified\n");
    mode(&o.p("usr/bin/tool"), 0o4755);
    mode(&o.p("srv/data"), 0o700);
    mode(&o.p("tmp"), 0o1777);
    chown(
        &o.p("etc/owned"),
        Some(Uid::from_raw(1234)),
        Some(Gid::from_raw(5678)),
    )
    .unwrap();
    chown(
        &o.p("srv/owned"),
        Some(Uid::from_raw(42)),
        Some(Gid::from_raw(43)),
    )
    .unwrap();
    fs::remove_file(o.p("etc/rm-me")).unwrap();
    fs::remove_dir_all(o.p("opt/tree")).unwrap();
    // Replace a directory: its lower content must not come back on the target.
    fs::remove_dir_all(o.p("var/lib/app")).unwrap();
    write(&o.p("var/lib/app/new"), "new state\n");
    // Deleted, then re-created: as another type, and as the same type.
    fs::remove_file(o.p("etc/was-file")).unwrap();
    write(&o.p("etc/was-file/now-a-dir"), "x\n");
    fs::remove_dir_all(o.p("srv/was-dir")).unwrap();
    write(&o.p("srv/was-dir"), "now a file\n");
    fs::remove_file(o.p("etc/recreated")).unwrap();
    write(&o.p("etc/recreated"), "second life\n");
    symlink("/etc/new.txt", o.p("etc/abs-link")).unwrap();
    symlink("../etc/motd", o.p("srv/rel-link")).unwrap();
    lchown(o.p("srv/rel-link"), Some(7), Some(8)).unwrap();
    fs::hard_link(o.p("etc/new.txt"), o.p("etc/new-hard")).unwrap();
    // A link to an image file copies it up; both names end up in the upper dir.
    fs::hard_link(o.p("usr/bin/tool"), o.p("usr/bin/tool-again")).unwrap();
    xattr::set(o.p("etc/new.txt"), "user.x", b"file value").unwrap();
    xattr::set(o.p("srv/xattr-dir"), "user.x", b"dir value").unwrap();
    mkfifo(&o.p("run/fifo"), Mode::from_bits_truncate(0o620)).unwrap();
    mknod(
        &o.p("dev/null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let deep = "d".repeat(60);
    write(
        &o.p(&format!("long/{deep}/{deep}/file-with-a-long-path")),
        "long\n",
    );
    symlink(
        format!("/long/{deep}/{deep}/file-with-a-long-path"),
        o.p("long/link"),
    )
    .unwrap();
    // A precise mtime must survive the trip.
    let t = TimeSpec::new(1_600_000_000, 123_456_789);
    utimensat(
        nix::fcntl::AT_FDCWD,
        &o.p("etc/recreated"),
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

#[test]
fn changes_round_trip_onto_a_second_copy_of_the_image() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = Overlay::mount(
        &tmp.path().join("src"),
        build_image(&tmp.path().join("image-a")),
    );
    make_changes(&src);

    let got: Vec<String> = changes(&src.upper, &src.lowers)
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path.display()))
        .collect();
    let deep = "d".repeat(60);
    let mut want: Vec<String> = [
        "A /dev/null",
        "A /etc/abs-link",
        "C /etc/motd",
        "A /etc/new-hard",
        "A /etc/new.txt",
        "C /etc/owned",
        "C /etc/recreated",
        "C /etc/was-file",
        "A /etc/was-file/now-a-dir",
        "D /etc/rm-me",
        "A /long",
        "A /long/link",
        "D /opt/tree",
        "A /run/fifo",
        "C /srv/data",
        "C /srv/owned",
        "A /srv/rel-link",
        "C /srv/was-dir",
        "C /srv/xattr-dir",
        "C /tmp",
        "C /usr/bin/tool",
        "A /usr/bin/tool-again",
        "C /var/lib/app",
        "A /var/lib/app/new",
        "D /var/lib/app/old",
        "D /var/lib/app/sub",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.push(format!("A /long/{deep}"));
    want.push(format!("A /long/{deep}/{deep}"));
    want.push(format!("A /long/{deep}/{deep}/file-with-a-long-path"));
    want.sort_by(|a, b| Path::new(&a[2..]).cmp(Path::new(&b[2..])));
    assert_eq!(got, want, "changes() of the source container");

    let mut tar = Vec::new();
    let summary = write_diff(&src.upper, &src.lowers, &mut tar).unwrap();
    assert_eq!(
        summary.deleted,
        ["/etc/rm-me", "/opt/tree", "/var/lib/app"]
            .map(PathBuf::from)
            .to_vec(),
        "deleted.files: whiteouts and the replaced directory, each once"
    );
    assert_eq!(summary.bytes, tar.len() as u64);
    assert!(summary.entries >= 25, "entries: {}", summary.entries);
    // deleted.files is podman's JSON array of container paths.
    let json = serde_json::to_string(&summary.deleted).unwrap();
    assert_eq!(json, r#"["/etc/rm-me","/opt/tree","/var/lib/app"]"#);
    let names = tar_names(&tar);
    assert!(
        names.iter().any(|n| n == "srv/data"),
        "a dir whose mode changed is in the tar: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "etc"),
        "a dir only copied up is not: {names:?}"
    );

    // The target's copy of the image: the same layers, as an image store on another host has.
    let image_b = tmp.path().join("image-b");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(tmp.path().join("image-a"))
        .arg(&image_b)
        .status()
        .unwrap();
    assert!(status.success(), "cp -a of the image layers");
    let lowers_b = src
        .lowers
        .iter()
        .map(|l| image_b.join(l.file_name().unwrap()))
        .collect();
    let dst = Overlay::mount(&tmp.path().join("dst"), lowers_b);
    apply_diff(tar.as_slice(), &summary.deleted, &dst.merged, true).unwrap();

    let a = snapshot(&src.merged);
    let b = snapshot(&dst.merged);
    let only_a: Vec<_> = a
        .entries
        .keys()
        .filter(|k| !b.entries.contains_key(*k))
        .collect();
    let only_b: Vec<_> = b
        .entries
        .keys()
        .filter(|k| !a.entries.contains_key(*k))
        .collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "only in source: {only_a:?}\nonly in target: {only_b:?}"
    );
    for (path, ea) in &a.entries {
        assert_eq!(
            ea, &b.entries[path],
            "entry {path} differs between source and target"
        );
    }
    assert_eq!(a.link_groups, b.link_groups, "hard-link groups differ");
    assert!(
        a.link_groups
            .contains(&vec!["etc/new-hard".to_string(), "etc/new.txt".to_string()])
    );
    assert!(
        a.link_groups
            .contains(&vec!["hl/one".to_string(), "hl/two".to_string()])
    );
    // The diff of the target, seen from its own upper dir, is the same diff.
    assert_eq!(
        changes(&dst.upper, &dst.lowers).unwrap(),
        changes(&src.upper, &src.lowers).unwrap()
    );
}

#[test]
fn devices_need_a_trusted_archive() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = Overlay::mount(
        &tmp.path().join("src"),
        build_image(&tmp.path().join("image")),
    );
    mknod(
        &src.p("dev/sda"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(8, 0),
    )
    .unwrap();
    let mut tar = Vec::new();
    let summary = write_diff(&src.upper, &src.lowers, &mut tar).unwrap();
    let target = tmp.path().join("target");
    fs::create_dir_all(target.join("dev")).unwrap();
    let err = apply_diff(tar.as_slice(), &summary.deleted, &target, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`dev/sda`") && err.contains("trusted"),
        "{err}"
    );
    assert!(!target.join("dev/sda").exists());
    apply_diff(tar.as_slice(), &summary.deleted, &target, true).unwrap();
    let m = fs::symlink_metadata(target.join("dev/sda")).unwrap();
    assert_eq!(
        (m.mode() & 0o170000, m.rdev()),
        (0o060000, nix::sys::stat::makedev(8, 0))
    );
}

/// What is compared of one entry of a merged tree.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    content: Option<u64>,
    link: Option<PathBuf>,
    rdev: u64,
    /// Files only: a directory's mtime moves with every entry added inside it.
    mtime: Option<(i64, i64)>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

struct Snapshot {
    entries: BTreeMap<String, Entry>,
    /// Paths sharing an inode, each group sorted; groups sorted.
    link_groups: BTreeSet<Vec<String>>,
}

fn snapshot(root: &Path) -> Snapshot {
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let m = fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let name = rel.display().to_string();
        let kind = match m.mode() & 0o170000 {
            0o040000 => "dir",
            0o100000 => "file",
            0o120000 => "symlink",
            0o010000 => "fifo",
            0o020000 => "char",
            0o060000 => "block",
            _ => "other",
        };
        let mut xattrs = BTreeMap::new();
        if !ft.is_symlink() {
            for x in xattr::list(&path).unwrap() {
                let x = x.to_string_lossy().into_owned();
                if !x.starts_with("trusted.overlay.") && !x.starts_with("user.overlay.") {
                    xattrs.insert(
                        x.clone(),
                        xattr::get(&path, &x).unwrap().unwrap_or_default(),
                    );
                }
            }
        }
        let content = ft.is_file().then(|| {
            let mut h = DefaultHasher::new();
            fs::read(&path).unwrap().hash(&mut h);
            h.finish()
        });
        if !ft.is_dir() && m.nlink() > 1 {
            inodes
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(name.clone());
        }
        entries.insert(
            name,
            Entry {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                content,
                link: ft.is_symlink().then(|| fs::read_link(&path).unwrap()),
                rdev: m.rdev(),
                mtime: ft.is_file().then(|| (m.mtime(), m.mtime_nsec())),
                xattrs,
            },
        );
        if ft.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    let link_groups = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    Snapshot {
        entries,
        link_groups,
    }
}

fn tar_names(tar: &[u8]) -> Vec<String> {
    tar::Archive::new(tar)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

// ---- Crafted archives: nothing may be written outside the root. ----

/// An entry with exactly these name and link bytes: the tar crate's own setters refuse
/// `..` and absolute names, which is what these tests need to write.
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    let slot = &mut h.as_old_mut().name;
    slot.fill(0);
    slot[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(l) = link {
        h.set_link_name_literal(l).unwrap();
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

struct Victim {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

/// A root to apply into and a directory beside it that must stay exactly as it was.
fn victim() -> Victim {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), "untouched").unwrap();
    Victim {
        _tmp: tmp,
        root,
        outside,
    }
}

impl Victim {
    fn apply(&self, build: impl FnOnce(&mut tar::Builder<Vec<u8>>), deleted: &[&str]) -> String {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let tar = b.into_inner().unwrap();
        let deleted: Vec<PathBuf> = deleted.iter().map(PathBuf::from).collect();
        let err = apply_diff(tar.as_slice(), &deleted, &self.root, false)
            .expect_err("a crafted archive must be refused")
            .to_string();
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["victim"],
            "something was written outside the root ({err})"
        );
        assert_eq!(
            fs::read_to_string(self.outside.join("victim")).unwrap(),
            "untouched"
        );
        err
    }

    /// `outside/…` as a path relative to the filesystem root.
    fn outside_from_slash(&self) -> String {
        self.outside
            .display()
            .to_string()
            .trim_start_matches('/')
            .to_string()
    }
}

#[test]
fn entry_with_dotdot_is_refused() {
    require_root();
    let v = victim();
    let err = v.apply(
        |b| raw_entry(b, "../outside/pwned", tar::EntryType::Regular, None, b"x"),
        &[],
    );
    assert!(
        err.contains("`../outside/pwned`") && err.contains(".."),
        "{err}"
    );
}

#[test]
fn absolute_entry_is_refused() {
    require_root();
    let v = victim();
    let name = v.outside.join("pwned").display().to_string();
    let err = v.apply(
        |b| raw_entry(b, &name, tar::EntryType::Regular, None, b"x"),
        &[],
    );
    assert!(
        err.contains(&format!("`{name}`")) && err.contains("absolute"),
        "{err}"
    );
}

#[test]
fn writing_through_a_symlink_is_refused() {
    require_root();
    let v = victim();
    // A symlink to `/` is a legal entry (it resolves in the container's root), but nothing
    // may be written through it.
    let under = format!("rootlink/{}/pwned", v.outside_from_slash());
    let err = v.apply(
        |b| {
            raw_entry(b, "rootlink", tar::EntryType::Symlink, Some("/"), b"");
            raw_entry(b, &under, tar::EntryType::Regular, None, b"x");
        },
        &[],
    );
    assert!(
        err.contains(&format!("`{under}`")) && err.contains("symlink `/rootlink`"),
        "{err}"
    );

    let v = victim();
    let target = v.outside.display().to_string();
    let err = v.apply(
        |b| {
            raw_entry(b, "etc/out", tar::EntryType::Symlink, Some(&target), b"");
            raw_entry(b, "etc/out/pwned", tar::EntryType::Directory, None, b"");
        },
        &[],
    );
    assert!(err.contains("`etc/out/pwned`"), "{err}");
}

#[test]
fn relative_symlink_climbing_out_is_refused() {
    require_root();
    let v = victim();
    let err = v.apply(
        |b| {
            raw_entry(
                b,
                "etc/up",
                tar::EntryType::Symlink,
                Some("../../outside"),
                b"",
            )
        },
        &[],
    );
    assert!(err.contains("`etc/up`") && err.contains("escapes"), "{err}");
}

#[test]
fn hard_link_outside_is_refused() {
    require_root();
    let before = fs::metadata("/etc/passwd").unwrap().nlink();
    let v = victim();
    let err = v.apply(
        |b| {
            raw_entry(
                b,
                "etc/passwd",
                tar::EntryType::Link,
                Some("/etc/passwd"),
                b"",
            )
        },
        &[],
    );
    assert!(
        err.contains("`etc/passwd`") && err.contains("hard link to `/etc/passwd`"),
        "{err}"
    );
    let err = v.apply(
        |b| {
            raw_entry(
                b,
                "etc/p",
                tar::EntryType::Link,
                Some("../../../../../../etc/passwd"),
                b"",
            )
        },
        &[],
    );
    assert!(err.contains("`etc/p`") && err.contains(".."), "{err}");
    // And through a symlink inside the root.
    symlink("/etc", v.root.join("hostetc")).unwrap();
    let err = v.apply(
        |b| {
            raw_entry(
                b,
                "etc/q",
                tar::EntryType::Link,
                Some("hostetc/passwd"),
                b"",
            )
        },
        &[],
    );
    assert!(err.contains("`etc/q`") && err.contains("symlink"), "{err}");
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), before);
    assert!(!v.root.join("etc/passwd").exists() && !v.root.join("etc/q").exists());
}

#[test]
fn deleted_files_cannot_reach_outside() {
    require_root();
    let v = victim();
    let dotdot = format!("/../../../../../../{}/victim", v.outside_from_slash());
    let err = v.apply(|_| {}, &[&dotdot]);
    assert!(
        err.contains(&format!("`{dotdot}`")) && err.contains(".."),
        "{err}"
    );

    // A symlink inside the root to the outside dir: deleting through it is refused.
    symlink(&v.outside, v.root.join("lnk")).unwrap();
    let err = v.apply(|_| {}, &["/lnk/victim"]);
    assert!(
        err.contains("`/lnk/victim`") && err.contains("symlink"),
        "{err}"
    );

    // Deleting the symlink itself removes the link, not what it points to.
    apply_diff(&[][..], &[PathBuf::from("/lnk")], &v.root, false).unwrap();
    assert!(!v.root.join("lnk").exists() && v.outside.join("victim").exists());

    let err = v.apply(|_| {}, &["/"]);
    assert!(err.contains("root itself"), "{err}");
}

#[test]
fn nothing_is_deleted_when_one_deletion_is_bad() {
    require_root();
    let v = victim();
    fs::write(v.root.join("etc/keep"), "x").unwrap();
    let err = v.apply(|_| {}, &["/etc/keep", "/../x"]);
    assert!(err.contains("`/../x`"), "{err}");
    assert!(
        v.root.join("etc/keep").exists(),
        "deletions are all checked before any is done"
    );
}

#[test]
fn change_kinds_order_added_modified_deleted() {
    // ChangeKind orders as podman lists its letters; a sort by path keeps kinds apart.
    assert!(ChangeKind::Added < ChangeKind::Modified && ChangeKind::Modified < ChangeKind::Deleted);
}
