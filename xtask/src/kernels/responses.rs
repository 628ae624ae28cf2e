//! The guest's traffic for `--trace-response-header`: responses the
//! guest's server gives by path (fixed, HEAD, 204, 304, 100 KB in two
//! writes, an application's own X-Trace-Id, 100-continue, chunked) on one
//! keep-alive connection, and the client (`xtask guest-http-check PORT`)
//! that asks for them in order, takes every inserted `traceresponse` or
//! `X-Trace-Id` line out and checks that what is left is byte for byte what
//! the server sent.
//! It prints one marked line per response for the host to judge.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// One exchange of the check.
pub struct Case {
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    /// What the server writes, in this many writes (`interim` first).
    pub interim: Option<&'static str>,
    pub head: String,
    pub body: Vec<u8>,
    /// Head and body in separate writes (a 100 KB body in one would leave
    /// the socket short of send-buffer room: no line, counted).
    pub split: bool,
    /// Where the agent inserts a line when the feature is on.
    pub gets_line: bool,
}

/// The exchanges, in the order the client makes them.
pub fn cases() -> Vec<Case> {
    let fixed = |name, gets_line| Case {
        name,
        method: "GET",
        path: "/r/fixed",
        interim: None,
        head: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\n".into(),
        body: b"fixed\n".to_vec(),
        split: false,
        gets_line,
    };
    let big: Vec<u8> = (0..100 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let chunked = b"5\r\nchunk\r\n0\r\n\r\n".to_vec();
    vec![
        fixed("fixed", true),
        Case {
            name: "head",
            method: "HEAD",
            path: "/r/fixed",
            interim: None,
            head: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\n".into(),
            body: Vec::new(),
            split: false,
            gets_line: true,
        },
        Case {
            name: "204",
            method: "GET",
            path: "/r/204",
            interim: None,
            head: "HTTP/1.1 204 No Content\r\n\r\n".into(),
            body: Vec::new(),
            split: false,
            gets_line: true,
        },
        Case {
            name: "304",
            method: "GET",
            path: "/r/304",
            interim: None,
            head: "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 6\r\n\r\n".into(),
            body: Vec::new(),
            split: false,
            gets_line: true,
        },
        Case {
            name: "100kb",
            method: "GET",
            path: "/r/big",
            interim: None,
            head: format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()),
            body: big,
            split: true,
            gets_line: true,
        },
        Case {
            name: "own-x-trace-id",
            method: "GET",
            path: "/r/own",
            interim: None,
            head: "HTTP/1.1 200 OK\r\nx-trace-id: 0af7651916cd43dd8448eb211c80319c\r\nContent-Length: 3\r\n\r\n".into(),
            body: b"own".to_vec(),
            split: false,
            gets_line: false,
        },
        Case {
            name: "continue",
            method: "GET",
            path: "/r/continue",
            interim: Some("HTTP/1.1 100 Continue\r\n\r\n"),
            head: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n".into(),
            body: b"ok".to_vec(),
            split: false,
            gets_line: true,
        },
        Case {
            name: "chunked",
            method: "GET",
            path: "/r/chunked",
            interim: None,
            head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            body: chunked,
            split: false,
            gets_line: true,
        },
        // The chunked response's end is not counted: nothing more on it.
        fixed("after-chunked", false),
    ]
}

/// The server's answer to `method path`, as its writes; None when the
/// path is not one of the check's.
pub fn answer(method: &str, path: &str) -> Option<Vec<Vec<u8>>> {
    let case = cases().into_iter().find(|c| c.method == method && c.path == path)?;
    let mut writes = Vec::new();
    if let Some(interim) = case.interim {
        writes.push(interim.as_bytes().to_vec());
    }
    if case.split {
        writes.push(case.head.into_bytes());
        writes.push(case.body);
    } else {
        let mut one = case.head.into_bytes();
        one.extend_from_slice(&case.body);
        writes.push(one);
    }
    Some(writes)
}

/// What the client saw of one response.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    /// `traceresponse` lines the server did not write.
    pub lines: usize,
    /// The one line's value, when there was exactly one, right after the
    /// status line.
    pub value: Option<String>,
    /// Everything else is what the server wrote.
    pub same: bool,
}

/// Reads up to and including the next "\r\n\r\n" (bytes past it stay in
/// `pending`).
fn read_head(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Result<Vec<u8>> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = pending.split_off(end + 4);
            return Ok(std::mem::replace(pending, rest));
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("the server closed the connection inside a header block");
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

fn read_exact_pending(stream: &mut TcpStream, pending: &mut Vec<u8>, len: usize) -> Result<Vec<u8>> {
    while pending.len() < len {
        let mut buf = [0u8; 16384];
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("the server closed the connection inside a body");
        }
        pending.extend_from_slice(&buf[..n]);
    }
    let rest = pending.split_off(len);
    Ok(std::mem::replace(pending, rest))
}

/// A header line the agent may insert (`traceresponse` or `X-Trace-Id`),
/// as `name:value` in lowercase without spaces; None for other lines.
pub fn trace_line(line: &str) -> Option<String> {
    let lower = line.to_ascii_lowercase();
    (lower.starts_with("traceresponse:") || lower.starts_with("x-trace-id:"))
        .then(|| lower.chars().filter(|c| !c.is_whitespace()).collect())
}

/// Takes the inserted lines out of a received head: the head as the server
/// wrote it, the number taken and (one, right after the status line) the
/// line as [`trace_line`] gives it.
pub fn strip_inserted(received: &[u8], sent: &str) -> (Vec<u8>, usize, Option<String>) {
    let text = String::from_utf8_lossy(received);
    let own: Vec<&str> = sent.split("\r\n").collect();
    let mut kept = Vec::new();
    let mut taken = 0;
    let mut value = None;
    for (i, line) in text.split("\r\n").enumerate() {
        match trace_line(line) {
            Some(named) if !own.contains(&line) => {
                taken += 1;
                if i == 1 {
                    value = Some(named);
                }
            }
            _ => kept.push(line),
        }
    }
    if taken != 1 {
        value = None;
    }
    (kept.join("\r\n").into_bytes(), taken, value)
}

fn exchange(stream: &mut TcpStream, pending: &mut Vec<u8>, case: &Case) -> Result<Seen> {
    // One write, as clients send requests (write! would send each piece).
    stream.write_all(format!("{} {} HTTP/1.1\r\nHost: guest\r\n\r\n", case.method, case.path).as_bytes())?;
    let mut lines = 0;
    let mut same = true;
    if let Some(interim) = case.interim {
        let head = read_head(stream, pending)?;
        let (kept, n, _) = strip_inserted(&head, interim);
        lines += n;
        same &= kept == interim.as_bytes();
    }
    let head = read_head(stream, pending)?;
    let (kept, n, value) = strip_inserted(&head, &case.head);
    lines += n;
    same &= kept == case.head.as_bytes();
    let body = read_exact_pending(stream, pending, case.body.len())?;
    same &= body == case.body;
    Ok(Seen { lines, value: if lines == 1 { value } else { None }, same })
}

/// `xtask guest-http-check PORT`: every case on one connection, a line
/// each after `mark`: `resp NAME LINES VALUE|- same|differs`.
pub fn check(port: u16, mark: &str) -> Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to port {port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut pending = Vec::new();
    for case in cases() {
        let seen = exchange(&mut stream, &mut pending, &case).with_context(|| format!("exchange {}", case.name))?;
        println!(
            "{mark}resp {} {} {} {}",
            case.name,
            seen.lines,
            seen.value.as_deref().unwrap_or("-"),
            if seen.same { "same" } else { "differs" }
        );
    }
    if !pending.is_empty() {
        bail!("{} bytes the server never sent a response for", pending.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_lines_come_out_and_the_servers_own_stay() {
        let sent = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
        let got = b"HTTP/1.1 200 OK\r\ntraceresponse: 00-aa-bb-01\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            strip_inserted(got, sent),
            (sent.as_bytes().to_vec(), 1, Some("traceresponse:00-aa-bb-01".to_owned()))
        );
        let got = b"HTTP/1.1 200 OK\r\nX-Trace-Id: AB12\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(strip_inserted(got, sent), (sent.as_bytes().to_vec(), 1, Some("x-trace-id:ab12".to_owned())));
        assert_eq!(strip_inserted(sent.as_bytes(), sent), (sent.as_bytes().to_vec(), 0, None));
        // Elsewhere than right after the status line: counted, no value.
        let late = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ntraceresponse: 00-aa-bb-01\r\n\r\n";
        assert_eq!(strip_inserted(late, sent).1, 1);
        assert_eq!(strip_inserted(late, sent).2, None);
        let own = "HTTP/1.1 200 OK\r\ntraceresponse: 00-cc-dd-01\r\n\r\n";
        assert_eq!(strip_inserted(own.as_bytes(), own).1, 0);
    }

    #[test]
    fn every_case_has_an_answer_and_names_are_unique() {
        let all = cases();
        for (i, c) in all.iter().enumerate() {
            let writes = answer(c.method, c.path).unwrap();
            assert_eq!(writes.len(), 1 + usize::from(c.split) + usize::from(c.interim.is_some()), "{}", c.name);
            assert!(all[i + 1..].iter().all(|o| o.name != c.name));
        }
        assert!(answer("GET", "/matrix/hello").is_none());
    }
}
