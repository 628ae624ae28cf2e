//! nginx over HTTPS saturated by wrk over keep-alive TLS connections: no
//! agent, waggle (the plaintext read at OpenSSL's `SSL_read`/`SSL_write`,
//! the ciphertext skipped in the kernel), and the floor (empty programs on
//! waggle's syscall tracepoints; the TLS uprobes have no empty twin).
//! The rounds are scenario 1's [`NginxRound`]s without the metrics-on
//! variant.
use anyhow::{bail, Result};

use super::nginx::{saturated, Nginx, NginxRound};
use crate::bench::ctx::Ctx;

pub fn https(ctx: &mut Ctx) -> Result<Vec<NginxRound>> {
    let server = Nginx::start_with(ctx, true)?;
    let rounds = saturated(ctx, server, "https", false)?;
    // A ratio without tracing is no measure of tracing's cost: the agent
    // must have read the plaintext and made the spans.
    for (i, r) in rounds.iter().enumerate() {
        let (spans, tls) = (r.run.counter("spans_created"), r.run.counter("tls_conns"));
        if r.run.drained_spans == 0 || spans < r.agent_requests || tls == 0 {
            bail!(
                "round {}: waggle traced too little over TLS ({spans} spans for {} requests, {} exported in the \
                 window, {tls} TLS connections): is libssl probed? see raw/agent-*-https.log",
                i + 1,
                r.agent_requests,
                r.run.drained_spans
            );
        }
    }
    Ok(rounds)
}
