use std::process::ExitCode;

// The agent allocates and frees small buffers (spans, attributes, export
// batches) at a high rate; mimalloc's size classes cut that cost sharply
// compared with glibc malloc (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    waggle::cli::main()
}
