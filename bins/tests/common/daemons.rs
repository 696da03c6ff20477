//! Platforms of separate daemons as a user runs them: `spg-controlplane`, `spg-gateway`,
//! `spg-safekeeper` and `spg-pageserver` processes, and the `spg` client commands against them.

use std::path::Path;
use std::process::Command;

use spg::envfile::EnvFile;

use super::*;

pub const SPG_GATEWAY: &str = env!("CARGO_BIN_EXE_spg-gateway");
pub const SPG_CONTROLPLANE: &str = env!("CARGO_BIN_EXE_spg-controlplane");

pub use spg::testing::topology::wait_for_env;

/// Run an `spg` client command against the platform whose data directory is `data`.
pub fn spg_cli(data: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_spg"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("SPG_API_URL")
        .env_remove("SPG_API_KEY")
        .env_remove("SPG_API_CA")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `spg-controlplane` on `tmp/cp` with its API on `api` (again: the same state and keys).
/// Killed on drop with every postgres under `tmp`.
pub fn controlplane(tmp: &Path, api: u16, cp_args: &[&str]) -> ChildGuard {
    let child = Command::new(SPG_CONTROLPLANE)
        .arg("--data-dir")
        .arg(tmp.join("cp"))
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .args(cp_args)
        .env("SPG_LOG", "warn")
        .spawn()
        .unwrap();
    ChildGuard {
        child: Some(child),
        dir: tmp.to_path_buf(),
    }
}

/// `spg-controlplane` (with `cp_args`) and a `spg-gateway` daemon (with `gw_args`) using its
/// API with the gateway key, in `tmp`, with database `shop` and role `clerk` (`pw-clerk`).
/// Returns the control plane's guard and env file, the gateway's guard, and the gateway's, its
/// metrics' and its control routes' ports.
pub fn daemons(
    tmp: &Path,
    cp_args: &[&str],
    gw_args: &[&str],
) -> (ChildGuard, EnvFile, ChildGuard, u16, u16, u16) {
    let cp_data = tmp.join("cp");
    // Every listener on port 0: the OS chooses and the daemons write what they bound (a port
    // chosen ahead could be taken by another process in between).
    let mut cp = controlplane(tmp, 0, cp_args);
    let env = wait_for_env(&cp_data.join("env"), "SPG_API_KEY", &mut cp);
    spg_cli(&cp_data, &["db", "create", "shop"]);
    spg_cli(
        &cp_data,
        &[
            "role",
            "create",
            "--db",
            "shop",
            "clerk",
            "--password",
            "pw-clerk",
        ],
    );
    let gw_env = tmp.join("gw/env");
    let _ = std::fs::remove_file(&gw_env);
    let child = Command::new(SPG_GATEWAY)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--control-listen", "127.0.0.1:0"])
        .args(gw_args)
        .arg("--data-dir")
        .arg(tmp.join("gw"))
        .env("SPG_API_URL", env.get("SPG_API_URL").unwrap())
        // The gateway's own key: verifiers, wakes, leases and registering, nothing else.
        .env("SPG_API_KEY", env.get("SPG_GATEWAY_API_KEY").unwrap())
        .env("SPG_API_CA", env.get("SPG_API_CA").unwrap())
        .env("SPG_LOG", "warn")
        .spawn()
        .unwrap();
    // Its guard kills only what is under its own directory (the computes are the control
    // plane's).
    let mut gateway = ChildGuard {
        child: Some(child),
        dir: tmp.join("gw"),
    };
    let bound = wait_for_env(&gw_env, "SPG_GATEWAY_ADDR", &mut gateway);
    let port = |key: &str| {
        bound
            .get(key)
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port())
            .unwrap_or_else(|| panic!("{} has no {key}", gw_env.display()))
    };
    let (gw, metrics, control) = (
        port("SPG_GATEWAY_ADDR"),
        port("SPG_GATEWAY_METRICS_ADDR"),
        port("SPG_GATEWAY_CONTROL_ADDR"),
    );
    (cp, env, gateway, gw, metrics, control)
}

/// An HTTPS client trusting only `ca_pem`.
pub fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .build()
        .unwrap()
}
