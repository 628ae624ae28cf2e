//! Span assembly: turns parser output into exportable spans with identity
//! (trace/span ids and the sampling decision), wall-clock times, the
//! connection's network attributes and the process resource.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::{
    clock::Clock,
    config::Sampler,
    model::{
        random_nonzero, AttrValue, Attribute, ConnMeta, FinishedSpan, ParsedSpan, ProcessResource, SpanIdentity,
        SpanKind, Text,
    },
};

/// Turns parser output into exportable spans: identity, sampling, wall-clock
/// times, network attributes from the connection, and the process resource.
pub struct SpanAssembler {
    clock: Clock,
    sampler: Sampler,
    /// Respect the caller's sampled flag (parentbased_* samplers); otherwise
    /// the sampler decides on the trace id alone.
    parent_based: bool,
    /// Addresses as text, shared by every span that names them: a node
    /// talks to few peers, and formatting one per attribute per span was a
    /// third of a span's allocations.
    ip_texts: HashMap<IpAddr, Arc<str>, foldhash::fast::RandomState>,
}

/// Peer and local addresses kept as text at most; the table starts over
/// when full (amortised O(1), and a scan of many addresses only costs the
/// formatting it saves otherwise).
const MAX_IP_TEXTS: usize = 4096;

impl SpanAssembler {
    pub fn new(clock: Clock, sampler: Sampler, parent_based: bool) -> SpanAssembler {
        SpanAssembler { clock, sampler, parent_based, ip_texts: HashMap::default() }
    }

    fn ip_text(&mut self, ip: IpAddr) -> Text {
        if let Some(text) = self.ip_texts.get(&ip) {
            return Text::Shared(Arc::clone(text));
        }
        if self.ip_texts.len() >= MAX_IP_TEXTS {
            self.ip_texts.clear();
        }
        let text: Arc<str> = Arc::from(ip.to_string());
        self.ip_texts.insert(ip, Arc::clone(&text));
        Text::Shared(text)
    }

    /// Sampling decision for a trace this agent starts (no incoming context).
    fn sample_root(&self, trace_id: &[u8; 16]) -> bool {
        // As the OTel SDKs do (low 8 bytes of the trace id against
        // ratio * 2^63), and exactly as the kernel does.
        waggle_common::sampled_by_threshold(trace_id, self.sampler.threshold())
    }

    /// Returns None when the span is sampled out.
    pub fn assemble(
        &mut self,
        parsed: ParsedSpan,
        conn: &ConnMeta,
        resource: Arc<ProcessResource>,
        identity: Option<SpanIdentity>,
    ) -> Option<FinishedSpan> {
        let decide = |trace_id: &[u8; 16], parent_sampled: Option<bool>| match parent_sampled {
            Some(flag) if self.parent_based => flag,
            _ => self.sample_root(trace_id),
        };
        let tracestate = parsed.incoming_tracestate.clone();
        let (trace_id, span_id, parent_span_id, sampled, tracestate) = match (identity, parsed.incoming_context) {
            // The application wrote its own traceparent and the kernel left it
            // alone: our client span joins the application's trace.
            (Some(id), Some(app)) if parsed.kind == SpanKind::Client && !id.injected => {
                (app.trace_id, id.span_id, Some(app.span_id), decide(&app.trace_id, Some(app.sampled)), tracestate)
            }
            // The kernel decided (and maybe propagated) these ids and made
            // the sampling decision with the same sampler: honour it, so
            // what goes downstream and what is exported agree.
            (Some(id), _) => {
                let tracestate = if parsed.kind == SpanKind::Server { tracestate } else { None };
                (id.trace_id, id.span_id, id.parent_span_id, id.sampled, tracestate)
            }
            // A server joins its caller's trace; a client whose application
            // wrote its own traceparent joins the application's trace.
            (None, Some(ctx)) => (
                ctx.trace_id,
                random_nonzero::<8>(),
                Some(ctx.span_id),
                decide(&ctx.trace_id, Some(ctx.sampled)),
                tracestate,
            ),
            (None, None) => {
                let trace_id = random_nonzero::<16>();
                (trace_id, random_nonzero::<8>(), None, decide(&trace_id, None), None)
            }
        };
        if !sampled {
            return None;
        }
        let mut attributes = parsed.attributes;
        let has = |attrs: &Vec<Attribute>, key: &str| attrs.iter().any(|(k, _)| *k == key);
        if let Some(peer) = conn.peer {
            let peer_ip = self.ip_text(peer.ip());
            attributes.push(("network.peer.address", AttrValue::Str(peer_ip.clone())));
            attributes.push(("network.peer.port", AttrValue::Int(i64::from(peer.port()))));
            match parsed.kind {
                SpanKind::Server => {
                    if !has(&attributes, "client.address") {
                        attributes.push(("client.address", AttrValue::Str(peer_ip)));
                    }
                }
                SpanKind::Client => {
                    if !has(&attributes, "server.address") {
                        attributes.push(("server.address", AttrValue::Str(peer_ip)));
                    }
                    if !has(&attributes, "server.port") {
                        attributes.push(("server.port", AttrValue::Int(i64::from(peer.port()))));
                    }
                    // The client's own end: with the server span's
                    // network.peer.port it names the connection on both
                    // sides (several connections to one server told apart).
                    if let Some(local) = conn.local {
                        attributes.push(("network.local.port", AttrValue::Int(i64::from(local.port()))));
                    }
                }
            }
        }
        if parsed.kind == SpanKind::Server {
            if let Some(local) = conn.local {
                if !has(&attributes, "server.address") {
                    attributes.push(("server.address", AttrValue::Str(self.ip_text(local.ip()))));
                }
                if !has(&attributes, "server.port") {
                    attributes.push(("server.port", AttrValue::Int(i64::from(local.port()))));
                }
            }
        }
        if !has(&attributes, "network.transport") {
            attributes.push(("network.transport", AttrValue::from("tcp")));
        }
        let end_ns = parsed.end_ns.max(parsed.start_ns);
        Some(FinishedSpan {
            resource,
            trace_id,
            span_id,
            parent_span_id,
            tracestate,
            sampled,
            kind: parsed.kind,
            name: parsed.name,
            start: self.clock.to_system_time(parsed.start_ns),
            end: self.clock.to_system_time(end_ns),
            status: parsed.status,
            attributes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SpanStatus, TraceContext};
    use waggle_common::Role;

    fn parsed(kind: SpanKind, ctx: Option<TraceContext>) -> ParsedSpan {
        ParsedSpan {
            kind,
            name: "GET /users/{id}".into(),
            start_ns: 1_000,
            end_ns: 301_000_000,
            status: SpanStatus::Unset,
            attributes: vec![("http.request.method", "GET".into())],
            incoming_context: ctx,
            incoming_tracestate: ctx.map(|_| "vendor=1".to_string()),
            tid: 7,
        }
    }

    fn conn(role: Role) -> ConnMeta {
        ConnMeta {
            pid: 42,
            fd: 3,
            conn_id: 1,
            role,
            protocol: crate::model::Protocol::Http1,
            peer: Some("10.1.2.3:5555".parse().unwrap()),
            local: Some("10.9.9.9:8080".parse().unwrap()),
        }
    }

    fn resource() -> Arc<ProcessResource> {
        Arc::new(ProcessResource {
            service_name: "app".into(),
            pid: 42,
            executable_name: "python3".into(),
            attributes: vec![],
        })
    }

    #[test]
    fn server_span_joins_incoming_context_and_gets_network_identity() {
        let mut a = SpanAssembler::new(Clock::new(), Sampler::AlwaysOn, true);
        let ctx = TraceContext { trace_id: [7; 16], span_id: [8; 8], sampled: true };
        let s = a.assemble(parsed(SpanKind::Server, Some(ctx)), &conn(Role::Server), resource(), None).unwrap();
        assert_eq!(s.trace_id, [7; 16]);
        assert_eq!(s.parent_span_id, Some([8; 8]));
        assert_ne!(s.span_id, [0; 8]);
        assert_eq!(s.tracestate.as_deref(), Some("vendor=1"));
        assert_eq!(s.attr("client.address"), Some(&AttrValue::Str("10.1.2.3".into())));
        assert_eq!(s.attr("server.port"), Some(&AttrValue::Int(8080)));
        assert_eq!(s.attr("network.peer.port"), Some(&AttrValue::Int(5555)));
        let ms = s.duration().as_millis();
        assert_eq!(ms, 300, "monotonic durations survive the wall-clock mapping");
    }

    #[test]
    fn client_span_names_its_server_from_the_peer() {
        let mut a = SpanAssembler::new(Clock::new(), Sampler::AlwaysOn, true);
        let s = a.assemble(parsed(SpanKind::Client, None), &conn(Role::Client), resource(), None).unwrap();
        assert_eq!(s.parent_span_id, None);
        assert_ne!(s.trace_id, [0; 16]);
        assert_eq!(s.attr("server.address"), Some(&AttrValue::Str("10.1.2.3".into())));
        assert_eq!(s.attr("server.port"), Some(&AttrValue::Int(5555)));
        assert_eq!(s.attr("network.local.port"), Some(&AttrValue::Int(8080)), "the client's own end");
        assert_eq!(s.attr("client.address"), None);
    }

    #[test]
    fn sampler_rules() {
        let mut off = SpanAssembler::new(Clock::new(), Sampler::AlwaysOff, true);
        assert!(off.assemble(parsed(SpanKind::Server, None), &conn(Role::Server), resource(), None).is_none());
        // Parent-based: a sampled caller wins over always_off for the root.
        let ctx = TraceContext { trace_id: [7; 16], span_id: [8; 8], sampled: true };
        assert!(off.assemble(parsed(SpanKind::Server, Some(ctx)), &conn(Role::Server), resource(), None).is_some());
        let unsampled = TraceContext { sampled: false, ..ctx };
        let mut on = SpanAssembler::new(Clock::new(), Sampler::AlwaysOn, true);
        assert!(on
            .assemble(parsed(SpanKind::Server, Some(unsampled)), &conn(Role::Server), resource(), None)
            .is_none());
        // Not parent-based: the sampler alone decides.
        let mut plain_off = SpanAssembler::new(Clock::new(), Sampler::AlwaysOff, false);
        assert!(plain_off
            .assemble(parsed(SpanKind::Server, Some(ctx)), &conn(Role::Server), resource(), None)
            .is_none());
        let mut half = SpanAssembler::new(Clock::new(), Sampler::TraceIdRatio(0.5), false);
        let kept = (0..2000)
            .filter(|_| half.assemble(parsed(SpanKind::Client, None), &conn(Role::Client), resource(), None).is_some())
            .count();
        assert!((800..1200).contains(&kept), "ratio 0.5 kept {kept} of 2000");
    }
}
