//! Embedding the gateway: your own credentials, your own Waker.
//!
//! This program serves one database, `demo`, for one role, `demo`, on an OS-chosen loopback port.
//! Nothing runs until the first client authenticates at the gateway; then the Waker starts a
//! PostgreSQL compute (with SPG's compute agent over a local-directory page store) holding the
//! same SCRAM verifier, and the gateway connects to it by key passthrough.
//!
//! `cargo run -p spg-examples --example wake_on_connect` — prints a DSN and serves until Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use prometheus_client::registry::Registry;
use spg_core::scram::ScramVerifier;
use spg_core::{ComputeEndpoint, CoreError, CoreResult, DatabaseName, Generation, RoleName};
use spg_gateway_lib::pool::{PoolConfig, PoolMode};
use spg_gateway_lib::{
    AuthSource, GatewayConfig, GatewayDeps, GatewayMetrics, GatewayServer, GatewayTls, Waker,
};
use spg_lifecycle_lib::compute::config::default_profile;
use spg_lifecycle_lib::compute::{AgentConfig, ComputeSpec, RoleSpec, RunningCompute};
use spg_lifecycle_lib::pg_bin::PgBinaries;
use spg_storage_lib::LocalDirPageStore;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Credentials: one role with one verifier (yours would come from your user database).
struct OneRole {
    db: DatabaseName,
    role: RoleName,
    verifier: ScramVerifier,
}

#[async_trait]
impl AuthSource for OneRole {
    async fn role_verifier(
        &self,
        db: &DatabaseName,
        role: &RoleName,
    ) -> CoreResult<Option<ScramVerifier>> {
        if db != &self.db {
            return Err(CoreError::DatabaseNotFound(db.to_string()));
        }
        Ok((role == &self.role).then(|| self.verifier.clone()))
    }
}

/// Starts the compute on the first wake and keeps it running.
struct StartOnce {
    auth: Arc<OneRole>,
    agent: Arc<AgentConfig>,
    pages: Arc<LocalDirPageStore>,
    running: Mutex<Option<RunningCompute>>,
    /// Every start takes a new generation: the page store fences older ones.
    generation: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Waker for StartOnce {
    async fn wake(&self, db: &DatabaseName) -> CoreResult<ComputeEndpoint> {
        if db != &self.auth.db {
            return Err(CoreError::DatabaseNotFound(db.to_string()));
        }
        let mut running = self.running.lock().await;
        if let Some(c) = running.as_ref() {
            return Ok(c.endpoint());
        }
        println!("waking {db} ...");
        let spec = ComputeSpec {
            database: db.clone(),
            generation: Generation(
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    + 1,
            ),
            roles: vec![RoleSpec {
                name: self.auth.role.clone(),
                verifier: self.auth.verifier.clone(),
            }],
            profile: default_profile(),
        };
        let pages: Arc<dyn spg_core::PageStore> = self.pages.clone();
        let compute = RunningCompute::start(self.agent.clone(), pages, None, spec)
            .await
            .map_err(|e| {
                eprintln!("start failed: {e}");
                CoreError::from(e)
            })?;
        let endpoint = compute.endpoint();
        *running = Some(compute);
        Ok(endpoint)
    }
}

fn self_signed_tls() -> Result<GatewayTls> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    Ok(GatewayTls::new(vec![cert.cert.der().clone()], key)?)
}

/// Serve until `stop`; returns the DSN through `dsn_tx` once listening, and the gateway's
/// metrics (Prometheus text) at the end.
async fn run(
    password: &str,
    dsn_tx: tokio::sync::oneshot::Sender<String>,
    stop: CancellationToken,
) -> Result<String> {
    let dir = spg_examples::scratch_dir("wake-on-connect")?;
    let auth = Arc::new(OneRole {
        db: DatabaseName::new("demo")?,
        role: RoleName::new("demo")?,
        verifier: ScramVerifier::from_password(password),
    });
    let waker = Arc::new(StartOnce {
        auth: auth.clone(),
        agent: Arc::new(AgentConfig::new(
            dir.join("run"),
            PgBinaries::locate(None)?,
        )?),
        pages: Arc::new(LocalDirPageStore::new(dir.join("pages"))),
        running: Mutex::new(None),
        generation: Default::default(),
    });
    // Transaction pooling (PgBouncer's `pool_mode = transaction`): a client holds a backend
    // connection only while a transaction runs; five per (database, role), and a client waits
    // at most 10 s for one.
    let pool = PoolConfig {
        mode: PoolMode::Transaction,
        size: 5,
        query_wait_timeout: Duration::from_secs(10),
        ..PoolConfig::default()
    };
    // The gateway's Prometheus metrics (`spg_gateway_*`): wakes, logins, sessions, pool waits.
    let mut registry = Registry::default();
    let metrics = GatewayMetrics::register(&mut registry);
    let gateway = GatewayServer::new(
        GatewayConfig {
            tls: Some(self_signed_tls()?),
            pool,
            ..GatewayConfig::default()
        },
        GatewayDeps {
            auth,
            waker: waker.clone(),
            lease: None,
        },
        metrics,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let _ = dsn_tx.send(format!(
        "postgresql://demo:{password}@127.0.0.1:{port}/demo?sslmode=require"
    ));
    gateway.serve(listener, stop).await;
    if let Some(c) = waker.running.lock().await.take() {
        let report = c.stop().await;
        println!("compute stopped cleanly: {}", report.clean);
    }
    std::fs::remove_dir_all(&dir)?;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stop = CancellationToken::new();
    let server = tokio::spawn(run("demo-password", tx, stop.clone()));
    println!("connect with: psql '{}'", rx.await?);
    println!("(nothing runs until the first connection; Ctrl-C to stop)");
    tokio::signal::ctrl_c().await?;
    stop.cancel();
    let metrics = server.await??;
    println!("{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_runs_and_wakes_on_connect() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stop = CancellationToken::new();
    let server = tokio::spawn(run("test-password", tx, stop.clone()));
    let dsn = rx.await.unwrap();
    // The example's certificate is self-signed and unknown to us: verification is not the point
    // here (the platform's own tests verify certificates).
    let tls = tokio_postgres_rustls_free::tls();
    let (client, conn) = tokio_postgres::connect(&dsn, tls).await.unwrap();
    tokio::spawn(conn);
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "demo");
    drop(client);
    stop.cancel();
    let metrics = server.await.unwrap().unwrap();
    assert!(metrics.contains("spg_gateway_wakes_total 1"), "{metrics}");
    assert!(
        metrics.contains("spg_gateway_connections_total 1"),
        "{metrics}"
    );
}

/// A minimal `MakeTlsConnect` for tokio-postgres over rustls that accepts any certificate — only
/// for this example's test.
#[cfg(test)]
mod tokio_postgres_rustls_free {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth();
        tokio_postgres_rustls::MakeRustlsConnect::new(cfg)
    }
}
