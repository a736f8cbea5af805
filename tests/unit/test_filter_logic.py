import pytest

from mtaserver.config import AntispamConfig, AntivirusConfig
from mtaserver.filters.chain import Scanned, decide, rewrite_message, spam_levels
from mtaserver.filters.scanners import AvResult, ScannerError, SpamResult, parse_clamd_reply, parse_spamd_reply, spamd_request
from mtaserver.model import Decision, Verdict


def test_clamd_replies():
    assert parse_clamd_reply(b"stream: OK\0") == AvResult(None)
    assert parse_clamd_reply(b"stream: Mtaserver.Test.Virus.UNOFFICIAL FOUND\0") == AvResult("Mtaserver.Test.Virus.UNOFFICIAL")
    with pytest.raises(ScannerError, match="size limit"):
        parse_clamd_reply(b"INSTREAM size limit exceeded. ERROR\0")
    with pytest.raises(ScannerError, match="unexpected"):
        parse_clamd_reply(b"")


def test_spamd_replies():
    gtube = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 27\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,NO_RECEIVED,NO_RELAYS"
    assert parse_spamd_reply(gtube) == SpamResult(True, 1000.0, 5.0, ("GTUBE", "NO_RECEIVED", "NO_RELAYS"))
    assert parse_spamd_reply(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -0.0 / 5.0\r\n\r\n") == SpamResult(False, -0.0, 5.0, ())
    with pytest.raises(ScannerError, match="EX_USAGE"):
        parse_spamd_reply(b"SPAMD/1.0 64 EX_USAGE\r\n\r\n")
    with pytest.raises(ScannerError, match="no Spam"):
        parse_spamd_reply(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n")
    with pytest.raises(ScannerError, match="unexpected"):
        parse_spamd_reply(b"HTTP/1.1 200 OK\r\n\r\n")
    assert spamd_request(b"abc") == b"SYMBOLS SPAMC/1.5\r\nContent-length: 3\r\nUser: mtaserver\r\n\r\n"


@pytest.mark.parametrize(
    "tag, kill, levels",
    [("low", "low", (4.0, 13.2)), ("medium", "medium", (6.6, 15.0)), ("high", "high", (10.0, 18.0)),
     ("40%", "95%", (8.0, 19.0)), (6.6, 12.5, (6.6, 12.5))],
)  # fmt: skip
def test_spam_levels(tag, kill, levels):
    assert spam_levels(AntispamConfig(delivery_tolerance=tag, blocking_tolerance=kill)) == levels


AV = AntivirusConfig()
SA = AntispamConfig()  # medium: tag 6.6, kill 15.0; blocked spam discarded
CLEAN = AvResult(None)
VIRUS = AvResult("Bad.Thing")
DOWN = ScannerError("clamd: Connection refused")


def spam(score: float) -> SpamResult:
    return SpamResult(score >= 5, score, 5.0, ("RULE_A", "RULE_B"))


@pytest.mark.parametrize(
    "scanned, av, sa, decision, reply",
    [
        (Scanned(CLEAN, spam(1.0)), AV, SA, Decision.CONTINUE, None),
        (Scanned(VIRUS, spam(1.0)), AV, SA, Decision.REJECT, "554 5.7.0 Rejected: virus found: Bad.Thing"),
        (Scanned(VIRUS, spam(1.0)), AntivirusConfig(action="discard"), SA, Decision.DISCARD, None),
        (Scanned(VIRUS, DOWN), AV, SA, Decision.REJECT, "554 5.7.0 Rejected: virus found: Bad.Thing"),  # a virus first
        (Scanned(DOWN, spam(1.0)), AV, SA, Decision.TEMPFAIL, "451 4.7.1 Try again later: content scanner unavailable"),
        (Scanned(DOWN, spam(1.0)), AntivirusConfig(on_error="accept"), SA, Decision.CONTINUE, None),
        (Scanned(CLEAN, DOWN), AV, SA, Decision.TEMPFAIL, "451 4.7.1 Try again later: content scanner unavailable"),
        (Scanned(CLEAN, DOWN), AV, AntispamConfig(on_error="accept"), Decision.CONTINUE, None),
        (Scanned(CLEAN, spam(1000.0)), AV, SA, Decision.DISCARD, None),
        (Scanned(CLEAN, spam(15.0)), AV, AntispamConfig(blocked_spam_action="reject"), Decision.REJECT, "550 5.7.1 Rejected: message looks like spam"),
        (Scanned(CLEAN, spam(1000.0)), AV, AntispamConfig(blocked_spam_action="deliver"), Decision.CONTINUE, None),
        (Scanned(None, None), AV, SA, Decision.CONTINUE, None),  # nothing asked (both off)
    ],
)  # fmt: skip
def test_decide(scanned, av, sa, decision, reply):
    v = decide(scanned, av, sa)
    assert isinstance(v, Verdict) and v.decision is decision
    assert (v.reply.line() if v.reply else None) == reply


def test_tagging_follows_the_levels():
    low = decide(Scanned(CLEAN, spam(3.0)), AV, SA)
    assert low.subject_tag == "" and dict(low.headers)["X-Spam-Status"] == "No, score=3.0 required=6.6 tests=[RULE_A, RULE_B]"
    assert "X-Spam-Flag" not in dict(low.headers) and dict(low.headers)["X-Spam-Level"] == "***"
    high = decide(Scanned(CLEAN, spam(7.0)), AV, SA)
    assert high.subject_tag == "[SPAM]" and dict(high.headers)["X-Spam-Flag"] == "YES"
    assert dict(high.headers)["X-Spam-Status"].startswith("Yes, score=7.0 required=6.6")
    untagged = decide(Scanned(CLEAN, spam(7.0)), AV, AntispamConfig(subject_tag=""))
    assert untagged.subject_tag == "" and dict(untagged.headers)["X-Spam-Flag"] == "YES"


def test_rewrite_message():
    received = b"Received: from a (b [192.0.2.1])\r\n\tby mx; date\r\n"
    content = received + b"subject:  hello\r\nFrom: x@y\r\n\r\nSubject: not a header\r\n"
    out = rewrite_message(content, len(received), (("X-Spam-Flag", "YES"),), "[SPAM]")
    assert out == received + b"X-Spam-Flag: YES\r\nsubject:  [SPAM] hello\r\nFrom: x@y\r\n\r\nSubject: not a header\r\n"
    no_subject = received + b"From: x@y\r\n\r\nSubject: in the body\r\n"
    out = rewrite_message(no_subject, len(received), (), "[SPAM]")
    assert out == received + b"Subject: [SPAM]\r\nFrom: x@y\r\n\r\nSubject: in the body\r\n"
    assert rewrite_message(content, len(received), (), "") == content
