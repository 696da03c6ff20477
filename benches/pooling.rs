//! Pooling benchmark: `pgbench -S` through the SPG gateway (transaction pooling), through
//! PgBouncer (Debian package, transaction pooling, same pool size) and directly against the same
//! PostgreSQL, with 32, 128 and 512 clients, each with and without `-C` (a new connection per
//! transaction). Rounds alternate between the targets, so a drift in the machine's speed falls
//! on all of them alike. Prints TPS and p50/p99 latency (from pgbench's per-transaction logs,
//! the median round), then per transaction: the pooler's CPU (and its share of a core), the
//! whole machine's CPU, pgbench's CPU, context switches and TCP segments sent (these include
//! the run's logins); and the Gateway/PgBouncer and Gateway/direct ratios, as the median and
//! range of the round-by-round ratios.
//!
//! `-C` authenticates once per transaction, so it runs under both methods all three targets
//! offer, each against the same SCRAM verifier: SCRAM-SHA-256, where libpq derives the key with
//! PBKDF2 (4096 iterations) on every connection whoever the server is, and the `password`
//! method, where the server checks the password (PostgreSQL and PgBouncer run the PBKDF2 on every
//! connection; the gateway remembers what it verified). The benchmark also measures connection
//! churn under SCRAM with a client that derived its key once: connect, SCRAM, `SELECT 1`,
//! disconnect. Then it holds 10 000 idle client connections on the gateway and prints its
//! resident memory (PgBouncer's, same clients, for comparison).
//!
//! `cargo bench -p spg-benches --bench pooling`
//!
//! Environment: `SPG_BENCH_SECONDS` (per run, default 10), `SPG_BENCH_ROUNDS` (runs per figure,
//! the median is shown, default 3), `SPG_BENCH_CLIENTS` (default
//! `32,128,512`), `SPG_BENCH_POOL_SIZE` (default 20), `SPG_BENCH_SCALE` (pgbench scale, default
//! 10), `SPG_BENCH_IDLE` (idle clients, default 10000), `SPG_BENCH_TARGETS` (comma-separated
//! subset of `direct,pgbouncer,gateway,password`), `SPG_BENCH_GATEWAY_THREADS` (tokio workers of
//! the gateway, default 2; 1 is a current-thread runtime; a list such as `2,1` adds a gateway
//! per further entry, measured in the same rounds), `SPG_BENCH_MODES` (subset of
//! `plain,scram,password,failed`: without `-C`, `-C` under each method, and the failed logins one
//! address can sustain), `SPG_BENCH_BASELINE` (this benchmark's binary built at an earlier
//! commit: its gateway runs as target `before` in the same rounds, and the ratios include
//! gateway/before), `SPG_BENCH_KEEP=1` keeps the directory.
//!
//! Clients use plaintext TCP on loopback, except for the `password` method against PostgreSQL
//! and PgBouncer: both tell methods apart by the client's address, and a client of 127.0.0.2
//! still comes from 127.0.0.1, so those runs use their Unix sockets (`local ... password`: a
//! cheaper transport than the gateway's TCP). Each
//! gateway runs in its own process (this program, re-executed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use spg_core::scram::{hmac_sha256, normalize_password, salted_password, ScramVerifier};
use spg_core::{ComputeEndpoint, CoreError, CoreResult, DatabaseName, Generation, RoleName};
use spg_gateway_lib::pool::PoolConfig;
use spg_gateway_lib::{
    AuthSource, GatewayConfig, GatewayDeps, GatewayMetrics, GatewayServer, Waker,
};
use spg_lifecycle_lib::os_user::RunAs;
use spg_lifecycle_lib::pg_bin::PgBinaries;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The gateway's allocator, as in the `spg-gateway` daemon.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROLE: &str = "bench";
const PASSWORD: &str = "bench-Pa55";
const DB: &str = "bench";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills its processes when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---- the gateway child process ------------------------------------------------------------

struct OneRole(ScramVerifier);

#[async_trait]
impl AuthSource for OneRole {
    async fn role_verifier(
        &self,
        db: &DatabaseName,
        role: &RoleName,
    ) -> CoreResult<Option<ScramVerifier>> {
        if db.as_str() != DB {
            return Err(CoreError::DatabaseNotFound(db.to_string()));
        }
        Ok((role.as_str() == ROLE).then(|| self.0.clone()))
    }
}

struct Fixed(std::net::SocketAddr);

#[async_trait]
impl Waker for Fixed {
    async fn wake(&self, _db: &DatabaseName) -> CoreResult<ComputeEndpoint> {
        Ok(ComputeEndpoint {
            addr: self.0,
            generation: Generation(1),
        })
    }
}

fn gateway_child() {
    let pg: std::net::SocketAddr = std::env::var("SPG_BENCH_PG_ADDR").unwrap().parse().unwrap();
    let verifier = ScramVerifier::parse(&std::env::var("SPG_BENCH_VERIFIER").unwrap()).unwrap();
    let size: usize = env_or("SPG_BENCH_POOL_SIZE", 20);
    // One thread: a current-thread runtime (as PgBouncer runs one event loop); more: tokio's
    // work-stealing scheduler with that many workers.
    let threads: usize = env_or("SPG_BENCH_GATEWAY_THREADS", 2);
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(async move {
        let gw = GatewayServer::new(
            GatewayConfig {
                allow_plaintext: true,
                max_client_conn: 20_000,
                pool: PoolConfig {
                    size,
                    ..PoolConfig::default()
                },
                client_auth: std::env::var("SPG_BENCH_CLIENT_AUTH")
                    .ok()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_default(),
                ..GatewayConfig::default()
            },
            GatewayDeps {
                auth: Arc::new(OneRole(verifier)),
                waker: Arc::new(Fixed(pg)),
                lease: None,
            },
            GatewayMetrics::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap().port());
        // As in the `spg-gateway` daemon: the accept loop is a task on the runtime's workers
        // (not the `block_on` thread), so a session it spawns starts on the accepting worker.
        let serve = tokio::spawn(async move {
            gw.serve(listener, tokio_util::sync::CancellationToken::new())
                .await
        });
        let _ = serve.await;
    });
}

// ---- setup ----------------------------------------------------------------------------------

/// A benchmark target: name, host, port, pooler process (for its CPU use).
type Target = (&'static str, &'static str, u16, Option<u32>);

/// Start a gateway child process asking clients for `client_auth`; returns its port and pid.
fn spawn_gateway(
    procs: &mut Procs,
    exe: &Path,
    pg_port: u16,
    verifier: &ScramVerifier,
    pool_size: usize,
    client_auth: &str,
    threads: usize,
) -> (u16, u32) {
    let mut gw = Command::new(exe);
    gw.env("SPG_BENCH_POOL_CHILD", "1")
        .env("SPG_BENCH_PG_ADDR", format!("127.0.0.1:{pg_port}"))
        .env("SPG_BENCH_VERIFIER", verifier.to_postgres_string())
        .env("SPG_BENCH_POOL_SIZE", pool_size.to_string())
        .env("SPG_BENCH_CLIENT_AUTH", client_auth)
        .env("SPG_BENCH_GATEWAY_THREADS", threads.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = gw.spawn().unwrap();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
    }
    let port: u16 = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let pid = child.id();
    procs.0.push(child);
    (port, pid)
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn as_user(cmd: &mut Command, run_as: &RunAs) {
    use std::os::unix::process::CommandExt;
    if run_as.switch_user {
        cmd.uid(run_as.uid).gid(run_as.gid);
    }
}

/// Wait until `port` accepts connections.
fn wait_port(port: u16, what: &str, log: &Path) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time a process has used (user + system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Resident and peak memory of a process, in MB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU and context switches over a run: the pooler's, and the whole machine's (pgbench,
/// PostgreSQL and the pooler share it, so a pooler that costs the others work shows here).
#[derive(Default)]
struct Usage {
    wall: f64,
    pooler_cpu: f64,
    machine_cpu: f64,
    /// pgbench's own CPU (the client side's share of the machine).
    client_cpu: f64,
    switches: f64,
    /// TCP segments sent on the machine (queries, replies and pure ACKs, every hop).
    segments: f64,
}

/// A snapshot of the counters [`Usage`] is the difference of.
struct Counters {
    at: Instant,
    pooler_cpu: f64,
    machine_cpu: f64,
    client_cpu: f64,
    switches: f64,
    segments: f64,
}

/// TCP segments the machine sent so far (`OutSegs` of `/proc/net/snmp`).
fn tcp_out_segments() -> f64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0.0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// CPU time of this process's waited-for children (pgbench runs), in seconds.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid selector.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

impl Usage {
    fn plus(&self, o: &Usage) -> Usage {
        Usage {
            wall: self.wall + o.wall,
            pooler_cpu: self.pooler_cpu + o.pooler_cpu,
            machine_cpu: self.machine_cpu + o.machine_cpu,
            client_cpu: self.client_cpu + o.client_cpu,
            switches: self.switches + o.switches,
            segments: self.segments + o.segments,
        }
    }
}

impl Counters {
    fn now(pooler: Option<u32>) -> Counters {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // Busy time: every field of the `cpu` line but idle and iowait.
        let busy: f64 = stat
            .lines()
            .next()
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .enumerate()
                    .filter(|(i, _)| *i != 3 && *i != 4)
                    .filter_map(|(_, v)| v.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0);
        let switches = stat
            .lines()
            .find_map(|l| l.strip_prefix("ctxt "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        Counters {
            at: Instant::now(),
            pooler_cpu: pooler.map(cpu_seconds).unwrap_or(0.0),
            machine_cpu: busy / hz.max(1.0),
            client_cpu: children_cpu(),
            switches,
            segments: tcp_out_segments(),
        }
    }

    fn since(&self, before: &Counters) -> Usage {
        Usage {
            wall: self.at.duration_since(before.at).as_secs_f64(),
            pooler_cpu: self.pooler_cpu - before.pooler_cpu,
            machine_cpu: self.machine_cpu - before.machine_cpu,
            client_cpu: self.client_cpu - before.client_cpu,
            switches: self.switches - before.switches,
            segments: self.segments - before.segments,
        }
    }
}

/// One pgbench run and what it used.
struct Measured {
    run: RunResult,
    used: Usage,
}

// ---- pgbench --------------------------------------------------------------------------------

struct RunResult {
    tps: f64,
    /// Transactions pgbench completed.
    txns: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: bool,
}

#[allow(clippy::too_many_arguments)]
fn pgbench(
    bins: &PgBinaries,
    dir: &Path,
    tag: &str,
    host: &str,
    port: u16,
    clients: usize,
    seconds: u64,
    reconnect: bool,
) -> RunResult {
    let logs = dir.join(format!("log-{tag}"));
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    let mut cmd = Command::new(bins.exe("pgbench"));
    cmd.args(["-S", "-n", "-j", "2", "-l"])
        .args(["-c", &clients.to_string(), "-T", &seconds.to_string()])
        .args(["-h", host, "-p", &port.to_string(), "-U", ROLE])
        .arg(format!("--log-prefix={}/tx", logs.display()))
        .arg(DB)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .current_dir(&logs);
    if reconnect {
        cmd.arg("-C");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let txns = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|l| l.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let mut lat: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(&logs).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        lat.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2))
                .filter_map(|v| v.parse::<u64>().ok()),
        );
    }
    let _ = std::fs::remove_dir_all(&logs);
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let failed = !out.status.success();
    if failed {
        eprintln!(
            "pgbench {tag} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    RunResult {
        tps,
        txns,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        failed,
    }
}

// ---- idle clients ---------------------------------------------------------------------------

async fn send(s: &mut tokio::net::TcpStream, tag: u8, body: &[u8]) -> std::io::Result<()> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    s.write_all(&m).await
}

async fn recv(s: &mut tokio::net::TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await?;
    Ok((head[0], body))
}

/// Log in (SCRAM with a precomputed ClientKey) and return the idle connection.
async fn idle_client(
    port: u16,
    key: spg_core::scram::Key,
    verifier: ScramVerifier,
) -> std::io::Result<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let startup =
        spg_gateway_lib::proto::startup::encode_startup(&[("user", ROLE), ("database", DB)]);
    s.write_all(&startup).await?;
    let mut scram = spg_core::scram::client::ScramClient::with_client_key(
        spg_core::scram::ClientKey::new(key),
        verifier,
    );
    loop {
        let (tag, body) = recv(&mut s).await?;
        match (
            tag,
            body.get(..4)
                .map(|c| u32::from_be_bytes(c.try_into().unwrap())),
        ) {
            (b'R', Some(10)) => {
                let (mech, data) = scram.client_first();
                let mut b = mech.as_bytes().to_vec();
                b.push(0);
                b.extend_from_slice(&(data.len() as i32).to_be_bytes());
                b.extend_from_slice(&data);
                send(&mut s, b'p', &b).await?;
            }
            (b'R', Some(11)) => {
                let reply = scram
                    .server_first(&body[4..])
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                send(&mut s, b'p', &reply).await?;
            }
            (b'R', Some(12)) => scram
                .server_final(&body[4..])
                .map_err(|e| std::io::Error::other(e.to_string()))?,
            (b'E', _) => return Err(std::io::Error::other("login refused")),
            (b'Z', _) => return Ok(s),
            _ => {}
        }
    }
}

async fn select_one(s: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    send(s, b'Q', b"SELECT 1\0").await?;
    loop {
        let (tag, _) = recv(s).await?;
        if tag == b'E' {
            return Err(std::io::Error::other("query failed"));
        }
        if tag == b'Z' {
            return Ok(());
        }
    }
}

/// Connection churn without the client's key derivation: `tasks` clients each connect, log in
/// (SCRAM with a precomputed ClientKey), run `SELECT 1` and disconnect, for `secs` seconds.
/// Returns connections per second.
async fn churn(port: u16, tasks: usize, secs: u64, verifier: &ScramVerifier) -> f64 {
    let salted = salted_password(
        &normalize_password(PASSWORD),
        &verifier.salt,
        verifier.iterations,
    );
    let key = hmac_sha256(&salted, &[b"Client Key"]);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let v = verifier.clone();
        handles.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                if let Ok(mut s) = idle_client(port, key, v.clone()).await {
                    if select_one(&mut s).await.is_ok() {
                        done += 1;
                    }
                    let _ = send(&mut s, b'X', b"").await;
                }
            }
            done
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap_or(0);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Open `n` idle clients on `port`; returns them and how long it took.
async fn open_idle(port: u16, n: usize, verifier: &ScramVerifier) -> Vec<tokio::net::TcpStream> {
    let salted = salted_password(
        &normalize_password(PASSWORD),
        &verifier.salt,
        verifier.iterations,
    );
    let key = hmac_sha256(&salted, &[b"Client Key"]);
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let sem = Arc::clone(&sem);
        let v = verifier.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            idle_client(port, key, v).await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        match t.await.unwrap() {
            Ok(s) => out.push(s),
            Err(e) => {
                eprintln!("idle client failed: {e}");
            }
        }
    }
    out
}

/// Wrong passwords (`password` method) from 127.0.0.2, 16 at a time, for `seconds`: how many
/// were answered `28P01` (checked), `53300` (refused unchecked), anything else.
async fn failed_logins(port: u16, seconds: u64) -> (usize, usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..16 {
        tasks.push(tokio::spawn(async move {
            let (mut checked, mut refused, mut other) = (0, 0, 0);
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                match wrong_password(port, &format!("wrong-{w}-{i}"))
                    .await
                    .as_deref()
                {
                    Some("28P01") => checked += 1,
                    Some("53300") => refused += 1,
                    _ => other += 1,
                }
            }
            (checked, refused, other)
        }));
    }
    let mut sum = (0, 0, 0);
    for t in tasks {
        let (a, b, c) = t.await.unwrap();
        sum = (sum.0 + a, sum.1 + b, sum.2 + c);
    }
    sum
}

/// One `password`-method login from 127.0.0.2 with `password`; the SQLSTATE it ended with.
async fn wrong_password(port: u16, password: &str) -> Option<String> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(([127, 0, 0, 2], 0).into()).ok()?;
    let mut s = sock.connect(([127, 0, 0, 1], port).into()).await.ok()?;
    let startup =
        spg_gateway_lib::proto::startup::encode_startup(&[("user", ROLE), ("database", DB)]);
    s.write_all(&startup).await.ok()?;
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.checked_sub(4)?];
        s.read_exact(&mut body).await.ok()?;
        match head[0] {
            b'R' if body.starts_with(&3u32.to_be_bytes()) => {
                let mut m = vec![b'p'];
                m.extend_from_slice(&((password.len() + 5) as u32).to_be_bytes());
                m.extend_from_slice(password.as_bytes());
                m.push(0);
                s.write_all(&m).await.ok()?;
            }
            b'E' => {
                let code = body
                    .split(|b| *b == 0)
                    .find_map(|f| f.strip_prefix(b"C"))
                    .map(|c| String::from_utf8_lossy(c).into_owned());
                return code;
            }
            b'Z' => return Some("ok".into()),
            _ => {}
        }
    }
}

/// Print each gateway's ratios to PgBouncer and to direct PostgreSQL, from runs made back to
/// back (round by round): their median, and the range.
fn print_ratios(label: &str, row: &[(&str, Vec<f64>)]) {
    let ratio = |of: &str, to: &str| -> Option<String> {
        let a = &row.iter().find(|(n, _)| *n == of)?.1;
        let b = &row.iter().find(|(n, _)| *n == to)?.1;
        let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y.max(1e-9)).collect();
        r.sort_by(f64::total_cmp);
        Some(format!(
            "{of}/{to} {:.2}x ({:.2}-{:.2})",
            r.get(r.len() / 2)?,
            r.first()?,
            r.last()?
        ))
    };
    let parts: Vec<String> = row
        .iter()
        .filter(|(n, _)| n.starts_with("gateway"))
        .flat_map(|(g, _)| ["before", "pgbouncer", "direct"].map(|b| ratio(g, b)))
        .flatten()
        .collect();
    if !parts.is_empty() {
        println!("{label}: {}", parts.join(", "));
    }
}

fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() {
    if std::env::var_os("SPG_BENCH_POOL_CHILD").is_some() {
        gateway_child();
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `cargo bench -- --list`
    }
    raise_fd_limit();
    let seconds: u64 = env_or("SPG_BENCH_SECONDS", 10);
    let pool_size: usize = env_or("SPG_BENCH_POOL_SIZE", 20);
    let scale: u32 = env_or("SPG_BENCH_SCALE", 10);
    let idle_n: usize = env_or("SPG_BENCH_IDLE", 10_000);
    let rounds: usize = env_or("SPG_BENCH_ROUNDS", 3).max(1);
    let client_counts: Vec<usize> = std::env::var("SPG_BENCH_CLIENTS")
        .unwrap_or_else(|_| "32,128,512".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let bins = PgBinaries::locate(None).expect("PostgreSQL binaries");
    let pgbouncer = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("pgbouncer is missing: apt-get install pgbouncer");
    let run_as = RunAs::detect().unwrap();
    let dir = PathBuf::from(format!("/tmp/spg-bench-pool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    run_as.chown(&dir).unwrap();
    let mut procs = Procs(Vec::new());

    // PostgreSQL: one instance all three targets use, with room for 512 direct clients.
    let data = dir.join("data");
    let mut initdb = Command::new(bins.exe("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .args(["-E", "UTF8", "--no-sync", "--locale=C"])
        .env("LC_ALL", "C");
    as_user(&mut initdb, &run_as);
    run_ok(&mut initdb, "initdb");
    // Connections over the Unix socket use the `password` method for the benchmark's role
    // (against the same SCRAM verifier): the -C runs compare every target under both methods.
    let hba = data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all {ROLE} password\n{rules}")).unwrap();
    let pg_port = free_port();
    let pg_log = dir.join("postgres.log");
    let mut pg = Command::new(bins.exe("postgres"));
    pg.arg("-D")
        .arg(&data)
        .args(["-p", &pg_port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .args(["-c", "max_connections=700", "-c", "shared_buffers=256MB"])
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .env("LC_ALL", "C")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&pg_log).unwrap());
    as_user(&mut pg, &run_as);
    procs.0.push(pg.spawn().unwrap());
    wait_port(pg_port, "postgres", &pg_log);
    std::thread::sleep(Duration::from_millis(300));
    let verifier = ScramVerifier::from_password(PASSWORD);
    let mut psql = Command::new(bins.exe("psql"));
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&dir)
        .args([
            "-p",
            &pg_port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .arg("-c")
        .arg(format!(
            "CREATE ROLE {ROLE} LOGIN PASSWORD '{}'",
            verifier.to_postgres_string()
        ))
        .arg("-c")
        .arg(format!("CREATE DATABASE {DB} OWNER {ROLE}"));
    run_ok(&mut psql, "creating the role and database");
    let mut init = Command::new(bins.exe("pgbench"));
    init.args(["-i", "-q", "-s", &scale.to_string(), "-h", "127.0.0.1"])
        .args(["-p", &pg_port.to_string(), "-U", ROLE, DB])
        .env("PGPASSWORD", PASSWORD);
    run_ok(&mut init, "pgbench -i");

    // The gateway, in its own process; a second one asks clients for the `password` method.
    // `SPG_BENCH_GATEWAY_THREADS` may list several runtimes (`2,1`): the first is `gateway`,
    // the others `gateway-<n>t`, all measured in the same rounds.
    let mut thread_counts: Vec<usize> = std::env::var("SPG_BENCH_GATEWAY_THREADS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    if thread_counts.is_empty() {
        thread_counts.push(2);
    }
    let first_threads = thread_counts[0];
    let me = std::env::current_exe().unwrap();
    let mut gateways: Vec<Target> = Vec::new();
    for (i, &t) in thread_counts.iter().enumerate() {
        let (port, pid) = spawn_gateway(&mut procs, &me, pg_port, &verifier, pool_size, "scram", t);
        let name: &'static str = match i {
            0 => "gateway",
            _ => Box::leak(format!("gateway-{t}t").into_boxed_str()),
        };
        gateways.push((name, "127.0.0.1", port, Some(pid)));
    }
    let (_, _, gw_port, gw_pid) = gateways[0];
    let gw_pid = gw_pid.expect("a gateway process");
    let (gw_pw_port, gw_pw_pid) = spawn_gateway(
        &mut procs,
        &me,
        pg_port,
        &verifier,
        pool_size,
        "password",
        first_threads,
    );
    // `SPG_BENCH_BASELINE`: this benchmark built at an earlier commit; its gateway (the same
    // child protocol) runs as target `before`, in the same rounds, for the cost of a change.
    let baseline = std::env::var_os("SPG_BENCH_BASELINE").map(PathBuf::from);
    let before: Option<(Target, Target)> = baseline.as_ref().map(|exe| {
        let (port, pid) = spawn_gateway(
            &mut procs,
            exe,
            pg_port,
            &verifier,
            pool_size,
            "scram",
            first_threads,
        );
        let (pw_port, pw_pid) = spawn_gateway(
            &mut procs,
            exe,
            pg_port,
            &verifier,
            pool_size,
            "password",
            first_threads,
        );
        (
            ("before", "127.0.0.1", port, Some(pid)),
            ("before", "127.0.0.1", pw_port, Some(pw_pid)),
        )
    });

    // PgBouncer, transaction pooling, the same pool size.
    let pgb_port = free_port();
    let ini = dir.join("pgbouncer.ini");
    // The role's SCRAM verifier, the same PostgreSQL holds: PgBouncer authenticates clients
    // with it and logs in to PostgreSQL with the client's key (like the gateway).
    std::fs::write(
        dir.join("userlist.txt"),
        format!("\"{ROLE}\" \"{}\"\n", verifier.to_postgres_string()),
    )
    .unwrap();
    std::fs::write(
        &ini,
        format!(
            "[databases]\n{DB} = host=127.0.0.1 port={pg_port} dbname={DB}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {pgb_port}\n\
             unix_socket_dir = {}\nauth_type = hba\nauth_hba_file = {}\nauth_file = {}\n\
             pool_mode = transaction\n\
             default_pool_size = {pool_size}\nmax_client_conn = 20000\nmax_db_connections = 0\n\
             logfile = {}\npidfile =\nlog_connections = 0\nlog_disconnections = 0\n",
            dir.display(),
            dir.join("pgbouncer_hba.conf").display(),
            dir.join("userlist.txt").display(),
            dir.join("pgbouncer.log").display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("pgbouncer_hba.conf"),
        "local all all password\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    run_as.chown_tree(&dir).unwrap();
    let mut pgb = Command::new(&pgbouncer);
    pgb.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
    as_user(&mut pgb, &run_as);
    let pgb_child = pgb.spawn().unwrap();
    let pgb_pid = pgb_child.id();
    procs.0.push(pgb_child);
    wait_port(pgb_port, "pgbouncer", &dir.join("pgbouncer.log"));

    println!(
        "pooling benchmark: pgbench -S, scale {scale}, {seconds} s per run, median of {rounds} \
         runs, pool size {pool_size} (gateway and PgBouncer), PostgreSQL {} max_connections \
         700, {} cores",
        bins.major(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let only = std::env::var("SPG_BENCH_TARGETS").unwrap_or_default();
    let chosen = |n: &str| only.is_empty() || only.split(',').any(|o| o == n);
    let scram_targets: Vec<Target> = [
        ("direct", "127.0.0.1", pg_port, None),
        ("pgbouncer", "127.0.0.1", pgb_port, Some(pgb_pid)),
    ]
    .into_iter()
    .chain(gateways)
    .chain(before.map(|b| b.0))
    // `gateway-1t` is chosen with `gateway`.
    .filter(|t| chosen(t.0.split('-').next().unwrap_or(t.0)))
    .collect();
    // The same three with the `password` method (only -C differs: it authenticates per
    // transaction).
    let socket_dir: &'static str = Box::leak(dir.display().to_string().into_boxed_str());
    let password_targets: Vec<Target> = [
        ("direct", socket_dir, pg_port, None),
        ("pgbouncer", socket_dir, pgb_port, Some(pgb_pid)),
        ("gateway", "127.0.0.1", gw_pw_port, Some(gw_pw_pid)),
    ]
    .into_iter()
    .chain(before.map(|b| b.1))
    .filter(|t| chosen(t.0) && chosen("password"))
    .collect();
    // Warm up every target (caches, pools).
    for &(name, host, port, _) in scram_targets.iter().chain(&password_targets) {
        pgbench(
            &bins,
            &dir,
            &format!("warm-{name}"),
            host,
            port,
            32,
            3,
            false,
        );
    }
    println!(
        "{:<12} {:>7} {:<11} {:>10} {:>8} {:>8} {:>17} {:>10} {:>10} {:>6} {:>6}",
        "mode",
        "clients",
        "target",
        "tps",
        "p50 ms",
        "p99 ms",
        "pooler cpu, /txn",
        "machine us",
        "pgbench us",
        "cs/txn",
        "segs"
    );
    let mut summary = Vec::new();
    let modes = [
        ("", false, &scram_targets),
        ("-C scram", true, &scram_targets),
        ("-C password", true, &password_targets),
    ];
    // `SPG_BENCH_MODES`: any of `plain,scram,password` (default all).
    let only_modes = std::env::var("SPG_BENCH_MODES").unwrap_or_default();
    for (mode, reconnect, targets) in modes {
        let key = mode
            .rsplit(' ')
            .next()
            .filter(|m| !m.is_empty())
            .unwrap_or("plain");
        if !only_modes.is_empty() && !only_modes.split(',').any(|m| m == key) {
            continue;
        }
        for &clients in &client_counts {
            // Rounds alternate between the targets, so a drift in the machine's speed (it is
            // a shared VM) falls on all of them alike.
            let mut runs: Vec<Vec<Measured>> = targets.iter().map(|_| Vec::new()).collect();
            for i in 0..rounds {
                for (t, &(name, host, port, pooler)) in targets.iter().enumerate() {
                    let before = Counters::now(pooler);
                    let r = pgbench(
                        &bins,
                        &dir,
                        &format!("{name}-{clients}-{reconnect}-{i}"),
                        host,
                        port,
                        clients,
                        seconds,
                        reconnect,
                    );
                    let used = Counters::now(pooler).since(&before);
                    runs[t].push(Measured { run: r, used });
                }
            }
            let mut row = Vec::new();
            for (&(name, ..), mut runs) in targets.iter().zip(runs) {
                let by_round: Vec<f64> = runs.iter().map(|m| m.run.tps).collect();
                let txns: f64 = runs.iter().map(|m| m.run.txns).sum();
                let used = runs.iter().fold(Usage::default(), |a, m| a.plus(&m.used));
                runs.sort_by(|a, b| a.run.tps.total_cmp(&b.run.tps));
                let r = runs.swap_remove(runs.len() / 2).run;
                let per_txn = |x: f64| 1e6 * x / txns.max(1.0);
                let pooler_cpu = if used.pooler_cpu > 0.0 {
                    format!(
                        "{:.0}% {:.1} us",
                        100.0 * used.pooler_cpu / used.wall.max(1e-9),
                        per_txn(used.pooler_cpu)
                    )
                } else {
                    "-".into()
                };
                println!(
                    "{:<12} {:>7} {:<11} {:>10.1} {:>8.2} {:>8.2} {:>17} {:>10.1} {:>10.1} {:>6.2} {:>6.2}{}",
                    mode,
                    clients,
                    name,
                    r.tps,
                    r.p50_ms,
                    r.p99_ms,
                    pooler_cpu,
                    per_txn(used.machine_cpu),
                    per_txn(used.client_cpu),
                    used.switches / txns.max(1.0),
                    used.segments / txns.max(1.0),
                    if r.failed {
                        "  (pgbench reported errors)"
                    } else {
                        ""
                    }
                );
                row.push((name, by_round));
            }
            summary.push((mode, clients, row));
        }
    }
    println!();
    for (mode, clients, row) in &summary {
        print_ratios(&format!("{mode:<12}{clients:>4} clients"), row);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Connection churn as -C, minus the client's PBKDF2 (which bounds pgbench -C above).
    println!();
    let mut churn_summary = Vec::new();
    for &clients in &client_counts {
        let tasks = clients.min(128);
        let mut row = Vec::new();
        for &(name, _, port, _) in &scram_targets {
            let rate = rt.block_on(churn(port, tasks, seconds, &verifier));
            row.push((name, vec![rate]));
            println!(
                "churn {tasks:>4} clients {name:<10} {rate:>9.1} connections/s \
                 (connect + SCRAM + SELECT 1 + close)"
            );
        }
        churn_summary.push((tasks, row));
        if tasks >= 128 {
            break;
        }
    }
    for (tasks, row) in &churn_summary {
        print_ratios(&format!("churn {tasks:>4} clients"), row);
    }

    // Failed logins one address can sustain against the `password`-method gateways (from
    // 127.0.0.2, last: it ends locked out), each attempt a wrong password.
    if only_modes.is_empty() || only_modes.split(',').any(|m| m == "failed") {
        println!();
        let mut attacked = vec![("gateway", gw_pw_port, gw_pw_pid)];
        if let Some(b) = &before {
            attacked.push(("before", b.1 .2, b.1 .3.expect("a process")));
        }
        for (name, port, pid) in attacked {
            let cpu0 = cpu_seconds(pid);
            let t0 = Instant::now();
            let (checked, refused, other) = rt.block_on(failed_logins(port, seconds));
            let took = t0.elapsed().as_secs_f64();
            let cpu = cpu_seconds(pid) - cpu0;
            let answered = checked + refused;
            println!(
                "failed logins from one address, {name:<9}: {:>8.1} answered/s ({checked} \
                 passwords checked, {refused} refused unchecked, {other} other), gateway CPU \
                 {:.0} us per attempt, {:.2} passwords checked/s",
                answered as f64 / took,
                1e6 * cpu / (answered.max(1) as f64),
                checked as f64 / took
            );
        }
    }

    // Idle clients: memory held for them.
    rt.block_on(async {
        for (name, port, pid) in [("gateway", gw_port, gw_pid), ("pgbouncer", pgb_port, pgb_pid)] {
            let (before, _) = rss_mb(pid);
            let t0 = Instant::now();
            let mut clients = open_idle(port, idle_n, &verifier).await;
            let opened = t0.elapsed();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (rss, peak) = rss_mb(pid);
            let mut ok = 0;
            for c in clients.iter_mut().step_by((idle_n / 10).max(1)) {
                if select_one(c).await.is_ok() {
                    ok += 1;
                }
            }
            println!(
                "{name}: {} idle clients open (in {:.1} s): RSS {rss:.1} MB (before {before:.1} MB, \
                 peak {peak:.1} MB); {ok} sampled clients ran a query",
                clients.len(),
                opened.as_secs_f64()
            );
            drop(clients);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    drop(procs);
    if std::env::var_os("SPG_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
