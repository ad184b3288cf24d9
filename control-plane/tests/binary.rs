//! The real `ferrule-control` and `ferrulectl` binaries, checked with real clients (curl,
//! openssl s_client): start-up flags and refusals, the CA's files, TLS on the wire, and the CLI's
//! identity commands.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::TempDir;

/// A running `ferrule-control`, killed on drop.
struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn control(data_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrule-control"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env_remove("RUST_LOG");
    cmd
}

/// Starts the control plane and reads its URL from the one stdout line (10 s deadline).
fn start(data_dir: &Path, extra: &[&str]) -> Proc {
    let mut child = control(data_dir, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferrule-control starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the listening line within 10 s");
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    Proc { child, url }
}

/// Runs the control plane expecting it to refuse to start; returns its stderr.
fn refused(data_dir: &Path, extra: &[&str]) -> String {
    let out = control(data_dir, extra).output().unwrap();
    assert!(!out.status.success(), "started although it should not");
    assert!(out.stdout.is_empty(), "no listening line");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ctl(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrulectl"))
        .args(["--server", url])
        .args(args)
        .env_remove("FERRULE_CA_FILE")
        .env_remove("FERRULE_TOKEN_FILE")
        .output()
        .unwrap()
}

fn issuing_fingerprint(url: &str, bundle: &Path) -> String {
    let ca: serde_json::Value = serde_json::from_str(&curl(&[
        "--cacert",
        bundle.to_str().unwrap(),
        &format!("{url}/v1/ca"),
    ]))
    .unwrap();
    let roots = ca["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1, "{ca}");
    assert_eq!(roots[0]["issuing"], true);
    roots[0]["fingerprint"].as_str().unwrap().to_owned()
}

#[test]
fn the_ca_is_made_once_with_a_private_key_and_the_api_speaks_tls() {
    let dir = TempDir::new("bin-ca");
    let data = dir.path().join("data");
    let cp = start(&data, &[]);
    assert!(cp.url.starts_with("https://127.0.0.1:"), "{}", cp.url);
    let bundle = data.join("ca/trust-bundle.pem");

    // The root key is a file only its owner can read.
    let keys: Vec<_> = std::fs::read_dir(data.join("ca"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    }

    // curl verifies the API against the bundle (by IP SAN), which is also what it serves.
    let served = curl(&[
        "--cacert",
        bundle.to_str().unwrap(),
        &format!("{}/v1/trust-bundle", cp.url),
    ]);
    assert_eq!(served, std::fs::read_to_string(&bundle).unwrap());
    let fp = issuing_fingerprint(&cp.url, &bundle);
    assert!(keys[0].ends_with(format!("{fp}.key")));
    // Without the bundle, curl refuses the certificate.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("{}/healthz", cp.url)])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown CA must not verify");

    // openssl: TLS 1.3, ALPN h2, and the control plane's SPIFFE ID plus localhost/127.0.0.1.
    let addr = cp.url.trim_start_matches("https://");
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-alpn", "h2", "-CAfile"])
        .arg(&bundle)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    let pem_start = text.find("-----BEGIN CERTIFICATE-----").unwrap();
    let pem_end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
    let leaf = ferrule_tls::certs_from_pem(&text[pem_start..pem_end]).unwrap();
    let info = ferrule_tls::inspect(&leaf[0]).unwrap();
    assert_eq!(
        info.identity.to_string(),
        "spiffe://cluster.local/ns/ferrule-system/sa/ferrule-control"
    );

    // A restart reuses the root: same fingerprint, still one key.
    drop(cp);
    let cp = start(&data, &[]);
    assert_eq!(issuing_fingerprint(&cp.url, &bundle), fp);
    let keys = std::fs::read_dir(data.join("ca"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == "key")
        })
        .count();
    assert_eq!(keys, 1);
}

#[test]
fn an_operator_ca_is_used_and_a_bad_pair_is_refused_at_start() {
    let dir = TempDir::new("bin-operator");
    let a = ferrule_tls::ca::Authority::generate_root("example.org").unwrap();
    let b = ferrule_tls::ca::Authority::generate_root("example.org").unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (cert, key, other_key) = (
        write("a.crt", a.cert_pem()),
        write("a.key", &a.key_pem()),
        write("b.key", &b.key_pem()),
    );

    // A certificate with another CA's key: refused, saying which flags are wrong.
    let err = refused(
        &dir.path().join("bad"),
        &["--ca-cert", &cert, "--ca-key", &other_key],
    );
    assert!(err.contains("--ca-cert/--ca-key"), "{err}");
    assert!(err.contains("does not belong"), "{err}");
    // Half a pair: refused by the command line.
    let err = refused(&dir.path().join("half"), &["--ca-cert", &cert]);
    assert!(err.contains("--ca-key"), "{err}");

    // The good pair: the operator's CA is the one root, it issues, and its key is not copied.
    let data = dir.path().join("good");
    let cp = start(
        &data,
        &[
            "--ca-cert",
            &cert,
            "--ca-key",
            &key,
            "--trust-domain",
            "example.org",
        ],
    );
    let bundle = data.join("ca/trust-bundle.pem");
    assert_eq!(
        ferrule_tls::certs_from_pem(&std::fs::read_to_string(&bundle).unwrap()).unwrap(),
        ferrule_tls::certs_from_pem(a.cert_pem()).unwrap()
    );
    let ca: serde_json::Value = serde_json::from_str(&curl(&[
        "--cacert",
        bundle.to_str().unwrap(),
        &format!("{}/v1/ca", cp.url),
    ]))
    .unwrap();
    assert_eq!(ca["trustDomain"], "example.org");
    assert_eq!(ca["roots"][0]["source"], "operator");
    assert_eq!(ca["roots"][0]["issuing"], true);
    let copied = std::fs::read_dir(data.join("ca"))
        .unwrap()
        .any(|e| e.unwrap().path().extension().is_some_and(|e| e == "key"));
    assert!(!copied, "the operator's key stays in the operator's file");
    // Rotation through the API is the operator's business, not ours.
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "--cacert", bundle.to_str().unwrap()])
        .arg(format!("{}/v1/ca/roots", cp.url))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("operator"));

    // Restarted without the flags, it says what is missing rather than issuing with nothing.
    drop(cp);
    let err = refused(&data, &[]);
    assert!(err.contains("--ca-cert and --ca-key"), "{err}");
}

#[test]
fn start_refusals_and_plaintext() {
    let dir = TempDir::new("bin-start");
    // Beyond loopback without an admin token: refused with what to do.
    let out = Command::new(env!("CARGO_BIN_EXE_ferrule-control"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("exposed"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-token-file"), "{err}");
    // --cert-ttl below a minute: refused.
    let err = refused(&dir.path().join("ttl"), &["--cert-ttl", "30s"]);
    assert!(err.contains("--cert-ttl"), "{err}");
    // --lease-ttl below a second: refused, with the floor.
    let err = refused(&dir.path().join("lease"), &["--lease-ttl", "30ms"]);
    assert!(
        err.contains("lease TTL 30ms is too short (minimum 1s)"),
        "{err}"
    );

    // --plaintext says http:// and serves plain HTTP.
    let cp = start(&dir.path().join("plain"), &["--plaintext"]);
    assert!(cp.url.starts_with("http://127.0.0.1:"), "{}", cp.url);
    assert_eq!(curl(&[&format!("{}/healthz", cp.url)]), "ok\n");
}

#[test]
fn ferrulectl_manages_tokens_and_roots_over_tls() {
    let dir = TempDir::new("bin-ctl");
    let data = dir.path().join("data");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "admin-s3cret\n").unwrap();
    let cp = start(&data, &["--admin-token-file", token_file.to_str().unwrap()]);
    let bundle = data.join("ca/trust-bundle.pem");
    let (ca_file, tok) = (bundle.to_str().unwrap(), token_file.to_str().unwrap());
    let run = |args: &[&str]| {
        let mut all = vec!["--ca-file", ca_file, "--token-file", tok];
        all.extend_from_slice(args);
        let out = ctl(&cp.url, &all);
        assert!(
            out.status.success(),
            "ferrulectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    // https needs the bundle, and the wrong one fails the handshake.
    let out = ctl(&cp.url, &["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-file"));
    let foreign = dir.path().join("foreign.pem");
    std::fs::write(
        &foreign,
        ferrule_tls::ca::Authority::generate_root("cluster.local")
            .unwrap()
            .cert_pem(),
    )
    .unwrap();
    let out = ctl(&cp.url, &["--ca-file", foreign.to_str().unwrap(), "status"]);
    assert!(!out.status.success());

    // The token alone on stdout.
    let token = run(&["token", "create", "--service", "payments", "--ttl", "1h"]);
    let token = token.trim_end_matches('\n');
    assert!(!token.contains(char::is_whitespace), "{token:?}");
    let (id, _) = token.split_once('.').unwrap();
    let list = run(&["token", "list"]);
    assert!(list.contains(id) && list.contains("spiffe://cluster.local/ns/default/sa/payments"));
    assert!(list.contains("valid"));
    assert!(!list.contains(token));
    assert!(run(&["token", "revoke", id]).contains("revoked"));
    assert!(run(&["token", "list"]).contains("revoked"));

    // Root rotation from the CLI.
    let first = run(&["ca", "show"]);
    let new_fp = run(&["ca", "add-root"]).trim().to_owned();
    assert_eq!(new_fp.len(), 64, "{new_fp}");
    let shown = run(&["ca", "show"]);
    assert!(shown.contains(&new_fp) && shown.lines().count() == first.lines().count() + 1);
    assert!(run(&["ca", "activate", &new_fp]).contains(&new_fp));
    let old_fp = first
        .lines()
        .find_map(|l| l.split_whitespace().next().filter(|w| w.len() == 64))
        .unwrap()
        .to_owned();
    let out = ctl(
        &cp.url,
        &[
            "--ca-file",
            ca_file,
            "--token-file",
            tok,
            "ca",
            "remove-root",
            &new_fp,
        ],
    );
    assert!(!out.status.success(), "the issuing root stays");
    assert!(run(&["ca", "remove-root", &old_fp]).contains(&old_fp));
    assert!(!run(&["ca", "show"]).contains(&old_fp));
}
