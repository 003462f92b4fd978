//! The web UI in a real browser: `tests/ui/run.mjs` drives Debian's Chromium through
//! playwright-core against a real dev agent (register → live, fail → critical, KV round trip
//! with CAS, every view by URL, no console errors) and saves a screenshot of each view in
//! `target/ui-screenshots/`. `.ci/run` installs Chromium and `npm ci`s `tests/ui/`.

mod support;

use std::path::Path;
use std::process::Command;

use support::Server;

#[test]
fn the_ui_works_in_a_real_browser() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix tests/ui` (as .ci/run does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: `apt-get install chromium` (as .ci/run does) or set CHROMIUM"
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-screenshots");
    let server = Server::start(&[]);
    let out = Command::new("node")
        .arg("run.mjs")
        .current_dir(&dir)
        .env("BEACON_HTTP", server.url(""))
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed ({}):\n{stdout}\n{stderr}\nbeacon's log:\n{}",
        out.status,
        server.log_text()
    );
    assert!(stdout.contains("7 passed, 0 failed"), "{stdout}");
}
