//! The interception rules as text: what `ferrule-proxy init` feeds to `iptables-restore`.
//! Pure functions of the settings and of the current nat table (as `iptables-save` prints
//! it), so that they are tested exactly, without a network namespace.
//!
//! Everything of ours lives in two chains of the nat table, each reached by one jump:
//!
//! - `FERRULE_INBOUND`, from `PREROUTING`: TCP arriving at the pod is redirected to the
//!   inbound listener, except the sidecar's own ports (admin; the proxy listeners, which a
//!   connection may address directly) and `--exclude-inbound-ports`.
//! - `FERRULE_OUTBOUND`, from `OUTPUT`: TCP the pod opens is redirected to the outbound
//!   listener, except the sidecar's own connections (by owner UID: the proxy runs as a user
//!   of its own, so its connections to peers and to the app are never redirected back to
//!   itself), loopback, the control plane, `--exclude-outbound-ports` and
//!   `--exclude-outbound-cidrs`.
//!
//! Installing declares both chains (which creates them, or empties them if they exist),
//! deletes the jumps to them that are there, and adds the rules and one jump each, in one
//! `iptables-restore --noflush` transaction: running it twice leaves the same rules, and no
//! one else's rule is touched. Cleanup deletes our jumps and chains and nothing else.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The chain `PREROUTING` jumps to.
pub const INBOUND_CHAIN: &str = "FERRULE_INBOUND";
/// The chain `OUTPUT` jumps to.
pub const OUTBOUND_CHAIN: &str = "FERRULE_OUTBOUND";

/// An IPv4 network, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: Ipv4Addr,
    len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/len` or a bare address (`/32`). Host bits are cleared, as iptables
    /// does. Written out: ten lines do not justify a dependency (ipnet) in the sidecar.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an IPv4 network (e.g. 10.0.0.0/8 or 10.0.0.7)");
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, len.parse::<u8>().map_err(|_| bad())?),
            None => (s, 32),
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        Ok(Cidr {
            net: Ipv4Addr::from(u32::from(ip) & mask),
            len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// What to intercept and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The UID the sidecar runs as; its own connections are never redirected.
    pub proxy_uid: u32,
    /// The inbound listener's port.
    pub inbound_port: u16,
    /// The outbound listener's port.
    pub outbound_port: u16,
    /// The admin listener's port (reached directly: probes, metrics scrapes).
    pub admin_port: u16,
    /// The control plane's addresses (reached directly).
    pub control_plane: Vec<SocketAddrV4>,
    /// Inbound ports left alone.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound networks left alone.
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

impl Settings {
    /// Refuses settings that would intercept the wrong traffic.
    pub fn check(&self) -> Result<(), String> {
        if self.proxy_uid == 0 {
            return Err(
                "--proxy-uid 0: the sidecar must run as a user of its own; with root's \
                        UID excluded, every process running as root would bypass it"
                    .into(),
            );
        }
        let ports = [
            ("--inbound-port", self.inbound_port),
            ("--outbound-port", self.outbound_port),
            ("--admin-port", self.admin_port),
        ];
        for (i, (name, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(format!("{name} must not be 0"));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return Err(format!("{name} {port} is also {other}"));
            }
        }
        Ok(())
    }

    /// The rules of our two chains and the jumps to them, in `iptables-restore` syntax.
    pub fn rules(&self) -> Vec<String> {
        let mut v = Vec::new();
        let inbound = |v: &mut Vec<String>, rest: String| {
            v.push(format!("-A {INBOUND_CHAIN} {rest}"));
        };
        // Connections meant for the sidecar itself; the proxy listeners are in the list so
        // that a pod's own ports can never be used to reach the outbound listener from
        // outside, and a direct call to the inbound port is not translated for nothing.
        let mut own = vec![self.admin_port, self.inbound_port, self.outbound_port];
        own.extend(self.exclude_inbound_ports.iter().copied());
        for port in dedup(own) {
            inbound(&mut v, format!("-p tcp --dport {port} -j RETURN"));
        }
        inbound(
            &mut v,
            format!("-p tcp -j REDIRECT --to-ports {}", self.inbound_port),
        );

        let outbound = |v: &mut Vec<String>, rest: String| {
            v.push(format!("-A {OUTBOUND_CHAIN} {rest}"));
        };
        // First: the sidecar's own connections (to peers, the app, the control plane).
        outbound(
            &mut v,
            format!("-m owner --uid-owner {} -j RETURN", self.proxy_uid),
        );
        // Loopback: the app talking to itself, to the sidecar in explicit mode, or the
        // sidecar to the app.
        outbound(&mut v, "-o lo -j RETURN".into());
        for cp in dedup(self.control_plane.clone()) {
            outbound(
                &mut v,
                format!("-d {}/32 -p tcp --dport {} -j RETURN", cp.ip(), cp.port()),
            );
        }
        for port in dedup(self.exclude_outbound_ports.clone()) {
            outbound(&mut v, format!("-p tcp --dport {port} -j RETURN"));
        }
        for cidr in dedup(self.exclude_outbound_cidrs.clone()) {
            outbound(&mut v, format!("-d {cidr} -j RETURN"));
        }
        outbound(
            &mut v,
            format!("-p tcp -j REDIRECT --to-ports {}", self.outbound_port),
        );

        v.extend(jumps());
        v
    }
}

/// The two jumps into our chains, as installed.
fn jumps() -> [String; 2] {
    [
        format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"),
        format!("-A OUTPUT -p tcp -j {OUTBOUND_CHAIN}"),
    ]
}

/// `v` without repeats, first occurrence kept.
fn dedup<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// What of ours the current nat table holds: the jumps to our chains (as `iptables-save`
/// prints them) and which of our chains exist.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Rules of other chains that jump to ours, e.g. `-A PREROUTING -p tcp -j FERRULE_INBOUND`.
    pub jumps: Vec<String>,
    /// Our chains that exist.
    pub chains: Vec<&'static str>,
}

impl Found {
    /// Reads `iptables-save -t nat` output.
    pub fn in_table(save: &str) -> Found {
        let ours = [INBOUND_CHAIN, OUTBOUND_CHAIN];
        let mut found = Found::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim_end) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if let Some(chain) = ours.iter().find(|c| **c == name) {
                    found.chains.push(chain);
                }
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(&"-A"), Some(chain)) = (words.first(), words.get(1)) else {
                continue;
            };
            let target = words
                .windows(2)
                .find(|w| w[0] == "-j" || w[0] == "--jump")
                .map(|w| w[1]);
            if !ours.contains(chain) && target.is_some_and(|t| ours.contains(&t)) {
                found.jumps.push(line.to_owned());
            }
        }
        found
    }
}

/// The `iptables-restore --noflush` input that installs `settings`, given what of ours the
/// table already holds: our chains emptied (or created), the jumps that are there deleted,
/// then our rules and one jump each.
pub fn install_script(settings: &Settings, found: &Found) -> String {
    let mut s = String::from("*nat\n");
    for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
        s.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for jump in &found.jumps {
        s.push_str(&delete(jump));
    }
    for rule in settings.rules() {
        s.push_str(&rule);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// The `iptables-restore --noflush` input that removes everything of ours, or `None` when
/// there is nothing to remove.
pub fn cleanup_script(found: &Found) -> Option<String> {
    if found.jumps.is_empty() && found.chains.is_empty() {
        return None;
    }
    let mut s = String::from("*nat\n");
    for jump in &found.jumps {
        s.push_str(&delete(jump));
    }
    for chain in &found.chains {
        s.push_str(&format!("-F {chain}\n-X {chain}\n"));
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// The command that deletes a rule `iptables-save` printed as `-A CHAIN spec`.
fn delete(rule: &str) -> String {
    format!("-D{}\n", rule.strip_prefix("-A").unwrap_or(rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            proxy_uid: 2102,
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            control_plane: vec!["10.77.0.1:7070".parse().unwrap()],
            exclude_inbound_ports: vec![22, 4191, 22],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec![
                Cidr::parse("169.254.0.0/16").unwrap(),
                Cidr::parse("10.96.0.1").unwrap(),
            ],
        }
    }

    const RULES: &str = "\
-A FERRULE_INBOUND -p tcp --dport 4191 -j RETURN
-A FERRULE_INBOUND -p tcp --dport 4143 -j RETURN
-A FERRULE_INBOUND -p tcp --dport 4140 -j RETURN
-A FERRULE_INBOUND -p tcp --dport 22 -j RETURN
-A FERRULE_INBOUND -p tcp -j REDIRECT --to-ports 4143
-A FERRULE_OUTBOUND -m owner --uid-owner 2102 -j RETURN
-A FERRULE_OUTBOUND -o lo -j RETURN
-A FERRULE_OUTBOUND -d 10.77.0.1/32 -p tcp --dport 7070 -j RETURN
-A FERRULE_OUTBOUND -p tcp --dport 5432 -j RETURN
-A FERRULE_OUTBOUND -d 169.254.0.0/16 -j RETURN
-A FERRULE_OUTBOUND -d 10.96.0.1/32 -j RETURN
-A FERRULE_OUTBOUND -p tcp -j REDIRECT --to-ports 4140
-A PREROUTING -p tcp -j FERRULE_INBOUND
-A OUTPUT -p tcp -j FERRULE_OUTBOUND
";

    #[test]
    fn a_fresh_install_is_exactly_our_chains_and_two_jumps() {
        let script = install_script(&settings(), &Found::default());
        assert_eq!(
            script,
            format!("*nat\n:FERRULE_INBOUND - [0:0]\n:FERRULE_OUTBOUND - [0:0]\n{RULES}COMMIT\n")
        );
    }

    #[test]
    fn only_the_sidecar_ports_are_excluded_by_default() {
        let s = Settings {
            control_plane: vec![],
            exclude_inbound_ports: vec![],
            exclude_outbound_ports: vec![],
            exclude_outbound_cidrs: vec![],
            ..settings()
        };
        assert_eq!(
            s.rules().join("\n"),
            "\
-A FERRULE_INBOUND -p tcp --dport 4191 -j RETURN
-A FERRULE_INBOUND -p tcp --dport 4143 -j RETURN
-A FERRULE_INBOUND -p tcp --dport 4140 -j RETURN
-A FERRULE_INBOUND -p tcp -j REDIRECT --to-ports 4143
-A FERRULE_OUTBOUND -m owner --uid-owner 2102 -j RETURN
-A FERRULE_OUTBOUND -o lo -j RETURN
-A FERRULE_OUTBOUND -p tcp -j REDIRECT --to-ports 4140
-A PREROUTING -p tcp -j FERRULE_INBOUND
-A OUTPUT -p tcp -j FERRULE_OUTBOUND"
        );
    }

    /// What `iptables-save -t nat` printed in a pod after one install, next to another
    /// tool's rules that must survive, and a jump between our own chains (emptied by the
    /// install, so deleting it there would fail the transaction).
    const INSTALLED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FERRULE_INBOUND - [0:0]
:FERRULE_OUTBOUND - [0:0]
:OTHER - [0:0]
-A PREROUTING -p udp -j OTHER
-A PREROUTING -p tcp -j FERRULE_INBOUND
-A OUTPUT -p tcp -j FERRULE_OUTBOUND
-A OUTPUT -d 10.0.0.0/8 -j RETURN
-A FERRULE_INBOUND -p tcp -m tcp --dport 4191 -j RETURN
-A FERRULE_INBOUND -p tcp -j REDIRECT --to-ports 4143
-A FERRULE_INBOUND -j FERRULE_OUTBOUND
-A OTHER -j FERRULE_OUTBOUND
COMMIT
# Completed
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j FERRULE_INBOUND
COMMIT
";

    #[test]
    fn the_table_is_read_for_our_jumps_and_chains_only() {
        assert_eq!(
            Found::in_table(INSTALLED),
            Found {
                jumps: vec![
                    "-A PREROUTING -p tcp -j FERRULE_INBOUND".into(),
                    "-A OUTPUT -p tcp -j FERRULE_OUTBOUND".into(),
                    "-A OTHER -j FERRULE_OUTBOUND".into(),
                ],
                chains: vec![INBOUND_CHAIN, OUTBOUND_CHAIN],
            }
        );
        assert_eq!(Found::in_table(""), Found::default());
    }

    #[test]
    fn installing_again_replaces_our_jumps_instead_of_adding_more() {
        let script = install_script(&settings(), &Found::in_table(INSTALLED));
        assert_eq!(
            script,
            format!(
                "*nat\n:FERRULE_INBOUND - [0:0]\n:FERRULE_OUTBOUND - [0:0]\n\
                 -D PREROUTING -p tcp -j FERRULE_INBOUND\n\
                 -D OUTPUT -p tcp -j FERRULE_OUTBOUND\n\
                 -D OTHER -j FERRULE_OUTBOUND\n\
                 {RULES}COMMIT\n"
            )
        );
    }

    #[test]
    fn cleanup_removes_our_jumps_and_chains_and_nothing_else() {
        assert_eq!(
            cleanup_script(&Found::in_table(INSTALLED)).unwrap(),
            "*nat\n\
             -D PREROUTING -p tcp -j FERRULE_INBOUND\n\
             -D OUTPUT -p tcp -j FERRULE_OUTBOUND\n\
             -D OTHER -j FERRULE_OUTBOUND\n\
             -F FERRULE_INBOUND\n-X FERRULE_INBOUND\n\
             -F FERRULE_OUTBOUND\n-X FERRULE_OUTBOUND\n\
             COMMIT\n"
        );
        assert_eq!(cleanup_script(&Found::default()), None);
    }

    #[test]
    fn networks_parse_like_iptables_reads_them() {
        let p = |s: &str| Cidr::parse(s).map(|c| c.to_string());
        assert_eq!(p("10.0.0.0/8"), Ok("10.0.0.0/8".into()));
        assert_eq!(p("10.1.2.3/8"), Ok("10.0.0.0/8".into()));
        assert_eq!(p("10.1.2.3"), Ok("10.1.2.3/32".into()));
        assert_eq!(p("0.0.0.0/0"), Ok("0.0.0.0/0".into()));
        for bad in ["10.0.0.0/33", "10.0.0/8", "fd00::/8", "10.0.0.0/", "x"] {
            let e = Cidr::parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn settings_that_would_intercept_the_wrong_traffic_are_refused() {
        let root = Settings {
            proxy_uid: 0,
            ..settings()
        };
        assert!(root.check().unwrap_err().contains("--proxy-uid 0"));
        let clash = Settings {
            admin_port: 4143,
            ..settings()
        };
        assert_eq!(
            clash.check().unwrap_err(),
            "--admin-port 4143 is also --inbound-port"
        );
        let zero = Settings {
            outbound_port: 0,
            ..settings()
        };
        assert_eq!(zero.check().unwrap_err(), "--outbound-port must not be 0");
        settings().check().unwrap();
    }
}
