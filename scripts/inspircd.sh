#!/usr/bin/env bash
# inspircd.sh - run a private InspIRCd 3 (Debian package "inspircd") linked to
# Atheme services (Debian package "atheme-services", 7.2) on 127.0.0.1, for
# tests of SASL login (SASL PLAIN through Atheme's SaslServ).
#
# Usage:
#   scripts/inspircd.sh start DIR PORT
#       Creates DIR (configs, pidfiles, logs, services database: all inside it),
#       writes an InspIRCd config (server "irc.test", plain client port PORT and
#       a server-link port PORT+1, both on 127.0.0.1 only) and an Atheme config
#       (server "services.test", uplink 127.0.0.1:PORT+1, random link password
#       per start), starts both in the background and waits (20 s at most) until
#       a raw client on PORT sees "sasl" in "CAP LS 302" (InspIRCd advertises it
#       only while the services server is linked) and gets 001 after CAP END.
#       Prints the InspIRCd pid on stdout. Works again on an existing DIR
#       (configs rewritten; registered accounts kept in DIR/atheme/services.db).
#   scripts/inspircd.sh adduser DIR ACCOUNT PASSWORD
#       Registers the services account ACCOUNT (a raw client connects with nick
#       ACCOUNT and sends "NickServ REGISTER PASSWORD ACCOUNT@example.test"), so
#       that SASL PLAIN with ACCOUNT/PASSWORD succeeds (900/903). ACCOUNT must be
#       a valid IRC nick not in use at that moment; PASSWORD must differ from
#       ACCOUNT and contain no spaces or quotes (Atheme 7.2 has no minimum length).
#       Fails (exit 1, NickServ's answer on stderr, e.g. "alice is already
#       registered.") if the account exists already. Takes about 1 s (InspIRCd's
#       registration delay, below).
#   scripts/inspircd.sh stop DIR
#       Stops Atheme and InspIRCd of DIR (TERM, KILL after 5 s). Idempotent.
#
# Several instances may run at once with different DIRs and ports (PORT and
# PORT+1 must both be free). As root InspIRCd runs with --runasroot and Atheme
# runs as root too (both bind only 127.0.0.1; no user switch, so DIR needs no
# special permissions).
# Environment:
#   HARNESS_OWNER_PID  optional pid (e.g. the test process): when that process
#                      exits while the server runs, both servers are stopped.
# Files in DIR: inspircd.conf, motd.txt, inspircd.log (InspIRCd's log),
# inspircd.out (its console), atheme.conf, atheme/ (Atheme data directory:
# services.db, the opensex flat-file database), atheme.log, atheme.out,
# run/inspircd.pid and run/atheme.pid (written by this script), port (PORT,
# for adduser), watchdog.pid/watchdog.log (HARNESS_OWNER_PID only).
#
# Measured (Debian 12, InspIRCd 3.15.0, Atheme 7.2.12):
#   - start: 1.2-1.4 s until ready, most of it the 1 s registration delay below.
#   - Every client registration (NICK/USER, with or without CAP/SASL) gets 001
#     about 1.0 s after connecting: InspIRCd 3 completes registrations in its
#     once-a-second background check (not DNS: the same without any module and
#     with resolvehostnames=no). SASL itself (AUTHENTICATE PLAIN -> 900/903, or
#     904 for a wrong password or unknown account) answers within a few ms.
#   - InspIRCd sends "AUTHENTICATE :+" (with a colon), not "AUTHENTICATE +".
#   - CAP LS 302 answer: "inspircd.org/poison inspircd.org/standard-replies sasl=PLAIN".
#   - User names have no "~" (":bob!bob@127.0.0.1"); NICKLEN=30, USERLEN=10,
#     CASEMAPPING=rfc1459. "services.test" counts as a second server and its
#     clients as 2 operators in LUSERS.
#   - Accounts survive stop/start of the same DIR (Atheme saves on TERM).
#
# Configuration notes:
#   - InspIRCd modules: cap, sasl (<sasl target="services.test" requiressl="no">),
#     spanningtree, services_account (the only module Atheme's protocol/inspircd
#     requires; without chghost/cban/svshold Atheme only logs warnings).
#     services.test is a U-line. Atheme links with the InspIRCd 2.0 protocol
#     (CAPAB 1202), which InspIRCd 3 still accepts.
#   - Connect class: 127.0.0.1 only, no DNS lookups (resolvehostnames=no, DNS
#     server 127.0.0.1), no ident, 30000 connections per IP, no flood kills
#     (fakelag off, huge threshold and commandrate).
#   - Sized for the bench's scale scenario against InspIRCd (10,000 bridged
#     connections plus its own clients, issue 12): softlimit 30000 (InspIRCd
#     raises its own soft RLIMIT_NOFILE to the hard one at start and logs no
#     warning for a softlimit above it: with "ulimit -Hn" 20000, even from a
#     soft 1024, it starts with "20000 max open sockets"), listen backlog
#     (somaxconn, capped by net.core.somaxconn) 4096 for the burst of connects, and
#     PINGs to idle clients once an hour (pingfreq 1h, as ngircd.sh's
#     PingTimeout): a client busy writing (the bench's IRC client reads nothing
#     during a delivery phase) or 10,000 PONGs at once must not be dropped.
#   - Atheme: nickserv main/register/identify, saslserv main/plain, no crypto
#     module (passwords stored in clear in the test database: fast), auth = none
#     (no e-mail confirmation, no mail ever sent), maxlogins 1000 (Atheme's
#     default of 5 sessions per account would make the 6th SASL login fail),
#     registration rate limit and services flood limit raised.
set -euo pipefail

PROG=inspircd.sh
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_TIMEOUT=20 # seconds, until SASL is advertised and a client gets 001
STOP_TIMEOUT=5   # seconds
SERVER_NAME=irc.test
SERVICES_NAME=services.test

usage() {
    cat >&2 <<'EOF'
usage: inspircd.sh start DIR PORT
       inspircd.sh adduser DIR ACCOUNT PASSWORD
       inspircd.sh stop DIR
EOF
    exit 2
}

# running_pid DIR NAME CONF - the pid in DIR/run/NAME.pid if it is alive and its
# command line names CONF (so a recycled pid is never taken for ours).
running_pid() {
    local file=$1/run/$2.pid pid
    [ -s "$file" ] || return 0
    pid=$(tr -dc '0-9' <"$file" 2>/dev/null || true)
    if pid_alive "$pid" && pid_cmdline_has "$pid" "$3"; then
        printf '%s\n' "$pid"
    fi
}

write_inspircd_config() {
    local dir=$1 port=$2 link_port=$3 pass=$4
    printf 'Private InspIRCd for xmpp-gateway tests\n' >"$dir/motd.txt"
    cat >"$dir/inspircd.conf.tmp" <<EOF
# Written by scripts/inspircd.sh: a private test instance. Do not edit (rewritten on start).
<config format="xml">
<server name="$SERVER_NAME" description="xmpp-gateway test server" network="TestNet">
<admin name="xmpp-gateway tests" nick="admin" email="nobody@example.test">

<bind address="127.0.0.1" port="$port" type="clients">
<bind address="127.0.0.1" port="$link_port" type="servers">

<connect name="main" allow="127.0.0.1" maxchans="1000" timeout="60" pingfreq="1h"
         hardsendq="16M" softsendq="1M" recvq="1M" threshold="1000000" commandrate="1000000"
         fakelag="no" localmax="30000" globalmax="30000" maxconnwarn="no" limit="100000"
         resolvehostnames="no" useident="no">

<performance softlimit="30000" somaxconn="4096" clonesonconnect="no">
<dns server="127.0.0.1" timeout="1">
<files motd="$dir/motd.txt">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="$dir/inspircd.log">

<module name="cap">
<module name="sasl">
<sasl target="$SERVICES_NAME" requiressl="no">
<module name="services_account">
<module name="spanningtree">
# IRCv3: what a modern network offers, so that the gateway's capability handling is
# tested against a real server (see the header).
<module name="ircv3">
<module name="ircv3_accounttag">
<module name="ircv3_batch">
<module name="ircv3_capnotify">
<module name="ircv3_chghost">
<module name="ircv3_ctctags">
<module name="ircv3_echomessage">
<module name="ircv3_msgid">
<module name="ircv3_servertime">
<module name="chghost">
<module name="namesx">
<module name="censor">
<badword text="darn" replace="gosh">
<module name="chanhistory">
<chanhistory maxlines="50" notice="no" bots="no">

<link name="$SERVICES_NAME" ipaddr="127.0.0.1" port="$link_port" allowmask="127.0.0.1"
      sendpass="$pass" recvpass="$pass">
<uline server="$SERVICES_NAME" silent="yes">
EOF
    mv -f "$dir/inspircd.conf.tmp" "$dir/inspircd.conf"
}

write_atheme_config() {
    local dir=$1 link_port=$2 pass=$3
    cat >"$dir/atheme.conf.tmp" <<EOF
/* Written by scripts/inspircd.sh: a private test instance. Do not edit (rewritten on start). */
loadmodule "modules/protocol/inspircd";
loadmodule "modules/backend/opensex";
loadmodule "modules/nickserv/main";
loadmodule "modules/nickserv/register";
loadmodule "modules/nickserv/identify";
loadmodule "modules/saslserv/main";
loadmodule "modules/saslserv/plain";

serverinfo {
	name = "$SERVICES_NAME";
	desc = "xmpp-gateway test services";
	numeric = "00A";
	recontime = 1;
	netname = "TestNet";
	hidehostsuffix = "users.test";
	adminname = "xmpp-gateway tests";
	adminemail = "nobody@example.test";
	registeremail = "nobody@example.test";
	loglevel = { error; info; admin; network; wallops; register; };
	maxlogins = 1000;
	maxusers = 1000;
	emaillimit = 1000;
	emailtime = 1;
	auth = none;
	casemapping = rfc1459;
};

uplink "$SERVER_NAME" {
	host = "127.0.0.1";
	password = "$pass";
	port = $link_port;
};

nickserv {
	nick = "NickServ";
	user = "NickServ";
	host = "$SERVICES_NAME";
	real = "Nickname Services";
	maxnicks = 5;
	expire = 0;
};

saslserv {
	nick = "SaslServ";
	user = "SaslServ";
	host = "$SERVICES_NAME";
	real = "SASL Authentication Agent";
};

general {
	flood_msgs = 1000;
	flood_time = 1;
	ratelimit_uses = 100000;
	ratelimit_period = 1;
	commit_interval = 5;
	language = "en";
	exempts { };
};
EOF
    mv -f "$dir/atheme.conf.tmp" "$dir/atheme.conf"
}

# irc_sasl_ready PORT NICK - true if, on PORT, "CAP LS 302" lists "sasl" and the
# registration then gets 001 (within 5 s). Then it QUITs.
irc_sasl_ready() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "CAP LS 302\r\nNICK %s\r\nUSER %s 0 * :inspircd.sh probe\r\n" "$2" "$2" >&3
        caps=""
        while IFS= read -r line <&3; do
            line=${line%$'"'"'\r'"'"'}
            case "$line" in
                *" CAP "*" LS "*)
                    caps="$caps ${line#*LS }"
                    case "$line" in
                        *" LS * :"*) ;; # more lines follow (CAP 302 continuation)
                        *)
                            case " ${caps//:/} " in
                                *" sasl "* | *" sasl="*) printf "CAP END\r\n" >&3 ;;
                                *) exit 1 ;;
                            esac ;;
                    esac ;;
                *" 001 "*) printf "QUIT :probe done\r\n" >&3; exit 0 ;;
                PING*) printf "PONG %s\r\n" "${line#PING }" >&3 ;;
                ERROR*) exit 1 ;;
            esac
        done
        exit 1' _ "$1" "$2" 2>/dev/null
}

cmd_start() {
    [ $# -eq 2 ] || usage
    local dir port=$2 link_port pass t0 deadline ipid apid nick runasroot=()
    dir=$(abs_dir "$1")
    check_port PORT "$port"
    [ "$port" -lt 65535 ] || die "PORT+1 must be a port too (PORT < 65535)"
    link_port=$((port + 1))
    check_word DIR "$dir"
    check_owner_pid
    need_cmd inspircd "package inspircd"
    need_cmd atheme-services "package atheme-services"
    [ "$(id -u)" -ne 0 ] || runasroot=(--runasroot)

    mkdir -p "$dir/run" "$dir/atheme"
    ipid=$(running_pid "$dir" inspircd "$dir/inspircd.conf")
    [ -z "$ipid" ] || die "InspIRCd of $dir is already running (pid $ipid); run: $0 stop $dir"
    apid=$(running_pid "$dir" atheme "$dir/atheme.conf")
    [ -z "$apid" ] || die "Atheme of $dir is already running (pid $apid); run: $0 stop $dir"
    ! port_open "$port" || die "port $port on 127.0.0.1 is already in use (another server or test?)"
    ! port_open "$link_port" || die "port $link_port (PORT+1, the services link port) on 127.0.0.1 is already in use"

    pass=$(od -An -N12 -tx1 /dev/urandom | tr -dc '0-9a-f')
    write_inspircd_config "$dir" "$port" "$link_port" "$pass"
    write_atheme_config "$dir" "$link_port" "$pass"
    chmod 0600 "$dir/inspircd.conf" "$dir/atheme.conf" # link password
    printf '%s\n' "$port" >"$dir/port"
    rm -f "$dir/run/inspircd.pid" "$dir/run/atheme.pid"

    t0=$(now_ms)
    deadline=$((t0 + START_TIMEOUT * 1000))
    # setsid: own session, so the caller's signals (Ctrl-C) and terminal don't reach it.
    # All fds are redirected so a caller capturing our output does not wait on the servers.
    setsid inspircd --nofork --nopid "${runasroot[@]}" --config "$dir/inspircd.conf" \
        </dev/null >"$dir/inspircd.out" 2>&1 &
    ipid=$! # --nofork, and setsid does not fork here (a job of a non-interactive shell)
    printf '%s\n' "$ipid" >"$dir/run/inspircd.pid"
    apid=''
    # Interrupted while waiting: don't leave half-started servers behind.
    trap '[ -z "$apid" ] || kill_wait "$apid" 2 >/dev/null 2>&1 || true; kill_wait "$ipid" 2 >/dev/null 2>&1 || true; exit 130' INT TERM HUP

    fail() {
        show_logs "$dir/inspircd.out" "$dir/atheme.out"
        [ -z "$apid" ] || kill_wait "$apid" "$STOP_TIMEOUT" || true
        kill_wait "$ipid" "$STOP_TIMEOUT" || true
        rm -f "$dir/run/inspircd.pid" "$dir/run/atheme.pid"
        die "$*"
    }

    # 1. InspIRCd listens on both ports.
    while ! { pid_listens "$ipid" "$port" && pid_listens "$ipid" "$link_port"; }; do
        pid_alive "$ipid" || { wait "$ipid" 2>/dev/null || true; fail "InspIRCd exited during start-up (see $dir/inspircd.out)"; }
        [ "$(now_ms)" -lt "$deadline" ] || fail "InspIRCd did not listen on ports $port and $link_port within ${START_TIMEOUT}s"
        sleep 0.05
    done

    # 2. Atheme links to it.
    # Not -n (foreground): then Atheme sends every connecting user a NOTICE "Services
    # are presently running in debug mode, attached to a console...". So it forks
    # (the parent exits) and we take the daemon's pid from its pidfile (-p).
    setsid atheme-services -c "$dir/atheme.conf" -D "$dir/atheme" -l "$dir/atheme.log" \
        -p "$dir/run/atheme.pid" </dev/null >"$dir/atheme.out" 2>&1 &
    local parent=$!
    while :; do
        apid=$(running_pid "$dir" atheme "$dir/atheme.conf")
        [ -z "$apid" ] || break
        if ! pid_alive "$parent"; then
            wait "$parent" 2>/dev/null || true
            apid=$(running_pid "$dir" atheme "$dir/atheme.conf")
            [ -n "$apid" ] || fail "Atheme exited during start-up (see $dir/atheme.out)"
            break
        fi
        [ "$(now_ms)" -lt "$deadline" ] || fail "Atheme wrote no pidfile within ${START_TIMEOUT}s"
        sleep 0.02
    done

    # 3. A client sees SASL (advertised only while services.test is linked) and gets 001.
    nick="p$((RANDOM % 100000))"
    while ! irc_sasl_ready "$port" "$nick"; do
        pid_alive "$ipid" || { wait "$ipid" 2>/dev/null || true; fail "InspIRCd exited during start-up (see $dir/inspircd.out)"; }
        pid_alive "$apid" || { fail "Atheme exited during start-up (see $dir/atheme.out)"; }
        [ "$(now_ms)" -lt "$deadline" ] || fail "SASL was not advertised on port $port within ${START_TIMEOUT}s (Atheme not linked? see $dir/atheme.out)"
        sleep 0.1
    done

    trap - INT TERM HUP
    start_watchdog "$dir" "$ipid" bash "$SELF" stop "$dir"
    log "InspIRCd + Atheme ready in $(($(now_ms) - t0)) ms on 127.0.0.1:$port (services link on $link_port; InspIRCd pid $ipid, Atheme pid $apid), dir $dir"
    printf '%s\n' "$ipid"
}

cmd_adduser() {
    [ $# -eq 3 ] || usage
    local dir account=$2 password=$3 port out rc=0
    dir=$(abs_dir "$1")
    check_word ACCOUNT "$account"
    check_word PASSWORD "$password"
    case "$account" in
        [A-Za-z\[\]\\\`_^\{\|\}]*) ;;
        *) die "ACCOUNT must be a valid IRC nick (it registers under that nick): '$account'" ;;
    esac
    [ -n "$(running_pid "$dir" inspircd "$dir/inspircd.conf")" ] || die "InspIRCd of $dir is not running"
    [ -n "$(running_pid "$dir" atheme "$dir/atheme.conf")" ] || die "Atheme of $dir is not running"
    port=$(tr -dc '0-9' <"$dir/port" 2>/dev/null || true)
    check_port "port in $dir/port" "$port"
    # shellcheck disable=SC2016 # expanded by the inner bash
    out=$(timeout 10 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || { echo "cannot connect to port $1"; exit 1; }
        printf "NICK %s\r\nUSER %s 0 * :inspircd.sh adduser\r\n" "$2" "$2" >&3
        while IFS= read -r line <&3; do
            line=${line%$'"'"'\r'"'"'}
            case "$line" in
                *" 001 "*) printf "PRIVMSG NickServ :REGISTER %s %s@example.test\r\n" "$3" "$2" >&3 ;;
                *" 433 "* | *" 432 "*) echo "nick refused: $line"; exit 1 ;;
                ":NickServ!"*" NOTICE "*)
                    msg=${line#* NOTICE * :}
                    case "$msg" in
                        *"is now registered to"*) printf "QUIT :done\r\n" >&3; echo "$msg"; exit 0 ;;
                        # sent at connect when the nick is a registered account: wait for the REGISTER answer
                        "This nickname is registered."* | *"identify via"*) ;;
                        *) echo "NickServ: $msg"; exit 1 ;;
                    esac ;;
                PING*) printf "PONG %s\r\n" "${line#PING }" >&3 ;;
                ERROR*) echo "$line"; exit 1 ;;
            esac
        done
        echo "connection closed"; exit 1' _ "$port" "$account" "$password" 2>&1) || rc=$?
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -ne 124 ] || out="no confirmation from NickServ within 10 s"
        die "could not register account '$account': $out"
    fi
    log "registered account '$account' ($out)"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local dir ipid apid
    dir=$(abs_dir "$1")
    stop_watchdog "$dir"
    apid=$(running_pid "$dir" atheme "$dir/atheme.conf")
    ipid=$(running_pid "$dir" inspircd "$dir/inspircd.conf")
    if [ -n "$apid" ]; then
        kill_wait "$apid" "$STOP_TIMEOUT" || die "could not stop Atheme pid $apid"
        log "stopped Atheme pid $apid ($dir)"
    fi
    if [ -n "$ipid" ]; then
        kill_wait "$ipid" "$STOP_TIMEOUT" || die "could not stop InspIRCd pid $ipid"
        log "stopped InspIRCd pid $ipid ($dir)"
    fi
    rm -f "$dir/run/inspircd.pid" "$dir/run/atheme.pid"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
    start) cmd_start "$@" ;;
    adduser) cmd_adduser "$@" ;;
    stop) cmd_stop "$@" ;;
    -h | --help | help) usage ;;
    *) log "unknown subcommand '$cmd'"; usage ;;
esac
