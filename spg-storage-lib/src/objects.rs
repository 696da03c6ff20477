//! Object-store helpers shared by the image store, the base images and the WAL offload.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use crate::StorageError;

/// Open object storage given as a URL:
///
/// - `file:///absolute/dir`: a directory, durable (see [`crate::DurableLocalStore`]);
/// - `s3://bucket` or `s3://bucket/prefix`: S3 or an S3-compatible server, configured from
///   the standard AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
///   `AWS_SESSION_TOKEN`, `AWS_REGION` or `AWS_DEFAULT_REGION`, and `AWS_ENDPOINT_URL` for a
///   server other than AWS; `http://` endpoints are allowed for loopback test servers only).
pub fn open_url(url: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let invalid = |reason: String| StorageError::InvalidConfig {
        what: "object storage URL",
        reason,
    };
    let parsed = url::Url::parse(url).map_err(|e| invalid(format!("{url:?}: {e}")))?;
    match parsed.scheme() {
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|_| invalid(format!("{url:?}: expected file:///absolute/path")))?;
            let store = crate::DurableLocalStore::open(&dir)
                .map_err(|e| invalid(format!("opening {}: {e}", dir.display())))?;
            Ok(Arc::new(store))
        }
        "s3" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| invalid(format!("{url:?}: expected s3://bucket/prefix")))?;
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                let ep = url::Url::parse(&endpoint)
                    .map_err(|e| invalid(format!("AWS_ENDPOINT_URL {endpoint:?}: {e}")))?;
                let loopback = match ep.host() {
                    Some(url::Host::Ipv4(a)) => a.is_loopback(),
                    Some(url::Host::Ipv6(a)) => a.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                if ep.scheme() == "http" && !loopback {
                    return Err(invalid(format!(
                        "AWS_ENDPOINT_URL {endpoint:?}: plain http only to a loopback server"
                    )));
                }
                b = b
                    .with_endpoint(endpoint.trim_end_matches('/'))
                    .with_allow_http(ep.scheme() == "http")
                    .with_virtual_hosted_style_request(false);
            }
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err()
            {
                b = b.with_region("us-east-1");
            }
            let store = b.build().map_err(|e| invalid(format!("{url:?}: {e}")))?;
            let prefix = parsed.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(Arc::new(store))
            } else {
                Ok(Arc::new(object_store::prefix::PrefixStore::new(
                    store,
                    Path::from(prefix),
                )))
            }
        }
        other => Err(invalid(format!(
            "{url:?}: unknown scheme {other:?} (file:// or s3://)"
        ))),
    }
}

/// Store `payload` at `key` unless an object is there already, which is never replaced:
/// `Ok(true)` if this call created it, `Ok(false)` if the key existed.
pub(crate) async fn put_create_only(
    store: &dyn ObjectStore,
    key: &Path,
    payload: PutPayload,
) -> object_store::Result<bool> {
    match store
        .put_opts(key, payload, PutOptions::from(PutMode::Create))
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
