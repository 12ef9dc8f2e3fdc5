//! Small state that belongs to an exchange or a queue, beside its definition in sled: a consistent-hash
//! exchange's ring order, the entries of a deduplication window. Keys (tag `0x20`):
//! `[0x20][kind u8][vhost: len u32 BE, bytes][name: len u32 BE, bytes][item: raw bytes]`, so the items of
//! one entity are one prefix. Values are opaque bytes. Written like any other sled write (a ticket, made
//! durable by the next flush round); removed with their entity by the broker
//! (`Store::delete_entity_state`).

use crate::keys::{Key, ENTITY_STATE};
use crate::{Result, Store};

/// What an entity-state item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StateKind {
    /// A consistent-hash exchange's ring order (one item, empty item key).
    RingOrder = 1,
    /// A deduplication exchange's window: item key = the deduplication value, value = expiry (ms) u64 BE.
    ExchangeDedup = 2,
    /// A deduplicating queue's window, as `ExchangeDedup`.
    QueueDedup = 3,
    /// Operator tasks of the management API (message moves): vhost and name empty, item key = the task
    /// id u64 BE, value = the task's record (the broker's encoding).
    Task = 4,
}

fn prefix(kind: StateKind, vhost: &str, name: &str) -> Vec<u8> {
    Key::new(ENTITY_STATE)
        .u8(kind as u8)
        .str(vhost)
        .str(name)
        .into_vec()
}

/// One change of `Store::apply_entity_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOp<'a> {
    Put(&'a [u8], Vec<u8>),
    Remove(&'a [u8]),
}

impl Store {
    /// Applies puts and removals of one entity's items in one sled batch; one ticket.
    pub fn apply_entity_state(
        &self,
        kind: StateKind,
        vhost: &str,
        name: &str,
        ops: &[StateOp],
    ) -> Result<u64> {
        let p = prefix(kind, vhost, name);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for op in ops {
            let mut k = p.clone();
            match op {
                StateOp::Put(item, v) => {
                    k.extend_from_slice(item);
                    n += k.len() + v.len();
                    batch.insert(k, v.clone());
                }
                StateOp::Remove(item) => {
                    k.extend_from_slice(item);
                    n += k.len();
                    batch.remove(k);
                }
            }
        }
        self.sh().sled.write(|db| db.apply_batch(batch))?;
        Ok(self.sh().bump(n))
    }

    /// Puts one item.
    pub fn put_entity_state(
        &self,
        kind: StateKind,
        vhost: &str,
        name: &str,
        item: &[u8],
        value: Vec<u8>,
    ) -> Result<u64> {
        self.apply_entity_state(kind, vhost, name, &[StateOp::Put(item, value)])
    }

    /// Every item of one entity, in item-key order.
    pub fn entity_state(&self, kind: StateKind, vhost: &str, name: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let p = prefix(kind, vhost, name);
        self.sh().sled.read(|db| {
            db.scan_prefix(&p)
                .map(|r| r.map(|(k, v)| (k[p.len()..].to_vec(), v.to_vec())))
                .collect::<sled::Result<Vec<_>>>()
        })
    }

    /// Removes every item of one entity (when it is deleted).
    pub fn delete_entity_state(&self, kind: StateKind, vhost: &str, name: &str) -> Result<u64> {
        let p = prefix(kind, vhost, name);
        let n = self.sh().sled.write(|db| {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for k in db.scan_prefix(&p).keys() {
                batch.remove(k?);
                n += 1;
            }
            db.apply_batch(batch)?;
            Ok(n)
        })?;
        Ok(self.sh().bump(n * p.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    #[test]
    fn items_are_kept_per_entity_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            s.put_entity_state(
                StateKind::QueueDedup,
                "/",
                "q",
                b"k1",
                5u64.to_be_bytes().to_vec(),
            )
            .unwrap();
            s.apply_entity_state(
                StateKind::QueueDedup,
                "/",
                "q",
                &[
                    StateOp::Put(b"k2", vec![1]),
                    StateOp::Put(b"k3", vec![2]),
                    StateOp::Remove(b"k1"),
                ],
            )
            .unwrap();
            // Another entity whose name is a prefix of this one's does not mix in.
            s.put_entity_state(StateKind::QueueDedup, "/", "qq", b"k9", vec![9])
                .unwrap();
            s.put_entity_state(StateKind::ExchangeDedup, "/", "q", b"k8", vec![8])
                .unwrap();
            let t = s
                .put_entity_state(StateKind::RingOrder, "/", "x", b"", b"order".to_vec())
                .unwrap();
            s.wait_durable_blocking(t).unwrap();
        }
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let items = s.entity_state(StateKind::QueueDedup, "/", "q").unwrap();
        assert_eq!(items, vec![(b"k2".to_vec(), vec![1]), (b"k3".to_vec(), vec![2])]);
        assert_eq!(
            s.entity_state(StateKind::RingOrder, "/", "x").unwrap()[0].1,
            b"order"
        );
        s.delete_entity_state(StateKind::QueueDedup, "/", "q").unwrap();
        assert!(s
            .entity_state(StateKind::QueueDedup, "/", "q")
            .unwrap()
            .is_empty());
        assert_eq!(s.entity_state(StateKind::QueueDedup, "/", "qq").unwrap().len(), 1);
        assert_eq!(
            s.entity_state(StateKind::ExchangeDedup, "/", "q").unwrap().len(),
            1
        );
    }
}
