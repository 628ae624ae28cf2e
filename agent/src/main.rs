use std::process::ExitCode;

// See waggle::allocator for why mimalloc, and how it is tuned.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    waggle::allocator::reexec_tuned();
    waggle::cli::main()
}
