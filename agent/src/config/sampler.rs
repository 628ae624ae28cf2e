//! OTEL_TRACES_SAMPLER: the sampler for traces the agent starts, and parsing
//! its name and argument.
use super::{source::Source, ConfigError};

/// OTEL_TRACES_SAMPLER for root spans the agent starts (parent-based: an
/// incoming sampled flag is respected).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

impl Sampler {
    /// The threshold of `waggle_common::sampled_by_threshold`: the one rule
    /// the kernel (which decides for the traces it starts and propagates)
    /// and the agent share.
    pub fn threshold(self) -> u64 {
        match self {
            Sampler::AlwaysOn => u64::MAX,
            Sampler::AlwaysOff => 0,
            Sampler::TraceIdRatio(ratio) => waggle_common::ratio_threshold(ratio),
        }
    }
}

/// (sampler, parent_based) from an OTEL_TRACES_SAMPLER name and its argument.
pub(super) fn parse_sampler(
    name: &str,
    name_source: &Source,
    arg: Option<&(String, Source)>,
) -> Result<(Sampler, bool), ConfigError> {
    let ratio = || -> Result<f64, ConfigError> {
        // The spec's default ratio is 1.0 when no argument is given.
        let Some((raw, source)) = arg else { return Ok(1.0) };
        let ratio: f64 =
            raw.trim().parse().map_err(|_| source.invalid(format!("{raw:?} is not a ratio between 0 and 1")))?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(source.invalid(format!("{raw:?} is not a ratio between 0 and 1")));
        }
        Ok(ratio)
    };
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "always_on" => (Sampler::AlwaysOn, false),
        "always_off" => (Sampler::AlwaysOff, false),
        "traceidratio" => (Sampler::TraceIdRatio(ratio()?), false),
        "parentbased_always_on" => (Sampler::AlwaysOn, true),
        "parentbased_always_off" => (Sampler::AlwaysOff, true),
        "parentbased_traceidratio" => (Sampler::TraceIdRatio(ratio()?), true),
        _ => {
            return Err(name_source.invalid(format!(
                "unknown sampler {name:?} (use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio)"
            )))
        }
    })
}
