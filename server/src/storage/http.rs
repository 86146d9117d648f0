//! HTTP(S) roots: object_store's HTTP client with range requests. It cannot list, so the
//! files come from a manifest or the configuration ([`super::ListedStore`]).

use super::listed::{parse_file_list, FileList};
use super::*;

pub(super) fn http_root(d: &DatasetConfig, url: &url::Url) -> std::result::Result<Arc<dyn ObjectStore>, String> {
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
