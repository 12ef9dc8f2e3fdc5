//! `x-consistent-hash` (RabbitMQ's rabbitmq_consistent_hash_exchange plugin semantics): stickiness,
//! distribution by weight (chi-square at a fixed seed), minimal movement when a queue is added, hashing on
//! a header or a property, bindings' validation, delayed and deduplication exchange types' indexes.

use std::collections::HashMap;

use proptest::prelude::*;
use router::*;

fn router_with(queues: &[(&str, u32)], args: Args) -> Router {
    let mut r = Router::new("/");
    let mut d = ExchangeDef::new("ch", ExchangeKind::ConsistentHash);
    d.arguments = args;
    r.declare_exchange(d).unwrap();
    for (q, w) in queues {
        r.declare_queue((*q).into());
        r.bind(Binding::queue("ch", q, &w.to_string())).unwrap();
    }
    r
}

fn route_one(r: &Router, key: &str, headers: Option<&Args>, props: &MsgProps) -> Option<String> {
    let mut out = Vec::new();
    r.route_msg::<&str>("ch", key, &[], headers, props, &mut out)
        .unwrap();
    assert!(
        out.len() <= 1,
        "a consistent-hash exchange routes to one queue: {out:?}"
    );
    out.first().map(|n| n.to_string())
}

fn rk(r: &Router, key: &str) -> String {
    route_one(r, key, None, &MsgProps::default()).expect("routed")
}

/// A tiny deterministic generator (xorshift64*), so the key sets are fixed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn key(&mut self) -> String {
        format!("entity-{:016x}", self.next())
    }
}

/// Pearson's chi-square statistic of `observed` against `expected` proportions.
fn chi_square(observed: &[u64], weights: &[u32]) -> f64 {
    let n: u64 = observed.iter().sum();
    let wsum: u32 = weights.iter().sum();
    observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let e = n as f64 * w as f64 / wsum as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

#[test]
fn distribution_follows_weights_chi_square_at_a_fixed_seed() {
    // Weights 1, 2, 3, 4 (as the plugin's README example): 100 000 random keys.
    let queues = [("q1", 1u32), ("q2", 2), ("q3", 3), ("q4", 4)];
    let r = router_with(&queues, Args::new());
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut counts: HashMap<String, u64> = HashMap::new();
    for _ in 0..100_000 {
        *counts.entry(rk(&r, &rng.key())).or_default() += 1;
    }
    let observed: Vec<u64> = queues.iter().map(|(q, _)| counts[*q]).collect();
    let weights: Vec<u32> = queues.iter().map(|(_, w)| *w).collect();
    let chi = chi_square(&observed, &weights);
    // 3 degrees of freedom: the 0.999 quantile is 16.27. A uniform hash passes at this seed (and at almost
    // every seed); a hash that ignored the weights would give a statistic in the tens of thousands.
    assert!(chi < 16.27, "chi-square {chi:.2} for {observed:?}");
    // Equal weights over 8 queues too (7 degrees of freedom: 0.999 quantile 24.32).
    let eq: Vec<(String, u32)> = (0..8).map(|i| (format!("p{i}"), 1)).collect();
    let eq_ref: Vec<(&str, u32)> = eq.iter().map(|(q, w)| (q.as_str(), *w)).collect();
    let r = router_with(&eq_ref, Args::new());
    let mut counts: HashMap<String, u64> = HashMap::new();
    for _ in 0..80_000 {
        *counts.entry(rk(&r, &rng.key())).or_default() += 1;
    }
    let observed: Vec<u64> = eq.iter().map(|(q, _)| counts[q.as_str()]).collect();
    let chi = chi_square(&observed, &[1; 8]);
    assert!(chi < 24.32, "chi-square {chi:.2} for {observed:?}");
}

#[test]
fn adding_a_queue_moves_about_one_in_n_keys_and_only_to_the_new_queue() {
    let mut r = router_with(&[("q1", 1), ("q2", 1), ("q3", 1), ("q4", 1)], Args::new());
    let mut rng = Rng(42);
    let keys: Vec<String> = (0..50_000).map(|_| rng.key()).collect();
    let before: Vec<String> = keys.iter().map(|k| rk(&r, k)).collect();
    r.declare_queue("q5".into());
    r.bind(Binding::queue("ch", "q5", "1")).unwrap();
    let mut moved = 0;
    for (k, old) in keys.iter().zip(&before) {
        let new = rk(&r, k);
        if &new != old {
            assert_eq!(new, "q5", "a key moved between old queues: {k}");
            moved += 1;
        }
    }
    // Expected 1/5 of the keys (10 000); a rehash-everything scheme would move 4/5.
    let frac = moved as f64 / keys.len() as f64;
    assert!((0.18..0.22).contains(&frac), "moved {frac:.3}");
    // Removing it again restores every key's old queue.
    r.unbind(&Binding::queue("ch", "q5", "1")).unwrap();
    for (k, old) in keys.iter().zip(&before) {
        assert_eq!(&rk(&r, k), old);
    }
}

#[test]
fn ring_order_restores_placement_after_rebuilding_in_another_order() {
    // Bindings recovered in another order would reshuffle keys; the stored ring order puts them back.
    let r1 = router_with(&[("b", 2), ("a", 1), ("c", 3)], Args::new());
    let mut r2 = router_with(&[("a", 1), ("b", 2), ("c", 3)], Args::new());
    r2.restore_ring_order("ch", &r1.ring_order("ch").unwrap());
    let mut rng = Rng(7);
    for _ in 0..5_000 {
        let k = rng.key();
        assert_eq!(rk(&r1, &k), rk(&r2, &k));
    }
}

#[test]
fn hashes_on_a_header_or_a_property() {
    let args = Args::new().with("hash-header", ArgValue::Str("entity".into()));
    let r = router_with(&[("q1", 1), ("q2", 1), ("q3", 1)], args);
    let mut rng = Rng(9);
    let mut seen = HashMap::new();
    for i in 0..3_000 {
        let entity = format!("e{}", i % 50);
        let h = Args::new().with("entity", ArgValue::Str(entity.clone()));
        // The routing key is random: only the header decides.
        let q = route_one(&r, &rng.key(), Some(&h), &MsgProps::default()).unwrap();
        assert_eq!(seen.entry(entity).or_insert_with(|| q.clone()), &q);
    }
    let used: std::collections::HashSet<_> = seen.values().collect();
    assert_eq!(used.len(), 3, "50 entities spread over all 3 queues");
    // Without the header the message still routes, always to the same queue (the plugin hashes undefined).
    let a = route_one(&r, "x", None, &MsgProps::default());
    let b = route_one(&r, "y", Some(&Args::new()), &MsgProps::default());
    assert!(a.is_some() && a == b);

    for prop in ["message_id", "correlation_id", "timestamp"] {
        let args = Args::new().with("hash-property", ArgValue::Str(prop.into()));
        let r = router_with(&[("q1", 1), ("q2", 1), ("q3", 1)], args);
        assert!(r.needs_properties());
        let mut seen = HashMap::new();
        for i in 0..600u64 {
            let id = format!("id-{}", i % 40);
            let p = match prop {
                "message_id" => MsgProps {
                    message_id: Some(&id),
                    ..Default::default()
                },
                "correlation_id" => MsgProps {
                    correlation_id: Some(&id),
                    ..Default::default()
                },
                _ => MsgProps {
                    timestamp: Some(1_700_000_000 + i % 40),
                    ..Default::default()
                },
            };
            let q = route_one(&r, &rng.key(), None, &p).unwrap();
            assert_eq!(seen.entry(i % 40).or_insert_with(|| q.clone()), &q, "{prop}");
        }
        assert!(
            seen.values().collect::<std::collections::HashSet<_>>().len() > 1,
            "{prop}"
        );
    }
}

#[test]
fn bindings_and_arguments_are_validated() {
    let mut r = router_with(&[("q1", 1)], Args::new());
    r.declare_queue("q2".into());
    let e = r.bind(Binding::queue("ch", "q2", "heavy")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PreconditionFailed);
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - The binding key must be an integer: <<\"heavy\">>"
    );
    let e = r.bind(Binding::queue("ch", "q2", "0")).unwrap_err();
    assert_eq!(e.text, "The binding key must be greater than 0");
    let e = r.bind(Binding::queue("ch", "q2", "10001")).unwrap_err();
    assert_eq!(e.text, "The binding key must not exceed 10000");
    assert_eq!(r.binding_count(), 1, "refused bindings are not made");
    // The same queue bound again with another weight: a second binding, but the ring is unchanged; the
    // queue stays on the ring until its last binding goes.
    assert!(r.bind(Binding::queue("ch", "q1", "5")).unwrap());
    assert_eq!(rk(&r, "anything"), "q1");
    r.unbind(&Binding::queue("ch", "q1", "1")).unwrap();
    assert_eq!(rk(&r, "anything"), "q1");
    r.unbind(&Binding::queue("ch", "q1", "5")).unwrap();
    assert_eq!(route_one(&r, "anything", None, &MsgProps::default()), None);

    let mut d = ExchangeDef::new("bad", ExchangeKind::ConsistentHash);
    d.arguments = Args::new()
        .with("hash-header", ArgValue::Str("h".into()))
        .with("hash-property", ArgValue::Str("message_id".into()));
    let e = r.declare_exchange(d).unwrap_err();
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - hash-header and hash-property are mutually exclusive"
    );
    let mut d = ExchangeDef::new("bad", ExchangeKind::ConsistentHash);
    d.arguments = Args::new().with("hash-property", ArgValue::Str("app_id".into()));
    assert_eq!(
        r.declare_exchange(d).unwrap_err().text,
        "Unsupported property: app_id"
    );
    assert!(r.exchange("bad").is_none());
    assert_eq!(
        ExchangeKind::parse("x-consistent-hash").unwrap().as_str(),
        "x-consistent-hash"
    );
}

#[test]
fn delayed_and_deduplication_exchanges_route_as_their_base_type() {
    let mut r = Router::new("/");
    for q in ["q1", "q2"] {
        r.declare_queue(q.into());
    }
    let e = r
        .declare_exchange(ExchangeDef::new("d0", ExchangeKind::Delayed))
        .unwrap_err();
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type"
    );
    let mut d = ExchangeDef::new("d0", ExchangeKind::Delayed);
    d.arguments = Args::new().with("x-delayed-type", ArgValue::Str("x-delayed-message".into()));
    assert!(r.declare_exchange(d).is_err());
    let mut d = ExchangeDef::new("dt", ExchangeKind::Delayed);
    d.arguments = Args::new().with("x-delayed-type", ArgValue::Str("topic".into()));
    r.declare_exchange(d).unwrap();
    r.bind(Binding::queue("dt", "q1", "a.*")).unwrap();
    r.bind(Binding::queue("dt", "q2", "#")).unwrap();
    let mut out = Vec::new();
    r.route("dt", "a.b", None, &mut out).unwrap();
    assert_eq!(out.len(), 2);
    r.route("dt", "c", None, &mut out).unwrap();
    assert_eq!(out.iter().map(|n| &**n).collect::<Vec<_>>(), vec!["q2"]);

    r.declare_exchange(ExchangeDef::new("dd", ExchangeKind::Deduplication))
        .unwrap();
    r.bind(Binding::queue("dd", "q1", "ignored")).unwrap();
    r.bind(Binding::queue("dd", "q2", "")).unwrap();
    r.route("dd", "whatever", None, &mut out).unwrap();
    assert_eq!(out.len(), 2, "fanout-like");
}

proptest! {
    /// Stickiness: while the bindings do not change, a key always reaches the same queue, whatever else
    /// was routed in between, and whatever the weights.
    #[test]
    fn same_key_same_queue(weights in prop::collection::vec(1u32..20, 1..8), keys in prop::collection::vec("[a-z0-9]{0,12}", 1..60)) {
        let names: Vec<String> = (0..weights.len()).map(|i| format!("q{i}")).collect();
        let qs: Vec<(&str, u32)> = names.iter().map(|n| n.as_str()).zip(weights.iter().copied()).collect();
        let r = router_with(&qs, Args::new());
        let first: Vec<String> = keys.iter().map(|k| rk(&r, k)).collect();
        for (k, q) in keys.iter().zip(&first).rev() {
            prop_assert_eq!(&rk(&r, k), q);
        }
        // A router built the same way places every key the same (the hash is stable, not randomised).
        let r2 = router_with(&qs, Args::new());
        for (k, q) in keys.iter().zip(&first) {
            prop_assert_eq!(&rk(&r2, k), q);
        }
    }

    /// Against a reference model of the ring (the plugin's bucket map): after any sequence of binds and
    /// unbinds, a key goes to the queue owning bucket jump(hash(key), buckets).
    #[test]
    fn matches_the_bucket_map_model(ops in prop::collection::vec((0usize..5, 1u32..4, any::<bool>()), 1..30), keys in prop::collection::vec("[a-z]{1,6}", 1..20)) {
        let mut r = router_with(&[], Args::new());
        for i in 0..5 { r.declare_queue(format!("q{i}").into()); }
        let mut model: Vec<(usize, u32)> = Vec::new();
        let mut bound: Vec<(usize, u32)> = Vec::new();
        for (q, w, add) in ops {
            let b = Binding::queue("ch", &format!("q{q}"), &w.to_string());
            if add {
                if r.bind(b).unwrap() { bound.push((q, w)); }
                if !model.iter().any(|(m, _)| *m == q) { model.push((q, w)); }
            } else if r.unbind(&b).unwrap().0 {
                bound.retain(|x| *x != (q, w));
                // A destination leaves the ring with its last binding.
                if !bound.iter().any(|(m, _)| *m == q) { model.retain(|(m, _)| *m != q); }
            }
        }
        let buckets: Vec<usize> = model.iter().flat_map(|(q, w)| std::iter::repeat_n(*q, *w as usize)).collect();
        for k in &keys {
            let got = route_one(&r, k, None, &MsgProps::default());
            let want = (!buckets.is_empty()).then(|| {
                let h = consistent_hash::stable_hash(k.as_bytes());
                format!("q{}", buckets[consistent_hash::jump_consistent_hash(h, buckets.len() as u32) as usize])
            });
            prop_assert_eq!(got, want);
        }
    }
}
