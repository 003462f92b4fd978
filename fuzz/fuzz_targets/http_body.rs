#![no_main]
//! `beacon::fuzz::http_body` (see its doc) under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| beacon::fuzz::http_body(data));
