//! Runs this crate's fuzz targets over their corpus in `fuzz/corpus/<target>/`, plus every
//! truncation and single-byte mutation of each seed, on stable Rust.

use std::path::PathBuf;

use spg_lifecycle_lib::fuzzing::TARGETS;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    for (name, target) in TARGETS {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "no corpus for {name}");
        for seed in &seeds {
            target(seed);
            for n in 0..seed.len() {
                target(&seed[..n]);
            }
            for i in 0..seed.len().min(512) {
                for b in [0x00u8, 0xff, b'"', b'{', b'\r', b'9'] {
                    let mut v = seed.clone();
                    v[i] = b;
                    target(&v);
                }
            }
        }
    }
}

#[test]
fn the_restore_client_reads_what_the_endpoint_means() {
    use spg_lifecycle_lib::compute::wal::parse_restore_response;
    assert_eq!(
        parse_restore_response(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        Ok(Some(&b"hello"[..]))
    );
    assert_eq!(
        parse_restore_response(b"HTTP/1.0 404 Not Found\r\n\r\n"),
        Ok(None)
    );
    assert!(parse_restore_response(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err());
    assert!(parse_restore_response(b"HTTP/1.0 503 Busy\r\n\r\n").is_err());
    assert!(parse_restore_response(b"garbage").is_err());
}
