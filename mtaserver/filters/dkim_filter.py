"""The DKIM filter glue (temporary stub until filters/dkim.py lands)."""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..model import CONTINUE
from .chain import Filter, Item, Outcome


class DkimVerifyFilter(Filter):
    name = "dkim-verify"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def wanted(self, item: Item) -> bool:
        return False

    async def run(self, item: Item) -> Outcome:
        return Outcome(CONTINUE, None)


def load_signer(cfg: Config) -> Any:
    return None


def from_domain(head: bytes) -> str | None:
    return None
