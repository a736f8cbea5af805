"""`mtaserver queue requeue` runs the content filters again (Postfix postsuper -r re-runs cleanup):
a message queued before an extension was blocked is bounced, not delivered; a clean one is
delivered once, without a second set of our headers, with its new decision trail."""

from __future__ import annotations

import re

import pytest
from conftest import deep_merge
from scanners import message_with_attachment
from smtpclient import UNTRUSTED, SmtpClient, queue_id_of, wait_for_log
from helpers import Sink, cli, delivering, wait_for

pytestmark = pytest.mark.integration


def receive(mta, content: bytes) -> str:
    with SmtpClient(mta.port, UNTRUSTED, timeout=30) as c:
        c.greeting()
        c.ehlo("client.test")
        return queue_id_of(c.send_message("s@client.test", ["bob@remote.test"], content))


def test_requeue_applies_the_filters_of_now(make_mta):
    sink = Sink()
    sink.controller.start()
    try:
        # Received while nothing was blocked: queued, not delivered (the queue manager is off).
        mta = make_mta({"domains": {"relay": ["remote.test"]}, "dkim": {"verify": True}})
        exe = receive(mta, message_with_attachment(b"MZ", filename="tool.exe"))
        clean = receive(mta, message_with_attachment(b"%PDF", filename="report.pdf"))
        assert mta.stop() == 0
        # Now .exe is blocked and the manager delivers through the sink.
        over = deep_merge(delivering(relay=sink.port), {"inbound": {"blocked_extensions": ["exe"], "notify_admin": False,
                                                                     "notify_recipient": False}})  # fmt: skip
        mta.config = deep_merge(mta.config, over)
        mta.config["queue"]["manager"] = False
        mta.write_config()
        cli(mta, "requeue", "ALL")  # server stopped: on the spool, under the instance lock
        mta.config["queue"]["manager"] = True
        mta.write_config()
        mta.start()
        # The clean one is delivered once, with one Authentication-Results (ours, made again).
        wait_for(lambda: any(clean.encode() in m[2] for m in sink.messages), what="the clean message's delivery")
        wait_for_log(mta, re.compile(rf"{exe}: requeue: refused by the content filters: 550 5\.7\.1 Attachment type not allowed"))
        # The blocked one bounces to its sender (the client heard 250 when it was received).
        wait_for(lambda: any(m[0] in ("", "<>") and m[1] == ["s@client.test"] for m in sink.messages), what="the bounce")
        delivered = [m for m in sink.messages if m[1] == ["bob@remote.test"]]
        assert len(delivered) == 1, "the blocked one is never delivered"
        body = delivered[0][2]
        assert body.count(b"Authentication-Results: mx.example.test;") == 1
        wait_for_log(mta, re.compile(rf"{clean}: requeue: filtered again \(attachments=clean, dkim-verify=none\)"))
        bounce = next(m[2] for m in sink.messages if m[0] in ("", "<>"))
        assert b'has the unacceptable extension "exe"' in bounce and b"Status: 5.7.1" in bounce
    finally:
        sink.controller.stop()


def test_mail_from_sendmail_goes_through_the_filters_before_delivery(make_mta):
    """Postfix's pickup -> cleanup -> non_smtpd_milters: local mail is signed (and scanned) too."""
    import subprocess
    import sys

    from mtaserver.filters.dkim import new_key, write_key

    sink = Sink()
    sink.controller.start()
    try:
        over = deep_merge(delivering(relay=sink.port), {
            "dkim": {"sign": [{"domain": "example.test", "selector": "s1", "key": "dkim/example.test.s1.key"}]},
            "inbound": {"blocked_extensions": ["exe"]},
        })  # fmt: skip
        mta = make_mta(over, start=False)
        write_key(mta.data_dir / "dkim" / "example.test.s1.key", new_key("rsa"))
        mta.start()
        text = b"From: Cron <cron@example.test>\nTo: ops@remote.test\nSubject: nightly\n\nall good\n"
        out = subprocess.run([sys.executable, "-m", "mtaserver", "sendmail", "-C", str(mta.config_path), "-f",
                              "cron@example.test", "ops@remote.test"], input=text, capture_output=True, timeout=30)  # fmt: skip
        assert out.returncode == 0, out.stderr
        wait_for(lambda: sink.messages, what="delivery to the sink")
        content = sink.messages[0][2]
        assert content.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;")
        assert b"Received: by mx.example.test (mtaserver, from userid " in content
        wait_for_log(mta, re.compile(r"pickup: filtered \(attachments=clean, dkim-sign=signed\)"))
    finally:
        sink.controller.stop()
