#![no_main]
//! `beacon::fuzz::dns_query` (see its doc) under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| beacon::fuzz::dns_query(data));
