//! Storage: dataset roots as `object_store` stores, and I/O accounting.
//!
//! Each dataset gets a store whose root is the dataset root, so every path the server reads is
//! inside it: object_store paths cannot hold `..`, and the local store is confined to its prefix.
//! [`CountingStore`] wraps a store and counts requests and bytes into any number of
//! [`IoStats`] (the server's totals and the current Flight request's).
//!
//! Backends: a local directory (`file://` or a plain path), S3 (`s3://bucket/prefix`, through
//! object_store's S3 client), HDFS (`hdfs://namenode:port/path` or an HA nameservice, through
//! hdfs-native: no JVM) and HTTP(S) (object_store's HTTP client with range requests; it cannot
//! list, so [`ListedStore`] lists from a manifest or the configuration).
//!
//! A vectored read on a remote store is coalesced in [`CountingStore`], by
//! `object_store::coalesce_ranges`: ranges closer than object_store's coalescing distance
//! (1 MiB) become one ranged GET, the GETs run concurrently, and each one is counted as it is
//! made. The counts are therefore the requests the server made (object_store's internal
//! retries of one request are not counted twice).
//!
//! One file per backend ([`local`], [`s3`], [`hdfs`], [`http`]) and per wrapper ([`counting`],
//! [`retrying`], [`listed`], [`mounted`]). A wrapper whose writes go to its inner store
//! unchanged implements only its reads; `wrapper_store!` writes the rest once.

use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use hdfs_native_object_store::HdfsObjectStoreBuilder;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientConfigKey, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RetryConfig,
    OBJECT_STORE_COALESCE_DEFAULT,
};
use serde::Serialize;
use tracing::Instrument;

use crate::config::DatasetConfig;
use crate::error::{Error, Result};

/// `impl ObjectStore` for a wrapper (a struct with an `inner: Arc<dyn ObjectStore>`) whose
/// writes go to the inner store unchanged: the four write methods are written here once, the
/// wrapper gives the rest (its reads and listings).
macro_rules! wrapper_store {
    ($ty:ty { $($rest:tt)* }) => {
        #[async_trait::async_trait]
        impl object_store::ObjectStore for $ty {
            async fn put_opts(
                &self,
                location: &object_store::path::Path,
                payload: object_store::PutPayload,
                opts: object_store::PutOptions,
            ) -> object_store::Result<object_store::PutResult> {
                self.inner.put_opts(location, payload, opts).await
            }

            async fn put_multipart_opts(
                &self,
                location: &object_store::path::Path,
                opts: object_store::PutMultipartOptions,
            ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
                self.inner.put_multipart_opts(location, opts).await
            }

            fn delete_stream(
                &self,
                locations: futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>,
            ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
                self.inner.delete_stream(locations)
            }

            async fn copy_opts(
                &self,
                from: &object_store::path::Path,
                to: &object_store::path::Path,
                options: object_store::CopyOptions,
            ) -> object_store::Result<()> {
                self.inner.copy_opts(from, to, options).await
            }

            $($rest)*
        }
    };
}
// Tests elsewhere in the crate wrap stores too (`sql::reader`'s gated store).
#[cfg(test)]
pub(crate) use wrapper_store;

pub mod counting;
pub mod hdfs;
pub mod http;
pub mod listed;
pub mod local;
pub mod mounted;
pub mod retrying;
pub mod s3;

pub use astroflight_reader::{FileVersion, StoreReader, DEFAULT_FOOTER_PREFETCH};
pub use counting::CountingStore;
use hdfs::hdfs_root;
use http::http_root;
#[cfg(test)]
use listed::parse_file_list;
pub use listed::ListedStore;
use local::local_root;
pub use local::ConfinedLocal;
pub use mounted::MountedStore;
pub use retrying::RetryingStore;
use s3::s3_root;

/// The kind of storage behind a dataset root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    File,
    S3,
    Hdfs,
    Http,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::S3 => "s3",
            Backend::Hdfs => "hdfs",
            Backend::Http => "http",
        }
    }
}

/// An opened dataset root: a store whose root is the dataset root.
pub struct OpenedRoot {
    pub store: Arc<dyn ObjectStore>,
    pub range_reads: RangeReads,
    pub backend: Backend,
}

/// Defaults of the remote-store options (see [`DatasetConfig`]).
pub const DEFAULT_RETRIES: usize = 3;
pub const DEFAULT_RETRY_TIMEOUT_SECS: f64 = 15.0;
pub const DEFAULT_REQUEST_TIMEOUT_SECS: f64 = 20.0;
pub const DEFAULT_CONNECT_TIMEOUT_SECS: f64 = 5.0;
/// The manifest an HTTP dataset reads when its configuration lists no `files`.
pub const DEFAULT_MANIFEST: &str = "_manifest";

/// Open the store of a dataset root: a local directory, an S3 bucket prefix, an HDFS
/// directory or an HTTP(S) base URL. Options that do not apply to the root's scheme are
/// refused by name, so a typo'd or misplaced option never goes unnoticed.
pub fn open_dataset(d: &DatasetConfig) -> Result<OpenedRoot> {
    let root = d.root.as_str();
    let bad = |msg: String| Error::InvalidArgument(format!("dataset {:?}: {msg}", d.name));
    let scheme = root.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let backend = match scheme.as_deref() {
        None | Some("file") => Backend::File,
        Some("s3") | Some("s3a") => Backend::S3,
        Some("hdfs") => Backend::Hdfs,
        Some("http") | Some("https") => Backend::Http,
        Some(other) => {
            return Err(bad(format!(
                "root {root:?}: storage scheme {other}:// is not supported; use file://, s3://, hdfs://, http:// or https://"
            )))
        }
    };
    check_options(d, backend).map_err(bad)?;
    let url = match backend {
        Backend::File => None,
        _ => {
            let url = url::Url::parse(root).map_err(|e| bad(format!("root {root:?} is not a URL: {e}")))?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(bad(
                    "credentials in the root URL are not accepted (they would end up in logs); use the dataset's \
                     access_key_id / secret_access_key options or the AWS_* environment variables"
                        .into(),
                ));
            }
            Some(url)
        }
    };
    let opened = match (backend, url) {
        (Backend::File, _) => OpenedRoot {
            store: local_root(root).map_err(|e| bad(e.to_string()))?,
            range_reads: RangeReads::Exact,
            backend,
        },
        (Backend::S3, Some(url)) => OpenedRoot {
            store: s3_root(d, &url).map_err(bad)?,
            range_reads: RangeReads::Coalesced,
            backend,
        },
        (Backend::Hdfs, Some(url)) => OpenedRoot {
            store: hdfs_root(d, &url).map_err(bad)?,
            range_reads: RangeReads::Coalesced,
            backend,
        },
        (Backend::Http, Some(url)) => OpenedRoot {
            store: http_root(d, &url).map_err(bad)?,
            range_reads: RangeReads::Coalesced,
            backend,
        },
        _ => unreachable!("remote roots always have a URL"),
    };
    Ok(opened)
}

/// Open a dataset's `index_root` (its published index) with the dataset's storage options.
/// A local one is created when `create` (a builder writes there).
pub fn open_index_root(d: &DatasetConfig, index_root: &str, create: bool) -> Result<OpenedRoot> {
    if create && (!index_root.contains("://") || index_root.starts_with("file://")) {
        let path = match index_root.strip_prefix("file://") {
            Some(p) => std::path::PathBuf::from(p),
            None => std::path::PathBuf::from(index_root),
        };
        std::fs::create_dir_all(&path).map_err(|e| {
            Error::InvalidArgument(format!(
                "dataset {:?}: cannot create index_root {}: {e}",
                d.name,
                path.display()
            ))
        })?;
    }
    open_dataset(&DatasetConfig {
        root: index_root.to_string(),
        // HTTP: the published objects are named, never listed.
        files: index_root.starts_with("http").then(Vec::new),
        manifest: None,
        ..d.clone()
    })
}

/// Open a plain path or `file://` URL (also used by tools that have no configuration).
pub fn open_root(root: &str) -> Result<OpenedRoot> {
    open_dataset(&DatasetConfig::new("-", Default::default(), root))
}

/// Options (name, set?), the backends they apply to, and how to say so.
type OptionGroup<'a> = (&'a [(&'a str, bool)], &'a [Backend], &'a str);

fn check_options(d: &DatasetConfig, backend: Backend) -> std::result::Result<(), String> {
    let s3 = [
        ("endpoint", d.endpoint.is_some()),
        ("region", d.region.is_some()),
        ("access_key_id", d.access_key_id.is_some()),
        ("secret_access_key", d.secret_access_key.is_some()),
        ("session_token", d.session_token.is_some()),
        ("allow_http", d.allow_http.is_some()),
        ("virtual_hosted_style", d.virtual_hosted_style.is_some()),
        ("anonymous", d.anonymous.is_some()),
        ("requester_pays", d.requester_pays.is_some()),
    ];
    let hdfs = [("hdfs", !d.hdfs.is_empty())];
    let http = [("files", d.files.is_some()), ("manifest", d.manifest.is_some())];
    let remote = [
        ("retries", d.retries.is_some()),
        ("retry_timeout_secs", d.retry_timeout_secs.is_some()),
        ("request_timeout_secs", d.request_timeout_secs.is_some()),
    ];
    let http_client = [("connect_timeout_secs", d.connect_timeout_secs.is_some())];
    let groups: [OptionGroup; 5] = [
        (&s3, &[Backend::S3], "s3:// roots"),
        (&hdfs, &[Backend::Hdfs], "hdfs:// roots"),
        (&http, &[Backend::Http], "http(s):// roots"),
        (
            &remote,
            &[Backend::S3, Backend::Hdfs, Backend::Http],
            "remote (s3, hdfs, http) roots",
        ),
        (
            &http_client,
            &[Backend::S3, Backend::Http],
            "s3:// and http(s):// roots",
        ),
    ];
    for (options, backends, applies) in groups {
        if let Some((name, _)) = options.iter().find(|(_, set)| *set) {
            if !backends.contains(&backend) {
                return Err(format!(
                    "option `{name}` applies to {applies} only, and root {:?} is {}",
                    d.root,
                    backend.name()
                ));
            }
        }
    }
    if d.files.is_some() && d.manifest.is_some() {
        return Err("give either `files` or `manifest`, not both".into());
    }
    for (name, v) in [
        ("retry_timeout_secs", d.retry_timeout_secs),
        ("request_timeout_secs", d.request_timeout_secs),
        ("connect_timeout_secs", d.connect_timeout_secs),
    ] {
        if let Some(v) = v {
            if !(v > 0.0 && v.is_finite()) {
                return Err(format!("`{name}` must be a positive number of seconds (got {v})"));
            }
        }
    }
    Ok(())
}

fn secs(v: Option<f64>, default: f64) -> Duration {
    Duration::from_secs_f64(v.unwrap_or(default))
}

/// Timeouts as object_store's client options take them.
fn duration_text(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

fn retry_config(d: &DatasetConfig) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: d.retries.unwrap_or(DEFAULT_RETRIES),
        retry_timeout: secs(d.retry_timeout_secs, DEFAULT_RETRY_TIMEOUT_SECS),
    }
}

/// The object path a URL's path names inside its store (`/a/b/` -> `a/b`).
fn url_prefix(url: &url::Url) -> std::result::Result<Path, String> {
    Path::from_url_path(url.path().trim_matches('/'))
        .map_err(|e| format!("root path {:?} is not a valid object path: {e}", url.path()))
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: Path) -> Arc<dyn ObjectStore> {
    if prefix.as_ref().is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

/// Requests and bytes read from storage, and (for a request's own) the memory account its
/// reads are held against.
#[derive(Debug, Default)]
pub struct IoStats {
    requests: AtomicU64,
    bytes: AtomicU64,
    memory: Option<Arc<crate::memory::Account>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IoSnapshot {
    pub requests: u64,
    pub bytes: u64,
}

impl IoStats {
    /// A request's counters, whose reads hold memory from `account` while their bytes live.
    pub fn for_request(account: Arc<crate::memory::Account>) -> Self {
        IoStats {
            memory: Some(account),
            ..Default::default()
        }
    }

    /// The memory account of the request these counters belong to.
    pub fn memory(&self) -> Option<&Arc<crate::memory::Account>> {
        self.memory.as_ref()
    }

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
    /// included, one ranged GET per merged range, concurrently (remote stores).
    Coalesced,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatasetKind, Secret};

    /// Ranges farther apart than object_store's coalescing distance are separate GETs; closer
    /// ones one GET, gap included.
    #[tokio::test]
    async fn coalescing_follows_object_store_distance() {
        let dir = tempfile::tempdir().unwrap();
        let far = 2 * OBJECT_STORE_COALESCE_DEFAULT;
        let data: Vec<u8> = (0..far + 10).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f.bin"), &data).unwrap();
        let local = open_root(dir.path().to_str().unwrap()).unwrap();
        let io = Arc::new(IoStats::default());
        let store = CountingStore::new(local.store, RangeReads::Coalesced, vec![io.clone()]);
        let p = Path::from("f.bin");
        let got = store.get_ranges(&p, &[far..far + 1, 0..5]).await.unwrap();
        assert_eq!(got[0].as_ref(), &data[far as usize..far as usize + 1]);
        assert_eq!(got[1].as_ref(), &data[0..5]);
        assert_eq!(io.snapshot(), IoSnapshot { requests: 2, bytes: 6 });
        store.get_ranges(&p, &[10..20, 0..5]).await.unwrap();
        assert_eq!(io.snapshot(), IoSnapshot { requests: 3, bytes: 26 });
    }

    #[tokio::test]
    async fn a_mounted_store_is_its_inner_store_under_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("year=2024")).unwrap();
        std::fs::write(dir.path().join("year=2024/a.parquet"), b"abc").unwrap();
        let local = open_root(dir.path().to_str().unwrap()).unwrap();
        let m = MountedStore::new(local.store.clone(), "ztf");
        let listed: Vec<String> = m
            .list(Some(&Path::from("ztf")))
            .map_ok(|o| o.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed, vec!["ztf/year=2024/a.parquet"]);
        assert!(m.list(Some(&Path::from("lsst"))).next().await.is_none());
        let top = m.list_with_delimiter(Some(&Path::from("ztf"))).await.unwrap();
        assert_eq!(top.common_prefixes, vec![Path::from("ztf/year=2024")]);
        let r = m.get(&Path::from("ztf/year=2024/a.parquet")).await.unwrap();
        assert_eq!(r.meta.location, Path::from("ztf/year=2024/a.parquet"));
        assert_eq!(r.bytes().await.unwrap().as_ref(), b"abc");
        let outside = m.get(&Path::from("year=2024/a.parquet")).await;
        assert!(matches!(outside, Err(object_store::Error::NotFound { .. })));
    }

    #[tokio::test]
    async fn reads_are_counted_and_roots_confined() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100u8).collect();
        std::fs::write(dir.path().join("f.bin"), &data).unwrap();
        std::fs::write(dir.path().parent().unwrap().join("outside.bin"), b"x").ok();
        let total = Arc::new(IoStats::default());
        let local = open_root(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(local.range_reads, RangeReads::Exact);
        assert_eq!(local.backend, Backend::File);
        let store = CountingStore::new(local.store.clone(), local.range_reads, vec![total.clone()]);
        let p = Path::from("f.bin");
        assert_eq!(store.get_range(&p, 10..30).await.unwrap().len(), 20);
        store.get_ranges(&p, &[0..1, 50..60]).await.unwrap();
        assert_eq!(total.snapshot(), IoSnapshot { requests: 3, bytes: 31 });
        // Coalesced: one GET for both ranges, gap included, and each range sliced back out.
        let coalescing = Arc::new(IoStats::default());
        let store = CountingStore::new(local.store, RangeReads::Coalesced, vec![coalescing.clone()]);
        let got = store.get_ranges(&p, &[50..60, 0..1, 55..57, 99..99]).await.unwrap();
        assert_eq!(got[0].as_ref(), &data[50..60]);
        assert_eq!(got[1].as_ref(), &data[0..1]);
        assert_eq!(got[2].as_ref(), &data[55..57]);
        assert!(got[3].is_empty());
        assert_eq!(coalescing.snapshot(), IoSnapshot { requests: 1, bytes: 99 });
        assert!(store.get_ranges(&p, &[]).await.unwrap().is_empty());
        // `..` cannot be expressed as an object_store path segment.
        assert!(Path::parse("../outside.bin").is_err());
        let url = format!("file://{}", dir.path().display());
        assert!(open_root(&url).is_ok());
        assert!(open_root("file://relative/x").is_err());
        assert!(open_root("gopher://x/y")
            .err()
            .unwrap()
            .to_string()
            .contains("gopher://"));
        assert!(open_root("/definitely/not/here").is_err());
    }

    fn ds(root: &str) -> DatasetConfig {
        DatasetConfig::new("d", DatasetKind::Ztf, root)
    }

    fn err(d: &DatasetConfig) -> String {
        open_dataset(d).err().expect("an error").to_string()
    }

    #[tokio::test]
    async fn symlinks_out_of_a_local_root_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lake");
        let outside = dir.path().join("secret");
        std::fs::create_dir_all(root.join("year=2020")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("x.parquet"), b"secret").unwrap();
        std::fs::write(root.join("year=2020/a.parquet"), b"lake").unwrap();
        std::os::unix::fs::symlink(outside.join("x.parquet"), root.join("year=2020/link.parquet")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dirlink")).unwrap();
        // A symlink that stays inside the root is fine.
        std::os::unix::fs::symlink(root.join("year=2020/a.parquet"), root.join("inside.parquet")).unwrap();
        let store = open_root(root.to_str().unwrap()).unwrap().store;
        let mut listed: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        listed.sort();
        assert_eq!(listed, vec!["inside.parquet", "year=2020/a.parquet"]);
        for p in ["year=2020/link.parquet", "dirlink/x.parquet"] {
            let e = store.get(&Path::from(p)).await.unwrap_err();
            assert!(matches!(e, object_store::Error::NotFound { .. }), "{p}: {e}");
        }
        assert_eq!(
            store
                .get(&Path::from("inside.parquet"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .as_ref(),
            b"lake"
        );
    }

    #[test]
    fn endpoints_with_credentials_are_refused() {
        let mut d = ds("s3://bucket/x");
        d.endpoint = Some("http://user:pw@127.0.0.1:9000".into());
        d.allow_http = Some(true);
        let e = err(&d);
        assert!(e.contains("credentials in the endpoint URL"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
    }

    #[test]
    fn options_must_fit_the_scheme() {
        let mut d = ds("/tmp");
        d.endpoint = Some("http://127.0.0.1:9000".into());
        assert!(
            err(&d).contains("`endpoint` applies to s3:// roots only"),
            "{}",
            err(&d)
        );
        let mut d = ds("s3://bucket/x");
        d.files = Some(vec!["a.parquet".into()]);
        assert!(err(&d).contains("`files` applies to http(s):// roots only"));
        let mut d = ds("http://127.0.0.1:1/x");
        d.hdfs.insert("dfs.replication".into(), "1".into());
        assert!(err(&d).contains("`hdfs` applies to hdfs:// roots only"));
        let mut d = ds("hdfs://127.0.0.1:9000/x");
        d.connect_timeout_secs = Some(1.0);
        assert!(err(&d).contains("`connect_timeout_secs` applies to s3:// and http(s):// roots only"));
        let mut d = ds("/tmp");
        d.retries = Some(1);
        assert!(err(&d).contains("`retries` applies to remote (s3, hdfs, http) roots only"));
        let mut d = ds("s3://bucket/x");
        d.request_timeout_secs = Some(0.0);
        assert!(err(&d).contains("request_timeout_secs"));
        assert!(err(&ds("s3://user:pw@bucket/x")).contains("credentials in the root URL"));
        assert!(err(&ds("s3:///x")).contains("no bucket"));
    }

    #[test]
    fn s3_needs_allow_http_for_plain_endpoints_and_hides_secrets() {
        let mut d = ds("s3://bucket/lake/ztf");
        d.endpoint = Some("http://127.0.0.1:9000".into());
        d.access_key_id = Some("AKID".into());
        d.secret_access_key = Some(Secret::new("super-secret"));
        d.region = Some("us-east-1".into());
        let e = err(&d);
        assert!(e.contains("allow_http"), "{e}");
        assert!(!e.contains("super-secret"));
        d.allow_http = Some(true);
        let opened = open_dataset(&d).unwrap();
        assert_eq!(opened.backend, Backend::S3);
        assert_eq!(opened.range_reads, RangeReads::Coalesced);
        assert!(!format!("{}", opened.store).contains("super-secret"));
        assert!(!format!("{:?}", opened.store).contains("super-secret"));
    }

    #[tokio::test]
    async fn retrying_store_retries_transient_failures_only() {
        // A local store under a directory that appears later: NotFound is not retried...
        let dir = tempfile::tempdir().unwrap();
        let local = open_root(dir.path().to_str().unwrap()).unwrap().store;
        let store = RetryingStore {
            inner: local,
            retry: RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(1),
                    max_backoff: Duration::from_millis(2),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
            },
            timeout: Duration::from_secs(5),
        };
        let t0 = std::time::Instant::now();
        let e = store.get(&Path::from("missing.bin")).await.unwrap_err();
        assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(1));
        // ...and a read that succeeds comes back whole, with its range.
        std::fs::write(dir.path().join("f.bin"), b"0123456789").unwrap();
        let r = store.get_range(&Path::from("f.bin"), 2..5).await.unwrap();
        assert_eq!(r.as_ref(), b"234");
    }

    /// A store whose reads fail in a scripted way (a unit-test double for an HDFS client):
    /// `transient` generic failures, then success; or a permanent error; or a hang.
    #[derive(Debug)]
    struct Scripted {
        calls: AtomicU64,
        transient: u64,
        mode: &'static str,
    }

    impl fmt::Display for Scripted {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Scripted")
        }
    }

    #[async_trait]
    impl ObjectStore for Scripted {
        async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> object_store::Result<PutResult> {
            unimplemented!("reads only")
        }
        async fn put_multipart_opts(
            &self,
            _: &Path,
            _: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            unimplemented!("reads only")
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            match self.mode {
                "hang" => futures::future::pending().await,
                "permanent" => {
                    return Err(object_store::Error::NotFound {
                        path: location.to_string(),
                        source: "gone".into(),
                    })
                }
                "precondition" => {
                    return Err(object_store::Error::Precondition {
                        path: location.to_string(),
                        source: "changed".into(),
                    })
                }
                _ if n < self.transient => {
                    return Err(object_store::Error::Generic {
                        store: "scripted",
                        source: format!("transient failure {n}").into(),
                    })
                }
                _ => {}
            }
            let data = Bytes::from_static(b"0123456789");
            let range = match options.range {
                Some(r) => r.as_range(10).unwrap(),
                None => 0..10,
            };
            let body = data.slice(range.start as usize..range.end as usize);
            Ok(GetResult {
                payload: object_store::GetResultPayload::Stream(stream::once(async move { Ok(body) }).boxed()),
                meta: ObjectMeta {
                    location: location.clone(),
                    last_modified: Default::default(),
                    size: 10,
                    e_tag: None,
                    version: None,
                },
                range,
                attributes: Default::default(),
            })
        }
        fn delete_stream(
            &self,
            _: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            unimplemented!("reads only")
        }
        fn list(&self, _: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            unimplemented!("reads only")
        }
        async fn list_with_delimiter(&self, _: Option<&Path>) -> object_store::Result<ListResult> {
            unimplemented!("reads only")
        }
        async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> object_store::Result<()> {
            unimplemented!("reads only")
        }
    }

    fn retrying(mode: &'static str, transient: u64, max_retries: usize) -> (RetryingStore, Arc<Scripted>) {
        let inner = Arc::new(Scripted {
            calls: AtomicU64::new(0),
            transient,
            mode,
        });
        let store = RetryingStore {
            inner: inner.clone(),
            retry: RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(1),
                    max_backoff: Duration::from_millis(2),
                    base: 2.0,
                },
                max_retries,
                retry_timeout: Duration::from_secs(30),
            },
            timeout: Duration::from_millis(200),
        };
        (store, inner)
    }

    #[tokio::test]
    async fn retrying_store_with_injected_failures() {
        let p = Path::from("f");
        // Two transient failures, three retries allowed: the third attempt returns the bytes.
        let (store, inner) = retrying("transient", 2, 3);
        assert_eq!(store.get_range(&p, 2..5).await.unwrap().as_ref(), b"234");
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        // More transient failures than retries: the error says how many attempts were made.
        let (store, inner) = retrying("transient", 10, 2);
        let e = store.get_range(&p, 0..1).await.unwrap_err().to_string();
        assert!(
            e.contains("after 3 attempts") && e.contains("transient failure 2"),
            "{e}"
        );
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        // Permanent errors are returned at once, as they are.
        for mode in ["permanent", "precondition"] {
            let (store, inner) = retrying(mode, 0, 3);
            let e = store.get_range(&p, 0..1).await.unwrap_err();
            assert!(
                matches!(
                    e,
                    object_store::Error::NotFound { .. } | object_store::Error::Precondition { .. }
                ),
                "{e}"
            );
            assert_eq!(inner.calls.load(Ordering::SeqCst), 1, "{mode} is not retried");
        }
        // A read that hangs times out, is retried, and fails in bounded time.
        let (store, inner) = retrying("hang", 0, 1);
        let e = store.get_range(&p, 0..1).await.unwrap_err().to_string();
        assert!(e.contains("timed out"), "{e}");
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn http_file_lists() {
        let got = parse_file_list(["# lake", "", "year=2024/a.parquet", " /b.parquet "].into_iter()).unwrap();
        assert_eq!(got, vec![Path::from("year=2024/a.parquet"), Path::from("b.parquet")]);
        assert!(parse_file_list(["https://elsewhere/a.parquet"].into_iter()).is_err());
        assert!(parse_file_list(["../a.parquet"].into_iter()).is_err());
        let mut d = ds("https://archive.example.org/lake");
        d.files = Some(vec!["a.parquet".into()]);
        d.manifest = Some("m.txt".into());
        assert!(err(&d).contains("either `files` or `manifest`"));
        d.manifest = None;
        assert_eq!(open_dataset(&d).unwrap().backend, Backend::Http);
    }
}
