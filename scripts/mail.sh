#!/usr/bin/env bash
# mail.sh - run a private mail system on 127.0.0.1 for tests: Postfix 3.7 (SMTP,
# SASL through Dovecot) and Dovecot 2.3 (IMAP, LMTP) on one set of Maildirs, for the
# virtual domain "example.test". Debian 12 packages postfix, dovecot-core,
# dovecot-imapd, dovecot-lmtpd (scripts/install-deps.sh). Must run as root.
#
# Usage:
#   scripts/mail.sh start DIR BASE_PORT
#       Creates DIR (everything lives inside it), starts Dovecot, then Postfix,
#       waits until all five ports accept connections (20 s at most) and prints the
#       pid of the Dovecot master on stdout. Works again on an existing DIR: the
#       configuration is rewritten; mailboxes, users, queue and certificate are kept.
#       Ports, all on 127.0.0.1:
#         BASE_PORT     IMAP, plain; LOGIN and AUTH PLAIN/LOGIN allowed without TLS,
#                       STARTTLS offered
#         BASE_PORT+1   IMAPS (implicit TLS)
#         BASE_PORT+2   SMTP "submission": AUTH PLAIN/LOGIN allowed without TLS,
#                       STARTTLS offered
#         BASE_PORT+3   SMTP with STARTTLS required (before MAIL FROM); AUTH is
#                       offered only after STARTTLS
#         BASE_PORT+4   SMTPS (implicit TLS, "wrappermode")
#       TLS: a self-signed certificate (EC P-256, CA:FALSE, serverAuth, SAN
#       DNS:localhost and IP:127.0.0.1) in DIR/tls/cert.pem (key DIR/tls/key.pem),
#       made once per DIR. Trust cert.pem as a root: rustls (webpki) accepts it
#       (it is not a CA certificate, so webpki does not refuse it as an end entity).
#       Mail: mail for existing mailboxes of example.test is accepted on every SMTP
#       port from anyone, with or without AUTH (as an MX would), and delivered
#       over LMTP to Dovecot. An unknown mailbox is refused at RCPT TO (550 5.1.1).
#       Mail to any other domain is refused at RCPT TO (554 5.7.1 Relay access
#       denied), authenticated or not; nothing can leave the machine (there is no
#       SMTP client in master.cf; default_transport and relay_transport are error:).
#       Postfix rewrites no headers and adds none except its Received: line (no
#       Message-ID or Date is added when missing); Dovecot adds Return-Path:,
#       Delivered-To: and Received: on delivery. Stored mail has LF line ends; IMAP
#       FETCH returns CRLF. Deliveries run one at a time, so mails submitted one
#       after the other reach the INBOX (and get UIDs) in that order.
#   scripts/mail.sh stop DIR
#       Stops Postfix (TERM to its master, as "postfix -c DIR/postfix stop" does,
#       KILL after 5 s, then TERM/KILL to anything left in its session) and Dovecot
#       (the same for its master and session). Idempotent. Takes about 1.1 s (the
#       time the Dovecot master takes to exit after TERM).
#   scripts/mail.sh adduser DIR USER@example.test PASSWORD
#       Adds a mailbox, or sets the password of an existing one (USER: letters,
#       digits, '.', '_', '-'; stored in lower case). Works while the servers run,
#       effective for the next connection: Dovecot reads a new mailbox's
#       passwd-file at its first lookup, and each Postfix smtpd process serves one
#       connection only (max_use=1) and reads the mailbox table when it starts. A
#       password change waits for the next second (up to 1 s) before returning,
#       because Dovecot stat()s a known passwd-file at most once a second.
#       Logins: IMAP LOGIN/AUTHENTICATE and SMTP AUTH take the full address and the
#       password. A failed login (IMAP or SMTP AUTH) is answered after about 0.5 s;
#       Dovecot's growing per-IP auth penalty (up to 15 s) is turned off.
#   scripts/mail.sh expunge DIR USER@example.test
#       Deletes every message in the INBOX of that mailbox (doveadm expunge).
#
# Processes: the Dovecot master is the pid printed (also in DIR/run/dovecot/master.pid);
# it runs in the foreground (-F) in its own session. The Postfix master daemonizes
# (it calls setsid itself); its pid is in DIR/postfix-queue/pid/master.pid (padded
# with spaces) and its environment holds MAIL_CONFIG=DIR/postfix. "postfix -c
# DIR/postfix stop" also stops it, but "stop" here is faster (see above).
#
# Several instances may run at once with different DIRs and port ranges: each has its
# own config, queue_directory (which holds the master.pid lock), data_directory
# (master.lock), syslog_name, Dovecot base_dir/state_dir/instance_name and sockets.
# DIR must be at most 70 characters long (unix socket paths are limited to 107
# bytes). DIR and its parents must be searchable by the users "postfix", "dovecot",
# "dovenull" and uid 5000 (the owner of the mailboxes): parents inside /tmp or
# $TMPDIR owned by the caller get o+x, DIR itself becomes 0755.
#
# Environment:
#   HARNESS_OWNER_PID  optional pid (e.g. the test process): when that process
#                      exits while the servers run, they are stopped.
#
# Files in DIR: dovecot.conf, users/ADDRESS (one Dovecot passwd-file per mailbox,
# {PLAIN} password), vmailbox (Postfix texthash of the mailboxes, made from users/),
# postfix/{main.cf,master.cf},
# postfix-queue/, postfix-data/, run/ (dovecot/ base_dir, dovecot-lmtp and
# dovecot-auth sockets), state/, mail/example.test/USER/Maildir, tls/,
# log/{dovecot.log,postfix.log,dovecot.out,postfix.out}.
#
# Measured here (Debian 12, Postfix 3.7.11, Dovecot 2.3.19, 2 CPUs, loaded):
#   start (both servers, until all five ports accept): 0.5-0.6 s (first start of
#     a DIR, with the certificate: about 0.8 s); stop: 1.1-1.2 s; RSS of all
#     processes summed (shared pages counted in each): about 90 MiB.
#   One small mail, unauthenticated SMTP on BASE_PORT+2: the DATA reply (250) after
#     11-20 ms, the file in Maildir/new 2-3 ms later (median 15 ms from connect).
#   IMAP IDLE: "* N EXISTS" arrives 0.50 s after the file is in the Maildir
#     (Dovecot's fixed 500 ms notification delay; mails arriving within those
#     0.5 s are reported together, so a later one of them can come sooner).
set -euo pipefail

PROG=mail.sh
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_TIMEOUT=20 # seconds, until all five ports accept
STOP_TIMEOUT=5   # seconds
DOMAIN=example.test
VMAIL_UID=5000 # owner of every mailbox (no passwd entry needed)
MAX_DIR_LEN=70

usage() {
    cat >&2 <<'EOF'
usage: mail.sh start DIR BASE_PORT
       mail.sh stop DIR
       mail.sh adduser DIR USER@example.test PASSWORD
       mail.sh expunge DIR USER@example.test
EOF
    exit 2
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (Postfix's master and Dovecot's need it)"
}

# A short tag that tells instances apart in logs and process titles.
instance_tag() { printf '%s' "$1" | cksum | awk '{ printf "%08x", $1 }'; }

# The pid of DIR's running Dovecot master, or nothing.
dovecot_pid() {
    pidfile_pid "$1/run/dovecot/master.pid" "$1/dovecot.conf"
}

# The pid of DIR's running Postfix master, or nothing. (Its command line is just
# ".../master -w": it is recognised by its environment, MAIL_CONFIG=DIR/postfix.)
postfix_pid() {
    local dir=$1 pid
    [ -s "$dir/postfix-queue/pid/master.pid" ] || return 0
    pid=$(tr -dc '0-9' <"$dir/postfix-queue/pid/master.pid" 2>/dev/null || true)
    if pid_alive "$pid" && pid_cmdline_has "$pid" master \
        && tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "MAIL_CONFIG=$dir/postfix"; then
        printf '%s\n' "$pid"
    fi
}

# in_session SID - pids of the live processes in session SID. Like session_pids in
# lib.sh, but with one cat and one awk instead of a subshell per process.
in_session() {
    # /proc/PID/stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces.
    # Processes exit while cat reads: its failure must not fail the pipeline (pipefail).
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v sid="$1" '{
        pid = $1
        rest = $0
        sub(/^.*\) /, "", rest)
        split(rest, f, " ")
        if (f[4] == sid && f[1] != "Z") print pid
    }'
}

# kill_session SID NAME - TERM, then KILL, whatever is left in session SID.
kill_session() {
    local sid=$1 name=$2 pids i
    pids=$(in_session "$sid")
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086 # a list of pids
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        pids=$(in_session "$sid")
        [ -n "$pids" ] || return 0
        sleep 0.1
    done
    log "killing leftover $name processes: $(tr '\n' ' ' <<<"$pids")"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        [ -n "$(in_session "$sid")" ] || return 0
        sleep 0.1
    done
    log "warning: $name processes still alive: $(in_session "$sid" | tr '\n' ' ')"
}

# ensure_reachable DIR - the service users and uid 5000 must be able to search DIR
# and every parent. Parents inside /tmp or $TMPDIR that we own get o+x (search
# only, no listing); anything else is an error.
ensure_reachable() {
    local dir=$1 p='' part tmp=${TMPDIR:-/tmp} who ok
    local -a parts
    IFS=/ read -r -a parts <<<"${dir#/}"
    for part in "${parts[@]}"; do
        [ -n "$part" ] || continue
        p="$p/$part"
        ok=yes
        for who in postfix dovecot dovenull "$VMAIL_UID"; do
            if [ "$who" = "$VMAIL_UID" ]; then
                setpriv --reuid="$VMAIL_UID" --regid="$VMAIL_UID" --clear-groups -- test -x "$p" || ok=no
            else
                runuser -u "$who" -- test -x "$p" || ok=no
            fi
        done
        [ "$ok" = no ] || continue
        case "$p" in
            /tmp/* | "${tmp%/}"/*)
                if [ -O "$p" ]; then
                    log "granting search permission (o+x) on $p so that the mail servers can reach $dir"
                    chmod o+x "$p"
                    continue
                fi
                ;;
        esac
        die "the mail servers' users cannot enter $p (mode $(stat -c %a "$p")); DIR and all its parents must be searchable: chmod o+x $p, or use another DIR"
    done
}

make_cert() {
    make_server_cert "$1/tls"
}

write_dovecot_config() {
    local dir=$1 base=$2 tag=$3
    cat >"$dir/dovecot.conf.tmp" <<EOF
# Written by scripts/mail.sh: a private test instance. Do not edit (rewritten on start).
instance_name = mailtest-$tag
base_dir = $dir/run/dovecot
state_dir = $dir/state
log_path = $dir/log/dovecot.log
protocols = imap lmtp
hostname = mail.$DOMAIN
listen = 127.0.0.1
shutdown_clients = yes

ssl = yes
ssl_cert = <$dir/tls/cert.pem
ssl_key = <$dir/tls/key.pem
ssl_dh = </usr/share/dovecot/dh.pem

disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Lu
# A failed login is answered within 0.5 s (the default is 2 s).
auth_failure_delay = 0

# One passwd-file per mailbox (users/ADDRESS): a mailbox added while Dovecot runs
# is found at once (a shared file is stat()ed at most once a second).
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu $dir/users/%Lu
}
userdb {
  driver = passwd-file
  args = username_format=%Lu $dir/users/%Lu
  default_fields = uid=$VMAIL_UID gid=$VMAIL_UID home=$dir/mail/%Ld/%Ln
}
first_valid_uid = $VMAIL_UID
last_valid_uid = $VMAIL_UID
first_valid_gid = $VMAIL_UID
last_valid_gid = $VMAIL_UID
mail_location = maildir:~/Maildir

namespace inbox {
  inbox = yes
  # As Debian's own 15-mailboxes.conf: the Sent folder is marked for clients
  # (RFC 6154 SPECIAL-USE), where the gateway files its copies of mail sent.
  mailbox Sent {
    special_use = \Sent
    auto = subscribe
  }
}

# Room for 1,000 and more IMAP IDLE sessions at once (the bench's email scenario at
# --email-users 1000, issue 12): each session is an imap process of its own (the
# default limit is 100), and each process is also a client of the log, anvil and
# config services (the default client limit is 1,000).
default_process_limit = 2500
default_client_limit = 10000

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $base
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $((base + 1))
    ssl = yes
  }
}
service lmtp {
  unix_listener $dir/run/dovecot-lmtp {
    mode = 0600
    user = postfix
    group = postfix
  }
}
# No auth penalty: Dovecot would otherwise delay every login from 127.0.0.1 by up to
# 15 s after failed ones (all tests share that address). mode 0 = no such socket,
# and without it the auth process silently turns the penalty off.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service auth {
  unix_listener $dir/run/dovecot-auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
protocol lmtp {
  postmaster_address = postmaster@$DOMAIN
}
EOF
    mv -f "$dir/dovecot.conf.tmp" "$dir/dovecot.conf"
}

write_postfix_config() {
    local dir=$1 base=$2 tag=$3 name
    name=mailtest-$tag
    mkdir -p "$dir/postfix"
    chmod 0755 "$dir/postfix"
    cat >"$dir/postfix/main.cf.tmp" <<EOF
# Written by scripts/mail.sh: a private test instance. Do not edit (rewritten on start).
compatibility_level = 3.6
queue_directory = $dir/postfix-queue
data_directory = $dir/postfix-data
mail_owner = postfix
setgid_group = postdrop
syslog_name = $name
maillog_file = $dir/log/postfix.log
maillog_file_prefixes = $dir/log

myhostname = mail.$DOMAIN
mydomain = $DOMAIN
myorigin = $DOMAIN
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
readme_directory = no

# Nothing leaves the machine.
default_transport = error:mail to other domains is not delivered by this test server
relay_transport = error:mail to other domains is not delivered by this test server
local_transport = error:local delivery is disabled on this test server
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = permit_sasl_authenticated, reject_unauth_destination
# Big enough for the 50 MB mail of the hostile-mail test (the default is 10 MB).
message_size_limit = 104857600
mailbox_size_limit = 0

virtual_mailbox_domains = $DOMAIN
virtual_mailbox_maps = texthash:$dir/vmailbox
virtual_alias_maps =
virtual_transport = lmtp:unix:$dir/run/dovecot-lmtp
# One delivery at a time: mails submitted one after the other reach the INBOX in
# that order (with the default 20 parallel LMTP deliveries they need not).
lmtp_destination_concurrency_limit = 1

# Keep what clients send: no header rewriting, no added Message-ID/Date/From.
local_header_rewrite_clients =

smtpd_banner = \$myhostname ESMTP test server
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = $dir/run/dovecot-auth
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
smtpd_tls_chain_files = $dir/tls/key.pem, $dir/tls/cert.pem
smtpd_tls_security_level = may
smtpd_tls_auth_only = no
smtpd_tls_loglevel = 0
lmtp_tls_security_level = none

# Tests: no throttling, and quick retries after Dovecot was down.
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_error_sleep_time = 0
in_flow_delay = 0
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 10s
transport_retry_time = 2s
delay_warning_time = 0
EOF
    # Each smtpd serves one connection (max_use=1): it reads the texthash vmailbox
    # when it starts, so a mailbox added by "adduser" is known to the next connection.
    cat >"$dir/postfix/master.cf.tmp" <<EOF
# Written by scripts/mail.sh. No "smtp" client, "local", "virtual" or "relay":
# nothing can be sent off this machine.
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:$((base + 2)) inet n - n - - smtpd
  -o syslog_name=$name/submission
  -o max_use=1
  -o smtpd_tls_security_level=may
  -o smtpd_tls_auth_only=no
127.0.0.1:$((base + 3)) inet n - n - - smtpd
  -o syslog_name=$name/smtp-starttls
  -o max_use=1
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
127.0.0.1:$((base + 4)) inet n - n - - smtpd
  -o syslog_name=$name/smtps
  -o max_use=1
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    cool_down "$dir/postfix/main.cf.tmp" "$dir/postfix/master.cf.tmp"
    mv -f "$dir/postfix/main.cf.tmp" "$dir/postfix/main.cf"
    mv -f "$dir/postfix/master.cf.tmp" "$dir/postfix/master.cf"
}

# cool_down FILE... - set the mtime 10 s into the past. Postfix re-reads a
# configuration file or texthash table modified in the last second every 300 ms
# until it is older ("pausing to let file cool down"): a fresh main.cf delays
# "postfix check/start" by 2 s, a fresh vmailbox every smtpd start-up.
cool_down() {
    touch -d "@$(($(date +%s) - 10))" "$@"
}

# write_vmailbox DIR - the Postfix table of mailboxes, from DIR/users/.
write_vmailbox() {
    local dir=$1 f
    for f in "$dir"/users/*@*; do
        [ -f "$f" ] || continue
        printf '%s OK\n' "${f##*/}"
    done >"$dir/vmailbox.tmp"
    chmod 0644 "$dir/vmailbox.tmp"
    cool_down "$dir/vmailbox.tmp"
    mv -f "$dir/vmailbox.tmp" "$dir/vmailbox"
}

# Directories and files both servers need; ownership is reset on every start.
prepare_dir() {
    local dir=$1
    mkdir -p "$dir" "$dir/run" "$dir/state" "$dir/log" "$dir/mail" "$dir/users" \
        "$dir/postfix-queue" "$dir/postfix-data"
    chown root:root "$dir" "$dir/run" "$dir/postfix-queue"
    chmod 0755 "$dir" "$dir/run" "$dir/state" "$dir/log" "$dir/postfix-queue"
    chown postfix:postfix "$dir/postfix-data"
    chmod 0700 "$dir/postfix-data"
    chown "$VMAIL_UID:$VMAIL_UID" "$dir/mail"
    chmod 0700 "$dir/mail"
    chown root:dovecot "$dir/users"
    chmod 0750 "$dir/users"
    write_vmailbox "$dir"
}

# listens_all PID PORT... - true if process PID itself holds a listening TCP
# socket on each PORT (like pid_listens in lib.sh, but reads PID's fds once: the
# Dovecot and Postfix masters have 150-250 fds, too many for a bash loop per port).
listens_all() {
    local pid=$1 port porthex inodes inode links found
    shift
    links=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 -type l -printf '%l\n' 2>/dev/null) || return 1
    for port in "$@"; do
        porthex=$(printf '%04X' "$port")
        # /proc/net/tcp columns: sl local_address rem_address st ... inode (10th); 0A = LISTEN
        inodes=$(awk -v p=":$porthex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null || true)
        [ -n "$inodes" ] || return 1
        found=no
        for inode in $inodes; do
            if grep -qxF "socket:[$inode]" <<<"$links"; then
                found=yes
                break
            fi
        done
        [ "$found" = yes ] || return 1
    done
}

# all_listening DOVECOT_PID POSTFIX_PID BASE - true if each port is held by its
# server and accepts connections.
all_listening() {
    local dpid=$1 ppid=$2 base=$3 p
    [ -n "$ppid" ] || return 1
    listens_all "$dpid" "$base" "$((base + 1))" || return 1
    listens_all "$ppid" "$((base + 2))" "$((base + 3))" "$((base + 4))" || return 1
    for ((p = base; p <= base + 4; p++)); do
        port_open "$p" || return 1
    done
}

cmd_start() {
    [ $# -eq 2 ] || usage
    local dir base=$2 tag dpid ppid t0 deadline p out
    dir=$(abs_dir "$1")
    check_port BASE_PORT "$base"
    [ "$base" -le 65531 ] || die "BASE_PORT must be at most 65531 (it uses BASE_PORT..BASE_PORT+4)"
    check_word DIR "$dir"
    [ "${#dir}" -le "$MAX_DIR_LEN" ] || die "DIR is too long (${#dir} > $MAX_DIR_LEN characters: unix socket paths would exceed 107 bytes): $dir"
    need_root
    check_owner_pid
    need_cmd dovecot "package dovecot-core"
    need_cmd doveadm "package dovecot-core"
    need_cmd postfix "package postfix"
    [ -x /usr/lib/dovecot/imap ] || die "Dovecot's imap is missing; run scripts/install-deps.sh (package dovecot-imapd)"
    [ -x /usr/lib/dovecot/lmtp ] || die "Dovecot's lmtp is missing; run scripts/install-deps.sh (package dovecot-lmtpd)"
    for p in postfix dovecot dovenull; do
        id "$p" >/dev/null 2>&1 || die "no system user '$p' (run scripts/install-deps.sh)"
    done

    dpid=$(dovecot_pid "$dir")
    ppid=$(postfix_pid "$dir")
    [ -z "$dpid$ppid" ] || die "the mail servers of $dir are already running (Dovecot ${dpid:-not running}, Postfix ${ppid:-not running}); run: $0 stop $dir"
    for ((p = base; p <= base + 4; p++)); do
        ! port_open "$p" || die "port $p on 127.0.0.1 is already in use (another server or test?)"
    done

    t0=$(now_ms)
    prepare_dir "$dir"
    ensure_reachable "$dir"
    make_cert "$dir"
    tag=$(instance_tag "$dir")
    write_dovecot_config "$dir" "$base" "$tag"
    write_postfix_config "$dir" "$base" "$tag"
    # (anvil-auth-penalty: a stale socket from an older configuration would turn
    # the penalty-off trick into a logged error.)
    rm -f "$dir/run/dovecot/master.pid" "$dir/postfix-queue/pid/master.pid" \
        "$dir/run/dovecot/anvil-auth-penalty"
    # Fresh logs for this run, so that a failure shows this run's errors.
    : >"$dir/log/dovecot.log"
    : >"$dir/log/postfix.log"

    # Dovecot first: Postfix delivers to its LMTP socket and asks its auth socket.
    # setsid: own session, so the caller's signals (Ctrl-C) and terminal don't reach it.
    # All fds are redirected so a caller capturing our output does not wait on a server.
    setsid dovecot -F -c "$dir/dovecot.conf" </dev/null >"$dir/log/dovecot.out" 2>&1 &
    dpid=$! # -F: no fork, and setsid does not fork here (a job of a non-interactive shell)
    ppid=''
    # Interrupted while waiting: don't leave half-started servers behind.
    trap 'kill_wait "$dpid" 2 >/dev/null 2>&1 || true; bash "$SELF" stop "$dir" >/dev/null 2>&1 || true; exit 130' INT TERM HUP

    if ! out=$(postfix -c "$dir/postfix" check </dev/null 2>&1); then
        printf '%s\n' "$out" >&2
        bash "$SELF" stop "$dir" || true
        die "postfix check failed for $dir/postfix"
    fi
    [ -z "$out" ] || printf '%s\n' "$out" >"$dir/log/postfix-check.out"
    # "postfix start" waits until the master has initialised (master -w), and
    # fails if it cannot bind a port.
    if ! postfix -c "$dir/postfix" start </dev/null >"$dir/log/postfix.out" 2>&1; then
        show_logs "$dir/log/postfix.out" "$dir/log/postfix.log"
        kill_wait "$dpid" "$STOP_TIMEOUT" >/dev/null 2>&1 || true
        bash "$SELF" stop "$dir" || true
        if grep -q 'Address already in use' "$dir/log/postfix.log" 2>/dev/null; then
            die "Postfix could not listen on ports $((base + 2))-$((base + 4)): a port is already in use by another program"
        fi
        die "Postfix did not start (see $dir/log/postfix.log)"
    fi

    deadline=$((t0 + START_TIMEOUT * 1000))
    while :; do
        if ! pid_alive "$dpid"; then
            wait "$dpid" 2>/dev/null || true
            show_logs "$dir/log/dovecot.out" "$dir/log/dovecot.log"
            bash "$SELF" stop "$dir" || true
            if grep -q 'Address already in use' "$dir/log/dovecot.log" "$dir/log/dovecot.out" 2>/dev/null; then
                die "Dovecot could not listen on ports $base-$((base + 1)): a port is already in use by another program"
            fi
            die "Dovecot exited during start-up (see $dir/log/dovecot.log)"
        fi
        [ -n "$ppid" ] || ppid=$(postfix_pid "$dir")
        if all_listening "$dpid" "$ppid" "$base"; then
            break
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            show_logs "$dir/log/dovecot.out" "$dir/log/dovecot.log" "$dir/log/postfix.out" "$dir/log/postfix.log"
            bash "$SELF" stop "$dir" || true
            die "the mail servers did not accept connections on ports $base-$((base + 4)) within ${START_TIMEOUT}s"
        fi
        sleep 0.05
    done

    trap - INT TERM HUP
    [ "$(dovecot_pid "$dir")" = "$dpid" ] || log "warning: $dir/run/dovecot/master.pid does not name pid $dpid"
    start_watchdog "$dir" "$dpid" bash "$SELF" stop "$dir"
    log "mail servers ready in $(($(now_ms) - t0)) ms: IMAP $base, IMAPS $((base + 1)), submission $((base + 2)), SMTP+STARTTLS $((base + 3)), SMTPS $((base + 4)) on 127.0.0.1 (Dovecot pid $dpid, Postfix master pid $ppid), dir $dir"
    printf '%s\n' "$dpid"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local dir ppid dpid stopped=''
    dir=$(abs_dir "$1")
    need_root
    stop_watchdog "$dir"
    ppid=$(postfix_pid "$dir")
    dpid=$(dovecot_pid "$dir")

    # Postfix: what "postfix -c DIR/postfix stop" does (TERM to the master, which
    # passes it on to its process group, then wait; KILL after 5 s), but polling
    # every 0.1 s: postfix-script polls every second, so a stop took >= 1 s.
    # Dovecot gets its TERM at the same time: its master takes about 1.1 s to exit.
    [ -z "$ppid" ] || kill -TERM "$ppid" 2>/dev/null || true
    [ -z "$dpid" ] || kill -TERM "$dpid" 2>/dev/null || true
    if [ -n "$ppid" ]; then
        kill_wait "$ppid" "$STOP_TIMEOUT" || die "could not stop the Postfix master pid $ppid"
        # The master is a session leader (it calls setsid): its children are in
        # session $ppid.
        kill_session "$ppid" Postfix
        stopped="Postfix master $ppid"
    fi
    rm -f "$dir/postfix-queue/pid/master.pid"
    if [ -n "$dpid" ]; then
        kill_wait "$dpid" "$STOP_TIMEOUT" || die "could not stop the Dovecot master pid $dpid"
        kill_session "$dpid" Dovecot
        stopped="${stopped:+$stopped, }Dovecot master $dpid"
    fi
    rm -f "$dir/run/dovecot/master.pid"
    [ -z "$stopped" ] || log "stopped $stopped ($dir)"
}

# check_address ADDRESS - a mailbox of example.test; prints it in lower case.
check_address() {
    local address=$1 local_part
    case "$address" in
        *@*) ;;
        *) die "ADDRESS must be USER@$DOMAIN, got '$address'" ;;
    esac
    local_part=${address%@*}
    address=$(printf '%s' "$address" | tr '[:upper:]' '[:lower:]')
    [ "${address#*@}" = "$DOMAIN" ] || die "ADDRESS must be in domain $DOMAIN, got '$1'"
    # (Dovecot's default auth_username_chars: no '+'.)
    case "$local_part" in
        '' | *[!A-Za-z0-9._-]* | .* | *.) die "the user part of '$1' must be letters, digits, '.', '_' or '-'" ;;
    esac
    printf '%s\n' "$address"
}

cmd_adduser() {
    [ $# -eq 3 ] || usage
    local dir address password=$3 file old_mtime=''
    dir=$(abs_dir "$1")
    address=$(check_address "$2")
    check_word PASSWORD "$password"
    case "$password" in *:*) die "PASSWORD must not contain ':' (passwd-file separator)" ;; esac
    need_root
    if [ ! -f "$dir/dovecot.conf" ] || [ ! -d "$dir/users" ]; then
        die "no mail servers in $dir: run '$0 start $dir BASE_PORT' first"
    fi
    file=$dir/users/$address
    # One lock per DIR: adduser may run concurrently.
    exec 9>"$dir/users.lock"
    flock 9
    [ ! -e "$file" ] || old_mtime=$(stat -c %Y "$file")
    printf '%s:{PLAIN}%s::::::\n' "$address" "$password" >"$file.tmp"
    chown root:dovecot "$file.tmp"
    chmod 0640 "$file.tmp"
    # Dovecot re-reads a passwd-file when its mtime (seconds) or size changed.
    if [ -n "$old_mtime" ] && [ "$(stat -c %Y "$file.tmp")" = "$old_mtime" ]; then
        touch -d "@$((old_mtime - 1))" "$file.tmp"
    fi
    mv -f "$file.tmp" "$file"
    write_vmailbox "$dir"
    exec 9>&-
    if [ -n "$old_mtime" ]; then
        # A new password: Dovecot stat()s a known passwd-file at most once a
        # second, so wait for the next second before anyone logs in again.
        local ms=$((1010 - $(now_ms) % 1000))
        sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
        log "password of $address changed"
    else
        log "mailbox $address added"
    fi
}

cmd_expunge() {
    [ $# -eq 2 ] || usage
    local dir address out
    dir=$(abs_dir "$1")
    address=$(check_address "$2")
    need_root
    [ -f "$dir/dovecot.conf" ] || die "no $dir/dovecot.conf: run '$0 start $dir BASE_PORT' first"
    [ -f "$dir/users/$address" ] || die "no mailbox $address in $dir/users"
    if ! out=$(doveadm -c "$dir/dovecot.conf" expunge -u "$address" mailbox INBOX all </dev/null 2>&1); then
        printf '%s\n' "$out" >&2
        die "could not empty the INBOX of $address"
    fi
    log "INBOX of $address emptied"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    adduser) cmd_adduser "$@" ;;
    expunge) cmd_expunge "$@" ;;
    -h | --help | help) usage ;;
    *) log "unknown subcommand '$cmd'"; usage ;;
esac
