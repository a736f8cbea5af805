"""Delivery by MX records served by a real DNS server (NSD) on 127.0.0.1.

MX hosts resolve to 127.0.0.x addresses where the test runs SMTP sinks, all on one port
(`outbound.smtp_port`), as real MX hosts all listen on 25.
"""

from __future__ import annotations

import pytest
from conftest import free_port
from dnsserver import Nsd, zone
from helpers import Sink, maildir_messages, queue_empty, send, wait_for


@pytest.fixture
def dns(tmp_path):
    zones = {
        "good.test": zone("good.test", "@ MX 20 mx2\n@ MX 10 mx1\nmx1 A 127.0.0.2\nmx2 A 127.0.0.3\n"),
        "backup.test": zone("backup.test", "@ MX 10 dead\n@ MX 20 alive\ndead A 127.0.0.4\nalive A 127.0.0.3\n"),
        "nomx.test": zone("nomx.test", "@ A 127.0.0.2\n"),
        "nullmx.test": zone("nullmx.test", "@ MX 0 .\n"),
        "broken.test": None,  # no zone file: SERVFAIL
    }
    with Nsd(tmp_path, zones) as server:
        yield server


@pytest.fixture
def sinks():
    port = free_port("127.0.0.2", "127.0.0.3")
    primary = Sink()
    secondary = Sink()
    for s, ip in ((primary, "127.0.0.2"), (secondary, "127.0.0.3")):
        s.port = port
        s.controller.hostname, s.controller.port = ip, port
    with primary, secondary:
        yield port, primary, secondary


def config(dns: Nsd, port: int, **outbound) -> dict:
    return {
        "server": {"dns": {"nameservers": [dns.address], "timeout": "1s"}},
        "outbound": {"smtp_port": port, **outbound},
        "queue": {"manager": True, "min_backoff": "1s", "max_backoff": "2s"},
    }


def test_lowest_preference_mx_gets_the_mail(make_mta, dns, sinks):
    port, primary, secondary = sinks
    mta = make_mta(config(dns, port))
    send(mta, "s@client.test", ["a@good.test"])
    wait_for(lambda: primary.messages, what="delivery to mx1")
    assert secondary.messages == []
    assert f"relay=mx1.good.test[127.0.0.2]:{port}" in mta.log()


def test_next_mx_when_the_first_is_unreachable(make_mta, dns, sinks):
    port, primary, secondary = sinks
    mta = make_mta(config(dns, port))
    send(mta, "s@client.test", ["a@backup.test"])
    wait_for(lambda: secondary.messages, what="delivery to the second MX")
    wait_for(lambda: queue_empty(mta), what="empty queue")


def test_implicit_mx_uses_the_address_record(make_mta, dns, sinks):
    port, primary, _ = sinks
    mta = make_mta(config(dns, port))
    send(mta, "s@client.test", ["a@nomx.test"])
    wait_for(lambda: primary.messages, what="delivery to the A record")


def test_null_mx_bounces_5_1_10(make_mta, dns, sinks):
    port, primary, secondary = sinks
    mta = make_mta(config(dns, port))
    send(mta, "s@example.test", ["a@nullmx.test"])
    [dsn] = wait_for(lambda: maildir_messages(mta, "s@example.test"), what="the DSN")
    assert b"Status: 5.1.10" in dsn and b"nullMX" in dsn
    assert primary.messages == secondary.messages == []


def test_nxdomain_bounces_5_1_2(make_mta, dns, sinks):
    port, _, _ = sinks
    mta = make_mta(config(dns, port))
    send(mta, "s@example.test", ["a@nosuch.good.test"])
    [dsn] = wait_for(lambda: maildir_messages(mta, "s@example.test"), what="the DSN")
    assert b"Status: 5.1.2" in dsn


def test_servfail_defers_and_never_falls_back_to_a(make_mta, dns, sinks):
    port, primary, secondary = sinks
    mta = make_mta(config(dns, port))
    send(mta, "s@example.test", ["a@broken.test"])
    wait_for(lambda: "dsn=4.4.3, status=deferred" in mta.log(), what="the deferral")
    assert mta.queued("deferred") and maildir_messages(mta, "s@example.test") == []
    assert primary.messages == secondary.messages == []


def test_dns_server_down_defers(make_mta, dns, sinks, tmp_path):
    port, primary, _ = sinks
    cfg = config(dns, port)
    cfg["server"]["dns"]["nameservers"] = [f"127.0.0.1:{free_port()}"]  # nobody answers there
    mta = make_mta(cfg)
    send(mta, "s@client.test", ["a@good.test"])
    wait_for(lambda: "dsn=4.4.3, status=deferred" in mta.log(), timeout=20, what="the deferral")
    assert primary.messages == []


def test_relay_host_by_name_uses_its_mx(make_mta, dns, sinks):
    port, primary, _ = sinks
    mta = make_mta(config(dns, port, relay_host="good.test"))
    send(mta, "s@client.test", ["a@anywhere.test"])
    wait_for(lambda: primary.messages, what="delivery through the relay host's MX")
