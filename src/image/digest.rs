//! sha256 digests computed over bytes as they stream past, so a blob is verified in the
//! same pass that reads it.

use sha2::{Digest as _, Sha256};
use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// A sha256 and byte count fed piece by piece.
pub struct StreamDigest {
    hasher: Sha256,
    count: u64,
}

impl Default for StreamDigest {
    fn default() -> Self {
        StreamDigest {
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl StreamDigest {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.count += bytes.len() as u64;
    }

    pub fn bytes(&self) -> u64 {
        self.count
    }

    /// (`sha256:<hex>`, byte count).
    pub fn finish(self) -> (String, u64) {
        let hex = hex::encode(self.hasher.finalize());
        (format!("sha256:{hex}"), self.count)
    }
}

/// A reader that hashes and counts everything read through it.
pub struct DigestReader<R> {
    inner: R,
    digest: StreamDigest,
    /// Shared so a reader further down the pipe (the decompression guard) can see how many
    /// compressed bytes produced its output.
    count: Rc<Cell<u64>>,
}

impl<R: Read> DigestReader<R> {
    pub fn new(inner: R) -> Self {
        DigestReader {
            inner,
            digest: StreamDigest::default(),
            count: Rc::new(Cell::new(0)),
        }
    }

    pub fn counter(&self) -> Rc<Cell<u64>> {
        self.count.clone()
    }

    /// Reads the rest of the stream (so the digest covers all of it) and returns
    /// (`sha256:<hex>`, byte count).
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.digest.finish())
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.update(&buf[..n]);
        self.count.set(self.digest.bytes());
        Ok(n)
    }
}

/// `sha256:<hex>` of a byte slice.
pub fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<64 hex>` digest; None for any other algorithm or shape, so a
/// digest from untrusted JSON can be used as a file name.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_digest_matches_one_shot() {
        let data = b"hello layer".repeat(1000);
        let r = DigestReader::new(&data[..]);
        let (digest, n) = r.finish().unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(digest, sha256_of(&data));
        assert_eq!(
            sha256_of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn only_well_formed_sha256_digests_become_file_names() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(sha256_hex(&good), Some(&good[7..]));
        assert_eq!(sha256_hex(&format!("sha512:{}", "a".repeat(64))), None);
        assert_eq!(sha256_hex("sha256:../../etc/passwd"), None);
        assert_eq!(sha256_hex(&format!("sha256:{}", "A".repeat(64))), None);
        assert_eq!(sha256_hex("sha256:abc"), None);
    }
}
