//! Command line, scenario presets and the resolved run settings.

use std::time::Duration;

use anyhow::bail;
use clap::{Parser, ValueEnum};

use crate::procmon::parse_size;
use crate::uri::AmqpUri;

/// Exchange types the tool can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExchangeType {
    /// Each producer publishes with its queue's routing key (producer i → queue i mod Q).
    Direct,
    /// Every queue gets every message.
    Fanout,
    /// Queues bound with `<queue>.#`; producer i publishes `<queue i mod Q>.p<i>`.
    Topic,
}

impl ExchangeType {
    /// The AMQP exchange type name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
        }
    }
}

/// Queue types the tool can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum QueueType {
    /// A classic queue.
    #[default]
    Classic,
    /// A stream (`x-queue-type: stream`): durable, never purged, consumers need manual acks and read
    /// from `--stream-offset`.
    Stream,
}

/// How `--rate` spaces a producer's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Pacing {
    /// Each message at its own due time (a `timerfd`, µs precision): at 10 k msg/s, one message every
    /// 100 µs, each in its own write.
    #[default]
    Even,
    /// tokio's 1 ms timer: every millisecond, the messages due since the last one in one write (at
    /// 10 k msg/s, bursts of about ten). The tool's only pacing before session 14.
    Ms,
}

/// Benchmark presets (see `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Scenario {
    /// 1 producer → 1 consumer, 16 B transient, autoack.
    S1,
    /// 1 → 1, 1 KiB transient, manual ack, prefetch 100.
    S2,
    /// 1 → 1, confirms (window 100), 1 KiB persistent, durable queue, prefetch 100.
    S3,
    /// 4 → 4 over 4 queues (direct routing, one queue per pair), 256 B transient, prefetch 100.
    S4,
    /// Fanout to 10 queues, 1 producer, 10 consumers, 256 B transient, prefetch 100.
    S5,
    /// Publish --count (200000) × 1 KiB persistent with confirms into a durable queue with no
    /// consumer; then start the consumer and drain. Publish and drain rates are reported apart.
    S6,
    /// Fixed rate 10 000 msg/s, 1 KiB, prefetch 100: latency p50/p99.
    L1,
    /// Flow control (issue 11): 4 producers → 1 queue ← 1 consumer, 1 KiB transient,
    /// manual ack, prefetch 100, 30 s.
    F1,
    /// Flow control: 4 producers → 1 queue, no consumer while publishing, 1 KiB transient,
    /// 30 s (accepted messages, broker RSS, blocked time); then one consumer drains the
    /// queue so every accepted message is checked (`-y 0` skips the drain).
    F2,
    /// Flow control: 4 producers → 4 consumers on one queue, 256 B transient, manual ack,
    /// prefetch 100, 30 s.
    F3,
}

/// The broker process to watch (RSS, CPU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerTarget {
    /// By process id.
    Pid(u32),
    /// By name (comm or argv[0] file name), looked up in /proc when the run starts.
    Name(String),
}

/// mailroom-perf: AMQP 0-9-1 load generator (PerfTest / lavinmqperf style).
///
/// Runs N producers and M consumers (one connection each) in one process against any
/// AMQP 0-9-1 broker, measures publish/consume rates and end-to-end latency, and checks
/// that every published message was delivered exactly once (lost, duplicated and
/// out-of-order messages are counted per producer sequence). Reports the consume rate while
/// the producers publish apart from the drain after they stop, the backlog, latency,
/// producers' blocked time (connection.blocked) and socket-write waits, and with
/// --broker-pid / --broker-process the broker's peak RSS and CPU per message. Exits 2 when
/// messages were lost or duplicated without the redelivered flag, 1 on errors.
#[derive(Debug, Clone, Parser)]
#[command(name = "mailroom-perf", version)]
pub struct Args {
    /// Broker URI: amqp://user:pass@host:port/vhost.
    #[arg(
        long,
        env = "MAILROOM_PERF_URI",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,

    /// Benchmark preset; explicitly given flags override its values.
    #[arg(long, value_enum, ignore_case = true)]
    pub scenario: Option<Scenario>,

    /// Number of producers (one connection each). [default: 1]
    #[arg(short = 'x', long)]
    pub producers: Option<usize>,

    /// Number of consumers (one connection each); consumer j reads queue j mod Q. [default: 1]
    #[arg(short = 'y', long)]
    pub consumers: Option<usize>,

    /// Message body size in bytes (at least 16: producer id, sequence, timestamp). [default: 16]
    #[arg(short = 's', long)]
    pub size: Option<usize>,

    /// Persistent messages (delivery_mode 2).
    #[arg(long, overrides_with = "transient")]
    pub persistent: bool,

    /// Transient messages (delivery_mode 1). [default]
    #[arg(long, overrides_with = "persistent")]
    pub transient: bool,

    /// Publisher confirms with at most N unconfirmed messages per producer (0 = no confirms). [default: 0]
    #[arg(short = 'c', long = "confirm", value_name = "WINDOW")]
    pub confirm: Option<u32>,

    /// Consumer prefetch (basic.qos prefetch_count; 0 = unlimited). [default: 100]
    #[arg(short = 'q', long)]
    pub prefetch: Option<u16>,

    /// Ack with multiple=true every K deliveries instead of acking each one.
    #[arg(long, value_name = "K")]
    pub multi_ack: Option<u32>,

    /// Consume with no_ack (automatic acknowledgement).
    #[arg(short = 'a', long, overrides_with = "manual_ack")]
    pub autoack: bool,

    /// Acknowledge manually. [default]
    #[arg(long, overrides_with = "autoack")]
    pub manual_ack: bool,

    /// Exchange type. [default: direct]
    #[arg(short = 't', long, value_enum)]
    pub exchange_type: Option<ExchangeType>,

    /// Exchange name ("" = the default exchange, direct by queue name). [default: mailroom-perf.<type>]
    #[arg(short = 'e', long)]
    pub exchange: Option<String>,

    /// Number of queues. [default: 1]
    #[arg(long)]
    pub queues: Option<usize>,

    /// Queue names are <prefix><index>. [default: mailroom-perf- (mailroom-perf-s1- etc. for scenarios)]
    #[arg(long)]
    pub queue_prefix: Option<String>,

    /// Declare the queues durable.
    #[arg(long, overrides_with = "non_durable")]
    pub durable: bool,

    /// Declare the queues non-durable. [default]
    #[arg(long, overrides_with = "durable")]
    pub non_durable: bool,

    /// Publish rate per producer in msg/s (0 = as fast as possible). [default: 0]
    #[arg(short = 'r', long)]
    pub rate: Option<u64>,

    /// How --rate spaces messages: `even` (each at its own time, µs precision) or `ms` (tokio's 1 ms
    /// timer: the messages due in each millisecond in one burst). [default: even]
    #[arg(long, value_enum)]
    pub pacing: Option<Pacing>,

    /// Stop publishing after SECS seconds. [default: 10 unless --count]
    #[arg(short = 'z', long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Stop after N messages per producer.
    #[arg(short = 'C', long)]
    pub count: Option<u64>,

    /// After publishing stops, keep consuming until everything was seen or no message
    /// arrived for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub drain_timeout: f64,

    /// Stop draining this many seconds after publishing stopped, even while messages still
    /// arrive (0 = no limit). [default: 0]
    #[arg(long, value_name = "SECS")]
    pub max_drain: Option<f64>,

    /// Start the consumers only after the producers finished (S6 and F2 do this).
    #[arg(long)]
    pub consume_after_publish: bool,

    /// Heartbeat interval in seconds asked for on producer and consumer connections
    /// (0 = none). [default: what the broker proposes]
    #[arg(long, value_name = "SECS")]
    pub heartbeat: Option<u16>,

    /// Watch the broker process PID (on this host): peak RSS from /proc/PID/status every
    /// 100 ms, CPU time from /proc/PID/stat, reported per message.
    #[arg(long, value_name = "PID", conflicts_with = "broker_process")]
    pub broker_pid: Option<u32>,

    /// Like --broker-pid, finding the one process with this name in /proc (e.g. mailroom,
    /// beam.smp for RabbitMQ).
    #[arg(long, value_name = "NAME")]
    pub broker_process: Option<String>,

    /// Stop publishing when the watched broker's RSS reaches SIZE (e.g. 4GiB), so an
    /// overload run cannot exhaust the machine's memory; the report says so.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_broker_rss: Option<u64>,

    /// Publish with mandatory=true (unroutable messages come back and are counted as returned).
    #[arg(long)]
    pub mandatory: bool,

    /// Print the final report as one JSON object (on stdout; progress lines go to stderr).
    #[arg(long)]
    pub json: bool,

    /// No per-second progress lines.
    #[arg(long)]
    pub quiet: bool,

    /// Delete the queues at the end (scenario runs do this unless --no-cleanup).
    #[arg(long, overrides_with = "no_cleanup")]
    pub cleanup: bool,

    /// Keep the queues at the end.
    #[arg(long, overrides_with = "cleanup")]
    pub no_cleanup: bool,

    /// Do not purge the queues after declaring them (messages older than the run are
    /// ignored and counted as stale either way).
    #[arg(long)]
    pub no_purge: bool,

    /// Tokio worker threads. [default: min(cores, producers + consumers)]
    #[arg(long)]
    pub threads: Option<usize>,

    /// Give every message a unique `x-deduplication-header` (producer id and sequence), as a
    /// publisher using duplicate detection would (the cost of carrying the header).
    #[arg(long)]
    pub dedup_header: bool,

    /// Declare the queues with `x-message-deduplication: true` (Mailroom / the
    /// rabbitmq-message-deduplication plugin); implies --dedup-header.
    #[arg(long)]
    pub dedup_queue: bool,

    /// Give every message a unique message_id and the same value as correlation_id (producer id and
    /// sequence), as a traced application would (the cost of Mailroom's tracing, which records messages
    /// that have one).
    #[arg(long)]
    pub message_ids: bool,

    /// Test only: a producer skips every Nth sequence number (counts it as published).
    #[arg(long, hide = true)]
    pub inject_loss_every: Option<u64>,

    /// Test only: a producer publishes every Nth sequence number twice.
    #[arg(long, hide = true)]
    pub inject_duplicate_every: Option<u64>,

    /// Queue type to declare: classic or stream (streams are durable; manual acks).
    #[arg(long, value_enum, ignore_case = true)]
    pub queue_type: Option<QueueType>,

    /// Where stream consumers start (`x-stream-offset`): first, last, next (default), an offset, or an
    /// interval such as 10m.
    #[arg(long, value_name = "SPEC")]
    pub stream_offset: Option<String>,
}

/// Fully resolved settings of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Broker address and credentials.
    pub uri: AmqpUri,
    /// Preset used, if any.
    pub scenario: Option<Scenario>,
    /// Producers.
    pub producers: usize,
    /// Consumers.
    pub consumers: usize,
    /// Body size.
    pub size: usize,
    /// delivery_mode 2.
    pub persistent: bool,
    /// Confirm window (0 = off).
    pub confirm: u32,
    /// basic.qos prefetch.
    pub prefetch: u16,
    /// Multi-ack every K (0 = ack each).
    pub multi_ack: u32,
    /// no_ack consume.
    pub autoack: bool,
    /// Exchange type.
    pub exchange_type: ExchangeType,
    /// Exchange name ("" = default exchange).
    pub exchange: String,
    /// Number of queues.
    pub queues: usize,
    /// Queue name prefix.
    pub queue_prefix: String,
    /// Durable queues.
    pub durable: bool,
    /// Per-producer rate (0 = unlimited).
    pub rate: u64,
    /// How the rate spaces messages.
    pub pacing: Pacing,
    /// Publishing time limit.
    pub duration: Option<Duration>,
    /// Per-producer message limit.
    pub count: Option<u64>,
    /// Drain idle timeout.
    pub drain_timeout: Duration,
    /// Longest drain after publishing stopped (None = no limit).
    pub max_drain: Option<Duration>,
    /// Heartbeat to ask for on producer and consumer connections (None = the broker's).
    pub heartbeat: Option<u16>,
    /// Broker process to watch.
    pub broker: Option<BrokerTarget>,
    /// Stop publishing at this broker RSS (KiB).
    pub max_broker_rss_kb: Option<u64>,
    /// Consumers start after publishing ends.
    pub consume_after_publish: bool,
    /// mandatory flag.
    pub mandatory: bool,
    /// JSON output.
    pub json: bool,
    /// No progress lines.
    pub quiet: bool,
    /// Delete queues at the end.
    pub cleanup: bool,
    /// Purge queues after declaring.
    pub purge: bool,
    /// Runtime worker threads.
    pub threads: usize,
    /// Messages carry a unique `x-deduplication-header`.
    pub dedup_header: bool,
    /// Messages carry a unique message_id and correlation_id.
    pub message_ids: bool,
    /// Queues are declared with `x-message-deduplication: true`.
    pub dedup_queue: bool,
    /// Test-only loss injection.
    pub inject_loss_every: u64,
    /// Test-only duplicate injection.
    pub inject_duplicate_every: u64,
    /// Queue type.
    pub queue_type: QueueType,
    /// Stream consumers' `x-stream-offset` (None: the broker's default, next).
    pub stream_offset: Option<String>,
}

/// Values a preset sets (None = tool default).
#[derive(Default)]
struct Preset {
    producers: Option<usize>,
    consumers: Option<usize>,
    size: Option<usize>,
    persistent: Option<bool>,
    confirm: Option<u32>,
    prefetch: Option<u16>,
    autoack: Option<bool>,
    exchange_type: Option<ExchangeType>,
    queues: Option<usize>,
    durable: Option<bool>,
    rate: Option<u64>,
    count: Option<u64>,
    duration: Option<f64>,
    consume_after_publish: bool,
}

fn preset(s: Scenario) -> Preset {
    let base = Preset {
        producers: Some(1),
        consumers: Some(1),
        queues: Some(1),
        exchange_type: Some(ExchangeType::Direct),
        ..Preset::default()
    };
    match s {
        Scenario::S1 => Preset {
            size: Some(16),
            persistent: Some(false),
            autoack: Some(true),
            ..base
        },
        Scenario::S2 => Preset {
            size: Some(1024),
            persistent: Some(false),
            autoack: Some(false),
            prefetch: Some(100),
            ..base
        },
        Scenario::S3 => Preset {
            size: Some(1024),
            persistent: Some(true),
            durable: Some(true),
            confirm: Some(100),
            autoack: Some(false),
            prefetch: Some(100),
            ..base
        },
        Scenario::S4 => Preset {
            producers: Some(4),
            consumers: Some(4),
            queues: Some(4),
            size: Some(256),
            persistent: Some(false),
            autoack: Some(false),
            prefetch: Some(100),
            ..base
        },
        Scenario::S5 => Preset {
            consumers: Some(10),
            queues: Some(10),
            exchange_type: Some(ExchangeType::Fanout),
            size: Some(256),
            persistent: Some(false),
            autoack: Some(false),
            prefetch: Some(100),
            ..base
        },
        Scenario::S6 => Preset {
            size: Some(1024),
            persistent: Some(true),
            durable: Some(true),
            confirm: Some(100),
            autoack: Some(false),
            prefetch: Some(100),
            count: Some(200_000),
            consume_after_publish: true,
            ..base
        },
        Scenario::L1 => Preset {
            size: Some(1024),
            persistent: Some(false),
            autoack: Some(false),
            prefetch: Some(100),
            rate: Some(10_000),
            ..base
        },
        Scenario::F1 => Preset {
            producers: Some(4),
            size: Some(1024),
            persistent: Some(false),
            autoack: Some(false),
            prefetch: Some(100),
            duration: Some(30.0),
            ..base
        },
        Scenario::F2 => Preset {
            producers: Some(4),
            size: Some(1024),
            persistent: Some(false),
            autoack: Some(false),
            prefetch: Some(100),
            duration: Some(30.0),
            consume_after_publish: true,
            ..base
        },
        Scenario::F3 => Preset {
            producers: Some(4),
            consumers: Some(4),
            size: Some(256),
            persistent: Some(false),
            autoack: Some(false),
            prefetch: Some(100),
            duration: Some(30.0),
            ..base
        },
    }
}

fn flag_pair(yes: bool, no: bool) -> Option<bool> {
    match (yes, no) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

/// Smallest body: producer id + sequence (8 bytes) and send timestamp (8 bytes).
pub const MIN_SIZE: usize = 16;

impl Args {
    /// Applies the preset and defaults, and checks the combination.
    pub fn resolve(&self) -> anyhow::Result<Settings> {
        let p = self.scenario.map(preset).unwrap_or_default();
        let producers = self.producers.or(p.producers).unwrap_or(1);
        let consumers = self.consumers.or(p.consumers).unwrap_or(1);
        let size = self.size.or(p.size).unwrap_or(MIN_SIZE);
        if size < MIN_SIZE {
            bail!("--size must be at least {MIN_SIZE} bytes (producer id, sequence and timestamp)");
        }
        let exchange_type = self
            .exchange_type
            .or(p.exchange_type)
            .unwrap_or(ExchangeType::Direct);
        let exchange = self
            .exchange
            .clone()
            .unwrap_or_else(|| format!("mailroom-perf.{}", exchange_type.as_str()));
        if exchange.is_empty() && exchange_type != ExchangeType::Direct {
            bail!("the default exchange (\"\") is direct; use a named exchange for fanout/topic");
        }
        let queues = self.queues.or(p.queues).unwrap_or(1);
        if queues == 0 {
            bail!("--queues must be at least 1");
        }
        let count = self.count.or(p.count);
        // An explicit --duration wins; an explicit --count replaces the preset's duration.
        let duration = match (self.duration, self.count, p.duration, count) {
            (Some(d), ..) if d > 0.0 => Some(Duration::from_secs_f64(d)),
            (Some(_), ..) => bail!("--duration must be positive"),
            (None, Some(_), ..) => None,
            (None, None, Some(d), _) => Some(Duration::from_secs_f64(d)),
            (None, None, None, Some(_)) => None,
            (None, None, None, None) => Some(Duration::from_secs(10)),
        };
        let broker = match (self.broker_pid, &self.broker_process) {
            (Some(pid), _) => Some(BrokerTarget::Pid(pid)),
            (None, Some(name)) if !name.is_empty() => Some(BrokerTarget::Name(name.clone())),
            (None, Some(_)) => bail!("--broker-process needs a name"),
            (None, None) => None,
        };
        if self.max_broker_rss.is_some() && broker.is_none() {
            bail!("--max-broker-rss needs --broker-pid or --broker-process");
        }
        let cleanup = flag_pair(self.cleanup, self.no_cleanup).unwrap_or(self.scenario.is_some());
        let queue_type = self.queue_type.unwrap_or_default();
        let stream = queue_type == QueueType::Stream;
        if self.stream_offset.is_some() && !stream {
            bail!("--stream-offset needs --queue-type stream");
        }
        if stream && flag_pair(self.autoack, self.manual_ack).or(p.autoack) == Some(true) {
            bail!("stream consumers need manual acks (drop --autoack)");
        }
        if stream && flag_pair(self.durable, self.non_durable) == Some(false) {
            bail!("streams are durable (drop --non-durable)");
        }
        let threads = self.threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            cores.min(producers + consumers).max(1)
        });
        Ok(Settings {
            uri: AmqpUri::parse(&self.uri)?,
            scenario: self.scenario,
            producers,
            consumers,
            size,
            persistent: flag_pair(self.persistent, self.transient)
                .or(p.persistent)
                .unwrap_or(false),
            confirm: self.confirm.or(p.confirm).unwrap_or(0),
            prefetch: self.prefetch.or(p.prefetch).unwrap_or(100),
            multi_ack: self.multi_ack.unwrap_or(0),
            autoack: !stream
                && flag_pair(self.autoack, self.manual_ack)
                    .or(p.autoack)
                    .unwrap_or(false),
            exchange_type,
            exchange,
            queues,
            queue_prefix: self.queue_prefix.clone().unwrap_or_else(|| match self.scenario {
                Some(sc) => format!("mailroom-perf-{}-", format!("{sc:?}").to_lowercase()),
                None => "mailroom-perf-".into(),
            }),
            durable: stream
                || flag_pair(self.durable, self.non_durable)
                    .or(p.durable)
                    .unwrap_or(false),
            rate: self.rate.or(p.rate).unwrap_or(0),
            pacing: self.pacing.unwrap_or_default(),
            duration,
            count,
            drain_timeout: Duration::from_secs_f64(self.drain_timeout.max(0.0)),
            max_drain: self.max_drain.filter(|d| *d > 0.0).map(Duration::from_secs_f64),
            heartbeat: self.heartbeat,
            broker,
            max_broker_rss_kb: self.max_broker_rss.map(|b| b.div_ceil(1024)),
            consume_after_publish: self.consume_after_publish || p.consume_after_publish,
            mandatory: self.mandatory,
            json: self.json,
            quiet: self.quiet,
            cleanup,
            // queue.purge is not for streams
            purge: !self.no_purge && !stream,
            threads,
            dedup_header: self.dedup_header || self.dedup_queue,
            message_ids: self.message_ids,
            dedup_queue: self.dedup_queue,
            inject_loss_every: self.inject_loss_every.unwrap_or(0),
            inject_duplicate_every: self.inject_duplicate_every.unwrap_or(0),
            queue_type,
            stream_offset: self.stream_offset.clone(),
        })
    }
}

impl Settings {
    /// The queue.declare arguments (`x-queue-type` for streams).
    pub fn queue_arguments(&self) -> protocol::FieldTable {
        let mut t = protocol::FieldTable::new();
        if self.queue_type == QueueType::Stream {
            t.insert("x-queue-type", protocol::FieldValue::LongStr("stream".into()));
        }
        t
    }

    /// The basic.consume arguments (`x-stream-offset`: a number is an offset, anything else a string).
    pub fn consume_arguments(&self) -> protocol::FieldTable {
        let mut t = protocol::FieldTable::new();
        // always explicit for streams: a consumer tag of our own without x-stream-offset would turn on
        // Mailroom's (LavinMQ's) server-side offset tracking, which RabbitMQ does not have
        let spec = match (&self.stream_offset, self.queue_type) {
            (Some(o), _) => Some(o.as_str()),
            (None, QueueType::Stream) => Some("next"),
            (None, QueueType::Classic) => None,
        };
        if let Some(spec) = spec {
            let v = match spec.parse::<i64>() {
                Ok(n) => protocol::FieldValue::I64(n),
                Err(_) => protocol::FieldValue::LongStr(spec.into()),
            };
            t.insert("x-stream-offset", v);
        }
        t
    }

    /// Name of queue `i`.
    pub fn queue_name(&self, i: usize) -> String {
        format!("{}{}", self.queue_prefix, i)
    }

    /// The queues producer `p` publishes to (each gets one copy).
    pub fn producer_queues(&self, p: usize) -> Vec<usize> {
        match self.exchange_type {
            ExchangeType::Fanout => (0..self.queues).collect(),
            _ => vec![p % self.queues],
        }
    }

    /// The routing key producer `p` publishes with.
    pub fn routing_key(&self, p: usize) -> String {
        match self.exchange_type {
            ExchangeType::Fanout => String::new(),
            ExchangeType::Direct => self.queue_name(p % self.queues),
            ExchangeType::Topic => format!("{}.p{}", self.queue_name(p % self.queues), p),
        }
    }

    /// The binding key of queue `q`.
    pub fn binding_key(&self, q: usize) -> String {
        match self.exchange_type {
            ExchangeType::Fanout => String::new(),
            ExchangeType::Direct => self.queue_name(q),
            ExchangeType::Topic => format!("{}.#", self.queue_name(q)),
        }
    }

    /// The queue consumer `c` reads.
    pub fn consumer_queue(&self, c: usize) -> usize {
        c % self.queues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Settings {
        let mut v = vec!["mailroom-perf"];
        v.extend_from_slice(args);
        Args::try_parse_from(v).unwrap().resolve().unwrap()
    }

    #[test]
    fn defaults() {
        let s = parse(&[]);
        assert_eq!((s.producers, s.consumers, s.size, s.queues), (1, 1, 16, 1));
        assert_eq!(s.duration, Some(Duration::from_secs(10)));
        assert!(!s.persistent && !s.autoack && !s.durable && !s.cleanup && s.purge);
        assert_eq!(s.exchange, "mailroom-perf.direct");
        assert_eq!(s.routing_key(0), "mailroom-perf-0");
    }

    #[test]
    fn presets_and_overrides() {
        let s = parse(&["--scenario", "s1"]);
        assert!(s.autoack && s.size == 16 && s.cleanup);
        assert_eq!(s.queue_name(0), "mailroom-perf-s1-0");
        let s = parse(&[
            "--scenario",
            "S1",
            "--manual-ack",
            "--size",
            "100",
            "--no-cleanup",
        ]);
        assert!(!s.autoack && s.size == 100 && !s.cleanup);
        let s = parse(&["--scenario", "S3"]);
        assert!(s.persistent && s.durable && s.confirm == 100 && s.prefetch == 100);
        let s = parse(&["--scenario", "S3", "--transient", "-c", "0"]);
        assert!(!s.persistent && s.durable && s.confirm == 0);
        let s = parse(&["--scenario", "S4"]);
        assert_eq!((s.producers, s.consumers, s.queues, s.size), (4, 4, 4, 256));
        assert_eq!(s.producer_queues(3), vec![3]);
        let s = parse(&["--scenario", "S5"]);
        assert_eq!(s.exchange_type, ExchangeType::Fanout);
        assert_eq!(s.producer_queues(0).len(), 10);
        let s = parse(&["--scenario", "S6"]);
        assert_eq!((s.count, s.duration), (Some(200_000), None));
        assert!(s.consume_after_publish && s.persistent && s.confirm > 0);
        let s = parse(&["--scenario", "S6", "--count", "1000"]);
        assert_eq!(s.count, Some(1000));
        let s = parse(&["--scenario", "L1", "--duration", "3"]);
        assert_eq!((s.rate, s.duration), (10_000, Some(Duration::from_secs(3))));
        assert_eq!(s.pacing, Pacing::Even);
        let s = parse(&["--scenario", "L1", "--pacing", "ms"]);
        assert_eq!(s.pacing, Pacing::Ms);
    }

    #[test]
    fn flow_control_presets() {
        let s = parse(&["--scenario", "F1"]);
        assert_eq!((s.producers, s.consumers, s.queues, s.size), (4, 1, 1, 1024));
        assert_eq!((s.prefetch, s.duration), (100, Some(Duration::from_secs(30))));
        assert!(!s.autoack && !s.persistent && !s.consume_after_publish);
        assert_eq!(s.queue_name(0), "mailroom-perf-f1-0");
        assert_eq!(s.producer_queues(3), vec![0]);
        let s = parse(&["--scenario", "F2"]);
        assert_eq!((s.producers, s.consumers, s.queues, s.size), (4, 1, 1, 1024));
        assert!(s.consume_after_publish);
        assert_eq!(s.duration, Some(Duration::from_secs(30)));
        let s = parse(&["--scenario", "F2", "-y", "0", "--duration", "5"]);
        assert_eq!((s.consumers, s.duration), (0, Some(Duration::from_secs(5))));
        let s = parse(&["--scenario", "F3"]);
        assert_eq!((s.producers, s.consumers, s.queues, s.size), (4, 4, 1, 256));
        assert_eq!(s.consumer_queue(3), 0);
        // An explicit count replaces the preset's 30 s.
        let s = parse(&["--scenario", "F3", "--count", "100"]);
        assert_eq!((s.count, s.duration), (Some(100), None));
    }

    #[test]
    fn broker_watch_options() {
        let s = parse(&["--broker-pid", "42", "--max-broker-rss", "4GiB"]);
        assert_eq!(s.broker, Some(BrokerTarget::Pid(42)));
        assert_eq!(s.max_broker_rss_kb, Some(4 << 20));
        let s = parse(&[
            "--broker-process",
            "beam.smp",
            "--heartbeat",
            "5",
            "--max-drain",
            "60",
        ]);
        assert_eq!(s.broker, Some(BrokerTarget::Name("beam.smp".into())));
        assert_eq!(
            (s.heartbeat, s.max_drain),
            (Some(5), Some(Duration::from_secs(60)))
        );
        let s = parse(&[]);
        assert_eq!((s.broker, s.heartbeat, s.max_drain), (None, None, None));
        let try_args = |a: &[&str]| {
            let mut v = vec!["mailroom-perf"];
            v.extend_from_slice(a);
            Args::try_parse_from(v).map(|a| a.resolve().is_ok())
        };
        assert!(try_args(&["--broker-pid", "1", "--broker-process", "x"]).is_err());
        assert_eq!(try_args(&["--max-broker-rss", "1GiB"]).ok(), Some(false));
        assert!(try_args(&["--broker-pid", "1", "--max-broker-rss", "lots"]).is_err());
    }

    #[test]
    fn topic_routing() {
        let s = parse(&["-t", "topic", "--queues", "2", "-x", "3"]);
        assert_eq!(s.routing_key(2), "mailroom-perf-0.p2");
        assert_eq!(s.binding_key(1), "mailroom-perf-1.#");
    }

    #[test]
    fn rejects_bad_values() {
        let bad = |a: &[&str]| {
            let mut v = vec!["mailroom-perf"];
            v.extend_from_slice(a);
            Args::try_parse_from(v).unwrap().resolve().is_err()
        };
        assert!(bad(&["--size", "8"]));
        assert!(bad(&["--queues", "0"]));
        assert!(bad(&["-e", "", "-t", "fanout"]));
    }
}
