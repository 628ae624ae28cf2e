//! The OTEL_* environment of processes as the kernel read it at their exec
//! (`waggle_common::exec_env`): servers that write their process title over
//! their environment (nginx, php-fpm) lose their `OTEL_SERVICE_NAME` from
//! /proc/<pid>/environ, but not from here.
//!
//! The event loop records each exec (no /proc read, no lock held longer
//! than one map insert); the resource worker asks, for the pid it builds:
//! the process's own record if it exec'd since the agent started, else its
//! parent's (a forked worker runs its parent's image), up the chain while
//! no process on it exec'd. Only processes exec'd after the agent started
//! are known; the others keep the /proc read.
//!
//! Both tables are bounded LRU maps (evictions counted): one for execs that
//! set a variable, a larger one for the far more frequent execs that set
//! none, which only matter to stop a child from taking its parent's name.
use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use lru::LruCache;

use super::{environ::OtelEnv, proc::open_process};
use crate::metrics::Metrics;

/// Execs with a variable remembered at most.
pub const EXEC_ENV_CAPACITY: usize = 4096;
/// Execs without one remembered at most.
pub const EXEC_BARE_CAPACITY: usize = 32768;
/// Parents walked at most to find the exec a forked process runs.
const MAX_ANCESTORS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Recorded {
    boot_ns: u64,
    service_name: Option<String>,
    resource_attributes: Option<String>,
}

/// The exec-time environments, shared by the event loop (writer) and the
/// resource worker (reader).
pub struct ExecEnvTable {
    valued: LruCache<u32, Recorded>,
    /// tgid -> boot_ns of an exec that set neither variable.
    bare: LruCache<u32, u64>,
    metrics: Arc<Metrics>,
}

pub type SharedExecEnv = Arc<Mutex<ExecEnvTable>>;

/// One exec as the kernel reported it.
pub struct ExecRecord<'a> {
    pub tgid: u32,
    pub boot_ns: u64,
    pub service_name: Option<&'a [u8]>,
    pub resource_attributes: Option<&'a [u8]>,
}

/// What the table says of one process.
#[derive(Debug, PartialEq, Eq)]
enum Known {
    /// It exec'd with these values.
    Set(OtelEnv),
    /// It exec'd without either variable.
    Bare,
    /// No exec of this process is known.
    Unknown,
}

impl ExecEnvTable {
    pub fn shared(metrics: Arc<Metrics>) -> SharedExecEnv {
        Arc::new(Mutex::new(Self::with_capacity(EXEC_ENV_CAPACITY, EXEC_BARE_CAPACITY, metrics)))
    }

    fn with_capacity(valued: usize, bare: usize, metrics: Arc<Metrics>) -> ExecEnvTable {
        let cap = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        ExecEnvTable { valued: LruCache::new(cap(valued)), bare: LruCache::new(cap(bare)), metrics }
    }

    /// Records an exec (replacing what the pid had).
    pub fn record(&mut self, exec: &ExecRecord<'_>) {
        Metrics::inc(&self.metrics.exec_env_recorded);
        let text = |v: Option<&[u8]>| v.map(|b| String::from_utf8_lossy(b).into_owned());
        if exec.service_name.is_none() && exec.resource_attributes.is_none() {
            self.valued.pop(&exec.tgid);
            if let Some((pid, _)) = self.bare.push(exec.tgid, exec.boot_ns) {
                if pid != exec.tgid {
                    Metrics::inc(&self.metrics.exec_env_evicted);
                }
            }
            return;
        }
        Metrics::inc(&self.metrics.exec_env_with_otel);
        self.bare.pop(&exec.tgid);
        let recorded = Recorded {
            boot_ns: exec.boot_ns,
            service_name: text(exec.service_name),
            resource_attributes: text(exec.resource_attributes),
        };
        if let Some((pid, _)) = self.valued.push(exec.tgid, recorded) {
            if pid != exec.tgid {
                Metrics::inc(&self.metrics.exec_env_evicted);
            }
        }
    }

    /// What is known of `pid`'s last exec, if it happened in the process
    /// that started at `start_ns` (a record older than that is the pid's
    /// earlier owner's) and not after `before_ns` (a parent that exec'd
    /// again after forking the child asking).
    fn known(&self, pid: u32, start_ns: u64, before_ns: u64) -> Known {
        let fits = |boot_ns: u64| boot_ns >= start_ns && boot_ns <= before_ns;
        if let Some(r) = self.valued.peek(&pid).filter(|r| fits(r.boot_ns)) {
            return Known::Set(OtelEnv {
                service_name: r.service_name.clone(),
                resource_attributes: r.resource_attributes.clone(),
            });
        }
        match self.bare.peek(&pid) {
            Some(boot_ns) if fits(*boot_ns) => Known::Bare,
            _ => Known::Unknown,
        }
    }
}

/// Start (ns since boot, from /proc's clock ticks) and parent of a process.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lineage {
    pub(super) start_ns: u64,
    pub(super) ppid: u32,
}

/// The clock ticks of /proc/<pid>/stat's start time in ns; rounded down by
/// up to a tick, so `start_ns` never lies after the real start.
pub(super) fn ticks_to_ns(ticks: u64) -> u64 {
    let hz = procfs::ticks_per_second().max(1);
    ticks.saturating_mul(1_000_000_000 / hz)
}

fn lineage_of(pid: u32) -> Option<Lineage> {
    let stat = open_process(pid).ok()?.stat().ok()?;
    Some(Lineage { start_ns: ticks_to_ns(stat.starttime), ppid: u32::try_from(stat.ppid).ok()? })
}

/// The OTEL_* environment `pid` (started and parented as `lineage` says)
/// was exec'd with: its own exec's, or the nearest parent's up the chain
/// while none of them exec'd since the agent started; None when unknown
/// (then /proc/<pid>/environ decides). Reads /proc/<ppid>/stat for the
/// parents walked: call it on the resource worker.
pub(super) fn exec_env_of(table: &Mutex<ExecEnvTable>, pid: u32, lineage: Lineage) -> Option<OtelEnv> {
    walk(
        pid,
        lineage,
        |pid, start_ns, before_ns| match table.lock() {
            Ok(t) => t.known(pid, start_ns, before_ns),
            Err(_) => Known::Bare,
        },
        lineage_of,
    )
}

fn walk(
    pid: u32,
    lineage: Lineage,
    known: impl Fn(u32, u64, u64) -> Known,
    lineage_of: impl Fn(u32) -> Option<Lineage>,
) -> Option<OtelEnv> {
    let (mut pid, mut lineage, mut before_ns) = (pid, lineage, u64::MAX);
    for _ in 0..MAX_ANCESTORS {
        match known(pid, lineage.start_ns, before_ns) {
            Known::Set(env) => return Some(env),
            Known::Bare => return None,
            Known::Unknown => {}
        }
        // Not exec'd since the agent started: it runs the image it was
        // forked with, its parent's (while that parent is still the one
        // that forked it: a parent started later is a reused pid, and a
        // reparented orphan names its reaper).
        if lineage.ppid <= 1 {
            return None;
        }
        let parent = lineage_of(lineage.ppid)?;
        if parent.start_ns > lineage.start_ns {
            return None;
        }
        // Ticks round the child's start down: allow one tick.
        before_ns = lineage.start_ns.saturating_add(ticks_to_ns(1));
        pid = lineage.ppid;
        lineage = parent;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ExecEnvTable {
        ExecEnvTable::with_capacity(2, 2, Arc::new(Metrics::default()))
    }

    fn exec(tgid: u32, boot_ns: u64, name: Option<&'static [u8]>) -> ExecRecord<'static> {
        ExecRecord { tgid, boot_ns, service_name: name, resource_attributes: None }
    }

    fn set(name: &str) -> Known {
        Known::Set(OtelEnv { service_name: Some(name.into()), resource_attributes: None })
    }

    #[test]
    fn a_record_counts_for_the_process_that_exec_d_only() {
        let mut t = table();
        t.record(&exec(10, 5_000, Some(b"edge-proxy")));
        assert_eq!(t.known(10, 4_000, u64::MAX), set("edge-proxy"));
        // The pid's later owner started after that exec.
        assert_eq!(t.known(10, 6_000, u64::MAX), Known::Unknown);
        // A later exec without the variable replaces it.
        t.record(&exec(10, 7_000, None));
        assert_eq!(t.known(10, 4_000, u64::MAX), Known::Bare);
        // Both tables are bounded; evictions are counted.
        for pid in 20..24 {
            t.record(&exec(pid, 1, Some(b"x")));
        }
        assert_eq!(t.metrics.exec_env_evicted.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(t.known(20, 0, u64::MAX), Known::Unknown);
    }

    #[test]
    fn forked_children_take_the_nearest_exec_up_their_parents() {
        let mut t = table();
        // 100 exec'd with a name at 1000; 101 forked from it at 2000; 102
        // forked from 101 at 3000, then exec'd without the variable.
        t.record(&exec(100, 1_000, Some(b"edge-proxy")));
        let parents = |pid: u32| match pid {
            100 => Some(Lineage { start_ns: 500, ppid: 1 }),
            101 => Some(Lineage { start_ns: 2_000, ppid: 100 }),
            _ => None,
        };
        let t = Mutex::new(t);
        let known = |pid, start, before| t.lock().unwrap().known(pid, start, before);
        let env = walk(101, Lineage { start_ns: 2_000, ppid: 100 }, known, parents);
        assert_eq!(env.and_then(|e| e.service_name).as_deref(), Some("edge-proxy"));
        let grandchild = walk(103, Lineage { start_ns: 3_000, ppid: 101 }, known, parents);
        assert_eq!(grandchild.and_then(|e| e.service_name).as_deref(), Some("edge-proxy"));
        t.lock().unwrap().record(&exec(102, 3_500, None));
        assert_eq!(walk(102, Lineage { start_ns: 3_000, ppid: 101 }, known, parents), None);
        // A parent pid that started after the child is someone else.
        assert_eq!(walk(104, Lineage { start_ns: 100, ppid: 100 }, known, parents), None);
        // A parent that exec'd again after forking: its new image is not
        // the child's.
        t.lock().unwrap().record(&exec(100, 2_500_000_000, Some(b"later")));
        assert_eq!(walk(101, Lineage { start_ns: 2_000, ppid: 100 }, known, parents), None);
    }
}
