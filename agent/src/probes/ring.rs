//! Reading the ring buffer: waiting for records, draining them, and the
//! heartbeat each drain refreshes so the kernel knows the agent is alive.
use std::io;

use aya::maps::{Array, MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use waggle_common::{runtime, HEARTBEAT_INTERVAL_MS};

enum Ring {
    /// Not registered with the reactor yet: `load` may run outside a tokio
    /// runtime, and `drain` works without one.
    Plain(Option<RingBuf<MapData>>),
    Async(AsyncFd<RingBuf<MapData>>),
}

/// The ring buffer every kernel program writes its records to.
pub struct EventSource {
    ring: Ring,
    heartbeat: Option<Heartbeat>,
}

impl EventSource {
    pub(super) fn new(ring: RingBuf<MapData>, heartbeat: Heartbeat) -> EventSource {
        EventSource { ring: Ring::Plain(Some(ring)), heartbeat: Some(heartbeat) }
    }

    /// Waits until the ring buffer has records.
    ///
    /// Readiness is cleared before the caller drains: a record written after
    /// the drain then raises a fresh wake-up instead of being lost between
    /// "drained" and "cleared".
    pub async fn readable(&mut self) -> io::Result<()> {
        if let Ring::Plain(ring) = &mut self.ring {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(io::Error::other("EventSource::readable needs a tokio runtime"));
            }
            let Some(inner) = ring.take() else {
                return Err(io::Error::other("ring buffer lost while registering it"));
            };
            // SAFETY: the RingBuf owns its map fd (MapData holds an OwnedFd)
            // and neither closes nor swaps it while the AsyncFd owns it, so
            // as_raw_fd stays the same open descriptor for its lifetime.
            match unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) } {
                Ok(fd) => self.ring = Ring::Async(fd),
                Err(e) => {
                    let (inner, cause) = e.into_parts();
                    *ring = Some(inner);
                    return Err(cause);
                }
            }
        }
        let Ring::Async(fd) = &mut self.ring else {
            return Err(io::Error::other("ring buffer not registered"));
        };
        let mut guard = fd.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Calls `f` on up to `max` records; returns how many were handled.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let ring = match &mut self.ring {
            Ring::Plain(Some(ring)) => ring,
            Ring::Plain(None) => return 0,
            Ring::Async(fd) => fd.get_mut(),
        };
        let mut handled = 0;
        while handled < max {
            let Some(record) = ring.next() else {
                break;
            };
            f(&record);
            handled += 1;
        }
        if let Some(heartbeat) = &mut self.heartbeat {
            heartbeat.beat(crate::clock::Clock::now_monotonic_ns());
        }
        handled
    }
}

/// Tells the kernel the agent is draining events: it stops inserting
/// traceparent headers when this goes stale (a stopped or hung agent would
/// otherwise send ids downstream for spans it never exports).
pub struct Heartbeat {
    runtime: Array<MapData, u64>,
    last_ns: u64,
}

impl Heartbeat {
    /// Beats at once: the first drain is still milliseconds away.
    pub(super) fn new(runtime: Array<MapData, u64>) -> Heartbeat {
        let mut heartbeat = Heartbeat { runtime, last_ns: 0 };
        heartbeat.beat(crate::clock::Clock::now_monotonic_ns());
        heartbeat
    }

    /// The RUNTIME array the heartbeat lives in (it holds the sockmap mode too).
    pub(super) fn runtime_mut(&mut self) -> &mut Array<MapData, u64> {
        &mut self.runtime
    }

    /// Refreshes the kernel's copy at most every HEARTBEAT_INTERVAL_MS.
    pub fn beat(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_ns) < HEARTBEAT_INTERVAL_MS * 1_000_000 {
            return;
        }
        self.last_ns = now_ns;
        if let Err(e) = self.runtime.set(runtime::HEARTBEAT, now_ns, 0) {
            tracing::debug!(error = %e, "updating the propagation heartbeat");
        }
    }
}
