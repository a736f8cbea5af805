"""SIGHUP and the queue manager: a reload that changes outbound.helo_name, outbound.relay_host or
server.dns.* is used by the next delivery, rebuilds only what it changed, lets a delivery in
flight finish on what it started with, and says in the log which keys it changed."""

from __future__ import annotations

import copy
import re
import signal
import threading

from smtpclient import wait_for_log
from helpers import Sink, delivering, queue_empty, send, wait_for


class HeloSink(Sink):
    """A relay that records the EHLO name of every message's session; `hold` makes the reply
    to the end of data wait until `release` is set (a delivery in flight)."""

    def __init__(self, *, hold: bool = False) -> None:
        super().__init__()
        self.helos: list[str] = []
        self.hold = hold
        self.entered = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        import asyncio

        self.helos.append(session.host_name)
        if self.hold:
            self.entered.set()
            while not self.release.is_set():
                await asyncio.sleep(0.02)
        return await super().handle_DATA(server, session, envelope)


def reload(mta, config: dict) -> str:
    """Write `config`, SIGHUP, and return the new reload line."""
    before = mta.log().count("reload: applied from")
    mta.config = config
    mta.write_config()
    mta.signal(signal.SIGHUP)
    wait_for(lambda: mta.log().count("reload: applied from") > before, what="the reload line")
    return re.findall(r"reload: applied from .*", mta.log())[-1]


def with_outbound(mta, **outbound) -> dict:
    cfg = copy.deepcopy(mta.config)
    cfg["outbound"].update(outbound)
    return cfg


def test_reload_switches_helo_name_and_relay_host(make_mta):
    with HeloSink() as first, HeloSink() as second:
        cfg = delivering(relay=first.port)
        cfg["outbound"]["helo_name"] = "first.example.test"
        mta = make_mta(cfg)
        send(mta, "s@client.test", ["a@remote.test"])
        wait_for(lambda: first.messages, what="delivery to the first relay")
        assert first.helos == ["first.example.test"]

        line = reload(mta, with_outbound(mta, helo_name="second.example.test", relay_host=f"[127.0.0.1]:{second.port}"))
        assert ": changed outbound.relay_host, outbound.helo_name" in line, line
        assert line.startswith(f"reload: applied from {mta.config_path}"), line
        wait_for_log(mta, "new SMTP client (EHLO second.example.test, tls may)")

        send(mta, "s@client.test", ["b@remote.test"])
        wait_for(lambda: second.messages, what="delivery to the second relay")
        assert second.helos == ["second.example.test"]
        assert len(first.messages) == 1 and first.helos == ["first.example.test"]
        wait_for(lambda: queue_empty(mta), what="empty queue")
        assert f"relay=127.0.0.1[127.0.0.1]:{second.port}" in mta.log()


def test_reload_rebuilds_only_what_changed(make_mta):
    with HeloSink() as sink:
        mta = make_mta(delivering(relay=sink.port))
        send(mta, "s@client.test", ["a@remote.test"])
        wait_for(lambda: sink.messages, what="the first delivery")

        assert ": no change" in reload(mta, mta.config)
        cfg = copy.deepcopy(mta.config)
        cfg["server"]["dns"] = {"timeout": "2s"}
        line = reload(mta, cfg)
        assert re.search(r": changed server\.dns\.timeout\b(?!,)", line), line
        wait_for_log(mta, "reload: server.dns changed: new resolver")

        send(mta, "s@client.test", ["b@remote.test"])
        wait_for(lambda: len(sink.messages) == 2, what="the second delivery")
        assert "new SMTP client" not in mta.log()  # its slice did not change: kept, with its connections
        assert sink.helos == ["mx.example.test", "mx.example.test"]  # server.hostname: no helo_name set


def test_a_delivery_in_flight_finishes_on_what_it_started_with(make_mta):
    with HeloSink(hold=True) as slow, HeloSink() as fast:
        cfg = delivering(relay=slow.port)
        cfg["outbound"]["helo_name"] = "old.example.test"
        mta = make_mta(cfg)
        send(mta, "s@client.test", ["a@remote.test"])
        assert slow.entered.wait(15), "the delivery did not reach the end of data"

        reload(mta, with_outbound(mta, helo_name="new.example.test", relay_host=f"[127.0.0.1]:{fast.port}"))
        send(mta, "s@client.test", ["b@remote.test"])
        wait_for(lambda: fast.messages, what="the new delivery, while the old one waits")
        assert fast.helos == ["new.example.test"] and not slow.messages

        slow.release.set()
        wait_for(lambda: slow.messages, what="the held delivery")
        wait_for(lambda: queue_empty(mta), what="empty queue")
        assert slow.helos == ["old.example.test"]
        assert mta.log().count("status=sent") == 2 and "status=deferred" not in mta.log()
