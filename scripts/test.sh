#!/usr/bin/env bash
# test.sh - run the whole test suite: installs the servers the integration tests
# start (scripts/install-deps.sh, needs root the first time), then
#   cargo test --workspace --release -- --test-threads=4
#
# Usage: scripts/test.sh [CARGO_ARGS...] [-- TEST_BINARY_ARGS...]
#   Arguments before "--" go to cargo (e.g. a test name filter, -p PACKAGE),
#   arguments after it to the test binaries (e.g. --nocapture). --test-threads=4
#   is added unless you give your own --test-threads.
#   Examples: scripts/test.sh
#             scripts/test.sh component_handshake -- --nocapture
# Exits with cargo's status.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

if ! bash scripts/install-deps.sh; then
    if [ "$(id -u)" -ne 0 ]; then
        die "the integration tests need the packages named above; run 'sudo scripts/install-deps.sh' once (or run this script as root)"
    fi
    die "scripts/install-deps.sh failed"
fi
if [ "$(id -u)" -ne 0 ]; then
    log "warning: not root; tests that start ejabberd (run as user 'ejabberd' via runuser) will fail"
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found; install the Rust toolchain (https://rustup.rs)"

# Split our arguments at the first "--": cargo's, then the test binaries'.
cargo_args=()
test_args=()
seen_sep=false
for arg in "$@"; do
    if [ "$seen_sep" = false ] && [ "$arg" = -- ]; then
        seen_sep=true
    elif [ "$seen_sep" = true ]; then
        test_args+=("$arg")
    else
        cargo_args+=("$arg")
    fi
done
threads_given=false
for arg in "${test_args[@]+"${test_args[@]}"}"; do
    case "$arg" in --test-threads | --test-threads=*) threads_given=true ;; esac
done
[ "$threads_given" = true ] || test_args=(--test-threads=4 "${test_args[@]+"${test_args[@]}"}")

set -x
exec cargo test --workspace --release "${cargo_args[@]+"${cargo_args[@]}"}" -- "${test_args[@]}"
