//! The conformance suite of [`WalQuorum`]: the fencing half of its contract, checked through
//! the trait on databases without WAL (no compute runs): elections persist and fence, reads
//! under a fenced election are refused, a reset takes only the elected generation, and a
//! forgotten database starts over. What streaming adds (no acknowledged commit is ever lost)
//! is the safekeeper simulation's to check ([`crate::safekeeper::simulation`]). Run it on a
//! quorum whose members are all up; a check that fails panics with what broke.

use spg_core::{CoreError, DatabaseName, Generation, Lsn, TimelineId, WalQuorum};

/// Run every check on `quorum`; the databases it uses are named `conformance_*`.
pub async fn run_all(quorum: &dyn WalQuorum) {
    assert!(
        !quorum.synchronous_standby_names().is_empty(),
        "a quorum names its synchronous standbys"
    );
    elections_fence_older_generations(quorum).await;
    reads_under_a_fenced_election_are_refused(quorum).await;
    resets_take_only_the_elected_generation(quorum).await;
    a_forgotten_database_starts_over(quorum).await;
}

fn db(name: &str) -> DatabaseName {
    DatabaseName::new(format!("conformance_{name}")).expect("valid database name")
}

fn stale<T: std::fmt::Debug>(r: Result<T, CoreError>, what: &str) {
    match r {
        Err(CoreError::StaleGeneration { .. }) => {}
        other => panic!("{what}: expected StaleGeneration, got {other:?}"),
    }
}

async fn elections_fence_older_generations(quorum: &dyn WalQuorum) {
    let d = db("elect");
    assert!(
        quorum.observe(&d).await.expect("observe").is_none(),
        "a database without WAL has no log to observe"
    );
    let e1 = quorum.elect(&d, Generation(1)).await.expect("elect 1");
    assert_eq!(e1.generation, Generation(1));
    assert!(e1.voters >= 1, "an election has voters");
    let e3 = quorum.elect(&d, Generation(3)).await.expect("elect 3");
    assert_eq!(e3.generation, Generation(3));
    assert!(
        e3.new_timeline > e1.new_timeline,
        "a newer generation promotes onto a newer timeline"
    );
    stale(
        quorum.elect(&d, Generation(2)).await,
        "an election older than a promised one",
    );
    stale(
        quorum.elect(&d, Generation(1)).await,
        "the election of a fenced generation, again",
    );
}

async fn reads_under_a_fenced_election_are_refused(quorum: &dyn WalQuorum) {
    let d = db("read");
    let e1 = quorum.elect(&d, Generation(1)).await.expect("elect 1");
    let segment = "000000010000000000000001";
    assert!(
        quorum
            .read_wal_file(&d, &e1, segment)
            .await
            .expect("a read under the elected generation")
            .is_none(),
        "a log without WAL holds no segment"
    );
    quorum.elect(&d, Generation(2)).await.expect("elect 2");
    stale(
        quorum.read_wal_file(&d, &e1, segment).await,
        "a read under a fenced election",
    );
}

async fn resets_take_only_the_elected_generation(quorum: &dyn WalQuorum) {
    let d = db("reset");
    quorum.elect(&d, Generation(1)).await.expect("elect 1");
    quorum.elect(&d, Generation(2)).await.expect("elect 2");
    let history = [(TimelineId(1), Lsn(0)), (TimelineId(3), Lsn(0x100_0000))];
    stale(
        quorum
            .reset(&d, Generation(1), Lsn(0x100_0000), &history)
            .await,
        "a reset by a fenced generation",
    );
    quorum
        .reset(&d, Generation(2), Lsn(0x100_0000), &history)
        .await
        .expect("a reset by the elected generation");
    let e3 = quorum.elect(&d, Generation(3)).await.expect("elect 3");
    assert_eq!(
        e3.history.last().map(|(tli, _)| *tli),
        Some(TimelineId(3)),
        "the next election picks the reset log's path: {e3:?}"
    );
}

async fn a_forgotten_database_starts_over(quorum: &dyn WalQuorum) {
    let d = db("forget");
    quorum.elect(&d, Generation(5)).await.expect("elect 5");
    quorum.forget(&d).await.expect("forget");
    let e = quorum
        .elect(&d, Generation(1))
        .await
        .expect("a new database of the same name starts at generation 1");
    assert_eq!(e.generation, Generation(1));
}
