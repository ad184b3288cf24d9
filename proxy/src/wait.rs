//! `ferrule-proxy wait-ready`: start ordering for an app beside its sidecar. An app's
//! entrypoint runs it first (`ferrule-proxy wait-ready && exec app`), so the app's first
//! outbound call does not race a sidecar that has no policy or certificate yet. It polls the
//! sidecar's `/ready` until it answers 200, and fails after `--timeout` with the sidecar's own
//! reason.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Settings of `ferrule-proxy wait-ready`.
#[derive(Debug, Parser)]
#[command(
    name = "ferrule-proxy wait-ready",
    about = "Wait until the sidecar's /ready answers 200 (run it before the app starts)"
)]
pub struct Args {
    /// The sidecar's admin listener.
    #[arg(long, env = "FERRULE_ADMIN", default_value = "127.0.0.1:4191")]
    pub admin: SocketAddr,
    /// How long to wait before giving up (exit status 1).
    #[arg(long, default_value = "120s", value_parser = ferrule_config::duration::parse)]
    pub timeout: Duration,
}

/// How often `/ready` is asked.
const POLL: Duration = Duration::from_millis(100);

/// Runs the command: 0 once the sidecar is ready, 1 after the timeout.
pub fn main(args: Args) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + args.timeout;
        let mut last: String;
        loop {
            match ready(args.admin).await {
                Ok((200, _)) => return 0,
                Ok((status, body)) => last = format!("{status}: {}", body.trim_end()),
                Err(e) => last = format!("cannot reach {}: {e}", args.admin),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                eprintln!(
                    "ferrule-proxy wait-ready: the sidecar at {} was not ready within {:?} ({last})",
                    args.admin, args.timeout
                );
                return 1;
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    })
}

/// One `GET /ready`: its status and body.
async fn ready(admin: SocketAddr) -> Result<(u16, String), String> {
    let ask = async {
        let io = tokio::net::TcpStream::connect(admin)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get("/ready")
            .header(http::header::HOST, admin.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .map_err(|_| "no answer within 2 s".to_string())?
}
