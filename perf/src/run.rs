//! A whole run: topology, consumers, producers, progress lines, drain, report, cleanup.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::{
    ExchangeDeclare, ExchangeDelete, Method, QueueBind, QueueDeclare, QueueDelete, QueuePurge, ShortStr,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::amqp::Conn;
use crate::cli::Settings;
use crate::consumer::{self, ConsumerCtx, ConsumerOutcome, ConsumerStats};
use crate::hist::Histogram;
use crate::producer::{self, ProducerCtx, ProducerStats};
use crate::report::{process_cpu_seconds, Latency, Report};
use crate::tracker::{now_ns, SeqTracker};

fn exchange_is_predeclared(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

/// Declares the exchange, the queues and their bindings (and purges the queues).
pub async fn declare(conn: &mut Conn, s: &Settings) -> anyhow::Result<()> {
    if !exchange_is_predeclared(&s.exchange) {
        conn.rpc(Method::ExchangeDeclare(ExchangeDeclare {
            exchange: ShortStr::try_from_str(&s.exchange)?,
            kind: s.exchange_type.as_str().into(),
            durable: false,
            ..Default::default()
        }))
        .await
        .with_context(|| format!("declaring exchange {:?}", s.exchange))?;
    }
    for q in 0..s.queues {
        let name = ShortStr::try_from_str(&s.queue_name(q))?;
        conn.rpc(Method::QueueDeclare(QueueDeclare {
            queue: name.clone(),
            durable: s.durable,
            ..Default::default()
        }))
        .await
        .with_context(|| format!("declaring queue {name}"))?;
        if !s.exchange.is_empty() {
            conn.rpc(Method::QueueBind(QueueBind {
                queue: name.clone(),
                exchange: ShortStr::try_from_str(&s.exchange)?,
                routing_key: ShortStr::try_from_str(&s.binding_key(q))?,
                ..Default::default()
            }))
            .await
            .with_context(|| format!("binding queue {name}"))?;
        }
        if s.purge {
            conn.rpc(Method::QueuePurge(QueuePurge {
                queue: name.clone(),
                no_wait: false,
            }))
            .await
            .with_context(|| format!("purging queue {name}"))?;
        }
    }
    Ok(())
}

/// Deletes the queues (and our own exchange).
pub async fn cleanup(conn: &mut Conn, s: &Settings) -> anyhow::Result<()> {
    for q in 0..s.queues {
        conn.rpc(Method::QueueDelete(QueueDelete {
            queue: ShortStr::try_from_str(&s.queue_name(q))?,
            ..Default::default()
        }))
        .await?;
    }
    if !exchange_is_predeclared(&s.exchange) {
        conn.rpc(Method::ExchangeDelete(ExchangeDelete {
            exchange: ShortStr::try_from_str(&s.exchange)?,
            ..Default::default()
        }))
        .await?;
    }
    Ok(())
}

type ConsumerHandle = (Arc<ConsumerStats>, JoinHandle<anyhow::Result<ConsumerOutcome>>);

async fn start_consumers(
    s: &Arc<Settings>,
    stop: &watch::Receiver<bool>,
    start: Instant,
    start_wall_ns: u64,
) -> anyhow::Result<Vec<ConsumerHandle>> {
    let mut conns = Vec::with_capacity(s.consumers);
    for id in 0..s.consumers {
        let s = s.clone();
        conns.push(tokio::spawn(async move {
            let mut c = Conn::open(&s.uri, &format!("mailroom-perf consumer {id}")).await?;
            consumer::subscribe(&mut c, &s, id).await?;
            anyhow::Ok(c)
        }));
    }
    let mut out = Vec::with_capacity(s.consumers);
    for (id, c) in conns.into_iter().enumerate() {
        let conn = c.await??;
        let stats = Arc::new(ConsumerStats::default());
        let ctx = ConsumerCtx {
            id,
            settings: s.clone(),
            stats: stats.clone(),
            stop: stop.clone(),
            start,
            start_wall_ns,
        };
        out.push((stats, tokio::spawn(consumer::run(conn, ctx))));
    }
    Ok(out)
}

/// Shared view for the progress printer.
struct Live {
    producers: Vec<Arc<ProducerStats>>,
    consumers: Mutex<Vec<Arc<ConsumerStats>>>,
    total_hist: Mutex<Histogram>,
}

impl Live {
    fn totals(&self) -> (u64, u64, u64) {
        let p = self.producers.iter().map(|p| p.published.load(Relaxed)).sum();
        let a = self.producers.iter().map(|p| p.acked.load(Relaxed)).sum();
        let c = self
            .consumers
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.consumed.load(Relaxed))
            .sum();
        (p, a, c)
    }

    /// Moves the consumers' interval latencies into the total; returns the interval's.
    fn take_interval(&self) -> Histogram {
        let mut interval = Histogram::new();
        for c in self.consumers.lock().unwrap().iter() {
            let mut h = c.hist.lock().unwrap();
            interval.merge(&h);
            h.reset();
        }
        self.total_hist.lock().unwrap().merge(&interval);
        interval
    }
}

fn progress_line(t: f64, dp: u64, da: u64, dc: u64, confirms: bool, h: &Histogram) -> String {
    let mut line = format!("[{t:>6.1}s] published {dp:>8} msg/s");
    if confirms {
        line += &format!("  confirmed {da:>8} msg/s");
    }
    line += &format!("  consumed {dc:>8} msg/s");
    if h.count() > 0 {
        line += &format!(
            "  latency p50 {:.0} µs p99 {:.0} µs",
            h.percentile(50.0) as f64 / 1000.0,
            h.percentile(99.0) as f64 / 1000.0
        );
    }
    line
}

fn say(s: &Settings, line: &str) {
    if s.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
        let _ = std::io::stdout().flush();
    }
}

/// Runs the whole benchmark and returns its report.
pub async fn run(settings: Settings) -> anyhow::Result<Report> {
    let s = Arc::new(settings);
    let start = Instant::now();
    let start_wall_ns = now_ns();
    let cpu0 = process_cpu_seconds();

    let mut setup = Conn::open(&s.uri, "mailroom-perf setup").await?;
    declare(&mut setup, &s).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping producers (Ctrl-C again to abort)");
                stop.store(true, Relaxed);
                if tokio::signal::ctrl_c().await.is_ok() {
                    let _ = stop_tx.send(true);
                    std::process::exit(130);
                }
            }
        });
    }

    let mut consumers = Vec::new();
    if !s.consume_after_publish {
        consumers = start_consumers(&s, &stop_rx, start, start_wall_ns).await?;
    }

    // Producers: connect all, then start together.
    let mut pconns = Vec::with_capacity(s.producers);
    for id in 0..s.producers {
        let s = s.clone();
        pconns.push(tokio::spawn(async move {
            Conn::open(&s.uri, &format!("mailroom-perf producer {id}")).await
        }));
    }
    let mut ready = Vec::with_capacity(s.producers);
    for c in pconns {
        ready.push(c.await??);
    }
    let live = Arc::new(Live {
        producers: (0..s.producers)
            .map(|_| Arc::new(ProducerStats::default()))
            .collect(),
        consumers: Mutex::new(consumers.iter().map(|(st, _)| st.clone()).collect()),
        total_hist: Mutex::new(Histogram::new()),
    });
    let publish_start = start.elapsed();
    let mut producers = Vec::with_capacity(s.producers);
    for (id, conn) in ready.into_iter().enumerate() {
        let ctx = ProducerCtx {
            id,
            settings: s.clone(),
            stats: live.producers[id].clone(),
            stop: stop.clone(),
            start: start + publish_start,
        };
        producers.push(tokio::spawn(producer::run(conn, ctx)));
    }

    // Progress printer.
    let printer = {
        let live = live.clone();
        let s = s.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = live.totals();
            let mut last_t = Instant::now();
            loop {
                tick.tick().await;
                let now = live.totals();
                let dt = last_t.elapsed().as_secs_f64().max(1e-9);
                last_t = Instant::now();
                let h = live.take_interval();
                if !s.quiet {
                    let rate = |a: u64, b: u64| ((a - b) as f64 / dt).round() as u64;
                    say(
                        &s,
                        &progress_line(
                            start.elapsed().as_secs_f64(),
                            rate(now.0, last.0),
                            rate(now.1, last.1),
                            rate(now.2, last.2),
                            s.confirm > 0,
                            &h,
                        ),
                    );
                }
                last = now;
            }
        })
    };

    let mut errors = Vec::new();
    for p in producers {
        match p.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("producer task: {e}")),
        }
    }
    let publish_end = live
        .producers
        .iter()
        .map(|p| p.finished_ns.load(Relaxed))
        .max()
        .map_or(Duration::ZERO, Duration::from_nanos)
        + publish_start;

    // Consumers that start only now (S6): the drain phase.
    let mut consume_start = publish_start;
    if s.consume_after_publish && s.consumers > 0 {
        if !s.quiet {
            say(&s, "publishing done; starting consumers to drain");
        }
        consume_start = start.elapsed();
        consumers = start_consumers(&s, &stop_rx, start, start_wall_ns).await?;
        *live.consumers.lock().unwrap() = consumers.iter().map(|(st, _)| st.clone()).collect();
    }

    // What consumers must see: each queue with a consumer gets its copy from every
    // producer routed to it.
    let consumed_queues: BTreeSet<usize> = (0..s.consumers).map(|c| s.consumer_queue(c)).collect();
    let published: Vec<u64> = live.producers.iter().map(|p| p.published.load(Relaxed)).collect();
    let expected: u64 = (0..s.producers)
        .map(|p| {
            s.producer_queues(p)
                .iter()
                .filter(|q| consumed_queues.contains(q))
                .count() as u64
                * published[p]
        })
        .sum();

    // Drain: until every expected message was seen, or nothing arrived for drain_timeout.
    let mut drained = consumers.is_empty();
    if !consumers.is_empty() {
        let unique = || -> u64 { consumers.iter().map(|(c, _)| c.unique.load(Relaxed)).sum() };
        let mut last_seen = unique();
        let mut idle_since = Instant::now();
        loop {
            let u = unique();
            if u >= expected {
                drained = true;
                break;
            }
            if u != last_seen {
                last_seen = u;
                idle_since = Instant::now();
            } else if idle_since.elapsed() >= s.drain_timeout {
                break;
            }
            if consumers.iter().any(|(_, h)| h.is_finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::new();
    for (_, h) in consumers.drain(..) {
        match h.await {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("consumer task: {e}")),
        }
    }
    printer.abort();
    let _ = live.take_interval();
    for p in &live.producers {
        if let Some(e) = p.error.lock().unwrap().take() {
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
    }

    // Integrity: merge the consumers of each queue, then compare with what was published.
    let mut report = Report {
        scenario: s.scenario.map(|sc| format!("{sc:?}")),
        producers: s.producers,
        consumers: s.consumers,
        size: s.size,
        expected,
        drained,
        ..Default::default()
    };
    let mut per_queue: Vec<Option<Vec<SeqTracker>>> = vec![None; s.queues];
    for o in outcomes {
        report.duplicated += o.duplicated;
        report.duplicated_redelivered += o.duplicated_redelivered;
        report.out_of_order += o.out_of_order;
        report.redelivered += o.redelivered;
        report.stale += o.stale;
        report.foreign += o.foreign;
        match &mut per_queue[o.queue] {
            slot @ None => *slot = Some(o.trackers),
            Some(acc) => {
                for (a, b) in acc.iter_mut().zip(o.trackers.iter()) {
                    let (plain, redel) = a.merge(b);
                    report.duplicated += plain;
                    report.duplicated_redelivered += redel;
                }
            }
        }
    }
    for (q, trackers) in per_queue.iter().enumerate() {
        if !consumed_queues.contains(&q) {
            continue;
        }
        for (p, &n) in published.iter().enumerate() {
            if !s.producer_queues(p).contains(&q) {
                continue;
            }
            let seen = trackers.as_ref().map_or(0, |t| t[p].count_below(n));
            report.lost += n - seen.min(n);
        }
    }

    for p in &live.producers {
        report.published += p.published.load(Relaxed);
        report.confirmed += p.acked.load(Relaxed);
        report.nacked += p.nacked.load(Relaxed);
        report.returned += p.returned.load(Relaxed);
        if s.confirm > 0 {
            report.unconfirmed += p
                .sent
                .load(Relaxed)
                .saturating_sub(p.acked.load(Relaxed) + p.nacked.load(Relaxed));
        }
    }
    for c in live.consumers.lock().unwrap().iter() {
        report.consumed += c.consumed.load(Relaxed);
    }
    let last_delivery = live
        .consumers
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.last_ns.load(Relaxed))
        .max()
        .unwrap_or(0);
    report.publish_s = (publish_end - publish_start).as_secs_f64();
    report.publish_rate = report.published as f64 / report.publish_s.max(1e-9);
    report.consume_s = Duration::from_nanos(last_delivery)
        .saturating_sub(consume_start)
        .as_secs_f64();
    report.consume_rate = if report.consumed > 0 {
        report.consumed as f64 / report.consume_s.max(1e-9)
    } else {
        0.0
    };
    {
        let total = live.total_hist.lock().unwrap();
        report.latency_us = Latency::from_hist(&total);
        report.latency_samples = total.count();
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    report.cpu_s = process_cpu_seconds() - cpu0;
    let handled = report.published + report.consumed;
    report.cpu_ns_per_msg = if handled > 0 {
        report.cpu_s * 1e9 / handled as f64
    } else {
        0.0
    };
    report.errors = errors;

    if s.cleanup {
        if let Err(e) = cleanup(&mut setup, &s).await {
            report.errors.push(format!("cleanup: {e:#}"));
        }
    }
    setup.close().await;
    Ok(report)
}
