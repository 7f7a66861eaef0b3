//! sha256 on threads of its own: the caller moves bytes (disk, compressor, tar) while the
//! digests are computed on the other cores. Hashing is the slowest step of writing and of
//! verifying an archive, so it must not wait for the I/O or stall it.

use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

/// How much is handed to a hashing thread at once.
pub const CHUNK: usize = 1 << 20;

/// sha256 of a sequence of entries on several threads: each entry goes whole to one thread,
/// and consecutive entries go to different threads, so an archive whose big files come as
/// parts (archive::pages) is hashed on every core. Hashing is the slowest step of writing and
/// of verifying an archive: one thread tops out near 1.8 GB/s with SHA-NI, slower than the
/// copies around it.
pub struct Hashers {
    workers: Vec<SyncSender<Msg>>,
    handles: Vec<JoinHandle<()>>,
    results: Receiver<(usize, [u8; 32], u64)>,
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
            handles.push(std::thread::spawn(move || {
                let mut h = Sha256::new();
                let mut n = 0u64;
                for msg in rx {
                    match msg {
                        Msg::Data(buf) => {
                            h.update(buf.as_ref().as_ref());
                            n += buf.buf.len() as u64;
                        }
                        Msg::End(job) => {
                            let digest = std::mem::take(&mut h).finalize().into();
                            if done.send((job, digest, std::mem::take(&mut n))).is_err() {
                                return;
                            }
                        }
                    }
                }
            }));
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

    /// Starts the next entry; returns its number (0, 1, …) for [`finish`](Self::finish).
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

    /// The entries hashed since the last call, as (number, hex digest, byte count), without
    /// waiting: for a caller that acts on each digest as soon as it is known.
    pub fn take_done(&self) -> Vec<(usize, String, u64)> {
        self.results
            .try_iter()
            .map(|(job, d, n)| (job, hex::encode(d), n))
            .collect()
    }

    /// Waits for every entry; those not yet taken by [`take_done`](Self::take_done).
    pub fn close(self) -> std::io::Result<Vec<(usize, String, u64)>> {
        drop(self.workers);
        for h in self.handles {
            h.join()
                .map_err(|_| std::io::Error::other("a hashing thread panicked"))?;
        }
        Ok(self
            .results
            .try_iter()
            .map(|(job, d, n)| (job, hex::encode(d), n))
            .collect())
    }

    /// The hex digest and byte count of every entry, by number.
    pub fn finish(self) -> std::io::Result<Vec<(String, u64)>> {
        let jobs = self.jobs;
        let mut out = vec![(String::new(), 0); jobs];
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

    #[test]
    fn many_entries_on_many_threads_keep_their_order() {
        let mut h = Hashers::new(None);
        let datas: Vec<Vec<u8>> = (0..9u8)
            .map(|i| vec![i; 1000 * usize::from(i) + 1])
            .collect();
        for d in &datas {
            h.begin();
            for c in d.chunks(700) {
                let mut b = h.buffer();
                b.clear();
                b.extend_from_slice(c);
                h.update_owned(b).unwrap();
            }
            h.end().unwrap();
        }
        let out = h.finish().unwrap();
        for (d, (hex_digest, n)) in datas.iter().zip(out) {
            assert_eq!(n, d.len() as u64);
            assert_eq!(hex_digest, hex::encode(Sha256::digest(d)));
        }
    }
}
