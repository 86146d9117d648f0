//! Storage: dataset roots as `object_store` stores, and I/O accounting.
//!
//! Each dataset gets a store whose root is the dataset root, so every path the server reads is
//! inside it: object_store paths cannot hold `..`, and the local store is confined to its prefix.
//! [`CountingStore`] wraps a store and counts requests and bytes into any number of
//! [`IoStats`] (the server's totals and the current Flight request's).

use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, OBJECT_STORE_COALESCE_DEFAULT,
};
use serde::Serialize;

use crate::error::{Error, Result};

/// Open the store of a dataset root. Only `file://` URLs and plain paths exist so far.
pub fn open_root(root: &str) -> Result<(Arc<dyn ObjectStore>, RangeReads)> {
    let path: PathBuf = match root.split_once("://") {
        None => PathBuf::from(root),
        Some(("file", rest)) => {
            let url = url::Url::parse(root).map_err(|e| Error::InvalidArgument(format!("dataset root {root:?} is not a URL: {e}")))?;
            if !rest.starts_with('/') {
                return Err(Error::InvalidArgument(format!("dataset root {root:?}: a file URL needs an absolute path (file:///...)")));
            }
            url.to_file_path()
                .map_err(|_| Error::InvalidArgument(format!("dataset root {root:?} is not a local path")))?
        }
        Some((scheme, _)) => {
            return Err(Error::InvalidArgument(format!(
                "dataset root {root:?}: storage scheme {scheme}:// is not supported by this build; use file:// (or a plain path)"
            )))
        }
    };
    Ok((local_store(&path)?, RangeReads::Exact))
}

fn local_store(path: &FsPath) -> Result<Arc<dyn ObjectStore>> {
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| Error::InvalidArgument(format!("dataset root {} cannot be opened: {e}", path.display())))?;
    if !canonical.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "dataset root {} is not a directory",
            path.display()
        )));
    }
    let store = LocalFileSystem::new_with_prefix(&canonical)
        .map_err(|e| Error::InvalidArgument(format!("dataset root {}: {e}", path.display())))?;
    Ok(Arc::new(store))
}

/// Requests and bytes read from storage.
#[derive(Debug, Default)]
pub struct IoStats {
    requests: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IoSnapshot {
    pub requests: u64,
    pub bytes: u64,
}

impl IoStats {
    pub fn add(&self, requests: u64, bytes: u64) {
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> IoSnapshot {
        IoSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// How a store serves `get_ranges`, which decides what a vectored read costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReads {
    /// Each range is its own read of exactly its bytes (the local file store).
    Exact,
    /// Ranges closer than object_store's coalescing distance are fetched together, gaps
    /// included, one request per merged range (object_store's default, used by HTTP stores).
    Coalesced,
}

/// A store that counts what is read through it.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    stats: Vec<Arc<IoStats>>,
    ranges: RangeReads,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, ranges: RangeReads, stats: Vec<Arc<IoStats>>) -> Self {
        CountingStore { inner, stats, ranges }
    }
    fn add(&self, requests: u64, bytes: u64) {
        for s in &self.stats {
            s.add(requests, bytes);
        }
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

/// The requests a `get_ranges` call makes: ranges closer than the coalescing distance are
/// fetched together (what object_store's default and local implementations do).
fn coalesced(ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(OBJECT_STORE_COALESCE_DEFAULT) => {
                last.end = last.end.max(r.end)
            }
            _ => out.push(r),
        }
    }
    out
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let head = options.head;
        let r = self.inner.get_opts(location, options).await?;
        self.add(1, if head { 0 } else { r.range.end - r.range.start });
        Ok(r)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        let out = self.inner.get_ranges(location, ranges).await?;
        let reads = match self.ranges {
            RangeReads::Exact => ranges.to_vec(),
            RangeReads::Coalesced => coalesced(ranges),
        };
        self.add(reads.len() as u64, reads.iter().map(|r| r.end - r.start).sum());
        Ok(out)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.add(1, 0);
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.add(1, 0);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[test]
    fn coalescing_matches_object_store() {
        assert_eq!(coalesced(&[10..20, 0..5]), vec![0..20]);
        let far = 2 * OBJECT_STORE_COALESCE_DEFAULT;
        assert_eq!(coalesced(&[0..5, far..far + 1]), vec![0..5, far..far + 1]);
    }

    #[tokio::test]
    async fn reads_are_counted_and_roots_confined() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.bin"), vec![7u8; 100]).unwrap();
        std::fs::write(dir.path().parent().unwrap().join("outside.bin"), b"x").ok();
        let total = Arc::new(IoStats::default());
        let (local, ranges) = open_root(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(ranges, RangeReads::Exact);
        let store = CountingStore::new(local.clone(), ranges, vec![total.clone()]);
        let p = Path::from("f.bin");
        assert_eq!(store.get_range(&p, 10..30).await.unwrap().len(), 20);
        store.get_ranges(&p, &[0..1, 50..60]).await.unwrap();
        assert_eq!(total.snapshot(), IoSnapshot { requests: 3, bytes: 31 });
        let coalescing = Arc::new(IoStats::default());
        let store = CountingStore::new(local, RangeReads::Coalesced, vec![coalescing.clone()]);
        store.get_ranges(&p, &[0..1, 50..60]).await.unwrap();
        assert_eq!(coalescing.snapshot(), IoSnapshot { requests: 1, bytes: 60 });
        // `..` cannot be expressed as an object_store path segment.
        assert!(Path::parse("../outside.bin").is_err());
        let url = format!("file://{}", dir.path().display());
        assert!(open_root(&url).is_ok());
        assert!(open_root("file://relative/x").is_err());
        assert!(open_root("gopher://x/y").unwrap_err().to_string().contains("gopher://"));
        assert!(open_root("/definitely/not/here").is_err());
    }
}
