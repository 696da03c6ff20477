//! Configuration files the agent writes into a compute's data directory at every start.

use std::fmt::Write;
use std::path::Path;

use spg_core::{ComputeLimits, ScaleProfile};

/// The platform's own superuser inside every compute. Tenants never get it: it can only log in
/// over the compute's private Unix socket, through `peer` authentication mapped from the OS user
/// the platform runs as.
pub const ADMIN_ROLE: &str = "spg_admin";
/// Group role owning tenant databases; every tenant role is a member (no superuser rights).
pub const TENANT_GROUP: &str = "spg_tenant";

/// The writer profile used when none is configured (`L1`): one core, 1 GiB.
pub fn default_profile() -> ScaleProfile {
    ScaleProfile {
        name: "L1".into(),
        shared_buffers_mb: 128,
        max_connections: 100,
        settings: [
            ("work_mem", "4MB"),
            ("maintenance_work_mem", "64MB"),
            ("effective_cache_size", "512MB"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        limits: ComputeLimits {
            cpu_millicores: Some(1000),
            memory_mb: Some(1024),
        },
    }
}

/// The built-in larger profile (`L2`): two cores, 4 GiB.
pub fn l2_profile() -> ScaleProfile {
    ScaleProfile {
        name: "L2".into(),
        shared_buffers_mb: 512,
        max_connections: 200,
        settings: [
            ("work_mem", "16MB"),
            ("maintenance_work_mem", "256MB"),
            ("effective_cache_size", "2GB"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        limits: ComputeLimits {
            cpu_millicores: Some(2000),
            memory_mb: Some(4096),
        },
    }
}

/// The built-in profiles, smallest first.
pub fn builtin_profiles() -> Vec<ScaleProfile> {
    vec![default_profile(), l2_profile()]
}

/// Quote a configuration-file string value.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What a compute in a WAL quorum adds to its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConf {
    /// `synchronous_standby_names`, e.g. `ANY 2 ("sk1", "sk2", "sk3")`.
    pub standby_names: String,
    /// `restore_command`.
    pub restore_command: String,
    /// `recovery_target_timeline`: a timeline id, or `current`.
    pub recovery_target_timeline: String,
    /// Whether PostgreSQL fsyncs locally. A commit's durability is the quorum's fsync, so the
    /// agent turns local fsync off where it can tell an operating-system crash afterwards
    /// ([`spg_core::UNSYNCED_MARKER`]).
    pub local_fsync: bool,
    /// `hot_standby`: whether sessions may connect (read-only) while recovery finishes.
    pub hot_standby: bool,
}

/// `max_wal_senders` of computes in a WAL quorum.
pub const MAX_WAL_SENDERS: i32 = 16;

/// Whether a compute with `profile` can recover WAL written under `recorded` with `hot_standby`
/// (PostgreSQL pauses recovery otherwise): every recorded setting at most this compute's
/// (`max_worker_processes`, `max_prepared_transactions` and `max_locks_per_transaction` are
/// PostgreSQL's defaults here). Unknown settings: no.
pub fn hot_standby_possible(
    profile: &ScaleProfile,
    recorded: Option<spg_core::pg_control::HotStandbyMinimums>,
) -> bool {
    recorded.is_some_and(|r| {
        i64::from(r.max_connections) <= i64::from(profile.max_connections)
            && r.max_worker_processes <= 8
            && r.max_wal_senders <= MAX_WAL_SENDERS
            && r.max_prepared_xacts <= 0
            && r.max_locks_per_xact <= 64
    })
}

/// `postgresql.conf` for a compute listening on `listen:port`; with `wal`, one that recovers
/// from the safekeepers, promotes, and commits only once a quorum of them has the WAL.
pub fn postgresql_conf(
    listen: std::net::IpAddr,
    port: u16,
    socket_dir: &Path,
    profile: &ScaleProfile,
    wal: Option<&WalConf>,
) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by the SPG compute agent at every start. Do not edit."
    );
    let _ = writeln!(c, "listen_addresses = '{listen}'");
    let _ = writeln!(c, "port = {port}");
    let _ = writeln!(
        c,
        "unix_socket_directories = {}",
        conf_quote(&socket_dir.to_string_lossy())
    );
    let _ = writeln!(c, "unix_socket_permissions = 0700");
    let _ = writeln!(c, "# profile {}", profile.name);
    let _ = writeln!(c, "max_connections = {}", profile.max_connections);
    let _ = writeln!(c, "shared_buffers = '{}MB'", profile.shared_buffers_mb);
    for (k, v) in &profile.settings {
        // Names were validated with the profile; reserved ones never reach here.
        if !spg_core::RESERVED_SETTINGS.contains(&k.as_str()) {
            let _ = writeln!(c, "{k} = {}", conf_quote(v));
        }
    }
    let _ = writeln!(c, "password_encryption = 'scram-sha-256'");
    let local_fsync = wal.is_none_or(|w| w.local_fsync);
    let _ = writeln!(c, "fsync = {}", if local_fsync { "on" } else { "off" });
    let _ = writeln!(c, "synchronous_commit = on");
    let _ = writeln!(c, "full_page_writes = on");
    let _ = writeln!(c, "dynamic_shared_memory_type = posix");
    let _ = writeln!(c, "logging_collector = off");
    let _ = writeln!(c, "log_destination = 'stderr'");
    let _ = writeln!(c, "log_line_prefix = '%m [%p] %q%u@%d '");
    let _ = writeln!(c, "lc_messages = 'C'");
    let _ = writeln!(c, "datestyle = 'iso, mdy'");
    let _ = writeln!(c, "timezone = 'UTC'");
    let _ = writeln!(c, "log_timezone = 'UTC'");
    let _ = writeln!(c, "default_text_search_config = 'pg_catalog.english'");
    if let Some(w) = wal {
        let _ = writeln!(c, "# WAL quorum: safekeepers are synchronous standbys");
        let _ = writeln!(c, "wal_level = replica");
        let _ = writeln!(c, "max_wal_senders = {MAX_WAL_SENDERS}");
        let _ = writeln!(c, "wal_keep_size = '256MB'");
        // Each safekeeper streams through its own physical slot: WAL it has not flushed stays
        // here however far behind it falls (a bulk load outruns a slow disk), up to a bound
        // past which a lost safekeeper stops holding WAL (the others still form the quorum).
        let _ = writeln!(c, "max_replication_slots = {MAX_WAL_SENDERS}");
        let _ = writeln!(c, "max_slot_wal_keep_size = '4GB'");
        let _ = writeln!(c, "wal_sender_timeout = '10s'");
        let _ = writeln!(
            c,
            "synchronous_standby_names = {}",
            conf_quote(&w.standby_names)
        );
        let _ = writeln!(
            c,
            "# Recovery from the safekeepers, then promotion onto this generation's timeline"
        );
        let _ = writeln!(c, "restore_command = {}", conf_quote(&w.restore_command));
        let _ = writeln!(
            c,
            "recovery_target_timeline = {}",
            conf_quote(&w.recovery_target_timeline)
        );
        // The agent's admin session connects while recovery finishes (it writes only once
        // promoted); the platform reports the compute ready, and tenants connect, only then.
        let _ = writeln!(
            c,
            "hot_standby = {}",
            if w.hot_standby { "on" } else { "off" }
        );
    }
    c
}

/// `pg_hba.conf`: the admin role only over the Unix socket with `peer`, tenants over loopback TCP
/// (with `remote`, from any host: a compute in a pod, reached by gateways elsewhere) with
/// SCRAM-SHA-256, and (with `replication`) the safekeepers' role for physical replication with
/// SCRAM-SHA-256 likewise. Nothing else, and never `trust`.
pub fn pg_hba_conf(replication: bool, remote: bool) -> String {
    let mut s = format!(
        "# Written by the SPG compute agent at every start. Do not edit.\n\
         local all {ADMIN_ROLE} peer map=spg\n\
         host all {ADMIN_ROLE} all reject\n"
    );
    if replication {
        let r = super::wal::REPLICATOR_ROLE;
        let from = if remote { "all" } else { "127.0.0.1/32" };
        s.push_str(&format!(
            "host replication {r} {from} scram-sha-256\nhost all {r} all reject\n"
        ));
    }
    if remote {
        s.push_str("host all all all scram-sha-256\n");
    } else {
        s.push_str("host all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n");
    }
    s
}

/// `pg_ident.conf`: the OS user the platform runs as may log in as the admin role.
pub fn pg_ident_conf(platform_os_user: &str) -> String {
    format!(
        "# Written by the SPG compute agent at every start. Do not edit.\n\
         spg {platform_os_user} {ADMIN_ROLE}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_config() {
        let c = postgresql_conf(
            std::net::Ipv4Addr::LOCALHOST.into(),
            5555,
            Path::new("/run/it's"),
            &default_profile(),
            None,
        );
        assert!(c.contains("port = 5555\n"));
        assert!(c.contains("unix_socket_directories = '/run/it''s'\n"));
        assert!(c.contains("shared_buffers = '128MB'"));
        assert!(!c.contains("restore_command"));
        let w = WalConf {
            standby_names: "ANY 2 (\"sk1\", \"sk2\", \"sk3\")".into(),
            restore_command: "\"/bin/spg\" wal-restore http://x \"%f\" \"%p\"".into(),
            recovery_target_timeline: "current".into(),
            local_fsync: false,
            hot_standby: true,
        };
        let c = postgresql_conf(
            std::net::Ipv4Addr::LOCALHOST.into(),
            5555,
            Path::new("/run"),
            &default_profile(),
            Some(&w),
        );
        assert!(
            c.contains("fsync = off\n"),
            "the quorum makes commits durable"
        );
        let local = postgresql_conf(
            std::net::Ipv4Addr::LOCALHOST.into(),
            5555,
            Path::new("/run"),
            &default_profile(),
            None,
        );
        assert!(local.contains("fsync = on\n"));
        assert!(c.contains("synchronous_standby_names = 'ANY 2 (\"sk1\", \"sk2\", \"sk3\")'\n"));
        assert!(c.contains("hot_standby = on\n"));
        let recorded = spg_core::pg_control::HotStandbyMinimums {
            max_connections: 100,
            max_worker_processes: 8,
            max_wal_senders: 16,
            max_prepared_xacts: 0,
            max_locks_per_xact: 64,
        };
        let l1 = default_profile();
        for p in builtin_profiles() {
            p.validate().unwrap();
            let conf = postgresql_conf(
                std::net::Ipv4Addr::LOCALHOST.into(),
                5555,
                Path::new("/run"),
                &p,
                None,
            );
            assert!(conf.contains(&format!("shared_buffers = '{}MB'", p.shared_buffers_mb)));
            assert!(conf.contains(&format!("work_mem = '{}'", p.settings["work_mem"])));
        }
        let mut bad = l2_profile();
        bad.settings.insert("fsync".into(), "off".into());
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("managed by the platform"));
        bad.settings.clear();
        bad.settings.insert("work_mem = 1; x".into(), "1".into());
        assert!(bad.validate().is_err());
        bad.settings.clear();
        bad.settings
            .insert("work_mem".into(), "1MB'\nfsync = off".into());
        assert!(bad.validate().is_err());
        assert!(hot_standby_possible(&l1, Some(recorded)));
        assert!(!hot_standby_possible(&l1, None));
        let bigger = spg_core::pg_control::HotStandbyMinimums {
            max_connections: 200,
            ..recorded
        };
        assert!(
            !hot_standby_possible(&l1, Some(bigger)),
            "scaled down from a bigger profile"
        );
        assert!(pg_hba_conf(true, false)
            .contains("host replication spg_replicator 127.0.0.1/32 scram-sha-256"));
        let hba = pg_hba_conf(false, false);
        assert!(!hba.contains("trust"));
        // In a pod: tenants and the safekeepers from other hosts, still only with SCRAM.
        let remote = pg_hba_conf(true, true);
        assert!(remote.contains("host replication spg_replicator all scram-sha-256"));
        assert!(remote.contains("host all all all scram-sha-256"));
        assert!(!remote.contains("trust") && !remote.contains("127.0.0.1"));
        assert!(hba.contains("local all spg_admin peer map=spg"));
        assert_eq!(
            pg_ident_conf("root").lines().last(),
            Some("spg root spg_admin")
        );
    }
}
