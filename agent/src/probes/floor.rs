//! `waggle floor`: the benchmark's floor. One empty program (it returns 0
//! and nothing else) attached, the way the agent attaches its own, to
//! every tracepoint the agent uses: what any tracepoint-based agent pays
//! before it does any work. bpftrace's empty probes are no floor: they
//! return 1, which sends every hit on into the perf-event path, about half
//! a microsecond per hit on the CPU that holds the perf event.
use aya::{programs::TracePoint, Ebpf, EbpfLoader};
use waggle_common::FLOOR_PROGRAM;

use super::{
    error::{AttachError, ProbeError},
    load::{prepare_to_load, EBPF_OBJECT, PROGRAMS},
};

/// The floor's program and links: dropping it detaches them.
pub struct Floor {
    _ebpf: Ebpf,
    /// `category:name` of each tracepoint the program is attached to.
    pub attached: Vec<String>,
    /// Tracepoints this kernel lacks or refused, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl Floor {
    /// Loads the floor program and attaches it to every tracepoint of the
    /// agent's program list.
    pub fn attach() -> Result<Floor, ProbeError> {
        prepare_to_load()?;
        let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT).map_err(|e| ProbeError::Load(Box::new(e)))?;
        let program: &mut TracePoint = ebpf
            .program_mut(FLOOR_PROGRAM)
            .ok_or(ProbeError::Other { operation: "finding the floor program", message: FLOOR_PROGRAM.to_owned() })?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| ProbeError::Other {
                operation: "opening the floor program",
                message: e.to_string(),
            })?;
        program.load().map_err(|e| ProbeError::Other {
            operation: "loading the floor program",
            message: AttachError::from(e).describe(),
        })?;
        let mut attached = Vec::new();
        let mut skipped = Vec::new();
        for spec in PROGRAMS {
            let name = format!("{}:{}", spec.category, spec.name);
            match program.attach(spec.category, spec.name) {
                Ok(_) => attached.push(name),
                Err(e) => skipped.push((name, AttachError::from(e).describe())),
            }
        }
        Ok(Floor { _ebpf: ebpf, attached, skipped })
    }
}
