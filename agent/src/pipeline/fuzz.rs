//! Fuzz entry for the kernel/user ABI: arbitrary bytes as a sequence of
//! ring-buffer records, each decoded and routed to the connection tracker
//! and the context linker the way the pipeline routes them (without /proc,
//! the kernel or an exporter). Every span that comes out is checked.
//!
//! Input: records, each `[len: u16 LE][len bytes]`; a zero length ticks
//! the tracker's clock instead.
use std::{net::SocketAddr, sync::Arc};

use waggle_common::{ConnInfo, SockKey};

use crate::{
    conntrack::{ConnEnvironment, ConnSpan, ConnTracker},
    intake::{self, RawEvent, Started},
    linking::ContextLinker,
    metrics::Metrics,
    protocols::ParserConfig,
};

/// A kernel that accepts every edit and a /proc that knows nothing.
struct NoKernel;

impl ConnEnvironment for NoKernel {
    fn mute(&mut self, _key: SockKey, _conn_id: u64) {}
    fn track(&mut self, _key: SockKey, _info: ConnInfo) {}
    fn forget(&mut self, _key: SockKey, _conn_id: u64) {}
    fn socket_addrs(&mut self, _pid: u32, _fd: u32) -> Option<(SocketAddr, SocketAddr)> {
        None
    }
    fn is_own_socket(&mut self, _peer: SocketAddr, _opened_ns: u64) -> bool {
        false
    }
}

/// Runs the records in `data`; returns the spans that came out (all checked).
pub fn fuzz_records(data: &[u8]) -> usize {
    let metrics = Arc::new(Metrics::default());
    let mut tracker = ConnTracker::new(ParserConfig::default(), metrics.clone(), 64);
    let mut linker = ContextLinker::new(metrics);
    let mut env = NoKernel;
    let mut out: Vec<ConnSpan> = Vec::new();
    let mut spans = 0;
    let mut now = 0u64;
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        if len == 0 {
            now = now.saturating_add(1_000_000_000);
            tracker.on_tick(now, &mut out);
            linker.prune(now);
        } else {
            let (record, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            match intake::decode(record) {
                Err(_) => {}
                Ok(RawEvent::Data { header, payload }) => {
                    assert!(payload.len() == header.captured_len as usize, "payload length as claimed");
                    tracker.on_data(&header, payload, &mut env, &mut out);
                }
                Ok(RawEvent::DataCtx { started, header, payload }) => {
                    assert!(payload.len() == header.captured_len as usize, "payload length as claimed");
                    match started {
                        Started::Server(ev) => linker.on_server_ctx(&ev),
                        Started::Client(ev) => linker.on_client_ctx(&ev),
                    }
                    tracker.on_data(&header, payload, &mut env, &mut out);
                }
                Ok(RawEvent::ConnOpen(ev)) => tracker.on_open(&ev, &mut env),
                Ok(RawEvent::ConnUnverified(ev)) => tracker.on_unverified(&ev, &mut env),
                Ok(RawEvent::ConnClose(ev)) => tracker.on_close(&ev, &mut out),
                Ok(RawEvent::ConnInherited(ev)) => tracker.on_inherit(&ev, ev.ts_ns),
                Ok(RawEvent::ProcessFork(ev)) => {
                    linker.on_fork(ev.parent_tgid, ev.parent_tid, ev.tgid);
                    tracker.on_fork(ev.parent_tgid, ev.tgid, &mut env, ev.ts_ns);
                }
                Ok(RawEvent::ProcessExit(ev)) => {
                    tracker.on_process_exit(ev.tgid, ev.ts_ns, &mut env, &mut out);
                    linker.forget_process(ev.tgid);
                }
                Ok(RawEvent::ThreadStart(ev)) => linker.on_thread_start(ev.tgid, ev.parent_tid, ev.tid),
                Ok(RawEvent::ServerCtx(ev)) => linker.on_server_ctx(&ev),
                Ok(RawEvent::ClientCtx(ev)) => linker.on_client_ctx(&ev),
                Ok(RawEvent::ProcessExec(_)) | Ok(RawEvent::ExecEnv { .. }) => {}
            }
        }
        spans += check(&mut out, &mut linker);
        assert!(tracker.len() <= 64, "the table holds its bound");
    }
    tracker.flush_all(u64::MAX, &mut out);
    spans + check(&mut out, &mut linker)
}

fn check(out: &mut Vec<ConnSpan>, linker: &mut ContextLinker) -> usize {
    let n = out.len();
    for ConnSpan { span, conn } in out.drain(..) {
        assert!(!span.name.is_empty(), "a span has a name");
        if let Some(identity) = linker.identity_for(&span, &conn) {
            assert!(identity.span_id != [0; 8], "a linked span has a span id");
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use bytemuck::bytes_of;
    use waggle_common::{ConnEvent, DataEvent, Direction, EventKind, Role, SyscallId};

    use super::*;

    fn record(bytes: &[u8]) -> Vec<u8> {
        let mut r = (bytes.len() as u16).to_le_bytes().to_vec();
        r.extend_from_slice(bytes);
        r
    }

    fn conn(kind: EventKind) -> ConnEvent {
        ConnEvent {
            kind: kind as u8,
            role: Role::Client as u8,
            family: 2,
            tgid: 7,
            tid: 7,
            fd: 3,
            conn_id: 11,
            ts_ns: 1_000,
            peer_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            peer_port: 8080,
            ..ConnEvent::default()
        }
    }

    fn data(direction: Direction, payload: &[u8], at: u64) -> Vec<u8> {
        let header = DataEvent {
            kind: EventKind::Data as u8,
            direction: direction as u8,
            syscall: SyscallId::Write as u8,
            role: Role::Client as u8,
            captured_len: payload.len() as u32,
            tgid: 7,
            tid: 7,
            fd: 3,
            conn_id: 11,
            total_len: payload.len() as u64,
            enter_ns: at,
            exit_ns: at + 10,
            ..DataEvent::default()
        };
        [bytes_of(&header), payload].concat()
    }

    fn exchange() -> Vec<u8> {
        [
            record(bytes_of(&conn(EventKind::ConnOpen))),
            record(&data(Direction::Egress, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 2_000)),
            record(&data(Direction::Ingress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3_000)),
            record(bytes_of(&conn(EventKind::ConnClose))),
        ]
        .concat()
    }

    /// The fuzz corpus's seed is this exchange, as the current ABI writes it.
    const SEED: &[u8] = include_bytes!("../../../fuzz/corpus/records/http-exchange");

    #[test]
    fn the_corpus_seed_is_the_exchange_in_the_current_abi() {
        assert_eq!(SEED, exchange().as_slice(), "ABI changed: run write_records_seed (ignored) and commit the seed");
    }

    /// `cargo test -p waggle --lib write_records_seed -- --ignored` after
    /// an ABI change.
    #[test]
    #[ignore = "writes the fuzz seed into the repository"]
    fn write_records_seed() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/records/http-exchange");
        std::fs::write(path, exchange()).unwrap();
    }

    /// Every input kept in the repository (seeds, and finds that crashed
    /// an earlier build) runs clean.
    #[test]
    fn the_kept_corpus_runs_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/records");
        let mut ran = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            fuzz_records(&std::fs::read(entry.unwrap().path()).unwrap());
            ran += 1;
        }
        assert!(ran >= 2, "the seed and the total_len overflow find");
    }

    #[test]
    fn a_well_formed_exchange_gives_one_span_and_garbage_gives_none() {
        let input = exchange();
        assert_eq!(fuzz_records(&input), 1);
        // Deterministic noise, and the exchange cut at every length.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(fuzz_records(&noise), 0);
        for cut in 0..input.len() {
            fuzz_records(&input[..cut]);
        }
    }
}
