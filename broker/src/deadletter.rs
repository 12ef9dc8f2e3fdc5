//! Dead letters as RabbitMQ writes and reads them: the `x-death` rewrite, the history a message carries, the
//! cycle rule. Pure functions over messages; `VHost::dead_letter` routes dead letters with them and
//! `VHost::redrive` reads their history.

use protocol::{FieldTable, FieldValue, LongStr, RawProperties};

use crate::message::Message;

fn text(t: &FieldTable, k: &str) -> Option<String> {
    t.get(k).and_then(|v| v.as_str()).map(str::to_owned)
}

/// The properties of a dead-lettered message: `x-death` gets an entry for (queue, reason) (its count raised if
/// it had one; the entry moves to the front, most recent first), `x-first-death-*` is set once and
/// `x-last-death-*` every time; the `expiration` property moves into the entry as `original-expiration`.
/// The entry's `routing-keys` are the message's routing key and its `CC` keys, not its `BCC` keys
/// (rabbitmq-server mc.erl `record_death/3`: "should include CC, but exclude BCC"). Built from the properties
/// as published, so a `BCC` header stays for the store (`Message::new` takes it out of every delivery).
pub fn with_x_death(msg: &Message, queue: &str, reason: &str, now_ms: u64) -> RawProperties {
    let mut props = msg.stored_properties().decode().unwrap_or_default();
    let mut headers = props.headers.take().unwrap_or_default();
    let original_expiration = props.expiration.take();
    let mut deaths: Vec<FieldValue> = match headers.remove("x-death") {
        Some(FieldValue::Array(a)) => a,
        _ => Vec::new(),
    };
    let same = |v: &FieldValue| {
        v.as_table().is_some_and(|t| {
            text(t, "queue").as_deref() == Some(queue) && text(t, "reason").as_deref() == Some(reason)
        })
    };
    let time = FieldValue::Timestamp(now_ms / 1000);
    let entry = match deaths.iter().position(same) {
        Some(i) => {
            let FieldValue::Table(mut t) = deaths.remove(i) else {
                unreachable!("checked table")
            };
            let count = t
                .get("count")
                .and_then(|c| c.as_i64())
                .unwrap_or(0)
                .saturating_add(1);
            t.insert("count", FieldValue::I64(count));
            t.insert("time", time);
            t
        }
        None => {
            let mut t = FieldTable::new();
            t.insert("count", FieldValue::I64(1));
            t.insert("reason", FieldValue::LongStr(LongStr::from(reason)));
            t.insert("queue", FieldValue::LongStr(LongStr::from(queue)));
            t.insert("time", time);
            t.insert(
                "exchange",
                FieldValue::LongStr(LongStr::from(msg.exchange.as_str())),
            );
            let keys = std::iter::once(msg.routing_key.as_str())
                .chain(msg.cc_keys().iter().map(|k| &**k))
                .map(|k| FieldValue::LongStr(LongStr::from(k)))
                .collect();
            t.insert("routing-keys", FieldValue::Array(keys));
            if let Some(exp) = &original_expiration {
                t.insert(
                    "original-expiration",
                    FieldValue::LongStr(LongStr::from(exp.as_str())),
                );
            }
            t
        }
    };
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death", FieldValue::Array(deaths));
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason", FieldValue::LongStr(LongStr::from(reason)));
        headers.insert("x-first-death-queue", FieldValue::LongStr(LongStr::from(queue)));
        headers.insert(
            "x-first-death-exchange",
            FieldValue::LongStr(LongStr::from(msg.exchange.as_str())),
        );
    }
    headers.insert("x-last-death-reason", FieldValue::LongStr(LongStr::from(reason)));
    headers.insert("x-last-death-queue", FieldValue::LongStr(LongStr::from(queue)));
    headers.insert(
        "x-last-death-exchange",
        FieldValue::LongStr(LongStr::from(msg.exchange.as_str())),
    );
    props.headers = Some(headers);
    RawProperties::from_properties(&props)
}

/// The queues named in a message's `x-death`, most recent first, with their reasons.
pub fn deaths(props: &RawProperties) -> Vec<(String, String)> {
    let Ok(Some(h)) = props.headers() else {
        return Vec::new();
    };
    let Some(FieldValue::Array(a)) = h.get("x-death") else {
        return Vec::new();
    };
    a.iter()
        .filter_map(|v| v.as_table())
        .map(|t| {
            (
                text(t, "queue").unwrap_or_default(),
                text(t, "reason").unwrap_or_default(),
            )
        })
        .collect()
}

/// RabbitMQ's cycle rule: dead-lettering to `target` is a cycle if `target` already appears in `x-death` and
/// no death on the way round was a client's rejection (a fully automatic loop would never end).
pub fn is_cycle(target: &str, deaths: &[(String, String)]) -> bool {
    match deaths.iter().position(|(q, _)| q == target) {
        None => false,
        Some(i) => deaths[..=i].iter().all(|(_, reason)| reason != "rejected"),
    }
}

/// What a redrive did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redriven {
    pub moved: usize,
    /// Messages left in the dead-letter queue (their destination does not exist).
    pub kept: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use protocol::{BasicProperties, ShortStr};

    fn msg(props: BasicProperties) -> Message {
        Message::new(
            ShortStr::from_static("ex"),
            ShortStr::from_static("rk"),
            RawProperties::from_properties(&props),
            Bytes::new(),
        )
    }

    #[test]
    fn x_death_counts_repeat_deaths_and_keeps_first() {
        let props = BasicProperties {
            expiration: Some("100".into()),
            ..Default::default()
        };
        let p1 = with_x_death(&msg(props), "q1", "expired", 5_000);
        let m1 = Message::new(
            ShortStr::from_static("dlx"),
            ShortStr::from_static("rk"),
            p1,
            Bytes::new(),
        );
        let p2 = with_x_death(&m1, "q2", "rejected", 6_000);
        let m2 = Message::new(
            ShortStr::from_static("dlx"),
            ShortStr::from_static("rk"),
            p2,
            Bytes::new(),
        );
        let p3 = with_x_death(&m2, "q1", "expired", 7_000);
        let decoded = p3.decode().unwrap();
        assert_eq!(decoded.expiration, None, "expiration moved into x-death");
        let h = decoded.headers.unwrap();
        let FieldValue::Array(d) = h.get("x-death").unwrap() else {
            panic!()
        };
        assert_eq!(d.len(), 2);
        let first = d[0].as_table().unwrap();
        assert_eq!(text(first, "queue").as_deref(), Some("q1"));
        assert_eq!(first.get("count").unwrap().as_i64(), Some(2));
        assert_eq!(first.get("time"), Some(&FieldValue::Timestamp(7)));
        assert_eq!(text(first, "original-expiration").as_deref(), Some("100"));
        assert_eq!(text(first, "exchange").as_deref(), Some("ex"));
        assert_eq!(h.get("x-first-death-queue").unwrap().as_str(), Some("q1"));
        assert_eq!(h.get("x-first-death-reason").unwrap().as_str(), Some("expired"));
        assert_eq!(h.get("x-last-death-queue").unwrap().as_str(), Some("q1"));
    }

    /// Found by the `x_death` fuzz target: a publisher-supplied x-death count of i64::MAX overflowed (a panic
    /// in a debug build, a negative count in release). It saturates.
    #[test]
    fn x_death_count_from_the_publisher_saturates() {
        let mut entry = FieldTable::new();
        entry.insert("queue", FieldValue::from("q"));
        entry.insert("reason", FieldValue::from("expired"));
        entry.insert("count", FieldValue::I64(i64::MAX));
        let mut h = FieldTable::new();
        h.insert("x-death", FieldValue::Array(vec![FieldValue::Table(entry)]));
        let props = BasicProperties {
            headers: Some(h),
            ..Default::default()
        };
        let p = with_x_death(&msg(props), "q", "expired", 1_000);
        let h = p.decode().unwrap().headers.unwrap();
        let FieldValue::Array(d) = h.get("x-death").unwrap() else {
            panic!()
        };
        assert_eq!(
            d[0].as_table().unwrap().get("count").unwrap().as_i64(),
            Some(i64::MAX)
        );
    }

    #[test]
    fn x_death_routing_keys_are_the_key_and_cc_not_bcc() {
        let arr = |v: &[&str]| FieldValue::Array(v.iter().map(|s| FieldValue::from(*s)).collect());
        let mut h = FieldTable::new();
        h.insert("CC", arr(&["c1", "c2"]));
        h.insert("BCC", arr(&["b1"]));
        let m = msg(BasicProperties {
            headers: Some(h),
            ..Default::default()
        });
        let p = with_x_death(&m, "q", "rejected", 1_000);
        let h = p.headers().unwrap().unwrap();
        let FieldValue::Array(d) = h.get("x-death").unwrap() else {
            panic!()
        };
        let keys = d[0].as_table().unwrap().get("routing-keys").unwrap();
        assert_eq!(keys, &arr(&["rk", "c1", "c2"]));
        // The dead letter's properties keep BCC for the store; a message built from them never delivers it.
        assert!(h.get("BCC").is_some());
        let dl = Message::new(
            ShortStr::from_static("dlx"),
            ShortStr::from_static("rk"),
            p,
            Bytes::new(),
        );
        assert!(dl.properties.headers().unwrap().unwrap().get("BCC").is_none());
        assert_eq!(dl.extra_routing_keys().len(), 3);
    }

    #[test]
    fn cycles_are_only_fully_automatic_ones() {
        let d = |q: &str, r: &str| (q.to_string(), r.to_string());
        assert!(is_cycle("a", &[d("a", "expired")]));
        assert!(is_cycle("a", &[d("b", "expired"), d("a", "maxlen")]));
        assert!(!is_cycle("a", &[d("b", "rejected"), d("a", "expired")]));
        assert!(!is_cycle("c", &[d("b", "expired")]));
    }
}
