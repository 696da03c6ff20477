//! # spg-gateway-lib
//!
//! The public PostgreSQL entry point of SPG, usable on its own: give it an [`AuthSource`]
//! (credentials), a [`Waker`] (how to start a database) and optionally a [`spg_core::Lease`], and
//! it gives clients one stable address with:
//!
//! - TLS via rustls (`SSLRequest` and PostgreSQL 17 direct TLS with ALPN `postgresql`);
//!   plaintext refused unless allowed;
//! - SCRAM-SHA-256 (and `-PLUS` channel binding) **at the gateway**, before anything wakes;
//! - wake-on-connect: concurrent wakes merged, wake and connect retried with backoff within a
//!   deadline;
//! - SCRAM key passthrough to the compute (the ClientKey recovered from the client's proof);
//! - the gateway's own cancel keys, forwarded to the compute;
//! - leases held while sessions are open, so idle databases can stop;
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

#![warn(missing_docs)]

pub mod backend;
pub mod cancel;
mod deps;
mod error;
pub mod fuzzing;
pub mod leases;
pub mod metrics;
pub mod proto;
pub mod relay;
pub mod scram;
mod server;
mod session;
pub mod sessions;
pub mod stream;
pub mod tls;
pub mod wake;

pub use deps::{AuthSource, Waker};
pub use error::GatewayError;
pub use metrics::GatewayMetrics;
pub use server::{GatewayConfig, GatewayDeps, GatewayServer};
pub use tls::GatewayTls;
