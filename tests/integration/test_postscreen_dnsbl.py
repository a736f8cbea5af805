"""DNSBL lookups through the production resolver against a real NSD on 127.0.0.1.

The zones choose their TTLs and negative TTLs (SOA MINIMUM), so every TTL rule of
postscreen_dnsbl.c is checked on real answers: A-record TTL when listed, the SOA negative
TTL when not, clamping, allowlists with negative weights, filters that reject an answer,
a SERVFAIL zone and a silent server (both fail open).
"""

from __future__ import annotations

import logging
import socket

import pytest
from dnsserver import Nsd, zone
from helpers import resolver_fixture  # noqa: F401  (the fixture `resolver`, asking this module's nsd)

from mtaserver.dns import Resolver, TempFail
from mtaserver.postscreen.dnsbl import Lookup, parse_sites, query_all
from mtaserver.postscreen.verdict import dnsbl_allowlisted, dnsbl_failed

LIMITS = {"min_ttl": 60, "max_ttl": 3600, "default_ttl": 3600}


@pytest.fixture(scope="module")
def nsd(tmp_path_factory):
    zones = {
        "bl.test": zone(
            "bl.test",
            "2.0.0.127 600 A 127.0.0.2\n"
            "2.0.0.127 300 A 127.0.0.10\n"
            "20.2.0.192 300 A 127.0.0.1\n"  # an answer the filter below rejects
            "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 400 A 127.0.0.4\n",
            negative_ttl=150,
        ),
        "wl.test": zone("wl.test", "30.2.0.192 700 A 127.0.5.2\n", negative_ttl=86400),
        "other.test": zone("other.test", "", negative_ttl=120),
        "big.test": zone("big.test", "", negative_ttl=86400, ttl=86400),
        "dead.test": None,  # no zone file: SERVFAIL
    }
    with Nsd(tmp_path_factory.mktemp("dnsbl"), zones) as server:
        yield server


SITES = parse_sites(["bl.test=127.0.0.[2..11]*3, wl.test=127.0.[0..255].[1..3]*-2, other.test"])


async def test_listed_client_scores_and_remembers_the_smallest_a_ttl(resolver, caplog):
    caplog.set_level(logging.INFO, "postscreen")
    result = await query_all(resolver, "127.0.0.2", SITES, timeout=2)
    by = result.by_zone
    assert by["bl.test"].status is Lookup.LISTED and sorted(by["bl.test"].addresses) == ["127.0.0.10", "127.0.0.2"]
    assert by["bl.test"].ttl == 300
    assert by["wl.test"].status is Lookup.NOT_LISTED and by["wl.test"].ttl == 3600  # min(SOA TTL, MINIMUM)
    assert by["other.test"].ttl == 120
    assert (result.score, result.zone, result.complete) == (3, "bl.test", True)
    assert dnsbl_failed(result.score, 3)
    # score > 0: the "fail" TTL: bl.test's listing (300) and wl.test's non-listing (3600)
    assert result.ttl(**LIMITS) == 300
    assert "addr 127.0.0.2 listed by domain bl.test as 127.0.0.2" in caplog.text
    assert "addr 127.0.0.2 listed by domain bl.test as 127.0.0.10" in caplog.text


async def test_allowlisted_client_gets_a_negative_score(resolver):
    result = await query_all(resolver, "192.0.2.30", SITES, timeout=2)
    assert result.by_zone["wl.test"].addresses == ("127.0.5.2",)
    assert (result.score, result.zone) == (-2, "wl.test")
    assert dnsbl_allowlisted(result.score, threshold=1, allowlist_threshold=-1, any_failed=False)
    # pass TTL: wl.test's listing (700), bl.test (150) and other.test (120) not listing
    assert result.ttl(**LIMITS) == 120
    only_wl = await query_all(resolver, "192.0.2.30", parse_sites(["wl.test*-2"]), timeout=2)
    assert only_wl.ttl(**LIMITS) == 700


async def test_an_answer_rejected_by_the_filter_does_not_count(resolver):
    result = await query_all(resolver, "192.0.2.20", SITES, timeout=2)
    assert result.by_zone["bl.test"].addresses == ("127.0.0.1",)
    assert (result.score, result.zone) == (0, None)
    assert result.ttl(**LIMITS) == 120  # pass TTL from other.test; bl.test's listing feeds "fail"
    unfiltered = await query_all(resolver, "192.0.2.20", parse_sites(["bl.test"]), timeout=2)
    assert unfiltered.score == 1


async def test_not_listed_uses_the_negative_ttl_clamped(resolver):
    assert (await query_all(resolver, "192.0.2.99", parse_sites(["bl.test"]), timeout=2)).ttl(**LIMITS) == 150
    big = await query_all(resolver, "192.0.2.99", parse_sites(["big.test"]), timeout=2)
    assert big.by_zone["big.test"].ttl == 86400 and big.ttl(**LIMITS) == 3600
    short = await query_all(resolver, "192.0.2.99", parse_sites(["bl.test"]), timeout=2)
    assert short.ttl(min_ttl=300, max_ttl=3600, default_ttl=3600) == 300


async def test_ipv6_client_is_queried_by_nibbles(resolver):
    result = await query_all(resolver, "2001:db8::25", parse_sites(["bl.test=127.0.0.4*2"]), timeout=2)
    assert (result.score, result.by_zone["bl.test"].ttl) == (2, 400)


async def test_servfail_zone_fails_open(resolver, caplog):
    caplog.set_level(logging.INFO, "postscreen")
    sites = parse_sites(["dead.test*5, bl.test=127.0.0.[2..11]*3"])
    listed = await query_all(resolver, "127.0.0.2", sites, timeout=2)
    assert listed.by_zone["dead.test"].status is Lookup.FAILED
    assert (listed.score, listed.zone, listed.complete) == (3, "bl.test", False)
    assert "lookup error for DNS query 2.0.0.127.dead.test" in caplog.text
    clean = await query_all(resolver, "192.0.2.99", sites, timeout=2)
    assert clean.score == 0 and not dnsbl_failed(clean.score, 1)
    assert clean.ttl(**LIMITS) == 60, "a pass built on a failed lookup is remembered only min_ttl"


async def test_silent_dns_server_times_out_within_the_budget(caplog):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        r = Resolver([f"127.0.0.1:{silent.getsockname()[1]}"], timeout=5.0)
        # the budget (0.3 s) ends it, not the resolver's own 5 s: "reply timeout" is the budget's line
        result = await query_all(r, "192.0.2.1", parse_sites(["bl.test*3, wl.test*-1"]), timeout=0.3)
        assert [a.status for a in result.answers] == [Lookup.FAILED, Lookup.FAILED]
        assert (result.score, result.complete) == (0, False)
        assert "dnsblog reply timeout 0.3s for bl.test" in caplog.text
        r.close()
    finally:
        silent.close()


async def test_negative_ttl_walks_up_to_the_zone_apex_and_is_cached(resolver, nsd):
    assert await resolver.negative_ttl("bl.test") == 150
    assert await resolver.negative_ttl("sub.bl.test") == 150  # NXDOMAIN below the apex
    assert await resolver.negative_ttl("big.test.") == 86400
    nsd.stop()  # answers now come from the resolver's cache
    assert await resolver.negative_ttl("bl.test") == 150
    with pytest.raises(TempFail):
        await resolver.negative_ttl("wl.test")
    nsd.start()
