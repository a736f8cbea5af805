import asyncio
import errno
import os
import threading
import zlib

import pytest

from mtaserver.model import ClientInfo, Envelope, Recipient
from mtaserver.queue.store import (
    CorruptEnvelope,
    QueueIdGenerator,
    QueueStore,
    QueueWriteError,
    dump_envelope,
    envelope_trailer,
    is_queue_id,
    parse_envelope,
    split_queue_file,
)


def envelope(qid: str) -> Envelope:
    return Envelope(
        queue_id=qid, sender="s@example.test",
        recipients=[Recipient(address="a@example.test"), Recipient(address="jörg@bücher.test")],
        arrival=1795600000.5, client=ClientInfo(ip="192.0.2.1", port=4711, helo="h\x00x"),
    )  # fmt: skip


def test_queue_ids_are_unique_and_time_ordered_even_when_the_clock_stalls():
    t = [1795600000.0]
    gen = QueueIdGenerator(pid=4242, clock=lambda: t[0])
    ids = []
    for i in range(3000):
        if i % 1000 == 0:
            t[0] += 0.5
        ids.append(gen.next())
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(is_queue_id(i) for i in ids)
    t[0] -= 100  # the clock steps back: ids still go forward
    assert gen.next() > ids[-1]


def queue_file(env: Envelope, content: bytes) -> bytes:
    env.size = len(content)
    return content + envelope_trailer(env)


def test_queue_file_round_trip():
    env = envelope(QueueIdGenerator().next())
    content = b"Subject: x\r\n\r\nMTAQ2 00000000 00000000\r\n\r\n"  # content that looks like a trailer
    got, body = split_queue_file(queue_file(env, content))
    assert got == env and bytes(body) == content
    assert parse_envelope(dump_envelope(env)) == env  # the status-file form: no content


@pytest.mark.parametrize("damage", ["truncate", "flip-json", "flip-content-length", "version", "trailer", "json", "empty"])
def test_damaged_queue_files_are_detected(damage):
    env = envelope(QueueIdGenerator().next())
    data = bytearray(queue_file(env, b"Subject: x\r\n\r\nhello\r\n"))
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip-json":
        data[-40] ^= 0x20
    elif damage == "flip-content-length":
        data = data[1:]  # a byte of content lost: the envelope's size no longer matches
    elif damage == "version":
        data[-21] = ord("9")
    elif damage == "trailer":
        data = data[:-3]
    elif damage == "json":
        data = bytearray(b"{}\nMTAQ2 00000002 %08x\n" % zlib.crc32(b"{}"))
    else:
        data = bytearray()
    with pytest.raises(CorruptEnvelope):
        split_queue_file(bytes(data))


class CountingFsync:
    def __init__(self, fail_on: int | None = None, err: int = errno.EIO) -> None:
        self.calls = 0
        self.fail_on = fail_on
        self.err = err
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self.lock:
            self.calls += 1
            n = self.calls
        if n == self.fail_on:
            raise OSError(self.err, os.strerror(self.err))
        os.fsync(fd)


async def _commit_one(store: QueueStore, text: bytes = b"Subject: x\r\n\r\nhi\r\n") -> str:
    qid = store.new_id()
    spool = store.new_spool(qid)
    spool.write(text)
    await store.commit(spool, envelope(qid))
    return qid


async def test_commit_makes_one_durable_queue_file(tmp_path):
    store = QueueStore(tmp_path)
    store.open()
    woken = []
    store.on_commit = woken.extend
    qid = await _commit_one(store)
    store.close()
    assert store.list("incoming") == [qid] and woken == [qid]
    assert os.listdir(tmp_path / "tmp") == []
    env, content = store.load("incoming", qid)
    assert bytes(content) == b"Subject: x\r\n\r\nhi\r\n" and env.size == len(content)
    assert store.read("incoming", qid) == env
    assert oct((tmp_path / "incoming" / qid).stat().st_mode & 0o777) == "0o600"


async def test_a_held_commit_goes_to_hold_and_wakes_nobody(tmp_path):
    store = QueueStore(tmp_path)
    store.open()
    woken = []
    store.on_commit = woken.extend
    synced = []
    store._fsync = lambda fd: synced.append(fd) or os.fsync(fd)
    qid = store.new_id()
    spool = store.new_spool(qid)
    spool.write(b"Subject: x\r\n\r\nhi\r\n")
    store.inline_commit = False  # through the thread pool, as under load
    await store.commit(spool, envelope(qid), hold=True)
    store.close()
    assert store.list("hold") == [qid] and store.list("incoming") == [] and woken == []
    assert len(synced) == 2  # the file and the hold/ directory
    assert bytes(store.load("hold", qid)[1]) == b"Subject: x\r\n\r\nhi\r\n"


async def test_small_content_stays_in_memory_and_large_content_spills(tmp_path):
    store = QueueStore(tmp_path, spool_in_memory=100, spool_memory_total=130)
    store.open()
    small, large, squeezed = (store.new_spool(store.new_id()) for _ in range(3))
    small.write(b"x" * 60)
    large.write(b"y" * 60)
    large.write(b"y" * 60)  # past spool_in_memory: goes to tmp/, with what was held
    squeezed.write(b"z" * 60)
    squeezed.write(b"z" * 30)  # within its own limit, but the process budget (130) is spent
    assert not small.on_disk and large.on_disk and squeezed.on_disk
    assert sorted(os.listdir(tmp_path / "tmp")) == sorted([large.queue_id, squeezed.queue_id])
    for spool in (small, large, squeezed):
        await store.commit(spool, envelope(spool.queue_id))
    store.close()
    assert bytes(store.load("incoming", large.queue_id)[1]) == b"y" * 120
    assert bytes(store.load("incoming", squeezed.queue_id)[1]) == b"z" * 90
    assert store._budget.free == 130, "every byte held in memory was given back"


async def test_a_lone_session_commits_in_the_loop_and_announces_when_told(tmp_path):
    store = QueueStore(tmp_path)
    store.open()
    woken = []
    store.on_commit = woken.extend
    qid = store.new_id()
    spool = store.new_spool(qid)
    spool.write(b"Subject: x\r\n\r\nhi\r\n")
    store.receiving = 2  # another session in this process: not here, not now
    assert store.commit_inline(spool, envelope(qid)) is False
    assert store.list("incoming") == [] and os.listdir(tmp_path / "tmp") == []
    store.receiving = 1
    assert store.commit_inline(spool, envelope(qid)) is True
    assert store.list("incoming") == [qid] and os.listdir(tmp_path / "tmp") == []
    assert woken == [], "smtpd announces itself, after the 250"
    store.announce(qid)
    store.close()
    assert woken == [qid]
    assert bytes(store.load("incoming", qid)[1]) == b"Subject: x\r\n\r\nhi\r\n"


@pytest.mark.parametrize("lone_session", [False, True])  # a thread job, or in the event loop
@pytest.mark.parametrize("fail_on, err, code", [(1, errno.EIO, 451), (1, errno.ENOSPC, 452), (2, errno.EIO, 451)])
@pytest.mark.parametrize("size", [10, 1000])  # in memory, spilled to tmp/
async def test_a_failed_fsync_leaves_nothing_and_says_why(tmp_path, fail_on, err, code, size, lone_session):
    # The file is renamed into incoming/ before its fsync (fail_on=1) and the directory's
    # (fail_on=2): either failure must take it out again.
    store = QueueStore(tmp_path, fsync=CountingFsync(fail_on, err), spool_in_memory=100)
    store.open()
    store.receiving = 1 if lone_session else 0
    with pytest.raises(QueueWriteError) as exc:
        await _commit_one(store, b"x" * size)
    store.close()
    assert exc.value.reply.code == code
    for d in ("tmp", "incoming"):
        assert os.listdir(tmp_path / d) == [], d
    assert store._budget.free == 64 * 1024 * 1024


async def test_concurrent_commits(tmp_path):
    fsync = CountingFsync()
    store = QueueStore(tmp_path, fsync=fsync, sync_threads=8)
    store.open()
    ids = await asyncio.gather(*(_commit_one(store) for _ in range(64)))
    store.close()
    assert len(set(ids)) == 64 and len(store.list("incoming")) == 64
    assert fsync.calls == 64 * 2  # the file and incoming/, each once per message


async def test_write_error_while_spooling_is_reported_at_commit(tmp_path):
    store = QueueStore(tmp_path)
    store.open()
    qid = store.new_id()
    spool = store.new_spool(qid)
    spool.error = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(QueueWriteError) as exc:
        await store.commit(spool, envelope(qid))
    store.close()
    assert str(exc.value.reply) == "452 4.3.1 Insufficient system storage"
    assert os.listdir(tmp_path / "tmp") == []


async def test_status_file_supersedes_the_committed_envelope_and_goes_with_the_message(tmp_path):
    store = QueueStore(tmp_path)
    store.open()
    qid = await _commit_one(store)
    store.close()
    env = store.read("incoming", qid)
    env.recipients = env.recipients[1:]
    env.extra["delay_warned"] = "1"
    store.rewrite("incoming", env)
    store.move(qid, "incoming", "deferred")
    again, content = store.load("deferred", qid)
    assert again == env and bytes(content) == b"Subject: x\r\n\r\nhi\r\n"
    store.remove("deferred", qid)
    assert os.listdir(tmp_path / "deferred") == [] and os.listdir(tmp_path / "status") == []


async def test_recovery(tmp_path):
    store = QueueStore(tmp_path)
    store.open()
    good = await _commit_one(store)
    active = await _commit_one(store)
    store.move(active, "incoming", "active")
    store.close()
    bad = QueueIdGenerator().next()
    (tmp_path / "incoming" / bad).write_bytes(b"garbage")
    orphan = "Z" + QueueIdGenerator().next()[1:]
    (tmp_path / "status" / orphan).write_bytes(b"an orphan status")
    (tmp_path / "tmp" / "x").write_bytes(b"partial")
    counts = QueueStore(tmp_path).recover()
    assert counts == {"tmp_removed": 1, "active_requeued": 1, "corrupt": 1, "orphans_removed": 1}
    assert sorted(os.listdir(tmp_path / "incoming")) == sorted([good, active])
    assert os.listdir(tmp_path / "corrupt") == [bad]
    assert (tmp_path / "corrupt" / bad).read_bytes() == b"garbage", "a corrupt file is kept as it was"
    assert os.listdir(tmp_path / "tmp") == [] and os.listdir(tmp_path / "status") == []


def test_a_format_1_queue_is_upgraded_at_recovery(tmp_path):
    """Session 1's layout: incoming/<id> = "MTAQ 1" envelope, msg/<id> = the content."""
    import json

    for d in ("tmp", "msg", "incoming", "deferred"):
        (tmp_path / d).mkdir()
    ids = QueueIdGenerator()
    waiting, deferred, broken = ids.next(), ids.next(), ids.next()
    for qid, state in ((waiting, "incoming"), (deferred, "deferred"), (broken, "incoming")):
        doc = json.loads(envelope_trailer(envelope(qid)).rsplit(b"\nMTAQ2 ", 1)[0])
        body = json.dumps(doc).encode()
        (tmp_path / state / qid).write_bytes(b"MTAQ 1\n%s\nEND %08x\n" % (body, zlib.crc32(body)))
        (tmp_path / "msg" / qid).write_bytes(b"Subject: " + qid.encode() + b"\r\n\r\nhi\r\n")
    (tmp_path / "msg" / broken).unlink()  # its body was lost: it goes to corrupt/, not away
    counts = QueueStore(tmp_path).recover()
    assert counts["upgraded"] == 2 and counts["corrupt"] == 1
    assert not (tmp_path / "msg").exists()
    store = QueueStore(tmp_path)
    for qid, state in ((waiting, "incoming"), (deferred, "deferred")):
        env, content = store.load(state, qid)
        assert env.queue_id == qid and bytes(content) == b"Subject: " + qid.encode() + b"\r\n\r\nhi\r\n"
    assert os.listdir(tmp_path / "corrupt") == [broken]


def test_the_queue_file_keeps_every_envelope_field():
    """The hand-written encoder must not forget a field that model.py grows."""
    import dataclasses

    from mtaserver.model import RcptState
    from mtaserver.queue.store import _envelope_doc

    env = Envelope(
        queue_id="1K149DFWT7T0DK5KA", sender="s@example.test",
        recipients=[Recipient(address="a@x.test", orcpt="rfc822;a@x.test", notify="FAILURE,DELAY",
                              state=RcptState.DEFERRED, attempts=3, last_reply="451 4.3.0 later")],
        arrival=1795600000.5, size=1234, body_type="8BITMIME", smtputf8=True, ret="HDRS", envid="E1",
        extra={"k": "v"}, trail=[{"filter": "antispam", "result": "ham", "detail": "BAYES_00", "score": -1.9, "ms": 3.2}],
        client=ClientInfo(ip="192.0.2.1", port=25, name="c.test", helo="h", protocol="ESMTPSA", login="u", trusted=True),
    )  # fmt: skip
    expected = dataclasses.asdict(env)
    expected["recipients"][0]["state"] = RcptState.DEFERRED.value
    assert _envelope_doc(env) == expected
    assert parse_envelope(dump_envelope(env)) == env


async def test_commits_within_the_wakeup_delay_make_one_wakeup(tmp_path):
    # announce() is what a commit calls. The delay is an hour, so nothing here depends on how fast
    # the test runs: the gathered wake-up's timer is checked for its due time, not waited for.
    store = QueueStore(tmp_path)
    store.announce_delay = 3600.0
    woken: list[list[str]] = []
    store.on_commit = woken.append
    first, second, third, fourth, fifth = (store.new_id() for _ in range(5))
    store.announce(first)
    assert woken == [[first]], "after a quiet spell: at once"
    store.announce(second)
    store.announce(third)
    assert woken == [[first]], "within the delay: gathered"
    timer = store._announce_timer
    assert timer is not None and timer.when() == pytest.approx(store._announced_at + 3600.0, abs=60)  # one delay after the first
    store.flush_announcements()  # what the timer calls when it is due
    assert woken == [[first], [second, third]] and timer.cancelled()
    store.announce(fourth)
    store.announce(fifth)
    assert woken == [[first], [second, third]], "within the delay of the last wake-up: gathered"
    store.flush_announcements()  # a stopping worker sends what it gathered at once
    assert woken == [[first], [second, third], [fourth, fifth]]
