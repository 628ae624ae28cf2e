//! A strict parser of a connection's bytes as a sequence of HTTP/1.1
//! requests, for the high-level clients' recordings.

/// A request as it arrived.
pub struct Parsed {
    pub offset: usize,
    pub method: String,
    pub target: String,
    /// (name, value, offset of the line).
    pub headers: Vec<(String, Vec<u8>, usize)>,
    pub body: Vec<u8>,
}

pub fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

pub fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?.windows(pat.len()).position(|w| w == pat).map(|p| p + from)
}

/// Parses `b` as a sequence of HTTP/1.1 requests, strictly. Err: (offset,
/// what is wrong).
pub fn parse_requests(b: &[u8]) -> (Vec<Parsed>, Option<(usize, String)>) {
    let mut out = Vec::new();
    let err = parse_into(b, &mut out).err();
    (out, err)
}

pub fn parse_into(b: &[u8], out: &mut Vec<Parsed>) -> Result<(), (usize, String)> {
    let mut at = 0;
    while at < b.len() {
        let start = at;
        let eol = find(b, at, b"\r\n").ok_or((at, "request line without CRLF".to_owned()))?;
        let line = &b[at..eol];
        let mut parts = line.split(|&c| c == b' ');
        let (Some(m), Some(t), Some(v), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err((at, "request line is not METHOD SP TARGET SP VERSION".to_owned()));
        };
        if m.is_empty()
            || !m.iter().all(u8::is_ascii_uppercase)
            || t.is_empty()
            || !t.iter().all(|&c| (0x21..0x7f).contains(&c))
            || v != b"HTTP/1.1"
        {
            return Err((at, "malformed request line".to_owned()));
        }
        at = eol + 2;
        let mut headers = Vec::new();
        loop {
            let eol = find(b, at, b"\r\n").ok_or((at, "header block without its end".to_owned()))?;
            if eol == at {
                at += 2;
                break;
            }
            let line = &b[at..eol];
            let colon = line.iter().position(|&c| c == b':').ok_or((at, "header line without ':'".to_owned()))?;
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
                return Err((at, "bad header name".to_owned()));
            }
            if let Some(k) = value.iter().position(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
                return Err((at + colon + 1 + k, "control byte in a header value".to_owned()));
            }
            let trimmed: &[u8] = {
                let s = value.iter().position(|c| !b" \t".contains(c)).unwrap_or(value.len());
                let e = value.iter().rposition(|c| !b" \t".contains(c)).map_or(s, |e| e + 1);
                &value[s..e]
            };
            headers.push((String::from_utf8_lossy(name).to_ascii_lowercase(), trimmed.to_vec(), at));
            at = eol + 2;
        }
        let get = |n: &str| headers.iter().find(|h| h.0 == n).map(|h| h.1.clone());
        let mut body = Vec::new();
        if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
            loop {
                let eol = find(b, at, b"\r\n").ok_or((at, "chunk size without CRLF".to_owned()))?;
                let size_text = String::from_utf8_lossy(&b[at..eol]);
                let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| (at, format!("bad chunk size {size_text:?}")))?;
                at = eol + 2;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let eol = find(b, at, b"\r\n").ok_or((at, "trailers without their end".to_owned()))?;
                        let empty = eol == at;
                        at = eol + 2;
                        if empty {
                            break;
                        }
                    }
                    break;
                }
                if at + size + 2 > b.len() || &b[at + size..at + size + 2] != b"\r\n" {
                    return Err((at, format!("chunk of {size} bytes not followed by CRLF")));
                }
                body.extend_from_slice(&b[at..at + size]);
                at += size + 2;
            }
        } else if let Some(cl) = get("content-length") {
            let n: usize = String::from_utf8_lossy(&cl).parse().map_err(|_| (at, "bad Content-Length".to_owned()))?;
            if at + n > b.len() {
                return Err((at, format!("body of {n} bytes cut off after {}", b.len() - at)));
            }
            body.extend_from_slice(&b[at..at + n]);
            at += n;
        }
        out.push(Parsed {
            offset: start,
            method: String::from_utf8_lossy(m).into_owned(),
            target: String::from_utf8_lossy(t).into_owned(),
            headers,
            body,
        });
    }
    Ok(())
}
