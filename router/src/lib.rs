//! router crate (skeleton; filled by its issue).
