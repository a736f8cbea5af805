"""The config's value parsers refuse the ambiguous and the malformed, with a message naming the key
and what is accepted: sizes with B/MB/MiB, a relay host like "[foo", a CIDR with host bits set."""

from __future__ import annotations

import pytest
from builders import config_errors

from mtaserver.values import check_nexthop, parse_network, parse_size


@pytest.mark.parametrize("text", ["10MB", "10Mb", "10mb", "10 MiB", "10MiB", "500KB", "1GB", "10B", "1.5M", "10 kib"])
def test_ambiguous_sizes_are_refused_saying_what_is_accepted(text):
    with pytest.raises(ValueError) as exc:
        parse_size(text)
    msg = str(exc.value)
    assert "ambiguous" in msg and "10M" in msg and "1024" in msg, msg


def test_the_documented_sizes():
    assert parse_size("10M") == 10 * 1024 * 1024 and parse_size("10 M") == 10 * 1024 * 1024
    assert parse_size("500K") == parse_size("500k") == 500 * 1024 and parse_size("1G") == 1024**3
    assert parse_size("10240000") == parse_size(10240000) == 10240000
    for bad in ("x", "-1", "1T", "", True, 1.5):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_a_size_with_mb_names_the_key(tmp_path):
    errs = config_errors("advanced:\n  max_message_size: 10MB\n", tmp_path)
    assert len(errs) == 1 and errs[0].startswith(f"{tmp_path / 'm.yaml'}:2: advanced.max_message_size: '10MB' is ambiguous")


@pytest.mark.parametrize("text", ["[foo", "foo]", "[foo]:", "[foo]:x", "[foo]:0", "foo:99999", "[]", "::1", "a b", "-x", ".foo",
                                  "[foo]bar", "foo:25:26"])  # fmt: skip
def test_malformed_relay_hosts_are_refused(text):
    with pytest.raises(ValueError):
        check_nexthop(text)


@pytest.mark.parametrize("text", ["relay.example.test", "relay.example.test:587", "[relay.example.test]",
                                  "[relay.example.test]:25", "[192.0.2.1]", "[2001:db8::1]:2525", "192.0.2.1:25"])  # fmt: skip
def test_relay_host_forms_postfix_knows(text):
    assert check_nexthop(text) == text


def test_a_bad_relay_host_names_the_key(tmp_path):
    errs = config_errors('outbound:\n  relay_host: "[foo"\n  fallback_relay_host: "[192.0.2.1]:x"\n', tmp_path)
    assert [e.split(": ", 2)[1] for e in errs] == ["outbound.relay_host", "outbound.fallback_relay_host"], errs
    assert "'[foo'" in errs[0] and "[host]:port" in errs[0]


def test_host_bits_set_are_refused_with_the_network_meant(tmp_path):
    with pytest.raises(ValueError, match=r"host bits set \(did you mean 10\.0\.0\.0/8\?\)"):
        parse_network("10.0.0.1/8")
    with pytest.raises(ValueError, match=r"did you mean 2001:db8::/32"):
        parse_network("[2001:db8::1]/32")
    assert str(parse_network("!10.0.0.1")) == "!10.0.0.1/32" and str(parse_network("[::1]/128")) == "::1/128"
    errs = config_errors('outbound:\n  mynetworks: ["127.0.0.0/8", "10.0.0.1/8"]\n', tmp_path)
    assert len(errs) == 1 and ": outbound.mynetworks[1]: " in errs[0] and "did you mean 10.0.0.0/8" in errs[0], errs
