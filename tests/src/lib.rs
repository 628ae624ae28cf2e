//! Helpers for waggle's end-to-end tests. Implementation pending.
