//! The fuzz targets' saved inputs as ordinary tests: every file in `fuzz/corpus/<target>/` (the
//! seeds and what the fuzzer kept) and `fuzz/regressions/<target>/` (each input that once
//! crashed a target, kept after the fix) goes through the same `beacon::fuzz` entry point the
//! cargo-fuzz target calls. A panic names the file.

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

fn rpc_frames(data: &[u8]) {
    beacon::fuzz::rpc_frames(data);
}

const TARGETS: [(&str, Target); 6] = [
    ("dns_query", beacon::fuzz::dns_query),
    ("http_body", beacon::fuzz::http_body),
    ("config_file", beacon::fuzz::config_file),
    ("go_duration", beacon::fuzz::go_duration),
    ("filter_expression", beacon::fuzz::filter_expression),
    ("rpc_frames", rpc_frames),
];

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            files.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    files.sort();
    files
}

fn replay(target: &str, run: Target) {
    let files = inputs(target);
    assert!(
        files.iter().any(|f| f.to_string_lossy().contains("seed-")),
        "no seed inputs for {target}: run fuzz/seeds.py"
    );
    for file in files {
        let data = std::fs::read(&file).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("{target} panicked on {}", file.display());
        }
    }
}

#[test]
fn every_saved_input_of_every_fuzz_target_runs_clean() {
    for (target, run) in TARGETS {
        replay(target, run);
    }
}

/// The DNS target reaches the real answers, not only the error paths: its seed query for
/// `web.service.consul A` is answered with the catalog's IPv4 instances, and a packet that is
/// itself a response gets no reply.
#[test]
fn the_dns_target_answers_from_its_catalog() {
    use hickory_proto::op::Message;
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dns_query/seed-00");
    let query = std::fs::read(seed).unwrap();
    let reply = beacon::fuzz::dns_reply(&query).expect("an answer");
    let mut addresses: Vec<String> = Message::from_vec(&reply)
        .unwrap()
        .answers
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    addresses.sort();
    assert_eq!(addresses, ["10.0.0.1", "10.0.0.2"]);
    let mut response = query.clone();
    response[2] |= 0x80; // QR: a response, which the server never answers
    assert_eq!(beacon::fuzz::dns_reply(&response), None);
}

/// The server-RPC seeds are real frames: each call in them decodes as its method's request, so
/// the fuzzer starts from inputs that reach the request decoders.
#[test]
fn the_rpc_seeds_hold_calls_that_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/rpc_frames");
    for name in [
        "vote",
        "read-index",
        "renew",
        "catalog-wait",
        "append-empty",
    ] {
        let data = std::fs::read(dir.join(format!("seed-{name}"))).unwrap();
        assert_eq!(beacon::fuzz::rpc_frames(&data), 1, "seed-{name}");
    }
}
