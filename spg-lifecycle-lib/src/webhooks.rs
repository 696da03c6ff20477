//! Webhooks: every lifecycle event ([`crate::events`]) POSTed as JSON to the operator's
//! endpoints, signed, retried with backoff, and logged.
//!
//! Each request carries:
//! - `X-SPG-Event`: the event's kind; `X-SPG-Delivery`: its id (the same on every retry: a
//!   receiver's idempotency key);
//! - `X-SPG-Signature: t=<unix seconds>,v1=<hex>`, where `<hex>` is HMAC-SHA256 with the
//!   webhook's secret over `<t>.<body>`: a receiver recomputes it, compares in constant time
//!   and refuses old timestamps ([`verify`] does all three).
//!
//! A delivery is retried after a network error, a timeout, `429` or a `5xx`, waiting
//! `first_backoff` and doubling (to `max_backoff`) up to `attempts` tries; other answers end
//! it. Events go to one endpoint in order: a retried event holds back the later ones of that
//! endpoint only. Every attempt is recorded in a bounded [`DeliveryLog`] (the API's
//! `GET /v1/webhooks/deliveries`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::client::describe;
use crate::events::{Event, EventKind};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-spg-signature";
/// The event kind header.
pub const EVENT_HEADER: &str = "x-spg-event";
/// The delivery (event) id header.
pub const DELIVERY_HEADER: &str = "x-spg-delivery";

/// One endpoint.
#[derive(Clone)]
pub struct Webhook {
    /// Where events go (`https://`; `http://` only to a loopback address).
    pub url: String,
    /// The signing secret.
    pub secret: zeroize::Zeroizing<String>,
    /// The kinds it wants (empty: all).
    pub events: Vec<EventKind>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Check the URL ([`check_url`]).
    pub fn validate(&self) -> Result<(), String> {
        check_url(&self.url)
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

/// Check a hook's URL: `https://`, or `http://` to a loopback address.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if crate::api::gateway_control::is_loopback_url(url) => Ok(()),
        other => Err(format!(
            "{url}: a hook is https:// (http:// only to a loopback address), not {other}://"
        )),
    }
}

/// How deliveries are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries per event, the first included.
    pub attempts: u32,
    /// The wait before the first retry; it doubles.
    pub first_backoff: Duration,
    /// The longest wait between tries.
    pub max_backoff: Duration,
    /// How long one try may take.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// How one try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// It failed; another try follows.
    Retrying,
    /// It failed, and no try follows (attempts used up, or an answer not worth retrying).
    Failed,
    /// Events were missed: the endpoint fell too far behind.
    Missed,
}

/// One try, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The event's id.
    pub event_id: String,
    /// Its kind.
    pub kind: Option<EventKind>,
    /// The database.
    pub database: Option<String>,
    /// The endpoint.
    pub url: String,
    /// Which try (1 for the first).
    pub attempt: u32,
    /// The endpoint's HTTP status, if it answered.
    pub status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// When (RFC 3339).
    pub at: String,
}

/// The newest deliveries, bounded.
#[derive(Debug)]
pub struct DeliveryLog {
    entries: Mutex<VecDeque<Delivery>>,
    capacity: usize,
}

impl DeliveryLog {
    /// A log keeping the newest `capacity` tries.
    pub fn new(capacity: usize) -> Self {
        DeliveryLog {
            entries: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
        }
    }

    fn record(&self, d: Delivery) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() >= self.capacity {
            e.pop_front();
        }
        e.push_back(d);
    }

    /// The newest `limit` tries, newest first.
    pub fn newest(&self, limit: usize) -> Vec<Delivery> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().rev().take(limit).cloned().collect()
    }
}

/// The signature header's value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    let mac = spg_core::scram::hmac_sha256(secret, &[t.as_bytes(), b".", body]);
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// For receivers: whether `header` signs `body` with `secret`, at most `tolerance` from `now`
/// (unix seconds).
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: u64, tolerance: u64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if t.abs_diff(now) > tolerance {
        return false;
    }
    let expected = sign(secret, t, body);
    let given = format!("t={t},v1={v1}");
    spg_core::scram::ct_eq(expected.as_bytes(), given.as_bytes())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Deliver the events of `events` to `hook` until `stop`, logging every try in `log`.
pub async fn deliver(
    hook: Webhook,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    policy: RetryPolicy,
    client: reqwest::Client,
    log: Arc<DeliveryLog>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.recv() => e,
        };
        match event {
            Ok(e) if hook.wants(e.kind) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = deliver_one(&hook, &e, &policy, &client, &log) => {}
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                warn!(url = %hook.url, missed = n, "webhook fell behind: events missed");
                log.record(Delivery {
                    event_id: String::new(),
                    kind: None,
                    database: None,
                    url: hook.url.clone(),
                    attempt: 0,
                    status: None,
                    error: Some(format!("{n} events missed: the endpoint fell behind")),
                    outcome: Outcome::Missed,
                    at: crate::api::model::now_rfc3339(),
                });
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn deliver_one(
    hook: &Webhook,
    e: &Event,
    policy: &RetryPolicy,
    client: &reqwest::Client,
    log: &DeliveryLog,
) {
    let body = match serde_json::to_vec(e) {
        Ok(b) => b,
        Err(err) => {
            warn!(error = %err, "encoding an event failed");
            return;
        }
    };
    let mut backoff = policy.first_backoff;
    for attempt in 1..=policy.attempts.max(1) {
        let sent = client
            .post(&hook.url)
            .timeout(policy.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, e.kind.as_str())
            .header(DELIVERY_HEADER, &e.id)
            .header(
                SIGNATURE_HEADER,
                sign(hook.secret.as_bytes(), unix_now(), &body),
            )
            .body(body.clone())
            .send()
            .await;
        let (status, error, retry) = match sent {
            Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None, false),
            Ok(r) => {
                let s = r.status();
                let retry = s.is_server_error() || s == reqwest::StatusCode::TOO_MANY_REQUESTS;
                (Some(s.as_u16()), Some(format!("answered {s}")), retry)
            }
            Err(err) => (None, Some(describe(&err)), true),
        };
        let last = attempt >= policy.attempts.max(1);
        let outcome = match (&error, retry && !last) {
            (None, _) => Outcome::Delivered,
            (Some(_), true) => Outcome::Retrying,
            (Some(_), false) => Outcome::Failed,
        };
        log.record(Delivery {
            event_id: e.id.clone(),
            kind: Some(e.kind),
            database: Some(e.database.to_string()),
            url: hook.url.clone(),
            attempt,
            status,
            error: error.clone(),
            outcome,
            at: crate::api::model::now_rfc3339(),
        });
        match outcome {
            Outcome::Delivered => return,
            Outcome::Retrying => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
            _ => {
                info!(url = %hook.url, event = %e.id, kind = e.kind.as_str(), attempt,
                      error = error.as_deref().unwrap_or_default(), "webhook delivery failed");
                return;
            }
        }
    }
}

/// The synchronous pre-wake hook: asked before every start of a stopped database, it may refuse
/// the wake (a spending cap, a suspended account). The request is an [`EVENT_HEADER`]
/// `pre_wake` POST, signed like the webhooks, of [`PreWakeRequest`]; a `2xx` answer of
/// `{"allow": false, "message": "..."}` refuses, and the client is told the message. Anything
/// else (`allow: true`, another status, no answer within `timeout`) lets the wake go on: the hook
/// can refuse, never stall.
#[derive(Clone)]
pub struct PreWakeHook {
    /// Where it is asked (`https://`; `http://` only to a loopback address).
    pub url: String,
    /// The signing secret.
    pub secret: zeroize::Zeroizing<String>,
    /// How long it may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for PreWakeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreWakeHook")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What the pre-wake hook is asked about.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PreWakeRequest {
    /// The database to start.
    pub database: String,
    /// The generation the start would be.
    pub generation: u64,
    /// The writer profile it would start with.
    pub profile: String,
    /// When (RFC 3339).
    pub at: String,
}

#[derive(serde::Deserialize)]
struct PreWakeAnswer {
    allow: bool,
    #[serde(default)]
    message: Option<String>,
}

/// The pre-wake hook's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Allow,
    /// Refused, with the operator's message.
    Refuse(String),
    /// No usable answer (why): the wake goes on.
    NoAnswer(String),
}

/// Ask `hook` whether `req` may go on.
pub async fn ask_pre_wake(
    hook: &PreWakeHook,
    client: &reqwest::Client,
    req: &PreWakeRequest,
) -> Verdict {
    let body = match serde_json::to_vec(req) {
        Ok(b) => b,
        Err(e) => return Verdict::NoAnswer(format!("encoding the request: {e}")),
    };
    let asked = async {
        let resp = client
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, "pre_wake")
            .header(
                SIGNATURE_HEADER,
                sign(hook.secret.as_bytes(), unix_now(), &body),
            )
            .body(body.clone())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        // A verdict is small; more is not one.
        let bytes = resp.bytes().await.map_err(|e| describe(&e))?;
        if bytes.len() > 64 << 10 {
            return Err("an answer over 64 KiB".into());
        }
        serde_json::from_slice::<PreWakeAnswer>(&bytes).map_err(|e| format!("answer: {e}"))
    };
    match tokio::time::timeout(hook.timeout, asked).await {
        Err(_) => Verdict::NoAnswer(format!("no answer within {:?}", hook.timeout)),
        Ok(Err(why)) => Verdict::NoAnswer(why),
        Ok(Ok(a)) if a.allow => Verdict::Allow,
        Ok(Ok(a)) => Verdict::Refuse(
            a.message
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| "refused by the platform's pre-wake hook".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_refuse_tampering_and_old_ones() {
        let body = br#"{"kind":"woken"}"#;
        let h = sign(b"s3cret", 1_000, body);
        assert!(h.starts_with("t=1000,v1="), "{h}");
        assert!(verify(b"s3cret", &h, body, 1_010, 300));
        assert!(!verify(b"other", &h, body, 1_010, 300), "wrong secret");
        assert!(!verify(b"s3cret", &h, b"{}", 1_010, 300), "another body");
        assert!(!verify(b"s3cret", &h, body, 2_000, 300), "too old");
        assert!(
            !verify(b"s3cret", "v1=00", body, 1_000, 300),
            "no timestamp"
        );
        assert!(
            !verify(b"s3cret", "t=1000", body, 1_000, 300),
            "no signature"
        );
    }

    #[test]
    fn urls_are_https_or_loopback_http() {
        let hook = |url: &str| Webhook {
            url: url.into(),
            secret: zeroize::Zeroizing::new("s3cr3t-value".into()),
            events: vec![],
        };
        assert!(hook("https://hooks.example.com/spg").validate().is_ok());
        assert!(hook("http://127.0.0.1:9000/x").validate().is_ok());
        assert!(hook("http://[::1]:9000/x").validate().is_ok());
        assert!(hook("http://hooks.example.com/x").validate().is_err());
        assert!(hook("ftp://127.0.0.1/x").validate().is_err());
        assert!(hook("not a url").validate().is_err());
        assert!(!format!("{:?}", hook("https://a/")).contains("s3cr3t"));
    }

    #[test]
    fn the_log_keeps_the_newest() {
        let log = DeliveryLog::new(2);
        for i in 0..3 {
            log.record(Delivery {
                event_id: i.to_string(),
                kind: None,
                database: None,
                url: String::new(),
                attempt: 1,
                status: None,
                error: None,
                outcome: Outcome::Delivered,
                at: String::new(),
            });
        }
        let ids: Vec<_> = log.newest(10).into_iter().map(|d| d.event_id).collect();
        assert_eq!(ids, ["2", "1"]);
    }
}
