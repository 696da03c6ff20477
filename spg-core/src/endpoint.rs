use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::Generation;

/// Where a running compute accepts PostgreSQL connections, and which generation answers there.
/// An endpoint is only valid for its generation: after a stop or crash the next generation may
/// listen elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeEndpoint {
    /// Address of the compute's postmaster (loopback for local computes).
    pub addr: SocketAddr,
    /// Generation of the compute listening at `addr`.
    pub generation: Generation,
}
