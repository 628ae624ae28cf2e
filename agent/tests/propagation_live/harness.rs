//! Loaded probes and the kernel records they deliver, kept for the
//! assertions; scripts spawned as traced processes.
use std::{
    io::BufReader,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use waggle::{
    intake::{decode, RawEvent, Started},
    probes::{ConnMaps, EventSource, ProbeConfig, Probes},
};
use waggle_common::{Counter, DataEvent, Direction, TraceCtxEvent};

use crate::common::{load_probes, python, read_line, require_root, Proc};

/// Owned copy of the records the tests look at.
#[derive(Debug, Clone)]
pub enum Ev {
    Data(DataEvent, Vec<u8>),
    Ctx(TraceCtxEvent),
}

pub struct Harness {
    pub probes: Probes,
    pub source: EventSource,
    pub maps: ConnMaps,
    pub events: Vec<Ev>,
    pub py: String,
}

impl Harness {
    #[track_caller]
    pub fn load(test: &str, propagation: bool) -> Harness {
        Harness::load_with(test, propagation, true)
    }

    /// `unsafe_keepalive`: false runs the kernel's FIONREAD-safe mode.
    /// Fails the test when not root or without the eBPF object.
    #[track_caller]
    pub fn load_with(test: &str, propagation: bool, unsafe_keepalive: bool) -> Harness {
        require_root(test);
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        wait_for_other_injectors();
        // Every request of a keep-alive connection is a candidate: these
        // tests check the injector's byte handling, not the FIONREAD-safe
        // mode (tested on its own below).
        let config = ProbeConfig {
            capture_bytes: 4096,
            ring_buffer_bytes: 8 << 20,
            agent_tgid: std::process::id(),
            propagation,
            unsafe_keepalive,
            ..ProbeConfig::default()
        };
        let (probes, source, maps) = load_probes(test, &config);
        assert!(probes.skipped().is_empty(), "programs skipped: {:?}", probes.skipped());
        assert_eq!(probes.injecting(), propagation);
        Harness { probes, source, maps, events: Vec::new(), py: python() }
    }

    pub fn drain(&mut self) {
        let events = &mut self.events;
        self.source.drain(usize::MAX, |record| match decode(record) {
            Ok(RawEvent::Data { header, payload }) => events.push(Ev::Data(header, payload.to_vec())),
            Ok(RawEvent::ServerCtx(e) | RawEvent::ClientCtx(e)) => events.push(Ev::Ctx(e)),
            // The two records the kernel would otherwise send, in order.
            Ok(RawEvent::DataCtx { started: Started::Server(e) | Started::Client(e), header, payload }) => {
                events.push(Ev::Ctx(e));
                events.push(Ev::Data(header, payload.to_vec()));
            }
            Ok(_) => {}
            Err(e) => panic!("undecodable kernel record ({} bytes): {e}", record.len()),
        });
    }

    /// Drains until `done` holds on the events (or 10 s pass).
    pub async fn collect_until(&mut self, done: impl Fn(&[Ev]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.drain();
            if done(&self.events) || Instant::now() > deadline {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.source.readable()).await;
        }
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.probes.kernel_counters().iter().find(|(k, _)| *k == c).map(|(_, v)| *v).unwrap_or(0)
    }

    pub fn spawn(&self, script: &str, args: &[&str]) -> (Proc, BufReader<ChildStdout>, ChildStdin) {
        let mut child = Proc(
            Command::new(&self.py)
                .args(["-u", "-c", script])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let out = BufReader::new(child.0.stdout.take().unwrap());
        let stdin = child.0.stdin.take().unwrap();
        (child, out, stdin)
    }

    /// A recording server (or sink) and its port.
    pub fn server(&self, script: &str) -> (Proc, u16, BufReader<ChildStdout>) {
        let (proc_, mut out, _) = self.spawn(script, &[]);
        let port = read_line(&mut out).parse().expect("server port");
        (proc_, port, out)
    }

    pub fn ctx_events(&self, kind_client: bool) -> Vec<TraceCtxEvent> {
        let kind = if kind_client { 8 } else { 7 };
        self.events
            .iter()
            .filter_map(|e| match e {
                Ev::Ctx(c) if c.kind == kind => Some(*c),
                _ => None,
            })
            .collect()
    }

    pub fn data_of(&self, tgid: u32, dir: Direction) -> Vec<(DataEvent, Vec<u8>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Ev::Data(h, p) if h.tgid == tgid && h.direction == dir as u8 => Some((*h, p.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Another waggle with propagation on (e2e tests, benchmarks on a shared
/// machine) claims new client sockets for its own sk_msg program and injects
/// its own ids into the processes these tests start: wait for it to finish.
pub fn wait_for_other_injectors() {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let others = waggle::probes::other_injectors();
        if others.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "another waggle_sk_msg program stays loaded (ids {others:?}): stop the other agent, it owns the sockets these tests inject into"
        );
        eprintln!("propagation_live: waiting for another agent's sk_msg program ({others:?}) to go away");
        std::thread::sleep(Duration::from_secs(1));
    }
}
