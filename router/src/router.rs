//! The per-vhost router.

use std::cell::RefCell;

use ahash::{AHashMap, AHashSet};

use crate::args::{ArgValue, Args};
use crate::consistent_hash::{self, HashOn, HashRing, MsgProps};
use crate::headers::{self, XMatch};
use crate::index::{DestId, DestSet, TopicTrie, TrieScratch};
use crate::{
    Binding, Declared, Destination, ErrorKind, ExchangeDef, ExchangeKind, Name, Routed, RouterError,
};

/// Binding identity within one source exchange. `args` is key-sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BKey {
    dest: DestId,
    key: Name,
    args: Args,
}

/// Reverse-index entry kept on a destination: (source id, key, sorted args).
type InKey = (u32, Name, Args);

#[derive(Debug)]
struct HBinding {
    dest: DestId,
    key: Name,
    /// Key-sorted.
    args: Args,
    mode: XMatch,
}

#[derive(Debug)]
enum Index {
    /// The default exchange: routes by queue name, takes no bindings.
    Default,
    Direct(AHashMap<Name, DestSet>),
    Fanout(DestSet),
    Topic(TopicTrie),
    Headers(Vec<HBinding>),
    ConsistentHash(HashOn, HashRing),
}

/// The `x-delayed-type` of an `x-delayed-message` exchange: how it routes once a message is due. As the
/// plugin (rabbit_exchange_type_delayed_message.erl `validate/1`), it must name an exchange type.
pub fn delayed_type(args: &Args) -> Result<ExchangeKind, RouterError> {
    let invalid = || {
        RouterError::new(
            ErrorKind::PreconditionFailed,
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )
    };
    let t = args
        .get("x-delayed-type")
        .and_then(ArgValue::as_str)
        .ok_or_else(invalid)?;
    match ExchangeKind::parse(t) {
        Ok(k) if k != ExchangeKind::Delayed => Ok(k),
        _ => Err(invalid()),
    }
}

impl Index {
    fn new(kind: ExchangeKind) -> Index {
        match kind {
            ExchangeKind::Direct => Index::Direct(AHashMap::new()),
            ExchangeKind::Fanout | ExchangeKind::Deduplication => Index::Fanout(DestSet::default()),
            ExchangeKind::Topic => Index::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Index::Headers(Vec::new()),
            ExchangeKind::ConsistentHash | ExchangeKind::Delayed => {
                Index::ConsistentHash(HashOn::RoutingKey, HashRing::default())
            }
        }
    }

    /// The index of an exchange as declared; checks the arguments its type needs (with the texts of the
    /// plugins that define those types).
    fn for_def(def: &ExchangeDef) -> Result<Index, RouterError> {
        Ok(match def.kind {
            ExchangeKind::ConsistentHash => {
                Index::ConsistentHash(consistent_hash::hash_on(&def.arguments)?, HashRing::default())
            }
            ExchangeKind::Delayed => match delayed_type(&def.arguments)? {
                ExchangeKind::ConsistentHash => {
                    Index::ConsistentHash(consistent_hash::hash_on(&def.arguments)?, HashRing::default())
                }
                inner => Index::new(inner),
            },
            kind => Index::new(kind),
        })
    }
}

#[derive(Debug)]
struct ExEntry {
    def: ExchangeDef,
    alternate: Option<Name>,
    index: Index,
    /// Bindings with this exchange as source; value is the position in the
    /// headers vector (unused for other kinds).
    bindings: AHashMap<BKey, u32>,
    /// Bindings with this exchange as destination.
    incoming: AHashSet<InKey>,
}

impl ExEntry {
    fn new(def: ExchangeDef, index: Index) -> ExEntry {
        let alternate = def.alternate_exchange().map(Name::from);
        ExEntry {
            def,
            alternate,
            index,
            bindings: AHashMap::new(),
            incoming: AHashSet::new(),
        }
    }
}

#[derive(Debug)]
struct QueueEntry {
    name: Name,
    incoming: AHashSet<InKey>,
}

/// Reusable scratch space for [`Router::route_with`]. [`Router::route`] uses
/// a thread-local one, so callers normally need not care.
#[derive(Debug, Default)]
pub struct RouteScratch {
    trie: TrieScratch,
    hdr_order: Vec<u32>,
    epoch: u32,
    qmark: Vec<u32>,
    xmark: Vec<u32>,
    work: Vec<u32>,
}

impl RouteScratch {
    pub fn new() -> RouteScratch {
        RouteScratch::default()
    }

    /// How many (trie node, word position) states the last topic-exchange
    /// walk made with this scratch visited (a diagnostic: it is at most the
    /// trie's node count × (words in the key + 1)).
    pub fn topic_states_visited(&self) -> usize {
        self.trie.visited_states()
    }

    fn begin(&mut self, nx: usize, nq: usize) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.qmark.iter_mut().for_each(|m| *m = 0);
            self.xmark.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
        if self.qmark.len() < nq {
            self.qmark.resize(nq, 0);
        }
        if self.xmark.len() < nx {
            self.xmark.resize(nx, 0);
        }
        self.work.clear();
        self.epoch
    }
}

thread_local! {
    static SCRATCH: RefCell<RouteScratch> = RefCell::new(RouteScratch::default());
}

/// An exchange removed by [`Router::delete_exchange_full`], with the
/// auto-delete exchanges that went with it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedExchange {
    pub def: ExchangeDef,
    pub auto_deleted: Vec<Name>,
}

/// The exchanges, queues and bindings of one vhost.
#[derive(Debug)]
pub struct Router {
    vhost: String,
    exchanges: Vec<Option<ExEntry>>,
    ex_free: Vec<u32>,
    ex_ids: AHashMap<Name, u32>,
    queues: Vec<Option<QueueEntry>>,
    q_free: Vec<u32>,
    q_ids: AHashMap<Name, u32>,
    default_id: u32,
    /// Consistent-hash exchanges that hash on a property (routing decodes properties only if any).
    hash_property_exchanges: usize,
}

/// RabbitMQ's firehose exchange (`rabbit_trace.erl`'s `?XNAME`).
pub const TRACE_EXCHANGE: &str = "amq.rabbitmq.trace";

const PREDECLARED: [(&str, ExchangeKind); 5] = [
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

fn default_exchange_refused() -> RouterError {
    RouterError::new(
        ErrorKind::AccessRefused,
        "operation not permitted on the default exchange",
    )
}

fn q_field(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// RabbitMQ's `rabbit_misc:val/1` for argument values.
fn erl_val(v: Option<&ArgValue>) -> String {
    match v {
        None => "none".to_string(),
        Some(ArgValue::Str(s)) => format!("the value '{s}' of type 'longstr'"),
        Some(ArgValue::Bytes(b)) => format!("the value '{}' of type 'binary'", String::from_utf8_lossy(b)),
        Some(v) => format!("the value '{}' of type '{}'", v.erl_format(), v.type_name()),
    }
}

fn raw_val(v: &ArgValue) -> String {
    match v {
        ArgValue::Str(s) => format!("'{s}'"),
        ArgValue::Bytes(b) => format!("'{}'", String::from_utf8_lossy(b)),
        v => format!("'{}'", v.erl_format()),
    }
}

impl Router {
    /// A router for `vhost` with the default exchange and the predeclared
    /// `amq.*` exchanges.
    pub fn new(vhost: &str) -> Router {
        let mut r = Router {
            vhost: vhost.to_string(),
            exchanges: Vec::new(),
            ex_free: Vec::new(),
            ex_ids: AHashMap::new(),
            queues: Vec::new(),
            q_free: Vec::new(),
            q_ids: AHashMap::new(),
            default_id: 0,
            hash_property_exchanges: 0,
        };
        r.default_id = r.insert_exchange(ExEntry::new(
            ExchangeDef::new("", ExchangeKind::Direct),
            Index::Default,
        ));
        for (name, kind) in PREDECLARED {
            r.insert_exchange(ExEntry::new(ExchangeDef::new(name, kind), Index::new(kind)));
        }
        // RabbitMQ's firehose exchange exists in every vhost: a durable internal topic exchange
        // (rabbit_vhost.erl declares it with the other `amq.*` exchanges).
        let mut trace = ExchangeDef::new(TRACE_EXCHANGE, ExchangeKind::Topic);
        trace.internal = true;
        r.insert_exchange(ExEntry::new(trace, Index::new(ExchangeKind::Topic)));
        r
    }

    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    // ----- error texts -------------------------------------------------

    fn rs(&self, kind: &str, name: &str) -> String {
        format!("{kind} '{name}' in vhost '{}'", self.vhost)
    }

    fn not_found(&self, kind: &str, name: &str) -> RouterError {
        RouterError::new(ErrorKind::NotFound, format!("no {}", self.rs(kind, name)))
    }

    fn inequivalent(&self, x: &str, field: &str, received: &str, current: &str) -> RouterError {
        RouterError::new(
            ErrorKind::PreconditionFailed,
            format!(
                "inequivalent arg '{field}' for {}: received {received} but current is {current}",
                self.rs("exchange", x)
            ),
        )
    }

    // ----- slabs -------------------------------------------------------

    fn insert_exchange(&mut self, e: ExEntry) -> u32 {
        if matches!(e.index, Index::ConsistentHash(HashOn::Property(_), _)) {
            self.hash_property_exchanges += 1;
        }
        let name = e.def.name.clone();
        let id = match self.ex_free.pop() {
            Some(id) => {
                self.exchanges[id as usize] = Some(e);
                id
            }
            None => {
                self.exchanges.push(Some(e));
                (self.exchanges.len() - 1) as u32
            }
        };
        self.ex_ids.insert(name, id);
        id
    }

    #[inline]
    fn ex(&self, id: u32) -> &ExEntry {
        self.exchanges[id as usize].as_ref().expect("live exchange id")
    }

    #[inline]
    fn ex_mut(&mut self, id: u32) -> &mut ExEntry {
        self.exchanges[id as usize].as_mut().expect("live exchange id")
    }

    #[inline]
    fn queue(&self, id: u32) -> &QueueEntry {
        self.queues[id as usize].as_ref().expect("live queue id")
    }

    fn dest_name(&self, d: DestId) -> Destination {
        match d {
            DestId::Queue(q) => Destination::Queue(self.queue(q).name.clone()),
            DestId::Exchange(x) => Destination::Exchange(self.ex(x).def.name.clone()),
        }
    }

    fn incoming_mut(&mut self, d: DestId) -> &mut AHashSet<InKey> {
        match d {
            DestId::Queue(q) => &mut self.queues[q as usize].as_mut().expect("live queue").incoming,
            DestId::Exchange(x) => &mut self.ex_mut(x).incoming,
        }
    }

    // ----- exchanges ---------------------------------------------------

    /// exchange.declare (passive = false). Creates the exchange, or checks
    /// that the existing one is equivalent (type, durable, auto_delete,
    /// internal, and — as RabbitMQ — the `alternate-exchange` argument only).
    pub fn declare_exchange(&mut self, def: ExchangeDef) -> Result<Declared, RouterError> {
        if def.name.is_empty() {
            return Err(default_exchange_refused());
        }
        if let Some(&id) = self.ex_ids.get(&*def.name) {
            self.assert_equivalence(&self.ex(id).def, &def)?;
            return Ok(Declared::Existed);
        }
        if def.name.starts_with("amq.") {
            return Err(RouterError::new(
                ErrorKind::AccessRefused,
                format!("exchange name '{}' contains reserved prefix 'amq.*'", def.name),
            ));
        }
        let index = Index::for_def(&def)?;
        self.insert_exchange(ExEntry::new(def, index));
        Ok(Declared::Created)
    }

    fn assert_equivalence(&self, cur: &ExchangeDef, req: &ExchangeDef) -> Result<(), RouterError> {
        let x = &cur.name;
        if cur.kind != req.kind {
            return Err(self.inequivalent(x, "type", &format!("'{}'", req.kind), &format!("'{}'", cur.kind)));
        }
        for (field, c, r) in [
            ("durable", cur.durable, req.durable),
            ("auto_delete", cur.auto_delete, req.auto_delete),
            ("internal", cur.internal, req.internal),
        ] {
            if c != r {
                return Err(self.inequivalent(
                    x,
                    field,
                    &format!("'{}'", q_field(r)),
                    &format!("'{}'", q_field(c)),
                ));
            }
        }
        // rabbit_misc:assert_args_equivalence(.., [<<"alternate-exchange">>])
        const AE: &str = "alternate-exchange";
        let (c, r) = (cur.arguments.get(AE), req.arguments.get(AE));
        match (c, r) {
            (None, None) => Ok(()),
            (Some(c), Some(r)) => {
                // {Same, Same}, or the same type class (all integer widths
                // are `int`, float/double are `float`) and equal values.
                let same_class =
                    c.type_class() == r.type_class() || (c.as_str().is_some() && r.as_str().is_some());
                if c == r || (same_class && c.matches_header(r)) {
                    Ok(())
                } else {
                    Err(self.inequivalent(x, AE, &raw_val(r), &raw_val(c)))
                }
            }
            (c, r) => Err(self.inequivalent(x, AE, &erl_val(r), &erl_val(c))),
        }
    }

    /// exchange.declare with passive = true.
    pub fn declare_exchange_passive(&self, name: &str) -> Result<&ExchangeDef, RouterError> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        self.exchange(name)
            .ok_or_else(|| self.not_found("exchange", name))
    }

    /// A policy's `alternate-exchange` for exchange `name` (None: no policy gives one). As RabbitMQ
    /// (`rabbit_exchange:alternate_exchange`... the argument wins): it applies only when the exchange has no
    /// `alternate-exchange` argument of its own. The declared definition is unchanged. False if there is
    /// no such exchange.
    pub fn set_policy_alternate(&mut self, name: &str, ae: Option<&str>) -> bool {
        let Some(&id) = self.ex_ids.get(name) else {
            return false;
        };
        let e = self.ex_mut(id);
        e.alternate = e.def.alternate_exchange().map(Name::from).or(ae.map(Name::from));
        true
    }

    /// Recreates an exchange at recovery time, without the reserved-name
    /// checks. An existing exchange of the same name is replaced (its
    /// bindings are kept if the type is unchanged).
    pub fn restore_exchange(&mut self, def: ExchangeDef) {
        if def.name.is_empty() {
            return;
        }
        if let Some(&id) = self.ex_ids.get(&*def.name) {
            if self.ex(id).def.kind == def.kind {
                let e = self.ex_mut(id);
                e.alternate = def.alternate_exchange().map(Name::from);
                e.def = def;
                return;
            }
            let mut ignored = Vec::new();
            self.remove_exchange(id, &mut ignored);
        }
        // A stored definition that no longer validates routes as its type's plain index.
        let index = Index::for_def(&def).unwrap_or_else(|_| Index::new(def.kind));
        self.insert_exchange(ExEntry::new(def, index));
    }

    /// exchange.delete. Deleting a missing exchange is `Ok(None)`.
    /// Auto-delete exchanges removed as a consequence are not reported here;
    /// use [`Router::delete_exchange_full`] to learn them.
    pub fn delete_exchange(
        &mut self,
        name: &str,
        if_unused: bool,
    ) -> Result<Option<ExchangeDef>, RouterError> {
        Ok(self.delete_exchange_full(name, if_unused)?.map(|d| d.def))
    }

    /// exchange.delete, also reporting the auto-delete exchanges that lost
    /// their last binding because bindings *to* this exchange were removed.
    pub fn delete_exchange_full(
        &mut self,
        name: &str,
        if_unused: bool,
    ) -> Result<Option<DeletedExchange>, RouterError> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(RouterError::new(
                ErrorKind::AccessRefused,
                format!("deletion of system {} not allowed", self.rs("exchange", name)),
            ));
        }
        let Some(&id) = self.ex_ids.get(name) else {
            return Ok(None);
        };
        if if_unused && !self.ex(id).bindings.is_empty() {
            return Err(RouterError::new(
                ErrorKind::PreconditionFailed,
                format!("{} in use", self.rs("exchange", name)),
            ));
        }
        let mut auto_deleted = Vec::new();
        let def = self.remove_exchange(id, &mut auto_deleted);
        Ok(Some(DeletedExchange { def, auto_deleted }))
    }

    pub fn exchange(&self, name: &str) -> Option<&ExchangeDef> {
        self.ex_ids.get(name).map(|&id| &self.ex(id).def)
    }

    /// All exchanges, the default one (named `""`) included.
    pub fn exchanges(&self) -> impl Iterator<Item = &ExchangeDef> {
        self.exchanges.iter().flatten().map(|e| &e.def)
    }

    /// Removes exchange `id` with all its bindings (as source and as
    /// destination), then auto-deletes sources left without bindings.
    fn remove_exchange(&mut self, id: u32, deleted: &mut Vec<Name>) -> ExchangeDef {
        let entry = self.exchanges[id as usize].take().expect("live exchange");
        self.ex_ids.remove(&*entry.def.name);
        if matches!(entry.index, Index::ConsistentHash(HashOn::Property(_), _)) {
            self.hash_property_exchanges -= 1;
        }
        for (bk, _) in entry.bindings {
            if bk.dest == DestId::Exchange(id) {
                continue;
            }
            let ik = (id, bk.key, bk.args);
            self.incoming_mut(bk.dest).remove(&ik);
        }
        let mut sources = Vec::new();
        for (src, key, args) in entry.incoming {
            if src == id {
                continue;
            }
            let bk = BKey {
                dest: DestId::Exchange(id),
                key,
                args,
            };
            self.detach(src, &bk);
            sources.push(src);
        }
        // Free the slot only now: nothing refers to it any more.
        self.ex_free.push(id);
        sources.sort_unstable();
        sources.dedup();
        for src in sources {
            self.maybe_auto_delete(src, deleted);
        }
        entry.def
    }

    fn maybe_auto_delete(&mut self, id: u32, deleted: &mut Vec<Name>) {
        let Some(e) = self.exchanges[id as usize].as_ref() else {
            return;
        };
        if e.def.auto_delete && e.bindings.is_empty() {
            deleted.push(e.def.name.clone());
            self.remove_exchange(id, deleted);
        }
    }

    // ----- queues ------------------------------------------------------

    /// Registers a queue (idempotent).
    pub fn declare_queue(&mut self, name: Name) {
        if self.q_ids.contains_key(&*name) {
            return;
        }
        let e = QueueEntry {
            name: name.clone(),
            incoming: AHashSet::new(),
        };
        let id = match self.q_free.pop() {
            Some(id) => {
                self.queues[id as usize] = Some(e);
                id
            }
            None => {
                self.queues.push(Some(e));
                (self.queues.len() - 1) as u32
            }
        };
        self.q_ids.insert(name, id);
    }

    /// Forgets a queue and its bindings; returns the auto-delete exchanges
    /// that lost their last binding.
    pub fn delete_queue(&mut self, name: &str) -> Vec<Name> {
        let mut deleted = Vec::new();
        let Some(id) = self.q_ids.remove(name) else {
            return deleted;
        };
        let entry = self.queues[id as usize].take().expect("live queue");
        let mut sources = Vec::with_capacity(entry.incoming.len());
        for (src, key, args) in entry.incoming {
            let bk = BKey {
                dest: DestId::Queue(id),
                key,
                args,
            };
            self.detach(src, &bk);
            sources.push(src);
        }
        self.q_free.push(id);
        sources.sort_unstable();
        sources.dedup();
        for src in sources {
            self.maybe_auto_delete(src, &mut deleted);
        }
        deleted
    }

    pub fn has_queue(&self, name: &str) -> bool {
        self.q_ids.contains_key(name)
    }

    pub fn queue_count(&self) -> usize {
        self.q_ids.len()
    }

    // ----- bindings ----------------------------------------------------

    /// Resolves a binding's ends with RabbitMQ's checks and texts.
    fn resolve(&self, b: &Binding) -> Result<(u32, DestId), RouterError> {
        if matches!(&b.destination, Destination::Exchange(n) if n.is_empty()) || b.source.is_empty() {
            return Err(default_exchange_refused());
        }
        let src = self.ex_ids.get(&*b.source).copied();
        let dst = match &b.destination {
            Destination::Queue(q) => self.q_ids.get(&**q).map(|&i| DestId::Queue(i)),
            Destination::Exchange(x) => self.ex_ids.get(&**x).map(|&i| DestId::Exchange(i)),
        };
        match (src, dst) {
            (Some(s), Some(d)) => Ok((s, d)),
            (None, _) => Err(self.not_found("exchange", &b.source)),
            (Some(_), None) => Err(self.not_found(b.destination.kind_str(), b.destination.name())),
        }
    }

    /// queue.bind / exchange.bind. `Ok(true)` if the binding is new.
    pub fn bind(&mut self, binding: Binding) -> Result<bool, RouterError> {
        let (src, dest) = self.resolve(&binding)?;
        let kind = self.ex(src).def.kind;
        if kind == ExchangeKind::Headers {
            headers::validate_binding(&binding.arguments)?;
        }
        let weight = match &self.ex(src).index {
            Index::ConsistentHash(..) => consistent_hash::parse_weight(&binding.routing_key)?,
            Index::Headers(_) if kind != ExchangeKind::Headers => {
                headers::validate_binding(&binding.arguments)?;
                0
            }
            _ => 0,
        };
        let args = binding.arguments.sorted();
        let bk = BKey {
            dest,
            key: binding.routing_key,
            args,
        };
        let e = self.ex_mut(src);
        if e.bindings.contains_key(&bk) {
            return Ok(false);
        }
        let pos = match &mut e.index {
            Index::Default => unreachable!("default exchange takes no bindings"),
            Index::Direct(m) => {
                m.entry(bk.key.clone()).or_default().add(dest);
                0
            }
            Index::Fanout(s) => {
                s.add(dest);
                0
            }
            Index::Topic(t) => {
                t.add(&bk.key, dest);
                0
            }
            Index::Headers(v) => {
                v.push(HBinding {
                    dest,
                    key: bk.key.clone(),
                    args: bk.args.clone(),
                    mode: XMatch::of(&bk.args),
                });
                (v.len() - 1) as u32
            }
            Index::ConsistentHash(_, ring) => {
                ring.add(dest, weight);
                0
            }
        };
        let ik = (src, bk.key.clone(), bk.args.clone());
        e.bindings.insert(bk, pos);
        self.incoming_mut(dest).insert(ik);
        Ok(true)
    }

    /// queue.unbind / exchange.unbind. Unbinding a missing binding is a
    /// no-op; missing source/destination is 404 as in RabbitMQ. Returns
    /// whether a binding was removed and the auto-deleted exchanges.
    pub fn unbind(&mut self, binding: &Binding) -> Result<(bool, Vec<Name>), RouterError> {
        let (src, dest) = self.resolve(binding)?;
        let bk = BKey {
            dest,
            key: binding.routing_key.clone(),
            args: binding.arguments.sorted(),
        };
        if !self.detach(src, &bk) {
            return Ok((false, Vec::new()));
        }
        let ik = (src, bk.key, bk.args);
        self.incoming_mut(dest).remove(&ik);
        let mut deleted = Vec::new();
        self.maybe_auto_delete(src, &mut deleted);
        Ok((true, deleted))
    }

    /// Removes a binding from its source's identity map and index (not from
    /// the destination's reverse index).
    fn detach(&mut self, src: u32, bk: &BKey) -> bool {
        let e = self.ex_mut(src);
        let Some(pos) = e.bindings.remove(bk) else {
            return false;
        };
        match &mut e.index {
            Index::Default => {}
            Index::Direct(m) => {
                if let Some(s) = m.get_mut(&*bk.key) {
                    s.remove(bk.dest);
                    if s.is_empty() {
                        m.remove(&*bk.key);
                    }
                }
            }
            Index::Fanout(s) => {
                s.remove(bk.dest);
            }
            Index::Topic(t) => {
                t.remove(&bk.key, bk.dest);
            }
            Index::Headers(v) => {
                let pos = pos as usize;
                v.swap_remove(pos);
                if pos < v.len() {
                    let moved = &v[pos];
                    let mk = BKey {
                        dest: moved.dest,
                        key: moved.key.clone(),
                        args: moved.args.clone(),
                    };
                    if let Some(p) = e.bindings.get_mut(&mk) {
                        *p = pos as u32;
                    }
                }
            }
            // The destination leaves the ring with its last binding. (The plugin takes it off with any of
            // its bindings, leaving a still-bound queue without traffic; a RabbitMQ user would not expect
            // that, so Mailroom keeps it while a binding remains.)
            Index::ConsistentHash(_, ring) => {
                if !e.bindings.keys().any(|k| k.dest == bk.dest) {
                    ring.remove(bk.dest);
                }
            }
        }
        true
    }

    fn make_binding(&self, src: u32, bk_dest: DestId, key: &Name, args: &Args) -> Binding {
        Binding {
            source: self.ex(src).def.name.clone(),
            destination: self.dest_name(bk_dest),
            routing_key: key.clone(),
            arguments: args.clone(),
        }
    }

    /// Every explicit binding (the default exchange's implicit ones are not
    /// listed). Arguments come back key-sorted.
    pub fn bindings(&self) -> impl Iterator<Item = Binding> + '_ {
        self.exchanges
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i as u32, e)))
            .flat_map(move |(id, e)| {
                e.bindings
                    .keys()
                    .map(move |bk| self.make_binding(id, bk.dest, &bk.key, &bk.args))
            })
    }

    pub fn binding_count(&self) -> usize {
        self.exchanges.iter().flatten().map(|e| e.bindings.len()).sum()
    }

    /// Bindings whose destination is `queue`.
    pub fn bindings_for_queue(&self, queue: &str) -> Vec<Binding> {
        let Some(&id) = self.q_ids.get(queue) else {
            return Vec::new();
        };
        self.queue(id)
            .incoming
            .iter()
            .map(|(src, key, args)| self.make_binding(*src, DestId::Queue(id), key, args))
            .collect()
    }

    /// Bindings whose source is `exchange`.
    pub fn bindings_for_exchange(&self, exchange: &str) -> Vec<Binding> {
        let Some(&id) = self.ex_ids.get(exchange) else {
            return Vec::new();
        };
        self.ex(id)
            .bindings
            .keys()
            .map(|bk| self.make_binding(id, bk.dest, &bk.key, &bk.args))
            .collect()
    }

    // ----- routing -----------------------------------------------------

    /// Routes a publish: clears `out` and fills it with the distinct queues
    /// the message goes to (following exchange-to-exchange bindings and
    /// alternate exchanges, each exchange visited at most once).
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&Args>,
        out: &mut Vec<Name>,
    ) -> Result<Routed, RouterError> {
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => self.route_with(exchange, routing_key, headers, out, &mut s),
            Err(_) => self.route_with(exchange, routing_key, headers, out, &mut RouteScratch::default()),
        })
    }

    /// [`Router::route`] with more routing keys: the message goes wherever `routing_key` or any of
    /// `extra_keys` takes it, each queue once (RabbitMQ's sender-selected distribution: the keys of the `CC`
    /// and `BCC` headers). An exchange counts as unroutable, for its alternate exchange, only if no key
    /// matched there; fanout and headers exchanges ignore keys.
    pub fn route_multi<K: AsRef<str>>(
        &self,
        exchange: &str,
        routing_key: &str,
        extra_keys: &[K],
        headers: Option<&Args>,
        out: &mut Vec<Name>,
    ) -> Result<Routed, RouterError> {
        self.route_msg(
            exchange,
            routing_key,
            extra_keys,
            headers,
            &MsgProps::default(),
            out,
        )
    }

    /// [`Router::route_multi`] with the message properties that `x-consistent-hash` exchanges with a
    /// `hash-property` hash on.
    pub fn route_msg<K: AsRef<str>>(
        &self,
        exchange: &str,
        routing_key: &str,
        extra_keys: &[K],
        headers: Option<&Args>,
        props: &MsgProps,
        out: &mut Vec<Name>,
    ) -> Result<Routed, RouterError> {
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => self.route_keys(
                false,
                exchange,
                routing_key,
                extra_keys,
                Headers::Ready(headers),
                props,
                out,
                &mut s,
            ),
            Err(_) => self.route_keys(
                false,
                exchange,
                routing_key,
                extra_keys,
                Headers::Ready(headers),
                props,
                out,
                &mut RouteScratch::default(),
            ),
        })
    }

    /// [`Router::route_msg`] with headers decoded only if the walk needs them: `headers` is called at most
    /// once, and only when a headers exchange with bindings or a consistent-hash exchange hashing on a
    /// header is reached (so a message with headers routed elsewhere is never decoded).
    pub fn route_msg_lazy<K: AsRef<str>>(
        &self,
        exchange: &str,
        routing_key: &str,
        extra_keys: &[K],
        headers: &dyn Fn() -> Option<Args>,
        props: &MsgProps,
        out: &mut Vec<Name>,
    ) -> Result<Routed, RouterError> {
        let headers = Headers::Lazy(headers);
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => self.route_keys(
                false,
                exchange,
                routing_key,
                extra_keys,
                headers,
                props,
                out,
                &mut s,
            ),
            Err(_) => self.route_keys(
                false,
                exchange,
                routing_key,
                extra_keys,
                headers,
                props,
                out,
                &mut RouteScratch::default(),
            ),
        })
    }

    /// Whether routing may read message properties (the vhost has a consistent-hash exchange with
    /// `hash-property`): callers decode them only then.
    pub fn needs_properties(&self) -> bool {
        self.hash_property_exchanges > 0
    }

    /// The destinations of a consistent-hash exchange's ring, in ring order (to store beside the
    /// bindings: restoring the order keeps every key on its queue across a restart).
    pub fn ring_order(&self, exchange: &str) -> Option<Vec<Destination>> {
        let &id = self.ex_ids.get(exchange)?;
        match &self.ex(id).index {
            Index::ConsistentHash(_, ring) => Some(ring.members().map(|d| self.dest_name(d)).collect()),
            _ => None,
        }
    }

    /// Puts a consistent-hash exchange's ring back in a stored order (see [`Router::ring_order`]).
    pub fn restore_ring_order(&mut self, exchange: &str, order: &[Destination]) {
        let Some(&id) = self.ex_ids.get(exchange) else {
            return;
        };
        let ids: Vec<DestId> = order
            .iter()
            .filter_map(|d| match d {
                Destination::Queue(q) => self.q_ids.get(&**q).map(|&i| DestId::Queue(i)),
                Destination::Exchange(x) => self.ex_ids.get(&**x).map(|&i| DestId::Exchange(i)),
            })
            .collect();
        if let Index::ConsistentHash(_, ring) = &mut self.ex_mut(id).index {
            ring.reorder(&ids);
        }
    }

    /// [`Router::route`] with caller-provided scratch space.
    pub fn route_with(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&Args>,
        out: &mut Vec<Name>,
        s: &mut RouteScratch,
    ) -> Result<Routed, RouterError> {
        self.route_keys::<&str>(
            false,
            exchange,
            routing_key,
            &[],
            Headers::Ready(headers),
            &MsgProps::default(),
            out,
            s,
        )
    }

    /// Whether `exchange` exists and has bindings from it (the broker skips building a firehose copy that
    /// would go nowhere).
    pub fn has_bindings_from(&self, exchange: &str) -> bool {
        self.ex_ids
            .get(exchange)
            .is_some_and(|&id| !self.ex(id).bindings.is_empty())
    }

    /// Routes a message the broker itself publishes to an internal exchange (RabbitMQ's firehose copies to
    /// `amq.rabbitmq.trace`), which clients may not publish to.
    pub fn route_internal(
        &self,
        exchange: &str,
        routing_key: &str,
        out: &mut Vec<Name>,
    ) -> Result<Routed, RouterError> {
        let none: &[&str] = &[];
        let p = MsgProps::default();
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => self.route_keys(
                true,
                exchange,
                routing_key,
                none,
                Headers::Ready(None),
                &p,
                out,
                &mut s,
            ),
            Err(_) => self.route_keys(
                true,
                exchange,
                routing_key,
                none,
                Headers::Ready(None),
                &p,
                out,
                &mut RouteScratch::default(),
            ),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn route_keys<K: AsRef<str>>(
        &self,
        allow_internal: bool,
        exchange: &str,
        routing_key: &str,
        extra_keys: &[K],
        headers: Headers<'_>,
        props: &MsgProps,
        out: &mut Vec<Name>,
        s: &mut RouteScratch,
    ) -> Result<Routed, RouterError> {
        out.clear();
        let Some(&start) = self.ex_ids.get(exchange) else {
            return Err(self.not_found("exchange", exchange));
        };
        let x = self.ex(start);
        if x.def.internal && !allow_internal {
            return Err(RouterError::new(
                ErrorKind::AccessRefused,
                format!("cannot publish to internal {}", self.rs("exchange", exchange)),
            ));
        }
        if start == self.default_id {
            if let Some(&q) = self.q_ids.get(routing_key) {
                out.push(self.queue(q).name.clone());
            }
            for key in extra_keys {
                if let Some(&q) = self.q_ids.get(key.as_ref()) {
                    let name = &self.queue(q).name;
                    if !out.contains(name) {
                        out.push(name.clone());
                    }
                }
            }
            return Ok(Routed {
                matched: !out.is_empty(),
                used_alternate: false,
            });
        }
        // Decoded on first need (Headers::Lazy), at most once per publish.
        let mut decoded: Option<Option<Args>> = None;
        let mut sorted_headers = false;
        let epoch = s.begin(self.exchanges.len(), self.queues.len());
        s.xmark[start as usize] = epoch;
        s.work.push(start);
        let mut used_alternate = false;
        while let Some(xid) = s.work.pop() {
            let x = self.ex(xid);
            let mut count = 0usize;
            {
                let qmark = &mut s.qmark;
                let xmark = &mut s.xmark;
                let work = &mut s.work;
                let queues = &self.queues;
                let mut emit = |d: DestId| {
                    count += 1;
                    match d {
                        DestId::Queue(q) => {
                            let m = &mut qmark[q as usize];
                            if *m != epoch {
                                *m = epoch;
                                out.push(queues[q as usize].as_ref().expect("queue").name.clone());
                            }
                        }
                        DestId::Exchange(e) => {
                            let m = &mut xmark[e as usize];
                            if *m != epoch {
                                *m = epoch;
                                work.push(e);
                            }
                        }
                    }
                };
                match &x.index {
                    Index::Default => {}
                    Index::Direct(m) => {
                        if let Some(set) = m.get(routing_key) {
                            set.iter().for_each(&mut emit);
                        }
                        for key in extra_keys {
                            if let Some(set) = m.get(key.as_ref()) {
                                set.iter().for_each(&mut emit);
                            }
                        }
                    }
                    Index::Fanout(set) => set.iter().for_each(&mut emit),
                    Index::Topic(t) => {
                        t.route(routing_key, &mut s.trie, &mut emit);
                        for key in extra_keys {
                            t.route(key.as_ref(), &mut s.trie, &mut emit);
                        }
                    }
                    Index::Headers(v) if v.is_empty() => {}
                    Index::Headers(v) => {
                        let data = headers.data(&mut decoded);
                        if !sorted_headers {
                            headers::sort_data_order(data, &mut s.hdr_order);
                            sorted_headers = true;
                        }
                        for hb in v {
                            if headers::headers_match(&hb.args.0, hb.mode, data, &s.hdr_order) {
                                emit(hb.dest);
                            }
                        }
                    }
                    Index::ConsistentHash(on, ring) => {
                        // One destination per message, from the first routing key only (CC keys do
                        // not count: the plugin hashes the head of the message's routing keys).
                        let data = match on {
                            HashOn::Header(_) => headers.data(&mut decoded),
                            _ => &[],
                        };
                        let h = consistent_hash::key_hash(on, routing_key, data, props);
                        if let Some(d) = ring.pick(h) {
                            emit(d);
                        }
                    }
                }
            }
            if count == 0 {
                if let Some(ae) = &x.alternate {
                    if let Some(&aid) = self.ex_ids.get(&**ae) {
                        // Reported whether or not the AE was already visited,
                        // so the flag does not depend on the walk order.
                        used_alternate = true;
                        let m = &mut s.xmark[aid as usize];
                        if *m != epoch {
                            *m = epoch;
                            s.work.push(aid);
                        }
                    }
                }
            }
        }
        Ok(Routed {
            matched: !out.is_empty(),
            used_alternate,
        })
    }
}

/// A message's headers as routing reads them: decoded by the caller, or decoded on first need.
#[derive(Clone, Copy)]
enum Headers<'a> {
    Ready(Option<&'a Args>),
    Lazy(&'a dyn Fn() -> Option<Args>),
}

impl<'a> Headers<'a> {
    /// The header entries (none when the message has no headers); a lazy source is decoded into `decoded`
    /// the first time.
    fn data<'b>(&self, decoded: &'b mut Option<Option<Args>>) -> &'b [(String, ArgValue)]
    where
        'a: 'b,
    {
        match *self {
            Headers::Ready(h) => h.map(|h| &h.0[..]).unwrap_or(&[]),
            Headers::Lazy(f) => decoded
                .get_or_insert_with(f)
                .as_ref()
                .map(|h| &h.0[..])
                .unwrap_or(&[]),
        }
    }
}
