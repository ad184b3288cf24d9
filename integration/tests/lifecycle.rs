//! Start ordering (issue 13, "Lifecycle"): `ferrule-proxy wait-ready`, which an app's
//! entrypoint runs before the app, returns once the sidecar is ready and fails, with the
//! sidecar's own reason, when it is not ready in time.

use std::process::Command;
use std::time::{Duration, Instant};

use ferrule_integration::bins::bin;
use ferrule_integration::procs::{ControlPlane, Sidecar, SidecarOpts};
use ferrule_integration::TempDir;

const POLICY: &str = "kind: Service\nname: client\nprotocol: http\n";

/// Runs `ferrule-proxy wait-ready` against `admin`: exit status, stderr, how long it took.
fn wait_ready(admin: &str, timeout: &str) -> (i32, String, Duration) {
    let started = Instant::now();
    let out = Command::new(bin("ferrule-proxy"))
        .args(["wait-ready", "--admin", admin, "--timeout", timeout])
        .output()
        .expect("run ferrule-proxy wait-ready");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_returns_once_the_sidecar_is_ready_and_fails_with_its_reason() {
    let dir = TempDir::new("wait-ready");

    // No control plane to be had, nothing persisted: never ready; it says why and fails.
    let lonely = Sidecar::start(SidecarOpts {
        control_plane: "http://127.0.0.1:9",
        service: "client",
        app: "127.0.0.1:9".parse().unwrap(),
        data_dir: &dir.sub("lonely"),
        labels: "",
        extra: &[],
    });
    let (code, err, took) = wait_ready(&lonely.admin.to_string(), "1s");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("was not ready within 1s (503: not ready: no policy snapshot yet"),
        "{err}"
    );
    assert!(took >= Duration::from_secs(1), "gave up after {took:?}");
    // Nothing listening at all.
    let (code, err, _) = wait_ready("127.0.0.1:9", "300ms");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach 127.0.0.1:9"), "{err}");

    // Started together with its sidecar: it returns once /ready is 200 (no earlier).
    let cp = ControlPlane::start(&dir.sub("cp"), &[]);
    cp.apply(POLICY);
    let sidecar = Sidecar::for_service(&cp, &dir, "client", "127.0.0.1:9".parse().unwrap(), &[]);
    let (code, err, _) = wait_ready(&sidecar.admin.to_string(), "20s");
    assert_eq!(code, 0, "{err}");
    let (status, _, _) =
        ferrule_integration::client::get(&format!("http://{}/ready", sidecar.admin), None).await;
    assert_eq!(status, 200);
}
