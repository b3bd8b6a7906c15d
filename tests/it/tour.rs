//! The README's quick tour, run as written by bash in an empty directory with the built
//! `keyturn` first on the PATH. Its one placeholder, `<kid>`, is filled in with a kid of
//! the JWKS. It needs the tour's ports, 8390, 8391 and 8392.

use crate::harness::private_dir;
use std::path::Path;
use std::process::Command;

/// The first `sh` block after the heading `## A quick tour`.
fn tour() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let tour = &readme[readme.find("## A quick tour").expect("a quick tour")..];
    let start = tour.find("```sh\n").expect("its sh block") + "```sh\n".len();
    let end = start + tour[start..].find("```").expect("the block's end");
    tour[start..end].to_owned()
}

#[test]
fn the_readme_quick_tour_runs_as_written() {
    for port in [8390, 8391, 8392] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is in use: the README's tour needs 8390, 8391 and 8392"
        );
    }
    let script = tour();
    assert!(script.contains("revoke default <kid>"), "{script}");
    let kid = r#""$(keyturn jwks default | sed -n 's/.*"kid": "\([^"]*\)".*/\1/p' | head -n 1)""#;
    let script = script.replace("<kid>", kid);
    let bin = Path::new(env!("CARGO_BIN_EXE_keyturn")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = private_dir();
    // A step that fails ends the script; a daemon it left running is stopped.
    let out = Command::new("timeout")
        .args(["120", "bash", "-c"])
        .arg(format!(
            "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}"
        ))
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("KEYTURN_JWKS_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the tour failed:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    for shown in [
        "\"keys\":",                // the JWKS
        "etag:",                    // its headers
        "keyturn.toml: OK",         // check-config
        "\"sub\": \"alice\"",       // the verified claims
        "valid -> revoked",         // token revoke
        "refused, as it should be", // verify after the revoke
        "becomes active",           // plan
        "\"activates_at\"",         // rotate
        "\"revoked\"",              // revoke
        "hash chain intact",        // audit verify
        "<title>keyturn console</title>",
    ] {
        assert!(
            stdout.to_lowercase().contains(&shown.to_lowercase()),
            "{shown:?} not in the tour's output:\n{stdout}\n--- stderr\n{stderr}"
        );
    }
    assert!(
        stderr.contains("revoked"),
        "verify named the status:\n{stderr}"
    );
    // plan --svg drew the timeline.
    let svg = std::fs::read_to_string(dir.path().join("timeline.svg")).unwrap();
    assert!(
        svg.starts_with("<?xml") && svg.contains("class=\"timeline\""),
        "{svg}"
    );
}
