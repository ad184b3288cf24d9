//! The sidecar's own log (its diagnostics, on stderr): the format, chosen at start, and the
//! level filter, which the admin endpoint reads and replaces while the sidecar runs
//! (`GET`/`POST /log-level`).
//!
//! The filter sits in a `tracing_subscriber::reload` layer. A replaced filter rebuilds
//! tracing's per-callsite interest cache, so a `debug!` on the request path that the filter
//! turns off costs what it cost before: a cached "never" at the callsite, no lock.

use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (`timestamp`, `level`, `target`, `message` and the event's
    /// fields at the top level), for a log collector.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

impl LogFormat {
    /// The default when none is given: text for a person at a terminal, JSON otherwise. A
    /// sidecar's stderr is a pipe read by the container runtime and shipped to a collector,
    /// which then gets fields it can query instead of text to parse with regexes; someone
    /// running the proxy by hand still gets readable lines.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            _ => Err(format!("{s:?} is not a log format (use json or text)")),
        }
    }
}

/// Reads and replaces the level filter of the installed subscriber.
#[derive(Debug, Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

impl LogLevel {
    /// The filter in force, in the syntax `set` takes.
    pub fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }

    /// Replaces the filter: a comma-separated list of `level` or `target=level` directives,
    /// e.g. `warn` or `ferrule_proxy=debug,info`. A bad filter is refused with the reason and
    /// the filter in force stays. Returns the new filter.
    pub fn set(&self, directives: &str) -> Result<String, String> {
        let directives = directives.trim();
        if directives.is_empty() {
            return Err(
                "no filter given: send one such as `warn` or `ferrule_proxy=debug,info`".into(),
            );
        }
        // `EnvFilter` reads a bare word as a target to log at every level, so a mistyped
        // level (`verbose`) would silently mean "trace for the target `verbose`". Here a
        // directive without `=` must be a level.
        for d in directives.split(',').map(str::trim) {
            if !d.contains('=')
                && !d.contains('[')
                && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
            {
                return Err(format!(
                    "{d:?} is not a level (use one of {}, or target=level)",
                    LEVELS.join(", ")
                ));
            }
        }
        let filter = EnvFilter::builder()
            .parse(directives)
            .map_err(|e| format!("{directives:?} is not a log filter: {e}"))?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("the log filter could not be replaced: {e}"))?;
        Ok(self.current())
    }
}

/// The handle of the subscriber [`init`] installed: the subscriber is process-global, and so
/// is the one way to change its filter.
static INSTALLED: OnceLock<LogLevel> = OnceLock::new();

/// The level of the installed subscriber, if this process installed one with [`init`].
pub fn installed() -> Option<&'static LogLevel> {
    INSTALLED.get()
}

/// Installs the global subscriber: stderr in `format`, filtered by `FERRULE_LOG` (default
/// `info`); [`installed`] then gives the handle that changes the filter.
pub fn init(format: LogFormat) {
    let initial = EnvFilter::try_from_env("FERRULE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(initial);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
    let _ = INSTALLED.set(LogLevel { handle });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_others_are_refused() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        let e = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(e.contains("\"yaml\""), "{e}");
    }

    #[test]
    fn a_filter_is_replaced_and_a_bad_one_refused_keeping_the_old() {
        let (layer, handle) = reload::Layer::new(EnvFilter::new("info"));
        // The handle needs its layer alive (and a subscriber for it), as in `init`.
        let _subscriber = tracing_subscriber::registry().with(layer);
        let level = LogLevel { handle };
        assert_eq!(level.current(), "info");
        assert_eq!(level.set(" warn\n").unwrap(), "warn");
        let set = level.set("ferrule_proxy=debug,info").unwrap();
        assert!(set.contains("ferrule_proxy=debug"), "{set}");
        for bad in ["", "verbose", "info,loud", "ferrule_proxy=shouting"] {
            assert!(level.set(bad).is_err(), "{bad:?} accepted");
            assert!(level.current().contains("ferrule_proxy=debug"));
        }
        let e = level.set("verbose").unwrap_err();
        assert!(e.contains("\"verbose\" is not a level"), "{e}");
    }
}
