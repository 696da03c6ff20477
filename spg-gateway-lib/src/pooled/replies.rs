//! Backend → client: replies matched to what each forwarded message will produce, the
//! gateway's own answers put in line, and replies to messages the gateway added swallowed.

use super::*;

/// What a forwarded message will produce, in order.
#[derive(Debug)]
pub(super) enum Expect {
    /// A reply from the backend: forwarded, or swallowed for messages the gateway added.
    Reply {
        kind: Kind,
        internal: bool,
        /// A `Parse` that creates a gateway-owned statement (undone if it fails or is skipped).
        created: Option<Created>,
        /// The statements whose outcomes the session follows (`Query`, `Execute`).
        track: Option<Track>,
        /// The gateway's own session state check ([`sql::CHECK_QUERY`]).
        check: bool,
    },
    /// Bytes the gateway answers itself, sent when their turn comes.
    Fake(Bytes),
    /// `CommandComplete DEALLOCATE` and `ReadyForQuery` for a client-side `DEALLOCATE`.
    FakeDeallocate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Query,
    Call,
}

impl Kind {
    pub(super) fn completed_by(self, tag: u8) -> bool {
        match self {
            Kind::Parse => tag == b'1',
            Kind::Bind => tag == b'2',
            Kind::Describe => tag == b'T' || tag == b'n',
            Kind::Execute => matches!(tag, b'C' | b'I' | b's'),
            Kind::Close => tag == b'3',
            Kind::Sync | Kind::Query | Kind::Call => tag == b'Z',
        }
    }

    /// Ends with `ReadyForQuery`, and errors do not skip what follows.
    pub(super) fn is_sync_point(self) -> bool {
        matches!(self, Kind::Sync | Kind::Query | Kind::Call)
    }
}

impl<'a> Session<'a> {
    // ---- backend → client -------------------------------------------------------------

    pub(super) fn process_backend(&mut self) -> Result<(), GatewayError> {
        loop {
            let Some(att) = &mut self.att else {
                return Ok(());
            };
            let stream = |t: u8| matches!(t, b'D' | b'd');
            let inbuf = &mut att.server.inbuf;
            let span = att
                .server
                .splitter
                .next_span(inbuf, usize::MAX >> 1, STREAM_OVER, stream)
                .map_err(|e| GatewayError::BackendRejected(e.to_string()))?;
            let Some(span) = span else {
                if att.server.splitter.at_boundary() && inbuf.len() >= m::HEADER {
                    // Room for the rest of the message, read in as few reads as it takes.
                    let len = u32::from_be_bytes([inbuf[1], inbuf[2], inbuf[3], inbuf[4]]);
                    inbuf.reserve((1 + len as usize).saturating_sub(inbuf.len()));
                }
                // Something asynchronous (a notice) after the transaction's ReadyForQuery.
                self.maybe_release();
                return Ok(());
            };
            let internal = matches!(
                att.queue.front(),
                Some(Expect::Reply { internal: true, .. })
            );
            match span {
                Span::StreamStart(_) => {}
                Span::Raw(n) => {
                    if !internal {
                        self.cout.extend_from_slice(&inbuf[..n]);
                    }
                    inbuf.advance(n);
                }
                Span::Whole(n) => {
                    // Handled from a copy kept across messages (no allocation, no reference
                    // counting per message): the handler may give the backend back.
                    let mut msg = std::mem::take(&mut self.scratch);
                    msg.clear();
                    msg.extend_from_slice(&inbuf[..n]);
                    inbuf.advance(n);
                    let r = self.on_backend_message(&msg);
                    if msg.capacity() <= 64 * 1024 {
                        self.scratch = msg;
                    }
                    r?;
                }
            }
            if self.retry.is_some() {
                return Ok(());
            }
            if self.cout.len() >= HIGH_WATER {
                return Ok(());
            }
        }
    }

    pub(super) fn on_backend_message(&mut self, msg: &[u8]) -> Result<(), GatewayError> {
        let Some(att) = &mut self.att else {
            return Ok(());
        };
        let tag = msg[0];
        if att.fresh {
            att.fresh = false;
            let log = std::mem::take(&mut att.log);
            if tag == b'E' && m::error_is_fatal(msg) && self.retries < MAX_RETRIES {
                let code = msg::parse_error_fields(m::body(msg)).code;
                // Shutting down or gone before it read anything (a reply would come first):
                // nothing ran, the messages can go to another backend.
                if code.starts_with("57P") && !log.is_empty() {
                    self.retries += 1;
                    att.broken = true;
                    debug!(
                        code,
                        "backend connection was gone; sending the transaction to another"
                    );
                    self.retry = Some(log);
                    return Ok(());
                }
            }
            // Answers held back for this moment go first.
            self.flush_fakes();
        }
        let Some(att) = &mut self.att else {
            return Ok(());
        };
        let head = att.queue.front();
        let internal = matches!(head, Some(Expect::Reply { internal: true, .. }));
        match tag {
            b'A' => {
                // A notification the client's own backend sent carries the pid the client
                // knows (from the gateway's BackendKeyData), as it would directly.
                match m::notification_with_pid(msg, self.cancel.pid) {
                    Some((from, mine)) if from == att.server.target.pid => {
                        self.cout.extend_from_slice(&mine)
                    }
                    _ => self.cout.extend_from_slice(msg),
                }
            }
            b'N' => {
                if !internal {
                    self.cout.extend_from_slice(msg);
                }
            }
            b'S' => {
                let (k, v) = m::parameter_status(msg)?;
                let key = k.to_ascii_lowercase();
                if self.params.map.get(&key).is_none_or(|p| p.value != v) {
                    let mut p = (*self.params).clone();
                    p.reported(k, v);
                    self.params = self.pool.intern(p);
                }
                att.server.values = Arc::clone(&self.params);
                if !internal {
                    self.cout.extend_from_slice(msg);
                }
            }
            b'E' => {
                if m::error_is_fatal(msg) {
                    att.broken = true;
                }
                if !internal {
                    self.state.txn_error = true;
                }
                match att.queue.front() {
                    Some(Expect::Reply { kind, .. }) if kind.is_sync_point() => {
                        if internal {
                            warn!("a query the gateway sent (settings or state check) failed");
                        } else {
                            self.cout.extend_from_slice(msg);
                        }
                    }
                    Some(Expect::Reply { .. }) => {
                        let Some(Expect::Reply { kind, created, .. }) = att.queue.pop_front()
                        else {
                            return Ok(());
                        };
                        undo(
                            att,
                            &mut self.statements,
                            &mut self.statement_bytes,
                            created,
                        );
                        // Errors of a statement the gateway re-prepared are the client's own.
                        if !internal || kind == Kind::Parse {
                            self.cout.extend_from_slice(msg);
                        }
                        // The backend skips everything up to Sync.
                        while let Some(front) = att.queue.front() {
                            if let Expect::Reply {
                                kind: Kind::Sync, ..
                            } = front
                            {
                                break;
                            }
                            if let Some(Expect::Reply { created, .. }) = att.queue.pop_front() {
                                undo(
                                    att,
                                    &mut self.statements,
                                    &mut self.statement_bytes,
                                    created,
                                );
                            }
                        }
                        // No Sync sent yet: what the client sends until then gets no reply.
                        att.skipping = att.queue.is_empty();
                    }
                    _ => self.cout.extend_from_slice(msg),
                }
            }
            b'Z' => {
                let status = m::ready_status(msg)?;
                let (internal, was_check) = match att.queue.pop_front() {
                    Some(Expect::Reply {
                        kind,
                        internal,
                        check,
                        ..
                    }) if kind.is_sync_point() => {
                        att.status = status;
                        (internal, check)
                    }
                    _ => {
                        return Err(GatewayError::BackendRejected(
                            "unexpected ReadyForQuery from the compute".into(),
                        ))
                    }
                };
                if was_check {
                    self.check_done();
                } else if !internal {
                    let mut held = false;
                    if status == b'I' {
                        self.local.xacts += 1;
                        self.retries = 0;
                        held = self.transaction_ended(msg);
                    }
                    if !held {
                        self.cout.extend_from_slice(msg);
                    }
                }
                self.flush_fakes();
                self.maybe_release();
                return Ok(());
            }
            b'C' => {
                let ctag = m::command_tag(msg)?;
                if matches!(ctag, "DISCARD ALL" | "DEALLOCATE ALL") {
                    att.server.prepared.clear();
                    att.server.note_prepared();
                }
                // The statement it completes succeeded: its effects join the transaction's.
                let done = match att.queue.front_mut() {
                    Some(Expect::Reply {
                        track: Some(t),
                        internal: false,
                        ..
                    }) => {
                        let i = t.next;
                        t.next += 1;
                        Some((Arc::clone(&t.analysis), i))
                    }
                    _ => None,
                };
                complete(att, tag);
                if !internal {
                    self.cout.extend_from_slice(msg);
                }
                if let Some((analysis, i)) = done {
                    match analysis.statements.get(i) {
                        Some(stmt) => self.statement_done(stmt, ctag),
                        None => self.lost_count(),
                    }
                }
            }
            _ => {
                if head.is_none() {
                    return Err(GatewayError::BackendRejected(format!(
                        "unexpected message {:?} from the compute",
                        tag as char
                    )));
                }
                if tag == b'D' && matches!(head, Some(Expect::Reply { check: true, .. })) {
                    self.check_row(msg);
                    return Ok(());
                }
                complete(att, tag);
                if !internal {
                    self.cout.extend_from_slice(msg);
                }
            }
        }
        self.flush_fakes();
        Ok(())
    }

    /// Send the gateway's own answers that are next in line.
    pub(super) fn flush_fakes(&mut self) {
        let Some(att) = &mut self.att else {
            return;
        };
        loop {
            match att.queue.front() {
                Some(Expect::Fake(_)) => {
                    if let Some(Expect::Fake(b)) = att.queue.pop_front() {
                        self.cout.extend_from_slice(&b);
                    }
                }
                Some(Expect::FakeDeallocate) => {
                    att.queue.pop_front();
                    m::command_complete(&mut self.cout, "DEALLOCATE");
                    msg::ready_for_query(&mut self.cout, att.status);
                }
                _ => return,
            }
        }
    }
}

/// Make the attached backend's settings, now `have`, the client's `want` (one internal query
/// whose replies are swallowed) and record that it has them.
pub(super) fn sync_settings(att: &mut Attached, want: &Arc<Params>, have: &Params) {
    for sql in want.sync_sql(have) {
        att.out.extend_from_slice(&m::build_query(&sql));
        att.queue.push_back(Expect::Reply {
            kind: Kind::Query,
            internal: true,
            created: None,
            track: None,
            check: false,
        });
    }
    att.server.values = Arc::clone(want);
}

/// Forward a client message and expect its reply (none while the backend skips to `Sync`).
pub(super) fn forward(att: &mut Attached, msg: &[u8], kind: Kind) {
    forward_tracked(att, msg, kind, None);
}

/// [`forward`], following the outcomes of the statements in `track`.
pub(super) fn forward_tracked(att: &mut Attached, msg: &[u8], kind: Kind, track: Option<Track>) {
    att.out.extend_from_slice(msg);
    if kind == Kind::Sync {
        att.skipping = false;
    } else if att.skipping {
        return;
    }
    att.queue.push_back(Expect::Reply {
        kind,
        internal: false,
        created: None,
        track,
        check: false,
    });
}

/// Queue an answer of the gateway's own; sent at once when nothing is ahead of it. While the
/// backend skips to `Sync`, PostgreSQL would not answer either.
pub(super) fn push_fake(att: &mut Attached, cout: &mut BytesMut, fake: Expect) {
    if att.skipping && !matches!(fake, Expect::FakeDeallocate) {
        return;
    }
    if att.fresh && matches!(fake, Expect::Fake(_)) {
        // Held back until the backend's first reply (or the client's Flush): if the backend
        // turns out to be gone, the attachment's messages can still go to another one.
        att.queue.push_back(fake);
        return;
    }
    if att.queue.is_empty() {
        // Answered to the client: the attachment's messages can no longer be sent again.
        att.fresh = false;
        att.log.clear();
        match fake {
            Expect::Fake(b) => cout.extend_from_slice(&b),
            Expect::FakeDeallocate => {
                m::command_complete(cout, "DEALLOCATE");
                msg::ready_for_query(cout, att.status);
            }
            Expect::Reply { .. } => att.queue.push_back(fake),
        }
    } else {
        att.queue.push_back(fake);
    }
}

/// The head reply is complete if `tag` ends it.
pub(super) fn complete(att: &mut Attached, tag: u8) {
    if let Some(Expect::Reply { kind, .. }) = att.queue.front() {
        if kind.completed_by(tag) {
            att.queue.pop_front();
        }
    }
}

/// A `Parse` failed or was skipped: the statement does not exist.
pub(super) fn undo(
    att: &mut Attached,
    statements: &mut HashMap<Vec<u8>, Arc<Stmt>>,
    statement_bytes: &mut usize,
    created: Option<Created>,
) {
    let Some(c) = created else {
        return;
    };
    att.server.prepared.remove(&c.gw);
    att.server.note_prepared();
    if let Some(name) = c.client_name {
        if statements.get(&name).is_some_and(|s| s.gw == c.gw) {
            if let Some(old) = statements.remove(&name) {
                *statement_bytes = statement_bytes.saturating_sub(old.parse.len() + name.len());
            }
        }
    }
}

/// Make room in the backend's statement cache (closing the least recently used statement).
pub(super) fn evict(att: &mut Attached, max: usize) {
    while att.server.prepared.len() >= max.max(1) {
        let Some(old) = att.server.prepared.pop_oldest() else {
            return;
        };
        att.out
            .extend_from_slice(&m::build_target(b'C', b'S', old.as_bytes()));
        att.queue.push_back(Expect::Reply {
            kind: Kind::Close,
            internal: true,
            created: None,
            track: None,
            check: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_kinds_complete_on_their_messages() {
        assert!(Kind::Parse.completed_by(b'1'));
        assert!(Kind::Describe.completed_by(b'n'));
        assert!(!Kind::Describe.completed_by(b't'));
        assert!(Kind::Execute.completed_by(b's'));
        assert!(!Kind::Execute.completed_by(b'G'));
        assert!(Kind::Query.is_sync_point() && !Kind::Bind.is_sync_point());
    }
}
