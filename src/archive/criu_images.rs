//! Just enough of CRIU's image files to tell what a checkpoint holds: the process tree, each
//! task's name and state, its memory, and its open files and sockets. A small hand-written
//! protobuf reader decodes only the fields `ferry inspect` shows and skips the rest, so a
//! newer CRIU that adds fields still reads. docs/inspect.md lists every field number used
//! and the `images/*.proto` it comes from.

use serde::Serialize;

/// CRIU's `images/magic.h`: most images start with one of these two, then their own magic.
const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

pub const PSTREE_MAGIC: u32 = 0x5027_3030;
pub const CORE_MAGIC: u32 = 0x5505_3847;
pub const IDS_MAGIC: u32 = 0x5443_2030;
pub const MM_MAGIC: u32 = 0x5749_2820;
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;
pub const FDINFO_MAGIC: u32 = 0x5621_3732;
pub const FILES_MAGIC: u32 = 0x5630_3138;
pub const NETDEV_MAGIC: u32 = 0x5737_3951;

/// `nd_type` of `images/netdev.proto`: the loopback device.
pub const ND_LOOPBACK: u32 = 1;

/// Why an image could not be read; `image` names the file.
#[derive(Debug, thiserror::Error)]
#[error("{image}: {what}")]
pub struct ImageError {
    pub image: String,
    pub what: String,
}

type Result<T, E = String> = std::result::Result<T, E>;

// ---- the protobuf wire format ------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl Value<'_> {
    fn u64(self) -> u64 {
        match self {
            Value::Varint(v) | Value::Fixed64(v) => v,
            Value::Fixed32(v) => v.into(),
            Value::Bytes(_) => 0,
        }
    }

    fn u32(self) -> u32 {
        self.u64() as u32
    }
}

/// The fields of one message: (field number, value), in wire order.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let item = self.field();
        if item.is_err() {
            self.0 = &[]; // one error ends the message
        }
        Some(item)
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Result<(u32, Value<'a>)> {
        let key = varint(&mut self.0)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut self.0)?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            2 => {
                let len = varint(&mut self.0)? as usize;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            t => return Err(format!("unsupported protobuf wire type {t}")),
        };
        Ok(((key >> 3) as u32, value))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let b = self
            .0
            .get(..n)
            .ok_or("a field runs past the end of its message")?;
        self.0 = &self.0[n..];
        Ok(b)
    }
}

fn varint(b: &mut &[u8]) -> Result<u64> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *b = &b[i + 1..];
            return Ok(v);
        }
    }
    Err("bad varint".into())
}

/// A repeated scalar, sent either one value per field or packed into one length field:
/// proto2 writers use the first, but a reader must accept both.
fn push_repeated(out: &mut Vec<u32>, v: Value) -> Result<()> {
    match v {
        Value::Bytes(mut packed) => {
            while !packed.is_empty() {
                out.push(varint(&mut packed)? as u32);
            }
        }
        other => out.push(other.u32()),
    }
    Ok(())
}

fn string(v: Value) -> String {
    match v {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

/// A nested message's bytes (an empty message when the field is not length-delimited).
fn message(v: Value<'_>) -> &[u8] {
    match v {
        Value::Bytes(b) => b,
        _ => &[],
    }
}

// ---- image files ---------------------------------------------------------------------------

/// The entries of an image: checks the magic (`IMG_COMMON_MAGIC`/`IMG_SERVICE_MAGIC`
/// followed by the image's own, or the image's own alone, as CRIU's `crit` reads them), then
/// splits the rest into messages, each a little-endian u32 size and that many bytes.
pub fn entries(bytes: &[u8], magic: u32) -> Result<Vec<Vec<u8>>> {
    let mut r = ImageReader::new(bytes, magic)?;
    let mut out = vec![];
    while let Some(e) = r.next_entry()? {
        out.push(e);
    }
    Ok(out)
}

/// An image read one entry at a time ([`entries`] without holding it all): for an image
/// that grows with the container, a pagemap.
struct ImageReader<R> {
    r: std::io::BufReader<R>,
    /// Bytes read so far, for errors.
    at: u64,
}

impl<R: std::io::Read> ImageReader<R> {
    fn new(r: R, magic: u32) -> Result<ImageReader<R>> {
        let mut it = ImageReader {
            r: std::io::BufReader::with_capacity(64 << 10, r),
            at: 0,
        };
        let mut found = it.word()?.ok_or("truncated: 0 bytes")?;
        if found == IMG_COMMON_MAGIC || found == IMG_SERVICE_MAGIC {
            found = it.word()?.ok_or("truncated: 4 bytes")?;
        }
        if found != magic {
            return Err(format!("magic {found:#010x}, expected {magic:#010x}"));
        }
        Ok(it)
    }

    /// The next little-endian u32, None at the end.
    fn word(&mut self) -> Result<Option<u32>> {
        let mut b = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match std::io::Read::read(&mut self.r, &mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(format!("truncated: {} bytes", self.at + got as u64)),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        self.at += 4;
        Ok(Some(u32::from_le_bytes(b)))
    }

    fn next_entry(&mut self) -> Result<Option<Vec<u8>>> {
        let at = self.at;
        let Some(len) = self.word()? else {
            return Ok(None);
        };
        let mut entry = vec![0u8; len as usize];
        std::io::Read::read_exact(&mut self.r, &mut entry)
            .map_err(|_| format!("an entry of {len} bytes at offset {at} is truncated"))?;
        self.at += u64::from(len);
        Ok(Some(entry))
    }
}

/// The links of a network namespace (`netdev-<ns id>.img`): each `net_device_entry`'s
/// type (field 1) and name (field 5).
pub fn decode_netdev(bytes: &[u8]) -> Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for entry in entries(bytes, NETDEV_MAGIC)? {
        let (mut typ, mut name) = (0, String::new());
        for f in Fields(&entry) {
            match f? {
                (1, v) => typ = v.u32(),
                (5, v) => name = string(v),
                _ => {}
            }
        }
        out.push((typ, name));
    }
    Ok(out)
}

/// One task of `pstree.img` (`pstree_entry`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PstreeEntry {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    pub threads: Vec<u32>,
}

pub fn decode_pstree(bytes: &[u8]) -> Result<Vec<PstreeEntry>> {
    let mut out = Vec::new();
    for entry in entries(bytes, PSTREE_MAGIC)? {
        let mut p = PstreeEntry::default();
        for f in Fields(&entry) {
            match f? {
                (1, v) => p.pid = v.u32(),
                (2, v) => p.ppid = v.u32(),
                (3, v) => p.pgid = v.u32(),
                (4, v) => p.sid = v.u32(),
                (5, v) => push_repeated(&mut p.threads, v)?,
                _ => {}
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// What `core-<pid>.img` says about a task (`core_entry.tc`, a `task_core_entry`), and its
/// `ids` when the core holds them (older CRIU; newer ones write `ids-<pid>.img`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskCore {
    pub comm: String,
    /// CRIU's `task_state`: 1 alive, 2 dead, 3 stopped, 6 zombie (compel's `task-state.h`).
    pub state: u32,
    pub exit_code: u32,
    #[serde(skip)]
    pub ids: Option<TaskIds>,
}

impl TaskCore {
    pub fn state_name(&self) -> &'static str {
        match self.state {
            1 => "alive",
            2 => "dead",
            3 => "stopped",
            6 => "zombie",
            0x80 => "helper",
            _ => "unknown",
        }
    }
}

pub fn decode_core(bytes: &[u8]) -> Result<TaskCore> {
    let entry = entries(bytes, CORE_MAGIC)?
        .into_iter()
        .next()
        .ok_or("no core entry")?;
    let mut core = TaskCore::default();
    for f in Fields(&entry) {
        match f? {
            (3, tc) => {
                for f in Fields(message(tc)) {
                    match f? {
                        (1, v) => core.state = v.u32(),
                        (2, v) => core.exit_code = v.u32(),
                        (6, v) => core.comm = string(v),
                        _ => {}
                    }
                }
            }
            (4, ids) => core.ids = Some(ids_entry(message(ids))?),
            _ => {}
        }
    }
    Ok(core)
}

/// `task_kobj_ids_entry`: which shared objects a task uses. `files_id` names its
/// `fdinfo-<files_id>.img`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TaskIds {
    pub vm_id: u32,
    pub files_id: u32,
}

fn ids_entry(b: &[u8]) -> Result<TaskIds> {
    let mut ids = TaskIds::default();
    for f in Fields(b) {
        match f? {
            (1, v) => ids.vm_id = v.u32(),
            (2, v) => ids.files_id = v.u32(),
            _ => {}
        }
    }
    Ok(ids)
}

pub fn decode_ids(bytes: &[u8]) -> Result<TaskIds> {
    ids_entry(entries(bytes, IDS_MAGIC)?.first().ok_or("no ids entry")?)
}

/// `mm-<pid>.img` summed up: the task's mappings (`mm_entry.vmas`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MmSummary {
    pub vmas: u32,
    /// The sum of `end - start` over the mappings: the address space, not what was dumped.
    pub mapped_bytes: u64,
}

pub fn decode_mm(bytes: &[u8]) -> Result<MmSummary> {
    let vmas = decode_vmas(bytes)?;
    Ok(MmSummary {
        vmas: vmas.len() as u32,
        mapped_bytes: vmas.iter().map(|v| v.end.saturating_sub(v.start)).sum(),
    })
}

/// One mapping of `mm-<pid>.img` (`vma_entry`): its bounds and CRIU's `VMA_*` status bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub status: u32,
}

/// The task's mappings (`mm_entry.vmas`), in the image's order.
pub fn decode_vmas(bytes: &[u8]) -> Result<Vec<Vma>> {
    let entry = entries(bytes, MM_MAGIC)?
        .into_iter()
        .next()
        .ok_or("no mm entry")?;
    let mut out = vec![];
    for f in Fields(&entry) {
        if let (14, vma) = f? {
            let mut v = Vma::default();
            for f in Fields(message(vma)) {
                match f? {
                    (1, x) => v.start = x.u64(),
                    (2, x) => v.end = x.u64(),
                    (7, x) => v.status = x.u32(),
                    _ => {}
                }
            }
            out.push(v);
        }
    }
    Ok(out)
}

/// One run of pages (`pagemap_entry`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PagemapEntry {
    pub vaddr: u64,
    pub nr_pages: u32,
    pub in_parent: bool,
    /// `PE_PARENT` 1, `PE_LAZY` 2, `PE_PRESENT` 4 (criu/include/pagemap.h); absent in
    /// images older than the field, where `in_parent` alone says where the pages are.
    pub flags: Option<u32>,
}

const PE_PRESENT: u32 = 1 << 2;

impl PagemapEntry {
    /// Whether the pages' bytes are in this checkpoint's `pages-<id>.img`.
    pub fn present(&self) -> bool {
        match self.flags {
            Some(f) => f & PE_PRESENT != 0,
            None => !self.in_parent,
        }
    }

    /// The bytes the entry covers.
    pub fn bytes(&self) -> u64 {
        u64::from(self.nr_pages) * PAGE
    }
}

/// The entries whose pages are in the pages file, each with the offset there of its first
/// byte: the file holds them one after another, in the pagemap's order.
pub fn in_pages_file(entries: &[PagemapEntry]) -> impl Iterator<Item = (u64, &PagemapEntry)> {
    entries
        .iter()
        .filter(|e| e.present())
        .scan(0u64, |file_off, e| {
            let at = *file_off;
            *file_off += e.bytes();
            Some((at, e))
        })
}

/// `pagemap-<pid>.img`: a `pagemap_head` naming the `pages-<pages_id>.img` that holds the
/// bytes, then the runs in address order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pagemap {
    pub pages_id: u32,
    pub entries: Vec<PagemapEntry>,
}

/// A pagemap, each run of entries that continue one another (the next page, the same
/// flags) made one: CRIU sends a run per pipe buffer, about one per MiB of contiguous
/// memory, and a restore that kept them all would grow with the container. The pages'
/// order in `pages-<id>.img` is the entries' order, which merging keeps.
pub fn decode_pagemap(bytes: &[u8]) -> Result<Pagemap> {
    read_pagemap(bytes)
}

/// [`decode_pagemap`] of an image read one entry at a time, never whole.
pub fn read_pagemap(r: impl std::io::Read) -> Result<Pagemap> {
    let mut r = ImageReader::new(r, PAGEMAP_MAGIC)?;
    let head = r.next_entry()?.ok_or("no pagemap head")?;
    let mut pm = Pagemap::default();
    for f in Fields(&head) {
        if let (1, v) = f? {
            pm.pages_id = v.u32();
        }
    }
    while let Some(entry) = r.next_entry()? {
        let mut e = PagemapEntry::default();
        for f in Fields(&entry) {
            match f? {
                (1, v) => e.vaddr = v.u64(),
                (2, v) => e.nr_pages = v.u32(),
                (3, v) => e.in_parent = v.u64() != 0,
                (4, v) => e.flags = Some(v.u32()),
                _ => {}
            }
        }
        match pm.entries.last_mut() {
            Some(last)
                if last.vaddr + last.bytes() == e.vaddr
                    && (last.in_parent, last.flags) == (e.in_parent, e.flags)
                    && last.nr_pages.checked_add(e.nr_pages).is_some() =>
            {
                last.nr_pages += e.nr_pages
            }
            _ => pm.entries.push(e),
        }
    }
    Ok(pm)
}

/// The page size CRIU's pagemaps count in (x86-64, arm64 with 4 KiB pages).
const PAGE: u64 = 4096;

/// CRIU's `fd_types` (fdinfo.proto).
pub fn fd_type_name(t: u32) -> &'static str {
    match t {
        1 => "REG",
        2 => "PIPE",
        3 => "FIFO",
        4 => "INETSK",
        5 => "UNIXSK",
        6 => "EVENTFD",
        7 => "EVENTPOLL",
        8 => "INOTIFY",
        9 => "SIGNALFD",
        10 => "PACKETSK",
        11 => "TTY",
        12 => "FANOTIFY",
        13 => "NETLINKSK",
        14 => "NS",
        15 => "TUNF",
        16 => "EXT",
        17 => "TIMERFD",
        18 => "MEMFD",
        19 => "BPFMAP",
        20 => "PIDFD",
        _ => "UND",
    }
}

/// One descriptor of `fdinfo-<files_id>.img` (`fdinfo_entry`): fd `fd` is file `id` of
/// `files.img`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FdinfoEntry {
    pub id: u32,
    pub flags: u32,
    pub fd_type: u32,
    pub fd: u32,
}

pub fn decode_fdinfo(bytes: &[u8]) -> Result<Vec<FdinfoEntry>> {
    let mut out = Vec::new();
    for entry in entries(bytes, FDINFO_MAGIC)? {
        let mut e = FdinfoEntry::default();
        for f in Fields(&entry) {
            match f? {
                (1, v) => e.id = v.u32(),
                (2, v) => e.flags = v.u32(),
                (3, v) => e.fd_type = v.u32(),
                (4, v) => e.fd = v.u32(),
                _ => {}
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// What a `file_entry` of `files.img` is, for the kinds inspect describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FileDesc {
    /// `reg_file_entry`
    Reg { path: String, flags: u32, pos: u64 },
    /// `inet_sk_entry`; addresses as text, ports as numbers.
    Inet {
        family: u32,
        sk_type: u32,
        proto: u32,
        state: u32,
        src_addr: String,
        src_port: u32,
        dst_addr: String,
        dst_port: u32,
    },
    /// `unix_sk_entry`; an abstract name starts with `@`.
    Unix {
        sk_type: u32,
        state: u32,
        name: String,
        peer: u32,
    },
    /// `pipe_entry`: the two ends of one pipe share `pipe_id` (its inode).
    Pipe { pipe_id: u32 },
    /// `fifo_entry`: `regf_id` is the REG entry holding the fifo's path.
    Fifo { pipe_id: u32, regf_id: u32 },
    /// Any other kind: only its type is shown.
    Other,
}

/// One `file_entry` of `files.img`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    pub id: u32,
    pub fd_type: u32,
    pub desc: FileDesc,
}

pub fn decode_files(bytes: &[u8]) -> Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    for entry in entries(bytes, FILES_MAGIC)? {
        let (mut id, mut fd_type, mut desc) = (0, 0, FileDesc::Other);
        for f in Fields(&entry) {
            match f? {
                (1, v) => fd_type = v.u32(),
                (2, v) => id = v.u32(),
                (3, v) => desc = reg_entry(message(v))?,
                (4, v) => desc = inet_entry(message(v))?,
                (16, v) => desc = unix_entry(message(v))?,
                (17, v) => desc = fifo_entry(message(v))?,
                (18, v) => desc = pipe_entry(message(v))?,
                _ => {}
            }
        }
        out.push(FileEntry { id, fd_type, desc });
    }
    Ok(out)
}

fn reg_entry(b: &[u8]) -> Result<FileDesc> {
    let (mut path, mut flags, mut pos) = (String::new(), 0, 0);
    for f in Fields(b) {
        match f? {
            (2, v) => flags = v.u32(),
            (3, v) => pos = v.u64(),
            (6, v) => path = string(v),
            _ => {}
        }
    }
    Ok(FileDesc::Reg { path, flags, pos })
}

fn inet_entry(b: &[u8]) -> Result<FileDesc> {
    let (mut family, mut sk_type, mut proto, mut state) = (0, 0, 0, 0);
    let (mut src_port, mut dst_port) = (0, 0);
    let (mut src, mut dst) = (Vec::new(), Vec::new());
    for f in Fields(b) {
        match f? {
            (3, v) => family = v.u32(),
            (4, v) => sk_type = v.u32(),
            (5, v) => proto = v.u32(),
            (6, v) => state = v.u32(),
            (7, v) => src_port = v.u32(),
            (8, v) => dst_port = v.u32(),
            (11, v) => push_repeated(&mut src, v)?,
            (12, v) => push_repeated(&mut dst, v)?,
            _ => {}
        }
    }
    Ok(FileDesc::Inet {
        family,
        sk_type,
        proto,
        state,
        src_addr: ip_text(family, &src),
        src_port,
        dst_addr: ip_text(family, &dst),
        dst_port,
    })
}

/// CRIU stores an address as the u32 words of the kernel's `in_addr`/`in6_addr`, read in
/// the dumping host's byte order; every architecture ferry runs on is little-endian.
fn ip_text(family: u32, words: &[u32]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match (family, bytes.len()) {
        (2, 4) => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[..]).unwrap()).to_string(),
        (10, 16) => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..]).unwrap()).to_string(),
        (2, 0) => "0.0.0.0".into(),
        (10, 0) => "::".into(),
        _ => hex::encode(bytes),
    }
}

fn unix_entry(b: &[u8]) -> Result<FileDesc> {
    let (mut sk_type, mut state, mut peer, mut name) = (0, 0, 0, String::new());
    for f in Fields(b) {
        match f? {
            (3, v) => sk_type = v.u32(),
            (4, v) => state = v.u32(),
            (8, v) => peer = v.u32(),
            (11, Value::Bytes(raw)) => {
                // A path name carries the kernel's terminating NUL; an abstract name is
                // every byte after its leading NUL.
                name = match raw.split_first() {
                    Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
                    _ => String::from_utf8_lossy(raw.split(|&b| b == 0).next().unwrap_or(raw))
                        .into_owned(),
                }
            }
            _ => {}
        }
    }
    Ok(FileDesc::Unix {
        sk_type,
        state,
        name,
        peer,
    })
}

fn pipe_entry(b: &[u8]) -> Result<FileDesc> {
    let mut pipe_id = 0;
    for f in Fields(b) {
        if let (2, v) = f? {
            pipe_id = v.u32();
        }
    }
    Ok(FileDesc::Pipe { pipe_id })
}

fn fifo_entry(b: &[u8]) -> Result<FileDesc> {
    let (mut pipe_id, mut regf_id) = (0, 0);
    for f in Fields(b) {
        match f? {
            (2, v) => pipe_id = v.u32(),
            (3, v) => regf_id = v.u32(),
            _ => {}
        }
    }
    Ok(FileDesc::Fifo { pipe_id, regf_id })
}

/// `SOCK_STREAM`… as `ss` names them.
pub fn sock_type_name(t: u32) -> &'static str {
    match t {
        1 => "stream",
        2 => "dgram",
        3 => "raw",
        5 => "seqpacket",
        _ => "?",
    }
}

/// The kernel's TCP states (`include/net/tcp_states.h`); unix sockets use the same numbers.
pub fn sock_state_name(s: u32) -> &'static str {
    match s {
        1 => "established",
        2 => "syn-sent",
        3 => "syn-recv",
        4 => "fin-wait1",
        5 => "fin-wait2",
        6 => "time-wait",
        7 => "close",
        8 => "close-wait",
        9 => "last-ack",
        10 => "listen",
        11 => "closing",
        _ => "?",
    }
}

pub fn ip_proto_name(p: u32) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        136 => "udplite",
        255 => "raw",
        _ => "ip",
    }
}

/// CRIU's `VMA_ANON_PRIVATE` status bit (criu/include/image.h): private anonymous memory.
pub const VMA_ANON_PRIVATE: u32 = 1 << 9;

/// One task's memory as its images describe it: its pid, `pagemap-<pid>.img` and the
/// mappings of `mm-<pid>.img`.
pub struct TaskMemory {
    pub pid: i32,
    pub pagemap: Pagemap,
    pub vmas: Vec<Vma>,
}

impl Pagemap {
    /// Which of `files` is this pagemap's `pages-<pages_id>.img`.
    pub fn pages_file(&self, files: &[std::path::PathBuf]) -> Option<usize> {
        let name = format!("pages-{}.img", self.pages_id);
        files
            .iter()
            .position(|p| p.file_name().and_then(|n| n.to_str()) == Some(name.as_str()))
    }
}

/// The pages files (`pages-<id>.img`) in the image directory `dir`, in name order.
pub fn pages_files(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pages-") && n.ends_with(".img"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every task's memory in the image directory `dir` (one per `pagemap-<pid>.img`), each an
/// error when its pagemap or mm image does not read; an error when `dir` does not.
pub fn task_memory(dir: &std::path::Path) -> Result<Vec<Result<TaskMemory>>> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("pagemap-")
            .and_then(|n| n.strip_suffix(".img"))
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let read = |path: std::path::PathBuf| std::fs::read(path).map_err(|e| e.to_string());
        out.push((|| {
            Ok(TaskMemory {
                pid,
                pagemap: read_pagemap(std::fs::File::open(e.path()).map_err(|e| e.to_string())?)?,
                vmas: decode_vmas(&read(dir.join(format!("mm-{pid}.img")))?)?,
            })
        })());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Images from a real `ferry checkpoint` (CRIU 4.1.1) of a busybox container running
    /// `sh -c 'exec 3>>/tmp/held.txt; …; syslogd -n -O /tmp/syslog & sleep 1000 | cat & wait'`.
    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/archive/testdata/criu")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn wire_format_basics() {
        let mut b: &[u8] = &[0xac, 0x02, 0x01];
        assert_eq!(varint(&mut b).unwrap(), 300);
        assert_eq!(b, &[0x01]);
        assert!(varint(&mut &[0x80u8, 0x80][..]).is_err());
        // field 1 varint 5, field 2 fixed64, field 3 fixed32, field 4 bytes "ab".
        let mut m = vec![0x08, 0x05, 0x11];
        m.extend(7u64.to_le_bytes());
        m.push(0x1d);
        m.extend(9u32.to_le_bytes());
        m.extend([0x22, 2, b'a', b'b']);
        let f: Vec<_> = Fields(&m).map(|f| f.unwrap()).collect();
        assert_eq!(f.len(), 4);
        assert_eq!((f[0].0, f[0].1.u64()), (1, 5));
        assert_eq!((f[1].0, f[1].1.u64()), (2, 7));
        assert_eq!((f[2].0, f[2].1.u64()), (3, 9));
        assert_eq!(string(f[3].1), "ab");
        // A length running past the end is an error, not a panic.
        assert!(Fields(&[0x22, 9, b'a']).any(|f| f.is_err()));
    }

    #[test]
    fn magic_is_checked() {
        let pstree = fixture("pstree.img");
        assert!(
            entries(&pstree, CORE_MAGIC)
                .unwrap_err()
                .contains("expected")
        );
        assert!(
            decode_pstree(&pstree[..pstree.len() - 2]).is_err(),
            "truncated entry"
        );
        // An image with only its own magic (as inventory.img is written) reads too.
        let mut bare = PSTREE_MAGIC.to_le_bytes().to_vec();
        bare.extend(&pstree[8..]);
        assert_eq!(
            decode_pstree(&bare).unwrap(),
            decode_pstree(&pstree).unwrap()
        );
    }

    #[test]
    fn real_pstree_and_cores() {
        let tree = decode_pstree(&fixture("pstree.img")).unwrap();
        let pids: Vec<(u32, u32)> = tree.iter().map(|p| (p.pid, p.ppid)).collect();
        assert_eq!(pids, [(1, 0), (3, 1), (4, 1), (5, 1)]);
        assert_eq!(tree[0].threads, [1]);
        assert_eq!((tree[2].pgid, tree[2].sid), (1, 1));
        let comms: Vec<String> = [1, 3, 4, 5]
            .iter()
            .map(|p| {
                decode_core(&fixture(&format!("core-{p}.img")))
                    .unwrap()
                    .comm
            })
            .collect();
        assert_eq!(comms, ["sh", "syslogd", "sleep", "cat"]);
        let core = decode_core(&fixture("core-1.img")).unwrap();
        assert_eq!(core.state_name(), "alive");
        let ids = decode_ids(&fixture("ids-1.img")).unwrap();
        assert_eq!(ids.files_id, 2);
    }

    #[test]
    fn real_memory_images() {
        let mm = decode_mm(&fixture("mm-1.img")).unwrap();
        assert!(mm.vmas >= 5, "{mm:?}");
        assert!(mm.mapped_bytes > 1 << 20, "{mm:?}");
        let pm = decode_pagemap(&fixture("pagemap-1.img")).unwrap();
        assert_eq!(pm.pages_id, 1);
        assert_eq!(pm.entries.len(), 7);
        assert_eq!(pm.entries[0].vaddr, 0x40_1000);
        let present: u32 = pm
            .entries
            .iter()
            .filter(|e| e.present())
            .map(|e| e.nr_pages)
            .sum();
        // pages-1.img holds exactly the present pages.
        assert_eq!(present as usize * 4096, 73728);
    }

    #[test]
    fn real_netdev_image_of_a_loopback_only_namespace() {
        let devs = decode_netdev(&fixture("netdev-10.img")).unwrap();
        assert_eq!(devs, vec![(ND_LOOPBACK, "lo".to_string())]);
        assert!(
            decode_netdev(&fixture("mm-1.img")).is_err(),
            "magic not checked"
        );
    }

    #[test]
    fn real_files_and_fdinfo() {
        let files = decode_files(&fixture("files.img")).unwrap();
        let by_id = |id: u32| files.iter().find(|f| f.id == id).unwrap();
        let fds = decode_fdinfo(&fixture("fdinfo-2.img")).unwrap();
        let fd3 = fds.iter().find(|f| f.fd == 3).expect("sh's fd 3");
        assert_eq!(fd_type_name(fd3.fd_type), "REG");
        assert!(
            matches!(&by_id(fd3.id).desc, FileDesc::Reg { path, pos: 3, .. } if path == "/tmp/held.txt"),
            "{:?}",
            by_id(fd3.id)
        );
        // syslogd's /dev/log.
        let unix: Vec<_> = files
            .iter()
            .filter_map(|f| match &f.desc {
                FileDesc::Unix { name, sk_type, .. } => Some((name.as_str(), *sk_type)),
                _ => None,
            })
            .collect();
        assert!(unix.contains(&("/dev/log", 2)), "{unix:?}");
        // sleep | cat: both ends of one pipe.
        let pipes: Vec<u32> = files
            .iter()
            .filter_map(|f| match f.desc {
                FileDesc::Pipe { pipe_id } => Some(pipe_id),
                _ => None,
            })
            .collect();
        assert_eq!(pipes.len(), 2, "{files:?}");
        assert_eq!(pipes[0], pipes[1]);
    }

    #[test]
    fn inet_socket_entry() {
        // A file_entry built by hand (CRIU 4.1.1 cannot dump an inet socket on Linux >= 6.16,
        // criu#2705): INETSK id 7, family AF_INET, stream, tcp, listen, 0.0.0.0:8080, the
        // addresses one word per field as CRIU writes them; then an AF_INET6 one, packed.
        let mut isk = vec![0x08, 7, 0x10, 99, 0x18, 2, 0x20, 1, 0x28, 6, 0x30, 10, 0x38];
        isk.extend([0x90, 0x3f, 0x40, 0, 0x58, 0, 0x60, 0]);
        let mut fe = vec![0x08, 4, 0x10, 7, 0x22, isk.len() as u8];
        fe.extend(&isk);
        let mut v6 = vec![0x18, 10, 0x20, 1, 0x28, 6, 0x30, 1, 0x38, 80, 0x40, 53];
        let mut packed = Vec::new();
        for w in [0u32, 0, 0, 0x0100_0000] {
            let mut w = u64::from(w);
            while w >= 0x80 {
                packed.push((w as u8) | 0x80);
                w >>= 7;
            }
            packed.push(w as u8);
        }
        v6.extend([0x62, packed.len() as u8]); // field 12, packed: ::1
        v6.extend(&packed);
        let mut fe6 = vec![0x08, 4, 0x10, 8, 0x22, v6.len() as u8];
        fe6.extend(&v6);
        let mut img = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        img.extend(FILES_MAGIC.to_le_bytes());
        for e in [&fe, &fe6] {
            img.extend((e.len() as u32).to_le_bytes());
            img.extend(e);
        }
        let files = decode_files(&img).unwrap();
        assert_eq!(
            files[0].desc,
            FileDesc::Inet {
                family: 2,
                sk_type: 1,
                proto: 6,
                state: 10,
                src_addr: "0.0.0.0".into(),
                src_port: 8080,
                dst_addr: "0.0.0.0".into(),
                dst_port: 0,
            }
        );
        assert!(
            matches!(&files[1].desc, FileDesc::Inet { dst_addr, dst_port: 53, state: 1, .. } if dst_addr == "::1"),
            "{:?}",
            files[1]
        );
    }
}
