//! [`ImageBrancher`]: the platform's [`Brancher`], making a branch's first image from its
//! parent's images and WAL.
//!
//! The branch joins the parent's family (its chunks are the parent's), and generation `g` of the
//! branch checks out the parent's newest image at or before the point, lazily mounted, as a
//! compute would (nothing of the parent is fenced). A stock `postgres` there replays the parent's
//! log from its WAL quorum (observed, never elected) as a standby with a recovery target, and
//! promotes where the target is reached, or at the end of the log. It promotes onto the
//! timeline past every one of the parent's, `timeline_of(g)`; the fast shutdown that follows
//! leaves a checkpoint there, and the write-back stores only the chunks replay changed.
//!
//! `g` is the parent's newest timeline's number, so the branch's own first compute (`g + 1`)
//! promotes past it again; the branch's WAL quorum starts empty, and its first compute reads
//! the image's history from the image itself.
//!
//! A new database starts the same way, from nothing: its first image is the platform's template
//! (an `initdb`'d cluster holding the tenant's database under a placeholder name, made once per
//! PostgreSQL major version), in the template's family: a manifest, no copy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_trait::async_trait;
use spg_core::pg_control::ControlFile;
use spg_core::{DatabaseName, Election, Generation, Lsn, PageStore, TimelineId};
use spg_lifecycle_lib::branching::{BranchMade, BranchPoint, Brancher, Reachable};
use spg_lifecycle_lib::compute::process::PostgresProcess;
use spg_lifecycle_lib::compute::sql::{quote_ident, quote_literal};
use spg_lifecycle_lib::compute::sql::{read_only_sql, FRESH_DATABASE};
use spg_lifecycle_lib::compute::wal::{RestoreService, WalSetup};
use spg_lifecycle_lib::compute::AgentConfig;
use spg_lifecycle_lib::compute::{admin_client_as, admin_client_in};
use spg_lifecycle_lib::LifecycleError;
use spg_storage_lib::image::repo::latest_on_path;
use spg_storage_lib::image::{ImageId, ImageStore, DEFAULT_CHUNK_SIZE};
use spg_storage_lib::object_pages::{checkpoint_segment, include_in_image, ObjectPageStore};
use spg_storage_lib::safekeeper::wire::parse_history_file;
use spg_storage_lib::safekeeper::{timeline_of, History};
use tracing::{info, warn};

use crate::rollforward::{replay_status, standby_settings, write_standby_files};

/// Makes branches' first images; see the module documentation.
pub struct ImageBrancher {
    images: ImageStore,
    pages: ObjectPageStore,
    wal: WalSetup,
    agent: Arc<AgentConfig>,
    dir: PathBuf,
    /// The template image, once found or made.
    template: tokio::sync::OnceCell<ImageId>,
    /// Give up on a branch whose replay takes longer.
    pub timeout: Duration,
}

/// How the replay knows it is done, besides reaching its target.
struct Goal {
    /// Promote once replay got here (the end of the log, or the LSN asked for).
    promote_at: Lsn,
    /// Settings that stop replay by themselves (an LSN or a moment).
    target: String,
}

impl Goal {
    /// Where replay of `db`'s log, which ends at `end`, stops for `at`.
    fn new(at: BranchPoint, end: Lsn, db: &DatabaseName) -> Result<Goal, LifecycleError> {
        Ok(match at {
            BranchPoint::Newest => Goal {
                promote_at: end,
                target: String::new(),
            },
            BranchPoint::Lsn(x) if x > end => {
                return Err(LifecycleError::Invalid {
                    what: "branch point",
                    reason: format!("{x} is past the end of {db}'s log ({end})"),
                })
            }
            BranchPoint::Lsn(x) => Goal {
                promote_at: x,
                target: format!(
                    "recovery_target_lsn = '{x}'\nrecovery_target_inclusive = off\n\
                     recovery_target_action = 'promote'\n"
                ),
            },
            BranchPoint::Time(ms) => Goal {
                promote_at: end,
                target: format!(
                    "recovery_target_time = '{}'\nrecovery_target_inclusive = on\n\
                     recovery_target_action = 'promote'\n",
                    pg_timestamp(ms)
                ),
            },
        })
    }
}

impl ImageBrancher {
    /// Branch images of `images`, replaying WAL of `wal`'s quorum with `postgres` run as
    /// `agent` says, in directories under `dir`; `lazy` mounts the parent's image lazily (as
    /// computes do) rather than restoring it whole.
    pub fn new(
        images: ImageStore,
        wal: WalSetup,
        agent: Arc<AgentConfig>,
        dir: impl Into<PathBuf>,
        lazy: bool,
    ) -> Self {
        let dir = dir.into();
        let mut pages = ObjectPageStore::new(images.clone(), dir.join("pages"))
            .with_passage_group(agent.run_as.passage_group());
        if lazy {
            pages = pages.with_lazy_mounts(agent.run_as.uid, agent.run_as.gid);
        }
        ImageBrancher {
            images,
            pages,
            wal,
            agent,
            dir,
            template: tokio::sync::OnceCell::new(),
            timeout: Duration::from_secs(600),
        }
    }

    /// The template database of the PostgreSQL this platform runs.
    pub fn template_name(&self) -> DatabaseName {
        DatabaseName::template(self.agent.bins.major())
    }

    /// The template image: the one stored, or made now (once per PostgreSQL major version,
    /// whichever control plane comes first).
    pub async fn template(&self) -> Result<ImageId, LifecycleError> {
        self.template
            .get_or_try_init(|| self.find_or_make_template())
            .await
            .copied()
    }

    async fn find_or_make_template(&self) -> Result<ImageId, LifecycleError> {
        let t = self.template_name();
        if let Some(id) = self.images.latest(&t, &[]).await.map_err(storage)? {
            return Ok(id);
        }
        let started = Instant::now();
        let fail = |reason: String| LifecycleError::Compute {
            database: t.to_string(),
            generation: 0,
            step: "template",
            reason,
        };
        let dir = self.dir.join("template");
        let data = dir.join("pgdata");
        {
            let (dir, root) = (dir.clone(), self.dir.clone());
            let agent = Arc::clone(&self.agent);
            blocking(move || {
                let _ = std::fs::remove_dir_all(&dir);
                spg_core::fsmode::passage_dir(&root, agent.run_as.passage_group())?;
                spg_core::fsmode::private_dir(&dir)?;
                agent.run_as.chown(&dir)?;
                Ok(())
            })
            .await
            .map_err(|e| fail(format!("{e:#}")))?;
        }
        let made = async {
            spg_lifecycle_lib::compute::files::initdb(&self.agent, &data)
                .await
                .map_err(fail)?;
            spg_lifecycle_lib::compute::files::single_user(
                &self.agent,
                &data,
                &spg_lifecycle_lib::compute::sql::template_setup_sql(),
            )
            .await
            .map_err(fail)?;
            let control = ControlFile::read(&data).map_err(|e| fail(e.to_string()))?;
            if !control.state.is_clean_shutdown() {
                return Err(fail(format!("the cluster is {}", control.state)));
            }
            let id = ImageId {
                lsn: control.checkpoint,
                timeline: control.timeline,
                generation: Generation::NONE,
            };
            let segment = checkpoint_segment(&control);
            let include = move |p: &str| include_in_image(p, &segment);
            match self
                .images
                .capture(&t, &data, id, None, DEFAULT_CHUNK_SIZE, &include)
                .await
            {
                // Another control plane made it meanwhile.
                Ok(_) | Err(spg_storage_lib::StorageError::ImageExists(_)) => Ok(id),
                Err(e) => Err(storage(e)),
            }
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        let id = made?;
        info!(template = %t, image = %id, took_ms = started.elapsed().as_millis() as u64,
              "template image made");
        Ok(id)
    }

    /// `db`'s first image: the template's, in the template's family (nothing copied).
    async fn start_from_template(
        &self,
        db: &DatabaseName,
    ) -> Result<spg_core::ImageInfo, LifecycleError> {
        let id = self.template().await?;
        let t = self.template_name();
        self.ensure_new(db).await?;
        let repo = self.images.repo();
        repo.link_family(db, &t).await.map_err(storage)?;
        let mut m = self.images.manifest(&t, &id).await.map_err(storage)?;
        m.database = db.clone();
        m.parent = Some(id);
        m.created_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Err(e) = self.images.put_manifest(&m).await {
            if let Err(fe) = repo.forget_branch(db).await {
                warn!(%db, error = %fe, "forgetting the database's family link");
            }
            return Err(storage(e));
        }
        Ok(spg_core::ImageInfo {
            database: db.clone(),
            generation: m.id.generation,
            lsn: m.id.lsn,
            created_at_ms: m.created_at_ms,
            bytes_written: 0,
        })
    }

    /// `db` has no images yet (a name being created or branched to).
    async fn ensure_new(&self, db: &DatabaseName) -> Result<(), LifecycleError> {
        if self.images.images(db).await.map_err(storage)?.is_empty() {
            return Ok(());
        }
        Err(LifecycleError::AlreadyExists {
            kind: "images of database",
            name: db.to_string(),
        })
    }

    /// `db`'s log as its WAL quorum holds it now (observed, nothing elected), and its images on
    /// that log's timeline path.
    async fn on_path(
        &self,
        db: &DatabaseName,
    ) -> Result<(Option<Election>, Vec<ImageId>), LifecycleError> {
        let view = self
            .wal
            .quorum
            .observe(db)
            .await
            .map_err(LifecycleError::WalQuorum)?;
        let history = view
            .as_ref()
            .map(|v| v.history.as_slice())
            .unwrap_or_default();
        let mut ids = self.images.images(db).await.map_err(storage)?;
        ids.retain(|id| id.on_path(history));
        Ok((view, ids))
    }

    /// The parent's image to start from: the newest on its log's path at or before `at`.
    async fn start_image(
        &self,
        parent: &DatabaseName,
        mut ids: Vec<ImageId>,
        history: &[(TimelineId, Lsn)],
        at: BranchPoint,
    ) -> Result<Option<ImageId>, LifecycleError> {
        let oldest = ids.iter().min_by_key(|id| (id.lsn, id.generation)).copied();
        let chosen = match at {
            BranchPoint::Newest => latest_on_path(ids, history),
            BranchPoint::Lsn(x) => {
                latest_on_path(ids.into_iter().filter(|id| id.lsn <= x).collect(), history)
            }
            BranchPoint::Time(ms) => {
                // An image written by then was checkpointed by then.
                ids.sort_by_key(|id| std::cmp::Reverse((id.lsn, id.generation)));
                let mut found = None;
                for id in ids {
                    let m = self.images.manifest(parent, &id).await.map_err(storage)?;
                    if m.created_at_ms <= ms {
                        found = Some(id);
                        break;
                    }
                }
                found
            }
        };
        match (chosen, oldest) {
            (Some(id), _) => Ok(Some(id)),
            (None, None) => Ok(None),
            (None, Some(oldest)) => Err(LifecycleError::Invalid {
                what: "branch point",
                reason: format!(
                    "{at} is before the oldest moment {parent}'s history still holds (its image \
                     at {})",
                    oldest.lsn
                ),
            }),
        }
    }

    async fn make(
        &self,
        parent: &DatabaseName,
        child: &DatabaseName,
        at: BranchPoint,
        read_only: bool,
    ) -> Result<BranchMade, LifecycleError> {
        let started = Instant::now();
        self.ensure_new(child).await?;
        let (view, ids) = self.on_path(parent).await?;
        let history = view.as_ref().map(|v| v.history.clone()).unwrap_or_default();
        let Some(image) = self.start_image(parent, ids, &history, at).await? else {
            info!(%parent, %child, "the parent has no image: the branch starts empty");
            return Ok(BranchMade {
                generation: Generation::NONE,
                lsn: Lsn(0),
                image: None,
                took: started.elapsed(),
            });
        };
        let end = view.as_ref().map_or(image.lsn, |v| v.flush_lsn);
        let goal = Goal::new(at, end, parent)?;
        let newest = history
            .last()
            .map_or(image.timeline, |(t, _)| *t)
            .max(image.timeline);
        let g = Generation(u64::from(newest.0));
        let election = view.unwrap_or(Election {
            generation: Generation::NONE,
            voters: 0,
            source: None,
            history: Vec::new(),
            flush_lsn: image.lsn,
            new_timeline: timeline_of(g),
        });
        let repo = self.images.repo();
        repo.link_family(child, parent).await.map_err(storage)?;
        let made = self
            .replay(parent, child, g, image, &election, newest, &goal, read_only)
            .await;
        self.clean_up(child, g, made.is_ok()).await;
        match made {
            Ok((lsn, info, _)) => {
                let made = BranchMade {
                    generation: g,
                    lsn,
                    image: Some(info),
                    took: started.elapsed(),
                };
                info!(%parent, %child, %at, from = %image, lsn = %made.lsn, generation = %g,
                      bytes_written = made.image.as_ref().map_or(0, |i| i.bytes_written),
                      took_ms = made.took.as_millis() as u64, "branch made");
                Ok(made)
            }
            Err(e) => {
                if let Err(fe) = repo.forget_branch(child).await {
                    warn!(%child, error = %fe, "forgetting the failed branch");
                }
                Err(e)
            }
        }
    }

    /// Check out `image` of `parent` as generation `g` of `child`, replay to `goal`, promote,
    /// stop, and write the directory back as `child`'s image; returns where replay ended.
    #[allow(clippy::too_many_arguments)]
    async fn replay(
        &self,
        parent: &DatabaseName,
        child: &DatabaseName,
        g: Generation,
        image: ImageId,
        election: &Election,
        timeline: TimelineId,
        goal: &Goal,
        read_only: bool,
    ) -> Result<(Lsn, spg_core::ImageInfo, History), LifecycleError> {
        let fail = |reason: String| LifecycleError::Compute {
            database: child.to_string(),
            generation: g.0,
            step: if parent == child { "restore" } else { "branch" },
            reason,
        };
        // The compute user reaches the directories under `dir` through it (a passage).
        spg_core::fsmode::passage_dir(&self.dir, self.agent.run_as.passage_group())
            .map_err(|e| fail(format!("{e:#}")))?;
        let checkout = self
            .pages
            .checkout_from(child, g, parent, image)
            .await
            .map_err(storage)?;
        let data = checkout.data_dir;
        let run = self.dir.join("run").join(child.as_str());
        let socket_dir = run.join("sock");
        {
            let (run, socket_dir) = (run.clone(), socket_dir.clone());
            let group = self.agent.run_as.passage_group();
            let root = self.dir.join("run");
            let agent = Arc::clone(&self.agent);
            blocking(move || {
                let _ = std::fs::remove_dir_all(&run);
                spg_core::fsmode::passage_dir(&root, group)?;
                spg_core::fsmode::private_dir(&run)?;
                spg_core::fsmode::private_dir(&socket_dir)?;
                agent.run_as.chown(&run)?;
                agent.run_as.chown(&socket_dir)?;
                Ok(())
            })
            .await
            .map_err(|e| fail(format!("{e:#}")))?;
        }
        let restore = RestoreService::start(
            Arc::clone(&self.wal.quorum),
            parent.clone(),
            election.clone(),
            data.join("pg_wal"),
        )
        .await?;
        let result = async {
            let port = spg_lifecycle_lib::compute::process::free_loopback_port()?;
            let mut settings = standby_settings(
                &socket_dir,
                port,
                &restore.restore_command(&self.wal.restore_program),
                Some(timeline),
            );
            settings.push_str(&goal.target);
            {
                let (data, agent) = (data.clone(), Arc::clone(&self.agent));
                // The directory is a lazy mount this process serves: no file of it is touched
                // from an async worker.
                blocking(move || write_standby_files(&data, "branch", &settings, &agent))
                    .await
                    .map_err(|e| fail(format!("{e:#}")))?;
            }
            let mut pg = PostgresProcess::spawn(
                &self.agent.bins,
                &self.agent.run_as,
                &data,
                &run.join("postgres.log"),
            )?;
            let promoted = match self.promote(&mut pg, &socket_dir, port, goal).await {
                // The parent's PostgreSQL database takes the branch's name (computes serve the
                // database named as the platform's); a parent that never started still has the
                // template's placeholder, which the branch's first start renames. Then a new
                // WAL segment: the shutdown checkpoint opens it, so the image keeps next to no
                // WAL, and the branch's safekeepers (which join at the start of the segment its
                // first compute branches off in) have next to nothing to catch up on.
                // (A restore keeps its name.)
                Ok((lsn, client)) => {
                    let rename = if parent == child {
                        String::new()
                    } else {
                        format!(
                            "DO $spg$ BEGIN IF EXISTS (SELECT 1 FROM pg_database \
                             WHERE datname = {}) THEN ALTER DATABASE {} RENAME TO {}; END IF; \
                             END $spg$; ",
                            quote_literal(parent.as_str()),
                            quote_ident(parent.as_str()),
                            quote_ident(child.as_str())
                        )
                    };
                    let renamed = client
                        .batch_execute(&rename)
                        .await
                        .context("renaming the database");
                    let locked = match renamed {
                        Ok(()) if read_only => {
                            self.lock_down(&client, &socket_dir, port, child).await
                        }
                        r => r,
                    };
                    match locked {
                        Ok(()) => client
                            .batch_execute("SELECT pg_switch_wal()")
                            .await
                            .map(|()| lsn)
                            .context("switching WAL segment"),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let (exit, killed) = pg.stop(Duration::from_secs(60)).await;
            let log =
                spg_lifecycle_lib::compute::process::log_tail(&run.join("postgres.log"), 4096);
            let lsn = promoted.map_err(|e| {
                let e = format!("{e:#}");
                if e.contains("log ends with") {
                    fail(e)
                } else {
                    fail(format!("{e}; log ends with: {log}"))
                }
            })?;
            if killed || !exit.success() {
                return Err(fail(format!("postgres did not shut down cleanly ({exit})")));
            }
            let control = {
                let data = data.clone();
                blocking(move || Ok(ControlFile::read(&data)?))
                    .await
                    .map_err(|e| fail(format!("{e:#}")))?
            };
            if control.timeline != timeline_of(g) {
                return Err(fail(format!(
                    "promoted onto timeline {}, not {}",
                    control.timeline,
                    timeline_of(g)
                )));
            }
            // The new timeline's path, as its history file (which promotion wrote) says.
            let path = {
                let (data, tli) = (data.clone(), control.timeline);
                blocking(move || {
                    let file = data.join("pg_wal").join(format!("{:08X}.history", tli.0));
                    let text = std::fs::read(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    Ok(parse_history_file(&text, tli)?)
                })
                .await
                .map_err(|e| fail(format!("{e:#}")))?
            };
            Ok((lsn, path))
        }
        .await;
        restore.stop().await;
        let (lsn, path) = result?;
        let info = self
            .pages
            .write_back(child, g)
            .await
            .map_err(LifecycleError::PageStore)?;
        Ok((lsn, info, path))
    }

    /// After a replay into `db` as generation `g`: its checkout is released and its scratch
    /// directories go (the server's log stays after a failure, until the name is used again).
    async fn clean_up(&self, db: &DatabaseName, g: Generation, succeeded: bool) {
        if succeeded {
            let _ = std::fs::remove_dir_all(self.dir.join("run").join(db.as_str()));
        }
        if let Err(e) = self.pages.release(db, g).await {
            warn!(%db, error = %e, "releasing the scratch checkout");
        }
        let _ = std::fs::remove_dir_all(self.dir.join("pages").join(db.as_str()));
    }

    /// See [`Brancher::restore`]: `db`'s log is elected for `g` (fencing every older
    /// generation), its image at or before `at` replayed to `at` and promoted onto
    /// `timeline_of(g)`, written back as generation `g`, and the log started over at that
    /// image's segment, on the image's path.
    async fn restore_to(
        &self,
        db: &DatabaseName,
        g: Generation,
        at: BranchPoint,
    ) -> Result<BranchMade, LifecycleError> {
        let started = Instant::now();
        if at == BranchPoint::Newest {
            return Err(LifecycleError::invalid(
                "restore point",
                "a restore needs a moment or an LSN to go back to",
            ));
        }
        let election = self
            .wal
            .quorum
            .elect(db, g)
            .await
            .map_err(LifecycleError::WalQuorum)?;
        let mut ids = self.images.images(db).await.map_err(storage)?;
        ids.retain(|id| id.on_path(&election.history));
        let image = self
            .start_image(db, ids, &election.history, at)
            .await?
            .ok_or_else(|| LifecycleError::invalid("restore", format!("{db} has no image")))?;
        let end = if election.history.is_empty() {
            image.lsn
        } else {
            election.flush_lsn
        };
        let goal = Goal::new(at, end, db)?;
        let newest = election
            .history
            .last()
            .map_or(image.timeline, |(t, _)| *t)
            .max(image.timeline);
        let made = self
            .replay(db, db, g, image, &election, newest, &goal, false)
            .await;
        self.clean_up(db, g, made.is_ok()).await;
        let (lsn, info, path) = made?;
        // The log starts over at the segment the image's checkpoint is in (the image holds
        // it), on the image's path: its next compute continues from the image.
        let seg = spg_core::wal_files::DEFAULT_SEGMENT_SIZE;
        let start = Lsn(info.lsn.0 / seg * seg);
        let history: Vec<(TimelineId, Lsn)> =
            path.spans().iter().map(|s| (s.tli, s.begin)).collect();
        self.wal
            .quorum
            .reset(db, g, start, &history)
            .await
            .map_err(LifecycleError::WalQuorum)?;
        info!(%db, %at, from = %image, lsn = %lsn, image_lsn = %info.lsn, generation = %g,
              took_ms = started.elapsed().as_millis() as u64, "restored");
        Ok(BranchMade {
            generation: g,
            lsn,
            image: Some(info),
            took: started.elapsed(),
        })
    }

    /// Make the tenant's database (`child`, or the template's placeholder where the parent
    /// never started) read-only for its tenant roles ([`read_only_sql`]).
    async fn lock_down(
        &self,
        admin: &tokio_postgres::Client,
        socket_dir: &std::path::Path,
        port: u16,
        child: &DatabaseName,
    ) -> anyhow::Result<()> {
        let row = admin
            .query_opt(
                "SELECT datname::text FROM pg_database WHERE datname = $1 OR datname = $2 \
                 ORDER BY datname = $1 DESC LIMIT 1",
                &[&child.as_str(), &FRESH_DATABASE],
            )
            .await
            .context("finding the tenant database")?;
        let Some(row) = row else {
            bail!("the branch has no tenant database to make read-only");
        };
        let dbname: String = row.get(0);
        let c = admin_client_in(socket_dir, port, "spg-branch", &dbname)
            .await
            .map_err(anyhow::Error::msg)?;
        c.batch_execute(&read_only_sql())
            .await
            .context("making the branch read-only")
    }

    /// Wait until the server promoted: by itself at its recovery target, or when asked to,
    /// once replay reached `goal.promote_at` (or stopped short of it for good: a log can end
    /// inside a record nobody completed). Returns where replay ended, and the admin
    /// connection.
    async fn promote(
        &self,
        pg: &mut PostgresProcess,
        socket_dir: &std::path::Path,
        port: u16,
        goal: &Goal,
    ) -> anyhow::Result<(Lsn, tokio_postgres::Client)> {
        pg.wait_ready(self.timeout)
            .await
            .map_err(|e| anyhow::anyhow!("the branch's server did not start: {e}"))?;
        let client = admin_client_as(socket_dir, port, "spg-branch")
            .await
            .map_err(anyhow::Error::msg)?;
        let deadline = Instant::now() + self.timeout;
        let (mut last, mut since) = (Lsn(0), Instant::now());
        loop {
            let (recovering, at) = replay_status(&client).await?;
            if !recovering {
                return Ok((at, client));
            }
            let stalled = at == last && since.elapsed() > Duration::from_secs(2);
            if at >= goal.promote_at || stalled {
                // It may have reached its target and be promoting by itself meanwhile.
                if let Err(e) = client.query_one("SELECT pg_promote(true, 60)", &[]).await {
                    if replay_status(&client).await?.0 {
                        return Err(e).context("promoting");
                    }
                }
                continue;
            }
            if at != last {
                (last, since) = (at, Instant::now());
            }
            if Instant::now() > deadline {
                bail!(
                    "replay reached {at} of {} in {:?}",
                    goal.promote_at,
                    self.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[async_trait]
impl Brancher for ImageBrancher {
    async fn branch(
        &self,
        parent: &DatabaseName,
        child: &DatabaseName,
        at: BranchPoint,
    ) -> Result<BranchMade, LifecycleError> {
        self.make(parent, child, at, false).await
    }

    async fn branch_read_only(
        &self,
        parent: &DatabaseName,
        child: &DatabaseName,
        at: BranchPoint,
    ) -> Result<BranchMade, LifecycleError> {
        self.make(parent, child, at, true).await
    }

    async fn restore(
        &self,
        db: &DatabaseName,
        generation: Generation,
        at: BranchPoint,
    ) -> Result<BranchMade, LifecycleError> {
        self.restore_to(db, generation, at).await
    }

    async fn retention(&self, db: &DatabaseName) -> Result<Option<Duration>, LifecycleError> {
        self.images.repo().retention(db).await.map_err(storage)
    }

    async fn set_retention(
        &self,
        db: &DatabaseName,
        retention: Option<Duration>,
    ) -> Result<(), LifecycleError> {
        self.images
            .repo()
            .set_retention(db, retention)
            .await
            .map_err(storage)
    }

    async fn forget(&self, db: &DatabaseName) -> Result<(), LifecycleError> {
        self.wal
            .quorum
            .forget(db)
            .await
            .map_err(LifecycleError::WalQuorum)?;
        self.images.repo().forget(db).await.map_err(storage)?;
        info!(%db, "storage released");
        Ok(())
    }

    async fn fresh(
        &self,
        db: &DatabaseName,
    ) -> Result<Option<spg_core::ImageInfo>, LifecycleError> {
        self.start_from_template(db).await.map(Some)
    }

    async fn reachable(&self, db: &DatabaseName) -> Result<Option<Reachable>, LifecycleError> {
        let (view, ids) = self.on_path(db).await?;
        let Some(oldest) = ids.iter().min_by_key(|id| (id.lsn, id.generation)).copied() else {
            return Ok(None);
        };
        let newest = ids.iter().map(|id| id.lsn).max().unwrap_or(oldest.lsn);
        let m = self.images.manifest(db, &oldest).await.map_err(storage)?;
        Ok(Some(Reachable {
            oldest_lsn: oldest.lsn,
            oldest_at_ms: m.created_at_ms,
            newest_lsn: view.map_or(newest, |v| v.flush_lsn.max(newest)),
            images: ids.len() as u64,
        }))
    }
}

/// A moment as PostgreSQL's `recovery_target_time` takes it: `2026-12-06 15:00:00.250+00`.
fn pg_timestamp(ms: u64) -> String {
    BranchPoint::rfc3339(ms)
        .replace('T', " ")
        .replace('Z', "+00")
}

fn storage(e: spg_storage_lib::StorageError) -> LifecycleError {
    LifecycleError::PageStore(e.into())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
}
