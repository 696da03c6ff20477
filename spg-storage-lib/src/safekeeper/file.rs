//! [`FileWalStore`]: a safekeeper's WAL and control state in a directory.
//!
//! ```text
//! <dir>/control     the Control record: magic, seq, JSON body, CRC-32C; replaced atomically
//! <dir>/wal/TTTTTTTTXXXXXXXXYYYYYYYY   segment files named as in pg_wal, each followed by a
//!                   4 KiB seal area: two 512-byte slots holding flush records ("seals")
//! ```
//!
//! Segment files hold the linear WAL path; a segment is named by the timeline of its newest bytes,
//! so at a timeline switch the new timeline's first segment starts with the old timeline's bytes,
//! exactly as PostgreSQL lays out `pg_wal`. Only the first `segment_size` bytes are WAL; readers
//! never see the seal area.
//!
//! Crash safety with one device flush per batch: a flush writes a seal into the seal area of the
//! segment holding the new flush LSN and fdatasyncs that file once, covering the WAL bytes and the
//! seal together. As one fdatasync orders nothing within itself, the seal carries the CRC-32C of
//! the WAL bytes it covers in its segment (`[from, flush)`, `from` being the previous seal), and on
//! open a seal counts only if those bytes match: a seal that reached the disk without its data is
//! ignored, and the previous seal (whose fdatasync completed before this one was written) is used.
//! Seals alternate between the two slots, so a torn seal never damages the previous one. Other
//! segments a batch touched are fdatasynced before the seal is written. A new control record is
//! written to a temporary file, fsynced and renamed, and supersedes every seal of an older seq.
//! Both records carry a CRC: a corrupt file is an error, never a guess.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use spg_core::{Lsn, TimelineId};

use super::spare::SpareSegments;
use super::store::{Control, WalStore};
use crate::fsutil::{sync_dir, write_atomic};
use crate::StorageError;

/// PostgreSQL's default WAL segment size.
pub use spg_core::wal_files::DEFAULT_SEGMENT_SIZE;

const CONTROL_MAGIC: &[u8; 8] = b"SPGSKCTL";
const SEAL_MAGIC: &[u8; 8] = b"SPGSEAL1";
const SEAL_SLOT: u64 = 512;
const SEAL_LEN: usize = 48;
/// Bytes after each segment's WAL that hold its seals (one page, so seals share no page with WAL).
pub const SEAL_AREA: u64 = 4096;
/// Bound on a control record (a history of ~10k timelines fits easily).
const CONTROL_MAX: usize = 1 << 20;

pub use spg_core::wal_files::{parse_segment_file_name, segment_file_name};

/// Encode a control record.
pub fn encode_control(seq: u64, control: &Control) -> Vec<u8> {
    let body = serde_json::to_vec(control).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 24);
    out.extend_from_slice(CONTROL_MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decode a control record: its seq and contents. Any damage is a `Corrupt` error.
pub fn decode_control(bytes: &[u8]) -> Result<(u64, Control), StorageError> {
    let corrupt = |reason: &str| StorageError::Corrupt {
        what: "safekeeper control file".into(),
        reason: reason.into(),
    };
    if bytes.len() < 24 || bytes.len() > CONTROL_MAX {
        return Err(corrupt("wrong size"));
    }
    if &bytes[..8] != CONTROL_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let (data, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(data) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(corrupt("checksum mismatch"));
    }
    let seq = u64::from_le_bytes(data[8..16].try_into().map_err(|_| corrupt("short"))?);
    let len = u32::from_le_bytes(data[16..20].try_into().map_err(|_| corrupt("short"))?) as usize;
    if 20 + len != data.len() {
        return Err(corrupt("length mismatch"));
    }
    let control: Control =
        serde_json::from_slice(&data[20..]).map_err(|e| corrupt(&format!("body: {e}")))?;
    let log = &control.log;
    if log.flush < log.start || super::History::from_spans(log.history.spans().to_vec()).is_none() {
        return Err(corrupt("inconsistent log"));
    }
    Ok((seq, control))
}

/// A flush record kept after a segment's WAL: for control record `seq`, the `counter`-th flush
/// made `[.., flush)` durable, and the bytes `[from, flush)` (all within this segment) have
/// CRC-32C `data_crc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// The control record seq this seal belongs to.
    pub seq: u64,
    /// Flush counter (monotonic).
    pub counter: u64,
    /// Start of the bytes the seal vouches for.
    pub from: Lsn,
    /// The flush LSN.
    pub flush: Lsn,
    /// CRC-32C of `[from, flush)`.
    pub data_crc: u32,
}

/// Encode a seal.
pub fn encode_seal(seal: &Seal) -> [u8; SEAL_LEN] {
    let mut out = [0u8; SEAL_LEN];
    out[..8].copy_from_slice(SEAL_MAGIC);
    out[8..16].copy_from_slice(&seal.seq.to_le_bytes());
    out[16..24].copy_from_slice(&seal.counter.to_le_bytes());
    out[24..32].copy_from_slice(&seal.from.0.to_le_bytes());
    out[32..40].copy_from_slice(&seal.flush.0.to_le_bytes());
    out[40..44].copy_from_slice(&seal.data_crc.to_le_bytes());
    let crc = crc32c::crc32c(&out[..44]);
    out[44..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decode a seal slot; `None` for an empty, torn, foreign or inconsistent slot.
pub fn decode_seal(b: &[u8]) -> Option<Seal> {
    let b = b.get(..SEAL_LEN)?;
    if &b[..8] != SEAL_MAGIC
        || crc32c::crc32c(&b[..44]) != u32::from_le_bytes(b[44..48].try_into().ok()?)
    {
        return None;
    }
    let u = |r: std::ops::Range<usize>| b[r].try_into().ok().map(u64::from_le_bytes);
    let seal = Seal {
        seq: u(8..16)?,
        counter: u(16..24)?,
        from: Lsn(u(24..32)?),
        flush: Lsn(u(32..40)?),
        data_crc: u32::from_le_bytes(b[40..44].try_into().ok()?),
    };
    (seal.from <= seal.flush && seal.flush.0 > 0).then_some(seal)
}

/// Write zeros over `[from, to)` of `file`.
pub(crate) fn zero_fill(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

struct Segment {
    tli: TimelineId,
    file: File,
}

/// A [`WalStore`] in a directory; see the module documentation for the layout.
pub struct FileWalStore {
    dir: PathBuf,
    segment_size: u64,
    segments: BTreeMap<u64, Segment>,
    dirty: BTreeSet<u64>,
    dir_dirty: bool,
    seq: u64,
    flush_counter: u64,
    /// The flush LSN of the newest seal written or recovered.
    sealed: Lsn,
    /// Where new segment files come from, when made ahead.
    spares: Option<Arc<SpareSegments>>,
}

impl std::fmt::Debug for FileWalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWalStore")
            .field("dir", &self.dir)
            .finish()
    }
}

impl FileWalStore {
    /// Open (creating if needed) the store in `dir`, with segments of `segment_size` bytes (a
    /// power of two, as PostgreSQL's `wal_segment_size`).
    pub fn open(dir: impl Into<PathBuf>, segment_size: u64) -> Result<Self, StorageError> {
        let dir = dir.into();
        if !segment_size.is_power_of_two() || !(1 << 16..=1 << 30).contains(&segment_size) {
            return Err(StorageError::Corrupt {
                what: "segment size".into(),
                reason: format!("{segment_size} is not a power of two in 64 KiB..1 GiB"),
            });
        }
        let wal = dir.join("wal");
        // WAL is tenant data: 0700 directories (an existing one tightened), 0600 segments.
        spg_core::fsmode::private_dir(&dir).map_err(|e| StorageError::io("create dir", &dir, e))?;
        spg_core::fsmode::private_dir(&wal).map_err(|e| StorageError::io("create dir", &wal, e))?;
        let mut segments: BTreeMap<u64, Segment> = BTreeMap::new();
        let entries = std::fs::read_dir(&wal).map_err(|e| StorageError::io("read dir", &wal, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("read dir", &wal, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((tli, segno)) = parse_segment_file_name(&name, segment_size) else {
                continue;
            };
            let path = entry.path();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StorageError::io("open", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| StorageError::io("stat", &path, e))?
                .len();
            if len != segment_size + SEAL_AREA {
                return Err(StorageError::Corrupt {
                    what: format!("WAL segment {name}"),
                    reason: format!(
                        "size {len}, expected {} (WAL and seal area)",
                        segment_size + SEAL_AREA
                    ),
                });
            }
            if let Some(prev) = segments.remove(&segno) {
                // Two names for one segment (a rename cut short): keep the newer timeline's.
                let (keep, stale) = if prev.tli > tli {
                    (prev, tli)
                } else {
                    (Segment { tli, file }, prev.tli)
                };
                let stale = wal.join(segment_file_name(stale, segno, segment_size));
                std::fs::remove_file(&stale).map_err(|e| StorageError::io("remove", &stale, e))?;
                segments.insert(segno, keep);
            } else {
                segments.insert(segno, Segment { tli, file });
            }
        }
        Ok(FileWalStore {
            dir,
            segment_size,
            segments,
            dirty: BTreeSet::new(),
            dir_dirty: false,
            seq: 0,
            flush_counter: 0,
            sealed: Lsn::INVALID,
            spares: None,
        })
    }

    /// Take new segment files from `spares` when one is ready (same filesystem).
    pub fn with_spares(mut self, spares: Arc<SpareSegments>) -> Self {
        self.spares = Some(spares);
        self
    }

    /// Remove the local copy of segment `segno` (after it was offloaded).
    pub fn remove_segment(&mut self, segno: u64) -> Result<(), StorageError> {
        if let Some(seg) = self.segments.remove(&segno) {
            let path = self.segment_path(seg.tli, segno);
            std::fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
            self.dirty.remove(&segno);
            self.dir_dirty = true;
        }
        Ok(())
    }

    fn segment_path(&self, tli: TimelineId, segno: u64) -> PathBuf {
        self.dir
            .join("wal")
            .join(segment_file_name(tli, segno, self.segment_size))
    }

    fn control_path(&self) -> PathBuf {
        self.dir.join("control")
    }

    /// Whether `seal`, found in segment `segno`, vouches for bytes that are really there.
    fn seal_holds(&self, segno: u64, seal: &Seal) -> Result<bool, StorageError> {
        let seg_start = segno * self.segment_size;
        if (seal.flush.0 - 1) / self.segment_size != segno || seal.from.0 < seg_start {
            return Ok(false);
        }
        let Some(seg) = self.segments.get(&segno) else {
            return Ok(false);
        };
        let mut data = vec![0u8; (seal.flush.0 - seal.from.0) as usize];
        seg.file
            .read_exact_at(&mut data, seal.from.0 - seg_start)
            .map_err(|e| StorageError::io("read", self.segment_path(seg.tli, segno), e))?;
        Ok(crc32c::crc32c(&data) == seal.data_crc)
    }

    /// The seals in segment `segno`'s seal area (empty or torn slots left out).
    fn seals_of(&self, segno: u64) -> Result<Vec<Seal>, StorageError> {
        let Some(seg) = self.segments.get(&segno) else {
            return Ok(Vec::new());
        };
        let mut area = vec![0u8; 2 * SEAL_SLOT as usize];
        seg.file
            .read_exact_at(&mut area, self.segment_size)
            .map_err(|e| StorageError::io("read", self.segment_path(seg.tli, segno), e))?;
        Ok(area
            .chunks(SEAL_SLOT as usize)
            .filter_map(decode_seal)
            .collect())
    }

    /// The segment `segno` as a file of timeline `tli`, creating or renaming it as needed.
    fn segment_for_write(&mut self, segno: u64, tli: TimelineId) -> Result<&File, StorageError> {
        match self.segments.get(&segno).map(|s| s.tli) {
            Some(t) if t == tli => {}
            Some(old) => {
                let (from, to) = (self.segment_path(old, segno), self.segment_path(tli, segno));
                std::fs::rename(&from, &to).map_err(|e| StorageError::io("rename", &to, e))?;
                if let Some(s) = self.segments.get_mut(&segno) {
                    s.tli = tli;
                }
                self.dir_dirty = true;
            }
            None => {
                let path = self.segment_path(tli, segno);
                // A spare is zeroed and synced already (its directory entry is synced with
                // the WAL directory's, below).
                let spare = self.spares.as_ref().is_some_and(|s| s.take_into(&path));
                let file = spg_core::fsmode::private_options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| StorageError::io("create", &path, e))?;
                if !spare {
                    // Fill with real zeros (as PostgreSQL does for pg_wal): later writes then
                    // change no file metadata, so each fdatasync is one data flush, not a
                    // journal commit.
                    zero_fill(&file, 0, self.segment_size + SEAL_AREA)
                        .map_err(|e| StorageError::io("extend", &path, e))?;
                    file.sync_all()
                        .map_err(|e| StorageError::io("fsync", &path, e))?;
                }
                self.segments.insert(segno, Segment { tli, file });
                self.dir_dirty = true;
            }
        }
        self.dirty.insert(segno);
        self.segments
            .get(&segno)
            .map(|s| &s.file)
            .ok_or_else(|| StorageError::Corrupt {
                what: "segment table".into(),
                reason: format!("segment {segno} vanished"),
            })
    }

    /// Split `[lsn, lsn + len)` into per-segment pieces: (segno, offset in segment, offset in
    /// buffer, length).
    fn pieces(&self, lsn: Lsn, len: usize) -> Vec<(u64, u64, usize, usize)> {
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let at = lsn.0 + done as u64;
            let segno = at / self.segment_size;
            let off = at % self.segment_size;
            let n = ((self.segment_size - off) as usize).min(len - done);
            out.push((segno, off, done, n));
            done += n;
        }
        out
    }
}

impl WalStore for FileWalStore {
    fn load(&mut self) -> Result<Option<Control>, StorageError> {
        let path = self.control_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("read", &path, e)),
        };
        let (seq, mut control) = decode_control(&bytes)?;
        self.seq = seq;
        // What a killed process wrote may still be only in the page cache: make it durable
        // before believing any of it (as PostgreSQL syncs pg_wal before crash recovery).
        for (segno, seg) in &self.segments {
            seg.file
                .sync_data()
                .map_err(|e| StorageError::io("fsync", self.segment_path(seg.tli, *segno), e))?;
        }
        sync_dir(&self.dir.join("wal"))?;
        let mut seals = Vec::new();
        for segno in self.segments.keys().copied().collect::<Vec<_>>() {
            for seal in self.seals_of(segno)? {
                self.flush_counter = self.flush_counter.max(seal.counter);
                if seal.seq == seq {
                    seals.push((segno, seal));
                }
            }
        }
        seals.sort_by_key(|(_, seal)| std::cmp::Reverse(seal.counter));
        self.sealed = control.log.flush;
        for (segno, seal) in seals {
            if self.seal_holds(segno, &seal)? {
                self.sealed = seal.flush.max(control.log.flush);
                control.log.flush = self.sealed;
                // The next seal must not land in this one's slot: a newer seal that failed its
                // check may share the counter's parity.
                if (self.flush_counter + 1) % 2 == seal.counter % 2 {
                    self.flush_counter += 1;
                }
                break;
            }
        }
        Ok(Some(control))
    }

    fn save_control(&mut self, control: &Control) -> Result<(), StorageError> {
        let seq = self.seq + 1;
        write_atomic(&self.control_path(), &encode_control(seq, control))?;
        self.seq = seq;
        Ok(())
    }

    fn write_wal(&mut self, lsn: Lsn, tli: TimelineId, bytes: &[u8]) -> Result<(), StorageError> {
        for (segno, off, from, n) in self.pieces(lsn, bytes.len()) {
            let path = self.segment_path(tli, segno);
            let file = self.segment_for_write(segno, tli)?;
            file.write_all_at(&bytes[from..from + n], off)
                .map_err(|e| StorageError::io("write", &path, e))?;
        }
        Ok(())
    }

    fn sync_wal(&mut self, flush: Lsn) -> Result<(), StorageError> {
        // The segment holding the flush LSN gets the seal; the others are made durable first.
        let sealing = flush.0.checked_sub(1).map(|last| last / self.segment_size);
        // Segments leave the dirty set only once everything succeeded: after a failure the next
        // flush syncs them again.
        for &segno in &self.dirty {
            if Some(segno) == sealing {
                continue;
            }
            if let Some(seg) = self.segments.get(&segno) {
                seg.file
                    .sync_data()
                    .map_err(|e| StorageError::io("fsync", self.segment_path(seg.tli, segno), e))?;
            }
        }
        if self.dir_dirty {
            sync_dir(&self.dir.join("wal"))?;
            self.dir_dirty = false;
        }
        let Some(segno) = sealing else {
            self.dirty.clear();
            return Ok(());
        };
        let Some(seg) = self.segments.get(&segno) else {
            return Err(StorageError::Corrupt {
                what: "segment table".into(),
                reason: format!("segment {segno} holding flush LSN {flush} is missing"),
            });
        };
        let path = || self.segment_path(seg.tli, segno);
        let seg_start = segno * self.segment_size;
        let from = self.sealed.max(Lsn(seg_start)).min(flush);
        let mut data = vec![0u8; (flush.0 - from.0) as usize];
        seg.file
            .read_exact_at(&mut data, from.0 - seg_start)
            .map_err(|e| StorageError::io("read", path(), e))?;
        let counter = self.flush_counter + 1;
        let seal = encode_seal(&Seal {
            seq: self.seq,
            counter,
            from,
            flush,
            data_crc: crc32c::crc32c(&data),
        });
        seg.file
            .write_all_at(&seal, self.segment_size + (counter % 2) * SEAL_SLOT)
            .and_then(|()| seg.file.sync_data())
            .map_err(|e| StorageError::io("fsync", path(), e))?;
        self.flush_counter = counter;
        self.sealed = flush;
        self.dirty.clear();
        Ok(())
    }

    fn read_wal(&self, lsn: Lsn, len: usize) -> Result<Vec<u8>, StorageError> {
        let mut out = vec![0u8; len];
        for (segno, off, from, n) in self.pieces(lsn, len) {
            let seg = self
                .segments
                .get(&segno)
                .ok_or_else(|| StorageError::NotHeld {
                    lsn: Lsn(segno * self.segment_size + off),
                    start: lsn,
                    flush: Lsn(lsn.0 + len as u64),
                })?;
            seg.file
                .read_exact_at(&mut out[from..from + n], off)
                .map_err(|e| StorageError::io("read", self.segment_path(seg.tli, segno), e))?;
        }
        Ok(out)
    }

    fn forget_before(&mut self, start: Lsn) -> Result<(), StorageError> {
        let gone: Vec<u64> = self
            .segments
            .range(..start.0 / self.segment_size)
            .map(|(s, _)| *s)
            .collect();
        for segno in gone {
            self.remove_segment(segno)?;
        }
        if std::mem::take(&mut self.dir_dirty) {
            sync_dir(&self.dir.join("wal"))?;
        }
        Ok(())
    }

    fn truncate_wal(&mut self, end: Lsn) -> Result<(), StorageError> {
        self.sealed = self.sealed.min(end);
        let first_gone = end.0.div_ceil(self.segment_size);
        let gone: Vec<u64> = self.segments.range(first_gone..).map(|(s, _)| *s).collect();
        for segno in gone {
            self.remove_segment(segno)?;
        }
        let segno = end.0 / self.segment_size;
        let off = end.0 % self.segment_size;
        if off != 0 {
            if let Some(seg) = self.segments.get(&segno) {
                let path = self.segment_path(seg.tli, segno);
                // Zeros written in place (not set_len): the file keeps its size and its blocks
                // at every instant, so a crash here leaves a well-formed segment.
                zero_fill(&seg.file, off, self.segment_size + SEAL_AREA)
                    .and_then(|()| seg.file.sync_data())
                    .map_err(|e| StorageError::io("truncate", &path, e))?;
            }
        }
        if std::mem::take(&mut self.dir_dirty) {
            sync_dir(&self.dir.join("wal"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safekeeper::{timeline_of, History, Safekeeper};
    use spg_core::Generation;
    use std::path::Path;

    const SEG: u64 = 1 << 16;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn segment_names_match_postgres() {
        let n = segment_file_name(TimelineId(5), 1, DEFAULT_SEGMENT_SIZE);
        assert_eq!(n, "000000050000000000000001");
        assert_eq!(
            segment_file_name(TimelineId(1), 0x1_2345, DEFAULT_SEGMENT_SIZE),
            "000000010000012300000045"
        );
        assert_eq!(
            parse_segment_file_name("000000010000012300000045", DEFAULT_SEGMENT_SIZE),
            Some((TimelineId(1), 0x1_2345))
        );
        for bad in [
            "00000001000001230000004",
            "0000000100000123000001FF",
            "x0000001000001230000004F",
        ] {
            assert_eq!(
                parse_segment_file_name(bad, DEFAULT_SEGMENT_SIZE),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn log_survives_reopen_across_segments_and_a_timeline_switch() {
        let tmp = tempfile::tempdir().unwrap();
        let (g1, g2) = (Generation(1), Generation(2));
        let p1 = History::starting(timeline_of(g1), Lsn(0));
        let data: Vec<u8> = (0..(SEG as usize * 2 + 100))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut sk = Safekeeper::open(FileWalStore::open(tmp.path(), SEG).unwrap()).unwrap();
        sk.follow(g1, &p1).unwrap();
        sk.append(g1, Lsn(0), &data).unwrap();
        assert_eq!(sk.flush().unwrap(), Lsn(data.len() as u64));
        // Generation 2 branches in the middle of the third segment.
        let at = Lsn(SEG * 2 + 50);
        let p2 = p1.branch(at, timeline_of(g2)).unwrap();
        sk.elect(g2).unwrap();
        assert_eq!(sk.follow(g2, &p2).unwrap(), at);
        sk.append(g2, at, b"new timeline").unwrap();
        sk.flush().unwrap();
        drop(sk);

        assert_eq!(
            names(tmp.path()),
            vec![
                "000000020000000000000000",
                "000000020000000000000001",
                "000000030000000000000002"
            ]
        );
        let sk = Safekeeper::open(FileWalStore::open(tmp.path(), SEG).unwrap()).unwrap();
        assert_eq!(sk.generation(), g2);
        assert_eq!(sk.log().flush, Lsn(at.0 + 12));
        assert_eq!(sk.log().history, p2);
        let mut want = data[..at.0 as usize].to_vec();
        want.extend_from_slice(b"new timeline");
        assert_eq!(sk.read(Lsn(0), want.len()).unwrap(), want);
        // Files as PostgreSQL would read them in recovery.
        let f = sk.segment_file(TimelineId(3), 2, SEG).unwrap().unwrap();
        assert_eq!(f.len(), SEG as usize);
        assert_eq!(&f[..62], &want[SEG as usize * 2..]);
        assert!(f[62..].iter().all(|b| *b == 0));
        let old = sk.segment_file(TimelineId(2), 2, SEG).unwrap().unwrap();
        assert_eq!(&old[..50], &data[SEG as usize * 2..at.0 as usize]);
        assert!(
            old[50..].iter().all(|b| *b == 0),
            "nothing past the switch point"
        );
        assert!(sk.segment_file(TimelineId(3), 1, SEG).unwrap().is_none());
        assert!(sk.segment_file(TimelineId(9), 0, SEG).unwrap().is_none());
    }

    #[test]
    fn truncation_removes_later_segments_and_zeroes_the_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = FileWalStore::open(tmp.path(), SEG).unwrap();
        st.write_wal(Lsn(0), TimelineId(2), &vec![7u8; SEG as usize * 2 + 10])
            .unwrap();
        st.sync_wal(Lsn(SEG * 2 + 10)).unwrap();
        st.truncate_wal(Lsn(SEG - 5)).unwrap();
        assert_eq!(names(tmp.path()), vec!["000000020000000000000000"]);
        let tail = st.read_wal(Lsn(SEG - 8), 8).unwrap();
        assert_eq!(tail, vec![7, 7, 7, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn damaged_state_is_a_clear_error_and_a_torn_flush_falls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let g1 = Generation(1);
        let p1 = History::starting(timeline_of(g1), Lsn(0));
        let mut sk = Safekeeper::open(FileWalStore::open(tmp.path(), SEG).unwrap()).unwrap();
        sk.follow(g1, &p1).unwrap();
        sk.append(g1, Lsn(0), b"0123456789").unwrap();
        sk.flush().unwrap();
        sk.append(g1, Lsn(10), b"abc").unwrap();
        sk.flush().unwrap();
        drop(sk);

        // Tear the newest seal: the previous flush (still acknowledged-safe) is used.
        let seg = tmp.path().join("wal").join("000000020000000000000000");
        let mut f = std::fs::read(&seg).unwrap();
        let slot = |i: usize| SEG as usize + i * SEAL_SLOT as usize;
        let newest = (0..2)
            .max_by_key(|i| decode_seal(&f[slot(*i)..]).map(|r| r.counter))
            .unwrap();
        f[slot(newest) + 20] ^= 0xff;
        std::fs::write(&seg, &f).unwrap();
        let sk = Safekeeper::open(FileWalStore::open(tmp.path(), SEG).unwrap()).unwrap();
        assert_eq!(sk.log().flush, Lsn(10));
        drop(sk);

        // A corrupt control file refuses to open.
        let cpath = tmp.path().join("control");
        let mut c = std::fs::read(&cpath).unwrap();
        let mid = c.len() / 2;
        c[mid] ^= 1;
        std::fs::write(&cpath, &c).unwrap();
        let err = Safekeeper::open(FileWalStore::open(tmp.path(), SEG).unwrap()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        std::fs::write(&cpath, &c[..c.len() - 7]).unwrap();
        assert!(Safekeeper::open(FileWalStore::open(tmp.path(), SEG).unwrap()).is_err());

        // A truncated segment file refuses to open.
        std::fs::write(&cpath, encode_control(1, &Control::default())).unwrap();
        let seg = tmp.path().join("wal").join("000000020000000000000000");
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(100).unwrap();
        let err = FileWalStore::open(tmp.path(), SEG).unwrap_err();
        assert!(err.to_string().contains("size 100"), "{err}");
    }

    /// One fdatasync covers a batch and its seal, in no particular order: a seal that reached
    /// the disk without all of its bytes must not be believed.
    #[test]
    fn a_seal_without_its_bytes_is_not_believed() {
        let tmp = tempfile::tempdir().unwrap();
        let g1 = Generation(1);
        let p1 = History::starting(timeline_of(g1), Lsn(0));
        let mut sk = Safekeeper::open(FileWalStore::open(tmp.path(), SEG).unwrap()).unwrap();
        sk.follow(g1, &p1).unwrap();
        // Batches: one inside segment 0, one crossing into segment 1, one inside segment 1.
        let data: Vec<u8> = (0..SEG as usize + 300).map(|i| (i % 253) as u8).collect();
        let cuts = [100, SEG as usize + 200, data.len()];
        let mut at = 0;
        for c in cuts {
            sk.append(g1, Lsn(at as u64), &data[at..c]).unwrap();
            assert_eq!(sk.flush().unwrap(), Lsn(c as u64));
            at = c;
        }
        drop(sk);
        let reopen = || Safekeeper::open(FileWalStore::open(tmp.path(), SEG).unwrap()).unwrap();
        assert_eq!(reopen().log().flush, Lsn(data.len() as u64));

        // The last batch's bytes did not all reach the disk (one is still zero): the seal before
        // it holds.
        let seg1 = tmp.path().join("wal").join("000000020000000000000001");
        let f = OpenOptions::new().write(true).open(&seg1).unwrap();
        f.write_all_at(&[0], 250).unwrap();
        let sk = reopen();
        assert_eq!(sk.log().flush, Lsn(SEG + 200));
        assert_eq!(
            sk.read(Lsn(0), SEG as usize + 200).unwrap(),
            data[..SEG as usize + 200]
        );
        drop(sk);

        // Neither seal of segment 1 holds: the one in segment 0 does (the crossing batch's
        // bytes in segment 0 were made durable before its seal was written).
        f.write_all_at(&[0], 150).unwrap();
        assert_eq!(reopen().log().flush, Lsn(100));

        // Reads never include the seal area.
        let sk = reopen();
        let file = sk.segment_file(TimelineId(2), 0, SEG).unwrap().unwrap();
        assert_eq!(file.len(), SEG as usize);
    }

    /// After a reopen that had to skip a seal, the next seal goes to the other slot: tearing it
    /// must still leave the seal that was believed.
    #[test]
    fn the_next_seal_after_a_reopen_spares_the_believed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let g1 = Generation(1);
        let p1 = History::starting(timeline_of(g1), Lsn(0));
        let reopen = || Safekeeper::open(FileWalStore::open(tmp.path(), SEG).unwrap()).unwrap();
        let mut sk = reopen();
        sk.follow(g1, &p1).unwrap();
        // (The first flush also goes into the control file; the next ones only into seals.)
        sk.append(g1, Lsn(0), &[1u8; 10]).unwrap();
        sk.flush().unwrap();
        sk.append(g1, Lsn(10), &[1u8; 90]).unwrap();
        sk.flush().unwrap();
        sk.append(g1, Lsn(100), &[2u8; 100]).unwrap();
        sk.flush().unwrap();
        drop(sk);
        let seg = tmp.path().join("wal").join("000000020000000000000000");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        f.write_all_at(&[0], 150).unwrap(); // the second batch's seal is not believed
        let mut sk = reopen();
        assert_eq!(sk.log().flush, Lsn(100));

        // The primary resends from 100, with other bytes this time.
        sk.follow(g1, &p1).unwrap();
        sk.append(g1, Lsn(100), &[3u8; 150]).unwrap();
        assert_eq!(sk.flush().unwrap(), Lsn(250));
        drop(sk);
        // Tear the seal just written.
        let mut area = vec![0u8; 2 * SEAL_SLOT as usize];
        f.read_exact_at(&mut area, SEG).unwrap();
        let newest = (0..2)
            .max_by_key(|i| decode_seal(&area[i * SEAL_SLOT as usize..]).map(|r| r.counter))
            .unwrap();
        assert_eq!(
            decode_seal(&area[newest * SEAL_SLOT as usize..]).map(|r| r.flush),
            Some(Lsn(250))
        );
        f.write_all_at(&[0xff; 8], SEG + newest as u64 * SEAL_SLOT + 24)
            .unwrap();
        assert_eq!(reopen().log().flush, Lsn(100), "the believed seal survived");
    }

    #[test]
    fn seals_round_trip_and_reject_damage() {
        let seal = Seal {
            seq: 3,
            counter: 9,
            from: Lsn(0x150_0000),
            flush: Lsn(0x150_0790),
            data_crc: 0xdead_beef,
        };
        let b = encode_seal(&seal);
        assert_eq!(decode_seal(&b), Some(seal));
        for i in 0..b.len() {
            let mut bad = b;
            bad[i] ^= 0x10;
            assert_eq!(decode_seal(&bad), None, "byte {i}");
        }
        assert_eq!(decode_seal(&b[..40]), None);
    }
}

#[cfg(test)]
#[test]
#[ignore = "writes the fuzz corpus seeds; run by hand"]
fn write_fuzz_corpus() {
    use crate::safekeeper::{History, WalLog};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sk_control");
    let c = Control {
        generation: spg_core::Generation(7),
        log: WalLog {
            start: Lsn(0x100_0000),
            flush: Lsn(0x150_0790),
            history: History::starting(TimelineId(1), Lsn(0))
                .branch(Lsn(0x150_0000), TimelineId(8))
                .unwrap(),
        },
    };
    std::fs::write(dir.join("control-g7"), encode_control(3, &c)).unwrap();
    std::fs::write(
        dir.join("control-empty"),
        encode_control(1, &Control::default()),
    )
    .unwrap();
    std::fs::write(
        dir.join("seal"),
        encode_seal(&Seal {
            seq: 3,
            counter: 9,
            from: Lsn(0x150_0000),
            flush: Lsn(0x150_0790),
            data_crc: 0xdead_beef,
        }),
    )
    .unwrap();
}
