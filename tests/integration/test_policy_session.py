"""The inbound policy over real sockets: every check's accept, reject and tempfail reply, exactly.

A real mtaserver (tests/conftest.py) runs with the client name lookup and the DNS checks turned
on, its resolver pointed at a real NSD on 127.0.0.1 (dnsserver.py). Clients bind to different
127.0.0.x source addresses; the reverse zone gives each one its case:

    127.0.0.1  mynetworks (no PTR)
    127.0.0.2  PTR good.fwd.test, whose A is 127.0.0.2          verified
    127.0.0.3  PTR mismatch.fwd.test, whose A is 192.0.2.99     forward lookup mismatch
    127.0.0.4  no PTR                                           NXDOMAIN
    127.0.0.5  PTR host.dead.test, whose zone SERVFAILs         forward lookup tempfail
    127.0.0.6  its reverse zone SERVFAILs                       PTR tempfail

A UDP socket that never answers plays the DNS server that times out. Each server enables only
the checks a test is about (every one of the seven explicitly on or off), and the servers of
one configuration are shared by the tests of the module.
"""

from __future__ import annotations

import json
import re
import signal
import socket
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import deep_merge
from dnsserver import Nsd, zone
from smtpclient import TRUSTED, Mta, Reply, SmtpClient, queue_id_of, wait_for, wait_for_log

VERIFIED, MISMATCH, NO_PTR, FORWARD_SERVFAIL, PTR_SERVFAIL = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"

CHECKS = (
    "reject_unknown_client_hostname", "reject_unknown_reverse_client_hostname", "reject_invalid_helo_hostname",
    "reject_non_fqdn_helo_hostname", "reject_unknown_helo_hostname", "reject_non_fqdn_sender", "reject_unknown_sender_domain",
)  # fmt: skip


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nsd]:
    zones: dict[str, str | None] = {
        "fwd.test": zone(
            "fwd.test",
            "good A 127.0.0.2\n"
            "mismatch A 192.0.2.99\n"
            "helo A 192.0.2.1\n"
            "mail A 192.0.2.10\n"
            "withmx MX 10 mail.fwd.test.\n"
            "onlya A 192.0.2.11\n"
            "nullmx MX 0 .\n"
            'txtonly TXT "no mail here"\n',
        ),
        "0.0.127.in-addr.arpa": zone(
            "0.0.127.in-addr.arpa",
            "2 PTR good.fwd.test.\n"
            "3 PTR mismatch.fwd.test.\n"
            "5 PTR host.dead.test.\n",
        ),
        "6.0.0.127.in-addr.arpa": None,  # SERVFAIL
        "dead.test": None,  # SERVFAIL
    }
    with Nsd(tmp_path_factory.mktemp("policy-nsd"), zones) as server:
        yield server


@pytest.fixture(scope="module")
def silent_dns() -> Iterator[str]:
    """A DNS server that never answers: every query times out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def checks(unknown_reject_code: int = 450, **on: bool) -> dict[str, Any]:
    """inbound.protocol_checks with every check off but those named."""
    unknown = set(on) - set(CHECKS)
    assert not unknown, unknown
    return {"unknown_reject_code": unknown_reject_code, **{c: bool(on.get(c, False)) for c in CHECKS}}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, nsd: Nsd) -> Iterator[Any]:
    """servers(protocol_checks, extra_overrides=None) -> a running Mta, one per configuration."""
    started: dict[str, Mta] = {}

    def get(protocol_checks: dict[str, Any], extra: dict[str, Any] | None = None) -> Mta:
        overrides = deep_merge(
            {
                "server": {"peername_lookup": True, "dns": {"nameservers": [nsd.address], "timeout": "1s"}},
                "inbound": {"protocol_checks": protocol_checks},
            },
            extra or {},
        )
        key = json.dumps(overrides, sort_keys=True)
        if key not in started:
            started[key] = Mta(tmp_path_factory.mktemp("policy"), overrides).start()
        return started[key]

    yield get
    for m in started.values():
        m.stop()


def session(mta: Mta, source: str, helo: str = "client.test") -> SmtpClient:
    c = SmtpClient(mta.port, source)
    c.greeting()
    assert c.cmd(f"EHLO {helo}").code == 250
    return c


def rcpt(mta: Mta, source: str, to: str = "u@example.test", *, helo: str = "client.test", sender: str = "s@client.test") -> Reply:
    """The reply to one RCPT TO in a fresh session (MAIL must pass: the checks run at RCPT)."""
    with session(mta, source, helo) as c:
        c.expect(f"MAIL FROM:<{sender}>", 250, "2.1.0")
        r = c.cmd(f"RCPT TO:<{to}>")
        if r.code != 250:
            assert c.cmd("DATA").line == "503 5.5.1 Error: need RCPT command"
        c.expect("QUIT", 221)
    return r


OK = "250 2.1.5 Ok"


def hostname_reply(code: int, ip: str) -> str:
    return f"{code} {code // 100}.7.25 Client host rejected: cannot find your hostname, [{ip}]"


def reverse_reply(code: int, ip: str) -> str:
    return f"{code} {code // 100}.7.1 Client host rejected: cannot find your reverse hostname, [{ip}]"


# ---------------------------------------------------------------------------------------------
# reject_unknown_client_hostname, reject_unknown_reverse_client_hostname


@pytest.mark.parametrize("code", [450, 550])
@pytest.mark.parametrize(
    ("ip", "definite"),
    [(VERIFIED, None), (MISMATCH, True), (NO_PTR, True), (FORWARD_SERVFAIL, False), (PTR_SERVFAIL, False)],
)
def test_unknown_client_hostname(servers, code, ip, definite):
    mta = servers(checks(code, reject_unknown_client_hostname=True))
    want = OK if definite is None else hostname_reply(code if definite else 450, ip)  # a DNS tempfail is never 5xx
    assert rcpt(mta, ip).line == want


@pytest.mark.parametrize("code", [450, 550])
@pytest.mark.parametrize(
    ("ip", "definite"),
    # a PTR name is all this check wants, confirmed or not
    [(VERIFIED, None), (MISMATCH, None), (FORWARD_SERVFAIL, None), (NO_PTR, True), (PTR_SERVFAIL, False)],
)
def test_unknown_reverse_client_hostname(servers, code, ip, definite):
    mta = servers(checks(code, reject_unknown_reverse_client_hostname=True))
    want = OK if definite is None else reverse_reply(code if definite else 450, ip)
    assert rcpt(mta, ip).line == want


def test_client_hostname_check_comes_before_the_reverse_one(servers):
    mta = servers(checks(550, reject_unknown_client_hostname=True, reject_unknown_reverse_client_hostname=True))
    assert rcpt(mta, NO_PTR).line == hostname_reply(550, NO_PTR)
    assert rcpt(mta, PTR_SERVFAIL).line == hostname_reply(450, PTR_SERVFAIL)
    assert rcpt(mta, VERIFIED).line == OK


def test_client_hostname_rejections_are_logged(servers):
    mta = servers(checks(550, reject_unknown_client_hostname=True))
    rcpt(mta, MISMATCH, sender="s@client.test", helo="client.test")
    wait_for_log(
        mta,
        f"NOQUEUE: reject: RCPT from unknown[{MISMATCH}]: {hostname_reply(550, MISMATCH)}; "
        "from=<s@client.test> to=<u@example.test> proto=ESMTP helo=<client.test>",
    )


# ---------------------------------------------------------------------------------------------
# The client's name in the log and in Received:


def test_verified_name_in_later_log_lines_and_received_header(servers):
    mta = servers(checks(450, reject_unknown_client_hostname=True))
    with session(mta, VERIFIED, "helo.fwd.test") as c:
        c.expect("MAIL FROM:<s@client.test>", 250)
        c.expect("RCPT TO:<u@example.test>", 250, "2.1.5")  # the check waited for the name
        assert c.cmd("RCPT TO:<u@remote.test>").line == "554 5.7.1 <u@remote.test>: Relay access denied"
        c.expect("DATA", 354)
        c.send(b"Subject: name\r\n\r\nbody\r\n.\r\n")
        qid = queue_id_of(c.reply())
        c.expect("QUIT", 221)
    wait_for_log(
        mta,
        f"NOQUEUE: reject: RCPT from good.fwd.test[{VERIFIED}]: 554 5.7.1 <u@remote.test>: Relay access denied; "
        "from=<s@client.test> to=<u@remote.test> proto=ESMTP helo=<helo.fwd.test>",
    )
    wait_for_log(mta, f"disconnect from good.fwd.test[{VERIFIED}]")
    body = mta.body(qid)
    assert body.startswith(f"Received: from helo.fwd.test (good.fwd.test [{VERIFIED}])\r\n".encode()), body[:200]
    assert mta.envelope(qid).recipients[0].address == "u@example.test"


@pytest.mark.parametrize("ip", [MISMATCH, FORWARD_SERVFAIL, PTR_SERVFAIL, NO_PTR])
def test_unverified_name_is_unknown(servers, ip):
    # reverse_client_hostname on, code 450: it passes the clients with a PTR; the others are
    # refused, and their log line says "unknown"
    mta = servers(checks(450, reject_unknown_reverse_client_hostname=True))
    with session(mta, ip) as c:
        c.expect("MAIL FROM:<s@client.test>", 250)
        r = c.cmd("RCPT TO:<u@example.test>")
        if r.code == 250:
            c.expect("DATA", 354)
            c.send(b"Subject: name\r\n\r\nbody\r\n.\r\n")
            qid = queue_id_of(c.reply())
            assert mta.body(qid).startswith(f"Received: from client.test (unknown [{ip}])\r\n".encode())
        else:
            assert r.line == reverse_reply(450, ip)
            wait_for_log(mta, f"NOQUEUE: reject: RCPT from unknown[{ip}]: {r.line}; from=<s@client.test>")
        c.expect("QUIT", 221)
    wait_for_log(mta, f"disconnect from unknown[{ip}]")


def test_greeting_not_delayed_by_a_dns_server_that_never_answers(make_mta, silent_dns):
    # A lookup that would take 30 s: if it ran before the 220 or held up EHLO, the client's
    # 5 s socket timeout would fail this test.
    mta = make_mta({
        "server": {"peername_lookup": True, "dns": {"nameservers": [silent_dns], "timeout": "30s"}},
        "inbound": {"protocol_checks": checks(550, reject_unknown_client_hostname=True)},
    })  # fmt: skip
    with SmtpClient(mta.port, VERIFIED, timeout=5.0) as c:
        c.greeting()
        assert c.cmd("EHLO client.test").code == 250
        c.expect("MAIL FROM:<s@client.test>", 250, "2.1.0")
        c.expect("QUIT", 221)


def test_dns_timeout_gives_unknown_and_450(make_mta, silent_dns):
    mta = make_mta({
        "server": {"peername_lookup": True, "dns": {"nameservers": [silent_dns], "timeout": "1s"}},
        "inbound": {"protocol_checks": checks(550, reject_unknown_client_hostname=True)},
    })  # fmt: skip
    with session(mta, VERIFIED) as c:
        c.expect("MAIL FROM:<s@client.test>", 250)
        assert c.cmd("RCPT TO:<u@example.test>").line == hostname_reply(450, VERIFIED)  # never 550 for a timeout
        c.expect("QUIT", 221)
    wait_for_log(mta, f"NOQUEUE: reject: RCPT from unknown[{VERIFIED}]: {hostname_reply(450, VERIFIED)}")
    wait_for_log(mta, f"disconnect from unknown[{VERIFIED}]")


# ---------------------------------------------------------------------------------------------
# HELO checks


def one_check(check: str, field: str, table: list[tuple[str, str]]) -> list[Any]:
    """Parameters of test_one_syntax_check: `check` on alone, `field` (helo or sender) set to each value."""
    return [pytest.param(check, field, value, want, id=f"{check}[{value}]") for value, want in table]


@pytest.mark.parametrize(
    ("check", "field", "value", "want"),
    [
        *one_check("reject_invalid_helo_hostname", "helo", [
            ("bad!name", "501 5.5.2 <bad!name>: Helo command rejected: Invalid name"),
            ("-bad.example", "501 5.5.2 <-bad.example>: Helo command rejected: Invalid name"),
            ("a..b", "501 5.5.2 <a..b>: Helo command rejected: Invalid name"),
            ("[999.1.2.3]", "501 5.5.2 <[999.1.2.3]>: Helo command rejected: invalid ip address"),
            ("localhost", OK),  # valid, if not qualified: another check's business
            ("client.test", OK),
            ("client.test.", OK),
            ("192.0.2.1", OK),  # a bare address is a valid name for this check (Postfix valid_hostaddr)
            ("[127.0.0.2]", OK),
            ("[IPv6:::1]", OK),
        ]),
        *one_check("reject_non_fqdn_helo_hostname", "helo", [
            ("localhost", "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname"),
            ("localhost.", "504 5.5.2 <localhost.>: Helo command rejected: need fully-qualified hostname"),
            ("client.test", OK),
            ("[127.0.0.2]", OK),
        ]),
        *one_check("reject_non_fqdn_sender", "sender", [
            ("s@client", "504 5.5.2 <s@client>: Sender address rejected: need fully-qualified address"),
            ("s@client.", "504 5.5.2 <s@client.>: Sender address rejected: need fully-qualified address"),
            ("s@client.test", OK),
            ("s@[192.0.2.1]", OK),  # an address literal is qualified
            ("", OK),  # the null sender
        ]),
    ],
)  # fmt: skip
def test_one_syntax_check(servers, check, field, value, want):
    mta = servers(checks(**{check: True}))
    assert rcpt(mta, VERIFIED, **{field: value}).line == want


@pytest.mark.parametrize("code", [450, 550])
@pytest.mark.parametrize(
    ("helo", "definite"),
    [
        ("helo.fwd.test", None),  # A
        ("withmx.fwd.test", None),  # MX only
        ("nullmx.fwd.test", None),  # a null MX is an existing name for a HELO
        ("[127.0.0.2]", None),  # an address literal is not looked up
        ("nosuch.fwd.test", True),  # NXDOMAIN
        ("txtonly.fwd.test", True),  # no A, AAAA or MX
        ("host.dead.test", False),  # SERVFAIL
    ],
)
def test_unknown_helo_hostname(servers, code, helo, definite):
    mta = servers(checks(code, reject_unknown_helo_hostname=True))
    reply = f"{code} {code // 100}.7.1" if definite else "450 4.7.1"  # a DNS tempfail is never 5xx
    want = OK if definite is None else f"{reply} <{helo}>: Helo command rejected: Host not found"
    assert rcpt(mta, VERIFIED, helo=helo).line == want


def test_helo_tempfail_is_deferred_and_a_later_reject_wins(servers):
    both = checks(550, reject_unknown_helo_hostname=True, reject_unknown_sender_domain=True)
    mta = servers(both)
    # defer_if_permit: the HELO's 450 only if nothing else objects ...
    assert rcpt(mta, VERIFIED, helo="host.dead.test", sender="s@withmx.fwd.test").line == (
        "450 4.7.1 <host.dead.test>: Helo command rejected: Host not found"
    )
    # ... and the sender domain's definite 550 wins over it
    assert rcpt(mta, VERIFIED, helo="host.dead.test", sender="s@nosuch.fwd.test").line == (
        "550 5.1.8 <s@nosuch.fwd.test>: Sender address rejected: Domain not found"
    )


# ---------------------------------------------------------------------------------------------
# Sender checks


@pytest.mark.parametrize("code", [450, 550])
@pytest.mark.parametrize(
    ("sender", "want"),
    [
        ("s@withmx.fwd.test", OK),
        ("s@onlya.fwd.test", OK),  # no MX, an A record: accepted
        ("s@example.test", OK),  # our own domain is not looked up
        ("", OK),
        ("s@[192.0.2.1]", OK),
        ("s@nosuch.fwd.test", "{code} {c}.1.8 <s@nosuch.fwd.test>: Sender address rejected: Domain not found"),
        ("s@txtonly.fwd.test", "{code} {c}.1.8 <s@txtonly.fwd.test>: Sender address rejected: Domain not found"),
        ("s@nullmx.fwd.test",
         "550 5.7.27 <s@nullmx.fwd.test>: Sender address rejected: Domain nullmx.fwd.test does not accept mail (nullMX)"),
        ("s@host.dead.test", "450 4.1.8 <s@host.dead.test>: Sender address rejected: Domain not found"),  # never 5xx
    ],
)  # fmt: skip
def test_unknown_sender_domain(servers, code, sender, want):
    mta = servers(checks(code, reject_unknown_sender_domain=True))
    assert rcpt(mta, VERIFIED, sender=sender).line == want.format(code=code, c=code // 100)


def test_every_recipient_gets_the_senders_reply(servers):
    mta = servers(checks(550, reject_unknown_sender_domain=True))
    want = "550 5.1.8 <many@nosuch.fwd.test>: Sender address rejected: Domain not found"
    with session(mta, VERIFIED) as c:
        c.expect("MAIL FROM:<many@nosuch.fwd.test>", 250)
        for i in range(3):
            assert c.cmd(f"RCPT TO:<u{i}@example.test>").line == want
        c.expect("QUIT", 221)
    log = wait_for_log(mta, "to=<u2@example.test>")
    assert log.count(f"[{VERIFIED}]: {want}; from=<many@nosuch.fwd.test>") == 3


def test_the_rcpt_that_waited_for_the_name_logs_it(servers):
    # The client name check waits for the lookup started after the greeting; the refusal
    # that follows (the sender's domain) is logged with the name it waited for.
    mta = servers(checks(550, reject_unknown_client_hostname=True, reject_unknown_sender_domain=True))
    with SmtpClient(mta.port, VERIFIED) as c:
        c.greeting()
        c.send(b"EHLO client.test\r\nMAIL FROM:<s@nosuch.fwd.test>\r\nRCPT TO:<u@example.test>\r\nQUIT\r\n")
        replies = [r.line for r in c.replies(4)][1:]
    refused = "550 5.1.8 <s@nosuch.fwd.test>: Sender address rejected: Domain not found"
    assert replies == ["250 2.1.0 Ok", refused, "221 2.0.0 Bye"]
    wait_for_log(mta, f"NOQUEUE: reject: RCPT from good.fwd.test[{VERIFIED}]: 550 5.1.8 <s@nosuch.fwd.test>")


# ---------------------------------------------------------------------------------------------
# Who is exempt: mynetworks (and authenticated clients, below); reject_non_fqdn_recipient is not


ALL_ON = checks(550, **dict.fromkeys(CHECKS, True))


def test_mynetworks_is_exempt_from_the_seven_checks(servers):
    mta = servers(ALL_ON)
    # 127.0.0.1 (localhost by /etc/hosts, no PTR in our zone): the HELO is invalid, the sender
    # unqualified and of an unknown domain
    assert rcpt(mta, TRUSTED, helo="bad!name", sender="s@client").line == OK
    assert rcpt(mta, TRUSTED, helo="nosuch.fwd.test", sender="s@nosuch.fwd.test").line == OK
    assert rcpt(mta, TRUSTED, "u@remote.test", helo="localhost", sender="s@nullmx.fwd.test").line == OK
    # the same requests from an outsider
    invalid = "501 5.5.2 <bad!name>: Helo command rejected: Invalid name"
    assert rcpt(mta, NO_PTR, helo="bad!name", sender="s@client").line == invalid
    assert rcpt(mta, NO_PTR, helo="nosuch.fwd.test", sender="s@nosuch.fwd.test").line == hostname_reply(550, NO_PTR)
    assert rcpt(mta, VERIFIED, helo="nosuch.fwd.test", sender="s@nosuch.fwd.test").line == (
        "550 5.7.1 <nosuch.fwd.test>: Helo command rejected: Host not found"
    )
    assert rcpt(mta, VERIFIED, helo="helo.fwd.test", sender="s@withmx.fwd.test").line == OK


@pytest.mark.parametrize("source", [TRUSTED, VERIFIED])
@pytest.mark.parametrize("to", ["u@remote", "u", "u@localhost."])
def test_non_fqdn_recipient_applies_to_everyone(servers, source, to):
    mta = servers(ALL_ON)
    r = rcpt(mta, source, to, helo="helo.fwd.test", sender="s@withmx.fwd.test")
    assert r.line == f"504 5.5.2 <{to}>: Recipient address rejected: need fully-qualified address"


def test_relay_denied_before_any_dns_check(servers):
    # relay restrictions come before the recipient restrictions: the client is not even looked up
    mta = servers(ALL_ON)
    assert rcpt(mta, PTR_SERVFAIL, "u@remote.test", helo="host.dead.test", sender="s@host.dead.test").line == (
        "554 5.7.1 <u@remote.test>: Relay access denied"
    )


# ---------------------------------------------------------------------------------------------
# domains.mailboxes: unlisted recipients and senders, aliases, reload


MAILBOXES = """\
# test mailboxes
alice@example.test
bob@example.test
sales@example.test   alice@example.test, bob@example.test
"""


@pytest.fixture
def listed(make_mta: Any) -> Mta:
    mta = make_mta({"domains": {"mailboxes": "mailboxes"}}, start=False)
    (mta.tmp / "mailboxes").write_text(MAILBOXES)
    return mta.start()


def unknown_user(address: str) -> str:
    return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"


def test_unlisted_recipient(listed):
    assert rcpt(listed, VERIFIED, "alice@example.test").line == OK
    assert rcpt(listed, VERIFIED, "sales@example.test").line == OK  # an alias
    assert rcpt(listed, VERIFIED, "ALICE@EXAMPLE.TEST.").line == unknown_user("ALICE@EXAMPLE.TEST.")
    assert rcpt(listed, VERIFIED, "alice@Example.Test").line == OK  # the domain matches case-insensitively
    assert rcpt(listed, VERIFIED, "nobody@example.test").line == unknown_user("nobody@example.test")
    # mynetworks too (the implicit reject_unlisted_recipient), and not for domains other than local ones
    assert rcpt(listed, TRUSTED, "nobody@example.test").line == unknown_user("nobody@example.test")
    assert rcpt(listed, VERIFIED, "anyone@relay.test").line == OK
    wait_for_log(
        listed,
        f"NOQUEUE: reject: RCPT from unknown[{VERIFIED}]: {unknown_user('nobody@example.test')}; "
        "from=<s@client.test> to=<nobody@example.test> proto=ESMTP helo=<client.test>",
    )


def test_unlisted_sender(listed):
    want = "550 5.1.0 <nobody@example.test>: Sender address rejected: User unknown"
    assert rcpt(listed, VERIFIED, sender="nobody@example.test").line == want
    assert rcpt(listed, TRUSTED, sender="nobody@example.test").line == want  # whoever the client is
    assert rcpt(listed, VERIFIED, "alice@example.test", sender="sales@example.test").line == OK
    assert rcpt(listed, VERIFIED, "alice@example.test", sender="someone@elsewhere.test").line == OK


def test_sighup_reloads_the_mailboxes_file(listed):
    want = unknown_user("carol@example.test")
    assert rcpt(listed, VERIFIED, "carol@example.test").line == want
    (listed.tmp / "mailboxes").write_text(MAILBOXES + "carol@example.test\n")
    before = listed.log().count("reload: applied")
    listed.signal(signal.SIGHUP)
    wait_for(lambda: listed.log().count("reload: applied") > before, 10, "reload: applied")
    assert rcpt(listed, VERIFIED, "carol@example.test").line == OK
    # a broken file is refused and the table in use stays
    (listed.tmp / "mailboxes").write_text("loop@example.test loop2@example.test\nloop2@example.test loop@example.test\n")
    before = listed.log().count("reload refused")
    listed.signal(signal.SIGHUP)
    wait_for(lambda: listed.log().count("reload refused") > before, 10, "reload refused")
    assert rcpt(listed, VERIFIED, "carol@example.test").line == OK
    assert rcpt(listed, VERIFIED, "loop@example.test").line == unknown_user("loop@example.test")


# ---------------------------------------------------------------------------------------------
# Sender login mismatch, and the log never holds a secret


PASSWORD = "s3cret-Pa55word-for-alice"


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory, cert: tuple[Path, Path], nsd: Nsd) -> Iterator[tuple[Mta, str]]:
    from mtaserver.auth.hashes import hash_password

    hashed = hash_password(PASSWORD)
    d = tmp_path_factory.mktemp("policy-users")
    (d / "users.yaml").write_text(yaml.safe_dump({
        "alice": {"password": hashed, "addresses": ["alice@example.test"]},
        "bob": {"password": hash_password("bobs-own-password"), "addresses": ["bob@example.test"]},
    }))  # fmt: skip
    crt, key = cert
    (d / "mta").mkdir()
    m = Mta(d / "mta", {
        "server": {"tls": {"cert": str(crt), "key": str(key)}, "peername_lookup": True,
                   "dns": {"nameservers": [nsd.address], "timeout": "1s"}},
        "auth": {"users_file": str(d / "users.yaml")},
        "inbound": {"reject_sender_login_mismatch": True, "protocol_checks": ALL_ON},
    }).start()  # fmt: skip
    yield m, hashed
    m.stop()


def test_outsider_may_not_use_an_address_we_own(users):
    mta, _ = users
    for sender in ("alice@example.test", "ALICE@example.test", "alice@EXAMPLE.TEST."):  # a changed case is no way round
        assert rcpt(mta, VERIFIED, sender=sender).line == f"553 5.7.1 <{sender}>: Sender address rejected: not logged in"
    assert rcpt(mta, VERIFIED, "bob@example.test", sender="bob@example.test", helo="helo.fwd.test").line == (
        "553 5.7.1 <bob@example.test>: Sender address rejected: not logged in"
    )
    # the name is not waited for (no check needs it yet): either label will do
    wait_for_log(mta, re.compile(
        re.escape(f"[{VERIFIED}]: 553 5.7.1 <alice@example.test>: Sender address rejected: not logged in; ")
        + re.escape("from=<alice@example.test> to=<u@example.test> proto=ESMTP helo=<client.test>")
    ))  # fmt: skip


def test_mynetworks_may_use_an_address_we_own(users):
    mta, _ = users
    assert rcpt(mta, TRUSTED, sender="alice@example.test").line == OK
    assert rcpt(mta, TRUSTED, "u@remote.test", sender="bob@example.test").line == OK


def _auth_session(mta: Mta, source: str, login: str, password: str) -> tuple[SmtpClient, Reply]:
    c = SmtpClient(mta.port, source)
    c.greeting()
    c.ehlo("bad!name")  # an invalid HELO: an authenticated client is exempt from the checks
    assert c.cmd("STARTTLS").line == "220 2.0.0 Ready to start TLS"
    c.starttls()
    c.ehlo("bad!name")
    token = b64encode(f"\0{login}\0{password}".encode()).decode()
    return c, c.cmd(f"AUTH PLAIN {token}")


def test_authenticated_client_is_exempt_and_must_own_its_sender(users):
    mta, hashed = users
    c, r = _auth_session(mta, PTR_SERVFAIL, "alice", PASSWORD)
    with c:
        assert r.line == "235 2.7.0 Authentication successful"
        c.expect("MAIL FROM:<alice@example.test>", 250)
        assert c.cmd("RCPT TO:<u@remote.test>").line == OK  # relay, no DNS check for her
        c.expect("RSET", 250)
        c.expect("MAIL FROM:<bob@example.test>", 250)
        not_hers = "553 5.7.1 <bob@example.test>: Sender address rejected: not owned by user alice"
        assert c.cmd("RCPT TO:<u@example.test>").line == not_hers
        unqualified = "504 5.5.2 <u@remote>: Recipient address rejected: need fully-qualified address"
        assert c.cmd("RCPT TO:<u@remote>").line == unqualified
        c.expect("QUIT", 221)
    c, r = _auth_session(mta, VERIFIED, "alice", PASSWORD + "x")
    with c:
        assert r.line == "535 5.7.8 Error: authentication failed"
    wait_for_log(mta, "authentication failed")
    log = mta.log()
    token = b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, token, b64encode(PASSWORD.encode()).decode(), hashed, hashed.split("$")[-1]):
        assert secret not in log


# ---------------------------------------------------------------------------------------------
# Relay tricks that test_relay.py does not try: case, trailing dots and relay domains


@pytest.mark.parametrize(
    "to",
    [
        "USER%REMOTE.TEST@EXAMPLE.TEST",
        "user%remote.test@example.test.",
        "user%remote.test@relay.test",
        "remote.test!user@EXAMPLE.TEST",
        "remote.test!user@relay.test.",
        '"user@remote.test"@EXAMPLE.TEST',
        '"user@remote.test"@relay.test',
        "user@[127.0.0.1]",
        "user@[IPv6:::ffff:127.0.0.1]",
        "user@remote.test.",
    ],
)
def test_relay_tricks_with_every_check_on(servers, to):
    mta = servers(ALL_ON)
    r = rcpt(mta, VERIFIED, to, helo="helo.fwd.test", sender="s@withmx.fwd.test")
    assert r.line == f"554 5.7.1 <{to}>: Relay access denied"


@pytest.mark.parametrize(
    "to", ["@EXAMPLE.TEST:user@remote.test", "@relay.test:user@remote.test", "@example.test,@relay.test:user@remote.test"]
)
def test_source_routes_with_every_check_on(servers, to):
    mta = servers(ALL_ON)
    r = rcpt(mta, VERIFIED, to, helo="helo.fwd.test", sender="s@withmx.fwd.test")
    assert (r.code, r.status) == (554, "5.7.1") and r.text.endswith(">: Relay access denied"), r


@pytest.mark.parametrize("to", ["user@EXAMPLE.TEST", "user@Example.Test.", "user@RELAY.TEST"])
def test_our_domains_in_any_case(servers, to):
    mta = servers(ALL_ON)
    assert rcpt(mta, VERIFIED, to, helo="helo.fwd.test", sender="s@withmx.fwd.test").line == OK


# ---------------------------------------------------------------------------------------------
# Connection rate per client IP


def _connect(mta: Mta, source: str) -> Reply:
    with SmtpClient(mta.port, source) as c:
        r = c.reply()
        if r.code == 220:
            c.expect("QUIT", 221)
        else:
            assert c.closed_by_server(5.0)
        return r


@pytest.mark.parametrize("workers", [1, 2])
def test_connection_rate_per_ip(make_mta, workers):
    mta = make_mta({"server": {"workers": workers, "limits": {"connection_rate_per_ip": 3}}})
    assert [_connect(mta, "127.0.0.3").code for _ in range(3)] == [220, 220, 220]
    assert _connect(mta, "127.0.0.3").line == "421 4.7.0 mx.example.test Error: too many connections from 127.0.0.3"
    assert _connect(mta, "127.0.0.3").code == 421
    assert _connect(mta, "127.0.0.4").code == 220  # per IP
    assert [_connect(mta, TRUSTED).code for _ in range(6)] == [220] * 6  # mynetworks is exempt
    wait_for_log(mta, "NOQUEUE: reject: CONNECT from unknown[127.0.0.3]")


# ---------------------------------------------------------------------------------------------
# Refusals at MAIL are logged as Postfix does


@pytest.mark.parametrize(
    ("mail", "want", "logged_from"),
    [
        ("MAIL FROM:<s@client.test> SIZE=5000", "552 5.3.4 Message size exceeds fixed limit", "s@client.test"),
        ("MAIL FROM:<j\u00f6rg@client.test>", "553 5.6.7 Must declare SMTPUTF8 to send unicode address", None),
        ("MAIL FROM:<s@client.test> BODY=9BIT", "501 5.5.4 Bad BODY keyword: 9BIT", "s@client.test"),
        ("MAIL FROM:<s@client.test> SIZE=x", "501 5.5.4 Bad message size syntax", "s@client.test"),
        ("MAIL FROM:<s@client.test> FOO=bar", "555 5.5.4 Unsupported option: FOO", "s@client.test"),
    ],
)
def test_refusals_at_mail_are_logged(make_mta, mail, want, logged_from):
    mta = make_mta({"advanced": {"max_message_size": 1000}})
    with session(mta, "127.0.0.7", "client.test") as c:
        assert c.cmd(mail).line == want
        c.expect("QUIT", 221)
    pattern = re.escape(f"NOQUEUE: reject: MAIL from unknown[127.0.0.7]: {want}; from=<") + (
        re.escape(logged_from) if logged_from else r"[^>]+"
    ) + re.escape("> proto=ESMTP helo=<client.test>")
    wait_for_log(mta, re.compile(pattern))


def test_bare_postmaster_needs_no_listing(make_mta, tmp_path):
    """RFC 5321 4.5.1: <postmaster> without a domain is accepted whatever the checks say; it is
    queued for postmaster@<first local domain>."""
    (tmp_path / "mailboxes").write_text("alice@example.test\n")
    m = make_mta({"domains": {"mailboxes": str(tmp_path / "mailboxes")}})
    with SmtpClient(m.port, "127.0.0.2").hello() as c:
        c.expect("MAIL FROM:<s@client.test>", 250)
        c.expect("RCPT TO:<postmaster@example.test>", 550, "5.1.1")  # qualified: judged as any address
        c.expect("RSET", 250)
        qid = queue_id_of(c.send_message("s@client.test", ["Postmaster"], b"Subject: x\r\n\r\nhi\r\n"))
    env = m.envelope(qid)
    assert [r.address for r in env.recipients] == ["Postmaster@example.test"]
