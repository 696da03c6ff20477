//! Entry points of the fuzz targets in `fuzz/`, shared with the stable corpus tests so that every
//! parser of untrusted bytes is exercised on every `cargo test`.

/// Fuzz entry: parse arbitrary bytes as a `pg_control` file. Must never panic.
pub fn pg_control(data: &[u8]) {
    if let Ok(c) = crate::pg_control::ControlFile::parse(data) {
        // A parsed file always has a valid state and a version in range.
        assert!((900..10_000).contains(&c.pg_control_version));
    }
}

/// Fuzz entry: parse arbitrary bytes as a safekeeper control file and as a flush record. Must
/// never panic; a control file that parses re-encodes to the same bytes.
pub fn sk_control(data: &[u8]) {
    use crate::safekeeper::file::{decode_control, decode_flush, encode_control};
    if let Ok((seq, control)) = decode_control(data) {
        let again = encode_control(seq, &control);
        let (seq2, control2) = decode_control(&again).expect("re-encoded control parses");
        assert_eq!((seq, control), (seq2, control2));
    }
    let _ = decode_flush(data);
}

/// A fuzz entry point.
pub type FuzzTarget = fn(&[u8]);

/// The fuzz targets of this crate, by name (for the corpus tests).
pub const TARGETS: &[(&str, FuzzTarget)] =
    &[("pg_control", pg_control), ("sk_control", sk_control)];
