"""Relay control: an outsider may send to our local and relay domains only; no routing trick
gets a remote destination through; a trusted client (mynetworks) may relay anywhere."""

from __future__ import annotations

import pytest
from smtpclient import TRUSTED, UNTRUSTED, Mta, SmtpClient, queue_id_of, wait_for_log

from mtaserver.queue.store import parse_envelope


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    m = Mta(tmp_path_factory.mktemp("relay")).start()
    yield m
    m.stop()


def _rcpt(srv: Mta, source: str, rcpt: str):
    """One RCPT in a fresh transaction; then DATA must find no recipient unless it was accepted."""
    with SmtpClient(srv.port, source) as c:
        c.greeting()
        c.ehlo("client.test")
        c.expect("MAIL FROM:<s@client.test>", 250, "2.1.0")
        r = c.cmd(f"RCPT TO:{rcpt}")
        if r.code != 250:
            assert c.cmd("DATA").line == "503 5.5.1 Error: need RCPT command"
        c.expect("QUIT", 221)
    return r


RELAY_TRICKS = [
    # (RCPT argument, expected code, enhanced status)
    ("<user@remote.test>", 554, "5.7.1"),
    ("user@remote.test", 554, "5.7.1"),  # without brackets (Postfix tolerates it)
    ("<user%remote.test@example.test>", 554, "5.7.1"),  # percent hack
    ("<user%remote.test%example.test@example.test>", 554, "5.7.1"),
    ("<remote.test!user@example.test>", 554, "5.7.1"),  # bang path
    ("<@example.test:user@remote.test>", 554, "5.7.1"),  # source route to a remote mailbox
    ("<@remote.test:user@example.test>", 554, "5.7.1"),  # source route through a remote host
    ("<@example.test,@remote.test:user@example.test>", 554, "5.7.1"),
    ('<"user@remote.test"@example.test>', 554, "5.7.1"),  # quoted local part with '@'
    ('<"user%remote.test"@example.test>', 554, "5.7.1"),
    ('<"remote.test!user"@example.test>', 554, "5.7.1"),
    ('<"user\\@remote.test"@example.test>', 554, "5.7.1"),  # quoted-pair '@'
    ("<user>", 504, "5.5.2"),  # unqualified
    ("<user@remote>", 504, "5.5.2"),  # not fully qualified
    ("<user@[127.0.0.1]>", 554, "5.7.1"),  # IP literal, even our own address
    ("<user@[IPv6:::1]>", 554, "5.7.1"),
    ("<user@REMOTE.TEST.>", 554, "5.7.1"),  # case and trailing dot
    ("<user@Remote.Test>", 554, "5.7.1"),
    ("<user@example.test.remote.test>", 554, "5.7.1"),  # our domain as a prefix
    ("<user@sub.example.test>", 554, "5.7.1"),  # a subdomain is not ours unless listed as .example.test
    ("<user@xexample.test>", 554, "5.7.1"),  # suffix match is not a domain match
    ("<user@relay.test.remote.test>", 554, "5.7.1"),
    ("<user@example.test@remote.test>", 501, "5.1.3"),  # two '@': a syntax error, not our domain
    ("<user@remote.test%example.test>", 501, "5.1.3"),
    ("<user@example.test >", 501, "5.1.3"),
    ("<user@remote.test>,<a@example.test>", 501, "5.1.3"),
    ("<user@remote.test> <a@example.test>", 501, "5.1.3"),  # a second address: not a valid parameter
]


@pytest.mark.parametrize(("rcpt", "code", "status"), RELAY_TRICKS)
def test_untrusted_relay_attempt_is_refused(srv, rcpt, code, status):
    r = _rcpt(srv, UNTRUSTED, rcpt)
    assert (r.code, r.status) == (code, status), f"RCPT TO:{rcpt} -> {r}"
    if code == 554:
        assert r.text.endswith(">: Relay access denied"), r
    if code == 504:
        assert r.text.endswith(">: Recipient address rejected: need fully-qualified address"), r
    assert srv.queued() == [] and srv.queued("tmp") == []


def test_relay_denied_text_names_the_address(srv):
    r = _rcpt(srv, UNTRUSTED, "<user%remote.test@example.test>")
    assert r.line == "554 5.7.1 <user%remote.test@example.test>: Relay access denied"
    r = _rcpt(srv, UNTRUSTED, "<user>")
    assert r.line == "504 5.5.2 <user>: Recipient address rejected: need fully-qualified address"


@pytest.mark.parametrize(
    "rcpt",
    ["<user@example.test>", "<user@EXAMPLE.TEST>", "<user@example.test.>", "<user@relay.test>", "<User.Name+tag@Relay.Test>",
     '<"user name"@example.test>', "<postmaster>", "user@example.test"],
)  # fmt: skip
def test_untrusted_client_may_send_to_our_domains(srv, rcpt):
    r = _rcpt(srv, UNTRUSTED, rcpt)
    assert r.line == "250 2.1.5 Ok", f"RCPT TO:{rcpt} -> {r}"


def test_untrusted_non_fqdn_sender_is_refused_at_rcpt(srv):
    with SmtpClient(srv.port, UNTRUSTED) as c:
        c.greeting()
        c.ehlo()
        c.expect("MAIL FROM:<s@client>", 250, "2.1.0")  # delayed to RCPT, as Postfix does
        assert c.cmd("RCPT TO:<a@example.test>").line == "504 5.5.2 <s@client>: Sender address rejected: need fully-qualified address"


@pytest.mark.parametrize("rcpt", ["user@remote.test", "user%other.test@remote.test", "user@[192.0.2.1]"])
def test_trusted_client_may_relay(srv, rcpt):
    with SmtpClient(srv.port, TRUSTED) as c:
        c.greeting()
        c.ehlo()
        r = c.send_message("s@client.test", [rcpt], b"Subject: outbound\r\n\r\nx\r\n")
        qid = queue_id_of(r)
    env = parse_envelope((srv.queue / "incoming" / qid).read_bytes())
    assert [x.address for x in env.recipients] == [rcpt]
    assert env.client.trusted is True
    for q in srv.queued():  # leave the shared queue empty for the refusal checks
        (srv.queue / "incoming" / q).unlink()


def test_trusted_client_still_needs_a_qualified_recipient(srv):
    r = _rcpt(srv, TRUSTED, "<user>")
    assert r.line == "504 5.5.2 <user>: Recipient address rejected: need fully-qualified address"


def test_relay_refusals_are_logged(srv):
    _rcpt(srv, "127.0.0.3", "<user@remote.test>")
    wait_for_log(srv, "NOQUEUE: reject: RCPT from unknown[127.0.0.3]: 554 5.7.1 <user@remote.test>: Relay access denied; from=<s@client.test> to=<user@remote.test>")


def test_refused_recipients_do_not_reach_the_envelope(srv):
    with SmtpClient(srv.port, UNTRUSTED) as c:
        c.greeting()
        c.ehlo()
        c.expect("MAIL FROM:<s@client.test>", 250)
        for rcpt in ["<user%remote.test@example.test>", "<@example.test:user@remote.test>", "<ok@example.test>", "<user@REMOTE.TEST.>"]:
            c.cmd(f"RCPT TO:{rcpt}")
        c.expect("DATA", 354)
        c.send(b"Subject: t\r\n\r\nx\r\n.\r\n")
        qid = queue_id_of(c.reply())
    env = parse_envelope((srv.queue / "incoming" / qid).read_bytes())
    assert [x.address for x in env.recipients] == ["ok@example.test"]
    (srv.queue / "incoming" / qid).unlink()


def test_mynetworks_negation(make_mta):
    mta = make_mta({"outbound": {"mynetworks": ["!127.0.0.2/32", "127.0.0.0/8"]}})
    for source, code in (("127.0.0.2", 554), ("127.0.0.3", 250), ("127.0.0.1", 250)):
        with SmtpClient(mta.port, source) as c:
            c.greeting()
            c.ehlo()
            c.expect("MAIL FROM:<s@client.test>", 250)
            assert c.cmd("RCPT TO:<user@remote.test>").code == code, source
