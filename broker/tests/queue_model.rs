//! Model test of one durable queue's failure handling: random sequences of publishes, deliveries, acks,
//! nacks, rejects, time steps and restarts run against the real `Queue` (inside a `VHost` over a real
//! `Store` in a temp dir) and against a small reference model written here from the documented behaviour.
//!
//! The queue under test is "q": durable, dead-lettering to the default exchange with routing key "dlq" (a
//! durable queue with no arguments), with a per-case delivery limit, message TTL and delayed retry. Messages
//! are persistent or transient and some carry an `expiration`. Time is a fake clock passed to every call.
//!
//! What the model says (from queue.rs, deadletter.rs, store.rs and docs/ARCHITECTURE.md):
//! * ready messages are delivered in publish order; a requeued message goes back to its original position,
//!   flagged redelivered, its delivery count raised by one; over `x-delivery-limit` it is dead-lettered
//!   (`delivery_limit`) instead; with `x-delayed-retry-min` it waits `min × count` ms first (linear);
//! * a message expires (queue TTL or its own expiration, whichever is first) only at the head of the queue
//!   (on pull, get or the timer); an unacked message never expires; one that is already expired when
//!   published (TTL 0) dies at once unless a consumer is waiting for messages, in which case that consumer
//!   may take it within a 100 ms grace period (queue.rs `TTL_ZERO_GRACE_MS`), after which it expires;

//! * reject / nack without requeue dead-letters with reason `rejected`;
//! * dead letters carry `x-death` [{queue: "q", reason, count: 1, ...}], the original expiration moved to
//!   `original-expiration`, and keep the original's delivery mode;
//! * a restart loses transient messages (in "q" and in "dlq") and the unacked state; persistent ready,
//!   delayed and unacked messages come back in seq order. Unacked ones come back flagged redelivered
//!   (store.rs: "messages up to this seq may have been delivered before a crash: they come back
//!   redelivered"); delivery counts are what the store recorded at the last requeue (a restart is not a
//!   return); retry delays are kept.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use broker::broker::Broker;
use broker::config::Config;
use broker::deadletter::Redriven;
use broker::message::Message;
use broker::queue::{next_consumer_id, ConsumerId, Entry, QueueSpec};
use broker::signal::ConnSignal;
use broker::vhost::VHost;

mod common;
use bytes::Bytes;
use common::DlQueue;
use proptest::prelude::*;
use protocol::{BasicProperties, FieldTable, FieldValue, LongStr, RawProperties, ShortStr};

/// The fake clock starts here (ms since the epoch).
const BASE: u64 = 1_700_000_000_000;

/// Known bug (see `restart_does_not_flag_never_delivered_messages` and
/// `message_published_after_restart_is_not_flagged_redelivered`): after a restart a queue can reuse seqs
/// below its persisted delivered mark, so never-delivered messages may come back flagged redelivered. While
/// it is open, the model accepts either flag for never-delivered messages once a case has restarted, so the
/// model test keeps looking for other bugs. Set to false once the bug is fixed.
const TOLERATE_SEQ_REUSE_AFTER_RESTART: bool = false;

// ------------------------------------------------------------------------------------------------ config

#[derive(Debug, Clone, Copy)]
struct Cfg {
    /// Dead-letter to "dlq"; without, dead messages are dropped.
    dlx: bool,
    delivery_limit: Option<u32>,
    message_ttl: Option<u64>,
    retry_min: Option<u64>,
}

impl Cfg {
    /// The limit the queue applies (retry without an explicit limit defaults to 20).
    fn effective_limit(&self) -> Option<u32> {
        self.delivery_limit.or(self
            .retry_min
            .map(|_| broker::queue_args::DEFAULT_RETRY_DELIVERY_LIMIT))
    }

    fn arguments(&self) -> FieldTable {
        let mut t = FieldTable::new();
        if self.dlx {
            t.insert("x-dead-letter-exchange", FieldValue::LongStr(LongStr::from("")));
            t.insert(
                "x-dead-letter-routing-key",
                FieldValue::LongStr(LongStr::from("dlq")),
            );
        }
        if let Some(l) = self.delivery_limit {
            t.insert("x-delivery-limit", FieldValue::I32(l as i32));
        }
        if let Some(ttl) = self.message_ttl {
            t.insert("x-message-ttl", FieldValue::I64(ttl as i64));
        }
        if let Some(min) = self.retry_min {
            t.insert("x-delayed-retry-min", FieldValue::I32(min as i32));
        }
        t
    }
}

// ------------------------------------------------------------------------------------------------ operations

#[derive(Debug, Clone)]
enum Op {
    Publish {
        persistent: bool,
        expiration: Option<u64>,
    },
    /// Pull up to n with ack (one consumer, registered on first use after each start).
    Deliver {
        n: usize,
    },
    /// basic.get with ack.
    Get,
    /// Ack the k-th (mod len) unacked message.
    Ack(usize),
    Nack {
        k: usize,
        requeue: bool,
    },
    Reject(usize),
    /// The channel closes: every unacked message is requeued, in delivery order.
    RequeueAll,
    /// The clock moves on, then the vhost timer runs.
    Advance(u64),
    /// Stop and start again. Clean: connections close first (every unacked message is requeued, in delivery
    /// order) and `Broker::shutdown` records the queue counts; not clean: a crash (nothing is requeued).
    Restart {
        clean: bool,
    },
    /// `VHost::redrive("dlq", None, max)`: dead letters go back to "q".
    Redrive {
        max: Option<usize>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let expiration = prop_oneof![
        4 => Just(None),
        1 => Just(Some(0u64)),
        1 => Just(Some(30u64)),
        1 => Just(Some(100u64)),
        1 => Just(Some(400u64)),
    ];
    prop_oneof![
        5 => (any::<bool>(), expiration).prop_map(|(persistent, expiration)| Op::Publish { persistent, expiration }),
        3 => (1usize..4).prop_map(|n| Op::Deliver { n }),
        1 => Just(Op::Get),
        2 => (0usize..8).prop_map(Op::Ack),
        2 => ((0usize..8), any::<bool>()).prop_map(|(k, requeue)| Op::Nack { k, requeue }),
        1 => (0usize..8).prop_map(Op::Reject),
        1 => Just(Op::RequeueAll),
        2 => prop_oneof![Just(0u64), Just(10), Just(30), Just(60), Just(150), Just(500)].prop_map(Op::Advance),
        1 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
        1 => prop_oneof![Just(None), (0usize..3).prop_map(Some)].prop_map(|max| Op::Redrive { max }),
    ]
}

fn cfg() -> impl Strategy<Value = Cfg> {
    (
        prop_oneof![
            Just(None),
            Just(Some(0u32)),
            Just(Some(1)),
            Just(Some(2)),
            Just(Some(3))
        ],
        prop_oneof![2 => Just(None), 1 => Just(Some(40u64)), 1 => Just(Some(200u64))],
        prop_oneof![2 => Just(None), 1 => Just(Some(25u64))],
        prop_oneof![4 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(delivery_limit, message_ttl, retry_min, dlx)| Cfg {
            dlx,
            delivery_limit,
            message_ttl,
            retry_min,
        })
}

// ------------------------------------------------------------------------------------------------ the model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Rejected,
    Expired,
    DeliveryLimit,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

#[derive(Debug, Clone)]
struct MMsg {
    id: u64,
    /// Position in "q" (publish order; a redriven message goes to the tail).
    seq: u64,
    persistent: bool,
    expiration: Option<u64>,
    expires_at: Option<u64>,
    redelivered: Redel,
    count: u32,
    not_before: Option<u64>,
    /// Its x-death entries, most recent first (empty until it first dies).
    deaths: Vec<MDeath>,
    first_reason: Option<Reason>,
    /// The routing key it carries: "q" as published, "dlq" once dead-lettered (redrive keeps it).
    rk: &'static str,
}

#[derive(Debug, Clone)]
struct MDeath {
    reason: Reason,
    count: i64,
    original_expiration: Option<u64>,
    routing_key: &'static str,
}

/// The redelivered flag the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Redel {
    No,
    Yes,
    /// Never delivered, but crossed a restart: the flag is a hint and the broker may set it (its delivered
    /// mark is a seq, and seqs can be reused after a restart). The exact behaviour is pinned by
    /// `restart_does_not_flag_never_delivered_messages` below.
    Maybe,
}

impl MMsg {
    fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// What a delivery looks like from the outside.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    id: u64,
    redelivered: bool,
    delivery_count: u32,
}

/// What the model expects of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    id: u64,
    redelivered: Redel,
    delivery_count: u32,
}

impl Want {
    fn matches(&self, s: &Seen) -> bool {
        self.id == s.id
            && self.delivery_count == s.delivery_count
            && match self.redelivered {
                Redel::No => !s.redelivered,
                Redel::Yes => s.redelivered,
                Redel::Maybe => true,
            }
    }
}

fn all_match(want: &[Want], seen: &[Seen]) -> bool {
    want.len() == seen.len() && want.iter().zip(seen).all(|(w, s)| w.matches(s))
}

#[derive(Default)]
struct Model {
    cfg: Option<Cfg>,
    now: u64,
    next_id: u64,
    next_seq: u64,
    /// Ready messages by id (= publish order).
    ready: Vec<MMsg>,
    /// Returned messages waiting out their retry delay.
    delayed: Vec<MMsg>,
    /// Delivered and not settled, in delivery order.
    unacked: Vec<MMsg>,
    /// The consumer found "q" empty with credit left and has not been woken since (queue.rs `waiting`): a
    /// publish, a requeue into the ready list, or the timer releasing retries wakes it.
    waiting: bool,
    restarted: bool,
    /// After a crash, a recovered queue reports the span of its stored seqs (an upper bound) until it has
    /// read its messages back (vhost.rs: "exact once the queue is read back"): (q, dlq).
    inexact_count: (bool, bool),
    /// In "dlq", in order.
    dlq: Vec<(MMsg, Reason)>,
    acked: Vec<u64>,
    /// (id, why) for messages gone without trace.
    dropped: Vec<(u64, &'static str)>,
    /// (id, persistent, expiration) of every publish.
    published: Vec<(u64, bool, Option<u64>)>,
}

impl Model {
    fn cfg(&self) -> Cfg {
        self.cfg.expect("cfg")
    }

    fn publish(&mut self, persistent: bool, expiration: Option<u64>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.published.push((id, persistent, expiration));
        let m = MMsg {
            id,
            seq: 0,
            persistent,
            expiration,
            expires_at: None,
            redelivered: Redel::No,
            count: 0,
            not_before: None,
            deaths: Vec::new(),
            first_reason: None,
            rk: "q",
        };
        self.enqueue(m);
        id
    }

    /// A message enters "q" at the tail (publish, redrive).
    fn enqueue(&mut self, mut m: MMsg) {
        m.seq = self.next_seq;
        self.next_seq += 1;
        m.redelivered = if self.restarted && TOLERATE_SEQ_REUSE_AFTER_RESTART {
            Redel::Maybe
        } else {
            Redel::No
        };
        m.count = 0;
        m.not_before = None;
        let ttl_at = self.cfg().message_ttl.map(|t| self.now + t);
        let exp_at = m.expiration.map(|t| self.now + t);
        m.expires_at = match (ttl_at, exp_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if m.expired(self.now) {
            if self.waiting {
                // TTL 0 (queue.rs publish): a consumer that can take it now gets it, within a grace period.
                m.expires_at = Some(self.now + 100);
            } else {
                // Nobody to take it now: it dies at once.
                self.die(m, Reason::Expired);
                return;
            }
        }
        self.ready.push(m);
        self.waiting = false;
    }

    /// Redrive: up to `max` dead letters, in dlq order, back to "q" (where they all died).
    fn redrive(&mut self, max: Option<usize>) -> usize {
        let n = max.unwrap_or(usize::MAX).min(self.dlq.len());
        let moved: Vec<(MMsg, Reason)> = self.dlq.drain(..n).collect();
        for (m, _) in moved {
            self.enqueue(m);
        }
        n
    }

    /// A message dies: to the dlq, or nowhere without a dead-letter exchange.
    fn die(&mut self, mut m: MMsg, reason: Reason) {
        if self.cfg().dlx {
            // deadletter.rs: the (queue, reason) entry is counted up and moved to the front, or added there
            // (taking the expiration as `original-expiration`); the copy is published with the DLRK.
            let d = match m.deaths.iter().position(|d| d.reason == reason) {
                Some(i) => {
                    let mut d = m.deaths.remove(i);
                    d.count += 1;
                    d
                }
                None => MDeath {
                    reason,
                    count: 1,
                    original_expiration: m.expiration,
                    routing_key: m.rk,
                },
            };
            m.deaths.insert(0, d);
            m.first_reason.get_or_insert(reason);
            m.expiration = None;
            m.expires_at = None;
            m.rk = "dlq";
            self.dlq.push((m, reason));
        } else {
            let why = match reason {
                Reason::Rejected => "rejected, no DLX",
                Reason::Expired => "expired, no DLX",
                Reason::DeliveryLimit => "over the delivery limit, no DLX",
            };
            self.dropped.push((m.id, why));
        }
    }

    fn insert_ready(&mut self, m: MMsg) {
        let pos = self.ready.partition_point(|x| x.seq < m.seq);
        self.ready.insert(pos, m);
    }

    /// Moves due retries back to their positions; returns how many.
    fn release_due(&mut self) -> usize {
        let now = self.now;
        let (due, wait): (Vec<MMsg>, Vec<MMsg>) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|m| m.not_before.is_some_and(|t| t <= now));
        self.delayed = wait;
        let n = due.len();
        for mut m in due {
            m.not_before = None;
            self.insert_ready(m);
        }
        n
    }

    /// The head message that is not expired; expired ones met on the way are dead-lettered.
    fn take_head(&mut self) -> Option<MMsg> {
        while !self.ready.is_empty() {
            let m = self.ready.remove(0);
            if m.expired(self.now) {
                self.die(m, Reason::Expired);
                continue;
            }
            return Some(m);
        }
        None
    }

    fn deliver(&mut self, n: usize) -> Vec<Want> {
        self.release_due();
        let mut out = Vec::new();
        while out.len() < n {
            let Some(m) = self.take_head() else { break };
            out.push(seen(&m));
            self.unacked.push(m);
        }
        if out.len() < n {
            self.waiting = true;
        }
        out
    }

    fn get(&mut self) -> Option<(Want, u32)> {
        self.release_due();
        let m = self.take_head()?;
        let s = seen(&m);
        self.unacked.push(m);
        Some((s, self.ready_count()))
    }

    fn tick(&mut self) {
        if self.release_due() > 0 {
            self.waiting = false;
        }
        while self.ready.first().is_some_and(|m| m.expired(self.now)) {
            let m = self.ready.remove(0);
            self.die(m, Reason::Expired);
        }
    }

    fn take_unacked(&mut self, k: usize) -> Option<MMsg> {
        if self.unacked.is_empty() {
            return None;
        }
        let i = k % self.unacked.len();
        Some(self.unacked.remove(i))
    }

    fn requeue(&mut self, msgs: Vec<MMsg>) {
        for mut m in msgs {
            m.redelivered = Redel::Yes;
            m.count += 1;
            if self.cfg().effective_limit().is_some_and(|l| m.count > l) {
                self.die(m, Reason::DeliveryLimit);
                continue;
            }
            match self.cfg().retry_min {
                Some(min) => {
                    m.not_before = Some(self.now + min * m.count as u64);
                    self.delayed.push(m);
                }
                None => {
                    self.insert_ready(m);
                    self.waiting = false;
                }
            }
        }
    }

    fn restart(&mut self) {
        self.waiting = false;
        self.restarted = true;
        let mut back = Vec::new();
        for mut m in std::mem::take(&mut self.unacked) {
            if m.persistent {
                m.redelivered = Redel::Yes;
                back.push(m);
            } else {
                self.dropped.push((m.id, "transient unacked at restart"));
            }
        }
        for mut m in std::mem::take(&mut self.ready) {
            if m.persistent {
                if m.redelivered == Redel::No {
                    m.redelivered = Redel::Maybe;
                }
                back.push(m);
            } else {
                self.dropped.push((m.id, "transient ready at restart"));
            }
        }
        for m in std::mem::take(&mut self.delayed) {
            if m.persistent {
                // Delayed ones were returned: already flagged.
                // A delayed message keeps its retry time (the store records it).
                self.delayed.push(m);
            } else {
                self.dropped.push((m.id, "transient delayed at restart"));
            }
        }
        back.sort_by_key(|m| m.seq);
        for m in back {
            // Unacked ones come back ready: their delay, if any, is long past.
            let mut m = m;
            if m.not_before.is_some_and(|t| t <= self.now) {
                m.not_before = None;
            }
            match m.not_before {
                Some(_) => self.delayed.push(m),
                None => self.ready.push(m),
            }
        }
        let dlq = std::mem::take(&mut self.dlq);
        for (m, r) in dlq {
            if m.persistent {
                self.dlq.push((m, r));
            } else {
                self.dropped.push((m.id, "transient dead letter at restart"));
            }
        }
    }

    fn ready_count(&self) -> u32 {
        (self.ready.len() + self.delayed.len()) as u32
    }
}

fn seen(m: &MMsg) -> Want {
    Want {
        id: m.id,
        redelivered: m.redelivered,
        delivery_count: m.count,
    }
}

// ------------------------------------------------------------------------------------------------ the broker side

struct Live {
    broker: Arc<Broker>,
    vhost: Arc<VHost>,
    q: DlQueue,
    dlq: DlQueue,
    consumer: Option<ConsumerId>,
    signal: Arc<ConnSignal>,
    /// Delivered and not settled, in delivery order (as a channel would hold them).
    unacked: Vec<Entry>,
}

fn spec(name: &str, arguments: FieldTable) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        durable: true,
        exclusive_owner: None,
        auto_delete: false,
        arguments,
    }
}

impl Live {
    /// Opens the broker on `dir` (recovering what the store holds); declares the queues when `fresh`.
    fn open(dir: &Path, fresh: Option<Cfg>) -> Live {
        let config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        let broker = Broker::open(config).expect("open broker");
        let vhost = broker.vhost("/").expect("vhost /");
        if let Some(cfg) = fresh {
            vhost
                .declare_queue(spec("dlq", FieldTable::new()))
                .expect("declare dlq");
            vhost
                .declare_queue(spec("q", cfg.arguments()))
                .expect("declare q");
        }
        let q = DlQueue::new(&vhost, vhost.queue("q").expect("q exists"));
        let dlq = DlQueue::new(&vhost, vhost.queue("dlq").expect("dlq exists"));
        Live {
            broker,
            vhost,
            q,
            dlq,
            consumer: None,
            signal: Arc::new(ConnSignal::new()),
            unacked: Vec::new(),
        }
    }

    fn consumer(&mut self, now: u64) -> ConsumerId {
        if let Some(c) = self.consumer {
            return c;
        }
        let id = next_consumer_id();
        self.q
            .add_consumer(
                id,
                ShortStr::from("ctag"),
                false,
                0,
                self.signal.clone(),
                "/",
                now,
            )
            .expect("add consumer");
        self.consumer = Some(id);
        id
    }

    /// A clean stop: the consumer's channel closes (its unacked messages are requeued), then the broker
    /// shuts down. Consumes self: everything is dropped, the store closed.
    fn stop_clean(mut self, now: u64) {
        let unacked = std::mem::take(&mut self.unacked);
        self.q.requeue(unacked, now);
        if let Some(c) = self.consumer.take() {
            self.q.remove_consumer(c, now);
        }
        self.broker.shutdown();
    }

    fn take_unacked(&mut self, k: usize) -> Option<Entry> {
        if self.unacked.is_empty() {
            return None;
        }
        let i = k % self.unacked.len();
        Some(self.unacked.remove(i))
    }
}

fn message(id: u64, persistent: bool, expiration: Option<u64>) -> Arc<Message> {
    let props = BasicProperties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        expiration: expiration.map(|e| ShortStr::from(e.to_string())),
        ..Default::default()
    };
    Arc::new(Message::new(
        ShortStr::from(""),
        ShortStr::from("q"),
        RawProperties::from_properties(&props),
        Bytes::from(format!("m{id}")),
    ))
}

fn id_of(msg: &Message) -> u64 {
    let b = std::str::from_utf8(&msg.body).expect("utf8 body");
    b.strip_prefix('m')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad body {b:?}"))
}

fn seen_entry(e: &Entry) -> Seen {
    Seen {
        id: id_of(&e.msg),
        redelivered: e.redelivered,
        delivery_count: e.delivery_count,
    }
}

/// One x-death entry of a dead letter.
#[derive(Debug, PartialEq, Eq)]
struct Death {
    queue: String,
    reason: String,
    count: i64,
    original_expiration: Option<String>,
    exchange: Option<String>,
    routing_keys: Vec<String>,
}

/// The x-death entries of a dead letter (most recent first) and its x-first-death-reason.
fn deaths_of(msg: &Message) -> (Vec<Death>, Option<String>) {
    let h = msg
        .properties
        .headers()
        .expect("headers decode")
        .expect("dead letter has headers");
    let Some(FieldValue::Array(deaths)) = h.get("x-death") else {
        panic!("no x-death array in {h:?}")
    };
    let s = |t: &FieldTable, k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let list = deaths
        .iter()
        .map(|v| {
            let t = v.as_table().expect("x-death entry is a table");
            Death {
                queue: s(t, "queue").unwrap_or_default(),
                reason: s(t, "reason").unwrap_or_default(),
                count: t.get("count").and_then(|v| v.as_i64()).unwrap_or(-1),
                original_expiration: s(t, "original-expiration"),
                exchange: s(t, "exchange"),
                routing_keys: t
                    .get("routing-keys")
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().filter_map(|v| v.as_str()).map(str::to_owned).collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    (list, s(&h, "x-first-death-reason"))
}

// ------------------------------------------------------------------------------------------------ the run

/// Runs `ops` against both sides; returns Err with a description at the first disagreement.
fn run(cfg: Cfg, ops: &[Op]) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut live = Some(Live::open(dir.path(), Some(cfg)));
    let mut m = Model {
        cfg: Some(cfg),
        now: BASE,
        ..Default::default()
    };
    // Ids settled on the broker side (to check that none is acked twice).
    let mut broker_acked: Vec<u64> = Vec::new();

    macro_rules! check {
        ($cond:expr, $($fmt:tt)*) => {
            if !$cond {
                return Err(format!($($fmt)*));
            }
        };
    }

    for (step, op) in ops.iter().enumerate() {
        let now = m.now;
        let l = live.as_mut().expect("live");
        match op {
            Op::Publish {
                persistent,
                expiration,
            } => {
                let id = m.publish(*persistent, *expiration);
                let r = l.q.publish(message(id, *persistent, *expiration), now);
                check!(r.is_ok(), "step {step} {op:?}: publish refused: {r:?}");
            }
            Op::Deliver { n } => {
                let c = l.consumer(now);
                let mut out = Vec::new();
                let got = l.q.pull(c, *n, true, now, &mut out);
                let want = m.deliver(*n);
                let seen: Vec<Seen> = out.iter().map(seen_entry).collect();
                check!(
                    got == out.len(),
                    "step {step} {op:?}: pull said {got}, gave {}",
                    out.len()
                );
                check!(
                    all_match(&want, &seen),
                    "step {step} {op:?}: delivered {seen:?}, model {want:?}"
                );
                l.unacked.extend(out);
            }
            Op::Get => {
                let got = l.q.get(true, now);
                let want = m.get();
                let seen = got.as_ref().map(|(e, left)| (seen_entry(e), *left));
                let ok = match (&seen, &want) {
                    (None, None) => true,
                    (Some((s, a)), Some((w, b))) => w.matches(s) && a == b,
                    _ => false,
                };
                check!(ok, "step {step} {op:?}: got {seen:?}, model {want:?}");
                if let Some((e, _)) = got {
                    l.unacked.push(e);
                }
            }
            Op::Ack(k) => {
                if let (Some(e), Some(mm)) = (l.take_unacked(*k), m.take_unacked(*k)) {
                    check!(id_of(&e.msg) == mm.id, "step {step}: unacked lists diverged");
                    l.q.settle(std::slice::from_ref(&e).iter());
                    broker_acked.push(mm.id);
                    m.acked.push(mm.id);
                }
            }
            Op::Nack { k, requeue } => {
                if let (Some(e), Some(mm)) = (l.take_unacked(*k), m.take_unacked(*k)) {
                    check!(id_of(&e.msg) == mm.id, "step {step}: unacked lists diverged");
                    if *requeue {
                        l.q.requeue([e], now);
                        m.requeue(vec![mm]);
                    } else {
                        l.q.reject(vec![e], now);
                        m.die(mm, Reason::Rejected);
                    }
                }
            }
            Op::Reject(k) => {
                if let (Some(e), Some(mm)) = (l.take_unacked(*k), m.take_unacked(*k)) {
                    check!(id_of(&e.msg) == mm.id, "step {step}: unacked lists diverged");
                    l.q.reject(vec![e], now);
                    m.die(mm, Reason::Rejected);
                }
            }
            Op::RequeueAll => {
                let entries = std::mem::take(&mut l.unacked);
                l.q.requeue(entries, now);
                let msgs = std::mem::take(&mut m.unacked);
                m.requeue(msgs);
            }
            Op::Advance(ms) => {
                m.now += ms;
                l.vhost.tick(m.now);
                m.tick();
            }
            Op::Redrive { max } => {
                let r = l.vhost.redrive("dlq", None, *max, now);
                let want = m.redrive(*max);
                check!(
                    r == Ok(Redriven { moved: want, kept: 0 }),
                    "step {step} {op:?}: redrive {r:?}, model moved {want}"
                );
            }
            Op::Restart { clean } => {
                let l = live.take().expect("live");
                if *clean {
                    l.stop_clean(now);
                    let msgs = std::mem::take(&mut m.unacked);
                    m.requeue(msgs);
                } else {
                    drop(l);
                    m.inexact_count = (true, true);
                }
                live = Some(Live::open(dir.path(), None));
                m.restart();
            }
        }
        // What reads a recovered queue back: a pull or get, or the timer (a recovered queue with messages
        // is always timed).
        if matches!(op, Op::Deliver { .. } | Op::Get | Op::Advance(_)) {
            m.inexact_count.0 = false;
        }
        if matches!(op, Op::Advance(_)) {
            m.inexact_count.1 = false;
        }
        let l = live.as_ref().expect("live");
        let (ready, _) = l.q.counts();
        check!(
            ready == m.ready_count() || (m.inexact_count.0 && ready > m.ready_count()),
            "step {step} {op:?}: q ready {ready}, model {} (ready {:?}, delayed {:?})",
            m.ready_count(),
            m.ready.iter().map(|x| x.id).collect::<Vec<_>>(),
            m.delayed.iter().map(|x| x.id).collect::<Vec<_>>()
        );
        let unacked = l.q.unacked_count();
        check!(
            unacked == m.unacked.len() as u64,
            "step {step} {op:?}: q unacked {unacked}, model {}",
            m.unacked.len()
        );
        let (dlq_ready, _) = l.dlq.counts();
        check!(
            dlq_ready as usize == m.dlq.len() || (m.inexact_count.1 && dlq_ready as usize > m.dlq.len()),
            "step {step} {op:?}: dlq holds {dlq_ready}, model {:?}",
            m.dlq.iter().map(|(x, r)| (x.id, r.as_str())).collect::<Vec<_>>()
        );
    }

    // The end: long after every delay and TTL, take everything left in "q" and ack it.
    m.now += 1_000_000;
    let now = m.now;
    let l = live.as_mut().expect("live");
    l.vhost.tick(now);
    m.tick();
    let c = l.consumer(now);
    let mut out = Vec::new();
    l.q.pull(c, 100_000, true, now, &mut out);
    let want = m.deliver(100_000);
    let seen: Vec<Seen> = out.iter().map(seen_entry).collect();
    check!(
        all_match(&want, &seen),
        "final drain of q: delivered {seen:?}, model {want:?}"
    );
    l.unacked.extend(out);
    let all = std::mem::take(&mut l.unacked);
    l.q.settle(all.iter());
    broker_acked.extend(all.iter().map(|e| id_of(&e.msg)));
    m.acked
        .extend(std::mem::take(&mut m.unacked).into_iter().map(|x| x.id));
    check!(
        l.q.counts().0 == 0 && l.q.unacked_count() == 0,
        "q not empty after the final drain"
    );

    // Drain "dlq" and compare every dead letter.
    let mut dead = Vec::new();
    while let Some((e, _)) = l.dlq.get(false, now) {
        l.dlq.forget(std::slice::from_ref(&e));
        dead.push(e);
    }
    let got: Vec<u64> = dead.iter().map(|e| id_of(&e.msg)).collect();
    let want: Vec<u64> = m.dlq.iter().map(|(x, _)| x.id).collect();
    check!(got == want, "dlq holds {got:?}, model {want:?}");
    for (e, (mm, reason)) in dead.iter().zip(&m.dlq) {
        let (d, first) = deaths_of(&e.msg);
        let want: Vec<Death> = mm
            .deaths
            .iter()
            .map(|d| Death {
                queue: "q".into(),
                reason: d.reason.as_str().into(),
                count: d.count,
                original_expiration: d.original_expiration.map(|x| x.to_string()),
                exchange: Some(String::new()),
                routing_keys: vec![d.routing_key.into()],
            })
            .collect();
        check!(
            d == want,
            "dead letter m{} (last {reason:?}): x-death {d:?}, want {want:?}",
            mm.id
        );
        let first_want = mm.first_reason.map(|r| r.as_str().to_string());
        check!(
            first == first_want,
            "dead letter m{}: x-first-death-reason {first:?}, want {first_want:?}",
            mm.id
        );
        check!(
            e.msg.persistent == mm.persistent,
            "dead letter m{} persistent {} (original {})",
            mm.id,
            e.msg.persistent,
            mm.persistent
        );
        check!(
            e.msg.expiration_ms.is_none(),
            "dead letter m{} still has an expiration",
            mm.id
        );
        check!(
            e.msg.exchange.as_str() == "" && e.msg.routing_key.as_str() == "dlq",
            "dead letter m{} published as ({:?}, {:?}), want the DLX \"\" and the DLRK \"dlq\"",
            mm.id,
            e.msg.exchange,
            e.msg.routing_key
        );
    }

    // Every message is in exactly one place: acked once, in the dlq once, or dropped (transient, at restart).
    let mut place: HashMap<u64, Vec<&str>> = HashMap::new();
    for id in &broker_acked {
        place.entry(*id).or_default().push("acked");
    }
    for id in &got {
        place.entry(*id).or_default().push("dead-lettered");
    }
    for (id, why) in &m.dropped {
        place.entry(*id).or_default().push(why);
    }
    for (id, persistent, _) in &m.published {
        let p = place.remove(id).unwrap_or_default();
        check!(p.len() == 1, "m{id}: found in {p:?}");
        if p[0].contains("restart") {
            check!(!persistent, "persistent m{id} lost: {}", p[0]);
        }
    }
    check!(place.is_empty(), "unknown messages: {place:?}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 150,
        max_shrink_iters: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn queue_matches_model(cfg in cfg(), ops in proptest::collection::vec(op(), 1..50)) {
        if let Err(e) = run(cfg, &ops) {
            prop_assert!(false, "{e}\ncfg: {cfg:?}\nops: {ops:#?}");
        }
    }
}

fn plain() -> Cfg {
    Cfg {
        dlx: true,
        delivery_limit: None,
        message_ttl: None,
        retry_min: None,
    }
}

/// Pulls everything from "q" with a fresh consumer: (id, redelivered, delivery count).
fn pull_all(l: &mut Live, now: u64) -> Vec<Seen> {
    let c = l.consumer(now);
    let mut out = Vec::new();
    l.q.pull(c, 1000, true, now, &mut out);
    let seen = out.iter().map(seen_entry).collect();
    l.unacked.extend(out);
    seen
}

/// A message delivered and not acked when the broker stops comes back flagged redelivered, its delivery
/// count as the store last recorded it; a message never delivered comes back unflagged.
#[test]
fn unacked_at_restart_comes_back_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Live::open(dir.path(), Some(plain()));
    for id in 0..3 {
        l.q.publish(message(id, true, None), BASE).unwrap();
    }
    // m0 is requeued once then delivered again; m1 delivered once; m2 never.
    let s = pull_all_n(&mut l, 1, BASE);
    assert_eq!(s[0].id, 0);
    let e = l.unacked.pop().unwrap();
    l.q.requeue([e], BASE);
    let s = pull_all_n(&mut l, 2, BASE);
    assert_eq!(s.iter().map(|s| s.id).collect::<Vec<_>>(), [0, 1]);
    // a clean stop: the stored delivered mark becomes exact
    l.broker.shutdown();
    drop(l);
    let mut l = Live::open(dir.path(), None);
    assert_eq!(l.q.counts().0, 3);
    assert_eq!(
        pull_all(&mut l, BASE),
        [
            Seen {
                id: 0,
                redelivered: true,
                delivery_count: 1
            },
            Seen {
                id: 1,
                redelivered: true,
                delivery_count: 0
            },
            Seen {
                id: 2,
                redelivered: false,
                delivery_count: 0
            },
        ]
    );
}

/// After a crash, every recovered message comes back flagged redelivered, those that never left too (the
/// delivered mark is stored ahead of the deliveries but made durable by the next round, which a delivery
/// does not wait for), as RabbitMQ flags every message of a queue recovered from an unclean shutdown (rabbit_variable_queue.erl: "On dirty recovery the
/// redeliver_seq_id variable becomes the seq_id of the most recent message in the queue"). What was
/// delivered is always flagged, and what is published after the restart is not.
#[test]
fn after_a_crash_the_delivered_are_flagged_and_new_messages_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Live::open(dir.path(), Some(plain()));
    for id in 0..3 {
        l.q.publish(message(id, true, None), BASE).unwrap();
    }
    pull_all_n(&mut l, 1, BASE);
    drop(l);
    let mut l = Live::open(dir.path(), None);
    l.q.publish(message(3, true, None), BASE).unwrap();
    let seen = pull_all(&mut l, BASE);
    let flags: Vec<(u64, bool)> = seen.iter().map(|s| (s.id, s.redelivered)).collect();
    assert_eq!(flags, [(0, true), (1, true), (2, true), (3, false)]);
}

fn pull_all_n(l: &mut Live, n: usize, now: u64) -> Vec<Seen> {
    let c = l.consumer(now);
    let mut out = Vec::new();
    l.q.pull(c, n, true, now, &mut out);
    let seen = out.iter().map(seen_entry).collect();
    l.unacked.extend(out);
    seen
}

/// Found by `queue_matches_model` (shrunk): publish m0 (persistent), deliver and ack it, restart, publish
/// m1 (persistent), restart, deliver: m1 was never delivered but came back flagged redelivered.
///
/// Why: the delivered mark (highest seq delivered) survives in the store, but after the first restart the
/// queue is empty, so `Queue::build` starts `next_seq` again at 0 (`recovered` is None) and m1 reuses seq 0,
/// which is <= the mark. The flag is only a hint in AMQP, so this is harmless for correctness, but every
/// message below an old mark is flagged after a crash (consumers that dedupe on `redelivered` do extra
/// work), and seq reuse under a persisted per-seq mark is fragile. Fix: on recovery, start `next_seq` above
/// the delivered mark too (or persist the next seq).
#[test]
fn restart_does_not_flag_never_delivered_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Live::open(dir.path(), Some(plain()));
    l.q.publish(message(0, true, None), BASE).unwrap();
    pull_all(&mut l, BASE);
    let all = std::mem::take(&mut l.unacked);
    l.q.settle(all.iter());
    drop(l);
    let l = Live::open(dir.path(), None);
    l.q.publish(message(1, true, None), BASE).unwrap();
    // A clean stop this time: after a second crash every recovered message is flagged (RabbitMQ's dirty
    // recovery, `after_a_crash_the_delivered_are_flagged_and_new_messages_are_not`), whatever its seq.
    l.stop_clean(BASE);
    let mut l = Live::open(dir.path(), None);
    assert_eq!(
        pull_all(&mut l, BASE),
        [Seen {
            id: 1,
            redelivered: false,
            delivery_count: 0
        }],
        "m1 was never delivered"
    );
}

/// A message waiting out a retry delay when the broker stops still waits after the restart, and its
/// delivery count survives; past the delay it is delivered, then over the limit it is dead-lettered.
#[test]
fn retry_delay_and_count_survive_restart() {
    let cfg = Cfg {
        dlx: true,
        delivery_limit: Some(1),
        message_ttl: None,
        retry_min: Some(100),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut l = Live::open(dir.path(), Some(cfg));
    l.q.publish(message(0, true, None), BASE).unwrap();
    pull_all(&mut l, BASE);
    let e = l.unacked.pop().unwrap();
    l.q.requeue([e], BASE); // count 1, due at BASE + 100
    drop(l);
    let mut l = Live::open(dir.path(), None);
    assert_eq!(l.q.counts().0, 1);
    assert_eq!(pull_all(&mut l, BASE + 50), [], "still waiting");
    assert_eq!(
        pull_all(&mut l, BASE + 100),
        [Seen {
            id: 0,
            redelivered: true,
            delivery_count: 1
        }]
    );
    let e = l.unacked.pop().unwrap();
    l.q.requeue([e], BASE + 100); // count 2 > limit 1
    assert_eq!(l.q.counts().0, 0);
    let (d, _) = l.dlq.get(false, BASE + 100).expect("dead-lettered");
    assert_eq!(deaths_of(&d.msg).0[0].reason, "delivery_limit");
}

/// The same seq reuse, without a second restart: m0 and m1 are delivered (mark = seq 1), m1 is acked and m0
/// is not; after a restart the store's last seq is 0, so the next publish, m2, gets seq 1 again. m2 is
/// published after the restart and never delivered, yet (read back from the store, as the recovered queue
/// keeps new persistent messages on disk behind m0) it is flagged redelivered.
#[test]
fn message_published_after_restart_is_not_flagged_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Live::open(dir.path(), Some(plain()));
    l.q.publish(message(0, true, None), BASE).unwrap();
    l.q.publish(message(1, true, None), BASE).unwrap();
    pull_all(&mut l, BASE);
    let m1 = l.unacked.pop().unwrap();
    l.q.settle([m1].iter());
    drop(l);
    let mut l = Live::open(dir.path(), None);
    l.q.publish(message(2, true, None), BASE).unwrap();
    assert_eq!(
        pull_all(&mut l, BASE),
        [
            Seen {
                id: 0,
                redelivered: true,
                delivery_count: 0
            },
            Seen {
                id: 2,
                redelivered: false,
                delivery_count: 0
            },
        ],
        "m2 was published after the restart and never delivered"
    );
}
