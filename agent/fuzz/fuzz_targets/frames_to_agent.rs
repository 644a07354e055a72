#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulkhead_agent_proto::fuzzing::to_agent(data));
