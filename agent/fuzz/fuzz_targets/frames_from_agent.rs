#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulkhead_agent_proto::fuzzing::from_agent(data));
