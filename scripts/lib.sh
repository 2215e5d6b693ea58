#!/usr/bin/env bash
# lib.sh - helpers shared by the server scripts (prosody.sh, ejabberd.sh, ...).
#
# Usage: source "$(dirname "$0")/lib.sh"   (not meant to be run directly)
#
# Expects the caller to set PROG (the name used in messages).
# Everything is on 127.0.0.1; nothing here talks to another host.

# Messages go to stderr so that stdout carries only results (e.g. a pid).
log() { printf '%s: %s\n' "${PROG:-script}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${PROG:-script}" "$*" >&2; exit 1; }

# need_cmd CMD [HINT] - fail clearly when a command is missing.
need_cmd() {
    command -v "$1" >/dev/null 2>&1 \
        || die "'$1' not found${2:+ ($2)}; run scripts/install-deps.sh as root"
}

# check_port NAME VALUE - VALUE must be a TCP port number.
check_port() {
    case "$2" in
        '' | *[!0-9]* | 0*) die "$1 must be a port number, got '$2'" ;;
    esac
    if [ "$2" -lt 1 ] || [ "$2" -gt 65535 ]; then
        die "$1 must be between 1 and 65535, got '$2'"
    fi
}

# check_word NAME VALUE - a JID part, host, secret or password that we embed in
# configuration files: no quotes, backslashes, whitespace or control characters.
check_word() {
    case "$2" in
        '') die "$1 must not be empty" ;;
        *[[:space:][:cntrl:]\"\'\\]*) die "$1 must not contain quotes, backslashes or whitespace: '$2'" ;;
    esac
}

# abs_dir DIR - print DIR as a canonical absolute path (DIR need not exist
# yet), so that every spelling of one DIR names the same instance.
abs_dir() {
    [ -n "$1" ] || die "DIR must not be empty"
    realpath -m -- "$1"
}

# port_open PORT - true if something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# pid_listens PID PORT - true if process PID itself has a listening TCP socket
# on PORT (so an open port really belongs to the server we started, not to some
# other program). Reads /proc only: no ss/netstat needed on a minimal machine.
pid_listens() {
    local pid=$1 porthex inodes inode fd link
    porthex=$(printf '%04X' "$2")
    # /proc/net/tcp columns: sl local_address rem_address st ... inode (10th); 0A = LISTEN
    inodes=$(awk -v p=":$porthex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null || true)
    [ -n "$inodes" ] || return 1
    for fd in /proc/"$pid"/fd/*; do
        link=$(readlink "$fd" 2>/dev/null) || continue
        for inode in $inodes; do
            [ "$link" = "socket:[$inode]" ] && return 0
        done
    done
    return 1
}

# port_bound PORT - true if a TCP socket is bound to PORT (any state, any address); used to pick
# the Erlang distribution port.
port_bound() {
    local porthex
    porthex=$(printf '%04X' "$1")
    awk -v p=":$porthex" 'substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# pick_dist_port PORT1 PORT2 - a free port in 20000-29999 (below
# the usual ephemeral range 32768-60999, where tests pick their ports), derived
# from PORT2, moving up while taken or equal to PORT1 or PORT2. For an
# Erlang node's distribution port (ejabberd.sh) or a private epmd's
# (ejabberd-cluster.sh).
pick_dist_port() {
    local base=$((($2 + 1) % 10000)) i p
    for ((i = 0; i < 10000; i++)); do
        p=$((20000 + (base + i) % 10000))
        [ "$p" != "$1" ] && [ "$p" != "$2" ] && ! port_bound "$p" && {
            printf '%s\n' "$p"
            return 0
        }
    done
    die "no free port in 20000-29999 for the Erlang distribution"
}

# now_ms - milliseconds since the epoch.
now_ms() { date +%s%3N; }

# pid_alive PID - true if PID is a live (non-zombie) process.
pid_alive() {
    [ -n "$1" ] && [ -d "/proc/$1" ] || return 1
    local state
    state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ]
}

# pid_cmdline_has PID TEXT - true if PID's command line contains TEXT.
# Used to make sure a pid from a pidfile still belongs to our instance.
pid_cmdline_has() {
    local cmd
    cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true)
    case "$cmd" in
        *"$2"*) return 0 ;;
        *) return 1 ;;
    esac
}

# session_pids SID - pids of the live processes in session SID (a setsid we ran),
# read from /proc (procps may be missing on a minimal machine).
session_pids() {
    local sid=$1 f stat rest
    for f in /proc/[0-9]*/stat; do
        stat=$(cat "$f" 2>/dev/null) || continue
        rest=${stat##*) } # fields after "pid (comm) ": state ppid pgrp session ...
        # shellcheck disable=SC2086 # split the fields on purpose
        set -- $rest
        if [ "${4:-}" = "$sid" ] && [ "$1" != Z ]; then
            f=${f#/proc/}
            printf '%s\n' "${f%/stat}"
        fi
    done
}

# kill_wait PID SECONDS - send TERM, wait up to SECONDS, then KILL.
kill_wait() {
    local pid=$1 secs=$2 i
    pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    log "pid $pid did not exit after TERM in ${secs}s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    log "pid $pid still alive after KILL"
    return 1
}

# start_watchdog DIR SERVER_PID STOP_CMD... - if HARNESS_OWNER_PID is set (e.g.
# by a test binary: its own pid), start a small detached watcher that runs
# STOP_CMD when that process is gone while the server still runs, so a crashed
# or killed test run does not leave servers behind. Its pid goes to
# DIR/watchdog.pid; it exits by itself when the server stops.
start_watchdog() {
    local dir=$1 server=$2
    shift 2
    local owner=${HARNESS_OWNER_PID:-}
    [ -n "$owner" ] || return 0
    # (check_owner_pid ran before the server started; if the owner has died
    # since, the watchdog stops the server at once.)
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c ': harness-watchdog
        alive() { [ -d "/proc/$1" ] && ! grep -q "^State:[[:space:]]*Z" "/proc/$1/status" 2>/dev/null; }
        owner=$1 server=$2
        shift 2
        while alive "$owner" && alive "$server"; do sleep 1; done
        if alive "$server"; then
            echo "$(date +%T) owner $owner gone: stopping server $server"
            exec "$@"
        fi' _ "$owner" "$server" "$@" </dev/null >>"$dir/watchdog.log" 2>&1 &
    printf '%s\n' "$!" >"$dir/watchdog.pid"
}

# check_owner_pid - validate HARNESS_OWNER_PID before starting a server.
check_owner_pid() {
    local owner=${HARNESS_OWNER_PID:-}
    [ -n "$owner" ] || return 0
    case "$owner" in *[!0-9]*) die "HARNESS_OWNER_PID must be a pid, got '$owner'" ;; esac
    pid_alive "$owner" || die "HARNESS_OWNER_PID $owner is not a running process"
}

# stop_watchdog DIR - end DIR's watchdog (unless we are it).
stop_watchdog() {
    local pid
    [ -s "$1/watchdog.pid" ] || return 0
    pid=$(tr -dc '0-9' <"$1/watchdog.pid" 2>/dev/null || true)
    rm -f "$1/watchdog.pid"
    [ -n "$pid" ] && [ "$pid" != "$$" ] || return 0
    if pid_cmdline_has "$pid" harness-watchdog; then
        kill -TERM "$pid" 2>/dev/null || true
    fi
}

# show_logs FILE... - print the tail of each existing file to stderr.
show_logs() {
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        printf '%s: ---- last lines of %s ----\n' "${PROG:-script}" "$f" >&2
        tail -n 40 "$f" >&2 || true
    done
}

# ensure_reachable DIR USER NAME - USER (the account server NAME runs as) must be able
# to search DIR and every parent. Parents inside /tmp or $TMPDIR that we own get o+x
# (search only, no listing); anything else is an error.
ensure_reachable() {
    local dir=$1 user=$2 name=$3 p='' part tmp=${TMPDIR:-/tmp}
    local -a parts
    IFS=/ read -r -a parts <<<"${dir#/}"
    for part in "${parts[@]}"; do
        [ -n "$part" ] || continue
        p="$p/$part"
        runuser -u "$user" -- test -x "$p" && continue
        case "$p" in
            /tmp/* | "${tmp%/}"/*)
                if [ -O "$p" ]; then
                    log "granting search permission (o+x) on $p so that user '$user' can reach $dir"
                    chmod o+x "$p"
                    runuser -u "$user" -- test -x "$p" && continue
                fi
                ;;
        esac
        die "user '$user' cannot enter $p (mode $(stat -c %a "$p")); $name needs DIR and all its parents searchable: chmod o+x $p, or use another DIR"
    done
}

# pidfile_pid FILE MARKER - the pid in FILE if that process is alive and its command
# line mentions MARKER (so a recycled pid is never taken for ours), else nothing. The
# file may vanish while we read it (the server exiting): that reads as nothing.
pidfile_pid() {
    local pid
    [ -s "$1" ] || return 0
    pid=$(tr -dc '0-9' <"$1" 2>/dev/null || true)
    if pid_alive "$pid" && pid_cmdline_has "$pid" "$2"; then
        printf '%s\n' "$pid"
    fi
}

# stop_server DIR PID PIDFILE NAME - the usual `stop`: end DIR's watchdog, stop PID (if
# any: TERM, KILL after $STOP_TIMEOUT s), remove PIDFILE. Idempotent.
stop_server() {
    local dir=$1 pid=$2 pidfile=$3 name=$4
    stop_watchdog "$dir"
    if [ -n "$pid" ]; then
        kill_wait "$pid" "$STOP_TIMEOUT" || die "could not stop $name pid $pid"
        log "stopped $name pid $pid ($dir)"
    fi
    rm -f "$pidfile"
}

# make_server_cert TLSDIR - a self-signed server certificate (SAN localhost and
# 127.0.0.1, CA:FALSE, serverAuth: rustls refuses a CA certificate as a server's own)
# in TLSDIR/cert.pem + key.pem, made once: tests keep trusting the same cert.pem
# across restarts. Written under temporary names, so a crash leaves no half file.
make_server_cert() {
    local tls=$1
    need_cmd openssl
    mkdir -p "$tls"
    chmod 0755 "$tls"
    [ -s "$tls/cert.pem" ] && [ -s "$tls/key.pem" ] && return 0
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -addext "basicConstraints=critical,CA:FALSE" \
        -addext "keyUsage=critical,digitalSignature" \
        -addext "extendedKeyUsage=serverAuth" \
        -keyout "$tls/key.pem.tmp" -out "$tls/cert.pem.tmp" >/dev/null 2>&1 \
        || die "openssl could not create a self-signed certificate in $tls"
    chmod 0600 "$tls/key.pem.tmp"
    chmod 0644 "$tls/cert.pem.tmp"
    mv -f "$tls/key.pem.tmp" "$tls/key.pem"
    mv -f "$tls/cert.pem.tmp" "$tls/cert.pem"
}

# Installs the servers (scripts/install-deps.sh) or dies saying what needs them:
# ensure_deps "the benchmarks". Run from the repository's root.
ensure_deps() {
    if ! bash scripts/install-deps.sh; then
        [ "$(id -u)" -eq 0 ] || die "$1 need the packages named above; run 'sudo scripts/install-deps.sh' once (or run this script as root)"
        die "scripts/install-deps.sh failed"
    fi
}

# Builds the release binaries with the selection `cargo test --workspace --release`
# compiles (every package, every target, dev-dependencies' features included), so that
# test.sh, demo.sh and bench.sh share one build: after any of them, the others compile
# nothing but what is missing. A narrower selection (-p PACKAGE --bin NAME) unifies
# features differently and rebuilds the dependencies: 4 minutes each on 2 cores.
build_release() {
    cargo build --workspace --release --all-targets
}

# Puts rustup's cargo on PATH when it is installed but not there; dies without cargo.
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
        PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install the Rust toolchain (https://rustup.rs)"
}
