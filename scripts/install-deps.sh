#!/usr/bin/env bash
# install-deps.sh - install the Debian packages the integration tests need:
# XMPP servers Prosody, ejabberd (whose dependency erlang-base brings epmd, which
# scripts/ejabberd-cluster.sh runs privately for its two nodes) and jabberd2 (with
# sqlite3, which creates its databases), the IRC servers ngIRCd and InspIRCd (with
# Atheme services, for SASL), the mail servers Postfix (SMTP) and Dovecot (IMAP,
# LMTP) with swaks (an SMTP client, with the Perl TLS modules it needs for
# STARTTLS), biboumi (the peer gateway of the benchmarks), slixmpp (a real client
# library for the roster tests: tests/clients/), openssl, CA certificates.
#
# Usage: scripts/install-deps.sh
#
# Idempotent and non-interactive. Must run as root (it uses apt-get), unless
# every package is already installed, in which case it does nothing and exits 0.
# Before installing it creates /usr/sbin/policy-rc.d ("exit 101") if absent, so
# that package postinst scripts do not start system-wide daemons (jabberd2's runs
# `invoke-rc.d jabberd2 start`: router, sm, c2s and s2s on 5347, 5222 and 5269; its
# systemd units are only enabled, and nothing runs them without systemd), and it
# preseeds debconf "postfix/main_mailer_type" = "No configuration" so that the
# postfix package asks nothing and configures no system-wide mail server (the
# tests run their own instances: scripts/mail.sh).
# To add servers for later tests, extend PACKAGES below.
set -euo pipefail

# All packages the tests need, in one place.
PACKAGES="prosody prosody-modules python3-slixmpp lua-unbound lua-event lua-sec ejabberd jabberd2 sqlite3 ngircd openssl ca-certificates \
dovecot-core dovecot-imapd dovecot-lmtpd postfix swaks libnet-ssleay-perl libio-socket-ssl-perl \
inspircd atheme-services biboumi postgresql postgresql-client"

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Print the packages from PACKAGES that are not fully installed.
missing_packages() {
    local pkg status
    for pkg in $PACKAGES; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        if [ "$status" != "install ok installed" ]; then
            printf '%s\n' "$pkg"
        fi
    done
}

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian/Ubuntu only"

mapfile -t missing < <(missing_packages)
if [ "${#missing[@]}" -eq 0 ]; then
    log "all packages already installed ($PACKAGES)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    die "missing packages: ${missing[*]}. Run as root: sudo $0  (or: sudo apt-get install ${missing[*]})"
fi

export DEBIAN_FRONTEND=noninteractive

# Keep package postinst scripts from starting system-wide daemons.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    log "creating /usr/sbin/policy-rc.d (exit 101: no daemons started by apt)"
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
fi

# Postfix: no questions, no system-wide configuration (no /etc/postfix/main.cf
# is written, nothing listens on port 25). debconf-set-selections comes with
# debconf, which every Debian system has.
if command -v debconf-set-selections >/dev/null 2>&1; then
    printf '%s\n' \
        'postfix postfix/main_mailer_type select No configuration' \
        | debconf-set-selections
else
    log "warning: debconf-set-selections not found; the postfix install may ask questions"
fi

# Retry flaky downloads; wait for a dpkg lock held by another apt run.
APT_OPTS=(-q -o Acquire::Retries=3 -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
log "installing: ${missing[*]}"
apt-get "${APT_OPTS[@]}" update </dev/null
apt-get "${APT_OPTS[@]}" install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null

mapfile -t still_missing < <(missing_packages)
if [ "${#still_missing[@]}" -ne 0 ]; then
    die "still not installed after apt-get: ${still_missing[*]}"
fi
log "done"
