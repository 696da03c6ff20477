//! The control plane's HTTPS JSON API.
//!
//! Every `/v1/...` route requires `Authorization: Bearer <api key>`; the API key is a platform
//! secret, separate from every database credential. `/healthz`, `/metrics` and the OpenAPI 3.1
//! document `/v1/openapi.json` are open. The document is generated from the routes themselves
//! (each is registered together with its description, [`utoipa_axum`]), so the two cannot drift.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/databases` `{"name"}` | create a database |
//! | GET | `/v1/databases` | list databases |
//! | GET | `/v1/databases/{name}` | show one |
//! | POST | `/v1/databases/{name}/stop` | stop its compute now |
//! | POST | `/v1/databases/{name}/wake` | start its compute; returns the endpoint |
//! | GET | `/v1/databases/{name}/transitions?limit=N` | its recent state transitions |
//! | GET | `/v1/transitions?limit=N` | recent transitions of all databases |
//! | GET | `/v1/databases/{name}/usage?from=&to=` | usage over a span ([`crate::usage`]) |
//! | POST | `/v1/databases/{name}/roles` `{"name","password"}` or `{"name","scram_verifier"}` | create a role |
//! | GET | `/v1/databases/{name}/roles` | list roles (names only) |
//! | GET | `/v1/databases/{name}/roles/{role}/verifier` | a role's SCRAM verifier (for gateways) |
//! | POST | `/v1/databases/{name}/leases` `{"holder"}` | take a lease |
//! | POST | `/v1/leases/{id}/renew` | renew it |
//! | DELETE | `/v1/leases/{id}` | release it |
//! | POST | `/v1/gateways` `{"url", "token"}` | register (or refresh) a gateway daemon's control routes ([`gateway_control`]) |
//! | POST | `/v1/databases/{name}/handoff` `{"profile"}` | hand the writer off to another profile |
//! | GET | `/v1/openapi.json` | this API as an OpenAPI 3.1 document |
//! | GET | `/v1/events[?database=]` | lifecycle events, server-sent ([`crate::events`]) |
//! | GET | `/v1/webhooks/deliveries` | the webhooks' delivery log ([`crate::webhooks`]) |
//! | GET, POST, DELETE | `/console`, `/console/session` | the web console ([`console`]); its session may stand in for the key |
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with a matching HTTP status; `503`
//! means retrying may succeed.

pub mod client;
pub mod console;
pub mod gateway_control;
pub mod http;
pub mod model;
pub mod server;

pub use client::ApiClient;
pub use server::{router, router_with_console, router_with_peers, ApiKey, ApiKeys};
