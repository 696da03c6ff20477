//! `spg`: run the whole platform on this machine (`spg up`), and manage databases and roles
//! through the control plane's API.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use spg::commands::{self, ConfigCommand, DbCommand, RoleCommand, UpArgs};

/// The gateway's allocator (`spg up` runs the gateway), as in the `spg-gateway` daemon.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "spg", version, about = "SPG: serverless PostgreSQL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole platform on this machine (control plane, gateway, local computes).
    Up(Box<UpArgs>),
    /// Manage databases.
    #[command(subcommand)]
    Db(DbCommand),
    /// Manage roles.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Check config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Fetch one WAL file for a compute's recovery (PostgreSQL's `restore_command`; not for
    /// interactive use). Exits 0 when fetched, 1 when the file does not exist, 2 on errors.
    #[command(hide = true)]
    WalRestore {
        /// The compute's restore endpoint.
        url: String,
        /// File name PostgreSQL asks for (`%f`).
        file: String,
        /// Where PostgreSQL wants it (`%p`).
        dest: PathBuf,
    },
}

fn main() -> Result<()> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `spg up` takes --config FILE; the file's settings go in after `up`.
    let cli: Cli = if argv.get(1).is_some_and(|a| a == "up") {
        spg::config::parse_from(argv, 2)
    } else {
        Cli::parse()
    };
    if let Command::WalRestore { url, file, dest } = &cli.command {
        // No runtime, no logging setup: PostgreSQL runs this once per file during recovery.
        spg::wal_restore_exit(url, file, dest);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Up(args) => commands::up(*args).await,
            Command::Db(cmd) => commands::db(cmd).await,
            Command::Role(cmd) => commands::role(cmd).await,
            Command::Config(ConfigCommand::Check { file, daemon }) => {
                commands::config_check(&file, daemon)
            }
            Command::WalRestore { .. } => Ok(()),
        }
    })
}
