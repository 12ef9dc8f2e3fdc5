//! `erlang:phash2/1` (erts `make_hash2`, erl_term_hashing.c) over the few Erlang terms an AMQP argument
//! table becomes in RabbitMQ (`[{Key, Type, Value}]`): what `rabbit_mgmt_format:args_hash/1` hashes for a
//! binding's `properties_key`. phash2 is documented as stable across ERTS versions and machines; the unit
//! tests check values computed by a real `erl`.

use router::{ArgValue, Args};

/// An Erlang term, as far as argument tables need.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Atom(&'static str),
    Int(i64),
    Float(f64),
    Binary(Vec<u8>),
    List(Vec<Term>),
    Tuple(Vec<Term>),
}

/// RabbitMQ's term for an argument table (`rabbit_binary_parser:parse_table/1`), key-sorted as
/// `rabbit_binding:sort_args/1` stores binding arguments.
pub fn args_term(args: &Args) -> Term {
    let sorted = args.sorted();
    Term::List(
        sorted
            .0
            .iter()
            .map(|(k, v)| {
                let (t, v) = typed(v);
                Term::Tuple(vec![Term::Binary(k.as_bytes().to_vec()), Term::Atom(t), v])
            })
            .collect(),
    )
}

fn typed(v: &ArgValue) -> (&'static str, Term) {
    match v {
        ArgValue::Str(s) => ("longstr", Term::Binary(s.as_bytes().to_vec())),
        ArgValue::Bytes(b) => ("binary", Term::Binary(b.clone())),
        ArgValue::Int(i, t) => (t.name(), Term::Int(*i)),
        ArgValue::Float(f, t) => (t.name(), Term::Float(*f)),
        ArgValue::Bool(b) => ("bool", Term::Atom(if *b { "true" } else { "false" })),
        ArgValue::Decimal(scale, value) => (
            "decimal",
            Term::Tuple(vec![Term::Int(*scale as i64), Term::Int(*value as i64)]),
        ),
        ArgValue::Timestamp(t) => ("timestamp", Term::Int(*t as i64)),
        ArgValue::Array(a) => (
            "array",
            Term::List(
                a.iter()
                    .map(|x| {
                        let (t, v) = typed(x);
                        Term::Tuple(vec![Term::Atom(t), v])
                    })
                    .collect(),
            ),
        ),
        ArgValue::Table(t) => ("table", args_term(t)),
        ArgValue::Void => ("void", Term::Atom("undefined")),
    }
}

const HCONST: u32 = 0x9e37_79b9;
const HCONST_2: u32 = 0x3c6e_f372;
const HCONST_3: u32 = 0xdaa6_6d2b;
const HCONST_4: u32 = 0x78dd_e6e4;
const HCONST_9: u32 = 0x8ff3_4781;
const HCONST_10: u32 = 0x2e2a_c13a;
const HCONST_11: u32 = 0xcc62_3af3;
const HCONST_12: u32 = 0x6a99_b4ac;
const HCONST_13: u32 = 0x08d1_2e65;
/// erts `NIL_DEF` (the tag value of `[]`, erl_term.h).
const NIL_DEF: u32 = 0x2;

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 13);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 8);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 13);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 12);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 16);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 5);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 3);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 10);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 15);
}

fn hash2(hash: &mut u32, x: u32, y: u32, k: u32) {
    let mut a = k.wrapping_add(x);
    let mut b = k.wrapping_add(y);
    mix(&mut a, &mut b, hash);
}

fn block_hash(k: &[u8], initval: u32) -> u32 {
    let (mut a, mut b, mut c) = (HCONST, HCONST, initval);
    let word = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let mut chunks = k.chunks_exact(12);
    for ch in &mut chunks {
        a = a.wrapping_add(word(&ch[0..4]));
        b = b.wrapping_add(word(&ch[4..8]));
        c = c.wrapping_add(word(&ch[8..12]));
        mix(&mut a, &mut b, &mut c);
    }
    let r = chunks.remainder();
    c = c.wrapping_add(k.len() as u32);
    for (i, &byte) in r.iter().enumerate() {
        let v = byte as u32;
        match i {
            0..=3 => a = a.wrapping_add(v << (8 * i)),
            4..=7 => b = b.wrapping_add(v << (8 * (i - 4))),
            _ => c = c.wrapping_add(v << (8 * (i - 7))),
        }
    }
    mix(&mut a, &mut b, &mut c);
    c
}

/// erts `atom_hash`: hashpjw over the (ASCII) name.
fn atom_hash(name: &str) -> u32 {
    let mut h: u32 = 0;
    for &v in name.as_bytes() {
        h = (h << 4).wrapping_add(v as u32);
        let g = h & 0xf000_0000;
        if g != 0 {
            h ^= g >> 24;
            h ^= g;
        }
    }
    h
}

fn int_hash(hash: &mut u32, n: i64) {
    // A small integer within 28 bits, else (64-bit emulator) magnitude and sign.
    if (-(1i64 << 27)..(1i64 << 27)).contains(&n) {
        let y = n as i32;
        if y < 0 {
            hash2(hash, y.wrapping_neg() as u32, 0, HCONST);
        }
        hash2(hash, y as u32, 0, HCONST);
    } else {
        let (con, t) = if n < 0 {
            (HCONST_10, n.unsigned_abs())
        } else {
            (HCONST_11, n as u64)
        };
        hash2(hash, t as u32, (t >> 32) as u32, con);
    }
}

/// What is still to hash: a term, a list's cells from some element on (empty: the `[]` ending it).
enum Work<'a> {
    Term(&'a Term),
    List(&'a [Term]),
}

/// `erlang:phash2(Term)` with the full 32-bit range (`phash2(Term, 1 bsl 32)`).
pub fn phash2(term: &Term) -> u32 {
    let mut hash: u32 = 0;
    let mut stack: Vec<Work> = vec![Work::Term(term)];
    while let Some(w) = stack.pop() {
        let t = match w {
            Work::List([]) => {
                if hash == 0 {
                    hash = 3_468_870_702;
                } else {
                    hash2(&mut hash, NIL_DEF, 0, HCONST_2);
                }
                continue;
            }
            Work::List(items) => {
                // Leading bytes (integers 0..=255) are hashed four at a time; the first other element
                // is hashed as a term, then the cells after it (a list again, or `[]`).
                let mut i = 0;
                let (mut c, mut sh) = (0u32, 0u32);
                while let Some(Term::Int(n @ 0..=255)) = items.get(i) {
                    sh = (sh << 8).wrapping_add(*n as u32);
                    if c == 3 {
                        hash2(&mut hash, sh, 0, HCONST_4);
                        c = 0;
                        sh = 0;
                    } else {
                        c += 1;
                    }
                    i += 1;
                }
                if c > 0 {
                    hash2(&mut hash, sh, 0, HCONST_4);
                }
                if i == items.len() {
                    stack.push(Work::List(&[]));
                } else {
                    stack.push(Work::List(&items[i + 1..]));
                    stack.push(Work::Term(&items[i]));
                }
                continue;
            }
            Work::Term(t) => t,
        };
        match t {
            Term::Atom(a) => {
                if hash == 0 {
                    hash = atom_hash(a);
                } else {
                    hash2(&mut hash, atom_hash(a), 0, HCONST_3);
                }
            }
            Term::Int(n) => int_hash(&mut hash, *n),
            Term::Float(f) => {
                let f = if *f == 0.0 { 0.0f64 } else { *f };
                let bits = f.to_bits();
                hash2(&mut hash, (bits >> 32) as u32, bits as u32, HCONST_12);
            }
            Term::Binary(b) => {
                let con = HCONST_13.wrapping_add(hash);
                hash = if b.is_empty() { con } else { block_hash(b, con) };
            }
            Term::Tuple(elems) => {
                hash2(&mut hash, elems.len() as u32, 0, HCONST_9);
                for e in elems.iter().rev() {
                    stack.push(Work::Term(e));
                }
            }
            Term::List(items) => stack.push(Work::List(items)),
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use router::{FloatType, IntType};

    fn bin(s: &str) -> Term {
        Term::Binary(s.as_bytes().to_vec())
    }

    fn row(k: &str, t: &'static str, v: Term) -> Term {
        Term::Tuple(vec![bin(k), Term::Atom(t), v])
    }

    /// Expected values from a real Erlang/OTP 25 node: `erlang:phash2(T, 1 bsl 32)` for each term.
    #[test]
    fn matches_erlang_phash2() {
        let cases = [
            (
                Term::List(vec![row("x-match", "longstr", bin("all"))]),
                3_739_797_118u32,
            ),
            (
                Term::List(vec![
                    row("a", "long", Term::Int(1)),
                    row("b", "signedint", Term::Int(-5)),
                    row("c", "bool", Term::Atom("true")),
                ]),
                1_740_316_480,
            ),
            (
                Term::List(vec![
                    row("k", "double", Term::Float(1.5)),
                    row("n", "long", Term::Int(1_234_567_890_123)),
                    row("z", "void", Term::Atom("undefined")),
                ]),
                2_385_369_667,
            ),
            (
                Term::List(vec![
                    row(
                        "arr",
                        "array",
                        Term::List(vec![
                            Term::Tuple(vec![Term::Atom("longstr"), bin("x")]),
                            Term::Tuple(vec![Term::Atom("long"), Term::Int(7)]),
                        ]),
                    ),
                    row(
                        "t",
                        "table",
                        Term::List(vec![row("in", "longstr", bin("hello world, a longer string"))]),
                    ),
                ]),
                111_080_201,
            ),
            (
                Term::List(vec![
                    row("d", "decimal", Term::Tuple(vec![Term::Int(2), Term::Int(314)])),
                    row("ts", "timestamp", Term::Int(1_700_000_000)),
                    row("neg", "long", Term::Int(-300_000_000)),
                ]),
                3_833_467_775,
            ),
            (Term::List(vec![]), 3_468_870_702),
            (
                Term::List(vec![
                    row("x-match", "longstr", bin("any")),
                    row("format", "longstr", bin("pdf")),
                ]),
                1_670_631_156,
            ),
        ];
        for (term, want) in cases {
            assert_eq!(phash2(&term), want, "{term:?}");
        }
    }

    #[test]
    fn argument_tables_become_rabbitmqs_terms_key_sorted() {
        let args = Args::new()
            .with("format", ArgValue::Str("pdf".into()))
            .with("x-match", ArgValue::Str("any".into()));
        // Sorted: format, x-match (RabbitMQ sorts binding arguments by key before storing them).
        assert_eq!(
            args_term(&args),
            Term::List(vec![
                row("format", "longstr", bin("pdf")),
                row("x-match", "longstr", bin("any")),
            ])
        );
        let typed = Args::new()
            .with("a", ArgValue::Int(1, IntType::Long))
            .with("b", ArgValue::Int(-5, IntType::SignedInt))
            .with("c", ArgValue::Bool(true));
        assert_eq!(phash2(&args_term(&typed)), 1_740_316_480);
        let f = Args::new().with("k", ArgValue::Float(1.5, FloatType::Double));
        assert!(matches!(args_term(&f), Term::List(v) if v.len() == 1));
    }
}
