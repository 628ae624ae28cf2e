//! Converts kernel CLOCK_MONOTONIC timestamps (bpf_ktime_get_ns) to wall clock.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - monotonic, in ns, sampled at start-up.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec; clock_gettime only writes it.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn new() -> Clock {
        // Take the tightest of a few samples so a preemption between the two
        // reads doesn't skew every span.
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..5 {
            let m0 = clock_ns(libc::CLOCK_MONOTONIC);
            let r = clock_ns(libc::CLOCK_REALTIME);
            let m1 = clock_ns(libc::CLOCK_MONOTONIC);
            let width = m1 - m0;
            let offset = r - (m0 + width / 2);
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        Clock { offset_ns: best.map(|(_, o)| o).unwrap_or(0) }
    }

    pub fn now_monotonic_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }

    pub fn to_system_time(&self, monotonic_ns: u64) -> SystemTime {
        let wall = monotonic_ns as i128 + self.offset_ns;
        if wall <= 0 {
            return UNIX_EPOCH;
        }
        UNIX_EPOCH + Duration::from_nanos(wall as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_now_maps_to_wall_now() {
        let clock = Clock::new();
        let mapped = clock.to_system_time(Clock::now_monotonic_ns());
        let now = SystemTime::now();
        let diff = now.duration_since(mapped).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(50), "{diff:?}");
    }
}
