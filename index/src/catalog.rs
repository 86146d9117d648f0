//! The file catalog of a dataset: which files are indexed, at which version (size, ETag,
//! modification time), with which row groups and base ordinal, and where their metadata starts.
//! Scans plan from it; the id segments map ids to ordinals, and the catalog turns ordinals into
//! locations.
//!
//! Entries change only in a generation's commit ([`crate::manifest::SegmentDir::commit`]),
//! together with the segments that index their rows: an ordinal that falls in no entry's range
//! belongs to a dropped or changed file and is masked.

use crate::keys;
use crate::Result;

/// What a dataset's catalog holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CatalogSummary {
    pub files: usize,
    pub alerts: u64,
    pub bytes: u64,
}

/// The catalog entry of one indexed (committed) file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEntry {
    pub file_id: u64,
    /// The file's rows are alert ordinals `base_ordinal + position` in the id segments.
    pub base_ordinal: u64,
    /// Path inside the dataset's store (as object_store names it).
    pub path: String,
    pub size: u64,
    pub e_tag: Option<String>,
    /// Milliseconds since the epoch.
    pub last_modified_ms: i64,
    /// Rows of each row group.
    pub row_groups: Vec<u64>,
    /// Bytes at the end of the file after the last column chunk: the footer, page indexes
    /// (and bloom filters). A reader fetches exactly this suffix to open the file in one read.
    /// 0 when unknown (entries written by older versions).
    pub metadata_len: u64,
    /// Alerts per night and class, counted when the file was indexed. None for entries written
    /// before statistics existed (the file is then planned as if it held every night and class).
    pub stats: Option<FileStats>,
}

/// What the catalog knows of a file's content: how many alerts of each night and class it holds.
/// Scans plan from it (nights and classes prune files) and estimates come from it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileStats {
    /// The class definition the counts were made with ("" when the dataset has none); a file
    /// counted with another definition is counted again by the next build.
    pub class_key: String,
    /// Sorted, one entry per (night, class) present.
    pub counts: Vec<NightClass>,
}

/// Alerts of one night and class in one file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NightClass {
    /// Days since 1970-01-01 of the UTC date of the alert time; None for alerts without a time.
    pub night: Option<i32>,
    /// None for alerts without a class (or datasets without one).
    pub class: Option<String>,
    pub rows: u64,
}

impl FileStats {
    /// The nights present, sorted.
    pub fn nights(&self) -> Vec<Option<i32>> {
        let mut v: Vec<Option<i32>> = self.counts.iter().map(|c| c.night).collect();
        v.dedup();
        v
    }
}

impl FileEntry {
    /// The version of the file the index recorded: what a reader of it expects.
    pub fn version(&self) -> astroflight_reader::FileVersion {
        astroflight_reader::FileVersion {
            size: self.size,
            e_tag: self.e_tag.clone(),
            last_modified_ms: self.last_modified_ms,
        }
    }

    /// The file is unchanged if its size, and its etag or modification time, are the same.
    pub fn same_version(&self, meta: &object_store::ObjectMeta) -> bool {
        self.size == meta.size
            && match (&self.e_tag, &meta.e_tag) {
                (Some(a), Some(b)) => a == b,
                _ => self.last_modified_ms == meta.last_modified.timestamp_millis(),
            }
    }

    /// The alerts (rows) of the file.
    pub fn rows(&self) -> u64 {
        self.row_groups.iter().sum()
    }
}

/// The catalog tree of one dataset.
#[derive(Clone)]
pub struct Catalog {
    pub(crate) files: sled::Tree,
}

impl Catalog {
    /// True when the file's entry is committed.
    pub fn contains(&self, file_id: u64) -> Result<bool> {
        Ok(self.files.contains_key(file_id.to_be_bytes())?)
    }

    /// The committed entry of a file.
    pub fn file(&self, file_id: u64) -> Result<Option<FileEntry>> {
        match self.files.get(file_id.to_be_bytes())? {
            Some(v) => keys::decode_file_entry(file_id, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every committed file, in file id order.
    pub fn files(&self) -> Result<Vec<FileEntry>> {
        self.files
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                keys::decode_file_entry(keys::u64_at(&k, 0)?, &v)
            })
            .collect()
    }

    /// Committed files, their alerts (counting copies) and bytes, from one catalog scan.
    pub fn summary(&self) -> Result<CatalogSummary> {
        let mut s = CatalogSummary::default();
        for kv in self.files.iter() {
            let (k, v) = kv?;
            let f = keys::decode_file_entry(keys::u64_at(&k, 0)?, &v)?;
            s.files += 1;
            s.alerts += f.rows();
            s.bytes += f.size;
        }
        Ok(s)
    }
}
