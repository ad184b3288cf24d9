//! The README's first command: `ferrulectl demo` brings up a mesh and traffic flows through it.

use std::process::Command;

use ferrule_integration::bins::bin;
use ferrule_integration::TempDir;

#[test]
fn demo_mesh_serves_traffic() {
    let dir = TempDir::new("demo");
    let out = Command::new(bin("ferrulectl"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--seconds",
            "7",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("running ferrulectl demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("/v1/proxies"), "{stdout}");
    let report = stdout
        .lines()
        .find(|l| l.starts_with("last 5 s:"))
        .unwrap_or_else(|| panic!("no traffic report:\n{stdout}"));
    // Every request of the window succeeded, and both versions served some (90/10 + /v2).
    assert!(
        report.contains("ok (echo v1)") && report.contains("ok (echo v2)"),
        "{report}"
    );
    assert!(
        !report.contains("HTTP") && !report.contains("error"),
        "{report}"
    );
}
