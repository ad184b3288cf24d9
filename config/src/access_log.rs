//! A service's access-log policy: whether the requests to it are written to the sidecars'
//! access log, and which share of them.
//!
//! ```yaml
//! kind: Service
//! name: echo
//! accessLog: { enabled: true, percent: 10 }   # percent: 0 to 100, decimals allowed (0.5)
//! ```
//!
//! Off when absent: an access line per request is a cost the operator opts into, per service.
//! The block alone turns it on (`enabled` defaults to `true`, `percent` to 100), and
//! `enabled: false` switches it off while keeping the share written down. Both ends of a hop
//! follow the policy of the service called: the caller's sidecar for its outbound request,
//! the service's own sidecars for their inbound one. The sample is drawn from the request's
//! W3C trace id when it has one, so both ends keep the same requests.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{type_name, Diag, Obj};

/// The access-log policy of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessLog {
    /// Whether requests to the service are logged.
    #[serde(default = "on")]
    pub enabled: bool,
    /// The share of requests logged.
    #[serde(default)]
    pub percent: Share,
}

fn on() -> bool {
    true
}

impl AccessLog {
    /// The share of requests to log, in parts per million; 0 when the policy is off.
    pub fn parts_per_million(&self) -> u32 {
        if self.enabled {
            self.percent.0
        } else {
            0
        }
    }
}

/// A share of requests, written in percent with up to four decimals (`0.0001` to `100`).
/// Kept as parts per million so that the policy stays `Eq`, like the rest of a `Service`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Share(u32);

/// One hundred percent, in parts per million.
pub const ALL: u32 = 1_000_000;

impl Default for Share {
    fn default() -> Self {
        Share(ALL)
    }
}

impl Share {
    /// The share of `percent` percent, rounded to the nearest part per million; `None` outside
    /// 0 to 100.
    pub fn from_percent(percent: f64) -> Option<Share> {
        (0.0..=100.0)
            .contains(&percent)
            .then(|| Share((percent * 10_000.0).round() as u32))
    }

    /// The share in parts per million.
    pub fn parts_per_million(self) -> u32 {
        self.0
    }
}

impl Serialize for Share {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Whole percentages print as integers (`10`, not `10.0`), as an operator writes them.
        if self.0.is_multiple_of(10_000) {
            s.serialize_u32(self.0 / 10_000)
        } else {
            s.serialize_f64(f64::from(self.0) / 10_000.0)
        }
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = f64::deserialize(d)?;
        Share::from_percent(p).ok_or_else(|| {
            serde::de::Error::custom(format!("percent must be between 0 and 100, found {p}"))
        })
    }
}

/// Decodes `accessLog` at `path`, recording every problem in `d`.
pub(crate) fn decode(d: &Diag, path: String, v: &Value) -> Option<AccessLog> {
    let mut o = Obj::new(d, path, v);
    let mut ok = matches!(v, Value::Object(_));
    let enabled = if o.has("enabled") {
        o.bool("enabled")
    } else {
        o.field("enabled");
        Some(true)
    };
    ok &= enabled.is_some();
    let percent = match o.field("percent") {
        None => Some(Share::default()),
        Some((v, path)) => {
            let share = v.as_f64().and_then(Share::from_percent);
            if share.is_none() {
                let found = match v {
                    Value::Number(n) => n.to_string(),
                    other => type_name(other).to_owned(),
                };
                d.err(
                    &path,
                    format!("must be a number from 0 to 100 (a percentage), found {found}"),
                );
            }
            share
        }
    };
    ok &= percent.is_some();
    o.finish();
    ok.then(|| AccessLog {
        enabled: enabled.unwrap_or(true),
        percent: percent.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use crate::{parse_documents, Resource};

    fn service(doc: &str) -> Result<crate::Service, String> {
        match parse_documents(doc, "test.yaml") {
            Ok(mut rs) => match rs.remove(0) {
                Resource::Service(s) => Ok(s),
                other => panic!("not a service: {other:?}"),
            },
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn off_unless_written_and_on_by_the_block_alone() {
        let s = service("kind: Service\nname: echo\n").unwrap();
        assert_eq!(s.access_log, None);
        let s = service("kind: Service\nname: echo\naccessLog: {}\n").unwrap();
        let a = s.access_log.unwrap();
        assert!(a.enabled);
        assert_eq!(a.parts_per_million(), 1_000_000);
        let s = service("kind: Service\nname: echo\naccessLog: {enabled: false, percent: 5}\n")
            .unwrap();
        assert_eq!(s.access_log.unwrap().parts_per_million(), 0);
    }

    #[test]
    fn percent_takes_decimals_and_prints_back_as_written() {
        for (written, ppm) in [("10", 100_000), ("0.5", 5_000), ("0.0001", 1), ("0", 0)] {
            let doc = format!("kind: Service\nname: echo\naccessLog: {{percent: {written}}}\n");
            let s = service(&doc).unwrap();
            assert_eq!(s.access_log.unwrap().percent.parts_per_million(), ppm);
            let json = serde_json::to_value(Resource::Service(s.clone())).unwrap();
            assert_eq!(json["accessLog"]["percent"].to_string(), written);
            let back: Vec<Resource> =
                parse_documents(&serde_json::to_string(&[&json]).unwrap(), "x.json").unwrap();
            assert_eq!(back, vec![Resource::Service(s)]);
        }
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let e = service(
            "kind: Service\nname: echo\naccessLog: {enabled: yes please, percent: 101, sample: 3}\n",
        )
        .unwrap_err();
        assert!(
            e.contains("accessLog.enabled: must be true or false"),
            "{e}"
        );
        assert!(
            e.contains(
                "accessLog.percent: must be a number from 0 to 100 (a percentage), found 101"
            ),
            "{e}"
        );
        assert!(
            e.contains("accessLog.sample: unknown field (expected one of: enabled, percent)"),
            "{e}"
        );
        let e = service("kind: Service\nname: echo\naccessLog: {percent: ten}\n").unwrap_err();
        assert!(e.contains("found a string"), "{e}");
        let e = service("kind: Service\nname: echo\naccessLog: true\n").unwrap_err();
        assert!(e.contains("accessLog: must be a mapping"), "{e}");
    }
}
