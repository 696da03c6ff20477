//! [`FileWalStore`]: a safekeeper's WAL and control state in a directory.
//!
//! ```text
//! <dir>/control     the Control record: magic, seq, JSON body, CRC-32C; replaced atomically
//! <dir>/flush       two 512-byte slots, written alternately in place: the flush LSN for a control seq
//! <dir>/wal/TTTTTTTTXXXXXXXXYYYYYYYY   segment files named as in pg_wal
//! ```
//!
//! Segment files hold the linear WAL path; a segment is named by the timeline of its newest bytes,
//! so at a timeline switch the new timeline's first segment starts with the old timeline's bytes,
//! exactly as PostgreSQL lays out `pg_wal`.
//!
//! Crash safety: a new flush is recorded only after the segments are fsynced, in the slot not
//! holding the newest record, so a torn write leaves the previous record intact. A new control
//! record is written to a temporary file, fsynced and renamed, and supersedes every flush record
//! of an older seq. Both records carry a CRC: a corrupt file is an error, never a guess.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use spg_core::{Lsn, TimelineId};

use super::store::{Control, WalStore};
use crate::fsutil::{sync_dir, write_atomic};
use crate::StorageError;

/// PostgreSQL's default WAL segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

const CONTROL_MAGIC: &[u8; 8] = b"SPGSKCTL";
const FLUSH_MAGIC: &[u8; 8] = b"SPGFLUSH";
const FLUSH_SLOT: u64 = 512;
/// Bound on a control record (a history of ~10k timelines fits easily).
const CONTROL_MAX: usize = 1 << 20;

/// The name PostgreSQL gives segment `segno` of timeline `tli`.
pub fn segment_file_name(tli: TimelineId, segno: u64, segment_size: u64) -> String {
    let per_id = 0x1_0000_0000 / segment_size;
    format!("{:08X}{:08X}{:08X}", tli.0, segno / per_id, segno % per_id)
}

/// Parse a segment file name (`TTTTTTTTXXXXXXXXYYYYYYYY`) into timeline and segment number.
pub fn parse_segment_file_name(name: &str, segment_size: u64) -> Option<(TimelineId, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&name[16..24], 16).ok()?;
    let per_id = 0x1_0000_0000 / segment_size;
    if lo >= per_id {
        return None;
    }
    Some((TimelineId(tli), hi.checked_mul(per_id)?.checked_add(lo)?))
}

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

/// A flush record: (control seq, counter, flush LSN).
fn encode_flush(seq: u64, counter: u64, flush: Lsn) -> [u8; 36] {
    let mut out = [0u8; 36];
    out[..8].copy_from_slice(FLUSH_MAGIC);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..24].copy_from_slice(&counter.to_le_bytes());
    out[24..32].copy_from_slice(&flush.0.to_le_bytes());
    let crc = crc32c::crc32c(&out[..32]);
    out[32..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decode a flush slot; `None` for an empty, torn or foreign slot.
pub fn decode_flush(b: &[u8]) -> Option<(u64, u64, Lsn)> {
    let b = b.get(..36)?;
    if &b[..8] != FLUSH_MAGIC
        || crc32c::crc32c(&b[..32]) != u32::from_le_bytes(b[32..36].try_into().ok()?)
    {
        return None;
    }
    let u = |r: std::ops::Range<usize>| b[r].try_into().ok().map(u64::from_le_bytes);
    Some((u(8..16)?, u(16..24)?, Lsn(u(24..32)?)))
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
    flush_file: Option<File>,
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
        std::fs::create_dir_all(&wal).map_err(|e| StorageError::io("create dir", &wal, e))?;
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
            if len != segment_size {
                return Err(StorageError::Corrupt {
                    what: format!("WAL segment {name}"),
                    reason: format!("size {len}, expected {segment_size}"),
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
            flush_file: None,
        })
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

    fn flush_path(&self) -> PathBuf {
        self.dir.join("flush")
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
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| StorageError::io("create", &path, e))?;
                // Fill with real zeros (as PostgreSQL does for pg_wal): later writes then change
                // no file metadata, so each fdatasync is one data flush, not a journal commit.
                let zeros = vec![0u8; 1 << 20];
                let mut at = 0;
                while at < self.segment_size {
                    let n = (self.segment_size - at).min(zeros.len() as u64) as usize;
                    file.write_all_at(&zeros[..n], at)
                        .map_err(|e| StorageError::io("extend", &path, e))?;
                    at += n as u64;
                }
                file.sync_all()
                    .map_err(|e| StorageError::io("fsync", &path, e))?;
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
        let fpath = self.flush_path();
        if let Ok(b) = std::fs::read(&fpath) {
            let slots = [
                decode_flush(b.get(..FLUSH_SLOT as usize).unwrap_or(&[])),
                decode_flush(b.get(FLUSH_SLOT as usize..).unwrap_or(&[])),
            ];
            if let Some((_, counter, flush)) = slots
                .into_iter()
                .flatten()
                .filter(|(s, _, _)| *s == seq)
                .max_by_key(|(_, c, _)| *c)
            {
                self.flush_counter = counter;
                control.log.flush = control.log.flush.max(flush);
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
        for segno in std::mem::take(&mut self.dirty) {
            if let Some(seg) = self.segments.get(&segno) {
                seg.file
                    .sync_data()
                    .map_err(|e| StorageError::io("fsync", self.segment_path(seg.tli, segno), e))?;
            }
        }
        if std::mem::take(&mut self.dir_dirty) {
            sync_dir(&self.dir.join("wal"))?;
        }
        let fpath = self.flush_path();
        if self.flush_file.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&fpath)
                .map_err(|e| StorageError::io("open", &fpath, e))?;
            f.set_len(2 * FLUSH_SLOT)
                .map_err(|e| StorageError::io("extend", &fpath, e))?;
            f.sync_all()
                .map_err(|e| StorageError::io("fsync", &fpath, e))?;
            sync_dir(&self.dir)?;
            self.flush_file = Some(f);
        }
        self.flush_counter += 1;
        let slot = (self.flush_counter % 2) * FLUSH_SLOT;
        let rec = encode_flush(self.seq, self.flush_counter, flush);
        if let Some(f) = &self.flush_file {
            f.write_all_at(&rec, slot)
                .and_then(|()| f.sync_data())
                .map_err(|e| StorageError::io("write", &fpath, e))?;
        }
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
                seg.file
                    .set_len(off)
                    .and_then(|()| seg.file.set_len(self.segment_size))
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

        // Tear the newest flush slot: the previous flush (still acknowledged-safe) is used.
        let fpath = tmp.path().join("flush");
        let mut f = std::fs::read(&fpath).unwrap();
        let newest = (0..2)
            .max_by_key(|i| decode_flush(&f[i * 512..]).map(|r| r.1))
            .unwrap();
        f[newest * 512 + 20] ^= 0xff;
        std::fs::write(&fpath, &f).unwrap();
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
        dir.join("flush-record"),
        encode_flush(3, 9, Lsn(0x150_0790)),
    )
    .unwrap();
}
