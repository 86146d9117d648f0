//! astroflight's FITS codec: decode the image stamps of alerts into float32 pixels (and write
//! them, for the generator), and read headers as cards and HDUs ([`header`]) for header tables.
//!
//! A FITS file is 2880-byte blocks: header blocks of 80-character `KEY = value` cards ending
//! with `END`, then the data, big-endian, NAXIS1 (x, fastest) varying first, padded to a block.
//! Row-major `[NAXIS2][NAXIS1]` is therefore the stored order, which is also what astropy and
//! numpy give (`data.shape == (NAXIS2, NAXIS1)`).

use std::io::Read;

pub mod header;
pub mod wcs;

pub const BLOCK: usize = 2880;

/// Largest stamp a gzipped cutout may expand to (a guard against corrupt or hostile data).
pub const MAX_STAMP_BYTES: u64 = 64 << 20;
const CARD: usize = 80;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FitsError {
    #[error("not a FITS file: {0}")]
    Format(String),
    #[error("unsupported FITS image: {0}")]
    Unsupported(String),
    #[error("gzip stream is corrupt: {0}")]
    Gzip(String),
    /// The file has fewer HDUs than the one asked for: (asked, present).
    #[error("the stamp has {1} HDUs, not an HDU {0}")]
    NoSuchHdu(usize, usize),
}

/// A decoded 2-D image.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// Row-major, `height` rows of `width` pixels; physical values (BSCALE/BZERO applied,
    /// BLANK integers as NaN).
    pub pixels: Vec<f32>,
}

/// True if the bytes start with the gzip magic number.
pub fn is_gzip(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0x1f && b[1] == 0x8b
}

/// Gunzip when gzipped, else return as is.
pub fn maybe_gunzip(b: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, FitsError> {
    if !is_gzip(b) {
        return Ok(std::borrow::Cow::Borrowed(b));
    }
    let mut out = Vec::with_capacity(b.len() * 2);
    flate2::read::MultiGzDecoder::new(b)
        .take(MAX_STAMP_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| FitsError::Gzip(e.to_string()))?;
    if out.len() as u64 > MAX_STAMP_BYTES {
        return Err(FitsError::Gzip(format!("expands to more than {MAX_STAMP_BYTES} bytes")));
    }
    Ok(std::borrow::Cow::Owned(out))
}

#[derive(Default)]
struct Header {
    bitpix: Option<i64>,
    naxis: Option<i64>,
    axes: [Option<i64>; 3],
    bscale: f64,
    bzero: f64,
    blank: Option<i64>,
}

fn card_value(card: &str) -> Option<&str> {
    // `KEYWORD = value / comment`: value in columns 11..80 when column 9..10 is "= ".
    if card.len() < 10 || &card[8..10] != "= " {
        return None;
    }
    let v = &card[10..];
    let v = match v.find('/') {
        Some(i) if !v.trim_start().starts_with('\'') => &v[..i],
        _ => v,
    };
    Some(v.trim())
}

fn parse_header(data: &[u8]) -> Result<(Header, usize), FitsError> {
    let mut h = Header {
        bscale: 1.0,
        ..Default::default()
    };
    if data.len() < BLOCK || !(data.starts_with(b"SIMPLE  =") || data.starts_with(b"XTENSION=")) {
        return Err(FitsError::Format("missing SIMPLE card at the start".into()));
    }
    let mut at = 0;
    loop {
        let card = data
            .get(at..at + CARD)
            .ok_or_else(|| FitsError::Format("header has no END card".into()))?;
        at += CARD;
        // FITS headers are printable ASCII (0x20-0x7E). Anything else is refused here, before
        // the card is sliced by column: slicing UTF-8 text at byte offsets panics inside a
        // multi-byte character.
        if !card.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(FitsError::Format(format!(
                "header card {} holds bytes that are not printable ASCII",
                at / CARD
            )));
        }
        let card = std::str::from_utf8(card).map_err(|_| FitsError::Format("header is not ASCII".into()))?;
        let key = card[..8].trim_end();
        if key == "END" {
            break;
        }
        let Some(value) = card_value(card) else {
            continue;
        };
        let int = || {
            value
                .parse::<i64>()
                .map_err(|_| FitsError::Format(format!("{key} = {value:?} is not an integer")))
        };
        let float = || {
            value
                .replace(['D', 'd'], "E")
                .parse::<f64>()
                .map_err(|_| FitsError::Format(format!("{key} = {value:?} is not a number")))
        };
        match key {
            "BITPIX" => h.bitpix = Some(int()?),
            "NAXIS" => h.naxis = Some(int()?),
            "NAXIS1" => h.axes[0] = Some(int()?),
            "NAXIS2" => h.axes[1] = Some(int()?),
            "NAXIS3" => h.axes[2] = Some(int()?),
            "BSCALE" => h.bscale = float()?,
            "BZERO" => h.bzero = float()?,
            "BLANK" => h.blank = Some(int()?),
            _ => {}
        }
    }
    let data_start = at.div_ceil(BLOCK) * BLOCK;
    Ok((h, data_start))
}

/// Decode the primary image of a FITS file (gzipped or not).
pub fn decode_image(bytes: &[u8]) -> Result<Image, FitsError> {
    decode_image_hdu(bytes, 0)
}

/// Decode the image of HDU `hdu` (0: primary) of a FITS file (gzipped or not): Rubin stamps
/// hold three, the image, its uncertainty and the PSF.
pub fn decode_image_hdu(bytes: &[u8], hdu: usize) -> Result<Image, FitsError> {
    let bytes = maybe_gunzip(bytes)?;
    let at = if hdu == 0 {
        0
    } else {
        let (hdus, err) = header::scan_reader(&bytes[..]);
        match hdus.get(hdu) {
            Some(h) => h.header_offset as usize,
            None => {
                return Err(match err {
                    Some(e) => FitsError::Format(format!("no HDU {hdu}: {e}")),
                    None => FitsError::NoSuchHdu(hdu, hdus.len()),
                })
            }
        }
    };
    decode_at(&bytes[at..])
}

fn decode_at(bytes: &[u8]) -> Result<Image, FitsError> {
    let (h, start) = parse_header(bytes)?;
    let bitpix = h.bitpix.ok_or_else(|| FitsError::Format("no BITPIX".into()))?;
    let naxis = h.naxis.ok_or_else(|| FitsError::Format("no NAXIS".into()))?;
    let dim = |i: usize| {
        h.axes[i]
            .filter(|v| (0..=1 << 20).contains(v))
            .map(|v| v as usize)
            .ok_or_else(|| FitsError::Format(format!("NAXIS{} missing or out of range", i + 1)))
    };
    let (width, height) = match naxis {
        2 => (dim(0)?, dim(1)?),
        3 if dim(2)? == 1 => (dim(0)?, dim(1)?),
        n => {
            return Err(FitsError::Unsupported(format!(
                "NAXIS = {n}; only 2-D images are decoded"
            )))
        }
    };
    let n = width * height;
    let bpp = match bitpix {
        8 => 1,
        16 => 2,
        32 | -32 => 4,
        64 | -64 => 8,
        b => return Err(FitsError::Format(format!("BITPIX = {b} is not a FITS value"))),
    };
    let raw = bytes.get(start..start + n * bpp).ok_or_else(|| {
        FitsError::Format(format!(
            "data is truncated: {width}x{height} pixels of {bpp} bytes need {} bytes after the header, the file has {}",
            n * bpp,
            bytes.len().saturating_sub(start)
        ))
    })?;
    let scale = |v: f64| (h.bzero + h.bscale * v) as f32;
    let int = |v: i64| {
        if h.blank == Some(v) {
            f32::NAN
        } else {
            scale(v as f64)
        }
    };
    let plain = h.bscale == 1.0 && h.bzero == 0.0;
    let pixels: Vec<f32> = match bitpix {
        -32 => raw
            .chunks_exact(4)
            .map(|c| {
                let v = f32::from_be_bytes(c.try_into().expect("4 bytes"));
                if plain {
                    v
                } else {
                    scale(v as f64)
                }
            })
            .collect(),
        -64 => raw
            .chunks_exact(8)
            .map(|c| scale(f64::from_be_bytes(c.try_into().expect("8 bytes"))))
            .collect(),
        8 => raw.iter().map(|&v| int(v as i64)).collect(),
        16 => raw
            .chunks_exact(2)
            .map(|c| int(i16::from_be_bytes(c.try_into().expect("2 bytes")) as i64))
            .collect(),
        32 => raw
            .chunks_exact(4)
            .map(|c| int(i32::from_be_bytes(c.try_into().expect("4 bytes")) as i64))
            .collect(),
        _ => raw
            .chunks_exact(8)
            .map(|c| int(i64::from_be_bytes(c.try_into().expect("8 bytes"))))
            .collect(),
    };
    Ok(Image { width, height, pixels })
}

fn push_card(out: &mut Vec<u8>, key: &str, value: &str, comment: &str) {
    let mut card = if value.is_empty() {
        format!("{key:<8}")
    } else {
        format!("{key:<8}= {value:>20}")
    };
    if !comment.is_empty() {
        card.push_str(" / ");
        card.push_str(comment);
    }
    card.truncate(CARD);
    out.extend_from_slice(format!("{card:<80}").as_bytes());
}

/// Write a float32 2-D image as an IMAGE extension, to append to a FITS file. `cards` as in
/// [`encode_image_f32`].
pub fn encode_extension_f32(width: usize, height: usize, pixels: &[f32], cards: &[(&str, String, &str)]) -> Vec<u8> {
    let mut head = vec![("PCOUNT", "0".to_string(), ""), ("GCOUNT", "1".to_string(), "")];
    head.extend(cards.iter().cloned());
    let mut out = encode_image_f32(width, height, pixels, &head);
    out[..CARD].copy_from_slice(format!("{:<80}", "XTENSION= 'IMAGE   '           / image extension").as_bytes());
    out
}

/// Write a float32 2-D image as a single-HDU FITS file. `cards` are extra (key, value, comment)
/// header cards; string values must carry their own quotes.
pub fn encode_image_f32(width: usize, height: usize, pixels: &[f32], cards: &[(&str, String, &str)]) -> Vec<u8> {
    assert_eq!(pixels.len(), width * height, "pixel count must be width * height");
    let data_len = pixels.len() * 4;
    let mut out = Vec::with_capacity(BLOCK * 2 + data_len.div_ceil(BLOCK) * BLOCK);
    push_card(&mut out, "SIMPLE", "T", "conforms to FITS standard");
    push_card(&mut out, "BITPIX", "-32", "array data type");
    push_card(&mut out, "NAXIS", "2", "number of array dimensions");
    push_card(&mut out, "NAXIS1", &width.to_string(), "");
    push_card(&mut out, "NAXIS2", &height.to_string(), "");
    for (k, v, c) in cards {
        push_card(&mut out, k, v, c);
    }
    push_card(&mut out, "END", "", "");
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, b' ');
    for p in pixels {
        out.extend_from_slice(&p.to_be_bytes());
    }
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_f32() {
        let px: Vec<f32> = (0..63 * 40).map(|i| i as f32 * 0.5 - 3.0).collect();
        let f = encode_image_f32(63, 40, &px, &[("OBJECT", "'ZTF20aabaesm'".into(), "name")]);
        assert_eq!(f.len() % BLOCK, 0);
        let img = decode_image(&f).unwrap();
        assert_eq!((img.width, img.height), (63, 40));
        assert_eq!(img.pixels, px);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &f).unwrap();
        assert_eq!(decode_image(&gz.finish().unwrap()).unwrap(), img);
    }

    #[test]
    fn integer_images_are_scaled_with_blank_as_nan() {
        let mut f = Vec::new();
        for (k, v) in [
            ("SIMPLE", "T"),
            ("BITPIX", "16"),
            ("NAXIS", "2"),
            ("NAXIS1", "2"),
            ("NAXIS2", "1"),
            ("BSCALE", "2.0"),
            ("BZERO", "1.0D1"),
            ("BLANK", "-1"),
        ] {
            push_card(&mut f, k, v, "");
        }
        push_card(&mut f, "END", "", "");
        f.resize(BLOCK, b' ');
        f.extend_from_slice(&5i16.to_be_bytes());
        f.extend_from_slice(&(-1i16).to_be_bytes());
        f.resize(2 * BLOCK, 0);
        let img = decode_image(&f).unwrap();
        assert_eq!(img.pixels[0], 20.0);
        assert!(img.pixels[1].is_nan());
    }

    #[test]
    fn non_ascii_header_bytes_are_an_error_not_a_panic() {
        let px = vec![0f32; 4];
        // A UTF-8 multi-byte character straddling the key/value columns (bytes 7-8), and a
        // Latin-1 byte in a value: both used to panic or pass.
        for (at, bytes) in [(80 * 5 + 7, "é".as_bytes()), (80 * 5 + 12, &[0xe9u8][..])] {
            let mut f = encode_image_f32(2, 2, &px, &[("OBSERVER", "'someone'".into(), "")]);
            f[at..at + bytes.len()].copy_from_slice(bytes);
            let e = decode_image(&f).unwrap_err();
            assert!(e.to_string().contains("not printable ASCII"), "{e}");
        }
    }

    #[test]
    fn images_of_other_hdus() {
        let px: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut f = encode_image_f32(3, 2, &px, &[]);
        f.extend(encode_extension_f32(
            2,
            1,
            &[7.0, 8.0],
            &[("EXTNAME", "'PSF'".into(), "")],
        ));
        let (hdus, err) = header::scan_reader(&f[..]);
        assert!(err.is_none());
        assert_eq!(hdus[1].kind, header::HduKind::Image);
        assert_eq!(hdus[1].extname.as_deref(), Some("PSF"));
        assert_eq!(decode_image_hdu(&f, 0).unwrap().pixels, px);
        assert_eq!(decode_image_hdu(&f, 1).unwrap().pixels, vec![7.0, 8.0]);
        assert!(decode_image_hdu(&f, 2).unwrap_err().to_string().contains("has 2 HDUs"));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(decode_image(b"hello"), Err(FitsError::Format(_))));
        assert!(matches!(decode_image(&[0x1f, 0x8b, 1, 2, 3]), Err(FitsError::Gzip(_))));
        let px = vec![0f32; 4];
        let f = encode_image_f32(2, 2, &px, &[]);
        assert!(decode_image(&f[..BLOCK + 4])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        let mut no_end = f.clone();
        for b in no_end[..BLOCK].iter_mut().skip(80 * 5) {
            *b = b' ';
        }
        assert!(decode_image(&no_end[..BLOCK]).unwrap_err().to_string().contains("END"));
        assert!(decode_image(&vec![b' '; BLOCK])
            .unwrap_err()
            .to_string()
            .contains("SIMPLE"));
    }
}
