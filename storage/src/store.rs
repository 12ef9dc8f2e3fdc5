//! `Store`: the narrow API the broker uses (definitions, messages, durability), and opening a data
//! directory.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Deserialize;
use tokio::sync::watch;

use crate::codec::MessageParts;
use crate::flusher::{Durability, Shared, TicketState};
use crate::keys::{
    self, Key, BINDING, EXCHANGE, MSG_STATE, PERMISSION, POLICY, QUEUE, USER, VHOST, VHOST_META,
};
use crate::sleddb::Removal;
use crate::{be, codec, io_err, records::*, Result, StoreError};

/// State-key deletes (purge, delete_queue) are applied in sled batches of this many keys.
pub(crate) const DELETE_CHUNK: usize = 10_000;

pub(crate) struct Inner {
    /// `Some` until drop.
    pub(crate) shared: Option<Arc<Shared>>,
    pub(crate) flusher: Option<JoinHandle<()>>,
    pub(crate) dir: PathBuf,
    // Declared last: dropped (unlocked) after sled has been closed.
    pub(crate) _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.log.seal_all();
            shared.delayed_wake.close();
            shared.wake.lock().shutdown = true;
            shared.cv.notify_all();
            if let Some(h) = self.flusher.take() {
                let _ = h.join(); // the flusher does a last flush before it exits
            }
            // sled's I/O threads can hold its data file (and sled's own lock on it) for a moment
            // after the Db is dropped; `close` waits for that so the directory can be reopened as
            // soon as our LOCK is released.
            shared.sled.close();
        }
    }
}

/// A handle to an open store. Cheap to clone; the last handle dropped stops the flusher thread
/// (after a final flush), closes sled and unlocks the directory.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.inner.dir).finish()
    }
}

impl Store {
    pub(crate) fn sh(&self) -> &Shared {
        self.inner.shared.as_ref().expect("store used after drop")
    }

    /// What the delayed-message release thread sleeps on (`DelayedWaker::sleep_until`).
    pub fn delayed_waker(&self) -> crate::delayed::DelayedWaker {
        crate::delayed::DelayedWaker(self.sh().delayed_wake.clone())
    }

    /// The directory this store was opened on.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    // --- generic record helpers ---------------------------------------------------------------

    pub(crate) fn put_raw(&self, key: Vec<u8>, value: Vec<u8>) -> Result<u64> {
        let n = key.len() + value.len();
        self.sh().sled.write(|db| db.insert(key, value))?;
        Ok(self.sh().bump(n))
    }

    fn remove_raw(&self, key: Vec<u8>) -> Result<u64> {
        let n = key.len();
        let sled = &self.sh().sled;
        if let Err(e) = sled.write(|db| db.remove(key.as_slice())) {
            if !sled.can_defer(&e) {
                return Err(e);
            }
            // done by the rebuild; the ticket is durable only once a round succeeds after it
            sled.defer_removal(vec![Removal::Key(key)]);
        }
        Ok(self.sh().bump(n))
    }

    fn list<T: for<'a> Deserialize<'a>>(&self, tag: u8, what: &str) -> Result<Vec<T>> {
        self.sh().sled.read(|db| Ok(list_records(db, tag, what)))?
    }

    /// Flushes and checks that `ticket` made it (for the calls that are durable on return).
    fn flush_ticket(&self, ticket: u64) -> Result<()> {
        let r = self.flush_blocking();
        match self.ticket_state(ticket) {
            TicketState::Pending => r.and(Err(self.not_durable(ticket))),
            _ => self.ticket_result(ticket),
        }
    }

    fn ticket_result(&self, ticket: u64) -> Result<()> {
        match self.ticket_state(ticket) {
            TicketState::Durable => Ok(()),
            _ => Err(self.not_durable(ticket)),
        }
    }

    /// The error for a ticket whose flush round failed, with the round's error as the cause.
    pub fn not_durable(&self, ticket: u64) -> StoreError {
        let cause = self.sh().last_error.lock().clone();
        StoreError::NotDurable {
            ticket,
            cause: if cause.is_empty() {
                "its flush round failed".into()
            } else {
                cause
            },
        }
    }

    // --- vhosts and users (rare admin writes: durable when the call returns) -----------------

    /// Insert or replace a vhost. Durable on return (waits for a flush).
    pub fn put_vhost(&self, v: &VhostRecord) -> Result<()> {
        let t = self.put_raw(Key::new(VHOST).str(&v.name).into_vec(), codec::encode(v)?)?;
        self.flush_ticket(t)
    }

    /// Delete a vhost record (no cascade: the broker deletes its exchanges, queues and bindings).
    /// Durable on return.
    pub fn delete_vhost(&self, name: &str) -> Result<()> {
        let t = self.remove_raw(Key::new(VHOST).str(name).into_vec())?;
        self.flush_ticket(t)
    }

    pub fn vhosts(&self) -> Result<Vec<VhostRecord>> {
        self.list(VHOST, "vhost")
    }

    /// Insert or replace a user. Durable on return.
    pub fn put_user(&self, u: &UserRecord) -> Result<()> {
        let t = self.put_raw(Key::new(USER).str(&u.name).into_vec(), codec::encode(u)?)?;
        self.flush_ticket(t)
    }

    /// Durable on return.
    pub fn delete_user(&self, name: &str) -> Result<()> {
        let t = self.remove_raw(Key::new(USER).str(name).into_vec())?;
        self.flush_ticket(t)
    }

    pub fn users(&self) -> Result<Vec<UserRecord>> {
        self.list(USER, "user")
    }

    /// Insert or replace a user's permissions in a vhost. Durable on return.
    pub fn put_permission(&self, p: &PermissionRecord) -> Result<()> {
        let k = Key::new(PERMISSION).str(&p.vhost).str(&p.user).into_vec();
        let t = self.put_raw(k, codec::encode(p)?)?;
        self.flush_ticket(t)
    }

    /// Durable on return.
    pub fn delete_permission(&self, vhost: &str, user: &str) -> Result<()> {
        let t = self.remove_raw(Key::new(PERMISSION).str(vhost).str(user).into_vec())?;
        self.flush_ticket(t)
    }

    pub fn permissions(&self) -> Result<Vec<PermissionRecord>> {
        self.list(PERMISSION, "permission")
    }

    /// Insert or replace a vhost's metadata. Durable on return.
    pub fn put_vhost_meta(&self, m: &VhostMetaRecord) -> Result<()> {
        let t = self.put_raw(Key::new(VHOST_META).str(&m.name).into_vec(), codec::encode(m)?)?;
        self.flush_ticket(t)
    }

    /// Durable on return.
    pub fn delete_vhost_meta(&self, name: &str) -> Result<()> {
        let t = self.remove_raw(Key::new(VHOST_META).str(name).into_vec())?;
        self.flush_ticket(t)
    }

    pub fn vhost_metas(&self) -> Result<Vec<VhostMetaRecord>> {
        self.list(VHOST_META, "vhost metadata")
    }

    /// Insert or replace a policy. Durable on return.
    pub fn put_policy(&self, p: &PolicyRecord) -> Result<()> {
        let k = Key::new(POLICY).str(&p.vhost).str(&p.name).into_vec();
        let t = self.put_raw(k, codec::encode(p)?)?;
        self.flush_ticket(t)
    }

    /// Durable on return.
    pub fn delete_policy(&self, vhost: &str, name: &str) -> Result<()> {
        let t = self.remove_raw(Key::new(POLICY).str(vhost).str(name).into_vec())?;
        self.flush_ticket(t)
    }

    pub fn policies(&self) -> Result<Vec<PolicyRecord>> {
        self.list(POLICY, "policy")
    }

    // --- exchanges, queues, bindings ----------------------------------------------------------

    pub fn put_exchange(&self, x: &ExchangeRecord) -> Result<u64> {
        let k = Key::new(EXCHANGE).str(&x.vhost).str(&x.name).into_vec();
        self.put_raw(k, codec::encode(x)?)
    }

    /// Deletes the exchange record only (bindings are the broker's to delete).
    pub fn delete_exchange(&self, vhost: &str, name: &str) -> Result<u64> {
        self.remove_raw(Key::new(EXCHANGE).str(vhost).str(name).into_vec())
    }

    pub fn exchanges(&self) -> Result<Vec<ExchangeRecord>> {
        self.list(EXCHANGE, "exchange")
    }

    /// A fresh queue id: 1, 2, 3, … persisted under `\x00next_queue_id` (never reused, also
    /// across restarts once the counter write is durable — it is flushed with the next flush,
    /// at the latest together with the `put_queue` that uses it).
    pub fn next_queue_id(&self) -> Result<u32> {
        let mut overflow = false;
        let new = self.sh().sled.write(|db| {
            db.update_and_fetch(keys::QUEUE_ID_KEY, |old| {
                let cur = old.and_then(be::exact_u32).unwrap_or(0);
                match cur.checked_add(1) {
                    Some(n) => Some(n.to_be_bytes().to_vec()),
                    None => {
                        overflow = true;
                        Some(cur.to_be_bytes().to_vec())
                    }
                }
            })
        })?;
        if overflow {
            return Err(StoreError::Corrupt("queue id space (u32) exhausted".into()));
        }
        let id = new
            .as_deref()
            .and_then(be::exact_u32)
            .ok_or_else(|| StoreError::Corrupt("queue id counter is malformed".into()))?;
        self.sh().bump(keys::QUEUE_ID_KEY.len() + 4);
        Ok(id)
    }

    /// Records a queue. Durable queues also get a copy of their definition beside their messages
    /// (`queue.def`, written with the queue's first segment), so that the queue survives the loss
    /// of its record.
    pub fn put_queue(&self, q: &QueueRecord) -> Result<u64> {
        let k = Key::new(QUEUE).str(&q.vhost).str(&q.name).into_vec();
        let t = self.put_raw(k, codec::encode(q)?)?;
        if q.durable {
            self.sh().log.set_def(q)?;
        }
        Ok(t)
    }

    /// Deletes the queue record (and its delivered mark) and then all messages and message
    /// states of queue `id`. The record goes first (one sled batch); then the queue's directory
    /// is renamed to `<id>.deleted` (removed for good after the next successful flush round);
    /// then its state keys go in batches of 10,000. If the process dies in between, `open`
    /// finishes the job (or, if the record's removal was not durable, puts the directory back).
    /// If the rename fails, the record is put back and the error returned.
    pub fn delete_queue(&self, vhost: &str, name: &str, id: u32) -> Result<u64> {
        let qkey = Key::new(QUEUE).str(vhost).str(name).into_vec();
        let mkey = keys::queue_prefix(keys::DELIVERED_MARK, id);
        let n = qkey.len();
        let sled = &self.sh().sled;
        let written = sled.write(|db| {
            let old = db.get(&qkey)?;
            let mark = db.get(mkey)?;
            let mut batch = sled::Batch::default();
            batch.remove(qkey.as_slice());
            batch.remove(&mkey);
            db.apply_batch(batch)?;
            Ok((old, mark))
        });
        let deferred = vec![
            Removal::Key(qkey.clone()),
            Removal::Key(mkey.to_vec()),
            Removal::Prefix(keys::queue_prefix(MSG_STATE, id).to_vec()),
        ];
        let (old, old_mark, sled_ok) = match written {
            Ok((old, mark)) => (old, mark, true),
            // sled is broken: the rebuild leaves the queue out (`SledDb::defer_removal`)
            Err(e) if sled.can_defer(&e) => {
                sled.defer_removal(deferred.clone());
                (None, None, false)
            }
            Err(e) => return Err(e),
        };
        self.sh().bump(n);
        let removed = match self.sh().log.remove_queue(id) {
            Ok(r) => r,
            Err(e) => {
                let undo = self.sh().sled.write(|db| {
                    if let Some(v) = old {
                        db.insert(&qkey, v)?;
                    }
                    if let Some(m) = old_mark {
                        db.insert(mkey, m)?;
                    }
                    Ok(())
                });
                if let Err(u) = undo {
                    tracing::error!(error = %u, "putting back a queue record after a failed delete failed");
                }
                if !sled_ok {
                    sled.cancel_removal(&deferred);
                }
                self.sh().bump(n);
                return Err(e);
            }
        };
        if sled_ok {
            if let Err(e) = self.remove_prefix(&keys::queue_prefix(MSG_STATE, id)) {
                if !sled.can_defer(&e) {
                    return Err(e);
                }
                sled.defer_removal(deferred[2..].to_vec());
            }
        }
        self.sh().messages_deleted.fetch_add(removed, SeqCst);
        Ok(self.sh().bump(0))
    }

    pub fn queues(&self) -> Result<Vec<QueueRecord>> {
        self.list(QUEUE, "queue")
    }

    fn binding_key(b: &BindingRecord) -> Vec<u8> {
        Key::new(BINDING)
            .str(&b.vhost)
            .str(&b.source)
            .u8(b.destination_is_queue as u8)
            .str(&b.destination)
            .str(&b.routing_key)
            .bytes(&b.arguments)
            .into_vec()
    }

    pub fn put_binding(&self, b: &BindingRecord) -> Result<u64> {
        self.put_raw(Self::binding_key(b), codec::encode(b)?)
    }

    pub fn delete_binding(&self, b: &BindingRecord) -> Result<u64> {
        self.remove_raw(Self::binding_key(b))
    }

    pub fn bindings(&self) -> Result<Vec<BindingRecord>> {
        self.list(BINDING, "binding")
    }

    // --- messages -----------------------------------------------------------------------------

    /// Store one message under (queue id, seq). Seqs are chosen by the caller and must increase
    /// per queue: `seq` must be above every seq appended to the queue since the store was opened
    /// and above the queue's last message at open (else `StoreError::OutOfOrder`). After a
    /// restart the seqs after the last stored message may be used again.
    pub fn append_message(&self, queue_id: u32, seq: u64, msg: &StoredMessage) -> Result<u64> {
        self.append_message_parts(queue_id, seq, MessageParts::of(msg))
    }

    /// Store several messages (any queues; per queue in increasing seq order); one ticket. Not
    /// atomic across a crash: until the ticket is durable, any subset may be lost.
    pub fn append_messages(&self, items: &[(u32, u64, &StoredMessage)]) -> Result<u64> {
        let parts: Vec<_> = items
            .iter()
            .map(|&(q, s, m)| (q, s, MessageParts::of(m)))
            .collect();
        self.append_parts(&parts)
    }

    /// `append_message` from borrowed parts: the broker's publish path, which then builds no
    /// `StoredMessage` (no copy of the exchange and routing key per message).
    pub fn append_message_parts(&self, queue_id: u32, seq: u64, msg: MessageParts<'_>) -> Result<u64> {
        self.append_parts(&[(queue_id, seq, msg)])
    }

    fn append_parts(&self, items: &[(u32, u64, MessageParts<'_>)]) -> Result<u64> {
        let n = self.sh().log.append(items)?;
        self.sh().messages_appended.fetch_add(items.len() as u64, SeqCst);
        Ok(self.sh().bump(n))
    }

    /// Remove messages (and their state keys), e.g. on ack: their seqs are appended to the ack
    /// files of their segments, and a segment left without a live message is deleted. Absent or
    /// already deleted seqs are ignored.
    pub fn delete_messages(&self, queue_id: u32, seqs: &[u64]) -> Result<u64> {
        let gone = self.sh().log.delete(queue_id, seqs)?;
        let mut n = seqs.len() * 8;
        if !gone.state_seqs.is_empty() {
            let mut batch = sled::Batch::default();
            for s in &gone.state_seqs {
                batch.remove(&keys::msg_key(MSG_STATE, queue_id, *s));
            }
            self.sh().sled.write(|db| db.apply_batch(batch))?;
            n += gone.state_seqs.len() * keys::MSG_KEY_LEN;
        }
        for (first, last) in gone.state_ranges {
            self.remove_range(
                keys::msg_key(MSG_STATE, queue_id, first),
                keys::msg_key(MSG_STATE, queue_id, last),
            )?;
        }
        self.sh().messages_deleted.fetch_add(seqs.len() as u64, SeqCst);
        Ok(self.sh().bump(n))
    }

    /// Record the mutable part of a message (written on redelivery; the body is not rewritten).
    /// `read_messages` merges it in.
    pub fn set_message_state(&self, queue_id: u32, seq: u64, state: &MessageState) -> Result<u64> {
        self.sh().log.note_state(queue_id, seq);
        let k = keys::msg_key(MSG_STATE, queue_id, seq).to_vec();
        self.put_raw(k, codec::encode(state)?)
    }

    /// The state record of one message, if one was written.
    pub fn message_state(&self, queue_id: u32, seq: u64) -> Result<Option<MessageState>> {
        self.sh()
            .sled
            .read(|db| db.get(keys::msg_key(MSG_STATE, queue_id, seq)))?
            .map(|v| codec::decode("message state", &v))
            .transpose()
    }

    /// Up to `limit` messages of `queue_id` with seq >= `from_seq`, in seq order, with their
    /// state merged in (`delivery_count`, `not_before_ms` taken from the state record if any).
    /// Each message's properties and body are slices of one buffer holding a copy of its record.
    pub fn read_messages(
        &self,
        queue_id: u32,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, StoredMessage)>> {
        Ok(self
            .read_messages_with_state(queue_id, from_seq, limit)?
            .into_iter()
            .map(|(s, m, _)| (s, m))
            .collect())
    }

    /// Like `read_messages`, also returning each message's state record (for `redelivered`).
    /// Sequential reads (each `from_seq` just after the last seq returned) continue where the
    /// previous read stopped; any other `from_seq` scans its segment from the start.
    #[allow(clippy::type_complexity)]
    pub fn read_messages_with_state(
        &self,
        queue_id: u32,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, StoredMessage, Option<MessageState>)>> {
        let mut out: Vec<(u64, StoredMessage, Option<MessageState>)> = self
            .sh()
            .log
            .read(queue_id, from_seq, limit)?
            .into_iter()
            .map(|(s, m)| (s, m, None))
            .collect();
        if let (Some(first), Some(last)) = (out.first(), out.last()) {
            let s = keys::msg_key(MSG_STATE, queue_id, first.0);
            let e = keys::msg_key(MSG_STATE, queue_id, last.0);
            // Without sled (being rebuilt after a write failure) the messages go out with the
            // delivery counts they were stored with.
            let states = match self
                .sh()
                .sled
                .read(|db| db.range(s..=e).collect::<sled::Result<Vec<_>>>())
            {
                Ok(v) => v,
                Err(StoreError::Unavailable(_)) => Vec::new(),
                Err(e) => return Err(e),
            };
            let mut i = 0;
            for (k, v) in states {
                let (_, seq) = keys::parse_msg_key(&k)
                    .ok_or_else(|| StoreError::Corrupt("malformed message state key".into()))?;
                let st: MessageState = codec::decode("message state", &v)?;
                while i < out.len() && out[i].0 < seq {
                    i += 1;
                }
                if i < out.len() && out[i].0 == seq {
                    out[i].1.delivery_count = st.delivery_count;
                    out[i].1.not_before_ms = st.not_before_ms;
                    out[i].2 = Some(st);
                }
            }
        }
        Ok(out)
    }

    /// All seqs of a queue in order, from the in-memory index (no I/O): O(messages).
    pub fn message_seqs(&self, queue_id: u32) -> Result<Vec<u64>> {
        Ok(self.sh().log.seqs(queue_id))
    }

    /// Records that messages of `queue_id` up to `seq` may have been delivered, so that after a crash
    /// they come back flagged redelivered. One small write per delivery batch, not per message.
    pub fn set_delivered_mark(&self, queue_id: u32, seq: u64) -> Result<u64> {
        let key = keys::queue_prefix(keys::DELIVERED_MARK, queue_id).to_vec();
        self.put_raw(key, seq.to_be_bytes().to_vec())
    }

    /// The last `set_delivered_mark` of a queue.
    pub fn delivered_mark(&self, queue_id: u32) -> Result<Option<u64>> {
        match self
            .sh()
            .sled
            .read(|db| db.get(keys::queue_prefix(keys::DELIVERED_MARK, queue_id)))?
        {
            None => Ok(None),
            Some(v) => be::exact_u64(&v)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt("delivered mark is malformed".into())),
        }
    }

    /// Marks the store as closed cleanly (durable on return).
    /// Also seals every queue's current segment (appends after this start new ones), so that the
    /// next open reads only segment footers.
    pub fn mark_clean_shutdown(&self) -> Result<()> {
        self.sh().log.seal_all();
        let t = self.put_raw(keys::CLEAN_KEY.to_vec(), vec![1u8])?;
        self.flush_ticket(t)
    }

    /// Whether the last close was clean; clears the mark (durably) so that a crash from now on is
    /// seen as one, and forgets the queue counts it vouched for.
    pub fn take_clean_shutdown(&self) -> Result<bool> {
        let was = self.sh().sled.write(|db| db.remove(keys::CLEAN_KEY))?.is_some();
        let t = self.sh().bump(keys::CLEAN_KEY.len());
        self.flush_ticket(t)?;
        Ok(was)
    }

    /// (first seq, last seq) of a queue, or None if it holds no message. From the in-memory
    /// index: O(segments).
    pub fn queue_bounds(&self, queue_id: u32) -> Result<Option<(u64, u64)>> {
        Ok(self.sh().log.bounds(queue_id))
    }

    /// Number of messages in a queue, from the in-memory index: O(segments).
    pub fn count_messages(&self, queue_id: u32) -> Result<u64> {
        Ok(self.sh().log.count(queue_id))
    }

    /// Ids of all queues that have at least one message, in order (from the in-memory index).
    pub fn queue_ids_with_messages(&self) -> Result<Vec<u32>> {
        Ok(self.sh().log.queue_ids())
    }

    /// Remove all messages and states of a queue: its segment files are deleted, its state keys
    /// removed in batches of 10,000. Returns (messages removed, ticket).
    pub fn purge_queue(&self, queue_id: u32) -> Result<(u64, u64)> {
        let removed = self.sh().log.purge(queue_id)?;
        self.remove_prefix(&keys::queue_prefix(MSG_STATE, queue_id))?;
        self.sh().messages_deleted.fetch_add(removed, SeqCst);
        Ok((removed, self.sh().bump(0)))
    }

    pub(crate) fn remove_prefix(&self, prefix: &[u8]) -> Result<u64> {
        let mut end = prefix.to_vec();
        end.extend_from_slice(&[0xFF; keys::MSG_KEY_LEN]);
        self.remove_range(prefix, &end)
    }

    /// Removes the keys in `start..=end` in sled batches of `DELETE_CHUNK`.
    fn remove_range(&self, start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> Result<u64> {
        let (start, end) = (start.as_ref(), end.as_ref());
        let mut removed = 0u64;
        loop {
            let n = self.sh().sled.write(|db| {
                let mut batch = sled::Batch::default();
                let mut n = 0;
                for k in db.range(start..=end).keys().take(DELETE_CHUNK) {
                    batch.remove(k?);
                    n += 1;
                }
                if n > 0 {
                    db.apply_batch(batch)?;
                }
                Ok(n)
            })?;
            if n == 0 {
                return Ok(removed);
            }
            removed += n as u64;
            self.sh().bump(n * keys::MSG_KEY_LEN);
        }
    }

    /// Delivered marks of queues that have no record, and state keys of messages that are gone
    /// (their queue was deleted, or the message was deleted and the state removal was lost in a
    /// crash), are removed at open. The state keys of live messages are noted in the log index.
    pub(crate) fn remove_orphan_state(&self, known: &HashSet<u32>) -> Result<()> {
        let marks = self.sh().sled.read(|db| {
            db.scan_prefix([keys::DELIVERED_MARK])
                .keys()
                .collect::<sled::Result<Vec<_>>>()
        })?;
        for k in marks {
            let q = be::exact_u32(&k[1..]);
            if matches!(q, Some(q) if !known.contains(&q)) {
                self.remove_raw(k.to_vec())?;
            }
        }
        let states = self.sh().sled.read(|db| {
            db.scan_prefix([MSG_STATE])
                .keys()
                .collect::<sled::Result<Vec<_>>>()
        })?;
        let mut stale = sled::Batch::default();
        let mut n = 0;
        for k in states {
            let live = keys::parse_msg_key(&k)
                .is_some_and(|(q, seq)| known.contains(&q) && self.sh().log.note_state(q, seq));
            if !live {
                stale.remove(k);
                n += 1;
            }
        }
        if n > 0 {
            self.sh().sled.write(|db| db.apply_batch(stale))?;
            self.sh().bump(n * keys::MSG_KEY_LEN);
            tracing::info!(keys = n, "removed state keys of messages that are gone");
        }
        Ok(())
    }

    // --- durability ---------------------------------------------------------------------------

    /// Receives what is known about tickets: every ticket up to `settled()` is durable or failed
    /// (`Durability::state`). Await `wait_for(|d| d.settled() >= ticket)`, then look at the
    /// ticket's state: a failed ticket's write must not be reported as durable (nack it).
    pub fn durable_watch(&self) -> watch::Receiver<Durability> {
        self.sh().durable_tx.subscribe()
    }

    /// Block the calling thread until `ticket` is settled (for non-async callers, tools and
    /// tests; async code awaits the watch instead). `Err(NotDurable)` if its flush round failed.
    pub fn wait_durable_blocking(&self, ticket: u64) -> Result<()> {
        let mut rx = self.durable_watch();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = block_on(rx.wait_for(|d| d.settled() >= ticket));
        self.ticket_result(ticket)
    }

    /// The state of one ticket now.
    pub fn ticket_state(&self, ticket: u64) -> TicketState {
        self.sh().durable_tx.borrow().state(ticket)
    }

    /// The ticket of the latest write (0 before any write since open).
    pub fn current_ticket(&self) -> u64 {
        self.sh().ticket.load(SeqCst)
    }

    /// Wake the flusher now, even if it believes there is nothing to flush.
    pub fn request_flush(&self) {
        let sh = self.sh();
        sh.wake.lock().requested = true;
        sh.cv.notify_one();
    }

    /// One flush round on the calling thread: Ok if it made every write not settled before it
    /// durable (a write whose call returned before this call is settled when it returns: check
    /// its ticket with `ticket_state` if an earlier round may have failed it). Blocking.
    pub fn flush_blocking(&self) -> Result<()> {
        self.sh().flush_now()
    }

    /// The test-only fault injection layer of this store (see `Faults`).
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn faults(&self) -> &crate::Faults {
        &self.sh().faults
    }

    pub fn stats(&self) -> StoreStats {
        let sh = self.sh();
        StoreStats {
            writes: sh.ticket.load(SeqCst),
            flushes: sh.flushes.load(SeqCst),
            bytes_written: sh.bytes_written.load(SeqCst),
            messages_appended: sh.messages_appended.load(SeqCst),
            messages_deleted: sh.messages_deleted.load(SeqCst),
            fsyncs: sh.fsyncs.load(SeqCst),
            durable: sh.durable_tx.borrow().settled(),
            flush_errors: sh.flush_errors.load(SeqCst),
        }
    }

    /// How long the flush rounds took (successful ones).
    pub fn flush_latency(&self) -> crate::LatencySnapshot {
        self.sh().flush_latency.snapshot()
    }

    /// Disk space allocated to the store directory (like `du`: allocated blocks, all files).
    pub fn size_on_disk(&self) -> Result<u64> {
        dir_allocated_bytes(&self.inner.dir)
    }

    /// sled's own figure: apparent length of its files (the log file is sparse-free, so this is
    /// close to `size_on_disk` minus our LOCK file).
    pub fn sled_size_on_disk(&self) -> Result<u64> {
        self.sh().sled.size_on_disk()
    }
}

pub(crate) fn list_records<T: for<'a> Deserialize<'a>>(db: &sled::Db, tag: u8, what: &str) -> Result<Vec<T>> {
    db.scan_prefix([tag])
        .map(|kv| {
            let (_, v) = kv?;
            codec::decode(what, &v)
        })
        .collect()
}

/// Minimal executor for `wait_durable_blocking` (tokio is used with the `sync` feature only).
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Allocated bytes of every file under `dir` (st_blocks × 512 on Unix, length elsewhere).
pub fn dir_allocated_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let rd = fs::read_dir(dir).map_err(io_err(dir))?;
    for e in rd {
        let e = e.map_err(io_err(dir))?;
        let path = e.path();
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_err(&path)(err)),
        };
        if md.is_dir() {
            total += dir_allocated_bytes(&path)?;
        } else {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                total += md.blocks() * 512;
            }
            #[cfg(not(unix))]
            {
                total += md.len();
            }
        }
    }
    Ok(total)
}
