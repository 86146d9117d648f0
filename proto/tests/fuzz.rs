//! Structure-aware fuzzing of ticket and command decoding (proptest): whatever bytes a client
//! sends as a ticket or a command, decoding returns a command or an error that says what is
//! wrong; it never panics. Inputs: raw bytes; JSON objects built from the tickets' own field
//! names with values of every JSON type; valid tickets with bytes flipped, cut or spliced;
//! protobuf-shaped bytes; Flight SQL handles. `PROPTEST_CASES` raises the number of cases (the
//! long variant: `PROPTEST_CASES=100000 cargo test -p astroflight-proto --test fuzz`).

use astroflight_proto::decode_command;
use astroflight_proto::sql::SqlHandle;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Field names of every ticket kind (and some that no kind has).
const FIELDS: &[&str] = &[
    "dataset",
    "objectId",
    "objectIds",
    "candid",
    "candids",
    "diaSourceId",
    "diaSourceIds",
    "kind",
    "format",
    "all",
    "hdu",
    "nights",
    "from",
    "to",
    "classes",
    "where",
    "content",
    "columns",
    "stamps",
    "limit",
    "exact",
    "compression",
    "annotate",
    "prefix",
    "keys",
    "path",
    "box",
    "ra",
    "dec",
    "size_arcsec",
    "part",
    "files",
    "schema",
    "rows",
    "index",
    "count",
    "start",
    "end",
    "",
    "\u{0}",
    "x",
];
const KINDS: &[&str] = &[
    "cutout",
    "alerts",
    "headers",
    "section",
    "alerts_part",
    "headers_part",
    "sql",
    "other",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![
            Just("ztf".to_string()),
            Just("ZTF21aaaaaaa".to_string()),
            Just("2019-09-03".to_string()),
            Just("2019-09-03..2019-09-05".to_string()),
            Just("All".to_string()),
            Just("candidate.magpsf < 18".to_string()),
            Just("'; DROP TABLE x; --".to_string()),
            ".{0,40}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// A ticket-shaped JSON object: one kind, fields from the tickets' names.
fn ticket_json() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(KINDS),
        prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..8),
    )
        .prop_map(|(kind, fields)| {
            let body: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            serde_json::to_vec(&json!({ kind: body })).unwrap()
        })
}

const VALID: &[&str] = &[
    r#"{"cutout": {"dataset": "ztf", "objectId": "ZTF21aaaaaaa"}}"#,
    r#"{"cutout": {"dataset": "lsst", "diaSourceIds": [1, 2, 3], "kind": "All", "format": "array", "hdu": 2}}"#,
    r#"{"alerts": {"dataset": "ztf", "nights": ["2019-09-03", "2019-09-04"], "classes": ["SN"], "where": "candidate.magpsf < 18", "content": "columns", "columns": ["objectId"], "limit": 10}}"#,
    r#"{"headers": {"dataset": "images", "prefix": "a/", "keys": ["EXPTIME"], "where": "EXPTIME > 1"}}"#,
    r#"{"section": {"dataset": "images", "path": "a.fits", "hdu": 1, "box": [0, 0, 10, 10]}}"#,
    r#"{"section": {"dataset": "images", "path": "a.fits", "ra": 10.5, "dec": -3.0, "size_arcsec": 30}}"#,
];

/// A valid ticket, then flipped bytes, a cut, or a splice of another valid ticket.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(VALID),
        prop::sample::select(VALID),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<prop::sample::Index>(),
        0u8..3,
    )
        .prop_map(|(a, b, flips, at, how)| {
            let mut v = a.as_bytes().to_vec();
            for (i, byte) in flips {
                let i = i.index(v.len());
                v[i] = byte;
            }
            match how {
                0 => v.truncate(at.index(v.len() + 1)),
                1 => {
                    let i = at.index(v.len() + 1);
                    v.splice(i..i, b.bytes());
                }
                _ => {}
            }
            v
        })
}

/// Bytes shaped like protobuf: tags and lengths that may lie.
fn protobuf_like() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((1u8..20, 0u8..6, prop::collection::vec(any::<u8>(), 0..24)), 0..8).prop_map(|fields| {
        let mut out = Vec::new();
        for (field, wire, payload) in fields {
            out.push((field << 3) | (wire & 7));
            if wire == 2 {
                out.push(payload.len() as u8);
            }
            out.extend(payload);
        }
        out
    })
}

fn check(bytes: &[u8]) {
    match decode_command(bytes) {
        Ok(cmd) => {
            // A command that decodes names a dataset (what authorization checks).
            let _ = (cmd.dataset(), cmd.ids());
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.trim().is_empty(), "an empty error for {bytes:?}");
            assert!(msg.len() < 8192, "an error message of {} bytes", msg.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn raw_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn ticket_shaped_json_never_panics(bytes in ticket_json()) {
        check(&bytes);
    }

    #[test]
    fn mutated_valid_tickets_never_panic(bytes in mutated()) {
        check(&bytes);
    }

    #[test]
    fn protobuf_shaped_bytes_never_panic(bytes in protobuf_like()) {
        check(&bytes);
        let _ = SqlHandle::decode_checked(&bytes, "the statement ticket").map_err(|e| assert!(!e.is_empty()));
    }
}

#[test]
fn the_valid_tickets_decode() {
    for t in VALID {
        decode_command(t.as_bytes()).unwrap_or_else(|e| panic!("{t}: {e}"));
    }
}
