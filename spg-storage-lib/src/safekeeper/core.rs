//! The safekeeper's protocol state machine, written against [`WalStore`] so that the daemon and
//! the deterministic simulation run the same code.

use spg_core::{Generation, Lsn, TimelineId};

use super::log::{History, WalLog};
use super::store::{Control, WalStore};
use crate::StorageError;

/// A safekeeper's answer to an election.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "vote", rename_all = "snake_case")]
pub enum Vote {
    /// The generation is persisted here; this safekeeper will not acknowledge WAL of any older
    /// generation again. `log` is what it holds, for the proposer to pick a recovery source.
    Promise {
        /// The generation promised.
        generation: Generation,
        /// The WAL held at the moment of the promise.
        log: WalLog,
    },
    /// A newer generation was already promised.
    Reject {
        /// The generation in force here.
        current: Generation,
    },
}

#[derive(Debug, Clone)]
struct Following {
    generation: Generation,
    path: History,
}

/// One database's safekeeper: the fence, the WAL log and the acknowledgement rule.
///
/// The rules that make the quorum safe (see the `safekeeper` module documentation):
/// - a promise to generation `g` is durable before it is answered, and from then on WAL of an
///   older generation is neither accepted nor acknowledged;
/// - before following the primary of generation `g`, the log is cut back to the longest prefix that
///   lies on the primary's timeline path, so the log is always a prefix of one writer's path;
/// - WAL is only appended contiguously, and acknowledged only up to what is durable.
#[derive(Debug)]
pub struct Safekeeper<S> {
    store: S,
    control: Control,
    written: Lsn,
    following: Option<Following>,
}

impl<S: WalStore> Safekeeper<S> {
    /// Open a safekeeper over `store`, recovering its durable state.
    pub fn open(mut store: S) -> Result<Self, StorageError> {
        let control = store.load()?.unwrap_or_default();
        let written = control.log.flush.max(control.log.start);
        Ok(Safekeeper {
            store,
            control,
            written,
            following: None,
        })
    }

    /// The generation promised here.
    pub fn generation(&self) -> Generation {
        self.control.generation
    }

    /// The durable WAL held.
    pub fn log(&self) -> &WalLog {
        &self.control.log
    }

    /// The end of the WAL written (durable or not).
    pub fn written(&self) -> Lsn {
        self.written
    }

    /// The generation whose primary this safekeeper currently follows.
    pub fn following(&self) -> Option<Generation> {
        self.following.as_ref().map(|f| f.generation)
    }

    /// The store (for inspection).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Consume the safekeeper, returning its store.
    pub fn into_store(self) -> S {
        self.store
    }

    /// Answer an election of generation `g`: promise (durably) if `g` is not older than the
    /// generation in force, otherwise reject.
    pub fn elect(&mut self, g: Generation) -> Result<Vote, StorageError> {
        if g < self.control.generation {
            return Ok(Vote::Reject {
                current: self.control.generation,
            });
        }
        if g > self.control.generation {
            self.adopt(g)?;
        }
        Ok(Vote::Promise {
            generation: g,
            log: self.control.log.clone(),
        })
    }

    fn adopt(&mut self, g: Generation) -> Result<(), StorageError> {
        let mut next = self.control.clone();
        next.generation = g;
        self.store.save_control(&next)?;
        self.control = next;
        if self.following.as_ref().is_some_and(|f| f.generation < g) {
            self.following = None;
        }
        Ok(())
    }

    /// Start following the primary of generation `g`, whose timeline path is `path`. Cuts the
    /// log back to where it leaves `path` (bytes there were never acknowledged) and returns the
    /// LSN from which WAL must be appended next.
    ///
    /// Fails with `StaleGeneration` when a newer generation was promised.
    pub fn follow(&mut self, g: Generation, path: &History) -> Result<Lsn, StorageError> {
        if g < self.control.generation {
            return Err(StorageError::StaleGeneration {
                offered: g.0,
                current: self.control.generation.0,
            });
        }
        let log = &self.control.log;
        let keep = if log.is_empty() {
            log.start
        } else {
            log.flush.min(log.history.divergence(path)).max(log.start)
        };
        let mut next = self.control.clone();
        next.generation = g;
        if keep < log.flush {
            next.log.flush = keep;
            next.log.history.truncate(keep);
        }
        if next != self.control {
            self.store.save_control(&next)?;
        }
        if self.written > keep {
            self.store.truncate_wal(keep)?;
        }
        self.control = next;
        self.written = keep;
        self.following = Some(Following {
            generation: g,
            path: path.clone(),
        });
        Ok(keep)
    }

    /// Move the start of an empty log to `start` (a safekeeper joining with no WAL begins where
    /// its first source can serve).
    pub fn reset_start(&mut self, start: Lsn) -> Result<(), StorageError> {
        if !self.control.log.is_empty() {
            return Ok(());
        }
        let mut next = self.control.clone();
        next.log = WalLog {
            start,
            flush: start,
            history: History::default(),
        };
        self.store.save_control(&next)?;
        self.store.truncate_wal(Lsn::INVALID)?;
        self.control = next;
        self.written = start;
        Ok(())
    }

    /// Replace the log by `log`, which holds no bytes (`start == flush`) and lies on the path
    /// `log.history`, under generation `g` (not older than the one promised): the operator's
    /// point-in-time restore, which abandons the WAL past its restore point on purpose. The
    /// restored image holds everything up to `log.start`; the next primary continues from there.
    ///
    /// Fails with `StaleGeneration` when a newer generation was promised, and with `Protocol`
    /// when `log` holds bytes or its path is not newer than the current one's.
    pub fn reset(&mut self, g: Generation, log: WalLog) -> Result<(), StorageError> {
        if g < self.control.generation {
            return Err(StorageError::StaleGeneration {
                offered: g.0,
                current: self.control.generation.0,
            });
        }
        if !log.is_empty() || log.history.last_tli().is_none() {
            return Err(StorageError::Protocol(format!(
                "a reset log holds no bytes and has a path (got {}..{})",
                log.start, log.flush
            )));
        }
        if self.control.log == log && self.control.generation == g {
            return Ok(());
        }
        if log.history.last_tli() <= self.control.log.history.last_tli() {
            return Err(StorageError::Protocol(format!(
                "a reset log must end on a newer timeline than {:?}",
                self.control.log.history.last_tli()
            )));
        }
        let next = Control {
            generation: g,
            log: WalLog {
                flush: log.start,
                ..log
            },
        };
        self.store.save_control(&next)?;
        self.store.truncate_wal(Lsn::INVALID)?;
        self.written = next.log.start;
        self.control = next;
        self.following = None;
        Ok(())
    }

    /// Drop the local WAL below `start` (a segment boundary at or below the flush LSN), once it is
    /// in object storage. Reads below it then fail with `NotHeld`.
    pub fn advance_start(&mut self, start: Lsn) -> Result<(), StorageError> {
        let log = &self.control.log;
        if start <= log.start || start > log.flush {
            return Ok(());
        }
        let mut next = self.control.clone();
        next.log.start = start;
        self.store.save_control(&next)?;
        self.control = next;
        self.store.forget_before(start)
    }

    /// Append WAL of the followed generation `g` at `lsn`. Bytes that overlap what is already
    /// written are skipped (they are the same bytes: one writer per timeline); a gap is refused.
    pub fn append(&mut self, g: Generation, lsn: Lsn, bytes: &[u8]) -> Result<(), StorageError> {
        let path = match &self.following {
            Some(f) if f.generation == g && g == self.control.generation => f.path.clone(),
            _ => return Err(StorageError::NotFollowing(g.0)),
        };
        if lsn > self.written {
            return Err(StorageError::WalGap {
                expected: self.written,
                got: lsn,
            });
        }
        let skip = (self.written.0 - lsn.0) as usize;
        let Some(mut rest) = bytes.get(skip..) else {
            return Ok(());
        };
        // Split at timeline switches so the store knows which timeline each piece is on.
        while !rest.is_empty() {
            let at = self.written;
            let tli = path.tli_at(at).ok_or(StorageError::WalGap {
                expected: at,
                got: lsn,
            })?;
            let next_switch = path
                .spans()
                .iter()
                .map(|s| s.begin)
                .find(|&b| b > at)
                .map(|b| (b.0 - at.0) as usize)
                .unwrap_or(usize::MAX);
            let n = rest.len().min(next_switch);
            self.store.write_wal(at, tli, &rest[..n])?;
            self.written = Lsn(at.0 + n as u64);
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Append WAL read from a peer whose log lies on `data_path`: only the part that is also on the
    /// followed primary's path is taken (the rest belongs to another writer).
    pub fn append_on_path(
        &mut self,
        g: Generation,
        data_path: &History,
        lsn: Lsn,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let limit = match &self.following {
            Some(f) if f.generation == g => f.path.divergence(data_path),
            _ => return Err(StorageError::NotFollowing(g.0)),
        };
        let take = limit.0.saturating_sub(lsn.0).min(bytes.len() as u64) as usize;
        self.append(g, lsn, &bytes[..take])
    }

    /// Make everything written durable; returns the new flush LSN.
    pub fn flush(&mut self) -> Result<Lsn, StorageError> {
        if self.written <= self.control.log.flush {
            return Ok(self.control.log.flush);
        }
        let Some(f) = &self.following else {
            return Ok(self.control.log.flush);
        };
        let mut history = f.path.clone();
        history.truncate(self.written);
        let was_empty = self.control.log.is_empty();
        if history != self.control.log.history || was_empty {
            // The log crosses onto a new timeline: the history changes with the flush.
            self.store.sync_wal(self.written)?;
            let mut next = self.control.clone();
            next.log.flush = self.written;
            next.log.history = history;
            self.store.save_control(&next)?;
            self.control = next;
        } else {
            self.store.sync_wal(self.written)?;
            self.control.log.flush = self.written;
        }
        Ok(self.control.log.flush)
    }

    /// The flush LSN to acknowledge to the primary of generation `g`, or `None` when `g` is not
    /// the generation in force and followed here. This is the fence: the caller sends an
    /// acknowledgement only when this returns `Some`, and sends it before handling anything else.
    pub fn ack(&self, g: Generation) -> Option<Lsn> {
        match &self.following {
            Some(f) if f.generation == g && g == self.control.generation => {
                Some(self.control.log.flush)
            }
            _ => None,
        }
    }

    /// Read durable WAL `[lsn, lsn + len)`.
    pub fn read(&self, lsn: Lsn, len: usize) -> Result<Vec<u8>, StorageError> {
        let log = &self.control.log;
        let end = lsn.0.checked_add(len as u64);
        if lsn < log.start || end.is_none_or(|e| e > log.flush.0) {
            return Err(StorageError::NotHeld {
                lsn,
                start: log.start,
                flush: log.flush,
            });
        }
        self.store.read_wal(lsn, len)
    }

    /// The contents PostgreSQL expects in segment file `segno` of timeline `tli` (for a
    /// `restore_command`), built from the durable log: bytes of the segment that lie on `tli`'s
    /// path up to where `tli` ends here (or the flush LSN), zeros after. `None` when this log does
    /// not hold that timeline in that segment.
    pub fn segment_file(
        &self,
        tli: TimelineId,
        segno: u64,
        segment_size: u64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let log = &self.control.log;
        let Some(span) = log.history.spans().iter().find(|s| s.tli == tli) else {
            return Ok(None);
        };
        let seg_start = segno.saturating_mul(segment_size);
        let seg_end = seg_start.saturating_add(segment_size);
        let valid_end = log
            .history
            .end_of(tli)
            .unwrap_or(log.flush)
            .min(log.flush)
            .0;
        // The segment must reach into the timeline's span, and its start must be held.
        if seg_end <= span.begin.0 || seg_start >= valid_end || seg_start < log.start.0 {
            return Ok(None);
        }
        let n = (valid_end.min(seg_end) - seg_start) as usize;
        let mut out = self.store.read_wal(Lsn(seg_start), n)?;
        out.resize(segment_size as usize, 0);
        Ok(Some(out))
    }

    /// Durable bytes from `from` up to `to` that lie on `path` (for a peer catching up to the
    /// primary whose path that is). Empty when nothing there agrees.
    pub fn read_on_path(
        &self,
        path: &History,
        from: Lsn,
        to: Lsn,
    ) -> Result<Vec<u8>, StorageError> {
        let log = &self.control.log;
        let end = to.min(log.flush).min(log.history.divergence(path));
        if from < log.start || end <= from {
            return Ok(Vec::new());
        }
        self.read(from, (end.0 - from.0) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safekeeper::{choose_source, timeline_of, MemWalStore};

    fn g(n: u64) -> Generation {
        Generation(n)
    }

    fn following(n: u64, path: &History) -> Safekeeper<MemWalStore> {
        let mut sk = Safekeeper::open(MemWalStore::new()).unwrap();
        assert_eq!(sk.follow(g(n), path).unwrap(), Lsn(0));
        sk
    }

    #[test]
    fn promise_is_durable_and_fences_older_generations() {
        let path = History::starting(timeline_of(g(1)), Lsn(0));
        let mut sk = following(1, &path);
        sk.append(g(1), Lsn(0), b"abc").unwrap();
        assert_eq!(sk.flush().unwrap(), Lsn(3));
        assert_eq!(sk.ack(g(1)), Some(Lsn(3)));

        let vote = sk.elect(g(2)).unwrap();
        assert!(
            matches!(vote, Vote::Promise { generation, ref log } if generation == g(2) && log.flush == Lsn(3))
        );
        // Generation 1 is fenced: no acknowledgement, no append, no re-follow.
        assert_eq!(sk.ack(g(1)), None);
        assert!(matches!(
            sk.append(g(1), Lsn(3), b"d"),
            Err(StorageError::NotFollowing(1))
        ));
        assert!(matches!(
            sk.follow(g(1), &path),
            Err(StorageError::StaleGeneration { .. })
        ));
        assert_eq!(sk.elect(g(1)).unwrap(), Vote::Reject { current: g(2) });

        // The promise survives a crash.
        let mut store = sk.into_store();
        store.crash();
        let sk = Safekeeper::open(store).unwrap();
        assert_eq!(sk.generation(), g(2));
        assert_eq!(sk.log().flush, Lsn(3));
    }

    #[test]
    fn unsynced_wal_is_never_acknowledged_and_may_be_lost() {
        let path = History::starting(timeline_of(g(1)), Lsn(0));
        let mut sk = following(1, &path);
        sk.append(g(1), Lsn(0), b"abc").unwrap();
        sk.flush().unwrap();
        sk.append(g(1), Lsn(3), b"def").unwrap();
        assert_eq!(sk.ack(g(1)), Some(Lsn(3)));
        // A gap is refused; an overlap is skipped.
        assert!(matches!(
            sk.append(g(1), Lsn(7), b"x"),
            Err(StorageError::WalGap { .. })
        ));
        sk.append(g(1), Lsn(5), b"fgh").unwrap();
        assert_eq!(sk.written(), Lsn(8));
        let mut store = sk.into_store();
        store.crash();
        let sk = Safekeeper::open(store).unwrap();
        assert_eq!(sk.log().flush, Lsn(3));
        assert_eq!(sk.read(Lsn(0), 3).unwrap(), b"abc");
        assert!(sk.read(Lsn(0), 4).is_err());
    }

    #[test]
    fn following_a_new_primary_cuts_the_divergent_tail() {
        // Generation 1 wrote 6 bytes here, but the next primary branched at 4.
        let p1 = History::starting(timeline_of(g(1)), Lsn(0));
        let mut sk = following(1, &p1);
        sk.append(g(1), Lsn(0), b"abcdef").unwrap();
        sk.flush().unwrap();
        let p2 = p1.branch(Lsn(4), timeline_of(g(2))).unwrap();
        assert_eq!(sk.follow(g(2), &p2).unwrap(), Lsn(4));
        assert_eq!(sk.log().flush, Lsn(4));
        sk.append(g(2), Lsn(4), b"XY").unwrap();
        sk.flush().unwrap();
        assert_eq!(sk.read(Lsn(0), 6).unwrap(), b"abcdXY");
        assert_eq!(sk.log().history, p2);
        // Following the same primary again keeps everything.
        let mut store = sk.into_store();
        store.crash();
        let mut sk = Safekeeper::open(store).unwrap();
        assert_eq!(sk.follow(g(2), &p2).unwrap(), Lsn(6));
    }

    #[test]
    fn a_reset_starts_the_log_over_on_a_newer_path() {
        // Generation 1 wrote 10 bytes; a restore to 4 made an image at 8 on timeline 4.
        let p1 = History::starting(timeline_of(g(1)), Lsn(0));
        let mut sk = following(1, &p1);
        sk.append(g(1), Lsn(0), b"abcdefghij").unwrap();
        sk.flush().unwrap();
        let stale = sk.log().clone();
        let restored = p1.branch(Lsn(4), timeline_of(g(3))).unwrap();
        let reset = WalLog {
            start: Lsn(8),
            flush: Lsn(8),
            history: restored.clone(),
        };
        assert!(matches!(sk.elect(g(3)).unwrap(), Vote::Promise { .. }));
        // Bytes, or a path no newer than the log's, are refused; so is an older generation.
        let with_bytes = WalLog {
            flush: Lsn(9),
            ..reset.clone()
        };
        assert!(matches!(
            sk.reset(g(3), with_bytes),
            Err(StorageError::Protocol(_))
        ));
        let old_path = WalLog {
            history: p1.clone(),
            ..reset.clone()
        };
        assert!(matches!(
            sk.reset(g(3), old_path),
            Err(StorageError::Protocol(_))
        ));
        assert!(matches!(
            sk.reset(g(2), reset.clone()),
            Err(StorageError::StaleGeneration { .. })
        ));
        sk.reset(g(3), reset.clone()).unwrap();
        // Again is a no-op; the old generation stays fenced.
        sk.reset(g(3), reset.clone()).unwrap();
        assert_eq!(sk.ack(g(1)), None);
        assert_eq!(sk.log(), &reset);
        assert!(sk.read(Lsn(0), 4).is_err());
        // An election prefers it over a member that missed the reset.
        assert_eq!(choose_source(&[stale.clone(), reset.clone()]), Some(1));
        assert_eq!(choose_source(&[reset.clone(), stale]), Some(0));
        // It survives a crash, and the next primary continues at its start.
        let mut store = sk.into_store();
        store.crash();
        let mut sk = Safekeeper::open(store).unwrap();
        assert_eq!(sk.log(), &reset);
        let p4 = restored.branch(Lsn(9), timeline_of(g(4))).unwrap();
        sk.elect(g(4)).unwrap();
        assert_eq!(sk.follow(g(4), &p4).unwrap(), Lsn(8));
        sk.append(g(4), Lsn(8), b"XY").unwrap();
        assert_eq!(sk.flush().unwrap(), Lsn(10));
        assert_eq!(sk.read(Lsn(8), 2).unwrap(), b"XY");
        assert_eq!(sk.log().history, p4);
    }

    #[test]
    fn source_is_the_newest_timeline_not_the_longest_log() {
        // sk A holds a long tail of timeline 2 that was never acknowledged; sk B holds the
        // shorter but newer timeline 3, whose commits were acknowledged.
        let old = WalLog {
            start: Lsn(0),
            flush: Lsn(100),
            history: History::starting(TimelineId(2), Lsn(0)),
        };
        let new = WalLog {
            start: Lsn(0),
            flush: Lsn(40),
            history: History::starting(TimelineId(2), Lsn(0))
                .branch(Lsn(30), TimelineId(3))
                .unwrap(),
        };
        assert_eq!(choose_source(&[old.clone(), new.clone()]), Some(1));
        assert_eq!(choose_source(&[new, old]), Some(0));
        assert_eq!(choose_source(&[]), None);
    }
}
