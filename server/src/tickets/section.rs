//! Image sections: `{"section": {...}}`, a sub-image of one image HDU.
//!
//! ```text
//!  plan: the HDU from the header catalog (or, for a file not catalogued yet, its headers read
//!        now) ─> the box: as given (clipped to the image), or Cutout2D's box around a sky
//!        position through the HDU's TAN WCS ─> limit check
//!  read: two versioned range reads at once: the HDU's header, and the rows y0..y1 (one range)
//!  out:  one row: the sub-image as FITS (the header with CRPIX shifted, as Cutout2D shifts its
//!        WCS), and its pixels as float64, scaled as astropy scales them
//! ```
//!
//! Only the rows of the box are read: for an image of W columns, `(y1 - y0) * W * |BITPIX|/8`
//! bytes, whatever the box's width. Gzipped files cannot be read by range and tile-compressed
//! images would need their tiles decompressed: both are refused with a clear message.

use std::sync::Arc;

use arrow::array::{
    BinaryBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::async_reader::AsyncFileReader;

use crate::storage::{FileVersion, StoreReader};
use astroflight_fits::header::{padded, section_header, Hdu, HduKind};
use astroflight_fits::wcs::{cutout_box, TanWcs};
use astroflight_fits::FitsError;
use astroflight_proto::{Region, SectionRequest};

use crate::error::{quoted, Error, Result};
use crate::fits_lake::catalog;
use crate::fits_lake::file_headers::{scan_file, FileHeaders};
use crate::lake::{FitsDataset, Lake};
use crate::storage::IoStats;
use crate::tickets::Planned;

/// The result schema of a section: one row.
pub fn section_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("hdu", DataType::Int32, false),
        Field::new(
            "box",
            DataType::List(Arc::new(Field::new_list_field(DataType::Int64, false))),
            false,
        ),
        Field::new("width", DataType::Int32, false),
        Field::new("height", DataType::Int32, false),
        Field::new("fits", DataType::Binary, false),
        Field::new(
            "pixels",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
            false,
        ),
    ]))
}

/// A planned section.
pub struct SectionPlan {
    lake: Arc<Lake>,
    ds: Arc<FitsDataset>,
    path: String,
    version: FileVersion,
    hdu: Hdu,
    /// `[x0, y0, x1, y1)`.
    area: [u64; 4],
    command: Vec<u8>,
}

impl SectionPlan {
    fn bytes_per_pixel(&self) -> u64 {
        self.hdu.bitpix.unsigned_abs() / 8
    }

    fn row_bytes(&self) -> u64 {
        self.hdu.naxes[0] as u64 * self.bytes_per_pixel()
    }

    /// The bytes read for the pixels: whole rows y0..y1.
    pub fn rows_range(&self) -> std::ops::Range<u64> {
        let start = self.hdu.data_offset + self.area[1] * self.row_bytes();
        start..start + (self.area[3] - self.area[1]) * self.row_bytes()
    }
}

impl Planned for SectionPlan {
    fn dataset(&self) -> &str {
        &self.ds.name
    }
    fn schema(&self) -> SchemaRef {
        section_schema()
    }
    fn rows(&self) -> Option<u64> {
        Some(1)
    }
    fn alerts(&self) -> usize {
        0
    }
    fn estimated_bytes(&self) -> u64 {
        let [x0, y0, x1, y1] = self.area;
        (x1 - x0) * (y1 - y0) * (self.bytes_per_pixel() + 8) + (self.hdu.data_offset - self.hdu.header_offset)
    }
    fn limited(&self) -> bool {
        false
    }
    fn endpoint_tickets(&self) -> Vec<Vec<u8>> {
        vec![self.command.clone()]
    }
    fn app_metadata(&self) -> Option<serde_json::Value> {
        let r = self.rows_range();
        Some(serde_json::json!({"box": self.area, "rows_bytes": r.end - r.start}))
    }
    fn execute(self: Arc<Self>, io: Arc<IoStats>) -> BoxStream<'static, Result<RecordBatch>> {
        stream::once(async move { execute(&self, io).await }).boxed()
    }
}

fn invalid(path: &str, hdu: usize, m: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{path} HDU {hdu}: {m}"))
}

/// The headers of one file: from the catalog, or read now for a file it does not hold yet.
async fn file_headers(lake: &Lake, ds: &Arc<FitsDataset>, path: &str) -> Result<FileHeaders> {
    let (catalog, p) = (ds.catalog.clone(), path.to_string());
    let known = tokio::task::spawn_blocking(move || catalog.get(&p)).await??;
    if let Some(record) = known {
        return catalog::decode(path, &record);
    }
    let store = lake.fits_store(ds, &Arc::new(IoStats::default()));
    let meta = match store.head(&Path::from(path)).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::NotFound(format!(
                "no file {} in dataset {:?}",
                quoted(path),
                ds.name
            )))
        }
        Err(e) => return Err(Error::storage(&format!("FITS file {path}"), &e)),
    };
    Ok(scan_file(store, &meta, lake.scan_options()).await?.0)
}

pub async fn plan(lake: &Arc<Lake>, req: SectionRequest, command: &[u8]) -> Result<SectionPlan> {
    let ds = lake.fits_dataset(&req.ticket.dataset)?.clone();
    let path = req.ticket.path.clone();
    let f = file_headers(lake, &ds, &path).await?;
    let index = req.ticket.hdu as usize;
    if f.gzip {
        return Err(Error::InvalidArgument(format!(
            "{path} is gzipped: sections read byte ranges, which a gzip stream does not allow (store the file uncompressed)"
        )));
    }
    let Some(hdu) = f.hdus.get(index).cloned() else {
        let why = match &f.error {
            Some(e) => format!(" (its headers could not all be read: {e})"),
            None => String::new(),
        };
        return Err(Error::NotFound(format!(
            "{path} has {} HDUs, not an HDU {index}{why}",
            f.hdus.len()
        )));
    };
    match hdu.kind {
        HduKind::Primary | HduKind::Image => {}
        HduKind::CompressedImage => {
            return Err(invalid(
                &path,
                index,
                "a tile-compressed image: sections of compressed images are not supported (their tiles would have to be decompressed)",
            ))
        }
        ref k => return Err(invalid(&path, index, format!("a {} HDU, not an image", k.name()))),
    }
    if hdu.naxis < 2 || hdu.naxes[2..].iter().any(|&n| n != 1) {
        return Err(invalid(
            &path,
            index,
            format!("an image of axes {:?}: sections are of 2-D images", hdu.naxes),
        ));
    }
    let (width, height) = (hdu.naxes[0] as u64, hdu.naxes[1] as u64);
    let area = match req.region {
        Region::Box([x0, y0, x1, y1]) => {
            // Clipped to the image, as numpy's slicing clips.
            let (x1, y1) = (x1.min(width), y1.min(height));
            if x0 >= x1 || y0 >= y1 {
                return Err(invalid(
                    &path,
                    index,
                    format!("the box is outside the image ({width} x {height} pixels)"),
                ));
            }
            [x0, y0, x1, y1]
        }
        Region::Sky { ra, dec, size_arcsec } => {
            let wcs = TanWcs::from_header(|k| hdu.value(k)).map_err(|e| match e {
                FitsError::Unsupported(m) | FitsError::Format(m) | FitsError::Gzip(m) => invalid(&path, index, m),
                e @ FitsError::NoSuchHdu(..) => invalid(&path, index, e),
            })?;
            let smallest = wcs.pixel_scales().iter().fold(0f64, |a, &b| a.max(b)) * 3600.0;
            if (size_arcsec / smallest).round_ties_even() < 1.0 {
                return Err(invalid(
                    &path,
                    index,
                    format!("size_arcsec = {size_arcsec} is less than one pixel ({smallest:.4}\" per pixel)"),
                ));
            }
            cutout_box(&wcs, ra, dec, size_arcsec, width, height).ok_or_else(|| {
                invalid(
                    &path,
                    index,
                    format!("ra = {ra}, dec = {dec} (size {size_arcsec}\") does not overlap the image"),
                )
            })?
        }
    };
    let plan = SectionPlan {
        lake: lake.clone(),
        ds,
        path,
        version: f.version,
        hdu,
        area,
        command: command.to_vec(),
    };
    let r = plan.rows_range();
    let max = lake.fits_config.max_section_bytes;
    if r.end - r.start > max {
        return Err(Error::ResourceExhausted(format!(
            "the section reads {} bytes of rows; this server's limit is {max} (fits.max_section_bytes): ask for fewer rows",
            r.end - r.start
        )));
    }
    Ok(plan)
}

async fn execute(plan: &SectionPlan, io: Arc<IoStats>) -> Result<RecordBatch> {
    let what = format!("FITS file {} of dataset {:?}", plan.path, plan.ds.name);
    let store = plan.lake.fits_store(&plan.ds, &io);
    let reader = || {
        StoreReader::new(store.clone(), Path::from(plan.path.as_str()), plan.version.size)
            .with_version(plan.version.clone())
    };
    let (mut a, mut b) = (reader(), reader());
    let h = &plan.hdu;
    let (raw_header, rows) = futures::try_join!(async { a.get_bytes(h.header_offset..h.data_offset).await }, async {
        b.get_bytes(plan.rows_range()).await
    },)
    .map_err(|e| Error::parquet(&what, e))?;
    let [x0, y0, x1, y1] = plan.area;
    let (w, ht) = (x1 - x0, y1 - y0);
    let bpp = plan.bytes_per_pixel() as usize;
    let row = plan.row_bytes() as usize;
    let mut out = section_header(&raw_header, w, ht, (x0, y0))
        .map_err(|e| Error::DataLoss(format!("{what}: the header changed since it was catalogued: {e}")))?;
    let header_len = out.len();
    let mut pixels = Float64Builder::with_capacity((w * ht) as usize);
    let scale = Scale::of(h);
    for r in 0..ht as usize {
        let bytes = &rows[r * row + x0 as usize * bpp..r * row + x1 as usize * bpp];
        out.extend_from_slice(bytes);
        for px in bytes.chunks_exact(bpp) {
            pixels.append_value(scale.value(h.bitpix, px));
        }
    }
    out.resize(header_len + padded(out.len() as u64 - header_len as u64) as usize, 0);
    let mut path = StringBuilder::new();
    path.append_value(&plan.path);
    let mut hdu = Int32Builder::new();
    hdu.append_value(h.index as i32);
    let mut area =
        ListBuilder::new(Int64Builder::new()).with_field(Arc::new(Field::new_list_field(DataType::Int64, false)));
    area.append_value(plan.area.iter().map(|&v| Some(v as i64)));
    let (mut width, mut height) = (Int32Builder::new(), Int32Builder::new());
    width.append_value(w as i32);
    height.append_value(ht as i32);
    let mut fits = BinaryBuilder::new();
    fits.append_value(&out);
    let values = pixels.finish();
    let list = arrow::array::ListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float64, true)),
        arrow::buffer::OffsetBuffer::from_lengths([values.len()]),
        Arc::new(values),
        None,
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    RecordBatch::try_new(
        section_schema(),
        vec![
            Arc::new(path.finish()),
            Arc::new(hdu.finish()),
            Arc::new(area.finish()),
            Arc::new(width.finish()),
            Arc::new(height.finish()),
            Arc::new(fits.finish()),
            Arc::new(list),
        ],
    )
    .map_err(|e| Error::Internal(e.to_string()))
}

/// Physical values as astropy computes them (`ImageHDU.data`, `.section`): raw values when
/// there is no BSCALE/BZERO/BLANK; the unsigned-integer conventions exactly; otherwise in
/// float32 for BITPIX 8 and 16 (and -32), float64 for 32, 64 (and -64), with integer BLANKs as
/// NaN.
struct Scale {
    bscale: f64,
    bzero: f64,
    blank: Option<i64>,
    plain: bool,
    unsigned: bool,
}

impl Scale {
    fn of(h: &Hdu) -> Scale {
        let num = |k: &str, d: f64| h.value(k).and_then(astroflight_fits::header::parse_float).unwrap_or(d);
        let (bscale, bzero) = (num("BSCALE", 1.0), num("BZERO", 0.0));
        let blank = if h.bitpix > 0 {
            h.value("BLANK").and_then(|v| v.parse::<i64>().ok())
        } else {
            None
        };
        let unsigned = bscale == 1.0
            && match h.bitpix {
                16 => bzero == 32768.0,
                32 => bzero == 2147483648.0,
                64 => bzero == 9223372036854775808.0,
                _ => false,
            };
        Scale {
            bscale,
            bzero,
            blank,
            plain: bzero == 0.0 && bscale == 1.0 && blank.is_none(),
            unsigned,
        }
    }

    fn value(&self, bitpix: i64, b: &[u8]) -> f64 {
        let int = |b: &[u8]| -> i64 {
            match bitpix {
                8 => b[0] as i64,
                16 => i16::from_be_bytes([b[0], b[1]]) as i64,
                32 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64,
                _ => i64::from_be_bytes(b.try_into().expect("8 bytes")),
            }
        };
        match bitpix {
            -32 => {
                let v = f32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                if self.plain {
                    v as f64
                } else {
                    scaled32(v, self.bscale, self.bzero) as f64
                }
            }
            -64 => {
                let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                scaled64(v, self.bscale, self.bzero)
            }
            _ => {
                let raw = int(b);
                if self.plain {
                    return raw as f64;
                }
                if self.unsigned {
                    // Exact: the stored value plus 2^(bits-1), as an unsigned integer.
                    return (raw as i128 + self.bzero as i128) as f64;
                }
                if self.blank == Some(raw) {
                    return f64::NAN;
                }
                if bitpix <= 16 {
                    scaled32(raw as f32, self.bscale, self.bzero) as f64
                } else {
                    scaled64(raw as f64, self.bscale, self.bzero)
                }
            }
        }
    }
}

fn scaled32(v: f32, bscale: f64, bzero: f64) -> f32 {
    let mut x = v;
    if bscale != 1.0 {
        x *= bscale as f32;
    }
    if bzero != 0.0 {
        x += bzero as f32;
    }
    x
}

fn scaled64(v: f64, bscale: f64, bzero: f64) -> f64 {
    let mut x = v;
    if bscale != 1.0 {
        x *= bscale;
    }
    if bzero != 0.0 {
        x += bzero;
    }
    x
}
