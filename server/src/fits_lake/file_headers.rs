//! Reading the headers of one FITS file from storage with range requests.
//!
//! ```text
//!  HDU 0: read [0, header_read_bytes)  ─> END found? ─ no ─> read on (doubling), same HDU
//!                                          │ yes
//!  next HDU at data_offset + data_size padded to 2,880 (BITPIX, NAXISn, PCOUNT, GCOUNT)
//!   ─> already in the bytes read? parse it there : read [next, next + header_read_bytes)
//!   ─> ... until the end of the file (or bytes that are not an XTENSION: padding, junk)
//! ```
//!
//! A small file is therefore read in one request, and a large one in one request per HDU
//! header, each of `header_read_bytes` (32 KiB by default) or less. A file that starts with the
//! gzip magic number cannot be read by range: it is fetched whole (up to `max_gzip_bytes`) and its
//! headers are read from the decompressed stream, data skipped, and the table says `gzip`
//! (a `.gz` name goes straight to the whole read).
//! Every read carries the version of the file that was listed, so a file rewritten during the
//! scan fails (and is read again by the next refresh) instead of mixing two versions.

use std::io::Read;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use object_store::path::Path;
use object_store::{GetOptions, ObjectMeta, ObjectStore};
use parquet::arrow::async_reader::AsyncFileReader;

use crate::storage::{FileVersion, StoreReader};
use astroflight_fits::header::{parse_hdu, scan_reader, starts_extension, Hdu, Parsed};

use crate::error::{Error, Result};

/// The headers of one file as read, with what the reading cost.
#[derive(Debug, Clone, PartialEq)]
pub struct FileHeaders {
    pub path: String,
    pub version: FileVersion,
    /// The file is gzipped: it was read whole, and offsets are in the decompressed stream.
    pub gzip: bool,
    /// The HDUs read, in order (those before an error, if any).
    pub hdus: Vec<Hdu>,
    /// Why the file could not be read to its end (not FITS, a bad card, non-ASCII bytes...).
    pub error: Option<String>,
}

/// What a scan read from storage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScanCost {
    pub requests: u64,
    pub bytes: u64,
}

/// How headers are read.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    pub header_read_bytes: u64,
    pub max_gzip_bytes: u64,
}

/// Read every HDU header of one file. A file whose content is not readable FITS is not an
/// error here: it comes back with `error` set (and the HDUs before the problem). Storage
/// failures (and a file that changed while it was read) are errors: the file is read again next
/// time.
pub async fn scan_file(
    store: Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    opts: ScanOptions,
) -> Result<(FileHeaders, ScanCost)> {
    let path = meta.location.to_string();
    let version = FileVersion::of_meta(meta);
    let size = meta.size;
    let what = format!("FITS file {path}");
    let mut out = FileHeaders {
        path: path.clone(),
        version: version.clone(),
        gzip: false,
        hdus: Vec::new(),
        error: None,
    };
    let mut cost = ScanCost::default();
    if size == 0 {
        out.error = Some("the file is empty".into());
        return Ok((out, cost));
    }
    if path.to_ascii_lowercase().ends_with(".gz") {
        return scan_gzip(store, meta, opts, out, cost).await;
    }
    let mut reader = StoreReader::new(store.clone(), meta.location.clone(), size).with_version(version.clone());
    // The bytes held: [buf_start, buf_start + buf.len()).
    let mut buf: Bytes = read(&mut reader, 0..size.min(opts.header_read_bytes), &mut cost, &what).await?;
    let mut buf_start = 0u64;
    if astroflight_fits::is_gzip(&buf) {
        // Gzipped without the `.gz` name: the first read is lost, the file read whole.
        return scan_gzip(store, meta, opts, out, cost).await;
    }
    let mut pos = 0u64;
    while pos < size {
        let index = out.hdus.len();
        let held = |buf: &Bytes, buf_start: u64| pos >= buf_start && pos < buf_start + buf.len() as u64;
        if !held(&buf, buf_start)
            || (buf_start + (buf.len() as u64) < size && buf_start + (buf.len() as u64) - pos < 2880)
        {
            buf = read(
                &mut reader,
                pos..size.min(pos + opts.header_read_bytes),
                &mut cost,
                &what,
            )
            .await?;
            buf_start = pos;
        }
        let at = (pos - buf_start) as usize;
        if index > 0 && !starts_extension(&buf[at..]) {
            // Padding or junk after the last HDU ends the file, as in astropy.
            break;
        }
        let hdu = loop {
            let at = (pos - buf_start) as usize;
            match parse_hdu(&buf[at..], index, pos) {
                Ok(Parsed::Hdu(h)) => break Some(h),
                Ok(Parsed::NeedMore(n)) => {
                    let end = buf_start + buf.len() as u64;
                    if end >= size {
                        out.error = Some(format!(
                            "HDU {index} at byte {pos}: the file ends inside the header (no END card)"
                        ));
                        break None;
                    }
                    let want_end = size.min(pos + (n as u64).max(opts.header_read_bytes));
                    let more = read(&mut reader, end..want_end, &mut cost, &what).await?;
                    let mut joined = BytesMut::with_capacity(buf.len() + more.len());
                    joined.extend_from_slice(&buf);
                    joined.extend_from_slice(&more);
                    buf = joined.freeze();
                }
                Err(e) => {
                    out.error = Some(e.to_string());
                    break None;
                }
            }
        };
        let Some(hdu) = hdu else { break };
        pos = hdu.next_offset();
        out.hdus.push(*hdu);
    }
    Ok((out, cost))
}

/// One counted range read of the listed version.
async fn read(reader: &mut StoreReader, range: std::ops::Range<u64>, cost: &mut ScanCost, what: &str) -> Result<Bytes> {
    cost.requests += 1;
    cost.bytes += range.end - range.start;
    reader.get_bytes(range).await.map_err(|e| Error::parquet(what, e))
}

/// A gzipped file: one GET of the whole file, headers read from the decompressed stream.
async fn scan_gzip(
    store: Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    opts: ScanOptions,
    mut out: FileHeaders,
    mut cost: ScanCost,
) -> Result<(FileHeaders, ScanCost)> {
    out.gzip = true;
    if meta.size > opts.max_gzip_bytes {
        out.error = Some(format!(
            "the file is gzipped ({} bytes): gzipped files are read whole, and this one is larger than fits.max_gzip_bytes ({})",
            meta.size, opts.max_gzip_bytes
        ));
        return Ok((out, cost));
    }
    let what = format!("FITS file {}", out.path);
    let get = GetOptions {
        if_match: out.version.e_tag.clone(),
        ..Default::default()
    };
    let result = store
        .get_opts(&Path::from(out.path.as_str()), get)
        .await
        .map_err(|e| Error::storage(&what, &e))?;
    if let Some(why) = out.version.mismatch(&result.meta) {
        return Err(Error::Unavailable(format!("{what} changed while it was read: {why}")));
    }
    let bytes = result.bytes().await.map_err(|e| Error::storage(&what, &e))?;
    cost.requests += 1;
    cost.bytes += bytes.len() as u64;
    // A bound on the decompressed stream (a gzip bomb would otherwise keep a thread busy for
    // hours): 64 times the largest compressed size. A longer stream ends the scan there.
    let limit = opts.max_gzip_bytes.saturating_mul(64);
    let (hdus, error) = tokio::task::spawn_blocking(move || {
        let (hdus, err) = scan_reader(flate2::read::MultiGzDecoder::new(&bytes[..]).take(limit));
        (hdus, err.map(|e| e.to_string()))
    })
    .await
    .map_err(|e| Error::Internal(format!("reading the headers of {what}: {e}")))?;
    out.hdus = hdus;
    out.error = error;
    Ok((out, cost))
}

/// True for the names of FITS files: `.fits`, `.fit`, `.fts`, `.fits.fz` (tile-compressed),
/// and any of them with `.gz` (case-insensitive).
pub fn is_fits_name(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let base = lower.strip_suffix(".gz").unwrap_or(&lower);
    let base = base.strip_suffix(".fz").unwrap_or(base);
    base.ends_with(".fits") || base.ends_with(".fit") || base.ends_with(".fts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_names() {
        for yes in [
            "a.fits",
            "b/c.FIT",
            "d.fts",
            "e.fits.fz",
            "f.fits.gz",
            "g.fit.gz",
            "h.fits.fz.gz",
        ] {
            assert!(is_fits_name(yes), "{yes}");
        }
        for no in ["a.parquet", "fits", "a.fits.txt", "_manifest", "a.gz", "a.fz"] {
            assert!(!is_fits_name(no), "{no}");
        }
    }
}
