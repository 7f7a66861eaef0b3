//! sha256 on threads of its own: the caller moves bytes (disk, compressor, tar) while the
//! digests are computed on the other cores. Hashing is the slowest step of writing and of
//! verifying an archive, so it must not wait for the I/O or stall it.

use crate::archive::sha256x2::{Lane, update_pair};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

/// How much is handed to a hashing thread at once.
pub const CHUNK: usize = 1 << 20;

/// sha256 of a sequence of entries on several threads: each entry goes whole to one thread,
/// and consecutive entries go to different threads, so an archive whose big files come as
/// parts (archive::pages) is hashed on every core, two entries at a time on each (see
/// `Worker`). Hashing is the slowest step of writing and of verifying an archive: one
/// thread does 1.8 GB/s with SHA-NI on one entry, 3.5 GB/s on two, still slower than the
/// copies around it.
pub struct Hashers {
    workers: Vec<SyncSender<Msg>>,
    handles: Vec<JoinHandle<()>>,
    results: Receiver<Done>,
    /// Hashed buffers the caller's pool did not take, for [`buffer`](Self::buffer): fresh
    /// ones would be fresh pages, and touching fresh memory is slow on these VMs.
    pool: Receiver<Vec<u8>>,
    pool_tx: SyncSender<Vec<u8>>,
    recycle: Option<SyncSender<Vec<u8>>>,
    jobs: usize,
    current: Option<usize>,
}

enum Msg {
    Data(Arc<Recycled>),
    End(usize),
    /// Hash everything held back now ([`Hashers::flush`]).
    Flush,
}

/// A digest for the caller: (job, sha256, byte count).
pub type Done = (usize, [u8; 32], u64);

/// A hashing thread. It hashes two entries at once (archive::sha256x2), nearly twice as fast
/// as one: the entry being sent, beside an earlier one it still holds, or two earlier ones.
/// Entries reach a thread one after the other, so it holds an entry's bytes back (at most
/// [`HOLD`](Self::HOLD)) until the next entry brings bytes to pair them with, and hashes
/// alone only what it can no longer pair: past that limit, or once the caller is done.
#[derive(Default)]
struct Worker {
    lanes: [Option<Open>; 2],
    /// The lane of the entry being sent.
    current: Option<usize>,
}

/// An entry in one of a worker's lanes.
struct Open {
    job: Option<usize>,
    lane: Lane,
    /// Bytes not yet hashed: buffers, and how far into the first one.
    queue: VecDeque<Arc<Recycled>>,
    pos: usize,
}

impl Open {
    fn front(&self) -> &[u8] {
        &self.queue[0].buf[self.pos..]
    }

    /// `k` bytes of the front buffer are hashed.
    fn advance(&mut self, k: usize) {
        self.pos += k;
        if self.pos == self.queue[0].buf.len() {
            self.queue.pop_front();
            self.pos = 0;
        }
    }

    /// Bytes not yet hashed.
    fn held(&self) -> usize {
        self.queue.iter().map(|b| b.buf.len()).sum::<usize>() - self.pos
    }

    fn hash_alone(&mut self) {
        while !self.queue.is_empty() {
            let k = self.front().len();
            self.lane.update(&self.queue[0].buf[self.pos..]);
            self.advance(k);
        }
    }
}

impl Worker {
    /// How much of one entry a worker holds back waiting for another to pair it with.
    const HOLD: usize = 4 * CHUNK;

    fn run(mut self, rx: Receiver<Msg>, done: std::sync::mpsc::Sender<Done>) {
        for msg in rx {
            if matches!(msg, Msg::Flush) {
                if self.hash(true, &done).is_err() {
                    return;
                }
                continue;
            }
            let lane = match self.current {
                Some(l) => l,
                None => {
                    // One lane is always free here: the last entry ended, and whichever
                    // lane still held bytes was paired with the other until one emptied.
                    let l = self
                        .lanes
                        .iter()
                        .position(Option::is_none)
                        .expect("a free lane");
                    self.lanes[l] = Some(Open {
                        job: None,
                        lane: Lane::new(),
                        queue: VecDeque::new(),
                        pos: 0,
                    });
                    self.current = Some(l);
                    l
                }
            };
            let open = self.lanes[lane].as_mut().expect("the current lane is open");
            match msg {
                Msg::Data(buf) => {
                    if !buf.buf.is_empty() {
                        open.queue.push_back(buf);
                    }
                }
                Msg::End(job) => {
                    open.job = Some(job);
                    self.current = None;
                }
                Msg::Flush => unreachable!("handled above"),
            }
            if self.hash(false, &done).is_err() {
                return;
            }
        }
        let _ = self.hash(true, &done);
    }

    /// Hashes what can be hashed now (everything once `closing`) and sends the digests of
    /// the entries that are done.
    fn hash(&mut self, closing: bool, done: &std::sync::mpsc::Sender<Done>) -> Result<(), ()> {
        loop {
            if let [Some(a), Some(b)] = &mut self.lanes
                && !a.queue.is_empty()
                && !b.queue.is_empty()
            {
                let k = a.front().len().min(b.front().len());
                update_pair(
                    &mut a.lane,
                    &a.queue[0].buf[a.pos..a.pos + k],
                    &mut b.lane,
                    &b.queue[0].buf[b.pos..b.pos + k],
                );
                a.advance(k);
                b.advance(k);
                continue;
            }
            let mut progressed = false;
            for l in 0..2 {
                let others_free = self.lanes[1 - l].is_none();
                let Some(open) = &mut self.lanes[l] else {
                    continue;
                };
                if !open.queue.is_empty()
                    && (closing || (others_free && open.job.is_none() && open.held() > Self::HOLD))
                {
                    open.hash_alone();
                    progressed = true;
                }
                if open.queue.is_empty()
                    && let Some(job) = open.job
                {
                    let open = self.lanes[l].take().expect("checked above");
                    let n = open.lane.hashed();
                    done.send((job, open.lane.finalize(), n)).map_err(|_| ())?;
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }
}

/// A filled buffer that may be read by several threads at once (a hashing thread and the
/// compressor, see [`Hashers::share`]); the last one done with it sends it back for reuse:
/// first to the caller's pool, else to the hashers' own.
pub struct Recycled {
    buf: Vec<u8>,
    recycle: Option<SyncSender<Vec<u8>>>,
    pool: SyncSender<Vec<u8>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let buf = match &self.recycle {
            Some(r) => match r.try_send(buf) {
                Ok(()) => return,
                Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => b,
            },
            None => buf,
        };
        let _ = self.pool.try_send(buf);
    }
}

impl Hashers {
    /// `recycle`: where hashed buffers go first (whoever fills them for
    /// [`update_owned`](Self::update_owned), e.g. archive::pages); what it does not take is
    /// kept for [`buffer`](Self::buffer).
    pub fn new(recycle: Option<SyncSender<Vec<u8>>>) -> Hashers {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 4);
        let (pool_tx, pool) = sync_channel(16);
        let (done, results) = std::sync::mpsc::channel();
        let mut workers = vec![];
        let mut handles = vec![];
        for _ in 0..threads {
            let (tx, rx) = sync_channel::<Msg>(4);
            let done = done.clone();
            handles.push(std::thread::spawn(move || Worker::default().run(rx, done)));
            workers.push(tx);
        }
        Hashers {
            workers,
            handles,
            results,
            pool,
            pool_tx,
            recycle,
            jobs: 0,
            current: None,
        }
    }

    /// A buffer of CHUNK capacity to fill, recycled when one is free. A recycled buffer
    /// keeps its length (set it before reading into it).
    pub fn buffer(&self) -> Vec<u8> {
        self.pool
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK))
    }

    /// Starts the next entry; returns its number (0, 1, …), which the digests of
    /// [`take_done`](Self::take_done) and [`close`](Self::close) carry.
    pub fn begin(&mut self) -> usize {
        let job = self.jobs;
        self.jobs += 1;
        self.current = Some(job % self.workers.len());
        job
    }

    /// Hands over the entry's next bytes. Fails only when a hashing thread died.
    pub fn update_owned(&mut self, buf: Vec<u8>) -> std::io::Result<()> {
        let shared = self.share(buf);
        self.update_shared(shared)
    }

    /// `buf`, to be read by the hashing thread and someone else ([`update_shared`]), and
    /// recycled when both are done.
    ///
    /// [`update_shared`]: Self::update_shared
    pub fn share(&self, buf: Vec<u8>) -> Arc<Recycled> {
        Arc::new(Recycled {
            buf,
            recycle: self.recycle.clone(),
            pool: self.pool_tx.clone(),
        })
    }

    /// [`update_owned`](Self::update_owned) of a buffer [`share`](Self::share)d.
    pub fn update_shared(&mut self, buf: Arc<Recycled>) -> std::io::Result<()> {
        let w = self.current.expect("begin() before update_owned()");
        self.workers[w]
            .send(Msg::Data(buf))
            .map_err(|_| std::io::Error::other("a hashing thread stopped"))
    }

    /// Ends the current entry.
    pub fn end(&mut self) -> std::io::Result<()> {
        let w = self.current.take().expect("begin() before end()");
        self.workers[w]
            .send(Msg::End(self.jobs - 1))
            .map_err(|_| std::io::Error::other("a hashing thread stopped"))
    }

    /// The entries hashed since the last call, as (number, digest, byte count), without
    /// waiting: for a caller that acts on each digest as soon as it is known.
    pub fn take_done(&self) -> Vec<Done> {
        self.results.try_iter().collect()
    }

    /// Has every thread hash what it holds back to pair it with a later entry, so that
    /// every entry ended so far comes out of [`next_done`](Self::next_done) without more
    /// entries. Call between entries.
    pub fn flush(&self) -> std::io::Result<()> {
        for w in &self.workers {
            w.send(Msg::Flush)
                .map_err(|_| std::io::Error::other("a hashing thread stopped"))?;
        }
        Ok(())
    }

    /// The next digest, waiting for it (after [`flush`](Self::flush), for an entry that
    /// has ended).
    pub fn next_done(&self) -> std::io::Result<Done> {
        self.results
            .recv()
            .map_err(|_| std::io::Error::other("the hashing threads stopped"))
    }

    /// Waits for every entry; those not yet taken by [`take_done`](Self::take_done).
    pub fn close(self) -> std::io::Result<Vec<Done>> {
        drop(self.workers);
        for h in self.handles {
            h.join()
                .map_err(|_| std::io::Error::other("a hashing thread panicked"))?;
        }
        Ok(self.results.try_iter().collect())
    }

    /// The digest and byte count of every entry, by number (the archive's readers and
    /// writer take digests as they come, with their own bookkeeping).
    #[cfg(test)]
    pub fn finish(self) -> std::io::Result<Vec<([u8; 32], u64)>> {
        let jobs = self.jobs;
        let mut out = vec![([0; 32], 0); jobs];
        let mut got = 0;
        for (job, digest, n) in self.close()? {
            out[job] = (digest, n);
            got += 1;
        }
        if got != jobs {
            return Err(std::io::Error::other(format!(
                "hashed {got} of {jobs} entries"
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Hashes each of `datas` as one entry, handed over in pieces of `piece(i)` bytes, and
    /// checks every digest and count against sha2's.
    fn hashed_in_pieces(datas: &[Vec<u8>], piece: impl Fn(usize) -> usize) {
        let mut h = Hashers::new(None);
        for (i, d) in datas.iter().enumerate() {
            h.begin();
            for c in d.chunks(piece(i)) {
                let mut b = h.buffer();
                b.clear();
                b.extend_from_slice(c);
                h.update_owned(b).unwrap();
            }
            h.end().unwrap();
        }
        let out = h.finish().unwrap();
        for (d, (digest, n)) in datas.iter().zip(out) {
            assert_eq!(n, d.len() as u64);
            assert_eq!(
                digest,
                <[u8; 32]>::from(Sha256::digest(d)),
                "{} bytes",
                d.len()
            );
        }
    }

    /// An entry a thread holds back to pair with the next comes out on a flush, with no
    /// next entry (what the archive writer waits for before it writes an index).
    #[test]
    fn a_flush_brings_out_what_is_held_back() {
        let mut h = Hashers::new(None);
        let data = crate::archive::frames::tests::random(CHUNK, 5);
        h.begin();
        let mut b = h.buffer();
        b.clear();
        b.extend_from_slice(&data);
        h.update_owned(b).unwrap();
        h.end().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(h.take_done().is_empty(), "held back to be paired");
        h.flush().unwrap();
        let (job, digest, n) = h.next_done().unwrap();
        assert_eq!((job, n), (0, CHUNK as u64));
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
    }

    #[test]
    fn many_entries_on_many_threads_keep_their_order() {
        let datas: Vec<Vec<u8>> = (0..9u8)
            .map(|i| vec![i; 1000 * usize::from(i) + 1])
            .collect();
        hashed_in_pieces(&datas, |_| 700);
    }

    /// Entries held back to be paired, paired with entries of other sizes, larger than a
    /// worker holds, empty, in pieces that leave the pair at different offsets in a block.
    #[test]
    fn entries_of_every_shape_hashed_two_at_a_time() {
        let sizes = [
            1 << 20,
            1 << 20,
            (1 << 20) + 7,
            0,
            64,
            5 * CHUNK + 3,
            1 << 20,
            100,
            0,
            2 * CHUNK,
            1,
        ];
        let datas: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| crate::archive::frames::tests::random(n, 2 * i as u64 + 1))
            .collect();
        let pieces = [CHUNK, 4096, 77, CHUNK / 2 + 1];
        hashed_in_pieces(&datas, |i| pieces[i % pieces.len()]);
    }
}
