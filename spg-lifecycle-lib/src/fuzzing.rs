//! Entry points of the fuzz targets in `fuzz/` over this crate's parsers of untrusted bytes,
//! shared with the stable corpus tests (`tests/fuzz_corpus.rs`).

use crate::api::gateway_control::FrozenBody;
use crate::api::model::{AcquireLease, CreateDatabase, CreateRole, HandoffRequest};
use crate::api::server::RegisterGateway;

/// Fuzz entry: a JSON body sent to the HTTPS APIs (control plane, gateway control routes, the
/// compute agent, and the agent's answers as the control plane reads them), read as every body
/// type and validated as the handlers do. Must never panic.
pub fn api_bodies(data: &[u8]) {
    agent_bodies(data);
    if let Ok(b) = serde_json::from_slice::<CreateDatabase>(data) {
        let _ = spg_core::DatabaseName::new(b.name);
    }
    if let Ok(b) = serde_json::from_slice::<CreateRole>(data) {
        let _ = spg_core::RoleName::new(b.name.clone());
        if let Some(v) = &b.scram_verifier {
            let _ = spg_core::scram::ScramVerifier::parse(v);
        }
    }
    if let Ok(b) = serde_json::from_slice::<HandoffRequest>(data) {
        let _ = b.profile.len();
    }
    if let Ok(b) = serde_json::from_slice::<RegisterGateway>(data) {
        let _ = crate::api::gateway_control::is_loopback_url(&b.url);
        if let Some(ca) = &b.ca_pem {
            let _ = crate::api::http::client_trusting(ca.as_bytes());
        }
    }
    if let Ok(b) = serde_json::from_slice::<FrozenBody>(data) {
        let _ = b.bound_ms.map(std::time::Duration::from_millis);
    }
    if let Ok(b) = serde_json::from_slice::<AcquireLease>(data) {
        let _ = b.holder.len();
    }
}

/// The compute agent's requests and answers.
fn agent_bodies(data: &[u8]) {
    use crate::agent::*;
    if let Ok(b) = serde_json::from_slice::<StartRequest>(data) {
        let _ = crate::compute::ComputeSpec::try_from(b.spec);
    }
    if let Ok(b) = serde_json::from_slice::<StandbyRequest>(data) {
        let _ = crate::compute::ComputeSpec::try_from(b.spec);
    }
    if let Ok(b) = serde_json::from_slice::<RolesRequest>(data) {
        let _ = roles_from_wire(b.roles);
    }
    if let Ok(b) = serde_json::from_slice::<CatchUpRequest>(data) {
        let _ = std::time::Duration::from_millis(b.timeout_ms.min(600_000));
    }
    if let Ok(b) = serde_json::from_slice::<AgentError>(data) {
        let _ = known_step(&b.step);
    }
    let _ = serde_json::from_slice::<Started>(data);
    let _ = serde_json::from_slice::<StandbyStarted>(data);
    let _ = serde_json::from_slice::<AgentStatus>(data);
    let _ = serde_json::from_slice::<LoadSample>(data);
    let _ = serde_json::from_slice::<crate::compute::StopReport>(data);
}

/// Fuzz entry: an answer of the restore endpoint, as a compute's `restore_command` reads it.
/// Must never panic; a body it accepts is exactly what follows the head.
pub fn restore_response(data: &[u8]) {
    if let Ok(Some(body)) = crate::compute::wal::parse_restore_response(data) {
        assert!(data.ends_with(body));
    }
}

/// A fuzz entry point.
pub type FuzzTarget = fn(&[u8]);

/// The fuzz targets of this crate, by name (for the corpus tests).
pub const TARGETS: &[(&str, FuzzTarget)] = &[
    ("api_bodies", api_bodies),
    ("restore_response", restore_response),
];
