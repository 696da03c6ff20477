//! Helpers shared by the examples in this directory:
//!
//! - `wake_on_connect`: embed `spg-gateway-lib` with your own credentials and your own
//!   [`spg_gateway_lib::Waker`] — here one that starts a PostgreSQL compute with SPG's compute
//!   agent on the first connection.
//! - `api_client`: run the platform in-process and drive it through the HTTPS API client.
//! - `custom_control_plane`: SPG's control plane and HTTPS API over your own `Provisioner` (a
//!   fixed pool of data directories) and your own `StateStore` (in memory, checked by SPG's
//!   StateStore conformance suite).
//! - `reference_daemons`: the daemons of the multi-host topology on loopback, each from its
//!   own config file, queried through the DSN naming both gateways.
//! - `property_test_my_page_store`: your own `PageStore` and `WalStore` checked by SPG's
//!   exported suites (PageStore conformance; the safekeeper simulation, seeded and with
//!   proptest's schedules of crashes and partitions), which also catch a broken variant.
//!
//! Run one with `cargo run -p spg-examples --example wake_on_connect`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A fresh scratch directory under the system temporary directory that the compute user (the
/// `postgres` user when running as root) can reach.
pub fn scratch_dir(name: &str) -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("spg-example-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}
