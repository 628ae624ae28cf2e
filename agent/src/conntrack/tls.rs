//! TLS connections: their payload is plaintext the kernel read at the TLS
//! library (`DataEvent::flags` has `DATA_TLS`), parsed like any other
//! connection's bytes; the spans say the exchange was encrypted.
use waggle_common::{tls::DATA_TLS, DataEvent, SockKey};

use super::{Conn, ConnEnvironment, ParseState};
use crate::{
    metrics::Metrics,
    model::{AttrValue, ParsedSpan},
};

/// Whether `header`'s payload is to be parsed on `conn`. A connection's
/// first plaintext record voids what its ciphertext did (the handshake's
/// bytes were being detected, or already declared unknown and muted): it
/// starts over as a fresh connection. Ciphertext queued before the kernel
/// knew the connection was TLS but read after its plaintext is ignored.
pub(super) fn accept(conn: &mut Conn, header: &DataEvent, metrics: &Metrics) -> bool {
    let plaintext = header.flags & DATA_TLS != 0;
    match (conn.tls, plaintext) {
        (false, true) => {
            conn.tls = true;
            conn.state = ParseState::detecting(false);
            Metrics::inc(&metrics.tls_conns);
            true
        }
        (true, false) => {
            Metrics::inc(&metrics.tls_ciphertext_ignored);
            false
        }
        _ => true,
    }
}

/// Stops capture on a connection: the plaintext's own switch for TLS ones
/// (the ciphertext one may already be set from the handshake's bytes).
pub(super) fn mute(tls: bool, env: &mut dyn ConnEnvironment, key: SockKey, conn_id: u64) {
    if tls {
        env.mute_tls(key, conn_id);
    } else {
        env.mute(key, conn_id);
    }
}

/// HTTP spans of a TLS connection are `https`; every span carries
/// `tls.protocol.name`. `tls.protocol.version` is not known: the kernel
/// would have to read it from OpenSSL's private structs.
pub(super) fn mark_spans(spans: &mut [ParsedSpan]) {
    for span in spans {
        for (key, value) in span.attributes.iter_mut() {
            if *key == "url.scheme" {
                *value = AttrValue::from("https");
            }
        }
        span.attributes.push(("tls.protocol.name", AttrValue::from("tls")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SpanKind, SpanStatus};

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
        mark_spans(&mut spans);
        assert_eq!(spans[0].attr("url.scheme"), Some(&AttrValue::from("https")));
        assert_eq!(spans[0].attr("http.route"), Some(&AttrValue::from("/")));
        assert!(spans.iter().all(|s| s.attr("tls.protocol.name") == Some(&AttrValue::from("tls"))));
        assert_eq!(spans[1].attr("url.scheme"), None, "no scheme where there was none");
    }
}
