//! The binary's edge: parse arguments, build the config, init logging, run.
//! Errors become one line on stderr and a non-zero exit.
use std::process::ExitCode;

pub fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(2).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("waggle: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = crate::Config::default();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match runtime.block_on(crate::run(config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waggle: {e}");
            ExitCode::FAILURE
        }
    }
}
