//! TLS plaintext at the TLS library: what the kernel's uprobes on OpenSSL's
//! `SSL_read`/`SSL_write`/`SSL_read_ex`/`SSL_write_ex` share with the agent.
//!
//! An SSL call's entry leaves a [`TlsCall`] for its thread; a read/write
//! syscall on a tracked connection while that call runs names the
//! connection (its descriptor), remembered per SSL object in [`SslConn`] so
//! a later call served from OpenSSL's buffer (no syscall) still finds it.
//! The call's return copies the plaintext into an ordinary data record
//! flagged [`DATA_TLS`]; the ciphertext syscalls of that connection are
//! dropped in the kernel from then on.
use bytemuck::{Pod, Zeroable};

/// Map names (kernel-only; the agent reads none of them).
pub mod maps {
    /// pid_tgid -> [`super::TlsCall`]: the SSL call a thread is in.
    pub const TLS_CALLS: &str = "TLS_CALLS";
    /// [`super::SslKey`] -> [`super::SslConn`]: the connection an SSL object
    /// was last seen doing syscalls on.
    pub const TLS_SSL_CONNS: &str = "TLS_SSL_CONNS";
    /// pid_tgid -> `SSL *`: the last SSL object of an executable that links
    /// OpenSSL statically (node) to return on that thread with no known
    /// connection, waiting for its handshake write.
    pub const TLS_PENDING: &str = "TLS_PENDING";
}

/// Global patched by the loader: 1 when the TLS probes may be attached
/// (`--tls on`); 0 keeps the syscall path from even looking for SSL calls.
pub const GLOBAL_TLS: &str = "TLS_PROBES";

/// Program names in the object: one entry program per function (the
/// argument layouts differ) and one return program for all four.
pub mod programs {
    pub const SSL_READ: &str = "waggle_ssl_read";
    pub const SSL_WRITE: &str = "waggle_ssl_write";
    pub const SSL_READ_EX: &str = "waggle_ssl_read_ex";
    pub const SSL_WRITE_EX: &str = "waggle_ssl_write_ex";
    pub const SSL_RETURN: &str = "waggle_ssl_return";
    /// The return program for executables that link OpenSSL statically
    /// over memory BIOs (node): a call on an SSL object with no known
    /// connection leaves it pending for the thread's next handshake write.
    pub const SSL_RETURN_BIND: &str = "waggle_ssl_return_bind";
    /// Entry of `SSL_set_fd`: the object's connection, before any call.
    pub const SSL_SET_FD: &str = "waggle_ssl_set_fd";
}

/// (library symbol, entry program) of the functions that bind an SSL
/// object to its descriptor: attached where the library has them, no
/// return probe. A TLS 1.3 server's handshake may read the client's first
/// request together with its Finished; the SSL_read that then returns it
/// does no syscall that would name the connection.
pub const BINDING_FUNCTIONS: [(&str, &str); 1] = [("SSL_set_fd", programs::SSL_SET_FD)];

/// (library symbol, entry program) for every function probed.
pub const PROBED_FUNCTIONS: [(&str, &str); 4] = [
    ("SSL_read", programs::SSL_READ),
    ("SSL_write", programs::SSL_WRITE),
    ("SSL_read_ex", programs::SSL_READ_EX),
    ("SSL_write_ex", programs::SSL_WRITE_EX),
];

/// `TlsCall::kind` bits.
pub mod kind {
    /// SSL_write / SSL_write_ex (else a read).
    pub const WRITE: u8 = 1;
    /// The `_ex` variant: returns 1 on success and the byte count through
    /// its fourth argument.
    pub const EX: u8 = 2;
}

/// `ConnInfo::tls` bits.
pub mod conn_tls {
    /// SSL calls run on this connection (kernel): its syscalls carry
    /// ciphertext and are dropped; the plaintext comes from the uprobes.
    pub const SEEN: u8 = 1;
    /// The agent found the plaintext unparseable: the uprobes copy nothing
    /// more (the ciphertext mute, `conn_flags::MUTED`, does not apply to
    /// plaintext: it is usually set from the handshake's bytes).
    pub const MUTED: u8 = 2;
}

/// `DataEvent::flags`: the payload is TLS plaintext read at the library.
pub const DATA_TLS: u32 = 1;

/// `TlsCall::fd` before a syscall named the connection.
pub const NO_FD: u32 = u32::MAX;

pub const TLS_CALLS_MAX_ENTRIES: u32 = 16384;
pub const TLS_SSL_CONNS_MAX_ENTRIES: u32 = 65536;
pub const TLS_PENDING_MAX_ENTRIES: u32 = 4096;

/// True for the first bytes of a TLS handshake record (content type 22,
/// protocol major version 3, minor 0..=4): what a ClientHello or
/// ServerHello write starts with.
pub fn is_handshake_record(head: &[u8]) -> bool {
    matches!(head, [0x16, 0x03, minor, ..] if *minor <= 4)
}

/// An SSL call in progress on a thread, from its entry to its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TlsCall {
    /// The `SSL *`.
    pub ssl: u64,
    /// The plaintext buffer (user pointer) and its size.
    pub buf: u64,
    pub num: u64,
    /// `_ex`: where the library stores the bytes moved (`size_t *`).
    pub moved_ptr: u64,
    pub enter_ns: u64,
    /// The connection's descriptor once a syscall inside the call named it,
    /// else [`NO_FD`].
    pub fd: u32,
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// Key of `TLS_SSL_CONNS`: SSL objects are per process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SslKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// The connection an SSL object runs on; `conn_id` tells a descriptor
/// reused by a later connection from this one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SslConn {
    pub fd: u32,
    pub _pad: u32,
    pub conn_id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<TlsCall>(), 48);
        assert_eq!(size_of::<SslKey>(), 16);
        assert_eq!(size_of::<SslConn>(), 16);
    }

    #[test]
    fn handshake_records_are_told_from_application_data_and_http() {
        assert!(is_handshake_record(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(is_handshake_record(&[0x16, 0x03, 0x03]));
        assert!(!is_handshake_record(&[0x17, 0x03, 0x03, 0x00]), "application data");
        assert!(!is_handshake_record(&[0x16, 0x03, 0x05]));
        assert!(!is_handshake_record(b"GET / HTTP/1.1"));
        assert!(!is_handshake_record(&[0x16, 0x03]), "too short to tell");
    }

    #[test]
    fn every_entry_program_is_distinct() {
        for (i, (_, a)) in PROBED_FUNCTIONS.iter().enumerate() {
            assert!(PROBED_FUNCTIONS[i + 1..].iter().all(|(_, b)| a != b));
            assert_ne!(*a, programs::SSL_RETURN);
        }
    }
}
