//! SHA-256 of two equally long messages at once with the x86 SHA extensions (SHA-NI).
//!
//! Why: one SHA-256 stream is bound by the *latency* of `sha256rnds2`, so a core with SHA-NI
//! sits mostly idle waiting on its own dependency chain; ring (like OpenSSL, whose assembly it
//! uses) hashes one message at a time and tops out at ≈1.65 GB/s per core here. A hash tree
//! hashes millions of independent, equally long messages (`salt || 4 KiB block`), so two
//! interleaved streams keep the unit busy. The same idea is the kernel's `sha256_ni_finup2x`
//! (Linux 6.11) for dm-verity and fs-verity.
//!
//! Scope: only this fixed-shape workload (salted 4 KiB blocks), only on x86_64 CPUs that report
//! `sha`, `ssse3` and `sse4.1` at run time; everything else uses `ring::digest`. The output is
//! checked against ring in the tests below (every salt length 0..=256, proptest on contents)
//! and against veritysetup by the peer tests.

use crate::geometry::{BLOCK_SIZE, DIGEST_SIZE};

const BS: usize = BLOCK_SIZE as usize;
/// Room for: up to 63 salt bytes carried over, the 4 KiB block, and up to 72 bytes of padding.
const MSG_CAP: usize = 64 + BS + 128;

/// SHA-256 round constants (FIPS 180-4, section 4.2.2).
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// SHA-256 initial hash value (FIPS 180-4, section 5.3.3).
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// `sha256(salt || block)` for pairs of 4 KiB blocks, with the salt's whole 64-byte blocks
/// hashed once up front.
#[derive(Debug, Clone)]
pub(crate) struct Salted2x {
    /// State after the salt's whole 64-byte blocks.
    prefix: [u32; 8],
    /// The salt's remaining `salt.len() % 64` bytes, which start every message.
    tail: Vec<u8>,
    /// Total message length in bytes (salt + block).
    total_len: u64,
}

impl Salted2x {
    /// `None` when this CPU has no SHA extensions (or is not x86_64): use ring instead.
    pub(crate) fn new(salt: &[u8]) -> Option<Self> {
        if !imp::available() {
            return None;
        }
        let whole = salt.len() / 64 * 64;
        let mut a = H0;
        let mut b = H0;
        if whole > 0 {
            // SAFETY: `available()` confirmed the CPU features `compress_2x` is compiled for.
            unsafe { imp::compress_2x(&mut a, &mut b, &salt[..whole], &salt[..whole]) };
        }
        Some(Salted2x {
            prefix: a,
            tail: salt[whole..].to_vec(),
            total_len: salt.len() as u64 + BLOCK_SIZE,
        })
    }

    /// Lay out `tail || block || padding` in `buf`; returns the padded length.
    fn message(&self, block: &[u8], buf: &mut [u8; MSG_CAP]) -> usize {
        let t = self.tail.len();
        buf[..t].copy_from_slice(&self.tail);
        buf[t..t + BS].copy_from_slice(block);
        let end = t + BS;
        let padded = (end + 9).div_ceil(64) * 64;
        buf[end] = 0x80;
        buf[end + 1..padded - 8].fill(0);
        buf[padded - 8..padded].copy_from_slice(&(self.total_len * 8).to_be_bytes());
        padded
    }

    /// The digests of two 4 KiB blocks.
    pub(crate) fn digest2(&self, a: &[u8], b: &[u8]) -> ([u8; DIGEST_SIZE], [u8; DIGEST_SIZE]) {
        debug_assert!(a.len() == BS && b.len() == BS);
        let mut ma = [0u8; MSG_CAP];
        let mut mb = [0u8; MSG_CAP];
        let len = self.message(a, &mut ma);
        self.message(b, &mut mb);
        let (mut sa, mut sb) = (self.prefix, self.prefix);
        // SAFETY: a `Salted2x` exists only if `available()` returned true in `new`.
        unsafe { imp::compress_2x(&mut sa, &mut sb, &ma[..len], &mb[..len]) };
        (to_bytes(&sa), to_bytes(&sb))
    }
}

fn to_bytes(state: &[u32; 8]) -> [u8; DIGEST_SIZE] {
    let mut out = [0u8; DIGEST_SIZE];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    use super::K;

    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("ssse3")
            && std::is_x86_feature_detected!("sse4.1")
    }

    /// Run the SHA-256 compression function over the 64-byte blocks of `a` into `sa` and of
    /// `b` into `sb`, the two streams interleaved instruction by instruction. `a` and `b` have
    /// the same length, a multiple of 64.
    ///
    /// # Safety
    /// The CPU must support `sha`, `ssse3` and `sse4.1` (see [`available`]).
    #[target_feature(enable = "sha,ssse3,sse4.1")]
    pub(super) unsafe fn compress_2x(sa: &mut [u32; 8], sb: &mut [u32; 8], a: &[u8], b: &[u8]) {
        assert!(a.len() == b.len() && a.len() % 64 == 0);
        // SAFETY: the caller guarantees the CPU features; every load and store is an unaligned
        // 16-byte access inside `sa`/`sb` (32 bytes), `a`/`b` (offsets below `len`, a multiple
        // of 64, checked above) or `K` (64 words, offsets 4*i for i < 16).
        unsafe {
            // Byte order of each 32-bit word: SHA-256 reads big-endian words.
            let bswap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);

            // The SHA instructions keep the state as ABEF and CDGH (from DCBA, HGFE in memory).
            macro_rules! load_state {
                ($s:expr) => {{
                    let dcba = _mm_loadu_si128($s.as_ptr().cast());
                    let hgfe = _mm_loadu_si128($s.as_ptr().add(4).cast());
                    let cdab = _mm_shuffle_epi32::<0xb1>(dcba);
                    let efgh = _mm_shuffle_epi32::<0x1b>(hgfe);
                    (
                        _mm_alignr_epi8::<8>(cdab, efgh),
                        _mm_blend_epi16::<0xf0>(efgh, cdab),
                    )
                }};
            }
            macro_rules! store_state {
                ($s:expr, $abef:expr, $cdgh:expr) => {{
                    let feba = _mm_shuffle_epi32::<0x1b>($abef);
                    let dchg = _mm_shuffle_epi32::<0xb1>($cdgh);
                    _mm_storeu_si128($s.as_mut_ptr().cast(), _mm_blend_epi16::<0xf0>(feba, dchg));
                    _mm_storeu_si128(
                        $s.as_mut_ptr().add(4).cast(),
                        _mm_alignr_epi8::<8>(dchg, feba),
                    );
                }};
            }
            let (mut a0, mut a1) = load_state!(sa);
            let (mut b0, mut b1) = load_state!(sb);

            let mut off = 0;
            while off < a.len() {
                let (a0_save, a1_save, b0_save, b1_save) = (a0, a1, b0, b1);
                let pa = a.as_ptr().add(off);
                let pb = b.as_ptr().add(off);
                // Message words W[4i..4i+4] of quad-round i live in w[i % 4].
                let mut wa = [
                    _mm_shuffle_epi8(_mm_loadu_si128(pa.cast()), bswap),
                    _mm_shuffle_epi8(_mm_loadu_si128(pa.add(16).cast()), bswap),
                    _mm_shuffle_epi8(_mm_loadu_si128(pa.add(32).cast()), bswap),
                    _mm_shuffle_epi8(_mm_loadu_si128(pa.add(48).cast()), bswap),
                ];
                let mut wb = [
                    _mm_shuffle_epi8(_mm_loadu_si128(pb.cast()), bswap),
                    _mm_shuffle_epi8(_mm_loadu_si128(pb.add(16).cast()), bswap),
                    _mm_shuffle_epi8(_mm_loadu_si128(pb.add(32).cast()), bswap),
                    _mm_shuffle_epi8(_mm_loadu_si128(pb.add(48).cast()), bswap),
                ];
                // Four rounds of both streams with W[4i..4i+4] + K[4i..4i+4].
                macro_rules! rounds {
                    ($i:expr) => {{
                        let k = _mm_loadu_si128(K.as_ptr().add(4 * $i).cast());
                        let ma = _mm_add_epi32(wa[$i % 4], k);
                        let mb = _mm_add_epi32(wb[$i % 4], k);
                        a1 = _mm_sha256rnds2_epu32(a1, a0, ma);
                        b1 = _mm_sha256rnds2_epu32(b1, b0, mb);
                        a0 = _mm_sha256rnds2_epu32(a0, a1, _mm_shuffle_epi32::<0x0e>(ma));
                        b0 = _mm_sha256rnds2_epu32(b0, b1, _mm_shuffle_epi32::<0x0e>(mb));
                    }};
                }
                // W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], four at a time: msg1 adds
                // the s0 terms, alignr supplies W[t-7..t-4], msg2 adds the s1 terms.
                macro_rules! schedule {
                    ($w:ident, $i:expr) => {{
                        let t = _mm_add_epi32(
                            _mm_sha256msg1_epu32($w[$i % 4], $w[($i + 1) % 4]),
                            _mm_alignr_epi8::<4>($w[($i + 3) % 4], $w[($i + 2) % 4]),
                        );
                        $w[$i % 4] = _mm_sha256msg2_epu32(t, $w[($i + 3) % 4]);
                    }};
                }
                macro_rules! quad {
                    ($i:expr) => {{
                        schedule!(wa, $i);
                        schedule!(wb, $i);
                        rounds!($i);
                    }};
                }
                rounds!(0);
                rounds!(1);
                rounds!(2);
                rounds!(3);
                quad!(4);
                quad!(5);
                quad!(6);
                quad!(7);
                quad!(8);
                quad!(9);
                quad!(10);
                quad!(11);
                quad!(12);
                quad!(13);
                quad!(14);
                quad!(15);
                a0 = _mm_add_epi32(a0, a0_save);
                a1 = _mm_add_epi32(a1, a1_save);
                b0 = _mm_add_epi32(b0, b0_save);
                b1 = _mm_add_epi32(b1, b1_save);
                off += 64;
            }
            store_state!(sa, a0, a1);
            store_state!(sb, b0, b1);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    pub(super) fn available() -> bool {
        false
    }

    /// Never called: `available()` is false.
    ///
    /// # Safety
    /// None needed; kept `unsafe` to match the x86_64 signature.
    pub(super) unsafe fn compress_2x(_: &mut [u32; 8], _: &mut [u32; 8], _: &[u8], _: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring_digest(salt: &[u8], block: &[u8]) -> Vec<u8> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(salt);
        ctx.update(block);
        ctx.finish().as_ref().to_vec()
    }

    fn pattern(seed: u32, len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    #[test]
    fn matches_ring_for_every_salt_length() {
        let Some(_) = Salted2x::new(&[]) else {
            eprintln!("no SHA-NI on this CPU: the ring path is used, nothing to compare");
            return;
        };
        let a = pattern(1, BS);
        let b = pattern(2, BS);
        for len in 0..=256usize {
            let salt = pattern(len as u32 + 7, len);
            let h = Salted2x::new(&salt).expect("available");
            let (da, db) = h.digest2(&a, &b);
            assert_eq!(
                da.to_vec(),
                ring_digest(&salt, &a),
                "salt length {len}, lane a"
            );
            assert_eq!(
                db.to_vec(),
                ring_digest(&salt, &b),
                "salt length {len}, lane b"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_ring_on_random_blocks(
            salt in proptest::collection::vec(any::<u8>(), 0..=256),
            seed_a in any::<u32>(),
            seed_b in any::<u32>(),
        ) {
            if let Some(h) = Salted2x::new(&salt) {
                let a = pattern(seed_a, BS);
                let b = pattern(seed_b, BS);
                let (da, db) = h.digest2(&a, &b);
                prop_assert_eq!(da.to_vec(), ring_digest(&salt, &a));
                prop_assert_eq!(db.to_vec(), ring_digest(&salt, &b));
            }
        }
    }
}
