//! `waggle floor`, the benchmark's floor (`cargo xtask bench`): an empty
//! program on exactly the tracepoints the agent's own programs take, gone
//! again once it is told to stop.
//!
//! Needs root and the eBPF object: ignored by plain `cargo test`, run by
//! `cargo xtask test`, failing with what is missing when either is.
mod common;
use common::{load_probes, read_line, Proc};

use std::{
    collections::BTreeSet,
    io::BufReader,
    process::{Command, Stdio},
};

use waggle::probes::ProbeConfig;
use waggle_common::FLOOR_PROGRAM;

/// Loaded programs named `waggle_floor`.
fn floor_programs() -> usize {
    aya::programs::loaded_programs().filter_map(Result::ok).filter(|p| p.name_as_str() == Some(FLOOR_PROGRAM)).count()
}

#[test]
#[ignore = "needs root and the eBPF object; run by `cargo xtask test`"]
fn the_floor_takes_every_tracepoint_the_agent_takes_and_leaves_none_behind() {
    let (probes, _source, _maps) = load_probes("floor_live", &ProbeConfig::default());
    // The agent's tracepoint programs are named after their tracepoints;
    // the others (sockops, sk_msg, the second programs on sys_exit_read and
    // sched_process_exec) are not tracepoints of their own.
    let agent: BTreeSet<String> = probes
        .attached()
        .iter()
        .filter(|name| ["sys_", "sched_", "task_"].iter().any(|p| name.starts_with(p)) && !name.starts_with("waggle_"))
        .map(|name| name.to_string())
        .collect();
    drop(probes);
    assert!(agent.len() >= 30, "the agent attached only {agent:?}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_waggle"))
        .arg("floor")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting waggle floor");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut floor = Proc(child);
    let mut lines = BufReader::new(stdout);
    let mut printed = Vec::new();
    loop {
        // It prints no empty line: "" is the end of its output.
        let line = read_line(&mut lines);
        assert!(!line.is_empty(), "waggle floor stopped before `ready`: {printed:?}");
        if line == "ready" {
            break;
        }
        printed.push(line);
    }
    assert_eq!(
        printed,
        [format!("attached {0} of {0}", agent.len())],
        "skipped tracepoints, or a count unlike the agent's"
    );
    assert_eq!(floor_programs(), 1, "one floor program, attached to every tracepoint");

    // SAFETY: kill(2) on the child's pid, which `floor` still owns.
    assert_eq!(unsafe { libc::kill(floor.pid() as i32, libc::SIGINT) }, 0);
    let status = floor.0.wait().expect("waiting for waggle floor");
    assert!(status.success(), "waggle floor exited with {status}");
    assert_eq!(floor_programs(), 0, "the floor program outlived `waggle floor`");
}
