//! Server-generated names in RabbitMQ's style: `amq.gen-…` for queues, `amq.ctag-…` for consumer tags.

use rand::RngCore;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url of 16 random bytes without padding (22 characters), as RabbitMQ's `rabbit_guid:binary/2`.
fn random_suffix() -> String {
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    let mut out = String::with_capacity(22);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in raw {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

pub fn queue_name() -> String {
    format!("amq.gen-{}", random_suffix())
}

/// A direct reply-to name: `amq.rabbitmq.reply-to.` and a random token (opaque to clients, as RabbitMQ's).
pub fn reply_to_name() -> String {
    format!("amq.rabbitmq.reply-to.{}", random_suffix())
}

pub fn consumer_tag() -> String {
    format!("amq.ctag-{}", random_suffix())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_look_like_rabbitmq() {
        let q = super::queue_name();
        assert!(q.starts_with("amq.gen-") && q.len() == 8 + 22, "{q}");
        assert_ne!(q, super::queue_name());
        assert!(super::consumer_tag().starts_with("amq.ctag-"));
    }
}
