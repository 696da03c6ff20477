//! The admin console: a special database (default `spg_admin`) where the platform's admin
//! credentials can run `SHOW POOLS`, `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW STATS` (PgBouncer's
//! names and most of its columns) and `SHOW HELP`, over the simple query protocol.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pool::{ClientState, Pools, ServerState};
use crate::proto::backend::{self as msg, Severity};
use crate::proto::messages::{self as m, Piece, Splitter};
use crate::proto::sql::PinKind;
use crate::stream::ClientStream;
use crate::GatewayError;

/// Largest admin query accepted.
const MAX_ADMIN_MESSAGE: usize = 64 * 1024;

/// Serve an authenticated admin session until it ends.
pub(crate) async fn serve(
    pools: &Arc<Pools>,
    client: &mut ClientStream,
    user: &str,
) -> Result<(), GatewayError> {
    let mut out = BytesMut::new();
    for (k, v) in [
        ("server_version", "15.0 (spg gateway)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "off"),
        ("session_authorization", user),
        ("TimeZone", "UTC"),
        ("application_name", ""),
    ] {
        msg::parameter_status(&mut out, k, v.as_bytes());
    }
    let (pid, secret) = crate::pooled::random_key();
    msg::backend_key_data(&mut out, pid, secret);
    msg::ready_for_query(&mut out, b'I');
    client.write_all(&out).await?;
    client.flush().await?;
    out.clear();

    let mut buf = BytesMut::with_capacity(1024);
    let mut split = Splitter::default();
    let mut skipping = false;
    loop {
        let piece = split.next(&mut buf, MAX_ADMIN_MESSAGE, usize::MAX, |_| false)?;
        let Some(Piece::Whole(message)) = piece else {
            if client.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
            continue;
        };
        match message[0] {
            b'X' => return Ok(()),
            b'Q' => {
                let sql = String::from_utf8_lossy(m::query_text(&message)?);
                respond(pools, &sql, &mut out);
                msg::ready_for_query(&mut out, b'I');
            }
            b'S' => {
                skipping = false;
                msg::ready_for_query(&mut out, b'I');
            }
            b'H' => {}
            _ => {
                if !skipping {
                    msg::error_response(
                        &mut out,
                        Severity::Error,
                        "0A000",
                        "the admin console speaks the simple query protocol only",
                        None,
                    );
                    skipping = true;
                }
            }
        }
        if !out.is_empty() {
            client.write_all(&out).await?;
            client.flush().await?;
            out.clear();
        }
    }
}

/// A command of the admin console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCommand {
    /// An empty query.
    Empty,
    /// `SHOW POOLS`.
    ShowPools,
    /// `SHOW CLIENTS`.
    ShowClients,
    /// `SHOW SERVERS`.
    ShowServers,
    /// `SHOW STATS`.
    ShowStats,
    /// `SHOW HELP`.
    ShowHelp,
    /// Anything else.
    Unknown,
}

impl AdminCommand {
    /// Read a query of the admin console (case-insensitive, an optional `;`).
    pub fn parse(sql: &str) -> AdminCommand {
        let mut words = sql.trim().trim_end_matches(';').split_whitespace();
        let (first, second, rest) = (words.next(), words.next(), words.next());
        let is = |w: Option<&str>, k: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(k));
        match (first, second, rest) {
            (None, _, _) => AdminCommand::Empty,
            (Some(_), Some(_), None) if is(first, "show") => match second {
                s if is(s, "pools") => AdminCommand::ShowPools,
                s if is(s, "clients") => AdminCommand::ShowClients,
                s if is(s, "servers") => AdminCommand::ShowServers,
                s if is(s, "stats") => AdminCommand::ShowStats,
                s if is(s, "help") => AdminCommand::ShowHelp,
                _ => AdminCommand::Unknown,
            },
            _ => AdminCommand::Unknown,
        }
    }
}

fn respond(pools: &Arc<Pools>, sql: &str, out: &mut BytesMut) {
    let (columns, rows): (&[&str], Vec<Vec<Option<String>>>) = match AdminCommand::parse(sql) {
        AdminCommand::Empty => {
            out.extend_from_slice(b"I\0\0\0\x04");
            return;
        }
        AdminCommand::ShowPools => (POOL_COLUMNS, pool_rows(pools)),
        AdminCommand::ShowClients => (CLIENT_COLUMNS, client_rows(pools)),
        AdminCommand::ShowServers => (SERVER_COLUMNS, server_rows(pools)),
        AdminCommand::ShowStats => (STATS_COLUMNS, stats_rows(pools)),
        AdminCommand::ShowHelp => (
            &["command"],
            [
                "SHOW POOLS",
                "SHOW CLIENTS",
                "SHOW SERVERS",
                "SHOW STATS",
                "SHOW HELP",
            ]
            .iter()
            .map(|c| vec![Some(c.to_string())])
            .collect(),
        ),
        AdminCommand::Unknown => {
            msg::error_response(
                out,
                Severity::Error,
                "42601",
                "unknown admin command",
                Some("Try SHOW HELP."),
            );
            return;
        }
    };
    m::text_result(out, columns, &rows);
    m::command_complete(out, "SHOW");
}

const POOL_COLUMNS: &[&str] = &[
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_idle",
    "cl_pinned",
    "sv_active",
    "sv_idle",
    "sv_login",
    "sv_total",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    "pool_size",
    "lease_held",
];

fn pool_rows(pools: &Pools) -> Vec<Vec<Option<String>>> {
    pools
        .all()
        .iter()
        .map(|p| {
            let s = p.snapshot();
            vec![
                Some(p.db.to_string()),
                Some(p.role.to_string()),
                Some(s.cl_active.to_string()),
                Some(s.cl_waiting.to_string()),
                Some(s.cl_idle.to_string()),
                Some(s.cl_pinned.to_string()),
                Some(s.sv_active.to_string()),
                Some(s.sv_idle.to_string()),
                Some(s.sv_login.to_string()),
                Some(s.sv_total.to_string()),
                Some(s.maxwait.as_secs().to_string()),
                Some(s.maxwait.subsec_micros().to_string()),
                Some(p.mode.as_str().to_string()),
                Some(p.size.to_string()),
                Some(p.holds_lease().to_string()),
            ]
        })
        .collect()
}

const CLIENT_COLUMNS: &[&str] = &[
    "id",
    "database",
    "user",
    "state",
    "addr",
    "port",
    "connect_time",
    "state_ms",
    "application_name",
    "server",
    "pinned",
];

fn client_rows(pools: &Pools) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for p in pools.all() {
        let mut clients = p.clients();
        clients.sort_by_key(|c| c.id);
        for c in clients {
            let state = match c.state() {
                ClientState::Active => "active",
                ClientState::Idle => "idle",
                ClientState::Waiting => "waiting",
            };
            let server = c.server();
            rows.push(vec![
                Some(c.id.to_string()),
                Some(p.db.to_string()),
                Some(p.role.to_string()),
                Some(state.into()),
                c.addr.map(|a| a.ip().to_string()),
                c.addr.map(|a| a.port().to_string()),
                Some(timestamp(c.connect_time)),
                Some(c.in_state_for().as_millis().to_string()),
                Some(c.application_name.clone()),
                (server != 0).then(|| server.to_string()),
                c.pinned(),
            ]);
        }
    }
    rows
}

const SERVER_COLUMNS: &[&str] = &[
    "id",
    "database",
    "user",
    "state",
    "addr",
    "port",
    "remote_pid",
    "generation",
    "connect_time",
    "state_ms",
    "client",
    "prepared_statements",
];

fn server_rows(pools: &Pools) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for p in pools.all() {
        let mut servers = p.servers();
        servers.sort_by_key(|s| s.id);
        for s in servers {
            let state = match s.state() {
                ServerState::Active => "active",
                ServerState::Idle => "idle",
                ServerState::Login => "login",
            };
            let client = s.client();
            rows.push(vec![
                Some(s.id.to_string()),
                Some(p.db.to_string()),
                Some(p.role.to_string()),
                Some(state.into()),
                Some(s.addr.ip().to_string()),
                Some(s.addr.port().to_string()),
                Some(s.pid.to_string()),
                Some(s.generation.0.to_string()),
                Some(timestamp(s.connect_time)),
                Some(s.in_state_for().as_millis().to_string()),
                (client != 0).then(|| client.to_string()),
                Some(s.prepared().to_string()),
            ]);
        }
    }
    rows
}

const STATS_COLUMNS: &[&str] = &[
    "database",
    "user",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_wait_time",
    "avg_xact_time",
    "avg_wait_time",
    "total_queued",
    "total_queue_timeouts",
    "total_prepares",
    "total_prepare_hits",
    "total_servers_opened",
    "total_servers_closed",
    "pinned_now",
];

fn stats_rows(pools: &Pools) -> Vec<Vec<Option<String>>> {
    pools
        .all()
        .iter()
        .map(|p| {
            let s = &p.stats;
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let xacts = get(&s.xacts);
            let checkouts = get(&s.checkouts);
            let pinned: Vec<String> = PinKind::ALL
                .iter()
                .filter(|k| p.pins.get(**k) > 0)
                .map(|k| format!("{}={}", k.as_str(), p.pins.get(*k)))
                .collect();
            vec![
                Some(p.db.to_string()),
                Some(p.role.to_string()),
                Some(xacts.to_string()),
                Some(get(&s.queries).to_string()),
                Some(get(&s.received).to_string()),
                Some(get(&s.sent).to_string()),
                Some(get(&s.xact_us).to_string()),
                Some(get(&s.wait_us).to_string()),
                Some((get(&s.xact_us) / xacts.max(1)).to_string()),
                Some((get(&s.wait_us) / checkouts.max(1)).to_string()),
                Some(get(&s.queued).to_string()),
                Some(get(&s.queue_timeouts).to_string()),
                Some(get(&s.prepares).to_string()),
                Some(get(&s.prepare_hits).to_string()),
                Some(get(&s.servers_opened).to_string()),
                Some(get(&s.servers_closed).to_string()),
                Some(pinned.join(" ")),
            ]
        })
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn admin_commands_parse_whatever_their_case_and_semicolon() {
        assert_eq!(AdminCommand::parse("SHOW POOLS;"), AdminCommand::ShowPools);
        assert_eq!(
            AdminCommand::parse("  show   Clients "),
            AdminCommand::ShowClients
        );
        assert_eq!(AdminCommand::parse(""), AdminCommand::Empty);
        assert_eq!(AdminCommand::parse(";"), AdminCommand::Empty);
        assert_eq!(AdminCommand::parse("SHOW"), AdminCommand::Unknown);
        assert_eq!(
            AdminCommand::parse("SHOW POOLS EXTRA"),
            AdminCommand::Unknown
        );
        assert_eq!(AdminCommand::parse("DROP TABLE x"), AdminCommand::Unknown);
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18 11:06:40 UTC"
        );
    }
}
