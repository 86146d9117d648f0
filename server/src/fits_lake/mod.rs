//! FITS datasets (`kind = "fits"`): their header catalogs and header tables. (Named apart from
//! the `headers` ticket kind, `tickets/headers.rs`, which serves these tables, and from the
//! index's `header_catalog` trees, where the catalogs are kept.)
//!
//! - [`file_headers`]: the headers of one file, read with range requests (one per HDU header in the
//!   common case), or whole for gzipped files;
//! - [`catalog`]: every file's headers kept in the index database, refreshed incrementally;
//! - [`table`]: header tables as Arrow, with typed key columns.
//!
//! The parser itself (cards, `CONTINUE`, `HIERARCH`, HDU kinds and data sizes) is
//! `astroflight_fits::header`.

pub mod catalog;
pub mod file_headers;
pub mod table;
