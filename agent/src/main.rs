use std::process::ExitCode;

fn main() -> ExitCode {
    waggle::cli::main()
}
