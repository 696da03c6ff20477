//! Entry points of the fuzz targets in `fuzz/`, shared with the stable corpus tests so that every
//! parser of untrusted bytes is exercised on every `cargo test`.

/// Fuzz entry: parse arbitrary bytes as a `pg_control` file. Must never panic.
pub fn pg_control(data: &[u8]) {
    if let Ok(c) = crate::pg_control::ControlFile::parse(data) {
        // A parsed file always has a valid state and a version in range.
        assert!((900..10_000).contains(&c.pg_control_version));
    }
}

/// Fuzz entry: parse arbitrary bytes as a safekeeper control file and as a seal (flush record).
/// Must never panic; what parses re-encodes to the same value.
pub fn sk_control(data: &[u8]) {
    use crate::safekeeper::file::{decode_control, decode_seal, encode_control, encode_seal};
    if let Ok((seq, control)) = decode_control(data) {
        let again = encode_control(seq, &control);
        let (seq2, control2) = decode_control(&again).expect("re-encoded control parses");
        assert_eq!((seq, control), (seq2, control2));
    }
    if let Some(seal) = decode_seal(data) {
        assert_eq!(decode_seal(&encode_seal(&seal)), Some(seal));
    }
}

/// Fuzz entry: bytes a compute's walsender sends a safekeeper (CopyData, DataRow, auth
/// requests, errors, timeline history files). Must never panic.
pub fn replication_messages(data: &[u8]) {
    use crate::safekeeper::wire;
    if let Ok(wire::CopyMessage::XLogData {
        start, data: wal, ..
    }) = wire::parse_copy_data(data)
    {
        assert!(start.0.checked_add(wal.len() as u64).is_some());
    }
    let _ = wire::parse_data_row(data);
    let _ = wire::parse_auth(data);
    let _ = wire::parse_error(data);
    if let Ok(h) = wire::parse_history_file(data, spg_core::TimelineId(u32::MAX)) {
        let again = wire::parse_history_file(
            wire::format_history_file(&h).as_bytes(),
            spg_core::TimelineId(u32::MAX),
        );
        assert_eq!(again.ok().as_ref(), Some(&h));
    }
}

/// Fuzz entry: bytes read from object storage as an image manifest or a chunk list. Must never
/// panic; what parses re-encodes to the same value.
pub fn image_manifest(data: &[u8]) {
    use crate::image::format::{decode_list, encode_list, Manifest};
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(Manifest::decode(&m.encode()).ok().as_ref(), Some(&m));
    }
    if let Ok((size, chunks)) = decode_list(data) {
        assert_eq!(
            decode_list(&encode_list(size, &chunks)).ok(),
            Some((size, chunks))
        );
    }
}

/// Fuzz entry: bytes a pageserver answers with (object batches, soft basebackups whole or
/// streamed).
/// Must never panic; what decodes re-encodes to the same value.
pub fn pageserver_wire(data: &[u8]) {
    use crate::image::ObjectKind;
    use crate::pageserver::wire;
    let bytes = bytes::Bytes::copy_from_slice(data);
    for kind in [ObjectKind::Chunk, ObjectKind::List] {
        if let Ok(objs) = wire::decode_batch(kind, &bytes) {
            let again = bytes::Bytes::from(wire::encode_batch(kind, &objs));
            assert_eq!(wire::decode_batch(kind, &again).ok(), Some(objs));
        }
    }
    let whole = wire::decode_basebackup(data);
    // Streamed in pieces (of a size the input picks), it reads the same, or fails the same.
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut r = wire::BasebackupReader::new();
    let pieces = data
        .chunks(step)
        .try_for_each(|p| r.push(bytes::Bytes::copy_from_slice(p)));
    let streamed = pieces.and_then(|()| r.finish());
    assert_eq!(whole.as_ref().ok(), streamed.as_ref().ok());
    if let Ok(bb) = whole {
        let again = wire::encode_basebackup(&bb).expect("encodes");
        assert_eq!(wire::decode_basebackup(&again).ok(), Some(bb));
    }
}

/// Fuzz entry: a WAL file name (from a compute's `restore_command`, a safekeeper's directory, an
/// object key). Must never panic; what parses formats back to the same name (upper case).
pub fn wal_file_names(data: &[u8]) {
    use spg_core::wal_files::{parse_history_name, parse_segment_file_name, segment_file_name};
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    for seg in [1u64 << 16, 1 << 24, 1 << 30] {
        if let Some((tli, segno)) = parse_segment_file_name(name, seg) {
            assert_eq!(
                segment_file_name(tli, segno, seg),
                name.to_ascii_uppercase()
            );
        }
    }
    if let Some(tli) = parse_history_name(name) {
        assert!(name.len() == 16 && tli.0 == u32::from_str_radix(&name[..8], 16).unwrap_or(!0));
    }
}

/// Fuzz entry: a sequence of file operations on a lazyfs tree (create, write, truncate,
/// rename, unlink, fsync, read) checked against a model of plain files, over an image with an
/// inline file and a chunked one (with a zero chunk). Must never panic, and every read returns
/// what the model holds.
pub fn lazyfs_ops(data: &[u8]) {
    use std::collections::BTreeMap;
    use std::ffi::OsStr;

    use crate::image::{ChunkHash, Content, FileEntry, ImageId, Manifest};
    use crate::lazyfs::{ChunkSource, LazyTree, ROOT};

    const CHUNK: usize = 64;
    struct Mem(BTreeMap<ChunkHash, bytes::Bytes>);
    impl ChunkSource for Mem {
        fn chunk(&self, h: &ChunkHash) -> Result<bytes::Bytes, crate::StorageError> {
            self.0
                .get(h)
                .cloned()
                .ok_or_else(|| crate::StorageError::NotFound(format!("chunk {h:?}")))
        }
        fn chunks_of(&self, e: &FileEntry) -> Result<Vec<Option<ChunkHash>>, crate::StorageError> {
            match &e.content {
                Some(Content::Chunks(c)) => Ok(c.clone()),
                _ => Ok(Vec::new()),
            }
        }
    }
    let a: Vec<u8> = b"inline bytes".to_vec();
    let c1: Vec<u8> = (0..CHUNK as u8).collect();
    let c3: Vec<u8> = vec![7; CHUNK / 2];
    let mut b = c1.clone();
    b.extend(vec![0u8; CHUNK]);
    b.extend(&c3);
    let (h1, h3) = (ChunkHash::of(&c1), ChunkHash::of(&c3));
    let entry = |path: &str, size: usize, content: Content| FileEntry {
        path: path.into(),
        mode: 0o600,
        size: size as u64,
        content: Some(content),
    };
    let manifest = Manifest {
        version: crate::image::format::MANIFEST_VERSION,
        database: spg_core::DatabaseName::new("fuzz").expect("valid name"),
        id: ImageId {
            lsn: spg_core::Lsn(0),
            timeline: spg_core::TimelineId(1),
            generation: spg_core::Generation(1),
        },
        parent: None,
        chunk_size: CHUNK as u32,
        created_at_ms: 0,
        files: vec![
            entry("a", a.len(), Content::Inline(a.clone())),
            entry(
                "b",
                b.len(),
                Content::Chunks(vec![Some(h1), None, Some(h3)]),
            ),
        ],
        warm: Vec::new(),
    };
    let source = Mem(BTreeMap::from([(h1, c1.into()), (h3, c3.into())]));
    let dir = std::env::temp_dir().join(format!(
        "spg-fuzz-lazyfs-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let Ok(tree) = LazyTree::new(&manifest, &dir, std::sync::Arc::new(source)) else {
        return;
    };
    let names = ["a", "b", "n0", "n1", "n2"];
    let mut model: BTreeMap<&str, Vec<u8>> = BTreeMap::from([("a", a), ("b", b)]);
    let ino = |tree: &LazyTree, n: &str| tree.lookup(ROOT, OsStr::new(n)).map(|a| a.ino);
    for op in data.chunks(4) {
        let [code, x, y, z] = [
            op[0],
            *op.get(1).unwrap_or(&0),
            *op.get(2).unwrap_or(&0),
            *op.get(3).unwrap_or(&0),
        ];
        let name = names[x as usize % names.len()];
        let other = names[y as usize % names.len()];
        let exists = model.contains_key(name);
        match code % 7 {
            0 => {
                let r = tree.create(ROOT, OsStr::new(name), 0o600);
                assert_eq!(r.is_ok(), !exists, "create {name}");
                model.entry(name).or_default();
            }
            1 => {
                let off = (y as usize * 7) % (4 * CHUNK);
                let bytes = vec![z; (z as usize % 90) + 1];
                match ino(&tree, name) {
                    Ok(i) => {
                        assert_eq!(tree.write(i, off as u64, &bytes), Ok(bytes.len() as u32));
                        let f = model.get_mut(name).expect("modelled");
                        if f.len() < off + bytes.len() {
                            f.resize(off + bytes.len(), 0);
                        }
                        f[off..off + bytes.len()].copy_from_slice(&bytes);
                    }
                    Err(_) => assert!(!exists, "{name} is missing"),
                }
            }
            2 => {
                let size = (y as usize * 3) % (4 * CHUNK);
                if let Ok(i) = ino(&tree, name) {
                    assert!(tree.setattr(i, Some(size as u64), None).is_ok());
                    model.get_mut(name).expect("modelled").resize(size, 0);
                }
            }
            3 => {
                let r = tree.rename(ROOT, OsStr::new(name), ROOT, OsStr::new(other), false);
                assert_eq!(r.is_ok(), exists, "rename {name} {other}");
                if let Some(f) = model.remove(name) {
                    model.insert(other, f);
                }
            }
            4 => {
                let r = tree.unlink(ROOT, OsStr::new(name));
                assert_eq!(r.is_ok(), exists, "unlink {name}");
                model.remove(name);
            }
            5 => {
                if let Ok(i) = ino(&tree, name) {
                    assert!(tree.fsync(i).is_ok());
                }
            }
            _ => {}
        }
        // Every file reads back as the model holds it.
        for (n, want) in &model {
            let i = ino(&tree, n).expect("a modelled file exists");
            assert_eq!(
                tree.getattr(i).map(|a| a.size),
                Ok(want.len() as u64),
                "{n}"
            );
            let got = tree.read(i, 0, want.len() as u32 + 10).expect("reads");
            assert_eq!(&got, want, "{n}");
        }
    }
    drop(tree);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fuzz entry point.
pub type FuzzTarget = fn(&[u8]);

/// The fuzz targets of this crate, by name (for the corpus tests).
pub const TARGETS: &[(&str, FuzzTarget)] = &[
    ("pg_control", pg_control),
    ("sk_control", sk_control),
    ("replication_messages", replication_messages),
    ("image_manifest", image_manifest),
    ("pageserver_wire", pageserver_wire),
    ("wal_file_names", wal_file_names),
    ("lazyfs_ops", lazyfs_ops),
];
