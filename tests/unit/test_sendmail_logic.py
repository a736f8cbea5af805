"""`mtaserver sendmail`'s pure parts: the command line, the end of input, the header section,
-t recipients, the Received: header and the headers added (mtaserver/sendmail.py)."""

from __future__ import annotations

import pytest

from mtaserver import sendmail as sm

WHO = sm.Submitter(uid=1000, login="alice", gecos="Alice Liddell,,,")
NOW = 1_796_169_600.0  # a fixed time: Date and Message-ID come from it


def build(opts: sm.Options, text: bytes, *, qid: str = "0ABCDEFGHJK012345") -> tuple[bytes, str, list[str]]:
    lines = [sm.input_line(x) for x in text.splitlines(keepends=True)]
    headers, body = sm.split_message(lines)
    sender = sm.envelope_sender(opts, WHO, "mx.example.test")
    rcpts = sm.envelope_recipients(opts, headers, "mx.example.test")
    msg = sm.build_message(opts, WHO, headers, body, hostname="mx.example.test", queue_id=qid, sender=sender,
                           recipients=rcpts, now=NOW)  # fmt: skip
    return msg, sender, rcpts


def test_options_in_getopt_style():
    o = sm.parse_args(["-t", "-fbob@example.test", "-oi", "-F", "Bob B", "-C", "/etc/m.yaml", "x@y.test"])
    assert (o.extract, o.sender, o.ignore_dots, o.full_name, o.config, o.recipients) == (
        True, "bob@example.test", True, "Bob B", "/etc/m.yaml", ["x@y.test"])  # fmt: skip
    o = sm.parse_args(["-ti", "-f", "<>", "-odi", "-oem", "-B", "8BITMIME", "--", "-odd@y.test"])
    assert o.extract and o.ignore_dots and o.sender == "<>" and o.recipients == ["-odd@y.test"]
    assert sm.parse_args(["-r", "s@x.test", "-i"]).sender == "s@x.test"


@pytest.mark.parametrize("argv", [["-bs"], ["-bp"], ["-q"], ["-f"], ["-Z"]])
def test_bad_or_unsupported_options_are_usage_errors(argv):
    with pytest.raises(sm.SendmailError) as exc:
        sm.parse_args(argv)
    assert exc.value.status == sm.EX_USAGE


def test_a_lone_dot_ends_input_unless_i():
    assert sm.is_end(sm.input_line(b".\r\n"), False) and sm.is_end(sm.input_line(b".\n"), False)
    assert not sm.is_end(sm.input_line(b".\n"), True)
    assert not sm.is_end(sm.input_line(b"..\n"), False) and not sm.is_end(b". ", False)


def test_t_takes_to_cc_bcc_and_removes_bcc():
    opts = sm.parse_args(["-t", "extra@other.test"])
    msg, sender, rcpts = build(opts, b"To: A <a@example.test>, b@example.test\nCc: c@example.test\n"
                                     b"Bcc: hidden@example.test,\n secret@example.test\nSubject: hi\n\nbody\n")  # fmt: skip
    assert rcpts == ["extra@other.test", "a@example.test", "b@example.test", "c@example.test",
                     "hidden@example.test", "secret@example.test"]  # fmt: skip
    assert b"Bcc" not in msg and b"hidden" not in msg and b"secret" not in msg
    assert sender == "alice@mx.example.test"
    assert msg.endswith(b"\r\n\r\nbody\r\n") and b"\n" not in msg.replace(b"\r\n", b"")


def test_resent_headers_are_used_when_present():
    opts = sm.parse_args(["-t"])
    _, _, rcpts = build(opts, b"To: old@example.test\nResent-To: new@example.test\nResent-Bcc: b@example.test\n\nx\n")
    assert rcpts == ["new@example.test", "b@example.test"]


def test_received_names_the_user_and_missing_headers_are_added():
    opts = sm.parse_args(["-f", "bob@example.test", "r@example.test"])
    msg, sender, rcpts = build(opts, b"Subject: cron\n\nout\n")
    head = msg.split(b"\r\n\r\n")[0].decode()
    lines = head.split("\r\n")
    assert lines[0] == "Received: by mx.example.test (mtaserver, from userid 1000 (alice))"
    assert lines[1] == "\tid 0ABCDEFGHJK012345" and lines[2].startswith("\tfor <r@example.test>; ")
    assert "Subject: cron" in lines and 'From: Alice Liddell <bob@example.test>' in lines
    assert any(x.startswith("Date: ") for x in lines)
    assert "Message-ID: <20261202000000.0ABCDEFGHJK012345@mx.example.test>" in lines
    assert sender == "bob@example.test" and rcpts == ["r@example.test"]


def test_existing_headers_are_kept_and_F_names_the_from():
    opts = sm.parse_args(["-F", "Cron Daemon", "a@x.test", "b@x.test"])
    msg, _, _ = build(opts, b"Subject: s\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\nb\n")
    head = msg.split(b"\r\n\r\n")[0].decode()
    assert head.count("Date:") == 1 and "Date: Mon, 1 Jan 2024" in head
    assert '\tid 0ABCDEFGHJK012345; ' in head and "for <" not in head  # two recipients: no "for"
    assert 'From: Cron Daemon <alice@mx.example.test>' in head


def test_unqualified_and_null_addresses():
    msg, sender, rcpts = build(sm.parse_args(["-f", "<>", "root"]), b"hello\n")
    assert sender == "" and rcpts == ["root@mx.example.test"]
    assert b'From: Alice Liddell <alice@mx.example.test>\r\n' in msg
    # No header section: the added headers, a blank line, then the text as the body.
    assert msg.endswith(b"\r\n\r\nhello\r\n")


def test_mbox_from_line_is_dropped_and_headers_without_body():
    headers, body = sm.split_message([b"From alice Mon Jan  1 00:00:00 2024", b"Subject: x", b"To: a@b.test"])
    assert [sm.field_name(h) for h in headers] == ["subject", "to"] and body is None


def test_no_recipients_and_bad_addresses():
    with pytest.raises(sm.SendmailError) as exc:
        build(sm.parse_args(["-t"]), b"Subject: nobody\n\nx\n")
    assert exc.value.status == sm.EX_USAGE
    with pytest.raises(sm.SendmailError) as exc:
        build(sm.parse_args(["bad@@example.test"]), b"x\n")
    assert exc.value.status == sm.EX_DATAERR
