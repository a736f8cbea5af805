"""postscreen.access_list: parsing, first match wins, mynetworks, IPv6, config errors."""

from pathlib import Path

import pytest

from mtaserver.config import ConfigError, load
from mtaserver.values import parse_network
from mtaserver.postscreen.access import DUNNO, PERMIT, REJECT, parse_access_list, parse_entry

MYNETWORKS = [parse_network("127.0.0.0/8"), parse_network("[::1]/128")]


def test_default_list_allowlists_mynetworks_only():
    acl = parse_access_list(["permit_mynetworks"])
    assert acl.lookup("127.0.0.1", MYNETWORKS) is PERMIT
    assert acl.lookup("::1", MYNETWORKS) is PERMIT
    assert acl.lookup("192.0.2.1", MYNETWORKS) is DUNNO
    assert parse_access_list([]).lookup("127.0.0.1", MYNETWORKS) is DUNNO


def test_first_match_wins_and_dunno_is_an_exception_to_a_later_entry():
    acl = parse_access_list(["192.0.2.7 dunno", "192.0.2.0/24 reject", "192.0.2.7 permit", "permit_mynetworks"])
    assert acl.lookup("192.0.2.7", MYNETWORKS) is DUNNO
    assert acl.lookup("192.0.2.8", MYNETWORKS) is REJECT
    assert acl.lookup("198.51.100.1", MYNETWORKS) is DUNNO
    assert acl.match("192.0.2.8", MYNETWORKS).text == "192.0.2.0/24 reject"
    assert acl.match("203.0.113.1", MYNETWORKS) is None


def test_order_matters_between_mynetworks_and_reject():
    reject_first = parse_access_list(["127.0.0.5 reject", "permit_mynetworks"])
    permit_first = parse_access_list(["permit_mynetworks", "127.0.0.5 reject"])
    assert reject_first.lookup("127.0.0.5", MYNETWORKS) is REJECT
    assert permit_first.lookup("127.0.0.5", MYNETWORKS) is PERMIT


def test_mynetworks_exclusions_apply():
    nets = [parse_network("!10.0.0.1"), parse_network("10.0.0.0/8")]
    acl = parse_access_list(["permit_mynetworks"])
    assert acl.lookup("10.0.0.2", nets) is PERMIT
    assert acl.lookup("10.0.0.1", nets) is DUNNO


def test_ipv6_entries_and_ipv4_mapped_clients():
    acl = parse_access_list(["[2001:db8::]/32 reject", "2001:db9::1 permit", "192.0.2.0/24 REJECT"])
    assert acl.lookup("2001:db8:1::5", ()) is REJECT
    assert acl.lookup("2001:db9::1", ()) is PERMIT
    assert acl.lookup("2001:db9::2", ()) is DUNNO
    assert acl.lookup("::ffff:192.0.2.9", ()) is REJECT  # a v4 client on a dual-stack socket
    assert acl.lookup("192.0.2.9", ()) is REJECT
    assert acl.lookup("not-an-ip", ()) is DUNNO


def test_negated_network_matches_everything_outside():
    acl = parse_access_list(["!192.0.2.0/24 reject"])
    assert acl.lookup("198.51.100.1", ()) is REJECT
    assert acl.lookup("192.0.2.1", ()) is DUNNO
    assert acl.lookup("2001:db8::1", ()) is REJECT  # other family: outside too


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("192.0.2.1/24 reject", "host bits set (did you mean 192.0.2.0/24?)"),
        ("192.0.2.0/24 allow", "unknown action 'allow'"),
        ("192.0.2.0/24", "expected permit_mynetworks or 'CIDR ACTION'"),
        ("permit", "expected permit_mynetworks or 'CIDR ACTION'"),
        ("cidr:/etc/postfix/x.cidr permit", "is not an IP address or network"),
        ("192.0.2.0/33 reject", "is not an IP address or network"),
        ("192.0.2.0/24 reject extra", "expected 'CIDR ACTION'"),
    ],
)
def test_bad_entries_are_refused_with_a_clear_message(entry, message):
    with pytest.raises(ValueError) as exc:
        parse_entry(entry)
    assert message in str(exc.value)


def test_config_validation_names_the_entry(tmp_path: Path):
    p = tmp_path / "m.yaml"
    p.write_text("postscreen:\n  access_list:\n    - permit_mynetworks\n    - 10.0.0.1/8 reject\n")
    with pytest.raises(ConfigError) as exc:
        load(p)
    [line] = exc.value.errors
    assert line.startswith(f"{p}:2: postscreen.access_list: entry 2: ")
    assert "did you mean 10.0.0.0/8?" in line


def test_valid_config_keeps_the_strings(tmp_path: Path):
    p = tmp_path / "m.yaml"
    p.write_text('postscreen:\n  access_list: [permit_mynetworks, "192.0.2.0/24 reject"]\n')
    cfg = load(p)
    assert cfg.postscreen.access_list == ["permit_mynetworks", "192.0.2.0/24 reject"]
    assert parse_access_list(cfg.postscreen.access_list).lookup("192.0.2.3", cfg.outbound.mynetworks) is REJECT
