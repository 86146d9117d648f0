//! Byte layouts of the index's keys and values (see the table in the crate docs).
//!
//! Fixed-width big-endian fields; signed integers have their sign bit flipped so that the
//! byte order of keys is the numeric order.

use crate::{FileEntry, FileStats, IndexError, Result};

fn corrupt(what: &str) -> IndexError {
    IndexError::Corrupt(format!("truncated or malformed {what}"))
}

pub(crate) fn i64_key(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| corrupt("key"))
}

pub(crate) fn i64_at(b: &[u8], at: usize) -> Result<i64> {
    Ok((u64_at(b, at)? ^ (1 << 63)) as i64)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| corrupt("value"))
}

fn f64_at(b: &[u8], at: usize) -> Result<f64> {
    Ok(f64::from_bits(u64_at(b, at)?))
}

/// `objectId 0x00`: the prefix of every alert of an object. A NUL cannot occur in an objectId
/// (the builder refuses them), so one object's prefix never matches another's.
pub(crate) fn obj_prefix(object_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(object_id.len() + 17);
    k.extend_from_slice(object_id.as_bytes());
    k.push(0);
    k
}

/// A time as 9 key bytes: 0 then zeros for "no time" (null or NaN), else 1 then the float's bits
/// mapped so that byte order is numeric order (negative values: every bit flipped; others:
/// the sign bit flipped). Undated alerts therefore sort before every dated one.
pub(crate) fn time_key(t: f64) -> [u8; 9] {
    let mut k = [0u8; 9];
    if !t.is_nan() {
        let bits = t.to_bits();
        let ordered = if bits >> 63 == 1 { !bits } else { bits ^ (1 << 63) };
        k[0] = 1;
        k[1..].copy_from_slice(&ordered.to_be_bytes());
    }
    k
}

fn time_at(b: &[u8], at: usize) -> Result<Option<f64>> {
    match b.get(at) {
        Some(0) => Ok(None),
        Some(1) => {
            let ordered = u64_at(b, at + 1)?;
            let bits = if ordered >> 63 == 1 {
                ordered ^ (1 << 63)
            } else {
                !ordered
            };
            Ok(Some(f64::from_bits(bits)))
        }
        _ => Err(corrupt("time key")),
    }
}

pub(crate) fn obj_key(object_id: &str, jd: f64, candid: i64, file_id: u64) -> Vec<u8> {
    let mut k = obj_prefix(object_id);
    k.extend_from_slice(&time_key(jd));
    k.extend_from_slice(&i64_key(candid));
    k.extend_from_slice(&file_id.to_be_bytes());
    k
}

/// (jd, candid, file id) of an `obj` key whose objectId prefix is `prefix_len` bytes.
pub(crate) fn decode_obj_key(k: &[u8], prefix_len: usize) -> Result<(Option<f64>, i64, u64)> {
    Ok((
        time_at(k, prefix_len)?,
        i64_at(k, prefix_len + 9)?,
        u64_at(k, prefix_len + 17)?,
    ))
}

fn loc_value(row_group: u32, row: u32, x: f64, cap: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + cap);
    v.extend_from_slice(&row_group.to_be_bytes());
    v.extend_from_slice(&row.to_be_bytes());
    v.extend_from_slice(&x.to_bits().to_be_bytes());
    v
}

/// The `obj` value: where the row is (its time is in the key).
pub(crate) fn obj_value(row_group: u32, row: u32) -> [u8; 8] {
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&row_group.to_be_bytes());
    v[4..].copy_from_slice(&row.to_be_bytes());
    v
}

pub(crate) fn decode_obj_value(v: &[u8]) -> Result<(u32, u32)> {
    Ok((u32_at(v, 0)?, u32_at(v, 4)?))
}

fn decode_loc_value(v: &[u8]) -> Result<(u32, u32, f64)> {
    Ok((u32_at(v, 0)?, u32_at(v, 4)?, f64_at(v, 8)?))
}

pub(crate) fn id_file_key(id: i64, file_id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i64_key(id));
    k[8..].copy_from_slice(&file_id.to_be_bytes());
    k
}

pub(crate) fn candid_value(row_group: u32, row: u32, jd: f64, object_id: &str) -> Vec<u8> {
    let mut v = loc_value(row_group, row, jd, object_id.len());
    v.extend_from_slice(object_id.as_bytes());
    v
}

pub(crate) fn decode_candid_value(v: &[u8]) -> Result<(u32, u32, f64, String)> {
    let (rg, row, jd) = decode_loc_value(v)?;
    let oid = String::from_utf8(v.get(16..).ok_or_else(|| corrupt("candid value"))?.to_vec())
        .map_err(|_| corrupt("objectId"))?;
    Ok((rg, row, jd, oid))
}

pub(crate) fn dia_value(row_group: u32, row: u32, mjd: f64, dia_object_id: i64) -> Vec<u8> {
    let mut v = loc_value(row_group, row, mjd, 8);
    v.extend_from_slice(&i64_key(dia_object_id));
    v
}

pub(crate) fn decode_dia_value(v: &[u8]) -> Result<(u32, u32, f64, i64)> {
    let (rg, row, mjd) = decode_loc_value(v)?;
    Ok((rg, row, mjd, i64_at(v, 16)?))
}

pub(crate) fn diaobj_key(dia_object_id: i64, dia_source_id: i64, file_id: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&i64_key(dia_object_id));
    k[8..16].copy_from_slice(&i64_key(dia_source_id));
    k[16..].copy_from_slice(&file_id.to_be_bytes());
    k
}

pub(crate) fn diaobj_value(row_group: u32, row: u32, mjd: f64) -> Vec<u8> {
    loc_value(row_group, row, mjd, 0)
}

pub(crate) fn decode_diaobj_value(v: &[u8]) -> Result<(u32, u32, f64)> {
    decode_loc_value(v)
}

pub(crate) fn byfile_key(file_id: u64, ordinal: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&file_id.to_be_bytes());
    k[8..].copy_from_slice(&ordinal.to_be_bytes());
    k
}

/// What one indexed row added, enough to derive every key it wrote.
#[derive(Debug, PartialEq)]
pub(crate) enum RowIds {
    /// `jd` is part of the `obj` key (NaN when the alert has none).
    Ztf {
        candid: i64,
        jd: f64,
        object_id: String,
    },
    Lsst {
        dia_source_id: i64,
        dia_object_id: i64,
    },
}

pub(crate) fn byfile_value(ids: &RowIds) -> Vec<u8> {
    match ids {
        RowIds::Ztf { candid, jd, object_id } => {
            let mut v = vec![b'z'];
            v.extend_from_slice(&i64_key(*candid));
            v.extend_from_slice(&jd.to_bits().to_be_bytes());
            v.extend_from_slice(object_id.as_bytes());
            v
        }
        RowIds::Lsst {
            dia_source_id,
            dia_object_id,
        } => {
            let mut v = vec![b'l'];
            v.extend_from_slice(&i64_key(*dia_source_id));
            v.extend_from_slice(&i64_key(*dia_object_id));
            v
        }
    }
}

pub(crate) fn decode_byfile_value(v: &[u8]) -> Result<RowIds> {
    match v.first() {
        Some(b'z') => Ok(RowIds::Ztf {
            candid: i64_at(v, 1)?,
            jd: f64_at(v, 9)?,
            object_id: String::from_utf8(v.get(17..).ok_or_else(|| corrupt("byfile row"))?.to_vec())
                .map_err(|_| corrupt("objectId"))?,
        }),
        Some(b'l') => Ok(RowIds::Lsst {
            dia_source_id: i64_at(v, 1)?,
            dia_object_id: i64_at(v, 9)?,
        }),
        _ => Err(corrupt("byfile row")),
    }
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
    put_str(&mut v, &f.path);
    put_opt_str(&mut v, f.e_tag.as_deref());
    v.extend_from_slice(&(f.row_groups.len() as u32).to_be_bytes());
    for r in &f.row_groups {
        v.extend_from_slice(&r.to_be_bytes());
    }
    // Appended field: entries written before it existed end here and decode as 0.
    v.extend_from_slice(&f.metadata_len.to_be_bytes());
    // Appended field: statistics (tag 1), absent in older entries.
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
    let mut at = 16;
    let path = get_str(b, &mut at)?;
    let e_tag = get_opt_str(b, &mut at, "file entry")?;
    let n = u32_at(b, at)? as usize;
    at += 4;
    let row_groups = (0..n).map(|i| u64_at(b, at + 8 * i)).collect::<Result<Vec<_>>>()?;
    at += 8 * n;
    let metadata_len = if at == b.len() { 0 } else { u64_at(b, at)? };
    at += 8;
    let stats = match b.get(at) {
        None => None,
        Some(1) => Some(decode_stats(b, at + 1)?),
        Some(_) => return Err(corrupt("file entry statistics")),
    };
    Ok(FileEntry {
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
    fn signed_keys_sort_numerically() {
        let mut v = [i64::MIN, -2, -1, 0, 1, 7, i64::MAX];
        v.reverse();
        let mut keys: Vec<_> = v.iter().map(|x| i64_key(*x)).collect();
        keys.sort();
        let back: Vec<i64> = keys.iter().map(|k| i64_at(k, 0).unwrap()).collect();
        assert_eq!(back, vec![i64::MIN, -2, -1, 0, 1, 7, i64::MAX]);
    }

    #[test]
    fn values_round_trip() {
        let f = FileEntry {
            file_id: 9,
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
        // An entry written before `metadata_len` existed decodes with 0.
        let old = encode_file_entry(&f);
        let old = &old[..old.len() - 8];
        assert_eq!(decode_file_entry(9, old).unwrap().metadata_len, 0);
        let g = FileEntry { e_tag: None, ..f };
        assert_eq!(decode_file_entry(9, &encode_file_entry(&g)).unwrap(), g);
        for ids in [
            RowIds::Ztf {
                candid: 1095578115815010001,
                jd: 2458849.7,
                object_id: "ZTF20aabaesm".into(),
            },
            RowIds::Lsst {
                dia_source_id: -3,
                dia_object_id: 1 << 40,
            },
        ] {
            assert_eq!(decode_byfile_value(&byfile_value(&ids)).unwrap(), ids);
        }
        assert_eq!(
            decode_candid_value(&candid_value(1, 2, 2458850.5, "ZTF1")).unwrap(),
            (1, 2, 2458850.5, "ZTF1".to_string())
        );
        assert_eq!(
            decode_dia_value(&dia_value(1, 2, 60000.25, -9)).unwrap(),
            (1, 2, 60000.25, -9)
        );
    }

    #[test]
    fn time_keys_sort_numerically_with_undated_first() {
        let times = [
            f64::NAN,
            f64::NEG_INFINITY,
            -2.5,
            -0.0,
            0.0,
            1e-300,
            2458849.5,
            2458849.75,
            f64::INFINITY,
        ];
        let mut keys: Vec<[u8; 9]> = times.iter().rev().map(|t| time_key(*t)).collect();
        keys.sort();
        let back: Vec<Option<f64>> = keys.iter().map(|k| time_at(k, 0).unwrap()).collect();
        assert_eq!(back[0], None);
        let dated: Vec<f64> = back[1..].iter().map(|t| t.unwrap()).collect();
        assert_eq!(dated.len(), times.len() - 1);
        assert!(dated.windows(2).all(|w| w[0] <= w[1]), "{dated:?}");
        let k = obj_key("ZTF1", 2458849.75, -7, 3);
        assert_eq!(
            decode_obj_key(&k, obj_prefix("ZTF1").len()).unwrap(),
            (Some(2458849.75), -7, 3)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_file_entry(1, &[1, 2, 3]).is_err());
        assert!(decode_byfile_value(b"").is_err());
        assert!(decode_byfile_value(b"z12").is_err());
        assert!(decode_candid_value(&[0; 3]).is_err());
    }
}
