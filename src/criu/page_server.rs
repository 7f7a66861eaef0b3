//! ferry's end of CRIU's page-server protocol. A dump given `ps.fd` sends the tasks' memory
//! over that socket instead of writing `pagemap-*.img` and `pages-*.img` itself; [`serve`]
//! rebuilds exactly those images (as `criu page-server` would) and hands the page data to a
//! [`PageSink`] while CRIU is still dumping. That is how `checkpoint -e` puts memory into the
//! archive without staging it on disk first, and how migration will stream it to a peer.
//!
//! The protocol (criu/page-xfer.c): fixed 24-byte commands `{u32 cmd, u32 nr_pages,
//! u64 vaddr, u64 dst_id}` in host byte order; `cmd`'s low 16 bits are the command, the high
//! bits the pagemap entry flags; `dst_id` is `image id << 8 | type`. OPEN2 is answered with one
//! byte (has a parent image), PARENT with an int, CLOSE/FORCE_CLOSE with an int status.

use std::io::{self, Read, Write};

const PS_IOV_ADD: u32 = 1;
const PS_IOV_HOLE: u32 = 2;
const PS_IOV_OPEN: u32 = 3;
const PS_IOV_OPEN2: u32 = 4;
const PS_IOV_PARENT: u32 = 5;
const PS_IOV_ADD_F: u32 = 6;
const PS_IOV_GET: u32 = 7;
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_IOV_FORCE_CLOSE: u32 = 0x1024;

const PS_TYPE_PID: u64 = 1;
const PS_TYPE_SHMEM: u64 = 2;

pub const PE_PARENT: u32 = 1 << 0;
pub const PE_LAZY: u32 = 1 << 1;
pub const PE_PRESENT: u32 = 1 << 2;

const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const PAGEMAP_MAGIC: u32 = 0x5608_4025;

/// How much of a pagemap the page server holds before handing it on.
const PAGEMAP_CHUNK: usize = 64 << 10;

/// CRIU's page server numbers its pages images from here, clear of any the dumping side
/// may have made itself; ferry does the same.
pub const PAGES_ID_BASE: u32 = 0x10001;

/// Where the page data goes.
pub trait PageSink {
    /// The next `len` bytes of the pages image `file` (e.g. `pages-65537.img`), to be read
    /// from `src` in full.
    fn pages(&mut self, file: &str, src: &mut dyn Read, len: u64) -> io::Result<()>;
    /// `file` is complete. Called once for every pages image, also one that got no data.
    fn pages_done(&mut self, file: &str) -> io::Result<()>;
    /// The next bytes of a small image (a pagemap), which may come in several calls: it
    /// grows with the memory dumped (an entry per run of pages CRIU sends), so it is not
    /// held whole.
    fn image(&mut self, file: &str, bytes: Vec<u8>) -> io::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("criu's page stream: {0}")]
    Protocol(String),
    #[error("reading criu's page stream: {0}")]
    Socket(#[source] io::Error),
    /// The sink failed (the archive could not be written): the real cause of the dump's end.
    #[error("{0}")]
    Sink(#[source] io::Error),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub pagemaps: u32,
    pub pages_bytes: u64,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One protobuf message as CRIU's images hold it: its length (u32) then its bytes.
fn push_message(img: &mut Vec<u8>, fields: &[(u8, u64)]) {
    let mut m = Vec::with_capacity(24);
    for &(tag, v) in fields {
        varint(&mut m, u64::from(tag) << 3);
        varint(&mut m, v);
    }
    img.extend_from_slice(&(m.len() as u32).to_ne_bytes());
    img.extend_from_slice(&m);
}

/// A pagemap image being built: the head naming its pages image, then one entry per run.
struct Pagemap {
    name: String,
    pages: String,
    bytes: Vec<u8>,
}

impl Pagemap {
    fn new(dst_id: u64, pages_id: u32) -> Result<Pagemap, Error> {
        let id = dst_id >> 8;
        let name = match dst_id & 0xff {
            PS_TYPE_PID => format!("pagemap-{id}.img"),
            PS_TYPE_SHMEM => format!("pagemap-shmem-{id}.img"),
            t => {
                return Err(Error::Protocol(format!(
                    "pagemap type {t} is not one this ferry knows (criu newer than 4.x?)"
                )));
            }
        };
        let mut bytes = Vec::with_capacity(4096);
        bytes.extend_from_slice(&IMG_COMMON_MAGIC.to_ne_bytes());
        bytes.extend_from_slice(&PAGEMAP_MAGIC.to_ne_bytes());
        push_message(&mut bytes, &[(1, u64::from(pages_id))]);
        Ok(Pagemap {
            name,
            pages: format!("pages-{pages_id}.img"),
            bytes,
        })
    }

    fn add(&mut self, vaddr: u64, nr_pages: u32, flags: u32) {
        // Fields 1 (vaddr), 2 (nr_pages) and 4 (flags), as CRIU writes them.
        push_message(
            &mut self.bytes,
            &[(1, vaddr), (2, u64::from(nr_pages)), (4, u64::from(flags))],
        );
    }
}

/// Remembers whether the socket itself failed, to tell that from a sink failure.
struct Tracked<'a, S> {
    inner: &'a mut S,
    failed: Option<io::Error>,
}

impl<S: Read> Read for Tracked<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.failed = Some(io::ErrorKind::UnexpectedEof.into());
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
        }
    }
}

/// Serves one CRIU dump on `sock` until CRIU closes the transfer. Returns what it received;
/// every pagemap and pages image went to `sink`.
pub fn serve<S: Read + Write>(sock: &mut S, sink: &mut dyn PageSink) -> Result<Summary, Error> {
    let page = page_size();
    let mut summary = Summary::default();
    let mut current: Option<Pagemap> = None;
    let mut next_pages_id = PAGES_ID_BASE;
    let finish = |cur: Option<Pagemap>, sink: &mut dyn PageSink| -> Result<(), Error> {
        if let Some(pm) = cur {
            sink.pages_done(&pm.pages).map_err(Error::Sink)?;
            if !pm.bytes.is_empty() {
                sink.image(&pm.name, pm.bytes).map_err(Error::Sink)?;
            }
        }
        Ok(())
    };
    loop {
        let mut raw = [0u8; 24];
        match read_full(sock, &mut raw) {
            Ok(0) => {
                return Err(Error::Protocol(
                    "criu hung up without closing the transfer (the dump failed?)".into(),
                ));
            }
            Ok(24) => {}
            Ok(n) => {
                return Err(Error::Protocol(format!(
                    "criu hung up inside a command ({n} of 24 bytes)"
                )));
            }
            Err(e) => return Err(Error::Socket(e)),
        }
        let word = |i: usize| u32::from_ne_bytes(raw[i..i + 4].try_into().expect("4 bytes"));
        let cmd_word = word(0);
        let nr_pages = word(4);
        let vaddr = u64::from_ne_bytes(raw[8..16].try_into().expect("8 bytes"));
        let dst_id = u64::from_ne_bytes(raw[16..24].try_into().expect("8 bytes"));
        let (cmd, flags) = (cmd_word & 0xffff, cmd_word >> 16);
        match cmd {
            PS_IOV_OPEN | PS_IOV_OPEN2 => {
                finish(current.take(), sink)?;
                current = Some(Pagemap::new(dst_id, next_pages_id)?);
                next_pages_id += 1;
                summary.pagemaps += 1;
                if cmd == PS_IOV_OPEN2 {
                    // No parent images: every page comes in full.
                    sock.write_all(&[0u8]).map_err(Error::Socket)?;
                }
            }
            PS_IOV_PARENT => sock.write_all(&0i32.to_ne_bytes()).map_err(Error::Socket)?,
            PS_IOV_ADD | PS_IOV_ADD_F | PS_IOV_HOLE => {
                let flags = match cmd {
                    PS_IOV_ADD => PE_PRESENT,
                    PS_IOV_HOLE => PE_PARENT,
                    _ => flags,
                };
                let pm = current.as_mut().ok_or_else(|| {
                    Error::Protocol("pages sent before any pagemap was opened".into())
                })?;
                pm.add(vaddr, nr_pages, flags);
                if pm.bytes.len() >= PAGEMAP_CHUNK {
                    sink.image(&pm.name, std::mem::take(&mut pm.bytes))
                        .map_err(Error::Sink)?;
                }
                if flags & PE_PRESENT != 0 {
                    let len = u64::from(nr_pages) * page;
                    let mut src = Tracked {
                        inner: sock,
                        failed: None,
                    };
                    let r = sink.pages(&pm.pages, &mut (&mut src).take(len), len);
                    if let Some(e) = src.failed {
                        return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                            Error::Protocol(format!(
                                "criu hung up inside a run of {nr_pages} pages"
                            ))
                        } else {
                            Error::Socket(e)
                        });
                    }
                    r.map_err(Error::Sink)?;
                    summary.pages_bytes += len;
                }
            }
            PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => {
                finish(current.take(), sink)?;
                sock.write_all(&0i32.to_ne_bytes()).map_err(Error::Socket)?;
                return Ok(summary);
            }
            PS_IOV_GET => {
                return Err(Error::Protocol(
                    "criu asked for pages (lazy restore); ferry's page sink only receives".into(),
                ));
            }
            other => {
                return Err(Error::Protocol(format!("unknown command {other:#x}")));
            }
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A sink that writes the images into a directory, as `criu page-server` would.
pub struct DirSink {
    pub dir: std::path::PathBuf,
}

impl PageSink for DirSink {
    fn pages(&mut self, file: &str, src: &mut dyn Read, len: u64) -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(file))?;
        let n = io::copy(src, &mut f)?;
        if n != len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn pages_done(&mut self, file: &str) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(file))
            .map(drop)
    }

    fn image(&mut self, file: &str, bytes: Vec<u8>) -> io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(file))?
            .write_all(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::criu_images::decode_pagemap;
    use std::os::unix::net::UnixStream;

    fn cmd(c: u32, flags: u32, nr: u32, vaddr: u64, dst: u64) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(flags << 16 | c).to_ne_bytes());
        v.extend_from_slice(&nr.to_ne_bytes());
        v.extend_from_slice(&vaddr.to_ne_bytes());
        v.extend_from_slice(&dst.to_ne_bytes());
        v
    }

    #[test]
    fn rebuilds_pagemap_and_pages_images() {
        let page = page_size() as usize;
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let server = std::thread::spawn(move || serve(&mut b, &mut DirSink { dir }));
        a.write_all(&cmd(PS_IOV_OPEN2, 0, 0, 0, 7 << 8 | PS_TYPE_PID))
            .unwrap();
        let mut has_parent = [9u8];
        a.read_exact(&mut has_parent).unwrap();
        assert_eq!(has_parent[0], 0);
        a.write_all(&cmd(PS_IOV_ADD_F, PE_PRESENT, 2, 0x7000_0000, 7 << 8 | 1))
            .unwrap();
        a.write_all(&vec![0xab; 2 * page]).unwrap();
        a.write_all(&cmd(PS_IOV_ADD_F, PE_LAZY, 3, 0x7100_0000, 7 << 8 | 1))
            .unwrap();
        a.write_all(&cmd(PS_IOV_OPEN2, 0, 0, 0, 3 << 8 | PS_TYPE_SHMEM))
            .unwrap();
        a.read_exact(&mut has_parent).unwrap();
        a.write_all(&cmd(PS_IOV_FORCE_CLOSE, 0, 0, 0, 0)).unwrap();
        let mut status = [9u8; 4];
        a.read_exact(&mut status).unwrap();
        assert_eq!(i32::from_ne_bytes(status), 0);
        let s = server.join().unwrap().unwrap();
        assert_eq!(
            s,
            Summary {
                pagemaps: 2,
                pages_bytes: 2 * page as u64
            }
        );
        let pm = decode_pagemap(&std::fs::read(d.path().join("pagemap-7.img")).unwrap()).unwrap();
        assert_eq!(pm.pages_id, PAGES_ID_BASE);
        assert_eq!(pm.entries.len(), 2);
        assert_eq!(pm.entries[0].vaddr, 0x7000_0000);
        assert_eq!(pm.entries[0].nr_pages, 2);
        assert!(pm.entries[0].present());
        assert!(!pm.entries[1].present());
        let pages = std::fs::read(d.path().join(format!("pages-{PAGES_ID_BASE}.img"))).unwrap();
        assert_eq!(pages, vec![0xab; 2 * page]);
        let shm =
            decode_pagemap(&std::fs::read(d.path().join("pagemap-shmem-3.img")).unwrap()).unwrap();
        assert_eq!(shm.pages_id, PAGES_ID_BASE + 1);
        assert!(shm.entries.is_empty());
        // An empty pages image still exists: restore opens it.
        assert_eq!(
            std::fs::metadata(d.path().join(format!("pages-{}.img", PAGES_ID_BASE + 1)))
                .unwrap()
                .len(),
            0
        );
    }

    /// Keeps each call's image bytes apart, to see how a pagemap is handed on.
    #[derive(Default)]
    struct Calls {
        images: Vec<(String, Vec<u8>)>,
    }

    impl PageSink for Calls {
        fn pages(&mut self, _: &str, src: &mut dyn Read, _: u64) -> io::Result<()> {
            io::copy(src, &mut io::sink()).map(drop)
        }
        fn pages_done(&mut self, _: &str) -> io::Result<()> {
            Ok(())
        }
        fn image(&mut self, file: &str, bytes: Vec<u8>) -> io::Result<()> {
            self.images.push((file.to_string(), bytes));
            Ok(())
        }
    }

    /// Serves a dump of one pagemap (of pid 5) into a [`Calls`]: `send` writes the runs
    /// after the pagemap is open; what the sink got, once CRIU's side closed.
    fn one_pagemap(send: impl FnOnce(&mut UnixStream)) -> Calls {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut calls = Calls::default();
            serve(&mut b, &mut calls).map(|_| calls)
        });
        a.write_all(&cmd(PS_IOV_OPEN2, 0, 0, 0, 5 << 8 | PS_TYPE_PID))
            .unwrap();
        let mut has_parent = [9u8];
        a.read_exact(&mut has_parent).unwrap();
        send(&mut a);
        a.write_all(&cmd(PS_IOV_CLOSE, 0, 0, 0, 0)).unwrap();
        let mut status = [9u8; 4];
        a.read_exact(&mut status).unwrap();
        server.join().unwrap().unwrap()
    }

    /// A pagemap grows with the memory dumped (an entry per run CRIU sends): it is handed
    /// on in pieces of about 64 KiB, which together are the whole image.
    #[test]
    fn a_large_pagemap_is_handed_on_in_pieces() {
        let runs = 20_000u64;
        let calls = one_pagemap(|a| {
            let mut all = vec![];
            for i in 0..runs {
                all.extend(cmd(
                    PS_IOV_ADD_F,
                    PE_LAZY,
                    1,
                    0x1000_0000 + i * 0x2000,
                    5 << 8 | 1,
                ));
            }
            a.write_all(&all).unwrap();
        });
        assert!(calls.images.len() > 2, "{} pieces", calls.images.len());
        assert!(calls.images.iter().all(|(f, _)| f == "pagemap-5.img"));
        assert!(
            calls
                .images
                .iter()
                .all(|(_, b)| b.len() < PAGEMAP_CHUNK + 64),
            "a piece larger than the chunk"
        );
        let whole: Vec<u8> = calls.images.into_iter().flat_map(|(_, b)| b).collect();
        let pm = decode_pagemap(&whole).unwrap();
        assert_eq!(pm.entries.len(), runs as usize);
        assert_eq!(
            pm.entries[runs as usize - 1].vaddr,
            0x1000_0000 + (runs - 1) * 0x2000
        );
    }

    /// Runs that continue one another with the same flags read back as one entry (a
    /// restore holds an entry per run, not per MiB); a gap or other flags start another.
    #[test]
    fn runs_that_continue_one_another_read_back_as_one() {
        let page = page_size();
        let at = |pages: u64| 0x1000_0000 + pages * page;
        let calls = one_pagemap(|a| {
            for (cmd_, flags, nr, vaddr) in [
                (PS_IOV_ADD_F, PE_LAZY, 2, at(0)),
                (PS_IOV_ADD_F, PE_LAZY, 3, at(2)),
                (PS_IOV_ADD_F, PE_LAZY, 1, at(5)),
                (PS_IOV_HOLE, 0, 1, at(6)),
                (PS_IOV_ADD_F, PE_LAZY, 1, at(9)),
            ] {
                a.write_all(&cmd(cmd_, flags, nr, vaddr, 5 << 8 | 1))
                    .unwrap();
            }
        });
        let whole: Vec<u8> = calls.images.into_iter().flat_map(|(_, b)| b).collect();
        let pm = decode_pagemap(&whole).unwrap();
        let got: Vec<(u64, u32, Option<u32>)> = pm
            .entries
            .iter()
            .map(|e| (e.vaddr, e.nr_pages, e.flags))
            .collect();
        assert_eq!(
            got,
            [
                (at(0), 6, Some(PE_LAZY)),
                (at(6), 1, Some(PE_PARENT)),
                (at(9), 1, Some(PE_LAZY))
            ]
        );
    }

    #[test]
    fn a_stream_cut_inside_pages_is_a_protocol_error() {
        let page = page_size() as usize;
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let server = std::thread::spawn(move || serve(&mut b, &mut DirSink { dir }));
        a.write_all(&cmd(PS_IOV_OPEN2, 0, 0, 0, 1 << 8 | PS_TYPE_PID))
            .unwrap();
        let mut has_parent = [9u8];
        a.read_exact(&mut has_parent).unwrap();
        a.write_all(&cmd(PS_IOV_ADD_F, PE_PRESENT, 4, 0x1000, 1 << 8 | 1))
            .unwrap();
        a.write_all(&vec![1; page]).unwrap();
        drop(a);
        let e = server.join().unwrap().unwrap_err();
        assert!(
            matches!(&e, Error::Protocol(m) if m.contains("inside a run of 4 pages")),
            "{e}"
        );
    }

    #[test]
    fn a_hang_up_without_close_is_an_error() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let d = tempfile::tempdir().unwrap();
        drop(a);
        let e = serve(
            &mut b,
            &mut DirSink {
                dir: d.path().to_path_buf(),
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e}");
    }
}
