//! Login on a pool: the client's startup settings settled (on a backend when the pool cannot
//! tell their values alone), then `ParameterStatus`, `BackendKeyData` and `ReadyForQuery`.

use super::*;

/// Parameters a client's startup packet asks for, as (lower-case name, display name, value).
pub(super) fn startup_settings(
    startup: &StartupMessage,
) -> Result<Vec<(String, String, String)>, GatewayError> {
    let mut out = Vec::new();
    for (k, v) in &startup.params {
        if !crate::backend::forwardable(k) {
            continue;
        }
        if k == "options" {
            let opts =
                crate::pool::params::parse_options(v).map_err(|e| GatewayError::ServerError {
                    code: "22023".into(),
                    message: format!("invalid startup options: {e}"),
                })?;
            for (k, v) in opts {
                out.push((k.to_ascii_lowercase(), k, v));
            }
            continue;
        }
        out.push((k.to_ascii_lowercase(), k.clone(), v.clone()));
    }
    Ok(out)
}

/// The client's parameters from the pool's baseline and its startup settings; `None` when a
/// reported value's canonical form is not known yet.
pub(super) fn desired(
    pool: &Pool,
    baseline: &Params,
    settings: &[(String, String, String)],
    exact: bool,
) -> Option<Params> {
    let mut p = baseline.clone();
    for (key, display, value) in settings {
        if let Some(cur) = p.map.get_mut(key).filter(|c| c.reported) {
            match pool.canonical(key, value.as_bytes()) {
                Some(c) => cur.value = c,
                None if exact => return None,
                None => cur.value = value.as_bytes().to_vec(),
            }
        } else {
            p.map.insert(
                key.clone(),
                Param {
                    display: display.clone(),
                    value: value.as_bytes().to_vec(),
                    sql: false,
                    reported: false,
                },
            );
        }
    }
    Some(p)
}

impl<'a> Session<'a> {
    /// Log the client in on its pool: its parameters are settled (on a backend when the pool
    /// cannot tell them alone, which also wakes the database), then it gets `ParameterStatus`,
    /// the gateway's `BackendKeyData` and `ReadyForQuery`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn login(
        shared: &'a Arc<Shared>,
        client: &'a mut ClientStream,
        startup: &StartupMessage,
        pool: Arc<Pool>,
        peer: Option<SocketAddr>,
        id: u64,
        greeting: BytesMut,
        leftover: BytesMut,
    ) -> Result<Session<'a>, GatewayError> {
        let settings = startup_settings(startup)?;
        let app = startup.param("application_name").unwrap_or("").to_string();
        let info = Arc::new(ClientInfo::new(id, peer, app));
        let cancel = shared.cancels.register(None);
        let deadline = Instant::now() + shared.config.wake_timeout;
        let fast = match pool.baseline() {
            Some(b) if pool.mode == PoolMode::Transaction && pool.has_servers() => {
                desired(&pool, &b, &settings, true)
            }
            _ => None,
        };
        let mut att = None;
        let params = match fast {
            Some(p) => pool.intern(p),
            None => {
                pool.lease_enter(deadline).await?;
                let server = match pool.checkout(&info, deadline).await {
                    Ok(s) => s,
                    Err(e) => {
                        pool.lease_exit();
                        return Err(e);
                    }
                };
                let (params, server) = match settle(&pool, server, &settings).await {
                    Ok(x) => x,
                    Err(e) => {
                        pool.lease_exit();
                        return Err(e);
                    }
                };
                if pool.mode == PoolMode::Session {
                    info.set_state(ClientState::Active, server.info.id);
                    cancel.set_target(Some(server.target));
                    att = Some(Attached::new(server));
                } else {
                    pool.release(server);
                    pool.lease_exit();
                }
                params
            }
        };
        pool.add_client(Arc::clone(&info));
        // The rest of the authentication, the parameters, the key and ready: one write.
        let mut out = greeting;
        for (k, v) in params.reported_pairs() {
            msg::parameter_status(&mut out, k, v);
        }
        msg::backend_key_data(&mut out, cancel.pid, cancel.secret);
        msg::ready_for_query(&mut out, b'I');
        client.write_all(&out).await?;
        client.flush().await?;
        let session = Session {
            shared,
            max_message: shared.config.max_message_bytes,
            pool,
            info,
            cancel,
            client,
            cin: {
                // What the client sent past its login, first.
                let mut cin = leftover;
                cin.reserve(1024);
                cin
            },
            csplit: Splitter::default(),
            cout: BytesMut::new(),
            startup: Arc::clone(&params),
            params,
            statements: HashMap::new(),
            unnamed: None,
            statement_bytes: 0,
            uses: 0,
            portals: HashMap::new(),
            pins: BTreeMap::new(),
            counted_pins: BTreeSet::new(),
            state: Tracker::default(),
            att,
            skip_until_sync: false,
            dropping_stream: false,
            streaming: false,
            terminated: false,
            spare: None,
            retry: None,
            retries: 0,
            local: LocalStats::new(),
            scratch: Vec::new(),
        };
        // `-c synchronous_commit=off` in the startup options.
        session.note_async_commit();
        Ok(session)
    }
}

/// Settle a logging-in client's parameters on `server`: apply its startup settings, learn the
/// values PostgreSQL reports for them. Returns the client's parameters.
pub(super) async fn settle(
    pool: &Pool,
    mut server: Server,
    settings: &[(String, String, String)],
) -> Result<(Arc<Params>, Server), GatewayError> {
    let baseline = pool
        .baseline()
        .unwrap_or_else(|| Arc::clone(&server.values));
    let want = desired(pool, &baseline, settings, false).unwrap_or_else(|| (*baseline).clone());
    let queries = want.sync_sql(&server.values);
    if queries.is_empty() {
        for (key, _, given) in settings {
            if let Some(p) = want.map.get(key).filter(|p| p.reported) {
                pool.learn_canonical(key, given.as_bytes(), &p.value);
            }
        }
        let params = pool.intern(want);
        server.values = Arc::clone(&params);
        return Ok((params, server));
    }
    server.info.set_state(ServerState::Login, 0);
    let before = Arc::clone(&server.values);
    let mut reported = Vec::new();
    for sql in &queries {
        let (r, error) = match server.simple_query(sql).await {
            Ok(x) => x,
            Err(e) => {
                pool.close(server);
                return Err(e);
            }
        };
        reported.extend(r);
        if let Some(err) = error {
            // The settings of a query ran in one implicit transaction; an earlier query (a new
            // client_encoding) may have taken: the connection goes rather than guess.
            let f = msg::parse_error_fields(m::body(&err));
            pool.close(server);
            return Err(GatewayError::ServerError {
                code: f.code,
                message: f.message,
            });
        }
    }
    let mut params = want;
    // A reported setting PostgreSQL did not report again kept its value: the client's
    // spelling (`utf8`) means what the backend already had (`UTF8`), and that is what the
    // client is shown, as PostgreSQL would.
    for (key, _, _) in settings {
        let unchanged = !reported.iter().any(|(k, _)| k.eq_ignore_ascii_case(key));
        if let (Some(p), Some(had), true) = (
            params.map.get_mut(key).filter(|p| p.reported),
            before.map.get(key),
            unchanged,
        ) {
            p.value = had.value.clone();
        }
    }
    for (k, v) in &reported {
        params.reported(k, v);
    }
    // What PostgreSQL made of each reported setting (also of those it already had, which it
    // does not report again): later logins with the same settings need no backend.
    for (key, _, given) in settings {
        if let Some(p) = params.map.get(key).filter(|p| p.reported) {
            pool.learn_canonical(key, given.as_bytes(), &p.value);
        }
    }
    let params = pool.intern(params);
    server.values = Arc::clone(&params);
    server.info.set_state(ServerState::Active, 0);
    Ok((params, server))
}
