//! The agent's main loop. Implementation pending.
use std::future::Future;

use crate::{probes::ProbeError, Config};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Probes(#[from] ProbeError),
}

pub async fn run(_config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), RunError> {
    shutdown.await;
    Ok(())
}
