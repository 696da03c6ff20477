//! The control plane's HTTPS API and the Prometheus metrics, over real TLS.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn http(t: &TestPlatform) -> reqwest::Client {
    common::daemons::https_client(&std::fs::read(t.ca_file()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requires_its_key_and_manages_databases_and_roles() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let c = http(&t);
    let url = |p: &str| format!("{}{p}", t.p().api_url());

    // No key, wrong key, a database password as key: 401.
    for auth in [None, Some("wrong"), Some(PASSWORD)] {
        let mut r = c.get(url("/v1/databases"));
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // Health is open.
    assert_eq!(c.get(url("/healthz")).send().await.unwrap().status(), 200);

    // Create, duplicate, invalid.
    let r = c
        .post(url("/v1/databases"))
        .bearer_auth(API_KEY)
        .json(&json!({"name": "shop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["state"], "stopped");
    assert_eq!(created["generation"], 0);
    let r = c
        .post(url("/v1/databases"))
        .bearer_auth(API_KEY)
        .json(&json!({"name": "shop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    for bad in [
        json!({"name": "Shop"}),
        json!({"name": "postgres"}),
        json!({"nom": "x"}),
    ] {
        let r = c
            .post(url("/v1/databases"))
            .bearer_auth(API_KEY)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = c
        .post(url("/v1/databases"))
        .bearer_auth(API_KEY)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Roles: password or verifier, never both; never stored in plaintext.
    let pw = "correct horse battery staple";
    let r = c
        .post(url("/v1/databases/shop/roles"))
        .bearer_auth(API_KEY)
        .json(&json!({"name": "web", "password": pw}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let role: Value = r.json().await.unwrap();
    assert_eq!(role["name"], "web");
    assert!(!role.to_string().contains(pw));
    let r = c
        .post(url("/v1/databases/shop/roles"))
        .bearer_auth(API_KEY)
        .json(&json!({"name": "web", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = c
        .post(url("/v1/databases/shop/roles"))
        .bearer_auth(API_KEY)
        .json(&json!({"name": "x", "password": "a", "scram_verifier": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(url("/v1/databases/shop/roles"))
        .bearer_auth(API_KEY)
        .json(&json!({"name": "spg_admin", "password": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "reserved role names are refused");
    let r = c
        .post(url("/v1/databases/nosuch/roles"))
        .bearer_auth(API_KEY)
        .json(&json!({"name": "a", "password": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let roles: Value = c
        .get(url("/v1/databases/shop/roles"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(roles.as_array().unwrap().len(), 1);
    let v: Value = c
        .get(url("/v1/databases/shop/roles/web/verifier"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["scram_verifier"]
        .as_str()
        .unwrap()
        .starts_with("SCRAM-SHA-256$4096:"));
    assert_eq!(
        c.get(url("/v1/databases/shop/roles/ghost/verifier"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let state = std::fs::read(t.dir.path().join("data/state.db")).unwrap();
    assert!(
        !state.windows(pw.len()).any(|w| w == pw.as_bytes()),
        "plaintext password in the state store"
    );
    assert!(
        !state
            .windows(API_KEY.len())
            .any(|w| w == API_KEY.as_bytes()),
        "plaintext API key in the state store"
    );

    // The new role logs in through the gateway, which wakes the database.
    let dsn = t.dsn_with(
        "web",
        "correct%20horse%20battery%20staple",
        "shop",
        "sslmode=require",
    );
    let out = tokio::task::spawn_blocking(move || psql_ok(&dsn, "SELECT current_user"))
        .await
        .unwrap();
    assert_eq!(out, "web");

    // Show: state, generation, transition times, wake count, boot timings.
    let shop: Value = c
        .get(url("/v1/databases/shop"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shop["name"], "shop");
    assert_eq!(shop["state"], "ready");
    assert_eq!(shop["target_scale"], 1);
    assert_eq!(shop["generation"], 1);
    assert_eq!(shop["wake_count"], 1);
    assert!(shop["state_since"].as_str().unwrap().ends_with('Z'));
    assert!(shop["last_started_at"].is_string());
    let steps: Vec<&str> = shop["last_boot"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "launch",
            "elect",
            "checkout",
            "configure",
            "start",
            "follow",
            "roles",
            "total"
        ]
    );

    // Stop; list; transitions.
    let stopped: Value = c
        .post(url("/v1/databases/shop/stop"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(stopped["target_scale"], 0);
    assert!(stopped["last_stopped_at"].is_string());
    let all: Value = c
        .get(url("/v1/databases"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["appdb", "shop"]);
    let ts: Value = c
        .get(url("/v1/databases/shop/transitions?limit=10"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seq: Vec<String> = ts
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|t| {
            format!(
                "{}:{}",
                t["to"].as_str().unwrap(),
                t["reason"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        seq,
        [
            "stopped:created",
            "booting:wake",
            "ready:compute ready",
            "stopping:api",
            "stopped:api"
        ]
    );
    assert_eq!(
        c.get(url("/v1/databases/nosuch"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let all_ts: Value = c
        .get(url("/v1/transitions?limit=3"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all_ts.as_array().unwrap().len(), 3);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_client_keeps_the_lease_contract() {
    let t = TestPlatform::start(Duration::from_secs(60)).await;
    let ca = std::fs::read(t.ca_file()).unwrap();
    let api = spg_lifecycle_lib::api::ApiClient::new(&t.p().api_url(), API_KEY, &ca).unwrap();
    let db = spg_core::DatabaseName::new("appdb").unwrap();
    spg_lifecycle_lib::testing::lease_conformance::run_all(&api, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_over_the_api_keep_a_database_awake() {
    let t = TestPlatform::start(Duration::from_millis(800)).await;
    let c = http(&t);
    let url = |p: &str| format!("{}{p}", t.p().api_url());
    let grant: Value = c
        .post(url("/v1/databases/appdb/leases"))
        .bearer_auth(API_KEY)
        .json(&json!({"holder": "test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = grant["id"].as_str().unwrap().to_string();
    assert_eq!(grant["ttl"], 5000);
    let woken: Value = c
        .post(url("/v1/databases/appdb/wake"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(woken["generation"], 1);
    // The first start alone may outlast the 5 s lease on a loaded machine: a holder whose lease
    // ran out takes a new one, as the gateway does.
    let renewed = c
        .post(url(&format!("/v1/leases/{id}/renew")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    let id = if renewed.status() == 200 {
        id
    } else {
        assert_eq!(renewed.status(), 404, "an expired lease is not found");
        let again: Value = c
            .post(url("/v1/databases/appdb/leases"))
            .bearer_auth(API_KEY)
            .json(&json!({"holder": "test"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        again["id"].as_str().unwrap().to_string()
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.status().await.record.state, spg_core::ComputeState::Ready);
    assert_eq!(
        c.post(url(&format!("/v1/leases/{id}/renew")))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.delete(url(&format!("/v1/leases/{id}")))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.post(url(&format!("/v1/leases/{id}/renew")))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    t.wait_state(spg_core::ComputeState::Stopped, Duration::from_secs(20))
        .await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_wakes_sessions_and_auth_failures() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| {
        c.metrics_listen = Some(([127, 0, 0, 1], 0).into())
    })
    .await;
    let bad = t.dsn_with(ROLE, "nope", DB, "sslmode=require");
    assert!(tokio_pg(&t, &bad).await.is_err());
    let client = tokio_pg(&t, &t.dsn).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();

    let plain = reqwest::get(format!("http://{}/metrics", t.p().metrics_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let via_api = http(&t)
        .get(format!("{}/metrics", t.p().api_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for text in [&plain, &via_api] {
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
        };
        assert_eq!(value("spg_gateway_auth_failures_total"), 1.0);
        assert_eq!(value("spg_gateway_active_sessions"), 1.0);
        assert_eq!(value("spg_gateway_wakes_total"), 1.0);
        assert_eq!(value("spg_gateway_wake_seconds_count"), 1.0);
        assert_eq!(value("spg_controlplane_wakes_total"), 1.0);
        assert_eq!(value("spg_controlplane_boot_seconds_count"), 1.0);
        assert!(text.contains("spg_controlplane_step_seconds_count{op=\"boot\",step=\"start\"} 1"));
        assert!(text.contains("spg_controlplane_databases{state=\"ready\"} 1"));
        assert!(text.contains("spg_controlplane_leases 1"));
    }
    drop(client);
    t.shutdown().await;
}

/// `/v1/openapi.json` is open, validates as OpenAPI 3.1 (`openapi-spec-validator`), and
/// describes the router: every documented operation is routed (the router answers it, not
/// with its own 404/405), and answers with a status the document lists for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_validates_and_matches_the_routes() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let c = http(&t);
    let base = t.p().api_url();
    let resp = c
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    let file = t.dir.path().join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let validator = std::path::Path::new("/opt/spg-test-py/bin/openapi-spec-validator");
    assert!(
        validator.exists(),
        "openapi-spec-validator is missing: `/opt/spg-test-py/bin/pip install openapi-spec-validator` (.ci/run does)"
    );
    let out = std::process::Command::new(validator)
        .args(["--schema", "3.1"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every operation, with the admin key, on a database and a role that exist; bodies are
    // left empty (`{}`), which a route with a body refuses as documented.
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            // (Deleting is tried on a database that does not exist.)
            let db = match (method.as_str(), path.as_str()) {
                ("delete", "/v1/databases/{name}") => "no_such_db",
                _ => DB,
            };
            let url = format!(
                "{base}{}",
                path.replace("{name}", db)
                    .replace("{role}", ROLE)
                    .replace("{id}", "no-such-lease")
                    .replace("{file}", "console.js")
            );
            let req = match method.as_str() {
                "get" => c.get(&url),
                "post" => c.post(&url).json(&json!({})),
                "put" => c.put(&url).json(&json!({})),
                "delete" => c.delete(&url),
                other => panic!("unexpected method {other} for {path}"),
            };
            let resp = req.bearer_auth(API_KEY).send().await.unwrap();
            let status = resp.status().as_u16();
            let streaming = resp
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            // An event stream does not end: its first bytes are enough.
            let body = match streaming {
                true => "(event stream)".to_string(),
                false => resp.text().await.unwrap(),
            };
            assert!(
                status != 405 && !(status == 404 && body.is_empty()),
                "{method} {path} is documented but not routed ({status})"
            );
            let documented = op["responses"]
                .as_object()
                .unwrap()
                .contains_key(&status.to_string());
            assert!(
                documented,
                "{method} {path} answered {status}, which its document does not list: {body}"
            );
            operations += 1;
        }
    }
    assert!(operations >= 18, "{operations} operations");
    // And a route that does not exist is the router's own 404 (what the probe above tells apart).
    let resp = c
        .get(format!("{base}/v1/nothing-here"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    t.shutdown().await;
}

/// Usage metering: two wakes (one with a handoff L1 → L2 in it) and stops; the usage over the
/// API, the transitions summed here (ready spans, by the profile each ran with), and the
/// Prometheus counters agree within 1 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_matches_the_transitions() {
    let t = TestPlatform::start(Duration::from_secs(300)).await;
    let c = http(&t);
    let base = t.p().api_url();
    let cp = t.p().control_plane.clone();
    let db = spg_core::DatabaseName::new(DB).unwrap();
    let get = |path: String| {
        let c = c.clone();
        async move {
            let r = c.get(path).bearer_auth(API_KEY).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let started = std::time::SystemTime::now();
    // A wake through the gateway, a while ready, a stop.
    let (client, conn) = tokio_postgres::connect(&t.dsn, tls_maker(&t))
        .await
        .unwrap();
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(client);
    cp.stop_database(&db).await.unwrap();
    // A second wake, a handoff to L2 in the middle, a stop.
    cp.wake(&db).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cp.start_handoff(&db, "L2")
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cp.stop_database(&db).await.unwrap();

    let usage = get(format!("{base}/v1/databases/{DB}/usage")).await;
    eprintln!("usage: {usage}");
    let total = usage["compute_seconds"].as_f64().unwrap();
    let by = usage["compute_seconds_by_profile"].as_object().unwrap();
    assert_eq!(usage["wakes"], 2, "{usage}");
    assert_eq!(usage["handoffs"], 1, "{usage}");
    assert!(
        total >= 3.0,
        "ready for at least the test's pauses: {usage}"
    );

    // The same figures, summed here from the transitions (oldest first).
    let mut ts = get(format!("{base}/v1/databases/{DB}/transitions?limit=1000")).await;
    let ts = ts.as_array_mut().unwrap();
    ts.reverse();
    let at = |t: &Value| {
        humantime::parse_rfc3339(t["at"].as_str().unwrap())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let mut expected: std::collections::BTreeMap<String, f64> = Default::default();
    for pair in ts.windows(2) {
        if pair[0]["to"] == "ready" {
            let profile = pair[0]["profile"].as_str().unwrap().to_string();
            *expected.entry(profile).or_default() += at(&pair[1]) - at(&pair[0]);
        }
    }
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        by.keys().collect::<Vec<_>>(),
        "{usage}"
    );
    let close = |a: f64, b: f64| (a - b).abs() <= 0.01 * b.max(1e-9);
    for (profile, secs) in &expected {
        let got = by[profile].as_f64().unwrap();
        assert!(
            close(got, *secs),
            "{profile}: {got} s metered, {secs} s in the transitions"
        );
    }
    assert!(close(total, expected.values().sum()), "{usage}");
    // Bytes written back: what the two stops' write-backs uploaded (the first one all of the
    // new database's chunks; a handoff writes no image).
    let written: u64 = ts.iter().filter_map(|t| t["bytes_written"].as_u64()).sum();
    assert_eq!(
        usage["bytes_written_back"].as_u64(),
        Some(written),
        "{usage}"
    );
    assert!(written > 100_000, "{usage}");
    assert_eq!(
        ts.iter().filter(|t| t["bytes_written"].is_u64()).count(),
        2,
        "the two stops wrote back"
    );

    // What storage keeps: the bytes of the files under the object store's directory (images
    // and archived WAL of the database), counted here.
    fn bytes_under(p: &std::path::Path) -> u64 {
        match std::fs::read_dir(p) {
            Ok(entries) => entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => bytes_under(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum(),
            Err(_) => 0,
        }
    }
    let objects = t.dir.path().join("data/objects");
    let stored = &usage["stored"];
    // Its manifests, and the chunks and lists they name: they live with the template's (its
    // family's), and every one there is named by one of its images (the first is the
    // template's own).
    let template = objects.join("images").join(
        spg_core::DatabaseName::template(
            spg_lifecycle_lib::pg_bin::PgBinaries::locate(None)
                .unwrap()
                .major(),
        )
        .as_str(),
    );
    assert_eq!(
        stored["image_bytes"].as_u64(),
        Some(
            bytes_under(&objects.join("images").join(DB).join("images"))
                + bytes_under(&template.join("chunks"))
                + bytes_under(&template.join("lists"))
        ),
        "{usage}"
    );
    assert_eq!(
        stored["wal_archive_bytes"].as_u64(),
        Some(bytes_under(&objects.join("wal").join(DB))),
        "{usage}"
    );
    assert!(stored["images"].as_u64().unwrap() >= 1, "{usage}");
    assert!(
        stored["image_bytes"].as_u64().unwrap() >= written,
        "{usage}"
    );

    // Prometheus: the same seconds, counted as each ready span ended.
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (profile, secs) in &expected {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("spg_controlplane_compute_seconds_total{")
                    && l.contains(&format!("database=\"{DB}\""))
                    && l.contains(&format!("profile=\"{profile}\""))
            })
            .unwrap_or_else(|| panic!("no compute_seconds for {profile}:\n{text}"));
        let got: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(close(got, *secs), "{line} vs {secs}");
    }
    assert!(text.contains(&format!(
        "spg_controlplane_database_wakes_total{{database=\"{DB}\"}} 2"
    )));
    assert!(text.contains(&format!(
        "spg_controlplane_written_back_bytes_total{{database=\"{DB}\"}} {written}"
    )));

    // The CLI shows the same (a span given in RFC 3339, with an offset).
    let from = humantime::format_rfc3339_millis(started - Duration::from_secs(1)).to_string();
    let from = from.replace('Z', "+00:00");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spg"))
        .args(["db", "usage", DB, "--from", &from])
        .env("SPG_API_URL", &base)
        .env("SPG_API_KEY", API_KEY)
        .env("SPG_API_CA", t.ca_file())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["wakes"], 2, "{shown}");
    assert_eq!(
        shown["compute_seconds"], usage["compute_seconds"],
        "{shown}"
    );

    // A span: before anything ran, nothing; a bad span is refused.
    let before = humantime::format_rfc3339_millis(started - Duration::from_secs(60));
    let early = humantime::format_rfc3339_millis(started);
    let none = get(format!(
        "{base}/v1/databases/{DB}/usage?from={before}&to={early}"
    ))
    .await;
    assert_eq!(none["compute_seconds"].as_f64(), Some(0.0), "{none}");
    let r = c
        .get(format!(
            "{base}/v1/databases/{DB}/usage?from={early}&to={before}"
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!("{base}/v1/databases/{DB}/usage?from=yesterday"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    t.shutdown().await;
}
