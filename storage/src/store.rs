//! `Store`: the narrow API the broker uses (definitions, messages, durability), and opening a data
//! directory.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use serde::Deserialize;
use tokio::sync::watch;

use crate::flusher::{flusher_loop, Shared, Unsynced, WakeState};
use crate::keys::{self, Key, BINDING, EXCHANGE, MSG_STATE, QUEUE, USER, VHOST};
use crate::seglog::MsgLog;
use crate::{be, codec, io_err, records::*, Result, StoreError, SCHEMA_VERSION, SLED_SEGMENT_SIZE};

/// State-key deletes (purge, delete_queue) are applied in sled batches of this many keys.
pub(crate) const DELETE_CHUNK: usize = 10_000;

struct Inner {
    /// `Some` until drop.
    shared: Option<Arc<Shared>>,
    flusher: Option<JoinHandle<()>>,
    dir: PathBuf,
    // Declared last: dropped (unlocked) after sled has been closed.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.log.seal_all();
            shared.wake.lock().shutdown = true;
            shared.cv.notify_all();
            if let Some(h) = self.flusher.take() {
                let _ = h.join(); // the flusher does a last flush before it exits
            }
            drop(shared); // the last reference: closes sled
        }
        // sled's I/O threads can hold its data file (and sled's own lock on it) for a moment
        // after the Db is dropped; wait for that so the directory can be reopened as soon as
        // our LOCK is released.
        wait_sled_lock_free(&self.dir.join("sled"), Duration::from_secs(5));
    }
}

/// A handle to an open store. Cheap to clone; the last handle dropped stops the flusher thread
/// (after a final flush), closes sled and unlocks the directory.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.inner.dir).finish()
    }
}

impl Store {
    /// Open (or create) the store in `dir`. Creates the directory if missing, locks it, opens
    /// sled under `dir/sled`, checks the schema version, and loads the message log under
    /// `dir/messages`: reads every segment once to check its records (cutting off a torn tail
    /// left by a crash) and every ack file, removes fully acked segments and the messages of
    /// queues that have no queue record (a `delete_queue` interrupted by a crash).
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }

        let sled_dir = dir.join("sled");
        // We hold LOCK, so a sled lock still held can only be a Store of this process that is
        // being dropped right now (see Inner::drop); give it a moment.
        wait_sled_lock_free(&sled_dir, Duration::from_secs(2));
        let db = sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(opts.cache_capacity_bytes)
            .flush_every_ms(opts.flush_interval_ms)
            .use_compression(false)
            .segment_size(SLED_SEGMENT_SIZE)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(source) => StoreError::Io {
                    path: sled_dir.clone(),
                    source,
                },
                other => other.into(),
            })?;

        debug_assert_eq!(keys::SCHEMA_KEY[0], keys::META);
        match db.get(keys::SCHEMA_KEY)? {
            Some(v) => {
                let found = be::exact_u32(&v)
                    .ok_or_else(|| StoreError::Corrupt("schema version record is malformed".into()))?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaVersion {
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
            None => {
                if db.iter().next().is_some() {
                    return Err(StoreError::Corrupt(
                        "the store holds data but has no schema version record".into(),
                    ));
                }
                db.insert(keys::SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
        }

        let known: HashSet<u32> = list_records::<QueueRecord>(&db, QUEUE, "queue")?
            .into_iter()
            .map(|q| q.id)
            .collect();
        let (log, recovery) = MsgLog::open(&dir.join("messages"), opts.segment_bytes, &known)?;
        for q in &recovery.orphan_queues {
            tracing::warn!(queue_id = q, "removed the messages of a deleted queue");
        }
        if recovery.truncated_files > 0 {
            tracing::warn!(
                files = recovery.truncated_files,
                "cut off torn tails of message files (a crash during a write)"
            );
        }

        let (durable_tx, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            db,
            log,
            sled_dirty: AtomicBool::new(false),
            round: Mutex::new(Unsynced::default()),
            ticket: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            flush_errors: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            messages_appended: AtomicU64::new(0),
            messages_deleted: AtomicU64::new(0),
            durable_tx,
            wake: Mutex::new(WakeState {
                requested: false,
                shutdown: false,
            }),
            cv: Condvar::new(),
            sleeping: AtomicBool::new(false),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("mailroom-storage-flusher".into())
                .spawn(move || flusher_loop(shared))
                .map_err(io_err(dir))?
        };
        let store = Store {
            inner: Arc::new(Inner {
                shared: Some(shared),
                flusher: Some(flusher),
                dir: dir.to_path_buf(),
                _lock: lock,
            }),
        };
        store.remove_orphan_state(&known)?;
        if recovery.scanned_segments > 0 {
            // their new footers
            store.request_flush();
        }
        Ok(store)
    }

    fn sh(&self) -> &Shared {
        self.inner.shared.as_ref().expect("store used after drop")
    }

    fn db(&self) -> &sled::Db {
        &self.sh().db
    }

    /// The directory this store was opened on.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    // --- generic record helpers ---------------------------------------------------------------

    fn put_raw(&self, key: Vec<u8>, value: Vec<u8>) -> Result<u64> {
        let n = key.len() + value.len();
        self.db().insert(key, value)?;
        Ok(self.sh().bump_sled(n))
    }

    fn remove_raw(&self, key: Vec<u8>) -> Result<u64> {
        let n = key.len();
        self.db().remove(key)?;
        Ok(self.sh().bump_sled(n))
    }

    fn list<T: for<'a> Deserialize<'a>>(&self, tag: u8, what: &str) -> Result<Vec<T>> {
        list_records(self.db(), tag, what)
    }

    // --- vhosts and users (rare admin writes: durable when the call returns) -----------------

    /// Insert or replace a vhost. Durable on return (waits for a flush).
    pub fn put_vhost(&self, v: &VhostRecord) -> Result<()> {
        self.put_raw(Key::new(VHOST).str(&v.name).into_vec(), codec::encode(v)?)?;
        self.flush_blocking()
    }

    /// Delete a vhost record (no cascade: the broker deletes its exchanges, queues and bindings).
    /// Durable on return.
    pub fn delete_vhost(&self, name: &str) -> Result<()> {
        self.remove_raw(Key::new(VHOST).str(name).into_vec())?;
        self.flush_blocking()
    }

    pub fn vhosts(&self) -> Result<Vec<VhostRecord>> {
        self.list(VHOST, "vhost")
    }

    /// Insert or replace a user. Durable on return.
    pub fn put_user(&self, u: &UserRecord) -> Result<()> {
        self.put_raw(Key::new(USER).str(&u.name).into_vec(), codec::encode(u)?)?;
        self.flush_blocking()
    }

    /// Durable on return.
    pub fn delete_user(&self, name: &str) -> Result<()> {
        self.remove_raw(Key::new(USER).str(name).into_vec())?;
        self.flush_blocking()
    }

    pub fn users(&self) -> Result<Vec<UserRecord>> {
        self.list(USER, "user")
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
        let new = self.db().update_and_fetch(keys::QUEUE_ID_KEY, |old| {
            let cur = old.and_then(be::exact_u32).unwrap_or(0);
            match cur.checked_add(1) {
                Some(n) => Some(n.to_be_bytes().to_vec()),
                None => {
                    overflow = true;
                    Some(cur.to_be_bytes().to_vec())
                }
            }
        })?;
        if overflow {
            return Err(StoreError::Corrupt("queue id space (u32) exhausted".into()));
        }
        let id = new
            .as_deref()
            .and_then(be::exact_u32)
            .ok_or_else(|| StoreError::Corrupt("queue id counter is malformed".into()))?;
        self.sh().bump_sled(keys::QUEUE_ID_KEY.len() + 4);
        Ok(id)
    }

    pub fn put_queue(&self, q: &QueueRecord) -> Result<u64> {
        let k = Key::new(QUEUE).str(&q.vhost).str(&q.name).into_vec();
        self.put_raw(k, codec::encode(q)?)
    }

    /// Deletes the queue record (and its delivered mark) and then all messages and message
    /// states of queue `id`.
    /// The record goes first (one sled batch), then the queue's message directory, then its state
    /// keys in batches of 10,000; if the process dies in between, `open` removes the orphans.
    pub fn delete_queue(&self, vhost: &str, name: &str, id: u32) -> Result<u64> {
        let mut batch = sled::Batch::default();
        let qkey = Key::new(QUEUE).str(vhost).str(name).into_vec();
        let n = qkey.len();
        batch.remove(qkey);
        batch.remove(&keys::queue_prefix(keys::DELIVERED_MARK, id));
        self.db().apply_batch(batch)?;
        self.sh().bump_sled(n);
        let removed = self.sh().log.remove_queue(id)?;
        self.remove_prefix(&keys::queue_prefix(MSG_STATE, id))?;
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
        self.append_messages(&[(queue_id, seq, msg)])
    }

    /// Store several messages (any queues; per queue in increasing seq order); one ticket. Not
    /// atomic across a crash: until the ticket is durable, any subset may be lost.
    pub fn append_messages(&self, items: &[(u32, u64, &StoredMessage)]) -> Result<u64> {
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
            self.db().apply_batch(batch)?;
            self.sh().sled_dirty.store(true, SeqCst);
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
        self.db()
            .get(keys::msg_key(MSG_STATE, queue_id, seq))?
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
            let mut i = 0;
            for kv in self.db().range(s..=e) {
                let (k, v) = kv?;
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
            .db()
            .get(keys::queue_prefix(keys::DELIVERED_MARK, queue_id))?
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
        self.db().insert(keys::CLEAN_KEY, &[1u8])?;
        self.sh().bump_sled(keys::CLEAN_KEY.len() + 1);
        self.flush_blocking()
    }

    /// Whether the last close was clean; clears the mark (durably) so that a crash from now on is
    /// seen as one, and forgets the queue counts it vouched for.
    pub fn take_clean_shutdown(&self) -> Result<bool> {
        let was = self.db().remove(keys::CLEAN_KEY)?.is_some();
        self.sh().bump_sled(keys::CLEAN_KEY.len());
        self.flush_blocking()?;
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

    fn remove_prefix(&self, prefix: &[u8]) -> Result<u64> {
        let mut end = prefix.to_vec();
        end.extend_from_slice(&[0xFF; keys::MSG_KEY_LEN]);
        self.remove_range(prefix, &end)
    }

    /// Removes the keys in `start..=end` in sled batches of `DELETE_CHUNK`.
    fn remove_range(&self, start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> Result<u64> {
        let (start, end) = (start.as_ref(), end.as_ref());
        let mut removed = 0u64;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for k in self.db().range(start..=end).keys().take(DELETE_CHUNK) {
                batch.remove(k?);
                n += 1;
            }
            if n == 0 {
                return Ok(removed);
            }
            self.db().apply_batch(batch)?;
            removed += n as u64;
            self.sh().bump_sled(n * keys::MSG_KEY_LEN);
        }
    }

    /// Delivered marks of queues that have no record, and state keys of messages that are gone
    /// (their queue was deleted, or the message was deleted and the state removal was lost in a
    /// crash), are removed at open. The state keys of live messages are noted in the log index.
    fn remove_orphan_state(&self, known: &HashSet<u32>) -> Result<()> {
        for k in self.db().scan_prefix([keys::DELIVERED_MARK]).keys() {
            let k = k?;
            let q = be::exact_u32(&k[1..]);
            if matches!(q, Some(q) if !known.contains(&q)) {
                self.remove_raw(k.to_vec())?;
            }
        }
        let mut stale = sled::Batch::default();
        let mut n = 0;
        for k in self.db().scan_prefix([MSG_STATE]).keys() {
            let k = k?;
            let live = keys::parse_msg_key(&k)
                .is_some_and(|(q, seq)| known.contains(&q) && self.sh().log.note_state(q, seq));
            if !live {
                stale.remove(k);
                n += 1;
            }
        }
        if n > 0 {
            self.db().apply_batch(stale)?;
            self.sh().bump_sled(n * keys::MSG_KEY_LEN);
            tracing::info!(keys = n, "removed state keys of messages that are gone");
        }
        Ok(())
    }

    // --- durability ---------------------------------------------------------------------------

    /// Receives the highest ticket known durable. Await `wait_for(|d| *d >= ticket)`.
    pub fn durable_watch(&self) -> watch::Receiver<u64> {
        self.sh().durable_tx.subscribe()
    }

    /// Block the calling thread until `ticket` is durable (for non-async callers, tools and
    /// tests; async code awaits `durable_watch().wait_for(|d| *d >= ticket)` instead).
    pub fn wait_durable_blocking(&self, ticket: u64) {
        let mut rx = self.durable_watch();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = block_on(rx.wait_for(|d| *d >= ticket));
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

    /// Flush on the calling thread and wait: every write whose call returned before this call
    /// is durable when it returns Ok, and the watch is advanced accordingly. Blocking.
    pub fn flush_blocking(&self) -> Result<()> {
        self.sh().flush_now()
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
            durable: *sh.durable_tx.borrow(),
            flush_errors: sh.flush_errors.load(SeqCst),
        }
    }

    /// Disk space allocated to the store directory (like `du`: allocated blocks, all files).
    pub fn size_on_disk(&self) -> Result<u64> {
        dir_allocated_bytes(&self.inner.dir)
    }

    /// sled's own figure: apparent length of its files (the log file is sparse-free, so this is
    /// close to `size_on_disk` minus our LOCK file).
    pub fn sled_size_on_disk(&self) -> Result<u64> {
        Ok(self.db().size_on_disk()?)
    }
}

fn list_records<T: for<'a> Deserialize<'a>>(db: &sled::Db, tag: u8, what: &str) -> Result<Vec<T>> {
    db.scan_prefix([tag])
        .map(|kv| {
            let (_, v) = kv?;
            codec::decode(what, &v)
        })
        .collect()
}

/// Wait (up to `timeout`) until nobody holds sled's flock on `sled_dir/db`. Returns whether it
/// is free (or absent).
fn wait_sled_lock_free(sled_dir: &Path, timeout: Duration) -> bool {
    let f = match File::open(sled_dir.join("db")) {
        Ok(f) => f,
        Err(_) => return true,
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match f.try_lock() {
            Ok(()) => return true, // unlocked when `f` is closed
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => return false,
        }
    }
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
