//! The settings of an in-process platform and of the remote daemons it may use instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use spg_gateway_lib::pool::PoolConfig;
use spg_lifecycle_lib::api;
use spg_lifecycle_lib::autoscale::AutoscalePolicy;

/// Settings of an in-process platform.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Where everything is kept (state, images, run directories, TLS material, env file).
    pub data_dir: PathBuf,
    /// Stop computes after this long without a lease.
    pub idle_timeout: Duration,
    /// Gateway address (port 0: any free port); `None` runs no gateway (`spg-controlplane`).
    pub gateway_listen: Option<SocketAddr>,
    /// API address (port 0: any free port).
    pub api_listen: SocketAddr,
    /// Optional plain-HTTP `/metrics` address.
    pub metrics_listen: Option<SocketAddr>,
    /// PostgreSQL `bin` directory (else located automatically).
    pub pg_bin: Option<PathBuf>,
    /// Configured TLS certificate (PEM); else a self-signed one is generated.
    pub tls_cert: Option<PathBuf>,
    /// Key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Accept plaintext client sessions.
    pub allow_plaintext: bool,
    /// Gateway's wake deadline.
    pub wake_timeout: Duration,
    /// Gateway's client connection limit.
    pub max_client_conn: usize,
    /// Gateway's bound on a client message body.
    pub max_message_bytes: usize,
    /// Gateway's connection pooling.
    pub pool: PoolConfig,
    /// How the gateway's clients authenticate.
    pub client_auth: spg_gateway_lib::ClientAuth,
    /// The gateway's login limits (pending logins, handshake deadline, failed-login throttling).
    pub login_limits: spg_gateway_lib::LoginLimits,
    /// Use this API key (its hash replaces the stored one); else the stored one, or a new one.
    pub api_key: Option<String>,
    /// Use this gateway API key (the scope of a gateway: verifiers, wakes, leases, registering);
    /// else the stored one, or a new one.
    pub gateway_api_key: Option<String>,
    /// Lease lifetime between renewals.
    pub lease_ttl: Duration,
    /// The cgroup hierarchy computes are limited in (default `/sys/fs/cgroup`; `None`, or a
    /// machine that does not allow it, records the profiles' limits without enforcing them).
    pub cgroup_root: Option<PathBuf>,
    /// How long a handoff waits, frozen, for transactions in flight (default 10 s).
    pub handoff_drain_timeout: Duration,
    /// How long a handoff's freeze outlasts its drain timeout at most (default 30 s).
    pub handoff_freeze_margin: Duration,
    /// Limits of the API's and the metrics listener's HTTP servers.
    pub http_limits: api::http::HttpLimits,
    /// How long a handoff waits for a window without pinned sessions (default 60 s).
    pub handoff_pinned_wait: Duration,
    /// Endpoints every lifecycle event is POSTed to ([`spg_lifecycle_lib::webhooks`]).
    pub webhooks: Vec<spg_lifecycle_lib::webhooks::Webhook>,
    /// How webhook deliveries are retried.
    pub webhook_retry: spg_lifecycle_lib::webhooks::RetryPolicy,
    /// Asked before every start of a stopped database; may refuse it.
    pub pre_wake_hook: Option<spg_lifecycle_lib::webhooks::PreWakeHook>,
    /// The CA (PEM) webhook endpoints' certificates are checked against (default: the
    /// system's bundle, `/etc/ssl/certs/ca-certificates.crt`).
    pub webhook_ca_pem: Option<Vec<u8>>,
    /// The writer autoscaler (off by default).
    pub autoscale: AutoscalePolicy,
    /// Safekeepers run in this process (quorum: a majority); at least one unless
    /// `remote_safekeepers` are given: a compute's local state is disposable in every path.
    pub safekeepers: usize,
    /// Safekeeper daemons to use instead of in-process ones (`spg-safekeeper`).
    pub remote_safekeepers: Vec<RemoteSafekeeper>,
    /// The program computes run as `restore_command` (`spg wal-restore`); default: the `spg`
    /// binary next to the running one.
    pub restore_program: Option<PathBuf>,
    /// A `spg-pageserver` daemon to reach images through, instead of the in-process pageserver.
    pub remote_pageserver: Option<RemotePageserver>,
    /// Budget of the in-process pageserver's object cache, in bytes.
    pub pageserver_cache_bytes: u64,
    /// How often the in-process pageserver collects garbage (zero: never).
    pub gc_every: Duration,
    /// How often stopped databases' images are rolled forward from the WAL quorum when WAL
    /// piled up after them (a crashed compute writes no image); zero: never.
    pub rollforward_every: Duration,
    /// The state store as a URL: `sqlite:///path` or `postgres://...` (default: SQLite at
    /// `<data_dir>/state.db`). A PostgreSQL store may be shared by several control planes.
    pub state_store: Option<String>,
    /// CA certificates (PEM) the state PostgreSQL's certificate is checked against; without,
    /// the connection is plaintext.
    pub state_store_ca: Option<Vec<u8>>,
    /// Object storage as a URL: `file:///dir` or `s3://bucket/prefix` (default:
    /// `file://<data_dir>/objects`).
    pub object_store: Option<String>,
    /// How this control plane shares its state store with others (required, and only
    /// allowed, with a PostgreSQL store).
    pub sharing: Option<Sharing>,
    /// How compute generations run (default: one `spg-compute` process each).
    pub computes: ComputeRunner,
}

/// How compute generations run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComputeRunner {
    /// One `spg-compute` process per generation, driven over its HTTPS API: this program, else
    /// `spg-compute` next to the running executable (or one directory up, for test binaries).
    Processes(Option<PathBuf>),
    /// The compute agent inside this process (a compute's crash is this process's problem;
    /// the baseline of the cold-start benchmark).
    InProcess,
    /// One Kubernetes pod per generation (remote safekeepers and pageserver required).
    Kubernetes(Box<KubeRunner>),
}

/// Computes as Kubernetes pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeRunner {
    /// How the pods are made (namespace, image, labels, ports, timeouts).
    pub settings: spg_lifecycle_lib::provisioner::kubernetes::pod::KubeSettings,
    /// The API server; `None`: the in-cluster service account, else the kubeconfig.
    pub api: Option<KubeApi>,
}

/// An API server given explicitly.
#[derive(Clone, PartialEq, Eq)]
pub struct KubeApi {
    /// `https://host:port`.
    pub url: String,
    /// The Bearer token.
    pub token: String,
    /// Its CA (PEM).
    pub ca_pem: Vec<u8>,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// How a control plane shares a PostgreSQL state store with other control planes.
#[derive(Debug, Clone)]
pub struct Sharing {
    /// Its name among them.
    pub name: String,
    /// Where the others reach its API (default: `https://` and the API address).
    pub advertise_url: Option<String>,
    /// Lease length of a database's ownership.
    pub ttl: Duration,
    /// CA certificates (PEM) the others' API certificates are checked against, for forwarded
    /// requests (default: this control plane's own CA).
    pub peer_ca: Option<Vec<u8>>,
}

impl PlatformConfig {
    /// Defaults of `spg up` for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        PlatformConfig {
            data_dir: data_dir.into(),
            idle_timeout: Duration::from_secs(300),
            gateway_listen: Some(([127, 0, 0, 1], 6432).into()),
            api_listen: ([127, 0, 0, 1], 9443).into(),
            metrics_listen: None,
            pg_bin: None,
            tls_cert: None,
            tls_key: None,
            allow_plaintext: false,
            wake_timeout: Duration::from_secs(30),
            max_client_conn: 10_000,
            max_message_bytes: 1 << 30,
            pool: PoolConfig::default(),
            client_auth: spg_gateway_lib::ClientAuth::Scram,
            login_limits: spg_gateway_lib::LoginLimits::default(),
            api_key: None,
            gateway_api_key: None,
            lease_ttl: Duration::from_secs(30),
            cgroup_root: Some(PathBuf::from("/sys/fs/cgroup")),
            handoff_drain_timeout: Duration::from_secs(10),
            handoff_freeze_margin: Duration::from_secs(30),
            http_limits: api::http::HttpLimits::default(),
            handoff_pinned_wait: Duration::from_secs(60),
            webhooks: Vec::new(),
            webhook_retry: Default::default(),
            pre_wake_hook: None,
            webhook_ca_pem: None,
            autoscale: AutoscalePolicy::default(),
            safekeepers: 3,
            remote_safekeepers: Vec::new(),
            restore_program: None,
            remote_pageserver: None,
            pageserver_cache_bytes: 1 << 30,
            gc_every: Duration::from_secs(600),
            rollforward_every: Duration::from_secs(60),
            state_store: None,
            state_store_ca: None,
            object_store: None,
            sharing: None,
            computes: ComputeRunner::Processes(None),
        }
    }
}

/// A `spg-pageserver` daemon the platform uses.
#[derive(Debug, Clone)]
pub struct RemotePageserver {
    /// `https://host:port` of its API.
    pub url: String,
    /// Its API key.
    pub api_key: String,
    /// The CA certificate (PEM) its TLS certificate is checked against.
    pub ca_pem: Vec<u8>,
}

/// A `spg-safekeeper` daemon the platform uses.
#[derive(Debug, Clone)]
pub struct RemoteSafekeeper {
    /// Its name (its `application_name`).
    pub name: String,
    /// `https://host:port` of its API.
    pub url: String,
    /// Its API key.
    pub api_key: String,
    /// The CA certificate (PEM) its TLS certificate is checked against.
    pub ca_pem: Vec<u8>,
}
