//! What the checks found, per client, and the byte excerpts their messages
//! quote.
use std::fmt::Write as _;

/// What one client's traffic came to.
#[derive(Default)]
pub struct Tally {
    pub requests: u64,
    pub connections: u64,
    pub injected: u64,
    /// Connections whose close waited out the client's timeout although
    /// every byte had arrived (counted, not failed, where the agent keeps
    /// sockets in its sockmap: see `KEEPS_SOCKETS`).
    pub close_stalls: u64,
    /// (family, message): the family groups failures of one kind of case.
    pub failures: Vec<(String, String)>,
}

impl Tally {
    pub fn fail(&mut self, family: impl Into<String>, msg: String) {
        self.failures.push((family.into(), msg));
    }
}

/// Bytes around `at`, escaped, with `|` at `at`.
pub fn snippet(b: &[u8], at: usize) -> String {
    let lo = at.saturating_sub(24);
    let hi = (at + 72).min(b.len());
    let mut s = String::from("\"");
    for (i, &c) in b[lo..hi].iter().enumerate() {
        if lo + i == at {
            s.push('|');
        }
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    if at >= hi {
        s.push('|');
    }
    s.push('"');
    if hi < b.len() {
        s.push_str("...");
    }
    s
}

/// A path cut short for messages.
pub fn short(p: &str) -> String {
    if p.len() > 60 {
        format!("{}...({} bytes)", &p[..40], p.len())
    } else {
        p.to_owned()
    }
}
