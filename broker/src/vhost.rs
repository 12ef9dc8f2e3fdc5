//! A virtual host: its router (exchanges and bindings) and its queues, the write-through of durable
//! definitions to the store, and the routing of dead letters (which queues hand back to their callers).

use std::sync::Arc;

use parking_lot::RwLock;
use protocol::ShortStr;
use router::{Binding, Declared, Destination, ExchangeDef, Router};
use storage::{BindingRecord, ExchangeRecord, QueueRecord, Store};

use crate::clock::now_ms;
use crate::deadletter::{deaths, is_cycle, with_x_death, Redriven};
use crate::error::AmqpError;
use crate::message::Message;
use crate::queue::{DeadLetters, DeathReason, Entry, Queue, QueueSpec, Recovered};
use crate::reply_to::ReplyTargets;
use crate::store::{decode_table, encode_table, QueueStore};
use crate::topology::{Epoch, TopologyLock};

pub struct VHost {
    pub name: Arc<str>,
    /// Exchanges and bindings. Publishers route under the read lock; edits take the write lock briefly, so a
    /// publish sees either the old or the new binding set, never a torn one. Every edit moves `topology` on.
    pub router: TopologyLock<Router>,
    /// Looked up by name when a publish routes: aHash (as the router's maps), not SipHash. Every change
    /// moves `topology` on.
    queues: TopologyLock<ahash::AHashMap<Arc<str>, Arc<Queue>>>,
    /// Moves on with every change of `router` or `queues`: a connection reuses the queues its last route
    /// reached while it is unchanged (`session::RouteCache`).
    topology: Arc<Epoch>,
    store: Store,
    /// Direct reply-to: who consumes from each `amq.rabbitmq.reply-to.*` name.
    pub reply_to: ReplyTargets,
    /// Operator policies (`vhost_policy.rs`).
    pub(crate) policies: RwLock<Vec<Arc<crate::policy::Policy>>>,
    /// Deduplication windows of exchanges and queues (`dedup.rs`).
    pub dedup: crate::dedup::Registry,
    /// Messages held by `x-delayed-message` exchanges (`delayed.rs`).
    pub delayed: crate::delayed::Delayed,
    /// Message tracing's switch and recorder (`trace/`).
    pub trace: crate::trace::VhostTrace,
}

/// Logs a failed store write that has no client to report to (cleanup after a delete): the definition stays
/// in the store and comes back at the next start, where recovery skips what no longer fits.
fn log_store_err<T>(what: &str, r: Result<T, storage::StoreError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, what, "store write failed");
    }
}

/// A definition change the store refused: 541, and the change is not made (docs/durability.md).
fn store_err(e: storage::StoreError) -> AmqpError {
    tracing::error!(error = %e, "store write failed");
    AmqpError::internal(format!("could not store the change: {e}"))
}

impl VHost {
    pub fn new(name: &str, store: Store) -> Arc<VHost> {
        let topology = Arc::new(Epoch::default());
        Arc::new(VHost {
            delayed: crate::delayed::Delayed::open(&store, name),
            name: name.into(),
            router: TopologyLock::new(Router::new(name), topology.clone()),
            queues: TopologyLock::new(ahash::AHashMap::new(), topology.clone()),
            topology,
            store,
            reply_to: ReplyTargets::default(),
            policies: RwLock::new(Vec::new()),
            dedup: Default::default(),
            trace: Default::default(),
        })
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    /// The topology epoch: it moves on with every change of the exchanges, bindings or queues.
    #[inline]
    pub fn topology_epoch(&self) -> u64 {
        self.topology.get()
    }

    /// Routes `msg` as if published to `exchange` with `routing_key` (and its CC/BCC keys) into `dests`,
    /// under the router's read lock. Its headers and properties are decoded only if the route reads them
    /// (a headers exchange with bindings, a consistent-hash exchange that hashes on a header or property).
    /// Publishing, dead-lettering and the delayed release all route through here.
    #[inline]
    pub fn route_message(
        &self,
        exchange: &str,
        routing_key: &str,
        msg: &Message,
        dests: &mut Vec<router::Name>,
    ) -> Result<(), router::RouterError> {
        self.route_message_reads(exchange, routing_key, msg, dests)
            .map(drop)
    }

    /// `route_message`, and whether the route read the message: its headers (a headers exchange with
    /// bindings, a consistent-hash exchange on a header), its properties (a consistent-hash exchange on a
    /// property anywhere in the vhost) or its CC/BCC keys. A route that did not depends on the exchange,
    /// the routing key and the topology only, and may be reused while the topology epoch is unchanged.
    #[inline]
    pub fn route_message_reads(
        &self,
        exchange: &str,
        routing_key: &str,
        msg: &Message,
        dests: &mut Vec<router::Name>,
    ) -> Result<bool, router::RouterError> {
        let read = std::cell::Cell::new(!msg.extra_routing_keys().is_empty());
        let headers = || {
            read.set(true);
            crate::args::message_headers(&msg.properties)
        };
        let router = self.router.read();
        let props = if router.needs_properties() {
            read.set(true);
            crate::message::route_props(&msg.properties)
        } else {
            router::MsgProps::default()
        };
        router
            .route_msg_lazy(
                exchange,
                routing_key,
                msg.extra_routing_keys(),
                &headers,
                &props,
                dests,
            )
            .map(|_| read.get())
    }

    pub fn queue_or_404(&self, name: &str) -> Result<Arc<Queue>, AmqpError> {
        self.queue(name).ok_or_else(|| self.no_queue(name))
    }

    pub fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{}' in vhost '{}'", name, self.name))
    }

    /// Returns the existing queue (false) or creates it from `spec` (true). Durable queues are recorded in
    /// the store before they are visible.
    pub fn declare_queue(&self, spec: QueueSpec) -> Result<(Arc<Queue>, bool), AmqpError> {
        self.declare_queue_durably(spec)
            .map(|(q, created, _)| (q, created))
    }

    /// `declare_queue`, and the store ticket of the queue's record (0 when nothing was written): the
    /// declare-ok that promises durability waits for it.
    pub fn declare_queue_durably(&self, spec: QueueSpec) -> Result<(Arc<Queue>, bool, u64), AmqpError> {
        crate::stats::QUEUES_DECLARED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut queues = self.queues.write();
        if let Some(q) = queues.get(&spec.name) {
            return Ok((q.clone(), false, 0));
        }
        let name = spec.name.clone();
        let dedup = crate::dedup::config(&spec.arguments, false).ok().flatten();
        let mut ticket = 0;
        let q = if spec.durable {
            let id = self.store.next_queue_id().map_err(store_err)?;
            ticket = self
                .store
                .put_queue(&QueueRecord {
                    id,
                    vhost: self.name.to_string(),
                    name: name.to_string(),
                    durable: true,
                    exclusive: spec.exclusive_owner.is_some(),
                    auto_delete: spec.auto_delete,
                    arguments: encode_table(&spec.arguments),
                })
                .map_err(store_err)?;
            let qs = QueueStore::new(self.store.clone(), id, self.name.clone(), name.clone());
            Arc::new(Queue::with_store(spec, qs, None, now_ms()))
        } else {
            Arc::new(Queue::new(spec, now_ms()))
        };
        queues.insert(name.clone(), q.clone());
        drop(queues);
        if let Some(c) = dedup {
            let store = q.spec.durable.then_some(&self.store);
            self.dedup.add(true, &self.name, &name, c, store, false, now_ms());
        }
        crate::stats::QUEUES_CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.router.write().declare_queue(name);
        self.apply_policy(&q);
        Ok((q, true, ticket))
    }

    /// `delete_queue`, and the store ticket the deletion-ok waits for (0 for a transient queue).
    pub fn delete_queue_durably(&self, queue: &Arc<Queue>) -> (u32, u64) {
        let n = self.delete_queue(queue);
        // The deletion's writes all happened before this read: a ticket at or above theirs.
        let ticket = if queue.spec.durable {
            self.store.current_ticket()
        } else {
            0
        };
        (n, ticket)
    }

    /// Why the writes of `ticket` could not be made durable (the store's last flush error).
    pub fn durability_error(&self, ticket: u64) -> String {
        self.store.not_durable(ticket).to_string()
    }

    /// The store ticket of the latest write (a ticket at or above every write made so far).
    pub fn current_ticket(&self) -> u64 {
        self.store.current_ticket()
    }

    /// Removes a queue, its bindings and its messages; its consumers are told. Returns its ready count.
    pub fn delete_queue(&self, queue: &Arc<Queue>) -> u32 {
        let removed = {
            let mut queues = self.queues.write();
            match queues.get(queue.name()) {
                Some(q) if Arc::ptr_eq(q, queue) => queues.remove(queue.name()),
                _ => None,
            }
        };
        if removed.is_none() {
            return 0;
        }
        self.dedup.remove(true, queue.name());
        crate::stats::QUEUES_DELETED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (bindings, auto_deleted) = {
            let mut router = self.router.write();
            let bindings = router.bindings_for_queue(queue.name());
            let auto_deleted = router.delete_queue(queue.name());
            (bindings, auto_deleted)
        };
        if queue.spec.durable {
            for b in &bindings {
                log_store_err(
                    "delete binding",
                    self.store.delete_binding(&self.binding_record(b)),
                );
            }
        }
        self.forget_exchanges(&auto_deleted);
        queue.mark_deleted()
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    /// The timer's visit: message TTLs, retry delays and unused `x-expires` queues.
    pub fn tick(&self, now: u64) {
        let timed: Vec<Arc<Queue>> = self
            .queues
            .read()
            .values()
            .filter(|q| q.needs_tick())
            .cloned()
            .collect();
        let mut dead = DeadLetters::new();
        for q in timed {
            let tick = q.tick(now, &mut dead);
            self.dead_letter(&q, &mut dead, now);
            if tick.expired {
                tracing::debug!(queue = %q.name(), "queue expired (x-expires)");
                self.delete_queue(&q);
            }
        }
    }

    /// Looks up the queues a route produced and hands each of them to `f`, under one read lock.
    pub fn with_queues(&self, names: &[router::Name], mut f: impl FnMut(&Arc<Queue>)) {
        let queues = self.queues.read();
        for n in names {
            if let Some(q) = queues.get(n) {
                f(q);
            }
        }
    }

    // ------------------------------------------------------------------ dead letters

    /// Republishes the dead letters of `from` through its dead-letter exchange (or drops them when it has
    /// none), then removes them from `from`'s store. Messages whose route would close a fully automatic
    /// cycle are dropped for that destination, with a warning. Called with no queue lock held; the dead
    /// letters a target queue hands back (a full drop-head target) are handled the same way in turn.
    pub fn dead_letter(&self, from: &Queue, dead: &mut DeadLetters, now: u64) {
        if dead.is_empty() {
            return;
        }
        let mut further: Vec<(Arc<Queue>, DeadLetters)> = Vec::new();
        let (dlx, dlrk) = from.dead_letter_target();
        if self.trace.on() {
            self.trace_dead(from, dead, dlx.as_ref(), now);
        }
        match dlx.as_deref() {
            Some(dlx) => {
                crate::stats::QueueStats::add(&from.stats.dead_lettered, dead.len() as u64);
                self.republish_dead(from, dlx, dlrk.as_deref(), dead, now, &mut further)
            }
            None => {
                tracing::debug!(queue = %from.name(), n = dead.len(), "dropping dead messages (no dead-letter exchange)");
                if tracing::enabled!(tracing::Level::DEBUG) {
                    for d in dead.iter() {
                        let (message_id, correlation_id) = crate::trace::ids(&d.entry.msg.properties);
                        tracing::debug!(queue = %from.name(), reason = d.reason.as_str(), message_id, correlation_id, "dead message dropped");
                    }
                }
            }
        }
        from.forget(dead.iter().map(|d| &d.entry));
        dead.clear();
        for (q, mut more) in further {
            self.dead_letter(&q, &mut more, now);
        }
    }

    fn republish_dead(
        &self,
        from: &Queue,
        dlx: &str,
        dlrk: Option<&str>,
        dead: &DeadLetters,
        now: u64,
        further: &mut Vec<(Arc<Queue>, DeadLetters)>,
    ) {
        let mut dests = Vec::new();
        let mut targets: Vec<Arc<Queue>> = Vec::new();
        for d in dead.iter() {
            let msg = &d.entry.msg;
            let reason = d.reason.as_str();
            let props = with_x_death(msg, from.name(), reason, now);
            let exchange = ShortStr::try_from_str(dlx).unwrap_or_default();
            // As RabbitMQ (rabbit_dead_letter.erl `publish/5`): with the queue's dead-letter routing key the
            // dead letter routes with that key alone; without it, with every key it was published with (its
            // key, CC and BCC). Its headers keep CC (as RabbitMQ since 3.13) and never show BCC.
            let (routing_key, new) = match dlrk {
                Some(rk) => {
                    let rk = ShortStr::try_from_str(rk).unwrap_or_default();
                    let mut new = Message::new(exchange, rk.clone(), props, msg.body.clone());
                    new.routes = None;
                    (rk, new)
                }
                None => {
                    let rk = msg.routing_key.clone();
                    (rk.clone(), Message::new(exchange, rk, props, msg.body.clone()))
                }
            };
            // Routed on the dead letter's own headers and properties (x-death included), as RabbitMQ
            // routes the updated message through the dead-letter exchange: a headers or consistent-hash
            // exchange as DLX matches on them.
            let routed = self.route_message(dlx, routing_key.as_str(), &new, &mut dests);
            let (message_id, correlation_id) = crate::trace::ids(&msg.properties);
            if let Err(e) = routed {
                tracing::warn!(queue = %from.name(), dlx, message_id, correlation_id, error = %e, "dead-letter exchange unusable: message dropped");
                continue;
            }
            let history = if d.reason == DeathReason::Rejected {
                Vec::new()
            } else {
                deaths(&new.properties)
            };
            let new = Arc::new(new);
            // Publish outside the queue map's lock: a target's own dead letters come back through here.
            targets.clear();
            self.with_queues(&dests, |q| targets.push(q.clone()));
            let mut delivered = 0;
            for q in &targets {
                if d.reason != DeathReason::Rejected && is_cycle(q.name(), &history) {
                    tracing::warn!(
                        queue = %from.name(), target = %q.name(), reason, message_id, correlation_id,
                        "dead-letter cycle without rejection: message dropped for this destination"
                    );
                    continue;
                }
                let mut more = DeadLetters::new();
                if q.publish(new.clone(), now, &mut more).is_ok() {
                    delivered += 1;
                }
                if !more.is_empty() {
                    further.push((q.clone(), more));
                }
            }
            if delivered == 0 {
                tracing::warn!(queue = %from.name(), dlx, reason, message_id, correlation_id, "dead-lettered message reached no queue: dropped");
            } else {
                tracing::debug!(queue = %from.name(), dlx, reason, message_id, correlation_id, "message dead-lettered");
            }
        }
    }

    // ------------------------------------------------------------------ operator operations
    //
    // Not reachable from the AMQP wire (RabbitMQ has no method for them either): the operators' API calls
    // them when it lands; broker/tests/redrive.rs drives them in-process until then.

    /// Moves up to `max` messages from `dlq` back to the queue each one last died in (from its `x-death`), or
    /// to `to`. Moved messages keep their headers and start with a delivery count of 0. Messages whose
    /// destination does not exist stay in `dlq`.
    pub fn redrive(
        &self,
        dlq: &str,
        to: Option<&str>,
        max: Option<usize>,
        now: u64,
    ) -> Result<Redriven, AmqpError> {
        let source = self.queue_or_404(dlq)?;
        if let Some(t) = to {
            self.queue_or_404(t)?;
        }
        let taken = source.take(max.unwrap_or(usize::MAX), now);
        let mut moved: Vec<Entry> = Vec::new();
        let mut kept: Vec<Entry> = Vec::new();
        let mut dead = DeadLetters::new();
        for e in taken {
            let target = match to {
                Some(t) => Some(t.to_owned()),
                None => deaths(&e.msg.properties).into_iter().next().map(|(q, _)| q),
            };
            match target.and_then(|t| self.queue(&t)) {
                Some(q) if !Arc::ptr_eq(&q, &source) => {
                    let published = q.publish(e.msg.clone(), now, &mut dead).is_ok();
                    if published && self.trace.on() {
                        self.trace_redriven(dlq, q.name(), &e.msg, now);
                    }
                    self.dead_letter(&q, &mut dead, now);
                    if published {
                        moved.push(e);
                    } else {
                        kept.push(e);
                    }
                }
                _ => kept.push(e),
            }
        }
        source.forget(&moved);
        let r = Redriven {
            moved: moved.len(),
            kept: kept.len(),
        };
        source.untake(kept);
        Ok(r)
    }

    // ------------------------------------------------------------------ exchanges and bindings

    pub fn declare_exchange(&self, def: ExchangeDef) -> Result<Declared, AmqpError> {
        self.declare_exchange_durably(def).map(|(d, _)| d)
    }

    /// `declare_exchange`, and the store ticket of its record (0 when nothing was written). If the store
    /// refuses the record, the exchange is not declared.
    pub fn declare_exchange_durably(&self, def: ExchangeDef) -> Result<(Declared, u64), AmqpError> {
        let durable = def.durable;
        let name = def.name.clone();
        let record = durable.then(|| self.exchange_record(&def));
        let declared = self.router.write().declare_exchange(def)?;
        if declared == Declared::Created {
            self.apply_exchange_policy(&name);
        }
        let mut ticket = 0;
        if declared == Declared::Created {
            self.add_exchange_dedup(&name, false);
        }
        if let (Declared::Created, Some(r)) = (&declared, record) {
            match self.store.put_exchange(&r) {
                Ok(t) => ticket = t,
                Err(e) => {
                    let _ = self.router.write().delete_exchange_full(&name, false);
                    return Err(store_err(e));
                }
            }
        }
        Ok((declared, ticket))
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        self.delete_exchange_durably(name, if_unused).map(|_| ())
    }

    /// `delete_exchange`, and the store ticket the delete-ok waits for (0 when nothing durable went). If the
    /// store refuses to remove the record, the exchange and its bindings are put back.
    pub fn delete_exchange_durably(&self, name: &str, if_unused: bool) -> Result<u64, AmqpError> {
        let (deleted, bindings) = {
            let mut router = self.router.write();
            let bindings: Vec<Binding> = router
                .bindings()
                .filter(|b| {
                    &*b.source == name || matches!(&b.destination, Destination::Exchange(d) if &**d == name)
                })
                .collect();
            let deleted = router.delete_exchange_full(name, if_unused)?;
            (deleted, bindings)
        };
        let mut ticket = 0;
        if let Some(router::DeletedExchange { def, auto_deleted }) = deleted {
            self.dedup.remove(false, name);
            if def.kind == router::ExchangeKind::ConsistentHash && def.durable {
                crate::ring_order::forget(&self.store, &self.name, name);
            }
            if def.durable {
                if let Err(e) = self.store.delete_exchange(&self.name, name) {
                    let mut router = self.router.write();
                    router.restore_exchange(def);
                    for b in bindings {
                        let _ = router.bind(b);
                    }
                    return Err(store_err(e));
                }
            }
            self.forget_exchanges(&auto_deleted);
            for b in &bindings {
                if self.binding_is_durable(b) || def.durable {
                    log_store_err(
                        "delete binding",
                        self.store.delete_binding(&self.binding_record(b)),
                    );
                }
            }
            if def.durable {
                ticket = self.store.current_ticket();
            }
        }
        Ok(ticket)
    }

    pub fn bind(&self, binding: Binding) -> Result<(), AmqpError> {
        self.bind_durably(binding).map(|_| ())
    }

    /// `bind`, and the store ticket of the binding's record (0 when nothing was written). If the store
    /// refuses the record, the binding is not made.
    pub fn bind_durably(&self, binding: Binding) -> Result<u64, AmqpError> {
        let record = self
            .binding_is_durable(&binding)
            .then(|| self.binding_record(&binding));
        let undo = record.is_some().then(|| binding.clone());
        let source = binding.source.clone();
        let created = self.router.write().bind(binding)?;
        if let (true, Some(r)) = (created, record) {
            return match self
                .store
                .put_binding(&r)
                .and_then(|t| Ok(t.max(self.save_ring_order(&source)?)))
            {
                Ok(t) => Ok(t),
                Err(e) => {
                    if let Some(b) = undo {
                        let _ = self.router.write().unbind(&b);
                    }
                    Err(store_err(e))
                }
            };
        }
        Ok(0)
    }

    pub fn unbind(&self, binding: &Binding) -> Result<(), AmqpError> {
        self.unbind_durably(binding).map(|_| ())
    }

    /// `unbind`, and the store ticket of the record's removal (0 when nothing was written). If the store
    /// refuses the removal, the binding is put back.
    pub fn unbind_durably(&self, binding: &Binding) -> Result<u64, AmqpError> {
        let durable = self.binding_is_durable(binding);
        let (removed, auto_deleted) = match self.router.write().unbind(binding) {
            Ok(r) => r,
            // RabbitMQ 4.x answers unbind-ok when an end of the binding does not exist
            // (rabbit_db_binding:delete_v2/2: "No absent queues, always present on disk" -> ok).
            Err(e) if e.kind == router::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut ticket = 0;
        if removed && durable {
            match self
                .store
                .delete_binding(&self.binding_record(binding))
                .and_then(|t| Ok(t.max(self.save_ring_order(&binding.source)?)))
            {
                Ok(t) => ticket = t,
                Err(e) if auto_deleted.is_empty() => {
                    let _ = self.router.write().bind(binding.clone());
                    return Err(store_err(e));
                }
                Err(e) => return Err(store_err(e)),
            }
        }
        self.forget_exchanges(&auto_deleted);
        if !auto_deleted.is_empty() && ticket > 0 {
            ticket = self.store.current_ticket();
        }
        Ok(ticket)
    }

    /// Stores the ring order of a durable consistent-hash exchange after a binding change (`ring_order.rs`).
    fn save_ring_order(&self, exchange: &str) -> Result<u64, storage::StoreError> {
        crate::ring_order::save(&self.store, &self.router.read(), &self.name, exchange)
    }

    /// Gives a new (or recovered) exchange its deduplication window if it has one.
    fn add_exchange_dedup(&self, name: &str, recovering: bool) {
        let (config, durable) = {
            let router = self.router.read();
            let Some(def) = router.exchange(name) else { return };
            let args = crate::args::from_router_args(&def.arguments);
            let plugin_type = def.kind == router::ExchangeKind::Deduplication;
            (
                crate::dedup::config(&args, plugin_type).ok().flatten(),
                def.durable,
            )
        };
        if let Some(c) = config {
            let store = durable.then_some(&self.store);
            self.dedup
                .add(false, &self.name, &name.into(), c, store, recovering, now_ms());
        }
    }

    /// A binding is durable when both its ends are (as RabbitMQ).
    fn binding_is_durable(&self, b: &Binding) -> bool {
        let router = self.router.read();
        let source = router
            .exchange(&b.source)
            .is_some_and(|x| x.durable && !x.name.is_empty());
        let dest = match &b.destination {
            Destination::Queue(q) => self.queue(q).is_some_and(|q| q.spec.durable),
            Destination::Exchange(x) => router.exchange(x).is_some_and(|x| x.durable),
        };
        source && dest
    }

    /// Removes auto-deleted exchanges and every stored binding from or to them.
    fn forget_exchanges(&self, names: &[router::Name]) {
        if names.is_empty() {
            return;
        }
        for n in names {
            self.dedup.remove(false, n);
            log_store_err("delete exchange", self.store.delete_exchange(&self.name, n));
        }
        match self.store.bindings() {
            Ok(bindings) => {
                for b in bindings.iter().filter(|b| *b.vhost == *self.name) {
                    let touches = names
                        .iter()
                        .any(|n| **n == *b.source || (!b.destination_is_queue && **n == *b.destination));
                    if touches {
                        log_store_err("delete binding", self.store.delete_binding(b));
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "store read of bindings failed"),
        }
    }

    fn exchange_record(&self, def: &ExchangeDef) -> ExchangeRecord {
        ExchangeRecord {
            vhost: self.name.to_string(),
            name: def.name.to_string(),
            kind: def.kind.as_str().to_string(),
            durable: def.durable,
            auto_delete: def.auto_delete,
            internal: def.internal,
            arguments: encode_table(&crate::args::from_router_args(&def.arguments)),
        }
    }

    fn binding_record(&self, b: &Binding) -> BindingRecord {
        let (destination, destination_is_queue) = match &b.destination {
            Destination::Queue(q) => (q.to_string(), true),
            Destination::Exchange(x) => (x.to_string(), false),
        };
        BindingRecord {
            vhost: self.name.to_string(),
            source: b.source.to_string(),
            destination,
            destination_is_queue,
            routing_key: b.routing_key.to_string(),
            arguments: encode_table(&crate::args::from_router_args(&b.arguments)),
        }
    }

    // ------------------------------------------------------------------ recovery

    /// Rebuilds durable exchanges, queues and bindings of this vhost from the store.
    pub fn recover(
        &self,
        exchanges: &[ExchangeRecord],
        queues: &[QueueRecord],
        bindings: &[BindingRecord],
        clean: bool,
    ) -> Result<(), storage::StoreError> {
        let mut router = self.router.write();
        for x in exchanges.iter().filter(|x| *x.vhost == *self.name) {
            let Ok(kind) = router::ExchangeKind::parse(&x.kind) else {
                tracing::warn!(
                    exchange = x.name,
                    kind = x.kind,
                    "skipping stored exchange of unknown type"
                );
                continue;
            };
            router.restore_exchange(ExchangeDef {
                name: x.name.as_str().into(),
                kind,
                durable: true,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: crate::args::to_router_args(&decode_table(&x.arguments)),
            });
        }
        drop(router);
        for x in exchanges.iter().filter(|x| *x.vhost == *self.name) {
            self.add_exchange_dedup(&x.name, true);
        }
        let mut router = self.router.write();
        let mut map = self.queues.write();
        for r in queues.iter().filter(|q| *q.vhost == *self.name) {
            if r.exclusive {
                // An exclusive queue belonged to a connection that is gone.
                self.store.delete_queue(&r.vhost, &r.name, r.id)?;
                continue;
            }
            let name: Arc<str> = r.name.as_str().into();
            // The store knows its queues' live message counts from its segment index (no scan), after a
            // clean stop and after a crash alike.
            let recovered = match self.store.queue_bounds(r.id)? {
                Some((first_seq, last_seq)) => {
                    let count = self.store.count_messages(r.id)?;
                    tracing::debug!(
                        queue = r.name,
                        first_seq,
                        last_seq,
                        count,
                        clean,
                        "recovered queue"
                    );
                    Some(Recovered {
                        first_seq,
                        last_seq,
                        count,
                    })
                }
                None => None,
            };
            let spec = QueueSpec {
                name: name.clone(),
                durable: true,
                exclusive_owner: None,
                auto_delete: r.auto_delete,
                arguments: decode_table(&r.arguments),
            };
            if let Ok(Some(c)) = crate::dedup::config(&spec.arguments, false) {
                self.dedup
                    .add(true, &self.name, &name, c, Some(&self.store), true, now_ms());
            }
            let mut qs = QueueStore::new(self.store.clone(), r.id, self.name.clone(), name.clone());
            qs.load_delivered_mark()?;
            if let (false, Some(r)) = (clean, &recovered) {
                qs.raise_delivered_mark_after_crash(r.last_seq);
            }
            let q = Queue::with_store(spec, qs, recovered, now_ms());
            map.insert(name.clone(), Arc::new(q));
            router.declare_queue(name);
        }
        for b in bindings.iter().filter(|b| *b.vhost == *self.name) {
            let destination = if b.destination_is_queue {
                Destination::Queue(b.destination.as_str().into())
            } else {
                Destination::Exchange(b.destination.as_str().into())
            };
            let binding = Binding {
                source: b.source.as_str().into(),
                destination,
                routing_key: b.routing_key.as_str().into(),
                arguments: crate::args::to_router_args(&decode_table(&b.arguments)),
            };
            if let Err(e) = router.bind(binding) {
                tracing::warn!(error = %e, source = b.source, "skipping stored binding");
            }
        }
        crate::ring_order::restore(&self.store, &mut router, &self.name);
        Ok(())
    }
}
