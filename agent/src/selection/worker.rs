//! The decisions: who is traced, written into the kernel's verdict map by a
//! worker thread so the event loop never reads /proc for them.
//!
//! Processes are decided at start (before the probes attach), once more
//! right after they attached (a process that exec'd in between kept the
//! verdict of its old executable, and the exec probe was not there to clear
//! it), at each exec
//! (the kernel made the process undecided, which means traced, so a process
//! an include rule selects is traced from its first connection; one the
//! rules leave out is traced until the decision lands, typically within
//! the loop's 10 ms drain interval plus a few /proc reads), and at every
//! sweep: new pids, listening ports that appeared (a process that has not
//! listened yet matches no port rule; it is decided again within a sweep
//! of its listen()), and pod metadata that arrived or changed.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use waggle_common::verdict;

use super::{
    facts::{listen_table, live_pids, ports_of, read_facts, ProcFacts},
    rules::{ProcessView, ResponseHeader, Rules},
};
use crate::{
    metrics::Metrics,
    metrics_server::{Gauge, KernelCounterCell},
    model::PodDirectory,
    probes::VerdictMap,
};

/// How often the worker sweeps /proc.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Exec'd processes waiting for the worker at most; beyond, they wait for
/// the next sweep (counted).
const QUEUE_CAPACITY: usize = 4096;

struct Known {
    facts: ProcFacts,
    verdict: Verdict,
}

/// A process's decision as the kernel's TRACE_VERDICT byte
/// (`waggle_common::verdict`): traced or not and, when include rules give
/// processes their own `trace_response_header`, the mode it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict(pub u8);

impl Verdict {
    pub fn traced(self) -> bool {
        self.0 != waggle_common::verdict::UNTRACED
    }
}

/// The rules applied to processes; remembers each decided process's facts
/// so a sweep re-evaluates without reading /proc again.
pub struct Decider {
    rules: Arc<Rules>,
    pods: Option<Arc<dyn PodDirectory>>,
    agent_pid: u32,
    known: HashMap<u32, Known>,
    ports: HashMap<u32, Vec<u16>>,
    /// Listening-socket inodes at the last sweep: when they change, every
    /// process's descriptors are read again.
    listen_inodes: Vec<u64>,
    /// The global `--trace-response-header`, when include rules set
    /// their own: each traced process's verdict then carries its mode.
    response_header: Option<ResponseHeader>,
}

impl Decider {
    pub fn new(rules: Arc<Rules>, pods: Option<Arc<dyn PodDirectory>>, agent_pid: u32) -> Decider {
        Decider {
            rules,
            pods,
            agent_pid,
            known: HashMap::new(),
            ports: HashMap::new(),
            listen_inodes: Vec::new(),
            response_header: None,
        }
    }

    /// Verdicts carry each traced process's response-header mode: the
    /// first matching include rule's, else `global`.
    pub fn with_response_header(mut self, global: ResponseHeader) -> Decider {
        self.response_header = Some(global);
        self
    }

    /// The rules' answer for `pid` with these facts and its known ports.
    pub fn evaluate(&self, pid: u32, facts: &ProcFacts) -> Verdict {
        let pod = match (&self.pods, &facts.pod_uid) {
            (Some(dir), Some(uid)) => dir.pod(uid),
            _ => None,
        };
        let ports = self.ports.get(&pid).map(Vec::as_slice).unwrap_or(&[]);
        let view =
            ProcessView { exe: &facts.exe, ports, container_id: facts.container_id.as_deref(), pod: pod.as_deref() };
        if !self.rules.traced(&view) {
            return Verdict(verdict::UNTRACED);
        }
        match self.response_header {
            Some(global) => Verdict(verdict::traced_with(self.rules.response_header(&view, global).kernel_mode())),
            None => Verdict(verdict::TRACED),
        }
    }

    /// Every running process: (tgid, verdict).
    pub fn decide_all(&mut self) -> Vec<(u32, Verdict)> {
        let pids = live_pids();
        if self.rules.uses_ports() {
            self.refresh_ports(&pids, &pids);
        }
        pids.into_iter().filter_map(|pid| Some((pid, self.decide(pid)?))).collect()
    }

    /// Every running process decided again from fresh facts: the verdicts
    /// that differ from what was known (or are new).
    pub fn recheck(&mut self) -> Vec<(u32, Verdict)> {
        let before: HashMap<u32, Verdict> = self.known.iter().map(|(&pid, k)| (pid, k.verdict)).collect();
        self.decide_all().into_iter().filter(|(pid, verdict)| before.get(pid) != Some(verdict)).collect()
    }

    /// Reads `pid`'s facts afresh (it exec'ed, or is new) and decides it;
    /// None for the agent, kernel threads and processes already gone.
    pub fn decide(&mut self, pid: u32) -> Option<Verdict> {
        if pid == self.agent_pid {
            return None;
        }
        let facts = read_facts(pid)?;
        let verdict = self.evaluate(pid, &facts);
        self.known.insert(pid, Known { facts, verdict });
        Some(verdict)
    }

    /// New processes, gone ones, new listeners, pod changes: the verdicts
    /// that changed (or are new).
    pub fn sweep(&mut self) -> Vec<(u32, Verdict)> {
        let pids = live_pids();
        let live: std::collections::HashSet<u32> = pids.iter().copied().collect();
        self.known.retain(|pid, _| live.contains(pid));
        self.ports.retain(|pid, _| live.contains(pid));
        let new: Vec<u32> = pids.iter().copied().filter(|p| !self.known.contains_key(p)).collect();
        if self.rules.uses_ports() {
            self.refresh_ports(&pids, &new);
        }
        let mut changes = Vec::new();
        for pid in new {
            if let Some(verdict) = self.decide(pid) {
                changes.push((pid, verdict));
            }
        }
        let again: Vec<(u32, Verdict)> = self
            .known
            .iter()
            .filter_map(|(&pid, k)| {
                let verdict = self.evaluate(pid, &k.facts);
                (verdict != k.verdict).then_some((pid, verdict))
            })
            .collect();
        for &(pid, verdict) in &again {
            if let Some(k) = self.known.get_mut(&pid) {
                k.verdict = verdict;
            }
        }
        changes.extend(again);
        changes
    }

    /// Ports of `new` pids (a forked worker inherits its parent's
    /// listeners), or of every pid when the set of listeners changed.
    fn refresh_ports(&mut self, all: &[u32], new: &[u32]) {
        let table = listen_table(all);
        let mut inodes: Vec<u64> = table.keys().copied().collect();
        inodes.sort_unstable();
        let which = if inodes != self.listen_inodes { all } else { new };
        self.listen_inodes = inodes;
        let found = ports_of(which, &table);
        if which.len() == all.len() {
            self.ports = found;
        } else {
            self.ports.extend(found);
        }
    }

    /// (traced, untraced) processes known.
    pub fn counts(&self) -> (u64, u64) {
        let traced = self.known.values().filter(|k| k.verdict.traced()).count() as u64;
        (traced, self.known.len() as u64 - traced)
    }
}

/// The loop's handle on the worker. Dropping it stops the thread.
pub struct Selection {
    tx: Option<SyncSender<u32>>,
    pending: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    thread: Option<JoinHandle<()>>,
}

impl Selection {
    /// Starts the worker with what `decider` knows from start-up.
    pub fn spawn(
        mut decider: Decider,
        mut map: VerdictMap,
        metrics: Arc<Metrics>,
        gauges: KernelCounterCell,
    ) -> std::io::Result<Selection> {
        let (tx, rx) = sync_channel::<u32>(QUEUE_CAPACITY);
        let pending = Arc::new(AtomicU64::new(0));
        let worker_pending = pending.clone();
        let worker_metrics = metrics.clone();
        let thread = std::thread::Builder::new().name("waggle-selection".into()).spawn(move || {
            let metrics = worker_metrics;
            let write = |map: &mut VerdictMap, pid: u32, verdict: Verdict| {
                match map.set(pid, verdict.0) {
                    Ok(()) => {
                        Metrics::inc(&metrics.selection_decisions);
                        // Exited meanwhile: its exit already cleared the
                        // entry, so this one would outlive it.
                        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                            map.remove(pid);
                        }
                    }
                    Err(e) => {
                        Metrics::inc(&metrics.selection_verdict_map_full);
                        tracing::debug!(pid, error = %e, "trace-selection verdict not written");
                    }
                }
            };
            // Spawned after the probes attached: a process that exec'd
            // between the start-up decisions and the exec probe's attach
            // still has its old executable's verdict.
            let changed = decider.recheck();
            if !changed.is_empty() {
                tracing::info!(
                    processes = changed.len(),
                    "trace selection: processes that exec'd during start-up decided again"
                );
            }
            for (pid, verdict) in changed {
                write(&mut map, pid, verdict);
            }
            let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
            loop {
                let wait = next_sweep.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(pid) => {
                        worker_pending.fetch_sub(1, Ordering::Relaxed);
                        if let Some(verdict) = decider.decide(pid) {
                            tracing::debug!(pid, traced = verdict.traced(), "process decided at exec");
                            write(&mut map, pid, verdict);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        for (pid, verdict) in decider.sweep() {
                            write(&mut map, pid, verdict);
                        }
                        let (traced, untraced) = decider.counts();
                        gauges.set_gauge(Gauge::ProcessesTraced, traced);
                        gauges.set_gauge(Gauge::ProcessesUntraced, untraced);
                        gauges.set_gauge(Gauge::SelectionPending, worker_pending.load(Ordering::Relaxed));
                        next_sweep = Instant::now() + SWEEP_INTERVAL;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        })?;
        Ok(Selection { tx: Some(tx), pending, metrics, thread: Some(thread) })
    }

    /// A process exec'ed: decide it. Never blocks; a full queue leaves it
    /// to the next sweep (counted).
    pub fn on_exec(&self, tgid: u32) {
        let Some(tx) = &self.tx else {
            return;
        };
        self.pending.fetch_add(1, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(tgid) {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            Metrics::inc(&self.metrics.selection_queue_full);
        }
    }
}

impl Drop for Selection {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use waggle_common::http::response::mode;

    use super::*;
    use crate::{model::PodFacts, selection::parse_rule_list};

    struct FakePods(PodFacts);

    impl PodDirectory for FakePods {
        fn pod(&self, uid: &str) -> Option<Arc<PodFacts>> {
            (uid == self.0.uid).then(|| Arc::new(self.0.clone()))
        }
    }

    fn decider(include: &str, exclude: &str, pods: Option<PodFacts>) -> Decider {
        let rules = Rules { include: parse_rule_list(include).unwrap(), exclude: parse_rule_list(exclude).unwrap() };
        Decider::new(Arc::new(rules), pods.map(|p| Arc::new(FakePods(p)) as Arc<dyn PodDirectory>), 0)
    }

    fn in_pod(uid: &str) -> ProcFacts {
        ProcFacts { exe: "/app/server".into(), container_id: Some("c1".into()), pod_uid: Some(uid.into()) }
    }

    #[test]
    fn pod_rules_read_the_directory_by_the_cgroup_pod_uid() {
        let pod = PodFacts {
            uid: "uid-1".into(),
            namespace: "kube-system".into(),
            labels: BTreeMap::from([("app".to_owned(), "dns".to_owned())]),
            containers: BTreeMap::from([("c1".to_owned(), "coredns".to_owned())]),
            ..PodFacts::default()
        };
        let d = decider("", "namespace=kube-system", Some(pod.clone()));
        assert!(!d.evaluate(1, &in_pod("uid-1")).traced());
        // A pod the directory does not know (yet): only non-pod rules apply.
        assert!(d.evaluate(1, &in_pod("uid-2")).traced());
        assert!(decider("container=core*", "", Some(pod.clone())).evaluate(1, &in_pod("uid-1")).traced());
        assert!(!decider("label:app=web", "", Some(pod)).evaluate(1, &in_pod("uid-1")).traced());
    }

    #[test]
    fn verdicts_carry_the_response_header_mode_only_when_rules_set_one() {
        let facts = |exe: &str| ProcFacts { exe: exe.into(), container_id: None, pod_uid: None };
        let rules = "exe=*/nginx&trace_response_header=x-trace-id;exe=*/python3";
        let d = decider(rules, "", None).with_response_header(ResponseHeader::TraceResponse);
        assert_eq!(d.evaluate(1, &facts("/usr/sbin/nginx")), Verdict(verdict::traced_with(mode::X_TRACE_ID)));
        assert_eq!(d.evaluate(1, &facts("/usr/bin/python3")), Verdict(verdict::traced_with(mode::TRACERESPONSE)));
        assert_eq!(d.evaluate(1, &facts("/usr/bin/perl")), Verdict(verdict::UNTRACED));
        // Without per-rule modes the kernel's global setting is all there is.
        assert_eq!(decider(rules, "", None).evaluate(1, &facts("/usr/sbin/nginx")), Verdict(verdict::TRACED));
    }

    #[test]
    fn this_process_is_decided_by_its_executable_and_the_agent_never() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap().display().to_string();
        let me = std::process::id();
        let mut d = decider(&format!("exe={exe}"), "", None);
        assert_eq!(d.decide(me), Some(Verdict(verdict::TRACED)));
        assert_eq!(decider("exe=*/nginx", "", None).decide(me), Some(Verdict(verdict::UNTRACED)));
        let mut agent = Decider::new(Arc::new(Rules::default()), None, me);
        assert_eq!(agent.decide(me), None);
        // A sweep or a recheck re-decides nothing that did not change.
        assert!(!d.recheck().iter().any(|(pid, _)| *pid == me));
        d.sweep();
        assert!(!d.sweep().iter().any(|(pid, _)| *pid == me));
        assert!(d.counts().0 >= 1);
    }
}
