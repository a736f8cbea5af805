"""The admin API's Host check (admin/api.py host_name, host_allowed, host_names): which Host
header values a request may carry (DNS rebinding), and admin.allowed_hosts' validation."""

from __future__ import annotations

import pytest

from mtaserver import config
from mtaserver.admin.api import host_allowed, host_name, host_names


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8025", "localhost"),
        ("mx.example.test.:8025", "mx.example.test"),
        ("127.0.0.1:8025", "127.0.0.1"),
        ("[::1]:8025", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("evil.example:80", "evil.example"),
        ("host:", "host"),  # RFC 9110: port = *DIGIT
        ("", None),
        ("::1", None),  # an IPv6 literal needs its brackets
        ("[::1", None),
        ("[fe80::1%eth0]", None),
        ("[not-v6]:80", None),
        ("user@evil.example", None),
        ("evil.example:80:81", None),
        ("evil.example:http", None),
        ("evil example", None),
        ("a..b", None),
        ("x:1234567", None),
    ],
)
def test_host_name(value: str, name: str | None) -> None:
    assert host_name(value) == name


NAMES = frozenset({"mx.example.test", "192.0.2.10"})


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        (None, True),  # no Host at all (HTTP/1.0): no browser sent it
        ("localhost:8025", True),
        ("127.0.0.1:8025", True),
        ("127.1.2.3", True),
        ("[::1]:8025", True),
        ("mx.example.test:8025", True),
        ("MX.EXAMPLE.TEST.", True),
        ("192.0.2.10:8025", True),
        ("198.51.100.7:8025", True),  # the local address the connection came in on (below)
        ("evil.example:8025", False),
        ("localhost.evil.example", False),
        ("mx.example.test.evil.example", False),
        ("sub.mx.example.test", False),
        ("127.0.0.1.nip.io", False),
        ("192.0.2.11", False),
        ("[::2]", False),
        ("bad host", False),
        ("", False),
    ],
)
def test_host_allowed(value: str | None, allowed: bool) -> None:
    assert host_allowed(value, NAMES, "198.51.100.7") is allowed


def test_a_star_allows_any_valid_or_not() -> None:
    assert host_allowed("evil.example", frozenset({"*"}))
    assert host_allowed("bad host", frozenset({"*"}))


def _cfg(admin: str) -> config.Config:
    return config.load("x.yaml", text=f"server: {{hostname: MX.Example.Test}}\nadmin: {admin}\n")


def test_host_names_of_a_configuration() -> None:
    assert host_names(_cfg("{listen: '127.0.0.1:8025'}")) == {"mx.example.test", "127.0.0.1"}
    cfg = _cfg("{listen: '[::1]:8025', allowed_hosts: [Admin.Example.COM., '[2001:DB8::1]', 10.0.0.1]}")
    assert host_names(cfg) == {"mx.example.test", "::1", "admin.example.com", "2001:db8::1", "10.0.0.1"}
    assert host_allowed("admin.example.com:443", host_names(cfg))
    assert host_allowed("[2001:db8::1]", host_names(cfg))
    assert not host_allowed("other.example.com", host_names(cfg))
    assert host_names(_cfg("{listen: null}")) == {"mx.example.test"}


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ("'admin.example.com:443'", "without a port"),
        ("'.example.com'", "no .domain patterns"),
        ("'bad_name!'", "not a domain name"),
        ("5", "expected a host name"),
    ],
)
def test_allowed_hosts_entries_are_validated(entry: str, error: str) -> None:
    with pytest.raises(config.ConfigError, match=r"admin\.allowed_hosts\[0\]: .*" + error):
        _cfg(f"{{allowed_hosts: [{entry}]}}")
