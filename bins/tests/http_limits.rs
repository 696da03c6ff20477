//! Limits at every HTTP server, each in a daemon of its own (`spg-controlplane`,
//! `spg-gateway`'s control routes and metrics, `spg-safekeeper`, `spg-pageserver`): a client
//! trickling its request headers byte by byte (slowloris) and an idle connection are closed by
//! the timeouts while other requests are served; wrong API keys from one address are throttled,
//! then locked out, and another address is not; the gateway key reaches only what a gateway
//! needs. And a handoff's freeze whose control plane is killed ends on the gateway by itself.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemons::*;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HEADER_TIMEOUT: &str = "2s";
const IDLE_TIMEOUT: &str = "3s";
const KEY: &str = "daemon-test-key-0123456789";

fn limits() -> [&'static str; 4] {
    [
        "--http-header-timeout",
        HEADER_TIMEOUT,
        "--http-idle-timeout",
        IDLE_TIMEOUT,
    ]
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A connection to `port` on 127.0.0.1, over TLS when `ca` is given.
async fn open(port: u16, ca: Option<&Path>) -> Box<dyn Io> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    match ca {
        None => Box::new(tcp),
        Some(ca) => {
            let connector =
                tokio_rustls::TlsConnector::from(Arc::new(client_tls(ca, Some(b"http/1.1"))));
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            Box::new(connector.connect(name, tcp).await.unwrap())
        }
    }
}

/// Trickle a request head into `port` one byte every 200 ms; returns how long until the
/// server closed the connection (panics after 20 s).
async fn slowloris(port: u16, ca: Option<&Path>) -> Duration {
    let s = open(port, ca).await;
    let (mut r, mut w) = tokio::io::split(s);
    let started = Instant::now();
    let closed = tokio::spawn(async move {
        let mut b = [0u8; 256];
        loop {
            match r.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let mut i = 0;
    while !closed.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(20), "never closed");
        let b = if i < head.len() { head[i] } else { b'a' };
        i += 1;
        if w.write_all(&[b]).await.is_err() || w.flush().await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = closed.await;
    started.elapsed()
}

/// Open a connection and send nothing; returns how long until the server closed it.
async fn idle(port: u16, ca: Option<&Path>) -> Duration {
    let mut s = open(port, ca).await;
    let started = Instant::now();
    let mut b = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read(&mut b))
        .await
        .expect("never closed");
    started.elapsed()
}

/// `GET path` is answered with `status`.
async fn answers(url: &str, ca: Option<&Path>, (path, status): (&str, u16)) {
    let client = match ca {
        Some(ca) => https_client(&std::fs::read(ca).unwrap()),
        None => reqwest::Client::new(),
    };
    let resp = client.get(format!("{url}{path}")).send().await.unwrap();
    assert_eq!(resp.status(), status, "{url}{path}");
}

fn safekeeper(dir: &Path, port: u16) -> ChildGuard {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_spg-safekeeper"));
    cmd.args(["--name", "sk1", "--api-key", KEY])
        .arg("--dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(limits());
    spawn_daemon(cmd, dir.to_path_buf())
}

fn pageserver(dir: &Path, port: u16) -> ChildGuard {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_spg-pageserver"));
    cmd.args(["--api-key", KEY, "--gc-every", "0s"])
        .arg("--dir")
        .arg(dir.join("ps"))
        .arg("--archive-dir")
        .arg(dir.join("objects"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(limits());
    spawn_daemon(cmd, dir.to_path_buf())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_on_every_http_server_and_others_served() {
    let tmp = reachable_tempdir();
    let (_cp, env, _gateway, _gw, metrics, control) = daemons(tmp.path(), &limits(), &limits());
    let (sk_port, ps_port) = (free_port(), free_port());
    let _sk = safekeeper(&tmp.path().join("sk"), sk_port);
    let _ps = pageserver(tmp.path(), ps_port);
    let api_ca = PathBuf::from(env.get("SPG_API_CA").unwrap());
    let api_port: u16 = env
        .get("SPG_API_URL")
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ok = ("/healthz", 200);
    // (name, port, CA for https, a request and the status it gets)
    type Server<'a> = (&'a str, u16, Option<PathBuf>, (&'a str, u16));
    let servers: Vec<Server> = vec![
        ("control plane API", api_port, Some(api_ca), ok),
        (
            "gateway control routes",
            control,
            Some(tmp.path().join("gw/tls/ca.pem")),
            ("/v1/gateway/databases/shop", 401),
        ),
        ("gateway metrics", metrics, None, ("/metrics", 200)),
        (
            "safekeeper",
            sk_port,
            Some(tmp.path().join("sk/tls/ca.pem")),
            ok,
        ),
        (
            "pageserver",
            ps_port,
            Some(tmp.path().join("ps/tls/ca.pem")),
            ok,
        ),
    ];
    for (name, port, ca, probe) in &servers {
        let ca = ca.as_deref();
        let scheme = if ca.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        // Several slow clients at once; meanwhile a normal request is answered.
        let slow: Vec<_> = (0..3)
            .map(|_| {
                let ca = ca.map(Path::to_path_buf);
                let port = *port;
                tokio::spawn(async move { slowloris(port, ca.as_deref()).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        answers(&url, ca, *probe).await;
        for s in slow {
            let took = s.await.unwrap();
            assert!(
                took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
                "{name}: a trickled request head was closed after {took:?}"
            );
        }
        let took = idle(*port, ca).await;
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
            "{name}: an idle connection was closed after {took:?}"
        );
        answers(&url, ca, *probe).await;
    }
}

/// reqwest from a loopback address of its own.
fn client_from(src: &str, ca: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .local_address(src.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_api_keys_are_throttled_per_address_and_the_gateway_key_is_scoped() {
    let tmp = reachable_tempdir();
    let (_cp, env, _gateway, _gw, _metrics, _control) = daemons(tmp.path(), &[], &[]);
    let ca = PathBuf::from(env.get("SPG_API_CA").unwrap());
    let api = env.get("SPG_API_URL").unwrap().to_string();
    let admin = env.get("SPG_API_KEY").unwrap().to_string();
    let gateway_key = env.get("SPG_GATEWAY_API_KEY").unwrap().to_string();

    // The gateway key: what a gateway needs, nothing else.
    let c = client_from("127.0.0.1", &ca);
    let verifier = c
        .get(format!("{api}/v1/databases/shop/roles/clerk/verifier"))
        .bearer_auth(&gateway_key)
        .send()
        .await
        .unwrap();
    assert_eq!(verifier.status(), 200);
    for (method, path) in [
        (reqwest::Method::POST, "/v1/databases"),
        (reqwest::Method::GET, "/v1/databases"),
        (reqwest::Method::POST, "/v1/databases/shop/stop"),
        (reqwest::Method::POST, "/v1/databases/shop/roles"),
    ] {
        let r = c
            .request(method.clone(), format!("{api}{path}"))
            .bearer_auth(&gateway_key)
            .json(&serde_json::json!({"name": "x", "password": "y"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path} with the gateway key");
    }

    // Bodies are bounded (axum's 2 MiB): a 5 MB body with the right key is refused unread.
    let big = c
        .post(format!("{api}/v1/databases"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(format!("{{\"name\": \"{}\"}}", "x".repeat(5 << 20)))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);

    // 30 wrong keys from 127.0.0.2, at once: the later ones are answered late, then refused.
    let guesser = client_from("127.0.0.2", &ca);
    let started = Instant::now();
    let guesses: Vec<_> = (0..30)
        .map(|i| {
            let (g, url) = (guesser.clone(), format!("{api}/v1/databases"));
            tokio::spawn(async move {
                g.get(url)
                    .bearer_auth(format!("wrong-{i}"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for g in guesses {
        statuses.push(g.await.unwrap());
    }
    eprintln!(
        "wrong keys answered {statuses:?} in {:?}",
        started.elapsed()
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    // Locked out now, even with the right key; 127.0.0.1 is not.
    let locked = guesser
        .get(format!("{api}/v1/databases"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(locked.status(), 429);
    assert!(locked.headers().contains_key("retry-after"));
    let fine = c
        .get(format!("{api}/v1/databases"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
    let m = c
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("spg_api_http_key_failures_total"), "{m}");
}

/// A handoff freezes new work on a gateway daemon, then its control plane is killed (and
/// started again, which records the handoff as aborted but knows nothing of the freeze): the
/// gateway lets new work go by itself once the freeze's bound (drain timeout + margin) passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_whose_control_plane_died_ends_by_itself() {
    let tmp = reachable_tempdir();
    let cp_args = [
        "--handoff-drain-timeout",
        "3s",
        "--handoff-freeze-margin",
        "2s",
    ];
    let (mut cp, env, _gateway, gw, _metrics, _control) =
        daemons(tmp.path(), &cp_args, &["--allow-plaintext"]);
    let dsn = format!("host=127.0.0.1 port={gw} user=clerk password=pw-clerk dbname=shop");
    let connect = || async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    if c.simple_query("SELECT 1").await.is_ok() {
                        return c;
                    }
                }
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let holder = connect().await;
    let other = connect().await;
    // A transaction in flight holds the drain.
    holder
        .batch_execute("CREATE TABLE t (v int); BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let ca = std::fs::read(env.get("SPG_API_CA").unwrap()).unwrap();
    let http = https_client(&ca);
    let url = format!("{}/v1/databases/shop", env.get("SPG_API_URL").unwrap());
    let key = env.get("SPG_API_KEY").unwrap().to_string();
    let resp = http
        .post(format!("{url}/handoff"))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "profile": "L2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: serde_json::Value = http
            .get(&url)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["scale_state"] == "draining" {
            break;
        }
        assert!(Instant::now() < deadline, "never drained: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let frozen_at = Instant::now();
    // The control plane dies; it is started again (leases and wakes work again).
    kill(Pid::from_raw(cp.pid()), Signal::SIGKILL).unwrap();
    let _ = cp.child.as_mut().unwrap().wait();
    let api_port: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let _cp2 = controlplane(tmp.path(), api_port, &cp_args);
    // New work waits, then goes once the freeze (3 s + 2 s) has passed.
    let got = tokio::time::timeout(Duration::from_secs(30), other.simple_query("SELECT 42"))
        .await
        .expect("new work went on by itself");
    assert!(got.is_ok(), "{got:?}");
    let waited = frozen_at.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "it was held while frozen ({waited:?})"
    );
    // (The held transaction's fate depends on what the new control plane did with the old
    // compute; it is not what this test is about.)
    let _ = holder.batch_execute("COMMIT").await;
}
