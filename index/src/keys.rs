//! Byte layouts of the index's keys and values (see the table in the crate docs).
//!
//! Fixed-width big-endian fields; signed integers have their sign bit flipped so that the
//! byte order of keys is the numeric order.

use crate::{FileEntry, IndexError, Result};

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

pub(crate) fn obj_key(object_id: &str, candid: i64, file_id: u64) -> Vec<u8> {
    let mut k = obj_prefix(object_id);
    k.extend_from_slice(&i64_key(candid));
    k.extend_from_slice(&file_id.to_be_bytes());
    k
}

pub(crate) fn decode_obj_key(k: &[u8], prefix_len: usize) -> Result<(i64, u64)> {
    Ok((i64_at(k, prefix_len)?, u64_at(k, prefix_len + 8)?))
}

fn loc_value(row_group: u32, row: u32, x: f64, cap: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + cap);
    v.extend_from_slice(&row_group.to_be_bytes());
    v.extend_from_slice(&row.to_be_bytes());
    v.extend_from_slice(&x.to_bits().to_be_bytes());
    v
}

pub(crate) fn obj_value(row_group: u32, row: u32, jd: f64) -> Vec<u8> {
    loc_value(row_group, row, jd, 0)
}

pub(crate) fn decode_obj_value(v: &[u8]) -> Result<(u32, u32, f64)> {
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
    let (rg, row, jd) = decode_obj_value(v)?;
    let oid = String::from_utf8(v[16..].to_vec()).map_err(|_| corrupt("objectId"))?;
    Ok((rg, row, jd, oid))
}

pub(crate) fn dia_value(row_group: u32, row: u32, mjd: f64, dia_object_id: i64) -> Vec<u8> {
    let mut v = loc_value(row_group, row, mjd, 8);
    v.extend_from_slice(&i64_key(dia_object_id));
    v
}

pub(crate) fn decode_dia_value(v: &[u8]) -> Result<(u32, u32, f64, i64)> {
    let (rg, row, mjd) = decode_obj_value(v)?;
    Ok((rg, row, mjd, i64_at(v, 16)?))
}

pub(crate) fn diaobj_key(dia_object_id: i64, dia_source_id: i64, file_id: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&i64_key(dia_object_id));
    k[8..16].copy_from_slice(&i64_key(dia_source_id));
    k[16..].copy_from_slice(&file_id.to_be_bytes());
    k
}

pub(crate) fn decode_diaobj_value(v: &[u8]) -> Result<(u32, u32, f64)> {
    decode_obj_value(v)
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
    Ztf { candid: i64, object_id: String },
    Lsst { dia_source_id: i64, dia_object_id: i64 },
}

pub(crate) fn byfile_value(ids: &RowIds) -> Vec<u8> {
    match ids {
        RowIds::Ztf { candid, object_id } => {
            let mut v = vec![b'z'];
            v.extend_from_slice(&i64_key(*candid));
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
            object_id: String::from_utf8(v[9..].to_vec()).map_err(|_| corrupt("objectId"))?,
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

pub(crate) fn encode_file_entry(f: &FileEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + f.path.len() + 8 * f.row_groups.len());
    v.extend_from_slice(&f.size.to_be_bytes());
    v.extend_from_slice(&f.last_modified_ms.to_be_bytes());
    put_str(&mut v, &f.path);
    match &f.e_tag {
        Some(e) => {
            v.push(1);
            put_str(&mut v, e);
        }
        None => v.push(0),
    }
    v.extend_from_slice(&(f.row_groups.len() as u32).to_be_bytes());
    for r in &f.row_groups {
        v.extend_from_slice(&r.to_be_bytes());
    }
    // Appended field: entries written before it existed end here and decode as 0.
    v.extend_from_slice(&f.metadata_len.to_be_bytes());
    v
}

pub(crate) fn decode_file_entry(file_id: u64, b: &[u8]) -> Result<FileEntry> {
    let size = u64_at(b, 0)?;
    let last_modified_ms = u64_at(b, 8)? as i64;
    let mut at = 16;
    let path = get_str(b, &mut at)?;
    let e_tag = match b.get(at) {
        Some(1) => {
            at += 1;
            Some(get_str(b, &mut at)?)
        }
        Some(0) => {
            at += 1;
            None
        }
        _ => return Err(corrupt("file entry")),
    };
    let n = u32_at(b, at)? as usize;
    at += 4;
    let row_groups = (0..n).map(|i| u64_at(b, at + 8 * i)).collect::<Result<Vec<_>>>()?;
    at += 8 * n;
    let metadata_len = if at == b.len() { 0 } else { u64_at(b, at)? };
    Ok(FileEntry {
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
        };
        assert_eq!(decode_file_entry(9, &encode_file_entry(&f)).unwrap(), f);
        // An entry written before `metadata_len` existed decodes with 0.
        let old = encode_file_entry(&f);
        let old = &old[..old.len() - 8];
        assert_eq!(decode_file_entry(9, old).unwrap().metadata_len, 0);
        let g = FileEntry { e_tag: None, ..f };
        assert_eq!(decode_file_entry(9, &encode_file_entry(&g)).unwrap(), g);
        for ids in [
            RowIds::Ztf {
                candid: 1095578115815010001,
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
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_file_entry(1, &[1, 2, 3]).is_err());
        assert!(decode_byfile_value(b"").is_err());
        assert!(decode_byfile_value(b"z12").is_err());
        assert!(decode_candid_value(&[0; 3]).is_err());
    }
}
