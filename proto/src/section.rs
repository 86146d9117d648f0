//! Image sections: `{"section": {"dataset", "path", "hdu", "box": [x0, y0, x1, y1]}}` or
//! `{"section": {"dataset", "path", "hdu", "ra", "dec", "size_arcsec"}}`: a sub-image of one
//! image HDU of a FITS dataset, read by byte range.

pub use crate::ticket::SectionTicket;
use crate::{quoted, Any, TicketError};

/// The type URL of a [`SectionTicket`] packed in an [`Any`].
pub const SECTION_TYPE_URL: &str = "type.googleapis.com/astroflight.v1.SectionTicket";

/// What part of the image a section takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Region {
    /// `[x0, y0, x1, y1)`, 0-based.
    Box([u64; 4]),
    Sky {
        ra: f64,
        dec: f64,
        size_arcsec: f64,
    },
}

/// A validated section request.
#[derive(Debug, Clone, PartialEq)]
pub struct SectionRequest {
    pub ticket: SectionTicket,
    pub region: Region,
}

fn bad(m: impl Into<String>) -> TicketError {
    TicketError::Section(m.into())
}

impl SectionTicket {
    pub fn validate(self) -> Result<SectionRequest, TicketError> {
        if self.dataset.is_empty() {
            return Err(bad("`dataset` is required"));
        }
        if self.path.is_empty() || self.path.starts_with('/') || self.path.split('/').any(|p| p == "..") {
            return Err(bad(format!(
                "`path` {} must name a file relative to the dataset root",
                quoted(&self.path)
            )));
        }
        let sky = (self.ra, self.dec, self.size_arcsec);
        let region = match (self.r#box.is_empty(), sky) {
            (false, (None, None, None)) => {
                let b = &self.r#box;
                if b.len() != 4 {
                    return Err(bad(format!("`box` has {} numbers; it is [x0, y0, x1, y1]", b.len())));
                }
                if b.iter().any(|&v| v < 0) || b[0] >= b[2] || b[1] >= b[3] {
                    return Err(bad(format!(
                        "`box` {b:?} is not [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1 (pixels, ends exclusive)"
                    )));
                }
                Region::Box([b[0] as u64, b[1] as u64, b[2] as u64, b[3] as u64])
            }
            (true, (Some(ra), Some(dec), Some(size))) => {
                if !(ra.is_finite() && (-90.0..=90.0).contains(&dec) && size > 0.0 && size.is_finite()) {
                    return Err(bad(format!(
                        "ra = {ra}, dec = {dec}, size_arcsec = {size}: ra in degrees, dec in [-90, 90], size_arcsec > 0"
                    )));
                }
                Region::Sky {
                    ra: ra.rem_euclid(360.0),
                    dec,
                    size_arcsec: size,
                }
            }
            (true, (None, None, None)) => {
                return Err(bad(
                    "give a pixel `box` [x0, y0, x1, y1], or `ra`, `dec` and `size_arcsec`",
                ))
            }
            _ => {
                return Err(bad(
                    "give either a pixel `box`, or all of `ra`, `dec` and `size_arcsec`, not a mix",
                ))
            }
        };
        Ok(SectionRequest { ticket: self, region })
    }
}

impl SectionRequest {
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&Any {
            type_url: SECTION_TYPE_URL.to_string(),
            value: prost::Message::encode_to_vec(&self.ticket),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_command, Command};

    fn section(s: &str) -> Result<SectionRequest, TicketError> {
        decode_command(s.as_bytes()).map(|c| match c {
            Command::Section(s) => s,
            c => panic!("not a section: {c:?}"),
        })
    }

    #[test]
    fn boxes_and_sky_positions() {
        let s = section(r#"{"section": {"dataset": "img", "path": "a/b.fits", "hdu": 1, "box": [10, 20, 30, 40]}}"#)
            .unwrap();
        assert_eq!(s.region, Region::Box([10, 20, 30, 40]));
        assert_eq!(decode_command(&s.encode()).unwrap(), Command::Section(s));
        let s = section(r#"{"section": {"dataset": "img", "path": "a.fits", "ra": -10, "dec": 5, "size_arcsec": 3}}"#)
            .unwrap();
        assert_eq!(
            s.region,
            Region::Sky {
                ra: 350.0,
                dec: 5.0,
                size_arcsec: 3.0
            }
        );
    }

    #[test]
    fn bad_sections_say_why() {
        let e = |s: &str| section(s).unwrap_err().to_string();
        let p = r#""dataset": "i", "path": "a.fits""#;
        assert!(e(&format!(r#"{{"section": {{{p}, "box": [1, 2, 3]}}}}"#)).contains("[x0, y0, x1, y1]"));
        assert!(e(&format!(r#"{{"section": {{{p}, "box": [5, 2, 3, 4]}}}}"#)).contains("x0 < x1"));
        assert!(e(&format!(r#"{{"section": {{{p}}}}}"#)).contains("give a pixel `box`"));
        assert!(e(&format!(r#"{{"section": {{{p}, "ra": 1, "dec": 2}}}}"#)).contains("not a mix"));
        assert!(e(&format!(
            r#"{{"section": {{{p}, "ra": 1, "dec": 95, "size_arcsec": 1}}}}"#
        ))
        .contains("[-90, 90]"));
        assert!(e(r#"{"section": {"dataset": "i", "path": "../x.fits", "box": [0, 0, 1, 1]}}"#).contains("relative"));
        assert!(e(r#"{"section": {"path": "x.fits", "box": [0, 0, 1, 1]}}"#).contains("`dataset`"));
    }
}
