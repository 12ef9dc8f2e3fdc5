//! The final report: human text, JSON, and the exit code.
//!
//! A throughput figure is the consume rate **while the producers publish**; the drain after
//! they stop and the overall rate are reported apart, with the backlog (published-and-routed
//! copies not yet delivered) when publishing stopped and at the end.

use std::fmt::Write as _;

use crate::hist::Histogram;
use crate::procmon::BrokerStats;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Latency {
    /// From a histogram of nanoseconds.
    pub fn from_hist(h: &Histogram) -> Latency {
        let us = |v: u64| v as f64 / 1000.0;
        Latency {
            p50: us(h.percentile(50.0)),
            p95: us(h.percentile(95.0)),
            p99: us(h.percentile(99.0)),
            max: us(h.max()),
        }
    }
}

/// Flow-control figures of one producer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProducerFlow {
    /// Producer index.
    pub id: usize,
    /// Time blocked by the broker (`connection.blocked` → `connection.unblocked`), s.
    pub blocked_s: f64,
    /// Number of `connection.blocked`.
    pub blocks: u64,
    /// The reason given with the last `connection.blocked`.
    pub block_reason: Option<String>,
    /// Still blocked when the producer ended.
    pub blocked_at_end: bool,
    /// Time spent waiting for the socket to take more (TCP back-pressure), s.
    pub write_wait_s: f64,
    /// Writes that had to wait.
    pub write_waits: u64,
    /// Longest single wait for the socket, s (a broker that stopped reading shows here).
    pub write_wait_longest_s: f64,
    /// Gave up waiting for the broker at the end (blocked, or socket not read).
    pub stuck_at_end: bool,
    /// Encoded publishes never written (dropped when giving up); not counted as published.
    pub unsent: u64,
    /// Heartbeat frames sent.
    pub heartbeats_sent: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Scenario name, if a preset was used.
    pub scenario: Option<String>,
    /// How `--rate` spaced the messages (`even`, `ms`), when a rate was set.
    pub pacing: Option<String>,
    /// Producers and consumers.
    pub producers: usize,
    /// Consumers.
    pub consumers: usize,
    /// Body size.
    pub size: usize,
    /// Messages published (sequence numbers handed out, over all producers).
    pub published: u64,
    /// Publishes acked by the broker (confirm mode).
    pub confirmed: u64,
    /// Publishes nacked by the broker.
    pub nacked: u64,
    /// Publishes returned (mandatory, unroutable).
    pub returned: u64,
    /// Publishes neither acked nor nacked by the end (confirm mode).
    pub unconfirmed: u64,
    /// Deliveries received (duplicates included).
    pub consumed: u64,
    /// Messages expected at the consumers (each queue with a consumer gets its copy).
    pub expected: u64,
    /// Copies routed to queues (with or without consumers): each publish counts once per
    /// queue it is bound to reach.
    pub routed: u64,
    /// Whether consumers saw everything expected before the drain timeout.
    pub drained: bool,
    /// Published msg/s over the publishing phase.
    pub publish_rate: f64,
    /// Overall consume rate: msg/s from the first publish (or, with consume-after-publish,
    /// the consumers' start) to the last delivery. Includes the drain after publishing.
    pub consume_rate: f64,
    /// Seconds from the first publish until publishing stopped (the last producer left its
    /// publish loop): the window of the `*_publishing` figures.
    pub publishing_s: f64,
    /// Deliveries received while the producers were publishing.
    pub consumed_publishing: u64,
    /// Deliveries per second while the producers were publishing: the throughput figure.
    pub consume_rate_publishing: f64,
    /// Deliveries received after publishing stopped.
    pub consumed_after: u64,
    /// Seconds from the end of publishing (or the consumers' start, if later) to the last
    /// delivery.
    pub drain_s: f64,
    /// Deliveries per second after publishing stopped.
    pub drain_rate: f64,
    /// Routed copies not yet delivered when publishing stopped.
    pub backlog_publish_end: u64,
    /// How fast the backlog grew over the second half of publishing, copies/s (about 0
    /// when consumers keep up: a steady backlog is what is in flight).
    pub backlog_growth_rate: f64,
    /// That growth ÷ the routed rate over the same stretch (0 = kept up, 1 = nothing
    /// delivered).
    pub backlog_growth_share: f64,
    /// Routed copies never delivered by the end of the run (queues without consumers
    /// included).
    pub backlog_end: u64,
    /// Ready messages in the queues per the broker (passive queue.declare) once publishing
    /// stopped (with consume-after-publish: once the producers finished, before the
    /// consumers start, i.e. what the broker accepted). None if the broker did not answer.
    pub queue_depth_publish_end: Option<u64>,
    /// The same at the end of the run, before cleanup.
    pub queue_depth_end: Option<u64>,
    /// Consumers were started only after publishing.
    pub consume_after_publish: bool,
    /// Seconds spent publishing (including waiting for the last confirms).
    pub publish_s: f64,
    /// Seconds of the consuming phase used for `consume_rate`.
    pub consume_s: f64,
    /// End-to-end latency of first deliveries.
    pub latency_us: Latency,
    /// Number of latency samples.
    pub latency_samples: u64,
    /// End-to-end latency of first deliveries received while publishing.
    pub latency_publishing_us: Latency,
    /// Number of those samples.
    pub latency_publishing_samples: u64,
    /// Heartbeat interval negotiated by the producers, s (0 = none).
    pub heartbeat_s: u16,
    /// Per producer: blocked time, socket-write waits.
    pub producer_flow: Vec<ProducerFlow>,
    /// The broker process, when watched.
    pub broker: Option<BrokerStats>,
    /// Things worth knowing that are not errors.
    pub notes: Vec<String>,
    /// Expected at a consumed queue but never delivered.
    pub lost: u64,
    /// Delivered again without the redelivered flag.
    pub duplicated: u64,
    /// Delivered again with the redelivered flag.
    pub duplicated_redelivered: u64,
    /// Delivered after a higher sequence of the same producer (redeliveries excluded).
    pub out_of_order: u64,
    /// Deliveries flagged redelivered.
    pub redelivered: u64,
    /// Deliveries stamped before this run (left in the queue by an earlier run).
    pub stale: u64,
    /// Deliveries without our stamp.
    pub foreign: u64,
    /// Wall time of the whole run.
    pub elapsed_s: f64,
    /// CPU time (user + system) of this process.
    pub cpu_s: f64,
    /// CPU ns per message handled: cpu / (published + consumed).
    pub cpu_ns_per_msg: f64,
    /// Errors from connections.
    pub errors: Vec<String>,
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn num(v: f64) -> String {
    if v.is_finite() {
        // + 0.0 turns -0 into 0
        format!("{}", (v * 1000.0).round() / 1000.0 + 0.0)
    } else {
        "null".into()
    }
}

fn opt_num(v: Option<f64>) -> String {
    v.map_or("null".into(), num)
}

fn opt_u64(v: Option<u64>) -> String {
    v.map_or("null".into(), |v| v.to_string())
}

fn latency_json(l: &Latency) -> String {
    format!(
        "{{\"p50\":{},\"p95\":{},\"p99\":{},\"max\":{}}}",
        num(l.p50),
        num(l.p95),
        num(l.p99),
        num(l.max)
    )
}

/// Human duration for latencies given in µs.
pub fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// Human size for KiB figures.
pub fn fmt_kib(kb: u64) -> String {
    if kb >= 1 << 20 {
        format!("{:.2} GiB", kb as f64 / (1u64 << 20) as f64)
    } else if kb >= 1 << 10 {
        format!("{:.1} MiB", kb as f64 / 1024.0)
    } else {
        format!("{kb} KiB")
    }
}

/// ns per message, or None without messages.
pub fn per_message_ns(seconds: f64, messages: u64) -> Option<f64> {
    (messages > 0).then(|| seconds * 1e9 / messages as f64)
}

impl Report {
    /// Whether the consumers fell behind the publishers: with consumers running while
    /// publishing, the backlog grew over the second half of publishing by more than 5 % of
    /// the routed rate over that half, and more than 1,000 copies were queued when publishing
    /// stopped. (A steady backlog — a prefetch window and socket buffers in flight — is not
    /// falling behind; a growing one is.)
    pub fn fell_behind(&self) -> bool {
        self.consumers > 0
            && !self.consume_after_publish
            && self.backlog_publish_end > 1000
            && self.backlog_growth_share > 0.05
    }

    /// Consume rate while publishing ÷ routed-copy rate while publishing (1.0 = consumers
    /// kept up). None without publishing.
    pub fn keep_up_ratio(&self) -> Option<f64> {
        let routed_rate = if self.published > 0 && self.publishing_s > 0.0 {
            self.routed as f64 / self.publishing_s
        } else {
            return None;
        };
        (routed_rate > 0.0).then(|| self.consume_rate_publishing / routed_rate)
    }

    /// Total blocked time over the producers, s.
    pub fn blocked_s(&self) -> f64 {
        self.producer_flow
            .iter()
            .map(|p| p.blocked_s)
            .fold(0.0, |a, b| a + b)
    }

    /// Longest blocked time of one producer, s.
    pub fn blocked_max_s(&self) -> f64 {
        self.producer_flow.iter().map(|p| p.blocked_s).fold(0.0, f64::max)
    }

    /// Number of blocks over the producers.
    pub fn blocks(&self) -> u64 {
        self.producer_flow.iter().map(|p| p.blocks).sum()
    }

    /// Total socket-write wait over the producers, s.
    pub fn write_wait_s(&self) -> f64 {
        self.producer_flow
            .iter()
            .map(|p| p.write_wait_s)
            .fold(0.0, |a, b| a + b)
    }

    /// Longest socket-write wait total of one producer, s.
    pub fn write_wait_max_s(&self) -> f64 {
        self.producer_flow
            .iter()
            .map(|p| p.write_wait_s)
            .fold(0.0, f64::max)
    }

    /// Longest single socket-write wait of any producer, s.
    pub fn write_wait_longest_s(&self) -> f64 {
        self.producer_flow
            .iter()
            .map(|p| p.write_wait_longest_s)
            .fold(0.0, f64::max)
    }

    /// True when messages were lost (consumers existed) or duplicated without redelivery.
    pub fn failed_checks(&self) -> bool {
        (self.consumers > 0 && self.lost > 0) || self.duplicated > 0
    }

    /// Process exit code: 0 fine, 1 connection errors, 2 lost / plain duplicates.
    pub fn exit_code(&self) -> i32 {
        if self.failed_checks() {
            2
        } else if !self.errors.is_empty() {
            1
        } else {
            0
        }
    }

    /// One JSON object.
    pub fn to_json(&self) -> String {
        let l = &self.latency_us;
        let mut o = String::from("{");
        let _ = write!(
            o,
            "\"scenario\":{},\"pacing\":{},\"producers\":{},\"consumers\":{},\"size\":{},",
            self.scenario.as_deref().map_or("null".into(), json_str),
            self.pacing.as_deref().map_or("null".into(), json_str),
            self.producers,
            self.consumers,
            self.size
        );
        let _ = write!(
            o,
            "\"published\":{},\"confirmed\":{},\"nacked\":{},\"returned\":{},\"unconfirmed\":{},\"consumed\":{},\"expected\":{},\"drained\":{},",
            self.published, self.confirmed, self.nacked, self.returned, self.unconfirmed, self.consumed, self.expected, self.drained
        );
        let _ = write!(
            o,
            "\"publish_rate\":{},\"consume_rate\":{},\"publish_s\":{},\"consume_s\":{},",
            num(self.publish_rate),
            num(self.consume_rate),
            num(self.publish_s),
            num(self.consume_s)
        );
        let _ = write!(
            o,
            "\"publishing_s\":{},\"consumed_publishing\":{},\"consume_rate_publishing\":{},\"keep_up_ratio\":{},\"consumed_after\":{},\"drain_s\":{},\"drain_rate\":{},\"consume_after_publish\":{},",
            num(self.publishing_s),
            self.consumed_publishing,
            num(self.consume_rate_publishing),
            opt_num(self.keep_up_ratio()),
            self.consumed_after,
            num(self.drain_s),
            num(self.drain_rate),
            self.consume_after_publish
        );
        let _ = write!(
            o,
            "\"routed\":{},\"backlog_publish_end\":{},\"backlog_growth_rate\":{},\"backlog_growth_share\":{},\"backlog_end\":{},\"fell_behind\":{},\"queue_depth_publish_end\":{},\"queue_depth_end\":{},",
            self.routed,
            self.backlog_publish_end,
            num(self.backlog_growth_rate),
            num(self.backlog_growth_share),
            self.backlog_end,
            self.fell_behind(),
            opt_u64(self.queue_depth_publish_end),
            opt_u64(self.queue_depth_end)
        );
        let _ = write!(
            o,
            "\"latency_publishing_us\":{},\"latency_publishing_samples\":{},",
            latency_json(&self.latency_publishing_us),
            self.latency_publishing_samples
        );
        let _ = write!(
            o,
            "\"heartbeat_s\":{},\"blocked_s\":{},\"blocked_max_s\":{},\"blocks\":{},\"blocked_at_end\":{},\"write_wait_s\":{},\"write_wait_max_s\":{},\"write_wait_longest_s\":{},\"producer_flow\":[{}],",
            self.heartbeat_s,
            num(self.blocked_s()),
            num(self.blocked_max_s()),
            self.blocks(),
            self.producer_flow.iter().filter(|p| p.blocked_at_end).count(),
            num(self.write_wait_s()),
            num(self.write_wait_max_s()),
            num(self.write_wait_longest_s()),
            self.producer_flow
                .iter()
                .map(|p| format!(
                    "{{\"id\":{},\"blocked_s\":{},\"blocks\":{},\"block_reason\":{},\"blocked_at_end\":{},\"write_wait_s\":{},\"write_waits\":{},\"write_wait_longest_s\":{},\"stuck_at_end\":{},\"unsent\":{},\"heartbeats_sent\":{}}}",
                    p.id,
                    num(p.blocked_s),
                    p.blocks,
                    p.block_reason.as_deref().map_or("null".into(), json_str),
                    p.blocked_at_end,
                    num(p.write_wait_s),
                    p.write_waits,
                    num(p.write_wait_longest_s),
                    p.stuck_at_end,
                    p.unsent,
                    p.heartbeats_sent
                ))
                .collect::<Vec<_>>()
                .join(",")
        );
        match &self.broker {
            None => o.push_str("\"broker\":null,"),
            Some(b) => {
                let _ = write!(
                    o,
                    "\"broker\":{{\"pid\":{},\"name\":{},\"samples\":{},\"rss_start_kb\":{},\"rss_peak_kb\":{},\"rss_end_kb\":{},\"vmhwm_kb\":{},\"cpu_s\":{},\"cpu_ns_per_consumed\":{},\"cpu_ns_per_published\":{},\"exited\":{},\"rss_cap_hit_kb\":{}}},",
                    b.pid,
                    json_str(&b.name),
                    b.samples,
                    b.rss_start_kb,
                    b.rss_peak_kb,
                    b.rss_end_kb,
                    b.vmhwm_kb,
                    num(b.cpu_s),
                    opt_num(per_message_ns(b.cpu_s, self.consumed)),
                    opt_num(per_message_ns(b.cpu_s, self.published)),
                    b.exited,
                    opt_u64(b.rss_cap_hit_kb)
                );
            }
        }
        let _ = write!(
            o,
            "\"latency_us\":{{\"p50\":{},\"p95\":{},\"p99\":{},\"max\":{}}},\"latency_samples\":{},",
            num(l.p50),
            num(l.p95),
            num(l.p99),
            num(l.max),
            self.latency_samples
        );
        let _ = write!(
            o,
            "\"lost\":{},\"duplicated\":{},\"duplicated_redelivered\":{},\"out_of_order\":{},\"redelivered\":{},\"stale\":{},\"foreign\":{},",
            self.lost, self.duplicated, self.duplicated_redelivered, self.out_of_order, self.redelivered, self.stale, self.foreign
        );
        let list = |v: &[String]| v.iter().map(|e| json_str(e)).collect::<Vec<_>>().join(",");
        let _ = write!(
            o,
            "\"elapsed_s\":{},\"cpu_s\":{},\"cpu_ns_per_msg\":{},\"notes\":[{}],\"errors\":[{}],\"ok\":{}}}",
            num(self.elapsed_s),
            num(self.cpu_s),
            num(self.cpu_ns_per_msg),
            list(&self.notes),
            list(&self.errors),
            self.exit_code() == 0
        );
        o
    }

    /// Multi-line human summary.
    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
        let lp = &self.latency_publishing_us;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "== mailroom-perf {}: {} producer(s), {} consumer(s), {} B ==",
            self.scenario.as_deref().unwrap_or("run"),
            self.producers,
            self.consumers,
            self.size
        );
        let _ = writeln!(
            o,
            "published         {:>10}  in {:>7.2} s  = {:>10.0} msg/s   (confirmed {}, nacked {}, unconfirmed {}, returned {})",
            self.published, self.publish_s, self.publish_rate, self.confirmed, self.nacked, self.unconfirmed, self.returned
        );
        if self.consume_after_publish {
            let _ = writeln!(o, "while publishing  no consumers (they start after publishing)");
        } else if self.consumers > 0 {
            let ratio = self
                .keep_up_ratio()
                .map_or(String::new(), |r| format!("   ({:.2} × the routed rate)", r));
            let _ = writeln!(
                o,
                "while publishing  {:>10}  in {:>7.2} s  = {:>10.0} msg/s consumed{ratio}",
                self.consumed_publishing, self.publishing_s, self.consume_rate_publishing
            );
            let _ = writeln!(
                o,
                "  latency         p50 {}  p95 {}  p99 {}  max {}  ({} samples)",
                fmt_us(lp.p50),
                fmt_us(lp.p95),
                fmt_us(lp.p99),
                fmt_us(lp.max),
                self.latency_publishing_samples
            );
        }
        let depth = |d: Option<u64>| d.map_or("no answer".to_string(), |d| d.to_string());
        let _ = writeln!(
            o,
            "backlog           {} when publishing stopped, {} at the end (of {} routed copies; broker's ready count: {} when publishing stopped, {} at the end)",
            self.backlog_publish_end,
            self.backlog_end,
            self.routed,
            depth(self.queue_depth_publish_end),
            depth(self.queue_depth_end)
        );
        if self.fell_behind() {
            let _ = writeln!(
                o,
                "                  CONSUMERS FELL BEHIND: the backlog grew by {:.0} copies/s ({:.0} % of the routed rate) over the second half of publishing; {:.1} % of the routed copies were still queued when publishing stopped",
                self.backlog_growth_rate,
                self.backlog_growth_share * 100.0,
                self.backlog_publish_end as f64 * 100.0 / self.routed.max(1) as f64
            );
        } else if self.consumers > 0 && !self.consume_after_publish && self.published > 0 {
            let _ = writeln!(
                o,
                "                  consumers kept up (backlog growth {:.0} copies/s over the second half of publishing)",
                self.backlog_growth_rate
            );
        }
        if self.consume_after_publish {
            let _ = writeln!(
                o,
                "                  accepted by the broker: {} ready messages once the producers finished writing (publishes still in the socket buffers of a blocked connection are read later)",
                depth(self.queue_depth_publish_end)
            );
        }
        if self.consumers > 0 {
            let _ = writeln!(
                o,
                "drain             {:>10}  in {:>7.2} s  = {:>10.0} msg/s consumed after publishing stopped",
                self.consumed_after, self.drain_s, self.drain_rate
            );
            let _ = writeln!(
                o,
                "overall           {:>10}  in {:>7.2} s  = {:>10.0} msg/s consumed, first publish to last delivery   (expected {}, drained {})",
                self.consumed, self.consume_s, self.consume_rate, self.expected, self.drained
            );
            let _ = writeln!(
                o,
                "latency (all)     p50 {}  p95 {}  p99 {}  max {}  ({} samples)",
                fmt_us(l.p50),
                fmt_us(l.p95),
                fmt_us(l.p99),
                fmt_us(l.max),
                self.latency_samples
            );
        }
        let at_end = self.producer_flow.iter().filter(|p| p.blocked_at_end).count();
        let _ = writeln!(
            o,
            "producers         blocked {} time(s), {:.2} s in total (longest per producer {:.2} s{}); waiting in socket writes {:.2} s in total (longest per producer {:.2} s, longest single wait {}); heartbeat {}",
            self.blocks(),
            self.blocked_s(),
            self.blocked_max_s(),
            if at_end > 0 { format!(", {at_end} still blocked at the end") } else { String::new() },
            self.write_wait_s(),
            self.write_wait_max_s(),
            fmt_us(self.write_wait_longest_s() * 1e6),
            if self.heartbeat_s > 0 { format!("{} s", self.heartbeat_s) } else { "off".into() }
        );
        for p in &self.producer_flow {
            if p.blocks > 0 || p.stuck_at_end {
                let _ = writeln!(
                    o,
                    "  producer {:<3}   blocked {} time(s) {:.2} s{}, socket waits {:.2} s, heartbeats sent {}",
                    p.id,
                    p.blocks,
                    p.blocked_s,
                    p.block_reason
                        .as_deref()
                        .map_or(String::new(), |r| format!(" ({r:?})")),
                    p.write_wait_s,
                    p.heartbeats_sent
                );
            }
        }
        if let Some(b) = &self.broker {
            let per = |n: u64| per_message_ns(b.cpu_s, n).map_or("—".to_string(), |v| format!("{v:.0} ns"));
            let _ = writeln!(
                o,
                "broker            {} (pid {}): peak RSS {} (start {}, end {}, VmHWM {}; {} samples); CPU {:.2} s = {} per message consumed, {} per message published{}",
                b.name,
                b.pid,
                fmt_kib(b.rss_peak_kb),
                fmt_kib(b.rss_start_kb),
                fmt_kib(b.rss_end_kb),
                fmt_kib(b.vmhwm_kb),
                b.samples,
                b.cpu_s,
                per(self.consumed),
                per(self.published),
                if b.exited { "; EXITED during the run" } else { "" }
            );
        }
        let _ = writeln!(
            o,
            "integrity         lost {}  duplicated {}  duplicated(redelivered) {}  out-of-order {}  redelivered {}  stale {}  foreign {}",
            self.lost, self.duplicated, self.duplicated_redelivered, self.out_of_order, self.redelivered, self.stale, self.foreign
        );
        let _ = writeln!(
            o,
            "tool cost         {:.2} s CPU over {:.2} s = {:.0} ns per message handled (publish or delivery)",
            self.cpu_s, self.elapsed_s, self.cpu_ns_per_msg
        );
        for n in &self.notes {
            let _ = writeln!(o, "note              {n}");
        }
        for e in &self.errors {
            let _ = writeln!(o, "error             {e}");
        }
        let verdict = match self.exit_code() {
            0 => "OK",
            1 => "ERRORS",
            _ => "FAILED (lost or duplicated messages)",
        };
        let _ = writeln!(o, "result            {verdict}");
        o
    }
}

/// CPU seconds (user + system) used by this process so far.
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_fields_and_exit_codes() {
        let mut r = Report {
            published: 10,
            consumed: 10,
            consumers: 1,
            ..Default::default()
        };
        let j = r.to_json();
        for f in [
            "\"published\":10",
            "\"confirmed\":",
            "\"nacked\":",
            "\"consumed\":10",
            "\"publish_rate\":",
            "\"consume_rate\":",
            "\"latency_us\":{\"p50\":",
            "\"p95\":",
            "\"p99\":",
            "\"max\":",
            "\"lost\":0",
            "\"duplicated\":0",
            "\"out_of_order\":",
            "\"unconfirmed\":",
            "\"elapsed_s\":",
            "\"cpu_s\":",
            "\"cpu_ns_per_msg\":",
            "\"consume_rate_publishing\":",
            "\"drain_rate\":",
            "\"backlog_publish_end\":",
            "\"backlog_end\":",
            "\"latency_publishing_us\":{\"p50\":",
            "\"blocked_s\":0",
            "\"write_wait_s\":0",
            "\"broker\":null",
            "\"queue_depth_end\":null",
            "\"notes\":[]",
            "\"ok\":true",
        ] {
            assert!(j.contains(f), "{f} missing in {j}");
        }
        assert_eq!(r.exit_code(), 0);
        r.duplicated_redelivered = 3;
        assert_eq!(r.exit_code(), 0);
        r.errors.push("x \"y\"".into());
        assert_eq!(r.exit_code(), 1);
        assert!(r.to_json().contains("\"errors\":[\"x \\\"y\\\"\"]"));
        r.lost = 1;
        assert_eq!(r.exit_code(), 2);
        r.lost = 0;
        r.duplicated = 1;
        assert_eq!(r.exit_code(), 2);
        r.duplicated = 0;
        r.consumers = 0;
        r.lost = 5;
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn flow_and_broker_figures() {
        let r = Report {
            consumers: 1,
            published: 1_000_000,
            routed: 1_000_000,
            consumed: 1_000_000,
            publishing_s: 10.0,
            consumed_publishing: 600_000,
            consume_rate_publishing: 60_000.0,
            backlog_publish_end: 400_000,
            backlog_growth_rate: 40_000.0,
            backlog_growth_share: 0.4,
            queue_depth_publish_end: Some(399_900),
            producer_flow: vec![
                ProducerFlow {
                    id: 0,
                    blocked_s: 1.5,
                    blocks: 2,
                    block_reason: Some("low on memory".into()),
                    write_wait_s: 0.25,
                    write_wait_longest_s: 0.125,
                    ..Default::default()
                },
                ProducerFlow {
                    id: 1,
                    blocked_s: 0.5,
                    blocks: 1,
                    blocked_at_end: true,
                    write_wait_s: 1.0,
                    ..Default::default()
                },
            ],
            broker: Some(BrokerStats {
                pid: 7,
                name: "mailroom".into(),
                rss_peak_kb: 2048,
                cpu_s: 2.0,
                ..Default::default()
            }),
            notes: vec!["n".into()],
            ..Default::default()
        };
        assert!(r.fell_behind());
        assert!((r.keep_up_ratio().unwrap() - 0.6).abs() < 1e-9);
        assert_eq!((r.blocked_s(), r.blocked_max_s(), r.blocks()), (2.0, 1.5, 3));
        assert_eq!((r.write_wait_s(), r.write_wait_max_s()), (1.25, 1.0));
        let j = r.to_json();
        for f in [
            "\"fell_behind\":true",
            "\"backlog_growth_rate\":40000",
            "\"backlog_growth_share\":0.4,",
            "\"write_wait_longest_s\":0.125,",
            "\"keep_up_ratio\":0.6",
            "\"blocked_s\":2,",
            "\"blocks\":3",
            "\"blocked_at_end\":1",
            "\"block_reason\":\"low on memory\"",
            "\"queue_depth_publish_end\":399900",
            "\"rss_peak_kb\":2048",
            "\"cpu_ns_per_consumed\":2000",
            "\"cpu_ns_per_published\":2000",
            "\"notes\":[\"n\"]",
        ] {
            assert!(j.contains(f), "{f} missing in {j}");
        }
        let t = r.to_text();
        for f in [
            "CONSUMERS FELL BEHIND: the backlog grew by 40000 copies/s (40 % of the routed rate)",
            "40.0 % of the routed copies were still queued",
            "longest single wait 125.0 ms",
            "while publishing",
            "(0.60 × the routed rate)",
            "blocked 3 time(s), 2.00 s in total",
            "1 still blocked at the end",
            "peak RSS 2.0 MiB",
            "2000 ns per message consumed",
            "note              n",
        ] {
            assert!(t.contains(f), "{f} missing in\n{t}");
        }
        // Kept up: a steady backlog (what is in flight) is not "behind", even a large one.
        let steady = Report {
            backlog_growth_rate: 100.0,
            backlog_growth_share: 0.001,
            ..r.clone()
        };
        assert!(!steady.fell_behind());
        assert!(steady.to_text().contains("consumers kept up"));
        let small = Report {
            backlog_publish_end: 200,
            ..r.clone()
        };
        assert!(!small.fell_behind());
        // No consumers while publishing: not "behind" either (nothing consumes by design).
        let after = Report {
            consume_after_publish: true,
            ..r.clone()
        };
        assert!(!after.fell_behind());
        assert!(after.to_text().contains("accepted by the broker: 399900"));
        assert_eq!(per_message_ns(1.0, 0), None);
        assert_eq!(
            (fmt_kib(512), fmt_kib(2048), fmt_kib(3 << 20)),
            ("512 KiB".into(), "2.0 MiB".into(), "3.00 GiB".into())
        );
        assert_eq!(
            (fmt_us(12.0), fmt_us(1500.0), fmt_us(2.5e6)),
            ("12 µs".into(), "1.5 ms".into(), "2.50 s".into())
        );
    }

    #[test]
    fn cpu_time_is_measured() {
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_seconds() > 0.0);
    }
}
