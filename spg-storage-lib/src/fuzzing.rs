//! Entry points of the fuzz targets in `fuzz/`, shared with the stable corpus tests so that every
//! parser of untrusted bytes is exercised on every `cargo test`.

/// Fuzz entry: parse arbitrary bytes as a `pg_control` file. Must never panic.
pub fn pg_control(data: &[u8]) {
    if let Ok(c) = crate::pg_control::ControlFile::parse(data) {
        // A parsed file always has a valid state and a version in range.
        assert!((900..10_000).contains(&c.pg_control_version));
    }
}

/// A fuzz entry point.
pub type FuzzTarget = fn(&[u8]);

/// The fuzz targets of this crate, by name (for the corpus tests).
pub const TARGETS: &[(&str, FuzzTarget)] = &[("pg_control", pg_control)];
