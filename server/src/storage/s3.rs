//! S3 roots (`s3://bucket/prefix`), through object_store's S3 client: region, endpoint,
//! credentials and timeouts from the dataset's options.

use super::*;

pub(super) fn s3_root(d: &DatasetConfig, url: &url::Url) -> std::result::Result<Arc<dyn ObjectStore>, String> {
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
