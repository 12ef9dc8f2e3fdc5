//! A whole run: topology, consumers, producers, progress lines, the end of publishing,
//! drain, report, cleanup.

use clap::ValueEnum;
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
use tokio_util::sync::CancellationToken;

use crate::amqp::Conn;
use crate::cli::{BrokerTarget, Settings};
use crate::consumer::{self, ConsumerCtx, ConsumerOutcome, ConsumerStats};
use crate::hist::Histogram;
use crate::phase::PublishClock;
use crate::procmon::{self, Monitor};
use crate::producer::{self, ProducerCtx, ProducerStats};
use crate::report::{fmt_kib, fmt_us, process_cpu_seconds, Latency, ProducerFlow, Report};
use crate::tracker::{mono_ns, now_ns, SeqTracker};

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
        let mut arguments = s.queue_arguments();
        if s.dedup_queue {
            arguments.insert("x-message-deduplication", protocol::FieldValue::Bool(true));
        }
        conn.rpc(Method::QueueDeclare(QueueDeclare {
            queue: name.clone(),
            durable: s.durable,
            arguments,
            ..Default::default()
        }))
        .await
        .with_context(|| format!("declaring queue {name}"))?;
        if !s.exchange.is_empty() {
            conn.rpc(Method::from(QueueBind {
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
    clock: &Arc<PublishClock>,
) -> anyhow::Result<Vec<ConsumerHandle>> {
    let mut conns = Vec::with_capacity(s.consumers);
    for id in 0..s.consumers {
        let s = s.clone();
        conns.push(tokio::spawn(async move {
            let mut c = Conn::open(&s.uri, &format!("mailroom-perf consumer {id}"), s.heartbeat).await?;
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
            clock: clock.clone(),
        };
        out.push((stats, tokio::spawn(consumer::run(conn, ctx))));
    }
    Ok(out)
}

/// Ready messages over the run's queues, per the broker (passive queue.declare on a
/// connection of its own; None if the broker does not answer within 5 s).
async fn queue_depth(s: &Settings) -> Option<u64> {
    let probe = async {
        let mut c = Conn::open(&s.uri, "mailroom-perf probe", Some(0)).await?;
        let mut total = 0u64;
        for q in 0..s.queues {
            match c
                .rpc(Method::QueueDeclare(QueueDeclare {
                    queue: ShortStr::try_from_str(&s.queue_name(q))?,
                    passive: true,
                    ..Default::default()
                }))
                .await?
            {
                Method::QueueDeclareOk(ok) => total += u64::from(ok.message_count),
                m => anyhow::bail!("expected queue.declare-ok, got {m:?}"),
            }
        }
        c.close().await;
        anyhow::Ok(total)
    };
    tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .ok()?
        .ok()
}

/// Shared view for the progress printer.
struct Live {
    producers: Vec<Arc<ProducerStats>>,
    /// Queues each producer's messages are routed to.
    copies: Vec<u64>,
    consumers: Mutex<Vec<Arc<ConsumerStats>>>,
    total_hist: Mutex<Histogram>,
    /// (`mono_ns`, backlog, routed copies) once a second while publishing.
    backlog_samples: Mutex<Vec<(u64, u64, u64)>>,
}

/// Counter readings at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    published: u64,
    acked: u64,
    consumed: u64,
    unique: u64,
    routed: u64,
}

impl Live {
    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for (p, copies) in self.producers.iter().zip(&self.copies) {
            let n = p.published.load(Relaxed);
            t.published += n;
            t.routed += n * copies;
            t.acked += p.acked.load(Relaxed);
        }
        for c in self.consumers.lock().unwrap().iter() {
            t.consumed += c.consumed.load(Relaxed);
            t.unique += c.unique.load(Relaxed);
        }
        t
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

/// One per-second progress line's figures.
#[derive(Debug, Default)]
pub struct Tick<'a> {
    /// Seconds since the run start.
    pub t: f64,
    /// Publishes per second over the last interval.
    pub published: u64,
    /// Confirms per second (None without confirms).
    pub confirmed: Option<u64>,
    /// Deliveries per second.
    pub consumed: u64,
    /// Routed copies not yet delivered.
    pub backlog: u64,
    /// The interval's latencies.
    pub hist: Option<&'a Histogram>,
    /// Producers still publishing (0 = publishing stopped).
    pub publishing: usize,
    /// Producers blocked by the broker right now.
    pub blocked: usize,
    /// Producers waiting for their socket right now.
    pub write_waiting: usize,
    /// Producers.
    pub producers: usize,
    /// Broker RSS (KiB) and CPU % over the interval, when watched.
    pub broker: Option<(u64, f64)>,
}

/// Formats a progress line.
pub fn progress_line(k: &Tick<'_>) -> String {
    let mut line = format!("[{:>6.1}s] published {:>8} msg/s", k.t, k.published);
    if let Some(c) = k.confirmed {
        line += &format!("  confirmed {c:>8} msg/s");
    }
    line += &format!("  consumed {:>8} msg/s  backlog {:>9}", k.consumed, k.backlog);
    if let Some(h) = k.hist.filter(|h| h.count() > 0) {
        line += &format!(
            "  latency p50 {} p99 {}",
            fmt_us(h.percentile(50.0) as f64 / 1000.0),
            fmt_us(h.percentile(99.0) as f64 / 1000.0)
        );
    }
    if k.blocked > 0 {
        line += &format!("  blocked {}/{}", k.blocked, k.producers);
    }
    if k.write_waiting > 0 {
        line += &format!("  write-waiting {}/{}", k.write_waiting, k.producers);
    }
    if let Some((rss, cpu)) = k.broker {
        line += &format!("  broker {} {cpu:.0}% CPU", fmt_kib(rss));
    }
    if k.publishing == 0 && k.producers > 0 {
        line += "  (publishing stopped)";
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

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Backlog growth over the second half of publishing: from the sample nearest the middle
/// of [start, end] (or from nothing at the start when there is none) to (`backlog_end`,
/// `routed_end`) at `end`. Returns (backlog growth in copies/s, the same divided by the
/// routed rate over that stretch; 0 without routing). Times are `mono_ns` readings;
/// samples are (time, backlog, routed copies).
pub fn backlog_growth(
    samples: &[(u64, u64, u64)],
    start: u64,
    end: u64,
    backlog_end: u64,
    routed_end: u64,
) -> (f64, f64) {
    let mid = start + end.saturating_sub(start) / 2;
    let (t, b, r) = samples
        .iter()
        .copied()
        .filter(|(t, ..)| *t > start && *t < end)
        .min_by_key(|(t, ..)| t.abs_diff(mid))
        .unwrap_or((start, 0, 0));
    let dt = secs(end.saturating_sub(t));
    if dt <= 0.0 {
        return (0.0, 0.0);
    }
    let growth = (backlog_end as f64 - b as f64) / dt;
    let routed = routed_end.saturating_sub(r) as f64 / dt;
    (growth, if routed > 0.0 { growth / routed } else { 0.0 })
}

/// Runs the whole benchmark and returns its report.
pub async fn run(settings: Settings) -> anyhow::Result<Report> {
    let s = Arc::new(settings);
    let start = Instant::now();
    let start_wall_ns = now_ns();
    let cpu0 = process_cpu_seconds();
    let stop_publishing = CancellationToken::new();

    let monitor = match &s.broker {
        None => None,
        Some(target) => {
            let pid = match target {
                BrokerTarget::Pid(p) => *p,
                BrokerTarget::Name(n) => procmon::find_process(n)?,
            };
            let m = Monitor::start(pid, s.max_broker_rss_kb, stop_publishing.clone())
                .with_context(|| format!("watching broker pid {pid}"))?;
            Some(Arc::new(m))
        }
    };

    let mut setup = Conn::open(&s.uri, "mailroom-perf setup", Some(0)).await?;
    declare(&mut setup, &s).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let stop_publishing = stop_publishing.clone();
        let stop_tx = stop_tx.clone();
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping producers (Ctrl-C again to abort)");
                interrupted.store(true, Relaxed);
                stop_publishing.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    let _ = stop_tx.send(true);
                    std::process::exit(130);
                }
            }
        });
    }

    let clock = Arc::new(PublishClock::new(s.producers));
    let mut consumers = Vec::new();
    if !s.consume_after_publish {
        consumers = start_consumers(&s, &stop_rx, start, start_wall_ns, &clock).await?;
    }

    // Producers: connect all, then start together.
    let mut pconns = Vec::with_capacity(s.producers);
    for id in 0..s.producers {
        let s = s.clone();
        pconns.push(tokio::spawn(async move {
            Conn::open(&s.uri, &format!("mailroom-perf producer {id}"), s.heartbeat).await
        }));
    }
    let mut ready = Vec::with_capacity(s.producers);
    for c in pconns {
        ready.push(c.await??);
    }
    let heartbeat_s = ready.first().map_or(0, |c: &Conn| c.heartbeat);
    let live = Arc::new(Live {
        producers: (0..s.producers)
            .map(|_| Arc::new(ProducerStats::default()))
            .collect(),
        copies: (0..s.producers)
            .map(|p| s.producer_queues(p).len() as u64)
            .collect(),
        consumers: Mutex::new(consumers.iter().map(|(st, _)| st.clone()).collect()),
        total_hist: Mutex::new(Histogram::new()),
        backlog_samples: Mutex::new(Vec::new()),
    });
    clock.start();
    let publish_start = start.elapsed();
    let mut producers = Vec::with_capacity(s.producers);
    for (id, conn) in ready.into_iter().enumerate() {
        let ctx = ProducerCtx {
            id,
            settings: s.clone(),
            stats: live.producers[id].clone(),
            stop: stop_publishing.clone(),
            start: start + publish_start,
            clock: clock.clone(),
            shutdown: stop_rx.clone(),
        };
        producers.push(tokio::spawn(producer::run(conn, ctx)));
    }

    // Progress printer.
    let printer = {
        let live = live.clone();
        let s = s.clone();
        let clock = clock.clone();
        let monitor = monitor.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = live.totals();
            let mut last_t = Instant::now();
            let mut last_cpu = monitor.as_ref().map_or(0.0, |m| m.current().1);
            loop {
                tick.tick().await;
                let now = live.totals();
                let dt = last_t.elapsed().as_secs_f64().max(1e-9);
                last_t = Instant::now();
                let h = live.take_interval();
                if clock.publishing() > 0 {
                    live.backlog_samples.lock().unwrap().push((
                        mono_ns(),
                        now.routed.saturating_sub(now.unique),
                        now.routed,
                    ));
                }
                if !s.quiet {
                    let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / dt).round() as u64;
                    let broker = monitor.as_ref().map(|m| {
                        let (rss, cpu) = m.current();
                        let pct = (cpu - last_cpu) * 100.0 / dt;
                        last_cpu = cpu;
                        (rss, pct)
                    });
                    let line = progress_line(&Tick {
                        t: start.elapsed().as_secs_f64(),
                        published: rate(now.published, last.published),
                        confirmed: (s.confirm > 0).then(|| rate(now.acked, last.acked)),
                        consumed: rate(now.consumed, last.consumed),
                        backlog: now.routed.saturating_sub(now.unique),
                        hist: Some(&h),
                        publishing: clock.publishing(),
                        blocked: live.producers.iter().filter(|p| p.blocked.load(Relaxed)).count(),
                        write_waiting: live
                            .producers
                            .iter()
                            .filter(|p| p.stall.waiting_since().is_some())
                            .count(),
                        producers: live.producers.len(),
                        broker,
                    });
                    say(&s, &line);
                }
                last = now;
            }
        })
    };

    // Publishing stops when the last producer leaves its publish loop.
    clock.wait_stopped().await;
    let end_ns = clock.end_ns().unwrap_or_else(mono_ns);
    let publishing_ns = end_ns.saturating_sub(clock.start_ns());
    let publish_end = publish_start + Duration::from_nanos(publishing_ns);
    let mut notes = Vec::new();
    if s.consume_after_publish {
        // What the broker accepted: once the producers wrote everything and got their
        // confirms (bounded: a broker that keeps them blocked is not waited for).
        let _ = tokio::time::timeout(s.drain_timeout + Duration::from_secs(2), clock.wait_finished()).await;
    }
    let queue_depth_publish_end = queue_depth(&s).await;

    // Consumers that start only now (S6, F2): the drain phase.
    let mut consume_start = publish_start;
    if s.consume_after_publish && s.consumers > 0 {
        if !s.quiet {
            say(&s, "publishing done; starting consumers to drain");
        }
        consume_start = start.elapsed();
        consumers = start_consumers(&s, &stop_rx, start, start_wall_ns, &clock).await?;
        *live.consumers.lock().unwrap() = consumers.iter().map(|(st, _)| st.clone()).collect();
    }

    // What consumers must see: each queue with a consumer gets its copy from every
    // producer routed to it.
    let consumed_queues: BTreeSet<usize> = (0..s.consumers).map(|c| s.consumer_queue(c)).collect();
    let expected_for = |published: &[u64]| -> u64 {
        (0..s.producers)
            .map(|p| {
                s.producer_queues(p)
                    .iter()
                    .filter(|q| consumed_queues.contains(q))
                    .count() as u64
                    * published[p]
            })
            .sum()
    };
    let published_at_end: Vec<u64> = live.producers.iter().map(|p| p.published.load(Relaxed)).collect();
    let expected = expected_for(&published_at_end);

    // Drain: until every expected message was seen, or nothing arrived for drain_timeout,
    // or --max-drain passed.
    let mut drained = consumers.is_empty();
    let mut drain_cut = false;
    if !consumers.is_empty() {
        let unique = || -> u64 { consumers.iter().map(|(c, _)| c.unique.load(Relaxed)).sum() };
        let mut last_seen = unique();
        let mut idle_since = Instant::now();
        let drain_start = Instant::now();
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
            if s.max_drain.is_some_and(|m| drain_start.elapsed() >= m) {
                drain_cut = true;
                break;
            }
            if consumers.iter().any(|(_, h)| h.is_finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _ = stop_tx.send(true);
    let mut errors = Vec::new();
    let mut outcomes = Vec::new();
    for (_, h) in consumers.drain(..) {
        match h.await {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("consumer task: {e}")),
        }
    }
    // Producers end by themselves once the run is over (see producer::run).
    for p in producers {
        match p.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("producer task: {e}")),
        }
    }
    printer.abort();
    let _ = printer.await;
    let _ = live.take_interval();
    for p in &live.producers {
        if let Some(e) = p.error.lock().unwrap().take() {
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
        if let Some(n) = p.note.lock().unwrap().take() {
            notes.push(n);
        }
    }

    // Integrity: merge the consumers of each queue, then compare with what was published
    // (a producer that gave up on a broker that stopped reading took back what it never wrote).
    let published: Vec<u64> = live.producers.iter().map(|p| p.published.load(Relaxed)).collect();
    let mut report = Report {
        scenario: s.scenario.map(|sc| format!("{sc:?}")),
        // the name `--pacing` takes, so the report spells it as the command line does
        pacing: s
            .pacing
            .to_possible_value()
            .filter(|_| s.rate > 0)
            .map(|v| v.get_name().to_owned()),
        producers: s.producers,
        consumers: s.consumers,
        size: s.size,
        expected: expected_for(&published),
        drained,
        consume_after_publish: s.consume_after_publish,
        heartbeat_s,
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

    let now = mono_ns();
    for (id, p) in live.producers.iter().enumerate() {
        report.published += p.published.load(Relaxed);
        report.routed += p.published.load(Relaxed) * live.copies[id];
        report.confirmed += p.acked.load(Relaxed);
        report.nacked += p.nacked.load(Relaxed);
        report.returned += p.returned.load(Relaxed);
        if s.confirm > 0 {
            report.unconfirmed += p
                .sent
                .load(Relaxed)
                .saturating_sub(p.acked.load(Relaxed) + p.nacked.load(Relaxed));
        }
        let b = p.block.lock().unwrap();
        report.producer_flow.push(ProducerFlow {
            id,
            blocked_s: secs(b.total_ns(now)),
            blocks: b.count(),
            block_reason: b.reason.clone(),
            blocked_at_end: b.at_end,
            write_wait_s: secs(p.stall.total_ns(now)),
            write_waits: p.stall.count(),
            write_wait_longest_s: secs(p.stall.max_ns(now)),
            stuck_at_end: p.stuck_at_end.load(Relaxed),
            unsent: p.unsent.load(Relaxed),
            heartbeats_sent: p.heartbeats_sent.load(Relaxed),
        });
    }
    let (mut unique, mut unique_publishing) = (0u64, 0u64);
    let mut last_delivery = 0u64;
    let mut hist_publishing = Histogram::new();
    for c in live.consumers.lock().unwrap().iter() {
        report.consumed += c.consumed.load(Relaxed);
        report.consumed_publishing += c.consumed_publishing.load(Relaxed);
        unique += c.unique.load(Relaxed);
        unique_publishing += c.unique_publishing.load(Relaxed);
        last_delivery = last_delivery.max(c.last_ns.load(Relaxed));
        hist_publishing.merge(&c.hist_publishing.lock().unwrap());
    }
    report.consumed_after = report.consumed - report.consumed_publishing;
    report.backlog_publish_end = report.routed.saturating_sub(unique_publishing);
    report.backlog_end = report.routed.saturating_sub(unique);
    (report.backlog_growth_rate, report.backlog_growth_share) = backlog_growth(
        &live.backlog_samples.lock().unwrap(),
        clock.start_ns(),
        end_ns,
        report.backlog_publish_end,
        report.routed,
    );
    report.queue_depth_publish_end = queue_depth_publish_end;

    report.publish_s = live
        .producers
        .iter()
        .map(|p| p.finished_ns.load(Relaxed))
        .max()
        .map_or(0.0, secs);
    report.publish_rate = report.published as f64 / report.publish_s.max(1e-9);
    report.publishing_s = secs(publishing_ns);
    report.consume_rate_publishing = if report.consumed_publishing > 0 {
        report.consumed_publishing as f64 / report.publishing_s.max(1e-9)
    } else {
        0.0
    };
    report.consume_s = Duration::from_nanos(last_delivery)
        .saturating_sub(consume_start)
        .as_secs_f64();
    report.consume_rate = if report.consumed > 0 {
        report.consumed as f64 / report.consume_s.max(1e-9)
    } else {
        0.0
    };
    if report.consumed_after > 0 {
        report.drain_s = Duration::from_nanos(last_delivery)
            .saturating_sub(publish_end.max(consume_start))
            .as_secs_f64();
        report.drain_rate = report.consumed_after as f64 / report.drain_s.max(1e-9);
    }
    {
        let total = live.total_hist.lock().unwrap();
        report.latency_us = Latency::from_hist(&total);
        report.latency_samples = total.count();
    }
    report.latency_publishing_us = Latency::from_hist(&hist_publishing);
    report.latency_publishing_samples = hist_publishing.count();

    // The broker's view at the end, then its process figures.
    report.queue_depth_end = queue_depth(&s).await;
    if let Some(m) = monitor {
        if let Ok(m) = Arc::try_unwrap(m) {
            let b = m.finish();
            if let Some(kb) = b.rss_cap_hit_kb {
                notes.push(format!(
                    "publishing stopped early: the broker's RSS reached {} (--max-broker-rss {})",
                    fmt_kib(kb),
                    fmt_kib(s.max_broker_rss_kb.unwrap_or(0))
                ));
            }
            if b.exited {
                errors.push(format!(
                    "the broker process (pid {}) exited during the run",
                    b.pid
                ));
            }
            report.broker = Some(b);
        }
    }
    if interrupted.load(Relaxed) {
        notes.push("interrupted (Ctrl-C): publishing stopped early".into());
    }
    if drain_cut {
        notes.push(format!(
            "the drain was cut off after --max-drain {:.0} s with messages still arriving",
            s.max_drain.map_or(0.0, |d| d.as_secs_f64())
        ));
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
    report.notes = notes;

    if s.cleanup {
        if let Err(e) = cleanup(&mut setup, &s).await {
            report.errors.push(format!("cleanup: {e:#}"));
        }
    }
    setup.close().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_growth_over_the_second_half() {
        const S: u64 = 1_000_000_000;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        // Routing 4000 copies/s, delivering 3000: the backlog grows 1000/s, a quarter.
        let grow: Vec<(u64, u64, u64)> = (1..10).map(|i| (i * S, i * 1000, i * 4000)).collect();
        let (g, share) = backlog_growth(&grow, 0, 10 * S, 10_000, 40_000);
        assert!(close(g, 1000.0) && close(share, 0.25), "{g} {share}");
        // The share is over the second half: a slow start does not inflate it.
        let slow_start: Vec<(u64, u64, u64)> = vec![(5 * S, 500, 1000)];
        let (g, share) = backlog_growth(&slow_start, 0, 10 * S, 5500, 11_000);
        assert!(close(g, 1000.0) && close(share, 0.5), "{g} {share}");
        // Steady backlog (what is in flight): no growth.
        let flat: Vec<(u64, u64, u64)> = (1..10).map(|i| (i * S, 50_000, i * 100_000)).collect();
        assert_eq!(backlog_growth(&flat, 0, 10 * S, 50_000, 1_000_000), (0.0, 0.0));
        // Shrinking.
        assert!(backlog_growth(&flat, 0, 10 * S, 0, 1_000_000).0 < 0.0);
        // Too short for a sample: from nothing at the start.
        let (g, share) = backlog_growth(&[], 0, S / 2, 500, 1000);
        assert!(close(g, 1000.0) && close(share, 0.5));
        // Samples outside the window are ignored.
        assert!(close(
            backlog_growth(&[(20 * S, 7, 7)], 0, 2 * S, 2000, 4000).0,
            1000.0
        ));
        assert_eq!(backlog_growth(&[], 5, 5, 10, 10), (0.0, 0.0));
        // Nothing routed: no share.
        assert_eq!(backlog_growth(&[], 0, S, 0, 0), (0.0, 0.0));
    }

    #[test]
    fn progress_lines_show_rates_backlog_and_flow() {
        let mut h = Histogram::new();
        h.record(2_000_000);
        let line = progress_line(&Tick {
            t: 3.0,
            published: 300_000,
            confirmed: None,
            consumed: 1_500,
            backlog: 897_000,
            hist: Some(&h),
            publishing: 4,
            blocked: 2,
            write_waiting: 4,
            producers: 4,
            broker: Some((6 << 20, 195.4)),
        });
        for f in [
            "[   3.0s]",
            "published   300000 msg/s",
            "consumed     1500 msg/s",
            "backlog    897000",
            "latency p50 2.0 ms",
            "blocked 2/4",
            "write-waiting 4/4",
            "broker 6.00 GiB 195% CPU",
        ] {
            assert!(line.contains(f), "{f:?} missing in {line}");
        }
        assert!(!line.contains("confirmed") && !line.contains("stopped"));
        let line = progress_line(&Tick {
            t: 40.0,
            confirmed: Some(10),
            producers: 1,
            ..Tick::default()
        });
        assert!(line.contains("confirmed       10 msg/s") && line.ends_with("(publishing stopped)"));
        assert!(!line.contains("latency") && !line.contains("blocked") && !line.contains("broker"));
    }
}
