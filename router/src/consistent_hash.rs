//! The `x-consistent-hash` exchange, with the semantics of RabbitMQ's
//! rabbitmq_consistent_hash_exchange plugin
//! (deps/rabbitmq_consistent_hash_exchange/src/rabbit_exchange_type_consistent_hash.erl):
//!
//! - a binding's key is its integer weight, 1..=10000; the destination gets
//!   that many consecutive buckets at the end of the ring (a second binding to
//!   the same destination adds no buckets; removing a destination's last
//!   binding removes its buckets and shifts the later ones down, as the plugin
//!   does — the plugin does so at the removal of *any* of its bindings, which
//!   leaves a still-bound queue without traffic; Mailroom does not);
//! - a message goes to exactly one destination: the bucket chosen by jump
//!   consistent hashing (Lamping & Veach, 2014) of a hash of its routing key
//!   (the first one only: CC keys do not count), of a header (`hash-header`),
//!   or of a property (`hash-property`: `message_id`, `correlation_id`,
//!   `timestamp`). A missing value hashes as a fixed marker, as the plugin
//!   hashes `undefined`, so such messages all go to one destination.
//!
//! Jump hashing moves only about 1/N of the keys when buckets are appended,
//! and spreads keys over buckets uniformly, so traffic follows the weights.
//! The key hash is FNV-1a 64 with a splitmix64 finaliser: stable across
//! processes and restarts (unlike the router's randomised maps), so the same
//! key reaches the same queue after a restart, as long as the ring's order is
//! restored (`Router::ring_order` / `Router::restore_ring_order`).

use crate::args::{ArgValue, Args};
use crate::index::DestId;
use crate::{ErrorKind, RouterError};

/// The plugin's `?MAX_BINDING_WEIGHT`.
pub const MAX_BINDING_WEIGHT: i64 = 10_000;

/// The properties a consistent-hash exchange may hash on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashProperty {
    MessageId,
    CorrelationId,
    Timestamp,
}

/// What the exchange hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    RoutingKey,
    Header(String),
    Property(HashProperty),
}

/// The message properties routing may need (only consistent-hash exchanges
/// with `hash-property` read them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsgProps<'a> {
    pub message_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    /// The AMQP timestamp property (seconds).
    pub timestamp: Option<u64>,
}

fn precondition(text: String) -> RouterError {
    RouterError::new(ErrorKind::PreconditionFailed, text)
}

/// The plugin's `validate/1` on the exchange's arguments, and what it hashes.
/// Only `longstr` values count (others are ignored, as the plugin's
/// `hash_args/1` only matches `{longstr, V}`).
pub fn hash_on(args: &Args) -> Result<HashOn, RouterError> {
    let s = |k: &str| match args.get(k) {
        Some(ArgValue::Str(v)) => Some(v.clone()),
        Some(ArgValue::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    match (s("hash-header"), s("hash-property")) {
        (None, None) => Ok(HashOn::RoutingKey),
        (Some(h), None) => Ok(HashOn::Header(h)),
        (None, Some(p)) => match p.as_str() {
            "message_id" => Ok(HashOn::Property(HashProperty::MessageId)),
            "correlation_id" => Ok(HashOn::Property(HashProperty::CorrelationId)),
            "timestamp" => Ok(HashOn::Property(HashProperty::Timestamp)),
            other => Err(precondition(format!("Unsupported property: {other}"))),
        },
        (Some(_), Some(_)) => Err(precondition(
            "hash-header and hash-property are mutually exclusive".into(),
        )),
    }
}

/// The plugin's `validate_binding/2`: the key is an integer weight in
/// 1..=10000. Texts as RabbitMQ sends them (`~tp` of the binary key).
pub fn parse_weight(key: &str) -> Result<u32, RouterError> {
    let t = key.strip_prefix(['+', '-']).unwrap_or(key);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(precondition(format!(
            "The binding key must be an integer: <<\"{key}\">>"
        )));
    }
    let negative = key.starts_with('-');
    // Erlang integers are unbounded: a huge weight is "too big", not "not an integer".
    let v: i64 = t.parse().unwrap_or(i64::MAX);
    let v = if negative { -v } else { v };
    if v < 1 {
        return Err(precondition("The binding key must be greater than 0".into()));
    }
    if v > MAX_BINDING_WEIGHT {
        return Err(precondition(format!(
            "The binding key must not exceed {MAX_BINDING_WEIGHT}"
        )));
    }
    Ok(v as u32)
}

/// The bucket ring of one exchange.
#[derive(Debug, Default)]
pub struct HashRing {
    /// (destination, weight) in ring order; destination `i` owns the buckets
    /// after those of destinations `0..i`.
    members: Vec<(DestId, u32)>,
    /// bucket number -> destination.
    buckets: Vec<DestId>,
}

impl HashRing {
    /// Adds `dest` with `weight` buckets at the end, unless it is already on
    /// the ring (the plugin's `already_exists`).
    pub fn add(&mut self, dest: DestId, weight: u32) -> bool {
        if self.members.iter().any(|(d, _)| *d == dest) {
            return false;
        }
        self.members.push((dest, weight));
        self.buckets.extend(std::iter::repeat_n(dest, weight as usize));
        true
    }

    /// Removes `dest`'s buckets; later buckets move down.
    pub fn remove(&mut self, dest: DestId) -> bool {
        let Some(i) = self.members.iter().position(|(d, _)| *d == dest) else {
            return false;
        };
        self.members.remove(i);
        self.buckets.retain(|d| *d != dest);
        true
    }

    pub fn contains(&self, dest: DestId) -> bool {
        self.members.iter().any(|(d, _)| *d == dest)
    }

    pub fn members(&self) -> impl Iterator<Item = DestId> + '_ {
        self.members.iter().map(|(d, _)| *d)
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Reorders the members to follow `order` (destinations not on the ring
    /// are ignored; members not named keep their relative order, after the
    /// named ones). Used at recovery to restore the ring as it was.
    pub fn reorder(&mut self, order: &[DestId]) {
        let mut members = Vec::with_capacity(self.members.len());
        for d in order {
            if let Some(i) = self.members.iter().position(|(m, _)| m == d) {
                members.push(self.members.remove(i));
            }
        }
        members.append(&mut self.members);
        self.members = members;
        self.buckets.clear();
        for (d, w) in &self.members {
            self.buckets.extend(std::iter::repeat_n(*d, *w as usize));
        }
    }

    /// The destination for a key hash.
    #[inline]
    pub fn pick(&self, key_hash: u64) -> Option<DestId> {
        if self.buckets.is_empty() {
            return None;
        }
        let b = jump_consistent_hash(key_hash, self.buckets.len() as u32);
        self.buckets.get(b as usize).copied()
    }
}

/// Jump consistent hash (Lamping & Veach, "A Fast, Minimal Memory, Consistent
/// Hash Algorithm", 2014): a bucket in `0..n`; growing `n` to `n + 1` moves
/// only the keys that land in the new bucket.
pub fn jump_consistent_hash(mut key: u64, n: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / (((key >> 33) + 1) as f64))) as i64;
    }
    b.max(0) as u32
}

/// A stable 64-bit hash of bytes: FNV-1a, then splitmix64's finaliser (FNV's
/// low bits alone are weak; jump hashing consumes the whole word).
#[inline]
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The hash of a missing value (the plugin hashes the atom `undefined`).
const MISSING: &[u8] = b"\xffundefined";

fn hash_value(v: &ArgValue) -> u64 {
    match v {
        ArgValue::Str(s) => stable_hash(s.as_bytes()),
        ArgValue::Bytes(b) => stable_hash(b),
        ArgValue::Int(i, _) => stable_hash(i.to_string().as_bytes()),
        ArgValue::Timestamp(t) => stable_hash(t.to_string().as_bytes()),
        // The plugin hashes the head of a list.
        ArgValue::Array(a) => a.first().map(hash_value).unwrap_or_else(|| stable_hash(b"[]")),
        other => stable_hash(other.erl_format().as_bytes()),
    }
}

/// The key hash of a message for an exchange hashing on `on`.
pub fn key_hash(on: &HashOn, routing_key: &str, headers: &[(String, ArgValue)], props: &MsgProps) -> u64 {
    match on {
        HashOn::RoutingKey => stable_hash(routing_key.as_bytes()),
        HashOn::Header(h) => match headers.iter().find(|(k, _)| k == h) {
            Some((_, v)) => hash_value(v),
            None => stable_hash(MISSING),
        },
        HashOn::Property(p) => {
            let v = match p {
                HashProperty::MessageId => props.message_id.map(|s| stable_hash(s.as_bytes())),
                HashProperty::CorrelationId => props.correlation_id.map(|s| stable_hash(s.as_bytes())),
                HashProperty::Timestamp => props.timestamp.map(|t| stable_hash(t.to_string().as_bytes())),
            };
            v.unwrap_or_else(|| stable_hash(MISSING))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_validated_with_the_plugins_texts() {
        assert_eq!(parse_weight("1"), Ok(1));
        assert_eq!(parse_weight("10000"), Ok(10_000));
        assert_eq!(parse_weight("+7"), Ok(7));
        let text = |k: &str| parse_weight(k).unwrap_err().text;
        assert_eq!(text("abc"), "The binding key must be an integer: <<\"abc\">>");
        assert_eq!(text(""), "The binding key must be an integer: <<\"\">>");
        assert_eq!(text("1.5"), "The binding key must be an integer: <<\"1.5\">>");
        assert_eq!(text("0"), "The binding key must be greater than 0");
        assert_eq!(text("-3"), "The binding key must be greater than 0");
        assert_eq!(text("10001"), "The binding key must not exceed 10000");
        assert_eq!(
            text("99999999999999999999999"),
            "The binding key must not exceed 10000"
        );
        assert_eq!(parse_weight("0").unwrap_err().kind, ErrorKind::PreconditionFailed);
    }

    #[test]
    fn exchange_arguments_are_validated_with_the_plugins_texts() {
        let a = |k: &str, v: &str| Args::new().with(k, ArgValue::Str(v.into()));
        assert_eq!(hash_on(&Args::new()), Ok(HashOn::RoutingKey));
        assert_eq!(hash_on(&a("hash-header", "h")), Ok(HashOn::Header("h".into())));
        assert_eq!(
            hash_on(&a("hash-property", "message_id")),
            Ok(HashOn::Property(HashProperty::MessageId))
        );
        assert_eq!(
            hash_on(&a("hash-property", "priority")).unwrap_err().text,
            "Unsupported property: priority"
        );
        let both = a("hash-header", "h").with("hash-property", ArgValue::Str("timestamp".into()));
        assert_eq!(
            hash_on(&both).unwrap_err().text,
            "hash-header and hash-property are mutually exclusive"
        );
    }

    #[test]
    fn jump_hash_stays_in_range_and_is_monotone() {
        for k in 0..2000u64 {
            let key = stable_hash(&k.to_be_bytes());
            let mut prev = 0;
            for n in 1..40 {
                let b = jump_consistent_hash(key, n);
                assert!(b < n);
                // Growing n either keeps the bucket or moves the key to the new bucket.
                assert!(b == prev || b == n - 1, "key {k}: {prev} -> {b} at n={n}");
                prev = b;
            }
        }
    }

    #[test]
    fn ring_add_remove_reorder() {
        let (q1, q2, q3) = (DestId::Queue(1), DestId::Queue(2), DestId::Queue(3));
        let mut r = HashRing::default();
        assert!(r.add(q1, 2));
        assert!(r.add(q2, 3));
        assert!(!r.add(q1, 5), "a destination is on the ring once");
        assert_eq!(r.bucket_count(), 5);
        assert!(r.add(q3, 1));
        assert!(r.remove(q2));
        assert!(!r.remove(q2));
        assert_eq!(r.buckets, vec![q1, q1, q3]);
        r.reorder(&[q3, q1]);
        assert_eq!(r.buckets, vec![q3, q1, q1]);
        assert_eq!(r.members().collect::<Vec<_>>(), vec![q3, q1]);
    }
}
