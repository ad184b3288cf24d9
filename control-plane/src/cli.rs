//! `ferrulectl`, the operator CLI over the control-plane API.
//!
//! Every failure, local (a YAML syntax error) or remote (a 400 with field paths), ends up as a
//! [`CliError`]: its message and every field-path detail line go to stderr and the exit code
//! is 1, so scripts and humans both see exactly what to fix.
//!
//! It speaks HTTP/1.1 over TLS to an `https://` URL, verifying the control plane's certificate
//! against `--ca-file` (the mesh's trust bundle) and checking that it proves the control
//! plane's identity (`.../ns/ferrule-system/sa/ferrule-control`), and plain HTTP to an
//! `http://` URL (a `--plaintext` control plane).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use ferrule_config::{FieldError, Kind, Resource};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ca::{CaView, RootView};
use crate::error::ErrorBody;
use crate::proxies::ProxyStatus;
use crate::store::Applied;
use crate::tokens::{CreatedToken, TokenView};

/// Command line of `ferrulectl`.
#[derive(Debug, Parser)]
#[command(
    name = "ferrulectl",
    version,
    about = "Operate a Ferrule mesh through its control plane"
)]
pub struct Args {
    /// Control-plane URL.
    #[arg(
        long,
        env = "FERRULE_SERVER",
        default_value = "https://127.0.0.1:7070",
        global = true
    )]
    pub server: String,
    /// File holding the admin token sent with writes.
    #[arg(long, env = "FERRULE_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The mesh's trust bundle (PEM) to verify an https:// control plane with; the control
    /// plane writes it to `<data dir>/ca/trust-bundle.pem` and serves it at `/v1/trust-bundle`.
    #[arg(long, env = "FERRULE_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `ferrulectl` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update every resource in files, all at once (nothing is applied if any is invalid).
    Apply {
        /// A YAML or JSON file, or a directory of *.yaml, *.yml and *.json files; `-` for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Show resources.
    Get {
        /// `services` (`svc`) or `endpoints` (`ep`).
        kind: String,
        /// One resource's name; all of the kind if omitted.
        name: Option<String>,
        /// Output format (a table by default).
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
    /// Delete a resource.
    Delete {
        /// `services` (`svc`) or `endpoints` (`ep`).
        kind: String,
        /// Its name.
        name: String,
    },
    /// Show the control plane's version and every connected proxy.
    Status,
    /// The mesh's certificate authority: show it, rotate its root.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Bootstrap tokens, each proving one service identity to get a first certificate.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run a demo mesh on loopback: control plane, three services with sidecars, traffic.
    Demo(crate::demo::DemoArgs),
}

/// `ferrulectl ca` subcommands: root rotation is add-root, activate, then remove-root of the
/// old one once every certificate it signed has been renewed.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// The trust domain and every trusted root.
    Show,
    /// Generate a new root: trusted by every sidecar from the next snapshot, not issuing yet.
    AddRoot,
    /// Make a root the issuing one.
    Activate {
        /// Its SHA-256 fingerprint (from `ca show`).
        fingerprint: String,
    },
    /// Stop trusting a root that no longer issues.
    RemoveRoot {
        /// Its SHA-256 fingerprint (from `ca show`).
        fingerprint: String,
    },
}

/// `ferrulectl token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints the token alone on stdout (`TOKEN=$(ferrulectl token create ...)`).
    Create {
        /// The service whose identity the token proves.
        #[arg(long)]
        service: String,
        /// Its namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// How long the token is valid (default 24h).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Every token (never their secrets).
    List,
    /// Revoke a token.
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// YAML documents, ready to edit and apply again.
    Yaml,
    /// Pretty JSON.
    Json,
}

/// A failure to report: a message and the field errors behind it.
#[derive(Debug)]
pub struct CliError {
    /// What went wrong.
    pub message: String,
    /// Every bad field, one line each.
    pub details: Vec<FieldError>,
}

impl CliError {
    fn new(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            details: Vec::new(),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error: {}", self.message)?;
        for d in &self.details {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// Parses the command line, runs it, prints the outcome; the entry point of the binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::Demo(demo) = args.command {
        // Long-running, with its own runtime and live output.
        return crate::demo::main(demo);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = Vec::new();
    let result = rt.block_on(run(args, &mut out));
    let _ = std::io::stdout().write_all(&out);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command, writing its normal output to `out`.
pub async fn run(args: Args, out: &mut Vec<u8>) -> Result<(), CliError> {
    let token = match &args.token_file {
        Some(p) => Some(crate::auth::read_token_file(p).map_err(CliError::new)?),
        None => None,
    };
    let api = Api::new(&args.server, token, args.ca_file.as_deref())?;
    match args.command {
        Command::Apply { files } => apply(&api, &files, out).await,
        Command::Get { kind, name, output } => get(&api, &kind, name.as_deref(), output, out).await,
        Command::Delete { kind, name } => {
            let kind = parse_kind(&kind)?;
            let path = format!("/v1/{}/{name}", kind.plural());
            let done: Applied = api.call(Method::DELETE, &path, None).await?;
            writeln!(
                out,
                "{}/{} {}",
                done.kind.to_lowercase(),
                done.name,
                done.action
            )
            .ok();
            Ok(())
        }
        Command::Status => status(&api, out).await,
        Command::Ca(cmd) => ca(&api, cmd, out).await,
        Command::Token(cmd) => tokens(&api, cmd, out).await,
        Command::Demo(_) => Err(CliError::new("`demo` runs from the command line only")),
    }
}

fn parse_kind(s: &str) -> Result<Kind, CliError> {
    Kind::parse(s).ok_or_else(|| {
        CliError::new(format!(
            "unknown kind {s:?} (expected services/svc or endpoints/ep)"
        ))
    })
}

/// A small client for the control-plane API: HTTP/1.1, over TLS for an `https://` URL. One
/// connection per request: the CLI makes a handful.
struct Api {
    base: String,
    /// `host:port`.
    authority: String,
    tls: Option<ferrule_tls::tokio_rustls::TlsConnector>,
    token: Option<String>,
}

/// The identity a control plane proves: any trust domain the bundle vouches for, this
/// namespace and service.
const CONTROL_NAMESPACE: &str = "ferrule-system";
const CONTROL_SERVICE: &str = "ferrule-control";

impl Api {
    fn new(server: &str, token: Option<String>, ca_file: Option<&Path>) -> Result<Api, CliError> {
        let base = server.trim_end_matches('/').to_owned();
        let (tls, rest) = if let Some(rest) = base.strip_prefix("https://") {
            let Some(ca_file) = ca_file else {
                return Err(CliError::new(format!(
                    "{server} is served over TLS: give the mesh's trust bundle with --ca-file \
                     (FERRULE_CA_FILE); the control plane writes it to \
                     <data dir>/ca/trust-bundle.pem"
                )));
            };
            let pem = std::fs::read_to_string(ca_file).map_err(|e| {
                CliError::new(format!("cannot read --ca-file {}: {e}", ca_file.display()))
            })?;
            let bundle = ferrule_tls::Bundle::from_pem(&pem)
                .map_err(|e| CliError::new(format!("--ca-file {}: {e}", ca_file.display())))?;
            let config = ferrule_tls::client_config(None, &bundle, &[ferrule_tls::ALPN_HTTP1])
                .map_err(CliError::new)?;
            let connector =
                ferrule_tls::tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
            (Some(connector), rest)
        } else if let Some(rest) = base.strip_prefix("http://") {
            (None, rest)
        } else {
            return Err(CliError::new(format!(
                "--server must be an https:// or http:// URL, got {server:?}"
            )));
        };
        let authority = rest.split('/').next().unwrap_or_default().to_owned();
        if authority.is_empty() {
            return Err(CliError::new(format!(
                "--server {server:?} has no host:port"
            )));
        }
        Ok(Api {
            base,
            authority,
            tls,
            token,
        })
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> CliError {
        // A plain request to a TLS port fails without saying why.
        let hint = if self.tls.is_none() {
            "; if it serves TLS (its first line says https://), use an https:// URL with --ca-file"
        } else {
            ""
        };
        CliError::new(format!(
            "cannot reach the control plane at {}: {e} (is ferrule-control running? set \
             --server or FERRULE_SERVER{hint})",
            self.base
        ))
    }

    /// Opens a connection and sends one request on it.
    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, CliError> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| self.unreachable(e))?;
        let Some(connector) = &self.tls else {
            return self.exchange(tcp, req).await;
        };
        let host = self
            .authority
            .rsplit_once(':')
            .map_or(self.authority.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ferrule_tls::server_name(ip),
            Err(_) => ferrule_tls::rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| CliError::new(format!("bad host {host:?}: {e}")))?,
        };
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| self.unreachable(format!("TLS: {e}")))?;
        // The chain was verified against the bundle; the name it proves is ours to check.
        let id = ferrule_tls::peer_identity(stream.get_ref().1)
            .map_err(|e| CliError::new(format!("{}: {e}", self.base)))?;
        if id.namespace() != CONTROL_NAMESPACE || id.service() != CONTROL_SERVICE {
            return Err(CliError::new(format!(
                "{} proved identity {id}, which is not a Ferrule control plane",
                self.base
            )));
        }
        self.exchange(stream, req).await
    }

    async fn exchange<I>(
        &self,
        io: I,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, CliError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))
    }

    /// Sends a request and decodes a successful JSON answer; an error answer becomes a
    /// [`CliError`] carrying the server's message and field details.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority);
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::new(format!("invalid request to {url}: {e}")))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::new(format!("error reading the answer from {url}: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(server_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::new(format!("unexpected answer from {url}: {e}")))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn server_error(status: StatusCode, bytes: &[u8]) -> CliError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => CliError {
            message: b.error,
            details: b.details,
        },
        Err(_) => CliError::new(format!(
            "the control plane answered {status}: {}",
            String::from_utf8_lossy(bytes).trim()
        )),
    }
}

/// Expands `-f` arguments: files as given, directories to their policy files in name order.
fn policy_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    let mut files = Vec::new();
    for arg in args {
        if arg.is_dir() {
            let entries = std::fs::read_dir(arg).map_err(|e| {
                CliError::new(format!("cannot read directory {}: {e}", arg.display()))
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            if found.is_empty() {
                return Err(CliError::new(format!(
                    "no .yaml, .yml or .json files in {}",
                    arg.display()
                )));
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(arg.clone());
        }
    }
    Ok(files)
}

fn read_source(path: &Path) -> Result<String, CliError> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CliError::new(format!("cannot read stdin: {e}")))?;
        return Ok(s);
    }
    std::fs::read_to_string(path)
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))
}

async fn apply(api: &Api, args: &[PathBuf], out: &mut Vec<u8>) -> Result<(), CliError> {
    let mut docs = Vec::new();
    let mut errs = Vec::new();
    for path in policy_files(args)? {
        let text = read_source(&path)?;
        // Syntax errors are found here, per file, so they name the file; validation is left
        // to the server, which is the authority on what it accepts.
        match ferrule_config::document::parse_values(&text, &path.display().to_string()) {
            Ok(values) => docs.extend(values),
            Err(e) => errs.extend(e.0),
        }
    }
    if !errs.is_empty() {
        return Err(CliError {
            message: "cannot parse the policy files; nothing was applied".into(),
            details: errs,
        });
    }
    if docs.is_empty() {
        return Err(CliError::new("the files hold no resources"));
    }
    let body = serde_json::to_vec(&docs).expect("JSON values serialise");
    let applied: Vec<Applied> = api.call(Method::POST, "/v1/apply", Some(body)).await?;
    for a in applied {
        writeln!(out, "{}/{} {}", a.kind.to_lowercase(), a.name, a.action).ok();
    }
    warn_dangling_references(api).await;
    Ok(())
}

/// The control plane accepts resources in any order, but a proxy refuses a snapshot whose routes
/// split to a service that does not exist. Say so now, rather than leave the operator to find
/// the NACK in `status`. Best effort: a failure to check is not a failure to apply.
async fn warn_dangling_references(api: &Api) {
    let Ok(value) = api.call::<Value>(Method::GET, "/v1/services", None).await else {
        return;
    };
    let services = value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Resource::from_value(v, Some(Kind::Service), "service").ok())
        .filter_map(|r| match r {
            Resource::Service(s) => Some(s),
            Resource::Endpoint(_) => None,
        })
        .collect();
    let snapshot = ferrule_config::Snapshot {
        version: 1,
        services,
        endpoints: Vec::new(),
        trust_bundle: None,
    };
    if let Err(errs) = snapshot.check_references() {
        for e in errs.0 {
            eprintln!(
                "warning: {e}; sidecars will refuse new policy until it exists (see `ferrulectl status`)"
            );
        }
    }
}

async fn get(
    api: &Api,
    kind: &str,
    name: Option<&str>,
    format: Option<Format>,
    out: &mut Vec<u8>,
) -> Result<(), CliError> {
    let kind = parse_kind(kind)?;
    let path = match name {
        Some(n) => format!("/v1/{}/{n}", kind.plural()),
        None => format!("/v1/{}", kind.plural()),
    };
    let value: Value = api.call(Method::GET, &path, None).await?;
    let items = match &value {
        Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    };
    match format {
        Some(Format::Json) => {
            let text = serde_json::to_string_pretty(&value).expect("JSON values serialise");
            writeln!(out, "{text}").ok();
        }
        Some(Format::Yaml) => {
            // One document per resource, so the output can be edited and applied again.
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---").ok();
                }
                let text = serde_norway::to_string(item)
                    .map_err(|e| CliError::new(format!("cannot write YAML: {e}")))?;
                out.extend_from_slice(text.as_bytes());
            }
        }
        None => {
            let resources: Vec<Resource> = items
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .map_err(|e| CliError::new(format!("unexpected answer: {e}")))?;
            table(out, &resource_rows(kind, &resources));
        }
    }
    Ok(())
}

fn word<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn resource_rows(kind: Kind, resources: &[Resource]) -> Vec<Vec<String>> {
    let mut rows = vec![match kind {
        Kind::Service => ["NAME", "PROTOCOL", "ROUTES", "BALANCER", "REVISION"]
            .map(String::from)
            .to_vec(),
        Kind::Endpoint => ["NAME", "SERVICE", "ADDRESS", "ZONE", "WEIGHT", "REVISION"]
            .map(String::from)
            .to_vec(),
    }];
    for r in resources {
        rows.push(match r {
            Resource::Service(s) => vec![
                s.name.clone(),
                word(&s.protocol),
                s.routes.len().to_string(),
                word(&s.traffic_policy.load_balancer),
                s.revision.to_string(),
            ],
            Resource::Endpoint(e) => vec![
                e.name.clone(),
                e.service.clone(),
                e.address.to_string(),
                e.zone.clone().unwrap_or_else(|| "-".into()),
                e.weight.to_string(),
                e.revision.to_string(),
            ],
        });
    }
    rows
}

/// Prints rows as left-aligned columns; the first row is the header.
fn table(out: &mut Vec<u8>, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end()).ok();
    }
}

async fn ca(api: &Api, cmd: CaCommand, out: &mut Vec<u8>) -> Result<(), CliError> {
    match cmd {
        CaCommand::Show => {
            let view: CaView = api.call(Method::GET, "/v1/ca", None).await?;
            writeln!(
                out,
                "trust domain {}, certificates live at most {}\n",
                view.trust_domain, view.max_cert_ttl
            )
            .ok();
            let mut rows = vec![["FINGERPRINT", "ISSUING", "SOURCE", "NOT AFTER", "SUBJECT"]
                .map(String::from)
                .to_vec()];
            for r in view.roots {
                rows.push(vec![
                    r.fingerprint,
                    if r.issuing { "yes" } else { "no" }.to_owned(),
                    word(&r.source),
                    r.not_after,
                    r.subject,
                ]);
            }
            table(out, &rows);
        }
        CaCommand::AddRoot => {
            let r: RootView = api.call(Method::POST, "/v1/ca/roots", None).await?;
            writeln!(out, "{}", r.fingerprint).ok();
            eprintln!(
                "added root {} (trusted, not issuing); once every sidecar runs the new \
                 snapshot: ferrulectl ca activate {}",
                r.fingerprint, r.fingerprint
            );
        }
        CaCommand::Activate { fingerprint } => {
            let path = format!("/v1/ca/roots/{fingerprint}/activate");
            let r: RootView = api.call(Method::POST, &path, None).await?;
            writeln!(out, "root {} now issues certificates", r.fingerprint).ok();
        }
        CaCommand::RemoveRoot { fingerprint } => {
            let path = format!("/v1/ca/roots/{fingerprint}");
            let _: Value = api.call(Method::DELETE, &path, None).await?;
            writeln!(out, "root {fingerprint} is no longer trusted").ok();
        }
    }
    Ok(())
}

async fn tokens(api: &Api, cmd: TokenCommand, out: &mut Vec<u8>) -> Result<(), CliError> {
    match cmd {
        TokenCommand::Create {
            service,
            namespace,
            ttl,
        } => {
            let mut body = serde_json::json!({ "service": service });
            if let Some(ns) = namespace {
                body["namespace"] = Value::String(ns);
            }
            if let Some(ttl) = ttl {
                body["ttl"] = Value::String(ttl);
            }
            let body = serde_json::to_vec(&body).expect("JSON values serialise");
            let t: CreatedToken = api.call(Method::POST, "/v1/tokens", Some(body)).await?;
            // The token alone on stdout, so that `TOKEN=$(ferrulectl token create ...)` works.
            writeln!(out, "{}", t.token).ok();
            eprintln!(
                "token {} proves {} until {}",
                t.id, t.identity, t.expires_at
            );
        }
        TokenCommand::List => {
            let list: Vec<TokenView> = api.call(Method::GET, "/v1/tokens", None).await?;
            let mut rows = vec![["ID", "IDENTITY", "STATE", "EXPIRES"]
                .map(String::from)
                .to_vec()];
            for t in list {
                rows.push(vec![t.id, t.identity, t.state, t.expires_at]);
            }
            table(out, &rows);
        }
        TokenCommand::Revoke { id } => {
            let t: TokenView = api
                .call(Method::DELETE, &format!("/v1/tokens/{id}"), None)
                .await?;
            writeln!(out, "token {} {}", t.id, t.state).ok();
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct VersionInfo {
    version: u64,
    revision: u64,
}

async fn status(api: &Api, out: &mut Vec<u8>) -> Result<(), CliError> {
    let v: VersionInfo = api.call(Method::GET, "/v1/version", None).await?;
    let proxies: Vec<ProxyStatus> = api.call(Method::GET, "/v1/proxies", None).await?;
    writeln!(
        out,
        "control plane {}: snapshot version {} (store revision {}), {} proxies connected",
        api.base,
        v.version,
        v.revision,
        proxies.len()
    )
    .ok();
    // Best effort: an older control plane has no /v1/streams.
    if let Ok(streams) = api.call::<Value>(Method::GET, "/v1/streams", None).await {
        let refused: Vec<String> = streams["refused"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(why, n)| format!("{why} {n}"))
            .collect();
        writeln!(
            out,
            "push streams: {} open (max {}), {} endpoints registered (max {}), refused: {}",
            streams["streams"],
            streams["maxStreams"],
            streams["registrations"],
            streams["maxRegistrations"],
            if refused.is_empty() {
                "none".to_owned()
            } else {
                refused.join(", ")
            }
        )
        .ok();
    }
    if proxies.is_empty() {
        return Ok(());
    }
    writeln!(out).ok();
    let mut rows = vec![[
        "ID",
        "SERVICE",
        "ADDRESS",
        "VERSION",
        "STATE",
        "LAST NACK",
        "CONNECTED SINCE",
    ]
    .map(String::from)
    .to_vec()];
    for p in proxies {
        let state = match &p.last_nack {
            Some(n) if n.version > p.version => format!("rejected {}", n.version),
            _ if p.version >= v.version => "in sync".to_owned(),
            _ => "behind".to_owned(),
        };
        rows.push(vec![
            p.id,
            p.service,
            p.address,
            p.version.to_string(),
            state,
            p.last_nack
                .map(|n| format!("v{}: {}", n.version, n.error))
                .unwrap_or_else(|| "-".into()),
            p.connected_since,
        ]);
    }
    table(out, &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        table(
            &mut out,
            &[
                vec!["NAME".into(), "X".into()],
                vec!["a-long-name".into(), "1".into()],
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME          X\na-long-name   1\n"
        );
    }

    #[test]
    fn server_errors_keep_every_detail() {
        let body = br#"{"error":"invalid Service: 2 problems","details":[
            {"resource":"Service/echo","path":"routes[1].backends[0].weight","message":"must be between 0 and 100"},
            {"resource":"Service/echo","path":"protocol","message":"unknown protocol"}]}"#;
        let e = server_error(StatusCode::BAD_REQUEST, body).to_string();
        assert_eq!(
            e,
            "error: invalid Service: 2 problems\n  Service/echo: routes[1].backends[0].weight: must be between 0 and 100\n  Service/echo: protocol: unknown protocol"
        );
        let e = server_error(StatusCode::BAD_GATEWAY, b"upstream down").to_string();
        assert!(e.contains("502 Bad Gateway: upstream down"), "{e}");
    }
}
