//! The header catalog of a FITS dataset: the headers of every file, kept in the index database
//! (one record per file, keyed by path) and refreshed incrementally, like the alert index:
//! a file listed with the version its record holds is skipped, a new or changed file is read
//! (its headers only), and the records of files no longer listed are dropped.
//!
//! A record is the file's version, whether it was gzipped, its HDUs (with every card) and the
//! error that stopped its scan, if any: a file that is not valid FITS keeps a record too, so
//! that it is not read again until it changes, and header tables can say what is wrong with it.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;

use crate::storage::FileVersion;
use astroflight_fits::header::{Card, Hdu, HduKind, ValueKind};
use astroflight_index::header_catalog::HeaderStore;
use astroflight_index::BuildStats;

use super::file_headers::{is_fits_name, scan_file, FileHeaders, ScanCost, ScanOptions};
use crate::error::{Error, Result};

/// The record format; a record of another format is read again from storage.
const FORMAT: u8 = 1;

/// Bring a FITS dataset's header catalog up to date with its storage.
pub async fn refresh(
    store: Arc<dyn ObjectStore>,
    catalog: &HeaderStore,
    opts: ScanOptions,
    concurrency: usize,
) -> Result<(BuildStats, ScanCost)> {
    let mut stats = BuildStats::default();
    let listing: Vec<_> = store
        .list(None)
        .try_filter(|m| futures::future::ready(is_fits_name(m.location.as_ref())))
        .try_collect()
        .await
        .map_err(|e| Error::storage("the listing of the dataset root", &e))?;
    stats.listed = listing.len();
    let listed: HashSet<&str> = listing.iter().map(|m| m.location.as_ref()).collect();
    for path in catalog.paths()? {
        if !listed.contains(path.as_str()) {
            catalog.remove(&path)?;
            stats.removed += 1;
        }
    }
    let mut todo = Vec::new();
    for meta in &listing {
        let current = catalog
            .get(meta.location.as_ref())?
            .and_then(|r| decode_version(&r))
            .is_some_and(|v| v.mismatch(meta).is_none());
        if current {
            stats.unchanged += 1;
        } else {
            todo.push(meta.clone());
        }
    }
    let mut cost = ScanCost::default();
    let mut reads = futures::stream::iter(todo.into_iter().map(|meta| {
        let store = store.clone();
        async move {
            let r = scan_file(store, &meta, opts).await;
            (meta.location.to_string(), r)
        }
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some((path, result)) = reads.next().await {
        match result {
            Ok((headers, c)) => {
                cost.requests += c.requests;
                cost.bytes += c.bytes;
                stats.rows += headers.hdus.len() as u64;
                catalog.put(&path, &encode(&headers))?;
                stats.indexed += 1;
            }
            Err(e) => stats.failed.push((path, e.to_string())),
        }
    }
    catalog.flush()?;
    Ok((stats, cost))
}

// ---- record encoding: little-endian, length-prefixed strings -------------------------------

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s)
            }
        }
    }
    fn i64s(&mut self, v: &[i64]) {
        self.u32(v.len() as u32);
        for x in v {
            self.i64(*x);
        }
    }
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        self.take(n)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_string)
    }
    fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            _ => self.str().map(Some),
        }
    }
    fn i64s(&mut self) -> Option<Vec<i64>> {
        let n = self.u32()? as usize;
        if n > self.0.len() / 8 {
            return None;
        }
        (0..n).map(|_| self.i64()).collect()
    }
}

fn kind_code(k: &HduKind) -> u8 {
    match k {
        HduKind::Primary => 0,
        HduKind::Groups => 1,
        HduKind::Image => 2,
        HduKind::BinTable => 3,
        HduKind::Table => 4,
        HduKind::CompressedImage => 5,
        HduKind::Other(_) => 6,
    }
}

fn value_code(k: ValueKind) -> u8 {
    match k {
        ValueKind::Undefined => 0,
        ValueKind::Logical => 1,
        ValueKind::Integer => 2,
        ValueKind::Float => 3,
        ValueKind::Complex => 4,
        ValueKind::String => 5,
        ValueKind::Commentary => 6,
        ValueKind::Invalid => 7,
    }
}

fn value_kind(c: u8) -> Option<ValueKind> {
    Some(match c {
        0 => ValueKind::Undefined,
        1 => ValueKind::Logical,
        2 => ValueKind::Integer,
        3 => ValueKind::Float,
        4 => ValueKind::Complex,
        5 => ValueKind::String,
        6 => ValueKind::Commentary,
        7 => ValueKind::Invalid,
        _ => return None,
    })
}

fn write_version(w: &mut W, v: &FileVersion) {
    w.u64(v.size);
    w.opt_str(v.e_tag.as_deref());
    w.i64(v.last_modified_ms);
}

/// The catalog record of a file.
pub fn encode(f: &FileHeaders) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(
        64 + f.hdus.iter().map(|h| h.cards.len() * 48).sum::<usize>(),
    ));
    w.u8(FORMAT);
    write_version(&mut w, &f.version);
    w.u8(f.gzip as u8);
    w.opt_str(f.error.as_deref());
    w.u32(f.hdus.len() as u32);
    for h in &f.hdus {
        w.u8(kind_code(&h.kind));
        if let HduKind::Other(s) = &h.kind {
            w.str(s);
        }
        w.opt_str(h.extname.as_deref());
        for v in [h.bitpix, h.naxis, h.pcount, h.gcount] {
            w.i64(v);
        }
        w.i64s(&h.naxes);
        for v in [h.header_offset, h.data_offset, h.data_size] {
            w.u64(v);
        }
        match h.zbitpix {
            None => w.u8(0),
            Some(z) => {
                w.u8(1);
                w.i64(z)
            }
        }
        match &h.znaxes {
            None => w.u8(0),
            Some(z) => {
                w.u8(1);
                w.i64s(z)
            }
        }
        w.u32(h.cards.len() as u32);
        for c in &h.cards {
            w.str(&c.key);
            w.opt_str(c.value.as_deref());
            w.opt_str(c.comment.as_deref());
            w.u8(value_code(c.kind));
        }
    }
    w.0
}

fn read_version(r: &mut R) -> Option<FileVersion> {
    Some(FileVersion {
        size: r.u64()?,
        e_tag: r.opt_str()?,
        last_modified_ms: r.i64()?,
    })
}

/// The version a record was read from (None for a record of another format).
pub fn decode_version(b: &[u8]) -> Option<FileVersion> {
    let mut r = R(b);
    if r.u8()? != FORMAT {
        return None;
    }
    read_version(&mut r)
}

/// What a record holds, cheaply (no cards decoded): the file's HDUs, and whether its scan
/// stopped on an error.
pub fn decode_summary(b: &[u8]) -> Option<(u32, bool)> {
    let mut r = R(b);
    if r.u8()? != FORMAT {
        return None;
    }
    read_version(&mut r)?;
    r.u8()?;
    let error = r.opt_str()?.is_some();
    Some((r.u32()?, error))
}

/// Files, HDUs and files with errors in a catalog.
pub fn summary(catalog: &HeaderStore) -> Result<(u64, u64, u64)> {
    let (mut files, mut hdus, mut errors) = (0, 0, 0);
    for entry in catalog.range("", "", None) {
        let (_, record) = entry?;
        if let Some((n, error)) = decode_summary(&record) {
            files += 1;
            hdus += n as u64;
            errors += error as u64;
        }
    }
    Ok((files, hdus, errors))
}

/// A record back into the file's headers.
pub fn decode(path: &str, b: &[u8]) -> Result<FileHeaders> {
    decode_inner(path, b).ok_or_else(|| {
        Error::Internal(format!(
            "the header catalog record of {path} cannot be read: run the `reindex` action (or `astroflight index`) to rebuild it"
        ))
    })
}

fn decode_inner(path: &str, b: &[u8]) -> Option<FileHeaders> {
    let mut r = R(b);
    if r.u8()? != FORMAT {
        return None;
    }
    let version = read_version(&mut r)?;
    let gzip = r.u8()? != 0;
    let error = r.opt_str()?;
    let n = r.u32()? as usize;
    let mut hdus = Vec::with_capacity(n.min(1024));
    for index in 0..n {
        let kind = match r.u8()? {
            0 => HduKind::Primary,
            1 => HduKind::Groups,
            2 => HduKind::Image,
            3 => HduKind::BinTable,
            4 => HduKind::Table,
            5 => HduKind::CompressedImage,
            _ => HduKind::Other(r.str()?),
        };
        let extname = r.opt_str()?;
        let (bitpix, naxis, pcount, gcount) = (r.i64()?, r.i64()?, r.i64()?, r.i64()?);
        let naxes = r.i64s()?;
        let (header_offset, data_offset, data_size) = (r.u64()?, r.u64()?, r.u64()?);
        let zbitpix = match r.u8()? {
            0 => None,
            _ => Some(r.i64()?),
        };
        let znaxes = match r.u8()? {
            0 => None,
            _ => Some(r.i64s()?),
        };
        let ncards = r.u32()? as usize;
        let mut cards = Vec::with_capacity(ncards.min(r.0.len() / 6 + 1));
        for _ in 0..ncards {
            cards.push(Card {
                key: r.str()?,
                value: r.opt_str()?,
                comment: r.opt_str()?,
                kind: value_kind(r.u8()?)?,
            });
        }
        hdus.push(Hdu {
            index,
            kind,
            extname,
            bitpix,
            naxis,
            naxes,
            pcount,
            gcount,
            header_offset,
            data_offset,
            data_size,
            zbitpix,
            znaxes,
            cards,
        });
    }
    Some(FileHeaders {
        path: path.to_string(),
        version,
        gzip,
        hdus,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_records_are_errors() {
        let f = FileHeaders {
            path: "a/b.fits".into(),
            version: FileVersion {
                size: 8640,
                e_tag: Some("\"x\"".into()),
                last_modified_ms: 17,
            },
            gzip: true,
            hdus: vec![Hdu {
                index: 0,
                kind: HduKind::Other("FOREIGN".into()),
                extname: Some("SCI".into()),
                bitpix: -32,
                naxis: 2,
                naxes: vec![10, 20],
                pcount: 0,
                gcount: 1,
                header_offset: 0,
                data_offset: 2880,
                data_size: 800,
                zbitpix: Some(16),
                znaxes: Some(vec![1, 2]),
                cards: vec![Card {
                    key: "OBJECT".into(),
                    value: Some("M31".into()),
                    comment: None,
                    kind: ValueKind::String,
                }],
            }],
            error: Some("HDU 1: bad".into()),
        };
        let b = encode(&f);
        assert_eq!(decode("a/b.fits", &b).unwrap(), f);
        assert_eq!(decode_version(&b), Some(f.version.clone()));
        for cut in [0, 1, 10, b.len() / 2, b.len() - 1] {
            assert!(decode("a/b.fits", &b[..cut]).is_err());
        }
        let mut other = b.clone();
        other[0] = 99;
        assert_eq!(decode_version(&other), None);
    }
}
