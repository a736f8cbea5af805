"""Mail from `mtaserver sendmail` leaves a from= line in the log, as Postfix's pickup does
(`QID: uid=0 from=<root>`), before its delivery line.

Found by walking README.md: mail sent with `mtaserver sendmail` had no line naming its sender
(smtpd logs `QID: from=<...>, size=..., nrcpt=...` for SMTP mail; the queue manager only logged
`pickup: filtered` and `to=<...>`), so grepping the log for a sender missed every cron mail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from helpers import Sink, delivering, wait_for
from smtpclient import wait_for_log


def test_a_sendmail_message_is_logged_with_its_uid_and_sender_once(make_mta):
    with Sink() as sink:
        mta = make_mta(delivering(relay=sink.port))
        cmd = [sys.executable, "-m", "mtaserver", "sendmail", "-C", str(mta.config_path), "-f", "cron@example.test",
               "ops@remote.test"]
        out = subprocess.run(cmd, check=False, input=b"Subject: nightly\n\nall good\n", capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: sink.messages, what="delivery to the sink")
        log = wait_for_log(mta, re.compile(r"to=<ops@remote\.test>.*status=sent"))
        [qid] = re.findall(r"(\w+): to=<ops@remote\.test>", log)
        mine = [line.split("]: ", 1)[1] for line in log.splitlines() if f"]: {qid}: " in line]
        assert mine[0] == f"{qid}: uid={os.getuid()} from=<cron@example.test>", mine
        assert sum("from=<" in line for line in mine) == 1, mine
        # A local program has no client IP: no X-Originating-IP (outbound.add_client_ip_header is on)
        content = sink.messages[0][2]
        assert b"Subject: nightly" in content and b"X-Originating-IP" not in content, content
