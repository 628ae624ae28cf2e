//! Does a byte string start with an HTTP/1.x request line? The agent's rule
//! for recognising HTTP on a connection and for finding the next request
//! when it follows a stream; the kernel recognises a request start with
//! [`super::is_request_start`] from the same [`KNOWN_METHODS`].
//!
//! Unlike the kernel's checks this one looks at the whole line and says when
//! too few bytes were seen to tell.

use super::KNOWN_METHODS;

/// Further methods recognised as HTTP (WebDAV, caches, ...).
pub const EXTRA_METHODS: [&str; 14] = [
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "PURGE",
    "REPORT",
    "SEARCH",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "QUERY",
];

/// Longest method token accepted from a connection already in sync.
pub const MAX_METHOD_LEN: usize = 20;

/// The answer of [`check_request_line`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineCheck {
    No,
    /// Valid so far; more bytes are needed to tell.
    NeedMore,
    Yes,
}

/// Does `b` start with a request line? Yes only for a method, a plausible
/// target and (when the line is complete in `b`) `HTTP/1.0` or `HTTP/1.1`;
/// an incomplete but valid line is NeedMore until it is `patience` bytes
/// long (or `truncated`: the bytes are all that will be seen), then Yes.
///
/// `any_method`: on a connection already in sync any upper-case token is a
/// method (custom verbs); when detecting or resynchronising only
/// [`KNOWN_METHODS`] and [`EXTRA_METHODS`] count.
pub fn check_request_line(b: &[u8], truncated: bool, patience: usize, any_method: bool) -> LineCheck {
    let incomplete = || {
        if truncated || b.len() >= patience {
            LineCheck::Yes
        } else {
            LineCheck::NeedMore
        }
    };
    let mut method: Option<&[u8]> = None;
    let mut prefix = false;
    for m in KNOWN_METHODS.iter().chain(EXTRA_METHODS.iter()) {
        let m = m.as_bytes();
        if b.len() > m.len() && b.starts_with(m) && b[m.len()] == b' ' {
            method = Some(m);
            break;
        }
        if b.len() <= m.len() && m.starts_with(b) {
            prefix = true;
        }
    }
    if method.is_none() && any_method {
        let token = b.iter().take_while(|c| c.is_ascii_uppercase() || matches!(c, b'-' | b'_')).count();
        if token > MAX_METHOD_LEN {
            return LineCheck::No;
        }
        match b.get(token) {
            Some(b' ') if token > 0 => method = Some(&b[..token]),
            None => prefix = true,
            _ => {}
        }
    }
    let Some(method) = method else {
        return if prefix && !truncated { LineCheck::NeedMore } else { LineCheck::No };
    };
    let target = &b[method.len() + 1..];
    let Some(&first) = target.first() else {
        return if truncated { LineCheck::No } else { LineCheck::NeedMore };
    };
    let start_ok = match first {
        b'/' => true,
        // Asterisk-form is exactly "*".
        b'*' => method == b"OPTIONS" && target.get(1).is_none_or(|&c| c == b' '),
        _ if method == b"CONNECT" => first.is_ascii_alphanumeric() || first == b'[',
        b'h' | b'H' => {
            let full =
                |scheme: &[u8]| target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme);
            let partial = |scheme: &[u8]| {
                let k = target.len().min(scheme.len());
                target[..k].eq_ignore_ascii_case(&scheme[..k])
            };
            if !(full(b"http://") || full(b"https://")) {
                let could_be = partial(b"http://") || partial(b"https://");
                return if could_be && !truncated { LineCheck::NeedMore } else { LineCheck::No };
            }
            true
        }
        _ => false,
    };
    if !start_ok {
        return LineCheck::No;
    }
    let Some(space) = target.iter().position(|&c| c == b' ') else {
        return if target.iter().all(|&c| is_target_byte(c)) { incomplete() } else { LineCheck::No };
    };
    if !target[..space].iter().all(|&c| is_target_byte(c)) {
        return LineCheck::No;
    }
    let version = &target[space + 1..];
    const HTTP1: &[u8] = b"HTTP/1.";
    let n = version.len().min(HTTP1.len());
    if version[..n] != HTTP1[..n] {
        return LineCheck::No;
    }
    match (version.get(7), version.get(8)) {
        (None, _) => incomplete(),
        (Some(b'0' | b'1'), None) => incomplete(),
        (Some(b'0' | b'1'), Some(b'\r' | b'\n')) => LineCheck::Yes,
        _ => LineCheck::No,
    }
}

/// Bytes allowed in a request target (httparse's URI set: visible ASCII and
/// non-ASCII; no controls, no spaces).
fn is_target_byte(c: u8) -> bool {
    c > b' ' && c != 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::format;

    fn check(b: &[u8]) -> LineCheck {
        check_request_line(b, false, 48, false)
    }

    #[test]
    fn complete_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /api HTTP/1.0\r\nHost: x\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"GET http://example.com/x HTTP/1.1\r\n",
            b"GET HTTPS://example.com HTTP/1.1\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"CONNECT [::1]:443 HTTP/1.1\r\n",
            b"PROPFIND /dav HTTP/1.1\r\n",
            b"DELETE /x/1 HTTP/1.1\n",
        ] {
            assert_eq!(check(line), LineCheck::Yes, "{:?}", core::str::from_utf8(line));
        }
        for m in KNOWN_METHODS.iter().chain(EXTRA_METHODS.iter()) {
            let target = if *m == "CONNECT" { "h:1" } else { "/" };
            assert_eq!(check(format!("{m} {target} HTTP/1.1\r\n").as_bytes()), LineCheck::Yes, "{m}");
        }
    }

    #[test]
    fn prefixes_need_more_until_patience_runs_out() {
        for prefix in [&b""[..], b"GE", b"GET", b"GET ", b"GET /index", b"GET /index HTTP/1.", b"GET http:/"] {
            assert_eq!(check(prefix), LineCheck::NeedMore, "{:?}", core::str::from_utf8(prefix));
        }
        let long = format!("GET /{}", "a".repeat(60));
        assert_eq!(check(long.as_bytes()), LineCheck::Yes);
        assert_eq!(check_request_line(b"GET /index", false, 10, false), LineCheck::Yes);
        // Truncated: what was captured is all there is.
        assert_eq!(check_request_line(b"GET /index", true, usize::MAX, false), LineCheck::Yes);
        assert_eq!(check_request_line(b"GE", true, usize::MAX, false), LineCheck::No);
        assert_eq!(check_request_line(b"GET ", true, usize::MAX, false), LineCheck::No);
        assert_eq!(check_request_line(b"GET http:/", true, usize::MAX, false), LineCheck::No);
    }

    #[test]
    fn anything_else_is_not_a_request_line() {
        for bad in [
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..],
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"get / HTTP/1.1\r\n",
            b"GET foo HTTP/1.1\r\n",
            b"GET / HTTP/2\r\n",
            b"GET / HTTP/1.2\r\n",
            b"GET / FTP/1.1\r\n",
            b"GET / HTTP/1.1 trailing\r\n",
            b"GET /a\x01b HTTP/1.1\r\n",
            b"OPTIONS *x HTTP/1.1\r\n",
            b"GET * HTTP/1.1\r\n",
            b"CONNECT -x HTTP/1.1\r\n",
            b"SELECT 1",
            b"HTTP/1.1 200 OK\r\n",
            b"GET / is what the user typed\r\n",
            b"NOTIFY / HTTP/1.1\r\n",
        ] {
            assert_eq!(check(bad), LineCheck::No, "{:?}", bad);
        }
    }

    #[test]
    fn custom_methods_only_in_sync() {
        let in_sync = |b: &[u8]| check_request_line(b, false, 48, true);
        assert_eq!(in_sync(b"NOTIFY /upnp/event HTTP/1.1\r\n"), LineCheck::Yes);
        assert_eq!(in_sync(b"M-SEARCH * HTTP/1.1\r\n"), LineCheck::No, "asterisk-form is OPTIONS only");
        assert_eq!(in_sync(b"NOTIFY"), LineCheck::NeedMore);
        assert_eq!(in_sync(b"notify / HTTP/1.1\r\n"), LineCheck::No);
        assert_eq!(in_sync(b" / HTTP/1.1\r\n"), LineCheck::No);
        let long = format!("{} / HTTP/1.1\r\n", "A".repeat(MAX_METHOD_LEN + 1));
        assert_eq!(in_sync(long.as_bytes()), LineCheck::No);
        let longest = format!("{} / HTTP/1.1\r\n", "A".repeat(MAX_METHOD_LEN));
        assert_eq!(in_sync(longest.as_bytes()), LineCheck::Yes);
    }
}
