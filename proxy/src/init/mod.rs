//! `ferrule-proxy init`: installs, in the current network namespace, the iptables rules that
//! send a pod's TCP through its sidecar (transparent interception), or removes them
//! (`--cleanup`), or prints what it would run (`--dry-run`). Run once per pod, as root (or
//! with CAP_NET_ADMIN), before the app starts: an init container in Kubernetes.
//!
//! The rules themselves are made in [`rules`]; this module reads the current nat table, runs
//! the transaction and checks the result.
//!
//! The work is done by running `iptables-save` and `iptables-restore` as child processes, as
//! istio-iptables and linkerd's proxy-init do, rather than through a crate: no well-kept crate
//! manages nat rules safely (the `iptables` crate runs the same binaries one rule at a time,
//! without a transaction; netlink/nftables crates would bypass the iptables front end the node
//! uses, legacy or nf_tables, and the rules could end up in a table the node does not read).
//! One `iptables-restore --noflush` applies every change of ours atomically.
//!
//! The sidecar must run as a user of its own (`--proxy-uid`, e.g. 2102): its connections are
//! told from the app's by their owner, so the app must not run as that user.

pub mod rules;

use std::io::Write;
use std::net::{IpAddr, SocketAddrV4, ToSocketAddrs};
use std::process::{Command, Stdio};

use clap::Parser;

use rules::{Cidr, Found, Settings};

/// Settings of `ferrule-proxy init`; every flag can also come from a `FERRULE_*` variable.
#[derive(Debug, Parser)]
#[command(
    name = "ferrule-proxy init",
    about = "Install (or remove) the iptables rules that send this network namespace's TCP \
             through its Ferrule sidecar"
)]
pub struct Args {
    /// The UID the sidecar runs as. Its own connections are never redirected; the app must run
    /// as another user. Required to install.
    #[arg(long, env = "FERRULE_PROXY_UID")]
    pub proxy_uid: Option<u32>,
    /// Port of the sidecar's inbound listener (`--inbound`), where arriving TCP is sent.
    #[arg(long, env = "FERRULE_INBOUND_PORT", default_value_t = 4143)]
    pub inbound_port: u16,
    /// Port of the sidecar's outbound listener (`--outbound`), where the app's TCP is sent.
    #[arg(long, env = "FERRULE_OUTBOUND_PORT", default_value_t = 4140)]
    pub outbound_port: u16,
    /// Port of the sidecar's admin listener, reached directly (probes, metrics).
    #[arg(long, env = "FERRULE_ADMIN_PORT", default_value_t = 4191)]
    pub admin_port: u16,
    /// The control plane's URL; its address is reached directly. A host name is resolved
    /// now, once.
    #[arg(long, env = "FERRULE_CONTROL_PLANE")]
    pub control_plane: Option<http::Uri>,
    /// Inbound ports not redirected to the sidecar, e.g. `22,8081`.
    #[arg(long, env = "FERRULE_EXCLUDE_INBOUND_PORTS", value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports not redirected to the sidecar, e.g. `5432`.
    #[arg(long, env = "FERRULE_EXCLUDE_OUTBOUND_PORTS", value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound IPv4 networks not redirected to the sidecar, e.g. `169.254.169.254/32`.
    #[arg(long, env = "FERRULE_EXCLUDE_OUTBOUND_CIDRS", value_delimiter = ',', value_parser = Cidr::parse)]
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Remove every rule and chain of ours instead of installing.
    #[arg(long)]
    pub cleanup: bool,
    /// Print the `iptables-restore` input that would be run, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The iptables front end: `iptables` (what the system chose), `iptables-legacy` or
    /// `iptables-nft`; `-save` and `-restore` are appended.
    #[arg(long, env = "FERRULE_IPTABLES", default_value = "iptables")]
    pub iptables: String,
}

/// Runs `init`; the process's exit code.
pub fn main(args: Args) -> i32 {
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ferrule-proxy init: {e}");
            1
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let ipt = Iptables(&args.iptables);
    if args.cleanup {
        let found = Found::in_table(&ipt.save()?);
        let Some(script) = rules::cleanup_script(&found) else {
            println!("ferrule-proxy init: no Ferrule rules to remove");
            return Ok(());
        };
        if args.dry_run {
            print!("{script}");
            return Ok(());
        }
        ipt.restore(&script)?;
        let left = Found::in_table(&ipt.save()?);
        if left != Found::default() {
            return Err(format!(
                "rules of ours are still there after cleanup: {left:?}"
            ));
        }
        println!("ferrule-proxy init: removed the Ferrule interception rules");
        return Ok(());
    }

    let settings = settings(args)?;
    if args.dry_run {
        // What is there decides which jumps are deleted first; without the rights to read
        // the table, print the install into an empty one.
        let found = match ipt.save() {
            Ok(table) => Found::in_table(&table),
            Err(e) => {
                eprintln!("ferrule-proxy init: {e}; showing the rules for a table without ours");
                Found::default()
            }
        };
        print!("{}", rules::install_script(&settings, &found));
        return Ok(());
    }
    let found = Found::in_table(&ipt.save()?);
    ipt.restore(&rules::install_script(&settings, &found))?;
    // One jump into each chain, whatever was there before.
    let now = Found::in_table(&ipt.save()?);
    if now.jumps.len() != 2 || now.chains.len() != 2 {
        return Err(format!(
            "the nat table does not hold exactly our two chains and jumps after install: {now:?}"
        ));
    }
    println!(
        "ferrule-proxy init: inbound TCP goes to port {}, outbound TCP to port {}; UID {}'s \
         connections, loopback{} are left alone",
        settings.inbound_port,
        settings.outbound_port,
        settings.proxy_uid,
        if settings.control_plane.is_empty() {
            ""
        } else {
            ", the control plane"
        }
    );
    Ok(())
}

/// The rule settings from the flags, with the control plane's address resolved.
fn settings(args: &Args) -> Result<Settings, String> {
    let proxy_uid = args.proxy_uid.ok_or(
        "--proxy-uid is required: the UID the sidecar runs as (its own connections are not \
         redirected)",
    )?;
    let control_plane = match &args.control_plane {
        Some(uri) => control_plane_addrs(uri)?,
        None => Vec::new(),
    };
    let s = Settings {
        proxy_uid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        control_plane,
        exclude_inbound_ports: args.exclude_inbound_ports.clone(),
        exclude_outbound_ports: args.exclude_outbound_ports.clone(),
        exclude_outbound_cidrs: args.exclude_outbound_cidrs.clone(),
    };
    s.check()?;
    Ok(s)
}

/// The IPv4 addresses of the control plane's URL (a literal, or what its name resolves to
/// now), at the URL's port or its scheme's.
fn control_plane_addrs(uri: &http::Uri) -> Result<Vec<SocketAddrV4>, String> {
    let host = uri
        .host()
        .ok_or_else(|| format!("--control-plane {uri} has no host"))?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => Ok(vec![SocketAddrV4::new(v4, port)]),
            // The rules are IPv4 only; an IPv6 control plane needs no exclusion from them.
            IpAddr::V6(_) => Ok(Vec::new()),
        };
    }
    let addrs: Vec<SocketAddrV4> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("--control-plane: cannot resolve {host}: {e}"))?
        .filter_map(|a| match a {
            std::net::SocketAddr::V4(v4) => Some(v4),
            std::net::SocketAddr::V6(_) => None,
        })
        .collect();
    if addrs.is_empty() {
        return Err(format!("--control-plane: {host} has no IPv4 address"));
    }
    Ok(addrs)
}

/// The iptables front end's two programs.
struct Iptables<'a>(&'a str);

impl Iptables<'_> {
    /// The nat table, as `iptables-save` prints it.
    fn save(&self) -> Result<String, String> {
        let program = format!("{}-save", self.0);
        let out = Command::new(&program)
            .args(["-t", "nat"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {program} (is iptables installed?): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program} -t nat failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        String::from_utf8(out.stdout).map_err(|_| format!("{program} printed invalid UTF-8"))
    }

    /// Applies `script` in one transaction, leaving every other rule in place.
    fn restore(&self, script: &str) -> Result<(), String> {
        let program = format!("{}-restore", self.0);
        // `--wait`: another tool may hold the xtables lock for a moment (legacy back end).
        let mut child = Command::new(&program)
            .args(["--noflush", "--wait", "5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {program} (is iptables installed?): {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("writing to {program}: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for {program}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program} refused the rules ({}): {}\nthe input was:\n{script}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_plane_url_gives_the_address_to_leave_alone() {
        let addrs = |u: &str| control_plane_addrs(&u.parse().unwrap());
        assert_eq!(
            addrs("https://10.77.0.1:7070"),
            Ok(vec!["10.77.0.1:7070".parse().unwrap()])
        );
        assert_eq!(
            addrs("http://10.77.0.1"),
            Ok(vec!["10.77.0.1:80".parse().unwrap()])
        );
        assert_eq!(
            addrs("https://10.77.0.1"),
            Ok(vec!["10.77.0.1:443".parse().unwrap()])
        );
        assert_eq!(addrs("https://[fd00::1]:7070"), Ok(vec![]));
        assert_eq!(
            addrs("http://localhost:7070"),
            Ok(vec!["127.0.0.1:7070".parse().unwrap()])
        );
    }

    #[test]
    fn flags_parse_into_settings() {
        let args = Args::try_parse_from([
            "init",
            "--proxy-uid",
            "2102",
            "--control-plane",
            "https://10.0.0.5:7070",
            "--exclude-inbound-ports",
            "22,8081",
            "--exclude-outbound-cidrs",
            "169.254.169.254,10.96.0.0/12",
        ])
        .unwrap();
        let s = settings(&args).unwrap();
        assert_eq!(s.proxy_uid, 2102);
        assert_eq!(
            (s.inbound_port, s.outbound_port, s.admin_port),
            (4143, 4140, 4191)
        );
        assert_eq!(s.control_plane, ["10.0.0.5:7070".parse().unwrap()]);
        assert_eq!(s.exclude_inbound_ports, [22, 8081]);
        assert_eq!(
            s.exclude_outbound_cidrs,
            [
                Cidr::parse("169.254.169.254/32").unwrap(),
                Cidr::parse("10.96.0.0/12").unwrap()
            ]
        );
        let missing = Args::try_parse_from(["init"]).unwrap();
        assert!(settings(&missing)
            .unwrap_err()
            .contains("--proxy-uid is required"));
        assert!(Args::try_parse_from(["init", "--exclude-outbound-cidrs", "nope"]).is_err());
    }
}
