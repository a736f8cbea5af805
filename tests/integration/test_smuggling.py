"""SMTP smuggling: only <CRLF>.<CRLF> ends DATA; every look-alike is content, and what is done
with its bare <LF>/<CR> is the inbound.bare_newline policy (reject by default)."""

from __future__ import annotations

import re
import time

import pytest
from smtpclient import TRUSTED, UNTRUSTED, Mta, SmtpClient, queue_id_of, wait_for_log

SMUGGLED = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nsmuggled\r\n"

# (end-of-data look-alike, the bare newline it contains or None)
FORMS = [
    (b"\n.\n", "<LF>"),
    (b"\n.\r\n", "<LF>"),
    (b"\r.\r", "<CR>"),
    (b"\r\n.\n", "<LF>"),
    (b"\r\n.\r", "<CR>"),
    (b"\r\n\x00.\r\n", None),
    (b"\r\r\n.\r\r\n", "<CR>"),
]
IDS = ["LF.LF", "LF.CRLF", "CR.CR", "CRLF.LF", "CRLF.CR", "CRLF-NUL.CRLF", "CRCRLF.CRCRLF"]

BARE = re.compile(rb"(?<!\r)\n|\r(?!\n)")


def smuggling_message(form: bytes) -> bytes:
    return b"Subject: smuggle\r\n\r\nbefore" + form + SMUGGLED + b"\r\n.\r\n"


def envelopes(mta: Mta, qids) -> list:
    return [mta.envelope(q) for q in qids]


def assert_nothing_smuggled(mta: Mta, before: set[str]) -> set[str]:
    """At most one new message, never one from the smuggled envelope; no debris. Returns the new ids."""
    new = set(mta.queued()) - before
    assert len(new) <= 1, new
    for e in envelopes(mta, new):
        assert e.sender == "s@client.test"
        assert [r.address for r in e.recipients] == ["a@example.test"]
    assert all(e.sender != "evil@x" for e in envelopes(mta, mta.queued()))
    assert mta.queued("tmp") == []
    return new


def send_form(mta: Mta, source: str, form: bytes, *, follow: bytes = b"") -> tuple[list, SmtpClient]:
    c = SmtpClient(mta.port, source)
    c.greeting()
    c.ehlo()
    c.expect("MAIL FROM:<s@client.test>", 250)
    c.expect("RCPT TO:<a@example.test>", 250)
    c.expect("DATA", 354)
    c.send(smuggling_message(form) + follow)
    return [c.reply()], c


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory):
    """Default policy: bare_newline reject, mynetworks excluded (normalized)."""
    with Mta(tmp_path_factory.mktemp("default")).start() as m:
        yield m


@pytest.mark.parametrize(("form", "bare"), FORMS, ids=IDS)
def test_smuggling_with_bare_newline_reject(default, form, bare):
    mta = default
    before = set(mta.queued())
    [r], c = send_form(mta, UNTRUSTED, form, follow=b"QUIT\r\n")
    with c:
        if bare:
            assert r.line == f"550 5.5.2 Error: bare {bare} received"
            assert c.closed_by_server(2)  # Postfix: reply, then disconnect
        else:
            # No bare newline: the NUL form is ordinary content of one message.
            qid = queue_id_of(r)
            assert c.reply().line == "221 2.0.0 Bye"
            assert b"before\r\n\x00.\r\n" + SMUGGLED in mta.body(qid)
    new = assert_nothing_smuggled(mta, before)
    assert len(new) == (0 if bare else 1)
    if bare:
        wait_for_log(mta, f"reject: DATA from unknown[127.0.0.2]: bare {bare}")


@pytest.fixture(scope="module")
def normalizing(tmp_path_factory: pytest.TempPathFactory):
    with Mta(tmp_path_factory.mktemp("normalize"), {"inbound": {"bare_newline": "normalize"}}).start() as m:
        yield m


@pytest.mark.parametrize(("form", "bare"), FORMS, ids=IDS)
def test_smuggling_with_bare_newline_normalize(normalizing, form, bare):
    mta = normalizing
    before = set(mta.queued())
    [r], c = send_form(mta, UNTRUSTED, form, follow=b"QUIT\r\n")
    with c:
        qid = queue_id_of(r)
        assert c.reply().line == "221 2.0.0 Bye"
    assert assert_nothing_smuggled(mta, before) == {qid}  # exactly one message
    env = mta.envelope(qid)
    assert env.sender == "s@client.test" and [x.address for x in env.recipients] == ["a@example.test"]
    body = mta.body(qid)
    assert SMUGGLED in body  # the would-be commands are content
    assert not BARE.search(body), body
    assert b"\r\n.\r\n" not in body  # the look-alike did not become an end of data for the next hop


@pytest.mark.parametrize(("form", "bare"), FORMS, ids=IDS)
def test_trusted_client_is_normalized_by_default(default, form, bare):
    """inbound.bare_newline_exclude_mynetworks (default true): mynetworks clients get normalize."""
    mta = default
    before = set(mta.queued())
    [r], c = send_form(mta, TRUSTED, form)
    with c:
        qid = queue_id_of(r)
        c.expect("QUIT", 221)
    assert assert_nothing_smuggled(mta, before) == {qid}
    assert SMUGGLED in mta.body(qid)
    assert not BARE.search(mta.body(qid))


def test_bare_newline_reject_applies_to_trusted_when_not_excluded(make_mta):
    mta = make_mta({"inbound": {"bare_newline_exclude_mynetworks": False}})
    [r], c = send_form(mta, TRUSTED, b"\n.\n")
    with c:
        assert r.line == "550 5.5.2 Error: bare <LF> received"
        assert c.closed_by_server(2)
    assert mta.queued() == [] and mta.queued("tmp") == []


@pytest.mark.parametrize(("line", "which"), [(b"EHLO x\n", "<LF>"), (b"EHLO x\r\r\n", "<CR>"), (b"EHLO x\ry\r\n", "<CR>")])
def test_bare_newline_command_line_is_rejected(default, line, which):
    with SmtpClient(default.port, UNTRUSTED) as c:
        c.greeting()
        c.send(line)
        assert c.reply().line == f"550 5.5.2 Error: bare {which} received"
        assert c.closed_by_server(2)


def test_bare_lf_command_lines_accepted_with_normalize(normalizing):
    with SmtpClient(normalizing.port, UNTRUSTED) as c:
        c.greeting()
        c.send(b"EHLO x\n")
        r = c.reply()
        assert r.code == 250 and r.lines[0] == "mx.example.test"
        c.send(b"MAIL FROM:<s@client.test>\nRCPT TO:<a@example.test>\n")
        assert [x.line for x in c.replies(2)] == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
        c.send(b"DATA\n")
        assert c.reply().code == 354
        c.send(b"Subject: lf\n\nline one\nline two\r\n.\r\n")
        qid = queue_id_of(c.reply())
    assert normalizing.body(qid).endswith(b"Subject: lf\r\n\r\nline one\r\nline two\r\n")


def test_smuggling_split_across_writes(default):
    """The look-alike split over several TCP writes is found all the same."""
    mta = default
    before = set(mta.queued())
    c = SmtpClient(mta.port, UNTRUSTED)
    with c:
        c.greeting()
        c.ehlo()
        c.expect("MAIL FROM:<s@client.test>", 250)
        c.expect("RCPT TO:<a@example.test>", 250)
        c.expect("DATA", 354)
        for part in (b"Subject: s\r\n\r\nbefore\r\n", b".", b"\n", SMUGGLED, b"\r\n.", b"\r\n"):
            c.send(part)
            time.sleep(0.05)
        assert c.reply().line == "550 5.5.2 Error: bare <LF> received"
    assert assert_nothing_smuggled(mta, before) == set()


def test_bare_newline_note_normalizes_and_logs(make_mta):
    mta = make_mta({"inbound": {"bare_newline": "note"}})
    [r], c = send_form(mta, UNTRUSTED, b"\n.\n")
    with c:
        qid = queue_id_of(r)
        c.send(b"NOOP\n")
        assert c.reply().line == "250 2.0.0 Ok"
    assert mta.queued() == [qid]
    assert SMUGGLED in mta.body(qid) and not BARE.search(mta.body(qid))
    wait_for_log(mta, f"{qid}: bare newline normalized in message from unknown[127.0.0.2]")
    wait_for_log(mta, "bare newline in command after DATA from unknown[127.0.0.2]")
