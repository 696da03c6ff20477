//! A compute's part in the WAL quorum: the election before it starts, recovery through
//! `restore_command` from the safekeepers, and the safekeepers following it once it is up.
//!
//! PostgreSQL runs `restore_command` as a program; SPG's is `<restore program> wal-restore <url>
//! %f %p`, which fetches the file from a per-compute loopback endpoint the agent serves for the
//! duration of the start ([`RestoreService`]). The endpoint answers from
//! [`WalQuorum::read_wal_file`] for this compute's [`Election`], with a random token in the path so
//! that only this compute's postgres (which reads it from its configuration) can use it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::RngExt;
use spg_core::wal_files::{parse_segment_file_name, DEFAULT_SEGMENT_SIZE};
use spg_core::{DatabaseName, Election, Lsn, TimelineId, WalQuorum};
use tokio_util::sync::CancellationToken;

use crate::LifecycleError;

/// Role the safekeepers log in as for replication (REPLICATION, no superuser).
pub const REPLICATOR_ROLE: &str = "spg_replicator";

/// How computes join the WAL quorum.
#[derive(Clone)]
pub struct WalSetup {
    /// The safekeepers.
    pub quorum: Arc<dyn WalQuorum>,
    /// The program PostgreSQL runs to restore WAL (`spg`, which has the `wal-restore`
    /// subcommand). It must be executable by the compute user.
    pub restore_program: PathBuf,
}

impl std::fmt::Debug for WalSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalSetup")
            .field(
                "synchronous_standby_names",
                &self.quorum.synchronous_standby_names(),
            )
            .field("restore_program", &self.restore_program)
            .finish()
    }
}

#[derive(Clone)]
struct RestoreState {
    quorum: Arc<dyn WalQuorum>,
    db: DatabaseName,
    /// The log served: elected, or while `following`, the latest observation.
    election: Arc<std::sync::RwLock<Arc<Election>>>,
    /// A standby's service: it follows the log a running writer extends, observing the quorum
    /// afresh for every file (nothing is elected, nothing remembered, and what is not there yet
    /// is "not found", to be asked again), until [`RestoreService::set_election`].
    following: Arc<std::sync::atomic::AtomicBool>,
    token: String,
    local_wal: PathBuf,
    /// The data directory's redo point: recovery reads its segment from here on (and its
    /// first page, for the header).
    redo: Option<Lsn>,
    /// The data directory's checkpoint and its timeline.
    checkpoint: Option<(Lsn, TimelineId)>,
    /// Answers already given: recovery asks for some files twice, and nothing changes while it
    /// runs (the log is elected, nobody writes it). `None`: the local copy holds it.
    answered: Arc<std::sync::Mutex<std::collections::HashMap<String, Answer>>>,
    /// How often each segment (by number) was handed out since the election.
    handed_out: Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>,
    /// While following: the end of the log when each file was last answered, and when.
    followed: Arc<std::sync::Mutex<std::collections::HashMap<String, (Lsn, tokio::time::Instant)>>>,
}

/// A remembered answer: the bytes served, or `None` for "the local copy holds it".
type Answer = Option<Arc<Vec<u8>>>;

/// What the election says about a WAL file recovery asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A segment holding WAL of the elected log: it exists, and if it cannot be read recovery
    /// must fail rather than end early (which would promote without acknowledged commits).
    Required,
    /// Certainly not part of the elected log (beyond its end, or of a timeline not on its path).
    Absent,
    /// Anything else (history files): ask the quorum.
    Unknown,
}

/// Classify `file` against `election` (segments of `segment_size` bytes).
fn classify(file: &str, election: &Election, segment_size: u64) -> Need {
    let Some((tli, segno)) = parse_segment_file_name(file, segment_size) else {
        return Need::Unknown;
    };
    if election.source.is_none() || election.history.is_empty() {
        return Need::Unknown;
    }
    let h = &election.history;
    let Some(idx) = h.iter().position(|(t, _)| *t == tli) else {
        // Timelines after the newest one do not exist yet; older ones are not on the path.
        return if h.last().is_some_and(|(t, _)| tli > *t) || h.iter().all(|(t, _)| tli > *t) {
            Need::Absent
        } else {
            Need::Unknown
        };
    };
    let start = if idx == 0 { 0 } else { h[idx].1 .0 };
    let end = h.get(idx + 1).map_or(election.flush_lsn.0, |(_, l)| l.0);
    let (seg_start, seg_end) = (
        segno.saturating_mul(segment_size),
        (segno + 1).saturating_mul(segment_size),
    );
    if seg_start >= end || (idx > 0 && seg_end <= start) {
        Need::Absent
    } else {
        Need::Required
    }
}

/// The per-compute loopback endpoint behind `restore_command`.
pub struct RestoreService {
    url: String,
    election: Arc<std::sync::RwLock<Arc<Election>>>,
    answered: Arc<std::sync::Mutex<std::collections::HashMap<String, Answer>>>,
    handed_out: Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>,
    following: Arc<std::sync::atomic::AtomicBool>,
    control: Option<spg_core::pg_control::ControlFile>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Dropped without [`RestoreService::stop`] (its owner was cancelled), it stops serving too.
    _on_drop: tokio_util::sync::DropGuard,
}

impl RestoreService {
    /// Serve the WAL of `election` on `127.0.0.1:<free port>`, for a compute whose data
    /// directory's `pg_wal` is `local_wal`.
    pub async fn start(
        quorum: Arc<dyn WalQuorum>,
        db: DatabaseName,
        election: Election,
        local_wal: PathBuf,
    ) -> Result<RestoreService, LifecycleError> {
        let mut raw = [0u8; 16];
        rand::rng().fill(&mut raw[..]);
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| LifecycleError::io("bind", "127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| LifecycleError::io("local_addr", "restore endpoint", e))?;
        // The redo point of the directory being recovered (its pg_wal's parent).
        let control = local_wal.parent().and_then(|d| {
            super::files::on_mount(|| spg_core::pg_control::ControlFile::read(d).ok())
        });
        let redo = control.as_ref().map(|c| c.redo);
        let checkpoint = control.as_ref().map(|c| (c.checkpoint, c.timeline));
        let state = RestoreState {
            quorum,
            db,
            election: Arc::new(std::sync::RwLock::new(Arc::new(election))),
            following: Arc::default(),
            token: token.clone(),
            local_wal,
            redo,
            checkpoint,
            answered: Arc::default(),
            handed_out: Arc::default(),
            followed: Arc::default(),
        };
        let state_election = Arc::clone(&state.election);
        let state_answered = Arc::clone(&state.answered);
        let handed_out = Arc::clone(&state.handed_out);
        let state_following = Arc::clone(&state.following);
        let app = axum::Router::new()
            .route("/{token}/{file}", axum::routing::get(serve))
            .with_state(state);
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s2.cancelled().await })
                .await;
        });
        Ok(RestoreService {
            url: format!("http://{addr}/{token}"),
            election: Arc::clone(&state_election),
            answered: Arc::clone(&state_answered),
            handed_out,
            following: Arc::clone(&state_following),
            control,
            _on_drop: stop.clone().drop_guard(),
            stop,
            task,
        })
    }

    /// Serve a standby: follow the log the running writer extends (see `RestoreState`),
    /// starting from `observed` ([`WalQuorum::observe`]).
    pub async fn start_following(
        quorum: Arc<dyn WalQuorum>,
        db: DatabaseName,
        observed: Election,
        local_wal: PathBuf,
    ) -> Result<RestoreService, LifecycleError> {
        let svc = Self::start(quorum, db, observed, local_wal).await?;
        svc.following
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(svc)
    }

    /// Serve `election`'s log from now on (a standby about to promote: the writer it followed
    /// has stopped and this generation is elected).
    pub fn set_election(&self, election: Election) {
        // Under the lock a follower takes to record its observation (see `follow`): no
        // observation made before the election can replace it afterwards.
        let mut served = self.election.write().unwrap_or_else(|p| p.into_inner());
        *served = Arc::new(election);
        self.following
            .store(false, std::sync::atomic::Ordering::SeqCst);
        drop(served);
        self.answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.handed_out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// How many times, since the election, the segment holding the last byte before `end` was
    /// handed out. Recovery asks for a segment again only once it read all it could of it: a
    /// second time means it has seen everything the elected log holds there, even when the
    /// log ends in a record cut short (its writer died mid-record), which it never replays.
    pub fn times_handed_out(&self, end: Lsn) -> u32 {
        let segno = end.0.saturating_sub(1) / DEFAULT_SEGMENT_SIZE;
        self.handed_out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&segno)
            .copied()
            .unwrap_or(0)
    }

    /// The control file of the data directory being recovered, as read at the start.
    pub fn control(&self) -> Option<&spg_core::pg_control::ControlFile> {
        self.control.as_ref()
    }

    /// The `restore_command` value for `program`.
    pub fn restore_command(&self, program: &Path) -> String {
        format!(
            "\"{}\" wal-restore {} \"%f\" \"%p\"",
            program.display(),
            self.url
        )
    }

    /// Stop serving.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn serve(
    State(st): State<RestoreState>,
    UrlPath((token, file)): UrlPath<(String, String)>,
) -> Response {
    if !spg_core::scram::ct_eq(token.as_bytes(), st.token.as_bytes()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let valid = file.len() <= 64
        && file
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b.is_ascii_lowercase());
    if !valid {
        return StatusCode::NOT_FOUND.into_response();
    }
    let following = st.following.load(std::sync::atomic::Ordering::SeqCst);
    if following {
        return follow(&st, &file).await;
    }
    serve_elected(&st, &file).await
}

/// Answer `file` from the elected log.
async fn serve_elected(st: &RestoreState, file: &str) -> Response {
    let file = file.to_owned();
    let earlier = st
        .answered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&file)
        .cloned();
    let handed = |file: &str| {
        if let Some((_, segno)) = parse_segment_file_name(file, DEFAULT_SEGMENT_SIZE) {
            *st.handed_out
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(segno)
                .or_insert(0) += 1;
        }
    };
    match earlier {
        Some(Some(bytes)) => {
            handed(&file);
            return bytes.as_ref().clone().into_response();
        }
        Some(None) => return StatusCode::NOT_FOUND.into_response(),
        None => {}
    }
    let remember = |answer: Answer| {
        st.answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(file.clone(), answer);
    };
    let election = Arc::clone(&st.election.read().unwrap_or_else(|p| p.into_inner()));
    if branch_history_is_local(&file, st, &election) {
        tracing::debug!(db = %st.db, file, "restore: the image's own history");
        remember(None);
        return StatusCode::NOT_FOUND.into_response();
    }
    let need = classify(&file, &election, DEFAULT_SEGMENT_SIZE);
    if need == Need::Absent {
        tracing::debug!(db = %st.db, file, "restore: not part of the elected log");
        return StatusCode::NOT_FOUND.into_response();
    }
    if need == Need::Required && local_copy_covers_the_log(&file, st, &election) {
        // The usual wake after an idle stop: the image's own segment already ends where the
        // elected log ends, so there is nothing to read from the quorum.
        tracing::debug!(db = %st.db, file, "restore: local copy holds the rest of the log");
        remember(None);
        return StatusCode::NOT_FOUND.into_response();
    }
    match st.quorum.read_wal_file(&st.db, &election, &file).await {
        Ok(Some(bytes)) => {
            let local = std::fs::read(st.local_wal.join(&file)).ok();
            let from = st
                .redo
                .filter(|r| {
                    parse_segment_file_name(&file, DEFAULT_SEGMENT_SIZE)
                        .is_some_and(|(_, segno)| r.0 / DEFAULT_SEGMENT_SIZE == segno)
                })
                .map_or(0, |r| (r.0 % DEFAULT_SEGMENT_SIZE) as usize);
            if local_copy_suffices(&bytes, local.as_deref(), from) {
                // "Not here": PostgreSQL then reads its own pg_wal copy.
                tracing::debug!(db = %st.db, file, "restore: local copy holds it");
                remember(None);
                return StatusCode::NOT_FOUND.into_response();
            }
            tracing::debug!(db = %st.db, file, "restore: served");
            let bytes = Arc::new(bytes);
            remember(Some(Arc::clone(&bytes)));
            handed(&file);
            bytes.as_ref().clone().into_response()
        }
        Ok(None) if need == Need::Required => {
            tracing::warn!(db = %st.db, file, "restore: WAL of the elected log is unavailable");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::warn!(db = %st.db, file, error = %e, "restore: read failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// How long a standby's request for the segment the log ends in waits for the log to grow.
const FOLLOW_WAIT: Duration = Duration::from_millis(1000);
/// Least time between two answers for that segment (each carries the whole segment).
const FOLLOW_SPACING: Duration = Duration::from_millis(100);
/// How often the quorum is looked at meanwhile.
const FOLLOW_POLL: Duration = Duration::from_millis(5);

/// A standby's request: observe the quorum now and answer from what it holds. What is not
/// there (yet), and any failure, is "not found": the standby asks again a moment later, and it
/// never promotes on its own. A request for the segment the log ends in, answered before at
/// the same end, waits (a moment) for the log to grow, so that the standby replays WAL as soon
/// as the quorum has it instead of polling; when the standby is elected meanwhile, it gets the
/// elected log at once.
async fn follow(st: &RestoreState, file: &str) -> Response {
    let before = st
        .followed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(file)
        .copied();
    let deadline = tokio::time::Instant::now() + FOLLOW_WAIT;
    let observed = loop {
        if !st.following.load(std::sync::atomic::Ordering::SeqCst) {
            return serve_elected(st, file).await;
        }
        let observed = match st.quorum.observe(&st.db).await {
            Ok(Some(e)) => Arc::new(e),
            Ok(None) => return StatusCode::NOT_FOUND.into_response(),
            Err(e) => {
                tracing::debug!(db = %st.db, file, error = %e, "restore (standby): observe failed");
                return StatusCode::NOT_FOUND.into_response();
            }
        };
        let now = tokio::time::Instant::now();
        let grew = before.is_none_or(|(b, _)| observed.flush_lsn > b);
        let spaced = before.is_none_or(|(_, at)| now.duration_since(at) >= FOLLOW_SPACING);
        if (grew && spaced) || now >= deadline {
            break observed;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    };
    {
        // The observation becomes the log served only while still following: one made just
        // before an election must not replace the elected log (a standby would then promote
        // at the end of the observed log, short of the elected end).
        let mut served = st.election.write().unwrap_or_else(|p| p.into_inner());
        if !st.following.load(std::sync::atomic::Ordering::SeqCst) {
            drop(served);
            return serve_elected(st, file).await;
        }
        *served = Arc::clone(&observed);
    }
    st.followed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            file.to_owned(),
            (observed.flush_lsn, tokio::time::Instant::now()),
        );
    // Only timelines that exist: an observation's "next" timeline is nobody's yet.
    if let Some(tli) = file
        .strip_suffix(".history")
        .and_then(|t| u32::from_str_radix(t, 16).ok())
    {
        if observed.history.last().is_none_or(|(t, _)| tli > t.0) {
            return StatusCode::NOT_FOUND.into_response();
        }
    }
    if classify(file, &observed, DEFAULT_SEGMENT_SIZE) == Need::Absent {
        return StatusCode::NOT_FOUND.into_response();
    }
    match st.quorum.read_wal_file(&st.db, &observed, file).await {
        Ok(Some(bytes)) => bytes.into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::debug!(db = %st.db, file, error = %e, "restore (standby): read failed");
            StatusCode::NOT_FOUND.into_response()
        }
    }
}

/// Whether `file` is the history of a timeline up to the data directory's own, which only the
/// directory holds: the first start of a branch, whose image lies on a timeline of its parent's
/// log while its own log is still empty. (Asked, the quorum would answer with a placeholder, and
/// PostgreSQL would not find its checkpoint's timeline in it.)
fn branch_history_is_local(file: &str, st: &RestoreState, election: &Election) -> bool {
    let Some(tli) = file
        .strip_suffix(".history")
        .and_then(|t| u32::from_str_radix(t, 16).ok())
    else {
        return false;
    };
    election.history.is_empty()
        && st.checkpoint.is_some_and(|(_, t)| tli <= t.0)
        && st.local_wal.join(file).is_file()
}

/// Whether the data directory's own copy of segment `file` holds everything recovery reads of
/// the elected log in it, without asking the quorum: the usual wake after an idle stop, where
/// the elected log ends with the checkpoint the directory was shut down at. That is: the segment
/// is of the newest timeline on the elected path and of the checkpoint's, holds the redo point
/// and the checkpoint, and the log ends no later than the checkpoint record (read from the local
/// copy, which an image always holds from the redo point through the checkpoint, written by
/// the one writer of that timeline). Anything else (WAL after the checkpoint, other segments or
/// timelines) goes to the quorum.
fn local_copy_covers_the_log(file: &str, st: &RestoreState, election: &Election) -> bool {
    let seg = DEFAULT_SEGMENT_SIZE;
    let Some((tli, segno)) = parse_segment_file_name(file, seg) else {
        return false;
    };
    let (Some(redo), Some((checkpoint, ckpt_tli)), Some((last, _))) =
        (st.redo, st.checkpoint, election.history.last())
    else {
        return false;
    };
    let flush = election.flush_lsn.0;
    let same_segment = [redo.0, checkpoint.0, flush]
        .iter()
        .all(|l| l / seg == segno);
    if *last != tli || ckpt_tli != tli || !same_segment || flush < checkpoint.0 {
        return false;
    }
    let Ok(local) = std::fs::File::open(st.local_wal.join(file)) else {
        return false;
    };
    match checkpoint_record_end(&local, seg, checkpoint.0 % seg) {
        Ok(Some(end)) => flush % seg <= end,
        _ => false,
    }
}

/// WAL page size (`XLOG_BLCKSZ`) and the size of a WAL page's short header.
const WAL_PAGE: u64 = 8192;
const SHORT_PAGE_HEADER: u64 = 24;

/// Where the record at `offset` of a local segment copy ends (offset past it, 8-aligned), read
/// from its length field; `None` unless the copy is a whole segment whose first page and the
/// record's page carry the same WAL page magic, and the record fits in the segment.
fn checkpoint_record_end(
    local: &std::fs::File,
    segment_size: u64,
    offset: u64,
) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    if local.metadata()?.len() != segment_size || offset % WAL_PAGE < SHORT_PAGE_HEADER {
        return Ok(None);
    }
    let mut magic = [[0u8; 2]; 2];
    local.read_exact_at(&mut magic[0], 0)?;
    local.read_exact_at(&mut magic[1], offset - offset % WAL_PAGE)?;
    let mut len = [0u8; 4];
    local.read_exact_at(&mut len, offset)?;
    let mut left = u64::from(u32::from_le_bytes(len));
    if magic[0] != magic[1] || magic[0] == [0, 0] || left == 0 {
        return Ok(None);
    }
    // The record continues past page ends, after each next page's header.
    let mut at = offset;
    loop {
        let room = WAL_PAGE - at % WAL_PAGE;
        if left <= room {
            at += left;
            break;
        }
        left -= room;
        at += room + SHORT_PAGE_HEADER;
    }
    let end = at.div_ceil(8) * 8;
    Ok((end <= segment_size).then_some(end))
}

/// Whether `b` holds a non-zero byte (word-wise: this runs over megabytes of zeros).
fn any_nonzero(b: &[u8]) -> bool {
    b.chunks(4096)
        .any(|c| c.iter().fold(0u8, |a, x| a | x) != 0)
}

/// One past the last non-zero byte of `b`, 0 if none.
fn nonzero_end(b: &[u8]) -> usize {
    let mut end = b.len();
    for c in b.rchunks(4096) {
        if any_nonzero(c) {
            return end - c.len() + c.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1);
        }
        end -= c.len();
    }
    0
}

/// The quorum's copy of a segment ends where its WAL ends (zeros after). If the data directory's
/// own `pg_wal` holds the same segment with the same bytes where recovery reads (the first page,
/// with the segment header, and everything from `from`, the redo point's offset when the segment
/// holds it, up to the quorum's end; possibly more after: WAL its previous compute wrote that the
/// quorum never acknowledged, e.g. the shutdown checkpoint of a compute stopped while the
/// safekeepers were away), recovery must read the local copy: the data directory's checkpoint
/// may lie in it, and it saves copying 16 MiB. One writer per timeline makes the longer copy an
/// extension of the quorum's, never a rival. An image's copy holds only what recovery reads.
fn local_copy_suffices(quorum: &[u8], local: Option<&[u8]>, from: usize) -> bool {
    const PAGE: usize = 8192;
    let Some(local) = local else {
        return false;
    };
    if local.len() != quorum.len() {
        return false;
    }
    let end = nonzero_end(quorum);
    let head = PAGE.min(end);
    let from = from.min(end);
    local[..head] == quorum[..head] && local[from..end] == quorum[from..end]
}

/// The client side of `restore_command`: fetch `file` from `url` into `dest`. `Ok(false)` when
/// the file does not exist (PostgreSQL then looks elsewhere or ends recovery); an error for
/// anything else (PostgreSQL retries or fails the start).
pub fn fetch_wal_file(url: &str, file: &str, dest: &Path) -> Result<bool, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("unsupported URL {url}"))?;
    let (host, path) = rest.split_once('/').ok_or("URL without a path")?;
    let mut s = TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    write!(s, "GET /{path}/{file} HTTP/1.0\r\nHost: {host}\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    // A WAL segment is 16 MiB by default and at most 1 GiB: bound what an answer may hold.
    let mut resp = Vec::new();
    (&mut s)
        .take(MAX_RESTORE_RESPONSE)
        .read_to_end(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    match parse_restore_response(&resp)? {
        Some(body) => {
            let tmp = dest.with_extension("spg-partial");
            spg_core::fsmode::write_private(&tmp, body)
                .map_err(|e| format!("write {}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, dest).map_err(|e| format!("rename {}: {e}", dest.display()))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Most bytes an answer of the restore endpoint may have (a 1 GiB segment and its head).
pub const MAX_RESTORE_RESPONSE: u64 = (1 << 30) + 64 * 1024;

/// Read the restore endpoint's answer (untrusted bytes): the file's bytes for `200`, `None` for
/// `404`, an error for anything else (another status, no head, a body shorter or longer than
/// its `Content-Length`).
pub fn parse_restore_response(resp: &[u8]) -> Result<Option<&[u8]>, String> {
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("response without a header")?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("response without a status")?;
    let body = &resp[split + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len != body.len() {
            return Err(format!("truncated response: {} of {len} bytes", body.len()));
        }
    }
    match status {
        200 => Ok(Some(body)),
        404 => Ok(None),
        other => Err(format!("restore endpoint answered {other}")),
    }
}

/// A fresh password for the replication role of one compute generation.
pub fn replication_password() -> String {
    let mut raw = [0u8; 24];
    rand::rng().fill(&mut raw[..]);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::{checkpoint_record_end, classify, local_copy_suffices, nonzero_end, Need};
    use spg_core::{Election, Generation, Lsn, TimelineId};

    #[test]
    fn the_election_says_which_segments_exist() {
        let seg = 16 << 20;
        // Timeline 2 from the start, timeline 3 from 0/3000100, the log ends at 0/5000020.
        let e = Election {
            generation: Generation(3),
            voters: 2,
            source: Some("sk1".into()),
            history: vec![(TimelineId(2), Lsn(0)), (TimelineId(3), Lsn(0x300_0100))],
            flush_lsn: Lsn(0x500_0020),
            new_timeline: TimelineId(4),
        };
        let c = |name: &str| classify(name, &e, seg);
        assert_eq!(c("000000020000000000000001"), Need::Required);
        assert_eq!(
            c("000000020000000000000003"),
            Need::Required,
            "holds the switch"
        );
        assert_eq!(
            c("000000020000000000000004"),
            Need::Absent,
            "after the switch"
        );
        assert_eq!(
            c("000000030000000000000002"),
            Need::Absent,
            "before timeline 3"
        );
        assert_eq!(c("000000030000000000000003"), Need::Required);
        assert_eq!(
            c("000000030000000000000005"),
            Need::Required,
            "holds the end"
        );
        assert_eq!(
            c("000000030000000000000006"),
            Need::Absent,
            "beyond the end"
        );
        assert_eq!(
            c("000000040000000000000005"),
            Need::Absent,
            "a future timeline"
        );
        assert_eq!(c("00000003.history"), Need::Unknown);
        let none = Election {
            source: None,
            ..e.clone()
        };
        assert_eq!(
            classify("000000020000000000000001", &none, seg),
            Need::Unknown
        );
    }

    #[test]
    fn the_checkpoint_record_end_is_read_from_the_local_copy() {
        let dir = tempfile::tempdir().unwrap();
        let end = |seg: &[u8], size: usize, off: usize| {
            let p = dir.path().join("seg");
            std::fs::write(&p, seg).unwrap();
            let f = std::fs::File::open(&p).unwrap();
            checkpoint_record_end(&f, size as u64, off as u64).unwrap()
        };
        let page = 8192;
        let n = 1 << 20;
        let mut seg = vec![0u8; n];
        let at = page * 20 + 100;
        seg[at..at + 4].copy_from_slice(&114u32.to_le_bytes());
        assert_eq!(end(&seg, n, at), None, "no page magic");
        for p in [0, page * 20] {
            seg[p..p + 2].copy_from_slice(&[0x10, 0xd1]);
        }
        assert_eq!(end(&seg, n, at), Some(((at + 114).div_ceil(8) * 8) as u64));
        assert_eq!(end(&seg[..n / 2], n, at), None, "not a whole segment");
        // A record running into the next page skips that page's header.
        let near = page * 21 - 50;
        seg[near..near + 4].copy_from_slice(&114u32.to_le_bytes());
        assert_eq!(
            end(&seg, n, near),
            Some(((page * 21 + 24 + 64).div_ceil(8) * 8) as u64)
        );
        // A different magic on the record's page: not the same WAL.
        seg[page * 20] = 0x11;
        assert_eq!(end(&seg, n, at), None);
        // Running off the end of the segment.
        let last = n - 40;
        seg[n - page..n - page + 2].copy_from_slice(&[0x10, 0xd1]);
        seg[last..last + 4].copy_from_slice(&114u32.to_le_bytes());
        assert_eq!(end(&seg, n, last), None);
    }

    #[test]
    fn the_end_of_the_nonzero_bytes() {
        assert_eq!(nonzero_end(&[]), 0);
        assert_eq!(nonzero_end(&[0; 9000]), 0);
        let mut v = vec![0u8; 9000];
        v[4095] = 1;
        assert_eq!(nonzero_end(&v), 4096);
        v[8999] = 1;
        assert_eq!(nonzero_end(&v), 9000);
        v[0] = 1;
        v[4095] = 0;
        v[8999] = 0;
        assert_eq!(nonzero_end(&v), 1);
    }

    #[test]
    fn a_local_segment_is_used_only_when_it_holds_the_quorums_bytes() {
        let q = [1, 2, 3, 0, 0, 0];
        assert!(!local_copy_suffices(&q, None, 0));
        assert!(local_copy_suffices(&q, Some(&[1, 2, 3, 0, 0, 0]), 0));
        assert!(local_copy_suffices(&q, Some(&[1, 2, 3, 4, 5, 0]), 0));
        assert!(!local_copy_suffices(&q, Some(&[1, 2, 0, 0, 0, 0]), 0));
        assert!(!local_copy_suffices(&q, Some(&[9, 2, 3, 4, 5, 0]), 0));
        assert!(!local_copy_suffices(&q, Some(&[1, 2]), 0));
        // An image's copy: the first page and everything from the redo point.
        let page = 8192;
        let mut quorum = vec![7u8; page * 4];
        quorum[page * 3..].fill(0);
        let mut image = quorum.clone();
        image[page..page * 2].fill(0);
        assert!(local_copy_suffices(&quorum, Some(&image), page * 2));
        assert!(!local_copy_suffices(&quorum, Some(&image), page));
        image[10] = 0;
        assert!(!local_copy_suffices(&quorum, Some(&image), page * 2));
    }
}
