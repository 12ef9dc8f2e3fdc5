//! Opening a data directory (`Store::open`): creating it durably, locking it, opening sled, checking
//! that the definitions and the messages agree, recovering the message log; and the operator's
//! tools for what recovery set aside (`Store::lost_found`, `Store::attach_lost`).

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::fault::Faults;
use crate::flusher::{flusher_loop, RoundState, Shared, WakeState};
use crate::keys::{self, Key, QUEUE};
use crate::seglog::{self, MsgLog};
use crate::sleddb::{Opened, SledConfig, SledDb};
use crate::store::{list_records, Inner};
use crate::{be, codec, io_err, QueueRecord, Result, Store, StoreError, StoreOptions, SCHEMA_VERSION};

/// Where recovery puts what it cannot account for, inside the data directory.
pub const LOST_FOUND: &str = "lost+found";

/// A queue directory recovery moved aside (`Store::lost_found`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostQueue {
    pub path: PathBuf,
    /// The queue id it had.
    pub queue_id: u32,
    /// Its definition copy, if it had a readable one.
    pub definition: Option<QueueRecord>,
    /// Messages in it that can be re-attached.
    pub messages: u64,
}

/// What `Store::attach_lost` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub queue_id: u32,
    /// Whether the queue was created (it did not exist).
    pub created: bool,
    pub messages: u64,
}

/// `create_dir_all`, then fsync of the parent of every directory it created (so that a data
/// directory made at first start survives a power cut).
fn create_dir_durably(dir: &Path, faults: &Faults) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            seglog::sync_dir(parent, faults)?;
        }
    }
    Ok(())
}

impl Store {
    /// Open (or create) the store in `dir`. Creates the directory if missing (durably), locks it,
    /// opens sled under `dir/sled` (making a new one durable), checks the schema version, and
    /// loads the message log under `dir/messages` (docs/storage-format.md, "Recovery").
    ///
    /// A definitions store that is empty or unreadable while message data exists is refused
    /// (`StoreError::DefinitionsLost`) unless `opts.force_recovery` is set: then queues are
    /// restored from their definition copies and whatever cannot be accounted for is moved to
    /// `dir/lost+found`, never deleted.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store> {
        Self::open_with_faults(dir, opts, Arc::new(Faults::default()))
    }

    pub(crate) fn open_with_faults(dir: &Path, opts: StoreOptions, faults: Arc<Faults>) -> Result<Store> {
        create_dir_durably(dir, &faults)?;
        let lock_path = dir.join("LOCK");
        let new_lock = !lock_path.exists();
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
        if new_lock {
            seglog::sync_dir(dir, &faults)?;
        }
        let lost = dir.join(LOST_FOUND);
        let messages = dir.join("messages");
        let config = SledConfig {
            cache_capacity_bytes: opts.cache_capacity_bytes,
            flush_interval_ms: opts.flush_interval_ms,
        };
        let sled = match SledDb::open(dir, config.clone(), faults.clone())? {
            Opened::Ok(s) => *s,
            Opened::Corrupt(reason) => {
                let queues = seglog::has_message_data(&messages)?;
                if !opts.force_recovery {
                    return Err(StoreError::DefinitionsLost {
                        dir: dir.to_path_buf(),
                        state: format!("unreadable ({reason})"),
                        queues,
                    });
                }
                let to = SledDb::move_aside(dir, &lost, &faults)?;
                tracing::error!(
                    error = %reason,
                    moved_to = %to.display(),
                    "--force-recovery: the definitions store was unreadable; it was moved aside and \
                     a new one is made (queues come back from their definition copies; exchanges, \
                     bindings and their other definitions are lost)"
                );
                match SledDb::open(dir, config, faults.clone())? {
                    Opened::Ok(s) => *s,
                    Opened::Corrupt(e) => return Err(StoreError::Corrupt(e)),
                }
            }
        };

        debug_assert_eq!(keys::SCHEMA_KEY[0], keys::META);
        match sled.read(|db| db.get(keys::SCHEMA_KEY))? {
            Some(v) => {
                let found = be::exact_u32(&v)
                    .ok_or_else(|| StoreError::Corrupt("schema version record is malformed".into()))?;
                if found == 2 {
                    // 3 adds the round mark to stream records (stream/format.rs, `ROUND_MARK`): a store of
                    // version 2 reads as it is, but a build of version 2 would take a marked record for
                    // garbage and cut the stream there, so from now on the store says 3 and such a build
                    // refuses it
                    sled.write(|db| db.insert(keys::SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes()))?;
                    sled.sync()?;
                    tracing::info!(
                        from = found,
                        to = SCHEMA_VERSION,
                        "store schema version upgraded (stream records may carry the round mark; \
                         older builds refuse this store)"
                    );
                } else if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaVersion {
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
            None => {
                if sled.read(|db| Ok(db.iter().next().is_some()))? {
                    return Err(StoreError::Corrupt(
                        "the store holds data but has no schema version record".into(),
                    ));
                }
                let queues = seglog::has_message_data(&messages)?;
                if queues > 0 {
                    if !opts.force_recovery {
                        return Err(StoreError::DefinitionsLost {
                            dir: dir.to_path_buf(),
                            state: "empty".into(),
                            queues,
                        });
                    }
                    tracing::error!(
                        queues,
                        "--force-recovery: the definitions store is empty but message data exists; \
                         queues come back from their definition copies (exchanges, bindings and \
                         their other definitions are lost)"
                    );
                }
                sled.write(|db| db.insert(keys::SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes()))?;
                sled.sync()?;
            }
        }

        let mut records: Vec<QueueRecord> = sled.read(|db| Ok(list_records(db, QUEUE, "queue")))??;
        // Delayed-message buckets are message directories too (delayed.rs).
        records.extend(sled.read(|db| Ok(crate::delayed::bucket_records(db)))??);
        let known: HashMap<u32, QueueRecord> = records.into_iter().map(|q| (q.id, q)).collect();
        let (log, recovery) = MsgLog::open(&messages, opts.segment_bytes, &known, &lost, faults.clone())?;

        let (streams, stream_recovery) =
            crate::stream::StreamLog::open(&dir.join("streams"), &known, &lost, faults.clone())?;
        if stream_recovery.streams > 0 {
            tracing::debug!(?stream_recovery, "streams opened");
        }
        let (durable_tx, _) = watch::channel(Default::default());
        let shared = Arc::new(Shared {
            sled,
            log,
            streams,
            faults,
            round: Mutex::new(RoundState::default()),
            ticket: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            flush_latency: Default::default(),
            sync_pool: crate::sync_pool::SyncPool::new("mailroom-sync"),
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
            delayed_wake: Default::default(),
            sleeping: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
        });
        SledDb::start_writeout(&shared)?;
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

        let mut ids: HashSet<u32> = known.keys().copied().collect();
        for r in &recovery.restored {
            let key = if crate::delayed::is_bucket(r) {
                crate::delayed::bucket_record_key(r.id)
            } else {
                Key::new(QUEUE).str(&r.vhost).str(&r.name).into_vec()
            };
            store.put_raw(key, codec::encode(r)?)?;
            ids.insert(r.id);
            tracing::warn!(
                queue = r.name,
                vhost = r.vhost,
                queue_id = r.id,
                "restored a queue's definition from its copy beside its messages (the definitions \
                 store had lost it)"
            );
        }
        // Queue ids are never reused: the counter must be above every id that exists.
        if let Some(&max) = ids.iter().max() {
            let cur = store
                .sh()
                .sled
                .read(|db| db.get(keys::QUEUE_ID_KEY))?
                .and_then(|v| be::exact_u32(&v))
                .unwrap_or(0);
            if max > cur {
                store.put_raw(keys::QUEUE_ID_KEY.to_vec(), max.to_be_bytes().to_vec())?;
            }
        }
        for (id, path) in &recovery.moved_aside {
            tracing::error!(
                queue_id = id,
                path = %path.display(),
                "message data of a queue that has no definition was moved aside, not deleted; \
                 to put its messages into a queue, stop the broker and run \
                 `mailroom recover attach --data-dir {} {} --vhost VHOST --queue NAME` \
                 (`mailroom recover list` shows what is there)",
                dir.display(),
                path.display()
            );
        }
        for id in &recovery.undeleted {
            tracing::warn!(
                queue_id = id,
                "a queue deletion had not become durable before the stop: the queue is kept"
            );
        }
        if recovery.truncated_files > 0 {
            tracing::warn!(
                files = recovery.truncated_files,
                bytes = recovery.truncated_bytes,
                "cut torn tails off message files back to their last whole record (writes a crash or \
                 power cut interrupted; none of them had been confirmed)"
            );
        }
        if recovery.damaged_regions > 0 {
            tracing::error!(
                regions = recovery.damaged_regions,
                bytes = recovery.damaged_bytes,
                "skipped damaged records in the middle of message files (see the lines above for \
                 the files)"
            );
        }
        store.remove_orphan_state(&ids)?;
        if recovery.scanned_segments > 0
            || recovery.defs_written > 0
            || !recovery.restored.is_empty()
            || store.current_ticket() > 0
        {
            // new footers, definition copies, restored records
            store.flush_blocking()?;
        }
        Ok(store)
    }

    /// The queue directories recovery moved to `lost+found`, with what they hold.
    pub fn lost_found(&self) -> Result<Vec<LostQueue>> {
        let lost = self.inner.dir.join(LOST_FOUND);
        let rd = match fs::read_dir(&lost) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&lost)(e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(io_err(&lost))?;
            let name = e.file_name().to_string_lossy().to_string();
            let Some(id) = name
                .strip_prefix("queue-")
                .and_then(|r| r.get(..8))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let path = e.path();
            let contents = seglog::read_lost(&path, id)?;
            out.push(LostQueue {
                path,
                queue_id: id,
                definition: contents.definition,
                messages: contents.messages.len() as u64,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Appends the messages of a directory in `lost+found` to queue `name` of `vhost` (created,
    /// durable, with the lost directory's arguments if it had a definition copy, if it does not
    /// exist), durably, then removes the directory. For the operator's `mailroom recover attach`,
    /// with the broker stopped.
    pub fn attach_lost(&self, path: &Path, vhost: &str, name: &str) -> Result<Attached> {
        let dir_name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let id = dir_name
            .strip_prefix("queue-")
            .and_then(|r| r.get(..8))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                StoreError::Corrupt(format!("{} is not a lost+found queue directory", path.display()))
            })?;
        let contents = seglog::read_lost(path, id)?;
        let existing = self
            .queues()?
            .into_iter()
            .find(|q| q.vhost == vhost && q.name == name);
        let (qid, created) = match existing {
            Some(q) => (q.id, false),
            None => {
                let id = self.next_queue_id()?;
                let arguments = contents
                    .definition
                    .as_ref()
                    .map(|d| d.arguments.clone())
                    .unwrap_or_default();
                let rec = QueueRecord {
                    id,
                    vhost: vhost.to_string(),
                    name: name.to_string(),
                    durable: true,
                    exclusive: false,
                    auto_delete: false,
                    arguments,
                };
                self.put_queue(&rec)?;
                (id, true)
            }
        };
        let mut seq = self.queue_bounds(qid)?.map_or(1, |(_, last)| last + 1);
        let n = contents.messages.len() as u64;
        for chunk in contents.messages.chunks(256) {
            let items: Vec<(u32, u64, &crate::StoredMessage)> = chunk
                .iter()
                .map(|(_, m)| {
                    seq += 1;
                    (qid, seq - 1, m)
                })
                .collect();
            self.append_messages(&items)?;
        }
        let t = self.current_ticket();
        self.flush_blocking()?;
        self.ticket_state_ok(t)?;
        fs::remove_dir_all(path).map_err(io_err(path))?;
        if let Some(parent) = path.parent() {
            seglog::sync_dir(parent, &self.sh().faults)?;
        }
        Ok(Attached {
            queue_id: qid,
            created,
            messages: n,
        })
    }

    fn ticket_state_ok(&self, t: u64) -> Result<()> {
        match self.ticket_state(t) {
            crate::TicketState::Durable => Ok(()),
            _ => Err(self.not_durable(t)),
        }
    }
}
