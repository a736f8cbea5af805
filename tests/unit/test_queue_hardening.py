"""Issue 15, queue and delivery hardening, against real queue directories (no network):

- stray entries (a directory, a symlink, a FIFO named like a queue id) stop neither recovery nor
  `queue list`; a symlink is never followed; what can be moved goes to corrupt/
- a next-attempt time far in the future (clock stepped back) is clamped to now + max_backoff
- duplicate recipients are counted once
- the content is read and dot-stuffed in pieces (Content, DataStuffer) exactly as data_payload does whole

The same items with the queue manager running (it polls and delivers): tests/integration/test_queue_hardening_manager.py.
"""

from __future__ import annotations

import functools
import itertools
import os

import pytest
from builders import commit_message

from mtaserver.delivery.wire import DataStuffer, data_payload
from mtaserver.model import Recipient
from mtaserver.queue import backoff
from mtaserver.queue.manager import unique_recipients
from mtaserver.queue.ops import QueueOps
from mtaserver.queue.store import NotOurs, QueueIdGenerator, QueueStore, open_regular

T0 = 1795600000.0


# sender, text and arrival of these tests
_commit = functools.partial(commit_message, sender="s@client.test", text=b"Subject: x\r\n\r\nhi\r\n", arrival=T0)


# -- item 1: stray entries ---------------------------------------------------------------------


async def test_recovery_sets_strays_aside_and_never_follows_a_symlink(tmp_path):
    root = tmp_path / "q"
    store = QueueStore(root)
    store.open()
    good = await _commit(store, ["a@example.test"])
    outside = await _commit(store, ["victim@example.test"])  # a valid queue file, moved out of the queue
    store.close()
    os.rename(root / "incoming" / outside, tmp_path / "outside")
    ids = QueueIdGenerator()
    a_dir, a_link, a_fifo, in_tmp, in_status = (ids.next() for _ in range(5))
    (root / "incoming" / a_dir).mkdir()
    (root / "incoming" / a_dir / "x").write_bytes(b"inside")
    os.symlink(tmp_path / "outside", root / "incoming" / a_link)
    os.mkfifo(root / "incoming" / a_fifo)
    (root / "tmp" / in_tmp).mkdir()
    (root / "status" / in_status).mkdir()
    os.symlink(tmp_path / "outside", root / "status" / good)  # a stray status entry of a good message

    counts = QueueStore(root).recover()  # before the fix: IsADirectoryError, or the symlink followed

    assert os.listdir(root / "incoming") == [good]
    corrupt = os.listdir(root / "corrupt")
    for name in (a_dir, a_link, a_fifo):
        assert name in corrupt
    assert any(n.startswith(in_tmp) for n in corrupt) and any(n.startswith(in_status) for n in corrupt)
    assert any(n.startswith(good + ".status") for n in corrupt)
    assert os.path.islink(root / "corrupt" / a_link), "the symlink itself was moved, not what it names"
    assert counts["corrupt"] >= 5
    assert os.listdir(root / "tmp") == [] and os.listdir(root / "status") == []
    assert (tmp_path / "outside").is_file()


def test_open_regular_refuses_what_is_not_a_regular_file(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    os.symlink(tmp_path / "f", tmp_path / "link")
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "fifo")
    os.close(open_regular(tmp_path / "f"))
    for name in ("link", "d", "fifo"):
        with pytest.raises(NotOurs):
            open_regular(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")


async def test_queue_list_shows_strays_without_failing(tmp_path):
    root = tmp_path / "q"
    store = QueueStore(root)
    store.open()
    good = await _commit(store, ["a@example.test"])
    store.close()
    ids = QueueIdGenerator()
    a_dir, a_link, a_fifo = ids.next(), ids.next(), ids.next()
    (root / "deferred" / a_dir).mkdir()
    os.symlink(root / "incoming" / good, root / "hold" / a_link)
    os.mkfifo(root / "incoming" / a_fifo)
    ops = QueueOps(store, clock=lambda: T0)
    listed = {m["queue_id"]: m for m in ops.list()["messages"]}
    assert set(listed) == {good, a_dir, a_link, a_fifo}
    assert not listed[good].get("error")
    for name in (a_dir, a_link, a_fifo):
        assert listed[name].get("error"), listed[name]
    assert ops.show(a_link) is not None and ops.stats()["queues"]["hold"] == 1


# -- item 5: clocks stepped back ---------------------------------------------------------------


def test_clamp_due():
    assert backoff.clamp_due(T0 + 30 * 86400, now=T0, max_backoff=4000) == T0 + 4000
    assert backoff.clamp_due(T0 + 4000, now=T0, max_backoff=4000) == T0 + 4000
    jittered = backoff.next_attempt(arrival=T0 - 86400, now=T0, min_backoff=300, max_backoff=4000, jitter=0.999)
    assert backoff.clamp_due(jittered, now=T0, max_backoff=4000) == jittered, "next_attempt's own times are kept"
    assert backoff.clamp_due(T0 - 5, now=T0, max_backoff=4000) == T0 - 5


# -- item 6: duplicate recipients --------------------------------------------------------------


def test_unique_recipients_keeps_the_first_spelling():
    rs = [Recipient(address=a) for a in ("a@Example.Test", "b@x.test", "a@example.test", "A@example.test", "a@EXAMPLE.TEST.", "b@x.test")]
    assert [r.address for r in unique_recipients(rs)] == ["a@Example.Test", "b@x.test", "A@example.test"]


# -- item 7: content in pieces ------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"", b".", b"\r", b"\n", b"a\r", b".a\r\n.b\r\n", b"x\r\n.\r\n", b"a\rb\nc\r\n", b"..\r\n\r\n.", b"\r\r\n\n.",
])  # fmt: skip
def test_data_stuffer_equals_data_payload_at_every_cut(body):
    want = data_payload(body)
    for k in range(4):
        for cuts in itertools.combinations_with_replacement(range(len(body) + 1), k):
            st = DataStuffer()
            prev, out = 0, b""
            for c in (*cuts, len(body)):
                out += st.feed(body[prev:c])
                prev = c
            assert out + st.end() == want, (body, cuts)


async def test_content_reads_its_queue_file_in_pieces(tmp_path):
    store = QueueStore(tmp_path)
    store.open()
    text = b"Subject: big\r\nX: y\r\n\r\n" + b"".join(b"%08d .line\r\n" % i for i in range(50000))
    qid = await _commit(store, ["a@example.test"], text=text)
    store.move(qid, "incoming", "active")
    env, content = store.open_content("active", qid)
    try:
        assert len(content) == len(text) and env.size == len(text)
        assert content.head() == b"Subject: big\r\nX: y\r\n\r\n"
        pieces = list(content.chunks(1000))
        assert all(len(p) == 1000 for p in pieces[:-1]) and b"".join(pieces) == text
        assert b"".join([c async for c in content.achunks(4096)]) == text
        st = DataStuffer()
        assert b"".join([st.feed(p) for p in content.chunks(777)]) + st.end() == data_payload(text)
    finally:
        content.close()
        store.close()
