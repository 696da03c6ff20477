//! Limits at the gateway's door, attacked from other loopback addresses (127.0.0.2, ...): a
//! password guesser is throttled and then locked out without ever waking its target, while a
//! correct client elsewhere logs in as usual (also as the attacked role); thousands of idle
//! sockets that never log in leave room for clients that do.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use spg_core::{ComputeState, DatabaseName, RoleName};
use spg_lifecycle_lib::RoleSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP connection to the gateway from `src` (a loopback address of its own).
async fn connect_from(src: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(src.parse::<IpAddr>().unwrap(), 0))?;
    s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

async fn read_msg(s: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.checked_sub(4)?];
    s.read_exact(&mut body).await.ok()?;
    Some((head[0], body))
}

fn sqlstate(body: &[u8]) -> String {
    let mut rest = body;
    while let Some((&f, after)) = rest.split_first() {
        let nul = after.iter().position(|b| *b == 0).unwrap_or(after.len());
        if f == b'C' {
            return String::from_utf8_lossy(&after[..nul]).into_owned();
        }
        rest = after.get(nul + 1..).unwrap_or(&[]);
    }
    String::new()
}

/// A plaintext login by the `password` method from `src`: `Ok` when it got in, else the
/// SQLSTATE it was answered with (empty when the connection was just closed).
async fn password_login(
    src: &str,
    port: u16,
    db: &str,
    user: &str,
    password: &str,
) -> Result<(), String> {
    let mut s = connect_from(src, port).await.map_err(|e| e.to_string())?;
    let startup =
        spg_gateway_lib::proto::startup::encode_startup(&[("user", user), ("database", db)]);
    s.write_all(&startup).await.map_err(|e| e.to_string())?;
    loop {
        let Some((tag, body)) = read_msg(&mut s).await else {
            return Err(String::new());
        };
        match tag {
            b'E' => return Err(sqlstate(&body)),
            b'R' if body.starts_with(&3u32.to_be_bytes()) => {
                let mut m = vec![b'p'];
                m.extend_from_slice(&((password.len() + 5) as u32).to_be_bytes());
                m.extend_from_slice(password.as_bytes());
                m.push(0);
                s.write_all(&m).await.map_err(|e| e.to_string())?;
            }
            b'Z' => return Ok(()),
            _ => {}
        }
    }
}

/// The value of one exported metric (a line `name{labels} value`).
async fn metric(t: &TestPlatform, series: &str) -> f64 {
    let url = format!("http://{}/metrics", t.p().metrics_addr.unwrap());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_wrong_passwords_are_throttled_and_wake_nothing() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.allow_plaintext = true;
        c.client_auth = spg_gateway_lib::ClientAuth::Password;
        c.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let cp = t.p().control_plane.clone();
    let vault = DatabaseName::new("vault").unwrap();
    cp.create_database(vault.clone()).await.unwrap();
    cp.create_role(
        &vault,
        RoleName::new("keeper").unwrap(),
        RoleSecret::Password("the-right-one".into()),
    )
    .await
    .unwrap();
    let port = t.gateway_port();
    // Normal time for a correct login (appdb is awake), before the attack.
    password_login("127.0.0.1", port, DB, ROLE, PASSWORD)
        .await
        .unwrap();
    let t0 = Instant::now();
    password_login("127.0.0.1", port, DB, ROLE, PASSWORD)
        .await
        .unwrap();
    let normal = t0.elapsed();

    // 2 000 guesses from 127.0.0.2, 16 at a time, while a correct client logs in from
    // 127.0.0.1 again and again.
    let attack = tokio::spawn(async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = Vec::new();
        for i in 0..2000 {
            let permit = Arc::clone(&sem).acquire_owned().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let _p = permit;
                password_login("127.0.0.2", port, "vault", "keeper", &format!("guess-{i}"))
                    .await
                    .unwrap_err()
            }));
        }
        let mut codes = std::collections::BTreeMap::<String, usize>::new();
        for t in tasks {
            *codes.entry(t.await.unwrap()).or_default() += 1;
        }
        codes
    });
    let mut slowest = Duration::ZERO;
    while !attack.is_finished() {
        let t0 = Instant::now();
        password_login("127.0.0.1", port, DB, ROLE, PASSWORD)
            .await
            .expect("a correct client gets in during the attack");
        slowest = slowest.max(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let codes = attack.await.unwrap();
    eprintln!("attack answers: {codes:?}; correct logins: normal {normal:?}, slowest {slowest:?}");
    // Throttled: a few dozen wrong passwords were checked, the rest refused unchecked.
    let checked = codes.get("28P01").copied().unwrap_or(0);
    let refused = codes.get("53300").copied().unwrap_or(0);
    assert_eq!(checked + refused, 2000, "{codes:?}");
    // Only the attempts before the lockout (20) are checked, and those already being verified
    // when it came (at most one per CPU).
    let verifying = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert!(
        checked <= 20 + verifying,
        "only the attempts before the lockout are checked: {codes:?}"
    );
    assert!(
        slowest < normal * 20 + Duration::from_millis(500),
        "a correct client elsewhere logs in as usual: normal {normal:?}, slowest {slowest:?}"
    );
    // Nothing was woken for the attacker.
    let st = cp.database(&vault).await.unwrap();
    assert_eq!(st.record.state, ComputeState::Stopped);
    assert_eq!(st.record.wake_count, 0);
    // The attacked role itself is still open to an address that has not failed.
    password_login("127.0.0.1", port, "vault", "keeper", "the-right-one")
        .await
        .expect("the role's lockout spares clean addresses");
    // ... and closed to the guesser, even with the right password.
    assert_eq!(
        password_login("127.0.0.2", port, "vault", "keeper", "the-right-one").await,
        Err("53300".to_string())
    );
    let refused = metric(&t, "spg_gateway_refused_total{reason=\"address_locked\"}").await;
    assert!(refused >= 1_900.0, "refusals counted: {refused}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_sockets_do_not_keep_clients_out() {
    spg::raise_fd_limit();
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.login_limits.max_preauth = 1_000;
        c.login_limits.max_preauth_per_address = 128;
        c.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let port = t.gateway_port();
    // One address opening 300 sockets gets 128 pending logins; forty more addresses with 117
    // each fill the gateway's 1 000, so the oldest are closed as new ones come.
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = connect_from("127.0.0.3", port).await {
            idle.push(s);
        }
    }
    for a in 0..40 {
        let src = format!("127.0.1.{}", a + 10);
        for _ in 0..117 {
            if let Ok(s) = connect_from(&src, port).await {
                idle.push(s);
            }
        }
    }
    assert!(idle.len() >= 4_900, "sockets opened: {}", idle.len());
    let gw = t.p().gateway.as_ref().unwrap().clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        gw.pending_logins() <= 1_000,
        "pending logins {}",
        gw.pending_logins()
    );
    // Authenticated clients still connect, over TLS with SCRAM, in their usual time.
    for _ in 0..5 {
        let t0 = Instant::now();
        let c = tokio::time::timeout(Duration::from_secs(10), tokio_pg(&t, &t.dsn))
            .await
            .expect("connected in time")
            .expect("connected");
        let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        eprintln!("login with 5 000 idle sockets around: {:?}", t0.elapsed());
    }
    // The idle ones were refused (past their address's share) or closed to make room.
    let per_address = metric(
        &t,
        "spg_gateway_refused_total{reason=\"preauth_per_address\"}",
    )
    .await;
    let evicted = metric(&t, "spg_gateway_refused_total{reason=\"preauth_evicted\"}").await;
    assert!(per_address >= 150.0, "refused per address: {per_address}");
    assert!(evicted >= 1_000.0, "closed to make room: {evicted}");
    drop(idle);
    t.shutdown().await;
}
