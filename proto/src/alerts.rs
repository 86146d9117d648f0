//! Alert batch queries (`{"alerts": {...}}`, [`AlertsQuery`]) and the self-contained tickets of
//! their endpoints ([`AlertsPart`]), validated into [`AlertsRequest`] / [`AlertsPartRequest`].
//!
//! Times: a night is the UTC date of the alert time (as Fink's `year=/month=/day=` folders are);
//! the window of a query is kept as half-open ranges of Unix milliseconds, so that nights and
//! instants are one thing to the planner.

use crate::ticket::{AlertsPart, AlertsQuery, Compression, Content, PartFile, StampFormat};
use crate::{quoted, Any, TicketError, ALERTS_PART_TYPE_URL, ALERTS_TYPE_URL};

/// Longest `where` accepted (bytes).
pub const MAX_WHERE_BYTES: usize = 64 * 1024;
/// Most nights, classes or columns one query may list.
pub const MAX_LIST: usize = 10_000;
/// Most files one endpoint ticket may name.
pub const MAX_PART_FILES: usize = 100_000;

const DAY_MS: i64 = 86_400_000;

/// A half-open range of Unix milliseconds `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeRange {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl TimeRange {
    /// The night `day` (days since 1970-01-01, UTC).
    pub fn night(day: i32) -> Self {
        TimeRange {
            start_ms: day as i64 * DAY_MS,
            end_ms: (day as i64 + 1) * DAY_MS,
        }
    }
}

/// Extra output columns a query may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Annotation {
    /// `night` (date32): the UTC date of the alert time.
    Night,
    /// `class` (utf8): the dataset's class of the alert.
    Class,
}

impl Annotation {
    pub fn name(self) -> &'static str {
        match self {
            Annotation::Night => "night",
            Annotation::Class => "class",
        }
    }
}

/// A validated alert batch query.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsRequest {
    pub dataset: String,
    /// None: every time. Some: sorted, disjoint ranges.
    pub window: Option<Vec<TimeRange>>,
    pub classes: Vec<String>,
    /// The conditions, split on `;` and newlines, blank ones dropped.
    pub conditions: Vec<String>,
    pub content: Content,
    pub columns: Vec<String>,
    pub stamps: StampFormat,
    pub limit: Option<u64>,
    pub exact: bool,
    pub compression: Compression,
    pub annotate: Vec<Annotation>,
    /// The query as received (re-encoded), carried in every endpoint ticket.
    pub query: AlertsQuery,
}

/// A validated endpoint ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsPartRequest {
    pub request: AlertsRequest,
    pub files: Vec<PartFile>,
    pub limit: Option<u64>,
    pub index: u32,
    pub count: u32,
    pub schema: Vec<u8>,
    pub rows: Option<u64>,
}

fn bad(m: impl Into<String>) -> TicketError {
    TicketError::Alerts(m.into())
}

impl Content {
    pub fn name(self) -> &'static str {
        match self {
            Content::Lightcurve => "lightcurve",
            Content::Cutouts => "cutouts",
            Content::Full => "full",
            Content::Columns => "columns",
        }
    }
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// `lightcurve`, `cutouts`, `full` or `columns` (case-insensitive).
pub fn parse_content(s: &str) -> Result<Content, TicketError> {
    match s.to_ascii_lowercase().as_str() {
        "lightcurve" => Ok(Content::Lightcurve),
        "cutouts" => Ok(Content::Cutouts),
        "full" => Ok(Content::Full),
        "columns" => Ok(Content::Columns),
        _ => Err(bad(format!(
            "unknown content {}; expected one of lightcurve, cutouts, full, columns",
            quoted(s)
        ))),
    }
}

/// `none`, `lz4` or `zstd` (case-insensitive).
pub fn parse_compression(s: &str) -> Result<Compression, TicketError> {
    match s.to_ascii_lowercase().as_str() {
        "none" | "" => Ok(Compression::None),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        _ => Err(bad(format!(
            "unknown compression {}; expected one of none, lz4, zstd",
            quoted(s)
        ))),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// `YYYY-MM-DD` as a day number.
pub fn parse_night(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = &s[r];
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m as usize - 1];
    if d > days_in {
        return None;
    }
    Some(days_from_civil(y as i64, m, d) as i32)
}

/// The `YYYY-MM-DD` of a day number.
pub fn night_name(day: i32) -> String {
    let (y, m, d) = civil_from_days(day as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM[:SS[.fff]][Z|+00:00]` (UTC) as Unix milliseconds.
fn parse_instant(s: &str) -> Option<i64> {
    let (date, time) = s.split_once(['T', ' '])?;
    let day = parse_night(date)? as i64;
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))
        .unwrap_or(time);
    let mut parts = time.splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let mi: i64 = parts.next()?.parse().ok()?;
    let sec: f64 = match parts.next() {
        Some(x) => x.parse().ok()?,
        None => 0.0,
    };
    if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0.0..61.0).contains(&sec) {
        return None;
    }
    Some(day * DAY_MS + h * 3_600_000 + mi * 60_000 + (sec * 1000.0).round() as i64)
}

/// A `from` bound: a night starts at its 0h UTC; an instant is itself.
fn parse_from(s: &str) -> Result<i64, TicketError> {
    parse_night(s)
        .map(|d| d as i64 * DAY_MS)
        .or_else(|| parse_instant(s))
        .ok_or_else(|| time_error("from", s))
}

/// A `to` bound: a night is included whole; an instant is excluded.
fn parse_to(s: &str) -> Result<i64, TicketError> {
    parse_night(s)
        .map(|d| (d as i64 + 1) * DAY_MS)
        .or_else(|| parse_instant(s))
        .ok_or_else(|| time_error("to", s))
}

fn time_error(field: &str, s: &str) -> TicketError {
    bad(format!(
        "`{field}` value {} is neither a night (YYYY-MM-DD) nor a UTC instant (YYYY-MM-DDTHH:MM:SSZ)",
        quoted(s)
    ))
}

/// Split Fink-style conditions: `;` or newline separated, blank ones dropped. A `;` inside a
/// quoted string does not split.
pub fn split_conditions(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c)
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.push(c)
            }
            (None, ';' | '\n') => out.push(std::mem::take(&mut cur)),
            (None, c) => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

fn merge(mut v: Vec<TimeRange>) -> Vec<TimeRange> {
    v.sort();
    let mut out: Vec<TimeRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start_ms <= last.end_ms => last.end_ms = last.end_ms.max(r.end_ms),
            _ => out.push(r),
        }
    }
    out
}

impl AlertsQuery {
    /// Check every field and build the typed request.
    pub fn validate(self) -> Result<AlertsRequest, TicketError> {
        if self.dataset.is_empty() {
            return Err(bad("`dataset` is required"));
        }
        for (name, n) in [
            ("nights", self.nights.len()),
            ("classes", self.classes.len()),
            ("columns", self.columns.len()),
        ] {
            if n > MAX_LIST {
                return Err(bad(format!("{n} {name} in one query; at most {MAX_LIST} are accepted")));
            }
        }
        let has_range = !self.from.is_empty() || !self.to.is_empty();
        let window = match (self.nights.is_empty(), has_range) {
            (false, true) => return Err(bad("give either `nights` or `from`/`to`, not both")),
            (false, false) => {
                let days = self
                    .nights
                    .iter()
                    .map(|n| {
                        parse_night(n).ok_or_else(|| bad(format!("night {} is not a date (YYYY-MM-DD)", quoted(n))))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(merge(days.into_iter().map(TimeRange::night).collect()))
            }
            (true, true) => {
                let start_ms = if self.from.is_empty() {
                    i64::MIN
                } else {
                    parse_from(&self.from)?
                };
                let end_ms = if self.to.is_empty() {
                    i64::MAX
                } else {
                    parse_to(&self.to)?
                };
                if start_ms >= end_ms {
                    return Err(bad(format!(
                        "`from` {} is not before `to` {}",
                        quoted(&self.from),
                        quoted(&self.to)
                    )));
                }
                Some(vec![TimeRange { start_ms, end_ms }])
            }
            (true, false) => None,
        };
        if self.classes.iter().any(|c| c.is_empty()) {
            return Err(bad("a class is empty"));
        }
        if self.r#where.len() > MAX_WHERE_BYTES {
            return Err(bad(format!(
                "`where` has {} bytes; at most {MAX_WHERE_BYTES} are accepted",
                self.r#where.len()
            )));
        }
        let content = Content::try_from(self.content).map_err(|_| bad(format!("unknown content {}", self.content)))?;
        let stamps =
            StampFormat::try_from(self.stamps).map_err(|_| bad(format!("unknown stamps format {}", self.stamps)))?;
        let compression = Compression::try_from(self.compression)
            .map_err(|_| bad(format!("unknown compression {}", self.compression)))?;
        match (content, self.columns.is_empty()) {
            (Content::Columns, true) => return Err(bad("content `columns` needs a list of `columns`")),
            (Content::Columns, false) => {}
            (c, false) => return Err(bad(format!("`columns` is for content `columns`, not `{}`", c.name()))),
            _ => {}
        }
        if let Some(c) = self.columns.iter().find(|c| c.trim().is_empty()) {
            return Err(bad(format!("column {} is empty", quoted(c))));
        }
        let mut annotate = Vec::new();
        for a in &self.annotate {
            let a = match a.as_str() {
                "night" => Annotation::Night,
                "class" => Annotation::Class,
                other => {
                    return Err(bad(format!(
                        "unknown annotation {}; expected night or class",
                        quoted(other)
                    )))
                }
            };
            if !annotate.contains(&a) {
                annotate.push(a);
            }
        }
        Ok(AlertsRequest {
            dataset: self.dataset.clone(),
            window,
            classes: crate::dedup(self.classes.clone()),
            conditions: split_conditions(&self.r#where),
            content,
            columns: crate::dedup(self.columns.iter().map(|c| c.trim().to_string()).collect()),
            stamps,
            limit: self.limit,
            exact: self.exact,
            compression,
            annotate,
            query: self,
        })
    }
}

impl AlertsRequest {
    /// The encoded `Any` of the query.
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&Any {
            type_url: ALERTS_TYPE_URL.to_string(),
            value: prost::Message::encode_to_vec(&self.query),
        })
    }

    /// The `where` as one SQL expression (conditions joined with AND), None when there is none.
    pub fn where_sql(&self) -> Option<String> {
        match self.conditions.len() {
            0 => None,
            1 => Some(self.conditions[0].clone()),
            _ => Some(
                self.conditions
                    .iter()
                    .map(|c| format!("({c})"))
                    .collect::<Vec<_>>()
                    .join(" AND "),
            ),
        }
    }
}

impl AlertsPart {
    pub fn validate(self) -> Result<AlertsPartRequest, TicketError> {
        let query = self.query.ok_or_else(|| bad("an endpoint ticket without its query"))?;
        if self.files.len() > MAX_PART_FILES {
            return Err(bad(format!(
                "an endpoint ticket names {} files; at most {MAX_PART_FILES}",
                self.files.len()
            )));
        }
        if let Some(f) = self.files.iter().find(|f| f.path.is_empty()) {
            return Err(bad(format!("an endpoint ticket names a file without a path ({f:?})")));
        }
        Ok(AlertsPartRequest {
            request: query.validate()?,
            files: self.files,
            limit: self.limit,
            index: self.index,
            count: self.count,
            schema: self.schema,
            rows: self.rows,
        })
    }
}

impl AlertsPartRequest {
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&Any {
            type_url: ALERTS_PART_TYPE_URL.to_string(),
            value: prost::Message::encode_to_vec(&AlertsPart {
                query: Some(self.request.query.clone()),
                files: self.files.clone(),
                limit: self.limit,
                index: self.index,
                count: self.count,
                schema: self.schema.clone(),
                rows: self.rows,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_command, Command};

    fn alerts(json: &str) -> Result<AlertsRequest, TicketError> {
        match decode_command(json.as_bytes())? {
            Command::Alerts(a) => Ok(a),
            c => panic!("not an alerts query: {c:?}"),
        }
    }

    #[test]
    fn dates_round_trip() {
        for (s, d) in [
            ("1970-01-01", 0),
            ("2019-09-03", 18142),
            ("2000-02-29", 11016),
            ("1969-12-31", -1),
        ] {
            assert_eq!(parse_night(s), Some(d), "{s}");
            assert_eq!(night_name(d), s);
        }
        for s in [
            "2019-02-29",
            "2019-13-01",
            "2019-9-03",
            "20190903",
            "2019-09-00",
            "abcd-ef-gh",
        ] {
            assert_eq!(parse_night(s), None, "{s}");
        }
        assert_eq!(parse_instant("1970-01-02T00:00:01.5Z"), Some(86_401_500));
        assert_eq!(parse_instant("1970-01-01T25:00:00Z"), None);
    }

    #[test]
    fn the_issue_example_decodes() {
        let a = alerts(
            r#"{"alerts": {"dataset": "ztf", "nights": ["2019-09-05", "2019-09-03", "2019-09-04"],
                "classes": ["SN candidate"], "where": "candidate.magpsf > 19.5; candidate.distnr > 2",
                "content": "lightcurve", "limit": 10, "exact": true}}"#,
        )
        .unwrap();
        assert_eq!(a.dataset, "ztf");
        // Three consecutive nights merge into one range.
        let d = parse_night("2019-09-03").unwrap();
        assert_eq!(
            a.window,
            Some(vec![TimeRange {
                start_ms: d as i64 * DAY_MS,
                end_ms: (d as i64 + 3) * DAY_MS
            }])
        );
        assert_eq!(a.conditions, vec!["candidate.magpsf > 19.5", "candidate.distnr > 2"]);
        assert_eq!(
            a.where_sql().unwrap(),
            "(candidate.magpsf > 19.5) AND (candidate.distnr > 2)"
        );
        assert_eq!((a.content, a.limit, a.exact), (Content::Lightcurve, Some(10), true));
        // The protobuf form decodes to the same request.
        assert_eq!(decode_command(&a.encode()).unwrap(), Command::Alerts(a.clone()));
        let part = AlertsPartRequest {
            request: a,
            files: vec![PartFile {
                path: "year=2019/x.parquet".into(),
                size: 10,
                e_tag: Some("e".into()),
                last_modified_ms: 5,
                row_groups: vec![0, 2],
                metadata_len: 77,
            }],
            limit: Some(3),
            index: 1,
            count: 4,
            schema: vec![1, 2, 3],
            rows: Some(3),
        };
        assert_eq!(decode_command(&part.encode()).unwrap(), Command::AlertsPart(part));
    }

    #[test]
    fn from_to_bounds() {
        let a = alerts(r#"{"alerts": {"dataset": "ztf", "from": "2019-09-03", "to": "2019-09-03"}}"#).unwrap();
        assert_eq!(
            a.window,
            Some(vec![TimeRange::night(parse_night("2019-09-03").unwrap())])
        );
        let a = alerts(r#"{"alerts": {"dataset": "ztf", "from": "2019-09-03T12:00:00Z"}}"#).unwrap();
        assert_eq!(a.window.unwrap()[0].end_ms, i64::MAX);
    }

    #[test]
    fn conditions_split_outside_quotes() {
        assert_eq!(
            split_conditions("a > 1;\n b = 'x;y'\n\n;c<2;"),
            vec!["a > 1", "b = 'x;y'", "c<2"]
        );
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let e = |s: &str| alerts(s).unwrap_err().to_string();
        assert!(e(r#"{"alerts": {}}"#).contains("`dataset` is required"));
        assert!(e(r#"{"alerts": {"dataset": "ztf", "nights": ["2019-09-3"]}}"#).contains("is not a date"));
        assert!(
            e(r#"{"alerts": {"dataset": "ztf", "nights": ["2019-09-03"], "from": "2019-09-01"}}"#).contains("not both")
        );
        assert!(
            e(r#"{"alerts": {"dataset": "ztf", "from": "2019-09-05", "to": "2019-09-01"}}"#).contains("not before")
        );
        assert!(e(r#"{"alerts": {"dataset": "ztf", "content": "lc"}}"#).contains("lightcurve, cutouts, full, columns"));
        assert!(e(r#"{"alerts": {"dataset": "ztf", "content": "columns"}}"#).contains("needs a list"));
        assert!(e(r#"{"alerts": {"dataset": "ztf", "columns": ["candid"]}}"#).contains("is for content `columns`"));
        assert!(e(r#"{"alerts": {"dataset": "ztf", "stamps": "png"}}"#).contains("fits, gzip, array"));
        assert!(e(r#"{"alerts": {"dataset": "ztf", "compression": "gzip"}}"#).contains("none, lz4, zstd"));
        assert!(e(r#"{"alerts": {"dataset": "ztf", "annotate": ["year"]}}"#).contains("night or class"));
        assert!(e(r#"{"alerts": {"dataset": "ztf", "wher": "x"}}"#).contains("unknown field `wher`"));
        assert!(e(r#"{"alerts": {"dataset": "ztf", "limit": -1}}"#).contains("not valid JSON"));
    }
}
