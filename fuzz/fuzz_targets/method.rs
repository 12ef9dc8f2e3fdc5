#![no_main]
//! See `mailroom_fuzz::method` for the input format and the properties checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailroom_fuzz::method::run(data));
