//! The pageserver's wire formats: object batches and soft basebackups.
//!
//! Both are a sequence of frames after an 8-byte magic: a tag byte (manifest, chunk, list), a
//! little-endian `u32` length, and the bytes. A batch (the answer to "these objects, please") is
//! sent as is; a soft basebackup (a manifest frame first, then objects) is zstd-compressed, or,
//! to a client on the same host, sent plain and streamed frame by frame while the pageserver
//! reads it ([`BasebackupReader`] reads both). Decoding untrusted bytes checks every length and
//! bounds the total size, so a damaged or hostile answer is a clear error, never a panic or an
//! unbounded allocation.

use std::io::Read;

use bytes::{Buf, Bytes, BytesMut};

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
        out.extend_from_slice(&frame_head(f, b.len()));
        out.extend_from_slice(b);
    }
    out
}

/// The bytes before a frame's own: its tag and its length.
const HEAD: usize = 5;

/// The head of a frame of `len` bytes, to send before them.
pub fn frame_head(frame: Frame, len: usize) -> [u8; HEAD] {
    let l = (len as u32).to_le_bytes();
    [frame.tag(), l[0], l[1], l[2], l[3]]
}

/// The frame at the start of `data`, if all of it is there: what it carries and where it
/// ends. A bad tag or length is an error even before the frame is complete.
fn frame_at(data: &[u8]) -> Result<Option<(Frame, usize)>, StorageError> {
    let Some(head) = data.get(..HEAD) else {
        return Ok(None);
    };
    let frame = Frame::from_tag(head[0])
        .ok_or_else(|| corrupt(FRAMES, format!("unknown frame tag {}", head[0])))?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > FRAME_MAX {
        return Err(corrupt(
            FRAMES,
            format!("a frame of {len} bytes is too large"),
        ));
    }
    Ok((data.len() >= HEAD + len).then_some((frame, HEAD + len)))
}

const FRAMES: &str = "pageserver frames";

/// Reads untrusted frames as their bytes arrive (a streamed answer), checking what
/// [`decode_frames`] checks: the magic, every tag and length, and a bound on the total. Whole
/// frames within one pushed buffer are not copied.
#[derive(Debug)]
pub struct FrameReader {
    /// Bytes of a frame (or of the magic) not complete yet.
    pending: BytesMut,
    magic: bool,
    total: usize,
    limit: usize,
    frames: Vec<(Frame, Bytes)>,
}

impl FrameReader {
    /// A reader refusing more than `limit` bytes in all.
    pub fn new(limit: usize) -> Self {
        FrameReader {
            pending: BytesMut::new(),
            magic: false,
            total: 0,
            limit,
            frames: Vec::new(),
        }
    }

    /// The next bytes.
    pub fn push(&mut self, mut chunk: Bytes) -> Result<(), StorageError> {
        self.total = self.total.saturating_add(chunk.len());
        if self.total > self.limit {
            return Err(corrupt(FRAMES, format!("more than {} bytes", self.limit)));
        }
        if !self.pending.is_empty() || (!self.magic && chunk.len() < MAGIC.len()) {
            self.pending.extend_from_slice(&chunk);
            return self.take_pending();
        }
        if !self.magic {
            check_magic(&chunk)?;
            chunk.advance(MAGIC.len());
            self.magic = true;
        }
        while let Some((frame, end)) = frame_at(&chunk)? {
            let whole = chunk.split_to(end);
            self.frames.push((frame, whole.slice(HEAD..)));
        }
        self.pending.extend_from_slice(&chunk);
        Ok(())
    }

    fn take_pending(&mut self) -> Result<(), StorageError> {
        if !self.magic {
            if self.pending.len() < MAGIC.len() {
                return match MAGIC.starts_with(&self.pending) {
                    true => Ok(()),
                    false => Err(corrupt(FRAMES, "bad magic")),
                };
            }
            check_magic(&self.pending)?;
            self.pending.advance(MAGIC.len());
            self.magic = true;
        }
        while let Some((frame, end)) = frame_at(&self.pending)? {
            let whole = self.pending.split_to(end).freeze();
            self.frames.push((frame, whole.slice(HEAD..)));
        }
        Ok(())
    }

    /// The frames, once every byte arrived; a frame cut short is an error.
    pub fn finish(self) -> Result<Vec<(Frame, Bytes)>, StorageError> {
        if !self.magic {
            return Err(corrupt(FRAMES, "bad magic"));
        }
        if !self.pending.is_empty() {
            return Err(corrupt(FRAMES, "truncated frame"));
        }
        Ok(self.frames)
    }
}

fn check_magic(data: &[u8]) -> Result<(), StorageError> {
    match data.starts_with(MAGIC) {
        true => Ok(()),
        false => Err(corrupt(FRAMES, "bad magic")),
    }
}

/// Decode untrusted frames.
pub fn decode_frames(bytes: &Bytes) -> Result<Vec<(Frame, Bytes)>, StorageError> {
    let mut r = FrameReader::new(usize::MAX);
    r.push(bytes.clone())?;
    r.finish()
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

/// Reads an untrusted soft basebackup as its bytes arrive: sent plain (streamed, decoded
/// frame by frame) or compressed (decompressed at the end), bounded by [`BASEBACKUP_MAX`]
/// either way.
#[derive(Debug)]
pub struct BasebackupReader {
    form: Option<Form>,
}

#[derive(Debug)]
enum Form {
    Plain(FrameReader),
    Compressed(BytesMut),
}

const BASEBACKUP: &str = "soft basebackup";

impl Default for BasebackupReader {
    fn default() -> Self {
        Self::new()
    }
}

impl BasebackupReader {
    /// A reader expecting the first bytes.
    pub fn new() -> Self {
        BasebackupReader { form: None }
    }

    /// The next bytes.
    pub fn push(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let Some(&first) = chunk.first() else {
            return Ok(());
        };
        let form = self.form.get_or_insert_with(|| match first == MAGIC[0] {
            true => Form::Plain(FrameReader::new(BASEBACKUP_MAX)),
            false => Form::Compressed(BytesMut::new()),
        });
        match form {
            Form::Plain(r) => r.push(chunk),
            Form::Compressed(b) if b.len() + chunk.len() > BASEBACKUP_MAX => {
                Err(corrupt(BASEBACKUP, "too large"))
            }
            Form::Compressed(b) => {
                b.extend_from_slice(&chunk);
                Ok(())
            }
        }
    }

    /// The basebackup, once every byte arrived.
    pub fn finish(self) -> Result<RawBasebackup, StorageError> {
        let frames = match self.form {
            None => return Err(corrupt(BASEBACKUP, "empty")),
            Some(Form::Plain(r)) => r.finish()?,
            Some(Form::Compressed(b)) => {
                let mut plain = Vec::new();
                zstd::stream::read::Decoder::new(&b[..])
                    .and_then(|d| d.take(BASEBACKUP_MAX as u64 + 1).read_to_end(&mut plain))
                    .map_err(|e| corrupt(BASEBACKUP, format!("decompressing: {e}")))?;
                if plain.len() > BASEBACKUP_MAX {
                    return Err(corrupt(BASEBACKUP, "too large"));
                }
                decode_frames(&Bytes::from(plain))?
            }
        };
        let mut frames = frames.into_iter();
        let manifest = match frames.next() {
            Some((Frame::Manifest, b)) => b,
            _ => return Err(corrupt(BASEBACKUP, "it does not start with a manifest")),
        };
        let objects = frames
            .map(|(f, b)| match f {
                Frame::Object(k) => Ok((k, b)),
                Frame::Manifest => Err(corrupt(BASEBACKUP, "a second manifest")),
            })
            .collect::<Result<_, _>>()?;
        Ok(RawBasebackup { manifest, objects })
    }
}

/// Decode an untrusted soft basebackup (compressed or plain).
pub fn decode_basebackup(bytes: &[u8]) -> Result<RawBasebackup, StorageError> {
    let mut r = BasebackupReader::new();
    r.push(Bytes::copy_from_slice(bytes))?;
    r.finish()
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

        // Read as it arrives, in pieces of any size: the same basebackup, and the same refusals.
        let plain = Bytes::from(encode_basebackup_plain(&bb));
        for step in [1, 3, 5, 8, 13, 4096, 70_000] {
            let mut r = BasebackupReader::new();
            for piece in plain.chunks(step) {
                r.push(Bytes::copy_from_slice(piece)).unwrap();
            }
            assert_eq!(r.finish().ok(), Some(bb.clone()), "pieces of {step}");
            let mut r = BasebackupReader::new();
            for piece in plain[..plain.len() - 1].chunks(step) {
                r.push(Bytes::copy_from_slice(piece)).unwrap();
            }
            assert!(r.finish().is_err(), "cut short, pieces of {step}");
        }
        let mut r = BasebackupReader::new();
        assert!(
            r.push(Bytes::from_static(b"SPGX")).is_err(),
            "bad magic early"
        );
        assert!(BasebackupReader::new().finish().is_err(), "nothing");

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
