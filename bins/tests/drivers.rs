//! Drivers from other ecosystems through transaction pooling, each with its own way of using
//! named prepared statements: psycopg 3 (server-side prepare, evictions), asyncpg (named
//! statements and type introspection by default), node-postgres (named queries), pgjdbc
//! (prepareThreshold reached). Several connections per driver interleave on three backends.
//!
//! `.ci/run` installs the drivers: a Python venv with psycopg and asyncpg at
//! `/opt/spg-test-py` (or `SPG_TEST_PYTHON`), npm `pg` under `/opt/spg-test-node` (or
//! `SPG_TEST_NODE_MODULES`), and Debian's `libpostgresql-jdbc-java` with a JDK.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SPG_TEST_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from("/opt/spg-test-py/bin/python");
    assert!(
        venv.exists(),
        "Python drivers missing: run .ci/run, or create /opt/spg-test-py with psycopg and asyncpg"
    );
    venv
}

fn node_modules() -> PathBuf {
    let p = std::env::var_os("SPG_TEST_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/spg-test-node/node_modules"));
    assert!(
        p.join("pg").exists(),
        "node-postgres missing: run .ci/run (npm install --prefix /opt/spg-test-node pg)"
    );
    p
}

/// Run a driver program against the platform; returns its last stdout line.
fn run(t: &TestPlatform, mut cmd: Command) -> String {
    let out = cmd
        .env("SPG_TEST_DSN", &t.dsn)
        .env("SPG_TEST_HOST", "127.0.0.1")
        .env("SPG_TEST_PORT", t.gateway_port().to_string())
        .env("SPG_TEST_USER", ROLE)
        .env("SPG_TEST_PASSWORD", PASSWORD)
        .env("SPG_TEST_DB", DB)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().last().unwrap_or_default().trim().to_string()
}

/// Statements prepared on backends and answered from their caches so far.
fn prepare_counts(t: &TestPlatform) -> (u64, u64) {
    let stats = psql_ok(&admin_dsn(t), "SHOW STATS");
    let row: Vec<&str> = stats.lines().next().unwrap().split('|').collect();
    (row[12].parse().unwrap(), row[13].parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_node_and_java_drivers_through_transaction_pooling() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| c.pool.size = 3).await;
    let dir = drivers_dir();
    tokio::task::block_in_place(|| {
        let mut cmd = Command::new(python());
        cmd.arg(dir.join("psycopg_test.py"));
        assert_eq!(run(&t, cmd), "ok 400", "psycopg 3");

        let mut cmd = Command::new(python());
        cmd.arg(dir.join("asyncpg_test.py"));
        assert_eq!(run(&t, cmd), "ok 400", "asyncpg");

        let mut cmd = Command::new("node");
        cmd.arg(dir.join("node_pg_test.js"))
            .env("NODE_PATH", node_modules());
        assert_eq!(run(&t, cmd), "ok 320", "node-postgres");

        let jar = Path::new("/usr/share/java/postgresql.jar");
        assert!(
            jar.exists(),
            "pgjdbc missing: run .ci/run (apt-get install libpostgresql-jdbc-java)"
        );
        let mut cmd = Command::new("java");
        cmd.arg("-cp").arg(jar).arg(dir.join("JdbcTest.java"));
        assert_eq!(run(&t, cmd), "ok 300", "pgjdbc");

        // Named statements were prepared per backend and reused from its cache.
        let (prepares, hits) = prepare_counts(&t);
        assert!(prepares > 0 && hits > 0, "prepares {prepares}, hits {hits}");
        let pools = psql_ok(&admin_dsn(&t), "SHOW POOLS");
        let row: Vec<&str> = pools.lines().next().unwrap().split('|').collect();
        assert!(row[9].parse::<usize>().unwrap() <= 3, "{pools}");
    });
    t.shutdown().await;
}

/// psycopg 3 (LATIN9, EUC_JP, SJIS) and asyncpg (LATIN9, EUC_JP): non-ASCII text in queries,
/// identifiers, parameters, settings and COPY passes through unchanged, and the
/// `client_encoding` ParameterStatus is PostgreSQL's own spelling. (pgjdbc speaks UTF-8 only:
/// it ends the connection if `client_encoding` changes, unless told it may for file COPY.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_client_encodings_pass_through_unchanged() {
    let t = TestPlatform::start_with(Duration::from_secs(300), |c| c.pool.size = 3).await;
    let dir = drivers_dir();
    tokio::task::block_in_place(|| {
        let mut cmd = Command::new(python());
        cmd.arg(dir.join("encodings_test.py"));
        assert_eq!(run(&t, cmd), "ok 302", "psycopg and asyncpg");
    });
    t.shutdown().await;
}
