//! Shared harness of the end-to-end tests: a platform on OS-chosen loopback ports in a temporary
//! directory, real clients (psql, tokio-postgres over rustls), and process guards.

#![allow(dead_code)]

pub mod daemons;

#[allow(unused_imports)]
pub use spg::testing::procs::{
    children_of, detach_mounts_under, kill_9_computes, postgres_processes_under, spawn_daemon,
    ChildGuard,
};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spg::platform::{ComputeRunner, Platform, PlatformConfig};
use spg_core::{ComputeState, DatabaseName, RoleName};
use spg_lifecycle_lib::{DatabaseStatus, RoleSecret};

pub const DB: &str = "appdb";
pub const ROLE: &str = "app";
pub const PASSWORD: &str = "s3cret-Pa55";
pub const API_KEY: &str = "spg_test_key_0123456789";

/// A temporary directory the compute user can reach.
pub fn reachable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("spg-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

pub struct TestPlatform {
    pub dir: tempfile::TempDir,
    pub platform: Option<Platform>,
    pub dsn: String,
}

impl TestPlatform {
    pub async fn start(idle: Duration) -> TestPlatform {
        Self::start_with(idle, |_| {}).await
    }

    pub async fn start_with(
        idle: Duration,
        tweak: impl FnOnce(&mut PlatformConfig),
    ) -> TestPlatform {
        // Compute processes log to the test's stderr: only their warnings, unless asked.
        if std::env::var_os("SPG_LOG").is_none() {
            std::env::set_var(
                "SPG_LOG",
                std::env::var("SPG_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        }
        if std::env::var_os("SPG_TEST_LOG").is_some() {
            std::env::set_var("SPG_LOG", std::env::var("SPG_TEST_LOG").unwrap_or_default());
            spg::init_logging();
        }
        let dir = reachable_tempdir();
        let mut cfg = PlatformConfig::new(dir.path().join("data"));
        cfg.idle_timeout = idle;
        cfg.gateway_listen = Some(([127, 0, 0, 1], 0).into());
        cfg.api_listen = ([127, 0, 0, 1], 0).into();
        cfg.api_key = Some(API_KEY.into());
        cfg.lease_ttl = Duration::from_secs(5);
        cfg.restore_program = Some(PathBuf::from(env!("CARGO_BIN_EXE_spg")));
        cfg.computes =
            ComputeRunner::Processes(Some(PathBuf::from(env!("CARGO_BIN_EXE_spg-compute"))));
        tweak(&mut cfg);
        let platform = Platform::start(cfg).await.unwrap();
        let db = DatabaseName::new(DB).unwrap();
        platform
            .control_plane
            .create_database(db.clone())
            .await
            .unwrap();
        platform
            .control_plane
            .create_role(
                &db,
                RoleName::new(ROLE).unwrap(),
                RoleSecret::Password(PASSWORD.into()),
            )
            .await
            .unwrap();
        let dsn = platform.dsn(ROLE, PASSWORD, DB).unwrap();
        TestPlatform {
            dir,
            platform: Some(platform),
            dsn,
        }
    }

    pub fn p(&self) -> &Platform {
        self.platform.as_ref().unwrap()
    }

    pub fn gateway_port(&self) -> u16 {
        self.p().gateway_addr.unwrap().port()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.p().ca_file.clone()
    }

    pub async fn status(&self) -> DatabaseStatus {
        self.p()
            .control_plane
            .database(&DatabaseName::new(DB).unwrap())
            .await
            .unwrap()
    }

    /// Wait until the database is in `state` (panics after `timeout`).
    pub async fn wait_state(&self, state: ComputeState, timeout: Duration) -> DatabaseStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status().await;
            if st.record.state == state {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "database stayed {} instead of becoming {state}",
                st.record.state
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A DSN for other credentials or options on the same gateway.
    pub fn dsn_with(&self, user: &str, password: &str, db: &str, params: &str) -> String {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{db}?{params}",
            self.gateway_port()
        )
    }

    pub async fn shutdown(mut self) {
        if let Some(p) = self.platform.take() {
            p.shutdown().await;
        }
        assert_eq!(
            postgres_processes_under(self.dir.path()),
            Vec::<i32>::new(),
            "postgres processes left behind"
        );
        assert_eq!(
            spg::testing::procs::agent_processes_under(self.dir.path()),
            Vec::<i32>::new(),
            "compute processes left behind"
        );
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        // A failed test: its compute processes and their postgres outlive the platform's
        // handles; stop them and detach their mounts.
        if self.platform.is_some() {
            spg::testing::procs::kill_computes_under(self.dir.path());
        }
    }
}

/// Path of psql.
pub fn psql_bin() -> PathBuf {
    if let Ok(p) = which("psql") {
        return p;
    }
    let bins = spg_lifecycle_lib::pg_bin::PgBinaries::locate(None).unwrap();
    bins.exe("psql")
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

/// Run psql on `dsn` with `-c sql`; returns the output. `PGCONNECT_TIMEOUT` bounds the connect.
pub fn psql(dsn: &str, sql: &str) -> Output {
    Command::new(psql_bin())
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dsn,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "30")
        .env_remove("PGPASSWORD")
        .output()
        .unwrap()
}

pub fn psql_ok(dsn: &str, sql: &str) -> String {
    let out = psql(dsn, sql);
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A rustls client configuration trusting `ca_file`.
pub fn client_tls(ca_file: &Path, alpn: Option<&[u8]>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    if let Some(a) = alpn {
        c.alpn_protocols = vec![a.to_vec()];
    }
    c
}

/// Connect with tokio-postgres over rustls (sslmode=require, certificate verified).
pub async fn tokio_pg(
    t: &TestPlatform,
    dsn: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(&t.ca_file(), None));
    let (client, conn) = tokio_postgres::connect(dsn, tls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            // Shown with a failing test's output: why a client's connection ended.
            eprintln!("client connection ended: {e:?}");
        }
    });
    Ok(client)
}

pub fn tls_maker(t: &TestPlatform) -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(&t.ca_file(), None))
}

/// Postmasters under `dir` of compute generation `generation` (their command line names the
/// generation's data directory, `…/g<generation>/…`).
pub fn postmasters_of_generation(dir: &Path, generation: u64) -> Vec<i32> {
    let needle = format!("/g{generation}/");
    postgres_processes_under(dir)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

/// `spg up` on `data`, its gateway and API on the given loopback ports, with `extra` flags;
/// stdout piped when `capture` (else dropped). Killed on drop, with any postgres under `data`.
pub fn spg_up(data: &Path, gw: u16, api: u16, extra: &[&str], capture: bool) -> ChildGuard {
    let child = Command::new(env!("CARGO_BIN_EXE_spg"))
        .args(["up", "--data-dir"])
        .arg(data)
        .args(["--gateway-listen", &format!("127.0.0.1:{gw}")])
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .args(extra)
        .env("SPG_LOG", "warn")
        .stdout(if capture {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    ChildGuard {
        child: Some(child),
        dir: data.to_path_buf(),
    }
}

/// A free loopback port chosen by the OS.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal PostgreSQL protocol client over plaintext (the platform must allow it), for tests
/// that need control over protocol messages (statement names, pipelining).
pub struct RawPg {
    pub stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// One backend message: tag and body.
pub type Msg = (u8, Vec<u8>);

impl RawPg {
    /// Log in with SCRAM-SHA-256; returns after the first `ReadyForQuery`.
    pub async fn connect(port: u16, user: &str, password: &str, db: &str) -> RawPg {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let startup =
            spg_gateway_lib::proto::startup::encode_startup(&[("user", user), ("database", db)]);
        stream.write_all(&startup).await.unwrap();
        let mut c = RawPg {
            stream,
            buf: Vec::new(),
        };
        let mut scram = spg_core::scram::client::ScramClient::with_password(password);
        loop {
            let (tag, body) = c.recv().await;
            match tag {
                b'R' => {
                    let code = u32::from_be_bytes(body[..4].try_into().unwrap());
                    match code {
                        0 => {}
                        10 => {
                            let (mech, data) = scram.client_first();
                            let mut b = mech.as_bytes().to_vec();
                            b.push(0);
                            b.extend_from_slice(&(data.len() as i32).to_be_bytes());
                            b.extend_from_slice(&data);
                            c.send(b'p', &b).await;
                        }
                        11 => {
                            let reply = scram.server_first(&body[4..]).unwrap();
                            c.send(b'p', &reply).await;
                        }
                        12 => scram.server_final(&body[4..]).unwrap(),
                        other => panic!("unexpected auth request {other}"),
                    }
                }
                b'E' => panic!("login failed: {}", error_text(&body)),
                b'Z' => return c,
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, tag: u8, body: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        self.stream.write_all(&m).await.unwrap();
    }

    /// Next message (panics on a closed connection or after 30 s).
    pub async fn recv(&mut self) -> Msg {
        self.try_recv().await.expect("connection closed")
    }

    /// Next message, `None` on a closed connection.
    pub async fn try_recv(&mut self) -> Option<Msg> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    return Some((tag, body));
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
                .await
                .expect("no answer within 30 s")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Messages up to and including the next `ReadyForQuery`.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.recv().await;
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    pub async fn parse(&mut self, name: &str, sql: &str) {
        let mut b = name.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(sql.as_bytes());
        b.push(0);
        b.extend_from_slice(&0i16.to_be_bytes());
        self.send(b'P', &b).await;
    }

    /// Bind `stmt` to the unnamed portal with text parameters, then Execute it.
    pub async fn bind_execute(&mut self, stmt: &str, params: &[&str]) {
        let mut b = vec![0];
        b.extend_from_slice(stmt.as_bytes());
        b.push(0);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            b.extend_from_slice(&(p.len() as i32).to_be_bytes());
            b.extend_from_slice(p.as_bytes());
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        self.send(b'B', &b).await;
        self.send(b'E', b"\0\0\0\0\0").await;
    }

    pub async fn close_statement(&mut self, name: &str) {
        let mut b = vec![b'S'];
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        self.send(b'C', &b).await;
    }

    pub async fn sync(&mut self) {
        self.send(b'S', b"").await;
    }

    /// Run a simple query; returns its messages up to `ReadyForQuery`.
    pub async fn query(&mut self, sql: &str) -> Vec<Msg> {
        let mut b = sql.as_bytes().to_vec();
        b.push(0);
        self.send(b'Q', &b).await;
        self.until_ready().await
    }
}

/// First column of the `DataRow`s among `msgs`, as text.
pub fn first_column(msgs: &[Msg]) -> Vec<Option<String>> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| {
            let len = i32::from_be_bytes(b[2..6].try_into().unwrap());
            (len >= 0).then(|| String::from_utf8_lossy(&b[6..6 + len as usize]).into_owned())
        })
        .collect()
}

/// The tags of `msgs`, as a string (`"1T2DCZ"`).
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

/// SQLSTATE of the first `ErrorResponse` among `msgs`.
pub fn error_code(msgs: &[Msg]) -> Option<String> {
    let (_, body) = msgs.iter().find(|(t, _)| *t == b'E')?;
    field(body, b'C')
}

/// Message text of an `ErrorResponse` body.
pub fn error_text(body: &[u8]) -> String {
    format!(
        "{} {}",
        field(body, b'C').unwrap_or_default(),
        field(body, b'M').unwrap_or_default()
    )
}

fn field(body: &[u8], which: u8) -> Option<String> {
    let mut rest = body;
    while let Some((&tag, after)) = rest.split_first() {
        if tag == 0 {
            break;
        }
        let nul = after.iter().position(|b| *b == 0)?;
        if tag == which {
            return Some(String::from_utf8_lossy(&after[..nul]).into_owned());
        }
        rest = &after[nul + 1..];
    }
    None
}

/// Admin console DSN of a test platform (the admin role's password is the API key).
pub fn admin_dsn(t: &TestPlatform) -> String {
    t.dsn_with("admin", API_KEY, "spg_admin", "sslmode=require")
}
