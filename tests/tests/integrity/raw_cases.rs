//! The raw clients' cases: hostile-but-legal ways to write HTTP/1.x
//! requests, and the blocking and non-blocking clients' plans made of them.
use crate::{
    raw_plan::{every, get, header, host, pieces, req, req_with_head_len, sys_of, Body, Conn, Req, Sys},
    rng::{body, filler, request_like_piece, target_for, Rng, FAKE_REQUESTS},
};

/// Plain single-write GETs on fresh connections and on idle keep-alive
/// connections: the injector must insert its line into every one sent with
/// send().
pub fn case_plain(conns: &mut Vec<Conn>) {
    for c in 0..20 {
        let mut conn = Conn::plain("plain/send");
        for i in 0..5 {
            conn.send(&get(&format!("/plain/{c}/{i}")), &[], Sys::Send);
        }
        conns.push(conn);
    }
    for (name, sys) in [("plain/write", Sys::Write), ("plain/sendmsg", Sys::Sendmsg)] {
        for c in 0..10 {
            let mut conn = Conn::new(name);
            for i in 0..3 {
                conn.send(&get(&format!("/plain/{c}/{i}")), &[], sys);
            }
            conns.push(conn);
        }
    }
}

/// Request lines of 16..=300 bytes, within 3 bytes of every power of two
/// from 64 to 65536, and a few random long ones; on fresh connections (GET,
/// POST with a body in the same write, no header at all) and all on one
/// keep-alive connection.
pub fn case_request_line_lengths(rng: &mut Rng, conns: &mut Vec<Conn>) {
    let mut lengths: Vec<usize> = (16..=300).collect();
    let mut p = 64;
    while p <= 65536 {
        lengths.extend(p - 3..=p + 3);
        p *= 2;
    }
    for _ in 0..6 {
        lengths.push(rng.range(301, 70_000));
    }
    lengths.sort_unstable();
    lengths.dedup();
    let mut keepalive = Conn::new("reqline_len/keepalive");
    keepalive.send(&get("/first"), &[], Sys::Send);
    for (i, &len) in lengths.iter().enumerate() {
        // Methods longer than GET only where the line has room for them.
        let version = if i % 7 == 3 { "HTTP/1.0" } else { "HTTP/1.1" };
        let method = if len < 24 { "GET" } else { ["GET", "DELETE", "OPTIONS", "GET", "HEAD"][i % 5] };
        let r = req(method, &target_for(method, version, len, "/len"), version, &[host()], Body::None);
        assert_eq!(r.line_end, len, "request line length");
        let mut conn = Conn::new(format!("reqline_len/{len}/{method}"));
        match sys_of(i) {
            Sys::Sendmsg => {
                let cut = rng.range(1, r.bytes.len() - 1);
                conn.mark(&r, 0);
                conn.writev(&r.bytes, &[cut]);
                conn.read(1, 200);
            }
            sys => conn.send(&r, &[], sys),
        }
        conns.push(conn);
        keepalive.send(&r, &[], Sys::Send);

        let post_target = target_for("POST", "HTTP/1.1", len.max(17), "/len");
        let r = req("POST", &post_target, "HTTP/1.1", &[host()], Body::Cl(body(rng, 1 + i % 97, i % 2 == 0)));
        let mut conn = Conn::new(format!("reqline_len/{}/POST+body", r.line_end));
        conn.send(&r, &[], Sys::Send);
        conns.push(conn);

        if len.is_power_of_two() || i % 10 == 0 {
            // No header: the request line is followed by the empty line.
            let r = req("GET", &target_for("GET", "HTTP/1.1", len, "/bare"), "HTTP/1.1", &[], Body::None);
            let mut conn = Conn::new(format!("reqline_len/{len}/no-headers"));
            conn.send(&r, &[], Sys::Send);
            conns.push(conn);
        }
    }
    conns.push(keepalive);
}

/// Header blocks (and whole messages) of lengths around 2048, 4096 and
/// 8192 bytes.
pub fn case_head_lengths(rng: &mut Rng, conns: &mut Vec<Conn>) {
    let mut keepalive = Conn::new("head_len/keepalive");
    keepalive.send(&get("/first"), &[], Sys::Send);
    for center in [2048, 4096, 8192] {
        for t in center - 6..=center + 6 {
            let rs = [
                ("GET", req_with_head_len("GET", &format!("/head/{t}"), t, || Body::None)),
                ("POST+64", {
                    let b = body(rng, 64, true);
                    req_with_head_len("POST", &format!("/head/{t}"), t, || Body::Cl(b.clone()))
                }),
                ("message", {
                    // Header block plus body exactly t bytes (the body's
                    // length changes the Content-Length digits: settle it).
                    let mut n = t - 60;
                    for _ in 0..3 {
                        n = t - req("POST", &format!("/msg/{t}"), "HTTP/1.1", &[host()], Body::Cl(vec![b'x'; n]))
                            .head_end;
                    }
                    let r = req("POST", &format!("/msg/{t}"), "HTTP/1.1", &[host()], Body::Cl(body(rng, n, true)));
                    assert_eq!(r.bytes.len(), t, "message length");
                    r
                }),
            ];
            for (what, r) in rs {
                let mut conn = Conn::new(format!("head_len/{t}/{what}"));
                conn.send(&r, &[], Sys::Send);
                conns.push(conn);
                keepalive.send(&r, &[], Sys::Write);
            }
        }
    }
    conns.push(keepalive);
}

/// Header blocks written in 2-3 writes, cut inside and right after the
/// request line, inside a header name (`trace|parent`), right before and
/// inside the final CRLF; with and without the application's own
/// traceparent (also in a later write, after a >4 KiB Cookie, mixed case).
pub fn case_split_heads(rng: &mut Rng, conns: &mut Vec<Conn>) {
    let cookie = || header("Cookie", format!("session={}", filler(4500, 3)));
    for variant in ["plain", "tp", "TraceParent", "tp-first", "cookie", "cookie-tp"] {
        for method in ["GET", "POST"] {
            for keepalive in [false, true] {
                let tp = rng.app_traceparent();
                let mut hs = vec![host(), header("User-Agent", "integrity/1")];
                match variant {
                    "tp" => hs.push(header("traceparent", tp)),
                    "TraceParent" => hs.push(header("TraceParent", tp)),
                    "tp-first" => hs.insert(0, header("traceparent", tp)),
                    "cookie" => hs.push(cookie()),
                    "cookie-tp" => {
                        hs.push(cookie());
                        hs.push(header("traceparent", tp));
                    }
                    _ => {}
                }
                hs.push(header("Accept", "*/*"));
                let b = if method == "POST" { Body::Cl(body(rng, 300, true)) } else { Body::None };
                let r = req(method, &format!("/split/{variant}"), "HTTP/1.1", &hs, b);
                let (le, he) = (r.line_end, r.head_end);
                let text = String::from_utf8_lossy(&r.bytes[..he]).into_owned();
                let name_cut = text
                    .to_ascii_lowercase()
                    .find("traceparent")
                    .map(|i| i + 5)
                    .unwrap_or_else(|| text.find("Host").unwrap_or(le) + 2);
                let cookie_cut = text.find("Cookie").map(|i| i + 4100);
                let mut schemes: Vec<(&str, Vec<usize>)> = vec![
                    ("reqline+1", vec![1]),
                    ("reqline+4", vec![4]),
                    ("reqline-mid", vec![le / 2]),
                    ("before-reqline-crlf", vec![le - 2]),
                    ("inside-reqline-crlf", vec![le - 1]),
                    ("after-reqline", vec![le]),
                    ("in-name", vec![name_cut]),
                    ("before-final-crlf", vec![he - 2]),
                    ("inside-final-crlf", vec![he - 1]),
                    ("after-reqline+in-name", vec![le, name_cut]),
                    ("reqline-mid+before-final-crlf", vec![le / 2, he - 2]),
                    ("after-reqline+before-final-crlf", vec![le, he - 2]),
                    ("after-head", vec![he]),
                ];
                if let Some(c) = cookie_cut {
                    schemes.push(("in-cookie", vec![c]));
                    schemes.push(("after-reqline+in-cookie", vec![le, c]));
                }
                for (i, (scheme, cuts)) in schemes.into_iter().enumerate() {
                    let mut conn = Conn::new(format!(
                        "split_head/{variant}/{method}/{scheme}{}",
                        if keepalive { "/keepalive" } else { "" }
                    ));
                    if keepalive {
                        conn.send(&get("/first"), &[], Sys::Send);
                    }
                    conn.send(&r, &cuts, sys_of(i));
                    // The connection goes on with a plain request.
                    conn.send(&get("/after"), &[], Sys::Send);
                    conns.push(conn);
                }
            }
        }
    }
}

/// Bodies that look like requests, written in pieces after the header
/// block: Content-Length and chunked (chunk data written on its own), with
/// `Expect: 100-continue`, and in the same write as the head.
pub fn case_request_like_bodies(rng: &mut Rng, conns: &mut Vec<Conn>) {
    for (k, piece) in [(2, 40), (3, 300), (4, 4000), (3, 5000), (6, 1500), (2, 70)] {
        for keepalive in [false, true] {
            let ps: Vec<Vec<u8>> = (0..k).map(|_| request_like_piece(rng, piece)).collect();
            let all: Vec<u8> = ps.concat();
            let cuts: Vec<usize> = ps
                .iter()
                .scan(0, |at, p| {
                    *at += p.len();
                    Some(*at)
                })
                .collect();
            let suffix = if keepalive { "/keepalive" } else { "" };
            let new = |what: &str| {
                let mut c = Conn::new(format!("request_like_body/{k}x{piece}/{what}{suffix}"));
                if keepalive {
                    c.send(&get("/first"), &[], Sys::Send);
                }
                c
            };

            let r = req("POST", "/body", "HTTP/1.1", &[host()], Body::Cl(all.clone()));
            let head_cuts: Vec<usize> =
                std::iter::once(r.head_end).chain(cuts.iter().map(|c| r.head_end + c)).collect();
            let mut conn = new("cl-pieces");
            conn.send(&r, &head_cuts, sys_of(k));
            conn.send(&get("/after"), &[], Sys::Send);
            conns.push(conn);

            // Head and first piece together, then the others.
            let mut conn = new("cl-head+piece");
            conn.send(&r, &head_cuts[1..], Sys::Send);
            conn.send(&get("/after"), &[], Sys::Send);
            conns.push(conn);

            // Chunked, every chunk's data (a request) written on its own.
            let r = req("POST", "/chunked", "HTTP/1.1", &[host()], Body::Chunked(ps.clone()));
            let mut ccuts = vec![r.head_end];
            for (i, &d) in r.chunk_data.iter().enumerate() {
                ccuts.push(d);
                ccuts.push(d + ps[i].len());
            }
            let mut conn = new("chunked-data-pieces");
            conn.send(&r, &ccuts, Sys::Send);
            conn.send(&get("/after"), &[], Sys::Send);
            conns.push(conn);

            // Each chunk (size line, data, CRLF) in one write.
            let mut conn = new("chunked-whole-chunks");
            let whole: Vec<usize> =
                std::iter::once(r.head_end).chain(r.chunk_data.iter().zip(&ps).map(|(d, p)| d + p.len() + 2)).collect();
            conn.send(&r, &whole, Sys::Write);
            conns.push(conn);

            // Expect: 100-continue, then the pieces.
            let tp = if k % 2 == 0 { vec![header("traceparent", rng.app_traceparent())] } else { vec![] };
            let mut hs = vec![host(), header("Expect", "100-continue")];
            hs.extend(tp);
            let r = req("POST", "/expect", "HTTP/1.1", &hs, Body::Cl(all.clone()));
            let mut conn = new("expect-pieces");
            conn.send_expect(&r, &cuts, Sys::Send);
            conn.send(&get("/after"), &[], Sys::Send);
            conns.push(conn);
        }
    }
}

/// Bodies of 100 KB to 1 MB, Content-Length and chunked, in one write, in
/// 64 KiB pieces, in 4097-byte pieces and in random pieces.
pub fn case_large_bodies(rng: &mut Rng, conns: &mut Vec<Conn>, slow: bool, prefix: &str) {
    for size in [100_000, 300_000, 1_048_576] {
        let data = body(rng, size, true);
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < size {
            let n = rng.range(1, 65536).min(size - at);
            chunks.push(data[at..at + n].to_vec());
            at += n;
        }
        let path = if slow { "/slow/large" } else { "/large" };
        for (enc, r) in [
            ("cl", req("POST", path, "HTTP/1.1", &[host()], Body::Cl(data.clone()))),
            ("chunked", req("PUT", path, "HTTP/1.1", &[host()], Body::Chunked(chunks))),
        ] {
            let len = r.bytes.len();
            let mut random = Vec::new();
            let mut c = 0;
            while c < len {
                c += rng.range(1, 50_000);
                random.push(c);
            }
            let schemes: Vec<(&str, Vec<usize>)> = vec![
                ("one-write", vec![]),
                ("head-then-body", vec![r.head_end]),
                ("64k-pieces", every(len, 65536)),
                ("4097-pieces", every(len, 4097)),
                ("random-pieces", random),
            ];
            for (i, (scheme, cuts)) in schemes.into_iter().enumerate() {
                let mut conn = Conn::new(format!("{prefix}large_body/{size}/{enc}/{scheme}"));
                conn.send(&r, &cuts, sys_of(i));
                conn.send(&get("/after"), &[], Sys::Send);
                conns.push(conn);
            }
        }
    }
}

/// The server answers 401 as soon as the header block is in; the client
/// reads that and keeps streaming its body (pieces that look like requests).
pub fn case_early_responses(rng: &mut Rng, conns: &mut Vec<Conn>, prefix: &str) {
    for variant in ["head-alone", "head+piece", "split-head", "chunked", "tp", "keepalive"] {
        let ps: Vec<Vec<u8>> = (0..10).map(|_| request_like_piece(rng, 30_000)).collect();
        let mut hs = vec![host()];
        if variant == "tp" {
            hs.push(header("traceparent", rng.app_traceparent()));
        }
        let r = if variant == "chunked" {
            req("POST", "/early401", "HTTP/1.1", &hs, Body::Chunked(ps.clone()))
        } else {
            req("POST", "/early401/upload", "HTTP/1.1", &hs, Body::Cl(ps.concat()))
        };
        let mut conn = Conn::new(format!("{prefix}early_401/{variant}"));
        if variant == "keepalive" {
            conn.send(&get("/first"), &[], Sys::Send);
        }
        let start = conn.len;
        conn.mark(&r, start);
        let first = if variant == "head+piece" { r.head_end + ps[0].len() } else { r.head_end };
        if variant == "split-head" {
            conn.write(Sys::Send, &r.bytes[..r.line_end]);
            conn.write(Sys::Send, &r.bytes[r.line_end..first]);
        } else {
            conn.write(Sys::Send, &r.bytes[..first]);
        }
        conn.read(1, 401);
        let rest = &r.bytes[first..];
        let cuts: Vec<usize> = if variant == "chunked" {
            r.chunk_data.iter().map(|d| d - first).collect()
        } else {
            every(rest.len(), 30_000)
        };
        for (i, p) in pieces(rest, &cuts).into_iter().enumerate() {
            conn.write(sys_of(i), &p);
        }
        conns.push(conn);
    }
}

/// Small requests of every kind, for pipelines.
pub fn small_request(rng: &mut Rng, i: usize) -> Req {
    match i % 5 {
        0 | 3 => get(&format!("/p/{i}")),
        1 => {
            let n = rng.range(0, 300);
            req("POST", &format!("/p/{i}"), "HTTP/1.1", &[host()], Body::Cl(body(rng, n, true)))
        }
        2 => req(
            "PUT",
            &format!("/p/{i}"),
            "HTTP/1.1",
            &[host(), header("X-N", i.to_string())],
            Body::Chunked(vec![body(rng, 10, false), FAKE_REQUESTS[0].to_vec()]),
        ),
        _ => {
            let n = rng.range(1, 200);
            req("DELETE", &format!("/p/{i}?q={}", filler(n, i)), "HTTP/1.1", &[host()], Body::None)
        }
    }
}

/// Several requests written back to back: in one write, one write each,
/// and cut at random points.
pub fn case_pipelines(rng: &mut Rng, conns: &mut Vec<Conn>, prefix: &str) {
    for n in [2, 3, 10, 50, 200] {
        let reqs: Vec<Req> = (0..n).map(|i| small_request(rng, i)).collect();
        let total: usize = reqs.iter().map(|r| r.bytes.len()).sum();
        let mut per_request = Vec::new();
        let mut at = 0;
        for r in &reqs {
            at += r.bytes.len();
            per_request.push(at);
        }
        let mut random = Vec::new();
        let mut c = 0;
        while c < total {
            c += rng.range(1, 700);
            random.push(c);
        }
        for (scheme, cuts) in [("one-write", vec![]), ("write-each", per_request), ("random-cuts", random)] {
            for keepalive in [false, true] {
                let mut conn =
                    Conn::new(format!("{prefix}pipeline/{n}/{scheme}{}", if keepalive { "/keepalive" } else { "" }));
                if keepalive {
                    conn.send(&get("/first"), &[], Sys::Send);
                }
                conn.pipeline(&reqs, &cuts, Sys::Send);
                conn.send(&get("/after"), &[], Sys::Send);
                conns.push(conn);
            }
        }
    }
}

/// `Expect: 100-continue` with and without the application's traceparent,
/// Content-Length and chunked.
pub fn case_expect(rng: &mut Rng, conns: &mut Vec<Conn>) {
    for (i, size) in [10, 5000, 70_000].into_iter().enumerate() {
        for tp in [false, true] {
            for chunked in [false, true] {
                let mut hs = vec![host(), header("Expect", "100-continue")];
                if tp {
                    hs.push(header("traceparent", rng.app_traceparent()));
                }
                let data = body(rng, size, true);
                let b = if chunked {
                    Body::Chunked(vec![data[..size / 2].to_vec(), data[size / 2..].to_vec()])
                } else {
                    Body::Cl(data)
                };
                let r = req("POST", "/expect", "HTTP/1.1", &hs, b);
                let mut conn = Conn::new(format!(
                    "expect/{size}/{}{}",
                    if chunked { "chunked" } else { "cl" },
                    if tp { "/tp" } else { "" }
                ));
                let body_len = r.bytes.len() - r.head_end;
                conn.send_expect(&r, &every(body_len, 4096), sys_of(i));
                conn.send(&get("/after"), &[], Sys::Send);
                conns.push(conn);
            }
        }
    }
}

/// Many small keep-alive requests, one write and one answer each.
pub fn case_bulk_pingpong(rng: &mut Rng, conns: &mut Vec<Conn>, prefix: &str, n_conns: usize, per_conn: usize) {
    for c in 0..n_conns {
        let mut conn = Conn::new(format!("{prefix}bulk/pingpong"));
        for i in 0..per_conn {
            let r = if i % 4 == 3 {
                let n = rng.range(1, 64);
                req("POST", &format!("/bulk/{c}/{i}"), "HTTP/1.1", &[host()], Body::Cl(body(rng, n, i % 8 == 3)))
            } else {
                get(&format!("/bulk/{c}/{i}"))
            };
            conn.send(&r, &[], sys_of(i / 4));
        }
        conns.push(conn);
    }
}

/// Many small keep-alive requests, pipelined in batches.
pub fn case_bulk_pipelined(
    rng: &mut Rng,
    conns: &mut Vec<Conn>,
    prefix: &str,
    n_conns: usize,
    batches: usize,
    batch: usize,
) {
    for c in 0..n_conns {
        let mut conn = Conn::new(format!("{prefix}bulk/pipelined"));
        for b in 0..batches {
            let reqs: Vec<Req> = (0..batch).map(|i| small_request(rng, c + b + i)).collect();
            // Batches alternate between one write and a few random cuts.
            let cuts = if b % 2 == 0 { vec![] } else { (0..3).map(|_| rng.range(1, batch * 40)).collect() };
            conn.pipeline(&reqs, &cuts, Sys::Send);
        }
        conns.push(conn);
    }
}

/// Heads far bigger than a 4 KiB send buffer (request lines up to 64 KiB,
/// a 60 KiB header block): the non-blocking client's short writes land
/// inside the header block.
pub fn case_big_heads(rng: &mut Rng, conns: &mut Vec<Conn>) {
    for len in [16_384, 32_771, 65_536, 65_539] {
        let r = req("GET", &target_for("GET", "HTTP/1.1", len, "/bighead"), "HTTP/1.1", &[host()], Body::None);
        let mut conn = Conn::new(format!("nb/big_head/reqline-{len}"));
        conn.send(&r, &[], Sys::Send);
        conn.send(&get("/after"), &[], Sys::Send);
        conns.push(conn);
    }
    for tp in [false, true] {
        let mut hs = vec![host(), header("Cookie", filler(60_000, 1))];
        if tp {
            hs.push(header("traceparent", rng.app_traceparent()));
        }
        let r = req("POST", "/slow/bighead", "HTTP/1.1", &hs, Body::Cl(body(rng, 200_000, true)));
        let mut conn = Conn::new(format!("nb/big_head/60k-headers{}", if tp { "/tp" } else { "" }));
        conn.send(&r, &[], Sys::Send);
        conns.push(conn);
    }
}

/// The blocking client's plan.
pub fn blocking_plan(rng: &mut Rng) -> Vec<Conn> {
    let mut conns = Vec::new();
    case_plain(&mut conns);
    case_request_line_lengths(rng, &mut conns);
    case_head_lengths(rng, &mut conns);
    case_split_heads(rng, &mut conns);
    case_request_like_bodies(rng, &mut conns);
    case_large_bodies(rng, &mut conns, false, "");
    case_early_responses(rng, &mut conns, "");
    case_pipelines(rng, &mut conns, "");
    case_expect(rng, &mut conns);
    case_bulk_pingpong(rng, &mut conns, "", 80, 250);
    case_bulk_pipelined(rng, &mut conns, "", 60, 10, 100);
    conns
}

/// The non-blocking client's plan (4 KiB send buffer; `/slow` bodies are
/// read slowly by the server).
pub fn nonblocking_plan(rng: &mut Rng) -> Vec<Conn> {
    let mut conns = Vec::new();
    case_big_heads(rng, &mut conns);
    case_large_bodies(rng, &mut conns, true, "nb/");
    case_early_responses(rng, &mut conns, "nb/");
    case_pipelines(rng, &mut conns, "nb/");
    let mut all = Vec::new();
    case_split_heads(rng, &mut all);
    case_request_like_bodies(rng, &mut all);
    // Every third of those is enough here.
    conns.extend(all.into_iter().step_by(3).map(|mut c| {
        c.case = format!("nb/{}", c.case);
        c
    }));
    case_bulk_pingpong(rng, &mut conns, "nb/", 40, 250);
    case_bulk_pipelined(rng, &mut conns, "nb/", 20, 10, 100);
    conns
}
