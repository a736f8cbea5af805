"""The blocked-attachments decision (mtaserver/filters/attachments.py) and its configuration:
the last extension as Carbonio matches it, the reply text, problems refused, the "@common"
preset and inbound.attachment_limits."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from mtaserver.config import InboundConfig
from mtaserver.filters.attachments import (
    COMMON_BLOCKED,
    AttachmentLimits,
    FoundName,
    MimeReport,
    MimeWalker,
    blocked_extension,
    blocked_reply,
    extension_of,
    extension_reply,
    limits_from,
    problem_reply,
    refusal,
)
from mtaserver.model import Reply

SPEC_COMMON = "asd bat chm cmd com dll do exe hlp hta js jse lnk ocx pif reg scr shb shm shs vbe vbs vbx vxd wsf wsh xl"


def report(*names: str, problems: tuple[str, ...] = ()) -> MimeReport:
    return MimeReport(names=[FoundName(n, n, "filename") for n in names], problems=list(problems))


def test_common_list_is_the_panels_27():
    assert COMMON_BLOCKED == tuple(SPEC_COMMON.split())
    assert len(COMMON_BLOCKED) == 27


@pytest.mark.parametrize(
    "name,ext",
    [("a.exe", "exe"), ("A.EXE", "EXE"), ("report.pdf.exe", "exe"), ("a.exe  \t", "exe"), ("a.exe.", "exe"),
     ("a.exe . ", "exe"), ("x.tar.gz", "gz"), ("dir/b.js", "js"), (".exe", None), ("exe", None), ("a.", None),
     ("", None), ("a.ex e", "ex e")],
)  # fmt: skip
def test_extension_of(name, ext):
    assert extension_of(name) == ext


def test_first_hit_in_walk_order_case_insensitive():
    r = report("readme.txt", "Setup.EXE", "run.bat")
    assert blocked_extension(r, frozenset({"bat", "exe"})) == ("Setup.EXE", "EXE")
    assert blocked_extension(r, frozenset({"BAT"})) == ("run.bat", "bat")
    assert blocked_extension(r, frozenset({"com"})) is None
    assert blocked_extension(report(".exe", "exe", "a.exe.txt"), frozenset({"exe"})) is None


def test_nothing_blocked_when_no_extension_is_configured():
    r = report("a.exe", problems=("zip bomb: z.zip expands to 9 bytes",))
    assert blocked_extension(r, frozenset()) is None
    assert refusal(r, frozenset()) is None


def test_the_reply_text():
    assert extension_reply("Setup.EXE", "EXE") == Reply(
        550, "5.7.1", 'Attachment type not allowed. File "Setup.EXE" has the unacceptable extension "EXE"'
    )
    assert blocked_reply(("a.js", "js")).text.endswith('File "a.js" has the unacceptable extension "js"')


def test_the_reply_is_safe_for_any_name():
    reply = extension_reply('evil"\r\n250 ok\x00caf\u00e9' + "x" * 500 + ".exe", "exe")
    assert reply.code == 550 and reply.status == "5.7.1"
    assert reply.text.isascii() and reply.text.isprintable()
    name = reply.text.split('File "', 1)[1].split('" has', 1)[0]
    assert '"' not in name and "\r" not in name and "\n" not in name
    assert name.startswith("evil'\\r\\n250 ok\\x00caf\\xc3\\xa9") and name.endswith("...")
    assert len(reply.text) < 250


def test_problems_are_refused_after_names():
    r = report("notes.txt", problems=("zip bomb: z.zip expands to 9999999999 bytes", "archive too deep: a.zip"))
    assert blocked_extension(r, frozenset({"exe"})) == ("zip bomb: z.zip expands to 9999999999 bytes", "")
    assert blocked_reply(("archive too deep: a.zip", "")) == problem_reply("archive too deep: a.zip")
    ref = refusal(r, frozenset({"exe"}))
    assert ref is not None and ref.name is None
    assert ref.reply == Reply(550, "5.7.1", "Attachment not allowed: zip bomb: z.zip expands to 9999999999 bytes")
    named = refusal(report("a.exe", problems=("damaged archive: b.zip",)), frozenset({"exe"}))
    assert named is not None and (named.name, named.ext) == ("a.exe", "exe")
    assert named.reason == "blocked extension exe: a.exe"
    assert refusal(report("a.txt"), frozenset({"exe"})) is None


# ---------------------------------------------------------------------------------------------
# Walker and decision together, each encoding


def msg_with(header_lines: list[str]) -> bytes:
    head = "".join(h + "\r\n" for h in header_lines)
    return ("From: a@client.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
            "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            f"--b\r\n{head}Content-Transfer-Encoding: base64\r\n\r\nTVo=\r\n--b--\r\n").encode()  # fmt: skip


@pytest.mark.parametrize(
    "headers,name",
    [
        (['Content-Disposition: attachment; filename="plain.exe"'], "plain.exe"),
        (["Content-Disposition: attachment;", " filename*0*=utf-8''%E2%82%AC%20ra;", " filename*1*=tes.e;",
          " filename*2=xe"], "\u20ac rates.exe"),
        (['Content-Type: application/octet-stream; name="=?utf-8?B?ZXZpbC5leGU=?="'], "evil.exe"),
        (['Content-Disposition: attachment; filename="=?iso-8859-1?Q?f=E9vrier.exe?="'], "f\xe9vrier.exe"),
        (['Content-Disposition: attachment; filename="caf\u00e9.EXE  "'], "caf\u00e9.EXE  "),
    ],
    ids=["plain", "rfc2231", "rfc2047-b", "rfc2047-q", "raw-utf8"],
)  # fmt: skip
def test_each_encoding_is_blocked(headers, name):
    w = MimeWalker()
    w.feed(msg_with(headers))
    r = w.close()
    hit = blocked_extension(r, frozenset({"exe"}))
    assert hit is not None and hit[0] == name and hit[1].lower() == "exe"
    assert blocked_reply(hit).code == 550


def test_an_innocent_attachment_passes():
    w = MimeWalker()
    w.feed(msg_with(['Content-Disposition: attachment; filename="report.pdf"']))
    assert refusal(w.close(), frozenset(COMMON_BLOCKED)) is None


# ---------------------------------------------------------------------------------------------
# Configuration


def test_common_preset_expands_deduplicated_in_order():
    cfg = InboundConfig(blocked_extensions=["ISO", "exe", "@common", "bat", "img"])
    assert cfg.blocked_extensions == ["iso", "exe", *[e for e in COMMON_BLOCKED if e != "exe"], "img"]
    assert InboundConfig(blocked_extensions=["@COMMON"]).blocked_extensions == list(COMMON_BLOCKED)


@pytest.mark.parametrize("bad,words", [(["@risky"], "only preset is @common"), ([".exe"], "letters and digits"),
                                       (["e x e"], "letters and digits")])  # fmt: skip
def test_bad_extension_entries(bad, words):
    with pytest.raises(ValidationError, match=words):
        InboundConfig(blocked_extensions=bad)


def test_attachment_limits_config():
    cfg = InboundConfig()
    assert limits_from(cfg.attachment_limits) == AttachmentLimits()
    assert AttachmentLimits() == AttachmentLimits(max_depth=3, max_entries=1000, max_expanded=100 << 20,
                                                  max_archive_bytes=20 << 20)  # fmt: skip
    cfg = InboundConfig(attachment_limits={"max_depth": 2, "max_entries": 50, "max_expanded": "10M", "max_archive_size": "1M"})
    lim = limits_from(cfg.attachment_limits)
    assert (lim.max_depth, lim.max_entries, lim.max_expanded, lim.max_archive_bytes) == (2, 50, 10 << 20, 1 << 20)
    for bad in ({"max_depth": 0}, {"max_entries": -1}, {"max_expanded": "lots"}, {"max_archive": "1M"}):
        with pytest.raises(ValidationError):
            InboundConfig(attachment_limits=bad)


def test_limits_from_config_reach_the_walker():
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(5):
            z.writestr(f"f{i}.txt", b"")
    data = base64.encodebytes(buf.getvalue()).replace(b"\n", b"\r\n")
    msg = b'Content-Type: application/zip; name="a.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + data
    cfg = InboundConfig(blocked_extensions=["exe"], attachment_limits={"max_entries": 3})
    w = MimeWalker(limits_from(cfg.attachment_limits))
    w.feed(msg)
    ref = refusal(w.close(), frozenset(cfg.blocked_extensions))
    assert ref is not None and ref.reply.text == "Attachment not allowed: too many archive entries: a.zip"
