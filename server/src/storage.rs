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
//! A vectored read on a remote store is coalesced here, in [`CountingStore`]: ranges closer
//! than object_store's coalescing distance (1 MiB) become one ranged GET, the GETs run
//! concurrently, and each one is counted as it is made. The counts are therefore the requests
//! the server made (object_store's internal retries of one request are not counted twice).

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

fn local_root(root: &str) -> Result<Arc<dyn ObjectStore>> {
    let path: PathBuf = match root.split_once("://") {
        None => PathBuf::from(root),
        Some((_, rest)) => {
            let url = url::Url::parse(root)
                .map_err(|e| Error::InvalidArgument(format!("root {root:?} is not a URL: {e}")))?;
            if !rest.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "root {root:?}: a file URL needs an absolute path (file:///...)"
                )));
            }
            url.to_file_path()
                .map_err(|_| Error::InvalidArgument(format!("root {root:?} is not a local path")))?
        }
    };
    local_store(&path)
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
    Ok(Arc::new(ConfinedLocal {
        inner: Arc::new(store),
        root: canonical,
    }))
}

/// A local root that never leaves its directory: object_store's local store follows symlinks
/// (into other directories, or to files elsewhere), so a symlink inside the lake that resolves
/// outside the root is left out of listings and refused on reads, as if it were not there.
/// (Reads of indexed files also carry the file's version, whose local ETag is its inode, so a
/// file swapped for a symlink after indexing fails as changed.)
#[derive(Debug)]
pub struct ConfinedLocal {
    inner: Arc<dyn ObjectStore>,
    root: PathBuf,
}

impl fmt::Display for ConfinedLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Confined({})", self.inner)
    }
}

impl ConfinedLocal {
    /// True when the path resolves (symlinks followed) inside the root.
    fn inside(root: &FsPath, location: &Path) -> bool {
        let mut p = root.to_path_buf();
        p.extend(location.parts().map(|part| part.as_ref().to_string()));
        std::fs::canonicalize(&p).is_ok_and(|c| c.starts_with(root))
    }

    fn check(&self, location: &Path) -> object_store::Result<()> {
        if Self::inside(&self.root, location) {
            Ok(())
        } else {
            Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: "not a file inside the dataset root (a symlink out of the root is not followed)".into(),
            })
        }
    }
}

#[async_trait]
impl ObjectStore for ConfinedLocal {
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
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let root = self.root.clone();
        self.inner
            .list(prefix)
            .try_filter(move |m| {
                let inside = Self::inside(&root, &m.location);
                if !inside {
                    tracing::warn!(path = %m.location, "skipping a symlink that leads out of the dataset root");
                }
                futures::future::ready(inside)
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut r = self.inner.list_with_delimiter(prefix).await?;
        r.objects.retain(|m| Self::inside(&self.root, &m.location));
        Ok(r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
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

fn s3_root(d: &DatasetConfig, url: &url::Url) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    let bucket = url
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| format!("root {:?} names no bucket (s3://bucket/prefix)", d.root))?;
    // The AWS_* environment first (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    // AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ALLOW_HTTP...), then the dataset's options.
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(v) = &d.endpoint {
        b = b.with_endpoint(v);
    }
    if let Some(v) = &d.region {
        b = b.with_region(v);
    }
    if let Some(v) = &d.access_key_id {
        b = b.with_access_key_id(v);
    }
    if let Some(v) = &d.secret_access_key {
        b = b.with_secret_access_key(v.expose());
    }
    if let Some(v) = &d.session_token {
        b = b.with_token(v.expose());
    }
    if let Some(v) = d.allow_http {
        b = b.with_allow_http(v);
    }
    if let Some(v) = d.virtual_hosted_style {
        b = b.with_virtual_hosted_style_request(v);
    }
    if let Some(v) = d.anonymous {
        b = b.with_skip_signature(v);
    }
    if let Some(v) = d.requester_pays {
        if v && d.anonymous == Some(true) {
            return Err(
                "requester_pays needs signed requests (the requester is billed): it cannot go with anonymous = true"
                    .into(),
            );
        }
        b = b.with_request_payer(v);
    }
    let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
    if let Some(e) = &endpoint {
        // Whether from the dataset or from AWS_ENDPOINT_URL: credentials belong in their own
        // options, not in a URL that ends up in logs and errors.
        let url = url::Url::parse(e).map_err(|err| format!("endpoint {e:?} is not a URL: {err}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "credentials in the endpoint URL are not accepted (they would end up in logs); use \
                        access_key_id / secret_access_key or the AWS_* environment variables"
                    .into(),
            );
        }
    }
    let allow_http = b
        .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
        .map(|v| v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if let Some(e) = &endpoint {
        if e.starts_with("http://") && !allow_http {
            return Err(format!(
                "endpoint {e} is plain http: set `allow_http = true` (or AWS_ALLOW_HTTP=true) to use it"
            ));
        }
    }
    let b = b
        .with_retry(retry_config(d))
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            duration_text(secs(d.request_timeout_secs, DEFAULT_REQUEST_TIMEOUT_SECS)),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            duration_text(secs(d.connect_timeout_secs, DEFAULT_CONNECT_TIMEOUT_SECS)),
        );
    // object_store's own errors never include credentials; only the message is kept.
    let store = b.build().map_err(|e| format!("cannot open S3 bucket {bucket}: {e}"))?;
    Ok(with_prefix(Arc::new(store), url_prefix(url)?))
}

fn hdfs_root(d: &DatasetConfig, url: &url::Url) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    if authority.is_empty() {
        return Err(format!(
            "root {:?} names no NameNode or nameservice (hdfs://namenode:port/path)",
            d.root
        ));
    }
    let store = HdfsObjectStoreBuilder::new()
        .with_url(format!("hdfs://{authority}"))
        .with_config(d.hdfs.clone())
        .build()
        .map_err(|e| format!("cannot open HDFS {authority}: {e}"))?;
    // hdfs-native fails over between replicas and NameNodes itself, but has no request timeout
    // and does not retry a read that broke mid-way (a DataNode going away during a read).
    let store = RetryingStore {
        inner: Arc::new(store),
        retry: retry_config(d),
        timeout: secs(d.request_timeout_secs, DEFAULT_REQUEST_TIMEOUT_SECS),
    };
    Ok(with_prefix(Arc::new(store), url_prefix(url)?))
}

fn http_root(d: &DatasetConfig, url: &url::Url) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    let mut base = url.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    let store = HttpBuilder::new()
        .with_url(base.as_str())
        .with_retry(retry_config(d))
        .with_config(ClientConfigKey::AllowHttp, "true")
        .with_http_connector(SameHostConnector {
            timeout: secs(d.request_timeout_secs, DEFAULT_REQUEST_TIMEOUT_SECS),
            connect_timeout: secs(d.connect_timeout_secs, DEFAULT_CONNECT_TIMEOUT_SECS),
        })
        .build()
        .map_err(|e| format!("cannot open {}: {e}", d.root))?;
    let files = match &d.files {
        Some(list) => FileList::Listed(parse_file_list(list.iter().map(String::as_str))?),
        None => FileList::Manifest(
            Path::parse(d.manifest.as_deref().unwrap_or(DEFAULT_MANIFEST))
                .map_err(|e| format!("manifest path is not valid: {e}"))?,
        ),
    };
    Ok(Arc::new(ListedStore {
        inner: Arc::new(store),
        files,
        base: base.to_string(),
    }))
}

/// The HTTP client of HTTP(S) roots: object_store's settings (timeouts), and redirects followed
/// only to the same scheme, host and port (at most 5). A redirect elsewhere is not followed: the
/// read fails with the redirect status, so a lake server cannot send astroflight to read from
/// another host (another network, a metadata service).
#[derive(Debug)]
struct SameHostConnector {
    timeout: Duration,
    connect_timeout: Duration,
}

impl object_store::client::HttpConnector for SameHostConnector {
    fn connect(&self, _: &object_store::ClientOptions) -> object_store::Result<object_store::client::HttpClient> {
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let same = attempt.previous().first().is_some_and(|first| {
                first.scheme() == attempt.url().scheme()
                    && first.host_str() == attempt.url().host_str()
                    && first.port_or_known_default() == attempt.url().port_or_known_default()
            });
            if same && attempt.previous().len() <= 5 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let client = reqwest::Client::builder()
            .user_agent(concat!("astroflight/", env!("CARGO_PKG_VERSION")))
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .redirect(policy)
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "http",
                source: Box::new(e),
            })?;
        Ok(object_store::client::HttpClient::new(client))
    }
}

/// Timeouts and bounded retries for a store that has none of its own (HDFS): each read gets
/// `timeout`, and a failed or timed-out read is retried with exponential backoff up to
/// `retry.max_retries` times within `retry.retry_timeout`. A read's body is fetched inside the
/// attempt (reads here are ranges of a few MB), so a connection lost mid-body is retried too.
/// Errors that a retry cannot fix (not found, bad path, precondition) are returned at once.
#[derive(Debug)]
pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    retry: RetryConfig,
    timeout: Duration,
}

impl fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retrying({})", self.inner)
    }
}

fn retryable(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
    )
}

#[async_trait]
impl ObjectStore for RetryingStore {
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
        let started = tokio::time::Instant::now();
        let mut backoff = self.retry.backoff.init_backoff;
        let mut attempt = 0;
        loop {
            let once = async {
                let r = self.inner.get_opts(location, options.clone()).await?;
                let (meta, range, attributes) = (r.meta.clone(), r.range.clone(), r.attributes.clone());
                let body = r.bytes().await?;
                Ok::<_, object_store::Error>(GetResult {
                    payload: object_store::GetResultPayload::Stream(stream::once(async move { Ok(body) }).boxed()),
                    meta,
                    range,
                    attributes,
                })
            };
            let err = match tokio::time::timeout(self.timeout, once).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) if !retryable(&e) => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => object_store::Error::Generic {
                    store: "hdfs",
                    source: format!("read of {location} timed out after {:.1} s", self.timeout.as_secs_f64()).into(),
                },
            };
            if attempt >= self.retry.max_retries || started.elapsed() + backoff > self.retry.retry_timeout {
                return Err(object_store::Error::Generic {
                    store: "hdfs",
                    source: format!("read of {location} failed after {} attempts: {err}", attempt + 1).into(),
                });
            }
            tracing::debug!(%location, attempt, error = %err, "retrying a storage read");
            tokio::time::sleep(backoff).await;
            backoff = backoff
                .mul_f64(self.retry.backoff.base)
                .min(self.retry.backoff.max_backoff);
            attempt += 1;
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: Path) -> Arc<dyn ObjectStore> {
    if prefix.as_ref().is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

/// Relative file paths (config list or manifest lines): `#` comments and blank lines are
/// skipped; absolute URLs and `..` are refused.
fn parse_file_list<'a>(lines: impl Iterator<Item = &'a str>) -> std::result::Result<Vec<Path>, String> {
    let mut out = Vec::new();
    for line in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains("://") {
            return Err(format!("file {line:?}: list paths relative to the root, not URLs"));
        }
        let p =
            Path::parse(line.trim_start_matches('/')).map_err(|e| format!("file {line:?} is not a valid path: {e}"))?;
        if p.parts().any(|part| part.as_ref() == ".." || part.as_ref() == ".") {
            return Err(format!("file {line:?}: `.` and `..` are not allowed"));
        }
        out.push(p);
    }
    Ok(out)
}

/// Where an HTTP dataset's file list comes from.
#[derive(Debug, Clone)]
enum FileList {
    Listed(Vec<Path>),
    Manifest(Path),
}

/// A store that cannot list (HTTP) made listable from an explicit file list: `list` returns
/// the listed files, with their size and version from a HEAD request each.
#[derive(Debug)]
pub struct ListedStore {
    inner: Arc<dyn ObjectStore>,
    files: FileList,
    base: String,
}

impl fmt::Display for ListedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Listed({})", self.base)
    }
}

impl ListedStore {
    async fn file_list(&self) -> object_store::Result<Vec<Path>> {
        match &self.files {
            FileList::Listed(l) => Ok(l.clone()),
            FileList::Manifest(m) => {
                let body = self.inner.get(m).await.map_err(|e| match e {
                    object_store::Error::NotFound { path, source } => object_store::Error::NotFound {
                        path: path.clone(),
                        source: format!(
                            "no manifest {m} at {}: publish one (one data file per line) or list the files in \
                             the dataset's `files` option ({source})",
                            self.base
                        )
                        .into(),
                    },
                    other => other,
                })?;
                let bytes = body.bytes().await?;
                let text = std::str::from_utf8(&bytes).map_err(|e| object_store::Error::Generic {
                    store: "manifest",
                    source: format!("manifest {m} is not UTF-8: {e}").into(),
                })?;
                parse_file_list(text.lines()).map_err(|e| object_store::Error::Generic {
                    store: "manifest",
                    source: format!("manifest {m}: {e}").into(),
                })
            }
        }
    }
}

#[async_trait]
impl ObjectStore for ListedStore {
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
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = ListedStore {
            inner: self.inner.clone(),
            files: self.files.clone(),
            base: self.base.clone(),
        };
        let prefix = prefix.cloned();
        stream::once(async move {
            let files = this.file_list().await?;
            let inner = this.inner.clone();
            let wanted = files
                .into_iter()
                .filter(move |p| prefix.as_ref().is_none_or(|pre| p.prefix_matches(pre)));
            Ok::<_, object_store::Error>(
                stream::iter(wanted)
                    .map(move |p| {
                        let inner = inner.clone();
                        async move { inner.head(&p).await }
                    })
                    .buffered(16),
            )
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let objects: Vec<ObjectMeta> = self.list(prefix).try_collect().await?;
        Ok(ListResult {
            common_prefixes: Vec::new(),
            objects,
        })
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
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

/// Ranged GETs of one vectored read in flight at once (object_store's own default).
const MAX_CONCURRENT_RANGE_READS: usize = 10;

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

    /// The account reads are held against (the request's), if any.
    fn account(&self) -> Option<&Arc<crate::memory::Account>> {
        self.stats.iter().find_map(|s| s.memory())
    }

    /// Reserve `n` bytes for a read of `location` before it is made (RESOURCE_EXHAUSTED when
    /// the request's share or the budget has no room: the read is not made).
    fn reserve(&self, location: &Path, n: u64) -> object_store::Result<Option<crate::memory::Reservation>> {
        let Some(account) = self.account() else {
            return Ok(None);
        };
        account
            .reserve(n, &format_args!("reading {location}"))
            .map(Some)
            .map_err(|e| object_store::Error::Generic {
                store: crate::error::MEMORY_STORE,
                source: Box::new(e),
            })
    }
}

/// Bytes that hold their share of a reservation until the last slice of them is dropped.
struct Held {
    bytes: Bytes,
    _reservation: crate::memory::Reservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

fn held(bytes: Bytes, reservation: &mut Option<crate::memory::Reservation>) -> Bytes {
    match reservation {
        Some(r) => {
            let part = r.split(bytes.len() as u64);
            Bytes::from_owner(Held {
                bytes,
                _reservation: part,
            })
        }
        None => bytes,
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
        // A child span of the request's: one per storage request, with its bytes.
        let span =
            tracing::info_span!("storage.read", path = %location, requests = 1i64, bytes = tracing::field::Empty);
        async {
            // A request counts when it is made; its bytes when they arrive.
            self.add(1, 0);
            let r = self.inner.get_opts(location, options).await?;
            if head {
                return Ok(r);
            }
            let n = r.range.end - r.range.start;
            self.add(0, n);
            tracing::Span::current().record("bytes", n as i64);
            // A request's reads hold its memory while their bytes live.
            let mut reservation = self.reserve(location, n)?;
            if reservation.is_none() {
                return Ok(r);
            }
            let (meta, range, attributes) = (r.meta.clone(), r.range.clone(), r.attributes.clone());
            // A local file is read in one blocking read of the whole range: its stream would
            // be 8 KiB chunks, each a hop to the blocking pool (128 for one stamp page, which
            // made a local cutout ~4 ms slower). Remote bodies stream as they arrive.
            let chunks = if matches!(r.payload, GetResultPayload::File(..)) {
                let body = held(r.bytes().await?, &mut reservation);
                stream::once(async move { Ok(body) }).boxed()
            } else {
                r.into_stream().map_ok(move |b| held(b, &mut reservation)).boxed()
            };
            Ok(GetResult {
                payload: GetResultPayload::Stream(chunks),
                meta,
                range,
                attributes,
            })
        }
        .instrument(span)
        .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        match self.ranges {
            RangeReads::Exact => {
                let n: u64 = ranges.iter().map(|r| r.end - r.start).sum();
                let span = tracing::info_span!("storage.read", path = %location, requests = ranges.len() as i64, bytes = n as i64);
                self.add(ranges.len() as u64, 0);
                let mut reservation = self.reserve(location, n)?;
                let out = self.inner.get_ranges(location, ranges).instrument(span).await?;
                self.add(0, n);
                Ok(out.into_iter().map(|b| held(b, &mut reservation)).collect())
            }
            RangeReads::Coalesced => {
                if ranges.is_empty() {
                    return Ok(Vec::new());
                }
                let merged = coalesced(ranges);
                let fetched: Vec<Bytes> = stream::iter(merged.iter().cloned())
                    .map(|r| self.get_range(location, r))
                    .buffered(MAX_CONCURRENT_RANGE_READS)
                    .try_collect()
                    .await?;
                ranges
                    .iter()
                    .map(|r| {
                        // The merged range starting at or before r.start (merged ranges are sorted
                        // and disjoint, and every requested range lies inside one of them).
                        let i = merged.partition_point(|m| m.start <= r.start).saturating_sub(1);
                        let m = &merged[i];
                        if r.start < m.start || r.end > m.end {
                            return Err(object_store::Error::Generic {
                                store: "counting",
                                source: format!("range {r:?} not covered by the coalesced read {m:?}").into(),
                            });
                        }
                        Ok(fetched[i].slice((r.start - m.start) as usize..(r.end - m.start) as usize))
                    })
                    .collect()
            }
        }
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

/// A store seen under a folder: the path `mount/x` is the inner store's `x`, and what the inner
/// store lists comes back under `mount/` (the opposite of object_store's `PrefixStore`). Flight
/// SQL mounts each dataset under its name, so that paths, and the caches DataFusion keys by
/// path, never mix two datasets' files.
#[derive(Debug)]
pub struct MountedStore {
    inner: Arc<dyn ObjectStore>,
    mount: Path,
}

impl MountedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, mount: &str) -> Self {
        MountedStore {
            inner,
            mount: Path::from(mount),
        }
    }

    /// The inner path of an outer one; a path outside the mount does not exist here.
    fn inner_path(&self, location: &Path) -> object_store::Result<Path> {
        match location.prefix_match(&self.mount) {
            Some(parts) => Ok(Path::from_iter(parts)),
            None => Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: format!("not under the mount {}", self.mount).into(),
            }),
        }
    }

    fn inner_prefix(&self, prefix: Option<&Path>) -> Option<Option<Path>> {
        match prefix {
            None => Some(None),
            Some(p) if p.as_ref().is_empty() => Some(None),
            Some(p) => match p.prefix_match(&self.mount) {
                Some(parts) => Some(Some(Path::from_iter(parts))),
                // A prefix above the mount (`ztf` of `ztf/...`) lists it whole.
                None if self.mount.prefix_match(p).is_some() => Some(None),
                None => None,
            },
        }
    }

    fn outer(mount: &Path, p: &Path) -> Path {
        mount.parts().chain(p.parts()).collect()
    }

    fn outer_meta(mount: &Path, mut m: ObjectMeta) -> ObjectMeta {
        m.location = Self::outer(mount, &m.location);
        m
    }
}

impl fmt::Display for MountedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mounted({} at {})", self.inner, self.mount)
    }
}

#[async_trait]
impl ObjectStore for MountedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(&self.inner_path(location)?, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(&self.inner_path(location)?, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let mut r = self.inner.get_opts(&self.inner_path(location)?, options).await?;
        r.meta = Self::outer_meta(&self.mount, r.meta);
        Ok(r)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(&self.inner_path(location)?, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let mount = self.mount.clone();
        let inner_locations = locations
            .map(move |p| {
                let p = p?;
                let inner: Option<Path> = p.prefix_match(&mount).map(Path::from_iter);
                inner.ok_or_else(|| object_store::Error::NotFound {
                    path: p.to_string(),
                    source: "not under the mount".into(),
                })
            })
            .boxed();
        let mount = self.mount.clone();
        self.inner
            .delete_stream(inner_locations)
            .map_ok(move |p| Self::outer(&mount, &p))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let Some(inner) = self.inner_prefix(prefix) else {
            return stream::empty().boxed();
        };
        let mount = self.mount.clone();
        self.inner
            .list(inner.as_ref())
            .map_ok(move |m| Self::outer_meta(&mount, m))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let inner = match (prefix, self.inner_prefix(prefix)) {
            (_, None) => {
                return Ok(ListResult {
                    common_prefixes: Vec::new(),
                    objects: Vec::new(),
                })
            }
            // Above the mount: its first folder is the one entry.
            (Some(p), Some(None)) if p.as_ref() != self.mount.as_ref() && !p.as_ref().is_empty() => {
                let next: Path = self.mount.parts().take(p.parts().count() + 1).collect();
                return Ok(ListResult {
                    common_prefixes: vec![next],
                    objects: Vec::new(),
                });
            }
            (None, _) => {
                let first: Path = self.mount.parts().take(1).collect();
                return Ok(ListResult {
                    common_prefixes: vec![first],
                    objects: Vec::new(),
                });
            }
            (_, Some(inner)) => inner,
        };
        let r = self.inner.list_with_delimiter(inner.as_ref()).await?;
        Ok(ListResult {
            common_prefixes: r.common_prefixes.iter().map(|p| Self::outer(&self.mount, p)).collect(),
            objects: r
                .objects
                .into_iter()
                .map(|m| Self::outer_meta(&self.mount, m))
                .collect(),
        })
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner
            .copy_opts(&self.inner_path(from)?, &self.inner_path(to)?, options)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatasetKind, Secret};

    #[test]
    fn coalescing_matches_object_store() {
        assert_eq!(coalesced(&[10..20, 0..5]), vec![0..20]);
        let far = 2 * OBJECT_STORE_COALESCE_DEFAULT;
        assert_eq!(coalesced(&[0..5, far..far + 1]), vec![0..5, far..far + 1]);
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
