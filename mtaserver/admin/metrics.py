"""Prometheus metrics: every metric of the server defined once, summed over the worker processes.

DESCRIPTION
    prometheus-client in multiprocess mode. `setup(directory)` runs once, in the process that
    starts the server (the supervisor, or the only process with `workers: 1`), before any
    worker exists: it empties `directory` (`directory_for(data_dir)`: /dev/shm/mtaserver-<hash of
    data_dir>, on tmpfs, so a full spool disk never fails a write into an mmap'ed page, which
    would be a SIGBUS; data_dir/metrics without /dev/shm), points PROMETHEUS_MULTIPROC_DIR
    at it, and only then imports prometheus_client (which picks its value class at import)
    and defines the metrics below. A number that cannot be recorded (ENOSPC, EMFILE) is lost
    and logged once a minute; it never fails the session or delivery recording it. Each process then writes its numbers into its own
    mmap'ed files there (<type>_<pid>.db); a fork is noticed by the library at the next
    write, which moves the child to files of its own pid. `process_dead(pid)` is called by
    the supervisor when it reaps a worker: the dead process's live gauges go, its counters
    stay (a counter must not go down because a worker was restarted). `render()` merges
    every process's files, adds the postfix_exporter names and the queue depth (counted on
    disk at scrape time, never kept as a gauge) and returns the text format for GET /metrics.

    Before `setup` (the CLI tools, unit tests) every recording function is a no-op.

    The hot path: every recording function takes label values from a small fixed set (a
    listener's name, a code, a word from our own vocabulary; never client data) and keeps
    the bound child per label tuple in a dict, so a message costs dict lookups and mmap
    writes, no string formatting. One plain message (connect, one accepted message,
    disconnect) costs 4 writes: connection counter, session gauge up and down, accepted
    counter. A RCPT refused costs 1. The queue manager: 1 per recipient result, 2 more per
    delivered recipient (the latency histogram), 1 per message removed or deferred. The
    content filters: 3 per filter that ran (result counter, latency histogram).

    Names: our own are mtaserver_*. Where a metric means what one of kumina/postfix_exporter's
    means (existing Grafana dashboards use them), the same numbers are also given under that
    name, derived at scrape time from ours (no second write on the hot path):

      postfix_smtpd_connects_total                  sum of mtaserver_smtpd_connections_total
      postfix_smtpd_disconnects_total               connections minus the sessions open now
      postfix_smtpd_tls_connections_total{trust,protocol,cipher,secret_bits,algorithm_bits}
                                                    mtaserver_smtpd_tls_connections_total (trust:
                                                    Anonymous, no client certificates are asked)
      postfix_smtpd_sasl_authentication_failures_total  mtaserver_smtpd_auth_total{result="failure"}
      postfix_smtpd_messages_processed_total{sasl_method}  mtaserver_smtpd_messages_accepted_total
      postfix_smtpd_messages_rejected_total{code}   mtaserver_smtpd_rejects_total{stage="rcpt"} (Postfix
                                                    counts its "NOQUEUE: reject: RCPT" lines)
      postfix_qmgr_messages_removed_total           mtaserver_queue_messages_removed_total
      postfix_qmgr_messages_expired_total           mtaserver_queue_messages_expired_total
      postfix_bounce_non_delivery_notification_total  mtaserver_dsn_total{kind="bounce"}

    Not given under postfix_exporter names, as they would not mean the same: the
    postfix_smtp_delivery_delay_seconds{stage} split (Postfix's four delays= stages; ours is
    the whole delay), postfix_smtp_messages_processed_total (the smtp transport only; ours
    counts every transport), postfix_showq_* (a histogram over every queued message needs a
    stat per file at each scrape; mtaserver_queue_messages and _oldest_age_seconds come from
    directory listings).

    Gauges: mtaserver_smtpd_sessions is `livesum` (open sessions: the live processes' sum; a
    dead worker's sessions are gone with it). The queue gauges are computed by the process
    that renders, so no multiprocess mode applies.

SECURITY
    Label values never come from a client: listener names and filter names are the
    administrator's or ours, reasons are mapped to a fixed set (`reason_label`), TLS protocol
    and cipher are what our own TLS context negotiated. The directory holds numbers only; it is
    made 0700 (`directory_for`: /dev/shm/mtaserver-<hash of data_dir>, else data_dir/metrics)
    and belongs to server.user.

CONFIG
    server.data_dir (the metrics directory is named after it: directory_for), server.listeners[].name
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("master")

# -- the definitions ---------------------------------------------------------------------------
# (kind, name, help, labels[, extra]) -- the one table of every metric; `setup` builds them.

DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 432000.0)
FILTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

DEFINITIONS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("counter", "mtaserver_smtpd_connections", "SMTP connections accepted, per listener.", ("listener",)),
    ("gauge", "mtaserver_smtpd_sessions", "SMTP sessions open now, per listener (sum over the live workers).", ("listener",)),
    ("counter", "mtaserver_smtpd_tls_connections",
     "TLS sessions established (STARTTLS or an implicit-TLS listener), per listener, protocol, cipher and its bits.",
     ("listener", "protocol", "cipher", "bits")),
    ("counter", "mtaserver_smtpd_auth", "SMTP AUTH attempts by mechanism and result (success, failure, tempfail).",
     ("mechanism", "result")),
    ("counter", "mtaserver_smtpd_messages_accepted",
     "Messages queued by SMTP sessions (answered 250 after the commit), by SASL mechanism ('' when not authenticated).",
     ("sasl_method",)),
    ("counter", "mtaserver_smtpd_rejects",
     "Refusals sent to SMTP clients (4xx and 5xx) by stage (connect, mail, rcpt, data), reply code and reason.",
     ("stage", "code", "reason")),
    ("counter", "mtaserver_postscreen_results",
     ("postscreen results per test and result: pass, the action taken on a failure (drop, enforce; ignore = what "
      "would have been blocked), and the cache, access list, hangup and conclusion outcomes."),
     ("test", "result")),
    ("counter", "mtaserver_filter_results", "Content filter results per filter (clean, virus, spam, blocked, ...).",
     ("filter", "result")),
    ("histogram", "mtaserver_filter_duration_seconds", "Time each content filter took per message.", ("filter",)),
    ("counter", "mtaserver_filter_errors",
     "Content filters that gave no verdict (scanner unreachable, error, timeout), per filter; their on_error applied.",
     ("filter", "kind")),
    ("counter", "mtaserver_dns_errors", "DNS lookups that failed temporarily (SERVFAIL, refused, timeout), by type.",
     ("qtype", "kind")),
    ("counter", "mtaserver_delivery_recipients",
     "Recipient delivery results (sent, deferred, bounced, expired): one per recipient per attempt.", ("status",)),
    ("histogram", "mtaserver_delivery_delay_seconds", "Time from arrival to delivery, per delivered recipient.", ()),
    ("counter", "mtaserver_queue_messages_deferred", "Messages moved to the deferred queue after an attempt.", ()),
    ("counter", "mtaserver_queue_messages_removed", "Messages removed from the queue: every recipient done.", ()),
    ("counter", "mtaserver_queue_messages_expired", "Messages whose remaining recipients expired (returned to sender).", ()),
    ("counter", "mtaserver_dsn", "Notifications queued to senders: bounce (non-delivery) or delay.", ("kind",)),
)

QUEUES = ("incoming", "active", "deferred", "hold", "corrupt")

# -- the reason label --------------------------------------------------------------------------

_REASONS = {
    "reject_unauth_destination": "relay_denied",
    "reject_unlisted_recipient": "unknown_recipient",
    "reject_unlisted_sender": "unknown_sender",
    "reject_non_fqdn_recipient": "non_fqdn",
    "reject_non_fqdn_sender": "non_fqdn",
    "reject_unknown_client_hostname": "unknown_client",
    "reject_unknown_reverse_client_hostname": "unknown_client",
    "reject_unknown_helo_hostname": "unknown_helo",
    "reject_unknown_sender_domain": "unknown_sender_domain",
    "reject_authenticated_sender_login_mismatch": "login_mismatch",
    "reject_unauthenticated_sender_login_mismatch": "login_mismatch",
    "postscreen": "postscreen",
    "connection rate": "rate_limit",
    "too many connections": "rate_limit",
}
REASONS = frozenset(_REASONS.values()) | {"spam", "virus", "content", "data_format", "queue_error", "no_space", "policy"}


def reason_label(reason: str, fallback: str = "policy") -> str:
    """The short, fixed-set label for a verdict's reason (free text, which may hold client data);
    `fallback` for any other reason: policy (a restriction) or content (a DATA-END filter)."""
    hit = _REASONS.get(reason)
    if hit is not None:
        return hit
    head = reason.split(" ", 1)[0].rstrip(":")
    if head in _REASONS:  # "reject_... (defer_if_permit)"
        return _REASONS[head]
    if head in ("spam", "virus"):  # the content filters' reasons: "spam: ...", "virus <name>"
        return head
    return fallback


# -- state (set by `setup`; None: recording is off) --------------------------------------------

_m: dict[str, Any] | None = None  # name -> metric family
_children: dict[tuple[Any, ...], Any] = {}  # (name, *labels) -> the bound child
_dir: Path | None = None
_queue_root: Path | None = None


SHM = Path("/dev/shm")


def directory_for(data_dir: Path, shm: Path = SHM) -> Path:
    """Where this instance's metrics files live: a directory of its own on /dev/shm (tmpfs), named
    after data_dir, so that a full spool disk never fails a metric write (a write into an mmap'ed
    page the disk cannot back is a SIGBUS, not an error); data_dir/metrics when /dev/shm is not
    there or the name is taken by something that is not ours (another user's, a link)."""
    fallback = Path(data_dir) / "metrics"
    if not shm.is_dir() or not os.access(shm, os.W_OK | os.X_OK):
        return fallback
    tag = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    path = shm / f"mtaserver-{tag}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700:
        return path
    log.warning("metrics: %s is not a directory of ours (mode 0700): using %s instead", path, fallback)
    return fallback


def setup(directory: Path, queue_root: Path | None = None) -> None:
    """Start recording: empty `directory`, point prometheus-client at it and define the metrics.
    Call once, before any worker is forked (the library must be imported after the variable
    is set: it chooses its multiprocess value class at import)."""
    global _m, _dir, _queue_root
    directory = Path(directory)
    if directory.is_symlink():  # root empties it at start (as the mail user, app.py): never through a link
        raise OSError(f"{directory} is a symbolic link: remove it")
    if directory.is_dir():
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import Counter, Gauge, Histogram, values

    if not getattr(values.ValueClass, "_multiprocess", False):  # imported before the variable was set
        values.ValueClass = values.MultiProcessValue()
    fams: dict[str, Any] = {}
    for kind, name, help_text, labels in DEFINITIONS:
        if kind == "counter":
            fams[name] = Counter(name, help_text, labels, registry=None)
        elif kind == "gauge":
            fams[name] = Gauge(name, help_text, labels, registry=None, multiprocess_mode="livesum")
        else:
            buckets = DELIVERY_BUCKETS if name == "mtaserver_delivery_delay_seconds" else FILTER_BUCKETS
            fams[name] = Histogram(name, help_text, labels, registry=None, buckets=buckets)
    _children.clear()
    _dir, _queue_root, _m = directory, queue_root, fams


def _child(name: str, *labels: Any) -> Any:
    key = (name, *labels)
    c = _children.get(key)
    if c is None:
        assert _m is not None
        fam = _m[name]
        c = _children[key] = fam.labels(*(str(x) for x in labels)) if labels else fam
    return c


def teardown() -> None:
    """The server stops: its metrics directory goes if it is the one on tmpfs (memory, not disk)."""
    global _m
    if _dir is None or _dir.parent != SHM:
        return
    _m = None
    try:
        if _dir.is_dir() and not _dir.is_symlink():
            shutil.rmtree(_dir)
    except OSError as exc:
        log.warning("metrics: %s not removed: %s", _dir, exc)


def process_dead(pid: int) -> None:
    """A worker was reaped: its live gauges no longer count (its counters do)."""
    if _m is None or _dir is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(_dir))


# -- recording (each a no-op before setup) -----------------------------------------------------

_last_failure = 0.0


def _guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """A metric that cannot be recorded (its file cannot be created or grown: ENOSPC, EMFILE)
    costs that one number, never the session or the delivery that records it; logged at most
    once a minute."""

    @functools.wraps(fn)
    def record(*args: Any, **kwargs: Any) -> None:
        global _last_failure
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001  (counting must never break mail)
            now = time.monotonic()
            if now - _last_failure > 60:
                _last_failure = now
                log.warning("metrics: %s not recorded: %s", fn.__name__, exc)

    return record



@_guarded
def connected(listener: Any, transport: Any = None) -> None:
    """An SMTP connection was accepted on `listener` (a config Listener); an implicit-TLS one
    counts as a TLS session too."""
    if _m is None:
        return
    name = listener.name
    _child("mtaserver_smtpd_connections", name).inc()
    _child("mtaserver_smtpd_sessions", name).inc()
    if listener.tls == "implicit" and transport is not None:
        tls_established(name, transport.get_extra_info("ssl_object"))


@_guarded
def disconnected(listener: Any) -> None:
    if _m is None:
        return
    _child("mtaserver_smtpd_sessions", listener.name).dec()


@_guarded
def tls_established(listener: str, ssl_obj: Any) -> None:
    if _m is None or ssl_obj is None:
        return
    cipher = ssl_obj.cipher() or ("?", "?", 0)
    _child("mtaserver_smtpd_tls_connections", listener, ssl_obj.version() or "?", cipher[0], cipher[2]).inc()


@_guarded
def auth(mechanism: str, result: str) -> None:
    """result: success, failure or tempfail; `mechanism` is one the engine knows (PLAIN, LOGIN)."""
    if _m is None:
        return
    _child("mtaserver_smtpd_auth", mechanism, result).inc()


@_guarded
def accepted(sasl_method: str) -> None:
    if _m is None:
        return
    _child("mtaserver_smtpd_messages_accepted", sasl_method).inc()


@_guarded
def rejected(stage: str, code: int, reason: str) -> None:
    """A refusal sent to a client. `reason`: a verdict's reason (mapped by reason_label) or a
    label of REASONS."""
    if _m is None:
        return
    label = reason if reason in REASONS else reason_label(reason, "content" if stage == "data" else "policy")
    _child("mtaserver_smtpd_rejects", stage, code, label).inc()


@_guarded
def postscreen(test: str, result: str) -> None:
    if _m is None:
        return
    _child("mtaserver_postscreen_results", test, result).inc()


@_guarded
def filter_steps(trail: Iterable[dict[str, Any]]) -> None:
    """The decision trail of one message: each filter's result and time."""
    if _m is None:
        return
    for step in trail:
        f = step["filter"]
        _child("mtaserver_filter_results", f, step["result"]).inc()
        _child("mtaserver_filter_duration_seconds", f).observe(step["ms"] / 1000.0)


@_guarded
def filter_error(filter_name: str, kind: str) -> None:
    if _m is None:
        return
    _child("mtaserver_filter_errors", filter_name, kind).inc()


@_guarded
def dns_error(qtype: str, kind: str) -> None:
    if _m is None:
        return
    _child("mtaserver_dns_errors", qtype, kind).inc()


@_guarded
def delivery(status: str, delay: float) -> None:
    """One recipient's result (sent, deferred, bounced, expired); `delay` since arrival."""
    if _m is None:
        return
    _child("mtaserver_delivery_recipients", status).inc()
    if status == "sent":
        _child("mtaserver_delivery_delay_seconds").observe(delay)


@_guarded
def queue_event(event: str) -> None:
    """A message left the queue (removed), expired, or went to deferred/."""
    if _m is None:
        return
    _child(f"mtaserver_queue_messages_{event}").inc()


@_guarded
def dsn(kind: str) -> None:
    if _m is None:
        return
    _child("mtaserver_dsn", kind).inc()


# -- rendering ---------------------------------------------------------------------------------


def render(queue_root: Path | None = None) -> bytes:
    """The Prometheus text format: every process's metrics summed, the postfix_exporter names,
    and the queue depth counted now. Before `setup`: the queue gauges only."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(queue_root or _queue_root))
    return generate_latest(registry)


class _Collector:
    def __init__(self, queue_root: Path | None) -> None:
        self.queue_root = queue_root

    def collect(self) -> Iterator[Any]:
        fams: list[Any] = []
        if _m is not None and _dir is not None:
            from prometheus_client.metrics_core import Metric
            from prometheus_client.multiprocess import MultiProcessCollector

            fams = list(MultiProcessCollector(None, str(_dir)).collect())
            by_name = {f.name: f for f in fams}
            for kind, name, help_text, _labels in DEFINITIONS:  # nothing written yet: its HELP, no samples
                if name not in by_name:
                    fams.append(Metric(name, help_text, kind))
        yield from fams
        yield from postfix_aliases(fams)
        if self.queue_root is not None:
            yield from queue_gauges(self.queue_root)


def _samples(fams: Iterable[Any], family: str, sample: str) -> Iterator[tuple[dict[str, str], float]]:
    for f in fams:
        if f.name == family:
            for s in f.samples:
                if s.name == sample:
                    yield s.labels, s.value


def _sum_by(
    fams: Iterable[Any], family: str, sample: str, keys: tuple[str, ...], where: dict[str, str] | None = None
) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for labels, value in _samples(fams, family, sample):
        if where and any(labels.get(k) != v for k, v in where.items()):
            continue
        key = tuple(labels.get(k, "") for k in keys)
        out[key] = out.get(key, 0.0) + value
    return out


def postfix_aliases(fams: list[Any]) -> list[Any]:
    """postfix_exporter's names for what means the same here (see the module docstring)."""
    from prometheus_client.core import CounterMetricFamily

    def counter(name: str, help_text: str, labels: tuple[str, ...], values: dict[tuple[str, ...], float]) -> Any:
        c = CounterMetricFamily(name, help_text, labels=labels)
        for key, value in sorted(values.items()):
            c.add_metric(list(key), value)
        return c

    def total(family: str, where: dict[str, str] | None = None) -> dict[tuple[str, ...], float]:
        return {(): sum(_sum_by(fams, family, family + "_total", (), where).values())}

    connects = total("mtaserver_smtpd_connections")[()]
    open_now = sum(v for _, v in _samples(fams, "mtaserver_smtpd_sessions", "mtaserver_smtpd_sessions"))
    tls_name = "mtaserver_smtpd_tls_connections"
    tls = _sum_by(fams, tls_name, tls_name + "_total", ("protocol", "cipher", "bits"))
    return [
        counter("postfix_smtpd_connects_total", "Total number of incoming connections.", (), {(): connects}),
        counter("postfix_smtpd_disconnects_total", "Total number of incoming disconnections.", (),
                {(): max(connects - open_now, 0.0)}),
        counter("postfix_smtpd_tls_connections_total", "Total number of incoming TLS connections.",
                ("trust", "protocol", "cipher", "secret_bits", "algorithm_bits"),
                {("Anonymous", p, c, b, b): v for (p, c, b), v in tls.items()}),
        counter("postfix_smtpd_sasl_authentication_failures_total", "Total number of SASL authentication failures.", (),
                total("mtaserver_smtpd_auth", {"result": "failure"})),
        counter("postfix_smtpd_messages_processed_total", "Total number of messages processed.", ("sasl_method",),
                _sum_by(fams, "mtaserver_smtpd_messages_accepted", "mtaserver_smtpd_messages_accepted_total", ("sasl_method",))),
        counter("postfix_smtpd_messages_rejected_total", "Total number of NOQUEUE rejects.", ("code",),
                _sum_by(fams, "mtaserver_smtpd_rejects", "mtaserver_smtpd_rejects_total", ("code",), {"stage": "rcpt"})),
        counter("postfix_qmgr_messages_removed_total", "Total number of messages removed from mail queues.", (),
                total("mtaserver_queue_messages_removed")),
        counter("postfix_qmgr_messages_expired_total", "Total number of messages expired from mail queues.", (),
                total("mtaserver_queue_messages_expired")),
        counter("postfix_bounce_non_delivery_notification_total", "Total number of non delivery notification sent by bounce.", (),
                total("mtaserver_dsn", {"kind": "bounce"})),
    ]


def queue_gauges(queue_root: Path, now: float | None = None) -> list[Any]:
    """Messages per queue and the age of the oldest, from directory listings (names only: no
    file is opened or stat'd; the queue id holds the arrival time)."""
    import time

    from prometheus_client.core import GaugeMetricFamily

    from ..queue.ops import id_time
    from ..queue.store import is_queue_id

    now = time.time() if now is None else now
    depth = GaugeMetricFamily("mtaserver_queue_messages", "Messages per queue now (counted at scrape time).", labels=["queue"])
    oldest = GaugeMetricFamily(
        "mtaserver_queue_oldest_age_seconds", "Age of the oldest message in each queue (0: empty).", labels=("queue",)
    )
    for q in QUEUES:
        try:
            names = os.listdir(queue_root / q)
        except FileNotFoundError:
            names = []
        depth.add_metric([q], len(names))
        first = min(names) if names else ""
        oldest.add_metric([q], max(now - id_time(first), 0.0) if is_queue_id(first) else 0.0)
    return [depth, oldest]
