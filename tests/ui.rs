//! The dashboard in a real browser: `fogline up` (a router, two edge nodes, a cloud
//! bridge), then headless Chromium driven over WebDriver by tests/ui/browser.py: every
//! member on the mesh page, the placements stream updating without a reload, a placement's
//! trace, a function's histogram, a simulator run, a wrong token asked again, and no error
//! on the console. Screenshots of each page go to docs/img/ (the README shows them).
//!
//! Needs Debian's chromium and chromium-driver and Selenium from PyPI (.ci/run installs
//! them); without them the test says so and is skipped, except under CI=true.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

fn have_browser() -> bool {
    let ok = Path::new("/usr/bin/chromium").exists()
        && Path::new("/usr/bin/chromedriver").exists()
        && Command::new("python3")
            .args(["-c", "import selenium"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        skip_without(
            "chromium, chromium-driver and selenium",
            "the dashboard's browser test needs them (apt-get install chromium chromium-driver; pip install selenium)",
        );
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    if !have_browser() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(".fogline");
    // From the source tree, so the Simulator page finds configs/sim.
    let mut cmd = fogline();
    cmd.current_dir(repo(""))
        .args([
            "up",
            "--http",
            "127.0.0.1:0",
            "--coap",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data);
    let up = NodeProc::spawn_cmd(cmd, data, dir.path());
    let r = deploy(
        &up,
        "hello",
        "hello/hello.wasm",
        json!({"idempotent": true}),
    )
    .await;
    assert!(r.status().is_success());
    let shots = repo("docs/img");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("python3")
        .arg(repo("tests/ui/browser.py"))
        .arg(&up.url)
        .arg(&up.token)
        .arg(&shots)
        .arg("4")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser checks failed:\n{stdout}\n{stderr}"
    );
    // The figures it measured (first paint, the simulator's time), for the log.
    let figures: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap())
        .unwrap_or_else(|e| panic!("no figures from the browser run ({e}): {stdout}"));
    eprintln!("dashboard figures: {figures}");
    for page in ["mesh", "placements", "trace", "function", "simulate"] {
        let f = shots.join(format!("ui-{page}.png"));
        let meta = std::fs::metadata(&f).unwrap();
        assert!(
            meta.len() > 10_000,
            "{} is too small to be a page",
            f.display()
        );
    }
}
