//! Federation between clusters, the pure part: the one-line invite a provider's bridge
//! prints, what bridges ask and tell each other over their link, and how a consumer's
//! functions are named on the provider.
//!
//! A peering is one-way: the *consumer* may send calls to the *provider*. Each cluster keeps
//! its own CA; the invite carries the provider's CA fingerprint, and the join exchange
//! gives each side the other's CA certificate, which it pins for the bridge-to-bridge link
//! only. Nothing else of one cluster's PKI reaches the other.

use serde::{Deserialize, Serialize};

use crate::access;

/// How an invite token starts.
pub const INVITE_PREFIX: &str = "fogfed1";
/// Most functions a summary lists as warm or with a service time.
pub const MAX_SUMMARY_LISTED: usize = 32;
/// Most namespaces a peer place lists.
pub const MAX_NAMESPACES: usize = 16;

/// An invite: where the provider's bridge listens for peers, its CA's SHA-256 fingerprint
/// and a one-time secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// `HOST:PORT` of the provider's federation listener.
    pub addr: String,
    pub ca_sha256: [u8; 32],
    pub secret: [u8; 32],
}

/// Why an invite token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid federation invite: {0}")]
pub struct InviteError(pub String);

impl Invite {
    /// `fogfed1.SECRET.FINGERPRINT@HOST:PORT`, hex: one line, no spaces, safe in a shell.
    pub fn text(&self) -> String {
        format!(
            "{INVITE_PREFIX}.{}.{}@{}",
            hex::encode(self.secret),
            hex::encode(self.ca_sha256),
            self.addr
        )
    }

    pub fn parse(text: &str) -> Result<Invite, InviteError> {
        let err = |m: &str| InviteError(m.to_string());
        let t = text.trim();
        let rest = t
            .strip_prefix(INVITE_PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(|| {
                err("it does not start with `fogfed1.` (made by `fogline federation invite`)")
            })?;
        let (keys, addr) = rest
            .split_once('@')
            .ok_or_else(|| err("it names no address (`…@HOST:PORT`)"))?;
        let (secret, fp) = keys
            .split_once('.')
            .ok_or_else(|| err("it lacks the CA fingerprint"))?;
        let hex32 = |s: &str, what: &str| -> Result<[u8; 32], InviteError> {
            let v = hex::decode(s)
                .map_err(|_| InviteError(format!("its {what} is not hexadecimal")))?;
            v.try_into()
                .map_err(|_| InviteError(format!("its {what} is not 32 bytes")))
        };
        let secret = hex32(secret, "secret")?;
        let ca_sha256 = hex32(fp, "CA fingerprint")?;
        if addr.is_empty() || addr.len() > 255 || !addr.contains(':') || addr.contains(' ') {
            return Err(err("its address must be HOST:PORT"));
        }
        Ok(Invite {
            addr: addr.to_string(),
            ca_sha256,
            secret,
        })
    }
}

/// A peer's name: a DNS label (it becomes a namespace on the provider).
pub fn validate_peer_name(name: &str) -> Result<(), String> {
    if access::is_label(name) && name != access::DEFAULT_NAMESPACE {
        Ok(())
    } else {
        Err(format!(
            "peer name {name:?} must be 1 to 63 lowercase letters, digits or '-' (not {:?})",
            access::DEFAULT_NAMESPACE
        ))
    }
}

/// The key a consumer's function has on the provider: in a namespace named after the
/// consumer, so peers never see or replace each other's functions (or the provider's).
/// `hello` of `cluster-a` is `hello.cluster-a`; `hello.team` is `team--hello.cluster-a`.
pub fn provider_key(consumer: &str, key: &str) -> Result<String, String> {
    let (name, ns) = access::split(key);
    let name = if ns == access::DEFAULT_NAMESPACE {
        name.to_string()
    } else {
        format!("{ns}--{name}")
    };
    access::qualify(&name, Some(consumer))
        .map_err(|e| format!("{key:?} cannot be named on the provider: {e}"))
}

/// The key on the consumer of its function `provider_key` names on the provider (the
/// inverse of [`provider_key`]); none for a function of another namespace.
pub fn consumer_key(consumer: &str, provider_key: &str) -> Option<String> {
    let name = provider_key.strip_suffix(consumer)?.strip_suffix('.')?;
    Some(match name.split_once("--") {
        Some((ns, n)) => format!("{n}.{ns}"),
        None => name.to_string(),
    })
}

/// One member as a summary counts it.
#[derive(Debug, Clone, Copy)]
pub struct MemberLoad<'a> {
    pub cores: u32,
    /// Calls running and queued there.
    pub in_flight: u32,
    pub speed: f32,
    /// Its warm functions and service times, keyed as on the provider.
    pub warm: &'a [String],
    pub service_ms: &'a [(String, f32)],
}

/// The provider's summary for `consumer` of the members that run functions: the offered
/// share of their free cores (at least one while any member is up), their load, mean speed,
/// and the consumer's functions warm there (keyed as on the consumer; with no consumer, a
/// site of the same cluster, keys are the same on both sides). Its size is bounded whatever
/// the number of members.
pub fn summarize<'a>(
    members: impl IntoIterator<Item = MemberLoad<'a>>,
    consumer: Option<&str>,
    share_pct: u8,
) -> Summary {
    let theirs = |k: &str| match consumer {
        Some(c) => consumer_key(c, k),
        None => Some(k.to_string()),
    };
    let mut s = Summary::default();
    let (mut speed, mut rated) = (0.0f32, 0u32);
    let mut service: std::collections::BTreeMap<String, f32> = Default::default();
    let mut warm = std::collections::BTreeSet::new();
    for m in members {
        s.members += 1;
        s.cores = s.cores.saturating_add(m.cores);
        s.in_flight = s.in_flight.saturating_add(m.in_flight);
        if m.speed.is_finite() && m.speed > 0.0 {
            speed += m.speed;
            rated += 1;
        }
        for k in m.warm {
            if warm.len() < MAX_SUMMARY_LISTED {
                if let Some(c) = theirs(k) {
                    warm.insert(c);
                }
            }
        }
        for (k, ms) in m.service_ms {
            if let Some(c) = theirs(k) {
                // The slowest member's time: a call may land on any of them.
                let e = service.entry(c).or_insert(*ms);
                *e = e.max(*ms);
            }
        }
    }
    if rated > 0 {
        s.speed = speed / rated as f32;
    }
    let free = s.cores.saturating_sub(s.in_flight);
    let shared = u64::from(free) * u64::from(share_pct.min(100)) / 100;
    s.cores = (shared as u32).max(u32::from(s.members > 0));
    s.warm = warm.into_iter().collect();
    s.service_ms = service.into_iter().collect();
    s.bounded()
}

/// What a bridge asks a peer bridge on their link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FedRequest {
    /// The consumer's first exchange, before its CA is pinned: the invite's secret, the
    /// name it asks to be known by, and its CA certificate (DER), which must have issued the
    /// certificate it connected with.
    Join {
        secret: Vec<u8>,
        name: String,
        ca: Vec<u8>,
    },
    /// The provider's summary (also the link's liveness probe and round-trip sample).
    Summary,
    /// The consumer ends the peering.
    Leave,
}

/// A bridge's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FedReply {
    /// The provider's name and CA certificate (DER), and the share of its free capacity
    /// offered, in percent.
    Joined {
        name: String,
        ca: Vec<u8>,
        share_pct: u8,
    },
    Summary(Summary),
    Left,
}

/// A cluster as one place: bounded in size whatever its number of members.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Members alive that run functions.
    pub members: u32,
    /// Cores offered: the shared part of the free cores, at least one while any member is up.
    pub cores: u32,
    /// Calls running and waiting there now.
    pub in_flight: u32,
    /// Mean advertised speed of its members (1.0: the reference machine; 0: unknown).
    pub speed: f32,
    /// The consumer's functions loaded there, by their key on the consumer.
    pub warm: Vec<String>,
    /// Their recent mean service times there, ms.
    pub service_ms: Vec<(String, f32)>,
    /// The provider's own time to place a call inside its cluster (from taking it to
    /// its answer, less the function's run), ms: what the link's round trip does not show.
    pub placement_ms: f32,
    /// The consumer's namespaces this provider refuses (so the consumer stops offering
    /// them).
    pub refused: Vec<String>,
}

impl Summary {
    /// Cut to its bounds and stripped of unusable figures (it comes from another cluster).
    pub fn bounded(mut self) -> Summary {
        self.warm.truncate(MAX_SUMMARY_LISTED);
        self.service_ms
            .retain(|(_, ms)| ms.is_finite() && *ms >= 0.0);
        self.service_ms.truncate(MAX_SUMMARY_LISTED);
        self.refused.truncate(MAX_SUMMARY_LISTED);
        if !(self.speed.is_finite() && (0.0..=1000.0).contains(&self.speed)) {
            self.speed = 0.0;
        }
        if !(self.placement_ms.is_finite() && (0.0..=MAX_PLACEMENT_MS).contains(&self.placement_ms))
        {
            self.placement_ms = 0.0;
        }
        self
    }
}

/// A provider's placement time beyond which its figure is taken as nonsense, ms.
const MAX_PLACEMENT_MS: f32 = 60_000.0;

/// The placement time a provider reports: what it measured on calls it placed for peers
/// (smoothed), or before any, one round trip to its members (the median of the pinged
/// ones: a call handed to a member costs one), or nothing when it has none.
pub fn placement_estimate(measured: Option<f64>, member_rtts: &[f64]) -> f32 {
    if let Some(m) = measured.filter(|m| m.is_finite() && *m >= 0.0) {
        return m as f32;
    }
    let mut rtts: Vec<f64> = member_rtts
        .iter()
        .copied()
        .filter(|r| r.is_finite() && *r >= 0.0)
        .collect();
    if rtts.is_empty() {
        return 0.0;
    }
    rtts.sort_by(f64::total_cmp);
    rtts[rtts.len() / 2] as f32
}

/// The consumer's namespaces `offloaded` to a provider that it still takes, by its summary.
pub fn still_taken(offloaded: Vec<String>, summary: &Summary) -> Vec<String> {
    offloaded
        .into_iter()
        .filter(|ns| !summary.refused.contains(ns))
        .collect()
}

/// A peer cluster as a consumer's bridge offers it to its own routers (gossiped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerPlace {
    /// The peering's name (`cluster-b`): the place's name.
    pub name: String,
    /// Round trip bridge to bridge (smoothed) plus the provider's placement time, ms.
    pub rtt_ms: f32,
    pub summary: Summary,
    /// Namespaces the consumer offloads there.
    pub namespaces: Vec<String>,
}

/// The peer places one bridge offers, gossiped every interval while it has any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerPlaces {
    /// The bridge (member name) that relays calls to them.
    pub bridge: String,
    pub seq: u64,
    pub places: Vec<PeerPlace>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_round_trip_and_bad_ones_say_why() {
        let i = Invite {
            addr: "10.0.0.2:7443".into(),
            ca_sha256: [7; 32],
            secret: [9; 32],
        };
        let t = i.text();
        assert!(!t.contains(' ') && t.starts_with("fogfed1."));
        assert_eq!(Invite::parse(&t), Ok(i.clone()));
        assert_eq!(Invite::parse(&format!("  {t}\n")), Ok(i));
        for (bad, why) in [
            ("hello", "does not start"),
            ("fogfed1.aa", "no address"),
            ("fogfed1.aa@h:1", "fingerprint"),
            ("fogfed1.zz.aa@h:1", "not hexadecimal"),
            ("fogfed1.aa.aa@h:1", "not 32 bytes"),
        ] {
            let e = Invite::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let no_port = format!("fogfed1.{}.{}@host", "a".repeat(64), "b".repeat(64));
        assert!(Invite::parse(&no_port)
            .unwrap_err()
            .to_string()
            .contains("HOST:PORT"));
    }

    #[test]
    fn a_consumers_functions_live_in_its_own_namespace() {
        assert_eq!(
            provider_key("cluster-a", "hello").unwrap(),
            "hello.cluster-a"
        );
        assert_eq!(
            provider_key("cluster-a", "hello.team").unwrap(),
            "team--hello.cluster-a"
        );
        assert!(provider_key("cluster-a", &format!("{}.team", "x".repeat(60))).is_err());
        assert!(validate_peer_name("cluster-b").is_ok());
        assert!(validate_peer_name("openfaas-fn").is_err());
        assert!(validate_peer_name("Bad Name").is_err());
    }

    #[test]
    fn a_summary_of_a_thousand_members_stays_small() {
        let warm: Vec<String> = (0..48).map(|i| format!("f{i}.cluster-a")).collect();
        let svc: Vec<(String, f32)> = (0..48)
            .map(|i| (format!("f{i}.cluster-a"), i as f32))
            .collect();
        let other = vec!["mine".to_string()];
        let members = (0..1000).map(|i| MemberLoad {
            cores: 4,
            in_flight: i % 3,
            speed: 1.0,
            warm: if i % 2 == 0 { &warm } else { &other },
            service_ms: &svc,
        });
        let s = summarize(members, Some("cluster-a"), 50);
        assert_eq!(s.members, 1000);
        assert_eq!(s.in_flight, (0..1000).map(|i| i % 3).sum::<u32>());
        assert_eq!(s.cores, (4000 - s.in_flight) / 2);
        assert_eq!(s.warm.len(), MAX_SUMMARY_LISTED);
        assert!(s
            .warm
            .iter()
            .all(|w| w.starts_with('f') && !w.contains('.')));
        assert_eq!(s.service_ms.len(), MAX_SUMMARY_LISTED);
        let bytes = postcard::to_allocvec(&FedReply::Summary(s)).unwrap().len();
        assert!(bytes < 1024, "{bytes} bytes");
        assert_eq!(
            consumer_key("cluster-a", "team--hello.cluster-a").as_deref(),
            Some("hello.team")
        );
        assert_eq!(consumer_key("cluster-a", "hello.cluster-b"), None);
        assert_eq!(consumer_key("a", "hello.xa"), None);
        let none = summarize(std::iter::empty(), None, 50);
        assert_eq!((none.members, none.cores), (0, 0));
    }

    #[test]
    fn summaries_are_bounded() {
        let s = Summary {
            warm: (0..100).map(|i| format!("f{i}")).collect(),
            service_ms: vec![("a".into(), f32::NAN), ("b".into(), 2.0)],
            speed: f32::INFINITY,
            placement_ms: -1.0,
            refused: (0..100).map(|i| format!("ns{i}")).collect(),
            ..Summary::default()
        }
        .bounded();
        assert_eq!(s.warm.len(), MAX_SUMMARY_LISTED);
        assert_eq!(s.refused.len(), MAX_SUMMARY_LISTED);
        assert_eq!(s.service_ms, vec![("b".to_string(), 2.0)]);
        assert_eq!((s.speed, s.placement_ms), (0.0, 0.0));
        let huge = Summary {
            placement_ms: f32::NAN,
            ..Summary::default()
        };
        assert_eq!(huge.bounded().placement_ms, 0.0);
    }

    #[test]
    fn placement_time_is_measured_or_one_hop_to_a_member() {
        // Measured wins; before any call, the median member round trip; else nothing.
        assert_eq!(placement_estimate(Some(1.5), &[9.0]), 1.5);
        assert_eq!(placement_estimate(None, &[0.9, 0.3, f64::NAN, 0.5]), 0.5);
        assert_eq!(placement_estimate(Some(f64::NAN), &[]), 0.0);
    }

    #[test]
    fn refused_namespaces_are_not_offered() {
        let s = Summary {
            refused: vec!["team".into()],
            ..Summary::default()
        };
        let ns = vec!["openfaas-fn".to_string(), "team".to_string()];
        assert_eq!(still_taken(ns, &s), vec!["openfaas-fn".to_string()]);
    }
}
