//! Object-store helpers shared by the image store, the base images and the WAL offload.

use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

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
