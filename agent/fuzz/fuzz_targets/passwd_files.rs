#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulkhead_agent::fuzzing::passwd_files(data));
