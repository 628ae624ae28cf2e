//! MySQL packet formats: framing by 3-byte length and sequence id,
//! capability and status flags, command bytes, and reading OK / ERR / EOF
//! packets and the handshake response.
use crate::protocols::sql::{cstr, DbError, Framing};

pub(super) const SYSTEM_MARIADB: &str = "mariadb";

/// A payload of exactly this length continues in the next packet.
pub(super) const MAX_PACKET: u32 = 0xff_ffff;

pub(super) const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
pub(super) const CLIENT_COMPRESS: u32 = 0x20;
pub(super) const CLIENT_PROTOCOL_41: u32 = 0x200;
pub(super) const CLIENT_SSL: u32 = 0x800;
pub(super) const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
pub(super) const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x20_0000;
pub(super) const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;
pub(super) const CLIENT_ZSTD_COMPRESSION: u32 = 0x400_0000;
pub(super) const CLIENT_QUERY_ATTRIBUTES: u32 = 0x800_0000;

pub(super) const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
pub(super) const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;
/// `sql_mode` has NO_BACKSLASH_ESCAPES: a backslash in a string is itself.
pub(super) const SERVER_STATUS_NO_BACKSLASH_ESCAPES: u16 = 0x0200;

pub(super) const COM_QUIT: u8 = 0x01;
pub(super) const COM_INIT_DB: u8 = 0x02;
pub(super) const COM_QUERY: u8 = 0x03;
pub(super) const COM_FIELD_LIST: u8 = 0x04;
pub(super) const COM_CHANGE_USER: u8 = 0x11;
pub(super) const COM_STMT_PREPARE: u8 = 0x16;
pub(super) const COM_STMT_EXECUTE: u8 = 0x17;
pub(super) const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
pub(super) const COM_STMT_CLOSE: u8 = 0x19;
pub(super) const COM_STMT_RESET: u8 = 0x1a;
pub(super) const COM_STMT_FETCH: u8 = 0x1c;
pub(super) const COM_RESET_CONNECTION: u8 = 0x1f;
pub(super) const COM_STMT_BULK_EXECUTE: u8 = 0xfa;
/// Commands answered by exactly one OK/ERR/EOF (or string) packet.
pub(super) const SIMPLE_COMMANDS: &[u8] = &[0x07, 0x08, 0x09, 0x0c, 0x0d, 0x0e, 0x1a, 0x1b, 0x1f];

pub(super) fn le16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

pub(super) fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Length-encoded integer at `b[at..]`: (value, bytes used).
pub(super) fn lenenc(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let wide = |n: usize| -> Option<(u64, usize)> {
        let s = b.get(at + 1..at + 1 + n)?;
        let mut v = 0u64;
        for (i, byte) in s.iter().enumerate() {
            v |= u64::from(*byte) << (8 * i);
        }
        Some((v, n + 1))
    };
    match first {
        0..=0xfa => Some((u64::from(first), 1)),
        0xfc => wide(2),
        0xfd => wide(3),
        0xfe => wide(8),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub len: u32,
    pub seq: u8,
    /// The packet continues the previous one's payload (which had the
    /// maximum length).
    pub continuation: bool,
}

pub struct PacketFraming {
    pub(super) keep: usize,
    /// The last packet had the maximum length: the next one continues it.
    pub(super) continues: bool,
}

impl Framing for PacketFraming {
    type Head = Head;

    fn header_len(&self, _first: u8) -> usize {
        4
    }

    fn parse_header(&mut self, h: &[u8]) -> Result<(Head, u64, usize), &'static str> {
        let len = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
        let continuation = std::mem::replace(&mut self.continues, len == MAX_PACKET);
        Ok((Head { len, seq: h[3], continuation }, u64::from(len), self.keep))
    }

    fn resync(&mut self) {
        self.continues = false;
    }
}

/// The SQL text of a COM_QUERY / COM_STMT_PREPARE payload; `caps` decides
/// whether COM_QUERY carries query attributes (when unknown: a text cannot
/// start with a control byte, an attribute count can).
pub(super) fn query_text(p: &[u8], caps: Option<u32>) -> Option<&[u8]> {
    let rest = p.get(1..)?;
    if p[0] != COM_QUERY {
        return Some(rest);
    }
    let attributes = match caps {
        Some(c) => c & CLIENT_QUERY_ATTRIBUTES != 0,
        None => rest.first().is_some_and(|b| *b < 0x20 && !b.is_ascii_whitespace()),
    };
    if !attributes {
        return Some(rest);
    }
    let (count, n1) = lenenc(rest, 0)?;
    let (_sets, n2) = lenenc(rest, n1)?;
    // With attributes present the text sits behind typed values we do not
    // decode: report the command without text.
    if count != 0 {
        return None;
    }
    rest.get(n1 + n2..)
}

pub(super) fn parse_err(body: &[u8], system: &str) -> DbError {
    let code = le16(body, 1).unwrap_or(0);
    let state = (body.get(3) == Some(&b'#'))
        .then(|| body.get(4..9))
        .flatten()
        .filter(|s| s.iter().all(u8::is_ascii_alphanumeric))
        .map(|s| String::from_utf8_lossy(s).into_owned());
    let product = if system == SYSTEM_MARIADB { "MariaDB" } else { "MySQL" };
    let description = match state {
        Some(state) => format!("{product} error {code} (SQLSTATE {state})"),
        None => format!("{product} error {code}"),
    };
    DbError { code: code.to_string(), description }
}

/// Server status flags of an OK packet (0x00 or 0xfe header).
pub(super) fn ok_status(body: &[u8]) -> Option<(u64, u16)> {
    let (affected, n1) = lenenc(body, 1)?;
    let (_insert_id, n2) = lenenc(body, 1 + n1)?;
    Some((affected, le16(body, 1 + n1 + n2)?))
}

/// Status flags of an EOF (short) or OK-with-0xfe (long) terminator.
pub(super) fn terminator_status(body: &[u8]) -> u16 {
    if body.len() <= 5 {
        le16(body, 3).unwrap_or(0)
    } else {
        ok_status(body).map_or(0, |(_, s)| s)
    }
}

/// Schema of a HandshakeResponse41 with CLIENT_CONNECT_WITH_DB. The auth
/// response before it is skipped by its length, never read.
pub(super) fn handshake_schema(body: &[u8], caps: u32) -> Option<String> {
    if caps & CLIENT_CONNECT_WITH_DB == 0 {
        return None;
    }
    let mut pos = 32;
    cstr(body, &mut pos)?;
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        let (n, used) = lenenc(body, pos)?;
        pos = pos.checked_add(used)?.checked_add(usize::try_from(n).ok()?)?;
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        pos += 1 + usize::from(*body.get(pos)?);
    } else {
        cstr(body, &mut pos)?;
    }
    let db = cstr(body, &mut pos).filter(|d| !d.is_empty() && d.len() <= 256)?;
    Some(String::from_utf8_lossy(db).into_owned())
}
