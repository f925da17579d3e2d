//! The `fogline` CLI as a user runs it: the README's quick start, stack files, and errors
//! that are one clear line with a non-zero exit.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;

#[test]
fn quick_start_needs_no_token_or_flags_beyond_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::up(dir.path());
    // Run from the folder holding .fogline, as the README does: the token is found there.
    let cli = || {
        let mut c = fogline();
        c.current_dir(dir.path()).env("FOGLINE_GATEWAY", &node.url);
        c
    };
    let out = run_ok(
        cli()
            .args(["deploy", "hello", "--wasm"])
            .arg(example("hello/hello.wasm")),
    );
    assert!(out.starts_with("deployed hello (sha256:"), "{out}");
    assert_eq!(
        run_ok(cli().args(["invoke", "hello", "--data", "world"])),
        "hello, world"
    );

    // stdin as the body.
    let mut child = cli()
        .args(["invoke", "hello"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello, from stdin");

    // Redeploy with settings: an update, and the listing shows them.
    let out = run_ok(
        cli()
            .args([
                "deploy",
                "hello",
                "--timeout",
                "2s",
                "--memory",
                "32Mi",
                "--env",
                "A=1",
                "--idempotent",
                "--wasm",
            ])
            .arg(example("hello/hello.wasm")),
    );
    assert!(out.starts_with("updated hello"), "{out}");
    let ls = run_ok(cli().arg("ls"));
    let line = ls.lines().find(|l| l.starts_with("hello ")).expect(&ls);
    assert!(line.contains("32Mi") && line.contains("2s"), "{line}");

    // Async: prints the call id; the result is retrievable.
    let id = run_ok(cli().args(["invoke", "hello", "--async", "--data", "later"]))
        .trim()
        .to_string();
    assert_eq!(id.len(), 32, "{id}: 128 random bits");

    let logs = run_ok(cli().args(["logs", "hello"]));
    assert!(logs.contains("deployed with module"), "{logs}");
    let status = run_ok(cli().arg("status"));
    assert!(status.contains("functions   1"), "{status}");
    assert_eq!(run_ok(cli().args(["rm", "hello"])).trim(), "removed hello");
    let err = run_err(cli().args(["invoke", "hello"]));
    assert!(
        err.starts_with("error: 404") && err.contains("\"hello\""),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn stack_files_deploy_several_functions() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::up(dir.path());
    let stack = dir.path().join("stack.toml");
    std::fs::write(
        &stack,
        format!(
            "version = 1\n[functions.hello]\nwasm = \"{}\"\ntimeout = \"1s\"\n[functions.primes]\nwasm = \"{}\"\nmemory = \"32Mi\"\n",
            example("hello/hello.wasm").display(),
            example("primes/primes.wasm").display()
        ),
    )
    .unwrap();
    let out = run_ok(node.cli().args(["deploy", "-f"]).arg(&stack));
    assert!(
        out.contains("deployed hello") && out.contains("deployed primes"),
        "{out}"
    );
    assert_eq!(
        run_ok(node.cli().args(["invoke", "primes", "--data", "30"])).trim(),
        "10"
    );

    std::fs::write(
        &stack,
        "version = 1\n[functions.x]\nwasm = \"x.wasm\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let err = run_err(node.cli().args(["deploy", "-f"]).arg(&stack));
    assert!(
        err.contains("stack.toml") && err.contains("colour"),
        "{err}"
    );
}

#[test]
fn errors_are_one_line_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listening.
    let err = run_err(
        fogline()
            .args(["--gateway", "http://127.0.0.1:9", "ls"])
            .current_dir(dir.path()),
    );
    assert!(
        err.contains("cannot reach the gateway") && err.contains("fogline up"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let node = NodeProc::up(dir.path());
    let err = run_err(
        node.cli()
            .args(["deploy", "x", "--wasm", "/nonexistent.wasm"]),
    );
    assert!(err.contains("/nonexistent.wasm"), "{err}");
    let err = run_err(
        node.cli()
            .args(["deploy", "x", "--memory", "lots", "--wasm"])
            .arg(example("hello/hello.wasm")),
    );
    assert!(err.contains("lots"), "{err}");
    let err = run_err(
        fogline()
            .args([
                "--gateway",
                &node.url,
                "--token",
                "wrong",
                "deploy",
                "x",
                "--wasm",
            ])
            .arg(example("hello/hello.wasm")),
    );
    assert!(err.contains("401") && err.contains("--token"), "{err}");
    let err = run_err(
        node.cli()
            .args(["deploy", "bad", "--wasm"])
            .arg(example("hello/hello.c")),
    );
    assert!(
        err.contains("400") && err.contains("not a valid WebAssembly module"),
        "{err}"
    );
    assert_eq!(
        err.trim_end()
            .lines()
            .last()
            .unwrap()
            .matches("error:")
            .count(),
        1,
        "{err}"
    );

    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "version = 1\n[http]\nlisten_addr = \"1.2.3.4:1\"\n").unwrap();
    let err = run_err(fogline().args(["node", "--config"]).arg(&cfg));
    assert!(
        err.contains("bad.toml") && err.contains("listen_addr"),
        "{err}"
    );
}

#[test]
fn sigterm_stops_the_node_cleanly_and_state_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::up(dir.path());
    run_ok(
        node.cli()
            .args(["deploy", "hello", "--wasm"])
            .arg(example("hello/hello.wasm")),
    );
    // A client stuck half-way through a request must not keep the node from stopping.
    let mut stuck = std::net::TcpStream::connect(node.url.trim_start_matches("http://")).unwrap();
    std::io::Write::write_all(&mut stuck, b"POST /function/hello HTTP/1.1\r\nHost: x\r\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let t = std::time::Instant::now();
    assert!(node.terminate().success());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(15),
        "stopping took {:?}",
        t.elapsed()
    );
    let node = NodeProc::up(dir.path());
    // Same token, same functions; the first call loads the cached compiled module.
    assert_eq!(
        run_ok(node.cli().args(["invoke", "hello", "--data", "again"])),
        "hello, again"
    );
    assert!(std::fs::read_dir(node.data_dir.join("compiled"))
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".cwasm")));
}
