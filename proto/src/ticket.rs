//! prost types for `astroflight.proto` (package `astroflight.v1`), written with prost's derive
//! macros so that the build needs no protoc. Keep them in step with the .proto file; the
//! `wire_format_matches_proto_file` test pins the encoding.

/// `google.protobuf.Any`: how every protobuf command travels, in a Flight `Ticket` or a
/// `FlightDescriptor.cmd`, exactly as Flight SQL's commands do. The type URL says which command
/// it is, so astroflight's commands and Flight SQL's can share one port without being mistaken
/// for each other.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// The type URL of a [`CutoutTicket`] packed in an [`Any`].
pub const CUTOUT_TYPE_URL: &str = "type.googleapis.com/astroflight.v1.CutoutTicket";
/// The prefix of Flight SQL's command type URLs.
pub const FLIGHT_SQL_TYPE_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// The oneof of every command kind (kept for clients built against the first .proto; on the
/// wire, commands are [`Any`]-packed).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ticket {
    #[prost(oneof = "Kind", tags = "1")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(message, tag = "1")]
    Cutout(CutoutTicket),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CutoutTicket {
    #[prost(string, tag = "1")]
    pub dataset: String,
    #[prost(string, repeated, tag = "2")]
    pub object_ids: Vec<String>,
    #[prost(int64, repeated, tag = "3")]
    pub candids: Vec<i64>,
    #[prost(int64, repeated, tag = "4")]
    pub dia_source_ids: Vec<i64>,
    #[prost(enumeration = "StampKind", tag = "5")]
    pub kind: i32,
    #[prost(enumeration = "StampFormat", tag = "6")]
    pub format: i32,
    #[prost(bool, tag = "7")]
    pub all: bool,
    /// With format `array`: the HDU of each stamp decoded (0: primary).
    #[prost(uint32, tag = "8")]
    pub hdu: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StampKind {
    All = 0,
    Science = 1,
    Template = 2,
    Difference = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StampFormat {
    Fits = 0,
    Gzip = 1,
    Array = 2,
}

/// The type URL of an [`AlertsQuery`] packed in an [`Any`].
pub const ALERTS_TYPE_URL: &str = "type.googleapis.com/astroflight.v1.AlertsQuery";
/// The type URL of an [`AlertsPart`] packed in an [`Any`].
pub const ALERTS_PART_TYPE_URL: &str = "type.googleapis.com/astroflight.v1.AlertsPart";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Content {
    Lightcurve = 0,
    Cutouts = 1,
    Full = 2,
    Columns = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Compression {
    None = 0,
    Lz4 = 1,
    Zstd = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AlertsQuery {
    #[prost(string, tag = "1")]
    pub dataset: String,
    #[prost(string, repeated, tag = "2")]
    pub nights: Vec<String>,
    #[prost(string, tag = "3")]
    pub from: String,
    #[prost(string, tag = "4")]
    pub to: String,
    #[prost(string, repeated, tag = "5")]
    pub classes: Vec<String>,
    #[prost(string, tag = "6")]
    pub r#where: String,
    #[prost(enumeration = "Content", tag = "7")]
    pub content: i32,
    #[prost(string, repeated, tag = "8")]
    pub columns: Vec<String>,
    #[prost(enumeration = "StampFormat", tag = "9")]
    pub stamps: i32,
    #[prost(uint64, optional, tag = "10")]
    pub limit: Option<u64>,
    #[prost(bool, tag = "11")]
    pub exact: bool,
    #[prost(enumeration = "Compression", tag = "12")]
    pub compression: i32,
    #[prost(string, repeated, tag = "13")]
    pub annotate: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PartFile {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(uint64, tag = "2")]
    pub size: u64,
    #[prost(string, optional, tag = "3")]
    pub e_tag: Option<String>,
    #[prost(int64, tag = "4")]
    pub last_modified_ms: i64,
    #[prost(uint32, repeated, tag = "5")]
    pub row_groups: Vec<u32>,
    /// Bytes of the file's metadata suffix (footer and page indexes), 0 if unknown: the reader
    /// fetches it in one request.
    #[prost(uint64, tag = "6")]
    pub metadata_len: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AlertsPart {
    #[prost(message, optional, tag = "1")]
    pub query: Option<AlertsQuery>,
    #[prost(message, repeated, tag = "2")]
    pub files: Vec<PartFile>,
    #[prost(uint64, optional, tag = "3")]
    pub limit: Option<u64>,
    #[prost(uint32, tag = "4")]
    pub index: u32,
    #[prost(uint32, tag = "5")]
    pub count: u32,
    /// The output schema (Arrow IPC), so that every part of a plan, on any replica, streams the
    /// schema GetFlightInfo announced.
    #[prost(bytes = "vec", tag = "6")]
    pub schema: Vec<u8>,
    /// Exactly how many rows the part holds, when the plan counted them (`exact` or `limit`).
    #[prost(uint64, optional, tag = "7")]
    pub rows: Option<u64>,
}
