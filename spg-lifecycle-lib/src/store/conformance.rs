//! The conformance suite every [`StateStore`] passes (object_store's integration-suite
//! pattern): run [`run`] against a fresh, empty store of your backend.
//!
//! The suite opens several handles to the same backing store (as several control planes would)
//! through the `open` function it is given, so that races between handles are exercised the way
//! they happen in production. Each check panics with a message naming what the backend got wrong.
//!
//! ```no_run
//! # async fn doc() {
//! use std::sync::Arc;
//! use spg_lifecycle_lib::store::{conformance, SqliteStateStore, StateStore};
//! let dir = std::env::temp_dir().join("spg-conformance-example");
//! let path = dir.join("state.db");
//! conformance::run(|| async {
//!     Arc::new(SqliteStateStore::open(&path).unwrap()) as Arc<dyn StateStore>
//! })
//! .await;
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use spg_core::scram::ScramVerifier;
use spg_core::{ComputeState, DatabaseName, Generation, RoleName};

use super::{DatabaseRecord, OwnershipClaim, RoleRecord, StateStore, Transition};
use crate::LifecycleError;

/// Run every check. `open` gives a new handle to one backing store, empty before the first
/// call; it is called several times, and every handle must see what the others wrote.
pub async fn run<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn StateStore>>,
{
    let a = open().await;
    assert!(
        a.databases().await.expect("list databases").is_empty(),
        "the conformance suite needs an empty store"
    );
    databases(&*a).await;
    compare_and_set(&*a).await;
    roles(&*a).await;
    transitions(&*a).await;
    meta(&*a).await;
    ownership(&*a).await;
    deletion(&*a).await;
    let b = open().await;
    shared_between_handles(&*a, &*b).await;
    racing_updates(Arc::clone(&a), Arc::clone(&b)).await;
    racing_claims(Arc::clone(&a), Arc::clone(&b)).await;
    drop(b);
    let reopened = open().await;
    reopen_sees_everything(&*a, &*reopened).await;
}

fn name(n: &str) -> DatabaseName {
    DatabaseName::new(n).expect("valid database name")
}

fn created(rec: &DatabaseRecord) -> Transition {
    Transition {
        database: rec.name.clone(),
        from: None,
        to: ComputeState::Stopped,
        generation: Generation::NONE,
        at_ms: rec.created_at_ms,
        reason: "created".into(),
        profile: Some("L1".into()),
        bytes_written: None,
    }
}

async fn create(s: &dyn StateStore, n: &str) -> DatabaseRecord {
    let rec = DatabaseRecord::new(name(n), 1_000);
    s.insert_database(&rec, &created(&rec))
        .await
        .unwrap_or_else(|e| panic!("insert {n}: {e}"));
    rec
}

/// A state change of `rec` as the control plane makes one: version + 1, optional new generation.
fn next(rec: &DatabaseRecord, state: ComputeState, generation: u64) -> DatabaseRecord {
    let mut n = rec.clone();
    n.version += 1;
    n.state = state;
    n.generation = Generation(generation);
    n
}

fn transition(rec: &DatabaseRecord, from: ComputeState, at_ms: u64) -> Transition {
    Transition {
        database: rec.name.clone(),
        from: Some(from),
        to: rec.state,
        generation: rec.generation,
        at_ms,
        reason: format!("to {}", rec.state.as_str()),
        profile: rec.profile.clone(),
        bytes_written: None,
    }
}

/// Insert, read back, duplicates refused, unknown names absent, listing by name (byte order).
pub async fn databases(s: &dyn StateStore) {
    let mut rec = create(s, "conf_shop").await;
    rec.profile = Some("large".into());
    rec.last_error = Some("ünïcode and 'quotes'".into());
    let other = DatabaseRecord {
        profile: Some("large".into()),
        last_error: Some("ünïcode and 'quotes'".into()),
        ..DatabaseRecord::new(name("conf_full"), 2_000)
    };
    s.insert_database(&other, &created(&other))
        .await
        .expect("insert a record with every optional field");
    assert_eq!(
        s.database(&name("conf_full")).await.expect("read"),
        Some(other.clone()),
        "a record reads back as written"
    );
    assert_eq!(
        s.database(&name("conf_shop")).await.expect("read"),
        Some(DatabaseRecord::new(name("conf_shop"), 1_000)),
    );
    let dup = s.insert_database(&rec, &created(&rec)).await;
    assert!(
        matches!(dup, Err(LifecycleError::AlreadyExists { .. })),
        "a second insert of the same name is AlreadyExists, got {dup:?}"
    );
    assert_eq!(s.database(&name("conf_nothing")).await.expect("read"), None);
    create(s, "conf_9x").await;
    create(s, "conf_a_b").await;
    let names: Vec<String> = s
        .databases()
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.name.to_string())
        .filter(|n| n.starts_with("conf_"))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "databases are listed by name, in byte order");
    assert_eq!(names.len(), 4);
}

/// Deleting a database takes its roles with it, is compare-and-set on the version, keeps its
/// transitions, and frees the name.
pub async fn deletion(s: &dyn StateStore) {
    let rec = create(s, "conf_gone").await;
    s.insert_role(&RoleRecord {
        database: rec.name.clone(),
        name: RoleName::new("conf_role").expect("valid role name"),
        verifier: ScramVerifier::from_password("pw"),
        created_at_ms: 1,
    })
    .await
    .expect("insert role");
    let mut gone = transition(&rec, ComputeState::Stopped, 5_000);
    gone.reason = "deleted".into();
    assert!(
        !s.delete_database(&rec.name, rec.version + 1, &gone)
            .await
            .expect("delete"),
        "a stale version deletes nothing"
    );
    assert!(s.database(&rec.name).await.expect("read").is_some());
    assert!(s
        .delete_database(&rec.name, rec.version, &gone)
        .await
        .expect("delete"));
    assert_eq!(s.database(&rec.name).await.expect("read"), None);
    assert!(s.roles(&rec.name).await.expect("roles").is_empty());
    assert!(
        !s.delete_database(&rec.name, rec.version, &gone)
            .await
            .expect("delete again"),
        "deleting what is gone changes nothing"
    );
    let kept = s
        .transitions(Some(&rec.name), 10)
        .await
        .expect("transitions");
    assert_eq!(kept.first().map(|t| t.reason.as_str()), Some("deleted"));
    // The name is free again, roles and all.
    let again = create(s, "conf_gone").await;
    assert_eq!(again.name, rec.name);
    assert!(s.roles(&rec.name).await.expect("roles").is_empty());
}

/// Compare-and-set on the version; the generation never goes back; the transition is written
/// only with a successful update.
pub async fn compare_and_set(s: &dyn StateStore) {
    let rec = create(s, "cas").await;
    let booting = next(&rec, ComputeState::Booting, 1);
    let t = transition(&booting, ComputeState::Stopped, 2_000);
    assert!(
        s.update_database(&booting, rec.version, Some(&t))
            .await
            .expect("update"),
        "an update with the current version succeeds"
    );
    assert_eq!(
        s.database(&name("cas")).await.expect("read"),
        Some(booting.clone())
    );
    // A rival that read the same version loses, and its transition is not recorded.
    let rival = next(&rec, ComputeState::Stopping, 1);
    let rt = transition(&rival, ComputeState::Stopped, 2_001);
    assert!(
        !s.update_database(&rival, rec.version, Some(&rt))
            .await
            .expect("update"),
        "an update with a stale version fails"
    );
    // The generation never goes backwards, even with the right version.
    let back = next(&booting, ComputeState::Ready, 0);
    assert!(
        !s.update_database(&back, booting.version, None)
            .await
            .expect("update"),
        "an update lowering the generation fails"
    );
    // An update under an ownership token that is not the current one fails.
    let mut fenced = next(&booting, ComputeState::Ready, 1);
    fenced.owner_token = 7;
    assert!(
        !s.update_database(&fenced, booting.version, None)
            .await
            .expect("update"),
        "an update under a stale ownership token fails"
    );
    let ready = next(&booting, ComputeState::Ready, 1);
    assert!(s
        .update_database(&ready, booting.version, None)
        .await
        .expect("update"));
    let ts = s
        .transitions(Some(&name("cas")), 10)
        .await
        .expect("transitions");
    let tos: Vec<ComputeState> = ts.iter().map(|t| t.to).collect();
    assert_eq!(
        tos,
        vec![ComputeState::Booting, ComputeState::Stopped],
        "only the successful update's transition is recorded, newest first"
    );
    assert!(!s
        .update_database(&next(&rec, ComputeState::Ready, 1), 99, None)
        .await
        .expect("update of a missing version"),);
    let ghost = DatabaseRecord::new(name("cas_ghost"), 1);
    assert!(
        !s.update_database(&next(&ghost, ComputeState::Ready, 1), 1, None)
            .await
            .expect("update of a missing database"),
        "an update of a database that does not exist changes nothing"
    );
}

fn role(db: &str, n: &str, pw: &str) -> RoleRecord {
    RoleRecord {
        database: name(db),
        name: RoleName::new(n).expect("valid role name"),
        verifier: ScramVerifier::from_password_with(pw, b"0123456789abcdef", 4096),
        created_at_ms: 5,
    }
}

/// Roles: insert, duplicates refused, per database, listed by name, unknown databases refused.
pub async fn roles(s: &dyn StateStore) {
    create(s, "roles_a").await;
    create(s, "roles_b").await;
    let app = role("roles_a", "app", "pw1");
    s.insert_role(&app).await.expect("insert role");
    s.insert_role(&role("roles_a", "admin", "pw2"))
        .await
        .expect("insert role");
    s.insert_role(&role("roles_b", "app", "pw3"))
        .await
        .expect("the same role name in another database");
    let dup = s.insert_role(&app).await;
    assert!(
        matches!(dup, Err(LifecycleError::AlreadyExists { .. })),
        "a second insert of the same role is AlreadyExists, got {dup:?}"
    );
    assert_eq!(
        s.role(&name("roles_a"), &app.name)
            .await
            .expect("read role"),
        Some(app.clone()),
        "a role reads back as written (verifier included)"
    );
    assert_eq!(
        s.role(&name("roles_a"), &RoleName::new("nobody").expect("name"))
            .await
            .expect("read role"),
        None
    );
    let names: Vec<String> = s
        .roles(&name("roles_a"))
        .await
        .expect("roles")
        .into_iter()
        .map(|r| r.name.to_string())
        .collect();
    assert_eq!(names, vec!["admin".to_string(), "app".to_string()]);
    assert!(
        s.insert_role(&role("roles_ghost", "app", "pw"))
            .await
            .is_err(),
        "a role of a database that does not exist is refused"
    );
    assert!(s
        .roles(&name("roles_ghost"))
        .await
        .expect("roles")
        .is_empty());
}

/// Transitions: newest first, limited, per database or of all.
pub async fn transitions(s: &dyn StateStore) {
    let mut rec = create(s, "trans").await;
    for i in 0..5u64 {
        let from = rec.state;
        let state = if i % 2 == 0 {
            ComputeState::Booting
        } else {
            ComputeState::Stopped
        };
        let n = next(&rec, state, i + 1);
        let t = transition(&n, from, 10_000 + i);
        assert!(s
            .update_database(&n, rec.version, Some(&t))
            .await
            .expect("update"));
        rec = n;
    }
    let ts = s
        .transitions(Some(&name("trans")), 3)
        .await
        .expect("transitions");
    let at: Vec<u64> = ts.iter().map(|t| t.at_ms).collect();
    assert_eq!(at, vec![10_004, 10_003, 10_002], "newest first, limited");
    assert_eq!(ts[0].generation, Generation(5));
    assert_eq!(ts[0].from, Some(ComputeState::Stopped));
    let all = s.transitions(None, 1_000).await.expect("transitions");
    assert!(all.iter().any(|t| t.database.as_str() == "cas"));
    assert_eq!(
        all[0].database.as_str(),
        "trans",
        "the newest of all databases comes first"
    );
    assert_eq!(
        s.transitions(Some(&name("trans")), 100)
            .await
            .expect("transitions")
            .len(),
        6,
        "five updates and the creation"
    );
    assert!(s
        .transitions(Some(&name("trans")), 0)
        .await
        .expect("transitions")
        .is_empty());
    assert_eq!(
        ts[0].profile, None,
        "a transition's profile comes back as written"
    );
    let created = s
        .transitions(Some(&name("trans")), 100)
        .await
        .expect("transitions");
    assert_eq!(
        created.last().and_then(|t| t.profile.as_deref()),
        Some("L1")
    );

    // A span: the newest transition before it, then those within, oldest first.
    let at = |ts: Vec<Transition>| ts.iter().map(|t| t.at_ms).collect::<Vec<_>>();
    let trans = name("trans");
    let between = |from, to| s.transitions_between(&trans, from, to);
    assert_eq!(
        at(between(10_002, 10_003).await.expect("between")),
        vec![10_001, 10_002, 10_003],
        "the state before the span, then the span"
    );
    assert_eq!(
        at(between(10_010, 20_000).await.expect("between")),
        vec![10_004],
        "nothing within: the state it was left in"
    );
    assert_eq!(
        at(between(0, 10_000).await.expect("between")),
        vec![1_000, 10_000],
        "from the creation"
    );
    assert!(
        s.transitions_between(&name("nosuchdb"), 0, u64::MAX)
            .await
            .expect("between")
            .is_empty(),
        "no database, no transitions"
    );
}

/// Metadata: absent, set, overwritten.
pub async fn meta(s: &dyn StateStore) {
    assert_eq!(s.meta("conf.key").await.expect("meta"), None);
    s.set_meta("conf.key", "v1").await.expect("set meta");
    s.set_meta("conf.key", "v2 ü").await.expect("set meta");
    assert_eq!(
        s.meta("conf.key").await.expect("meta").as_deref(),
        Some("v2 ü")
    );
}

fn claim<'a>(owner: &'a str, ttl_ms: u64, renew: Option<u64>) -> OwnershipClaim<'a> {
    OwnershipClaim {
        owner,
        owner_url: "https://127.0.0.1:1",
        ttl_ms,
        renew,
    }
}

/// Ownership: take, renew, refuse while held, expire, release, fence writes, unknown database.
pub async fn ownership(s: &dyn StateStore) {
    let rec = create(s, "owned").await;
    let db = name("owned");
    let listed = s.ownerships().await.expect("ownerships");
    let o = listed
        .iter()
        .find(|o| o.database == db)
        .expect("every database is listed");
    assert!(!o.is_held() && o.owner.is_none() && o.token == 0);

    let first = s
        .claim_ownership(&db, &claim("cp-1", 60_000, None))
        .await
        .expect("claim");
    assert!(first.held_by("cp-1"), "a free database is taken: {first:?}");
    assert_eq!(first.token, 1);
    assert!(first.remaining_ms > 50_000 && first.remaining_ms <= 60_000);
    let after_claim = s.database(&db).await.expect("read").expect("exists");
    assert_eq!(
        after_claim.owner_token, 1,
        "the record carries the new token"
    );
    assert_eq!(
        after_claim.version,
        rec.version + 1,
        "a new term bumps the version"
    );
    // Writes prepared before the takeover fail; writes under the new term succeed.
    let stale = next(&rec, ComputeState::Booting, 1);
    assert!(!s
        .update_database(&stale, rec.version, None)
        .await
        .expect("update"));
    let fresh = next(&after_claim, ComputeState::Booting, 1);
    assert!(s
        .update_database(&fresh, after_claim.version, None)
        .await
        .expect("update"));

    let other = s
        .claim_ownership(&db, &claim("cp-2", 60_000, None))
        .await
        .expect("claim");
    assert!(
        other.held_by("cp-1") && other.token == 1,
        "a held lease is not taken by another: {other:?}"
    );
    let restarted = s
        .claim_ownership(&db, &claim("cp-1", 60_000, Some(99)))
        .await
        .expect("claim");
    assert!(
        restarted.token == 1,
        "the same id under another token does not renew: {restarted:?}"
    );
    let renewed = s
        .claim_ownership(&db, &claim("cp-1", 120_000, Some(1)))
        .await
        .expect("renew");
    assert!(renewed.held_by("cp-1") && renewed.token == 1);
    assert!(renewed.remaining_ms > 60_000, "a renewal extends the lease");
    assert_eq!(
        s.database(&db)
            .await
            .expect("read")
            .expect("exists")
            .version,
        fresh.version,
        "a renewal does not bump the version"
    );

    assert!(!s.release_ownership(&db, "cp-2", 1).await.expect("release"));
    assert!(!s.release_ownership(&db, "cp-1", 2).await.expect("release"));
    assert!(s.release_ownership(&db, "cp-1", 1).await.expect("release"));
    let taken = s
        .claim_ownership(&db, &claim("cp-2", 300, None))
        .await
        .expect("claim");
    assert!(
        taken.held_by("cp-2") && taken.token == 2,
        "a released database is taken at once: {taken:?}"
    );
    // The old owner's write, under its term, is now refused.
    let cur = s.database(&db).await.expect("read").expect("exists");
    let mut old = next(&cur, ComputeState::Stopping, 1);
    old.owner_token = 1;
    assert!(!s
        .update_database(&old, cur.version, None)
        .await
        .expect("update"));

    // An expired lease is taken by another; the one that let it expire cannot renew it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let expired = s.ownerships().await.expect("ownerships");
    let o = expired.iter().find(|o| o.database == db).expect("listed");
    assert!(!o.is_held(), "an expired lease is not held: {o:?}");
    let late = s
        .claim_ownership(&db, &claim("cp-3", 60_000, None))
        .await
        .expect("claim");
    assert!(late.held_by("cp-3") && late.token == 3, "{late:?}");
    let too_late = s
        .claim_ownership(&db, &claim("cp-2", 60_000, Some(2)))
        .await
        .expect("claim");
    assert!(too_late.held_by("cp-3"), "{too_late:?}");

    let missing = s
        .claim_ownership(&name("owned_ghost"), &claim("cp-1", 1_000, None))
        .await;
    assert!(
        matches!(missing, Err(LifecycleError::DatabaseNotFound(_))),
        "claiming an unknown database is DatabaseNotFound, got {missing:?}"
    );
}

/// What one handle writes, another reads at once.
pub async fn shared_between_handles(a: &dyn StateStore, b: &dyn StateStore) {
    create(a, "shared").await;
    let seen = b.database(&name("shared")).await.expect("read");
    assert!(
        seen.is_some(),
        "a second handle sees the first one's insert"
    );
    b.set_meta("conf.shared", "from b").await.expect("set meta");
    assert_eq!(
        a.meta("conf.shared").await.expect("meta").as_deref(),
        Some("from b")
    );
}

/// Handles racing to update the same version: exactly one wins each round.
pub async fn racing_updates(a: Arc<dyn StateStore>, b: Arc<dyn StateStore>) {
    create(&*a, "race").await;
    for round in 0..20u64 {
        let cur = a
            .database(&name("race"))
            .await
            .expect("read")
            .expect("exists");
        let tasks: Vec<_> = [&a, &b, &a, &b]
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let s = Arc::clone(s);
                let mut n = next(&cur, ComputeState::Booting, round + 1);
                n.last_error = Some(format!("writer {i}"));
                let t = transition(&n, cur.state, round * 10 + i as u64);
                let expected = cur.version;
                tokio::spawn(async move { s.update_database(&n, expected, Some(&t)).await })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            if t.await.expect("task").expect("update") {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}: exactly one racing update wins");
    }
    let ts = a
        .transitions(Some(&name("race")), 1_000)
        .await
        .expect("transitions");
    assert_eq!(ts.len(), 21, "one transition per round and the creation");
}

/// Handles racing to take the same free database: exactly one term, one holder.
pub async fn racing_claims(a: Arc<dyn StateStore>, b: Arc<dyn StateStore>) {
    for round in 0..10 {
        let db = name(&format!("claim_race_{round}"));
        create(&*a, db.as_str()).await;
        let tasks: Vec<_> = [&a, &b, &a, &b]
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let s = Arc::clone(s);
                let db = db.clone();
                tokio::spawn(async move {
                    let owner = format!("cp-{i}");
                    let o = s.claim_ownership(&db, &claim(&owner, 60_000, None)).await?;
                    Ok::<_, LifecycleError>((owner, o))
                })
            })
            .collect();
        let mut holders = Vec::new();
        for t in tasks {
            let (owner, o) = t.await.expect("task").expect("claim");
            assert_eq!(o.token, 1, "round {round}: one term only: {o:?}");
            if o.held_by(&owner) {
                holders.push(owner);
            }
        }
        assert_eq!(
            holders.len(),
            1,
            "round {round}: one holder, got {holders:?}"
        );
    }
}

/// A handle opened later sees everything.
pub async fn reopen_sees_everything(before: &dyn StateStore, after: &dyn StateStore) {
    let a = before.databases().await.expect("list");
    let b = after.databases().await.expect("list");
    assert_eq!(a, b, "a new handle reads the same databases");
    assert_eq!(
        before.ownerships().await.expect("ownerships").len(),
        after.ownerships().await.expect("ownerships").len()
    );
    assert!(after
        .role(&name("roles_a"), &RoleName::new("app").expect("name"))
        .await
        .expect("role")
        .is_some());
    assert_eq!(
        after.meta("conf.key").await.expect("meta").as_deref(),
        Some("v2 ü")
    );
}
