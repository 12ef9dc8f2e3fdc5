//! route() throughput: topic at 10 / 10k / 100k bindings, headers, fanout,
//! direct. Each iteration is one `route` call; keys rotate through a fixed
//! set, most of which match something.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use router::{ArgValue, Args, Binding, ExchangeDef, ExchangeKind, Name, Router};

const QUEUES: usize = 1000;

fn router_with_queues(n: usize) -> Router {
    let mut r = Router::new("/");
    for q in 0..n {
        r.declare_queue(format!("q{q}").as_str().into());
    }
    r
}

/// A realistic mix: literal+`*`, leading `*`, trailing `#`, leading `#`.
fn topic_pattern(i: usize) -> String {
    match i % 5 {
        0 | 1 => format!("stock.s{i}.*"),
        2 => format!("*.eu.c{i}.#"),
        3 => format!("log.svc{i}.#"),
        _ => format!("#.alert.a{i}"),
    }
}

fn topic_keys(n: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for j in 0..64usize {
        // Spread over the bound range; pick an index of the right residue.
        let base = (j.wrapping_mul(2654435761) % n.max(1)) / 5 * 5;
        keys.push(match j % 5 {
            0 => format!("stock.s{base}.nyse"),
            1 => format!("orders.eu.c{}.paris.fr", base + 2),
            2 => format!("log.svc{}.error.db", base + 3),
            3 => format!("sys.node{j}.alert.a{}", base + 4),
            _ => format!("weather.us.ny.{j}"),
        });
    }
    keys
}

fn bench_topic(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic");
    g.throughput(Throughput::Elements(1));
    for &n in &[10usize, 10_000, 100_000] {
        let mut r = router_with_queues(QUEUES);
        r.declare_exchange(ExchangeDef::new("t", ExchangeKind::Topic))
            .unwrap();
        for i in 0..n {
            r.bind(Binding::queue(
                "t",
                &format!("q{}", i % QUEUES),
                &topic_pattern(i),
            ))
            .unwrap();
        }
        let keys = topic_keys(n);
        let mut out: Vec<Name> = Vec::new();
        let mut matched = 0usize;
        for k in &keys {
            r.route("t", k, None, &mut out).unwrap();
            matched += !out.is_empty() as usize;
        }
        eprintln!("topic/{n}: {matched}/{} sample keys match", keys.len());
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 63;
                r.route("t", black_box(&keys[i]), None, &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn bench_direct(c: &mut Criterion) {
    let mut g = c.benchmark_group("direct");
    g.throughput(Throughput::Elements(1));
    let n = 10_000;
    let mut r = router_with_queues(QUEUES);
    for i in 0..n {
        r.bind(Binding::queue(
            "amq.direct",
            &format!("q{}", i % QUEUES),
            &format!("key.{i}"),
        ))
        .unwrap();
    }
    let keys: Vec<String> = (0..64).map(|j| format!("key.{}", j * 151)).collect();
    let mut out: Vec<Name> = Vec::new();
    let mut i = 0usize;
    g.bench_function(BenchmarkId::from_parameter(n), |b| {
        b.iter(|| {
            i = (i + 1) & 63;
            r.route("amq.direct", black_box(&keys[i]), None, &mut out)
                .unwrap();
            black_box(out.len())
        })
    });
    let mut i = 0usize;
    g.bench_function("default-exchange", |b| {
        let qs: Vec<String> = (0..64).map(|j| format!("q{}", j * 7)).collect();
        b.iter(|| {
            i = (i + 1) & 63;
            r.route("", black_box(&qs[i]), None, &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(1));
    for &n in &[1usize, 10, 100] {
        let mut r = router_with_queues(n);
        r.declare_exchange(ExchangeDef::new("f", ExchangeKind::Fanout))
            .unwrap();
        for q in 0..n {
            r.bind(Binding::queue("f", &format!("q{q}"), "")).unwrap();
        }
        let mut out: Vec<Name> = Vec::new();
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                r.route("f", black_box("k"), None, &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn bench_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    g.throughput(Throughput::Elements(1));
    let s = |v: &str| ArgValue::Str(v.to_string());
    for &n in &[10usize, 100, 1000] {
        let mut r = router_with_queues(QUEUES);
        r.declare_exchange(ExchangeDef::new("h", ExchangeKind::Headers))
            .unwrap();
        for i in 0..n {
            let mode = if i % 2 == 0 { "all" } else { "any" };
            let args = Args::new()
                .with("x-match", s(mode))
                .with("format", s(if i % 3 == 0 { "pdf" } else { "zip" }))
                .with("region", s(&format!("r{}", i % 17)))
                .with("tenant", ArgValue::long((i % 101) as i64));
            r.bind(Binding::queue("h", &format!("q{}", i % QUEUES), "").with_args(args))
                .unwrap();
        }
        let msgs: Vec<Args> = (0..16)
            .map(|j| {
                Args::new()
                    .with("tenant", ArgValue::long(j * 7))
                    .with("format", s("pdf"))
                    .with("region", s(&format!("r{}", j % 17)))
                    .with("content-type", s("application/json"))
            })
            .collect();
        let mut out: Vec<Name> = Vec::new();
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 15;
                r.route("h", "", Some(black_box(&msgs[i])), &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

/// Edit cost at 100k topic bindings: bind + unbind of one binding.
fn bench_edit(c: &mut Criterion) {
    let mut g = c.benchmark_group("edit");
    let n = 100_000;
    let mut r = router_with_queues(QUEUES);
    r.declare_exchange(ExchangeDef::new("t", ExchangeKind::Topic))
        .unwrap();
    for i in 0..n {
        r.bind(Binding::queue(
            "t",
            &format!("q{}", i % QUEUES),
            &topic_pattern(i),
        ))
        .unwrap();
    }
    let b1 = Binding::queue("t", "q1", "stock.new.*");
    g.bench_function("topic-bind-unbind-100k", |b| {
        b.iter(|| {
            r.bind(b1.clone()).unwrap();
            r.unbind(&b1).unwrap();
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_topic,
    bench_direct,
    bench_fanout,
    bench_headers,
    bench_edit
);
criterion_main!(benches);
