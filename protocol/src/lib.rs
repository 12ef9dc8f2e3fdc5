//! protocol crate (skeleton; filled by its issue).
