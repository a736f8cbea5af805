"""One hop limit: the queue manager's mail-loop check reads server.limits.hop_count, the limit
the SMTP server applies at the end of DATA (test_session_hardening.py). Mail from `mtaserver
sendmail` (Postfix pickup) never passes that check: the queue manager's is the one it meets."""

from __future__ import annotations

import subprocess
import sys

from helpers import delivering, maildir_messages, queue_empty, wait_for

from conftest import Mta


def sendmail(mta: Mta, hops: int, rcpt: str) -> None:
    received = b"".join(b"Received: from h%d by h%d; Tue, 1 Jan 2030 00:00:00 +0000\n" % (i, i) for i in range(hops))
    out = subprocess.run([sys.executable, "-m", "mtaserver", "sendmail", "-C", str(mta.config_path), "-f", "s@example.test", rcpt],
                         input=received + b"Subject: hops\n\nx\n", capture_output=True, timeout=30, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_the_queue_manager_bounces_at_the_configured_hop_count(make_mta):
    """hop_count 10: 9 Received: fields of the client and ours make 10, a loop (5.4.6, as Postfix's
    qmgr/cleanup); 8 and ours pass. With the old fixed limit of 50 both were delivered."""
    mta = make_mta({**delivering(), "server": {"limits": {"hop_count": 10}}})
    sendmail(mta, 8, "fine@example.test")
    sendmail(mta, 9, "loop@example.test")
    [dsn] = wait_for(lambda: maildir_messages(mta, "s@example.test"), what="the loop DSN")
    assert b"Status: 5.4.6" in dsn and b"loop@example.test" in dsn
    wait_for(lambda: maildir_messages(mta, "fine@example.test"), what="the message below the limit")
    wait_for(lambda: queue_empty(mta), what="empty queue")
    assert maildir_messages(mta, "loop@example.test") == []
    assert len(maildir_messages(mta, "s@example.test")) == 1  # no DSN about fine@


def test_the_default_limit_holds_for_local_submissions(make_mta):
    """The default (50) for mail past the SMTP server's check: 60 Received: fields bounce."""
    mta = make_mta(delivering())
    sendmail(mta, 60, "loop@example.test")
    [dsn] = wait_for(lambda: maildir_messages(mta, "s@example.test"), what="the loop DSN")
    assert b"Status: 5.4.6" in dsn
    assert maildir_messages(mta, "loop@example.test") == []
