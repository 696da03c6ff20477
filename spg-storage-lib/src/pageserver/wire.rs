//! The pageserver's wire formats: object batches and soft basebackups.
//!
//! Both are a sequence of frames after an 8-byte magic: a tag byte (manifest, chunk, list), a
//! little-endian `u32` length, and the bytes. A batch (the answer to "these objects, please") is
//! sent as is; a soft basebackup (a manifest frame first, then objects) is zstd-compressed.
//! Decoding untrusted bytes checks every length and bounds the decompressed size, so a damaged or
//! hostile answer is a clear error, never a panic or an unbounded allocation.

use std::io::Read;

use bytes::Bytes;

use crate::image::format::MANIFEST_MAX;
use crate::image::{ObjectKind, RawBasebackup};
use crate::StorageError;

const MAGIC: &[u8; 8] = b"SPGOBJS1";
/// The largest object a frame may carry (the largest chunk size, or a manifest).
const FRAME_MAX: usize = MANIFEST_MAX;
/// The largest decompressed soft basebackup accepted.
pub const BASEBACKUP_MAX: usize = 256 << 20;
/// The zstd level basebackups are compressed at (fast; catalog pages compress well anyway).
const ZSTD_LEVEL: i32 = 1;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// An encoded image manifest.
    Manifest,
    /// A content-addressed object.
    Object(ObjectKind),
}

impl Frame {
    fn tag(self) -> u8 {
        match self {
            Frame::Manifest => 0,
            Frame::Object(ObjectKind::Chunk) => 1,
            Frame::Object(ObjectKind::List) => 2,
        }
    }

    fn from_tag(t: u8) -> Option<Self> {
        match t {
            0 => Some(Frame::Manifest),
            1 => Some(Frame::Object(ObjectKind::Chunk)),
            2 => Some(Frame::Object(ObjectKind::List)),
            _ => None,
        }
    }
}

fn corrupt(what: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Encode frames.
pub fn encode_frames<'a>(frames: impl IntoIterator<Item = (Frame, &'a [u8])>) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for (f, b) in frames {
        out.push(f.tag());
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    out
}

/// Decode untrusted frames.
pub fn decode_frames(bytes: &Bytes) -> Result<Vec<(Frame, Bytes)>, StorageError> {
    const WHAT: &str = "pageserver frames";
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(WHAT, "bad magic"));
    }
    let mut out = Vec::new();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let head = bytes
            .get(at..at + 5)
            .ok_or_else(|| corrupt(WHAT, "truncated frame header"))?;
        let frame = Frame::from_tag(head[0])
            .ok_or_else(|| corrupt(WHAT, format!("unknown frame tag {}", head[0])))?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > FRAME_MAX {
            return Err(corrupt(
                WHAT,
                format!("a frame of {len} bytes is too large"),
            ));
        }
        let start = at + 5;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| corrupt(WHAT, "truncated frame"))?;
        out.push((frame, bytes.slice(start..end)));
        at = end;
    }
    Ok(out)
}

/// Encode a batch of objects of one kind.
pub fn encode_batch(kind: ObjectKind, objects: &[Bytes]) -> Vec<u8> {
    encode_frames(objects.iter().map(|b| (Frame::Object(kind), &b[..])))
}

/// Decode an untrusted batch of objects, which must all be of `kind`.
pub fn decode_batch(kind: ObjectKind, bytes: &Bytes) -> Result<Vec<Bytes>, StorageError> {
    decode_frames(bytes)?
        .into_iter()
        .map(|(f, b)| match f {
            Frame::Object(k) if k == kind => Ok(b),
            other => Err(corrupt(
                "pageserver batch",
                format!("{other:?} frame in a batch of {}", kind.plural()),
            )),
        })
        .collect()
}

/// Encode a soft basebackup (compressed).
pub fn encode_basebackup(bb: &RawBasebackup) -> Result<Vec<u8>, StorageError> {
    zstd::bulk::compress(&encode_basebackup_plain(bb), ZSTD_LEVEL)
        .map_err(|e| corrupt("soft basebackup", format!("compressing: {e}")))
}

/// Encode a soft basebackup without compressing it: for a client on the same host, to which
/// moving the bytes costs less than compressing them. [`decode_basebackup`] reads both.
pub fn encode_basebackup_plain(bb: &RawBasebackup) -> Vec<u8> {
    let frames = std::iter::once((Frame::Manifest, &bb.manifest[..]))
        .chain(bb.objects.iter().map(|(k, b)| (Frame::Object(*k), &b[..])));
    encode_frames(frames)
}

/// Decode an untrusted, compressed soft basebackup.
pub fn decode_basebackup(bytes: &[u8]) -> Result<RawBasebackup, StorageError> {
    const WHAT: &str = "soft basebackup";
    let mut plain = Vec::new();
    if bytes.starts_with(MAGIC) {
        // Sent uncompressed (see [`encode_basebackup_plain`]).
        plain.extend_from_slice(&bytes[..bytes.len().min(BASEBACKUP_MAX + 1)]);
    } else {
        zstd::stream::read::Decoder::new(bytes)
            .and_then(|d| d.take(BASEBACKUP_MAX as u64 + 1).read_to_end(&mut plain))
            .map_err(|e| corrupt(WHAT, format!("decompressing: {e}")))?;
    }
    if plain.len() > BASEBACKUP_MAX {
        return Err(corrupt(WHAT, "too large"));
    }
    let mut frames = decode_frames(&Bytes::from(plain))?.into_iter();
    let manifest = match frames.next() {
        Some((Frame::Manifest, b)) => b,
        _ => return Err(corrupt(WHAT, "it does not start with a manifest")),
    };
    let objects = frames
        .map(|(f, b)| match f {
            Frame::Object(k) => Ok((k, b)),
            Frame::Manifest => Err(corrupt(WHAT, "a second manifest")),
        })
        .collect::<Result<_, _>>()?;
    Ok(RawBasebackup { manifest, objects })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let bb = RawBasebackup {
            manifest: Bytes::from_static(b"{\"manifest\":1}"),
            objects: vec![
                (ObjectKind::Chunk, Bytes::from(vec![0u8; 65536])),
                (ObjectKind::List, Bytes::from_static(b"list")),
            ],
        };
        let enc = encode_basebackup(&bb).unwrap();
        assert!(enc.len() < 1000, "zeros compress: {}", enc.len());
        assert_eq!(decode_basebackup(&enc).unwrap(), bb);
        assert!(decode_basebackup(&enc[..enc.len() / 2]).is_err());
        assert!(decode_basebackup(b"not zstd").is_err());
        assert_eq!(
            decode_basebackup(&encode_basebackup_plain(&bb)).ok(),
            Some(bb.clone())
        );

        let objs = vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")];
        let batch = Bytes::from(encode_batch(ObjectKind::Chunk, &objs));
        assert_eq!(decode_batch(ObjectKind::Chunk, &batch).unwrap(), objs);
        assert!(decode_batch(ObjectKind::List, &batch).is_err());
        assert!(decode_batch(ObjectKind::Chunk, &batch.slice(..batch.len() - 1)).is_err());
        let mut huge = MAGIC.to_vec();
        huge.push(1);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_frames(&Bytes::from(huge)).is_err());
    }
}
