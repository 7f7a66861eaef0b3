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
}
