//! Runs the storage fuzz targets over `fuzz/corpus/<target>/`, with truncations and byte
//! mutations, on stable Rust.

use std::path::PathBuf;

use spg_storage_lib::fuzzing::TARGETS;
use spg_storage_lib::pg_control::{ControlFile, DbState};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    for (name, target) in TARGETS {
        for (_, seed) in corpus(name) {
            target(&seed);
            for n in 0..seed.len().min(600) {
                target(&seed[..n]);
            }
            for i in 0..seed.len().min(600) {
                let mut v = seed.clone();
                v[i] ^= 0x5a;
                target(&v);
            }
        }
    }
}

#[test]
fn real_pg15_control_file_parses() {
    let files: std::collections::HashMap<_, _> = corpus("pg_control").into_iter().collect();
    let c = ControlFile::parse(&files["pg15-initdb-shutdown"]).unwrap();
    assert_eq!(c.pg_control_version, 1300);
    assert_eq!(c.state, DbState::ShutDown);
    assert_eq!(c.checkpoint.to_string(), "0/1500708");
    assert_eq!(c.timeline.0, 1);
    assert!(ControlFile::parse(&files["truncated"]).is_err());
    assert!(ControlFile::parse(&files["garbage"]).is_err());
}
