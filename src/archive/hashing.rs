//! sha256 on its own thread: the caller moves bytes (disk, compressor, tar) on one core while
//! the digest is computed on the other. Hashing is the slowest step of writing and of
//! verifying an archive (about 0.8 GB/s here), so it must not wait for the I/O or stall it.

use sha2::{Digest, Sha256};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// How much is handed to the hashing thread at once.
pub const CHUNK: usize = 1 << 20;

pub struct HashPipe {
    tx: Option<SyncSender<Vec<u8>>>,
    /// Buffers the hashing thread is done with, to be filled again: fresh ones would be
    /// fresh pages, and touching fresh memory is slow on these VMs (about 1 s per GiB).
    spare: Receiver<Vec<u8>>,
    worker: Option<JoinHandle<[u8; 32]>>,
    pending: Vec<u8>,
    n: u64,
}

impl Default for HashPipe {
    fn default() -> Self {
        Self::new()
    }
}

impl HashPipe {
    pub fn new() -> HashPipe {
        // A few chunks in flight bound the memory this costs to a few MiB.
        let (tx, rx) = sync_channel::<Vec<u8>>(4);
        let (back, spare) = sync_channel::<Vec<u8>>(8);
        let worker = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for chunk in rx {
                h.update(&chunk);
                let _ = back.try_send(chunk);
            }
            h.finalize().into()
        });
        HashPipe {
            tx: Some(tx),
            spare,
            worker: Some(worker),
            pending: Vec::with_capacity(CHUNK),
            n: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.n += data.len() as u64;
        while !data.is_empty() {
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == CHUNK {
                self.flush();
            }
        }
    }

    /// An empty buffer of CHUNK capacity, recycled when one is free.
    pub fn buffer(&self) -> Vec<u8> {
        match self.spare.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => Vec::with_capacity(CHUNK),
        }
    }

    /// Hands over a full buffer without copying it.
    pub fn update_owned(&mut self, chunk: Vec<u8>) {
        if !self.pending.is_empty() {
            self.flush();
        }
        self.n += chunk.len() as u64;
        if let Some(tx) = &self.tx {
            let _ = tx.send(chunk);
        }
    }

    fn flush(&mut self) {
        let full = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
        if let Some(tx) = &self.tx {
            let _ = tx.send(full);
        }
    }

    /// The hex digest and the byte count.
    pub fn finish(mut self) -> (String, u64) {
        if !self.pending.is_empty() {
            self.flush();
        }
        drop(self.tx.take());
        let digest = self
            .worker
            .take()
            .and_then(|w| w.join().ok())
            .unwrap_or([0; 32]);
        (hex::encode(digest), self.n)
    }
}

/// sha256 of a sequence of entries on several threads: each entry goes whole to one thread,
/// and consecutive entries go to different threads, so an archive whose big files come as
/// parts (archive::pages) is hashed on every core. Hashing is the slowest step of writing and
/// of verifying an archive: one thread tops out near 1.8 GB/s with SHA-NI, slower than the
/// copies around it.
pub struct Hashers {
    workers: Vec<SyncSender<Msg>>,
    handles: Vec<JoinHandle<()>>,
    results: Receiver<(usize, [u8; 32], u64)>,
    /// Where the workers return buffers once hashed, and where [`buffer`](Self::buffer)
    /// takes them from (None when the caller recycles them itself).
    pool: Option<Receiver<Vec<u8>>>,
    jobs: usize,
    current: Option<usize>,
}

enum Msg {
    Data(Vec<u8>),
    End(usize),
}

impl Hashers {
    /// `recycle`: where hashed buffers go; None keeps them for [`buffer`](Self::buffer).
    pub fn new(recycle: Option<SyncSender<Vec<u8>>>) -> Hashers {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 4);
        let (pool_tx, pool) = match recycle {
            Some(tx) => (tx, None),
            None => {
                let (tx, rx) = sync_channel(16);
                (tx, Some(rx))
            }
        };
        let (done, results) = std::sync::mpsc::channel();
        let mut workers = vec![];
        let mut handles = vec![];
        for _ in 0..threads {
            let (tx, rx) = sync_channel::<Msg>(4);
            let (done, pool_tx) = (done.clone(), pool_tx.clone());
            handles.push(std::thread::spawn(move || {
                let mut h = Sha256::new();
                let mut n = 0u64;
                for msg in rx {
                    match msg {
                        Msg::Data(buf) => {
                            h.update(&buf);
                            n += buf.len() as u64;
                            let _ = pool_tx.try_send(buf);
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
            jobs: 0,
            current: None,
        }
    }

    /// A buffer of CHUNK capacity to fill, recycled when one is free. A recycled buffer
    /// keeps its length (set it before reading into it).
    pub fn buffer(&self) -> Vec<u8> {
        self.pool
            .as_ref()
            .and_then(|p| p.try_recv().ok())
            .unwrap_or_else(|| Vec::with_capacity(CHUNK))
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

    /// The hex digest and byte count of every entry, by number.
    pub fn finish(self) -> std::io::Result<Vec<(String, u64)>> {
        drop(self.workers);
        for h in self.handles {
            h.join()
                .map_err(|_| std::io::Error::other("a hashing thread panicked"))?;
        }
        let mut out = vec![(String::new(), 0); self.jobs];
        let mut got = 0;
        for (job, digest, n) in self.results.try_iter() {
            out[job] = (hex::encode(digest), n);
            got += 1;
        }
        if got != self.jobs {
            return Err(std::io::Error::other(format!(
                "hashed {got} of {} entries",
                self.jobs
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_digest_as_sha256() {
        let data: Vec<u8> = (0..3 * CHUNK + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut p = HashPipe::new();
        p.update(&data[..100]);
        p.update_owned(data[100..CHUNK + 7].to_vec());
        p.update(&data[CHUNK + 7..]);
        let (hex_digest, n) = p.finish();
        assert_eq!(n, data.len() as u64);
        assert_eq!(hex_digest, hex::encode(Sha256::digest(&data)));
    }

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
