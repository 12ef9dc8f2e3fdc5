#![no_main]
//! See `mailroom_fuzz::content_assembly` for the input format and the properties checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailroom_fuzz::content_assembly::run(data));
