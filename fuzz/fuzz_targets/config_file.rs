#![no_main]
//! `beacon::fuzz::config_file` (see its doc) under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| beacon::fuzz::config_file(data));
