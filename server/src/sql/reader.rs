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
