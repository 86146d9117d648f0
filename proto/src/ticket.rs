//! The prost types of `astroflight.proto` (package `astroflight.v1`), generated at build time
//! (`build.rs`: protox compiles the .proto, prost-build writes the types to `OUT_DIR`), and the
//! type URLs of the commands. The `wire_format_matches_proto_file` test pins the encoding.
//!
//! `google.protobuf.Any` ([`Any`], prost-types' own) is how every protobuf command travels, in a
//! Flight `Ticket` or a `FlightDescriptor.cmd`, exactly as Flight SQL's commands do. The type URL
//! says which command it is, so astroflight's commands and Flight SQL's can share one port
//! without being mistaken for each other.

pub use prost_types::Any;

pub use crate::generated::*;

/// The oneof of [`Ticket`] (kept for clients built against the first .proto; on the wire,
/// commands are [`Any`]-packed).
pub use crate::generated::ticket::Kind;

/// The type URL of a [`CutoutTicket`] packed in an [`Any`].
pub const CUTOUT_TYPE_URL: &str = "type.googleapis.com/astroflight.v1.CutoutTicket";
/// The prefix of Flight SQL's command type URLs.
pub const FLIGHT_SQL_TYPE_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// The type URL of an [`AlertsQuery`] packed in an [`Any`].
pub const ALERTS_TYPE_URL: &str = "type.googleapis.com/astroflight.v1.AlertsQuery";
/// The type URL of an [`AlertsPart`] packed in an [`Any`].
pub const ALERTS_PART_TYPE_URL: &str = "type.googleapis.com/astroflight.v1.AlertsPart";
