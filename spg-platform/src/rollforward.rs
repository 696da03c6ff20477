//! Rolling an image forward from the WAL quorum, so that the next start replays little.
//!
//! A compute that crashes writes no image: the next start recovers from the last image and
//! replays every byte of WAL since. While the database is stopped, [`RollForward::run`] does
//! that replay ahead of time: it restores the newest image into a scratch directory, runs a
//! stock `postgres` there as a standby (`standby.signal`, no TCP, `restore_command` reading the
//! quorum's log through the same loopback endpoint computes use), waits until replay reaches the
//! quorum's end, shuts it down — which leaves a restartpoint — and stores the directory as a
//! new image of the same generation. Nothing is fenced: the log is observed, not elected, and an
//! image of a generation that a newer one has fenced meanwhile is refused by the image store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use spg_core::pg_control::ControlFile;
use spg_core::wal_files::DEFAULT_SEGMENT_SIZE;
use spg_core::{DatabaseName, Lsn, TimelineId};
use spg_lifecycle_lib::compute::admin_client_as;
use spg_lifecycle_lib::compute::config::{pg_hba_conf, pg_ident_conf};
use spg_lifecycle_lib::compute::process::PostgresProcess;
use spg_lifecycle_lib::compute::wal::{RestoreService, WalSetup};
use spg_lifecycle_lib::compute::AgentConfig;
use spg_storage_lib::image::{ImageId, ImageStore, DEFAULT_CHUNK_SIZE};
use spg_storage_lib::object_pages::{checkpoint_segment, include_in_image};
use tracing::info;

/// Rolls images of stopped databases forward; see the module documentation.
pub struct RollForward {
    images: ImageStore,
    wal: WalSetup,
    agent: Arc<AgentConfig>,
    scratch: PathBuf,
    /// Roll forward only when at least this much WAL lies after the newest image's checkpoint
    /// record (which itself takes a few hundred bytes).
    pub min_lag: u64,
    /// Give up on a replay that takes longer.
    pub timeout: Duration,
    /// The quorum's end at the last attempt per database: no second attempt until it moves.
    attempted: std::sync::Mutex<std::collections::HashMap<DatabaseName, Lsn>>,
}

/// What a roll-forward did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledForward {
    /// The image it started from.
    pub from: ImageId,
    /// The new image (at the standby's last restartpoint).
    pub to: ImageId,
    /// Where the quorum's log ended.
    pub quorum_end: Lsn,
    /// How long it took.
    pub took: Duration,
}

impl RollForward {
    /// Roll images in `images` forward from `wal`'s quorum, running `postgres` as `agent` says,
    /// in directories under `scratch`.
    pub fn new(
        images: ImageStore,
        wal: WalSetup,
        agent: Arc<AgentConfig>,
        scratch: impl Into<PathBuf>,
    ) -> Self {
        RollForward {
            images,
            wal,
            agent,
            scratch: scratch.into(),
            min_lag: DEFAULT_SEGMENT_SIZE,
            timeout: Duration::from_secs(600),
            attempted: Default::default(),
        }
    }

    /// Roll `db`'s newest image forward if the quorum holds at least [`RollForward::min_lag`]
    /// bytes of WAL after it and its end moved since the last attempt; `Ok(None)` when there is
    /// nothing to do. Only for a stopped
    /// database (a running compute's own write-back makes this redundant, though not wrong).
    pub async fn run(&self, db: &DatabaseName) -> Result<Option<RolledForward>> {
        let started = Instant::now();
        let Some(view) = self.wal.quorum.observe(db).await? else {
            return Ok(None);
        };
        let Some(latest) = self.images.latest(db, &view.history).await? else {
            return Ok(None);
        };
        if view.flush_lsn.0 < latest.lsn.0.saturating_add(self.min_lag) {
            return Ok(None);
        }
        {
            let mut attempted = self.attempted.lock().unwrap_or_else(|p| p.into_inner());
            if attempted.get(db) == Some(&view.flush_lsn) {
                return Ok(None);
            }
            attempted.insert(db.clone(), view.flush_lsn);
        }
        let manifest = self.images.manifest(db, &latest).await?;
        let dir = self.scratch.join(db.as_str());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        // The compute user reaches its scratch copy through `scratch` (a passage).
        spg_core::fsmode::passage_dir(&self.scratch, self.agent.run_as.passage_group())?;
        spg_core::fsmode::private_dir(&dir)?;
        let result = self.replay(db, &dir, &view, &manifest).await;
        let _ = std::fs::remove_dir_all(&dir);
        let (to, quorum_end) = match result? {
            Some(r) => r,
            None => return Ok(None),
        };
        let rolled = RolledForward {
            from: latest,
            to,
            quorum_end,
            took: started.elapsed(),
        };
        info!(%db, from = %rolled.from, to = %rolled.to, quorum_end = %quorum_end,
              took_ms = rolled.took.as_millis() as u64, "image rolled forward");
        Ok(Some(rolled))
    }

    async fn replay(
        &self,
        db: &DatabaseName,
        dir: &Path,
        view: &spg_core::Election,
        manifest: &spg_storage_lib::image::Manifest,
    ) -> Result<Option<(ImageId, Lsn)>> {
        let data = dir.join("pgdata");
        spg_core::fsmode::private_dir(&data)?;
        self.images.restore(manifest, &data).await?;
        spg_core::fsmode::private_dir(&data.join("pg_wal/archive_status"))?;
        let socket_dir = dir.join("sock");
        spg_core::fsmode::private_dir(&socket_dir)?;
        let restore = RestoreService::start(
            Arc::clone(&self.wal.quorum),
            db.clone(),
            view.clone(),
            data.join("pg_wal"),
        )
        .await?;
        let tli = view
            .history
            .last()
            .map(|(t, _)| t.0)
            .context("the observed log has no timeline")?;
        let port = spg_lifecycle_lib::compute::process::free_loopback_port()?;
        let settings = standby_settings(
            &socket_dir,
            port,
            &restore.restore_command(&self.wal.restore_program),
            Some(TimelineId(tli)),
        );
        write_standby_files(&data, "roll-forward", &settings, &self.agent)?;
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        self.agent.run_as.chown_tree(dir)?;
        let mut pg = PostgresProcess::spawn(
            &self.agent.bins,
            &self.agent.run_as,
            &data,
            &dir.join("postgres.log"),
        )?;
        let outcome = self
            .wait_replayed(&mut pg, &socket_dir, port, view.flush_lsn)
            .await;
        let (exit, killed) = pg.stop(Duration::from_secs(60)).await;
        restore.stop().await;
        let replayed = outcome?;
        if killed || !exit.success() {
            bail!("the roll-forward standby did not shut down cleanly ({exit})");
        }
        let control = ControlFile::read(&data)?;
        if !control.state.is_clean_shutdown() || control.checkpoint <= manifest.id.lsn {
            // No restartpoint after the image (the crashed compute wrote no checkpoint since).
            return Ok(None);
        }
        let id = ImageId {
            lsn: control.checkpoint,
            timeline: control.timeline,
            generation: view.generation,
        };
        let segment = checkpoint_segment(&control);
        let include = move |p: &str| include_in_image(p, &segment) && p != "standby.signal";
        self.images
            .capture(db, &data, id, Some(manifest), DEFAULT_CHUNK_SIZE, &include)
            .await?;
        Ok(Some((id, replayed)))
    }

    /// Wait until the standby has replayed up to `end` (or stopped advancing at its last
    /// complete record before it); returns where replay got.
    async fn wait_replayed(
        &self,
        pg: &mut PostgresProcess,
        socket_dir: &Path,
        port: u16,
        end: Lsn,
    ) -> Result<Lsn> {
        pg.wait_ready(self.timeout)
            .await
            .map_err(|e| anyhow::anyhow!("roll-forward standby: {e}"))?;
        let client = admin_client_as(socket_dir, port, "spg-rollforward")
            .await
            .map_err(anyhow::Error::msg)?;
        let deadline = Instant::now() + self.timeout;
        let (mut last, mut since) = (Lsn(0), Instant::now());
        loop {
            let (_, at) = replay_status(&client).await?;
            if at >= end {
                return Ok(at);
            }
            if at != last {
                (last, since) = (at, Instant::now());
            } else if since.elapsed() > Duration::from_secs(2) && at.0 > 0 {
                // The quorum's end can lie inside a record nobody completed: replay stops at
                // the record before it.
                return Ok(at);
            }
            if Instant::now() > deadline {
                bail!("replay reached {at} of {end} in {:?}", self.timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Settings appended to an image's own `postgresql.conf` for a scratch server replaying a WAL
/// quorum's log: a standby with no TCP listener and no replication of its own, recovering
/// `timeline` (the image's own when `None`) through `restore_command`, with room for whatever
/// settings the log's writer recorded (a hot standby pauses below them).
pub(crate) fn standby_settings(
    socket_dir: &Path,
    port: u16,
    restore_command: &str,
    timeline: Option<TimelineId>,
) -> String {
    let max_connections = spg_lifecycle_lib::compute::config::builtin_profiles()
        .iter()
        .map(|p| p.max_connections)
        .max()
        .unwrap_or(100);
    format!(
        "listen_addresses = ''\nport = {port}\nunix_socket_directories = '{}'\n\
         hot_standby = on\nmax_connections = {max_connections}\nmax_wal_senders = {}\n\
         max_worker_processes = 16\nmax_locks_per_transaction = 128\nrestore_command = '{}'\n\
         recovery_target_timeline = '{}'\nsynchronous_standby_names = ''\narchive_mode = off\n\
         primary_conninfo = ''\n",
        socket_dir.display(),
        spg_lifecycle_lib::compute::config::MAX_WAL_SENDERS,
        restore_command.replace('\'', "''"),
        timeline.map_or("current".to_owned(), |t| t.0.to_string()),
    )
}

/// Append `settings` (under a `# SPG <what>` line) to `data`'s `postgresql.conf`, and write its
/// `pg_hba.conf`, `pg_ident.conf` and `standby.signal`, owned by the compute user.
pub(crate) fn write_standby_files(
    data: &Path,
    what: &str,
    settings: &str,
    agent: &AgentConfig,
) -> Result<()> {
    use spg_core::fsmode::write_private;
    let conf_path = data.join("postgresql.conf");
    let mut conf = std::fs::read_to_string(&conf_path).unwrap_or_default();
    conf.push_str(&format!("\n# SPG {what}\n{settings}"));
    let files = [
        (conf_path, conf),
        (data.join("pg_hba.conf"), pg_hba_conf(false, false)),
        (
            data.join("pg_ident.conf"),
            pg_ident_conf(&agent.platform_os_user),
        ),
        (data.join("standby.signal"), String::new()),
    ];
    for (path, text) in files {
        write_private(&path, text).with_context(|| format!("writing {}", path.display()))?;
        agent.run_as.chown(&path)?;
    }
    Ok(())
}

/// Whether the server is still recovering, and where its replay got (0 before any).
pub(crate) async fn replay_status(client: &tokio_postgres::Client) -> Result<(bool, Lsn)> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text",
            &[],
        )
        .await?;
    let text: Option<String> = row.get(1);
    let at = text
        .as_deref()
        .and_then(|t| t.parse::<Lsn>().ok())
        .unwrap_or(Lsn(0));
    Ok((row.get(0), at))
}
