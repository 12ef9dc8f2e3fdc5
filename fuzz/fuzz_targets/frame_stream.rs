#![no_main]
//! See `mailroom_fuzz::frame_stream` for the input format and the properties checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailroom_fuzz::frame_stream::run(data));
