#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| spg_storage_lib::fuzzing::wal_file_names(data));
