//! cargo-fuzz target: see `ringcc_fuzz::handshake` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcc_fuzz::handshake(data));
