#!/usr/bin/env bash
# test.sh - run the whole test suite: installs the servers the integration tests
# start (scripts/install-deps.sh, needs root the first time), then
#   cargo test --workspace --release -- --test-threads=4
# and the suites that store anything again with the PostgreSQL store:
#   GATEWAY_TEST_STORE=postgres cargo test --release --test backbone --test irc \
#       --test email --test archive --test admin -- --test-threads=4
#
# Usage: scripts/test.sh [CARGO_ARGS...] [-- TEST_BINARY_ARGS...]
#   Arguments before "--" go to cargo (e.g. a test name filter, -p PACKAGE); with any,
#   one pass runs, on the store GATEWAY_TEST_STORE names (sled when unset).
#   Arguments after it go to the test binaries (e.g. --nocapture). --test-threads=4
#   is added unless you give your own --test-threads.
#   Examples: scripts/test.sh
#             scripts/test.sh component_handshake -- --nocapture
# Exits with cargo's status.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROG=test.sh
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_deps "the integration tests"
if [ "$(id -u)" -ne 0 ]; then
    log "warning: not root; tests that start ejabberd (run as user 'ejabberd' via runuser) or jabberd2 (its script needs root) will fail"
fi

ensure_cargo

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
if [ ${#cargo_args[@]} -gt 0 ]; then
    # A chosen subset: one pass, on the engine GATEWAY_TEST_STORE names (sled if unset).
    exec cargo test --workspace --release "${cargo_args[@]}" -- "${test_args[@]}"
fi
cargo test --workspace --release -- "${test_args[@]}"
# The suites that store anything, again on PostgreSQL (a private cluster per test
# process, a database per gateway): the same tests, the other engine.
GATEWAY_TEST_STORE=postgres exec cargo test --release \
    --test backbone --test irc --test email --test archive --test admin -- "${test_args[@]}"
