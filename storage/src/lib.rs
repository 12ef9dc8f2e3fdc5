//! storage crate (skeleton; filled by its issue).
