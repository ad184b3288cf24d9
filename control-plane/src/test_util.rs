//! Helpers shared by the unit tests: unique temporary directories and sample resources.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ferrule_config::Resource;

/// A directory under the system temp dir, unique per test, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("ferrule-{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parses one resource from JSON, panicking on invalid input (tests only).
pub(crate) fn resource(json: serde_json::Value) -> Resource {
    Resource::from_value(&json, None, "test").expect("valid test resource")
}

/// A minimal service.
pub(crate) fn service(name: &str) -> Resource {
    resource(serde_json::json!({"kind": "Service", "name": name, "protocol": "http"}))
}

/// A minimal endpoint of `svc`.
pub(crate) fn endpoint(name: &str, svc: &str, port: u16) -> Resource {
    resource(serde_json::json!({
        "kind": "Endpoint", "name": name, "service": svc, "address": format!("127.0.0.1:{port}")
    }))
}
