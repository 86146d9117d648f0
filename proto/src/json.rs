//! The JSON form of tickets: `{"cutout": {"dataset": ..., "objectId": ..., ...}}`.
//!
//! Field names are the public contract (see the README). Unknown fields are refused rather
//! than ignored, so that a typo (`"objectid"`) is an error and not a silently different query.
//! Ids may be JSON numbers or strings (JavaScript clients cannot hold 64-bit integers).

use serde::Deserialize;

use crate::{
    quoted, AlertsQuery, Command, Content, CutoutTicket, HeadersQuery, SectionTicket, StampFormat, StampKind,
    TicketError,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum JsonTicket {
    Cutout(JsonCutout),
    Alerts(JsonAlerts),
    Headers(JsonHeaders),
    Section(JsonSection),
}

/// `{"section": {...}}`: the names of the contract (`box`, `ra`, `dec`, `size_arcsec`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JsonSection {
    dataset: Option<String>,
    path: Option<String>,
    hdu: Option<u32>,
    #[serde(rename = "box")]
    box_: Option<Vec<i64>>,
    ra: Option<f64>,
    dec: Option<f64>,
    size_arcsec: Option<f64>,
}

/// `{"headers": {...}}`: a FITS dataset's header catalog (`prefix`, `keys`, `where`) or the
/// headers of alert stamps (the id fields of cutout tickets, repeated here rather than shared
/// through `#[serde(flatten)]`, which would turn `deny_unknown_fields` off).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JsonHeaders {
    dataset: Option<String>,
    prefix: Option<String>,
    keys: Option<Vec<String>>,
    #[serde(rename = "where")]
    where_: Option<String>,
    #[serde(rename = "objectId")]
    object_id: Option<String>,
    #[serde(rename = "objectIds")]
    object_ids: Option<Vec<String>>,
    candid: Option<Id>,
    candids: Option<Vec<Id>>,
    #[serde(rename = "diaSourceId")]
    dia_source_id: Option<Id>,
    #[serde(rename = "diaSourceIds")]
    dia_source_ids: Option<Vec<Id>>,
    all: Option<bool>,
}

impl JsonHeaders {
    fn into_query(self) -> Result<HeadersQuery, TicketError> {
        let as_headers = |e: TicketError| match e {
            TicketError::Cutout(m) => TicketError::Headers(m),
            e => e,
        };
        Ok(HeadersQuery {
            dataset: self.dataset.unwrap_or_default(),
            prefix: self.prefix.unwrap_or_default(),
            keys: self.keys.unwrap_or_default(),
            r#where: self.where_.unwrap_or_default(),
            object_ids: one_or_many(self.object_id, self.object_ids, "`objectId` or `objectIds`")
                .map_err(as_headers)?,
            candids: ids(self.candid, self.candids, "candid", "`candid` or `candids`").map_err(as_headers)?,
            dia_source_ids: ids(
                self.dia_source_id,
                self.dia_source_ids,
                "diaSourceId",
                "`diaSourceId` or `diaSourceIds`",
            )
            .map_err(as_headers)?,
            all: self.all.unwrap_or(false),
        })
    }
}

/// `{"alerts": {...}}`: the names of the issue's contract (`where`, `from`, `to` included).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JsonAlerts {
    dataset: Option<String>,
    nights: Option<Vec<String>>,
    from: Option<String>,
    to: Option<String>,
    classes: Option<Vec<String>>,
    #[serde(rename = "where")]
    where_: Option<String>,
    content: Option<String>,
    columns: Option<Vec<String>>,
    stamps: Option<String>,
    limit: Option<u64>,
    exact: Option<bool>,
    compression: Option<String>,
    annotate: Option<Vec<String>>,
}

impl JsonAlerts {
    fn into_query(self) -> Result<AlertsQuery, TicketError> {
        let alerts_err = |e: TicketError| match e {
            TicketError::Cutout(m) => TicketError::Alerts(m.replace("format", "stamps")),
            e => e,
        };
        Ok(AlertsQuery {
            dataset: self.dataset.unwrap_or_default(),
            nights: self.nights.unwrap_or_default(),
            from: self.from.unwrap_or_default(),
            to: self.to.unwrap_or_default(),
            classes: self.classes.unwrap_or_default(),
            r#where: self.where_.unwrap_or_default(),
            content: match self.content.as_deref() {
                None => Content::Lightcurve,
                Some(c) => crate::alerts::parse_content(c)?,
            } as i32,
            columns: self.columns.unwrap_or_default(),
            stamps: match self.stamps.as_deref() {
                None => StampFormat::Fits,
                Some(f) => parse_format(f).map_err(alerts_err)?,
            } as i32,
            limit: self.limit,
            exact: self.exact.unwrap_or(false),
            compression: crate::alerts::parse_compression(self.compression.as_deref().unwrap_or("none"))? as i32,
            annotate: self.annotate.unwrap_or_default(),
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JsonCutout {
    dataset: Option<String>,
    #[serde(rename = "objectId")]
    object_id: Option<String>,
    #[serde(rename = "objectIds")]
    object_ids: Option<Vec<String>>,
    candid: Option<Id>,
    candids: Option<Vec<Id>>,
    #[serde(rename = "diaSourceId")]
    dia_source_id: Option<Id>,
    #[serde(rename = "diaSourceIds")]
    dia_source_ids: Option<Vec<Id>>,
    kind: Option<String>,
    format: Option<String>,
    all: Option<bool>,
    hdu: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Int(i64),
    Str(String),
}

impl Id {
    fn get(self, field: &str) -> Result<i64, TicketError> {
        match self {
            Id::Int(v) => Ok(v),
            Id::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| TicketError::Cutout(format!("`{field}` value {} is not a 64-bit integer", quoted(&s)))),
        }
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Command, TicketError> {
    let t: JsonTicket = serde_json::from_slice(bytes).map_err(|e| {
        // serde's message quotes the offending key or value whole: cut it.
        let e = cut_message(&e.to_string());
        TicketError::Json(format!(
            "{e}; expected {{\"cutout\": {{\"dataset\", \"objectId\" | \"objectIds\" | \"candid\" | \"candids\" | \"diaSourceId\" | \"diaSourceIds\", \"kind\", \"format\", \"all\", \"hdu\"}}}} or {{\"alerts\": {{\"dataset\", \"nights\" | \"from\"/\"to\", \"classes\", \"where\", \"content\", \"columns\", \"stamps\", \"limit\", \"exact\", \"compression\", \"annotate\"}}}} or {{\"headers\": {{\"dataset\", \"prefix\", \"keys\", \"where\" | alert ids}}}} or {{\"section\": {{\"dataset\", \"path\", \"hdu\", \"box\" | \"ra\"/\"dec\"/\"size_arcsec\"}}}}"
        ))
    })?;
    match t {
        JsonTicket::Cutout(c) => c.into_ticket()?.validate().map(Command::Cutout),
        JsonTicket::Alerts(a) => a.into_query()?.validate().map(Command::Alerts),
        JsonTicket::Headers(h) => h.into_query()?.validate().map(Command::Headers),
        JsonTicket::Section(s) => SectionTicket {
            dataset: s.dataset.unwrap_or_default(),
            path: s.path.unwrap_or_default(),
            hdu: s.hdu.unwrap_or(0),
            r#box: s.box_.unwrap_or_default(),
            ra: s.ra,
            dec: s.dec,
            size_arcsec: s.size_arcsec,
        }
        .validate()
        .map(Command::Section),
    }
}

fn cut_message(m: &str) -> String {
    const MAX: usize = 300;
    match m.char_indices().nth(MAX) {
        None => m.to_string(),
        Some((at, _)) => format!("{}… ({} more bytes)", &m[..at], m.len() - at),
    }
}

fn one_or_many<T>(one: Option<T>, many: Option<Vec<T>>, names: &str) -> Result<Vec<T>, TicketError> {
    match (one, many) {
        (Some(_), Some(_)) => Err(TicketError::Cutout(format!("give either {names}, not both"))),
        (Some(v), None) => Ok(vec![v]),
        (None, Some(v)) => Ok(v),
        (None, None) => Ok(Vec::new()),
    }
}

fn ids(one: Option<Id>, many: Option<Vec<Id>>, field: &str, names: &str) -> Result<Vec<i64>, TicketError> {
    one_or_many(one, many, names)?
        .into_iter()
        .map(|i| i.get(field))
        .collect()
}

impl JsonCutout {
    fn into_ticket(self) -> Result<CutoutTicket, TicketError> {
        let kind = match self.kind.as_deref() {
            None => StampKind::All,
            Some(k) => parse_kind(k)?,
        };
        let format = match self.format.as_deref() {
            None => StampFormat::Fits,
            Some(f) => parse_format(f)?,
        };
        Ok(CutoutTicket {
            dataset: self.dataset.unwrap_or_default(),
            object_ids: one_or_many(self.object_id, self.object_ids, "`objectId` or `objectIds`")?,
            candids: ids(self.candid, self.candids, "candid", "`candid` or `candids`")?,
            dia_source_ids: ids(
                self.dia_source_id,
                self.dia_source_ids,
                "diaSourceId",
                "`diaSourceId` or `diaSourceIds`",
            )?,
            kind: kind as i32,
            format: format as i32,
            all: self.all.unwrap_or(false),
            hdu: self.hdu.unwrap_or(0),
        })
    }
}

/// `Science`, `Template`, `Difference` or `All` (case-insensitive).
pub fn parse_kind(k: &str) -> Result<StampKind, TicketError> {
    match k.to_ascii_lowercase().as_str() {
        "all" => Ok(StampKind::All),
        "science" => Ok(StampKind::Science),
        "template" => Ok(StampKind::Template),
        "difference" => Ok(StampKind::Difference),
        _ => Err(TicketError::Cutout(format!(
            "unknown kind {}; expected one of Science, Template, Difference, All",
            quoted(k)
        ))),
    }
}

/// `fits`, `gzip` or `array` (case-insensitive).
pub fn parse_format(f: &str) -> Result<StampFormat, TicketError> {
    match f.to_ascii_lowercase().as_str() {
        "fits" => Ok(StampFormat::Fits),
        "gzip" => Ok(StampFormat::Gzip),
        "array" => Ok(StampFormat::Array),
        _ => Err(TicketError::Cutout(format!(
            "unknown format {}; expected one of fits, gzip, array",
            quoted(f)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use crate::{decode_command, Command, Selector, StampFormat, StampKind, TicketError};

    fn cut(s: &str) -> Result<crate::CutoutRequest, TicketError> {
        decode_command(s.as_bytes()).map(|c| match c {
            Command::Cutout(c) => c,
            c => panic!("not a cutout: {c:?}"),
        })
    }

    #[test]
    fn the_readme_examples_decode() {
        let c =
            cut(r#"{"cutout": {"dataset": "ztf", "objectId": "ZTF20aabaesm", "kind": "Science", "format": "array"}}"#)
                .unwrap();
        assert_eq!(c.kind, StampKind::Science);
        assert_eq!(c.format, StampFormat::Array);
        assert_eq!(
            c.selector,
            Selector::Objects {
                object_ids: vec!["ZTF20aabaesm".into()],
                all: false
            }
        );
        let c =
            cut(r#" {"cutout": {"dataset": "ztf", "candids": [1095578115815010001, "1095578115915010048"]}}"#).unwrap();
        assert_eq!(c.kind, StampKind::All);
        assert_eq!(c.format, StampFormat::Fits);
        assert_eq!(
            c.selector,
            Selector::Candids {
                candids: vec![1095578115815010001, 1095578115915010048],
                object_id: None
            }
        );
        let c = cut(r#"{"cutout": {"dataset": "lsst", "diaSourceId": 42, "format": "gzip", "kind": "difference"}}"#)
            .unwrap();
        assert_eq!(c.selector, Selector::DiaSources { ids: vec![42] });
    }

    #[test]
    fn bad_json_says_what_is_wrong() {
        let e = |s: &str| cut(s).unwrap_err().to_string();
        assert!(e("{not json").contains("not valid JSON"));
        assert!(e(r#"{"cutouts": {}}"#).contains("unknown variant"));
        assert!(e(r#"{"cutout": {"dataset": "ztf", "objectid": "x"}}"#).contains("unknown field `objectid`"));
        assert!(e(r#"{"cutout": {"dataset": "ztf", "objectId": "x", "kind": "Sci"}}"#)
            .contains("Science, Template, Difference, All"));
        assert!(e(r#"{"cutout": {"dataset": "ztf", "objectId": "x", "format": "png"}}"#).contains("fits, gzip, array"));
        assert!(e(r#"{"cutout": {"dataset": "ztf", "objectId": "x", "objectIds": ["y"]}}"#).contains("not both"));
        assert!(e(r#"{"cutout": {"dataset": "ztf", "candid": "12ab"}}"#).contains("not a 64-bit integer"));
        assert!(e(r#"{"cutout": {"objectId": "x"}}"#).contains("`dataset` is required"));
        assert!(e(r#"{"cutout": {"dataset": "ztf", "candid": 1.5}}"#).contains("not valid JSON"));
    }
}
