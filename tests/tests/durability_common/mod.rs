//! The workload and the checks shared by the power-loss tests (`power_loss.rs`, LazyFS) and the write-failure
//! tests (`write_failure.rs`, the faultfs shim), issue 17.
//!
//! Workload: confirmed publishers (1 KiB persistent, window 100) into [`MAIN_QUEUES`] durable queues, consumers
//! acking on some of them, and a churn of durable exchange/queue/binding declares, unbinds and deletes on
//! another connection. Everything the broker promised is written down as it is promised: a message when its
//! basic.ack (confirm) arrives, a definition when its declare-ok/bind-ok/unbind-ok/delete-ok arrives. What the
//! client did itself (publish, consumer ack, send a definition change) is written down *before* it is sent, so
//! that a cut between sending and writing it down can only make the checks more lenient, never report a false
//! loss.
//!
//! Checks after a restart on the same data directory: every confirmed message is there unless a consumer had
//! acked it (a redelivery is allowed and counted); nothing is there that was never published or that is
//! damaged; every definition whose ok was received is there with its arguments; nothing whose delete-ok (or
//! unbind-ok) was received is back. An operation without its reply when the cut came may have happened or not.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use mailroom_tests::Server;
use std::path::Path;

pub const BODY_LEN: usize = 1024;
/// Unconfirmed publishes a publisher keeps in flight.
pub const WINDOW: usize = 100;
pub const MAIN_QUEUES: usize = 3;
const MAGIC: &[u8; 4] = b"MRDL";

pub fn main_queue(i: usize) -> String {
    format!("dur-q{i}")
}

fn main_queue_args(i: usize) -> FieldTable {
    table(&[
        ("x-dead-letter-exchange", s(&format!("dur-dlx-{i}"))),
        ("x-dead-letter-routing-key", s(&format!("dead-{i}"))),
    ])
}

pub fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

pub fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reply code of an error the broker closed a channel or connection with (`None`: not an AMQP error, e.g.
/// the connection was lost).
pub fn amqp_code(e: &lapin::Error) -> Option<(u16, String)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => Some((err.get_id(), err.get_message().to_string())),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------------ bodies

/// A message body: magic, id, queue index, then filler derived from the id (so damage is seen).
pub fn body(id: u64, queue: u8) -> Vec<u8> {
    let mut b = Vec::with_capacity(BODY_LEN);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&id.to_be_bytes());
    b.push(queue);
    let seed = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while b.len() < BODY_LEN {
        let i = b.len() as u64;
        b.push((seed.rotate_left((i % 64) as u32) ^ i) as u8);
    }
    b
}

/// (id, queue index) of an intact body.
pub fn parse_body(b: &[u8]) -> Option<(u64, u8)> {
    if b.len() != BODY_LEN || &b[..4] != MAGIC {
        return None;
    }
    let id = u64::from_be_bytes(b[4..12].try_into().ok()?);
    let q = b[12];
    (body(id, q) == b).then_some((id, q))
}

// ------------------------------------------------------------------------------------------------ ledgers

/// What happened to the messages, as the client saw it. Phases are set by the test
/// ([`Workload::set_phase`]) and stamped on each event when the client records it.
#[derive(Default, Clone)]
pub struct Ledger {
    /// id -> (queue index, phase when it was about to be sent)
    pub sent: HashMap<u64, (u8, u32)>,
    /// id -> phase when the client saw its basic.ack
    pub acked: HashMap<u64, u32>,
    /// id -> phase when the client saw its basic.nack
    pub nacked: HashMap<u64, u32>,
    pub delivered: HashSet<u64>,
    /// Consumer acks about to be sent (such a message may be gone after a restart).
    pub consumer_acked: HashSet<u64>,
}

impl Ledger {
    pub fn acked_sent_in(&self, phase: u32) -> usize {
        self.acked
            .keys()
            .filter(|id| self.sent.get(id).map(|s| s.1) == Some(phase))
            .count()
    }
    pub fn nacked_in(&self, phase: u32) -> usize {
        self.nacked.values().filter(|p| **p == phase).count()
    }
    pub fn unanswered(&self) -> usize {
        self.sent
            .keys()
            .filter(|id| !self.acked.contains_key(id) && !self.nacked.contains_key(id))
            .count()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Queue,
    Exchange,
    Binding,
}

/// A durable definition and what the broker last acknowledged about it.
#[derive(Clone, Debug)]
pub struct Entity {
    pub kind: Kind,
    /// Queue or exchange name; for a binding, its exchange.
    pub name: String,
    /// A binding's queue.
    pub queue: String,
    /// A binding's header value (x-match all, n = this).
    pub n: i32,
    pub args: FieldTable,
    /// Some(true): an ok for its creation was the last reply; Some(false): an ok for its removal (or a refusal
    /// of its creation); None: nothing acknowledged.
    pub state: Option<bool>,
    /// Operations sent without a reply (the outcome is open).
    pub in_flight: u32,
    /// The last reply was a refusal (an AMQP error).
    pub refused: bool,
}

#[derive(Default, Clone)]
pub struct Defs {
    pub entities: BTreeMap<String, Entity>,
    /// Definition changes the broker refused with an AMQP error (code, text).
    pub refused: Vec<String>,
}

pub fn queue_key(name: &str) -> String {
    format!("q:{name}")
}
pub fn exchange_key(name: &str) -> String {
    format!("x:{name}")
}
pub fn binding_key(exchange: &str, queue: &str) -> String {
    format!("b:{exchange}>{queue}")
}

impl Defs {
    pub fn entity(&mut self, key: &str, template: impl FnOnce() -> Entity) -> &mut Entity {
        self.entities.entry(key.to_string()).or_insert_with(template)
    }
    pub fn begin(&mut self, keys: &[String]) {
        for k in keys {
            if let Some(e) = self.entities.get_mut(k) {
                e.in_flight += 1;
            }
        }
    }
    pub fn ok(&mut self, keys: &[String], present: bool) {
        for k in keys {
            if let Some(e) = self.entities.get_mut(k) {
                e.in_flight -= 1;
                e.state = Some(present);
                e.refused = false;
            }
        }
    }
    /// Refused with an AMQP error: the change must not have happened.
    pub fn refused(&mut self, keys: &[String], why: String) {
        for k in keys {
            if let Some(e) = self.entities.get_mut(k) {
                e.in_flight -= 1;
                e.state = Some(e.state.unwrap_or(false));
                e.refused = true;
            }
        }
        self.refused.push(why);
    }

    /// Treats refused changes as open: when the refusal came because the disk went away under a
    /// running broker (a LazyFS crash point), the change may have reached the disk before the failure was
    /// seen, as with a reply lost in a crash.
    pub fn refusals_open(&mut self) {
        for e in self.entities.values_mut() {
            if e.refused {
                e.in_flight += 1;
            }
        }
    }
}

/// Shared between the test and its client tasks.
#[derive(Default)]
pub struct Shared {
    pub ledger: Mutex<Ledger>,
    pub defs: Mutex<Defs>,
    pub phase: AtomicU32,
    pub stop: AtomicBool,
    pub setup_done: AtomicBool,
    /// How client tasks ended and other things worth printing.
    pub events: Mutex<Vec<String>>,
}

impl Shared {
    fn event(&self, e: String) {
        lock(&self.events).push(e);
    }
    fn phase(&self) -> u32 {
        self.phase.load(SeqCst)
    }
}

// ------------------------------------------------------------------------------------------------ workload

#[derive(Clone, Debug)]
pub struct WorkloadOpts {
    pub publishers: usize,
    /// Queues 0..consumers get one acking consumer each.
    pub consumers: usize,
    /// Durable declare/bind/unbind/delete churn on its own connection, up to this many rounds (0: none).
    pub churn_rounds: usize,
}

impl Default for WorkloadOpts {
    fn default() -> Self {
        WorkloadOpts {
            publishers: MAIN_QUEUES,
            consumers: 2,
            churn_rounds: 400,
        }
    }
}

pub struct Workload {
    pub shared: Arc<Shared>,
    driver: tokio::task::JoinHandle<()>,
}

pub async fn connect(url: &str) -> lapin::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default()).await
}

impl Workload {
    /// Declares the main queues, then runs publishers, consumers and the churn until stopped (or until the
    /// broker goes away).
    pub fn start(url: String, opts: WorkloadOpts) -> Workload {
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let driver = tokio::spawn(async move {
            let conn = match connect(&url).await {
                Ok(c) => c,
                Err(e) => return sh.event(format!("setup: connect: {e}")),
            };
            let ch = match conn.create_channel().await {
                Ok(c) => c,
                Err(e) => return sh.event(format!("setup: channel: {e}")),
            };
            for i in 0..MAIN_QUEUES {
                let name = main_queue(i);
                let key = queue_key(&name);
                {
                    let mut d = lock(&sh.defs);
                    d.entity(&key, || Entity {
                        kind: Kind::Queue,
                        name: name.clone(),
                        queue: String::new(),
                        n: 0,
                        args: main_queue_args(i),
                        state: None,
                        in_flight: 0,
                        refused: false,
                    });
                    d.begin(std::slice::from_ref(&key));
                }
                let r = ch
                    .queue_declare(name.as_str().into(), durable_q(), main_queue_args(i))
                    .await;
                match r {
                    Ok(_) => lock(&sh.defs).ok(std::slice::from_ref(&key), true),
                    Err(e) => {
                        if let Some((c, t)) = amqp_code(&e) {
                            lock(&sh.defs)
                                .refused(std::slice::from_ref(&key), format!("declare {name}: {c} {t}"));
                        }
                        return sh.event(format!("setup: declare {name}: {e}"));
                    }
                }
            }
            sh.setup_done.store(true, SeqCst);
            let mut set = tokio::task::JoinSet::new();
            for p in 0..opts.publishers {
                set.spawn(publisher(url.clone(), p, sh.clone()));
            }
            for c in 0..opts.consumers.min(MAIN_QUEUES) {
                set.spawn(consumer(url.clone(), c, sh.clone()));
            }
            if opts.churn_rounds > 0 {
                set.spawn(churn(url.clone(), opts.churn_rounds, sh.clone()));
            }
            while set.join_next().await.is_some() {}
            drop(conn);
        });
        Workload { shared, driver }
    }

    pub fn set_phase(&self, p: u32) {
        self.shared.phase.store(p, SeqCst);
    }

    pub fn ledger(&self) -> Ledger {
        lock(&self.shared.ledger).clone()
    }

    /// Asks every task to stop, waits up to `grace` (publishers wait for their outstanding confirms), then
    /// aborts what is left. Returns what was recorded.
    pub async fn stop(self, grace: Duration) -> (Ledger, Defs, Vec<String>) {
        self.shared.stop.store(true, SeqCst);
        let mut driver = self.driver;
        if tokio::time::timeout(grace, &mut driver).await.is_err() {
            driver.abort();
            let _ = driver.await;
            self.shared
                .event(format!("tasks still running {grace:?} after stop: aborted"));
        }
        let sh = &self.shared;
        (
            lock(&sh.ledger).clone(),
            lock(&sh.defs).clone(),
            lock(&sh.events).clone(),
        )
    }
}

fn durable_q() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn publisher(url: String, p: usize, sh: Arc<Shared>) {
    let conn = match connect(&url).await {
        Ok(c) => c,
        Err(e) => return sh.event(format!("publisher {p}: connect: {e}")),
    };
    let ch = match conn.create_channel().await {
        Ok(c) => c,
        Err(e) => return sh.event(format!("publisher {p}: channel: {e}")),
    };
    if let Err(e) = ch.confirm_select(Default::default()).await {
        return sh.event(format!("publisher {p}: confirm.select: {e}"));
    }
    let q = p % MAIN_QUEUES;
    let queue: ShortString = main_queue(q).as_str().into();
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut window = VecDeque::with_capacity(WINDOW);
    let settle = |id: u64, r: lapin::Result<Confirmation>| -> bool {
        let phase = sh.phase();
        match r {
            Ok(c) if c.is_ack() => {
                lock(&sh.ledger).acked.insert(id, phase);
                true
            }
            Ok(c) if c.is_nack() => {
                lock(&sh.ledger).nacked.insert(id, phase);
                true
            }
            Ok(_) => {
                sh.event(format!("publisher {p}: a publish got no confirm mode answer"));
                false
            }
            Err(e) => {
                sh.event(format!("publisher {p}: confirm: {e}"));
                false
            }
        }
    };
    let mut n: u64 = 0;
    while !sh.stop.load(SeqCst) {
        let id = ((p as u64) << 40) | n;
        n += 1;
        let b = body(id, q as u8);
        lock(&sh.ledger).sent.insert(id, (q as u8, sh.phase()));
        match ch
            .basic_publish("".into(), queue.clone(), Default::default(), &b, props.clone())
            .await
        {
            Ok(c) => window.push_back((id, c)),
            Err(e) => return sh.event(format!("publisher {p}: publish: {e}")),
        }
        while window.len() >= WINDOW {
            let (id, c) = window.pop_front().expect("non-empty");
            if !settle(id, c.await) {
                return;
            }
        }
    }
    while let Some((id, c)) = window.pop_front() {
        if !settle(id, c.await) {
            return;
        }
    }
    let _ = conn.close(200, "bye".into()).await;
}

async fn consumer(url: String, c: usize, sh: Arc<Shared>) {
    let conn = match connect(&url).await {
        Ok(c) => c,
        Err(e) => return sh.event(format!("consumer {c}: connect: {e}")),
    };
    let ch = match conn.create_channel().await {
        Ok(c) => c,
        Err(e) => return sh.event(format!("consumer {c}: channel: {e}")),
    };
    if let Err(e) = ch.basic_qos(50, Default::default()).await {
        return sh.event(format!("consumer {c}: qos: {e}"));
    }
    let mut consumer = match ch
        .basic_consume(
            main_queue(c).as_str().into(),
            format!("dur-c{c}").as_str().into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return sh.event(format!("consumer {c}: consume: {e}")),
    };
    // Acks go out as one `multiple` ack per 20 deliveries (or when deliveries pause), so that at a cut
    // some messages are delivered but unacked: they must come back (a redelivery, counted).
    let mut pending: Vec<u64> = Vec::new();
    let mut last: Option<lapin::message::Delivery> = None;
    while !sh.stop.load(SeqCst) {
        let next = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
        let d = match next {
            Err(_) => None,
            Ok(None) => return sh.event(format!("consumer {c}: cancelled")),
            Ok(Some(Err(e))) => return sh.event(format!("consumer {c}: {e}")),
            Ok(Some(Ok(d))) => Some(d),
        };
        if let Some(d) = d {
            match parse_body(&d.data) {
                Some((id, _)) => {
                    lock(&sh.ledger).delivered.insert(id);
                    pending.push(id);
                }
                None => sh.event(format!(
                    "consumer {c}: damaged or foreign message of {} bytes delivered",
                    d.data.len()
                )),
            }
            last = Some(d);
            if pending.len() < 20 {
                continue;
            }
        }
        if let Some(d) = last.take() {
            // Written down before the ack is sent (see the module doc).
            lock(&sh.ledger).consumer_acked.extend(pending.drain(..));
            if let Err(e) = d.ack(BasicAckOptions { multiple: true }).await {
                return sh.event(format!("consumer {c}: ack: {e}"));
            }
        }
    }
    let _ = conn.close(200, "bye".into()).await;
}

// ------------------------------------------------------------------------------------------------ churn

pub fn churn_exchange(n: usize) -> String {
    format!("dur-cx{n}")
}
pub fn churn_queue(n: usize) -> String {
    format!("dur-cq{n}")
}
fn churn_exchange_args(n: usize) -> FieldTable {
    table(&[("alternate-exchange", s(&format!("dur-ae-{n}")))])
}
fn churn_queue_args(n: usize) -> FieldTable {
    table(&[
        ("x-message-ttl", AMQPValue::LongInt(3_600_000 + n as i32)),
        ("x-dead-letter-exchange", s(&format!("dur-dlx-c{n}"))),
    ])
}
fn churn_binding_args(n: usize) -> FieldTable {
    table(&[("x-match", s("all")), ("n", AMQPValue::LongInt(n as i32))])
}

#[derive(Clone, Copy, Debug)]
enum Op {
    DeclareExchange(usize),
    DeclareQueue(usize),
    Bind(usize),
    Unbind(usize),
    DeleteQueue(usize),
    DeleteExchange(usize),
}

impl Op {
    /// The entities it changes and whether they exist after its ok.
    fn effect(self) -> (Vec<String>, bool) {
        let b = |n| binding_key(&churn_exchange(n), &churn_queue(n));
        match self {
            Op::DeclareExchange(n) => (vec![exchange_key(&churn_exchange(n))], true),
            Op::DeclareQueue(n) => (vec![queue_key(&churn_queue(n))], true),
            Op::Bind(n) => (vec![b(n)], true),
            Op::Unbind(n) => (vec![b(n)], false),
            Op::DeleteQueue(n) => (vec![queue_key(&churn_queue(n)), b(n)], false),
            Op::DeleteExchange(n) => (vec![exchange_key(&churn_exchange(n)), b(n)], false),
        }
    }

    fn register(self, d: &mut Defs) {
        let (kind, key, name, queue, n, args) = match self {
            Op::DeclareExchange(n) => (
                Kind::Exchange,
                exchange_key(&churn_exchange(n)),
                churn_exchange(n),
                String::new(),
                n,
                churn_exchange_args(n),
            ),
            Op::DeclareQueue(n) => (
                Kind::Queue,
                queue_key(&churn_queue(n)),
                churn_queue(n),
                String::new(),
                n,
                churn_queue_args(n),
            ),
            Op::Bind(n) => (
                Kind::Binding,
                binding_key(&churn_exchange(n), &churn_queue(n)),
                churn_exchange(n),
                churn_queue(n),
                n,
                churn_binding_args(n),
            ),
            _ => return,
        };
        d.entity(&key, || Entity {
            kind,
            name,
            queue,
            n: n as i32,
            args,
            state: None,
            in_flight: 0,
            refused: false,
        });
    }

    async fn run(self, ch: &Channel) -> lapin::Result<()> {
        match self {
            Op::DeclareExchange(n) => {
                ch.exchange_declare(
                    churn_exchange(n).as_str().into(),
                    ExchangeKind::Headers,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    churn_exchange_args(n),
                )
                .await
            }
            Op::DeclareQueue(n) => ch
                .queue_declare(churn_queue(n).as_str().into(), durable_q(), churn_queue_args(n))
                .await
                .map(drop),
            Op::Bind(n) => {
                ch.queue_bind(
                    churn_queue(n).as_str().into(),
                    churn_exchange(n).as_str().into(),
                    "".into(),
                    Default::default(),
                    churn_binding_args(n),
                )
                .await
            }
            Op::Unbind(n) => {
                ch.queue_unbind(
                    churn_queue(n).as_str().into(),
                    churn_exchange(n).as_str().into(),
                    "".into(),
                    churn_binding_args(n),
                )
                .await
            }
            Op::DeleteQueue(n) => ch
                .queue_delete(churn_queue(n).as_str().into(), Default::default())
                .await
                .map(drop),
            Op::DeleteExchange(n) => {
                ch.exchange_delete(churn_exchange(n).as_str().into(), Default::default())
                    .await
            }
        }
    }
}

/// Round n: declare exchange n, queue n, bind them; then one removal of round n-1's entities, by n mod 4:
/// 1 unbind, 2 delete the queue, 3 delete the exchange, 0 nothing (so all four end states occur).
async fn churn(url: String, rounds: usize, sh: Arc<Shared>) {
    let conn = match connect(&url).await {
        Ok(c) => c,
        Err(e) => return sh.event(format!("churn: connect: {e}")),
    };
    let mut ch = match conn.create_channel().await {
        Ok(c) => c,
        Err(e) => return sh.event(format!("churn: channel: {e}")),
    };
    for n in 0..rounds {
        let mut ops = vec![Op::DeclareExchange(n), Op::DeclareQueue(n), Op::Bind(n)];
        if n > 0 {
            match n % 4 {
                1 => ops.push(Op::Unbind(n - 1)),
                2 => ops.push(Op::DeleteQueue(n - 1)),
                3 => ops.push(Op::DeleteExchange(n - 1)),
                _ => {}
            }
        }
        for op in ops {
            if sh.stop.load(SeqCst) {
                let _ = conn.close(200, "bye".into()).await;
                return;
            }
            let (keys, present) = op.effect();
            {
                let mut d = lock(&sh.defs);
                op.register(&mut d);
                d.begin(&keys);
            }
            match op.run(&ch).await {
                Ok(()) => {
                    lock(&sh.defs).ok(&keys, present);
                    if let Op::DeclareQueue(n) = op {
                        // One persistent message, unconfirmed and unchecked: the queue gets files on
                        // disk, so deleting it has files to remove.
                        let props = BasicProperties::default().with_delivery_mode(2);
                        let q = churn_queue(n);
                        if let Err(e) = ch
                            .basic_publish("".into(), q.as_str().into(), Default::default(), b"churn", props)
                            .await
                        {
                            return sh.event(format!("churn: publish to {q}: {e}"));
                        }
                    }
                }
                Err(e) => match amqp_code(&e) {
                    Some((code, text)) => {
                        lock(&sh.defs).refused(&keys, format!("{op:?}: {code} {text}"));
                        sh.event(format!("churn: {op:?} refused: {code} {text}"));
                        if !conn.status().connected() {
                            return; // closed with a connection-level error
                        }
                        ch = match conn.create_channel().await {
                            Ok(c) => c,
                            Err(e) => return sh.event(format!("churn: reopen channel: {e}")),
                        };
                    }
                    None => return sh.event(format!("churn: {op:?}: {e}")),
                },
            }
        }
    }
    sh.event(format!("churn: finished {rounds} rounds"));
    while !sh.stop.load(SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

// ------------------------------------------------------------------------------------------------ checks

/// Messages read back from the main queues after a restart.
#[derive(Default, Debug)]
pub struct Drained {
    /// (queue index, id, redelivered flag)
    pub messages: Vec<(u8, u64, bool)>,
    pub damaged: Vec<String>,
    pub missing_queues: Vec<String>,
    pub stalled: Vec<String>,
}

/// Reads every message of the main queues (no-ack consumer until the count the queue reports, then
/// basic.get until empty).
pub async fn drain(conn: &Connection) -> anyhow::Result<Drained> {
    let mut out = Drained::default();
    for qi in 0..MAIN_QUEUES {
        let name = main_queue(qi);
        let ch = conn.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let count = match ch
            .queue_declare(name.as_str().into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => q.message_count() as usize,
            Err(e) => match amqp_code(&e) {
                Some((404, _)) => {
                    out.missing_queues.push(name);
                    continue;
                }
                _ => return Err(e.into()),
            },
        };
        let take = |data: &[u8], redelivered: bool, out: &mut Drained| match parse_body(data) {
            Some((id, q)) if q as usize == qi => out.messages.push((q, id, redelivered)),
            Some((id, q)) => out
                .damaged
                .push(format!("{name}: message {id:#x} of queue {q} found here")),
            None => out.damaged.push(format!(
                "{name}: a damaged or foreign message of {} bytes",
                data.len()
            )),
        };
        let mut got = 0usize;
        if count > 0 {
            let mut consumer = ch
                .basic_consume(
                    name.as_str().into(),
                    "dur-drain".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            while got < count {
                match tokio::time::timeout(Duration::from_secs(60), consumer.next()).await {
                    Ok(Some(Ok(d))) => {
                        got += 1;
                        take(&d.data, d.redelivered, &mut out);
                    }
                    Ok(Some(Err(e))) => return Err(e.into()),
                    Ok(None) | Err(_) => {
                        out.stalled.push(format!(
                            "{name}: {got} of the {count} messages it reported were delivered"
                        ));
                        break;
                    }
                }
            }
            ch.basic_cancel("dur-drain".into(), Default::default()).await?;
        }
        while let Some(m) = ch
            .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
        {
            take(&m.delivery.data, m.delivery.redelivered, &mut out);
        }
        let _ = ch.close(200, "bye".into()).await;
    }
    Ok(out)
}

#[derive(Default, Debug, Clone)]
pub struct MsgReport {
    pub sent: usize,
    pub confirmed: usize,
    pub nacked: usize,
    pub recovered: usize,
    /// Confirmed, not acked by a consumer, not there after the restart.
    pub lost: usize,
    pub lost_examples: Vec<String>,
    /// Confirmed queues the broker does not know after the restart.
    pub missing_queues: usize,
    /// Acked by a consumer, gone (fine) or back (fine: acks carry no durability promise).
    pub acked_gone: usize,
    pub acked_back: usize,
    /// Delivered but not acked before the cut, and there again (a redelivery).
    pub redelivered_unacked: usize,
    pub redelivered_flag: usize,
    pub duplicates: usize,
    pub unknown: usize,
    pub damaged: usize,
    pub stalled: Vec<String>,
    pub unconfirmed_present: usize,
}

impl MsgReport {
    pub fn failures(&self) -> usize {
        self.lost + self.duplicates + self.unknown + self.damaged + self.stalled.len()
    }

    pub fn add(&mut self, o: &MsgReport) {
        self.sent += o.sent;
        self.confirmed += o.confirmed;
        self.nacked += o.nacked;
        self.recovered += o.recovered;
        self.lost += o.lost;
        self.lost_examples.extend(o.lost_examples.iter().take(5).cloned());
        self.missing_queues += o.missing_queues;
        self.acked_gone += o.acked_gone;
        self.acked_back += o.acked_back;
        self.redelivered_unacked += o.redelivered_unacked;
        self.redelivered_flag += o.redelivered_flag;
        self.duplicates += o.duplicates;
        self.unknown += o.unknown;
        self.damaged += o.damaged;
        self.stalled.extend(o.stalled.iter().cloned());
        self.unconfirmed_present += o.unconfirmed_present;
    }

    pub fn line(&self) -> String {
        format!(
            "messages: {} confirmed ({} sent, {} nacked), {} recovered, LOST {}, {} duplicated, {} unknown, \
             {} damaged; redelivered: {} delivered unacked before the cut, {} acked by a consumer and back, \
             {} flagged redelivered; {} queues missing{}",
            self.confirmed,
            self.sent,
            self.nacked,
            self.recovered,
            self.lost,
            self.duplicates,
            self.unknown,
            self.damaged,
            self.redelivered_unacked,
            self.acked_back,
            self.redelivered_flag,
            self.missing_queues,
            if self.stalled.is_empty() {
                String::new()
            } else {
                format!(", drain stalled: {}", self.stalled.join("; "))
            }
        )
    }
}

pub fn check_messages(l: &Ledger, d: &Drained) -> MsgReport {
    let mut r = MsgReport {
        sent: l.sent.len(),
        confirmed: l.acked.len(),
        nacked: l.nacked.len(),
        damaged: d.damaged.len(),
        missing_queues: d.missing_queues.len(),
        stalled: d.stalled.clone(),
        ..Default::default()
    };
    let mut present = HashSet::with_capacity(d.messages.len());
    for &(_, id, redelivered) in &d.messages {
        if !present.insert(id) {
            r.duplicates += 1;
            continue;
        }
        if !l.sent.contains_key(&id) {
            r.unknown += 1;
            continue;
        }
        r.redelivered_flag += redelivered as usize;
        if l.consumer_acked.contains(&id) {
            r.acked_back += 1;
        } else if l.delivered.contains(&id) {
            r.redelivered_unacked += 1;
        }
        if !l.acked.contains_key(&id) {
            r.unconfirmed_present += 1;
        }
    }
    r.recovered = present.len();
    let mut lost: Vec<u64> = Vec::new();
    for id in l.acked.keys() {
        if present.contains(id) {
            continue;
        }
        if l.consumer_acked.contains(id) {
            r.acked_gone += 1;
        } else {
            lost.push(*id);
        }
    }
    lost.sort_unstable();
    r.lost = lost.len();
    r.lost_examples = lost
        .iter()
        .take(5)
        .map(|id| {
            format!(
                "publisher {} #{} to {}",
                id >> 40,
                id & ((1 << 40) - 1),
                main_queue(l.sent.get(id).map(|s| s.0 as usize).unwrap_or(0))
            )
        })
        .collect();
    r
}

#[derive(Default, Debug, Clone)]
pub struct DefReport {
    /// Acknowledged definitions checked (present or absent), and those left open by a cut.
    pub checked: usize,
    pub open: usize,
    /// Acknowledged as created, missing.
    pub lost: Vec<String>,
    /// There, but with other arguments.
    pub changed: Vec<String>,
    /// Acknowledged as removed (or refused), there.
    pub back: Vec<String>,
    pub errors: Vec<String>,
}

impl DefReport {
    pub fn failures(&self) -> usize {
        self.lost.len() + self.changed.len() + self.back.len() + self.errors.len()
    }
    pub fn add(&mut self, o: &DefReport) {
        self.checked += o.checked;
        self.open += o.open;
        self.lost.extend(o.lost.iter().cloned());
        self.changed.extend(o.changed.iter().cloned());
        self.back.extend(o.back.iter().cloned());
        self.errors.extend(o.errors.iter().cloned());
    }
    pub fn line(&self) -> String {
        let mut s = format!(
            "definitions: {} acknowledged checked ({} open at the cut), LOST {}, {} with other arguments, {} back after delete",
            self.checked,
            self.open,
            self.lost.len(),
            self.changed.len(),
            self.back.len()
        );
        for (what, v) in [
            ("lost", &self.lost),
            ("changed", &self.changed),
            ("back", &self.back),
            ("check errors", &self.errors),
        ] {
            if !v.is_empty() {
                let _ = write!(
                    s,
                    "; {what}: {}{}",
                    v.iter().take(6).cloned().collect::<Vec<_>>().join(", "),
                    if v.len() > 6 { ", ..." } else { "" }
                );
            }
        }
        s
    }
}

/// Ok(true)/Ok(false): exists or not (404); Err: anything else.
async fn exists(conn: &Connection, e: &Entity) -> Result<bool, String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let r = match e.kind {
        Kind::Queue => ch
            .queue_declare(
                e.name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(drop),
        Kind::Exchange => {
            ch.exchange_declare(
                e.name.as_str().into(),
                ExchangeKind::Headers,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        }
        Kind::Binding => unreachable!(),
    };
    match r {
        Ok(()) => {
            let _ = ch.close(200, "bye".into()).await;
            Ok(true)
        }
        Err(err) => match amqp_code(&err) {
            Some((404, _)) => Ok(false),
            _ => Err(format!("passive declare of {}: {err}", e.name)),
        },
    }
}

/// Redeclares with the recorded arguments: Ok(true) if equivalent, Ok(false) on 406.
async fn same_args(conn: &Connection, e: &Entity) -> Result<bool, String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let r = match e.kind {
        Kind::Queue => ch
            .queue_declare(e.name.as_str().into(), durable_q(), e.args.clone())
            .await
            .map(drop),
        Kind::Exchange => {
            ch.exchange_declare(
                e.name.as_str().into(),
                ExchangeKind::Headers,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                e.args.clone(),
            )
            .await
        }
        Kind::Binding => unreachable!(),
    };
    match r {
        Ok(()) => {
            let _ = ch.close(200, "bye".into()).await;
            Ok(true)
        }
        Err(err) => match amqp_code(&err) {
            Some((406, _)) => Ok(false),
            _ => Err(format!("redeclare of {}: {err}", e.name)),
        },
    }
}

/// Whether a binding routes: (matching header routed, other header routed). Publishes two probes through
/// the headers exchange with confirms and reads the queue.
async fn probe_binding(conn: &Connection, e: &Entity) -> Result<(bool, bool), String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let err = |x: lapin::Error| format!("probe of {} -> {}: {x}", e.name, e.queue);
    ch.confirm_select(Default::default()).await.map_err(err)?;
    for (body, n) in [("probe-match", e.n), ("probe-other", -1 - e.n)] {
        let props = BasicProperties::default().with_headers(table(&[("n", AMQPValue::LongInt(n))]));
        ch.basic_publish(
            e.name.as_str().into(),
            "".into(),
            Default::default(),
            body.as_bytes(),
            props,
        )
        .await
        .map_err(err)?
        .await
        .map_err(err)?;
    }
    let (mut matched, mut other) = (false, false);
    while let Some(m) = ch
        .basic_get(e.queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .map_err(err)?
    {
        match &m.delivery.data[..] {
            b"probe-match" => matched = true,
            b"probe-other" => other = true,
            _ => {}
        }
    }
    let _ = ch.close(200, "bye".into()).await;
    Ok((matched, other))
}

/// Checks every recorded definition against the running broker.
pub async fn check_defs(conn: &Connection, defs: &Defs) -> DefReport {
    let mut r = DefReport::default();
    let mut there: HashMap<String, bool> = HashMap::new();
    let expect = |e: &Entity| if e.in_flight > 0 { None } else { e.state };
    let order = [Kind::Exchange, Kind::Queue, Kind::Binding];
    for kind in order {
        for (key, e) in defs.entities.iter().filter(|(_, e)| e.kind == kind) {
            let expected = expect(e);
            match expected {
                Some(_) => r.checked += 1,
                None => r.open += 1,
            }
            let label = match e.kind {
                Kind::Queue => format!("queue {}", e.name),
                Kind::Exchange => format!("exchange {}", e.name),
                Kind::Binding => format!("binding {} -> {}", e.name, e.queue),
            };
            if kind == Kind::Binding {
                let ends = there.get(&exchange_key(&e.name)).copied().unwrap_or(false)
                    && there.get(&queue_key(&e.queue)).copied().unwrap_or(false);
                if !ends {
                    if expected == Some(true) {
                        r.lost.push(format!("{label} (its exchange or queue is missing)"));
                    }
                    continue;
                }
                match probe_binding(conn, e).await {
                    Ok((matched, other)) => {
                        if expected == Some(true) && !matched {
                            r.lost.push(label.clone());
                        }
                        if expected == Some(false) && matched {
                            r.back.push(label.clone());
                        }
                        if other {
                            r.changed
                                .push(format!("{label} (routes without its header arguments)"));
                        }
                    }
                    Err(x) => r.errors.push(x),
                }
                continue;
            }
            let is = match exists(conn, e).await {
                Ok(b) => b,
                Err(x) => {
                    r.errors.push(x);
                    continue;
                }
            };
            there.insert(key.clone(), is);
            match (expected, is) {
                (Some(true), false) => r.lost.push(label.clone()),
                (Some(false), true) => r.back.push(label.clone()),
                _ => {}
            }
            if is {
                match same_args(conn, e).await {
                    Ok(true) => {}
                    Ok(false) => r.changed.push(label),
                    Err(x) => r.errors.push(x),
                }
            }
        }
    }
    r
}

/// Waits (up to `within`) until `f` holds, polling; returns whether it did.
pub async fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------------------------------------ cases

/// Runs blocking harness code (process start, LazyFS commands) from a test's async body.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[derive(Default)]
pub struct Outcome {
    pub name: String,
    pub msgs: MsgReport,
    pub defs: DefReport,
    /// The broker did not start by itself, a fault did not fire, a check could not run.
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn failures(&self) -> usize {
        // A missing main queue is counted by the definition check (if its declare-ok was received) and its
        // confirmed messages as lost; on its own (cut before the declare-ok) it is no failure.
        self.msgs.failures() + self.defs.failures() + self.problems.len()
    }
    pub fn print(&self) {
        eprintln!(
            "{} {}\n    {}\n    {}",
            if self.failures() == 0 { "ok  " } else { "FAIL" },
            self.name,
            self.msgs.line(),
            self.defs.line()
        );
        if !self.msgs.lost_examples.is_empty() {
            eprintln!("    lost, e.g.: {}", self.msgs.lost_examples.join(", "));
        }
        for p in &self.problems {
            eprintln!("    problem: {p}");
        }
        for n in &self.notes {
            eprintln!("    {n}");
        }
    }
}

/// Starts the broker on `data` (it must start without help) and checks what the ledgers promised.
pub async fn restart_and_check(data: &Path, ledger: &Ledger, defs: &Defs, out: &mut Outcome) {
    let mut server = match blocking(|| Server::try_start_in(data, &[])) {
        Ok(s) => s,
        Err(e) => {
            // The error and panic lines say why; a backtrace's last frames do not.
            let text = e.to_string();
            let why: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("rror") || l.contains("panicked") || l.contains("refus"))
                .take(8)
                .collect();
            let why = if why.is_empty() {
                text.lines().take(6).collect::<Vec<_>>()
            } else {
                why
            };
            out.problems.push(format!(
                "the broker did not start on its own after the cut: {}",
                why.join(" | ")
            ));
            // Everything confirmed counts as lost when the broker cannot serve it.
            out.msgs.confirmed = ledger.acked.len();
            out.msgs.lost = ledger
                .acked
                .keys()
                .filter(|id| !ledger.consumer_acked.contains(id))
                .count();
            return;
        }
    };
    let warnings: Vec<String> = server
        .startup_log
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(4)
        .cloned()
        .collect();
    if !warnings.is_empty() {
        out.notes.push(format!("restart log: {}", warnings.join(" | ")));
    }
    let conn = match connect(&server.url()).await {
        Ok(c) => c,
        Err(e) => {
            out.problems.push(format!("connect after restart: {e}"));
            return;
        }
    };
    match drain(&conn).await {
        Ok(d) => out.msgs = check_messages(ledger, &d),
        Err(e) => out.problems.push(format!("drain: {e}")),
    }
    out.defs = check_defs(&conn, defs).await;
    let _ = conn.close(200, "bye".into()).await;
    blocking(|| server.signal_and_wait(libc::SIGTERM, Duration::from_secs(30)));
}

pub fn summary(test: &str, outcomes: &[Outcome]) {
    let mut msgs = MsgReport::default();
    let mut defs = DefReport::default();
    let mut problems = 0;
    for o in outcomes {
        msgs.add(&o.msgs);
        defs.add(&o.defs);
        problems += o.problems.len();
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failures() > 0)
        .map(|o| o.name.as_str())
        .collect();
    let text = format!(
        "{test}: {} cases, {} failed\n  {}\n  {}\n  other problems (no start, fault not fired, check errors): {problems}",
        outcomes.len(),
        failed.len(),
        msgs.line(),
        defs.line()
    );
    eprintln!("\n==== {text}");
    if !failed.is_empty() {
        panic!(
            "{text}\n  failed: {}\n  lost: {} confirmed messages, {} acknowledged definitions",
            failed.join("; "),
            msgs.lost,
            defs.lost.len()
        );
    }
    assert!(
        msgs.confirmed > 0,
        "{test}: nothing was confirmed in any case; the test proved nothing"
    );
}
