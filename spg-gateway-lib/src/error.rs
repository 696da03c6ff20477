use thiserror::Error;

use crate::proto::backend::Severity;

/// Errors of the gateway. Those that reach a client become a PostgreSQL `ErrorResponse` with the
/// SQLSTATE of [`GatewayError::sqlstate`] and the text of [`GatewayError::client_message`], which
/// never includes internal details (those go to the log).
#[derive(Debug, Error)]
pub enum GatewayError {
    /// Socket error; the connection is gone.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of {0}")]
    Truncated(&'static str),
    /// A message longer than the configured bound.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Body length the client announced.
        len: usize,
        /// Configured bound.
        max: usize,
    },
    /// A feature the gateway does not provide.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// Plaintext connection while TLS is required.
    #[error("TLS is required")]
    TlsRequired,
    /// TLS setup or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Unknown database.
    #[error("database {0:?} does not exist")]
    UnknownDatabase(String),
    /// Wrong password or unknown role (deliberately indistinguishable to the client).
    #[error("authentication failed")]
    AuthFailed,
    /// Too many client connections.
    #[error("too many connections")]
    TooManyConnections,
    /// The role is locked out after failed logins (from this address among others).
    #[error("too many failed login attempts")]
    TooManyFailures,
    /// The database could not be woken or reached before the deadline.
    #[error("database {database:?} could not be woken in time: {detail}")]
    WakeTimeout {
        /// Database.
        database: String,
        /// Last error seen (logged, not shown to the client).
        detail: String,
    },
    /// Waking failed for a reason retrying will not fix.
    #[error("waking database {database:?} failed: {detail}")]
    WakeFailed {
        /// Database.
        database: String,
        /// Why (logged, not shown to the client).
        detail: String,
    },
    /// The platform refused to start the database (a pre-wake hook's veto, such as a spending
    /// cap); the message is the operator's and is shown to the client.
    #[error("waking database {database:?} was refused: {message}")]
    WakeRefused {
        /// Database.
        database: String,
        /// The operator's message.
        message: String,
    },
    /// The compute refused the gateway's login or broke the protocol.
    #[error("compute rejected the connection: {0}")]
    BackendRejected(String),
    /// The compute could not be reached (retryable).
    #[error("compute unavailable: {0}")]
    BackendUnavailable(String),
    /// No backend connection became free within the pool's `query_wait_timeout`.
    #[error("no backend connection became free within {0:?}")]
    QueueTimeout(std::time::Duration),
    /// The compute refused a client's setting (startup parameter); PostgreSQL's own code and
    /// message, which are safe to show.
    #[error("compute refused a setting: {code}: {message}")]
    ServerError {
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
    },
    /// The gateway is shutting down.
    #[error("gateway is shutting down")]
    ShuttingDown,
    /// Anything else.
    #[error("internal: {0}")]
    Internal(String),
}

impl GatewayError {
    /// SQLSTATE shown to the client; `None` when no message can or should be sent.
    pub fn sqlstate(&self) -> Option<&'static str> {
        Some(match self {
            GatewayError::Io(_) | GatewayError::Tls(_) => return None,
            GatewayError::Protocol(_)
            | GatewayError::Truncated(_)
            | GatewayError::MessageTooLarge { .. } => "08P01",
            GatewayError::Unsupported(_) => "0A000",
            GatewayError::TlsRequired => "28000",
            GatewayError::UnknownDatabase(_) => "3D000",
            GatewayError::AuthFailed => "28P01",
            GatewayError::TooManyConnections | GatewayError::TooManyFailures => "53300",
            GatewayError::WakeTimeout { .. } | GatewayError::WakeFailed { .. } => "57P03",
            GatewayError::WakeRefused { .. } => "53400",
            GatewayError::BackendRejected(_) => "08004",
            GatewayError::BackendUnavailable(_) => "08006",
            GatewayError::QueueTimeout(_) => "57014",
            GatewayError::ServerError { .. } => "22023",
            GatewayError::ShuttingDown => "57P01",
            GatewayError::Internal(_) => "XX000",
        })
    }

    /// Message and hint shown to the client, for `user` connecting to `database`.
    pub fn client_message(&self, user: &str, database: &str) -> (String, Option<&'static str>) {
        match self {
            GatewayError::Protocol(m) => (m.clone(), None),
            GatewayError::Truncated(_)
            | GatewayError::MessageTooLarge { .. }
            | GatewayError::Unsupported(_) => (self.to_string(), None),
            GatewayError::TlsRequired => (
                "connection requires TLS".into(),
                Some("Connect with sslmode=require (or stronger)."),
            ),
            GatewayError::UnknownDatabase(db) => {
                (format!("database \"{db}\" does not exist"), None)
            }
            GatewayError::AuthFailed => (
                format!("password authentication failed for user \"{user}\""),
                None,
            ),
            GatewayError::TooManyConnections => ("sorry, too many clients already".into(), None),
            GatewayError::TooManyFailures => (
                format!("too many failed login attempts for user \"{user}\"; try again later"),
                None,
            ),
            GatewayError::WakeTimeout { .. } => (
                format!("database \"{database}\" could not be woken in time"),
                Some("The database is starting up. Retry the connection in a few seconds."),
            ),
            GatewayError::WakeFailed { .. } => (
                format!("database \"{database}\" could not be started"),
                Some("Retry the connection; if it keeps failing, contact the operator."),
            ),
            GatewayError::WakeRefused { message, .. } => (
                format!(
                    "database \"{database}\" may not be started: {}",
                    printable(message, 200)
                ),
                None,
            ),
            GatewayError::BackendRejected(_) => (
                format!("database \"{database}\" rejected the connection"),
                None,
            ),
            GatewayError::BackendUnavailable(_) => (
                format!("connection to database \"{database}\" was lost"),
                Some("Retry the connection."),
            ),
            GatewayError::QueueTimeout(w) => (
                format!(
                    "canceling statement: no connection to database \"{database}\" became free within {:.1} s",
                    w.as_secs_f64()
                ),
                Some("Every pooled connection of this database and role is busy. Retry, or use fewer concurrent transactions."),
            ),
            GatewayError::ServerError { message, .. } => (message.clone(), None),
            GatewayError::ShuttingDown => (
                "terminating connection due to administrator command".into(),
                None,
            ),
            GatewayError::Io(_) | GatewayError::Tls(_) | GatewayError::Internal(_) => {
                ("internal error".into(), None)
            }
        }
    }

    /// Errors at connection time are FATAL (the session ends); a queue timeout fails only the
    /// transaction that waited.
    pub fn severity(&self) -> Severity {
        match self {
            GatewayError::QueueTimeout(_) => Severity::Error,
            _ => Severity::Fatal,
        }
    }

    /// The SQLSTATE to show, taking [`GatewayError::ServerError`]'s own code.
    pub fn code(&self) -> Option<&str> {
        match self {
            GatewayError::ServerError { code, .. } => Some(code),
            _ => self.sqlstate(),
        }
    }

    /// Whether retrying (waking again, reconnecting) may help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::BackendUnavailable(_) | GatewayError::WakeTimeout { .. }
        )
    }
}

impl From<spg_core::scram::client::ScramClientError> for GatewayError {
    fn from(e: spg_core::scram::client::ScramClientError) -> Self {
        use spg_core::scram::client::ScramClientError as E;
        match e {
            E::Malformed(_) => GatewayError::Protocol(e.to_string()),
            E::Rejected(m) => GatewayError::BackendRejected(m),
        }
    }
}

/// `s` cut to `max` characters, control characters replaced: an operator's text as a client
/// message.
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_do_not_leak_details() {
        let e = GatewayError::WakeTimeout {
            database: "shop".into(),
            detail: "/var/lib/secret/path: permission denied".into(),
        };
        let (m, h) = e.client_message("app", "shop");
        assert!(!m.contains("/var/lib"));
        assert!(h.unwrap().contains("Retry"));
        assert_eq!(e.sqlstate(), Some("57P03"));
        let (m, _) = GatewayError::Internal("stack".into()).client_message("a", "b");
        assert_eq!(m, "internal error");
        assert_eq!(GatewayError::AuthFailed.sqlstate(), Some("28P01"));
        assert_eq!(
            GatewayError::UnknownDatabase("x".into()).sqlstate(),
            Some("3D000")
        );
        assert_eq!(GatewayError::TooManyConnections.sqlstate(), Some("53300"));
        let refused = GatewayError::WakeRefused {
            database: "shop".into(),
            message: "spending cap reached\n(see the console)".into(),
        };
        assert_eq!(refused.sqlstate(), Some("53400"));
        let (m, _) = refused.client_message("app", "shop");
        assert_eq!(
            m,
            "database \"shop\" may not be started: spending cap reached (see the console)"
        );
    }
}
