//! Property tests: the router against naive reference implementations.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use proptest::prelude::*;
use router::*;

// ---------------------------------------------------------------- topic

fn split(s: &str) -> Vec<&str> {
    if s.is_empty() {
        vec![]
    } else {
        s.split('.').collect()
    }
}

/// Direct reading of the rules: `*` one word, `#` zero or more words.
fn topic_ref(p: &[&str], k: &[&str]) -> bool {
    match p.split_first() {
        None => k.is_empty(),
        Some((&"#", rest)) => (0..=k.len()).any(|i| topic_ref(rest, &k[i..])),
        Some((&"*", rest)) => !k.is_empty() && topic_ref(rest, &k[1..]),
        Some((w, rest)) => !k.is_empty() && k[0] == *w && topic_ref(rest, &k[1..]),
    }
}

fn word(wild: bool) -> impl Strategy<Value = String> {
    let mut choices = vec!["a", "b", "", "ab"];
    if wild {
        choices.extend(["*", "#", "#", "*"]);
    }
    proptest::sample::select(choices).prop_map(String::from)
}

fn topic_str(wild: bool) -> impl Strategy<Value = String> {
    proptest::collection::vec(word(wild), 0..6).prop_map(|w| w.join("."))
}

fn sorted(out: &[Name]) -> Vec<String> {
    let v: Vec<String> = out.iter().map(|s| s.to_string()).collect();
    let set: BTreeSet<String> = v.iter().cloned().collect();
    assert_eq!(set.len(), v.len(), "duplicates in route output: {v:?}");
    set.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn topic_matches_reference(
        patterns in proptest::collection::vec(topic_str(true), 1..24),
        keys in proptest::collection::vec(topic_str(false), 1..12),
        remove in proptest::collection::vec(any::<bool>(), 24),
    ) {
        let mut r = Router::new("/");
        // A few patterns share a queue, so several bindings can hit one queue.
        let qname = |i: usize| format!("q{}", i % 7);
        for (i, p) in patterns.iter().enumerate() {
            r.declare_queue(qname(i).as_str().into());
            r.bind(Binding::queue("amq.topic", &qname(i), p)).unwrap();
        }
        let check = |r: &Router, live: &[(usize, &String)]| -> Result<(), TestCaseError> {
            let mut out = Vec::new();
            for k in &keys {
                let res = r.route("amq.topic", k, None, &mut out).unwrap();
                let got = sorted(&out);
                let want: BTreeSet<String> = live
                    .iter()
                    .filter(|(_, p)| topic_ref(&split(p), &split(k)))
                    .map(|(i, _)| qname(*i))
                    .collect();
                let want: Vec<String> = want.into_iter().collect();
                prop_assert_eq!(&got, &want, "key {:?}", k);
                prop_assert_eq!(res.matched, !want.is_empty());
            }
            Ok(())
        };
        let live: Vec<(usize, &String)> = patterns.iter().enumerate().collect();
        check(&r, &live)?;
        // Remove some bindings; the trie must prune without losing others.
        let mut live2 = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            if remove[i] {
                r.unbind(&Binding::queue("amq.topic", &qname(i), p)).unwrap();
            } else {
                live2.push((i, p));
            }
        }
        // Identical (queue, pattern) pairs are one binding: if any copy was
        // removed, all are gone.
        let removed: HashSet<(String, &String)> = patterns
            .iter()
            .enumerate()
            .filter(|(i, _)| remove[*i])
            .map(|(i, p)| (qname(i), p))
            .collect();
        live2.retain(|(i, p)| !removed.contains(&(qname(*i), *p)));
        check(&r, &live2)?;
    }
}

// ---------------------------------------------------------------- headers

#[derive(Debug, PartialEq)]
enum Norm {
    Bin(Vec<u8>),
    Num(f64),
    Bool(bool),
    Void,
    /// Array elements are Erlang `{Type, Value}` terms: the type is kept.
    Arr(Vec<(&'static str, Norm)>),
}

/// The Erlang value of a field (what top-level `==` compares).
fn norm(v: &ArgValue) -> Norm {
    match v {
        ArgValue::Str(s) => Norm::Bin(s.as_bytes().to_vec()),
        ArgValue::Bytes(b) => Norm::Bin(b.clone()),
        ArgValue::Int(i, _) => Norm::Num(*i as f64),
        ArgValue::Timestamp(t) => Norm::Num(*t as f64),
        ArgValue::Float(f, _) => Norm::Num(*f),
        ArgValue::Bool(b) => Norm::Bool(*b),
        ArgValue::Void => Norm::Void,
        ArgValue::Array(a) => Norm::Arr(a.iter().map(|x| (x.type_name(), norm(x))).collect()),
        other => panic!("not generated: {other:?}"),
    }
}

/// Direct reading of the headers rules (keys unique on both sides).
fn headers_ref(binding: &[(String, ArgValue)], data: &[(String, ArgValue)]) -> bool {
    let mode = binding
        .iter()
        .find(|(k, _)| k == "x-match")
        .and_then(|(_, v)| match v {
            ArgValue::Str(s) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("all");
    let with_x = mode.ends_with("-with-x");
    let is_all = mode.starts_with("all") || !mode.starts_with("any");
    let relevant = binding
        .iter()
        .filter(|(k, _)| k != "x-match" && (with_x || !k.starts_with("x-")));
    let mut results = relevant.map(|(k, v)| match data.iter().find(|(dk, _)| dk == k) {
        None => false,
        Some((_, dv)) => matches!(v, ArgValue::Void) || norm(v) == norm(dv),
    });
    if is_all {
        results.all(|b| b)
    } else {
        results.any(|b| b)
    }
}

fn scalar() -> impl Strategy<Value = ArgValue> {
    prop_oneof![
        Just(ArgValue::Str("1".into())),
        Just(ArgValue::Bytes(b"1".to_vec())),
        Just(ArgValue::Str("x".into())),
        Just(ArgValue::long(1)),
        Just(ArgValue::signedint(1)),
        Just(ArgValue::Int(1, IntType::UnsignedByte)),
        Just(ArgValue::long(2)),
        Just(ArgValue::Int(2, IntType::Short)),
        Just(ArgValue::double(1.0)),
        Just(ArgValue::Float(1.0, FloatType::Float)),
        Just(ArgValue::double(1.5)),
        Just(ArgValue::Float(1.5, FloatType::Float)),
        Just(ArgValue::Timestamp(2)),
        Just(ArgValue::Bool(true)),
        Just(ArgValue::Void),
    ]
}

fn hvalue() -> impl Strategy<Value = ArgValue> {
    prop_oneof![
        4 => scalar(),
        1 => proptest::collection::vec(
            proptest::sample::select(vec![
                ArgValue::long(1),
                ArgValue::signedint(1),
                ArgValue::double(1.0),
                ArgValue::Float(1.0, FloatType::Float),
                ArgValue::Str("1".into()),
                ArgValue::Bytes(b"1".to_vec()),
                ArgValue::Timestamp(1),
            ]),
            0..3
        )
        .prop_map(ArgValue::Array),
        1 => proptest::collection::vec(scalar(), 1..3).prop_map(ArgValue::Array),
    ]
}

fn htable(with_match: bool) -> impl Strategy<Value = Vec<(String, ArgValue)>> {
    let keys = proptest::sample::subsequence(vec!["a", "b", "c", "d", "x-a", "x-b"], 0..=6);
    let mode = proptest::sample::select(vec![
        None,
        Some("all"),
        Some("any"),
        Some("all-with-x"),
        Some("any-with-x"),
    ]);
    (keys, proptest::collection::vec(hvalue(), 6), mode, any::<u64>()).prop_map(
        move |(keys, vals, mode, seed)| {
            let mut t: Vec<(String, ArgValue)> = keys.into_iter().map(String::from).zip(vals).collect();
            if with_match {
                if let Some(m) = mode {
                    t.push(("x-match".into(), ArgValue::Str(m.into())));
                }
            }
            // Shuffle deterministically: order must not matter.
            let n = t.len();
            if n > 1 {
                let mut s = seed;
                for i in (1..n).rev() {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    t.swap(i, (s >> 33) as usize % (i + 1));
                }
            }
            t
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn headers_match_reference(
        bindings in proptest::collection::vec(htable(true), 1..12),
        messages in proptest::collection::vec(htable(false), 1..8),
    ) {
        let mut r = Router::new("/");
        for (i, b) in bindings.iter().enumerate() {
            let q = format!("q{i}");
            r.declare_queue(q.as_str().into());
            r.bind(Binding::queue("amq.headers", &q, "").with_args(Args(b.clone()))).unwrap();
        }
        let mut out = Vec::new();
        for m in &messages {
            let h = Args(m.clone());
            r.route("amq.headers", "rk", Some(&h), &mut out).unwrap();
            let got = sorted(&out);
            // Decoding on demand routes the same way.
            let none: &[&str] = &[];
            r.route_msg_lazy("amq.headers", "rk", none, &|| Some(h.clone()), &MsgProps::default(), &mut out)
                .unwrap();
            prop_assert_eq!(&sorted(&out), &got);
            let want: BTreeSet<String> = bindings
                .iter()
                .enumerate()
                .filter(|(_, b)| headers_ref(b, m))
                .map(|(i, _)| format!("q{i}"))
                .collect();
            prop_assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "message {:?}", m);
        }
    }
}

/// Every pair of a set of values (scalars of every type, and arrays of
/// them), one key on each side, against the reference: top-level `==`
/// ignores AMQP types, array elements compare with them.
#[test]
fn header_value_equality_matches_reference_exhaustively() {
    let scalars = [
        ArgValue::Str("1".into()),
        ArgValue::Bytes(b"1".to_vec()),
        ArgValue::Str("x".into()),
        ArgValue::Int(1, IntType::Byte),
        ArgValue::Int(1, IntType::UnsignedByte),
        ArgValue::Int(1, IntType::Short),
        ArgValue::Int(1, IntType::UnsignedShort),
        ArgValue::signedint(1),
        ArgValue::Int(1, IntType::UnsignedInt),
        ArgValue::long(1),
        ArgValue::long(2),
        ArgValue::Float(1.0, FloatType::Float),
        ArgValue::double(1.0),
        ArgValue::double(1.5),
        ArgValue::Timestamp(1),
        ArgValue::Bool(true),
        ArgValue::Void,
    ];
    let mut values: Vec<ArgValue> = scalars.to_vec();
    values.extend(scalars.iter().map(|v| ArgValue::Array(vec![v.clone()])));
    values.push(ArgValue::Array(vec![]));
    values.push(ArgValue::Array(vec![
        ArgValue::long(1),
        ArgValue::Str("1".into()),
    ]));
    values.push(ArgValue::Array(vec![
        ArgValue::signedint(1),
        ArgValue::Str("1".into()),
    ]));
    let mut r = Router::new("/");
    for (i, v) in values.iter().enumerate() {
        let q = format!("q{i}");
        r.declare_queue(q.as_str().into());
        r.bind(Binding::queue("amq.headers", &q, "").with_args(Args::new().with("k", v.clone())))
            .unwrap();
    }
    let mut out = Vec::new();
    let mut matched_pairs = 0;
    for w in &values {
        r.route(
            "amq.headers",
            "",
            Some(&Args::new().with("k", w.clone())),
            &mut out,
        )
        .unwrap();
        let got = sorted(&out);
        let want: BTreeSet<String> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v, ArgValue::Void) || norm(v) == norm(w))
            .map(|(i, _)| format!("q{i}"))
            .collect();
        matched_pairs += want.len();
        assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "message value {w:?}");
    }
    // Sanity: the reference is neither everything nor nothing.
    assert!(matched_pairs > values.len() * 2 && matched_pairs < values.len() * values.len() / 2);
}

// ---------------------------------------------------------------- graphs

#[derive(Debug, Clone)]
struct XSpec {
    kind: ExchangeKind,
    ae: Option<usize>,
    auto_delete: bool,
}

#[derive(Debug, Clone)]
struct BSpec {
    src: usize,
    to_exchange: bool,
    dst: usize,
    key: String,
}

const NX: usize = 6;
const NQ: usize = 4;

fn xname(i: usize) -> String {
    format!("x{i}")
}

fn qn(i: usize) -> String {
    format!("q{i}")
}

fn xspec() -> impl Strategy<Value = XSpec> {
    (
        proptest::sample::select(vec![
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
            ExchangeKind::Topic,
        ]),
        proptest::option::weighted(0.4, 0..NX + 1),
        proptest::bool::weighted(0.3),
    )
        .prop_map(|(kind, ae, auto_delete)| XSpec {
            kind,
            ae,
            auto_delete,
        })
}

fn bspec() -> impl Strategy<Value = BSpec> {
    (
        0..NX,
        any::<bool>(),
        0..NX,
        proptest::sample::select(vec!["a", "b", "a.b", "#", "*", "a.#", "*.b", ""]),
    )
        .prop_map(|(src, to_exchange, dst, key)| BSpec {
            src,
            to_exchange,
            dst: if to_exchange { dst } else { dst % NQ },
            key: key.to_string(),
        })
}

/// Naive model of the vhost: lists of exchanges and bindings.
struct Model {
    xs: HashMap<usize, XSpec>,
    queues: HashSet<usize>,
    bindings: Vec<BSpec>,
}

impl Model {
    fn matches(&self, x: &XSpec, key: &str, rk: &str) -> bool {
        match x.kind {
            ExchangeKind::Fanout => true,
            ExchangeKind::Direct => key == rk,
            ExchangeKind::Topic => topic_ref(&split(key), &split(rk)),
            ExchangeKind::Headers
            | ExchangeKind::ConsistentHash
            | ExchangeKind::Deduplication
            | ExchangeKind::Delayed => unreachable!("not generated"),
        }
    }

    fn route(&self, start: usize, rk: &str) -> (BTreeSet<String>, bool) {
        self.route_keys(start, &[rk])
    }

    /// BFS over the exchange graph, as `rabbit_exchange:route1/4` reads: a binding matches if any of the
    /// message's routing keys matches it (`mc:routing_keys/1`: the key and the CC/BCC keys); an exchange
    /// where none matched uses its alternate exchange.
    fn route_keys(&self, start: usize, rks: &[&str]) -> (BTreeSet<String>, bool) {
        let mut seen = HashSet::from([start]);
        let mut todo = VecDeque::from([start]);
        let mut out = BTreeSet::new();
        let mut used_ae = false;
        while let Some(x) = todo.pop_front() {
            let spec = &self.xs[&x];
            let dests: Vec<&BSpec> = self
                .bindings
                .iter()
                .filter(|b| b.src == x && rks.iter().any(|rk| self.matches(spec, &b.key, rk)))
                .collect();
            if dests.is_empty() {
                if let Some(ae) = spec.ae {
                    if self.xs.contains_key(&ae) {
                        used_ae = true;
                        if seen.insert(ae) {
                            todo.push_back(ae);
                        }
                    }
                }
            }
            for b in dests {
                if b.to_exchange {
                    if seen.insert(b.dst) {
                        todo.push_back(b.dst);
                    }
                } else {
                    out.insert(qn(b.dst));
                }
            }
        }
        (out, used_ae)
    }

    /// Removes bindings matching `pred`, then auto-deletes (cascading).
    fn remove_bindings(&mut self, pred: impl Fn(&BSpec) -> bool) {
        let mut lost: Vec<usize> = Vec::new();
        self.bindings.retain(|b| {
            let rm = pred(b);
            if rm {
                lost.push(b.src);
            }
            !rm
        });
        while let Some(x) = lost.pop() {
            let Some(spec) = self.xs.get(&x) else {
                continue;
            };
            if spec.auto_delete && !self.bindings.iter().any(|b| b.src == x) {
                self.xs.remove(&x);
                self.bindings.retain(|b| {
                    let rm = b.to_exchange && b.dst == x;
                    if rm {
                        lost.push(b.src);
                    }
                    !rm
                });
            }
        }
    }

    fn binding_set(&self) -> BTreeSet<String> {
        self.bindings
            .iter()
            .map(|b| {
                format!(
                    "{}>{}{}:{}",
                    xname(b.src),
                    if b.to_exchange { "x" } else { "q" },
                    b.dst,
                    b.key
                )
            })
            .collect()
    }
}

fn router_binding_set(r: &Router) -> BTreeSet<String> {
    r.bindings()
        .map(|b| {
            let d = match &b.destination {
                Destination::Queue(q) => q.to_string(),
                Destination::Exchange(x) => x.to_string(),
            };
            format!("{}>{}:{}", b.source, d, b.routing_key)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn graph_routing_matches_bfs(
        xs in proptest::collection::vec(xspec(), NX),
        bs in proptest::collection::vec(bspec(), 0..24),
        keys in proptest::collection::vec(topic_str(false), 1..6),
        deletions in proptest::collection::vec((any::<bool>(), 0..NX), 0..4),
    ) {
        let mut r = Router::new("/");
        let mut m = Model { xs: HashMap::new(), queues: HashSet::new(), bindings: Vec::new() };
        for q in 0..NQ {
            r.declare_queue(qn(q).as_str().into());
            m.queues.insert(q);
        }
        for (i, x) in xs.iter().enumerate() {
            let mut d = ExchangeDef::new(&xname(i), x.kind);
            d.auto_delete = x.auto_delete;
            if let Some(ae) = x.ae {
                // ae == NX names an exchange that never exists.
                d.arguments = Args::new().with("alternate-exchange", ArgValue::Str(xname(ae)));
            }
            r.declare_exchange(d).unwrap();
            m.xs.insert(i, x.clone());
        }
        for b in &bs {
            let binding = if b.to_exchange {
                Binding::exchange(&xname(b.src), &xname(b.dst), &b.key)
            } else {
                Binding::queue(&xname(b.src), &qn(b.dst), &b.key)
            };
            let new = r.bind(binding).unwrap();
            let dup = m.bindings.iter().any(|o| o.src == b.src && o.to_exchange == b.to_exchange && o.dst == b.dst && o.key == b.key);
            prop_assert_eq!(new, !dup);
            if !dup {
                m.bindings.push(b.clone());
            }
        }
        let check = |r: &Router, m: &Model| -> Result<(), TestCaseError> {
            prop_assert_eq!(router_binding_set(r), m.binding_set());
            let mut out = Vec::new();
            for x in 0..NX {
                for k in &keys {
                    let res = r.route(&xname(x), k, None, &mut out);
                    if !m.xs.contains_key(&x) {
                        prop_assert_eq!(res.unwrap_err().kind, ErrorKind::NotFound);
                        continue;
                    }
                    let res = res.unwrap();
                    let (want, used_ae) = m.route(x, k);
                    prop_assert_eq!(sorted(&out), want.iter().cloned().collect::<Vec<_>>());
                    prop_assert_eq!(res.matched, !want.is_empty());
                    prop_assert_eq!(res.used_alternate, used_ae);
                }
                // Every key at once (CC/BCC): as if a binding matched when any key does.
                if let Ok(res) = r.route_multi(&xname(x), &keys[0], &keys[1..], None, &mut out) {
                    let all: Vec<&str> = keys.iter().map(String::as_str).collect();
                    let (want, used_ae) = m.route_keys(x, &all);
                    prop_assert_eq!(sorted(&out), want.iter().cloned().collect::<Vec<_>>());
                    prop_assert_eq!(res.matched, !want.is_empty());
                    prop_assert_eq!(res.used_alternate, used_ae);
                }
            }
            Ok(())
        };
        check(&r, &m)?;
        for (is_queue, i) in deletions {
            if is_queue {
                let q = i % NQ;
                let mut got = r.delete_queue(&qn(q));
                let before: HashSet<usize> = m.xs.keys().copied().collect();
                m.queues.remove(&q);
                m.remove_bindings(|b| !b.to_exchange && b.dst == q);
                let mut want: Vec<Name> = before.iter().filter(|x| !m.xs.contains_key(x)).map(|x| Name::from(xname(*x))).collect();
                got.sort();
                want.sort();
                prop_assert_eq!(got, want);
            } else if m.xs.contains_key(&i) {
                let d = r.delete_exchange_full(&xname(i), false).unwrap().unwrap();
                let before: HashSet<usize> = m.xs.keys().copied().collect();
                m.xs.remove(&i);
                m.remove_bindings(|b| b.src == i || (b.to_exchange && b.dst == i));
                let mut want: Vec<Name> = before.iter().filter(|x| **x != i && !m.xs.contains_key(x)).map(|x| Name::from(xname(*x))).collect();
                let mut got = d.auto_deleted;
                got.sort();
                want.sort();
                prop_assert_eq!(got, want);
            }
            check(&r, &m)?;
        }
    }
}
