//! Terminal printer: one compact line per span, or JSON lines.
//! Implementation pending.
