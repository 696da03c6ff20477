//! The image format: manifests, chunk lists, chunk hashes, and the keys they live under.
//!
//! ```text
//! <prefix>/<db>/images/<LSN:016X>-<TLI:08X>-<GEN:016X>.json   manifest (create-only)
//! <prefix>/<db>/lists/<sha256>                                  chunk list of one file version
//! <prefix>/<db>/chunks/<sha256[0..2]>/<sha256>                  one chunk's bytes
//! <prefix>/<db>/fences/<GEN:016X>                               a generation that checked out
//! ```
//!
//! An image is a consistent data directory at a checkpoint LSN. Its manifest lists every file
//! with its size and mode; tiny files are inline, the others name their chunks (fixed-size pieces
//! addressed by the SHA-256 of their bytes; `None` for an all-zero chunk, which is never stored).
//! Files with more than [`DIRECT_CHUNKS`] chunks keep their chunk hashes in a separate chunk-list
//! object, itself content-addressed, so the manifest stays small whatever the database's size and
//! an unchanged file costs one hash in the next image. Everything is content-addressed except the
//! manifest, whose key names LSN, timeline and generation and which is written create-only.

use std::fmt;

use serde::{Deserialize, Serialize};
use spg_core::{DatabaseName, Generation, Lsn, TimelineId};

use crate::StorageError;

/// The chunk size of new images (64 KiB: eight PostgreSQL pages).
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Files up to this size are kept inline in the manifest.
pub const INLINE_MAX: u64 = 1024;
/// Files with at most this many chunks list them in the manifest itself.
pub const DIRECT_CHUNKS: usize = 4;
/// Bound on a manifest, as read from storage (a guard against garbage, not a design limit).
pub const MANIFEST_MAX: usize = 64 << 20;
/// Bound on a chunk list (256 Ki chunks: 16 GiB files at 64 KiB chunks).
pub const LIST_MAX_CHUNKS: usize = 1 << 18;
/// Manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

const LIST_MAGIC: &[u8; 8] = b"SPGLIST1";

/// SHA-256 of a chunk (or of a chunk list), the name it is stored under.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ChunkHash(spg_core::scram::sha256(bytes))
    }

    /// Parse 64 lowercase or uppercase hex digits.
    pub fn parse(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(ChunkHash(out))
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkHash({self})")
    }
}

impl Serialize for ChunkHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChunkHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChunkHash::parse(&s).ok_or_else(|| serde::de::Error::custom("not a SHA-256 hex digest"))
    }
}

/// Which image: the checkpoint it is consistent at and the generation that wrote it. Ordered by
/// LSN, then timeline, then generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ImageId {
    /// Checkpoint LSN.
    pub lsn: Lsn,
    /// Timeline of the checkpoint.
    pub timeline: TimelineId,
    /// The generation that wrote the image.
    pub generation: Generation,
}

impl ImageId {
    /// The manifest's object name (without the database's prefix).
    pub fn file_name(&self) -> String {
        format!(
            "{:016X}-{:08X}-{:016X}.json",
            self.lsn.0, self.timeline.0, self.generation.0
        )
    }

    /// Parse a manifest's object name.
    pub fn parse_file_name(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".json")?;
        let mut parts = stem.split('-');
        let (l, t, g) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || l.len() != 16 || t.len() != 8 || g.len() != 16 {
            return None;
        }
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        if !(hex(l) && hex(t) && hex(g)) {
            return None;
        }
        Some(ImageId {
            lsn: Lsn(u64::from_str_radix(l, 16).ok()?),
            timeline: TimelineId(u32::from_str_radix(t, 16).ok()?),
            generation: Generation(u64::from_str_radix(g, 16).ok()?),
        })
    }

    /// Whether this image lies on `history` (`(timeline, first LSN)`, oldest first): its
    /// timeline is on the path and its LSN is not past where the next timeline branched off.
    /// An empty history accepts every image.
    pub fn on_path(&self, history: &[(TimelineId, Lsn)]) -> bool {
        if history.is_empty() {
            return true;
        }
        let Some(i) = history.iter().position(|(t, _)| *t == self.timeline) else {
            return false;
        };
        match history.get(i + 1) {
            Some((_, next_begin)) => self.lsn <= *next_begin,
            None => true,
        }
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on timeline {} (generation {})",
            self.lsn, self.timeline.0, self.generation.0
        )
    }
}

/// The most objects a manifest lists as warm.
pub const WARM_MAX: usize = 4096;

/// The two kinds of content-addressed objects of an image store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// A chunk of a file.
    Chunk,
    /// A chunk list (the chunk hashes of a large file).
    List,
}

impl ObjectKind {
    /// The name used in keys and URLs (`chunks`, `lists`).
    pub fn plural(self) -> &'static str {
        match self {
            ObjectKind::Chunk => "chunks",
            ObjectKind::List => "lists",
        }
    }

    /// The inverse of [`ObjectKind::plural`].
    pub fn from_plural(s: &str) -> Option<Self> {
        match s {
            "chunks" => Some(ObjectKind::Chunk),
            "lists" => Some(ObjectKind::List),
            _ => None,
        }
    }
}

/// Where a file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// The bytes themselves (files up to [`INLINE_MAX`]), base64.
    Inline(#[serde(with = "b64")] Vec<u8>),
    /// Chunk hashes in file order; `None` is an all-zero chunk.
    Chunks(Vec<Option<ChunkHash>>),
    /// A chunk-list object (files with more than [`DIRECT_CHUNKS`] chunks).
    List(ChunkHash),
}

/// One file (or directory) of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the data directory, `/`-separated, no `.`/`..` components.
    pub path: String,
    /// Unix permission bits.
    pub mode: u32,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// `None` for a directory.
    pub content: Option<Content>,
}

impl FileEntry {
    /// Whether this entry is a directory.
    pub fn is_dir(&self) -> bool {
        self.content.is_none()
    }
}

/// An image's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The database.
    pub database: DatabaseName,
    /// Which image this is (also in its key).
    pub id: ImageId,
    /// The image it was derived from, if any.
    pub parent: Option<ImageId>,
    /// Chunk size of this image's files.
    pub chunk_size: u32,
    /// When it was written, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Directories first (parents before children), then files; paths unique.
    pub files: Vec<FileEntry>,
    /// Objects of this image the previous compute needed right after it started (in the order
    /// it needed them): a soft basebackup sends them along, so the next start does not wait for
    /// them one by one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm: Vec<(ObjectKind, ChunkHash)>,
}

impl Manifest {
    /// Encode for storage.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decode and validate untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            what: "image manifest".into(),
            reason,
        };
        if bytes.len() > MANIFEST_MAX {
            return Err(corrupt(format!("{} bytes is too large", bytes.len())));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        m.validate().map_err(corrupt)?;
        Ok(m)
    }

    /// Check the invariants every reader relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != MANIFEST_VERSION {
            return Err(format!(
                "version {} is not {MANIFEST_VERSION}",
                self.version
            ));
        }
        if !self.chunk_size.is_power_of_two() || !(4096..=1 << 24).contains(&self.chunk_size) {
            return Err(format!("chunk size {} out of range", self.chunk_size));
        }
        if self.warm.len() > WARM_MAX {
            return Err(format!("{} warm objects is too many", self.warm.len()));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            check_rel_path(&f.path)?;
            if !seen.insert(f.path.as_str()) {
                return Err(format!("{} listed twice", f.path));
            }
            if let Some((parent, _)) = f.path.rsplit_once('/') {
                if !seen.contains(parent) {
                    return Err(format!("{} comes before its directory", f.path));
                }
            }
            let chunks = f.size.div_ceil(u64::from(self.chunk_size));
            match &f.content {
                None if f.size != 0 => return Err(format!("directory {} has a size", f.path)),
                None => {}
                Some(Content::Inline(b)) if b.len() as u64 != f.size || f.size > INLINE_MAX => {
                    return Err(format!("{}: inline bytes do not match its size", f.path))
                }
                Some(Content::Chunks(c)) if c.len() as u64 != chunks || c.len() > DIRECT_CHUNKS => {
                    return Err(format!(
                        "{}: {} chunks for {} bytes",
                        f.path,
                        c.len(),
                        f.size
                    ))
                }
                Some(Content::List(_)) if chunks <= DIRECT_CHUNKS as u64 => {
                    return Err(format!("{}: a chunk list for a small file", f.path))
                }
                Some(Content::List(_)) if chunks > LIST_MAX_CHUNKS as u64 => {
                    return Err(format!("{}: {} bytes is too large", f.path, f.size))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Every chunk-list hash the manifest names.
    pub fn lists(&self) -> impl Iterator<Item = ChunkHash> + '_ {
        self.files.iter().filter_map(|f| match &f.content {
            Some(Content::List(h)) => Some(*h),
            _ => None,
        })
    }
}

/// A relative path of a data directory: non-empty, `/`-separated, no empty, `.` or `..`
/// components, no NUL.
pub fn check_rel_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 1024 || p.contains('\0') {
        return Err(format!("bad path {p:?}"));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("bad path {p:?}"));
    }
    Ok(())
}

/// Encode a chunk list: magic, chunk size, count, then per chunk a presence byte and (if present)
/// its 32-byte hash.
pub fn encode_list(chunk_size: u32, chunks: &[Option<ChunkHash>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + chunks.len() * 33);
    out.extend_from_slice(LIST_MAGIC);
    out.extend_from_slice(&chunk_size.to_le_bytes());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for c in chunks {
        match c {
            Some(h) => {
                out.push(1);
                out.extend_from_slice(&h.0);
            }
            None => out.push(0),
        }
    }
    out
}

/// Decode an untrusted chunk list.
pub fn decode_list(bytes: &[u8]) -> Result<(u32, Vec<Option<ChunkHash>>), StorageError> {
    let corrupt = |reason: &str| StorageError::Corrupt {
        what: "chunk list".into(),
        reason: reason.into(),
    };
    if bytes.len() < 16 || &bytes[..8] != LIST_MAGIC {
        return Err(corrupt("bad header"));
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let chunk_size = u32_at(8);
    let count = u32_at(12) as usize;
    if count > LIST_MAX_CHUNKS {
        return Err(corrupt("too many chunks"));
    }
    let mut out = Vec::with_capacity(count);
    let mut at = 16;
    for _ in 0..count {
        match bytes.get(at) {
            Some(0) => {
                out.push(None);
                at += 1;
            }
            Some(1) => {
                let h = bytes
                    .get(at + 1..at + 33)
                    .ok_or_else(|| corrupt("truncated"))?;
                let mut a = [0u8; 32];
                a.copy_from_slice(h);
                out.push(Some(ChunkHash(a)));
                at += 33;
            }
            Some(_) => return Err(corrupt("bad presence byte")),
            None => return Err(corrupt("truncated")),
        }
    }
    if at != bytes.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok((chunk_size, out))
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let h = ChunkHash::of(b"x");
        Manifest {
            version: MANIFEST_VERSION,
            database: DatabaseName::new("shop").unwrap(),
            id: ImageId {
                lsn: Lsn(0x1_5000_0028),
                timeline: TimelineId(3),
                generation: Generation(2),
            },
            parent: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            created_at_ms: 1,
            warm: vec![(ObjectKind::Chunk, h)],
            files: vec![
                FileEntry {
                    path: "base".into(),
                    mode: 0o700,
                    size: 0,
                    content: None,
                },
                FileEntry {
                    path: "PG_VERSION".into(),
                    mode: 0o600,
                    size: 3,
                    content: Some(Content::Inline(b"15\n".to_vec())),
                },
                FileEntry {
                    path: "base/1259".into(),
                    mode: 0o600,
                    size: 2 * u64::from(DEFAULT_CHUNK_SIZE),
                    content: Some(Content::Chunks(vec![Some(h), None])),
                },
                FileEntry {
                    path: "base/big".into(),
                    mode: 0o600,
                    size: 100 * u64::from(DEFAULT_CHUNK_SIZE),
                    content: Some(Content::List(h)),
                },
            ],
        }
    }

    #[test]
    fn manifest_round_trips_and_validates() {
        let m = manifest();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        let bad = |f: &dyn Fn(&mut Manifest)| {
            let mut m = manifest();
            f(&mut m);
            Manifest::decode(&m.encode()).unwrap_err().to_string()
        };
        assert!(bad(&|m| m.files[2].path = "base/../x".into()).contains("bad path"));
        assert!(bad(&|m| m.files[2].path = "nodir/x".into()).contains("before its directory"));
        assert!(bad(&|m| m.files[1].size = 4).contains("inline"));
        assert!(bad(&|m| m.files[2].size = 5).contains("chunks for"));
        assert!(bad(&|m| m.files.push(m.files[1].clone())).contains("twice"));
        assert!(bad(&|m| m.chunk_size = 1000).contains("chunk size"));
        assert!(Manifest::decode(b"{").is_err());
    }

    #[test]
    fn image_ids_name_and_order_manifests() {
        let id = manifest().id;
        assert_eq!(
            id.file_name(),
            "0000000150000028-00000003-0000000000000002.json"
        );
        assert_eq!(ImageId::parse_file_name(&id.file_name()), Some(id));
        for bad in [
            "x.json",
            "0000000150000028-00000003-000000000000000.json",
            "0000000150000028-00000003-0000000000000002",
        ] {
            assert_eq!(ImageId::parse_file_name(bad), None, "{bad}");
        }
        // On a path: timeline 2 from 0, timeline 3 from 0x100.
        let path = [(TimelineId(2), Lsn(0)), (TimelineId(3), Lsn(0x100))];
        let at = |lsn, tli| ImageId {
            lsn: Lsn(lsn),
            timeline: TimelineId(tli),
            generation: Generation(1),
        };
        assert!(at(0x80, 2).on_path(&path));
        assert!(at(0x100, 2).on_path(&path));
        assert!(
            !at(0x180, 2).on_path(&path),
            "past the branch point: a fork"
        );
        assert!(at(0x180, 3).on_path(&path));
        assert!(!at(0x10, 4).on_path(&path));
        assert!(at(0x10, 4).on_path(&[]));
    }

    #[test]
    fn the_fuzz_seeds_are_valid() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/image_manifest");
        let m = Manifest::decode(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m.files.len(), 4);
        let (_, chunks) = decode_list(&std::fs::read(dir.join("list.bin")).unwrap()).unwrap();
        assert_eq!(chunks.len(), 3);
    }

    #[test]
    fn chunk_lists_round_trip_and_reject_damage() {
        let list = vec![Some(ChunkHash::of(b"a")), None, Some(ChunkHash::of(b"b"))];
        let b = encode_list(DEFAULT_CHUNK_SIZE, &list);
        assert_eq!(decode_list(&b).unwrap(), (DEFAULT_CHUNK_SIZE, list));
        assert!(decode_list(&b[..b.len() - 1]).is_err());
        let mut extra = b.clone();
        extra.push(0);
        assert!(decode_list(&extra).is_err());
        let mut huge = b.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_list(&huge).is_err());
        assert_eq!(
            ChunkHash::parse(&ChunkHash::of(b"a").to_string()),
            Some(ChunkHash::of(b"a"))
        );
        assert_eq!(ChunkHash::parse("zz"), None);
    }
}
