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
//! **Where things are.** Per dataset:
//!
//! | what | where | holds |
//! |------|-------|-------|
//! | catalog | sled tree `{dataset}/files`, key file id | [`FileEntry`]: path, version, row groups, **base ordinal**, nights and classes ([`Catalog`]) |
//! | manifest | sled tree `{dataset}/manifest` | the generation number, the next free ordinal, the segments ([`manifest`]) |
//! | names | sled tree `{dataset}/names`, key 63-bit hash | objectIds that are not ZTF-shaped ([`objkey`]) |
//! | id maps | `{index_dir}/segments/{dataset}/g{generation}-{n}.seg` | tables `rows`, `group`, `id` over alert ordinals ([`idmap`], format in [`segment`]) |
//!
//! Every row of an indexed file is an **ordinal**, `base + position` (no location is stored
//! per alert); the catalog turns an ordinal back into file, row group and row. The segments are
//! immutable, sorted, block-compressed and checksummed (CRC-32 per block, checked on every
//! read; a segment that fails is never served and is rebuilt from the lake). A build writes one
//! segment and commits it with the catalog's changes in one sled transaction, the generation's
//! commit record; merges keep the segments few ([`IndexBuilder`]). Lookups read one generation
//! (a view swapped in whole after each commit): an entry whose ordinal belongs to no
//! catalog file (a dropped or changed file) is masked until a merge leaves it out.
//!
//! | lookup | reads |
//! |--------|-------|
//! | latest alert of an object | the end of the object's run (its last day) in the `group` table of each segment that may hold it, newest days first, stopping at a segment whose days all precede the best found; then those entries' `rows` (exact times) |
//! | all alerts of an object | the object's run in `group`, then `rows`, each block once |
//! | alert by candid / diaSourceId | the id's run in `id`, then one `rows` entry |
//! | Rubin diaObjectId | as an object, the group being the diaObjectId |
//!
//! Each table's block index is searched first in memory (every 128th block's first row, kept
//! when the segment is opened), then in at most two pages of the file; a segment whose key range
//! cannot hold the key is skipped, and so is one whose `group` filter (a blocked Bloom filter
//! over its objects, 10 bits each, held in memory: [`filter`]) rules the object out.
//!
//! The same alert may sit in several files (Fink's raw and science lakes both hold it): lookups
//! keep the copy with the highest ordinal (the file indexed last); [`DatasetIndex::locations`]
//! keeps every copy. An alert without a time is never an object's latest.
//!
//! **Crash safety.** Segments are written under a temporary name and renamed only by the
//! commit; a crash before the commit's transaction leaves the old generation (and files no
//! generation names, which the next build deletes), after it the new one. The index's layout
//! version is recorded per dataset: an index of another layout (format 2 kept every id in sled,
//! ~780 bytes per alert) is dropped, with a log line, and rebuilt from the lake once.

mod build;
pub mod catalog;
pub mod filter;
pub mod header_catalog;
pub mod idmap;
mod keys;
pub mod manifest;
pub mod objkey;
pub mod publish;
pub mod segment;
pub mod sort;
mod view;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use build::{
    is_data_file, BuildStats, ClassFn, ClassSpec, IndexBuilder, BUILD_MEMORY_BYTES, COMMIT_ALERTS, MERGE_FANIN,
};
pub use catalog::{Catalog, CatalogSummary, FileEntry, FileStats, NightClass};
use manifest::SegmentDir;
use objkey::ObjectKey;
use view::{SharedView, View};

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
    /// A segment file that fails its checks (a checksum, its layout): never served; the
    /// dataset's next build drops it and reads its files again from the lake.
    #[error("index segment {} is corrupt ({message}); it is not served, and the next index build rebuilds it from the lake", path.display())]
    BadSegment { path: std::path::PathBuf, message: String },
    #[error("invalid dataset name {0:?}: use letters, digits, '_' and '-'")]
    DatasetName(String),
    /// A follower found no published generation at the dataset's `index_root`.
    #[error("no index of dataset {0:?} is published at its index_root yet (is its builder running, with the same index_root?)")]
    NotPublished(String),
}

impl IndexError {
    /// True when the failure is the storage's (retrying later may help), not the data's.
    pub fn is_storage(&self) -> bool {
        matches!(self, IndexError::Storage { .. } | IndexError::NotPublished(_))
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

/// The layout version of a dataset's index; another value (or none, on non-empty trees) means
/// the index was written by another version and is rebuilt from the lake, once.
const FORMAT: &[u8] = b"5";

/// The layout version as text (published manifests carry it).
pub(crate) fn layout() -> &'static str {
    std::str::from_utf8(FORMAT).expect("ASCII")
}

/// The trees of the layouts before this one (format 2 kept every id in sled; format 3's
/// `group` tables held exact times; format 4's segments, version 1, had no statistics or
/// filters), dropped when such an index is found.
const OLD_TREES: [&str; 5] = ["obj", "candid", "dia", "diaobj", "byfile"];

/// Where an index directory's lineage is kept (db-wide).
const LINEAGE_KEY: &[u8] = b"lineage";

/// A random 64-bit value (the standard library's per-process random hash keys, mixed with the
/// time and the process id): an index directory's lineage, unique without a random crate.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The index's default in-memory cache.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// The index database: one sled database holding the catalogs and manifests of every dataset,
/// and beside it (`segments/{dataset}/`) each dataset's segment files.
#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    /// This index directory's random id (see [`publish`]).
    lineage: u64,
    segments: Arc<SegmentsRoot>,
    /// One build lock and one view per dataset name, shared by every handle of that dataset.
    datasets: Arc<Mutex<HashMap<String, Shared>>>,
}

/// Where the segment directories are; a temporary index removes its own when dropped.
struct SegmentsRoot {
    dir: std::path::PathBuf,
    temporary: bool,
}

impl Drop for SegmentsRoot {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[derive(Clone)]
struct Shared {
    build_lock: Arc<tokio::sync::Mutex<()>>,
    view: SharedView,
    /// Segments a lookup found corrupt since the last build.
    broken: Arc<Mutex<BTreeSet<std::path::PathBuf>>>,
}

/// The index of one dataset: its catalog (sled), its segments and their manifest.
#[derive(Clone)]
pub struct DatasetIndex {
    name: Arc<str>,
    lineage: u64,
    catalog: Catalog,
    pub(crate) segdir: SegmentDir,
    /// objectIds that are not ZTF-shaped, by their hashed key (see [`objkey`]).
    pub(crate) names: sled::Tree,
    pub(crate) db: sled::Db,
    pub(crate) view: SharedView,
    pub(crate) broken: Arc<Mutex<BTreeSet<std::path::PathBuf>>>,
    /// Held by a build for its whole run: builds of one dataset never overlap.
    pub(crate) build_lock: Arc<tokio::sync::Mutex<()>>,
    /// Keeps a temporary index's segment directory while a handle of it lives.
    _root: Arc<SegmentsRoot>,
}

/// What a dataset's segment index holds (the `index` object of the `stats` action).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexStats {
    /// Alert entries in the segments (entries of dropped or changed files included until a
    /// merge leaves them out).
    pub alerts: u64,
    pub segments: usize,
    /// Bytes of the segment files on disk.
    pub bytes: u64,
    pub generation: u64,
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

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(IndexError::DatasetName(name.to_string()));
    }
    Ok(())
}

impl Index {
    /// Open (or create) the index in a directory, with the default cache (256 MiB). Only one
    /// process may hold it open.
    pub fn open(dir: &Path) -> std::result::Result<Self, OpenError> {
        Index::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Open (or create) the index, keeping up to `cache_bytes` of its sled part in memory.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> std::result::Result<Self, OpenError> {
        match sled::Config::new().path(dir).cache_capacity(cache_bytes).open() {
            Ok(db) => Ok(Index::with_db(db, dir.join("segments"), false)),
            // sled reports a held lock as an `Other` error whose text says so (not WouldBlock).
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock") =>
            {
                Err(OpenError::Locked(sled::Error::Io(e)))
            }
            Err(e) => Err(OpenError::Broken(e)),
        }
    }

    fn with_db(db: sled::Db, segments: std::path::PathBuf, temporary: bool) -> Self {
        let lineage = match db.get(LINEAGE_KEY).ok().flatten() {
            Some(b) if b.len() == 8 => u64::from_be_bytes(b.as_ref().try_into().expect("8 bytes")),
            _ => {
                let l = random_u64();
                // A failure here leaves a lineage that changes at every start: publications
                // then look new to followers, which reload them whole (correct, only slower).
                let _ = db.insert(LINEAGE_KEY, &l.to_be_bytes());
                l
            }
        };
        Index {
            db,
            lineage,
            segments: Arc::new(SegmentsRoot {
                dir: segments,
                temporary,
            }),
            datasets: Arc::default(),
        }
    }

    /// A throwaway index (tests and benchmarks): sled in memory, segments in a temporary
    /// directory removed with the last handle.
    pub fn temporary() -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "astroflight-index-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        Ok(Index::with_db(sled::Config::new().temporary(true).open()?, dir, true))
    }

    pub fn dataset(&self, name: &str) -> Result<DatasetIndex> {
        check_name(name)?;
        let mut datasets = self
            .datasets
            .lock()
            .map_err(|_| IndexError::Corrupt("dataset table poisoned".into()))?;
        let t = |tree: &str| self.db.open_tree(format!("{name}/{tree}"));
        let dir = self.segments.dir.join(name);
        if !datasets.contains_key(name) {
            self.check_format(name, &dir)?;
        }
        let catalog = Catalog { files: t("files")? };
        let segdir = SegmentDir::open(&dir, &self.db, t("manifest")?, catalog.files.clone())?;
        let shared = match datasets.get(name) {
            Some(s) => s.clone(),
            None => {
                let s = Shared {
                    build_lock: Arc::default(),
                    view: SharedView::new(View::load(&segdir, &catalog)?),
                    broken: Arc::default(),
                };
                datasets.insert(name.to_string(), s.clone());
                s
            }
        };
        Ok(DatasetIndex {
            lineage: self.lineage,
            name: name.into(),
            catalog,
            segdir,
            names: t("names")?,
            db: self.db.clone(),
            view: shared.view,
            broken: shared.broken,
            build_lock: shared.build_lock,
            _root: self.segments.clone(),
        })
    }

    /// Clear a dataset's index when it was written with another layout (the next build re-reads
    /// the lake), then record this layout.
    fn check_format(&self, name: &str, segments: &Path) -> Result<()> {
        let key = format!("{name}/format");
        let stored = self.db.get(&key)?;
        if stored.as_deref() == Some(FORMAT) {
            return Ok(());
        }
        let trees: Vec<String> = OLD_TREES
            .iter()
            .chain(&["files", "manifest", "names"])
            .map(|t| format!("{name}/{t}"))
            .collect();
        let mut found = false;
        for t in &trees {
            found |= !self.db.open_tree(t)?.is_empty();
        }
        if found {
            tracing::warn!(dataset = %name, "the index was written by another version of astroflight (an older key layout): rebuilding it once from the lake");
        }
        for t in &trees {
            self.db.drop_tree(t.as_bytes())?;
        }
        if segments.exists() {
            std::fs::remove_dir_all(segments)
                .map_err(|e| IndexError::Corrupt(format!("cannot clear {}: {e}", segments.display())))?;
        }
        self.db.insert(key, FORMAT)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// The header catalog of a FITS dataset (its own tree, `{name}/headers`).
    pub fn headers(&self, name: &str) -> Result<header_catalog::HeaderStore> {
        check_name(name)?;
        Ok(header_catalog::HeaderStore {
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

    /// The current generation, refused while one of its segments is known to be corrupt.
    fn view(&self) -> Result<Arc<View>> {
        let v = self.view.get();
        v.check()?;
        if let Some(p) = self.broken.lock().ok().and_then(|b| b.iter().next().cloned()) {
            return Err(IndexError::BadSegment {
                path: p,
                message: "a block failed its checks in an earlier lookup".into(),
            });
        }
        Ok(v)
    }

    /// A lookup's result; a segment found corrupt is remembered (lookups refuse it from then
    /// on, and the next build rebuilds it).
    fn noted<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(IndexError::BadSegment { path, message }) = &r {
            tracing::error!(dataset = %self.name, path = %path.display(), %message, "an index segment is corrupt: it is no longer served; the next build rebuilds it from the lake");
            if let Ok(mut b) = self.broken.lock() {
                b.insert(path.clone());
            }
        }
        r
    }

    /// Load the current generation after a commit.
    pub(crate) fn reload(&self) -> Result<()> {
        self.view.set(View::load(&self.segdir, &self.catalog)?);
        Ok(())
    }

    /// The key of an objectId; None when it is not ZTF-shaped and no indexed alert has it.
    fn object_key(&self, object_id: &str) -> Result<Option<u64>> {
        let k = ObjectKey::of(object_id);
        if !k.is_hashed() {
            return Ok(Some(k.0));
        }
        Ok(match self.names.get(k.0.to_be_bytes())? {
            Some(n) if n.as_ref() == object_id.as_bytes() => Some(k.0),
            _ => None,
        })
    }

    /// The objectId of a key.
    fn object_name(&self, key: u64) -> Result<String> {
        if let Some(s) = ObjectKey(key).id() {
            return Ok(s);
        }
        match self.names.get(key.to_be_bytes())? {
            Some(n) => {
                String::from_utf8(n.to_vec()).map_err(|_| IndexError::Corrupt("an objectId is not UTF-8".into()))
            }
            None => Err(IndexError::Corrupt(format!("no objectId is recorded for key {key:#x}"))),
        }
    }

    /// Everything the dataset's index holds, as sorted lines, with ordinals and file ids
    /// (which depend on the order of writes) replaced by the files' paths and row positions, so
    /// that two indexes of the same lake give the same lines however they were built (in one
    /// go, incrementally, merged or not, after a crash). Entries of dropped or changed files
    /// that no merge has yet left out are masked, as lookups mask them. For crash tests and
    /// diagnosis (`astroflight index --dump`); reads every entry.
    pub fn canonical_dump(&self) -> Result<Vec<String>> {
        let v = self.view()?;
        let files = self.catalog.files()?;
        let paths: HashMap<u64, String> = files.iter().map(|f| (f.file_id, f.path.clone())).collect();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut out: Vec<String> = files
            .iter()
            .map(|f| {
                let unplaced = FileEntry {
                    base_ordinal: 0,
                    ..f.clone()
                };
                format!("file {} {}", f.path, hex(&keys::encode_file_entry(&unplaced)))
            })
            .collect();
        for s in v.set.segments() {
            let rows = s
                .table(idmap::ROWS)
                .ok_or_else(|| IndexError::Corrupt("a segment without rows".into()))?;
            for r in rows.iter() {
                let r = self.noted(r)?;
                let Some((file_id, pos)) = v.position(r[0]) else {
                    continue;
                };
                let loc = v.locate(r[0])?;
                out.push(format!(
                    "alert {}#{pos} rg={} row={} id={} group={:x} time={:x}",
                    paths.get(&file_id).map_or("?", String::as_str),
                    loc.row_group,
                    loc.row,
                    idmap::id_of(r[1]),
                    r[2],
                    r[3]
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

    fn ztf_hit(&self, v: &View, object_id: Option<&str>, h: &idmap::IdHit) -> Result<ZtfHit> {
        Ok(ZtfHit {
            object_id: match object_id {
                Some(o) => o.to_string(),
                None => self.object_name(h.group)?,
            },
            candid: h.id,
            jd: h.time.unwrap_or(f64::NAN),
            location: v.locate(h.ordinal)?,
        })
    }

    fn lsst_hit(v: &View, h: &idmap::IdHit) -> Result<LsstHit> {
        Ok(LsstHit {
            dia_source_id: h.id,
            dia_object_id: idmap::id_of(h.group),
            mjd: h.time.unwrap_or(f64::NAN),
            location: v.locate(h.ordinal)?,
        })
    }

    /// Every alert of a ZTF object, oldest first (by jd, undated alerts first, then candid);
    /// one copy per candid, the newest file's.
    pub fn object_alerts(&self, object_id: &str) -> Result<Vec<ZtfHit>> {
        let v = self.view()?;
        let Some(key) = self.object_key(object_id)? else {
            return Ok(Vec::new());
        };
        let hits = self.noted(v.set.group_alerts(key, &|o| v.live(o)))?;
        hits.iter().map(|h| self.ztf_hit(&v, Some(object_id), h)).collect()
    }

    /// The latest alert (max jd) of a ZTF object: the end of the object's run in each segment,
    /// never a read of every alert. An alert without a jd is never the latest; None when the
    /// object has no dated, live alert.
    pub fn latest_alert(&self, object_id: &str) -> Result<Option<ZtfHit>> {
        let v = self.view()?;
        let Some(key) = self.object_key(object_id)? else {
            return Ok(None);
        };
        let hit = self.noted(v.set.latest(key, &|o| v.live(o)))?;
        hit.map(|h| self.ztf_hit(&v, Some(object_id), &h)).transpose()
    }

    /// One ZTF alert by candid (the newest live copy).
    pub fn candid(&self, candid: i64) -> Result<Option<ZtfHit>> {
        let v = self.view()?;
        let hit = self.noted(v.set.by_id(candid, &|o| v.live(o)))?;
        hit.map(|h| self.ztf_hit(&v, None, &h)).transpose()
    }

    /// One Rubin alert by diaSourceId (the newest live copy).
    pub fn dia_source(&self, id: i64) -> Result<Option<LsstHit>> {
        let v = self.view()?;
        let hit = self.noted(v.set.by_id(id, &|o| v.live(o)))?;
        hit.map(|h| Self::lsst_hit(&v, &h)).transpose()
    }

    /// Every source of a Rubin diaObject, oldest first (undated last); one copy per
    /// diaSourceId, the newest file's.
    pub fn dia_object_sources(&self, dia_object_id: i64) -> Result<Vec<LsstHit>> {
        let v = self.view()?;
        let hits = self.noted(v.set.group_alerts(idmap::id_key(dia_object_id), &|o| v.live(o)))?;
        let mut out = hits.iter().map(|h| Self::lsst_hit(&v, h)).collect::<Result<Vec<_>>>()?;
        // The id maps order undated alerts first; Rubin's sources list them last.
        out.sort_by(|a, b| {
            a.mjd
                .is_nan()
                .cmp(&b.mjd.is_nan())
                .then(a.mjd.total_cmp(&b.mjd))
                .then(a.dia_source_id.cmp(&b.dia_source_id))
        });
        Ok(out)
    }

    /// Where every live copy of the alerts with one id is, in location order. Unlike the
    /// lookups above, copies of one alert in several files are all kept: a SQL scan returns
    /// every row the files hold, and uses these locations to read only those rows.
    pub fn locations(&self, id: &IdKey) -> Result<Vec<Location>> {
        let v = self.view()?;
        let live = |o: u64| v.live(o);
        let ordinals = match id {
            IdKey::ObjectId(object_id) => match self.object_key(object_id)? {
                Some(key) => v.set.group_ordinals(key, &live),
                None => Ok(Vec::new()),
            },
            IdKey::Candid(n) | IdKey::DiaSourceId(n) => v.set.id_ordinals(*n, &live),
            IdKey::DiaObjectId(n) => v.set.group_ordinals(idmap::id_key(*n), &live),
        };
        let mut out = self
            .noted(ordinals)?
            .into_iter()
            .map(|o| v.locate(o))
            .collect::<Result<Vec<_>>>()?;
        out.sort();
        Ok(out)
    }

    /// Committed files, their alerts (counting copies) and bytes, from one catalog scan.
    pub fn summary(&self) -> Result<CatalogSummary> {
        self.catalog.summary()
    }

    /// True when a segment of the current generation cannot be read (found when it was
    /// opened, or by a lookup): lookups fail until a build drops it and reads its files again.
    pub fn needs_repair(&self) -> bool {
        !self.view.get().broken.is_empty() || self.broken.lock().map_or(true, |b| !b.is_empty())
    }

    /// Drop the current segments' pages from this process's mapping (benchmarks of cold
    /// lookups; the pages read back the same bytes).
    pub fn drop_cached_pages(&self) {
        for s in self.view.get().set.segments() {
            s.drop_pages();
        }
    }

    /// This index directory's lineage, as published (16 hex digits).
    pub fn lineage(&self) -> String {
        format!("{:016x}", self.lineage)
    }

    /// The published generation installed in this dataset's index (a follower's), if any.
    pub fn followed(&self) -> Result<Option<publish::PublishedId>> {
        Ok(self.segdir.followed()?.and_then(|s| {
            let (lineage, generation) = s.rsplit_once(':')?;
            Some(publish::PublishedId {
                lineage: lineage.to_string(),
                generation: generation.parse().ok()?,
            })
        }))
    }

    /// The catalog's and the names' entries, for a publication (under the build lock).
    pub(crate) fn state_snapshot(&self) -> Result<(publish::Kvs, publish::Kvs)> {
        let dump = |t: &sled::Tree| -> Result<publish::Kvs> {
            t.iter()
                .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(IndexError::from))
                .collect()
        };
        Ok((dump(&self.catalog.files)?, dump(&self.names)?))
    }

    /// Install a published generation (see [`publish::follow`]): names first (an extra name
    /// is harmless: lookups find no alert under it), then the manifest and the catalog in one
    /// transaction, then the stale names go, and lookups swap to the new generation.
    pub(crate) fn install(
        &self,
        next: manifest::Manifest,
        staged: &[String],
        catalog: publish::Kvs,
        names: publish::Kvs,
        id: &publish::PublishedId,
    ) -> Result<()> {
        for (k, v) in &names {
            self.names.insert(k.as_slice(), v.as_slice())?;
        }
        self.segdir
            .install(&next, staged, &catalog, &format!("{}:{}", id.lineage, id.generation))?;
        let keep: std::collections::HashSet<&[u8]> = names.iter().map(|(k, _)| k.as_slice()).collect();
        for k in self.names.iter().keys() {
            let k = k?;
            if !keep.contains(k.as_ref()) {
                self.names.remove(k)?;
            }
        }
        if let Ok(mut b) = self.broken.lock() {
            b.clear();
        }
        self.reload()
    }

    /// True when this dataset's index was installed from a published one (a follower's).
    /// A builder given such a directory starts over ([`DatasetIndex::reset`]): its file ids
    /// and ordinals were the publisher's, not its own.
    pub fn is_followed(&self) -> Result<bool> {
        Ok(self.segdir.followed()?.is_some())
    }

    /// Empty this dataset's index (catalog, names, segments); the next build reads the lake.
    pub async fn reset(&self) -> Result<()> {
        let _serialized = self.build_lock.lock().await;
        self.segdir.clear()?;
        self.names.clear()?;
        if let Ok(mut b) = self.broken.lock() {
            b.clear();
        }
        self.reload()
    }

    /// What the segment index holds now.
    pub fn index_stats(&self) -> IndexStats {
        let v = self.view.get();
        IndexStats {
            alerts: v.manifest.segments.iter().map(|s| s.alerts).sum(),
            segments: v.manifest.segments.len(),
            bytes: v.manifest.segments.iter().map(|s| s.bytes).sum(),
            generation: v.manifest.generation,
        }
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
