//! The conformance suite of [`Lease`]: its contract, checked through its three methods, for
//! SPG's implementations (the control plane itself, the API client in front of one) and for
//! yours.
//!
//! Give it a database that exists. With a lease lifetime of at most [`EXPIRY_CHECKED_UP_TO`]
//! it also waits for a lease to expire (run the control plane with a short `lease_ttl`); a
//! longer one is not waited for. A check that fails panics with what broke.

use std::time::Duration;

use spg_core::{CoreError, DatabaseName, Lease, LeaseId};

/// Leases living at most this long are waited out to check that they expire.
pub const EXPIRY_CHECKED_UP_TO: Duration = Duration::from_secs(5);

/// Run every check on `lease`, with `db` a database it knows.
pub async fn run_all(lease: &dyn Lease, db: &DatabaseName) {
    an_unknown_database_gets_no_lease(lease).await;
    grants_are_distinct_and_renewable(lease, db).await;
    release_is_final_and_idempotent(lease, db).await;
    unrenewed_leases_expire(lease, db).await;
}

fn gone<T: std::fmt::Debug>(r: Result<T, CoreError>, what: &str) {
    match r {
        Err(CoreError::NotFound { .. }) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

async fn an_unknown_database_gets_no_lease(lease: &dyn Lease) {
    let nobody = DatabaseName::new("conformance_no_such_database").expect("valid name");
    match lease.acquire(&nobody, "conformance").await {
        Err(CoreError::DatabaseNotFound(_)) => {}
        other => panic!("a lease on a database that does not exist: {other:?}"),
    }
}

async fn grants_are_distinct_and_renewable(lease: &dyn Lease, db: &DatabaseName) {
    let a = lease.acquire(db, "conformance-a").await.expect("acquire");
    let b = lease.acquire(db, "conformance-b").await.expect("acquire");
    assert_eq!(&a.database, db, "the grant names its database");
    assert!(a.ttl > Duration::ZERO, "a lease lives a while");
    assert_ne!(a.id, b.id, "two leases have two ids");
    let renewed = lease.renew(&a.id).await.expect("renew");
    assert_eq!(
        (&renewed.id, &renewed.database),
        (&a.id, db),
        "a renewal keeps the lease"
    );
    assert!(renewed.ttl > Duration::ZERO);
    for g in [a, b] {
        lease.release(&g.id).await.expect("release");
    }
}

async fn release_is_final_and_idempotent(lease: &dyn Lease, db: &DatabaseName) {
    let g = lease.acquire(db, "conformance").await.expect("acquire");
    lease.release(&g.id).await.expect("release");
    lease
        .release(&g.id)
        .await
        .expect("releasing a released lease succeeds");
    gone(lease.renew(&g.id).await, "renewing a released lease");
    let unknown = LeaseId(format!("{}.conformance-never-granted", db.as_str()));
    lease
        .release(&unknown)
        .await
        .expect("releasing an unknown lease succeeds");
    gone(lease.renew(&unknown).await, "renewing an unknown lease");
}

async fn unrenewed_leases_expire(lease: &dyn Lease, db: &DatabaseName) {
    let g = lease.acquire(db, "conformance").await.expect("acquire");
    if g.ttl > EXPIRY_CHECKED_UP_TO {
        lease.release(&g.id).await.expect("release");
        return;
    }
    tokio::time::sleep(g.ttl + g.ttl / 2 + Duration::from_millis(200)).await;
    gone(lease.renew(&g.id).await, "renewing an expired lease");
}
