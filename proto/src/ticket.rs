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
