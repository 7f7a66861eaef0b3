//! sha256 of two byte streams at once. The digests are the ordinary sha256 of each stream;
//! only the speed differs.
//!
//! One SHA-NI round depends on the one before, so a single stream leaves the SHA unit idle
//! most of each instruction's latency: 1.8 GB/s per core on these EPYC VMs. Stepping a second,
//! independent stream through the same rounds fills those gaps: 3.2-3.5 GB/s per core for
//! the pair (docs/benchmarks.md, item 14). An archive's pages come as many independent
//! parts, each with its own digest, so its hashing threads take parts two at a time
//! (archive::hashing, archive::feed).
//!
//! Only the compression of whole blocks two at a time is ours. Buffering, padding and every
//! single block go through the sha2 crate's own compression function, and the tests compare
//! every digest with sha2's. No well-kept crate offers the two-stream kernel (docs/checkpoint.md,
//! "Two parts hashed at once").

/// One stream's sha256 in progress.
#[derive(Clone)]
pub struct Lane {
    state: [u32; 8],
    /// Bytes hashed so far, including `partial`.
    len: u64,
    partial: [u8; 64],
    buffered: usize,
}

const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

impl Default for Lane {
    fn default() -> Lane {
        Lane::new()
    }
}

/// `data` (a multiple of 64 bytes) as blocks.
fn blocks(data: &[u8]) -> &[[u8; 64]] {
    let (blocks, rest) = data.as_chunks::<64>();
    debug_assert!(rest.is_empty());
    blocks
}

impl Lane {
    pub fn new() -> Lane {
        Lane {
            state: H0,
            len: 0,
            partial: [0; 64],
            buffered: 0,
        }
    }

    /// Completes the partial block from the front of `data` if there is one; returns what
    /// is left of `data`, to be taken in whole blocks (empty if the block is still partial).
    fn top_up<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        if self.buffered == 0 {
            return data;
        }
        let take = (64 - self.buffered).min(data.len());
        self.partial[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
        self.buffered += take;
        self.len += take as u64;
        if self.buffered == 64 {
            sha2::block_api::compress256(&mut self.state, &[self.partial]);
            self.buffered = 0;
        }
        &data[take..]
    }

    /// Hashes `data` (after [`top_up`](Self::top_up)) as whole blocks, keeping the rest.
    fn whole_blocks(&mut self, data: &[u8]) {
        let (whole, rest) = data.as_chunks::<64>();
        sha2::block_api::compress256(&mut self.state, whole);
        self.partial[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
        self.len += data.len() as u64;
    }

    /// How many bytes it has been given.
    pub fn hashed(&self) -> u64 {
        self.len
    }

    pub fn update(&mut self, data: &[u8]) {
        let data = self.top_up(data);
        if self.buffered == 0 {
            self.whole_blocks(data);
        }
    }

    pub fn finalize(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 128];
        pad[..self.buffered].copy_from_slice(&self.partial[..self.buffered]);
        pad[self.buffered] = 0x80;
        let n = if self.buffered < 56 { 64 } else { 128 };
        pad[n - 8..n].copy_from_slice(&bits.to_be_bytes());
        sha2::block_api::compress256(&mut self.state, blocks(&pad[..n]));
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// Hashes `da` into `a` and `db` into `b`, all of both: their whole blocks two at a time as
/// far as both reach, the rest one stream at a time.
pub fn update_pair(a: &mut Lane, da: &[u8], b: &mut Lane, db: &[u8]) {
    let da = a.top_up(da);
    let db = b.top_up(db);
    if a.buffered != 0 || b.buffered != 0 {
        // A stream that did not even complete its partial block: nothing left to pair.
        a.update(da);
        b.update(db);
        return;
    }
    let n = da.len().min(db.len()) / 64 * 64;
    if n > 0 {
        compress_pair(
            &mut a.state,
            blocks(&da[..n]),
            &mut b.state,
            blocks(&db[..n]),
        );
        a.len += n as u64;
        b.len += n as u64;
    }
    a.whole_blocks(&da[n..]);
    b.whole_blocks(&db[n..]);
}

/// The two streams' blocks (as many of each) compressed into their states.
fn compress_pair(sa: &mut [u32; 8], a: &[[u8; 64]], sb: &mut [u32; 8], b: &[[u8; 64]]) {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
        {
            // SAFETY: the instructions each variant is compiled for were detected above.
            unsafe {
                if std::arch::is_x86_feature_detected!("avx512vl") {
                    shani::pair_avx512(sa, a, sb, b)
                } else {
                    shani::pair(sa, a, sb, b)
                }
            }
            return;
        }
    }
    sha2::block_api::compress256(sa, a);
    sha2::block_api::compress256(sb, b);
}

#[cfg(target_arch = "x86_64")]
mod shani {
    use std::arch::x86_64::*;

    /// The round constants of FIPS 180-4, 4.2.2.
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    // The body of both variants: the same code compiled once for SSE4.1 and once with
    // AVX-512VL, whose 32 vector registers hold both streams' schedules without spilling
    // (3.5 GB/s against 3.15 here).
    //
    // SHA-NI keeps the state as the words ABEF and CDGH; each `sha256rnds2` does two rounds,
    // and the schedule is extended four words at a time by `sha256msg1`/`sha256msg2`. Groups
    // of four rounds are written out by the `group!` macro, the two streams side by side.
    macro_rules! pair_body {
        ($sa:ident, $a:ident, $sb:ident, $b:ident) => {
            // SAFETY: unaligned loads and stores within the blocks and states given; the
            // instructions are those the calling function is compiled for.
            // (The lint misreads the unrolled schedule: every word is read, and the tests
            // fail without any one of them.)
            #[allow(unused_assignments)]
            unsafe {
                let bswap = _mm_set_epi64x(0x0c0d0e0f08090a0b, 0x0405060700010203);
                let load = |s: &[u32; 8]| {
                    let cdab = _mm_shuffle_epi32(_mm_loadu_si128(s.as_ptr().cast()), 0xB1);
                    let hgfe = _mm_shuffle_epi32(_mm_loadu_si128(s.as_ptr().add(4).cast()), 0x1B);
                    (
                        _mm_alignr_epi8(cdab, hgfe, 8),
                        _mm_blend_epi16(hgfe, cdab, 0xF0),
                    )
                };
                let store = |s: &mut [u32; 8], abef: __m128i, cdgh: __m128i| {
                    let feba = _mm_shuffle_epi32(abef, 0x1B);
                    let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
                    _mm_storeu_si128(s.as_mut_ptr().cast(), _mm_blend_epi16(feba, dchg, 0xF0));
                    _mm_storeu_si128(s.as_mut_ptr().add(4).cast(), _mm_alignr_epi8(dchg, feba, 8));
                };
                let (mut a0, mut a1) = load($sa);
                let (mut b0, mut b1) = load($sb);
                for (ba, bb) in $a.iter().zip($b) {
                    let (sa0, sa1, sb0, sb1) = (a0, a1, b0, b1);
                    let mut ma = [_mm_setzero_si128(); 4];
                    let mut mb = [_mm_setzero_si128(); 4];
                    macro_rules! group {
                        ($g:literal) => {{
                            const G: usize = $g;
                            if G < 4 {
                                let at = |blk: &[u8; 64]| {
                                    _mm_shuffle_epi8(
                                        _mm_loadu_si128(blk.as_ptr().add(16 * G).cast()),
                                        bswap,
                                    )
                                };
                                ma[G % 4] = at(ba);
                                mb[G % 4] = at(bb);
                            }
                            let k = _mm_loadu_si128(K.as_ptr().add(4 * G).cast());
                            let wa = _mm_add_epi32(ma[G % 4], k);
                            let wb = _mm_add_epi32(mb[G % 4], k);
                            a1 = _mm_sha256rnds2_epu32(a1, a0, wa);
                            b1 = _mm_sha256rnds2_epu32(b1, b0, wb);
                            if G >= 3 && G < 15 {
                                let (n, p) = ((G + 1) % 4, (G + 3) % 4);
                                let ta = _mm_alignr_epi8(ma[G % 4], ma[p], 4);
                                let tb = _mm_alignr_epi8(mb[G % 4], mb[p], 4);
                                ma[n] = _mm_sha256msg2_epu32(_mm_add_epi32(ma[n], ta), ma[G % 4]);
                                mb[n] = _mm_sha256msg2_epu32(_mm_add_epi32(mb[n], tb), mb[G % 4]);
                            }
                            a0 = _mm_sha256rnds2_epu32(a0, a1, _mm_shuffle_epi32(wa, 0x0E));
                            b0 = _mm_sha256rnds2_epu32(b0, b1, _mm_shuffle_epi32(wb, 0x0E));
                            if G >= 1 && G < 13 {
                                let p = (G + 3) % 4;
                                ma[p] = _mm_sha256msg1_epu32(ma[p], ma[G % 4]);
                                mb[p] = _mm_sha256msg1_epu32(mb[p], mb[G % 4]);
                            }
                        }};
                    }
                    group!(0);
                    group!(1);
                    group!(2);
                    group!(3);
                    group!(4);
                    group!(5);
                    group!(6);
                    group!(7);
                    group!(8);
                    group!(9);
                    group!(10);
                    group!(11);
                    group!(12);
                    group!(13);
                    group!(14);
                    group!(15);
                    a0 = _mm_add_epi32(a0, sa0);
                    a1 = _mm_add_epi32(a1, sa1);
                    b0 = _mm_add_epi32(b0, sb0);
                    b1 = _mm_add_epi32(b1, sb1);
                }
                store($sa, a0, a1);
                store($sb, b0, b1);
            }
        };
    }

    /// # Safety
    /// The CPU has SHA-NI and SSE4.1.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn pair(
        sa: &mut [u32; 8],
        a: &[[u8; 64]],
        sb: &mut [u32; 8],
        b: &[[u8; 64]],
    ) {
        pair_body!(sa, a, sb, b)
    }

    /// # Safety
    /// The CPU has SHA-NI, SSE4.1 and AVX-512VL.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1,avx512f,avx512vl")]
    pub(super) unsafe fn pair_avx512(
        sa: &mut [u32; 8],
        a: &[[u8; 64]],
        sb: &mut [u32; 8],
        b: &[[u8; 64]],
    ) {
        pair_body!(sa, a, sb, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::frames::tests::random as noise;
    use sha2::{Digest, Sha256};

    fn reference(d: &[u8]) -> [u8; 32] {
        Sha256::digest(d).into()
    }

    #[test]
    fn pairs_of_every_shape_give_sha2s_digests() {
        let data = noise(300_000, 7);
        let lens = [
            0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 1000, 4096, 65_537, 299_999,
        ];
        for &la in &lens {
            for &lb in &lens {
                let (da, db) = (&data[..la], &data[1..1 + lb]);
                let (mut a, mut b) = (Lane::new(), Lane::new());
                update_pair(&mut a, da, &mut b, db);
                assert_eq!(a.finalize(), reference(da), "{la} beside {lb}");
                assert_eq!(b.finalize(), reference(db), "{lb} beside {la}");
            }
        }
    }

    #[test]
    fn streams_fed_in_uneven_pieces_give_sha2s_digests() {
        let data = noise(1 << 20, 9);
        let (da, db) = (&data[..700_001], &data[300_000..]);
        let (mut a, mut b) = (Lane::new(), Lane::new());
        let (mut pa, mut pb) = (0, 0);
        // Piece sizes that leave the two streams at different offsets within a block.
        let sizes = [1, 63, 64, 4096, 100, 65_536, 7, 131_072, 3];
        let mut i = 0;
        while pa < da.len() || pb < db.len() {
            let na = sizes[i % sizes.len()].min(da.len() - pa);
            let nb = sizes[(i + 4) % sizes.len()].min(db.len() - pb);
            if i % 5 == 4 {
                a.update(&da[pa..pa + na]);
                b.update(&db[pb..pb + nb]);
            } else {
                update_pair(&mut a, &da[pa..pa + na], &mut b, &db[pb..pb + nb]);
            }
            (pa, pb, i) = (pa + na, pb + nb, i + 1);
        }
        assert_eq!(a.finalize(), reference(da));
        assert_eq!(b.finalize(), reference(db));
    }

    #[test]
    fn both_kernels_agree_with_sha2_on_whole_blocks() {
        let data = noise(64 * 300, 3);
        let (a, b) = (blocks(&data[..64 * 150]), blocks(&data[64 * 150..]));
        let (mut want_a, mut want_b) = (H0, H0);
        sha2::block_api::compress256(&mut want_a, a);
        sha2::block_api::compress256(&mut want_b, b);
        let (mut sa, mut sb) = (H0, H0);
        compress_pair(&mut sa, a, &mut sb, b);
        assert_eq!((sa, sb), (want_a, want_b));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
        {
            let (mut sa, mut sb) = (H0, H0);
            // SAFETY: detected above.
            unsafe { shani::pair(&mut sa, a, &mut sb, b) };
            assert_eq!((sa, sb), (want_a, want_b), "SSE4.1 kernel");
        }
    }
}
