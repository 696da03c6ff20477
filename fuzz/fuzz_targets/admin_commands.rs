#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| spg_gateway_lib::fuzzing::admin_commands(data));
