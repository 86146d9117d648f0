//! A parquet [`AsyncFileReader`] over any `object_store` store.
//!
//! Footers can be handed in from a cache ([`StoreReader::with_metadata`]); when they are read,
//! the last `prefetch` bytes of the file are fetched in one request, which for Spark-written
//! alert files holds the footer and the offset index together, so a cold open is one round trip.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
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
        }
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
            .with_column_index_policy(PageIndexPolicy::Skip)
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
        async move { self.store.get_range(&self.path, range).await.map_err(external) }.boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        async move { self.store.get_ranges(&self.path, &ranges).await.map_err(external) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>>> {
        self.load_metadata().boxed()
    }
}
