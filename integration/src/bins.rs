//! Builds the workspace binaries once per test process and finds them in the target dir.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The directory holding this profile's binaries (`target/debug`), next to the test executable.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary (`ferrule-proxy`, `ferrule-control`, `ferrulectl`), built first.
///
/// `cargo test` builds only the binaries of the package under test, so the first call runs
/// `cargo build --bins` for the packages that own them (a no-op when they are up to date).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = bin_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--bins",
            "-p",
            "ferrule-proxy",
            "-p",
            "ferrule-control",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let status = cmd.status().expect("running cargo build for the binaries");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} was not built", p.display());
    p
}
