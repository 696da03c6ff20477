//! `spg-compute`: the compute agent for one generation of one database, as its own process (a
//! child of a local control plane, or a pod). The control plane drives it over its HTTPS API.
//! It also serves as its computes' `restore_command` (`spg-compute wal-restore ...`).

use anyhow::Result;

fn main() -> Result<()> {
    spg::wal_restore_if_invoked();
    spg::init_logging();
    let args: spg::compute_agent::ComputeArgs = spg::config::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(spg::compute_agent::run(args))
}
