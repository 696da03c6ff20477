//! The StateStore conformance suite against every backend SPG ships: SQLite (a file) and
//! PostgreSQL (a real server on loopback), plus what only a networked store has to survive.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use spg_core::DatabaseName;
use spg_lifecycle_lib::store::{
    conformance, DatabaseRecord, PostgresStateStore, SqliteStateStore, StateStore, Transition,
};
use spg_lifecycle_lib::testing::TestPostgres;
use spg_lifecycle_lib::LifecycleError;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    conformance::run(|| async {
        Arc::new(SqliteStateStore::open(&path).unwrap()) as Arc<dyn StateStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_conformance_suite() {
    let pg = TestPostgres::start(LOCALHOST).unwrap();
    pg.psql("postgres", "CREATE DATABASE spg_state").unwrap();
    let url = pg.url("spg_state");
    conformance::run(|| async {
        Arc::new(PostgresStateStore::connect(&url, None).await.unwrap()) as Arc<dyn StateStore>
    })
    .await;
    // Migrations ran once, and reconnecting does not run them again.
    assert_eq!(
        pg.psql(
            "spg_state",
            "SELECT string_agg(version::text, ',') FROM spg_schema_migrations"
        )
        .unwrap(),
        "1,2"
    );
}

fn created(rec: &DatabaseRecord) -> Transition {
    Transition {
        database: rec.name.clone(),
        from: None,
        to: rec.state,
        generation: rec.generation,
        at_ms: rec.created_at_ms,
        reason: "created".into(),
        profile: None,
        bytes_written: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_rides_out_a_server_restart() {
    let mut pg = TestPostgres::start(LOCALHOST).unwrap();
    let url = pg.url("postgres");
    let store = PostgresStateStore::connect(&url, None).await.unwrap();
    let name = DatabaseName::new("shop").unwrap();
    let rec = DatabaseRecord::new(name.clone(), 1);
    store.insert_database(&rec, &created(&rec)).await.unwrap();

    // Killed: calls fail with a retryable error (no panic, no hang past the connect timeout).
    pg.kill();
    let err = store.database(&name).await.unwrap_err();
    assert!(
        matches!(err, LifecycleError::StoreUnavailable(_)) && err.is_retryable(),
        "{err:?}"
    );
    let err = store.databases().await.unwrap_err();
    assert!(
        matches!(err, LifecycleError::StoreUnavailable(_)),
        "{err:?}"
    );

    // Back on the same address: the same store object works again, nothing lost.
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart().unwrap();
        pg
    })
    .await
    .unwrap();
    assert_eq!(store.database(&name).await.unwrap(), Some(rec.clone()));
    let mut next = rec.clone();
    next.version += 1;
    assert!(store
        .update_database(&next, rec.version, None)
        .await
        .unwrap());
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_refuses_bad_urls_and_credentials_clearly() {
    let pg = TestPostgres::start(LOCALHOST).unwrap();
    let bad = PostgresStateStore::connect("mysql://nope", None)
        .await
        .unwrap_err();
    assert!(
        matches!(bad, LifecycleError::Invalid { .. }),
        "a URL that is not PostgreSQL's is invalid: {bad:?}"
    );
    let wrong = pg.url("postgres").replace("//postgres:", "//postgres:x");
    let err = PostgresStateStore::connect(&wrong, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("password authentication failed"),
        "a wrong password says so: {text}"
    );
    assert!(
        !text.contains(&wrong),
        "the URL (with its password) is not in the error: {text}"
    );
    // A store that requires TLS of a server that has none fails clearly, too.
    let tls_only = format!("{}?sslmode=require", pg.url("postgres"));
    let err = PostgresStateStore::connect(&tls_only, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LifecycleError::Store(_) | LifecycleError::StoreUnavailable(_)
        ),
        "{err:?}"
    );
}
