"""The DKIM steps of the content-filter chain: verification with the sender policy, and the signer.

DESCRIPTION
    DkimVerifyFilter (dkim.verify), for mail from clients that are not trusted (mail from
    mynetworks and authenticated clients is ours to sign, not to judge):
      - every DKIM-Signature checked (filters/dkim.py verify, key records through the
        worker's resolver on server.dns.nameservers, within dkim.timeout);
      - Authentication-Results: <server.hostname>; dkim=... added (RFC 8601); every copy of
        that header naming our hostname that came with a message is removed by the chain, from
        every client, trusted ones too (filters/chain.py FilterChain.strips);
      - dkim.unsigned_from_signing_domain: a From in a dkim.sign domain without a valid
        aligned signature -> reject (550 5.7.1; 451 4.7.5 while the key lookup fails), tag
        (X-DKIM-Policy) or accept;
      - the decision trail gets the signatures' results and the policy's reason.
    A bug in this code gives on_error (tempfail): a broken check never accepts what it should
    have judged; what a message or DNS does never raises (filters/dkim.py).

    The signer (dkim.sign) is not a filter of the analysis: the chain signs the message last,
    after every rewrite (filters/chain.py, step 4).

CONFIG
    dkim.{verify,timeout,unsigned_from_signing_domain,sign}, server.hostname
"""

from __future__ import annotations

from dataclasses import replace

from ..config import Config
from ..dns import Resolver
from .chain import HEAD_MAX, Filter, Item, Outcome, Step
from .dkim import (
    Signer,
    authentication_results,
    from_claims,
    from_domain,
    policy,
    verify,
)

__all__ = ["DkimVerifyFilter", "from_domain", "load_signer"]



def _head(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n", 0, HEAD_MAX)
    return content[: end + 2] if end >= 0 else content[:HEAD_MAX]


class DkimVerifyFilter(Filter):
    name = "dkim-verify"
    on_error = "tempfail"

    def __init__(self, cfg: Config, resolver: Resolver | None) -> None:
        self.cfg = cfg
        self.resolver = resolver
        self.hostname = cfg.server.hostname
        self.sign_domains = tuple(s.domain for s in cfg.dkim.sign)

    def wanted(self, item: Item) -> bool:
        return not item.trusted

    async def run(self, item: Item) -> Outcome:
        dk = self.cfg.dkim
        content = await item.whole()
        head = _head(content)
        result = await verify(content, nameservers=self.cfg.server.dns.nameservers, timeout=dk.timeout, resolver=self.resolver)
        fd = from_domain(head)
        judged = policy(result, fd, self.sign_domains, dk.unsigned_from_signing_domain, claimed=() if fd else from_claims(head))
        verdict = judged.verdict()
        hostname = self.hostname
        ar = ("Authentication-Results", authentication_results(hostname, result, fd))
        verdict = replace(verdict, headers=(ar, *verdict.headers))
        top = result.signatures[0].result.value if result.signatures else "none"
        if any(s.result.value == "pass" for s in result.signatures):
            top = "pass"
        detail = result.summary() + (f"; {judged.reason}" if judged.reason else "")
        return Outcome(verdict, Step(self.name, top, detail))  # forged A-R: removed by the chain for every client


def load_signer(cfg: Config) -> Signer:
    """The keys of dkim.sign (ValueError naming a file that cannot be used)."""
    return Signer.load(cfg.dkim.sign, cfg.data_path)
