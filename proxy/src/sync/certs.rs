//! The sidecar's certificate: obtained from the control plane's CA at start and renewed at
//! about 70% of its life, for as long as the sidecar runs.
//!
//! The key is made here, in memory, for every certificate, and never leaves the process: the
//! control plane sees a signing request. The first request is authenticated by the bootstrap
//! token (`--token-file`); renewals over TLS by the certificate being renewed, so a sidecar
//! keeps its identity after its token has expired. (Over a plaintext control plane, which is
//! for local development, every request carries the token.)
//!
//! A sidecar that cannot renew keeps its certificate until it expires and then fails closed:
//! peers refuse an expired certificate, and `/ready` turns 503. Nothing falls back to
//! plaintext.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferrule_tls::{Bundle, Credentials};
use http::{header, Method, Request, StatusCode};
use http_body_util::Full;
use rand::Rng;
use tokio::sync::watch;

use crate::base::Identity;
use crate::sync::connect::{exchange, ControlPlane};
use crate::telemetry::metrics::Metrics;

/// Path of the signing API on the control plane.
const CERTIFICATES_PATH: &str = "/v1/certificates";
/// Share of a certificate's remaining life after which it is renewed.
const RENEW_AT: f64 = 0.7;
/// Retry delays after a failed request.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Where certificates come from.
#[derive(Debug, Clone)]
pub struct CertSource {
    /// The control plane.
    pub control_plane: ControlPlane,
    /// The bootstrap token.
    pub token: String,
    /// Certificate lifetime to ask for (the control plane caps it); its default if `None`.
    pub ttl: Option<Duration>,
}

/// Obtains the certificate, then renews it until `stop`.
pub async fn run(
    src: CertSource,
    identity: Arc<Identity>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        let wait = match obtain(&src, &identity).await {
            Ok((creds, bundle)) => {
                failures = 0;
                let now = SystemTime::now();
                let info = creds.info().clone();
                let left = info.not_after.duration_since(now).unwrap_or_default();
                let renew_in = left.mul_f64(RENEW_AT);
                if let Err(e) = identity.install(creds, bundle, now + renew_in) {
                    tracing::error!(error = %e, "the control plane's certificate cannot be used");
                    metrics.cert_failures.inc();
                    failures += 1;
                    backoff(failures)
                } else {
                    metrics.cert_issued.inc();
                    let expiry = info
                        .not_after
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default();
                    metrics.cert_expiry.set(expiry.as_secs() as i64);
                    tracing::info!(identity = %info.identity, serial = %info.serial, valid_for = ?left, renew_in = ?renew_in, "workload certificate installed");
                    renew_in
                }
            }
            Err(e) => {
                failures += 1;
                metrics.cert_failures.inc();
                let wait = backoff(failures);
                let held = identity.tls().map(|t| t.cert.not_after);
                match held {
                    Some(until) => {
                        tracing::warn!(error = %e, retry_in = ?wait, valid_until = ?until, "cannot renew the workload certificate; keeping the current one")
                    }
                    None => {
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot obtain a workload certificate; not ready until one is issued")
                    }
                }
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Exponential backoff with jitter, so a fleet does not retry in step.
fn backoff(failures: u32) -> Duration {
    let cap = RETRY_MIN
        .saturating_mul(1 << failures.min(10))
        .min(RETRY_MAX);
    rand::rng().random_range(RETRY_MIN..=cap.max(RETRY_MIN))
}

/// One signing request: a new key, its CSR, the control plane's certificate for it.
async fn obtain(src: &CertSource, identity: &Identity) -> Result<(Credentials, Bundle), String> {
    let (key, csr) = ferrule_tls::new_key_and_csr()?;
    let cp = &src.control_plane;
    let conn = cp.connect(identity, false).await?;
    let mut body = serde_json::json!({ "csr": csr });
    if let Some(ttl) = src.ttl {
        body["ttl"] = format!("{}s", ttl.as_secs().max(1)).into();
    }
    let uri = format!("{}://{}{CERTIFICATES_PATH}", cp.scheme(), cp.authority);
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::HOST, cp.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json");
    // A renewal over TLS is authenticated by the certificate the connection presented.
    if !(cp.is_tls() && identity.credentials().is_some()) {
        req = req.header(header::AUTHORIZATION, format!("Bearer {}", src.token));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let (status, bytes) = exchange(conn, req, "the certificate request").await?;
    if status != StatusCode::OK {
        return Err(format!(
            "the control plane refused the certificate request: {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    let answer: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("unreadable certificate answer: {e}"))?;
    let field = |name: &str| {
        answer[name]
            .as_str()
            .ok_or_else(|| format!("the certificate answer has no {name:?}"))
    };
    let creds = Credentials::new(field("certificateChain")?, key)?;
    let bundle = Bundle::from_pem(field("trustBundle")?)?;
    Ok((creds, bundle))
}
