//! Memory pages from CRIU's page stream into the archive while CRIU dumps. The page server
//! thread ([`crate::criu::page_server::serve`] with a [`ChannelSink`]) reads the socket into
//! 1 MiB buffers; the archive thread ([`write_events`]) writes them out as they come. A
//! pages image's size is known only when it ends, and a tar entry needs its size before its
//! bytes, so each pages image goes in as parts of at most [`PART`] bytes named
//! `checkpoint/pages-<id>.img.part<N>`, each with its own digest in the manifest; restore
//! joins them back into `pages-<id>.img`.

use crate::archive::hashing::CHUNK;
use crate::archive::writer::{ArchiveWriter, Error};
use crate::criu::page_server::PageSink;
use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender};

/// The largest part of a pages image: what the archive thread holds before writing it.
pub const PART: usize = 1 << 20;

/// `<file>.part<N>`: the name of the N-th part of `file`.
pub fn part_name(file: &str, n: u32) -> String {
    format!("{file}.part{n}")
}

/// The file and index of a part's name (`pages-65537.img.part3` -> (`pages-65537.img`, 3)).
pub fn split_part(name: &str) -> Option<(&str, u32)> {
    let (file, n) = name.rsplit_once(".part")?;
    if file.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // No leading zeros: one spelling per part.
    if n.len() > 1 && n.starts_with('0') {
        return None;
    }
    Some((file, n.parse().ok()?))
}

pub enum Event {
    Data { file: String, buf: Vec<u8> },
    Done { file: String },
    Image { file: String, bytes: Vec<u8> },
}

/// The page server's sink: page data into buffers taken from `pool`, sent to the archive
/// thread.
pub struct ChannelSink {
    pub tx: SyncSender<Event>,
    pub pool: Receiver<Vec<u8>>,
}

fn gone() -> io::Error {
    io::Error::other("the archive writer stopped")
}

impl PageSink for ChannelSink {
    fn pages(&mut self, file: &str, src: &mut dyn Read, len: u64) -> io::Result<()> {
        let mut left = len;
        while left > 0 {
            let mut buf = self
                .pool
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
            let want = (left as usize).min(CHUNK);
            // A recycled buffer keeps its length: only a fresh or shorter one is zeroed.
            buf.resize(want, 0);
            src.read_exact(&mut buf)?;
            left -= want as u64;
            self.tx
                .send(Event::Data {
                    file: file.to_string(),
                    buf,
                })
                .map_err(|_| gone())?;
        }
        Ok(())
    }

    fn pages_done(&mut self, file: &str) -> io::Result<()> {
        self.tx
            .send(Event::Done {
                file: file.to_string(),
            })
            .map_err(|_| gone())
    }

    fn image(&mut self, file: &str, bytes: Vec<u8>) -> io::Result<()> {
        self.tx
            .send(Event::Image {
                file: file.to_string(),
                bytes,
            })
            .map_err(|_| gone())
    }
}

/// Writes what the page server sends as `<prefix>/<file>` entries until the sender is gone.
/// The page server ends each pages image (`Done`) before it starts the next.
pub fn write_events<W: Write>(
    w: &mut ArchiveWriter<W>,
    prefix: &str,
    events: Receiver<Event>,
) -> Result<(), Error> {
    // The pages image being written, the number of its next part, and that part's buffers.
    let mut file = String::new();
    let mut next = 0u32;
    let mut part: Vec<Vec<u8>> = vec![];
    // The images the page server rebuilt (pagemaps): small, kept for after the pages.
    let mut images = vec![];
    let flush = |w: &mut ArchiveWriter<W>, file: &str, next: &mut u32, part: &mut Vec<_>| {
        let name = format!("{prefix}/{}", part_name(file, *next));
        *next += 1;
        w.add_chunks(&name, std::mem::take(part))
    };
    for ev in events {
        match ev {
            Event::Data { file: f, buf } => {
                if f != file {
                    if !part.is_empty() {
                        flush(w, &file, &mut next, &mut part)?;
                    }
                    (file, next) = (f, 0);
                }
                part.push(buf);
                if part.iter().map(Vec::len).sum::<usize>() >= PART {
                    flush(w, &file, &mut next, &mut part)?;
                }
            }
            Event::Done { file: f } => {
                if f != file {
                    (file, next) = (f, 0);
                }
                // Also an image with no data gets its (empty) first part: CRIU opens it.
                if !part.is_empty() || next == 0 {
                    flush(w, &file, &mut next, &mut part)?;
                }
                file.clear();
            }
            // After the pages: a restore reads everything but them first (archive::feed).
            Event::Image { file, bytes } => images.push((file, bytes)),
        }
    }
    w.mark_tail()?;
    for (file, bytes) in images {
        w.add_bytes(&format!("{prefix}/{file}"), &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_round_trip() {
        assert_eq!(part_name("pages-65537.img", 3), "pages-65537.img.part3");
        assert_eq!(
            split_part("pages-65537.img.part3"),
            Some(("pages-65537.img", 3))
        );
        assert_eq!(split_part("pages-1.img.part0"), Some(("pages-1.img", 0)));
        for bad in [
            "pages-1.img",
            "x.part",
            ".part1",
            "x.part01",
            "x.partz",
            "x.part-1",
        ] {
            assert_eq!(split_part(bad), None, "{bad}");
        }
    }
}
