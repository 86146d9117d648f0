//! Ticket and command types of astroflight.
//!
//! Everything a client can put in a Flight `Ticket` or `FlightDescriptor.cmd` is defined here,
//! once, in two encodings: protobuf (`astroflight.proto`, prost types in [`ticket`]), always
//! packed in a `google.protobuf.Any` whose type URL names the command (as Flight SQL's commands
//! are), and JSON (`{"cutout": {...}}`), whose one top-level key names it. A JSON command starts
//! with `{`; an `Any` starts with its type URL (field 1, byte 0x0A), so the two never mix, and
//! Flight SQL's `Any` commands are told from ours by their type URL.
//! [`decode_command`] is the single entry point the server uses: it turns raw bytes into a
//! validated [`Command`], or a [`TicketError`] whose message says what was wrong and what is
//! accepted.

pub mod alerts;
/// The prost types generated from `astroflight.proto` by `build.rs` (re-exported by [`ticket`]).
mod generated {
    include!(concat!(env!("OUT_DIR"), "/astroflight.v1.rs"));
}
pub mod headers;
pub mod json;
pub mod section;
pub mod sql;
pub mod ticket;

pub use alerts::{AlertsPartRequest, AlertsRequest, Annotation, TimeRange};
pub use headers::{
    HeadersPart, HeadersPartRequest, HeadersQuery, HeadersRequest, HEADERS_PART_TYPE_URL, HEADERS_TYPE_URL,
};
pub use section::{Region, SectionRequest, SectionTicket, SECTION_TYPE_URL};
pub use ticket::{
    AlertsPart, AlertsQuery, Any, Compression, Content, CutoutTicket, PartFile, StampFormat, StampKind, Ticket,
    ALERTS_PART_TYPE_URL, ALERTS_TYPE_URL, CUTOUT_TYPE_URL, FLIGHT_SQL_TYPE_PREFIX,
};

/// Most ids one cutout ticket may name; larger pulls belong to alert queries.
pub const MAX_IDS_PER_TICKET: usize = 100_000;

/// A request decoded from a ticket, validated and ready to plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Cutout(CutoutRequest),
    /// An alert batch query (planned into endpoints by GetFlightInfo, or streamed whole by DoGet).
    Alerts(AlertsRequest),
    /// One endpoint of a planned alert batch query.
    AlertsPart(AlertsPartRequest),
    /// A header table: HDUs of a FITS dataset, or the headers of alert stamps.
    Headers(HeadersRequest),
    /// One endpoint of a planned header table.
    HeadersPart(HeadersPartRequest),
    /// A sub-image of one image HDU.
    Section(SectionRequest),
}

impl Command {
    /// The dataset the command reads (what authorization checks).
    pub fn dataset(&self) -> &str {
        match self {
            Command::Cutout(r) => &r.dataset,
            Command::Alerts(r) => &r.dataset,
            Command::AlertsPart(p) => &p.request.dataset,
            Command::Headers(r) => &r.query.dataset,
            Command::HeadersPart(p) => &p.request.query.dataset,
            Command::Section(r) => &r.ticket.dataset,
        }
    }

    /// How many ids (objectIds, candids, diaSourceIds) the command names.
    pub fn ids(&self) -> usize {
        match self {
            Command::Cutout(r) => r.selector.len(),
            Command::Headers(r) => r.selector.as_ref().map_or(0, Selector::len),
            Command::HeadersPart(p) => p.request.selector.as_ref().map_or(0, Selector::len),
            Command::Alerts(_) | Command::AlertsPart(_) | Command::Section(_) => 0,
        }
    }
}

/// Which alerts a cutout request names.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// ZTF objects: the latest alert of each, or all of them.
    Objects { object_ids: Vec<String>, all: bool },
    /// ZTF alerts by candid; `object_id` (only with a single candid) must own the alert.
    Candids {
        candids: Vec<i64>,
        object_id: Option<String>,
    },
    /// Rubin alerts by diaSourceId.
    DiaSources { ids: Vec<i64> },
}

impl Selector {
    /// How many ids the selector names.
    pub fn len(&self) -> usize {
        match self {
            Selector::Objects { object_ids, .. } => object_ids.len(),
            Selector::Candids { candids, .. } => candids.len(),
            Selector::DiaSources { ids } => ids.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CutoutRequest {
    pub dataset: String,
    pub selector: Selector,
    pub kind: StampKind,
    pub format: StampFormat,
    /// With format `array`: which HDU of each stamp is decoded (0: the primary; Rubin stamps
    /// hold the image, its uncertainty and the PSF).
    pub hdu: u32,
}

impl StampKind {
    /// The stamp kinds this request asks for, in output order.
    pub fn expand(self) -> &'static [StampKind] {
        match self {
            StampKind::All => &[StampKind::Science, StampKind::Template, StampKind::Difference],
            StampKind::Science => &[StampKind::Science],
            StampKind::Template => &[StampKind::Template],
            StampKind::Difference => &[StampKind::Difference],
        }
    }

    /// The name used in JSON tickets, in the `kind` result column and in lake column names
    /// (`cutout{Name}`).
    pub fn name(self) -> &'static str {
        match self {
            StampKind::All => "All",
            StampKind::Science => "Science",
            StampKind::Template => "Template",
            StampKind::Difference => "Difference",
        }
    }
}

impl StampFormat {
    pub fn name(self) -> &'static str {
        match self {
            StampFormat::Fits => "fits",
            StampFormat::Gzip => "gzip",
            StampFormat::Array => "array",
        }
    }
}

/// Why a ticket was refused. Every variant is the client's fault (INVALID_ARGUMENT).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TicketError {
    #[error("ticket is empty; expected JSON such as {{\"cutout\": {{\"dataset\": \"ztf\", \"objectId\": \"ZTF20aabaesm\"}}}} or a protobuf command packed in a google.protobuf.Any")]
    Empty,
    #[error("ticket is not valid JSON: {0}")]
    Json(String),
    #[error("ticket is neither JSON (must start with '{{') nor a protobuf command packed in a google.protobuf.Any ({CUTOUT_TYPE_URL}): {0}")]
    Protobuf(String),
    /// A Flight SQL command (an `Any` of `arrow.flight.protocol.sql`) where an astroflight
    /// command was expected (the server's Flight SQL service takes them before decoding).
    #[error("{0} is a Flight SQL command, not an astroflight ticket; send it to the Flight SQL service as a command of its own")]
    FlightSql(String),
    #[error("invalid cutout ticket: {0}")]
    Cutout(String),
    #[error("invalid alerts query: {0}")]
    Alerts(String),
    #[error("invalid headers query: {0}")]
    Headers(String),
    #[error("invalid section ticket: {0}")]
    Section(String),
}

/// Decode a ticket or command: JSON when the first non-blank byte is `{`, else a protobuf
/// command packed in a `google.protobuf.Any`, dispatched on its type URL.
pub fn decode_command(bytes: &[u8]) -> Result<Command, TicketError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(TicketError::Empty),
        Some(b'{') => json::decode(bytes),
        Some(_) => {
            let any = <Any as prost::Message>::decode(bytes).map_err(|e| TicketError::Protobuf(e.to_string()))?;
            match any.type_url.as_str() {
                CUTOUT_TYPE_URL => {
                    let c = <CutoutTicket as prost::Message>::decode(any.value.as_slice())
                        .map_err(|e| TicketError::Protobuf(format!("{CUTOUT_TYPE_URL}: {e}")))?;
                    c.validate().map(Command::Cutout)
                }
                ALERTS_TYPE_URL => <AlertsQuery as prost::Message>::decode(any.value.as_slice())
                    .map_err(|e| TicketError::Protobuf(format!("{ALERTS_TYPE_URL}: {e}")))?
                    .validate()
                    .map(Command::Alerts),
                ALERTS_PART_TYPE_URL => <AlertsPart as prost::Message>::decode(any.value.as_slice())
                    .map_err(|e| TicketError::Protobuf(format!("{ALERTS_PART_TYPE_URL}: {e}")))?
                    .validate()
                    .map(Command::AlertsPart),
                HEADERS_TYPE_URL => <HeadersQuery as prost::Message>::decode(any.value.as_slice())
                    .map_err(|e| TicketError::Protobuf(format!("{HEADERS_TYPE_URL}: {e}")))?
                    .validate()
                    .map(Command::Headers),
                HEADERS_PART_TYPE_URL => <HeadersPart as prost::Message>::decode(any.value.as_slice())
                    .map_err(|e| TicketError::Protobuf(format!("{HEADERS_PART_TYPE_URL}: {e}")))?
                    .validate()
                    .map(Command::HeadersPart),
                SECTION_TYPE_URL => <SectionTicket as prost::Message>::decode(any.value.as_slice())
                    .map_err(|e| TicketError::Protobuf(format!("{SECTION_TYPE_URL}: {e}")))?
                    .validate()
                    .map(Command::Section),
                t if t.starts_with(FLIGHT_SQL_TYPE_PREFIX) => Err(TicketError::FlightSql(t.to_string())),
                t => Err(TicketError::Protobuf(format!("unknown command type {}", quoted(t)))),
            }
        }
    }
}

/// Client input as quoted in a message: Debug-quoted and cut to 64 characters, so that a huge
/// or hostile value never makes a huge error.
pub fn quoted(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => format!("{s:?}"),
        Some((at, _)) => format!("{:?}… ({} more bytes)", &s[..at], s.len() - at),
    }
}

/// Keep the first of each repeated value, in order: a ticket naming an id twice costs once.
pub(crate) fn dedup<T: Eq + std::hash::Hash + Clone>(v: Vec<T>) -> Vec<T> {
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    v.into_iter().filter(|x| seen.insert(x.clone())).collect()
}

impl CutoutTicket {
    /// Check the selector rules and build the typed request.
    pub fn validate(mut self) -> Result<CutoutRequest, TicketError> {
        let bad = |m: &str| Err(TicketError::Cutout(m.to_string()));
        let n = self
            .object_ids
            .len()
            .max(self.candids.len())
            .max(self.dia_source_ids.len());
        if n > MAX_IDS_PER_TICKET {
            return Err(TicketError::Cutout(format!(
                "{n} ids in one ticket; at most {MAX_IDS_PER_TICKET} are accepted"
            )));
        }
        self.object_ids = dedup(self.object_ids);
        self.candids = dedup(self.candids);
        self.dia_source_ids = dedup(self.dia_source_ids);
        if self.dataset.is_empty() {
            return bad("`dataset` is required");
        }
        let kind =
            StampKind::try_from(self.kind).map_err(|_| TicketError::Cutout(format!("unknown kind {}", self.kind)))?;
        let format = StampFormat::try_from(self.format)
            .map_err(|_| TicketError::Cutout(format!("unknown format {}", self.format)))?;
        let n_obj = self.object_ids.len();
        let n_cand = self.candids.len();
        let n_dia = self.dia_source_ids.len();
        let selector = match (n_obj > 0, n_cand > 0, n_dia > 0) {
            (true, false, false) => {
                if self.object_ids.iter().any(|o| o.is_empty()) {
                    return bad("an objectId is empty");
                }
                Selector::Objects {
                    object_ids: self.object_ids,
                    all: self.all,
                }
            }
            (false, true, false) => Selector::Candids {
                candids: self.candids,
                object_id: None,
            },
            (true, true, false) => {
                if n_obj != 1 || n_cand != 1 {
                    return bad("objectId and candid may be combined only as one objectId with one candid (that alert of that object)");
                }
                let object_id = self.object_ids.into_iter().next();
                Selector::Candids {
                    candids: self.candids,
                    object_id,
                }
            }
            (false, false, true) => Selector::DiaSources {
                ids: self.dia_source_ids,
            },
            (false, false, false) => {
                return bad(
                    "name the alerts with one of objectId, objectIds, candid, candids, diaSourceId, diaSourceIds",
                )
            }
            _ => return bad("ZTF ids (objectId/candid) and Rubin ids (diaSourceId) cannot be mixed in one ticket"),
        };
        if self.all && !matches!(selector, Selector::Objects { .. }) {
            return bad("`all` applies to objectId/objectIds only");
        }
        if self.hdu != 0 && format != StampFormat::Array {
            return bad(
                "`hdu` chooses the image that format `array` decodes; `fits` and `gzip` return the whole stamp",
            );
        }
        Ok(CutoutRequest {
            dataset: self.dataset,
            selector,
            kind,
            format,
            hdu: self.hdu,
        })
    }
}

impl CutoutRequest {
    /// The protobuf form of this request, unpacked.
    pub fn to_cutout_ticket(&self) -> CutoutTicket {
        let mut t = CutoutTicket {
            dataset: self.dataset.clone(),
            kind: self.kind as i32,
            format: self.format as i32,
            hdu: self.hdu,
            ..Default::default()
        };
        match &self.selector {
            Selector::Objects { object_ids, all } => {
                t.object_ids = object_ids.clone();
                t.all = *all;
            }
            Selector::Candids { candids, object_id } => {
                t.candids = candids.clone();
                t.object_ids = object_id.iter().cloned().collect();
            }
            Selector::DiaSources { ids } => t.dia_source_ids = ids.clone(),
        }
        t
    }

    /// Encoded protobuf bytes (an `Any` of [`CUTOUT_TYPE_URL`]), ready for a Flight `Ticket`
    /// or a `FlightDescriptor.cmd`; what `decode_command` reads back.
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&Any {
            type_url: CUTOUT_TYPE_URL.to_string(),
            value: prost::Message::encode_to_vec(&self.to_cutout_ticket()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(selector: Selector) -> CutoutRequest {
        CutoutRequest {
            dataset: "ztf".into(),
            selector,
            kind: StampKind::Science,
            format: StampFormat::Array,
            hdu: 0,
        }
    }

    #[test]
    fn protobuf_round_trip() {
        for sel in [
            Selector::Objects {
                object_ids: vec!["ZTF20aabaesm".into()],
                all: true,
            },
            Selector::Candids {
                candids: vec![1095578115815010001],
                object_id: Some("ZTF20aabaesm".into()),
            },
            Selector::DiaSources { ids: vec![-5, 1 << 60] },
        ] {
            let r = req(sel);
            assert_eq!(decode_command(&r.encode()).unwrap(), Command::Cutout(r));
        }
    }

    #[test]
    fn empty_and_garbage_are_refused() {
        assert_eq!(decode_command(b"  "), Err(TicketError::Empty));
        assert!(matches!(
            decode_command(&[0xff, 0xff, 0xff]),
            Err(TicketError::Protobuf(_))
        ));
        // A valid protobuf message that names no command type.
        assert!(matches!(
            decode_command(&[0x12, 0x00]),
            Err(TicketError::Protobuf(m)) if m.contains("unknown command type \"\"")
        ));
        // The first protobuf form (a bare `Ticket` oneof): its field 1 reads as a type URL
        // that is none of ours, and the message says what is accepted.
        let bare = prost::Message::encode_to_vec(&Ticket {
            kind: Some(ticket::Kind::Cutout(CutoutTicket {
                dataset: "ztf".into(),
                candids: vec![1],
                ..Default::default()
            })),
        });
        let e = decode_command(&bare).unwrap_err().to_string();
        assert!(e.contains("unknown command type") && e.contains(CUTOUT_TYPE_URL), "{e}");
    }

    #[test]
    fn flight_sql_commands_are_told_apart_by_their_type_url() {
        // A Flight SQL CommandStatementQuery starts with the same byte as ours (field 1).
        let sql = prost::Message::encode_to_vec(&Any {
            type_url: "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery".into(),
            value: vec![0x0a, 0x01, b'x'],
        });
        assert_eq!(sql[0], 0x0a);
        assert!(matches!(decode_command(&sql), Err(TicketError::FlightSql(t)) if t.ends_with("CommandStatementQuery")));
        let ours = req(Selector::Candids {
            candids: vec![1],
            object_id: None,
        })
        .encode();
        assert_eq!(ours[0], 0x0a);
        assert!(decode_command(&ours).is_ok());
        // A huge unknown type URL is quoted cut short.
        let huge = prost::Message::encode_to_vec(&Any {
            type_url: "x".repeat(100_000),
            value: vec![],
        });
        assert!(decode_command(&huge).unwrap_err().to_string().len() < 400);
    }

    #[test]
    fn repeated_ids_are_dropped_while_parsing() {
        let c = CutoutTicket {
            dataset: "ztf".into(),
            candids: vec![3, 1, 3, 3, 2, 1],
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(
            c.selector,
            Selector::Candids {
                candids: vec![3, 1, 2],
                object_id: None
            }
        );
        let c = CutoutTicket {
            dataset: "ztf".into(),
            object_ids: vec!["a".into(), "a".into()],
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(c.selector.len(), 1);
    }

    #[test]
    fn selector_rules() {
        let t = |f: fn(&mut CutoutTicket)| {
            let mut c = CutoutTicket {
                dataset: "ztf".into(),
                ..Default::default()
            };
            f(&mut c);
            c.validate()
        };
        assert!(t(|_| {}).is_err());
        assert!(t(|c| c.dataset.clear()).is_err());
        assert!(t(|c| {
            c.candids = vec![1];
            c.dia_source_ids = vec![2]
        })
        .is_err());
        assert!(t(|c| {
            c.candids = vec![1, 2];
            c.object_ids = vec!["a".into()]
        })
        .is_err());
        assert!(t(|c| {
            c.candids = vec![1];
            c.all = true
        })
        .is_err());
        assert!(t(|c| c.kind = 9).is_err());
        assert!(t(|c| c.object_ids = vec![String::new()]).is_err());
        assert!(t(|c| c.candids = vec![0; MAX_IDS_PER_TICKET + 1]).is_err());
    }

    /// Pins the wire encoding to `astroflight.proto` (field numbers and types), so that a
    /// client generated from the .proto file and these hand-written prost types agree.
    #[test]
    fn wire_format_matches_proto_file() {
        let r = CutoutRequest {
            dataset: "z".into(),
            selector: Selector::Candids {
                candids: vec![1],
                object_id: Some("o".into()),
            },
            kind: StampKind::Template,
            format: StampFormat::Gzip,
            hdu: 0,
        };
        // Any { type_url(1) = CUTOUT_TYPE_URL, value(2) = CutoutTicket { dataset(1)="z",
        // object_ids(2)="o", candids(3) packed [1], kind(5)=2, format(6)=1 } }
        let inner: Vec<u8> = vec![0x0a, 1, b'z', 0x12, 1, b'o', 0x1a, 1, 1, 0x28, 2, 0x30, 1];
        let mut expect: Vec<u8> = vec![0x0a, CUTOUT_TYPE_URL.len() as u8];
        expect.extend_from_slice(CUTOUT_TYPE_URL.as_bytes());
        expect.extend_from_slice(&[0x12, inner.len() as u8]);
        expect.extend_from_slice(&inner);
        assert_eq!(r.encode(), expect);
    }
}
