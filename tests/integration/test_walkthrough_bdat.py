"""Commands pipelined behind `BDAT 0 LAST` (RFC 3030: a zero-size last chunk ends the message;
RFC 2920: BDAT may be pipelined) are answered.

Found by walking README.md with a pipelining client: after `BDAT 0 LAST` the message is queued,
but the commands that came in the same packet are never answered (a QUIT waits for the command
timeout; a MAIL FROM is dropped without a reply, so the client's replies go out of step).
mtaserver/smtp/protocol.py `_receive_chunk`: `_collect_input()` takes the engine's pending input,
`while need:` did not run for size 0, and the `finally` set `self._data = None`, losing it; it
now gives what was not taken back to the engine.
"""

from __future__ import annotations

import pytest
from smtpclient import TRUSTED, SmtpClient

pytestmark = pytest.mark.integration

ENVELOPE = b"EHLO client.test\r\nMAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.test>\r\n"


@pytest.mark.parametrize("chunks", [b"BDAT 0 LAST\r\n", b"BDAT 18\r\nSubject: x\r\n\r\nab\r\nBDAT 0 LAST\r\n"])
def test_commands_pipelined_after_bdat_0_last_are_answered(mta, chunks):
    with SmtpClient(mta.port, TRUSTED, timeout=3.0) as c:
        c.greeting()
        c.send(ENVELOPE + chunks + b"MAIL FROM:<t@client.test>\r\nRSET\r\nQUIT\r\n")
        replies = c.replies(3 + chunks.count(b"BDAT") + 3)
        codes = [r.code for r in replies]
        assert replies[-4].text.startswith("2.0.0 Ok: queued as "), replies
        assert codes[-3:] == [250, 250, 221], replies
        assert c.closed_by_server()


def test_commands_pipelined_after_a_nonempty_bdat_last_are_answered(mta):
    """The same pipeline with the last chunk carrying bytes: answered (the control case)."""
    with SmtpClient(mta.port, TRUSTED, timeout=3.0) as c:
        c.greeting()
        c.send(ENVELOPE + b"BDAT 18 LAST\r\nSubject: x\r\n\r\nab\r\nMAIL FROM:<t@client.test>\r\nRSET\r\nQUIT\r\n")
        replies = c.replies(7)
        assert replies[3].text.startswith("2.0.0 Ok: queued as "), replies
        assert [r.code for r in replies[4:]] == [250, 250, 221], replies
        assert c.closed_by_server()
