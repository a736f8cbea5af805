"""The panel's charts: the server's own counters sampled every minute into ring buffers.

DESCRIPTION
    `Sampler` runs in the admin process: a first sample at start, then one every SAMPLE_STEP
    seconds (on the injected clock), each reading the metrics every process wrote (metrics.py,
    the same numbers as GET /metrics) and turning them into named values (`extract`):

      accepted                 messages queued by SMTP sessions
      rejected                 refusals sent to clients, all reasons; rejected:<reason> per reason
      deferred                 messages moved to deferred/ after an attempt
      delivered                recipients delivered (sent)
      bounced                  recipients bounced or expired
      postscreen:<test>:<result>   postscreen results per test and result (pass, drop, enforce,
                               ignore = what `ignore` let through that it would have blocked, ...)
      filter:<filter>:<result>     content filter results
      queue:<state>            messages in each queue now (a gauge)

    `History` (pure: every call takes `now`) keeps, per sample, the change of each counter since
    the previous sample (a counter that went down was reset by a restart: its new value is the
    change) and the value of each gauge:

      hour   the last HOUR_SLOTS samples (1-minute resolution)
      day    10-minute buckets (DAY_STEP), the last DAY_SLOTS of them, each stamped with the
             time it ends; a bucket sums its counters' changes and keeps its gauges' last
             value; the bucket being filled is shown as the last point

    `series(name, window)` gives [(time, value)] for "hour" or "day"; `peek(now, values)` the
    change since the last sample without recording it (the live point of the charts). Rows
    hold only the names seen then; a name missing from a row is 0 there.

    The buffers are written to data_dir/state/history.json when the sampler stops and read when
    it starts, so a restart keeps the charts (the gap shows as a gap in time).

SECURITY
    Reads only the metrics files and queue directory listings; writes one file under data_dir,
    atomically (temporary file, rename).

CONFIG
    server.data_dir
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("admin")

SAMPLE_STEP = 60.0  # seconds between samples
HOUR_SLOTS = 60
DAY_STEP = 600.0  # seconds per day bucket
DAY_SLOTS = 144
GAUGE_PREFIXES = ("queue:",)
FORMAT = 1

Row = dict[str, float]
Window = Literal["hour", "day"]


def is_gauge(name: str) -> bool:
    return name.startswith(GAUGE_PREFIXES)


def extract(samples: Iterable[tuple[str, dict[str, str], float]]) -> Row:
    """Our named values from Prometheus samples (sample name, labels, value). Pure."""
    out: Row = {}

    def add(name: str, value: float) -> None:
        out[name] = out.get(name, 0.0) + value

    for name, labels, value in samples:
        if name == "mtaserver_smtpd_messages_accepted_total":
            add("accepted", value)
        elif name == "mtaserver_smtpd_rejects_total":
            add("rejected", value)
            add(f"rejected:{labels.get('reason', '?')}", value)
        elif name == "mtaserver_queue_messages_deferred_total":
            add("deferred", value)
        elif name == "mtaserver_delivery_recipients_total":
            status = labels.get("status", "")
            if status == "sent":
                add("delivered", value)
            elif status in ("bounced", "expired"):
                add("bounced", value)
        elif name == "mtaserver_postscreen_results_total":
            add(f"postscreen:{labels.get('test', '?')}:{labels.get('result', '?')}", value)
        elif name == "mtaserver_filter_results_total":
            add(f"filter:{labels.get('filter', '?')}:{labels.get('result', '?')}", value)
        elif name == "mtaserver_queue_messages":
            add(f"queue:{labels.get('queue', '?')}", value)
    for base in ("accepted", "rejected", "deferred", "delivered", "bounced"):
        out.setdefault(base, 0.0)  # always charted, even before the first message
    return out


class History:
    """Ring buffers of sampled values (see the module docstring). Pure: `now` is an argument."""

    def __init__(self) -> None:
        self.hour: deque[tuple[float, Row]] = deque(maxlen=HOUR_SLOTS)
        self.day: deque[tuple[float, Row]] = deque(maxlen=DAY_SLOTS)
        self._bucket: int | None = None  # the day bucket being filled
        self._acc: Row = {}
        self._last: Row | None = None  # the cumulative values of the last sample (not persisted)
        self.last_time: float | None = None

    def _changes(self, values: Row) -> Row:
        last = self._last or {}
        row: Row = {}
        for name, v in values.items():
            if is_gauge(name):
                row[name] = v
            else:
                before = last.get(name, 0.0)
                row[name] = v - before if v >= before else v  # lower: the counter was reset
        return row

    def peek(self, now: float, values: Row) -> Row:
        """The change since the last sample (gauges: the value now), not recorded."""
        return self._changes(values)

    def record(self, now: float, values: Row) -> Row:
        """One sample of the cumulative `values`; returns the row recorded."""
        row = self._changes(values)
        self._last = dict(values)
        self.last_time = now
        self.hour.append((now, row))
        bucket = int(now // DAY_STEP)
        if self._bucket is not None and bucket != self._bucket:
            self.day.append(((self._bucket + 1) * DAY_STEP, self._acc))
            self._acc = {}
        self._bucket = bucket
        for name, v in row.items():
            self._acc[name] = v if is_gauge(name) else self._acc.get(name, 0.0) + v
        return row

    def _rows(self, window: Window) -> list[tuple[float, Row]]:
        if window == "hour":
            rows = list(self.hour)
            span = HOUR_SLOTS * SAMPLE_STEP
        elif window == "day":
            rows = list(self.day)
            if self._bucket is not None and self._acc:
                rows.append(((self._bucket + 1) * DAY_STEP, self._acc))  # stamped at its end, as the full ones
            span = DAY_SLOTS * DAY_STEP
        else:
            raise ValueError(f"unknown window {window!r} (hour or day)")
        if rows:
            newest = rows[-1][0]
            rows = [r for r in rows if r[0] > newest - span]
        return rows

    def series(self, name: str, window: Window) -> list[tuple[float, float]]:
        """[(time, value)] of one name: per-interval changes of a counter, values of a gauge."""
        return [(t, row.get(name, 0.0)) for t, row in self._rows(window)]

    def table(self, window: Window, names: Iterable[str], live: tuple[float, Row] | None = None) -> dict[str, Any]:
        """Every asked name over one window, on shared times (for a chart): {"t": [...], name: [...]}.
        `live`: (now, peek's row), the change since the last sample, shown as the newest point
        (in the day window: added to the bucket being filled)."""
        rows = self._rows(window)
        if live is not None and self.last_time is not None and live[0] > self.last_time:
            now, row = live
            if window == "hour":
                rows.append((now, row))
            elif rows and self._bucket == int(now // DAY_STEP) and rows[-1][0] == (self._bucket + 1) * DAY_STEP:
                merged = dict(rows[-1][1])
                for n, v in row.items():
                    merged[n] = v if is_gauge(n) else merged.get(n, 0.0) + v
                rows[-1] = (rows[-1][0], merged)
            else:
                rows.append(((int(now // DAY_STEP) + 1) * DAY_STEP, row))
        out: dict[str, Any] = {"t": [t for t, _ in rows]}
        for n in names:
            out[n] = [row.get(n, 0.0) for _, row in rows]
        return out

    def names(self) -> list[str]:
        seen: set[str] = set(self._acc)
        for _, row in self.hour:
            seen.update(row)
        for _, row in self.day:
            seen.update(row)
        return sorted(seen)

    def totals(self, window: Window, prefix: str = "") -> Row:
        """The sum of each counter over a window (names starting with `prefix`)."""
        out: Row = {}
        for _, row in self._rows(window):
            for n, v in row.items():
                if n.startswith(prefix) and not is_gauge(n):
                    out[n] = out.get(n, 0.0) + v
        return out

    # -- persistence -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "hour": [[t, r] for t, r in self.hour], "day": [[t, r] for t, r in self.day],
                "bucket": self._bucket, "acc": self._acc, "last_time": self.last_time}  # fmt: skip

    @classmethod
    def from_json(cls, doc: Any) -> History:
        """A History from to_json's document; an unusable document gives an empty one."""
        h = cls()
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return h
        try:
            for key, ring in (("hour", h.hour), ("day", h.day)):
                for t, row in doc.get(key, []):
                    ring.append((float(t), {str(k): float(v) for k, v in row.items()}))
            bucket = doc.get("bucket")
            h._bucket = int(bucket) if bucket is not None else None
            h._acc = {str(k): float(v) for k, v in (doc.get("acc") or {}).items()}
            h.last_time = float(doc["last_time"]) if doc.get("last_time") is not None else None
        except (TypeError, ValueError, AttributeError):
            return cls()
        return h


def load(path: Path) -> History:
    try:
        return History.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return History()
    except (OSError, ValueError) as exc:
        log.warning("panel history %s: not read (%s): the charts start empty", path, exc)
        return History()


def save(history: History, path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
        json.dump(history.to_json(), f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(queue_root: Path | None) -> Row:
    """The named values now: every process's metrics and the queue depth (metrics.render)."""
    from prometheus_client.parser import text_string_to_metric_families

    from .. import metrics

    text = metrics.render(queue_root).decode("utf-8")
    return extract((s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples)


class Sampler:
    """The I/O shell: samples into `history` every `step` seconds until `stop`, then saves."""

    def __init__(
        self, history: History, read: Callable[[], Row], path: Path | None, *,
        clock: Callable[[], float] = time.time, step: float = SAMPLE_STEP,
    ) -> None:  # fmt: skip
        self.history = history
        self.read = read
        self.path = path
        self.clock = clock
        self.step = step
        self.latest: Row = {}

    async def sample(self) -> None:
        try:
            values = await asyncio.to_thread(self.read)
        except Exception as exc:  # noqa: BLE001 - a bad metrics file must not end the sampler
            log.warning("panel history: cannot read the metrics: %s", exc)
            return
        self.latest = values
        self.history.record(self.clock(), values)

    async def run(self, stop: asyncio.Event) -> None:
        start = self.clock()
        n = 0
        try:
            while not stop.is_set():
                await self.sample()
                n += 1
                delay = max(start + n * self.step - self.clock(), 1.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            self.save()

    def save(self) -> None:
        if self.path is None:
            return
        try:
            save(self.history, self.path)
        except OSError as exc:
            log.warning("panel history %s: not saved: %s", self.path, exc)
