//! "Nothing is lost": every bad input to `restore -i` (a flipped byte in each entry kind, a
//! truncated archive, an untrusted signer, crafted names and rootfs entries that escape, a
//! missing image, an id in use, a CRIU failure) is refused with a clear error, leaves no
//! container, mount, cgroup, process or work file, and leaves the archive as it was. A failed
//! checkpoint leaves its container running and counting. And `-e -` | `-i -` through a pipe.

#[path = "common/ckpt.rs"]
mod ckpt;
mod common;

use ckpt::*;
use common::*;
use ferry::archive::manifest::{Entry, MANIFEST_NAME, Manifest, SignedManifest};
use ferry::identity::Identity;
use sha2::Digest;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

const SEED: &str = "0xbad1";

/// A host with image `bb` and a memhold container `id` counting in it.
fn host_with_container(prefix: &str) -> (Host, String, MemHold) {
    host_with_memory(prefix, "4")
}

/// Runs ferry with `args` on the given stdin and stdout; whether it succeeded, and its stderr.
fn run_with(host: &Host, args: &[&str], stdin: Stdio, stdout: Stdio) -> (bool, String) {
    let out = host
        .command(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A container created and started from a bundle (not an image) running memhold with `mib`
/// MiB: the bundle, the container's id and its memhold.
fn bundle_container(host: &Host, mib: &str, prefix: &str) -> (Bundle, String, MemHold) {
    let mut bundle = Bundle::new(&host.ferry, &["/bin/memhold", mib, SEED, "/tmp"]);
    bundle.with_helper("memhold");
    bundle.save();
    let id = host.id(prefix);
    host.run_quiet(&["create", "--bundle", bundle.path_str(), &id])
        .ok();
    host.run(&["start", &id]).ok();
    let mem = MemHold::at(bundle.host_path("/tmp"));
    (bundle, id, mem)
}

/// [`host_with_container`] holding `mib` MiB.
fn host_with_memory(prefix: &str, mib: &str) -> (Host, String, MemHold) {
    let host = Host::new();
    host.import_image("bb");
    let id = host.id(prefix);
    host.run_image("bb", &id, &["/bin/memhold", mib, SEED, "/tmp"]);
    let mem = MemHold::at(host.rootfs(&id).join("tmp"));
    mem.wait_count_above(2);
    (host, id, mem)
}

/// `checkpoint -e` with `--leave-running`, into a file of the test's scratch.
fn export(host: &Host, id: &str, compress: &str, rootfs_changes: bool) -> PathBuf {
    if rootfs_changes {
        host.run(&[
            "exec",
            id,
            "/bin/sh",
            "-c",
            "echo changed > /etc/hostname; rm /etc/group; echo new > /root/new",
        ])
        .ok();
    }
    let archive = host.ferry.scratch().join(format!("{id}.tar"));
    host.run(&[
        "checkpoint",
        id,
        "-e",
        archive.to_str().unwrap(),
        "--compress",
        compress,
        "--leave-running",
    ])
    .ok();
    archive
}

/// Restores `archive` under a fresh name and expects a refusal whose message contains every
/// one of `needles`; checks nothing is left and the archive is unchanged. Returns stderr.
fn refused(host: &Host, archive: &Path, extra: &[&str], needles: &[&str]) -> String {
    refused_env(host, archive, &[], extra, needles)
}

/// [`refused`] with extra environment variables for ferry.
fn refused_env(
    host: &Host,
    archive: &Path,
    env: &[(&str, &str)],
    extra: &[&str],
    needles: &[&str],
) -> String {
    let before = file_digest(archive);
    let procs = tagged_processes(&host.ferry.tag);
    let name = host.id("refused");
    let mut args = vec![
        "restore",
        "-i",
        archive.to_str().unwrap(),
        "--name",
        &name,
        "-d",
    ];
    args.extend_from_slice(extra);
    let out = host.run_quiet_env(env, &args);
    assert!(
        !out.success(),
        "restore of {archive:?} should have been refused ({needles:?}) but succeeded"
    );
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "the refusal should mention {n:?}; it said:\n{}",
            out.stderr
        );
    }
    assert_restore_left_nothing(host, &name, &procs);
    assert_eq!(
        file_digest(archive),
        before,
        "the failed restore changed {archive:?}"
    );
    out.stderr
}

/// Where each entry's data starts in an uncompressed archive, and its size.
fn entry_offsets(archive: &Path) -> Vec<(String, u64, u64)> {
    let mut ar = tar::Archive::new(fs::File::open(archive).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.raw_file_position(),
                e.size(),
            )
        })
        .collect()
}

/// A tar header for a regular file whose name is written byte for byte (the tar crate's
/// own setters refuse `..`, which is the point of these archives).
fn raw_header(name: &str, kind: tar::EntryType, size: u64, link: Option<&str>) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        g.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            g.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_mode(0o644);
    h.set_size(size);
    h.set_entry_type(kind);
    h.set_mtime(0);
    h.set_cksum();
    h
}

fn append_raw(
    out: &mut Vec<u8>,
    name: &str,
    kind: tar::EntryType,
    data: &[u8],
    link: Option<&str>,
) {
    let h = raw_header(name, kind, data.len() as u64, link);
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// An archive holding `entries` (names written raw), listed in a manifest built from
/// `template` and signed by `storage`'s own identity: valid in every way a signature checks.
fn signed_archive(storage: &Path, template: &Manifest, entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut m = template.clone();
    // The pages parts are listed by their image's index (archive::pages), which is listed.
    m.entries = entries
        .iter()
        .filter(|(name, _)| !(name.starts_with("checkpoint/pages-") && name.contains(".img.part")))
        .map(|(name, data)| Entry {
            name: name.clone(),
            sha256: hex::encode(sha2::Sha256::digest(data)),
            size: data.len() as u64,
        })
        .collect();
    let identity = Identity::load_or_create(storage).unwrap();
    let signed = serde_json::to_vec(&SignedManifest::sign(&m, &identity)).unwrap();
    let mut out = vec![];
    for (name, data) in entries {
        append_raw(&mut out, name, tar::EntryType::Regular, data, None);
    }
    append_raw(
        &mut out,
        MANIFEST_NAME,
        tar::EntryType::Regular,
        &signed,
        None,
    );
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// A rootfs-diff.tar of raw entries: (name, kind, data, link target).
fn diff_tar(items: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut out = vec![];
    for (name, kind, data, link) in items {
        append_raw(&mut out, name, *kind, data, *link);
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

fn write_archive(host: &Host, name: &str, bytes: &[u8]) -> PathBuf {
    let p = host.ferry.scratch().join(name);
    fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_flipped_byte_in_each_entry_kind_is_refused_naming_the_entry() {
    let (host, id, mem) = host_with_container("flip");
    let archive = export(&host, &id, "none", true);
    let offsets = entry_offsets(&archive);
    let names: Vec<&str> = offsets.iter().map(|(n, _, _)| n.as_str()).collect();
    // Memory comes in parts (pages-<id>.img.part<N>) written while CRIU dumps.
    let first_of = |prefix: &str| {
        names
            .iter()
            .find(|n| n.starts_with(prefix))
            .unwrap_or_else(|| panic!("the archive has no {prefix}*; it holds {names:?}"))
            .to_string()
    };
    let mut kinds: Vec<String> = vec![
        first_of("checkpoint/pages-"),
        names
            .iter()
            .find(|n| n.starts_with("checkpoint/pages-") && n.ends_with(".img.index"))
            .unwrap_or_else(|| panic!("the archive has no pages index; it holds {names:?}"))
            .to_string(),
        first_of("checkpoint/pagemap-"),
        "checkpoint/inventory.img".into(),
        "checkpoint/descriptors.json".into(),
    ];
    for top in [
        "spec.dump",
        "config.dump",
        "rootfs-diff.tar",
        "deleted.files",
        "devshm-checkpoint.tar",
        "stats-dump",
        MANIFEST_NAME,
    ] {
        kinds.push(top.into());
    }
    for kind in &kinds {
        let (_, pos, size) = offsets
            .iter()
            .find(|(n, _, _)| n == kind)
            .unwrap_or_else(|| panic!("the archive has no {kind}; it holds {names:?}"));
        assert!(*size > 0, "{kind} is empty");
        let mut bytes = fs::read(&archive).unwrap();
        bytes[(*pos + *size / 2) as usize] ^= 0x20;
        let bad = write_archive(&host, &format!("flip-{}", kind.replace('/', "_")), &bytes);
        refused(&host, &bad, &[], &[kind.as_str()]);
    }
    // The source kept running through all of it.
    let (_, c) = mem.count().unwrap();
    mem.wait_count_above(c);
}

#[test]
fn a_truncated_archive_is_refused_at_every_cut() {
    let (host, id, _) = host_with_container("trunc");
    for compress in ["none", "zstd"] {
        let archive = export(&host, &id, compress, false);
        let bytes = fs::read(&archive).unwrap();
        let len = bytes.len();
        for cut in [
            0,
            100,
            1536,
            len / 3,
            len / 2,
            len - 2000,
            len - 600,
            len - 1,
        ] {
            let bad = write_archive(&host, &format!("cut-{compress}-{cut}"), &bytes[..cut]);
            let err = refused(&host, &bad, &[], &[]);
            let empty = cut == 0 && err.contains("the archive is empty");
            assert!(
                empty
                    || err.contains("truncated")
                    || err.contains("damaged")
                    || err.contains("not a ferry"),
                "a {compress} archive cut at {cut} of {len} bytes: the error should say it is \
                 truncated or damaged:\n{err}"
            );
        }
    }
}

/// `checkpoint -e - | restore -i -` into a host that does not trust this one, or lacks the
/// image: the restore refuses at what the stream names at its start, the checkpoint sees
/// its reader go and fails, and the container runs on (it used to be released, and the
/// archive refused once it had all come: the container was gone from both). Trusted and
/// with the image, the same pipe moves it.
#[test]
fn a_pipe_to_a_host_that_cannot_take_it_keeps_the_container() {
    let a = Host::new();
    let rootfs = a.ferry.scratch().join("image-rootfs");
    image_rootfs(&rootfs);
    a.import_dir("bb", &rootfs);
    let id = a.id("piped-untrusted");
    // 8 MiB: more than a pipe holds, so the writer is still writing when the reader refuses.
    a.run_image("bb", &id, &["/bin/memhold", "8", SEED, "/tmp"]);
    let mem = MemHold::at(a.rootfs(&id).join("tmp"));
    let (runid, before) = mem.wait_count_above(2);
    let b = Host::new();
    b.import_dir("bb", &rootfs);
    let pipe = |b: &Host| {
        let mut ck = a
            .command(&["checkpoint", &id, "-e", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = ck.stdout.take().unwrap();
        let rs = b
            .command(&["restore", "-i", "-", "-d"])
            .stdin(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let ck = ck.wait_with_output().unwrap();
        (ck, rs)
    };
    let (ck, rs) = pipe(&b);
    let (ck_err, rs_err) = (
        String::from_utf8_lossy(&ck.stderr),
        String::from_utf8_lossy(&rs.stderr),
    );
    assert!(
        !rs.status.success() && rs_err.contains("does not trust"),
        "{rs_err}"
    );
    assert!(
        !ck.status.success(),
        "the checkpoint succeeded into a refusing reader"
    );
    assert!(ck_err.contains("runs on as before"), "{ck_err}");
    assert_eq!(a.ferry.status(&id).as_deref(), Some("running"));
    let (again, after) = mem.wait_count_above(before);
    assert_eq!(
        again, runid,
        "the container was restarted, not left running"
    );
    assert!(after > before);
    assert!(b.ids().is_empty(), "the refusing host has {:?}", b.ids());

    // A host that trusts this one but lacks the image says so at the start, the same way.
    let c = Host::new();
    c.run(&["trust", "add", &a.fingerprint(), "--name", "host-a"])
        .ok();
    let (ck, rs) = pipe(&c);
    let rs_err = String::from_utf8_lossy(&rs.stderr);
    assert!(
        !rs.status.success() && rs_err.contains("needs image bb"),
        "{rs_err}"
    );
    assert!(
        !ck.status.success(),
        "the checkpoint succeeded into a refusing reader"
    );
    assert_eq!(a.ferry.status(&id).as_deref(), Some("running"));
    assert_eq!(mem.wait_count_above(after).0, runid);

    b.run(&["trust", "add", &a.fingerprint(), "--name", "host-a"])
        .ok();
    let (ck, rs) = pipe(&b);
    assert!(
        ck.status.success(),
        "{}",
        String::from_utf8_lossy(&ck.stderr)
    );
    assert!(
        rs.status.success(),
        "{}",
        String::from_utf8_lossy(&rs.stderr)
    );
    assert!(a.ferry.status(&id).is_none(), "the source was not released");
    assert_eq!(b.ferry.status(&id).as_deref(), Some("running"));
    b.run(&["delete", "--force", &id]).ok();
}

#[test]
fn an_untrusted_signer_is_refused_then_accepted_after_trust_add_or_insecure() {
    let a = Host::new();
    let rootfs = a.ferry.scratch().join("image-rootfs");
    image_rootfs(&rootfs);
    let digest = a.import_dir("bb", &rootfs);
    let id = a.id("untrusted");
    a.run_image("bb", &id, &["/bin/memhold", "4", SEED, "/tmp"]);
    MemHold::at(a.rootfs(&id).join("tmp")).wait_count_above(2);
    let archive = a.ferry.scratch().join("a.tar");
    a.run(&["checkpoint", &id, "-e", archive.to_str().unwrap()])
        .ok();

    let b = Host::new();
    assert_eq!(
        b.import_dir("bb", &rootfs),
        digest,
        "the same rootfs gave another digest"
    );
    let fp = a.fingerprint();
    assert_ne!(fp, b.fingerprint(), "two storages share an identity");
    refused(&b, &archive, &[], &[&fp, "ferry trust add"]);

    b.run(&["trust", "add", &fp, "--name", "host-a"]).ok();
    let restored = b.id("trusted");
    b.run_quiet(&[
        "restore",
        "-i",
        archive.to_str().unwrap(),
        "--name",
        &restored,
        "-d",
    ])
    .ok();
    MemHold::at(b.rootfs(&restored).join("tmp")).wait_count_above(3);
    b.run(&["delete", "--force", &restored]).ok();
    assert_deleted(&b, &restored);

    b.run(&["trust", "rm", &fp]).ok();
    refused(&b, &archive, &[], &[&fp]);
    let insecure = b.id("insecure");
    b.run_quiet(&[
        "restore",
        "-i",
        archive.to_str().unwrap(),
        "--name",
        &insecure,
        "-d",
        "--insecure-allow-untrusted",
    ])
    .ok();
    MemHold::at(b.rootfs(&insecure).join("tmp")).wait_count_above(3);
    b.run(&["delete", "--force", &insecure]).ok();
    assert_deleted(&b, &insecure);
    assert_cgroups_gone(&restored);
    assert_cgroups_gone(&insecure);
}

#[test]
fn crafted_entry_names_and_escaping_rootfs_entries_are_refused() {
    let (host, id, _) = host_with_container("craft");
    let archive = export(&host, &id, "none", true);
    let (entries, template) = read_entries(&archive);
    let storage = host.storage.clone();
    // A place outside every rootfs that a broken unpacker would write to.
    let outside = host.ferry.scratch().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let decoy = outside.join("decoy");
    fs::write(&decoy, "decoy\n").unwrap();
    let outside_s = outside.to_str().unwrap().to_string();
    let passwd_before = fs::read("/etc/passwd").unwrap();
    let passwd_links = std::os::unix::fs::MetadataExt::nlink(&fs::metadata("/etc/passwd").unwrap());

    // Archive entry names that leave the unpack directory.
    let escape_abs = format!("{outside_s}/abs-entry");
    for bad_name in ["../x", "checkpoint/../../x", escape_abs.as_str()] {
        let mut e = entries.clone();
        e.insert(0, (bad_name.to_string(), b"owned\n".to_vec()));
        let bad = write_archive(&host, "name.tar", &signed_archive(&storage, &template, &e));
        refused(&host, &bad, &[], &[bad_name]);
    }

    // rootfs-diff.tar entries that leave the rootfs.
    let abs_target = format!("{outside_s}/abs-file");
    let dotdot = "../../../../../../../../../..".to_string() + &outside_s + "/dotdot-file";
    let link_target = outside_s.clone();
    let decoy_s = decoy.to_str().unwrap().to_string();
    type Item<'a> = (&'a str, tar::EntryType, &'a [u8], Option<&'a str>);
    let cases: Vec<(&str, Vec<Item>)> = vec![
        (
            "dotdot",
            vec![(dotdot.as_str(), tar::EntryType::Regular, b"owned\n", None)],
        ),
        (
            "absolute",
            vec![(
                abs_target.as_str(),
                tar::EntryType::Regular,
                b"owned\n",
                None,
            )],
        ),
        (
            "symlink",
            vec![
                (
                    "root/escape",
                    tar::EntryType::Symlink,
                    b"",
                    Some(link_target.as_str()),
                ),
                (
                    "root/escape/through-link",
                    tar::EntryType::Regular,
                    b"owned\n",
                    None,
                ),
            ],
        ),
        (
            "hardlink-passwd",
            vec![("root/pw", tar::EntryType::Link, b"", Some("/etc/passwd"))],
        ),
        (
            "hardlink-outside",
            vec![
                (
                    "root/decoy",
                    tar::EntryType::Link,
                    b"",
                    Some(decoy_s.as_str()),
                ),
                ("root/decoy", tar::EntryType::Regular, b"owned\n", None),
            ],
        ),
    ];
    // The same crafted tars as the rootfs changes and as the container's /dev/shm files.
    let targets = ["rootfs-diff.tar", "devshm-checkpoint.tar"];
    assert!(
        entries.iter().any(|(n, _)| n == targets[1]),
        "the archive has no {}",
        targets[1]
    );
    for (target, (what, items)) in targets
        .iter()
        .flat_map(|t| cases.iter().map(move |c| (*t, c)))
    {
        let mut e = entries.clone();
        for (name, data) in e.iter_mut() {
            if name == target {
                *data = diff_tar(items);
            }
        }
        let bad = write_archive(
            &host,
            &format!("{what}.tar"),
            &signed_archive(&storage, &template, &e),
        );
        let err = refused(&host, &bad, &[], &[]);
        assert!(
            err.contains("rootfs") || err.contains("escape") || err.contains("outside"),
            "{what} in {target}: the refusal should say the entry escapes:\n{err}"
        );
        let mut left: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["decoy".to_string()],
            "{what} in {target}: written outside the rootfs"
        );
        assert_eq!(
            fs::read_to_string(&decoy).unwrap(),
            "decoy\n",
            "{what} in {target}: decoy overwritten"
        );
    }
    assert_eq!(
        fs::read("/etc/passwd").unwrap(),
        passwd_before,
        "the host's /etc/passwd changed"
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&fs::metadata("/etc/passwd").unwrap()),
        passwd_links,
        "someone hard-linked the host's /etc/passwd"
    );
}

#[test]
fn a_missing_image_is_named_with_its_digest() {
    let a = Host::new();
    let digest = a.import_image("bb");
    let id = a.id("noimg");
    a.run_image("bb", &id, &["/bin/memhold", "1", SEED, "/tmp"]);
    MemHold::at(a.rootfs(&id).join("tmp")).wait_count_above(1);
    let archive = a.ferry.scratch().join("a.tar");
    a.run(&["checkpoint", &id, "-e", archive.to_str().unwrap()])
        .ok();
    let b = Host::new();
    b.run(&["trust", "add", &a.fingerprint()]).ok();
    let err = refused(&b, &archive, &[], &["bb", &digest, "import"]);
    assert!(err.contains("ferry image import"), "{err}");
}

#[test]
fn an_id_in_use_is_refused_and_the_running_one_is_untouched() {
    let (host, id, mem) = host_with_container("inuse");
    let archive = export(&host, &id, "zstd", false);
    let before = file_digest(&archive);
    let out = host.run_quiet(&["restore", "-i", archive.to_str().unwrap(), "-d"]);
    assert!(!out.success(), "restore over the running {id} succeeded");
    assert!(
        out.stderr.contains(&id),
        "the refusal should name {id}: {}",
        out.stderr
    );
    assert_eq!(file_digest(&archive), before);
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    let (_, c) = mem.count().unwrap();
    mem.wait_count_above(c + 2);
    assert!(
        host.rootfs(&id).join("bin/memhold").exists(),
        "the running one's rootfs is gone"
    );
    let work: Vec<_> = fs::read_dir(host.storage.join("work"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(work.is_empty(), "work files left: {work:?}");
}

/// What is not an archive at all (a text file, an empty file, a compressed text, a directory,
/// the same through a pipe) is named for what it is, its bytes are not quoted back, and
/// nothing is left; `inspect` says the same.
#[test]
fn what_is_not_an_archive_is_named_for_what_it_is() {
    let host = Host::new();
    let text = "# secret-looking notes, not an archive\n".repeat(50);
    let notes = write_archive(&host, "notes.txt", text.as_bytes());
    let empty = write_archive(&host, "empty.tar", b"");
    let zst = write_archive(
        &host,
        "notes.txt.zst",
        &zstd::encode_all(text.as_bytes(), 1).unwrap(),
    );
    for (file, says) in [
        (
            &notes,
            "not a tar header, nor the start of zstd or gzip data",
        ),
        (&empty, "the archive is empty"),
        (&zst, "inside its zstd compression"),
    ] {
        let err = refused(&host, file, &[], &[says]);
        assert!(
            !err.contains("secret-looking"),
            "its bytes are quoted:\n{err}"
        );
        let out = host.run_quiet(&["inspect", file.to_str().unwrap()]);
        assert!(!out.success(), "inspect of {file:?} succeeded");
        assert!(
            out.stderr.contains(says),
            "inspect of {file:?}:\n{}",
            out.stderr
        );
    }

    let dir = host.ferry.scratch().join("images-dir");
    fs::create_dir_all(&dir).unwrap();
    let procs = tagged_processes(&host.ferry.tag);
    let name = host.id("dir");
    let out = host.run_quiet(&["restore", "-i", dir.to_str().unwrap(), "--name", &name]);
    assert!(!out.success(), "restore -i of a directory succeeded");
    for n in ["is a directory", "--image-path"] {
        assert!(
            out.stderr.contains(n),
            "restore -i DIR should say {n:?}:\n{}",
            out.stderr
        );
    }
    assert_restore_left_nothing(&host, &name, &procs);
    let out = host.run_quiet(&["inspect", dir.to_str().unwrap()]);
    assert!(
        !out.success() && out.stderr.contains("is a directory"),
        "{}",
        out.stderr
    );

    // A terminal on standard input is said at once instead of waited on.
    let pty = nix::pty::openpty(None, None).unwrap();
    let args = ["restore", "-i", "-", "--name", &name, "-d"];
    let (ok, err) = run_with(&host, &args, pty.slave.into(), Stdio::null());
    assert!(
        !ok && err.contains("standard input is a terminal"),
        "restore -i - from a terminal: {err}"
    );
    drop(pty.master);
    assert_restore_left_nothing(&host, &name, &procs);

    // Through a pipe: read before anything is staged, and said the same way.
    for (bytes, says) in [
        (text.as_bytes(), "not a tar header"),
        (&b""[..], "the archive is empty"),
    ] {
        let mut rs = host
            .command(&["restore", "-i", "-", "--name", &name, "-d"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = rs.stdin.take().unwrap();
        // ferry may have refused it and closed the pipe before all of it was written.
        let _ = std::io::Write::write_all(&mut stdin, bytes);
        drop(stdin);
        let out = rs.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "restore -i - of {says:?} succeeded");
        assert!(
            err.contains(says),
            "restore -i - should say {says:?}:\n{err}"
        );
        assert!(
            !err.contains("secret-looking"),
            "its bytes are quoted:\n{err}"
        );
        assert_restore_left_nothing(&host, &name, &procs);
    }
}

/// A runc-style checkpoint of a container made from an image would end it and leave images
/// with no rootfs changes and no bundle to restore into: refused before anything is frozen,
/// the container runs on; with --leave-running it is allowed.
#[test]
fn a_runc_style_checkpoint_of_an_image_container_is_refused_unless_it_stays() {
    let (host, id, mem) = host_with_container("runcimg");
    let images = host.ferry.scratch().join("runc-images");
    let out = host.run_quiet(&["checkpoint", "--image-path", images.to_str().unwrap(), &id]);
    assert!(!out.success(), "the runc-style checkpoint succeeded");
    for n in ["made from the image bb", "-e FILE", "--leave-running"] {
        assert!(
            out.stderr.contains(n),
            "it should say {n:?}:\n{}",
            out.stderr
        );
    }
    assert!(!images.join("inventory.img").exists(), "CRIU ran");
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    let (_, before) = mem.wait_count_above(0);
    mem.wait_count_above(before);

    host.run_quiet(&[
        "checkpoint",
        "--image-path",
        images.to_str().unwrap(),
        "--leave-running",
        &id,
    ])
    .ok();
    assert!(images.join("inventory.img").exists());
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
}

/// An archive path inside what the container's release removes (its bundle and rootfs in
/// the storage, its state directory) is refused before the freeze: the archive would have
/// been deleted with the source it replaced, and `checkpoint -e` said nothing of it. So is
/// /dev/null, unless the container stays.
#[test]
fn an_archive_inside_the_containers_own_files_is_refused() {
    let (host, id, mem) = host_with_container("ownfiles");
    let rootfs = host.rootfs(&id);
    let bundle = rootfs.parent().unwrap().to_path_buf();
    let state = host.ferry.root().join(&id);
    for (archive, says) in [
        (bundle.join("ck.tar"), "bundle and root filesystem"),
        (rootfs.join("tmp/ck.tar"), "bundle and root filesystem"),
        (state.join("ck.tar"), "state directory"),
    ] {
        let out = host.run_quiet(&["checkpoint", &id, "-e", archive.to_str().unwrap()]);
        assert!(!out.success(), "checkpoint -e {archive:?} succeeded");
        assert!(
            out.stderr.contains(says) && out.stderr.contains("somewhere else"),
            "{archive:?}:\n{}",
            out.stderr
        );
        assert!(!archive.exists(), "{archive:?} was written");
        assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    }
    // /dev/null takes the archive and keeps nothing: refused unless the container stays.
    let out = host.run_quiet(&["checkpoint", &id, "-e", "/dev/null"]);
    assert!(
        !out.success() && out.stderr.contains("discards what is written to it"),
        "checkpoint -e /dev/null: {out:?}"
    );
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    host.run_quiet(&["checkpoint", &id, "-e", "/dev/null", "--leave-running"])
        .ok();
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    // The same as `-e -` with standard output on /dev/null.
    let args = ["checkpoint", &id, "-e", "-"];
    let (ok, err) = run_with(&host, &args, Stdio::null(), Stdio::null());
    assert!(
        !ok && err.contains("standard output discards"),
        "checkpoint -e - >/dev/null: {err}"
    );
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    // And onto a terminal, where it would scroll past as binary: refused even if it stays.
    let pty = nix::pty::openpty(None, None).unwrap();
    let args = ["checkpoint", &id, "-e", "-", "--leave-running"];
    let (ok, err) = run_with(&host, &args, Stdio::null(), pty.slave.into());
    assert!(
        !ok && err.contains("standard output is a terminal"),
        "checkpoint -e - onto a terminal: {err}"
    );
    drop(pty.master);
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    let (_, before) = mem.wait_count_above(0);
    mem.wait_count_above(before);
}

/// A container made from a bundle, not an image: `restore -i` could not rebuild it, so an
/// archive that releases it (`-e --ignore-rootfs`) is refused before the freeze; with
/// --leave-running it is made and the container runs on.
#[test]
fn an_archive_of_a_bundle_container_is_refused_unless_it_stays() {
    let host = Host::new();
    let (_bundle, id, mem) = bundle_container(&host, "4", "bundle");
    let (_, before) = mem.wait_count_above(2);
    let archive = host.ferry.scratch().join("bundle.tar");
    let a = archive.to_str().unwrap();
    let out = host.run_quiet(&["checkpoint", &id, "-e", a, "--ignore-rootfs"]);
    assert!(
        !out.success(),
        "the archive of a bundle container released it"
    );
    for n in [
        "not made from an image",
        "--image-path DIR",
        "--leave-running",
    ] {
        assert!(
            out.stderr.contains(n),
            "it should say {n:?}:\n{}",
            out.stderr
        );
    }
    assert!(!archive.exists());
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    mem.wait_count_above(before);
    host.run_quiet(&[
        "checkpoint",
        &id,
        "-e",
        a,
        "--ignore-rootfs",
        "--leave-running",
    ])
    .ok();
    assert!(archive.exists());
    assert_eq!(host.ferry.status(&id).as_deref(), Some("running"));
    host.run_quiet(&["delete", "--force", &id]).ok();
}

/// A runc-style restore where there is no bundle says what it needs, and that a container
/// made from an image moves as an archive.
#[test]
fn a_runc_style_restore_without_a_bundle_says_what_it_needs() {
    let host = Host::new();
    let cwd = host.ferry.scratch().join("no-bundle");
    fs::create_dir_all(&cwd).unwrap();
    let images = cwd.join("checkpoint");
    let id = host.id("nobundle");
    let out = host.ferry.run_in(
        &cwd,
        &["restore", "--image-path", images.to_str().unwrap(), &id],
    );
    assert!(!out.success(), "restore without a bundle succeeded");
    for n in [
        "--bundle",
        "has no config.json",
        "-e FILE",
        "restore -i FILE",
    ] {
        assert!(
            out.stderr.contains(n),
            "it should say {n:?}:\n{}",
            out.stderr
        );
    }
    assert!(!host.ferry.root().join(&id).exists());
}

#[test]
fn a_criu_failure_quotes_its_log_and_leaves_nothing() {
    let (host, id, _) = host_with_container("criufail");
    let archive = export(&host, &id, "none", false);
    let (mut entries, template) = read_entries(&archive);
    // Validly signed, but CRIU cannot make sense of its process tree.
    for (name, data) in entries.iter_mut() {
        if name == "checkpoint/pstree.img" || name == "checkpoint/core-1.img" {
            for b in data.iter_mut().skip(8) {
                *b ^= 0x5a;
            }
        }
    }
    let bad = write_archive(
        &host,
        "criu.tar",
        &signed_archive(&host.storage, &template, &entries),
    );
    let err = refused(&host, &bad, &[], &["criu", "restore.log"]);
    assert!(
        err.contains("Error"),
        "CRIU's Error lines should be quoted:\n{err}"
    );
    // The same with the in-memory stage too small (it spills to disk first): still nothing
    // left, neither the tmpfs nor the disk copy.
    let err = refused_env(
        &host,
        &bad,
        &[("FERRY_STAGE_TMPFS_BYTES", "64K")],
        &["--debug", "--verify-first"],
        &["criu", "restore.log"],
    );
    assert!(
        err.contains("spills to disk"),
        "the 64 KiB stage should have spilled:\n{err}"
    );
}

/// A flipped byte in the page images found after the stage has spilled to disk: refused,
/// nothing left (no tmpfs, no disk copy).
#[test]
fn a_flipped_byte_after_a_spill_is_refused_and_leaves_nothing() {
    let (host, id, _) = host_with_container("flipspill");
    let archive = export(&host, &id, "none", false);
    // A part of the memory (archive::pages) that comes after more than the 1 MiB stage holds.
    let (part, pos, size) = entry_offsets(&archive)
        .into_iter()
        .find(|(n, _, _)| n.starts_with("checkpoint/pages-") && n.ends_with(".part3"))
        .expect("no pages-*.img.part3");
    assert!(size > 0, "{part} is empty");
    let bad = flipped(&host, &archive, pos + size / 2, "flipspill.tar");
    let err = refused_env(
        &host,
        &bad,
        &[("FERRY_STAGE_TMPFS_BYTES", "1M")],
        &["--debug", "--verify-first"],
        &[part.as_str(), "altered"],
    );
    assert!(
        err.contains("spills to disk"),
        "the 1 MiB stage should have spilled:\n{err}"
    );
}

/// A flipped byte in the last part of a 64 MiB memory, with the pages fed to CRIU as they
/// are verified (archive::feed): CRIU is already restoring and waits at that part, which
/// is refused; the restore fails naming the part, and nothing restored ever ran or is left.
#[test]
fn a_flipped_byte_in_the_last_page_part_stops_a_fed_restore() {
    let (host, id, _) = host_with_memory("fedflip", "64");
    let archive = export(&host, &id, "none", false);
    let (part, pos, size) = entry_offsets(&archive)
        .into_iter()
        .rfind(|(n, _, _)| n.starts_with("checkpoint/pages-") && n.contains(".img.part"))
        .expect("no pages parts");
    assert!(
        part.ends_with(".part63") || part.ends_with(".part64"),
        "{part}"
    );
    let bad = flipped(&host, &archive, pos + size / 2, "fedflip.tar");
    let err = refused(&host, &bad, &["--debug"], &[part.as_str(), "altered"]);
    assert_fed_where_the_kernel_can(&host, &err);
}

/// A flipped byte in a part of the heap, which CRIU leaves to ferry to copy straight into
/// the task (archive::uffd): the part is refused before a byte of it is copied, CRIU is let
/// on to its pre-resume, where the tasks are killed still stopped, and nothing is left.
#[test]
fn a_flipped_byte_in_a_part_copied_straight_in_stops_the_restore() {
    let (host, id, _) = host_with_memory("uffdflip", "64");
    let archive = export(&host, &id, "none", false);
    let parts: Vec<_> = entry_offsets(&archive)
        .into_iter()
        .filter(|(n, _, _)| n.starts_with("checkpoint/pages-") && n.contains(".img.part"))
        .collect();
    let (part, pos, size) = parts[parts.len() / 2].clone();
    let bad = flipped(&host, &archive, pos + size / 2, "uffdflip.tar");
    let err = refused(&host, &bad, &["--debug"], &[part.as_str(), "altered"]);
    if assert_fed_where_the_kernel_can(&host, &err) && ferry::archive::uffd::supported() {
        assert!(
            err.contains("handed over a task's userfaultfd"),
            "the heap should have been copied in:\n{err}"
        );
    }
}

/// A copy of `archive` named `name` with the byte at `at` flipped.
fn flipped(host: &Host, archive: &Path, at: u64, name: &str) -> PathBuf {
    let mut bytes = fs::read(archive).unwrap();
    bytes[at as usize] ^= 0x20;
    write_archive(host, name, &bytes)
}

/// A refused restore's `--debug` log shows its pages were fed to CRIU (archive::feed), on a
/// kernel that can gate them; returns whether it can.
fn assert_fed_where_the_kernel_can(host: &Host, err: &str) -> bool {
    let fed = ferry::archive::gate::supported(&host.storage);
    if fed {
        assert!(
            err.contains("fed to CRIU"),
            "the pages should have been fed while CRIU restored:\n{err}"
        );
    }
    fed
}

/// The same for a zstd archive, whose tail is read first through the mark at its end
/// (archive::frames::TailMark). A mark moved to another frame is refused, naming it; a mark
/// that is no mark at all leaves the archive to be read in order, and it restores.
#[test]
fn a_zstd_archive_fed_while_restoring_refuses_a_flipped_page_byte_and_a_moved_mark() {
    let (host, id, _) = host_with_memory("zfeed", "64");
    let archive = export(&host, &id, "zstd", false);
    let bytes = fs::read(&archive).unwrap();
    let plain = host.ferry.scratch().join("zfeed-plain.tar");
    fs::write(&plain, zstd::decode_all(bytes.as_slice()).unwrap()).unwrap();
    let plain_bytes = fs::read(&plain).unwrap();
    let (part, pos, size) = entry_offsets(&plain)
        .into_iter()
        .rfind(|(n, _, s)| {
            n.starts_with("checkpoint/pages-") && n.contains(".img.part") && *s == 1 << 20
        })
        .expect("no whole pages parts");
    // memhold's memory is pseudo-random, so its parts are frames stored raw: find the
    // part's bytes.
    let at = (pos + size / 2) as usize;
    let needle = &plain_bytes[at..at + 64];
    let found = bytes
        .windows(64)
        .position(|w| w == needle)
        .expect("the part's bytes are not stored raw");
    let bad = flipped(&host, &archive, found as u64, "zfeed-flip.tar.zst");
    let err = refused(&host, &bad, &["--debug"], &[part.as_str(), "altered"]);
    if assert_fed_where_the_kernel_can(&host, &err) {
        // The mark's frame offset (bytes 16..24 of the last 32) moved to the first frame.
        let mut moved = bytes.clone();
        let n = moved.len();
        moved[n - 16..n - 8].copy_from_slice(&0u64.to_le_bytes());
        let bad = write_archive(&host, "zfeed-moved.tar.zst", &moved);
        refused(&host, &bad, &[], &["tail mark", "--verify-first"]);
    }
    // Not a mark at all: read in order, verified first, and restored.
    let mut unmarked = bytes.clone();
    let n = unmarked.len();
    unmarked[n - 24] ^= 0xff;
    let good = write_archive(&host, "zfeed-unmarked.tar.zst", &unmarked);
    let stats = host.ferry.scratch().join("zfeed-unmarked.json");
    let copy = host.id("zfeed-copy");
    host.run_quiet(&[
        "restore",
        "-i",
        good.to_str().unwrap(),
        "--name",
        &copy,
        "-d",
        "--stats-file",
        stats.to_str().unwrap(),
    ])
    .ok();
    let st = read_stats(&stats);
    assert_eq!(st["pages_verified"], "before restoring", "{st}");
    host.ferry.wait_status(&copy, "running");
    host.run(&["delete", "--force", &copy]).ok();
}

#[test]
fn a_criu_failure_runc_style_leaves_nothing() {
    let host = Host::new();
    let (bundle, id, mem) = bundle_container(&host, "1", "criurunc");
    mem.wait_count_above(1);
    let images = host.ferry.scratch().join("images");
    host.run(&["checkpoint", "--image-path", images.to_str().unwrap(), &id])
        .ok();
    let pstree = images.join("pstree.img");
    let mut b = fs::read(&pstree).unwrap();
    for x in b.iter_mut().skip(8) {
        *x ^= 0x5a;
    }
    fs::write(&pstree, b).unwrap();
    let out = host.run_quiet(&[
        "restore",
        "--bundle",
        bundle.path_str(),
        "--image-path",
        images.to_str().unwrap(),
        "-d",
        &id,
    ]);
    assert!(
        !out.success(),
        "restore from a corrupt pstree.img succeeded"
    );
    assert!(
        out.stderr.contains("restore.log") && out.stderr.contains("Error"),
        "the error should quote CRIU's log and give its path:\n{}",
        out.stderr
    );
    assert_no_leftovers(&host.ferry, &bundle, &id);

    // A bogus --image-path: said plainly, nothing made.
    let out = host.run_quiet(&[
        "restore",
        "--bundle",
        bundle.path_str(),
        "--image-path",
        "/nonexistent/images",
        "-d",
        &id,
    ]);
    assert!(!out.success());
    assert!(out.stderr.contains("/nonexistent/images"), "{}", out.stderr);
    assert_no_leftovers(&host.ferry, &bundle, &id);

    // Flags of an archive's restore are mistakes here, not no-ops.
    for flags in [
        &["--name", "other"][..],
        &["--verify-first"],
        &["--insecure-allow-untrusted"],
    ] {
        let out = host.run_quiet(
            &[
                &["restore", "--bundle", bundle.path_str(), "--image-path"],
                &[images.to_str().unwrap(), "-d"][..],
                flags,
                &[id.as_str()],
            ]
            .concat(),
        );
        assert!(!out.success());
        let says = format!("{} applies to an archive", flags[0]);
        assert!(out.stderr.contains(&says), "{flags:?}: {}", out.stderr);
        assert_no_leftovers(&host.ferry, &bundle, &id);
    }
}

/// After a failed checkpoint the container is running (not frozen, not gone) and counting.
fn still_running_and_counting(host: &Host, id: &str, mem: &MemHold) {
    assert_eq!(host.ferry.status(id).as_deref(), Some("running"));
    let (_, c) = mem.count().unwrap();
    mem.wait_count_above(c + 2);
}

#[test]
fn a_failed_checkpoint_leaves_the_container_running() {
    let (host, id, mem) = host_with_container("ckfail");

    // The archive's directory does not exist.
    let out = host
        .run(&["checkpoint", &id, "-e", "/nonexistent/dir/a.tar"])
        .fails();
    assert!(
        out.stderr.contains("/nonexistent/dir/a.tar"),
        "{}",
        out.stderr
    );
    still_running_and_counting(&host, &id, &mem);

    // Pre-dump needs soft-dirty tracking, which this kernel lacks: said before freezing.
    let images = host.ferry.scratch().join("pre");
    let out = host
        .run(&[
            "checkpoint",
            "--pre-dump",
            "--image-path",
            images.to_str().unwrap(),
            &id,
        ])
        .fails();
    assert!(out.stderr.contains("soft-dirty"), "{}", out.stderr);
    assert!(
        !images.join("pre-dump.log").exists() && !images.join("pages-1.img").exists(),
        "CRIU ran a pre-dump anyway"
    );
    still_running_and_counting(&host, &id, &mem);

    // Flags that leave part of the container out cannot make an archive: said first.
    let archive = host.ferry.scratch().join("partial.tar");
    let a = archive.to_str().unwrap();
    for (flags, says) in [
        (
            &["--lazy-pages"][..],
            "--lazy-pages leaves memory pages out",
        ),
        (
            &["--page-server", "127.0.0.1:1"][..],
            "--page-server leaves memory pages out",
        ),
        (
            &["--shell-job"][..],
            "--shell-job leaves the container's terminal",
        ),
        (&["--pre-dump"][..], "--pre-dump writes no archive"),
    ] {
        let out = host
            .run(&[&["checkpoint", &id, "-e", a], flags].concat())
            .fails();
        assert!(out.stderr.contains(says), "{flags:?}: {}", out.stderr);
        assert!(!archive.exists(), "{flags:?} left an archive behind");
    }
    still_running_and_counting(&host, &id, &mem);

    // A compression without an archive is a mistake, not a no-op.
    let images = host.ferry.scratch().join("compressed-images");
    let out = host
        .run(&[
            "checkpoint",
            "--image-path",
            images.to_str().unwrap(),
            "--compress",
            "zstd",
            &id,
        ])
        .fails();
    assert!(
        out.stderr.contains("--compress applies to an archive"),
        "{}",
        out.stderr
    );
    assert!(!images.exists(), "CRIU ran anyway");
    still_running_and_counting(&host, &id, &mem);

    // stdio on a file of the host: CRIU cannot dump it.
    let id2 = host.id("hostfile");
    let tag = format!("FERRY_TEST_TAG={}", host.ferry.tag);
    let log = host.ferry.scratch().join("stdout-on-host");
    let status = host
        .command(&[
            "run",
            "-d",
            "--image",
            "bb",
            "--name",
            &id2,
            "--",
            "/bin/busybox",
            "env",
        ])
        .args([tag.as_str(), "/bin/memhold", "1", SEED, "/tmp"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mem2 = MemHold::at(host.rootfs(&id2).join("tmp"));
    mem2.wait_count_above(1);
    let archive = host.ferry.scratch().join("hostfile.tar");
    let out = host
        .run(&["checkpoint", &id2, "-e", archive.to_str().unwrap()])
        .fails();
    // ferry refuses before CRIU freezes anything, naming the fd and the file.
    assert!(
        out.stderr.contains("its stdout is")
            && out.stderr.contains(log.to_str().unwrap())
            && out.stderr.contains("CRIU cannot checkpoint"),
        "the error should name stdout and the host file: {}",
        out.stderr
    );
    assert!(
        !archive.exists(),
        "a failed checkpoint left a partial archive"
    );
    still_running_and_counting(&host, &id2, &mem2);
    still_running_and_counting(&host, &id, &mem);
}

#[test]
fn checkpoint_and_restore_through_a_pipe() {
    pipe_round_trip(&[]);
}

/// Through a pipe with the in-memory stage too small: the stage spills to disk mid-stream
/// and goes on; nothing of the pipe is read twice or lost.
#[test]
fn checkpoint_and_restore_through_a_pipe_with_a_spill() {
    pipe_round_trip(&[("FERRY_STAGE_TMPFS_BYTES", "1M")]);
}

fn pipe_round_trip(env: &[(&str, &str)]) {
    let (host, id, mem) = host_with_memory("pipe", "16");
    let (runid, before) = mem.wait_count_above(3);
    let sum = mem.checksum().unwrap();
    let new = host.id("piped");
    let err_dir = host.ferry.scratch();
    let base = |args: &[&str]| host.command(args);
    let mut ck = base(&["checkpoint", &id, "-e", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(err_dir.join("ck.err")).unwrap())
        .spawn()
        .unwrap();
    let pipe = ck.stdout.take().unwrap();
    let stats = err_dir.join("rs.json");
    let mut rs = base(&[
        "restore",
        "-i",
        "-",
        "--name",
        &new,
        "-d",
        "--stats-file",
        stats.to_str().unwrap(),
    ])
    .envs(env.iter().copied())
    .stdin(pipe)
    .stdout(Stdio::null())
    .stderr(fs::File::create(err_dir.join("rs.err")).unwrap())
    .spawn()
    .unwrap();
    let ck_status = ck.wait().unwrap();
    let rs_status = rs.wait().unwrap();
    let read = |n: &str| fs::read_to_string(err_dir.join(n)).unwrap_or_default();
    assert!(
        ck_status.success(),
        "checkpoint -e - failed: {}",
        read("ck.err")
    );
    assert!(
        rs_status.success(),
        "restore -i - failed: {}",
        read("rs.err")
    );
    let st = read_stats(&stats);
    let want = if env.is_empty() { "tmpfs" } else { "spilled" };
    assert_eq!(st["stage"], want, "{st}");
    // Verified whole before CRIU started, the memory is then copied in from the stage
    // (archive::feed::copy_in_staged) rather than read by CRIU.
    if ferry::archive::uffd::supported() {
        let copied = st["copied_in_bytes"].as_u64().unwrap_or(0);
        assert!(
            copied >= 12 << 20,
            "the memory copied in from the stage: {st}"
        );
    }
    assert_work_clean(&host);
    host.ferry.wait_status(&new, "running");
    let restored = MemHold::at(host.rootfs(&new).join("tmp"));
    let (runid2, _) = restored.wait_count_above(before);
    assert_eq!(runid2, runid);
    host.run(&["kill", &new, "USR1"]).ok();
    assert_eq!(
        restored.wait_rehash(1),
        sum,
        "the memory differs after the pipe"
    );
    host.run(&["delete", "--force", &new]).ok();
    assert_deleted(&host, &new);
    assert_cgroups_gone(&new);
}

/// `checkpoint -e -` whose reader goes away while the memory is streaming (a dropped
/// connection): the dump fails, the error says why, and the container runs on, the same
/// process with the same memory.
#[test]
fn a_reader_that_goes_away_mid_stream_leaves_the_container_running() {
    let (host, id, mem) = host_with_container("gone");
    let (runid, _) = mem.wait_count_above(2);
    let sum = mem.checksum().unwrap();
    let err = host.ferry.scratch().join("gone.err");
    let mut child = host
        .command(&["checkpoint", &id, "-e", "-", "--compress", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // Take the first MiB (the container holds 4 MiB of memory), then hang up.
    let mut out = child.stdout.take().unwrap();
    let mut first = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    drop(out);
    let status = child.wait().unwrap();
    let stderr = fs::read_to_string(&err).unwrap();
    assert!(!status.success(), "the checkpoint should fail: {stderr}");
    assert!(
        stderr.contains("the reader went away") && stderr.contains("runs on as before"),
        "the error should say the reader of the archive went away and that the container \
         runs on:\n{stderr}"
    );
    still_running_and_counting(&host, &id, &mem);
    let (runid_after, _) = mem.count().unwrap();
    assert_eq!(
        runid_after, runid,
        "the container was restarted, not thawed"
    );
    host.run(&["kill", &id, "USR1"]).ok();
    assert_eq!(mem.wait_rehash(1), sum, "the container's memory changed");
    assert_work_clean(&host);
}

/// A restore killed while it stages the archive (SIGKILL: nothing of ferry runs to clean
/// up) leaves its tmpfs mounted, holding memory; the next restore removes it, and restores.
#[test]
fn a_restore_killed_mid_stage_is_cleaned_up_by_the_next_one() {
    let (host, id, mem) = host_with_container("killed");
    let archive = export(&host, &id, "none", false);
    let bytes = fs::read(&archive).unwrap();
    let mut child = host
        .command(&["restore", "-i", "-", "--name", &host.id("never"), "-d"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Half the archive, then wait until it is being staged in its tmpfs, then kill.
    let mut input = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut input, &bytes[..bytes.len() / 2]).unwrap();
    let stage = host
        .storage
        .join("work")
        .join(format!("restore-{}", child.id()));
    let mounted = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(stage.to_str().unwrap())
    };
    wait_for("the restore's tmpfs stage", WAIT, mounted);
    // Should the sweep fail, the test must still not leave the tmpfs mounted behind it.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(stage.clone());
    child.kill().unwrap();
    child.wait().unwrap();
    drop(input);
    assert!(
        mounted(),
        "the killed restore's stage should still be mounted"
    );

    // The next restore sweeps it away, and restores.
    let copy = host.id("after");
    host.run_quiet(&[
        "restore",
        "-i",
        archive.to_str().unwrap(),
        "--name",
        &copy,
        "-d",
    ])
    .ok();
    host.ferry.wait_status(&copy, "running");
    assert!(!mounted(), "the killed restore's tmpfs is still mounted");
    assert!(!stage.exists(), "{} is still there", stage.display());
    assert_work_clean(&host);
    still_running_and_counting(&host, &id, &mem);
    host.run(&["delete", "--force", &copy]).ok();
}

/// Whether process `pid` has a child running criu.
fn runs_criu(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        fs::read_to_string(t.path().join("children"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| {
                fs::read_to_string(format!("/proc/{c}/comm"))
                    .is_ok_and(|comm| comm.trim() == "criu")
            })
    })
}

/// A memhold checkpointed (left running) into an uncompressed archive, the id a copy is
/// to be restored under, and the test's processes before any restore.
struct ToRestore {
    host: Host,
    id: String,
    mem: MemHold,
    sum: String,
    archive: PathBuf,
    copy: String,
    before: Vec<i32>,
}

fn to_restore(prefix: &str, mib: &str) -> ToRestore {
    let (host, id, mem) = host_with_memory(prefix, mib);
    let sum = mem.checksum().unwrap();
    let archive = export(&host, &id, "none", false);
    let copy = host.id(&format!("{prefix}-copy"));
    let before = tagged_processes(&host.ferry.tag);
    ToRestore {
        host,
        id,
        mem,
        sum,
        archive,
        copy,
        before,
    }
}

impl ToRestore {
    fn archive(&self) -> &str {
        self.archive.to_str().unwrap()
    }

    /// `restore -i ARCHIVE --name COPY -d EXTRA`, started, its stderr to `stderr`.
    fn start_restore(&self, extra: &[&str], stderr: Stdio) -> std::process::Child {
        self.host
            .command(&["restore", "-i", self.archive(), "--name", &self.copy, "-d"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    /// After the failed attempts: the archive restores as the copy with the source's
    /// memory, and the source runs on.
    fn still_restores(&self) {
        let (host, copy) = (&self.host, self.copy.as_str());
        host.run_quiet(&["restore", "-i", self.archive(), "--name", copy, "-d"])
            .ok();
        let restored = MemHold::at(host.rootfs(copy).join("tmp"));
        restored.wait_count_above(self.mem.count().unwrap().1);
        host.run(&["kill", copy, "USR1"]).ok();
        assert_eq!(
            restored.wait_rehash(1),
            self.sum,
            "the restored memory differs"
        );
        host.run(&["delete", "--force", copy]).ok();
        still_running_and_counting(host, &self.id, &self.mem);
    }
}

/// SIGTERM to `child`; its exit status and the stderr it wrote to `err`.
fn sigterm(child: &mut std::process::Child, err: &Path) -> (std::process::ExitStatus, String) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    (status, fs::read_to_string(err).unwrap())
}

/// The processes in container `id`'s pids cgroup.
fn cgroup_procs(id: &str) -> usize {
    cgroup_dirs_for(id)
        .iter()
        .filter(|d| d.to_string_lossy().contains("/pids/"))
        .map(|d| {
            fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum()
}

/// A restore killed (SIGKILL: the OOM killer, a supervisor's last resort) while CRIU
/// restores can clean nothing up: it leaves a half-restored task in the container's cgroup,
/// CRIU's mounts, the rootfs and the id taken. While the restore lives (here stopped),
/// `delete` of the id says who is making it and touches nothing; once it is dead, a restore
/// of the id says what holds it and how to clear it, and `delete` removes all of it. The
/// archive then restores.
#[test]
fn what_a_restore_killed_mid_way_leaves_is_named_and_removed_by_delete() {
    use nix::sys::signal::{Signal, kill};
    let t = to_restore("rskill", "512");
    let (host, copy, a) = (&t.host, t.copy.as_str(), t.archive());
    let mut child = t.start_restore(&[], Stdio::null());
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    wait_for("CRIU restoring", WAIT, || runs_criu(child.id()));
    kill(pid, Signal::SIGSTOP).unwrap();
    let busy = host.run_quiet(&["delete", "--force", copy]).fails();
    assert!(
        busy.stderr.contains("is busy") && busy.stderr.contains(&format!("pid {pid}")),
        "a delete while the restore lives: {}",
        busy.stderr
    );
    kill(pid, Signal::SIGCONT).unwrap();
    // criu itself joins the cgroup first; then the task it restores.
    wait_for("the restored task", WAIT, || cgroup_procs(copy) >= 2);
    kill(pid, Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    // What outlives the restore depends on where CRIU was: often the half-restored task
    // (seen spinning at 100% CPU), sometimes nothing once CRIU died with ferry.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let lingering = cgroup_procs(copy);

    let held = host
        .run_quiet(&["restore", "-i", a, "--name", copy, "-d"])
        .fails();
    assert!(
        held.stderr.contains(&format!("pid {pid}"))
            && held.stderr.contains(&format!("ferry delete {copy}")),
        "a restore of the id should say what holds it: {}",
        held.stderr
    );
    let listed = host.run_quiet(&["list"]).ok();
    assert!(
        !listed.stdout.contains(copy) && listed.stderr.contains(&format!("ferry delete {copy}")),
        "list should name the id beside its output, not in it: {listed:?}"
    );
    let cleared = host.run_quiet(&["delete", copy]).ok();
    assert!(
        cleared.stderr.contains("was never made")
            && (lingering == 0 || cleared.stderr.contains("process")),
        "the delete should have killed the {lingering} process(es) left: {}",
        cleared.stderr
    );
    assert_restore_left_nothing(host, copy, &t.before);
    t.still_restores();
}

/// SIGTERM (Ctrl-C's SIGINT, a service stop, timeout(1)) while `restore -i` verifies and
/// stages the archive, and again once CRIU is restoring from it: each stops in order and
/// says so, leaves no container, mount, cgroup, process or work file (a ferry that died on
/// the spot left a half-restored task spinning in its cgroup, CRIU's mounts and the id
/// taken), and the archive then restores with the memory.
#[test]
fn sigterm_during_restore_leaves_nothing_and_the_archive_still_restores() {
    let t = to_restore("rsterm", "256");
    let (host, copy) = (&t.host, t.copy.as_str());
    let phases: [(&str, &[&str]); 2] = [
        ("staging the archive", &["--verify-first"]),
        ("CRIU restoring", &[]),
    ];
    for (phase, extra) in phases {
        let err = host.ferry.scratch().join("restore.err");
        let mut child = t.start_restore(extra, fs::File::create(&err).unwrap().into());
        let stage = host
            .storage
            .join("work")
            .join(format!("restore-{}", child.id()));
        wait_for(phase, WAIT, || match extra.is_empty() {
            false => stage.join("checkpoint").exists(),
            true => runs_criu(child.id()),
        });
        let (status, stderr) = sigterm(&mut child, &err);
        assert!(!status.success(), "{phase}: the restore went on: {stderr}");
        assert!(
            stderr.contains("interrupted by SIGTERM")
                && stderr.contains("nothing was restored")
                && stderr.contains("is as it was"),
            "{phase}: the error should say it was interrupted and restored nothing:\n{stderr}"
        );
        assert_restore_left_nothing(host, copy, &t.before);
    }
    t.still_restores();
}

/// SIGTERM (a service stop, or Ctrl-C's SIGINT) while `checkpoint -e` streams the memory: an
/// orderly abort, not a death half-way that would leave the container frozen or CRIU's
/// parasite in it. The container runs on, the same process with the same memory; no work
/// files are left, and the archive an earlier checkpoint wrote to the same path is still
/// there, untouched (the new one is written without a name until it is complete).
#[test]
fn sigterm_during_checkpoint_aborts_cleanly_and_the_container_runs_on() {
    use std::os::unix::fs::MetadataExt;
    let host = Host::new();
    host.import_image("bb");
    let id = host.id("term");
    host.run_image("bb", &id, &["/bin/memhold", "512", SEED, "/tmp"]);
    let mem = MemHold::at(host.rootfs(&id).join("tmp"));
    let (runid, _) = mem.wait_count_above(2);
    let sum = mem.checksum().unwrap();
    let archive = export(&host, &id, "none", false);
    let before = fs::metadata(&archive).unwrap();
    let err = host.ferry.scratch().join("term.err");
    let mut child = spawn_checkpoint(&host, &id, &archive, &err);
    // Once the archive has started, half a GiB of memory takes a while to stream.
    wait_for("the archive to start", WAIT, || {
        unnamed_output_len(child.id(), archive.parent().unwrap()) > 0
    });
    let (status, stderr) = sigterm(&mut child, &err);
    assert!(!status.success(), "the checkpoint should stop: {stderr}");
    assert!(
        stderr.contains("interrupted by SIGTERM") && stderr.contains("runs on as before"),
        "the error should say it was interrupted and the container runs on:\n{stderr}"
    );
    let after = fs::metadata(&archive).expect("the earlier archive is gone");
    assert_eq!(
        (after.ino(), after.len(), after.mtime(), after.mtime_nsec()),
        (
            before.ino(),
            before.len(),
            before.mtime(),
            before.mtime_nsec()
        ),
        "the earlier archive at the same path was replaced or changed"
    );
    assert_eq!(
        fs::read_dir(archive.parent().unwrap()).unwrap().count(),
        1,
        "a partial archive was left beside the earlier one"
    );
    assert_work_clean(&host);
    still_running_and_counting(&host, &id, &mem);
    assert_eq!(mem.count().unwrap().0, runid, "the container was restarted");
    host.run(&["kill", &id, "USR1"]).ok();
    assert_eq!(mem.wait_rehash(1), sum, "the container's memory changed");
}

/// `checkpoint ID -e ARCHIVE --compress none` started in the background, its stderr in
/// the file `err`.
fn spawn_checkpoint(host: &Host, id: &str, archive: &Path, err: &Path) -> std::process::Child {
    host.command(&["checkpoint", id, "-e"])
        .arg(archive)
        .args(["--compress", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(err).unwrap())
        .spawn()
        .unwrap()
}

/// The processes whose parent is `pid`, by command name.
fn children_named(pid: u32, name: &str) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            comm.ends_with(&format!("({name}"))
                && rest.split_whitespace().nth(1) == Some(pid.to_string().as_str())
        })
        .count()
}

/// `checkpoint -e` killed outright (SIGKILL: the OOM killer, `timeout -s KILL`) while the
/// container is frozen for it, once while CRIU dumps and once after CRIU, while the rootfs
/// changes go into the archive: its thaw guard thaws the container, which runs on with its
/// memory, says so, and leaves no archive. It used to stay frozen ("paused") for good. With
/// the guard killed too (a kill of the whole cgroup), `ferry list` says what froze it and
/// `ferry resume` thaws it.
#[test]
fn a_checkpoint_killed_outright_leaves_the_container_running() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let (host, id, mem) = host_with_memory("killed", "128");
    let (runid, _) = mem.wait_count_above(2);
    let sum = mem.checksum().unwrap();
    // Rootfs changes large enough that archiving them takes a while after CRIU is done.
    host.run(&[
        "exec",
        &id,
        "/bin/sh",
        "-c",
        "dd if=/dev/urandom of=/root/blob bs=1M count=150 2>/dev/null",
    ])
    .ok();
    let archive = host.ferry.scratch().join("killed.tar");
    for moment in [
        "while CRIU dumps",
        "after CRIU",
        "after CRIU, with its guard",
    ] {
        let err = host.ferry.scratch().join("killed.err");
        let mut child = spawn_checkpoint(&host, &id, &archive, &err);
        let ferry = child.id();
        let mut criu_seen = false;
        wait_for(moment, WAIT, || {
            let criu = children_named(ferry, "criu") > 0;
            criu_seen |= criu;
            match moment {
                "while CRIU dumps" => {
                    criu && unnamed_output_len(ferry, archive.parent().unwrap()) > 0
                }
                _ => criu_seen && !criu,
            }
        });
        if moment == "after CRIU, with its guard" {
            let guard = fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .find(|pid| {
                    fs::read_to_string(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.contains("guard-frozen") && c.contains(&id))
                })
                .expect("no guard-frozen process");
            kill(Pid::from_raw(guard), Signal::SIGKILL).unwrap();
            kill(Pid::from_raw(ferry as i32), Signal::SIGKILL).unwrap();
            child.wait().unwrap();
            assert_eq!(host.ferry.status(&id).as_deref(), Some("paused"));
            let out = host.run(&["list"]).ok();
            assert!(
                out.stderr.contains("was killed before it let go")
                    && out.stderr.contains(&format!("ferry resume {id}")),
                "{}",
                out.stderr
            );
            host.run(&["resume", &id]).ok();
            still_running_and_counting(&host, &id, &mem);
            assert!(host.run(&["list"]).ok().stderr.is_empty());
            assert!(!archive.exists(), "{moment}: an archive was left");
            continue;
        }
        kill(Pid::from_raw(ferry as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        // Thawed by the guard, or (while CRIU dumps, sometimes) by CRIU on its way out.
        wait_for("the guard's word", WAIT, || {
            fs::read_to_string(&err).is_ok_and(|e| e.contains("runs on as before"))
        });
        let said = fs::read_to_string(&err).unwrap();
        assert!(said.contains("no checkpoint was made"), "{moment}: {said}");
        still_running_and_counting(&host, &id, &mem);
        assert!(!archive.exists(), "{moment}: an archive was left");
    }
    assert_eq!(mem.count().unwrap().0, runid, "the container was restarted");
    host.run(&["kill", &id, "USR1"]).ok();
    assert_eq!(mem.wait_rehash(1), sum, "the container's memory changed");
    // Nothing stale stands in the way of the next checkpoint.
    host.run(&[
        "checkpoint",
        &id,
        "-e",
        archive.to_str().unwrap(),
        "--leave-running",
    ])
    .ok();
    assert!(archive.exists());
    assert_work_clean(&host);
    still_running_and_counting(&host, &id, &mem);
}

/// The guard's three answers, driven directly: ferry's word "done" leaves the container as
/// it is; "committing" and then silence (ferry killed while its archive may be whole)
/// leaves it paused and says how to finish; silence alone (killed before) thaws it.
#[test]
fn the_thaw_guard_thaws_only_when_no_archive_can_be_whole() {
    use std::io::Write;
    let (host, id, mem) = host_with_container("guard");
    let archive = host.ferry.scratch().join("guard.tar");
    let guard = |said: &[u8]| -> String {
        let mut child = host
            .command(&["guard-frozen", "--archive", archive.to_str().unwrap(), &id])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(said).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    host.run(&["pause", &id]).ok();
    // Paused by its owner, with no killed checkpoint behind it: `list` says nothing more.
    let out = host.run(&["list"]).ok();
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert_eq!(guard(b"d"), "");
    assert_eq!(host.ferry.status(&id).as_deref(), Some("paused"));
    let said = guard(b"c");
    assert!(
        said.contains("left paused") && said.contains(&format!("ferry resume {id}")),
        "{said}"
    );
    assert_eq!(host.ferry.status(&id).as_deref(), Some("paused"));
    let said = guard(b"");
    assert!(said.contains("is thawed and runs on as before"), "{said}");
    still_running_and_counting(&host, &id, &mem);
}

/// When `checkpoint -e` has its archive but cannot release the container (here: a mount
/// in its state directory that its removal cannot remove), the error says the archive is
/// complete and how to finish; `delete` then finishes and the archive restores the
/// container where it was.
#[test]
fn a_source_that_cannot_be_released_is_named_and_its_archive_is_whole() {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let (host, id, mem) = host_with_container("unrel");
    let (runid, _) = mem.wait_count_above(2);
    let sum = mem.checksum().unwrap();
    let pid = host.ferry.pid(&id);
    let pin = host.ferry.root().join(&id).join("pin");
    fs::create_dir(&pin).unwrap();
    mount(
        Some("tmpfs"),
        &pin,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let archive = host.ferry.scratch().join("unrel.tar");
    let out = host
        .run(&["checkpoint", &id, "-e", archive.to_str().unwrap()])
        .fails();
    umount2(&pin, MntFlags::MNT_DETACH).unwrap();
    for says in [
        format!("is complete in {} and on disk", archive.display()),
        "releasing the container failed".to_string(),
        format!("ferry delete --force {id}"),
    ] {
        assert!(
            out.stderr.contains(&says),
            "no {says:?} in:\n{}",
            out.stderr
        );
    }
    // Its processes are gone (the release got that far): nothing runs twice. What is left
    // is still a container, stopped, that delete finishes.
    assert!(
        out.stderr.contains("its processes are gone"),
        "{}",
        out.stderr
    );
    assert!(is_zombie_or_gone(pid), "the source still runs");
    assert_eq!(host.ferry.status(&id).as_deref(), Some("stopped"));
    let out = host.run(&["delete", &id]).ok();
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert_deleted(&host, &id);
    host.run_quiet(&["restore", "-i", archive.to_str().unwrap(), "-d"])
        .ok();
    mem.wait_count_above(mem.count().unwrap().1 + 2);
    assert_eq!(mem.count().unwrap().0, runid, "the container was restarted");
    host.run(&["kill", &id, "USR1"]).ok();
    assert_eq!(mem.wait_rehash(1), sum, "the restored memory differs");
    host.run(&["delete", "--force", &id]).ok();
}

/// Without a working criu, `checkpoint -e` says so before it freezes anything, and
/// `restore -i` before it reads the archive.
#[test]
fn a_missing_criu_is_said_before_freezing_or_staging() {
    let (host, id, mem) = host_with_container("nocriu");
    let archive = host.ferry.scratch().join("nocriu.tar");
    let a = archive.to_str().unwrap();
    let env = [("FERRY_CRIU", "/nonexistent/criu")];
    let out = host
        .run_quiet_env(&env, &["checkpoint", &id, "-e", a])
        .fails();
    assert!(
        out.stderr.contains("/nonexistent/criu") && out.stderr.contains("install CRIU"),
        "{}",
        out.stderr
    );
    assert!(!archive.exists(), "an archive was started");
    still_running_and_counting(&host, &id, &mem);

    let good = export(&host, &id, "none", false);
    let out = host
        .run_quiet_env(
            &env,
            &[
                "--debug",
                "restore",
                "-i",
                good.to_str().unwrap(),
                "--name",
                &host.id("never"),
            ],
        )
        .fails();
    assert!(out.stderr.contains("/nonexistent/criu"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("staged"),
        "the archive was staged before criu was asked:\n{}",
        out.stderr
    );
    assert_work_clean(&host);
}
