//! The web console, served by the control plane at `/console` over its HTTPS listener.
//!
//! - **Sign-in** with the admin API key (`POST /console/session` `{"api_key"}`, under the
//!   server's throttle of wrong keys) opens a session: an `HttpOnly; Secure; SameSite=Strict`
//!   cookie holding a random id, good for 12 hours, and a CSRF token the page sends back in
//!   `X-CSRF-Token` with every request that changes something. The key itself never reaches
//!   the page's script. `DELETE /console/session` signs out.
//! - **The page** (`/console`, plain HTML, CSS and JS embedded in the binary: no CDN, works
//!   offline) calls the documented `/v1` API with the session instead of a Bearer key
//!   ([`Console::admit`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// The session cookie's name.
pub const COOKIE: &str = "spg_session";
/// The header carrying the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions held at once (the oldest goes first).
const MAX_SESSIONS: usize = 1000;

struct Session {
    csrf: String,
    expires: Instant,
}

/// The console's sessions, and what the page shows about connecting.
pub struct Console {
    sessions: Mutex<HashMap<String, Session>>,
    dsn_template: Option<String>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Default for Console {
    fn default() -> Self {
        Console {
            sessions: Mutex::new(HashMap::new()),
            dsn_template: None,
        }
    }
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// What [`Console::admit`] decided about a request without a Bearer key.
pub enum Admission {
    /// No session cookie: the request goes on to the key check.
    NoSession,
    /// A live session, and for a change the right CSRF token.
    Admitted,
    /// Refused (a stale session, a missing or wrong CSRF token).
    Refused(Response),
}

impl Console {
    /// A console whose page shows `dsn_template` (with `{role}`, `{password}` and
    /// `{database}` to fill in) as the way to connect.
    pub fn with_dsn_template(dsn_template: String) -> Self {
        Console {
            dsn_template: Some(dsn_template),
            ..Console::default()
        }
    }

    fn open(&self) -> (String, String) {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        s.retain(|_, v| v.expires > now);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s
                .iter()
                .min_by_key(|(_, v)| v.expires)
                .map(|(k, _)| k.clone())
            {
                s.remove(&oldest);
            }
        }
        let (id, csrf) = (random_token(), random_token());
        s.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        (id, csrf)
    }

    fn csrf_of(&self, id: &str) -> Option<String> {
        let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.get(id)
            .filter(|v| v.expires > Instant::now())
            .map(|v| v.csrf.clone())
    }

    fn view(&self, csrf: String) -> SessionView {
        SessionView {
            csrf,
            dsn_template: self.dsn_template.clone(),
        }
    }

    fn close(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Admit an API request on a console session: one without an `Authorization` header
    /// that carries the session cookie; a request that changes something (not `GET`/`HEAD`)
    /// also the session's CSRF token.
    pub fn admit(&self, method: &Method, headers: &HeaderMap) -> Admission {
        if headers.contains_key(header::AUTHORIZATION) {
            return Admission::NoSession;
        }
        let Some(id) = cookie_of(headers) else {
            return Admission::NoSession;
        };
        let Some(csrf) = self.csrf_of(&id) else {
            return Admission::Refused(refusal(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the console session ended; sign in again",
            ));
        };
        if method == Method::GET || method == Method::HEAD {
            return Admission::Admitted;
        }
        let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        match given.is_some_and(|g| spg_core::scram::ct_eq(g.as_bytes(), csrf.as_bytes())) {
            true => Admission::Admitted,
            false => Admission::Refused(refusal(
                StatusCode::FORBIDDEN,
                "csrf",
                "missing or wrong X-CSRF-Token for this console session",
            )),
        }
    }
}

fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(super::model::ErrorBody {
            error: super::model::ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }),
    )
        .into_response()
}

fn session_cookie(id: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("spg_session=; Max-Age=0"))
}

/// Body of `POST /console/session`.
#[derive(Deserialize)]
struct SignIn {
    api_key: String,
}

/// What the page learns about its session.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionView {
    /// The token to send in `X-CSRF-Token`.
    pub csrf: String,
    /// The DSN pattern, with `{role}`, `{password}` and `{database}` to fill in, if known.
    pub dsn_template: Option<String>,
}

/// Sign in with the admin API key: sets the session cookie, returns the CSRF token.
#[utoipa::path(post, path = "/console/session", tag = "console",
    request_body(content = String, description = "`{\"api_key\": \"...\"}`", content_type = "application/json"),
    responses((status = 201, description = "Signed in; the cookie is set", body = SessionView),
              (status = 400, description = "Not `{\"api_key\"}`", body = super::model::ErrorBody),
              (status = 401, description = "A wrong key", body = super::model::ErrorBody),
              (status = 413, description = "Too large", body = super::model::ErrorBody),
              (status = 429, description = "Too many wrong keys from this address", body = super::model::ErrorBody)))]
pub(crate) async fn sign_in(State(st): State<super::server::AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 4096).await else {
        return refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body too large",
        );
    };
    let Ok(form) = serde_json::from_slice::<SignIn>(&bytes) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "invalid",
            "expected {\"api_key\": \"...\"}",
        );
    };
    let key = zeroize::Zeroizing::new(form.api_key);
    let probe = Request::from_parts(parts, axum::body::Body::empty());
    let checked = super::http::key_check(&probe, |_| st.keys.admin.matches(key.trim()));
    if let Err(refused) = checked.outcome().await {
        return refused;
    }
    let (id, csrf) = st.console.open();
    let view = st.console.view(csrf);
    let mut resp = (StatusCode::CREATED, Json(view)).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&id, SESSION_TTL.as_secs()),
    );
    resp
}

/// The session of the cookie sent: its CSRF token.
#[utoipa::path(get, path = "/console/session", tag = "console",
    responses((status = 200, description = "Signed in", body = SessionView),
              (status = 401, description = "Not signed in", body = super::model::ErrorBody)))]
pub(crate) async fn session(
    State(st): State<super::server::AppState>,
    headers: HeaderMap,
) -> Response {
    match cookie_of(&headers).and_then(|id| st.console.csrf_of(&id)) {
        Some(csrf) => Json(st.console.view(csrf)).into_response(),
        None => refusal(StatusCode::UNAUTHORIZED, "unauthorized", "not signed in"),
    }
}

/// Sign out (with the session's CSRF token): the session ends, the cookie is cleared.
#[utoipa::path(delete, path = "/console/session", tag = "console",
    responses((status = 204, description = "Signed out"),
              (status = 401, description = "The session had ended", body = super::model::ErrorBody),
              (status = 403, description = "No or a wrong CSRF token", body = super::model::ErrorBody)))]
pub(crate) async fn sign_out(
    State(st): State<super::server::AppState>,
    headers: HeaderMap,
) -> Response {
    if let Admission::Refused(r) = st.console.admit(&Method::DELETE, &headers) {
        return r;
    }
    if let Some(id) = cookie_of(&headers) {
        st.console.close(&id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", 0));
    resp
}

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// The console's headers: no caching of the page, no framing, nothing from elsewhere.
fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// The console's page.
#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 200, description = "The page", content_type = "text/html")))]
pub(crate) async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// The console's script and style.
#[utoipa::path(get, path = "/console/assets/{file}", tag = "console",
    params(("file" = String, Path, description = "`console.js` or `console.css`")),
    responses((status = 200, description = "The file"), (status = 404, description = "No such file")))]
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "console.js" => page("text/javascript; charset=utf-8", SCRIPT),
        "console.css" => page("text/css; charset=utf-8", STYLE),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn sessions_admit_reads_and_csrf_checked_changes() {
        let c = Console::default();
        let (id, csrf) = c.open();
        let cookie = format!("other=1; {COOKIE}={id}");
        let admitted = |m: &Method, h: &HeaderMap| matches!(c.admit(m, h), Admission::Admitted);
        assert!(admitted(&Method::GET, &headers(&[("cookie", &cookie)])));
        assert!(
            !admitted(&Method::POST, &headers(&[("cookie", &cookie)])),
            "no token"
        );
        assert!(!admitted(
            &Method::POST,
            &headers(&[("cookie", &cookie), (CSRF_HEADER, "wrong")])
        ));
        assert!(admitted(
            &Method::POST,
            &headers(&[("cookie", &cookie), (CSRF_HEADER, &csrf)])
        ));
        assert!(matches!(
            c.admit(&Method::GET, &headers(&[("cookie", "spg_session=nope")])),
            Admission::Refused(_)
        ));
        assert!(matches!(
            c.admit(&Method::GET, &HeaderMap::new()),
            Admission::NoSession
        ));
        c.close(&id);
        assert!(!admitted(&Method::GET, &headers(&[("cookie", &cookie)])));
        let v = session_cookie("abc", 60);
        let v = v.to_str().unwrap();
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(v.contains(flag), "{v}");
        }
    }
}
