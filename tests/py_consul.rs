//! A real Consul client library (py-consul) against a real Beacon server.
//!
//! The Python interpreter with py-consul installed comes from `BEACON_TEST_PYTHON`, else the
//! virtualenv `.ci/run` creates at `target/py-venv`.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::*;

#[test]
fn py_consul_library_works_against_beacon() {
    let s = Server::start(&[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/consul_client.py");
    let out = Command::new(python())
        .arg(script)
        .arg(s.http.ip().to_string())
        .arg(s.http.port().to_string())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "py-consul script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
