#![no_main]
//! See `mailroom_fuzz::sasl` for the input format and the properties checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailroom_fuzz::sasl::run(data));
