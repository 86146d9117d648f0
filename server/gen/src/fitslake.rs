//! A deterministic FITS lake: the files a FITS dataset holds in the demo, the tests and the
//! header benchmark. Every structure the header scanner must handle appears: images with a TAN
//! WCS (float32, and int16 with BSCALE/BZERO), multi-extension files (a data-less primary with a
//! long header, then SCI / ERR / DQ images), binary tables with a heap of variable-length
//! arrays, ASCII tables, long strings on CONTINUE cards, HIERARCH keys, COMMENT and HISTORY
//! cards, and externally gzipped files.
//!
//! ```text
//!  out/img/img_NNNN.fits      float32 image, TAN WCS             (file i, i % 6 == 0)
//!  out/mef/mef_NNNN.fits      primary (no data) + SCI, ERR, DQ   (i % 6 == 1)
//!  out/tables/bin_NNNN.fits   BINTABLE with a heap               (i % 6 == 2)
//!  out/tables/asc_NNNN.fit    ASCII TABLE                        (i % 6 == 3)
//!  out/img/gz_NNNN.fits.gz    gzipped float32 image              (i % 6 == 4)
//!  out/img/int_NNNN.fts       int16 image, BSCALE/BZERO          (i % 6 == 5)
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{GenError, Rng};

const BLOCK: usize = 2880;
const FILTERS: [&str; 4] = ["F606W", "F814W", "F435W", "F110W"];
const TARGETS: [&str; 5] = ["M31", "NGC 1300", "M51 core", "Abell 1689", "HUDF"];

/// What to generate.
#[derive(Debug, Clone)]
pub struct FitsLakeOptions {
    pub out: PathBuf,
    pub files: usize,
    /// Side of the images, in pixels (MEF extensions are half of it).
    pub side: usize,
    pub seed: u64,
}

impl Default for FitsLakeOptions {
    fn default() -> Self {
        FitsLakeOptions {
            out: PathBuf::from("fits-lake"),
            files: 12,
            side: 256,
            seed: 42,
        }
    }
}

/// A value of a card, formatted as the standard's fixed format writes it.
pub enum V {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// A header being written: 80-character cards.
#[derive(Default)]
pub struct Header(Vec<u8>);

impl Header {
    fn push(&mut self, card: &str) {
        let mut c = card.to_string();
        c.truncate(80);
        self.0.extend_from_slice(format!("{c:<80}").as_bytes());
    }

    /// `KEY = value / comment` in the fixed format (numbers and logicals right-justified to
    /// column 30, strings from column 11).
    pub fn card(&mut self, key: &str, v: V, comment: &str) -> &mut Self {
        let value = match v {
            V::Bool(b) => format!("{:>20}", if b { "T" } else { "F" }),
            V::Int(i) => format!("{i:>20}"),
            V::Float(f) => format!("{:>20}", float(f)),
            V::Str(s) => format!("{:<20}", format!("'{:<8}'", s.replace('\'', "''"))),
        };
        let mut card = format!("{key:<8}= {value}");
        if !comment.is_empty() {
            card.push_str(" / ");
            card.push_str(comment);
        }
        self.push(&card);
        self
    }

    pub fn commentary(&mut self, key: &str, text: &str) -> &mut Self {
        self.push(&format!("{key:<8}{text}"));
        self
    }

    /// `HIERARCH A B C = value`.
    pub fn hierarch(&mut self, key: &str, v: &str) -> &mut Self {
        self.push(&format!("HIERARCH {key} = {v}"));
        self
    }

    /// A string longer than one card, on CONTINUE cards (each part ends with `&`).
    pub fn long_string(&mut self, key: &str, s: &str, comment: &str) -> &mut Self {
        let parts: Vec<String> = s
            .as_bytes()
            .chunks(60)
            .map(|c| String::from_utf8_lossy(c).replace('\'', "''"))
            .collect();
        for (i, p) in parts.iter().enumerate() {
            let amp = if i + 1 < parts.len() { "&" } else { "" };
            if i == 0 {
                self.push(&format!("{key:<8}= '{p}{amp}'"));
            } else if i + 1 == parts.len() && !comment.is_empty() {
                self.push(&format!("CONTINUE  '{p}{amp}' / {comment}"));
            } else {
                self.push(&format!("CONTINUE  '{p}{amp}'"));
            }
        }
        self
    }

    /// The header's bytes: END, padded with blanks to a block.
    pub fn finish(&mut self) -> Vec<u8> {
        self.push("END");
        let mut out = std::mem::take(&mut self.0);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, b' ');
        out
    }
}

/// A real as the fixed format writes it: always with a decimal point or an exponent.
fn float(f: f64) -> String {
    let s = format!("{f:?}");
    if s.contains(['.', 'e', 'E']) {
        s.replace('e', "E")
    } else {
        format!("{s}.0")
    }
}

fn pad_data(out: &mut Vec<u8>, fill: u8) {
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, fill);
}

/// Observation keys shared by images: time, exposure, filter, target, instrument.
fn observation(h: &mut Header, rng: &mut Rng, i: usize) {
    let day = 1 + (i % 28);
    h.card(
        "DATE-OBS",
        V::Str(format!("2024-03-{day:02}T0{}:12:30.5", i % 10)),
        "UTC start",
    )
    .card("MJD-OBS", V::Float(60370.0 + i as f64 * 0.37), "modified Julian date")
    .card(
        "EXPTIME",
        V::Float((30 + rng.below(600)) as f64 + 0.5),
        "[s] exposure time",
    )
    .card("FILTER", V::Str(FILTERS[i % FILTERS.len()].into()), "filter")
    .card("OBJECT", V::Str(TARGETS[i % TARGETS.len()].into()), "target")
    .card("INSTRUME", V::Str("ASTROCAM".into()), "")
    .card("AIRMASS", V::Float(1.0 + (i % 7) as f64 * 0.05), "")
    .card("NCOMBINE", V::Int(1 + (i % 4) as i64), "frames combined");
}

/// A TAN WCS centred on the image (CD matrix, 0.1"/pixel, slightly rotated).
fn wcs(h: &mut Header, w: usize, ht: usize, i: usize) {
    let ra = 10.0 + (i as f64 * 17.3) % 340.0;
    let dec = -60.0 + (i as f64 * 7.1) % 120.0;
    let scale = 0.1 / 3600.0;
    let (s, c) = (0.05f64.sin(), 0.05f64.cos());
    h.card("WCSAXES", V::Int(2), "")
        .card("CTYPE1", V::Str("RA---TAN".into()), "")
        .card("CTYPE2", V::Str("DEC--TAN".into()), "")
        .card("CRPIX1", V::Float(w as f64 / 2.0 + 0.5), "")
        .card("CRPIX2", V::Float(ht as f64 / 2.0 + 0.5), "")
        .card("CRVAL1", V::Float(ra), "[deg]")
        .card("CRVAL2", V::Float(dec), "[deg]")
        .card("CD1_1", V::Float(-scale * c), "")
        .card("CD1_2", V::Float(scale * s), "")
        .card("CD2_1", V::Float(scale * s), "")
        .card("CD2_2", V::Float(scale * c), "")
        .card("CUNIT1", V::Str("deg".into()), "")
        .card("CUNIT2", V::Str("deg".into()), "")
        .card("RADESYS", V::Str("ICRS".into()), "");
}

/// Pixels: a sky level, noise and a few Gaussian sources; deterministic.
fn pixels(rng: &mut Rng, w: usize, h: usize) -> Vec<f32> {
    let mut px: Vec<f32> = (0..w * h).map(|_| 100.0 + 5.0 * rng.normal() as f32).collect();
    for _ in 0..8 {
        let (cx, cy) = (rng.below(w as u64) as f32, rng.below(h as u64) as f32);
        let flux = 1000.0 + rng.below(5000) as f32;
        for y in 0..h {
            let dy = y as f32 - cy;
            if dy.abs() > 12.0 {
                continue;
            }
            for x in 0..w {
                let dx = x as f32 - cx;
                if dx.abs() <= 12.0 {
                    px[y * w + x] += flux * (-(dx * dx + dy * dy) / 8.0).exp();
                }
            }
        }
    }
    px
}

fn image_f32(h: &mut Header, w: usize, ht: usize, px: &[f32]) -> Vec<u8> {
    let mut out = h.finish();
    for p in px.iter().take(w * ht) {
        out.extend_from_slice(&p.to_be_bytes());
    }
    pad_data(&mut out, 0);
    out
}

fn primary_image(rng: &mut Rng, i: usize, side: usize) -> Vec<u8> {
    let mut h = Header::default();
    h.card("SIMPLE", V::Bool(true), "conforms to FITS standard")
        .card("BITPIX", V::Int(-32), "array data type")
        .card("NAXIS", V::Int(2), "number of array dimensions")
        .card("NAXIS1", V::Int(side as i64), "")
        .card("NAXIS2", V::Int(side as i64), "")
        .card("EXTEND", V::Bool(true), "");
    observation(&mut h, rng, i);
    wcs(&mut h, side, side, i);
    h.card("BUNIT", V::Str("ELECTRONS/S".into()), "");
    let px = pixels(rng, side, side);
    image_f32(&mut h, side, side, &px)
}

fn int16_image(rng: &mut Rng, i: usize, side: usize) -> Vec<u8> {
    let mut h = Header::default();
    h.card("SIMPLE", V::Bool(true), "")
        .card("BITPIX", V::Int(16), "")
        .card("NAXIS", V::Int(2), "")
        .card("NAXIS1", V::Int(side as i64), "")
        .card("NAXIS2", V::Int(side as i64), "")
        .card("BSCALE", V::Float(0.5), "")
        .card("BZERO", V::Float(32768.0), "");
    // No BLANK: astropy 7.2 fails to scale an image whose BLANK is (almost) never used, and the
    // tests compare sections with astropy's. BLANK is tested on astropy's own blank.fits.
    observation(&mut h, rng, i);
    wcs(&mut h, side, side, i);
    let mut out = h.finish();
    for p in pixels(rng, side, side) {
        let stored = ((p as f64 - 32768.0) / 0.5).round().clamp(-32767.0, 32767.0) as i16;
        out.extend_from_slice(&stored.to_be_bytes());
    }
    pad_data(&mut out, 0);
    out
}

fn mef(rng: &mut Rng, i: usize, side: usize) -> Vec<u8> {
    let side = (side / 2).max(8);
    let mut h = Header::default();
    h.card("SIMPLE", V::Bool(true), "")
        .card("BITPIX", V::Int(8), "")
        .card("NAXIS", V::Int(0), "")
        .card("EXTEND", V::Bool(true), "")
        .card("NEXTEND", V::Int(3), "");
    observation(&mut h, rng, i);
    h.long_string(
        "PROPTTL",
        &format!(
            "A survey of the resolved stellar populations of nearby galaxies, field {i}, with a title long enough to need CONTINUE cards"
        ),
        "proposal title",
    );
    h.hierarch("ESO DET CHIP NAME", &format!("'CCD-{}'", 40 + i % 4))
        .hierarch("ESO TEL AIRM START", &float(1.0 + (i % 5) as f64 * 0.1));
    // A long header: many instrument keys, as real primaries have (several blocks).
    for k in 0..120 {
        h.card(&format!("TEMP{k:04}"), V::Float(-120.0 + k as f64 * 0.25), "[C] sensor");
    }
    h.commentary("COMMENT", "Generated by astroflight-gen for header-table tests.")
        .commentary("HISTORY", "bias subtracted")
        .commentary("HISTORY", "flat fielded")
        .commentary("", "a blank-keyword card");
    let mut out = h.finish();
    let sci = pixels(rng, side, side);
    for (n, name) in ["SCI", "ERR", "DQ"].iter().enumerate() {
        let mut x = Header::default();
        let bitpix = if *name == "DQ" { 16 } else { -32 };
        x.card("XTENSION", V::Str("IMAGE".into()), "image extension")
            .card("BITPIX", V::Int(bitpix), "")
            .card("NAXIS", V::Int(2), "")
            .card("NAXIS1", V::Int(side as i64), "")
            .card("NAXIS2", V::Int(side as i64), "")
            .card("PCOUNT", V::Int(0), "")
            .card("GCOUNT", V::Int(1), "")
            .card("EXTNAME", V::Str((*name).into()), "")
            .card("EXTVER", V::Int(1), "");
        wcs(&mut x, side, side, i);
        let mut data = x.finish();
        match n {
            0 => sci.iter().for_each(|p| data.extend_from_slice(&p.to_be_bytes())),
            1 => sci
                .iter()
                .for_each(|p| data.extend_from_slice(&(p.abs().sqrt()).to_be_bytes())),
            _ => (0..side * side)
                .for_each(|k| data.extend_from_slice(&((k * 7 + i).is_multiple_of(5) as i16).to_be_bytes())),
        }
        pad_data(&mut data, 0);
        out.extend(data);
    }
    out
}

/// A binary table of sources with a heap: ID (J), RA/DEC (D), FLUX (E), NAME (8A), and SPEC, a
/// variable-length float array (1PE) whose values live in the heap.
fn bintable(rng: &mut Rng, i: usize, rows: usize) -> Vec<u8> {
    let mut out = Header::default()
        .card("SIMPLE", V::Bool(true), "")
        .card("BITPIX", V::Int(8), "")
        .card("NAXIS", V::Int(0), "")
        .card("EXTEND", V::Bool(true), "")
        .finish();
    let row_len = 4 + 8 + 8 + 4 + 8 + 8;
    let mut main = Vec::with_capacity(rows * row_len);
    let mut heap: Vec<u8> = Vec::new();
    for r in 0..rows {
        main.extend_from_slice(&(r as i32).to_be_bytes());
        main.extend_from_slice(&(rng.f64() * 360.0).to_be_bytes());
        main.extend_from_slice(&(rng.f64() * 180.0 - 90.0).to_be_bytes());
        main.extend_from_slice(&((rng.f64() * 1000.0) as f32).to_be_bytes());
        main.extend_from_slice(
            format!("{:<8}", format!("S{r}"))
                .as_bytes()
                .get(..8)
                .unwrap_or(b"        "),
        );
        let n = rng.below(12) as i32;
        main.extend_from_slice(&n.to_be_bytes());
        main.extend_from_slice(&(heap.len() as i32).to_be_bytes());
        for _ in 0..n {
            heap.extend_from_slice(&(rng.normal() as f32).to_be_bytes());
        }
    }
    let mut h = Header::default();
    h.card("XTENSION", V::Str("BINTABLE".into()), "binary table extension")
        .card("BITPIX", V::Int(8), "")
        .card("NAXIS", V::Int(2), "")
        .card("NAXIS1", V::Int(row_len as i64), "bytes per row")
        .card("NAXIS2", V::Int(rows as i64), "rows")
        .card("PCOUNT", V::Int(heap.len() as i64), "heap size")
        .card("GCOUNT", V::Int(1), "")
        .card("TFIELDS", V::Int(6), "");
    for (n, (name, form, unit)) in [
        ("ID", "J", ""),
        ("RA", "D", "deg"),
        ("DEC", "D", "deg"),
        ("FLUX", "E", "uJy"),
        ("NAME", "8A", ""),
        ("SPEC", "1PE(11)", ""),
    ]
    .iter()
    .enumerate()
    {
        h.card(&format!("TTYPE{}", n + 1), V::Str((*name).into()), "");
        h.card(&format!("TFORM{}", n + 1), V::Str((*form).into()), "");
        if !unit.is_empty() {
            h.card(&format!("TUNIT{}", n + 1), V::Str((*unit).into()), "");
        }
    }
    h.card("EXTNAME", V::Str("SOURCES".into()), "")
        .card("FIELD", V::Int(i as i64), "");
    out.extend(h.finish());
    let start = out.len();
    out.extend(main);
    out.extend(heap);
    debug_assert!(out.len() >= start);
    pad_data(&mut out, 0);
    out
}

/// An ASCII table: ID (I6), MAG (F8.3), NAME (A8).
fn ascii_table(rng: &mut Rng, i: usize, rows: usize) -> Vec<u8> {
    let mut out = Header::default()
        .card("SIMPLE", V::Bool(true), "")
        .card("BITPIX", V::Int(8), "")
        .card("NAXIS", V::Int(0), "")
        .card("EXTEND", V::Bool(true), "")
        .finish();
    let mut h = Header::default();
    h.card("XTENSION", V::Str("TABLE".into()), "ASCII table extension")
        .card("BITPIX", V::Int(8), "")
        .card("NAXIS", V::Int(2), "")
        .card("NAXIS1", V::Int(24), "")
        .card("NAXIS2", V::Int(rows as i64), "")
        .card("PCOUNT", V::Int(0), "")
        .card("GCOUNT", V::Int(1), "")
        .card("TFIELDS", V::Int(3), "")
        .card("TTYPE1", V::Str("ID".into()), "")
        .card("TBCOL1", V::Int(1), "")
        .card("TFORM1", V::Str("I6".into()), "")
        .card("TTYPE2", V::Str("MAG".into()), "")
        .card("TBCOL2", V::Int(8), "")
        .card("TFORM2", V::Str("F8.3".into()), "")
        .card("TTYPE3", V::Str("NAME".into()), "")
        .card("TBCOL3", V::Int(17), "")
        .card("TFORM3", V::Str("A8".into()), "")
        .card("EXTNAME", V::Str("CATALOG".into()), "")
        .card("FIELD", V::Int(i as i64), "");
    out.extend(h.finish());
    for r in 0..rows {
        let line = format!("{r:>6} {:>8.3} {:<8}", 15.0 + rng.f64() * 10.0, format!("N{r}"));
        out.extend_from_slice(&line.as_bytes()[..24]);
    }
    pad_data(&mut out, b' ');
    out
}

/// Generate the lake; returns the files written (relative to `out`). Files already there are
/// written again (the content is the same for the same options).
pub fn generate_fits_lake(opts: &FitsLakeOptions) -> Result<Vec<PathBuf>, GenError> {
    if opts.side < 8 || opts.side > 16384 {
        return Err(GenError::Options(format!(
            "image side {} is out of range (8 to 16384 pixels)",
            opts.side
        )));
    }
    let mut written = Vec::new();
    for i in 0..opts.files {
        let mut rng = Rng::new(opts.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
        let (rel, bytes): (String, Vec<u8>) = match i % 6 {
            0 => (format!("img/img_{i:04}.fits"), primary_image(&mut rng, i, opts.side)),
            1 => (format!("mef/mef_{i:04}.fits"), mef(&mut rng, i, opts.side)),
            2 => (format!("tables/bin_{i:04}.fits"), bintable(&mut rng, i, opts.side * 4)),
            3 => (format!("tables/asc_{i:04}.fit"), ascii_table(&mut rng, i, opts.side)),
            4 => {
                let plain = primary_image(&mut rng, i, opts.side);
                let rel = format!("img/gz_{i:04}.fits.gz");
                let io = |source| GenError::Io {
                    path: opts.out.join(&rel),
                    source,
                };
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&plain).map_err(io)?;
                (rel.clone(), gz.finish().map_err(io)?)
            }
            _ => (format!("img/int_{i:04}.fts"), int16_image(&mut rng, i, opts.side)),
        };
        let path = opts.out.join(&rel);
        let io = |source| GenError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        write_atomic(&path, &bytes).map_err(io)?;
        written.push(PathBuf::from(rel));
    }
    Ok(written)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp-gen");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use astroflight_fits::header::{scan_reader, HduKind};

    #[test]
    fn every_file_is_fits_the_parser_reads() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_fits_lake(&FitsLakeOptions {
            out: dir.path().to_path_buf(),
            files: 6,
            side: 32,
            seed: 1,
        })
        .unwrap();
        let kinds: Vec<Vec<HduKind>> = files
            .iter()
            .map(|f| {
                let bytes = std::fs::read(dir.path().join(f)).unwrap();
                let bytes = astroflight_fits::maybe_gunzip(&bytes).unwrap();
                let (hdus, err) = scan_reader(&bytes[..]);
                assert!(err.is_none(), "{f:?}: {err:?}");
                assert_eq!(hdus.last().unwrap().next_offset(), bytes.len() as u64, "{f:?}");
                hdus.into_iter().map(|h| h.kind).collect()
            })
            .collect();
        assert_eq!(kinds[0], vec![HduKind::Primary]);
        assert_eq!(
            kinds[1],
            vec![HduKind::Primary, HduKind::Image, HduKind::Image, HduKind::Image]
        );
        assert_eq!(kinds[2], vec![HduKind::Primary, HduKind::BinTable]);
        assert_eq!(kinds[3], vec![HduKind::Primary, HduKind::Table]);
        let mef = std::fs::read(dir.path().join(&files[1])).unwrap();
        let (hdus, _) = scan_reader(&mef[..]);
        let title = hdus[0].value("PROPTTL").unwrap();
        assert!(title.ends_with("CONTINUE cards"), "{title}");
        assert_eq!(hdus[0].value("ESO DET CHIP NAME"), Some("CCD-41"));
        assert!(hdus[0].header_offset == 0 && hdus[1].header_offset >= 3 * 2880);
    }
}
