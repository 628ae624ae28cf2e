//! Reading a complete request or response head: method, target, host,
//! user agent, framing headers and the W3C trace context. Only these headers
//! are read; credentials are never touched.

use waggle_common::http::{parse_traceparent_value, KNOWN_METHODS};

use std::sync::Arc;

use super::{
    redact::PathRedaction,
    strings::{intern, path_strings, PathStrings},
};
use crate::model::{cut_utf8, truncate_utf8, TraceContext};

/// Headers per message; more is treated like an oversized head.
pub const MAX_HEADERS: usize = 64;

/// W3C: vendors must propagate at least 512 characters of tracestate; longer
/// lists are cut at member boundaries.
const MAX_TRACESTATE: usize = 512;
const MAX_PATH: usize = 2048;
const MAX_USER_AGENT: usize = 512;
const MAX_HOST: usize = 255;

/// What the request head said, owned: the repeating strings (path, host,
/// user agent) are shared through [`intern`], so a head allocates nothing
/// for a value seen before.
#[derive(Debug)]
pub(super) struct RequestHead {
    /// Canonical method, or `_OTHER`.
    pub(super) method: &'static str,
    pub(super) method_original: Option<String>,
    /// What the path (without query) becomes in the span; None for
    /// CONNECT's authority-form target.
    pub(super) path: Option<PathStrings>,
    /// Authority of an absolute-form or CONNECT target.
    pub(super) target_authority: Option<String>,
    pub(super) minor_version: u8,
    /// The Host header's address and port (`server.address`/`server.port`).
    pub(super) host: Option<(Arc<str>, Option<u16>)>,
    pub(super) user_agent: Option<Arc<str>>,
    pub(super) content_length: Option<u64>,
    pub(super) chunked: bool,
    pub(super) context: Option<TraceContext>,
    pub(super) tracestate: Option<String>,
}

/// The Host address and User-Agent a connection's last request carried, as
/// shared strings: a keep-alive connection repeats them on every request, so
/// the string tables are asked again only when one changes. Charged to the
/// connection's buffered bytes (it may keep values alive that the tables
/// have forgotten).
#[derive(Debug, Default)]
pub(super) struct HeadMemo {
    host: Option<(Arc<str>, Option<u16>)>,
    user_agent: Option<Arc<str>>,
}

impl HeadMemo {
    fn host(&mut self, address: &str, port: Option<u16>) -> (Arc<str>, Option<u16>) {
        if let Some((known, known_port)) = &self.host {
            if **known == *address && *known_port == port {
                return (Arc::clone(known), port);
            }
        }
        let shared = intern(address);
        self.host = Some((Arc::clone(&shared), port));
        (shared, port)
    }

    fn user_agent(&mut self, value: &str) -> Arc<str> {
        if let Some(known) = &self.user_agent {
            if **known == *value {
                return Arc::clone(known);
            }
        }
        let shared = intern(value);
        self.user_agent = Some(Arc::clone(&shared));
        shared
    }

    /// Text bytes the memo holds.
    pub(super) fn bytes(&self) -> usize {
        self.host.as_ref().map_or(0, |(h, _)| h.len()) + self.user_agent.as_ref().map_or(0, |u| u.len())
    }
}

#[derive(Debug)]
pub(super) struct ResponseHead {
    pub(super) status: u16,
    pub(super) content_length: Option<u64>,
    pub(super) chunked: bool,
    /// Transfer-Encoding without chunked: the body runs until close.
    pub(super) other_encoding: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeadError {
    TooManyHeaders,
    Invalid(&'static str),
}

/// The word a span's name starts with for a request `method` (canonical,
/// or `_OTHER`, which names no method).
pub(super) fn name_method(method: &'static str) -> &'static str {
    if method == "_OTHER" {
        "HTTP"
    } else {
        method
    }
}

/// `redaction` applies to the path (its span strings are looked up here,
/// while the head's bytes are at hand); `memo` is the connection's last
/// Host and User-Agent.
pub(super) fn parse_request_head(
    bytes: &[u8],
    redaction: &PathRedaction,
    memo: &mut HeadMemo,
) -> Result<RequestHead, HeadError> {
    // Uninitialised slots: httparse writes only the ones it fills, instead
    // of 2 KiB of empty headers being written first for every request.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Invalid("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Invalid("invalid request head")),
    }
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Invalid("incomplete request line"));
    };
    let (method, method_original) = match KNOWN_METHODS.iter().find(|m| **m == method) {
        Some(m) => (*m, None),
        None => ("_OTHER", Some(truncate_utf8(method, 32))),
    };
    let (path, target_authority) = split_target(method, target);
    let framing = read_framing(req.headers, true)?;
    let path = path.map(|p| path_strings(p, redaction, name_method(method)));
    let mut host = None;
    let mut user_agent = None;
    let mut traceparents = 0u32;
    let mut context = None;
    let mut tracestate: Option<String> = None;
    for h in req.headers.iter() {
        // Only these headers are ever read; credentials are never touched.
        if h.name.eq_ignore_ascii_case("host") {
            if host.is_none() {
                host = std::str::from_utf8(h.value).ok().map(str::trim).filter(|v| valid_host(v)).map(|v| {
                    let (address, port) = split_host_port(v);
                    memo.host(address, port)
                });
            }
        } else if h.name.eq_ignore_ascii_case("user-agent") {
            if user_agent.is_none() {
                user_agent = Some(memo.user_agent(cut_utf8(String::from_utf8_lossy(h.value).trim(), MAX_USER_AGENT)));
            }
        } else if h.name.eq_ignore_ascii_case("traceparent") {
            traceparents += 1;
            context = parse_traceparent(h.value);
        } else if h.name.eq_ignore_ascii_case("tracestate") {
            // Non-printable bytes invalidate the whole header (checked when
            // bounding); whole values are joined so no member is ever cut.
            let v = String::from_utf8_lossy(trim_ows(h.value));
            if v.is_empty() {
                continue;
            }
            let joined = tracestate.get_or_insert_with(String::new);
            // Once 512 bytes are collected later values cannot contribute.
            if joined.len() <= MAX_TRACESTATE {
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(&v);
            }
        }
    }
    // Several traceparent headers: which one is real is unknowable (W3C says
    // treat as invalid).
    if traceparents != 1 {
        context = None;
    }
    let tracestate = if context.is_some() { tracestate.and_then(|s| bound_tracestate(&s)) } else { None };
    Ok(RequestHead {
        method,
        method_original,
        path,
        target_authority,
        minor_version,
        host,
        user_agent,
        content_length: framing.content_length,
        chunked: framing.chunked,
        context,
        tracestate,
    })
}

pub(super) fn parse_response_head(bytes: &[u8]) -> Result<ResponseHead, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Invalid("incomplete response head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Invalid("invalid response head")),
    }
    // httparse takes any three digits; below 100 is not a status (RFC 9110 §15).
    let Some(status) = resp.code.filter(|c| *c >= 100) else {
        return Err(HeadError::Invalid("invalid status code"));
    };
    let framing = read_framing(resp.headers, false)?;
    Ok(ResponseHead {
        status,
        content_length: framing.content_length,
        chunked: framing.chunked,
        other_encoding: framing.other_encoding,
    })
}

struct Framing {
    content_length: Option<u64>,
    chunked: bool,
    other_encoding: bool,
}

/// Content-Length / Transfer-Encoding per RFC 9112 §6: Transfer-Encoding wins;
/// conflicting lengths are a framing error (request smuggling territory).
fn read_framing(headers: &[httparse::Header<'_>], is_request: bool) -> Result<Framing, HeadError> {
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<bool> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = parse_content_length(h.value).ok_or(HeadError::Invalid("invalid content-length"))?;
            if content_length.is_some_and(|v| v != value) {
                return Err(HeadError::Invalid("conflicting content-length"));
            }
            content_length = Some(value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding of the last header decides.
            let last = h.value.rsplit(|&c| c == b',').map(trim_ows).find(|c| !c.is_empty());
            if let Some(last) = last {
                transfer_encoding = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        }
    }
    match transfer_encoding {
        Some(true) => Ok(Framing { content_length: None, chunked: true, other_encoding: false }),
        // A request body cannot be delimited by close.
        Some(false) if is_request => Err(HeadError::Invalid("request transfer-encoding is not chunked")),
        Some(false) => Ok(Framing { content_length: None, chunked: false, other_encoding: true }),
        None => Ok(Framing { content_length, chunked: false, other_encoding: false }),
    }
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t')).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t')).map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// `123`, or a list of identical values (`123, 123`) as some proxies send.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result: Option<u64> = None;
    for part in value.split(|&c| c == b',') {
        let part = trim_ows(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if result.is_some_and(|r| r != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

/// Path (query and fragment removed) and authority of a request target.
fn split_target<'t>(method: &str, target: &'t str) -> (Option<&'t str>, Option<String>) {
    if method == "CONNECT" {
        return (None, Some(truncate_utf8(target, MAX_HOST)).filter(|a| valid_host(a)));
    }
    let strip = |p: &'t str| -> &'t str {
        let end = p.find(['?', '#']).unwrap_or(p.len());
        cut_utf8(&p[..end], MAX_PATH)
    };
    let has_scheme = |scheme: &str| {
        target.len() >= scheme.len() && target.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
    };
    let rest = if has_scheme("http://") {
        Some(&target[7..])
    } else if has_scheme("https://") {
        Some(&target[8..])
    } else {
        None
    };
    match rest {
        Some(rest) => {
            let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, path) = rest.split_at(split);
            // userinfo@ is a credential: never exported.
            let authority = authority.rsplit('@').next().unwrap_or(authority);
            let path = if path.starts_with('/') { strip(path) } else { "/" };
            (Some(path), Some(authority.to_owned()).filter(|a| valid_host(a)))
        }
        None => (Some(strip(target)), None),
    }
}

fn valid_host(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_HOST && v.bytes().all(|c| c.is_ascii_graphic() && c != b'@' && c != b'/')
}

/// `host`, `host:port`, `[v6]:port` → (address, port).
pub(super) fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((addr, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (addr, port);
        }
    }
    match host.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(p) => (name, Some(p)),
            Err(_) => (name, None),
        },
        _ => (host, None),
    }
}

/// W3C traceparent, version 00 only: `00-<32 hex>-<16 hex>-<2 hex>`,
/// lowercase, ids not all zero. Anything else is None: a half-valid header
/// must not graft spans onto a wrong trace.
pub(crate) fn parse_traceparent(value: &[u8]) -> Option<TraceContext> {
    let incoming = parse_traceparent_value(value)?;
    Some(TraceContext { trace_id: incoming.trace_id, span_id: incoming.span_id, sampled: incoming.sampled() })
}

/// Printable ASCII only; at most [`MAX_TRACESTATE`] bytes, cut at list-member
/// boundaries (never inside a member).
pub(crate) fn bound_tracestate(raw: &str) -> Option<String> {
    if !raw.bytes().all(|c| (b' '..=b'~').contains(&c)) {
        return None;
    }
    let mut out = String::new();
    for member in raw.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let extra = member.len() + usize::from(!out.is_empty());
        if out.len() + extra > MAX_TRACESTATE {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(member);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_of(headers: &str) -> (Option<TraceContext>, Option<String>) {
        let head = parse_request_head(
            format!("GET / HTTP/1.1\r\n{headers}\r\n").as_bytes(),
            &super::super::redact::BUILT_IN_REDACTION,
            &mut HeadMemo::default(),
        )
        .unwrap();
        (head.context, head.tracestate)
    }

    /// The memo hands back the last values only while they are unchanged
    /// (a new port on the same address is a new value).
    #[test]
    fn a_connection_remembers_its_last_host_and_user_agent() {
        let mut memo = HeadMemo::default();
        let mut read = |host: &str, ua: &str| {
            let head = parse_request_head(
                format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {ua}\r\n\r\n").as_bytes(),
                &super::super::redact::BUILT_IN_REDACTION,
                &mut memo,
            )
            .unwrap();
            let (address, port) = head.host.unwrap();
            (address.to_string(), port, head.user_agent.unwrap().to_string())
        };
        assert_eq!(read("shop:8080", "curl/8"), ("shop".into(), Some(8080), "curl/8".into()));
        assert_eq!(read("shop:8080", "curl/8"), ("shop".into(), Some(8080), "curl/8".into()));
        assert_eq!(read("shop:9090", "wget"), ("shop".into(), Some(9090), "wget".into()));
        assert_eq!(read("[::1]", "wget"), ("::1".into(), None, "wget".into()));
        assert_eq!(memo.bytes(), "::1".len() + "wget".len());
    }

    #[test]
    fn valid_traceparent_is_parsed() {
        let (ctx, state) = ctx_of("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE\r\n");
        let ctx = ctx.unwrap();
        assert_eq!(crate::model::hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(crate::model::hex(&ctx.span_id), "00f067aa0ba902b7");
        assert!(ctx.sampled);
        assert_eq!(state.as_deref(), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        let (ctx, _) = ctx_of("TraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n");
        assert!(!ctx.unwrap().sampled);
    }

    #[test]
    fn invalid_traceparents_are_ignored_entirely() {
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            let (ctx, state) = ctx_of(&format!("traceparent: {bad}\r\ntracestate: a=b\r\n"));
            assert_eq!(ctx, None, "{bad}");
            assert_eq!(state, None, "tracestate without a valid traceparent: {bad}");
        }
        // Two traceparent headers: ambiguous.
        let tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
        assert_eq!(ctx_of(&format!("{tp}{tp}")).0, None);
    }

    #[test]
    fn tracestate_is_bounded_at_member_boundaries() {
        let tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
        let members: Vec<String> = (0..40).map(|n| format!("vendor{n:02}={}", "x".repeat(20))).collect();
        let (_, state) = ctx_of(&format!("{tp}tracestate: {}\r\n", members.join(",")));
        let state = state.unwrap();
        assert!(state.len() <= MAX_TRACESTATE);
        assert!(state.starts_with("vendor00="));
        assert!(state.split(',').all(|m| m.len() == 29), "no member cut: {state}");
        // Multiple headers are joined in order.
        let (_, state) = ctx_of(&format!("{tp}tracestate: a=1\r\ntracestate: b=2\r\n"));
        assert_eq!(state.as_deref(), Some("a=1,b=2"));
        // Non-printable content: dropped.
        let (ctx, state) = ctx_of(&format!("{tp}tracestate: a=\u{e9}\r\n"));
        assert!(ctx.is_some());
        assert_eq!(state, None);
    }

    #[test]
    fn host_port_and_targets() {
        assert_eq!(split_host_port("example.com"), ("example.com", None));
        assert_eq!(split_host_port("example.com:81"), ("example.com", Some(81)));
        assert_eq!(split_host_port("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_target("GET", "/a/b?c=d#e"), (Some("/a/b"), None));
        assert_eq!(
            split_target("GET", "http://user:pw@proxy.example:3128/x?y"),
            (Some("/x"), Some("proxy.example:3128".into()))
        );
        assert_eq!(split_target("GET", "HTTPS://h"), (Some("/"), Some("h".into())));
        assert_eq!(split_target("CONNECT", "h:443"), (None, Some("h:443".into())));
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b" 7 , 7"), Some(7));
        assert_eq!(parse_content_length(b"7, 8"), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        assert_eq!(truncate_utf8("héllo", 2), "h");
    }
}
