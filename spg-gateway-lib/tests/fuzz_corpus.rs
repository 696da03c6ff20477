//! Runs every fuzz target of this crate over its corpus in `fuzz/corpus/<target>/`, plus every
//! truncation and single-byte mutation of each seed, on stable Rust: a parser of untrusted bytes
//! that panics fails `cargo test`, not only a fuzzing session.

use std::path::PathBuf;

use spg_gateway_lib::fuzzing::TARGETS;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// The seed, its truncations, and single-byte mutations of its first 512 bytes.
fn variants(seed: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let truncations = (0..seed.len()).map(move |n| seed[..n].to_vec());
    let flips = (0..seed.len().min(512)).flat_map(move |i| {
        [0x00u8, 0xff, 0x80, b'\0', b',', b'=']
            .into_iter()
            .map(move |b| {
                let mut v = seed.to_vec();
                v[i] = b;
                v
            })
    });
    std::iter::once(seed.to_vec())
        .chain(truncations)
        .chain(flips)
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    for (name, target) in TARGETS {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "no corpus for {name}");
        let mut runs = 0;
        for (_, seed) in &seeds {
            for input in variants(seed) {
                target(&input);
                runs += 1;
            }
        }
        eprintln!("{name}: {} seeds, {runs} inputs", seeds.len());
    }
}

#[test]
fn corpus_certificates_get_the_right_binding_hash() {
    use spg_gateway_lib::tls::{signature_hash, EndPointHash};
    let certs: std::collections::HashMap<_, _> = corpus("certificate").into_iter().collect();
    assert_eq!(
        signature_hash(&certs["rsa_sha256.der"]),
        Some(EndPointHash::Sha256)
    );
    assert_eq!(
        signature_hash(&certs["ecdsa_p384.der"]),
        Some(EndPointHash::Sha384)
    );
    assert_eq!(
        signature_hash(&certs["ecdsa_p256_leaf.der"]),
        Some(EndPointHash::Sha256)
    );
    assert_eq!(signature_hash(&certs["truncated"]), None);
}
