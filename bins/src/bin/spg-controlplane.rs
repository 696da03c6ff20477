//! `spg-controlplane`: the control plane as its own daemon — state, local computes and the HTTPS
//! API that gateways (`spg-gateway`) and the `spg` command talk to.

use anyhow::Result;
use clap::Parser;
use spg::cli::{write_env, PlatformArgs};
use spg::platform::Platform;

#[derive(Parser)]
#[command(name = "spg-controlplane", version, about = "SPG control plane daemon")]
struct Args {
    #[command(flatten)]
    platform: PlatformArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    spg::init_logging();
    let args = Args::parse();
    let (data_dir, existing, cfg) = args.platform.prepare()?;
    let platform = Platform::start(cfg).await?;
    write_env(&data_dir, existing, &platform, None)?;
    tracing::info!(api = %platform.api_url(), data_dir = %data_dir.display(), "control plane ready");
    spg::shutdown_signal().await;
    platform.shutdown().await;
    Ok(())
}
