//! The embedded alert index of astroflight.
//!
//! A lake file is one parquet file of alerts, as Spark writes them: a few row groups, each
//! holding every column of a run of rows in column chunks made of pages.
//!
//! ```text
//!  file ─┬─ row group 0 ─┬─ objectId  chunk ─ [page][page]...
//!        │               ├─ candid    chunk ─ [page]
//!        │               ├─ candidate chunks (jd, ra, dec, magpsf ...)
//!        │               └─ cutoutScience.stampData chunk ─ [page ~1 MB, ~60 rows][page]...
//!        ├─ row group 1 ...
//!        └─ footer (schema, row group and chunk offsets) + offset index (page offsets/first rows)
//! ```
//!
//! The index maps ids to a [`Location`] (file, row group, row within the row group). With the
//! offset index of the footer, the server turns that into the byte range of the one page of each
//! cutout column that holds the row. Building the index reads only footers and the id columns.
//!
//! Per dataset it keeps, in sled trees named `{dataset}/{tree}`:
//!
//! | tree      | key                                   | value                              |
//! |-----------|---------------------------------------|------------------------------------|
//! | `files`   | file id                               | [`FileEntry`] (the commit record)  |
//! | `obj`     | objectId 0x00 candid file id          | row group, row, jd                 |
//! | `candid`  | candid file id                        | row group, row, jd, objectId       |
//! | `dia`     | diaSourceId file id                   | row group, row, mjd, diaObjectId   |
//! | `diaobj`  | diaObjectId diaSourceId file id       | row group, row, mjd                |
//! | `byfile`  | file id, ordinal                      | the id pair the row added          |
//!
//! Integers are big-endian with the sign bit flipped, so that byte order is numeric order.
//! The same alert may sit in several files (Fink's raw and science lakes both hold it): every
//! key ends with the file id, and lookups keep the first copy of each alert.
//!
//! **Crash safety.** A file's ids are written first, then flushed, then its `files` entry, the
//! commit record. Lookups ignore ids whose file has no commit record, so readers never see half a
//! file; the next build finds file ids listed in `byfile` without a commit record and removes
//! their rows. A file is dropped in the reverse order (commit record first).

mod build;
mod keys;
pub mod reader;

use std::path::Path;
use std::sync::Arc;

pub use build::{is_data_file, BuildStats, IndexBuilder};

/// The survey a dataset holds, which decides its id columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SurveyKind {
    /// ZTF alerts: `objectId`, `candid`, `candidate.jd`; cutouts are structs with gzipped FITS.
    Ztf,
    /// Rubin alerts: `diaSource.diaSourceId`, `diaSource.diaObjectId`,
    /// `diaSource.midpointMjdTai`; cutouts are plain FITS binaries.
    Lsst,
}

impl SurveyKind {
    pub fn name(self) -> &'static str {
        match self {
            SurveyKind::Ztf => "ztf",
            SurveyKind::Lsst => "lsst",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot read {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot index {path}: {message}")]
    File { path: String, message: String },
    #[error("index is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid dataset name {0:?}: use letters, digits, '_' and '-'")]
    DatasetName(String),
}

impl IndexError {
    /// True when the failure is the storage's (retrying later may help), not the data's.
    pub fn is_storage(&self) -> bool {
        matches!(self, IndexError::Storage { .. })
    }
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// Where one alert's row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub file_id: u64,
    pub row_group: u32,
    /// Row number within the row group.
    pub row: u32,
}

/// One ZTF alert in the index.
#[derive(Debug, Clone, PartialEq)]
pub struct ZtfHit {
    pub object_id: String,
    pub candid: i64,
    pub jd: f64,
    pub location: Location,
}

/// One Rubin alert in the index.
#[derive(Debug, Clone, PartialEq)]
pub struct LsstHit {
    pub dia_source_id: i64,
    pub dia_object_id: i64,
    pub mjd: f64,
    pub location: Location,
}

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
}

impl FileEntry {
    /// The file is unchanged if its size, and its etag or modification time, are the same.
    pub fn same_version(&self, meta: &object_store::ObjectMeta) -> bool {
        self.size == meta.size
            && match (&self.e_tag, &meta.e_tag) {
                (Some(a), Some(b)) => a == b,
                _ => self.last_modified_ms == meta.last_modified.timestamp_millis(),
            }
    }
}

/// The index database: one sled database holding the trees of every dataset.
#[derive(Clone)]
pub struct Index {
    db: sled::Db,
}

/// The trees of one dataset.
#[derive(Clone)]
pub struct DatasetIndex {
    name: Arc<str>,
    files: sled::Tree,
    obj: sled::Tree,
    candid: sled::Tree,
    dia: sled::Tree,
    diaobj: sled::Tree,
    byfile: sled::Tree,
    db: sled::Db,
}

impl Index {
    /// Open (or create) the index in a directory. Only one process may hold it open.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new().path(dir).cache_capacity(256 << 20).open()?;
        Ok(Index { db })
    }

    /// A throwaway in-memory index (tests and benchmarks).
    pub fn temporary() -> Result<Self> {
        Ok(Index {
            db: sled::Config::new().temporary(true).open()?,
        })
    }

    pub fn dataset(&self, name: &str) -> Result<DatasetIndex> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(IndexError::DatasetName(name.to_string()));
        }
        let t = |tree: &str| self.db.open_tree(format!("{name}/{tree}"));
        Ok(DatasetIndex {
            name: name.into(),
            files: t("files")?,
            obj: t("obj")?,
            candid: t("candid")?,
            dia: t("dia")?,
            diaobj: t("diaobj")?,
            byfile: t("byfile")?,
            db: self.db.clone(),
        })
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

impl DatasetIndex {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn committed(&self, file_id: u64) -> Result<bool> {
        Ok(self.files.contains_key(file_id.to_be_bytes())?)
    }

    /// The committed catalog entry of a file.
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

    /// Every alert of a ZTF object, oldest first (by jd, then candid); one copy per candid.
    pub fn object_alerts(&self, object_id: &str) -> Result<Vec<ZtfHit>> {
        let prefix = keys::obj_prefix(object_id);
        let mut hits: Vec<ZtfHit> = Vec::new();
        for kv in self.obj.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let (candid, file_id) = keys::decode_obj_key(&k, prefix.len())?;
            if !self.committed(file_id)? {
                continue;
            }
            if hits.last().is_some_and(|h| h.candid == candid) {
                continue; // a second copy of the same alert in another file
            }
            let (row_group, row, jd) = keys::decode_obj_value(&v)?;
            hits.push(ZtfHit {
                object_id: object_id.to_string(),
                candid,
                jd,
                location: Location {
                    file_id,
                    row_group,
                    row,
                },
            });
        }
        hits.sort_by(|a, b| a.jd.total_cmp(&b.jd).then(a.candid.cmp(&b.candid)));
        Ok(hits)
    }

    /// The latest alert (max jd) of a ZTF object.
    pub fn latest_alert(&self, object_id: &str) -> Result<Option<ZtfHit>> {
        Ok(self.object_alerts(object_id)?.pop())
    }

    /// The first copy of an id (in file id order) whose file is committed: its file id and value.
    /// Ids of the `candid` and `dia` trees are keyed `id file_id`.
    fn first_committed(&self, tree: &sled::Tree, id: i64) -> Result<Option<(u64, sled::IVec)>> {
        for kv in tree.scan_prefix(keys::i64_key(id)) {
            let (k, v) = kv?;
            let file_id = keys::u64_at(&k, 8)?;
            if self.committed(file_id)? {
                return Ok(Some((file_id, v)));
            }
        }
        Ok(None)
    }

    /// One ZTF alert by candid (the first committed copy).
    pub fn candid(&self, candid: i64) -> Result<Option<ZtfHit>> {
        let Some((file_id, v)) = self.first_committed(&self.candid, candid)? else {
            return Ok(None);
        };
        let (row_group, row, jd, object_id) = keys::decode_candid_value(&v)?;
        Ok(Some(ZtfHit {
            object_id,
            candid,
            jd,
            location: Location {
                file_id,
                row_group,
                row,
            },
        }))
    }

    /// One Rubin alert by diaSourceId (the first committed copy).
    pub fn dia_source(&self, id: i64) -> Result<Option<LsstHit>> {
        let Some((file_id, v)) = self.first_committed(&self.dia, id)? else {
            return Ok(None);
        };
        let (row_group, row, mjd, dia_object_id) = keys::decode_dia_value(&v)?;
        Ok(Some(LsstHit {
            dia_source_id: id,
            dia_object_id,
            mjd,
            location: Location {
                file_id,
                row_group,
                row,
            },
        }))
    }

    /// Every source of a Rubin diaObject, oldest first; one copy per diaSourceId.
    pub fn dia_object_sources(&self, dia_object_id: i64) -> Result<Vec<LsstHit>> {
        let mut hits: Vec<LsstHit> = Vec::new();
        for kv in self.diaobj.scan_prefix(keys::i64_key(dia_object_id)) {
            let (k, v) = kv?;
            let dia_source_id = keys::i64_at(&k, 8)?;
            let file_id = keys::u64_at(&k, 16)?;
            if !self.committed(file_id)? || hits.last().is_some_and(|h| h.dia_source_id == dia_source_id) {
                continue;
            }
            let (row_group, row, mjd) = keys::decode_diaobj_value(&v)?;
            hits.push(LsstHit {
                dia_source_id,
                dia_object_id,
                mjd,
                location: Location {
                    file_id,
                    row_group,
                    row,
                },
            });
        }
        hits.sort_by(|a, b| a.mjd.total_cmp(&b.mjd).then(a.dia_source_id.cmp(&b.dia_source_id)));
        Ok(hits)
    }

    /// Committed files, their alerts (counting copies) and bytes, from one catalog scan.
    pub fn summary(&self) -> Result<CatalogSummary> {
        let files = self.files()?;
        Ok(CatalogSummary {
            files: files.len(),
            alerts: files.iter().map(|f| f.row_groups.iter().sum::<u64>()).sum(),
            bytes: files.iter().map(|f| f.size).sum(),
        })
    }
}

#[cfg(test)]
mod tests;
