//! Command-line pieces shared by `spg up` and `spg-controlplane`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::envfile::EnvFile;
use spg_lifecycle_lib::provisioner::kubernetes::pod::KubeSettings;

use crate::platform::{
    default_name, ComputeRunner, KubeApi, KubeRunner, Platform, PlatformConfig, RemotePageserver,
    RemoteSafekeeper, Sharing,
};

/// Flags of a process that runs the control plane.
#[derive(clap::Args, Debug, Clone)]
pub struct PlatformArgs {
    #[command(flatten)]
    pub config: crate::config::ConfigArg,
    /// Where state, images, certificates and the env file live.
    #[arg(long, env = "SPG_DATA_DIR", default_value = "./.spg")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub http: crate::HttpArgs,
    /// Stop a database's compute after this long without sessions (e.g. 3s, 5m).
    #[arg(long, env = "SPG_IDLE_TIMEOUT", default_value = "5m", value_parser = crate::parse_duration)]
    pub idle_timeout: Duration,
    /// Lifetime of a gateway's lease between renewals.
    #[arg(long, env = "SPG_LEASE_TTL", default_value = "30s", value_parser = crate::parse_duration)]
    pub lease_ttl: Duration,
    /// HTTPS API.
    #[arg(long, env = "SPG_API_LISTEN", default_value = "127.0.0.1:9443")]
    pub api_listen: SocketAddr,
    /// Plain-HTTP Prometheus metrics (they are also on the API at /metrics).
    #[arg(long, env = "SPG_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// PostgreSQL bin directory (default: pg_config --bindir, else the newest installed).
    #[arg(long, env = "SPG_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// TLS certificate (PEM) for the gateway and the API; default: self-signed, generated.
    #[arg(long, env = "SPG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert.
    #[arg(long, env = "SPG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Safekeepers to run in this process (a majority must have a commit before it is
    /// acknowledged); at least one: the compute's local disk is never the only copy.
    #[arg(long, env = "SPG_SAFEKEEPERS", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub safekeepers: u16,
    /// The cgroup hierarchy computes are limited in (their profile's CPU and memory).
    #[arg(long, env = "SPG_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Record the profiles' limits without enforcing them with cgroups.
    #[arg(long, env = "SPG_NO_CGROUPS")]
    pub no_cgroups: bool,
    /// How long a handoff waits, frozen, for transactions in flight before it gives up.
    #[arg(long, env = "SPG_HANDOFF_DRAIN_TIMEOUT", default_value = "10s",
          value_parser = crate::parse_duration)]
    pub handoff_drain_timeout: Duration,
    /// How long a handoff's freeze may outlast its drain timeout: gateways whose control plane
    /// died mid-handoff let new work go by themselves after drain timeout + this.
    #[arg(long, env = "SPG_HANDOFF_FREEZE_MARGIN", default_value = "30s",
          value_parser = crate::parse_duration)]
    pub handoff_freeze_margin: Duration,
    /// An endpoint every lifecycle event is POSTed to, signed (repeat for several):
    /// `https://...`, or `http://` to a loopback address.
    #[arg(long = "webhook", env = "SPG_WEBHOOKS", value_delimiter = ' ')]
    pub webhooks: Vec<String>,
    /// File holding the webhooks' signing secret (HMAC-SHA256; not readable by others).
    #[arg(long, env = "SPG_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// The events webhooks get (comma-separated: created, woken, stopped, crashed,
    /// handoff_started, handoff_ended); default: all.
    #[arg(long, env = "SPG_WEBHOOK_EVENTS", value_delimiter = ',')]
    pub webhook_events: Vec<String>,
    /// Asked before every start of a stopped database, signed like the webhooks; a `2xx`
    /// `{"allow": false, "message": "..."}` refuses the wake (the client sees the message).
    #[arg(long, env = "SPG_PRE_WAKE_HOOK")]
    pub pre_wake_hook: Option<String>,
    /// How long the pre-wake hook may take; without a verdict by then the wake goes on.
    #[arg(long, env = "SPG_PRE_WAKE_TIMEOUT", default_value = "2s",
          value_parser = crate::parse_duration)]
    pub pre_wake_timeout: Duration,
    /// CA (PEM) to check webhook endpoints' certificates against (default: the system's).
    #[arg(long, env = "SPG_WEBHOOK_CA")]
    pub webhook_ca: Option<PathBuf>,
    /// How long a handoff waits for sessions pinned to the writer to end before it gives up.
    #[arg(long, env = "SPG_HANDOFF_PINNED_WAIT", default_value = "60s",
          value_parser = crate::parse_duration)]
    pub handoff_pinned_wait: Duration,
    /// Run the writer autoscaler: move databases between the L1 and L2 profiles by load.
    #[arg(long, env = "SPG_AUTOSCALE")]
    pub autoscale: bool,
    /// How long the load must stay high before the autoscaler moves a writer up.
    #[arg(long, env = "SPG_AUTOSCALE_UP_WINDOW", default_value = "30s",
          value_parser = crate::parse_duration)]
    pub autoscale_up_window: Duration,
    /// How long the load must stay low before the autoscaler moves a writer down.
    #[arg(long, env = "SPG_AUTOSCALE_DOWN_WINDOW", default_value = "2m",
          value_parser = crate::parse_duration)]
    pub autoscale_down_window: Duration,
    /// How long a writer keeps a profile after a change before the autoscaler moves it again.
    #[arg(long, env = "SPG_AUTOSCALE_DWELL", default_value = "5m",
          value_parser = crate::parse_duration)]
    pub autoscale_dwell: Duration,
    /// The state store: `sqlite:///path` or `postgres://user@host/db` (default: SQLite in the
    /// data directory). Control planes on the same PostgreSQL store share the databases: each
    /// is owned by one of them at a time.
    #[arg(long, env = "SPG_STATE_STORE", value_parser = parse_state_store)]
    pub state_store: Option<String>,
    /// CA certificates (PEM) the state PostgreSQL is checked against (TLS); without, the
    /// connection is plaintext.
    #[arg(long, env = "SPG_STATE_STORE_CA")]
    pub state_store_ca: Option<PathBuf>,
    /// This control plane's name among those sharing a state store (default: the host name).
    #[arg(long, env = "SPG_NAME")]
    pub name: Option<String>,
    /// Where the other control planes reach this one's API (default: https:// and the API
    /// address).
    #[arg(long, env = "SPG_ADVERTISE_URL", value_parser = parse_https_url)]
    pub advertise_url: Option<String>,
    /// How long a database's ownership lasts without renewal: a crashed control plane's
    /// databases are taken over after this.
    #[arg(long, env = "SPG_OWNERSHIP_TTL", default_value = "3s", value_parser = crate::parse_duration)]
    pub ownership_ttl: Duration,
    /// CA certificates (PEM) the other control planes' API certificates are checked against
    /// (default: this one's own CA).
    #[arg(long, env = "SPG_PEER_CA")]
    pub peer_ca: Option<PathBuf>,
    /// Object storage for images and archived WAL: `file:///dir` or `s3://bucket/prefix`
    /// (endpoint, region and credentials from the AWS_* environment variables; default: the
    /// data directory's `objects`).
    #[arg(long, env = "SPG_OBJECT_STORE", value_parser = parse_object_store)]
    pub object_store: Option<String>,
    /// A safekeeper daemon to use, `name=https://host:port` (repeat for each; replaces the
    /// in-process safekeepers).
    #[arg(long = "safekeeper", env = "SPG_SAFEKEEPER_URLS", value_delimiter = ',',
          value_parser = parse_named_url, requires_all = ["safekeeper_api_key", "safekeeper_ca"])]
    pub remote_safekeepers: Vec<String>,
    /// API key of the safekeeper daemons.
    #[arg(long, env = "SPG_SAFEKEEPER_API_KEY", hide_env_values = true)]
    pub safekeeper_api_key: Option<String>,
    /// CA certificates (PEM) the safekeepers' certificates are checked against.
    #[arg(long, env = "SPG_SAFEKEEPER_CA")]
    pub safekeeper_ca: Option<PathBuf>,
    /// A pageserver daemon to reach images through, `https://host:port` (replaces the
    /// in-process pageserver).
    #[arg(long, env = "SPG_PAGESERVER_URL", value_parser = parse_https_url,
          requires_all = ["pageserver_api_key", "pageserver_ca"])]
    pub pageserver: Option<String>,
    /// API key of the pageserver daemon.
    #[arg(long, env = "SPG_PAGESERVER_API_KEY", hide_env_values = true)]
    pub pageserver_api_key: Option<String>,
    /// CA certificates (PEM) the pageserver's certificate is checked against.
    #[arg(long, env = "SPG_PAGESERVER_CA")]
    pub pageserver_ca: Option<PathBuf>,
    /// The API key (its hash replaces the stored one; default: the env file's, else a new
    /// one). Control planes sharing a store must all be given the same.
    #[arg(long, env = "SPG_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The gateways' API key (same rules as --api-key).
    #[arg(long, env = "SPG_GATEWAY_API_KEY", hide_env_values = true)]
    pub gateway_api_key: Option<String>,
    /// The compute agent run as one process per compute generation (default: `spg-compute`
    /// next to this program).
    #[arg(
        long,
        env = "SPG_COMPUTE_PROGRAM",
        conflicts_with = "in_process_computes"
    )]
    pub compute_program: Option<PathBuf>,
    /// Run computes inside this process instead of one `spg-compute` process each (a
    /// compute's crash then is this process's).
    #[arg(long, env = "SPG_IN_PROCESS_COMPUTES")]
    pub in_process_computes: bool,
    /// Where compute generations run: `local` (a `spg-compute` process each) or `kubernetes`
    /// (a pod each; needs remote safekeepers, a remote pageserver and object storage).
    #[arg(long, env = "SPG_PROVISIONER", default_value = "local",
          value_parser = ["local", "kubernetes"])]
    pub provisioner: String,
    /// kubernetes: the image of compute pods (`spg-compute` and PostgreSQL 15).
    #[arg(long, env = "SPG_COMPUTE_IMAGE")]
    pub compute_image: Option<String>,
    /// kubernetes: the namespace of compute pods (default: the control plane's own in a
    /// cluster, else `default`).
    #[arg(long, env = "SPG_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// kubernetes: the platform's name in compute pods' `spg.dev/platform` label (control
    /// planes sharing a state store share it).
    #[arg(long, env = "SPG_KUBE_PLATFORM", default_value = "spg")]
    pub kube_platform: String,
    /// kubernetes: a Secret whose keys become compute pods' environment (object storage
    /// credentials).
    #[arg(long, env = "SPG_KUBE_ENV_FROM")]
    pub kube_env_from: Option<String>,
    /// kubernetes: the service account of compute pods.
    #[arg(long, env = "SPG_KUBE_SERVICE_ACCOUNT")]
    pub kube_service_account: Option<String>,
    /// kubernetes: the `imagePullPolicy` of compute pods.
    #[arg(long, env = "SPG_KUBE_IMAGE_PULL_POLICY",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub kube_image_pull_policy: Option<String>,
    /// kubernetes: the agent API's port in compute pods.
    #[arg(long, env = "SPG_KUBE_AGENT_PORT", default_value_t = 7443)]
    pub kube_agent_port: u16,
    /// kubernetes: PostgreSQL's port in compute pods (0: any free one).
    #[arg(long, env = "SPG_KUBE_POSTGRES_PORT", default_value_t = 5432)]
    pub kube_postgres_port: u16,
    /// kubernetes: how long a compute pod may take to run its agent.
    #[arg(long, env = "SPG_KUBE_START_TIMEOUT", default_value = "120s",
          value_parser = crate::parse_duration)]
    pub kube_start_timeout: Duration,
    /// kubernetes: after an image pull failure, starts fail at once for this long.
    #[arg(long, env = "SPG_KUBE_PULL_BACKOFF", default_value = "30s",
          value_parser = crate::parse_duration)]
    pub kube_pull_backoff: Duration,
    /// kubernetes: the API server (default: the in-cluster service account, else the
    /// kubeconfig); with --kube-token-file and --kube-ca.
    #[arg(long, env = "SPG_KUBE_API_URL", value_parser = parse_https_url,
          requires_all = ["kube_token_file", "kube_ca"])]
    pub kube_api_url: Option<String>,
    /// kubernetes: a file holding the Bearer token for --kube-api-url.
    #[arg(long, env = "SPG_KUBE_TOKEN_FILE")]
    pub kube_token_file: Option<PathBuf>,
    /// kubernetes: CA certificates (PEM) of --kube-api-url.
    #[arg(long, env = "SPG_KUBE_CA")]
    pub kube_ca: Option<PathBuf>,
}

/// A state store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStoreUrl {
    /// `sqlite:///path/to/state.db`.
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`, as given.
    Postgres(String),
}

impl StateStoreUrl {
    /// Parse `sqlite:///path` or `postgres(ql)://...`.
    pub fn parse(s: &str) -> Result<StateStoreUrl, String> {
        let u = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
        match u.scheme() {
            "sqlite" => {
                if u.host_str().is_some_and(|h| !h.is_empty()) || u.path().len() <= 1 {
                    return Err("expected sqlite:///absolute/path/state.db".into());
                }
                let path = u
                    .to_file_path()
                    .map_err(|_| "expected sqlite:///absolute/path/state.db".to_string())?;
                Ok(StateStoreUrl::Sqlite(path))
            }
            "postgres" | "postgresql" => {
                s.parse::<tokio_postgres::Config>()
                    .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
                Ok(StateStoreUrl::Postgres(s.to_string()))
            }
            other => Err(format!(
                "unsupported scheme {other:?}: expected sqlite:///path or postgres://..."
            )),
        }
    }
}

fn parse_state_store(s: &str) -> Result<String, String> {
    StateStoreUrl::parse(s).map(|_| s.to_string())
}

/// An object storage URL (`file:///dir`, `s3://bucket/prefix`).
pub fn parse_object_store(s: &str) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    match u.scheme() {
        "file" | "s3" => Ok(s.to_string()),
        other => Err(format!(
            "unsupported scheme {other:?}: expected file:///dir or s3://bucket/prefix"
        )),
    }
}

/// An `https://host:port` URL (`http://` only for loopback hosts).
pub fn parse_https_url(s: &str) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    if u.host_str().is_none() {
        return Err("expected https://host:port".into());
    }
    match u.scheme() {
        "https" => Ok(s.trim_end_matches('/').to_string()),
        other => Err(format!("expected https://host:port, not {other}://")),
    }
}

/// A `name=https://host:port` pair.
pub fn parse_named_url(s: &str) -> Result<String, String> {
    parse_named(s, parse_https_url, "https://host:port")
}

/// A `name=URL` pair whose URL `url` accepts (`form` shows one in the errors).
fn parse_named(
    s: &str,
    url: fn(&str) -> Result<String, String>,
    form: &str,
) -> Result<String, String> {
    let (name, u) = s
        .split_once('=')
        .ok_or_else(|| format!("expected name={form}"))?;
    if name.trim().is_empty() {
        return Err(format!("expected name={form} (the name is empty)"));
    }
    url(u)?;
    Ok(s.to_string())
}

/// A storage daemon's URL for the compute agent: `https://host:port[/prefix]`, or
/// `http://localhost/<prefix>` for the platform's own daemons behind its storage socket.
pub fn parse_storage_url(s: &str) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    match u.scheme() {
        "http" if u.host_str() == Some("localhost") => Ok(s.trim_end_matches('/').to_string()),
        "http" => {
            Err("plain http:// is only for http://localhost/<prefix> on the storage socket".into())
        }
        _ => parse_https_url(s),
    }
}

/// A `name=URL` pair of [`parse_storage_url`].
pub fn parse_named_storage_url(s: &str) -> Result<String, String> {
    parse_named(
        s,
        parse_storage_url,
        "https://host:port (or http://localhost/<prefix>)",
    )
}

/// The PEM file at `path` (`what` names it in the error).
pub(crate) fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    use anyhow::Context;
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// The namespace a pod runs in (from its service account), if this runs in one.
const IN_CLUSTER_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl PlatformArgs {
    /// The Kubernetes provisioner's settings from these flags.
    fn kube_runner(&self) -> Result<KubeRunner> {
        let image = self.compute_image.clone().ok_or_else(|| {
            anyhow::anyhow!("missing setting `compute_image` (provisioner = \"kubernetes\")")
        })?;
        let namespace = match &self.kube_namespace {
            Some(n) => n.clone(),
            None => std::fs::read_to_string(IN_CLUSTER_NAMESPACE)
                .map(|n| n.trim().to_string())
                .unwrap_or_else(|_| "default".into()),
        };
        // One Secret per control plane: its own agent key and CA.
        let cp = self.name.clone().unwrap_or_else(default_name);
        let cp: String = cp
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let mut settings = KubeSettings::new(
            &namespace,
            &image,
            &self.kube_platform,
            &format!("spg-compute-{}", cp.trim_matches('-')),
        );
        settings.image_pull_policy = self.kube_image_pull_policy.clone();
        settings.env_secret = self.kube_env_from.clone();
        settings.service_account = self.kube_service_account.clone();
        settings.agent_port = self.kube_agent_port;
        settings.postgres_port = self.kube_postgres_port;
        settings.start_timeout = self.kube_start_timeout;
        settings.pull_backoff = self.kube_pull_backoff;
        let api = match &self.kube_api_url {
            Some(url) => Some(KubeApi {
                url: url.clone(),
                token: std::fs::read_to_string(
                    self.kube_token_file
                        .as_deref()
                        .ok_or_else(|| anyhow::anyhow!("missing setting `kube_token_file`"))?,
                )
                .map_err(|e| anyhow::anyhow!("reading kube_token_file: {e}"))?
                .trim()
                .to_string(),
                ca_pem: read_pem(
                    self.kube_ca
                        .as_deref()
                        .ok_or_else(|| anyhow::anyhow!("missing setting `kube_ca`"))?,
                    "kube_ca",
                )?,
            }),
            None => None,
        };
        Ok(KubeRunner { settings, api })
    }

    /// The hooks' signing secret, from `webhook_secret_file`.
    fn hook_secret(&self, needed_by: &str) -> Result<zeroize::Zeroizing<String>> {
        let file = self
            .webhook_secret_file
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("`{needed_by}` needs `webhook_secret_file`"))?;
        crate::config::check_private(file, "webhook_secret_file")?;
        let secret = zeroize::Zeroizing::new(
            std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("reading webhook_secret_file: {e}"))?
                .trim()
                .to_string(),
        );
        if secret.len() < 16 {
            anyhow::bail!("the webhook secret is too short (at least 16 characters)");
        }
        Ok(secret)
    }

    /// The pre-wake hook the flags name.
    fn pre_wake_hook(&self) -> Result<Option<spg_lifecycle_lib::webhooks::PreWakeHook>> {
        let Some(url) = &self.pre_wake_hook else {
            return Ok(None);
        };
        let secret = self.hook_secret("pre_wake_hook")?;
        spg_lifecycle_lib::webhooks::check_url(url)
            .map_err(|e| anyhow::anyhow!("pre_wake_hook: {e}"))?;
        Ok(Some(spg_lifecycle_lib::webhooks::PreWakeHook {
            url: url.clone(),
            secret,
            timeout: self.pre_wake_timeout,
        }))
    }

    /// The webhooks the flags name, with their secret and events.
    fn webhooks(&self) -> Result<Vec<spg_lifecycle_lib::webhooks::Webhook>> {
        use spg_lifecycle_lib::events::EventKind;
        if self.webhooks.is_empty() {
            return Ok(Vec::new());
        }
        let secret = self.hook_secret("webhook")?;
        let events = self
            .webhook_events
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                EventKind::parse(e.trim())
                    .ok_or_else(|| anyhow::anyhow!("webhook_events: unknown event {e:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        self.webhooks
            .iter()
            .map(|url| {
                let hook = spg_lifecycle_lib::webhooks::Webhook {
                    url: url.clone(),
                    secret: secret.clone(),
                    events: events.clone(),
                };
                hook.validate()
                    .map_err(|e| anyhow::anyhow!("webhook: {e}"))?;
                Ok(hook)
            })
            .collect()
    }

    /// The data directory (created, absolute), its env file as found, and a platform
    /// configuration from these flags (no gateway; the caller adds one). The API key of an
    /// existing env file is reused.
    pub fn prepare(&self) -> Result<(PathBuf, Option<EnvFile>, PlatformConfig)> {
        crate::secure_dir(&self.data_dir)?;
        let data_dir = std::path::absolute(&self.data_dir)?;
        let existing = EnvFile::read(&env_path(&data_dir))?;
        let mut cfg = PlatformConfig::new(&data_dir);
        cfg.gateway_listen = None;
        cfg.idle_timeout = self.idle_timeout;
        cfg.lease_ttl = self.lease_ttl;
        cfg.api_listen = self.api_listen;
        cfg.metrics_listen = self.metrics_listen;
        cfg.pg_bin = self.pg_bin.clone();
        cfg.tls_cert = self.tls_cert.clone();
        cfg.tls_key = self.tls_key.clone();
        cfg.safekeepers = usize::from(self.safekeepers);
        cfg.cgroup_root = (!self.no_cgroups).then(|| self.cgroup_root.clone());
        cfg.handoff_drain_timeout = self.handoff_drain_timeout;
        cfg.handoff_freeze_margin = self.handoff_freeze_margin;
        cfg.http_limits = self.http.limits();
        cfg.handoff_pinned_wait = self.handoff_pinned_wait;
        cfg.webhooks = self.webhooks()?;
        cfg.pre_wake_hook = self.pre_wake_hook()?;
        cfg.webhook_ca_pem = match &self.webhook_ca {
            Some(p) => Some(read_pem(p, "webhook_ca")?),
            None => None,
        };
        cfg.autoscale.enabled = self.autoscale;
        cfg.autoscale.up_window = self.autoscale_up_window;
        cfg.autoscale.down_window = self.autoscale_down_window;
        cfg.autoscale.min_dwell = self.autoscale_dwell;
        cfg.api_key = self.api_key.clone().or_else(|| {
            existing
                .as_ref()
                .and_then(|e| e.get("SPG_API_KEY"))
                .map(String::from)
        });
        cfg.gateway_api_key = self.gateway_api_key.clone().or_else(|| {
            existing
                .as_ref()
                .and_then(|e| e.get("SPG_GATEWAY_API_KEY"))
                .map(String::from)
        });
        cfg.state_store = self.state_store.clone();
        cfg.state_store_ca = self
            .state_store_ca
            .as_deref()
            .map(|p| read_pem(p, "state_store_ca"))
            .transpose()?;
        cfg.object_store = self.object_store.clone();
        cfg.computes = if self.provisioner == "kubernetes" {
            ComputeRunner::Kubernetes(Box::new(self.kube_runner()?))
        } else if self.in_process_computes {
            ComputeRunner::InProcess
        } else {
            ComputeRunner::Processes(self.compute_program.clone())
        };
        let shared = matches!(
            self.state_store.as_deref().map(StateStoreUrl::parse),
            Some(Ok(StateStoreUrl::Postgres(_)))
        );
        if shared {
            cfg.sharing = Some(Sharing {
                name: self.name.clone().unwrap_or_else(default_name),
                advertise_url: self.advertise_url.clone(),
                ttl: self.ownership_ttl,
                peer_ca: self
                    .peer_ca
                    .as_deref()
                    .map(|p| read_pem(p, "peer_ca"))
                    .transpose()?,
            });
        }
        if !self.remote_safekeepers.is_empty() {
            let key = self
                .safekeeper_api_key
                .clone()
                .ok_or_else(|| anyhow::anyhow!("missing setting `safekeeper_api_key`"))?;
            let ca = read_pem(
                self.safekeeper_ca
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("missing setting `safekeeper_ca`"))?,
                "safekeeper_ca",
            )?;
            for s in &self.remote_safekeepers {
                let (name, url) = s
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("safekeeper {s:?}: expected name=url"))?;
                cfg.remote_safekeepers.push(RemoteSafekeeper {
                    name: name.trim().to_string(),
                    url: url.trim().to_string(),
                    api_key: key.clone(),
                    ca_pem: ca.clone(),
                });
            }
        }
        if let Some(url) = &self.pageserver {
            let api_key = self
                .pageserver_api_key
                .clone()
                .ok_or_else(|| anyhow::anyhow!("missing setting `pageserver_api_key`"))?;
            let ca = self
                .pageserver_ca
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("missing setting `pageserver_ca`"))?;
            cfg.remote_pageserver = Some(RemotePageserver {
                url: url.clone(),
                api_key,
                ca_pem: read_pem(ca, "pageserver_ca")?,
            });
        }
        Ok((data_dir, existing, cfg))
    }
}

/// `<data-dir>/env`.
pub fn env_path(data_dir: &Path) -> PathBuf {
    data_dir.join("env")
}

/// Write the env file: what `existing` had, updated with the platform's API URL, key and CA,
/// and with `dsn` when given.
pub fn write_env(
    data_dir: &Path,
    existing: Option<EnvFile>,
    platform: &Platform,
    dsn: Option<&str>,
) -> Result<EnvFile> {
    let mut env = existing.unwrap_or_default();
    if let Some(dsn) = dsn {
        env.0.insert("SPG_DSN".into(), dsn.to_string());
    }
    env.0.insert("SPG_API_URL".into(), platform.api_url());
    if let Some(k) = &platform.api_key {
        env.0.insert("SPG_API_KEY".into(), k.clone());
    }
    if let Some(k) = &platform.gateway_api_key {
        env.0.insert("SPG_GATEWAY_API_KEY".into(), k.clone());
    }
    env.0
        .insert("SPG_API_CA".into(), platform.ca_file.display().to_string());
    env.write(&env_path(data_dir))?;
    Ok(env)
}

/// The object storage `url` names, or the local directory `dir`, or none.
pub fn object_store(
    url: Option<&str>,
    dir: Option<&Path>,
) -> Result<Option<std::sync::Arc<dyn object_store::ObjectStore>>> {
    use anyhow::Context;
    match (url, dir) {
        (Some(url), _) => Ok(Some(spg_storage_lib::open_object_store(url).with_context(
            || format!("opening object storage {}", crate::config::mask_url(url)),
        )?)),
        (None, Some(dir)) => Ok(Some(std::sync::Arc::new(
            spg_storage_lib::DurableLocalStore::open(dir)
                .with_context(|| format!("opening {}", dir.display()))?,
        ))),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls_are_https_or_the_sockets_localhost() {
        assert_eq!(
            parse_storage_url("https://10.0.0.5:7676/").as_deref(),
            Ok("https://10.0.0.5:7676")
        );
        assert_eq!(
            parse_storage_url("http://localhost/pageserver").as_deref(),
            Ok("http://localhost/pageserver")
        );
        for bad in ["http://10.0.0.5:7676", "ftp://localhost/x", "localhost", ""] {
            assert!(parse_storage_url(bad).is_err(), "{bad}");
        }
        assert!(parse_named_storage_url("sk1=http://localhost/sk1").is_ok());
        assert!(parse_named_storage_url("=http://localhost/sk1").is_err());
        assert!(parse_named_url("sk1=http://localhost/sk1").is_err());
    }
}
