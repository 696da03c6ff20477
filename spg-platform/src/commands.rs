//! The `spg` command's subcommands: `up` (the whole platform in this process), `db` and
//! `role` (over the API), and `config check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use spg_core::{DatabaseName, RoleName};
use spg_lifecycle_lib::api::ApiClient;
use spg_lifecycle_lib::{LifecycleError, RoleSecret};

use crate::cli::{env_path, write_env, PlatformArgs};
use crate::envfile::EnvFile;
use crate::platform::Platform;

/// `spg up`'s flags.
#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// PostgreSQL entry point.
    #[arg(long, env = "SPG_GATEWAY_LISTEN", default_value = "127.0.0.1:6432")]
    pub gateway_listen: SocketAddr,
    /// Accept plaintext (non-TLS) client connections.
    #[arg(long, env = "SPG_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,
    /// How long a connection may wait for its database to wake.
    #[arg(long, env = "SPG_WAKE_TIMEOUT", default_value = "30s", value_parser = crate::parse_duration)]
    pub wake_timeout: Duration,
    /// How clients authenticate: `scram` (SCRAM-SHA-256, the password never leaves the client)
    /// or `password` (the client sends it, over TLS unless plaintext is allowed; verified
    /// against the same stored verifier and cached, so connection-per-request clients skip
    /// the PBKDF2).
    #[arg(long, env = "SPG_CLIENT_AUTH", default_value = "scram")]
    pub client_auth: spg_gateway_lib::ClientAuth,
    /// Client connections at once (logged in; pending logins are limited apart).
    #[arg(long, env = "SPG_MAX_CLIENT_CONN", default_value_t = 10_000)]
    pub max_client_conn: usize,
    /// Largest client message accepted, in bytes.
    #[arg(long, env = "SPG_MAX_MESSAGE_BYTES", default_value_t = 1 << 30)]
    pub max_message_bytes: usize,
    #[command(flatten)]
    pub pool: crate::PoolArgs,
    #[command(flatten)]
    pub login: crate::LoginArgs,
}

/// How `spg` reaches the API.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// API URL (default: from DATA_DIR/env).
    #[arg(long, env = "SPG_API_URL")]
    pub api_url: Option<String>,
    /// API key (default: from DATA_DIR/env).
    #[arg(long, env = "SPG_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// CA certificate to trust for the API (default: from DATA_DIR/env).
    #[arg(long, env = "SPG_API_CA")]
    pub api_ca: Option<PathBuf>,
    /// Data directory of a local `spg up`, whose env file supplies the defaults.
    #[arg(long, env = "SPG_DATA_DIR", default_value = "./.spg")]
    pub data_dir: PathBuf,
}

/// `spg config ...`.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a daemon's config file and print the settings it resolves to (with the
    /// environment and defaults; secrets masked).
    Check {
        /// The file.
        file: PathBuf,
        /// Whose file it is.
        #[arg(long, default_value = "up")]
        daemon: crate::daemons::Daemon,
    },
}

/// `spg db ...`.
#[derive(Subcommand)]
pub enum DbCommand {
    /// Create a database.
    Create {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List databases.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a database (state, generation, wakes, timings).
    Show {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create a database as a branch of another, at a point of its history (JSON; the parent
    /// is not woken).
    Branch {
        /// The new database.
        name: String,
        /// The database to branch.
        #[arg(long)]
        from: String,
        /// Where in its history: an LSN (`0/16B3748`: everything written before it) or a UTC
        /// moment (`2026-12-06T15:00:00Z`: every transaction committed by then); default: now.
        #[arg(long)]
        at: Option<String>,
        /// Give the branch's roles new passwords (printed) instead of the parent's.
        #[arg(long)]
        regenerate_passwords: bool,
        /// A read-only branch for time-travel reads, deleted after its idle stop.
        #[arg(long)]
        ephemeral: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Move a database back to a moment of its history (JSON). Its compute stops; the state
    /// it had is kept as a branch (`<name>_pre_restore_<UTC time>`, or `--keep-as`), so the
    /// restore can be undone.
    Restore {
        name: String,
        /// The moment: a UTC time (`2026-12-06T15:00:00Z`: every transaction committed by
        /// then, none after) or an LSN (`0/16B3748`).
        #[arg(long)]
        to: String,
        /// The name of the branch keeping the state before.
        #[arg(long)]
        keep_as: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set a database's history window (JSON: its window afterwards): every moment within it
    /// stays reachable for branches and restores.
    Retention {
        name: String,
        /// How long, e.g. `3d`, `12h`, `30m`; `default` for the platform's (7 days).
        window: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// How far back a database's history reaches (the first moment a branch can start at)
    /// and the bytes storage keeps for it (JSON).
    Window {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a database: its compute stops, its roles and storage go (its branches live on).
    Delete {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop a database's compute now.
    Stop {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// What a database used: compute seconds by profile, wakes, bytes written back and kept
    /// (JSON).
    Usage {
        name: String,
        /// Start of the span (RFC 3339; default: the database's creation).
        #[arg(long)]
        from: Option<String>,
        /// End of the span (RFC 3339; default: now).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Recent state transitions (of one database, or of all).
    History {
        name: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `spg role ...`.
#[derive(Subcommand)]
pub enum RoleCommand {
    /// Create a login role (never a superuser). Prints a generated password unless one is given.
    Create {
        /// Database the role belongs to.
        #[arg(long)]
        db: String,
        /// Role name.
        name: String,
        /// Password (default: generated and printed). Prefer SPG_ROLE_PASSWORD over the flag.
        #[arg(long, env = "SPG_ROLE_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List a database's roles.
    List {
        #[arg(long)]
        db: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `spg config check`: resolve `file` as `daemon` would and print every setting.
pub fn config_check(file: &std::path::Path, daemon: crate::daemons::Daemon) -> Result<()> {
    let cmd = match daemon {
        crate::daemons::Daemon::Up => {
            <UpArgs as clap::Args>::augment_args(clap::Command::new("spg-up"))
        }
        other => other.command(),
    };
    let settings = crate::daemons::check(cmd, file)?;
    println!(
        "# {} settings resolved from {}",
        daemon.name(),
        file.display()
    );
    for r in settings {
        match r.value {
            Some(v) => println!("{:<28} = {:<40} # {}", r.key, format!("{v:?}"), r.source),
            None => println!("# {:<26}   (unset)", r.key),
        }
    }
    Ok(())
}

const DEFAULT_DB: &str = "appdb";
const DEFAULT_ROLE: &str = "app";

pub async fn up(args: UpArgs) -> Result<()> {
    crate::init_logging();
    let (data_dir, existing, mut cfg) = args.platform.prepare()?;
    cfg.gateway_listen = Some(args.gateway_listen);
    cfg.allow_plaintext = args.allow_plaintext;
    cfg.wake_timeout = args.wake_timeout;
    cfg.pool = args.pool.config()?;
    cfg.client_auth = args.client_auth;
    cfg.login_limits = args.login.limits();
    cfg.max_client_conn = args.max_client_conn;
    cfg.max_message_bytes = args.max_message_bytes;
    crate::raise_fd_limit();
    let platform = Platform::start(cfg).await?;

    let stored = existing
        .as_ref()
        .and_then(|e| e.get("SPG_DSN"))
        .and_then(dsn_password);
    let password = match stored {
        Some(pw) => Some(pw),
        None => first_run(&platform).await?,
    };
    let dsn = platform
        .dsn(
            DEFAULT_ROLE,
            password.as_deref().unwrap_or("PASSWORD"),
            DEFAULT_DB,
        )
        .context("spg up runs a gateway")?;
    write_env(&data_dir, existing, &platform, Some(&dsn))?;

    println!(
        "SPG is up. Databases sleep after {} idle and wake on the next connection.",
        humantime::format_duration(args.platform.idle_timeout)
    );
    println!();
    println!("  DSN      {dsn}");
    println!("  API      {}", platform.api_url());
    if let Some(k) = &platform.api_key {
        println!("  API key  {k}");
    }
    println!("  CA       {}", platform.ca_file.display());
    println!("  env      {}", env_path(&data_dir).display());
    println!();
    println!(
        "Connect:  . {} && psql \"$SPG_DSN\"",
        env_path(&data_dir).display()
    );
    println!("Stop:     Ctrl-C");
    crate::shutdown_signal().await;
    platform.shutdown().await;
    Ok(())
}

/// Create the default database and role; returns the role's password, or `None` if the role
/// existed already (its password is not recoverable: only a verifier is stored).
async fn first_run(platform: &Platform) -> Result<Option<String>> {
    let cp = &platform.control_plane;
    let db = DatabaseName::new(DEFAULT_DB)?;
    match cp.create_database(db.clone()).await {
        Ok(_) | Err(LifecycleError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let password = crate::random_secret(24);
    match cp
        .create_role(
            &db,
            RoleName::new(DEFAULT_ROLE)?,
            RoleSecret::Password(password.clone()),
        )
        .await
    {
        Ok(_) => Ok(Some(password)),
        Err(LifecycleError::AlreadyExists { .. }) => {
            eprintln!(
                "warning: role {DEFAULT_ROLE} exists but its password is not in the env file; \
                 create another role with `spg role create --db {DEFAULT_DB} NAME`"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The password in `postgresql://user:password@...`.
fn dsn_password(dsn: &str) -> Option<String> {
    let rest = dsn.split_once("://")?.1;
    let userinfo = rest.rsplit_once('@')?.0;
    let (_, pw) = userinfo.split_once(':')?;
    (!pw.is_empty() && pw != "PASSWORD").then(|| pw.to_string())
}

fn client(args: &ApiArgs) -> Result<ApiClient> {
    let env = EnvFile::read(&args.data_dir.join("env"))?.unwrap_or_default();
    let url = args
        .api_url
        .clone()
        .or_else(|| env.get("SPG_API_URL").map(String::from))
        .context("no API URL: pass --api-url, set SPG_API_URL, or run from where `spg up` wrote its env file")?;
    let key = args
        .api_key
        .clone()
        .or_else(|| env.get("SPG_API_KEY").map(String::from))
        .context("no API key: pass --api-key or set SPG_API_KEY")?;
    let ca = args
        .api_ca
        .clone()
        .or_else(|| env.get("SPG_API_CA").map(PathBuf::from))
        .context("no CA certificate for the API: pass --api-ca or set SPG_API_CA")?;
    let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
    Ok(ApiClient::new(&url, &key, &pem)?)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn db(cmd: DbCommand) -> Result<()> {
    match cmd {
        DbCommand::Create { name, api } => print_json(&client(&api)?.create_database(&name).await?),
        DbCommand::Show { name, api } => print_json(&client(&api)?.database(&name).await?),
        DbCommand::Branch {
            name,
            from,
            at,
            regenerate_passwords,
            ephemeral,
            api,
        } => {
            let req = spg_lifecycle_lib::api::model::BranchRequest {
                name,
                at,
                regenerate_passwords,
                ephemeral,
            };
            print_json(&client(&api)?.branch_database(&from, &req).await?)
        }
        DbCommand::Restore {
            name,
            to,
            keep_as,
            api,
        } => {
            let req = spg_lifecycle_lib::api::model::RestoreRequest { to, keep_as };
            print_json(&client(&api)?.restore_database(&name, &req).await?)
        }
        DbCommand::Retention { name, window, api } => {
            let retention_seconds = match window.as_str() {
                "default" => None,
                w => Some(
                    crate::parse_duration(w)
                        .map_err(|e| anyhow::anyhow!("window {w:?}: {e}"))?
                        .as_secs(),
                ),
            };
            let req = spg_lifecycle_lib::api::model::RetentionRequest { retention_seconds };
            print_json(&client(&api)?.set_retention(&name, &req).await?)
        }
        DbCommand::Window { name, api } => print_json(&client(&api)?.history_window(&name).await?),
        DbCommand::Delete { name, api } => print_json(&client(&api)?.delete_database(&name).await?),
        DbCommand::Stop { name, api } => print_json(&client(&api)?.stop_database(&name).await?),
        DbCommand::List { api } => {
            let dbs = client(&api)?.databases().await?;
            println!(
                "{:<24} {:<9} {:>10} {:>6} {:>6}  STATE SINCE",
                "NAME", "STATE", "GENERATION", "WAKES", "LEASES"
            );
            for d in dbs {
                println!(
                    "{:<24} {:<9} {:>10} {:>6} {:>6}  {}",
                    d.name.as_str(),
                    d.state.as_str(),
                    d.generation.0,
                    d.wake_count,
                    d.leases,
                    d.state_since
                );
            }
            Ok(())
        }
        DbCommand::Usage {
            name,
            from,
            to,
            api,
        } => {
            let usage = client(&api)?
                .usage(&name, from.as_deref(), to.as_deref())
                .await?;
            println!("{}", serde_json::to_string_pretty(&usage)?);
            Ok(())
        }
        DbCommand::History { name, limit, api } => {
            let ts = client(&api)?.transitions(name.as_deref(), limit).await?;
            for t in ts.iter().rev() {
                println!(
                    "{}  {:<16} {:>9} -> {:<9} g{:<5} {}",
                    t.at,
                    t.database.as_str(),
                    t.from.map(|s| s.as_str()).unwrap_or("-"),
                    t.to.as_str(),
                    t.generation.0,
                    t.reason
                );
            }
            Ok(())
        }
    }
}

pub async fn role(cmd: RoleCommand) -> Result<()> {
    match cmd {
        RoleCommand::Create {
            db,
            name,
            password,
            api,
        } => {
            let generated = password.is_none();
            let password = password.unwrap_or_else(|| crate::random_secret(24));
            if password.is_empty() {
                bail!("the password must not be empty");
            }
            let view = client(&api)?.create_role(&db, &name, &password).await?;
            print_json(&view)?;
            if generated {
                println!("password: {password}");
            }
            Ok(())
        }
        RoleCommand::List { db, api } => print_json(&client(&api)?.roles(&db).await?),
    }
}
