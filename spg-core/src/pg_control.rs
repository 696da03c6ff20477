//! Reader of PostgreSQL's control file, `global/pg_control`.
//!
//! Only the leading fields are read; their layout has been the same since PostgreSQL 9.x:
//!
//! | offset | field |
//! |---|---|
//! | 0 | `system_identifier` (u64) |
//! | 8 | `pg_control_version` (u32) |
//! | 12 | `catalog_version_no` (u32) |
//! | 16 | `state` (`DBState`, u32) |
//! | 24 | `time` (i64) |
//! | 32 | `checkPoint` (LSN of the latest checkpoint record) |
//! | 40 | `checkPointCopy.redo` (LSN) |
//! | 48 | `checkPointCopy.ThisTimeLineID` (u32) |
//!
//! The file ends (after a version-dependent number of fields) with a CRC-32C of everything before
//! it. Rather than hard-coding that offset per version, the reader looks for the 4-byte-aligned
//! offset at which the stored CRC matches the bytes before it, which validates the file on every
//! supported version. The file is little-endian on every platform SPG runs on.

use std::fmt;
use std::path::Path;

use crate::{Lsn, TimelineId};

/// Why a control file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ControlFileError {
    /// Reading the file failed.
    #[error("read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid control file.
    #[error("corrupt pg_control: {0}")]
    Corrupt(String),
}

/// Size of the header this reader interprets.
const HEADER_LEN: usize = 56;
/// Where the CRC may sit: after the header, before PostgreSQL's 512-byte safe-write limit.
const CRC_SEARCH: std::ops::Range<usize> = HEADER_LEN..512;

/// `DBState` of `pg_control.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbState {
    /// `DB_STARTUP`
    Startup,
    /// `DB_SHUTDOWNED`: clean shutdown.
    ShutDown,
    /// `DB_SHUTDOWNED_IN_RECOVERY`: a standby shut down cleanly at a restartpoint.
    ShutDownInRecovery,
    /// `DB_SHUTDOWNING`
    ShuttingDown,
    /// `DB_IN_CRASH_RECOVERY`
    InCrashRecovery,
    /// `DB_IN_ARCHIVE_RECOVERY`
    InArchiveRecovery,
    /// `DB_IN_PRODUCTION`: running, or crashed while running.
    InProduction,
}

impl DbState {
    fn from_u32(v: u32) -> Option<DbState> {
        Some(match v {
            0 => DbState::Startup,
            1 => DbState::ShutDown,
            2 => DbState::ShutDownInRecovery,
            3 => DbState::ShuttingDown,
            4 => DbState::InCrashRecovery,
            5 => DbState::InArchiveRecovery,
            6 => DbState::InProduction,
            _ => return None,
        })
    }

    /// Whether the directory was shut down cleanly (no recovery needed to be consistent).
    pub fn is_clean_shutdown(self) -> bool {
        matches!(self, DbState::ShutDown | DbState::ShutDownInRecovery)
    }
}

impl fmt::Display for DbState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The fields of `pg_control` SPG uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlFile {
    /// Unique id of the cluster (set by `initdb`).
    pub system_identifier: u64,
    /// `PG_CONTROL_VERSION` of the server that wrote it.
    pub pg_control_version: u32,
    /// `CATALOG_VERSION_NO`.
    pub catalog_version: u32,
    /// Cluster state.
    pub state: DbState,
    /// LSN of the latest checkpoint record.
    pub checkpoint: Lsn,
    /// Redo LSN of the latest checkpoint.
    pub redo: Lsn,
    /// Timeline of the latest checkpoint.
    pub timeline: TimelineId,
    /// The settings a hot standby needs at least these values of; `None` for control-file
    /// versions whose layout this reader does not know.
    pub hot_standby_minimums: Option<HotStandbyMinimums>,
}

/// Settings recorded in `pg_control` (those of the server that wrote the WAL) that a server
/// recovering it with `hot_standby` must have at least as high, or recovery pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbyMinimums {
    /// `max_connections`.
    pub max_connections: i32,
    /// `max_worker_processes`.
    pub max_worker_processes: i32,
    /// `max_wal_senders`.
    pub max_wal_senders: i32,
    /// `max_prepared_transactions`.
    pub max_prepared_xacts: i32,
    /// `max_locks_per_transaction`.
    pub max_locks_per_xact: i32,
}

/// Offset of `MaxConnections` (followed by the other four) in the layout of
/// `pg_control_version` 1300 (checked against PostgreSQL 15's `pg_controldata`).
const V1300_MAX_CONNECTIONS: usize = 180;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    (u32_at(b, off) as u64) | ((u32_at(b, off + 4) as u64) << 32)
}

impl ControlFile {
    /// Parse and validate the bytes of a `pg_control` file.
    pub fn parse(bytes: &[u8]) -> Result<ControlFile, ControlFileError> {
        let corrupt = ControlFileError::Corrupt;
        if bytes.len() < HEADER_LEN + 4 {
            return Err(corrupt(format!("too short ({} bytes)", bytes.len())));
        }
        let crc_ok = CRC_SEARCH
            .step_by(4)
            .take_while(|off| off + 4 <= bytes.len())
            .any(|off| crc32c::crc32c(&bytes[..off]) == u32_at(bytes, off));
        if !crc_ok {
            return Err(corrupt("CRC mismatch".into()));
        }
        let pg_control_version = u32_at(bytes, 8);
        if !(900..10_000).contains(&pg_control_version) {
            return Err(corrupt(format!(
                "unsupported pg_control_version {pg_control_version}"
            )));
        }
        let state_raw = u32_at(bytes, 16);
        let state =
            DbState::from_u32(state_raw).ok_or_else(|| corrupt(format!("state {state_raw}")))?;
        Ok(ControlFile {
            system_identifier: u64_at(bytes, 0),
            pg_control_version,
            catalog_version: u32_at(bytes, 12),
            state,
            checkpoint: Lsn(u64_at(bytes, 32)),
            redo: Lsn(u64_at(bytes, 40)),
            timeline: TimelineId(u32_at(bytes, 48)),
            hot_standby_minimums: (pg_control_version == 1300
                && bytes.len() >= V1300_MAX_CONNECTIONS + 20)
                .then(|| {
                    let at = |i: usize| u32_at(bytes, V1300_MAX_CONNECTIONS + 4 * i) as i32;
                    HotStandbyMinimums {
                        max_connections: at(0),
                        max_worker_processes: at(1),
                        max_wal_senders: at(2),
                        max_prepared_xacts: at(3),
                        max_locks_per_xact: at(4),
                    }
                }),
        })
    }

    /// Read and parse `<data_dir>/global/pg_control`.
    pub fn read(data_dir: &Path) -> Result<ControlFile, ControlFileError> {
        let path = data_dir.join("global").join("pg_control");
        let bytes = std::fs::read(&path).map_err(|source| ControlFileError::Io {
            path: path.clone(),
            source,
        })?;
        ControlFile::parse(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(state: u32, checkpoint: u64) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[0..8].copy_from_slice(&0x1234_5678_9abc_def0u64.to_le_bytes());
        b[8..12].copy_from_slice(&1300u32.to_le_bytes());
        b[12..16].copy_from_slice(&202209061u32.to_le_bytes());
        b[16..20].copy_from_slice(&state.to_le_bytes());
        b[32..40].copy_from_slice(&checkpoint.to_le_bytes());
        b[40..48].copy_from_slice(&(checkpoint - 0x28).to_le_bytes());
        b[48..52].copy_from_slice(&1u32.to_le_bytes());
        for (i, v) in [100u32, 8, 10, 0, 64].into_iter().enumerate() {
            b[180 + 4 * i..184 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        let crc_off = 288;
        let crc = crc32c::crc32c(&b[..crc_off]);
        b[crc_off..crc_off + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn parses_a_valid_file() {
        let c = ControlFile::parse(&sample(1, 0x1_0000_0028)).unwrap();
        assert_eq!(c.state, DbState::ShutDown);
        assert!(c.state.is_clean_shutdown());
        assert_eq!(c.checkpoint, Lsn(0x1_0000_0028));
        assert_eq!(
            c.hot_standby_minimums,
            Some(HotStandbyMinimums {
                max_connections: 100,
                max_worker_processes: 8,
                max_wal_senders: 10,
                max_prepared_xacts: 0,
                max_locks_per_xact: 64,
            })
        );
        assert_eq!(c.timeline, TimelineId(1));
        assert_eq!(c.pg_control_version, 1300);
    }

    #[test]
    fn refuses_corruption() {
        let mut b = sample(6, 0x100);
        b[33] ^= 1;
        assert!(matches!(
            ControlFile::parse(&b),
            Err(ControlFileError::Corrupt(_))
        ));
        assert!(ControlFile::parse(&b[..20]).is_err());
        assert!(ControlFile::parse(&[]).is_err());
        assert!(ControlFile::parse(&sample(77, 0x100)).is_err());
    }
}
