//! `ferry inspect`: what a checkpoint archive holds, without restoring it. The archive is
//! verified by the same reader restore uses (into a scratch directory removed afterwards);
//! an untrusted signer is shown, not refused. Then the manifest, ferry's own dumps, CRIU's
//! images (through `criu_images`) and the rootfs diff are summed up as one `Inspection`.

use crate::archive::criu_images::{self as img, FileDesc};
use crate::archive::manifest::ImageRef;
use crate::archive::reader::{self, Trust};
use crate::checkpoint::export::ContainerConfig;
use crate::identity::{Identity, TrustStore};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Archive(#[from] reader::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("this host's identity: {0}")]
    Identity(#[from] crate::identity::Error),
}

fn io<T>(r: std::io::Result<T>, context: impl FnOnce() -> String) -> Result<T, Error> {
    r.map_err(|source| Error::Io {
        context: context(),
        source,
    })
}

/// Everything `ferry inspect` reports; `--format json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub container: String,
    pub image: Option<ImageRef>,
    pub source: Source,
    pub created: chrono::DateTime<chrono::Utc>,
    pub signer: Signer,
    pub integrity: Integrity,
    /// In tree order: a parent before its children.
    pub processes: Vec<Process>,
    pub memory: MemoryTotals,
    pub files: Vec<OpenFile>,
    pub rootfs: RootfsChanges,
    /// The files of the container's /dev/shm (`devshm-checkpoint.tar`); None when the
    /// archive does not carry it (CRIU's images hold it instead).
    pub dev_shm: Option<Vec<RootfsEntry>>,
    /// Images that could not be decoded (a newer CRIU, say): the rest is still shown.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub hostname: String,
    pub kernel: String,
    pub arch: String,
    pub ferry_version: String,
    pub criu_version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Signer {
    pub fingerprint: String,
    pub trusted: bool,
    /// "this host", the name given to `ferry trust add`, or the fingerprint's short form.
    pub trusted_as: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Integrity {
    /// Every digest and the signature checked (an inspection exists only when they hold).
    pub verified: bool,
    pub entries: usize,
    /// Sum of the entries' sizes, uncompressed.
    pub bytes: u64,
    /// "zstd", "gzip" or "none".
    pub compression: String,
    /// The archive file's size; None when read from a pipe.
    pub archive_bytes: Option<u64>,
    /// The archive format (manifest::FORMAT_VERSION when it was written): 3 lists the
    /// pages parts by an index per image, 2 lists each part in the manifest.
    pub format: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Process {
    /// Pids as the container saw them (its own pid namespace).
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    pub threads: Vec<u32>,
    /// The kernel's task name (`comm`, at most 15 bytes); CRIU keeps no argv outside memory.
    pub comm: String,
    pub state: String,
    pub memory: Option<ProcessMemory>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcessMemory {
    pub vmas: u32,
    pub mapped_bytes: u64,
    /// Pages whose content is in this checkpoint.
    pub pages: u64,
    /// Size of the `pages-<id>.img` holding them.
    pub pages_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemoryTotals {
    pub pages: u64,
    /// All `pages-*.img` files together.
    pub pages_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenFile {
    pub pid: u32,
    pub fd: u32,
    /// CRIU's file type: REG, PIPE, INETSK, UNIXSK, …
    #[serde(rename = "type")]
    pub fd_type: String,
    pub description: String,
    pub file: Option<FileDesc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RootfsChanges {
    /// False when the checkpoint was made with `--ignore-rootfs`.
    pub included: bool,
    /// The entries of `rootfs-diff.tar`: each path added or changed, in its final state.
    pub changed: Vec<RootfsEntry>,
    /// `deleted.files`.
    pub deleted: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RootfsEntry {
    pub path: String,
    /// file, dir, symlink, hardlink, fifo, char, block
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    pub link: Option<String>,
}

/// Remembers the first bytes read, to name the compression.
struct Head<R> {
    inner: R,
    head: Rc<RefCell<Vec<u8>>>,
}

impl<R: Read> Read for Head<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut head = self.head.borrow_mut();
        if head.len() < 4 {
            let want = (4 - head.len()).min(n);
            head.extend_from_slice(&buf[..want]);
        }
        Ok(n)
    }
}

/// Removes the scratch directory however inspection ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// Verifies and reads the archive at `path` ("-" for stdin), unpacking it under
/// `<storage>/work/` for the time it takes.
pub fn inspect(path: &Path, storage: &Path) -> Result<Inspection, Error> {
    let (input, archive_bytes): (Box<dyn Read>, _) = if path == Path::new("-") {
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Err(Error::Archive(reader::Error::NotAnArchive(
                "standard input is a terminal: `inspect -` reads the archive from a pipe or a \
                 redirect, or give the archive's file name"
                    .into(),
            )));
        }
        (Box::new(std::io::stdin()), None)
    } else {
        if path.is_dir() {
            return Err(Error::Archive(reader::Error::NotAnArchive(format!(
                "{} is a directory: inspect reads the archive file `ferry checkpoint -e` wrote",
                path.display()
            ))));
        }
        let f = io(std::fs::File::open(path), || {
            format!("open the archive {}", path.display())
        })?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let work = storage.join("work");
    io(std::fs::create_dir_all(&work), || {
        format!("create {}", work.display())
    })?;
    crate::archive::stage::sweep_stale(&work);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let scratch = Scratch(work.join(format!("inspect-{}-{nanos:x}", std::process::id())));
    let head = Rc::new(RefCell::new(Vec::new()));
    let reader = Head {
        inner: input,
        head: head.clone(),
    };
    // Any valid signature: who signed is reported below, not enforced.
    let unpacked = reader::unpack_without_page_data(reader, &scratch.0, Trust::AnySigner)?;
    let own = Identity::load_or_create(storage)?.fingerprint();
    let trusted_as = if unpacked.signer == own {
        Some("this host".to_string())
    } else {
        TrustStore::open(storage)
            .is_trusted(&unpacked.signer)?
            .map(|s| {
                if s.name.is_empty() {
                    s.fingerprint.short().to_string()
                } else {
                    s.name
                }
            })
    };
    let compression = match head.borrow().as_slice() {
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [0x1f, 0x8b, ..] => "gzip",
        _ => "none",
    };
    let m = &unpacked.manifest;
    let totals = unpacked.totals();
    let mut warnings = Vec::new();
    let config: Option<ContainerConfig> = std::fs::read(unpacked.dir.join("config.dump"))
        .ok()
        .and_then(|b| match serde_json::from_slice(&b) {
            Ok(c) => Some(c),
            Err(e) => {
                warnings.push(format!("config.dump: {e}"));
                None
            }
        });
    let images = unpacked.dir.join("checkpoint");
    let processes = processes(&images, &mut warnings);
    let files = open_files(&images, &processes, &mut warnings);
    let mut memory = MemoryTotals {
        pages: processes
            .iter()
            .filter_map(|p| p.memory.map(|m| m.pages))
            .sum(),
        pages_bytes: 0,
    };
    for f in crate::archive::criu_images::pages_files(&images).unwrap_or_default() {
        memory.pages_bytes += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
    }
    let rootfs = rootfs_changes(&unpacked.dir, config.as_ref(), &mut warnings);
    let dev_shm = dev_shm(&unpacked.dir, &mut warnings);
    Ok(Inspection {
        container: m.container.clone(),
        image: m.image.clone(),
        source: Source {
            hostname: m.source.hostname.clone(),
            kernel: m.source.kernel.clone(),
            arch: m.source.arch.clone(),
            ferry_version: m.source.ferry_version.clone(),
            criu_version: m.source.criu_version.clone(),
        },
        created: m.created,
        signer: Signer {
            fingerprint: unpacked.signer.0.clone(),
            trusted: trusted_as.is_some(),
            trusted_as,
        },
        integrity: Integrity {
            verified: true,
            entries: totals.0,
            bytes: totals.1,
            compression: compression.into(),
            archive_bytes,
            format: m.format,
        },
        processes,
        memory,
        files,
        rootfs,
        dev_shm,
        warnings,
    })
}

/// Reads one image, turning a missing file into None and a bad one into a warning.
fn image<T>(
    dir: &Path,
    name: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, String>,
    warnings: &mut Vec<String>,
) -> Option<T> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    match decode(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            warnings.push(format!("checkpoint/{name}: {e}"));
            None
        }
    }
}

/// The process tree from `pstree.img`, each task with its `core`, `mm` and `pagemap`.
fn processes(dir: &Path, warnings: &mut Vec<String>) -> Vec<Process> {
    let Some(tree) = image(dir, "pstree.img", img::decode_pstree, warnings) else {
        warnings.push("checkpoint/pstree.img is missing: no process tree".into());
        return vec![];
    };
    let mut out = Vec::new();
    for p in tree {
        let core = image(
            dir,
            &format!("core-{}.img", p.pid),
            img::decode_core,
            warnings,
        );
        let mm = image(dir, &format!("mm-{}.img", p.pid), img::decode_mm, warnings);
        let pagemap = image(
            dir,
            &format!("pagemap-{}.img", p.pid),
            img::decode_pagemap,
            warnings,
        );
        let memory = mm.map(|mm| {
            let (pages, pages_bytes) = match &pagemap {
                Some(pm) => (
                    pm.entries
                        .iter()
                        .filter(|e| e.present())
                        .map(|e| u64::from(e.nr_pages))
                        .sum(),
                    std::fs::metadata(dir.join(format!("pages-{}.img", pm.pages_id)))
                        .map(|m| m.len())
                        .unwrap_or(0),
                ),
                None => (0, 0),
            };
            ProcessMemory {
                vmas: mm.vmas,
                mapped_bytes: mm.mapped_bytes,
                pages,
                pages_bytes,
            }
        });
        out.push(Process {
            pid: p.pid,
            ppid: p.ppid,
            pgid: p.pgid,
            sid: p.sid,
            threads: p.threads,
            comm: core.as_ref().map(|c| c.comm.clone()).unwrap_or_default(),
            state: core
                .as_ref()
                .map(|c| c.state_name())
                .unwrap_or("unknown")
                .into(),
            memory,
        });
    }
    out
}

/// `pid fd type description` for every descriptor: the task's `files_id` (from
/// `ids-<pid>.img`, or its core in older images) names its `fdinfo-<files_id>.img`, whose
/// entries point into `files.img`.
fn open_files(dir: &Path, procs: &[Process], warnings: &mut Vec<String>) -> Vec<OpenFile> {
    let files: BTreeMap<u32, img::FileEntry> = image(dir, "files.img", img::decode_files, warnings)
        .unwrap_or_default()
        .into_iter()
        .map(|f| (f.id, f))
        .collect();
    let mut out = Vec::new();
    for p in procs {
        let ids = image(
            dir,
            &format!("ids-{}.img", p.pid),
            img::decode_ids,
            warnings,
        )
        .or_else(|| {
            image(
                dir,
                &format!("core-{}.img", p.pid),
                img::decode_core,
                warnings,
            )
            .and_then(|c| c.ids)
        });
        let Some(ids) = ids else { continue };
        let fdinfo = image(
            dir,
            &format!("fdinfo-{}.img", ids.files_id),
            img::decode_fdinfo,
            warnings,
        )
        .unwrap_or_default();
        for fd in fdinfo {
            let file = files.get(&fd.id);
            out.push(OpenFile {
                pid: p.pid,
                fd: fd.fd,
                fd_type: img::fd_type_name(fd.fd_type).into(),
                description: file.map(|f| describe(&f.desc, &files)).unwrap_or_default(),
                file: file.map(|f| f.desc.clone()),
            });
        }
    }
    out
}

fn describe(desc: &FileDesc, files: &BTreeMap<u32, img::FileEntry>) -> String {
    let endpoint = |family: u32, addr: &str, port: u32| {
        if family == 10 {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        }
    };
    match desc {
        FileDesc::Reg { path, .. } => path.clone(),
        FileDesc::Inet {
            family,
            sk_type,
            proto,
            state,
            src_addr,
            src_port,
            dst_addr,
            dst_port,
        } => {
            let name = match (*sk_type, *proto) {
                (1, 6) => "tcp",
                (2, 17) => "udp",
                (_, p) => img::ip_proto_name(p),
            };
            let v = if *family == 10 { "6" } else { "" };
            let mut s = format!("{name}{v}{}", state_word(*sk_type, *state));
            let _ = write!(s, " {}", endpoint(*family, src_addr, *src_port));
            if *dst_port != 0 {
                let _ = write!(s, " -> {}", endpoint(*family, dst_addr, *dst_port));
            }
            s
        }
        FileDesc::Unix {
            sk_type,
            state,
            name,
            peer,
        } => {
            let mut s = format!(
                "{}{}",
                img::sock_type_name(*sk_type),
                state_word(*sk_type, *state)
            );
            if !name.is_empty() {
                let _ = write!(s, " {name}");
            }
            if *peer != 0 {
                let _ = write!(s, " (peer {peer})");
            }
            s
        }
        FileDesc::Pipe { pipe_id } => format!("pipe:[{pipe_id}]"),
        FileDesc::Fifo { pipe_id, regf_id } => match files.get(regf_id).map(|f| &f.desc) {
            Some(FileDesc::Reg { path, .. }) => format!("{path} (fifo:[{pipe_id}])"),
            _ => format!("fifo:[{pipe_id}]"),
        },
        FileDesc::Other => String::new(),
    }
}

/// " listen", " established", …; nothing for an unconnected datagram socket, which the
/// kernel keeps in TCP_CLOSE whether bound or not.
fn state_word(sk_type: u32, state: u32) -> String {
    if sk_type == 2 && state == 7 {
        String::new()
    } else {
        format!(" {}", img::sock_state_name(state))
    }
}

fn rootfs_changes(
    dir: &Path,
    config: Option<&ContainerConfig>,
    warnings: &mut Vec<String>,
) -> RootfsChanges {
    let tar_path = dir.join("rootfs-diff.tar");
    let mut changes = RootfsChanges {
        included: config
            .map(|c| c.rootfs_included)
            .unwrap_or(tar_path.exists()),
        changed: vec![],
        deleted: vec![],
    };
    if let Ok(b) = std::fs::read(dir.join("deleted.files")) {
        match serde_json::from_slice::<Vec<String>>(&b) {
            Ok(d) => changes.deleted = d,
            Err(e) => warnings.push(format!("deleted.files: {e}")),
        }
    }
    match std::fs::File::open(&tar_path) {
        Ok(f) => match tar_entries(f) {
            Ok(e) => changes.changed = e,
            Err(e) => warnings.push(format!("rootfs-diff.tar: {e}")),
        },
        Err(_) => return changes,
    }
    changes
}

/// The entries of a tar of files (rootfs diff, /dev/shm), each as an absolute path.
fn tar_entries(f: std::fs::File) -> std::io::Result<Vec<RootfsEntry>> {
    let mut out = vec![];
    let mut tar = tar::Archive::new(std::io::BufReader::new(f));
    for entry in tar.entries()? {
        let entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").trim_end_matches('/');
        let kind = entry.header().entry_type();
        let kind_name = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => "file",
            tar::EntryType::Directory => "dir",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hardlink",
            tar::EntryType::Fifo => "fifo",
            tar::EntryType::Char => "char",
            tar::EntryType::Block => "block",
            _ => "other",
        };
        out.push(RootfsEntry {
            path: format!("/{}", if name == "." { "" } else { name }),
            kind: kind_name.into(),
            size: if kind_name == "file" { entry.size() } else { 0 },
            link: entry.link_name()?.map(|l| l.to_string_lossy().into_owned()),
        });
    }
    Ok(out)
}

/// `devshm-checkpoint.tar`, its root left out and its paths under /dev/shm.
fn dev_shm(dir: &Path, warnings: &mut Vec<String>) -> Option<Vec<RootfsEntry>> {
    let f = std::fs::File::open(dir.join("devshm-checkpoint.tar")).ok()?;
    match tar_entries(f) {
        Ok(entries) => Some(
            entries
                .into_iter()
                .filter(|e| e.path != "/")
                .map(|mut e| {
                    e.path = format!("/dev/shm{}", e.path);
                    e
                })
                .collect(),
        ),
        Err(e) => {
            warnings.push(format!("devshm-checkpoint.tar: {e}"));
            Some(vec![])
        }
    }
}

/// 1536 → "1.5 KiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Rows of cells, each column padded to its widest cell, two spaces apart, indented.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::from("  ");
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

impl Inspection {
    /// The text `ferry inspect` prints: a header of facts, then the process tree, memory,
    /// open files and rootfs changes as short aligned sections.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let s = &self.source;
        let signer = match &self.signer.trusted_as {
            Some(who) => format!("{}  trusted ({who})", self.signer.fingerprint),
            None => format!("{}  not trusted", self.signer.fingerprint),
        };
        let integrity = format!(
            "all {} entries verified, {}{}",
            self.integrity.entries,
            human(self.integrity.bytes),
            match (
                self.integrity.archive_bytes,
                self.integrity.compression.as_str()
            ) {
                (Some(a), "none") => format!(
                    " (archive {}, uncompressed, format {})",
                    human(a),
                    self.integrity.format
                ),
                (Some(a), c) => format!(
                    " (archive {}, {c}, format {})",
                    human(a),
                    self.integrity.format
                ),
                (None, c) => format!(" ({c}, format {})", self.integrity.format),
            }
        );
        let image = match &self.image {
            Some(i) => format!("{}  {}", i.name, i.digest),
            None => "(not from an image)".into(),
        };
        let criu = if s.criu_version.is_empty() {
            "?"
        } else {
            &s.criu_version
        };
        o.push_str(&table(&[
            vec!["Container".into(), self.container.clone()],
            vec!["Image".into(), image],
            vec![
                "Source".into(),
                format!(
                    "{}, Linux {} {}, ferry {}, CRIU {criu}",
                    s.hostname, s.kernel, s.arch, s.ferry_version
                ),
            ],
            vec![
                "Created".into(),
                self.created.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            ],
            vec!["Signer".into(), signer],
            vec!["Integrity".into(), integrity],
        ]));

        let _ = writeln!(o, "\nProcesses ({})", self.processes.len());
        let mut rows = vec![vec![
            "PID".into(),
            "PPID".into(),
            "STATE".into(),
            "THREADS".into(),
            "COMMAND".into(),
        ]];
        for (p, depth, last) in self.tree() {
            let branch = if depth == 0 {
                String::new()
            } else {
                format!(
                    "{}{}",
                    "   ".repeat(depth - 1),
                    if last { "└─ " } else { "├─ " }
                )
            };
            rows.push(vec![
                p.pid.to_string(),
                p.ppid.to_string(),
                p.state.clone(),
                p.threads.len().max(1).to_string(),
                format!("{branch}{}", p.comm),
            ]);
        }
        o.push_str(&table(&rows));

        let _ = writeln!(
            o,
            "\nMemory (pages dumped: {}, {} in pages-*.img)",
            self.memory.pages,
            human(self.memory.pages_bytes)
        );
        let mut rows = vec![vec![
            "PID".into(),
            "COMMAND".into(),
            "VMAS".into(),
            "MAPPED".into(),
            "PAGES".into(),
            "DUMPED".into(),
        ]];
        for p in &self.processes {
            if let Some(m) = p.memory {
                rows.push(vec![
                    p.pid.to_string(),
                    p.comm.clone(),
                    m.vmas.to_string(),
                    human(m.mapped_bytes),
                    m.pages.to_string(),
                    human(m.pages_bytes),
                ]);
            }
        }
        o.push_str(&table(&rows));

        let _ = writeln!(o, "\nOpen files ({})", self.files.len());
        let mut rows = vec![vec![
            "PID".into(),
            "FD".into(),
            "TYPE".into(),
            "DESCRIPTION".into(),
        ]];
        for f in &self.files {
            rows.push(vec![
                f.pid.to_string(),
                f.fd.to_string(),
                f.fd_type.clone(),
                f.description.clone(),
            ]);
        }
        o.push_str(&table(&rows));

        let r = &self.rootfs;
        if !r.included {
            o.push_str(
                "\nRootfs changes: not in the archive (checkpointed with --ignore-rootfs)\n",
            );
        } else {
            let _ = writeln!(
                o,
                "\nRootfs changes ({} added or changed, {} deleted)",
                r.changed.len(),
                r.deleted.len()
            );
            let mut rows = vec![];
            for e in &r.changed {
                let mut path = e.path.clone();
                if let Some(l) = &e.link {
                    let _ = write!(path, " -> {l}");
                }
                let size = if e.kind == "file" {
                    human(e.size)
                } else {
                    String::new()
                };
                rows.push(vec!["A/C".into(), e.kind.clone(), size, path]);
            }
            for d in &r.deleted {
                rows.push(vec!["D".into(), String::new(), String::new(), d.clone()]);
            }
            o.push_str(&table(&rows));
        }
        if let Some(shm) = &self.dev_shm {
            let bytes: u64 = shm.iter().map(|e| e.size).sum();
            let _ = writeln!(o, "\n/dev/shm ({} entries, {})", shm.len(), human(bytes));
            let rows: Vec<Vec<String>> = shm
                .iter()
                .map(|e| {
                    let size = if e.kind == "file" {
                        human(e.size)
                    } else {
                        String::new()
                    };
                    vec![e.kind.clone(), size, e.path.clone()]
                })
                .collect();
            o.push_str(&table(&rows));
        }
        for w in &self.warnings {
            let _ = writeln!(o, "\nwarning: {w}");
        }
        o
    }

    /// Processes depth first from the roots, with their depth and whether each is the last
    /// child of its parent.
    fn tree(&self) -> Vec<(&Process, usize, bool)> {
        let pids: std::collections::HashSet<u32> = self.processes.iter().map(|p| p.pid).collect();
        let mut out = Vec::new();
        fn walk<'a>(
            all: &'a [Process],
            parent: u32,
            depth: usize,
            out: &mut Vec<(&'a Process, usize, bool)>,
        ) {
            let kids: Vec<&Process> = all
                .iter()
                .filter(|p| p.ppid == parent && p.pid != parent)
                .collect();
            for (i, k) in kids.iter().enumerate() {
                out.push((k, depth, i + 1 == kids.len()));
                walk(all, k.pid, depth + 1, out);
            }
        }
        for root in self.processes.iter().filter(|p| !pids.contains(&p.ppid)) {
            out.push((root, 0, true));
            walk(&self.processes, root.pid, 1, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::{FORMAT_VERSION, Manifest, SourceHost};
    use crate::archive::writer::{ArchiveWriter, Compression};

    const FIXTURES: &[&str] = &[
        "pstree.img",
        "core-1.img",
        "core-3.img",
        "core-4.img",
        "core-5.img",
        "ids-1.img",
        "mm-1.img",
        "pagemap-1.img",
        "files.img",
        "fdinfo-2.img",
    ];

    /// An archive of the real CRIU images under testdata, a rootfs diff and a config.dump,
    /// signed by `id`.
    fn archive(id: &Identity) -> Vec<u8> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/archive/testdata/criu");
        let mut w = ArchiveWriter::new(Vec::new(), Compression::Zstd).unwrap();
        for name in FIXTURES {
            w.add_file(&format!("checkpoint/{name}"), &dir.join(name))
                .unwrap();
        }
        w.add_bytes("checkpoint/pages-1.img", &vec![0u8; 73728])
            .unwrap();
        let mut diff = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(8);
        h.set_mode(0o644);
        h.set_cksum();
        diff.append_data(&mut h, "etc/motd", &b"changed\n"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        diff.append_link(&mut h, "etc/link", "/etc/motd").unwrap();
        w.add_bytes("rootfs-diff.tar", &diff.into_inner().unwrap())
            .unwrap();
        w.add_bytes("deleted.files", br#"["/etc/passwd"]"#).unwrap();
        let config = ContainerConfig {
            id: "c1".into(),
            image: Some(ImageRef {
                name: "bb:latest".into(),
                digest: "sha256:ab".into(),
            }),
            created: chrono::Utc::now(),
            rootfs_included: true,
        };
        w.add_bytes("config.dump", &serde_json::to_vec(&config).unwrap())
            .unwrap();
        let m = Manifest {
            format: FORMAT_VERSION,
            created: chrono::Utc::now(),
            container: "c1".into(),
            image: config.image.clone(),
            source: SourceHost::this_host("4.1.1".into()),
            entries: vec![],
            annotations: Default::default(),
        };
        w.finish(m, id).unwrap()
    }

    fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
        let p = dir.join("a.tar.zst");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn inspects_an_archive_of_real_images() {
        let d = tempfile::tempdir().unwrap();
        let storage = d.path().join("storage");
        let id = Identity::load_or_create(&storage).unwrap();
        let path = write(d.path(), &archive(&id));
        let i = inspect(&path, &storage).unwrap();
        assert!(i.warnings.is_empty(), "{:?}", i.warnings);
        assert_eq!(i.container, "c1");
        assert_eq!(i.signer.trusted_as.as_deref(), Some("this host"));
        assert_eq!(i.integrity.compression, "zstd");
        assert_eq!(i.integrity.entries, FIXTURES.len() + 4);
        assert_eq!(i.integrity.format, crate::archive::manifest::FORMAT_VERSION);
        let says = format!("format {}", crate::archive::manifest::FORMAT_VERSION);
        assert!(i.render_text().contains(&says), "{}", i.render_text());
        let tree: Vec<(u32, &str)> = i
            .processes
            .iter()
            .map(|p| (p.pid, p.comm.as_str()))
            .collect();
        assert_eq!(tree, [(1, "sh"), (3, "syslogd"), (4, "sleep"), (5, "cat")]);
        let sh = i.processes[0].memory.unwrap();
        assert_eq!((sh.pages, sh.pages_bytes), (18, 73728));
        assert_eq!(i.memory.pages_bytes, 73728);
        let held = i.files.iter().find(|f| f.pid == 1 && f.fd == 3).unwrap();
        assert_eq!(
            (held.fd_type.as_str(), held.description.as_str()),
            ("REG", "/tmp/held.txt")
        );
        assert_eq!(i.rootfs.deleted, ["/etc/passwd"]);
        assert_eq!(i.rootfs.changed[0].path, "/etc/motd");
        assert_eq!(i.rootfs.changed[1].link.as_deref(), Some("/etc/motd"));
        let text = i.render_text();
        assert!(text.contains("trusted (this host)"), "{text}");
        assert!(text.contains("└─ cat"), "{text}");
        // The scratch directory is gone.
        let left: Vec<_> = std::fs::read_dir(storage.join("work")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn another_signer_is_shown_not_refused() {
        let d = tempfile::tempdir().unwrap();
        let theirs = Identity::load_or_create(&d.path().join("theirs")).unwrap();
        let path = write(d.path(), &archive(&theirs));
        let ours = d.path().join("ours");
        let i = inspect(&path, &ours).unwrap();
        assert!(!i.signer.trusted);
        assert!(i.render_text().contains("not trusted"));
        TrustStore::open(&ours)
            .add(&theirs.fingerprint(), "host-b")
            .unwrap();
        let i = inspect(&path, &ours).unwrap();
        assert_eq!(i.signer.trusted_as.as_deref(), Some("host-b"));
    }

    #[test]
    fn a_damaged_archive_is_an_error_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let storage = d.path().join("s");
        let id = Identity::load_or_create(&storage).unwrap();
        let mut bytes = archive(&id);
        bytes.truncate(bytes.len() / 2);
        let e = inspect(&write(d.path(), &bytes), &storage).unwrap_err();
        assert!(matches!(e, Error::Archive(_)), "{e}");
        let left: Vec<_> = std::fs::read_dir(storage.join("work")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn sockets_read_as_ss_would_name_them() {
        let files = BTreeMap::new();
        let inet = |family, src: &str, dst: &str, dst_port, state| FileDesc::Inet {
            family,
            sk_type: 1,
            proto: 6,
            state,
            src_addr: src.into(),
            src_port: 8080,
            dst_addr: dst.into(),
            dst_port,
        };
        assert_eq!(
            describe(&inet(2, "0.0.0.0", "0.0.0.0", 0, 10), &files),
            "tcp listen 0.0.0.0:8080"
        );
        assert_eq!(
            describe(&inet(10, "::", "::", 0, 10), &files),
            "tcp6 listen [::]:8080"
        );
        assert_eq!(
            describe(&inet(2, "10.0.0.1", "10.0.0.2", 5555, 1), &files),
            "tcp established 10.0.0.1:8080 -> 10.0.0.2:5555"
        );
        let unix = |sk_type, state, name: &str, peer| FileDesc::Unix {
            sk_type,
            state,
            name: name.into(),
            peer,
        };
        assert_eq!(
            describe(&unix(2, 7, "/dev/log", 0), &files),
            "dgram /dev/log"
        );
        assert_eq!(
            describe(&unix(1, 10, "@ctl", 0), &files),
            "stream listen @ctl"
        );
        assert_eq!(
            describe(&unix(1, 1, "", 42), &files),
            "stream established (peer 42)"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
