#![no_main]
//! `beacon::fuzz::rpc_frames` (see its doc) under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    beacon::fuzz::rpc_frames(data);
});
