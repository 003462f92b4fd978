//! py-consul's own test suite (the tests in its 1.8.0 sdist) against the real `beacon` binary.
//!
//! `tests/py/suite/run.py` fetches the sdist (pinned sha256; cached under `target/py-consul-sdist`),
//! swaps upstream's Docker-based conftest for one that starts `beacon agent --dev` per test, runs
//! pytest and compares every test's outcome with `tests/py/suite/expected.txt`; any difference
//! (a regression, an unexpected pass, a test missing from the list or a stale entry) fails.
//!
//! The Python interpreter comes from `BEACON_TEST_PYTHON`, else the virtualenv `.ci/run` creates
//! at `target/py-venv`; it needs py-consul, pytest, pytest-asyncio, pytest-timeout and aiohttp.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::python;

#[test]
fn py_consul_own_test_suite_matches_expected_outcomes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let suite = root.join("tests/py/suite");
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-consul-suite");
    let cache = root.join("target/py-consul-sdist");
    let out = Command::new(python())
        .arg(suite.join("run.py"))
        .arg(env!("CARGO_BIN_EXE_beacon"))
        .arg(suite.join("expected.txt"))
        .arg(&work)
        .arg("--cache")
        .arg(&cache)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "py-consul's test suite differs from tests/py/suite/expected.txt ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("every outcome matches the list"),
        "{stdout}\n{stderr}"
    );
}
