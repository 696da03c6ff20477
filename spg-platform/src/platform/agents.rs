//! Compute generations as `spg-compute` processes: the agents' configuration file, their TLS
//! material, and (when the safekeepers and the pageserver run in this process) the listener
//! through which the agents reach them: a Unix socket in the platform's private directory,
//! plain HTTP (a wake's storage round trips do no TLS work), else loopback HTTPS.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use spg_lifecycle_lib::api::{self, ApiKey};
use spg_lifecycle_lib::provisioner::kubernetes::pod::AGENT_TLS_NAME;
use spg_lifecycle_lib::provisioner::kubernetes::KubernetesProvisioner;
use spg_lifecycle_lib::provisioner::process::{ProcessLaunch, ProcessProvisioner};
use spg_storage_lib::pageserver::Pageserver;
use spg_storage_lib::safekeeper::node::SafekeeperNode;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::PlatformConfig;
use crate::tls::TlsMaterial;

/// How long an agent may take to listen.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an agent may take to end once told to (it only abandons what still runs).
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// What the agents need of this process's own storage daemons.
pub(super) struct InProcessStorage<'a> {
    pub safekeepers: &'a [Arc<SafekeeperNode>],
    pub pageserver: Option<&'a Arc<Pageserver>>,
}

/// A provisioner running `program` (else the `spg-compute` found beside this executable) per
/// generation, and the task serving in-process storage to the agents, if any.
#[allow(clippy::too_many_arguments)]
pub(super) async fn process_provisioner(
    cfg: &PlatformConfig,
    data_dir: &Path,
    program: Option<&Path>,
    storage: InProcessStorage<'_>,
    object_store: &str,
    restore_program: &Path,
    passage_group: Option<u32>,
    stop: CancellationToken,
) -> Result<(ProcessProvisioner, Option<JoinHandle<()>>)> {
    let program = match program {
        Some(p) => p.to_path_buf(),
        None => locate_compute_program()?,
    };
    // The agents' API and the storage listener use a loopback-only CA of their own (a
    // configured --tls-cert names the public host, not 127.0.0.1).
    let tls = TlsMaterial::load_or_generate(&data_dir.join("tls-internal"), None, None, None)?;
    let conf_dir = data_dir.join("compute-agent");
    crate::secure_dir(&conf_dir)?;
    let agent_key = Zeroizing::new(crate::random_secret(40));
    let cert_dir = data_dir.join("tls-internal");

    let mut conf = toml::Table::new();
    let mut set = |k: &str, v: toml::Value| {
        conf.insert(k.to_string(), v);
    };
    let path = |p: &Path| toml::Value::String(p.display().to_string());
    set("api_key", toml::Value::String(agent_key.to_string()));
    set("tls_cert", path(&cert_dir.join("server.pem")));
    set("tls_key", path(&cert_dir.join("server.key")));
    if let Some(b) = &cfg.pg_bin {
        set("pg_bin", path(b));
    }
    set("restore_program", path(restore_program));
    match &cfg.cgroup_root {
        Some(root) => set("cgroup_root", path(root)),
        None => set("no_cgroups", toml::Value::Boolean(true)),
    }
    set(
        "object_store",
        toml::Value::String(object_store.to_string()),
    );

    let mut serving = None;
    let storage_key = Zeroizing::new(crate::random_secret(40));
    if !storage.safekeepers.is_empty() || storage.pageserver.is_some() {
        let listener = StorageListener::bind(&conf_dir).await?;
        let base = listener.base()?;
        let ca = match &listener {
            // Plain HTTP on the socket: no CA to trust.
            StorageListener::Unix(_, socket) => {
                set("storage_socket", path(socket));
                None
            }
            StorageListener::Tcp(_) => Some(path(&cert_dir.join("ca.pem"))),
        };
        let metrics = Arc::new(Registry::default());
        let mut router = axum::Router::new();
        for n in storage.safekeepers {
            router = router.nest(
                &format!("/{}", n.name()),
                crate::safekeeper_http::router(
                    Arc::clone(n),
                    ApiKey::new(&storage_key),
                    Arc::clone(&metrics),
                ),
            );
        }
        if let Some(ps) = storage.pageserver {
            router = router.nest(
                "/pageserver",
                crate::pageserver_http::router(
                    Arc::clone(ps),
                    ApiKey::new(&storage_key),
                    Arc::clone(&metrics),
                    None,
                ),
            );
            set(
                "pageserver",
                toml::Value::String(format!("{base}/pageserver")),
            );
            set(
                "pageserver_api_key",
                toml::Value::String(storage_key.to_string()),
            );
            if let Some(ca) = &ca {
                set("pageserver_ca", ca.clone());
            }
        }
        if !storage.safekeepers.is_empty() {
            let list = storage
                .safekeepers
                .iter()
                .map(|n| toml::Value::String(format!("{0}={base}/{0}", n.name())))
                .collect();
            set("safekeeper", toml::Value::Array(list));
            set(
                "safekeeper_api_key",
                toml::Value::String(storage_key.to_string()),
            );
            if let Some(ca) = ca {
                set("safekeeper_ca", ca);
            }
        }
        let limits = api::http::HttpLimits::default();
        serving = Some(match listener {
            StorageListener::Unix(l, _) => {
                tokio::spawn(api::http::serve_unix(l, router, stop, limits))
            }
            StorageListener::Tcp(l) => tokio::spawn(api::http::serve_https(
                l,
                tls.https()?,
                router,
                stop,
                limits,
            )),
        });
    }
    if !cfg.remote_safekeepers.is_empty() {
        let list = cfg
            .remote_safekeepers
            .iter()
            .map(|r| toml::Value::String(format!("{}={}", r.name, r.url)))
            .collect();
        set("safekeeper", toml::Value::Array(list));
        set(
            "safekeeper_api_key",
            toml::Value::String(cfg.remote_safekeepers[0].api_key.clone()),
        );
        let ca = conf_dir.join("safekeeper-ca.pem");
        let mut bundle: Vec<u8> = Vec::new();
        for r in &cfg.remote_safekeepers {
            if !bundle
                .windows(r.ca_pem.len().max(1))
                .any(|w| w == r.ca_pem.as_slice())
            {
                bundle.extend_from_slice(&r.ca_pem);
                bundle.push(b'\n');
            }
        }
        spg_core::fsmode::write_private(&ca, &bundle)
            .with_context(|| format!("writing {}", ca.display()))?;
        set("safekeeper_ca", path(&ca));
    }
    if let Some(r) = &cfg.remote_pageserver {
        let ca = conf_dir.join("pageserver-ca.pem");
        spg_core::fsmode::write_private(&ca, &r.ca_pem)
            .with_context(|| format!("writing {}", ca.display()))?;
        set("pageserver", toml::Value::String(r.url.clone()));
        set("pageserver_api_key", toml::Value::String(r.api_key.clone()));
        set("pageserver_ca", path(&ca));
    }
    let text = Zeroizing::new(toml::to_string(&conf).context("writing the agents' settings")?);
    let file = conf_dir.join("agent.toml");
    spg_core::fsmode::write_private(&file, text.as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;

    let launch = ProcessLaunch {
        program,
        args: vec![OsString::from("--config"), file.into_os_string()],
        root: data_dir.join("computes"),
        api_key: agent_key,
        ca_pem: tls.ca_pem()?,
        launch_timeout: LAUNCH_TIMEOUT,
        stop_timeout: AGENT_STOP_TIMEOUT,
        spares: 1,
    };
    Ok((ProcessProvisioner::new(launch, passage_group)?, serving))
}

/// Where this process serves its own storage daemons to the agents it runs (on this host).
enum StorageListener {
    /// A Unix socket in the platform's private directory: plain HTTP, no TLS on the wake path.
    Unix(UnixListener, PathBuf),
    /// Loopback HTTPS, where the socket's path would be too long for a socket address.
    Tcp(TcpListener),
}

/// The longest socket path a `sockaddr_un` holds, with its terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

impl StorageListener {
    async fn bind(private_dir: &Path) -> Result<Self> {
        let socket = private_dir.join("storage.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            info!(socket = %socket.display(),
                  "socket path too long; agents reach storage over loopback HTTPS");
        } else if let Some(l) = bind_socket(&socket)? {
            return Ok(StorageListener::Unix(l, socket));
        }
        Ok(StorageListener::Tcp(
            TcpListener::bind(("127.0.0.1", 0))
                .await
                .context("listening for the compute agents' storage requests")?,
        ))
    }

    /// The base URL of the daemons' routes.
    fn base(&self) -> Result<String> {
        Ok(match self {
            StorageListener::Unix(..) => "http://localhost".into(),
            StorageListener::Tcp(l) => format!("https://{}", l.local_addr()?),
        })
    }
}

/// A listener on `socket`; `None` where this file system cannot hold one (the caller falls
/// back to loopback HTTPS). A socket an earlier run left is replaced; one somebody still serves
/// on, or anything else at that path, is an error.
fn bind_socket(socket: &Path) -> Result<Option<UnixListener>> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                anyhow::bail!(
                    "{} is in use: does another platform run on this data directory?",
                    socket.display()
                );
            }
            std::fs::remove_file(socket)
                .with_context(|| format!("removing the stale {}", socket.display()))?;
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket", socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("looking at {}", socket.display())),
    }
    match UnixListener::bind(socket) {
        Ok(l) => Ok(Some(l)),
        Err(e) => {
            warn!(socket = %socket.display(), error = %e,
                  "cannot listen on a Unix socket here; agents reach storage over loopback HTTPS");
            Ok(None)
        }
    }
}

/// `spg-compute` next to the running executable, or one directory up (a test binary in
/// `target/*/deps` finds the one in `target/*`).
pub fn locate_compute_program() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("spg-compute");
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(up) = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("spg-compute"))
        .filter(|p| p.is_file())
    {
        return Ok(up);
    }
    anyhow::bail!(
        "spg-compute was not found next to {}: install it beside the platform's binaries, \
         give its path (compute_program), or run computes in this process \
         (in_process_computes)",
        exe.display()
    )
}

/// Compute pods through the Kubernetes API: the agents' Secret (their settings, a certificate
/// for [`AGENT_TLS_NAME`] under a CA of this control plane, the storage daemons' CAs) is written
/// first; the pods mount it.
pub(super) async fn kube_provisioner(
    cfg: &PlatformConfig,
    data_dir: &Path,
    runner: &super::KubeRunner,
) -> Result<KubernetesProvisioner> {
    if cfg.remote_safekeepers.is_empty() || cfg.remote_pageserver.is_none() {
        anyhow::bail!(
            "computes in Kubernetes pods need remote safekeepers (safekeeper) and a remote \
             pageserver (pageserver): in-process ones cannot be reached from the pods"
        );
    }
    let Some(object_store) = &cfg.object_store else {
        anyhow::bail!(
            "computes in Kubernetes pods need object storage they reach too (object_store = \
             \"s3://...\")"
        );
    };
    let tls = TlsMaterial::load_or_generate_for(
        &data_dir.join("tls-compute"),
        None,
        None,
        None,
        &[AGENT_TLS_NAME.to_string()],
    )?;
    let tls_dir = data_dir.join("tls-compute");
    let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("reading {}", p.display()));
    let agent_key = Zeroizing::new(crate::random_secret(40));
    // The files of the Secret (certificate, key, CAs) are named on the pod's command line,
    // where the mount is decided.
    let mut conf = toml::Table::new();
    conf.insert("api_key".into(), toml::Value::String(agent_key.to_string()));
    conf.insert(
        "object_store".into(),
        toml::Value::String(object_store.clone()),
    );
    let sk = &cfg.remote_safekeepers;
    conf.insert(
        "safekeeper".into(),
        toml::Value::Array(
            sk.iter()
                .map(|r| toml::Value::String(format!("{}={}", r.name, r.url)))
                .collect(),
        ),
    );
    conf.insert(
        "safekeeper_api_key".into(),
        toml::Value::String(sk[0].api_key.clone()),
    );
    let ps = cfg
        .remote_pageserver
        .as_ref()
        .context("a remote pageserver")?;
    conf.insert("pageserver".into(), toml::Value::String(ps.url.clone()));
    conf.insert(
        "pageserver_api_key".into(),
        toml::Value::String(ps.api_key.clone()),
    );
    let text = Zeroizing::new(toml::to_string(&conf).context("writing the agents' settings")?);
    let mut sk_bundle = Vec::new();
    for r in sk {
        sk_bundle.extend_from_slice(&r.ca_pem);
        sk_bundle.push(b'\n');
    }
    let mut data = std::collections::BTreeMap::new();
    data.insert("agent.toml".to_string(), text.as_bytes().to_vec());
    data.insert("tls.crt".to_string(), read(tls_dir.join("server.pem"))?);
    data.insert("tls.key".to_string(), read(tls_dir.join("server.key"))?);
    data.insert("safekeeper-ca.pem".to_string(), sk_bundle);
    data.insert("pageserver-ca.pem".to_string(), ps.ca_pem.clone());

    let config = match &runner.api {
        Some(api) => {
            let mut c = kube::Config::new(api.url.parse().context("kube_api_url")?);
            use rustls::pki_types::pem::PemObject;
            c.root_cert = Some(
                rustls::pki_types::CertificateDer::pem_slice_iter(&api.ca_pem)
                    .map(|c| c.map(|c| c.to_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .context("kube_ca")?,
            );
            c.auth_info.token = Some(api.token.clone().into());
            c.default_namespace = runner.settings.namespace.clone();
            c
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes API: not in a cluster and no kubeconfig")?,
    };
    let client = kube::Client::try_from(config).context("the Kubernetes client")?;
    let provisioner =
        KubernetesProvisioner::new(client, runner.settings.clone(), &agent_key, tls.ca_pem()?);
    provisioner
        .apply_agent_secret(data)
        .await
        .context("writing the compute agents' Secret")?;
    Ok(provisioner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_storage_socket_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("storage.sock");
        let first = bind_socket(&socket).unwrap().expect("a socket here");
        let in_use = bind_socket(&socket).unwrap_err().to_string();
        assert!(in_use.contains("in use"), "{in_use}");
        drop(first);
        assert!(socket.exists(), "a dropped listener leaves its file");
        bind_socket(&socket)
            .unwrap()
            .expect("a stale socket is replaced");

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        assert!(bind_socket(&file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

        // Where no socket can be made, the caller falls back to loopback HTTPS.
        assert!(bind_socket(&dir.path().join("missing/storage.sock"))
            .unwrap()
            .is_none());
        let fallback = StorageListener::bind(&dir.path().join("missing"))
            .await
            .unwrap();
        assert!(fallback.base().unwrap().starts_with("https://127.0.0.1:"));
    }
}
