//! FITS datasets: their header catalogs and header tables.
//!
//! - [`scan`]: the headers of one file, read with range requests (one per HDU header in the
//!   common case), or whole for gzipped files;
//! - [`catalog`]: every file's headers kept in the index database, refreshed incrementally;
//! - [`table`]: header tables as Arrow, with typed key columns.
//!
//! The parser itself (cards, `CONTINUE`, `HIERARCH`, HDU kinds and data sizes) is
//! `astroflight_fits::header`.

pub mod catalog;
pub mod scan;
pub mod table;
