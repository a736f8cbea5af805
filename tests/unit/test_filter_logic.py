import pytest

from mtaserver.config import AntispamConfig, AntivirusConfig
from mtaserver.filters.chain import Filter, Outcome, Step, combine, edit_head, rewrite_message
from mtaserver.filters.clamav import antivirus_outcome
from mtaserver.filters.scanners import AvResult, ScannerError, SpamResult, parse_clamd_reply, parse_spamd_reply, spamd_request
from mtaserver.filters.spamassassin import antispam_outcome, spam_levels
from mtaserver.model import Decision, Reply, Verdict


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


def spam(score: float) -> SpamResult:
    return SpamResult(score >= 5, score, 5.0, ("RULE_A", "RULE_B"))


VIRUS_REPLY = "554 5.7.0 Rejected: virus found: Bad.Thing"


@pytest.mark.parametrize(
    "virus, encrypted, av, decision, reply",
    [
        (None, (), AV, Decision.CONTINUE, None),
        ("Bad.Thing", (), AV, Decision.REJECT, VIRUS_REPLY),
        ("Bad.Thing", (), AntivirusConfig(action="discard"), Decision.DISCARD, None),
        (None, ("a.zip > secret.doc",), AV, Decision.REJECT, "554 5.7.0 Rejected: virus found: Heuristics.Encrypted.Zip"),
        (None, ("a.zip > secret.doc",), AntivirusConfig(block_encrypted_archives=False), Decision.CONTINUE, None),
        ("Heuristics.Encrypted.Zip", (), AntivirusConfig(block_encrypted_archives=False), Decision.CONTINUE, None),
    ],
)  # fmt: skip
def test_antivirus_outcome(virus, encrypted, av, decision, reply):
    o = antivirus_outcome(virus, encrypted, av)
    assert o.verdict.decision is decision
    assert (o.verdict.reply.line() if o.verdict.reply else None) == reply
    assert o.step.filter == "antivirus" and o.step.result == ("clean" if decision is Decision.CONTINUE else "virus")
    if decision is not Decision.CONTINUE:
        assert o.notices is not None and o.notices.admin and o.notices.recipients and not o.notices.bounce


@pytest.mark.parametrize(
    "score, sa, decision, reply, result",
    [
        (1.0, SA, Decision.CONTINUE, None, "ham"),
        (7.0, SA, Decision.CONTINUE, None, "tagged"),
        (1000.0, SA, Decision.DISCARD, None, "spam"),
        (15.0, AntispamConfig(blocked_spam_action="reject"), Decision.REJECT, "550 5.7.1 Rejected: message looks like spam", "spam"),
        (1000.0, AntispamConfig(blocked_spam_action="deliver"), Decision.CONTINUE, None, "tagged"),
    ],
)  # fmt: skip
def test_antispam_outcome(score, sa, decision, reply, result):
    o = antispam_outcome(spam(score), sa)
    assert o.verdict.decision is decision and (o.verdict.reply.line() if o.verdict.reply else None) == reply
    assert o.step == Step("antispam", result, "RULE_A,RULE_B", score), "the score and spamd's rules go into the trail"


def test_antispam_logs_score_and_percent():
    o = antispam_outcome(spam(7.0), SA)
    assert o.verdict.reason == "spam tagged: score 7.0 (35%), tag 6.6 (33%), kill 15.0 (75%)"


def test_tagging_follows_the_levels():
    low = antispam_outcome(spam(3.0), SA).verdict
    assert low.subject_tag == "" and dict(low.headers)["X-Spam-Status"] == "No, score=3.0 required=6.6 tests=[RULE_A, RULE_B]"
    assert "X-Spam-Flag" not in dict(low.headers) and dict(low.headers)["X-Spam-Level"] == "***"
    high = antispam_outcome(spam(7.0), SA).verdict
    assert high.subject_tag == "[SPAM]" and dict(high.headers)["X-Spam-Flag"] == "YES"
    assert dict(high.headers)["X-Spam-Status"].startswith("Yes, score=7.0 required=6.6")
    untagged = antispam_outcome(spam(7.0), AntispamConfig(subject_tag="")).verdict
    assert untagged.subject_tag == "" and dict(untagged.headers)["X-Spam-Flag"] == "YES"


class _F(Filter):
    def __init__(self, name: str, on_error: str) -> None:
        self.name, self.on_error = name, on_error


def test_a_filter_without_a_verdict_gives_its_on_error():
    t = _F("antivirus", "tempfail").failed("timeout", "no verdict within 60s", 60000.0)
    assert t.verdict.decision is Decision.TEMPFAIL and t.verdict.reply.line() == "451 4.7.1 Try again later: content scanner unavailable"
    assert t.step == Step("antivirus", "timeout", "no verdict within 60s", None, 60000.0)
    a = _F("antispam", "accept").failed("error", "spamd: Connection refused", 1.0)
    assert a.verdict.decision is Decision.CONTINUE and a.step.result == "error"


def _o(decision: Decision, name: str, **kw) -> Outcome:
    reply = {Decision.REJECT: Reply(550, "5.7.1", name), Decision.TEMPFAIL: Reply(451, "4.7.1", name)}.get(decision)
    return Outcome(Verdict(decision, reply, name, **kw), Step(name, decision.value))


@pytest.mark.parametrize(
    "decisions, winner",
    [
        ([Decision.CONTINUE, Decision.CONTINUE], None),
        ([Decision.TEMPFAIL, Decision.REJECT], 1),  # a definitive block is not delayed by a scanner down
        ([Decision.TEMPFAIL, Decision.DISCARD], 1),
        ([Decision.DISCARD, Decision.REJECT], 1),
        ([Decision.REJECT, Decision.REJECT], 0),  # the first in the chain's order among equals
        ([Decision.HOLD, Decision.TEMPFAIL], 1),  # a tempfail is never turned into an acceptance
        ([Decision.CONTINUE, Decision.HOLD], 1),
    ],
)  # fmt: skip
def test_combine_precedence(decisions, winner):
    outcomes = [_o(d, f"f{i}") for i, d in enumerate(decisions)]
    c = combine(outcomes)
    assert c.winner is (outcomes[winner] if winner is not None else None)
    if winner is not None:
        assert c.verdict.decision is decisions[winner]


def test_combine_gathers_headers_and_the_first_tag_when_queued():
    a = _o(Decision.CONTINUE, "a", headers=(("A", "1"),), subject_tag="[SPAM]")
    b = _o(Decision.CONTINUE, "b", headers=(("B", "2"),), subject_tag="[X]")
    h = _o(Decision.HOLD, "h", headers=(("H", "3"),))
    c = combine([a, h, b])
    assert c.verdict.decision is Decision.HOLD and c.verdict.headers == (("A", "1"), ("H", "3"), ("B", "2"))
    assert c.verdict.subject_tag == "[SPAM]" and c.verdict.reason == "a; h; b"
    r = combine([a, _o(Decision.REJECT, "r")])
    assert r.verdict.headers == () and r.verdict.reply.line() == "550 5.7.1 r"


def test_edit_head_strips_only_the_clients_part_then_adds():
    received = b"Received: by mx; date\r\n"
    head = received + b"Authentication-Results: forged\r\nSubject: hi\r\n"
    strip = lambda h: h.replace(b"Authentication-Results: forged\r\n", b"")  # noqa: E731
    out = edit_head(head, len(received), Verdict(Decision.CONTINUE, headers=(("Authentication-Results", "mx; dkim=none"),)), [strip])
    assert out == received + b"Authentication-Results: mx; dkim=none\r\nSubject: hi\r\n"


def test_rewrite_message():
    received = b"Received: from a (b [192.0.2.1])\r\n\tby mx; date\r\n"
    content = received + b"subject:  hello\r\nFrom: x@y\r\n\r\nSubject: not a header\r\n"
    out = rewrite_message(content, len(received), (("X-Spam-Flag", "YES"),), "[SPAM]")
    assert out == received + b"X-Spam-Flag: YES\r\nsubject:  [SPAM] hello\r\nFrom: x@y\r\n\r\nSubject: not a header\r\n"
    no_subject = received + b"From: x@y\r\n\r\nSubject: in the body\r\n"
    out = rewrite_message(no_subject, len(received), (), "[SPAM]")
    assert out == received + b"Subject: [SPAM]\r\nFrom: x@y\r\n\r\nSubject: in the body\r\n"
    assert rewrite_message(content, len(received), (), "") == content


def test_walker_problems_block_when_encrypted_archives_are_blocked():
    o = antivirus_outcome(None, (), AV, ["archive too deep: a.zip > b.zip > c.zip > d.zip"])
    assert o.verdict.reply.line() == "554 5.7.0 Rejected: virus found: Heuristics.Limits.Exceeded"
    assert o.step.detail.startswith("Heuristics.Limits.Exceeded: archive too deep")
    assert antivirus_outcome(None, (), AntivirusConfig(block_encrypted_archives=False), ["archive too deep"]).verdict.decision is Decision.CONTINUE
    assert antivirus_outcome("Heuristics.Limits.Exceeded", (), AntivirusConfig(block_encrypted_archives=False)).verdict.decision is Decision.CONTINUE


def test_strip_fields_takes_whole_fields_and_nothing_after_a_broken_line():
    from mtaserver.filters.chain import SPAM_HEADERS, strip_fields

    head = b"X-Spam-Status: No,\r\n\ttests=[A]\r\nSubject: hi\r\nx-spam-FLAG: YES\r\n"
    assert strip_fields(head, SPAM_HEADERS) == b"Subject: hi\r\n"
    assert strip_fields(b"Subject: hi\r\n", SPAM_HEADERS) == b"Subject: hi\r\n"
    broken = b"Subject: hi\r\nnot a field\r\nX-Spam-Flag: YES\r\n"
    assert strip_fields(broken, SPAM_HEADERS) == broken, "after a line that is not a field nothing is judged"


def test_a_non_ascii_subject_tag_is_an_encoded_word_and_a_tag_cannot_break_a_header():
    from pydantic import ValidationError

    from mtaserver.filters.chain import encode_tag

    received = b"Received: by mx\r\n"
    out = rewrite_message(received + b"Subject: offer\r\n\r\n", len(received), (), "[SPAMÉ]")
    assert out == received + b"Subject: =?utf-8?b?W1NQQU3DiV0=?= offer\r\n\r\n"
    assert encode_tag("[SPAM]") == b"[SPAM]"
    with pytest.raises(ValidationError, match="no control characters"):
        AntispamConfig(subject_tag="[SPAM]\r\nBcc: x@example.org")


def test_bounce_is_only_for_trusted_clients():
    from mtaserver.config import InboundConfig
    from mtaserver.filters.attachment_filter import attachments_outcome
    from mtaserver.filters.mime import MimeWalker

    w = MimeWalker()
    w.feed(b'Content-Type: application/octet-stream; name="a.exe"\r\n\r\nMZ\r\n')
    report = w.close()
    cfg = InboundConfig(blocked_extensions=["exe"], blocked_extensions_action="bounce")
    trusted = attachments_outcome(report, cfg, trusted=True)
    assert trusted.verdict.decision is Decision.DISCARD and trusted.notices.bounce
    outsider = attachments_outcome(report, cfg, trusted=False)
    assert outsider.verdict.decision is Decision.REJECT and not outsider.notices.bounce
    assert outsider.verdict.reply.line() == '550 5.7.1 Attachment type not allowed. File "a.exe" has the unacceptable extension "exe"'
