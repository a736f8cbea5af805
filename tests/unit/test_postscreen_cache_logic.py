"""The postscreen cache record and its pure decisions: to do, PASS NEW/OLD, writes, cleanup."""

import pytest

from mtaserver.config import PostscreenConfig
from mtaserver.postscreen.cache import (
    DISABLED,
    NEW,
    NEW_CLIENT,
    RecentRecords,
    Stamps,
    allowlist_non_dnsbl,
    is_new,
    is_pass_old,
    record_passes,
    retain,
    checks_due,
)
from mtaserver.postscreen.checks import CACHED, Check, enabled_checks, ignore_ttl, pass_ttl

NOW = 1_750_000_000
ALL = frozenset(CACHED)
EARLY = frozenset({Check.PREGREET, Check.DNSBL})


def test_record_format_is_postfix_s():
    s = Stamps(pregreet=NOW + 86400, dnsbl=NOW + 150, pipelining=DISABLED, non_smtp=NEW, bare_newline=DISABLED)
    assert s.encode() == f"{NOW + 86400};{NOW + 150};1;0;1"
    assert Stamps.decode(s.encode()) == s
    assert NEW_CLIENT.encode() == "0;0;0;0;0"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("5;6", "5;6;1;1;1"),  # older writers: missing tests read as DISABLED
        ("", "1;1;1;1;1"),
        ("garbage", "1;1;1;1;1"),
        ("5;x;7;8;9", "5;1;1;1;1"),  # sscanf stops at the first bad field
        ("5;6x;7;8;9", "5;6;1;1;1"),
        ("1;2;3;4;5;6", "1;2;3;4;5"),
    ],
)
def test_decoding_is_lenient_like_sscanf(text, want):
    assert Stamps.decode(text).encode() == want


def test_a_new_client_has_every_enabled_test_to_do():
    assert checks_due(NEW_CLIENT, EARLY, NOW) == EARLY
    assert checks_due(NEW_CLIENT, frozenset(), NOW) == frozenset()
    assert is_new(NEW_CLIENT) and not is_pass_old(NEW_CLIENT, EARLY, NOW)


def test_only_expired_enabled_tests_are_due():
    s = Stamps(pregreet=NOW + 10, dnsbl=NOW - 1, pipelining=NOW, non_smtp=DISABLED, bare_newline=NOW + 99)
    assert checks_due(s, ALL, NOW) == {Check.DNSBL, Check.NON_SMTP}  # expiry == now is still valid
    assert checks_due(s, {Check.PREGREET, Check.BARE_NEWLINE}, NOW) == frozenset()
    assert is_pass_old(s, {Check.PREGREET, Check.PIPELINING}, NOW)
    assert checks_due(s, ALL, NOW + 11) == {Check.PREGREET, Check.DNSBL, Check.PIPELINING, Check.NON_SMTP}
    assert not is_new(s)


def test_writing_passes_marks_new_disabled_tests():
    passed = {Check.PREGREET: NOW + 86400, Check.DNSBL: NOW + 150}
    s = record_passes(NEW_CLIENT, passed, EARLY)
    assert s.encode() == f"{NOW + 86400};{NOW + 150};1;1;1"
    assert not is_new(s), "enabling a deep test later must not log PASS NEW"
    # an enabled test that did not pass keeps NEW; old passes are kept
    s2 = record_passes(s, {Check.PREGREET: NOW + 2 * 86400}, {Check.PREGREET, Check.DNSBL, Check.PIPELINING})
    assert s2.encode() == f"{NOW + 2 * 86400};{NOW + 150};1;1;1"
    s3 = record_passes(NEW_CLIENT, {Check.DNSBL: NOW + 60.9}, {Check.DNSBL, Check.PIPELINING})
    assert s3.encode() == f"1;{NOW + 60};0;1;1" and is_new(s3)


def test_dnswl_allowlisting_raises_every_other_stamp():
    s = Stamps(pregreet=NEW, dnsbl=NOW + 600, pipelining=NOW + 10**6, non_smtp=DISABLED, bare_newline=NOW - 5)
    out = allowlist_non_dnsbl(s, NOW, 600)
    assert out == Stamps(pregreet=NOW + 600, dnsbl=NOW + 600, pipelining=NOW + 10**6, non_smtp=NOW + 600, bare_newline=NOW + 600)


def test_cleanup_drops_an_entry_once_any_enabled_pass_expired_longer_ago_than_retention():
    # psc_cache_validator: keep iff nothing would be to do at now - retention
    week = 7 * 86400
    s = Stamps(pregreet=NOW, dnsbl=NOW + 3600, pipelining=DISABLED, non_smtp=DISABLED, bare_newline=DISABLED)
    assert retain(s, EARLY, NOW + week, week)
    assert not retain(s, EARLY, NOW + week + 1, week)
    assert retain(s, {Check.DNSBL}, NOW + week + 3600, week)
    assert not retain(s, {Check.DNSBL}, NOW + week + 3601, week)
    assert not retain(NEW_CLIENT, EARLY, NOW, week), "an enabled test that never passed"
    assert retain(s, frozenset(), NOW + 10 * week, week), "no enabled test: nothing is ever due"


def test_checks_follow_the_configuration():
    cfg = PostscreenConfig()
    assert enabled_checks(cfg) == {Check.PREGREET}  # the banner is on by default, as in Postfix
    cfg = PostscreenConfig.model_validate(
        {"greet": {"banner": ""}, "dnsbl": {"sites": ["bl.test"], "min_ttl": "30s"}, "pipelining": {"enable": True, "ttl": "2d"}}
    )
    assert enabled_checks(cfg) == {Check.DNSBL, Check.PIPELINING}
    assert ignore_ttl(cfg) == 30
    assert pass_ttl(Check.PIPELINING, cfg) == 2 * 86400
    assert pass_ttl(Check.PREGREET, cfg) == 86400
    assert pass_ttl(Check.DNSBL, cfg, dnsbl_ttl=150) == 150
    with pytest.raises(ValueError):
        pass_ttl(Check.DNSBL, cfg)
    with pytest.raises(ValueError):
        pass_ttl(Check.DENYLIST, cfg)


def test_recent_records_answer_for_ttl_seconds_then_ask_the_store_again():
    recent = RecentRecords(ttl=10.0, limit=3)
    s = Stamps.decode("1795600000;1795600000;1;1;1")
    assert recent.get("192.0.2.1", 100.0) is None
    recent.put("192.0.2.1", s, 100.0)
    assert recent.get("192.0.2.1", 109.9) == s
    assert recent.get("192.0.2.1", 110.0) is None  # expired: the store decides again
    assert len(recent) == 0
    recent.put("192.0.2.1", s, 200.0)
    assert recent.get("192.0.2.1", 199.0) is None  # the clock went back: do not trust it


def test_recent_records_forget_the_oldest_first_when_full():
    recent = RecentRecords(ttl=10.0, limit=2)
    s = Stamps.decode("1;1;1;1;1")
    recent.put("192.0.2.1", s, 0.0)
    recent.put("192.0.2.2", s, 1.0)
    recent.put("192.0.2.1", s, 2.0)  # rewritten: now the newest
    recent.put("192.0.2.3", s, 3.0)  # full: 192.0.2.2 goes
    assert len(recent) == 2
    assert recent.get("192.0.2.2", 4.0) is None
    assert recent.get("192.0.2.1", 4.0) == s and recent.get("192.0.2.3", 4.0) == s
