//! The Mailroom broker.
