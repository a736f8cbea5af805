"""Hostile text in the log, as a mail admin's terminal shows it: the NOQUEUE line of a refused
RCPT quotes the client's HELO in its reply text, and that copy must be escaped like the helo=<>
field after it (no ESC, BEL or bidi override reaching a terminal or a log viewer).

Found by walking README.md with hostile clients: `EHLO evil<ESC>[31mred<BEL><U+202E>` from an
outsider, then a RCPT, logged "501 5.5.2 <evil<ESC>[31m...>: Helo command rejected" raw. The
reply itself now quotes the HELO as Postfix's printable() does (each such character a "?"), for
the client's terminal too.
"""

from __future__ import annotations

import pytest
from smtpclient import UNTRUSTED, SmtpClient, wait_for_log

pytestmark = pytest.mark.integration

HELO = b"evil\x1b[31mred\x07\xe2\x80\xae"


def test_rcpt_reject_log_line_escapes_the_helo_quoted_in_the_reply(mta):
    with SmtpClient(mta.port, UNTRUSTED) as c:
        c.greeting()
        c.expect(b"EHLO " + HELO, 250)
        c.expect("MAIL FROM:<s@client.test>", 250)
        reply = c.expect("RCPT TO:<a@example.test>", 501, "5.5.2")
        assert reply.text.endswith(" <evil?[31mred??>: Helo command rejected: Invalid name"), reply
        c.expect("QUIT", 221)
    log = wait_for_log(mta, "Helo command rejected")
    [line] = [x for x in log.splitlines() if "NOQUEUE: reject: RCPT" in x]
    escaped = r"evil\x1b[31mred\x07\xe2\x80\xae"
    assert "501 5.5.2 <evil?[31mred??>: Helo command rejected: Invalid name; " in line
    assert line.endswith(f"helo=<{escaped}>")
    assert not any(ch in line for ch in "\x1b\x07\u202e")
