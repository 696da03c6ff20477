//! Retrying platform calls within a deadline, and opening a compute connection (wake, then
//! connect by SCRAM key passthrough).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use spg_core::scram::{ClientKey, ScramVerifier};
use spg_core::{ComputeEndpoint, CoreError, DatabaseName, RoleName};
use tracing::debug;

use crate::backend::{self, BackendConn};
use crate::metrics::GatewayMetrics;
use crate::wake::WakeCoalescer;
use crate::GatewayError;

/// Map a lease or wake error of the platform to what the client sees.
pub(crate) fn classify_core(e: &CoreError, db: &DatabaseName) -> (bool, GatewayError) {
    let retryable = e.is_retryable();
    let err = match e {
        CoreError::DatabaseNotFound(_) => GatewayError::UnknownDatabase(db.to_string()),
        CoreError::Refused(message) => GatewayError::WakeRefused {
            database: db.to_string(),
            message: message.clone(),
        },
        _ if retryable => GatewayError::WakeTimeout {
            database: db.to_string(),
            detail: e.to_string(),
        },
        _ => GatewayError::WakeFailed {
            database: db.to_string(),
            detail: e.to_string(),
        },
    };
    (retryable, err)
}

/// Backoff between attempts: 25 ms doubling to 1 s, with jitter.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(25u64 << attempt.min(6)).min(Duration::from_secs(1));
    let jitter = rand::rng().random_range(0..=base.as_millis() as u64 / 4);
    base + Duration::from_millis(jitter)
}

/// Run `op` until it succeeds, fails for good, or `deadline` passes. `classify` says whether an
/// error is worth retrying and what the client sees; retryable errors still failing at the
/// deadline become [`GatewayError::WakeTimeout`].
pub(crate) async fn retry_until<T, E, F, Fut>(
    deadline: Instant,
    db: &DatabaseName,
    mut op: F,
    classify: impl Fn(E) -> (bool, GatewayError),
) -> Result<T, GatewayError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let r = match tokio::time::timeout(remaining, op()).await {
            Ok(r) => r,
            Err(_) => {
                return Err(GatewayError::WakeTimeout {
                    database: db.to_string(),
                    detail: "deadline passed".into(),
                })
            }
        };
        match r {
            Ok(v) => return Ok(v),
            Err(e) => {
                let (retryable, err) = classify(e);
                let pause = backoff(attempt);
                if !retryable {
                    return Err(err);
                }
                if Instant::now() + pause >= deadline {
                    return Err(match err {
                        timeout @ GatewayError::WakeTimeout { .. } => timeout,
                        other => GatewayError::WakeTimeout {
                            database: db.to_string(),
                            detail: other.to_string(),
                        },
                    });
                }
                debug!(error = %err, attempt, "retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
        }
    }
}

/// Wake `db` and log in to its compute as `role`, retrying until `deadline`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open(
    wakes: &Arc<WakeCoalescer>,
    metrics: &GatewayMetrics,
    db: &DatabaseName,
    role: &RoleName,
    client_key: &ClientKey,
    verifier: &ScramVerifier,
    connect_timeout: Duration,
    deadline: Instant,
) -> Result<(BackendConn, ComputeEndpoint), GatewayError> {
    retry_until(
        deadline,
        db,
        || async {
            let (leader, woken) = wakes.wake(db).await;
            if leader {
                metrics.wakes.inc();
            }
            let endpoint = woken.map_err(|f| {
                if f.not_found {
                    GatewayError::UnknownDatabase(db.to_string())
                } else if let Some(message) = f.refused {
                    GatewayError::WakeRefused {
                        database: db.to_string(),
                        message,
                    }
                } else if f.retryable {
                    GatewayError::BackendUnavailable(f.message)
                } else {
                    GatewayError::WakeFailed {
                        database: db.to_string(),
                        detail: f.message,
                    }
                }
            })?;
            let connect = backend::connect(
                endpoint.addr,
                role.as_str(),
                db.as_str(),
                client_key.clone(),
                verifier,
                &[],
            );
            match tokio::time::timeout(connect_timeout, connect).await {
                Ok(r) => r.map(|c| (c, endpoint)),
                Err(_) => Err(GatewayError::BackendUnavailable(format!(
                    "no answer from {} within {:?}",
                    endpoint.addr, connect_timeout
                ))),
            }
        },
        |e: GatewayError| (e.is_retryable(), e),
    )
    .await
}
