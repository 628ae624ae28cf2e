//! Connection tracking. Implementation pending.
