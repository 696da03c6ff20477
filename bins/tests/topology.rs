//! SPG over several "hosts": every daemon its own process on its own loopback address with its
//! own directory, each started from its own config file — a PostgreSQL for state, two
//! `spg-controlplane`s, two `spg-gateway`s, three `spg-safekeeper`s, one `spg-pageserver` and
//! an S3-protocol server. Under acknowledged inserts through both gateways (one DSN naming
//! both), each component is killed in turn; every acknowledged id must survive, the database
//! must never have two writers, and the DSN never changes.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ChildGuard;
use spg_lifecycle_lib::api::ApiClient;
use spg_lifecycle_lib::testing::TestPostgres;

const SK_KEY: &str = "sk-topology-key-0123456789";
const PS_KEY: &str = "ps-topology-key-0123456789";
const API_KEY: &str = "spg_topology_admin_0123456789";
const GW_KEY: &str = "spggw_topology_gateway_0123456789";
const S3_ACCESS: &str = "spg-topology-access";
const S3_SECRET: &str = "spg-topology-secret";
const BUCKET: &str = "spg-topology";

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A port the OS finds free on `ip`.
fn port_on(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One CA and one server certificate for every host of the topology (what an operator's PKI
/// would issue), in `dir`.
struct Pki {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn pki(dir: &Path, hosts: &[IpAddr]) -> Pki {
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

/// An S3-protocol server (s3s over a directory) on `host`; stops when dropped.
struct S3Server {
    endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn s3_server(root: &Path, host: IpAddr) -> S3Server {
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(S3_ACCESS, S3_SECRET));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
            });
        }
    });
    S3Server { endpoint, task }
}

/// A TOML config file, 0600 (it holds keys).
fn write_config(path: &Path, entries: &[(&str, toml::Value)]) {
    let mut t = toml::Table::new();
    for (k, v) in entries {
        t.insert(k.to_string(), v.clone());
    }
    spg_core::fsmode::write_private(path, toml::to_string(&t).unwrap()).unwrap();
}

fn s(v: impl ToString) -> toml::Value {
    toml::Value::String(v.to_string())
}

/// How a daemon knows it is up.
#[derive(Clone, Copy)]
enum Ready {
    /// It prints "... listening on ..." first.
    Prints,
    /// Its data directory's env file gets `SPG_API_URL` (removed before each start).
    EnvFile,
    /// It accepts TCP connections on this port of its host.
    Accepts(u16),
}

/// One daemon "host": its program, address, directory and config file.
struct Host {
    name: &'static str,
    program: &'static str,
    addr: IpAddr,
    dir: PathBuf,
    config: PathBuf,
    ready: Ready,
    env: Vec<(String, String)>,
    guard: Option<ChildGuard>,
}

impl Host {
    fn start(&mut self) {
        let mut cmd = Command::new(self.program);
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
                self.guard = Some(common::spawn_daemon(cmd, self.dir.clone()));
            }
            Ready::EnvFile => {
                let env = self.dir.join("env");
                let _ = std::fs::remove_file(&env);
                let child = cmd.stdout(std::process::Stdio::null()).spawn().unwrap();
                let mut guard = ChildGuard {
                    child: Some(child),
                    dir: self.dir.clone(),
                };
                common::daemons::wait_for_env(&env, "SPG_API_URL", &mut guard);
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
    fn kill_9(&mut self) {
        let postmasters = common::postgres_processes_under(&self.dir);
        drop(self.guard.take());
        common::kill_9_computes(&postmasters);
        common::detach_mounts_under(&self.dir);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
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
struct Acks {
    ids: Vec<i32>,
    at: Vec<Instant>,
}

impl Acks {
    fn count(&self) -> usize {
        self.ids.len()
    }
    /// The longest time without an acknowledgement from `t` on: what clients saw of a
    /// disruption at `t`.
    fn longest_gap_after(&self, t: Instant) -> Duration {
        let mut last = t;
        let mut gap = Duration::ZERO;
        for a in self.at.iter().copied().filter(|a| *a > t) {
            gap = gap.max(a - last);
            last = a;
        }
        gap
    }
}

/// Insert ids `base + n` one after another through `dsn`, reconnecting and retrying the same
/// id (idempotently) on any error, until `stop`; `pause` holds new inserts back.
fn writer(
    dsn: String,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    base: i32,
    acks: Arc<Mutex<Acks>>,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    idle: Arc<std::sync::atomic::AtomicUsize>,
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
async fn progress(acks: &Mutex<Acks>, more: usize, limit: Duration, what: &str) {
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
fn owner(state: &TestPostgres, cp_urls: &[String]) -> Option<usize> {
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
async fn check_single_writer(sks: &[(String, u16, IpAddr)], ca: &[u8], db_generation: u64) -> u64 {
    let http = common::daemons::https_client(ca);
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

/// Whether phase `n` runs (`SPG_TOPOLOGY_SKIP=1,4` skips phases 1 and 4, for debugging).
fn phase(n: u32) -> bool {
    let skip = std::env::var("SPG_TOPOLOGY_SKIP").unwrap_or_default();
    !skip.split(',').any(|p| p.trim() == n.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_killed_in_turn_under_writes() {
    let root = common::reachable_tempdir();
    let root = root.path().to_path_buf();
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
    let mut state = TestPostgres::start(state_ip).unwrap();
    state.psql("postgres", "CREATE DATABASE spg").unwrap();
    let state_url = state.url("spg");
    // Object storage: an S3-protocol server on its own address.
    let s3 = s3_server(&root.join("s3"), s3_ip).await;
    let aws_env = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), S3_ACCESS.to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), S3_SECRET.to_string()),
        ("AWS_ENDPOINT_URL".to_string(), s3.endpoint.clone()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
    ];
    let object_store = format!("s3://{BUCKET}/objects");
    let tls_entries = |e: &mut Vec<(&str, toml::Value)>| {
        e.push(("tls_cert", s(pki.cert.display())));
        e.push(("tls_key", s(pki.key.display())));
    };

    // Three safekeepers.
    let mut sks = Vec::new();
    let mut sk_list = Vec::new();
    for (i, addr) in sk_ips.iter().enumerate() {
        let name = ["sk1", "sk2", "sk3"][i];
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = port_on(*addr);
        let config = root.join(format!("{name}.toml"));
        let mut e = vec![
            ("name", s(name)),
            ("dir", s(dir.display())),
            ("listen", s(format!("{addr}:{port}"))),
            ("api_key", s(SK_KEY)),
            ("object_store", s(&object_store)),
        ];
        tls_entries(&mut e);
        write_config(&config, &e);
        let mut h = Host {
            name,
            program: env!("CARGO_BIN_EXE_spg-safekeeper"),
            addr: *addr,
            dir,
            config,
            ready: Ready::Prints,
            env: aws_env.clone(),
            guard: None,
        };
        h.start();
        sks.push(h);
        sk_list.push((name.to_string(), port, *addr));
    }
    // The pageserver.
    let ps_port = port_on(ps_ip);
    let mut ps = {
        let dir = root.join("ps");
        std::fs::create_dir_all(&dir).unwrap();
        let config = root.join("ps.toml");
        let mut e = vec![
            ("dir", s(dir.display())),
            ("listen", s(format!("{ps_ip}:{ps_port}"))),
            ("api_key", s(PS_KEY)),
            ("object_store", s(&object_store)),
        ];
        tls_entries(&mut e);
        write_config(&config, &e);
        let mut h = Host {
            name: "pageserver",
            program: env!("CARGO_BIN_EXE_spg-pageserver"),
            addr: ps_ip,
            dir,
            config,
            ready: Ready::Prints,
            env: aws_env.clone(),
            guard: None,
        };
        h.start();
        h
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
        let config = root.join(format!("{name}.toml"));
        let mut e = vec![
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
        tls_entries(&mut e);
        write_config(&config, &e);
        let mut h = Host {
            name,
            program: env!("CARGO_BIN_EXE_spg-controlplane"),
            addr: *addr,
            dir,
            config,
            ready: Ready::EnvFile,
            env: aws_env.clone(),
            guard: None,
        };
        h.start();
        cps.push(h);
    }
    let api = ApiClient::new(&cp_urls.join(","), API_KEY, &ca_pem).unwrap();
    api.create_database("shop").await.unwrap();
    api.create_role("shop", "clerk", "pw-clerk-0123")
        .await
        .unwrap();

    // Two gateways, each asking "its" control plane first.
    let gw_ports: Vec<u16> = gw_ips.iter().map(|a| port_on(*a)).collect();
    let mut gws = Vec::new();
    for (i, addr) in gw_ips.iter().enumerate() {
        let name = ["gw1", "gw2"][i];
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = root.join(format!("{name}.toml"));
        let urls = if i == 0 {
            cp_urls.join(",")
        } else {
            format!("{},{}", cp_urls[1], cp_urls[0])
        };
        let mut e = vec![
            ("data_dir", s(dir.display())),
            ("listen", s(format!("{addr}:{}", gw_ports[i]))),
            ("metrics_listen", s(format!("{addr}:{}", port_on(*addr)))),
            ("control_listen", s(format!("{addr}:{}", port_on(*addr)))),
            ("api_url", s(urls)),
            ("api_key", s(GW_KEY)),
            ("api_ca", s(pki.ca.display())),
            ("wake_timeout", s("30s")),
        ];
        tls_entries(&mut e);
        write_config(&config, &e);
        let mut h = Host {
            name,
            program: env!("CARGO_BIN_EXE_spg-gateway"),
            addr: *addr,
            dir,
            config,
            ready: Ready::Accepts(gw_ports[i]),
            env: vec![],
            guard: None,
        };
        h.start();
        gws.push(h);
    }

    // One DSN naming both gateways; the second writer lists them the other way round.
    let dsn = format!(
        "postgresql://clerk:pw-clerk-0123@{}:{},{}:{}/shop?sslmode=require&connect_timeout=3",
        gw_ips[0], gw_ports[0], gw_ips[1], gw_ports[1]
    );
    let dsn_reversed = format!(
        "postgresql://clerk:pw-clerk-0123@{}:{},{}:{}/shop?sslmode=require&connect_timeout=3",
        gw_ips[1], gw_ports[1], gw_ips[0], gw_ports[0]
    );
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(common::client_tls(&pki.ca, None));

    // The first connections through both gateways race to wake the database through both
    // control planes: one compute starts.
    let (c1, c2) = tokio::join!(
        tokio_postgres::connect(&dsn, tls.clone()),
        tokio_postgres::connect(&dsn_reversed, tls.clone())
    );
    let (c1, conn1) = c1.expect("connect through gw1");
    let (c2, conn2) = c2.expect("connect through gw2");
    tokio::spawn(conn1);
    tokio::spawn(conn2);
    let view = api.database("shop").await.unwrap();
    assert_eq!(
        view.wake_count, 1,
        "racing wakes started one compute: {view:?}"
    );
    let running: Vec<usize> = cps
        .iter()
        .enumerate()
        .filter(|(_, h)| !common::postgres_processes_under(&h.dir).is_empty())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(running.len(), 1, "one control plane runs the compute");
    c1.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    assert_eq!(
        c2.query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    drop((c1, c2));

    let acks = Arc::new(Mutex::new(Acks::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(AtomicBool::new(false));
    let idle = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers = vec![
        writer(
            dsn.clone(),
            tls.clone(),
            0,
            acks.clone(),
            stop.clone(),
            pause.clone(),
            idle.clone(),
        ),
        writer(
            dsn_reversed.clone(),
            tls.clone(),
            1_000_000,
            acks.clone(),
            stop.clone(),
            pause.clone(),
            idle.clone(),
        ),
    ];
    progress(&acks, 20, Duration::from_secs(60), "start").await;
    let mut failovers: Vec<(String, Duration)> = Vec::new();
    let mut failover = |what: &str, t0: Instant, acks: &Mutex<Acks>| {
        let d = acks.lock().unwrap().longest_gap_after(t0);
        eprintln!("topology: {what}: longest time without an acknowledged insert {d:?}");
        failovers.push((what.to_string(), d));
    };

    // 1. The owning control plane.
    if phase(1) {
        let own = owner(&state, &cp_urls).expect("an owner");
        let t0 = Instant::now();
        cps[own].kill_9();
        progress(
            &acks,
            10,
            Duration::from_secs(60),
            "owning control plane killed",
        )
        .await;
        failover("owning control plane kill -9", t0, &acks);
        let new_owner = owner(&state, &cp_urls).expect("an owner");
        assert_ne!(new_owner, own, "the other control plane took over");
        cps[own].start();
    }

    // 2. A gateway.
    if phase(2) {
        let t0 = Instant::now();
        gws[0].kill_9();
        progress(&acks, 10, Duration::from_secs(30), "gateway killed").await;
        failover("gateway kill -9", t0, &acks);
        gws[0].start();
    }

    // 3. A safekeeper: a majority still acknowledges.
    if phase(3) {
        let t0 = Instant::now();
        sks[0].kill_9();
        progress(&acks, 10, Duration::from_secs(30), "safekeeper killed").await;
        failover("safekeeper kill -9", t0, &acks);
        sks[0].start();
    }

    // 4. The owner frozen past its lease: the other takes over; after SIGCONT, the frozen one
    //    does not act (its compute is gone, the record is the new owner's).
    if phase(4) {
        let own = owner(&state, &cp_urls).expect("an owner");
        cps[own].signal(nix::sys::signal::Signal::SIGSTOP);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let other = owner(&state, &cp_urls);
        cps[own].signal(nix::sys::signal::Signal::SIGCONT);
        progress(&acks, 10, Duration::from_secs(60), "owner frozen").await;
        failover("owning control plane SIGSTOP", t0, &acks);
        let after = owner(&state, &cp_urls).expect("an owner");
        assert_eq!(
            other,
            Some(after),
            "ownership moved while frozen and stayed"
        );
        assert_ne!(after, own);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !common::postgres_processes_under(&cps[own].dir).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the thawed control plane kept its compute"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let g_before = api.database("shop").await.unwrap().generation.0;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let view = api.database("shop").await.unwrap();
        assert_eq!(
            view.generation.0, g_before,
            "nothing restarted the database"
        );
        assert_eq!(owner(&state, &cp_urls), Some(after));
    }

    // 5. The pageserver while the database is stopped.
    if phase(5) {
        // No client left to wake it: both writers rest, without connections.
        pause.store(true, Ordering::SeqCst);
        while idle.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A gateway's connection attempt still under way may wake it once more: stop until
        // it stays stopped.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stopped = api.stop_database("shop").await.unwrap();
            assert_eq!(stopped.state.as_str(), "stopped", "{stopped:?}");
            tokio::time::sleep(Duration::from_secs(2)).await;
            if api.database("shop").await.unwrap().state.as_str() == "stopped" {
                break;
            }
            assert!(Instant::now() < deadline, "the database keeps waking");
        }
        ps.kill_9();
        ps.start();
        let view = api.database("shop").await.unwrap();
        assert_eq!(
            view.state.as_str(),
            "stopped",
            "nothing woke it meanwhile: {view:?}"
        );
        let t0 = Instant::now();
        pause.store(false, Ordering::SeqCst);
        progress(
            &acks,
            10,
            Duration::from_secs(60),
            "pageserver killed while stopped",
        )
        .await;
        failover("wake after the pageserver's kill -9", t0, &acks);
    }

    // 6. The state PostgreSQL, restarted.
    if phase(6) {
        let t0 = Instant::now();
        state.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        state.restart().unwrap();
        progress(&acks, 10, Duration::from_secs(90), "state store restarted").await;
        failover("state PostgreSQL kill -9 + restart", t0, &acks);
    }

    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.await;
    }
    // Every acknowledged id is there, read through the same DSN.
    let (c, conn) = tokio_postgres::connect(&dsn, tls.clone()).await.unwrap();
    tokio::spawn(conn);
    let present: std::collections::HashSet<i32> = c
        .query("SELECT id FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let acked = acks.lock().unwrap().ids.clone();
    let missing: Vec<i32> = acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged ids lost: {missing:?} of {}",
        acked.len()
    );
    let generation = api.database("shop").await.unwrap().generation.0;
    let highest = check_single_writer(&sk_list, &ca_pem, generation).await;
    assert_eq!(
        highest, generation,
        "the safekeepers follow the current generation"
    );
    eprintln!(
        "topology: {} acknowledged inserts, all present; generation {generation}; failovers {failovers:?}",
        acked.len()
    );
    drop(c);
    for h in cps.iter_mut().chain(gws.iter_mut()) {
        h.kill_9();
    }
}

/// A daemon refuses a config file with an unknown key, a bad URL or a missing secret, naming
/// the key.
#[test]
fn config_errors_name_the_key() {
    let tmp = common::reachable_tempdir();
    let run = |program: &str, text: &str| -> String {
        let f = tmp.path().join("bad.toml");
        spg_core::fsmode::write_private(&f, text).unwrap();
        let out = Command::new(program)
            .arg("--config")
            .arg(&f)
            .env_remove("SPG_SAFEKEEPER_API_KEY")
            .env_remove("SPG_API_KEY")
            .env_remove("SPG_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{program} accepted {text:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cp = env!("CARGO_BIN_EXE_spg-controlplane");
    let data = tmp.path().join("cp");
    let err = run(
        cp,
        &format!("data_dir = {:?}\nidel_timeout = \"3s\"\n", data.display()),
    );
    assert!(err.contains("unknown key `idel_timeout`"), "{err}");
    let err = run(cp, "state_store = \"mysql://db/spg\"\n");
    assert!(
        err.contains("`state_store`") && err.contains("mysql"),
        "{err}"
    );
    let err = run(cp, "object_store = \"ftp://x/y\"\n");
    assert!(err.contains("`object_store`"), "{err}");
    let err = run(cp, "safekeeper = [\"sk1=https://127.0.0.1:1\"]\n");
    assert!(err.contains("`safekeeper_api_key`"), "{err}");
    let err = run(
        env!("CARGO_BIN_EXE_spg-safekeeper"),
        "name = \"sk1\"\ndir = \"/nonexistent/sk\"\n",
    );
    assert!(err.contains("`api_key`"), "{err}");
    // `spg config check` prints what a file resolves to, secrets masked.
    let f = tmp.path().join("good.toml");
    spg_core::fsmode::write_private(
        &f,
        "name = \"sk1\"\ndir = \"/srv/sk\"\napi_key = \"very-secret-key\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spg"))
        .args(["config", "check", "--daemon", "safekeeper"])
        .arg(&f)
        .env_remove("SPG_SAFEKEEPER_API_KEY")
        .env_remove("SPG_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("\"/srv/sk\"") && text.contains("# file"),
        "{text}"
    );
    assert!(
        !text.contains("very-secret-key") && text.contains("********"),
        "{text}"
    );
}
