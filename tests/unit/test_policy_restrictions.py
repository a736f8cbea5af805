"""The RCPT decision (policy/restrictions.py): every check's accept / reject / tempfail path with
Postfix's exact reply, the order of the checks, defer_if_permit, the exemptions, login mismatch."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mtaserver.address import parse_mailbox
from mtaserver.config import InboundConfig, ProtocolChecks
from mtaserver.model import Decision
from mtaserver.policy import parse_mailboxes
from mtaserver.policy.restrictions import (
    ClientName,
    ClientNameStatus,
    HostStatus,
    Need,
    RcptFacts,
    check_helo_syntax,
    decide,
    needed,
    owners_table,
    valid_hostname,
    valid_literal,
)

IP = "192.0.2.7"
VERIFIED = ClientName(ClientNameStatus.VERIFIED, "mx.sender.test")
MAILBOXES = parse_mailboxes("alice@example.test\nbob@example.test\nsales@example.test alice@example.test, bob@example.test\n")
OWNERS = owners_table({"alice": ["alice@example.test", "sales@example.test"], "bob": ["bob@example.test"]})

NONE_ON = dict(
    reject_unknown_client_hostname=False, reject_unknown_reverse_client_hostname=False, reject_invalid_helo_hostname=False,
    reject_non_fqdn_helo_hostname=False, reject_unknown_helo_hostname=False, reject_non_fqdn_sender=False,
    reject_unknown_sender_domain=False,
)  # fmt: skip
ALL_ON = {k: True for k in NONE_ON}


def cfg(code: int = 450, *, unlisted: bool = True, login_mismatch: bool = True, **checks: bool) -> InboundConfig:
    pc = ProtocolChecks(**{**NONE_ON, **checks}, unknown_reject_code=code)
    return InboundConfig(
        protocol_checks=pc, reject_unlisted_sender=unlisted, reject_unlisted_recipient=unlisted,
        reject_sender_login_mismatch=login_mismatch,
    )  # fmt: skip


def facts(rcpt: str = "alice@example.test", sender: str = "s@sender.test", **kw) -> RcptFacts:
    base = dict(
        client_ip=IP, helo="mx.sender.test", sender=parse_mailbox(sender), recipient=parse_mailbox(rcpt),
        local_domains=["example.test"], relay_domains=["relay.test"], mailboxes=MAILBOXES, owners=OWNERS,
        client_name=VERIFIED, helo_host=HostStatus.FOUND, sender_domain=HostStatus.FOUND,
    )  # fmt: skip
    base.update(kw)
    return RcptFacts(**base)


def line(f: RcptFacts, c: InboundConfig) -> str | None:
    v = decide(f, c)
    if v.decision is Decision.CONTINUE:
        return None
    assert v.decision is (Decision.TEMPFAIL if v.reply.code < 500 else Decision.REJECT)
    return v.reply.line()


# ---------------------------------------------------------------------------------------------
# Relay control and recipient syntax


def test_a_listed_recipient_from_a_clean_client_is_accepted_with_every_check_on():
    assert decide(facts(), cfg(550, **ALL_ON)).decision is Decision.CONTINUE


@pytest.mark.parametrize(
    "rcpt",
    ["u@remote.test", "u@example.test.remote.test", "u@[127.0.0.1]", "user%remote.test@example.test",
     "remote.test!user@example.test", "@example.test:user@example.test", '"user@remote.test"@example.test'],
)  # fmt: skip
def test_relay_attempts_are_denied(rcpt):
    assert line(facts(rcpt), cfg()) == f"554 5.7.1 <{parse_mailbox(rcpt)}>: Relay access denied"


def test_relay_domains_are_accepted_without_a_recipient_list():
    assert line(facts("anyone@relay.test"), cfg()) is None


@pytest.mark.parametrize("who", [dict(mynetworks=True), dict(login="alice")])
def test_trusted_clients_may_relay(who):
    sender = "alice@example.test" if "login" in who else "s@sender.test"
    assert line(facts("u@remote.test", sender, **who), cfg()) is None
    assert line(facts("user%remote.test@example.test", sender, **who), cfg()) is None


@pytest.mark.parametrize("rcpt", ["user", "u@remote", "u@host."])
@pytest.mark.parametrize("who", [dict(), dict(mynetworks=True)])
def test_non_fqdn_recipient_is_refused_for_everyone(rcpt, who):
    assert line(facts(rcpt, **who), cfg()) == f"504 5.5.2 <{rcpt}>: Recipient address rejected: need fully-qualified address"


def test_bare_postmaster_is_accepted_before_any_check():
    assert line(facts("postmaster", "s@host", helo="bad helo!"), cfg(550, **ALL_ON)) is None


def test_short_local_domain_counts_as_qualified():
    assert line(facts("u@localhost", local_domains=["localhost"], mailboxes=None), cfg()) is None


# ---------------------------------------------------------------------------------------------
# Unlisted recipient and sender


def test_unlisted_recipient_of_a_local_domain():
    want = "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown"
    assert line(facts("nobody@example.test"), cfg()) == want
    assert line(facts("nobody@example.test", mynetworks=True), cfg()) == want
    assert line(facts("nobody@example.test", "alice@example.test", login="alice"), cfg()) == want  # SPEC 1.2


def test_aliases_are_listed_and_matching_rules():
    assert line(facts("sales@example.test"), cfg()) is None
    assert line(facts("alice@EXAMPLE.Test."), cfg()) is None  # domain case-insensitive
    assert line(facts("Alice@example.test"), cfg()) is not None  # local part exact


def test_unlisted_checks_off_or_without_a_mailboxes_table():
    assert line(facts("nobody@example.test"), cfg(unlisted=False)) is None
    assert line(facts("nobody@example.test", "ghost@example.test", mailboxes=None), cfg()) is None


def test_unlisted_sender_of_a_local_domain():
    want = "550 5.1.0 <ghost@example.test>: Sender address rejected: User unknown"
    f = facts(sender="ghost@example.test", owners=None)
    assert line(f, cfg()) == want
    assert line(replace(f, mynetworks=True), cfg()) == want  # applies after permits too
    assert line(f, cfg(unlisted=False)) is None
    assert line(facts(sender="", owners=None), cfg()) is None  # the null sender


def test_unlisted_sender_comes_before_relay_control():
    f = facts("u@remote.test", "ghost@example.test", owners=None)
    assert line(f, cfg()).startswith("550 5.1.0 <ghost@example.test>")


# ---------------------------------------------------------------------------------------------
# Sender login mismatch


def test_authenticated_user_must_own_the_sender():
    assert line(facts(sender="alice@example.test", login="alice"), cfg()) is None
    assert line(facts(sender="sales@example.test", login="ALICE"), cfg()) is None  # login case-insensitive
    assert line(facts(sender="", login="alice"), cfg()) is None  # the null sender
    want = "553 5.7.1 <bob@example.test>: Sender address rejected: not owned by user alice"
    assert line(facts(sender="bob@example.test", login="alice"), cfg()) == want
    # an address nobody owns is not the user's either (FORBID_UNKNOWN_SENDER)
    want = "553 5.7.1 <x@elsewhere.test>: Sender address rejected: not owned by user alice"
    assert line(facts("u@remote.test", sender="x@elsewhere.test", login="alice"), cfg()) == want


def test_unauthenticated_client_may_not_use_an_owned_address():
    want = "553 5.7.1 <alice@example.test>: Sender address rejected: not logged in"
    assert line(facts(sender="alice@example.test"), cfg()) == want
    want = "553 5.7.1 <Alice@Example.Test>: Sender address rejected: not logged in"
    assert line(facts(sender="Alice@Example.Test"), cfg()) == want  # the owner lookup folds case
    assert line(facts(sender="stranger@sender.test"), cfg()) is None
    assert line(facts(sender=""), cfg()) is None


def test_login_mismatch_exemptions():
    assert line(facts(sender="alice@example.test", mynetworks=True), cfg()) is None
    assert line(facts(sender="bob@example.test", login="alice", mynetworks=True), cfg()) is None
    assert line(facts(sender="alice@example.test"), cfg(login_mismatch=False)) is None
    assert line(facts(sender="alice@example.test", owners=None), cfg()) is None


def test_owners_table_domain_wildcard():
    owners = owners_table({"admin": ["@example.test"], "alice": ["alice@example.test"]})
    assert owners("carol@example.test") == {"admin"}
    assert owners("alice@EXAMPLE.test") == {"alice"}
    assert owners("x@other.test") == frozenset()


def test_login_mismatch_comes_before_relay_control():
    f = facts("u@remote.test", "alice@example.test")
    assert line(f, cfg()) == "553 5.7.1 <alice@example.test>: Sender address rejected: not logged in"


# ---------------------------------------------------------------------------------------------
# HELO syntax


@pytest.mark.parametrize(
    "helo", ["mx.sender.test", "mx.sender.test.", "host_1.example", "mail", "1.2.3.4", "[192.0.2.1]", "[IPv6:2001:db8::1]"]
)
def test_valid_helo_names(helo):
    assert line(facts(helo=helo), cfg(reject_invalid_helo_hostname=True)) is None


@pytest.mark.parametrize(
    "helo", ["bad helo", "-bad.example", "bad-.example", "a..b", "x" * 64 + ".test", "héllo.test", "1.2.3", "foo!"]
)
def test_invalid_helo_names(helo):
    want = f"501 5.5.2 <{helo}>: Helo command rejected: Invalid name"
    assert line(facts(helo=helo), cfg(reject_invalid_helo_hostname=True)) == want


@pytest.mark.parametrize("helo", ["[192.0.2.300]", "[foo]", "[]", "[2001:db8::1]", "[IPv6:1.2.3.4]"])
def test_invalid_address_literals(helo):
    want = f"501 5.5.2 <{helo}>: Helo command rejected: invalid ip address"
    assert line(facts(helo=helo), cfg(reject_invalid_helo_hostname=True)) == want
    assert line(facts(helo=helo), cfg(reject_non_fqdn_helo_hostname=True)) == want
    assert line(facts(helo=helo, helo_host=None), cfg(reject_unknown_helo_hostname=True)) == want


@pytest.mark.parametrize(
    ("helo", "ok"), [("mail", False), ("mail.", False), ("1.2.3.4", False), ("mx.sender.test", True), ("[192.0.2.1]", True)]
)
def test_non_fqdn_helo(helo, ok):
    got = line(facts(helo=helo), cfg(reject_non_fqdn_helo_hostname=True))
    assert got == (None if ok else f"504 5.5.2 <{helo}>: Helo command rejected: need fully-qualified hostname")


def test_check_helo_syntax_at_helo_time():
    checks = ProtocolChecks(reject_invalid_helo_hostname=True, reject_non_fqdn_helo_hostname=True)
    assert check_helo_syntax("mx.sender.test", checks) is None
    assert check_helo_syntax(None, checks) is None
    assert check_helo_syntax("bad helo", checks).line() == "501 5.5.2 <bad helo>: Helo command rejected: Invalid name"
    assert check_helo_syntax("mail", checks).line() == "504 5.5.2 <mail>: Helo command rejected: need fully-qualified hostname"
    assert check_helo_syntax("bad helo", ProtocolChecks(**NONE_ON)) is None


def test_hostname_syntax_helpers():
    assert valid_hostname("a-b_c.example") and not valid_hostname("123.456") and not valid_hostname("example.")
    assert not valid_hostname("a" * 250 + ".test")
    assert valid_literal("[0.0.0.0]") and not valid_literal("[0.1.2.3]") and valid_literal("[IPv6:::1]")


def test_long_helo_reply_is_truncated_to_510():
    helo = "a" * 600
    v = decide(facts(helo=helo), cfg(reject_invalid_helo_hostname=True))
    assert len(v.reply.line()) == 510 and v.reply.line().startswith("501 5.5.2 <aaa")


# ---------------------------------------------------------------------------------------------
# Sender syntax and domain


def test_non_fqdn_sender():
    c = cfg(reject_non_fqdn_sender=True)
    assert line(facts(sender="s@host"), c) == "504 5.5.2 <s@host>: Sender address rejected: need fully-qualified address"
    assert line(facts(sender="s"), c) == "504 5.5.2 <s>: Sender address rejected: need fully-qualified address"
    assert line(facts(sender="s@[192.0.2.1]"), c) is None  # literals skipped
    assert line(facts(sender=""), c) is None
    assert line(facts(sender="s@host", mynetworks=True), c) is None


@pytest.mark.parametrize(
    ("status", "code", "want"),
    [
        (HostStatus.FOUND, 450, None),
        (HostStatus.NOT_FOUND, 450, "450 4.1.8 <s@sender.test>: Sender address rejected: Domain not found"),
        (HostStatus.NOT_FOUND, 550, "550 5.1.8 <s@sender.test>: Sender address rejected: Domain not found"),
        (HostStatus.MALFORMED, 550, "550 5.1.8 <s@sender.test>: Sender address rejected: Malformed DNS server reply"),
        (HostStatus.NULL_MX, 450,
         "550 5.7.27 <s@sender.test>: Sender address rejected: Domain sender.test does not accept mail (nullMX)"),
        (HostStatus.TEMPFAIL, 550, "450 4.1.8 <s@sender.test>: Sender address rejected: Domain not found"),
        (None, 550, "450 4.1.8 <s@sender.test>: Sender address rejected: Domain not found"),  # never looked up: temporary
    ],
)
def test_unknown_sender_domain(status, code, want):
    assert line(facts(sender_domain=status), cfg(code, reject_unknown_sender_domain=True)) == want


def test_unknown_sender_domain_skips_our_domains_literals_and_null():
    c = cfg(550, reject_unknown_sender_domain=True)
    assert line(facts(sender="alice@example.test", login="alice", sender_domain=HostStatus.NOT_FOUND), c) is None
    assert line(facts(sender="ghost@example.test", owners=None, mailboxes=None, sender_domain=HostStatus.NOT_FOUND), c) is None
    assert line(facts(sender="s@[192.0.2.1]", sender_domain=HostStatus.NOT_FOUND), c) is None
    assert line(facts(sender="", sender_domain=HostStatus.NOT_FOUND), c) is None
    # relay domains are not a final destination: still checked
    assert line(facts(sender="s@relay.test", sender_domain=HostStatus.NOT_FOUND), c).startswith("550 5.1.8 <s@relay.test>")


# ---------------------------------------------------------------------------------------------
# Client name


@pytest.mark.parametrize(
    ("status", "code", "want"),
    [
        (ClientNameStatus.VERIFIED, 550, None),
        (ClientNameStatus.MISMATCH, 450, "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.7]"),
        (ClientNameStatus.MISMATCH, 550, "550 5.7.25 Client host rejected: cannot find your hostname, [192.0.2.7]"),
        (ClientNameStatus.NO_PTR, 550, "550 5.7.25 Client host rejected: cannot find your hostname, [192.0.2.7]"),
        (ClientNameStatus.PTR_TEMPFAIL, 550, "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.7]"),
        (ClientNameStatus.FORWARD_TEMPFAIL, 550, "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.7]"),
    ],
)
def test_unknown_client_hostname(status, code, want):
    f = facts(client_name=ClientName(status, "mx.sender.test"))
    assert line(f, cfg(code, reject_unknown_client_hostname=True)) == want


@pytest.mark.parametrize(
    ("status", "code", "want"),
    [
        (ClientNameStatus.VERIFIED, 550, None),
        (ClientNameStatus.MISMATCH, 550, None),  # a PTR exists: that is all this check asks
        (ClientNameStatus.FORWARD_TEMPFAIL, 550, None),
        (ClientNameStatus.NO_PTR, 450, "450 4.7.1 Client host rejected: cannot find your reverse hostname, [192.0.2.7]"),
        (ClientNameStatus.NO_PTR, 550, "550 5.7.1 Client host rejected: cannot find your reverse hostname, [192.0.2.7]"),
        (ClientNameStatus.PTR_TEMPFAIL, 550, "450 4.7.1 Client host rejected: cannot find your reverse hostname, [192.0.2.7]"),
    ],
)
def test_unknown_reverse_client_hostname(status, code, want):
    f = facts(client_name=ClientName(status, None if status is ClientNameStatus.NO_PTR else "x.sender.test"))
    assert line(f, cfg(code, reject_unknown_reverse_client_hostname=True)) == want


def test_client_name_properties():
    assert VERIFIED.name == "mx.sender.test" and VERIFIED.reverse_name == "mx.sender.test"
    m = ClientName(ClientNameStatus.MISMATCH, "forged.test")
    assert m.name == "unknown" and m.reverse_name == "forged.test"
    assert ClientName(ClientNameStatus.NO_PTR).reverse_name == "unknown"


# ---------------------------------------------------------------------------------------------
# HELO host


@pytest.mark.parametrize(
    ("status", "code", "want"),
    [
        (HostStatus.FOUND, 550, None),
        (HostStatus.NULL_MX, 550, None),  # "Allow MTA names to have nullMX records"
        (HostStatus.NOT_FOUND, 450, "450 4.7.1 <mx.sender.test>: Helo command rejected: Host not found"),
        (HostStatus.NOT_FOUND, 550, "550 5.7.1 <mx.sender.test>: Helo command rejected: Host not found"),
        (HostStatus.MALFORMED, 550, "550 5.7.1 <mx.sender.test>: Helo command rejected: Malformed DNS server reply"),
        (HostStatus.TEMPFAIL, 550, "450 4.7.1 <mx.sender.test>: Helo command rejected: Host not found"),
    ],
)
def test_unknown_helo_hostname(status, code, want):
    assert line(facts(helo_host=status), cfg(code, reject_unknown_helo_hostname=True)) == want


def test_unknown_helo_hostname_without_a_lookup():
    c = cfg(550, reject_unknown_helo_hostname=True)
    # a name that is no host name is "not found" without asking the DNS (Postfix dns_lookup)
    assert line(facts(helo="1.2.3.4", helo_host=None), c) == "550 5.7.1 <1.2.3.4>: Helo command rejected: Host not found"
    assert needed(facts(helo="1.2.3.4", helo_host=None), c) == frozenset()
    assert line(facts(helo="[192.0.2.1]", helo_host=None), c) is None  # literals: only their syntax
    assert line(facts(helo=None, helo_host=None), c) is None


# ---------------------------------------------------------------------------------------------
# defer_if_permit


def test_defer_if_permit_is_sent_only_when_nothing_rejects():
    c = cfg(550, reject_unknown_helo_hostname=True, reject_unknown_sender_domain=True)
    f = facts(helo_host=HostStatus.TEMPFAIL)
    v = decide(f, c)
    assert v.decision is Decision.TEMPFAIL
    assert v.reply.line() == "450 4.7.1 <mx.sender.test>: Helo command rejected: Host not found"
    assert "defer_if_permit" in v.reason
    # a later explicit reject wins over the pending deferral
    got = line(replace(f, sender_domain=HostStatus.NOT_FOUND), c)
    assert got == "550 5.1.8 <s@sender.test>: Sender address rejected: Domain not found"
    got = line(replace(f, sender_domain=HostStatus.NULL_MX), c)
    assert got.startswith("550 5.7.27 ")


def test_the_first_deferral_is_kept():
    c = cfg(550, reject_unknown_helo_hostname=True, reject_unknown_sender_domain=True)
    got = line(facts(helo_host=HostStatus.TEMPFAIL, sender_domain=HostStatus.TEMPFAIL), c)
    assert got == "450 4.7.1 <mx.sender.test>: Helo command rejected: Host not found"
    got = line(facts(sender_domain=HostStatus.TEMPFAIL), c)
    assert got == "450 4.1.8 <s@sender.test>: Sender address rejected: Domain not found"


def test_client_name_tempfail_is_a_direct_450_not_a_deferral():
    c = cfg(550, reject_unknown_client_hostname=True, reject_unknown_sender_domain=True)
    got = line(facts(client_name=ClientName(ClientNameStatus.PTR_TEMPFAIL), sender_domain=HostStatus.NOT_FOUND), c)
    assert got == "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.7]"


# ---------------------------------------------------------------------------------------------
# Order and exemptions


def test_relay_denied_before_protocol_checks():
    f = facts("u@remote.test", "s@host", helo="bad helo", client_name=ClientName(ClientNameStatus.NO_PTR))
    assert line(f, cfg(550, **ALL_ON)) == "554 5.7.1 <u@remote.test>: Relay access denied"


def test_unlisted_recipient_before_protocol_checks():
    f = facts("nobody@example.test", "s@host", helo="bad helo")
    assert line(f, cfg(550, **ALL_ON)).startswith("550 5.1.1 <nobody@example.test>")


def test_protocol_checks_in_template_order():
    c = cfg(550, **ALL_ON)
    f = facts(helo="bad helo", sender="s@host", client_name=ClientName(ClientNameStatus.NO_PTR),
              helo_host=HostStatus.NOT_FOUND, sender_domain=HostStatus.NOT_FOUND)  # fmt: skip
    assert line(f, c).startswith("501 5.5.2 <bad helo>: Helo command rejected: Invalid name")
    f = replace(f, helo="mail")
    assert line(f, c).startswith("504 5.5.2 <mail>: Helo command rejected: need fully-qualified")
    f = replace(f, helo="mx.sender.test")
    assert line(f, c).startswith("504 5.5.2 <s@host>: Sender address rejected: need fully-qualified")
    f = replace(f, sender=parse_mailbox("s@sender.test"))
    assert line(f, c).startswith("550 5.7.25 Client host rejected: cannot find your hostname")
    f = replace(f, client_name=ClientName(ClientNameStatus.MISMATCH, "x.test"))
    assert line(f, c).startswith("550 5.7.25 Client host rejected: cannot find your hostname")
    f = replace(f, client_name=VERIFIED)
    assert line(f, c).startswith("550 5.7.1 <mx.sender.test>: Helo command rejected: Host not found")
    f = replace(f, helo_host=HostStatus.FOUND)
    assert line(f, c).startswith("550 5.1.8 <s@sender.test>: Sender address rejected: Domain not found")
    f = replace(f, sender_domain=HostStatus.FOUND)
    assert line(f, c) is None


@pytest.mark.parametrize("who", [dict(mynetworks=True), dict(login="alice")])
def test_trusted_clients_skip_every_protocol_check(who):
    f = facts(sender="alice@example.test", helo="bad helo", client_name=None, helo_host=None, sender_domain=None, **who)
    assert line(f, cfg(550, **ALL_ON)) is None
    assert needed(f, cfg(550, **ALL_ON)) == frozenset()


def test_checks_off_do_nothing():
    f = facts(sender="s@host", helo="bad helo", client_name=ClientName(ClientNameStatus.NO_PTR),
              helo_host=HostStatus.NOT_FOUND, sender_domain=HostStatus.NOT_FOUND)  # fmt: skip
    assert line(f, cfg(550)) is None


# ---------------------------------------------------------------------------------------------
# needed(): which DNS facts the shell must look up


def test_needed_asks_only_for_missing_facts_of_enabled_checks():
    unknown = facts(client_name=None, helo_host=None, sender_domain=None)
    assert needed(unknown, cfg(**ALL_ON)) == {Need.CLIENT_NAME, Need.HELO_HOST, Need.SENDER_DOMAIN}
    assert needed(unknown, cfg(reject_unknown_reverse_client_hostname=True)) == {Need.CLIENT_NAME}
    assert needed(unknown, cfg(reject_unknown_helo_hostname=True)) == {Need.HELO_HOST}
    assert needed(unknown, cfg(reject_unknown_sender_domain=True)) == {Need.SENDER_DOMAIN}
    assert needed(unknown, cfg()) == frozenset()
    assert needed(facts(), cfg(**ALL_ON)) == frozenset()  # all known already


def test_needed_is_empty_when_an_earlier_check_rejects():
    c = cfg(**ALL_ON)
    assert needed(facts("u@remote.test", client_name=None, helo_host=None, sender_domain=None), c) == frozenset()
    assert needed(facts("nobody@example.test", client_name=None, sender_domain=None), c) == frozenset()
    assert needed(facts(helo="bad helo", client_name=None, sender_domain=None), c) == frozenset()
    # a known client-name rejection makes the later lookups useless
    f = facts(client_name=ClientName(ClientNameStatus.NO_PTR), helo_host=None, sender_domain=None)
    assert needed(f, c) == frozenset()


def test_needed_skips_senders_that_are_not_looked_up():
    c = cfg(reject_unknown_sender_domain=True)
    for sender in ["", "s@[192.0.2.1]", "ghost@example.test"]:
        assert needed(facts(sender=sender, owners=None, mailboxes=None, sender_domain=None), c) == frozenset()


def test_a_missing_fact_at_decide_counts_as_temporary():
    c = cfg(550, reject_unknown_client_hostname=True)
    assert line(facts(client_name=None), c) == "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.7]"


def test_a_reply_quoting_the_helo_has_no_control_or_bidi_character():
    from mtaserver.config import ProtocolChecks
    from mtaserver.policy.restrictions import check_helo_syntax

    reply = check_helo_syntax("evil\x1b[31m\x07\u202e_x", ProtocolChecks(reject_invalid_helo_hostname=True))
    assert reply is not None and reply.code == 501
    assert reply.text == "<evil?[31m??_x>: Helo command rejected: Invalid name", reply
