//! Client → backend: the client's messages, mapped to the attached backend (taking one when
//! the client starts work), with protocol-level statements renamed to the gateway's.

use super::replies::{evict, forward, forward_tracked, push_fake, sync_settings};
use super::*;

impl<'a> Session<'a> {
    // ---- client → backend -------------------------------------------------------------

    /// Handle every whole message the client sent. `Some` when the session is over.
    pub(super) async fn process_client(&mut self) -> Result<Option<End>, GatewayError> {
        loop {
            if self.terminated {
                return Ok(None);
            }
            let stream = |t: u8| t == b'd';
            let piece = self
                .csplit
                .next(&mut self.cin, self.max_message, STREAM_OVER, stream)?;
            let Some(piece) = piece else {
                return Ok(None);
            };
            match piece {
                Piece::StreamStart(_) => {
                    // CopyData: only meaningful inside COPY, on the backend that runs it.
                    self.dropping_stream = self.att.is_none();
                    self.streaming = !self.dropping_stream;
                }
                Piece::Raw(b) => {
                    if self.streaming {
                        if let Some(att) = &mut self.att {
                            att.out.extend_from_slice(&b);
                            flush_backend(att)?;
                        }
                    }
                    if self.csplit.at_boundary() {
                        self.streaming = false;
                        self.dropping_stream = false;
                    }
                }
                Piece::Whole(msg) => {
                    self.on_client_message(msg.clone()).await?;
                    if let Some(att) = &mut self.att {
                        if att.fresh && att.log.len() < MAX_REPLAY {
                            att.log.push(msg);
                        } else {
                            att.fresh = false;
                            att.log.clear();
                        }
                    }
                    if let Some(att) = &mut self.att {
                        if att.out.len() >= HIGH_WATER {
                            flush_backend(att)?;
                            if att.out.len() >= HIGH_WATER {
                                return Ok(None);
                            }
                        }
                    }
                }
            }
        }
    }

    pub(super) async fn on_client_message(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        let tag = msg[0];
        if self.skip_until_sync {
            if tag == b'S' {
                self.skip_until_sync = false;
                msg::ready_for_query(&mut self.cout, b'I');
            } else if tag == b'X' {
                self.terminated = true;
            }
            return Ok(());
        }
        match tag {
            b'X' => {
                self.terminated = true;
                Ok(())
            }
            b'S' => {
                match &mut self.att {
                    Some(att) => {
                        att.unsynced = false;
                        forward(att, &msg, Kind::Sync);
                    }
                    None => msg::ready_for_query(&mut self.cout, b'I'),
                }
                Ok(())
            }
            b'H' => {
                if let Some(att) = &mut self.att {
                    att.out.extend_from_slice(&msg);
                    if att.fresh && matches!(att.queue.front(), Some(Expect::Fake(_))) {
                        att.fresh = false;
                        att.log.clear();
                    }
                }
                self.flush_fakes();
                Ok(())
            }
            b'd' | b'c' | b'f' => {
                if let Some(att) = &mut self.att {
                    att.out.extend_from_slice(&msg);
                }
                Ok(())
            }
            b'Q' => self.on_query(msg).await,
            b'P' => self.on_parse(msg).await,
            b'B' => self.on_bind(msg).await,
            b'D' => self.on_describe(msg).await,
            b'C' => self.on_close(msg).await,
            b'E' => self.on_execute(msg).await,
            b'F' => {
                // A function called by its OID: the gateway cannot tell what it does.
                self.state.check_wanted = true;
                let Some(att) = self.attach_for(tag).await? else {
                    return Ok(());
                };
                forward(att, &msg, Kind::Call);
                Ok(())
            }
            other => Err(GatewayError::Protocol(format!(
                "invalid frontend message type {other}"
            ))),
        }
    }

    pub(super) async fn on_query(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        self.local.queries += 1;
        let sql = m::query_text(&msg)?;
        let analysis = sql::analyze(sql, self.params.dialect());
        // `DEALLOCATE name` of a protocol-level statement: the gateway owns those.
        if let Some(name) = analysis.sole_deallocate() {
            if let Some(stmt) = self.statements.remove(name) {
                self.statement_bytes -= stmt.parse.len();
                match &mut self.att {
                    Some(att) => push_fake(att, &mut self.cout, Expect::FakeDeallocate),
                    None => {
                        m::command_complete(&mut self.cout, "DEALLOCATE");
                        msg::ready_for_query(&mut self.cout, b'I');
                    }
                }
                return Ok(());
            }
        }
        self.want_check(&analysis);
        let track = (!analysis.statements.is_empty()).then(|| Track {
            analysis: Arc::new(analysis),
            next: 0,
        });
        let Some(att) = self.attach_for(b'Q').await? else {
            return Ok(());
        };
        forward_tracked(att, &msg, Kind::Query, track);
        Ok(())
    }

    pub(super) async fn on_parse(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        let p = m::parse_parse(&msg)?;
        let analysis = Arc::new(sql::analyze(p.query, self.params.dialect()));
        if p.name.is_empty() {
            let stmt = Arc::new(Stmt {
                gw: Arc::from(""),
                parse: msg.clone(),
                analysis,
                used: 0.into(),
            });
            self.unnamed = Some(stmt);
            let Some(att) = self.attach_for(b'P').await? else {
                return Ok(());
            };
            att.unsynced = true;
            att.unnamed_here = true;
            forward(att, &msg, Kind::Parse);
            return Ok(());
        }
        let gw = gateway_name(p.query, p.types);
        let stmt = Arc::new(Stmt {
            parse: m::build_parse(gw.as_bytes(), p.query, p.types),
            gw: Arc::from(gw.as_str()),
            analysis,
            used: 0.into(),
        });
        let client_name = p.name.to_vec();
        self.remember_statement(client_name.clone(), Arc::clone(&stmt));
        // A lone `Parse` + `Sync` (libpq's PQprepare) between transactions while every backend
        // is busy: answer it here and prepare the statement where it is first used (errors in
        // it are reported then). Waiting could deadlock a client program that prepares on one
        // connection while its other connections hold the backends (pgbench -M prepared).
        if self.att.is_none() && self.cin.first() == Some(&b'S') && !self.pool.has_free() {
            self.pool
                .stats
                .prepares_deferred
                .fetch_add(1, Ordering::Relaxed);
            m::empty(&mut self.cout, b'1');
            return Ok(());
        }
        let max_prepared = self.pool.config().max_prepared_per_server;
        let pool = Arc::clone(&self.pool);
        if self.attach_for(b'P').await?.is_none() {
            return Ok(());
        }
        let Some(att) = &mut self.att else {
            return Ok(());
        };
        att.unsynced = true;
        if att.skipping {
            // PostgreSQL would skip this Parse (an earlier error, no Sync yet): no statement.
            self.forget_statement(&client_name);
            return Ok(());
        }
        if att.server.prepared.contains(&stmt.gw) {
            pool.stats.prepare_hits.fetch_add(1, Ordering::Relaxed);
            let mut done = BytesMut::new();
            m::empty(&mut done, b'1');
            push_fake(att, &mut self.cout, Expect::Fake(done.freeze()));
        } else {
            evict(att, max_prepared);
            pool.stats.prepares.fetch_add(1, Ordering::Relaxed);
            att.server.prepared.insert(Arc::clone(&stmt.gw));
            att.server.note_prepared();
            att.out.extend_from_slice(&stmt.parse);
            att.queue.push_back(Expect::Reply {
                kind: Kind::Parse,
                internal: false,
                created: Some(Created {
                    gw: Arc::clone(&stmt.gw),
                    client_name: Some(client_name),
                }),
                track: None,
                check: false,
            });
        }
        Ok(())
    }

    /// Keep a client's named statement. The map is bounded (count and bytes, per client): past
    /// the bound the least recently used statement is forgotten, and a later use of its name
    /// reaches the backend as the client wrote it, where it is an unknown statement (SQLSTATE
    /// `26000`), never another statement's.
    fn remember_statement(&mut self, name: Vec<u8>, stmt: Arc<Stmt>) {
        self.uses += 1;
        stmt.used.store(self.uses, Ordering::Relaxed);
        self.statement_bytes += stmt.parse.len() + name.len();
        if let Some(old) = self.statements.insert(name.clone(), stmt) {
            self.statement_bytes -= old.parse.len() + name.len();
        }
        let cfg = self.pool.config();
        let (max_count, max_bytes) = (
            cfg.max_statements_per_client,
            cfg.max_statement_bytes_per_client,
        );
        while self.statements.len() > max_count.max(1)
            || (self.statement_bytes > max_bytes && self.statements.len() > 1)
        {
            let Some(oldest) = self
                .statements
                .iter()
                .filter(|(k, _)| **k != name)
                .min_by_key(|(_, s)| s.used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.forget_statement(&oldest);
            self.pool
                .stats
                .statements_evicted
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn forget_statement(&mut self, name: &[u8]) {
        if let Some(old) = self.statements.remove(name) {
            self.statement_bytes = self
                .statement_bytes
                .saturating_sub(old.parse.len() + name.len());
        }
    }

    /// Make sure the statement `name` refers to exists on the attached backend; returns the
    /// name to use there (`None`: pass the client's name through, unknown to the gateway).
    pub(super) fn ensure_prepared(&mut self, name: &[u8]) -> Option<Arc<str>> {
        let max_prepared = self.pool.config().max_prepared_per_server;
        let att = self.att.as_mut()?;
        if name.is_empty() {
            if !att.unnamed_here && !att.skipping {
                if let Some(stmt) = &self.unnamed {
                    att.out.extend_from_slice(&stmt.parse);
                    att.queue.push_back(Expect::Reply {
                        kind: Kind::Parse,
                        internal: true,
                        created: None,
                        track: None,
                        check: false,
                    });
                    att.unnamed_here = true;
                }
            }
            return None;
        }
        let stmt = self.statements.get(name)?;
        self.uses += 1;
        stmt.used.store(self.uses, Ordering::Relaxed);
        if !att.skipping && !att.server.prepared.contains(&stmt.gw) {
            evict(att, max_prepared);
            self.pool.stats.prepares.fetch_add(1, Ordering::Relaxed);
            att.server.prepared.insert(Arc::clone(&stmt.gw));
            att.server.note_prepared();
            att.out.extend_from_slice(&stmt.parse);
            att.queue.push_back(Expect::Reply {
                kind: Kind::Parse,
                internal: true,
                created: Some(Created {
                    gw: Arc::clone(&stmt.gw),
                    client_name: None,
                }),
                track: None,
                check: false,
            });
        }
        Some(Arc::clone(&stmt.gw))
    }

    pub(super) async fn on_bind(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        let (portal, stmt, rest_at) = m::parse_bind(&msg)?;
        let (portal, stmt) = (portal.to_vec(), stmt.to_vec());
        if self.attach_for(b'B').await?.is_none() {
            return Ok(());
        }
        // What the portal will run, for its Execute.
        let analysis = if stmt.is_empty() {
            self.unnamed.as_ref().map(|s| Arc::clone(&s.analysis))
        } else {
            self.statements.get(&stmt).map(|s| Arc::clone(&s.analysis))
        };
        match analysis.filter(|a| !a.statements.is_empty()) {
            Some(a) => self.portals.insert(portal.clone(), a),
            None => self.portals.remove(&portal),
        };
        let mapped = self.ensure_prepared(&stmt);
        let Some(att) = &mut self.att else {
            return Ok(());
        };
        att.unsynced = true;
        match mapped {
            Some(gw) => {
                let rewritten = m::rewrite_bind(&msg, &portal, gw.as_bytes(), rest_at);
                forward(att, &rewritten, Kind::Bind);
            }
            None => forward(att, &msg, Kind::Bind),
        }
        Ok(())
    }

    pub(super) async fn on_execute(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        self.local.queries += 1;
        let portal = m::parse_execute(&msg)?;
        let track = self.portals.get(portal).map(|a| Track {
            analysis: Arc::clone(a),
            next: 0,
        });
        if let Some(t) = &track {
            let a = Arc::clone(&t.analysis);
            self.want_check(&a);
        }
        let Some(att) = self.attach_for(b'E').await? else {
            return Ok(());
        };
        att.unsynced = true;
        forward_tracked(att, &msg, Kind::Execute, track);
        Ok(())
    }

    pub(super) async fn on_describe(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        let (kind, name) = m::parse_target(&msg)?;
        let name = name.to_vec();
        if self.attach_for(b'D').await?.is_none() {
            return Ok(());
        }
        let mapped = if kind == b'S' {
            self.ensure_prepared(&name)
        } else {
            None
        };
        let Some(att) = &mut self.att else {
            return Ok(());
        };
        att.unsynced = true;
        match mapped {
            Some(gw) => forward(
                att,
                &m::build_target(b'D', b'S', gw.as_bytes()),
                Kind::Describe,
            ),
            None => forward(att, &msg, Kind::Describe),
        }
        Ok(())
    }

    pub(super) async fn on_close(&mut self, msg: Bytes) -> Result<(), GatewayError> {
        let (kind, name) = m::parse_target(&msg)?;
        let ours = kind == b'S' && !name.is_empty();
        if ours {
            // The statement stays in the backend's cache; the client's name goes.
            let name = name.to_vec();
            self.forget_statement(&name);
        }
        match &mut self.att {
            Some(att) if !ours => {
                att.unsynced = true;
                forward(att, &msg, Kind::Close);
            }
            Some(att) => {
                att.unsynced = true;
                let mut done = BytesMut::new();
                m::empty(&mut done, b'3');
                push_fake(att, &mut self.cout, Expect::Fake(done.freeze()));
            }
            None => m::empty(&mut self.cout, b'3'),
        }
        Ok(())
    }

    /// The attached backend, taking one when the client has none. `None` when none could be
    /// had: the client got an error (and, for extended-protocol messages, the rest of its
    /// batch up to `Sync` is dropped).
    pub(super) async fn attach_for(
        &mut self,
        tag: u8,
    ) -> Result<Option<&mut Attached>, GatewayError> {
        if self.att.is_none() {
            if let Err(e) = self.attach().await {
                if e.severity() == Severity::Fatal
                    && !matches!(
                        e,
                        GatewayError::WakeTimeout { .. } | GatewayError::BackendUnavailable(_)
                    )
                {
                    return Err(e);
                }
                warn!(error = %e, "no backend connection for a transaction");
                let code = e.code().unwrap_or("08006").to_string();
                let (text, hint) = e.client_message("", self.pool.db.as_str());
                msg::error_response(&mut self.cout, Severity::Error, &code, &text, hint);
                if matches!(tag, b'Q' | b'F') {
                    msg::ready_for_query(&mut self.cout, b'I');
                } else {
                    self.skip_until_sync = true;
                }
                return Ok(None);
            }
        }
        Ok(self.att.as_mut())
    }

    pub(super) async fn attach(&mut self) -> Result<(), GatewayError> {
        let deadline = Instant::now() + self.shared.config.wake_timeout;
        self.pool.lease_enter(deadline).await?;
        let server = match self.pool.checkout(&self.info, deadline).await {
            Ok(s) => s,
            Err(e) => {
                self.pool.lease_exit();
                self.info.set_state(ClientState::Idle, 0);
                return Err(e);
            }
        };
        self.info.set_state(ClientState::Active, server.info.id);
        self.cancel.set_target(Some(server.target));
        let mut att = Attached::new(server);
        if let Some((queue, out, log)) = self.spare.take() {
            att.queue = queue;
            att.out = out;
            att.log = log;
        }
        if !Arc::ptr_eq(&att.server.values, &self.params) {
            let have = Arc::clone(&att.server.values);
            sync_settings(&mut att, &self.params, &have);
        }
        self.att = Some(att);
        Ok(())
    }
}

/// The gateway's name of a statement: derived from its text and parameter types, so equal
/// statements of different clients share one preparation per backend.
pub(super) fn gateway_name(query: &[u8], types: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((query.len() as u64).to_be_bytes());
    h.update(query);
    h.update(types);
    let d = h.finalize();
    let mut s = String::with_capacity(STMT_PREFIX.len() + 32);
    s.push_str(STMT_PREFIX);
    for b in &d[..16] {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_are_stable_and_distinct() {
        let a = gateway_name(b"select $1", &[0, 1, 0, 0, 0, 23]);
        assert_eq!(a, gateway_name(b"select $1", &[0, 1, 0, 0, 0, 23]));
        assert_ne!(a, gateway_name(b"select $1", &[0, 0]));
        assert_ne!(a, gateway_name(b"select $2", &[0, 1, 0, 0, 0, 23]));
        assert!(a.starts_with(STMT_PREFIX) && a.len() == STMT_PREFIX.len() + 32);
    }
}
