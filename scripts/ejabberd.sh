#!/usr/bin/env bash
# ejabberd.sh - run a private ejabberd instance on 127.0.0.1 for tests.
#
# Usage (as root; ejabberd itself runs as the system user "ejabberd"):
#   scripts/ejabberd.sh start DIR C2S_PORT COMPONENT_PORT COMPONENT_JID SECRET
#       Creates DIR (config, certs, Mnesia spool, logs, HOME with the Erlang
#       cookie, all inside it), starts ejabberd in the background, waits until
#       both ports accept connections and `ejabberdctl status` answers (60 s at
#       most) and prints the pid of its Erlang VM (beam.smp) on stdout. Works again
#       on an existing DIR (config rewritten, users kept).
#       Hosts: "localhost" and "other.localhost"; the component COMPONENT_JID
#       authenticates with SECRET (XEP-0114, check_from on). c2s offers STARTTLS
#       but does not require it; SASL PLAIN works without TLS.
#   scripts/ejabberd.sh stop DIR
#       `ejabberdctl stop`, then TERM/KILL whatever of this instance is left.
#       Idempotent.
#   scripts/ejabberd.sh kill DIR
#       Stops the instance at once (KILL, no clean shutdown: about 3 s faster
#       than stop), for a throwaway instance whose DIR is deleted next, such as
#       a test's. Idempotent.
#   scripts/ejabberd.sh adduser DIR USER HOST PASSWORD [USER HOST PASSWORD]...
#       Registers each USER@HOST (or resets the password if USER exists), all at
#       once (each ejabberdctl call starts an Erlang VM: about 0.6 s). Needs the
#       instance to be running.
#   scripts/ejabberd.sh ctl DIR ARGS...
#       Runs `ejabberdctl ARGS...` against DIR's instance (as the ejabberd user,
#       with its HOME and config; killed after 120 s) and exits with its status.
#
# Instances are independent: the Erlang node name is derived from DIR
# (gw<hash>@localhost) and epmd is not used (ERL_DIST_PORT: a free port in
# 20000-29999 derived from COMPONENT_PORT, saved in DIR/etc/ejabberdctl.cfg).
# DIR and all its parents must be searchable by the "ejabberd" user (parents
# under /tmp or $TMPDIR owned by the caller get o+x automatically).
# Environment:
#   EJABBERD_LOG_LEVEL  none|emergency|alert|critical|error|warning|notice|info|debug
#                       (default info)
#   HARNESS_OWNER_PID   optional pid (e.g. the test process): when that process
#                       exits while the server runs, the server is stopped.
#   EJABBERD_EPMD_PORT  (start; set by scripts/ejabberd-cluster.sh) the port of an
#                       epmd that the caller runs: the node registers there instead
#                       of using ERL_DIST_PORT, so that nodes can find each other.
#   EJABBERD_PRIVILEGE  (start) 1: the component is a privileged entity (XEP-0356,
#                       mod_privilege) with roster "both" and message "outgoing":
#                       it may put contacts into the users' rosters.
#   EJABBERD_EXTRA_CONFIG  (start) YAML appended to ejabberd.yml as top-level
#                       options, e.g. a domain_balancing section.
# A file DIR/node-name, if present before the first start, names the Erlang node
# (scripts/ejabberd-cluster.sh writes it).
# Files in DIR: etc/ (ejabberd.yml, ejabberdctl.cfg, cert.pem), spool/ (Mnesia),
# log/ (ejabberd.log, error.log), run/ (ejabberd.pid), home/ (.erlang.cookie),
# ejabberd.out (console).
set -euo pipefail

PROG=ejabberd.sh
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_TIMEOUT=60 # seconds
STOP_TIMEOUT=10  # seconds for a clean stop before TERM/KILL
ADDUSER_PARALLEL=4 # ejabberdctl calls at once in adduser
EJ_USER=ejabberd
EJABBERDCTL=/usr/sbin/ejabberdctl

usage() {
    cat >&2 <<'EOF'
usage: ejabberd.sh start DIR C2S_PORT COMPONENT_PORT COMPONENT_JID SECRET
       ejabberd.sh stop DIR
       ejabberd.sh kill DIR
       ejabberd.sh adduser DIR USER HOST PASSWORD [USER HOST PASSWORD]...
       ejabberd.sh ctl DIR ARGS...
EOF
    exit 2
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (ejabberd is started as user '$EJ_USER' with runuser)"
    [ -x "$EJABBERDCTL" ] || die "$EJABBERDCTL not found; run scripts/install-deps.sh as root (package ejabberd)"
    id "$EJ_USER" >/dev/null 2>&1 || die "system user '$EJ_USER' missing; is the ejabberd package installed?"
}

# node_name DIR - the Erlang node of DIR's instance (fixed per DIR: it is baked
# into the Mnesia spool): the name in DIR/node-name if that file exists (written
# by scripts/ejabberd-cluster.sh before the first start), else gw<hash>@localhost.
node_name() {
    if [ -s "$1/node-name" ]; then
        head -n 1 "$1/node-name"
    else
        printf 'gw%s@localhost\n' "$(printf '%s' "$1" | sha1sum | cut -c1-12)"
    fi
}

# ctl SECONDS DIR ARGS... - run ejabberdctl for DIR's instance as the ejabberd
# user, with a clean environment and the instance's HOME (the Erlang cookie is
# there: without the same HOME every call fails with "nodedown"), killed after
# SECONDS.
ctl() {
    local secs=$1 dir=$2
    shift 2
    timeout "$secs" runuser -u "$EJ_USER" -- env -i \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$dir/home" LANG=C.UTF-8 \
        "$EJABBERDCTL" --config-dir "$dir/etc" --spool "$dir/spool" --logs "$dir/log" "$@"
}

# The pid of DIR's running Erlang VM, or nothing.
running_pid() {
    local dir=$1 pid
    [ -s "$dir/run/ejabberd.pid" ] || return 0
    pid=$(tr -dc '0-9' <"$dir/run/ejabberd.pid" 2>/dev/null || true)
    if pid_alive "$pid" && pid_cmdline_has "$pid" "$(node_name "$dir")"; then
        printf '%s\n' "$pid"
    fi
}

make_certs() {
    local dir=$1 pem=$1/etc/cert.pem tmp
    [ -s "$pem" ] && return 0
    need_cmd openssl
    tmp=$(mktemp -d)
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
        -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,DNS:other.localhost,DNS:*.localhost,IP:127.0.0.1" \
        -keyout "$tmp/key.pem" -out "$tmp/crt.pem" >/dev/null 2>&1 \
        || { rm -rf "$tmp"; die "openssl could not create a self-signed certificate"; }
    cat "$tmp/crt.pem" "$tmp/key.pem" >"$pem"
    rm -rf "$tmp"
    chown "$EJ_USER:" "$pem"
    chmod 600 "$pem"
}

write_config() {
    local dir=$1 c2s=$2 comp=$3 jid=$4 secret=$5 dist_port=$6 node level=${EJABBERD_LOG_LEVEL:-info} dist
    local no_epmd=''
    node=$(node_name "$dir")
    case "$level" in
        none | emergency | alert | critical | error | warning | notice | info | debug) ;;
        *) die "EJABBERD_LOG_LEVEL must be one of none emergency alert critical error warning notice info debug, got '$level'" ;;
    esac

    if [ -n "${EJABBERD_EPMD_PORT:-}" ]; then
        # A cluster's node (scripts/ejabberd-cluster.sh): with ERL_DIST_PORT a node
        # expects every other node on that same port, so two nodes on one machine
        # cannot meet; they register with the cluster's own epmd instead, which
        # the cluster script runs (an erl must not start one of its own).
        dist="# Nodes find each other through the cluster's private epmd on this port.
ERL_EPMD_PORT=$EJABBERD_EPMD_PORT
export ERL_EPMD_PORT"
        no_epmd=' -start_epmd false'
    else
        dist="# The node listens on this port and ejabberdctl connects to it directly: no epmd.
ERL_DIST_PORT=$dist_port"
    fi
    cat >"$dir/etc/ejabberdctl.cfg" <<EOF
# Written by scripts/ejabberd.sh (rewritten on start). Sourced by ejabberdctl.
ERLANG_NODE=$node
EJABBERD_CONFIG_PATH=$dir/etc/ejabberd.yml
EJABBERD_PID_PATH=$dir/run/ejabberd.pid
ERL_EPMD_ADDRESS=127.0.0.1
$dist
# Distribution on 127.0.0.1 only. Given here rather than as INET_DIST_INTERFACE,
# which makes every ejabberdctl call run an extra erl (about 0.15 s) to parse it.
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 -kernel inet_dist_use_interface {127,0,0,1}$no_epmd"
CONTRIB_MODULES_PATH=$dir/home/.ejabberd-modules
CONTRIB_MODULES_CONF_DIR=$dir/etc/modules.d
EJABBERD_BYPASS_WARNINGS=true
EOF

    local privilege_acl="" privilege_module=""
    case "${EJABBERD_PRIVILEGE:-}" in
        "" | 0) ;;
        1)
            # mod_privilege takes access rules (an ACL name alone matches nothing).
            privilege_acl="
acl:
  gateway:
    server: \"$jid\"
access_rules:
  gateway_privilege:
    allow: gateway
"
            privilege_module="  mod_privilege:
    roster:
      both: gateway_privilege
    message:
      outgoing: gateway_privilege"
            ;;
        *) die "EJABBERD_PRIVILEGE must be 0 or 1, got '$EJABBERD_PRIVILEGE'" ;;
    esac
    cat >"$dir/etc/ejabberd.yml" <<EOF
# Written by scripts/ejabberd.sh: a private test instance (rewritten on start).
hosts:
  - localhost
  - other.localhost
loglevel: $level
hide_sensitive_log_data: true
certfiles:
  - "$dir/etc/cert.pem"
acme:
  auto: false

listen:
  -
    port: $c2s
    ip: "127.0.0.1"
    module: ejabberd_c2s
    backlog: 1024
    starttls: true
    starttls_required: false
    max_stanza_size: 1048576
  -
    port: $comp
    ip: "127.0.0.1"
    module: ejabberd_service
    backlog: 1024
    access: all
    check_from: true
    max_stanza_size: 1048576
    hosts:
      "$jid":
        password: "$secret"

auth_method: internal
s2s_access: none
${privilege_acl}
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"

modules:
  mod_admin_extra: {} # ejabberdctl change_password (adduser of an existing user)
  mod_disco: {}
  mod_roster: {}
  mod_ping: {}
  mod_offline: {}
${privilege_module}
${EJABBERD_EXTRA_CONFIG:+
# From EJABBERD_EXTRA_CONFIG:
$EJABBERD_EXTRA_CONFIG}
EOF
    cp -f /etc/ejabberd/inetrc "$dir/etc/inetrc" 2>/dev/null \
        || printf '{lookup,["file","native"]}.\n{host,{127,0,0,1}, ["localhost"]}.\n' >"$dir/etc/inetrc"
    chown -R "$EJ_USER:" "$dir/etc"
    chmod 600 "$dir/etc/ejabberd.yml" # holds the component secret
}

# kill_session DIR [now] - TERM, then KILL (at once with "now"), what is left
# in the session of the launcher we started (runuser, ejabberdctl, erl, beam
# and its helpers).
kill_session() {
    local dir=$1 now=${2:-} sid pids i
    [ -s "$dir/run/launcher.pid" ] || return 0
    sid=$(tr -dc '0-9' <"$dir/run/launcher.pid")
    [ -n "$sid" ] || return 0
    pids=$(session_pids "$sid")
    [ -n "$pids" ] || return 0
    if [ "$now" != now ]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            pids=$(session_pids "$sid")
            [ -n "$pids" ] || return 0
            sleep 0.1
        done
        log "processes ${pids//$'\n'/ } of session $sid ignored TERM; sending KILL"
    fi
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
    pids=$(session_pids "$sid")
    [ -z "$pids" ] || log "warning: processes left in session $sid: ${pids//$'\n'/ }"
}



fail_start() {
    local dir=$1
    shift
    # ejabberd.out has the console output (log lines and early Erlang errors).
    if [ -s "$dir/ejabberd.out" ]; then
        show_logs "$dir/ejabberd.out"
    else
        show_logs "$dir/log/ejabberd.log"
    fi
    do_stop "$dir" >/dev/null 2>&1 || true
    die "$*"
}

cmd_start() {
    [ $# -eq 5 ] || usage
    local dir c2s=$2 comp=$3 jid=$4 secret=$5 pid launcher dist_port t0 deadline port p
    dir=$(abs_dir "$1")
    check_port C2S_PORT "$c2s"
    check_port COMPONENT_PORT "$comp"
    [ "$c2s" != "$comp" ] || die "C2S_PORT and COMPONENT_PORT must differ"
    check_word COMPONENT_JID "$jid"
    check_word SECRET "$secret"
    check_word DIR "$dir"
    check_owner_pid
    case "$jid" in localhost | other.localhost) die "COMPONENT_JID must not be one of the server's hosts ($jid)" ;; esac
    need_root

    mkdir -p "$dir"
    chmod 0755 "$dir"
    mkdir -p "$dir/etc" "$dir/spool" "$dir/log" "$dir/run" "$dir/home"
    chown "$EJ_USER:" "$dir/spool" "$dir/log" "$dir/run" "$dir/home"
    chmod 0700 "$dir/spool" "$dir/home"
    ensure_reachable "$dir" "$EJ_USER" ejabberd

    pid=$(running_pid "$dir")
    [ -z "$pid" ] || die "ejabberd of $dir is already running (pid $pid); run: $0 stop $dir"
    do_stop "$dir" >/dev/null 2>&1 || true # leftovers of a crashed run, if any
    for port in "$c2s" "$comp"; do
        ! port_open "$port" || die "port $port on 127.0.0.1 is already in use (another server or test?)"
    done

    if [ ! -s "$dir/home/.erlang.cookie" ]; then
        # Each instance has its own secret cookie (ejabberdctl needs the same HOME).
        head -c 32 /dev/urandom | sha256sum | cut -c1-40 | tr -d '\n' >"$dir/home/.erlang.cookie"
    fi
    chown "$EJ_USER:" "$dir/home/.erlang.cookie"
    chmod 400 "$dir/home/.erlang.cookie"

    dist_port=
    [ -n "${EJABBERD_EPMD_PORT:-}" ] || dist_port=$(pick_dist_port "$c2s" "$comp")
    make_certs "$dir"
    write_config "$dir" "$c2s" "$comp" "$jid" "$secret" "$dist_port"
    rm -f "$dir/run/ejabberd.pid"
    # Fresh logs for this run, so a failure shows this run's errors.
    rm -f "$dir/log/ejabberd.log" "$dir/log/error.log"

    t0=$(now_ms)
    # setsid: own session (Ctrl-C of the caller does not reach it; stop can find
    # every process of it). All fds redirected so callers capturing our output
    # are not kept waiting by the server.
    setsid runuser -u "$EJ_USER" -- env -i \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$dir/home" LANG=C.UTF-8 \
        "$EJABBERDCTL" --config-dir "$dir/etc" --spool "$dir/spool" --logs "$dir/log" foreground \
        </dev/null >"$dir/ejabberd.out" 2>&1 &
    launcher=$! # setsid does not fork here (a job of a non-interactive shell), so this is the session id
    printf '%s\n' "$launcher" >"$dir/run/launcher.pid"
    # Interrupted while waiting: don't leave a half-started server behind.
    trap 'do_stop "$dir" >/dev/null 2>&1 || true; exit 130' INT TERM HUP

    deadline=$((t0 + START_TIMEOUT * 1000))
    pid=
    while :; do
        if ! pid_alive "$launcher"; then
            wait "$launcher" 2>/dev/null || true
            # The Erlang distribution's port (picked free a moment ago) taken meanwhile
            # by another instance starting at the same time: said as such, so that a
            # caller that retries on a port in use tries other ports.
            if grep -q eaddrinuse "$dir/ejabberd.out" 2>/dev/null; then
                fail_start "$dir" "ejabberd could not listen: a port it needs (c2s $c2s, component $comp${dist_port:+, Erlang distribution $dist_port}) is in use"
            fi
            fail_start "$dir" "ejabberd exited during start-up (see $dir/log/ejabberd.log)"
        fi
        [ -n "$pid" ] || pid=$(running_pid "$dir")
        if [ -n "$pid" ] && pid_listens "$pid" "$c2s" && pid_listens "$pid" "$comp" \
            && port_open "$c2s" && port_open "$comp"; then
            break
        fi
        if grep -q -E 'Failed to (open|bind)|eaddrinuse' "$dir/log/ejabberd.log" 2>/dev/null; then
            fail_start "$dir" "ejabberd could not listen on port $c2s or $comp (in use by another program?)"
        fi
        [ "$(now_ms)" -lt "$deadline" ] \
            || fail_start "$dir" "ejabberd did not accept connections on ports $c2s and $comp within ${START_TIMEOUT}s"
        sleep 0.1
    done
    log "ejabberd listening after $(($(now_ms) - t0)) ms; waiting for 'ejabberdctl status'"
    until ctl 10 "$dir" status >/dev/null 2>&1; do
        pid_alive "$pid" || fail_start "$dir" "ejabberd exited during start-up (see $dir/log/ejabberd.log)"
        [ "$(now_ms)" -lt "$deadline" ] \
            || fail_start "$dir" "'ejabberdctl status' did not answer within ${START_TIMEOUT}s"
        sleep 0.2
    done
    trap - INT TERM HUP
    start_watchdog "$dir" "$pid" bash "$SELF" stop "$dir"
    log "ejabberd ready in $(($(now_ms) - t0)) ms: c2s 127.0.0.1:$c2s, component $jid on 127.0.0.1:$comp, node $(node_name "$dir") (${dist_port:+dist port $dist_port}${EJABBERD_EPMD_PORT:+epmd port $EJABBERD_EPMD_PORT}), dir $dir"
    printf '%s\n' "$pid"
}

# do_stop DIR - stop DIR's instance, whatever state it is in.
do_stop() {
    local dir=$1 pid i
    stop_watchdog "$dir"
    pid=$(running_pid "$dir")
    if [ -n "$pid" ]; then
        ctl 20 "$dir" stop >/dev/null 2>&1 || log "'ejabberdctl stop' failed; killing pid $pid"
        for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        kill_wait "$pid" 5 || true
    fi
    kill_session "$dir"
    rm -f "$dir/run/ejabberd.pid" "$dir/run/launcher.pid"
    [ -z "$pid" ] || log "stopped ejabberd pid $pid ($dir)"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local dir
    dir=$(abs_dir "$1")
    [ -d "$dir" ] || return 0
    need_root
    do_stop "$dir"
}

cmd_kill() {
    [ $# -eq 1 ] || usage
    local dir pid
    dir=$(abs_dir "$1")
    [ -d "$dir" ] || return 0
    need_root
    stop_watchdog "$dir"
    pid=$(running_pid "$dir")
    kill_session "$dir" now
    [ -z "$pid" ] || kill_wait "$pid" 5 || true
    rm -f "$dir/run/ejabberd.pid" "$dir/run/launcher.pid"
    [ -z "$pid" ] || log "killed ejabberd pid $pid ($dir)"
}

cmd_adduser() {
    [ $# -ge 4 ] && [ $((($# - 1) % 3)) -eq 0 ] || usage
    local dir i failed=0
    local -a pids=()
    dir=$(abs_dir "$1")
    shift
    for ((i = 1; i <= $#; i++)); do check_word "USER/HOST/PASSWORD" "${!i}"; done
    need_root
    [ -n "$(running_pid "$dir")" ] || die "ejabberd of $dir is not running; run '$0 start $dir ...' first"
    # At most ADDUSER_PARALLEL at once: each is an Erlang VM of its own (ejabberdctl),
    # and thirty of them at once on a busy 2-core machine ran past their timeout.
    while [ $# -ge 3 ]; do
        add_user "$dir" "$1" "$2" "$3" &
        pids+=("$!")
        if [ "${#pids[@]}" -ge "$ADDUSER_PARALLEL" ]; then
            wait "${pids[0]}" || failed=1
            pids=("${pids[@]:1}")
        fi
        shift 3
    done
    for i in "${pids[@]}"; do
        wait "$i" || failed=1
    done
    [ "$failed" -eq 0 ] || die "could not register every user"
}

cmd_ctl() {
    [ $# -ge 2 ] || usage
    local dir
    dir=$(abs_dir "$1")
    shift
    need_root
    ctl 120 "$dir" "$@"
}

# add_user DIR USER HOST PASSWORD - registers one user, or sets its password.
add_user() {
    local dir=$1 user=$2 host=$3 password=$4 out
    if out=$(ctl 60 "$dir" register "$user" "$host" "$password" 2>&1); then
        log "user $user@$host registered"
    elif printf '%s' "$out" | grep -q -i 'already registered'; then
        out=$(ctl 60 "$dir" change_password "$user" "$host" "$password" 2>&1) \
            || { printf '%s\n' "$out" >&2; die "could not set the password of $user@$host"; }
        log "user $user@$host existed; password set"
    else
        printf '%s\n' "$out" >&2
        die "could not register $user@$host"
    fi
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    kill) cmd_kill "$@" ;;
    adduser) cmd_adduser "$@" ;;
    ctl) cmd_ctl "$@" ;;
    -h | --help | help) usage ;;
    *) log "unknown subcommand '$cmd'"; usage ;;
esac
