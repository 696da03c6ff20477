//! The PostgreSQL wire messages of a physical-replication client (untrusted input: the bytes
//! come from a compute, which runs tenant code).
//!
//! Only what a standby needs: startup and SCRAM login, simple queries (`IDENTIFY_SYSTEM`,
//! `TIMELINE_HISTORY`, `START_REPLICATION`), and the COPY BOTH sub-protocol (`XLogData`,
//! keepalives, standby status updates).

use spg_core::{Lsn, TimelineId};

use super::log::{History, Span};
use crate::StorageError;

/// Upper bound on one backend message (XLogData carries at most 128 KiB; history files are small).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

fn protocol(what: impl Into<String>) -> StorageError {
    StorageError::Protocol(what.into())
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, StorageError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| protocol("message too short"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, StorageError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| protocol("message too short"))
}

/// Now, in PostgreSQL's timestamp format (µs since 2000-01-01).
pub fn pg_now() -> i64 {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    us - PG_EPOCH_OFFSET_US
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A StartupMessage (protocol 3.0) with the given parameters.
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// SASLInitialResponse.
pub fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut body = mechanism.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(data.len() as u32).to_be_bytes());
    body.extend_from_slice(data);
    message(b'p', &body)
}

/// SASLResponse.
pub fn sasl_response(data: &[u8]) -> Vec<u8> {
    message(b'p', data)
}

/// CopyDone.
pub fn copy_done() -> Vec<u8> {
    message(b'c', &[])
}

/// Terminate.
pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// A Standby Status Update inside CopyData. SPG reports `flush` for write, flush and apply: a
/// safekeeper never claims more than it has fsynced.
pub fn standby_status(flush: Lsn, now: i64) -> Vec<u8> {
    let mut body = vec![b'r'];
    for _ in 0..3 {
        body.extend_from_slice(&flush.0.to_be_bytes());
    }
    body.extend_from_slice(&now.to_be_bytes());
    body.push(0);
    message(b'd', &body)
}

/// An authentication request from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth<'a> {
    /// Logged in.
    Ok,
    /// SASL, with the offered mechanisms.
    Sasl(Vec<&'a str>),
    /// SASL continue.
    SaslContinue(&'a [u8]),
    /// SASL final.
    SaslFinal(&'a [u8]),
    /// A method SPG does not speak (cleartext, MD5, GSS, ...).
    Unsupported(u32),
}

/// Parse an `R` message body.
pub fn parse_auth(body: &[u8]) -> Result<Auth<'_>, StorageError> {
    let code = u32_at(body, 0)?;
    let rest = &body[4..];
    Ok(match code {
        0 => Auth::Ok,
        10 => Auth::Sasl(
            rest.split(|b| *b == 0)
                .filter(|m| !m.is_empty())
                .map(|m| std::str::from_utf8(m).map_err(|_| protocol("mechanism not UTF-8")))
                .collect::<Result<_, _>>()?,
        ),
        11 => Auth::SaslContinue(rest),
        12 => Auth::SaslFinal(rest),
        other => Auth::Unsupported(other),
    })
}

/// The SQLSTATE and message of an ErrorResponse or NoticeResponse body.
pub fn parse_error(body: &[u8]) -> (String, String) {
    let (mut code, mut msg) = (String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        if let Some((&t, v)) = field.split_first() {
            let v = String::from_utf8_lossy(v).chars().take(500).collect();
            match t {
                b'C' => code = v,
                b'M' => msg = v,
                _ => {}
            }
        }
    }
    (code, msg)
}

/// The columns of a DataRow (`None` for NULL).
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, StorageError> {
    let n = body
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or_else(|| protocol("DataRow too short"))?;
    let mut at = 2;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let len = u32_at(body, at)? as i32;
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let end = at
            .checked_add(len as usize)
            .filter(|e| *e <= body.len())
            .ok_or_else(|| protocol("DataRow column overruns the message"))?;
        out.push(Some(&body[at..end]));
        at = end;
    }
    Ok(out)
}

/// A message inside the COPY BOTH stream of START_REPLICATION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyMessage<'a> {
    /// WAL bytes starting at `start`; the server has flushed up to `end`.
    XLogData {
        /// LSN of the first byte of `data`.
        start: Lsn,
        /// The server's current end of WAL.
        end: Lsn,
        /// The WAL bytes.
        data: &'a [u8],
    },
    /// A keepalive; `reply` asks for a status update at once.
    Keepalive {
        /// The server's current end of WAL.
        end: Lsn,
        /// Whether the server wants a reply now.
        reply: bool,
    },
}

/// Parse a CopyData body sent by a walsender.
pub fn parse_copy_data(body: &[u8]) -> Result<CopyMessage<'_>, StorageError> {
    match body.first() {
        Some(b'w') => {
            let start = Lsn(u64_at(body, 1)?);
            let end = Lsn(u64_at(body, 9)?);
            let _sent_at = u64_at(body, 17)?;
            let data = &body[25..];
            if start.0.checked_add(data.len() as u64).is_none() {
                return Err(protocol("XLogData runs past the end of the LSN space"));
            }
            Ok(CopyMessage::XLogData { start, end, data })
        }
        Some(b'k') => {
            let end = Lsn(u64_at(body, 1)?);
            let _sent_at = u64_at(body, 9)?;
            let reply = *body
                .get(17)
                .ok_or_else(|| protocol("keepalive too short"))?
                != 0;
            Ok(CopyMessage::Keepalive { end, reply })
        }
        Some(t) => Err(protocol(format!(
            "unexpected replication message {:?}",
            *t as char
        ))),
        None => Err(protocol("empty CopyData")),
    }
}

/// Parse a PostgreSQL timeline history file (`<parent tli>\t<switchpoint>\t<reason>` lines) of
/// timeline `tli` into the path that ends on `tli`.
pub fn parse_history_file(content: &[u8], tli: TimelineId) -> Result<History, StorageError> {
    let text = std::str::from_utf8(content).map_err(|_| protocol("history file not UTF-8"))?;
    let mut spans = Vec::new();
    let mut begin = Lsn::INVALID;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parent: u32 = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| protocol("history file: bad timeline"))?;
        let switch: Lsn = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| protocol("history file: bad switch point"))?;
        spans.push(Span {
            tli: TimelineId(parent),
            begin,
        });
        begin = switch;
    }
    spans.push(Span { tli, begin });
    // Lines may repeat a span begin when a timeline ended where it started; drop empty spans.
    let mut clean: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match clean.last_mut() {
            Some(last) if last.begin == s.begin => *last = s,
            _ => clean.push(s),
        }
    }
    History::from_spans(clean).ok_or_else(|| protocol("history file is not ordered"))
}

/// The history file PostgreSQL expects for the newest timeline of `history` (empty for a path
/// of one timeline).
pub fn format_history_file(history: &History) -> String {
    let spans = history.spans();
    let mut out = String::new();
    for w in spans.windows(2) {
        out.push_str(&format!(
            "{}\t{}\tno recovery target specified\n",
            w[0].tli, w[1].begin
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_round_trip() {
        let h = parse_history_file(
            b"1\t0/1500790\tno recovery target specified\n\n4\t0/3000000\tat restore point\n",
            TimelineId(5),
        )
        .unwrap();
        assert_eq!(h.tli_at(Lsn(0)), Some(TimelineId(1)));
        assert_eq!(h.tli_at(Lsn(0x150_0790)), Some(TimelineId(4)));
        assert_eq!(h.tli_at(Lsn(0x300_0000)), Some(TimelineId(5)));
        let again = parse_history_file(format_history_file(&h).as_bytes(), TimelineId(5)).unwrap();
        assert_eq!(again, h);
        assert_eq!(
            parse_history_file(b"", TimelineId(1)).unwrap(),
            History::starting(TimelineId(1), Lsn(0))
        );
        assert!(parse_history_file(b"x\t0/1\n", TimelineId(2)).is_err());
        assert!(parse_history_file(b"3\t0/10\n", TimelineId(2)).is_err());
    }

    #[test]
    fn copy_data_and_rows() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x100u64.to_be_bytes());
        w.extend_from_slice(&0x200u64.to_be_bytes());
        w.extend_from_slice(&0u64.to_be_bytes());
        w.extend_from_slice(b"wal");
        assert_eq!(
            parse_copy_data(&w).unwrap(),
            CopyMessage::XLogData {
                start: Lsn(0x100),
                end: Lsn(0x200),
                data: b"wal"
            }
        );
        assert!(parse_copy_data(&w[..20]).is_err());
        assert!(parse_copy_data(b"").is_err());
        assert!(parse_copy_data(b"z").is_err());
        let row = [0, 2, 0, 0, 0, 1, b'x', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_data_row(&row).unwrap(), vec![Some(&b"x"[..]), None]);
        assert!(parse_data_row(&[0, 1, 0, 0, 0, 9, 1]).is_err());
        assert_eq!(parse_auth(&[0, 0, 0, 0]).unwrap(), Auth::Ok);
        assert_eq!(
            parse_auth(b"\0\0\0\x0aSCRAM-SHA-256\0\0").unwrap(),
            Auth::Sasl(vec!["SCRAM-SHA-256"])
        );
    }
}
