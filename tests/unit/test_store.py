import asyncio
import errno
import os
import threading

import pytest

from mtaserver.model import ClientInfo, Envelope, Recipient
from mtaserver.queue.store import (
    CorruptEnvelope,
    QueueIdGenerator,
    QueueStore,
    QueueWriteError,
    dump_envelope,
    is_queue_id,
    parse_envelope,
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


def test_envelope_round_trip():
    gen = QueueIdGenerator()
    env = envelope(gen.next())
    assert parse_envelope(dump_envelope(env)) == env


@pytest.mark.parametrize("damage", ["truncate", "flip", "version", "trailer", "json"])
def test_damaged_envelopes_are_detected(damage):
    data = bytearray(dump_envelope(envelope(QueueIdGenerator().next())))
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[30] ^= 0x20
    elif damage == "version":
        data[5] = ord("9")
    elif damage == "trailer":
        data = data[:-3]
    else:
        data = bytearray(b"MTAQ 1\n{}\nEND 00000000\n")
    with pytest.raises(CorruptEnvelope):
        parse_envelope(bytes(data))


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


async def test_commit_makes_body_and_envelope_durable(tmp_path):
    store = QueueStore(tmp_path)
    store.open()
    woken = []
    store.on_commit = woken.append
    qid = await _commit_one(store)
    store.close()
    assert store.list("incoming") == [qid] and woken == [qid]
    assert (tmp_path / "msg" / qid).read_bytes() == b"Subject: x\r\n\r\nhi\r\n"
    assert os.listdir(tmp_path / "tmp") == []
    env = store.read("incoming", qid)
    assert env.size == len(b"Subject: x\r\n\r\nhi\r\n")
    assert oct((tmp_path / "msg" / qid).stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("fail_on, err, code", [(1, errno.EIO, 451), (2, errno.ENOSPC, 452), (3, errno.EIO, 451), (4, errno.EIO, 451)])
async def test_a_failed_fsync_anywhere_leaves_nothing_and_says_why(tmp_path, fail_on, err, code):
    store = QueueStore(tmp_path, fsync=CountingFsync(fail_on, err))
    store.open()
    with pytest.raises(QueueWriteError) as exc:
        await _commit_one(store)
    store.close()
    assert exc.value.reply.code == code
    for d in ("tmp", "msg", "incoming"):
        assert os.listdir(tmp_path / d) == [], d


async def test_directory_fsyncs_are_shared_by_concurrent_commits(tmp_path):
    fsync = CountingFsync()
    store = QueueStore(tmp_path, fsync=fsync, sync_threads=8)
    store.open()
    ids = await asyncio.gather(*(_commit_one(store) for _ in range(64)))
    store.close()
    assert len(set(ids)) == 64 and len(store.list("incoming")) == 64
    # 2 file fsyncs per message are unavoidable; the 2 directory fsyncs are batched.
    assert fsync.calls < 64 * 4, fsync.calls


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


async def test_recovery(tmp_path):
    store = QueueStore(tmp_path)
    store.open()
    good = await _commit_one(store)
    active = await _commit_one(store)
    store.move(active, "incoming", "active")
    store.close()
    bad = QueueIdGenerator().next()
    (tmp_path / "incoming" / bad).write_bytes(b"garbage")
    (tmp_path / "msg" / bad).write_bytes(b"body")
    orphan = QueueIdGenerator().next() + ""
    (tmp_path / "msg" / ("Z" + orphan[1:])).write_bytes(b"orphan body")
    (tmp_path / "tmp" / "x.body").write_bytes(b"partial")
    counts = QueueStore(tmp_path).recover()
    assert counts == {"tmp_removed": 1, "active_requeued": 1, "corrupt": 1, "orphans_removed": 1}
    assert sorted(os.listdir(tmp_path / "incoming")) == sorted([good, active])
    assert os.listdir(tmp_path / "corrupt") == [bad]
    assert (tmp_path / "msg" / bad).exists(), "a corrupt message keeps its body"
    assert os.listdir(tmp_path / "tmp") == []
