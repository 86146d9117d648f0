//! The configured datasets: their stores, their index trees, and a cache of parquet footers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use object_store::path::Path;
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use tracing::{info, warn};

use astroflight_index::reader::StoreReader;
use astroflight_index::{BuildStats, DatasetIndex, FileEntry, Index, IndexBuilder, SurveyKind};

use crate::config::Config;
use crate::cpu::CpuPool;
use crate::error::{Error, Result};
use crate::storage::{open_dataset, Backend, CountingStore, IoStats, RangeReads};

pub struct Dataset {
    pub name: String,
    pub kind: SurveyKind,
    pub root: String,
    pub store: Arc<dyn ObjectStore>,
    pub range_reads: RangeReads,
    pub backend: Backend,
    pub index: DatasetIndex,
}

/// Footers (with offset index, and the Arrow schema derived from them, which is worth keeping:
/// alert files have hundreds of leaf columns) of recently read files, keyed by dataset and file id. A file
/// that changes is re-indexed under a new file id, so entries never go stale; the oldest are
/// evicted past the capacity.
pub struct FooterCache {
    cap: usize,
    inner: Mutex<CacheState>,
}

/// (dataset number, file id)
type FileKey = (usize, u64);

/// The entries, and their keys in insertion order (eviction order).
type CacheState = (HashMap<FileKey, ArrowReaderMetadata>, VecDeque<FileKey>);

impl FooterCache {
    pub fn new(cap: usize) -> Self {
        FooterCache {
            cap: cap.max(1),
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    fn get(&self, key: FileKey) -> Option<ArrowReaderMetadata> {
        self.inner.lock().expect("footer cache lock").0.get(&key).cloned()
    }

    fn put(&self, key: FileKey, md: ArrowReaderMetadata) {
        let mut g = self.inner.lock().expect("footer cache lock");
        if g.0.insert(key, md).is_none() {
            g.1.push_back(key);
        }
        while g.1.len() > self.cap {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("footer cache lock").0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Lake {
    /// In configuration order; the position is the dataset's number in cache keys.
    datasets: Vec<Arc<Dataset>>,
    by_name: BTreeMap<String, usize>,
    pub footers: FooterCache,
    /// Everything read from storage since start.
    pub io: Arc<IoStats>,
    /// Where pages are decompressed and stamps decoded.
    pub cpu: CpuPool,
    index: Index,
}

impl Lake {
    /// Open the index and every dataset root of the configuration.
    pub fn open(config: &Config) -> Result<Lake> {
        std::fs::create_dir_all(&config.index_dir).map_err(|e| {
            Error::InvalidArgument(format!("cannot create index_dir {}: {e}", config.index_dir.display()))
        })?;
        let index = Index::open(&config.index_dir).map_err(|e| {
            Error::Unavailable(format!(
                "cannot open the index in {} (is another astroflight process using it?): {e}",
                config.index_dir.display()
            ))
        })?;
        let mut datasets = Vec::new();
        let mut by_name = BTreeMap::new();
        for d in &config.datasets {
            let opened = open_dataset(d)?;
            by_name.insert(d.name.clone(), datasets.len());
            datasets.push(Arc::new(Dataset {
                name: d.name.clone(),
                kind: d.kind.survey(),
                root: d.root.clone(),
                store: opened.store,
                range_reads: opened.range_reads,
                backend: opened.backend,
                index: index.dataset(&d.name)?,
            }));
        }
        Ok(Lake {
            datasets,
            by_name,
            footers: FooterCache::new(config.footer_cache_files),
            io: Arc::new(IoStats::default()),
            cpu: CpuPool::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))?,
            index,
        })
    }

    pub fn datasets(&self) -> impl Iterator<Item = &Arc<Dataset>> {
        self.datasets.iter()
    }

    pub fn dataset(&self, name: &str) -> Result<(usize, &Arc<Dataset>)> {
        self.by_name.get(name).map(|&i| (i, &self.datasets[i])).ok_or_else(|| {
            let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            Error::InvalidArgument(format!(
                "unknown dataset {name:?}; this server has: {}",
                known.join(", ")
            ))
        })
    }

    /// A store for one request: counts into the totals and into `request`.
    pub fn store_for(&self, ds: &Dataset, request: &Arc<IoStats>) -> Arc<dyn ObjectStore> {
        Arc::new(CountingStore::new(
            ds.store.clone(),
            ds.range_reads,
            vec![self.io.clone(), request.clone()],
        ))
    }

    /// The footer of an indexed file, from the cache or read: one suffix read holding the footer
    /// and the offset index, sized from the index (which measured where the file's data ends),
    /// so a cold cutout never reads more of the file than its metadata. A footer that disagrees with the index's row counts means the file
    /// changed since it was indexed.
    pub async fn footer(
        &self,
        ds_no: usize,
        store: Arc<dyn ObjectStore>,
        entry: &FileEntry,
    ) -> Result<ArrowReaderMetadata> {
        if let Some(md) = self.footers.get((ds_no, entry.file_id)) {
            return Ok(md);
        }
        let what = format!("file {}", entry.path);
        let mut reader = StoreReader::new(store, Path::from(entry.path.as_str()), entry.size).with_offset_index();
        if entry.metadata_len > 0 {
            reader = reader.with_prefetch(entry.metadata_len as usize);
        }
        let md = reader.load_metadata().await.map_err(|e| Error::parquet(&what, e))?;
        let rows: Vec<u64> = md.row_groups().iter().map(|r| r.num_rows() as u64).collect();
        if rows != entry.row_groups {
            return Err(Error::DataLoss(format!(
                "{what} changed since it was indexed (row groups {rows:?}, index has {:?}): re-run `astroflight index`",
                entry.row_groups
            )));
        }
        let md = ArrowReaderMetadata::try_new(md, ArrowReaderOptions::new()).map_err(|e| Error::parquet(&what, e))?;
        self.footers.put((ds_no, entry.file_id), md.clone());
        Ok(md)
    }

    /// Incrementally index every dataset (the server runs this at start and on the `reindex`
    /// action; `astroflight index` runs it without a server). Each dataset succeeds or fails
    /// alone: a dataset whose storage is down (its listing fails) keeps its previous index,
    /// untouched, and the others are still brought up to date.
    pub async fn reindex(&self) -> Vec<(String, Result<BuildStats>)> {
        let mut out = Vec::new();
        for ds in &self.datasets {
            let store: Arc<dyn ObjectStore> = Arc::new(CountingStore::new(
                ds.store.clone(),
                ds.range_reads,
                vec![self.io.clone()],
            ));
            // Remote stores gain from more files in flight (each read is a network round trip).
            let concurrency = if ds.backend == Backend::File { 4 } else { 8 };
            let result = IndexBuilder::new(store, None, ds.kind, ds.index.clone())
                .with_concurrency(concurrency)
                .run()
                .await
                .map_err(Error::from);
            match &result {
                Ok(stats) => info!(dataset = %ds.name, indexed = stats.indexed, unchanged = stats.unchanged,
                                   removed = stats.removed, failed = stats.failed.len(), rows = stats.rows,
                                   "index up to date"),
                Err(e) => warn!(dataset = %ds.name, error = %e, "index build failed; the previous index stays in use"),
            }
            out.push((ds.name.clone(), result));
        }
        out
    }

    pub fn flush(&self) -> Result<()> {
        self.index.flush().map_err(Error::from)
    }
}
