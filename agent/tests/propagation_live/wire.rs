//! What went over the wire: the recording server's answers decoded, and
//! the inserted `traceparent` line found and taken apart.
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::Proc;

pub fn b64(s: &str) -> Vec<u8> {
    // Tiny decoder: the test has no base64 dependency and needs none.
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => panic!("bad base64 byte {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// (trace id, span id, flags) of a `traceparent: ...\r\n` line.
pub fn parse_line(line: &[u8]) -> ([u8; 16], [u8; 8], u8) {
    let text = std::str::from_utf8(line).unwrap();
    let value = text
        .strip_prefix("traceparent: ")
        .and_then(|v| v.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("not a traceparent line: {text:?}"));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    let bytes = |s: &str| -> Vec<u8> {
        assert!(s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{s}");
        (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
    };
    let flags = bytes(parts[3])[0];
    (bytes(parts[1]).try_into().unwrap(), bytes(parts[2]).try_into().unwrap(), flags)
}

/// Splits what the server received around an inserted line right after the
/// request line: (received without the line, the line).
pub fn split_injected(received: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let first = received.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let line = received[first..first + 70].to_vec();
    let mut rest = received[..first].to_vec();
    rest.extend_from_slice(&received[first + 70..]);
    (rest, line)
}

pub fn traceparent_lines(head: &[u8]) -> usize {
    head.split(|b| *b == b'\n').filter(|l| l.to_ascii_lowercase().starts_with(b"traceparent")).count()
}

pub fn run_curl(args: &[&str]) -> (u32, Value) {
    let child =
        Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let mut child = Proc(child);
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(child.0.wait().unwrap().success(), "curl {args:?} failed");
    (pid, serde_json::from_str(&out).unwrap_or_else(|e| panic!("curl output {out:?}: {e}")))
}

pub fn head_of(resp: &Value) -> Vec<u8> {
    b64(resp["head"].as_str().unwrap())
}

pub fn received_of(resp: &Value) -> Vec<u8> {
    let mut all = head_of(resp);
    if let Some(body) = resp["body"].as_str() {
        all.extend(b64(body));
    }
    all
}
