//! SPG over several "hosts" on one machine, for tests and benchmarks: every daemon its own
//! process on its own loopback address (127.0.0.x) with its own directory, each started from
//! its own config file — a PostgreSQL for state, two `spg-controlplane`s, two `spg-gateway`s,
//! three `spg-safekeeper`s, one `spg-pageserver` — and an S3-protocol server (s3s) in this
//! process; one CA issued every certificate. Plus writers that count acknowledged inserts
//! through one DSN naming both gateways.
#![allow(missing_docs)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spg_lifecycle_lib::api::ApiClient;
use spg_lifecycle_lib::testing::TestPostgres;
use spg_storage_lib::testing::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};

use super::procs::{
    detach_mounts_under, kill_9_computes, postgres_processes_under, spawn_daemon, ChildGuard,
};

pub const SK_KEY: &str = "sk-topology-key-0123456789";
pub const PS_KEY: &str = "ps-topology-key-0123456789";
pub const API_KEY: &str = "spg_topology_admin_0123456789";
pub const GW_KEY: &str = "spggw_topology_gateway_0123456789";
pub const BUCKET: &str = "spg-topology";

pub fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A port the OS finds free on `ip`.
pub fn port_on(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One CA and one server certificate for every host of the topology (what an operator's PKI
/// would issue), in `dir`.
pub struct Pki {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

pub fn pki(dir: &Path, hosts: &[IpAddr]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "topology CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    names.push("localhost".into());
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "topology");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let out = Pki {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca: dir.join("ca.pem"),
    };
    spg_core::fsmode::write_private(&out.cert, format!("{}{}", cert.pem(), ca_cert.pem())).unwrap();
    spg_core::fsmode::write_private(&out.key, key.serialize_pem()).unwrap();
    std::fs::write(&out.ca, ca_cert.pem()).unwrap();
    out
}

/// A TOML config file, 0600 (it holds keys).
pub fn write_config(path: &Path, entries: &[(&str, toml::Value)]) {
    let mut t = toml::Table::new();
    for (k, v) in entries {
        t.insert(k.to_string(), v.clone());
    }
    spg_core::fsmode::write_private(path, toml::to_string(&t).unwrap()).unwrap();
}

pub fn s(v: impl ToString) -> toml::Value {
    toml::Value::String(v.to_string())
}

/// How a daemon knows it is up.
#[derive(Clone, Copy)]
pub enum Ready {
    /// It prints "... listening on ..." first.
    Prints,
    /// Its data directory's env file gets `SPG_API_URL` (removed before each start).
    EnvFile,
    /// It accepts TCP connections on this port of its host.
    Accepts(u16),
}

/// One daemon "host": its program, address, directory and config file.
pub struct Host {
    pub name: &'static str,
    pub program: PathBuf,
    pub addr: IpAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub ready: Ready,
    pub env: Vec<(String, String)>,
    pub guard: Option<ChildGuard>,
}

impl Host {
    /// Start it (again) and wait until it is up.
    pub fn start(&mut self) {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--config").arg(&self.config);
        for v in [
            "SPG_API_URL",
            "SPG_API_KEY",
            "SPG_API_CA",
            "SPG_GATEWAY_API_KEY",
            "SPG_SAFEKEEPER_API_KEY",
            "SPG_PAGESERVER_API_KEY",
            "SPG_DATA_DIR",
            "SPG_CONFIG",
        ] {
            cmd.env_remove(v);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // Each host's log in a file: under $SPG_TEST_LOG_DIR when set (kept), else in the
        // test's directory.
        let logs = std::env::var_os("SPG_TEST_LOG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.parent().unwrap().join("logs"));
        std::fs::create_dir_all(&logs).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{}.log", self.name)))
            .unwrap();
        cmd.stderr(log);
        cmd.env(
            "SPG_LOG",
            std::env::var("SPG_TEST_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
        );
        match self.ready {
            Ready::Prints => {
                self.guard = Some(spawn_daemon(cmd, self.dir.clone()));
            }
            Ready::EnvFile => {
                let env = self.dir.join("env");
                let _ = std::fs::remove_file(&env);
                let child = cmd.stdout(std::process::Stdio::null()).spawn().unwrap();
                let mut guard = ChildGuard {
                    child: Some(child),
                    dir: self.dir.clone(),
                };
                let _ = wait_for_env(&env, "SPG_API_URL", &mut guard);
                self.guard = Some(guard);
            }
            Ready::Accepts(port) => {
                let child = cmd.stdout(std::process::Stdio::null()).spawn().unwrap();
                let mut guard = ChildGuard {
                    child: Some(child),
                    dir: self.dir.clone(),
                };
                let deadline = Instant::now() + Duration::from_secs(30);
                while std::net::TcpStream::connect((self.addr, port)).is_err() {
                    if let Some(st) = guard.child.as_mut().unwrap().try_wait().unwrap() {
                        panic!("{} exited early with {st}", self.name);
                    }
                    assert!(Instant::now() < deadline, "{} never listened", self.name);
                    std::thread::sleep(Duration::from_millis(50));
                }
                self.guard = Some(guard);
            }
        }
    }

    /// `kill -9`, with every postgres it ran (its host is gone) and its FUSE mounts.
    pub fn kill_9(&mut self) {
        let postmasters = postgres_processes_under(&self.dir);
        drop(self.guard.take());
        kill_9_computes(&postmasters);
        detach_mounts_under(&self.dir);
    }

    /// Send it `sig` (SIGSTOP, SIGCONT).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.guard.as_ref().expect("running").pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// What the writers acknowledged, and when.
#[derive(Default)]
pub struct Acks {
    pub ids: Vec<i32>,
    pub at: Vec<Instant>,
}

impl Acks {
    /// How many.
    pub fn count(&self) -> usize {
        self.ids.len()
    }
    /// The longest time without an acknowledgement from `t` on: what clients saw of a
    /// disruption at `t`.
    pub fn longest_gap_after(&self, t: Instant) -> Duration {
        self.longest_gap_of(t, |_| true)
    }

    /// [`Acks::longest_gap_after`] over the ids `mine` picks (one writer's).
    pub fn longest_gap_of(&self, t: Instant, mine: impl Fn(i32) -> bool) -> Duration {
        let mut last = t;
        let mut gap = Duration::ZERO;
        let picked = self.ids.iter().zip(&self.at).filter(|(id, _)| mine(**id));
        for a in picked.map(|(_, a)| *a).filter(|a| *a > t) {
            gap = gap.max(a - last);
            last = a;
        }
        gap
    }
}

/// Insert ids `base + n` one after another through `dsn`, reconnecting and retrying the same
/// id (idempotently) on any error, until `stop`; `pause` holds new inserts back.
pub fn writer(
    dsn: String,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    base: i32,
    acks: Arc<Mutex<Acks>>,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    idle: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0;
        let mut client: Option<tokio_postgres::Client> = None;
        let mut resting = false;
        while !stop.load(Ordering::SeqCst) {
            if pause.load(Ordering::SeqCst) {
                client = None;
                if !resting {
                    resting = true;
                    idle.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if resting {
                resting = false;
                idle.fetch_sub(1, Ordering::SeqCst);
            }
            let c = match &client {
                Some(c) => c,
                None => {
                    match tokio::time::timeout(
                        Duration::from_secs(40),
                        tokio_postgres::connect(&dsn, tls.clone()),
                    )
                    .await
                    {
                        Ok(Ok((c, conn))) => {
                            tokio::spawn(conn);
                            client = Some(c);
                            continue;
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
            };
            let id = base + n;
            let r = tokio::time::timeout(
                Duration::from_secs(8),
                c.execute(
                    "INSERT INTO t (id) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&id],
                ),
            )
            .await;
            match r {
                Ok(Ok(_)) => {
                    let mut a = acks.lock().unwrap();
                    a.ids.push(id);
                    a.at.push(Instant::now());
                    n += 1;
                }
                _ => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// Wait until `more` acknowledgements beyond the current count arrived.
pub async fn progress(acks: &Mutex<Acks>, more: usize, limit: Duration, what: &str) {
    let target = acks.lock().unwrap().count() + more;
    let deadline = Instant::now() + limit;
    while acks.lock().unwrap().count() < target {
        assert!(
            Instant::now() < deadline,
            "{what}: writes did not resume within {limit:?} ({} acked)",
            acks.lock().unwrap().count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The control plane (by index) whose API URL owns `shop` in the state store, if any.
pub fn owner(state: &TestPostgres, cp_urls: &[String]) -> Option<usize> {
    let out = state
        .psql(
            "spg",
            "SELECT owner_url FROM databases WHERE name = 'shop' \
             AND lease_expires_ms > (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
        )
        .ok()?;
    let url = out.trim();
    cp_urls.iter().position(|u| u == url)
}

/// Every safekeeper's promise and WAL history of `shop`: the histories never fork (a
/// timeline starts at the same LSN wherever it is held) and no promise is newer than the
/// database's generation. Returns the highest promised generation.
pub async fn check_single_writer(
    sks: &[(String, u16, IpAddr)],
    ca: &[u8],
    db_generation: u64,
) -> u64 {
    let http = spg_lifecycle_lib::api::http::client_trusting(ca)
        .unwrap()
        .build()
        .unwrap();
    let mut begins: std::collections::BTreeMap<u64, (String, String)> = Default::default();
    let mut highest = 0;
    for (name, port, addr) in sks {
        let st: serde_json::Value = http
            .get(format!("https://{addr}:{port}/v1/safekeeper/shop"))
            .bearer_auth(SK_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let generation = st["generation"].as_u64().unwrap();
        assert!(
            generation <= db_generation,
            "{name} promised generation {generation}, past the database's {db_generation}"
        );
        highest = highest.max(generation);
        let spans = st["log"]["history"]["spans"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for sp in spans {
            let tli = sp["tli"].as_u64().unwrap();
            let begin = sp["begin"].to_string();
            match begins.get(&tli) {
                Some((other, b)) => assert_eq!(
                    b, &begin,
                    "timeline {tli} begins at {b} on {other} but at {begin} on {name}: two writers"
                ),
                None => {
                    begins.insert(tli, (name.clone(), begin));
                }
            }
        }
    }
    highest
}

/// Wait until the env file at `path` has `key` (panics if the process exits first).
pub fn wait_for_env(path: &Path, key: &str, guard: &mut ChildGuard) -> crate::envfile::EnvFile {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(env)) = crate::envfile::EnvFile::read(path) {
            if env.get(key).is_some() {
                return env;
            }
        }
        if let Some(child) = guard.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("process exited early with {status}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never got {key}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Write the config file of host `name` (`entries` plus the topology's TLS material) and
/// start it, in `root/name`.
#[allow(clippy::too_many_arguments)]
fn launch(
    root: &Path,
    pki: &Pki,
    name: &'static str,
    program: &Path,
    addr: IpAddr,
    ready: Ready,
    env: &[(String, String)],
    mut entries: Vec<(&str, toml::Value)>,
) -> Host {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = root.join(format!("{name}.toml"));
    entries.push(("tls_cert", s(pki.cert.display())));
    entries.push(("tls_key", s(pki.key.display())));
    write_config(&config, &entries);
    let mut h = Host {
        name,
        program: program.to_path_buf(),
        addr,
        dir,
        config,
        ready,
        env: env.to_vec(),
        guard: None,
    };
    h.start();
    h
}

/// The daemons' executables.
#[derive(Debug, Clone)]
pub struct Programs {
    pub controlplane: PathBuf,
    pub gateway: PathBuf,
    pub safekeeper: PathBuf,
    pub pageserver: PathBuf,
}

impl Programs {
    /// The daemons in `dir` (e.g. `target/release`).
    pub fn in_dir(dir: &Path) -> Programs {
        Programs {
            controlplane: dir.join("spg-controlplane"),
            gateway: dir.join("spg-gateway"),
            safekeeper: dir.join("spg-safekeeper"),
            pageserver: dir.join("spg-pageserver"),
        }
    }

    /// Whether every one exists.
    pub fn exist(&self) -> bool {
        [
            &self.controlplane,
            &self.gateway,
            &self.safekeeper,
            &self.pageserver,
        ]
        .iter()
        .all(|p| p.is_file())
    }
}

/// A running topology with database `shop` and role `clerk` (password [`CLERK_PASSWORD`]).
pub struct Topology {
    pub root: PathBuf,
    pub state: TestPostgres,
    pub s3: S3Server,
    pub sks: Vec<Host>,
    pub ps: Host,
    pub cps: Vec<Host>,
    pub gws: Vec<Host>,
    /// Safekeepers as (name, port, address).
    pub sk_list: Vec<(String, u16, IpAddr)>,
    pub cp_urls: Vec<String>,
    /// An admin API client over both control planes.
    pub api: ApiClient,
    pub pki: Pki,
    pub ca_pem: Vec<u8>,
    /// The DSN naming both gateways (gw1 first).
    pub dsn: String,
    /// The same gateways, gw2 first.
    pub dsn_reversed: String,
}

/// The role's password.
pub const CLERK_PASSWORD: &str = "pw-clerk-0123";

impl Topology {
    /// Start everything under `root` (reachable by the compute user), create `shop` and its
    /// role `clerk`.
    pub async fn start(programs: &Programs, root: &Path) -> Topology {
        let root = root.to_path_buf();
        let (state_ip, s3_ip, ps_ip) = (ip(2), ip(3), ip(14));
        let sk_ips = [ip(11), ip(12), ip(13)];
        let cp_ips = [ip(21), ip(22)];
        let gw_ips = [ip(31), ip(32)];
        let mut all: Vec<IpAddr> = vec![state_ip, s3_ip, ps_ip];
        all.extend(sk_ips);
        all.extend(cp_ips);
        all.extend(gw_ips);
        let pki = pki(&root.join("pki"), &all);
        let ca_pem = std::fs::read(&pki.ca).unwrap();

        // State: a real PostgreSQL on its own address.
        let state = TestPostgres::start(state_ip).unwrap();
        state.psql("postgres", "CREATE DATABASE spg").unwrap();
        let state_url = state.url("spg");
        // Object storage: an S3-protocol server on its own address.
        let s3 = S3Server::start(&root.join("s3"), BUCKET, s3_ip)
            .await
            .unwrap();
        let aws_env = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), S3_ACCESS_KEY.to_string()),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                S3_SECRET_KEY.to_string(),
            ),
            ("AWS_ENDPOINT_URL".to_string(), s3.endpoint.clone()),
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ];
        let object_store = format!("s3://{BUCKET}/objects");

        // Three safekeepers.
        let mut sks = Vec::new();
        let mut sk_list = Vec::new();
        for (i, addr) in sk_ips.iter().enumerate() {
            let name = ["sk1", "sk2", "sk3"][i];
            let dir = root.join(name);
            let port = port_on(*addr);
            let e = vec![
                ("name", s(name)),
                ("dir", s(dir.display())),
                ("listen", s(format!("{addr}:{port}"))),
                ("api_key", s(SK_KEY)),
                ("object_store", s(&object_store)),
            ];
            let h = launch(
                &root,
                &pki,
                name,
                &programs.safekeeper,
                *addr,
                Ready::Prints,
                &aws_env,
                e,
            );
            sks.push(h);
            sk_list.push((name.to_string(), port, *addr));
        }
        // The pageserver.
        let ps_port = port_on(ps_ip);
        let ps = {
            let dir = root.join("pageserver");
            let e = vec![
                ("dir", s(dir.display())),
                ("listen", s(format!("{ps_ip}:{ps_port}"))),
                ("api_key", s(PS_KEY)),
                ("object_store", s(&object_store)),
            ];
            launch(
                &root,
                &pki,
                "pageserver",
                &programs.pageserver,
                ps_ip,
                Ready::Prints,
                &aws_env,
                e,
            )
        };
        // Two control planes on the shared state store.
        let cp_ports: Vec<u16> = cp_ips.iter().map(|a| port_on(*a)).collect();
        let cp_urls: Vec<String> = cp_ips
            .iter()
            .zip(&cp_ports)
            .map(|(a, p)| format!("https://{a}:{p}"))
            .collect();
        let mut cps = Vec::new();
        for (i, addr) in cp_ips.iter().enumerate() {
            let name = ["cp1", "cp2"][i];
            let dir = root.join(name);
            let e = vec![
                ("data_dir", s(dir.display())),
                ("api_listen", s(format!("{addr}:{}", cp_ports[i]))),
                ("name", s(name)),
                ("state_store", s(&state_url)),
                ("object_store", s(&object_store)),
                (
                    "safekeeper",
                    toml::Value::Array(
                        sk_list
                            .iter()
                            .map(|(n, p, a)| s(format!("{n}=https://{a}:{p}")))
                            .collect(),
                    ),
                ),
                ("safekeeper_api_key", s(SK_KEY)),
                ("safekeeper_ca", s(pki.ca.display())),
                ("pageserver", s(format!("https://{ps_ip}:{ps_port}"))),
                ("pageserver_api_key", s(PS_KEY)),
                ("pageserver_ca", s(pki.ca.display())),
                ("peer_ca", s(pki.ca.display())),
                ("api_key", s(API_KEY)),
                ("gateway_api_key", s(GW_KEY)),
                ("idle_timeout", s("10m")),
                ("ownership_ttl", s("3s")),
                ("no_cgroups", toml::Value::Boolean(true)),
            ];
            let h = launch(
                &root,
                &pki,
                name,
                &programs.controlplane,
                *addr,
                Ready::EnvFile,
                &aws_env,
                e,
            );
            cps.push(h);
        }
        let api = ApiClient::new(&cp_urls.join(","), API_KEY, &ca_pem).unwrap();
        api.create_database("shop").await.unwrap();
        api.create_role("shop", "clerk", CLERK_PASSWORD)
            .await
            .unwrap();

        // Two gateways, each asking "its" control plane first.
        let gw_ports: Vec<u16> = gw_ips.iter().map(|a| port_on(*a)).collect();
        let mut gws = Vec::new();
        for (i, addr) in gw_ips.iter().enumerate() {
            let name = ["gw1", "gw2"][i];
            let dir = root.join(name);
            let urls = if i == 0 {
                cp_urls.join(",")
            } else {
                format!("{},{}", cp_urls[1], cp_urls[0])
            };
            let e = vec![
                ("data_dir", s(dir.display())),
                ("listen", s(format!("{addr}:{}", gw_ports[i]))),
                ("metrics_listen", s(format!("{addr}:{}", port_on(*addr)))),
                ("control_listen", s(format!("{addr}:{}", port_on(*addr)))),
                ("api_url", s(urls)),
                ("api_key", s(GW_KEY)),
                ("api_ca", s(pki.ca.display())),
                ("wake_timeout", s("30s")),
            ];
            let h = launch(
                &root,
                &pki,
                name,
                &programs.gateway,
                *addr,
                Ready::Accepts(gw_ports[i]),
                &[],
                e,
            );
            gws.push(h);
        }

        // One DSN naming both gateways; the second writer lists them the other way round.
        let dsn_via = |first: usize, second: usize| {
            format!(
                "postgresql://clerk:{CLERK_PASSWORD}@{}:{},{}:{}/shop?sslmode=require&connect_timeout=3",
                gw_ips[first], gw_ports[first], gw_ips[second], gw_ports[second]
            )
        };
        let (dsn, dsn_reversed) = (dsn_via(0, 1), dsn_via(1, 0));

        Topology {
            root,
            state,
            s3,
            sks,
            ps,
            cps,
            gws,
            sk_list,
            cp_urls,
            api,
            pki,
            ca_pem,
            dsn,
            dsn_reversed,
        }
    }

    /// A TLS connector trusting the topology's CA.
    pub fn tls(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        tls_trusting(&self.ca_pem)
    }

    /// The control plane owning `shop` (index into `cps`).
    pub fn owner(&self) -> Option<usize> {
        owner(&self.state, &self.cp_urls)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for h in self
            .cps
            .iter_mut()
            .chain(self.gws.iter_mut())
            .chain(self.sks.iter_mut())
        {
            h.kill_9();
        }
        self.ps.kill_9();
    }
}

/// Writers inserting acknowledged ids through the topology's DSNs.
pub struct Writers {
    pub acks: Arc<Mutex<Acks>>,
    pub stop: Arc<AtomicBool>,
    pub pause: Arc<AtomicBool>,
    pub idle: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// One writer per DSN (ids `i * 1_000_000 + n`).
    pub fn start(dsns: &[&str], tls: &tokio_postgres_rustls::MakeRustlsConnect) -> Writers {
        let acks = Arc::new(Mutex::new(Acks::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicUsize::new(0));
        let tasks = dsns
            .iter()
            .enumerate()
            .map(|(i, d)| {
                writer(
                    d.to_string(),
                    tls.clone(),
                    i as i32 * 1_000_000,
                    acks.clone(),
                    stop.clone(),
                    pause.clone(),
                    idle.clone(),
                )
            })
            .collect();
        Writers {
            acks,
            stop,
            pause,
            idle,
            tasks,
        }
    }

    /// Hold every writer back, without connections, until [`Writers::resume`].
    pub async fn pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        while self.idle.load(Ordering::SeqCst) < self.tasks.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Let them go on.
    pub fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }

    /// Stop them; the ids acknowledged.
    pub async fn finish(self) -> Vec<i32> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let ids = self.acks.lock().unwrap().ids.clone();
        ids
    }
}

/// A tokio-postgres TLS connector trusting only the certificates of `ca_pem`.
pub fn tls_trusting(ca_pem: &[u8]) -> tokio_postgres_rustls::MakeRustlsConnect {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(cfg)
}

/// The ids of `acked` that table `t` does not hold, read through `dsn`.
pub async fn missing_ids(
    dsn: &str,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    acked: &[i32],
) -> Vec<i32> {
    let (c, conn) = tokio_postgres::connect(dsn, tls.clone()).await.unwrap();
    tokio::spawn(conn);
    let present: std::collections::HashSet<i32> = c
        .query("SELECT id FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect()
}
