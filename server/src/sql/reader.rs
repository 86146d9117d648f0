//! How Flight SQL scans read parquet files: through the same readers as cutouts and alert
//! batches. Every read carries the file's version (a file replaced mid-query fails that query
//! with DATA_LOSS instead of mixing two versions), counts into the request's `stats` record, and
//! footers come from the lake's footer cache with their offset index: one versioned read of the
//! metadata suffix per file, shared with the cutout path. With the offset index, a row selection
//! (the id index's, or the page index's) reads only the pages that hold the rows.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::Result as DfResult;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::future::BoxFuture;
use futures::FutureExt;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;

use crate::storage::{FileVersion, StoreReader};
use astroflight_index::FileEntry;

use crate::lake::{Dataset, Lake};
use crate::read::{file_reader, ReadCtx};
use crate::storage::IoStats;

/// Readers of one dataset's files for one request.
#[derive(Debug)]
pub struct LakeReaderFactory {
    pub lake: Arc<Lake>,
    pub ds: Arc<Dataset>,
    pub io: Arc<IoStats>,
    /// Indexed files by path (their footers are cached by file id).
    pub entries: Arc<HashMap<String, FileEntry>>,
}

impl ParquetFileReaderFactory for LakeReaderFactory {
    fn create_reader(
        &self,
        _partition_index: usize,
        file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        _metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        let path = self.ds.relative_path(file.object_meta.location.as_ref());
        let entry = self
            .entries
            .get(&path)
            .filter(|e| e.same_version(&file.object_meta))
            .cloned();
        let version = entry
            .as_ref()
            .map(|e| e.version())
            .unwrap_or_else(|| FileVersion::of_meta(&file.object_meta));
        let reader = file_reader(&self.lake, &self.ds, &self.io, &path, version).with_offset_index();
        let ctx = ReadCtx {
            lake: self.lake.clone(),
            ds: self.ds.clone(),
            io: self.io.clone(),
        };
        Ok(Box::new(LakeFileReader {
            reader,
            footer: entry.map(|e| (ctx, e)),
        }))
    }
}

/// One file: data through a versioned reader, the footer from the lake's cache when the file is
/// indexed (else read with its offset index).
struct LakeFileReader {
    reader: StoreReader,
    footer: Option<(ReadCtx, FileEntry)>,
}

impl AsyncFileReader for LakeFileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.reader.get_bytes(range)
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        self.reader.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        match self.footer.clone() {
            Some((ctx, entry)) => async move {
                ctx.footer(&entry)
                    .await
                    .map(|md| md.metadata().clone())
                    .map_err(|e| ParquetError::External(Box::new(e)))
            }
            .boxed(),
            None => self.reader.get_metadata(options),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::runtime::footer::tiny_parquet;
    use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
    use datafusion::execution::cache::cache_manager::CachedFileMetadataEntry;
    use datafusion::execution::cache::default_cache::DefaultCache;
    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{GetOptions, GetResult, ListResult, ObjectMeta, ObjectStore, ObjectStoreExt};

    /// A store whose reads wait at a gate until the test opens it, counting them.
    #[derive(Debug)]
    struct GatedStore {
        inner: Arc<dyn ObjectStore>,
        reads: AtomicUsize,
        gate: tokio::sync::Semaphore,
    }

    impl std::fmt::Display for GatedStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Gated({})", self.inner)
        }
    }

    crate::storage::wrapper_store!(GatedStore {
        async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            drop(self.gate.acquire().await.expect("the gate is never closed"));
            self.inner.get_opts(location, options).await
        }

        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
    });

    /// Why Flight SQL reads footers from the lake's cache (`runtime::footer`) and not from
    /// DataFusion's `FileMetadataCache` behind a `CachedParquetFileReaderFactory`: there, readers
    /// that miss one file at once each read and decode its footer (no load is shared). Every read
    /// is held at a gate until all eight readers have asked, so no reader can fill the cache
    /// before the others look. The lake's cache loads once for concurrent misses
    /// (`concurrent_misses_load_once_and_bytes_are_bounded`).
    #[tokio::test]
    async fn datafusions_metadata_cache_loads_a_footer_once_per_concurrent_miss() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("f.parquet");
        inner.put(&path, tiny_parquet().into()).await.unwrap();
        let meta = inner.head(&path).await.unwrap();
        let store = Arc::new(GatedStore {
            inner,
            reads: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
        });
        let cache = Arc::new(DefaultCache::<Path, CachedFileMetadataEntry>::new(1 << 20));
        let factory = CachedParquetFileReaderFactory::new(store.clone(), cache);
        let metrics = ExecutionPlanMetricsSet::new();
        const READERS: usize = 8;
        let mut readers: Vec<_> = (0..READERS)
            .map(|i| {
                factory
                    .create_reader(i, PartitionedFile::from(meta.clone()), None, &metrics)
                    .unwrap()
            })
            .collect();
        let open_when_all_asked = async {
            // Every reader asks within a poll of the others; a cache that shared loads would ask
            // once, and the gate opens after a deadline so that the test ends and says so.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while store.reads.load(Ordering::SeqCst) < READERS && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let asked = store.reads.load(Ordering::SeqCst);
            store.gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS >> 1);
            asked
        };
        let (loaded, asked) = tokio::join!(
            futures::future::join_all(readers.iter_mut().map(|r| r.get_metadata(None))),
            open_when_all_asked
        );
        assert_eq!(
            asked, READERS,
            "DataFusion's cache now shares one load among concurrent misses: consider it for Flight SQL"
        );
        let mut distinct: Vec<*const ParquetMetaData> =
            loaded.iter().map(|m| Arc::as_ptr(m.as_ref().unwrap())).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), READERS);
        // Once loaded, a later reader hits it (that much both caches do).
        let before = store.reads.load(Ordering::SeqCst);
        let mut later = factory
            .create_reader(READERS, PartitionedFile::from(meta), None, &metrics)
            .unwrap();
        let hit = later.get_metadata(None).await.unwrap();
        assert_eq!(store.reads.load(Ordering::SeqCst), before);
        assert!(loaded.iter().any(|m| Arc::ptr_eq(m.as_ref().unwrap(), &hit)));
    }
}
