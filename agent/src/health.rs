//! Liveness and readiness of the agent, as `GET /healthz` and `GET /readyz`
//! on the `--metrics-addr` server answer them (a Kubernetes DaemonSet's
//! probes point there).
//!
//! The pipeline's loop records when it last turned and when it last finished
//! draining the ring buffer; the server only reads those instants. The
//! server runs on the runtime's worker threads while the loop runs on the
//! main thread, so a loop stuck in one record still gets an answer (a 503)
//! instead of a probe timeout.
//!
//! - live: the loop turned within [`LOOP_STALL`] (it ticks every second), or
//!   the probes are still loading and have been for less than
//!   [`STARTUP_LIMIT`].
//! - ready: the probes are attached and a drain finished within
//!   [`DRAIN_STALL`]. The loop drains every `DRAIN_INTERVAL_MS` even on a
//!   quiet node, and each drain either empties the ring or takes a full
//!   batch, so a drain that has not finished for that long means records
//!   are waiting (or will be) with nobody taking them: the kernel starts
//!   dropping events and, past its heartbeat, stops inserting traceparent.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::clock::Clock;

/// No loop turn for this long: the agent is wedged and should be restarted.
pub const LOOP_STALL: Duration = Duration::from_secs(30);
/// No finished drain for this long: not ready (events are not being taken).
pub const DRAIN_STALL: Duration = Duration::from_secs(5);
/// Loading and attaching the probes taking longer than this is a hang.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(120);

/// Marks an instant nobody has recorded yet.
const NEVER: u64 = 0;

#[derive(Debug)]
struct State {
    started_ns: u64,
    attached: AtomicBool,
    loop_ns: AtomicU64,
    drain_ns: AtomicU64,
    drained: AtomicU64,
}

/// Shared between the pipeline (writer) and the metrics server (reader).
/// Cloning shares the same state; every access is one relaxed atomic.
#[derive(Debug, Clone)]
pub struct Health(Arc<State>);

/// An answer to a probe: HTTP 200 with `ok`, else 503 with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub detail: String,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health::starting_at(Clock::now_monotonic_ns())
    }

    fn starting_at(now_ns: u64) -> Health {
        Health(Arc::new(State {
            started_ns: now_ns,
            attached: AtomicBool::new(false),
            loop_ns: AtomicU64::new(NEVER),
            drain_ns: AtomicU64::new(NEVER),
            drained: AtomicU64::new(0),
        }))
    }

    /// The probes are attached and the loop is about to start.
    pub fn attached(&self, now_ns: u64) {
        self.0.loop_ns.store(now_ns.max(1), Ordering::Relaxed);
        self.0.drain_ns.store(now_ns.max(1), Ordering::Relaxed);
        self.0.attached.store(true, Ordering::Release);
    }

    /// The loop turned (its 1 s tick).
    pub fn loop_turned(&self, now_ns: u64) {
        self.0.loop_ns.store(now_ns.max(1), Ordering::Relaxed);
    }

    /// A drain of the ring buffer finished, having handled `records`.
    pub fn drained(&self, records: usize, now_ns: u64) {
        self.0.drain_ns.store(now_ns.max(1), Ordering::Relaxed);
        self.0.drained.fetch_add(records as u64, Ordering::Relaxed);
    }

    pub fn liveness(&self) -> Verdict {
        self.liveness_at(Clock::now_monotonic_ns())
    }

    pub fn readiness(&self) -> Verdict {
        self.readiness_at(Clock::now_monotonic_ns())
    }

    fn liveness_at(&self, now_ns: u64) -> Verdict {
        if !self.0.attached.load(Ordering::Acquire) {
            let loading = since(self.0.started_ns, now_ns);
            return if loading <= STARTUP_LIMIT {
                verdict(true, format!("starting: loading probes for {:.1}s", loading.as_secs_f64()))
            } else {
                verdict(false, format!("probes still not attached after {}s", loading.as_secs()))
            };
        }
        let idle = since(self.0.loop_ns.load(Ordering::Relaxed), now_ns);
        if idle > LOOP_STALL {
            verdict(false, format!("event loop stalled: no turn for {}s", idle.as_secs()))
        } else {
            verdict(true, format!("event loop turned {:.1}s ago", idle.as_secs_f64()))
        }
    }

    fn readiness_at(&self, now_ns: u64) -> Verdict {
        if !self.0.attached.load(Ordering::Acquire) {
            return verdict(false, "probes not attached yet".to_owned());
        }
        let idle = since(self.0.drain_ns.load(Ordering::Relaxed), now_ns);
        let drained = self.0.drained.load(Ordering::Relaxed);
        if idle > DRAIN_STALL {
            verdict(
                false,
                format!(
                    "draining stalled: the ring buffer was last drained {}s ago ({drained} records drained)",
                    idle.as_secs()
                ),
            )
        } else {
            verdict(
                true,
                format!(
                    "probes attached, ring buffer drained {:.3}s ago ({drained} records drained)",
                    idle.as_secs_f64()
                ),
            )
        }
    }
}

fn since(then_ns: u64, now_ns: u64) -> Duration {
    Duration::from_nanos(now_ns.saturating_sub(then_ns))
}

fn verdict(ok: bool, detail: String) -> Verdict {
    Verdict { ok, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn starting_agent_is_live_but_not_ready_until_the_startup_limit() {
        let h = Health::starting_at(100 * S);
        let live = h.liveness_at(103 * S);
        assert!(live.ok, "{live:?}");
        assert_eq!(live.detail, "starting: loading probes for 3.0s");
        assert_eq!(h.readiness_at(103 * S), verdict(false, "probes not attached yet".into()));
        let hung = h.liveness_at(100 * S + STARTUP_LIMIT.as_nanos() as u64 + S);
        assert_eq!(hung, verdict(false, "probes still not attached after 121s".into()));
    }

    #[test]
    fn attached_agent_that_drains_is_ready_and_counts_records() {
        let h = Health::starting_at(100 * S);
        h.attached(101 * S);
        assert!(h.readiness_at(101 * S).ok);
        h.drained(7, 102 * S);
        h.drained(0, 103 * S);
        let ready = h.readiness_at(103 * S + S / 2);
        assert_eq!(ready, verdict(true, "probes attached, ring buffer drained 0.500s ago (7 records drained)".into()));
        h.loop_turned(103 * S);
        assert_eq!(h.liveness_at(104 * S), verdict(true, "event loop turned 1.0s ago".into()));
    }

    #[test]
    fn a_drain_that_stops_makes_the_agent_unready_and_then_ready_again() {
        let h = Health::starting_at(0);
        h.attached(S);
        h.drained(3, 2 * S);
        h.loop_turned(2 * S);
        // Exactly at the limit is still ready; past it, not.
        assert!(h.readiness_at(2 * S + DRAIN_STALL.as_nanos() as u64).ok);
        let stalled = h.readiness_at(2 * S + DRAIN_STALL.as_nanos() as u64 + 1);
        assert_eq!(
            stalled,
            verdict(false, "draining stalled: the ring buffer was last drained 5s ago (3 records drained)".into())
        );
        // Readiness fails well before liveness: a stalled drain is reported
        // (pod not ready, rollouts wait) before the kubelet restarts anything.
        assert!(h.liveness_at(2 * S + DRAIN_STALL.as_nanos() as u64 + 1).ok);
        h.drained(1, 10 * S);
        assert!(h.readiness_at(10 * S).ok);
    }

    #[test]
    fn a_loop_that_stops_turning_fails_liveness() {
        let h = Health::starting_at(0);
        h.attached(S);
        h.loop_turned(2 * S);
        let at = 2 * S + LOOP_STALL.as_nanos() as u64 + S;
        assert_eq!(h.liveness_at(at), verdict(false, "event loop stalled: no turn for 31s".into()));
        // A clock read racing a store (now < then) is not a stall.
        assert!(h.liveness_at(S).ok);
    }
}
