//! The WalQuorum conformance suite over SPG's quorum of in-process safekeeper nodes (and, in
//! `bins/tests/safekeeper_http.rs`, over HTTPS), and over a deliberately broken quorum.

use std::sync::Arc;
use std::time::Duration;

use spg_core::{
    CoreError, CoreResult, DatabaseName, Election, Generation, Lsn, ReplicationSource, TimelineId,
    WalQuorum,
};
use spg_storage_lib::safekeeper::node::{NodeConfig, SafekeeperNode};
use spg_storage_lib::safekeeper::quorum::{SafekeeperApi, SafekeeperSet};
use spg_storage_lib::safekeeper::timeline_of;
use spg_storage_lib::wal_quorum_conformance::run_all;

/// Three in-process safekeeper nodes under `dir`, as a quorum.
fn quorum(dir: &std::path::Path) -> SafekeeperSet {
    let members: Vec<Arc<dyn SafekeeperApi>> = (1..=3)
        .map(|i| {
            let node = SafekeeperNode::new(NodeConfig {
                name: format!("sk{i}"),
                dir: dir.join(format!("sk{i}")),
                segment_size: spg_storage_lib::safekeeper::file::DEFAULT_SEGMENT_SIZE,
            })
            .unwrap();
            Arc::new(node) as Arc<dyn SafekeeperApi>
        })
        .collect();
    SafekeeperSet::new(members, Duration::from_secs(5))
}

#[tokio::test]
async fn three_safekeeper_nodes_keep_the_wal_quorum_contract() {
    let dir = tempfile::tempdir().unwrap();
    run_all(&quorum(dir.path())).await;
}

/// Deliberately broken: it lets a fenced generation be elected again (as a quorum that lost
/// its promises would).
struct IgnoresFences(SafekeeperSet);

#[async_trait::async_trait]
impl WalQuorum for IgnoresFences {
    async fn elect(&self, db: &DatabaseName, g: Generation) -> CoreResult<Election> {
        match self.0.elect(db, g).await {
            Err(CoreError::StaleGeneration { .. }) => Ok(Election {
                generation: g,
                voters: 2,
                source: None,
                history: Vec::new(),
                flush_lsn: Lsn(0),
                new_timeline: timeline_of(g),
            }),
            other => other,
        }
    }
    async fn read_wal_file(
        &self,
        db: &DatabaseName,
        e: &Election,
        file: &str,
    ) -> CoreResult<Option<Vec<u8>>> {
        self.0.read_wal_file(db, e, file).await
    }
    async fn follow(
        &self,
        db: &DatabaseName,
        g: Generation,
        source: &ReplicationSource,
    ) -> CoreResult<()> {
        self.0.follow(db, g, source).await
    }
    async fn unfollow(&self, db: &DatabaseName, g: Generation) -> CoreResult<()> {
        self.0.unfollow(db, g).await
    }
    fn synchronous_standby_names(&self) -> String {
        self.0.synchronous_standby_names()
    }
    async fn reset(
        &self,
        db: &DatabaseName,
        g: Generation,
        start: Lsn,
        history: &[(TimelineId, Lsn)],
    ) -> CoreResult<()> {
        self.0.reset(db, g, start, history).await
    }
    async fn forget(&self, db: &DatabaseName) -> CoreResult<()> {
        self.0.forget(db).await
    }
    async fn observe(&self, db: &DatabaseName) -> CoreResult<Option<Election>> {
        self.0.observe(db).await
    }
}

#[tokio::test]
async fn a_quorum_that_ignores_its_fences_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let broken = IgnoresFences(quorum(dir.path()));
    let caught =
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run_all(&broken))).await;
    assert!(
        caught.is_err(),
        "the suite passed a quorum that re-elects fenced generations"
    );
}
