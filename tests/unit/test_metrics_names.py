"""The metrics' pure parts: the reason label's fixed set, the postfix_exporter names derived from
ours, the queue gauges from directory listings (ids carry the arrival time), the definitions."""

from __future__ import annotations

import re

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mtaserver.admin import metrics as M
from mtaserver.queue.store import QueueIdGenerator


@pytest.mark.parametrize(
    ("reason", "fallback", "label"),
    [
        ("reject_unauth_destination", "policy", "relay_denied"),
        ("reject_unlisted_recipient", "policy", "unknown_recipient"),
        ("reject_unknown_sender_domain (defer_if_permit)", "policy", "unknown_sender_domain"),
        ("postscreen", "policy", "postscreen"),
        ("connection rate", "policy", "rate_limit"),
        ("spam: 7.2/5.0 (kill 10.0)", "content", "spam"),
        ("virus Eicar-Signature", "content", "virus"),
        ('blocked attachment "<script>evil.exe"', "content", "content"),  # client text never becomes a label
        ("some hook's own words with {braces}", "policy", "policy"),
        ("", "policy", "policy"),
    ],
)
def test_reason_label_is_from_a_fixed_set(reason, fallback, label):
    assert M.reason_label(reason, fallback) == label
    assert label in M.REASONS


def test_definitions_are_unique_well_formed_and_documented():
    names = [d[1] for d in M.DEFINITIONS]
    assert len(names) == len(set(names))
    for kind, name, help_text, labels in M.DEFINITIONS:
        assert kind in ("counter", "gauge", "histogram")
        assert re.fullmatch(r"mtaserver_[a-z_]+", name) and not name.endswith("_total"), name
        assert help_text.endswith(".") and len(help_text) > 20, name
        assert all(re.fullmatch(r"[a-z_]+", x) for x in labels), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name


def _counter(name: str, labels: tuple[str, ...], rows: list[tuple[list[str], float]]) -> CounterMetricFamily:
    c = CounterMetricFamily(name, "x", labels=labels)
    for values, v in rows:
        c.add_metric(values, v)
    return c


def _gauge(name: str, labels: tuple[str, ...], rows: list[tuple[list[str], float]]) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, "x", labels=labels)
    for values, v in rows:
        g.add_metric(values, v)
    return g


def _aliases(fams: list) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict] = {}
    for f in M.postfix_aliases(fams):
        for s in f.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_postfix_names_are_sums_of_ours():
    fams = [
        _counter("mtaserver_smtpd_connections", ("listener",), [(["smtp"], 10), (["submission"], 5)]),
        _gauge("mtaserver_smtpd_sessions", ("listener",), [(["smtp"], 2), (["submission"], 1)]),
        _counter("mtaserver_smtpd_rejects", ("stage", "code", "reason"), [
            (["rcpt", "554", "relay_denied"], 4), (["rcpt", "550", "unknown_recipient"], 3),
            (["rcpt", "550", "postscreen"], 1), (["data", "550", "content"], 7), (["mail", "452", "no_space"], 2),
        ]),
        _counter("mtaserver_smtpd_messages_accepted", ("sasl_method",), [([""], 20), (["PLAIN"], 3)]),
        _counter("mtaserver_smtpd_auth", ("mechanism", "result"), [(["PLAIN", "failure"], 2), (["LOGIN", "failure"], 1),
                                                                     (["PLAIN", "success"], 3)]),
        _counter("mtaserver_smtpd_tls_connections", ("listener", "protocol", "cipher", "bits"), [
            (["smtp", "TLSv1.3", "TLS_AES_256_GCM_SHA384", "256"], 4),
            (["submission", "TLSv1.3", "TLS_AES_256_GCM_SHA384", "256"], 2),
        ]),
        _counter("mtaserver_queue_messages_removed", (), [([], 17)]),
        _counter("mtaserver_dsn", ("kind",), [(["bounce"], 2), (["delay"], 5)]),
    ]
    a = _aliases(fams)
    assert a["postfix_smtpd_connects_total"] == {(): 15}
    assert a["postfix_smtpd_disconnects_total"] == {(): 12}  # three are open now
    assert a["postfix_smtpd_messages_rejected_total"] == {(("code", "554"),): 4, (("code", "550"),): 4}  # RCPT only
    assert a["postfix_smtpd_messages_processed_total"] == {(("sasl_method", ""),): 20, (("sasl_method", "PLAIN"),): 3}
    assert a["postfix_smtpd_sasl_authentication_failures_total"] == {(): 3}
    assert a["postfix_smtpd_tls_connections_total"] == {
        (("algorithm_bits", "256"), ("cipher", "TLS_AES_256_GCM_SHA384"), ("protocol", "TLSv1.3"), ("secret_bits", "256"),
         ("trust", "Anonymous")): 6,
    }
    assert a["postfix_qmgr_messages_removed_total"] == {(): 17}
    assert a["postfix_qmgr_messages_expired_total"] == {(): 0}
    assert a["postfix_bounce_non_delivery_notification_total"] == {(): 2}


def test_postfix_names_exist_before_anything_happened():
    a = _aliases([])
    assert a["postfix_smtpd_connects_total"] == {(): 0}
    assert "postfix_smtpd_messages_rejected_total" not in a  # a labelled family with no sample yet
    assert {f.name for f in M.postfix_aliases([])} >= {"postfix_smtpd_messages_rejected", "postfix_smtpd_tls_connections"}


def test_queue_gauges_count_names_and_date_the_oldest_by_its_id(tmp_path):
    now = 1_800_000_000.0
    ids = QueueIdGenerator(pid=42, clock=lambda: now - 3600)
    for q in M.QUEUES:
        (tmp_path / q).mkdir()
    for _ in range(3):
        (tmp_path / "deferred" / ids.next()).write_bytes(b"")
    later = QueueIdGenerator(pid=42, clock=lambda: now - 10)
    (tmp_path / "deferred" / later.next()).write_bytes(b"")
    (tmp_path / "incoming" / later.next()).write_bytes(b"")
    (tmp_path / "hold").rmdir()  # a missing directory counts as empty
    depth, oldest = M.queue_gauges(tmp_path, now=now)
    counts = {s.labels["queue"]: s.value for s in depth.samples}
    assert counts == {"incoming": 1, "active": 0, "deferred": 4, "hold": 0, "corrupt": 0}
    ages = {s.labels["queue"]: s.value for s in oldest.samples}
    assert ages["deferred"] == pytest.approx(3600, abs=0.01)
    assert ages["incoming"] == pytest.approx(10, abs=0.01)
    assert ages["active"] == 0


def test_recording_before_setup_does_nothing():
    assert M._m is None  # unit tests never start the multiprocess mode
    M.connected(type("L", (), {"name": "smtp", "tls": "none"})())
    M.rejected("rcpt", 554, "reject_unauth_destination")
    M.filter_steps([{"filter": "antivirus", "result": "clean", "ms": 3.0}])
    M.delivery("sent", 1.0)
    assert M._children == {}


def test_a_metric_that_cannot_be_recorded_never_breaks_the_caller(tmp_path):
    from mtaserver.admin import metrics

    def full_disk() -> None:
        raise OSError(28, "No space left on device")

    assert metrics._guarded(full_disk)() is None


def test_the_metrics_directory_is_on_tmpfs_and_only_ever_ours(tmp_path):
    import os

    from mtaserver.admin import metrics

    shm = tmp_path / "shm"
    shm.mkdir()
    data = tmp_path / "var"
    mine = metrics.directory_for(data, shm)
    assert mine.parent == shm and mine.name.startswith("mtaserver-")
    assert metrics.directory_for(data, shm) == mine, "the same data_dir, the same directory"
    mine.symlink_to(tmp_path)  # planted by someone else: not followed
    assert metrics.directory_for(data, shm) == data / "metrics"
    mine.unlink()
    mine.mkdir(mode=0o755)
    os.chmod(mine, 0o755)
    assert metrics.directory_for(data, shm) == data / "metrics", "not 0700: not ours"
    os.chmod(mine, 0o700)
    assert metrics.directory_for(data, shm) == mine
