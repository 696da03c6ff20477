//! The binaries as a user runs them: `spg up`, the `spg` client commands, and the standalone
//! `spg-controlplane` + `spg-gateway` daemons.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::daemons::*;

/// A plain HTTP/1.0 GET on loopback; returns the whole response.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Wait until something accepts connections on `port`.
fn wait_listening(port: u16, guard: &mut ChildGuard) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = guard.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("process exited early with {status}");
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spg_up_test(data: &Path, gw: u16, api: u16) -> ChildGuard {
    spg_up(data, gw, api, &["--idle-timeout", "2s"], true)
}

/// Signal the process and wait for it to exit successfully.
fn stop(mut guard: ChildGuard, sig: Signal) -> String {
    kill(Pid::from_raw(guard.pid()), sig).unwrap();
    let mut child = guard.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit after {sig}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exited with {status}");
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        use std::io::Read;
        let _ = so.read_to_string(&mut out);
    }
    out
}

#[test]
fn spg_up_serves_a_dsn_keeps_it_across_restarts_and_leaves_no_postgres() {
    let tmp = reachable_tempdir();
    let data = tmp.path().join("spgdata");
    let (gw, api) = (free_port(), free_port());

    let mut up = spg_up_test(&data, gw, api);
    let env = wait_for_env(&data.join("env"), "SPG_DSN", &mut up);
    wait_listening(gw, &mut up);
    let dsn = env.get("SPG_DSN").unwrap().to_string();
    assert!(dsn.starts_with("postgresql://app:"), "{dsn}");
    assert!(
        dsn.ends_with(&format!("@127.0.0.1:{gw}/appdb?sslmode=require")),
        "{dsn}"
    );
    assert_eq!(
        env.get("SPG_API_URL"),
        Some(format!("https://127.0.0.1:{api}").as_str())
    );
    assert!(env.get("SPG_API_KEY").unwrap().starts_with("spg_"));
    assert!(Path::new(env.get("SPG_API_CA").unwrap()).is_file());

    psql_ok(
        &dsn,
        "CREATE TABLE notes (t text); INSERT INTO notes VALUES ('kept')",
    );
    let shown: serde_json::Value =
        serde_json::from_str(&spg_cli(&data, &["db", "show", "appdb"])).unwrap();
    assert_eq!(shown["state"], "ready");
    let created = spg_cli(&data, &["role", "create", "--db", "appdb", "reporter"]);
    let pw = created
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("generated password printed");
    let reporter = format!("postgresql://reporter:{pw}@127.0.0.1:{gw}/appdb?sslmode=require");
    assert_eq!(psql_ok(&reporter, "SELECT current_user"), "reporter");
    spg_cli(&data, &["db", "create", "other"]);
    let list = spg_cli(&data, &["db", "list"]);
    assert!(list.contains("appdb") && list.contains("other"), "{list}");
    let history = spg_cli(&data, &["db", "history", "appdb"]);
    assert!(history.contains("booting -> ready"), "{history}");

    let out = stop(up, Signal::SIGTERM);
    assert!(out.contains(&dsn), "spg up prints the DSN:\n{out}");
    assert!(
        out.contains(env.get("SPG_API_KEY").unwrap()),
        "spg up prints the API key"
    );
    assert_eq!(postgres_processes_under(tmp.path()), Vec::<i32>::new());

    // Second run: same env, same DSN, same data.
    let mut up = spg_up_test(&data, gw, api);
    wait_listening(gw, &mut up);
    wait_listening(api, &mut up);
    let env2 = wait_for_env(&data.join("env"), "SPG_DSN", &mut up);
    assert_eq!(env2, env, "a later run reuses DSN and API key");
    assert_eq!(psql_ok(&dsn, "SELECT t FROM notes"), "kept");
    stop(up, Signal::SIGINT);
    assert_eq!(postgres_processes_under(tmp.path()), Vec::<i32>::new());
}

/// Every entry under `root` that is not private: files with group or other bits, directories
/// other than 0700, except passages (0710, the compute user's group) at the `passages` given.
fn loose_entries(root: &Path, passages: &[std::path::PathBuf]) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let compute_gid = nix::unistd::Group::from_name("postgres")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    let root_user = nix::unistd::Uid::effective().is_root();
    let mut loose = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        // A mount of a compute that is going away, or an entry removed while walking.
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() || ft.is_socket() {
            continue;
        }
        if ft.is_dir() {
            let passage = passages.contains(&p);
            let ok = mode == 0o700
                || (passage && root_user && mode == 0o710 && Some(meta.gid()) == compute_gid);
            if !ok {
                loose.push(format!("{mode:o} {}", p.display()));
            }
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if mode & 0o077 != 0 {
            loose.push(format!("{mode:o} {}", p.display()));
        }
    }
    loose.sort();
    loose
}

#[test]
fn files_under_a_fresh_data_dir_are_private_and_loosened_ones_are_tightened_at_start() {
    let tmp = reachable_tempdir();
    let data = tmp.path().join("spgdata");
    let (gw, api) = (free_port(), free_port());
    let mut up = spg_up_test(&data, gw, api);
    let env = wait_for_env(&data.join("env"), "SPG_DSN", &mut up);
    wait_listening(gw, &mut up);
    let dsn = env.get("SPG_DSN").unwrap().to_string();
    // State, WAL on the safekeepers, an image written back by a stop, a lazily mounted restart
    // from it, and the pageserver's cache.
    psql_ok(
        &dsn,
        "CREATE TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    );
    spg_cli(&data, &["db", "stop", "appdb"]);
    assert_eq!(psql_ok(&dsn, "SELECT count(*) FROM t"), "20000");
    spg_cli(&data, &["role", "create", "--db", "appdb", "reporter"]);
    // The way to the computes' directories: the data directory (and the template's and
    // branches' scratch directories), and in each generation's
    // directory of its compute process the run directory and the page cache's way down.
    let passages = || {
        let shown: serde_json::Value =
            serde_json::from_str(&spg_cli(&data, &["db", "show", "appdb"])).unwrap();
        let g = shown["generation"].as_u64().unwrap();
        let mut p = vec![
            data.clone(),
            data.join("rollforward"),
            data.join("branching"),
            data.join("computes"),
        ];
        // Each compute process's directory (a spare's too).
        for agent in std::fs::read_dir(data.join("computes")).unwrap().flatten() {
            let dir = agent.path();
            p.extend([dir.join("run"), dir.join("pages"), dir.join("pages/appdb")]);
            p.extend((1..=g).map(|g| dir.join(format!("pages/appdb/g{g}"))));
            p.push(dir);
        }
        p
    };
    for must_exist in [
        "state.db",
        "env",
        "tls/server.key",
        "objects",
        "safekeepers",
        "pageserver",
    ] {
        assert!(
            data.join(must_exist).exists(),
            "{must_exist} is where expected"
        );
    }
    assert_eq!(loose_entries(&data, &passages()), Vec::<String>::new());
    stop(up, Signal::SIGTERM);

    // Loosened by hand (or left by an older version): tightened at the next start.
    use std::os::unix::fs::PermissionsExt;
    let loosen = |rel: &str, mode: u32| {
        std::fs::set_permissions(data.join(rel), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    loosen("state.db", 0o644);
    loosen("safekeepers", 0o755);
    loosen("tls/server.key", 0o644);
    loosen("objects", 0o777);
    let mut up = spg_up_test(&data, gw, api);
    wait_listening(gw, &mut up);
    assert_eq!(psql_ok(&dsn, "SELECT count(*) FROM t"), "20000");
    assert_eq!(loose_entries(&data, &passages()), Vec::<String>::new());
    stop(up, Signal::SIGTERM);
    assert_eq!(postgres_processes_under(tmp.path()), Vec::<i32>::new());
}

#[test]
fn spg_up_recovers_after_being_killed() {
    let tmp = reachable_tempdir();
    let data = tmp.path().join("spgdata");
    let (gw, api) = (free_port(), free_port());
    let mut up = spg_up_test(&data, gw, api);
    let env = wait_for_env(&data.join("env"), "SPG_DSN", &mut up);
    let dsn = env.get("SPG_DSN").unwrap().to_string();
    psql_ok(&dsn, "CREATE TABLE t (v int); INSERT INTO t VALUES (7)");
    // kill -9: the compute is orphaned.
    let mut child = up.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!postgres_processes_under(tmp.path()).is_empty());
    // The next start stops the leftover compute and serves again, with the data.
    let up = spg_up_test(&data, gw, api);
    let deadline = Instant::now() + Duration::from_secs(60);
    let v = loop {
        let out = psql(&dsn, "SELECT v FROM t");
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v.trim(), "7");
    stop(up, Signal::SIGTERM);
    assert_eq!(postgres_processes_under(tmp.path()), Vec::<i32>::new());
}

#[test]
fn gateway_and_control_plane_run_as_separate_daemons() {
    let tmp = reachable_tempdir();
    let cp_data = tmp.path().join("cp");
    let (cp, _env, gateway, gw, metrics, _control) = daemons(
        tmp.path(),
        &["--idle-timeout", "2s", "--lease-ttl", "3s"],
        &[],
    );
    let dsn = format!("postgresql://clerk:pw-clerk@127.0.0.1:{gw}/shop?sslmode=require");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = psql(&dsn, "SELECT current_user");
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "clerk");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let bad = format!("postgresql://clerk:nope@127.0.0.1:{gw}/shop?sslmode=require");
    let out = psql(&bad, "SELECT 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));

    // The database idles out once the gateway's lease is released.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown: serde_json::Value =
            serde_json::from_str(&spg_cli(&cp_data, &["db", "show", "shop"])).unwrap();
        if shown["state"] == "stopped" {
            assert_eq!(shown["wake_count"], 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "database did not idle out: {shown}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = http_get(metrics, "/metrics");
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(text.contains("spg_gateway_auth_failures_total 1"), "{text}");
    assert!(text.contains("spg_gateway_wakes_total 1"), "{text}");
    stop(gateway, Signal::SIGTERM);
    stop(cp, Signal::SIGTERM);
    assert_eq!(postgres_processes_under(tmp.path()), Vec::<i32>::new());
}

#[test]
fn spg_up_refuses_to_run_without_a_wal_quorum() {
    let tmp = common::reachable_tempdir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spg"))
        .args(["up", "--safekeepers", "0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--safekeepers"), "{err}");
}

/// A separate `spg-gateway` daemon registers its control routes with `spg-controlplane`: a
/// handoff then waits for the transaction in flight through it (draining), lets it commit, and
/// switches it to the new writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_drains_and_switches_a_separate_gateway_daemon() {
    let tmp = reachable_tempdir();
    let (cp, env, gateway, gw, _metrics, control) = daemons(
        tmp.path(),
        &["--handoff-drain-timeout", "60s"],
        &["--allow-plaintext"],
    );
    let dsn = format!("host=127.0.0.1 port={gw} user=clerk password=pw-clerk dbname=shop");
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                if c.simple_query("SELECT 1").await.is_ok() {
                    break c;
                }
            }
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Its control routes are HTTPS (its own certificate) and want the token it registered.
    let gw_ca = std::fs::read(tmp.path().join("gw/tls/ca.pem")).unwrap();
    let denied = https_client(&gw_ca)
        .get(format!(
            "https://127.0.0.1:{control}/v1/gateway/databases/shop"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    client
        .batch_execute("CREATE TABLE t (v int); BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    let ca = std::fs::read(env.get("SPG_API_CA").unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let url = format!("{}/v1/databases/shop", env.get("SPG_API_URL").unwrap());
    let key = env.get("SPG_API_KEY").unwrap().to_string();
    let view = || async {
        http.get(&url)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let resp = http
        .post(format!("{url}/handoff"))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "profile": "L2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // The transaction through the daemon holds the drain.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = view().await;
        if v["scale_state"] == "draining" {
            break;
        }
        assert!(Instant::now() < deadline, "never drained: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        view().await["scale_state"],
        "draining",
        "still waiting for it"
    );
    client.batch_execute("COMMIT").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let v = loop {
        let v = view().await;
        if v["scale_state"] != "draining" && v["scale_state"] != "switching" {
            break v;
        }
        assert!(Instant::now() < deadline, "never switched: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(v["scale_state"], "steady", "{v}");
    assert_eq!(v["profile"], "L2", "{v}");
    // The same client session goes on, on the new writer.
    let rows = client
        .simple_query("SELECT count(*) FROM t; SHOW shared_buffers")
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "512MB"]);
    drop(client);
    tokio::task::spawn_blocking(move || {
        stop(gateway, Signal::SIGTERM);
        stop(cp, Signal::SIGTERM);
    })
    .await
    .unwrap();
    assert_eq!(postgres_processes_under(tmp.path()), Vec::<i32>::new());
}
