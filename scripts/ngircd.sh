#!/usr/bin/env bash
# ngircd.sh - run a private ngIRCd (Debian package "ngircd", version 26) on 127.0.0.1
# for tests and benchmarks.
#
# Usage:
#   scripts/ngircd.sh start DIR PORT [--flood-protection] [--tls]
#       Creates DIR (config, pidfile, console log, all inside it), starts ngIRCd in
#       the background, waits until PORT accepts connections and a raw IRC
#       registration (NICK/USER) is answered with 001 (10 s at most) and prints its
#       pid on stdout. Works again on an existing DIR (the config is rewritten).
#       Server name "irc.localhost"; no connection, per-IP or channel-count limits.
#       Flood throttling is OFF (MaxPenaltyTime=0) unless --flood-protection is
#       given, which keeps ngIRCd's default penalties (3 lines/s per client:
#       see the figures below).
#       --tls: PORT speaks TLS only (ngIRCd's [SSL] Ports) and PORT+1 is a plain
#       port of the same server (so raw test clients can meet TLS users); both
#       must be free. The certificate is self-signed (EC P-256, CA:FALSE,
#       serverAuth, SAN DNS:localhost and IP:127.0.0.1) in DIR/tls/cert.pem (key
#       DIR/tls/key.pem), made once per DIR and kept across restarts: trust
#       cert.pem as a root (rustls/webpki accepts it as it is not a CA
#       certificate). DIR/tls/dh.pem holds the RFC 7919 ffdhe2048 group, so that
#       ngIRCd (GnuTLS) does not generate DH parameters at start-up. Ready means:
#       a registration on PORT+1 gets 001 and `openssl s_client` completes a
#       handshake on PORT verifying cert.pem for "localhost".
#   scripts/ngircd.sh stop DIR
#       Stops the instance of DIR (TERM, KILL after 5 s). Idempotent.
#
# Several instances may run at once with different DIRs and ports. As root the
# server drops to the system user "irc" (ngIRCd refuses to run as root): DIR and
# its parents must then be searchable by "irc" (parents inside /tmp or $TMPDIR
# owned by the caller get o+x, i.e. search only; DIR itself becomes 0755).
# As another user it runs as that user.
# Environment:
#   HARNESS_OWNER_PID  optional pid (e.g. the test process): when that process
#                      exits while the server runs, the server is stopped.
# Files in DIR: ngircd.conf, run/ngircd.pid (written by ngIRCd after dropping
# privileges, removed when it exits), conf.d/ (empty IncludeDir, so nothing from
# /etc/ngircd/ngircd.conf.d is read), ngircd.out (console log), tls/ (--tls only:
# cert.pem, key.pem, dh.pem).
#
# What ngIRCd 26.1 offers (checked with raw sockets against this configuration):
#   - RPL_ISUPPORT (005), two lines:
#       RFC2812 IRCD=ngIRCd CHARSET=UTF-8 CASEMAPPING=ascii PREFIX=(qaohv)~&@%+
#       CHANTYPES=#&+ CHANMODES=beI,k,l,imMnOPQRstVz CHANLIMIT=#&+:0
#       CHANNELLEN=50 NICKLEN=9 TOPICLEN=490 AWAYLEN=127 KICKLEN=400 MODES=5
#       MAXLIST=beI:50 EXCEPTS=e INVEX=I PENALTY FNC
#     CASEMAPPING=ascii (not rfc1459: "[" and "{" are different nicks).
#     NICKLEN=9: a longer NICK is refused with 432 "Nickname too long, max. 9 characters".
#   - CAP: yes. "CAP LS 302" answers ":irc.localhost CAP * LS :multi-prefix"; the
#     only capability is multi-prefix. Registration waits for "CAP END" once CAP
#     was used. "CAP REQ :multi-prefix sasl" is NAKed as a whole (atomic).
#   - SASL: no. Not advertised; AUTHENTICATE gets no answer before registration.
#     (PASS is checked only against the server Password, unset here; PAM=no.)
#   - Lines: at most 512 bytes including CRLF. A longer line from a client
#     disconnects it ("ERROR :Request too long", others see QUIT). A relayed
#     PRIVMSG is cut to 510 bytes + CRLF including the ":nick!~user@host " prefix
#     the server adds, so the text a peer receives can be shorter than was sent.
#   - Bytes are relayed as they are: a Latin-1 line (e.g. "caf\xe9") arrives as
#     the same bytes, although CHARSET=UTF-8 is announced.
#   - Ident=no, so user names show as "~user" (":alice!~alice@127.0.0.1").
#   - Channels: the first joiner gets @ (353 "= #t :@alice"); a new channel has
#     no modes at all (no +n, no +t: anyone in it may set the topic until an op
#     sets +t). +k, +i (with INVITE), +b, +l, TOPIC and KICK all work for a
#     channel op: 475 (+k), 473 (+i), 474 (+b), 471 (+l) on refused joins.
#     "MODE #t -k" is echoed as "MODE #t -k *". The 341 reply to INVITE carries
#     the invited user's prefix (":carol!~carol@127.0.0.1 341 alice carol #t").
#   - TLS (--tls): Debian's ngircd is built with GnuTLS ("ngircd -V" shows +SSL).
#     A TLS 1.3 handshake (rustls, or openssl s_client) works at once; start-up
#     with --tls takes about as long as without (0.2-0.3 s; DH group from dh.pem,
#     no generation). A plain (non-TLS) client on the TLS port is not answered.
#     An unusable certificate or key makes ngIRCd exit at start-up ("Error during
#     SSL initialization!"), so start fails rather than running without TLS.
#   - HELP without a topic is answered with server NOTICEs
#     (":irc.localhost NOTICE nick :This is ngIRCd, a server software ..."),
#     one of them empty; VERSION, TIME, MOTD are answered with numerics only
#     (351, 391, 375/372/376).
#   - 100 PRIVMSG lines written back-to-back by one client to a channel, time
#     until all 100 reach another member (python sockets, TCP_NODELAY, loopback):
#       without --flood-protection: about 1 ms (no throttling; 50,000 lines: 0.12 s);
#       with --flood-protection:    33 s: 3 lines per second (3 at once, then 3
#       more each second). ngIRCd just stops reading the client; the rest waits
#       in the socket buffers and the sender is not disconnected.
set -euo pipefail

PROG=ngircd.sh
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_TIMEOUT=10 # seconds, until registration gets 001
STOP_TIMEOUT=5   # seconds
IRC_USER=irc     # the system user ngIRCd drops to when started as root
SERVER_NAME=irc.localhost

usage() {
    cat >&2 <<'EOF'
usage: ngircd.sh start DIR PORT [--flood-protection] [--tls]
       ngircd.sh stop DIR
EOF
    exit 2
}

# The pid of DIR's running ngIRCd, or nothing.
running_pid() {
    pidfile_pid "$1/run/ngircd.pid" "$1/ngircd.conf"
}



write_config() {
    local dir=$1 port=$2 flood=$3 as_root=$4 tls=$5 identity='' penalty ports=$2 ssl=''
    if [ "$as_root" = yes ]; then
        identity="ServerUID = $IRC_USER
ServerGID = $IRC_USER"
    fi
    if [ "$flood" = yes ]; then
        penalty="; MaxPenaltyTime left at its default (-1): ngIRCd's flood protection is on."
    else
        penalty="MaxPenaltyTime = 0"
    fi
    if [ "$tls" = yes ]; then
        ports=$((port + 1))
        ssl="
[SSL]
CertFile = $dir/tls/cert.pem
KeyFile = $dir/tls/key.pem
DHFile = $dir/tls/dh.pem
Ports = $port"
    fi
    cat >"$dir/ngircd.conf.tmp" <<EOF
# Written by scripts/ngircd.sh: a private test instance. Do not edit (rewritten on start).
[Global]
Name = $SERVER_NAME
Info = xmpp-gateway test server
AdminInfo1 = xmpp-gateway tests
AdminInfo2 = 127.0.0.1 only
AdminEMail = nobody@localhost
Listen = 127.0.0.1
Ports = $ports
MotdPhrase = Private ngIRCd for xmpp-gateway tests
PidFile = $dir/run/ngircd.pid
$identity

[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
# No PING to idle clients for an hour: with 10,000 clients (the bench's scale scenario,
# issue 12) ngIRCd reads their PONGs slower than its 20 s PongTimeout, then drops them
# one by one at seconds each.
PingTimeout = 3600
PongTimeout = 600
$penalty

[Options]
IncludeDir = $dir/conf.d
PAM = no
DNS = no
Ident = no
$ssl
EOF
    chmod 0644 "$dir/ngircd.conf.tmp" # readable by the server user (REHASH)
    mv -f "$dir/ngircd.conf.tmp" "$dir/ngircd.conf"
}

# irc_registers PORT NICK - true if a raw NICK/USER registration on PORT is
# answered with 001 within 5 s (then it QUITs).
irc_registers() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "NICK %s\r\nUSER %s 0 * :ngircd.sh probe\r\n" "$2" "$2" >&3
        while IFS= read -r line <&3; do
            line=${line%$'"'"'\r'"'"'}
            case "$line" in
                *" 001 "*) printf "QUIT :probe done\r\n" >&3; exit 0 ;;
                PING*) printf "PONG %s\r\n" "${line#PING }" >&3 ;;
                ERROR*) exit 1 ;;
            esac
        done
        exit 1' _ "$1" "$2" 2>/dev/null
}

# make_cert DIR AS_ROOT - the self-signed certificate, key and DH group of --tls
# in DIR/tls, made once per DIR (a test keeps trusting the same cert.pem across
# restarts). As root the key goes to the server user (ngIRCd reads it again on REHASH).
make_cert() {
    local tls=$1/tls as_root=$2
    make_server_cert "$tls"
    if ! [ -s "$tls/dh.pem" ]; then
        # A named group (RFC 7919): instant, where "openssl dhparam" takes seconds.
        openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048 -out "$tls/dh.pem.tmp" >/dev/null 2>&1 \
            || die "openssl could not write DH parameters in $tls"
        chmod 0644 "$tls/dh.pem.tmp"
        mv -f "$tls/dh.pem.tmp" "$tls/dh.pem"
    fi
    if [ "$as_root" = yes ]; then
        chown "$IRC_USER:$IRC_USER" "$tls/key.pem"
    fi
}

# tls_handshakes PORT CERT - true if a TLS handshake on PORT verifies CERT for
# "localhost" within 5 s.
tls_handshakes() {
    timeout 5 openssl s_client -connect "127.0.0.1:$1" -servername localhost \
        -CAfile "$2" -verify_hostname localhost -verify_return_error -brief \
        </dev/null >/dev/null 2>&1
}

cmd_start() {
    if [ $# -lt 2 ] || [ $# -gt 4 ]; then usage; fi
    local dir port=$2 flood=no tls=no as_root=no pid t0 deadline nick plain_port opt
    dir=$1
    shift 2
    for opt in "$@"; do
        case "$opt" in
            --flood-protection) flood=yes ;;
            --tls) tls=yes ;;
            *) usage ;;
        esac
    done
    dir=$(abs_dir "$dir")
    check_port PORT "$port"
    plain_port=$port
    if [ "$tls" = yes ]; then
        [ "$port" -lt 65535 ] || die "with --tls, PORT+1 must be a port too (PORT < 65535)"
        plain_port=$((port + 1))
    fi
    check_word DIR "$dir"
    check_owner_pid
    need_cmd ngircd "package ngircd"
    [ "$(id -u)" -ne 0 ] || as_root=yes

    mkdir -p "$dir" "$dir/run" "$dir/conf.d"
    chmod 0755 "$dir" "$dir/conf.d"
    if [ "$as_root" = yes ]; then
        id "$IRC_USER" >/dev/null 2>&1 || die "no system user '$IRC_USER' (it comes with package ngircd)"
        ensure_reachable "$dir" "$IRC_USER" ngIRCd
        chown "$IRC_USER:$IRC_USER" "$dir/run"
    fi

    pid=$(running_pid "$dir")
    [ -z "$pid" ] || die "ngIRCd of $dir is already running (pid $pid); run: $0 stop $dir"
    ! port_open "$port" || die "port $port on 127.0.0.1 is already in use (another server or test?)"
    ! port_open "$plain_port" || die "port $plain_port (PORT+1, the plain port of --tls) on 127.0.0.1 is already in use"

    [ "$tls" = no ] || make_cert "$dir" "$as_root"
    write_config "$dir" "$port" "$flood" "$as_root" "$tls"
    rm -f "$dir/run/ngircd.pid"

    t0=$(now_ms)
    # setsid: own session, so the caller's signals (Ctrl-C) and terminal don't reach it.
    # All fds are redirected so a caller capturing our output does not wait on ngIRCd.
    setsid ngircd -n -f "$dir/ngircd.conf" </dev/null >"$dir/ngircd.out" 2>&1 &
    pid=$! # -n: no fork, and setsid does not fork here (a job of a non-interactive shell)
    # Interrupted while waiting: don't leave a half-started server behind.
    trap 'kill_wait "$pid" 2 >/dev/null 2>&1 || true; exit 130' INT TERM HUP

    deadline=$((t0 + START_TIMEOUT * 1000))
    nick="p$((RANDOM % 100000))"
    while :; do
        if ! pid_alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            show_logs "$dir/ngircd.out"
            die "ngIRCd exited during start-up (see $dir/ngircd.out)"
        fi
        if pid_listens "$pid" "$plain_port" && port_open "$plain_port" && irc_registers "$plain_port" "$nick"; then
            if [ "$tls" = no ] || { pid_listens "$pid" "$port" && tls_handshakes "$port" "$dir/tls/cert.pem"; }; then
                break
            fi
        fi
        if grep -q 'Can.t bind socket' "$dir/ngircd.out" 2>/dev/null; then
            # Taken by someone else between our check and ngIRCd's bind.
            show_logs "$dir/ngircd.out"
            kill_wait "$pid" "$STOP_TIMEOUT" || true
            die "ngIRCd could not listen on port $port$([ "$tls" = no ] || echo " or $plain_port") (in use by another program?)"
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            show_logs "$dir/ngircd.out"
            kill_wait "$pid" "$STOP_TIMEOUT" || true
            die "ngIRCd did not register an IRC client on port $plain_port$([ "$tls" = no ] || echo " or complete a TLS handshake on port $port") within ${START_TIMEOUT}s"
        fi
        sleep 0.05
    done

    trap - INT TERM HUP
    [ "$(running_pid "$dir")" = "$pid" ] || log "warning: $dir/run/ngircd.pid does not name pid $pid"
    start_watchdog "$dir" "$pid" bash "$SELF" stop "$dir"
    if [ "$tls" = yes ]; then
        log "ngIRCd ready in $(($(now_ms) - t0)) ms on 127.0.0.1:$port (TLS, certificate $dir/tls/cert.pem) and 127.0.0.1:$plain_port (plain) (flood protection $([ "$flood" = yes ] && echo on || echo off)), dir $dir"
    else
        log "ngIRCd ready in $(($(now_ms) - t0)) ms on 127.0.0.1:$port (flood protection $([ "$flood" = yes ] && echo on || echo off)), dir $dir"
    fi
    printf '%s\n' "$pid"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local dir
    dir=$(abs_dir "$1")
    stop_server "$dir" "$(running_pid "$dir")" "$dir/run/ngircd.pid" ngIRCd
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
