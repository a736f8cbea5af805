"""postscreen in the real session: a real mtaserver, a real NSD serving DNSBL zones, clients
from 127.0.0.x source addresses.

Clients (the test config trusts 127.0.0.1 only, and `access_list: []` so nothing is
allowlisted by mynetworks):
    127.0.0.2   listed by bl.test (127.0.0.2)
    127.0.0.3   listed nowhere
    127.0.0.4   listed by wl.test (127.0.5.2): a DNSWL, negative weight
    127.0.0.5   listed by bl.test and bl2.test
    127.0.0.6   listed by bl.test with 127.0.0.1 only: the bl.test filter [2..11] drops it
"""

from __future__ import annotations

import time

import pytest
from conftest import deep_merge
from helpers import MSG, RedisServer, connect, nsd, start  # noqa: F401 (nsd is a fixture)
from smtpclient import Reply, SmtpClient, queue_id_of, wait_for, wait_for_log


def deliver(c: SmtpClient) -> str:
    c.ehlo()
    return queue_id_of(c.send_message("a@sender.test", ["u@example.test"], MSG))


# -- DNSBL actions ---------------------------------------------------------------------------


def test_dnsbl_drop(make_mta, nsd):
    m = start(make_mta, nsd, {"dnsbl": {"action": "drop"}})
    c, g, _ = connect(m, "127.0.0.2")
    assert g.code == 521 and g.text == "5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test", g
    assert c.closed_by_server(2)
    wait_for_log(m, "DNSBL rank 2 for [127.0.0.2]:")
    assert "addr 127.0.0.2 listed by domain bl.test as 127.0.0.2" in m.log()
    assert "PASS NEW" not in m.log()


def test_dnsbl_enforce_rejects_every_rcpt(make_mta, nsd):
    m = start(make_mta, nsd, {"dnsbl": {"action": "enforce"}})
    c, g, _ = connect(m, "127.0.0.2")
    assert g.code == 220 and g.lines[0].startswith("mx.example.test ESMTP") and len(g.lines) == 2  # teaser + 220
    c.ehlo("bad.test")
    c.expect("MAIL FROM:<s@sender.test>", 250)
    r = c.expect("RCPT TO:<u@example.test>", 550, "5.7.1")
    assert r.text == "5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"
    c.expect("RCPT TO:<v@example.test>", 550, "5.7.1")
    c.expect("DATA", 503)
    c.expect("QUIT", 221)
    wait_for_log(m, "NOQUEUE: reject: RCPT from [127.0.0.2]:")
    assert "550 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test; from=<s@sender.test>, to=<u@example.test>, proto=ESMTP, helo=<bad.test>" in m.log()
    assert m.queued() == []


def test_dnsbl_ignore_accepts(make_mta, nsd):
    m = start(make_mta, nsd, {"dnsbl": {"action": "ignore"}})
    c, g, _ = connect(m, "127.0.0.2")
    assert g.code == 220
    deliver(c)
    c.close()
    assert len(m.queued()) == 1
    wait_for_log(m, "DNSBL rank 2 for [127.0.0.2]")
    # ignore: the DNSBL test is repeated next time; pregreet passed, so no teaser now
    c, g, _ = connect(m, "127.0.0.2")
    assert g.code == 220 and len(g.lines) == 1
    c.close()
    wait_for(lambda: m.log().count("DNSBL rank 2 for [127.0.0.2]") == 2, 5, "second DNSBL rank")
    assert "PASS NEW" not in m.log()


def test_weights_and_filters_add_up(make_mta, nsd):
    m = start(make_mta, nsd, {"dnsbl": {"action": "drop", "threshold": 3}})
    c, g, _ = connect(m, "127.0.0.5")  # bl.test*2 + bl2.test*1 = 3 >= 3
    assert g.code == 521 and "blocked using bl.test" in g.text  # the largest weight names the list
    c.close()
    c, g, _ = connect(m, "127.0.0.2")  # bl.test only: 2 < 3
    assert g.code == 220
    c.close()
    c, g, _ = connect(m, "127.0.0.6")  # bl.test answered 127.0.0.1: filtered out, score 0
    assert g.code == 220
    c.close()
    wait_for_log(m, "DNSBL rank 3 for [127.0.0.5]")
    assert "DNSBL rank" not in m.log().replace("DNSBL rank 3 for [127.0.0.5]", "")


def test_dnswl_skips_the_greet_wait(make_mta, nsd):
    # A greet wait far longer than the client waits for its greeting (5 s): only the DNSWL answer
    # ending the wait early lets the greeting arrive at all.
    m = start(make_mta, nsd, {"greet": {"wait": 120}, "dnsbl": {"whitelist_threshold": -1}})
    c, g, _ = connect(m, "127.0.0.4")
    assert g.code == 220
    deliver(c)
    c.close()
    wait_for_log(m, "PASS NEW [127.0.0.4]")
    c, g, _ = connect(m, "127.0.0.4")
    assert len(g.lines) == 1  # PASS OLD: no teaser, no greet wait
    c.close()
    wait_for_log(m, "PASS OLD [127.0.0.4]")


# -- pregreet ----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["drop", "enforce", "ignore"])
def test_pregreet(make_mta, nsd, action):
    m = start(make_mta, nsd, {"greet": {"action": action}, "dnsbl": {"sites": []}})
    c = SmtpClient(m.port, "127.0.0.3")
    c.send(b"EHLO early.test\r\n")
    assert c.read_line().startswith(b"220-")  # the teaser
    g = c.reply()
    if action == "drop":
        assert (g.code, g.text) == (521, "5.5.1 Protocol error")
        assert c.closed_by_server(2)
    else:
        assert g.code == 220
        r = c.reply()  # the pregreet bytes were put back: the EHLO is answered after the 220
        assert r.code == 250 and r.lines[0] == "mx.example.test"
        c.expect("MAIL FROM:<s@sender.test>", 250)
        if action == "enforce":
            c.expect("RCPT TO:<u@example.test>", 550, "5.5.1")
        else:
            c.expect("RCPT TO:<u@example.test>", 250)
        c.close()
    wait_for_log(m, "PREGREET 17 after ")
    assert "from [127.0.0.3]:" in m.log() and ": EHLO early.test\\r\\n" in m.log()


def test_hangup_is_not_a_failure(make_mta, nsd):
    m = start(make_mta, nsd)
    c = SmtpClient(m.port, "127.0.0.3")
    c.close()
    wait_for_log(m, "in tests before SMTP handshake")
    assert "HANGUP after " in m.log()


# -- deep tests --------------------------------------------------------------------------------

DEEP_OFF = {"greet": {"banner": ""}, "dnsbl": {"sites": []}}  # deep tests alone: no greet wait
PROTOCOL_ERROR = "521 5.5.1 Protocol error"


def dropped(c: SmtpClient, action: str, r: Reply, line: str) -> bool:
    """Under `drop`: the violation was answered `line` and the server closed the connection."""
    if action != "drop":
        return False
    assert r.line == line
    assert c.closed_by_server(2)
    return True


def goes_on(c: SmtpClient, action: str) -> None:
    """The session after a violation that is not dropped: RCPT is refused under `enforce` only."""
    c.expect("MAIL FROM:<s@sender.test>", 250)
    c.expect("RCPT TO:<u@example.test>", 550 if action == "enforce" else 250)
    c.close()


@pytest.mark.parametrize("action", ["drop", "enforce", "ignore"])
def test_bare_newline(make_mta, nsd, action):
    # smtpd's own bare-newline policy must let the line through for the session to go on
    extra = {"inbound": {"bare_newline": "normalize"}}
    m = start(make_mta, nsd, deep_merge(DEEP_OFF, {"bare_newline": {"enable": True, "action": action}}), extra=extra)
    c, g, _ = connect(m, "127.0.0.3")
    assert g.code == 220 and len(g.lines) == 1
    c.send(b"EHLO bare.test\n")
    r = c.reply()
    if not dropped(c, action, r, PROTOCOL_ERROR):
        assert r.code == 250
        goes_on(c, action)
    wait_for_log(m, "BARE NEWLINE from [127.0.0.3]:")
    if action == "ignore":
        wait_for_log(m, "PASS NEW [127.0.0.3]")


@pytest.mark.parametrize("action", ["drop", "enforce", "ignore"])
def test_non_smtp_command(make_mta, nsd, action):
    m = start(make_mta, nsd, deep_merge(DEEP_OFF, {"non_smtp_command": {"enable": True, "action": action}}))
    c, g, _ = connect(m, "127.0.0.3")
    r = c.cmd("GET / HTTP/1.0")
    if not dropped(c, action, r, "221 2.7.0 Error: I can break rules, too. Goodbye."):  # smtpd's own answer, kept
        assert (r.code, r.status) == (502, "5.5.2")
        c.ehlo()
        goes_on(c, action)
    wait_for_log(m, "NON-SMTP COMMAND from [127.0.0.3]:")


@pytest.mark.parametrize("action", ["drop", "enforce", "ignore"])
def test_pipelining_not_offered(make_mta, nsd, action):
    m = start(make_mta, nsd, deep_merge(DEEP_OFF, {"pipelining": {"enable": True, "action": action}}))
    c, g, _ = connect(m, "127.0.0.3")
    r = c.ehlo()
    assert "PIPELINING" not in r.lines
    c.send(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<u@example.test>\r\n")
    r = c.reply()
    if not dropped(c, action, r, PROTOCOL_ERROR):
        assert r.code == 250
        r = c.reply()
        assert r.code == (550 if action == "enforce" else 250), r
        c.close()
    wait_for_log(m, "COMMAND PIPELINING from [127.0.0.3]:")
    assert "after MAIL: RCPT TO:<u@example.test>\\r\\n" in m.log()


def test_clean_client_delivers_in_its_first_session_then_pass_old(make_mta, nsd):
    m = start(make_mta, nsd, {"pipelining": {"enable": True}, "bare_newline": {"enable": True}, "non_smtp_command": {"enable": True}})
    c, g, _ = connect(m, "127.0.0.3")
    assert len(g.lines) == 2  # the teaser: a greet wait ran
    assert "PIPELINING" not in c.ehlo().lines
    deliver(c)  # accepted in the same session: no 450, no reconnect
    c.expect("QUIT", 221)
    assert len(m.queued()) == 1
    wait_for_log(m, "PASS NEW [127.0.0.3]")
    c, g, _ = connect(m, "127.0.0.3")
    assert len(g.lines) == 1, g  # no teaser: no greet wait
    assert "PIPELINING" in c.ehlo().lines  # a cached client gets the normal session
    c.close()
    wait_for_log(m, "PASS OLD [127.0.0.3]")
    # the SQLite cache survives a restart
    m.stop()
    m.start()
    wait_for(lambda: m.log().count("worker 0 ready:") == 2, 10, "restart")  # the listener again, not any "ready:"
    c, g, _ = connect(m, "127.0.0.3")
    assert len(g.lines) == 1
    c.close()
    assert m.log().count("PASS OLD [127.0.0.3]") == 2


def test_deep_tests_require_reconnect(make_mta, nsd):
    m = start(make_mta, nsd, deep_merge(DEEP_OFF, {"pipelining": {"enable": True}, "deep_tests_require_reconnect": True}))
    c, g, _ = connect(m, "127.0.0.3")
    c.ehlo()
    c.expect("MAIL FROM:<s@sender.test>", 250)
    c.expect("RCPT TO:<u@example.test>", 450, "4.3.2")
    c.close()
    wait_for_log(m, "PASS NEW [127.0.0.3]")
    c, g, _ = connect(m, "127.0.0.3")
    deliver(c)
    c.close()
    wait_for_log(m, "PASS OLD [127.0.0.3]")


def test_postscreen_off_is_the_plain_session(make_mta, nsd):
    m = start(make_mta, nsd, {"dnsbl": {"action": "drop"}}, postscreen=False)
    c, g, _ = connect(m, "127.0.0.2")
    assert g.code == 220 and len(g.lines) == 1
    assert "PIPELINING" in c.ehlo().lines
    c.close()
    assert "mtaserver/postscreen" not in m.log() and "CONNECT from" not in m.log()


def test_ttl_expires_and_the_tests_run_again(make_mta, nsd):
    m = start(make_mta, nsd, {"greet": {"ttl": 1}, "dnsbl": {"min_ttl": 1, "max_ttl": 1}})
    c, g, _ = connect(m, "127.0.0.3")
    c.close()
    wait_for_log(m, "PASS NEW [127.0.0.3]")
    c, g, _ = connect(m, "127.0.0.3")
    assert len(g.lines) == 1
    c.close()
    time.sleep(2.1)  # stamps are whole seconds: 1 s TTL expires within 2 s
    c, g, _ = connect(m, "127.0.0.3")
    assert len(g.lines) == 2  # screened again
    c.close()


def test_redis_cache_is_shared_by_two_servers(make_mta, nsd, tmp_path):
    redis = RedisServer(tmp_path).start()
    try:
        ps = {"cache": {"backend": "redis", "url": redis.url}}
        a = start(make_mta, nsd, ps)
        b = start(make_mta, nsd, ps)
        c, g, _ = connect(a, "127.0.0.3")
        assert len(g.lines) == 2
        c.close()
        wait_for_log(a, "PASS NEW [127.0.0.3]")
        c, g, _ = connect(b, "127.0.0.3")
        assert len(g.lines) == 1
        c.close()
        wait_for_log(b, "PASS OLD [127.0.0.3]")
    finally:
        a.stop() if "a" in locals() else None
        b.stop() if "b" in locals() else None
        redis.stop()


def test_denylist_drop(make_mta, nsd):
    m = start(make_mta, nsd, {"access_list": ["127.0.0.3 permit", "127.0.0.0/24 reject"], "blacklist_action": "drop"})
    c, g, _ = connect(m, "127.0.0.3")
    assert g.code == 220 and len(g.lines) == 1  # ALLOWLISTED: no tests at all, no teaser
    c.close()
    c, g, _ = connect(m, "127.0.0.2")
    assert (g.code, g.text) == (521, "5.3.2 Service currently unavailable")
    c.close()
    wait_for_log(m, "DENYLISTED [127.0.0.2]")
    assert "ALLOWLISTED [127.0.0.3]" in m.log()


def test_sighup_rebuilds_the_screener(make_mta, nsd):
    import signal

    m = start(make_mta, nsd, {"greet": {"banner": ""}, "dnsbl": {"action": "ignore"}})
    c, g, _ = connect(m, "127.0.0.2")
    assert g.code == 220
    c.close()
    m.config["postscreen"]["dnsbl"]["action"] = "drop"
    m.write_config()
    m.signal(signal.SIGHUP)
    wait_for_log(m, "reload: applied from")
    c, g, _ = connect(m, "127.0.0.2")
    assert g.code == 521
    c.close()


def test_stress_mode_shortens_the_greet_wait(make_mta, nsd):
    """Postfix's stress mode: once a worker holds stress.connections connections, new
    clients wait stress.greet_wait instead of greet.wait; the log says when it enters."""
    m = start(make_mta, nsd, {"greet": {"wait": 3}, "stress": {"connections": 3, "greet_wait": 0.2}})
    # New (uncached) clients each: a cached one would skip the wait anyway.
    _, _, calm = connect(m, "127.0.0.7")
    assert calm >= 2.7, "not stressed: the full greet wait"
    busy = [SmtpClient(m.port, ip) for ip in ("127.0.0.8", "127.0.0.9")]  # held in their greet wait
    time.sleep(0.2)
    _, g, stressed = connect(m, "127.0.0.10")
    assert g.code == 220 and stressed < 1.5
    wait_for_log(m, "entering STRESS mode with 3 connections")
    for c in busy:
        c.close()
