#!/usr/bin/env bash
# ejabberd-cluster.sh - run a private two-node ejabberd cluster on 127.0.0.1 for
# tests: two Erlang nodes on this machine, joined into one Mnesia cluster, both
# serving the XMPP hosts "localhost" and "other.localhost" and both accepting the
# XEP-0114 component COMPONENT_JID.
#
# Usage (as root; ejabberd itself runs as the system user "ejabberd"):
#   scripts/ejabberd-cluster.sh start DIR C2S1 COMP1 C2S2 COMP2 COMPONENT_JID SECRET
#       Starts (or starts again, on an existing DIR: users kept) node 1 in DIR/node1
#       with c2s on C2S1 and the component listener on COMP1, and node 2 in
#       DIR/node2 on C2S2 and COMP2, both through scripts/ejabberd.sh (same config,
#       certificate and checks), with one Erlang cookie and one private epmd; joins
#       node 2 to node 1 on the first start (`ejabberdctl join_cluster`); returns
#       when both accept connections and answer `ejabberdctl status` (120 s at
#       most). Prints the pids of the two Erlang VMs (node 1, node 2), one a line.
#   scripts/ejabberd-cluster.sh start-node DIR N
#       Starts node N (1 or 2) again with the settings of the last `start`, e.g.
#       after `kill DIR N`; it rejoins the cluster by itself (its Mnesia spool
#       names the other node). Prints its pid.
#   scripts/ejabberd-cluster.sh kill DIR [N]
#       With N: kill -9 node N's VM (and its launcher), nothing else: the crash
#       of one cluster node. Without: both nodes and the epmd at once (a throwaway
#       cluster whose DIR is deleted next). Idempotent.
#   scripts/ejabberd-cluster.sh stop DIR
#       Clean stop of both nodes, then the epmd. Idempotent.
#   scripts/ejabberd-cluster.sh adduser DIR USER HOST PASSWORD [USER HOST PASSWORD]...
#       Registers the users through a running node (accounts are in Mnesia, which
#       both nodes share: a user registered through one logs in on either).
#   scripts/ejabberd-cluster.sh ctl DIR N ARGS...
#       `ejabberdctl ARGS...` against node N (e.g. list_cluster, connected_users).
#
# Node names: ejabberd1@localhost and ejabberd2@localhost (in DIR/nodeN/node-name,
# baked into each node's spool). Files: DIR/cluster.conf (the start arguments),
# DIR/cookie, DIR/epmd.pid, DIR/epmd.out, DIR/joined (node 2 has joined),
# DIR/nodeN/ (one scripts/ejabberd.sh instance each: etc/, spool/, log/, ...).
# Environment:
#   EJABBERD_DOMAIN_BALANCING  (start) TYPE:N, e.g. bare_source:3 - writes
#       `domain_balancing: {COMPONENT_JID: {type: TYPE, component_number: N}}` into
#       both nodes' config (N >= 2); empty or unset: no domain_balancing (the
#       default routing). Kept in cluster.conf for start-node.
#   EJABBERD_LOG_LEVEL, HARNESS_OWNER_PID  as in scripts/ejabberd.sh (the watchdog
#       stops the whole cluster when the owner dies).
#
# Pitfalls (found on Debian 12, ejabberd 23.01, OTP 25):
# - ERL_DIST_PORT (what ejabberd.sh uses alone, to avoid epmd) cannot serve a
#   cluster on one machine: ejabberdctl turns it into `-erl_epmd_port PORT`, and a
#   node then expects every other node to listen on that same port. So the nodes
#   use epmd, but a private one: `epmd -port P -address 127.0.0.1` run by this
#   script (P a free port in 20000-29999), found by the nodes and by every
#   ejabberdctl call through ERL_EPMD_PORT in their ejabberdctl.cfg, and
#   `-start_epmd false` so that no erl starts a stray epmd on 4369 (a system-wide
#   epmd that outlives the test and that `epmd -kill` of another job would end).
#   Two clusters (parallel tests) thus never share an epmd, and may reuse the node
#   names.
# - Both nodes need the same cookie (DIR/cookie copied into each node's HOME): the
#   Erlang distribution refuses a node with another one.
# - The node name is in the Mnesia spool: never rename a node of an existing DIR.
# - join_cluster (on node 2, naming node 1) wipes node 2's own Mnesia data and
#   copies node 1's, then restarts ejabberd's applications on node 2: its
#   listeners close and reopen (about 3-4 s); wait for them again before use.
# - A killed node started again rejoins by itself, whichever it is: its schema
#   lists the other node, and Mnesia loads the tables from the running one. Start
#   the nodes of a cold cluster together (as `start` does): after node 1 then
#   node 2 were killed, node 1 started alone did not open its ports in 60 s (Mnesia
#   waits for node 2, which has the newer tables); it came up once node 2 started.
# - `ejabberdctl list_cluster` lists the running nodes only: a killed node drops
#   out of it and comes back when started again.
# - Routing to several component connections of one domain (measured by
#   tests/cluster.rs; bench/results/issue12-ejabberd-cluster.md has the figures):
#   routes live in Mnesia's `route` table, which both nodes share, so a component
#   attached to node 1 receives the stanzas of users connected to node 2 and its
#   answers reach them. Without domain_balancing a stanza goes to a component
#   connection on the sender's own node if there is one (a random one of them, per
#   stanza), else to one on the other node; a closed connection's route is removed
#   at once, so the rest take over. With `bare_source` + component_number N each
#   connection takes a free slot 1..N and every user is pinned, from either node,
#   to one slot by the hash of its bare JID; a closed connection leaves its slot
#   vacant: its users' stanzas are dropped silently (no error comes back) until a
#   new connection, to either node, takes that slot. A connection beyond N is
#   accepted but gets no slot and no stanza.
# - When a node is killed its component connections close at once (gateways see
#   EOF and retry that node's port: "Connection refused") and its c2s users lose
#   their streams; the surviving node drops the dead node's routes (no balancing)
#   or keeps their slots vacant (bare_source), and it sends no unavailable
#   presence for the dead node's users: a gateway keeps them "online".
# - A keepalive ping a component sends to its own domain is routed like any other
#   stanza: where several connections share the domain it may reach, and be
#   answered to, another one. An idle gateway whose ping went elsewhere reconnects
#   after 2 x keepalive_secs (the tests run theirs with keepalive_secs = 3600).
# - Logging in with the same full JID on node 2 right after closing that session's
#   TCP connection on node 1 was once refused with the stream error <conflict/>
#   "Replaced by new connection" (the old session still being closed): the tests
#   use another resource when a user moves to the other node.
set -euo pipefail

PROG=ejabberd-cluster.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
# shellcheck source=scripts/lib.sh
. "$HERE/lib.sh"

START_TIMEOUT=120 # seconds, for the whole start (two nodes and the join)
EJ_USER=ejabberd
EJABBERD_SH=$HERE/ejabberd.sh

usage() {
    cat >&2 <<'EOF'
usage: ejabberd-cluster.sh start DIR C2S1 COMP1 C2S2 COMP2 COMPONENT_JID SECRET
       ejabberd-cluster.sh start-node DIR N
       ejabberd-cluster.sh kill DIR [N]
       ejabberd-cluster.sh stop DIR
       ejabberd-cluster.sh adduser DIR USER HOST PASSWORD [USER HOST PASSWORD]...
       ejabberd-cluster.sh ctl DIR N ARGS...
EOF
    exit 2
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (ejabberd is started as user '$EJ_USER' with runuser)"
    need_cmd epmd "package erlang-base, a dependency of ejabberd"
}

check_node() {
    case "$1" in 1 | 2) ;; *) die "N must be 1 or 2, got '$1'" ;; esac
}

# ej ARGS... - scripts/ejabberd.sh with this cluster's epmd and config; no watchdog
# of its own (the cluster's watchdog stops both nodes).
ej() {
    HARNESS_OWNER_PID='' EJABBERD_EPMD_PORT=$EPMD_PORT EJABBERD_EXTRA_CONFIG=$(extra_config) \
        bash "$EJABBERD_SH" "$@"
}

# extra_config - the YAML of EJABBERD_DOMAIN_BALANCING (BALANCING), or nothing.
extra_config() {
    [ -n "${BALANCING:-}" ] || return 0
    printf 'domain_balancing:\n  "%s":\n    type: %s\n    component_number: %s\n' \
        "$JID" "${BALANCING%%:*}" "${BALANCING#*:}"
}

check_balancing() {
    [ -n "$1" ] || return 0
    case "$1" in
        random:* | source:* | destination:* | bare_source:* | bare_destination:*) ;;
        *) die "EJABBERD_DOMAIN_BALANCING must be TYPE:N (TYPE one of random source destination bare_source bare_destination), got '$1'" ;;
    esac
    case "${1#*:}" in
        '' | *[!0-9]* | 0 | 1 | 0*) die "EJABBERD_DOMAIN_BALANCING needs a component_number of 2 or more (ejabberd crashes every handshake without one), got '$1'" ;;
    esac
}

# load_conf DIR - the settings of DIR's last start (C2S1 COMP1 C2S2 COMP2 JID SECRET
# BALANCING EPMD_PORT).
load_conf() {
    [ -s "$1/cluster.conf" ] || die "no cluster in $1 (run '$PROG start $1 ...' first)"
    # shellcheck disable=SC1091 # written by save_conf
    . "$1/cluster.conf"
}

save_conf() {
    local dir=$1
    {
        printf '# Written by scripts/ejabberd-cluster.sh start; read by start-node.\n'
        printf 'C2S1=%s\nCOMP1=%s\nC2S2=%s\nCOMP2=%s\nJID=%s\nSECRET=%s\nBALANCING=%s\nEPMD_PORT=%s\n' \
            "$C2S1" "$COMP1" "$C2S2" "$COMP2" "$JID" "$SECRET" "${BALANCING:-}" "$EPMD_PORT"
    } >"$dir/cluster.conf"
    chmod 600 "$dir/cluster.conf" # holds the component secret
}

# epmd_pid DIR - the pid of DIR's epmd if it runs, else nothing.
epmd_pid() {
    pidfile_pid "$1/epmd.pid" "-port $EPMD_PORT"
}

start_epmd() {
    local dir=$1 pid i
    pid=$(epmd_pid "$dir")
    [ -z "$pid" ] || return 0
    ! port_bound "$EPMD_PORT" || EPMD_PORT=$(pick_dist_port "$COMP1" "$COMP2")
    # setsid: its own session (no job-control signal reaches it); `$!` is epmd itself.
    setsid epmd -port "$EPMD_PORT" -address 127.0.0.1 </dev/null >"$dir/epmd.out" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$dir/epmd.pid"
    for ((i = 0; i < 100; i++)); do
        pid_alive "$pid" || { show_logs "$dir/epmd.out"; die "epmd on port $EPMD_PORT exited at once (port in use by another program?)"; }
        ERL_EPMD_PORT=$EPMD_PORT epmd -names >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    die "epmd on port $EPMD_PORT does not answer"
}

stop_epmd() {
    local dir=$1 pid
    pid=$(pidfile_pid "$dir/epmd.pid" "epmd")
    [ -z "$pid" ] || kill_wait "$pid" 2 || true
    rm -f "$dir/epmd.pid"
}

node_dir() { printf '%s/node%s\n' "$1" "$2"; }

# prepare_node DIR N - node N's folder with its name and the cluster's cookie.
prepare_node() {
    local nd
    nd=$(node_dir "$1" "$2")
    mkdir -p "$nd/home"
    chmod 0755 "$nd"
    [ -s "$nd/node-name" ] || printf 'ejabberd%s@localhost\n' "$2" >"$nd/node-name"
    if ! cmp -s "$1/cookie" "$nd/home/.erlang.cookie" 2>/dev/null; then
        rm -f "$nd/home/.erlang.cookie"
        cp "$1/cookie" "$nd/home/.erlang.cookie"
    fi
    chown "$EJ_USER:" "$nd/home" "$nd/home/.erlang.cookie"
    chmod 0700 "$nd/home"
    chmod 400 "$nd/home/.erlang.cookie"
}

# start_node DIR N - starts node N through ejabberd.sh; prints its pid.
start_node() {
    local dir=$1 n=$2 c2s comp
    if [ "$n" = 1 ]; then c2s=$C2S1 comp=$COMP1; else c2s=$C2S2 comp=$COMP2; fi
    prepare_node "$dir" "$n"
    ej start "$(node_dir "$dir" "$n")" "$c2s" "$comp" "$JID" "$SECRET"
}

# wait_node DIR N DEADLINE_MS - until node N accepts c2s and component connections
# and answers `status` (after join_cluster restarted its applications).
wait_node() {
    local dir=$1 n=$2 deadline=$3 c2s comp
    if [ "$n" = 1 ]; then c2s=$C2S1 comp=$COMP1; else c2s=$C2S2 comp=$COMP2; fi
    until port_open "$c2s" && port_open "$comp" \
        && ej ctl "$(node_dir "$dir" "$n")" status >/dev/null 2>&1; do
        [ "$(now_ms)" -lt "$deadline" ] || die "node $n did not come back after join_cluster (see $(node_dir "$dir" "$n")/log/ejabberd.log)"
        sleep 0.2
    done
}

fail_start() {
    do_kill "$1" >/dev/null 2>&1 || true
    die "$2"
}

cmd_start() {
    [ $# -eq 7 ] || usage
    local dir t0 out1 out2 pid1 pid2 ok1=0 ok2=0
    dir=$(abs_dir "$1")
    C2S1=$2 COMP1=$3 C2S2=$4 COMP2=$5 JID=$6 SECRET=$7
    BALANCING=${EJABBERD_DOMAIN_BALANCING:-}
    for p in C2S1 COMP1 C2S2 COMP2; do check_port "$p" "${!p}"; done
    [ "$(printf '%s\n' "$C2S1" "$COMP1" "$C2S2" "$COMP2" | sort -u | wc -l)" -eq 4 ] || die "the four ports must differ"
    check_word COMPONENT_JID "$JID"
    check_word SECRET "$SECRET"
    check_word DIR "$dir"
    check_balancing "$BALANCING"
    check_owner_pid
    need_root

    mkdir -p "$dir"
    chmod 0755 "$dir"
    ensure_reachable "$dir" "$EJ_USER" ejabberd
    if [ -s "$dir/cluster.conf" ]; then
        # Started again: keep the epmd port unless it is taken now.
        EPMD_PORT=$(sed -n 's/^EPMD_PORT=//p' "$dir/cluster.conf")
    fi
    [ -n "${EPMD_PORT:-}" ] || EPMD_PORT=$(pick_dist_port "$COMP1" "$COMP2")
    [ -s "$dir/cookie" ] || { head -c 32 /dev/urandom | sha256sum | cut -c1-40 | tr -d '\n' >"$dir/cookie"; }
    chmod 600 "$dir/cookie"

    t0=$(now_ms)
    trap 'do_kill "$dir" >/dev/null 2>&1 || true; exit 130' INT TERM HUP
    start_epmd "$dir"
    save_conf "$dir"
    # Both at once: a cold cluster's nodes may wait for each other's tables.
    out1=$(mktemp) out2=$(mktemp)
    start_node "$dir" 1 >"$out1" &
    pid1=$!
    start_node "$dir" 2 >"$out2" &
    pid2=$!
    wait "$pid1" || ok1=$?
    wait "$pid2" || ok2=$?
    pid1=$(cat "$out1") pid2=$(cat "$out2")
    rm -f "$out1" "$out2"
    [ "$ok1" -eq 0 ] && [ "$ok2" -eq 0 ] || fail_start "$dir" "a node did not start (see the messages above)"

    if [ ! -e "$dir/joined" ]; then
        log "joining ejabberd2@localhost to ejabberd1@localhost"
        ej ctl "$(node_dir "$dir" 2)" join_cluster ejabberd1@localhost >&2 \
            || fail_start "$dir" "join_cluster failed (see $dir/node2/log/ejabberd.log)"
        : >"$dir/joined"
        wait_node "$dir" 2 $((t0 + START_TIMEOUT * 1000))
        # join_cluster restarted node 2's applications: its VM is the same.
    fi
    trap - INT TERM HUP
    start_watchdog "$dir" "$(epmd_pid "$dir")" bash "$SELF" stop "$dir"
    log "cluster ready in $(($(now_ms) - t0)) ms: node 1 c2s $C2S1 component $COMP1, node 2 c2s $C2S2 component $COMP2, epmd $EPMD_PORT${BALANCING:+, domain_balancing $BALANCING}: $(ej ctl "$(node_dir "$dir" 1)" list_cluster | tr '\n' ' ')"
    printf '%s\n%s\n' "$pid1" "$pid2"
}

cmd_start_node() {
    [ $# -eq 2 ] || usage
    local dir n=$2
    dir=$(abs_dir "$1")
    check_node "$n"
    need_root
    load_conf "$dir"
    [ -n "$(epmd_pid "$dir")" ] || die "the cluster of $dir is not running (no epmd); run '$PROG start $dir ...'"
    start_node "$dir" "$n"
}

# end_cluster DIR stop|kill - ends both nodes (ejabberd.sh stop or kill, in parallel),
# then the epmd and the watchdog.
end_cluster() {
    local dir=$1 how=$2 n ends=()
    stop_watchdog "$dir"
    for n in 1 2; do
        if [ -d "$(node_dir "$dir" "$n")" ]; then
            bash "$EJABBERD_SH" "$how" "$(node_dir "$dir" "$n")" &
            ends+=("$!")
        fi
    done
    # Those two only: a bare `wait` would also wait for the epmd that `start` ran in
    # the background of this same shell (a failed start ends here), which stops only
    # below: the script then hung for ever.
    [ "${#ends[@]}" -eq 0 ] || wait "${ends[@]}" || true
    stop_epmd "$dir"
}

# do_kill DIR - both nodes and the epmd, at once.
do_kill() { end_cluster "$1" kill; }

cmd_kill() {
    [ $# -eq 1 ] || [ $# -eq 2 ] || usage
    local dir
    dir=$(abs_dir "$1")
    [ -d "$dir" ] || return 0
    need_root
    if [ $# -eq 2 ]; then
        check_node "$2"
        bash "$EJABBERD_SH" kill "$(node_dir "$dir" "$2")"
    else
        do_kill "$dir"
    fi
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local dir
    dir=$(abs_dir "$1")
    [ -d "$dir" ] || return 0
    need_root
    end_cluster "$dir" stop
}

cmd_adduser() {
    [ $# -ge 4 ] || usage
    local dir n
    dir=$(abs_dir "$1")
    shift
    need_root
    load_conf "$dir"
    for n in 1 2; do
        if [ -n "$(pidfile_pid "$(node_dir "$dir" "$n")/run/ejabberd.pid" "ejabberd$n@localhost")" ]; then
            ej adduser "$(node_dir "$dir" "$n")" "$@"
            return
        fi
    done
    die "no node of the cluster in $dir is running"
}

cmd_ctl() {
    [ $# -ge 3 ] || usage
    local dir n=$2
    dir=$(abs_dir "$1")
    check_node "$n"
    shift 2
    need_root
    load_conf "$dir"
    ej ctl "$(node_dir "$dir" "$n")" "$@"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
    start) cmd_start "$@" ;;
    start-node) cmd_start_node "$@" ;;
    kill) cmd_kill "$@" ;;
    stop) cmd_stop "$@" ;;
    adduser) cmd_adduser "$@" ;;
    ctl) cmd_ctl "$@" ;;
    -h | --help | help) usage ;;
    *) log "unknown subcommand '$cmd'"; usage ;;
esac
