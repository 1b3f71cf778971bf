//! MurmurHash3, x86 32-bit variant: the hash flagd's `fractional` buckets with
//! (seed 0, over the UTF-8 bytes of the bucketing key).

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

fn mix_k(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

/// The 32-bit x86 MurmurHash3 of `data` with `seed`.
pub(crate) fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        h ^= mix_k(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let k = tail
            .iter()
            .enumerate()
            .fold(0u32, |k, (i, byte)| k | (u32::from(*byte) << (8 * i)));
        h ^= mix_k(k);
    }
    // The length is mixed in modulo 2^32, as the reference does.
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::murmur3_32;

    #[test]
    fn matches_published_vectors() {
        // Vectors from the reference implementation's verification set as
        // commonly republished (SMHasher, Wikipedia's test table).
        let cases: &[(&[u8], u32, u32)] = &[
            (b"", 0, 0),
            (b"", 1, 0x514e_28b7),
            (b"", 0xffff_ffff, 0x81f1_6f39),
            (b"\0\0\0\0", 0, 0x2362_f9de),
            (b"aaaa", 0x9747_b28c, 0x5a97_808a),
            (b"aaa", 0x9747_b28c, 0x283e_0130),
            (b"aa", 0x9747_b28c, 0x5d21_1726),
            (b"a", 0x9747_b28c, 0x7fa0_9ea6),
            (b"abcd", 0x9747_b28c, 0xf047_8627),
            (b"abc", 0x9747_b28c, 0xc84a_62dd),
            (b"Hello, world!", 0x9747_b28c, 0x2488_4cba),
            (
                b"The quick brown fox jumps over the lazy dog",
                0x9747_b28c,
                0x2fa8_26cd,
            ),
            (b"test", 0, 0xba6b_d213),
            (b"Hello, world!", 0, 0xc036_3e43),
        ];
        for (data, seed, want) in cases {
            assert_eq!(
                murmur3_32(data, *seed),
                *want,
                "murmur3_32({:?}, {seed:#x})",
                String::from_utf8_lossy(data)
            );
        }
    }
}
