"""config.diff: the key paths a reload changes (for its log line)."""

from __future__ import annotations

from typing import Any

from mtaserver.config import Config, diff

LISTENERS = [
    {"name": "smtp", "address": "127.0.0.1:25", "postscreen": True},
    {"name": "submission", "address": "127.0.0.1:587", "tls": "starttls", "auth": "require"},
]


def cfg(**sections: Any) -> Config:
    base: dict[str, Any] = {"server": {"hostname": "mx.example.test", "listeners": LISTENERS}, "source": "/etc/m.yaml"}
    for name, value in sections.items():
        base[name] = {**base.get(name, {}), **value}
    return Config.model_validate(base)


def test_no_change_is_an_empty_list():
    assert diff(cfg(), cfg()) == []
    assert diff(cfg(outbound={"helo_name": "out.test"}), cfg(outbound={"helo_name": "out.test"})) == []


def test_changed_scalars_are_named_by_their_dotted_path_in_model_order():
    old = cfg()
    new = cfg(outbound={"helo_name": "out.test", "relay_host": "[relay.test]:2525"}, server={"dns": {"timeout": "2s"}})
    assert diff(old, new) == ["server.dns.timeout", "outbound.relay_host", "outbound.helo_name"]
    assert diff(new, old) == ["server.dns.timeout", "outbound.relay_host", "outbound.helo_name"]


def test_nested_sections_and_list_items_that_are_sections():
    changed = [dict(LISTENERS[0], tls="none"), LISTENERS[1]]
    assert diff(cfg(), cfg(server={"listeners": changed})) == ["server.listeners[0].tls"]
    assert diff(cfg(), cfg(outbound={"relay_auth": {"username": "u"}})) == ["outbound.relay_auth.username"]
    assert diff(cfg(), cfg(postscreen={"greet": {"action": "drop", "wait": "3s"}})) == [
        "postscreen.greet.wait",
        "postscreen.greet.action",
    ]


def test_a_list_that_grows_or_shrinks_names_the_items():
    three = [*LISTENERS, {"name": "smtp2", "address": "127.0.0.2:25", "tls": "none"}]
    assert diff(cfg(), cfg(server={"listeners": three})) == ["server.listeners[2]"]
    assert diff(cfg(server={"listeners": three}), cfg()) == ["server.listeners[2]"]
    assert diff(cfg(), cfg(server={"listeners": LISTENERS[1:]})) == [
        "server.listeners[0].name",
        "server.listeners[0].address",
        "server.listeners[0].postscreen",
        "server.listeners[0].auth",
        "server.listeners[1]",
    ]


def test_lists_of_values_are_one_key():
    assert diff(cfg(), cfg(domains={"local": ["example.test"]})) == ["domains.local"]
    assert diff(cfg(outbound={"mynetworks": ["10.0.0.0/8"]}), cfg(outbound={"mynetworks": ["10.0.0.0/16"]})) == ["outbound.mynetworks"]
    assert diff(cfg(server={"dns": {"nameservers": ["127.0.0.1:53"]}}), cfg(server={"dns": {"nameservers": ["127.0.0.2:53"]}})) == [
        "server.dns.nameservers"
    ]


def test_per_node_overrides_are_compared_key_by_key():
    old = cfg(servers={"mx1.example.test": {"outbound": {"helo_name": "a.test"}}})
    new = cfg(servers={"mx1.example.test": {"outbound": {"helo_name": "b.test"}}, "mx2.example.test": {}})
    assert diff(old, new) == ["servers.mx1.example.test.outbound.helo_name", "servers.mx2.example.test"]


def test_the_files_own_path_is_no_key():
    assert diff(cfg(), cfg().model_copy(update={"source": "/elsewhere/m.yaml"})) == []
