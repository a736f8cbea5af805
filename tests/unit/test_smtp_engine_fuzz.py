"""Property tests of the SMTP engine: whatever bytes a client sends, cut wherever TCP cuts
them, the engine answers in bounded memory, never raises, and gives the same replies for the
same bytes however they were cut."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtaserver import model as R
from mtaserver.model import CONTINUE
from mtaserver.smtp import engine as E

COMMANDS = [
    b"EHLO client.test", b"HELO c", b"MAIL FROM:<a@b.test>", b"MAIL FROM:<>", b"RCPT TO:<r@example.test>",
    b"RCPT TO:<postmaster>", b"DATA", b"RSET", b"NOOP", b"QUIT", b"VRFY x", b"STARTTLS", b"AUTH PLAIN",
    b"AUTH LOGIN", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"*", b"YWxpY2U=", b"GET /", b"Subject: x", b"",
    b"MAIL FROM:<a@b.test> SIZE=99999999999", b"MAIL FROM:<j\xc3\xb6rg@b.test> SMTPUTF8", b"x" * 600,
    b"BDAT 5", b"BDAT 3 LAST", b"BDAT 0 LAST", b"BDAT 0", b"BDAT x", b"BDAT 99999999",
]
ENDINGS = [b"\r\n", b"\n", b"\r", b"\r\r\n", b""]

line = st.builds(lambda c, e: c + e, st.sampled_from(COMMANDS), st.sampled_from(ENDINGS)) | st.binary(max_size=200)
stream = st.lists(line, max_size=40).map(b"".join)


def make() -> E.Engine:
    return E.Engine(E.Settings(hostname="mx.test", error_sleep=0.0, starttls=True, auth="offer", auth_mechanisms=("PLAIN", "LOGIN")))


def drive(pieces: list[bytes]) -> tuple[bytes, list[str]]:
    """A permissive shell: every hook accepts, AUTH fails, DATA ends at once, a BDAT chunk is
    read to its size. STARTTLS ends the plaintext part: what follows it would be TLS bytes, so
    the drive stops there."""
    e = make()
    out, events = b"", []
    chunk: list = []  # [bytes still to read, last] of a BDAT chunk being read

    def chunk_read(data: bytes) -> bytes:
        n = min(chunk[0], len(data))
        chunk[0] -= n
        if not chunk[0]:
            e.data_done(R.OK) if chunk[1] else e.bdat_done(R.OK)
            chunk.clear()
        return data[n:]

    for piece in pieces:
        if chunk:
            piece = chunk_read(piece)
        e.feed(piece)
        while not chunk and (ev := e.next_event()) is not None:
            events.append(type(ev).__name__)
            match ev:
                case E.Helo() | E.Mail() | E.Rcpt():
                    e.resolve(CONTINUE)
                case E.Data():
                    e.data_started()
                    e.data_done(R.OK)
                case E.StartTls():
                    e.discard_input()
                    return out + e.take_output(), events
                case E.AuthLogin():
                    e.auth_done(None, R.AUTH_FAILED)
                case E.Bdat():
                    chunk[:] = [ev.size, ev.last]
                    e.feed(chunk_read(e.take_input()))
            assert e.pending_input <= E.INPUT_LIMIT + len(piece)
        out += e.take_output()
        if e.closed:
            break
    return out, events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream, st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
def test_any_stream_any_cut(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    whole = drive([data])
    assert drive(pieces) == whole
    out, _ = whole
    for reply_line in out.split(b"\r\n"):
        if reply_line:
            assert reply_line[:3].isdigit() and reply_line[3:4] in (b" ", b"-"), reply_line
            assert len(reply_line) <= 512
