#![no_main]
//! `beacon::fuzz::go_duration` (see its doc) under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| beacon::fuzz::go_duration(data));
