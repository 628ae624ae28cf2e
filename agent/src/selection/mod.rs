//! Choosing what is traced: include/exclude rules decided per process in
//! userspace, applied in the kernel.
//!
//! The agent decides every running process before the probes attach
//! (`Decider::decide_all`, written into TRACE_VERDICT by the loader), then a
//! worker thread (`worker.rs`, fed by the loop through a bounded queue, as
//! the resource worker is) decides each process that execs (ProcessExec)
//! and sweeps /proc every second: processes it has not seen (a full queue,
//! a fork that kept its parent's verdict, start-up races), new listening
//! ports and changed pod metadata. Files: `rules` (parsing, matching),
//! `facts` (/proc reads), `worker` (the decisions and the map writes).
mod facts;
mod rules;
mod worker;

pub use facts::{parse_listen_line, ProcFacts};
pub use rules::{
    default_excludes, glob, parse_ports, parse_rule, parse_rule_list, Condition, ProcessView, ResponseHeader, Rule,
    Rules, DEFAULT_EXCLUDES, OPT_OUT_ANNOTATION,
};
pub use worker::{Decider, Selection, SWEEP_INTERVAL};
