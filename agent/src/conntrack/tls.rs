//! TLS connections: their payload is plaintext the kernel read at the TLS
//! library (`DataEvent::flags` has `DATA_TLS`), parsed like any other
//! connection's bytes; the spans say the exchange was encrypted, and with
//! which version when the ServerHello was seen (`Handshake`, `hello.rs`).
use waggle_common::{tls::DATA_TLS, DataEvent};

use super::hello::{self, Hello};
use crate::model::{AttrValue, ParsedSpan};

/// Chunks (both directions) a watched handshake may take to show its
/// ServerHello: ClientHello, the ServerHello's header and body, and room
/// for a HelloRetryRequest's round. Bounds what a mute waits for.
const WATCH_CHUNKS: u8 = 12;

/// The version a connection's handshake chose, from the ciphertext the
/// socket calls carried before the connection's first plaintext. It
/// outlives the `Restart` at that plaintext, so every span of the
/// connection carries it.
#[derive(Debug, Default)]
pub(super) struct Handshake {
    watch: Watch,
    /// `tls.protocol.version`, when the ServerHello was seen.
    version: Option<&'static str>,
    /// The tracker decided to mute the connection while its ServerHello
    /// was awaited: the mute is done when the watch ends.
    mute_deferred: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Watch {
    /// No ClientHello (or switch to TLS) seen yet.
    #[default]
    Idle,
    /// A handshake started: the server's next records are read.
    /// `header`: the content type of the lone 5-byte record header the
    /// server's last chunk was (OpenSSL reads a record's header, then its
    /// body), 0 if none.
    Armed { header: u8, chunks_left: u8 },
    /// Seen, or given up.
    Over,
}

impl Handshake {
    /// The parser saw the connection switch to TLS in-band (PostgreSQL's
    /// SSLRequest answered `S`, MySQL's SSL request): the handshake follows.
    pub(super) fn arm(&mut self) {
        if self.watch == Watch::Idle {
            self.watch = Watch::Armed { header: 0, chunks_left: WATCH_CHUNKS };
        }
    }

    /// A mute decided now waits for the ServerHello while a handshake is
    /// watched (a few more chunks at most): returns true if deferred.
    pub(super) fn defers_mute(&mut self) -> bool {
        let armed = matches!(self.watch, Watch::Armed { .. });
        self.mute_deferred |= armed;
        armed
    }

    /// A chunk of the connection's bytes before its first plaintext;
    /// `from_server` is its direction. True when a deferred mute is due.
    pub(super) fn observe(&mut self, from_server: bool, bytes: &[u8]) -> bool {
        if self.watch == Watch::Idle && !from_server && hello::is_client_hello_record(bytes) {
            self.arm();
            return false;
        }
        let Watch::Armed { header, chunks_left } = &mut self.watch else {
            return false;
        };
        let mut over = false;
        if from_server {
            let seen = match (hello::lone_record_header(bytes), std::mem::take(header)) {
                (Some(kind), _) => {
                    *header = kind;
                    None
                }
                (None, 0) => Some(hello::server_hello_in_record(bytes)),
                (None, hello::HANDSHAKE) => Some(hello::server_hello(bytes)),
                // The body of a ChangeCipherSpec (after a HelloRetryRequest).
                (None, _) => None,
            };
            if let Some(seen) = seen {
                match seen {
                    Hello::Version(v) => {
                        self.version = hello::version_name(v);
                        over = true;
                    }
                    Hello::Retry => {}
                    Hello::Truncated | Hello::Other => over = true,
                }
            }
        }
        *chunks_left = chunks_left.saturating_sub(1);
        if over || *chunks_left == 0 {
            self.watch = Watch::Over;
            return std::mem::take(&mut self.mute_deferred);
        }
        false
    }

    /// The connection's first plaintext: the watch ends. A deferred mute
    /// is moot: the kernel drops a TLS connection's ciphertext itself.
    /// Returns the version its spans carry.
    pub(super) fn plaintext_started(&mut self) -> Option<&'static str> {
        self.watch = Watch::Over;
        self.mute_deferred = false;
        self.version
    }

    pub(super) fn version(&self) -> Option<&'static str> {
        self.version
    }
}

/// What a data record does to a connection, by whether it and the
/// connection are TLS plaintext.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Parse it as usual.
    Feed,
    /// The connection's first plaintext record: what its ciphertext did
    /// (the handshake's bytes were being detected, or were declared unknown
    /// and muted) is void; it starts over as a fresh connection.
    Restart,
    /// Ciphertext queued before the kernel knew the connection was TLS but
    /// read after its plaintext: not parsed (counted).
    Ignore,
}

pub(super) fn step(conn_is_tls: bool, header: &DataEvent) -> Step {
    match (conn_is_tls, header.flags & DATA_TLS != 0) {
        (false, true) => Step::Restart,
        (true, false) => Step::Ignore,
        _ => Step::Feed,
    }
}

/// HTTP spans of a TLS connection are `https`; every span carries
/// `tls.protocol.name`, and `tls.protocol.version` when the handshake was
/// seen.
pub(super) fn mark_spans(spans: &mut [ParsedSpan], version: Option<&'static str>) {
    for span in spans {
        for (key, value) in span.attributes.iter_mut() {
            if *key == "url.scheme" {
                *value = AttrValue::from("https");
            }
        }
        span.attributes.push(("tls.protocol.name", AttrValue::from("tls")));
        if let Some(version) = version {
            span.attributes.push(("tls.protocol.version", AttrValue::from(version)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SpanKind, SpanStatus};

    #[test]
    fn plaintext_restarts_a_connection_once_and_ciphertext_after_it_is_ignored() {
        let plain = DataEvent { flags: DATA_TLS, ..DataEvent::default() };
        let cipher = DataEvent::default();
        assert_eq!(step(false, &plain), Step::Restart);
        assert_eq!(step(true, &plain), Step::Feed);
        assert_eq!(step(true, &cipher), Step::Ignore);
        assert_eq!(step(false, &cipher), Step::Feed);
    }

    #[test]
    fn http_spans_become_https_and_every_span_says_tls() {
        let span = |attributes| ParsedSpan {
            kind: SpanKind::Client,
            name: "GET /".into(),
            start_ns: 1,
            end_ns: 2,
            status: SpanStatus::Unset,
            attributes,
            incoming_context: None,
            incoming_tracestate: None,
            tid: 1,
        };
        let mut spans = vec![
            span(vec![("url.scheme", AttrValue::from("http")), ("http.route", AttrValue::from("/"))]),
            span(vec![("db.system.name", AttrValue::from("postgresql"))]),
        ];
        mark_spans(&mut spans, Some("1.3"));
        assert_eq!(spans[0].attr("url.scheme"), Some(&AttrValue::from("https")));
        assert_eq!(spans[0].attr("http.route"), Some(&AttrValue::from("/")));
        assert!(spans.iter().all(|s| s.attr("tls.protocol.name") == Some(&AttrValue::from("tls"))));
        assert_eq!(spans[1].attr("url.scheme"), None, "no scheme where there was none");
        assert!(spans.iter().all(|s| s.attr("tls.protocol.version") == Some(&AttrValue::from("1.3"))));
        let mut unseen = vec![span(vec![])];
        mark_spans(&mut unseen, None);
        assert_eq!(unseen[0].attr("tls.protocol.version"), None, "not seen: no attribute");
    }
}
