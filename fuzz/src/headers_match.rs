//! Headers-exchange matching (router), with message headers taken through the broker's path (a field table
//! in the content properties, read by `broker::args::message_headers`).
//!
//! Input: a byte program building up to 6 bindings on `amq.headers` and up to 4 messages. Keys come from a
//! small alphabet (`a`, `b`, `c`, `x-a`, `x-match`) so that bindings and messages meet; values are of every
//! AMQP type (strings and byte arrays, every integer width, float and double including NaN and -0.0, bool,
//! decimal, timestamp, void, arrays and tables of those), `x-match` is one of the four modes or anything else.
//!
//! Checks: a binding whose x-match is not a valid mode is refused with 406 and nothing else is; routing is
//! deterministic; and when keys are unique on both sides, the queues reached are exactly those a direct
//! reading of RabbitMQ's rules selects (all/any, `-with-x` deciding whether `x-` keys count, void matching
//! any value, Erlang `==` between top-level values and typed equality inside arrays and tables).

use std::collections::BTreeSet;

use bytes::Bytes;
use protocol::{BasicProperties, FieldTable, RawProperties};
use router::{ArgValue, Args, Binding, FloatType, IntType, Router};

use crate::Input;

const KEYS: &[&str] = &["a", "b", "c", "x-a", "x-match"];
const MODES: &[&str] = &["all", "any", "all-with-x", "any-with-x", "none", ""];
const INTS: &[IntType] = &[
    IntType::Byte,
    IntType::UnsignedByte,
    IntType::Short,
    IntType::UnsignedShort,
    IntType::SignedInt,
    IntType::UnsignedInt,
    IntType::Long,
];
const FLOATS: &[f64] = &[0.0, -0.0, 1.0, 1.5, 2.0, f64::NAN, f64::INFINITY, -1.0, 1e300];

fn int_value(inp: &mut Input, t: IntType) -> i64 {
    let x = inp.u8();
    // Small values (so that different widths meet), within each type's range.
    match t {
        IntType::Byte => i64::from(x as i8 % 4),
        IntType::UnsignedByte | IntType::UnsignedShort | IntType::UnsignedInt => i64::from(x % 4),
        _ => i64::from(x as i8 % 4),
    }
}

fn value(inp: &mut Input, depth: u32) -> ArgValue {
    let sel = inp.u8() % if depth > 1 { 9 } else { 11 };
    match sel {
        0 => ArgValue::Str(inp.choose(&["1", "x", "", "all"]).to_string()),
        1 => ArgValue::Bytes(inp.choose(&[&b"1"[..], b"x", b"\xff"]).to_vec()),
        2 | 3 => {
            let t = inp.choose(INTS);
            ArgValue::Int(int_value(inp, t), t)
        }
        4 => {
            let f = inp.choose(FLOATS);
            if inp.bool() {
                ArgValue::Float(f64::from(f as f32), FloatType::Float)
            } else {
                ArgValue::Float(f, FloatType::Double)
            }
        }
        5 => ArgValue::Bool(inp.bool()),
        6 => ArgValue::Decimal(inp.u8() % 2, u32::from(inp.u8() % 3)),
        7 => ArgValue::Timestamp(u64::from(inp.u8() % 4)),
        8 => ArgValue::Void,
        9 => {
            let n = inp.u8() % 3;
            ArgValue::Array((0..n).map(|_| value(inp, depth + 1)).collect())
        }
        _ => {
            let n = inp.u8() % 3;
            ArgValue::Table(Args(
                (0..n)
                    .map(|_| (inp.choose(KEYS).to_string(), value(inp, depth + 1)))
                    .collect(),
            ))
        }
    }
}

fn table(inp: &mut Input, binding: bool) -> Vec<(String, ArgValue)> {
    let n = inp.u8() % 5;
    (0..n)
        .map(|_| {
            let k = inp.choose(KEYS);
            let v = if k == "x-match" && binding && !inp.u8().is_multiple_of(4) {
                ArgValue::Str(inp.choose(MODES).to_string())
            } else {
                value(inp, 0)
            };
            (k.to_string(), v)
        })
        .collect()
}

fn unique(t: &[(String, ArgValue)]) -> bool {
    let keys: BTreeSet<&str> = t.iter().map(|(k, _)| k.as_str()).collect();
    keys.len() == t.len()
}

fn binary(v: &ArgValue) -> Option<&[u8]> {
    match v {
        ArgValue::Str(s) => Some(s.as_bytes()),
        ArgValue::Bytes(b) => Some(b),
        _ => None,
    }
}

/// A number as Erlang holds it: an integer or a float.
enum Num {
    I(i128),
    F(f64),
}

fn num(v: &ArgValue) -> Option<Num> {
    match v {
        ArgValue::Int(i, _) => Some(Num::I(i128::from(*i))),
        ArgValue::Timestamp(t) => Some(Num::I(i128::from(*t))),
        ArgValue::Float(f, _) => Some(Num::F(*f)),
        _ => None,
    }
}

/// Erlang `==` between two top-level header values (types not compared).
fn erl_eq(a: &ArgValue, b: &ArgValue) -> bool {
    if let (Some(x), Some(y)) = (binary(a), binary(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (num(a), num(b)) {
        return match (x, y) {
            (Num::I(i), Num::I(j)) => i == j,
            (Num::F(f), Num::F(g)) => f == g,
            // The integers generated here are small, so the float comparison is exact.
            (Num::I(i), Num::F(f)) | (Num::F(f), Num::I(i)) => f == i as f64,
        };
    }
    match (a, b) {
        (ArgValue::Bool(x), ArgValue::Bool(y)) => x == y,
        (ArgValue::Decimal(s, v), ArgValue::Decimal(t, w)) => s == t && v == w,
        (ArgValue::Void, ArgValue::Void) => true,
        (ArgValue::Array(x), ArgValue::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| typed_eq(p, q))
        }
        (ArgValue::Table(x), ArgValue::Table(y)) => {
            x.len() == y.len()
                && x.0
                    .iter()
                    .zip(&y.0)
                    .all(|((k, p), (l, q))| k == l && typed_eq(p, q))
        }
        _ => false,
    }
}

/// Erlang `==` between `{Type, Value}` terms (inside arrays and tables).
fn typed_eq(a: &ArgValue, b: &ArgValue) -> bool {
    let same_type = match (a, b) {
        (ArgValue::Int(_, s), ArgValue::Int(_, t)) => s == t,
        (ArgValue::Float(_, s), ArgValue::Float(_, t)) => s == t,
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    };
    same_type && erl_eq(a, b)
}

/// RabbitMQ's headers rules read directly (keys unique on both sides).
fn reference(binding: &[(String, ArgValue)], data: &[(String, ArgValue)]) -> bool {
    let mode = match binding.iter().find(|(k, _)| k == "x-match").map(|(_, v)| v) {
        Some(ArgValue::Str(s)) => s.as_str(),
        _ => "all",
    };
    let (all, with_x) = match mode {
        "any" => (false, false),
        "any-with-x" => (false, true),
        "all-with-x" => (true, true),
        _ => (true, false),
    };
    let mut results = binding
        .iter()
        .filter(|(k, _)| k != "x-match" && (with_x || !k.starts_with("x-")))
        .map(|(k, v)| match data.iter().find(|(dk, _)| dk == k) {
            None => false,
            Some((_, dv)) => matches!(v, ArgValue::Void) || erl_eq(v, dv),
        });
    if all {
        results.all(|b| b)
    } else {
        results.any(|b| b)
    }
}

fn valid_mode(t: &[(String, ArgValue)]) -> bool {
    match t.iter().find(|(k, _)| k == "x-match").map(|(_, v)| v) {
        None => true,
        Some(ArgValue::Str(s)) => matches!(s.as_str(), "all" | "any" | "all-with-x" | "any-with-x"),
        Some(_) => false,
    }
}

/// The message's headers as the broker reads them from a published content header.
fn through_broker(t: &[(String, ArgValue)]) -> Option<Args> {
    let table: FieldTable = broker::args::from_router_args(&Args(t.to_vec()));
    let props = BasicProperties {
        headers: Some(table),
        ..Default::default()
    };
    let raw = RawProperties::from_properties(&props);
    let raw = RawProperties::from_bytes(Bytes::copy_from_slice(raw.as_bytes()));
    broker::args::message_headers(&raw)
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mut r = Router::new("/");
    let nb = 1 + inp.u8() % 6;
    let mut bound: Vec<(String, Vec<(String, ArgValue)>)> = Vec::new();
    for i in 0..nb {
        let t = table(&mut inp, true);
        let q = format!("q{i}");
        r.declare_queue(q.as_str().into());
        let res = r.bind(Binding::queue("amq.headers", &q, "").with_args(Args(t.clone())));
        assert_eq!(res.is_ok(), valid_mode(&t), "binding {t:?}: {res:?}");
        if res.is_ok() {
            bound.push((q, t));
        }
    }
    let nm = 1 + inp.u8() % 4;
    for _ in 0..nm {
        let m = table(&mut inp, false);
        let headers = through_broker(&m).expect("headers survive the broker's reading");
        let mut out = Vec::new();
        r.route("amq.headers", "", Some(&headers), &mut out)
            .expect("route");
        let got: BTreeSet<String> = out.iter().map(|n| n.to_string()).collect();
        let mut again = Vec::new();
        r.route("amq.headers", "", Some(&headers), &mut again)
            .expect("route");
        assert_eq!(out, again, "routing is not deterministic");
        if unique(&headers.0) && bound.iter().all(|(_, b)| unique(b)) {
            let want: BTreeSet<String> = bound
                .iter()
                .filter(|(_, b)| reference(b, &headers.0))
                .map(|(q, _)| q.clone())
                .collect();
            assert_eq!(got, want, "message {:?}, bindings {bound:?}", headers.0);
        }
    }
}
