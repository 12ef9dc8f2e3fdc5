//! The ring order of durable `x-consistent-hash` exchanges, kept in the store beside their bindings
//! (`storage::StateKind::RingOrder`): bindings come back from the store in key order, not in the order
//! they were made, and the ring's order decides which queue each key reaches, so without it a restart
//! could move keys between queues. Encoding: per destination `[kind u8: 1 queue, 2 exchange][len u32 BE]
//! [name bytes]`.

use router::{Destination, Router};
use storage::{StateKind, Store};

fn encode(order: &[Destination]) -> Vec<u8> {
    let mut v = Vec::new();
    for d in order {
        let (k, n) = match d {
            Destination::Queue(n) => (1u8, n),
            Destination::Exchange(n) => (2u8, n),
        };
        v.push(k);
        v.extend_from_slice(&(n.len() as u32).to_be_bytes());
        v.extend_from_slice(n.as_bytes());
    }
    v
}

fn decode(mut b: &[u8]) -> Vec<Destination> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        let Some(name) = b.get(5..5 + len) else { break };
        let name = String::from_utf8_lossy(name);
        out.push(match b[0] {
            1 => Destination::Queue(name.as_ref().into()),
            _ => Destination::Exchange(name.as_ref().into()),
        });
        b = &b[5 + len..];
    }
    out
}

/// Stores the ring order of `exchange` if it is a durable consistent-hash exchange; returns the ticket
/// (0: nothing written).
pub fn save(store: &Store, router: &Router, vhost: &str, exchange: &str) -> Result<u64, storage::StoreError> {
    match (router.exchange(exchange), router.ring_order(exchange)) {
        (Some(x), Some(order)) if x.durable => {
            store.put_entity_state(StateKind::RingOrder, vhost, exchange, b"", encode(&order))
        }
        _ => Ok(0),
    }
}

/// Puts the stored ring order of every consistent-hash exchange of `vhost` back (after recovery bound).
pub fn restore(store: &Store, router: &mut Router, vhost: &str) {
    let names: Vec<String> = router
        .exchanges()
        .filter(|x| router.ring_order(&x.name).is_some())
        .map(|x| x.name.to_string())
        .collect();
    for x in names {
        match store.entity_state(StateKind::RingOrder, vhost, &x) {
            Ok(items) => {
                if let Some((_, v)) = items.first() {
                    router.restore_ring_order(&x, &decode(v));
                }
            }
            Err(e) => tracing::warn!(exchange = x, error = %e, "could not read a consistent-hash ring order"),
        }
    }
}

/// Forgets the ring order of a deleted exchange.
pub fn forget(store: &Store, vhost: &str, exchange: &str) {
    if let Err(e) = store.delete_entity_state(StateKind::RingOrder, vhost, exchange) {
        tracing::warn!(exchange, error = %e, "could not remove a consistent-hash ring order");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_round_trips() {
        let o = vec![
            Destination::Queue("q1".into()),
            Destination::Exchange("x".into()),
            Destination::Queue("".into()),
        ];
        assert_eq!(decode(&encode(&o)), o);
    }
}
