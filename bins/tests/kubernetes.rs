//! Computes as Kubernetes pods, against a simulated API server and kubelet
//! (`spg::testing::kubesim`: no cluster can run here). `spg up` runs with the Kubernetes
//! provisioner; its compute pods run real `spg-compute` processes (each on its own loopback
//! address as pod IP) against real safekeeper and pageserver daemons. And every manifest in
//! `deploy/kubernetes` and every pod the provisioner builds passes the Kubernetes schemas
//! (`kubernetes-validate`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemons::{https_client, spg_cli, wait_for_env};
use common::*;
use serde_json::Value;
use spg::testing::kubesim::{KubeSim, KubeSimConfig};
use spg::testing::topology::{ip, pki, port_on};
use spg_core::{DatabaseName, Generation};
use spg_lifecycle_lib::compute::config::{default_profile, l2_profile};
use spg_lifecycle_lib::provisioner::kubernetes::pod::{pod_for, KubeSettings};

const NS: &str = "spg";
const IMAGE: &str = "spg:test";
const SK_KEY: &str = "sk-key-0123456789";
const PS_KEY: &str = "ps-key-0123456789";

/// `spg-safekeeper` or `spg-pageserver` on 127.0.0.1, with the test PKI.
fn storage_daemon(program: &str, dir: &Path, args: &[String]) -> ChildGuard {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(program);
    cmd.args(args).env("SPG_LOG", "warn");
    spg::testing::procs::spawn_daemon(cmd, dir.to_path_buf())
}

fn show(data: &Path) -> Value {
    serde_json::from_str(&spg_cli(data, &["db", "show", "appdb"])).unwrap()
}

/// Wait until `cond` holds for the database (panics with the record after `limit`).
fn wait_db(data: &Path, limit: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = show(data);
        if cond(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until the simulation's pods satisfy `cond`.
async fn wait_pods(sim: &KubeSim, limit: Duration, what: &str, cond: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let pods = sim.pods();
        if cond(&pods) {
            return;
        }
        let names: Vec<String> = pods
            .iter()
            .map(|p| format!("{} {}", p["metadata"]["name"], p["status"]["phase"]))
            .collect();
        assert!(Instant::now() < deadline, "{what}: pods {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod_named<'a>(pods: &'a [Value], name: &str) -> Option<&'a Value> {
    pods.iter().find(|p| p["metadata"]["name"] == name)
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

async fn count_rows(ca: &Path, dsn: &str) -> Result<i64, tokio_postgres::Error> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(ca, None));
    let (c, conn) = tokio_postgres::connect(dsn, tls).await?;
    tokio::spawn(conn);
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_pods_through_a_simulated_kubernetes_api() {
    let tmp = reachable_tempdir();
    let root = tmp.path();
    let pki = pki(&root.join("pki"), &[ip(1)]);
    let objects = root.join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let object_store = format!("file://{}", objects.display());
    let tls = |a: &mut Vec<String>| {
        a.push(format!("--tls-cert={}", pki.cert.display()));
        a.push(format!("--tls-key={}", pki.key.display()));
    };

    // The storage daemons the pods reach: three safekeepers and a pageserver.
    let mut guards = Vec::new();
    let mut sk_flags = Vec::new();
    for name in ["sk1", "sk2", "sk3"] {
        let port = port_on(ip(1));
        let mut a = vec![
            format!("--name={name}"),
            format!("--dir={}", root.join(name).display()),
            format!("--listen=127.0.0.1:{port}"),
            format!("--api-key={SK_KEY}"),
            format!("--object-store={object_store}"),
        ];
        tls(&mut a);
        guards.push(storage_daemon(
            env!("CARGO_BIN_EXE_spg-safekeeper"),
            &root.join(name),
            &a,
        ));
        sk_flags.push(format!("--safekeeper={name}=https://127.0.0.1:{port}"));
    }
    let ps_port = port_on(ip(1));
    let mut a = vec![
        format!("--dir={}", root.join("ps").display()),
        format!("--listen=127.0.0.1:{ps_port}"),
        format!("--api-key={PS_KEY}"),
        format!("--object-store={object_store}"),
    ];
    tls(&mut a);
    guards.push(storage_daemon(
        env!("CARGO_BIN_EXE_spg-pageserver"),
        &root.join("ps"),
        &a,
    ));

    // The simulated cluster: image `spg:test` is this build's binaries.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_spg-compute"))
        .parent()
        .unwrap()
        .to_path_buf();
    let sim = KubeSim::start(KubeSimConfig {
        dir: root.join("kube"),
        images: HashMap::from([(IMAGE.to_string(), bin_dir.clone())]),
        first_ip: 60,
    })
    .await
    .unwrap();
    let token_file = root.join("kube-token");
    spg_core::fsmode::write_private(&token_file, &sim.token).unwrap();
    let kube_ca = root.join("kube-ca.pem");
    std::fs::write(&kube_ca, &sim.ca_pem).unwrap();
    // Every pod has its own IP; the agent port is the same in each (as in a cluster).
    let agent_port = port_on(ip(60)).to_string();

    let mut args: Vec<String> = vec![
        "--provisioner=kubernetes".into(),
        format!("--compute-image={IMAGE}"),
        format!("--kube-namespace={NS}"),
        "--kube-platform=test".into(),
        format!("--kube-api-url={}", sim.url),
        format!("--kube-token-file={}", token_file.display()),
        format!("--kube-ca={}", kube_ca.display()),
        format!("--kube-agent-port={agent_port}"),
        "--kube-postgres-port=0".into(),
        "--kube-start-timeout=10s".into(),
        "--kube-pull-backoff=3s".into(),
        format!("--object-store={object_store}"),
        format!("--safekeeper-api-key={SK_KEY}"),
        format!("--safekeeper-ca={}", pki.ca.display()),
        format!("--pageserver=https://127.0.0.1:{ps_port}"),
        format!("--pageserver-api-key={PS_KEY}"),
        format!("--pageserver-ca={}", pki.ca.display()),
        "--idle-timeout=10m".into(),
        "--no-cgroups".into(),
    ];
    args.extend(sk_flags);
    let flags: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = root.join("spg");
    let (gw, api) = (free_port(), free_port());
    let mut up = spg_up(&data, gw, api, &flags, false);
    let env = wait_for_env(&data.join("env"), "SPG_DSN", &mut up);
    let dsn = env.get("SPG_DSN").unwrap().to_string();
    let ca = PathBuf::from(env.get("SPG_API_CA").unwrap());
    // The agents' Secret is in the namespace.
    assert_eq!(sim.pods().len(), 0);

    // 1. A connection wakes the database: one pod, labelled, becoming ready from the agent.
    let dsn2 = dsn.clone();
    let out = tokio::task::spawn_blocking(move || {
        psql_ok(
            &dsn2,
            "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; SELECT count(*) FROM t",
        )
    })
    .await
    .unwrap();
    assert_eq!(out.lines().last(), Some("1000"));
    let pods = sim.pods();
    assert_eq!(pods.len(), 1, "one pod per generation");
    let p = &pods[0];
    assert_eq!(p["metadata"]["name"], "spg-appdb-g1");
    let labels = &p["metadata"]["labels"];
    assert_eq!(labels["spg.dev/platform"], "test");
    assert_eq!(labels["spg.dev/database"], "appdb");
    assert_eq!(labels["spg.dev/generation"], "1");
    assert_eq!(labels["spg.dev/role"], "writer");
    assert_eq!(p["metadata"]["annotations"]["spg.dev/database"], "appdb");
    assert_eq!(p["status"]["phase"], "Running");
    wait_pods(
        &sim,
        Duration::from_secs(10),
        "ready from the agent",
        |ps| ps.iter().any(is_ready),
    )
    .await;
    let st = show(&data);
    let endpoint = st["endpoint"].as_str().unwrap().to_string();
    assert!(
        endpoint.starts_with(&format!("{}:", p["status"]["podIP"].as_str().unwrap())),
        "the compute is reached at its pod's IP: {endpoint}"
    );
    let boot: Vec<&str> = st["last_boot"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(&boot[..2], ["pod", "agent"], "{boot:?}");

    // 2. A stop deletes the pod (after the write-back).
    spg_cli(&data, &["db", "stop", "appdb"]);
    wait_pods(&sim, Duration::from_secs(30), "pod deleted at stop", |ps| {
        ps.is_empty()
    })
    .await;
    assert!(show(&data)["last_error"].is_null());
    assert_eq!(count_rows(&ca, &dsn).await.unwrap(), 1000);
    wait_pods(&sim, Duration::from_secs(10), "the second pod", |ps| {
        pod_named(ps, "spg-appdb-g2").is_some()
    })
    .await;

    // 3. Eviction: the database is marked stopped with the reason, and wakes again.
    assert!(sim.evict(NS, "spg-appdb-g2", "The node was low on resource: memory."));
    let st = wait_db(
        &data,
        Duration::from_secs(30),
        "stopped after eviction",
        |v| v["state"] == "stopped",
    );
    let err = st["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("evicted") && err.contains("The node was low on resource: memory."),
        "last_error: {err}"
    );
    wait_pods(
        &sim,
        Duration::from_secs(30),
        "the evicted pod removed",
        |ps| pod_named(ps, "spg-appdb-g2").is_none(),
    )
    .await;
    assert_eq!(count_rows(&ca, &dsn).await.unwrap(), 1000);
    assert_eq!(show(&data)["generation"], 3);

    // 4. A handoff: the successor starts as a standby pod, is promoted, the old pod goes.
    let http = https_client(&std::fs::read(&ca).unwrap());
    let resp = http
        .post(format!(
            "https://127.0.0.1:{api}/v1/databases/appdb/handoff"
        ))
        .bearer_auth(env.get("SPG_API_KEY").unwrap())
        .json(&serde_json::json!({ "profile": "L2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let st = wait_db(&data, Duration::from_secs(60), "handed off", |v| {
        v["generation"] == 4 && v["scale_state"] == "steady" && v["state"] == "ready"
    });
    assert_eq!(st["profile"], "L2", "{st:#}");
    wait_pods(
        &sim,
        Duration::from_secs(30),
        "only the successor's pod",
        |ps| {
            ps.len() == 1
                && pod_named(ps, "spg-appdb-g4")
                    .is_some_and(|p| p["metadata"]["labels"]["spg.dev/role"] == "standby")
        },
    )
    .await;
    let g4 = pod_named(&sim.pods(), "spg-appdb-g4").cloned().unwrap();
    assert_eq!(
        g4["spec"]["containers"][0]["resources"]["limits"]["memory"], "4096Mi",
        "requests and limits from the L2 profile: {g4:#}"
    );
    assert_eq!(count_rows(&ca, &dsn).await.unwrap(), 1000);

    // 5. The control plane killed: its pod stays; at the next start it is found by label and
    //    deleted, and the next connection starts a new generation.
    drop(up);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        pod_named(&sim.pods(), "spg-appdb-g4").is_some(),
        "pods outlive their control plane"
    );
    let mut up = spg_up(&data, gw, api, &flags, false);
    let _ = wait_for_env(&data.join("env"), "SPG_DSN", &mut up);
    wait_pods(
        &sim,
        Duration::from_secs(30),
        "the stale pod deleted at start",
        |ps| ps.is_empty(),
    )
    .await;
    assert_eq!(show(&data)["state"], "stopped");
    assert_eq!(count_rows(&ca, &dsn).await.unwrap(), 1000);
    assert_eq!(show(&data)["generation"], 5);

    // 6. An image that cannot be pulled: a clear last_error, and for the backoff no new pod.
    spg_cli(&data, &["db", "stop", "appdb"]);
    wait_pods(&sim, Duration::from_secs(30), "stopped", |ps| ps.is_empty()).await;
    sim.set_image(IMAGE, None);
    let created = sim.pods_created();
    let e = count_rows(&ca, &dsn).await.unwrap_err();
    let err = show(&data)["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("image spg:test cannot be pulled") && err.contains("ErrImagePull"),
        "last_error: {err} (client saw {e})"
    );
    assert_eq!(sim.pods_created(), created + 1);
    wait_pods(
        &sim,
        Duration::from_secs(10),
        "the failed pod deleted",
        |ps| ps.is_empty(),
    )
    .await;
    assert!(count_rows(&ca, &dsn).await.is_err());
    assert!(count_rows(&ca, &dsn).await.is_err());
    assert_eq!(
        sim.pods_created(),
        created + 1,
        "no pod per retry within the backoff"
    );
    sim.set_image(IMAGE, Some(bin_dir.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count_rows(&ca, &dsn).await.unwrap(), 1000);

    // 7. No node fits: the start gives up after its timeout, saying why.
    spg_cli(&data, &["db", "stop", "appdb"]);
    wait_pods(&sim, Duration::from_secs(30), "stopped", |ps| ps.is_empty()).await;
    sim.set_unschedulable(Some("0/1 nodes are available: 1 Insufficient memory."));
    assert!(count_rows(&ca, &dsn).await.is_err());
    let err = show(&data)["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("did not run within") && err.contains("Insufficient memory"),
        "last_error: {err}"
    );
    wait_pods(
        &sim,
        Duration::from_secs(10),
        "the pending pod deleted",
        |ps| ps.is_empty(),
    )
    .await;
    sim.set_unschedulable(None);
    assert_eq!(count_rows(&ca, &dsn).await.unwrap(), 1000);

    // A clean stop of the platform stops the compute and deletes its pod.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_pods(
        &sim,
        Duration::from_secs(30),
        "no pod after shutdown",
        |ps| ps.is_empty(),
    )
    .await;
    drop(up);
    drop(guards);
}

/// Whether `kubernetes-validate` is installed (`.ci/run` puts it into /opt/spg-test-py).
fn validator() -> PathBuf {
    let p = PathBuf::from("/opt/spg-test-py/bin/kubernetes-validate");
    assert!(
        p.is_file(),
        "kubernetes-validate missing: run .ci/run, or pip install kubernetes-validate into \
         /opt/spg-test-py"
    );
    p
}

#[test]
fn manifests_and_generated_pods_pass_the_kubernetes_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    // Pods the provisioner builds: writer and standby, with and without limits, with the
    // optional settings.
    let mut settings = KubeSettings::new("spg", "spg:latest", "spg", "spg-compute-cp-0");
    let mut files = Vec::new();
    let db = DatabaseName::new("shop_eu_").unwrap();
    let l1 = default_profile();
    let l2 = l2_profile();
    let mut bare = default_profile();
    bare.limits = Default::default();
    for (i, (profile, standby)) in [(&l1, false), (&l2, true), (&bare, false)]
        .into_iter()
        .enumerate()
    {
        if i == 2 {
            settings.env_secret = Some("spg-object-store".into());
            settings.service_account = Some("spg-compute".into());
            settings.image_pull_policy = Some("IfNotPresent".into());
            settings.postgres_port = 0;
        }
        let pod = pod_for(&settings, &db, Generation(7 + i as u64), profile, standby).unwrap();
        let f = tmp.path().join(format!("pod-{i}.json"));
        std::fs::write(&f, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
        files.push(f);
    }
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&deploy)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 6, "{manifests:?}");
    files.extend(manifests);
    let out = Command::new(validator())
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schema validation failed:\n{text}");
    for f in &files {
        assert!(
            text.contains(&*f.file_name().unwrap().to_string_lossy()),
            "{} was not validated:\n{text}",
            f.display()
        );
    }
    assert!(!text.contains("failed"), "{text}");

    // The control planes' config file in the ConfigMap is one the daemon accepts.
    let cm = std::fs::read_to_string(deploy.join("20-controlplane.yaml")).unwrap();
    let toml: String = cm
        .lines()
        .skip_while(|l| !l.contains("controlplane.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    let conf = tmp.path().join("controlplane.toml");
    std::fs::write(&conf, &toml).unwrap();
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, "not read by check").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spg"))
        .args(["config", "check", "--daemon", "controlplane"])
        .arg(&conf)
        .env("SPG_STATE_STORE", "postgres://spg:pw@state.example/spg")
        .env("SPG_API_KEY", "k1")
        .env("SPG_GATEWAY_API_KEY", "k2")
        .env("SPG_SAFEKEEPER_API_KEY", "k3")
        .env("SPG_PAGESERVER_API_KEY", "k4")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spg config check of the ConfigMap's file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("kubernetes"), "{printed}");
}
