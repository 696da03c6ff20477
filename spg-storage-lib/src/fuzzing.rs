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

/// Fuzz entry: bytes a pageserver answers with (object batches, compressed soft basebackups).
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
    if let Ok(bb) = wire::decode_basebackup(data) {
        let again = wire::encode_basebackup(&bb).expect("encodes");
        assert_eq!(wire::decode_basebackup(&again).ok(), Some(bb));
    }
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
];
