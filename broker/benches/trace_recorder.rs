//! The trace recorder's own write rate (issue 15, docs/performance.md "Tracing vs S2"): events of S2's
//! shape (per message: published, routed to one queue, delivered, acked; every message its own message id
//! and correlation id) are put into the recorder's buffer as fast as one thread can, and the time until all
//! are written to the store is measured, with the recorder uncapped (`recorder_busy_percent = 100`).
//! Run: `cargo bench -p mailroom-broker --bench trace_recorder` (TRACE_BENCH_MESSAGES, default 100,000).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::trace::{Event, Ids, Kind, Queues, Recorder, Source, TraceSettings};
use protocol::{BasicProperties, RawProperties, ShortStr};

fn main() {
    let messages: u64 = std::env::var("TRACE_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let events = messages * 4;
    let dir = tempfile::tempdir().unwrap();
    let store = storage::Store::open(dir.path(), storage::StoreOptions::default()).unwrap();
    let rec = Recorder::new(TraceSettings {
        buffer_events: events as usize,
        max_events: 10_000_000,
        max_age_secs: 3600,
        recorder_busy_percent: 100,
    });
    let source = Arc::new(Source {
        vhost: "/".into(),
        connection: Some("127.0.0.1:50000 -> 127.0.0.1:5672".into()),
        user: Some("guest".into()),
    });
    let queue: Arc<str> = "perf-q".into();
    let exchange = ShortStr::from_static("");
    let rk = ShortStr::from_static("perf-q");
    let ctag = ShortStr::from_static("amq.ctag-perf");
    let props: Vec<RawProperties> = (0..messages)
        .map(|i| {
            let id = format!("{i:05}-{i:020}");
            RawProperties::from_properties(&BasicProperties {
                message_id: Some(id.as_str().into()),
                correlation_id: Some(id.as_str().into()),
                ..Default::default()
            })
        })
        .collect();
    rec.start(&store).unwrap();
    let started = Instant::now();
    for (i, p) in props.iter().enumerate() {
        let now = started.elapsed().as_millis() as u64 + 1_700_000_000_000;
        let Some(ids) = Ids::of(p) else { unreachable!() };
        let mut e = Event::new(Kind::Published, &source, ids, now);
        e.channel = Some(1);
        e.exchange = Some(exchange.clone());
        e.routing_key = Some(rk.clone());
        let mut d = e.clone();
        d.event = Kind::Delivered;
        d.queue = Some(queue.clone());
        d.consumer_tag = Some(ctag.clone());
        d.redelivered = Some(false);
        d.delivery_count = Some(0);
        let mut a = d.clone();
        a.event = Kind::Acked;
        a.exchange = None;
        a.routing_key = None;
        let _ = i;
        // The published-and-routed pair is one event of the hooks.
        e.queues = Some(Queues::of(std::slice::from_ref(&queue)));
        rec.record(e);
        rec.record(d);
        rec.record(a);
    }
    let offered = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while rec.written.load(Relaxed) < events && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = started.elapsed();
    let written = rec.written.load(Relaxed);
    println!(
        "trace recorder: {events} events offered in {:.3} s, {written} written in {:.3} s = {:.0} events/s written (dropped {})",
        offered.as_secs_f64(),
        took.as_secs_f64(),
        written as f64 / took.as_secs_f64(),
        rec.dropped.load(Relaxed)
    );
}
