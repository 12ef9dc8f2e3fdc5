//! A virtual host: its router (exchanges and bindings) and its queues.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use router::Router;

use crate::error::AmqpError;
use crate::queue::{Queue, QueueSpec};

pub struct VHost {
    pub name: Arc<str>,
    /// Exchanges and bindings. Publishers route under the read lock; edits take the write lock briefly, so a
    /// publish sees either the old or the new binding set, never a torn one.
    pub router: RwLock<Router>,
    queues: RwLock<HashMap<Arc<str>, Arc<Queue>>>,
}

impl VHost {
    pub fn new(name: &str) -> VHost {
        VHost {
            name: name.into(),
            router: RwLock::new(Router::new(name)),
            queues: RwLock::new(HashMap::new()),
        }
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    pub fn queue_or_404(&self, name: &str) -> Result<Arc<Queue>, AmqpError> {
        self.queue(name).ok_or_else(|| self.no_queue(name))
    }

    pub fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{}' in vhost '{}'", name, self.name))
    }

    /// Returns the existing queue (false) or creates it from `spec` (true).
    pub fn declare_queue(&self, spec: QueueSpec) -> (Arc<Queue>, bool) {
        let mut queues = self.queues.write();
        if let Some(q) = queues.get(&spec.name) {
            return (q.clone(), false);
        }
        let name = spec.name.clone();
        let q = Arc::new(Queue::new(spec));
        queues.insert(name.clone(), q.clone());
        drop(queues);
        self.router.write().declare_queue(name);
        (q, true)
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
        self.router.write().delete_queue(queue.name());
        queue.mark_deleted()
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
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
}
