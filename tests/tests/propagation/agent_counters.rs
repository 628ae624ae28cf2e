//! The agent under test, started with its metrics endpoint, and the
//! propagation counters scraped from it.
pub use waggle_e2e::scrape::{counter, sample, scrape, scrape_until};
use waggle_e2e::{env::free_port, wait_for_other_injectors, Agent, OtlpReceiver, Protocol};

/// The agent exporting to `receiver` with its metrics endpoint on a fresh
/// port (returned).
#[track_caller]
pub fn start_agent(receiver: &OtlpReceiver, propagation: bool) -> (Agent, u16) {
    let extra: &[&str] = if propagation { &[] } else { &["--propagation", "off"] };
    start_agent_with(receiver, extra, &[])
}

/// [`start_agent`] with more arguments and environment (propagation on
/// unless `extra` turns it off).
#[track_caller]
pub fn start_agent_with(receiver: &OtlpReceiver, extra: &[&str], env: &[(&str, &str)]) -> (Agent, u16) {
    wait_for_other_injectors();
    let propagation = !extra.windows(2).any(|w| w == ["--propagation", "off"]);
    let metrics_port = free_port();
    let mut args = receiver.agent_args(Protocol::Grpc);
    args.extend(["--metrics-addr".to_owned(), format!("127.0.0.1:{metrics_port}")]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let mut agent = Agent::start(&args, env);
    let stderr = agent.stderr();
    assert_eq!(
        stderr.contains("propagation on:"),
        propagation,
        "the agent's start-up log disagrees with --propagation {}; stderr:\n{}",
        if propagation { "on" } else { "off" },
        agent.stderr_tail(40)
    );
    assert!(agent.is_running(), "agent exited after start-up; stderr:\n{}", agent.stderr_tail(40));
    (agent, metrics_port)
}
