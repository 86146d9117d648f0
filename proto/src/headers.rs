//! Header tables: `{"headers": {...}}` (JSON) or `HeadersQuery` (protobuf): the HDUs of a FITS
//! dataset's files from its header catalog, filtered by path prefix and SQL on header keys, or
//! the headers of the stamps of alerts named by id.

pub use crate::ticket::{HeadersPart, HeadersQuery};
use crate::{dedup, quoted, Any, Selector, TicketError};

/// The type URL of a [`HeadersQuery`] packed in an [`Any`].
pub const HEADERS_TYPE_URL: &str = "type.googleapis.com/astroflight.v1.HeadersQuery";
/// The type URL of a [`HeadersPart`] packed in an [`Any`].
pub const HEADERS_PART_TYPE_URL: &str = "type.googleapis.com/astroflight.v1.HeadersPart";

/// Most keys one query may ask for as typed columns.
pub const MAX_KEYS: usize = 256;

/// A validated headers query.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadersRequest {
    pub query: HeadersQuery,
    /// Set for alert stamps; None for a FITS dataset's catalog.
    pub selector: Option<Selector>,
}

/// A validated headers endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadersPartRequest {
    pub request: HeadersRequest,
    pub start: String,
    pub end: String,
    pub index: u32,
    pub count: u32,
    pub schema: Vec<u8>,
}

fn bad(m: impl Into<String>) -> TicketError {
    TicketError::Headers(m.into())
}

impl HeadersQuery {
    pub fn validate(mut self) -> Result<HeadersRequest, TicketError> {
        if self.dataset.is_empty() {
            return Err(bad("`dataset` is required"));
        }
        if self.keys.len() > MAX_KEYS {
            return Err(bad(format!(
                "{} keys in one query; at most {MAX_KEYS} are accepted",
                self.keys.len()
            )));
        }
        for k in &self.keys {
            if k.is_empty() || k.len() > 72 || !k.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                return Err(bad(format!(
                    "key {} is not a FITS keyword (1 to 72 printable ASCII characters)",
                    quoted(k)
                )));
            }
        }
        self.keys = dedup(std::mem::take(&mut self.keys));
        if self.prefix.starts_with('/') {
            return Err(bad(format!(
                "`prefix` {} must be relative to the dataset root (no leading '/')",
                quoted(&self.prefix)
            )));
        }
        let ids = (
            !self.object_ids.is_empty(),
            !self.candids.is_empty(),
            !self.dia_source_ids.is_empty(),
        );
        let selector = match ids {
            (false, false, false) => {
                if self.all {
                    return Err(bad("`all` goes with `objectId`/`objectIds`"));
                }
                None
            }
            (true, false, false) => Some(Selector::Objects {
                object_ids: dedup(self.object_ids.clone()),
                all: self.all,
            }),
            (false, true, false) => Some(Selector::Candids {
                candids: dedup(self.candids.clone()),
                object_id: None,
            }),
            (false, false, true) => Some(Selector::DiaSources {
                ids: dedup(self.dia_source_ids.clone()),
            }),
            _ => return Err(bad("give one kind of id: objectIds, candids or diaSourceIds")),
        };
        if let Some(s) = &selector {
            if s.len() > crate::MAX_IDS_PER_TICKET {
                return Err(bad(format!(
                    "{} ids in one ticket; at most {} are accepted",
                    s.len(),
                    crate::MAX_IDS_PER_TICKET
                )));
            }
            if !self.prefix.is_empty() {
                return Err(bad(
                    "`prefix` selects files of a FITS dataset; alert stamps are named by id",
                ));
            }
            if self.all && !matches!(s, Selector::Objects { .. }) {
                return Err(bad("`all` goes with `objectId`/`objectIds`"));
            }
        }
        Ok(HeadersRequest { query: self, selector })
    }
}

impl HeadersRequest {
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&Any {
            type_url: HEADERS_TYPE_URL.to_string(),
            value: prost::Message::encode_to_vec(&self.query),
        })
    }
}

impl HeadersPart {
    pub fn validate(self) -> Result<HeadersPartRequest, TicketError> {
        let query = self.query.ok_or_else(|| bad("an endpoint ticket without its query"))?;
        let request = query.validate()?;
        if request.selector.is_some() {
            return Err(bad("alert stamp headers are answered in one endpoint"));
        }
        if self.schema.is_empty() {
            return Err(bad("an endpoint ticket without its schema"));
        }
        Ok(HeadersPartRequest {
            request,
            start: self.start,
            end: self.end,
            index: self.index,
            count: self.count,
            schema: self.schema,
        })
    }
}

impl HeadersPartRequest {
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&Any {
            type_url: HEADERS_PART_TYPE_URL.to_string(),
            value: prost::Message::encode_to_vec(&HeadersPart {
                query: Some(self.request.query.clone()),
                start: self.start.clone(),
                end: self.end.clone(),
                index: self.index,
                count: self.count,
                schema: self.schema.clone(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_command, Command};

    fn headers(s: &str) -> Result<HeadersRequest, TicketError> {
        decode_command(s.as_bytes()).map(|c| match c {
            Command::Headers(h) => h,
            c => panic!("not a headers query: {c:?}"),
        })
    }

    #[test]
    fn json_and_protobuf_agree() {
        let h = headers(
            r#"{"headers": {"dataset": "hst", "prefix": "acs/", "keys": ["EXPTIME", "FILTER", "EXPTIME"], "where": "EXPTIME > 100 AND FILTER = 'F606W'"}}"#,
        )
        .unwrap();
        assert_eq!(h.query.keys, vec!["EXPTIME", "FILTER"]);
        assert_eq!(h.selector, None);
        let again = decode_command(&h.encode()).unwrap();
        assert_eq!(again, Command::Headers(h));
        let s = headers(r#"{"headers": {"dataset": "ztf", "objectIds": ["ZTF1", "ZTF1"], "all": true}}"#).unwrap();
        assert_eq!(
            s.selector,
            Some(Selector::Objects {
                object_ids: vec!["ZTF1".into()],
                all: true
            })
        );
        let s = headers(r#"{"headers": {"dataset": "lsst", "diaSourceId": "170000000000001000"}}"#).unwrap();
        assert_eq!(
            s.selector,
            Some(Selector::DiaSources {
                ids: vec![170000000000001000]
            })
        );
    }

    #[test]
    fn bad_queries_say_why() {
        let e = |s: &str| headers(s).unwrap_err().to_string();
        assert!(e(r#"{"headers": {}}"#).contains("`dataset` is required"));
        assert!(e(r#"{"headers": {"dataset": "x", "keys": [""]}}"#).contains("not a FITS keyword"));
        assert!(e(r#"{"headers": {"dataset": "x", "prefix": "/abs"}}"#).contains("relative"));
        assert!(e(r#"{"headers": {"dataset": "x", "objectId": "a", "candid": 1}}"#).contains("one kind of id"));
        assert!(e(r#"{"headers": {"dataset": "x", "all": true}}"#).contains("`all`"));
        assert!(e(r#"{"headers": {"dataset": "x", "kyes": []}}"#).contains("unknown field `kyes`"));
        let part = HeadersPart {
            query: Some(HeadersQuery {
                dataset: "x".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(part.validate().unwrap_err().to_string().contains("schema"));
    }
}
