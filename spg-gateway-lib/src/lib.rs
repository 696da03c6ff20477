//! # spg-gateway-lib
//!
//! The public PostgreSQL entry point of SPG, usable on its own: give it an [`AuthSource`]
//! (credentials), a [`Waker`] (how to start a database) and optionally a [`spg_core::Lease`], and
//! it gives clients one stable address with:
//!
//! - TLS via rustls (`SSLRequest` and PostgreSQL 17 direct TLS with ALPN `postgresql`);
//!   plaintext refused unless allowed;
//! - SCRAM-SHA-256 (and `-PLUS` channel binding) **at the gateway**, before anything wakes;
//! - limits on what a client holds before it logs in (pending logins per address and in total,
//!   a handshake deadline) and throttling of failed logins ([`limits`]);
//! - wake-on-connect: concurrent wakes merged, wake and connect retried with backoff within a
//!   deadline;
//! - SCRAM key passthrough to the compute (the ClientKey recovered from the client's proof);
//! - connection pooling per (database, role) in `transaction` (default) or `session` mode:
//!   transaction boundaries from `ReadyForQuery`, session parameters and protocol-level named
//!   prepared statements carried across backends, clients pinned while they hold state that
//!   cannot move (see [`pool`] and [`proto::sql`]), a queue with a timeout;
//! - the gateway's own cancel keys, forwarded to the backend the session holds;
//! - a lease held while transactions run (and briefly after), so idle databases can stop even
//!   with clients connected; their next transaction wakes the database;
//! - an admin console (`SHOW POOLS`, `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW STATS`);
//! - SQLSTATE-coded errors that do not leak internals; malformed or oversized messages end only
//!   the offending connection.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn run(auth: Arc<dyn spg_gateway_lib::AuthSource>, waker: Arc<dyn spg_gateway_lib::Waker>) {
//! use spg_gateway_lib::{GatewayConfig, GatewayDeps, GatewayMetrics, GatewayServer};
//! let gw = GatewayServer::new(
//!     GatewayConfig { allow_plaintext: true, ..GatewayConfig::default() },
//!     GatewayDeps { auth, waker, lease: None },
//!     GatewayMetrics::default(),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6432").await.unwrap();
//! gw.serve(listener, tokio_util::sync::CancellationToken::new()).await;
//! # }
//! ```

#![deny(missing_docs)]

pub mod admin;
pub mod backend;
pub mod cancel;
mod connect;
mod deps;
mod error;
pub mod fuzzing;
pub mod leases;
pub mod limits;
pub mod metrics;
mod password;
pub mod pool;
mod pooled;
pub mod proto;
pub mod scram;
mod server;
mod session;
pub mod sessions;
pub mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod wake;

pub use deps::{AuthSource, Waker};
pub use error::GatewayError;
pub use limits::LoginLimits;
pub use metrics::GatewayMetrics;
pub use password::ClientAuth;
pub use server::{GatewayConfig, GatewayDeps, GatewayServer};
pub use tls::GatewayTls;
