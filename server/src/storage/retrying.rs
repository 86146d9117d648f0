//! [`RetryingStore`]: timeouts and bounded retries for a store that has none of its own.

use super::*;

/// Timeouts and bounded retries for a store that has none of its own (HDFS): each read gets
/// `timeout`, and a failed or timed-out read is retried with exponential backoff up to
/// `retry.max_retries` times within `retry.retry_timeout`. A read's body is fetched inside the
/// attempt (reads here are ranges of a few MB), so a connection lost mid-body is retried too.
/// Errors that a retry cannot fix (not found, bad path, precondition) are returned at once.
#[derive(Debug)]
pub struct RetryingStore {
    pub(super) inner: Arc<dyn ObjectStore>,
    pub(super) retry: RetryConfig,
    pub(super) timeout: Duration,
}

impl fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retrying({})", self.inner)
    }
}

pub(super) fn retryable(e: &object_store::Error) -> bool {
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

wrapper_store!(RetryingStore {
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

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

});
