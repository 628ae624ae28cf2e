//! Checks a high-level client's recordings against its plan: every request
//! arrived once, intact, with at most one traceparent, the right one.
use std::collections::HashMap;

use crate::{
    expect::is_injected_line,
    hl_plan::HlReq,
    http_parse::parse_requests,
    recording::Recording,
    tally::{short, snippet, Tally},
};

/// Checks a high-level client's recordings against its plan.
pub fn check_hl(client: &str, plan: &[HlReq], recs: Vec<Recording>, tally: &mut Tally) {
    let by_path: HashMap<&str, usize> = plan.iter().enumerate().map(|(i, r)| (r.path.as_str(), i)).collect();
    let mut seen = vec![false; plan.len()];
    for rec in recs {
        let bytes = rec.bytes();
        if bytes.is_empty() {
            continue;
        }
        tally.connections += 1;
        let what = format!("[{client}] connection from port {} ({})", rec.port, rec.path.display());
        let (reqs, err) = parse_requests(&bytes);
        if let Some((at, why)) = err {
            let after = reqs.last().map_or("at the start".to_owned(), |p| {
                format!("after {} good requests, the last {}", reqs.len(), short(&p.target))
            });
            tally.fail(
                "unparsable stream",
                format!(
                    "{what}: not a sequence of HTTP/1.1 requests ({after}): {why} at byte {at}: {}",
                    snippet(&bytes, at)
                ),
            );
        }
        for p in reqs {
            let Some(&i) = by_path.get(p.target.as_str()) else {
                tally.fail(
                    "unexpected request",
                    format!("{what}: request at byte {} for {:?}, which the client never sent", p.offset, p.target),
                );
                continue;
            };
            let r = &plan[i];
            let case = format!(
                "[{client}] request {} {} ({} body bytes{}{})",
                r.method,
                short(&r.path),
                r.body.as_ref().map_or(0, Vec::len),
                if r.chunked { ", chunked" } else { "" },
                if r.app_tp.is_some() { ", own traceparent" } else { "" }
            );
            if std::mem::replace(&mut seen[i], true) {
                tally.fail(
                    r.label,
                    format!("{case}: arrived twice (again at byte {} of {})", p.offset, rec.path.display()),
                );
                continue;
            }
            tally.requests += 1;
            if p.method != r.method {
                tally.fail(r.label, format!("{case}: arrived as method {}", p.method));
            }
            let want = r.body.as_deref().unwrap_or(&[]);
            if p.body != want {
                let k = p.body.iter().zip(want).position(|(a, b)| a != b).unwrap_or(p.body.len().min(want.len()));
                tally.fail(
                    r.label,
                    format!(
                    "{case}: body differs from byte {k} ({} bytes arrived, {} sent)\n    sent:    {}\n    arrived: {}",
                    p.body.len(),
                    want.len(),
                    snippet(want, k),
                    snippet(&p.body, k)
                ),
                );
            }
            let tps: Vec<&(String, Vec<u8>, usize)> = p.headers.iter().filter(|h| h.0 == "traceparent").collect();
            match (&r.app_tp, tps.as_slice()) {
                (Some(v), [one]) if one.1 == v.as_bytes() => {}
                (Some(v), _) => tally.fail(
                    r.label,
                    format!(
                        "{case}: the application's traceparent {v} must arrive alone and unchanged; arrived: {:?}",
                        tps.iter().map(|h| String::from_utf8_lossy(&h.1).into_owned()).collect::<Vec<_>>()
                    ),
                ),
                (None, []) => {}
                (None, [one]) => {
                    let line_start = one.2;
                    let right_after = p.headers.first().is_some_and(|h| h.2 == line_start);
                    if right_after && is_injected_line(&bytes[line_start..]) {
                        tally.injected += 1;
                    } else {
                        tally.fail(r.label, format!(
                            "{case}: a traceparent the application did not set, not the kernel's line right after the request line: {}",
                            snippet(&bytes, line_start)
                        ));
                    }
                }
                (None, more) => tally.fail(
                    r.label,
                    format!(
                        "{case}: {} traceparent headers arrived: {:?}",
                        more.len(),
                        more.iter().map(|h| String::from_utf8_lossy(&h.1).into_owned()).collect::<Vec<_>>()
                    ),
                ),
            }
        }
    }
    let lost: Vec<String> = plan
        .iter()
        .zip(&seen)
        .filter(|(_, seen)| !**seen)
        .map(|(r, _)| format!("{} {} ({})", r.method, short(&r.path), r.label))
        .collect();
    if !lost.is_empty() {
        tally.fail(
            "never arrived",
            format!(
                "[{client}] {} of {} requests never arrived (or not intact enough to be told apart): {}",
                lost.len(),
                plan.len(),
                lost.join(", ")
            ),
        );
    }
}
