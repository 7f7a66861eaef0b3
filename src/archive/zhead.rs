//! The head of a zstd archive file (everything before its tail mark, which holds only page
//! parts) read in place, so that `restore -i` can find each part and read it on its own,
//! as it does in an uncompressed archive: the feed stages only the parts CRIU reads, and
//! the copy-in (archive::uffd) unpacks the others straight into its buffers.
//!
//! ferry's compressor (archive::frames) writes every part of 64 KiB or more as a zstd
//! frame of its own, and a frame's header gives its decompressed size. So a place in the
//! head's tar stream is a frame and an offset into what it decompresses to, and moving
//! over a part costs reading the headers of its frame and blocks, not decompressing it.
//! Only the small frames that hold tar headers are decompressed.
//!
//! Nothing found here is trusted: every byte read is hashed against the signed index, as
//! in an uncompressed archive. A head laid out otherwise than ferry writes it (a frame
//! without its size, a dictionary, a frame over [`MAX_FRAME`], a long-name header) is
//! not walked: the caller falls back to decompressing the head in order.

use crate::archive::frames::{RAW_BLOCK, RAW_HEADER, raw_block_header, raw_frame_header};
use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;

const MAGIC: u32 = zstd::zstd_safe::MAGICNUMBER;
/// The most a frame may decompress to: ferry's frames hold at most 1 MiB.
pub const MAX_FRAME: u64 = 4 << 20;

/// Why a head cannot be read in place (or a read failed), for the debug log and errors.
pub type Why = String;

/// One zstd frame: where it starts, its whole length, and what it decompresses to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    pub at: u64,
    pub len: u64,
    pub content: u64,
}

/// The frame at `at`, which must end by `end`, from its header and its blocks' headers.
pub fn frame(file: &File, at: u64, end: u64) -> Result<Frame, Why> {
    let mut h = [0u8; 18];
    let n = ((end.saturating_sub(at)) as usize).min(h.len());
    if n < 6 {
        return Err(format!("no frame at {at}"));
    }
    file.read_exact_at(&mut h[..n], at)
        .map_err(|e| format!("reading at {at}: {e}"))?;
    if u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) != MAGIC {
        return Err(format!("no zstd frame at {at}"));
    }
    let fhd = h[4];
    let single = fhd & (1 << 5) != 0;
    if fhd & (1 << 3) != 0 || fhd & 3 != 0 {
        return Err(format!(
            "the frame at {at} has a reserved bit or a dictionary"
        ));
    }
    let checksum = fhd & (1 << 2) != 0;
    let mut pos = 5 + usize::from(!single);
    let fcs_len = match fhd >> 6 {
        0 if single => 1,
        0 => return Err(format!("the frame at {at} does not give its size")),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    if pos + fcs_len > n {
        return Err(format!("the frame at {at} is cut short"));
    }
    let mut fcs = [0u8; 8];
    fcs[..fcs_len].copy_from_slice(&h[pos..pos + fcs_len]);
    let mut content = u64::from_le_bytes(fcs);
    if fcs_len == 2 {
        content += 256;
    }
    if content > MAX_FRAME {
        return Err(format!("the frame at {at} holds {content} bytes"));
    }
    pos += fcs_len;
    let mut b = at + pos as u64;
    loop {
        let mut bh = [0u8; 3];
        if b + 3 > end {
            return Err(format!("the frame at {at} runs past the head"));
        }
        file.read_exact_at(&mut bh, b)
            .map_err(|e| format!("reading at {b}: {e}"))?;
        let bh = u32::from(bh[0]) | u32::from(bh[1]) << 8 | u32::from(bh[2]) << 16;
        let size = u64::from(bh >> 3);
        b += 3 + match (bh >> 1) & 3 {
            0 | 2 => size,
            1 => 1,
            _ => return Err(format!("the frame at {at} has a reserved block type")),
        };
        if bh & 1 == 1 {
            break;
        }
    }
    if checksum {
        b += 4;
    }
    if b > end {
        return Err(format!("the frame at {at} runs past the head"));
    }
    Ok(Frame {
        at,
        len: b - at,
        content,
    })
}

/// A place in the head's tar stream: `skip` bytes into what the frame at `at` decompresses
/// to (always fewer than it holds), or the head's end.
#[derive(Debug, Clone)]
pub struct Place {
    pub at: u64,
    pub skip: u64,
    end: u64,
    frame: Option<Frame>,
}

impl Place {
    /// The start of a head that ends (its tail mark's frame starts) at `end`.
    pub fn start(end: u64) -> Place {
        Place::at(0, 0, end)
    }

    pub fn at(at: u64, skip: u64, end: u64) -> Place {
        Place {
            at,
            skip,
            end,
            frame: None,
        }
    }

    pub fn at_end(&self) -> bool {
        self.at == self.end && self.skip == 0
    }

    fn frame(&mut self, file: &File) -> Result<Frame, Why> {
        match self.frame {
            Some(f) if f.at == self.at => Ok(f),
            _ => {
                let f = frame(file, self.at, self.end)?;
                self.frame = Some(f);
                Ok(f)
            }
        }
    }

    /// What frame `f` (the one here) holds from here on; an error if the file changed
    /// under a place found earlier.
    fn left_in(&self, f: Frame) -> Result<u64, Why> {
        f.content
            .checked_sub(self.skip)
            .ok_or_else(|| format!("the frame at {} is shorter than it was", f.at))
    }

    /// Moves `n` bytes on, over whole frames without decompressing them.
    pub fn advance(&mut self, file: &File, mut n: u64) -> Result<(), Why> {
        loop {
            if self.at == self.end {
                return match n {
                    0 => Ok(()),
                    _ => Err("past the end of the head".into()),
                };
            }
            let f = self.frame(file)?;
            let left = self.left_in(f)?;
            if n < left {
                self.skip += n;
                return Ok(());
            }
            n -= left;
            self.at += f.len;
            self.skip = 0;
        }
    }

    /// Reads `out.len()` bytes from here on (decompressing the frames they are in) and
    /// moves past them.
    pub fn read(&mut self, file: &File, out: &mut [u8], un: &mut Unpacker) -> Result<(), Why> {
        let mut got = 0;
        while got < out.len() {
            if self.at == self.end {
                return Err("past the end of the head".into());
            }
            let f = self.frame(file)?;
            let left = self.left_in(f)?;
            let plain = un.frame(file, f)?;
            let take = (out.len() - got).min(left as usize);
            let from = self.skip as usize;
            out[got..got + take].copy_from_slice(&plain[from..from + take]);
            got += take;
            self.advance(file, take as u64)?;
        }
        Ok(())
    }
}

/// A thread's zstd context and buffers for reading parts, kept from one part to the next.
pub struct Unpacker {
    dctx: zstd::bulk::Decompressor<'static>,
    packed: Vec<u8>,
    plain: Vec<u8>,
    /// The frame whose content `plain` holds.
    holds: Option<u64>,
}

impl Unpacker {
    pub fn new() -> std::io::Result<Unpacker> {
        Ok(Unpacker {
            dctx: zstd::bulk::Decompressor::new()?,
            packed: vec![],
            plain: vec![],
            holds: None,
        })
    }

    /// What frame `f` decompresses to.
    fn frame(&mut self, file: &File, f: Frame) -> Result<&[u8], Why> {
        if self.holds != Some(f.at) {
            self.holds = None;
            self.plain.resize(f.content as usize, 0);
            let Unpacker {
                dctx,
                packed,
                plain,
                ..
            } = self;
            unpack_into(dctx, packed, file, f, plain)?;
            self.holds = Some(f.at);
        }
        Ok(&self.plain)
    }

    /// Reads a part's data, `out.len()` bytes from `skip` into the frame at `at` on (a head
    /// that ends at `end`). A part in a raw frame of its own is read straight into `out`;
    /// any other is decompressed.
    pub fn read_part(
        &mut self,
        file: &File,
        at: u64,
        skip: u64,
        end: u64,
        out: &mut [u8],
    ) -> Result<(), Why> {
        if skip == 0 && read_raw(file, at, end, out)? {
            return Ok(());
        }
        if skip == 0 {
            let f = frame(file, at, end)?;
            if f.content == out.len() as u64 {
                return unpack_into(&mut self.dctx, &mut self.packed, file, f, out);
            }
        }
        Place::at(at, skip, end).read(file, out, self)
    }
}

/// Decompresses frame `f` into `out`, exactly its content.
fn unpack_into(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    packed: &mut Vec<u8>,
    file: &File,
    f: Frame,
    out: &mut [u8],
) -> Result<(), Why> {
    packed.resize(f.len as usize, 0);
    file.read_exact_at(packed, f.at)
        .map_err(|e| format!("reading at {}: {e}", f.at))?;
    match dctx.decompress_to_buffer(&packed[..], out) {
        Ok(n) if n as u64 == f.content => Ok(()),
        Ok(n) => Err(format!(
            "the frame at {} gave {n} bytes, its header says {}",
            f.at, f.content
        )),
        Err(e) => Err(format!("the frame at {}: {e}", f.at)),
    }
}

/// Reads `out` from a raw frame at `at` laid out as archive::frames writes one (its data in
/// blocks of 128 KiB), with one vectored read straight into `out`; false if the frame is
/// not such a frame of exactly `out.len()` bytes (what the read put in `out` is then of no
/// use).
fn read_raw(file: &File, at: u64, end: u64, out: &mut [u8]) -> Result<bool, Why> {
    let blocks = out.len().div_ceil(RAW_BLOCK).max(1);
    let len = (RAW_HEADER + 3 * blocks + out.len()) as u64;
    if at + len > end {
        return Ok(false);
    }
    let mut header = [0u8; RAW_HEADER];
    let mut heads = vec![[0u8; 3]; blocks];
    let n = {
        let mut iov = Vec::with_capacity(1 + 2 * blocks);
        iov.push(IoSliceMut::new(&mut header));
        let mut rest = &mut out[..];
        for h in heads.iter_mut() {
            iov.push(IoSliceMut::new(h));
            let (data, more) = rest.split_at_mut(rest.len().min(RAW_BLOCK));
            iov.push(IoSliceMut::new(data));
            rest = more;
        }
        nix::sys::uio::preadv(file, &mut iov, at as libc::off_t)
            .map_err(|e| format!("reading at {at}: {e}"))?
    };
    if n as u64 != len || header != raw_frame_header(out.len()) {
        return Ok(false);
    }
    let mut left = out.len();
    for (i, h) in heads.iter().enumerate() {
        let size = left.min(RAW_BLOCK);
        left -= size;
        if *h != raw_block_header(i + 1 == blocks, size) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::frames::{Frames, tests::random};
    use std::io::Write;

    /// A head as archive::frames writes one: small writes gathered into chunk frames, and
    /// shared buffers as frames of their own.
    fn head(pieces: &[(bool, Vec<u8>)]) -> (tempfile::NamedTempFile, Vec<u8>, u64) {
        let mut f = Frames::new(Vec::new()).unwrap();
        let mut plain = vec![];
        for (shared, bytes) in pieces {
            if *shared {
                f.write_shared(std::sync::Arc::new(bytes.clone())).unwrap();
            } else {
                f.write_all(bytes).unwrap();
            }
            plain.extend_from_slice(bytes);
        }
        f.flush().unwrap();
        let packed = f.finish().unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&packed).unwrap();
        let len = packed.len() as u64;
        (file, plain, len)
    }

    #[test]
    fn frames_are_measured_from_their_headers() {
        let compressible = vec![7u8; 300 << 10];
        let pieces = vec![
            (false, b"a tar header".repeat(40)),
            (true, random(1 << 20, 5)),
            (false, b"x".to_vec()),
            (true, compressible.clone()),
            (true, random((200 << 10) + 4096, 9)),
        ];
        let (file, plain, len) = head(&pieces);
        let f = file.as_file();
        let mut at = 0;
        let mut contents = vec![];
        while at < len {
            let fr = frame(f, at, len).unwrap();
            contents.push(fr.content);
            at += fr.len;
        }
        assert_eq!(at, len);
        assert_eq!(contents, [480, 1 << 20, 1, 300 << 10, (200 << 10) + 4096]);
        // Every byte read from any place, across frames, is what was written.
        let mut un = Unpacker::new().unwrap();
        for (from, n) in [
            (0, 600),
            (470, 20),
            (480, 1 << 20),
            (1000, (1 << 20) + (300 << 10)),
            (0, plain.len()),
        ] {
            let mut p = Place::start(len);
            p.advance(f, from as u64).unwrap();
            let mut out = vec![0u8; n];
            p.read(f, &mut out, &mut un).unwrap();
            assert!(out == plain[from..from + n], "{from}+{n}");
        }
        let mut p = Place::start(len);
        p.advance(f, plain.len() as u64).unwrap();
        assert!(p.at_end());
        assert!(p.advance(f, 1).is_err());
    }

    #[test]
    fn parts_in_frames_of_their_own_are_read_in_place() {
        let raw = random(1 << 20, 3);
        let odd = random((128 << 10) * 2 + 4096, 11);
        let packed = vec![1u8; 256 << 10];
        let pieces = vec![
            (false, b"h".repeat(512)),
            (true, raw.clone()),
            (false, b"h".repeat(512)),
            (true, odd.clone()),
            (false, b"h".repeat(512)),
            (true, packed.clone()),
        ];
        let (file, _, len) = head(&pieces);
        let f = file.as_file();
        let mut un = Unpacker::new().unwrap();
        let mut p = Place::start(len);
        for part in [&raw, &odd, &packed] {
            p.advance(f, 512).unwrap();
            let mut out = vec![0u8; part.len()];
            // A raw frame reads straight in; a compressed one is unpacked.
            let straight = read_raw(f, p.at, len, &mut out).unwrap();
            assert_eq!(straight, !std::ptr::eq(part, &packed));
            let mut out = vec![0u8; part.len()];
            un.read_part(f, p.at, p.skip, len, &mut out).unwrap();
            assert!(out == **part);
            p.advance(f, part.len() as u64).unwrap();
        }
        assert!(p.at_end());
    }

    #[test]
    fn a_damaged_frame_is_an_error_not_wrong_bytes() {
        let raw = random(1 << 20, 3);
        let (file, _, len) = head(&[(false, b"h".repeat(512)), (true, raw.clone())]);
        let mut bytes = std::fs::read(file.path()).unwrap();
        let mut p = Place::start(len);
        p.advance(file.as_file(), 512).unwrap();
        let at = p.at as usize;
        // A block header that says compressed: the raw read refuses it, and unpacking fails.
        bytes[at + RAW_HEADER] |= 0b100;
        let mut bad = tempfile::NamedTempFile::new().unwrap();
        bad.write_all(&bytes).unwrap();
        let mut out = vec![0u8; raw.len()];
        assert!(!read_raw(bad.as_file(), at as u64, len, &mut out).unwrap());
        let mut un = Unpacker::new().unwrap();
        assert!(
            un.read_part(bad.as_file(), at as u64, 0, len, &mut out)
                .is_err()
        );
        // A frame said to be larger than any ferry writes is not walked.
        let mut bytes = std::fs::read(file.path()).unwrap();
        bytes[at + 8] = 0x40;
        let mut bad = tempfile::NamedTempFile::new().unwrap();
        bad.write_all(&bytes).unwrap();
        assert!(frame(bad.as_file(), at as u64, len).is_err());
    }
}
