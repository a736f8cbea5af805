"""The antivirus filter: clamd's verdict on the message, and encrypted archives.

DESCRIPTION
    The message goes to clamd as received (INSTREAM, filters/scanners.py); clamd decodes its
    MIME parts itself. At most advanced.threads.antivirus scans run at once per process
    (clamd's MaxThreads in Carbonio); the others wait their turn inside the time budget.

    antivirus.block_encrypted_archives: an archive member that is encrypted cannot be
    scanned, so it is treated as a virus named Heuristics.Encrypted.Zip (the name clamd
    gives with AlertEncryptedArchive). We find them ourselves in the MIME walk
    (filters/mime.py, run at the same time as clamd), so this works whatever clamd's own
    configuration says. What the walk could not open (an archive nested too deep, a zip
    bomb, a damaged archive, too many parts) could hide one, so it is blocked the same way,
    as Heuristics.Limits.Exceeded. A Heuristics.Encrypted.* or Heuristics.Limits.* verdict
    from a clamd configured to give one is ignored when the switch is off.

    `antivirus_outcome` is the pure decision:
      a virus        antivirus.action: reject -> REJECT 554 5.7.0 Rejected: virus found: <name>,
                     discard -> DISCARD (the client is told 250, the message dropped);
                     antivirus.notify_admin / notify_recipient: a notice each (filters/notify.py)
      clamd failed   antivirus.on_error: tempfail -> 451 4.7.1 | accept (logged, unscanned)
      clean          no objection

SECURITY
    A virus name comes from clamd, which read it from the message's signature database:
    sanitized before it reaches a reply or a log.

CONFIG
    antivirus.{enabled,clamd.address,clamd.timeout,action,notify_admin,notify_recipient,
    block_encrypted_archives,on_error}, advanced.threads.antivirus
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..config import AntivirusConfig, Config
from ..logutil import sanitize, sanitize_ascii
from ..model import CONTINUE, Decision, Reply, Verdict
from .chain import Filter, Item, Notices, Outcome, Step
from .scanners import AvResult, ScannerError, clamd_scan

ENCRYPTED = "Heuristics.Encrypted.Zip"


LIMITS = "Heuristics.Limits.Exceeded"  # clamd's name for "not scanned whole" (AlertExceedsMax)


def unopened(report: object) -> list[str]:
    """What the MIME walk could not look into (filters/mime.py): its problems (an archive too
    deep, a zip bomb, a damaged archive, too many parts), or the error it stopped with."""
    from .mime import MimeError

    if isinstance(report, MimeError):
        return [str(report) or "MIME structure"]
    return list(getattr(report, "problems", ()))


def antivirus_outcome(virus: str | None, encrypted: Sequence[str], cfg: AntivirusConfig,
                      unscanned: Sequence[str] = ()) -> Outcome:  # fmt: skip
    """clamd's verdict, the encrypted members and what could not be opened, as one outcome."""
    if virus is not None and virus.startswith(("Heuristics.Encrypted.", "Heuristics.Limits.")) and not cfg.block_encrypted_archives:
        virus = None
    if virus is None and encrypted and cfg.block_encrypted_archives:
        virus = ENCRYPTED
        detail = f"{ENCRYPTED}: {sanitize(encrypted[0], 100)}"
    elif virus is None and unscanned and cfg.block_encrypted_archives:
        # An encrypted member could hide behind what the walk did not open (an archive one
        # level too deep, after a zip bomb): not scanned whole is not clean.
        virus = LIMITS
        detail = f"{LIMITS}: {sanitize(unscanned[0], 200)}"
    else:
        detail = sanitize(virus or "", 100)
    if virus is None:
        return Outcome(CONTINUE, Step("antivirus", "clean"))
    name = sanitize_ascii(virus, 100)  # into the reply: ASCII
    step = Step("antivirus", "virus", detail)
    notices = Notices(f"a virus ({name})", admin=cfg.notify_admin, recipients=cfg.notify_recipient, status="5.7.0")
    if cfg.action == "discard":
        return Outcome(Verdict(Decision.DISCARD, reason=f"virus {name}"), step, notices=notices)
    return Outcome(Verdict(Decision.REJECT, Reply(554, "5.7.0", f"Rejected: virus found: {name}"), f"virus {name}"), step, notices=notices)


class AntivirusFilter(Filter):
    name = "antivirus"

    def __init__(self, cfg: Config, slots: asyncio.Semaphore) -> None:
        self.cfg = cfg.antivirus
        self.on_error = cfg.antivirus.on_error
        self.slots = slots

    async def run(self, item: Item) -> Outcome:
        av = self.cfg
        walk = asyncio.ensure_future(item.mime()) if av.block_encrypted_archives else None
        try:
            async with self.slots:  # clamd and the walk at the same time
                result: AvResult | ScannerError = await clamd_scan(av.clamd.address, item.chunks(), av.clamd.timeout)
        except ScannerError as exc:
            result = exc
        finally:
            report = await walk if walk is not None else None
        encrypted: Sequence[str] = getattr(report, "encrypted", ())
        unscanned = unopened(report) if report is not None else []
        if isinstance(result, ScannerError):
            if encrypted or unscanned:  # definitive without clamd
                return antivirus_outcome(None, encrypted, av, unscanned)
            return self.failed("error", str(result), 0.0)
        return antivirus_outcome(result.virus, encrypted, av, unscanned)
