#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulkhead_vmm::fuzzing::net_device(data));
