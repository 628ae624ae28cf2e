//! The TLS version a connection's handshake chose, read from the server's
//! ServerHello as it passed in the clear through the socket calls, before
//! the connection's first plaintext. OpenSSL's own structs are never read:
//! their layout changes from release to release; the wire format does not.
//!
//! The ServerHello's `legacy_version` is the answer up to TLS 1.2; TLS 1.3
//! keeps it at 1.2 and says the real version in the `supported_versions`
//! extension (RFC 8446 4.1.3, 4.2.1). A HelloRetryRequest is a ServerHello
//! with a fixed random: the real ServerHello follows it.
//!
//! Pure functions over borrowed bytes: nothing is allocated.

/// What a server's bytes say about the handshake's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// The version the ServerHello chose (wire value: 0x0303 is TLS 1.2).
    Version(u16),
    /// A HelloRetryRequest: the ServerHello proper comes later.
    Retry,
    /// The bytes end before the version is known (a record cut by the
    /// capture size, or split across reads).
    Truncated,
    /// Not a ServerHello.
    Other,
}

/// TLS record content types: ChangeCipherSpec, then handshake messages.
const CHANGE_CIPHER_SPEC: u8 = 20;
pub(super) const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const SERVER_HELLO: u8 = 2;
const SUPPORTED_VERSIONS: u16 = 0x002b;
const RECORD_HEADER: usize = 5;
/// SHA-256("HelloRetryRequest"), the random of every HelloRetryRequest.
const RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91, 0xc2, 0xa2, 0x11,
    0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// True when `bytes` start like a TLS handshake record header (type 22,
/// record version 3.x): a ClientHello or ServerHello record, or the 5-byte
/// header OpenSSL reads on its own before the record's body.
pub fn is_handshake_record(bytes: &[u8]) -> bool {
    matches!(bytes, [HANDSHAKE, 3, minor, ..] if *minor <= 4)
}

/// The content type of a lone 5-byte TLS record header (OpenSSL reads a
/// record's header on its own, then its body).
pub fn lone_record_header(bytes: &[u8]) -> Option<u8> {
    match bytes {
        &[kind @ CHANGE_CIPHER_SPEC..=APPLICATION_DATA, 3, minor, _, _] if minor <= 4 => Some(kind),
        _ => None,
    }
}

/// The first handshake message of a client's record is a ClientHello (or
/// the record's body has not been read yet: a lone header).
pub fn is_client_hello_record(bytes: &[u8]) -> bool {
    is_handshake_record(bytes) && bytes.get(RECORD_HEADER).is_none_or(|&t| t == 1)
}

/// `bytes` start at a TLS record header (the server's first record, or its
/// first after a HelloRetryRequest: ChangeCipherSpec records before it are
/// passed over).
pub fn server_hello_in_record(mut bytes: &[u8]) -> Hello {
    while let [CHANGE_CIPHER_SPEC, 3, _, hi, lo, ..] = *bytes {
        let end = RECORD_HEADER + usize::from(u16::from_be_bytes([hi, lo]));
        let Some(rest) = bytes.get(end..) else { return Hello::Truncated };
        bytes = rest;
    }
    if !is_handshake_record(bytes) {
        // A header cut before its version byte may still be one.
        return if matches!(bytes, [] | [HANDSHAKE] | [HANDSHAKE, 3]) { Hello::Truncated } else { Hello::Other };
    }
    let Some(&[_, _, _, hi, lo]) = bytes.first_chunk::<RECORD_HEADER>() else {
        return Hello::Truncated;
    };
    let end = RECORD_HEADER + usize::from(u16::from_be_bytes([hi, lo]));
    server_hello(&bytes[RECORD_HEADER..bytes.len().min(end)])
}

/// `msg` starts at the handshake message: the body of the server's first
/// record (read on its own after its 5-byte header), or its start.
pub fn server_hello(msg: &[u8]) -> Hello {
    let mut r = Reader(msg);
    match r.u8() {
        None => return Hello::Truncated,
        Some(SERVER_HELLO) => {}
        Some(_) => return Hello::Other,
    }
    let Some(len) = r.u24() else { return Hello::Truncated };
    // Only the message's own bytes: a record may carry more messages.
    r.0 = &r.0[..r.0.len().min(len)];
    let complete = msg.len() >= 4 + len;
    let Some(legacy) = r.u16() else { return Hello::Truncated };
    if legacy >> 8 != 3 {
        return Hello::Other;
    }
    let Some(random) = r.take(32) else { return Hello::Truncated };
    let retry = random == RETRY_RANDOM;
    // session id, cipher suite, compression method
    let Some(session) = r.u8() else { return Hello::Truncated };
    if r.take(usize::from(session) + 3).is_none() {
        return Hello::Truncated;
    }
    // Without extensions (TLS 1.2 and older may omit them): the legacy version.
    let ext_len = match r.u16() {
        Some(n) => usize::from(n),
        None if complete && r.0.is_empty() => return if retry { Hello::Retry } else { Hello::Version(legacy) },
        None => return Hello::Truncated,
    };
    // Read what is there: a large key share after `supported_versions`
    // may be cut by the capture size without hiding the version.
    let cut = r.0.len() < ext_len;
    let mut ext = Reader(&r.0[..r.0.len().min(ext_len)]);
    let malformed = if cut { Hello::Truncated } else { Hello::Other };
    while let (Some(kind), Some(len)) = (ext.u16(), ext.u16()) {
        let Some(data) = ext.take(usize::from(len)) else { return malformed };
        if kind == SUPPORTED_VERSIONS {
            // The server's extension holds exactly one version.
            let &[hi, lo] = data else { return Hello::Other };
            return if retry { Hello::Retry } else { Hello::Version(u16::from_be_bytes([hi, lo])) };
        }
    }
    if cut || !ext.0.is_empty() {
        malformed
    } else if retry {
        Hello::Retry
    } else {
        Hello::Version(legacy)
    }
}

/// OTel's `tls.protocol.version` of a wire version; None for SSL 3.0 and
/// drafts (not TLS versions the convention names).
pub fn version_name(version: u16) -> Option<&'static str> {
    match version {
        0x0301 => Some("1.0"),
        0x0302 => Some("1.1"),
        0x0303 => Some("1.2"),
        0x0304 => Some("1.3"),
        _ => None,
    }
}

/// Big-endian fields off the front of a slice; None when it runs out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
pub(super) mod tests;
