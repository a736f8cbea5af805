"""The queue manager's reload: what a changed config slice rebuilds, and when a replaced object is closed."""

from __future__ import annotations

from typing import Any

from mtaserver.config import Config, DnsConfig
from mtaserver.queue.manager import QueueManager, _Shared


def cfg(**outbound: Any) -> Config:
    return Config.model_validate({"server": {"hostname": "mx.example.test"}, "outbound": outbound})


def with_(c: Config, section: str, **values: Any) -> Config:
    return c.model_copy(update={section: getattr(c, section).model_copy(update=values)})


def test_only_the_objects_whose_slice_changed_are_rebuilt():
    current = [cfg()]
    m = QueueManager(lambda: current[0], store=None)  # type: ignore[arg-type]  # the store is not used here
    smtp, resolver = m.smtp, m.resolver
    assert smtp.helo_name == "mx.example.test" and smtp.tls == "may"

    current[0] = with_(current[0], "queue", destination_concurrency=3)
    m._refresh(current[0])
    assert m.smtp is smtp and m.resolver is resolver and smtp.max_idle == 3  # the cache size is set in place

    current[0] = with_(current[0], "server", dns=DnsConfig(timeout=2.0))
    m._refresh(current[0])
    assert m.smtp is smtp and m.resolver is not resolver

    resolver = m.resolver
    current[0] = with_(current[0], "outbound", helo_name="out.example.test", tls="encrypt")
    m._refresh(current[0])
    assert m.resolver is resolver and m.smtp is not smtp
    assert (m.smtp.helo_name, m.smtp.tls, m.smtp.max_idle) == ("out.example.test", "encrypt", 3)

    smtp = m.smtp
    m._refresh(current[0].model_copy())  # a new object, the same values
    assert m.smtp is smtp and m.resolver is resolver


def test_server_hostname_is_the_helo_name_unless_one_is_set():
    current = [cfg()]
    m = QueueManager(lambda: current[0], store=None)  # type: ignore[arg-type]
    m._refresh(with_(current[0], "server", hostname="mx2.example.test"))
    assert m.smtp.helo_name == "mx2.example.test"
    m._refresh(cfg(helo_name="out.example.test"))
    assert m.smtp.helo_name == "out.example.test"


def test_a_replaced_object_is_closed_when_its_last_user_is_done():
    closed: list[str] = []
    shared = _Shared("client", key=1, close=closed.append)
    assert shared.take() == "client" and shared.take() == "client"
    shared.retire()
    shared.release()
    assert closed == []  # one attempt still runs on it
    shared.release()
    assert closed == ["client"]
    idle = _Shared("idle", key=2, close=closed.append)
    idle.retire()
    assert closed == ["client", "idle"]  # nobody used it: closed at once
