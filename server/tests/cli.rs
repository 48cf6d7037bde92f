//! The command line: help, flags, the data directory lock, clean shutdown, the demo.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;

use common::Server;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn help_lists_the_commands_and_flags() {
    let out = sluice().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("serve") && text.contains("demo"), "{text}");
    let out = sluice().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--data-dir", "--pg-addr", "--http-addr"] {
        assert!(text.contains(flag), "{flag} missing from: {text}");
    }
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = sluice().args(["serve", "--pg-addr", "not-an-address"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pg-addr"));
}

#[test]
fn a_data_directory_serves_one_process_at_a_time() {
    let first = Server::start();
    let out = sluice()
        .args(["serve", "--pg-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(first.dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another sluice process"));
}

#[test]
fn an_unusable_data_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = sluice()
        .args(["serve", "--pg-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(file.join("below"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("data directory"));
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start();
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test]
async fn http_health_and_metrics() {
    let server = Server::start();
    let c = server.connect().await;
    c.batch_execute("CREATE TABLE m (v INT); SELECT 1").await.unwrap();
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    assert!(get("/health").contains("ok"));
    let metrics = get("/metrics");
    assert!(metrics.contains("sluice_tables 1"), "{metrics}");
    assert!(metrics.contains("sluice_statements_total"), "{metrics}");
}

#[test]
fn demo_runs_its_pipeline_and_shows_the_views() {
    let dir = tempfile::tempdir().unwrap();
    let out = sluice()
        .args(["demo", "--once", "--rows", "5000", "--rate", "0", "--pg-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for panel in ["unique_visitors", "views_per_minute", "error_rate", "closed_minutes", "busiest_pages", "late"] {
        assert!(text.contains(panel), "{panel} missing:\n{text}");
    }
    // The totals panel counts every generated page view, once: in the views or as late.
    assert!(text.contains("| 5000 "), "{text}");
    // The real access log was read whole: 9,125 requests with status 200, one bad line.
    // Once: `sluice_sources` has a row per reader (the view's and the history feed's), and the
    // panel joins the view's alone.
    assert!(text.contains("status_codes") && text.matches("| 200    | 9125 ").count() == 1, "{text}");
    assert!(text.contains("| 10000      | 1 "), "{text}");
    assert!(text.contains("psql -h 127.0.0.1 -p"), "{text}");
}

#[test]
fn an_unusable_state_directory_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Where the state store should be, a file: RocksDB cannot create its directory there.
    std::fs::write(data.join("state"), b"not a directory").unwrap();
    let out = sluice()
        .args(["serve", "--pg-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The error names the cause and the path, and no listener came up.
    assert!(stderr.contains("state directory") && stderr.contains(&data.join("state").display().to_string()), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("sluice serving"));
}
