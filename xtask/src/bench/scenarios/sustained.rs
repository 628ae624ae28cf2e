//! Fixed request rates against nginx, stepping up until a step loses a
//! kernel event or misses its rate.
use anyhow::Result;

use super::nginx::Nginx;
use crate::bench::{agent::AgentRun, ctx::Ctx, load, procs};

#[derive(Clone, Debug)]
pub struct SustainedStep {
    pub rate: u32,
    pub achieved: f64,
    pub failed: u64,
    pub run: AgentRun,
    /// Without the agent, could the machine reach this rate? Only measured
    /// when the agent run fell short of it.
    pub baseline_achieved: Option<f64>,
}

impl SustainedStep {
    pub fn reached(&self) -> bool {
        self.achieved >= 0.95 * f64::from(self.rate) && self.failed == 0
    }

    pub fn lost(&self) -> u64 {
        self.run.counter("kernel_events_lost")
    }

    pub fn clean(&self) -> bool {
        self.reached() && self.lost() == 0
    }
}

pub const SUSTAINED_CONNECTIONS: u32 = 40;

pub fn sustained_rates(quick: bool) -> Vec<u32> {
    if quick {
        vec![5_000, 10_000, 20_000]
    } else {
        vec![5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000]
    }
}

pub fn sustained(ctx: &mut Ctx) -> Result<Vec<SustainedStep>> {
    let mut server = Nginx::start(ctx)?;
    let url = server.url();
    let mut steps = Vec::new();
    for rate in sustained_rates(ctx.quick) {
        ctx.check_quiet(&format!("the {rate} req/s step"));
        let mut a = ctx.start_agent(&format!("sustained-{rate}"))?;
        a.begin()?;
        let r = load::h2load_fixed_rate(&url, SUSTAINED_CONNECTIONS, rate, ctx.seconds)?;
        a.end_and_drain()?;
        let run = a.stop()?;
        server.check_alive()?;
        let mut step =
            SustainedStep { rate, achieved: r.rps, failed: r.failed + r.errored, run, baseline_achieved: None };
        if !step.reached() {
            let b = load::h2load_fixed_rate(&url, SUSTAINED_CONNECTIONS, rate, ctx.seconds)?;
            step.baseline_achieved = Some(b.rps);
        }
        procs::tracing_line(&format!(
            "sustained {rate} rps: achieved {:.0}, {} events lost, agent {:.0} m CPU, {} MiB peak RSS",
            step.achieved,
            step.lost(),
            step.run.millicores(),
            step.run.peak_rss_kib / 1024
        ));
        let clean = step.clean();
        steps.push(step);
        if !clean {
            break;
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_step_verdicts() {
        let mut step = SustainedStep {
            rate: 10_000,
            achieved: 9_990.0,
            failed: 0,
            run: AgentRun::default(),
            baseline_achieved: None,
        };
        assert!(step.clean());
        step.run.counters.insert("kernel_events_lost".into(), 3);
        assert!(step.reached() && !step.clean());
        step.run.counters.clear();
        step.achieved = 8_000.0;
        assert!(!step.reached() && !step.clean());
    }
}
