//! The per-connection context its channels share, from connection.open on: the vhost, the user, what the
//! client supports, the connection's consumers and the list of those to pull for, the exclusive queues it
//! owns, and the buffers reused across frames so the hot path allocates nothing.
//!
//! A channel gets it (with the output buffer) in a `channel::Ctx` for each frame. Everything registered here
//! is released by `Session::release_consumers` and `Session::delete_exclusive_queues` (after each channel's
//! `Channel::release`), which the connection's `Drop` runs, so an early return, an error path or a panic in
//! the connection's task still releases it.

use std::sync::Arc;

use protocol::ShortStr;

use crate::clock::now_ms;
use crate::config::MAX_MAX_MESSAGE_SIZE;
use crate::error::{AmqpError, AmqpResult};
use crate::queue::{ConsumerId, Entry, Queue};
use crate::signal::ConnSignal;
use crate::vhost::VHost;

/// What the client told us it supports in its client-properties capabilities.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCaps {
    pub consumer_cancel_notify: bool,
    pub connection_blocked: bool,
}

/// A consumer as its connection sees it.
pub struct ConsumerState {
    pub id: ConsumerId,
    pub channel: u16,
    pub tag: ShortStr,
    pub queue: Arc<Queue>,
    pub no_ack: bool,
    /// Prefetch limit of this consumer (0 = none).
    pub limit: u16,
    pub unacked: u32,
    /// Already in the connection's pull list.
    pub scheduled: bool,
    /// Bytes of frames per delivery in its last batch (0 before the first): the next pull takes about
    /// `output::WRITE_QUANTUM` worth.
    pub delivery_bytes: u32,
}

pub struct Session {
    /// The connection's id (owner of its exclusive queues).
    pub(crate) id: u64,
    pub(crate) vhost: Arc<VHost>,
    pub(crate) user: String,
    pub(crate) caps: ClientCaps,
    /// Handed to the queues this connection consumes from, to wake it.
    pub(crate) signal: Arc<ConnSignal>,
    /// Looked up on every delivery and ack: aHash, not SipHash.
    pub(crate) consumers: ahash::AHashMap<ConsumerId, ConsumerState>,
    /// Consumers that may have messages and credit: pull for them before the next write.
    pub(crate) pull_list: Vec<ConsumerId>,
    exclusive_queues: Vec<Arc<Queue>>,
    /// Reused by basic.publish for the queues a message routes to.
    pub(crate) route_scratch: Vec<router::Name>,
    /// The queues the last cacheable publish reached (basic_publish.rs).
    pub(crate) route_cache: RouteCache,
    /// Reused by deliveries for the entries pulled from a queue.
    pub(crate) pull_scratch: Vec<Entry>,
    /// Reused for the consumers a signal says are ready.
    pub(crate) ready_scratch: Vec<ConsumerId>,
    /// Largest message body accepted (`--max-message-size`).
    max_message_size: u64,
    /// This connection has published (a memory or disk alarm blocks it).
    pub(crate) published: bool,
    /// Queues over their flow bound this connection published to: it is not read until they are under
    /// their low-water marks (flow control, `flow.rs`).
    pub(crate) flow_queues: Vec<Arc<Queue>>,
    /// `flow_queues` grew since the connection last registered with them.
    pub(crate) flow_dirty: bool,
    /// A channel holds single acks it has taken but not settled yet (`Channel::settle_acked_run`): the
    /// connection settles them before the round's pulls.
    pub(crate) acks_deferred: bool,
    /// A consumer took the last of its prefetch credit this round: nothing more goes to it until its client
    /// acks, so the connection yields its core after the write (`Config::yield_after_write`).
    pub(crate) window_closed: bool,
    /// Who the connection acts as, for permission checks (`users.rs`); allows everything by default.
    pub(crate) access: crate::users::Access,
    /// This connection's message counters (the metrics; `stats.rs`).
    pub(crate) stats: Arc<crate::stats::ConnStats>,
    /// `--consumer-timeout` in ms (None: off); a queue's `x-consumer-timeout` overrides it.
    pub(crate) consumer_timeout: Option<u64>,
    /// The broker's flow-control state, for the counters this connection bumps.
    pub(crate) flow: Option<Arc<crate::flow::Flow>>,
    /// The connection's name (as the management API shows it), for trace events.
    pub(crate) conn_name: Arc<str>,
    /// The vhost, connection and user of this session's trace events (`trace::Source`).
    pub(crate) trace_source: Arc<crate::trace::Source>,
    /// The wall clock read once per wake-up of the connection (`now_ms`); 0: not read yet.
    now_cache: u64,
}

impl Session {
    pub fn new(
        id: u64,
        vhost: Arc<VHost>,
        user: String,
        caps: ClientCaps,
        signal: Arc<ConnSignal>,
        max_message_size: u64,
    ) -> Session {
        Session {
            id,
            user,
            caps,
            signal,
            consumers: ahash::AHashMap::new(),
            pull_list: Vec::new(),
            exclusive_queues: Vec::new(),
            route_scratch: Vec::new(),
            route_cache: RouteCache::default(),
            pull_scratch: Vec::new(),
            ready_scratch: Vec::new(),
            max_message_size,
            published: false,
            flow_queues: Vec::new(),
            flow_dirty: false,
            acks_deferred: false,
            window_closed: false,
            access: Default::default(),
            stats: Arc::default(),
            consumer_timeout: None,
            flow: None,
            conn_name: "".into(),
            trace_source: crate::trace::Source::vhost(&vhost.name),
            vhost,
            now_cache: 0,
        }
    }

    /// Milliseconds since the epoch, read at most once per wake-up of the connection (issue 13: a
    /// clock read per message cost two `clock_gettime` calls per publish). Everything a connection
    /// handles in one wake-up is handled within microseconds, so it shares one reading; TTLs and
    /// delays are in milliseconds.
    pub fn now_ms(&mut self) -> u64 {
        if self.now_cache == 0 {
            self.now_cache = crate::clock::now_ms();
        }
        self.now_cache
    }

    /// The connection woke up: the next `now_ms` reads the clock again.
    pub fn clock_tick(&mut self) {
        self.now_cache = 0;
    }

    /// A body over `--max-message-size` is refused with 406 and RabbitMQ's text (rabbit_channel's
    /// check_msg_size: "max size" when the limit is the 512 MiB ceiling, "configured max size" otherwise).
    pub fn check_message_size(&self, size: u64) -> AmqpResult<()> {
        let max = self.max_message_size;
        if size <= max {
            return Ok(());
        }
        if let Some(flow) = &self.flow {
            flow.counters
                .oversized_publishes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let which = if max == MAX_MAX_MESSAGE_SIZE {
            "max size"
        } else {
            "configured max size"
        };
        Err(AmqpError::precondition_failed(format!(
            "message size {size} is larger than {which} {max}"
        )))
    }

    /// Puts a consumer on the pull list (once).
    pub fn schedule_pull(&mut self, id: ConsumerId) {
        if let Some(c) = self.consumers.get_mut(&id) {
            if !c.scheduled {
                c.scheduled = true;
                self.pull_list.push(id);
            }
        }
    }

    /// Removes a consumer from its queue (basic.cancel, channel closed); an auto-delete queue whose last
    /// consumer this was is deleted.
    pub fn remove_consumer(&mut self, id: ConsumerId) {
        if let Some(c) = self.consumers.remove(&id) {
            let r = c.queue.remove_consumer(id, now_ms());
            if r.auto_delete_now {
                self.vhost.delete_queue(&c.queue);
            }
        }
    }

    /// Forgets a consumer whose queue is gone (the queue already dropped it).
    pub fn forget_consumer(&mut self, id: ConsumerId) -> Option<ConsumerState> {
        self.consumers.remove(&id)
    }

    /// An exclusive queue this connection declared: deleted when the connection goes.
    pub fn own_exclusive(&mut self, q: Arc<Queue>) {
        self.exclusive_queues.push(q);
    }

    /// An exclusive queue of ours was deleted by the client.
    pub fn disown(&mut self, q: &Arc<Queue>) {
        self.exclusive_queues.retain(|x| !Arc::ptr_eq(x, q));
    }

    /// Cancels every consumer left (the channels released theirs first; this catches any a failed handler
    /// left behind) and forgets the pull list.
    pub fn release_consumers(&mut self) {
        let ids: Vec<ConsumerId> = self.consumers.keys().copied().collect();
        for id in ids {
            self.remove_consumer(id);
        }
        self.pull_list.clear();
    }

    /// The connection is gone: its exclusive queues go too.
    pub fn delete_exclusive_queues(&mut self) {
        for q in std::mem::take(&mut self.exclusive_queues) {
            self.vhost.delete_queue(&q);
        }
    }
}

/// The queues a connection's last publish routed to, by exchange and routing key, valid while the vhost's
/// topology epoch is what it was before that route was computed (`topology.rs`). A publisher that sends
/// to the same exchange and key again (the usual case) skips the router and the queue map and their two
/// shared read locks. Routes that read the message (headers, properties, CC/BCC) are not kept.
#[derive(Default)]
pub(crate) struct RouteCache {
    /// 0: nothing kept.
    epoch: u64,
    exchange: ShortStr,
    routing_key: ShortStr,
    /// The queues, also while `epoch` is 0: the buffer is reused by every publish.
    pub(crate) queues: Vec<Arc<Queue>>,
}

impl RouteCache {
    /// Routes `msg`, published to `exchange` with `routing_key`: afterwards `queues` holds the queues it
    /// reached. The kept route is used if it is for the same exchange and key and the topology epoch has
    /// not moved since it was computed; else the message is routed (`dests` is the name buffer) and the
    /// route kept if it read nothing of the message. The epoch is read before routing: a route computed
    /// while an edit is under way is tagged with the epoch before the edit and is not used again.
    #[inline]
    pub(crate) fn route(
        &mut self,
        vhost: &VHost,
        exchange: &ShortStr,
        routing_key: &ShortStr,
        msg: &crate::message::Message,
        dests: &mut Vec<router::Name>,
    ) -> Result<(), router::RouterError> {
        let epoch = vhost.topology_epoch();
        if self.holds(epoch, exchange, routing_key) && msg.extra_routing_keys().is_empty() {
            return Ok(());
        }
        let reads = vhost.route_message_reads(exchange.as_str(), routing_key.as_str(), msg, dests)?;
        self.fill(if reads { 0 } else { epoch }, exchange, routing_key, vhost, dests);
        Ok(())
    }

    /// Whether the kept queues are the route of `exchange`/`routing_key` at topology `epoch`.
    #[inline]
    fn holds(&self, epoch: u64, exchange: &ShortStr, routing_key: &ShortStr) -> bool {
        self.epoch == epoch && self.routing_key == *routing_key && self.exchange == *exchange
    }

    /// Keeps the queues named in `dests` as the route of `exchange`/`routing_key` at `epoch` (read before
    /// the route was computed), or, with `epoch` 0, for this publish only. The names are copied: the
    /// cache must not hold the connection's read buffer.
    fn fill(
        &mut self,
        epoch: u64,
        exchange: &ShortStr,
        routing_key: &ShortStr,
        vhost: &VHost,
        dests: &[router::Name],
    ) {
        self.queues.clear();
        vhost.with_queues(dests, |q| self.queues.push(q.clone()));
        self.epoch = epoch;
        if epoch != 0 {
            if self.exchange != *exchange {
                self.exchange = ShortStr::from(exchange.as_str());
            }
            if self.routing_key != *routing_key {
                self.routing_key = ShortStr::from(routing_key.as_str());
            }
        }
    }
}

#[cfg(test)]
mod route_cache_tests {
    //! The route cache against the router itself (the reference): under any sequence of topology edits,
    //! every publish reaches exactly the queues a fresh route reaches, the same queue objects (a queue
    //! deleted and declared again is a new queue), and fails exactly when the fresh route fails.

    use super::*;
    use crate::message::Message;
    use crate::queue::QueueSpec;
    use bytes::Bytes;
    use proptest::prelude::*;
    use protocol::{FieldTable, RawProperties};
    use router::{Binding, ExchangeDef, ExchangeKind};

    const KEYS: [&str; 8] = ["a", "b", "a.b", "#", "*", "q0", "q1", "q2"];
    const KINDS: [ExchangeKind; 4] = [
        ExchangeKind::Direct,
        ExchangeKind::Topic,
        ExchangeKind::Fanout,
        ExchangeKind::Headers,
    ];

    #[derive(Debug, Clone)]
    enum Op {
        DeclareQueue(u8),
        DeleteQueue(u8),
        DeclareExchange(u8, u8),
        DeleteExchange(u8),
        Bind(u8, u8, u8),
        Unbind(u8, u8, u8),
        BindExchange(u8, u8, u8),
        UnbindExchange(u8, u8, u8),
        /// exchange (0: the default exchange), routing key, header `h` (0: none, else "1" or "2")
        Publish(u8, u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0u8..3).prop_map(Op::DeclareQueue),
            1 => (0u8..3).prop_map(Op::DeleteQueue),
            1 => (0u8..3, 0u8..4).prop_map(|(x, k)| Op::DeclareExchange(x, k)),
            1 => (0u8..3).prop_map(Op::DeleteExchange),
            1 => (0u8..3, 0u8..3, 0u8..8).prop_map(|(q, x, k)| Op::Bind(q, x, k)),
            1 => (0u8..3, 0u8..3, 0u8..8).prop_map(|(q, x, k)| Op::Unbind(q, x, k)),
            1 => (0u8..3, 0u8..3, 0u8..8).prop_map(|(d, s, k)| Op::BindExchange(d, s, k)),
            1 => (0u8..3, 0u8..3, 0u8..8).prop_map(|(d, s, k)| Op::UnbindExchange(d, s, k)),
            8 => (0u8..4, 0u8..8, 0u8..3).prop_map(|(x, k, h)| Op::Publish(x, k, h)),
        ]
    }

    fn xname(x: u8) -> String {
        format!("x{x}")
    }

    fn qname(q: u8) -> String {
        format!("q{q}")
    }

    /// Queue `q` bound to exchange `x` with key `k`; for a headers exchange, on header `h` = "1" or "2" by
    /// the key's parity (other kinds ignore the arguments).
    fn queue_binding(q: u8, x: u8, k: u8) -> Binding {
        let mut b = Binding::queue(&xname(x), &qname(q), KEYS[k as usize]);
        b.arguments = router::Args(vec![(
            "h".into(),
            router::ArgValue::Str(if k.is_multiple_of(2) { "1" } else { "2" }.into()),
        )]);
        b
    }

    fn apply(vhost: &VHost, op: &Op) {
        // Edits that the broker refuses (an unknown exchange, a kind that differs) are refused alike
        // for both sides of the comparison: their errors do not matter here.
        match *op {
            Op::DeclareQueue(q) => {
                let _ = vhost.declare_queue(QueueSpec {
                    name: qname(q).into(),
                    durable: false,
                    exclusive_owner: None,
                    auto_delete: false,
                    arguments: FieldTable::default(),
                });
            }
            Op::DeleteQueue(q) => {
                if let Some(queue) = vhost.queue(&qname(q)) {
                    vhost.delete_queue(&queue);
                }
            }
            Op::DeclareExchange(x, k) => {
                let mut def = ExchangeDef::new(&xname(x), KINDS[k as usize]);
                def.durable = false;
                let _ = vhost.declare_exchange(def);
            }
            Op::DeleteExchange(x) => {
                let _ = vhost.delete_exchange(&xname(x), false);
            }
            Op::Bind(q, x, k) => {
                let _ = vhost.bind(queue_binding(q, x, k));
            }
            Op::Unbind(q, x, k) => {
                let _ = vhost.unbind(&queue_binding(q, x, k));
            }
            Op::BindExchange(d, s, k) => {
                let _ = vhost.bind(Binding::exchange(&xname(s), &xname(d), KEYS[k as usize]));
            }
            Op::UnbindExchange(d, s, k) => {
                let _ = vhost.unbind(&Binding::exchange(&xname(s), &xname(d), KEYS[k as usize]));
            }
            Op::Publish(..) => {}
        }
    }

    fn ptrs(queues: &[Arc<Queue>]) -> Vec<usize> {
        let mut v: Vec<usize> = queues.iter().map(|q| Arc::as_ptr(q) as usize).collect();
        v.sort_unstable();
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn the_cached_route_is_always_the_fresh_route(ops in proptest::collection::vec(op(), 1..120)) {
            let dir = tempfile::tempdir().unwrap();
            let store = storage::Store::open(dir.path(), Default::default()).unwrap();
            let vhost = VHost::new("/", store);
            let mut cache = RouteCache::default();
            let mut dests = Vec::new();
            for (i, o) in ops.iter().enumerate() {
                apply(&vhost, o);
                let Op::Publish(x, k, h) = *o else { continue };
                let exchange = if x == 0 { ShortStr::default() } else { ShortStr::from(xname(x - 1)) };
                let key = ShortStr::from(KEYS[k as usize]);
                let props = if h == 0 {
                    RawProperties::empty()
                } else {
                    let mut t = protocol::FieldTable::new();
                    t.insert("h", protocol::FieldValue::LongStr(protocol::LongStr::from(if h == 1 { "1" } else { "2" })));
                    RawProperties::empty().with_headers(t).unwrap()
                };
                let msg = Message::new(exchange.clone(), key.clone(), props, Bytes::new());
                let got = cache.route(&vhost, &exchange, &key, &msg, &mut dests);
                let mut fresh = Vec::new();
                let want = vhost.route_message(exchange.as_str(), key.as_str(), &msg, &mut fresh);
                prop_assert_eq!(got.is_ok(), want.is_ok(), "op {}: {:?}", i, o);
                if want.is_ok() {
                    let mut queues = Vec::new();
                    vhost.with_queues(&fresh, |q| queues.push(q.clone()));
                    prop_assert_eq!(ptrs(&cache.queues), ptrs(&queues), "op {}: {:?} after {:?}", i, o, &ops[..i]);
                }
            }
        }
    }

    /// A hit leaves the name buffer alone (nothing was routed); any edit, and any route that reads the
    /// message, routes again.
    #[test]
    fn a_route_is_reused_until_an_edit_and_never_when_it_read_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = storage::Store::open(dir.path(), Default::default()).unwrap();
        let vhost = VHost::new("/", store);
        apply(&vhost, &Op::DeclareQueue(0));
        let mut cache = RouteCache::default();
        let sentinel: router::Name = "untouched".into();
        let route = |cache: &mut RouteCache, x: &str, k: &str| -> bool {
            let (x, k) = (ShortStr::from(x), ShortStr::from(k));
            let msg = Message::new(x.clone(), k.clone(), RawProperties::empty(), Bytes::new());
            let mut dests = vec![sentinel.clone()];
            cache.route(&vhost, &x, &k, &msg, &mut dests).unwrap();
            dests == [sentinel.clone()]
        };
        assert!(!route(&mut cache, "", "q0"), "first publish routes");
        assert!(route(&mut cache, "", "q0"), "same exchange and key: reused");
        assert!(!route(&mut cache, "", "q1"), "another key routes");
        assert!(!route(&mut cache, "", "q0"), "and back");
        assert!(route(&mut cache, "", "q0"));
        apply(&vhost, &Op::DeclareExchange(0, 0));
        assert!(
            !route(&mut cache, "", "q0"),
            "an edit anywhere in the vhost routes again"
        );
        assert!(route(&mut cache, "", "q0"));
        apply(&vhost, &Op::DeclareExchange(1, 3));
        apply(&vhost, &Op::Bind(0, 1, 0));
        assert!(!route(&mut cache, "x1", "a"), "headers exchange with a binding");
        assert!(!route(&mut cache, "x1", "a"), "reads the headers: never reused");
    }
}
