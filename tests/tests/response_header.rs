//! `--trace-response-header` on this machine's kernel, against Python's
//! `http.server`.
//!
//! Inserting into responses needs server sockets in a sockmap while their
//! requests arrive, and on kernels whose FIONREAD misreports sockets in a
//! sockmap (6.6.128+, 6.12.75+, 6.18.14+; this project's CI host) that
//! would stall servers that size their reads with it. There the option
//! turns itself off with one log line, which this test checks: no response
//! may carry a header the server did not write, and every response (fixed,
//! 100 KB, HEAD, 304, 404) must be the bytes the server sends without an
//! agent. The same with the option at its default. Where the option is on
//! (Debian's 6.12 in the kernel matrix), the matrix's guest check
//! (xtask/src/kernels/responses.rs) tests the insertion itself; on a host
//! of that kind this test fails on the first inserted line.
use std::{fs, path::Path};

use waggle_e2e::{e2e_setup, server_spans, Agent, OtlpReceiver, Protocol, Server, SPAN_TIMEOUT};

/// The agent's log line when propagation found FIONREAD misreported.
const FIONREAD_MISREPORTED: &str = "this kernel misreports FIONREAD for sockets in a sockmap";
const OFF_LINE: &str = "trace-response-header off:";

/// One exchange: its name and the curl arguments that make it.
const EXCHANGES: [(&str, &[&str]); 5] = [
    ("fixed", &["/index.html"]),
    ("100 KB", &["/big.bin"]),
    ("HEAD", &["--head", "/big.bin"]),
    ("304", &["-H", "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT", "/index.html"]),
    ("404", &["/missing"]),
];

/// The server's header block (its Date line left out: it changes every
/// second) and body of every exchange, as curl received them.
fn fetch_all(py: &Server, out: &Path) -> Vec<(String, Vec<u8>)> {
    EXCHANGES
        .iter()
        .map(|(name, args)| {
            let (head, body) = (out.join("head"), out.join("body"));
            // curl leaves -o alone when there is no body (304): no stale file.
            let _ = (fs::remove_file(&head), fs::remove_file(&body));
            let (url_path, flags) = args.split_last().unwrap_or_else(|| panic!("{name}: no path"));
            let mut cmd: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
            cmd.extend(["-D".into(), head.display().to_string(), "-o".into(), body.display().to_string()]);
            cmd.push(py.url(url_path));
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            waggle_e2e::curl(&args).assert_success();
            let head = fs::read(&head).unwrap_or_else(|e| panic!("{name}: reading curl's header dump: {e}"));
            // With --head curl writes the header block to -o too: there is
            // no body, and the block is compared below.
            let body = if flags.contains(&"--head") { Vec::new() } else { fs::read(&body).unwrap_or_default() };
            let text = String::from_utf8_lossy(&head).into_owned();
            for line in text.lines() {
                let lower = line.to_ascii_lowercase();
                assert!(
                    !lower.starts_with("traceresponse") && !lower.starts_with("x-trace-id"),
                    "{name}: a trace header the server never wrote:\n{text}"
                );
            }
            let kept: String = text.split_inclusive("\r\n").filter(|l| !l.starts_with("Date: ")).collect();
            (format!("{name}:\n{kept}"), body)
        })
        .collect()
}

/// Serves `index.html`, a 100 KB binary file and nothing else.
fn server() -> Server {
    let py = Server::python_http_server();
    let big: Vec<u8> = (0..100 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    fs::write(py.dir().join("big.bin"), big).unwrap_or_else(|e| panic!("writing big.bin: {e}"));
    py
}

/// Fetches every exchange without an agent, then with one started with
/// `extra` flags; asserts the bytes agree and the agent saw every request.
/// Returns the agent's stderr.
fn compare_with_agent(extra: &[&str]) -> String {
    let py = server();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let before = fetch_all(&py, dir.path());
    assert_eq!(before[1].1.len(), 100 * 1024, "the 100 KB body without an agent");
    assert!(before[2].1.is_empty() && before[2].0.contains("Content-Length: 102400"), "{}", before[2].0);
    assert!(before[3].0.starts_with("304:\nHTTP/1.0 304"), "{}", before[3].0);

    let receiver = OtlpReceiver::start();
    let mut args = receiver.agent_args(Protocol::HttpProtobuf);
    args.extend(extra.iter().map(|s| s.to_string()));
    let agent = Agent::start(&args, &[]);
    let after = fetch_all(&py, dir.path());
    receiver.focus(&[py.pid()]);
    // The agent saw (and made spans of) every one of these responses.
    receiver.expect_spans("a SERVER span per exchange", SPAN_TIMEOUT, |s| {
        server_spans(s, py.pid()).len() >= EXCHANGES.len()
    });
    let out = agent.stop();
    for ((name_before, body_before), (name_after, body_after)) in before.iter().zip(&after) {
        assert_eq!(name_after, name_before, "header block with the agent");
        assert!(body_after == body_before, "{name_before}: body differs with the agent");
    }
    out.stderr
}

#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn trace_response_header_turns_itself_off_and_changes_no_byte() {
    let _guard = e2e_setup("trace_response_header_turns_itself_off_and_changes_no_byte");
    let stderr = compare_with_agent(&["--trace-response-header", "traceresponse"]);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(OFF_LINE)).collect();
    assert_eq!(lines.len(), 1, "one line saying why it is off:\n{stderr}");
    if stderr.contains(FIONREAD_MISREPORTED) {
        assert!(lines[0].contains("misreports FIONREAD"), "the FIONREAD check is the reason here: {}", lines[0]);
    }
}

#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn trace_response_header_is_off_by_default() {
    let _guard = e2e_setup("trace_response_header_is_off_by_default");
    let stderr = compare_with_agent(&[]);
    assert!(!stderr.contains("trace-response-header off"), "nothing to say when not asked for:\n{stderr}");
    assert!(stderr.contains("trace_response_header=off"), "the configuration line shows it off:\n{stderr}");
}
