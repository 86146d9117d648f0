//! A parquet [`AsyncFileReader`] over any `object_store` store: the storage layer's reader of
//! lake files. It sits below the index (whose build reads the id columns through it) and the
//! server (which re-exports it from `storage`); reading files is not the index's business.
//!
//! Footers can be handed in from a cache ([`StoreReader::with_metadata`]); when they are read,
//! the last `prefetch` bytes of the file are fetched in one request, which for Spark-written
//! alert files holds the footer and the offset index together, so a cold open is one round trip.
//!
//! A reader given the version of the file it expects ([`StoreReader::with_version`]: the one
//! the index recorded) sends it with every read (`If-Match` with the ETag, where the store has
//! one: S3, HTTP, HDFS and local files all do) and checks the object metadata that comes back
//! (size, ETag or modification time) and the length of what came back. A file rewritten or
//! truncated since it was indexed therefore fails with [`object_store::Error::Precondition`]
//! instead of being decoded against a footer of another version.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

/// Bytes read from the end of a file to get its footer (and usually its offset index) at once.
pub const DEFAULT_FOOTER_PREFETCH: usize = 512 * 1024;

pub struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    metadata: Option<Arc<ParquetMetaData>>,
    prefetch: usize,
    offset_index: PageIndexPolicy,
    column_index: PageIndexPolicy,
    version: Option<FileVersion>,
    coalesce: u64,
}

/// The version of a file a reader expects.
#[derive(Debug, Clone, PartialEq)]
pub struct FileVersion {
    pub size: u64,
    pub e_tag: Option<String>,
    pub last_modified_ms: i64,
}

impl FileVersion {
    pub fn of_meta(m: &ObjectMeta) -> Self {
        FileVersion {
            size: m.size,
            e_tag: m.e_tag.clone(),
            last_modified_ms: m.last_modified.timestamp_millis(),
        }
    }

    /// Why `meta` is not this version, if it is not: the size differs, or the ETags (when both
    /// have one) differ, or else the modification times.
    pub fn mismatch(&self, meta: &ObjectMeta) -> Option<String> {
        if meta.size != self.size {
            return Some(format!("its size is {} bytes, the index has {}", meta.size, self.size));
        }
        match (&self.e_tag, &meta.e_tag) {
            (Some(a), Some(b)) if a != b => Some(format!("its ETag is {b}, the index has {a}")),
            (Some(_), Some(_)) => None,
            _ if meta.last_modified.timestamp_millis() != self.last_modified_ms => Some(format!(
                "it was modified at {} (ms), the index has {}",
                meta.last_modified.timestamp_millis(),
                self.last_modified_ms
            )),
            _ => None,
        }
    }
}

fn changed(path: &Path, why: String) -> object_store::Error {
    object_store::Error::Precondition {
        path: path.to_string(),
        source: format!("the file changed since it was indexed: {why}").into(),
    }
}

impl StoreReader {
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, size: u64) -> Self {
        StoreReader {
            store,
            path,
            size,
            metadata: None,
            prefetch: DEFAULT_FOOTER_PREFETCH,
            offset_index: PageIndexPolicy::Skip,
            column_index: PageIndexPolicy::Skip,
            version: None,
            coalesce: object_store::OBJECT_STORE_COALESCE_DEFAULT,
        }
    }

    /// Read only this version of the file (see the module docs).
    pub fn with_version(mut self, version: FileVersion) -> Self {
        self.version = Some(version);
        self
    }

    /// Ranges of one vectored read closer than this are fetched as one request (gaps
    /// included). 0 suits local files, where a request costs little.
    pub fn with_coalesce(mut self, bytes: u64) -> Self {
        self.coalesce = bytes;
        self
    }

    /// One ranged read, of the expected version when there is one.
    async fn fetch(
        store: Arc<dyn ObjectStore>,
        path: Path,
        version: Option<FileVersion>,
        range: Range<u64>,
    ) -> object_store::Result<Bytes> {
        let Some(v) = version else {
            return store.get_range(&path, range).await;
        };
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: v.e_tag.clone(),
            ..Default::default()
        };
        let result = match store.get_opts(&path, opts).await {
            Ok(r) => r,
            Err(e @ (object_store::Error::NotFound { .. } | object_store::Error::Precondition { .. })) => {
                return Err(e)
            }
            Err(e) => {
                // A read past the end of a file that shrank fails before any metadata comes
                // back: ask for it, so that a changed file is reported as changed, not as an
                // outage.
                if let Ok(meta) = store.head(&path).await {
                    if let Some(why) = v.mismatch(&meta) {
                        return Err(changed(&path, why));
                    }
                }
                return Err(e);
            }
        };
        if let Some(why) = v.mismatch(&result.meta) {
            return Err(changed(&path, why));
        }
        let bytes = result.bytes().await?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(changed(
                &path,
                format!("bytes {range:?} returned {} bytes", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    /// Use this footer instead of reading it.
    pub fn with_metadata(mut self, metadata: Arc<ParquetMetaData>) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Also load the offset index (page locations) when it is there; files without one still open.
    pub fn with_offset_index(mut self) -> Self {
        self.offset_index = PageIndexPolicy::Optional;
        self
    }

    /// Also load the page index (offset index and column index: page locations and page
    /// statistics) when it is there, for scans that prune pages.
    pub fn with_page_index(mut self) -> Self {
        self.offset_index = PageIndexPolicy::Optional;
        self.column_index = PageIndexPolicy::Optional;
        self
    }

    pub fn with_prefetch(mut self, bytes: usize) -> Self {
        self.prefetch = bytes;
        self
    }

    /// Read the footer (and offset index if asked for) now.
    pub async fn load_metadata(&mut self) -> Result<Arc<ParquetMetaData>> {
        if let Some(m) = &self.metadata {
            return Ok(m.clone());
        }
        let size = self.size;
        let md = ParquetMetaDataReader::new()
            .with_offset_index_policy(self.offset_index)
            .with_column_index_policy(self.column_index)
            .with_prefetch_hint(Some(self.prefetch))
            .load_and_finish(&mut *self, size)
            .await?;
        let md = Arc::new(md);
        self.metadata = Some(md.clone());
        Ok(md)
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes>> {
        let fetch = Self::fetch(self.store.clone(), self.path.clone(), self.version.clone(), range);
        async move { fetch.await.map_err(external) }.boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        if self.version.is_none() {
            return async move { self.store.get_ranges(&self.path, &ranges).await.map_err(external) }.boxed();
        }
        let (store, path, version, coalesce) = (
            self.store.clone(),
            self.path.clone(),
            self.version.clone(),
            self.coalesce,
        );
        async move {
            object_store::coalesce_ranges(
                &ranges,
                |r| Self::fetch(store.clone(), path.clone(), version.clone(), r),
                coalesce,
            )
            .await
            .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>>> {
        self.load_metadata().boxed()
    }
}
