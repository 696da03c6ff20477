//! Composition of SPG's libraries into the platform's processes.
//!
//! - [`platform::Platform`]: control plane, local provisioner, page store, gateway and HTTPS API
//!   in one process (`spg up`).
//! - [`adapters`]: the gateway's [`spg_gateway_lib::AuthSource`] and [`spg_gateway_lib::Waker`]
//!   on top of the control plane, in-process or over its API.
//! - [`tls`]: the self-signed CA and server certificate generated on first start, or a configured
//!   certificate.
//! - [`envfile`]: `<data-dir>/env`, the shell-sourceable file with the DSN, API URL and key.
//! - [`safekeeper_http`], [`pageserver_http`]: the daemons' HTTPS APIs and their clients.
//! - [`branch`]: making a branch's first image from its parent's images and WAL.
//! - [`rollforward`]: rolling a crashed database's newest image forward from the WAL quorum.
//! - [`cli`], [`daemons`], [`config`]: the daemons' settings (flags, environment variables and
//!   TOML config files) and [`commands`]: the `spg` command's subcommands; the binaries in
//!   `bins/` only parse and compose these.
//! - `testing` (feature `testing`): process guards and the multi-host topology of the tests and
//!   benchmarks.
//!
//! The whole platform in this process, as `spg up` runs it:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use spg::platform::{Platform, PlatformConfig};
//!
//! let platform = Platform::start(PlatformConfig::new("/var/lib/spg")).await?;
//! println!("API: {}", platform.api_url());
//! platform.shutdown().await;
//! # Ok(()) }
//! ```

pub mod adapters;
pub mod branch;
pub mod cli;
pub mod commands;
pub mod compute_agent;
pub mod config;
pub mod daemon_http;
pub mod daemons;
pub mod envfile;
pub mod pageserver_http;
pub mod platform;
pub mod rollforward;
pub mod safekeeper_http;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

/// Start `tracing` output on stderr, filtered by `SPG_LOG` (or `RUST_LOG`), default `info`.
pub fn init_logging() {
    let filter = std::env::var("SPG_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Make `dir` a daemon's private directory: created if missing (missing parents get the default
/// mode; only the daemon's own tree is private), and everything in it that the daemon's user owns
/// tightened to `0600` files in `0700` directories (what an older version or a hand-made copy
/// left looser). Passages for a compute's user are made again by the code that needs them.
pub fn secure_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    spg_core::fsmode::private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let done = spg_core::fsmode::tighten_tree(dir, &[])
        .with_context(|| format!("tightening the modes under {}", dir.display()))?;
    if done.changed > 0 {
        tracing::warn!(dir = %dir.display(), changed = done.changed,
                       "files and directories readable by others were made private (0600/0700)");
    }
    Ok(())
}

/// Parse a duration like `3s`, `500ms`, `5m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Connection pooling options of the gateway (`spg up`, `spg-gateway`).
#[derive(clap::Args, Debug, Clone)]
pub struct PoolArgs {
    /// Pool mode of databases without their own: `transaction` or `session`.
    #[arg(long, env = "SPG_POOL_MODE", default_value = "transaction")]
    pub pool_mode: spg_gateway_lib::pool::PoolMode,
    /// Backend connections per (database, role).
    #[arg(long, env = "SPG_POOL_SIZE", default_value_t = 20)]
    pub pool_size: usize,
    /// Per-database pool settings `db=mode[:size]` (repeatable or comma-separated), e.g.
    /// `legacy=session:5`.
    #[arg(long = "pool", env = "SPG_POOLS", value_delimiter = ',')]
    pub pools: Vec<String>,
    /// How long a client waits for a free backend connection before SQLSTATE 57014.
    #[arg(long, env = "SPG_QUERY_WAIT_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub query_wait_timeout: std::time::Duration,
    /// Named prepared statements one client may hold (the least recently used is forgotten).
    #[arg(long, env = "SPG_MAX_CLIENT_STATEMENTS", default_value_t = 5_000)]
    pub max_client_statements: usize,
    /// Ask the backend what session state a client left after every transaction, not only
    /// after those with a statement that may have created some.
    #[arg(long, env = "SPG_POOL_CHECK_STATE_ALWAYS")]
    pub check_state_always: bool,
}

/// Limits of the HTTP servers of a daemon (API, safekeeper, pageserver, gateway control,
/// metrics).
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// Time for a TLS handshake, and for a request's head from its first byte.
    #[arg(long, env = "SPG_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: std::time::Duration,
    /// Time an HTTP connection may make no progress.
    #[arg(long, env = "SPG_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http_idle_timeout: std::time::Duration,
    /// HTTP connections at once.
    #[arg(long, env = "SPG_HTTP_MAX_CONNECTIONS", default_value_t = 512)]
    pub http_max_connections: usize,
}

impl HttpArgs {
    /// The servers' limits.
    pub fn limits(&self) -> spg_lifecycle_lib::api::http::HttpLimits {
        spg_lifecycle_lib::api::http::HttpLimits {
            header_timeout: self.http_header_timeout,
            idle_timeout: self.http_idle_timeout,
            max_connections: self.http_max_connections.max(1),
            ..Default::default()
        }
    }
}

/// Limits of logins at the gateway (`spg up`, `spg-gateway`).
#[derive(clap::Args, Debug, Clone)]
pub struct LoginArgs {
    /// Time a client has for TLS, startup and authentication together.
    #[arg(long, env = "SPG_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: std::time::Duration,
    /// Connections still logging in, in total (when reached, the oldest is closed).
    #[arg(long, env = "SPG_MAX_PREAUTH", default_value_t = 2_000)]
    pub max_preauth: usize,
    /// Connections still logging in from one source address.
    #[arg(long, env = "SPG_MAX_PREAUTH_PER_ADDRESS", default_value_t = 1_000)]
    pub max_preauth_per_address: usize,
    /// Failed logins from one address before it is locked out (the first 5 are answered at
    /// once, later ones after doubling delays up to 5 s).
    #[arg(long, env = "SPG_LOGIN_LOCKOUT_AFTER", default_value_t = 20)]
    pub login_lockout_after: u32,
    /// How long a lockout lasts.
    #[arg(long, env = "SPG_LOGIN_LOCKOUT", default_value = "5m", value_parser = parse_duration)]
    pub login_lockout: std::time::Duration,
}

impl LoginArgs {
    /// The gateway's login limits.
    pub fn limits(&self) -> spg_gateway_lib::LoginLimits {
        let d = spg_gateway_lib::LoginLimits::default();
        let throttle = spg_core::throttle::ThrottlePolicy {
            lockout_after: self.login_lockout_after.max(1),
            lockout: self.login_lockout,
            ..d.address_throttle
        };
        spg_gateway_lib::LoginLimits {
            handshake_timeout: self.handshake_timeout,
            max_preauth: self.max_preauth.max(1),
            max_preauth_per_address: self.max_preauth_per_address.max(1),
            address_throttle: throttle,
            role_throttle: throttle,
            ..d
        }
    }
}

/// Raise this process's open-file limit to its hard limit: a gateway holds a descriptor per
/// client, per pending login and per backend connection.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, "cannot raise the open-file limit");
            }
        }
    }
}

impl PoolArgs {
    /// The gateway's pool configuration.
    pub fn config(&self) -> anyhow::Result<spg_gateway_lib::pool::PoolConfig> {
        use spg_gateway_lib::pool::{DatabasePool, PoolConfig};
        let mut c = PoolConfig {
            mode: self.pool_mode,
            size: self.pool_size.max(1),
            query_wait_timeout: self.query_wait_timeout,
            max_statements_per_client: self.max_client_statements.max(1),
            check_state_always: self.check_state_always,
            ..PoolConfig::default()
        };
        for o in self.pools.iter().filter(|o| !o.trim().is_empty()) {
            let (db, rest) = o
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("pool setting {o:?} is not db=mode[:size]"))?;
            let (mode, size) = match rest.split_once(':') {
                Some((m, s)) => (m, Some(s)),
                None => (rest, None),
            };
            let mode = mode.parse().map_err(anyhow::Error::msg)?;
            let size = size
                .map(|s| s.parse::<usize>())
                .transpose()
                .map_err(|_| anyhow::anyhow!("pool setting {o:?}: size is not a number"))?;
            c.databases.insert(
                db.trim().to_string(),
                DatabasePool {
                    mode: Some(mode),
                    size,
                },
            );
        }
        Ok(c)
    }
}

/// A random secret of `n` characters from `[A-Za-z0-9]`.
pub fn random_secret(n: usize) -> String {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Wait for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Run as PostgreSQL's `restore_command` (`<program> wal-restore <url> %f %p`): fetch the file and
/// exit 0 when fetched, 1 when it does not exist, and 126 on errors. PostgreSQL takes any exit
/// status up to 125 for "no such file" and ends recovery there, which after a failed read would
/// promote without WAL the quorum holds; above 125 it aborts the start instead.
pub fn wal_restore_exit(url: &str, file: &str, dest: &std::path::Path) -> ! {
    match spg_lifecycle_lib::compute::wal::fetch_wal_file(url, file, dest) {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("wal-restore {file}: {e}");
            std::process::exit(126)
        }
    }
}

/// For programs that serve as their own `restore_command` (benchmarks, embedders): if this process
/// was started as `<program> wal-restore <url> <file> <dest>`, do that and exit.
pub fn wal_restore_if_invoked() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 5 && args[1] == "wal-restore" {
        wal_restore_exit(&args[2], &args[3], std::path::Path::new(&args[4]));
    }
}

/// Collect every database's garbage on `ps` every `every`, until `stop`. Archived WAL under
/// `wal/<db>` in the same object store is collected too.
pub fn spawn_gc_loop(
    ps: std::sync::Arc<spg_storage_lib::pageserver::Pageserver>,
    every: std::time::Duration,
    policy: spg_storage_lib::pageserver::gc::GcPolicy,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let dbs = match ps.objects().databases().await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collection: listing databases failed");
                    continue;
                }
            };
            for db in dbs {
                let wal = spg_storage_lib::safekeeper::node::archive_prefix(&db);
                if let Err(e) = ps.gc(&db, &policy, None, Some(&wal)).await {
                    tracing::warn!(%db, error = %e, "garbage collection failed");
                }
            }
        }
    })
}
