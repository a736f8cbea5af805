"""DKIM against a real DNS server: keys made by the real CLI (`python -m mtaserver dkim keygen`),
their TXT records (as keygen prints them) served by NSD, messages signed by filters/dkim.py's
Signer and checked by its verify() through the production resolver.

Cases: RSA (a record of two 255-character strings) and ed25519 pass; a tampered body or header
fails; a selector with no record is a permerror; a zone whose server answers SERVFAIL and a
server that never answers are temperrors within dkim.timeout; a message larger than
VERIFY_ON_LOOP (hashed in a thread) passes and fails the same way; keygen's file modes, its
refusal to overwrite, and the dkim.sign entry it prints passing check-config.

Through a running server (make_mta, DNS on NSD): mail from a trusted client (127.0.0.1) for a
signing domain is queued with both signatures, which verify; mail from an outsider (127.0.0.2)
claiming that domain unsigned gets each policy (550 5.7.1, X-DKIM-Policy, accepted), with our
Authentication-Results (dkim=none) in place of a forged one; signed mail passes, tampered fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dnsserver import Nsd, zone
from smtpclient import TRUSTED, UNTRUSTED, Mta, Reply, SmtpClient, queue_id_of

from mtaserver.config import DkimSign
from mtaserver.filters import dkim as D
from mtaserver.filters.dkim import Result

pytestmark = pytest.mark.integration


def mtaserver(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtaserver", *args], check=False, capture_output=True, text=True, timeout=60)


def keygen(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return mtaserver("dkim", "keygen", "-c", str(config), *args)


class Keys:
    """Keys made by the CLI: the TXT line and the dkim.sign entry it printed for each."""

    def __init__(self, tmp: Path) -> None:
        self.config = tmp / "mtaserver.yaml"
        self.config.write_text(yaml.safe_dump({"server": {"hostname": "mx.example.test", "data_dir": "var"}}))
        self.data_dir = tmp / "var"
        self.txt: dict[str, str] = {}
        self.entries: dict[str, dict[str, str]] = {}

    def make(self, domain: str, selector: str, kind: str = "rsa") -> None:
        run = keygen(self.config, "--domain", domain, "--selector", selector, "--type", kind)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        self.txt[f"{selector}.{domain}"] = next(line for line in lines if " IN TXT " in line)
        entry = yaml.safe_load(next(line for line in lines if line.lstrip().startswith("- {")))
        self.entries[f"{selector}.{domain}"] = entry[0]

    def signer(self, *names: str) -> D.Signer:
        return D.Signer.load([DkimSign(**self.entries[n]) for n in names], self.data_dir)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    k = Keys(tmp_path_factory.mktemp("dkimkeys"))
    k.make("example.org", "rsa")
    k.make("example.org", "ed", "ed25519")
    k.make("example.org", "gone")  # never published
    k.make("dead.test", "sel")  # its zone answers SERVFAIL
    return k


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory, keys: Keys):
    published = "\n".join(keys.txt[n] for n in ("rsa.example.org", "ed.example.org"))
    with Nsd(tmp_path_factory.mktemp("dkimdns"), {"example.org": zone("example.org", published), "dead.test": None}) as server:
        yield server


MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: quarterly figures\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <q4@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"The numbers are attached.\r\n"
)


def signed(signer: D.Signer, message: bytes = MESSAGE) -> bytes:
    header = signer.sign(message, D.from_domain(message))
    assert header is not None
    return header + message


def results(r: D.DkimResult) -> list[tuple[str, str, Result]]:
    return [(s.domain, s.selector, s.result) for s in r.signatures]


async def test_rsa_and_ed25519_pass(keys: Keys, nsd: Nsd) -> None:
    assert keys.txt["rsa.example.org"].count('" "') == 1  # 2048-bit key: two strings, joined by the resolver
    message = signed(keys.signer("rsa.example.org", "ed.example.org"))
    r = await D.verify(message, nameservers=[nsd.address], timeout=2.0)
    assert results(r) == [("example.org", "rsa", Result.PASS), ("example.org", "ed", Result.PASS)]
    assert [s.algorithm for s in r.signatures] == ["rsa-sha256", "ed25519-sha256"]
    ar = D.authentication_results("mx.example.test", r, "example.org")
    assert "dkim=pass header.d=example.org header.s=rsa header.a=rsa-sha256 header.b=" in ar
    assert D.policy(r, "example.org", ["example.org"], "reject").action is D.PolicyAction.PASS


async def test_tampered_fails(keys: Keys, nsd: Nsd) -> None:
    message = signed(keys.signer("rsa.example.org", "ed.example.org"))
    body = await D.verify(message.replace(b"attached", b"attacked"), nameservers=[nsd.address], timeout=2.0)
    assert [(s.result, s.reason) for s in body.signatures] == [(Result.FAIL, "body hash did not verify")] * 2
    subject = await D.verify(message.replace(b"quarterly", b"quarterlY"), nameservers=[nsd.address], timeout=2.0)
    assert [(s.result, s.reason) for s in subject.signatures] == [(Result.FAIL, "signature did not verify")] * 2
    assert D.policy(subject, "example.org", ["example.org"], "reject").action is D.PolicyAction.REJECT


async def test_large_message_hashed_in_a_thread(keys: Keys, nsd: Nsd) -> None:
    big = MESSAGE + (b"x" * 76 + b"\r\n") * 3000
    assert len(big) > D.VERIFY_ON_LOOP
    message = signed(keys.signer("ed.example.org"), big)
    assert results(await D.verify(message, nameservers=[nsd.address], timeout=2.0)) == [("example.org", "ed", Result.PASS)]
    tampered = message[:-10] + b"y" + message[-9:]
    assert results(await D.verify(tampered, nameservers=[nsd.address], timeout=2.0)) == [("example.org", "ed", Result.FAIL)]


async def test_key_not_in_dns_is_permerror(keys: Keys, nsd: Nsd) -> None:
    r = await D.verify(signed(keys.signer("gone.example.org")), nameservers=[nsd.address], timeout=2.0)
    assert [(s.result, s.reason) for s in r.signatures] == [(Result.PERMERROR, "no key")]
    assert D.policy(r, "example.org", ["example.org"], "reject").action is D.PolicyAction.REJECT


async def test_dns_servfail_is_temperror(keys: Keys, nsd: Nsd) -> None:
    message = b"From: a@dead.test\r\nSubject: x\r\n\r\nbody\r\n"
    r = await D.verify(signed(keys.signer("sel.dead.test"), message), nameservers=[nsd.address], timeout=2.0)
    assert [(s.domain, s.result, s.reason) for s in r.signatures] == [("dead.test", Result.TEMPERROR, "key lookup failed")]
    out = D.policy(r, "dead.test", ["dead.test"], "reject")
    assert out.action is D.PolicyAction.TEMPFAIL and out.reply is not None and out.reply.code == 451


async def test_dns_silent_is_temperror_within_the_budget(keys: Keys) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        silent = f"127.0.0.1:{s.getsockname()[1]}"
        r = await D.verify(signed(keys.signer("rsa.example.org", "ed.example.org")), nameservers=[silent], timeout=0.3)
    assert [s.result for s in r.signatures] == [Result.TEMPERROR, Result.TEMPERROR]


def test_keygen_files_and_refusals(keys: Keys) -> None:
    path = keys.data_dir / "dkim" / "example.org.rsa.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    before = path.read_bytes()
    again = keygen(keys.config, "--domain", "example.org", "--selector", "rsa")
    assert again.returncode == 1 and "exists" in again.stderr and path.read_bytes() == before
    bad = keygen(keys.config, "--domain", "example.org", "--selector", "no/slash")
    assert bad.returncode == 1 and "selector" in bad.stderr
    assert not any("no" in p.name for p in path.parent.iterdir())


def test_keygen_force_and_check_config(tmp_path: Path) -> None:
    k = Keys(tmp_path)
    k.make("example.org", "mail", "ed25519")
    path = k.data_dir / "dkim" / "example.org.mail.key"
    first = path.read_bytes()
    forced = keygen(k.config, "--domain", "example.org", "--selector", "mail", "--type", "ed25519", "--force")
    assert forced.returncode == 0 and path.read_bytes() != first and stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = yaml.safe_load(k.config.read_text())
    cfg["dkim"] = {"sign": [k.entries["mail.example.org"]]}
    k.config.write_text(yaml.safe_dump(cfg))
    check = mtaserver("check-config", "-c", str(k.config))
    assert check.returncode == 0, check.stderr
    os.chmod(path, 0o600)
    path.write_bytes(b"not a key\n")
    check = mtaserver("check-config", "-c", str(k.config))
    assert check.returncode == 1 and "dkim.sign" in check.stderr and "not a PEM private key" in check.stderr


# ---------------------------------------------------------------------------------------------
# Through a running server (the content-filter chain, filters/dkim_filter.py)


def headers(body: bytes) -> list[tuple[str, str]]:
    head = body.split(b"\r\n\r\n", 1)[0].decode()
    out = []
    for line in re.sub(r"\r\n[ \t]", " ", head).split("\r\n"):
        name, _, value = line.partition(":")
        out.append((name, value.strip()))
    return out


def start(make_mta, keys: Keys, nsd: Nsd, dkim: dict) -> Mta:
    """A server on NSD whose dkim.sign is example.org's published keys (copied into its data_dir)."""
    sign = [{**keys.entries[n]} for n in ("rsa.example.org", "ed.example.org")]
    dns = {"nameservers": [nsd.address], "timeout": "2s"}
    mta = make_mta({"server": {"dns": dns}, "dkim": {"sign": sign, **dkim}}, start=False)
    (mta.data_dir / "dkim").mkdir(parents=True, mode=0o700)
    for entry in sign:
        shutil.copy(keys.data_dir / entry["key"], mta.data_dir / entry["key"])
    return mta.start()


def send(mta: Mta, content: bytes, client: str, sender: str = "alice@example.org") -> Reply:
    with SmtpClient(mta.port, client, timeout=30).hello() as c:
        return c.send_message(sender, ["bob@example.test"], content)


async def test_trusted_mail_leaves_signed(make_mta, keys: Keys, nsd: Nsd) -> None:
    mta = start(make_mta, keys, nsd, {})
    qid = queue_id_of(send(mta, MESSAGE, TRUSTED))
    body = mta.body(qid)
    assert [v.split(" s=")[1].split(";")[0] for n, v in headers(body) if n == "DKIM-Signature"] == ["rsa", "ed"]
    r = await D.verify(body, nameservers=[nsd.address], timeout=2.0)
    assert results(r) == [("example.org", "rsa", Result.PASS), ("example.org", "ed", Result.PASS)]
    assert "Authentication-Results" not in dict(headers(body))  # ours to sign, not to judge
    other = queue_id_of(send(mta, MESSAGE.replace(b"alice@example.org", b"alice@other.test"), TRUSTED))
    assert "DKIM-Signature" not in dict(headers(mta.body(other)))  # no key for other.test


@pytest.mark.parametrize("mode", ["reject", "tag", "accept"])
def test_unsigned_inbound_from_a_signing_domain(make_mta, keys: Keys, nsd: Nsd, mode: str) -> None:
    mta = start(make_mta, keys, nsd, {"unsigned_from_signing_domain": mode})
    forged = b"Authentication-Results: MX.example.test; dkim=pass header.d=example.org\r\n" + MESSAGE
    r = send(mta, forged, UNTRUSTED)
    if mode == "reject":
        assert (r.code, r.status) == (550, "5.7.1")
        want = "Message rejected: example.org signs its mail with DKIM; this message has no valid signature from it"
        assert r.text == f"5.7.1 {want}"
        assert mta.queued() == []
        return
    h = headers(mta.body(queue_id_of(r)))
    assert [v for n, v in h if n == "Authentication-Results"] == ["mx.example.test; dkim=none"]  # the forged copy is gone
    assert [v for n, v in h if n == "X-DKIM-Policy"] == (["unsigned from signing domain"] if mode == "tag" else [])


def test_signed_inbound_passes_the_policy(make_mta, keys: Keys, nsd: Nsd) -> None:
    mta = start(make_mta, keys, nsd, {"unsigned_from_signing_domain": "reject"})
    qid = queue_id_of(send(mta, signed(keys.signer("ed.example.org")), UNTRUSTED))
    ar = dict(headers(mta.body(qid)))["Authentication-Results"]
    assert ar.startswith("mx.example.test; dkim=pass header.d=example.org header.s=ed header.a=ed25519-sha256 header.b=")
    tampered = signed(keys.signer("ed.example.org")).replace(b"attached", b"attacked")
    assert send(mta, tampered, UNTRUSTED).code == 550
