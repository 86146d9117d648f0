//! A blocked Bloom filter over the distinct keys of a segment table's first column.
//!
//! A lookup asks each segment of a generation whether it may hold a key before it searches the
//! segment's block index. The filter answers with one cache line: a key's hash picks a 64-byte
//! block, and [`PROBES`] bits of that block must all be set (Putze, Sanders and Singler's
//! "cache-, hash- and space-efficient Bloom filters"). At [`BITS_PER_KEY`] bits per key about
//! 1% of absent keys pass; a present key always passes.
//!
//! The format is part of the segment format (version 2): `blocks` 64-byte blocks, each eight
//! little-endian `u64` words, bit `b` of a block being bit `b % 64` of word `b / 64`.

/// Filter bits per distinct key.
pub const BITS_PER_KEY: usize = 10;
/// Bits set per key, all in one 512-bit block.
pub const PROBES: u32 = 7;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 64;
const WORDS: usize = BLOCK_BYTES / 8;

/// A key's 64-bit hash (the finaliser of SplitMix64: every input bit moves every output bit).
pub fn hash(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The block a hash falls in (a multiply-shift range reduction, not a modulo) and its bits.
fn place(h: u64, blocks: usize) -> (usize, [u16; PROBES as usize]) {
    let block = ((h as u128 * blocks as u128) >> 64) as usize;
    // The low bits chose nothing above (the block comes from the high ones): 9 bits a probe.
    let h2 = hash(h ^ 0x5851_f42d_4c95_7f2d);
    let mut bits = [0u16; PROBES as usize];
    for (i, b) in bits.iter_mut().enumerate() {
        *b = ((h2 >> (9 * i)) & 511) as u16;
    }
    (block, bits)
}

/// The number of blocks for `keys` distinct keys (at least one).
pub fn blocks_for(keys: usize) -> usize {
    (keys * BITS_PER_KEY).div_ceil(BLOCK_BYTES * 8).max(1)
}

/// Build the filter of the given key hashes (duplicates are harmless) as its bytes.
pub fn build(hashes: &[u64]) -> Vec<u8> {
    let blocks = blocks_for(hashes.len());
    let mut words = vec![0u64; blocks * WORDS];
    for &h in hashes {
        let (block, bits) = place(h, blocks);
        for b in bits {
            words[block * WORDS + (b / 64) as usize] |= 1 << (b % 64);
        }
    }
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A filter read from a segment, held in memory (10 bits per distinct key: the segment's pages
/// may be evicted, the filter is not).
#[derive(Debug, Clone)]
pub struct KeyFilter {
    words: Box<[u64]>,
}

impl KeyFilter {
    /// `bytes` must be a whole number of blocks.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(BLOCK_BYTES) {
            return None;
        }
        let words = bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        Some(KeyFilter { words })
    }

    pub fn blocks(&self) -> usize {
        self.words.len() / WORDS
    }

    /// False only when the key is certainly absent.
    #[inline]
    pub fn may_contain(&self, key: u64) -> bool {
        let (block, bits) = place(hash(key), self.blocks());
        let w = &self.words[block * WORDS..(block + 1) * WORDS];
        bits.iter().all(|&b| w[(b / 64) as usize] & (1 << (b % 64)) != 0)
    }

    /// The bytes it holds in memory.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_keys_always_pass_and_about_one_percent_of_absent_ones_do() {
        for n in [1usize, 7, 1000, 200_000] {
            let keys: Vec<u64> = (0..n as u64).map(|i| i * 2).collect();
            let f = KeyFilter::from_bytes(&build(&keys.iter().map(|&k| hash(k)).collect::<Vec<_>>())).unwrap();
            assert!(keys.iter().all(|&k| f.may_contain(k)), "n = {n}");
            let absent = (0..100_000u64).filter(|i| f.may_contain(i * 2 + 1)).count();
            // 10 bits a key, 7 probes in one cache line: ~1%; well under 3% at any size.
            assert!(absent < 3_000, "{absent} of 100,000 absent keys pass at n = {n}");
        }
    }

    #[test]
    fn bytes_that_are_not_whole_blocks_are_refused() {
        assert!(KeyFilter::from_bytes(&[]).is_none());
        assert!(KeyFilter::from_bytes(&[0; 65]).is_none());
        assert_eq!(KeyFilter::from_bytes(&[0; 128]).unwrap().blocks(), 2);
    }
}
