//! Reading a guest's console: what the agent attached and skipped (and
//! why), how it exited, which spans it printed; and whether that is what
//! this kernel is expected to do.
use serde_json::Value;

use super::{
    guest::{MARK, PATH},
    responses,
};

/// What a kernel is expected to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The agent loads, skips exactly these programs, and prints a correct
    /// SERVER and CLIENT span for the request; `linked`: the SERVER span is
    /// the CLIENT span's child (traceparent was injected), else they are
    /// separate traces; `reduced`: the agent says it runs the reduced mode
    /// of kernels without bpf_loop (and says nothing of it otherwise);
    /// `response_header`: `--trace-response-header` is on and inserts its
    /// line where `responses::cases` says, else it says why it is off and
    /// inserts nothing. Either way every response arrives byte for byte.
    Spans { skipped: &'static [&'static str], linked: bool, reduced: bool, response_header: bool },
    /// The agent refuses to start with one error line containing this text
    /// (no kernel of the matrix does since 5.10 got the reduced mode).
    #[cfg_attr(not(test), allow(dead_code))]
    Refuses(&'static str),
}

/// What the guest reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub release: Option<String>,
    pub variant: Option<String>,
    /// What /init could not mount: the guest is not the host it stands for.
    pub mount_failed: Vec<String>,
    pub booted_s: Option<f64>,
    pub ready: bool,
    pub ready_s: Option<f64>,
    pub agent_exit: Option<i32>,
    pub spans: Vec<Value>,
    pub log: Vec<String>,
    /// The response-header check's lines, in order.
    pub responses: Vec<RespLine>,
    pub check_exit: Option<i32>,
    /// `curl -D` of single responses (the xtask server's and the Python
    /// service's), in order.
    pub curls: Vec<CurlLine>,
}

/// `curl-resp NAME RC TRACERESPONSE_LINES X_TRACE_ID_LINES VALUE|- same|differs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CurlLine {
    pub exit: i32,
    /// `lines`: the traceresponse lines; `value`: the first trace line.
    pub resp: RespLine,
    /// X-Trace-Id lines (the app's own included).
    pub x_trace_id: usize,
}

/// `resp NAME LINES VALUE|- same|differs` of the guest's check client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RespLine {
    pub name: String,
    pub lines: usize,
    pub value: Option<String>,
    pub same: bool,
}

/// Picks the marked lines out of a console transcript.
pub fn parse_console(console: &str) -> Report {
    let mut report = Report::default();
    let mut section: Option<&str> = None;
    for raw in console.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(at) = line.find(MARK) {
            let rest = &line[at + MARK.len()..];
            let mut words = rest.split_whitespace();
            match words.next() {
                Some("kernel") => report.release = words.next().map(str::to_owned),
                Some("variant") => report.variant = words.next().map(str::to_owned),
                Some("mount-failed") => report.mount_failed.push(words.collect::<Vec<_>>().join(" ")),
                Some("booted") => report.booted_s = words.next().and_then(|s| s.parse().ok()),
                Some("ready") => {
                    report.ready = words.next() == Some("yes");
                    report.ready_s = words.next().and_then(|s| s.parse().ok());
                }
                Some("agent-exit") => report.agent_exit = words.next().and_then(|s| s.parse().ok()),
                Some("check-exit") => report.check_exit = words.next().and_then(|s| s.parse().ok()),
                Some("curl-resp") => {
                    let w: Vec<&str> = words.collect();
                    if let [name, rc, lines, x, value, same] = w[..] {
                        report.curls.push(CurlLine {
                            exit: rc.parse().unwrap_or(-1),
                            resp: RespLine {
                                name: name.to_owned(),
                                lines: lines.parse().unwrap_or(usize::MAX),
                                value: (value != "-").then(|| value.to_owned()),
                                same: same == "same",
                            },
                            x_trace_id: x.parse().unwrap_or(usize::MAX),
                        });
                    }
                }
                Some("resp") => {
                    let w: Vec<&str> = words.collect();
                    if let [name, lines, value, same] = w[..] {
                        report.responses.push(RespLine {
                            name: name.to_owned(),
                            lines: lines.parse().unwrap_or(usize::MAX),
                            value: (value != "-").then(|| value.to_owned()),
                            same: same == "same",
                        });
                    }
                }
                Some("spans-begin") => section = Some("spans"),
                Some("log-begin") => section = Some("log"),
                Some("spans-end") | Some("log-end") => section = None,
                _ => {}
            }
            continue;
        }
        match section {
            Some("spans") => {
                if let Ok(span) = serde_json::from_str::<Value>(line) {
                    report.spans.push(span);
                }
            }
            Some("log") => report.log.push(line.to_owned()),
            _ => {}
        }
    }
    report
}

/// What the agent did, as the table shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub attached: Vec<String>,
    /// Skipped programs with a one-line reason.
    pub skipped: Vec<(String, String)>,
    /// The agent's error line when it refused to run.
    pub refusal: Option<String>,
    pub server_span: bool,
    pub client_span: bool,
    /// The SERVER span's parent is the CLIENT span.
    pub linked: bool,
    /// The agent logged that it runs the reduced mode (no bpf_loop).
    pub reduced: bool,
    pub panicked: bool,
    /// The agent logged "trace-response-header on" / its reason for off.
    pub response_header_on: bool,
    pub response_header_off: Option<String>,
}

const RESPONSE_HEADER_ON: &str = "trace-response-header on";
const RESPONSE_HEADER_OFF: &str = "trace-response-header off: ";

/// The start of the agent's line announcing the reduced mode.
pub const REDUCED_MODE: &str = "reduced mode: this kernel lacks bpf_loop";

/// `key=a,b,c` from a log line, split on commas.
fn list_field(line: &str, key: &str) -> Vec<String> {
    let Some(at) = line.find(&format!("{key}=")) else { return Vec::new() };
    let value = line[at + key.len() + 1..].split_whitespace().next().unwrap_or("");
    value.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// A log line's `program="name"`.
fn program_field(line: &str) -> Option<String> {
    let at = line.find("program=\"")? + "program=\"".len();
    Some(line[at..].split('"').next()?.to_owned())
}

/// The reason of a "probe skipped" warning: a verifier failure is named
/// by the verifier's last complaint (the line before its statistics),
/// anything else by the reason's own text.
fn skip_reason(first: &str, continuation: &[String]) -> String {
    let reason = first.split_once("reason=").map(|(_, r)| r.trim()).unwrap_or("");
    if reason.starts_with("BPF_PROG_LOAD failed") {
        let complaint = continuation
            .iter()
            .position(|l| l.starts_with("verification time"))
            .and_then(|i| i.checked_sub(1))
            .map(|i| continuation[i].trim().to_owned());
        let errno = reason.split(';').next().unwrap_or(reason).trim_start_matches("BPF_PROG_LOAD failed: ");
        return match complaint {
            Some(c) => format!("verifier: {c} ({errno})"),
            None => format!("BPF_PROG_LOAD: {errno}"),
        };
    }
    reason.to_owned()
}

fn is_log_start(line: &str) -> bool {
    // tracing's lines start with an RFC 3339 time stamp; the CLI's error
    // line with "waggle: ".
    line.get(..4).is_some_and(|y| y.bytes().all(|b| b.is_ascii_digit())) || line.starts_with("waggle: ")
}

fn span_ok(span: &Value, kind: &str) -> bool {
    let attrs = &span["attributes"];
    span["kind"] == kind
        && attrs["http.request.method"] == "GET"
        && attrs["url.path"] == PATH
        && attrs["http.response.status_code"] == 200
}

pub fn observe(report: &Report) -> Observed {
    let mut seen = Observed::default();
    let log = &report.log;
    // The "probes skipped" summary names every skipped program; the
    // warnings before it say why.
    let mut reasons: Vec<(String, String)> = Vec::new();
    let mut summary: Vec<String> = Vec::new();
    for (i, line) in log.iter().enumerate() {
        // The load summary only: other lines may say "probes attached".
        if line.contains("probes attached count=") {
            seen.attached = list_field(line, "programs");
        } else if line.contains("probes skipped") {
            summary = list_field(line, "programs");
        } else if line.contains("probe skipped") {
            let end = log[i + 1..].iter().position(|l| is_log_start(l)).map_or(log.len(), |n| i + 1 + n);
            if let Some(program) = program_field(line) {
                reasons.push((program, skip_reason(line, &log[i + 1..end])));
            }
        } else if let Some(error) = line.strip_prefix("waggle: ") {
            seen.refusal = Some(error.to_owned());
        }
        seen.panicked |= line.contains("panicked");
        seen.reduced |= line.contains(REDUCED_MODE);
        seen.response_header_on |= line.contains(RESPONSE_HEADER_ON);
        if let Some(at) = line.find(RESPONSE_HEADER_OFF) {
            seen.response_header_off = Some(line[at + RESPONSE_HEADER_OFF.len()..].to_owned());
        }
    }
    seen.skipped = summary
        .into_iter()
        .map(|p| {
            let why = reasons.iter().find(|(r, _)| *r == p).map(|(_, why)| why.clone()).unwrap_or_default();
            (p, why)
        })
        .collect();
    let server = report.spans.iter().find(|s| span_ok(s, "SERVER"));
    let client = report.spans.iter().find(|s| span_ok(s, "CLIENT"));
    seen.server_span = server.is_some();
    seen.client_span = client.is_some();
    seen.linked = match (server, client) {
        (Some(server), Some(client)) => {
            server["parent_span_id"] == client["span_id"] && server["trace_id"] == client["trace_id"]
        }
        _ => false,
    };
    seen
}

/// Ok when the kernel did what `expect` says, else what differs.
pub fn judge(expect: Expect, report: &Report, seen: &Observed) -> Result<(), String> {
    if seen.panicked {
        return Err("the agent panicked".into());
    }
    if report.release.is_none() {
        return Err("the guest never reached /init".into());
    }
    if !report.mount_failed.is_empty() {
        return Err(format!("the guest could not mount: {}", report.mount_failed.join(", ")));
    }
    match expect {
        Expect::Spans { skipped, linked, reduced, response_header } => {
            if !report.ready {
                return Err(format!(
                    "the agent never became ready: {}",
                    seen.refusal.as_deref().unwrap_or("no error line")
                ));
            }
            if report.agent_exit != Some(0) {
                return Err(format!("the agent exited with {:?} after SIGINT", report.agent_exit));
            }
            if seen.reduced != reduced {
                return Err(if reduced {
                    format!("expected the agent to say \"{REDUCED_MODE}\"")
                } else {
                    "the agent runs the reduced mode (no bpf_loop), expected the full one".into()
                });
            }
            // The support table counts them: a log the matrix cannot read
            // must not pass as a kernel that attached nothing.
            if seen.attached.is_empty() {
                return Err("no \"probes attached\" summary with programs in the agent's log".into());
            }
            let mut got: Vec<&str> = seen.skipped.iter().map(|(p, _)| p.as_str()).collect();
            let mut want = skipped.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            if got != want {
                return Err(format!("skipped {got:?}, expected {want:?}"));
            }
            judge_responses(response_header, report, seen)?;
            match (seen.server_span, seen.client_span) {
                (true, true) if seen.linked == linked => Ok(()),
                (true, true) if linked => Err("the SERVER span is not the CLIENT span's child (no traceparent)".into()),
                (true, true) => Err("the SERVER span is the CLIENT span's child, expected separate traces".into()),
                (server, client) => Err(format!(
                    "missing span(s):{}{} (GET {PATH} 200); {} span(s) printed",
                    if server { "" } else { " SERVER" },
                    if client { "" } else { " CLIENT" },
                    report.spans.len()
                )),
            }
        }
        Expect::Refuses(text) => match &seen.refusal {
            Some(line) if line.contains(text) && report.agent_exit.is_some_and(|c| c != 0) && !report.ready => Ok(()),
            Some(line) => Err(format!("expected a refusal naming \"{text}\", got: {line}")),
            None if report.ready => Err(format!("expected a refusal naming \"{text}\", but the agent started")),
            None => Err(format!("expected a refusal naming \"{text}\", but the agent printed no error line")),
        },
    }
}

/// Which line the guest's agent inserts where it is on: the include rule
/// for the xtask server says X-Trace-Id, the global setting (the Python
/// app) traceresponse.
const XTASK_LINE: &str = "x-trace-id";
const PYTHON_LINE: &str = "traceresponse";

/// `curl -D` fetches of the guest: (name, the line it gets when the
/// feature is on, the app's own X-Trace-Id).
const CURLS: [(&str, Option<&str>, bool); 3] =
    [("xtask-fixed", Some(XTASK_LINE), false), ("py-fixed", Some(PYTHON_LINE), false), ("py-own", None, true)];

/// Whether `line` (`name:value`, as the guest prints it) is a `kind` line
/// naming a SERVER span the agent printed: trace and span id for
/// traceresponse, the trace id for X-Trace-Id.
fn names_server_span(line: &str, kind: &str, spans: &[Value]) -> bool {
    let Some((name, value)) = line.split_once(':') else { return false };
    if name != kind {
        return false;
    }
    let mut servers = spans.iter().filter(|s| s["kind"] == "SERVER");
    let parts: Vec<&str> = value.split('-').collect();
    match (name, &parts[..]) {
        ("traceresponse", ["00", trace, span, _flags]) => {
            servers.any(|s| s["trace_id"] == *trace && s["span_id"] == *span)
        }
        ("x-trace-id", [trace]) => servers.any(|s| s["trace_id"] == *trace),
        _ => false,
    }
}

/// One response against what it should be: `inserted` the line kind due
/// (None: no line), the bytes as sent.
fn judge_one(name: &str, got: &RespLine, inserted: Option<&str>, spans: &[Value]) -> Result<(), String> {
    if !got.same {
        return Err(format!("response {name}: bytes differ from what the server sent"));
    }
    let want = usize::from(inserted.is_some());
    if got.lines != want {
        return Err(format!("response {name}: {} trace line(s) inserted, expected {want}", got.lines));
    }
    let Some(kind) = inserted else { return Ok(()) };
    let Some(value) = &got.value else {
        return Err(format!("response {name}: the line is not right after the status line"));
    };
    if !names_server_span(value, kind, spans) {
        return Err(format!("response {name}: {value} is not a {kind} line naming a SERVER span the agent printed"));
    }
    Ok(())
}

/// The response-header check: every response byte for byte as sent, and
/// (on) one line right after the status line exactly where the cases say,
/// of the kind the process's setting says, naming a SERVER span the agent
/// printed; or (off) no line and a reason.
fn judge_responses(on: bool, report: &Report, seen: &Observed) -> Result<(), String> {
    if report.check_exit != Some(0) {
        return Err(format!("the response-header check client failed (exit {:?})", report.check_exit));
    }
    if seen.response_header_on != on {
        return Err(match (&seen.response_header_off, on) {
            (Some(why), true) => format!("trace-response-header is off ({why}), expected on"),
            (None, true) => "the agent never said trace-response-header on".to_owned(),
            _ => "trace-response-header is on, expected off".to_owned(),
        });
    }
    if !on && seen.response_header_off.is_none() {
        return Err("trace-response-header is off without the line that says why".into());
    }
    let cases = responses::cases();
    if report.responses.len() != cases.len() {
        return Err(format!("{} response-header check lines, expected {}", report.responses.len(), cases.len()));
    }
    for (case, got) in cases.iter().zip(&report.responses) {
        if got.name != case.name {
            return Err(format!("response-header check line {} where {} was due", got.name, case.name));
        }
        judge_one(case.name, got, (on && case.gets_line).then_some(XTASK_LINE), &report.spans)?;
    }
    if report.curls.len() != CURLS.len() {
        return Err(format!("{} curl -D results from the guest, expected {}", report.curls.len(), CURLS.len()));
    }
    for ((name, line, own), got) in CURLS.iter().zip(&report.curls) {
        if got.resp.name != *name {
            return Err(format!("curl -D result {} where {name} was due", got.resp.name));
        }
        if got.exit != 0 {
            return Err(format!("curl -D {name} in the guest exited with {}", got.exit));
        }
        let inserted = if on { *line } else { None };
        let (want_tr, want_x) =
            (usize::from(inserted == Some(PYTHON_LINE)), usize::from(inserted == Some(XTASK_LINE)) + usize::from(*own));
        if got.resp.lines != want_tr || got.x_trace_id != want_x {
            return Err(format!(
                "curl -D {name}: {} traceresponse and {} X-Trace-Id line(s), expected {want_tr} and {want_x}",
                got.resp.lines, got.x_trace_id
            ));
        }
        if *own {
            let own_line = format!("x-trace-id:{}", super::python::OWN_TRACE_ID);
            if got.resp.value.as_deref() != Some(own_line.as_str()) || !got.resp.same {
                return Err(format!("curl -D {name}: the app's own X-Trace-Id did not arrive as sent"));
            }
            continue;
        }
        let one = RespLine { lines: want_tr + want_x, ..got.resp.clone() };
        judge_one(name, &one, inserted, &report.spans)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\x1bcSeaBIOS\r\n\x1b[2J@@wk kernel 6.1.0-57-cloud-amd64\r\n\
        @@wk booted 3.12\r\n@@wk ready yes 9.80\r\n@@wk wget-exit 0 hello\r\n@@wk agent-exit 0\r\n\
        @@wk spans-begin\r\n\
        {\"kind\":\"SERVER\",\"trace_id\":\"t\",\"span_id\":\"s1\",\"parent_span_id\":\"c\",\"attributes\":{\"http.request.method\":\"GET\",\"url.path\":\"/matrix/hello\",\"http.response.status_code\":200}}\r\n\
        {\"kind\":\"CLIENT\",\"trace_id\":\"t\",\"span_id\":\"c\",\"attributes\":{\"http.request.method\":\"GET\",\"url.path\":\"/matrix/hello\",\"http.response.status_code\":200}}\r\n\
        @@wk spans-end\r\n@@wk log-begin\r\n\
        2026-12-02T14:51:45Z  WARN waggle::probes::load: probe skipped program=\"sys_exit_connect\" reason=BPF_PROG_LOAD failed: Permission denied (os error 13); verifier log (tail):\r\n\
        invalid read from stack R10 off=-200 size=8\r\n\
        verification time 548584 usec\r\n\
        stack depth 0+224\r\n\
        2026-12-02T14:51:49Z  WARN waggle::probes::propagation: propagation probe skipped: outgoing requests carry no traceparent program=\"waggle_sockops\" reason=propagation off: needs Linux 6.10+\r\n\
        2026-12-02T14:51:49Z  INFO waggle::probes::load: probes attached count=2 programs=sys_exit_read,sys_enter_read\r\n\
        2026-12-02T14:51:49Z  INFO waggle::probes::load: probes skipped count=2 programs=sys_exit_connect,waggle_sockops\r\n\
        2026-12-02T14:51:49Z  INFO waggle::selection::worker: decided again after the probes attached processes=1\r\n\
        @@wk log-end\r\n[ 11.6] reboot: Power down\r\n";

    /// CONSOLE with the response-header check's lines: nothing inserted
    /// and the off line, or (on) one line per case that gets one, naming
    /// the SERVER span.
    fn console(on: bool) -> String {
        let mut lines = String::new();
        for c in responses::cases() {
            let inserted = on && c.gets_line;
            let value = if inserted { "x-trace-id:t" } else { "-" };
            lines.push_str(&format!("@@wk resp {} {} {value} same\r\n", c.name, usize::from(inserted)));
        }
        lines.push_str("@@wk check-exit 0\r\n");
        let fetched = if on {
            ["xtask-fixed 0 0 1 x-trace-id:t", "py-fixed 0 1 0 traceresponse:00-t-s1-01", "py-own 0 0 1 x-trace-id:OWN"]
        } else {
            ["xtask-fixed 0 0 0 -", "py-fixed 0 0 0 -", "py-own 0 0 1 x-trace-id:OWN"]
        };
        for f in fetched {
            let f = f.replace("OWN", super::super::python::OWN_TRACE_ID);
            lines.push_str(&format!("@@wk curl-resp {f} same\r\n"));
        }
        let log = if on {
            "2026-12-02T14:51:49Z  INFO waggle::probes::load: trace-response-header on: HTTP/1.x responses\r\n"
        } else {
            "2026-12-02T14:51:49Z  WARN waggle::probes::response_header: trace-response-header off: this kernel misreports FIONREAD\r\n"
        };
        CONSOLE
            .replace("@@wk agent-exit 0\r\n", &format!("{lines}@@wk agent-exit 0\r\n"))
            .replace("@@wk log-end", &format!("{log}@@wk log-end"))
    }

    #[test]
    fn the_response_header_check_is_judged_line_by_line() {
        let expect = |response_header| Expect::Spans {
            skipped: &["waggle_sockops", "sys_exit_connect"],
            linked: true,
            reduced: false,
            response_header,
        };
        let on = parse_console(&console(true));
        assert_eq!(on.responses.len(), responses::cases().len());
        assert_eq!(on.check_exit, Some(0));
        assert_eq!(judge(expect(true), &on, &observe(&on)), Ok(()));
        let err = judge(expect(false), &on, &observe(&on)).unwrap_err();
        assert!(err.contains("expected off"), "{err}");
        let off = parse_console(&console(false));
        assert_eq!(judge(expect(false), &off, &observe(&off)), Ok(()));
        let err = judge(expect(true), &off, &observe(&off)).unwrap_err();
        assert!(err.contains("misreports FIONREAD"), "{err}");
        // A changed byte, a line where none belongs, a line naming no span.
        let mut bad = on.clone();
        bad.responses[0].same = false;
        assert!(judge(expect(true), &bad, &observe(&bad)).unwrap_err().contains("bytes differ"));
        let mut bad = on.clone();
        let last = bad.responses.len() - 1;
        bad.responses[last].lines = 1;
        assert!(judge(expect(true), &bad, &observe(&bad)).unwrap_err().contains("expected 0"));
        let mut bad = on.clone();
        bad.responses[0].value = Some("x-trace-id:other".into());
        assert!(judge(expect(true), &bad, &observe(&bad)).unwrap_err().contains("naming a SERVER span"));
        // The per-rule kind: a traceresponse where X-Trace-Id is due.
        let mut bad = on.clone();
        bad.responses[0].value = Some("traceresponse:00-t-s1-01".into());
        assert!(judge(expect(true), &bad, &observe(&bad)).unwrap_err().contains("is not a x-trace-id line"));
        assert_eq!(on.curls.len(), 3);
        let mut bad = on.clone();
        bad.curls.pop();
        assert!(judge(expect(true), &bad, &observe(&bad)).unwrap_err().contains("curl -D results"));
        let mut bad = on.clone();
        bad.curls[1].resp.lines = 2;
        assert!(judge(expect(true), &bad, &observe(&bad)).unwrap_err().contains("py-fixed: 2 traceresponse"));
        let mut bad = on.clone();
        bad.curls[2].x_trace_id = 2;
        assert!(judge(expect(true), &bad, &observe(&bad)).unwrap_err().contains("and 2 X-Trace-Id"));
        let mut bad = on.clone();
        bad.curls[1].resp.value = Some("traceresponse:00-t-nope-01".into());
        assert!(judge(expect(true), &bad, &observe(&bad)).unwrap_err().contains("naming a SERVER span"));
        let mut bad = on;
        bad.check_exit = Some(1);
        assert!(judge(expect(true), &bad, &observe(&bad)).unwrap_err().contains("check client failed"));
    }

    #[test]
    fn console_sections_are_split_by_markers() {
        let report = parse_console(&console(false));
        assert_eq!(report.release.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(report.booted_s, Some(3.12));
        assert!(report.ready);
        assert_eq!(report.ready_s, Some(9.8));
        assert_eq!(report.agent_exit, Some(0));
        assert_eq!(report.spans.len(), 2);
        assert_eq!(report.log.len(), 9);
    }

    #[test]
    fn skipped_programs_carry_the_verifiers_complaint() {
        let seen = observe(&parse_console(&console(false)));
        assert_eq!(seen.attached, ["sys_exit_read", "sys_enter_read"]);
        assert_eq!(
            seen.skipped,
            [
                (
                    "sys_exit_connect".to_owned(),
                    "verifier: invalid read from stack R10 off=-200 size=8 (Permission denied (os error 13))"
                        .to_owned()
                ),
                ("waggle_sockops".to_owned(), "propagation off: needs Linux 6.10+".to_owned()),
            ]
        );
        assert!(seen.server_span && seen.client_span && seen.linked);
    }

    #[test]
    fn expectations_fail_when_behaviour_changes() {
        let report = parse_console(&console(false));
        let seen = observe(&report);
        let both = Expect::Spans {
            skipped: &["waggle_sockops", "sys_exit_connect"],
            linked: true,
            reduced: false,
            response_header: false,
        };
        assert_eq!(judge(both, &report, &seen), Ok(()));
        let err = judge(
            Expect::Spans { skipped: &["waggle_sockops"], linked: true, reduced: false, response_header: false },
            &report,
            &seen,
        )
        .unwrap_err();
        assert!(err.contains("skipped"), "{err}");
        let unlinked = Expect::Spans {
            skipped: &["waggle_sockops", "sys_exit_connect"],
            linked: false,
            reduced: false,
            response_header: false,
        };
        let err = judge(unlinked, &report, &seen).unwrap_err();
        assert!(err.contains("expected separate traces"), "{err}");
        let err = judge(both, &report, &Observed { linked: false, ..seen.clone() }).unwrap_err();
        assert!(err.contains("not the CLIENT span's child"), "{err}");
        let err = judge(both, &report, &Observed { reduced: true, ..seen.clone() }).unwrap_err();
        assert!(err.contains("reduced mode"), "{err}");
        let reduced = Expect::Spans {
            skipped: &["waggle_sockops", "sys_exit_connect"],
            linked: true,
            reduced: true,
            response_header: false,
        };
        let err = judge(reduced, &report, &seen).unwrap_err();
        assert!(err.contains(REDUCED_MODE), "{err}");
        assert_eq!(judge(reduced, &report, &Observed { reduced: true, ..seen.clone() }), Ok(()));
        let no_client = Observed { client_span: false, ..seen.clone() };
        let err = judge(both, &report, &no_client).unwrap_err();
        assert!(err.contains("missing span(s): CLIENT"), "{err}");
        let err = judge(Expect::Refuses("bpf_loop"), &report, &seen).unwrap_err();
        assert!(err.contains("but the agent started"), "{err}");
        let err = judge(both, &report, &Observed { attached: Vec::new(), ..seen.clone() }).unwrap_err();
        assert!(err.contains("probes attached"), "{err}");
    }

    #[test]
    fn a_refusal_is_one_error_line_and_a_failing_exit() {
        let console = "@@wk kernel 5.10.0-46-cloud-amd64\n@@wk ready no 7.1\n@@wk agent-exit 1\n\
            @@wk spans-begin\n@@wk spans-end\n@@wk log-begin\n\
            waggle: no data-path probe attached (read/write/recvfrom/sendto) on Linux 5.10.0-46-cloud-amd64, nothing can be traced: this kernel lacks bpf_loop (needs Linux 5.17+)\n\
            @@wk log-end\n";
        let report = parse_console(console);
        let seen = observe(&report);
        assert_eq!(judge(Expect::Refuses("lacks bpf_loop (needs Linux 5.17+)"), &report, &seen), Ok(()));
        let err = judge(
            Expect::Spans { skipped: &[], linked: false, reduced: false, response_header: false },
            &report,
            &seen,
        )
        .unwrap_err();
        assert!(err.contains("never became ready"), "{err}");
        let err = judge(Expect::Refuses("something else"), &report, &seen).unwrap_err();
        assert!(err.contains("got: no data-path"), "{err}");
    }

    #[test]
    fn the_reduced_mode_is_read_from_its_log_line() {
        assert!(!observe(&parse_console(&console(false))).reduced);
        let console = CONSOLE.replace(
            "@@wk log-begin\r\n",
            "@@wk log-begin\r\n2026-12-03T10:37:54Z  WARN waggle::probes::load: reduced mode: this kernel lacks bpf_loop (Linux 5.17+): HTTP and SQL spans are captured as usual\r\n",
        );
        assert!(observe(&parse_console(&console)).reduced);
    }

    #[test]
    fn a_guest_that_never_ran_init_or_could_not_mount_fails() {
        let report = parse_console("Kernel panic - not syncing\n");
        let err = judge(
            Expect::Spans { skipped: &[], linked: false, reduced: false, response_header: false },
            &report,
            &observe(&report),
        )
        .unwrap_err();
        assert!(err.contains("never reached /init"), "{err}");
        let report = parse_console("@@wk kernel 6.12\n@@wk mount-failed bpf /sys/fs/bpf\n@@wk ready yes 1.0\n");
        let err = judge(
            Expect::Spans { skipped: &[], linked: false, reduced: false, response_header: false },
            &report,
            &observe(&report),
        )
        .unwrap_err();
        assert!(err.contains("could not mount: bpf /sys/fs/bpf"), "{err}");
    }
}
