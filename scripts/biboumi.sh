#!/usr/bin/env bash
# biboumi.sh - run a private biboumi (XMPP<->IRC gateway, package biboumi 9) on
# 127.0.0.1: the peer the benchmarks compare xmpp-gateway with.
#
# Usage:
#   scripts/biboumi.sh start DIR COMPONENT_PORT COMPONENT_JID SECRET
#       Writes DIR/biboumi.cfg, starts biboumi in the background as the XEP-0114
#       component COMPONENT_JID of the XMPP server on 127.0.0.1:COMPONENT_PORT
#       (e.g. scripts/prosody.sh start PDIR C2S COMPONENT_PORT COMPONENT_JID SECRET,
#       which declares that component), waits until biboumi has authenticated
#       with the XMPP server (20 s at most) and prints its pid on stdout.
#       Fails at once if biboumi exits (wrong SECRET, nothing on the port, ...).
#       Works again on an existing DIR: the config is rewritten, the database
#       (per-user settings) is kept; use a fresh DIR for a clean slate.
#   scripts/biboumi.sh stop DIR
#       Stops the instance of DIR (TERM, KILL after 5 s). Idempotent.
#
# Several instances may run at once with different DIRs and component JIDs
# (each JID must be a component of the XMPP server it connects to).
# Environment:
#   BIBOUMI_LOG_LEVEL  0 debug (every stanza and IRC line: slow), 1 info (about
#                      12 lines per IRC connection, nothing per message), 2 warning
#                      (default: quiet), 3 error. biboumi starts at info (the ready
#                      line is an info line); a quieter level is applied by a config
#                      reload (SIGUSR1) once it is ready.
#   BIBOUMI_TCP_NODELAY=1  load DIR/nodelay.so (LD_PRELOAD, compiled with cc from a
#                      few lines below): TCP_NODELAY on every TCP socket biboumi
#                      connects (XMPP server, IRC servers). biboumi 9 never sets it,
#                      which costs it a delayed-ACK stall of about 40 ms on an
#                      IRC->XMPP message that closely follows another write to the
#                      XMPP server (see LATENCY below). Default 0: as shipped.
#   HARNESS_OWNER_PID  optional pid (e.g. the benchmark process): when that
#                      process exits while biboumi runs, biboumi is stopped.
#   All BIBOUMI_* variables are removed from biboumi's own environment: biboumi
#   lets them override its config file (BIBOUMI_PASSWORD etc.).
# Files in DIR: biboumi.cfg, biboumi.pid, biboumi.log, biboumi.out (console),
# biboumi.sqlite (per-user settings and history), policy/policy.txt (TLS
# policy: verify_certificate=false; unused with the plain ports below),
# nodelay.c/nodelay.so (BIBOUMI_TCP_NODELAY=1 only), watchdog.pid/.log.
# identd is off (identd_port=0); biboumi listens on no port at all.
#
# Addressing: the IRC server 127.0.0.1 is the JID 127.0.0.1@COMPONENT_JID; its
# channel #bench is #bench%127.0.0.1@COMPONENT_JID; joining = presence to
# #bench%127.0.0.1@COMPONENT_JID/NICK (NICK is the IRC nick). biboumi opens one
# IRC connection per XMPP user (bare JID) and IRC server.
#
# FAIR CONFIGURATION FOR BENCHMARKS (per XMPP user, before that user's first join)
# ----------------------------------------------------------------------------
# biboumi's per-user defaults are: IRC ports "6667" plain and "6697;6670" TLS
# (tried first), throttle_limit 10 (after 10 lines, one IRC line per second),
# record_history true (every message stored in SQLite). So each benchmark user
# runs two XEP-0050 ad-hoc commands, both with node "configure" (execute, then
# submit the returned form with the sessionid; the form replaces the stored
# settings as a whole, so send every field: a field left out is cleared):
#   1. on the IRC server JID 127.0.0.1@COMPONENT_JID: ports = the ngIRCd port,
#      tls_ports = empty (no <value/>), throttle_limit = -1 (off);
#   2. on the gateway JID COMPONENT_JID itself: record_history = false
#      (this field is NOT in form 1; it is the user's global setting).
# For thousands of users, the same end state can be written into DIR/biboumi.sqlite
# while biboumi runs (the bench's scale scenario does: seed_fair_configuration in
# bench/src/peers.rs): one row per user in ircserveroptions_ (ports_ 'PORT;',
# tlsports_ '', throttlelimit_ -1, verifycert_ 1, maxhistorylength_ 20, address_ the
# server) and one in globaloptions_ (recordhistory_ 0). biboumi's tables have no index
# on owner_, so each command above scans every user configured before it: 10,000
# users' commands took over ten minutes of biboumi's CPU without finishing.
# biboumi answers with the form below (the <desc> of each field left out here);
# to get it exactly right, a client can also echo back every <field var> of the
# form it got, changing only the values above. Literal exchange, as captured
# (ngIRCd on 6667, COMPONENT_JID irc.bench.localhost, user alice@localhost/r;
# the iq ids are the client's choice, the sessionid is the one biboumi returned):
#
# 1a. execute on the IRC server JID:
#   <iq type='set' to='127.0.0.1@irc.bench.localhost' id='s1'>
#     <command xmlns='http://jabber.org/protocol/commands' node='configure' action='execute'/></iq>
# 1b. biboumi's form (the user's current values; these are the defaults):
#   <iq to='alice@localhost/r' id='s1' type='result' xml:lang='en' from='127.0.0.1@irc.bench.localhost'>
#    <command status='executing' xmlns='http://jabber.org/protocol/commands' node='configure'
#             sessionid='890d0ce5-4e95-461c-abbd-3dccc64ce188'>
#     <x xmlns='jabber:x:data' type='form'>
#      <field var='address' label='Address' type='text-single'><value>127.0.0.1</value></field>
#      <field var='ports' label='Ports' type='text-multi'><value>6667</value></field>
#      <field var='tls_ports' label='TLS ports' type='text-multi'><value>6697</value><value>6670</value></field>
#      <field var='verify_cert' label='Verify certificate' type='boolean'><value>true</value></field>
#      <field var='fingerprint' label='SHA-1 fingerprint of the TLS certificate to trust.' type='text-single'/>
#      <field var='sasl_password' label='SASL Password' type='text-private'/>
#      <field var='nick' label='Nickname' type='text-single'/>
#      <field var='pass' label='Server password' type='text-private'/>
#      <field var='after_connect_commands' label='After-connection IRC commands' type='text-multi'/>
#      <field var='username' label='Username' type='text-single'/>
#      <field var='realname' label='Realname' type='text-single'/>
#      <field var='throttle_limit' label='Throttle limit' type='text-single'><value>10</value></field>
#      <field var='max_history_length' label='Throttle limit' type='text-single'><value>20</value></field>
#      <field var='encoding_out' label='Out encoding' type='text-single'/>
#      <field var='encoding_in' label='In encoding' type='text-single'/>
#      <instructions>Edit the form, to configure the settings of the IRC server 127.0.0.1</instructions>
#      <title>Configure the IRC server 127.0.0.1</title>
#     </x><actions><complete/></actions></command></iq>
#    (max_history_length really carries the label 'Throttle limit': a biboumi
#    bug; match fields by var, never by label.)
# 1c. submit (every field; tls_ports with no value = no TLS port at all):
#   <iq type='set' to='127.0.0.1@irc.bench.localhost' id='s2'>
#    <command xmlns='http://jabber.org/protocol/commands' node='configure'
#             sessionid='890d0ce5-4e95-461c-abbd-3dccc64ce188'>
#     <x xmlns='jabber:x:data' type='submit'>
#      <field var='address'><value>127.0.0.1</value></field>
#      <field var='ports'><value>6667</value></field>
#      <field var='tls_ports'></field>
#      <field var='verify_cert'><value>true</value></field>
#      <field var='fingerprint'></field>
#      <field var='sasl_password'></field>
#      <field var='nick'></field>
#      <field var='pass'></field>
#      <field var='after_connect_commands'></field>
#      <field var='username'></field>
#      <field var='realname'></field>
#      <field var='throttle_limit'><value>-1</value></field>
#      <field var='max_history_length'><value>20</value></field>
#      <field var='encoding_out'></field>
#      <field var='encoding_in'></field>
#     </x></command></iq>
# 1d. <iq to='alice@localhost/r' id='s2' type='result' xml:lang='en' from='127.0.0.1@irc.bench.localhost'>
#      <command status='completed' xmlns='http://jabber.org/protocol/commands' node='configure'
#               sessionid='890d0ce5-4e95-461c-abbd-3dccc64ce188'>
#       <note type='info'>Configuration successfully applied.</note></command></iq>
# 2a. execute on the gateway JID:
#   <iq type='set' to='irc.bench.localhost' id='s3'>
#     <command xmlns='http://jabber.org/protocol/commands' node='configure' action='execute'/></iq>
# 2b. <iq to='alice@localhost/r' id='s3' type='result' xml:lang='en' from='irc.bench.localhost'>
#      <command status='executing' xmlns='http://jabber.org/protocol/commands' node='configure'
#               sessionid='6b2283c1-6e2b-42b4-8f63-fdc414e36c84'>
#       <x xmlns='jabber:x:data' type='form'>
#        <field var='max_history_length' label='Max history length' type='text-single'><value>20</value></field>
#        <field var='record_history' label='Record history' type='boolean'><value>true</value></field>
#        <field var='persistent' label='Make all channels persistent' type='boolean'><value>false</value></field>
#        <instructions>Edit the form, to configure your global settings for the component.</instructions>
#        <title>Configure some global default settings.</title>
#       </x><actions><complete/></actions></command></iq>
# 2c. <iq type='set' to='irc.bench.localhost' id='s4'>
#      <command xmlns='http://jabber.org/protocol/commands' node='configure'
#               sessionid='6b2283c1-6e2b-42b4-8f63-fdc414e36c84'>
#       <x xmlns='jabber:x:data' type='submit'>
#        <field var='max_history_length'><value>20</value></field>
#        <field var='record_history'><value>false</value></field>
#        <field var='persistent'><value>false</value></field>
#       </x></command></iq>
# 2d. the same 'completed' result with <note type='info'>Configuration successfully applied.</note>.
# What "cleared" means (checked by re-executing after a submit of throttle_limit
# alone): ports and tls_ports become empty (biboumi then has no port to connect
# to), verify_cert false, max_history_length 0; a global form with record_history
# alone sets max_history_length to 0. Settings live in DIR/biboumi.sqlite, keyed
# by bare JID (and IRC server), so they survive a restart of the same DIR and
# apply to the user's next IRC connection; throttle_limit and record_history
# also change a connection that is already open. Disco: the IRC server JID lists
# the commands configure and get-irc-connection-info; the gateway JID lists
# configure, disconnect-from-irc-server, hello and ping.
#
# The join, once configured: <presence to='#bench%127.0.0.1@irc.bench.localhost/alice'>
# <x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>.
# biboumi first sends the user chat messages from 127.0.0.1@irc.bench.localhost
# ("Connecting to 127.0.0.1:6667 (not encrypted)", "Connected to IRC server.", the
# server's 251-266 numerics), then one presence per member, then the
# self-presence (muc#user status codes 100, 210 and 110; item jid
# 'alice%127.0.0.1@irc.bench.localhost/~alice@127.0.0.1'), then an empty <subject/>.
# A groupchat message is reflected to its sender (from .../alice) as soon as it
# is sent to IRC; a message from IRC user bob comes from
# #bench%127.0.0.1@irc.bench.localhost/bob. With record_history true every
# message also carries <stanza-id xmlns='urn:xmpp:sid:0'/>.
#
# LATENCY (measured: Prosody 0.12, ngIRCd 26.1, biboumi 9.0, 127.0.0.1; one python
# client holding both an XMPP c2s and a raw IRC connection to #bench; one round
# trip = groupchat message XMPP -> Prosody -> biboumi -> ngIRCd -> IRC client,
# whose PRIVMSG reply goes IRC -> biboumi -> Prosody -> XMPP client; 200 in a row)
# on a 2-core machine that was busy compiling at the same time (the p99 figures
# suffer from that, the medians hardly):
#   as shipped, default per-user settings:  p50 1000 ms, p99 1020 ms (both
#       with and without BIBOUMI_TCP_NODELAY): the IRC throttle, 1 line/s once
#       10 lines are spent (a burst of 15 lines took 4.9 s); one run had a
#       16 s outlier. 200 round trips take 200 s.
#   as shipped, fair configuration:  p50 44.0 ms, p90 48.0, p99 49-52 ms (5 runs
#       of 200; XMPP->IRC leg p50 0.5 ms, IRC->XMPP leg p50 43.5 ms).
#   BIBOUMI_TCP_NODELAY=1, fair:  p50 0.22-0.36 ms, p99 1.6-6 ms (5 runs).
#   BIBOUMI_TCP_NODELAY=1, fair but record_history true:  p50 10-39 ms (about
#       20 ms per leg in most runs): one SQLite commit with fsync per message,
#       in biboumi's only thread, so it depends on the disk and its other load.
# The 40 ms delayed-ACK stall (see shared HARNESS "Latency pitfall") is there in
# every run of biboumi as shipped, in the IRC->XMPP leg only, and is biboumi's
# own: biboumi writes the reflection of the user's message to Prosody, then, a
# fraction of a millisecond later, the IRC reply; Prosody sends nothing back on
# the component connection, so the first write's ACK is delayed (about 40 ms;
# the 44.0/48.0 ms steps are the kernel's 4 ms timer ticks) and Nagle holds the
# second write until then. TCP_NODELAY on the test clients' own sockets changes
# nothing (measured both ways: identical). Two ways to remove it: start biboumi
# with BIBOUMI_TCP_NODELAY=1 (the stall disappears completely), or leave at
# least about 50 ms of silence between the two legs and time each leg on its
# own (with a 60 ms pause the IRC->XMPP leg of shipped biboumi is 0.7 ms).
# A benchmark should say which biboumi it measured.
#
# PITFALLS
#   - record_history is not in the IRC server's form: it is in the gateway's
#     (COMPONENT_JID) form. The per-channel form (node configure on
#     #chan%127.0.0.1@COMPONENT_JID) has a record_history 'unset' that follows it.
#   - A submitted form replaces the whole setting: resubmit every field (1c, 2c).
#     Both commands take effect at once, also on an IRC connection that is
#     already open (checked: throttling stops, stanza-id disappears).
#   - Default tls_ports 6697 and 6670 are tried first, with TLS: refused at once
#     on 127.0.0.1, but if something listens there (scripts/ngircd.sh --tls on
#     6697...), biboumi goes there. The fair settings name the one plain port.
#   - biboumi exits at start-up when it cannot connect or authenticate (this
#     script then fails with its log), but once connected it survives the XMPP
#     server going away, keeps retrying and reconnects when it is back
#     (checked): stopping Prosody first does not stop biboumi. TERM makes it send QUIT to the IRC servers
#     and exit within about 2 s.
#   - One component JID per biboumi; scripts/prosody.sh declares one component,
#     so several biboumi instances need one Prosody each (or another XMPP server
#     config). Idle RSS about 21 MiB.
#   - The IRC nick is the resource of the join presence (ngIRCd: 9 characters
#     at most); one IRC connection per XMPP bare JID and IRC server, so N
#     benchmark users = N XMPP accounts = N IRC connections. Nicks are unique
#     per IRC server, also across biboumi instances sharing one ngIRCd: a join
#     with a nick already taken got no self-presence (timed out after 30 s).
#   - biboumi reads BIBOUMI_* environment variables as config overrides; this
#     script removes them from its environment.
set -euo pipefail

PROG=biboumi.sh
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_TIMEOUT=20 # seconds, until biboumi has authenticated with the XMPP server
STOP_TIMEOUT=5   # seconds (biboumi itself waits up to 2 s for IRC servers to close)
READY_LINE='Authenticated with the XMPP server'

usage() {
    cat >&2 <<'EOF'
usage: biboumi.sh start DIR COMPONENT_PORT COMPONENT_JID SECRET
       biboumi.sh stop DIR
EOF
    exit 2
}

# The pid of DIR's running biboumi, or nothing.
running_pid() {
    local dir=$1 pid
    [ -s "$dir/biboumi.pid" ] || return 0
    pid=$(tr -dc '0-9' <"$dir/biboumi.pid" 2>/dev/null || true)
    if pid_alive "$pid" && pid_cmdline_has "$pid" "$dir/biboumi.cfg"; then
        printf '%s\n' "$pid"
    fi
}

# write_config DIR PORT JID SECRET LEVEL
write_config() {
    local dir=$1 port=$2 jid=$3 secret=$4 level=$5
    # No spaces around "=": biboumi takes everything after "=" as the value.
    cat >"$dir/biboumi.cfg.tmp" <<EOF
# Written by scripts/biboumi.sh: a private biboumi for benchmarks. Do not edit (rewritten on start).
hostname=$jid
password=$secret
xmpp_server_ip=127.0.0.1
port=$port
db_name=$dir/biboumi.sqlite
log_file=$dir/biboumi.log
log_level=$level
identd_port=0
policy_directory=$dir/policy
realname_customization=true
realname_from_jid=false
EOF
    chmod 0600 "$dir/biboumi.cfg.tmp" # holds the component secret
    mv -f "$dir/biboumi.cfg.tmp" "$dir/biboumi.cfg"
    # The only policy file biboumi reads for every IRC server (policy.txt); the
    # per-server files of /etc/biboumi are not read since the directory is ours.
    printf '%s\n' '# Written by scripts/biboumi.sh' 'verify_certificate=false' >"$dir/policy/policy.txt.tmp"
    mv -f "$dir/policy/policy.txt.tmp" "$dir/policy/policy.txt"
}

# build_nodelay DIR - compile DIR/nodelay.so: a connect() wrapper that sets
# TCP_NODELAY on every IPv4/IPv6 socket before connecting (on a UDP socket,
# e.g. a DNS query, setsockopt just fails and is ignored).
build_nodelay() {
    local dir=$1
    need_cmd cc "a C compiler, for BIBOUMI_TCP_NODELAY=1 (package gcc)"
    cat >"$dir/nodelay.c.tmp" <<'EOF'
/* Written by scripts/biboumi.sh (BIBOUMI_TCP_NODELAY=1). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    static int (*real_connect)(int, const struct sockaddr *, socklen_t);
    if (!real_connect)
        real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    if (!real_connect) {
        errno = ENOSYS;
        return -1;
    }
    if (addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6)) {
        int one = 1, saved = errno;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        errno = saved;
    }
    return real_connect(fd, addr, len);
}
EOF
    if [ -s "$dir/nodelay.so" ] && cmp -s "$dir/nodelay.c.tmp" "$dir/nodelay.c"; then
        rm -f "$dir/nodelay.c.tmp"
        return 0
    fi
    mv -f "$dir/nodelay.c.tmp" "$dir/nodelay.c"
    cc -shared -fPIC -O2 -Wall -o "$dir/nodelay.so.tmp" "$dir/nodelay.c" -ldl \
        || die "could not compile $dir/nodelay.c (needed by BIBOUMI_TCP_NODELAY=1)"
    mv -f "$dir/nodelay.so.tmp" "$dir/nodelay.so"
}

cmd_start() {
    [ $# -eq 4 ] || usage
    local dir port=$2 jid=$3 secret=$4 level=${BIBOUMI_LOG_LEVEL:-2} nodelay=${BIBOUMI_TCP_NODELAY:-0} pid t0 deadline var
    dir=$(abs_dir "$1")
    check_port COMPONENT_PORT "$port"
    check_word COMPONENT_JID "$jid"
    check_word SECRET "$secret"
    check_word DIR "$dir"
    case "$level" in
        0 | 1 | 2 | 3) ;;
        *) die "BIBOUMI_LOG_LEVEL must be 0, 1, 2 or 3, got '$level'" ;;
    esac
    case "$nodelay" in
        0 | 1) ;;
        *) die "BIBOUMI_TCP_NODELAY must be 0 or 1, got '$nodelay'" ;;
    esac
    check_owner_pid
    need_cmd biboumi "package biboumi"

    mkdir -p "$dir" "$dir/policy"
    chmod 0700 "$dir"

    pid=$(running_pid "$dir")
    [ -z "$pid" ] || die "biboumi of $dir is already running (pid $pid); run: $0 stop $dir"
    port_open "$port" || die "nothing accepts connections on 127.0.0.1:$port: start the XMPP server first (scripts/prosody.sh start ... $port $jid SECRET)"

    # Start at info level at most: the ready line below is an info line. A
    # quieter level is applied afterwards by a configuration reload.
    write_config "$dir" "$port" "$jid" "$secret" "$((level < 1 ? level : 1))"
    rm -f "$dir/biboumi.pid"
    # Fresh logs for this run, so a failure shows this run's errors.
    : >"$dir/biboumi.log"

    # biboumi lets BIBOUMI_* variables override its config file: drop them all.
    local -a clean_env=(env)
    while IFS= read -r var; do
        clean_env+=(-u "$var")
    done < <(compgen -e | grep '^BIBOUMI_' || true)
    if [ "$nodelay" = 1 ]; then
        build_nodelay "$dir"
        clean_env+=("LD_PRELOAD=$dir/nodelay.so${LD_PRELOAD:+ $LD_PRELOAD}")
    fi

    t0=$(now_ms)
    # setsid: own session, so the caller's signals (Ctrl-C) and terminal don't reach it.
    # All fds are redirected so a caller capturing our output does not wait on biboumi.
    setsid "${clean_env[@]}" biboumi "$dir/biboumi.cfg" </dev/null >"$dir/biboumi.out" 2>&1 &
    pid=$! # setsid does not fork here (a job of a non-interactive shell), and env execs
    printf '%s\n' "$pid" >"$dir/biboumi.pid"
    # Interrupted while waiting: don't leave a half-started biboumi behind.
    trap 'kill_wait "$pid" 2 >/dev/null 2>&1 || true; rm -f "$dir/biboumi.pid"; exit 130' INT TERM HUP

    deadline=$((t0 + START_TIMEOUT * 1000))
    while :; do
        if grep -qF "$READY_LINE" "$dir/biboumi.log" 2>/dev/null && pid_alive "$pid"; then
            break
        fi
        if ! pid_alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            rm -f "$dir/biboumi.pid"
            show_logs "$dir/biboumi.out" "$dir/biboumi.log"
            if grep -q 'does not match calculated token\|does not match any configured\|not-authorized' "$dir/biboumi.log" 2>/dev/null; then
                die "the XMPP server on port $port refused biboumi's handshake: is $jid its component, with this SECRET?"
            fi
            die "biboumi exited during start-up (see $dir/biboumi.log)"
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            show_logs "$dir/biboumi.out" "$dir/biboumi.log"
            kill_wait "$pid" "$STOP_TIMEOUT" || true
            rm -f "$dir/biboumi.pid"
            die "biboumi did not authenticate with the XMPP server on port $port within ${START_TIMEOUT}s"
        fi
        sleep 0.05
    done
    if [ "$level" -gt 1 ]; then
        # SIGUSR1: biboumi re-reads its config, reopens its log and its database;
        # connections are kept.
        write_config "$dir" "$port" "$jid" "$secret" "$level"
        kill -USR1 "$pid"
    fi

    if [ "$nodelay" = 1 ] && ! grep -qF "$dir/nodelay.so" "/proc/$pid/maps" 2>/dev/null; then
        kill_wait "$pid" "$STOP_TIMEOUT" || true
        rm -f "$dir/biboumi.pid"
        die "BIBOUMI_TCP_NODELAY=1 but $dir/nodelay.so is not loaded in biboumi (pid $pid)"
    fi

    trap - INT TERM HUP
    start_watchdog "$dir" "$pid" bash "$SELF" stop "$dir"
    log "biboumi ready in $(($(now_ms) - t0)) ms: component $jid on 127.0.0.1:$port, log level $level, TCP_NODELAY $([ "$nodelay" = 1 ] && echo "forced (LD_PRELOAD)" || echo "off (as shipped)"), dir $dir"
    printf '%s\n' "$pid"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local dir
    dir=$(abs_dir "$1")
    stop_server "$dir" "$(running_pid "$dir")" "$dir/biboumi.pid" biboumi
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    -h | --help | help) usage ;;
    *) log "unknown subcommand '$cmd'"; usage ;;
esac
