"""Worker processes and signals: SO_REUSEPORT workers, SIGHUP reload (refused when invalid),
SIGTERM graceful stop, a dead worker restarted."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from smtpclient import TRUSTED, UNTRUSTED, SmtpClient, queue_id_of, wait_for, wait_for_log

from conftest import _children


def pids_of(log: str, text: str) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"mtaserver/\w+\[(\d+)\]: " + re.escape(text), log)}


def one_message(port: int, subject: bytes = b"t", source: str = TRUSTED) -> str:
    with SmtpClient(port, source).hello() as c:
        qid = queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: " + subject + b"\r\n\r\nx\r\n"))
        c.expect("QUIT", 221)
    return qid


def test_two_workers_share_the_listener(make_mta):
    mta = make_mta({"server": {"workers": 2}})
    wait_for_log(mta, "worker 1 ready")
    sources = [f"127.0.0.{i}" for i in range(1, 9)]
    qids = [one_message(mta.port, b"%d" % i, source=src) for i, src in enumerate(sources * 3)]
    assert mta.queued() == sorted(qids) and len(set(qids)) == 24
    log = wait_for_log(mta, "disconnect from")
    served_by = {src: pids_of(log, f"connect from unknown[{src}]") for src in sources}
    children = set(_children(mta.proc.pid))
    workers = set().union(*served_by.values())
    assert len(workers) == 2, served_by  # eight addresses: both workers serve
    assert workers <= children and mta.proc.pid not in workers  # the supervisor serves nothing
    # all connections of one client IP go to one worker, so per-IP state is whole in it
    assert all(len(p) == 1 for p in served_by.values()), served_by


def test_connections_per_ip_holds_across_workers(make_mta):
    mta = make_mta({"server": {"workers": 2, "limits": {"connections_per_ip": 2}}})
    wait_for_log(mta, "worker 1 ready")
    clients = []
    try:
        for src in (UNTRUSTED, "127.0.0.5"):
            mine = [SmtpClient(mta.port, src) for _ in range(5)]
            clients += mine
            codes = [c.reply().code for c in mine]
            assert codes == [220, 220, 421, 421, 421], (src, codes)
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_with_a_broken_config_keeps_the_running_one(make_mta, workers):
    mta = make_mta({"server": {"workers": workers}})
    if workers > 1:
        wait_for_log(mta, "worker 1 ready")
    good = dict(mta.config)
    broken = {**good, "server": {**good["server"], "workers": "lots", "banner": "{hostname} ESMTP broken"}}
    mta.write_config(broken)
    text = mta.config_path.read_text()
    line = next(i for i, x in enumerate(text.splitlines(), 1) if x.strip().startswith("workers:"))
    mta.signal(signal.SIGHUP)
    log = wait_for_log(mta, "reload refused:")
    assert re.search(rf"reload refused: {re.escape(str(mta.config_path))}:{line}: server\.workers: \S", log), log
    time.sleep(0.2)
    assert "reload: applied from" not in mta.log()
    # still serving, with the old settings
    for _ in range(4):
        with SmtpClient(mta.port) as c:
            assert c.reply().line == "220 mx.example.test ESMTP mtaserver"
    one_message(mta.port)
    assert mta.proc.poll() is None


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_applies_a_valid_change_to_new_connections(make_mta, workers):
    mta = make_mta({"server": {"workers": workers}})
    if workers > 1:
        wait_for_log(mta, "worker 1 ready")
    old = SmtpClient(mta.port)  # connected before the reload
    try:
        assert old.reply().line == "220 mx.example.test ESMTP mtaserver"
        cfg = dict(mta.config)
        cfg["server"] = {**cfg["server"], "banner": "{hostname} ESMTP reloaded"}
        cfg["advanced"] = {"max_message_size": 5000}
        mta.write_config(cfg)
        mta.signal(signal.SIGHUP)
        processes = 1 if workers == 1 else workers + 1  # the queue manager process reloads too
        wait_for(lambda: mta.log().count("reload: applied from") >= processes, 5, "every process to reload")
        for _ in range(6):  # whichever worker takes the connection
            with SmtpClient(mta.port) as c:
                assert c.reply().line == "220 mx.example.test ESMTP reloaded"
                assert "SIZE 5000" in c.ehlo().lines
        # a session keeps the config it started with
        assert "SIZE 10240000" in old.ehlo().lines
    finally:
        old.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_says_421_to_idle_sessions_and_exits_0(make_mta, workers):
    mta = make_mta({"server": {"workers": workers}})
    if workers > 1:
        wait_for_log(mta, "worker 1 ready")
    clients = [SmtpClient(mta.port, src) for src in (TRUSTED, UNTRUSTED, TRUSTED, UNTRUSTED)]
    try:
        for c in clients:
            c.greeting()
            c.ehlo()
        clients[1].expect("MAIL FROM:<s@client.test>", 250)  # idle, but inside a transaction
        proc = mta.proc
        mta.signal(signal.SIGTERM)
        for c in clients:
            assert c.reply().line == "421 4.3.2 mx.example.test Service shutting down, closing transmission channel"
            assert c.closed_by_server(5)
        assert proc.wait(10) == 0
    finally:
        for c in clients:
            c.close()
    mta.proc = None
    assert mta.queued() == [] and mta.queued("tmp") == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", mta.port), timeout=2).close()
    wait_for_log(mta, "mtaserver stopped")


def test_sigterm_lets_a_message_in_progress_finish(make_mta):
    mta = make_mta()
    with SmtpClient(mta.port, UNTRUSTED).hello() as c:
        c.open_data()
        c.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        proc = mta.proc
        mta.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None  # waiting for us
        c.send(b"second half\r\n.\r\n")
        qid = queue_id_of(c.reply())
        assert c.reply().line == "421 4.3.2 mx.example.test Service shutting down, closing transmission channel"
        assert c.closed_by_server(5)
    assert proc.wait(10) == 0
    mta.proc = None
    assert mta.queued() == [qid]
    assert mta.body(qid).endswith(b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n")


def test_a_killed_worker_is_restarted(make_mta):
    mta = make_mta({"server": {"workers": 2}})
    wait_for_log(mta, "worker 0 ready")  # the workers start in either order
    wait_for_log(mta, "worker 1 ready")
    one_message(mta.port)
    log = mta.log()
    worker_pids = {int(m.group(1)) for m in re.finditer(r"mtaserver/master\[(\d+)\]: worker \d ready", log)}
    assert len(worker_pids) == 2
    victim = min(worker_pids)
    os.kill(victim, signal.SIGKILL)
    wait_for_log(mta, f"(pid {victim}) exited with status 9; restarting")
    wait_for(lambda: mta.log().count("ready: smtp=") >= 3, 5, "the replacement worker")
    # every connection is served while and after the worker is replaced
    qids = [one_message(mta.port, b"%d" % i) for i in range(12)]
    assert set(qids) <= set(mta.queued())
    alive = set(_children(mta.proc.pid))
    assert victim not in alive and len(alive) == 3  # two workers and the queue manager process


def _start_unready(make_mta, overrides):
    """Start the process and return as soon as the supervisor is forking its workers."""
    mta = make_mta(overrides, start=False)
    logf = open(mta.log_path, "ab")
    mta.proc = subprocess.Popen([sys.executable, "-m", "mtaserver", "run", "-c", str(mta.config_path)],
                                stdout=logf, stderr=subprocess.STDOUT, cwd=mta.tmp)  # fmt: skip
    logf.close()
    deadline = time.monotonic() + 10
    while "mtaserver starting:" not in mta.log():  # polled fast: the forks follow within milliseconds
        assert time.monotonic() < deadline and mta.proc.poll() is None, mta.log()
        time.sleep(0.001)
    return mta


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.003, 0.01, 0.03])
def test_sigterm_during_start_up_stops_every_process(make_mta, delay):
    """A SIGTERM that arrives while the supervisor forks must reach every worker: none may
    run the supervisor's handler itself, and none may be started after it."""
    mta = _start_unready(make_mta, {"server": {"workers": 2}})
    time.sleep(delay)
    proc = mta.proc
    mta.signal(signal.SIGTERM)
    try:
        assert proc.wait(10) == 0
    finally:
        for pid in _children(proc.pid):  # do not leave a stray worker behind if it failed
            os.kill(pid, signal.SIGKILL)
    mta.proc = None


def test_ipv6_listener_with_two_workers(make_mta):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no ::1")
    mta = make_mta({"server": {"workers": 2}}, start=False)
    mta.config["server"]["listeners"].append({"name": "v6", "address": f"[::1]:{mta.port}"})
    mta.write_config()
    mta.start()
    wait_for_log(mta, "worker 1 ready")
    for _ in range(6):
        with SmtpClient(mta.port, "::1", host="::1") as c:
            assert c.reply().line == "220 mx.example.test ESMTP mtaserver"
            c.ehlo()
            c.expect("MAIL FROM:<s@client.test>", 250)
            assert c.cmd("RCPT TO:<a@remote.test>").line == "554 5.7.1 <a@remote.test>: Relay access denied"  # ::1 is not in mynetworks here
    log = wait_for_log(mta, "disconnect from unknown[::1]")
    assert len(pids_of(log, "connect from unknown[::1]")) == 1  # one client address, one worker
    assert "cannot steer" not in log
