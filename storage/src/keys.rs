//! Hand-encoded keys. Every integer is big-endian so that sled's lexicographic byte order is the
//! numeric order; every string inside a composite key is `[len u32 BE][utf-8 bytes]` so that two
//! different tuples can never encode to the same bytes. See docs/storage-format.md.

/// Store metadata (schema version, counters). Keys: `[0x00][ascii name]`.
pub(crate) const META: u8 = 0x00;
pub(crate) const VHOST: u8 = 0x01;
pub(crate) const USER: u8 = 0x02;
pub(crate) const EXCHANGE: u8 = 0x03;
pub(crate) const QUEUE: u8 = 0x04;
pub(crate) const BINDING: u8 = 0x05;
/// `[0x06] str(vhost) str(user)` -> postcard `PermissionRecord` (added without a schema bump: older
/// builds never read this tag).
pub(crate) const PERMISSION: u8 = 0x06;
/// `[0x07] str(vhost) str(name)` -> postcard `PolicyRecord` (likewise).
pub(crate) const POLICY: u8 = 0x07;
/// `[0x08] str(vhost)` -> postcard `VhostMetaRecord` (description, tags, default queue type).
pub(crate) const VHOST_META: u8 = 0x08;
// 0x10 held messages up to schema version 1; they now live in the segment log (`seglog`).
/// `[0x11][queue id u32 BE][seq u64 BE]` -> postcard `MessageState`.
pub(crate) const MSG_STATE: u8 = 0x11;

/// `[0x12][queue id u32 BE]` -> u64 BE: the highest seq that may have been delivered (see
/// `Store::set_delivered_mark`).
pub(crate) const DELIVERED_MARK: u8 = 0x12;

/// `[0x13][queue id u32 BE][consumer tag utf-8]` -> u64 BE: a stream consumer's last acked offset
/// (server-side offset tracking).
pub(crate) const STREAM_OFFSET: u8 = 0x13;

/// `[0x20][kind u8][vhost][name][item]`: state of an exchange or queue (`entity_state.rs`).
pub(crate) const ENTITY_STATE: u8 = 0x20;

/// `[0x21][bucket id u32 BE]` -> postcard `QueueRecord` of a delayed-message bucket (`delayed.rs`).
pub(crate) const DELAYED_BUCKET: u8 = 0x21;

// 0x30..=0x38: message tracing's event batches, indexes, filters and vhost flags (`trace.rs`; 0x30..=0x32
// the first format, no longer written).

/// Present (value `[1]`) while the store is closed cleanly with its queue counts written.
pub(crate) const CLEAN_KEY: &[u8] = b"\x00clean_shutdown";

pub(crate) const SCHEMA_KEY: &[u8] = b"\x00schema_version";
pub(crate) const QUEUE_ID_KEY: &[u8] = b"\x00next_queue_id";

pub(crate) const MSG_KEY_LEN: usize = 13;

/// Builder for composite definition keys.
pub(crate) struct Key(Vec<u8>);

impl Key {
    pub(crate) fn new(tag: u8) -> Key {
        let mut v = Vec::with_capacity(64);
        v.push(tag);
        Key(v)
    }

    pub(crate) fn str(self, s: &str) -> Key {
        self.bytes(s.as_bytes())
    }

    pub(crate) fn bytes(mut self, b: &[u8]) -> Key {
        let len = u32::try_from(b.len()).expect("key component longer than 4 GiB");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }

    pub(crate) fn u8(mut self, b: u8) -> Key {
        self.0.push(b);
        self
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// `[tag][queue id u32 BE][seq u64 BE]`, for `MSG_STATE`.
pub(crate) fn msg_key(tag: u8, queue_id: u32, seq: u64) -> [u8; MSG_KEY_LEN] {
    let mut k = [0u8; MSG_KEY_LEN];
    k[0] = tag;
    k[1..5].copy_from_slice(&queue_id.to_be_bytes());
    k[5..13].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `[tag][queue id u32 BE]`: the prefix shared by every key of one queue.
pub(crate) fn queue_prefix(tag: u8, queue_id: u32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = tag;
    k[1..5].copy_from_slice(&queue_id.to_be_bytes());
    k
}

/// Decode a message state key into (queue id, seq).
pub(crate) fn parse_msg_key(k: &[u8]) -> Option<(u32, u64)> {
    if k.len() != MSG_KEY_LEN {
        return None;
    }
    Some((crate::be::u32_at(k, 1), crate::be::u64_at(k, 5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_numerically() {
        let pairs = [
            (0u32, 0u64),
            (0, 1),
            (0, 255),
            (0, 256),
            (0, 65_535),
            (0, 65_536),
            (0, u32::MAX as u64),
            (0, u32::MAX as u64 + 1),
            (0, u64::MAX),
            (1, 0),
            (255, 7),
            (256, 0),
            (u32::MAX, u64::MAX),
        ];
        for w in pairs.windows(2) {
            let a = msg_key(MSG_STATE, w[0].0, w[0].1);
            let b = msg_key(MSG_STATE, w[1].0, w[1].1);
            assert!(a < b, "{:?} !< {:?}", w[0], w[1]);
            assert_eq!(parse_msg_key(&a), Some(w[0]));
        }
    }

    #[test]
    fn composite_keys_do_not_collide() {
        let a = Key::new(EXCHANGE).str("ab").str("c").into_vec();
        let b = Key::new(EXCHANGE).str("a").str("bc").into_vec();
        assert_ne!(a, b);
    }
}
