"""The policy DNS lookups (policy/lookups.py) through the production resolver against a real NSD.

The zones give every case its real DNS answer: a forward-confirmed PTR, a PTR whose name does
not point back, one whose name does not exist, one in a SERVFAIL zone, a numeric PTR, no PTR,
IPv6; mail domains with MX, only A, only AAAA, a null MX, a malformed MX, nothing, NXDOMAIN and
SERVFAIL. A UDP socket that never answers plays the server that times out.
"""

from __future__ import annotations

import socket

import pytest
from dnsserver import Nsd, zone
from helpers import resolver_fixture  # noqa: F401  (the fixture `resolver`, asking this module's nsd)

from mtaserver.address import parse_mailbox
from mtaserver.config import InboundConfig, ProtocolChecks
from mtaserver.dns import Resolver
from mtaserver.model import Decision
from mtaserver.policy.lookups import check_rcpt, client_name, domain_status, host_exists
from mtaserver.policy.restrictions import ClientName, ClientNameStatus, HostStatus, RcptFacts

V6_PTR = "5" + ".0" * 23  # 2001:db8::5 below 8.b.d.0.1.0.0.2.ip6.arpa


@pytest.fixture(scope="module")
def nsd(tmp_path_factory):
    zones = {
        "fwd.test": zone(
            "fwd.test",
            "good A 192.0.2.1\n"
            "mismatch A 192.0.2.99\n"
            "v6 AAAA 2001:db8::5\n"
            "mail A 192.0.2.10\n"
            "withmx MX 10 mail.fwd.test.\n"
            "onlya A 192.0.2.11\n"
            "onlyaaaa AAAA 2001:db8::11\n"
            "nullmx MX 0 .\n"
            "badmx MX 10 -bad-.fwd.test.\n"
            "txtonly TXT \"nothing to deliver to\"\n"
            "alias CNAME good.fwd.test.\n",
        ),
        "2.0.192.in-addr.arpa": zone(
            "2.0.192.in-addr.arpa",
            "1 PTR good.fwd.test.\n"
            "2 PTR mismatch.fwd.test.\n"
            "3 PTR nosuch.fwd.test.\n"
            "4 PTR host.dead.test.\n"
            "5 PTR 1.2.3.4.\n",
        ),
        "8.b.d.0.1.0.0.2.ip6.arpa": zone("8.b.d.0.1.0.0.2.ip6.arpa", f"{V6_PTR} PTR v6.fwd.test.\n"),
        "3.0.192.in-addr.arpa": None,  # SERVFAIL
        "dead.test": None,  # SERVFAIL
    }
    with Nsd(tmp_path_factory.mktemp("policy"), zones) as server:
        yield server


@pytest.fixture
async def silent():
    """A resolver whose server never answers: every query times out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        r = Resolver([f"127.0.0.1:{s.getsockname()[1]}"], timeout=0.2)
        yield r
        r.close()


# ---------------------------------------------------------------------------------------------
# client_name


@pytest.mark.parametrize(
    ("ip", "status", "ptr", "name"),
    [
        ("192.0.2.1", ClientNameStatus.VERIFIED, "good.fwd.test", "good.fwd.test"),
        ("::ffff:192.0.2.1", ClientNameStatus.VERIFIED, "good.fwd.test", "good.fwd.test"),
        ("2001:db8::5", ClientNameStatus.VERIFIED, "v6.fwd.test", "v6.fwd.test"),
        ("192.0.2.2", ClientNameStatus.MISMATCH, "mismatch.fwd.test", "unknown"),  # A says 192.0.2.99
        ("192.0.2.3", ClientNameStatus.MISMATCH, "nosuch.fwd.test", "unknown"),  # the PTR name does not exist
        ("192.0.2.4", ClientNameStatus.FORWARD_TEMPFAIL, "host.dead.test", "unknown"),  # its zone SERVFAILs
        ("192.0.2.5", ClientNameStatus.NO_PTR, None, "unknown"),  # a numeric PTR name is no name
        ("192.0.2.6", ClientNameStatus.NO_PTR, None, "unknown"),  # NXDOMAIN
        ("192.0.3.1", ClientNameStatus.PTR_TEMPFAIL, None, "unknown"),  # SERVFAIL
    ],
)
async def test_client_name(resolver, ip, status, ptr, name):
    got = await client_name(resolver, ip)
    assert (got.status, got.ptr, got.name) == (status, ptr, name)


async def test_client_name_timeout(silent):
    assert (await client_name(silent, "192.0.2.1")).status is ClientNameStatus.PTR_TEMPFAIL


async def test_client_name_overall_budget(nsd):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        slow = Resolver([f"127.0.0.1:{s.getsockname()[1]}"], timeout=30)
        try:
            assert (await client_name(slow, "192.0.2.1", timeout=0.3)).status is ClientNameStatus.PTR_TEMPFAIL
            assert await domain_status(slow, "fwd.test", timeout=0.3) is HostStatus.TEMPFAIL
        finally:
            slow.close()


# ---------------------------------------------------------------------------------------------
# host_exists (HELO) and domain_status (sender domain)


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("good.fwd.test", HostStatus.FOUND),
        ("good.fwd.test.", HostStatus.FOUND),
        ("alias.fwd.test", HostStatus.FOUND),  # through a CNAME
        ("onlyaaaa.fwd.test", HostStatus.FOUND),
        ("withmx.fwd.test", HostStatus.FOUND),  # MX only
        ("nullmx.fwd.test", HostStatus.NULL_MX),
        ("txtonly.fwd.test", HostStatus.NOT_FOUND),
        ("nosuch.fwd.test", HostStatus.NOT_FOUND),
        ("host.dead.test", HostStatus.TEMPFAIL),
        ("1.2.3.4", HostStatus.NOT_FOUND),  # not asked: no host name
    ],
)
async def test_host_exists(resolver, name, status):
    assert await host_exists(resolver, name) is status


@pytest.mark.parametrize(
    ("domain", "status"),
    [
        ("withmx.fwd.test", HostStatus.FOUND),
        ("onlya.fwd.test", HostStatus.FOUND),
        ("onlyaaaa.fwd.test", HostStatus.FOUND),
        ("nullmx.fwd.test", HostStatus.NULL_MX),
        ("badmx.fwd.test", HostStatus.MALFORMED),
        ("txtonly.fwd.test", HostStatus.NOT_FOUND),
        ("nosuch.fwd.test", HostStatus.NOT_FOUND),
        ("host.dead.test", HostStatus.TEMPFAIL),
        ("bad..name", HostStatus.NOT_FOUND),
    ],
)
async def test_domain_status(resolver, domain, status):
    assert await domain_status(resolver, domain) is status


async def test_host_and_domain_timeout(silent):
    assert await host_exists(silent, "good.fwd.test") is HostStatus.TEMPFAIL
    assert await domain_status(silent, "withmx.fwd.test") is HostStatus.TEMPFAIL


# ---------------------------------------------------------------------------------------------
# The shell: needed -> resolve -> decide


def _cfg(**checks: bool) -> InboundConfig:
    return InboundConfig(protocol_checks=ProtocolChecks(unknown_reject_code=550, **checks))


def _facts(ip: str, helo: str, sender: str, rcpt: str = "u@example.test") -> RcptFacts:
    return RcptFacts(
        client_ip=ip, helo=helo, sender=parse_mailbox(sender), recipient=parse_mailbox(rcpt), local_domains=["example.test"]
    )


ALL = dict(reject_unknown_client_hostname=True, reject_unknown_reverse_client_hostname=True, reject_unknown_helo_hostname=True,
           reject_unknown_sender_domain=True)  # fmt: skip


async def test_check_rcpt_accepts_a_clean_client_and_keeps_the_facts(resolver):
    verdict, facts = await check_rcpt(resolver, _facts("192.0.2.1", "good.fwd.test", "s@withmx.fwd.test"), _cfg(**ALL))
    assert verdict.decision is Decision.CONTINUE
    assert facts.client_name == ClientName(ClientNameStatus.VERIFIED, "good.fwd.test")
    assert (facts.helo_host, facts.sender_domain) == (HostStatus.FOUND, HostStatus.FOUND)


async def test_check_rcpt_replies(resolver):
    good, dead, nosuch = "good.fwd.test", "host.dead.test", "nosuch.fwd.test"
    cases = [
        (("192.0.2.2", good, "s@withmx.fwd.test"), "550 5.7.25 Client host rejected: cannot find your hostname, [192.0.2.2]"),
        (("192.0.3.1", good, "s@withmx.fwd.test"), "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.3.1]"),
        (("192.0.2.1", nosuch, "s@withmx.fwd.test"), "550 5.7.1 <nosuch.fwd.test>: Helo command rejected: Host not found"),
        (("192.0.2.1", dead, "s@withmx.fwd.test"), "450 4.7.1 <host.dead.test>: Helo command rejected: Host not found"),
        (("192.0.2.1", good, "s@nullmx.fwd.test"),
         "550 5.7.27 <s@nullmx.fwd.test>: Sender address rejected: Domain nullmx.fwd.test does not accept mail (nullMX)"),
        (("192.0.2.1", good, "s@nosuch.fwd.test"), "550 5.1.8 <s@nosuch.fwd.test>: Sender address rejected: Domain not found"),
        (("192.0.2.1", good, "s@host.dead.test"), "450 4.1.8 <s@host.dead.test>: Sender address rejected: Domain not found"),
        # the HELO deferral waits; the sender domain's definite answer then wins
        (("192.0.2.1", dead, "s@nosuch.fwd.test"), "550 5.1.8 <s@nosuch.fwd.test>: Sender address rejected: Domain not found"),
    ]  # fmt: skip
    for args, want in cases:
        verdict, _ = await check_rcpt(resolver, _facts(*args), _cfg(**ALL))
        assert verdict.reply is not None and verdict.reply.line() == want, args


async def test_check_rcpt_looks_up_only_what_is_needed(resolver):
    # relay denied: nothing looked up
    request = _facts("192.0.2.1", "good.fwd.test", "s@withmx.fwd.test", "u@remote.test")
    verdict, facts = await check_rcpt(resolver, request, _cfg(**ALL))
    assert verdict.reply.line() == "554 5.7.1 <u@remote.test>: Relay access denied"
    assert (facts.client_name, facts.helo_host, facts.sender_domain) == (None, None, None)
    # only the sender-domain check on: only that fact
    request = _facts("192.0.2.1", "good.fwd.test", "s@withmx.fwd.test")
    _, facts = await check_rcpt(resolver, request, _cfg(reject_unknown_sender_domain=True))
    assert (facts.client_name, facts.helo_host, facts.sender_domain) == (None, None, HostStatus.FOUND)
