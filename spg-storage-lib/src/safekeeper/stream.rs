//! Following a compute as a physical-replication standby: the network side of a safekeeper.
//!
//! [`follow_primary`] logs in with `replication=true`, runs `IDENTIFY_SYSTEM` and
//! `TIMELINE_HISTORY`, reconciles the local log with the primary's timeline path
//! ([`Safekeeper::follow`]), then `START_REPLICATION PHYSICAL` from the end of the local log,
//! crossing timeline switches as the walsender reports them. WAL is appended as it arrives and
//! fsynced whenever the socket has nothing more buffered (so one fsync covers a burst), and only
//! then acknowledged: the standby status update's write, flush and apply positions are all the
//! fsynced position.
//!
//! Streams run on a runtime of their own ([`wal_runtime`]) and fsync inline there: every commit
//! waits on this loop, and handing each fsync to a blocking pool and back would put two thread
//! wake-ups on that path. Blocking the WAL runtime's workers is their job; nothing else runs on
//! them.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use spg_core::scram::client::ScramClient;
use spg_core::{Generation, Lsn, TimelineId};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::log::History;
use super::store::WalStore;
use super::wire::{self, Auth, CopyMessage};
use super::Safekeeper;
use crate::StorageError;

/// A safekeeper shared between its stream and its API (elections, reads).
pub type SharedSafekeeper<S> = Arc<Mutex<Safekeeper<S>>>;

/// Lock a shared safekeeper; a panic elsewhere while holding it poisons nothing we rely on
/// (every mutation of durable state goes through the store first).
pub fn lock<S>(sk: &SharedSafekeeper<S>) -> std::sync::MutexGuard<'_, Safekeeper<S>> {
    sk.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where and how to reach a compute for replication.
#[derive(Clone)]
pub struct PrimaryConn {
    /// Host (loopback for local computes).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role with the REPLICATION attribute.
    pub user: String,
    /// Its password (never logged).
    pub password: String,
    /// This safekeeper's `application_name`, as listed in `synchronous_standby_names`.
    pub application_name: String,
}

impl std::fmt::Debug for PrimaryConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryConn")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("application_name", &self.application_name)
            .finish_non_exhaustive()
    }
}

/// Why streaming ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// A newer generation was promised here: this primary is fenced.
    Fenced {
        /// The generation in force.
        current: Generation,
    },
    /// The stop signal fired.
    Stopped,
}

/// Observations of a stream, for metrics.
pub trait StreamObserver: Send + Sync {
    /// An fsync of `bytes` new WAL bytes took `took`; the flush LSN is now `flush`.
    fn flushed(&self, took: Duration, bytes: u64, flush: Lsn);
    /// The primary reports its end of WAL.
    fn primary_end(&self, end: Lsn);
}

/// An observer that records nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl StreamObserver for NoObserver {
    fn flushed(&self, _: Duration, _: u64, _: Lsn) {}
    fn primary_end(&self, _: Lsn) {}
}

/// Flush once this much unsynced WAL is buffered even if more is queued.
const FLUSH_EVERY: u64 = 4 << 20;

struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Conn {
    async fn read(&mut self) -> Result<(u8, Vec<u8>), StorageError> {
        let tag = self.rd.read_u8().await.map_err(net)?;
        let len = self.rd.read_u32().await.map_err(net)? as usize;
        if !(4..=wire::MAX_MESSAGE).contains(&len) {
            return Err(StorageError::Protocol(format!(
                "message length {len} out of bounds"
            )));
        }
        let mut body = vec![0u8; len - 4];
        self.rd.read_exact(&mut body).await.map_err(net)?;
        Ok((tag, body))
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.wr.write_all(bytes).await.map_err(net)
    }

    fn upstream(body: &[u8]) -> StorageError {
        let (sqlstate, message) = wire::parse_error(body);
        StorageError::Upstream { sqlstate, message }
    }

    async fn connect(c: &PrimaryConn) -> Result<Conn, StorageError> {
        let stream = TcpStream::connect((c.host.as_str(), c.port))
            .await
            .map_err(net)?;
        stream.set_nodelay(true).map_err(net)?;
        let (rd, wr) = stream.into_split();
        let mut conn = Conn {
            rd: BufReader::with_capacity(256 << 10, rd),
            wr,
        };
        conn.send(&wire::startup(&[
            ("user", &c.user),
            ("replication", "true"),
            ("application_name", &c.application_name),
        ]))
        .await?;
        let mut scram = ScramClient::with_password(&c.password);
        loop {
            let (tag, body) = conn.read().await?;
            match tag {
                b'R' => match wire::parse_auth(&body)? {
                    Auth::Ok => {}
                    Auth::Sasl(mechs) => {
                        let (mech, first) = scram.client_first();
                        if !mechs.contains(&mech) {
                            return Err(StorageError::Protocol(format!(
                                "compute offers {mechs:?}, not {mech}"
                            )));
                        }
                        conn.send(&wire::sasl_initial(mech, &first)).await?;
                    }
                    Auth::SaslContinue(d) => {
                        let reply = scram.server_first(d).map_err(scram_err)?;
                        conn.send(&wire::sasl_response(&reply)).await?;
                    }
                    Auth::SaslFinal(d) => scram.server_final(d).map_err(scram_err)?,
                    Auth::Unsupported(code) => {
                        return Err(StorageError::Protocol(format!(
                            "compute asks for authentication method {code}; only SCRAM-SHA-256 is spoken"
                        )))
                    }
                },
                b'E' => return Err(Self::upstream(&body)),
                b'Z' => return Ok(conn),
                _ => {}
            }
        }
    }

    /// Run a replication command that returns rows; returns them.
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<Vec<u8>>>>, StorageError> {
        self.send(&wire::query(sql)).await?;
        self.rows_until_ready().await
    }

    async fn rows_until_ready(&mut self) -> Result<Vec<Vec<Option<Vec<u8>>>>, StorageError> {
        let mut rows = Vec::new();
        let mut err = None;
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'D' => rows.push(
                    wire::parse_data_row(&body)?
                        .into_iter()
                        .map(|c| c.map(<[u8]>::to_vec))
                        .collect(),
                ),
                b'E' => err = Some(Self::upstream(&body)),
                b'Z' => return err.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }
}

fn net(e: std::io::Error) -> StorageError {
    StorageError::io("replication connection", "compute", e)
}

fn scram_err(e: spg_core::scram::client::ScramClientError) -> StorageError {
    StorageError::Protocol(format!("login: {e}"))
}

fn text(col: &Option<Vec<u8>>, what: &str) -> Result<String, StorageError> {
    col.as_deref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_owned)
        .ok_or_else(|| StorageError::Protocol(format!("missing {what}")))
}

/// The primary's timeline path, from `IDENTIFY_SYSTEM` and `TIMELINE_HISTORY`.
async fn primary_path(conn: &mut Conn) -> Result<(History, Lsn), StorageError> {
    let rows = conn.query("IDENTIFY_SYSTEM").await?;
    let row = rows
        .first()
        .ok_or_else(|| StorageError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
    let tli: u32 = text(row.get(1).unwrap_or(&None), "timeline")?
        .parse()
        .map_err(|_| StorageError::Protocol("bad timeline in IDENTIFY_SYSTEM".into()))?;
    let xlogpos: Lsn = text(row.get(2).unwrap_or(&None), "xlogpos")?
        .parse()
        .map_err(|_| StorageError::Protocol("bad xlogpos in IDENTIFY_SYSTEM".into()))?;
    let tli = TimelineId(tli);
    if tli.0 <= 1 {
        return Ok((History::starting(tli, Lsn::INVALID), xlogpos));
    }
    let rows = conn.query(&format!("TIMELINE_HISTORY {}", tli.0)).await?;
    let content = rows
        .first()
        .and_then(|r| r.get(1).cloned().flatten())
        .ok_or_else(|| StorageError::Protocol("TIMELINE_HISTORY returned no content".into()))?;
    Ok((wire::parse_history_file(&content, tli)?, xlogpos))
}

/// The runtime every replication stream of this process runs on, separate from the process's
/// main runtime because its workers block in fsync. One worker (`spg-wal`) by default: while it
/// fsyncs for one stream, WAL for the others queues up in their sockets and each then takes its
/// whole backlog in one batch and one fsync; on one disk that beats parallel fsyncs, and it costs
/// no thread wake-ups.
/// `SPG_WAL_STREAM_THREADS` sets another count.
pub fn wal_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let threads = std::env::var("SPG_WAL_STREAM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("spg-wal")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the WAL stream runtime: {e}"))
    })
}

/// Stream WAL from the compute of generation `g` into `sk` until fenced, stopped, or an error
/// (after which the caller reconnects with backoff). The stream runs on [`wal_runtime`].
pub async fn follow_primary<S: WalStore + Send + 'static>(
    sk: &SharedSafekeeper<S>,
    g: Generation,
    primary: &PrimaryConn,
    segment_size: u64,
    observer: Arc<dyn StreamObserver>,
    stop: &mut watch::Receiver<bool>,
) -> Result<StreamEnd, StorageError> {
    let (sk, primary, mut stop) = (Arc::clone(sk), primary.clone(), stop.clone());
    let task = wal_runtime().spawn(async move {
        tokio::select! {
            r = stream(&sk, g, &primary, segment_size, &*observer) => r,
            _ = stop.wait_for(|s| *s) => Ok(StreamEnd::Stopped),
        }
    });
    task.await
        .map_err(|e| StorageError::Protocol(format!("stream task: {e}")))?
}

async fn stream<S: WalStore + Send + 'static>(
    sk: &SharedSafekeeper<S>,
    g: Generation,
    primary: &PrimaryConn,
    segment_size: u64,
    observer: &dyn StreamObserver,
) -> Result<StreamEnd, StorageError> {
    let mut conn = Conn::connect(primary).await?;
    let (path, xlogpos) = primary_path(&mut conn).await?;
    observer.primary_end(xlogpos);
    let mut resume = {
        let mut s = lock(sk);
        match s.follow(g, &path) {
            Err(StorageError::StaleGeneration { current, .. }) => {
                return Ok(StreamEnd::Fenced {
                    current: Generation(current),
                })
            }
            r => r?,
        }
    };
    // The timeline to ask for first, when it is not the one `resume` lies on.
    let mut first_tli = None;
    if lock(sk).log().is_empty() {
        // A safekeeper with no WAL joins where the primary's own timeline begins: the start of
        // the segment its timeline switch lies in, which the primary keeps in pg_wal as its
        // own timeline's file (the part before the switch copied there at promotion), so that
        // timeline is asked for from the start: the older timelines' files may be gone (a
        // branch's first compute has none of its parent's).
        // A primary that never switched timeline (begin 0/0) keeps only recent segments: start
        // at the one it is writing.
        let begin = path.spans().last().map(|s| s.begin).unwrap_or_default();
        let begin = if begin == Lsn::INVALID {
            xlogpos
        } else {
            begin
        };
        let start = Lsn(begin.0 / segment_size * segment_size);
        if start != resume {
            lock(sk).reset_start(start)?;
            resume = start;
        }
        first_tli = path.spans().last().map(|s| s.tli);
    }
    // Its slot holds the WAL it has not flushed yet at the primary, so that a reconnect after
    // falling behind finds it there (`wal_keep_size` alone is outrun by a bulk load).
    let slot = slot_name(&primary.application_name);
    match conn
        .query(&format!(
            "CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL"
        ))
        .await
    {
        Ok(_) => {}
        Err(StorageError::Upstream { sqlstate, .. }) if sqlstate == DUPLICATE_OBJECT => {}
        Err(e) => return Err(e),
    }
    loop {
        let tli = match first_tli.take() {
            Some(t) => t,
            None => path.tli_at(resume).ok_or_else(|| {
                StorageError::Protocol(format!("{resume} is before the primary's history"))
            })?,
        };
        conn.send(&wire::query(&format!(
            "START_REPLICATION SLOT {slot} PHYSICAL {resume} TIMELINE {}",
            tli.0
        )))
        .await?;
        loop {
            let (tag, body) = conn.read().await?;
            match tag {
                b'W' => break,
                b'E' => return Err(Conn::upstream(&body)),
                _ => {}
            }
        }
        match copy_both(&mut conn, sk, g, observer).await? {
            Some(end) => return Ok(end),
            None => {
                // End of a timeline: the walsender sent CopyDone; answer, read the result set
                // naming the next timeline, and continue from where the log ends.
                conn.send(&wire::copy_done()).await?;
                conn.rows_until_ready().await?;
                resume = lock(sk).written();
            }
        }
    }
}

/// SQLSTATE of "replication slot … already exists".
const DUPLICATE_OBJECT: &str = "42710";

/// The physical replication slot of the safekeeper named `name` at the primary: `spg_sk_` and
/// the name's letters and digits (lowercase; anything else as `_`), at most 63 bytes.
fn slot_name(name: &str) -> String {
    let mut slot: String = std::iter::once("spg_sk_".to_owned())
        .chain(name.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase().to_string()
            } else {
                "_".to_owned()
            }
        }))
        .collect();
    slot.truncate(63);
    slot
}

/// The COPY BOTH phase. `Ok(None)` when the walsender ends the timeline.
async fn copy_both<S: WalStore + Send + 'static>(
    conn: &mut Conn,
    sk: &SharedSafekeeper<S>,
    g: Generation,
    observer: &dyn StreamObserver,
) -> Result<Option<StreamEnd>, StorageError> {
    let fenced = |sk: &Safekeeper<S>| StreamEnd::Fenced {
        current: sk.generation(),
    };
    loop {
        let (tag, body) = conn.read().await?;
        let mut reply = false;
        match tag {
            b'd' => match wire::parse_copy_data(&body)? {
                CopyMessage::XLogData { start, end, data } => {
                    observer.primary_end(end);
                    let mut s = lock(sk);
                    match s.append(g, start, data) {
                        Err(StorageError::NotFollowing(_)) => return Ok(Some(fenced(&s))),
                        r => r?,
                    }
                    let backlog = s.written().0.saturating_sub(s.log().flush.0);
                    reply = conn.rd.buffer().is_empty() || backlog >= FLUSH_EVERY;
                }
                CopyMessage::Keepalive { end, reply: asked } => {
                    observer.primary_end(end);
                    reply = asked || conn.rd.buffer().is_empty();
                }
            },
            b'c' => return Ok(None),
            b'E' => return Err(Conn::upstream(&body)),
            _ => {}
        }
        if reply {
            let started = Instant::now();
            let (flushed, ack, before) = {
                let mut s = lock(sk);
                let before = s.log().flush;
                let flushed = s.flush()?;
                (flushed, s.ack(g), before)
            };
            if flushed > before {
                observer.flushed(started.elapsed(), flushed.0 - before.0, flushed);
            }
            match ack {
                Some(f) => conn.send(&wire::standby_status(f, wire::pg_now())).await?,
                None => return Ok(Some(fenced(&lock(sk)))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_plain_and_bounded() {
        assert_eq!(slot_name("sk1"), "spg_sk_sk1");
        assert_eq!(slot_name("SK-a.b:7"), "spg_sk_sk_a_b_7");
        assert_eq!(slot_name(&"x".repeat(100)).len(), 63);
    }
}
