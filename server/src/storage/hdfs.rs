//! HDFS roots (`hdfs://namenode:port/path` or an HA nameservice), through hdfs-native: no JVM.

use super::*;

pub(super) fn hdfs_root(d: &DatasetConfig, url: &url::Url) -> std::result::Result<Arc<dyn ObjectStore>, String> {
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
