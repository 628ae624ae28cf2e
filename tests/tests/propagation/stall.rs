//! Stopping and killing the agent, and what of its propagation path is
//! still loaded or still injecting afterwards.
use waggle_e2e::{curl, SK_MSG_PROGRAM};

use crate::services::Service;

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; pid is our agent.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
}

/// Traceparents B received for one direct request from curl.
#[track_caller]
pub fn b_direct(b: &Service) -> Vec<String> {
    let run = curl(&[&b.url("/inventory")]);
    run.assert_success();
    let v: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("B's reply is not JSON ({e}): {:?}", run.stdout));
    v["traceparents"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Programs and maps of the agent's propagation path still loaded.
pub fn propagation_objects() -> Vec<String> {
    let progs = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|n| n == SK_MSG_PROGRAM || n == "waggle_sockops");
    let maps = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter_map(|m| m.name_as_str().map(str::to_owned))
        .filter(|n| n == "INJECT_SOCKS" || n == "INJECT_PENDING");
    progs.chain(maps).collect()
}
