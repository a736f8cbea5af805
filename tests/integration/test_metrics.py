"""GET /metrics on the admin listener against a running server: the counters add up to what a load
sent, with one process and with two SMTP workers (summed over the processes, a killed worker's
numbers kept); the queue depth is the spool's; delivery results; the postfix_exporter names."""

from __future__ import annotations

import base64
import os
import re
import signal
import urllib.request

import pytest
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families
from smtpclient import (
    TRUSTED,
    UNTRUSTED,
    UNTRUSTED2,
    SmtpClient,
    queue_id_of,
    wait_for,
    wait_for_log,
)

pytestmark = pytest.mark.integration

QUIET = {"notify_admin": False, "notify_recipient": False}
CONTENT_RULE = {"inbound": {"blocked_extensions": ["exe"], **QUIET}}


def scrape(mta) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics (no token: the admin listener is on loopback) by (name, labels)."""
    with urllib.request.urlopen(mta.admin_url + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **where: str) -> float:
    """The sum of `name`'s samples whose labels include `where`."""
    return sum(v for (n, labels), v in samples.items() if n == name and all((k, w) in labels for k, w in where.items()))


def plain(subject: str) -> bytes:
    return f"From: s@client.test\r\nTo: a@example.test\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()


def with_exe() -> bytes:
    data = base64.encodebytes(b"MZ\x90\x00 not really a program").replace(b"\n", b"\r\n")
    return (b"From: s@client.test\r\nTo: a@example.test\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="=_b"\r\n\r\n--=_b\r\nContent-Type: text/plain\r\n\r\nsee\r\n'
            b'--=_b\r\nContent-Type: application/octet-stream; name="setup.exe"\r\n'
            b'Content-Disposition: attachment; filename="setup.exe"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + data + b"--=_b--\r\n")  # fmt: skip


class Load:
    """Sends mail and counts what it sent, as the server should."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0
        self.accepted: list[str] = []
        self.relay_denied = 0
        self.content_refused = 0

    def session(self, source: str, *, ok: int = 0, relay: int = 0, exe: int = 0) -> None:
        with SmtpClient(self.port, source) as c:
            self.connections += 1
            c.greeting()
            c.ehlo()
            for i in range(ok):
                self.accepted.append(queue_id_of(c.send_message("s@client.test", ["a@example.test"], plain(f"m{i}"))))
            for _ in range(relay):
                c.expect("MAIL FROM:<s@client.test>", 250)
                c.expect("RCPT TO:<someone@elsewhere.test>", 554, "5.7.1")  # relay access denied
                c.expect("RSET", 250)
                self.relay_denied += 1
            for _ in range(exe):
                r = c.send_message("s@client.test", ["a@example.test"], with_exe())
                assert (r.code, r.status) == (550, "5.7.1"), r
                self.content_refused += 1
            c.expect("QUIT", 221)

    def mixed(self, rounds: int) -> None:
        for i in range(rounds):
            self.session(f"127.0.0.{1 + i % 8}" if i % 2 else TRUSTED, ok=2)
            self.session(UNTRUSTED, relay=2)
            self.session(UNTRUSTED2, exe=1, ok=1)


def check_counts(mta, load: Load, samples: dict, *, open_sessions: int = 0) -> None:
    n_ok, n_relay, n_exe = len(load.accepted), load.relay_denied, load.content_refused
    assert total(samples, "mtaserver_smtpd_connections_total", listener="smtp") == load.connections
    assert total(samples, "postfix_smtpd_connects_total") == load.connections
    assert total(samples, "mtaserver_smtpd_sessions") == open_sessions
    assert total(samples, "mtaserver_smtpd_messages_accepted_total") == n_ok
    assert total(samples, "mtaserver_smtpd_messages_accepted_total", sasl_method="") == n_ok
    assert total(samples, "postfix_smtpd_messages_processed_total", sasl_method="") == n_ok
    assert total(samples, "mtaserver_smtpd_rejects_total", stage="rcpt", code="554", reason="relay_denied") == n_relay
    assert total(samples, "postfix_smtpd_messages_rejected_total", code="554") == n_relay
    assert total(samples, "postfix_smtpd_messages_rejected_total") == n_relay  # nothing else refused at RCPT
    assert total(samples, "mtaserver_smtpd_rejects_total", stage="data", code="550", reason="content") == n_exe
    assert total(samples, "mtaserver_smtpd_rejects_total") == n_relay + n_exe
    assert total(samples, "mtaserver_filter_results_total", filter="attachments", result="blocked") == n_exe
    ran = total(samples, "mtaserver_filter_results_total", filter="attachments")
    assert ran >= n_exe and total(samples, "mtaserver_filter_duration_seconds_count", filter="attachments") == ran
    assert total(samples, "mtaserver_filter_errors_total") == 0
    assert total(samples, "mtaserver_queue_messages", queue="incoming") == len(mta.queued("incoming")) == n_ok
    assert total(samples, "mtaserver_queue_messages", queue="deferred") == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_counters_add_up_to_the_load(make_mta, workers):
    mta = make_mta({"server": {"workers": workers}, **CONTENT_RULE})
    if workers > 1:
        wait_for_log(mta, "worker 1 ready")
    load = Load(mta.port)
    load.mixed(4)
    # Scraped during the load: one session is open, and the numbers so far add up.
    with SmtpClient(mta.port, TRUSTED) as idle:
        load.connections += 1
        idle.greeting()
        wait_for(lambda: total(scrape(mta), "mtaserver_smtpd_sessions") == 1, what="only the idle session open")
        check_counts(mta, load, scrape(mta), open_sessions=1)
        idle.expect("QUIT", 221)
    load.mixed(4)
    wait_for(lambda: total(scrape(mta), "mtaserver_smtpd_sessions") == 0, what="every session closed")
    samples = scrape(mta)
    check_counts(mta, load, samples)
    assert total(samples, "postfix_smtpd_disconnects_total") == load.connections
    assert sorted(load.accepted) == mta.queued("incoming")
    if workers > 1:  # the sums are over processes: both SMTP workers took connections
        served = set(re.findall(r"mtaserver/smtpd\[(\d+)\]: connect from", mta.log()))
        assert len(served) == 2, served
        from mtaserver.admin.metrics import directory_for

        assert len(list(directory_for(mta.data_dir).glob("counter_*.db"))) >= 2


def test_a_killed_worker_keeps_its_counts(make_mta):
    """kill -9 a worker with sessions open: its counters stay in the sums, its open sessions
    leave the gauge (the supervisor marks it dead), the restarted one counts on."""
    mta = make_mta({"server": {"workers": 2}, **CONTENT_RULE})
    wait_for_log(mta, "worker 1 ready")
    load = Load(mta.port)
    load.mixed(3)
    clients = [SmtpClient(mta.port, f"127.0.0.{i}") for i in range(1, 7)]
    try:
        for c in clients:
            c.greeting()
            load.connections += 1
        log = wait_for(lambda: mta.log() if mta.log().count("connect from") >= load.connections else None,
                       what="the connects logged")  # fmt: skip
        victim = int(re.findall(r"mtaserver/smtpd\[(\d+)\]: connect from unknown\[127\.0\.0\.[1-6]\]", log)[-1])
        wait_for(lambda: total(scrape(mta), "mtaserver_smtpd_sessions") == len(clients), what="the open sessions counted")
        os.kill(victim, signal.SIGKILL)
        exited = wait_for_log(mta, f"(pid {victim}) exited", timeout=10)
        index = re.search(rf"worker (\d+) \(pid {victim}\) exited", exited).group(1)
        wait_for(lambda: mta.log().count(f"worker {index} ready") == 2, 10.0, "the worker restarted")
    finally:
        for c in clients:
            c.close()
    load.mixed(2)
    wait_for(lambda: total(scrape(mta), "mtaserver_smtpd_sessions") == 0, what="every session closed")
    check_counts(mta, load, scrape(mta))


def test_delivery_results_and_the_queue(make_mta):
    dead = free_port()  # the relay host: nothing listens there, so remote recipients are deferred
    mta = make_mta({"queue": {"manager": True, "min_backoff": "10m", "max_backoff": "20m"},
                    "outbound": {"relay_host": f"[127.0.0.1]:{dead}"}})  # fmt: skip
    load = Load(mta.port)
    load.session(TRUSTED, ok=5)  # local: delivered to maildirs
    with SmtpClient(mta.port, TRUSTED) as c:
        c.greeting()
        c.ehlo()
        queue_id_of(c.send_message("s@client.test", ["b@example.test", "far@relay.test"], plain("two")))
        c.expect("QUIT", 221)

    def settled() -> dict | None:
        s = scrape(mta)
        removed = total(s, "mtaserver_queue_messages_removed_total")
        return s if removed == 5 and total(s, "mtaserver_queue_messages", queue="deferred") == 1 else None

    samples = wait_for(settled, 20.0, "the deliveries")
    assert total(samples, "mtaserver_smtpd_messages_accepted_total") == 6
    assert total(samples, "mtaserver_delivery_recipients_total", status="sent") == 6
    assert total(samples, "mtaserver_delivery_recipients_total", status="deferred") == 1
    assert total(samples, "mtaserver_delivery_recipients_total") == 7
    assert total(samples, "mtaserver_delivery_delay_seconds_count") == 6
    assert total(samples, "postfix_qmgr_messages_removed_total") == 5
    assert total(samples, "mtaserver_queue_messages_deferred_total") == 1
    assert total(samples, "mtaserver_queue_messages") == 1 == len(mta.queued("deferred"))
    assert total(samples, "mtaserver_queue_oldest_age_seconds", queue="deferred") >= 0


def test_every_metric_is_described_with_no_token_on_loopback(make_mta):
    mta = make_mta()
    with urllib.request.urlopen(mta.admin_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    from mtaserver.admin.metrics import DEFINITIONS

    for kind, name, _help, _labels in DEFINITIONS:
        assert f"# HELP {name}{'_total' if kind == 'counter' else ''} " in text, name
    for name in ("postfix_smtpd_connects_total", "postfix_smtpd_messages_rejected_total", "postfix_qmgr_messages_removed_total",
                 "mtaserver_queue_messages", "mtaserver_queue_oldest_age_seconds"):  # fmt: skip
        assert f"# HELP {name} " in text, name
    assert 'mtaserver_queue_messages{queue="incoming"} 0.0' in text


def test_the_tmpfs_metrics_directory_goes_with_the_server(make_mta):
    from mtaserver.admin.metrics import SHM, directory_for

    mta = make_mta()
    where = directory_for(mta.data_dir)
    assert where.parent == SHM and where.is_dir(), "the multiprocess files live on tmpfs while it runs"
    assert mta.stop() == 0
    assert not where.exists(), "a stopped server leaves nothing in /dev/shm"
