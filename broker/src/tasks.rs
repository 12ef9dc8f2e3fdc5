//! Operator tasks of the management API (issue 14): message moves ("redrive as a task", SQS's
//! StartMessageMoveTask semantics). This module holds the records and the registry the broker keeps
//! (`Broker::tasks`); `redrive_task.rs` runs them and writes them to the store.
//!
//! A record is stored (sled, `storage::StateKind::Task`, JSON) at creation, after every batch, and when the
//! task ends, so a restart finds every task and resumes the ones that were running.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Running,
    Done,
    Cancelled,
    Failed,
}

/// A batch of moves whose outcome is not recorded yet: the source seqs being moved and, for each target
/// queue, the seq its next message was to get when the batch started (copies land at or after it). After a
/// crash, the copies found there (by their `x-mailroom-redrive` header) are not moved again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub seqs: Vec<u64>,
    pub marks: Vec<(String, u64)>,
}

/// A message-move task as stored and as the API shows it (`pending` is not shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: u64,
    pub kind: String,
    pub vhost: String,
    pub source: String,
    /// `None`: each message goes back to the queue it last died in (its `x-death`).
    pub destination: Option<String>,
    pub state: TaskState,
    pub moved: u64,
    /// Messages looked at and left in the source (no destination, or the destination refused them).
    pub kept: u64,
    /// Messages the task set out to move (the source's ready messages at the start, or `count`, or the
    /// number of `message_ids`).
    pub total: u64,
    /// Messages per second at most.
    pub rate_limit: Option<u64>,
    pub count: Option<u64>,
    pub message_ids: Option<Vec<String>>,
    /// ms since the epoch.
    pub started: u64,
    pub finished: Option<u64>,
    pub error: Option<String>,
    #[serde(default)]
    pub pending: Option<Pending>,
}

impl TaskRecord {
    /// The API's JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.remove("pending");
        }
        v
    }
}

/// A task the broker knows: its record (the runner updates it) and its cancel flag.
pub struct TaskSlot {
    pub record: Mutex<TaskRecord>,
    pub cancel: AtomicBool,
}

impl TaskSlot {
    pub fn snapshot(&self) -> TaskRecord {
        self.record.lock().clone()
    }

    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// Every task of the broker, by id.
#[derive(Default)]
pub struct Tasks {
    by_id: Mutex<BTreeMap<u64, Arc<TaskSlot>>>,
    next_id: AtomicU64,
}

impl Tasks {
    /// A fresh id (above every id seen).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn insert(&self, record: TaskRecord) -> Arc<TaskSlot> {
        self.next_id.fetch_max(record.id, Ordering::SeqCst);
        let slot = Arc::new(TaskSlot {
            record: Mutex::new(record.clone()),
            cancel: AtomicBool::new(false),
        });
        self.by_id.lock().insert(record.id, slot.clone());
        slot
    }

    pub fn get(&self, id: u64) -> Option<Arc<TaskSlot>> {
        self.by_id.lock().get(&id).cloned()
    }

    pub fn list(&self) -> Vec<TaskRecord> {
        let slots: Vec<Arc<TaskSlot>> = self.by_id.lock().values().cloned().collect();
        slots.iter().map(|s| s.snapshot()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_ids_stay_above_those_seen() {
        let tasks = Tasks::default();
        let r = TaskRecord {
            id: 7,
            kind: "message_move".into(),
            vhost: "/".into(),
            source: "dlq".into(),
            destination: None,
            state: TaskState::Running,
            moved: 1,
            kept: 0,
            total: 3,
            rate_limit: Some(5),
            count: None,
            message_ids: None,
            started: 1,
            finished: None,
            error: None,
            pending: Some(Pending {
                seqs: vec![4],
                marks: vec![("q".into(), 9)],
            }),
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<TaskRecord>(&bytes).unwrap(), r);
        let json = r.to_json();
        assert_eq!(json["state"], "running");
        assert!(json.get("pending").is_none());
        tasks.insert(r);
        assert_eq!(tasks.next_id(), 8);
        assert_eq!(tasks.list().len(), 1);
        assert!(tasks.get(7).is_some_and(|s| !s.cancelled()));
    }
}
