//! The conformance suite of [`Gateway`]: what a handoff relies on, checked through the trait's
//! methods — a database without sessions reports none, a freeze shows and lifts (by the
//! control plane or by its bound running out), freezes are per database, and switching the
//! target is accepted again and again. Give it databases nobody is connected to. A check that
//! fails panics with what broke.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::{ComputeEndpoint, DatabaseName, Gateway, Generation};

/// Run every check on `gateway`, with `db` and `other` two databases without sessions on it.
pub async fn run_all(gateway: &dyn Gateway, db: &DatabaseName, other: &DatabaseName) {
    a_database_without_sessions_reports_none(gateway, db).await;
    a_freeze_shows_and_lifts(gateway, db, other).await;
    a_freeze_ends_with_its_bound(gateway, db).await;
    switching_the_target_is_repeatable(gateway, db).await;
}

async fn frozen(gateway: &dyn Gateway, db: &DatabaseName) -> bool {
    gateway.sessions(db).await.expect("sessions").frozen
}

async fn a_database_without_sessions_reports_none(gateway: &dyn Gateway, db: &DatabaseName) {
    let s = gateway.sessions(db).await.expect("sessions");
    assert_eq!(&s.database, db, "the report names its database");
    assert_eq!(
        (s.sessions, s.in_flight, s.waiting, s.pinned.len(), s.frozen),
        (0, 0, 0, 0, false),
        "a database nobody uses: {s:?}"
    );
}

async fn a_freeze_shows_and_lifts(gateway: &dyn Gateway, db: &DatabaseName, other: &DatabaseName) {
    gateway
        .set_frozen(db, Some(Duration::from_secs(30)))
        .await
        .expect("freeze");
    assert!(frozen(gateway, db).await, "a freeze shows in the sessions");
    assert!(!frozen(gateway, other).await, "a freeze is per database");
    gateway
        .set_frozen(db, Some(Duration::from_secs(30)))
        .await
        .expect("a second freeze (a new bound)");
    assert!(frozen(gateway, db).await);
    gateway.set_frozen(db, None).await.expect("unfreeze");
    assert!(!frozen(gateway, db).await, "an unfreeze lifts it");
    gateway
        .set_frozen(db, None)
        .await
        .expect("unfreezing what is not frozen");
}

async fn a_freeze_ends_with_its_bound(gateway: &dyn Gateway, db: &DatabaseName) {
    let bound = Duration::from_millis(300);
    gateway.set_frozen(db, Some(bound)).await.expect("freeze");
    let deadline = Instant::now() + bound + Duration::from_secs(5);
    while frozen(gateway, db).await {
        assert!(
            Instant::now() < deadline,
            "a freeze bound to {bound:?} still holds after {:?}",
            bound + Duration::from_secs(5)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn switching_the_target_is_repeatable(gateway: &dyn Gateway, db: &DatabaseName) {
    for g in [7, 7, 8] {
        let endpoint = ComputeEndpoint {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
            generation: Generation(g),
        };
        gateway
            .switch_target(db, &endpoint)
            .await
            .unwrap_or_else(|e| panic!("switching {db} to generation {g}: {e}"));
    }
    assert!(!frozen(gateway, db).await, "a switch does not freeze");
}
