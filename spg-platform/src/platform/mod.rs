//! The whole platform in one process: state store, page store, local provisioner, control plane,
//! HTTPS API, gateway and metrics. `spg up` runs this; tests and benchmarks do too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use spg_core::{PageStore, WalQuorum};
use spg_gateway_lib::{GatewayConfig, GatewayDeps, GatewayMetrics, GatewayServer};
use spg_lifecycle_lib::api::{self, ApiKey};
use spg_lifecycle_lib::compute::wal::WalSetup;
use spg_lifecycle_lib::compute::AgentConfig;
use spg_lifecycle_lib::controlplane::OwnershipConfig;
use spg_lifecycle_lib::metrics::ControlPlaneMetrics;
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_lifecycle_lib::provisioner::{LocalProvisioner, Provisioner};
use spg_lifecycle_lib::{ControlPlane, ControlPlaneConfig};
use spg_storage_lib::image::{ImageRepo, ImageStore, ObjectRepo};
use spg_storage_lib::pageserver::gc::GcPolicy;
use spg_storage_lib::pageserver::{Pageserver, PageserverConfig};
use spg_storage_lib::safekeeper::file::DEFAULT_SEGMENT_SIZE;
use spg_storage_lib::safekeeper::node::{NodeConfig, SafekeeperNode};
use spg_storage_lib::safekeeper::quorum::{SafekeeperApi, SafekeeperSet};
use spg_storage_lib::ObjectPageStore;

use crate::pageserver_http::HttpPageserver;
use crate::rollforward::RollForward;
use crate::safekeeper_http::HttpSafekeeper;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::adapters::{InProcess, WithAdmin};

mod agents;
mod config;
mod stores;

use crate::tls::TlsMaterial;
pub use agents::locate_compute_program;
pub use config::{
    ComputeRunner, KubeApi, KubeRunner, PlatformConfig, RemotePageserver, RemoteSafekeeper, Sharing,
};
pub use stores::default_name;
use stores::{open_state_store, stored_key};

/// How often in-process safekeepers copy complete WAL segments to object storage.
const OFFLOAD_EVERY: Duration = Duration::from_secs(10);
/// Complete segments a safekeeper keeps locally after offloading them (fast recovery reads).
const OFFLOAD_KEEP_SEGMENTS: u64 = 4;

/// Key under which the API key's hash is stored.
const API_KEY_META: &str = "api_key_sha256";
/// Key under which the gateway API key's hash is stored.
const GATEWAY_KEY_META: &str = "gateway_api_key_sha256";
/// Key under which the admin console's SCRAM verifier (of the API key) is stored.
const ADMIN_SCRAM_META: &str = "admin_scram_verifier";

/// A running platform.
pub struct Platform {
    /// The control plane.
    pub control_plane: ControlPlane,
    /// The gateway, if this process runs one.
    pub gateway: Option<GatewayServer>,
    /// Where the gateway listens.
    pub gateway_addr: Option<SocketAddr>,
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where plain-HTTP metrics are served, if configured.
    pub metrics_addr: Option<SocketAddr>,
    /// The API key in plaintext, when this process knows it (given or newly generated).
    pub api_key: Option<String>,
    /// The gateway API key in plaintext, when this process knows it.
    pub gateway_api_key: Option<String>,
    /// CA certificate file clients should trust.
    pub ca_file: PathBuf,
    gateway_stop: CancellationToken,
    servers_stop: CancellationToken,
    gateway_task: Option<JoinHandle<()>>,
    server_tasks: Vec<JoinHandle<()>>,
    /// The in-process safekeepers.
    pub safekeepers: Vec<Arc<SafekeeperNode>>,
    /// The in-process pageserver, if computes use one (not a remote one).
    pub pageserver: Option<Arc<Pageserver>>,
    offload_stop: tokio::sync::watch::Sender<bool>,
    offload_tasks: Vec<JoinHandle<()>>,
}

impl Platform {
    /// Start everything.
    pub async fn start(cfg: PlatformConfig) -> Result<Platform> {
        let data_dir = std::path::absolute(&cfg.data_dir)?;
        // Everything under the data directory is 0600 in 0700 directories, except the passages
        // on the way to the computes' own directories (the data directory itself, `run`,
        // `pages`, ...), which the compute user's group may enter (0710) but not list.
        crate::secure_dir(&data_dir)?;
        let passage_group = spg_lifecycle_lib::os_user::RunAs::detect()?.passage_group();
        spg_core::fsmode::passage_dir(&data_dir, passage_group)
            .with_context(|| format!("opening {}", data_dir.display()))?;
        let api_listener = TcpListener::bind(cfg.api_listen)
            .await
            .with_context(|| format!("API cannot listen on {}", cfg.api_listen))?;
        let api_addr = api_listener.local_addr()?;
        let advertise_url = cfg
            .sharing
            .as_ref()
            .and_then(|s| s.advertise_url.clone())
            .unwrap_or_else(|| format!("https://{}", client_host(api_addr)));
        let mut names = vec![
            api_addr.ip(),
            cfg.gateway_listen.map_or(api_addr.ip(), |a| a.ip()),
        ]
        .into_iter()
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>();
        if let Some(h) = url::Url::parse(&advertise_url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        {
            names.push(h);
        }
        let tls = TlsMaterial::load_or_generate_for(
            &data_dir.join("tls"),
            cfg.tls_cert.as_deref(),
            cfg.tls_key.as_deref(),
            None,
            &names,
        )?;

        let (store, shared) = open_state_store(
            cfg.state_store.as_deref(),
            &data_dir,
            cfg.state_store_ca.as_deref(),
        )
        .await?;
        let ownership = match (shared, &cfg.sharing) {
            (false, None) => None,
            (false, Some(_)) => anyhow::bail!(
                "control planes share only a PostgreSQL state store (state_store = \"postgres://...\")"
            ),
            (true, sharing) => {
                let sharing = sharing.clone().unwrap_or_else(|| Sharing {
                    name: default_name(),
                    advertise_url: None,
                    ttl: Duration::from_secs(3),
                    peer_ca: None,
                });
                if cfg.api_key.is_none() || cfg.gateway_api_key.is_none() {
                    anyhow::bail!(
                        "a control plane on a shared (PostgreSQL) state store needs api_key and \
                         gateway_api_key, the same on every control plane"
                    );
                }
                if cfg.remote_safekeepers.is_empty() || cfg.remote_pageserver.is_none() {
                    anyhow::bail!(
                        "a control plane on a shared (PostgreSQL) state store needs remote \
                         safekeepers (safekeeper) and a remote pageserver (pageserver): \
                         in-process ones would not be shared with the other control planes"
                    );
                }
                let mut o = OwnershipConfig::new(sharing.name.clone(), advertise_url.clone());
                o.ttl = sharing.ttl;
                o.renew_interval = (sharing.ttl / 3).max(Duration::from_millis(100));
                Some((o, sharing))
            }
        };
        let api_key = stored_key(&*store, API_KEY_META, cfg.api_key.as_deref(), "spg").await?;
        let gateway_key = stored_key(
            &*store,
            GATEWAY_KEY_META,
            cfg.gateway_api_key.as_deref(),
            "spggw",
        )
        .await?;
        // The admin console logs in with the API key as password: keep its verifier (the key
        // itself is stored only as a hash).
        if let Some(k) = &api_key {
            let v = spg_core::scram::ScramVerifier::from_password(k);
            store
                .set_meta(ADMIN_SCRAM_META, &v.to_postgres_string())
                .await?;
        }
        let admin_verifier = store
            .meta(ADMIN_SCRAM_META)
            .await?
            .and_then(|v| spg_core::scram::ScramVerifier::parse(&v).ok());
        let key_hash = store
            .meta(API_KEY_META)
            .await?
            .and_then(|h| ApiKey::from_hash_hex(&h))
            .context("stored API key hash is corrupt")?;
        let gateway_key_hash = store
            .meta(GATEWAY_KEY_META)
            .await?
            .and_then(|h| ApiKey::from_hash_hex(&h))
            .context("stored gateway API key hash is corrupt")?;

        let mut registry = Registry::default();
        let cp_metrics = ControlPlaneMetrics::register(&mut registry);
        let gw_metrics = GatewayMetrics::register(&mut registry);
        // The API's and the metrics listener's HTTP limits (refusals under spg_api_http_*).
        let http_limits = cfg.http_limits.clone();
        http_limits.stats.register(&mut registry, "spg_api");

        let bins = PgBinaries::locate(cfg.pg_bin.as_deref())?;
        info!(bindir = %bins.bindir().display(), major = bins.major(), "PostgreSQL binaries");
        // Object storage for base images and offloaded WAL: a local directory by default.
        // Durable: a put returns once file and directories are fsynced (safekeepers delete
        // their own copy of what they offloaded here).
        let archive: Arc<dyn object_store::ObjectStore> = match &cfg.object_store {
            Some(url) => spg_storage_lib::open_object_store(url).with_context(|| {
                format!("opening object storage {}", crate::config::mask_url(url))
            })?,
            None => {
                let objects = data_dir.join("objects");
                Arc::new(
                    spg_storage_lib::DurableLocalStore::open(&objects)
                        .with_context(|| format!("opening {}", objects.display()))?,
                )
            }
        };
        let mut agent = AgentConfig::new(data_dir.join("run"), bins)?;
        agent.cgroup_root = cfg.cgroup_root.clone();
        let in_process = if cfg.remote_safekeepers.is_empty() {
            cfg.safekeepers
        } else {
            0
        };
        let safekeepers = start_safekeepers(&data_dir, in_process, &mut registry)?;
        let mut members: Vec<Arc<dyn SafekeeperApi>> = safekeepers
            .iter()
            .map(|n| Arc::new(Arc::clone(n)) as Arc<dyn SafekeeperApi>)
            .collect();
        for r in &cfg.remote_safekeepers {
            members.push(Arc::new(HttpSafekeeper::new(
                &r.name, &r.url, &r.api_key, &r.ca_pem,
            )?));
        }
        let (offload_stop, offload_rx) = tokio::sync::watch::channel(false);
        let offload_tasks: Vec<JoinHandle<()>> = safekeepers
            .iter()
            .map(|n| {
                n.spawn_offloader(
                    Arc::clone(&archive),
                    OFFLOAD_EVERY,
                    OFFLOAD_KEEP_SEGMENTS,
                    offload_rx.clone(),
                )
            })
            .collect();
        // Images in object storage plus the WAL quorum are the durable state; the local data
        // directory is a cache. Images are reached through a pageserver: a remote daemon, or
        // one in this process.
        if members.is_empty() {
            anyhow::bail!(
                "no safekeepers: a database needs a WAL quorum (at least one safekeeper), \
                 its compute's local disk is never the only copy"
            );
        }
        let servers_stop = CancellationToken::new();
        let mut gc_task = None;
        let mut in_process_pageserver = None;
        let repo: Arc<dyn ImageRepo> = match &cfg.remote_pageserver {
            Some(r) => Arc::new(HttpPageserver::new(&r.url, &r.api_key, &r.ca_pem)?),
            None => {
                let ps = Arc::new(Pageserver::open(
                    ObjectRepo::new(Arc::clone(&archive), "images"),
                    &PageserverConfig {
                        cache_bytes: cfg.pageserver_cache_bytes,
                        ..PageserverConfig::new(data_dir.join("pageserver"))
                    },
                )?);
                ps.metrics().register(&mut registry);
                if !cfg.gc_every.is_zero() {
                    gc_task = Some(crate::spawn_gc_loop(
                        Arc::clone(&ps),
                        cfg.gc_every,
                        GcPolicy::default(),
                        servers_stop.clone(),
                    ));
                }
                in_process_pageserver = Some(Arc::clone(&ps));
                ps
            }
        };
        let images = ImageStore::with_repo(repo);
        let pages: Arc<dyn PageStore> = Arc::new(
            ObjectPageStore::new(images.clone(), data_dir.join("pages"))
                .with_lazy_mounts(agent.run_as.uid, agent.run_as.gid)
                .with_passage_group(agent.run_as.switch_user.then_some(agent.run_as.gid)),
        );
        let quorum = Arc::new(
            SafekeeperSet::new(members, Duration::from_secs(5)).with_archive(Arc::clone(&archive)),
        );
        info!(safekeepers = %quorum.synchronous_standby_names(), "WAL quorum");
        let restore_program = match &cfg.restore_program {
            Some(p) => p.clone(),
            None => default_restore_program()?,
        };
        let wal = WalSetup {
            quorum,
            restore_program,
        };
        let brancher = Arc::new(crate::branch::ImageBrancher::new(
            images.clone(),
            wal.clone(),
            Arc::new(agent.clone()),
            data_dir.join("branching"),
            true,
        ));
        // New databases start from the template image: found in object storage, or made now
        // (the first start of a platform; a second or so), before any database is created.
        match brancher.template().await {
            Ok(id) => info!(template = %brancher.template_name(), image = %id, "template image"),
            Err(e) => {
                warn!(error = %e, "no template image: new databases run initdb at their first start")
            }
        }
        let rollforward = (!cfg.rollforward_every.is_zero()).then(|| {
            RollForward::new(
                images,
                wal.clone(),
                Arc::new(agent.clone()),
                data_dir.join("rollforward"),
            )
        });
        let mut agent_storage_task = None;
        let provisioner: Arc<dyn Provisioner> = match &cfg.computes {
            ComputeRunner::Kubernetes(runner) => {
                Arc::new(agents::kube_provisioner(&cfg, &data_dir, runner).await?)
            }
            ComputeRunner::InProcess => {
                Arc::new(LocalProvisioner::new(agent, Arc::clone(&pages))?.with_wal(wal))
            }
            ComputeRunner::Processes(program) => {
                let object_store = match &cfg.object_store {
                    Some(url) => url.clone(),
                    None => url::Url::from_directory_path(data_dir.join("objects"))
                        .map_err(|_| anyhow::anyhow!("the data directory is not absolute"))?
                        .to_string(),
                };
                let (p, task) = agents::process_provisioner(
                    &cfg,
                    &data_dir,
                    program.as_deref(),
                    agents::InProcessStorage {
                        safekeepers: &safekeepers,
                        pageserver: in_process_pageserver.as_ref(),
                    },
                    &object_store,
                    &wal.restore_program,
                    passage_group,
                    servers_stop.clone(),
                )
                .await?;
                agent_storage_task = task;
                Arc::new(p)
            }
        };
        let cp_config = ControlPlaneConfig {
            idle_timeout: cfg.idle_timeout,
            lease_ttl: cfg.lease_ttl,
            drain_timeout: cfg.handoff_drain_timeout,
            freeze_margin: cfg.handoff_freeze_margin,
            pinned_wait: cfg.handoff_pinned_wait,
            autoscale: cfg.autoscale.clone(),
            ownership: ownership.as_ref().map(|(o, _)| o.clone()),
            ..ControlPlaneConfig::default()
        };
        let control_plane = ControlPlane::start(cp_config, store, provisioner, cp_metrics).await?;
        control_plane.meter_storage(Arc::clone(&pages));
        control_plane.set_brancher(brancher);
        if !cfg.webhooks.is_empty() || cfg.pre_wake_hook.is_some() {
            let client = webhook_client(cfg.webhook_ca_pem.as_deref())?;
            if let Some(hook) = &cfg.pre_wake_hook {
                control_plane.set_pre_wake_hook(hook.clone(), client.clone());
            }
            if !cfg.webhooks.is_empty() {
                control_plane.start_webhooks(
                    cfg.webhooks.clone(),
                    cfg.webhook_retry.clone(),
                    client,
                );
            }
        }
        let mut background: Vec<JoinHandle<()>> =
            gc_task.into_iter().chain(agent_storage_task).collect();
        if let Some(rf) = rollforward {
            background.push(spawn_rollforward_loop(
                rf,
                control_plane.clone(),
                cfg.rollforward_every,
                servers_stop.clone(),
            ));
        }

        let gateway = cfg
            .gateway_listen
            .is_some()
            .then(|| -> Result<GatewayServer> {
                Ok(GatewayServer::new(
                    GatewayConfig {
                        tls: Some(tls.gateway()?),
                        allow_plaintext: cfg.allow_plaintext,
                        wake_timeout: cfg.wake_timeout,
                        max_client_conn: cfg.max_client_conn,
                        max_message_bytes: cfg.max_message_bytes,
                        lease_holder: format!("spg-up-{}", std::process::id()),
                        pool: cfg.pool.clone(),
                        client_auth: cfg.client_auth,
                        limits: cfg.login_limits.clone(),
                        ..GatewayConfig::default()
                    },
                    GatewayDeps {
                        auth: Arc::new(WithAdmin {
                            inner: Arc::new(InProcess(control_plane.clone())),
                            admin: admin_verifier.clone(),
                        }),
                        waker: Arc::new(InProcess(control_plane.clone())),
                        lease: Some(Arc::new(control_plane.clone())),
                    },
                    gw_metrics,
                ))
            })
            .transpose()?;
        if let Some(g) = &gateway {
            // Handoffs freeze, drain and switch the gateway of this process.
            control_plane.add_gateway(Arc::new(g.clone()));
        }

        let registry = Arc::new(registry);
        let gateway_listener = match cfg.gateway_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("gateway cannot listen on {addr}"))?,
            ),
            None => None,
        };
        let gateway_addr = gateway_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;

        let gateway_stop = CancellationToken::new();
        let gateway_task = match (&gateway, gateway_listener) {
            (Some(gw), Some(listener)) => {
                let gw = gw.clone();
                let stop = gateway_stop.clone();
                Some(tokio::spawn(async move { gw.serve(listener, stop).await }))
            }
            _ => None,
        };
        let mut server_tasks = background;
        let keys = api::ApiKeys {
            admin: key_hash,
            gateway: Some(gateway_key_hash),
        };
        let peers = match &ownership {
            Some((_, sharing)) => {
                let ca = match &sharing.peer_ca {
                    Some(pem) => pem.clone(),
                    None => tls.ca_pem()?,
                };
                Some(
                    spg_lifecycle_lib::api::http::client_trusting(&ca)
                        .map_err(|e| anyhow::anyhow!("peer CA: {e}"))?
                        .connect_timeout(Duration::from_secs(2))
                        .timeout(Duration::from_secs(180))
                        .build()?,
                )
            }
            None => None,
        };
        // The console shows the gateway's DSN when this process runs one.
        let console = Arc::new(match gateway_addr {
            Some(gw) => api::console::Console::with_dsn_template(format!(
                "postgresql://{{role}}:{{password}}@{}/{{database}}?sslmode=require",
                client_host(gw)
            )),
            None => api::console::Console::default(),
        });
        let router = api::router_with_console(
            control_plane.clone(),
            keys,
            Arc::clone(&registry),
            peers,
            console,
        );
        server_tasks.push(tokio::spawn(api::http::serve_https(
            api_listener,
            tls.https()?,
            router,
            servers_stop.clone(),
            http_limits.clone(),
        )));
        let mut metrics_addr = None;
        if let Some(addr) = cfg.metrics_listen {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics cannot listen on {addr}"))?;
            metrics_addr = Some(l.local_addr()?);
            server_tasks.push(tokio::spawn(api::http::serve_http(
                l,
                metrics_router(registry),
                servers_stop.clone(),
                http_limits,
            )));
        }
        info!(gateway_addr = ?gateway_addr, %api_addr, "platform up");
        Ok(Platform {
            control_plane,
            gateway,
            gateway_addr,
            api_addr,
            metrics_addr,
            api_key,
            gateway_api_key: gateway_key,
            ca_file: tls.ca_file,
            gateway_stop,
            servers_stop,
            gateway_task,
            server_tasks,
            safekeepers,
            pageserver: in_process_pageserver,
            offload_stop,
            offload_tasks,
        })
    }

    /// `https://host:port` of the API.
    pub fn api_url(&self) -> String {
        format!("https://{}", client_host(self.api_addr))
    }

    /// The DSN of `role`/`password` on database `db` through this process's gateway.
    pub fn dsn(&self, role: &str, password: &str, db: &str) -> Option<String> {
        let gw = self.gateway_addr?;
        Some(format!(
            "postgresql://{role}:{password}@{}/{db}?sslmode=require",
            client_host(gw)
        ))
    }

    /// Stop: the gateway stops accepting, every compute is shut down (which ends the sessions),
    /// the gateway drains, the API stops. No `postgres` process is left.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.gateway_stop.cancel();
        self.control_plane.shutdown().await;
        if let Some(t) = self.gateway_task {
            let _ = t.await;
        }
        self.servers_stop.cancel();
        for t in self.server_tasks {
            let _ = t.await;
        }
        let _ = self.offload_stop.send(true);
        for t in self.offload_tasks {
            let _ = t.await;
        }
        for sk in &self.safekeepers {
            sk.shutdown().await;
        }
        info!("shut down");
    }
}

/// `host:port` a local client should use for a listen address (unspecified → loopback).
pub fn client_host(addr: SocketAddr) -> String {
    let ip = addr.ip();
    let ip = if ip.is_unspecified() {
        if ip.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        }
    } else {
        ip
    };
    SocketAddr::new(ip, addr.port()).to_string()
}

/// Start `n` safekeepers under `<data_dir>/safekeepers/sk<i>` and register their metrics.
fn start_safekeepers(
    data_dir: &std::path::Path,
    n: usize,
    registry: &mut Registry,
) -> Result<Vec<Arc<SafekeeperNode>>> {
    let mut nodes = Vec::with_capacity(n);
    for i in 1..=n {
        let node = SafekeeperNode::new(NodeConfig {
            name: format!("sk{i}"),
            dir: data_dir.join("safekeepers").join(format!("sk{i}")),
            segment_size: DEFAULT_SEGMENT_SIZE,
        })?;
        node.metrics().register(registry);
        nodes.push(node);
    }
    Ok(nodes)
}

/// `spg-wal-restore` (small: PostgreSQL starts it for every WAL file it looks for) or `spg` next
/// to the running executable (the daemons and `spg` ship together), else the running executable
/// itself.
fn default_restore_program() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for name in ["spg-wal-restore", "spg"] {
        let p = exe.with_file_name(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Ok(exe)
}

/// A router serving only `/metrics`.
pub fn metrics_router(registry: Arc<Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let r = Arc::clone(&registry);
            async move { api::server::render_metrics(&r) }
        }),
    )
}

/// Every `every`, roll forward each stopped database whose quorum holds WAL past its newest
/// image ([`RollForward::run`] skips what it tried already).
fn spawn_rollforward_loop(
    rf: RollForward,
    control_plane: ControlPlane,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let Ok(dbs) = control_plane.databases().await else {
                continue;
            };
            for st in dbs {
                // With several control planes, the owner rolls forward (one replay, not one
                // per control plane).
                if st.record.state != spg_core::ComputeState::Stopped
                    || !control_plane.owns(&st.record.name)
                {
                    continue;
                }
                // A shutdown does not wait for a replay: dropping it kills its postgres.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = rf.run(&st.record.name) => {
                        if let Err(e) = r {
                            tracing::warn!(db = %st.record.name, error = %e, "roll-forward failed");
                        }
                    }
                }
            }
        }
    })
}

/// The HTTPS client webhooks are delivered with: trusting `ca_pem`, or else the system's CA
/// bundle.
fn webhook_client(ca_pem: Option<&[u8]>) -> anyhow::Result<reqwest::Client> {
    const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
    let pem = match ca_pem {
        Some(p) => p.to_vec(),
        None => std::fs::read(SYSTEM_BUNDLE).map_err(|e| {
            anyhow::anyhow!("webhooks: no webhook_ca given and {SYSTEM_BUNDLE} unreadable: {e}")
        })?,
    };
    Ok(api::http::client_trusting(&pem)
        .map_err(|e| anyhow::anyhow!("webhooks: the CA bundle: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}
