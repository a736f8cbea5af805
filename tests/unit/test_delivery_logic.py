import random

import pytest

from mtaserver.delivery.mx import NextHop, parse_nexthop, plan_mx
from mtaserver.delivery.smtp import from_reply
from mtaserver.dns import NotFound, Record, TempFail
from mtaserver.queue import backoff
from mtaserver.model import Fate, Reply
from mtaserver.queue.dsn import RecipientStatus, build_dsn, notify_wants


def mx(pref, host):
    return Record("MX", 300, host, pref)


def test_mx_plan_orders_by_preference_and_shuffles_ties():
    seen = set()
    for seed in range(20):
        hosts = plan_mx("d.test", [mx(20, "c"), mx(10, "a"), mx(10, "b")], random.Random(seed))
        assert hosts[2] == "c" and set(hosts[:2]) == {"a", "b"}
        seen.add(tuple(hosts))
    assert len(seen) == 2, "equal preferences are tried in random order"


def test_mx_plan_failures():
    assert plan_mx("d.test", NotFound("x", nxdomain=False)) == ["d.test"]  # implicit MX
    nx = plan_mx("d.test", NotFound("x", nxdomain=True))
    assert (nx.fate, nx.status) == (Fate.BOUNCED, "5.1.2")
    null = plan_mx("d.test", [mx(0, ".")])
    assert (null.fate, null.status) == (Fate.BOUNCED, "5.1.10")
    temp = plan_mx("d.test", TempFail("SERVFAIL"))
    assert (temp.fate, temp.status) == (Fate.DEFERRED, "4.4.3")


def test_nexthop_syntax():
    assert parse_nexthop("[relay.test]:2525") == NextHop("relay.test", 2525, mx=False)
    assert parse_nexthop("[192.0.2.1]") == NextHop("192.0.2.1", 25, mx=False)
    assert parse_nexthop("relay.test") == NextHop("relay.test", 25, mx=True)
    assert parse_nexthop("relay.test:587", 25) == NextHop("relay.test", 587, mx=True)


@pytest.mark.parametrize(
    "code, text, fate, status",
    [
        (250, "2.0.0 Ok", Fate.SENT, "2.0.0"),
        (451, "4.7.1 greylisted", Fate.DEFERRED, "4.7.1"),
        (550, "5.1.1 unknown", Fate.BOUNCED, "5.1.1"),
        (550, "no enhanced code", Fate.BOUNCED, "5.0.0"),
        (450, "5.1.1 class mismatch", Fate.DEFERRED, "4.1.1"),
    ],
)
def test_reply_classification(code, text, fate, status):
    o = from_reply(Reply.from_lines(code, [text]), "r")
    assert (o.fate, o.status) == (fate, status)


def test_from_reply_strips_control_characters():
    assert "\r" not in from_reply(Reply.from_lines(550, ["5.0.0 a\r\nInjected: yes"]), "r").text


def test_a_multi_line_reply_is_one_line_with_one_status():
    r = Reply.from_lines(550, ["5.1.1 The account does not exist.", "5.1.1 Please check it.", "see the help page"])
    assert (r.status, r.lines) == ("5.1.1", ("The account does not exist.", "Please check it.", "see the help page"))
    o = from_reply(r, "r")
    assert (o.fate, o.status) == (Fate.BOUNCED, "5.1.1")
    assert o.text == "550 5.1.1 The account does not exist. Please check it. see the help page"
    assert from_reply(Reply.from_lines(421, ["mx.test closing"]), "r", "4.0").status == "4.4.0"  # the default detail


def test_backoff_doubles_with_age_within_bounds():
    a = 1000.0
    delays = [backoff.next_attempt(arrival=a, now=a + age, min_backoff=300, max_backoff=4000) - (a + age) for age in (0, 300, 600, 1200, 2400, 4800, 100000)]
    assert delays == [300, 300, 600, 1200, 2400, 4000, 4000]
    jittered = backoff.next_attempt(arrival=a, now=a + 600, min_backoff=300, max_backoff=4000, jitter=0.99)
    assert a + 600 + 600 < jittered <= a + 600 + 660


def test_expiry_and_bounce_lifetime():
    kw = dict(arrival=0.0, max_lifetime=100.0, bounce_lifetime=10.0)
    assert not backoff.expired(now=99, null_sender=False, **kw)
    assert backoff.expired(now=100, null_sender=False, **kw)
    assert backoff.expired(now=10, null_sender=True, **kw)
    assert backoff.expired(now=5, null_sender=True, arrival=0.0, max_lifetime=5.0, bounce_lifetime=10.0)  # capped
    assert backoff.delay_warning_due(arrival=0, now=14400, delay_warning=14400, already_warned=False)
    assert not backoff.delay_warning_due(arrival=0, now=14400, delay_warning=0, already_warned=False)


def _dsn(original: bytes, kind=Fate.BOUNCED, **kw) -> bytes:
    return build_dsn(
        kind=kind, hostname="mx.example.test", queue_id="Q1", sender="s@example.test", arrival=0.0, now=100.0,
        recipients=[RecipientStatus(address="r@x.test", status="5.1.1", diagnostic="550 5.1.1 no\r\nX-Evil: 1", remote_mta="mx.x.test")],
        original=original, **kw,
    )  # fmt: skip


def test_dsn_structure():
    d = _dsn(b"Message-ID: <a@b>\r\nSubject: s\r\n\r\nbody\r\n").decode()
    assert "Auto-Submitted: auto-replied" in d and "In-Reply-To: <a@b>" in d
    assert 'report-type=delivery-status' in d and "Reporting-MTA: dns; mx.example.test" in d
    assert "Final-Recipient: rfc822; r@x.test" in d and "Action: failed" in d and "Status: 5.1.1" in d
    assert "Remote-MTA: dns; mx.x.test" in d
    assert "Diagnostic-Code: smtp; 550 5.1.1 no X-Evil: 1" in d, "remote text cannot inject header lines"
    assert "\r\nX-Evil" not in d
    assert "Content-Type: message/rfc822" in d and d.endswith("--\r\n")


def test_dsn_attaches_only_headers_of_a_big_message():
    d = _dsn(b"Subject: s\r\n\r\n" + b"x" * 100, max_original=50).decode()
    assert "Content-Type: text/rfc822-headers" in d and "xxxx" not in d


def test_delay_warning_text():
    d = _dsn(b"Subject: s\r\n\r\nb\r\n", kind=Fate.DEFERRED, delay_hours=4, lifetime_days=5).decode()
    assert "Subject: Delayed Mail (still being retried)" in d and "Action: delayed" in d
    assert "for more than 4 hour(s)" in d and "until it is 5 day(s) old" in d


def test_success_dsn_only_when_asked():
    """RFC 3461: NOTIFY=SUCCESS gets a success report (Action: delivered, or relayed when the next
    hop takes no DSN responsibility), with the headers only; ENVID and ORCPT are reported."""
    d = build_dsn(
        kind=Fate.SENT, hostname="mx.example.test", queue_id="Q1", sender="s@example.test", arrival=0.0, now=100.0,
        recipients=[RecipientStatus(address="r@x.test", status="2.0.0", diagnostic="250 ok", orcpt="rfc822;Orig@x.test"),
                    RecipientStatus(address="t@y.test", status="2.0.0", diagnostic="250 ok", action="relayed")],
        original=b"Subject: s\r\n\r\nsecret body\r\n", envid="E-1",
    ).decode()  # fmt: skip
    assert "Subject: Successful Mail Delivery Report" in d and "successfully delivered" in d
    assert "Reporting-MTA: dns; mx.example.test\r\nOriginal-Envelope-Id: E-1\r\n" in d
    assert "Original-Recipient: rfc822; Orig@x.test\r\nAction: delivered" in d
    assert "Original-Recipient: rfc822; t@y.test\r\nAction: relayed" in d
    assert "text/rfc822-headers" in d and "secret body" not in d
    assert [notify_wants(n, Fate.SENT) for n in (None, "NEVER", "SUCCESS", "FAILURE,DELAY")] == [False, False, True, False]
    assert [notify_wants(n, Fate.BOUNCED) for n in (None, "NEVER", "SUCCESS", "FAILURE,DELAY")] == [True, False, False, True]
    assert [notify_wants(n, Fate.DEFERRED) for n in (None, "NEVER", "SUCCESS,DELAY", "FAILURE")] == [True, False, True, False]


def test_ret_hdrs_returns_the_headers_only():
    d = _dsn(b"Subject: s\r\n\r\nsecret body\r\n", ret_hdrs=True).decode()
    assert "Content-Type: text/rfc822-headers" in d and "secret body" not in d and "Action: failed" in d
