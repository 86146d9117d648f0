//! Byte layout of the catalog's file entries (sled tree `{dataset}/files`, keyed by the file
//! id, big-endian): `size:u64 last_modified_ms:i64 base_ordinal:u64 path:str e_tag:opt_str
//! row_groups:u32 then u64 each, metadata_len:u64`, then optionally tag 1 and the file's
//! statistics. Fixed-width fields are big-endian; a `str` is its length (u32) and its bytes; an
//! `opt_str` is 0, or 1 and a `str`.

use crate::{FileEntry, FileStats, IndexError, Result};

fn corrupt(what: &str) -> IndexError {
    IndexError::Corrupt(format!("truncated or malformed {what}"))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| corrupt("key"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| corrupt("value"))
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
}

fn get_str(b: &[u8], at: &mut usize) -> Result<String> {
    let n = u32_at(b, *at)? as usize;
    let s = b.get(*at + 4..*at + 4 + n).ok_or_else(|| corrupt("file entry"))?;
    *at += 4 + n;
    String::from_utf8(s.to_vec()).map_err(|_| corrupt("file entry"))
}

/// An optional string: a 0 byte, or a 1 byte and the string.
fn put_opt_str(v: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            v.push(1);
            put_str(v, s);
        }
        None => v.push(0),
    }
}

fn get_opt_str(b: &[u8], at: &mut usize, what: &str) -> Result<Option<String>> {
    match b.get(*at) {
        Some(1) => {
            *at += 1;
            Ok(Some(get_str(b, at)?))
        }
        Some(0) => {
            *at += 1;
            Ok(None)
        }
        _ => Err(corrupt(what)),
    }
}

pub(crate) fn encode_file_entry(f: &FileEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + f.path.len() + 8 * f.row_groups.len());
    v.extend_from_slice(&f.size.to_be_bytes());
    v.extend_from_slice(&f.last_modified_ms.to_be_bytes());
    v.extend_from_slice(&f.base_ordinal.to_be_bytes());
    put_str(&mut v, &f.path);
    put_opt_str(&mut v, f.e_tag.as_deref());
    v.extend_from_slice(&(f.row_groups.len() as u32).to_be_bytes());
    for r in &f.row_groups {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v.extend_from_slice(&f.metadata_len.to_be_bytes());
    // Statistics (tag 1) are optional.
    if let Some(st) = &f.stats {
        v.push(1);
        put_str(&mut v, &st.class_key);
        v.extend_from_slice(&(st.counts.len() as u32).to_be_bytes());
        for c in &st.counts {
            match c.night {
                Some(n) => {
                    v.push(1);
                    v.extend_from_slice(&n.to_be_bytes());
                }
                None => v.push(0),
            }
            put_opt_str(&mut v, c.class.as_deref());
            v.extend_from_slice(&c.rows.to_be_bytes());
        }
    }
    v
}

fn decode_stats(b: &[u8], mut at: usize) -> Result<FileStats> {
    let class_key = get_str(b, &mut at)?;
    let n = u32_at(b, at)? as usize;
    at += 4;
    let mut counts = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let night = match b.get(at) {
            Some(1) => {
                let v = u32_at(b, at + 1)? as i32;
                at += 5;
                Some(v)
            }
            Some(0) => {
                at += 1;
                None
            }
            _ => return Err(corrupt("file statistics")),
        };
        let class = get_opt_str(b, &mut at, "file statistics")?;
        let rows = u64_at(b, at)?;
        at += 8;
        counts.push(crate::NightClass { night, class, rows });
    }
    Ok(FileStats { class_key, counts })
}

pub(crate) fn decode_file_entry(file_id: u64, b: &[u8]) -> Result<FileEntry> {
    let size = u64_at(b, 0)?;
    let last_modified_ms = u64_at(b, 8)? as i64;
    let base_ordinal = u64_at(b, 16)?;
    let mut at = 24;
    let path = get_str(b, &mut at)?;
    let e_tag = get_opt_str(b, &mut at, "file entry")?;
    let n = u32_at(b, at)? as usize;
    at += 4;
    let row_groups = (0..n).map(|i| u64_at(b, at + 8 * i)).collect::<Result<Vec<_>>>()?;
    at += 8 * n;
    let metadata_len = u64_at(b, at)?;
    at += 8;
    let stats = match b.get(at) {
        None => None,
        Some(1) => Some(decode_stats(b, at + 1)?),
        Some(_) => return Err(corrupt("file entry statistics")),
    };
    Ok(FileEntry {
        base_ordinal,
        stats,
        metadata_len,
        file_id,
        path,
        size,
        e_tag,
        last_modified_ms,
        row_groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_entries_round_trip() {
        let f = FileEntry {
            file_id: 9,
            base_ordinal: 1 << 41,
            path: "year=2020/month=01/day=01/part-0.parquet".into(),
            size: 107_000_000,
            e_tag: Some("\"abc\"".into()),
            last_modified_ms: 1_700_000_000_000,
            row_groups: vec![2500, 13],
            metadata_len: 300_123,
            stats: None,
        };
        assert_eq!(decode_file_entry(9, &encode_file_entry(&f)).unwrap(), f);
        let with_stats = FileEntry {
            stats: Some(FileStats {
                class_key: "cdsxmatch".into(),
                counts: vec![
                    crate::NightClass {
                        night: None,
                        class: None,
                        rows: 3,
                    },
                    crate::NightClass {
                        night: Some(-2),
                        class: Some("SN".into()),
                        rows: 1 << 40,
                    },
                ],
            }),
            ..f.clone()
        };
        assert_eq!(
            decode_file_entry(9, &encode_file_entry(&with_stats)).unwrap(),
            with_stats
        );
        let g = FileEntry { e_tag: None, ..f };
        assert_eq!(decode_file_entry(9, &encode_file_entry(&g)).unwrap(), g);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_file_entry(1, &[1, 2, 3]).is_err());
        let e = encode_file_entry(&FileEntry {
            file_id: 1,
            base_ordinal: 0,
            path: "a.parquet".into(),
            size: 1,
            e_tag: None,
            last_modified_ms: 0,
            row_groups: vec![1],
            metadata_len: 0,
            stats: None,
        });
        for n in 0..e.len() {
            assert!(decode_file_entry(1, &e[..n]).is_err(), "{n}");
        }
    }
}
