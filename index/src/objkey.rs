//! ZTF objectIds as 64-bit keys.
//!
//! A ZTF objectId is `ZTF`, two digits of the year, then seven lowercase letters
//! (`ZTF20aabaesm`): 100 x 26^7 values, which fit in 40 bits. Such an id is **packed**: its key
//! is `year * 26^7 + letters` (base 26), and keys sort as the ids do. Any other string is
//! **hashed**: its key is the top bit set over 63 bits of a fixed hash (FNV-1a, then the
//! splitmix64 finalizer), the same on every machine and in every version of this format.
//!
//! A packed key gives its id back ([`ObjectKey::id`]); a hashed one does not, and two strings may
//! share it. The index therefore keeps the strings of hashed ids beside their keys, and compares
//! them, so that a collision never gives a wrong answer.

const LETTERS: u64 = 26u64.pow(7);
const HASHED: u64 = 1 << 63;

/// An objectId's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(pub u64);

impl ObjectKey {
    /// The key of an objectId.
    pub fn of(id: &str) -> ObjectKey {
        match pack(id) {
            Some(k) => ObjectKey(k),
            None => ObjectKey(HASHED | (hash(id.as_bytes()) >> 1)),
        }
    }

    /// Whether the key was hashed (its id is not in it).
    pub fn is_hashed(self) -> bool {
        self.0 & HASHED != 0
    }

    /// The id of a packed key; None for a hashed one.
    pub fn id(self) -> Option<String> {
        if self.is_hashed() || self.0 >= 100 * LETTERS {
            return None;
        }
        let (year, mut letters) = (self.0 / LETTERS, self.0 % LETTERS);
        let mut s = [0u8; 12];
        s[..3].copy_from_slice(b"ZTF");
        s[3] = b'0' + (year / 10) as u8;
        s[4] = b'0' + (year % 10) as u8;
        for i in (5..12).rev() {
            s[i] = b'a' + (letters % 26) as u8;
            letters /= 26;
        }
        Some(String::from_utf8(s.to_vec()).expect("ascii"))
    }
}

fn pack(id: &str) -> Option<u64> {
    let b = id.as_bytes();
    if b.len() != 12 || &b[..3] != b"ZTF" || !b[3].is_ascii_digit() || !b[4].is_ascii_digit() {
        return None;
    }
    let year = ((b[3] - b'0') * 10 + (b[4] - b'0')) as u64;
    let mut letters = 0u64;
    for &c in &b[5..] {
        if !c.is_ascii_lowercase() {
            return None;
        }
        letters = letters * 26 + (c - b'a') as u64;
    }
    Some(year * LETTERS + letters)
}

fn hash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in b {
        h ^= c as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV's low bits mix poorly.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ztf_ids_pack_in_40_bits_sort_as_strings_and_come_back() {
        let mut ids = vec![
            "ZTF20aabaesm",
            "ZTF18acqucmw",
            "ZTF00aaaaaaa",
            "ZTF99zzzzzzz",
            "ZTF20aabaekv",
            "ZTF19zzzzzzz",
        ];
        for id in &ids {
            let k = ObjectKey::of(id);
            assert!(!k.is_hashed() && k.0 < 1 << 40, "{id}");
            assert_eq!(k.id().as_deref(), Some(*id));
        }
        let mut keys: Vec<ObjectKey> = ids.iter().map(|i| ObjectKey::of(i)).collect();
        keys.sort();
        ids.sort();
        assert_eq!(keys.iter().map(|k| k.id().unwrap()).collect::<Vec<_>>(), ids);
    }

    /// The key of "obj-1" as this format defines it.
    const PINNED: u64 = 11_984_766_341_809_019_609;

    #[test]
    fn other_strings_are_hashed_stably() {
        for id in [
            "",
            "ZTF20AABAESM",
            "ZTF20aabaes",
            "ZTF20aabaesmm",
            "ZTFx0aabaesm",
            "ZTF20aabaes1",
            "obj-1",
            "ZTF2ﾟaabaesm",
        ] {
            let k = ObjectKey::of(id);
            assert!(k.is_hashed(), "{id}");
            assert_eq!(k.id(), None);
            assert_eq!(k, ObjectKey::of(id));
        }
        // The hash is part of the on-disk format: it must never change.
        assert_eq!(ObjectKey::of("obj-1").0, PINNED);
        assert_ne!(ObjectKey::of("a"), ObjectKey::of("b"));
    }
}
