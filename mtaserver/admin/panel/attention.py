"""What needs the administrator's attention, for the Overview page. Pure.

DESCRIPTION
    `attention(services, deferred, relay_host, delay_warning, now)` lists the problems seen now:

      a scanner down      a configured service (antispam, antivirus, authentication, DKIM) whose
                          probe failed (api.AdminServer.services), with its error
      mail stuck          the oldest message in deferred/ arrived longer ago than
                          queue.delay_warning (when senders start getting delay notices)
      a relay refusing    deferred recipients grouped by their last reply (the queue manager's
                          per-recipient status): with a relay host configured, "relay host X
                          refusing"; else "deliveries deferred"; the most frequent replies first

    Each item is {"level": "error" | "warning", "title", "detail"}.

SECURITY
    Replies are remote servers' text; they are shown escaped by the templates and cut to
    REPLY_CHARS here.

CONFIG
    queue.delay_warning, outbound.relay_host (passed in)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

REPLY_CHARS = 200
MAX_REPLIES = 3


def _age(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 60}m"


def attention(
    services: list[dict[str, Any]], deferred: list[dict[str, Any]], *, relay_host: str | None, delay_warning: float, now: float
) -> list[dict[str, str]]:
    """The problems to show (see the module docstring). `deferred`: queue list summaries of the
    deferred queue, oldest first (QueueOps.list)."""
    out: list[dict[str, str]] = []
    for s in services:
        if s.get("configured") and s.get("error"):
            what = s.get("name", "?")
            engine = s.get("engine")
            out.append({"level": "error", "title": f"{what} is down" + (f" ({engine})" if engine else ""),
                        "detail": str(s["error"])[:REPLY_CHARS]})  # fmt: skip
    if deferred:
        oldest = min(float(m.get("arrival_time") or now) for m in deferred)
        age = now - oldest
        if age > delay_warning:
            stuck = sum(1 for m in deferred if now - float(m.get("arrival_time") or now) > delay_warning)
            out.append({"level": "warning", "title": f"mail stuck in deferred: oldest {_age(age)}",
                        "detail": f"{stuck} message(s) older than queue.delay_warning ({_age(delay_warning)})"})  # fmt: skip
    replies: Counter[str] = Counter()
    for m in deferred:
        for r in m.get("recipients", []):
            reason = (r.get("delay_reason") or "").strip()
            if reason:
                replies[reason[:REPLY_CHARS]] += 1
    for reply, n in replies.most_common(MAX_REPLIES):
        title = f"relay host {relay_host} refusing" if relay_host else "deliveries deferred"
        out.append({"level": "warning", "title": title, "detail": f"{n} recipient(s): {reply}"})
    return out
