//! The zstd compressor of archives: the stream cut into independent frames of 1 MiB of input
//! each, compressed on up to four worker threads at once (one per core) and written in order
//! by one more, while the archive thread goes on. Frames that do not depend on each other
//! are what lets compressible memory (2 s of level-1 CPU per GiB) use every core.
//!
//! Memory pages are often incompressible (random, encrypted or already compressed data),
//! and zstd spends as long failing to compress a megabyte as compressing it. So each chunk
//! is first judged by a sample (eight 4 KiB slices spread over it, compressed together): a
//! chunk whose sample saves under 3% goes out as a frame of raw blocks, written with one
//! writev; any other is compressed at level 1. btrfs and ZFS judge their blocks the same way
//! before compressing them. A chunk misjudged as raw costs its compression, never its bytes.
//! A page part (archive::pages) is a frame of its own, taken without a copy
//! ([`Frames::write_shared`]); tar headers and small entries are gathered into chunks.
//!
//! Concatenated frames are one valid zstd stream (RFC 8878 §3.1): `zstd -d` and ferry's
//! own reader (archive::reader, through the zstd crate's decoder) read it as a whole.
//!
//! [`Frames::mark_tail`] cuts a frame where the archive's tail (everything after the memory
//! pages) begins, and the stream then ends with a skippable frame saying where that is
//! ([`TailMark`]), which decoders pass over: restore reads the tail first and feeds CRIU
//! the pages while it restores (archive::feed).

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Input per frame.
pub const CHUNK: usize = 1 << 20;
/// zstd's level for chunks worth compressing: pages gain little from more effort, and
/// time is downtime.
const LEVEL: i32 = 1;
/// The largest raw block (RFC 8878 §3.1.1.2: min(window, 128 KiB)).
pub(crate) const RAW_BLOCK: usize = 128 << 10;
/// A raw frame's header: magic, then one byte of flags and 4 of content size.
pub(crate) const RAW_HEADER: usize = 9;
const SAMPLES: usize = 8;
const SAMPLE: usize = 4 << 10;

/// An io::Error kept to be given again (it is not Clone): an OS error stays one, so that
/// "the disk is full" is still recognised.
#[derive(Clone)]
struct Failed {
    os: Option<i32>,
    kind: io::ErrorKind,
    what: String,
}

impl Failed {
    fn of(e: &io::Error) -> Failed {
        Failed {
            os: e.raw_os_error(),
            kind: e.kind(),
            what: e.to_string(),
        }
    }

    fn again(&self) -> io::Error {
        match self.os {
            Some(n) => io::Error::from_raw_os_error(n),
            None => io::Error::new(self.kind, self.what.clone()),
        }
    }
}

/// A buffer others read too (archive::hashing hashes it meanwhile).
pub type Shared = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

/// What [`Frames::write_shared`] takes as a frame of its own rather than copying it: a
/// smaller buffer would make a frame too small to compress well.
const SHARED_MIN: usize = 64 << 10;

/// A piece of the stream for a compressing worker.
enum Input {
    Chunk(Vec<u8>),
    Shared(Shared),
}

impl Input {
    fn bytes(&self) -> &[u8] {
        match self {
            Input::Chunk(v) => v,
            Input::Shared(b) => (**b).as_ref(),
        }
    }
}

/// What the writer thread gets, by sequence number: a frame to write in its turn, or a flush.
enum Output {
    /// Incompressible: written as raw blocks from the input itself.
    Raw(Input),
    /// A compressed frame; the input's chunk to recycle, and the worker to give the frame's
    /// buffer back to.
    Packed(Vec<u8>, Input, usize),
    Flush,
    /// The archive's tail starts here, at this offset of the uncompressed stream.
    Mark(u64),
}

/// Where an archive's tail starts: the offset of its first frame in the file, and of its
/// first byte in the uncompressed tar stream. Written last, as a skippable frame
/// (RFC 8878 §3.1.2) of [`TAIL_MARK_LEN`] bytes; a hint only, since it is not signed:
/// everything read through it is still checked against the manifest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TailMark {
    pub frame_offset: u64,
    pub tar_offset: u64,
}

const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const TAIL_MAGIC: &[u8; 8] = b"FERRYTL1";
pub const TAIL_MARK_LEN: u64 = 32;

impl TailMark {
    fn bytes(&self) -> [u8; TAIL_MARK_LEN as usize] {
        let mut b = [0u8; TAIL_MARK_LEN as usize];
        b[..4].copy_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&24u32.to_le_bytes());
        b[8..16].copy_from_slice(TAIL_MAGIC);
        b[16..24].copy_from_slice(&self.frame_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.tar_offset.to_le_bytes());
        b
    }

    /// The mark at the end of a file of `len` bytes whose last [`TAIL_MARK_LEN`] are `b`,
    /// if they are one and point inside the file.
    pub fn parse(b: &[u8], len: u64) -> Option<TailMark> {
        if b.len() != TAIL_MARK_LEN as usize
            || b[..4] != SKIPPABLE_MAGIC.to_le_bytes()
            || b[4..8] != 24u32.to_le_bytes()
            || &b[8..16] != TAIL_MAGIC
        {
            return None;
        }
        let m = TailMark {
            frame_offset: u64::from_le_bytes(b[16..24].try_into().ok()?),
            tar_offset: u64::from_le_bytes(b[24..32].try_into().ok()?),
        };
        (m.frame_offset + TAIL_MARK_LEN < len).then_some(m)
    }
}

/// Counts what goes through to the file, for the tail mark.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.inner.write_vectored(bufs)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct Frames<W> {
    buf: Vec<u8>,
    /// One queue per compressing worker; pieces go round-robin.
    jobs: Vec<SyncSender<(u64, Input)>>,
    /// The writer's queue, for flushes (workers hold their own clones).
    writer_tx: Option<SyncSender<(u64, Output)>>,
    seq: u64,
    /// Chunk buffers the writer is done with.
    back: Receiver<Vec<u8>>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    writer: Option<JoinHandle<io::Result<W>>>,
    /// The first error of a thread, once one has failed: every later call repeats it.
    failed: Option<Failed>,
    /// Whether any piece went to the workers.
    sent: bool,
}

impl<W: Write + Send + 'static> Frames<W> {
    pub fn new(out: W) -> io::Result<Frames<W>> {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4);
        let (writer_tx, writer_rx) = sync_channel::<(u64, Output)>(2 * n + 2);
        let (back_tx, back) = sync_channel::<Vec<u8>>(4);
        let mut jobs = vec![];
        let mut workers = vec![];
        let mut returns = vec![];
        for w in 0..n {
            let (tx, rx) = sync_channel::<(u64, Input)>(2);
            let (ret_tx, ret_rx) = sync_channel::<Vec<u8>>(2);
            let mut cctx = zstd::bulk::Compressor::new(LEVEL)?;
            cctx.include_checksum(false)?;
            cctx.include_contentsize(true)?;
            let to_writer = writer_tx.clone();
            workers.push(
                std::thread::Builder::new()
                    .name("zstd-frames".into())
                    .spawn(move || -> io::Result<()> {
                        for (seq, input) in rx {
                            let out = if incompressible(&mut cctx, input.bytes())? {
                                Output::Raw(input)
                            } else {
                                let mut packed = ret_rx.try_recv().unwrap_or_else(|_| {
                                    Vec::with_capacity(zstd::zstd_safe::compress_bound(CHUNK))
                                });
                                packed.clear();
                                cctx.compress_to_buffer(input.bytes(), &mut packed)?;
                                Output::Packed(packed, input, w)
                            };
                            if to_writer.send((seq, out)).is_err() {
                                // The writer failed; its error is the one to report.
                                return Ok(());
                            }
                        }
                        Ok(())
                    })?,
            );
            jobs.push(tx);
            returns.push(ret_tx);
        }
        let writer = std::thread::Builder::new().name("zstd-out".into()).spawn(
            move || -> io::Result<W> {
                let mut out = Counting { inner: out, n: 0 };
                let mut mark = None;
                let mut next = 0u64;
                let mut waiting = std::collections::BTreeMap::new();
                for (seq, o) in writer_rx {
                    waiting.insert(seq, o);
                    while let Some(o) = waiting.remove(&next) {
                        let input = match o {
                            Output::Raw(input) => {
                                write_raw_frame(&mut out, input.bytes())?;
                                Some(input)
                            }
                            Output::Packed(packed, input, w) => {
                                out.write_all(&packed)?;
                                let _ = returns[w].try_send(packed);
                                Some(input)
                            }
                            Output::Flush => {
                                out.flush()?;
                                None
                            }
                            Output::Mark(tar_offset) => {
                                mark = Some(TailMark {
                                    frame_offset: out.n,
                                    tar_offset,
                                });
                                None
                            }
                        };
                        if let Some(Input::Chunk(chunk)) = input {
                            let _ = back_tx.try_send(chunk);
                        }
                        next += 1;
                    }
                }
                if let Some(seq) = waiting.keys().next() {
                    return Err(io::Error::other(format!(
                        "the compressor lost frame {next} (frame {seq} is waiting)"
                    )));
                }
                if let Some(m) = mark {
                    out.write_all(&m.bytes())?;
                }
                Ok(out.inner)
            },
        )?;
        Ok(Frames {
            buf: Vec::with_capacity(CHUNK),
            jobs,
            writer_tx: Some(writer_tx),
            seq: 0,
            back,
            workers,
            writer: Some(writer),
            failed: None,
            sent: false,
        })
    }
}

impl<W> Frames<W> {
    /// Sends what is buffered as a frame of its own, then closes the stream; returns the
    /// output once everything is written.
    pub fn finish(mut self) -> io::Result<W> {
        if self.buf.is_empty() && !self.sent {
            // No input at all is still one (empty) frame, as `zstd` makes of an empty file.
            self.send(Input::Chunk(Vec::new()))?;
        }
        self.send_chunk()?;
        self.join()
    }

    /// Writes `buf` without copying it: what is buffered goes out as a frame, then `buf` as
    /// one of its own (when it is at least [`SHARED_MIN`]; a smaller one is copied).
    pub fn write_shared(&mut self, buf: Shared) -> io::Result<()> {
        if (*buf).as_ref().len() < SHARED_MIN {
            return self.write_all((*buf).as_ref());
        }
        self.send_chunk()?;
        self.send(Input::Shared(buf))
    }

    /// Ends the current frame: the archive's tail starts at `tar_offset` of the uncompressed
    /// stream, with the next frame, which the stream's last bytes will point at.
    pub fn mark_tail(&mut self, tar_offset: u64) -> io::Result<()> {
        self.send_chunk()?;
        self.enqueue(|f, seq| {
            f.writer_tx
                .as_ref()
                .is_some_and(|tx| tx.send((seq, Output::Mark(tar_offset))).is_ok())
        })
    }

    /// Hands the next piece to its worker.
    fn send(&mut self, input: Input) -> io::Result<()> {
        self.sent = true;
        self.enqueue(|f, seq| {
            let w = (seq % f.jobs.len().max(1) as u64) as usize;
            f.jobs
                .get(w)
                .is_some_and(|tx| tx.send((seq, input)).is_ok())
        })
    }

    /// Gives `put` the next sequence number to queue something under; it says whether the
    /// queue took it. A thread that stopped (a queue that refused) is asked why.
    fn enqueue(&mut self, put: impl FnOnce(&Self, u64) -> bool) -> io::Result<()> {
        if let Some(f) = &self.failed {
            return Err(f.again());
        }
        let seq = self.seq;
        self.seq += 1;
        if put(self, seq) {
            Ok(())
        } else {
            Err(self.stopped())
        }
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut next = self.back.try_recv().unwrap_or_default();
        next.clear();
        next.reserve(CHUNK);
        let chunk = std::mem::replace(&mut self.buf, next);
        self.send(Input::Chunk(chunk))
    }

    fn stopped(&mut self) -> io::Error {
        match self.join() {
            Err(e) => e,
            Ok(_) => io::Error::other("the compressor stopped early"),
        }
    }

    /// Closes the queues and waits for every thread: the output, or the first error (the
    /// writer's before a worker's: a worker stops when the writer has).
    fn join(&mut self) -> io::Result<W> {
        self.jobs.clear();
        self.writer_tx = None;
        let mut first: Option<io::Error> = None;
        for w in self.workers.drain(..) {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a compressor thread panicked")));
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        let r = match self.writer.take() {
            Some(w) => w
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the compressor's writer panicked"))),
            None => Err(match &self.failed {
                Some(f) => f.again(),
                None => io::Error::other("the compressor is finished"),
            }),
        };
        let r = match (r, first) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(e)) => Err(e),
            (Ok(w), None) => Ok(w),
        };
        if let Err(e) = &r
            && self.failed.is_none()
        {
            self.failed = Some(Failed::of(e));
        }
        r
    }
}

impl<W> Write for Frames<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(f) = &self.failed {
            return Err(f.again());
        }
        let n = (CHUNK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_chunk()?;
        }
        Ok(n)
    }

    /// Cuts a frame at this point and has the writer flush the output after it.
    fn flush(&mut self) -> io::Result<()> {
        self.send_chunk()?;
        self.enqueue(|f, seq| {
            f.writer_tx
                .as_ref()
                .is_some_and(|tx| tx.send((seq, Output::Flush)).is_ok())
        })
    }
}

/// Whether a sample of `chunk` saves under 3% compressed.
fn incompressible(cctx: &mut zstd::bulk::Compressor<'_>, chunk: &[u8]) -> io::Result<bool> {
    if chunk.len() < SAMPLES * SAMPLE * 2 {
        return Ok(false);
    }
    let step = chunk.len() / SAMPLES;
    let mut sample = Vec::with_capacity(SAMPLES * SAMPLE);
    for i in 0..SAMPLES {
        sample.extend_from_slice(&chunk[i * step..i * step + SAMPLE]);
    }
    let packed = cctx.compress(&sample)?;
    Ok(packed.len() * 100 > sample.len() * 97)
}

/// A frame of raw blocks (RFC 8878 §3.1.1): magic, a header of one segment whose content
/// size is given in 4 bytes, then blocks of at most 128 KiB, the last one marked. One
/// vectored write: a buffered output passes it straight to the file, without a copy.
fn write_raw_frame<W: Write>(out: &mut W, chunk: &[u8]) -> io::Result<()> {
    let header = raw_frame_header(chunk.len());
    let blocks: Vec<&[u8]> = if chunk.is_empty() {
        vec![&[]]
    } else {
        chunk.chunks(RAW_BLOCK).collect()
    };
    let heads: Vec<[u8; 3]> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| raw_block_header(i + 1 == blocks.len(), b.len()))
        .collect();
    let mut slices = vec![io::IoSlice::new(&header)];
    for (h, b) in heads.iter().zip(&blocks) {
        slices.push(io::IoSlice::new(h));
        slices.push(io::IoSlice::new(b));
    }
    write_all_vectored(out, &mut slices)
}

/// The header of a raw frame of `len` bytes as [`write_raw_frame`] writes it:
/// Frame_Content_Size_flag 2 (4 bytes), Single_Segment_flag, no checksum, no dictionary.
pub(crate) fn raw_frame_header(len: usize) -> [u8; RAW_HEADER] {
    let mut header = [0u8; RAW_HEADER];
    header[..4].copy_from_slice(&zstd::zstd_safe::MAGICNUMBER.to_le_bytes());
    header[4] = (2 << 6) | (1 << 5);
    header[5..9].copy_from_slice(&(len as u32).to_le_bytes());
    header
}

/// A raw block's header (RFC 8878 §3.1.1.2): Last_Block, Block_Type 0 (raw), Block_Size;
/// 3 bytes little-endian.
pub(crate) fn raw_block_header(last: bool, len: usize) -> [u8; 3] {
    let h = (last as u32 | (len as u32) << 3).to_le_bytes();
    [h[0], h[1], h[2]]
}

/// `Write::write_all_vectored`, which is not stable.
pub fn write_all_vectored<W: Write + ?Sized>(
    out: &mut W,
    mut slices: &mut [io::IoSlice<'_>],
) -> io::Result<()> {
    io::IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;

    /// `n` bytes of xorshift noise (incompressible), different for each odd `seed`.
    pub(crate) fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn decode(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(bytes)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn the_tail_mark_points_at_the_frame_where_the_tail_starts() {
        let head = random(CHUNK + 777, 3);
        let tail = b"everything after the pages".repeat(1000);
        let mut f = Frames::new(Vec::new()).unwrap();
        f.write_all(&head).unwrap();
        f.mark_tail(head.len() as u64).unwrap();
        f.write_all(&tail).unwrap();
        let bytes = f.finish().unwrap();
        // One stream still: decoders pass over the mark.
        assert_eq!(decode(&bytes), [head.as_slice(), &tail].concat());
        let len = bytes.len() as u64;
        let m = TailMark::parse(&bytes[bytes.len() - TAIL_MARK_LEN as usize..], len).unwrap();
        assert_eq!(m.tar_offset, head.len() as u64);
        assert_eq!(decode(&bytes[m.frame_offset as usize..]), tail);
        // Anything else at the end is no mark.
        assert_eq!(TailMark::parse(&bytes[..32], len), None);
        let mut far = bytes[bytes.len() - 32..].to_vec();
        far[16..24].copy_from_slice(&len.to_le_bytes());
        assert_eq!(TailMark::parse(&far, len), None);
    }

    #[test]
    fn random_goes_raw_text_is_compressed_and_both_decode_as_one_stream() {
        let noise = random(3 * CHUNK + 12345, 7);
        let text: Vec<u8> = b"the same line again and again, with a counter: "
            .iter()
            .cycle()
            .take(2 * CHUNK + 99)
            .copied()
            .collect();
        let mut input = noise.clone();
        input.extend_from_slice(&text);
        let mut f = Frames::new(Vec::new()).unwrap();
        // Odd write sizes cross chunk boundaries.
        for piece in input.chunks(300_007) {
            f.write_all(piece).unwrap();
        }
        let out = f.finish().unwrap();
        assert_eq!(decode(&out), input);
        // Raw frames cost 9 bytes and 3 per 128 KiB; the text shrinks to almost nothing.
        let raw = noise.len() + 4 * 9 + 3 * noise.len().div_ceil(RAW_BLOCK) + 3 * 8;
        assert!(out.len() < raw + (64 << 10), "{} vs {raw}", out.len());
        assert!(out.len() > noise.len(), "noise cannot shrink");
    }

    #[test]
    fn shared_buffers_are_frames_of_their_own_in_order() {
        let a = random(CHUNK, 1);
        let b = random(100, 2);
        let mut f = Frames::new(Vec::new()).unwrap();
        f.write_all(b"head").unwrap();
        f.write_shared(std::sync::Arc::new(a.clone())).unwrap();
        f.write_shared(std::sync::Arc::new(b.clone())).unwrap();
        f.write_all(b"tail").unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&a);
        want.extend_from_slice(&b);
        want.extend_from_slice(b"tail");
        assert_eq!(decode(&f.finish().unwrap()), want);
    }

    /// Many pieces of both kinds, shared and copied, with flushes between: whichever worker
    /// finishes first, the frames come out in the order they went in.
    #[test]
    fn many_pieces_on_many_workers_keep_their_order() {
        let text: Vec<u8> = b"compressible, again and again; "
            .iter()
            .cycle()
            .take(CHUNK)
            .copied()
            .collect();
        let mut f = Frames::new(Vec::new()).unwrap();
        let mut want = Vec::new();
        for i in 0..40u64 {
            let piece = if i % 3 == 0 {
                random(CHUNK - 17 * i as usize, i)
            } else {
                let mut t = text.clone();
                t[..8].copy_from_slice(&i.to_le_bytes());
                t
            };
            want.extend_from_slice(&piece);
            if i % 2 == 0 {
                f.write_shared(std::sync::Arc::new(piece)).unwrap();
            } else {
                f.write_all(&piece).unwrap();
            }
            if i % 7 == 0 {
                f.flush().unwrap();
            }
        }
        assert_eq!(decode(&f.finish().unwrap()), want);
    }

    #[test]
    fn empty_short_and_flushed_streams_decode() {
        let f = Frames::new(Vec::new()).unwrap();
        assert_eq!(decode(&f.finish().unwrap()), b"");
        let mut f = Frames::new(Vec::new()).unwrap();
        f.write_all(b"abc").unwrap();
        f.flush().unwrap();
        f.write_all(b"def").unwrap();
        assert_eq!(decode(&f.finish().unwrap()), b"abcdef");
        // A raw frame of exactly one block and of none.
        for n in [RAW_BLOCK, 0, 1] {
            let data = random(n, 3);
            let mut out = Vec::new();
            write_raw_frame(&mut out, &data).unwrap();
            assert_eq!(decode(&out), data, "{n} bytes");
        }
    }

    /// An output that fails after a while: the error comes back to the writer, not a hang.
    #[test]
    fn the_outputs_error_reaches_the_writer() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0 < b.len() {
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
                self.0 -= b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut f = Frames::new(Full(2 * CHUNK)).unwrap();
        let data = random(CHUNK, 9);
        let err = (0..16)
            .find_map(|_| f.write_all(&data).err())
            .or_else(|| f.finish().err())
            .expect("writing 16 MiB into 2 MiB succeeded");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
}
