//! The access log: one JSON line per request that its service's policy samples
//! (`accessLog` in `ferrule_config::access_log`), written by the pipeline's finish step.
//!
//! **Where the lines go.** To stdout by default (`--access-log`: `stdout`, or a file to append
//! to), apart from the sidecar's diagnostics on stderr, as Envoy and Istio do. The two have
//! different readers and lives: access lines are data about traffic, kept and queried by
//! request, and a container runtime already keeps the two streams apart, so a collector can
//! route them without parsing; and the policy, not the diagnostic log level, decides whether
//! they are written (lowering the level to `warn` must not lose them). Every line is a JSON
//! object; the one other line on stdout is the startup line that names the bound addresses.
//!
//! **Never on the request's time.** The finish step formats a line and hands it to a bounded
//! queue; one thread writes the queue out in batches. When the reader cannot keep up (a
//! stuck pipe, a slow disk), lines are dropped and counted in
//! `ferrule_access_log_dropped_total` instead of stalling requests. A plain `std` channel and
//! thread rather than `tracing-appender`: the writer must batch and count what it drops per
//! line, which is a dozen lines here.
//!
//! **Sampling.** A request's share is drawn from the trace id of its W3C `traceparent` when it
//! carries one, so both sidecars of a hop keep the same requests, and at random otherwise.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;

use ferrule_config::access_log::{AccessLog, ALL};
use prometheus_client::metrics::counter::Counter;
use rand::Rng;

/// The request header whose trace id an access line carries.
pub const TRACEPARENT: &str = "traceparent";

/// Lines waiting for the writer; beyond this they are dropped.
const QUEUE: usize = 8 * 1024;

/// The trace id of a W3C `traceparent` header: 32 lowercase hex digits, not all zero.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    /// The trace-id field of a `traceparent` value (`version-traceid-parentid-flags`, W3C
    /// Trace Context §3.2), if the value is well formed. Only the trace id is read: joining
    /// and continuing traces is the tracing step's business.
    pub fn from_traceparent(v: &[u8]) -> Option<TraceId> {
        let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let (version, id, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
        // Version ff is invalid; version 00 has exactly these four fields, a later one may
        // add fields after another dash.
        let rest_ok = match version {
            b"00" => v.len() == 55,
            _ => v.len() == 55 || v[55] == b'-',
        };
        if version == b"ff" || !rest_ok || !hex(version) || !hex(id) || !hex(parent) || !hex(flags)
        {
            return None;
        }
        if id.iter().all(|&c| c == b'0') || parent.iter().all(|&c| c == b'0') {
            return None;
        }
        let mut out = [0; 32];
        out.copy_from_slice(id);
        Some(TraceId(out))
    }

    /// The 32 hex digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked to be hex digits")
    }

    /// Where the id falls in a million, from its low 64 bits (random in a W3C trace id).
    fn part(&self) -> u32 {
        let low = u64::from_str_radix(&self.as_str()[16..], 16).expect("checked to be hex");
        (low % u64::from(ALL)) as u32
    }
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request chosen for the access log, with what its head said that its line needs.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// From the request's `traceparent`, if it had a valid one.
    pub trace_id: Option<TraceId>,
}

impl Sampled {
    /// What the line of a request with this `traceparent` value needs, boxed: it travels
    /// beside the request's decision on the fast path, where eight bytes are all it may add.
    pub fn read(traceparent: Option<&[u8]>) -> Box<Sampled> {
        Box::new(Sampled {
            trace_id: traceparent.and_then(TraceId::from_traceparent),
        })
    }
}

/// A service's access-log policy, compiled: the share of its requests to log, above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampling {
    parts_per_million: u32,
}

impl Sampling {
    /// The policy's sampling, or `None` when it logs nothing (absent, disabled or 0%), which
    /// is what makes a request of a service without access logs cost one branch.
    pub fn of(policy: Option<&AccessLog>) -> Option<Sampling> {
        let parts_per_million = policy?.parts_per_million();
        (parts_per_million > 0).then_some(Sampling { parts_per_million })
    }

    /// Whether to log a request whose `traceparent` header `header` gives (looked up only
    /// when the share is below 100%).
    pub fn sample<'h>(&self, header: impl FnOnce() -> Option<&'h [u8]>) -> bool {
        if self.parts_per_million >= ALL {
            return true;
        }
        match header().and_then(TraceId::from_traceparent) {
            Some(id) => id.part() < self.parts_per_million,
            None => rand::rng().random_range(0..ALL) < self.parts_per_million,
        }
    }
}

/// Where access lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The process's stdout.
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

impl std::str::FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("give `stdout` or a file path".into()),
            "stdout" | "-" => Ok(Destination::Stdout),
            path => Ok(Destination::File(path.into())),
        }
    }
}

/// The queue into the access-log writer, and its counters. Until [`Sink::start`] is called
/// (unit tests, a library user), lines are counted as dropped.
#[derive(Debug, Default)]
pub struct Sink {
    queue: OnceLock<SyncSender<String>>,
    /// Lines queued for writing.
    pub lines: Counter,
    /// Lines dropped because the writer was behind (or never started).
    pub dropped: Counter,
}

impl Sink {
    /// Opens `to` and starts the writer thread.
    pub fn start(&self, to: &Destination) -> Result<(), String> {
        let out: Box<dyn Write + Send> = match to {
            Destination::Stdout => Box::new(std::io::stdout()),
            Destination::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open the access log {}: {e}", path.display()))?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_out(&rx, out))
            .map_err(|e| format!("cannot start the access-log writer: {e}"))?;
        self.queue
            .set(tx)
            .map_err(|_| "the access log is already started".to_string())
    }

    /// Queues one line (without its newline); never waits.
    pub fn write(&self, line: String) {
        let Some(queue) = self.queue.get() else {
            self.dropped.inc();
            return;
        };
        match queue.try_send(line) {
            Ok(()) => {
                self.lines.inc();
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// The writer: takes what is queued, writes it in one go, and flushes once the queue is empty,
/// so a burst costs a few writes rather than one per line.
fn write_out(rx: &Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let mut next = Some(line);
        while let Some(line) = next {
            if out.write_all(line.as_bytes()).is_err() || out.write_all(b"\n").is_err() {
                tracing::warn!("the access log cannot be written; lines are lost");
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            tracing::warn!("the access log cannot be written; lines are lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_trace_id_of_a_well_formed_traceparent_only() {
        let id = TraceId::from_traceparent(GOOD).unwrap();
        assert_eq!(id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // A later version may append fields.
        let later = b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(TraceId::from_traceparent(later).is_some());
        let bad: [&[u8]; 8] = [
            b"",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ];
        for v in bad {
            assert!(
                TraceId::from_traceparent(v).is_none(),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    fn policy(yaml: &str) -> Option<Sampling> {
        let doc = format!("kind: Service\nname: s\n{yaml}");
        let mut rs = ferrule_config::parse_documents(&doc, "t.yaml").unwrap();
        let ferrule_config::Resource::Service(s) = rs.remove(0) else {
            panic!()
        };
        Sampling::of(s.access_log.as_ref())
    }

    #[test]
    fn off_policies_compile_to_nothing_and_full_ones_keep_everything() {
        assert_eq!(policy(""), None);
        assert_eq!(policy("accessLog: {enabled: false}\n"), None);
        assert_eq!(policy("accessLog: {percent: 0}\n"), None);
        let all = policy("accessLog: {}\n").unwrap();
        for _ in 0..100 {
            assert!(all.sample(|| None));
        }
        let s = Sampled::read(Some(GOOD));
        assert_eq!(
            s.trace_id.unwrap().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(Sampled::read(Some(b"00-nonsense")).trace_id, None);
    }

    #[test]
    fn a_share_keeps_about_that_share_and_the_same_trace_ids_everywhere() {
        let tenth = policy("accessLog: {percent: 10}\n").unwrap();
        let kept = (0..20_000).filter(|_| tenth.sample(|| None)).count();
        assert!((1_600..2_400).contains(&kept), "{kept} of 20000 at 10%");
        // By trace id: the same ids are kept each time, and about a tenth of them.
        let ids: Vec<String> = (0..5_000u64)
            .map(|i| {
                let low = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                format!("00-0123456789abcdef{low:016x}-00f067aa0ba902b7-01")
            })
            .collect();
        let keep = |ids: &[String]| -> Vec<bool> {
            ids.iter()
                .map(|v| tenth.sample(|| Some(v.as_bytes())))
                .collect()
        };
        let first = keep(&ids);
        assert_eq!(first, keep(&ids));
        let n = first.iter().filter(|k| **k).count();
        assert!((350..650).contains(&n), "{n} of 5000 trace ids at 10%");
    }

    #[test]
    fn lines_without_a_started_writer_are_counted_as_dropped() {
        let sink = Sink::default();
        sink.write("{}".into());
        assert_eq!((sink.lines.get(), sink.dropped.get()), (0, 1));
    }

    #[test]
    fn lines_reach_the_file_in_order() {
        let path =
            std::env::temp_dir().join(format!("ferrule-access-unit-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sink = Sink::default();
        sink.start(&Destination::File(path.clone())).unwrap();
        for i in 0..100 {
            sink.write(format!("{{\"n\":{i}}}"));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 100 {
                let want: Vec<String> = (0..100).map(|i| format!("{{\"n\":{i}}}")).collect();
                assert_eq!(text.lines().collect::<Vec<_>>(), want);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!((sink.lines.get(), sink.dropped.get()), (100, 0));
        let _ = std::fs::remove_file(&path);
    }
}
