//! Reading and rewriting the messages transaction pooling looks into: `Query`, `Parse`, `Bind`,
//! `Describe`, `Close` from clients; `ReadyForQuery`, `CommandComplete`, `ParameterStatus`,
//! `ErrorResponse` from computes. Messages are whole (`tag`, length, body); every parser checks
//! its bounds and returns an error instead of panicking (fuzz target `pooled_messages`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::GatewayError;

/// Size of a message header (tag and length).
pub const HEADER: usize = 5;

fn bad(what: &str) -> GatewayError {
    GatewayError::Protocol(format!("malformed {what} message"))
}

/// Split a NUL-terminated string off `b`: its bytes, in whatever encoding the peer uses (no
/// character of any encoding PostgreSQL supports contains a zero byte).
fn cstr<'a>(b: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), GatewayError> {
    let nul = b.iter().position(|x| *x == 0).ok_or_else(|| bad(what))?;
    Ok((&b[..nul], &b[nul + 1..]))
}

/// [`cstr`] of ASCII text (command tags, parameter names).
fn cstr_ascii<'a>(b: &'a [u8], what: &str) -> Result<(&'a str, &'a [u8]), GatewayError> {
    let (s, rest) = cstr(b, what)?;
    let s = std::str::from_utf8(s).map_err(|_| bad(what))?;
    Ok((s, rest))
}

/// The body of a whole message.
pub fn body(msg: &[u8]) -> &[u8] {
    msg.get(HEADER..).unwrap_or(&[])
}

/// Start a message with `tag`; finish with [`finish`].
fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    at
}

fn finish(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The SQL text of a `Query` message (bytes in the client's encoding).
pub fn query_text(msg: &[u8]) -> Result<&[u8], GatewayError> {
    Ok(cstr(body(msg), "Query")?.0)
}

/// A parsed `Parse` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMsg<'a> {
    /// Statement name (empty: the unnamed statement).
    pub name: &'a [u8],
    /// SQL text.
    pub query: &'a [u8],
    /// Parameter type count and OIDs, as sent.
    pub types: &'a [u8],
}

/// Parse a `Parse` message.
pub fn parse_parse(msg: &[u8]) -> Result<ParseMsg<'_>, GatewayError> {
    let (name, rest) = cstr(body(msg), "Parse")?;
    let (query, types) = cstr(rest, "Parse")?;
    if types.len() < 2 {
        return Err(bad("Parse"));
    }
    let n = i16::from_be_bytes([types[0], types[1]]);
    if n < 0 || types.len() != 2 + 4 * n as usize {
        return Err(bad("Parse"));
    }
    Ok(ParseMsg { name, query, types })
}

/// Build a `Parse` message.
pub fn build_parse(name: &[u8], query: &[u8], types: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + name.len() + query.len() + types.len() + 2);
    let at = begin(&mut out, b'P');
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(query);
    out.put_u8(0);
    out.put_slice(types);
    finish(&mut out, at);
    out.freeze()
}

/// The portal and statement names of a `Bind` message, and where the rest starts in the body.
pub fn parse_bind(msg: &[u8]) -> Result<(&[u8], &[u8], usize), GatewayError> {
    let b = body(msg);
    let (portal, rest) = cstr(b, "Bind")?;
    let (stmt, rest) = cstr(rest, "Bind")?;
    Ok((portal, stmt, b.len() - rest.len()))
}

/// `Bind` with its statement name replaced.
pub fn rewrite_bind(msg: &[u8], portal: &[u8], stmt: &[u8], rest_at: usize) -> Bytes {
    let rest = body(msg).get(rest_at..).unwrap_or(&[]);
    let mut out = BytesMut::with_capacity(HEADER + portal.len() + stmt.len() + rest.len() + 2);
    let at = begin(&mut out, b'B');
    out.put_slice(portal);
    out.put_u8(0);
    out.put_slice(stmt);
    out.put_u8(0);
    out.put_slice(rest);
    finish(&mut out, at);
    out.freeze()
}

/// The portal an `Execute` message runs.
pub fn parse_execute(msg: &[u8]) -> Result<&[u8], GatewayError> {
    let (portal, rest) = cstr(body(msg), "Execute")?;
    if rest.len() != 4 {
        return Err(bad("Execute"));
    }
    Ok(portal)
}

/// The target of a `Describe` or `Close` message: `b'S'` (statement) or `b'P'` (portal), and
/// its name.
pub fn parse_target(msg: &[u8]) -> Result<(u8, &[u8]), GatewayError> {
    let b = body(msg);
    let (&kind, rest) = b.split_first().ok_or_else(|| bad("Describe/Close"))?;
    if kind != b'S' && kind != b'P' {
        return Err(bad("Describe/Close"));
    }
    let (name, rest) = cstr(rest, "Describe/Close")?;
    if !rest.is_empty() {
        return Err(bad("Describe/Close"));
    }
    Ok((kind, name))
}

/// A `Describe` or `Close` message (`tag`) of a statement or portal.
pub fn build_target(tag: u8, kind: u8, name: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + name.len() + 2);
    let at = begin(&mut out, tag);
    out.put_u8(kind);
    out.put_slice(name);
    out.put_u8(0);
    finish(&mut out, at);
    out.freeze()
}

/// A `Query` message.
pub fn build_query(sql: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + sql.len() + 1);
    let at = begin(&mut out, b'Q');
    out.put_slice(sql);
    out.put_u8(0);
    finish(&mut out, at);
    out.freeze()
}

/// A message without a body (`ParseComplete` `1`, `BindComplete` `2`, `CloseComplete` `3`,
/// `Sync` `S`, `Terminate` `X`).
pub fn empty(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_u32(4);
}

/// `CommandComplete` with `tag`.
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    let at = begin(out, b'C');
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
    finish(out, at);
}

/// `RowDescription` of text columns, then one `DataRow` per row (`None`: NULL).
pub fn text_result(out: &mut BytesMut, columns: &[&str], rows: &[Vec<Option<String>>]) {
    let at = begin(out, b'T');
    out.put_i16(columns.len() as i16);
    for c in columns {
        out.put_slice(c.as_bytes());
        out.put_u8(0);
        out.put_i32(0); // table
        out.put_i16(0); // column
        out.put_u32(25); // text
        out.put_i16(-1);
        out.put_i32(-1);
        out.put_i16(0); // text format
    }
    finish(out, at);
    for row in rows {
        let at = begin(out, b'D');
        out.put_i16(row.len() as i16);
        for v in row {
            match v {
                Some(s) => {
                    out.put_i32(s.len() as i32);
                    out.put_slice(s.as_bytes());
                }
                None => out.put_i32(-1),
            }
        }
        finish(out, at);
    }
}

/// Transaction status of a `ReadyForQuery`.
pub fn ready_status(msg: &[u8]) -> Result<u8, GatewayError> {
    match body(msg) {
        [s @ (b'I' | b'T' | b'E')] => Ok(*s),
        _ => Err(bad("ReadyForQuery")),
    }
}

/// The tag of a `CommandComplete`.
pub fn command_tag(msg: &[u8]) -> Result<&str, GatewayError> {
    Ok(cstr_ascii(body(msg), "CommandComplete")?.0)
}

/// Name and value of a `ParameterStatus` (the value in the client's encoding).
pub fn parameter_status(msg: &[u8]) -> Result<(&str, &[u8]), GatewayError> {
    let (name, rest) = cstr_ascii(body(msg), "ParameterStatus")?;
    let (value, _) = cstr(rest, "ParameterStatus")?;
    Ok((name, value))
}

/// The columns of a `DataRow` (`None`: NULL).
pub fn data_row(msg: &[u8]) -> Result<Vec<Option<&[u8]>>, GatewayError> {
    let b = body(msg);
    let n = b.get(..2).ok_or_else(|| bad("DataRow"))?;
    let n = i16::from_be_bytes([n[0], n[1]]);
    let mut rest = &b[2..];
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let len = rest.get(..4).ok_or_else(|| bad("DataRow"))?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
            continue;
        }
        let v = rest.get(..len as usize).ok_or_else(|| bad("DataRow"))?;
        out.push(Some(v));
        rest = &rest[len as usize..];
    }
    Ok(out)
}

/// The process id of a `NotificationResponse`, and the message with it replaced by `pid`.
pub fn notification_with_pid(msg: &[u8], pid: i32) -> Option<(i32, Vec<u8>)> {
    let b = body(msg);
    let old = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    let mut out = msg.to_vec();
    out[HEADER..HEADER + 4].copy_from_slice(&pid.to_be_bytes());
    Some((old, out))
}

/// Whether an `ErrorResponse` is `FATAL` or `PANIC` (the compute ends the connection).
pub fn error_is_fatal(msg: &[u8]) -> bool {
    let mut rest = body(msg);
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some(nul) = after.iter().position(|b| *b == 0) else {
            break;
        };
        if field == b'V' || field == b'S' {
            let v = &after[..nul];
            return v == b"FATAL" || v == b"PANIC";
        }
        rest = &after[nul + 1..];
    }
    false
}

/// Incremental splitter of a message stream: yields whole messages, or for message types the
/// caller lets stream, the header and then raw body chunks, so a large `DataRow` or `CopyData`
/// is never held whole.
#[derive(Debug, Default)]
pub struct Splitter {
    /// Body bytes of a streamed message still to come.
    pass: usize,
}

/// What [`Splitter::next`] found.
#[derive(Debug)]
pub enum Piece {
    /// A whole message (tag at `[0]`).
    Whole(Bytes),
    /// Raw bytes of a streamed message (its header first).
    Raw(Bytes),
    /// The header of a streamed message: its tag; the header bytes follow as [`Piece::Raw`]
    /// from the next call on.
    StreamStart(u8),
}

/// What [`Splitter::next_span`] found at the front of the buffer, by length: the caller
/// reads the bytes in place and then consumes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// A whole message of this many bytes (tag at `[0]`).
    Whole(usize),
    /// This many raw bytes of a streamed message (its header first).
    Raw(usize),
    /// The header of a streamed message: its tag; nothing to consume (the header bytes follow
    /// as [`Span::Raw`] from the next call on).
    StreamStart(u8),
}

impl Splitter {
    /// Next piece from `buf`, or `None` when more bytes are needed. Messages of a type for
    /// which `stream(tag)` holds and bodies over `stream_over` bytes are streamed; bodies over
    /// `max_body` are refused.
    pub fn next(
        &mut self,
        buf: &mut BytesMut,
        max_body: usize,
        stream_over: usize,
        stream: impl Fn(u8) -> bool,
    ) -> Result<Option<Piece>, GatewayError> {
        Ok(match self.next_span(buf, max_body, stream_over, stream)? {
            None => {
                // No room is reserved from the length a header announces: the buffer grows as the
                // bytes arrive, so a peer that announces a large message and sends nothing
                // holds nothing.
                None
            }
            Some(Span::Whole(n)) => Some(Piece::Whole(buf.split_to(n).freeze())),
            Some(Span::Raw(n)) => Some(Piece::Raw(buf.split_to(n).freeze())),
            Some(Span::StreamStart(tag)) => Some(Piece::StreamStart(tag)),
        })
    }

    /// Like [`Splitter::next`] without taking anything out of `buf`: the span at its front.
    /// The caller consumes a [`Span::Whole`] or [`Span::Raw`] (`advance`) before the next call.
    pub fn next_span(
        &mut self,
        buf: &[u8],
        max_body: usize,
        stream_over: usize,
        stream: impl Fn(u8) -> bool,
    ) -> Result<Option<Span>, GatewayError> {
        if self.pass > 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = self.pass.min(buf.len());
            self.pass -= n;
            return Ok(Some(Span::Raw(n)));
        }
        if buf.len() < HEADER {
            return Ok(None);
        }
        let tag = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len < 4 {
            return Err(GatewayError::Protocol(format!(
                "invalid message length {len}"
            )));
        }
        let body_len = len - 4;
        if body_len > max_body {
            return Err(GatewayError::MessageTooLarge {
                len: body_len,
                max: max_body,
            });
        }
        if body_len > stream_over && stream(tag) {
            self.pass = body_len + HEADER;
            return Ok(Some(Span::StreamStart(tag)));
        }
        if buf.len() < HEADER + body_len {
            return Ok(None);
        }
        Ok(Some(Span::Whole(HEADER + body_len)))
    }

    /// Whether the stream is between messages.
    pub fn at_boundary(&self) -> bool {
        self.pass == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_bind_describe_close_roundtrip() {
        let p = build_parse(b"s1", b"select $1", &[0, 1, 0, 0, 0, 23]);
        let m = parse_parse(&p).unwrap();
        assert_eq!((m.name, m.query), (&b"s1"[..], &b"select $1"[..]));
        assert_eq!(m.types, &[0, 1, 0, 0, 0, 23]);
        assert!(parse_parse(&build_parse(b"a", b"b", &[0, 2, 0, 0, 0, 23])).is_err());
        assert!(parse_parse(b"P\0\0\0\x05a").is_err());

        let mut b = BytesMut::new();
        let at = begin(&mut b, b'B');
        b.put_slice(b"p\0s1\0\0\0\0\0\0\0");
        finish(&mut b, at);
        let (portal, stmt, rest_at) = parse_bind(&b).unwrap();
        assert_eq!((portal, stmt), (&b"p"[..], &b"s1"[..]));
        let r = rewrite_bind(&b, portal, b"spg_x", rest_at);
        let (p2, s2, r2) = parse_bind(&r).unwrap();
        assert_eq!((p2, s2), (&b"p"[..], &b"spg_x"[..]));
        assert_eq!(&body(&r)[r2..], &body(&b)[rest_at..]);

        let d = build_target(b'D', b'S', b"s1");
        assert_eq!(parse_target(&d).unwrap(), (b'S', &b"s1"[..]));
        // Names and text in any encoding pass as bytes.
        let latin9 = build_parse(b"caf\xe9", b"SELECT 'caf\xe9'", &[0, 0]);
        assert_eq!(parse_parse(&latin9).unwrap().query, b"SELECT 'caf\xe9'");
        assert_eq!(
            query_text(&build_query(b"SELECT '\x83\x5c'")).unwrap(),
            b"SELECT '\x83\x5c'"
        );
        assert!(parse_target(b"D\0\0\0\x06X\0").is_err());
    }

    #[test]
    fn backend_messages() {
        assert_eq!(ready_status(b"Z\0\0\0\x05T").unwrap(), b'T');
        assert!(ready_status(b"Z\0\0\0\x05x").is_err());
        let mut out = BytesMut::new();
        command_complete(&mut out, "DISCARD ALL");
        assert_eq!(command_tag(&out).unwrap(), "DISCARD ALL");
        assert_eq!(
            parameter_status(b"S\0\0\0\x0ca\0bcdef\0").unwrap(),
            ("a", &b"bcdef"[..])
        );
        let row = b"D\0\0\0\x13\0\x03\0\0\0\x01x\xff\xff\xff\xff\0\0\0\0";
        assert_eq!(
            data_row(row).unwrap(),
            vec![Some(&b"x"[..]), None, Some(&b""[..])]
        );
        assert!(data_row(b"D\0\0\0\x0a\0\x01\0\0\0\x05").is_err());
        let note = b"A\0\0\0\x0e\0\0\0\x07ch\0pl\0";
        let (old, new) = notification_with_pid(note, 42).unwrap();
        assert_eq!(old, 7);
        assert_eq!(&new[5..9], &42i32.to_be_bytes());
        assert_eq!(&new[9..], &note[9..]);
        let mut e = BytesMut::new();
        crate::proto::backend::error_response(
            &mut e,
            crate::proto::backend::Severity::Fatal,
            "57P01",
            "bye",
            None,
        );
        assert!(error_is_fatal(&e));
    }

    #[test]
    fn splitter_streams_large_messages() {
        let mut buf = BytesMut::new();
        buf.put_slice(b"D\0\0\0\x0e0123456789");
        buf.put_slice(b"Z\0\0\0\x05I");
        let mut s = Splitter::default();
        let first = s.next(&mut buf, 100, 4, |t| t == b'D').unwrap().unwrap();
        assert!(matches!(first, Piece::StreamStart(b'D')));
        let mut raw = Vec::new();
        while !s.at_boundary() {
            match s.next(&mut buf, 100, 4, |t| t == b'D').unwrap().unwrap() {
                Piece::Raw(b) => raw.extend_from_slice(&b),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(raw.len(), 15);
        let z = s.next(&mut buf, 100, 4, |t| t == b'D').unwrap().unwrap();
        assert!(matches!(z, Piece::Whole(m) if &m[..] == b"Z\0\0\0\x05I"));
        let mut big = BytesMut::from(&b"Q\0\0\x10\0"[..]);
        assert!(s.next(&mut big, 100, 4, |_| false).is_err());
    }

    #[test]
    fn an_announced_length_reserves_nothing() {
        let mut buf = BytesMut::from(&b"Q\x35\xa4\xe9\x00"[..]);
        let before = buf.capacity();
        let mut s = Splitter::default();
        assert!(s
            .next(&mut buf, 1 << 30, 64 * 1024, |_| false)
            .unwrap()
            .is_none());
        assert_eq!(buf.capacity(), before, "no room reserved for a 900 MB body");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = data_row(&bytes);
            let _ = parse_execute(&bytes);
            let _ = notification_with_pid(&bytes, 1);
            let _ = query_text(&bytes);
            let _ = parse_parse(&bytes);
            let _ = parse_bind(&bytes);
            let _ = parse_target(&bytes);
            let _ = ready_status(&bytes);
            let _ = command_tag(&bytes);
            let _ = parameter_status(&bytes);
            let _ = error_is_fatal(&bytes);
            let mut buf = BytesMut::from(&bytes[..]);
            let mut s = Splitter::default();
            while let Ok(Some(_)) = s.next(&mut buf, 32, 8, |t| t == b'd') {}
        }

        /// Reading spans in place yields the very pieces `next` splits off, however the
        /// stream arrives in chunks.
        #[test]
        fn spans_match_pieces(
            msgs in proptest::collection::vec(
                (prop_oneof![Just(b'D'), Just(b'C'), Just(b'Z')],
                 proptest::collection::vec(any::<u8>(), 0..40)),
                0..12),
            cuts in proptest::collection::vec(1usize..30, 1..40),
        ) {
            let mut stream = Vec::new();
            for (tag, body) in &msgs {
                stream.push(*tag);
                stream.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                stream.extend_from_slice(body);
            }
            let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
            let (mut sa, mut sb) = (Splitter::default(), Splitter::default());
            let (mut pieces, mut spans) = (Vec::new(), Vec::new());
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            while at < stream.len() {
                let n = (*cut.next().unwrap()).min(stream.len() - at);
                a.put_slice(&stream[at..at + n]);
                b.put_slice(&stream[at..at + n]);
                at += n;
                while let Some(p) = sa.next(&mut a, 64, 16, |t| t == b'D').unwrap() {
                    pieces.push(match p {
                        Piece::Whole(m) => (0u8, m.to_vec()),
                        Piece::Raw(r) => (1, r.to_vec()),
                        Piece::StreamStart(t) => (2, vec![t]),
                    });
                }
                while let Some(s) = sb.next_span(&b, 64, 16, |t| t == b'D').unwrap() {
                    spans.push(match s {
                        Span::Whole(n) => (0u8, b.split_to(n).to_vec()),
                        Span::Raw(n) => (1, b.split_to(n).to_vec()),
                        Span::StreamStart(t) => (2, vec![t]),
                    });
                }
            }
            prop_assert_eq!(&pieces, &spans);
            prop_assert!(a.is_empty() && b.is_empty());
        }
    }
}
