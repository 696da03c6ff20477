//! The pageserver's HTTPS API: the image conformance suite through `HttpPageserver` against a
//! pageserver served on a loopback port, and its authentication.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use spg::pageserver_http::{router, GcRequest, HttpPageserver};
use spg::testing::https::Served;
use spg_core::DatabaseName;
use spg_lifecycle_lib::api::ApiKey;
use spg_storage_lib::image::{conformance, ImageRepo, ImageStore, ObjectRepo};
use spg_storage_lib::pageserver::{Pageserver, PageserverConfig};
use spg_storage_lib::DurableLocalStore;
use spg_storage_lib::StorageError;

const KEY: &str = "ps-test-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("objects");
    let raw = ObjectRepo::new(Arc::new(DurableLocalStore::open(&root).unwrap()), "images");
    let ps = Arc::new(
        Pageserver::open(
            raw.clone(),
            &PageserverConfig::new(tmp.path().join("cache")),
        )
        .unwrap(),
    );
    let mut registry = Registry::default();
    ps.metrics().register(&mut registry);
    let served = Served::start(
        router(
            Arc::clone(&ps),
            ApiKey::new(KEY),
            Arc::new(registry),
            Some("wal".into()),
        ),
        &tmp.path().join("tls"),
    )
    .await;
    let client = Arc::new(HttpPageserver::new(&served.url, KEY, &served.ca_pem).unwrap());
    let store = ImageStore::with_repo(client.clone());
    conformance::run_all(&store, &raw, tmp.path()).await;

    // Served from the pageserver's cache, counted in its metrics.
    assert!(ps.metrics().cache_hits.get() > 0);
    let db = DatabaseName::new("roundtrip").unwrap();
    let gc = client
        .gc(
            &db,
            &GcRequest {
                retention_secs: 0,
                keep_images: 1,
                grace_secs: 0,
                history: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((gc.images_kept, gc.images_deleted), (1, 2));
    assert!(gc.objects_deleted > 0);
    let left = store.images(&db).await.unwrap();
    assert_eq!(left.len(), 1);
    store.manifest(&db, &left[0]).await.unwrap();

    // A wrong key is refused, clearly.
    let intruder =
        HttpPageserver::new(&served.url, "wrong-key-0123456789", &served.ca_pem).unwrap();
    let err = intruder.images(&db).await.expect_err("wrong key");
    assert!(matches!(err, StorageError::Protocol(_)), "{err}");
    assert!(err.to_string().contains("401"), "{err}");
    served.stop().await;
    // And a pageserver that is gone is "unavailable", which callers retry.
    let err = client.images(&db).await.expect_err("server stopped");
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
}
