"""CNAME chains: who follows them (mtaserver/dns.py, DESCRIPTION).

Our resolver asks one question per lookup and takes the records of the type asked from the
answer: the DNS server follows a CNAME chain (a recursive resolver in production; NSD here
follows it through the zones it serves) and bounds it. mtaserver never asks for a CNAME's
target itself, so it has no chain of its own to bound. The tests count the questions that
reach the server through a UDP relay in front of NSD.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import free_port
from dnsserver import Nsd, zone
from helpers import Sink, queue_empty, send, wait_for

from mtaserver.dns import NotFound, Resolver

CHAIN = "".join(f"c{i} CNAME c{i + 1}\n" for i in range(10)) + "c10 MX 10 mx\nc10 A 127.0.0.2\nmx A 127.0.0.2\n"
# d0 -> d1 -> d2 -> a name in a zone this server does not serve: the answer ends with the CNAME
BROKEN = "d0 CNAME d1\nd1 CNAME d2\nd2 CNAME x.elsewhere.test.\n"


def qname(packet: bytes) -> tuple[str, int]:
    """The question's name and type of a DNS message (no compression in a question)."""
    labels, i = [], 12
    while packet[i]:
        labels.append(packet[i + 1 : i + 1 + packet[i]].decode())
        i += 1 + packet[i]
    return ".".join(labels).lower(), int.from_bytes(packet[i + 1 : i + 3], "big")


class Relay(asyncio.DatagramProtocol):
    """127.0.0.1:port -> NSD, recording every question asked."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.asked: list[tuple[str, int]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.asked.append(qname(data))
        asyncio.get_running_loop().create_task(self._forward(data, addr))

    async def _forward(self, data: bytes, addr) -> None:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()

        class Up(asyncio.DatagramProtocol):
            def datagram_received(self, reply: bytes, _addr) -> None:
                if not answer.done():
                    answer.set_result(reply)

        up, _ = await loop.create_datagram_endpoint(Up, remote_addr=self.upstream)
        try:
            up.sendto(data)
            reply = await asyncio.wait_for(answer, 2)
            assert self.transport is not None
            self.transport.sendto(reply, addr)
        finally:
            up.close()


@pytest.fixture
def nsd(tmp_path):
    with Nsd(tmp_path, {"chain.test": zone("chain.test", CHAIN + BROKEN)}) as server:
        yield server


@pytest.fixture
async def relay(nsd):
    port = free_port()
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Relay(("127.0.0.1", nsd.port)), local_addr=("127.0.0.1", port))  # fmt: skip
    yield f"127.0.0.1:{port}", proto
    transport.close()


MX, A = 15, 1


async def test_a_chain_of_ten_cnames_is_one_question(relay):
    address, proto = relay
    r = Resolver([address], timeout=1)
    try:
        [mx] = await r.query("c0.chain.test", "MX")
        [a] = await r.query("c0.chain.test", "A")
    finally:
        r.close()
    assert (mx.data, mx.preference, a.data) == ("mx.chain.test", 10, "127.0.0.2")
    assert proto.asked == [("c0.chain.test", MX), ("c0.chain.test", A)], "one question each: the server followed the chain"


async def test_a_chain_the_server_does_not_finish_is_not_followed_by_us(relay):
    """The answer holds d0 -> d1 -> d2 -> x.elsewhere.test and no MX: no record of the type asked
    (NODATA), and no question about a CNAME's target was asked by mtaserver."""
    address, proto = relay
    r = Resolver([address], timeout=1)
    try:
        with pytest.raises(NotFound) as exc:
            await r.query("d0.chain.test", "MX")
    finally:
        r.close()
    assert exc.value.nxdomain is False
    assert proto.asked == [("d0.chain.test", MX)]


def test_mail_to_a_domain_behind_ten_cnames_reaches_its_mx(make_mta, nsd):
    """End to end: the MX lookup of the recipient domain goes through the chain, the MX host's
    address lookup too (mx.chain.test), and the message reaches the sink on 127.0.0.2."""
    port = free_port("127.0.0.2")
    sink = Sink()
    sink.port = port
    sink.controller.hostname, sink.controller.port = "127.0.0.2", port
    with sink:
        mta = make_mta({
            "server": {"dns": {"nameservers": [nsd.address], "timeout": "1s"}},
            "outbound": {"smtp_port": port},
            "queue": {"manager": True, "min_backoff": "1s", "max_backoff": "2s"},
        })  # fmt: skip
        send(mta, "s@client.test", ["a@c0.chain.test"])
        wait_for(lambda: sink.messages, what="delivery to the MX behind the chain")
        wait_for(lambda: queue_empty(mta), what="empty queue")
    assert f"relay=mx.chain.test[127.0.0.2]:{port}" in mta.log()
