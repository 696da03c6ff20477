//! The state store a platform runs on, and the API keys kept in it.

use std::sync::Arc;

use anyhow::{Context, Result};
use spg_lifecycle_lib::api::ApiKey;
use spg_lifecycle_lib::store::{PostgresStateStore, SqliteStateStore, StateStore};

/// Open the state store `url` names (default: SQLite in `data_dir`); `true` when it is a
/// PostgreSQL store other control planes may share.
pub(crate) async fn open_state_store(
    url: Option<&str>,
    data_dir: &std::path::Path,
    ca_pem: Option<&[u8]>,
) -> Result<(Arc<dyn StateStore>, bool)> {
    let Some(url) = url else {
        return Ok((
            Arc::new(SqliteStateStore::open(&data_dir.join("state.db"))?),
            false,
        ));
    };
    match crate::cli::StateStoreUrl::parse(url).map_err(anyhow::Error::msg)? {
        crate::cli::StateStoreUrl::Sqlite(path) => {
            Ok((Arc::new(SqliteStateStore::open(&path)?), false))
        }
        crate::cli::StateStoreUrl::Postgres(url) => {
            let tls = ca_pem.map(postgres_tls).transpose()?;
            let store = PostgresStateStore::connect(&url, tls)
                .await
                .with_context(|| {
                    format!("opening the state store {}", crate::config::mask_url(&url))
                })?;
            Ok((Arc::new(store), true))
        }
    }
}

/// A rustls client configuration trusting only the certificates of `ca_pem`.
pub(crate) fn postgres_tls(ca_pem: &[u8]) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.context("state store CA")?)?;
    }
    if roots.is_empty() {
        anyhow::bail!("the state store CA file holds no certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// This host's name (for a control plane not given one).
pub fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "spg-controlplane".into())
}

/// The key stored (as its hash) under `meta`: `given` replaces it; else the stored one stays
/// (`None`: its plaintext is not known here); else a new one `<prefix>_...` is made. Returns
/// the plaintext when known.
pub(crate) async fn stored_key(
    store: &dyn StateStore,
    meta: &str,
    given: Option<&str>,
    prefix: &str,
) -> Result<Option<String>> {
    let key = match given {
        Some(k) => k.to_string(),
        None => match store.meta(meta).await? {
            Some(_) => return Ok(None),
            None => format!("{prefix}_{}", crate::random_secret(40)),
        },
    };
    store.set_meta(meta, &ApiKey::new(&key).hash_hex()).await?;
    Ok(Some(key))
}
