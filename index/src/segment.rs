//! Immutable, sorted, block-compressed, checksummed segment files.
//!
//! A segment holds a few named **tables**. A table is a sorted list of rows of `arity` (1 to
//! [`MAX_ARITY`]) unsigned 64-bit columns, sorted by the whole row (column 0 first), with
//! duplicates allowed. The id index stores its id -> ordinal maps this way (see the crate docs
//! for which tables and columns); this module knows nothing of ids.
//!
//! ```text
//! segment := "AFSEG\0v1" block* (table index)* (table filter)* meta directory trailer
//! block   := column{arity} crc32(columns)              (at most BLOCK_ROWS rows)
//! column  := width:u8 exceptions:u8 bits[(rows-1)*width] (index:u8 varint(high bits)){exceptions}
//! table index  := per block, fixed width: first row (arity x u64) offset:u64 length:u32 rows:u32
//! table filter := 64-byte blocks of a Bloom filter over the table's distinct column-0 values
//! directory    := tables:u16 per table (name_len:u16 name arity:u8 rows:u64 blocks:u64
//!                 index_at:u64 min:(arity x u64) max:(arity x u64) filter_at:u64 filter_blocks:u32)
//! trailer      := index_at:u64 meta_at:u64 meta_len:u32 dir_at:u64 dir_len:u32
//!                 crc32(index..directory):u32 version:u32 "AFSEGEND"                (48 bytes)
//! ```
//!
//! (The 8-byte magic at the head is the same in every version; the trailer's `version` says
//! which one a file is.)
//!
//! Integers are little-endian. A block's first row is stored whole in the table index (a lookup
//! binary-searches the index in place, without loading it), so a block encodes only its other
//! rows. Each column of those rows is coded against the row before it:
//!
//! * column 0, and any column whose preceding columns equal the previous row's: the difference
//!   from the previous row's value (never negative: rows are sorted);
//! * any other column: the zigzag-coded difference from the previous row's value.
//!
//! The differences are bit-packed at one width per column and block (patched frame of reference,
//! "PFOR"): the width that makes the column smallest, with the few values that do not fit stored
//! as exceptions (their row and their high bits). A column of equal values costs 2 bytes.
//!
//! **Statistics and filters.** The directory holds each column's smallest and largest value in
//! the table (as parquet's column statistics do), so a reader can order or skip segments without
//! reading them: the id index searches for an object's latest alert in the segment with the
//! latest days first, and stops at a segment whose last day is before the best alert found. A
//! table written with a filter (see [`crate::filter`]: a blocked Bloom filter, 10 bits per
//! distinct key) answers "may this segment hold the key" in one cache line; the filter is read
//! into memory at open. A writer keeps the hashes of the distinct keys until the table ends (8
//! bytes each); a table with more than [`FILTER_MAX_KEYS`] distinct keys is written without a
//! filter (its lookups search its index, as a table without one), which bounds the writer's
//! memory however large a merge is. `filter_blocks` is 0 for a table without a filter.
//!
//! **Checksums.** Every block ends with the CRC-32 of its bytes, checked each time the block is
//! decoded: a damaged block is an error naming the segment's path, never wrong rows. The table
//! indexes, the filters, the metadata and the directory are covered by the trailer's CRC, checked when the
//! segment is opened. [`Segment::verify`] checks every block (after a build, a merge, or a copy).
//!
//! **Versions.** The trailer holds the format version ([`VERSION`]); a reader refuses any other.
//! The metadata is opaque bytes the index uses to make each segment self-describing.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::filter::{self, KeyFilter};
use crate::{IndexError, Result};

/// The most columns a table may have.
pub const MAX_ARITY: usize = 4;
/// The most rows a block holds.
pub const BLOCK_ROWS: usize = 128;
/// The format version written in the trailer; readers refuse any other.
pub const VERSION: u32 = 2;
/// A table with more distinct first-column values than this is written without a filter: the
/// writer holds 8 bytes per distinct key until the table ends (128 MiB at this bound).
pub const FILTER_MAX_KEYS: usize = 1 << 24;

const HEAD: &[u8; 8] = b"AFSEG\0v1";
const TAIL: &[u8; 8] = b"AFSEGEND";
const TRAILER_LEN: usize = 8 + 8 + 4 + 8 + 4 + 4 + 4 + 8;

/// One row of a table; columns past the table's arity are 0.
pub type Row = [u64; MAX_ARITY];

fn corrupt(path: &Path, what: impl std::fmt::Display) -> IndexError {
    IndexError::BadSegment {
        path: path.to_path_buf(),
        message: what.to_string(),
    }
}

fn io(path: &Path, e: std::io::Error) -> IndexError {
    IndexError::Corrupt(format!("segment {}: {e}", path.display()))
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Whether row `i`'s column `c` is coded as a plain difference (its earlier columns equal the
/// previous row's) rather than a zigzag one.
fn sorted_column(rows_prev: &Row, row: &Row, c: usize) -> bool {
    (0..c).all(|k| rows_prev[k] == row[k])
}

/// How a row's first `key.len()` columns compare with `key` (element by element: slice
/// comparison of integers goes through `memcmp`, which costs more than these few words).
#[inline]
fn cmp_prefix(row: &Row, key: &[u64]) -> std::cmp::Ordering {
    for (a, b) in row.iter().zip(key) {
        match a.cmp(b) {
            std::cmp::Ordering::Equal => continue,
            other => return other,
        }
    }
    std::cmp::Ordering::Equal
}

/// The coded differences of column `c` for rows 1.. of a block.
fn residuals(rows: &[Row], c: usize, out: &mut Vec<u64>) {
    out.clear();
    for w in rows.windows(2) {
        let (p, r) = (&w[0], &w[1]);
        out.push(if sorted_column(p, r, c) {
            r[c] - p[c]
        } else {
            zigzag(r[c].wrapping_sub(p[c]) as i64)
        });
    }
}

/// PFOR-code `values`: the width with the smallest output, exceptions for the rest.
fn encode_column(values: &[u64], out: &mut Vec<u8>) {
    // How many values need each number of bits; the sizes at each candidate width follow from
    // it (an exception costs its row byte and the varint of its high bits).
    let mut hist = [0u32; 65];
    for &v in values {
        hist[64 - v.leading_zeros() as usize] += 1;
    }
    let used: Vec<(u64, u64)> = (0..=64u64)
        .filter(|&b| hist[b as usize] > 0)
        .map(|b| (b, hist[b as usize] as u64))
        .collect();
    let mut best = (u64::MAX, 0u8);
    for w in std::iter::once(0).chain(used.iter().map(|&(b, _)| b)) {
        let mut size = (values.len() as u64 * w).div_ceil(8);
        let mut exceptions = 0;
        for &(b, count) in used.iter().filter(|&&(b, _)| b > w) {
            exceptions += count;
            size += count * (1 + (b - w).div_ceil(7));
        }
        if exceptions <= u8::MAX as u64 && size < best.0 {
            best = (size, w as u8);
        }
    }
    let w = best.1;
    out.push(w);
    let at = out.len();
    out.push(0);
    let mut acc: u128 = 0;
    let mut filled = 0u32;
    let mask = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
    for &v in values {
        acc |= ((v & mask) as u128) << filled;
        filled += w as u32;
        while filled >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        out.push(acc as u8);
    }
    let mut exceptions = 0u8;
    for (i, &v) in values.iter().enumerate() {
        if (w as u32) < 64 && v >> w != 0 {
            out.push(i as u8);
            put_varint(out, v >> w);
            exceptions += 1;
        }
    }
    out[at] = exceptions;
}

/// Unpack `out.len()` (at most BLOCK_ROWS) values of `w` bits each from `bits`, little-endian:
/// one unaligned 8-byte load per value (16 for widths over 56), from a copy padded so that no
/// load runs past it. This is most of a block's decoding, and so of a warm lookup.
fn unpack(bits: &[u8], w: usize, out: &mut [u64]) {
    const PAD: usize = 16;
    let mut buf = [0u8; BLOCK_ROWS * 8 + PAD];
    debug_assert!(out.len() <= BLOCK_ROWS && bits.len() <= BLOCK_ROWS * 8);
    buf[..bits.len()].copy_from_slice(bits);
    match w {
        0 => out.fill(0),
        1..=56 => {
            let mask = (1u64 << w) - 1;
            for (i, v) in out.iter_mut().enumerate() {
                let bit = i * w;
                let at = bit / 8;
                let word = u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
                *v = (word >> (bit % 8)) & mask;
            }
        }
        _ => {
            let mask = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
            for (i, v) in out.iter_mut().enumerate() {
                let bit = i * w;
                let at = bit / 8;
                let word = u128::from_le_bytes(buf[at..at + 16].try_into().expect("16 bytes"));
                *v = ((word >> (bit % 8)) as u64) & mask;
            }
        }
    }
}

/// Decode one PFOR column of `n` values from `b`, returning the bytes it took.
fn decode_column(b: &[u8], n: usize, out: &mut [u64]) -> Option<usize> {
    let (&w, &exceptions) = (b.first()?, b.get(1)?);
    if w > 64 || n > BLOCK_ROWS {
        return None;
    }
    let packed = (n * w as usize).div_ceil(8);
    let bits = b.get(2..2 + packed)?;
    unpack(bits, w as usize, &mut out[..n]);
    let mut at = 2 + packed;
    for _ in 0..exceptions {
        let i = *b.get(at)? as usize;
        at += 1;
        let (mut high, mut shift) = (0u64, 0u32);
        loop {
            let byte = *b.get(at)?;
            at += 1;
            if shift >= 64 {
                return None;
            }
            high |= ((byte & 0x7f) as u64) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if i >= n || w == 64 {
            return None;
        }
        out[i] |= high.checked_shl(w as u32)?;
    }
    Some(at)
}

/// Every this many blocks, a table's first row is kept in memory when the segment is opened:
/// a lookup binary-searches that in memory, then at most this many index records (two pages)
/// in the file. 128 blocks of 128 rows: ~2 KB of memory per million rows and table.
const TOP_EVERY: usize = 128;

/// Widen each column's smallest and largest value (`lo`, `hi`) to take in `row`.
fn widen(lo: &mut Row, hi: &mut Row, row: &[u64]) {
    for ((lo, hi), v) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
        *lo = (*lo).min(*v);
        *hi = (*hi).max(*v);
    }
}

/// The description of one table, as the directory records it.
#[derive(Debug, Clone)]
struct TableMeta {
    name: String,
    arity: usize,
    rows: u64,
    blocks: u64,
    index_at: u64,
    /// Filled at open: the first row of blocks 0, TOP_EVERY, 2 * TOP_EVERY, ...
    top: Vec<Row>,
    /// Filled at open: the table's last row (None when it is empty).
    last: Option<Row>,
    /// Each column's smallest and largest value (0s for an empty table).
    min: Row,
    max: Row,
    filter_at: u64,
    filter_blocks: u32,
    /// Filled at open: the filter, when the table has one.
    filter: Option<KeyFilter>,
}

impl TableMeta {
    fn new(name: &str, arity: usize) -> Self {
        TableMeta {
            name: name.to_string(),
            arity,
            rows: 0,
            blocks: 0,
            index_at: 0,
            top: Vec::new(),
            last: None,
            min: [u64::MAX; MAX_ARITY],
            max: [0; MAX_ARITY],
            filter_at: 0,
            filter_blocks: 0,
            filter: None,
        }
    }

    fn record_len(&self) -> usize {
        self.arity * 8 + 16
    }

    /// The fixed part of its directory entry, after the name.
    fn entry_len(arity: usize) -> usize {
        1 + 8 + 8 + 8 + 16 * arity + 8 + 4
    }
}

/// Writes a segment sequentially: tables one after the other, rows in order.
pub struct SegmentWriter {
    path: PathBuf,
    out: BufWriter<File>,
    at: u64,
    tables: Vec<TableMeta>,
    /// Per table: its block index, written after the blocks.
    indexes: Vec<Vec<u8>>,
    /// Per table: its filter's bytes (empty for none), written after the indexes.
    filters: Vec<Vec<u8>>,
    /// The current table's distinct first-column hashes, while it is filtered and under
    /// FILTER_MAX_KEYS.
    keys: Option<Vec<u64>>,
    /// FILTER_MAX_KEYS, lowered by tests.
    filter_max_keys: usize,
    current: Option<(usize, Vec<Row>)>,
    /// The last row pushed to the current table (the order check).
    last: Option<Row>,
    scratch: Vec<u64>,
    block: Vec<u8>,
    /// Synced to disk at the end (a segment of the index), or not (a sort's scratch run).
    durable: bool,
}

impl SegmentWriter {
    /// Create the segment file (it must not exist: segments are never overwritten).
    pub fn create(path: &Path) -> Result<Self> {
        Self::create_with(path, true)
    }

    /// A segment that is not synced to disk when finished: scratch data that a crash may lose.
    pub fn create_scratch(path: &Path) -> Result<Self> {
        Self::create_with(path, false)
    }

    fn create_with(path: &Path, durable: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(HEAD).map_err(|e| io(path, e))?;
        Ok(SegmentWriter {
            path: path.to_path_buf(),
            out,
            at: HEAD.len() as u64,
            tables: Vec::new(),
            indexes: Vec::new(),
            filters: Vec::new(),
            keys: None,
            filter_max_keys: FILTER_MAX_KEYS,
            current: None,
            last: None,
            scratch: Vec::new(),
            block: Vec::new(),
            durable,
        })
    }

    /// Start a table without a filter; the previous one, if any, ends.
    pub fn table(&mut self, name: &str, arity: usize) -> Result<()> {
        self.table_with(name, arity, false)
    }

    /// Start a table, with a filter over its first column's values when `filtered`.
    pub fn table_with(&mut self, name: &str, arity: usize, filtered: bool) -> Result<()> {
        if !(1..=MAX_ARITY).contains(&arity) || name.len() > u16::MAX as usize {
            return Err(corrupt(&self.path, format!("table {name:?} of arity {arity}")));
        }
        self.end_table()?;
        self.tables.push(TableMeta::new(name, arity));
        self.indexes.push(Vec::new());
        self.keys = filtered.then(Vec::new);
        self.last = None;
        self.current = Some((self.tables.len() - 1, Vec::with_capacity(BLOCK_ROWS)));
        Ok(())
    }

    /// Append a row to the current table; rows come in sorted order.
    pub fn push(&mut self, row: &[u64]) -> Result<()> {
        let Some((t, rows)) = self.current.as_mut() else {
            return Err(corrupt(&self.path, "a row written outside a table"));
        };
        let arity = self.tables[*t].arity;
        if row.len() != arity {
            return Err(corrupt(
                &self.path,
                format!("a row of {} columns in a table of {arity}", row.len()),
            ));
        }
        let mut r: Row = [0; MAX_ARITY];
        r[..arity].copy_from_slice(row);
        if self.last.is_some_and(|last| last > r) {
            return Err(corrupt(&self.path, "rows written out of order"));
        }
        if let Some(keys) = self.keys.as_mut() {
            if self.last.is_none_or(|last| last[0] != r[0]) {
                if keys.len() == self.filter_max_keys {
                    self.keys = None;
                } else {
                    keys.push(filter::hash(r[0]));
                }
            }
        }
        self.last = Some(r);
        rows.push(r);
        let meta = &mut self.tables[*t];
        meta.rows += 1;
        widen(&mut meta.min, &mut meta.max, &r[..arity]);
        if rows.len() == BLOCK_ROWS {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        let Some((t, rows)) = self.current.as_mut() else {
            return Ok(());
        };
        if rows.is_empty() {
            return Ok(());
        }
        let meta = &mut self.tables[*t];
        self.block.clear();
        for c in 0..meta.arity {
            residuals(rows, c, &mut self.scratch);
            encode_column(&self.scratch, &mut self.block);
        }
        let crc = crc32fast::hash(&self.block);
        self.block.extend_from_slice(&crc.to_le_bytes());
        let index = &mut self.indexes[*t];
        for v in &rows[0][..meta.arity] {
            index.extend_from_slice(&v.to_le_bytes());
        }
        index.extend_from_slice(&self.at.to_le_bytes());
        index.extend_from_slice(&(self.block.len() as u32).to_le_bytes());
        index.extend_from_slice(&(rows.len() as u32).to_le_bytes());
        meta.blocks += 1;
        self.out.write_all(&self.block).map_err(|e| io(&self.path, e))?;
        self.at += self.block.len() as u64;
        rows.clear();
        Ok(())
    }

    fn end_table(&mut self) -> Result<()> {
        self.flush_block()?;
        if self.current.take().is_some() {
            let keys = self.keys.take().filter(|k| !k.is_empty());
            self.filters.push(keys.map(|k| filter::build(&k)).unwrap_or_default());
        }
        Ok(())
    }

    /// Write the indexes, the metadata and the trailer, and sync the file to disk. The caller
    /// publishes the segment (renames it into place, records it in the manifest) afterwards.
    pub fn finish(mut self, meta: &[u8]) -> Result<u64> {
        self.end_table()?;
        let mut tail: Vec<u8> = Vec::new();
        let index_start = self.at;
        for (t, index) in self.tables.iter_mut().zip(&self.indexes) {
            t.index_at = index_start + tail.len() as u64;
            tail.extend_from_slice(index);
        }
        for (t, f) in self.tables.iter_mut().zip(&self.filters) {
            t.filter_at = index_start + tail.len() as u64;
            t.filter_blocks = (f.len() / filter::BLOCK_BYTES) as u32;
            tail.extend_from_slice(f);
        }
        let meta_at = index_start + tail.len() as u64;
        tail.extend_from_slice(meta);
        let dir_at = index_start + tail.len() as u64;
        let dir_start = tail.len();
        tail.extend_from_slice(&(self.tables.len() as u16).to_le_bytes());
        for t in &self.tables {
            tail.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
            tail.extend_from_slice(t.name.as_bytes());
            tail.push(t.arity as u8);
            tail.extend_from_slice(&t.rows.to_le_bytes());
            tail.extend_from_slice(&t.blocks.to_le_bytes());
            tail.extend_from_slice(&t.index_at.to_le_bytes());
            let empty = t.rows == 0;
            for v in t.min[..t.arity].iter().chain(&t.max[..t.arity]) {
                tail.extend_from_slice(&if empty { 0 } else { *v }.to_le_bytes());
            }
            tail.extend_from_slice(&t.filter_at.to_le_bytes());
            tail.extend_from_slice(&t.filter_blocks.to_le_bytes());
        }
        let dir_len = tail.len() - dir_start;
        let crc = crc32fast::hash(&tail);
        tail.extend_from_slice(&index_start.to_le_bytes());
        tail.extend_from_slice(&meta_at.to_le_bytes());
        tail.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        tail.extend_from_slice(&dir_at.to_le_bytes());
        tail.extend_from_slice(&(dir_len as u32).to_le_bytes());
        tail.extend_from_slice(&crc.to_le_bytes());
        tail.extend_from_slice(&VERSION.to_le_bytes());
        tail.extend_from_slice(TAIL);
        self.out.write_all(&tail).map_err(|e| io(&self.path, e))?;
        let file = self.out.into_inner().map_err(|e| io(&self.path, e.into_error()))?;
        if self.durable {
            file.sync_all().map_err(|e| io(&self.path, e))?;
        }
        Ok(index_start + tail.len() as u64)
    }
}

fn u64_le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn read_row(b: &[u8], arity: usize) -> Row {
    let mut r: Row = [0; MAX_ARITY];
    for (c, v) in r.iter_mut().take(arity).enumerate() {
        *v = u64_le(b, c * 8);
    }
    r
}

/// An open segment: memory-mapped, its indexes searched in place (opening reads only the
/// trailer and checks the indexes' checksum).
#[derive(Clone)]
pub struct Segment {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    map: memmap2::Mmap,
    tables: Vec<TableMeta>,
    meta: (usize, usize),
}

/// One table of a segment.
#[derive(Clone, Copy)]
pub struct Table<'a> {
    segment: &'a Inner,
    meta: &'a TableMeta,
}

impl Segment {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| io(path, e))?;
        // SAFETY: segments are immutable once published; the index never writes or truncates
        // a published segment (a new generation writes new files).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io(path, e))?;
        let bad = |what: &str| corrupt(path, what);
        if map.len() < HEAD.len() + TRAILER_LEN || &map[..HEAD.len()] != HEAD {
            return Err(bad("not a segment file (no header)"));
        }
        let t = &map[map.len() - TRAILER_LEN..];
        if &t[TRAILER_LEN - 8..] != TAIL {
            return Err(bad("not a whole segment file (no trailer): cut short?"));
        }
        let version = u32_le(t, 36);
        if version != VERSION {
            return Err(corrupt(
                path,
                format!("format version {version}; this build reads version {VERSION}"),
            ));
        }
        let index_start = u64_le(t, 0) as usize;
        let (meta_at, meta_len) = (u64_le(t, 8) as usize, u32_le(t, 16) as usize);
        let (dir_at, dir_len) = (u64_le(t, 20) as usize, u32_le(t, 28) as usize);
        let crc = u32_le(t, 32);
        let end = map.len() - TRAILER_LEN;
        if dir_at.checked_add(dir_len) != Some(end)
            || meta_at.checked_add(meta_len) != Some(dir_at)
            || index_start < HEAD.len()
            || index_start > meta_at
        {
            return Err(bad("trailer offsets out of place"));
        }
        if crc32fast::hash(&map[index_start..end]) != crc {
            return Err(bad("index checksum mismatch"));
        }
        let dir = &map[dir_at..end];
        let mut tables = Vec::new();
        let mut at = 2usize;
        let count = u16::from_le_bytes(dir.get(..2).ok_or_else(|| bad("directory"))?.try_into().expect("2"));
        for _ in 0..count {
            let name_len = dir
                .get(at..at + 2)
                .map(|b| u16::from_le_bytes(b.try_into().expect("2")) as usize)
                .ok_or_else(|| bad("directory"))?;
            at += 2;
            let name = dir.get(at..at + name_len).ok_or_else(|| bad("directory"))?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| bad("table name"))?;
            at += name_len;
            let arity = *dir.get(at).ok_or_else(|| bad("directory"))? as usize;
            if !(1..=MAX_ARITY).contains(&arity) {
                return Err(bad("table arity"));
            }
            let fixed = dir
                .get(at..at + TableMeta::entry_len(arity))
                .ok_or_else(|| bad("directory"))?;
            at += TableMeta::entry_len(arity);
            let mut t = TableMeta::new(&name, arity);
            t.rows = u64_le(fixed, 1);
            t.blocks = u64_le(fixed, 9);
            t.index_at = u64_le(fixed, 17);
            t.min = read_row(&fixed[25..], arity);
            t.max = read_row(&fixed[25 + 8 * arity..], arity);
            t.filter_at = u64_le(fixed, 25 + 16 * arity);
            t.filter_blocks = u32_le(fixed, 33 + 16 * arity);
            tables.push(t);
        }
        // A table's index and filter lie between the end of the blocks and the metadata.
        let in_tail = |at: u64, len: usize| {
            let at = at as usize;
            at.checked_add(len)
                .filter(|&end| at >= index_start && end <= meta_at)
                .map(|end| at..end)
        };
        for t in tables.iter_mut() {
            let len = (t.blocks as usize)
                .checked_mul(t.record_len())
                .ok_or_else(|| bad("table index size"))?;
            in_tail(t.index_at, len).ok_or_else(|| bad("table index out of place"))?;
            if t.filter_blocks > 0 {
                let at = in_tail(t.filter_at, t.filter_blocks as usize * filter::BLOCK_BYTES)
                    .ok_or_else(|| bad("table filter out of place"))?;
                t.filter = Some(KeyFilter::from_bytes(&map[at]).ok_or_else(|| bad("table filter"))?);
            }
        }
        let mut inner = Inner {
            path: path.to_path_buf(),
            map,
            tables,
            meta: (meta_at, meta_len),
        };
        // The in-memory top level of each table's block index, and its last row (the last
        // block is decoded, and so checked, here).
        let mut tops = Vec::with_capacity(inner.tables.len());
        for meta in &inner.tables {
            let t = Table { segment: &inner, meta };
            let top: Vec<Row> = (0..t.blocks()).step_by(TOP_EVERY).map(|b| t.first(b)).collect();
            let mut buf = Vec::new();
            let last = match t.blocks() {
                0 => None,
                n => {
                    t.block(n - 1, &mut buf)?;
                    buf.last().copied()
                }
            };
            tops.push((top, last));
        }
        for (meta, (top, last)) in inner.tables.iter_mut().zip(tops) {
            meta.top = top;
            meta.last = last;
        }
        Ok(Segment { inner: Arc::new(inner) })
    }

    /// Tell the kernel that this mapping is read at random (point lookups): a page fault then
    /// reads the page, not the pages around it. Merges open their own mapping without it.
    pub fn advise_random(&self) {
        let _ = self.inner.map.advise(memmap2::Advice::Random);
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The metadata written by [`SegmentWriter::finish`].
    pub fn meta(&self) -> &[u8] {
        &self.inner.map[self.inner.meta.0..self.inner.meta.0 + self.inner.meta.1]
    }

    /// Drop the segment's pages from this process's memory (they are read from the file, or
    /// the page cache, at the next access). Cold-cache benchmarks use it.
    pub fn drop_pages(&self) {
        // SAFETY: as for releasing iterators: the map is read-only and the file immutable, so a
        // dropped page reads back the same bytes. A failed advice leaves the pages.
        let _ = unsafe {
            self.inner
                .map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, self.inner.map.len())
        };
    }

    /// The file's size.
    pub fn bytes(&self) -> u64 {
        self.inner.map.len() as u64
    }

    pub fn table(&self, name: &str) -> Option<Table<'_>> {
        self.inner.tables.iter().find(|t| t.name == name).map(|meta| Table {
            segment: &self.inner,
            meta,
        })
    }

    /// Decode every block of every table, checking each checksum and the order of rows.
    pub fn verify(&self) -> Result<()> {
        for meta in &self.inner.tables {
            let t = Table {
                segment: &self.inner,
                meta,
            };
            let mut last: Option<Row> = None;
            let mut rows = 0u64;
            let mut buf = Vec::new();
            let (mut min, mut max) = ([u64::MAX; MAX_ARITY], [0; MAX_ARITY]);
            let bad = |what: &str| corrupt(&self.inner.path, format!("table {} {what}", meta.name));
            for b in 0..meta.blocks as usize {
                t.block(b, &mut buf)?;
                if last.is_some_and(|l| l > buf[0]) || buf.windows(2).any(|w| w[0] > w[1]) {
                    return Err(bad("is out of order"));
                }
                for r in &buf {
                    widen(&mut min, &mut max, &r[..meta.arity]);
                }
                if let Some(f) = &meta.filter {
                    if buf.iter().any(|r| !f.may_contain(r[0])) {
                        return Err(bad("has a filter that misses one of its keys"));
                    }
                }
                last = buf.last().copied();
                rows += buf.len() as u64;
            }
            if rows > 0 && (min[..meta.arity] != meta.min[..meta.arity] || max[..meta.arity] != meta.max[..meta.arity])
            {
                return Err(bad("has statistics that do not match its rows"));
            }
            if rows != meta.rows {
                return Err(corrupt(
                    &self.inner.path,
                    format!("table {} has {rows} rows, not {}", meta.name, meta.rows),
                ));
            }
        }
        Ok(())
    }
}

impl<'a> Table<'a> {
    pub fn rows(&self) -> u64 {
        self.meta.rows
    }

    pub fn arity(&self) -> usize {
        self.meta.arity
    }

    fn record(&self, b: usize) -> &'a [u8] {
        let len = self.meta.record_len();
        let at = self.meta.index_at as usize + b * len;
        &self.segment.map[at..at + len]
    }

    /// The first row of block `b`.
    fn first(&self, b: usize) -> Row {
        read_row(self.record(b), self.meta.arity)
    }

    pub fn blocks(&self) -> usize {
        self.meta.blocks as usize
    }

    /// The bytes the table takes in the file: its blocks and its block index.
    pub fn bytes(&self) -> u64 {
        let arity = self.meta.arity;
        let blocks: u64 = (0..self.blocks())
            .map(|b| u32_le(self.record(b), arity * 8 + 8) as u64)
            .sum();
        blocks + self.meta.blocks * self.meta.record_len() as u64
    }

    /// Decode block `b` into `out`.
    pub fn block(&self, b: usize, out: &mut Vec<Row>) -> Result<()> {
        let arity = self.meta.arity;
        let rec = self.record(b);
        let (at, len, n) = (
            u64_le(rec, arity * 8) as usize,
            u32_le(rec, arity * 8 + 8) as usize,
            u32_le(rec, arity * 8 + 12) as usize,
        );
        let path = &self.segment.path;
        let bad = |what: String| corrupt(path, format!("table {} block {b}: {what}", self.meta.name));
        if n == 0 || n > BLOCK_ROWS || len < 4 {
            return Err(bad("malformed index entry".into()));
        }
        let bytes = at
            .checked_add(len)
            .and_then(|end| self.segment.map.get(at..end))
            .ok_or_else(|| bad("out of the file".into()))?;
        let (body, crc) = bytes.split_at(len - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4")) {
            return Err(bad("checksum mismatch".into()));
        }
        out.clear();
        out.resize(n, [0; MAX_ARITY]);
        out[0] = self.first(b);
        let mut values = [0u64; BLOCK_ROWS];
        let mut pos = 0usize;
        // same[i]: row i's columns so far equal row i-1's (its next column is then a plain
        // difference, as `sorted_column` decided when encoding).
        let mut same = [true; BLOCK_ROWS];
        // How many of rows 1..n have `same` set: when all or none do (column 0; a table whose
        // first column is unique, as `rows` is), the column is a plain running sum.
        let mut same_rows = n - 1;
        for c in 0..arity {
            let used = decode_column(&body[pos..], n - 1, &mut values).ok_or_else(|| bad(format!("column {c}")))?;
            pos += used;
            let mut prev = out[0][c];
            let rows = out[1..n].iter_mut().zip(&values[..n - 1]);
            if same_rows == 0 {
                for (row, &d) in rows {
                    prev = prev.wrapping_add(unzigzag(d) as u64);
                    row[c] = prev;
                }
            } else if same_rows == n - 1 {
                for (row, &d) in rows {
                    prev = prev.wrapping_add(d);
                    row[c] = prev;
                }
            } else {
                for ((row, &d), same) in rows.zip(&same[1..n]) {
                    prev = prev.wrapping_add(if *same { d } else { unzigzag(d) as u64 });
                    row[c] = prev;
                }
            }
            if same_rows > 0 {
                same_rows = 0;
                for (s, &d) in same[1..n].iter_mut().zip(&values[..n - 1]) {
                    *s &= d == 0;
                    same_rows += *s as usize;
                }
            }
        }
        if pos != body.len() {
            return Err(bad("trailing bytes".into()));
        }
        Ok(())
    }

    /// The number of leading blocks whose first row, compared with `key` on its columns,
    /// satisfies `before` (a predicate true for a prefix of the blocks: a binary search, first
    /// over the in-memory top level, then over at most [`TOP_EVERY`] records of the file).
    fn blocks_before(&self, key: &[u64], before: impl Fn(std::cmp::Ordering) -> bool) -> usize {
        let top = &self.meta.top;
        // Top entries t < k satisfy `before`: the answer is in blocks (k-1)*E+1 ..= k*E.
        let k = top.partition_point(|r| before(cmp_prefix(r, key)));
        if k == 0 {
            return 0;
        }
        let (mut lo, mut hi) = ((k - 1) * TOP_EVERY + 1, (k * TOP_EVERY).min(self.blocks()));
        while lo < hi {
            let mid = (lo + hi) / 2;
            if before(cmp_prefix(&self.first(mid), key)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The first block that may hold a row >= `key` (compared on `key`'s columns only).
    fn lower_block(&self, key: &[u64]) -> usize {
        // The last block whose first row is < key holds the first row >= key, or the block after.
        self.blocks_before(key, |o| o.is_lt()).saturating_sub(1)
    }

    /// False when no row of the table can start with `prefix`: it is outside the table's first
    /// and last rows, or the table's filter rules its first column out. A lookup then skips the
    /// table without reading it.
    pub fn may_hold(&self, prefix: &[u64]) -> bool {
        let in_range = match (self.meta.top.first(), &self.meta.last) {
            (Some(first), Some(last)) => cmp_prefix(first, prefix).is_le() && cmp_prefix(last, prefix).is_ge(),
            _ => false,
        };
        in_range
            && match (&self.meta.filter, prefix.first()) {
                (Some(f), Some(&k)) => f.may_contain(k),
                _ => true,
            }
    }

    /// Column `c`'s smallest value in the table (0 when it is empty).
    pub fn min(&self, c: usize) -> u64 {
        self.meta.min[c]
    }

    /// Column `c`'s largest value in the table (0 when it is empty).
    pub fn max(&self, c: usize) -> u64 {
        self.meta.max[c]
    }

    /// Whether the table has a filter over its first column.
    pub fn filtered(&self) -> bool {
        self.meta.filter.is_some()
    }

    /// Every row whose first columns equal `prefix`, in order.
    pub fn scan_prefix(&self, prefix: &[u64], out: &mut Vec<Row>) -> Result<()> {
        out.clear();
        let mut buf = Vec::with_capacity(BLOCK_ROWS);
        for b in self.lower_block(prefix)..self.blocks() {
            if cmp_prefix(&self.first(b), prefix).is_gt() {
                break;
            }
            self.block(b, &mut buf)?;
            out.extend(buf.iter().filter(|r| cmp_prefix(r, prefix).is_eq()));
            if buf.last().is_some_and(|r| cmp_prefix(r, prefix).is_gt()) {
                break;
            }
        }
        Ok(())
    }

    /// The rows whose first columns equal `prefix`, last first, to `f` until it returns false:
    /// the end of a run of rows without decoding its beginning.
    pub fn scan_prefix_rev(&self, prefix: &[u64], mut f: impl FnMut(&Row) -> bool) -> Result<()> {
        // The rows are in the blocks before the first one whose first row is past the prefix.
        let lo = self.blocks_before(prefix, |o| o.is_le());
        let mut buf = Vec::with_capacity(BLOCK_ROWS);
        for b in (0..lo).rev() {
            self.block(b, &mut buf)?;
            for r in buf.iter().rev() {
                match cmp_prefix(r, prefix) {
                    std::cmp::Ordering::Greater => continue,
                    std::cmp::Ordering::Less => return Ok(()),
                    std::cmp::Ordering::Equal => {
                        if !f(r) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The rows whose first column is each of `keys` (ascending; a table whose first column
    /// is unique, as `rows` is by ordinal), decoding each block once however many keys fall in
    /// it. Keys without a row are skipped.
    pub fn get_sorted(&self, keys: &[u64], out: &mut Vec<Row>) -> Result<()> {
        out.clear();
        let mut buf = Vec::with_capacity(BLOCK_ROWS);
        let mut current = None;
        for &k in keys {
            // The last block whose first row is <= k holds k, if any does.
            let Some(b) = self.blocks_before(&[k], |o| o.is_le()).checked_sub(1) else {
                continue;
            };
            if current != Some(b) {
                self.block(b, &mut buf)?;
                current = Some(b);
            }
            if let Ok(i) = buf.binary_search_by(|r| r[0].cmp(&k)) {
                out.push(buf[i]);
            }
        }
        Ok(())
    }

    /// Every row in order, block by block (merges and dumps).
    pub fn iter(&self) -> TableIter<'a> {
        TableIter {
            table: *self,
            block: 0,
            buf: Vec::with_capacity(BLOCK_ROWS),
            at: 0,
            release: false,
            released: 0,
        }
    }
}

/// Pages dropped at a time by a releasing iterator.
const RELEASE_BYTES: usize = 4 << 20;

/// The rows of a table, in order.
pub struct TableIter<'a> {
    table: Table<'a>,
    block: usize,
    buf: Vec<Row>,
    at: usize,
    release: bool,
    /// Where the pages dropped so far end.
    released: usize,
}

impl TableIter<'_> {
    /// Drop the pages of the blocks already read from memory as the iteration goes (a merge
    /// reads each segment once: its pages would otherwise stay in the process's RSS).
    pub fn releasing(mut self) -> Self {
        self.release = true;
        self
    }

    fn release_before(&mut self, offset: usize) {
        let from = self.released;
        let to = offset / 4096 * 4096;
        if !self.release || to < from + RELEASE_BYTES {
            return;
        }
        // SAFETY: the map is read-only and private to this segment; dropping its pages makes
        // the next access read them from the file again, the same bytes (segments are
        // immutable). The failure of the advice is harmless (the pages stay).
        let _ = unsafe {
            self.table
                .segment
                .map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
        };
        self.released = to;
    }
}

impl Iterator for TableIter<'_> {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.at == self.buf.len() {
            if self.block == self.table.blocks() {
                return None;
            }
            if let Err(e) = self.table.block(self.block, &mut self.buf) {
                self.block = self.table.blocks();
                self.buf.clear();
                self.at = 0;
                return Some(Err(e));
            }
            let start = u64_le(self.table.record(self.block), self.table.meta.arity * 8) as usize;
            self.release_before(start);
            self.block += 1;
            self.at = 0;
        }
        self.at += 1;
        Some(Ok(self.buf[self.at - 1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, tables: &[(&str, usize, Vec<Row>)]) -> Segment {
        let path = dir.join("s.seg");
        let mut w = SegmentWriter::create(&path).unwrap();
        for (i, (name, arity, rows)) in tables.iter().enumerate() {
            // Every other table with a filter: lookups must agree either way.
            w.table_with(name, *arity, i % 2 == 1).unwrap();
            for r in rows {
                w.push(&r[..*arity]).unwrap();
            }
        }
        w.finish(b"{\"hello\":1}").unwrap();
        Segment::open(&path).unwrap()
    }

    use crate::TestRng as Rng;

    /// Write `bytes` as the segment at `path` and open it: the error it must be refused with.
    fn refused(path: &Path, bytes: &[u8]) -> String {
        std::fs::write(path, bytes).unwrap();
        match Segment::open(path) {
            Ok(_) => panic!("a damaged segment was opened"),
            Err(e) => e.to_string(),
        }
    }

    fn random_rows(rng: &mut Rng, n: usize, arity: usize) -> Vec<Row> {
        let mut rows: Vec<Row> = (0..n)
            .map(|_| {
                let mut r = [0; MAX_ARITY];
                for v in r.iter_mut().take(arity) {
                    // Mixed magnitudes: small groups, wide values, the extremes.
                    *v = match rng.next() % 5 {
                        0 => rng.next() % 4,
                        1 => rng.next() % 1000,
                        2 => u64::MAX - rng.next() % 3,
                        _ => rng.next(),
                    };
                }
                r
            })
            .collect();
        rows.sort_unstable();
        rows
    }

    #[test]
    fn tables_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for n in [0usize, 1, 2, 127, 128, 129, 1000, 5000] {
            let d = dir.path().join(n.to_string());
            std::fs::create_dir(&d).unwrap();
            let tables: Vec<(&str, usize, Vec<Row>)> = (1..=MAX_ARITY)
                .map(|a| (["a", "b", "c", "d"][a - 1], a, random_rows(&mut rng, n, a)))
                .collect();
            let s = write(&d, &tables);
            s.verify().unwrap();
            assert_eq!(s.meta(), b"{\"hello\":1}");
            for (name, _, rows) in &tables {
                let t = s.table(name).unwrap();
                let back: Vec<Row> = t.iter().collect::<Result<_>>().unwrap();
                assert_eq!(&back, rows, "table {name} of {n} rows");
                // Prefix scans agree with a filter of the rows, for present and absent keys.
                for probe in rows
                    .iter()
                    .take(50)
                    .chain([[0u64; MAX_ARITY], [u64::MAX; MAX_ARITY]].iter())
                {
                    for len in 1..=t.arity() {
                        let mut got = Vec::new();
                        t.scan_prefix(&probe[..len], &mut got).unwrap();
                        let want: Vec<Row> = rows.iter().filter(|r| r[..len] == probe[..len]).copied().collect();
                        assert_eq!(got, want);
                        let mut back = Vec::new();
                        t.scan_prefix_rev(&probe[..len], |r| {
                            back.push(*r);
                            true
                        })
                        .unwrap();
                        back.reverse();
                        assert_eq!(back, want);
                    }
                }
            }
        }
    }

    #[test]
    fn sorted_keys_are_found_each_block_decoded_once() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<Row> = (0..1000u64).map(|i| [i * 3, i, 0, 0]).collect();
        let seg = write(dir.path(), &[("t", 2, rows)]);
        let t = seg.table("t").unwrap();
        let mut out = Vec::new();
        t.get_sorted(&[0, 1, 3, 4, 383, 384, 387, 2997, 3000], &mut out)
            .unwrap();
        let firsts: Vec<u64> = out.iter().map(|r| r[0]).collect();
        assert_eq!(firsts, vec![0, 3, 384, 387, 2997]);
        assert!(out.iter().all(|r| r[0] == r[1] * 3));
        t.get_sorted(&[], &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn lookups_through_the_top_level_find_every_key_at_every_block_boundary() {
        // 300,000 rows of keys 10, 12, 14, ... (each twice): 2,344 blocks, 19 top entries.
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<Row> = (0..300_000u64).map(|i| [10 + (i / 2) * 2, i, 0, 0]).collect();
        let seg = write(dir.path(), &[("t", 2, rows)]);
        let t = seg.table("t").unwrap();
        assert!(t.blocks() > 10 * TOP_EVERY);
        let mut out = Vec::new();
        let boundaries = (0..t.blocks()).flat_map(|b| [b * BLOCK_ROWS, b * BLOCK_ROWS + BLOCK_ROWS - 1]);
        for i in boundaries.filter(|i| *i < 300_000).chain([0, 299_999]) {
            let key = 10 + (i as u64 / 2) * 2;
            t.scan_prefix(&[key], &mut out).unwrap();
            assert_eq!(out.len(), 2, "key {key}");
            assert!(out.iter().all(|r| r[0] == key));
            let mut back = Vec::new();
            t.scan_prefix_rev(&[key], |r| {
                back.push(r[1]);
                true
            })
            .unwrap();
            assert_eq!(back, vec![out[1][1], out[0][1]]);
            assert!(t.may_hold(&[key]));
            // Odd keys are between rows: found nowhere.
            t.scan_prefix(&[key + 1], &mut out).unwrap();
            assert!(out.is_empty());
        }
        assert!(!t.may_hold(&[9]) && !t.may_hold(&[10 + 300_000]));
        t.scan_prefix(&[9], &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn runs_of_equal_values_cost_almost_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // One group of 100,000 rows with consecutive ordinals: ~2 bytes per block and column,
        // plus the block's index record.
        let rows: Vec<Row> = (0..100_000u64).map(|i| [7, i, 0, 0]).collect();
        let s = write(dir.path(), &[("t", 2, rows)]);
        assert!(s.bytes() < 100_000 / 128 * 60, "{} bytes", s.bytes());
    }

    #[test]
    fn damage_is_an_error_naming_the_segment_never_wrong_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(42);
        let rows = random_rows(&mut rng, 1000, 3);
        let path = dir.path().join("s.seg");
        write(dir.path(), &[("t", 3, rows)]);
        let good = std::fs::read(&path).unwrap();
        // A flipped bit in a block: found when the block is decoded, and by verify.
        let mut bad = good.clone();
        bad[HEAD.len() + 10] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let s = Segment::open(&path).unwrap();
        let e = s.verify().unwrap_err().to_string();
        assert!(e.contains("s.seg") && e.contains("checksum"), "{e}");
        assert!(s.table("t").unwrap().iter().any(|r| r.is_err()));
        // A flipped bit in an index: refused at open.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - TRAILER_LEN - 3] ^= 1;
        let e = refused(&path, &bad);
        assert!(e.contains("checksum"), "{e}");
        // Cut short, or another version: refused at open.
        assert!(refused(&path, &good[..good.len() - 5]).contains("cut short"));
        let mut other = good.clone();
        let v = other.len() - 12;
        other[v..v + 4].copy_from_slice(&1u32.to_le_bytes());
        assert!(refused(&path, &other).contains("version 1"));
    }

    #[test]
    fn statistics_and_filters_round_trip_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(11);
        let rows = random_rows(&mut rng, 3000, 3);
        let path = dir.path().join("s.seg");
        {
            let mut w = SegmentWriter::create(&path).unwrap();
            w.table_with("f", 3, true).unwrap();
            for r in &rows {
                w.push(&r[..3]).unwrap();
            }
            w.table("u", 3).unwrap();
            for r in &rows {
                w.push(&r[..3]).unwrap();
            }
            w.finish(b"").unwrap();
        }
        let s = Segment::open(&path).unwrap();
        s.verify().unwrap();
        let (f, u) = (s.table("f").unwrap(), s.table("u").unwrap());
        assert!(f.filtered() && !u.filtered());
        for c in 0..3 {
            let want = (
                rows.iter().map(|r| r[c]).min().unwrap(),
                rows.iter().map(|r| r[c]).max().unwrap(),
            );
            assert_eq!((f.min(c), f.max(c)), want, "column {c}");
            assert_eq!((u.min(c), u.max(c)), want, "column {c}");
        }
        // No false negatives; absent keys are mostly ruled out by the filter (the tables' key
        // ranges span nearly all of u64, so the range check alone would let them through).
        assert!(rows.iter().all(|r| f.may_hold(&[r[0]]) && f.may_hold(&r[..2])));
        let present: std::collections::HashSet<u64> = rows.iter().map(|r| r[0]).collect();
        let absent: Vec<u64> = (0..20_000)
            .map(|_| rng.next())
            .filter(|k| !present.contains(k) && *k > rows[0][0] && *k < rows[rows.len() - 1][0])
            .collect();
        let passed = absent.iter().filter(|k| f.may_hold(&[**k])).count();
        assert!(
            passed * 50 < absent.len(),
            "{passed} of {} absent keys passed",
            absent.len()
        );
        assert!(absent.iter().all(|k| u.may_hold(&[*k])));
        // A flipped bit in the filter: the trailer's checksum refuses the segment at open.
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        let at = f.meta.filter_at as usize + 5;
        bad[at] ^= 0x04;
        let e = refused(&path, &bad);
        assert!(e.contains("s.seg") && e.contains("checksum"), "{e}");
    }

    #[test]
    fn a_table_past_the_filter_bound_is_written_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.seg");
        let mut w = SegmentWriter::create(&path).unwrap();
        w.table_with("t", 1, true).unwrap();
        w.filter_max_keys = 100;
        for k in 0..101u64 {
            w.push(&[k]).unwrap();
        }
        w.table_with("small", 1, true).unwrap();
        for k in 0..100u64 {
            w.push(&[k]).unwrap();
        }
        w.finish(b"").unwrap();
        let s = Segment::open(&path).unwrap();
        s.verify().unwrap();
        assert!(!s.table("t").unwrap().filtered());
        assert!(s.table("small").unwrap().filtered());
        assert!(s.table("t").unwrap().may_hold(&[100]));
    }

    #[test]
    fn rows_out_of_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(&dir.path().join("s.seg")).unwrap();
        w.table("t", 1).unwrap();
        w.push(&[5]).unwrap();
        assert!(w.push(&[4]).is_err());
    }

    #[test]
    fn pfor_round_trips_every_width() {
        let mut rng = Rng(7);
        for w in 0..=64u32 {
            let values: Vec<u64> = (0..127)
                .map(|i| {
                    let v = if w == 64 {
                        rng.next()
                    } else {
                        rng.next() & ((1u64 << w) - 1)
                    };
                    if i % 17 == 0 {
                        rng.next()
                    } else {
                        v
                    }
                })
                .collect();
            let mut out = Vec::new();
            encode_column(&values, &mut out);
            let mut back = [0u64; BLOCK_ROWS];
            assert_eq!(decode_column(&out, values.len(), &mut back), Some(out.len()));
            assert_eq!(&back[..values.len()], &values[..]);
        }
    }
}
