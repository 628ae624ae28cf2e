//! The request facts a FastCGI request's params carry (the CGI/1.1
//! meta-variables nginx, Apache and others send), read from the name-value
//! pairs. Only the params a span needs are kept: credentials
//! (`HTTP_AUTHORIZATION`, `HTTP_COOKIE`) and everything else are skipped
//! unread.
use waggle_common::{fastcgi::nv_length, http::KNOWN_METHODS};

use crate::model::{truncate_utf8, TraceContext};
use crate::protocols::http1::{bound_tracestate, parse_traceparent};

const MAX_PATH: usize = 2048;
const MAX_USER_AGENT: usize = 512;
const MAX_HOST: usize = 255;
const MAX_TRACESTATE_RAW: usize = 8192;

#[derive(Debug, Default)]
pub(super) struct RequestParams {
    /// Canonical method, `_OTHER`, or None when no REQUEST_METHOD came.
    pub(super) method: Option<&'static str>,
    pub(super) method_original: Option<String>,
    /// REQUEST_URI (query dropped), else SCRIPT_NAME.
    pub(super) path: Option<String>,
    pub(super) scheme: Option<&'static str>,
    pub(super) server_name: Option<String>,
    pub(super) server_port: Option<u16>,
    pub(super) user_agent: Option<String>,
    pub(super) client_address: Option<String>,
    pub(super) content_length: Option<u64>,
    pub(super) context: Option<TraceContext>,
    pub(super) tracestate: Option<String>,
}

fn text(v: &[u8], max: usize) -> Option<String> {
    let s = String::from_utf8_lossy(v);
    let s = s.trim();
    (!s.is_empty()).then(|| truncate_utf8(s, max))
}

fn number<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// Name-value pairs of `b`, stopping at the first that does not fit (the
/// rest of a cut or uncaptured params stream).
pub(super) fn pairs(b: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let mut len = || {
            let first = *b.get(at)?;
            let mut w = [first, 0, 0, 0];
            if first & 0x80 != 0 {
                w.copy_from_slice(b.get(at..at + 4)?);
            }
            let (n, used) = nv_length(&w);
            at += used as usize;
            Some(n as usize)
        };
        let name_len = len()?;
        let value_len = len()?;
        let name = b.get(at..at.checked_add(name_len)?)?;
        let value_at = at + name_len;
        let value = b.get(value_at..value_at.checked_add(value_len)?)?;
        at = value_at + value_len;
        Some((name, value))
    })
}

pub(super) fn parse(b: &[u8]) -> RequestParams {
    let mut p = RequestParams::default();
    let mut script_name = None;
    let mut traceparents = 0u32;
    let mut tracestate: Option<String> = None;
    for (name, value) in pairs(b) {
        match name {
            b"REQUEST_METHOD" => {
                let m = String::from_utf8_lossy(value);
                match KNOWN_METHODS.iter().find(|k| **k == m) {
                    Some(k) => p.method = Some(k),
                    None if m.is_empty() => {}
                    None => {
                        p.method = Some("_OTHER");
                        p.method_original = Some(truncate_utf8(&m, 32));
                    }
                }
            }
            b"REQUEST_URI" => {
                let end = value.iter().position(|c| matches!(c, b'?' | b'#')).unwrap_or(value.len());
                p.path = text(&value[..end], MAX_PATH);
            }
            b"SCRIPT_NAME" => script_name = text(value, MAX_PATH),
            b"HTTPS" if !value.is_empty() && !value.eq_ignore_ascii_case(b"off") => p.scheme = Some("https"),
            b"REQUEST_SCHEME" if p.scheme.is_none() => {
                p.scheme = match value {
                    b"https" => Some("https"),
                    b"http" => Some("http"),
                    _ => None,
                }
            }
            b"SERVER_NAME" => p.server_name = text(value, MAX_HOST),
            b"SERVER_PORT" => p.server_port = number(value),
            b"HTTP_USER_AGENT" => p.user_agent = text(value, MAX_USER_AGENT),
            b"REMOTE_ADDR" => p.client_address = text(value, 64),
            b"CONTENT_LENGTH" => p.content_length = number(value),
            b"HTTP_TRACEPARENT" => {
                traceparents += 1;
                p.context = parse_traceparent(value);
            }
            b"HTTP_TRACESTATE" if value.len() <= MAX_TRACESTATE_RAW => {
                let joined = tracestate.get_or_insert_with(String::new);
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(&String::from_utf8_lossy(value));
            }
            _ => {}
        }
    }
    if p.path.is_none() {
        p.path = script_name;
    }
    // Several traceparents: which one is real is unknowable.
    if traceparents != 1 {
        p.context = None;
    }
    p.tracestate = if p.context.is_some() { tracestate.and_then(|s| bound_tracestate(&s)) } else { None };
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(out: &mut Vec<u8>, name: &str, value: &str) {
        for len in [name.len(), value.len()] {
            if len < 128 {
                out.push(len as u8);
            } else {
                out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
            }
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(value.as_bytes());
    }

    #[test]
    fn only_the_needed_params_are_kept() {
        let mut b = Vec::new();
        pair(&mut b, "HTTP_COOKIE", &"s".repeat(300));
        pair(&mut b, "REQUEST_METHOD", "PURGE");
        pair(&mut b, "SCRIPT_NAME", "/index.php");
        pair(&mut b, "HTTPS", "on");
        pair(&mut b, "SERVER_PORT", "8443");
        let p = parse(&b);
        assert_eq!((p.method, p.method_original.as_deref()), (Some("_OTHER"), Some("PURGE")));
        assert_eq!(p.path.as_deref(), Some("/index.php"), "SCRIPT_NAME without REQUEST_URI");
        assert_eq!((p.scheme, p.server_port), (Some("https"), Some(8443)));
        assert_eq!(p.context, None);
    }

    #[test]
    fn lengths_that_lie_end_the_pairs() {
        let mut b = Vec::new();
        pair(&mut b, "REQUEST_METHOD", "GET");
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 3, b'a']);
        pair(&mut b, "REQUEST_URI", "/x");
        let p = parse(&b);
        assert_eq!((p.method, p.path), (Some("GET"), None));
        assert_eq!(pairs(&[0x80]).count(), 0);
    }
}
