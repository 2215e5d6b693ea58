#!/usr/bin/env bash
# postgres.sh - run a private PostgreSQL cluster on 127.0.0.1 for tests and benchmarks.
#
# Usage (as root: the server runs as the system user 'postgres'; as another user it
# runs as that user):
#   scripts/postgres.sh start DIR PORT PASSWORD
#       Creates the cluster in DIR/data on first use (initdb; superuser 'postgres' with
#       PASSWORD, scram-sha-256 for every TCP connection, none by Unix socket), a
#       self-signed certificate for 'localhost' and 127.0.0.1 (DIR/tls/cert.pem: give
#       it to clients as their CA), starts the server on 127.0.0.1:PORT with TLS offered
#       (not required), waits until it accepts connections (20 s at most) and prints its
#       pid. Works again on an existing DIR (a stopped or killed server's data is kept).
#   scripts/postgres.sh stop DIR
#       Fast shutdown (pg_ctl -m fast; clients are disconnected). Idempotent.
#   scripts/postgres.sh kill DIR
#       KILL the server and its children at once (a crash, or a throwaway cluster whose
#       DIR is deleted next). Idempotent.
#   scripts/postgres.sh createdb DIR PORT NAME
#       Creates database NAME (owner postgres) in the running cluster.
#   scripts/postgres.sh destroy DIR
#       kill, then delete DIR.
#
# Environment:
#   HARNESS_OWNER_PID  optional pid (e.g. the test process): when that process is gone
#                      while the server runs, a watchdog destroys the cluster (kill and
#                      delete DIR): a test binary's shared cluster goes with it.
#
# Verified facts (Debian 12, postgresql 15):
# - The binaries are in /usr/lib/postgresql/15/bin, not on PATH (Debian's wrappers
#   pg_ctlcluster/pg_createcluster manage clusters under /etc and /var/lib, which a test
#   must not touch).
# - initdb and postgres refuse to run as root ("cannot be run as root"): as root they
#   run through runuser as 'postgres', which must own DIR. The data directory must be
#   0700 and the key file 0600, owned by the server's user, or the server refuses it.
# - The default socket directory /var/run/postgresql may not exist on a fresh machine
#   (apt-get with policy-rc.d 101 never starts the service that creates it):
#   unix_socket_directories points into DIR instead.
# - pg_ctl -w waits for the server to accept connections; `pg_ctl status` tells whether
#   it runs. postmaster.pid's first line is the server's pid.
# - rustls refuses a certificate marked CA:TRUE as the server's own (CaUsedAsEndEntity),
#   which `openssl req -x509` makes by default: lib.sh's make_server_cert sets CA:FALSE.
# - A killed server (kill -9) leaves postmaster.pid behind; the next start sees the pid
#   is gone and recovers from its WAL (nothing committed is lost).
# Everything is on 127.0.0.1; nothing here talks to another host.
set -euo pipefail

PROG=postgres.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The newest installed PostgreSQL's binaries.
bin_dir() {
    local dir
    dir=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
    [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] \
        || die "PostgreSQL not found in /usr/lib/postgresql; run scripts/install-deps.sh as root"
    printf '%s\n' "$dir"
}

# as_owner CMD... - run CMD as the cluster's user (postgres when we are root).
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cmd_start() {
    [ $# -eq 3 ] || usage
    local dir port password bin data
    dir=$(abs_dir "$1")
    port=$2
    password=$3
    check_port PORT "$port"
    check_word PASSWORD "$password"
    check_owner_pid
    bin=$(bin_dir)
    data=$dir/data
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || die "no system user 'postgres' (is postgresql installed?)"
        chown postgres: "$dir"
        chmod 0700 "$dir"
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        printf '%s\n' "$password" >"$dir/pwfile"
        [ "$(id -u)" -ne 0 ] || chown postgres: "$dir/pwfile"
        as_owner "$bin/initdb" -D "$data" -U postgres --pwfile="$dir/pwfile" \
            --auth-host=scram-sha-256 --auth-local=peer -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        rm -f "$dir/pwfile"
    fi
    # A certificate for TLS tests (clients trust DIR/tls/cert.pem as their CA); the server
    # refuses a key file another user owns or others can read.
    make_server_cert "$dir/tls"
    [ "$(id -u)" -ne 0 ] || chown -R postgres: "$dir/tls"
    cat >"$data/postgresql.auto.conf" <<EOF
# Written by scripts/postgres.sh (rewritten on start).
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
ssl = on
ssl_cert_file = '$dir/tls/cert.pem'
ssl_key_file = '$dir/tls/key.pem'
max_connections = 200
fsync = on
logging_collector = off
EOF
    [ "$(id -u)" -ne 0 ] || chown postgres: "$data/postgresql.auto.conf"
    if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        die "a server already runs on $data"
    fi
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 20 start >/dev/null \
        || { tail -n 20 "$dir/server.log" >&2; die "the server did not start"; }
    port_open "$port" || die "the server runs but 127.0.0.1:$port does not accept connections"
    local pid
    pid=$(head -n 1 "$data/postmaster.pid")
    start_watchdog "$dir" "$pid" bash "${BASH_SOURCE[0]}" destroy "$dir"
    printf '%s\n' "$pid"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local dir bin
    dir=$(abs_dir "$1")
    stop_watchdog "$dir"
    [ -f "$dir/data/postmaster.pid" ] || return 0
    bin=$(bin_dir)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

cmd_kill() {
    [ $# -eq 1 ] || usage
    local dir pid
    dir=$(abs_dir "$1")
    stop_watchdog "$dir"
    [ -f "$dir/data/postmaster.pid" ] || return 0
    pid=$(head -n 1 "$dir/data/postmaster.pid")
    if pid_alive "$pid"; then
        # The postmaster's children (backends, checkpointer, ...) go with it.
        pkill -KILL -P "$pid" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

cmd_destroy() {
    [ $# -eq 1 ] || usage
    local dir
    dir=$(abs_dir "$1")
    cmd_kill "$dir"
    case "$dir" in / | /usr* | /etc* | /var/lib/postgresql*) die "refusing to delete $dir" ;; esac
    rm -rf -- "$dir"
}

cmd_createdb() {
    [ $# -eq 3 ] || usage
    local dir port name bin
    dir=$(abs_dir "$1")
    port=$2
    name=$3
    check_port PORT "$port"
    case "$name" in '' | *[!a-z0-9_]*) die "NAME must be lower-case letters, digits and _: '$name'" ;; esac
    bin=$(bin_dir)
    as_owner "$bin/../bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE $name" >/dev/null
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    kill) cmd_kill "$@" ;;
    createdb) cmd_createdb "$@" ;;
    destroy) cmd_destroy "$@" ;;
    *) usage ;;
esac
