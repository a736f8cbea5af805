"""DNSBL sites: pattern syntax, query names, scoring, TTLs, and query_all over a stub resolver."""

import asyncio
import logging
from pathlib import Path

import pytest

from mtaserver.config import ConfigError, load
from mtaserver.dns import NotFound, Record, TempFail
from mtaserver.postscreen.dnsbl import (
    Lookup,
    ZoneAnswer,
    dnsbl_ttl,
    parse_filter,
    parse_site,
    parse_sites,
    query_all,
    query_name,
    score,
    zones,
)

# --- patterns ------------------------------------------------------------------------------


def test_site_defaults_and_parts():
    s = parse_site("zen.spamhaus.org")
    assert (s.zone, s.filter, s.weight) == ("zen.spamhaus.org", None, 1)
    s = parse_site("ZEN.Spamhaus.org.=127.0.0.[2..11]*3")
    assert (s.zone, s.filter.text, s.weight) == ("zen.spamhaus.org", "127.0.0.[2..11]", 3)
    s = parse_site("list.dnswl.org=127.0.[0..255].[1..3]*-2")
    assert s.weight == -2 and s.filter.matches("127.0.9.2") and not s.filter.matches("127.0.9.0")
    assert parse_site("bl.test*+4").weight == 4


def test_an_entry_may_hold_several_sites_like_main_cf():
    sites = parse_sites(["zen.spamhaus.org*3, bl.spamcop.net*2", "b.barracudacentral.org  list.dnswl.org*-1"])
    assert [s.zone for s in sites] == ["zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org", "list.dnswl.org"]
    assert zones(parse_sites(["a.test=127.0.0.2", "b.test", "a.test*2"])) == ("a.test", "b.test")


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("127.0.0.2", ["127.0.0.2"], ["127.0.0.3", "127.0.1.2"]),
        ("127.0.0.[2..11]", ["127.0.0.2", "127.0.0.11"], ["127.0.0.1", "127.0.0.12"]),
        ("127.0.[0..255].[1..3]", ["127.0.0.1", "127.0.255.3"], ["127.0.0.0", "127.0.5.4", "127.1.0.1"]),
        ("127.0.0.[2;4;6..8]", ["127.0.0.2", "127.0.0.4", "127.0.0.7"], ["127.0.0.3", "127.0.0.5", "127.0.0.9"]),
        ("[127.0.0.[2;3]]", ["127.0.0.3"], ["127.0.0.4"]),
        ("[127..128].0.0.2", ["128.0.0.2"], ["126.0.0.2"]),
        ("127.0.0.2", [], ["::1", "garbage"]),
    ],
)
def test_filters_match_like_postfix_ip_match(pattern, yes, no):
    f = parse_filter(pattern)
    assert all(f.matches(a) for a in yes)
    assert not any(f.matches(a) for a in no)


@pytest.mark.parametrize(
    ("site", "message"),
    [
        ("zen.spamhaus.org=127.0.0", "need four fields"),
        ("zen.spamhaus.org=127.0.0.256", "out of range"),
        ("zen.spamhaus.org=127.0.0.[11..2]", "runs backwards"),
        ("zen.spamhaus.org=127.0.0.[2..", "missing ']'"),
        ("zen.spamhaus.org=127.0.0.2.1", "garbage after the fourth field"),
        ("zen.spamhaus.org=127.0.0.3[6..9]", "garbage after the fourth field"),
        ("zen.spamhaus.org=127.0.3[6..9].1", "need four fields"),
        ("zen.spamhaus.org=127.0.[3.4]", "need a decimal number"),
        ("zen.spamhaus.org=", "empty filter"),
        ("zen.spamhaus.org*", "weight factor"),
        ("zen.spamhaus.org*1.5", "weight factor"),
        ("zen.spamhaus.org*3x", "weight factor"),
        ("http://zen.spamhaus.org", "bad DNSBL domain name"),
        ("zen..spamhaus.org", "bad DNSBL domain name"),
        ("=127.0.0.2", "bad DNSBL domain name"),
        ("127.0.0.2", "numeric"),
    ],
)
def test_bad_sites_are_refused(site, message):
    with pytest.raises(ValueError) as exc:
        parse_sites([site])
    assert message in str(exc.value)
    assert str(exc.value).startswith("entry 1: ")


def test_config_refuses_bad_sites(tmp_path: Path):
    p = tmp_path / "m.yaml"
    p.write_text('postscreen:\n  dnsbl:\n    sites:\n      - zen.spamhaus.org*3\n      - "bl.test=127.0.0.[2..300]"\n')
    with pytest.raises(ConfigError) as exc:
        load(p)
    [line] = exc.value.errors
    assert line.startswith(f"{p}:3: postscreen.dnsbl.sites: entry 2: bad filter")
    p.write_text('postscreen:\n  dnsbl: {sites: ["zen.spamhaus.org=127.0.0.[2..11]*3, list.dnswl.org*-2"]}\n')
    assert load(p).postscreen.dnsbl.sites == ["zen.spamhaus.org=127.0.0.[2..11]*3, list.dnswl.org*-2"]


def test_query_names_ipv4_ipv6_and_mapped():
    assert query_name("192.0.2.99", "zen.spamhaus.org") == "99.2.0.192.zen.spamhaus.org"
    # RFC 5782 2.4 example
    assert query_name("2001:db8:1:2:3:4:567:89ab", "ugly.example.com") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
    )
    assert query_name("::ffff:192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    with pytest.raises(ValueError):
        query_name("example.com", "bl.test")


# --- scoring -------------------------------------------------------------------------------


def listed(zone, *addrs, ttl=60):
    return ZoneAnswer(zone=zone, status=Lookup.LISTED, addresses=addrs, ttl=ttl)


def unlisted(zone, ttl=60):
    return ZoneAnswer(zone=zone, status=Lookup.NOT_LISTED, ttl=ttl)


def failed(zone):
    return ZoneAnswer(zone=zone, status=Lookup.FAILED, error="SERVFAIL")


def answers(*items):
    return {a.zone: a for a in items}


ZEN = ("127.0.0.2", "127.0.0.4", "127.0.0.10")


@pytest.mark.parametrize(
    ("sites", "reply", "want"),
    [  # the single-DNSBL cases of Postfix's postscreen_dnsbl_test.c
        ("zen.spamhaus.org", ZEN, 1),
        ("zen.spamhaus.org, zen.spamhaus.org", ZEN, 2),
        ("zen.spamhaus.org", (), 0),
        ("zen.spamhaus.org*3, zen.spamhaus.org", ZEN, 4),
        ("zen.spamhaus.org, zen.spamhaus.org*3", ZEN, 4),
        ("zen.spamhaus.org=127.0.0.10*3, zen.spamhaus.org", ZEN, 4),
        ("zen.spamhaus.org=127.0.0.[1..255]*3, zen.spamhaus.org=127.0.0.3*-1", ("127.0.0.3", "127.0.0.10"), 2),
        ("zen.spamhaus.org=127.0.0.[1..255]*3, zen.spamhaus.org=127.0.0.3*-1", ("127.0.0.10",), 3),
    ],
)
def test_score_like_postfix(sites, reply, want):
    parsed = parse_sites([sites])
    a = answers(listed("zen.spamhaus.org", *reply) if reply else unlisted("zen.spamhaus.org"))
    assert score(a, parsed).score == want


def test_the_reply_names_the_largest_weight_that_matched():
    sites = parse_sites(["a.test*1, b.test*3, c.test=127.0.0.9*5, d.test*3"])
    got = score(answers(listed("a.test", "127.0.0.2"), listed("b.test", "127.0.0.2"), listed("c.test", "127.0.0.2"), listed("d.test", "127.0.0.2")), sites)
    assert got == (7, "b.test")  # c.test's filter did not match; d.test ties with b.test: first wins
    assert score(answers(unlisted("a.test")), sites) == (0, None)


def test_failed_and_missing_lookups_score_nothing():
    sites = parse_sites(["a.test*2, b.test*2"])
    assert score(answers(failed("a.test"), listed("b.test", "127.0.0.2")), sites).score == 2
    assert score({}, sites) == (0, None)


def test_allowlist_subtracts():
    sites = parse_sites(["list.dnswl.org=127.0.[0..255].[1..3]*-2, bl.test"])
    got = score(answers(listed("list.dnswl.org", "127.0.5.2"), listed("bl.test", "127.0.0.10")), sites)
    assert got.score == -1


# --- TTL -----------------------------------------------------------------------------------

LIMITS = {"min_ttl": 60, "max_ttl": 3600, "default_ttl": 3600}


def ttl_of(sites, *items, **limits):
    parsed = parse_sites([sites])
    a = answers(*items)
    return dnsbl_ttl(a, parsed, score(a, parsed).score, **{**LIMITS, **limits})


def test_ttl_cases_of_postfix_multi_dnsbl_test():
    two = "zen.spamhaus.org, foo.example.org"
    assert ttl_of(two, listed("foo.example.org", "127.0.0.10", ttl=60), listed("zen.spamhaus.org", "127.0.0.10", ttl=60)) == 60
    assert ttl_of(two, unlisted("foo.example.org", 62), listed("zen.spamhaus.org", "127.0.0.10", ttl=61)) == 61
    assert ttl_of(two, listed("foo.example.org", "127.0.0.10", ttl=62), unlisted("zen.spamhaus.org", 61)) == 62
    assert ttl_of(two, unlisted("foo.example.org", 62), unlisted("zen.spamhaus.org", 61)) == 61
    allow = "list.dnswl.org=127.0.[0..255].[1..3]*-2, foo.example.org"
    assert ttl_of(allow, listed("foo.example.org", "127.0.0.10", ttl=62), listed("list.dnswl.org", "127.0.5.2", ttl=61)) == 61


def test_ttl_worked_examples_of_the_spec():
    assert ttl_of("zen.spamhaus.org", unlisted("zen.spamhaus.org", 150)) == 150
    assert ttl_of("zen.spamhaus.org", unlisted("zen.spamhaus.org", 86400)) == 3600  # clamped to max_ttl
    assert ttl_of("zen.spamhaus.org", unlisted("zen.spamhaus.org", 5)) == 60  # clamped to min_ttl
    assert ttl_of("list.dnswl.org*-2", listed("list.dnswl.org", "127.0.5.2", ttl=600)) == 600


def test_ttl_when_the_answers_carry_none():
    # NXDOMAIN without an SOA: the configured dnsbl.ttl, clamped
    assert ttl_of("bl.test", unlisted("bl.test", None), default_ttl=900) == 900
    assert ttl_of("bl.test", unlisted("bl.test", None), default_ttl=7200) == 3600
    # a failed lookup: the (fail-open) pass is remembered only min_ttl
    assert ttl_of("bl.test, ok.test", failed("bl.test"), unlisted("ok.test", 600)) == 60
    assert ttl_of("bl.test", **{}) == 60  # nothing answered in time


def test_ttl_bookkeeping_is_per_pattern_matched_or_not():
    # bl.test lists the client but its filter rejects the answer: score 0. The listing's TTL
    # still feeds "fail", the other zone's non-listing feeds "pass" (postscreen_dnsbl.c).
    sites = "bl.test=127.0.0.[2..11]*2, other.test"
    assert ttl_of(sites, listed("bl.test", "127.0.0.1", ttl=100), unlisted("other.test", 900)) == 900
    assert ttl_of(sites, listed("bl.test", "127.0.0.2", ttl=100), unlisted("other.test", 900)) == 100
    # an allowlist that does not list the client feeds "fail": nothing is left for "pass"
    assert ttl_of("wl.test*-1", unlisted("wl.test", 900), default_ttl=1200) == 1200


# --- query_all over a stub resolver --------------------------------------------------------


class StubResolver:
    """Answers from a table; a zone in `silent` never answers (only a timeout ends its query).
    `most_at_once`: the most queries that were open together (all of them: they ran in parallel)."""

    def __init__(self, table, negative=None, silent=()):
        self.table, self.negative, self.silent, self.asked = table, negative or {}, set(silent), []
        self.open = self.most_at_once = 0
        self.all_asked = asyncio.Event()

    async def query(self, name, qtype):
        self.asked.append((name, qtype))
        zone = name.split(".", 4)[4]
        self.open += 1
        self.most_at_once = max(self.most_at_once, self.open)
        if len(self.asked) == len(self.table):
            self.all_asked.set()
        try:
            await self.all_asked.wait()  # every query waits until all were asked: one at a time would never get here
            if zone in self.silent:
                await asyncio.Event().wait()
        finally:
            self.open -= 1
        got = self.table[zone]
        if isinstance(got, Exception):
            raise got
        return got

    async def negative_ttl(self, zone):
        got = self.negative.get(zone)
        if isinstance(got, Exception):
            raise got
        return got


async def test_query_all_one_query_per_zone_in_parallel(caplog):
    caplog.set_level(logging.INFO, "postscreen")
    resolver = StubResolver(
        {
            "bl.test": [Record("A", 300, "127.0.0.2"), Record("A", 120, "127.0.0.4")],
            "wl.test": NotFound("x", nxdomain=True),
            "down.test": TempFail("2.2.0.192.down.test A: DNS server returned general failure"),
            "slow.test": [Record("A", 60, "127.0.0.2")],
        },
        negative={"wl.test": 150},
        silent={"slow.test"},
    )
    sites = parse_sites(["bl.test*2, bl.test=127.0.0.4*3, wl.test*-1, down.test*5, slow.test*9"])
    result = await query_all(resolver, "192.0.2.2", sites, timeout=0.2)
    assert resolver.most_at_once == 4
    assert sorted(resolver.asked) == sorted((f"2.2.0.192.{z}", "A") for z in ("bl.test", "wl.test", "down.test", "slow.test"))
    by = result.by_zone
    assert by["bl.test"] == ZoneAnswer(zone="bl.test", status=Lookup.LISTED, addresses=("127.0.0.2", "127.0.0.4"), ttl=120)
    assert by["wl.test"].status is Lookup.NOT_LISTED and by["wl.test"].ttl == 150
    assert by["down.test"].status is Lookup.FAILED and by["slow.test"].error == "timeout"
    assert (result.score, result.zone, result.complete) == (5, "bl.test", False)
    assert result.ttl(min_ttl=60, max_ttl=3600, default_ttl=3600) == 120
    text = caplog.text
    assert "addr 192.0.2.2 listed by domain bl.test as 127.0.0.2" in text
    assert "addr 192.0.2.2 listed by domain bl.test as 127.0.0.4" in text
    assert "lookup error for DNS query 2.2.0.192.down.test: " in text
    assert "dnsblog reply timeout 0.2s for slow.test" in text


async def test_query_all_survives_a_broken_resolver():
    resolver = StubResolver({"bl.test": RuntimeError("bug")}, negative={})
    result = await query_all(resolver, "2001:db8::1", parse_sites(["bl.test"]), timeout=1)
    assert result.score == 0 and result.answers[0].status is Lookup.FAILED


async def test_negative_ttl_trouble_leaves_the_ttl_unknown():
    resolver = StubResolver({"bl.test": NotFound("x", nxdomain=True)}, negative={"bl.test": TempFail("SOA")})
    result = await query_all(resolver, "192.0.2.1", parse_sites(["bl.test"]), timeout=1)
    assert result.answers[0] == ZoneAnswer(zone="bl.test", status=Lookup.NOT_LISTED, ttl=None)
    assert result.complete and result.ttl(min_ttl=60, max_ttl=3600, default_ttl=1800) == 1800
