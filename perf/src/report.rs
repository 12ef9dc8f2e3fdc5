//! The final report: human text, JSON, and the exit code.

use std::fmt::Write as _;

use crate::hist::Histogram;

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

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Scenario name, if a preset was used.
    pub scenario: Option<String>,
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
    /// Whether consumers saw everything expected before the drain timeout.
    pub drained: bool,
    /// Published msg/s over the publishing phase.
    pub publish_rate: f64,
    /// Consumed msg/s from the first publish (or, with consume-after-publish, the
    /// consumers' start) to the last delivery.
    pub consume_rate: f64,
    /// Seconds spent publishing (including waiting for the last confirms).
    pub publish_s: f64,
    /// Seconds of the consuming phase used for `consume_rate`.
    pub consume_s: f64,
    /// End-to-end latency of first deliveries.
    pub latency_us: Latency,
    /// Number of latency samples.
    pub latency_samples: u64,
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
        format!("{}", (v * 1000.0).round() / 1000.0)
    } else {
        "null".into()
    }
}

impl Report {
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
            "\"scenario\":{},\"producers\":{},\"consumers\":{},\"size\":{},",
            self.scenario.as_deref().map_or("null".into(), json_str),
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
        let _ = write!(
            o,
            "\"elapsed_s\":{},\"cpu_s\":{},\"cpu_ns_per_msg\":{},\"errors\":[{}],\"ok\":{}}}",
            num(self.elapsed_s),
            num(self.cpu_s),
            num(self.cpu_ns_per_msg),
            self.errors
                .iter()
                .map(|e| json_str(e))
                .collect::<Vec<_>>()
                .join(","),
            self.exit_code() == 0
        );
        o
    }

    /// Multi-line human summary.
    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
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
            "published  {:>10}  in {:>7.2} s  = {:>10.0} msg/s   (confirmed {}, nacked {}, unconfirmed {}, returned {})",
            self.published, self.publish_s, self.publish_rate, self.confirmed, self.nacked, self.unconfirmed, self.returned
        );
        let _ = writeln!(
            o,
            "consumed   {:>10}  in {:>7.2} s  = {:>10.0} msg/s   (expected {}, drained {})",
            self.consumed, self.consume_s, self.consume_rate, self.expected, self.drained
        );
        let _ = writeln!(
            o,
            "latency    p50 {:.0} µs  p95 {:.0} µs  p99 {:.0} µs  max {:.0} µs  ({} samples)",
            l.p50, l.p95, l.p99, l.max, self.latency_samples
        );
        let _ = writeln!(
            o,
            "integrity  lost {}  duplicated {}  duplicated(redelivered) {}  out-of-order {}  redelivered {}  stale {}  foreign {}",
            self.lost, self.duplicated, self.duplicated_redelivered, self.out_of_order, self.redelivered, self.stale, self.foreign
        );
        let _ = writeln!(
            o,
            "tool cost  {:.2} s CPU over {:.2} s = {:.0} ns per message handled (publish or delivery)",
            self.cpu_s, self.elapsed_s, self.cpu_ns_per_msg
        );
        for e in &self.errors {
            let _ = writeln!(o, "error      {e}");
        }
        let verdict = match self.exit_code() {
            0 => "OK",
            1 => "ERRORS",
            _ => "FAILED (lost or duplicated messages)",
        };
        let _ = writeln!(o, "result     {verdict}");
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
    fn cpu_time_is_measured() {
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_seconds() > 0.0);
    }
}
