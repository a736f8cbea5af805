"""Blocked attachments over SMTP (inbound.blocked_extensions): a name in every encoding, inside a
zip inside a forwarded message, in a tgz, a zip bomb -> 550 5.7.1 at the end of DATA; an innocent
attachment is queued; blocked_extensions_action: discard -> 250 and nothing queued."""

from __future__ import annotations

import re

import pytest
from builders import b64, tar_of, zeros_zip, zip_of
from smtpclient import queue_id_of, send_one, wait_for_log

pytestmark = pytest.mark.integration

QUIET = {"notify_admin": False, "notify_recipient": False}  # no notices: the queue shows only what got through
BLOCKING = {"inbound": {"blocked_extensions": ["@common", "iso"], **QUIET}}


def message(*parts: bytes, subject: str = "files") -> bytes:
    head = ("From: s@client.test\r\nTo: a@example.test\r\nSubject: " + subject + "\r\n"
            "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nMessage-ID: <att@client.test>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="=_outer"\r\n\r\nThis is a multipart message.\r\n').encode()  # fmt: skip
    body = b"--=_outer\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease find the files attached.\r\n"
    for p in parts:
        body += b"--=_outer\r\n" + p + b"\r\n"
    return head + body + b"--=_outer--\r\n"


def attachment(headers: list[str], data: bytes = b"MZ\x90\x00 not really a program") -> bytes:
    return "".join(h + "\r\n" for h in headers).encode() + b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(data)


def forwarded(inner: bytes) -> bytes:
    return b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n" + inner


INNER = message(attachment(["Content-Type: application/zip", 'Content-Disposition: attachment; filename="report.zip"'],
                           zip_of({"report.pdf": b"%PDF", "Report.PDF.exe": b"MZ"})), subject="fwd")  # fmt: skip

BLOCKED = [
    ("plain", attachment(['Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename="setup.exe"']),
     'File "setup.exe" has the unacceptable extension "exe"'),
    ("rfc2231", attachment(["Content-Type: application/octet-stream", "Content-Disposition: attachment;",
                            " filename*0*=utf-8''%E2%82%AC%20ra;", " filename*1*=tes.s;", " filename*2=cr"]),
     'File "\\xe2\\x82\\xac rates.scr" has the unacceptable extension "scr"'),
    ("rfc2047-b", attachment(['Content-Type: application/octet-stream; name="=?utf-8?B?cmVjaG51bmcuSlM=?="']),
     'File "rechnung.JS" has the unacceptable extension "JS"'),
    ("rfc2047-q", attachment(['Content-Type: application/octet-stream',
                              'Content-Disposition: attachment; filename="=?iso-8859-1?Q?f=E9vrier_2026.bat?="']),
     'File "f\\xc3\\xa9vrier 2026.bat" has the unacceptable extension "bat"'),
    ("raw-utf8", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"caf\u00e9.ISO\"\r\n"
                 "Content-Transfer-Encoding: base64\r\n\r\nTVo=\r\n".encode(),
     'File "caf\\xc3\\xa9.ISO" has the unacceptable extension "ISO"'),
    ("zip-in-forwarded-message", forwarded(INNER), 'File "Report.PDF.exe" has the unacceptable extension "exe"'),
    ("tgz", attachment(['Content-Type: application/gzip; name="logs.tgz"'], tar_of({"logs/run.cmd": b"@echo off"}, "w:gz")),
     'File "logs/run.cmd" has the unacceptable extension "cmd"'),
]  # fmt: skip


def test_every_encoding_is_rejected(make_mta):
    mta = make_mta(BLOCKING)
    for label, part, text in BLOCKED:
        r = send_one(mta, message(part))
        assert (r.code, r.status) == (550, "5.7.1"), f"{label}: {r}"
        assert r.text == f"5.7.1 Attachment type not allowed. {text}", f"{label}: {r}"
    assert mta.queued() == [] and mta.queued("tmp") == []


def test_a_zip_bomb_is_rejected(make_mta):
    mta = make_mta(BLOCKING)
    r = send_one(mta, message(attachment(['Content-Type: application/zip; name="big.zip"'], zeros_zip())))
    assert r.line == f"550 5.7.1 Attachment not allowed: zip bomb: big.zip expands to {200 << 20} bytes"
    assert mta.queued() == []


def test_an_innocent_attachment_is_queued(make_mta):
    mta = make_mta(BLOCKING)
    content = message(attachment(['Content-Type: application/pdf', 'Content-Disposition: attachment; filename="report.pdf"'],
                                 b"%PDF-1.7 a report"),
                      forwarded(message(attachment(['Content-Type: application/zip; name="docs.zip"'],
                                                   zip_of({"a.txt": b"a", "b.docx": b"PK"})))))  # fmt: skip
    r = send_one(mta, content)
    qid = queue_id_of(r)
    assert mta.queued() == [qid]
    assert mta.body(qid).endswith(content)
    wait_for_log(mta, re.compile(rf"{qid}: filters: .*attachments=clean"))


def test_discard_answers_250_and_queues_nothing(make_mta):
    mta = make_mta({"inbound": {"blocked_extensions": ["exe"], "blocked_extensions_action": "discard", **QUIET}})
    r = send_one(mta, message(BLOCKED[0][1]))
    assert r.code == 250, r
    assert mta.queued() == [] and mta.queued("tmp") == []
    assert queue_id_of(send_one(mta, message(subject="no attachment"))) in mta.queued()
