//! What the checks allow and require: the line the kernel may insert, what
//! the running agent promised about keep-alive requests, and the run's
//! environment switches (control run without agent, case filter).

/// `traceparent: 00-<32>-<16>-<2>\r\n`.
pub const LINE_LEN: usize = 70;

/// `traceparent: 00-<32 hex>-<16 hex>-<2 hex>\r\n` with non-zero ids, as
/// the kernel writes it.
pub fn is_injected_line(b: &[u8]) -> bool {
    if b.len() < LINE_LEN || !b.starts_with(b"traceparent: 00-") || &b[LINE_LEN - 2..LINE_LEN] != b"\r\n" {
        return false;
    }
    let v = &b[13..LINE_LEN - 2];
    let hex = |s: &[u8]| s.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    v.len() == 55
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && hex(&v[36..52])
        && hex(&v[53..55])
        && v[3..35].iter().any(|&c| c != b'0')
        && v[36..52].iter().any(|&c| c != b'0')
}

/// `WAGGLE_INTEGRITY_CASES`: run only the raw cases and high-level clients
/// whose name contains it (see the module doc).
pub fn case_filter() -> Option<String> {
    std::env::var("WAGGLE_INTEGRITY_CASES").ok().filter(|f| !f.is_empty())
}

/// The agent keeps client sockets in its sockmap for their lifetime (it
/// says so at start-up): every plain request must be injected into, not
/// only the first of each connection.
pub static EVERY_REQUEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The agent runs with `--propagation unsafe-keepalive`: client sockets stay
/// in the kernel's sockmap, whose tcp_bpf receive path was seen to miss a
/// peer's FIN after an early response (the reason that mode is opt-in and
/// named unsafe). A close that times out is then reported as a figure; the
/// bytes are still checked.
pub static KEEPS_SOCKETS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The control run: no agent (see the module doc).
pub fn without_agent() -> bool {
    std::env::var_os("WAGGLE_INTEGRITY_WITHOUT_AGENT").is_some()
}
