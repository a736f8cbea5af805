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
# Content scanners: SpamAssassin's spamd (Debian's rules in /usr/share/spamassassin, no
# sa-update) and ClamAV's clamd (on a signature file the tests write, no freshclam). The tests
# run their own instances on throwaway configs (tests/integration/scanners.py); the system
# services (spamd, clamav-daemon, clamav-freshclam) are kept from starting and disabled.
[ -x /usr/sbin/spamd ] || need+=(spamd)
[ -x /usr/sbin/clamd ] || need+=(clamav-daemon)
command -v clamscan >/dev/null 2>&1 || need+=(clamav)
# freshclam: run once by tests/integration/test_definitions.py against a loopback PrivateMirror only.
command -v freshclam >/dev/null 2>&1 || need+=(clamav-freshclam)
# The web panel's browser tests (tests/integration/browser.py): Playwright drives Debian's
# chromium through executable_path; never `playwright install` (it downloads browsers).
[ -x /usr/bin/chromium ] || need+=(chromium)
scanner_services=(spamd spamassassin-maintenance.timer clamav-daemon clamav-daemon.socket clamav-freshclam clamav-freshclam-once.timer)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing test tools: ${need[*]}" >&2
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # No package script may start a service while we install (Docker images have this file).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    # Stop and disable the scanner services in case one started anyway, and the gpg-agent that
    # spamassassin's postinst leaves behind after importing the sa-update key.
    if [ -d /run/systemd/system ]; then
        systemctl disable --now "${scanner_services[@]}" >/dev/null 2>&1 || true
    else
        for svc in spamd clamav-daemon clamav-freshclam; do
            [ -x "/etc/init.d/$svc" ] || continue
            service "$svc" stop >/dev/null 2>&1 || true
            update-rc.d "$svc" disable >/dev/null 2>&1 || true
        done
    fi
    if [ -d /var/lib/spamassassin/sa-update-keys ]; then
        gpgconf --homedir /var/lib/spamassassin/sa-update-keys --kill gpg-agent >/dev/null 2>&1 || true
    fi
fi
echo "test services ready: openssl swaks smtp-source smtp-sink nsd dovecot-lmtpd redis-server spamd clamd chromium"
