//! Checks a raw client's connections: what arrived is byte for byte what
//! the OS accepted from the client, but for one inserted line per request.
use std::{collections::HashMap, fs, path::Path};

use crate::{
    expect::{is_injected_line, without_agent, EVERY_REQUEST, KEEPS_SOCKETS, LINE_LEN},
    raw_plan::{Conn, Op},
    recording::Recording,
    tally::{snippet, Tally},
};

/// The raw client's log line for one connection.
pub struct ConnLog {
    pub port: u16,
    /// Per write: its length, then every call's return value.
    pub sends: Vec<Vec<i64>>,
    pub error: Option<String>,
}

#[track_caller]
pub fn read_logs(path: &Path) -> HashMap<usize, ConnLog> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display()));
            let id = v["id"].as_u64().unwrap_or_else(|| panic!("no id in {l}")) as usize;
            let sends = v["sends"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            s.as_array().map(|x| x.iter().filter_map(|n| n.as_i64()).collect()).unwrap_or_default()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let log = ConnLog {
                port: v["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
                sends,
                error: v["error"].as_str().map(str::to_owned),
            };
            (id, log)
        })
        .collect()
}

/// A raw case's family: its name up to the second `/` (after `nb/`).
pub fn family_of(case: &str) -> String {
    let (nb, rest) = case.strip_prefix("nb/").map_or(("", case), |r| ("nb/", r));
    let mut parts = rest.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("{nb}{a}/{b}"),
        (Some(a), None) => format!("{nb}{a}"),
        _ => case.to_owned(),
    }
}

/// Checks a raw client's connections against their recordings.
pub fn check_raw(
    client: &str,
    conns: &[Conn],
    logs: &HashMap<usize, ConnLog>,
    recs: Vec<Recording>,
    tally: &mut Tally,
) {
    // The client runs its connections one after the other, so the
    // recordings of one local port are in the order of its connections.
    let mut by_port: HashMap<u16, std::collections::VecDeque<Recording>> = HashMap::new();
    for r in recs {
        by_port.entry(r.port).or_default().push_back(r);
    }
    for (id, conn) in conns.iter().enumerate() {
        let what = format!("[{client}] {} (connection {id})", conn.case);
        let fam = family_of(&conn.case);
        let Some(log) = logs.get(&id) else {
            tally.fail(fam.as_str(), format!("{what}: the client never logged this connection"));
            continue;
        };
        if let Some(e) = log.error.as_deref().filter(|e| {
            let stall = e.starts_with("closing: timed out") && KEEPS_SOCKETS.load(std::sync::atomic::Ordering::Relaxed);
            tally.close_stalls += u64::from(stall);
            !stall
        }) {
            tally.fail(fam.as_str(), format!("{what}, local port {}: client error: {e}", log.port));
        }
        let Some(rec) = by_port.get_mut(&log.port).and_then(|q| q.pop_front()) else {
            if log.error.is_none() {
                tally.fail(fam.as_str(), format!("{what}: no recording for local port {}", log.port));
            }
            continue;
        };
        tally.connections += 1;
        // What the OS accepted, from the plan and the return values.
        let mut expected = Vec::with_capacity(conn.len);
        let mut writes = Vec::new();
        let mut w = 0;
        for op in &conn.ops {
            let Op::Write(sys, ps) = op else { continue };
            let len: usize = ps.iter().map(Vec::len).sum();
            let Some(rets) = log.sends.get(w) else { break };
            w += 1;
            let sum: i64 = rets.iter().skip(1).sum();
            if rets.first() != Some(&(len as i64)) || sum != len as i64 {
                tally.fail(
                    fam.as_str(),
                    format!(
                        "{what}: write {w} ({sys:?} of {len} bytes): the calls returned {:?}, adding up to {sum}",
                        &rets[1.min(rets.len())..]
                    ),
                );
            }
            let accepted = usize::try_from(sum.max(0)).unwrap_or(0).min(len);
            writes.push((expected.len(), accepted));
            let all = ps.concat();
            expected.extend_from_slice(&all[..accepted]);
        }
        let recorded = rec.bytes();
        match compare(conn, &expected, &recorded) {
            Ok((checked, injected, missing)) => {
                tally.requests += checked;
                tally.injected += injected;
                for m in missing.into_iter().filter(|_| !without_agent()) {
                    let mark = &conn.marks[m];
                    tally.fail(fam.as_str(), format!(
                        "{what}: request {} of {} (a plain single-write request, at byte {}) arrived without the inserted traceparent line: {}",
                        m + 1,
                        conn.marks.len(),
                        mark.start,
                        snippet(&recorded, mark.line_end.min(recorded.len()))
                    ));
                }
            }
            Err((e, r)) => {
                let m = conn.marks.iter().rposition(|m| m.start <= e).unwrap_or(0);
                let region = conn.marks.get(m).map_or("stream".to_owned(), |mk| {
                    let part = if e < mk.line_end {
                        "request line"
                    } else if e < mk.head_end {
                        "header block"
                    } else {
                        "body"
                    };
                    format!("request {} of {}, {part}, byte {} of the request", m + 1, conn.marks.len(), e - mk.start)
                });
                let write = writes.iter().position(|&(s, n)| e >= s && e < s + n.max(1)).map_or(String::new(), |i| {
                    format!(", write {} of {} (byte {} of it)", i + 1, writes.len(), e - writes[i].0)
                });
                tally.fail(fam.as_str(), format!(
                    "{what}, local port {}: first difference at byte {e} of what the client wrote ({region}{write}), byte {r} of what arrived ({} bytes written, {} arrived, {})\n    wrote:   {}\n    arrived: {}",
                    log.port,
                    expected.len(),
                    recorded.len(),
                    rec.path.display(),
                    snippet(&expected, e),
                    snippet(&recorded, r)
                ));
            }
        }
    }
}

/// Compares what arrived with what was written, allowing one inserted line
/// right after the request line of each request without its own
/// traceparent. Ok: (requests, inserted lines, indexes of plain requests
/// without an inserted line); Err: first differing offsets (written,
/// arrived).
pub fn compare(conn: &Conn, expected: &[u8], recorded: &[u8]) -> Result<(u64, u64, Vec<usize>), (usize, usize)> {
    let (mut i, mut j) = (0, 0);
    let mut injected = 0;
    let mut missing = Vec::new();
    let mut checked = 0;
    let same = |i: usize, j: usize, n: usize| -> Result<(), (usize, usize)> {
        let a = &expected[i..i + n];
        let b = &recorded[j..(j + n).min(recorded.len())];
        match a.iter().zip(b).position(|(x, y)| x != y) {
            Some(k) => Err((i + k, j + k)),
            None if b.len() < n => Err((i + b.len(), j + b.len())),
            None => Ok(()),
        }
    };
    for (k, m) in conn.marks.iter().enumerate() {
        if m.line_end > expected.len() {
            break;
        }
        checked += 1;
        if m.app_tp {
            continue;
        }
        let n = m.line_end - i;
        same(i, j, n)?;
        i += n;
        j += n;
        if is_injected_line(&recorded[j..]) {
            injected += 1;
            j += LINE_LEN;
        } else if m.must_inject && (k == 0 || EVERY_REQUEST.load(std::sync::atomic::Ordering::Relaxed)) {
            missing.push(k);
        }
    }
    same(i, j, expected.len() - i)?;
    j += expected.len() - i;
    if j < recorded.len() {
        return Err((expected.len(), j));
    }
    Ok((checked, injected, missing))
}
