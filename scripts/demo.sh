#!/usr/bin/env bash
# demo.sh - try the gateway locally: installs the dependencies, starts a private
# Prosody on 127.0.0.1 (c2s 5222, component port 5347, component
# gateway.localhost, secret "secret"), an IRC server (ngIRCd on 6667) and a mail
# server (Postfix + Dovecot: IMAP 1143, SMTP submission 1145, domain
# example.test), registers alice@localhost (password "alice") and the mailboxes
# alice@example.test / bob@example.test (passwords "alice" / "bob"), then runs the
# gateway in the foreground with config/gateway.example.toml. Ctrl-C stops the
# gateway, and the servers are stopped on exit.
#
# Usage: scripts/demo.sh [EXTRA_GATEWAY_ARGS...]
# State lives in /tmp/xmpp-gateway-demo (Prosody in prosody/, gateway store in data/).
# Needs root the first time (apt-get), and ports 5222 and 5347 free.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEMO_DIR=/tmp/xmpp-gateway-demo
PROSODY_DIR=$DEMO_DIR/prosody
IRC_DIR=$DEMO_DIR/ngircd
MAIL_DIR=$DEMO_DIR/mail
IRC_PORT=6667
MAIL_BASE_PORT=1143
C2S_PORT=5222
COMPONENT_PORT=5347
HTTP_UPLOAD_PORT=5280
COMPONENT_JID=gateway.localhost
SECRET=secret
CONFIG=config/gateway.example.toml

PROG=demo.sh
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

[ -f "$CONFIG" ] || die "$CONFIG not found (run from a full checkout of the repository)"
ensure_cargo
# The build test.sh and bench.sh use too (lib.sh): nothing is compiled twice.
build_release

ensure_deps "the demo's servers"

# shellcheck disable=SC2317 # runs from the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    log "stopping Prosody, ngIRCd, Postfix and Dovecot"
    bash scripts/prosody.sh stop "$PROSODY_DIR" || true
    bash scripts/ngircd.sh stop "$IRC_DIR" || true
    bash scripts/mail.sh stop "$MAIL_DIR" || true
    exit "$status"
}

# A previous demo killed hard may have left its servers running.
bash scripts/prosody.sh stop "$PROSODY_DIR"
bash scripts/ngircd.sh stop "$IRC_DIR"
bash scripts/mail.sh stop "$MAIL_DIR"
mkdir -p "$DEMO_DIR/data"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
PROSODY_HTTP_PORT=$HTTP_UPLOAD_PORT bash scripts/prosody.sh start "$PROSODY_DIR" "$C2S_PORT" "$COMPONENT_PORT" "$COMPONENT_JID" "$SECRET" >/dev/null
# adduser sets the password when alice already exists, so re-runs are fine.
bash scripts/prosody.sh adduser "$PROSODY_DIR" alice localhost alice
bash scripts/ngircd.sh start "$IRC_DIR" "$IRC_PORT" >/dev/null
bash scripts/mail.sh start "$MAIL_DIR" "$MAIL_BASE_PORT" >/dev/null
bash scripts/mail.sh adduser "$MAIL_DIR" alice@example.test alice
bash scripts/mail.sh adduser "$MAIL_DIR" bob@example.test bob

cat >&2 <<EOF

==================================================================
 xmpp-gateway demo
   XMPP server : Prosody on 127.0.0.1:$C2S_PORT (no TLS required)
   Log in as   : alice@localhost   password: alice
   Gateway     : $COMPONENT_JID (component on 127.0.0.1:$COMPONENT_PORT)
   In your XMPP client, set the server/host to 127.0.0.1 port $C2S_PORT,
   allow plain-text authentication, then discover or register with
   $COMPONENT_JID (service discovery / "add transport").
   IRC         : join #test%127.0.0.1@$COMPONENT_JID/yournick
   Email       : register email_address alice@example.test, password alice;
                 write to bob\40example.test@$COMPONENT_JID (bob's mailbox:
                 IMAP 127.0.0.1:$MAIL_BASE_PORT, bob@example.test / bob);
                 attachments go to upload.localhost (http://127.0.0.1:$HTTP_UPLOAD_PORT/)
   Prosody logs: $PROSODY_DIR/prosody.log
   Stop with Ctrl-C.
==================================================================

EOF

status=0
GATEWAY__STORAGE__PATH="$DEMO_DIR/data" \
    "${CARGO_TARGET_DIR:-target}/release/xmpp-gateway" --config "$CONFIG" "$@" || status=$?
exit "$status"
