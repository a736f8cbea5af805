"""Durability: what was acknowledged with 250 survives kill -9; recovery at start leaves a
consistent queue (tmp/ swept, active/ requeued, damaged envelopes to corrupt/, orphans gone)."""

from __future__ import annotations

import os
import threading

from smtpclient import TRUSTED, SmtpClient, queue_id_of, restart, wait_for_log

from mtaserver.queue.store import TRAILER_SIZE, QueueIdGenerator, QueueStore, is_queue_id, parse_envelope

THREADS = 8
PER_THREAD = 38  # about 300 messages in all
KILL_AFTER = 100  # acknowledged messages before the kill -9


def content(t: int, i: int) -> bytes:
    return b"Subject: load %d/%d\r\nX-Load: %d-%d\r\n\r\n" % (t, i, t, i) + b"line of the body\r\n" * (20 + i)


def test_kill_9_under_load_loses_no_acknowledged_message(make_mta):
    mta = make_mta()
    acked: dict[str, tuple[int, int]] = {}
    lock = threading.Lock()
    enough = threading.Event()
    errors: list[BaseException] = []

    def load(t: int) -> None:
        try:
            with SmtpClient(mta.port, TRUSTED, timeout=10) as c:
                c.greeting()
                c.ehlo(f"load{t}.test")
                for i in range(PER_THREAD):
                    r = c.send_message(f"s{t}@client.test", [f"r{t}.{i}@example.test"], content(t, i))
                    qid = queue_id_of(r)
                    with lock:
                        acked[qid] = (t, i)
                        if len(acked) >= KILL_AFTER:
                            enough.set()
        except (OSError, AssertionError, Exception) as exc:  # the kill ends every session somewhere
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(t,), daemon=True) for t in range(THREADS)]
    for th in threads:
        th.start()
    assert enough.wait(30), f"load too slow: {len(acked)} acknowledged; errors {errors[:3]}"
    mta.kill9()
    with lock:
        snapshot = dict(acked)  # nothing can be acknowledged after the kill
    for th in threads:
        th.join(15)
    assert not any(th.is_alive() for th in threads)
    assert len(snapshot) < THREADS * PER_THREAD, "the kill came after the load had finished"
    assert acked == snapshot

    debris = {d: len(mta.queued(d)) for d in ("tmp", "incoming")}
    print("at the kill:", len(snapshot), "acknowledged;", debris)
    restart(mta)
    # every acknowledged message is queued, complete, with its envelope
    incoming = set(mta.queued("incoming"))
    missing = set(snapshot) - incoming
    assert not missing, f"acknowledged but lost: {sorted(missing)}"
    for qid, (t, i) in snapshot.items():
        env = mta.envelope(qid)
        assert env.queue_id == qid
        assert env.sender == f"s{t}@client.test"
        assert [r.address for r in env.recipients] == [f"r{t}.{i}@example.test"]
        body = mta.body(qid)
        assert env.size == len(body)
        assert body.startswith(b"Received: from load%d.test (unknown [127.0.0.1])" % t)
        assert body.endswith(content(t, i))
    # and the queue is consistent: no debris, nothing half-written
    assert mta.queued("tmp") == []
    assert mta.queued("active") == [] and mta.queued("corrupt") == []
    for qid in incoming - set(snapshot):  # sent but not acknowledged: allowed (at least once), but whole
        mta.envelope(qid)
    # and the restarted server works
    with SmtpClient(mta.port, TRUSTED).hello() as c:
        queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: after\r\n\r\nx\r\n"))


def _trailer_len(data: bytes) -> int:
    """Bytes after the content of a queue file: the envelope JSON and the fixed trailer."""
    return TRAILER_SIZE + int(data[-TRAILER_SIZE:].split()[1], 16)


def _committed_message(mta) -> str:
    with SmtpClient(mta.port, TRUSTED).hello() as c:
        return queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: t\r\n\r\nx\r\n"))


def test_recovery_at_start(make_mta):
    mta = make_mta()
    keep = _committed_message(mta)
    was_active = _committed_message(mta)
    truncated = _committed_message(mta)
    mismatched = _committed_message(mta)
    assert mta.stop() == 0
    q = mta.queue
    ids = QueueIdGenerator(pid=4242)
    garbage, renamed, orphan, junk_name = ids.next(), ids.next(), ids.next(), ids.next()
    assert all(is_queue_id(x) for x in (garbage, renamed, orphan))
    # a message the queue manager was working on when the process died
    os.rename(q / "incoming" / was_active, q / "active" / was_active)
    # a file that is not a queue file, under a valid queue id
    (q / "incoming" / garbage).write_bytes(b"\x00garbage that is not a queue file\n")
    # a queue file that lost the start of its content (its envelope and trailer are intact)
    data = (q / "incoming" / truncated).read_bytes()
    (q / "incoming" / truncated).write_bytes(data[10:])
    # a queue file under another id's name
    os.rename(q / "incoming" / mismatched, q / "incoming" / renamed)
    # a delivery status with no message, and debris of an unfinished receive and status write
    (q / "status" / orphan).write_bytes(b"{}")
    (q / "tmp" / junk_name).write_bytes(b"half a message")
    (q / "tmp" / f"{junk_name}.status").write_bytes(b"{")

    restart(mta)
    log = wait_for_log(mta, "queue recovery: tmp_removed=2, active_requeued=1, corrupt=3, orphans_removed=1")
    assert mta.queued("incoming") == sorted([keep, was_active])
    assert mta.queued("active") == []
    assert mta.queued("corrupt") == sorted([garbage, truncated, renamed])
    assert mta.queued("tmp") == [] and mta.queued("status") == []
    # the garbage is kept for the administrator, as it was
    assert (q / "corrupt" / garbage).read_bytes() == b"\x00garbage that is not a queue file\n"
    shortened = "content is %d bytes, the envelope says %d" % (len(data) - 10 - _trailer_len(data), len(data) - _trailer_len(data))
    for qid, why in ((garbage, "no trailer"), (truncated, shortened), (renamed, "queue id does not match")):
        assert f'saving corrupt file "{qid}" from queue "incoming" to queue "corrupt": {why}' in log
    # the requeued message is whole
    env = parse_envelope((q / "incoming" / was_active).read_bytes())
    assert env.queue_id == was_active and mta.body(was_active).endswith(b"Subject: t\r\n\r\nx\r\n")
    # and the server takes mail again
    assert _committed_message(mta) in mta.queued()


def test_files_in_incoming_that_are_not_queue_ids_are_left_alone(make_mta):
    """Only names that are queue ids are queue files: an editor's backup or a stray file is not
    moved, parsed or deleted (and does not stop the server)."""
    mta = make_mta(start=False)
    QueueStore(mta.queue).ensure_dirs()
    (mta.queue / "incoming" / "README").write_text("not a queue file")
    mta.start()
    assert (mta.queue / "incoming" / "README").read_text() == "not a queue file"
    assert mta.queued("corrupt") == []
    assert _committed_message(mta) in mta.queued()


def test_acknowledged_message_survives_kill_9_right_after_the_250(make_mta):
    """The 250 is sent only after the commit (fsync + rename + directory fsync): kill -9 the
    instant the reply arrives, and the message is there."""
    mta = make_mta()
    for _ in range(3):
        with SmtpClient(mta.port, TRUSTED).hello() as c:
            c.open_data()
            c.send(b"Subject: k\r\n\r\nkill me\r\n.\r\n")
            qid = queue_id_of(c.reply())
            mta.kill9()
        restart(mta)
        assert qid in mta.queued()
        assert mta.body(qid).endswith(b"Subject: k\r\n\r\nkill me\r\n")
        assert mta.queued("tmp") == []


def test_queue_files_are_private(make_mta):
    """Mail is private: the queue directories are 0700 and the queue files 0600."""
    mta = make_mta()
    qid = _committed_message(mta)
    for d in ("", "tmp", "status", "incoming", "active", "deferred", "hold", "corrupt"):
        mode = (mta.queue / d).stat().st_mode & 0o777
        assert mode == 0o700, (d, oct(mode))
    for p in (mta.queue / "incoming" / qid,):
        assert p.stat().st_mode & 0o777 == 0o600, (p, oct(p.stat().st_mode))
