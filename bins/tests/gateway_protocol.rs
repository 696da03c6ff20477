//! The gateway against malformed, hostile and unusual clients: each gets an error or a clean
//! close, and the gateway keeps serving everyone else.

mod common;

use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

fn startup(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = ((3u32 << 16) | minor as u32).to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// What the gateway answered: the first message's tag and body, or `None` on a close.
async fn answer<S: AsyncRead + Unpin>(s: &mut S) -> Option<(u8, Vec<u8>)> {
    let read = async {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        s.read_exact(&mut body).await.ok()?;
        Some((head[0], body))
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the gateway neither answered nor closed")
}

fn sqlstate(body: &[u8]) -> String {
    let mut rest = body;
    while let Some((&tag, after)) = rest.split_first() {
        if tag == 0 {
            break;
        }
        let nul = after.iter().position(|b| *b == 0).unwrap();
        if tag == b'C' {
            return String::from_utf8_lossy(&after[..nul]).into_owned();
        }
        rest = &after[nul + 1..];
    }
    String::new()
}

async fn expect_error_or_close<S: AsyncRead + Unpin>(s: &mut S, code: &str) {
    match answer(s).await {
        None => {}
        Some((b'E', body)) => assert_eq!(sqlstate(&body), code),
        Some((tag, _)) => panic!("unexpected message {:?}", tag as char),
    }
}

async fn tls_connect(
    t: &TestPlatform,
    alpn: Option<&[u8]>,
    ssl_request: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", t.gateway_port())).await?;
    if ssl_request {
        tcp.write_all(&SSL_REQUEST).await?;
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await?;
        assert_eq!(&b, b"S");
    }
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_tls(&t.ca_file(), alpn)));
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

async fn still_serves(t: &TestPlatform) {
    let c = tokio_pg(t, &t.dsn)
        .await
        .expect("gateway must keep serving");
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_first_packets_get_an_error_or_a_close() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;

    // Garbage bytes: the first four read as an absurd length.
    let mut s = TcpStream::connect(("127.0.0.1", t.gateway_port()))
        .await
        .unwrap();
    s.write_all(b"hello, this is not postgres\r\n")
        .await
        .unwrap();
    expect_error_or_close(&mut s, "08P01").await;

    // An oversized length.
    let mut s = TcpStream::connect(("127.0.0.1", t.gateway_port()))
        .await
        .unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .await
        .unwrap();
    expect_error_or_close(&mut s, "08P01").await;

    // A length below the minimum.
    let mut s = TcpStream::connect(("127.0.0.1", t.gateway_port()))
        .await
        .unwrap();
    s.write_all(&[0, 0, 0, 4]).await.unwrap();
    expect_error_or_close(&mut s, "08P01").await;

    // Truncated: announces 100 bytes, sends 20, closes its side.
    let mut s = TcpStream::connect(("127.0.0.1", t.gateway_port()))
        .await
        .unwrap();
    let mut p = startup(
        0,
        &[
            ("user", "app"),
            ("database", "appdb"),
            ("application_name", "x"),
        ],
    );
    p[0..4].copy_from_slice(&100u32.to_be_bytes());
    s.write_all(&p[..20]).await.unwrap();
    s.shutdown().await.unwrap();
    expect_error_or_close(&mut s, "08P01").await;

    // SSLRequest, then garbage instead of a TLS ClientHello.
    let mut s = TcpStream::connect(("127.0.0.1", t.gateway_port()))
        .await
        .unwrap();
    s.write_all(&SSL_REQUEST).await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"S");
    s.write_all(&[0x13; 64]).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the gateway must close after a failed handshake"
    );

    // Protocol 2.0 is refused.
    let mut s = TcpStream::connect(("127.0.0.1", t.gateway_port()))
        .await
        .unwrap();
    let mut p = startup(0, &[("user", "app")]);
    p[4..8].copy_from_slice(&(2u32 << 16).to_be_bytes());
    s.write_all(&p).await.unwrap();
    expect_error_or_close(&mut s, "0A000").await;

    // Startup packets with missing fields, over TLS.
    let mut s = tls_connect(&t, None, true).await.unwrap();
    s.write_all(&startup(0, &[("database", DB)])).await.unwrap();
    expect_error_or_close(&mut s, "08P01").await;
    let mut s = tls_connect(&t, None, true).await.unwrap();
    let mut p = startup(0, &[("user", "app")]);
    let n = p.len();
    p.truncate(n - 1); // no final terminator
    p[0..4].copy_from_slice(&((n - 1) as u32).to_be_bytes());
    s.write_all(&p).await.unwrap();
    expect_error_or_close(&mut s, "08P01").await;

    // A second SSLRequest inside TLS.
    let mut s = tls_connect(&t, None, true).await.unwrap();
    s.write_all(&SSL_REQUEST).await.unwrap();
    expect_error_or_close(&mut s, "08P01").await;

    // A non-SASL message where the SASL response belongs.
    let mut s = tls_connect(&t, None, true).await.unwrap();
    s.write_all(&startup(0, &[("user", ROLE), ("database", DB)]))
        .await
        .unwrap();
    assert_eq!(answer(&mut s).await.unwrap().0, b'R');
    s.write_all(b"Q\0\0\0\x0dSELECT 1\0").await.unwrap();
    expect_error_or_close(&mut s, "08P01").await;

    // An oversized SASL message.
    let mut s = tls_connect(&t, None, true).await.unwrap();
    s.write_all(&startup(0, &[("user", ROLE), ("database", DB)]))
        .await
        .unwrap();
    assert_eq!(answer(&mut s).await.unwrap().0, b'R');
    s.write_all(&[b'p', 0x10, 0, 0, 0]).await.unwrap();
    expect_error_or_close(&mut s, "08P01").await;

    // Garbage SCRAM.
    let mut s = tls_connect(&t, None, true).await.unwrap();
    s.write_all(&startup(0, &[("user", ROLE), ("database", DB)]))
        .await
        .unwrap();
    assert_eq!(answer(&mut s).await.unwrap().0, b'R');
    let mut m = b"SCRAM-SHA-256\0".to_vec();
    m.extend_from_slice(&9i32.to_be_bytes());
    m.extend_from_slice(b"garbage!!");
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((m.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&m);
    s.write_all(&msg).await.unwrap();
    expect_error_or_close(&mut s, "08P01").await;

    still_serves(&t).await;
    // Nothing above woke the database (only the final real client did).
    assert_eq!(t.status().await.record.wake_count, 1);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_requires_alpn_and_gssenc_is_declined() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;

    // PostgreSQL 17 direct TLS: ClientHello first, ALPN "postgresql".
    let mut s = tls_connect(&t, Some(b"postgresql"), false).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    s.write_all(&startup(0, &[("user", ROLE), ("database", DB)]))
        .await
        .unwrap();
    let (tag, body) = answer(&mut s).await.unwrap();
    assert_eq!(tag, b'R');
    assert_eq!(&body[..4], &10i32.to_be_bytes(), "AuthenticationSASL");
    assert!(body.windows(13).any(|w| w == b"SCRAM-SHA-256"));

    // Direct TLS without ALPN is closed.
    match tls_connect(&t, None, false).await {
        Err(_) => {}
        Ok(mut s) => {
            let _ = s.write_all(&startup(0, &[("user", ROLE)])).await;
            assert!(
                answer(&mut s).await.is_none(),
                "direct TLS without ALPN must be closed"
            );
        }
    }
    // Direct TLS with another ALPN protocol fails the handshake.
    assert!(tls_connect(&t, Some(b"h2"), false).await.is_err());

    // GSSENCRequest is declined with 'N'; the client may go on with SSLRequest.
    let mut tcp = TcpStream::connect(("127.0.0.1", t.gateway_port()))
        .await
        .unwrap();
    tcp.write_all(&GSSENC_REQUEST).await.unwrap();
    let mut b = [0u8; 1];
    tcp.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"N");
    tcp.write_all(&SSL_REQUEST).await.unwrap();
    tcp.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"S");

    // Protocol 3.2 with an extension: NegotiateProtocolVersion down to 3.0, then SASL.
    let mut s = tls_connect(&t, None, true).await.unwrap();
    s.write_all(&startup(
        2,
        &[("user", ROLE), ("database", DB), ("_pq_.test", "1")],
    ))
    .await
    .unwrap();
    let (tag, body) = answer(&mut s).await.unwrap();
    assert_eq!(tag, b'v');
    assert_eq!(&body[..4], &0u32.to_be_bytes());
    assert!(body.windows(9).any(|w| w == b"_pq_.test"));
    assert_eq!(answer(&mut s).await.unwrap().0, b'R');

    still_serves(&t).await;
    t.shutdown().await;
}

async fn plaintext_outcome(port: u16) -> (bool, String) {
    let dsn = format!("postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{port}/{DB}?sslmode=disable");
    let out = tokio::task::spawn_blocking(move || psql(&dsn, "SELECT 1"))
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_unless_allowed() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let (ok, err) = plaintext_outcome(t.gateway_port()).await;
    assert!(!ok);
    assert!(err.contains("connection requires TLS"), "{err}");
    assert_eq!(t.status().await.record.wake_count, 0);
    t.shutdown().await;

    let t = TestPlatform::start_with(Duration::from_secs(300), |c| c.allow_plaintext = true).await;
    let (ok, err) = plaintext_outcome(t.gateway_port()).await;
    assert!(ok, "{err}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_get_53300() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| c.max_client_conn = 2).await;
    let a = tokio_pg(&t, &t.dsn).await.unwrap();
    let b = tokio_pg(&t, &t.dsn).await.unwrap();
    let e = tokio_pg(&t, &t.dsn).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}");
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_in_a_session_ends_only_that_session() {
    let t =
        TestPlatform::start_with(Duration::from_secs(300), |c| c.max_message_bytes = 4096).await;
    let victim = tokio_pg(&t, &t.dsn).await.unwrap();
    let bystander = tokio_pg(&t, &t.dsn).await.unwrap();
    let big = format!("SELECT '{}'", "x".repeat(10_000));
    let e = victim.simple_query(&big).await.unwrap_err();
    assert!(
        e.code().map(|c| c.code()) == Some("08P01") || e.is_closed(),
        "expected a protocol error, got {e}"
    );
    assert!(
        victim.simple_query("SELECT 1").await.is_err(),
        "the session must be over"
    );
    let one: i32 = bystander.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    still_serves(&t).await;
    t.shutdown().await;
}

/// Resident and virtual memory of this process (the gateway runs in it), in kB.
fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmSize:"))
}

/// A client announcing a 900 MB message and sending none of it makes the gateway hold nothing
/// for it: neither resident nor reserved (virtual) memory grows by more than a few MB, for ten
/// such clients, and others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_900_mb_message_reserves_no_memory() {
    use tokio::io::AsyncWriteExt;
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| c.allow_plaintext = true).await;
    // Warm up: a compute, a pooled backend and the clients' allocations are there first.
    let mut warm = Vec::new();
    for _ in 0..3 {
        let mut c = RawPg::connect(t.gateway_port(), ROLE, PASSWORD, DB).await;
        c.query("SELECT 1").await;
        warm.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, vm0) = memory_kb();
    let mut liars = Vec::new();
    for _ in 0..10 {
        let mut c = RawPg::connect(t.gateway_port(), ROLE, PASSWORD, DB).await;
        // 'Q', then a length of 900 MB, then nothing.
        let mut head = vec![b'Q'];
        head.extend_from_slice(&(900_000_000u32).to_be_bytes());
        head.extend_from_slice(b"SELECT ");
        c.stream.write_all(&head).await.unwrap();
        liars.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, vm1) = memory_kb();
    // Others are served while the liars wait.
    let msgs = warm[0].query("SELECT 2").await;
    assert_eq!(first_column(&msgs), vec![Some("2".to_string())]);
    assert!(
        rss1.saturating_sub(rss0) < 8 * 1024,
        "resident memory grew from {rss0} kB to {rss1} kB"
    );
    assert!(
        vm1.saturating_sub(vm0) < 16 * 1024,
        "reserved memory grew from {vm0} kB to {vm1} kB"
    );
    drop(liars);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_is_3d000_and_wakes_nothing() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    for db in ["nosuchdb", "Bad-Name", "postgres"] {
        let e = tokio_pg(&t, &t.dsn_with(ROLE, PASSWORD, db, "sslmode=require"))
            .await
            .unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("3D000"), "{db}: {e}");
    }
    // Replication connections are refused (before authentication).
    let mut s = tls_connect(&t, None, true).await.unwrap();
    s.write_all(&startup(
        0,
        &[
            ("user", ROLE),
            ("database", DB),
            ("replication", "database"),
        ],
    ))
    .await
    .unwrap();
    expect_error_or_close(&mut s, "0A000").await;
    assert_eq!(t.status().await.record.wake_count, 0);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_method_verifies_against_the_verifier_and_remembers_it() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.client_auth = spg_gateway_lib::ClientAuth::Password;
        c.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    // The gateway asks for the password in the clear (over TLS here).
    let mut s = tls_connect(&t, None, true).await.unwrap();
    s.write_all(&startup(0, &[("user", ROLE), ("database", DB)]))
        .await
        .unwrap();
    let (tag, body) = answer(&mut s).await.expect("an authentication request");
    assert_eq!((tag, body.as_slice()), (b'R', &3i32.to_be_bytes()[..]));
    drop(s);

    // libpq and tokio-postgres log in, and their sessions run through the pool (whose backends
    // are opened with the key the password gave).
    for _ in 0..3 {
        let dsn = t.dsn.clone();
        let out = tokio::task::spawn_blocking(move || psql_ok(&dsn, "SELECT 40 + 2"))
            .await
            .unwrap();
        assert_eq!(out, "42");
    }
    let c = tokio_pg(&t, &t.dsn).await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM generate_series(1, 10)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10);

    // A wrong password, an unknown role: 28P01 like PostgreSQL, however often tried.
    for (user, password) in [(ROLE, "wrong"), (ROLE, "wrong"), ("nobody", PASSWORD)] {
        let e = tokio_pg(&t, &t.dsn_with(user, password, DB, "sslmode=require"))
            .await
            .unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("28P01"), "{user}: {e}");
    }

    // Only the first login derived the key; the other three came from the cache.
    let url = format!("http://{}/metrics", t.p().metrics_addr.unwrap());
    let metrics = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let hits: f64 = metrics
        .lines()
        .find(|l| l.starts_with("spg_gateway_password_cache_hits_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no cache hit counter in {metrics}"));
    assert_eq!(hits, 3.0, "{metrics}");
    t.shutdown().await;
}
