//! The stored form of a batch of trace events (the value of one `storage::trace` batch key) and the API's
//! JSON form of an event. A batch is postcard: a format byte, the time of its first event, a table of the
//! distinct strings its events use (vhosts, ids, exchanges, routing keys, queues, connections, users,
//! consumer tags, reasons), then the events, each a kind code, a time offset and string numbers. A batch of
//! S2's events (four per message, every message its own id) takes about 25 bytes per event plus its ids
//! once, where the first format took ~300 bytes of JSON and two index keys per event.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Event, Kind};

/// The first byte of every batch.
const FORMAT: u8 = 1;

/// One event, its strings as numbers in the batch's table.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    kind: u8,
    /// ms after the batch's base time.
    dt: u64,
    vhost: u32,
    message_id: Option<u32>,
    correlation_id: Option<u32>,
    exchange: Option<u32>,
    routing_key: Option<u32>,
    queue: Option<u32>,
    queues: Option<Vec<u32>>,
    connection: Option<u32>,
    user: Option<u32>,
    channel: Option<u16>,
    consumer_tag: Option<u32>,
    redelivered: Option<bool>,
    delivery_count: Option<u32>,
    reason: Option<u32>,
    target: Option<u32>,
}

#[derive(Serialize)]
struct BatchOut<'a> {
    format: u8,
    base_time: u64,
    strings: &'a [&'a str],
    events: &'a [Rec],
}

#[derive(Deserialize)]
struct BatchIn {
    format: u8,
    base_time: u64,
    strings: Vec<String>,
    events: Vec<Rec>,
}

/// A batch being encoded: the string table and the events so far. `finish` leaves it empty, ready for the
/// next batch of the same wake-up of the recorder.
#[derive(Default)]
pub struct Encoder<'a> {
    strings: Vec<&'a str>,
    index: HashMap<&'a str, u32, ahash::RandomState>,
    /// Sources already interned, by address (the events hold them, so an address is one source for the
    /// encoder's whole life): their vhost, connection and user numbers.
    sources: HashMap<usize, (u32, Option<u32>, Option<u32>), ahash::RandomState>,
    events: Vec<Rec>,
    base_time: u64,
    last_time: u64,
    count: u32,
    /// Positions in `strings` of the distinct correlation ids and message ids.
    correlation_ids: Vec<u32>,
    message_ids: Vec<u32>,
    seen_c: HashMap<u32, (), ahash::RandomState>,
    seen_m: HashMap<u32, (), ahash::RandomState>,
    /// Bytes so far, roughly (the strings plus ~24 per event).
    approx: usize,
}

/// A finished batch: the encoded bytes and what the store indexes it by.
pub struct Encoded<'a> {
    pub blob: Vec<u8>,
    pub events: u32,
    pub last_time_ms: u64,
    pub correlation_ids: Vec<&'a str>,
    pub message_ids: Vec<&'a str>,
}

impl<'a> Encoder<'a> {
    fn intern(&mut self, s: &'a str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(s);
        self.index.insert(s, i);
        self.approx += s.len() + 1;
        i
    }

    fn opt(&mut self, s: Option<&'a str>) -> Option<u32> {
        s.map(|s| self.intern(s))
    }

    /// Events so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size so far, roughly.
    pub fn approx_bytes(&self) -> usize {
        self.approx
    }

    /// Adds `ev` (two records for a published-and-routed pair).
    pub fn push(&mut self, ev: &'a Event) {
        if self.count == 0 {
            self.base_time = ev.time;
        }
        self.last_time = self.last_time.max(ev.time);
        let m = self.opt(ev.ids.message_id());
        let c = self.opt(ev.ids.correlation_id());
        if let Some(m) = m {
            if self.seen_m.insert(m, ()).is_none() {
                self.message_ids.push(m);
            }
        }
        if let Some(c) = c {
            if self.seen_c.insert(c, ()).is_none() {
                self.correlation_ids.push(c);
            }
        }
        let src = &*ev.source;
        let (vhost, connection, user) = match self.sources.get(&(src as *const _ as usize)) {
            Some(&v) => v,
            None => {
                let v = (
                    self.intern(&src.vhost),
                    self.opt(src.connection.as_deref()),
                    self.opt(src.user.as_deref()),
                );
                self.sources.insert(src as *const _ as usize, v);
                v
            }
        };
        let mut r = Rec {
            kind: ev.event.code(),
            dt: ev.time.saturating_sub(self.base_time),
            vhost,
            message_id: m,
            correlation_id: c,
            exchange: self.opt(ev.exchange.as_ref().map(|s| s.as_str())),
            routing_key: self.opt(ev.routing_key.as_ref().map(|s| s.as_str())),
            queue: self.opt(ev.queue.as_deref()),
            queues: None,
            connection,
            user,
            channel: ev.channel,
            consumer_tag: self.opt(ev.consumer_tag.as_ref().map(|s| s.as_str())),
            redelivered: ev.redelivered,
            delivery_count: ev.delivery_count,
            reason: self.opt(ev.reason),
            target: self.opt(ev.target.as_deref()),
        };
        let queues = ev
            .queues
            .as_ref()
            .map(|q| q.as_slice().iter().map(|q| self.intern(q)).collect::<Vec<u32>>());
        match queues {
            Some(qs) if ev.event == Kind::Published => {
                // The pair: `published`, then `routed` with the queues.
                let mut routed = r.clone();
                routed.kind = Kind::Routed.code();
                routed.queues = Some(qs);
                self.approx += 24 + 4 * routed.queues.as_ref().map_or(0, Vec::len);
                self.events.push(r);
                self.events.push(routed);
                self.count += 2;
            }
            qs => {
                r.queues = qs;
                self.approx += 24;
                self.events.push(r);
                self.count += 1;
            }
        }
        self.approx += 24;
    }

    /// The batch so far, encoded; the encoder is left empty.
    pub fn finish(&mut self) -> postcard::Result<Encoded<'a>> {
        let blob = postcard::to_allocvec(&BatchOut {
            format: FORMAT,
            base_time: self.base_time,
            strings: &self.strings,
            events: &self.events,
        })?;
        let out = Encoded {
            blob,
            events: self.count,
            last_time_ms: self.last_time,
            correlation_ids: self
                .correlation_ids
                .iter()
                .map(|&i| self.strings[i as usize])
                .collect(),
            message_ids: self
                .message_ids
                .iter()
                .map(|&i| self.strings[i as usize])
                .collect(),
        };
        self.clear();
        Ok(out)
    }

    fn clear(&mut self) {
        self.strings.clear();
        self.index.clear();
        self.sources.clear();
        self.events.clear();
        self.correlation_ids.clear();
        self.message_ids.clear();
        self.seen_c.clear();
        self.seen_m.clear();
        self.base_time = 0;
        self.last_time = 0;
        self.count = 0;
        self.approx = 0;
    }
}

/// The API's JSON shape of an event (absent fields omitted).
#[derive(Serialize)]
pub struct View<'a> {
    pub time: u64,
    pub event: Kind,
    pub vhost: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
}

/// Which id a lookup matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match<'a> {
    CorrelationId(&'a str),
    MessageId(&'a str),
}

/// Calls `f` with each event of `blob` that matches, in recording order, until it returns false. Returns
/// false when `blob` is not a batch this version reads.
pub fn decode(blob: &[u8], want: Match, mut f: impl FnMut(View) -> bool) -> bool {
    let Ok(b) = postcard::from_bytes::<BatchIn>(blob) else {
        return false;
    };
    if b.format != FORMAT {
        return false;
    }
    let s = |i: u32| b.strings.get(i as usize).map(String::as_str);
    let so = |i: Option<u32>| i.and_then(s);
    for r in &b.events {
        let hit = match want {
            Match::CorrelationId(id) => so(r.correlation_id) == Some(id),
            Match::MessageId(id) => so(r.message_id) == Some(id),
        };
        if !hit {
            continue;
        }
        let Some(event) = Kind::from_code(r.kind) else {
            continue;
        };
        let v = View {
            time: b.base_time + r.dt,
            event,
            vhost: s(r.vhost).unwrap_or_default(),
            exchange: so(r.exchange),
            routing_key: so(r.routing_key),
            queue: so(r.queue),
            queues: r
                .queues
                .as_ref()
                .map(|q| q.iter().filter_map(|&i| s(i)).collect()),
            message_id: so(r.message_id),
            correlation_id: so(r.correlation_id),
            connection: so(r.connection),
            user: so(r.user),
            channel: r.channel,
            consumer_tag: so(r.consumer_tag),
            redelivered: r.redelivered,
            delivery_count: r.delivery_count,
            reason: so(r.reason),
            target: so(r.target),
        };
        if !f(v) {
            break;
        }
    }
    true
}

/// The recorded timeline of the messages with this id, oldest first, at most `limit` events, as the API's
/// JSON.
pub fn timeline(
    store: &storage::Store,
    want: Match,
    limit: usize,
) -> Result<Vec<serde_json::Value>, storage::StoreError> {
    let (index, id) = match want {
        Match::CorrelationId(id) => (storage::TraceIndex::CorrelationId, id),
        Match::MessageId(id) => (storage::TraceIndex::MessageId, id),
    };
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    store.trace_batches(index, id, |blob| {
        decode(blob, want, |v| {
            if let Ok(j) = serde_json::to_value(&v) {
                out.push(j);
            }
            out.len() < limit
        });
        out.len() < limit
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use protocol::{BasicProperties, RawProperties, ShortStr};

    use super::*;
    use crate::trace::{Ids, Queues, Source};

    fn ids(m: Option<&str>, c: Option<&str>) -> Ids {
        Ids::of(&RawProperties::from_properties(&BasicProperties {
            message_id: m.map(Into::into),
            correlation_id: c.map(Into::into),
            ..Default::default()
        }))
        .unwrap()
    }

    fn all(blob: &[u8], want: Match) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        assert!(decode(blob, want, |v| {
            out.push(serde_json::to_value(&v).unwrap());
            true
        }));
        out
    }

    #[test]
    fn ids_are_kept_inline_or_on_the_heap_and_read_back() {
        assert!(Ids::of(&RawProperties::empty()).is_none());
        let i = ids(Some("m"), None);
        assert_eq!((i.message_id(), i.correlation_id()), (Some("m"), None));
        let i = ids(None, Some("c"));
        assert_eq!((i.message_id(), i.correlation_id()), (None, Some("c")));
        let i = ids(Some(""), Some("c"));
        assert_eq!((i.message_id(), i.correlation_id()), (Some(""), Some("c")));
        let long_m = "m".repeat(255);
        let long_c = "c".repeat(255);
        let i = ids(Some(&long_m), Some(&long_c));
        assert!(matches!(i.bytes, crate::trace::IdBytes::Heap(_)));
        assert_eq!(i.message_id(), Some(long_m.as_str()));
        assert_eq!(i.correlation_id(), Some(long_c.as_str()));
        let uuid = "0b5e4a2c-6f4e-4a36-9d47-6a1c0b7d1a2e";
        let i = ids(Some(uuid), Some(uuid));
        assert!(matches!(i.bytes, crate::trace::IdBytes::Inline(_)));
        assert_eq!((i.message_id(), i.correlation_id()), (Some(uuid), Some(uuid)));
    }

    /// Every field of every kind survives the round trip, a pair becomes `published` then `routed`, and
    /// only the events with the id asked for come back (not those whose other id is equal to it).
    #[test]
    fn a_batch_round_trips_in_order_and_lookups_match_exactly() {
        let vhost = Source::vhost(&"/".into());
        let session = Arc::new(Source {
            vhost: "/".into(),
            connection: Some("127.0.0.1:1 -> 127.0.0.1:5672".into()),
            user: Some("guest".into()),
        });
        let mut p = Event::new(Kind::Published, &session, ids(Some("m1"), Some("c1")), 1_000);
        p.exchange = Some(ShortStr::from_static("ex"));
        p.routing_key = Some(ShortStr::from_static("rk"));
        p.channel = Some(3);
        p.queues = Some(Queues::of(&["q1".into(), "q2".into()]));
        let mut d = Event::new(Kind::Delivered, &vhost, ids(Some("m1"), Some("c1")), 1_005);
        d.queue = Some("q1".into());
        d.consumer_tag = Some(ShortStr::from_static("ctag"));
        d.redelivered = Some(true);
        d.delivery_count = Some(2);
        let mut n = Event::new(Kind::DeadLettered, &vhost, ids(Some("c1"), Some("other")), 1_007);
        n.queue = Some("q1".into());
        n.reason = Some("rejected");
        n.target = Some("dlx".into());
        let mut one = Event::new(Kind::Published, &vhost, ids(Some("m2"), Some("c1")), 1_009);
        one.queues = Some(Queues::of(&["q1".into()]));
        let mut none = Event::new(Kind::Published, &vhost, ids(None, Some("c1")), 1_010);
        none.queues = Some(Queues::of(&[]));
        let evs = [p, d, n, one, none];
        let mut enc = Encoder::default();
        for e in &evs {
            enc.push(e);
        }
        assert_eq!(enc.len(), 8);
        let out = enc.finish().unwrap();
        assert!(enc.is_empty());
        assert_eq!((out.events, out.last_time_ms), (8, 1_010));
        assert_eq!(out.correlation_ids, ["c1", "other"]);
        assert_eq!(out.message_ids, ["m1", "c1", "m2"]);
        let c1 = all(&out.blob, Match::CorrelationId("c1"));
        let kinds: Vec<&str> = c1.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "published",
                "routed",
                "delivered",
                "published",
                "routed",
                "published",
                "routed"
            ]
        );
        assert_eq!(
            c1[0],
            serde_json::json!({"time": 1000, "event": "published", "vhost": "/", "exchange": "ex",
                "routing_key": "rk", "message_id": "m1", "correlation_id": "c1",
                "connection": "127.0.0.1:1 -> 127.0.0.1:5672", "user": "guest", "channel": 3})
        );
        assert_eq!(c1[1]["queues"], serde_json::json!(["q1", "q2"]));
        assert_eq!(
            c1[2],
            serde_json::json!({"time": 1005, "event": "delivered", "vhost": "/", "queue": "q1",
                "message_id": "m1", "correlation_id": "c1", "consumer_tag": "ctag", "redelivered": true,
                "delivery_count": 2})
        );
        assert_eq!(c1[4]["queues"], serde_json::json!(["q1"]));
        assert_eq!(c1[6]["queues"], serde_json::json!([]));
        assert!(c1[6].get("message_id").is_none());
        let m = all(&out.blob, Match::MessageId("c1"));
        assert_eq!(
            m,
            [
                serde_json::json!({"time": 1007, "event": "dead-lettered", "vhost": "/", "queue": "q1",
                "message_id": "c1", "correlation_id": "other", "reason": "rejected", "target": "dlx"})
            ]
        );
        assert!(all(&out.blob, Match::MessageId("m")).is_empty());
        // Stopping early.
        let mut seen = 0;
        decode(&out.blob, Match::CorrelationId("c1"), |_| {
            seen += 1;
            seen < 2
        });
        assert_eq!(seen, 2);
        // Not a batch of this format.
        assert!(!decode(b"\x02junk", Match::CorrelationId("c1"), |_| true));
    }

    /// The recorder's batches, written to a store and read back through the lookup, pruned by count and
    /// age (whole batches, the oldest first).
    #[test]
    fn timelines_come_back_from_the_store_across_batches_and_limits_evict_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let store = storage::Store::open(dir.path(), storage::StoreOptions::default()).unwrap();
        let vhost = Source::vhost(&"/".into());
        let mut kept = 0u64;
        // 40 batches of 50 messages: many ids each (filtered batches), every message published-and-routed;
        // "chain" messages carry one correlation id through all of them.
        for b in 0..40u64 {
            let evs: Vec<Event> = (0..50u64)
                .map(|i| {
                    let m = format!("m-{b}-{i}");
                    let c = if i == 0 { "chain".to_string() } else { m.clone() };
                    let mut e = Event::new(Kind::Published, &vhost, ids(Some(&m), Some(&c)), 1_000 + b);
                    e.queues = Some(Queues::of(&["q".into()]));
                    e
                })
                .collect();
            let mut enc = Encoder::default();
            evs.iter().for_each(|e| enc.push(e));
            let e = enc.finish().unwrap();
            assert!(e.correlation_ids.len() + e.message_ids.len() > storage::EXACT_IDS);
            store
                .append_trace(
                    b,
                    &[storage::TraceBatch {
                        events: e.events,
                        last_time_ms: e.last_time_ms,
                        correlation_ids: &e.correlation_ids,
                        message_ids: &e.message_ids,
                        blob: &e.blob,
                    }],
                )
                .unwrap();
            kept += e.events as u64;
        }
        let chain = timeline(&store, Match::CorrelationId("chain"), 10_000).unwrap();
        assert_eq!(chain.len(), 80);
        let times: Vec<u64> = chain.iter().map(|e| e["time"].as_u64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert_eq!(chain[0]["message_id"], "m-0-0");
        assert_eq!(chain[79]["message_id"], "m-39-0");
        assert_eq!(
            timeline(&store, Match::CorrelationId("chain"), 5).unwrap().len(),
            5
        );
        assert_eq!(timeline(&store, Match::MessageId("m-7-3"), 100).unwrap().len(), 2);
        assert!(timeline(&store, Match::MessageId("m-40-0"), 100)
            .unwrap()
            .is_empty());
        // Count: at most 3000 of the 4000 events kept: the 10 oldest batches go.
        let removed = store.prune_trace(kept, 3000, 0).unwrap();
        assert_eq!(removed, 1000);
        kept -= removed;
        let chain = timeline(&store, Match::CorrelationId("chain"), 10_000).unwrap();
        assert_eq!(chain.len(), 60);
        assert_eq!(chain[0]["message_id"], "m-10-0");
        assert!(timeline(&store, Match::MessageId("m-9-3"), 100)
            .unwrap()
            .is_empty());
        // Age: the batches whose newest event is older than 1,020 go.
        assert_eq!(store.prune_trace(kept, 1_000_000, 1_020).unwrap(), 1000);
        let chain = timeline(&store, Match::CorrelationId("chain"), 10_000).unwrap();
        assert_eq!(chain[0]["message_id"], "m-20-0");
        assert_eq!(store.trace_state().unwrap(), Some((39, 2000)));
    }
}
