#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| spg_lifecycle_lib::fuzzing::api_bodies(data));
