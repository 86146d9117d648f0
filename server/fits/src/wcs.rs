//! Just enough WCS for image sections by sky position: the gnomonic (TAN) projection of
//! celestial images (`RA---TAN` / `DEC--TAN`), with the linear part from a CD matrix, PC and
//! CDELT, or CDELT and CROTA2 (FITS WCS papers I and II, as wcslib reads them). Distortions
//! (SIP, TPV) and other projections are refused with a clear error rather than approximated.
//!
//! Pixel coordinates here are 0-based (astropy's `world_to_pixel`); FITS's CRPIX is 1-based.

use crate::FitsError;

/// A celestial TAN WCS.
#[derive(Debug, Clone, PartialEq)]
pub struct TanWcs {
    /// CRPIX1, CRPIX2 (1-based, as in the header).
    pub crpix: [f64; 2],
    /// CRVAL1, CRVAL2 in degrees (right ascension, declination of the reference point).
    pub crval: [f64; 2],
    /// The linear transformation, pixel offsets to intermediate world coordinates in degrees:
    /// `cd[i][j]` is CDi_j (i: world axis, j: pixel axis), 0-based here.
    pub cd: [[f64; 2]; 2],
    /// LONPOLE in degrees (180 for zenithal projections unless the header says otherwise).
    pub lonpole: f64,
}

impl TanWcs {
    /// Read the WCS of a header. `value(key)` gives a card's value as written (strings
    /// unquoted).
    pub fn from_header<'a>(value: impl Fn(&str) -> Option<&'a str>) -> Result<TanWcs, FitsError> {
        let unsupported = |m: String| FitsError::Unsupported(m);
        let num = |key: &str| -> Result<Option<f64>, FitsError> {
            match value(key) {
                None => Ok(None),
                Some(v) => crate::header::parse_float(v.trim())
                    .map(Some)
                    .ok_or_else(|| FitsError::Format(format!("{key} = {v:?} is not a number"))),
            }
        };
        let ctype = |k: &str| value(k).map(|v| v.trim().to_ascii_uppercase()).unwrap_or_default();
        let (c1, c2) = (ctype("CTYPE1"), ctype("CTYPE2"));
        if c1.is_empty() && c2.is_empty() {
            return Err(unsupported("the HDU has no WCS (no CTYPE1/CTYPE2)".into()));
        }
        if c1 != "RA---TAN" || c2 != "DEC--TAN" {
            return Err(unsupported(format!(
                "sections by sky position need a celestial TAN WCS without distortions (CTYPE1 = 'RA---TAN', CTYPE2 = 'DEC--TAN'); this HDU has CTYPE1 = {c1:?}, CTYPE2 = {c2:?}: give a pixel box instead"
            )));
        }
        for k in ["A_ORDER", "B_ORDER", "PV1_1", "PV2_1"] {
            if value(k).is_some() {
                return Err(unsupported(format!(
                    "the WCS has distortion terms ({k}), which sections by sky position do not apply: give a pixel box instead"
                )));
            }
        }
        for k in ["CUNIT1", "CUNIT2"] {
            if let Some(u) = value(k) {
                if !u.trim().eq_ignore_ascii_case("deg") && !u.trim().is_empty() {
                    return Err(unsupported(format!("{k} = {u:?}: only degrees are supported")));
                }
            }
        }
        let required = |k: &str| num(k)?.ok_or_else(|| FitsError::Format(format!("the WCS has no {k}")));
        let crpix = [required("CRPIX1")?, required("CRPIX2")?];
        let crval = [required("CRVAL1")?, required("CRVAL2")?];
        let cd_keys = [["CD1_1", "CD1_2"], ["CD2_1", "CD2_2"]];
        let has_cd = cd_keys.iter().flatten().any(|k| value(k).is_some());
        let has_pc = ["PC1_1", "PC1_2", "PC2_1", "PC2_2"].iter().any(|k| value(k).is_some());
        let mut cd = [[0.0; 2]; 2];
        if has_cd && !has_pc {
            for i in 0..2 {
                for j in 0..2 {
                    cd[i][j] = num(cd_keys[i][j])?.unwrap_or(0.0);
                }
            }
        } else {
            let cdelt = [num("CDELT1")?.unwrap_or(1.0), num("CDELT2")?.unwrap_or(1.0)];
            let pc = if has_pc {
                let pc = |i: usize, j: usize| -> Result<f64, FitsError> {
                    Ok(num(&format!("PC{}_{}", i + 1, j + 1))?.unwrap_or(if i == j { 1.0 } else { 0.0 }))
                };
                [[pc(0, 0)?, pc(0, 1)?], [pc(1, 0)?, pc(1, 1)?]]
            } else if let Some(rot) = num("CROTA2")? {
                // wcslib's reading of CROTA2 (paper II, eq. 189).
                let (s, c) = rot.to_radians().sin_cos();
                let rho = cdelt[1] / cdelt[0];
                [[c, -s * rho], [s / rho, c]]
            } else {
                [[1.0, 0.0], [0.0, 1.0]]
            };
            for i in 0..2 {
                for j in 0..2 {
                    cd[i][j] = cdelt[i] * pc[i][j];
                }
            }
        }
        let det = cd[0][0] * cd[1][1] - cd[0][1] * cd[1][0];
        if det == 0.0 || !det.is_finite() {
            return Err(FitsError::Format("the WCS matrix is singular".into()));
        }
        let lonpole = num("LONPOLE")?.unwrap_or(180.0);
        Ok(TanWcs {
            crpix,
            crval,
            cd,
            lonpole,
        })
    }

    /// The 0-based pixel (x, y) of a sky position (degrees); None for a position on the far
    /// side of the projection (90 degrees or more from the reference point).
    pub fn world_to_pixel(&self, ra: f64, dec: f64) -> Option<(f64, f64)> {
        let (a, d) = (ra.to_radians(), dec.to_radians());
        let (ap, dp) = (self.crval[0].to_radians(), self.crval[1].to_radians());
        let da = a - ap;
        // Native spherical coordinates (paper II, eq. 5), the native pole at (ap, dp), kept as
        // the components of the unit vector: sin(theta) = z, cos(theta) = |(ex, ny)|. (An asin
        // of z would lose half the digits next to the reference point, where z is near 1.)
        let ex = -d.cos() * da.sin();
        let ny = d.sin() * dp.cos() - d.cos() * dp.sin() * da.cos();
        let z = d.sin() * dp.sin() + d.cos() * dp.cos() * da.cos();
        if z <= 0.0 {
            return None;
        }
        let phi = self.lonpole.to_radians() + f64::atan2(ex, ny);
        // TAN (paper II, eq. 54-55): R = 180/pi cot(theta); x = R sin(phi), y = -R cos(phi).
        let r = ex.hypot(ny) / z * (180.0 / std::f64::consts::PI);
        let (x, y) = (r * phi.sin(), -r * phi.cos());
        let cd = &self.cd;
        let det = cd[0][0] * cd[1][1] - cd[0][1] * cd[1][0];
        let px = (cd[1][1] * x - cd[0][1] * y) / det;
        let py = (-cd[1][0] * x + cd[0][0] * y) / det;
        Some((px + self.crpix[0] - 1.0, py + self.crpix[1] - 1.0))
    }

    /// Degrees per pixel along each pixel axis (astropy's `proj_plane_pixel_scales`).
    pub fn pixel_scales(&self) -> [f64; 2] {
        let cd = &self.cd;
        [
            (cd[0][0] * cd[0][0] + cd[1][0] * cd[1][0]).sqrt(),
            (cd[0][1] * cd[0][1] + cd[1][1] * cd[1][1]).sqrt(),
        ]
    }
}

/// The pixel box `[x0, y0, x1, y1)` (0-based, end exclusive) that astropy's
/// `Cutout2D(data, position, size, mode="trim")` cuts for a sky position and an angular size,
/// in an image of `width` x `height` pixels; None when it does not overlap the image.
pub fn cutout_box(wcs: &TanWcs, ra: f64, dec: f64, size_arcsec: f64, width: u64, height: u64) -> Option<[u64; 4]> {
    let (x, y) = wcs.world_to_pixel(ra, dec)?;
    let scales = wcs.pixel_scales();
    let size_deg = size_arcsec / 3600.0;
    // Cutout2D's shape is (ny, nx), and it divides axis k of `size` by pixel scale k: ny by the
    // scale of pixel axis 1 (x), nx by that of axis 2 (y). Rounding is numpy's (half to even).
    let ny = (size_deg / scales[0]).round_ties_even();
    let nx = (size_deg / scales[1]).round_ties_even();
    let edges = |pos: f64, n: f64, large: u64| -> Option<(u64, u64)> {
        let min = (pos - n / 2.0).ceil();
        let max = min + n;
        if !min.is_finite() || !max.is_finite() || max <= 0.0 || min >= large as f64 {
            return None;
        }
        let (lo, hi) = (min.max(0.0) as u64, (max.min(large as f64)) as u64);
        (hi > lo).then_some((lo, hi))
    };
    let (x0, x1) = edges(x, nx, width)?;
    let (y0, y1) = edges(y, ny, height)?;
    Some([x0, y0, x1, y1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wcs(cards: &[(&str, &'static str)]) -> Result<TanWcs, FitsError> {
        let cards: Vec<(&str, &'static str)> = cards.to_vec();
        TanWcs::from_header(move |k| cards.iter().find(|(key, _)| *key == k).map(|(_, v)| *v))
    }

    const BASE: [(&str, &str); 6] = [
        ("CTYPE1", "RA---TAN"),
        ("CTYPE2", "DEC--TAN"),
        ("CRPIX1", "50.5"),
        ("CRPIX2", "40.5"),
        ("CRVAL1", "150.0"),
        ("CRVAL2", "2.0"),
    ];

    #[test]
    fn the_reference_point_is_crpix() {
        let mut c = BASE.to_vec();
        c.extend([("CD1_1", "-2.7777778E-5"), ("CD2_2", "2.7777778E-5")]);
        let w = wcs(&c).unwrap();
        let (x, y) = w.world_to_pixel(150.0, 2.0).unwrap();
        assert!((x - 49.5).abs() < 1e-9 && (y - 39.5).abs() < 1e-9, "{x} {y}");
        // 10" north is 100 pixels up (0.1"/pixel); east is to the left (CD1_1 < 0).
        let (x, y) = w.world_to_pixel(150.0, 2.0 + 10.0 / 3600.0).unwrap();
        assert!((x - 49.5).abs() < 1e-6 && (y - 139.5).abs() < 1e-3, "{x} {y}");
        let (x, _) = w.world_to_pixel(150.0 + 1.0 / 3600.0, 2.0).unwrap();
        assert!(x < 49.5);
        assert!(w.world_to_pixel(330.0, -2.0).is_none(), "the far side");
        let s = w.pixel_scales();
        assert!((s[0] * 3600.0 - 0.1).abs() < 1e-6);
        assert_eq!(cutout_box(&w, 150.0, 2.0, 2.0, 100, 80), Some([40, 30, 60, 50]));
        // Trimmed at the image's edge; outside it, nothing.
        assert_eq!(cutout_box(&w, 150.0, 2.0, 100.0, 100, 80), Some([0, 0, 100, 80]));
        assert_eq!(cutout_box(&w, 150.0, 2.1, 2.0, 100, 80), None);
    }

    #[test]
    fn pc_cdelt_and_crota_agree_with_cd() {
        let mut cd = BASE.to_vec();
        cd.extend([("CD1_1", "-1.0E-4"), ("CD2_2", "1.0E-4")]);
        let mut pc = BASE.to_vec();
        pc.extend([("CDELT1", "-1.0E-4"), ("CDELT2", "1.0E-4"), ("PC1_1", "1.0")]);
        let mut rot = BASE.to_vec();
        rot.extend([("CDELT1", "-1.0E-4"), ("CDELT2", "1.0E-4"), ("CROTA2", "0.0")]);
        let (a, b, c) = (wcs(&cd).unwrap(), wcs(&pc).unwrap(), wcs(&rot).unwrap());
        assert_eq!(a.cd, b.cd);
        assert_eq!(a.cd, c.cd);
    }

    #[test]
    fn unsupported_wcs_is_refused_clearly() {
        let e = wcs(&[("CTYPE1", "GLON-CAR"), ("CTYPE2", "GLAT-CAR")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("TAN") && e.contains("pixel box"), "{e}");
        let mut sip = BASE.to_vec();
        sip.extend([("CD1_1", "1.0"), ("CD2_2", "1.0"), ("A_ORDER", "2")]);
        assert!(wcs(&sip).unwrap_err().to_string().contains("distortion"));
        assert!(wcs(&[]).unwrap_err().to_string().contains("no WCS"));
        let mut singular = BASE.to_vec();
        singular.extend([("CD1_1", "0.0"), ("CD2_2", "0.0")]);
        assert!(wcs(&singular).unwrap_err().to_string().contains("singular"));
    }
}
