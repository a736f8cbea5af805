#!/usr/bin/env bash
# Install (from Debian packages) the tools and services the test suite talks to, if missing.
# Postfix is installed with "No configuration": nothing starts, /etc/postfix stays empty; the
# tests only use its smtp-source and smtp-sink programs.
set -euo pipefail
need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
[ -x /usr/sbin/smtp-source ] || need+=(postfix)
[ -x /usr/sbin/nsd ] || need+=(nsd)              # authoritative DNS for MX/DNSBL test zones
# LMTP mailbox server for local delivery; the tests run their own instance on a throwaway
# config (tests/integration/dovecot.py), never the system service.
[ -x /usr/sbin/dovecot ] || need+=(dovecot-core)
[ -x /usr/lib/dovecot/lmtp ] || need+=(dovecot-lmtpd)
# Shared postscreen cache (postscreen.cache.backend: redis); the tests start their own
# redis-server on a free port, never the system service.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing test tools: ${need[*]}" >&2
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "test services ready: openssl swaks smtp-source smtp-sink nsd dovecot-lmtpd redis-server"
