#![no_main]
//! `beacon::fuzz::filter_expression` (see its doc) under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| beacon::fuzz::filter_expression(data));
