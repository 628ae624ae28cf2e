//! Fuzzing entry point and the randomised tests that drive it.

use waggle_common::Role;

use super::{detect::Http1Detector, parser::Http1Parser};
use crate::model::{AttrValue, SpanKind};
use crate::protocols::{script, ProtocolParser};

/// Fuzzing entry point (`fuzz/fuzz_targets/http1.rs`), also run by the unit
/// tests: runs `data` as a [`crate::protocols::script`] in every role. Besides the
/// interpreter's own checks, a span from a script step must have a name, a
/// method, the role's kind and a plausible status. Panics on a broken
/// invariant; returns how many spans were emitted (so tests can check
/// coverage).
#[cfg(any(test, feature = "fuzz"))]
pub fn fuzz_script(data: &[u8]) -> usize {
    let new_parser = |role| Box::new(Http1Parser::new(role)) as Box<dyn ProtocolParser>;
    script::run(data, &Http1Detector, new_parser, |span, role, from| {
        // Spans flushed by the final close get only the interpreter's
        // timing check.
        if from == script::Emitted::FinalClose {
            return;
        }
        assert!(!span.name.is_empty());
        if role != Role::Unknown {
            let expected = if role == Role::Server { SpanKind::Server } else { SpanKind::Client };
            assert_eq!(span.kind, expected);
        }
        if let Some(AttrValue::Int(code)) = span.attr("http.response.status_code") {
            assert!((100..=999).contains(code), "status {code}");
        }
        assert!(span.attr("http.request.method").is_some());
    })
}

#[cfg(test)]
mod tests {
    use waggle_common::Direction;

    use super::super::test_conn::Conn;
    use super::*;

    /// Deterministic xorshift64*: no external seed, same inputs every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    const REQUESTS: &[&[u8]] = &[
        b"GET /a/1 HTTP/1.1\r\nHost: h:80\r\n\r\n",
        b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HEAD /h HTTP/1.1\r\n\r\n",
        b"GET /old HTTP/1.0\r\nUser-Agent: x\r\n\r\n",
        b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        b"DELETE /z/deadbeef01 HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
    ];
    const RESPONSES: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 503 Unavailable\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    ];

    /// A plausible conversation with random splits and mutations, encoded in
    /// the fuzz script format.
    fn random_script(rng: &mut Rng) -> Vec<u8> {
        let mut script = Vec::new();
        let steps = 1 + rng.below(12);
        for _ in 0..steps {
            let (dir, mut msg) = if rng.below(2) == 0 {
                (0u8, REQUESTS[rng.below(REQUESTS.len())].to_vec())
            } else {
                (1u8, RESPONSES[rng.below(RESPONSES.len())].to_vec())
            };
            match rng.below(8) {
                0 => {
                    let at = rng.below(msg.len());
                    msg[at] = rng.next() as u8;
                }
                1 => {
                    let at = rng.below(msg.len());
                    msg.truncate(at);
                }
                2 => {
                    let at = rng.below(msg.len());
                    msg.insert(at, rng.next() as u8);
                }
                3 => msg = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                _ => {}
            }
            let mut rest = &msg[..];
            while !rest.is_empty() {
                let n = (1 + rng.below(rest.len())).min(255);
                let truncated = rng.below(10) == 0;
                let op = dir | if truncated { 2 } else { 0 };
                script.push(((rng.below(16) as u8) << 4) | op);
                script.push(n as u8);
                script.extend_from_slice(&rest[..n]);
                if truncated {
                    script.push(rng.next() as u8);
                }
                rest = &rest[n..];
            }
            match rng.below(20) {
                0 => script.push(6),
                1 => script.push(0xf7),
                _ => {}
            }
        }
        script
    }

    #[test]
    fn fuzz_harness_on_seeded_inputs() {
        let mut rng = Rng(0x5eed_0f0a_661e);
        let mut spans = 0;
        for _ in 0..3000 {
            let script = random_script(&mut rng);
            spans += fuzz_script(&script);
        }
        // The generator must reach the span-emitting paths, not just noise.
        assert!(spans > 1500, "only {spans} spans: the harness is not exercising the parser");
        // Pure noise, too.
        for _ in 0..500 {
            let len = rng.below(600);
            let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            fuzz_script(&noise);
        }
    }

    /// Feeding a conversation in one write per message or split at random
    /// points must give the same spans (times aside).
    #[test]
    fn splitting_does_not_change_results() {
        let conversation: Vec<(Direction, &[u8])> = vec![
            (Direction::Ingress, b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"),
            (Direction::Egress, b"HTTP/1.1 100 Continue\r\n\r\n"),
            (Direction::Ingress, b"ok"),
            (Direction::Egress, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n"),
            (Direction::Ingress, b"GET /a/1 HTTP/1.1\r\nHost: h:80\r\n\r\nHEAD /h HTTP/1.1\r\n\r\nPUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            (Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nHTTP/1.1 503 X\r\nContent-Length: 1\r\n\r\nx"),
            (Direction::Ingress, b"\r\nGET /old HTTP/1.0\r\n\r\n"),
            (Direction::Egress, b"HTTP/1.0 200 OK\r\n\r\nuntil close"),
        ];
        let run = |splits: &mut dyn FnMut(usize) -> usize| {
            let mut c = Conn::new(Role::Server);
            for (dir, msg) in &conversation {
                let mut rest: &[u8] = msg;
                while !rest.is_empty() {
                    let n = splits(rest.len()).clamp(1, rest.len());
                    c.chunk(*dir, &rest[..n], n as u64);
                    rest = &rest[n..];
                }
            }
            c.close();
            assert!(c.all_continue());
            c.take().into_iter().map(|s| (s.name, s.status, s.attributes, s.incoming_context)).collect::<Vec<_>>()
        };
        let whole = run(&mut |n| n);
        assert_eq!(whole.len(), 5);
        assert_eq!(
            whole.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
            ["POST /e", "GET /a/{id}", "HEAD /h", "PUT /c", "GET /old"]
        );
        let mut rng = Rng(42);
        for _ in 0..300 {
            let split = run(&mut |n| 1 + rng.below(n));
            assert_eq!(split, whole);
        }
        assert_eq!(run(&mut |_| 1), whole);
    }
}
