//! The agent's admin session on its compute: connecting over the socket, waiting for the
//! promotion, starting replication to the safekeepers, installing the roles, recovery targets.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::NoTls;
use tracing::warn;

use super::config::ADMIN_ROLE;
use super::*;

pub(crate) async fn admin_client(
    socket_dir: &Path,
    port: u16,
) -> Result<tokio_postgres::Client, String> {
    admin_client_as(socket_dir, port, "spg-agent").await
}

/// The admin role's connection to the server listening on `port` in `socket_dir` (its Unix
/// socket; peer authentication), to database `postgres`, as `application`.
pub async fn admin_client_as(
    socket_dir: &Path,
    port: u16,
    application: &str,
) -> Result<tokio_postgres::Client, String> {
    admin_client_in(socket_dir, port, application, "postgres").await
}

/// As [`admin_client_as`], to database `dbname`.
pub async fn admin_client_in(
    socket_dir: &Path,
    port: u16,
    application: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(socket_dir)
        .port(port)
        .user(ADMIN_ROLE)
        .dbname(dbname)
        .application_name(application)
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| format!("admin connection: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "admin connection ended");
        }
    });
    Ok(client)
}

/// Wait until recovery has ended and the compute is promoted (read-write). With `hot_standby`,
/// PostgreSQL reports ready as soon as recovery is consistent, and the admin session connects
/// then: a first session after recovery builds its caches over the lazy mount, which overlaps
/// with the end of recovery (timeline switch, end-of-recovery checkpoint).
pub(crate) async fn wait_promoted(
    client: &tokio_postgres::Client,
    timeout: Duration,
) -> Result<(), String> {
    match wait_promoted_or_paused(client, timeout).await {
        Ok(()) => Ok(()),
        Err(None) => Err("recovery paused: the log was written with larger settings".into()),
        Err(Some(reason)) => Err(reason),
    }
}

/// [`wait_promoted`], telling a paused recovery apart (`Err(None)`): with `hot_standby`,
/// PostgreSQL pauses when the log it replays was written by a compute with larger settings
/// (`max_connections`, ...) than this one's, as after a larger profile's writer.
pub(crate) async fn wait_promoted_or_paused(
    client: &tokio_postgres::Client,
    timeout: Duration,
) -> Result<(), Option<String>> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut next_pause_check = started + Duration::from_millis(300);
    loop {
        // A setting, not a function: a function call looks its name up in the catalogs, which
        // over a lazy mount fetches chunks nothing else in the start needs.
        let rows = client
            .simple_query("SHOW in_hot_standby")
            .await
            .map_err(|e| Some(format!("waiting for promotion: {}", pg_error(&e))))?;
        let in_recovery = rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
            _ => false,
        });
        if !in_recovery {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= next_pause_check {
            // Only when recovery takes a while: this one looks the function up.
            next_pause_check = now + Duration::from_millis(250);
            let rows = match client
                .simple_query("SELECT pg_get_wal_replay_pause_state()")
                .await
            {
                Ok(rows) => rows,
                // Recovery ended since the `SHOW` above: the next round sees it.
                Err(e)
                    if e.code()
                        == Some(
                            &tokio_postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                        ) =>
                {
                    continue;
                }
                Err(e) => return Err(Some(format!("waiting for promotion: {}", pg_error(&e)))),
            };
            let paused = rows.iter().any(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("paused"),
                _ => false,
            });
            if paused {
                return Err(None);
            }
        }
        if now >= deadline {
            return Err(Some("recovery did not end in time".into()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Mint this generation's replication password (stored as a SCRAM verifier) and install the
/// tenant roles, in one local-only commit (no safekeeper streams yet), then have the safekeepers
/// follow, and keep re-asserting it while the compute runs.
pub(crate) async fn start_replication(
    w: &WalSetup,
    spec: &ComputeSpec,
    client: &tokio_postgres::Client,
    host: std::net::IpAddr,
    port: u16,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let password = wal::replication_password();
    let verifier = ScramVerifier::from_password(&password);
    client
        .batch_execute(&format!(
            "SET synchronous_commit = local;\n{}",
            sql::do_block(&[
                sql::replicator_body(&verifier),
                sql::role_sync_body(&spec.roles),
                sql::rename_fresh_body(&spec.database),
            ])
        ))
        .await
        .map_err(|e| format!("replication role and roles: {e}"))?;
    let source = ReplicationSource {
        host: host.to_string(),
        port,
        user: REPLICATOR_ROLE.into(),
        password,
    };
    w.quorum
        .follow(&spec.database, spec.generation, &source)
        .await
        .map_err(|e| format!("safekeepers: {e}"))?;
    let (quorum, db, g) = (
        Arc::clone(&w.quorum),
        spec.database.clone(),
        spec.generation,
    );
    Ok(tokio::spawn(async move {
        loop {
            tokio::time::sleep(FOLLOW_REFRESH).await;
            if let Err(e) = quorum.follow(&db, g, &source).await {
                if matches!(e, spg_core::CoreError::StaleGeneration { .. }) {
                    warn!(%db, generation = %g, error = %e, "fenced by a newer generation");
                    return;
                }
                tracing::debug!(%db, generation = %g, error = %e, "re-asserting follow");
            }
        }
    }))
}

/// Install the tenant roles (and the tenant database on the first start), on the admin session.
/// With a WAL quorum the roles are already in (committed with the replication role), and a
/// commit through the quorum waits until the safekeepers stream from the compute: a start
/// returns only once they hold its new timeline and everything before, so even an immediate
/// clean stop leaves it on the quorum.
pub(crate) async fn sync_roles(
    client: &tokio_postgres::Client,
    spec: &ComputeSpec,
    quorum: bool,
) -> Result<(), String> {
    let sql = if quorum {
        // A write (to a catalog the start already read: no function lookups, no new chunks
        // over the lazy mount) whose commit waits for the quorum.
        format!(
            "RESET synchronous_commit;\nALTER ROLE {} NOLOGIN;",
            sql::quote_ident(config::TENANT_GROUP)
        )
    } else {
        sql::role_sync_sql(&spec.roles)
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| format!("installing roles: {e}"))?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&spec.database.as_str()],
        )
        .await
        .map_err(|e| format!("looking up database: {e}"))?;
    if exists.is_none() {
        // A cluster from the platform's template has its database made already, under a
        // placeholder name: renaming it is a catalog update, where creating one copies
        // `template1` through the WAL quorum.
        let fresh = client
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&sql::FRESH_DATABASE],
            )
            .await
            .map_err(|e| format!("looking up database: {e}"))?;
        let create = match fresh {
            Some(_) => sql::rename_fresh_database_sql(&spec.database),
            None => sql::create_database_sql(&spec.database),
        };
        client
            .batch_execute(&create)
            .await
            .map_err(|e| format!("creating database: {e}"))?;
    }
    Ok(())
}

/// `recovery_target_timeline` for recovering a data directory (its `control` file) from
/// `election`'s log: the newest timeline of the log, spelled `current` when the directory's
/// checkpoint is already on it (PostgreSQL then skips a `restore_command` run that checks the
/// history file exists).
pub(crate) fn recovery_target(
    election: &Election,
    control: Option<&spg_core::pg_control::ControlFile>,
) -> String {
    let checkpoint_timeline = control.map(|c| c.timeline);
    match election.recovery_timeline() {
        Some(t) if Some(t) != checkpoint_timeline => t.to_string(),
        _ => "current".to_owned(),
    }
}

/// A client error with the server's message and SQLSTATE when there is one (tokio-postgres
/// shows only "db error" for those).
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
