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
        "service-stream",
    ] {
        let data = std::fs::read(dir.join(format!("seed-{name}"))).unwrap();
        assert_eq!(beacon::fuzz::rpc_frames(&data), 1, "seed-{name}");
    }
}

/// A server-RPC frame (length-prefixed MessagePack `{"Call": [id, method, bin]}`) carrying `body`.
fn call_frame(method: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81, 0xa4, b'C', b'a', b'l', b'l', 0x93, 0x01, method, 0xc6];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend(frame);
    out
}

fn nested(open: &[u8], depth: usize, leaf: &[u8], close: &[u8]) -> Vec<u8> {
    let mut out = open.repeat(depth);
    out.extend_from_slice(leaf);
    out.extend(close.repeat(depth));
    out
}

/// Deeply nested input (the classic way to overflow a recursive decoder's stack, which aborts
/// the whole process) is refused on the 2 MiB stack a server's worker thread has.
#[test]
fn deeply_nested_inputs_are_refused_not_a_stack_overflow() {
    let deep = 100_000;
    let arrays = nested(&[0x91], deep, &[0xc0], &[]);
    let maps = nested(&[0x81, 0xa1, b'a'], deep, &[0xc0], &[]);
    let mut rpc: Vec<Vec<u8>> = Vec::new();
    let mut raw = (arrays.len() as u32).to_be_bytes().to_vec();
    raw.extend(&arrays);
    rpc.push(raw);
    for method in 0..=24u8 {
        rpc.push(call_frame(method, &arrays));
        rpc.push(call_frame(method, &maps));
    }
    for input in &rpc {
        beacon::fuzz::rpc_frames(input);
    }
    let mut config = Vec::new();
    for (format, text) in [
        (0u8, nested(b"{\"a\":", deep, b"1", b"}")),
        (0, nested(b"[", deep, b"1", b"]")),
        (
            1,
            [b"a = ".to_vec(), nested(b"[", deep, b"1", b"]")].concat(),
        ),
        (
            1,
            [b"a = ".to_vec(), nested(b"(", deep, b"1", b")")].concat(),
        ),
        (
            1,
            [b"a = ".to_vec(), nested(b"{b = ", deep, b"1", b"}")].concat(),
        ),
        (1, nested(b"a {\n", deep, b"", b"}\n")),
        (
            1,
            [b"a = ".to_vec(), nested(b"-", deep, b"1", b"")].concat(),
        ),
        (
            1,
            [b"a = ".to_vec(), nested(b"!", deep, b"true", b"")].concat(),
        ),
        (
            1,
            [b"a = ".to_vec(), nested(b"true ? ", deep, b"1", b" : 2")].concat(),
        ),
        (
            1,
            [
                &b"a = \""[..],
                &nested(b"${", deep, b"1", b"}")[..],
                &b"\""[..],
            ]
            .concat(),
        ),
        (
            2,
            [b"a = ".to_vec(), nested(b"[", deep, b"1", b"]")].concat(),
        ),
        (
            2,
            [b"a = ".to_vec(), nested(b"{b = ", deep, b"1", b"}")].concat(),
        ),
    ] {
        let mut input = vec![format];
        input.extend(text);
        config.push(input);
    }
    for input in &config {
        beacon::fuzz::config_file(input);
    }
    beacon::fuzz::http_body(&nested(b"[", deep, b"1", b"]"));
    beacon::fuzz::http_body(&nested(b"{\"Service\":", deep, b"1", b"}"));
    beacon::fuzz::filter_expression(&nested(b"(", deep, b"a == b", b")"));
    beacon::fuzz::filter_expression(&nested(b"not ", deep, b"a == b", b""));
}
