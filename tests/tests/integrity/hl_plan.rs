//! What the high-level clients (curl, node, Java, Go, nginx) send: their
//! plan, the plan file the node, Java and Go clients read, and curl's
//! arguments.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use crate::{
    raw_plan::header,
    rng::{body, filler, request_like_piece, target_for, Rng},
};

/// One request of a high-level client's plan.
pub struct HlReq {
    /// The kind of request, for grouping failures.
    pub label: &'static str,
    pub method: &'static str,
    pub path: String,
    pub body: Option<Vec<u8>>,
    pub chunked: bool,
    pub expect: bool,
    pub headers: Vec<(String, String)>,
    /// The traceparent value the application set (must arrive, alone).
    pub app_tp: Option<String>,
}

/// A request of `method` (path filled in by `hl_plan`).
pub fn hl(
    label: &'static str,
    method: &'static str,
    body: Option<Vec<u8>>,
    flags: &str,
    headers: Vec<(String, String)>,
) -> HlReq {
    let app_tp = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("traceparent")).map(|(_, v)| v.clone());
    HlReq {
        label,
        method,
        path: String::new(),
        body,
        chunked: flags.contains('c'),
        expect: flags.contains('e'),
        headers,
        app_tp,
    }
}

/// What the high-level client `client` sends (paths `/hl/<client>/<n>...`,
/// unique). `nginx`: the application's traceparent travels to nginx as
/// `X-App-Traceparent`, which nginx's configuration turns into
/// `traceparent` (it drops the incoming one, which the kernel may have
/// inserted into curl's request).
pub fn hl_plan(rng: &mut Rng, client: &str, nginx: bool) -> Vec<HlReq> {
    let mut plan = Vec::new();
    let mut long_lines = Vec::new();
    for _ in 0..25 {
        plan.push(hl("GET", "GET", None, "", vec![]));
    }
    for i in 0..5 {
        let n = rng.range(1, 2000);
        plan.push(hl("POST", "POST", Some(body(rng, n, i % 2 == 0)), "", vec![]));
    }
    plan.push(hl("PUT", "PUT", Some(body(rng, 777, true)), "", vec![]));
    plan.push(hl("DELETE", "DELETE", None, "", vec![]));
    for n in [200, 20_000] {
        plan.push(hl("request-like body", "POST", Some(request_like_piece(rng, n)), "", vec![]));
    }
    for n in [300_000, 1_048_576] {
        plan.push(hl("large body", "POST", Some(body(rng, n, true)), "", vec![]));
    }
    plan.push(hl("chunked", "POST", Some(request_like_piece(rng, 5000)), "c", vec![]));
    plan.push(hl("chunked", "PUT", Some(body(rng, 200_000, true)), "c", vec![]));
    plan.push(hl("expect", "POST", Some(request_like_piece(rng, 50_000)), "e", vec![]));
    plan.push(hl("own traceparent", "GET", None, "", vec![header("traceparent", rng.app_traceparent())]));
    plan.push(hl(
        "own traceparent",
        "POST",
        Some(request_like_piece(rng, 3000)),
        "",
        vec![header("traceparent", rng.app_traceparent())],
    ));
    plan.push(hl("own traceparent", "GET", None, "", vec![header("TraceParent", rng.app_traceparent())]));
    plan.push(hl(
        "cookie + own traceparent",
        "GET",
        None,
        "",
        vec![header("Cookie", format!("s={}", filler(4600, 5))), header("traceparent", rng.app_traceparent())],
    ));
    plan.push(hl("cookie", "GET", None, "", vec![header("Cookie", format!("s={}", filler(4600, 6)))]));
    plan.push(hl("4 KB header", "GET", None, "", vec![header("X-Fill", filler(4000, 7))]));
    for len in [4093, 4094, 4095, 4096, 4097, 4098, 8190, 8191, 8192, 8193, 8194] {
        long_lines.push((plan.len(), len));
        plan.push(hl("long request line", "GET", None, "", vec![]));
    }
    for _ in 0..20 {
        plan.push(hl("GET", "GET", None, "", vec![]));
    }
    for (i, r) in plan.iter_mut().enumerate() {
        let prefix = format!("/hl/{client}/{i}");
        r.path = match long_lines.iter().find(|(at, _)| *at == i) {
            Some(&(_, len)) => target_for(r.method, "HTTP/1.1", len, &prefix),
            None => prefix,
        };
        if nginx {
            for h in &mut r.headers {
                if h.0.eq_ignore_ascii_case("traceparent") {
                    h.0 = "X-App-Traceparent".to_owned();
                }
            }
        }
    }
    plan
}

/// Writes the tab-separated plan the node, Java and Go clients read, and
/// the bodies next to it.
pub fn write_hl_plan(dir: &Path, plan: &[HlReq]) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let mut text = String::new();
    for (i, r) in plan.iter().enumerate() {
        let body = match &r.body {
            Some(b) => {
                let name = format!("body-{i}.bin");
                fs::write(dir.join(&name), b).unwrap_or_else(|e| panic!("writing a body: {e}"));
                name
            }
            None => "-".to_owned(),
        };
        let flags = format!("{}{}-", if r.chunked { "c" } else { "" }, if r.expect { "e" } else { "" });
        let _ = write!(text, "{}\t{}\t{body}\t{flags}", r.method, r.path);
        for (name, value) in &r.headers {
            let _ = write!(text, "\t{name}\t{value}");
        }
        text.push('\n');
    }
    let path = dir.join("plan.tsv");
    fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// curl arguments sending every request of `plan` to `base` over one
/// connection (`--next`), printing each status.
pub fn curl_args(plan: &[HlReq], plan_dir: &Path, base: &str) -> Vec<String> {
    let mut args = Vec::new();
    for (i, r) in plan.iter().enumerate() {
        if i > 0 {
            args.push("--next".to_owned());
        }
        args.extend(["-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}\\n"].map(str::to_owned));
        if r.method != "GET" {
            args.extend(["-X".to_owned(), r.method.to_owned()]);
        }
        if r.body.is_some() {
            args.extend(["--data-binary".to_owned(), format!("@{}", plan_dir.join(format!("body-{i}.bin")).display())]);
        }
        if r.chunked {
            args.extend(["-H".to_owned(), "Transfer-Encoding: chunked".to_owned()]);
        }
        if r.expect {
            args.extend(["-H".to_owned(), "Expect: 100-continue".to_owned()]);
        }
        for (name, value) in &r.headers {
            args.extend(["-H".to_owned(), format!("{name}: {value}")]);
        }
        args.push(format!("{base}{}", r.path));
    }
    args
}
