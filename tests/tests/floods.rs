//! Connection floods (issue 15): 100k idle connections, and a slowloris
//! client on 5k connections, both ends traced. The agent must stay alive
//! and inside its memory bounds, and say what it shed in its counters.
//! Each test prints one `FIGURE` line (see docs/reliability.md).
use std::time::{Duration, Instant};

use waggle_e2e::{
    e2e_setup,
    env::{free_port, proc_memory, run_client_sampling},
    figure, python_script, run_client,
    scrape::{sample, scrape},
    Agent, ClientRun, OtlpReceiver, Protocol,
};

const MIB: u64 = 1024 * 1024;

/// The agent with its metrics endpoint; `extra` flags on top.
fn agent(receiver: &OtlpReceiver, extra: &[&str]) -> (Agent, u16) {
    let port = free_port();
    let mut args = receiver.agent_args(Protocol::HttpProtobuf);
    args.extend(["--metrics-addr".to_owned(), format!("127.0.0.1:{port}")]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    (Agent::start(&args, &[]), port)
}

/// Runs flood.py; returns it and the highest value the agent's `gauge`
/// (on its metrics endpoint) showed meanwhile.
fn flood(mode: &str, n: u32, seconds: u32, metrics: u16, gauge: &str) -> (ClientRun, u64) {
    let mut cmd = python_script("flood.py");
    cmd.args([mode.to_owned(), n.to_string(), seconds.to_string()]);
    let mut peak = 0;
    let run = run_client_sampling("flood", cmd, Duration::from_secs(300), Duration::from_millis(500), || {
        peak = peak.max(sample(&scrape(metrics), gauge).unwrap_or(0));
    });
    run.assert_success();
    (run, peak)
}

#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn a_hundred_thousand_idle_connections_stay_within_bounds_and_are_counted() {
    let _guard = e2e_setup("a_hundred_thousand_idle_connections_stay_within_bounds_and_are_counted");
    const N: u32 = 100_000;
    const RSS_BOUND: u64 = 200 * MIB;
    let receiver = OtlpReceiver::start();
    let (mut agent, metrics) = agent(&receiver, &[]);
    let pid = agent.pid();
    let started = Instant::now();
    let (run, tracked_peak) = flood("idle", N, 20, metrics, "waggle_connections_tracked");
    assert!(run.stdout.contains(&format!("open={N}")), "{run:?}");
    assert!(agent.is_running(), "agent died under the flood:\n{}", agent.stderr_tail(40));
    let peak = proc_memory(pid, "VmHWM");
    let out = agent.stop();
    let (opened, evicted, lost) =
        (out.counter("conns_opened"), out.counter("conns_evicted"), out.counter("kernel_events_lost"));
    assert!(peak < RSS_BOUND, "agent RSS peaked at {} MiB with {N} connections", peak / MIB);
    assert!(tracked_peak <= 65_536, "the connection table holds at most 65536: {tracked_peak}");
    // 2N descriptors: what the table could not hold is counted, not lost.
    assert!(opened + lost > u64::from(N), "the agent saw {opened} opens ({lost} events lost) of {} ends", 2 * N);
    assert!(evicted > 0, "{opened} connections through a 65536-entry table without an eviction counted");
    figure(&format!(
        "{N} idle connections (both ends traced, {} descriptors) in {:.0} s: agent RSS peak {} MiB, \
         {tracked_peak} connections tracked at most, {evicted} evicted and counted, {lost} kernel events lost \
         and counted, agent alive",
        2 * N,
        started.elapsed().as_secs_f64(),
        peak / MIB
    ));
}

#[test]
#[ignore = "needs root and the agent binary: cargo xtask test runs it"]
fn a_slowloris_flood_stays_within_the_buffer_budget() {
    let _guard = e2e_setup("a_slowloris_flood_stays_within_the_buffer_budget");
    const N: u32 = 5_000;
    const BUDGET: u64 = 1024 * 1024;
    let receiver = OtlpReceiver::start();
    let budget = BUDGET.to_string();
    let (mut agent, metrics) = agent(&receiver, &["--max-buffer-bytes", &budget]);
    let pid = agent.pid();
    let (run, buffered_peak) = flood("slowloris", N, 20, metrics, "waggle_buffered_bytes");
    assert!(run.stdout.contains(&format!("open={N}")), "{run:?}");
    assert!(agent.is_running(), "agent died under slowloris:\n{}", agent.stderr_tail(40));
    let peak = proc_memory(pid, "VmHWM");
    let out = agent.stop();
    let dropped = out.counter("buffers_dropped_over_budget");
    assert!(buffered_peak <= BUDGET, "buffered {buffered_peak} bytes past the {BUDGET}-byte budget");
    assert!(dropped > 0, "{N} heads growing for 20 s must outgrow {BUDGET} bytes: nothing counted as dropped");
    figure(&format!(
        "slowloris, {N} connections adding a header byte a second for 20 s: buffered at most {} KiB \
         (budget {} KiB), {dropped} partial heads dropped and counted, agent RSS peak {} MiB",
        buffered_peak / 1024,
        BUDGET / 1024,
        peak / MIB
    ));
}

/// utime + stime of `pid`, in clock ticks (USER_HZ, 100 per second).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: ") S ppid ...".
    let fields: Vec<&str> = stat.rsplit_once(") ").map_or("", |(_, rest)| rest).split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ") ".
    field(11) + field(12)
}

#[test]
#[ignore = "needs root, nginx, wrk and the agent binary: cargo xtask test runs it"]
fn connection_churn_is_traced_or_counted() {
    let _guard = e2e_setup("connection_churn_is_traced_or_counted");
    const SECONDS: u64 = 5;
    let nginx = waggle_e2e::Server::nginx();
    let receiver = OtlpReceiver::start();
    let (mut agent, _metrics) = agent(&receiver, &[]);
    let pid = agent.pid();
    let cpu_before = cpu_ticks(pid);
    // A new connection per request, as fast as nginx takes them.
    let mut wrk = std::process::Command::new("wrk");
    wrk.args(["-t1", "-c32", &format!("-d{SECONDS}s"), "-H", "Connection: close", &nginx.url("/")]);
    let run = run_client("wrk", &mut wrk, Duration::from_secs(SECONDS + 30));
    run.assert_success();
    let requests: u64 = run
        .stdout
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{}", run.stdout));
    assert!(agent.is_running(), "agent died under churn:\n{}", agent.stderr_tail(40));
    let peak = proc_memory(pid, "VmHWM");
    let cpu = cpu_ticks(pid).saturating_sub(cpu_before);
    let out = agent.stop();
    let (spans, lost, dropped) =
        (out.counter("spans_created"), out.counter("kernel_events_lost"), out.counter("exchanges_dropped"));
    assert!(peak < 150 * MIB, "agent RSS peaked at {} MiB", peak / MIB);
    // wrk and nginx each make a span per request; what is missing must show
    // as a counted loss.
    assert!(
        spans + 10 >= 2 * requests || lost + dropped > 0,
        "{requests} requests, {spans} spans and nothing counted as lost"
    );
    let per_conn_us = cpu as f64 * 10_000.0 / requests.max(1) as f64;
    figure(&format!(
        "connection churn (Connection: close, wrk -c32) for {SECONDS} s: {} new connections/s, {spans} spans for \
         {requests} requests, {lost} kernel events lost and {dropped} exchanges dropped (counted), agent CPU \
         {per_conn_us:.1} µs per connection (both ends), RSS peak {} MiB",
        requests / SECONDS,
        peak / MIB
    ));
}
