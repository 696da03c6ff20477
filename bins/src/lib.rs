//! Composition of SPG's libraries into the platform's processes.
//!
//! - [`platform::Platform`]: control plane, local provisioner, page store, gateway and HTTPS API
//!   in one process (`spg up`).
//! - [`adapters`]: the gateway's [`spg_gateway_lib::AuthSource`] and [`spg_gateway_lib::Waker`]
//!   on top of the control plane, in-process or over its API.
//! - [`tls`]: the self-signed CA and server certificate generated on first start, or a configured
//!   certificate.
//! - [`envfile`]: `<data-dir>/env`, the shell-sourceable file with the DSN, API URL and key.

pub mod adapters;
pub mod cli;
pub mod envfile;
pub mod platform;
pub mod safekeeper_http;
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

/// Parse a duration like `3s`, `500ms`, `5m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
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
