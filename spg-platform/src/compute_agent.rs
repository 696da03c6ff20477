//! `spg-compute`: the compute agent as its own process — the unit a pod runs. It serves the
//! agent API ([`spg_lifecycle_lib::agent`]) over HTTPS, and runs the one generation it is asked
//! for on images reached through a pageserver and WAL on the safekeepers, both daemons it talks
//! to over their HTTPS APIs (for `spg up`, the platform serves its in-process ones on a Unix
//! socket, plain HTTP: `--storage-socket`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use spg_core::PageStore;
use spg_lifecycle_lib::agent::server::AgentService;
use spg_lifecycle_lib::agent::{Phase, LISTENING_LINE};
use spg_lifecycle_lib::api::ApiKey;
use spg_lifecycle_lib::compute::wal::WalSetup;
use spg_lifecycle_lib::compute::AgentConfig;
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_storage_lib::image::ImageStore;
use spg_storage_lib::safekeeper::quorum::{SafekeeperApi, SafekeeperSet};
use spg_storage_lib::ObjectPageStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::pageserver_http::HttpPageserver;
use crate::safekeeper_http::HttpSafekeeper;

/// How often an idle agent renews its connections to the storage daemons (their clients keep
/// idle connections for 90 s).
const WARM_EVERY: Duration = Duration::from_secs(30);

/// Settings of `spg-compute`.
#[derive(clap::Parser, Debug)]
#[command(
    name = "spg-compute",
    version,
    about = "SPG compute agent: runs one generation of one database"
)]
pub struct ComputeArgs {
    #[command(flatten)]
    pub config: crate::config::ConfigArg,
    #[command(flatten)]
    pub http: crate::HttpArgs,
    /// Its own directory: run directory, page cache, the lazy mount.
    #[arg(long, env = "SPG_COMPUTE_ROOT")]
    pub root: PathBuf,
    /// The agent API (port 0: any free port; the chosen address is printed on standard output).
    #[arg(long, env = "SPG_COMPUTE_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// API key the control plane presents (Authorization: Bearer).
    #[arg(long, env = "SPG_COMPUTE_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// TLS certificate (PEM) of the agent API.
    #[arg(long, env = "SPG_COMPUTE_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// Private key of --tls-cert.
    #[arg(long, env = "SPG_COMPUTE_TLS_KEY")]
    pub tls_key: PathBuf,
    /// PostgreSQL bin directory (default: pg_config --bindir, else the newest installed).
    #[arg(long, env = "SPG_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// The program PostgreSQL runs as restore_command (default: this one).
    #[arg(long, env = "SPG_RESTORE_PROGRAM")]
    pub restore_program: Option<PathBuf>,
    /// The cgroup hierarchy the compute is limited in (its profile's CPU and memory).
    #[arg(long, env = "SPG_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Record the profile's limits without enforcing them with cgroups (a pod's limits are
    /// the kubelet's).
    #[arg(long, env = "SPG_NO_CGROUPS")]
    pub no_cgroups: bool,
    /// Object storage holding archived WAL: `file:///dir` or `s3://bucket/prefix` (AWS_*
    /// environment variables).
    #[arg(long, env = "SPG_OBJECT_STORE", value_parser = crate::cli::parse_object_store)]
    pub object_store: String,
    /// A safekeeper, `name=https://host:port` (repeat for each), or
    /// `name=http://localhost/<prefix>` behind --storage-socket.
    #[arg(long = "safekeeper", env = "SPG_SAFEKEEPER_URLS", value_delimiter = ',',
          value_parser = crate::cli::parse_named_storage_url, required = true)]
    pub safekeepers: Vec<String>,
    /// API key of the safekeepers.
    #[arg(long, env = "SPG_SAFEKEEPER_API_KEY", hide_env_values = true)]
    pub safekeeper_api_key: String,
    /// CA certificates (PEM) the safekeepers' certificates are checked against (for https://
    /// safekeepers).
    #[arg(
        long,
        env = "SPG_SAFEKEEPER_CA",
        required_unless_present = "storage_socket"
    )]
    pub safekeeper_ca: Option<PathBuf>,
    /// The pageserver, `https://host:port`, or `http://localhost/<prefix>` behind
    /// --storage-socket.
    #[arg(long, env = "SPG_PAGESERVER_URL", value_parser = crate::cli::parse_storage_url)]
    pub pageserver: String,
    /// API key of the pageserver.
    #[arg(long, env = "SPG_PAGESERVER_API_KEY", hide_env_values = true)]
    pub pageserver_api_key: String,
    /// CA certificates (PEM) the pageserver's certificate is checked against (for an https://
    /// pageserver).
    #[arg(
        long,
        env = "SPG_PAGESERVER_CA",
        required_unless_present = "storage_socket"
    )]
    pub pageserver_ca: Option<PathBuf>,
    /// The Unix socket of the platform's own storage daemons on this host (a local control
    /// plane's): the `http://localhost/...` storage URLs are reached through it, over plain
    /// HTTP — no TLS work on the wake path; who may connect is decided by the socket's
    /// directory, and the API keys are still checked.
    #[arg(long, env = "SPG_STORAGE_SOCKET")]
    pub storage_socket: Option<PathBuf>,
    /// The address PostgreSQL listens on (in a pod: its IP, `$(POD_IP)`); on a non-loopback
    /// address, tenants and the safekeepers may log in (SCRAM) from other hosts.
    #[arg(long, env = "SPG_POSTGRES_LISTEN", default_value = "127.0.0.1")]
    pub postgres_listen: std::net::IpAddr,
    /// The port PostgreSQL listens on (0: a free one).
    #[arg(long, env = "SPG_POSTGRES_PORT", default_value_t = 0)]
    pub postgres_port: u16,
    /// How long PostgreSQL may take to accept connections.
    #[arg(long, env = "SPG_COMPUTE_READY_TIMEOUT", default_value = "60s",
          value_parser = crate::parse_duration)]
    pub ready_timeout: Duration,
    /// How long a fast shutdown may take before PostgreSQL is killed.
    #[arg(long, env = "SPG_COMPUTE_STOP_TIMEOUT", default_value = "30s",
          value_parser = crate::parse_duration)]
    pub stop_timeout: Duration,
    /// End (abandoning the compute) when the process that started it ends: for agents that are
    /// children of a local control plane.
    #[arg(long)]
    pub exit_with_parent: bool,
}

/// Run the agent until SIGTERM/SIGINT (or, with `--exit-with-parent`, until the parent ends);
/// then abandon whatever still runs (no write-back: the control plane stops computes it wants
/// written back before it lets the agent go).
pub async fn run(args: ComputeArgs) -> Result<()> {
    let parent = std::os::unix::process::parent_id();
    if args.exit_with_parent {
        // A backstop outside the runtime: should the runtime be stuck, the process still ends
        // when its parent did (after the graceful path below had its chance), and its
        // PostgreSQL with it.
        let root = std::path::absolute(&args.root)?;
        std::thread::spawn(move || {
            while std::os::unix::process::parent_id() == parent {
                std::thread::sleep(Duration::from_millis(200));
            }
            std::thread::sleep(Duration::from_secs(15));
            eprintln!("spg-compute: the parent is gone and the agent did not stop; exiting");
            kill_own_postgres(&root);
            std::process::exit(70);
        });
    }
    let root = std::path::absolute(&args.root)?;
    let bins = PgBinaries::locate(args.pg_bin.as_deref())?;
    let mut agent = AgentConfig::new(root.join("run"), bins)?;
    agent.cgroup_root = (!args.no_cgroups).then(|| args.cgroup_root.clone());
    agent.ready_timeout = args.ready_timeout;
    agent.stop_timeout = args.stop_timeout;
    agent.listen = args.postgres_listen;
    agent.port = args.postgres_port;
    let group = agent.run_as.passage_group();
    for d in [&root, &agent.run_root] {
        spg_core::fsmode::passage_dir(d, group)
            .with_context(|| format!("creating {}", d.display()))?;
    }

    let archive = spg_storage_lib::open_object_store(&args.object_store).with_context(|| {
        format!(
            "opening object storage {}",
            crate::config::mask_url(&args.object_store)
        )
    })?;
    let mut safekeepers = Vec::new();
    for s in &args.safekeepers {
        let (name, url) = s
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("safekeeper {s:?}: expected name=url"))?;
        let (name, url) = (name.trim(), url.trim());
        let http = Reach::of(url, &args.storage_socket, &args.safekeeper_ca, "safekeeper")?;
        safekeepers.push(Arc::new(HttpSafekeeper::with_client(
            name,
            url,
            &args.safekeeper_api_key,
            http.client()?,
        )));
    }
    let members: Vec<Arc<dyn SafekeeperApi>> = safekeepers
        .iter()
        .map(|s| Arc::clone(s) as Arc<dyn SafekeeperApi>)
        .collect();
    let quorum =
        Arc::new(SafekeeperSet::new(members, Duration::from_secs(5)).with_archive(archive));
    let url = &args.pageserver;
    let http = Reach::of(url, &args.storage_socket, &args.pageserver_ca, "pageserver")?;
    let pageserver = Arc::new(HttpPageserver::with_client(
        url,
        &args.pageserver_api_key,
        http.client()?,
    ));
    let pages: Arc<dyn PageStore> = Arc::new(
        ObjectPageStore::new(
            ImageStore::with_repo(Arc::clone(&pageserver) as _),
            root.join("pages"),
        )
        .with_lazy_mounts(agent.run_as.uid, agent.run_as.gid)
        .with_passage_group(agent.run_as.switch_user.then_some(agent.run_as.gid)),
    );
    let restore_program = match &args.restore_program {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let wal = WalSetup {
        quorum,
        restore_program,
    };
    let service = AgentService::new(agent, pages, Some(wal));
    // While it waits to be given a generation, keep its connections to the storage daemons
    // open: a wake should not wait for TLS handshakes.
    let warming = {
        let service = service.clone();
        tokio::spawn(async move {
            loop {
                if service.status().phase == Phase::Idle {
                    for s in &safekeepers {
                        s.warm().await;
                    }
                    pageserver.warm().await;
                }
                tokio::time::sleep(WARM_EVERY).await;
            }
        })
    };

    let tls = crate::tls::TlsMaterial::load_or_generate(
        &root,
        Some(&args.tls_cert),
        Some(&args.tls_key),
        None,
    )?;
    let mut registry = Registry::default();
    let limits = args.http.limits();
    limits.stats.register(&mut registry, "spg_compute_api");
    let registry = Arc::new(registry);
    let router = service
        .router(ApiKey::new(&args.api_key))
        .merge(crate::platform::metrics_router(registry));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("the agent API cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(spg_lifecycle_lib::api::http::serve_https(
        listener,
        tls.https()?,
        router,
        stop.clone(),
        limits,
    ));
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{LISTENING_LINE}{addr}")?;
        out.flush()?;
    }
    info!(%addr, root = %root.display(), "compute agent ready");
    tokio::select! {
        _ = crate::shutdown_signal() => info!("told to stop"),
        _ = parent_gone(parent), if args.exit_with_parent => {
            tracing::warn!("the process that started this agent is gone");
        }
    }
    warming.abort();
    service.shutdown().await;
    stop.cancel();
    let _ = server.await;
    Ok(())
}

/// How the agent reaches a storage daemon.
enum Reach<'a> {
    /// `http://localhost/...`: through the storage socket.
    Socket(&'a std::path::Path),
    /// `https://...`: over TLS, trusting this CA.
    Https { ca_pem: Vec<u8> },
}

impl<'a> Reach<'a> {
    /// How `url` of daemon `what` is reached, given the storage socket and the daemon's CA
    /// file (setting `<what>_ca`).
    fn of(
        url: &str,
        socket: &'a Option<PathBuf>,
        ca: &Option<PathBuf>,
        what: &str,
    ) -> Result<Self> {
        let plain = url::Url::parse(url).is_ok_and(|u| u.scheme() == "http");
        match (plain, socket, ca) {
            (true, Some(socket), _) => Ok(Reach::Socket(socket)),
            (true, None, _) => anyhow::bail!(
                "{what} {url}: a plain http:// address needs the storage socket (storage_socket)"
            ),
            (false, _, Some(ca)) => Ok(Reach::Https {
                ca_pem: crate::cli::read_pem(ca, &format!("{what}_ca"))?,
            }),
            (false, _, None) => {
                anyhow::bail!("{what} {url}: missing setting `{what}_ca` (its CA certificate)")
            }
        }
    }

    /// The HTTP client that reaches the daemon so.
    fn client(&self) -> Result<reqwest::Client> {
        match self {
            Reach::Socket(socket) => crate::daemon_http::socket_client(socket),
            Reach::Https { ca_pem } => crate::daemon_http::client(ca_pem),
        }
    }
}

/// `kill -9` of the postmasters running on this agent's data directories
/// (`<root>/pages/<db>/g<N>/pgdata`); their backends end with them.
fn kill_own_postgres(root: &std::path::Path) {
    let subdirs = |d: PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|e| e.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let data_dirs: Vec<PathBuf> = subdirs(root.join("pages"))
        .into_iter()
        .flat_map(subdirs)
        .map(|g| g.join("pgdata"))
        .collect();
    for pid in subdirs(PathBuf::from("/proc"))
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.parse::<i32>().ok())
    {
        if data_dirs
            .iter()
            .any(|d| spg_lifecycle_lib::compute::process::is_postgres_on(pid, d))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Resolves once this process's parent is no longer `parent` (it ended; the process was
/// reparented).
async fn parent_gone(parent: u32) {
    loop {
        if std::os::unix::process::parent_id() != parent {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls_are_reached_by_their_scheme() {
        let socket = Some(PathBuf::from("/run/spg/storage.sock"));
        let no_ca = None;
        assert!(matches!(
            Reach::of("http://localhost/pageserver", &socket, &no_ca, "pageserver"),
            Ok(Reach::Socket(_))
        ));
        // Whatever its case, plain http never goes anywhere but the socket.
        assert!(matches!(
            Reach::of("HTTP://localhost/pageserver", &socket, &no_ca, "pageserver"),
            Ok(Reach::Socket(_))
        ));
        let e = Reach::of("HTTP://localhost/x", &None, &no_ca, "pageserver").err();
        assert!(e.unwrap().to_string().contains("storage socket"));
        let e = Reach::of("https://10.0.0.5:7676", &socket, &no_ca, "safekeeper").err();
        assert!(e.unwrap().to_string().contains("safekeeper_ca"));
    }
}
