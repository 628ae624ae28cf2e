//! `cargo xtask`: build orchestration for waggle (eBPF object + agent).
//!
//! `setup` finds or installs the eBPF toolchain; `build`, `run` and `test`
//! run it first, so on a fresh Debian 12 machine `cargo xtask run` and
//! `cargo xtask test` are all the setup there is.
mod bench;
mod build;
mod cmd;
mod fuzz;
mod kernels;
mod lint;
mod setup;
mod test;

use std::{ffi::OsString, process::ExitCode};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::{
    build::Profile,
    cmd::Cmd,
    setup::{Apt, Toolchain},
};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Build, run and test waggle")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect the eBPF toolchain route and install what is missing.
    Setup {
        /// Print what would be installed without installing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build the eBPF object and the agent (target/release/waggle).
    Build {
        /// Build the agent with the dev profile (the eBPF object is always
        /// optimised: the verifier rejects unoptimised programs).
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run the agent as root with ARGS.
    Run {
        /// Build the agent with the dev profile.
        #[arg(long)]
        debug: bool,
        /// Arguments for the agent, after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Measure waggle's overhead (nginx, Flask vs OTel SDK, pgbench,
    /// per-syscall cost, sustained rate); see bench/README.md.
    Bench(bench::BenchArgs),
    /// Coverage-guided fuzzing of the protocol parsers and the kernel/user
    /// record ABI (libFuzzer); `--seconds 600` for a scheduled long run.
    Fuzz(fuzz::FuzzArgs),
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels (and 6.12 without BTF, and
    /// on cgroup v1) under qemu with the agent and check what it attaches
    /// and the spans it prints on each.
    Kernels(kernels::KernelsArgs),
    /// Runs in the kernel matrix's guests: a one-thread HTTP server.
    #[command(hide = true)]
    GuestHttpServer { port: u16, ready_file: std::path::PathBuf },
    /// Runs in the kernel matrix's guests: the response-header check's client.
    #[command(hide = true)]
    GuestHttpCheck { port: u16 },
    /// The bench's idle-connections scenario: a client holding connections.
    #[command(hide = true)]
    BenchIdleClient { port: u16, count: u32, offset: usize },
    /// rustfmt, clippy -D warnings (workspace, fuzz feature, kernel crate),
    /// no import circles, no oversized files.
    Lint,
    /// Build, install end-to-end test dependencies, run the lints (see
    /// `lint`), every test and the kernel matrix (see `kernels`), and a
    /// quick benchmark round and short fuzzing runs, so neither rots.
    Test {
        /// Only unit tests (`--lib --bins`): no integration or end-to-end
        /// tests, no end-to-end dependencies.
        #[arg(long)]
        unit_only: bool,
        /// Passed to the test binaries, after `--` (e.g. a name filter).
        #[arg(last = true)]
        filter: Vec<OsString>,
    },
    // `bench` is added by its own change.
}

fn main() -> ExitCode {
    cmd::install_signal_handlers();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    let root = build::repo_root();
    match command {
        Command::Setup { dry_run } => {
            setup::setup(&mut Apt::new(dry_run))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Build { debug } => {
            let toolchain = setup::setup(&mut Apt::new(false))?;
            build::build(&root, &toolchain, profile(debug))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { debug, args } => {
            let toolchain = setup::setup(&mut Apt::new(false))?;
            run(&root, &toolchain, profile(debug), &args)
        }
        Command::Test { unit_only, filter } => {
            let mut apt = Apt::new(false);
            let toolchain = setup::setup(&mut apt)?;
            let built = build::build(&root, &toolchain, Profile::Release)?;
            if !unit_only {
                test::ensure_e2e_deps(&mut apt)?;
            }
            // The quick benchmark runs first so the test tally stays the
            // last line of the output; its failure still fails the run.
            let bench = if unit_only || !filter.is_empty() {
                Ok(())
            } else {
                bench::run(&bench::BenchArgs {
                    quick: true,
                    agent: Some(built.agent_bin.clone()),
                    ..Default::default()
                })
            };
            if let Err(e) = &bench {
                eprintln!("xtask: quick benchmark failed: {e:#}");
            }
            let fuzzing = if unit_only || !filter.is_empty() {
                Ok(())
            } else {
                fuzz::run(&root, &fuzz::FuzzArgs { seconds: FUZZ_SECONDS_IN_TEST, only: Vec::new() })
            };
            if let Err(e) = &fuzzing {
                eprintln!("xtask: fuzzing failed: {e:#}");
            }
            // Lint before the tests so its report is not lost in their
            // output, but after building: a build error reads better first.
            let lint = if filter.is_empty() { lint::run(&root) } else { Ok(()) };
            if let Err(e) = &lint {
                eprintln!("xtask: {e:#}");
            }
            // Each kernel counts as one test in the tally.
            let mut tally = test::Tally::default();
            let matrix = if unit_only || !filter.is_empty() {
                Ok(())
            } else {
                kernels::run(&root, &built, &mut apt, &kernels::KernelsArgs::default()).map(|outcomes| {
                    for o in &outcomes {
                        match o.verdict {
                            Ok(()) => tally.passed += 1,
                            Err(_) => tally.failed += 1,
                        }
                    }
                })
            };
            if let Err(e) = &matrix {
                eprintln!("xtask: kernel matrix could not run: {e:#}");
                tally.failed += 1;
            }
            test::run_tests(&root, &built, unit_only, &filter, tally)?;
            lint?;
            bench?;
            fuzzing?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fuzz(args) => {
            fuzz::run(&root, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lint => {
            lint::run(&root)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Kernels(args) => {
            let mut apt = Apt::new(false);
            let toolchain = setup::setup(&mut apt)?;
            let built = build::build(&root, &toolchain, Profile::Release)?;
            kernels::check(&kernels::run(&root, &built, &mut apt, &args)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::GuestHttpServer { port, ready_file } => {
            kernels::guest::http_server(port, &ready_file)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::GuestHttpCheck { port } => {
            kernels::responses::check(port, kernels::guest::MARK)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchIdleClient { port, count, offset } => {
            bench::idle_client(port, count, offset)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            bench::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Seconds per fuzz target during `cargo xtask test`.
const FUZZ_SECONDS_IN_TEST: u64 = 20;

fn profile(debug: bool) -> Profile {
    if debug {
        Profile::Debug
    } else {
        Profile::Release
    }
}

/// Runs the agent as root (through `sudo -E` when needed, which keeps the
/// OTEL_* variables) and returns its exit code.
fn run(root: &std::path::Path, toolchain: &Toolchain, profile: Profile, args: &[OsString]) -> Result<ExitCode> {
    let built = build::build(root, toolchain, profile)?;
    let cmd = if cmd::is_root() {
        Cmd::new(&built.agent_bin).args(args)
    } else if cmd::find_program("sudo").is_some() {
        Cmd::new("sudo").arg("-E").arg(&built.agent_bin).args(args)
    } else {
        bail!(
            "waggle loads eBPF programs and must run as root; run as root:\n    {}",
            Cmd::new(&built.agent_bin).args(args).display()
        );
    };
    let status = cmd.status()?;
    let code = cmd::exit_code(status);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
