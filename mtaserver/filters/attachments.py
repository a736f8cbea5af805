"""Blocked attachments: the decision over a MimeReport (what the MIME walker found).

DESCRIPTION
    `blocked_extension(report, extensions)` is the first file name, in walk order (parts,
    forwarded messages, archive members), whose last extension is in `extensions`; as
    Carbonio's Amavis expression `.\\.(?:ext|...)\\s*$` (case-insensitive): at least one
    character before the dot, trailing whitespace ignored. Trailing dots are ignored too
    (Windows drops them: "a.exe." is saved as "a.exe"); Carbonio's expression misses those.

    When no name is blocked, `blocked_extension` returns the walker's first problem as
    (problem, "") and `blocked_reply` gives its own reply; `refusal(report, extensions)`
    wraps both with a reason for the log. A problem (a zip bomb, an archive too deep or too
    large to inspect, a damaged archive, a MIME limit) is refused because what was not
    inspected may hide a blocked name. Both answer 550 5.7.1; the caller applies inbound.blocked_extensions_action
    (reject: this reply; bounce, discard: the reason for the log and the trail).

    COMMON_BLOCKED is the panel's "ADD COMMONLY BLOCKED EXTENSIONS" list
    (zimbraMtaCommonBlockedExtension, SPEC.md 1.1), the "@common" preset of the config.

SECURITY
    Names are the sender's: they reach the reply (and so the logs) only through
    logutil.sanitize (printable ASCII, bounded) with double quotes made single.

STANDARDS
    RFC 3463 (5.7.1), RFC 5321 (reply text is ASCII).

CONFIG
    None read here (no config import: config.py imports COMMON_BLOCKED); the caller passes
    inbound.blocked_extensions and AttachmentLimits from inbound.attachment_limits.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..logutil import sanitize_ascii
from ..model import Reply
from .mime import AttachmentLimits, FoundName, MimeError, MimeReport, MimeWalker

if TYPE_CHECKING:
    from ..config import AttachmentLimitsConfig

__all__ = [
    "COMMON_BLOCKED", "AttachmentLimits", "FoundName", "MimeError", "MimeReport", "MimeWalker", "Refusal",
    "blocked_extension", "blocked_reply", "extension_of", "extension_reply", "limits_from", "problem_reply", "refusal",
]  # fmt: skip

COMMON_BLOCKED: tuple[str, ...] = (
    "asd", "bat", "chm", "cmd", "com", "dll", "do", "exe", "hlp", "hta", "js", "jse", "lnk", "ocx",
    "pif", "reg", "scr", "shb", "shm", "shs", "vbe", "vbs", "vbx", "vxd", "wsf", "wsh", "xl",
)  # fmt: skip

NAME_LIMIT = 100  # bytes of a file name in a reply (sanitized, then "...")


def limits_from(cfg: AttachmentLimitsConfig) -> AttachmentLimits:
    """The walker's limits from inbound.attachment_limits."""
    return AttachmentLimits(max_depth=cfg.max_depth, max_entries=cfg.max_entries,
                            max_expanded=cfg.max_expanded, max_archive_bytes=cfg.max_archive_size)  # fmt: skip


def extension_of(name: str) -> str | None:
    """The last extension of a file name, None when it has none (".exe" alone has none)."""
    stem = name.rstrip().rstrip(".").rstrip()
    dot = stem.rfind(".")
    if dot < 1 or dot == len(stem) - 1:
        return None
    return stem[dot + 1 :]


def blocked_extension(report: MimeReport, extensions: AbstractSet[str]) -> tuple[str, str] | None:
    """(name, extension as the name spells it) of the first blocked name; else (problem, "")
    for the walker's first problem (see `refusal`); None: nothing blocked, or `extensions` empty.
    `blocked_reply` turns either into the reply."""
    if not extensions:
        return None
    wanted = {e.lower() for e in extensions}
    for found in report.names:
        ext = extension_of(found.name)
        if ext is not None and ext.lower() in wanted:
            return found.name, ext
    if report.problems:
        return report.problems[0], ""
    return None


def _safe(text: str, limit: int) -> str:
    return sanitize_ascii(text, limit).replace('"', "'")  # into an SMTP reply: ASCII


def extension_reply(name: str, ext: str) -> Reply:
    return Reply(
        550, "5.7.1",
        f'Attachment type not allowed. File "{_safe(name, NAME_LIMIT)}" has the unacceptable extension "{_safe(ext, 64)}"',
    )  # fmt: skip


def problem_reply(problem: str) -> Reply:
    return Reply(550, "5.7.1", f"Attachment not allowed: {_safe(problem, 200)}")


def blocked_reply(hit: tuple[str, str]) -> Reply:
    """The 550 5.7.1 for what blocked_extension returned."""
    name, ext = hit
    return extension_reply(name, ext) if ext else problem_reply(name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    reply: Reply  # 550 5.7.1
    reason: str  # for the log and the decision trail (sanitized)
    name: str | None = None  # the blocked file name (raw, the sender's) and its extension, or None for a problem
    ext: str | None = None


def refusal(report: MimeReport, extensions: AbstractSet[str]) -> Refusal | None:
    """A blocked name first, else the walker's first problem; None: nothing to object to, or
    no extension is blocked (the filter is off: its limits refuse nothing either)."""
    if not extensions:
        return None
    hit = blocked_extension(report, extensions)
    if hit is None:
        return None
    name, ext = hit
    if not ext:
        return Refusal(reply=problem_reply(name), reason=_safe(name, 200))
    path = next((f.path for f in report.names if f.name == name), name)
    return Refusal(reply=extension_reply(name, ext), reason=f"blocked extension {_safe(ext, 64)}: {_safe(path, 200)}",
                   name=name, ext=ext)  # fmt: skip
