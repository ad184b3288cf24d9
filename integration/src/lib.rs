//! Test support for Ferrule's end-to-end tests: starts the real binaries (`ferrule-control`,
//! `ferrule-proxy`, `ferrulectl`) on `127.0.0.1:0`, demo apps that echo what they received,
//! and clients (hyper, curl) to talk to them. Nothing here is mocked: the tests drive the
//! same processes an operator runs.
//!
//! # Layout
//! - [`bins`]: builds and locates the binaries.
//! - [`procs`]: child processes (control plane, sidecars) that are killed when dropped.
//! - [`apps`]: in-process echo apps (HTTP/1.1 and h2c).
//! - [`fleet`]: upstream instances that answer a fixed status or stop and restart on command.
//! - [`client`]: hyper clients and small request helpers.
//! - [`pods`]: pods as network namespaces on a bridge, with iptables interception.
//! - [`misbehave`]: an upstream that fails, stalls or answers on command (resilience tests).
//! - [`stall`]: an app that holds each request for a set time and reports its peak concurrency.
//! - [`recorder`]: an app that records every request whole, or stalls (the mirroring tests).
//! - [`eventually`]: polling with a deadline instead of sleeping.

pub mod apps;
pub mod bins;
pub mod client;
pub mod fleet;
pub mod misbehave;
pub mod pods;
pub mod procs;
pub mod recorder;
pub mod stall;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it returns true or `timeout` passes; panics with `what` then.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty, uniquely named directory.
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "ferrule-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A subdirectory (created).
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).expect("creating a temp subdir");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
