"""Failed-AUTH bookkeeping per client: the block, its end, the window, bounded memory. `now` is injected."""

import pytest

from mtaserver.auth.failures import AuthFailures, client_key

IP = "192.0.2.7"
T0 = 1_000.0


def fail_n(f: AuthFailures, ip: str, times: list[float]) -> None:
    for t in times:
        f.failed(ip, t)


def test_blocked_after_max_failures_until_a_window_after_the_last():
    f = AuthFailures(5, 600.0)
    fail_n(f, IP, [T0, T0 + 10, T0 + 20, T0 + 30])
    assert not f.blocked(IP, T0 + 31)
    f.failed(IP, T0 + 40)
    assert f.blocked(IP, T0 + 40)
    assert f.blocked(IP, T0 + 40 + 599.9)
    assert not f.blocked(IP, T0 + 40 + 600)


def test_failures_spread_wider_than_the_window_do_not_block():
    f = AuthFailures(3, 600.0)
    fail_n(f, IP, [T0, T0 + 400, T0 + 800, T0 + 1200])  # never three within 600 s
    assert not f.blocked(IP, T0 + 1200)
    f.failed(IP, T0 + 1300)  # 800, 1200, 1300: three within 600 s
    assert f.blocked(IP, T0 + 1300)


def test_the_window_boundary():
    f = AuthFailures(2, 600.0)
    fail_n(f, IP, [T0, T0 + 599.9])
    assert f.blocked(IP, T0 + 599.9)
    g = AuthFailures(2, 600.0)
    fail_n(g, IP, [T0, T0 + 600])  # a full window apart: the first no longer counts
    assert not g.blocked(IP, T0 + 600)


def test_other_clients_are_not_blocked():
    f = AuthFailures(2, 600.0)
    fail_n(f, IP, [T0, T0 + 1])
    assert f.blocked(IP, T0 + 2)
    assert not f.blocked("192.0.2.8", T0 + 2)
    assert not f.blocked("2001:db8::1", T0 + 2)


def test_zero_means_no_limit():
    f = AuthFailures(0)
    fail_n(f, IP, [T0 + i for i in range(1000)])
    assert not f.blocked(IP, T0 + 1000)
    assert len(f) == 0


def test_one_failure_blocks_when_max_is_one():
    f = AuthFailures(1, 60.0)
    f.failed(IP, T0)
    assert f.blocked(IP, T0) and f.blocked(IP, T0 + 59) and not f.blocked(IP, T0 + 60)


def test_ipv6_counts_per_64_and_ipv4_mapped_as_ipv4():
    f = AuthFailures(3, 600.0)
    fail_n(f, "2001:db8:1:2::1", [T0])
    fail_n(f, "2001:db8:1:2:ffff::9", [T0 + 1])
    fail_n(f, "2001:db8:1:2:1:2:3:4", [T0 + 2])
    assert f.blocked("2001:db8:1:2::77", T0 + 3)
    assert not f.blocked("2001:db8:1:3::1", T0 + 3)
    g = AuthFailures(2, 600.0)
    fail_n(g, "::ffff:192.0.2.7", [T0])
    fail_n(g, IP, [T0 + 1])
    assert g.blocked(IP, T0 + 2) and g.blocked("::ffff:192.0.2.7", T0 + 2)


def test_client_key():
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8::1") == "2001:db8::/64"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("not an ip") == "not an ip"


def test_memory_is_bounded_and_the_oldest_client_goes_first():
    f = AuthFailures(2, 600.0, max_clients=3)
    fail_n(f, "192.0.2.1", [T0, T0 + 1])  # blocked
    for i, ip in enumerate(["192.0.2.2", "192.0.2.3"]):
        f.failed(ip, T0 + 2 + i)
    assert f.blocked("192.0.2.1", T0 + 5) and len(f) == 3
    f.failed("192.0.2.4", T0 + 6)  # evicts 192.0.2.1, whose last failure is the oldest
    assert len(f) == 3
    assert not f.blocked("192.0.2.1", T0 + 6)


def test_a_new_failure_moves_the_client_to_the_young_end():
    f = AuthFailures(2, 600.0, max_clients=2)
    f.failed("192.0.2.1", T0)
    f.failed("192.0.2.2", T0 + 1)
    f.failed("192.0.2.1", T0 + 2)  # 192.0.2.1 is now the most recent: blocked
    f.failed("192.0.2.3", T0 + 3)  # evicts 192.0.2.2
    assert f.blocked("192.0.2.1", T0 + 3)


def test_expired_clients_are_dropped_as_failures_come_in():
    f = AuthFailures(5, 600.0)
    for i in range(100):
        f.failed(f"198.51.100.{i}", T0 + i)
    assert len(f) == 100
    f.failed(IP, T0 + 99 + 600)  # every earlier client's last failure is now a window old
    assert len(f) == 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        AuthFailures(-1)
    with pytest.raises(ValueError):
        AuthFailures(5, -1)
