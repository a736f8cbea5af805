"""filters/dkim.py, the pure parts: From parsing, the sender policy table, Authentication-Results,
strip_forged, key files and h=; and verify's judgement of signatures with the key records handed
in by an in-memory resolver (the DNS itself is tests/integration/test_dkim.py's business)."""

from __future__ import annotations

import base64
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mtaserver.dns import NotFound, Record, TempFail
from mtaserver.filters import dkim as D
from mtaserver.filters.dkim import DkimResult, PolicyAction, Result, Signature
from mtaserver.model import Decision

AUTHSERV = "mx.example.test"


def sig(domain: str, result: Result, selector: str = "sel", b: str = "abcdefghijkl", reason: str = "") -> Signature:
    return Signature(domain=domain, selector=selector, result=result, b=b, algorithm="rsa-sha256", reason=reason)


# ---------------------------------------------------------------------------------------------
# From


@pytest.mark.parametrize(
    ("head", "want"),
    [
        (b"From: Alice <alice@Example.ORG>\r\n", "example.org"),
        (b"From: alice@example.org\r\n\r\nbody From: x@y.test\r\n", "example.org"),
        (b"Subject: x\r\nFrom: Alice\r\n <alice@example.org>\r\nTo: b@c.test\r\n", "example.org"),  # folded
        (b"from: \"a@ours.test\" <bob@evil.test>\r\n", "evil.test"),  # quoted display name
        (b"From: bob@evil.test (alice@ours.test)\r\n", "evil.test"),  # comment
        (b"From: grp: a@example.org;\r\n", "example.org"),  # a group of one
        (b"From: =?utf-8?q?Al=C3=AFce?= <a@example.org>\r\n", "example.org"),
        (b"From: a@example.org.\r\n", None),  # a trailing dot is no dot-atom
        ("From: a@bücher.example\r\n".encode(), "xn--bcher-kva.example"),
        (b"From: a@example.org\n", "example.org"),  # bare LF
        (b"To: b@c.test\r\n", None),  # no From
        (b"From: a@example.org\r\nFrom: b@example.org\r\n", None),  # two From fields
        (b"From: a@example.org, b@example.org\r\n", None),  # two mailboxes
        (b"From: alice@ours.test <bob@evil.test>\r\n", None),  # ambiguous: a parse defect
        (b"From: Alice <alice@ours.test\r\n", None),  # unterminated
        (b"From: a@ours.test@evil.test\r\n", None),
        (b"From: Undisclosed:;\r\n", None),
        (b"From: a@[192.0.2.1]\r\n", None),  # an address literal is no domain to sign for
        (b"From: alice\r\n", None),
        (b"From: a@" + b"x" * 5000 + b".test\r\n", None),  # longer than MAX_FROM
    ],
)
def test_from_domain(head: bytes, want: str | None) -> None:
    assert D.from_domain(head) == want


def test_from_claims() -> None:
    assert D.from_claims(b"From: a@Ours.test, b@evil.test\r\nTo: c@to.test\r\n") == ("ours.test", "evil.test")
    assert D.from_claims(b"From: Alice <alice@ours.test\r\nFrom: x@ours.test\r\n") == ("ours.test",)
    assert D.from_claims(b"To: c@to.test\r\n") == ()


# ---------------------------------------------------------------------------------------------
# The sender policy: every mode x what the message carries

SIGNING = ["example.org"]
TEMP = Result.TEMPERROR
NONE, PASS_, ACCEPT, TAG, REJECT, TEMPFAIL = (
    PolicyAction.NONE, PolicyAction.PASS, PolicyAction.ACCEPT, PolicyAction.TAG, PolicyAction.REJECT, PolicyAction.TEMPFAIL,
)  # fmt: skip

CASES = {
    # name: (From domain, signatures, reject, tag, accept)
    "unsigned": ("example.org", [], REJECT, TAG, ACCEPT),
    "signed": ("example.org", [sig("example.org", Result.PASS)], PASS_, PASS_, PASS_),
    "signed, From a subdomain, d= its parent": ("mail.example.org", [sig("example.org", Result.PASS)], PASS_, PASS_, PASS_),
    "signed by the From subdomain itself": ("mail.example.org", [sig("mail.example.org", Result.PASS)], PASS_, PASS_, PASS_),
    "unsigned, From a subdomain": ("mail.example.org", [], REJECT, TAG, ACCEPT),
    "d= a subdomain of From (not a parent)": ("example.org", [sig("mail.example.org", Result.PASS)], REJECT, TAG, ACCEPT),
    "d= a bare TLD": ("example.org", [sig("org", Result.PASS)], REJECT, TAG, ACCEPT),
    "d= a look-alike suffix": ("example.org", [sig("badexample.org", Result.PASS)], REJECT, TAG, ACCEPT),
    "signed by a foreign domain only": ("example.org", [sig("mailer.test", Result.PASS)], REJECT, TAG, ACCEPT),
    "failing signature": ("example.org", [sig("example.org", Result.FAIL)], REJECT, TAG, ACCEPT),
    "permerror (no key)": ("example.org", [sig("example.org", Result.PERMERROR)], REJECT, TAG, ACCEPT),
    "neutral (unreadable)": ("example.org", [sig("example.org", Result.NEUTRAL)], REJECT, TAG, ACCEPT),
    "temperror": ("example.org", [sig("example.org", Result.TEMPERROR)], TEMPFAIL, TAG, ACCEPT),
    "temperror, foreign pass": ("example.org", [sig("x.test", Result.PASS), sig("example.org", TEMP)], TEMPFAIL, TAG, ACCEPT),
    "fail and pass": ("example.org", [sig("example.org", Result.FAIL), sig("example.org", Result.PASS)], PASS_, PASS_, PASS_),
    "foreign From, unsigned": ("other.test", [], NONE, NONE, NONE),
    "foreign From, failing": ("other.test", [sig("other.test", Result.FAIL)], NONE, NONE, NONE),
    "From the parent of a signing domain": ("org", [], NONE, NONE, NONE),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mode", ["reject", "tag", "accept"])
def test_policy_table(name: str, mode: str) -> None:
    from_dom, sigs, *want = CASES[name]
    out = D.policy(DkimResult(tuple(sigs)), from_dom, SIGNING, mode)
    assert out.action is want[["reject", "tag", "accept"].index(mode)]


def test_policy_replies_and_verdicts() -> None:
    unsigned = DkimResult()
    out = D.policy(unsigned, "mail.example.org", SIGNING, "reject")
    assert out.reply is not None and (out.reply.code, out.reply.status) == (550, "5.7.1")
    want = "Message rejected: mail.example.org signs its mail with DKIM; this message has no valid signature from it"
    assert out.reply.text == want
    v = out.verdict()
    assert v.decision is Decision.REJECT and v.reply == out.reply and "no signature from it" in v.reason

    out = D.policy(DkimResult((sig("example.org", Result.TEMPERROR),)), "example.org", SIGNING, "reject")
    assert out.reply is not None and (out.reply.code, out.reply.status) == (451, "4.7.5")
    assert out.verdict().decision is Decision.TEMPFAIL

    out = D.policy(unsigned, "example.org", SIGNING, "tag")
    assert out.header == ("X-DKIM-Policy", "unsigned from signing domain")
    v = out.verdict()
    assert v.decision is Decision.CONTINUE and v.headers == (("X-DKIM-Policy", "unsigned from signing domain"),)

    v = D.policy(unsigned, "example.org", SIGNING, "accept").verdict()
    assert v.decision is Decision.CONTINUE and v.headers == () and v.reason
    assert D.policy(unsigned, "other.test", SIGNING, "reject").verdict().decision is Decision.CONTINUE
    with pytest.raises(ValueError):
        D.policy(unsigned, "example.org", SIGNING, "bounce")


def test_policy_from_not_one_address() -> None:
    """A From that does not parse is never signed: the policy applies when it claims our domain."""
    signed = DkimResult((sig("example.org", Result.PASS),))
    head = b"From: a@example.org, b@evil.test\r\n"
    assert D.from_domain(head) is None
    out = D.policy(signed, D.from_domain(head), SIGNING, "reject", claimed=D.from_claims(head))
    assert out.action is REJECT and out.domain == "example.org" and "not exactly one address" in out.reason
    assert D.policy(signed, None, SIGNING, "reject", claimed=("evil.test",)).action is NONE
    assert D.policy(signed, None, SIGNING, "reject").action is NONE


# ---------------------------------------------------------------------------------------------
# Authentication-Results


def test_authentication_results_none() -> None:
    assert D.authentication_results(AUTHSERV, DkimResult(), "example.org") == "mx.example.test; dkim=none"


def test_authentication_results_one() -> None:
    r = DkimResult((sig("example.org", Result.PASS, b="abcdefghXYZ"),))
    want = "mx.example.test; dkim=pass header.d=example.org header.s=sel header.a=rsa-sha256 header.b=abcdefgh"
    assert D.authentication_results(AUTHSERV, r, "example.org") == want


def test_authentication_results_several_folded_aligned_first() -> None:
    r = DkimResult(
        (
            sig("mailer.test", Result.FAIL, b="ab/defghijk", reason="body hash did not verify"),
            sig("example.org", Result.PASS, b="abcdefgh1"),
            sig("example.org", Result.PASS, selector="ed", b="abcdefgh2"),
        )
    )
    value = D.authentication_results(AUTHSERV, r, "example.org")
    lines = value.split("\r\n\t")
    assert lines[0] == "mx.example.test;"
    assert lines[1] == "dkim=pass header.d=example.org header.s=sel header.a=rsa-sha256 header.b=abcdefgh1;"  # 9: told apart
    assert lines[2] == "dkim=pass header.d=example.org header.s=ed header.a=rsa-sha256 header.b=abcdefgh2;"
    assert lines[3] == (
        'dkim=fail reason="body hash did not verify" header.d=mailer.test header.s=sel header.a=rsa-sha256 header.b="ab/defgh"'
    )


def test_authentication_results_never_copies_odd_values() -> None:
    odd = Signature(domain="evil;\r\nX: y", selector="a b", result=Result.NEUTRAL, b="#!", reason="signature syntax error")
    r = DkimResult((odd,))
    assert D.authentication_results(AUTHSERV, r) == 'mx.example.test; dkim=neutral reason="signature syntax error"'


# ---------------------------------------------------------------------------------------------
# strip_forged

HEAD = (
    b"Received: from a by b\r\n"
    b"Authentication-Results: mx.example.test; dkim=pass\r\n"
    b"\theader.d=example.org\r\n"
    b"Subject: hi\r\n"
    b"authentication-results:   MX.Example.Test 1; spf=pass\r\n"
    b"Authentication-Results: (forged) mx.example.test;\r\n dkim=pass\r\n"
    b"Authentication-Results: other.example; dkim=pass\r\n"
    b'Authentication-Results: "mx.example.test"; dkim=pass\r\n'
    b"Authentication-Results: mx.example.test.evil; dkim=pass\r\n"
    b"ARC-Authentication-Results: i=1; mx.example.test; dkim=pass\r\n"
    b"To: b@c.test\r\n"
    b"\r\n"
    b"Authentication-Results: mx.example.test; in the body\r\n"
)


def test_strip_forged() -> None:
    want = (
        b"Received: from a by b\r\n"
        b"Subject: hi\r\n"
        b"Authentication-Results: other.example; dkim=pass\r\n"
        b"Authentication-Results: mx.example.test.evil; dkim=pass\r\n"
        b"ARC-Authentication-Results: i=1; mx.example.test; dkim=pass\r\n"
        b"To: b@c.test\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.test; in the body\r\n"
    )
    assert D.strip_forged(HEAD, "mx.example.test") == want
    assert D.strip_forged(HEAD.replace(b"\r\n", b"\n"), "MX.example.test") == want.replace(b"\r\n", b"\n")


def test_strip_forged_keeps_a_head_without_ours() -> None:
    head = b"From: a@b.test\r\nAuthentication-Results: other.example; none\r\n"
    assert D.strip_forged(head, AUTHSERV) == head
    assert D.strip_forged(b"", AUTHSERV) == b""


# ---------------------------------------------------------------------------------------------
# Keys, h=, the TXT record


def test_keys_round_trip_and_txt_record() -> None:
    k = D.parse_key(D.new_key("ed25519"))
    assert k.kind == "ed25519" and k.algorithm == b"ed25519-sha256" and len(base64.b64decode(k.public)) == 32
    assert D.txt_record("sel", "example.org", k) == f'sel._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p={k.public}"'

    r = D.parse_key(D.new_key("rsa"))
    assert r.kind == "rsa" and r.bits == 2048 and r.private.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    line = D.txt_record("sel", "example.org", r)
    strings = re.findall(r'"([^"]*)"', line)
    assert len(strings) == 2 and len(strings[0]) == 255 and "".join(strings) == f"v=DKIM1; k=rsa; p={r.public}"


def test_parse_key_forms_and_refusals() -> None:
    pk = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pkcs8 = pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert D.parse_key(pkcs8).bits == 1024  # openssl genpkey's form is read too
    with pytest.raises(ValueError, match="not a PEM private key"):
        D.parse_key(b"junk")
    locked = serialization.BestAvailableEncryption(b"pw")
    encrypted = pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, locked)
    with pytest.raises(ValueError, match="encrypted"):
        D.parse_key(encrypted)
    ecdsa = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="RSA or ed25519"):
        D.parse_key(ecdsa)


def test_signed_headers() -> None:
    names = [b"Received", b"From", b"To", b"To", b"Subject", b"X-Mailer", b"DKIM-Signature", b"List-Id", b"Content-Type"]
    assert D.signed_headers(names) == [b"from", b"to", b"to", b"subject", b"list-id", b"content-type", b"from"]
    assert D.signed_headers([]) == [b"from"]


# ---------------------------------------------------------------------------------------------
# Signing and verify's judgement, the key records handed in


class Keys:
    """A resolver that answers TXT queries from a dict; a name mapped to None is SERVFAIL."""

    def __init__(self, records: dict[str, str | None]) -> None:
        self.records = records
        self.asked: list[str] = []

    async def query(self, name: str, qtype: str) -> list[Record]:
        self.asked.append(name)
        if name not in self.records:
            raise NotFound(name, nxdomain=True)
        text = self.records[name]
        if text is None:
            raise TempFail(name)
        return [Record("TXT", 60, "some other text"), Record("TXT", 60, text)]


@pytest.fixture(scope="module")
def signer() -> D.Signer:
    k = D.parse_key(D.new_key("ed25519"))
    return D.Signer([D.SigningKey(domain="example.org", selector="ed", key=k, path=D.Path("-"))])


def record(signer: D.Signer) -> dict[str, str | None]:
    k = signer.keys[0]
    return {f"ed._domainkey.{k.domain}": f"v=DKIM1; k=ed25519; p={k.key.public}"}


MSG = b"From: Alice <alice@mail.example.org>\r\nTo: b@other.test\r\nTo: c@other.test\r\nSubject: hi\r\n\r\nHello\r\n"


async def test_sign_and_judge(signer: D.Signer) -> None:
    assert signer.sign(MSG, "other.test") is None and signer.sign(MSG, None) is None
    header = signer.sign(MSG, D.from_domain(MSG))
    assert header is not None and header.startswith(b"DKIM-Signature: ") and header.endswith(b"\r\n")
    assert re.search(rb"h=from : to : to : subject : from;", header.replace(b"\r\n ", b" "))
    signed = header + MSG
    keys = Keys(record(signer))
    r = await D.verify(signed, resolver=keys)
    assert [(s.domain, s.selector, s.result) for s in r.signatures] == [("example.org", "ed", Result.PASS)]
    assert (await D.verify(signed.replace(b"Hello", b"Hellp"), resolver=keys)).signatures[0].reason == "body hash did not verify"
    bad = (await D.verify(signed.replace(b"Subject: hi", b"Subject: ho"), resolver=keys)).signatures[0]
    assert (bad.result, bad.reason) == (Result.FAIL, "signature did not verify")
    added_from = signed.replace(b"\r\n\r\n", b"\r\nFrom: mallory@evil.test\r\n\r\n", 1)  # From over-signed
    assert (await D.verify(added_from, resolver=keys)).signatures[0].result is Result.FAIL


async def test_judge_key_records(signer: D.Signer) -> None:
    signed = signer.sign(MSG, "example.org") + MSG  # type: ignore[operator]
    name = next(iter(record(signer)))
    for records, want, reason in [
        ({}, Result.PERMERROR, "no key"),
        ({name: None}, Result.TEMPERROR, "key lookup failed"),
        ({name: "v=DKIM1; k=ed25519; p=!!!"}, Result.PERMERROR, "invalid key record"),
        ({name: "v=DKIM1; k=dsa; p=AAAA"}, Result.PERMERROR, "invalid key record"),
    ]:
        s = (await D.verify(signed, resolver=Keys(records))).signatures[0]
        assert (s.result, s.reason) == (want, reason)


async def test_judge_unreadable_signatures(signer: D.Signer) -> None:
    keys = Keys(record(signer))
    for value, want in [
        (b"v=1; a=rsa-sha256; d=example.org; s=ed; garbage", Result.NEUTRAL),
        (b"v=1; a=rsa-sha256; d=exa mple.org; s=ed; h=from; bh=AA==; b=AA==", Result.NEUTRAL),
        (b"v=1; a=rsa-sha1; d=example.org; s=ed; h=from; bh=AA==; b=AA==", Result.PERMERROR),
        (b"v=1; a=rsa-sha256; d=example.org; s=ed; bh=AA==; b=AA==", Result.NEUTRAL),  # no h=
    ]:
        r = await D.verify(b"DKIM-Signature: " + value + b"\r\n" + MSG, resolver=keys)
        assert r.signatures[0].result is want, value
    assert await D.verify(MSG, resolver=keys) == DkimResult()
    assert keys.asked.count("ed._domainkey.example.org") == 1  # only the readable sha256 without h= got that far


async def test_at_most_max_signatures(signer: D.Signer) -> None:
    one = signer.sign(MSG, "example.org")
    assert one is not None
    keys = Keys(record(signer))
    r = await D.verify(one * (D.MAX_SIGNATURES + 2) + MSG, resolver=keys)
    assert D.MAX_SIGNATURES == 5
    assert len(r.signatures) == D.MAX_SIGNATURES and r.ignored == 2 and "2 more not checked" in r.summary()
    assert keys.asked == ["ed._domainkey.example.org"]  # one lookup per distinct key
