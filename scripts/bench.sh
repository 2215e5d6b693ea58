#!/usr/bin/env bash
# bench.sh - the benchmarks of issue 5: installs the servers (scripts/install-deps.sh,
# root needed the first time), builds the release gateway and the bench runner, and
# runs xmpp-gateway-bench: Prosody, ngIRCd (no flood protection), biboumi and
# xmpp-gateway on 127.0.0.1, the same scenarios against each gateway in turn
# (latency, throughput, scale, email), then a Markdown table of figures with the
# ratio gateway/biboumi and the CPU/RSS of every process involved (on stdout;
# progress on stderr).
#
# Usage: scripts/bench.sh [--smoke] [BENCH_ARGS...]
#   --smoke          small sizes (CI: a few seconds per scenario, nothing asserted)
#   BENCH_ARGS       go to the runner, e.g. --scenario latency --scenario scale,
#                    --scale-users 5000, --peers ours, --output BENCHMARKS-run.md;
#                    see: target/release/xmpp-gateway-bench --help
#   Examples: scripts/bench.sh
#             scripts/bench.sh --smoke
#             scripts/bench.sh --scenario scale --scale-users 5000
#             scripts/bench.sh --scenario scale --peers ours --scale-users 10000 --irc-server inspircd
#                              (the scale scenario against InspIRCd 3 instead of ngIRCd, whose
#                              CPU per client grows with its clients: issue 12's 10,000 users)
# Exits with the runner's status: non-zero if any scenario failed (a server did not
# start, a timeout, a lost connection); figures are never asserted.
# A full run takes about 11 minutes on 2 cores once built (3 runs per gateway, most of it throughput).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROG=bench.sh
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_deps "the benchmarks"
# scripts/biboumi.sh compiles its TCP_NODELAY shim with cc (the Rust toolchain's linker).
command -v cc >/dev/null 2>&1 || die "cc not found (package gcc): biboumi's TCP_NODELAY shim is compiled with it"

ensure_cargo

log "building the release gateway and the bench runner"
# The build test.sh and demo.sh use too (lib.sh): nothing is compiled twice.
build_release

target_dir=${CARGO_TARGET_DIR:-target}
export XMPP_GATEWAY_BIN="$PWD/$target_dir/release/xmpp-gateway"
case "$target_dir" in /*) XMPP_GATEWAY_BIN="$target_dir/release/xmpp-gateway" ;; esac
log "running the benchmarks ($*)"
exec "${XMPP_GATEWAY_BIN%/xmpp-gateway}/xmpp-gateway-bench" "$@"
