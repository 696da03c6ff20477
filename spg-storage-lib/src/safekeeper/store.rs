//! Where a safekeeper keeps its state: the [`WalStore`] trait and an in-memory implementation
//! with crash semantics, used by the simulation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spg_core::{Generation, Lsn, TimelineId};

use super::log::WalLog;
use crate::StorageError;

/// The durable control state of one database on one safekeeper.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// The newest generation this safekeeper has promised to (the fence).
    pub generation: Generation,
    /// The WAL held.
    pub log: WalLog,
}

/// Durable storage of one database's WAL and control state on one safekeeper.
///
/// Contract (what the protocol relies on):
/// - `save_control` is atomic and durable when it returns: after a crash, `load` returns either
///   the previous control or this one.
/// - `write_wal` may be lost by a crash until `sync_wal` returns; after `sync_wal(flush)` returns,
///   the bytes below `flush` and the value `flush` itself survive any crash, and `load` reports a
///   flush at least that large (with the control saved last).
/// - `truncate_wal(end)` discards bytes at and after `end`; the caller saves a control with a
///   flush at or below `end` first, so a crash in between is harmless.
pub trait WalStore {
    /// The durable control state, or `None` for a safekeeper that never saved one.
    fn load(&mut self) -> Result<Option<Control>, StorageError>;
    /// Replace the control state atomically and durably.
    fn save_control(&mut self, control: &Control) -> Result<(), StorageError>;
    /// Write WAL bytes at `lsn`, the newest of which are on timeline `tli`.
    fn write_wal(&mut self, lsn: Lsn, tli: TimelineId, bytes: &[u8]) -> Result<(), StorageError>;
    /// Make every written byte below `flush` durable, then record `flush` durably.
    fn sync_wal(&mut self, flush: Lsn) -> Result<(), StorageError>;
    /// Read `len` bytes at `lsn` (the caller keeps within the held log).
    fn read_wal(&self, lsn: Lsn, len: usize) -> Result<Vec<u8>, StorageError>;
    /// Discard WAL bytes at and after `end`.
    fn truncate_wal(&mut self, end: Lsn) -> Result<(), StorageError>;
    /// Drop WAL below `start` (it is in object storage); the caller saves a control with the new
    /// start first.
    fn forget_before(&mut self, start: Lsn) -> Result<(), StorageError>;
}

#[derive(Debug, Clone, Default)]
struct MemState {
    control: Option<Control>,
    flush: Option<Lsn>,
    bytes: BTreeMap<u64, u8>,
}

/// An in-memory [`WalStore`] that can crash: [`MemWalStore::crash`] forgets everything written
/// since the last sync, as a power loss would. For simulations and tests.
#[derive(Debug, Clone, Default)]
pub struct MemWalStore {
    durable: MemState,
    live: MemState,
}

impl MemWalStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lose everything that was not made durable.
    pub fn crash(&mut self) {
        self.live = self.durable.clone();
    }
}

impl WalStore for MemWalStore {
    fn load(&mut self) -> Result<Option<Control>, StorageError> {
        let mut c = match self.live.control.clone() {
            Some(c) => c,
            None => return Ok(None),
        };
        if let Some(f) = self.live.flush {
            c.log.flush = c.log.flush.max(f);
        }
        Ok(Some(c))
    }

    fn save_control(&mut self, control: &Control) -> Result<(), StorageError> {
        self.live.control = Some(control.clone());
        // A new control supersedes any flush record written against the old one.
        self.live.flush = None;
        self.durable.control = Some(control.clone());
        self.durable.flush = None;
        Ok(())
    }

    fn write_wal(&mut self, lsn: Lsn, _tli: TimelineId, bytes: &[u8]) -> Result<(), StorageError> {
        for (i, b) in bytes.iter().enumerate() {
            self.live.bytes.insert(lsn.0 + i as u64, *b);
        }
        Ok(())
    }

    fn sync_wal(&mut self, flush: Lsn) -> Result<(), StorageError> {
        self.durable.bytes = self.live.bytes.clone();
        self.live.flush = Some(flush);
        self.durable.flush = Some(flush);
        Ok(())
    }

    fn read_wal(&self, lsn: Lsn, len: usize) -> Result<Vec<u8>, StorageError> {
        (lsn.0..lsn.0 + len as u64)
            .map(|i| {
                self.live
                    .bytes
                    .get(&i)
                    .copied()
                    .ok_or_else(|| StorageError::Corrupt {
                        what: "in-memory WAL".into(),
                        reason: format!("no byte at {}", Lsn(i)),
                    })
            })
            .collect()
    }

    fn truncate_wal(&mut self, end: Lsn) -> Result<(), StorageError> {
        self.live.bytes.split_off(&end.0);
        self.durable.bytes.split_off(&end.0);
        Ok(())
    }

    fn forget_before(&mut self, start: Lsn) -> Result<(), StorageError> {
        self.live.bytes = self.live.bytes.split_off(&start.0);
        self.durable.bytes = self.durable.bytes.split_off(&start.0);
        Ok(())
    }
}
