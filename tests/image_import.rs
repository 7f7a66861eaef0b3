//! The image store against real files: OCI layouts built here (busybox-static, gzip and zstd
//! layers, whiteouts, an opaque dir) are imported and their layers checked on disk and
//! through a real overlay mount; every bad input from issue 3 fails naming the entry and
//! leaves nothing behind; concurrent imports keep the store sound. Needs root (mknod,
//! chown, trusted xattrs, mount).

use ferry::image::{Store, UnpackLimits};
use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("the image store tests create device nodes, chown and mount; run them as root");
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferry-image-")
        .tempdir()
        .unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Clone, Copy)]
enum Comp {
    None,
    Gzip,
    Zstd,
}

/// A layer tar built entry by entry; names are written raw so bad ones can be made too.
struct LayerTar(tar::Builder<Vec<u8>>);

impl LayerTar {
    fn new() -> Self {
        LayerTar(tar::Builder::new(Vec::new()))
    }

    fn header(name: &[u8], kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        assert!(name.len() < 100, "raw names must fit the ustar field");
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h
    }

    fn raw(&mut self, mut h: tar::Header, link: Option<&[u8]>, data: &[u8]) -> &mut Self {
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        let h = Self::header(name.as_bytes(), tar::EntryType::Directory, mode, 0);
        self.raw(h, None, &[])
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        let h = Self::header(
            name.as_bytes(),
            tar::EntryType::Regular,
            mode,
            data.len() as u64,
        );
        self.raw(h, None, data)
    }

    fn file_owned(&mut self, name: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> &mut Self {
        let mut h = Self::header(
            name.as_bytes(),
            tar::EntryType::Regular,
            mode,
            data.len() as u64,
        );
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_234_567_890);
        self.raw(h, None, data)
    }

    fn link(&mut self, kind: tar::EntryType, name: &str, target: &str) -> &mut Self {
        let h = Self::header(name.as_bytes(), kind, 0o777, 0);
        self.raw(h, Some(target.as_bytes()), &[])
    }

    fn special(&mut self, kind: tar::EntryType, name: &str) -> &mut Self {
        let mut h = Self::header(name.as_bytes(), kind, 0o666, 0);
        if matches!(kind, tar::EntryType::Char) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        self.raw(h, None, &[])
    }

    fn xattr_file(&mut self, name: &str, key: &str, value: &[u8], data: &[u8]) -> &mut Self {
        let pax_key = format!("SCHILY.xattr.{key}");
        self.0
            .append_pax_extensions([(pax_key.as_str(), value)])
            .unwrap();
        self.file(name, 0o644, data)
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn compress(tar: &[u8], comp: Comp) -> Vec<u8> {
    match comp {
        Comp::None => tar.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

/// An OCI image layout written with oci-spec's types.
struct Layout {
    dir: PathBuf,
    layers: Vec<(oci_spec::image::Descriptor, String)>,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            layers: Vec::new(),
        }
    }

    fn blob(&self, bytes: &[u8]) -> (String, u64) {
        let digest = sha256(bytes);
        fs::write(self.blob_path(&digest), bytes).unwrap();
        (digest, bytes.len() as u64)
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn layer(&mut self, tar: &[u8], comp: Comp) -> String {
        let blob = compress(tar, comp);
        let (digest, size) = self.blob(&blob);
        let media_type = match comp {
            Comp::None => MediaType::ImageLayer,
            Comp::Gzip => MediaType::ImageLayerGzip,
            Comp::Zstd => MediaType::ImageLayerZstd,
        };
        let desc = DescriptorBuilder::default()
            .media_type(media_type)
            .digest(Digest::from_str(&digest).unwrap())
            .size(size)
            .build()
            .unwrap();
        self.layers.push((desc, sha256(tar)));
        digest
    }

    /// Writes config, manifest, index and oci-layout; returns the manifest digest.
    fn finish(&self, ref_name: Option<&str>) -> String {
        let config = ImageConfigurationBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .config(
                ConfigBuilder::default()
                    .cmd(vec!["sh".to_string()])
                    .env(vec!["PATH=/bin".to_string()])
                    .working_dir("/")
                    .build()
                    .unwrap(),
            )
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(self.layers.iter().map(|l| l.1.clone()).collect::<Vec<_>>())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let (config_digest, config_size) = self.blob(&serde_json::to_vec(&config).unwrap());
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(
                DescriptorBuilder::default()
                    .media_type(MediaType::ImageConfig)
                    .digest(Digest::from_str(&config_digest).unwrap())
                    .size(config_size)
                    .build()
                    .unwrap(),
            )
            .layers(self.layers.iter().map(|l| l.0.clone()).collect::<Vec<_>>())
            .build()
            .unwrap();
        let (manifest_digest, manifest_size) = self.blob(&serde_json::to_vec(&manifest).unwrap());
        let mut desc = DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .digest(Digest::from_str(&manifest_digest).unwrap())
            .size(manifest_size);
        if let Some(r) = ref_name {
            desc = desc.annotations(HashMap::from([(
                "org.opencontainers.image.ref.name".to_string(),
                r.to_string(),
            )]));
        }
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .manifests(vec![desc.build().unwrap()])
            .build()
            .unwrap();
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        fs::write(
            self.dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        manifest_digest
    }
}

fn busybox_tar() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("busybox-static at /bin/busybox");
    let mut t = LayerTar::new();
    t.dir("./", 0o755)
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox)
        .link(tar::EntryType::Symlink, "bin/sh", "busybox")
        .link(tar::EntryType::Symlink, "bin/abs", "/bin/busybox")
        .link(tar::EntryType::Link, "bin/busybox-hard", "bin/busybox")
        .dir("etc", 0o755)
        .file("etc/motd", 0o644, b"hello from layer 1\n")
        .file_owned(
            "etc/owned",
            0o4750,
            1000,
            1001,
            b"setuid, owned by 1000:1001\n",
        )
        .xattr_file("etc/tagged", "user.ferry", b"kept", b"xattr\n")
        .dir("tmp", 0o1777)
        .special(tar::EntryType::Fifo, "tmp/fifo")
        .dir("data", 0o750)
        .file("data/keep", 0o644, b"hidden by the opaque dir above\n")
        .file("data/old", 0o644, b"old\n");
    t.finish()
}

/// Layer 2: deletes etc/motd, makes data/ opaque with one new file, adds a file.
fn changes_tar() -> Vec<u8> {
    let mut t = LayerTar::new();
    t.dir("etc", 0o755)
        .file("etc/.wh.motd", 0o644, b"")
        .dir("data", 0o750)
        .file("data/.wh..wh..opq", 0o644, b"")
        .file("data/new", 0o600, b"new\n")
        .file("etc/added", 0o644, b"layer 2\n");
    t.finish()
}

fn busybox_layout(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("busybox");
    let mut layout = Layout::new(&path);
    layout.layer(&busybox_tar(), Comp::Gzip);
    layout.layer(&changes_tar(), Comp::Zstd);
    let digest = layout.finish(Some("1.0"));
    (path, digest)
}

/// Names of the entries in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| {
        buf.truncate(len as usize);
        buf
    })
}

fn ferry(storage: &Path, args: &[&str]) -> std::process::Output {
    Command::new(FERRY)
        .arg("--storage")
        .arg(storage)
        .args(args)
        .output()
        .expect("run ferry")
}

/// The store holds only finished things: no leftovers in tmp/.
fn assert_sound(store: &Path) {
    assert_eq!(
        names(&store.join("tmp")),
        Vec::<String>::new(),
        "tmp/ is not empty"
    );
}

#[test]
fn layout_with_gzip_and_zstd_layers_whiteouts_and_opaque_dir() {
    require_root();
    let dir = tempdir();
    let (layout, digest) = busybox_layout(dir.path());
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    let image = store.import(&layout, None).unwrap();

    assert_eq!(image.name, "busybox:1.0", "name from ref.name + dir name");
    assert_eq!(image.manifest_digest, digest);
    assert_eq!(image.layers.len(), 2);
    assert_eq!(
        image.config.config().as_ref().unwrap().cmd().as_deref(),
        Some(&["sh".to_string()][..])
    );
    let (l1, l2) = (&image.layers[0], &image.layers[1]);
    assert!(l1.starts_with(root.join("layers")));

    // Layer 1: content, links, owners, modes, times, xattrs, fifo.
    let busybox = fs::read("/bin/busybox").unwrap();
    assert_eq!(fs::read(l1.join("bin/busybox")).unwrap(), busybox);
    assert_eq!(
        fs::read_link(l1.join("bin/sh")).unwrap(),
        PathBuf::from("busybox")
    );
    assert_eq!(
        fs::read_link(l1.join("bin/abs")).unwrap(),
        PathBuf::from("/bin/busybox")
    );
    let bb = fs::metadata(l1.join("bin/busybox")).unwrap();
    assert_eq!(
        fs::metadata(l1.join("bin/busybox-hard")).unwrap().ino(),
        bb.ino()
    );
    assert_eq!(bb.mode() & 0o7777, 0o755);
    let owned = fs::metadata(l1.join("etc/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1000, 1001));
    assert_eq!(owned.mode() & 0o7777, 0o4750, "setuid survives the chown");
    assert_eq!(owned.mtime(), 1_234_567_890);
    assert_eq!(
        get_xattr(&l1.join("etc/tagged"), "user.ferry").as_deref(),
        Some(&b"kept"[..])
    );
    assert!(
        fs::symlink_metadata(l1.join("tmp/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        fs::metadata(l1.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::metadata(l1.join("data")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(fs::metadata(l1.join("etc")).unwrap().mtime(), 1_700_000_000);

    // Layer 2: overlay whiteout and opaque dir.
    let wh = fs::symlink_metadata(l2.join("etc/motd")).unwrap();
    assert!(wh.file_type().is_char_device(), "whiteout is a char device");
    assert_eq!(wh.rdev(), 0, "whiteout is device 0:0");
    assert!(!l2.join("etc/.wh.motd").exists());
    assert_eq!(
        get_xattr(&l2.join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l2.join("data/.wh..wh..opq").exists());
    assert_eq!(names(&l2.join("data")), ["new"]);

    // The layers stack as overlay lower dirs (top first) into the image's root filesystem.
    let merged = dir.path().join("merged");
    fs::create_dir(&merged).unwrap();
    let opts = format!("lowerdir={}:{}", l2.display(), l1.display());
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(st.success(), "overlay mount of the layers failed");
    let seen = (
        merged.join("etc/motd").exists(),
        names(&merged.join("data")),
        fs::read(merged.join("etc/added")).ok(),
        merged.join("bin/busybox").exists(),
    );
    Command::new("umount").arg(&merged).status().unwrap();
    assert!(!seen.0, "the whiteout hides etc/motd");
    assert_eq!(seen.1, ["new"], "the opaque dir hides layer 1's data/");
    assert_eq!(seen.2.as_deref(), Some(&b"layer 2\n"[..]));
    assert!(seen.3);

    // Lookups by name, name without tag, digest and short digest.
    assert_eq!(store.get("busybox:1.0").unwrap().manifest_digest, digest);
    assert_eq!(store.get(&digest).unwrap().name, "busybox:1.0");
    assert_eq!(store.get(&digest[7..19]).unwrap().name, "busybox:1.0");
    assert!(
        store
            .get("busybox")
            .unwrap_err()
            .to_string()
            .contains("not found")
    );

    // The CLI shows the same image.
    let ls = ferry(&root, &["image", "ls"]);
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "{ls:?}");
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains("busybox:1.0") && text.contains(&digest[7..19]),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&ferry(&root, &["image", "ls", "--format", "json"]).stdout).unwrap();
    assert_eq!(json[0]["digest"], digest.as_str());
    let inspect = ferry(&root, &["image", "inspect", "busybox:1.0"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["name"], "busybox:1.0");
    assert_eq!(v["config"]["config"]["Cmd"][0], "sh");
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    assert_sound(&root);
}

#[test]
fn layout_tarball_and_plain_rootfs_import() {
    require_root();
    let dir = tempdir();
    let (layout, digest) = busybox_layout(dir.path());
    let root = dir.path().join("store");

    // A zstd-compressed tarball of the layout, through the CLI.
    let tarball = dir.path().join("busybox.tar.zst");
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", &layout).unwrap();
    fs::write(&tarball, compress(&b.into_inner().unwrap(), Comp::Zstd)).unwrap();
    let out = ferry(
        &root,
        &["image", "import", tarball.to_str().unwrap(), "--name", "bb"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&digest));
    let store = Store::open(&root).unwrap();
    assert_eq!(store.get("bb:latest").unwrap().manifest_digest, digest);

    // A plain rootfs directory becomes a one-layer image with a minimal config.
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    let a = store.import(&rootfs, None).unwrap();
    assert_eq!(a.name, "rootfs:latest");
    assert_eq!(a.layers.len(), 1);
    assert_eq!(
        fs::read_link(a.layers[0].join("bin/sh")).unwrap(),
        PathBuf::from("busybox")
    );
    let cfg = a.config.config().as_ref().unwrap();
    assert_eq!(cfg.cmd().as_deref(), Some(&["sh".to_string()][..]));
    assert!(cfg.env().as_ref().unwrap()[0].starts_with("PATH="));

    // The same rootfs as a gzip tarball: one layer, unpacked once, shared.
    let tgz = dir.path().join("mini.tar.gz");
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", &rootfs).unwrap();
    fs::write(&tgz, compress(&b.into_inner().unwrap(), Comp::Gzip)).unwrap();
    let t = store.import(&tgz, None).unwrap();
    assert_eq!(t.name, "mini:latest");
    assert!(t.layers[0].join("bin/busybox").is_file());
    assert_sound(&root);
}

/// A file that is no tar archive (a text file, an empty one, zstd of text) is named for what
/// it is, its bytes are not quoted back, and the store is left as it was.
#[test]
fn a_file_that_is_not_a_tarball_is_named_not_quoted() {
    require_root();
    let dir = tempdir();
    let root = dir.path().join("store");
    let text = "# secret-looking notes, not an image\n".repeat(40);
    let cases = [
        (
            "notes.txt",
            text.as_bytes().to_vec(),
            "its first bytes are not a tar header",
        ),
        ("empty.tar", vec![], "it is empty"),
        (
            "notes.tar.zst",
            compress(text.as_bytes(), Comp::Zstd),
            "inside its zstd compression",
        ),
    ];
    for (file, bytes, says) in cases {
        let path = dir.path().join(file);
        fs::write(&path, &bytes).unwrap();
        let out = ferry(
            &root,
            &["image", "import", path.to_str().unwrap(), "--name", "x"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} was imported");
        assert!(
            err.contains("is not an image") && err.contains(says),
            "{file}: {err}"
        );
        assert!(
            !err.contains("secret-looking"),
            "{file}: its bytes are quoted: {err}"
        );
    }
    assert!(Store::open(&root).unwrap().list().unwrap().is_empty());
    assert_sound(&root);
}

#[test]
fn concurrent_imports_of_the_same_image_keep_the_store_sound() {
    require_root();
    let dir = tempdir();
    let (layout, digest) = busybox_layout(dir.path());
    let root = dir.path().join("store");

    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (layout, root) = (layout.clone(), root.clone());
            std::thread::spawn(move || {
                Store::open(&root)
                    .unwrap()
                    .import(&layout, None)
                    .map(|i| i.manifest_digest)
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), digest);
    }
    // Two processes at once, too.
    let root2 = dir.path().join("store2");
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(FERRY)
                .arg("--storage")
                .arg(&root2)
                .args(["image", "import"])
                .arg(&layout)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    for root in [&root, &root2] {
        let store = Store::open(root).unwrap();
        let images = store.list().unwrap();
        assert_eq!(images.len(), 1);
        let layers = names(&root.join("layers"));
        assert_eq!(
            layers.len(),
            4,
            "two layer dirs and their records: {layers:?}"
        );
        let image = &images[0];
        assert_eq!(
            fs::read(image.layers[0].join("bin/busybox")).unwrap(),
            fs::read("/bin/busybox").unwrap()
        );
        assert!(
            fs::symlink_metadata(image.layers[1].join("etc/motd"))
                .unwrap()
                .file_type()
                .is_char_device()
        );
        assert_sound(root);
    }
}

#[test]
fn interrupted_import_leftovers_are_cleared_at_open() {
    require_root();
    let dir = tempdir();
    let root = dir.path().join("store");
    Store::open(&root).unwrap();
    fs::create_dir_all(root.join("tmp/12345-0-abc/layer-0/bin")).unwrap();
    fs::write(root.join("tmp/12345-0-abc/layer-0/bin/half"), b"x").unwrap();
    Store::open(&root).unwrap();
    assert_sound(&root);
}

#[test]
fn image_in_use_is_not_removed() {
    require_root();
    let dir = tempdir();
    let (layout, _) = busybox_layout(dir.path());
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    let image = store.import(&layout, Some("busybox")).unwrap();
    store.add_ref(&image, "web-1").unwrap();
    store.add_ref(&image, "web-2").unwrap();

    let err = store.remove("busybox").unwrap_err().to_string();
    assert!(err.contains("web-1, web-2"), "{err}");
    let out = ferry(&root, &["image", "rm", "busybox:latest"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("web-1"),
        "{stderr}"
    );
    assert!(image.layers[0].is_dir());

    store.remove_ref("web-1").unwrap();
    store.remove_ref("web-2").unwrap();
    store.remove_ref("web-2").unwrap(); // already gone: fine
    assert!(store.add_ref(&image, "../x").is_err());
    let out = ferry(&root, &["image", "rm", "busybox"]);
    assert!(out.status.success(), "{out:?}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(names(&root.join("layers")), Vec::<String>::new());
    assert_eq!(names(&root.join("blobs/sha256")), Vec::<String>::new());
    assert!(store.get("busybox").is_err());
}

/// Imports a layout whose only layer is `tar` and expects an error containing each of
/// `expect`; checks the partial import is gone and `outside` was not written.
fn import_fails(tar: &[u8], comp: Comp, limits: UnpackLimits, expect: &[&str]) -> String {
    let dir = tempdir();
    let layout_dir = dir.path().join("bad");
    let mut layout = Layout::new(&layout_dir);
    layout.layer(tar, comp);
    layout.finish(None);
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap().with_limits(limits);
    let err = store.import(&layout_dir, None).unwrap_err().to_string();
    for e in expect {
        assert!(err.contains(e), "error {err:?} does not mention {e:?}");
    }
    assert_sound(&root);
    assert_eq!(names(&root.join("layers")), Vec::<String>::new());
    assert_eq!(names(&root.join("images")), Vec::<String>::new());
    err
}

#[test]
fn bad_entries_are_refused_naming_the_entry() {
    require_root();
    let limits = UnpackLimits::default();
    let outside = tempdir();
    let outside_path = outside.path().to_str().unwrap().to_string();

    let mut t = LayerTar::new();
    t.file("ok", 0o644, b"x").file("../escape", 0o644, b"x");
    import_fails(&t.finish(), Comp::Gzip, limits, &["`../escape`", ".."]);

    let mut t = LayerTar::new();
    t.file("a/../../b", 0o644, b"x");
    import_fails(&t.finish(), Comp::None, limits, &["`a/../../b`"]);

    let mut t = LayerTar::new();
    let abs = format!("{outside_path}/abs");
    t.file(&abs, 0o644, b"x");
    import_fails(&t.finish(), Comp::None, limits, &[&abs, "absolute"]);
    assert!(!outside.path().join("abs").exists());

    // A symlink pointing out, then a file through it.
    let mut t = LayerTar::new();
    t.link(tar::EntryType::Symlink, "evil", &outside_path)
        .file("evil/pwned", 0o644, b"x");
    import_fails(
        &t.finish(),
        Comp::Zstd,
        limits,
        &["`evil/pwned`", "symlink `evil`"],
    );
    // A relative one, deeper.
    let mut t = LayerTar::new();
    t.dir("d", 0o755)
        .link(tar::EntryType::Symlink, "d/up", "../../../../../../tmp")
        .file("d/up/x/pwned", 0o644, b"x");
    import_fails(
        &t.finish(),
        Comp::None,
        limits,
        &["`d/up/x/pwned`", "symlink"],
    );
    assert_eq!(names(outside.path()), Vec::<String>::new());

    // Hard links out of the layer, absolute, or through a symlink.
    let mut t = LayerTar::new();
    t.link(tar::EntryType::Link, "passwd", "../../../../etc/passwd");
    import_fails(&t.finish(), Comp::None, limits, &["`passwd`", "hard link"]);
    let mut t = LayerTar::new();
    t.link(tar::EntryType::Link, "passwd", "/etc/passwd");
    import_fails(&t.finish(), Comp::None, limits, &["`passwd`", "absolute"]);
    let mut t = LayerTar::new();
    t.link(tar::EntryType::Symlink, "etc", "/etc").link(
        tar::EntryType::Link,
        "passwd",
        "etc/passwd",
    );
    import_fails(&t.finish(), Comp::None, limits, &["`passwd`", "symlink"]);
    let mut t = LayerTar::new();
    t.link(tar::EntryType::Link, "ghost", "not-in-layer");
    import_fails(
        &t.finish(),
        Comp::None,
        limits,
        &["`ghost`", "not an earlier entry"],
    );

    // Whiteouts that name no file (`.wh..` would be the directory itself).
    for bad in ["d/.wh..", "d/.wh...", ".wh."] {
        let mut t = LayerTar::new();
        t.dir("d", 0o755).file(bad, 0o644, b"");
        import_fails(
            &t.finish(),
            Comp::None,
            limits,
            &[&format!("`{bad}`"), "whiteout"],
        );
    }

    // Device nodes.
    let mut t = LayerTar::new();
    t.dir("dev", 0o755)
        .special(tar::EntryType::Char, "dev/null");
    import_fails(
        &t.finish(),
        Comp::Gzip,
        limits,
        &["`dev/null`", "device node"],
    );
    let mut t = LayerTar::new();
    t.special(tar::EntryType::Block, "sda");
    import_fails(&t.finish(), Comp::None, limits, &["`sda`", "device node"]);
}

#[test]
fn decompression_bombs_are_stopped() {
    require_root();
    // 256 MiB of zeros: a few hundred KiB gzipped.
    let mut t = LayerTar::new();
    let zeros = vec![0u8; 256 << 20];
    t.file("bomb", 0o644, &zeros);
    let bomb = t.finish();
    drop(zeros);
    let small = UnpackLimits {
        max_bytes: 16 << 20,
        ..UnpackLimits::default()
    };
    import_fails(
        &bomb,
        Comp::Gzip,
        small,
        &["`bomb`", "limit of 16777216 bytes"],
    );
    let ratio = UnpackLimits {
        max_ratio: 100,
        ratio_after: 1 << 20,
        ..UnpackLimits::default()
    };
    import_fails(
        &bomb,
        Comp::Zstd,
        ratio,
        &["`bomb`", "compression ratio passed 100:1"],
    );
    let few = UnpackLimits {
        max_entries: 3,
        ..UnpackLimits::default()
    };
    let mut t = LayerTar::new();
    for i in 0..5 {
        t.file(&format!("f{i}"), 0o644, b"x");
    }
    import_fails(
        &t.finish(),
        Comp::None,
        few,
        &["`f3`", "more than 3 entries"],
    );
}

#[test]
fn missing_and_corrupt_blobs_are_named() {
    require_root();
    let dir = tempdir();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();

    // Missing layer blob.
    let path = dir.path().join("missing");
    let mut layout = Layout::new(&path);
    let d = layout.layer(&busybox_tar(), Comp::Gzip);
    layout.finish(None);
    fs::remove_file(layout.blob_path(&d)).unwrap();
    let err = store.import(&path, None).unwrap_err().to_string();
    assert!(err.contains(&d) && err.contains("missing"), "{err}");

    // A layer blob whose bytes do not match its digest (same length, one byte changed):
    // in a tar header (unpacking fails first) and in file data (unpacking succeeds).
    for (i, offset) in [600usize, 100_000].into_iter().enumerate() {
        let path = dir.path().join(format!("corrupt-{i}"));
        let mut layout = Layout::new(&path);
        let d = layout.layer(&busybox_tar(), Comp::None);
        layout.finish(None);
        let mut bytes = fs::read(layout.blob_path(&d)).unwrap();
        bytes[offset] ^= 0xff;
        fs::write(layout.blob_path(&d), &bytes).unwrap();
        let err = store.import(&path, None).unwrap_err().to_string();
        assert!(
            err.contains(&format!("has digest {}", sha256(&bytes))) && err.contains(&d),
            "{err}"
        );
    }

    // A diff_id in the config that does not match the uncompressed layer.
    let path = dir.path().join("diffid");
    let mut layout = Layout::new(&path);
    layout.layer(&busybox_tar(), Comp::Gzip);
    layout.layers[0].1 = sha256(b"something else");
    layout.finish(None);
    let err = store.import(&path, None).unwrap_err().to_string();
    assert!(err.contains("diff_id"), "{err}");

    // A config blob that was altered after the manifest was written.
    let path = dir.path().join("config");
    let mut layout = Layout::new(&path);
    layout.layer(&changes_tar(), Comp::None);
    let manifest_digest = layout.finish(None);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.blob_path(&manifest_digest)).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let cfg_path = layout.blob_path(&config_digest);
    let mut cfg = fs::read(&cfg_path).unwrap();
    let pos = cfg.iter().position(|&b| b == b'/').unwrap();
    cfg[pos] = b'_';
    fs::write(&cfg_path, &cfg).unwrap();
    let err = store.import(&path, None).unwrap_err().to_string();
    assert!(
        err.contains("config") && err.contains("has digest"),
        "{err}"
    );

    // Not a layout at all.
    let err = store
        .import(&dir.path().join("nope"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");

    assert_sound(&root);
    assert_eq!(names(&root.join("images")), Vec::<String>::new());
    assert_eq!(names(&root.join("layers")), Vec::<String>::new());

    // The CLI reports the same error on one line and exits 1.
    let out = ferry(&root, &["image", "import", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("ferry: ") && stderr.contains("has digest"),
        "{stderr}"
    );
}
