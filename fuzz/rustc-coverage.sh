#!/bin/sh
# RUSTC_WRAPPER for `cargo xtask fuzz` (xtask/src/fuzz.rs): adds libFuzzer's
# coverage passes (what cargo-fuzz gives rustc) to
# waggle's own crates only. Dependencies compile exactly as in the agent's
# release build, so the fuzz build reuses them from the shared target/
# instead of compiling (and instrumenting) the whole tree again.
rustc="$1"
shift
for arg in "$@"; do
    if [ "$prev" = "--crate-name" ]; then
        case " $WAGGLE_FUZZ_CRATES " in
        *" $arg "*)
            exec "$rustc" "$@" -Cpasses=sancov-module \
                -Cllvm-args=-sanitizer-coverage-level=4 \
                -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
                -Cllvm-args=-sanitizer-coverage-pc-table \
                -Cllvm-args=-sanitizer-coverage-trace-compares \
                --cfg fuzzing
            ;;
        esac
        break
    fi
    prev="$arg"
done
exec "$rustc" "$@"
