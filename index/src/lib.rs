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
//! | `files`   | file id                               | [`FileEntry`] (the commit record; the [`Catalog`]) |
//! | `obj`     | objectId 0x00 time candid file id     | row group, row                     |
//! | `candid`  | candid file id                        | row group, row, jd, objectId       |
//! | `dia`     | diaSourceId file id                   | row group, row, mjd, diaObjectId   |
//! | `diaobj`  | diaObjectId diaSourceId file id       | row group, row, mjd                |
//! | `byfile`  | file id, ordinal                      | the id pair the row added          |
//!
//! Integers are big-endian with the sign bit flipped, so that byte order is numeric order. A time
//! (`jd`) is one byte, 0 when the alert has none and 1 otherwise, then the float's bits mapped
//! to sort numerically: an object's alerts are in time order in the `obj` tree, undated ones
//! first, so its latest alert is its last dated key, found by one reverse seek.
//! The same alert may sit in several files (Fink's raw and science lakes both hold it): every
//! key ends with the file id, and lookups keep the copy of the newest file (the highest file id,
//! which is also the copy a re-indexed file gets first).
//!
//! The catalog (`files`) is the [`Catalog`]; the other trees are the id index proper.
//! Each dataset also records the key layout's version; an index written with another layout is
//! cleared and rebuilt from the lake.
//!
//! **Crash safety.** A file's ids are written first, then flushed, then its `files` entry, the
//! commit record. Lookups ignore ids whose file has no commit record, so readers never see half a
//! file; the next build finds file ids listed in `byfile` without a commit record and removes
//! their rows. A file is dropped in the reverse order (commit record first).

//! **The segment index (being built; issue 21).** The id trees above take ~780 bytes per alert
//! in sled. Their replacement is built from these modules, each tested on its own and not yet
//! serving lookups:
//! [`segment`] (the immutable, sorted, block-compressed, checksummed file format),
//! [`idmap`] (the `rows` / `group` / `id` tables over alert ordinals, their builder, merge and
//! lookups), [`sort`] (bounded-memory external sort), [`manifest`] (the generation commit in
//! sled) and [`objkey`] (objectIds as 64-bit keys).
//!
//! Still to do before they replace the id trees: a base ordinal per file in the catalog (its
//! rows are base + position) and the ordinal -> file, row group, row map; builds that read the
//! new files' id columns into one segment per build and commit it with the catalog through the
//! manifest; a background merge keeping the segments few; the hashed objectIds' strings (a
//! collision must be refused, never answered wrongly); a small in-memory top level over each
//! block index and `MADV_RANDOM`, for cold lookups of a few page reads; reading an object's
//! `rows` once per block rather than once per alert; the format switch (the old layout rebuilt
//! once, with a log line); `stats.index`; the crash tests and the 100 M benchmark.

mod build;
pub mod catalog;
pub mod headers;
pub mod idmap;
mod keys;
pub mod manifest;
pub mod objkey;
pub mod reader;
pub mod segment;
pub mod sort;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use build::{is_data_file, BuildStats, ClassFn, ClassSpec, IndexBuilder};
pub use catalog::{Catalog, CatalogSummary, FileEntry, FileStats, NightClass};

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

    /// The leaf column holding the alert time (`candidate.jd`, `diaSource.midpointMjdTai`).
    pub fn time_leaf(self) -> &'static str {
        match self {
            SurveyKind::Ztf => "candidate.jd",
            SurveyKind::Lsst => "diaSource.midpointMjdTai",
        }
    }

    /// The alert time column's value at the Unix epoch (JD 2440587.5; MJD 40587): a time `t`
    /// is `t - epoch` days since 1970-01-01 UTC (Rubin's TAI is 37 s ahead of UTC; nights are
    /// counted on the time as stored).
    pub fn time_epoch(self) -> f64 {
        match self {
            SurveyKind::Ztf => 2_440_587.5,
            SurveyKind::Lsst => 40_587.0,
        }
    }

    /// The night (days since 1970-01-01, UTC date) of an alert time; None for NaN.
    pub fn night_of(self, t: f64) -> Option<i32> {
        let d = (t - self.time_epoch()).floor();
        (d.is_finite() && d.abs() < 1e8).then_some(d as i32)
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

impl Location {
    pub fn new(file_id: u64, row_group: u32, row: u32) -> Self {
        Location {
            file_id,
            row_group,
            row,
        }
    }
}

/// An id the index maps to alert locations.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKey {
    /// ZTF `objectId`: every alert of the object.
    ObjectId(String),
    /// ZTF `candid`.
    Candid(i64),
    /// Rubin `diaSource.diaSourceId`.
    DiaSourceId(i64),
    /// Rubin `diaSource.diaObjectId`: every source of the object.
    DiaObjectId(i64),
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

/// The key layout version of a dataset's trees; another value (or none, on non-empty trees)
/// means the trees were written by another version and are rebuilt.
const FORMAT: &[u8] = b"2";

/// The index's default in-memory cache.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// The index database: one sled database holding the trees of every dataset.
#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    /// One build lock per dataset name, shared by every handle of that dataset.
    build_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// The trees of one dataset: its catalog and its id trees.
#[derive(Clone)]
pub struct DatasetIndex {
    name: Arc<str>,
    catalog: Catalog,
    obj: sled::Tree,
    candid: sled::Tree,
    dia: sled::Tree,
    diaobj: sled::Tree,
    byfile: sled::Tree,
    db: sled::Db,
    /// Held by a build for its whole run: builds of one dataset never overlap.
    pub(crate) build_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Why an index directory could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another process holds the directory's lock.
    Locked(sled::Error),
    /// The files are there but cannot be read as an index (a crash, a full disk, a bug).
    Broken(sled::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Locked(e) => write!(f, "the index is in use by another process: {e}"),
            OpenError::Broken(e) => write!(f, "the index cannot be opened: {e}"),
        }
    }
}

impl Index {
    /// Open (or create) the index in a directory, with the default cache (256 MiB). Only one
    /// process may hold it open.
    pub fn open(dir: &Path) -> std::result::Result<Self, OpenError> {
        Index::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Open (or create) the index, keeping up to `cache_bytes` of it in memory.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> std::result::Result<Self, OpenError> {
        match sled::Config::new().path(dir).cache_capacity(cache_bytes).open() {
            Ok(db) => Ok(Index::with_db(db)),
            // sled reports a held lock as an `Other` error whose text says so (not WouldBlock).
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock") =>
            {
                Err(OpenError::Locked(sled::Error::Io(e)))
            }
            Err(e) => Err(OpenError::Broken(e)),
        }
    }

    fn with_db(db: sled::Db) -> Self {
        Index {
            db,
            build_locks: Arc::default(),
        }
    }

    /// A throwaway in-memory index (tests and benchmarks).
    pub fn temporary() -> Result<Self> {
        Ok(Index::with_db(sled::Config::new().temporary(true).open()?))
    }

    pub fn dataset(&self, name: &str) -> Result<DatasetIndex> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(IndexError::DatasetName(name.to_string()));
        }
        let t = |tree: &str| self.db.open_tree(format!("{name}/{tree}"));
        let build_lock = self
            .build_locks
            .lock()
            .map_err(|_| IndexError::Corrupt("build lock table poisoned".into()))?
            .entry(name.to_string())
            .or_default()
            .clone();
        let ix = DatasetIndex {
            name: name.into(),
            catalog: Catalog { files: t("files")? },
            obj: t("obj")?,
            candid: t("candid")?,
            dia: t("dia")?,
            diaobj: t("diaobj")?,
            byfile: t("byfile")?,
            db: self.db.clone(),
            build_lock,
        };
        ix.check_format()?;
        Ok(ix)
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// The header catalog of a FITS dataset (its own tree, `{name}/headers`).
    pub fn headers(&self, name: &str) -> Result<headers::HeaderStore> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(IndexError::DatasetName(name.to_string()));
        }
        Ok(headers::HeaderStore {
            tree: self.db.open_tree(format!("{name}/headers"))?,
            db: self.db.clone(),
        })
    }
}

impl DatasetIndex {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hold off builds of this dataset while the guard lives (a build under way is waited
    /// for first). Builds take the same lock.
    pub async fn lock_builds(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.build_lock.clone().lock_owned().await
    }

    /// The dataset's file catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn trees(&self) -> [&sled::Tree; 6] {
        [
            &self.catalog.files,
            &self.obj,
            &self.candid,
            &self.dia,
            &self.diaobj,
            &self.byfile,
        ]
    }

    /// Clear the trees when they were written with another key layout (the next build
    /// re-reads the lake), then record this layout.
    fn check_format(&self) -> Result<()> {
        let key = format!("{}/format", self.name);
        let stored = self.db.get(&key)?;
        if stored.as_deref() == Some(FORMAT) {
            return Ok(());
        }
        if self.trees().iter().any(|t| !t.is_empty()) {
            tracing::warn!(dataset = %self.name, "the index was written by another version of astroflight: clearing it; the next build re-reads the lake");
            for t in self.trees() {
                t.clear()?;
            }
        }
        self.db.insert(key, FORMAT)?;
        self.db.flush()?;
        Ok(())
    }

    fn committed(&self, file_id: u64) -> Result<bool> {
        self.catalog.contains(file_id)
    }

    /// Everything the dataset's index holds, as sorted lines, with the file ids (which depend
    /// on the order of writes) replaced by the files' paths, so that two indexes of the same
    /// lake give the same lines however they were built; an entry of a file that is not
    /// committed (left by a build that died) shows as `ORPHAN`. For crash tests and diagnosis
    /// (`astroflight index --dump`); reads every entry.
    pub fn canonical_dump(&self) -> Result<Vec<String>> {
        let files = self.catalog.files()?;
        let paths: std::collections::HashMap<u64, String> = files.iter().map(|f| (f.file_id, f.path.clone())).collect();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut out: Vec<String> = files
            .iter()
            .map(|f| format!("file {} {}", f.path, hex(&keys::encode_file_entry(f))))
            .collect();
        // Where each tree's keys hold the file id (a big-endian u64), from the key's length.
        type FileIdAt = fn(usize) -> usize;
        let layouts: [(&str, &sled::Tree, FileIdAt); 5] = [
            ("obj", &self.obj, |len| len - 8),
            ("candid", &self.candid, |_| 8),
            ("dia", &self.dia, |_| 8),
            ("diaobj", &self.diaobj, |_| 16),
            ("byfile", &self.byfile, |_| 0),
        ];
        for (name, tree, at) in layouts {
            for kv in tree.iter() {
                let (k, v) = kv?;
                let i = at(k.len());
                let id = keys::u64_at(&k, i)?;
                let file = paths.get(&id).map_or("ORPHAN", String::as_str);
                out.push(format!(
                    "{name} {}|{file}|{} = {}",
                    hex(&k[..i]),
                    hex(&k[i + 8..]),
                    hex(&v)
                ));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The committed catalog entry of a file.
    pub fn file(&self, file_id: u64) -> Result<Option<FileEntry>> {
        self.catalog.file(file_id)
    }

    /// Every alert of a ZTF object, oldest first (by jd, undated alerts first, then candid);
    /// one copy per candid, the newest file's.
    pub fn object_alerts(&self, object_id: &str) -> Result<Vec<ZtfHit>> {
        let prefix = keys::obj_prefix(object_id);
        let mut hits: Vec<ZtfHit> = Vec::new();
        for kv in self.obj.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let (jd, candid, file_id) = keys::decode_obj_key(&k, prefix.len())?;
            if !self.committed(file_id)? {
                continue;
            }
            let (row_group, row) = keys::decode_obj_value(&v)?;
            let hit = ZtfHit {
                object_id: object_id.to_string(),
                candid,
                jd: jd.unwrap_or(f64::NAN),
                location: Location::new(file_id, row_group, row),
            };
            // Copies of one alert are adjacent (same time and candid), in file id order.
            match hits.last_mut() {
                Some(last) if last.candid == candid => *last = hit,
                _ => hits.push(hit),
            }
        }
        Ok(hits)
    }

    /// The latest alert (max jd) of a ZTF object: one reverse seek in key order, never a read of
    /// every alert. An alert without a jd is never the latest; None when the object has no
    /// dated, committed alert.
    pub fn latest_alert(&self, object_id: &str) -> Result<Option<ZtfHit>> {
        let prefix = keys::obj_prefix(object_id);
        for kv in self.obj.scan_prefix(&prefix).rev() {
            let (k, v) = kv?;
            let (jd, candid, file_id) = keys::decode_obj_key(&k, prefix.len())?;
            let Some(jd) = jd else {
                return Ok(None); // undated alerts sort first: no dated one is left
            };
            if !self.committed(file_id)? {
                continue;
            }
            let (row_group, row) = keys::decode_obj_value(&v)?;
            return Ok(Some(ZtfHit {
                object_id: object_id.to_string(),
                candid,
                jd,
                location: Location::new(file_id, row_group, row),
            }));
        }
        Ok(None)
    }

    /// The newest committed copy of an id (highest file id): its file id and value.
    /// Ids of the `candid` and `dia` trees are keyed `id file_id`.
    fn newest_committed(&self, tree: &sled::Tree, id: i64) -> Result<Option<(u64, sled::IVec)>> {
        for kv in tree.scan_prefix(keys::i64_key(id)).rev() {
            let (k, v) = kv?;
            let file_id = keys::u64_at(&k, 8)?;
            if self.committed(file_id)? {
                return Ok(Some((file_id, v)));
            }
        }
        Ok(None)
    }

    /// One ZTF alert by candid (the newest committed copy).
    pub fn candid(&self, candid: i64) -> Result<Option<ZtfHit>> {
        let Some((file_id, v)) = self.newest_committed(&self.candid, candid)? else {
            return Ok(None);
        };
        let (row_group, row, jd, object_id) = keys::decode_candid_value(&v)?;
        Ok(Some(ZtfHit {
            object_id,
            candid,
            jd,
            location: Location::new(file_id, row_group, row),
        }))
    }

    /// One Rubin alert by diaSourceId (the newest committed copy).
    pub fn dia_source(&self, id: i64) -> Result<Option<LsstHit>> {
        let Some((file_id, v)) = self.newest_committed(&self.dia, id)? else {
            return Ok(None);
        };
        let (row_group, row, mjd, dia_object_id) = keys::decode_dia_value(&v)?;
        Ok(Some(LsstHit {
            dia_source_id: id,
            dia_object_id,
            mjd,
            location: Location::new(file_id, row_group, row),
        }))
    }

    /// Every source of a Rubin diaObject, oldest first (undated last); one copy per
    /// diaSourceId, the newest file's.
    pub fn dia_object_sources(&self, dia_object_id: i64) -> Result<Vec<LsstHit>> {
        let mut hits: Vec<LsstHit> = Vec::new();
        for kv in self.diaobj.scan_prefix(keys::i64_key(dia_object_id)) {
            let (k, v) = kv?;
            let dia_source_id = keys::i64_at(&k, 8)?;
            let file_id = keys::u64_at(&k, 16)?;
            if !self.committed(file_id)? {
                continue;
            }
            let (row_group, row, mjd) = keys::decode_diaobj_value(&v)?;
            let hit = LsstHit {
                dia_source_id,
                dia_object_id,
                mjd,
                location: Location::new(file_id, row_group, row),
            };
            match hits.last_mut() {
                Some(last) if last.dia_source_id == dia_source_id => *last = hit,
                _ => hits.push(hit),
            }
        }
        hits.sort_by(|a, b| {
            a.mjd
                .is_nan()
                .cmp(&b.mjd.is_nan())
                .then(a.mjd.total_cmp(&b.mjd))
                .then(a.dia_source_id.cmp(&b.dia_source_id))
        });
        Ok(hits)
    }

    /// Where every committed copy of the alerts with one id is, in key order. Unlike the
    /// lookups above, copies of one alert in several files are all kept: a SQL scan returns
    /// every row the files hold, and uses these locations to read only those rows.
    pub fn locations(&self, id: &IdKey) -> Result<Vec<Location>> {
        let mut out = Vec::new();
        match id {
            IdKey::ObjectId(object_id) => {
                let prefix = keys::obj_prefix(object_id);
                for kv in self.obj.scan_prefix(&prefix) {
                    let (k, v) = kv?;
                    let (_, _, file_id) = keys::decode_obj_key(&k, prefix.len())?;
                    let (row_group, row) = keys::decode_obj_value(&v)?;
                    out.push(Location::new(file_id, row_group, row));
                }
            }
            IdKey::Candid(n) | IdKey::DiaSourceId(n) => {
                let tree = if matches!(id, IdKey::Candid(_)) {
                    &self.candid
                } else {
                    &self.dia
                };
                // Keys: id, file id; the value starts with row group and row.
                for kv in tree.scan_prefix(keys::i64_key(*n)) {
                    let (k, v) = kv?;
                    let file_id = keys::u64_at(&k, 8)?;
                    let (row_group, row) = keys::decode_obj_value(&v)?;
                    out.push(Location::new(file_id, row_group, row));
                }
            }
            IdKey::DiaObjectId(id) => {
                // Keys: diaObjectId, diaSourceId, file id.
                for kv in self.diaobj.scan_prefix(keys::i64_key(*id)) {
                    let (k, v) = kv?;
                    let file_id = keys::u64_at(&k, 16)?;
                    let (row_group, row, _) = keys::decode_diaobj_value(&v)?;
                    out.push(Location::new(file_id, row_group, row));
                }
            }
        }
        let mut committed = Vec::with_capacity(out.len());
        for l in out {
            if self.committed(l.file_id)? {
                committed.push(l);
            }
        }
        Ok(committed)
    }

    /// Committed files, their alerts (counting copies) and bytes, from one catalog scan.
    pub fn summary(&self) -> Result<CatalogSummary> {
        self.catalog.summary()
    }
}

#[cfg(test)]
mod tests;

/// A small deterministic generator (xorshift64) for the crate's randomized tests.
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
