import pytest

from mtaserver.address import parse_mailbox
from mtaserver.values import parse_network
from mtaserver.policy import check_recipient
from mtaserver.values import domain_matches, in_networks

LOCAL = ["example.test"]
RELAY = ["relay.test", ".sub.test"]


def decide(rcpt, *, trusted=False, sender="s@sender.test"):
    return check_recipient(
        parse_mailbox(rcpt), sender=parse_mailbox(sender), trusted=trusted,
        local_domains=LOCAL, relay_domains=RELAY, reject_non_fqdn_sender=True,
    )  # fmt: skip


@pytest.mark.parametrize("rcpt", ["u@example.test", "U@EXAMPLE.TEST", "u@example.test.", "u@relay.test", "u@a.sub.test"])
def test_our_domains_accepted_from_anyone(rcpt):
    assert decide(rcpt) is None


@pytest.mark.parametrize(
    "rcpt",
    [
        "u@remote.test",
        "u@example.test.remote.test",
        "u@notexample.test",
        "u@sub.test",  # ".sub.test" matches subdomains only
        "u@[127.0.0.1]",
        "user%remote.test@example.test",
        "remote.test!user@example.test",
        "@example.test:user@example.test",
        '"user@remote.test"@example.test',
        '"user%remote.test"@relay.test',
    ],
)
def test_relay_attempts_denied(rcpt):
    reply = decide(rcpt)
    assert (reply.code, reply.status) == (554, "5.7.1")
    assert reply.text.endswith("Relay access denied")


def test_trusted_clients_may_relay():
    assert decide("u@remote.test", trusted=True) is None
    assert decide("user%remote.test@example.test", trusted=True) is None


@pytest.mark.parametrize("rcpt", ["user", "u@localhost", "u@remote"])
def test_unqualified_recipient(rcpt):
    reply = decide(rcpt, trusted=True)
    assert (reply.code, reply.status) == (504, "5.5.2")
    assert "need fully-qualified address" in reply.text


def test_non_fqdn_sender_only_for_untrusted():
    assert decide("u@example.test", sender="s@host").code == 504
    assert decide("u@example.test", sender="s@host", trusted=True) is None
    assert decide("u@example.test", sender="") is None  # the null sender is fine


def test_mynetworks_first_match_wins():
    nets = [parse_network("!127.0.0.2"), parse_network("127.0.0.0/8"), parse_network("[::1]/128")]
    assert in_networks("127.0.0.1", nets)
    assert not in_networks("127.0.0.2", nets)
    assert in_networks("::1", nets)
    assert in_networks("::ffff:127.0.0.9", nets)
    assert not in_networks("192.0.2.1", nets)
    assert not in_networks("garbage", nets)


def test_domain_matches():
    assert domain_matches("A.Example.Test.", [".example.test"])
    assert not domain_matches("example.test", [".example.test"])
