#!/usr/bin/env bash
# prosody.sh - run a private Prosody instance on 127.0.0.1 for tests and the demo.
#
# Usage:
#   scripts/prosody.sh start DIR C2S_PORT COMPONENT_PORT COMPONENT_JID SECRET [JID SECRET]...
#       Creates DIR (config, self-signed certs, data, logs all inside it), starts
#       Prosody in the background, waits until both ports accept connections
#       (20 s at most) and prints its pid on stdout. Works again on an existing
#       DIR (the config is rewritten, users and other data are kept).
#       Hosts: "localhost" and "other.localhost"; the component COMPONENT_JID
#       authenticates with SECRET (XEP-0114); each further JID SECRET pair declares
#       one more component on the same port (e.g. biboumi beside the gateway, for
#       the benchmarks). c2s allows SASL PLAIN without TLS.
#   scripts/prosody.sh stop DIR
#       Stops the instance of DIR (TERM, KILL after 5 s). Idempotent.
#   scripts/prosody.sh adduser DIR USER HOST PASSWORD [USER HOST PASSWORD]...
#       Registers each USER@HOST (or resets the password if USER exists); works
#       while the server runs.
#
# Several instances may run at once with different DIRs and ports. Runs as
# root (run_as_root is set) or as any user that owns DIR.
# Environment:
#   PROSODY_LOG_LEVEL  debug|info|warn|error (default info): level of DIR/prosody.log
#   PROSODY_HTTP_PORT  optional port: adds the XEP-0363 HTTP upload service
#                      upload.localhost (mod_http_file_share, files in DIR/data),
#                      served on http://127.0.0.1:PORT/ and open to the users of
#                      localhost and to the components (the gateway uploads mail
#                      attachments there). Listed in the disco#items of localhost.
#   PROSODY_PRIVILEGE  1: the first component (the gateway) is a privileged entity
#                      (XEP-0356, mod_privilege from Debian's prosody-modules) with
#                      roster "both" and message "outgoing" on localhost: it may
#                      put contacts into the users' rosters.
#   HARNESS_OWNER_PID  optional pid (e.g. the test process): when that process
#                      exits while the server runs, the server is stopped.
# Files in DIR: prosody.cfg.lua, prosody.pid, prosody.log, prosody.err,
# prosody.out (console), certs/, data/.
set -euo pipefail

PROG=prosody.sh
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_TIMEOUT=20 # seconds
STOP_TIMEOUT=5   # seconds

usage() {
    cat >&2 <<'EOF'
usage: prosody.sh start DIR C2S_PORT COMPONENT_PORT COMPONENT_JID SECRET [JID SECRET]...
       prosody.sh stop DIR
       prosody.sh adduser DIR USER HOST PASSWORD [USER HOST PASSWORD]...
EOF
    exit 2
}

# The pid of DIR's running Prosody, or nothing.
running_pid() {
    pidfile_pid "$1/prosody.pid" "$1/prosody.cfg.lua"
}

make_certs() {
    local certs=$1/certs
    [ -s "$certs/localhost.crt" ] && [ -s "$certs/other.localhost.crt" ] && return 0
    need_cmd openssl
    mkdir -p "$certs"
    # One key and certificate for both hosts, copied under each host name
    # (Prosody looks for HOST.crt/HOST.key).
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
        -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,DNS:other.localhost,DNS:*.localhost,IP:127.0.0.1" \
        -keyout "$certs/localhost.key" -out "$certs/localhost.crt" >/dev/null 2>&1 \
        || die "openssl could not create a self-signed certificate in $certs"
    cp "$certs/localhost.key" "$certs/other.localhost.key"
    cp "$certs/localhost.crt" "$certs/other.localhost.crt"
    chmod 600 "$certs"/*.key
}

write_config() {
    local dir=$1 c2s=$2 comp=$3 level=${PROSODY_LOG_LEVEL:-info} http=${PROSODY_HTTP_PORT:-} access=""
    local privilege=${PROSODY_PRIVILEGE:-} privileged_modules="" privileged_host="" privileged_component=""
    shift 3 # the rest: JID SECRET pairs
    case "$level" in
        debug | info | warn | error) ;;
        *) die "PROSODY_LOG_LEVEL must be debug, info, warn or error, got '$level'" ;;
    esac
    case "$privilege" in
        "" | 0) ;;
        1)
            [ -f /usr/lib/prosody/modules/mod_privilege/mod_privilege.lua ] \
                || die "mod_privilege not found (package prosody-modules); run scripts/install-deps.sh as root"
            privileged_modules=' "privilege";'
            privileged_host="    privileged_entities = { [\"$1\"] = { roster = \"both\"; message = \"outgoing\"; } }"
            privileged_component='    modules_enabled = { "privilege" }'
            ;;
        *) die "PROSODY_PRIVILEGE must be 0 or 1, got '$privilege'" ;;
    esac
    cat >"$dir/prosody.cfg.lua.tmp" <<EOF
-- Written by scripts/prosody.sh: a private test instance. Do not edit (rewritten on start).
run_as_root = true
daemonize = false
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
certificates = "$dir/certs"
log = {
    $level = "$dir/prosody.log";
    error = "$dir/prosody.err";
}

-- No "limits" (it would throttle clients to 10 kB/s), no in-band registration, no s2s.
modules_enabled = {
    "roster"; "saslauth"; "tls"; "disco"; "ping"; "posix";$privileged_modules
}
modules_disabled = { "s2s" }

c2s_ports = { $c2s }
c2s_interfaces = { "127.0.0.1" }
component_ports = { $comp }
component_interfaces = { "127.0.0.1" }
s2s_ports = { }
legacy_ssl_ports = { }
http_ports = { $http }
http_interfaces = { "127.0.0.1" }
https_ports = { }

authentication = "internal_hashed"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
network_settings = { nagle = false; tcp_backlog = 1024 }

VirtualHost "localhost"
$privileged_host
VirtualHost "other.localhost"
EOF
    while [ $# -ge 2 ]; do
        printf '\nComponent "%s"\n    component_secret = "%s"\n' "$1" "$2" >>"$dir/prosody.cfg.lua.tmp"
        if [ -n "$privileged_component" ]; then
            printf '%s\n' "$privileged_component" >>"$dir/prosody.cfg.lua.tmp"
            privileged_component=""
        fi
        access="$access \"$1\";"
        shift 2
    done
    if [ -n "$http" ]; then
        cat >>"$dir/prosody.cfg.lua.tmp" <<EOF

-- XEP-0363: the upload service of localhost, on 127.0.0.1 only.
Component "upload.localhost" "http_file_share"
    http_host = "127.0.0.1"
    http_external_url = "http://127.0.0.1:$http/"
    http_file_share_size_limit = 16 * 1024 * 1024
    http_file_share_access = { "localhost"; $access }
EOF
    fi
    mv -f "$dir/prosody.cfg.lua.tmp" "$dir/prosody.cfg.lua"
}

# Whether PID listens on every one of the PORTS and each accepts connections.
all_listening() {
    local pid=$1 port
    shift
    for port in "$@"; do
        pid_listens "$pid" "$port" && port_open "$port" || return 1
    done
}

cmd_start() {
    [ $# -ge 5 ] && [ $(($# % 2)) -eq 1 ] || usage
    local dir c2s=$2 comp=$3 pid pidfile_pid t0 deadline port ports http=${PROSODY_HTTP_PORT:-} i
    dir=$(abs_dir "$1")
    shift 3 # the rest: JID SECRET pairs
    check_port C2S_PORT "$c2s"
    check_port COMPONENT_PORT "$comp"
    [ "$c2s" != "$comp" ] || die "C2S_PORT and COMPONENT_PORT must differ"
    ports="$c2s $comp"
    if [ -n "$http" ]; then
        check_port PROSODY_HTTP_PORT "$http"
        ports="$ports $http"
    fi
    for ((i = 1; i <= $#; i += 2)); do
        check_word COMPONENT_JID "${!i}"
        i=$((i + 1))
        check_word SECRET "${!i}"
        i=$((i - 1))
    done
    check_word DIR "$dir"
    check_owner_pid
    need_cmd prosody "package prosody"

    mkdir -p "$dir"
    chmod 0755 "$dir"
    mkdir -p "$dir/data"

    pid=$(running_pid "$dir")
    [ -z "$pid" ] || die "Prosody of $dir is already running (pid $pid); run: $0 stop $dir"
    for port in $ports; do
        ! port_open "$port" || die "port $port on 127.0.0.1 is already in use (another server or test?)"
    done

    make_certs "$dir"
    write_config "$dir" "$c2s" "$comp" "$@"
    rm -f "$dir/prosody.pid"
    # Fresh logs for this run, so a failure shows this run's errors.
    : >"$dir/prosody.log"
    : >"$dir/prosody.err"

    t0=$(now_ms)
    # setsid: own session, so the caller's signals (Ctrl-C) and terminal don't reach it.
    # All fds are redirected so a caller capturing our output does not wait on Prosody.
    setsid prosody -F --config "$dir/prosody.cfg.lua" </dev/null >"$dir/prosody.out" 2>&1 &
    pid=$! # setsid does not fork here (a job of a non-interactive shell): this is Prosody
    # Interrupted while waiting: don't leave a half-started server behind.
    trap 'kill_wait "$pid" 2 >/dev/null 2>&1 || true; exit 130' INT TERM HUP

    deadline=$((t0 + START_TIMEOUT * 1000))
    while :; do
        if ! pid_alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            show_logs "$dir/prosody.out" "$dir/prosody.err" "$dir/prosody.log"
            die "Prosody exited during start-up (see $dir/prosody.log)"
        fi
        if [ -s "$dir/prosody.pid" ] && all_listening "$pid" $ports; then
            break
        fi
        if grep -q 'Failed to open server port' "$dir/prosody.err" 2>/dev/null; then
            # Taken by someone else between our check and Prosody's bind.
            show_logs "$dir/prosody.err"
            kill_wait "$pid" "$STOP_TIMEOUT" || true
            die "Prosody could not listen on one of the ports $ports (in use by another program?)"
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            show_logs "$dir/prosody.out" "$dir/prosody.err" "$dir/prosody.log"
            kill_wait "$pid" "$STOP_TIMEOUT" || true
            die "Prosody did not accept connections on ports $ports within ${START_TIMEOUT}s"
        fi
        sleep 0.05
    done

    trap - INT TERM HUP
    pidfile_pid=$(tr -dc '0-9' <"$dir/prosody.pid" 2>/dev/null || true)
    [ "$pidfile_pid" = "$pid" ] || log "warning: pidfile says $pidfile_pid, started $pid"
    start_watchdog "$dir" "$pid" bash "$SELF" stop "$dir"
    log "Prosody ready in $(($(now_ms) - t0)) ms: c2s 127.0.0.1:$c2s, components on 127.0.0.1:$comp${http:+, HTTP upload on 127.0.0.1:$http}, dir $dir"
    printf '%s\n' "$pid"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local dir
    dir=$(abs_dir "$1")
    stop_server "$dir" "$(running_pid "$dir")" "$dir/prosody.pid" Prosody
}

cmd_adduser() {
    [ $# -ge 4 ] && [ $((($# - 1) % 3)) -eq 0 ] || usage
    local dir user host password out
    dir=$(abs_dir "$1")
    shift
    [ -f "$dir/prosody.cfg.lua" ] || die "no $dir/prosody.cfg.lua: run '$0 start $dir ...' first"
    need_cmd prosodyctl "package prosody"
    while [ $# -ge 3 ]; do
        user=$1 host=$2 password=$3
        shift 3
        check_word USER "$user"
        check_word HOST "$host"
        check_word PASSWORD "$password"
        # prosodyctl register creates the user or, if it exists, sets its password.
        if ! out=$(prosodyctl --config "$dir/prosody.cfg.lua" register "$user" "$host" "$password" </dev/null 2>&1); then
            printf '%s\n' "$out" >&2
            die "could not register $user@$host"
        fi
        log "user $user@$host registered"
    done
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    adduser) cmd_adduser "$@" ;;
    -h | --help | help) usage ;;
    *) log "unknown subcommand '$cmd'"; usage ;;
esac
