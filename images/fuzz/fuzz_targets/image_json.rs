#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bulkhead_images::fuzzing::image_json(data));
