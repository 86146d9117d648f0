//! The footer cache: parquet footers (with their offset index, and the Arrow schema derived from
//! them, which is worth keeping: alert files have hundreds of leaf columns) of recently read
//! files, keyed by dataset and file id.
//!
//! A file that changes is re-indexed under a new file id, so entries never go stale. The cache
//! is bounded in files and in bytes (each footer's own measure of its memory); the oldest
//! entries go first. Concurrent misses of one file load it once: the first caller reads, the
//! others wait for its result.
//!
//! It is the one footer cache of the process: ticket scans read through it (`ReadCtx::footer` in `read`)
//! and so does Flight SQL, whose `ParquetFileReaderFactory` (`sql::reader`) answers DataFusion's
//! `get_metadata` from it for every indexed file.
//!
//! **Why not DataFusion's `FileMetadataCache` (`CachedParquetFileReaderFactory`).** Three
//! things it does not do, which this service needs:
//! - concurrent misses of one file share one load: a batch of endpoints opening the same files
//!   at once would otherwise read and decode each footer (hundreds of KiB for an alert file)
//!   once per reader. The test `datafusions_metadata_cache_loads_a_footer_once_per_concurrent_miss`
//!   (in `sql::reader`, where the choice is made) shows DataFusion's cache loading it once per
//!   reader;
//! - the Arrow schema derived from the footer is kept with it, not derived again by every
//!   reader (alert files have hundreds of leaves);
//! - the load is a versioned read through the dataset's store, counted into the request's I/O
//!   record and memory account, keyed by the index's file id, which changes when the file does.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use parquet::arrow::arrow_reader::ArrowReaderMetadata;

use crate::error::Result;

/// (dataset number, file id)
pub type FileKey = (usize, u64);

type Loading = Arc<tokio::sync::OnceCell<ArrowReaderMetadata>>;

struct State {
    entries: HashMap<FileKey, (ArrowReaderMetadata, u64)>,
    /// Keys in insertion order (eviction order).
    order: VecDeque<FileKey>,
    bytes: u64,
    /// Loads under way, so that concurrent misses of one file share one read.
    loading: HashMap<FileKey, Loading>,
}

pub struct FooterCache {
    max_files: usize,
    max_bytes: u64,
    state: Mutex<State>,
}

impl FooterCache {
    pub fn new(max_files: usize, max_bytes: u64) -> Self {
        FooterCache {
            max_files: max_files.max(1),
            max_bytes: max_bytes.max(1),
            state: Mutex::new(State {
                entries: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                loading: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves the maps consistent (no multi-step updates
        // span a panic point), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached footer, or the one `load` reads (once, however many callers miss at once).
    pub async fn get_or_load<F, Fut>(&self, key: FileKey, load: F) -> Result<ArrowReaderMetadata>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ArrowReaderMetadata>>,
    {
        let cell = {
            let mut g = self.lock();
            if let Some((md, _)) = g.entries.get(&key) {
                return Ok(md.clone());
            }
            g.loading.entry(key).or_default().clone()
        };
        let result = cell.get_or_try_init(load).await.cloned();
        let mut g = self.lock();
        if g.loading.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            g.loading.remove(&key);
        }
        if let Ok(md) = &result {
            self.insert(&mut g, key, md.clone());
        }
        result
    }

    fn insert(&self, g: &mut State, key: FileKey, md: ArrowReaderMetadata) {
        if g.entries.contains_key(&key) {
            return;
        }
        let size = md.metadata().memory_size() as u64;
        g.entries.insert(key, (md, size));
        g.order.push_back(key);
        g.bytes += size;
        while (g.order.len() > self.max_files || g.bytes > self.max_bytes) && g.order.len() > 1 {
            let Some(old) = g.order.pop_front() else { break };
            if let Some((_, b)) = g.entries.remove(&old) {
                g.bytes -= b;
            }
        }
    }

    /// Drop every footer of one dataset (its file ids changed meaning: a follower loaded an
    /// index of another lineage).
    pub fn forget_dataset(&self, dataset: usize) {
        let mut g = self.lock();
        let gone: Vec<FileKey> = g.entries.keys().filter(|k| k.0 == dataset).copied().collect();
        for k in gone {
            if let Some((_, b)) = g.entries.remove(&k) {
                g.bytes -= b;
            }
        }
        g.order.retain(|k| k.0 != dataset);
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (the footers' own measure).
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

/// A small parquet file (one int64 column `x`, two rows), for tests of footers and their caches.
#[cfg(test)]
pub(crate) fn tiny_parquet() -> bytes::Bytes {
    use arrow::array::{Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema.clone(), None).unwrap();
    w.write(&RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap())
        .unwrap();
    w.close().unwrap();
    buf.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use parquet::arrow::arrow_reader::ArrowReaderOptions;

    fn footer() -> ArrowReaderMetadata {
        ArrowReaderMetadata::load(&tiny_parquet(), ArrowReaderOptions::new()).unwrap()
    }

    #[tokio::test]
    async fn concurrent_misses_load_once_and_bytes_are_bounded() {
        let md = footer();
        let one = md.metadata().memory_size() as u64;
        let cache = Arc::new(FooterCache::new(100, one * 2));
        let loads = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, loads, gate, md) = (cache.clone(), loads.clone(), gate.clone(), md.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load((0, 1), || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await; // hold the load until every caller waits on it
                        Ok(md)
                    })
                    .await
                    .unwrap()
            }));
        }
        // Let every task reach the cache, then release the one load.
        while cache.lock().loading.get(&(0, 1)).map(Arc::strong_count).unwrap_or(0) < 9 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        // Bounded in bytes: a third footer evicts the first.
        for id in 2..=3 {
            let md = md.clone();
            cache.get_or_load((0, id), || async move { Ok(md) }).await.unwrap();
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.bytes() <= one * 2);
        assert!(!cache.lock().entries.contains_key(&(0, 1)));
    }
}
