//! Lifecycle events: webhooks to a real HTTPS receiver on loopback (signed, retried after a
//! 500, logged) and the API's server-sent event stream, for a wake, a handoff, a stop and a
//! crash; and the pre-wake hook.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use spg_lifecycle_lib::webhooks::{RetryPolicy, Webhook};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "webhook-secret-0123456789";

/// What the receiver got: (headers, body) of every request.
type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// An HTTPS receiver on 127.0.0.1 under its own CA: answers the first request 500, then 200.
async fn receiver(dir: &std::path::Path) -> (String, Vec<u8>, Received, CancellationToken) {
    let tls = spg::tls::TlsMaterial::load_or_generate(dir, None, None, None).unwrap();
    let got: Received = Arc::default();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let got = Arc::clone(&got);
            move |headers: HeaderMap, body: axum::body::Bytes| async move {
                let mut g = got.lock().unwrap();
                g.push((headers, body.to_vec()));
                match g.len() {
                    1 => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::OK,
                }
            }
        }),
    );
    let (url, stop) = serve(&tls, router, "/hook").await;
    (url, tls.ca_pem().unwrap(), got, stop)
}

/// Serve `router` over HTTPS on 127.0.0.1 with `tls`; returns the URL of `path` there.
async fn serve(
    tls: &spg::tls::TlsMaterial,
    router: axum::Router,
    path: &str,
) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}{path}",
        listener.local_addr().unwrap().port()
    );
    let stop = CancellationToken::new();
    tokio::spawn(spg_lifecycle_lib::api::http::serve_https(
        listener,
        tls.https().unwrap(),
        router,
        stop.clone(),
        Default::default(),
    ));
    (url, stop)
}

/// The signature header checked here, with HMAC-SHA256 itself.
fn signed(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(h) = headers.get("x-spg-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = h.split(',');
    let (Some(t), Some(v1)) = (
        parts.next().and_then(|p| p.strip_prefix("t=")),
        parts.next().and_then(|p| p.strip_prefix("v1=")),
    ) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    hex == v1 && t.parse::<u64>().unwrap().abs_diff(now) < 300
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_and_the_event_stream_report_the_lifecycle() {
    let scratch = reachable_tempdir();
    let (url, ca, got, stop_receiver) = receiver(scratch.path()).await;
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.webhooks = vec![Webhook {
            url: url.clone(),
            secret: zeroize::Zeroizing::new(SECRET.into()),
            events: vec![],
        }];
        c.webhook_ca_pem = Some(ca.clone());
        c.webhook_retry = RetryPolicy {
            first_backoff: Duration::from_millis(200),
            ..RetryPolicy::default()
        };
    })
    .await;
    let base = t.p().api_url();
    let http = common::daemons::https_client(&std::fs::read(t.ca_file()).unwrap());
    // The event stream, read as it comes.
    let mut stream = http
        .get(format!("{base}/v1/events?database={DB}"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let streamed: Arc<Mutex<String>> = Arc::default();
    let reading = tokio::spawn({
        let streamed = Arc::clone(&streamed);
        async move {
            while let Ok(Some(chunk)) = stream.chunk().await {
                streamed
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk));
            }
        }
    });

    // A wake through the gateway, a handoff to L2, a stop.
    let (client, conn) = tokio_postgres::connect(&t.dsn, tls_maker(&t))
        .await
        .unwrap();
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    let cp = t.p().control_plane.clone();
    let db = spg_core::DatabaseName::new(DB).unwrap();
    cp.start_handoff(&db, "L2")
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    cp.stop_database(&db).await.unwrap();
    // A wake, and the compute killed under it: crashed.
    cp.wake(&db).await.unwrap();
    for pid in postgres_processes_under(t.dir.path()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    // Every event reaches the receiver, signed; the one answered 500 came again.
    let wanted = [
        "woken",
        "handoff_started",
        "handoff_ended",
        "stopped",
        "crashed",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let by_delivery = loop {
        let g = got.lock().unwrap().clone();
        let mut by_delivery: BTreeMap<String, Vec<(HeaderMap, Vec<u8>)>> = BTreeMap::new();
        for (h, b) in g {
            let id = h["x-spg-delivery"].to_str().unwrap().to_string();
            by_delivery.entry(id).or_default().push((h, b));
        }
        let kinds: Vec<String> = by_delivery
            .values()
            .map(|v| v[0].0["x-spg-event"].to_str().unwrap().to_string())
            .collect();
        if wanted.iter().all(|w| kinds.iter().any(|k| k == w)) {
            break by_delivery;
        }
        assert!(Instant::now() < deadline, "webhooks got {kinds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut retried = None;
    for (id, tries) in &by_delivery {
        for (h, body) in tries {
            assert!(
                signed(h, body),
                "delivery {id}: the signature does not verify"
            );
            let e: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(e["id"], id.as_str());
            assert_eq!(e["database"], DB);
            assert_eq!(e["kind"], h["x-spg-event"].to_str().unwrap());
        }
        if tries.len() > 1 {
            assert_eq!(tries[0].1, tries[1].1, "a retry sends the same event");
            retried = Some(id.clone());
        }
    }
    let retried = retried.expect("the first delivery, answered 500, was retried");
    let first_kind = by_delivery[&retried][0].0["x-spg-event"].to_str().unwrap();
    eprintln!(
        "retried {retried} ({first_kind}); deliveries: {}",
        by_delivery.len()
    );
    // A tampered body does not verify.
    let (h, body) = &by_delivery[&retried][0];
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert!(!signed(h, &tampered));
    // Handoff events carry the profiles.
    let ended = by_delivery
        .values()
        .find(|v| v[0].0["x-spg-event"] == "handoff_ended")
        .unwrap();
    let e: Value = serde_json::from_slice(&ended[0].1).unwrap();
    assert_eq!(e["profile"], "L2", "{e}");

    // The delivery log shows the try that failed, then the one that went through.
    let log: Vec<Value> = http
        .get(format!("{base}/v1/webhooks/deliveries?limit=100"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tries: Vec<&Value> = log
        .iter()
        .filter(|d| d["event_id"] == retried.as_str())
        .collect();
    assert_eq!(tries.len(), 2, "{log:?}");
    assert_eq!(tries[1]["outcome"], "retrying", "oldest last: {log:?}");
    assert_eq!(tries[1]["status"], 500);
    assert_eq!(tries[0]["outcome"], "delivered");
    assert_eq!(tries[0]["attempt"], 2);

    // The event stream carried the same events, with the same ids.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = streamed.lock().unwrap().clone();
        let seen = wanted.iter().all(|w| {
            text.contains(&format!("event: {w}\n")) || text.contains(&format!("event:{w}\n"))
        });
        if seen {
            for (id, tries) in &by_delivery {
                let kind = tries[0].0["x-spg-event"].to_str().unwrap();
                if wanted.contains(&kind) {
                    assert!(text.contains(id.as_str()), "{id} not streamed:\n{text}");
                }
            }
            break;
        }
        assert!(Instant::now() < deadline, "streamed:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reading.abort();

    // A branch: branch_created, for the new database, naming its parent.
    cp.branch_database(
        spg_core::DatabaseName::new("shop_pr1").unwrap(),
        &db,
        spg_lifecycle_lib::branching::BranchPoint::Newest,
        spg_lifecycle_lib::controlplane::BranchPasswords::Keep,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (h, body) = loop {
        let found = got
            .lock()
            .unwrap()
            .iter()
            .find(|(h, _)| h["x-spg-event"] == "branch_created")
            .cloned();
        if let Some(d) = found {
            break d;
        }
        assert!(Instant::now() < deadline, "no branch_created delivery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(signed(&h, &body));
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["kind"], "branch_created");
    assert_eq!(e["database"], "shop_pr1");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .starts_with("branched from appdb at now"),
        "{e}"
    );
    stop_receiver.cancel();
    t.shutdown().await;
}

/// What the pre-wake receiver answers.
#[derive(Clone)]
enum Verdict {
    Refuse(&'static str),
    Allow,
    /// Answer only after this long.
    Stall(Duration),
}

/// The pre-wake hook: a refusal reaches `psql` as an error and starts no compute; a hook that
/// does not answer in time does not hold the wake past its deadline; an allowing one lets it go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_wake_hook_refuses_a_wake_and_cannot_stall_one() {
    let scratch = reachable_tempdir();
    let tls = spg::tls::TlsMaterial::load_or_generate(scratch.path(), None, None, None).unwrap();
    let verdict = Arc::new(Mutex::new(Verdict::Refuse("spending cap reached")));
    let asked: Received = Arc::default();
    let router = axum::Router::new().route(
        "/pre-wake",
        axum::routing::post({
            let (verdict, asked) = (Arc::clone(&verdict), Arc::clone(&asked));
            move |headers: HeaderMap, body: axum::body::Bytes| async move {
                asked.lock().unwrap().push((headers, body.to_vec()));
                let v = verdict.lock().unwrap().clone();
                let answer = match v {
                    Verdict::Refuse(m) => serde_json::json!({"allow": false, "message": m}),
                    Verdict::Allow => serde_json::json!({"allow": true}),
                    Verdict::Stall(d) => {
                        tokio::time::sleep(d).await;
                        serde_json::json!({"allow": false, "message": "too late"})
                    }
                };
                axum::Json(answer)
            }
        }),
    );
    let (url, stop) = serve(&tls, router, "/pre-wake").await;
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.pre_wake_hook = Some(spg_lifecycle_lib::webhooks::PreWakeHook {
            url: url.clone(),
            secret: zeroize::Zeroizing::new(SECRET.into()),
            timeout: Duration::from_secs(1),
        });
        c.webhook_ca_pem = Some(tls.ca_pem().unwrap());
    })
    .await;

    // Refused: psql is told why, with SQLSTATE 53400; nothing started.
    let out = tokio::task::block_in_place(|| psql(&t.dsn, "SELECT 1"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "database \"{DB}\" may not be started: spending cap reached"
        )),
        "{stderr}"
    );
    let err = tokio_postgres::connect(&t.dsn, tls_maker(&t))
        .await
        .err()
        .expect("refused again");
    assert_eq!(err.code().map(|c| c.code()), Some("53400"), "{err:?}");
    let st = t.status().await;
    assert_eq!(st.record.state, spg_core::ComputeState::Stopped);
    assert_eq!(
        st.record.generation.0, 0,
        "no compute generation was started"
    );
    assert!(postgres_processes_under(t.dir.path()).is_empty());
    {
        let a = asked.lock().unwrap();
        assert!(a.len() >= 2, "asked for each wake");
        let (h, body) = &a[0];
        assert!(signed(h, body), "the request is signed");
        assert_eq!(h["x-spg-event"], "pre_wake");
        let req: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(req["database"], DB);
        assert_eq!(req["generation"], 1);
    }

    // A hook that stalls (30 s) past its deadline (1 s): the wake goes on without it.
    *verdict.lock().unwrap() = Verdict::Stall(Duration::from_secs(30));
    let since = Instant::now();
    let (client, conn) = tokio_postgres::connect(&t.dsn, tls_maker(&t))
        .await
        .unwrap();
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
    let took = since.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the stalled hook held the wake for {took:?}"
    );
    drop(client);
    t.p()
        .control_plane
        .stop_database(&spg_core::DatabaseName::new(DB).unwrap())
        .await
        .unwrap();

    // Allowed.
    *verdict.lock().unwrap() = Verdict::Allow;
    let out = tokio::task::block_in_place(|| psql(&t.dsn, "SELECT 42"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let metrics = common::daemons::https_client(&std::fs::read(t.ca_file()).unwrap())
        .get(format!("{}/metrics", t.p().api_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("spg_controlplane_wake_refusals_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spg_controlplane_pre_wake_unanswered_total 1"),
        "{metrics}"
    );
    stop.cancel();
    t.shutdown().await;
}
