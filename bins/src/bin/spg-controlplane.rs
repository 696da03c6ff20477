//! `spg-controlplane`: the control plane as its own daemon — state, local computes and the HTTPS
//! API that gateways (`spg-gateway`) and the `spg` command talk to.

use anyhow::Result;
use spg::cli::write_env;
use spg::platform::Platform;

#[tokio::main]
async fn main() -> Result<()> {
    spg::init_logging();
    let args: spg::daemons::ControlPlaneArgs = spg::config::parse();
    let (data_dir, existing, cfg) = args.platform.prepare()?;
    let platform = Platform::start(cfg).await?;
    write_env(&data_dir, existing, &platform, None)?;
    tracing::info!(api = %platform.api_url(), data_dir = %data_dir.display(), "control plane ready");
    spg::shutdown_signal().await;
    platform.shutdown().await;
    Ok(())
}
