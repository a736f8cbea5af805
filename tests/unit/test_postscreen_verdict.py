"""Judgements for every check under every action, the reply catalogue, conclusions, log lines."""

import pytest

from mtaserver.config import PostscreenConfig
from mtaserver.model import Reply
from mtaserver.postscreen import logline
from mtaserver.postscreen.cache import NEW_CLIENT, Stamps
from mtaserver.postscreen.checks import CACHED, Action, Check
from mtaserver.postscreen.verdict import (
    FINAL_TEMPFAIL,
    RCPT_TEMPFAIL,
    TOO_MANY_CONNECTIONS,
    Outcome,
    Screening,
    Step,
    conclude,
    decide,
    dnsbl_allowlisted,
    dnsbl_failed,
    on_failure,
)

NOW = 1_750_000_000
IP = "192.0.2.7"

CATALOGUE = {  # SPEC 8.6: check -> (drop, enforce)
    Check.DENYLIST: ("521 5.3.2 Service currently unavailable", "550 5.3.2 Service currently unavailable"),
    Check.PREGREET: ("521 5.5.1 Protocol error", "550 5.5.1 Protocol error"),
    Check.DNSBL: (
        "521 5.7.1 Service unavailable; client [192.0.2.7] blocked using zen.spamhaus.org",
        "550 5.7.1 Service unavailable; client [192.0.2.7] blocked using zen.spamhaus.org",
    ),
    Check.BARE_NEWLINE: ("521 5.5.1 Protocol error", "550 5.5.1 Protocol error"),
    Check.PIPELINING: ("521 5.5.1 Protocol error", "550 5.5.1 Protocol error"),
    Check.NON_SMTP: ("521 5.7.0 Error: I can break rules, too. Goodbye.", "550 5.5.1 Protocol error"),
}


@pytest.mark.parametrize("check", list(Check))
def test_every_check_under_every_action(check):
    drop, enforce = CATALOGUE[check]
    v = decide(check, Action.DROP, client_ip=IP, dnsbl_zone="zen.spamhaus.org", ignore_ttl=60)
    assert (v.step, v.reply.line(), v.failed) == (Step.DROP, drop, True)
    v = decide(check, Action.ENFORCE, client_ip=IP, dnsbl_zone="zen.spamhaus.org", ignore_ttl=60)
    assert (v.step, v.reply.line(), v.failed) == (Step.ENFORCE, enforce, True)
    v = decide(check, Action.IGNORE, client_ip=IP, dnsbl_zone="zen.spamhaus.org", ignore_ttl=60)
    assert (v.step, v.reply, v.failed) == (Step.CONTINUE, None, False)
    deep = check in (Check.PIPELINING, Check.NON_SMTP, Check.BARE_NEWLINE)
    assert v.ignore_ttl == (60 if deep else None), "ignore: deep tests pass for psc_min_ttl, early ones repeat"


def test_the_dnsbl_reply_needs_ip_and_zone():
    with pytest.raises(ValueError):
        decide(Check.DNSBL, Action.DROP, client_ip=IP)
    v = decide(Check.DNSBL, Action.ENFORCE, client_ip="2001:db8::1", dnsbl_zone="bl.test")
    assert v.reply.line() == "550 5.7.1 Service unavailable; client [2001:db8::1] blocked using bl.test"


def test_actions_come_from_the_configuration_defaults():
    cfg = PostscreenConfig()
    assert on_failure(Check.DENYLIST, cfg, client_ip=IP).step is Step.CONTINUE
    assert on_failure(Check.PREGREET, cfg, client_ip=IP).step is Step.CONTINUE
    assert on_failure(Check.PIPELINING, cfg, client_ip=IP).step is Step.ENFORCE  # Postfix default
    assert on_failure(Check.NON_SMTP, cfg, client_ip=IP).reply == Reply(521, "5.7.0", "Error: I can break rules, too. Goodbye.")
    assert on_failure(Check.BARE_NEWLINE, cfg, client_ip=IP).ignore_ttl == 60  # min of the TTLs: dnsbl.min_ttl


def test_other_catalogue_replies():
    assert TOO_MANY_CONNECTIONS.line() == "421 4.7.0 Error: too many connections"
    assert RCPT_TEMPFAIL.line() == "450 4.3.2 Service currently unavailable"
    assert FINAL_TEMPFAIL.line() == "421 4.3.2 Service currently unavailable"


def test_dnsbl_threshold_and_allowlist_threshold():
    assert dnsbl_failed(3, 3) and not dnsbl_failed(2, 3)
    assert dnsbl_allowlisted(-2, threshold=1, allowlist_threshold=-1, any_failed=False)
    assert not dnsbl_allowlisted(-2, threshold=1, allowlist_threshold=0, any_failed=False), "0 disables it"
    assert not dnsbl_allowlisted(-1, threshold=1, allowlist_threshold=-2, any_failed=False)
    assert not dnsbl_allowlisted(-2, threshold=1, allowlist_threshold=-1, any_failed=True)


# --- conclusions ---------------------------------------------------------------------------

EARLY = frozenset({Check.PREGREET, Check.DNSBL})


def screening(due=EARLY, new=True):
    return Screening(client_ip=IP, due=frozenset(due), new=new)


def test_a_new_client_passing_everything_is_pass_new_and_cached():
    s = screening().passed(Check.PREGREET, NOW + 86400).passed(Check.DNSBL, NOW + 150)
    c = conclude(s, stamps=NEW_CLIENT, enabled=EARLY, require_reconnect=False)
    assert (c.outcome, c.reply, c.pass_log) == (Outcome.SERVE, None, "PASS NEW")
    assert c.cache.encode() == f"{NOW + 86400};{NOW + 150};1;1;1"
    old = Stamps.decode(c.cache.encode())
    c2 = conclude(screening({Check.DNSBL}, new=False).passed(Check.DNSBL, NOW + 300), stamps=old, enabled=EARLY, require_reconnect=False)
    assert c2.pass_log == "PASS OLD" and c2.cache.dnsbl == NOW + 300 and c2.cache.pregreet == NOW + 86400


def test_an_ignored_pregreet_is_served_but_neither_logged_nor_cached_as_passed():
    s = screening().judged(decide(Check.PREGREET, Action.IGNORE), NOW).passed(Check.DNSBL, NOW + 150)
    c = conclude(s, stamps=NEW_CLIENT, enabled=EARLY, require_reconnect=False)
    assert (c.outcome, c.pass_log) == (Outcome.SERVE, None)
    assert c.cache.pregreet == 0 and c.cache.dnsbl == NOW + 150  # pregreet stays to do


def test_an_ignored_deep_test_passes_for_the_minimum_ttl():
    due = {Check.PIPELINING}
    s = screening(due).judged(decide(Check.PIPELINING, Action.IGNORE, ignore_ttl=60), NOW)
    c = conclude(s, stamps=NEW_CLIENT, enabled=due, require_reconnect=False)
    assert (c.outcome, c.pass_log, c.cache.pipelining) == (Outcome.SERVE, "PASS NEW", NOW + 60)


def test_enforce_keeps_the_session_and_caches_nothing():
    s = screening().passed(Check.PREGREET, NOW + 86400)
    s = s.judged(decide(Check.DENYLIST, Action.ENFORCE), NOW)
    s = s.judged(decide(Check.DNSBL, Action.ENFORCE, client_ip=IP, dnsbl_zone="bl.test"), NOW)
    c = conclude(s, stamps=NEW_CLIENT, enabled=EARLY, require_reconnect=False)
    assert c.outcome is Outcome.ENFORCE and c.cache is None and c.pass_log is None
    assert c.reply.line() == "550 5.7.1 Service unavailable; client [192.0.2.7] blocked using bl.test"  # last wins


def test_drop_wins_over_everything():
    s = screening().judged(decide(Check.PREGREET, Action.ENFORCE), NOW).judged(decide(Check.DNSBL, Action.DROP, client_ip=IP, dnsbl_zone="z.test"), NOW)
    c = conclude(s, stamps=NEW_CLIENT, enabled=EARLY, require_reconnect=True)
    assert (c.outcome, c.reply.code, c.cache) == (Outcome.DROP, 521, None)


def test_deep_tests_with_reconnect_answer_450_like_postfix():
    due = {Check.PIPELINING, Check.BARE_NEWLINE}
    s = screening(due).passed(Check.PIPELINING, NOW + 30 * 86400).passed(Check.BARE_NEWLINE, NOW + 30 * 86400)
    strict = conclude(s, stamps=NEW_CLIENT, enabled=due, require_reconnect=True)
    inline = conclude(s, stamps=NEW_CLIENT, enabled=due, require_reconnect=False)
    assert (strict.outcome, strict.reply, strict.pass_log) == (Outcome.RECONNECT, RCPT_TEMPFAIL, "PASS NEW")
    assert (inline.outcome, inline.reply) == (Outcome.SERVE, None)
    assert strict.cache == inline.cache
    early_only = conclude(screening().passed(Check.DNSBL, NOW), stamps=NEW_CLIENT, enabled=EARLY, require_reconnect=True)
    assert early_only.outcome is Outcome.SERVE


def test_nothing_passed_writes_nothing():
    c = conclude(screening(), stamps=NEW_CLIENT, enabled=EARLY, require_reconnect=False)
    assert (c.outcome, c.pass_log, c.cache) == (Outcome.SERVE, None, None)
    assert len(CACHED) == 5


# --- log lines (SPEC 13) -------------------------------------------------------------------


def test_log_lines_word_for_word():
    assert logline.connect("1.2.3.4", 5678, "10.0.0.1", 25) == "CONNECT from [1.2.3.4]:5678 to [10.0.0.1]:25"
    assert logline.allowlisted("1.2.3.4", 5678) == "ALLOWLISTED [1.2.3.4]:5678"
    assert logline.denylisted("1.2.3.4", 5678) == "DENYLISTED [1.2.3.4]:5678"
    assert logline.pass_line("PASS NEW", "1.2.3.4", 5678) == "PASS NEW [1.2.3.4]:5678"
    assert logline.pregreet(b"EHLO foo\r\n\x00", 0.1234, "1.2.3.4", 5678) == "PREGREET 11 after 0.12 from [1.2.3.4]:5678: EHLO foo\\r\\n\\x00"
    assert logline.dnsbl_rank(3, "1.2.3.4", 5678) == "DNSBL rank 3 for [1.2.3.4]:5678"
    assert logline.hangup(1.234, "1.2.3.4", 5678) == "HANGUP after 1.2 from [1.2.3.4]:5678 in tests before SMTP handshake"
    assert logline.bare_newline("1.2.3.4", 5678, b"EHLO foo") == "BARE NEWLINE from [1.2.3.4]:5678 after EHLO foo"
    assert logline.non_smtp_command("1.2.3.4", 5678, "CONNECT", b"GET / HTTP/1.0") == "NON-SMTP COMMAND from [1.2.3.4]:5678 after CONNECT: GET / HTTP/1.0"
    assert logline.pipelining("1.2.3.4", 5678, "MAIL", b"RCPT TO:<a@b>\r\n") == "COMMAND PIPELINING from [1.2.3.4]:5678 after MAIL: RCPT TO:<a@b>\\r\\n"
    assert logline.command_limit("COUNT", "1.2.3.4", 5678, "RCPT") == "COMMAND COUNT LIMIT from [1.2.3.4]:5678 after RCPT"
    reply = Reply(550, "5.7.1", "Service unavailable; client [1.2.3.4] blocked using zen.spamhaus.org")
    assert logline.noqueue_rcpt("1.2.3.4", 5678, reply, sender="s@x", recipient="r@y", proto="ESMTP", helo="h") == (
        "NOQUEUE: reject: RCPT from [1.2.3.4]:5678: 550 5.7.1 Service unavailable; client [1.2.3.4] blocked using "
        "zen.spamhaus.org; from=<s@x>, to=<r@y>, proto=ESMTP, helo=<h>"
    )
    assert logline.noqueue_connect("1.2.3.4", 5678, "too many connections") == "NOQUEUE: reject: CONNECT from [1.2.3.4]:5678: too many connections"
    assert logline.disconnect("2001:db8::1", 25) == "DISCONNECT [2001:db8::1]:25"
    assert logline.dnsbl_listed("1.2.3.4", "zen.spamhaus.org", "127.0.0.2") == "addr 1.2.3.4 listed by domain zen.spamhaus.org as 127.0.0.2"
    assert [logline.elapsed(x) for x in (0.004, 0.12, 1.25, 12.4, 123)] == ["0.00", "0.12", "1.2", "12", "123"]


def test_dnswl_allowlisting_flow_passes_every_due_test_for_the_dnsbl_ttl():
    # what the session does when dnsbl_allowlisted(): psc_allowlist_non_dnsbl
    from mtaserver.postscreen.cache import allowlist_non_dnsbl

    due = {Check.PREGREET, Check.DNSBL, Check.PIPELINING}
    enabled = due
    ttl = 600
    raised = allowlist_non_dnsbl(NEW_CLIENT, NOW, ttl)
    s = screening(due).passed(Check.DNSBL, NOW + ttl)
    for check in sorted(due - {Check.DNSBL}):
        s = s.skip(check, raised.get(check))
    c = conclude(s, stamps=raised, enabled=enabled, require_reconnect=True)
    assert (c.outcome, c.pass_log) == (Outcome.SERVE, "PASS NEW")  # pipelining was skipped: no reconnect
    assert c.cache.encode() == f"{NOW + 600};{NOW + 600};{NOW + 600};{NOW + 600};{NOW + 600}"
