#!/usr/bin/env bash
# jabberd2.sh - run a private jabberd2 instance (router, sm, c2s) on 127.0.0.1 for tests.
#
# Usage (as root: the three daemons run as root, every file is in DIR):
#   scripts/jabberd2.sh start DIR C2S_PORT COMPONENT_PORT COMPONENT_JID SECRET
#       Creates DIR (config, SQLite database, logs, pid files, all inside it),
#       starts the router, one sm and c2s in the background, waits until both
#       ports accept connections and the router shows sm (for both hosts) and
#       c2s bound (20 s at most), and prints the router's pid on stdout. Works
#       again on an existing DIR (config rewritten, users kept).
#       Hosts: "localhost" and "other.localhost" (one sm serves both). XEP-0114
#       components connect to the router's <local> port COMPONENT_PORT and
#       authenticate with SECRET, the router's one shared <secret>: any
#       component name is accepted with it, so COMPONENT_JID is only checked
#       and logged. c2s on C2S_PORT offers SASL PLAIN without TLS (no STARTTLS).
#   scripts/jabberd2.sh stop DIR
#       TERM c2s, sm and router (KILL after 5 s). Idempotent.
#   scripts/jabberd2.sh kill DIR
#       KILL them at once, for a throwaway instance whose DIR is deleted next,
#       such as a test's. Idempotent.
#   scripts/jabberd2.sh adduser DIR USER HOST PASSWORD [USER HOST PASSWORD]...
#       Creates each USER@HOST (or resets its password if it exists) by writing
#       the SQLite database directly (table authreg: username, realm = HOST,
#       plaintext password; and table active, the sm's list of existing users).
#       Works while the server runs (c2s reads authreg at every login); needs
#       DIR/db/sqlite.db, made by the first start, not a running server.
#
# Verified facts (Debian 12, jabberd2 2.7.0; all found the hard way):
# - The four daemons are /usr/sbin/jabberd2-{router,sm,c2s,s2s}, each started
#   with `-c FILE`; they stay in the foreground (Debian's init script puts them
#   in the background with start-stop-daemon -b) and write their <pidfile>
#   themselves. They run as root without complaint; no s2s is started here.
# - sm and c2s are clients of the router: they connect to its <local> port
#   (the same port XEP-0114 components use) and authenticate as a user of the
#   router's <users> file (router-users.xml) who needs <acl type='all'> in
#   router.xml to bind the sm's host names and "c2s". They retry per their
#   <router><retry> settings, so the start order only matters for speed.
# - XEP-0114: the router accepts "jabber:component:accept" streams when
#   router.xml has <local><secret>; that one secret is shared by every
#   component, whatever domain it binds (no per-component secret). A wrong one
#   is answered with <not-authorized/>. The router logs "[DOMAIN] online" when a
#   component has bound its domain.
# - What a component sees that Prosody and ejabberd never send: (1) a stream
#   header with version='1.0' (the gateway's) is answered with the header, then
#   <stream:features/> (SASL DIGEST-MD5), then the handshake's answer; (2) the
#   users' stanzas arrive with xmlns='jabber:client' declared on each one, over
#   the jabber:component:accept stream. The gateway skips (1) and reads (2) in
#   the component namespace (src/connection.rs); before that, the handshake
#   failed on the features and every iq was refused as malformed.
# - One sm serves several hosts: one <id> per host in sm.xml's <local>; c2s
#   needs an <id> per host too. The router then logs "[HOST] online".
# - A user that exists only in authreg logs in (SASL succeeds) but the session
#   fails: sm logs "user not found and user.auto-create not enabled, can't start
#   session" and c2s closes the stream with <not-authorized/> "stanza sent
#   before session start". The sm knows a user by a row in table `active`
#   (mod_active, in the user-create chain, writes it): with that row, and no
#   auto-create, the session starts (both checked). adduser writes both rows;
#   sm.xml also has <user><auto-create/> so that a user added to authreg alone
#   still works.
# - The SQLite schema comes from /usr/share/doc/jabberd2/db-setup.sqlite.gz
#   (the sqlite3 command-line tool, package sqlite3, loads it). Minimal images
#   whose dpkg config excludes /usr/share/doc would lack it: start then fails
#   saying so. It sets journal_mode=WAL, so adduser's writes do not wait for the
#   daemons' readers.
# - c2s offers SASL mechanisms without TLS only from <authreg><mechanisms>;
#   those in <ssl-mechanisms> need STARTTLS. No pemfile is given, so no
#   STARTTLS is offered; c2s logs "using PEM:Default" all the same.
# - Debian's c2s.xml sets <io><limits><stanzas>1000 and <stanzasize>65535;
#   here <stanzas> is 0 (no rate limit, as 0 means in Debian's comments) and
#   stanzas may be 1 MiB (as with ejabberd's max_stanza_size); the router's
#   <bytes> and <connects> limits are 0 too.
# - Debian's package enables systemd units (jabberd.service, jabberd-*.service)
#   and an init script /etc/init.d/jabberd2 that its postinst starts on
#   install through invoke-rc.d, on the default ports 5222/5269/5347 as user
#   jabber with /etc/jabberd2: scripts/install-deps.sh creates
#   /usr/sbin/policy-rc.d (exit 101) first, which stops that start. Without
#   systemd running, the units do nothing.
# - Ready in about 0.4 s (router, sm and c2s bound); idle RSS 4-7 MiB each.
#   TERM stops each daemon at once. A port in use: the daemon logs "unable to
#   listen (Address already in use)" and exits 1.
#
# Several instances may run at once with different DIRs and ports.
# Environment:
#   HARNESS_OWNER_PID  optional pid (e.g. the test process): when that process
#                      exits while the server runs, the server is stopped.
# Files in DIR: etc/ (router.xml, router-users.xml, sm.xml, c2s.xml),
# db/sqlite.db, log/ (router.log, sm.log, c2s.log and *.out, the consoles),
# run/ (router.pid, sm.pid, c2s.pid).
set -euo pipefail

PROG=jabberd2.sh
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_TIMEOUT=20 # seconds
STOP_TIMEOUT=5   # seconds
SBIN=/usr/sbin
MODULES=/usr/lib/x86_64-linux-gnu/jabberd2
SCHEMA=/usr/share/doc/jabberd2/db-setup.sqlite.gz
HOSTS="localhost other.localhost"
# Started in this order, stopped in the reverse one.
DAEMONS="router sm c2s"

usage() {
    cat >&2 <<'EOF'
usage: jabberd2.sh start DIR C2S_PORT COMPONENT_PORT COMPONENT_JID SECRET
       jabberd2.sh stop DIR
       jabberd2.sh kill DIR
       jabberd2.sh adduser DIR USER HOST PASSWORD [USER HOST PASSWORD]...
EOF
    exit 2
}

need_jabberd2() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as root with every file in DIR)"
    local d
    for d in $DAEMONS; do
        [ -x "$SBIN/jabberd2-$d" ] || die "$SBIN/jabberd2-$d not found; run scripts/install-deps.sh as root (package jabberd2)"
    done
    [ -d "$MODULES" ] || die "$MODULES not found (package jabberd2)"
    need_cmd sqlite3 "package sqlite3"
}

# running_pid DIR DAEMON - the pid of DIR's running DAEMON, or nothing (the
# command line must name DIR's config file: a recycled pid is never ours).
running_pid() {
    pidfile_pid "$1/run/$2.pid" "$1/etc/$2.xml"
}

# The <router> section of sm.xml and c2s.xml: how they reach the router.
router_client() {
    local comp=$1 pass=$2
    cat <<EOF
  <router>
    <ip>127.0.0.1</ip>
    <port>$comp</port>
    <user>jabberd</user>
    <pass>$pass</pass>
    <retry><init>100</init><lost>100</lost><sleep>1</sleep></retry>
  </router>
EOF
}

# The sm's module chains: Debian's sm.xml, unchanged.
sm_modules() {
    cat <<EOF
  <modules>
    <path>$MODULES</path>
    <chain id='sess-start'><module>status</module></chain>
    <chain id='sess-end'><module>status</module><module>iq-last</module></chain>
    <chain id='in-sess'>
      <module>validate</module><module>status</module><module>privacy</module>
      <module>roster</module><module>vacation</module><module>iq-vcard</module>
      <module>iq-ping</module><module>iq-private</module><module>disco</module>
      <module>amp</module><module>offline</module><module>announce</module>
      <module>presence</module><module>deliver</module>
    </chain>
    <chain id='out-sess'></chain>
    <chain id='in-router'>
      <module>session</module><module>validate</module><module>presence</module><module>privacy</module>
    </chain>
    <chain id='out-router'><module>privacy</module></chain>
    <chain id='pkt-sm'>
      <module>iq-last</module><module>iq-ping</module><module>iq-time</module>
      <module>iq-version</module><module>amp</module><module>disco</module>
      <module>announce</module><module>help</module><module>echo</module>
      <module>status</module><module>presence</module>
    </chain>
    <chain id='pkt-user'>
      <module>roster</module><module>presence</module><module>disco</module>
      <module>iq-vcard</module><module>amp</module><module>deliver</module>
      <module>vacation</module><module>offline</module><module>iq-last</module>
    </chain>
    <chain id='pkt-router'><module>session</module><module>disco</module></chain>
    <chain id='user-load'>
      <module>active</module><module>roster</module><module>roster-publish</module>
      <module>privacy</module><module>vacation</module>
    </chain>
    <chain id='user-unload'></chain>
    <chain id='user-create'><module>active</module><module>template-roster</module></chain>
    <chain id='user-delete'>
      <module>active</module><module>announce</module><module>offline</module>
      <module>privacy</module><module>roster</module><module>vacation</module>
      <module>status</module><module>iq-last</module><module>iq-private</module>
      <module>iq-vcard</module>
    </chain>
    <chain id='disco-extend'><module>iq-version</module><module>help</module></chain>
  </modules>
EOF
}

write_config() {
    local dir=$1 c2s=$2 comp=$3 secret=$4 pass h sm_ids="" c2s_ids=""
    # The password of the router's internal user "jabberd" (sm and c2s), made once.
    if [ ! -s "$dir/etc/router-pass" ]; then
        head -c 32 /dev/urandom | sha256sum | cut -c1-32 >"$dir/etc/router-pass"
        chmod 600 "$dir/etc/router-pass"
    fi
    pass=$(tr -dc 'a-f0-9' <"$dir/etc/router-pass")
    for h in $HOSTS; do
        sm_ids="$sm_ids    <id>$h</id>
"
        c2s_ids="$c2s_ids    <id>$h</id>
"
    done

    cat >"$dir/etc/router-users.xml" <<EOF
<!-- Written by scripts/jabberd2.sh (rewritten on start): the router's own users. -->
<users>
  <user><name>jabberd</name><secret>$pass</secret></user>
</users>
EOF

    cat >"$dir/etc/router.xml" <<EOF
<!-- Written by scripts/jabberd2.sh: a private test instance (rewritten on start). -->
<router>
  <id>router</id>
  <pidfile>$dir/run/router.pid</pidfile>
  <log type='file'><file>$dir/log/router.log</file></log>
  <local>
    <ip>127.0.0.1</ip>
    <port>$comp</port>
    <users>$dir/etc/router-users.xml</users>
    <!-- XEP-0114 components (jabber:component:accept) authenticate with this. -->
    <secret>$secret</secret>
  </local>
  <check><interval>60</interval><keepalive>0</keepalive></check>
  <io>
    <max_fds>1024</max_fds>
    <limits><bytes>0</bytes><connects>0</connects></limits>
    <access><order>allow,deny</order></access>
  </io>
  <aliases/>
  <aci>
    <acl type='all'><user>jabberd</user></acl>
  </aci>
</router>
EOF

    {
        cat <<EOF
<!-- Written by scripts/jabberd2.sh: a private test instance (rewritten on start). -->
<sm>
  <id>sm</id>
  <pidfile>$dir/run/sm.pid</pidfile>
EOF
        router_client "$comp" "$pass"
        cat <<EOF
  <log type='file'><file>$dir/log/sm.log</file></log>
  <local>
$sm_ids  </local>
  <storage>
    <path>$MODULES</path>
    <driver>sqlite</driver>
    <sqlite>
      <dbname>$dir/db/sqlite.db</dbname>
      <busy-timeout>5000</busy-timeout>
    </sqlite>
  </storage>
  <aci>
    <acl type='all'><jid>admin@localhost</jid></acl>
  </aci>
EOF
        sm_modules
        cat <<EOF
  <discovery>
    <identity><category>server</category><type>im</type><name>jabberd2 test instance</name></identity>
    <agents/>
    <items></items>
  </discovery>
  <!-- auto-create: a user in authreg without a row in table active still gets a session. -->
  <user><auto-create/><template></template></user>
</sm>
EOF
    } >"$dir/etc/sm.xml"

    {
        cat <<EOF
<!-- Written by scripts/jabberd2.sh: a private test instance (rewritten on start). -->
<c2s>
  <id>c2s</id>
  <pidfile>$dir/run/c2s.pid</pidfile>
EOF
        router_client "$comp" "$pass"
        cat <<EOF
  <log type='file'><file>$dir/log/c2s.log</file></log>
  <local>
$c2s_ids    <ip>127.0.0.1</ip>
    <port>$c2s</port>
  </local>
  <io>
    <max_fds>1024</max_fds>
    <limits>
      <bytes>0</bytes>
      <stanzas>0</stanzas>
      <connects>0</connects>
      <stanzasize>1048576</stanzasize>
    </limits>
    <access><order>allow,deny</order></access>
    <check><interval>0</interval><idle>0</idle><keepalive>0</keepalive></check>
  </io>
  <authreg>
    <path>$MODULES</path>
    <module>sqlite</module>
    <!-- Offered without TLS (there is no STARTTLS: no pemfile). -->
    <mechanisms>
      <traditional><plain/></traditional>
      <sasl><plain/></sasl>
    </mechanisms>
    <ssl-mechanisms>
      <traditional><plain/></traditional>
      <sasl><plain/></sasl>
    </ssl-mechanisms>
    <sqlite>
      <dbname>$dir/db/sqlite.db</dbname>
      <busy-timeout>5000</busy-timeout>
      <password_type><plaintext/></password_type>
    </sqlite>
  </authreg>
</c2s>
EOF
    } >"$dir/etc/c2s.xml"
    chmod 600 "$dir/etc/router.xml" "$dir/etc/router-users.xml" "$dir/etc/sm.xml" "$dir/etc/c2s.xml"
}

make_db() {
    local db=$1/db/sqlite.db
    [ -s "$db" ] && return 0
    [ -r "$SCHEMA" ] || die "$SCHEMA not found (package jabberd2; a dpkg path-exclude of /usr/share/doc removes it): cannot create the SQLite database"
    zcat "$SCHEMA" | sqlite3 "$db.tmp" >/dev/null || { rm -f "$db.tmp"; die "could not create $db from $SCHEMA"; }
    mv -f "$db.tmp" "$db"
}

# stop_all DIR [now] - TERM (KILL at once with "now") c2s, sm and router.
stop_all() {
    local dir=$1 now=${2:-} d pid
    stop_watchdog "$dir"
    for d in c2s sm router; do
        pid=$(running_pid "$dir" "$d")
        [ -n "$pid" ] || pid=$(launched_pid "$dir" "$d")
        if [ -n "$pid" ]; then
            if [ "$now" = now ]; then
                kill -KILL "$pid" 2>/dev/null || true
            else
                kill_wait "$pid" "$STOP_TIMEOUT" || true
            fi
            log "stopped $d pid $pid ($dir)"
        fi
        rm -f "$dir/run/$d.pid" "$dir/run/$d.launched"
    done
}

# launched_pid DIR DAEMON - the pid we started DAEMON as, while it still runs
# DIR's config (it may die before writing its pidfile).
launched_pid() {
    pidfile_pid "$1/run/$2.launched" "$1/etc/$2.xml"
}

fail_start() {
    local dir=$1
    shift
    show_logs "$dir/log/router.out" "$dir/log/sm.out" "$dir/log/c2s.out" \
        "$dir/log/router.log" "$dir/log/sm.log" "$dir/log/c2s.log"
    stop_all "$dir" now >/dev/null 2>&1 || true
    die "$*"
}

# ready DIR C2S COMP - router and c2s accept connections and the router has
# bound sm (both hosts) and c2s.
ready() {
    local dir=$1 c2s=$2 comp=$3 router h
    router=$(launched_pid "$dir" router)
    [ -n "$router" ] && pid_listens "$router" "$comp" || return 1
    pid_listens "$(launched_pid "$dir" c2s)" "$c2s" || return 1
    for h in sm c2s $HOSTS; do
        grep -q -F "[$h] online" "$dir/log/router.log" 2>/dev/null || return 1
    done
    port_open "$comp" && port_open "$c2s"
}

cmd_start() {
    [ $# -eq 5 ] || usage
    local dir c2s=$2 comp=$3 jid=$4 secret=$5 d pid t0 deadline port
    dir=$(abs_dir "$1")
    check_port C2S_PORT "$c2s"
    check_port COMPONENT_PORT "$comp"
    [ "$c2s" != "$comp" ] || die "C2S_PORT and COMPONENT_PORT must differ"
    check_word COMPONENT_JID "$jid"
    check_word SECRET "$secret"
    check_word DIR "$dir"
    case "$secret$dir" in *[\<\>\&]*) die "SECRET and DIR must not contain <, > or & (they go into XML)" ;; esac
    check_owner_pid
    case "$jid" in localhost | other.localhost) die "COMPONENT_JID must not be one of the server's hosts ($jid)" ;; esac
    need_jabberd2

    mkdir -p "$dir"
    chmod 0755 "$dir"
    mkdir -p "$dir/etc" "$dir/db" "$dir/log" "$dir/run"
    chmod 0700 "$dir/etc" "$dir/db"

    for d in $DAEMONS; do
        pid=$(running_pid "$dir" "$d")
        [ -z "$pid" ] || die "jabberd2 $d of $dir is already running (pid $pid); run: $0 stop $dir"
    done
    for port in "$c2s" "$comp"; do
        ! port_open "$port" || die "port $port on 127.0.0.1 is already in use (another server or test?)"
    done

    make_db "$dir"
    write_config "$dir" "$c2s" "$comp" "$secret"
    # Fresh logs for this run, so a failure (and the readiness check) sees this run only.
    for d in $DAEMONS; do
        rm -f "$dir/run/$d.pid" "$dir/run/$d.launched"
        : >"$dir/log/$d.log"
    done

    t0=$(now_ms)
    # Interrupted while waiting: don't leave a half-started server behind.
    trap 'stop_all "$dir" now >/dev/null 2>&1 || true; exit 130' INT TERM HUP
    for d in $DAEMONS; do
        # setsid: own session (the caller's Ctrl-C does not reach it); every fd
        # redirected so a caller capturing our output is not kept waiting.
        setsid "$SBIN/jabberd2-$d" -c "$dir/etc/$d.xml" </dev/null >"$dir/log/$d.out" 2>&1 &
        # setsid does not fork here (a job of a non-interactive shell): this is the daemon.
        printf '%s\n' "$!" >"$dir/run/$d.launched"
        if [ "$d" = router ]; then
            # sm and c2s retry every second: start them once the router listens.
            deadline=$((t0 + START_TIMEOUT * 1000))
            until pid_listens "$!" "$comp"; do
                # It logs "unable to listen (Address already in use)" and exits 1.
                ! grep -q 'unable to listen' "$dir/log/router.log" 2>/dev/null \
                    || fail_start "$dir" "the jabberd2 router could not listen on port $comp (in use by another program?)"
                pid_alive "$!" || fail_start "$dir" "the jabberd2 router exited during start-up (see $dir/log/router.log)"
                [ "$(now_ms)" -lt "$deadline" ] \
                    || fail_start "$dir" "the jabberd2 router did not listen on port $comp within ${START_TIMEOUT}s"
                sleep 0.02
            done
        fi
    done

    deadline=$((t0 + START_TIMEOUT * 1000))
    until ready "$dir" "$c2s" "$comp"; do
        if grep -q 'unable to listen' "$dir/log/c2s.log" 2>/dev/null; then
            fail_start "$dir" "jabberd2 c2s could not listen on port $c2s (in use by another program?)"
        fi
        for d in $DAEMONS; do
            [ -n "$(launched_pid "$dir" "$d")" ] \
                || fail_start "$dir" "jabberd2 $d exited during start-up (see $dir/log/$d.log)"
        done
        [ "$(now_ms)" -lt "$deadline" ] \
            || fail_start "$dir" "jabberd2 was not ready (ports $c2s and $comp, sm and c2s bound at the router) within ${START_TIMEOUT}s"
        sleep 0.05
    done
    trap - INT TERM HUP
    pid=$(launched_pid "$dir" router)
    start_watchdog "$dir" "$pid" bash "$SELF" stop "$dir"
    log "jabberd2 ready in $(($(now_ms) - t0)) ms: c2s 127.0.0.1:$c2s, router (components, e.g. $jid) on 127.0.0.1:$comp, dir $dir"
    printf '%s\n' "$pid"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local dir
    dir=$(abs_dir "$1")
    [ -d "$dir" ] || return 0
    stop_all "$dir"
}

cmd_kill() {
    [ $# -eq 1 ] || usage
    local dir
    dir=$(abs_dir "$1")
    [ -d "$dir" ] || return 0
    stop_all "$dir" now
}

cmd_adduser() {
    [ $# -ge 4 ] && [ $((($# - 1) % 3)) -eq 0 ] || usage
    local dir db i sql=""
    dir=$(abs_dir "$1")
    shift
    db=$dir/db/sqlite.db
    need_cmd sqlite3 "package sqlite3"
    [ -s "$db" ] || die "no $db: run '$0 start $dir ...' first"
    for ((i = 1; i <= $#; i++)); do check_word "USER/HOST/PASSWORD" "${!i}"; done
    # check_word rules out quotes: the values can go into SQL literals as they are.
    while [ $# -ge 3 ]; do
        sql="$sql
DELETE FROM authreg WHERE username = '$1' AND realm = '$2';
INSERT INTO authreg (username, realm, password) VALUES ('$1', '$2', '$3');
INSERT INTO active (\"collection-owner\", time)
    SELECT '$1@$2', strftime('%s', 'now')
    WHERE NOT EXISTS (SELECT 1 FROM active WHERE \"collection-owner\" = '$1@$2');"
        shift 3
    done
    sqlite3 -cmd '.timeout 10000' "$db" "BEGIN IMMEDIATE;$sql
COMMIT;" >/dev/null || die "could not write the users into $db"
    log "users written into $db"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    kill) cmd_kill "$@" ;;
    adduser) cmd_adduser "$@" ;;
    -h | --help | help) usage ;;
    *) log "unknown subcommand '$cmd'"; usage ;;
esac
