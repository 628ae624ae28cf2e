//! Deterministic randomness and the bytes it makes: bodies (some pasted
//! full of requests), printable filler, request targets of exact lengths.

/// A request a body may look like.
pub const FAKE_REQUESTS: [&[u8]; 4] = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /y?z=1 HTTP/1.0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: b\r\nUser-Agent: c\r\n\r\n",
];

/// splitmix64: the plans are the same on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// In `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// An application's own traceparent value (distinct ids every call).
    pub fn app_traceparent(&mut self) -> String {
        format!("00-{:016x}{:016x}-{:016x}-01", self.next() | 1, self.next(), self.next() | 1)
    }
}

/// `n` random bytes; `request_like`: requests are pasted in at the start and
/// every few KiB.
pub fn body(rng: &mut Rng, n: usize, request_like: bool) -> Vec<u8> {
    let mut b = rng.bytes(n);
    if request_like {
        let mut at = 0;
        loop {
            let fake = FAKE_REQUESTS[rng.below(FAKE_REQUESTS.len())];
            if at + fake.len() > n {
                break;
            }
            b[at..at + fake.len()].copy_from_slice(fake);
            at += fake.len() + rng.range(0, 6000);
        }
    }
    b
}

/// A piece of body that starts with a complete request, `n` bytes (at least
/// the request).
pub fn request_like_piece(rng: &mut Rng, n: usize) -> Vec<u8> {
    let fake = FAKE_REQUESTS[rng.below(FAKE_REQUESTS.len())];
    let mut p = fake.to_vec();
    if n > p.len() {
        let extra = n - p.len();
        p.extend(body(rng, extra, true));
    }
    p
}

/// Printable filler for targets and header values.
pub fn filler(n: usize, salt: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-._~ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..n).map(|i| CHARS[(i * 7 + salt) % CHARS.len()] as char).collect()
}

/// A request target making `METHOD SP target SP VERSION CRLF` exactly
/// `line_len` bytes (at least "/"), starting with `prefix` when it fits.
pub fn target_for(method: &str, version: &str, line_len: usize, prefix: &str) -> String {
    let n = line_len.saturating_sub(method.len() + version.len() + 4).max(1);
    if n > prefix.len() {
        format!("{prefix}/{}", filler(n - prefix.len() - 1, line_len))
    } else {
        format!("/{}", filler(n - 1, line_len))
    }
}
