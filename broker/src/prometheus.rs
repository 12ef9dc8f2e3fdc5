//! The Prometheus endpoint (`--prometheus-listen`, default 127.0.0.1:15692): `/metrics` aggregated and
//! `/metrics/per-object` with one series per queue, in the OpenMetrics text format (prometheus-client).
//!
//! Two sets of names: our own, prefixed `mailroom_`, and the series RabbitMQ's rabbitmq_prometheus plugin
//! exposes under the names its Grafana dashboards query (`rabbitmq_queue_messages_ready`,
//! `rabbitmq_global_messages_received_total`, `rabbitmq_identity_info`, ...), so a RabbitMQ-Overview
//! dashboard works unchanged. Both are listed in docs/operations.md.
//!
//! Nothing here is on the hot path: the counters are read at scrape time (`stats.rs`, queue stats, flow
//! counters, the store's flush histogram), and the text is built on a blocking thread so a large
//! per-object scrape never holds a runtime worker.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::stats::{self, ConnTotals, SIZE_BUCKETS};

/// OpenMetrics, which Prometheus asks for first and parses natively.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, shutdown: CancellationToken) {
    let app = axum::Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/per-object", get(per_object))
        .with_state(Scrape::new(broker));
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "Prometheus endpoint failed");
    }
}

/// What the handlers share: the broker, the start time, the cached store size.
#[derive(Clone)]
struct Scrape {
    broker: Arc<Broker>,
    started: Instant,
    /// The store's size on disk and when it was measured: walking the data dir is not free with many
    /// queues, so it is measured at most every [`STORE_SIZE_EVERY`].
    store_size: Arc<parking_lot::Mutex<Option<(Instant, u64)>>>,
}

const STORE_SIZE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Scrape {
    fn new(broker: Arc<Broker>) -> Scrape {
        Scrape {
            broker,
            started: Instant::now(),
            store_size: Arc::default(),
        }
    }

    fn store_size(&self) -> u64 {
        let mut cached = self.store_size.lock();
        match *cached {
            Some((at, size)) if at.elapsed() < STORE_SIZE_EVERY => size,
            _ => {
                let size = self.broker.store.size_on_disk().unwrap_or(0);
                *cached = Some((Instant::now(), size));
                size
            }
        }
    }
}

async fn aggregated(State(s): State<Scrape>) -> Response {
    render(s, false).await
}

async fn per_object(State(s): State<Scrape>) -> Response {
    render(s, true).await
}

async fn render(s: Scrape, per_object: bool) -> Response {
    let encoded = tokio::task::spawn_blocking(move || {
        let (started, cpu) = (Instant::now(), thread_cpu());
        let r = encode(&s, per_object);
        if let Ok(text) = &r {
            tracing::debug!(
                per_object,
                bytes = text.len(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                cpu_ms = thread_cpu().saturating_sub(cpu).as_secs_f64() * 1e3,
                "metrics scrape encoded"
            );
        }
        r
    });
    match encoded.await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding failed: {e}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("scrape failed: {e}\n")).into_response(),
    }
}

/// One queue's figures at scrape time.
#[derive(Debug)]
struct QueueRow {
    vhost: Arc<str>,
    name: Arc<str>,
    ready: u64,
    unacked: u64,
    consumers: u64,
    published: u64,
    delivered: u64,
    acked: u64,
    dead_lettered: u64,
}

/// Every queue summed.
#[derive(Debug, Default)]
struct QueueSums {
    queues: u64,
    ready: u64,
    unacked: u64,
    consumers: u64,
}

/// Everything one scrape reports, read first, then encoded.
#[derive(Debug)]
struct Snapshot {
    per_object: bool,
    conns: ConnTotals,
    /// Per queue (only for `/metrics/per-object`).
    queues: Vec<QueueRow>,
    sums: QueueSums,
    uptime_secs: f64,
    rss: u64,
    memory_limit: u64,
    disk_free: u64,
    disk_limit: u64,
    open_fds: u64,
    max_fds: u64,
    alarm_memory: bool,
    alarm_disk: bool,
    throttled: u64,
    blocked: u64,
    flow: [(&'static str, &'static str, u64); 9],
    stalls: u64,
    store_size: u64,
    store: storage::StoreStats,
    flush: storage::LatencySnapshot,
    node: String,
}

fn snapshot(s: &Scrape, per_object: bool) -> Snapshot {
    let b = &s.broker;
    let mut queues = Vec::new();
    let mut sums = QueueSums::default();
    for vhost in b.vhosts() {
        for q in vhost.queues() {
            let (ready, unacked, consumers) = q.depth();
            sums.queues += 1;
            sums.ready += ready as u64;
            sums.unacked += unacked;
            sums.consumers += consumers as u64;
            if !per_object {
                continue;
            }
            let st = &q.stats;
            queues.push(QueueRow {
                vhost: vhost.name.clone(),
                name: q.name().clone(),
                ready: ready as u64,
                unacked,
                consumers: consumers as u64,
                published: st.published.load(Relaxed),
                delivered: st.delivered.load(Relaxed),
                acked: st.acked.load(Relaxed),
                dead_lettered: st.dead_lettered.load(Relaxed),
            });
        }
    }
    let f = &b.flow.counters;
    let alarms = b.flow.alarms();
    let ms = |v: u64| v / 1000;
    Snapshot {
        per_object,
        conns: b.stats.totals(),
        queues,
        sums,
        uptime_secs: s.started.elapsed().as_secs_f64(),
        rss: crate::flow::rss_bytes().unwrap_or_else(|| f.rss_bytes.load(Relaxed)),
        memory_limit: b.flow.memory_limit.load(Relaxed),
        disk_free: f.disk_free_bytes.load(Relaxed),
        disk_limit: b.config.disk_free_limit.bytes(crate::flow::available_memory()),
        open_fds: open_fds(),
        max_fds: max_fds(),
        alarm_memory: alarms.memory,
        alarm_disk: alarms.disk,
        throttled: stats::THROTTLED_NOW.load(Relaxed),
        blocked: stats::BLOCKED_NOW.load(Relaxed),
        flow: [
            (
                "mailroom_flow_queue_throttles",
                "Times a connection was throttled by a queue over its flow bound",
                f.queue_throttles.load(Relaxed),
            ),
            (
                "mailroom_flow_queue_throttled_seconds",
                "Seconds connections spent throttled by queues",
                ms(f.queue_throttled_ms.load(Relaxed)),
            ),
            (
                "mailroom_flow_alarm_blocks",
                "Times a connection was blocked by a resource alarm",
                f.alarm_blocks.load(Relaxed),
            ),
            (
                "mailroom_flow_alarm_blocked_seconds",
                "Seconds connections spent blocked by alarms",
                ms(f.alarm_blocked_ms.load(Relaxed)),
            ),
            (
                "mailroom_memory_alarms",
                "Times the memory alarm was raised",
                f.memory_alarms.load(Relaxed),
            ),
            (
                "mailroom_disk_alarms",
                "Times the disk alarm was raised",
                f.disk_alarms.load(Relaxed),
            ),
            (
                "mailroom_oversized_publishes",
                "Publishes refused over the maximum message size",
                f.oversized_publishes.load(Relaxed),
            ),
            (
                "mailroom_refused_connections",
                "Connections refused over --max-connections",
                f.refused_connections.load(Relaxed),
            ),
            (
                "mailroom_consumer_timeouts",
                "Channels closed by the consumer acknowledgement timeout",
                f.consumer_timeouts.load(Relaxed),
            ),
        ],
        stalls: crate::watchdog::stall_count(),
        store_size: s.store_size(),
        store: b.store.stats(),
        flush: b.store.flush_latency(),
        node: node_name(),
    }
}

fn encode(s: &Scrape, per_object: bool) -> Result<String, std::fmt::Error> {
    let mut snap = snapshot(s, per_object);
    let rows = per_object.then(|| std::mem::take(&mut snap.queues));
    let rows_len = rows.as_ref().map_or(0, Vec::len);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snap));
    let mut text = String::with_capacity(64 * 1024 + rows_len * 8 * 64);
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    let mut text = dashboard_le(text);
    if per_object {
        // The per-queue families are written here, by hand: prometheus-client's generic label encoding
        // is several times slower per sample, and with 100,000 queues these are 800,000 lines.
        if text.ends_with("# EOF\n") {
            text.truncate(text.len() - "# EOF\n".len());
        }
        if let Some(snap) = rows.as_deref() {
            write_per_queue(&mut text, snap);
        }
        text.push_str("# EOF\n");
    }
    Ok(text)
}

/// The message size buckets from 1 MB up as the RabbitMQ-Overview dashboard spells their `le` values
/// (`1e+06`, Go's float format, which Prometheus 3 also normalises to); prometheus-client writes
/// `1000000.0`, which a Prometheus 2 would keep and the dashboard's `le="1e+06"` would not match.
fn dashboard_le(mut text: String) -> String {
    for (from, to) in [
        ("1000000.0", "1e+06"),
        ("10000000.0", "1e+07"),
        ("50000000.0", "5e+07"),
        ("100000000.0", "1e+08"),
    ] {
        let from = format!("rabbitmq_message_size_bytes_bucket{{le=\"{from}\"}}");
        if let Some(i) = text.find(&from) {
            let to = format!("rabbitmq_message_size_bytes_bucket{{le=\"{to}\"}}");
            text.replace_range(i..i + from.len(), &to);
        }
    }
    text
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&(v as i64))
}

/// A counter: the name without `_total` (the encoder adds it).
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// A counter with one `protocol="amqp091"` label, as RabbitMQ's global counters.
fn global(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_family(&[("protocol", "amqp091")])?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn hist(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    sum: f64,
    count: u64,
    b: &[(f64, u64)],
) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum, count, b, None)
}

/// The per-queue families of `/metrics/per-object`: one family after the other, one sample per queue, the
/// label set escaped once per queue.
fn write_per_queue(text: &mut String, rows: &[QueueRow]) {
    type Field = fn(&QueueRow) -> u64;
    const FAMILIES: [(&str, &str, bool, Field); 8] = [
        (
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            false,
            |r| r.ready,
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            false,
            |r| r.unacked,
        ),
        (
            "rabbitmq_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            false,
            |r| r.ready + r.unacked,
        ),
        ("rabbitmq_queue_consumers", "Consumers on a queue", false, |r| {
            r.consumers
        }),
        (
            "mailroom_queue_messages_published",
            "Messages that entered the queue",
            true,
            |r| r.published,
        ),
        (
            "mailroom_queue_messages_delivered",
            "Messages delivered from the queue (consumers and basic.get)",
            true,
            |r| r.delivered,
        ),
        (
            "mailroom_queue_messages_acked",
            "Messages from the queue acknowledged by clients",
            true,
            |r| r.acked,
        ),
        (
            "mailroom_queue_messages_dead_lettered",
            "Messages dead-lettered from the queue to its dead-letter exchange",
            true,
            |r| r.dead_lettered,
        ),
    ];
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut l = String::with_capacity(r.vhost.len() + r.name.len() + 20);
            l.push_str("{vhost=\"");
            escape_into(&mut l, &r.vhost);
            l.push_str("\",queue=\"");
            escape_into(&mut l, &r.name);
            l.push_str("\"}");
            l
        })
        .collect();
    for (name, help, is_counter, field) in FAMILIES {
        let ty = if is_counter { "counter" } else { "gauge" };
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {ty}");
        for (r, l) in rows.iter().zip(&labels) {
            text.push_str(name);
            if is_counter {
                text.push_str("_total");
            }
            text.push_str(l);
            let _ = writeln!(text, " {}", field(r));
        }
    }
}

/// Escapes a label value as the text format wants.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut e;
        let c = &self.conns;
        let m = &c.messages;
        let endpoint = if self.per_object {
            "per-object"
        } else {
            "aggregated"
        };
        // RabbitMQ's identity and build info (the dashboards join every query on rabbitmq_identity_info).
        e.encode_descriptor(
            "rabbitmq_identity",
            "RabbitMQ node & cluster identity info",
            None,
            MetricType::Info,
        )?
        .encode_info(&[
            ("rabbitmq_node", self.node.as_str()),
            ("rabbitmq_cluster", "mailroom"),
            ("rabbitmq_cluster_permanent_id", "mailroom"),
            ("rabbitmq_endpoint", endpoint),
        ])?;
        e.encode_descriptor(
            "rabbitmq_build",
            "RabbitMQ & Erlang/OTP version info",
            None,
            MetricType::Info,
        )?
        .encode_info(&[
            ("product_name", "Mailroom"),
            ("product_version", env!("CARGO_PKG_VERSION")),
            ("rabbitmq_version", env!("CARGO_PKG_VERSION")),
            ("prometheus_plugin_version", env!("CARGO_PKG_VERSION")),
            ("erlang_version", "none"),
        ])?;
        e.encode_descriptor(
            "rabbitmq_erlang_uptime_seconds",
            "Node uptime",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&self.uptime_secs)?;

        // Totals (RabbitMQ's ?TOTALS) and the dashboard's gauges.
        let queues = self.sums.queues;
        let consumers = self.sums.consumers;
        gauge(
            e,
            "rabbitmq_connections",
            "Connections currently open",
            c.connections,
        )?;
        gauge(e, "rabbitmq_channels", "Channels currently open", c.channels)?;
        gauge(
            e,
            "rabbitmq_consumers",
            "Consumers currently connected",
            consumers,
        )?;
        gauge(e, "rabbitmq_queues", "Queues available", queues)?;
        gauge(
            e,
            "rabbitmq_global_publishers",
            "Current number of publishers",
            c.publishers,
        )?;
        gauge(
            e,
            "rabbitmq_global_consumers",
            "Current number of consumers",
            consumers,
        )?;
        let opened = stats::CONNECTIONS_OPENED.load(Relaxed);
        let ch_opened = stats::CHANNELS_OPENED.load(Relaxed);
        counter(
            e,
            "rabbitmq_connections_opened",
            "Total number of connections opened",
            opened,
        )?;
        counter(
            e,
            "rabbitmq_connections_closed",
            "Total number of connections closed or terminated",
            opened.saturating_sub(c.connections),
        )?;
        counter(
            e,
            "rabbitmq_channels_opened",
            "Total number of channels opened",
            ch_opened,
        )?;
        counter(
            e,
            "rabbitmq_channels_closed",
            "Total number of channels closed",
            ch_opened.saturating_sub(c.channels),
        )?;
        counter(
            e,
            "rabbitmq_queues_declared",
            "Total number of queues declared",
            stats::QUEUES_DECLARED.load(Relaxed),
        )?;
        counter(
            e,
            "rabbitmq_queues_created",
            "Total number of queues created",
            stats::QUEUES_CREATED.load(Relaxed),
        )?;
        counter(
            e,
            "rabbitmq_queues_deleted",
            "Total number of queues deleted",
            stats::QUEUES_DELETED.load(Relaxed),
        )?;

        // RabbitMQ's global counters (rabbit_global_counters).
        let delivered = m.delivered_consume_auto_ack
            + m.delivered_consume_manual_ack
            + m.delivered_get_auto_ack
            + m.delivered_get_manual_ack;
        for (name, help, v) in [
            ("rabbitmq_global_messages_received", "Total number of messages received from publishers", m.received),
            ("rabbitmq_global_messages_received_confirm", "Total number of messages received from publishers expecting confirmations", m.received_confirm),
            ("rabbitmq_global_messages_routed", "Total number of messages routed to queues or streams", m.routed),
            ("rabbitmq_global_messages_unroutable_dropped", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", m.unroutable_dropped),
            ("rabbitmq_global_messages_unroutable_returned", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", m.unroutable_returned),
            ("rabbitmq_global_messages_confirmed", "Total number of messages confirmed to publishers", m.confirmed),
            ("rabbitmq_global_messages_delivered", "Total number of messages delivered to consumers", delivered),
            ("rabbitmq_global_messages_delivered_consume_manual_ack", "Total number of messages delivered to consumers using basic.consume with manual acknowledgment", m.delivered_consume_manual_ack),
            ("rabbitmq_global_messages_delivered_consume_auto_ack", "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment", m.delivered_consume_auto_ack),
            ("rabbitmq_global_messages_delivered_get_manual_ack", "Total number of messages delivered to consumers using basic.get with manual acknowledgment", m.delivered_get_manual_ack),
            ("rabbitmq_global_messages_delivered_get_auto_ack", "Total number of messages delivered to consumers using basic.get with automatic acknowledgment", m.delivered_get_auto_ack),
            ("rabbitmq_global_messages_get_empty", "Total number of times basic.get operations fetched no message", m.get_empty),
            ("rabbitmq_global_messages_redelivered", "Total number of messages redelivered to consumers", m.redelivered),
            ("rabbitmq_global_messages_acknowledged", "Total number of messages acknowledged by consumers", m.acknowledged),
        ] {
            global(e, name, help, v)?;
        }
        // The channel metrics, aggregated over channels as RabbitMQ's /metrics does.
        for (name, help, v) in [
            ("rabbitmq_channel_messages_published", "Total number of messages published into an exchange on a channel", m.received),
            ("rabbitmq_channel_messages_confirmed", "Total number of messages published into an exchange and confirmed on the channel", m.confirmed),
            ("rabbitmq_channel_messages_unroutable_returned", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", m.unroutable_returned),
            ("rabbitmq_channel_messages_unroutable_dropped", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", m.unroutable_dropped),
            ("rabbitmq_channel_get_ack", "Total number of messages fetched with basic.get in manual acknowledgement mode", m.delivered_get_manual_ack),
            ("rabbitmq_channel_get", "Total number of messages fetched with basic.get in automatic acknowledgement mode", m.delivered_get_auto_ack),
            ("rabbitmq_channel_messages_delivered_ack", "Total number of messages delivered to consumers in manual acknowledgement mode", m.delivered_consume_manual_ack),
            ("rabbitmq_channel_messages_delivered", "Total number of messages delivered to consumers in automatic acknowledgement mode", m.delivered_consume_auto_ack),
            ("rabbitmq_channel_messages_redelivered", "Total number of messages redelivered to consumers", m.redelivered),
            ("rabbitmq_channel_messages_acked", "Total number of messages acknowledged by consumers", m.acknowledged),
            ("rabbitmq_channel_get_empty", "Total number of times basic.get operations fetched no message", m.get_empty),
        ] {
            counter(e, name, help, v)?;
        }
        let mut sizes: Vec<(f64, u64)> = SIZE_BUCKETS.iter().copied().zip(m.size_buckets).collect();
        sizes.push((f64::MAX, m.size_buckets[SIZE_BUCKETS.len()]));
        hist(
            e,
            "rabbitmq_message_size_bytes",
            "Size of messages received from publishers",
            m.size_sum as f64,
            m.received,
            &sizes,
        )?;

        // Queue depth: summed on /metrics (per queue on /metrics/per-object: `write_per_queue`).
        if !self.per_object {
            let (ready, unacked) = (self.sums.ready, self.sums.unacked);
            gauge(
                e,
                "rabbitmq_queue_messages_ready",
                "Messages ready to be delivered to consumers",
                ready,
            )?;
            gauge(
                e,
                "rabbitmq_queue_messages_unacked",
                "Messages delivered to consumers but not yet acknowledged",
                unacked,
            )?;
            gauge(
                e,
                "rabbitmq_queue_messages",
                "Sum of ready and unacknowledged messages - total queue depth",
                ready + unacked,
            )?;
            gauge(e, "rabbitmq_queue_consumers", "Consumers on a queue", consumers)?;
        }

        // The node: memory, disk, file descriptors, alarms.
        gauge(
            e,
            "rabbitmq_process_resident_memory_bytes",
            "Memory used in bytes",
            self.rss,
        )?;
        gauge(
            e,
            "rabbitmq_resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            self.memory_limit,
        )?;
        gauge(
            e,
            "rabbitmq_disk_space_available_bytes",
            "Disk space available in bytes",
            self.disk_free,
        )?;
        gauge(
            e,
            "rabbitmq_disk_space_available_limit_bytes",
            "Free disk space low watermark in bytes",
            self.disk_limit,
        )?;
        gauge(
            e,
            "rabbitmq_process_open_fds",
            "Open file descriptors",
            self.open_fds,
        )?;
        gauge(
            e,
            "rabbitmq_process_max_fds",
            "Open file descriptors limit",
            self.max_fds,
        )?;
        gauge(
            e,
            "rabbitmq_alarms_memory_used_watermark",
            "is 1 if VM memory watermark alarm is in effect",
            self.alarm_memory as u64,
        )?;
        gauge(
            e,
            "rabbitmq_alarms_free_disk_space_watermark",
            "is 1 if free disk space watermark alarm is in effect",
            self.alarm_disk as u64,
        )?;
        gauge(
            e,
            "rabbitmq_alarms_file_descriptor_limit",
            "is 1 if file descriptor limit alarm is in effect (Mailroom has no such alarm: always 0)",
            0,
        )?;

        // Our own names.
        let (ready, unacked) = (self.sums.ready, self.sums.unacked);
        gauge(
            e,
            "mailroom_connections",
            "AMQP connections open (past connection.open)",
            c.connections,
        )?;
        gauge(e, "mailroom_channels", "Channels open", c.channels)?;
        gauge(e, "mailroom_queues", "Queues", queues)?;
        gauge(e, "mailroom_consumers", "Consumers", consumers)?;
        gauge(
            e,
            "mailroom_messages_ready",
            "Messages ready in all queues",
            ready,
        )?;
        gauge(
            e,
            "mailroom_messages_unacked",
            "Messages delivered and not yet acknowledged, all queues",
            unacked,
        )?;
        counter(
            e,
            "mailroom_messages_published",
            "Messages published (basic.publish received)",
            m.received,
        )?;
        counter(
            e,
            "mailroom_messages_delivered",
            "Messages delivered (basic.deliver and basic.get-ok)",
            delivered,
        )?;
        counter(
            e,
            "mailroom_messages_acked",
            "Messages acknowledged by clients",
            m.acknowledged,
        )?;
        counter(
            e,
            "mailroom_messages_confirmed",
            "Publishes confirmed (basic.ack to publishers)",
            m.confirmed,
        )?;
        counter(
            e,
            "mailroom_messages_unroutable",
            "Publishes that reached no queue (returned or dropped)",
            m.unroutable_dropped + m.unroutable_returned,
        )?;
        gauge(
            e,
            "mailroom_alarm_memory",
            "1 while the memory alarm is set",
            self.alarm_memory as u64,
        )?;
        gauge(
            e,
            "mailroom_alarm_disk",
            "1 while the disk alarm is set",
            self.alarm_disk as u64,
        )?;
        gauge(
            e,
            "mailroom_connections_throttled",
            "Connections paused now by a queue over its flow bound",
            self.throttled,
        )?;
        gauge(
            e,
            "mailroom_connections_blocked",
            "Connections blocked now by a resource alarm",
            self.blocked,
        )?;
        for (name, help, v) in self.flow {
            counter(e, name, help, v)?;
        }
        counter(
            e,
            "mailroom_runtime_stalls",
            "Runtime stalls seen by the watchdog (no scheduler tick for 1 s)",
            self.stalls,
        )?;
        gauge(
            e,
            "mailroom_store_size_bytes",
            "Disk space allocated to the data directory (measured at most every 10 s)",
            self.store_size,
        )?;
        counter(
            e,
            "mailroom_store_writes",
            "Store write operations",
            self.store.writes,
        )?;
        counter(
            e,
            "mailroom_store_flushes",
            "Store flush rounds (group commits)",
            self.store.flushes,
        )?;
        counter(
            e,
            "mailroom_store_fsyncs",
            "fsync calls made by flush rounds",
            self.store.fsyncs,
        )?;
        counter(
            e,
            "mailroom_store_flush_errors",
            "Flush rounds that failed",
            self.store.flush_errors,
        )?;
        counter(
            e,
            "mailroom_store_bytes_written",
            "Bytes handed to the store",
            self.store.bytes_written,
        )?;
        let mut prev = 0;
        let mut buckets: Vec<(f64, u64)> = storage::LATENCY_BUCKETS
            .iter()
            .zip(self.flush.cumulative)
            .map(|(&b, cum)| {
                let n = cum - prev;
                prev = cum;
                (b, n)
            })
            .collect();
        buckets.push((f64::MAX, self.flush.count - prev));
        hist(
            e,
            "mailroom_store_flush_duration_seconds",
            "Time a successful flush round (write out, fsync, settle) took",
            self.flush.sum_secs,
            self.flush.count,
            &buckets,
        )?;
        gauge(
            e,
            "mailroom_process_resident_memory_bytes",
            "Resident set size of the process",
            self.rss,
        )?;
        gauge(
            e,
            "mailroom_process_open_fds",
            "Open file descriptors",
            self.open_fds,
        )?;
        gauge(
            e,
            "mailroom_process_max_fds",
            "File descriptor limit",
            self.max_fds,
        )?;
        e.encode_descriptor(
            "mailroom_uptime_seconds",
            "Seconds since the metrics endpoint started",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&self.uptime_secs)?;
        Ok(())
    }
}

/// `mailroom@<hostname>`, as RabbitMQ's `rabbit@<hostname>`.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("mailroom@{host}")
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn max_fds() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    lim.rlim_cur
}

/// CPU time of the calling thread (the scrape's cost, whatever the machine's load).
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct passed by pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
