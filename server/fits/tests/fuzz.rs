//! Structure-aware fuzzing of FITS header parsing and image decoding (proptest): headers built
//! from real keywords with values of every form (and broken ones), blocks cut at any byte,
//! cards mutated; parsing returns a header, a request for more bytes, or an error naming what
//! is wrong, and never panics. `PROPTEST_CASES` raises the number of cases.

use astroflight_fits::header::{parse_hdu, scan_reader, Parsed};
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "SIMPLE",
    "XTENSION",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "NAXIS3",
    "EXTEND",
    "PCOUNT",
    "GCOUNT",
    "TFIELDS",
    "GROUPS",
    "BSCALE",
    "BZERO",
    "BLANK",
    "EXTNAME",
    "ZIMAGE",
    "ZBITPIX",
    "ZNAXIS",
    "ZNAXIS1",
    "CTYPE1",
    "CRPIX1",
    "CRVAL1",
    "CD1_1",
    "CDELT1",
    "CONTINUE",
    "COMMENT",
    "HISTORY",
    "HIERARCH ESO DET",
    "",
    "END",
    "TTYPE1",
    "TFORM1",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("T".to_string()),
        Just("F".to_string()),
        (-64i64..=64).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:E}")),
        Just("'IMAGE   '".to_string()),
        Just("'BINTABLE'".to_string()),
        Just("'it''s &'".to_string()),
        Just("'unterminated".to_string()),
        Just("(1.0, 2.0)".to_string()),
        "[ -~]{0,70}",
    ]
}

fn card() -> impl Strategy<Value = Vec<u8>> {
    (prop::sample::select(KEYS), value(), any::<bool>(), "[ -~]{0,20}").prop_map(|(key, value, eq, comment)| {
        let mut c = if key.len() <= 8 {
            format!("{key:<8}")
        } else {
            key.to_string()
        };
        if eq {
            c.push_str("= ");
        }
        c.push_str(&value);
        if !comment.is_empty() {
            c.push_str(" / ");
            c.push_str(&comment);
        }
        let mut b = c.into_bytes();
        b.resize(80, b' ');
        b
    })
}

/// A header: a plausible first card, random cards, END somewhere (or not), padding, data.
fn header() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(
            &[
                "SIMPLE  =                    T",
                "XTENSION= 'IMAGE   '",
                "XTENSION= 'BINTABLE'",
                "JUNK",
            ][..],
        ),
        prop::collection::vec(card(), 0..80),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..6000),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(first, cards, end, data, flips, cut)| {
            let mut b = format!("{first:<80}").into_bytes();
            for c in cards {
                b.extend(c);
            }
            if end {
                b.extend(format!("{:<80}", "END").into_bytes());
            }
            b.resize(b.len().div_ceil(2880) * 2880, b' ');
            b.extend(data);
            for (i, byte) in flips {
                let i = i.index(b.len());
                b[i] = byte;
            }
            b.truncate(cut.index(b.len() + 1).max(b.len() / 2));
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn headers_parse_or_say_why(bytes in header(), index in 0usize..3) {
        match parse_hdu(&bytes, index, 0) {
            Ok(Parsed::Hdu(h)) => prop_assert!(h.data_offset > h.header_offset),
            Ok(Parsed::NeedMore(n)) => prop_assert!(n > bytes.len()),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        let (_, err) = scan_reader(&bytes[..]);
        if let Some(e) = err {
            prop_assert!(!e.to_string().is_empty());
        }
        let _ = astroflight_fits::decode_image(&bytes);
        let _ = astroflight_fits::decode_image_hdu(&bytes, index);
    }

    #[test]
    fn raw_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..6000)) {
        let _ = parse_hdu(&bytes, 0, 0);
        let _ = scan_reader(&bytes[..]);
        let _ = astroflight_fits::decode_image(&bytes);
        let _ = astroflight_fits::maybe_gunzip(&bytes);
    }
}
